"""SG-One: one-shot segmentation by similarity guidance, with a CNN or our ViT encoder as the shared backbone."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution
from monai.networks.layers.factories import Conv
from monai.utils import look_up_option
from torch import nn

from maskseg_monai.networks.backbones import attach_backbone, build_backbone, load_vit_encoder
from maskseg_monai.networks.blocks.prototypes import SUPPORTED_PROTOTYPES, AdaptiveLocalPrototypePooling, Prototypes
from maskseg_monai.networks.blocks.similarity import CosineSimilarityGuidance, MaskedAveragePooling, resize_to
from maskseg_monai.networks.transfer import TransferReport

__all__ = ["SGOne"]


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

    Local prototypes (``prototype="local"``; SSL-ALPNet, Ouyang et al., ECCV 2020): the shortcut's foreground and
    background similarities become the class scores of adaptive local prototype pooling
    (:class:`~maskseg_monai.networks.blocks.AdaptiveLocalPrototypePooling` on the guidance features: windows of
    ``local_window`` cells whose mask or background fraction reaches ``local_threshold``, plus the global foreground
    prototype, a soft maximum over each class's ``local_scale * cos``), divided by ``local_scale`` so that they stay in
    cosine units. The multiplicative path keeps SG-One's global guidance map, so the network is still SG-One's and
    only the shortcut sees the local prototypes: a background made of several distinct tissues, whose mean may look
    like the target, is then matched part by part. ``"global"`` (the default) is the network as before, bit for bit.

    Prototype alignment (``align_weight > 0``; PANet, Wang et al., ICCV 2019): in training mode, the query's argmax
    prediction becomes a support that segments each support image (:meth:`alignment_loss`); the cross-entropy
    against the support masks, times ``align_weight``, is stored in :attr:`auxiliary_loss` (a tensor; None in eval
    mode or with ``align_weight=0``, reset by every forward). ``forward`` still returns only the query's logits, as
    MONAI's ``SupervisedTrainer`` expects; :class:`~maskseg_monai.losses.AuxiliaryLossWrapper` adds the term to the
    loss. Neither option adds parameters: checkpoints load into either setting.

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
        prototype: the shortcut's prototypes, ``"global"`` (one per class, masked average pooling) or ``"local"``
            (SSL-ALPNet's adaptive local prototypes; needs ``guidance_logit_scale > 0``). Defaults to ``"global"``.
        local_window: ALP window in guidance-feature cells, int or per axis (SSL-ALPNet: 4 on a 32 x 32 map in
            training, 2 at test). Defaults to 4.
        local_threshold: least mask (or background) fraction of a window that makes it a local prototype, in
            (0, 1]. Defaults to 0.95.
        local_scale: ALP's similarity scale (SSL-ALPNet: 20). Defaults to 20.
        align_weight: weight of PANet's prototype-alignment loss, computed in training mode only; 0 turns it off.
            Defaults to 0.

    Raises:
        ValueError: for an unknown backbone name, bad CNN/ViT arguments, or a backbone module without the
            :class:`OneShotBackbone` interface or of another ``spatial_dims``/``in_channels``; for an unknown
            ``prototype``, ``"local"`` with ``guidance_logit_scale=0``, bad ``local_*`` values or a negative
            ``align_weight``.

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
        prototype: str = "global",
        local_window: Sequence[int] | int = 4,
        local_threshold: float = 0.95,
        local_scale: float = 20.0,
        align_weight: float = 0.0,
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.guidance_logit_scale = float(guidance_logit_scale)
        self.prototype_mode = look_up_option(prototype, SUPPORTED_PROTOTYPES)
        """``"global"`` or ``"local"``: where the guidance shortcut's similarities come from."""
        if self.prototype_mode == "local" and not self.guidance_logit_scale:
            raise ValueError(
                "prototype='local' acts through the guidance shortcut, but guidance_logit_scale is 0; give "
                "guidance_logit_scale > 0 (e.g. 10) or use prototype='global'."
            )
        if not float(align_weight) >= 0:
            raise ValueError(f"align_weight must be >= 0, got {align_weight}.")
        self.align_weight = float(align_weight)
        self.local_scale = float(local_scale)
        # validated before any module is built, so that a bad key fails fast; no parameters, no state-dict keys
        alp = AdaptiveLocalPrototypePooling(local_window, local_threshold, local_scale, resize=map_resize)
        if isinstance(backbone, str):
            backbone = build_backbone(
                backbone,
                in_channels,
                spatial_dims,
                channels,
                output_stride,
                norm,
                img_size,
                patch_size,
                hidden_size,
                mlp_dim,
                num_layers,
                num_heads,
                pos_embed_type,
                use_flash_attention,
            )
        self.backbone_attr = attach_backbone(self, backbone)
        """Attribute holding the backbone module: ``"cnn"``, ``"vit"`` or ``"backbone"``."""
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
        self.alp = alp if self.prototype_mode == "local" else None
        self.auxiliary_loss: torch.Tensor | None = None
        """PANet's alignment loss of the last forward, times ``align_weight`` (training with ``align_weight > 0``);
        None otherwise. Reset by every forward; :class:`~maskseg_monai.losses.AuxiliaryLossWrapper` adds it."""

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

    def _support_terms(
        self, guide: torch.Tensor, mask: torch.Tensor, allow_empty: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | Prototypes | None]:
        """What the query needs of a support: the global prototype ``[B, C]`` (the multiplicative guidance) and the
        shortcut's background prototype ``[B, C]`` (``"global"``; None without shortcut) or ALP's
        :class:`Prototypes` (``"local"``).

        Args:
            guide: guidance features of the support ``[B, K, C, *spatial_f]``.
            mask: ``[B, K, 1, *spatial]``, in the features' dtype.
            allow_empty: zero foreground prototypes for empty masks (PANet's alignment, on predicted masks).
        """
        proto = (self.pool_background if allow_empty else self.pool)(guide, mask)
        if self.prototype_mode == "local":
            return proto, self.alp.prototypes(guide, mask, allow_empty=allow_empty)
        return proto, self.pool_background(guide, 1.0 - mask) if self.guidance_logit_scale else None

    def _segment(
        self,
        feats: list[torch.Tensor],
        guide: torch.Tensor,
        proto: torch.Tensor,
        extra: torch.Tensor | Prototypes | None,
        size: Sequence[int],
    ) -> torch.Tensor:
        """Two-class logits ``[N, 2, *size]`` of images given by their backbone maps ``feats`` and guidance features
        ``guide`` ``[N, C, *spatial_f]``, with a support's terms (:meth:`_support_terms`) of batch N or 1."""
        guidance = self.similarity(guide, proto)
        side = self.fuse(torch.cat([s(resize_to(f, guide.shape[2:])) for s, f in zip(self.side, feats)], dim=1))
        logits = self.head(side * guidance)
        if self.guidance_logit_scale:
            if self.prototype_mode == "local":
                # ALP's class scores are scale * (soft maximum of the cosines): divided by local_scale they are in
                # cosine units, as in the global shortcut, so guidance_logit_scale keeps its meaning and local_scale
                # only sets how sharply each class picks its best-matching prototype
                scores = self.alp.scores(guide, extra)
                difference = (scores[:, 1:] - scores[:, :1]) / self.local_scale
            else:
                difference = guidance - self.similarity(guide, extra)
            shortcut = 0.5 * self.guidance_logit_scale * difference
            logits = logits + torch.cat([-shortcut, shortcut], dim=1)
        return resize_to(logits, size)

    def forward(self, x: torch.Tensor, support_image: torch.Tensor, support_mask: torch.Tensor) -> torch.Tensor:
        """Segment the support's class in the query.

        In training mode with ``align_weight > 0``, also computes PANet's prototype-alignment loss into
        :attr:`auxiliary_loss` (see :meth:`alignment_loss`); the return value is the query's logits either way.

        Args:
            x: query images ``[B, C, *spatial]``.
            support_image: ``[B or 1, K, C, *spatial_s]`` or ``[B or 1, C, *spatial_s]``; a batch of 1 is shared by
                every query.
            support_mask: ``[B or 1, K, 1, *spatial_s]`` or ``[B or 1, 1, *spatial_s]``, binary.

        Returns:
            logits ``[B, 2, *spatial]`` (channel 1: the support's class).
        """
        if self.auxiliary_loss is not None or self.training:
            self.auxiliary_loss = None
        self._check("query image", x, self.in_channels, self.spatial_dims + 2)
        support_image, support_mask = self._check_support(support_image, support_mask)
        b, k = support_image.shape[:2]
        support_feats = self._encode(support_image.flatten(0, 1))
        support_guide = self.guide(support_feats[-1])
        mask = support_mask.to(support_guide.dtype)
        proto, extra = self._support_terms(support_guide.unflatten(0, (b, k)), mask)
        if proto.shape[0] not in (1, x.shape[0]):
            raise ValueError(f"support batch {proto.shape[0]} must be 1 or the query batch {x.shape[0]}.")
        feats = self._encode(x)
        guide = self.guide(feats[-1])
        logits = self._segment(feats, guide, proto, extra, x.shape[2:])
        if self.training and self.align_weight > 0:
            self.auxiliary_loss = self.align_weight * self.alignment_loss(
                logits, guide, support_feats, support_guide, mask
            )
        return logits

    def alignment_loss(
        self,
        logits: torch.Tensor,
        guide: torch.Tensor,
        support_feats: list[torch.Tensor],
        support_guide: torch.Tensor,
        support_mask: torch.Tensor,
    ) -> torch.Tensor:
        """PANet's prototype-alignment loss (Wang et al., ICCV 2019, Sec. 3.4): the query, with its predicted mask as
        the support, segments each support image; cross-entropy against the support masks.

        The query's argmax mask (no gradient, as in PANet's training) becomes the support mask; its prototypes come
        from the query's guidance features (with gradient), and each support shot is segmented by the same head as
        the query. Queries whose predicted foreground is empty are left out (PANet skips them); the loss is 0 when
        all are.

        Args:
            logits: the query's logits ``[B, 2, *spatial]``.
            guide: the query's guidance features ``[B, C, *spatial_f]``.
            support_feats: the supports' backbone maps, ``[B_s * K, C_i, *spatial_i]`` (``B_s`` is B or 1).
            support_guide: the supports' guidance features ``[B_s * K, C, *spatial_fs]``.
            support_mask: ``[B_s, K, 1, *spatial_s]``.

        Returns:
            the mean (over kept queries and their shots) cross-entropy, a scalar tensor (not times ``align_weight``).
        """
        b, (b_s, k) = logits.shape[0], support_mask.shape[:2]
        pred = logits.detach().argmax(1, keepdim=True).to(guide.dtype)  # [B, 1, *spatial]
        kept = (pred.flatten(1).amax(1) > 0).to(logits.dtype).repeat_interleave(k)  # [B * K]
        proto, extra = self._support_terms(guide[:, None], pred[:, None], allow_empty=True)
        proto = proto.repeat_interleave(k, 0)
        if isinstance(extra, Prototypes):
            extra = extra.repeat_interleave(k)
        elif extra is not None:
            extra = extra.repeat_interleave(k, 0)
        if b_s != b:  # one support shared by every query: segment it once per query
            support_feats = [f.repeat(b, *([1] * (f.ndim - 1))) for f in support_feats]
            support_guide = support_guide.repeat(b, *([1] * (support_guide.ndim - 1)))
            support_mask = support_mask.expand(b, *support_mask.shape[1:])
        target = support_mask.flatten(0, 1)  # [B * K, 1, *spatial_s]
        pred_s = self._segment(support_feats, support_guide, proto, extra, target.shape[2:])
        ce = F.cross_entropy(pred_s, (target[:, 0] > 0.5).long(), reduction="none").flatten(1).mean(1)
        return (ce * kept).sum() / kept.sum().clamp_min(1.0)

    def load_encoder(self, path_or_state: str | os.PathLike | Mapping, **kwargs) -> TransferReport:
        """Load a pretrained ViT encoder (MAE/AMLP ``encoder.pt`` or checkpoint) into a ViT backbone.

        Keyword arguments go to :func:`~maskseg_monai.networks.transfer.load_pretrained_encoder`.

        Raises:
            ValueError: when the backbone is not a :class:`ViTEncoder` (``"cnn"``), or from the loader (file, keys,
                shapes).
        """
        hint = "; the 'cnn' backbone trains from scratch or loads a whole SG-One checkpoint"
        return load_vit_encoder(getattr(self, self.backbone_attr), path_or_state, hint, **kwargs)
