"""AMLP: a masked autoencoder with Masked Patch Selection (:class:`~maskseg_monai.masking.MPSMasking`) and a
Category Consistency head."""

from __future__ import annotations

import torch
import torch.nn as nn

from maskseg_monai.masking.outputs import AMLP_EXTRAS, merge_mae_output
from maskseg_monai.masking.policies import SUPPORTED_LESION_RULES, SUPPORTED_MPS_FEATURES, MaskingPolicy, MPSMasking
from maskseg_monai.networks.mae import MaskedAutoencoderViT
from maskseg_monai.utils import as_bool

__all__ = ["AMLPMaskedAutoencoder", "SUPPORTED_MPS_FEATURES", "SUPPORTED_LESION_RULES"]


class AMLPMaskedAutoencoder(MaskedAutoencoderViT):
    """:class:`MaskedAutoencoderViT` with AMLP's masking policy and a Category Consistency head.

    Wang et al., "AMLP: Adaptive Masking Lesion Patches for Self-supervised Medical Image Segmentation"
    (arXiv:2309.04312). The paper's code is not public; the details are our design (``shared/methods/amlp.md``).
    This class only composes:

    - **MPS**: the masking policy is :class:`~maskseg_monai.masking.MPSMasking`, built from the ``mps_*``
      arguments (``use_mps=False``: :class:`~maskseg_monai.masking.RandomMasking`, as in MAE). It reads the
      CCL head's lesion logits and the training-step counter ``mps_step`` (a buffer of this network, saved in
      checkpoints) through ``aux``.
    - **CCL head**: a small MLP on the detached patch projection that predicts each patch's lesion logit;
      :class:`~maskseg_monai.losses.AMLPLoss` trains it to predict reconstruction difficulty.

    The output is image-shaped, ``[B, C + 3, *img_size]``: reconstruction (``C``), pixel mask (1 = masked),
    then the maps named in :data:`~maskseg_monai.masking.AMLP_EXTRAS`: lesion logit and MPS category (1 = lesion
    category; 0 without MPS), each patch's value repeated over its pixels. Address them by name with
    :func:`~maskseg_monai.masking.split_mae_output` or :func:`~maskseg_monai.masking.extra_channel`.

    Args:
        in_channels, img_size, patch_size, ...: as :class:`MaskedAutoencoderViT` (passed as keywords).
        use_mps: mask lesion-category patches first. Defaults to True.
        mps_features: :class:`~maskseg_monai.masking.MPSMasking` ``features``, ``"tokens"`` or ``"pixels"``.
            Defaults to ``"tokens"``.
        mps_clusters: k-means clusters ``K`` (>= 2). Defaults to 2.
        mps_iters: k-means iterations. Defaults to 10.
        mps_warmup: training steps during which the smallest cluster is the lesion category. Defaults to 100.
        mps_prob: fraction of images masked by MPS (the rest at random). Defaults to 1.
        ccl_hidden: hidden width of the CCL head; 0 for a linear head. Defaults to 64.
        mps_lesion_rule: ``"head"`` (the cluster the CCL head scores highest, after ``mps_warmup``) or
            ``"smallest"`` (always the smallest cluster; use it when CCL is off and the head never trains).
        mps_start: training steps of plain random masking before MPS begins (*ours*). Defaults to 0.
        masking: optional policy (or name) that replaces the one built from ``use_mps`` and ``mps_*``; it may
            read ``aux["lesion_logits"]`` and ``aux["step"]``.

    Raises:
        ValueError: on an invalid ``mps_*`` value (checked even with ``use_mps=False``) or ``ccl_hidden < 0``.

    Example::

        >>> net = AMLPMaskedAutoencoder(in_channels=1, img_size=32, patch_size=8, hidden_size=48, mlp_dim=96,
        ...     num_layers=1, num_heads=4, decoder_hidden_size=32, decoder_mlp_dim=64, decoder_num_layers=1,
        ...     decoder_num_heads=4, spatial_dims=2)
        >>> net(torch.rand(2, 1, 32, 32)).shape
        torch.Size([2, 4, 32, 32])
    """

    output_extras = AMLP_EXTRAS
    masking_aux = ("lesion_logits", "step")

    def __init__(
        self,
        *args,
        use_mps: bool = True,
        mps_features: str = "tokens",
        mps_clusters: int = 2,
        mps_iters: int = 10,
        mps_warmup: int = 100,
        mps_prob: float = 1.0,
        ccl_hidden: int = 64,
        mps_lesion_rule: str = "head",
        mps_start: int = 0,
        masking: str | MaskingPolicy | None = None,
        **kwargs,
    ) -> None:
        if ccl_hidden < 0:
            raise ValueError(f"ccl_hidden must be >= 0, got {ccl_hidden}.")
        use_mps = as_bool(use_mps, "use_mps")
        super().__init__(*args, masking="random" if masking is None else masking, **kwargs)
        mps = MPSMasking(
            mps_features, mps_clusters, mps_iters, mps_warmup, mps_prob, mps_lesion_rule, self.patch_size, mps_start
        )
        self._check_masking(mps)  # checked even when unused, so a wrong bundle value fails early
        if masking is None and use_mps:
            self.masking = mps
        hidden = self.encoder.hidden_size
        self.ccl_head = (
            nn.Linear(hidden, 1)
            if ccl_hidden == 0
            else nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, ccl_hidden), nn.GELU(), nn.Linear(ccl_hidden, 1))
        )
        self.register_buffer("mps_step", torch.zeros((), dtype=torch.long))

    @property
    def use_mps(self) -> bool:
        """Whether the masking policy is Masked Patch Selection."""
        return isinstance(self.masking, MPSMasking)

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None = None, scores: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Mask (by the policy unless ``mask``/``scores`` are given), encode, reconstruct; count training steps.

        Args:
            x: images ``[B, C, *img_size]``.
            mask: optional ``[B, L]`` patch mask (1 = masked), bypassing the policy.
            scores: optional ``[B, L]`` masking priority, bypassing the policy.

        Returns:
            ``[B, C + 3, *img_size]``: reconstruction, pixel mask, then the :data:`AMLP_EXTRAS` maps.
        """
        self.encoder.check_input(x)
        tokens = self.patch_tokens(x)
        lesion_logits = self.ccl_head(tokens).squeeze(-1)  # trained by CCL only: tokens are detached
        aux = {"lesion_logits": lesion_logits, "step": self.mps_step}
        patch_mask, maps = self.select_mask(x, mask, scores, tokens=tokens, aux=aux)
        if self.training:
            self.mps_step += 1
        pred = self.forward_masked(x, patch_mask)
        category = maps.get("category", torch.zeros_like(lesion_logits))
        extras = {"lesion_logits": lesion_logits, "category": category}
        return merge_mae_output(pred, patch_mask.mask, self.patch_size, self.img_size, self.encoder.in_channels, extras)
