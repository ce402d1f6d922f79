"""Masked average pooling and cosine-similarity guidance (SG-One layers)."""

from __future__ import annotations

import pytest
import torch

from maskseg_monai.networks.blocks import (
    CosineSimilarityGuidance,
    MaskedAveragePooling,
    cosine_guidance,
    masked_average_pooling,
)


def hand_masked_mean(features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Masked mean with an explicit loop over items and foreground positions, for comparison."""
    out = []
    for f, m in zip(features, mask):
        idx = torch.nonzero(m[0] > 0)
        vecs = [f[(slice(None), *pos.tolist())] for pos in idx]
        out.append(torch.stack(vecs).mean(0))
    return torch.stack(out)


@pytest.mark.parametrize("spatial", [(8, 12), (6, 8, 10)])
def test_map_equals_hand_computed_masked_mean(spatial):
    g = torch.Generator().manual_seed(0)
    features = torch.randn(3, 5, *spatial, generator=g)
    mask = (torch.rand(3, 1, *spatial, generator=g) > 0.7).float()
    mask[:, :, 0, 0] = 1.0  # every mask non-empty
    got = masked_average_pooling(features, mask)
    torch.testing.assert_close(got, hand_masked_mean(features, mask))


@pytest.mark.parametrize("spatial", [(8, 8), (4, 4, 4)])
def test_map_several_shots_average_their_prototypes(spatial):
    g = torch.Generator().manual_seed(1)
    b, k, c = 2, 3, 4
    features = torch.randn(b, k, c, *spatial, generator=g)
    mask = (torch.rand(b, k, 1, *spatial, generator=g) > 0.5).float()
    mask[..., 0, 0] = 1.0
    got = MaskedAveragePooling()(features, mask)
    per_shot = hand_masked_mean(features.flatten(0, 1), mask.flatten(0, 1)).view(b, k, c)
    torch.testing.assert_close(got, per_shot.mean(1))


def test_map_features_resized_to_mask_keeps_a_one_pixel_object():
    # constant features up-sample to constants: a 1-pixel mask at full resolution still gives that constant
    features = torch.full((1, 2, 4, 4), 3.0)
    mask = torch.zeros(1, 1, 16, 16)
    mask[0, 0, 5, 9] = 1
    torch.testing.assert_close(masked_average_pooling(features, mask), torch.full((1, 2), 3.0))
    # mask_to_features area-averages the mask: the pixel becomes a fractional weight, same mean
    torch.testing.assert_close(masked_average_pooling(features, mask, "mask_to_features"), torch.full((1, 2), 3.0))


def test_map_rejects_empty_masks_naming_them():
    features = torch.randn(3, 2, 8, 8)
    mask = torch.ones(3, 1, 8, 8)
    mask[1] = 0
    with pytest.raises(ValueError, match=r"support mask \[1\] of 3 is empty"):
        masked_average_pooling(features, mask)
    with pytest.raises(ValueError, match="empty"):
        MaskedAveragePooling()(features[None], mask[None].clone().zero_())


@pytest.mark.parametrize(
    "features, mask",
    [
        (torch.randn(2, 3, 8), torch.ones(2, 1, 8)),  # 1D
        (torch.randn(2, 3, 8, 8), torch.ones(2, 2, 8, 8)),  # two mask channels
        (torch.randn(2, 3, 8, 8), torch.ones(3, 1, 8, 8)),  # batch mismatch
    ],
)
def test_map_rejects_bad_layouts(features, mask):
    with pytest.raises(ValueError):
        masked_average_pooling(features, mask)


def test_map_rejects_unknown_resize():
    with pytest.raises(ValueError, match="features_to_mask"):
        MaskedAveragePooling(resize="nearest")


@pytest.mark.parametrize("spatial", [(6, 7), (3, 4, 5)])
def test_guidance_is_one_where_features_equal_the_prototype(spatial):
    g = torch.Generator().manual_seed(2)
    features = torch.randn(2, 6, *spatial, generator=g)
    proto = torch.randn(2, 6, generator=g)
    flat = features.flatten(2)  # a view: positions 3, 5 and 7 are set through it
    flat[..., 3] = proto  # one position equals the prototype,
    flat[..., 5] = 2.5 * proto  # one is a positive multiple,
    flat[..., 7] = -proto  # one points the other way
    s = CosineSimilarityGuidance()(features, proto)
    assert s.shape == (2, 1, *spatial)
    got = s.flatten(2)[:, 0, [3, 5, 7]]
    torch.testing.assert_close(got, torch.tensor([[1.0, 1.0, -1.0]] * 2))
    assert bool((s <= 1 + 1e-6).all() and (s >= -1 - 1e-6).all())


def test_guidance_shares_a_single_prototype_and_checks_shapes():
    features = torch.randn(4, 3, 5, 5)
    proto = torch.randn(1, 3)
    torch.testing.assert_close(cosine_guidance(features, proto), cosine_guidance(features, proto.expand(4, 3)))
    with pytest.raises(ValueError, match="prototype"):
        cosine_guidance(features, torch.randn(2, 3))
