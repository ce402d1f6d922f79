"""The builders of the demo sets: one function per set, from the sources installed packages and the package's
own ``assets/`` ship (nothing is downloaded), plus the writer that records every file's SHA-256."""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import tifffile
from scipy import ndimage as ndi
from skimage.color import rgb2hed
from skimage.io import imread

from maskseg_monai.data._io import atomic_write_bytes, nifti_bytes, png_bytes, sha256_file
from maskseg_monai.data.synthetic import BLOOD_CLASSES, blood_smear_scene, oneshot_scene

__all__ = ["ASSETS_DIR", "demo_dicom_series_dir"]

ASSETS_DIR = Path(__file__).resolve().parent / "assets"


_TILE = 64


_MNI_NOTICE = (
    "Copyright (C) 1993-2004 Louis Collins, McConnell Brain Imaging Centre, Montreal Neurological Institute, "
    "McGill University. Permission to use, copy, modify, and distribute this software and its documentation for "
    "any purpose and without fee is hereby granted, provided that the above copyright notice appear in all copies. "
    "The authors and McGill University make no representations about the suitability of this software for any "
    'purpose. It is provided "as is" without express or implied warranty. The authors are not responsible for any '
    "data loss, equipment damage, property loss, or injury to subjects or patients resulting from the use or misuse "
    "of this software package."
)


def _package_dir(package: str) -> Path:
    """Folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"demo data needs the installed package '{package}', which was not found.")
    return Path(spec.submodule_search_locations[0])


def _source(path: Path) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"demo source file {path} is missing; reinstall the package that ships it.")
    return path


def demo_dicom_series_dir() -> Path:
    """Folder of pydicom's bundled 5-slice CT series (``data/test_files/dicomdirtests/98892001/CT5N``).

    Five 16x16 axial CT slices, explicit VR little endian, shipped inside the pydicom package (no download).

    Returns:
        The series folder, readable with ``monai.transforms.LoadImage(reader="ITKReader")`` or ``"PydicomReader"``.

    Raises:
        FileNotFoundError: when pydicom or the series is not installed.
    """
    folder = _package_dir("pydicom") / "data" / "test_files" / "dicomdirtests" / "98892001" / "CT5N"
    if not folder.is_dir() or len(list(folder.iterdir())) != 5:
        raise FileNotFoundError(f"pydicom's CT5N demo series is missing or incomplete at {folder}.")
    return folder


class SetWriter:
    """Writes the files of one demo set atomically and remembers their SHA-256 for the completion marker."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.files: dict[str, str] = {}

    def put(self, rel: str, data: bytes) -> str:
        atomic_write_bytes(self.folder / rel, data)
        self.files[rel] = hashlib.sha256(data).hexdigest()
        return rel


def _tiles(array: np.ndarray, tile: int = _TILE) -> np.ndarray:
    """Split ``[H, W]`` (multiples of ``tile``) into a grid ``[H // tile, W // tile, tile, tile]``."""
    rows, cols = array.shape[0] // tile, array.shape[1] // tile
    return array[: rows * tile, : cols * tile].reshape(rows, tile, cols, tile).swapaxes(1, 2)


def _to_uint8(array: np.ndarray) -> np.ndarray:
    """Min-max scale to [0, 255] and round to uint8."""
    lo, hi = float(array.min()), float(array.max())
    return np.round((array - lo) / max(hi - lo, 1e-12) * 255).astype(np.uint8)


def _file_row(path: Path, package: str, rel: str) -> str:
    return f"| `{rel}` | {package} | `{sha256_file(path)}` |"


