"""Data tools speed on this machine: clips per second for each step, on synthetic clips.

Two workloads, rendered into a temporary folder first (not timed):
- "embedded": 60 clips of the embedded world (17-51 frames, 48^2 and 64^2 pixel budgets, 16/24 fps);
- "240p": 6 clips of 51 frames at 240x426 (24 fps), the smallest released resolution.

Steps timed (each over all clips, single process): scan (probe with PyAV), scene detection (PySceneDetect
AdaptiveDetector through PyAV), cut (decode + re-encode, lossless), score (optical-flow motion score and camera
label on 6 pairs, plus the aesthetic proxy on 3 frames). Reported as clips/s and frames/s (source frames).

Run from the repo root: `.venv/bin/python -m benchmarks.bench_data_tools` (writes reports/bench/data_tools.json).
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from benchmarks.common import write_result
from opensora_lib.data import synthetic as S
from opensora_lib.data.tools.motion import MotionParams
from opensora_lib.data.tools.pipeline import ToolParams, score_clip
from opensora_lib.data.tools.scan import scan_folder
from opensora_lib.data.tools.scenes import cut_video, detect_scenes

WORKLOADS = {
    "embedded": S.WorldParams(seed=5, num_samples=int(os.environ.get("BENCH_CLIPS", "60")), still_fraction=0.0),
    "240p": S.WorldParams(seed=5, num_samples=6, still_fraction=0.0, resolutions="240p:102240",
                          aspect_ratios="16:9", min_frames=51, max_frames=51, fps_choices="24", max_duration=3.0),
}


def rate(count: int, frames: int, seconds: float) -> dict:
    return {"seconds": round(seconds, 3), "clips_per_s": round(count / seconds, 2),
            "frames_per_s": round(frames / seconds, 1)}


def bench(name: str, world: S.WorldParams) -> dict:
    params = ToolParams()
    with tempfile.TemporaryDirectory() as tmp:
        S.generate_dataset(tmp, world, progress=False)
        rows, _ = scan_folder(Path(tmp) / "clips")  # warm-up: imports, first file-system pass
        frames = sum(int(r["num_frames"]) for r in rows)
        n = len(rows)

        start = time.perf_counter()
        rows, _ = scan_folder(Path(tmp) / "clips")
        scan_s = time.perf_counter() - start

        detect_scenes(rows[0]["path"], params.cut)  # warm-up: PySceneDetect import
        start = time.perf_counter()
        scenes = [detect_scenes(r["path"], params.cut) for r in rows]
        detect_s = time.perf_counter() - start

        start = time.perf_counter()
        clips = []
        for r, sc in zip(rows, scenes):
            done, _ = cut_video(r["path"], sc, Path(tmp) / "cut", r["fps"], params.cut)
            clips.extend(done)
        cut_s = time.perf_counter() - start

        motion: MotionParams = params.motion
        start = time.perf_counter()
        for c in clips:
            score_clip(c["path"], c["num_frames"], motion)
        score_s = time.perf_counter() - start

    size = f"{rows[0]['height']}x{rows[0]['width']}" if name == "240p" else "48^2/64^2 budgets"
    return {
        "clips": n, "frames": frames, "frame_size": size,
        "scan": rate(n, frames, scan_s),
        "scene_detect": rate(n, frames, detect_s),
        "cut": rate(n, frames, cut_s),
        "score": rate(len(clips), frames, score_s),
        "all_steps": rate(n, frames, scan_s + detect_s + cut_s + score_s),
    }


def main() -> None:
    results = {name: bench(name, world) for name, world in WORKLOADS.items()}
    write_result("data_tools", {
        "workloads": results,
        "notes": "single process; clips/s over all clips of a workload; frames = source frames. 'score' is the "
                 "optical-flow motion score + camera label (6 Farneback pairs) + aes_proxy (3 frames).",
    })


if __name__ == "__main__":
    main()
