"""AMLP objective: Attention Reconstruction Loss (ARL) and Category Consistency Loss (CCL) over the MAE loss."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from maskseg_monai.losses.reconstruction import MaskedReconstructionLoss, _masked_mean
from maskseg_monai.masking.outputs import AMLP_EXTRAS, split_mae_output
from maskseg_monai.masking.patches import patchify

__all__ = ["arl_weights", "AMLPLoss"]


def arl_weights(errors: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0, eps: float = 1e-8) -> torch.Tensor:
    """Attention (relative) Reconstruction Loss weights: hard patches count more.

    ``w_i = (e_i / mean_masked(e)) ** gamma``, renormalised to mean 1 over each image's masked patches,
    0 on visible patches, computed without gradient (our design, ``shared/methods/amlp.md``).

    Args:
        errors: per-patch reconstruction errors ``[B, L]``.
        mask: patch mask ``[B, L]`` (1 = masked).
        gamma: focus; 0 gives uniform weights (the plain MAE loss).
        eps: guards the divisions.

    Returns:
        detached weights ``[B, L]``.
    """
    with torch.no_grad():
        e, m = errors.detach().float(), mask.float()
        w = (e / (_masked_mean(e, m) + eps)).clamp_min(0).pow(gamma) * m
        return w / (_masked_mean(w, m) + eps) * m


class AMLPLoss(MaskedReconstructionLoss):
    """AMLP objective: reconstruction with Attention Reconstruction Loss plus Category Consistency Loss.

    ``loss = (1 - arl_weight) * plain + arl_weight * ARL + ccl_weight * CCL`` where ``plain`` is the
    :class:`MaskedReconstructionLoss`, ``ARL = mean over masked patches of w_i * e_i`` with
    :func:`arl_weights`, and ``CCL`` the binary cross-entropy between the network's lesion logits and the
    detached difficulty label ``t_i = 1`` when ``e_i`` is above the image's masked-patch mean (``"mean"``)
    or among its top ``ccl_top_q`` fraction (``"top_q"``), over masked patches. CCL never back-propagates
    into the reconstruction errors. With ``arl_weight=0`` and ``ccl_weight=0`` this is the MAE loss.

    The input is the output of :class:`~maskseg_monai.networks.AMLPMaskedAutoencoder`, ``[B, C + 3, *spatial]``
    (its extra maps are :data:`~maskseg_monai.masking.AMLP_EXTRAS`, read by name); the target is the image
    ``[B, C, *spatial]``. The last call's terms are kept in ``self.terms`` (detached) for logging.

    Args:
        patch_size: the network's patch size.
        arl_gamma: ARL focus (0 = uniform). Defaults to 1.
        arl_weight: mix of ARL into the reconstruction term, in [0, 1]. Defaults to 1.
        ccl_weight: weight of CCL (>= 0). Defaults to 0.1.
        ccl_target: ``"mean"`` or ``"top_q"``. Defaults to ``"mean"``.
        ccl_top_q: fraction of masked patches labelled hard with ``"top_q"``. Defaults to 0.25.
        region: ``"masked"`` or ``"all"`` for the plain term. Defaults to ``"masked"``.
        norm_pix_loss: per-patch normalised targets. Defaults to False.

    Raises:
        ValueError: on out-of-range weights or an unknown ``ccl_target``.
    """

    def __init__(
        self,
        patch_size: Sequence[int] | int,
        arl_gamma: float = 1.0,
        arl_weight: float = 1.0,
        ccl_weight: float = 0.1,
        ccl_target: str = "mean",
        ccl_top_q: float = 0.25,
        region: str = "masked",
        norm_pix_loss: bool = False,
    ) -> None:
        super().__init__(patch_size, region=region, norm_pix_loss=norm_pix_loss)
        if not 0.0 <= arl_weight <= 1.0:
            raise ValueError(f"arl_weight must be in [0, 1], got {arl_weight}.")
        if arl_gamma < 0 or ccl_weight < 0:
            raise ValueError(f"arl_gamma and ccl_weight must be >= 0, got {arl_gamma} and {ccl_weight}.")
        if ccl_target not in ("mean", "top_q"):
            raise ValueError(f"Unsupported ccl_target: {ccl_target}, available options are ['mean', 'top_q'].")
        if not 0.0 < ccl_top_q < 1.0:
            raise ValueError(f"ccl_top_q must be in (0, 1), got {ccl_top_q}.")
        self.arl_gamma, self.arl_weight, self.ccl_weight = arl_gamma, arl_weight, ccl_weight
        self.ccl_target, self.ccl_top_q = ccl_target, ccl_top_q
        self.terms: dict[str, torch.Tensor] = {}

    def difficulty_labels(self, errors: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Detached CCL targets ``[B, L]``: 1 for hard masked patches (see the class docstring)."""
        e, m = errors.detach().float(), mask.float()
        if self.ccl_target == "mean":
            return (e > _masked_mean(e, m)).float() * m
        ranked = torch.where(m > 0, e, torch.full_like(e, -float("inf")))
        k = (m.sum(1, keepdim=True) * self.ccl_top_q).ceil().clamp_min(1)
        rank = ranked.argsort(1, descending=True).argsort(1)  # 0 = hardest
        return (rank < k).float() * m

    def category_consistency(
        self, lesion_logits: torch.Tensor, errors: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """CCL: BCE between lesion logits ``[B, L]`` and difficulty labels, averaged over masked patches."""
        target = self.difficulty_labels(errors, mask)
        bce = nn.functional.binary_cross_entropy_with_logits(lesion_logits.float(), target, reduction="none")
        m = mask.float()
        return (bce * m).sum() / m.sum().clamp_min(1.0)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """
        Args:
            input: network output ``[B, C + 3, *spatial]``.
            target: images ``[B, C, *spatial]``.

        Returns:
            scalar loss (float32).
        """
        c = target.shape[1]
        if input.shape[1] < c + 1 + len(AMLP_EXTRAS):
            raise ValueError(
                f"AMLPLoss needs AMLP's output [B, {c} + 1 + {len(AMLP_EXTRAS)}, *spatial] with the lesion logit map "
                f"({', '.join(AMLP_EXTRAS)} after the mask), got {input.shape[1]} channels."
            )
        errors, mask = self.per_patch(input, target)
        plain = errors.mean() if self.region == "all" else (errors * mask).sum() / mask.sum().clamp_min(1.0)
        arl = _masked_mean(arl_weights(errors, mask, self.arl_gamma) * errors, mask).mean()
        lesion_map = split_mae_output(input, c, AMLP_EXTRAS).extras["lesion_logits"]
        lesion_logits = patchify(lesion_map, self.patch_size).mean(-1)
        ccl = self.category_consistency(lesion_logits, errors, mask)
        loss = (1 - self.arl_weight) * plain + self.arl_weight * arl + self.ccl_weight * ccl
        self.terms = {"plain": plain.detach(), "arl": arl.detach(), "ccl": ccl.detach()}
        return loss
