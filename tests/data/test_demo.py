"""Tests of maskseg_monai.data.demo: offline, deterministic demo sets as MONAI datalists."""

from __future__ import annotations

import hashlib
import json
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.data import load_decathlon_datalist
from monai.transforms import LoadImage
from scipy import ndimage as ndi

from maskseg_monai.data import DEMO_SETS, demo_dicom_series_dir, ensure_demo_datalist, materialize_demo

# name: (spatial shape, or {split: shape} when the splits differ, channels, n_training, n_validation, keys of each item)
EXPECTED = {
    "nuclei2d": ((64, 64), 1, 48, 16, {"image", "label", "label_instances"}),
    "nuclei2d_regions": (
        {"training": (256, 256), "validation": (64, 64)},
        1,
        3,
        16,
        {"image", "label", "label_instances"},
    ),
    "bloodsmear2d": ((64, 64), 1, 32, 8, {"image", "label", "label_instances"}),
    "bloodsmear3d": ((32, 32, 32), 1, 8, 4, {"image", "label", "label_instances"}),
    "brain3d": ((39, 52, 80), 1, 3, 1, {"image", "label"}),
    "unlabelled2d": ((64, 64), 1, 150, 15, {"image"}),
    "ct3d": ((16, 16, 5), 1, 1, 1, {"image", "label", "image_dicom"}),
    "textures2d": ((64, 64), 1, 96, 24, {"image", "label"}),
    "oneshot_real2d": (None, 1, 75, 45, None),  # images of several sizes: test_oneshot_real2d
}


def _no_network(*args, **kwargs):
    raise AssertionError("demo materialisation tried to open a network connection")


