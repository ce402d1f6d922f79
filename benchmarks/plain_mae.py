"""A plain fused-attention masked autoencoder: the speed reference of ``train_step.py``'s ``plain`` model (issue 15).

The smallest MAE one would write by hand after the reference MAE and timm's ``Attention``/``Block``: a strided
convolution patch embedding, fixed sin-cos position embeddings, random masking by ``argsort`` of noise, pre-norm
blocks whose attention is ``Linear(qkv) -> reshape/permute -> F.scaled_dot_product_attention -> Linear``, an MLP
``Linear -> GELU -> Linear``, no dropout layers, and per-patch predictions scored against the patchified image on
masked patches (no image-shaped output). It has the same parameter count as our ``MaskedAutoencoderViT`` of the
same sizes and does the same arithmetic, so the ratio of the two steps measures our overhead, not a different
model. It is a benchmark reference only: no checks, no export, no masking policies.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.blocks.pos_embed_utils import build_sincos_position_embedding

from maskseg_monai.masking import patchify

__all__ = ["PlainMAE", "plain_mae_loss"]


class _Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4).unbind(0)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(b, n, d))


class _Block(nn.Module):
    def __init__(self, dim: int, mlp_dim: int, num_heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = _Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, mlp_dim)
        self.fc2 = nn.Linear(mlp_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class PlainMAE(nn.Module):
    """Plain MAE with the size arguments of our ``MaskedAutoencoderViT``; ``forward`` returns ``(pred, mask)``."""

    def __init__(
        self,
        in_channels: int,
        img_size: int,
        patch_size: int,
        hidden_size: int,
        mlp_dim: int,
        num_layers: int,
        num_heads: int,
        decoder_hidden_size: int,
        decoder_mlp_dim: int,
        decoder_num_layers: int,
        decoder_num_heads: int,
        mask_ratio: float,
        spatial_dims: int,
    ) -> None:
        super().__init__()
        grid = [img_size // patch_size] * spatial_dims
        conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
        self.mask_ratio = mask_ratio
        self.patch_embed = conv(in_channels, hidden_size, patch_size, stride=patch_size)
        self.register_buffer("pos_embed", build_sincos_position_embedding(grid, hidden_size, spatial_dims).data)
        self.blocks = nn.ModuleList(_Block(hidden_size, mlp_dim, num_heads) for _ in range(num_layers))
        self.norm = nn.LayerNorm(hidden_size)
        self.decoder_embed = nn.Linear(hidden_size, decoder_hidden_size)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_hidden_size))
        self.register_buffer(
            "decoder_pos_embed", build_sincos_position_embedding(grid, decoder_hidden_size, spatial_dims).data
        )
        self.decoder_blocks = nn.ModuleList(
            _Block(decoder_hidden_size, decoder_mlp_dim, decoder_num_heads) for _ in range(decoder_num_layers)
        )
        self.decoder_norm = nn.LayerNorm(decoder_hidden_size)
        self.decoder_pred = nn.Linear(decoder_hidden_size, patch_size**spatial_dims * in_channels)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2) + self.pos_embed
        b, n, d = tokens.shape
        n_keep = int(n * (1 - self.mask_ratio))
        ids_shuffle = torch.argsort(torch.rand(b, n, device=x.device), dim=1)
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        ids_keep = ids_shuffle[:, :n_keep]
        tokens = torch.gather(tokens, 1, ids_keep[..., None].expand(-1, -1, d))
        for blk in self.blocks:
            tokens = blk(tokens)
        y = self.decoder_embed(self.norm(tokens))
        dd = y.shape[-1]
        y = torch.cat([y, self.mask_token.to(y.dtype).expand(b, n - n_keep, dd)], dim=1)
        y = torch.gather(y, 1, ids_restore[..., None].expand(-1, -1, dd)) + self.decoder_pos_embed
        for blk in self.decoder_blocks:
            y = blk(y)
        mask = torch.ones(b, n, device=x.device)
        mask[:, :n_keep] = 0
        return self.decoder_pred(self.decoder_norm(y)), torch.gather(mask, 1, ids_restore)


def plain_mae_loss(out: tuple[torch.Tensor, torch.Tensor], image: torch.Tensor, patch_size: int) -> torch.Tensor:
    """MAE's loss: mean squared error per patch, averaged over the masked patches."""
    pred, mask = out
    err = (pred.float() - patchify(image.float(), patch_size)).pow(2).mean(-1)
    return (err * mask).sum() / mask.sum()


def count_parameters(net: nn.Module) -> int:
    """Trainable parameter count (to check a reference has the compared network's size)."""
    return sum(p.numel() for p in net.parameters() if p.requires_grad)
