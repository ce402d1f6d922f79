"""UNETR for any power-of-two patch size, on the ViT encoder the masked autoencoders pretrain."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence

import torch
import torch.nn as nn
from monai.networks.blocks import UnetOutBlock, UnetrBasicBlock, UnetrPrUpBlock, UnetrUpBlock
from monai.utils import ensure_tuple_rep

from maskseg_monai.networks.blocks.vit_encoder import ViTEncoder
from maskseg_monai.networks.transfer import TransferReport, load_pretrained_encoder

__all__ = ["UNETR", "unetr_skip_layers"]


def unetr_skip_layers(num_layers: int, num_stages: int) -> list[int]:
    """Transformer blocks whose outputs feed the skip connections of a UNETR decoder.

    The skip of the stage that up-samples the patch grid ``2 ** i`` times (``i = 1 .. num_stages - 1``) is
    ``hidden_states[num_layers // m * (m - i)]`` with ``m = max(4, num_stages)``: deeper blocks feed coarser
    stages, at multiples of ``num_layers // 4`` as in MONAI's UNETR (blocks 9, 6, 3 of 12 for the 2x, 4x and
    8x stages of patch 16). Patch 8 uses blocks 9 and 6, patch 4 block 9, patch 2 none (0-based indices
    into the list of block outputs).

    Args:
        num_layers: transformer blocks of the encoder.
        num_stages: 2x up-sampling stages of the decoder, ``log2(patch_size)``.

    Returns:
        block indices, one per skip, ordered from the coarsest (2x) stage to the finest.

    Raises:
        ValueError: when ``num_layers`` is too small to give every skip its own block.
    """
    if num_stages < 2:
        return []
    m = max(4, num_stages)
    if num_layers < m:
        raise ValueError(
            f"num_layers ({num_layers}) must be at least {m} for the {num_stages - 1} skip connections of a "
            f"{num_stages}-stage decoder (blocks num_layers // {m} * k, k = {m - num_stages + 1}..{m - 1})."
        )
    step = num_layers // m
    return [step * (m - i) for i in range(1, num_stages)]


class UNETR(nn.Module):
    """
    UNETR based on: "Hatamizadeh et al.,
    UNETR: Transformers for 3D Medical Image Segmentation <https://arxiv.org/abs/2103.10504>",
    generalised from patch size 16 to any power-of-two patch size ``p >= 2``, in 2D and 3D.

    The encoder is :class:`~maskseg_monai.networks.ViTEncoder` (attribute ``vit``, so the parameter names are
    those of MONAI's UNETR: ``vit.patch_embedding.*``, ``vit.blocks.{i}.*``, ``vit.norm.*``), which loads the
    encoders our masked autoencoders pretrain (:meth:`load_encoder`). The decoder has ``n = log2(p)`` 2x
    up-sampling stages from the patch grid to the input resolution, built from MONAI's blocks as MONAI's
    UNETR builds them. With the stages named as in MONAI (``decoder{n+1}`` is the coarsest, ``decoder2`` the
    last), ``decoder{j}`` up-samples and concatenates the skip ``encoder{j-1}``:

    - ``decoder{n+1}`` takes the normalised last-block tokens (the bottleneck);
    - ``encoder{j}``, ``j = 2..n``, up-samples ``hidden_states[k_j]`` ``n + 1 - j`` times, where ``k_j`` is
      given by :func:`unetr_skip_layers` (blocks 9, 6, 3 of 12 for ``encoder4``, ``encoder3``, ``encoder2``);
    - ``encoder1`` is a convolution block on the full-resolution input, the skip of the last stage ``decoder2``.

    The bottleneck and the block outputs come as maps over the patch grid from
    :meth:`ViTEncoder.forward_intermediates(x, skip_layers, final=True) <ViTEncoder.forward_intermediates>`.

    Stage ``decoder{j}`` has ``feature_size * 2 ** (j - 2)`` channels. For patch 16 the modules, their
    parameter names and the output are those of :class:`monai.networks.nets.UNETR` (which fixes 12 layers):

    ======  ======  ======================================================  =================
    patch   stages  skips (``hidden_states`` index -> stage, 12 layers)       decoder modules
    ======  ======  ======================================================  =================
    16      4       9 -> 2x, 6 -> 4x, 3 -> 8x, input -> 16x                 decoder5..2
    8       3       9 -> 2x, 6 -> 4x, input -> 8x                           decoder4..2
    4       2       9 -> 2x, input -> 4x                                    decoder3..2
    2       1       input -> 2x                                             decoder2
    ======  ======  ======================================================  =================

    Args:
        in_channels: dimension of input channels.
        out_channels: dimension of output channels.
        img_size: dimension of input image, an int or one entry per axis.
        patch_size: patch size, a power of two >= 2 (an int, or one equal entry per axis); must divide
            ``img_size``. Defaults to 16.
        feature_size: dimension of network feature size. Defaults to 16.
        hidden_size: dimension of hidden layer. Defaults to 768.
        mlp_dim: dimension of feedforward layer. Defaults to 3072.
        num_heads: number of attention heads. Defaults to 12.
        num_layers: number of transformer blocks. Defaults to 12.
        pos_embed_type: position embedding, ``"learnable"`` or ``"sincos"`` (fixed). Defaults to "learnable".
        norm_name: feature normalization type and arguments. Defaults to "instance".
        conv_block: if convolutional block is used. Defaults to True.
        res_block: if residual block is used. Defaults to True.
        dropout_rate: fraction of the input units to drop. Defaults to 0.0.
        dropout: another name of ``dropout_rate``, the keyword MONAI Label's epistemic scoring passes to a
            bundle's ``network_def`` (as for MONAI's ``UNet``); giving both with different values is an error.
            Defaults to None.
        spatial_dims: number of spatial dims. Defaults to 3.
        qkv_bias: apply the bias term for the qkv linear layer in self attention block; keep True for the
            encoders our masked autoencoders pretrain. Defaults to True.
        use_flash_attention: fused scaled-dot-product attention in the encoder. Defaults to True.

    Raises:
        ValueError: when the patch size is not a power of two >= 2 (or differs between axes), does not divide
            ``img_size``, ``num_layers`` is too small for the skips, ``hidden_size`` is not divisible by
            ``num_heads``, or ``dropout_rate`` is not in [0, 1].

    Examples::

        # single channel input 4-channel output, image size (96,96,96), patch 8, feature size 32 and batch norm
        >>> net = UNETR(in_channels=1, out_channels=4, img_size=(96,96,96), patch_size=8, feature_size=32,
        ...     norm_name='batch')

        # single channel input 5-channel output, image size (256,256), patch 4, then the pretrained encoder
        >>> net = UNETR(in_channels=1, out_channels=5, img_size=256, patch_size=4, spatial_dims=2)
        >>> report = net.load_encoder("mae/models/encoder.pt")  # doctest: +SKIP

        # small and fast
        >>> net = UNETR(1, 3, 32, patch_size=4, feature_size=8, hidden_size=48, mlp_dim=96, num_heads=4,
        ...     num_layers=4, spatial_dims=2)
        >>> net(torch.rand(2, 1, 32, 32)).shape
        torch.Size([2, 3, 32, 32])
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        img_size: Sequence[int] | int,
        patch_size: Sequence[int] | int = 16,
        feature_size: int = 16,
        hidden_size: int = 768,
        mlp_dim: int = 3072,
        num_heads: int = 12,
        num_layers: int = 12,
        pos_embed_type: str = "learnable",
        norm_name: tuple | str = "instance",
        conv_block: bool = True,
        res_block: bool = True,
        dropout_rate: float = 0.0,
        spatial_dims: int = 3,
        qkv_bias: bool = True,
        use_flash_attention: bool = True,
        dropout: float | None = None,
    ) -> None:
        super().__init__()
        if dropout is not None:  # the name MONAI Label's epistemic scoring sets (``network_def#dropout``)
            if dropout_rate not in (0, 0.0) and dropout_rate != dropout:
                raise ValueError(f"give dropout ({dropout}) or dropout_rate ({dropout_rate}), not both.")
            dropout_rate = float(dropout)
        if not (0 <= dropout_rate <= 1):
            raise ValueError(f"dropout_rate should be between 0 and 1, got {dropout_rate}.")
        if hidden_size % num_heads != 0:
            raise ValueError(f"hidden_size ({hidden_size}) should be divisible by num_heads ({num_heads}).")
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
        patch = ensure_tuple_rep(patch_size, spatial_dims)
        p = patch[0]
        if len(set(patch)) != 1 or not isinstance(p, int) or p < 2 or p & (p - 1):
            raise ValueError(f"patch_size must be a power of two >= 2, the same on every axis, got {patch_size}.")
        img_size = ensure_tuple_rep(img_size, spatial_dims)
        if any(s % p for s in img_size):
            raise ValueError(f"img_size {tuple(img_size)} must be divisible by patch_size {p} on every axis.")

        self.num_layers = num_layers
        self.num_stages = int(math.log2(p))
        """Number of 2x up-sampling stages, ``log2(patch_size)``."""
        self.skip_layers = unetr_skip_layers(num_layers, self.num_stages)
        """``hidden_states`` indices feeding ``encoder{n}``, ..., ``encoder2`` (coarsest stage first)."""
        self.patch_size = patch
        self.feat_size = tuple(img_d // p_d for img_d, p_d in zip(img_size, self.patch_size))
        self.hidden_size = hidden_size
        self.classification = False
        self.vit = ViTEncoder(
            in_channels=in_channels,
            img_size=img_size,
            patch_size=self.patch_size,
            hidden_size=hidden_size,
            mlp_dim=mlp_dim,
            num_layers=num_layers,
            num_heads=num_heads,
            pos_embed_type=pos_embed_type,
            dropout_rate=dropout_rate,
            qkv_bias=qkv_bias,
            spatial_dims=spatial_dims,
            use_flash_attention=use_flash_attention,
        )
        n = self.num_stages
        self.encoder1 = UnetrBasicBlock(
            spatial_dims=spatial_dims,
            in_channels=in_channels,
            out_channels=feature_size,
            kernel_size=3,
            stride=1,
            norm_name=norm_name,
            res_block=res_block,
        )
        # encoder{j} up-samples a block's tokens 2 ** (n + 1 - j) times: one transposed conv + (n - j) more
        for j in range(2, n + 1):
            self.add_module(
                f"encoder{j}",
                UnetrPrUpBlock(
                    spatial_dims=spatial_dims,
                    in_channels=hidden_size,
                    out_channels=feature_size * 2 ** (j - 1),
                    num_layer=n - j,
                    kernel_size=3,
                    stride=1,
                    upsample_kernel_size=2,
                    norm_name=norm_name,
                    conv_block=conv_block,
                    res_block=res_block,
                ),
            )
        # decoder{j} up-samples 2x and concatenates encoder{j-1}; decoder{n+1} starts from the bottleneck tokens
        for j in range(n + 1, 1, -1):
            self.add_module(
                f"decoder{j}",
                UnetrUpBlock(
                    spatial_dims=spatial_dims,
                    in_channels=hidden_size if j == n + 1 else feature_size * 2 ** (j - 1),
                    out_channels=feature_size * 2 ** (j - 2),
                    kernel_size=3,
                    upsample_kernel_size=2,
                    norm_name=norm_name,
                    res_block=res_block,
                ),
            )
        self.out = UnetOutBlock(spatial_dims=spatial_dims, in_channels=feature_size, out_channels=out_channels)

    @property
    def img_size(self) -> tuple[int, ...]:
        """Input spatial size."""
        return self.vit.img_size

    def proj_feat(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens ``B x (s_dim_1 * ... * s_dim_n) x hidden_size`` to a feature map ``[B, hidden_size, *feat_size]``
        (MONAI UNETR's method, kept for its callers; the forward pass gets maps from the encoder)."""
        return self.vit.tokens_to_map(x)

    def forward(self, x_in: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x_in: images ``[B, in_channels, *img_size]``.

        Returns:
            logits ``[B, out_channels, *img_size]``.
        """
        # block outputs for encoder{n}, ..., encoder2 (coarsest first), then the normalised last block
        *hidden_maps, dec = self.vit.forward_intermediates(x_in, self.skip_layers, final=True)
        n = self.num_stages
        skips = [getattr(self, f"encoder{j}")(h) for j, h in zip(range(n, 1, -1), hidden_maps)]
        skips.append(self.encoder1(x_in))
        for j, skip in zip(range(n + 1, 1, -1), skips):
            dec = getattr(self, f"decoder{j}")(dec, skip)
        return self.out(dec)

    def load_encoder(
        self,
        path_or_state: str | os.PathLike | Mapping,
        strict_shapes: bool = True,
        interpolate_pos_embed: bool = True,
        allow_unexpected: bool = False,
    ) -> TransferReport:
        """Load pretrained encoder weights into ``self.vit``; the decoder keeps its initialisation.

        See :func:`~maskseg_monai.networks.transfer.load_pretrained_encoder` for the accepted checkpoints, the
        arguments and the errors.

        Returns:
            the :class:`~maskseg_monai.networks.transfer.TransferReport`.
        """
        return load_pretrained_encoder(
            self,
            path_or_state,
            strict_shapes=strict_shapes,
            interpolate_pos_embed=interpolate_pos_embed,
            allow_unexpected=allow_unexpected,
        )
