"""ViT encoder shared by the masked autoencoders and the segmentation networks."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn
from monai.networks.blocks import PatchEmbeddingBlock, TransformerBlock
from monai.utils import ensure_tuple_rep, look_up_option

from maskseg_monai.masking.patches import grid_size
from maskseg_monai.utils import as_bool

__all__ = ["ViTEncoder", "SUPPORTED_POS_EMBED", "transformer_blocks"]

SUPPORTED_POS_EMBED = {"sincos", "learnable"}


def check_embed_dim(name: str, dim: int, num_heads: int, spatial_dims: int, pos_embed_type: str) -> None:
    """Validate a transformer width against its head count and sin-cos embedding constraints.

    Raises:
        ValueError: when ``dim`` is not divisible by ``num_heads`` or, for ``sincos``, by ``2 * spatial_dims``.
    """
    if dim % num_heads:
        raise ValueError(f"{name} ({dim}) must be divisible by its number of heads ({num_heads}).")
    if pos_embed_type == "sincos" and dim % (2 * spatial_dims):
        raise ValueError(
            f"{name} ({dim}) must be divisible by {2 * spatial_dims} for a {spatial_dims}D sin-cos position embedding."
        )


def transformer_blocks(
    num_layers: int,
    hidden_size: int,
    mlp_dim: int,
    num_heads: int,
    dropout_rate: float = 0.0,
    qkv_bias: bool = True,
    use_flash_attention: bool = True,
) -> nn.ModuleList:
    """A stack of MONAI ``TransformerBlock`` self-attention blocks.

    MONAI's block always creates a ``norm_cross_attn`` layer, unused without cross-attention; it is
    frozen here so that it gets no gradient and DDP needs no ``find_unused_parameters``. It stays in
    the state dict, which keeps the key layout of MONAI's ``ViT``.
    """
    blocks = nn.ModuleList(
        [
            TransformerBlock(
                hidden_size, mlp_dim, num_heads, dropout_rate, qkv_bias, use_flash_attention=use_flash_attention
            )
            for _ in range(num_layers)
        ]
    )
    for blk in blocks:
        blk.norm_cross_attn.requires_grad_(False)
    return blocks


class ViTEncoder(nn.Module):
    """Vision Transformer encoder (Dosovitskiy et al., ICLR 2021) that can run on a subset of patches.

    Its parameter names are those of :class:`monai.networks.nets.ViT` with ``classification=False``
    (``patch_embedding.*``, ``blocks.{i}.*``, ``norm.*``), so its state dict loads one-to-one into a
    MONAI ViT/UNETR encoder of the same size. Attention uses fused
    ``F.scaled_dot_product_attention`` (MONAI's ``use_flash_attention``) unless disabled. There is
    no class token.

    Args:
        in_channels: number of image channels.
        img_size: spatial size of the input, an int or one entry per axis.
        patch_size: patch size, an int or one entry per axis; must divide ``img_size``.
        hidden_size: token width. Defaults to 768.
        mlp_dim: width of the MLP in each block. Defaults to 3072.
        num_layers: number of transformer blocks. Defaults to 12.
        num_heads: number of attention heads. Defaults to 12.
        pos_embed_type: ``"sincos"`` (fixed) or ``"learnable"``. Defaults to ``"sincos"``.
        dropout_rate: dropout in the blocks. Defaults to 0.
        qkv_bias: bias on the qkv projection. Defaults to True (as in MAE).
        spatial_dims: 2 or 3. Defaults to 3.
        use_flash_attention: fused scaled-dot-product attention. Defaults to True.

    Example::

        >>> enc = ViTEncoder(1, (32, 32), 8, hidden_size=48, mlp_dim=96, num_layers=2, num_heads=4, spatial_dims=2)
        >>> tokens, hidden = enc(torch.rand(2, 1, 32, 32))
        >>> tokens.shape
        torch.Size([2, 16, 48])
    """

    def __init__(
        self,
        in_channels: int,
        img_size: Sequence[int] | int,
        patch_size: Sequence[int] | int,
        hidden_size: int = 768,
        mlp_dim: int = 3072,
        num_layers: int = 12,
        num_heads: int = 12,
        pos_embed_type: str = "sincos",
        dropout_rate: float = 0.0,
        qkv_bias: bool = True,
        spatial_dims: int = 3,
        use_flash_attention: bool = True,
    ) -> None:
        super().__init__()
        use_flash_attention = as_bool(use_flash_attention, "use_flash_attention")
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
        pos_embed_type = look_up_option(pos_embed_type, SUPPORTED_POS_EMBED)
        check_embed_dim("hidden_size", hidden_size, num_heads, spatial_dims, pos_embed_type)
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.img_size = ensure_tuple_rep(img_size, spatial_dims)
        self.patch_size = ensure_tuple_rep(patch_size, spatial_dims)
        self.grid_size = grid_size(self.img_size, self.patch_size)
        self.hidden_size = hidden_size
        self.config = {
            "in_channels": in_channels,
            "img_size": list(self.img_size),
            "patch_size": list(self.patch_size),
            "hidden_size": hidden_size,
            "mlp_dim": mlp_dim,
            "num_layers": num_layers,
            "num_heads": num_heads,
            "pos_embed_type": pos_embed_type,
            "qkv_bias": qkv_bias,
            "spatial_dims": spatial_dims,
        }
        """Constructor arguments that define the weight layout (stored with exported weights)."""
        self.patch_embedding = PatchEmbeddingBlock(
            in_channels=in_channels,
            img_size=self.img_size,
            patch_size=self.patch_size,
            hidden_size=hidden_size,
            num_heads=num_heads,
            proj_type="conv",
            pos_embed_type=pos_embed_type,
            dropout_rate=dropout_rate,
            spatial_dims=spatial_dims,
        )
        self.blocks = transformer_blocks(
            num_layers, hidden_size, mlp_dim, num_heads, dropout_rate, qkv_bias, use_flash_attention
        )
        self.norm = nn.LayerNorm(hidden_size)

    @property
    def num_patches(self) -> int:
        """Number of patches ``L`` of one image."""
        return math.prod(self.grid_size)

    def check_input(self, x: torch.Tensor) -> None:
        """Raise a ``ValueError`` naming the expected and received shape when ``x`` does not fit."""
        expected = (self.in_channels, *self.img_size)
        if x.ndim != self.spatial_dims + 2 or tuple(x.shape[1:]) != expected:
            raise ValueError(
                f"expected input [B, {', '.join(map(str, expected))}] (channels, spatial size), got {tuple(x.shape)}."
            )

    def forward(self, x: torch.Tensor, ids_keep: torch.Tensor | None = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Encode an image, optionally keeping only some patches.

        Args:
            x: ``[B, C, *img_size]``.
            ids_keep: optional ``[B, L_keep]`` indices of the patches to encode (the visible ones).

        Returns:
            normalised tokens ``[B, L_keep or L, hidden_size]`` and the list of each block's output
            (before the final norm), as MONAI's ``ViT`` returns them.
        """
        self.check_input(x)
        tokens = self.patch_embedding(x)
        if ids_keep is not None:
            tokens = torch.gather(tokens, 1, ids_keep[..., None].expand(-1, -1, tokens.shape[-1]))
        hidden_states = []
        for blk in self.blocks:
            tokens = blk(tokens)
            hidden_states.append(tokens)
        return self.norm(tokens), hidden_states
