"""Checking the data tools against the synthetic world, where the truth is known.

Camera motion: the world's ``camera_motion`` column is the truth for the ``cmotion`` label.

Motion score: the truth is the **mean true pixel speed**: for the same frame pairs the tool looks at, the exact
displacement of every pixel between the two frames (from the sample's camera path and object trajectories:
background pixels follow the camera, pixels covered by an object follow the object as seen through the moving
camera; the topmost object wins), its length averaged over all pixels and divided by the gap: pixels per frame,
the quantity the motion score estimates. We also report the rank correlation with a cruder notion of "how fast
things move", ``max(fastest object speed, camera speed in pixels/frame)`` (zooms: the speed at half the frame's
half-diagonal), which ignores how much of the frame moves.

What the embedded world lets a flow method see: flat backgrounds carry no motion cue (the world keeps their
camera static); gradient backgrounds change by well under one grey level per pixel of camera motion, so their
pans, tilts and zooms are close to invisible; striped backgrounds are one-dimensional textures, whose motion
along the stripes is invisible (the aperture problem), so a pan along diagonal stripes looks like a tilt. Only
checkered backgrounds show the camera fully. :func:`generate_textured_world` renders the same samples with every
gradient or striped background replaced by a checkered one (same colours and period), which is where the tools'
accuracy on *observable* camera motion is measured; metrics are reported per background on the embedded world
too.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from .. import synthetic as S
from ..video_io import write_video
from .motion import CAMERA_LABELS, UNKNOWN, pair_indices

OBSERVABLE_BACKGROUNDS = ("flat", "checkered")


def true_displacement(spec: S.SampleSpec, t0: float, t1: float) -> tuple[np.ndarray, np.ndarray]:
    """Exact displacement ``(dx, dy)`` [H, W] in view pixels of every pixel of frame ``t0`` at frame ``t1``."""
    h, w = spec.height, spec.width
    pan_x, pan_y, zoom = spec.camera(np.array([t0, t1], dtype=np.float64))
    v, u = np.meshgrid(np.arange(h) + 0.5, np.arange(w) + 0.5, indexing="ij")
    x = w / 2 + (u - w / 2) / zoom[0] + pan_x[0]  # world point seen by each pixel at t0
    y = h / 2 + (v - h / 2) / zoom[0] + pan_y[0]
    move_x, move_y = np.zeros((h, w)), np.zeros((h, w))  # world motion of that point (objects only)
    for obj in spec.objects:  # later objects are drawn on top
        vx, vy = obj.velocity()
        inside = S._shape_sdf(obj.shape, x - (obj.x0 + vx * t0), y - (obj.y0 + vy * t0), obj.size) * zoom[0] < 0
        move_x[inside], move_y[inside] = vx * (t1 - t0), vy * (t1 - t0)
    u1 = (x + move_x - pan_x[1] - w / 2) * zoom[1] + w / 2
    v1 = (y + move_y - pan_y[1] - h / 2) * zoom[1] + h / 2
    return u1 - u, v1 - v


def max_speed(spec: S.SampleSpec) -> float:
    """``max(fastest object speed, camera speed)`` in px/frame (zoom: at half the half-diagonal)."""
    objects = max([o.speed for o in spec.objects if o.motion != "static"], default=0.0)
    camera = 0.0
    if spec.camera_motion.startswith(("pan", "tilt")):
        camera = spec.camera_speed
    elif spec.camera_motion.startswith("zoom"):
        camera = spec.camera_speed * 0.25 * math.hypot(spec.height, spec.width)
    return float(max(objects, camera))


def rank(values) -> np.ndarray:
    """Ranks from 1, ties sharing their mean rank."""
    values = np.asarray(values, dtype=np.float64)
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values))
    sorted_values = values[order]
    i = 0
    while i < len(values):
        j = i
        while j + 1 < len(values) and sorted_values[j + 1] == sorted_values[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman(x, y) -> float:
    """Spearman rank correlation (Pearson correlation of the tie-averaged ranks)."""
    if len(x) < 2:
        return float("nan")
    rx, ry = rank(x), rank(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denominator = math.sqrt((rx**2).sum() * (ry**2).sum())
    return float((rx * ry).sum() / denominator) if denominator else float("nan")


def confusion(truth: list[str], predicted: list[str], labels: list[str] | None = None) -> tuple[list[str], np.ndarray]:
    """Confusion matrix ``[len(labels) truth rows, len(labels) predicted columns]`` with ``unknown`` last."""
    labels = list(labels or [l for l in CAMERA_LABELS] + [UNKNOWN])
    for label in set(truth) | set(predicted):
        if label not in labels:
            labels.append(label)
    index = {label: i for i, label in enumerate(labels)}
    matrix = np.zeros((len(labels), len(labels)), dtype=np.int64)
    for t, p in zip(truth, predicted):
        matrix[index[t], index[p]] += 1
    return labels, matrix


def join_truth(clip_rows: list[dict], meta_rows: list[dict], params: S.WorldParams | dict, motion_params) -> list[dict]:
    """One record per scored clip whose ``source`` is a row of the world's CSV (see :func:`truth_record`)."""
    if isinstance(params, dict):
        params = S.WorldParams.from_dict(params)
    by_source = {str(Path(r["path"]).resolve()): r for r in meta_rows}
    records = []
    for clip in clip_rows:
        truth = by_source.get(str(Path(clip["source"]).resolve()))
        if truth is not None:
            records.append(truth_record(clip, truth, params, motion_params))
    return records


