from __future__ import annotations

import pytest
import torch

from maskseg_monai.losses import MaskedReconstructionLoss, patch_targets, per_patch_mse
from maskseg_monai.masking import merge_mae_output, patchify


def as_output(pred: torch.Tensor, mask: torch.Tensor, img: torch.Tensor) -> torch.Tensor:
    """Network-style output [B, C + 1, *spatial] from patch-4 predictions and a patch mask."""
    return merge_mae_output(pred, mask, 4, img.shape[2:], img.shape[1])


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_loss_counts_only_masked_patches(spatial_dims):
    img = torch.rand(2, 1, *(8,) * spatial_dims)
    n = 2**spatial_dims
    pred = patchify(img, 4).clone()
    mask = torch.zeros(2, n)
    mask[:, 0] = 1
    pred[:, 1:] += 10.0  # large error on visible patches only
    assert MaskedReconstructionLoss(4)(as_output(pred, mask, img), img).item() == pytest.approx(0.0, abs=1e-6)
    assert MaskedReconstructionLoss(4, region="all")(as_output(pred, mask, img), img).item() == pytest.approx(
        100 * (n - 1) / n, rel=1e-5
    )
    pred[:, 0] += 1.0  # unit error on the masked patch
    assert MaskedReconstructionLoss(4)(as_output(pred, mask, img), img).item() == pytest.approx(1.0, rel=1e-5)


def test_loss_is_mean_over_masked_patches():
    img = torch.zeros(1, 1, 8, 8)
    pred = torch.zeros(1, 4, 16)
    pred[0, 0], pred[0, 1] = 1.0, 3.0
    mask = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    assert MaskedReconstructionLoss(4)(as_output(pred, mask, img), img).item() == pytest.approx((1 + 9) / 2)


def test_norm_pix_loss_targets():
    img = torch.rand(2, 3, 8, 8) * 5 + 2
    target, mean, std = patch_targets(img, 4, norm_pix_loss=True)
    assert torch.allclose(target.mean(-1), torch.zeros(2, 4), atol=1e-5)
    assert torch.allclose(target * std + mean, patchify(img, 4), atol=1e-4)
    plain, mean0, std0 = patch_targets(img, 4)
    assert torch.equal(plain, patchify(img, 4)) and mean0.eq(0).all() and std0.eq(1).all()


def test_per_patch_mse_shape_and_errors():
    assert per_patch_mse(torch.ones(2, 5, 3), torch.zeros(2, 5, 3)).shape == (2, 5)
    with pytest.raises(ValueError, match="same shape"):
        per_patch_mse(torch.ones(2, 5, 3), torch.zeros(2, 5, 4))
    with pytest.raises(ValueError, match="differ in shape"):
        MaskedReconstructionLoss(4)(torch.rand(2, 2, 8, 8), torch.rand(2, 2, 8, 8))
    with pytest.raises(ValueError, match="region"):
        MaskedReconstructionLoss(4, region="visible")
