"""Reconstruction evaluation of one trained cell on the shared validation set, with fixed-seed masks."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from maskseg_monai.experiments.validation import iter_batches
from maskseg_monai.inferers import SeededMaskInferer
from maskseg_monai.metrics.reconstruction import reconstruct_image, reconstruction_metrics, region_psnr
from maskseg_monai.metrics.segmentation import small_object_mask

__all__ = [
    "DEFAULT_SMALL_AREA",
    "GLOBAL_METRICS",
    "REGION_METRICS",
    "BASELINE_METRICS",
    "REPORTED_KEYS",
    "evaluate_cell",
]

#: small-object threshold in pixels (2D) / voxels (3D): the area of an 8x8 patch / volume of an 8x8x8 patch
DEFAULT_SMALL_AREA: dict[int, int] = {2: 64, 3: 512}


GLOBAL_METRICS = ("psnr_masked", "ssim_masked", "psnr_all", "ssim_all")


REGION_METRICS = ("psnr_masked_small", "psnr_masked_rest")


BASELINE_METRICS = ("baseline_psnr_masked", "baseline_psnr_masked_small")


#: bundle keys whose resolved values are recorded in results.md
REPORTED_KEYS = (
    "img_size", "batch_size", "learning_rate", "weight_decay", "warmup_epochs", "loss_region", "norm_pix_loss",
    "hidden_size", "mlp_dim", "num_layers", "num_heads",
    "decoder_hidden_size", "decoder_mlp_dim", "decoder_num_layers", "decoder_num_heads",
)  # fmt: skip


@torch.no_grad()
def evaluate_cell(
    network: torch.nn.Module,
    images: Sequence[torch.Tensor],
    labels: Sequence[torch.Tensor] | None,
    class_names: Mapping[int, str],
    seed: int,
    small_area: int,
    norm_pix_loss: bool = False,
    batch_size: int = 8,
    device: torch.device | str = "cpu",
    mask_ratio: float | None = None,
    lesion_classes: Sequence[int] | None = None,
) -> dict[str, float]:
    """Reconstruction quality of one trained network on fixed masks, overall, by object size and by class.

    Masks come from :class:`~maskseg_monai.inferers.SeededMaskInferer` ``(seed, mask_ratio)``: the i-th image gets
    the same mask in every evaluation of the same patch grid and ratio, whatever the network's own masking policy
    (AMLP's MPS is bypassed). Extra output channels after the pixel mask (AMLP's maps) are ignored.

    Args:
        network: a trained :class:`~maskseg_monai.networks.MaskedAutoencoderViT` (or a subclass).
        images: validation images ``[C, *spatial]`` in [0, 1].
        labels: their label maps ``[1, *spatial]`` (integers, 0 = background), or ``None``: the region and class
            metrics are then NaN.
        class_names: class index -> name; one ``psnr_masked_<name>`` per entry.
        seed: mask seed.
        small_area: components (per class) with fewer pixels are small objects.
        norm_pix_loss: whether the network predicts per-patch normalised pixels.
        batch_size: images per forward pass.
        device: where to run.
        mask_ratio: ratio of the masks. Defaults to the network's current ``mask_ratio``.
        lesion_classes: label values that make up the *lesion* region; when given, ``psnr_masked_lesion`` and
            ``baseline_psnr_masked_lesion`` are added.

    Returns:
        ``{"psnr_masked", "ssim_masked", "psnr_all", "ssim_all", "psnr_masked_small", "psnr_masked_rest",
        "baseline_psnr_masked", "baseline_psnr_masked_small", "psnr_masked_<class>"...}``, each the mean over
        images (region PSNRs: over images where the region has masked pixels; NaN when none has). The
        ``baseline_*`` values score a model that learned nothing: every masked pixel predicted as the mean of
        the image's visible pixels, on the same masks; a trained network should beat them.

    Raises:
        ValueError: when ``images`` is empty or ``labels`` does not pair with it.
    """
    network.eval()
    inferer = SeededMaskInferer(seed, mask_ratio)
    per_image: dict[str, list[torch.Tensor]] = {}
    for x, y in iter_batches(images, labels, batch_size, device):
        recon, _, pixel_mask = reconstruct_image(inferer(x, network), x, network.patch_size, norm_pix_loss)
        values = reconstruction_metrics(recon, x, pixel_mask)
        # no-learning reference: each channel's mean over the visible pixels, everywhere
        visible, dims = 1 - pixel_mask, tuple(range(2, x.ndim))
        baseline = ((x * visible).sum(dims, keepdim=True) / visible.sum(dims, keepdim=True).clamp_min(1)).expand_as(x)
        values["baseline_psnr_masked"] = region_psnr(baseline, x, pixel_mask)
        if y is not None:
            small = small_object_mask(y, small_area)
            values["psnr_masked_small"] = region_psnr(recon, x, pixel_mask * small)
            values["psnr_masked_rest"] = region_psnr(recon, x, pixel_mask * (1 - small))
            values["baseline_psnr_masked_small"] = region_psnr(baseline, x, pixel_mask * small)
            if lesion_classes is not None:
                lesion = torch.isin(y, torch.as_tensor(list(lesion_classes), dtype=y.dtype, device=y.device))
                values["psnr_masked_lesion"] = region_psnr(recon, x, pixel_mask * lesion)
                values["baseline_psnr_masked_lesion"] = region_psnr(baseline, x, pixel_mask * lesion)
            for k, name in class_names.items():
                values[f"psnr_masked_{name}"] = region_psnr(recon, x, pixel_mask * (y == k))
        for key, v in values.items():
            per_image.setdefault(key, []).append(v.float().cpu())
    result = {key: float(torch.cat(v).nanmean()) for key, v in per_image.items()}
    lesion_keys = ("psnr_masked_lesion", "baseline_psnr_masked_lesion") if lesion_classes is not None else ()
    for key in (*REGION_METRICS, *BASELINE_METRICS, *lesion_keys, *(f"psnr_masked_{n}" for n in class_names.values())):
        result.setdefault(key, float("nan"))
    return result
