"""Metrics: reconstruction quality (PSNR/SSIM over masked pixels), segmentation of small objects (Dice by
object size, detection F1) and how well a masking policy hits lesions."""

from maskseg_monai.metrics.baselines import (
    DEFAULT_SIGMAS,
    SUPPORTED_FILLS,
    BaselineReconstructionMetric,
    baseline_fill,
    choose_sigma,
    fit_baselines,
    gaussian_fill,
    visible_mean_fill,
)
from maskseg_monai.metrics.masking import mps_hit_rates
from maskseg_monai.metrics.reconstruction import (
    RECONSTRUCTION_METRICS,
    ReconstructionMetric,
    reconstruct_image,
    reconstruction_metrics,
    region_psnr,
)
from maskseg_monai.metrics.segmentation import (
    SIZE_THRESHOLDS,
    evaluate_segmentation,
    object_metrics,
    size_bucket_names,
    small_object_mask,
    summarize_metrics,
    write_metrics_csv,
)

__all__ = [
    "BaselineReconstructionMetric",
    "DEFAULT_SIGMAS",
    "SUPPORTED_FILLS",
    "baseline_fill",
    "choose_sigma",
    "fit_baselines",
    "gaussian_fill",
    "visible_mean_fill",
    "RECONSTRUCTION_METRICS",
    "ReconstructionMetric",
    "SIZE_THRESHOLDS",
    "evaluate_segmentation",
    "mps_hit_rates",
    "object_metrics",
    "reconstruct_image",
    "reconstruction_metrics",
    "region_psnr",
    "size_bucket_names",
    "small_object_mask",
    "summarize_metrics",
    "write_metrics_csv",
]
