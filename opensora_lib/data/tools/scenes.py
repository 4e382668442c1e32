"""Scene cuts (PySceneDetect) and cutting clips out of a video (PyAV, re-encoded).

Detection follows Open-Sora's ``tools/scene_cut/scene_detect.py``: ``AdaptiveDetector(adaptive_threshold=3.0)``
with ``start_in_scene=True`` (a video without cuts is one scene), decoded through PySceneDetect's PyAV backend.
Scenes are returned in seconds from the first frame (PySceneDetect's timestamp-based timecodes), so variable
frame rates are handled.

Cutting follows ``tools/scene_cut/cut.py`` with PyAV instead of an ffmpeg binary: scenes shorter than
``min_seconds`` are dropped (and reported), scenes longer than ``max_seconds`` keep their first ``max_seconds``,
frames are resampled to ``target_fps`` (default: the source's average rate, which also turns a variable-rate
source into a constant-rate clip) by taking, for each output time, the source frame nearest in time, and
frames whose shorter side exceeds ``shorter_side`` are resized down to it (never up; area interpolation).
The source is decoded once for all its scenes, streaming (one frame held at a time).

Codecs: ``lossless`` (default; H.264 RGB at qp 0, exact pixels, any frame size) or ``h264`` (yuv420p with
``crf``; sizes are rounded down to even numbers, which that format needs).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from .scan import describe, iter_frames


@dataclass
class Scene:
    index: int
    start: float  # seconds from the first frame
    end: float  # exclusive


@dataclass
class CutParams:
    """Scene detection and cutting; ``0`` switches a limit off."""

    adaptive_threshold: float = 3.0
    min_scene_len: int = 15  # frames between two cuts (PySceneDetect's default)
    min_seconds: float = 0.0
    max_seconds: float = 0.0
    target_fps: float = 0.0  # 0: keep the source's average rate
    shorter_side: int = 0  # 0: keep the size
    codec: str = "lossless"  # or "h264"
    crf: int = 18

    def __post_init__(self):
        if self.codec not in ("lossless", "h264"):
            raise ValueError(f"unknown codec {self.codec!r}; use 'lossless' or 'h264'")

    @classmethod
    def from_dict(cls, params: dict) -> "CutParams":
        return cls(**{k: v for k, v in params.items() if k in cls.__dataclass_fields__})


def detect_scenes(path: str | os.PathLike, params: CutParams | None = None) -> list[Scene]:
    """Scenes of a video with PySceneDetect's ``AdaptiveDetector`` (PyAV backend)."""
    from scenedetect import AdaptiveDetector, SceneManager, open_video

    params = params or CutParams()
    video = open_video(str(path), backend="pyav", suppress_output=True)
    if getattr(video, "BACKEND_NAME", "pyav") != "pyav":  # open_video falls back to OpenCV silently
        raise RuntimeError(f"{path}: PySceneDetect did not open the file with PyAV")
    manager = SceneManager()
    manager.add_detector(AdaptiveDetector(adaptive_threshold=params.adaptive_threshold,
                                          min_scene_len=params.min_scene_len))
    manager.detect_scenes(video=video)
    scenes = manager.get_scene_list(start_in_scene=True)
    return [Scene(k, float(start.seconds), float(end.seconds)) for k, (start, end) in enumerate(scenes)]


def output_size(height: int, width: int, shorter_side: int = 0, even: bool = False) -> tuple[int, int]:
    """Frame size after shrinking the shorter side to ``shorter_side`` (never enlarging); ``even`` rounds
    both sides down to even numbers (yuv420p needs them)."""
    if shorter_side and min(height, width) > shorter_side:
        scale = shorter_side / min(height, width)
        height, width = max(1, round(height * scale)), max(1, round(width * scale))
    if even:
        height, width = max(2, height - height % 2), max(2, width - width % 2)
    return height, width


class ClipWriter:
    """Streaming MP4 writer for RGB frames of one size."""

    def __init__(self, path: str | os.PathLike, fps: float, height: int, width: int, codec: str = "lossless",
                 crf: int = 18):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.container = av.open(str(self.path), "w")
        rate = Fraction(fps).limit_denominator(1000)
        if codec == "lossless":
            self.stream = self.container.add_stream("libx264rgb", rate=rate)
            self.stream.pix_fmt = "rgb24"
            self.stream.options = {"qp": "0", "preset": "medium"}
        else:
            self.stream = self.container.add_stream("libx264", rate=rate)
            self.stream.pix_fmt = "yuv420p"
            self.stream.options = {"crf": str(crf), "preset": "medium"}
        self.stream.height, self.stream.width = height, width
        self.count = 0

    def write(self, frame: np.ndarray) -> None:
        for packet in self.stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
            self.container.mux(packet)
        self.count += 1

    def close(self) -> None:
        for packet in self.stream.encode():
            self.container.mux(packet)
        self.container.close()


