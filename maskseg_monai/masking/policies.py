"""Masking policies: which patches a masked autoencoder hides from its encoder.

A policy scores the patches of each image; the network then masks the
:func:`~maskseg_monai.masking.num_masked_patches` highest-scoring patches of every sample at its current
``mask_ratio`` (:func:`~maskseg_monai.masking.mask_from_scores`), so every policy serves any ratio and the
AMR schedule. Policies are plain modules: :class:`~maskseg_monai.networks.MaskedAutoencoderViT` takes one as
``masking=`` (an object, or a name from :data:`SUPPORTED_MASKING`), and a bundle can name a new one by import
path, ``"masking": {"_target_": "maskseg_monai.masking.MPSMasking", "features": "pixels", ...}``, with no
network subclass.

A policy receives (shapes as in :mod:`maskseg_monai.masking.outputs`):

- ``images`` ``[B, C, *spatial]``;
- ``tokens`` ``[B, L, D]``: the detached patch projection of the encoder (without position embedding) when
  the policy sets ``requires_tokens``; otherwise a ``[B, L, 0]`` placeholder that only carries ``B`` and ``L``;
- ``aux``: named auxiliary inputs from the network, those listed in ``required_aux`` (AMLP gives
  ``"lesion_logits"`` ``[B, L]`` from its CCL head and ``"step"``, the training steps done so far).

It returns :class:`MaskingScores` (or just the scores ``[B, L]``), computed without gradient.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import torch
import torch.nn as nn
from monai.utils import ensure_tuple_rep, look_up_option

from maskseg_monai.masking.clustering import batched_kmeans, patch_pixel_features
from maskseg_monai.masking.patches import patchify

__all__ = [
    "MaskingScores",
    "MaskingPolicy",
    "RandomMasking",
    "MPSMasking",
    "get_masking_policy",
    "SUPPORTED_MASKING",
    "SUPPORTED_MPS_FEATURES",
    "SUPPORTED_LESION_RULES",
]

SUPPORTED_MASKING = ("random", "mps")
SUPPORTED_MPS_FEATURES = ("tokens", "pixels")
SUPPORTED_LESION_RULES = ("head", "smallest")


class MaskingScores(NamedTuple):
    """What a masking policy decided.

    Attributes:
        scores: ``[B, L]`` masking priority; the highest-scoring patches are masked first.
        maps: named per-patch maps ``[B, L]`` the policy exposes (:class:`MPSMasking`: ``"category"``,
            1 = lesion cluster); empty for :class:`RandomMasking`.
    """

    scores: torch.Tensor
    maps: dict[str, torch.Tensor]


class MaskingPolicy(nn.Module):
    """Base class of masking policies: ``forward(images, tokens, aux) -> MaskingScores``.

    A subclass implements :meth:`forward` and, where it needs them, sets ``requires_tokens`` (to receive the
    patch projection rather than a placeholder) and ``required_aux`` (the ``aux`` keys it reads; the network
    refuses a policy whose keys it does not provide). A ``patch_size`` attribute, when set, is checked against
    the network's in :meth:`check_grid`.
    """

    #: the policy reads the patch projection ``tokens`` ``[B, L, D]``.
    requires_tokens: bool = False
    #: the ``aux`` keys the policy reads.
    required_aux: tuple[str, ...] = ()
    #: the patch size the policy was built for, if it patchifies images itself.
    patch_size: Sequence[int] | int | None = None

    def check_grid(self, grid_size: Sequence[int], patch_size: Sequence[int]) -> None:
        """Check the policy against the network's patch grid; called once when the network is built.

        Args:
            grid_size: patches per spatial axis; ``L = prod(grid_size)``.
            patch_size: the network's patch size per spatial axis.

        Raises:
            ValueError: when the policy's ``patch_size`` differs from the network's.
        """
        if self.patch_size is not None and ensure_tuple_rep(self.patch_size, len(patch_size)) != tuple(patch_size):
            raise ValueError(
                f"{type(self).__name__} was built for patch_size {self.patch_size}, "
                f"the network uses {tuple(patch_size)}."
            )

    def forward(
        self, images: torch.Tensor, tokens: torch.Tensor, aux: Mapping[str, torch.Tensor] | None = None
    ) -> MaskingScores | torch.Tensor:
        """Score the patches of each image.

        Args:
            images: ``[B, C, *spatial]``.
            tokens: ``[B, L, D]`` patch projections, or a ``[B, L, 0]`` placeholder (see the module docstring).
            aux: named auxiliary inputs, at least those in ``required_aux``.

        Returns:
            :class:`MaskingScores`, or the scores ``[B, L]`` alone (highest masked first).
        """
        raise NotImplementedError(f"{type(self).__name__} must implement forward(images, tokens, aux).")


class RandomMasking(MaskingPolicy):
    """MAE's uniform random masking (He et al., CVPR 2022): scores ``~ U(0, 1)`` drawn on the input's device.

    It draws ``torch.rand(B, L)`` once per call, exactly as
    :func:`~maskseg_monai.masking.generate_patch_mask` does without scores, so seeded runs are unchanged.

    Example:
        >>> RandomMasking()(torch.rand(2, 1, 8, 8), torch.zeros(2, 4, 0)).scores.shape
        torch.Size([2, 4])
    """

    def forward(
        self, images: torch.Tensor, tokens: torch.Tensor, aux: Mapping[str, torch.Tensor] | None = None
    ) -> MaskingScores:
        """Uniform scores ``[B, L]``; ``images`` gives the device, ``tokens`` the shape."""
        b, n = tokens.shape[:2]
        return MaskingScores(torch.rand(b, n, device=images.device), {})


class MPSMasking(MaskingPolicy):
    """AMLP's Masked Patch Selection: mask the patches of the *lesion* cluster first.

    Wang et al., "AMLP: Adaptive Masking Lesion Patches for Self-supervised Medical Image Segmentation"
    (arXiv:2309.04312). The paper's code is not public; the details are our design (``shared/methods/amlp.md``).
    The patches of each image are clustered by :func:`~maskseg_monai.masking.batched_kmeans` on ``features``:
    the detached patch projection (``"tokens"``) or per-patch mean/std/gradient energy (``"pixels"``). The
    lesion cluster is the one whose patches have the highest mean lesion probability
    ``sigmoid(aux["lesion_logits"])`` once ``aux["step"] >= warmup`` (rule ``"head"``), and the smallest
    cluster before that or always (rule ``"smallest"``, for when no head is trained). Lesion patches score
    in ``[1, 2)``, the rest in ``[0, 1)``, so they are masked first, each group in random order. A fraction
    ``1 - prob`` of the images scores every patch in ``[0, 1)``: plain random masking. Runs on the device with
    no host synchronisation and no loop over images or patches.

    Args:
        features: ``"tokens"`` or ``"pixels"``. Defaults to ``"tokens"``.
        clusters: k-means clusters ``K``, at least 2 and at most ``L``. Defaults to 2.
        iters: k-means iterations (>= 0). Defaults to 10.
        warmup: training steps during which the smallest cluster is the lesion cluster (>= 0). Defaults to 100.
        prob: fraction of images masked by MPS, in [0, 1]. Defaults to 1.
        lesion_rule: ``"head"`` or ``"smallest"``. Defaults to ``"head"``; it needs ``aux`` keys
            ``"lesion_logits"`` ``[B, L]`` and ``"step"`` (a scalar), which
            :class:`~maskseg_monai.networks.AMLPMaskedAutoencoder` gives.
        patch_size: the network's patch size; needed with ``features="pixels"``.
        start: training steps of plain random masking before MPS begins (*ours*, default 0): a model that has
            first learned to reconstruct randomly masked images keeps that skill once lesion patches are masked
            first. It needs ``aux["step"]``, which :class:`~maskseg_monai.networks.AMLPMaskedAutoencoder` gives.

    Raises:
        ValueError: on an unknown ``features`` or ``lesion_rule``, an out-of-range value, or ``"pixels"``
            without ``patch_size``.

    Example:
        >>> x = torch.zeros(1, 1, 8, 8); x[..., :4, :4] = 1  # one bright patch of four
        >>> s = MPSMasking("pixels", lesion_rule="smallest", patch_size=4)(x, torch.zeros(1, 4, 0))
        >>> s.maps["category"].tolist(), bool(s.scores[0, 0] > s.scores[0, 1:].max())
        ([[1.0, 0.0, 0.0, 0.0]], True)
    """

    def __init__(
        self,
        features: str = "tokens",
        clusters: int = 2,
        iters: int = 10,
        warmup: int = 100,
        prob: float = 1.0,
        lesion_rule: str = "head",
        patch_size: Sequence[int] | int | None = None,
        start: int = 0,
    ) -> None:
        super().__init__()
        self.features = look_up_option(features, SUPPORTED_MPS_FEATURES)
        self.lesion_rule = look_up_option(lesion_rule, SUPPORTED_LESION_RULES)
        if clusters < 2:
            raise ValueError(f"MPSMasking: clusters must be >= 2, got {clusters}.")
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f"MPSMasking: prob must be in [0, 1], got {prob}.")
        if iters < 0 or warmup < 0 or start < 0:
            raise ValueError(f"MPSMasking: iters, warmup and start must be >= 0, got {iters}, {warmup} and {start}.")
        if self.features == "pixels" and patch_size is None:
            raise ValueError("MPSMasking: features='pixels' needs the network's patch_size.")
        self.clusters, self.iters, self.warmup, self.prob = clusters, iters, warmup, prob
        self.patch_size = patch_size
        self.start = int(start)

    @property
    def requires_tokens(self) -> bool:  # type: ignore[override]
        """Whether k-means runs on the patch projection."""
        return self.features == "tokens"

    @property
    def required_aux(self) -> tuple[str, ...]:  # type: ignore[override]
        """``("lesion_logits", "step")`` with the ``"head"`` rule, ``("step",)`` with a ``start``, else nothing."""
        if self.lesion_rule == "head":
            return ("lesion_logits", "step")
        return ("step",) if self.start > 0 else ()

    def check_grid(self, grid_size: Sequence[int], patch_size: Sequence[int]) -> None:
        """Also check that ``clusters`` is at most the number of patches ``L``."""
        super().check_grid(grid_size, patch_size)
        n = 1
        for g in grid_size:
            n *= int(g)
        if self.clusters > n:
            raise ValueError(f"MPSMasking: clusters must be in [2, {n}] (patches per image), got {self.clusters}.")

    @torch.no_grad()
    def forward(
        self, images: torch.Tensor, tokens: torch.Tensor, aux: Mapping[str, torch.Tensor] | None = None
    ) -> MaskingScores:
        """Masked Patch Selection.

        Args:
            images: ``[B, C, *spatial]``.
            tokens: ``[B, L, D]`` patch projections (a ``[B, L, 0]`` placeholder with ``features="pixels"``).
            aux: ``"lesion_logits"`` ``[B, L]`` and ``"step"`` (scalar) with the ``"head"`` rule.

        Returns:
            :class:`MaskingScores`: ``scores`` ``[B, L]`` (lesion patches in ``[1, 2)``, others in ``[0, 1)``)
            and ``maps["category"]`` ``[B, L]`` (1 = lesion cluster).

        Raises:
            ValueError: when ``aux`` lacks a required key.
        """
        aux = {} if aux is None else aux
        missing = [k for k in self.required_aux if k not in aux]
        if missing:
            raise ValueError(
                f"MPSMasking(lesion_rule={self.lesion_rule!r}, start={self.start}) needs aux {missing}; "
                f"got keys {sorted(aux)}."
            )
        if self.features == "tokens":
            feats = tokens
        else:
            patch = ensure_tuple_rep(self.patch_size, images.ndim - 2)
            feats = patch_pixel_features(patchify(images, patch), patch, images.shape[1])
        assign, _ = batched_kmeans(feats, self.clusters, self.iters)
        one_hot = nn.functional.one_hot(assign, self.clusters).float()  # [B, L, K]
        counts = one_hot.sum(1)  # [B, K]
        lesion = torch.where(counts > 0, counts, torch.full_like(counts, float("inf"))).argmin(1)  # smallest
        if self.lesion_rule == "head":
            prob = aux["lesion_logits"].float().sigmoid()
            mean_prob = (one_hot * prob[..., None]).sum(1) / counts.clamp_min(1)
            by_head = torch.where(counts > 0, mean_prob, torch.full_like(mean_prob, -1.0)).argmax(1)
            after_warmup = torch.as_tensor(aux["step"], device=assign.device) >= self.warmup
            lesion = torch.where(after_warmup, by_head, lesion)
        category = (assign == lesion[:, None]).float()
        use = (torch.rand(images.shape[0], 1, device=images.device) < self.prob).float()
        if self.start > 0:
            use = use * (torch.as_tensor(aux["step"], device=images.device) >= self.start).float()
        return MaskingScores(category * use + torch.rand_like(category), {"category": category})


def get_masking_policy(masking: str | MaskingPolicy = "random", **kwargs) -> MaskingPolicy:
    """A masking policy from a name in :data:`SUPPORTED_MASKING` (built with ``kwargs``) or a ready object.

    Args:
        masking: ``"random"`` (:class:`RandomMasking`), ``"mps"`` (:class:`MPSMasking`) or a
            :class:`MaskingPolicy` instance, returned as is.
        kwargs: constructor arguments of the named policy.

    Raises:
        ValueError: on an unknown name (the message lists the valid ones), or ``kwargs`` with an object.
        TypeError: when ``masking`` is neither a name nor a :class:`MaskingPolicy`.

    Example:
        >>> type(get_masking_policy("random")).__name__
        'RandomMasking'
    """
    if isinstance(masking, MaskingPolicy):
        if kwargs:
            raise ValueError(f"keyword arguments {sorted(kwargs)} only apply to a policy given by name.")
        return masking
    if not isinstance(masking, str):
        raise TypeError(
            f"masking must be one of {list(SUPPORTED_MASKING)} or a MaskingPolicy, got {type(masking).__name__}."
        )
    name = look_up_option(masking, SUPPORTED_MASKING)
    return RandomMasking(**kwargs) if name == "random" else MPSMasking(**kwargs)
