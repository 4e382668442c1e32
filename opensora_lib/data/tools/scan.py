"""Scan a folder of videos: probe every file with PyAV, keep the usable ones, reject the rest with a reason.

Every regular file under the folder (recursively, hidden files and caption/metadata side files excluded) ends
up in exactly one of two lists: accepted (with its probe facts) or rejected (with the reason). Nothing raises:
a file that cannot be opened, is empty (0 bytes), has no video stream (e.g. audio only), has no frames, whose
first frame cannot be decoded, whose frame size is zero, that holds fewer frames than its container declares
(truncated), or that is shorter than ``min_seconds`` / ``min_frames`` is rejected and the scan goes on.

Probing demuxes the video packets (no full decode) and decodes the first frame:

- ``num_frames``: video packets with data (one per frame for the codecs we meet);
- ``duration``: (last pts - first pts + last frame duration) x time base, i.e. what the timestamps say, so a
  variable-frame-rate file gets its real length; falls back to frames / average rate without timestamps;
- ``fps``: ``num_frames / duration`` (the average rate), ``vfr``: whether the frame intervals differ by more
  than 5 % (the cutter then resamples to a constant rate);
- ``height, width``: the coded frame size.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import av
import numpy as np

# Side files that describe videos rather than being videos: never probed, never rejected.
SIDE_SUFFIXES = {".txt", ".csv", ".json", ".md", ".yaml", ".yml", ".tsv"}

SCAN_COLUMNS = ["path", "status", "reason", "size_bytes", "container", "codec", "num_frames", "fps",
                "duration", "height", "width", "vfr", "has_audio"]
REJECT_COLUMNS = ["path", "stage", "reason"]


@dataclass
class ScanParams:
    """What makes a file usable. ``0`` switches a limit off."""

    min_seconds: float = 0.0
    min_frames: int = 2  # a single frame (a still image) is not a video

    @classmethod
    def from_dict(cls, params: dict) -> "ScanParams":
        return cls(**{k: v for k, v in params.items() if k in cls.__dataclass_fields__})


def list_candidates(folder: str | os.PathLike) -> list[Path]:
    """Every regular file under ``folder`` (recursive, sorted), without hidden files and side files."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"video folder not found: {folder}")
    out = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts):
            continue
        if path.is_file() and path.suffix.lower() not in SIDE_SUFFIXES:
            out.append(path)
    return out


class ProbeError(Exception):
    """A file is not usable; the message is the reason written to the rejects CSV."""


