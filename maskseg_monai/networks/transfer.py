"""Move pretrained ViT encoder weights (MAE/AMLP exports and checkpoints, MONAI ViT/UNETR) into a network."""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from maskseg_monai.networks.blocks.vit_encoder import ViTEncoder

__all__ = [
    "TransferReport",
    "load_pretrained_encoder",
    "freeze_encoder",
    "find_encoder",
    "read_checkpoint",
    "resample_pos_embed",
]

logger = logging.getLogger("maskseg_monai.transfer")

PATCH_WEIGHT = "patch_embedding.patch_embeddings.weight"
POS_EMBED = "patch_embedding.position_embeddings"
# unused by self-attention blocks; absent from checkpoints of MONAI < 1.4, so a missing one keeps its init
_OPTIONAL = re.compile(r"blocks\.\d+\.norm_cross_attn\.")
# parts of a MONAI ViT classifier that a segmentation encoder does not use; dropped without error
_DROPPABLE = re.compile(r"(cls_token|classification_head\.)")
# wrappers whose prefixes are stripped: DistributedDataParallel/DataParallel and torch.compile
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


@dataclass
class TransferReport:
    """What :func:`load_pretrained_encoder` did with each tensor.

    Attributes:
        source: the file, or ``"<state dict>"``.
        prefix: the key prefix of the encoder in the checkpoint (``"encoder."``, ``"vit."`` or ``""``).
        loaded: encoder keys loaded (interpolated ones included).
        missing: encoder keys absent from the checkpoint (left at their initial values).
        unexpected: checkpoint keys under ``prefix`` (prefix removed) that the encoder does not have.
        shape_mismatch: ``(key, checkpoint shape, network shape)`` of keys not loaded for their shape.
        interpolated: position-embedding keys resampled to the network's patch grid.
        ignored: checkpoint keys outside the encoder (decoder, heads, mask token, ...).
    """

    source: str
    prefix: str = ""
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    shape_mismatch: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    interpolated: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)

    @property
    def num_encoder_keys(self) -> int:
        """Tensors of the target encoder that the checkpoint had to provide."""
        return len(self.loaded) + len(self.missing) + len(self.shape_mismatch)

    def summary(self) -> str:
        """One line: counts per outcome."""
        return (
            f"{self.source}: loaded {len(self.loaded)}/{self.num_encoder_keys} encoder tensors "
            f"(prefix {self.prefix!r}, {len(self.interpolated)} interpolated), {len(self.missing)} missing, "
            f"{len(self.unexpected)} unexpected, {len(self.shape_mismatch)} shape mismatches, "
            f"{len(self.ignored)} non-encoder keys ignored."
        )

    def __str__(self) -> str:
        rows = [(key, "interpolated", "") for key in self.interpolated]
        rows += [(key, "missing", "") for key in self.missing]
        rows += [(key, "unexpected", "") for key in self.unexpected]
        rows += [
            (k, "shape mismatch", f"{list(a)} in checkpoint, {list(b)} in network") for k, a, b in self.shape_mismatch
        ]
        lines = [self.summary()]
        if rows:
            width = max(len(r[0]) for r in rows)
            lines.append(f"  {'key'.ljust(width)}  {'status'.ljust(14)}  detail")
            lines += [f"  {k.ljust(width)}  {s.ljust(14)}  {d}".rstrip() for k, s, d in rows]
        return "\n".join(lines)


def find_encoder(network: nn.Module) -> ViTEncoder:
    """The :class:`ViTEncoder` of ``network``: itself, or its ``vit`` or ``encoder`` attribute (DDP and
    ``torch.compile`` wrappers are looked through).

    Raises:
        TypeError: when there is none.
    """
    net = network
    for attr in ("module", "_orig_mod"):  # DistributedDataParallel / DataParallel, torch.compile
        net = getattr(net, attr, net)
    if isinstance(net, ViTEncoder):
        return net
    for attr in ("vit", "encoder"):
        enc = getattr(net, attr, None)
        if isinstance(enc, ViTEncoder):
            return enc
    raise TypeError(
        f"{type(network).__name__} has no ViTEncoder: expected a ViTEncoder or a module with a ViTEncoder "
        "attribute 'vit' (UNETR) or 'encoder' (MaskedAutoencoderViT)."
    )