def _provenance(title: str, sections: dict[str, str]) -> str:
    body = "\n\n".join(f"## {head}\n\n{text.strip()}" for head, text in sections.items())
    return f"# {title}\n\n{body}\n"


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _nuclei_source() -> tuple[np.ndarray, np.ndarray, dict[str, str]]:
    """The 512x512 nuclei image (uint8), its instance ids (uint16) and the provenance sections they share."""
    img_path, mask_path = _source(ASSETS_DIR / "img2d.tif"), _source(ASSETS_DIR / "mask2d.tif")
    image, instances = tifffile.imread(img_path), tifffile.imread(mask_path)
    if image.shape != (512, 512) or instances.shape != (512, 512) or image.max() > 255:
        raise ValueError(f"{img_path}: expected two 512x512 arrays with image values <= 255.")
    sections = {
        "Source": "2018 Data Science Bowl `stage1_train` (BBBC038v1), as shipped in the StarDist 0.9.2 wheel "
        "(`stardist/data/images/`); copied into `maskseg_monai/data/assets/` (see `ATTRIBUTION.md` there).",
        "Original files": "| file | package | sha256 |\n|---|---|---|\n"
        + _file_row(img_path, "maskseg_monai/data/assets", "img2d.tif")
        + "\n"
        + _file_row(mask_path, "maskseg_monai/data/assets", "mask2d.tif"),
        "Licence": "Image data: CC0 1.0 (Broad Bioimage Benchmark Collection, BBBC038v1). StarDist, which "
        "distributes the copies, is BSD-3-Clause, Copyright (c) 2018-2025, Uwe Schmidt, Martin Weigert.",
        "Attribution": "Caicedo, J. C. et al. Nucleus segmentation across imaging experiments: the 2018 Data "
        "Science Bowl. Nature Methods 16, 1247-1253 (2019). doi:10.1038/s41592-019-0612-7",
    }
    return image.astype(np.uint8), instances.astype(np.uint16), sections


def _nuclei_item(out: SetWriter, stem: str, image: np.ndarray, instances: np.ndarray) -> dict[str, str]:
    return {
        "image": out.put(f"images/{stem}.png", png_bytes(image)),
        "label": out.put(f"labels/{stem}.png", png_bytes((instances > 0).astype(np.uint8))),
        "label_instances": out.put(f"instances/{stem}.png", png_bytes(instances)),
    }


def _nuclei_datalist(name: str, description: str, items: dict[str, list]) -> dict:
    return {
        "name": name,
        "description": description,
        "licence": "CC0-1.0",
        "reference": "Caicedo et al., Nature Methods 16, 1247-1253 (2019), doi:10.1038/s41592-019-0612-7",
        "tensorImageSize": "2D",
        "modality": {"0": "fluorescence microscopy"},
        "labels": {"0": "background", "1": "nucleus"},
        **items,
    }


_NUCLEI_FILES = (
    "- `labels/`: binary uint8 PNG, 1 = nucleus (instance id > 0); touching nuclei merge.\n"
    "- `instances/`: uint16 PNG with the original instance ids (not renumbered; nuclei cut by a tile "
    "border keep their id in every tile)."
)


def _build_nuclei2d(out: SetWriter) -> tuple[dict, str]:
    image, instances, sections = _nuclei_source()
    image_t, inst_t = _tiles(image), _tiles(instances)
    items: dict[str, list] = {"training": [], "validation": []}
    for r, c in np.ndindex(image_t.shape[:2]):
        item = _nuclei_item(out, f"tile_r{r}_c{c}", image_t[r, c], inst_t[r, c])
        items["validation" if r >= 4 and c >= 4 else "training"].append(item)
    description = "Fluorescence nuclei (2018 Data Science Bowl), one 512x512 image tiled into 64 tiles of 64x64."
    sections["Processing"] = (
        "- The 512x512 uint16 image (values 0-235) is stored losslessly as 8-bit grayscale PNG.\n"
        "- Both arrays are cut into an 8x8 grid of 64x64 tiles, `tile_r{row}_c{col}`.\n" + _NUCLEI_FILES
    )
    sections["Split"] = (
        "Validation is the bottom-right 4x4 block of tiles (rows 4-7, columns 4-7; 16 tiles), training "
        "the other 48. A contiguous block keeps validation tiles together, so only nuclei on the block's two "
        "inner edges are shared (cut) between training and validation."
    )
    return _nuclei_datalist("nuclei2d", description, items), _provenance("nuclei2d", sections)