def probe_file(path: str | os.PathLike) -> dict:
    """Facts about one video file (see the module docstring); raises :class:`ProbeError` with the reason."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ProbeError(f"cannot stat file ({exc.strerror or exc})") from exc
    if size == 0:
        raise ProbeError("empty file (0 bytes)")
    try:
        with av.open(str(path)) as container:
            fmt = container.format.name
            has_audio = bool(container.streams.audio)
            if not container.streams.video:
                raise ProbeError("no video stream (audio only)" if has_audio else "no video stream")
            stream = container.streams.video[0]
            codec = stream.codec_context.name
            height, width = int(stream.codec_context.height or 0), int(stream.codec_context.width or 0)
            time_base = stream.time_base
            rate = float(stream.average_rate or stream.guessed_rate or 0)
            declared = int(stream.frames or 0)  # 0 when the container does not say
            pts, durations = [], []
            for packet in container.demux(stream):
                if packet.size:
                    pts.append(packet.pts)
                    durations.append(packet.duration or 0)
    except ProbeError:
        raise
    except (av.error.FFmpegError, OSError, ValueError, UnicodeDecodeError) as exc:
        raise ProbeError(f"cannot be opened as a video ({describe(exc)})") from exc
    num_frames = len(pts)
    if num_frames == 0:
        raise ProbeError("video stream has no frames")
    if declared and num_frames < declared:
        raise ProbeError(f"truncated: the container declares {declared} frames, {num_frames} are present")
    if height <= 0 or width <= 0:
        raise ProbeError(f"zero frame size ({height}x{width})")
    try:
        first = decode_first_frame(path)
    except (av.error.FFmpegError, OSError, ValueError, StopIteration) as exc:
        raise ProbeError(f"first frame cannot be decoded ({describe(exc)})") from exc
    if first.shape[0] != height or first.shape[1] != width:  # trust the decoder over the header
        height, width = first.shape[:2]

    vfr = False
    if time_base is not None and all(p is not None for p in pts) and num_frames > 1:
        ticks = np.sort(np.asarray(pts, dtype=np.int64))
        deltas = np.diff(ticks)
        last = durations[int(np.argmax(pts))] or int(np.median(deltas))  # the last frame lasts this long
        duration = float((ticks[-1] - ticks[0] + max(last, 0)) * time_base)
        med = float(np.median(deltas)) if len(deltas) else 0.0
        vfr = bool(len(deltas) > 1 and med > 0 and (deltas.max() - deltas.min()) > 0.05 * med + 1)
    else:
        duration = num_frames / rate if rate else 0.0
    fps = num_frames / duration if duration > 0 else rate
    return {
        "size_bytes": int(size), "container": fmt, "codec": codec, "num_frames": int(num_frames),
        "fps": round(float(fps), 4), "duration": round(float(duration), 4), "height": int(height),
        "width": int(width), "vfr": vfr, "has_audio": has_audio,
    }


def describe(exc: BaseException) -> str:
    """An exception as ``Type: message``, without the file name FFmpeg errors repeat (the row names it)."""
    message = getattr(exc, "strerror", None) if isinstance(exc, av.error.FFmpegError) else None
    return f"{type(exc).__name__}: {message or exc}"


def decode_first_frame(path: str | os.PathLike) -> np.ndarray:
    with av.open(str(path)) as container:
        frame = next(container.decode(video=0))
        return frame.to_ndarray(format="rgb24")


def iter_frames(path: str | os.PathLike) -> Iterator[tuple[np.ndarray, float]]:
    """Decode a video frame by frame: ``(rgb uint8 [H, W, 3], time in seconds from the first frame)``.

    Times come from the presentation timestamps (so variable frame rates are honoured); frames without a
    timestamp are placed one average frame interval after the previous one.
    """
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        rate = float(stream.average_rate or stream.guessed_rate or 25)
        t0, last = None, None
        for frame in container.decode(stream):
            if frame.pts is not None and frame.time_base:
                t = float(frame.pts * frame.time_base)
                t0 = t if t0 is None else t0
                t -= t0
            else:
                t = last + 1.0 / rate if last is not None else 0.0
            last = t
            yield frame.to_ndarray(format="rgb24"), t


def read_frames_at(path: str | os.PathLike, indices) -> np.ndarray:
    """Decode only the frames at ``indices`` (in decode order) of a video: uint8 ``[len(indices), H, W, 3]``.

    Keeps memory to the frames asked for, so it is safe on long, large videos."""
    wanted = sorted(set(int(i) for i in indices))
    if not wanted:
        raise ValueError("no frame indices")
    got: dict[int, np.ndarray] = {}
    for i, (frame, _) in enumerate(iter_frames(path)):
        if i in wanted:
            got[i] = frame
        if i >= wanted[-1]:
            break
    missing = [i for i in wanted if i not in got]
    if missing:
        raise ValueError(f"{path}: has {len(got) and max(got) + 1} decodable frames; asked for frame {missing[0]}")
    return np.stack([got[int(i)] for i in indices])


def scan_folder(folder: str | os.PathLike, params: ScanParams | None = None,
                progress: bool = False) -> tuple[list[dict], list[dict]]:
    """Probe every candidate file. Returns ``(scan_rows, reject_rows)``: one scan row per file (status ``ok`` or
    ``rejected``, probe facts when known) and one reject row (``path, stage="scan", reason``) per rejected file.
    Paths are absolute."""
    from tqdm.auto import tqdm

    params = params or ScanParams()
    rows, rejects = [], []
    for path in tqdm(list_candidates(folder), desc="scan", disable=not progress):
        row = {c: "" for c in SCAN_COLUMNS}
        row["path"] = str(path.resolve())
        try:
            info = probe_file(path)
            row.update(info)
            short = []
            if params.min_frames and info["num_frames"] < params.min_frames:
                short.append(f"{info['num_frames']} frame(s) < min_frames {params.min_frames}")
            if params.min_seconds and info["duration"] < params.min_seconds:
                short.append(f"{info['duration']:.3f} s < min_seconds {params.min_seconds}")
            if short:
                raise ProbeError("too short: " + "; ".join(short))
            row["status"] = "ok"
        except ProbeError as exc:
            row["status"], row["reason"] = "rejected", str(exc)
            rejects.append({"path": row["path"], "stage": "scan", "reason": str(exc)})
        rows.append(row)
    return rows, rejects
