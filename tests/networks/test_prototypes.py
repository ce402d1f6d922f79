"""Adaptive local prototype pooling (SSL-ALPNet), prototype scores, and the training-free PrototypeMatcher."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from maskseg_monai.networks import PrototypeMatcher, export_encoder
from maskseg_monai.networks.blocks import (
    AdaptiveLocalPrototypePooling,
    Prototypes,
    global_prototypes,
    pool_cells,
    prototype_scores,
)
from maskseg_monai.networks.mae import MaskedAutoencoderViT


def dice(pred: torch.Tensor, target: torch.Tensor) -> float:
    pred, target = pred.bool(), target.bool()
    return (2 * (pred & target).sum() / (pred.sum() + target.sum()).clamp_min(1)).item()


def two_cluster_scene(fg_box, split: int, size: int = 32, noise: float = 0.02, seed: int = 0):
    """Features [3, H, W]: background cluster a = e0 left of column ``split``, b = e1 right of it; the foreground box
    is (e0 + e1) / sqrt 2, which the mean of an uneven mix of a and b resembles. Returns features and mask [1, H, W]."""
    g = torch.Generator().manual_seed(seed)
    feats = torch.zeros(3, size, size)
    feats[0, :, :split], feats[1, :, split:] = 1.0, 1.0
    mask = torch.zeros(1, size, size)
    r0, r1, c0, c1 = fg_box
    mask[:, r0:r1, c0:c1] = 1.0
    fg = torch.tensor([1.0, 1.0, 0.0]) / 2**0.5
    feats = torch.where(mask.bool(), fg[:, None, None], feats)
    return feats + noise * torch.randn(feats.shape, generator=g), mask


def reference_alp_scores(query, support, mask, window, threshold=0.95, scale=20.0):
    """ALPNet's pooling with explicit selection (boolean indexing, loops over items and shots) and its scores.

    query [B, C, H, W], support [B, K, C, H, W] and mask [B, K, 1, H, W] on the same grid, H and W multiples of
    the window."""
    out = []
    for q, fs, ms in zip(query, support, mask):
        fg_p, bg_p, bg_glob = [], [], []
        for f, m in zip(fs, ms):
            cells = F.avg_pool2d(f[None], window)[0].flatten(1).T  # [n, C]
            frac = F.avg_pool2d(m[None], window)[0].flatten()
            fg_p += [cells[frac >= threshold], ((f * m).sum((1, 2)) / m.sum())[None]]
            bg_p.append(cells[1 - frac >= threshold])
            if (1 - m).sum() > 0:
                bg_glob.append(((f * (1 - m)).sum((1, 2)) / (1 - m).sum())[None])
        bg = torch.cat(bg_p) if sum(len(p) for p in bg_p) else torch.cat(bg_glob)
        scores = []
        for protos in (bg, torch.cat(fg_p)):
            s = scale * torch.einsum("chw,pc->phw", F.normalize(q, dim=0), F.normalize(protos, dim=1))
            scores.append((torch.softmax(s, 0) * s).sum(0))
        out.append(torch.stack(scores))
    return torch.stack(out)


def test_local_prototypes_segment_where_the_global_prototype_fails():
    # support: foreground box, background 60 % cluster a / 40 % cluster b; query: another box, another split
    support, s_mask = two_cluster_scene((8, 16, 4, 12), split=19, seed=0)
    query, q_mask = two_cluster_scene((20, 28, 16, 28), split=12, seed=1)
    s, m, q = support[None, None], s_mask[None, None], query[None]
    local = AdaptiveLocalPrototypePooling(window=4)(q, s, m).argmax(1)
    glob = prototype_scores(q, global_prototypes(s, m)).argmax(1)
    d_local, d_global = dice(local, q_mask), dice(glob, q_mask)
    assert d_local > 0.9, (d_local, d_global)
    assert d_global < 0.6, (d_local, d_global)  # the global background prototype calls cluster b foreground


def test_scores_match_explicit_selection_with_different_prototype_counts():
    """Padding + -inf masking equals ALPNet's per-item boolean selection, for items with different counts."""
    g = torch.Generator().manual_seed(0)
    b, k, c = 3, 2, 5
    support = torch.randn(b, k, c, 16, 16, generator=g)
    mask = torch.zeros(b, k, 1, 16, 16)
    mask[0, 0, :, :8, :8] = 1  # 4 fg cells in shot 0
    mask[0, 1, :, 4:6, 4:6] = 1  # no fg cell in shot 1
    mask[1, :, :, :, :12] = 1  # 12 fg cells per shot
    mask[2, 0, :, ::2] = 1  # stripes: no cell passes, either class
    mask[2, 1, :, 1::2] = 1
    query = torch.randn(b, c, 16, 16, generator=g)
    alp = AdaptiveLocalPrototypePooling(window=4)
    protos = alp.prototypes(support, mask)
    assert protos.foreground_valid.sum(1).tolist() == [4 + 2, 24 + 2, 0 + 2]
    assert protos.background_valid.sum(1).tolist() == [12 + 15, 8, 2]  # item 2: the two global fallbacks
    got = alp.scores(query, protos)
    torch.testing.assert_close(got, reference_alp_scores(query, support, mask, 4), rtol=1e-4, atol=1e-4)
    per_item = torch.cat([alp(query[i : i + 1], support[i : i + 1], mask[i : i + 1]) for i in range(b)])
    torch.testing.assert_close(got, per_item)