def _build_nuclei2d_regions(out: SetWriter) -> tuple[dict, str]:
    image, instances, sections = _nuclei_source()
    items: dict[str, list] = {"training": [], "validation": []}
    for name, (r, c) in {"top_left": (0, 0), "top_right": (0, 256), "bottom_left": (256, 0)}.items():
        window = np.s_[r : r + 256, c : c + 256]
        items["training"].append(_nuclei_item(out, f"region_{name}", image[window], instances[window]))
    image_t, inst_t = _tiles(image[256:, 256:]), _tiles(instances[256:, 256:])
    for r, c in np.ndindex(image_t.shape[:2]):
        items["validation"].append(_nuclei_item(out, f"tile_r{r + 4}_c{c + 4}", image_t[r, c], inst_t[r, c]))
    description = (
        "Fluorescence nuclei (2018 Data Science Bowl) for pretraining on random crops: three 256x256 quadrants "
        "of one 512x512 image to train on, the fourth tiled into 16 validation tiles of 64x64."
    )
    sections["Processing"] = (
        "- The 512x512 uint16 image (values 0-235) is stored losslessly as 8-bit grayscale PNG.\n"
        "- Training: the top-left, top-right and bottom-left 256x256 quadrants, `region_<name>`, for random "
        "crops (the bundles' `RandSpatialCropd`).\n"
        "- Validation: the bottom-right quadrant cut into a 4x4 grid of 64x64 tiles, `tile_r{row}_c{col}` "
        "numbered as in `nuclei2d` (rows and columns 4-7).\n" + _NUCLEI_FILES
    )
    sections["Split"] = (
        "Validation is the bottom-right quadrant, the same pixels as the `nuclei2d` validation tiles, so an encoder "
        "pretrained on this set has never seen the pixels a UNETR fine-tuned on `nuclei2d` is validated on. "
        "Only nuclei cut by the quadrant's two inner edges are shared between training and validation."
    )
    return _nuclei_datalist("nuclei2d_regions", description, items), _provenance("nuclei2d_regions", sections)


def _blood_datalist(out: SetWriter, spatial_dims: int, n_train: int, n_val: int) -> dict:
    shape, ext = ((64, 64), "png") if spatial_dims == 2 else ((32, 32, 32), "nii.gz")
    items: dict[str, list] = {"training": [], "validation": []}
    for split, seeds in (("training", range(n_train)), ("validation", range(1000, 1000 + n_val))):
        for seed in seeds:
            image, semantic, instance = blood_smear_scene(shape, seed)
            if spatial_dims == 2:
                arrays = (np.round(image[0] * 255).astype(np.uint8), semantic, instance.astype(np.uint16))
                encoded = [png_bytes(a) for a in arrays]
            else:
                arrays = (image[0], semantic, instance)
                encoded = [nifti_bytes(a, np.eye(4)) for a in arrays]
            stem = f"scene_{seed:04d}"
            items[split].append(
                {
                    key: out.put(f"{folder}/{stem}.{ext}", data)
                    for key, folder, data in zip(
                        ("image", "label", "label_instances"), ("images", "labels", "instances"), encoded
                    )
                }
            )
    return {
        "name": f"bloodsmear{spatial_dims}d",
        "description": f"Synthetic blood-smear scenes ({'x'.join(map(str, shape))}) with exact masks, "
        "maskseg_monai.data.synthetic.blood_smear_scene.",
        "licence": "Apache-2.0 (generated by maskseg-monai)",
        "tensorImageSize": f"{spatial_dims}D",
        "modality": {"0": "synthetic bright-field"},
        "labels": {str(k): v for k, v in BLOOD_CLASSES.items()},
        **items,
    }


def _blood_provenance(spatial_dims: int, n_train: int, n_val: int) -> str:
    shape = "64x64" if spatial_dims == 2 else "32x32x32"
    fmt = (
        "8-bit grayscale PNG images (`round(image * 255)`), uint8 PNG semantic labels, uint16 PNG instance labels"
        if spatial_dims == 2
        else "NIfTI-1 `.nii.gz`, identity affine (1 mm isotropic): float32 images, uint8 semantic labels, int32 "
        "instance labels"
    )
    return _provenance(
        f"bloodsmear{spatial_dims}d",
        {
            "Source": "Synthetic; generated by `maskseg_monai.data.synthetic.blood_smear_scene` (no external data).",
            "Licence": "Apache-2.0, as maskseg-monai.",
            "Attribution": "maskseg-monai. Class set after blood-smear studies: red cells, white cells, single "
            "platelets, platelet aggregates.",
            "Processing": f"- `blood_smear_scene(({shape.replace('x', ', ')}), seed)` with default object counts.\n"
            f"- Files: {fmt}.\n- Labels: " + ", ".join(f"{k} = {v}" for k, v in BLOOD_CLASSES.items()) + ".",
            "Split": f"Training: seeds 0-{n_train - 1} ({n_train} scenes). Validation: seeds 1000-{999 + n_val} "
            f"({n_val} scenes). File names carry the seed: `scene_<seed>`.",
        },
    )


