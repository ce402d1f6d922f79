"""Data for maskseg_monai: offline demo datasets, synthetic small-object scenes and dataset manifests."""

from maskseg_monai.data.demo import (
    DATALIST_NAME,
    DEMO_SETS,
    demo_dicom_series_dir,
    ensure_demo_datalist,
    materialize_demo,
)
from maskseg_monai.data.dicom import (
    IMAGE_EXTENSIONS,
    SERIES_UID_KEY,
    holds_only,
    inference_inputs,
    list_dicom_series,
    output_names,
    resolve_dicom_series,
)
from maskseg_monai.data.dicom_seg import write_dicom_seg
from maskseg_monai.data.dicom_series import (
    DEFAULT_SPACING_TOLERANCE,
    DicomSeries,
    check_dicom_series,
    read_resampled_series,
)
from maskseg_monai.data.manifest import ManifestError, VerificationError, load_manifest, prepare_dataset
from maskseg_monai.data.sampling import repeat_dataset, sample_crops
from maskseg_monai.data.synthetic import BLOOD_CLASSES, MIN_SCENE_SIZE, blood_smear_scene
from maskseg_monai.data.validate import (
    FAILED_KEY,
    SUPPORTED_CACHE_MODES,
    CheckedCacheDataset,
    CheckedDataset,
    CheckedPersistentDataset,
    SkippingDataset,
    checked_dataset,
    datalist_class_sets,
    datalist_labels,
    load_datalist,
)

__all__ = [
    "FAILED_KEY",
    "SUPPORTED_CACHE_MODES",
    "CheckedDataset",
    "CheckedPersistentDataset",
    "checked_dataset",
    "SkippingDataset",
    "DEFAULT_SPACING_TOLERANCE",
    "DicomSeries",
    "check_dicom_series",
    "read_resampled_series",
    "IMAGE_EXTENSIONS",
    "SERIES_UID_KEY",
    "holds_only",
    "inference_inputs",
    "list_dicom_series",
    "output_names",
    "datalist_class_sets",
    "datalist_labels",
    "load_datalist",
    "resolve_dicom_series",
    "write_dicom_seg",
    "BLOOD_CLASSES",
    "CheckedCacheDataset",
    "DATALIST_NAME",
    "DEMO_SETS",
    "MIN_SCENE_SIZE",
    "ManifestError",
    "VerificationError",
    "blood_smear_scene",
    "demo_dicom_series_dir",
    "ensure_demo_datalist",
    "load_manifest",
    "materialize_demo",
    "prepare_dataset",
    "repeat_dataset",
    "sample_crops",
]