def _digests(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("demo")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", _no_network)
        paths = materialize_demo(root)
    assert list(paths) == list(DEMO_SETS)
    return root


@pytest.fixture(scope="module")
def loader() -> LoadImage:
    return LoadImage(image_only=True, ensure_channel_first=True)


@pytest.mark.parametrize("name", DEMO_SETS)
def test_datalist_loads_and_files_exist(demo_root, loader, name):
    shape, channels, n_train, n_val, keys = EXPECTED[name]
    path = demo_root / name / "dataset.json"
    meta = json.loads(path.read_text())
    assert meta["name"] == name and meta["licence"] and meta["description"]
    assert (meta["numTraining"], meta["numValidation"]) == (n_train, n_val)
    for split, n in (("training", n_train), ("validation", n_val)):
        items = load_decathlon_datalist(path, True, split)
        split_shape = shape[split] if isinstance(shape, dict) else shape
        assert len(items) == n
        if shape is None:
            continue
        for item in items:
            assert set(item) == keys
            for key, file in item.items():
                assert Path(file).exists(), file
                img = loader(file)
                assert img.shape == (channels, *split_shape), (file, img.shape)
                if key == "label" and name != "brain3d":
                    assert set(torch.unique(img).tolist()) <= {int(k) for k in meta["labels"]}


@pytest.mark.parametrize("name", DEMO_SETS)
def test_provenance_and_marker(demo_root, name):
    text = (demo_root / name / "PROVENANCE.md").read_text()
    for section in ("## Source", "## Licence", "## Attribution", "## Processing", "## Split"):
        assert section in text
    marker = json.loads((demo_root / name / ".complete").read_text())
    assert all((demo_root / name / f).is_file() for f in marker["files"])
    assert "dataset.json" in marker["files"] and "PROVENANCE.md" in marker["files"]


def test_brain_provenance_keeps_mni_notice(demo_root):
    text = (demo_root / "brain3d" / "PROVENANCE.md").read_text()
    assert "Copyright (C) 1993-2004 Louis Collins, McConnell Brain Imaging Centre" in text
    assert (
        "Copyright (C) 1993-2004 Louis Collins"
        in json.loads((demo_root / "brain3d" / "dataset.json").read_text())["licence"]
    )


def test_nuclei_regions_hold_the_same_pixels_as_the_tiles(demo_root, loader):
    """Three training quadrants + the validation quadrant's tiles = nuclei2d, split at the same place."""
    tiles = {  # LoadImage's PIL reader gives [W, H]: .T back to the arrays' rows and columns
        Path(item["image"]).stem: loader(item["image"])[0].T
        for split in ("training", "validation")
        for item in load_decathlon_datalist(demo_root / "nuclei2d" / "dataset.json", True, split)
    }
    whole = torch.zeros(512, 512)
    for stem, tile in tiles.items():
        r, c = (int(t[1:]) for t in stem.split("_")[1:])
        whole[r * 64 : (r + 1) * 64, c * 64 : (c + 1) * 64] = tile
    path = demo_root / "nuclei2d_regions" / "dataset.json"
    offsets = {"top_left": (0, 0), "top_right": (0, 256), "bottom_left": (256, 0)}
    for item in load_decathlon_datalist(path, True, "training"):
        r, c = offsets[Path(item["image"]).stem.removeprefix("region_")]
        assert torch.equal(loader(item["image"])[0].T, whole[r : r + 256, c : c + 256])
    validation = load_decathlon_datalist(path, True, "validation")
    nuclei_val = load_decathlon_datalist(demo_root / "nuclei2d" / "dataset.json", True, "validation")
    assert sorted(Path(i["image"]).name for i in validation) == sorted(Path(i["image"]).name for i in nuclei_val)
    for item in validation:
        assert torch.equal(loader(item["image"])[0].T, tiles[Path(item["image"]).stem])


def test_nuclei_labels_binary_with_many_nuclei(demo_root):
    items = load_decathlon_datalist(demo_root / "nuclei2d" / "dataset.json", True, "training")
    items += load_decathlon_datalist(demo_root / "nuclei2d" / "dataset.json", True, "validation")
    load = LoadImage(image_only=True)
    n_objects = 0
    for item in items:
        label = load(item["label"]).numpy()
        assert set(np.unique(label).tolist()) <= {0, 1}
        n_objects += ndi.label(label)[1]
        assert np.array_equal(label > 0, load(item["label_instances"]).numpy() > 0)
    assert n_objects >= 100


def test_brain_labels_and_affine(demo_root):
    loader = LoadImage(image_only=True)
    items = load_decathlon_datalist(demo_root / "brain3d" / "dataset.json", True, "training")
    image, label = loader(items[0]["image"]), loader(items[0]["label"])
    assert set(torch.unique(label).tolist()) == {0, 1, 2}
    assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
    assert torch.allclose(torch.diag(image.affine)[:3].abs(), torch.tensor(2.0, dtype=torch.float64))
    assert torch.allclose(image.affine, label.affine)


def test_ct_nifti_matches_dicom_series(demo_root):
    series = demo_dicom_series_dir()
    assert series.is_dir() and len(list(series.iterdir())) == 5
    item = load_decathlon_datalist(demo_root / "ct3d" / "dataset.json", True, "training")[0]
    nifti = LoadImage(image_only=True)(item["image"])
    for folder in (series, item["image_dicom"]):
        dicom = LoadImage(reader="ITKReader", image_only=True)(str(folder))
        assert torch.allclose(nifti, dicom) and torch.allclose(nifti.affine, dicom.affine)


def test_byte_identical_rematerialisation(demo_root, tmp_path):
    materialize_demo(tmp_path)
    assert _digests(tmp_path) == _digests(demo_root)


def test_idempotent_reuse_and_repair(tmp_path):
    path = materialize_demo(tmp_path, "nuclei2d")["nuclei2d"]
    tile = tmp_path / "nuclei2d" / "images" / "tile_r0_c0.png"
    stamp = tile.stat().st_mtime_ns
    assert ensure_demo_datalist(tmp_path, "nuclei2d") == str(path)
    assert tile.stat().st_mtime_ns == stamp  # reused, not rewritten
    before = tile.read_bytes()
    tile.unlink()
    materialize_demo(tmp_path, ["nuclei2d"])  # incomplete set is rebuilt
    assert tile.read_bytes() == before
    materialize_demo(tmp_path, ["nuclei2d"], overwrite=True)
    assert tile.read_bytes() == before and not list((tmp_path / "nuclei2d").rglob("*.tmp"))


def test_unknown_name(tmp_path):
    with pytest.raises(ValueError, match="nuclei2d"):
        materialize_demo(tmp_path, ["nuclei"])
    with pytest.raises(ValueError, match="bloodsmear2d"):
        ensure_demo_datalist(tmp_path, "blood")


def test_oneshot_real2d_trains_unlabelled_and_evaluates_real_class_sets(demo_root, loader):
    path = demo_root / "oneshot_real2d" / "dataset.json"
    meta = json.loads(path.read_text())
    assert meta["class_sets"] == {"brain_tissue": [1, 2], "nuclei": [3]}
    assert all(set(item) == {"image"} for item in load_decathlon_datalist(path, True, "training"))
    seen = {"brain_tissue": 0, "nuclei": 0}
    for item in load_decathlon_datalist(path, True, "validation"):
        assert set(item) == {"image", "label", "body"}
        image, label, body = (loader(item[k]) for k in ("image", "label", "body"))
        assert image.shape == label.shape == body.shape and image.shape[0] == 1
        values = set(torch.unique(label).tolist()) - {0}
        name = next(n for n, classes in meta["class_sets"].items() if values <= set(classes))  # one set per image
        seen[name] += 1
        assert set(torch.unique(body).tolist()) <= {0, 1} and bool((body[label > 0] == 1).all())  # body holds it
    assert seen == {"brain_tissue": 29, "nuclei": 16}
    text = (demo_root / "oneshot_real2d" / "PROVENANCE.md").read_text()
    assert "Copyright (C) 1993-2004 Louis Collins" in text