def _build_bloodsmear2d(out: SetWriter) -> tuple[dict, str]:
    return _blood_datalist(out, 2, 32, 8), _blood_provenance(2, 32, 8)


def _build_bloodsmear3d(out: SetWriter) -> tuple[dict, str]:
    return _blood_datalist(out, 3, 8, 4), _blood_provenance(3, 8, 4)


def _decimate(volume: np.ndarray) -> np.ndarray:
    """Binomial [1, 2, 1] / 4 smoothing along each axis, then every second voxel from index 0."""
    for axis in range(volume.ndim):
        volume = ndi.convolve1d(volume, [0.25, 0.5, 0.25], axis=axis, mode="nearest")
    return volume[::2, ::2, ::2]


def mni_2mm() -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, dict[str, Path]]:
    """The MNI ICBM152 2009a T1/gm/wm volumes at 2 mm, their grey/white label map and affine, and the source files.

    Returns:
        ``(volumes, label, affine, paths)``: ``volumes`` maps ``"t1"``, ``"gm"``, ``"wm"`` to float32 ``[X, Y, Z]``
        arrays in [0, 1]; ``label`` is uint8 (0 background, 1 grey matter, 2 white matter: argmax of gm/wm where
        their maximum is >= 0.5); ``paths`` the nilearn files read.

    Raises:
        FileNotFoundError: when nilearn or a template file is missing.
        ValueError: when the three files do not share one grid.
    """
    folder = _package_dir("nilearn") / "datasets" / "data"
    paths = {k: _source(folder / f"mni_icbm152_{k}_tal_nlin_sym_09a_converted.nii.gz") for k in ("t1", "gm", "wm")}
    imgs = {k: nib.load(p) for k, p in paths.items()}
    affine = imgs["t1"].affine
    if any(not np.allclose(i.affine, affine) or i.shape != imgs["t1"].shape for i in imgs.values()):
        raise ValueError(f"{folder}: the ICBM152 t1/gm/wm files do not share one grid.")
    vols = {k: _decimate(np.asarray(i.dataobj, dtype=np.float32) / 255.0) for k, i in imgs.items()}
    gm, wm = vols["gm"], vols["wm"]
    label = np.where(np.maximum(gm, wm) >= 0.5, np.where(wm > gm, 2, 1), 0).astype(np.uint8)
    return vols, label, affine @ np.diag([2.0, 2.0, 2.0, 1.0]), paths