def resample_pos_embed(pos_embed: torch.Tensor, src_grid: Sequence[int], dst_grid: Sequence[int]) -> torch.Tensor:
    """Resample a position embedding from one patch grid to another (as MAE does before fine-tuning).

    Interpolation is bicubic on a 2D grid and trilinear on a 3D grid, with ``align_corners=False``;
    equal grids return ``pos_embed`` unchanged.

    Args:
        pos_embed: ``[1, prod(src_grid), D]``, tokens in row-major grid order (as the patch embedding flattens them).
        src_grid: patch grid of ``pos_embed``, one entry per spatial axis.
        dst_grid: target patch grid, as many entries.

    Returns:
        ``[1, prod(dst_grid), D]`` in the dtype of ``pos_embed``.

    Raises:
        ValueError: when the token count does not match ``src_grid`` or the grids have different dimensions.
    """
    src_grid, dst_grid = tuple(int(g) for g in src_grid), tuple(int(g) for g in dst_grid)
    if len(src_grid) != len(dst_grid) or len(src_grid) not in (2, 3):
        raise ValueError(f"src_grid {src_grid} and dst_grid {dst_grid} must both be 2D or both 3D.")
    if pos_embed.ndim != 3 or pos_embed.shape[1] != math.prod(src_grid):
        raise ValueError(
            f"pos_embed must be [1, {math.prod(src_grid)}, D] for grid {src_grid}, got {list(pos_embed.shape)}."
        )
    if src_grid == dst_grid:
        return pos_embed
    d = pos_embed.shape[-1]
    grid = pos_embed.float().reshape(1, *src_grid, d).movedim(-1, 1)  # [1, D, *src_grid]
    mode = "bicubic" if len(src_grid) == 2 else "trilinear"
    grid = F.interpolate(grid, size=dst_grid, mode=mode, align_corners=False)
    return grid.flatten(2).transpose(1, 2).to(pos_embed.dtype)


def read_checkpoint(path_or_state: str | os.PathLike | Mapping) -> tuple[str, dict, dict | None]:
    """``(source name, flat state dict, encoder config or None)`` of a file or an in-memory checkpoint.

    Files are read with ``torch.load(path, weights_only=True, map_location="cpu")``; a bundle's ``CheckpointSaver``
    file (``{"model": ...}``), :func:`~maskseg_monai.networks.export_encoder`'s file (``{"state_dict", "config"}``)
    and a bare state dict are accepted; non-tensor entries are dropped and DDP / ``torch.compile`` prefixes stripped.

    Raises:
        FileNotFoundError: when the file does not exist.
        ValueError: naming the file when it cannot be read that way or holds no dict.
    """
    if isinstance(path_or_state, Mapping):
        source, obj = "<state dict>", path_or_state
    else:
        source = str(path_or_state)
        if not os.path.isfile(source):
            raise FileNotFoundError(f"{source}: no such checkpoint file.")
        try:
            obj = torch.load(source, weights_only=True, map_location="cpu")
        except Exception as e:  # an unpickling error, a non-torch file, ...
            raise ValueError(f"{source}: cannot be read with torch.load(weights_only=True): {e}") from e
    if not isinstance(obj, Mapping):
        raise ValueError(f"{source}: expected a dict of tensors or a checkpoint dict, got {type(obj).__name__}.")
    config = None
    for key in ("state_dict", "model"):  # export_encoder's file, a bundle's CheckpointSaver file
        if isinstance(obj.get(key), Mapping):
            if key == "state_dict" and isinstance(obj.get("config"), Mapping):
                config = dict(obj["config"])
            obj = obj[key]
            break
    state = {}
    for key, value in obj.items():
        if not torch.is_tensor(value):
            continue
        for wrapper in _WRAPPER_PREFIXES:
            key = key[len(wrapper) :] if key.startswith(wrapper) else key
        state[key] = value
    return source, state, config


def _find_prefix(state: Mapping[str, torch.Tensor], encoder_keys: set[str]) -> str | None:
    """The prefix under which ``state`` holds the most encoder keys (``None`` when it holds none)."""
    counts: dict[str, int] = {}
    for key in state:
        for enc_key in encoder_keys:
            if key.endswith(enc_key):
                prefix = key[: len(key) - len(enc_key)]
                if prefix == "" or prefix.endswith("."):
                    counts[prefix] = counts.get(prefix, 0) + 1
    if not counts:
        return None
    return max(counts, key=lambda p: (counts[p], p in ("", "encoder.", "vit.")))


