"""From a folder of videos to a training CSV: scan -> scene cut -> clips -> scores -> captions -> CSV.

:func:`run_tools` writes, under ``out_dir``:

- ``scan.csv``: every file found, ``status`` ok / rejected, the reason and the probe facts;
- ``rejects.csv``: one row per thing that did not make it into the training CSV, with the ``stage`` that
  dropped it (``scan``, ``scenes``, ``cut``, ``score``, ``caption``) and the reason;
- ``clips/``: the cut clips (``<source stem>_scene-<k>.mp4``; sources in sub-folders get ``sub__stem``);
- ``clips.csv``: the training CSV: Open-Sora's columns ``path, text, num_frames, height, width, aspect_ratio,
  fps, resolution``, the scores ``flow`` (px/frame), ``cmotion`` and ``aes`` (CLIP+MLP, only with local
  weights) or ``aes_proxy`` (the labelled proxy), then ``caption`` (without suffixes), ``caption_source``,
  ``source``, ``scene``, ``start_s``, ``end_s``. Paths are relative to the CSV, as in the synthetic world.

Nothing in a bad file stops the run: its problem becomes a reject row and the next file is processed.
"""

from __future__ import annotations

import csv
import os
import shutil
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from .aesthetic import ClipAestheticScorer, aes_proxy, frame_points
from .captions import CaptionTable, Captioner, score_suffix
from .motion import MotionParams, analyse_frames, pair_indices
from .scan import REJECT_COLUMNS, SCAN_COLUMNS, ScanParams, describe, read_frames_at, scan_folder
from .scenes import CutParams, cut_video, detect_scenes

OPENSORA_COLUMNS = ["path", "text", "num_frames", "height", "width", "aspect_ratio", "fps", "resolution"]
EXTRA_COLUMNS = ["caption", "caption_source", "source", "scene", "start_s", "end_s"]


@dataclass
class ToolParams:
    """Everything `params/data_tools.yaml` controls; ``0`` / ``""`` switch an option off."""

    # scan and cut
    min_seconds: float = 0.0  # files and scenes shorter than this are rejected
    min_frames: int = 2  # files with fewer frames are rejected (1 = a still image)
    max_seconds: float = 0.0  # longer scenes keep their first max_seconds
    target_fps: float = 0.0  # 0: keep the source's average rate
    shorter_side: int = 0  # shrink larger frames to this shorter side (never enlarge)
    codec: str = "lossless"  # "lossless" (H.264 RGB qp 0) or "h264" (yuv420p, crf)
    crf: int = 18
    adaptive_threshold: float = 3.0
    min_scene_len: int = 15
    # motion
    num_pairs: int = 6
    pair_gap: int = 4
    flow_method: str = "farneback"
    fb_winsize: int = 9
    flow_max_side: int = 256
    activity_threshold: float = 0.5
    static_threshold: float = 0.08
    zoom_in_threshold: float = 0.7
    zoom_out_threshold: float = 0.3
    # aesthetic: both paths local, else the proxy
    clip_path: str = ""
    aes_mlp_path: str = ""
    # captions
    captions_csv: str = ""
    require_caption: bool = True  # clips without a caption go to the rejects
    aes_in_caption: str = "auto"  # "auto": the CLIP+MLP score when computed; "proxy": the proxy; "none"
    score_drop_prob: float = 0.2
    cmotion_drop_prob: float = 0.0
    seed: int = 42

    def __post_init__(self):
        if self.aes_in_caption not in ("auto", "proxy", "none"):
            raise ValueError("aes_in_caption must be 'auto', 'proxy' or 'none'")
        if bool(self.clip_path) != bool(self.aes_mlp_path):
            raise ValueError("give both clip_path and aes_mlp_path (local paths) or neither")

    @classmethod
    def from_dict(cls, params: dict) -> "ToolParams":
        unknown = sorted(set(params) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"unknown data_tools param(s) {unknown}; known: {sorted(cls.__dataclass_fields__)}")
        return cls(**params)

    @property
    def scan(self) -> ScanParams:
        return ScanParams(min_seconds=self.min_seconds, min_frames=self.min_frames)

    @property
    def cut(self) -> CutParams:
        return CutParams(adaptive_threshold=self.adaptive_threshold, min_scene_len=self.min_scene_len,
                         min_seconds=self.min_seconds, max_seconds=self.max_seconds, target_fps=self.target_fps,
                         shorter_side=self.shorter_side, codec=self.codec, crf=self.crf)

    @property
    def motion(self) -> MotionParams:
        return MotionParams(num_pairs=self.num_pairs, pair_gap=self.pair_gap, method=self.flow_method,
                            fb_winsize=self.fb_winsize,
                            flow_max_side=self.flow_max_side, activity_threshold=self.activity_threshold,
                            static_threshold=self.static_threshold, zoom_in_threshold=self.zoom_in_threshold,
                            zoom_out_threshold=self.zoom_out_threshold)


