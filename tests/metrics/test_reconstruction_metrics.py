from __future__ import annotations

import math

import pytest
import torch
from monai.metrics import PSNRMetric

from maskseg_monai.masking import generate_patch_mask, merge_mae_output, patchify
from maskseg_monai.metrics import ReconstructionMetric, reconstruct_image, reconstruction_metrics


def as_output(pred: torch.Tensor, mask: torch.Tensor, img: torch.Tensor) -> torch.Tensor:
    """Network-style output [B, C + 1, *spatial] from patch-4 predictions and a patch mask."""
    return merge_mae_output(pred, mask, 4, img.shape[2:], img.shape[1])


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_perfect_reconstruction(spatial_dims):
    img = torch.rand(2, 1, *(16,) * spatial_dims)
    mask = generate_patch_mask(2, 4**spatial_dims, 0.5, generator=torch.Generator().manual_seed(0)).mask
    recon, pasted, pix = reconstruct_image(as_output(patchify(img, 4), mask, img), img, 4)
    assert torch.allclose(recon, img) and torch.allclose(pasted, img)
    m = reconstruction_metrics(recon, img, pix)
    assert torch.allclose(m["ssim_all"], torch.ones(2), atol=1e-4)
    assert torch.allclose(m["ssim_masked"], torch.ones(2), atol=1e-4)
    assert (m["psnr_masked"] > 100).all()


def test_masked_metrics_see_only_masked_pixels():
    img = torch.rand(1, 1, 16, 16)
    mask = torch.zeros(1, 16)
    mask[0, :8] = 1  # top half of the patch grid (rows 0-1 of 4)
    pred = patchify(img, 4).clone()
    pred[0, 8:] += 0.5  # error only where visible
    recon, pasted, pix = reconstruct_image(as_output(pred, mask, img), img, 4)
    m = reconstruction_metrics(recon, img, pix)
    assert m["psnr_masked"].item() > 100
    assert m["psnr_all"].item() == pytest.approx(10 * math.log10(1 / (0.25 / 2)), rel=1e-4)
    assert torch.allclose(pasted, img)  # visible pixels come from the input


def test_psnr_matches_monai_and_hand_formula():
    img = torch.rand(2, 1, 16, 16)
    noisy = (img + 0.05 * torch.randn_like(img)).clamp(0, 1)
    pix = torch.ones(2, 1, 16, 16)
    m = reconstruction_metrics(noisy, img, pix)
    ref = PSNRMetric(1.0, reduction="none")(noisy, img).reshape(-1)
    assert torch.allclose(m["psnr_all"], ref) and torch.allclose(m["psnr_masked"], ref, atol=1e-4)
    assert torch.allclose(m["ssim_all"], m["ssim_masked"], atol=1e-5)


def test_norm_pix_predictions_are_denormalised():
    img = torch.rand(2, 1, 8, 8) * 3
    patches = patchify(img, 4)
    normed = (patches - patches.mean(-1, keepdim=True)) / (patches.var(-1, keepdim=True) + 1e-6).sqrt()
    recon, _, _ = reconstruct_image(as_output(normed, torch.ones(2, 4), img), img, 4, norm_pix_loss=True)
    assert torch.allclose(recon, img, atol=1e-4)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_cumulative_metric_over_batches_and_lists(spatial_dims):
    img = torch.rand(4, 1, *(16,) * spatial_dims)
    mask = generate_patch_mask(4, 4**spatial_dims, 0.5, generator=torch.Generator().manual_seed(0)).mask
    out = as_output(patchify(img, 4) + 0.1, mask, img)
    metric = ReconstructionMetric("psnr_masked", 4)
    metric(out[:2], img[:2])
    metric(list(out[2:]), list(img[2:]))  # decollated items, as MONAI engines pass them
    assert metric.aggregate().item() == pytest.approx(20.0, abs=1e-3)  # MSE 0.01 everywhere
    with pytest.raises(ValueError, match="C \\+ 1"):
        metric(img, img)
    with pytest.raises(ValueError, match="Unsupported metric"):
        ReconstructionMetric("mse", 4)