def _build_brain3d(out: SetWriter) -> tuple[dict, str]:
    vols, label, affine2, paths = mni_2mm()
    nz = np.argwhere(vols["t1"] > 0)
    lo, hi = np.maximum(nz.min(0) - 2, 0), np.minimum(nz.max(0) + 3, label.shape)
    mid_x = int(round(np.linalg.solve(affine2, [0.0, 0.0, 0.0, 1.0])[0]))  # voxel on x = 0 mm
    mid_y, overlap = (lo[1] + hi[1]) // 2, 8
    parts = {
        "left_anterior": (slice(lo[0], mid_x + 1), slice(mid_y - overlap // 2, hi[1])),
        "left_posterior": (slice(lo[0], mid_x + 1), slice(lo[1], mid_y + overlap // 2)),
        "right_anterior": (slice(mid_x, hi[0]), slice(mid_y - overlap // 2, hi[1])),
        "right_posterior": (slice(mid_x, hi[0]), slice(lo[1], mid_y + overlap // 2)),
    }
    items: dict[str, list] = {"training": [], "validation": []}
    shapes = []
    for part, (sx, sy) in parts.items():
        box = (sx, sy, slice(lo[2], hi[2]))
        part_affine = affine2.copy()
        part_affine[:3, 3] = affine2[:3, :3] @ [s.start for s in box] + affine2[:3, 3]
        shapes.append(f"{part}: {'x'.join(str(s.stop - s.start) for s in box)}")
        items["validation" if part == "right_posterior" else "training"].append(
            {
                "image": out.put(f"images/mni152_{part}.nii.gz", nifti_bytes(vols["t1"][box], part_affine, 4)),
                "label": out.put(f"labels/mni152_{part}.nii.gz", nifti_bytes(label[box], part_affine, 4)),
            }
        )
    datalist = {
        "name": "brain3d",
        "description": "MNI ICBM152 2009a symmetric T1 template at 2 mm with a grey/white matter label map, cut "
        "into four overlapping quadrants.",
        "licence": "MNI ICBM152 notice (permissive, notice must be kept): " + _MNI_NOTICE,
        "reference": "Fonov et al., NeuroImage 54(1):313-327 (2011); Fonov et al., NeuroImage 47:S102 (2009)",
        "tensorImageSize": "3D",
        "modality": {"0": "T1w MRI template"},
        "labels": {"0": "background", "1": "grey_matter", "2": "white_matter"},
        **items,
    }
    provenance = _provenance(
        "brain3d",
        {
            "Source": f"MNI ICBM152 2009a nonlinear symmetric template, the copies shipped in the nilearn "
            f"{_version('nilearn')} wheel (`nilearn/datasets/data/`); nilearn is not imported. Original release: "
            "https://www.bic.mni.mcgill.ca/ServicesAtlases/ICBM152NLin2009",
            "Original files": "| file | package | sha256 |\n|---|---|---|\n"
            + "\n".join(
                _file_row(p, f"nilearn {_version('nilearn')}", f"datasets/data/{p.name}") for p in paths.values()
            ),
            "Licence": "nilearn's description (`datasets/description/icbm152_2009.rst`) lists the licence as "
            "'unknown'; the template archive's COPYING file carries this notice, which must appear in all copies:\n\n> "
            + _MNI_NOTICE,
            "Attribution": "- Fonov V, Evans AC, Botteron K, Almli CR, McKinstry RC, Collins DL. Unbiased average "
            "age-appropriate atlases for pediatric studies. NeuroImage 54(1):313-327 (2011). "
            "doi:10.1016/j.neuroimage.2010.07.033\n- Fonov VS, Evans AC, McKinstry RC, Almli CR, Collins DL. Unbiased "
            "nonlinear average age-appropriate brain templates from birth to adulthood. NeuroImage 47:S102 (2009). "
            "doi:10.1016/S1053-8119(09)70884-5\n- Collins DL, Zijdenbos AP, Baaré WFC, Evans AC. ANIMAL+INSECT: "
            "improved cortical structure segmentation. IPMI 1999, LNCS 1613:210-223. "
            "doi:10.1007/3-540-48714-X_16",
            "Processing": "- Read the 1 mm uint8 T1, grey-matter (gm) and white-matter (wm) probability volumes "
            "(197x233x189, values 0-255) and divide by 255.\n- Downsample to 2 mm: binomial [1, 2, 1]/4 smoothing "
            "along each axis, then every second voxel from index 0 (so x = 0 mm stays a voxel centre); affine = "
            "original affine x diag(2, 2, 2, 1).\n- Label: 0 background, 1 grey matter, 2 white matter, by argmax of "
            "(gm, wm) where max(gm, wm) >= 0.5, else 0 (CSF and partial-volume voxels are background).\n- Crop: "
            "bounding box of T1 > 0 plus 2 voxels, then four quadrants: left/right hemispheres split at the "
            "midline voxel (x = 0 mm, kept in both) and anterior/posterior halves overlapping by 8 voxels "
            "(16 mm). Each quadrant's affine is translated to its corner. Shapes: " + "; ".join(shapes) + ".\n"
            "- Files: NIfTI-1 `.nii.gz`, float32 T1 in [0, 1], uint8 labels, qform/sform code 4 (MNI152).",
            "Split": "Training: left_anterior, left_posterior, right_anterior. Validation: right_posterior. There is "
            "only one (symmetric) template, so validation is the mirror image of left_posterior and overlaps "
            "right_anterior: this set exercises pipelines, it does not measure generalisation.",
        },
    )
    return datalist, provenance


def skimage_sources() -> tuple[dict[str, np.ndarray], dict[str, Path]]:
    """scikit-image's bundled biomedical images as uint8 grayscale, and the files read.

    Returns:
        ``({"ihc_hematoxylin": 512x512, "retina_green": 704x704, "microaneurysms": 102x102}, paths)``: the
        hematoxylin channel of ``ihc.png`` (``rgb2hed``, min-max scaled), the green channel of ``retina.jpg``
        (central 1408x1408, 2x2 block mean) and ``microaneurysms.png``.
    """
    folder = _package_dir("skimage") / "data"
    paths = {k: _source(folder / k) for k in ("ihc.png", "retina.jpg", "microaneurysms.png")}
    hematoxylin = _to_uint8(rgb2hed(imread(paths["ihc.png"])[..., :3])[..., 0])
    green = imread(paths["retina.jpg"])[1:1409, 1:1409, 1].astype(np.float32)
    green = np.round(green.reshape(704, 2, 704, 2).mean((1, 3))).astype(np.uint8)
    images = {
        "ihc_hematoxylin": hematoxylin,
        "retina_green": green,
        "microaneurysms": imread(paths["microaneurysms.png"]),
    }
    return images, paths


def _build_unlabelled2d(out: SetWriter) -> tuple[dict, str]:
    images, paths = skimage_sources()
    hematoxylin, green, micro = images["ihc_hematoxylin"], images["retina_green"], images["microaneurysms"]
    grids = {
        "ihc_hematoxylin": _tiles(hematoxylin),
        "retina_green": _tiles(green),
        "microaneurysms": np.stack([np.stack([micro[r : r + 64, c : c + 64] for c in (0, 38)]) for r in (0, 38)]),
    }
    items: dict[str, list] = {"training": [], "validation": []}
    for source, grid in grids.items():
        keep = (grid > 15).mean((2, 3)) >= 0.5 if source == "retina_green" else np.ones(grid.shape[:2], bool)
        last_row = int(np.nonzero(keep.any(1))[0].max())
        for r, c in zip(*np.nonzero(keep)):
            rel = out.put(f"images/{source}_r{r}_c{c}.png", png_bytes(grid[r, c]))
            items["validation" if r == last_row else "training"].append({"image": rel})
    datalist = {
        "name": "unlabelled2d",
        "description": "Unlabelled 64x64 grayscale tiles of scikit-image's bundled biomedical images (IHC "
        "hematoxylin, fundus green channel, microaneurysms) for masked-image pretraining.",
        "licence": "ihc.png: no known copyright restrictions; retina.jpg: CC0-1.0; microaneurysms.png: CC0-1.0",
        "tensorImageSize": "2D",
        "modality": {"0": "grayscale microscopy / fundus photography"},
        **items,
    }
    version = _version("scikit-image")
    provenance = _provenance(
        "unlabelled2d",
        {
            "Source": f"Files bundled in the scikit-image {version} package folder `skimage/data/`, read directly "
            "with `skimage.io.imread` (the `skimage.data` loaders are not called).",
            "Original files": "| file | package | sha256 |\n|---|---|---|\n"
            + "\n".join(_file_row(p, f"scikit-image {version}", f"data/{p.name}") for p in paths.values()),
            "Licence": "- `ihc.png`: 'No known copyright restrictions' (scikit-image docstring of "
            "`skimage.data.immunohistochemistry`); acquired at the Center for Microscopy And Molecular Imaging "
            "(CMMI).\n- `retina.jpg`: CC0 1.0 Universal Public Domain Dedication (Wikimedia Commons, "
            "File:Fundus_photograph_of_normal_left_eye.jpg).\n- `microaneurysms.png`: 'No copyright restrictions. "
            "CC0 given by owner (Andreas Maier)'; crop of 07_dr.JPG of the High-Resolution Fundus (HRF) Image "
            "Database.\n- scikit-image code: BSD-3-Clause.",
            "Attribution": "- IHC: colonic glands, FHL2 protein revealed with DAB, hematoxylin counterstain; CMMI.\n"
            "- Retina: Häggström, Mikael (2014). Medical gallery of Mikael Häggström 2014. WikiJournal of Medicine "
            "1 (2). doi:10.15347/wjm/2014.008\n- Microaneurysms: Budai A, Bock R, Maier A, Hornegger J, Michelson "
            "G (2013). Robust Vessel Segmentation in Fundus Images. International Journal of Biomedical Imaging. "
            "doi:10.1155/2013/154860",
            "Processing": "- `ihc.png` (512x512 RGB): hematoxylin channel of `skimage.color.rgb2hed`, min-max "
            "scaled to uint8; 8x8 grid of 64x64 tiles.\n- `retina.jpg` (1411x1411 RGB): green channel (the "
            "channel with most vessel contrast), central 1408x1408 crop, 2x2 block mean to 704x704, rounded to "
            "uint8; 11x11 grid of tiles, keeping the 97 tiles with at least half their pixels inside the fundus "
            "(value > 15).\n- `microaneurysms.png` (102x102 gray): four overlapping 64x64 tiles at offsets 0 "
            "and 38.\n- Files: 8-bit grayscale PNG `images/<source>_r<row>_c<col>.png`; no labels.",
            "Split": "Validation: the bottom kept tile row of each source image; training: all other tiles.",
        },
    )
    return datalist, provenance


def _dicom_series(folder: Path) -> tuple[np.ndarray, np.ndarray, list[Path]]:
    """Read a folder holding one DICOM series of at least two parallel slices as ``[X, Y, Z]`` HU and a RAS affine.

    Slices are sorted along the slice normal; the affine is built from ImagePositionPatient,
    ImageOrientationPatient and PixelSpacing (LPS), then flipped to RAS as NIfTI and MONAI expect.
    """
    files = sorted(p for p in folder.iterdir() if p.is_file())
    slices = [pydicom.dcmread(p) for p in files]
    orient = np.asarray(slices[0].ImageOrientationPatient, dtype=np.float64)
    row_cos, col_cos = orient[:3], orient[3:]
    normal = np.cross(row_cos, col_cos)
    order = np.argsort([float(np.dot(normal, np.asarray(s.ImagePositionPatient, dtype=np.float64))) for s in slices])
    slices, files = [slices[i] for i in order], [files[i] for i in order]
    hu = np.stack([s.pixel_array * float(s.RescaleSlope) + float(s.RescaleIntercept) for s in slices], axis=-1)
    first, last = (np.asarray(s.ImagePositionPatient, dtype=np.float64) for s in (slices[0], slices[-1]))
    d_row, d_col = (float(v) for v in slices[0].PixelSpacing)
    affine = np.eye(4)
    affine[:3, 0] = row_cos * d_col
    affine[:3, 1] = col_cos * d_row
    affine[:3, 2] = (last - first) / (len(slices) - 1)
    affine[:3, 3] = first
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine
    return np.round(hu).astype(np.int16).transpose(1, 0, 2), affine, files


def _build_ct3d(out: SetWriter) -> tuple[dict, str]:
    folder = demo_dicom_series_dir()
    hu, affine, files = _dicom_series(folder)
    dicom_rel = [out.put(f"dicom/CT5N/{p.name}", p.read_bytes()) for p in files]
    item = {
        "image": out.put("images/ct5n.nii.gz", nifti_bytes(hu, affine)),
        "label": out.put("labels/ct5n_tissue.nii.gz", nifti_bytes((hu >= -200).astype(np.uint8), affine)),
        "image_dicom": str(Path(dicom_rel[0]).parent),
    }
    datalist = {
        "name": "ct3d",
        "description": "pydicom's real 5-slice CT series (16x16 pixels per slice) as DICOM and as NIfTI, with a "
        "threshold tissue mask.",
        "licence": "pydicom test data (pydicom: MIT); images from https://www.pcir.org, freely available image sets",
        "tensorImageSize": "3D",
        "modality": {"0": "CT"},
        "labels": {"0": "air_or_lung", "1": "tissue_hu_ge_-200"},
        "training": [item],
        "validation": [dict(item)],
    }
    version = _version("pydicom")
    provenance = _provenance(
        "ct3d",
        {
            "Source": f"pydicom {version} package data `pydicom/data/test_files/dicomdirtests/98892001/CT5N` (5 "
            "axial CT slices, series 'SmartScore - Gated 0.5 sec'); see `maskseg_monai.data.demo_dicom_series_dir`.",
            "Original files": "| file | package | sha256 |\n|---|---|---|\n"
            + "\n".join(
                _file_row(p, f"pydicom {version}", f"data/test_files/dicomdirtests/98892001/CT5N/{p.name}")
                for p in files
            ),
            "Licence": "pydicom is MIT licensed (Copyright (c) 2008-2020 Darcy Mason and pydicom contributors). Its "
            "test-file README states the dicomdirtests files 'were from https://www.pcir.org, freely available "
            "image sets' and were downsized to 16x16.",
            "Attribution": "pydicom contributors; PCIR (https://www.pcir.org) image sets.",
            "Processing": "- `dicom/CT5N/`: the five DICOM files copied byte for byte (datalist key `image_dicom`).\n"
            "- `images/ct5n.nii.gz`: int16 Hounsfield units (stored value x RescaleSlope + RescaleIntercept), "
            "shape 16x16x5 (x, y, z), slices sorted along the slice normal; RAS affine built from "
            "ImagePositionPatient/ImageOrientationPatient/PixelSpacing (LPS flipped to RAS), matching "
            "`monai.transforms.LoadImage(reader='ITKReader')` on the DICOM folder. PixelSpacing (0.488 mm) was "
            "apparently kept from the full-size images when pydicom downsized them, so physical sizes are not "
            "anatomical.\n- `labels/ct5n_tissue.nii.gz`: uint8, 1 where HU >= -200: a threshold, not an annotation.",
            "Split": "One series only: the same item is listed under training and validation, for loader and "
            "pipeline smoke tests.",
        },
    )
    return datalist, provenance


_TEXTURE_CLASSES = 12


def _build_textures2d(out: SetWriter) -> tuple[dict, str]:
    """Many-class scenes for one-shot segmentation: 12 stripe orientations, 4 classes per 64x64 scene."""
    n_train, n_val, n = 96, 24, _TEXTURE_CLASSES
    items: dict[str, list] = {"training": [], "validation": []}
    for split, seeds in (("training", range(n_train)), ("validation", range(1000, 1000 + n_val))):
        for seed in seeds:
            present = np.random.default_rng(seed).choice(np.arange(1, n + 1), 4, replace=False)
            image, label = oneshot_scene((64, 64), seed, present, n_classes=n)
            stem = f"scene_{seed:04d}"
            items[split].append(
                {
                    "image": out.put(f"images/{stem}.png", png_bytes(np.round(image[0] * 255).astype(np.uint8))),
                    "label": out.put(f"labels/{stem}.png", png_bytes(label)),
                }
            )
    labels = {"0": "background", **{str(k): f"stripes_{round(180 * (k - 1) / n):03d}deg" for k in range(1, n + 1)}}
    datalist = {
        "name": "textures2d",
        "description": "Synthetic 64x64 scenes of striped blobs, one class per stripe orientation (12 classes, 4 per "
        "scene), maskseg_monai.data.synthetic.oneshot_scene; for one-shot segmentation with held-out classes.",
        "licence": "Apache-2.0 (generated by maskseg-monai)",
        "tensorImageSize": "2D",
        "modality": {"0": "synthetic"},
        "labels": labels,
        **items,
    }
    provenance = _provenance(
        "textures2d",
        {
            "Source": "Synthetic; generated by `maskseg_monai.data.synthetic.oneshot_scene` (no external data).",
            "Licence": "Apache-2.0, as maskseg-monai.",
            "Attribution": "maskseg-monai.",
            "Processing": "- Per scene, 4 of the 12 classes drawn with `numpy.random.default_rng(seed)`, then "
            "`oneshot_scene((64, 64), seed, classes, n_classes=12)` (2 blobs per class, random brightness).\n"
            "- Files: 8-bit grayscale PNG images (`round(image * 255)`), uint8 PNG labels.\n- Labels: "
            + ", ".join(f"{k} = {v}" for k, v in labels.items())
            + ".",
            "Split": f"Training: seeds 0-{n_train - 1} ({n_train} scenes). Validation: seeds 1000-{999 + n_val} "
            f"({n_val} scenes). Every class appears in both splits; one-shot bundles hold classes out by fold.",
        },
    )
    return datalist, provenance


BUILDERS: dict[str, Callable[[SetWriter], tuple[dict, str]]] = {
    "nuclei2d": _build_nuclei2d,
    "nuclei2d_regions": _build_nuclei2d_regions,
    "bloodsmear2d": _build_bloodsmear2d,
    "bloodsmear3d": _build_bloodsmear3d,
    "brain3d": _build_brain3d,
    "unlabelled2d": _build_unlabelled2d,
    "ct3d": _build_ct3d,
    "textures2d": _build_textures2d,
}