def truth_record(clip: dict, truth: dict, params: S.WorldParams, motion_params) -> dict:
    """A clip's scores next to its source's ground truth, with the true speeds over the same frame pairs the
    tool used (mapped to source frames by time, scaled by any resize)."""
    spec = S.spec_from_row(truth, params)
    spec.background = truth["background"]  # a textured-world row re-samples to its original background
    n, fps = int(clip["num_frames"]), float(clip["fps"])
    src_fps, start = float(spec.fps), float(clip["start_s"])
    pairs = pair_indices(n, motion_params.num_pairs, motion_params.pair_gap)
    times = [((start + i / fps) * src_fps, (start + j / fps) * src_fps) for i, j in pairs]
    size_scale = int(clip["height"]) / spec.height
    speeds = [np.hypot(*true_displacement(spec, round(t0), round(t1))).mean() / (j - i) * size_scale
              for (t0, t1), (i, j) in zip(times, pairs)] or [0.0]
    aes_key = "aes" if "aes" in clip else "aes_proxy"
    return {
        "path": clip["path"], "source": clip["source"], "background": spec.background,
        "camera_truth": spec.camera_motion, "cmotion": clip["cmotion"], "flow": float(clip["flow"]),
        "true_mean_speed": float(np.mean(speeds)), "true_max_speed": max_speed(spec) * size_scale,
        "aes": float(clip.get(aes_key, "nan") or "nan"), "num_objects": len(spec.objects),
    }


def metrics(records: list[dict]) -> dict:
    """Camera-motion accuracy (overall, per background, on observable backgrounds), Spearman correlations
    of the motion score with the true speeds, and the confusion matrix."""
    def camera(subset):
        if not subset:
            return None
        return round(float(np.mean([r["cmotion"] == r["camera_truth"] for r in subset])), 4)

    def corr(subset, key):
        if len(subset) < 3:
            return None
        return round(spearman([r["flow"] for r in subset], [r[key] for r in subset]), 4)

    backgrounds = sorted({r["background"] for r in records})
    observable = [r for r in records if r["background"] in OBSERVABLE_BACKGROUNDS]
    labels, matrix = confusion([r["camera_truth"] for r in records], [r["cmotion"] for r in records])
    return {
        "clips": len(records),
        "camera_accuracy": camera(records),
        "camera_accuracy_observable": camera(observable),
        "camera_accuracy_by_background": {b: camera([r for r in records if r["background"] == b])
                                          for b in backgrounds},
        "camera_accuracy_by_truth": {c: camera([r for r in records if r["camera_truth"] == c])
                                     for c in CAMERA_LABELS if any(r["camera_truth"] == c for r in records)},
        "unknown_rate": round(float(np.mean([r["cmotion"] == UNKNOWN for r in records])), 4) if records else None,
        "spearman_mean_speed": corr(records, "true_mean_speed"),
        "spearman_mean_speed_observable": corr(observable, "true_mean_speed"),
        "spearman_mean_speed_by_background": {b: corr([r for r in records if r["background"] == b],
                                                      "true_mean_speed") for b in backgrounds},
        "spearman_max_speed": corr(records, "true_max_speed"),
        "confusion": {"labels": labels, "matrix": matrix.tolist()},
    }


