"""maskseg_monai: MONAI extension for masked-image pretraining and segmentation of small structures."""

__version__ = "0.1.0"
