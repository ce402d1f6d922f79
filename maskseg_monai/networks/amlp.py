"""AMLP: a masked autoencoder that masks lesion-like patches first (Masked Patch Selection)."""

from __future__ import annotations

import torch
import torch.nn as nn
from monai.utils import look_up_option

from maskseg_monai.masking.clustering import batched_kmeans, patch_pixel_features
from maskseg_monai.masking.outputs import merge_mae_output
from maskseg_monai.masking.patches import patch_mask_to_image, patchify
from maskseg_monai.networks.mae import MaskedAutoencoderViT
from maskseg_monai.utils import as_bool

__all__ = ["AMLPMaskedAutoencoder", "SUPPORTED_MPS_FEATURES"]

SUPPORTED_MPS_FEATURES = ("tokens", "pixels")
SUPPORTED_LESION_RULES = ("head", "smallest")


class AMLPMaskedAutoencoder(MaskedAutoencoderViT):
    """Masked autoencoder with AMLP's Masked Patch Selection and a Category Consistency head.

    Wang et al., "AMLP: Adaptive Masking Lesion Patches for Self-supervised Medical Image Segmentation"
    (arXiv:2309.04312). The paper's code is not public; the details below are our design
    (``shared/methods/amlp.md``):

    - **MPS**: the patches of each image are clustered by batched k-means (features: the detached patch
      projection ``"tokens"``, or per-patch mean/std/gradient energy ``"pixels"``). The *lesion* cluster is
      the one whose patches have the highest mean lesion probability from the CCL head; during the first
      ``mps_warmup`` training steps, before that head has learnt anything, it is the smallest cluster.
      Lesion patches are masked first (in random order), then background patches at random, up to the
      current ``mask_ratio``. A fraction ``1 - mps_prob`` of the images uses plain random masking.
    - **CCL head**: a small MLP on the detached patch projection that predicts each patch's lesion logit;
      :class:`~maskseg_monai.losses.AMLPLoss` trains it to predict reconstruction difficulty.

    The output is image-shaped, ``[B, C + 3, *img_size]``: reconstruction (``C``), pixel mask (1 = masked),
    lesion logit map and MPS category map (1 = lesion category), each patch's value repeated over its pixels.
    With ``use_mps=False`` masking is uniformly random, as in MAE. All of it runs on the device without
    host synchronisation.

    Args:
        in_channels, img_size, patch_size, ...: as :class:`MaskedAutoencoderViT` (passed as keywords).
        use_mps: mask lesion-category patches first. Defaults to True.
        mps_features: ``"tokens"`` or ``"pixels"``. Defaults to ``"tokens"``.
        mps_clusters: k-means clusters ``K`` (>= 2). Defaults to 2.
        mps_iters: k-means iterations. Defaults to 10.
        mps_warmup: training steps during which the smallest cluster is the lesion category. Defaults to 100.
        mps_prob: fraction of images masked by MPS (the rest at random). Defaults to 1.
        ccl_hidden: hidden width of the CCL head; 0 for a linear head. Defaults to 64.
        mps_lesion_rule: ``"head"`` (the cluster the CCL head scores highest, after ``mps_warmup``) or
            ``"smallest"`` (always the smallest cluster; use it when CCL is off and the head never trains).

    Example::

        >>> net = AMLPMaskedAutoencoder(in_channels=1, img_size=32, patch_size=8, hidden_size=48, mlp_dim=96,
        ...     num_layers=1, num_heads=4, decoder_hidden_size=32, decoder_mlp_dim=64, decoder_num_layers=1,
        ...     decoder_num_heads=4, spatial_dims=2)
        >>> net(torch.rand(2, 1, 32, 32)).shape
        torch.Size([2, 4, 32, 32])
    """

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
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.mps_features = look_up_option(mps_features, SUPPORTED_MPS_FEATURES)
        self.mps_lesion_rule = look_up_option(mps_lesion_rule, SUPPORTED_LESION_RULES)
        if mps_clusters < 2 or mps_clusters > self.num_patches:
            raise ValueError(
                f"mps_clusters must be in [2, {self.num_patches}] (patches per image), got {mps_clusters}."
            )
        if not 0.0 <= mps_prob <= 1.0:
            raise ValueError(f"mps_prob must be in [0, 1], got {mps_prob}.")
        if mps_iters < 0 or mps_warmup < 0 or ccl_hidden < 0:
            raise ValueError(
                f"mps_iters, mps_warmup and ccl_hidden must be >= 0, got {mps_iters}, {mps_warmup}, {ccl_hidden}."
            )
        self.use_mps = as_bool(use_mps, "use_mps")
        self.mps_clusters = mps_clusters
        self.mps_iters = mps_iters
        self.mps_warmup = mps_warmup
        self.mps_prob = mps_prob
        hidden = self.encoder.hidden_size
        self.ccl_head = (
            nn.Linear(hidden, 1)
            if ccl_hidden == 0
            else nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, ccl_hidden), nn.GELU(), nn.Linear(ccl_hidden, 1))
        )
        self.register_buffer("mps_step", torch.zeros((), dtype=torch.long))

    def patch_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Detached patch projection (without position embedding), ``[B, L, hidden_size]``."""
        with torch.no_grad():
            return self.encoder.patch_embedding.patch_embeddings(x).flatten(2).transpose(1, 2).float()

    @torch.no_grad()
    def select_patches(
        self, x: torch.Tensor, tokens: torch.Tensor, lesion_logits: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Masked Patch Selection.

        Args:
            x: images ``[B, C, *img_size]``.
            tokens: patch projections ``[B, L, D]``.
            lesion_logits: CCL head outputs ``[B, L]``.

        Returns:
            masking scores ``[B, L]`` (lesion patches score above 1, others below 1; highest masked first)
            and the lesion category ``[B, L]`` (1 = lesion cluster).
        """
        if self.mps_features == "tokens":
            feats = tokens
        else:
            feats = patch_pixel_features(patchify(x, self.patch_size), self.patch_size, self.encoder.in_channels)
        assign, _ = batched_kmeans(feats, self.mps_clusters, self.mps_iters)
        one_hot = nn.functional.one_hot(assign, self.mps_clusters).float()  # [B, L, K]
        counts = one_hot.sum(1)  # [B, K]
        mean_prob = (one_hot * lesion_logits.float().sigmoid()[..., None]).sum(1) / counts.clamp_min(1)
        by_head = torch.where(counts > 0, mean_prob, torch.full_like(mean_prob, -1.0)).argmax(1)
        smallest = torch.where(counts > 0, counts, torch.full_like(counts, float("inf"))).argmin(1)
        use_head = (
            self.mps_step >= self.mps_warmup
            if self.mps_lesion_rule == "head"
            else torch.zeros_like(self.mps_step, dtype=torch.bool)
        )
        lesion = torch.where(use_head, by_head, smallest)
        category = (assign == lesion[:, None]).float()
        use = (torch.rand(x.shape[0], 1, device=x.device) < self.mps_prob).float()
        scores = category * use + torch.rand_like(category)
        return scores, category

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None = None, scores: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Mask (by MPS unless ``mask``/``scores`` are given or ``use_mps`` is off), encode, reconstruct.

        Args:
            x: images ``[B, C, *img_size]``.
            mask: optional ``[B, L]`` patch mask (1 = masked), bypassing MPS.
            scores: optional ``[B, L]`` masking priority, bypassing MPS.

        Returns:
            ``[B, C + 3, *img_size]``: reconstruction, pixel mask, lesion logit map, MPS category map.
        """
        self.encoder.check_input(x)
        tokens = self.patch_tokens(x)
        lesion_logits = self.ccl_head(tokens).squeeze(-1)  # trained by CCL only: tokens are detached
        if self.use_mps and mask is None and scores is None:
            scores, category = self.select_patches(x, tokens, lesion_logits)
        else:
            category = torch.zeros_like(lesion_logits)
        if self.training:
            self.mps_step += 1
        pred, patch_mask = self.forward_patches(x, mask=mask, scores=scores)
        out = merge_mae_output(pred, patch_mask, self.patch_size, self.img_size, self.encoder.in_channels)
        extra = torch.stack([lesion_logits.to(out.dtype), category.to(out.dtype)], 1)  # [B, 2, L]
        maps = [patch_mask_to_image(extra[:, i], self.patch_size, self.img_size) for i in range(2)]
        return torch.cat([out, *maps], dim=1)
