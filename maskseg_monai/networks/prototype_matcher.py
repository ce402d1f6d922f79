"""Training-free one-shot baseline: prototype matching on frozen features (intensities, a random CNN or a pretrained
ViT encoder)."""

from __future__ import annotations

import inspect
import math
import os
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from monai.networks.layers import GaussianFilter
from monai.utils import ensure_tuple, look_up_option
from torch import nn

from maskseg_monai.networks.backbones import attach_backbone, build_backbone, load_vit_encoder
from maskseg_monai.networks.blocks.prototypes import (
    SUPPORTED_PROTOTYPES,
    AdaptiveLocalPrototypePooling,
    global_prototypes,
    prototype_scores,
)
from maskseg_monai.networks.blocks.similarity import SUPPORTED_MAP_RESIZE, resize_to
from maskseg_monai.networks.transfer import TransferReport

__all__ = ["IntensityFeatures", "PrototypeMatcher", "SUPPORTED_MATCHER_BACKBONES"]

SUPPORTED_MATCHER_BACKBONES = ("cnn", "vit", "intensity")
#: SG-One keys that configure its trainable head: meaningless here, refused with a hint
_SGONE_HEAD_KEYS = ("seg_channels", "guide_channels", "guidance_logit_scale", "align_weight")
_NOT_KEYS = ("self", "unknown")


class IntensityFeatures(nn.Module):
    """Intensities as features for cosine matching: each channel's value ``v`` becomes the unit vector
    ``(cos t, sin t)``, ``t = pi / 2 * clip((v - lo) / (hi - lo), 0, 1)``, so that ``cos`` between two positions is
    ``cos(t_1 - t_2)``: 1 for equal intensities, 0 for the two ends of the range (a raw one-channel intensity would
    only give cosines of +-1). Optionally also of fixed Gaussian-smoothed copies, one map each. Images are first
    area-averaged by ``output_stride``. A :class:`~maskseg_monai.networks.OneShotBackbone` with no trainable
    parameter.

    Args:
        spatial_dims: 2 or 3.
        in_channels: image channels.
        sigmas: standard deviations (in pixels) of the smoothed copies; ``()`` for the image alone. Defaults to ``()``.
        intensity_range: ``(lo, hi)`` mapped to the angles 0 and pi / 2 (values outside are clipped), or None to
            min-max scale every image on its own. Defaults to ``(0, 1)`` (the bundles scale intensities to [0, 1]).
        output_stride: area down-sampling of the images, a power of two >= 1. Defaults to 1.

    Raises:
        ValueError: on a bad ``spatial_dims``, ``sigmas``, ``intensity_range`` or ``output_stride``.

    Example::

        >>> feats = IntensityFeatures(2, 1, sigmas=(2.0,), output_stride=2)
        >>> [f.shape for f in feats(torch.rand(2, 1, 32, 32))], feats.out_channels
        ([torch.Size([2, 2, 16, 16]), torch.Size([2, 2, 16, 16])], (2, 2))
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        sigmas: Sequence[float] = (),
        intensity_range: Sequence[float] | None = (0.0, 1.0),
        output_stride: int = 1,
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
        sigmas = tuple(float(s) for s in ensure_tuple(sigmas))
        if any(not s > 0 for s in sigmas):
            raise ValueError(f"intensity_sigmas must be > 0, got {sigmas}.")
        if intensity_range is not None:
            intensity_range = tuple(float(v) for v in intensity_range)
            if len(intensity_range) != 2 or not intensity_range[1] > intensity_range[0]:
                raise ValueError(f"intensity_range must be (lo, hi) with hi > lo, or None, got {intensity_range}.")
        if int(output_stride) < 1 or int(output_stride) & (int(output_stride) - 1):
            raise ValueError(f"output_stride must be a power of two >= 1, got {output_stride}.")
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.sigmas = sigmas
        self.intensity_range = intensity_range
        self.output_stride = int(output_stride)
        self.smooth = nn.ModuleList(GaussianFilter(spatial_dims, s) for s in sigmas)
        self.out_channels = (2 * in_channels,) * (1 + len(sigmas))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, *spatial]`` intensities -> ``[B, 2C, *spatial]`` unit vectors per channel (cosines, then sines)."""
        if self.intensity_range is None:
            dims = tuple(range(2, x.ndim))
            lo, hi = x.amin(dims, keepdim=True), x.amax(dims, keepdim=True)
        else:
            lo, hi = self.intensity_range
        t = 0.5 * math.pi * ((x - lo) / (hi - lo + 1e-8)).clamp(0.0, 1.0)
        return torch.cat([torch.cos(t), torch.sin(t)], dim=1)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """
        Args:
            x: images ``[B, in_channels, *spatial]``.

        Returns:
            ``1 + len(sigmas)`` maps ``[B, 2 * in_channels, *spatial / output_stride]``: the image, then each
            smoothed copy.
        """
        copies = [x] + [smooth(x) for smooth in self.smooth]
        if self.output_stride > 1:
            pool = F.avg_pool2d if self.spatial_dims == 2 else F.avg_pool3d
            copies = [pool(c, self.output_stride, self.output_stride, ceil_mode=True) for c in copies]
        return [self.embed(c) for c in copies]


