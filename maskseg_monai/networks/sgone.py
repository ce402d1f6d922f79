"""SG-One: one-shot segmentation by similarity guidance, with a CNN or our ViT encoder as the shared backbone."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import torch
from monai.networks.blocks import Convolution
from monai.networks.layers.factories import Conv
from monai.utils import look_up_option
from torch import nn

from maskseg_monai.networks.backbones import CNNBackbone, OneShotBackbone, ViTBackbone
from maskseg_monai.networks.blocks.similarity import CosineSimilarityGuidance, MaskedAveragePooling, resize_to
from maskseg_monai.networks.blocks.vit_encoder import ViTEncoder
from maskseg_monai.networks.transfer import TransferReport, load_pretrained_encoder
from maskseg_monai.utils import as_bool

__all__ = ["SGOne", "SUPPORTED_BACKBONES"]

SUPPORTED_BACKBONES = ("cnn", "vit")
# attribute, hence state-dict prefix, of each built-in backbone (``cnn.*``, ``vit.*``: the keys of earlier
# checkpoints); any other backbone module is ``backbone.*``
_BACKBONE_ATTRS = ((CNNBackbone, "cnn"), (ViTBackbone, "vit"))


class SGOne(nn.Module):
    """SG-One similarity guidance network for one-shot segmentation.

    Zhang, Wei, Yang, Huang, "SG-One: Similarity Guidance Network for One-Shot Semantic Segmentation", IEEE Trans.
    Cybernetics 2020. One backbone is shared by support and query. The guidance branch (a 3x3 convolution on the
    last backbone features) turns the support into a prototype by masked average pooling and compares it with every
    query position by cosine similarity; the segmentation branch fuses side features of the backbone's maps (the
    CNN's last three stages; maps of another resolution are first interpolated to the guidance map's), multiplies
    them by the guidance map and predicts two-class logits (background, target), up-sampled to the query's size.
    Several shots average their prototypes.

    Guidance shortcut (our addition; ``guidance_logit_scale=0`` gives the paper's network): the difference between the
    guidance map and the similarity to a background prototype (masked average pooling under ``1 - mask``), times
    ``guidance_logit_scale / 2``, is added to the target logit and subtracted from the background logit, as PANet
    (Wang et al., ICCV 2019) uses scaled cosine similarities to foreground and background prototypes as logits.
    Without it, training from scratch settles on "segment every object": the cosine similarities start near 1
    everywhere and the multiplicative path passes them too little gradient to become class-specific (on synthetic
    many-class scenes the Dice on seen classes stayed at the level of the all-objects mask after 1,500 steps, and
    reached 0.95 within 400 steps with the shortcut).

    Backbones (:mod:`~maskseg_monai.networks.backbones`): ``"cnn"``, a :class:`CNNBackbone` (VGG-style, trained
    from scratch or from our own SG-One checkpoints; nothing is downloaded), ``"vit"``, a :class:`ViTBackbone` (our
    :class:`ViTEncoder`, which :meth:`load_encoder` fills from an MAE/AMLP ``encoder.pt`` or checkpoint), or any
    module with the :class:`OneShotBackbone` interface (``spatial_dims``, ``out_channels`` and a call returning
    feature maps): a new backbone, 2D or 3D, needs no change here. The module is the attribute ``cnn``, ``vit`` or
    (any other) ``backbone``, which is also its state-dict prefix; :attr:`backbone_attr` says which, and the other
    two are None. The ViT needs a fixed input size: images of another size are resized to ``img_size`` on the way
    in. Logits are interpolated back to the query's size.

    Args:
        in_channels: image channels.
        spatial_dims: 2 or 3. Defaults to 2 (3D volumes are segmented slice by slice by the bundle).
        backbone: ``"cnn"``, ``"vit"`` (built from the arguments below) or a backbone module (then the
            ``"cnn"``/``"vit"`` arguments are not used). Defaults to ``"cnn"``.
        channels: widths of the five CNN blocks. Defaults to ``(32, 64, 128, 128, 128)``.
        output_stride: CNN output stride, 1, 2, 4 or 8 (SG-One: 8). Defaults to 4 to keep objects of a few pixels.
        norm: normalisation of the CNN convolutions (MONAI name; SG-One's pretrained VGG has none, a CNN trained from
            scratch learns far faster with it). Defaults to ``"batch"``.
        seg_channels: width of the segmentation branch (SG-One: 128). Defaults to 64.
        guide_channels: width of the guidance features; ``None`` keeps the backbone's. Defaults to ``None``.
        map_resize: grid matching in masked average pooling, see
            :func:`~maskseg_monai.networks.blocks.masked_average_pooling`.
        guidance_logit_scale: weight of the guidance shortcut to the logits; 0 for the paper's SG-One. Defaults to 10.
        img_size: ViT input size (int or per axis). Defaults to 64.
        patch_size: ViT patch size. Defaults to 8.
        hidden_size: ViT width. Defaults to 192.
        mlp_dim: ViT MLP width. Defaults to 768.
        num_layers: ViT depth. Defaults to 6.
        num_heads: ViT heads. Defaults to 6.
        pos_embed_type: ViT position embedding, ``"sincos"`` or ``"learnable"``. Defaults to ``"learnable"``.
        use_flash_attention: fused attention in the ViT. Defaults to True.

    Raises:
        ValueError: for an unknown backbone name, bad CNN/ViT arguments, or a backbone module without the
            :class:`OneShotBackbone` interface or of another ``spatial_dims``/``in_channels``.

    Example::

        >>> net = SGOne(in_channels=1, spatial_dims=2)
        >>> q, s, m = torch.rand(2, 1, 32, 32), torch.rand(2, 1, 1, 32, 32), torch.ones(2, 1, 1, 32, 32)
        >>> net(q, s, m).shape  # [B, 2, H, W]
        torch.Size([2, 2, 32, 32])
        >>> net = SGOne(in_channels=1, spatial_dims=3, backbone=CNNBackbone(3, 1, channels=(4, 8, 8, 8, 8)))
        >>> q, m = torch.rand(1, 1, 16, 16, 8), torch.ones(1, 1, 16, 16, 8)
        >>> net.backbone_attr, net(q, q, m).shape  # a backbone module; the built-in CNN is "cnn"
        ('cnn', torch.Size([1, 2, 16, 16, 8]))
    """

    def __init__(
        self,
        in_channels: int = 1,
        spatial_dims: int = 2,
        backbone: str | nn.Module = "cnn",
        channels: Sequence[int] = (32, 64, 128, 128, 128),
        output_stride: int = 4,
        norm: str | tuple | None = "batch",
        seg_channels: int = 64,
        guide_channels: int | None = None,
        map_resize: str = "features_to_mask",
        guidance_logit_scale: float = 10.0,
        img_size: Sequence[int] | int = 64,
        patch_size: Sequence[int] | int = 8,
        hidden_size: int = 192,
        mlp_dim: int = 768,
        num_layers: int = 6,
        num_heads: int = 6,
        pos_embed_type: str = "learnable",
        use_flash_attention: bool = True,
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.guidance_logit_scale = float(guidance_logit_scale)
        if isinstance(backbone, str):
            if look_up_option(backbone, SUPPORTED_BACKBONES) == "cnn":
                backbone = CNNBackbone(spatial_dims, in_channels, channels, output_stride, norm)
            else:
                backbone = ViTBackbone(
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
        self._check_backbone(backbone)
        self.backbone_attr = next((a for cls, a in _BACKBONE_ATTRS if isinstance(backbone, cls)), "backbone")
        """Attribute holding the backbone module: ``"cnn"``, ``"vit"`` or ``"backbone"``."""
        for attr in ("cnn", "vit", "backbone"):
            setattr(self, attr, backbone if attr == self.backbone_attr else None)
        feat_ch = tuple(backbone.out_channels)
        conv = Conv[Conv.CONV, spatial_dims]
        guide_channels = guide_channels or feat_ch[-1]
        self.guide = conv(feat_ch[-1], guide_channels, kernel_size=3, padding=1)  # SG-One: no ReLU
        self.side = nn.ModuleList(
            Convolution(spatial_dims, ch, seg_channels, kernel_size=3, act="RELU", norm=None) for ch in feat_ch
        )
        self.fuse = Convolution(spatial_dims, seg_channels * len(feat_ch), seg_channels, kernel_size=1, act="RELU")
        self.pool = MaskedAveragePooling(resize=map_resize)
        self.pool_background = MaskedAveragePooling(resize=map_resize, allow_empty=True)
        self.similarity = CosineSimilarityGuidance()
        self.head = nn.Sequential(
            Convolution(spatial_dims, seg_channels, seg_channels, kernel_size=3, act="RELU", norm=None),
            conv(seg_channels, 2, kernel_size=1),
        )

    def _check_backbone(self, backbone: nn.Module) -> None:
        """Raise a ``ValueError`` when a backbone lacks the :class:`OneShotBackbone` interface or does not fit."""
        if not isinstance(backbone, nn.Module) or not isinstance(backbone, OneShotBackbone):
            raise ValueError(
                f"backbone must be one of {SUPPORTED_BACKBONES} or an nn.Module with 'spatial_dims', 'out_channels' "
                f"and a call returning feature maps (see OneShotBackbone), got {type(backbone).__name__}."
            )
        channels = backbone.out_channels
        widths = isinstance(channels, Sequence) and all(isinstance(c, int) and c > 0 for c in channels)
        if not channels or not widths:
            raise ValueError(f"backbone.out_channels must be a non-empty tuple of widths, got {channels!r}.")
        if backbone.spatial_dims != self.spatial_dims:
            raise ValueError(f"backbone is {backbone.spatial_dims}D but SGOne has spatial_dims={self.spatial_dims}.")
        if getattr(backbone, "in_channels", self.in_channels) != self.in_channels:
            raise ValueError(
                f"backbone takes {backbone.in_channels} channels but SGOne has in_channels={self.in_channels}."
            )

    def _encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The backbone's feature maps of images ``[B, C, *spatial]``."""
        return getattr(self, self.backbone_attr)(x)

    def _check(self, name: str, x: torch.Tensor, channels: int, ndim: int) -> None:
        if x.ndim != ndim or x.shape[-self.spatial_dims - 1] != channels:
            axes = ", ".join("HWD"[: self.spatial_dims])
            shot = "K, " if ndim == self.spatial_dims + 3 else ""
            raise ValueError(
                f"{name} must be [B, {shot}{channels}, {axes}] ({self.spatial_dims}D), got {tuple(x.shape)}."
            )

    def prototype(self, support_image: torch.Tensor, support_mask: torch.Tensor) -> torch.Tensor:
        """Class prototype of a support set.

        Args:
            support_image: ``[B, K, C, *spatial]`` (K shots) or ``[B, C, *spatial]`` (one shot).
            support_mask: ``[B, K, 1, *spatial]`` or ``[B, 1, *spatial]``, binary, at the support image's size.

        Returns:
            ``[B, guide_channels]``.

        Raises:
            ValueError: on wrong shapes or an empty support mask.
        """
        return self._prototypes(*self._check_support(support_image, support_mask), background=False)[0]

    def _check_support(
        self, support_image: torch.Tensor, support_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Supports with a shot axis, shapes checked."""
        d = self.spatial_dims
        if support_image.ndim == d + 2:
            support_image, support_mask = support_image[:, None], support_mask[:, None]
        self._check("support_image", support_image, self.in_channels, d + 3)
        self._check("support_mask", support_mask, 1, d + 3)
        if support_image.shape[:2] != support_mask.shape[:2] or support_image.shape[3:] != support_mask.shape[3:]:
            raise ValueError(
                f"support_image {tuple(support_image.shape)} and support_mask {tuple(support_mask.shape)} must have "
                "the same batch, shots and spatial size."
            )
        return support_image, support_mask

    def _prototypes(
        self, support_image: torch.Tensor, support_mask: torch.Tensor, background: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Foreground and (when asked) background prototypes ``[B, C]`` of ``[B, K, ...]`` supports; the background
        prototype of a mask covering the whole support is 0."""
        b, k = support_image.shape[:2]
        feats = self.guide(self._encode(support_image.flatten(0, 1))[-1]).unflatten(0, (b, k))
        mask = support_mask.to(feats.dtype)
        return self.pool(feats, mask), self.pool_background(feats, 1.0 - mask) if background else None

    def forward(self, x: torch.Tensor, support_image: torch.Tensor, support_mask: torch.Tensor) -> torch.Tensor:
        """Segment the support's class in the query.

        Args:
            x: query images ``[B, C, *spatial]``.
            support_image: ``[B or 1, K, C, *spatial_s]`` or ``[B or 1, C, *spatial_s]``; a batch of 1 is shared by
                every query.
            support_mask: ``[B or 1, K, 1, *spatial_s]`` or ``[B or 1, 1, *spatial_s]``, binary.

        Returns:
            logits ``[B, 2, *spatial]`` (channel 1: the support's class).
        """
        self._check("query image", x, self.in_channels, self.spatial_dims + 2)
        proto, proto_bg = self._prototypes(
            *self._check_support(support_image, support_mask), background=bool(self.guidance_logit_scale)
        )
        if proto.shape[0] not in (1, x.shape[0]):
            raise ValueError(f"support batch {proto.shape[0]} must be 1 or the query batch {x.shape[0]}.")
        feats = self._encode(x)
        guide = self.guide(feats[-1])
        guidance = self.similarity(guide, proto)
        side = self.fuse(torch.cat([s(resize_to(f, guide.shape[2:])) for s, f in zip(self.side, feats)], dim=1))
        logits = self.head(side * guidance)
        if self.guidance_logit_scale:
            shortcut = 0.5 * self.guidance_logit_scale * (guidance - self.similarity(guide, proto_bg))
            logits = logits + torch.cat([-shortcut, shortcut], dim=1)
        return resize_to(logits, x.shape[2:])

    def load_encoder(self, path_or_state: str | os.PathLike | Mapping, **kwargs) -> TransferReport:
        """Load a pretrained ViT encoder (MAE/AMLP ``encoder.pt`` or checkpoint) into a ViT backbone.

        Keyword arguments go to :func:`~maskseg_monai.networks.transfer.load_pretrained_encoder`.

        Raises:
            ValueError: when the backbone is not a :class:`ViTEncoder` (``"cnn"``), or from the loader (file, keys,
                shapes).
        """
        backbone = getattr(self, self.backbone_attr)
        if not isinstance(backbone, ViTEncoder):
            raise ValueError(
                f"pretrained_encoder needs backbone 'vit' (a ViTEncoder), got {type(backbone).__name__}; the 'cnn' "
                "backbone trains from scratch or loads a whole SG-One checkpoint."
            )
        return load_pretrained_encoder(backbone, path_or_state, **kwargs)
