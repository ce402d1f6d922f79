"""Backbones for one-shot segmentation (:class:`~maskseg_monai.networks.SGOne`): one small interface, two built in.

A backbone maps images ``[B, C_in, *spatial]`` to a list of feature maps ``[B, C_i, *spatial_i]``: the side
features of the segmentation branch, the last one also feeding the guidance branch. It says its widths in
``out_channels`` and its dimensionality in ``spatial_dims``. Any ``nn.Module`` with these passes as
``SGOne(backbone=module)``, so a new (e.g. 3D) backbone is one class and no SG-One edit.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Protocol, runtime_checkable

import torch
from monai.networks.blocks import Convolution
from monai.networks.layers.factories import Pool
from monai.utils import look_up_option
from torch import nn

from maskseg_monai.networks.blocks.similarity import resize_to
from maskseg_monai.networks.blocks.vit_encoder import ViTEncoder
from maskseg_monai.networks.transfer import TransferReport, load_pretrained_encoder
from maskseg_monai.utils import as_bool

__all__ = [
    "OneShotBackbone",
    "CNNBackbone",
    "ViTBackbone",
    "vit_taps",
    "SUPPORTED_BACKBONES",
    "BACKBONE_ATTRS",
    "build_backbone",
    "attach_backbone",
    "load_vit_encoder",
]

#: the built-in backbones, by name
SUPPORTED_BACKBONES = ("cnn", "vit")
#: the attributes (hence state-dict prefixes) a one-shot network may hold its backbone in: ``cnn`` and ``vit`` for
#: the built-in ones (the keys of earlier checkpoints), ``backbone`` for any other module
BACKBONE_ATTRS = ("cnn", "vit", "backbone")


@runtime_checkable
class OneShotBackbone(Protocol):
    """What SG-One needs from a backbone shared by support and query.

    Attributes:
        spatial_dims: 2 or 3, the dimensionality of the images it takes.
        out_channels: ``(C_1, ..., C_n)``, the widths of the maps it returns, ``n >= 1``.

    Calling it on images ``[B, C_in, *spatial]`` returns ``n`` feature maps ``[B, C_i, *spatial_i]``. All feed the
    segmentation branch, the last one also the guidance branch (the prototype and the similarity map). The maps may
    differ in resolution: SG-One interpolates the others to the last one's, and its logits to the query's size.
    """

    spatial_dims: int
    out_channels: tuple[int, ...]

    def __call__(self, x: torch.Tensor) -> list[torch.Tensor]: ...


class CNNBackbone(nn.Module):
    """VGG-style backbone of SG-One (Zhang et al. 2020), in 2D or 3D through MONAI's layer factories.

    Five blocks of 3x3 convolutions (two in blocks 1-2, three in blocks 3-5, each with ``norm`` and ReLU);
    max-pooling before the first ``log2(output_stride)`` of blocks 2-5 (SG-One keeps VGG-16's first three pools,
    output stride 8). Returns the outputs of blocks 3, 4 and 5. Parameter names: ``blocks.{i}.{j}.conv.*``.

    Args:
        spatial_dims: 2 or 3.
        in_channels: image channels.
        channels: widths of the five blocks. Defaults to ``(32, 64, 128, 128, 128)``.
        output_stride: 1, 2, 4 or 8. Defaults to 4.
        norm: normalisation of the convolutions (MONAI name, or None). Defaults to ``"batch"``.

    Raises:
        ValueError: when ``channels`` does not have 5 entries or ``output_stride`` is not 1, 2, 4 or 8.

    Example::

        >>> net = CNNBackbone(3, 1, channels=(4, 8, 8, 8, 8), output_stride=2)
        >>> [f.shape for f in net(torch.rand(2, 1, 16, 16, 8))]
        [torch.Size([2, 8, 8, 8, 4]), torch.Size([2, 8, 8, 8, 4]), torch.Size([2, 8, 8, 8, 4])]
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        channels: Sequence[int] = (32, 64, 128, 128, 128),
        output_stride: int = 4,
        norm: str | tuple | None = "batch",
    ) -> None:
        super().__init__()
        if len(channels) != 5:
            raise ValueError(f"channels must give the widths of 5 CNN blocks, got {tuple(channels)}.")
        if output_stride not in (1, 2, 4, 8):
            raise ValueError(f"output_stride must be 1, 2, 4 or 8, got {output_stride}.")
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        n_pool = int(math.log2(output_stride))
        self.blocks = nn.ModuleList()
        self.pools = nn.ModuleList()
        pool = Pool[Pool.MAX, spatial_dims]
        prev = in_channels
        for i, ch in enumerate(channels):
            convs = [
                Convolution(spatial_dims, prev if j == 0 else ch, ch, kernel_size=3, act="RELU", norm=norm)
                for j in range(2 if i < 2 else 3)
            ]
            self.blocks.append(nn.Sequential(*convs))
            self.pools.append(pool(kernel_size=2, stride=2) if 1 <= i <= n_pool else nn.Identity())
            prev = ch
        self.out_channels = tuple(channels[2:])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """
        Args:
            x: images ``[B, in_channels, *spatial]``.

        Returns:
            the outputs of blocks 3, 4 and 5, ``[B, channels[i], *spatial / output_stride]`` (block 3 at
            ``spatial / 4`` for ``output_stride`` 8).
        """
        feats = []
        for pool, block in zip(self.pools, self.blocks):
            x = block(pool(x))
            feats.append(x)
        return feats[2:]