class PrototypeMatcher(nn.Module):
    """Training-free one-shot segmentation: prototype matching on frozen features, a baseline for SG-One.

    The support's features give class prototypes, global (one per class, masked average pooling, as PANet) or local
    (SSL-ALPNet's adaptive local prototypes, Ouyang et al., ECCV 2020; see
    :class:`~maskseg_monai.networks.blocks.AdaptiveLocalPrototypePooling`); the logits are the query's background and
    foreground scores, ``sum_j softmax_j(s_j) * s_j`` with ``s_j = local_scale * cos(F_q, p_j)``
    (:func:`~maskseg_monai.networks.blocks.prototype_scores`), interpolated to the query's size. Features: the
    maps of ``stages`` of a frozen backbone, interpolated to the finest of them, each L2-normalised over its
    channels and concatenated (so the cosine of the whole is the mean of the stages' cosines).

    Backbones: ``"intensity"`` (:class:`IntensityFeatures`: the image, and Gaussian-smoothed copies with
    ``intensity_sigmas``: an intensity-prototype baseline), ``"cnn"`` (a randomly initialised
    :class:`~maskseg_monai.networks.CNNBackbone`, seeded with ``seed``: a "random features" arm), ``"vit"`` (a
    :class:`~maskseg_monai.networks.ViTBackbone`; give it an MAE/AMLP ``encoder.pt`` or checkpoint with
    ``pretrained_encoder`` or :meth:`load_encoder`, else it is random too), or any module with the
    :class:`~maskseg_monai.networks.OneShotBackbone` interface (e.g. a trained SG-One's ``cnn``). The backbone is the
    attribute ``cnn``, ``vit`` or ``backbone`` (for ``"intensity"`` and other modules), as in SG-One, so a trained
    SG-One's backbone weights load with ``load_state_dict(..., strict=False)``.

    Nothing is trained: every parameter has ``requires_grad=False`` and the module stays in eval mode (``train()``
    keeps it there, so batch-norm statistics are never updated); it serves evaluation and inference configs, not
    ``SupervisedTrainer``.

    It takes SG-One's constructor keys for the backbone and the prototypes, with SG-One's defaults, so that a bundle
    can swap ``network_def#_target_``: ``in_channels``, ``spatial_dims``, ``backbone``, ``channels``,
    ``output_stride``, ``norm``, ``map_resize``, ``prototype``, ``local_window``, ``local_threshold``,
    ``local_scale``, ``img_size``, ``patch_size``, ``hidden_size``, ``mlp_dim``, ``num_layers``, ``num_heads``,
    ``pos_embed_type``, ``use_flash_attention``. SG-One's head keys (``seg_channels``, ``guide_channels``,
    ``guidance_logit_scale``, ``align_weight``) and any other key raise a ``ValueError``.

    Args:
        in_channels: image channels. Defaults to 1.
        spatial_dims: 2 or 3. Defaults to 2.
        backbone: ``"cnn"``, ``"vit"``, ``"intensity"`` or a backbone module. Defaults to ``"cnn"``.
        stages: indices of the backbone maps used (negative from the end); None for all. Defaults to None.
        prototype: ``"global"`` or ``"local"``. Defaults to ``"global"``.
        local_window: ALP window in feature cells, int or per axis. Defaults to 4.
        local_threshold: least mask (or background) fraction of a window that makes it a local prototype, in
            (0, 1]. Defaults to 0.95.
        local_scale: the similarity scale of both prototype modes (SSL-ALPNet, PANet: 20). Defaults to 20.
        map_resize: grid matching of the global prototypes, see
            :func:`~maskseg_monai.networks.blocks.masked_average_pooling`. Defaults to ``"features_to_mask"``.
        intensity_sigmas: ``"intensity"``: standard deviations of the smoothed copies. Defaults to ``()``.
        intensity_range: ``"intensity"``: the ``(lo, hi)`` intensity range, None for per-image min-max. Defaults to
            ``(0, 1)``.
        seed: seed of the random initialisation of a built ``"cnn"``/``"vit"`` backbone (the global RNG is left as it
            was). Defaults to 0.
        pretrained_encoder: ``"vit"``: an ``encoder.pt`` or checkpoint loaded at construction (see
            :meth:`load_encoder`); None or ``""`` for none. Defaults to None.
        channels: CNN block widths. Defaults to ``(32, 64, 128, 128, 128)``.
        output_stride: CNN output stride (1, 2, 4 or 8), or the ``"intensity"`` down-sampling (a power of two).
            Defaults to 4.
        norm: CNN normalisation (in eval mode a fresh batch norm is the identity). Defaults to ``"batch"``.
        img_size: ViT input size. Defaults to 64.
        patch_size: ViT patch size. Defaults to 8.
        hidden_size: ViT width. Defaults to 192.
        mlp_dim: ViT MLP width. Defaults to 768.
        num_layers: ViT depth. Defaults to 6.
        num_heads: ViT heads. Defaults to 6.
        pos_embed_type: ViT position embedding. Defaults to ``"learnable"``.
        use_flash_attention: fused attention in the ViT. Defaults to True.
        unknown: any other key: refused.

    Raises:
        ValueError: on an unknown key (naming it and the accepted ones), an unknown backbone or prototype mode, bad
            stages or backbone arguments, a backbone module without the ``OneShotBackbone`` interface or of another
            ``spatial_dims``/``in_channels``, or ``pretrained_encoder`` without a ViT backbone.

    Example::

        >>> net = PrototypeMatcher(backbone="intensity", output_stride=1)
        >>> q, s, m = torch.rand(2, 1, 32, 32), torch.rand(2, 1, 1, 32, 32), torch.ones(2, 1, 1, 32, 32)
        >>> net(q, s, m).shape  # [B, 2, H, W]
        torch.Size([2, 2, 32, 32])
        >>> net = PrototypeMatcher(spatial_dims=3, channels=(4, 8, 8, 8, 8), prototype="local", local_window=2)
        >>> q, m = torch.rand(1, 1, 16, 16, 8), torch.ones(1, 1, 16, 16, 8)
        >>> net(q, q, m).shape, sum(p.requires_grad for p in net.parameters())
        (torch.Size([1, 2, 16, 16, 8]), 0)
    """

    def __init__(
        self,
        in_channels: int = 1,
        spatial_dims: int = 2,
        backbone: str | nn.Module = "cnn",
        stages: Sequence[int] | None = None,
        prototype: str = "global",
        local_window: Sequence[int] | int = 4,
        local_threshold: float = 0.95,
        local_scale: float = 20.0,
        map_resize: str = "features_to_mask",
        intensity_sigmas: Sequence[float] = (),
        intensity_range: Sequence[float] | None = (0.0, 1.0),
        seed: int = 0,
        pretrained_encoder: str | os.PathLike | None = None,
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
        **unknown,
    ) -> None:
        super().__init__()
        if unknown:
            head = sorted(k for k in unknown if k in _SGONE_HEAD_KEYS)
            hint = f" ({', '.join(head)}: SG-One's trainable head, which the matcher does not have)" if head else ""
            accepted = [k for k in inspect.signature(PrototypeMatcher.__init__).parameters if k not in _NOT_KEYS]
            raise ValueError(f"PrototypeMatcher got unknown keys {sorted(unknown)}{hint}; it accepts {accepted}.")
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.prototype_mode = look_up_option(prototype, SUPPORTED_PROTOTYPES)
        self.local_scale = float(local_scale)
        self.map_resize = look_up_option(map_resize, SUPPORTED_MAP_RESIZE)
        self.alp = AdaptiveLocalPrototypePooling(local_window, local_threshold, local_scale, resize=map_resize)
        if isinstance(backbone, str):
            name = look_up_option(backbone, SUPPORTED_MATCHER_BACKBONES)
            if name == "intensity":
                backbone = IntensityFeatures(
                    spatial_dims, in_channels, intensity_sigmas, intensity_range, output_stride
                )
            else:
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(int(seed))
                    backbone = build_backbone(
                        name, in_channels, spatial_dims, channels, output_stride, norm, img_size, patch_size,
                        hidden_size, mlp_dim, num_layers, num_heads, pos_embed_type, use_flash_attention,
                    )  # fmt: skip
        self.backbone_attr = attach_backbone(self, backbone, SUPPORTED_MATCHER_BACKBONES)
        """Attribute holding the backbone module: ``"cnn"``, ``"vit"`` or ``"backbone"``."""
        n = len(backbone.out_channels)
        stages = tuple(range(n)) if stages is None else tuple(int(s) for s in ensure_tuple(stages))
        if not stages or any(not -n <= s < n for s in stages):
            raise ValueError(f"stages must index the backbone's {n} maps (-{n} to {n - 1}), got {stages}.")
        self.stages = tuple(sorted({s % n for s in stages}))
        self.requires_grad_(False)
        if pretrained_encoder:
            self.load_encoder(pretrained_encoder)
        self.train(False)

    def train(self, mode: bool = True) -> PrototypeMatcher:
        """Always eval mode: the matcher is frozen (``mode`` is ignored)."""
        return super().train(False)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Matching features of images ``[N, C, *spatial]``: the chosen stages at the finest of their grids, each
        L2-normalised, concatenated, ``[N, sum C_i, *grid]``."""
        maps = getattr(self, self.backbone_attr)(x)
        maps = [maps[s] for s in self.stages]
        grid = max((m.shape[2:] for m in maps), key=math.prod)
        return torch.cat([F.normalize(resize_to(m, grid), dim=1) for m in maps], dim=1)

    def _check(self, name: str, x: torch.Tensor, channels: int, ndim: int) -> None:
        if x.ndim != ndim or x.shape[-self.spatial_dims - 1] != channels:
            axes = ", ".join("HWD"[: self.spatial_dims])
            shot = "K, " if ndim == self.spatial_dims + 3 else ""
            raise ValueError(
                f"{name} must be [B, {shot}{channels}, {axes}] ({self.spatial_dims}D), got {tuple(x.shape)}."
            )

    def forward(self, x: torch.Tensor, support_image: torch.Tensor, support_mask: torch.Tensor) -> torch.Tensor:
        """Segment the support's class in the query.

        Args:
            x: query images ``[B, C, *spatial]``.
            support_image: ``[B or 1, K, C, *spatial_s]`` or ``[B or 1, C, *spatial_s]``; a batch of 1 is shared by
                every query.
            support_mask: ``[B or 1, K, 1, *spatial_s]`` or ``[B or 1, 1, *spatial_s]``, binary.

        Returns:
            logits ``[B, 2, *spatial]``: channel 0 the background score, channel 1 the support's class, in
            ``[-local_scale, local_scale]``.

        Raises:
            ValueError: on wrong shapes, a support batch other than 1 or B, or an empty support mask.
        """
        d = self.spatial_dims
        self._check("query image", x, self.in_channels, d + 2)
        if support_image.ndim == d + 2:
            support_image, support_mask = support_image[:, None], support_mask[:, None]
        self._check("support_image", support_image, self.in_channels, d + 3)
        self._check("support_mask", support_mask, 1, d + 3)
        if support_image.shape[:2] != support_mask.shape[:2] or support_image.shape[3:] != support_mask.shape[3:]:
            raise ValueError(
                f"support_image {tuple(support_image.shape)} and support_mask {tuple(support_mask.shape)} must have "
                "the same batch, shots and spatial size."
            )
        b, k = support_image.shape[:2]
        if b not in (1, x.shape[0]):
            raise ValueError(f"support batch {b} must be 1 or the query batch {x.shape[0]}.")
        support = self.features(support_image.flatten(0, 1)).unflatten(0, (b, k))
        mask = support_mask.to(support.dtype)
        if self.prototype_mode == "local":
            prototypes = self.alp.prototypes(support, mask)
        else:
            prototypes = global_prototypes(support, mask, self.map_resize)
        scores = prototype_scores(self.features(x), prototypes, self.local_scale)
        return resize_to(scores, x.shape[2:])

    def load_encoder(self, path_or_state: str | os.PathLike | Mapping, **kwargs) -> TransferReport:
        """Load a pretrained ViT encoder (MAE/AMLP ``encoder.pt`` or checkpoint) into the ``"vit"`` backbone; it stays
        frozen. Keyword arguments go to :func:`~maskseg_monai.networks.transfer.load_pretrained_encoder`.

        Raises:
            ValueError: when the backbone is not a :class:`ViTEncoder`, or from the loader (file, keys, shapes).
        """
        report = load_vit_encoder(getattr(self, self.backbone_attr), path_or_state, **kwargs)
        self.requires_grad_(False)
        return report
