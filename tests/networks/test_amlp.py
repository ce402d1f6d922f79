from __future__ import annotations

import pytest
import torch

from maskseg_monai.losses import AMLPLoss
from maskseg_monai.masking import (
    AMLP_EXTRAS,
    MaskingPolicy,
    MPSMasking,
    RandomMasking,
    image_mask_to_patches,
    patchify,
    split_mae_output,
)
from maskseg_monai.networks import AMLPMaskedAutoencoder

TINY = dict(
    hidden_size=48,
    mlp_dim=96,
    num_layers=1,
    num_heads=4,
    decoder_hidden_size=48,
    decoder_mlp_dim=96,
    decoder_num_layers=1,
    decoder_num_heads=4,
)


def lesion_scenes(spatial_dims: int, b: int = 4, size: int = 32, patch: int = 4, seed: int = 0):
    """Dark noisy background with a few bright 'lesion' patches; returns images and the true lesion patch mask."""
    g = torch.Generator().manual_seed(seed)
    grid = (size // patch,) * spatial_dims
    n = grid[0] ** spatial_dims
    lesion = torch.zeros(b, n)
    for i in range(b):
        lesion[i, torch.randperm(n, generator=g)[: n // 10]] = 1  # 10% lesion patches
    img = 0.1 + 0.05 * torch.rand(b, 1, *(size,) * spatial_dims, generator=g)
    from maskseg_monai.masking import patch_mask_to_image

    img = img + 0.8 * patch_mask_to_image(lesion, patch, (size,) * spatial_dims)
    return img, lesion


def make(spatial_dims: int, **kw) -> AMLPMaskedAutoencoder:
    args = dict(in_channels=1, img_size=32, patch_size=4, spatial_dims=spatial_dims, mask_ratio=0.25, **TINY)
    return AMLPMaskedAutoencoder(**{**args, **kw})


def patch_maps(out: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The patch mask [B, L] and the AMLP extra maps [B, L] by name of a 1-channel, patch-4 output."""
    parts = split_mae_output(out, 1, AMLP_EXTRAS)
    return image_mask_to_patches(parts.mask, 4), {k: image_mask_to_patches(v, 4) for k, v in parts.extras.items()}


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("features", ["tokens", "pixels"])
def test_mps_masks_lesion_patches_far_above_chance(spatial_dims, features):
    img, lesion = lesion_scenes(spatial_dims)
    net = make(spatial_dims, mps_features=features, mps_warmup=10**6).train()
    mask, maps = patch_maps(net(img))
    category = maps["category"]
    chance = lesion.mean().item()
    hit = ((mask * lesion).sum() / mask.sum()).item()  # fraction of masked patches that are lesions
    assert hit > 3 * chance, (hit, chance)
    # all lesion patches are masked first (ratio 0.25 > 10% lesions), and the category found them
    assert torch.equal(mask * lesion, lesion)
    assert ((category == lesion).float().mean() > 0.95).item()


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_without_mps_masking_is_random(spatial_dims):
    img, lesion = lesion_scenes(spatial_dims, b=8)
    net = make(spatial_dims, use_mps=False)
    assert isinstance(net.masking, RandomMasking) and not net.use_mps
    mask, _ = patch_maps(net(img))
    hit = ((mask * lesion).sum() / mask.sum()).item()
    assert hit < 2 * lesion.mean().item()


def test_amlp_is_mae_with_the_mps_policy():
    net = make(2, mps_features="pixels", mps_clusters=3, mps_iters=4, mps_warmup=7, mps_prob=0.5)
    policy = net.masking
    assert isinstance(policy, MPSMasking) and net.use_mps
    assert (policy.features, policy.clusters, policy.iters, policy.warmup, policy.prob) == ("pixels", 3, 4, 7, 0.5)
    assert policy.lesion_rule == "head" and policy.patch_size == (4, 4)
    assert net.output_extras == AMLP_EXTRAS
    assert not [k for k in net.state_dict() if k.startswith("masking.")]  # checkpoints keep their keys


def test_lesion_cluster_follows_head_after_warmup():
    img, lesion = lesion_scenes(2)
    net = make(2, mps_warmup=0)
    tokens = net.patch_tokens(img)
    logits = -10 * lesion + 10 * (1 - lesion)  # head says background patches are lesions: pick the large cluster
    aux = {"lesion_logits": logits, "step": net.mps_step}
    assert torch.equal(net.masking(img, tokens, aux).maps["category"], 1 - lesion)
    net.masking.warmup = 10**6  # before warm-up ends: the smallest cluster
    assert torch.equal(net.masking(img, tokens, aux).maps["category"], lesion)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_forward_backward_bf16_and_all_params_get_gradients(spatial_dims):
    img, _ = lesion_scenes(spatial_dims, b=2)
    net = make(spatial_dims)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(img)
        loss = AMLPLoss(4)(out, img)
    assert out.shape == (2, 4, *img.shape[2:]) and torch.isfinite(loss)
    loss.backward()
    missing = [n for n, p in net.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing
    assert net.mps_step.item() == 1


def test_ill_args():
    with pytest.raises(ValueError, match="clusters"):
        make(2, mps_clusters=1)
    with pytest.raises(ValueError, match=r"clusters must be in \[2, 64\]"):
        make(2, mps_clusters=65, use_mps=False)  # checked even when MPS is off
    with pytest.raises(ValueError, match="ccl_hidden"):
        make(2, ccl_hidden=-1)
    with pytest.raises(ValueError, match="prob must be in"):
        make(2, mps_prob=1.5)
    with pytest.raises(ValueError, match="tokens"):
        make(2, mps_features="sift")


def test_explicit_mask_bypasses_mps():
    img, lesion = lesion_scenes(2, b=2)
    net = make(2)
    mask = torch.zeros(2, 64)
    mask[:, :16] = 1
    out = split_mae_output(net(img, mask=mask), 1, AMLP_EXTRAS)
    assert torch.equal(image_mask_to_patches(out.mask, 4), mask)
    assert out.extras["category"].eq(0).all()
    assert patchify(out.extras["lesion_logits"], 4).std(-1).max() < 1e-6  # logit map is constant within patches


def test_smallest_rule_ignores_the_head():
    img, lesion = lesion_scenes(2)
    net = make(2, mps_warmup=0, mps_lesion_rule="smallest")
    logits = -10 * lesion + 10 * (1 - lesion)  # a head that disagrees; the rule must not use it
    out = net.masking(img, net.patch_tokens(img), {"lesion_logits": logits, "step": net.mps_step})
    assert torch.equal(out.maps["category"], lesion)
    with pytest.raises(ValueError, match="head"):
        make(2, mps_lesion_rule="largest")


class HeadFirst(MaskingPolicy):
    """Toy policy that reads AMLP's aux: mask the patches the CCL head scores highest."""

    required_aux = ("lesion_logits",)

    def forward(self, images, tokens, aux=None):
        return aux["lesion_logits"]


def test_a_policy_can_replace_mps_and_read_the_head():
    img, _ = lesion_scenes(2, b=2)
    net = make(2, masking=HeadFirst())
    assert not net.use_mps
    mask, maps = patch_maps(net(img))
    expected = torch.zeros_like(mask).scatter_(1, maps["lesion_logits"].topk(16, dim=1).indices, 1.0)
    assert torch.equal(mask, expected) and maps["category"].eq(0).all()