def textured_spec(spec: S.SampleSpec) -> S.SampleSpec:
    """The same sample with a gradient or striped background replaced by a checkered one."""
    if spec.background in ("gradient", "striped"):
        spec.background = "checkered"
    return spec


def generate_textured_world(out_dir: str | Path, params: S.WorldParams | dict, progress: bool = True) -> dict:
    """Like ``synthetic.generate_dataset`` (same samples, same CSV layout) but with every gradient or striped
    background made checkered, so that every camera motion can be seen. Returns the CSV paths."""
    if isinstance(params, dict):
        params = S.WorldParams.from_dict(params)
    out_dir = Path(out_dir)
    rows = []
    for index in tqdm(range(params.num_samples), desc="textured world", disable=not progress):
        spec = textured_spec(S.sample_spec(params, index))
        write_video(out_dir / spec.rel_path, S.render(spec), fps=spec.fps)
        rows.append(S.spec_to_row(spec))
    (out_dir / "world.json").parent.mkdir(parents=True, exist_ok=True)
    (out_dir / "world.json").write_text(json.dumps({**asdict(params), "variant": "textured"}, indent=2) + "\n")
    return {"meta": S.write_csv(out_dir / "meta.csv", rows)}


def score_textured_world(params: S.WorldParams | dict, motion_params, progress: bool = True) -> list[dict]:
    """Render a textured world in memory (no files), run the motion analysis on every video and join the
    truth: the records :func:`metrics` takes. Renders are lossless on disk anyway, so this is what the
    pipeline's scoring sees, without the time spent encoding and cutting."""
    from .motion import analyse_frames

    if isinstance(params, dict):
        params = S.WorldParams.from_dict(params)
    clips, rows = [], []
    for index in tqdm(range(params.num_samples), desc="textured world", disable=not progress):
        spec = textured_spec(S.sample_spec(params, index))
        if spec.kind != "video":
            continue
        row = S.spec_to_row(spec)
        result = analyse_frames(S.render(spec), motion_params)
        clips.append({"path": row["path"], "source": row["path"], "num_frames": spec.num_frames, "fps": spec.fps,
                      "start_s": 0, "height": spec.height, "cmotion": result.cmotion, "flow": result.flow,
                      "aes_proxy": float("nan")})
        rows.append(row)
    return [truth_record(clip, row, params, motion_params) for clip, row in zip(clips, rows)]


def messy_folder(dst: str | Path, sources: list[str | Path]) -> Path:
    """A folder that looks like real life: copies of ``sources`` (with a sidecar caption for the first) next to
    a truncated MP4, random bytes, an empty file, an audio-only WAV and a still image. For demonstrations."""
    import shutil

    import av

    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    for k, src in enumerate(sources):
        shutil.copy(src, dst / f"good_{k}{Path(src).suffix}")
    if sources:
        (dst / "good_0.txt").write_text("A clip with a caption in a sidecar file.\n")
        data = Path(sources[0]).read_bytes()
        (dst / "truncated.mp4").write_bytes(data[: len(data) // 2])
    (dst / "random_bytes.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    (dst / "empty.mov").write_bytes(b"")
    with av.open(str(dst / "voice_memo.wav"), "w") as container:
        stream = container.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 8000), np.int16), format="s16", layout="mono")
        frame.sample_rate = 8000
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    write_video(dst / "poster.png", np.full((1, 32, 32, 3), 200, np.uint8))
    return dst
