"""The dense linear probe itself: a linear classifier of every pixel on a frozen encoder's patch tokens, fitted
by L-BFGS on a few labelled images (the command that runs it over encoders is :mod:`maskseg_monai.experiments.probe`).

The probe, one choice for every arm of :mod:`maskseg_monai.experiments.probe`:

- **features**: the encoder (:class:`~maskseg_monai.networks.blocks.ViTEncoder`, ``eval()``, no gradient) runs on
  the whole, unmasked image; the final block's normalised patch tokens, as a map ``[N, D, *grid]``, are the
  features. Intermediate blocks are not used. They are extracted once per encoder for all probe images, in
  batches, and standardised per channel with the mean and std of the probe training tokens.
- **classifier**: a 1x1 convolution (multinomial logistic regression) on the features upsampled bilinearly to
  pixels. As both are linear (bilinear weights sum to 1), it is computed as the bilinear upsampling of the
  patch-level logits, the same numbers at ``1 / patch_size**spatial_dims`` of the memory.
- **fit**: on ``--probe_images`` k labelled training images of ``--probe_demo_set`` (seed ``s`` picks the same k
  images for every arm and patch size, those the label-efficiency study fine-tunes on at that k and seed:
  :func:`choose_probe_images`); class-balanced cross-entropy over all their pixels (class weights
  ``N / (C * n_c)``, so that a rare foreground is not traded for background; ``--plain_ce`` for unweighted) plus
  an L2 penalty on the weights; full-batch L-BFGS with a strong-Wolfe line search from zero weights, at most
  ``--probe_steps`` iterations. The problem is convex, so the result depends on
  the features, not on optimiser settings; the L2 weight (``--probe_weight_decay``, :data:`DEFAULT_WEIGHT_DECAY`)
  is fixed, the same for every arm, never tuned on the validation images.
- **score**: argmax on every validation image of the probe set,
  :func:`~maskseg_monai.experiments.score_label_maps` (Dice without background, by object size, detection F1).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.bundle import ConfigParser
from monai.networks.layers import Conv

from maskseg_monai.experiments.finetune import nested_subsets
from maskseg_monai.experiments.validation import ValidationSet, iter_batches, labelled_set, load_items
from maskseg_monai.networks.blocks.vit_encoder import ViTEncoder
from maskseg_monai.networks.transfer import find_encoder, load_pretrained_encoder

__all__ = [
    "DEFAULT_WEIGHT_DECAY",
    "DenseLinearProbe",
    "encoder_features",
    "fit_probe",
    "choose_probe_images",
    "build_encoder",
    "labelled_splits",
]

#: L2 penalty of the probe (on standardised features, mean cross-entropy): chosen once on the 44 ``nuclei2d``
#: training tiles left out of the probe's k = 4 (never the validation tiles), random-init encoder, patch 4/8/16,
#: seeds 0-1: held-out Dice rose from 1e-4 to 0.1 (by 0.05-0.26) and stayed within 0.03 from 0.1 to 3.
DEFAULT_WEIGHT_DECAY = 0.1
#: interpolation mode of :func:`torch.nn.functional.interpolate` per number of spatial dims
_LINEAR_MODES = {2: "bilinear", 3: "trilinear"}


class DenseLinearProbe(nn.Module):
    """A linear classifier of every pixel from patch features: standardise, 1x1 convolution, upsample linearly.

    Applying the 1x1 convolution to the patch grid and then upsampling the logits (bi/trilinear,
    ``align_corners=False``) gives the same logits as the convolution of the upsampled features, since both maps
    are linear and the interpolation weights sum to 1; so the classifier is a logistic regression of each pixel
    on its bilinearly interpolated features, at patch-grid memory. Written here because MONAI has no probe head;
    the convolution is MONAI's ``Conv`` factory.

    Args:
        in_channels: feature width ``D``.
        num_classes: classes ``C``, background included.
        spatial_dims: 2 or 3. Defaults to 2.

    Raises:
        ValueError: on ``spatial_dims`` other than 2 or 3, or fewer than 2 classes.

    Example:
        >>> probe = DenseLinearProbe(48, 2)
        >>> probe(torch.rand(3, 48, 8, 8), (32, 32)).shape
        torch.Size([3, 2, 32, 32])
    """

    def __init__(self, in_channels: int, num_classes: int, spatial_dims: int = 2) -> None:
        super().__init__()
        if spatial_dims not in _LINEAR_MODES:
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
        if num_classes < 2:
            raise ValueError(f"num_classes must be at least 2 (background included), got {num_classes}.")
        self.spatial_dims = spatial_dims
        self.head = Conv[Conv.CONV, spatial_dims](in_channels, num_classes, kernel_size=1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        shape = (1, in_channels) + (1,) * spatial_dims
        self.register_buffer("mean", torch.zeros(shape))
        self.register_buffer("std", torch.ones(shape))

    def standardize_with(self, features: torch.Tensor, eps: float = 1e-6) -> None:
        """Set the per-channel mean and std from ``features`` ``[N, D, *grid]`` (the training features)."""
        dims = [0, *range(2, features.ndim)]
        self.mean.copy_(features.mean(dims, keepdim=True))
        self.std.copy_(features.std(dims, keepdim=True).clamp_min(eps))

    def forward(self, features: torch.Tensor, out_size: Sequence[int]) -> torch.Tensor:
        """Logits ``[B, C, *out_size]`` of features ``[B, D, *grid]``."""
        logits = self.head((features - self.mean) / self.std)
        return F.interpolate(logits, size=tuple(out_size), mode=_LINEAR_MODES[self.spatial_dims], align_corners=False)


@torch.no_grad()
def encoder_features(
    encoder: ViTEncoder, images: Sequence[torch.Tensor], batch_size: int = 16, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """Final-block patch tokens of a frozen encoder on whole (unmasked) images, as feature maps.

    Args:
        encoder: the encoder; it is put in ``eval()`` and run without gradient.
        images: ``[C, *img_size]`` each.
        batch_size: images per forward pass.
        device: where to run.

    Returns:
        float32 ``[N, hidden_size, *grid_size]`` on the CPU: the normalised output tokens (``encoder(x)[0]``) over
        the patch grid.

    Raises:
        ValueError: when ``images`` is empty or an image does not fit the encoder's input size.
    """
    encoder.eval().to(device)
    maps = [
        encoder.tokens_to_map(encoder(x)[0]).float().cpu() for x, _ in iter_batches(images, None, batch_size, device)
    ]
    return torch.cat(maps)


def fit_probe(
    features: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    steps: int = 100,
    weight_decay: float = DEFAULT_WEIGHT_DECAY,
    class_balanced: bool = True,
) -> tuple[DenseLinearProbe, float]:
    """Fit a :class:`DenseLinearProbe` on all pixels of the training images at once (full batch).

    The loss is the cross-entropy of every pixel (class-balanced: class ``c`` weighted by ``N / (C * n_c)`` of its
    ``n_c`` pixels among ``N``) plus ``weight_decay / 2 * ||W||^2`` on the convolution weights (not the bias);
    L-BFGS with a strong-Wolfe line search minimises it from zero weights for at most ``steps`` iterations.

    Args:
        features: training features ``[N, D, *grid]``.
        labels: their label maps ``[N, 1, *spatial]``, integers in ``0 .. num_classes - 1``.
        num_classes: classes ``C``, background included.
        steps: most L-BFGS iterations. Defaults to 100.
        weight_decay: L2 penalty on the weights. Defaults to :data:`DEFAULT_WEIGHT_DECAY` (0.1).
        class_balanced: weight the classes by inverse frequency; False for plain cross-entropy. Defaults to True.

    Returns:
        the fitted probe and its final training loss.

    Raises:
        ValueError: on mismatched batch sizes, a label outside ``0 .. num_classes - 1``, a class without pixels,
            ``steps < 1`` or a negative ``weight_decay``.
    """
    if features.shape[0] != labels.shape[0] or labels.ndim != features.ndim or labels.shape[1] != 1:
        raise ValueError(
            f"expected features [N, D, *grid] and labels [N, 1, *spatial], got {tuple(features.shape)} and "
            f"{tuple(labels.shape)}."
        )
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}.")
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be non-negative, got {weight_decay}.")
    target = labels[:, 0].long()  # [N, *spatial]
    if target.min() < 0 or target.max() >= num_classes:
        raise ValueError(f"labels must be in 0..{num_classes - 1}, got {target.min()}..{target.max()}.")
    counts = torch.bincount(target.flatten(), minlength=num_classes)
    if (counts == 0).any():
        absent = torch.nonzero(counts == 0).flatten().tolist()
        raise ValueError(f"the probe's training images have no pixel of class(es) {absent}; use more images.")
    weight = (counts.sum() / (num_classes * counts)).float() if class_balanced else None
    probe = DenseLinearProbe(features.shape[1], num_classes, features.ndim - 2)
    probe.standardize_with(features)
    loss_fn = nn.CrossEntropyLoss(weight=weight)
    optimizer = torch.optim.LBFGS(probe.head.parameters(), lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")
    size = labels.shape[2:]

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = loss_fn(probe(features, size), target) + 0.5 * weight_decay * probe.head.weight.square().sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        loss = loss_fn(probe(features, size), target) + 0.5 * weight_decay * probe.head.weight.square().sum()
    return probe, float(loss)


def choose_probe_images(num_images: int, k: int, seed: int) -> list[int]:
    """Indices of the ``k`` training images the probe of seed ``seed`` is fitted on, in increasing order: the
    ``k`` items the label-efficiency study fine-tunes on for that seed
    (:func:`~maskseg_monai.experiments.finetune.nested_subsets`).

    Raises:
        ValueError: unless ``1 <= k <= num_images``.

    Example:
        >>> choose_probe_images(48, 4, 0) == choose_probe_images(48, 4, 0), choose_probe_images(5, 5, 1)
        (True, [0, 1, 2, 3, 4])
    """
    if not 1 <= k <= num_images:
        raise ValueError(f"--probe_images must be in [1, {num_images}] (the labelled training images), got {k}.")
    return nested_subsets(num_images, [k], seed)[k]


def build_encoder(parser: ConfigParser, seed: int, encoder_file: str | Path | None = None) -> ViTEncoder:
    """The encoder of the bundle's ``network_def``, initialised under ``torch.manual_seed(seed)`` (the global RNG
    state is restored afterwards), with the weights of ``encoder_file`` (an exported ``encoder.pt``) when given.

    Raises:
        ValueError: when ``encoder_file`` does not fit the network (see
            :func:`~maskseg_monai.networks.load_pretrained_encoder`).
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        encoder = find_encoder(parser.get_parsed_content("network_def", instantiate=True))
    if encoder_file is not None:
        load_pretrained_encoder(encoder, encoder_file)
    return encoder.requires_grad_(False)


def labelled_splits(parser: ConfigParser) -> tuple[ValidationSet, ValidationSet, list[str]]:
    """The probe set's labelled training and validation images (``validate#preprocessing``) and the names
    (file stems) of the training images.

    Raises:
        ValueError: naming the datalist, when a list is empty or some item has no ``"label"``.
    """
    datalist = parser.get_parsed_content("datalist")
    sets = []
    for split in ("train", "validate"):
        items = parser.get_parsed_content(f"{split}#datalist")
        data = labelled_set(*load_items(parser, items), datalist)
        if not items or data.labels is None:
            name = "training" if split == "train" else "validation"
            raise ValueError(f"{datalist}: the probe needs a non-empty, labelled '{name}' list (items with 'label').")
        sets.append(data)
    names = [Path(item["image"]).stem for item in parser.get_parsed_content("train#datalist")]
    return sets[0], sets[1], names
