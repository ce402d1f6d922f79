from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.transforms import LoadImaged
from PIL import Image

from maskseg_monai.transforms import CheckImaged


def load_and_check(path, spatial_dims=2, channels=1):
    loaded = LoadImaged("image", image_only=True, ensure_channel_first=True)({"image": str(path)})
    return CheckImaged("image", spatial_dims, channels)(loaded)


def test_good_image_passes(tmp_path):
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "ok.png")
    assert load_and_check(tmp_path / "ok.png")["image"].shape == (1, 8, 8)


def test_wrong_channels_names_file(tmp_path):
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(ValueError, match=r"rgb\.png: expected 1 channel\(s\), got 3"):
        load_and_check(tmp_path / "rgb.png")


def test_2d_image_to_3d_bundle(tmp_path):
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "slice.png")
    with pytest.raises(ValueError, match=r"slice\.png: expected a 3D image"):
        load_and_check(tmp_path / "slice.png", spatial_dims=3)


def test_nan_values_named():
    img = torch.zeros(1, 4, 4)
    img[0, 1, 1] = float("nan")
    from monai.data import MetaTensor

    with pytest.raises(ValueError, match="scan.nii.gz: the image contains NaN"):
        CheckImaged("image", 2)({"image": MetaTensor(img, meta={"filename_or_obj": "scan.nii.gz"})})