def vit_taps(num_layers: int) -> list[int]:
    """Blocks whose outputs feed SG-One's segmentation branch: at 1/3, 2/3 and the end of the stack (0-based)."""
    return sorted({max(0, num_layers // 3 - 1), max(0, 2 * num_layers // 3 - 1), num_layers - 1})


class ViTBackbone(ViTEncoder):
    """Our :class:`~maskseg_monai.networks.ViTEncoder` as a one-shot backbone, filled from an MAE/AMLP encoder.

    It is a ``ViTEncoder`` (same parameters and state-dict keys, so
    :func:`~maskseg_monai.networks.transfer.load_pretrained_encoder` loads an ``encoder.pt`` or checkpoint into it)
    whose call returns feature maps through :meth:`~ViTEncoder.forward_intermediates`: the outputs of the blocks
    :func:`vit_taps` names, the last one replaced by the normalised final tokens. The encoder needs a fixed input
    size, so images of another size are resized to ``img_size`` first
    (:func:`~maskseg_monai.networks.blocks.resize_to`). For the encoder's tokens call
    ``ViTEncoder.forward(backbone, x)``.

    Args:
        args: the :class:`ViTEncoder` arguments (``in_channels``, ``img_size``, ``patch_size``, ...; its defaults).
        kwargs: the :class:`ViTEncoder` keyword arguments.

    Example::

        >>> net = ViTBackbone(1, 32, 8, hidden_size=48, mlp_dim=96, num_layers=3, num_heads=4, spatial_dims=2)
        >>> [f.shape for f in net(torch.rand(2, 1, 40, 40))], net.out_channels
        ([torch.Size([2, 48, 4, 4]), torch.Size([2, 48, 4, 4]), torch.Size([2, 48, 4, 4])], (48, 48, 48))
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.taps = vit_taps(len(self.blocks))
        """Blocks tapped, 0-based; the last is always the final block, given normalised."""
        self.out_channels = (self.hidden_size,) * len(self.taps)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:  # type: ignore[override]
        """
        Args:
            x: images ``[B, in_channels, *spatial]``, any size (resized to ``img_size``).

        Returns:
            ``len(taps)`` maps ``[B, hidden_size, *grid_size]``.
        """
        return self.forward_intermediates(resize_to(x, self.img_size), self.taps[:-1], final=True)


def build_backbone(
    name: str,
    in_channels: int,
    spatial_dims: int,
    channels: Sequence[int] = (32, 64, 128, 128, 128),
    output_stride: int = 4,
    norm: str | tuple | None = "batch",
    img_size: Sequence[int] | int = 64,
    patch_size: Sequence[int] | int = 8,
    hidden_size: int = 192,
    mlp_dim: int = 768,
    num_layers: int = 6,
    num_heads: int = 6,
    pos_embed_type: str = "learnable",
    use_flash_attention: bool = True,
) -> CNNBackbone | ViTBackbone:
    """The built-in backbone ``name`` (``"cnn"`` or ``"vit"``) from SG-One's backbone arguments (see
    :class:`~maskseg_monai.networks.SGOne`; :class:`~maskseg_monai.networks.PrototypeMatcher` takes the same).

    Raises:
        ValueError: for another name or bad CNN/ViT arguments.
    """
    if look_up_option(name, SUPPORTED_BACKBONES) == "cnn":
        return CNNBackbone(spatial_dims, in_channels, channels, output_stride, norm)
    return ViTBackbone(
        in_channels,
        img_size,
        patch_size,
        hidden_size=hidden_size,
        mlp_dim=mlp_dim,
        num_layers=num_layers,
        num_heads=num_heads,
        pos_embed_type=pos_embed_type,
        spatial_dims=spatial_dims,
        use_flash_attention=as_bool(use_flash_attention, "use_flash_attention"),
    )


def attach_backbone(owner: nn.Module, backbone: nn.Module, supported: Sequence[str] = SUPPORTED_BACKBONES) -> str:
    """Check that ``backbone`` fits the one-shot network ``owner`` and hold it there.

    The backbone becomes the attribute ``cnn`` (a :class:`CNNBackbone`), ``vit`` (a :class:`ViTBackbone`) or
    ``backbone`` (any other module) of ``owner``, which is also its state-dict prefix; the other two attributes of
    :data:`BACKBONE_ATTRS` are set to None. Shared by :class:`~maskseg_monai.networks.SGOne` and
    :class:`~maskseg_monai.networks.PrototypeMatcher`, so that a trained SG-One's backbone weights load into the
    matcher under the same keys.

    Args:
        owner: the network; its ``spatial_dims`` and ``in_channels`` must be set.
        backbone: the backbone module.
        supported: the backbone names ``owner`` builds itself (for the error message).

    Returns:
        the attribute name.

    Raises:
        ValueError: when the backbone lacks the :class:`OneShotBackbone` interface, its ``out_channels`` are not
            positive widths, or its ``spatial_dims`` / ``in_channels`` differ from the owner's.
    """
    name = type(owner).__name__
    if not isinstance(backbone, nn.Module) or not isinstance(backbone, OneShotBackbone):
        raise ValueError(
            f"backbone must be one of {tuple(supported)} or an nn.Module with 'spatial_dims', 'out_channels' and a "
            f"call returning feature maps (see OneShotBackbone), got {type(backbone).__name__}."
        )
    channels = backbone.out_channels
    widths = isinstance(channels, Sequence) and all(isinstance(c, int) and c > 0 for c in channels)
    if not channels or not widths:
        raise ValueError(f"backbone.out_channels must be a non-empty tuple of widths, got {channels!r}.")
    if backbone.spatial_dims != owner.spatial_dims:
        raise ValueError(f"backbone is {backbone.spatial_dims}D but {name} has spatial_dims={owner.spatial_dims}.")
    if getattr(backbone, "in_channels", owner.in_channels) != owner.in_channels:
        raise ValueError(
            f"backbone takes {backbone.in_channels} channels but {name} has in_channels={owner.in_channels}."
        )
    attr = "cnn" if isinstance(backbone, CNNBackbone) else "vit" if isinstance(backbone, ViTBackbone) else "backbone"
    for a in BACKBONE_ATTRS:
        setattr(owner, a, backbone if a == attr else None)
    return attr


def load_vit_encoder(
    backbone: nn.Module, path_or_state: str | os.PathLike | Mapping, hint: str = "", **kwargs
) -> TransferReport:
    """Load a pretrained ViT encoder (MAE/AMLP ``encoder.pt`` or checkpoint) into a one-shot network's backbone.

    Keyword arguments go to :func:`~maskseg_monai.networks.transfer.load_pretrained_encoder`.

    Raises:
        ValueError: when the backbone is not a :class:`ViTEncoder` (the message ends with ``hint``), or from the
            loader (file, keys, shapes).
    """
    if not isinstance(backbone, ViTEncoder):
        raise ValueError(
            f"pretrained_encoder needs backbone 'vit' (a ViTEncoder), got {type(backbone).__name__}{hint}."
        )
    return load_pretrained_encoder(backbone, path_or_state, **kwargs)
