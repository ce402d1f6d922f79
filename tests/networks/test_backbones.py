"""One-shot backbones: the interface, the CNN and ViT backbones in 2D/3D, and SG-One on a backbone module."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from maskseg_monai.networks import (
    CNNBackbone,
    OneShotBackbone,
    PrototypeMatcher,
    SGOne,
    ViTBackbone,
    ViTEncoder,
    export_encoder,
)
from maskseg_monai.networks.backbones import vit_taps
from maskseg_monai.networks.blocks import resize_to
from maskseg_monai.networks.mae import MaskedAutoencoderViT

CH = (4, 8, 8, 8, 8)
TINY_VIT = {"hidden_size": 48, "mlp_dim": 96, "num_layers": 3, "num_heads": 4}


class TwoScaleBackbone(nn.Module):
    """A backbone written outside the package: two maps at different resolutions, any ``spatial_dims``."""

    def __init__(self, spatial_dims: int = 2, in_channels: int = 1) -> None:
        super().__init__()
        conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
        self.spatial_dims, self.in_channels, self.out_channels = spatial_dims, in_channels, (6, 10)
        self.fine = conv(in_channels, 6, 3, stride=2, padding=1)
        self.coarse = conv(6, 10, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        fine = torch.relu(self.fine(x))
        return [fine, torch.relu(self.coarse(fine))]


@pytest.mark.parametrize("spatial_dims, size", [(2, (32, 24)), (3, (16, 16, 8))])
@pytest.mark.parametrize("stride", [1, 2, 4])
def test_cnn_backbone_shapes(spatial_dims, size, stride):
    net = CNNBackbone(spatial_dims, 2, CH, output_stride=stride)
    feats = net(torch.rand(2, 2, *size))
    assert isinstance(net, OneShotBackbone) and net.out_channels == (8, 8, 8)
    assert [f.shape for f in feats] == [(2, 8, *(s // stride for s in size))] * 3


@pytest.mark.parametrize("kwargs, match", [({"channels": (4, 8, 8)}, "5 CNN blocks"), ({"output_stride": 3}, "1, 2")])
def test_cnn_backbone_ill_args(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CNNBackbone(2, 1, **{"channels": CH, **kwargs})


@pytest.mark.parametrize("spatial_dims, size", [(2, (40, 44)), (3, (16, 20, 16))])
def test_vit_backbone_resizes_and_taps(spatial_dims, size):
    net = ViTBackbone(1, 16, 4, spatial_dims=spatial_dims, **TINY_VIT).eval()
    x = torch.rand(2, 1, *size)
    feats = net(x)
    assert isinstance(net, ViTEncoder) and isinstance(net, OneShotBackbone)
    assert net.taps == [0, 1, 2] and net.out_channels == (48, 48, 48)
    assert [f.shape for f in feats] == [(2, 48, *(4,) * spatial_dims)] * 3
    tokens, hidden = ViTEncoder.forward(net, resize_to(x, (16,) * spatial_dims))
    assert torch.equal(feats[-1], net.tokens_to_map(tokens)) and torch.equal(feats[0], net.tokens_to_map(hidden[0]))


def test_vit_taps():
    assert vit_taps(12) == [3, 7, 11] and vit_taps(6) == [1, 3, 5] and vit_taps(2) == [0, 1] and vit_taps(1) == [0]


def test_built_in_backbones_keep_their_state_dict_keys():
    cnn = SGOne(channels=CH, seg_channels=8)
    assert cnn.backbone_attr == "cnn" and cnn.vit is None and cnn.backbone is None
    keys = cnn.state_dict().keys()
    assert "cnn.blocks.0.0.conv.weight" in keys and not any(k.startswith("backbone.") for k in keys)
    vit = SGOne(backbone="vit", img_size=16, patch_size=4, **TINY_VIT)
    assert vit.backbone_attr == "vit" and isinstance(vit.vit, ViTBackbone) and vit.cnn is None
    encoder_keys = set(ViTEncoder(1, 16, 4, spatial_dims=2, **TINY_VIT).state_dict())
    assert {k.removeprefix("vit.") for k in vit.state_dict() if k.startswith("vit.")} == encoder_keys
    # a module passed in is registered under the same name as the one built from its name
    same = SGOne(backbone=CNNBackbone(2, 1, CH), channels=CH, seg_channels=8)
    assert same.state_dict().keys() == cnn.state_dict().keys()
    same.load_state_dict(cnn.state_dict())


@pytest.mark.parametrize("spatial_dims, size", [(2, (24, 20)), (3, (16, 12, 8))])
def test_sgone_takes_a_backbone_module(spatial_dims, size):
    net = SGOne(in_channels=1, spatial_dims=spatial_dims, backbone=TwoScaleBackbone(spatial_dims), seg_channels=8)
    assert net.backbone_attr == "backbone" and net.cnn is None and net.vit is None
    assert "backbone.fine.weight" in net.state_dict()
    out = net(torch.rand(2, 1, *size), torch.rand(2, 2, 1, *size), torch.ones(2, 2, 1, *size))
    assert out.shape == (2, 2, *size)
    out.sum().backward()
    assert all(p.grad is not None for p in net.backbone.parameters())
    with pytest.raises(ValueError, match="backbone 'vit'"):
        net.load_encoder({})


def test_sgone_on_a_3d_cnn_backbone():
    net = SGOne(spatial_dims=3, backbone=CNNBackbone(3, 1, CH, output_stride=2), seg_channels=8)
    q = torch.rand(1, 1, 16, 16, 8)
    assert net(q, q, torch.ones(1, 1, 16, 16, 8)).shape == (1, 2, 16, 16, 8)


def test_sgone_output_stride_8_fuses_maps_of_two_resolutions():
    """SG-One's own stride: block 3 is at stride 4, blocks 4 and 5 at 8; the side maps are fitted to the guidance."""
    net = SGOne(channels=CH, seg_channels=8, output_stride=8)
    assert [f.shape[2:] for f in net.cnn(torch.rand(1, 1, 32, 32))] == [(8, 8), (4, 4), (4, 4)]
    assert net(torch.rand(2, 1, 32, 32), torch.rand(2, 1, 32, 32), torch.ones(2, 1, 32, 32)).shape == (2, 2, 32, 32)


