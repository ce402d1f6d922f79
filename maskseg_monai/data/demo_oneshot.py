"""The demo set of one-shot segmentation on real images: unlabelled real images to train on (superpixel
pseudo-classes), and real labelled classes never trained on to evaluate with (brain tissue across MR slices,
nuclei across microscopy tiles). Built offline from the same sources as the other demo sets."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from maskseg_monai.data._io import png_bytes
from maskseg_monai.data.demo_sets import (
    _MNI_NOTICE,
    SetWriter,
    _file_row,
    _nuclei_source,
    _provenance,
    _tiles,
    _version,
    mni_2mm,
    skimage_sources,
)

__all__ = ["ONESHOT_BUILDERS", "ONESHOT_REAL_CLASSES"]

ONESHOT_REAL_CLASSES: dict[str, dict[int, str]] = {
    "brain_tissue": {1: "grey_matter", 2: "white_matter"},
    "nuclei": {3: "nucleus"},
}
"""The real class sets of ``oneshot_real2d`` (label value -> name), each scored on its own."""

_MIN_AREA = 0.3  # a slice is kept when its brain area is at least this fraction of the largest slice's
_STEP = 2  # every second slice (4 mm apart at 2 mm)


def _slices(label: np.ndarray, axis: int) -> list[int]:
    area = np.moveaxis(label > 0, axis, 0).sum((1, 2))
    return [int(i) for i in np.nonzero(area >= _MIN_AREA * area.max())[0][::_STEP]]


def _u8(image: np.ndarray) -> np.ndarray:
    return np.round(np.clip(image, 0.0, 1.0) * 255).astype(np.uint8)


def _build_oneshot_real2d(out: SetWriter) -> tuple[dict, str]:
    vols, label, _, mni_paths = mni_2mm()
    t1 = vols["t1"]
    items: dict[str, list] = {"training": [], "validation": []}
    counts: dict[str, int] = {}
    for view, axis in (("coronal", 1), ("sagittal", 0)):  # unlabelled training views of the template
        for i in _slices(label, axis):
            plane = np.take(t1, i, axis=axis)
            items["training"].append(
                {"image": out.put(f"images/train/mni152_{view}_{i:03d}.png", png_bytes(_u8(plane)))}
            )
        counts[f"MNI {view} slices"] = len(items["training"]) - sum(counts.values())
    nuclei, instances, nuclei_sections = _nuclei_source()
    for name, (r, c) in {"top_left": (0, 0), "top_right": (0, 256), "bottom_left": (256, 0)}.items():
        items["training"].append(
            {"image": out.put(f"images/train/nuclei_{name}.png", png_bytes(nuclei[r : r + 256, c : c + 256]))}
        )
    sk_images, sk_paths = skimage_sources()
    for name, image in sk_images.items():
        items["training"].append({"image": out.put(f"images/train/{name}.png", png_bytes(image))})
    for z in _slices(label, 2):  # labelled axial slices: brain tissue classes, never trained on
        lab = label[:, :, z]
        body = ndi.binary_fill_holes(lab > 0).astype(np.uint8)
        stem = f"mni152_axial_{z:03d}"
        items["validation"].append(
            {
                "image": out.put(f"images/eval/{stem}.png", png_bytes(_u8(t1[:, :, z]))),
                "label": out.put(f"labels/{stem}.png", png_bytes(lab)),
                "body": out.put(f"bodies/{stem}.png", png_bytes(body)),
            }
        )
    n_axial = len(items["validation"])
    image_t, inst_t = _tiles(nuclei[256:, 256:]), _tiles(instances[256:, 256:])
    for r, c in np.ndindex(image_t.shape[:2]):
        stem = f"nuclei_tile_r{r + 4}_c{c + 4}"
        items["validation"].append(
            {
                "image": out.put(f"images/eval/{stem}.png", png_bytes(image_t[r, c])),
                "label": out.put(f"labels/{stem}.png", png_bytes((inst_t[r, c] > 0).astype(np.uint8) * 3)),
                "body": out.put(f"bodies/{stem}.png", png_bytes(np.ones_like(image_t[r, c]))),
            }
        )
    labels = {"0": "background", **{str(k): v for s in ONESHOT_REAL_CLASSES.values() for k, v in s.items()}}
    datalist = {
        "name": "oneshot_real2d",
        "description": "One-shot segmentation on real images: unlabelled training images (MNI T1 coronal and "
        "sagittal slices, fluorescence nuclei, IHC hematoxylin, fundus) for superpixel self-supervision; labelled "
        "evaluation images with classes never trained on (grey/white matter of MNI T1 axial slices, nuclei of "
        "held-out microscopy tiles).",
        "licence": "MNI ICBM152 notice (permissive, notice must be kept); nuclei: CC0-1.0; ihc.png: no known "
        "copyright restrictions; retina.jpg: CC0-1.0; microaneurysms.png: CC0-1.0",
        "tensorImageSize": "2D",
        "modality": {"0": "T1w MRI template / fluorescence and brightfield microscopy / fundus photography"},
        "labels": labels,
        "class_sets": {name: [int(k) for k in s] for name, s in ONESHOT_REAL_CLASSES.items()},
        **items,
    }
    sk_version, nl_version = _version("scikit-image"), _version("nilearn")
    provenance = _provenance(
        "oneshot_real2d",
        {
            "Source": f"- MNI ICBM152 2009a nonlinear symmetric T1 template and grey/white matter maps, the copies in "
            f"the nilearn {nl_version} wheel (as `brain3d`).\n- {nuclei_sections['Source']}\n- scikit-image "
            f"{sk_version} `skimage/data/` files ihc.png, retina.jpg, microaneurysms.png (as `unlabelled2d`).",
            "Original files": "| file | package | sha256 |\n|---|---|---|\n"
            + "\n".join(_file_row(p, f"nilearn {nl_version}", f"datasets/data/{p.name}") for p in mni_paths.values())
            + "\n"
            + nuclei_sections["Original files"].split("\n", 2)[2]
            + "\n"
            + "\n".join(_file_row(p, f"scikit-image {sk_version}", f"data/{p.name}") for p in sk_paths.values()),
            "Licence": "- MNI ICBM152: this notice must appear in all copies:\n\n> "
            + _MNI_NOTICE
            + "\n\n- Nuclei: "
            + nuclei_sections["Licence"]
            + "\n- ihc.png: no known copyright restrictions; retina.jpg and microaneurysms.png: CC0 1.0 (see "
            "`unlabelled2d`).",
            "Attribution": "Fonov et al., NeuroImage 54(1):313-327 (2011); "
            + nuclei_sections["Attribution"]
            + "; scikit-image data (CMMI; Häggström 2014; Budai et al. 2013).",
            "Processing": "- MNI: the 2 mm T1 and label map of `brain3d` (label 1 grey matter, 2 white matter). Kept "
            f"slices: every second slice whose brain (label > 0) area is >= {_MIN_AREA:.0%} of the largest slice's "
            "along that axis; T1 rounded to 8-bit PNG (`round(t1 * 255)`).\n- Training (no labels): "
            + ", ".join(f"{n} {k}" for k, n in counts.items())
            + "; the three 256x256 training quadrants of the nuclei image (`nuclei2d_regions`); the hematoxylin, "
            "fundus-green and microaneurysm images of `unlabelled2d`, whole.\n- Evaluation (`validation`): "
            f"{n_axial} MNI axial slices with labels 1/2 and a body mask (`bodies/`: the holes-filled union of grey "
            "and white matter, i.e. the brain), and the 16 64x64 tiles of the nuclei image's bottom-right quadrant "
            "with label 3 = nucleus and a body mask of ones (the whole tile).",
            "Split": "Evaluation classes (grey matter, white matter, nucleus) are never labelled in training. The "
            "axial evaluation slices are views of the same template whose coronal and sagittal slices are training "
            "images, unlabelled (the setting-1 condition of SSL-ALPNet: test classes may appear, unlabelled, in "
            "training images). The nuclei tiles are pixels no training image holds.",
        },
    )
    return datalist, provenance


ONESHOT_BUILDERS = {"oneshot_real2d": _build_oneshot_real2d}