def _source_grid(
    source: str, src_tokens: int, dst_grid: tuple[int, ...], config: dict | None, src_patch: tuple[int, ...]
) -> tuple[int, ...]:
    """The patch grid of a checkpoint's position embedding: from its config, else assuming the target's aspect."""
    if config is not None and "img_size" in config:
        img = tuple(config["img_size"])
        grid = tuple(s // p for s, p in zip(img, src_patch))
        if math.prod(grid) == src_tokens:
            return grid
    scale = (src_tokens / math.prod(dst_grid)) ** (1 / len(dst_grid))
    grid = tuple(max(1, round(g * scale)) for g in dst_grid)
    if math.prod(grid) != src_tokens:
        raise ValueError(
            f"{source}: cannot infer the patch grid of {POS_EMBED!r} ({src_tokens} tokens) for the network's grid "
            f"{dst_grid}; load an encoder file written by export_encoder (it stores img_size)."
        )
    return grid


def load_pretrained_encoder(
    network: nn.Module,
    path_or_state: str | os.PathLike | Mapping,
    strict_shapes: bool = True,
    interpolate_pos_embed: bool = True,
    allow_unexpected: bool = False,
) -> TransferReport:
    """Load pretrained ViT encoder weights into the :class:`ViTEncoder` of ``network``.

    Accepted checkpoints (files are read with ``torch.load(path, weights_only=True, map_location="cpu")``):

    - an ``encoder.pt`` from :func:`~maskseg_monai.networks.export_encoder`: ``{"state_dict", "config"}``;
    - a bundle checkpoint ``{"model": state_dict, "optimizer": ...}`` of a MAE/AMLP network (keys ``encoder.*``);
    - a bare MAE/AMLP state dict (``encoder.*``);
    - a MONAI ``UNETR`` (``vit.*``) or ``ViT`` (bare ``patch_embedding.*``, ``blocks.*``, ``norm.*``) state dict.

    The encoder prefix is found from the keys (``module.``/``_orig_mod.`` wrappers are stripped); keys outside it
    (decoders, heads, ``mask_token``) are ignored. When the patch grid differs (another ``img_size``, same patch
    size), the position embedding is resampled with :func:`resample_pos_embed`; a fixed sin-cos table is
    resampled like a learnt one. The patch-embedding weights are never resized.

    Args:
        network: a :class:`~maskseg_monai.networks.UNETR` (loads into ``network.vit``), a masked autoencoder
            (``network.encoder``), a :class:`ViTEncoder`, or any module with a ``ViTEncoder`` attribute
            ``vit``/``encoder``; DDP-wrapped or compiled networks are accepted.
        path_or_state: a checkpoint file, or an already loaded checkpoint/state dict.
        strict_shapes: raise on a shape mismatch (other than a resampled position embedding); when False,
            mismatched tensors keep their initial values and are listed in ``shape_mismatch``. Defaults to True.
        interpolate_pos_embed: resample the position embedding to the network's patch grid when they differ;
            when False, a different grid is a shape mismatch. Defaults to True.
        allow_unexpected: accept encoder-like checkpoint keys that the network lacks (more blocks than the
            network, ``qkv`` biases into ``qkv_bias=False``), dropping them with a warning; when False they
            raise. A ViT classifier's ``cls_token``/``classification_head`` are always dropped. Defaults to False.

    Returns:
        a :class:`TransferReport`, also logged to the ``maskseg_monai.transfer`` logger (``WARNING`` when
        tensors were dropped or kept their initial values, else ``INFO``), the record carrying the report as
        ``record.transfer_report``.

    Raises:
        FileNotFoundError: when the file does not exist.
        ValueError: naming the file, when it cannot be read, holds no encoder weight, lacks an encoder key
            (``norm_cross_attn`` of MONAI < 1.4 excepted), has a different patch size or input channels, has
            unexpected encoder keys (unless ``allow_unexpected``), or shape mismatches (with ``strict_shapes``).
        TypeError: when ``network`` has no :class:`ViTEncoder`.

    Example::

        >>> net = UNETR(1, 5, 256, patch_size=4, spatial_dims=2)  # doctest: +SKIP
        >>> print(load_pretrained_encoder(net, "bundles/mae/models/model_final.pt"))  # doctest: +SKIP
    """
    encoder = find_encoder(network)
    source, state, config = read_checkpoint(path_or_state)
    target = encoder.state_dict()
    report = TransferReport(source=source)
    prefix = _find_prefix(state, set(target))
    if prefix is None:
        shown = ", ".join(list(state)[:5]) or "none"
        raise ValueError(
            f"{source}: no ViT encoder weights found: expected keys like {PATCH_WEIGHT!r}, bare or under "
            f"'encoder.' (MAE/AMLP) or 'vit.' (UNETR); the checkpoint's tensors: {shown}"
            f"{', ...' if len(state) > 5 else ''}."
        )
    report.prefix = prefix

    patch_weight = state.get(prefix + PATCH_WEIGHT)
    if patch_weight is not None and patch_weight.shape != target[PATCH_WEIGHT].shape:
        have, want = list(patch_weight.shape), list(target[PATCH_WEIGHT].shape)
        raise ValueError(
            f"{source}: {prefix + PATCH_WEIGHT!r} has shape {have} in the checkpoint but {want} in the network "
            f"([hidden, in_channels, *patch]: checkpoint patch {have[2:]}, in_channels {have[1]}; network "
            f"patch {want[2:]}, in_channels {want[1]}); the patch size, channels and spatial_dims must match, "
            "the weights are not resized."
        )

    new_state: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if not key.startswith(prefix):
            report.ignored.append(key)
            continue
        sub = key[len(prefix) :]
        if sub not in target:
            report.unexpected.append(sub)
            continue
        want = tuple(target[sub].shape)
        have = tuple(value.shape)
        if sub == POS_EMBED and have != want and interpolate_pos_embed and len(have) == 3 and have[2] == want[2]:
            src_grid = _source_grid(source, have[1], encoder.grid_size, config, encoder.patch_size)
            value = resample_pos_embed(value, src_grid, encoder.grid_size)
            report.interpolated.append(sub)
            logger.info("%s: resampled %s from grid %s to %s.", source, sub, list(src_grid), list(encoder.grid_size))
            have = tuple(value.shape)
        if have != want:
            report.shape_mismatch.append((sub, have, want))
            continue
        new_state[sub] = value
        report.loaded.append(sub)
    report.missing = [k for k in target if k not in new_state and not any(k == m[0] for m in report.shape_mismatch)]
    optional_missing = [k for k in report.missing if _OPTIONAL.match(k)]
    report.missing = [k for k in report.missing if k not in optional_missing]

    if not report.loaded:
        raise ValueError(f"{source}: no encoder tensor could be loaded.\n{report}")
    if report.missing:
        hint = ""
        if all(k.endswith("qkv.bias") for k in report.missing):
            hint = " (trained with qkv_bias=False? build the network with qkv_bias=False)"
        raise ValueError(
            f"{source}: {len(report.missing)} encoder keys are missing from the checkpoint{hint}.\n{report}"
        )
    if report.shape_mismatch and strict_shapes:
        raise ValueError(
            f"{source}: {len(report.shape_mismatch)} encoder tensors differ in shape (hidden_size, mlp_dim or "
            f"spatial_dims differ?); pass strict_shapes=False to keep their initial values.\n{report}"
        )
    fatal = [k for k in report.unexpected if not _DROPPABLE.match(k)]
    if fatal and not allow_unexpected:
        raise ValueError(
            f"{source}: {len(fatal)} checkpoint keys under {prefix!r} have no place in the network (more "
            "blocks than num_layers, or qkv biases into qkv_bias=False?); pass allow_unexpected=True to drop "
            f"them.\n{report}"
        )

    encoder.load_state_dict(new_state, strict=False)
    if optional_missing:
        logger.debug("%s: %d unused norm_cross_attn tensors keep their init.", source, len(optional_missing))
    # the report itself rides on the record (``record.transfer_report``), for callers that collect the loads
    level = logging.WARNING if report.unexpected or report.shape_mismatch else logging.INFO
    logger.log(level, "%s", report, extra={"transfer_report": report})
    return report


def freeze_encoder(network: nn.Module, freeze: bool = True) -> int:
    """Freeze (or unfreeze) the :class:`ViTEncoder` of ``network``, e.g. for the first epochs of fine-tuning.

    Sets ``requires_grad`` on the encoder parameters; tensors that are never trained (a sin-cos position
    embedding, the unused ``norm_cross_attn`` layers) stay frozen when unfreezing. Frozen parameters get no
    gradient, so optimisers skip them (weight decay included). Dropout is not affected; the encoder has none
    by default.

    Under ``DistributedDataParallel`` call it before wrapping the network, or keep ``requires_grad`` unchanged
    after wrapping: DDP registers its gradient buckets once, so a parameter frozen later makes it wait for a
    gradient that never comes (unless ``find_unused_parameters=True``) and one unfrozen later is never
    synchronised.

    Args:
        network: as for :func:`load_pretrained_encoder`.
        freeze: True to freeze, False to make the encoder trainable again. Defaults to True.

    Returns:
        the number of encoder parameter elements that are trainable afterwards.
    """
    encoder = find_encoder(network)
    fixed = {POS_EMBED} if encoder.config["pos_embed_type"] == "sincos" else set()
    trainable = 0
    for name, param in encoder.named_parameters():
        param.requires_grad_(not freeze and name not in fixed and not _OPTIONAL.match(name))
        trainable += param.numel() if param.requires_grad else 0
    return trainable
