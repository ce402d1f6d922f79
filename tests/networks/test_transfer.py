from __future__ import annotations

import logging
import re

import pytest
import torch
from monai.networks.nets import ViT

from maskseg_monai.networks import (
    UNETR,
    AMLPMaskedAutoencoder,
    MaskedAutoencoderViT,
    TransferReport,
    export_encoder,
    freeze_encoder,
    load_pretrained_encoder,
)
from maskseg_monai.networks.transfer import POS_EMBED, find_encoder, resample_pos_embed

ENC = dict(hidden_size=48, mlp_dim=96, num_layers=4, num_heads=4)
DEC = dict(decoder_hidden_size=24, decoder_mlp_dim=48, decoder_num_layers=1, decoder_num_heads=2)


def mae(spatial_dims: int, img=16, patch=4, cls=MaskedAutoencoderViT, **kw) -> MaskedAutoencoderViT:
    return cls(in_channels=1, img_size=img, patch_size=patch, spatial_dims=spatial_dims, **{**ENC, **DEC, **kw})


def unetr(spatial_dims: int, img=16, patch=4, **kw) -> UNETR:
    return UNETR(1, 3, img, patch_size=patch, feature_size=8, spatial_dims=spatial_dims, **{**ENC, **kw})


def assert_same_encoder(net: UNETR, pretrained: MaskedAutoencoderViT, spatial_dims: int) -> None:
    x = torch.rand(2, 1, *net.img_size)
    tokens, hidden = net.vit.eval()(x)
    ref_tokens, ref_hidden = pretrained.encoder.eval()(x)
    assert torch.allclose(tokens, ref_tokens, atol=1e-6)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(hidden, ref_hidden))


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_exported_encoder_loads(tmp_path, spatial_dims, caplog):
    pretrained = mae(spatial_dims)
    path = export_encoder(pretrained, tmp_path / "encoder.pt")
    net = unetr(spatial_dims)
    decoder_before = net.decoder2.state_dict()
    with caplog.at_level(logging.INFO, logger="maskseg_monai.transfer"):
        report = net.load_encoder(path)
    assert isinstance(report, TransferReport)
    assert not report.missing and not report.unexpected and not report.shape_mismatch and not report.interpolated
    assert report.prefix == "" and sorted(report.loaded) == sorted(pretrained.encoder.state_dict())
    assert report.summary() in caplog.text
    assert_same_encoder(net, pretrained, spatial_dims)
    # only the encoder changed
    assert all(torch.equal(v, net.decoder2.state_dict()[k]) for k, v in decoder_before.items())
    assert net(torch.rand(2, 1, *net.img_size)).shape == (2, 3, *net.img_size)


def test_bundle_checkpoint_and_bare_state_dict(tmp_path):
    pretrained = mae(2)
    opt = torch.optim.AdamW(pretrained.parameters())
    path = tmp_path / "model_final.pt"
    torch.save({"model": pretrained.state_dict(), "optimizer": opt.state_dict(), "epoch": 3}, path)
    net = unetr(2)
    report = load_pretrained_encoder(net, path)
    assert report.prefix == "encoder." and not report.missing and not report.unexpected
    assert "decoder_embed.weight" in report.ignored and "mask_token" in report.ignored
    assert_same_encoder(net, pretrained, 2)
    # an in-memory bare state dict, with a DistributedDataParallel prefix, into a DDP-style wrapper
    wrapped = torch.nn.Module()
    wrapped.module = unetr(2)
    state = {f"module.{k}": v for k, v in pretrained.state_dict().items()}
    report = load_pretrained_encoder(wrapped, state)
    assert report.source == "<state dict>" and not report.missing
    assert_same_encoder(wrapped.module, pretrained, 2)


def test_amlp_checkpoint(tmp_path):
    pretrained = mae(2, cls=AMLPMaskedAutoencoder, mps_warmup=0)
    path = tmp_path / "model.pt"
    torch.save({"model": pretrained.state_dict()}, path)
    net = unetr(2)
    report = net.load_encoder(path)
    assert not report.missing and any(k.startswith("ccl_head.") for k in report.ignored)
    assert_same_encoder(net, pretrained, 2)