def plan_scenes(scenes: list[Scene], fps: float, params: CutParams) -> tuple[list[tuple[Scene, int]], list[str]]:
    """Which scenes become clips, with their frame counts at ``fps``; and the reasons the others do not."""
    kept, dropped = [], []
    for scene in scenes:
        length = scene.end - scene.start
        if params.min_seconds and length < params.min_seconds:
            dropped.append(f"scene {scene.index} ({scene.start:.3f}-{scene.end:.3f} s) shorter than "
                           f"min_seconds {params.min_seconds}")
            continue
        if params.max_seconds and length > params.max_seconds:
            length = params.max_seconds
        count = int(round(length * fps))
        if count < 1:
            dropped.append(f"scene {scene.index} ({scene.start:.3f}-{scene.end:.3f} s) has no frame at {fps} fps")
            continue
        kept.append((Scene(scene.index, scene.start, scene.start + count / fps), count))
    return kept, dropped


def cut_video(path: str | os.PathLike, scenes: list[Scene], out_dir: str | os.PathLike, source_fps: float,
              params: CutParams | None = None, stem: str | None = None) -> tuple[list[dict], list[str]]:
    """Write one clip per kept scene to ``out_dir/<stem>_scene-<k>.mp4``.

    Returns ``(clips, problems)``: a dict per written clip (``path, source, scene, start_s, end_s,
    num_frames, fps, height, width``) and a reason per scene that gave no clip (too short, decode error)."""
    params = params or CutParams()
    path = Path(path)
    stem = stem or path.stem
    fps = float(params.target_fps or source_fps)
    if fps <= 0:
        return [], [f"no frame rate known for {path.name}"]
    kept, problems = plan_scenes(scenes, fps, params)
    # Output times, in order: (time, position in `kept`).
    slots = [(scene.start + j / fps, k) for k, (scene, count) in enumerate(kept) for j in range(count)]
    writers: dict[int, ClipWriter] = {}
    done: list[dict] = []
    size = None
    cache: tuple[int, np.ndarray] | None = None

    def emit(frame_id: int, frame: np.ndarray, k: int) -> None:
        nonlocal size, cache
        if size is None:
            size = output_size(frame.shape[0], frame.shape[1], params.shorter_side, even=params.codec == "h264")
        if cache is None or cache[0] != frame_id:
            resized = frame
            if (frame.shape[0], frame.shape[1]) != size:
                resized = cv2.resize(frame, (size[1], size[0]), interpolation=cv2.INTER_AREA)
            cache = (frame_id, resized)
        scene, count = kept[k]
        if k not in writers:
            out = Path(out_dir) / f"{stem}_scene-{scene.index}.mp4"
            writers[k] = ClipWriter(out, fps, size[0], size[1], params.codec, params.crf)
        writers[k].write(cache[1])
        if writers[k].count == count:
            writers.pop(k).close()
            done.append({"path": str(Path(out_dir) / f"{stem}_scene-{scene.index}.mp4"), "source": str(path),
                         "scene": scene.index, "start_s": round(scene.start, 4), "end_s": round(scene.end, 4),
                         "num_frames": count, "fps": round(fps, 4), "height": size[0], "width": size[1]})

    pos = 0
    prev: tuple[int, np.ndarray, float] | None = None
    try:
        for frame_id, (frame, t) in enumerate(iter_frames(path)):
            if prev is not None:
                middle = (prev[2] + t) / 2  # slots before the midpoint are nearer the previous frame
                while pos < len(slots) and slots[pos][0] < middle:
                    emit(prev[0], prev[1], slots[pos][1])
                    pos += 1
            prev = (frame_id, frame, t)
            if pos >= len(slots):
                break
        # The tail of the last scene (up to one source frame interval after the last frame): the last frame.
        while prev is not None and pos < len(slots) and slots[pos][0] < prev[2] + 1.0 / source_fps + 1e-6:
            emit(prev[0], prev[1], slots[pos][1])
            pos += 1
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        problems.append(f"decoding failed at output frame {pos} ({describe(exc)})")
    for k, writer in list(writers.items()):  # clips left unfinished by a decode error
        writer.close()
        writer.path.unlink(missing_ok=True)
        problems.append(f"scene {kept[k][0].index} incomplete ({writer.count}/{kept[k][1]} frames); not kept")
    return done, problems
