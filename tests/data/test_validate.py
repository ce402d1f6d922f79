"""``checked_dataset``: the three cache modes check every item as they start, name a bad file or skip it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, RandFlipd, ScaleIntensityd
from PIL import Image

from maskseg_monai.data import SUPPORTED_CACHE_MODES, checked_dataset
from maskseg_monai.utils import BadInputError


@pytest.fixture
def items(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for i in range(3):
        path = tmp_path / f"good{i}.png"
        Image.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8)).save(path)
        paths.append(path)
    bad = tmp_path / "bad.png"
    bad.write_bytes(paths[0].read_bytes()[:40])  # truncated
    return [{"image": str(p)} for p in (paths[0], bad, *paths[1:])]


def transform() -> Compose:
    return Compose([LoadImaged("image"), EnsureChannelFirstd("image"), ScaleIntensityd("image"),
                    RandFlipd("image", prob=0.5, spatial_axis=0)])  # fmt: skip


@pytest.mark.parametrize("mode", SUPPORTED_CACHE_MODES)
def test_a_bad_file_is_named_or_skipped_in_every_mode(mode, items, tmp_path):
    with pytest.raises(BadInputError, match=r"bad\.png.*bad training item 1 of 4; --skip_bad_files true"):
        checked_dataset(items, transform(), mode, tmp_path / "cache")
    ds = checked_dataset(items, transform(), mode, tmp_path / "cache", skip_bad_files=True)
    assert len(ds) == 3 and len(ds.skipped) == 1 and "bad.png" in ds.skipped[0]
    assert all("bad.png" not in d["image"] for d in ds.data)
    assert ds[0]["image"].shape == (1, 16, 16)


def test_the_modes_give_the_same_items_and_disk_caches_under_its_name(items, tmp_path):
    good = [items[0], *items[2:]]
    deterministic = Compose(transform().transforms[:3])
    got = {}
    for mode in SUPPORTED_CACHE_MODES:
        ds = checked_dataset(good, deterministic, mode, tmp_path / "cache", name="validation")
        got[mode] = [torch.as_tensor(ds[i]["image"]) for i in range(len(ds))]
    assert len(got["memory"]) == 3
    for mode in ("disk", "none"):
        assert all(torch.equal(a, b) for a, b in zip(got["memory"], got[mode], strict=True)), mode
    assert len(list((tmp_path / "cache" / "validation").glob("*.pt"))) == 3


def test_unknown_mode_lists_the_choices(items, tmp_path):
    with pytest.raises(ValueError, match="cache_mode: Unsupported option 'ram'"):
        checked_dataset(items, transform(), "ram", tmp_path)