def test_monai_vit_and_unetr_state_dicts():
    vit = ViT(1, 32, 16, hidden_size=48, mlp_dim=96, num_layers=4, num_heads=4, qkv_bias=True, spatial_dims=2)
    net = unetr(2, img=32, patch=16)
    report = net.load_encoder(vit.state_dict())
    assert report.prefix == "" and not report.missing and not report.unexpected
    x = torch.rand(2, 1, 32, 32)
    assert torch.allclose(net.vit.eval()(x)[0], vit.eval()(x)[0], atol=1e-6)
    # a UNETR state dict (vit.*) into another UNETR; its decoder keys are ignored
    other = unetr(2, img=32, patch=16)
    report = other.load_encoder(net.state_dict())
    assert report.prefix == "vit." and "out.conv.conv.weight" in report.ignored
    assert torch.equal(other.vit.norm.weight, net.vit.norm.weight)
    # a ViT classifier: its class token and head are dropped (reported as unexpected)
    clf = ViT(1, 32, 16, 48, 96, 4, 4, classification=True, num_classes=2, qkv_bias=True, spatial_dims=2)
    report = unetr(2, img=32, patch=16).load_encoder(clf.state_dict())
    assert "cls_token" in report.unexpected and not report.missing


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_position_embedding_interpolated(tmp_path, spatial_dims):
    patch = 4 if spatial_dims == 2 else 8
    pretrained = mae(spatial_dims, img=16, patch=patch)
    path = export_encoder(pretrained, tmp_path / "encoder.pt")
    net = unetr(spatial_dims, img=32, patch=patch)
    report = net.load_encoder(path)
    assert report.interpolated == [POS_EMBED] and POS_EMBED in report.loaded and not report.missing
    grid = (32 // patch,) * spatial_dims
    assert net.vit.patch_embedding.position_embeddings.shape == (1, (32 // patch) ** spatial_dims, 48)
    expected = resample_pos_embed(
        pretrained.encoder.patch_embedding.position_embeddings, (16 // patch,) * spatial_dims, grid
    )
    assert torch.allclose(net.vit.patch_embedding.position_embeddings, expected)
    assert torch.equal(net.vit.blocks[0].attn.qkv.weight, pretrained.encoder.blocks[0].attn.qkv.weight)
    assert net(torch.rand(2, 1, *(32,) * spatial_dims)).shape == (2, 3, *(32,) * spatial_dims)
    # equal grids: the position embedding is copied unchanged
    same = unetr(spatial_dims, img=16, patch=patch)
    assert not same.load_encoder(path).interpolated
    assert torch.equal(
        same.vit.patch_embedding.position_embeddings, pretrained.encoder.patch_embedding.position_embeddings
    )
    with pytest.raises(ValueError, match="differ in shape"):
        net.load_encoder(path, interpolate_pos_embed=False)


def test_resample_pos_embed():
    pos = torch.randn(1, 8, 6)
    assert resample_pos_embed(pos, (2, 4), (2, 4)) is pos
    # token order: feature 0 is the row, feature 1 the column of a (2, 4) grid
    rows, cols = torch.meshgrid(torch.arange(2.0), torch.arange(4.0), indexing="ij")
    ramp = torch.stack([rows, cols], -1).reshape(1, 8, 2)
    out = resample_pos_embed(ramp, (2, 4), (4, 8)).reshape(4, 8, 2)
    assert torch.allclose(out[..., 0], out[:, :1, 0]) and (out[1:, 0, 0] >= out[:-1, 0, 0]).all()
    assert torch.allclose(out[..., 1], out[:1, :, 1]) and (out[0, 1:, 1] >= out[0, :-1, 1]).all()
    const = torch.full((1, 8, 3), 0.5)
    assert torch.allclose(resample_pos_embed(const.reshape(1, 8, 3), (2, 2, 2), (4, 4, 4)), torch.full((1, 64, 3), 0.5))
    with pytest.raises(ValueError, match="for grid"):
        resample_pos_embed(pos, (3, 3), (4, 4))


def test_grid_inferred_without_config(tmp_path):
    """A bundle checkpoint stores no img_size: the source grid is taken with the network's aspect ratio."""
    pretrained = mae(2, img=(16, 32))
    path = tmp_path / "model.pt"
    torch.save({"model": pretrained.state_dict()}, path)
    net = UNETR(1, 3, (32, 64), patch_size=4, feature_size=8, spatial_dims=2, **ENC)
    assert net.load_encoder(path).interpolated == [POS_EMBED]
    expected = resample_pos_embed(pretrained.encoder.patch_embedding.position_embeddings, (4, 8), (8, 16))
    assert torch.allclose(net.vit.patch_embedding.position_embeddings, expected)
    with pytest.raises(ValueError, match="cannot infer the patch grid"):
        UNETR(1, 3, (32, 96), patch_size=4, feature_size=8, spatial_dims=2, **ENC).load_encoder(path)


def test_wrong_checkpoints(tmp_path):
    net = unetr(2)
    foo = tmp_path / "foo.pt"
    torch.save({"foo": torch.zeros(3)}, foo)
    with pytest.raises(ValueError, match=re.escape(str(foo)) + ".*no ViT encoder weights found.*foo"):
        net.load_encoder(foo)
    patch8 = export_encoder(mae(2, patch=8), tmp_path / "patch8.pt")
    with pytest.raises(ValueError, match=re.escape(patch8) + r".*\[48, 1, 8, 8\].*\[48, 1, 4, 4\].*patch"):
        net.load_encoder(patch8)
    enc3d = export_encoder(mae(3), tmp_path / "enc3d.pt")
    with pytest.raises(ValueError, match=r"enc3d\.pt.*patch_embeddings"):
        net.load_encoder(enc3d)
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint")
    with pytest.raises(ValueError, match=r"notes\.pt: cannot be read"):
        net.load_encoder(text)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        net.load_encoder(tmp_path / "missing.pt")
    with pytest.raises(TypeError, match="no ViTEncoder"):
        load_pretrained_encoder(torch.nn.Linear(2, 2), foo)


def test_layer_and_width_mismatches(tmp_path):
    deeper = export_encoder(mae(2, num_layers=8), tmp_path / "deeper.pt")
    with pytest.raises(ValueError, match=r"deeper\.pt.*no place in the network"):
        unetr(2).load_encoder(deeper)
    report = unetr(2).load_encoder(deeper, allow_unexpected=True)
    assert "blocks.4.attn.qkv.weight" in report.unexpected
    shallow = export_encoder(mae(2, num_layers=2), tmp_path / "shallow.pt")
    with pytest.raises(ValueError, match=r"shallow\.pt.*missing"):
        unetr(2).load_encoder(shallow)
    same = export_encoder(mae(2), tmp_path / "same.pt")
    with pytest.raises(ValueError, match=r"same\.pt: 4 checkpoint keys .*qkv biases into qkv_bias=False"):
        unetr(2, qkv_bias=False).load_encoder(same)
    # MONAI's ViT/UNETR default to qkv_bias=False; our UNETR to True
    no_bias = ViT(1, 16, 4, hidden_size=48, mlp_dim=96, num_layers=4, num_heads=4, spatial_dims=2).state_dict()
    with pytest.raises(ValueError, match=r"4 encoder keys are missing .*build the network with qkv_bias=False"):
        unetr(2).load_encoder(no_bias)
    assert not unetr(2, qkv_bias=False).load_encoder(no_bias).missing
    wide = export_encoder(mae(2, mlp_dim=192), tmp_path / "wide.pt")
    with pytest.raises(ValueError, match=r"wide\.pt.*differ in shape"):
        unetr(2).load_encoder(wide)
    net = unetr(2)
    before = net.vit.blocks[0].mlp.linear1.weight.clone()
    report = net.load_encoder(wide, strict_shapes=False)
    assert ("blocks.0.mlp.linear1.weight", (192, 48), (96, 48)) in report.shape_mismatch
    assert torch.equal(net.vit.blocks[0].mlp.linear1.weight, before) and "blocks.0.attn.qkv.weight" in report.loaded
    assert "shape mismatch" in str(report) and "[192, 48] in checkpoint" in str(report)


def test_freeze_encoder():
    net = unetr(2)
    n_vit = sum(p.numel() for p in net.vit.parameters() if p.requires_grad)
    assert freeze_encoder(net) == 0
    assert not any(p.requires_grad for p in net.vit.parameters())
    assert all(p.requires_grad for n, p in net.named_parameters() if not n.startswith("vit."))
    net(torch.rand(2, 1, 16, 16)).sum().backward()
    assert all(p.grad is None for p in net.vit.parameters()) and net.out.conv.conv.weight.grad is not None
    assert freeze_encoder(net, freeze=False) == n_vit  # the unused norm_cross_attn layers stay frozen
    assert not net.vit.blocks[0].norm_cross_attn.weight.requires_grad
    # a sin-cos position embedding is never trained
    pretrained = mae(2)
    freeze_encoder(pretrained)
    freeze_encoder(pretrained, False)
    assert not pretrained.encoder.patch_embedding.position_embeddings.requires_grad
    assert pretrained.encoder.blocks[0].attn.qkv.weight.requires_grad
    assert find_encoder(pretrained) is pretrained.encoder and find_encoder(net.vit) is net.vit