def test_vit_backbone_module_loads_an_encoder(tmp_path):
    mae = MaskedAutoencoderViT(1, 16, 4, spatial_dims=2, decoder_hidden_size=16, decoder_mlp_dim=32,
                               decoder_num_layers=1, decoder_num_heads=2, **TINY_VIT)  # fmt: skip
    path = export_encoder(mae, tmp_path / "encoder.pt")
    net = SGOne(backbone=ViTBackbone(1, 16, 4, spatial_dims=2, **TINY_VIT), seg_channels=8)
    assert net.load_encoder(path).loaded
    torch.testing.assert_close(net.vit.blocks[0].attn.qkv.weight, mae.encoder.blocks[0].attn.qkv.weight)


@pytest.mark.parametrize(
    "backbone, match",
    [
        ("resnet", "cnn"),
        (nn.Conv2d(1, 4, 3), "OneShotBackbone"),
        (TwoScaleBackbone(3), "3D"),
        (TwoScaleBackbone(2, in_channels=3), "3 channels"),
    ],
)
def test_sgone_rejects_unfit_backbones(backbone, match):
    with pytest.raises(ValueError, match=match):
        SGOne(backbone=backbone)


@pytest.mark.parametrize("network", [SGOne, PrototypeMatcher])
def test_both_one_shot_networks_check_and_hold_a_backbone_alike(network):
    name = network.__name__
    unfit = {TwoScaleBackbone(3): f"3D but {name} has spatial_dims=2",
             TwoScaleBackbone(2, in_channels=3): f"but {name} has in_channels=1"}  # fmt: skip
    for backbone, match in unfit.items():
        with pytest.raises(ValueError, match=match):
            network(backbone=backbone)
    bad = TwoScaleBackbone()
    bad.out_channels = ()
    with pytest.raises(ValueError, match="non-empty tuple of widths"):
        network(backbone=bad)
    mine = TwoScaleBackbone()
    net = network(backbone=mine)
    assert (net.backbone_attr, net.backbone, net.cnn, net.vit) == ("backbone", mine, None, None)
    assert network(channels=CH).backbone_attr == "cnn" and isinstance(network(channels=CH).cnn, CNNBackbone)
    with pytest.raises(ValueError, match="backbone 'vit'"):
        network(channels=CH).load_encoder({})
