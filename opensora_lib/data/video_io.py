"""Reading and writing video and image files with PyAV.

Frames are always ``uint8`` arrays shaped ``[T, H, W, 3]`` (RGB). Containers by suffix:

- ``.mp4``: H.264. The default ``lossless=True`` stores RGB losslessly (``libx264rgb``, qp 0), so a
  dataset decodes to exactly the frames that were rendered; ``lossless=False`` writes the widely playable
  ``yuv420p`` form (``crf`` controls quality) used for generated samples shown in browsers.
- ``.gif``: palette GIF (lossy colour quantisation), for reports.
- ``.png`` / ``.jpg``: a single frame (``T == 1``).

Every failure to read (missing, empty, corrupt or frameless file) raises :class:`VideoFileError`, whose message
names the file.
"""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}
VIDEO_SUFFIXES = {".mp4", ".gif", ".mkv", ".webm", ".mov", ".avi"}


class VideoFileError(RuntimeError):
    """A video or image file could not be read; ``path`` names it."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


def is_image_path(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def _check_file(path: Path) -> None:
    if not path.exists():
        raise VideoFileError(path, "file does not exist")
    if path.is_dir():
        raise VideoFileError(path, "is a directory, not a file")
    if path.stat().st_size == 0:
        raise VideoFileError(path, "file is empty (0 bytes)")


def _as_frames(frames: np.ndarray) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim == 3:
        frames = frames[None]
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be [T, H, W, 3], got {frames.shape}")
    if frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8, got {frames.dtype}")
    return np.ascontiguousarray(frames)


def yuv420p_frame(image: np.ndarray) -> av.VideoFrame:
    """uint8 RGB [H, W, 3] (even H, W) -> a yuv420p frame: BT.601 limited range (ffmpeg's default for this
    conversion), chroma averaged over 2x2 pixels. Converted here because PyAV's own rgb24 -> yuv420p gave a
    different encoded file for the same frames in 2 of 600 tries (it reads memory outside the image), which broke
    "same seed, same file"; this gave the same file in 600 of 600."""
    x = image.astype(np.float64)
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    h, w = r.shape
    y = 16 + (65.481 * r + 128.553 * g + 24.966 * b) / 255
    u = 128 + (-37.797 * r - 74.203 * g + 112.0 * b) / 255
    v = 128 + (112.0 * r - 93.786 * g - 18.214 * b) / 255
    u, v = (c.reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3)) for c in (u, v))  # [H/2, W/2]
    frame = av.VideoFrame(w, h, "yuv420p")
    for plane, values in zip(frame.planes, (y, u, v)):
        rows = np.zeros((values.shape[0], plane.line_size), np.uint8)  # each row padded to the plane's stride
        rows[:, : values.shape[1]] = np.clip(np.rint(values), 0, 255)
        plane.update(rows)
    return frame


def write_video(
    path: str | os.PathLike,
    frames: np.ndarray,
    fps: float = 24,
    lossless: bool = True,
    crf: int = 18,
) -> Path:
    """Write ``frames [T, H, W, 3] uint8`` to ``path`` (container chosen by suffix). Returns the path."""
    path = Path(path)
    frames = _as_frames(frames)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix.lower()
    t, h, w, _ = frames.shape
    if suffix in IMAGE_SUFFIXES:
        if t != 1:
            raise ValueError(f"{path}: an image file holds one frame, got {t}")
        codec = {".png": "png", ".bmp": "bmp", ".webp": "png"}.get(suffix, "mjpeg")
        with av.open(str(path), "w", format="image2") as container:
            stream = container.add_stream(codec)
            stream.width, stream.height = w, h
            stream.pix_fmt = "rgb24" if codec in ("png", "bmp") else "yuvj444p"
            frame = av.VideoFrame.from_ndarray(frames[0], format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        return path

    rate = Fraction(fps).limit_denominator(1000)
    with av.open(str(path), "w") as container:
        if suffix == ".gif":
            stream = container.add_stream("gif", rate=rate)
            stream.pix_fmt = "rgb8"
        elif lossless:
            stream = container.add_stream("libx264rgb", rate=rate)
            stream.pix_fmt = "rgb24"
            stream.options = {"qp": "0", "preset": "medium"}
        else:
            if h % 2 or w % 2:
                raise ValueError(f"{path}: yuv420p H.264 needs even sizes, got {h}x{w}")
            stream = container.add_stream("libx264", rate=rate)
            stream.pix_fmt = "yuv420p"
            stream.options = {"crf": str(crf), "preset": "medium"}
        stream.width, stream.height = w, h
        for image in frames:
            if stream.pix_fmt == "yuv420p":  # converted here: PyAV's rgb24 -> yuv420p (swscale) is not repeatable
                frame = yuv420p_frame(image)
            else:
                frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def probe_video(path: str | os.PathLike) -> dict:
    """Container facts without decoding every frame: ``num_frames, fps, height, width, duration``.

    ``num_frames`` is counted by demuxing packets when the container does not store it.
    """
    path = Path(path)
    _check_file(path)
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoFileError(path, "has no video stream")
            stream = container.streams.video[0]
            fps = float(stream.average_rate or stream.guessed_rate or 0) if not is_image_path(path) else 0.0
            num_frames = stream.frames
            if not num_frames:
                num_frames = sum(1 for p in container.demux(stream) if p.size)
            height, width = stream.codec_context.height, stream.codec_context.width
    except VideoFileError:
        raise
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        raise VideoFileError(path, f"cannot be opened as video ({type(exc).__name__}: {exc})") from exc
    if num_frames == 0:
        raise VideoFileError(path, "contains no frames")
    return {
        "num_frames": int(num_frames),
        "fps": fps,
        "height": int(height),
        "width": int(width),
        "duration": num_frames / fps if fps else 0.0,
    }


def sample_indices(total: int, num: int) -> np.ndarray:
    """``num`` frame indices spread evenly (linspace, rounded down) over ``total`` frames."""
    if total <= 0:
        raise ValueError("total must be positive")
    return np.linspace(0, total - 1, num).astype(np.int64)


def read_video(
    path: str | os.PathLike,
    num_frames: int | None = None,
    indices: np.ndarray | list[int] | None = None,
) -> np.ndarray:
    """Decode ``path`` to ``uint8 [T, H, W, 3]``.

    All frames by default; ``num_frames=n`` takes n linspace-sampled frames over the whole clip;
    ``indices`` takes exactly those frames (out-of-range indices are an error naming the file).
    """
    path = Path(path)
    _check_file(path)
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoFileError(path, "has no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            declared = stream.frames  # 0 when the container does not say
            frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
    except VideoFileError:
        raise
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        raise VideoFileError(path, f"is corrupt or not a video ({type(exc).__name__}: {exc})") from exc
    if not frames:
        raise VideoFileError(path, "contains no decodable frames")
    if declared and len(frames) < declared:
        raise VideoFileError(path, f"is truncated: the container declares {declared} frames, {len(frames)} decode")
    video = np.stack(frames)  # [T, H, W, 3]
    if num_frames is not None and indices is not None:
        raise ValueError("give num_frames or indices, not both")
    if num_frames is not None:
        indices = sample_indices(len(video), num_frames)
    if indices is not None:
        indices = np.asarray(indices, dtype=np.int64)
        if indices.size and (indices.min() < 0 or indices.max() >= len(video)):
            raise VideoFileError(path, f"has {len(video)} frames; asked for frame {int(indices.max())}")
        video = video[indices]
    return video
