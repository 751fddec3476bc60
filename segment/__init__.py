"""Segmentation cross-validation and realism of synthetic image-mask pairs (`python -m segment cv | realism`)."""
