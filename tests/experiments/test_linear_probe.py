"""The dense linear probe itself: it learns what the features encode, its classifier is the upsampled logits, and
its features are the frozen encoder's final tokens."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from maskseg_monai.experiments import score_label_maps
from maskseg_monai.experiments.linear_probe import (
    DenseLinearProbe,
    choose_probe_images,
    encoder_features,
    fit_probe,
)
from maskseg_monai.networks.blocks import ViTEncoder


def _squares(n: int = 6, size: int = 32, patch: int = 4, seed: int = 0) -> torch.Tensor:
    """Label maps ``[n, 1, size, size]``: random 2x2-patch squares of class 1, aligned to the patch grid."""
    g = torch.Generator().manual_seed(seed)
    grid = size // patch
    cells = (torch.rand(n, 1, grid // 2, grid // 2, generator=g) < 0.3).float()
    cells[:, :, 0, 0] = 1.0  # every image has foreground
    return cells.repeat_interleave(2 * patch, 2).repeat_interleave(2 * patch, 3)


def _patch_features(labels: torch.Tensor, patch: int, informative: bool, seed: int = 1) -> torch.Tensor:
    """Patch-grid features ``[n, 8, grid, grid]``: noise, with channel 0 the patch's label when ``informative``."""
    g = torch.Generator().manual_seed(seed)
    n, _, h, w = labels.shape
    feats = torch.randn(n, 8, h // patch, w // patch, generator=g)
    if informative:
        feats[:, 0] = 4 * F.avg_pool2d(labels, patch)[:, 0] - 2 + 0.1 * feats[:, 0]
    return feats


def test_probe_learns_features_that_encode_the_label():
    labels = _squares(8)
    scores = {}
    for informative in (True, False):
        feats = _patch_features(labels, 4, informative)
        fitted, loss = fit_probe(feats[:4], labels[:4], num_classes=2, steps=50)
        with torch.no_grad():
            pred = fitted(feats[4:], labels.shape[2:]).argmax(1, keepdim=True)
        scores[informative] = score_label_maps(list(pred), list(labels[4:].long()), 2)["dice"], loss
    assert scores[True][0] > 0.97 and scores[False][0] < 0.6, scores  # held-out images
    assert scores[True][1] < scores[False][1], scores


def test_upsampled_logits_equal_the_classifier_of_upsampled_features():
    head = DenseLinearProbe(8, 3)
    torch.nn.init.normal_(head.head.weight)
    torch.nn.init.normal_(head.head.bias)
    head.standardize_with(torch.randn(4, 8, 4, 4))
    feats = torch.randn(2, 8, 4, 4)
    upsampled = F.interpolate(feats, size=(16, 16), mode="bilinear", align_corners=False)
    torch.testing.assert_close(head(feats, (16, 16)), head(upsampled, (16, 16)), rtol=1e-5, atol=1e-5)


def test_class_balance_changes_the_fit():
    labels = _squares(4)
    feats = _patch_features(labels, 4, informative=False)
    balanced, _ = fit_probe(feats, labels, 2, steps=20)
    plain, _ = fit_probe(feats, labels, 2, steps=20, class_balanced=False)
    with torch.no_grad():
        fg = [p(feats, (32, 32)).argmax(1).float().mean() for p in (balanced, plain)]
    assert fg[0] > fg[1]  # plain CE on uninformative features predicts the majority (background) more often


def test_fit_probe_ill_arguments():
    labels = _squares(2)
    feats = _patch_features(labels, 4, informative=True)
    with pytest.raises(ValueError, match="no pixel of class"):
        fit_probe(feats, torch.zeros_like(labels), 2)
    with pytest.raises(ValueError, match="labels must be in 0..1"):
        fit_probe(feats, labels * 2, 2)
    with pytest.raises(ValueError, match="steps"):
        fit_probe(feats, labels, 2, steps=0)
    with pytest.raises(ValueError, match=r"labels \[N, 1, \*spatial\]"):
        fit_probe(feats, labels[:1], 2)
    with pytest.raises(ValueError, match="num_classes"):
        DenseLinearProbe(8, 1)
    with pytest.raises(ValueError, match="spatial_dims"):
        DenseLinearProbe(8, 2, spatial_dims=1)


def test_encoder_features_are_the_frozen_final_tokens():
    enc = ViTEncoder(1, 32, 8, hidden_size=48, mlp_dim=96, num_layers=2, num_heads=4, spatial_dims=2, dropout_rate=0.5)
    images = [torch.rand(1, 32, 32) for _ in range(3)]
    feats = encoder_features(enc, images, batch_size=2)
    assert feats.shape == (3, 48, 4, 4) and not feats.requires_grad and not enc.training
    torch.testing.assert_close(feats, encoder_features(enc, images, batch_size=3))  # eval: no dropout
    torch.testing.assert_close(feats[1], enc.tokens_to_map(enc(images[1][None])[0])[0])
    with pytest.raises(ValueError, match="expected input"):
        encoder_features(enc, [torch.rand(1, 16, 16)])


def test_choose_probe_images():
    first = choose_probe_images(48, 4, 0)
    assert set(first) <= set(choose_probe_images(48, 8, 0))  # the study's nested subsets
    assert first == choose_probe_images(48, 4, 0) == sorted(set(first)) and len(first) == 4
    assert first != choose_probe_images(48, 4, 1)
    for k in (0, 49):
        with pytest.raises(ValueError, match=r"--probe_images must be in \[1, 48\]"):
            choose_probe_images(48, k, 0)
