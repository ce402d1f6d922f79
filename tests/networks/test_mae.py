from __future__ import annotations

import pytest
import torch
from monai.networks.nets import ViT

from maskseg_monai.losses import MaskedReconstructionLoss
from maskseg_monai.masking import image_mask_to_patches, split_mae_output
from maskseg_monai.networks import MaskedAutoencoderViT, ViTEncoder, export_encoder

TINY = dict(
    hidden_size=48,
    mlp_dim=96,
    num_layers=2,
    num_heads=4,
    decoder_hidden_size=24,
    decoder_mlp_dim=48,
    decoder_num_layers=1,
    decoder_num_heads=2,
)


def make(spatial_dims: int, patch=4, img=16, ratio=0.5, **kw) -> MaskedAutoencoderViT:
    return MaskedAutoencoderViT(2, img, patch, mask_ratio=ratio, spatial_dims=spatial_dims, **{**TINY, **kw})


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("patch", [2, 4, 8])
def test_shapes(spatial_dims, patch):
    net = make(spatial_dims, patch)
    x = torch.rand(2, 2, *(16,) * spatial_dims)
    pred, mask = net.forward_patches(x)
    n = (16 // patch) ** spatial_dims
    assert pred.shape == (2, n, 2 * patch**spatial_dims)
    assert mask.shape == (2, n) and mask.sum(1).tolist() == [n // 2] * 2
    assert net.unpatchify(pred).shape == x.shape
    out = net(x)
    assert out.shape == (2, 3, *x.shape[2:])
    recon, pixel_mask, extras = split_mae_output(out, 2)
    assert recon.shape == x.shape and extras == {}
    assert set(pixel_mask.unique().tolist()) == {0.0, 1.0}
    assert pixel_mask.mean().item() == pytest.approx(0.5)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_external_mask_and_scores(spatial_dims):
    net = make(spatial_dims).eval()
    x = torch.rand(2, 2, *(16,) * spatial_dims)
    n = net.num_patches
    mask = torch.zeros(2, n)
    mask[0, :3] = 1
    mask[1, -3:] = 1
    pred, used = net.forward_patches(x, mask=mask)
    assert torch.equal(used, mask)
    assert torch.equal(image_mask_to_patches(split_mae_output(net(x, mask=mask), 2).mask, 4), mask)
    scores = torch.zeros(2, n)
    scores[:, 1] = 1
    _, used = net.forward_patches(x, scores=scores)
    assert used[:, 1].eq(1).all() and used.sum(1).tolist() == [n // 2] * 2
    # visible patches do not see masked content: changing a masked patch leaves predictions unchanged
    x2 = x.clone()
    x2[(slice(None), slice(None), *[slice(0, 4)] * spatial_dims)] = 5.0  # patch 0 is masked in sample 0 only
    p2, _ = net.forward_patches(x2, mask=mask)
    assert torch.allclose(p2[0], pred[0], atol=1e-5) and not torch.allclose(p2[1], pred[1], atol=1e-3)


def test_metatensor_input():
    """Bundles feed MONAI MetaTensors; the policy path handles them like plain tensors."""
    from monai.data import MetaTensor

    net = make(2).eval()
    x = torch.rand(2, 2, 16, 16)
    torch.manual_seed(3)
    out = net(MetaTensor(x))
    torch.manual_seed(3)
    assert torch.equal(torch.as_tensor(out), net(x))


def test_ill_args():
    with pytest.raises(ValueError, match="mask_ratio"):
        make(2, ratio=1.0)
    with pytest.raises(ValueError, match="divisible by 6"):
        make(3, decoder_hidden_size=32, decoder_num_heads=4)
    with pytest.raises(ValueError, match="divisible"):
        make(2, img=18)
    net = make(2)
    with pytest.raises(ValueError, match=r"expected input \[B, 2, 16, 16\]"):
        net(torch.rand(2, 1, 16, 16))
    with pytest.raises(ValueError, match="same number"):
        net(torch.rand(2, 2, 16, 16), mask=torch.eye(2, 16) + torch.eye(2, 16).roll(1, 1) * torch.tensor([[1.0], [0]]))
    with pytest.raises(ValueError, match="either mask or scores"):
        net(torch.rand(2, 2, 16, 16), mask=torch.eye(2, 16), scores=torch.rand(2, 16))


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_bf16_autocast_forward_backward(spatial_dims):
    """MONAI's MaskedAutoEncoderViT raises a dtype error here; ours trains."""
    net = make(spatial_dims)
    x = torch.rand(2, 2, *(16,) * spatial_dims)
    loss_fn = MaskedReconstructionLoss(4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(x)
        loss = loss_fn(out, x)
    assert out.dtype == torch.bfloat16 and loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for p in net.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_fused_and_explicit_attention_agree():
    net = make(2).eval()
    ref = make(2, use_flash_attention=False).eval()
    ref.load_state_dict(net.state_dict())
    x, mask = torch.rand(2, 2, 16, 16), torch.eye(16)[:2] + torch.eye(16)[[3, 5]]
    assert torch.allclose(net(x, mask=mask), ref(x, mask=mask), atol=1e-5)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_encoder_export_loads_into_monai_vit(tmp_path, spatial_dims):
    net = make(spatial_dims, hidden_size=48)
    path = export_encoder(net, tmp_path / "encoder.pt")
    ckpt = torch.load(path, weights_only=True)
    cfg = ckpt["config"]
    vit = ViT(
        cfg["in_channels"],
        cfg["img_size"],
        cfg["patch_size"],
        cfg["hidden_size"],
        cfg["mlp_dim"],
        cfg["num_layers"],
        cfg["num_heads"],
        qkv_bias=cfg["qkv_bias"],
        spatial_dims=spatial_dims,
    )
    result = vit.load_state_dict(ckpt["state_dict"], strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    x = torch.rand(2, 2, *(16,) * spatial_dims)
    ours, hidden = net.encoder.eval()(x)
    theirs, hidden_ref = vit.eval()(x)
    assert torch.allclose(ours, theirs, atol=1e-5) and len(hidden) == len(hidden_ref) == 2
    # and into our own encoder, built from the stored config
    enc = ViTEncoder(**cfg)
    enc.load_state_dict(ckpt["state_dict"])
    assert not list(tmp_path.glob(".tmp-*"))


def test_export_rejects_other_networks(tmp_path):
    with pytest.raises(TypeError, match="MaskedAutoencoderViT"):
        export_encoder(torch.nn.Linear(2, 2), tmp_path / "x.pt")
    assert not (tmp_path / "x.pt").exists()


def test_torchscript_free_compile_path():
    """The forward has no data-dependent Python branches in the random-mask path (torch.compile friendly)."""
    net = make(2).eval()
    explained = torch._dynamo.explain(net)(torch.rand(2, 2, 16, 16))
    assert explained.graph_break_count == 0, explained.break_reasons
