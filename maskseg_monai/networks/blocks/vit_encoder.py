"""ViT encoder shared by the masked autoencoders and the segmentation networks."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.blocks import PatchEmbeddingBlock, SABlock, TransformerBlock
from monai.utils import ensure_tuple_rep, look_up_option

from maskseg_monai.masking.patches import grid_size
from maskseg_monai.utils import as_bool

__all__ = ["ViTEncoder", "SUPPORTED_POS_EMBED", "TrainingAwareSABlock", "transformer_blocks"]

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


class TrainingAwareSABlock(SABlock):
    """MONAI's :class:`~monai.networks.blocks.SABlock` whose fused path drops attention weights only in training.

    MONAI 1.6.1's fused path calls ``F.scaled_dot_product_attention(..., dropout_p=self.dropout_rate)`` whatever
    ``self.training`` is, so with ``use_flash_attention=True`` and ``dropout_rate > 0`` a network in ``eval()``
    mode still drops attention weights and two calls on the same input differ (its explicit path uses
    ``nn.Dropout``, which follows ``training``). Here ``dropout_rate`` reads
    ``self.drop_weights.p if self.training else 0.0``, as timm's ``Attention`` passes
    ``dropout_p=self.attn_drop.p if self.training else 0.``; nothing else changes (parameters, state dict and the
    explicit path are MONAI's).

    On the path our networks take (fused attention, one ``qkv`` linear, no mask, causality, relative position
    embedding or ``attention_dtype``), ``forward`` splits ``qkv`` with ``view``/``permute``/``unbind`` as timm's
    ``Attention`` does instead of MONAI's einops ``Rearrange`` and indexing: the same values and gradients, but the
    backward pass of the three ``output[i]`` selections zero-fills and copies the whole ``qkv`` gradient three times
    per block: about 1.7 ms of a 135 ms CPU training step at the main job's sizes (``torch.profiler`` over
    ``benchmarks/train_step.py``'s step, issue 15).
    Every other configuration runs MONAI's ``forward``.
    """

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Self-attention of tokens ``[B, L, D]`` (``attn_mask``: as MONAI's ``SABlock``)."""
        plain = self.use_flash_attention and self.use_combined_linear and not self.causal
        if not plain or attn_mask is not None or self.attention_dtype is not None:
            return super().forward(x, attn_mask=attn_mask)
        b, n = x.shape[:2]
        qkv = self.qkv(x).view(b, n, 3, self.num_heads, self.dim_head).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        x = F.scaled_dot_product_attention(q, k, v, scale=self.scale, dropout_p=self.dropout_rate)
        x = self.out_proj(x.transpose(1, 2).reshape(b, n, self.inner_dim))
        return self.drop_output(x)

    @property
    def dropout_rate(self) -> float:
        """Attention-weight dropout of the fused path: the block's rate while training, 0 in ``eval()``."""
        return self.drop_weights.p if self.training else 0.0

    @dropout_rate.setter
    def dropout_rate(self, value: float) -> None:
        self.drop_weights.p = float(value)


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
    the state dict, which keeps the key layout of MONAI's ``ViT``. Each block's attention is made a
    :class:`TrainingAwareSABlock` (in place, so the weights, their initialisation and the keys are MONAI's):
    MONAI's fused attention would otherwise apply ``dropout_rate`` in ``eval()`` mode too.

    Args:
        num_layers: number of blocks.
        hidden_size: token width ``D``.
        mlp_dim: width of each block's MLP.
        num_heads: attention heads; must divide ``hidden_size``.
        dropout_rate: dropout of the attention weights, the attention output and the MLP, in training only.
            Defaults to 0.
        qkv_bias: bias on the qkv projection. Defaults to True.
        use_flash_attention: fused ``F.scaled_dot_product_attention``; False for MONAI's explicit attention.
            Defaults to True.

    Returns:
        the blocks; each maps tokens ``[B, L, D]`` to ``[B, L, D]``.
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
        # MONAI builds its SABlock inside TransformerBlock; swapping the class keeps its weights and the RNG stream
        vars(blk.attn).pop("dropout_rate", None)  # now the property, backed by drop_weights.p (the same rate)
        blk.attn.__class__ = TrainingAwareSABlock
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

    def tokens_to_map(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tokens of the whole patch grid ``[B, L, D]`` as a feature map ``[B, D, *grid_size]``."""
        return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], *self.grid_size)

    def _embed(self, x: torch.Tensor, ids_keep: torch.Tensor | None = None) -> torch.Tensor:
        """Patch tokens ``[B, L_keep or L, D]`` of ``x`` ``[B, C, *img_size]``, position embedding added."""
        self.check_input(x)
        tokens = self.patch_embedding(x)
        if ids_keep is not None:
            tokens = torch.gather(tokens, 1, ids_keep[..., None].expand(-1, -1, tokens.shape[-1]))
        return tokens

    def forward(self, x: torch.Tensor, ids_keep: torch.Tensor | None = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Encode an image, optionally keeping only some patches.

        Args:
            x: ``[B, C, *img_size]``.
            ids_keep: optional ``[B, L_keep]`` indices of the patches to encode (the visible ones).

        Returns:
            normalised tokens ``[B, L_keep or L, hidden_size]`` and the list of each block's output
            (before the final norm), as MONAI's ``ViT`` returns them.
        """
        tokens = self._embed(x, ids_keep)
        hidden_states = []
        for blk in self.blocks:
            tokens = blk(tokens)
            hidden_states.append(tokens)
        return self.norm(tokens), hidden_states

    def resolve_indices(self, indices: Sequence[int]) -> list[int]:
        """Block indices made non-negative (``-1`` is the last block), in the order given.

        Raises:
            ValueError: when an index is not an int in ``[-num_layers, num_layers - 1]``.
        """
        n = len(self.blocks)
        if isinstance(indices, (int, str)) or not all(isinstance(i, int) and not isinstance(i, bool) for i in indices):
            raise ValueError(f"indices must be a sequence of block indices (ints), got {indices!r}.")
        bad = [i for i in indices if not -n <= i < n]
        if bad:
            raise ValueError(
                f"block indices {bad} are out of range: the encoder has {n} blocks, valid indices are "
                f"{-n}..{n - 1} (negative ones count from the last block)."
            )
        return [i % n for i in indices]

    def forward_intermediates(self, x: torch.Tensor, indices: Sequence[int], final: bool = False) -> list[torch.Tensor]:
        """Outputs of chosen blocks as feature maps, for heads that tap the encoder (UNETR skips, SG-One sides).

        As timm's ``VisionTransformer.forward_intermediates`` with ``output_fmt="NCHW"``: block outputs (before the
        final norm, as in :meth:`forward`'s list) are reshaped from tokens ``[B, L, D]`` to maps over the patch grid.
        Blocks after the last one needed are not run unless ``final``.

        Args:
            x: images ``[B, C, *img_size]`` (all patches are encoded).
            indices: block indices, ``0 .. num_layers - 1`` or negative from the end (``-1``: the last block); the
                maps come in this order.
            final: also return the normalised output of the last block (``forward(x)[0]`` as a map), after the
                others. Defaults to False.

        Returns:
            one map ``[B, hidden_size, *grid_size]`` per index, then the final one when ``final``.

        Raises:
            ValueError: when an index is out of range, or ``x`` has the wrong shape.

        Example::

            >>> enc = ViTEncoder(1, 32, 8, hidden_size=48, mlp_dim=96, num_layers=4, num_heads=4, spatial_dims=2)
            >>> [m.shape for m in enc.forward_intermediates(torch.rand(2, 1, 32, 32), [1, -1])]
            [torch.Size([2, 48, 4, 4]), torch.Size([2, 48, 4, 4])]
        """
        wanted = self.resolve_indices(indices)
        tokens = self._embed(x)
        stop = len(self.blocks) if final else max(wanted, default=-1) + 1
        taken: dict[int, torch.Tensor] = {}
        for i, blk in enumerate(self.blocks[:stop]):
            tokens = blk(tokens)
            if i in wanted:
                taken[i] = tokens
        maps = [self.tokens_to_map(taken[i]) for i in wanted]
        if final:
            maps.append(self.tokens_to_map(self.norm(tokens)))
        return maps
