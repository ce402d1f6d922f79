from __future__ import annotations

import pytest
import torch
from monai.networks.blocks import UnetrPrUpBlock, UnetrUpBlock
from monai.networks.nets import UNETR as MonaiUNETR

from maskseg_monai.networks import UNETR
from maskseg_monai.networks.unetr import unetr_skip_layers

TINY = dict(feature_size=8, hidden_size=48, mlp_dim=96, num_heads=4, num_layers=4)


def img_size(spatial_dims: int) -> int:
    # 32^3 with patch 2 is 4096 tokens, too slow for a unit test; 3D patch 16 at 32^3 is tested against MONAI below
    return 32 if spatial_dims == 2 else 16


def count(net: torch.nn.Module, block: type) -> int:
    return sum(isinstance(m, block) for m in net.modules())


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("patch", [2, 4, 8, 16])
def test_shape_and_stages(spatial_dims, patch):
    img = img_size(spatial_dims)
    net = UNETR(2, 3, img, patch_size=patch, spatial_dims=spatial_dims, **TINY)
    stages = {2: 1, 4: 2, 8: 3, 16: 4}[patch]
    assert net.num_stages == stages
    assert count(net, UnetrUpBlock) == stages and count(net, UnetrPrUpBlock) == stages - 1
    assert net.skip_layers == [3, 2, 1][: stages - 1]  # num_layers // 4 * k, deepest block -> coarsest stage
    x = torch.rand(2, 2, *(img,) * spatial_dims)
    assert net(x).shape == (2, 3, *x.shape[2:])


def test_patch_32_and_anisotropic_image():
    net = UNETR(1, 2, (64, 32), patch_size=32, spatial_dims=2, **{**TINY, "num_layers": 5})
    assert net.num_stages == 5 and net.skip_layers == [4, 3, 2, 1]
    assert net(torch.rand(2, 1, 64, 32)).shape == (2, 2, 64, 32)


def test_skip_layers():
    assert unetr_skip_layers(12, 4) == [9, 6, 3]  # MONAI's UNETR
    assert unetr_skip_layers(12, 3) == [9, 6]
    assert unetr_skip_layers(12, 2) == [9]
    assert unetr_skip_layers(1, 1) == []
    assert unetr_skip_layers(12, 5) == [8, 6, 4, 2]
    with pytest.raises(ValueError, match="at least 4"):
        unetr_skip_layers(3, 2)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_patch_16_is_monai_unetr(spatial_dims):
    kw = dict(feature_size=8, hidden_size=48, mlp_dim=96, num_heads=4, spatial_dims=spatial_dims, qkv_bias=True)
    ref = MonaiUNETR(1, 3, 32, **kw).eval()
    net = UNETR(1, 3, 32, patch_size=16, num_layers=12, **kw).eval()
    assert count(net, UnetrUpBlock) == count(ref, UnetrUpBlock) == 4
    assert count(net, UnetrPrUpBlock) == count(ref, UnetrPrUpBlock) == 3
    # same modules and parameter names, so MONAI's weights load as they are and give the same output
    assert net.state_dict().keys() == ref.state_dict().keys()
    net.load_state_dict(ref.state_dict())
    x = torch.rand(2, 1, *(32,) * spatial_dims)
    out, expected = net(x), ref(x)
    assert out.shape == expected.shape == (2, 3, *x.shape[2:])
    assert torch.allclose(out, expected, atol=1e-5)


def _forward_from_hidden_states(net: UNETR, x: torch.Tensor) -> torch.Tensor:
    """UNETR's forward as it was before ``forward_intermediates``: taps picked from ``hidden_states``."""
    tokens, hidden = net.vit(x)
    n = net.num_stages
    skips = [getattr(net, f"encoder{j}")(net.proj_feat(hidden[k])) for j, k in zip(range(n, 1, -1), net.skip_layers)]
    dec = net.proj_feat(tokens)
    for j, skip in zip(range(n + 1, 1, -1), [*skips, net.encoder1(x)]):
        dec = getattr(net, f"decoder{j}")(dec, skip)
    return net.out(dec)


@pytest.mark.parametrize("spatial_dims, patch", [(2, 2), (2, 4), (2, 8), (3, 4)])
def test_forward_is_unchanged_by_forward_intermediates(spatial_dims, patch):
    img = img_size(spatial_dims)
    net = UNETR(2, 3, img, patch_size=patch, spatial_dims=spatial_dims, **TINY).eval()
    x = torch.rand(2, 2, *(img,) * spatial_dims)
    assert torch.equal(net(x), _forward_from_hidden_states(net, x))


@pytest.mark.parametrize("use_flash_attention", [True, False])
def test_dropout_only_in_training(use_flash_attention):
    """MONAI 1.6.1's fused attention applied dropout_rate in eval() too: two calls differed."""
    net = UNETR(1, 2, 32, patch_size=8, spatial_dims=2, dropout_rate=0.2, use_flash_attention=use_flash_attention,
                **TINY).eval()  # fmt: skip
    x = torch.rand(2, 1, 32, 32)
    assert torch.equal(net(x), net(x))
    assert not torch.equal(net.train()(x), net(x))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(patch_size=6), "power of two"),
        (dict(patch_size=1), "power of two"),
        (dict(patch_size=(4, 8)), "same on every axis"),
        (dict(img_size=30), "divisible by patch_size"),
        (dict(patch_size=16, num_layers=3), "num_layers"),
        (dict(hidden_size=50), "divisible by num_heads"),
        (dict(dropout_rate=1.5), "dropout_rate"),
        (dict(spatial_dims=4), "spatial_dims"),
        (dict(pos_embed_type="fourier"), "fourier"),
    ],
)
def test_ill_arg(kwargs, match):
    args = {"in_channels": 1, "out_channels": 2, "img_size": 32, "patch_size": 4, "spatial_dims": 2, **TINY}
    with pytest.raises(ValueError, match=match):
        UNETR(**{**args, **kwargs})


def test_wrong_input_shape():
    net = UNETR(1, 2, 32, patch_size=4, spatial_dims=2, **TINY)
    with pytest.raises(ValueError, match=r"expected input \[B, 1, 32, 32\]"):
        net(torch.rand(2, 1, 16, 16))


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_bf16_autocast_forward_backward(spatial_dims):
    net = UNETR(1, 3, 16, patch_size=4, spatial_dims=spatial_dims, **TINY)
    x = torch.rand(2, 1, *(16,) * spatial_dims)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(x)
        loss = out.float().square().mean()
    assert out.shape == (2, 3, *x.shape[2:]) and torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for p in net.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_dropout_is_the_name_monai_label_epistemic_scoring_sets():
    kw = dict(in_channels=1, out_channels=2, img_size=32, patch_size=8, hidden_size=48, mlp_dim=96, num_heads=4,
              num_layers=4, spatial_dims=2)  # fmt: skip
    rates = {m.p for m in UNETR(dropout=0.3, **kw).modules() if isinstance(m, torch.nn.Dropout)}
    assert rates == {0.3}
    assert {m.p for m in UNETR(**kw).modules() if isinstance(m, torch.nn.Dropout)} <= {0.0}
    with pytest.raises(ValueError, match="not both"):
        UNETR(dropout=0.3, dropout_rate=0.1, **kw)
