"""Masked autoencoder with a ViT encoder, any patch size, 2D/3D, a pluggable masking policy or caller-chosen masks."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import torch
import torch.nn as nn
from monai.networks.blocks.pos_embed_utils import build_sincos_position_embedding

from maskseg_monai.masking.masks import PatchMask, generate_patch_mask, mask_from_scores
from maskseg_monai.masking.outputs import merge_mae_output
from maskseg_monai.masking.patches import unpatchify
from maskseg_monai.masking.policies import MaskingPolicy, get_masking_policy
from maskseg_monai.networks.blocks.vit_encoder import ViTEncoder, check_embed_dim, transformer_blocks
from maskseg_monai.utils import as_bool, atomic_torch_save

__all__ = ["MaskedAutoencoderViT", "export_encoder"]


class MaskedAutoencoderViT(nn.Module):
    """Masked autoencoder (He et al., "Masked Autoencoders Are Scalable Vision Learners", CVPR 2022)
    for small objects: the patch size and mask ratio are free, the masking policy is pluggable, masks may come
    from the caller.

    Unlike :class:`monai.networks.nets.MaskedAutoEncoderViT`, the masking runs on the input's device (with no
    host sync when the policy chooses; a caller's ``mask`` is checked on the host), a
    :class:`~maskseg_monai.masking.MaskingPolicy` scores the patches (``masking="random"`` is MAE's uniform
    masking; see :mod:`maskseg_monai.masking.policies`), the caller may instead pass masking ``scores``
    (highest masked first) or a ready mask, the forward pass works under ``torch.autocast(dtype=torch.bfloat16)``,
    and the encoder (:class:`ViTEncoder`, key layout of MONAI's ``ViT``) exports to UNETR.

    Args:
        in_channels: number of image channels.
        img_size: spatial size of the input, an int or one entry per axis.
        patch_size: patch size, an int or one entry per axis; must divide ``img_size``.
        hidden_size: encoder width. Defaults to 768.
        mlp_dim: encoder MLP width; keep UNETR's 3072 for ViT-B transfer. Defaults to 3072.
        num_layers: encoder blocks. Defaults to 12.
        num_heads: encoder heads. Defaults to 12.
        decoder_hidden_size: decoder width. Defaults to 512 (use a multiple of 6 in 3D, e.g. 384).
        decoder_mlp_dim: decoder MLP width. Defaults to 2048.
        decoder_num_layers: decoder blocks. Defaults to 8.
        decoder_num_heads: decoder heads. Defaults to 16.
        mask_ratio: fraction of patches masked when no mask is given, in (0, 1). Defaults to 0.75.
        spatial_dims: 2 or 3. Defaults to 3.
        qkv_bias: bias on the qkv projections. Defaults to True.
        use_flash_attention: fused scaled-dot-product attention. Defaults to True.
        masking: the masking policy: a name in :data:`~maskseg_monai.masking.SUPPORTED_MASKING` or a
            :class:`~maskseg_monai.masking.MaskingPolicy` (in a config, ``{"_target_": ...}``). Defaults to
            ``"random"``.

    Raises:
        ValueError: on an unknown ``masking`` name, or a policy that needs ``aux`` inputs this network does
            not give (``masking_aux``) or was built for another patch size.

    Example::

        >>> net = MaskedAutoencoderViT(1, 32, 8, hidden_size=48, mlp_dim=96, num_layers=2, num_heads=4,
        ...     decoder_hidden_size=32, decoder_mlp_dim=64, decoder_num_layers=1, decoder_num_heads=4,
        ...     mask_ratio=0.5, spatial_dims=2)
        >>> net(torch.rand(2, 1, 32, 32)).shape  # reconstruction + mask channel
        torch.Size([2, 2, 32, 32])
        >>> pred, mask = net.forward_patches(torch.rand(2, 1, 32, 32))
        >>> pred.shape, mask.shape
        (torch.Size([2, 16, 64]), torch.Size([2, 16]))
    """

    #: names of the extra output maps after the pixel mask, in channel order (see ``masking/outputs.py``).
    output_extras: tuple[str, ...] = ()
    #: the ``aux`` inputs this network gives its masking policy.
    masking_aux: tuple[str, ...] = ()

    def __init__(
        self,
        in_channels: int,
        img_size: Sequence[int] | int,
        patch_size: Sequence[int] | int,
        hidden_size: int = 768,
        mlp_dim: int = 3072,
        num_layers: int = 12,
        num_heads: int = 12,
        decoder_hidden_size: int = 512,
        decoder_mlp_dim: int = 2048,
        decoder_num_layers: int = 8,
        decoder_num_heads: int = 16,
        mask_ratio: float = 0.75,
        spatial_dims: int = 3,
        qkv_bias: bool = True,
        use_flash_attention: bool = True,
        masking: str | MaskingPolicy = "random",
    ) -> None:
        super().__init__()
        use_flash_attention = as_bool(use_flash_attention, "use_flash_attention")
        check_embed_dim("decoder_hidden_size", decoder_hidden_size, decoder_num_heads, spatial_dims, "sincos")
        self.encoder = ViTEncoder(
            in_channels,
            img_size,
            patch_size,
            hidden_size=hidden_size,
            mlp_dim=mlp_dim,
            num_layers=num_layers,
            num_heads=num_heads,
            pos_embed_type="sincos",
            qkv_bias=qkv_bias,
            spatial_dims=spatial_dims,
            use_flash_attention=use_flash_attention,
        )
        self.mask_ratio = mask_ratio
        self.decoder_embed = nn.Linear(hidden_size, decoder_hidden_size)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_hidden_size))
        self.decoder_pos_embed = build_sincos_position_embedding(
            list(self.encoder.grid_size), decoder_hidden_size, spatial_dims
        )
        self.decoder_blocks = transformer_blocks(
            decoder_num_layers,
            decoder_hidden_size,
            decoder_mlp_dim,
            decoder_num_heads,
            qkv_bias=qkv_bias,
            use_flash_attention=use_flash_attention,
        )
        self.decoder_norm = nn.LayerNorm(decoder_hidden_size)
        self.decoder_pred = nn.Linear(decoder_hidden_size, math.prod(self.patch_size) * in_channels)
        self._init_weights()
        self.masking = self._check_masking(get_masking_policy(masking))  # after _init_weights: keeps its own init

    def _check_masking(self, policy: MaskingPolicy) -> MaskingPolicy:
        missing = [k for k in policy.required_aux if k not in self.masking_aux]
        if missing:
            raise ValueError(
                f"{type(policy).__name__} needs the aux inputs {missing}, which {type(self).__name__} does not give "
                f"(it gives {list(self.masking_aux)}); configure the policy without them (MPSMasking: "
                "lesion_rule='smallest') or use a network that gives them (AMLPMaskedAutoencoder)."
            )
        policy.check_grid(self.encoder.grid_size, self.patch_size)
        return policy

    @property
    def mask_ratio(self) -> float:
        """Fraction of patches masked when the caller gives no mask; AMR handlers change it during training."""
        return self._mask_ratio

    @mask_ratio.setter
    def mask_ratio(self, value: float) -> None:
        if not 0.0 < float(value) < 1.0:
            raise ValueError(f"mask_ratio must be in (0, 1), got {value}.")
        self._mask_ratio = float(value)

    @property
    def patch_size(self) -> tuple[int, ...]:
        """Patch size per spatial axis."""
        return self.encoder.patch_size

    @property
    def img_size(self) -> tuple[int, ...]:
        """Input spatial size."""
        return self.encoder.img_size

    @property
    def num_patches(self) -> int:
        """Number of patches ``L`` of one image."""
        return self.encoder.num_patches

    def _init_weights(self) -> None:
        w = self.encoder.patch_embedding.patch_embeddings.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.normal_(self.mask_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward_decoder(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """Decode visible tokens ``[B, L_keep, D]`` into per-patch pixel predictions ``[B, L, prod(patch) * C]``."""
        x = self.decoder_embed(latent)
        b, n_keep, d = x.shape
        mask_tokens = self.mask_token.to(x.dtype).expand(b, ids_restore.shape[1] - n_keep, d)
        x = torch.cat([x, mask_tokens], dim=1)
        x = torch.gather(x, 1, ids_restore[..., None].expand(-1, -1, d))
        x = x + self.decoder_pos_embed.to(x.dtype)
        for blk in self.decoder_blocks:
            x = blk(x)
        return self.decoder_pred(self.decoder_norm(x))

    def patch_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Detached patch projection (without position embedding), ``[B, L, hidden_size]`` float32."""
        with torch.no_grad():
            return self.encoder.patch_embedding.patch_embeddings(x).flatten(2).transpose(1, 2).float()

    def select_mask(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        scores: torch.Tensor | None = None,
        tokens: torch.Tensor | None = None,
        aux: dict[str, torch.Tensor] | None = None,
    ) -> tuple[PatchMask, dict[str, torch.Tensor]]:
        """Choose the patch mask of a batch: the caller's ``mask``, else the caller's ``scores``, else the policy's.

        Args:
            x: images ``[B, C, *img_size]`` (already checked).
            mask: optional ``[B, L]`` patch mask (1 = masked) with the same count in every sample.
            scores: optional ``[B, L]`` masking priority (highest masked first) at ``self.mask_ratio``.
            tokens: optional ``[B, L, hidden_size]`` patch projections for the policy (from :meth:`patch_tokens`);
                computed here when the policy ``requires_tokens`` and none are given.
            aux: the policy's auxiliary inputs (``masking_aux``).

        Returns:
            the :class:`~maskseg_monai.masking.PatchMask` and the policy's per-patch maps ``[B, L]`` by name
            (empty when ``mask`` or ``scores`` bypass the policy).

        Raises:
            ValueError: when both ``mask`` and ``scores`` are given, or on a mask of the wrong shape or counts.
        """
        b, n = x.shape[0], self.num_patches
        if mask is not None:
            if scores is not None:
                raise ValueError("give either mask or scores, not both.")
            if mask.shape != (b, n):
                raise ValueError(f"mask must have shape [{b}, {n}], got {tuple(mask.shape)}.")
            counts = mask.sum(1)
            if not bool((counts == counts[0]).all()) or not 0 < int(counts[0]) < n:
                raise ValueError(f"every sample must mask the same number of patches (1 to {n - 1}), got {counts}.")
            # a stable sort of the mask itself reproduces it exactly
            return mask_from_scores(mask.to(x.device), int(counts[0])), {}
        maps: dict[str, torch.Tensor] = {}
        if scores is None:
            if tokens is None:  # the policy gets the projection if it asks for it, else a [B, L, 0] placeholder
                tokens = self.patch_tokens(x) if self.masking.requires_tokens else x.new_empty((b, n, 0))
            with torch.no_grad():
                chosen = self.masking(x, tokens, aux)
            scores, maps = (chosen, {}) if isinstance(chosen, torch.Tensor) else chosen
        return generate_patch_mask(b, n, self.mask_ratio, scores=scores, device=x.device), maps

    def forward_masked(self, x: torch.Tensor, patch_mask: PatchMask) -> torch.Tensor:
        """Encode the visible patches of ``x`` ``[B, C, *img_size]`` and predict every patch ``[B, L, P]``."""
        latent, _ = self.encoder(x, ids_keep=patch_mask.ids_keep)
        return self.forward_decoder(latent, patch_mask.ids_restore)

    def forward_patches(
        self, x: torch.Tensor, mask: torch.Tensor | None = None, scores: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mask, encode the visible patches, and predict the pixels of every patch, as tokens.

        Args:
            x: images ``[B, C, *img_size]``.
            mask: optional ``[B, L]`` patch mask (1 = masked) with the same count in every sample.
            scores: optional ``[B, L]`` masking priority (highest masked first) at ``self.mask_ratio``.
                Without ``mask`` and ``scores`` the masking policy (``self.masking``) scores the patches.

        Returns:
            predictions ``[B, L, prod(patch_size) * C]`` (values ordered as :func:`~maskseg_monai.masking.patchify`)
            and the patch mask ``[B, L]`` that was applied.

        Raises:
            ValueError: on a wrong input shape, or when both ``mask`` and ``scores`` are given.
        """
        self.encoder.check_input(x)
        patch_mask, _ = self.select_mask(x, mask, scores)
        return self.forward_masked(x, patch_mask), patch_mask.mask

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None = None, scores: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Reconstruct masked images; the output is image-shaped so MONAI's transforms, savers and checks apply.

        Args:
            x: images ``[B, C, *img_size]``.
            mask: optional ``[B, L]`` patch mask, as in :meth:`forward_patches`.
            scores: optional ``[B, L]`` masking priority, as in :meth:`forward_patches`.

        Returns:
            ``[B, C + 1, *img_size]``: the predicted image (every pixel, in per-patch normalised units
            when trained with ``norm_pix_loss``) followed by the pixel mask (1 = masked); see
            :func:`~maskseg_monai.masking.split_mae_output`. Subclasses append the maps named in
            ``output_extras``.
        """
        pred, mask = self.forward_patches(x, mask=mask, scores=scores)
        return merge_mae_output(pred, mask, self.patch_size, self.img_size, self.encoder.in_channels)

    def unpatchify(self, patches: torch.Tensor) -> torch.Tensor:
        """Turn ``[B, L, prod(patch) * C]`` predictions into images ``[B, C, *img_size]``."""
        return unpatchify(patches, self.patch_size, self.img_size, self.encoder.in_channels)

    def encoder_state_dict(self) -> dict[str, torch.Tensor]:
        """Encoder weights with MONAI ``ViT`` key names (``patch_embedding.*``, ``blocks.*``, ``norm.*``)."""
        return {k: v.detach().cpu().clone() for k, v in self.encoder.state_dict().items()}


def export_encoder(network: nn.Module, path: str | os.PathLike) -> str:
    """Write the encoder weights of a (possibly DDP-wrapped) :class:`MaskedAutoencoderViT` to ``path``.

    The file holds ``{"state_dict": ..., "config": {...}}`` and loads with ``torch.load(path, weights_only=True)``.
    It is written atomically (temporary file, then rename).

    Returns:
        the path written.
    """
    net = getattr(network, "module", network)
    if not isinstance(net, MaskedAutoencoderViT):
        raise TypeError(f"export_encoder expects a MaskedAutoencoderViT, got {type(net).__name__}.")
    return atomic_torch_save({"state_dict": net.encoder_state_dict(), "config": dict(net.encoder.config)}, path)
