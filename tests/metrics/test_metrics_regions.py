"""Region metrics for the small-object analysis: ``region_psnr`` and ``small_object_mask``."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from maskseg_monai.data import blood_smear_scene
from maskseg_monai.metrics import reconstruction_metrics, region_psnr, small_object_mask


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_region_psnr_counts_only_region_pixels(spatial_dims):
    img = torch.rand(2, 2, *(8,) * spatial_dims)
    region = torch.zeros(2, 1, *(8,) * spatial_dims)
    region[:, :, :4] = 1
    recon = img.clone()
    recon[:, :, :4] += 0.1  # error inside the region
    recon[:, :, 4:] += 0.5  # larger error outside, ignored
    psnr = region_psnr(recon, img, region)
    assert psnr.shape == (2,)
    assert torch.allclose(psnr, torch.full((2,), 20.0), atol=1e-3)
    # the complement sees only the large error
    assert torch.allclose(region_psnr(recon, img, 1 - region), torch.full((2,), 10 * math.log10(1 / 0.25)), atol=1e-3)


def test_region_psnr_matches_masked_psnr_and_is_nan_on_empty_regions():
    img, recon = torch.rand(3, 1, 16, 16), torch.rand(3, 1, 16, 16)
    mask = (torch.rand(3, 1, 16, 16) > 0.5).float()
    expected = reconstruction_metrics(recon, img, mask)["psnr_masked"]
    assert torch.allclose(region_psnr(recon, img, mask), expected, atol=1e-4)
    mask[1] = 0
    psnr = region_psnr(recon, img, mask.bool(), data_range=2.0)
    assert torch.isnan(psnr[1]) and torch.isfinite(psnr[[0, 2]]).all()
    assert torch.allclose(psnr[[0, 2]], expected[[0, 2]] + 20 * math.log10(2.0), atol=1e-4)


@pytest.mark.parametrize(
    "recon_shape, region_shape",
    [((2, 1, 8, 8), (2, 1, 8, 4)), ((2, 1, 8, 8), (2, 2, 8, 8)), ((2, 1, 8, 8), (1, 1, 8, 8)), ((2, 8, 8), (2, 8, 8))],
)
def test_region_psnr_ill_shapes(recon_shape, region_shape):
    img = torch.rand(*recon_shape)
    with pytest.raises(ValueError, match="must"):
        region_psnr(img, img, torch.ones(region_shape))


def test_region_psnr_ill_data_range():
    img = torch.rand(1, 1, 4, 4)
    with pytest.raises(ValueError, match="data_range"):
        region_psnr(img, img, torch.ones(1, 1, 4, 4), data_range=0)


def test_small_object_mask_2d_per_class_and_per_image():
    label = torch.zeros(2, 1, 12, 12)
    label[0, 0, 0:2, 0:2] = 1  # 4 px, class 1: small
    label[0, 0, 0:2, 2:4] = 2  # 4 px of class 2 touching it: its own component, small
    label[0, 0, 5:12, 5:12] = 1  # 49 px: large
    label[1, 0, 0:3, 0:3] = 3  # 9 px: not small at max_area 9 (strictly smaller only)
    label[1, 0, 10, 10] = 3  # 1 px: small
    small = small_object_mask(label, max_area=9)
    assert small.shape == label.shape and small.dtype == torch.float32
    expected = torch.zeros_like(label)
    expected[0, 0, 0:2, 0:4] = 1
    expected[1, 0, 10, 10] = 1
    assert torch.equal(small, expected)
    # the 9 px square becomes small at 10; merged across classes it would be 8 px and small at 9
    assert small_object_mask(label, max_area=10)[1, 0, 0:3, 0:3].all()


def test_small_object_mask_connectivity():
    label = torch.zeros(1, 6, 6)  # unbatched [1, H, W]
    label[0, 0, 0] = label[0, 1, 1] = label[0, 2, 2] = 1  # diagonal line
    assert small_object_mask(label, max_area=2).sum() == 3  # three 1-px components
    assert small_object_mask(label, max_area=2, connectivity=2).sum() == 0  # one 3-px component
    assert small_object_mask(label, max_area=4, connectivity=2).sum() == 3


@pytest.mark.parametrize("batched", [True, False])
def test_small_object_mask_3d(batched):
    vol = torch.zeros(1, 10, 10, 10)
    vol[0, :2, :2, :2] = 4  # 8 voxels
    vol[0, 4:, 4:, 4:] = 1  # 216 voxels
    label = vol[None] if batched else vol
    small = small_object_mask(label, max_area=100)
    assert small.shape == label.shape
    assert small.sum() == 8 and small.reshape(10, 10, 10)[:2, :2, :2].all()


def test_small_object_mask_on_blood_smear_scene_finds_platelets():
    _, semantic, _ = blood_smear_scene((64, 64), seed=3)
    label = torch.as_tensor(semantic[None, None].astype(np.float32))
    small = small_object_mask(label, max_area=64).bool()
    platelets = label == 3
    assert platelets.any() and small[platelets].all()  # single platelets are 2-4 px across
    assert not small[label == 2].any()  # white cells are large
    assert not small[label == 0].any()


def test_small_object_mask_of_empty_maps_is_empty():
    assert small_object_mask(torch.zeros(2, 1, 8, 8), 5).sum() == 0


@pytest.mark.parametrize(
    "shape, kwargs, match",
    [
        ((2, 2, 8, 8), {}, "label must be"),
        ((8, 8), {}, "label must be"),
        ((2, 1, 8, 8), {"max_area": 0}, "max_area"),
        ((2, 1, 8, 8), {"connectivity": 3}, "connectivity"),
        ((2, 1, 8, 8, 8), {"spatial_dims": 2}, "label must be"),
    ],
)
def test_small_object_mask_ill_args(shape, kwargs, match):
    args = {"max_area": 4, **kwargs}
    with pytest.raises(ValueError, match=match):
        small_object_mask(torch.zeros(shape), **args)


def test_small_object_mask_rejects_negative_labels():
    with pytest.raises(ValueError, match="non-negative"):
        small_object_mask(-torch.ones(1, 1, 4, 4), 4)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_small_object_mask_dilation_grows_small_objects_only(spatial_dims):
    label = torch.zeros(2, 1, *(12,) * spatial_dims)
    label[(0, 0, *(slice(5, 6),) * spatial_dims)] = 3  # a 1-pixel object in the middle of image 0
    label[(1, 0, *(slice(0, 6),) * spatial_dims)] = 1  # a large object in image 1
    small = small_object_mask(label, max_area=2, dilation=2)
    assert small.shape == label.shape and small.dtype == torch.float32
    expected = torch.zeros_like(label)
    expected[(0, 0, *(slice(3, 8),) * spatial_dims)] = 1  # the pixel grown to a 5^d square/cube
    assert torch.equal(small, expected)  # nothing leaks into image 1, the large object stays out
    # the area test runs before the dilation: growing does not make a large object small or a small one large
    assert torch.equal(small_object_mask(label, max_area=2, dilation=0), (label == 3).float())


@pytest.mark.parametrize("dilation", [-1, 1.5, True])
def test_small_object_mask_rejects_bad_dilation(dilation):
    with pytest.raises(ValueError, match="dilation"):
        small_object_mask(torch.zeros(1, 1, 4, 4), 4, dilation=dilation)
