"""Applications around the bundles: MONAI Label (``python -m maskseg_monai.apps.label``)."""
