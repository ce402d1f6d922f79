"""Ignite handlers of the bundles.

Configs name them ``maskseg_monai.handlers.X``, as MONAI's configs say ``monai.handlers.X``.
"""

from maskseg_monai.handlers.checkpoint import (
    AtomicCheckpointSaver,
    CheckedCheckpointLoader,
    ResumeHandler,
    RNGState,
    find_resume_checkpoint,
)
from maskseg_monai.handlers.degenerate import DegeneratePredictionWarning, degenerate_mask
from maskseg_monai.handlers.freeze_encoder import FreezeEncoderHandler
from maskseg_monai.handlers.inference_report import InferenceReport
from maskseg_monai.handlers.mask_ratio import MaskRatioScheduler
from maskseg_monai.handlers.metrics_saver import OneShotMetricsSaver, SegmentationMetricsSaver
from maskseg_monai.handlers.progress import ProgressBarHandler
from maskseg_monai.handlers.reconstruction import ReconstructionMetricHandler, ReconstructionSaver, save_reconstruction

__all__ = [
    "InferenceReport",
    "AtomicCheckpointSaver",
    "CheckedCheckpointLoader",
    "DegeneratePredictionWarning",
    "FreezeEncoderHandler",
    "MaskRatioScheduler",
    "OneShotMetricsSaver",
    "ProgressBarHandler",
    "RNGState",
    "ReconstructionMetricHandler",
    "ReconstructionSaver",
    "ResumeHandler",
    "SegmentationMetricsSaver",
    "degenerate_mask",
    "find_resume_checkpoint",
    "save_reconstruction",
]
