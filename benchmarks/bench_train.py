"""Video training throughput: samples/s and peak memory with 1 and 2 processes (DeepSpeed ZeRO-2).

Workload: the embedded training step - STDiT3-S/2 on 17-frame 64x64 clips (latent 4x5x8x8, 80 tokens per sample),
MiniLM captions, 4 samples per process per step, the stage-3 mask ratios, AdamW + EMA. The data is a small synthetic
world rendered into a temp dir; a first untimed pass fills the feature cache (VAE latents, caption states), so the
timed steps measure the training engine, not the VAE. 1 process, then 2 processes under torchrun (gloo on CPU) -
the global batch doubles, so samples/s shows the scaling; each process runs one torch thread.

Run from the repo root: ``.venv/bin/python -m benchmarks.bench_train`` (writes reports/bench/train.json, ~2 min).
Environment: BENCH_STEPS (timed steps, default 6), BENCH_WARMUP (untimed steps, default 2).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STEPS = int(os.environ.get("BENCH_STEPS", "6"))
WARMUP = int(os.environ.get("BENCH_WARMUP", "2"))
BATCH = 4


def _config(csv: str, cache: str) -> dict:
    from opensora_lib.train.engine import MASK_RATIOS

    return {
        "stage": 3, "csv": csv, "buckets": {"64px": {17: [1.0, BATCH]}}, "resolutions": "64px:4096",
        "aspect_ratios": "1:1", "model_preset": "STDiT3-S/2", "mask_ratios": MASK_RATIOS["stage3"],
        "feature_cache": cache, "window": "fixed", "threads": 1, "grad_checkpoint": False, "zero_stage": 2,
        "precision": "auto", "seed": 0, "warmup_steps": 0,
    }


def worker(spec_path: str) -> None:
    """One process of a measurement (also under torchrun): WARMUP untimed steps, STEPS timed steps."""
    import torch

    from opensora_lib.train.engine import VideoTrainConfig, VideoTrainer

    spec = json.loads(Path(spec_path).read_text())
    cfg = VideoTrainConfig.from_dict(spec["config"])
    trainer = VideoTrainer(cfg, progress=False)
    if spec.get("fill"):  # encode every sample once (fixed windows: the same latents every epoch)
        for row, size in enumerate(trainer.dataset.sizes()):
            trainer.features.latent(row, (17, 64, 64), 0)
            for epoch in range(4):
                trainer.features.text_states(trainer.dataset.caption(row, epoch))
        trainer.close()
        return
    trainer.train(spec["warmup"])
    start = time.perf_counter()
    trainer.train(spec["warmup"] + spec["steps"])
    elapsed = time.perf_counter() - start
    timed = trainer.history[spec["warmup"]:]
    result = {
        "rank": trainer.rank,
        "world_size": trainer.world_size,
        "precision": trainer.precision,
        "steps": len(timed),
        "seconds": elapsed,
        "samples": sum(e["samples"] for e in timed),  # all processes
        "step_s": elapsed / len(timed),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_cuda_mib": torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None,
        "params": trainer.num_params,
        "losses": [e["loss"] for e in timed],
    }
    Path(spec["out"]).mkdir(parents=True, exist_ok=True)
    (Path(spec["out"]) / f"rank{trainer.rank}.json").write_text(json.dumps(result))
    trainer.close()


def _env() -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": os.environ.get("DS_ACCELERATOR", "cpu"),
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT", "MASTER_ADDR"):
        env.pop(k, None)
    return env


def measure(tmp: Path, config: dict, nproc: int, fill: bool = False) -> dict | None:
    from opensora_lib.train.engine import free_port

    out = tmp / f"np{nproc}"
    spec = {"config": config, "warmup": WARMUP, "steps": STEPS, "out": str(out), "fill": fill}
    spec_path = tmp / f"spec{nproc}{'_fill' if fill else ''}.json"
    spec_path.write_text(json.dumps(spec))
    if nproc == 1:
        cmd = [sys.executable, "-m", "benchmarks.bench_train", "--worker", str(spec_path)]
    else:
        torchrun = str(Path(sys.executable).parent / "torchrun")
        cmd = [torchrun, "--nproc_per_node", str(nproc), "--master_port", str(free_port()), "-m",
               "benchmarks.bench_train", "--worker", str(spec_path)]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    if proc.returncode:
        raise RuntimeError(f"{cmd} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    if fill:
        return None
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(nproc)]
    r0 = ranks[0]
    return {
        "processes": nproc,
        "global_batch": BATCH * nproc,
        "threads_per_process": config["threads"],
        "precision": r0["precision"],
        "timed_steps": r0["steps"],
        "step_s": round(max(r["step_s"] for r in ranks), 4),
        "samples_per_s": round(r0["samples"] / max(r["seconds"] for r in ranks), 3),
        "peak_rss_mib_per_process": [round(r["peak_rss_mib"], 1) for r in ranks],
        "peak_cuda_mib_per_process": [r["peak_cuda_mib"] for r in ranks],
        "process_wall_s": round(time.perf_counter() - start, 1),
        "losses": [round(x, 5) for x in r0["losses"]],
    }


def main() -> None:
    from benchmarks.common import write_result
    from opensora_lib.data.synthetic import generate_dataset

    with tempfile.TemporaryDirectory(prefix="bench_train_") as d:
        tmp = Path(d)
        paths = generate_dataset(tmp / "world", dict(seed=11, num_samples=24,
                                                     resolutions="64px:4096", aspect_ratios="1:1", min_frames=18,
                                                     max_frames=24, still_fraction=0.0, val_fraction=0.05),
                                 progress=False)
        config = _config(str(paths["train"]), str(tmp / "features"))
        start = time.perf_counter()
        measure(tmp, config, 1, fill=True)
        fill = time.perf_counter() - start
        runs = [measure(tmp, config, n) for n in (1, 2)]
    speedup = runs[1]["samples_per_s"] / runs[0]["samples_per_s"]
    write_result("train", {
        "workload": f"STDiT3-S/2 video training step, 17x64x64 clips (latent 4x5x8x8), batch {BATCH} per process, "
                    "stage-3 masks, DeepSpeed ZeRO-2, torch AdamW (fused), EMA; features cached",
        "timed_steps": STEPS,
        "warmup_steps": WARMUP,
        "cache_fill_process_s": round(fill, 1),
        "runs": runs,
        "samples_per_s_2_vs_1": round(speedup, 3),
        "note": "2 processes on a 2-core machine share the cores with everything else running; each process "
                "uses 1 torch thread. Peak RSS includes the VAE and the MiniLM text encoder.",
    })


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        worker(sys.argv[2])
    else:
        main()
