"""Sampling speed and memory at the embedded size: seconds per rectified-flow step and peak RSS of a 30-step
generation (STDiT3-S/2 with classifier-free guidance, the narrow VAE, MiniLM captions; fresh weights, which cost
the same as trained ones).

Run from the repository root:  .venv/bin/python -m benchmarks.bench_sample  (about a minute of CPU time)

Each case runs `opensora_lib.sample.generate` end to end in its own subprocess (so its peak resident set size,
`resource.getrusage(RUSAGE_SELF).ru_maxrss`, is its own) and reports the three stages' wall times (text states,
latents, pixels), seconds per sampling step (the latent stage's model calls, timed separately over the same 30
steps after the end-to-end run has warmed the process up: one CFG-doubled forward pass each), and the RSS before
and the peak over the generation. Writes reports/bench/sample.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

CASES = [
    # name, resolution, aspect ratio, frames
    ("48px_1x1_17f", "48px", "1:1", 17),
    ("64px_16x9_17f", "64px", "16:9", 17),
]
STEPS = 30


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _worker(spec: dict) -> dict:
    import torch

    torch.set_num_threads(spec["threads"])
    from opensora_lib.models.stdit3 import STDiT3_S_2
    from opensora_lib.models.vae import OpenSoraVAE_Narrow, save_vae
    from opensora_lib.sample import generate, image_size, load_model, save_model
    from opensora_lib.schedulers.rectified_flow import RFLOW

    tmp = tempfile.mkdtemp(prefix="bench_sample_")
    torch.manual_seed(0)
    model_path = save_model(f"{tmp}/model.pt", STDiT3_S_2())
    vae_path = save_vae(f"{tmp}/vae.pt", OpenSoraVAE_Narrow())
    rss_start = _rss_mb()

    # end to end: three stages
    t0 = time.perf_counter()
    rec = generate(dict(prompts=["A red circle moves quickly right across a blue background. The camera is static."],
                        model=str(model_path), vae=str(vae_path), out=f"{tmp}/out", resolution=spec["resolution"],
                        aspect_ratio=spec["aspect_ratio"], num_frames=spec["frames"], steps=STEPS, formats=("mp4",)))[0]
    total = time.perf_counter() - t0
    peak_generate = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    # the sampling loop alone, same shapes: seconds per step
    model, _ = load_model(model_path)
    h, w = image_size(spec["resolution"], spec["aspect_ratio"])
    z = torch.randn(1, 4, 5 if spec["frames"] == 17 else 1, h // 8, w // 8)
    y = torch.randn(1, 1, model.config["model_max_length"], model.config["caption_channels"])
    mask = torch.ones(1, model.config["model_max_length"], dtype=torch.long)
    mask[:, 24:] = 0
    args = {k: torch.tensor([float(v)]) for k, v in dict(height=h, width=w, num_frames=spec["frames"], fps=24,
                                                         ar=h / w).items()}
    sampler = RFLOW(num_sampling_steps=STEPS, use_timestep_transform=True)
    t0 = time.perf_counter()
    sampler.sample(model, z, y, mask, None, args, progress=False)
    per_step = (time.perf_counter() - t0) / STEPS
    return {
        "height": h, "width": w, "frames": spec["frames"], "steps": STEPS, "cfg": 7.0,
        "seconds_per_step": per_step,
        "seconds_total": total,
        "seconds_by_stage": rec["seconds"],
        "peak_rss_mb": peak_generate,
        "rss_before_generate_mb": rss_start,
        "threads": spec["threads"],
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    if args.worker:
        print("RESULT " + json.dumps(_worker(json.loads(args.worker))))
        return 0

    from benchmarks.common import write_result

    results = {}
    for name, res, ratio, frames in CASES:
        spec = {"resolution": res, "aspect_ratio": ratio, "frames": frames, "threads": args.threads}
        proc = subprocess.run([sys.executable, "-m", "benchmarks.bench_sample", "--worker", json.dumps(spec)],
                              capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if proc.returncode or line is None:
            raise RuntimeError(f"{name} failed:\n{proc.stderr[-3000:]}")
        results[name] = json.loads(line[len("RESULT "):])
    write_result("sample", {
        "what": "30-step generation (STDiT3-S/2 + CFG, narrow VAE, MiniLM), fresh weights, fp32 CPU",
        "cases": results,
    })
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
