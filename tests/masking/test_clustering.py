from __future__ import annotations

import pytest
import torch

from maskseg_monai.masking import batched_kmeans, patch_pixel_features, patchify


def test_kmeans_separates_clear_clusters_per_item():
    g = torch.Generator().manual_seed(0)
    b, n = 4, 60
    labels = torch.rand(b, n, generator=g) < 0.2  # minority cluster, different members per item
    centres = torch.tensor([[0.0, 0.0, 0.0], [5.0, -3.0, 2.0]])
    x = centres[labels.long()] + 0.3 * torch.randn(b, n, 3, generator=g)
    assign, centroids = batched_kmeans(x, 2, 10)
    assert assign.shape == (b, n) and centroids.shape == (b, 2, 3)
    for i in range(b):  # a perfect split, up to the naming of clusters
        same = assign[i] == assign[i][labels[i]][0]
        assert torch.equal(same, labels[i])


def test_kmeans_three_clusters_and_determinism():
    g = torch.Generator().manual_seed(1)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    truth = torch.arange(30) % 3
    x = (centres[truth] + 0.5 * torch.randn(30, 2, generator=g))[None]
    a1, _ = batched_kmeans(x, 3)
    a2, _ = batched_kmeans(x, 3)
    assert torch.equal(a1, a2)
    # every true cluster maps to exactly one k-means cluster
    assert all(a1[0][truth == t].unique().numel() == 1 for t in range(3))
    assert a1[0].unique().numel() == 3


def test_kmeans_ill_args():
    with pytest.raises(ValueError, match=r"\[B, N, D\]"):
        batched_kmeans(torch.rand(5, 2), 2)
    with pytest.raises(ValueError, match="num_clusters"):
        batched_kmeans(torch.rand(1, 3, 2), 4)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_pixel_features_standardised(spatial_dims):
    img = torch.rand(2, 1, *(16,) * spatial_dims)
    feats = patch_pixel_features(patchify(img, 4), (4,) * spatial_dims, 1)
    assert feats.shape == (2, 4**spatial_dims, 3)
    assert torch.allclose(feats.mean(1), torch.zeros(2, 3), atol=1e-5)
    assert torch.allclose(feats.pow(2).mean(dim=(1, 2)), torch.ones(2), atol=1e-4)
