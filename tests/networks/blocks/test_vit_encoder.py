"""ViT encoder: forward_intermediates, MONAI key layout, attention dropout only while training."""

from __future__ import annotations

import pytest
import torch
from monai.networks.blocks import SABlock
from monai.networks.nets import ViT

from maskseg_monai.networks import UNETR, MaskedAutoencoderViT, SGOne, ViTEncoder
from maskseg_monai.networks.blocks import TrainingAwareSABlock, transformer_blocks

TINY = {"hidden_size": 48, "mlp_dim": 96, "num_layers": 4, "num_heads": 4}


def make(spatial_dims: int, **kw) -> ViTEncoder:
    return ViTEncoder(2, 16, 4, spatial_dims=spatial_dims, **{**TINY, **kw})


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_forward_intermediates_are_block_outputs_as_maps(spatial_dims):
    enc = make(spatial_dims).eval()
    x = torch.rand(2, 2, *(16,) * spatial_dims)
    tokens, hidden = enc(x)
    maps = enc.forward_intermediates(x, [2, 0, -1], final=True)
    assert [m.shape for m in maps] == [(2, 48, *(4,) * spatial_dims)] * 4
    for m, t in zip(maps, [hidden[2], hidden[0], hidden[3], tokens]):  # in the order asked, then the final norm
        assert torch.equal(m, t.transpose(1, 2).reshape(m.shape))
    assert torch.equal(enc.tokens_to_map(tokens), maps[-1])


def test_forward_intermediates_stops_after_the_last_block_needed():
    enc = make(2)
    calls = []
    for i, blk in enumerate(enc.blocks):
        blk.register_forward_hook(lambda *_, i=i: calls.append(i))
    assert len(enc.forward_intermediates(torch.rand(1, 2, 16, 16), [1])) == 1 and calls == [0, 1]
    calls.clear()
    assert len(enc.forward_intermediates(torch.rand(1, 2, 16, 16), [], final=True)) == 1 and calls == [0, 1, 2, 3]


@pytest.mark.parametrize("indices", [[4], [-5], [0, 7], 1, [1.0], [True]])
def test_forward_intermediates_bad_indices(indices):
    with pytest.raises(ValueError, match=r"-4\.\.3|sequence of block indices"):
        make(2).forward_intermediates(torch.rand(1, 2, 16, 16), indices)


def test_keys_are_monai_vit_keys():
    theirs = ViT(2, 16, 4, 48, 96, 4, 4, qkv_bias=True, spatial_dims=2, classification=False)
    assert make(2).state_dict().keys() == theirs.state_dict().keys()


@pytest.mark.parametrize("dropout_rate", [0.0, 0.2])
def test_fused_and_explicit_attention_agree(dropout_rate):
    """MONAI 1.6.1's fused path drops attention weights in eval() too; ours only in training."""
    net = make(2, dropout_rate=dropout_rate).eval()
    ref = make(2, dropout_rate=dropout_rate, use_flash_attention=False).eval()
    ref.load_state_dict(net.state_dict())
    x = torch.rand(2, 2, 16, 16)
    out = net(x)[0]
    assert torch.equal(out, net(x)[0])  # repeatable
    assert torch.allclose(out, ref(x)[0], atol=1e-5)


@pytest.mark.parametrize("use_flash_attention", [True, False])
def test_attention_dropout_only_while_training(use_flash_attention):
    blocks = transformer_blocks(1, 16, 32, 2, dropout_rate=0.5, use_flash_attention=use_flash_attention)
    attn = blocks[0].attn
    assert isinstance(attn, TrainingAwareSABlock) and attn.dropout_rate == 0.5
    x = torch.rand(2, 8, 16)
    assert not torch.equal(attn(x), attn(x))
    attn.eval()
    assert attn.dropout_rate == 0.0 and torch.equal(attn(x), attn(x))
    attn.train()
    assert attn.dropout_rate == attn.drop_weights.p == 0.5


def test_every_network_gets_training_aware_attention():
    nets = [
        MaskedAutoencoderViT(1, 16, 4, spatial_dims=2, decoder_hidden_size=16, decoder_mlp_dim=32,
                             decoder_num_layers=1, decoder_num_heads=2, **TINY),
        UNETR(1, 2, 16, patch_size=4, feature_size=8, spatial_dims=2, **TINY),
        SGOne(backbone="vit", img_size=16, patch_size=4, **TINY),
    ]  # fmt: skip
    for net in nets:
        attns = [m for m in net.modules() if isinstance(m, SABlock)]
        assert attns and all(isinstance(m, TrainingAwareSABlock) for m in attns), type(net).__name__


@pytest.mark.parametrize("num_heads,dim", [(2, 16), (6, 48)])
def test_attention_fast_split_matches_monai_forward(num_heads, dim):
    """The view/permute/unbind qkv split gives MONAI SABlock.forward's values and gradients."""
    attn = transformer_blocks(1, dim, 32, num_heads)[0].attn
    x = torch.rand(3, 10, dim, requires_grad=True)
    out = attn(x)
    grads = torch.autograd.grad(out.square().sum(), [x, *attn.parameters()])
    ref = SABlock.forward(attn, x)  # MONAI's einops split and indexing, same weights
    ref_grads = torch.autograd.grad(ref.square().sum(), [x, *attn.parameters()])
    assert torch.allclose(out, ref, atol=1e-6)
    assert all(torch.allclose(g, r, atol=1e-5) for g, r in zip(grads, ref_grads))
    mask = torch.ones(10, 10, dtype=torch.bool)  # anything the fast path does not cover goes to MONAI's forward
    assert torch.allclose(attn(x, attn_mask=mask), ref, atol=1e-6)