def test_fallback_to_global_prototypes_when_no_cell_passes():
    g = torch.Generator().manual_seed(1)
    support, query = torch.randn(2, 1, 4, 12, 12, generator=g), torch.randn(2, 4, 12, 12, generator=g)
    mask = torch.zeros(2, 1, 1, 12, 12)
    mask[..., ::2, :] = 1  # every 4 x 4 cell is half foreground
    protos = AdaptiveLocalPrototypePooling(window=4).prototypes(support, mask)
    assert protos.foreground_valid.sum(1).tolist() == [1, 1] and protos.background_valid.sum(1).tolist() == [1, 1]
    torch.testing.assert_close(
        AdaptiveLocalPrototypePooling(window=4)(query, support, mask),
        prototype_scores(query, global_prototypes(support, mask)),
    )


def test_k_shots_pool_their_prototypes():
    """Shot 1 shows only background cluster a, shot 2 only b: one shot alone misses a cluster, both shots together
    segment the query."""
    size = 32
    query, q_mask = two_cluster_scene((12, 20, 12, 20), split=16, seed=2)
    shot_a, m_a = two_cluster_scene((8, 16, 8, 16), split=size, seed=3)  # background all cluster a
    shot_b, m_b = two_cluster_scene((8, 16, 8, 16), split=0, seed=4)  # background all cluster b
    alp = AdaptiveLocalPrototypePooling(window=4)
    support, mask = torch.stack([shot_a, shot_b])[None], torch.stack([m_a, m_b])[None]
    both = dice(alp(query[None], support, mask).argmax(1), q_mask)
    one = dice(alp(query[None], support[:, :1], mask[:, :1]).argmax(1), q_mask)
    assert both > 0.9 and one < 0.5, (both, one)
    protos = alp.prototypes(support, mask)
    assert protos.foreground.shape == (1, 2 * (64 + 1), 3)


@pytest.mark.parametrize("spatial", [(8, 8, 6), (12, 10)])
def test_2d_3d_shapes_and_uneven_grids(spatial):
    g = torch.Generator().manual_seed(2)
    support = torch.randn(2, 3, 4, *spatial, generator=g)
    mask = (torch.rand(2, 3, 1, *(2 * s for s in spatial), generator=g) > 0.3).float()  # mask at twice the size
    out = AdaptiveLocalPrototypePooling(window=4)(torch.randn(2, 4, *spatial, generator=g), support, mask)
    assert out.shape == (2, 2, *spatial) and torch.isfinite(out).all() and out.abs().max() <= 20 + 1e-4
    # a border cell averages only its positions inside the grid
    cells, frac = pool_cells(torch.arange(6.0).reshape(1, 1, 1, 6), torch.ones(1, 1, 1, 6), (1, 4))
    assert cells[0, :, 0].tolist() == [1.5, 4.5] and frac.tolist() == [[1.0, 1.0]]


