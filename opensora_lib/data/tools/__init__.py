"""Data tools for real videos: point them at a folder, get an Open-Sora training CSV.

The steps of Open-Sora's data processing (``tools/`` and ``docs/data_processing.md``), in order:

- :mod:`.scan`: probe every file with PyAV; unreadable, empty, audio-only, frameless or too-short files are
  rejected with a reason, nothing stops the run;
- :mod:`.scenes`: scene cuts with PySceneDetect's ``AdaptiveDetector`` and cutting clips with PyAV (min/max
  length, target fps, shorter side);
- :mod:`.motion`: motion score (mean |optical flow|, px/frame) and camera-motion label;
- :mod:`.aesthetic`: the CLIP+MLP aesthetic predictor from local weights, or a clearly named image-quality proxy;
- :mod:`.captions`: captions from sidecar files, a captions CSV or a pluggable captioner, and the score suffixes;
- :mod:`.pipeline`: :func:`run_tools` ties them together and writes the CSVs;
- :mod:`.validate` and :mod:`.figures`: checks against the synthetic world's ground truth, and figures.
"""

from .captions import CaptionTable, Captioner, TemplateCaptioner, score_suffix
from .motion import MotionParams, analyse_frames, analyse_video
from .pipeline import ToolParams, run_tools
from .scan import ScanParams, probe_file, scan_folder
from .scenes import CutParams, cut_video, detect_scenes

__all__ = [
    "CaptionTable", "Captioner", "TemplateCaptioner", "score_suffix", "MotionParams", "analyse_frames",
    "analyse_video", "ToolParams", "run_tools", "ScanParams", "probe_file", "scan_folder", "CutParams",
    "cut_video", "detect_scenes",
]
