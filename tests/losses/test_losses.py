from __future__ import annotations

import pytest
import torch

from maskseg_monai.losses import MaskedReconstructionLoss, per_patch_mse
from maskseg_monai.masking import merge_mae_output, patch_targets, patchify


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
    with pytest.raises(ValueError, match="masked-autoencoder output"):
        MaskedReconstructionLoss(4)(torch.rand(2, 2, 8, 8), torch.rand(2, 2, 8, 8))
    with pytest.raises(ValueError, match="region"):
        MaskedReconstructionLoss(4, region="visible")


def amlp_output(pred, mask, img, logits):
    """AMLP-style output [B, C + 3, *spatial]: the lesion logit map, then an empty category map."""
    extras = {"lesion_logits": logits, "category": torch.zeros_like(mask)}
    return merge_mae_output(pred, mask, 4, img.shape[2:], img.shape[1], extras)


def test_arl_weights_nonnegative_normalised_detached():
    from maskseg_monai.losses import arl_weights

    errors = torch.rand(3, 10, requires_grad=True)
    mask = (torch.arange(10) % 2).float().expand(3, 10)
    w = arl_weights(errors * 2, mask, gamma=1.0)
    assert not w.requires_grad and (w >= 0).all()
    assert torch.allclose((w * mask).sum(1) / mask.sum(1), torch.ones(3), atol=1e-5)
    assert w[mask == 0].eq(0).all()
    odd = errors.detach()[:, 1::2]
    assert torch.equal(w[:, 1::2].argsort(1), odd.argsort(1))  # weights rank patches like their errors
    assert torch.allclose(arl_weights(errors, mask, gamma=0.0), mask)  # gamma 0: plain MAE weights


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_ccl_zero_when_categories_agree_positive_when_not(spatial_dims):
    from maskseg_monai.losses import AMLPLoss

    img = torch.rand(2, 1, *(8,) * spatial_dims)
    n = 2**spatial_dims
    pred = patchify(img, 4).clone()
    mask = torch.ones(2, n)
    hard = torch.zeros(2, n)
    hard[:, 0] = 1
    pred[:, 0] += 1.0  # patch 0 is hard to reconstruct, the rest nearly exact
    pred[:, 1:] += 0.01
    loss_fn = AMLPLoss(4, arl_weight=0.0, ccl_weight=1.0)
    agree = loss_fn(amlp_output(pred, mask, img, 20 * (2 * hard - 1)), img)
    ccl_agree = loss_fn.terms["ccl"].item()
    disagree = loss_fn(amlp_output(pred, mask, img, -20 * (2 * hard - 1)), img)
    ccl_disagree = loss_fn.terms["ccl"].item()
    assert ccl_agree < 1e-6 and ccl_disagree > 10
    assert disagree > agree


def test_ccl_does_not_backpropagate_into_reconstruction():
    from maskseg_monai.losses import AMLPLoss

    img = torch.rand(1, 1, 8, 8)
    pred = (patchify(img, 4) + 0.1 * torch.randn(1, 4, 16)).requires_grad_(True)
    logits = torch.zeros(1, 4, requires_grad=True)
    out = amlp_output(pred, torch.ones(1, 4), img, logits)
    loss_fn = AMLPLoss(4, arl_weight=0.0, ccl_weight=1.0)
    loss_fn(out, img)
    loss_fn.category_consistency(logits, loss_fn.per_patch(out, img)[0], torch.ones(1, 4)).backward()
    assert pred.grad is None and logits.grad is not None


def test_amlp_loss_with_everything_off_is_mae_loss():
    from maskseg_monai.losses import AMLPLoss

    img = torch.rand(2, 1, 8, 8)
    pred = patchify(img, 4) + 0.3 * torch.randn(2, 4, 16)
    mask = torch.tensor([[1.0, 0, 1, 0], [0, 1, 1, 0]])
    out = amlp_output(pred, mask, img, torch.randn(2, 4))
    mae = MaskedReconstructionLoss(4)(out, img)
    assert torch.allclose(AMLPLoss(4, arl_weight=0.0, ccl_weight=0.0)(out, img), mae)
    assert torch.allclose(AMLPLoss(4, arl_gamma=0.0, ccl_weight=0.0)(out, img), mae)
    assert AMLPLoss(4, arl_gamma=2.0, ccl_weight=0.0)(out, img) > mae  # hard patches weigh more


def test_amlp_loss_ill_args():
    from maskseg_monai.losses import AMLPLoss

    for kwargs in ({"arl_weight": 1.5}, {"ccl_weight": -1}, {"ccl_target": "median"}, {"ccl_top_q": 1.0}):
        with pytest.raises(ValueError):
            AMLPLoss(4, **kwargs)
    with pytest.raises(ValueError, match="lesion logit"):
        AMLPLoss(4)(torch.rand(1, 2, 8, 8), torch.rand(1, 1, 8, 8))


def test_auxiliary_loss_wrapper_adds_the_networks_term():
    from monai.losses import DiceCELoss

    from maskseg_monai.losses import AuxiliaryLossWrapper
    from maskseg_monai.networks import SGOne

    net = SGOne(channels=(4, 8, 8, 8, 8), seg_channels=8, align_weight=1.0)
    net.head[-1].bias.data = torch.tensor([-5.0, 5.0])  # some predicted foreground: the alignment is not skipped
    dice_ce = DiceCELoss(to_onehot_y=True, softmax=True)
    loss_fn = AuxiliaryLossWrapper(dice_ce, net)
    assert not list(loss_fn.parameters()) or all(p.data_ptr() not in {q.data_ptr() for q in net.parameters()}
                                                  for p in loss_fn.parameters())  # fmt: skip
    q, s, label = torch.rand(2, 1, 16, 16), torch.rand(2, 1, 16, 16), torch.zeros(2, 1, 16, 16)
    label[..., 4:10, 4:10] = 1
    pred = net(q, s, label)
    total = loss_fn(pred, label)
    assert net.auxiliary_loss.item() > 0
    torch.testing.assert_close(total, dice_ce(pred, label) + net.auxiliary_loss)
    total.backward()
    assert net.guide.weight.grad.abs().sum() > 0
    net.eval()
    pred = net(q, s, label)
    torch.testing.assert_close(loss_fn(pred, label), dice_ce(pred, label))  # eval: no alignment, loss unchanged
    wrapped = torch.nn.Module()
    wrapped.module = net  # DistributedDataParallel-style wrapper
    net.auxiliary_loss = torch.tensor(0.25)
    torch.testing.assert_close(AuxiliaryLossWrapper(dice_ce, wrapped)(pred, label), dice_ce(pred, label) + 0.25)
    with pytest.raises(ValueError, match="callable"):
        AuxiliaryLossWrapper("DiceCELoss", net)
