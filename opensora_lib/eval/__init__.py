"""Evaluation: rule-based prompt-adherence detectors for the synthetic world (`detectors`), the eval-loss grid
(`loss_grid`) and VBench-shaped score tables (`scores`)."""

from .detectors import image_adherence, validate_detectors, video_adherence

__all__ = ["image_adherence", "video_adherence", "validate_detectors"]