def write_rows(path: str | os.PathLike, rows: list[dict], columns: list[str], relative_to: Path | None = None,
               path_columns: tuple[str, ...] = ("path",)) -> Path:
    """A CSV with ``columns``; ``path_columns`` are written relative to ``relative_to`` (default: the CSV's
    folder)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    base = (relative_to or path.parent).resolve()
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        for row in rows:
            row = dict(row)
            for c in path_columns:
                if row.get(c):
                    row[c] = os.path.relpath(Path(row[c]).resolve(), base)
            writer.writerow({c: _fmt(row.get(c, "")) for c in columns})
    return path


def _fmt(value):
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.4f}".rstrip("0").rstrip(".") if value == value else ""
    return value


def _clip_stem(source: Path, root: Path) -> str:
    rel = source.resolve().relative_to(root.resolve())
    return "__".join(rel.with_suffix("").parts)


def score_clip(path: str, num_frames: int, motion_params: MotionParams,
               scorer: ClipAestheticScorer | None = None) -> tuple[dict, np.ndarray]:
    """Scores of one clip file: ``{flow, cmotion, aes | aes_proxy}`` and the three aesthetic frames."""
    pairs = pair_indices(num_frames, motion_params.num_pairs, motion_params.pair_gap)
    points = frame_points(num_frames)
    needed = sorted({i for pair in pairs for i in pair} | set(points))
    frames = dict(zip(needed, read_frames_at(path, needed)))
    motion = analyse_frames(frames, motion_params, pairs)
    picked = np.stack([frames[i] for i in points])
    scores = {"flow": motion.flow, "cmotion": motion.cmotion}
    if scorer is not None:
        scores["aes"] = scorer.score_frames(picked)
    else:
        scores["aes_proxy"] = aes_proxy(picked)
    return scores, picked


def run_tools(input_dir: str | os.PathLike, out_dir: str | os.PathLike, params: ToolParams | dict | None = None,
              captioner: Captioner | None = None, progress: bool = True) -> dict:
    """Run every tool on ``input_dir`` and write the outputs under ``out_dir`` (see the module docstring).

    Returns a summary: output paths, counts, reject reasons by stage and seconds spent per stage."""
    if isinstance(params, dict):
        params = ToolParams.from_dict(params)
    params = params or ToolParams()
    input_dir, out_dir = Path(input_dir), Path(out_dir)
    clips_dir = out_dir / "clips"
    if input_dir.resolve() == clips_dir.resolve() or clips_dir.resolve() in input_dir.resolve().parents:
        raise ValueError(f"the input folder {input_dir} lies inside the output clips folder {clips_dir}")
    if clips_dir.exists():
        shutil.rmtree(clips_dir)  # our own output: stale clips of an earlier run must not linger
    out_dir.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    start = time.perf_counter()
    scan_rows, rejects = scan_folder(input_dir, params.scan, progress=progress)
    timings["scan"] = time.perf_counter() - start

    start = time.perf_counter()
    cut_params = params.cut
    clips: list[dict] = []
    for row in tqdm([r for r in scan_rows if r["status"] == "ok"], desc="scenes + cut", disable=not progress):
        source = Path(row["path"])
        try:
            scenes = detect_scenes(source, cut_params)
        except Exception as exc:  # noqa: BLE001 - any failure of a third-party detector is this file's problem
            rejects.append({"path": str(source), "stage": "scenes", "reason": describe(exc)})
            continue
        done, problems = cut_video(source, scenes, clips_dir, row["fps"], cut_params, _clip_stem(source, input_dir))
        clips.extend(done)
        rejects.extend({"path": str(source), "stage": "cut", "reason": p} for p in problems)
    timings["cut"] = time.perf_counter() - start

    start = time.perf_counter()
    scorer = ClipAestheticScorer(params.clip_path, params.aes_mlp_path) if params.clip_path else None
    table = CaptionTable(params.captions_csv or None)
    rng = np.random.default_rng(params.seed)
    motion_params = params.motion
    out_rows = []
    for clip in tqdm(clips, desc="scores + captions", disable=not progress):
        try:
            scores, frames = score_clip(clip["path"], clip["num_frames"], motion_params, scorer)
        except Exception as exc:  # noqa: BLE001
            rejects.append({"path": clip["path"], "stage": "score", "reason": describe(exc)})
            continue
        found = table.lookup(clip["source"], clip["path"])
        if found is None and captioner is not None:
            found = (captioner.caption(frames, clip["path"]).strip(), "captioner")
        caption, where = found if found and found[0] else ("", "")
        if not caption and params.require_caption:
            rejects.append({"path": clip["path"], "stage": "caption",
                            "reason": "no caption (no sidecar .txt, no row in the captions CSV, no captioner)"})
            continue
        aes_for_text = {"auto": scores.get("aes"), "proxy": scores.get("aes", scores.get("aes_proxy")),
                        "none": None}[params.aes_in_caption]
        text = score_suffix(caption, rng, aes=aes_for_text, flow=scores["flow"], cmotion=scores["cmotion"],
                            score_drop_prob=params.score_drop_prob, cmotion_drop_prob=params.cmotion_drop_prob)
        h, w = clip["height"], clip["width"]
        out_rows.append({**clip, **scores, "text": text, "caption": caption, "caption_source": where,
                         "aspect_ratio": f"{h / w:.4f}", "resolution": h * w})
    timings["score"] = time.perf_counter() - start

    aes_column = "aes" if scorer is not None else "aes_proxy"
    clip_columns = OPENSORA_COLUMNS + ["flow", "cmotion", aes_column] + EXTRA_COLUMNS
    paths = {
        "scan": write_rows(out_dir / "scan.csv", scan_rows, SCAN_COLUMNS),
        "rejects": write_rows(out_dir / "rejects.csv", rejects, REJECT_COLUMNS),
        "clips": write_rows(out_dir / "clips.csv", out_rows, clip_columns, path_columns=("path", "source")),
    }
    reasons = Counter(r["stage"] for r in rejects)
    return {
        "paths": {k: str(v) for k, v in paths.items()},
        "files": len(scan_rows),
        "files_ok": sum(r["status"] == "ok" for r in scan_rows),
        "clips_cut": len(clips),
        "clips_in_csv": len(out_rows),
        "rejects_by_stage": dict(sorted(reasons.items())),
        "aes_column": aes_column,
        "seconds": {k: round(v, 3) for k, v in timings.items()},
        "params": asdict(params),
    }


def read_rows(path: str | os.PathLike, path_columns: tuple[str, ...] = ("path",)) -> list[dict]:
    """Rows of a CSV written by :func:`run_tools`, with ``path_columns`` made absolute (they are stored
    relative to the CSV). For ``clips.csv`` pass ``("path", "source")``."""
    path = Path(path)
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        for c in path_columns:
            if row.get(c) and not Path(row[c]).is_absolute():
                row[c] = str((path.parent / row[c]).resolve())
    return rows
