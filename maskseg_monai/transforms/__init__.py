"""Transforms of the bundles: checked loading, medical-image I/O (NIfTI, DICOM series, DICOM SEG), superpixels."""

from maskseg_monai.transforms.checks import CheckedLoadImaged, CheckImaged, CheckLabeld
from maskseg_monai.transforms.io import SUPPORTED_DICOM_READERS, LoadMedicalImaged, SaveSegmentationd
from maskseg_monai.transforms.superpixel import SUPPORTED_SUPERPIXELS, SuperpixelLabeld

__all__ = [
    "CheckImaged",
    "CheckLabeld",
    "CheckedLoadImaged",
    "LoadMedicalImaged",
    "SUPPORTED_DICOM_READERS",
    "SUPPORTED_SUPERPIXELS",
    "SaveSegmentationd",
    "SuperpixelLabeld",
]
