from __future__ import annotations

import pytest
import torch

from maskseg_monai.masking import (
    generate_patch_mask,
    grid_size,
    mask_from_scores,
    num_masked_patches,
    patch_mask_to_image,
    patchify,
    unpatchify,
)

CASES = [(2, (16, 32), 4), (2, (32, 32), (8, 4)), (3, (16, 16, 8), 4), (3, (16, 16, 16), (8, 4, 2))]


@pytest.mark.parametrize("spatial_dims,size,patch", CASES)
def test_patchify_round_trip(spatial_dims, size, patch):
    x = torch.rand(2, 3, *size)
    p = patchify(x, patch)
    n = int(torch.tensor(grid_size(size, patch)).prod())
    assert p.shape == (2, n, x[0].numel() // n)
    assert torch.equal(unpatchify(p, patch, size, 3), x)


def test_patchify_order_matches_conv_patch_embedding():
    """Token order and per-patch values agree with a stride-p convolution (MONAI's patch embedding)."""
    x = torch.rand(2, 2, 8, 12)
    conv = torch.nn.Conv2d(2, 5, kernel_size=4, stride=4)
    ref = conv(x).flatten(2).transpose(1, 2)
    w = conv.weight.permute(0, 2, 3, 1).reshape(5, -1)  # (p1, p2, C) order
    assert torch.allclose(patchify(x, 4) @ w.T + conv.bias, ref, atol=1e-5)


def test_patch_values_stay_together():
    x = torch.zeros(1, 1, 8, 8)
    x[..., 4:8, 0:4] = 1.0  # patch at grid (1, 0) -> token 2
    p = patchify(x, 4)
    assert p[0, 2].eq(1).all() and p[0, [0, 1, 3]].eq(0).all()


@pytest.mark.parametrize("num_patches,ratio", [(16, 0.75), (64, 0.25), (100, 0.29), (512, 0.5), (10, 0.05)])
def test_exact_masked_counts(num_patches, ratio):
    m = generate_patch_mask(3, num_patches, ratio, generator=torch.Generator().manual_seed(1))
    expected = num_masked_patches(num_patches, ratio)
    assert expected == num_patches - max(int(num_patches * (1 - ratio)), 1)
    assert m.mask.sum(1).tolist() == [float(expected)] * 3
    assert m.ids_keep.shape == (3, num_patches - expected)
    # the kept ids are exactly the unmasked patches
    assert torch.equal(torch.gather(m.mask, 1, m.ids_keep), torch.zeros_like(m.ids_keep, dtype=torch.float))


def test_seeding_and_per_sample_masks():
    a = generate_patch_mask(4, 64, 0.5, generator=torch.Generator().manual_seed(7))
    b = generate_patch_mask(4, 64, 0.5, generator=torch.Generator().manual_seed(7))
    c = generate_patch_mask(4, 64, 0.5, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a.mask, b.mask) and not torch.equal(a.mask, c.mask)
    assert not torch.equal(a.mask[0], a.mask[1])


def test_ids_restore_unshuffles():
    m = generate_patch_mask(2, 16, 0.75, generator=torch.Generator().manual_seed(0))
    tokens = torch.arange(16.0).expand(2, 16)
    visible = torch.gather(tokens, 1, m.ids_keep)
    filler = torch.full((2, 16 - visible.shape[1]), -1.0)
    restored = torch.gather(torch.cat([visible, filler], 1), 1, m.ids_restore)
    assert torch.equal(restored == -1, m.mask.bool())
    assert torch.equal(restored[restored >= 0], tokens[~m.mask.bool()])


def test_scores_decide_order():
    scores = torch.zeros(2, 16)
    scores[0, [1, 5, 9]] = 1.0
    scores[1, [0, 15]] = 1.0
    m = generate_patch_mask(2, 16, 0.25, scores=scores + 0.01 * torch.rand(2, 16))
    assert m.mask[0, [1, 5, 9]].eq(1).all() and m.mask[0].sum() == 4
    assert m.mask[1, [0, 15]].eq(1).all()


def test_mask_from_scores_reproduces_binary_mask():
    mask = (torch.rand(3, 32) < 0.5).float()
    mask[:, :16], mask[:, 16:] = 0, 1
    mask = mask[:, torch.randperm(32)]
    assert torch.equal(mask_from_scores(mask, 16).mask, mask)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_patch_mask_to_image(spatial_dims):
    size = (8,) * spatial_dims
    m = generate_patch_mask(2, 2**spatial_dims, 0.5, generator=torch.Generator().manual_seed(0)).mask
    pix = patch_mask_to_image(m, 4, size)
    assert pix.shape == (2, 1, *size)
    assert torch.equal(patchify(pix, 4).mean(-1), m)


@pytest.mark.parametrize("ratio", [0.0, 1.0, -0.1, 1.5])
def test_ill_ratio(ratio):
    with pytest.raises(ValueError, match="mask_ratio"):
        generate_patch_mask(1, 16, ratio)


def test_ill_shapes():
    with pytest.raises(ValueError, match="not divisible"):
        patchify(torch.rand(1, 1, 10, 8), 4)
    with pytest.raises(ValueError, match="patches of"):
        patchify(torch.rand(1, 1, 2, 2), 4)
    with pytest.raises(ValueError, match="scores"):
        generate_patch_mask(2, 16, 0.5, scores=torch.rand(2, 15))
    with pytest.raises(ValueError, match="at least 2 patches"):
        num_masked_patches(1, 0.5)
