"""Reconstruction evaluation of one trained cell on the shared validation set, with fixed-seed masks, beside the
fills that need no learning (``shared/methods/baselines.md``) on the same masks."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from monai.bundle import ConfigParser
from monai.networks.utils import one_hot

from maskseg_monai.data.sampling import sample_crops
from maskseg_monai.experiments.validation import iter_batches
from maskseg_monai.inferers import SeededMaskInferer
from maskseg_monai.masking.outputs import split_mae_output
from maskseg_monai.masking.patches import image_mask_to_patches
from maskseg_monai.metrics.baselines import DEFAULT_SIGMAS, SUPPORTED_FILLS, baseline_fill, fit_baselines
from maskseg_monai.metrics.masking import mps_hit_rates
from maskseg_monai.metrics.reconstruction import reconstruct_image, reconstruction_metrics, region_psnr
from maskseg_monai.metrics.segmentation import (
    SIZE_THRESHOLDS,
    evaluate_segmentation,
    size_bucket_names,
    small_object_mask,
    summarize_metrics,
)
from maskseg_monai.utils import as_bool

__all__ = [
    "DEFAULT_SMALL_AREA",
    "DEFAULT_SMALL_DILATION",
    "DEFAULT_BASELINE_CROPS",
    "GLOBAL_METRICS",
    "REGION_METRICS",
    "SCORED_REGIONS",
    "BASELINE_METRICS",
    "GAIN_METRICS",
    "LESION_METRICS",
    "REPORTED_KEYS",
    "baseline_columns",
    "check_small_region",
    "describe_small_region",
    "describe_baselines",
    "fit_cell_baselines",
    "evaluate_cell",
    "score_label_maps",
    "MPS_METRICS",
    "lesion_patches",
    "evaluate_mps",
]

#: small-object threshold in pixels (2D) / voxels (3D): per-class connected components of fewer pixels are small.
#: It is fixed in pixels, the same for every patch size (64 px is e.g. an 8 x 8 square, 512 voxels an 8^3 cube).
DEFAULT_SMALL_AREA: dict[int, int] = {2: 64, 3: 512}
#: the small objects are grown by this many pixels (voxels) to include their rims
DEFAULT_SMALL_DILATION = 2
#: training crops the Gaussian sigma and the global mean are fitted on
DEFAULT_BASELINE_CROPS = 64


GLOBAL_METRICS = ("psnr_masked", "ssim_masked", "psnr_all", "ssim_all")


REGION_METRICS = ("psnr_masked_small", "psnr_masked_rest")


#: model PSNRs that are compared with every fill: all masked pixels, masked pixels of the small objects
SCORED_REGIONS = ("psnr_masked", "psnr_masked_small")


def baseline_columns(metric: str) -> tuple[list[str], list[str]]:
    """The columns that go with a model PSNR column: each fill's score, then the model's gain over each.

    Example:
        >>> baseline_columns("psnr_masked")[1]
        ['gain_global_mean_psnr_masked', 'gain_visible_mean_psnr_masked', 'gain_gaussian_psnr_masked']
    """
    return [f"{fill}_{metric}" for fill in SUPPORTED_FILLS], [f"gain_{fill}_{metric}" for fill in SUPPORTED_FILLS]


#: ``<fill>_<region>`` for every fill and scored region
BASELINE_METRICS = tuple(c for m in SCORED_REGIONS for c in baseline_columns(m)[0])
#: ``gain_<fill>_<region>`` = model - fill, in dB
GAIN_METRICS = tuple(c for m in SCORED_REGIONS for c in baseline_columns(m)[1])
#: the lesion region's model PSNR, fills and gains (only with ``lesion_classes``)
LESION_METRICS = ("psnr_masked_lesion", *(c for cols in baseline_columns("psnr_masked_lesion") for c in cols))
#: masked-patch-selection quality of a network's own masking (:func:`evaluate_mps`)
MPS_METRICS = ("mps_hit_rate", "chance_hit_rate", "category_precision", "category_recall")


#: bundle keys whose resolved values are recorded in results.md
REPORTED_KEYS = (
    "img_size", "batch_size", "steps_per_epoch", "learning_rate", "weight_decay", "warmup_epochs", "loss_region",
    "norm_pix_loss", "hidden_size", "mlp_dim", "num_layers", "num_heads",
    "decoder_hidden_size", "decoder_mlp_dim", "decoder_num_layers", "decoder_num_heads",
)  # fmt: skip


def check_small_region(small_area: int | None, dilation: int | None, spatial_dims: int) -> tuple[int, int]:
    """The small-object threshold and dilation, defaults filled in (:data:`DEFAULT_SMALL_AREA`,
    :data:`DEFAULT_SMALL_DILATION`).

    Raises:
        ValueError: on ``small_area < 1`` or ``dilation < 0`` (naming ``--small_area`` / ``--small_dilation``).
    """
    area = DEFAULT_SMALL_AREA.get(spatial_dims, 64) if small_area is None else int(small_area)
    dilation = DEFAULT_SMALL_DILATION if dilation is None else int(dilation)
    if area < 1:
        raise ValueError(f"--small_area must be at least 1, got {area}.")
    if dilation < 0:
        raise ValueError(f"--small_dilation must be >= 0, got {dilation}.")
    return area, dilation


def describe_small_region(small_area: int, dilation: int, spatial_dims: int) -> str:
    """The small-object region in words, for ``results.md``.

    Example:
        >>> describe_small_region(64, 2, 2)
        'connected components (per class) of fewer than 64 pixels, dilated by 2 pixels (fixed for every patch size)'
    """
    unit = "pixels" if spatial_dims == 2 else "voxels"
    grown = f", dilated by {dilation} {unit}" if dilation else ""
    return f"connected components (per class) of fewer than {small_area} {unit}{grown} (fixed for every patch size)"


def fit_cell_baselines(
    parser: ConfigParser, mask_ratio: float, seed: int, num_crops: int = DEFAULT_BASELINE_CROPS
) -> dict[str, Any]:
    """Fit the Gaussian sigma and the global mean of a cell on TRAINING crops, never on validation images.

    The same fit as the bundles' ``validate#baselines``
    (``fit_baselines(sample_crops(@train#dataset.data, @train#preprocessing, 64, @seed), @patch_size,
    @val_mask_ratio, @seed)``, here on ``train#datalist`` so that the training set is not cached), at the
    evaluation's ``mask_ratio`` and ``seed``, which may differ from the bundle's validation ratio
    and training seed (the ablation evaluates every variant at one ratio; the experiments keep the evaluation
    masks, and so the baselines, the same for every training seed).

    Args:
        parser: the cell's bundle config (e.g. the parser of its finished workflow): ``train#datalist``,
            ``train#preprocessing`` (random crop of the model's input size included) and ``patch_size``.
        mask_ratio: the ratio of the evaluation masks.
        seed: seed of the crops and of their masks.
        num_crops: training crops drawn (:func:`~maskseg_monai.data.sample_crops`).

    Returns:
        :func:`~maskseg_monai.metrics.fit_baselines`: ``{"sigma", "global_mean", "num_images"}``.
    """
    crops = sample_crops(
        parser.get_parsed_content("train#datalist"), parser.get_parsed_content("train#preprocessing"), num_crops, seed
    )
    return fit_baselines(crops, parser.get_parsed_content("patch_size"), mask_ratio, seed)


def describe_baselines(num_crops: int, seed: int, fitted: Mapping[str, Mapping[str, Any]]) -> str:
    """How the baselines were made, for ``results.md``.

    Args:
        num_crops: training crops the fits used.
        seed: seed of the crops and their masks.
        fitted: cell description (e.g. ``"patch 8, ratio 0.5"``) -> :func:`fit_cell_baselines` result.
    """
    fits = "; ".join(
        f"{name}: sigma {fit['sigma']:g} px, global mean {[round(float(v), 4) for v in fit['global_mean']]}"
        for name, fit in fitted.items()
    )
    return (
        "Fills that need no learning, scored on the same masked pixels as the model (`<fill>_<metric>`; "
        "`gain_<fill>_<metric>` = model minus fill, dB): `global_mean`, each channel's mean over the training "
        "crops; `visible_mean`, each image's mean over its own visible pixels; `gaussian`, normalised Gaussian "
        f"convolution of the visible pixels, its sigma chosen from {list(DEFAULT_SIGMAS)} px as the best masked "
        f"PSNR on {num_crops} TRAINING crops (`train#datalist` through `train#preprocessing`, seed {seed}) masked "
        f"at the cell's patch size and evaluation ratio; never on validation images. Fitted: {fits or 'none'}."
    )


@torch.no_grad()
def evaluate_cell(
    network: torch.nn.Module,
    images: Sequence[torch.Tensor],
    labels: Sequence[torch.Tensor] | None,
    class_names: Mapping[int, str],
    seed: int,
    small_area: int,
    baselines: Mapping[str, Any],
    norm_pix_loss: bool = False,
    batch_size: int = 8,
    device: torch.device | str = "cpu",
    mask_ratio: float | None = None,
    lesion_classes: Sequence[int] | None = None,
    small_dilation: int = DEFAULT_SMALL_DILATION,
) -> dict[str, float]:
    """Reconstruction quality of one trained network on fixed masks, overall, by object size and by class, and
    that of every fill of :data:`~maskseg_monai.metrics.baselines.SUPPORTED_FILLS` on the same masks.

    Masks come from :class:`~maskseg_monai.inferers.SeededMaskInferer` ``(seed, mask_ratio)``: the i-th image gets
    the same mask in every evaluation of the same patch grid and ratio, whatever the network's own masking policy
    (AMLP's MPS is bypassed). Extra output channels after the pixel mask (AMLP's maps) are ignored. The fills
    are :func:`~maskseg_monai.metrics.baseline_fill` of the validation images on the network output's own masks.

    Args:
        network: a trained :class:`~maskseg_monai.networks.MaskedAutoencoderViT` (or a subclass).
        images: validation images ``[C, *spatial]`` in [0, 1].
        labels: their label maps ``[1, *spatial]`` (integers, 0 = background), or ``None``: the region and class
            metrics are then NaN.
        class_names: class index -> name; one ``psnr_masked_<name>`` per entry.
        seed: mask seed.
        small_area: components (per class) with fewer pixels are small objects (a fixed number of pixels, not
            tied to the patch size; :data:`DEFAULT_SMALL_AREA`).
        baselines: ``{"sigma", "global_mean"}`` fitted on training images (:func:`fit_cell_baselines`).
        norm_pix_loss: whether the network predicts per-patch normalised pixels.
        batch_size: images per forward pass.
        device: where to run.
        mask_ratio: ratio of the masks. Defaults to the network's current ``mask_ratio``.
        lesion_classes: label values that make up the *lesion* region; when given, :data:`LESION_METRICS` are
            added.
        small_dilation: the small objects are grown by this many pixels (their rims). Defaults to 2.

    Returns:
        ``{"psnr_masked", "ssim_masked", "psnr_all", "ssim_all", "psnr_masked_small", "psnr_masked_rest",
        "psnr_masked_<class>"..., "<fill>_psnr_masked", "<fill>_psnr_masked_small", "gain_<fill>_psnr_masked",
        "gain_<fill>_psnr_masked_small", "gaussian_sigma"}`` (plus :data:`LESION_METRICS`), each the mean over
        images (region PSNRs: over images where the region has masked pixels; NaN when none has). A gain is the
        model's mean minus the fill's mean over the same images.

    Raises:
        ValueError: when ``images`` is empty, ``labels`` does not pair with it, or ``baselines`` lacks ``sigma`` or
            ``global_mean``.
    """
    missing = [k for k in ("sigma", "global_mean") if k not in baselines]
    if missing:
        raise ValueError(f"baselines lacks {missing}: fit them on training crops with fit_cell_baselines.")
    network.eval()
    inferer = SeededMaskInferer(seed, mask_ratio)
    scored = [*SCORED_REGIONS, *(("psnr_masked_lesion",) if lesion_classes is not None else ())]
    per_image: dict[str, list[torch.Tensor]] = {}
    for x, y in iter_batches(images, labels, batch_size, device):
        recon, _, pixel_mask = reconstruct_image(inferer(x, network), x, network.patch_size, norm_pix_loss)
        values = reconstruction_metrics(recon, x, pixel_mask)
        regions = {"psnr_masked": pixel_mask}
        if y is not None:
            small = small_object_mask(y, small_area, dilation=small_dilation)
            regions["psnr_masked_small"] = pixel_mask * small
            values["psnr_masked_small"] = region_psnr(recon, x, regions["psnr_masked_small"])
            values["psnr_masked_rest"] = region_psnr(recon, x, pixel_mask * (1 - small))
            if lesion_classes is not None:
                lesion = torch.isin(y, torch.as_tensor(list(lesion_classes), dtype=y.dtype, device=y.device))
                regions["psnr_masked_lesion"] = pixel_mask * lesion
                values["psnr_masked_lesion"] = region_psnr(recon, x, regions["psnr_masked_lesion"])
            for k, name in class_names.items():
                values[f"psnr_masked_{name}"] = region_psnr(recon, x, pixel_mask * (y == k))
        for fill in SUPPORTED_FILLS:
            filled = baseline_fill(fill, x, pixel_mask, baselines["sigma"], baselines["global_mean"])
            for metric, region in regions.items():
                values[f"{fill}_{metric}"] = region_psnr(filled, x, region)
        for key, v in values.items():
            per_image.setdefault(key, []).append(v.float().cpu())
    result = {key: float(torch.cat(v).nanmean()) for key, v in per_image.items()}
    fills = [c for m in scored for c in baseline_columns(m)[0]]
    for key in (*REGION_METRICS, *scored, *fills, *(f"psnr_masked_{n}" for n in class_names.values())):
        result.setdefault(key, float("nan"))
    for metric in scored:
        for fill, gain in zip(*baseline_columns(metric)):
            result[gain] = result[metric] - result[fill]
    result["gaussian_sigma"] = float(baselines["sigma"])
    return result


def score_label_maps(
    preds: Sequence[torch.Tensor],
    labels: Sequence[torch.Tensor],
    num_classes: int,
    class_names: Sequence[str] | None = None,
    size_thresholds: Sequence[int] = SIZE_THRESHOLDS,
    iou_threshold: float = 0.5,
) -> dict[str, float]:
    """Segmentation scores of predicted label maps, averaged over images, with ``dice_small`` added.

    Each pair is one-hot encoded (MONAI's :func:`~monai.networks.utils.one_hot`) and scored by
    :func:`~maskseg_monai.metrics.evaluate_segmentation` (background excluded); :func:`summarize_metrics` averages
    over images. Images may differ in size.

    Args:
        preds: predicted label maps ``[1, *spatial]`` (integers ``0 .. num_classes - 1``), one per image.
        labels: ground-truth label maps ``[1, *spatial]``, paired with ``preds``.
        num_classes: number of classes, background included.
        class_names: one name per class for the per-class columns. Defaults to the class indices.
        size_thresholds: object-size bucket edges in pixels/voxels; the first bucket is "small".
        iou_threshold: IoU of a detection match.

    Returns:
        ``dice``, ``dice_<bucket>``, ``f1``, ``precision``, ``recall``, the per-class keys and ``n_*`` counts of
        :func:`evaluate_segmentation`, plus ``dice_small``: the Dice of the smallest size bucket.

    Raises:
        ValueError: when ``preds`` is empty or does not pair with ``labels``.

    Example:
        >>> y = torch.zeros(1, 8, 8, dtype=torch.long); y[:, 1:3, 1:3] = 1
        >>> m = score_label_maps([y], [y], 2)
        >>> m["dice"], m["dice_small"], m["f1"]
        (1.0, 1.0, 1.0)
    """
    if not preds or len(preds) != len(labels):
        raise ValueError(f"expected one label map per prediction, got {len(preds)} predictions, {len(labels)} labels.")
    rows: list[dict[str, float]] = []
    for pred, label in zip(preds, labels):
        rows += evaluate_segmentation(
            one_hot(torch.as_tensor(pred)[None].long(), num_classes),
            one_hot(torch.as_tensor(label)[None].long(), num_classes),
            class_names=class_names, size_thresholds=size_thresholds, iou_threshold=iou_threshold,
        )  # fmt: skip
    summary = summarize_metrics(rows)
    summary["dice_small"] = summary.get(f"dice_{size_bucket_names(size_thresholds)[0]}", math.nan)
    return summary


def lesion_patches(
    labels: torch.Tensor, lesion_classes: Sequence[int], patch_size: Sequence[int] | int
) -> torch.Tensor:
    """Patches holding at least one lesion pixel.

    Args:
        labels: label maps ``[B, 1, *spatial]``.
        lesion_classes: the label values that count as lesion.
        patch_size: the network's patch size.

    Returns:
        ``[B, L]`` float, 1 = the patch holds a pixel of a lesion class.
    """
    classes = torch.as_tensor(list(lesion_classes), dtype=labels.dtype, device=labels.device)
    return image_mask_to_patches(torch.isin(labels, classes).float(), patch_size)


@torch.no_grad()
def evaluate_mps(
    network: torch.nn.Module,
    images: Sequence[torch.Tensor],
    labels: Sequence[torch.Tensor] | None,
    lesion_classes: Sequence[int],
    mask_ratio: float,
    seed: int = 0,
    batch_size: int = 8,
    device: torch.device | str = "cpu",
) -> dict[str, float]:
    """Masked-patch-selection quality: how often the network's own masking policy masks lesion patches.

    The network runs in eval mode without a mask, so it masks as it would in training (AMLP: MPS when
    ``use_mps``, else uniformly random), at ``mask_ratio``; the random parts (tie-breaking, random masking) are
    drawn from ``seed``, on a forked RNG. The network's ``mask_ratio`` is restored afterwards.

    Args:
        network: a trained :class:`~maskseg_monai.networks.AMLPMaskedAutoencoder` (or a masked autoencoder whose
            output has no category map: the category values are then NaN).
        images: validation images ``[C, *spatial]``.
        labels: their label maps ``[1, *spatial]``, or ``None`` (every value is then NaN).
        lesion_classes: label values that count as lesion.
        mask_ratio: the masking ratio.
        seed: seed of the random parts of the masking.
        batch_size: images per forward pass.
        device: where to run.

    Returns:
        :func:`~maskseg_monai.metrics.mps_hit_rates` over all validation images.
    """
    if labels is None:
        return dict.fromkeys(MPS_METRICS, float("nan"))
    net = getattr(network, "module", network)
    network.eval()
    device = torch.device(device)
    gpus = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    masks, lesions, categories = [], [], []
    previous = net.mask_ratio
    try:
        net.mask_ratio = mask_ratio
        with torch.random.fork_rng(devices=gpus):
            torch.manual_seed(seed)
            for x, y in iter_batches(images, labels, batch_size, device):
                out = split_mae_output(network(x).float(), x.shape[1], getattr(net, "output_extras", ()))
                masks.append(image_mask_to_patches(out.mask, net.patch_size))
                lesions.append(lesion_patches(y, lesion_classes, net.patch_size))
                if as_bool(getattr(net, "use_mps", False)) and "category" in out.extras:
                    categories.append(image_mask_to_patches(out.extras["category"], net.patch_size))
    finally:
        net.mask_ratio = previous
    return mps_hit_rates(torch.cat(masks), torch.cat(lesions), torch.cat(categories) if categories else None)
