"""Inference: sliding-window prediction, post-processing and the MONAI Label infer task."""