def test_shared_support_batch_of_one():
    g = torch.Generator().manual_seed(3)
    support, query = torch.randn(1, 1, 4, 8, 8, generator=g), torch.randn(3, 4, 8, 8, generator=g)
    mask = torch.zeros(1, 1, 1, 8, 8)
    mask[..., :4, :] = 1
    alp = AdaptiveLocalPrototypePooling(window=2)
    torch.testing.assert_close(
        alp(query, support, mask), alp(query, support.expand(3, -1, -1, -1, -1), mask.expand(3, -1, -1, -1, -1))
    )


def test_empty_mask_raises_and_full_mask_has_no_background():
    support = torch.randn(2, 2, 4, 8, 8)
    mask = torch.ones(2, 2, 1, 8, 8)
    mask[1, 1] = 0
    with pytest.raises(ValueError, match="empty"):
        AdaptiveLocalPrototypePooling()(torch.randn(2, 4, 8, 8), support, mask)
    alp = AdaptiveLocalPrototypePooling(window=2, allow_empty=True)
    assert not alp.prototypes(support, mask).foreground_valid[1, -1]  # the empty shot's global prototype
    # a mask covering the whole support: no background prototype, background score 0, finite gradients
    query = torch.randn(1, 4, 8, 8, requires_grad=True)
    protos = alp.prototypes(support[:1], torch.ones(1, 2, 1, 8, 8))
    assert not protos.background_valid.any()
    scores = alp.scores(query, protos)
    assert scores[:, 0].eq(0).all()
    scores.sum().backward()
    assert torch.isfinite(query.grad).all() and query.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"threshold": 0.0}, "threshold"),
        ({"scale": 0}, "scale"),
        ({"window": 0}, "window"),
        ({"resize": "x"}, "features_to_mask"),
    ],
)
def test_alp_ill_args(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AdaptiveLocalPrototypePooling(**kwargs)


def test_alp_rejects_bad_layouts():
    alp = AdaptiveLocalPrototypePooling(window=(2, 2))
    with pytest.raises(ValueError, match="one entry per spatial axis"):
        alp.prototypes(torch.randn(1, 1, 4, 8, 8, 8), torch.ones(1, 1, 1, 8, 8, 8))
    with pytest.raises(ValueError, match="same B and K"):
        alp.prototypes(torch.randn(1, 2, 4, 8, 8), torch.ones(1, 1, 1, 8, 8))
    bad = Prototypes(torch.randn(1, 3, 5), torch.ones(1, 3, dtype=torch.bool), torch.randn(1, 3, 5), torch.ones(1, 2))
    with pytest.raises(ValueError, match="prototypes must be"):
        prototype_scores(torch.randn(1, 5, 4, 4), bad)


# --- PrototypeMatcher ---------------------------------------------------------------------------------------------


def disk(size: int, centre: tuple[float, float], radius: float) -> torch.Tensor:
    yy, xx = torch.meshgrid(
        torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32), indexing="ij"
    )
    return (((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2) <= radius**2).float()[None]


def disk_image(mask: torch.Tensor, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (0.2 + 0.6 * mask + 0.05 * torch.randn(mask.shape, generator=g)).clamp(0, 1)


@pytest.mark.parametrize("prototype", ["global", "local"])
def test_intensity_matcher_segments_a_bright_disk(prototype):
    s_mask, q_mask = disk(32, (10, 12), 6), disk(32, (20, 18), 8)
    net = PrototypeMatcher(backbone="intensity", output_stride=1, prototype=prototype, intensity_sigmas=(1.0,))
    logits = net(disk_image(q_mask, 1)[None], disk_image(s_mask, 0)[None], s_mask[None])
    assert logits.shape == (1, 2, 32, 32)
    assert dice(logits.argmax(1), q_mask) > 0.9
    assert not any(p.requires_grad for p in net.parameters())
    assert not net.train().training  # stays frozen in eval mode


@pytest.mark.parametrize("spatial_dims, size", [(2, (24, 20)), (3, (16, 16, 8))])
def test_random_cnn_matcher_shapes_shots_and_seed(spatial_dims, size):
    kw = {"spatial_dims": spatial_dims, "channels": (4, 8, 8, 8, 8), "output_stride": 2, "stages": (0, -1)}
    net = PrototypeMatcher(prototype="local", local_window=2, **kw)
    q, s = torch.rand(2, 1, *size), torch.rand(2, 3, 1, *size)
    m = (torch.rand(2, 3, 1, *size) > 0.5).float()
    assert net(q, s, m).shape == (2, 2, *size)
    state = torch.get_rng_state()
    twin = PrototypeMatcher(prototype="local", local_window=2, **kw)
    assert torch.equal(torch.get_rng_state(), state)  # seeding leaves the global generator alone
    torch.testing.assert_close(net(q, s, m), twin(q, s, m))
    assert not torch.allclose(net(q, s, m), PrototypeMatcher(prototype="local", local_window=2, seed=1, **kw)(q, s, m))


def test_matcher_loads_an_mae_encoder(tmp_path):
    mae = MaskedAutoencoderViT(
        1, 32, 8, spatial_dims=2, decoder_hidden_size=48, decoder_mlp_dim=96, decoder_num_layers=1,
        decoder_num_heads=4, hidden_size=48, mlp_dim=96, num_layers=3, num_heads=4,
    )  # fmt: skip
    path = export_encoder(mae, tmp_path / "encoder.pt")
    vit = {"hidden_size": 48, "mlp_dim": 96, "num_layers": 3, "num_heads": 4, "img_size": 32, "patch_size": 8}
    net = PrototypeMatcher(backbone="vit", pretrained_encoder=str(path), **vit)
    torch.testing.assert_close(net.vit.blocks[1].mlp.linear1.weight, mae.encoder.blocks[1].mlp.linear1.weight)
    assert not any(p.requires_grad for p in net.parameters())
    assert net(torch.rand(2, 1, 40, 40), torch.rand(2, 1, 24, 24), torch.ones(2, 1, 24, 24)).shape == (2, 2, 40, 40)
    with pytest.raises(ValueError, match="backbone 'vit'"):
        PrototypeMatcher(backbone="intensity").load_encoder(path)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"seg_channels": 8}, "seg_channels.*trainable head"),
        ({"bogus": 1}, r"unknown keys \['bogus'\].*'local_scale'"),
        ({"backbone": "resnet"}, "intensity"),
        ({"prototype": "mean"}, "local"),
        ({"stages": (5,)}, "stages"),
        ({"spatial_dims": 1}, "spatial_dims"),
        ({"backbone": "intensity", "pretrained_encoder": "encoder.pt"}, "backbone 'vit'"),
    ],
)
def test_matcher_ill_args(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PrototypeMatcher(**kwargs)


def test_matcher_bad_inputs():
    net = PrototypeMatcher(backbone="intensity")
    q = torch.rand(1, 1, 16, 16)
    with pytest.raises(ValueError, match="empty"):
        net(q, torch.rand(1, 1, 16, 16), torch.zeros(1, 1, 16, 16))
    with pytest.raises(ValueError, match="support batch"):
        net(torch.rand(3, 1, 16, 16), torch.rand(2, 1, 16, 16), torch.ones(2, 1, 16, 16))
    with pytest.raises(ValueError, match="query image"):
        net(torch.rand(1, 2, 16, 16), torch.rand(1, 1, 16, 16), torch.ones(1, 1, 16, 16))
