"""STDiT3 speed on this machine: one training step and one CFG sampling step.

Two workloads:
- "embedded": the CPU preset STDiT3-S/2 at the embedded latent size (5 latent frames x 8x8, i.e.
  17 frames of 64x64 pixels), MiniLM-size captions of 32 tokens, training batch 4;
- "240p": a 240x426, 51-frame video (latent [4, 15, 30, 53], 6075 tokens) with the same preset,
  training batch 1.
Sampling is timed per step with classifier-free guidance (model batch 2 = [cond, uncond] of one
prompt). The 240p workload is timed once without warm-up (each call takes tens of seconds).
FLOPs are counted by torch's FlopCounterMode on a meta-device copy (Linear, Conv3d and the attention
products); achieved FLOP/s are compared with a plain fp32 1024^2 matmul on this machine.

Run from the repo root: `.venv/bin/python -m benchmarks.bench_stdit3` (writes reports/bench/stdit3.json).
Environment: BENCH_THREADS (default 1, the matmul ceiling is measured with the same count),
BENCH_REPEATS (default 3, embedded workload).
"""

from __future__ import annotations

import os
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.common import measured_matmul_flops, write_result
from opensora_lib.models.stdit3 import STDiT3_S_2
from opensora_lib.schedulers.rectified_flow import RFlowScheduler

REPEATS = int(os.environ.get("BENCH_REPEATS", "3"))
# One thread by default: on this shared 2-core machine two threads run small models 10-30x slower
# whenever another job holds a core (OpenMP threads wait for each other). BENCH_THREADS=0: torch's default.
THREADS = int(os.environ.get("BENCH_THREADS", "1"))


def make_inputs(B, latent, L, C_cap, num_frames, pixels):
    T, H, W = latent
    x = torch.randn(B, 4, T, H, W)
    y = torch.randn(B, 1, L, C_cap)
    mask = torch.ones(B, L, dtype=torch.long)
    kw = dict(
        fps=torch.full((B,), 24.0),
        height=torch.full((B,), float(pixels[0])),
        width=torch.full((B,), float(pixels[1])),
        num_frames=torch.full((B,), num_frames),
    )
    return x, y, mask, kw


def count_flops(B, latent, L, C_cap, num_frames, pixels, backward: bool) -> int:
    """FLOPs of one forward (+ backward) pass, counted on the meta device (no compute).

    On the meta device scaled_dot_product_attention runs its math decomposition, so the counter sees
    the attention products (QK^T, AV) as bmm besides every Linear and the patch Conv3d.
    """
    with torch.device("meta"):
        model = STDiT3_S_2()
    x, y, _, kw = make_inputs(B, latent, L, C_cap, num_frames, pixels)
    meta = dict(x=x.to("meta"), timestep=torch.full((B,), 700.0, device="meta"), y=y.to("meta"))
    kw["fps"] = kw["fps"].to("meta")  # height/width stay on the CPU: the model reads them with .item()
    with FlopCounterMode(display=False) as counter, torch.set_grad_enabled(backward):
        out = model(**meta, **kw)  # all tokens valid: mask=None is the same computation
        if backward:
            out[:, :4].pow(2).mean().backward()
    return counter.get_total_flops()


def timed(fn, repeats, warmup=1):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench(name, latent, pixels, num_frames, train_batch, L=32, repeats=REPEATS, warmup=1, peak=None):
    torch.manual_seed(0)
    model = STDiT3_S_2()
    C_cap = model.y_embedder.y_embedding.shape[1]
    params = sum(p.numel() for p in model.parameters())
    T, H, W = latent
    S = -(-H // 2) * -(-W // 2)  # tokens per frame
    scheduler = RFlowScheduler(sample_method="logit-normal", use_timestep_transform=True)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, eps=1e-15, weight_decay=0.0)

    # --- training step: forward + backward + AdamW
    x, y, mask, kw = make_inputs(train_batch, latent, L, C_cap, num_frames, pixels)
    model_kwargs = dict(y=y, mask=mask, **kw)
    model.train()

    def train_step():
        loss = scheduler.training_losses(model, x, dict(model_kwargs))["loss"].mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    train_flops = count_flops(train_batch, latent, L, C_cap, num_frames, pixels, backward=True)
    train_s = timed(train_step, repeats, warmup)

    # --- sampling step with CFG: the model on [cond, uncond]
    model.eval()
    xs, ys, masks, kws = make_inputs(2, latent, L, C_cap, num_frames, pixels)
    t = torch.full((2,), 700.0)

    def sample_step():
        with torch.no_grad():
            out = model(xs, t, ys, mask=masks, **kws)
            v_cond, v_uncond = out[:, :4].chunk(2)
            return v_uncond + 7.0 * (v_cond - v_uncond)

    sample_flops = count_flops(2, latent, L, C_cap, num_frames, pixels, backward=False)
    sample_s = timed(sample_step, repeats, warmup)

    return {
        "name": name,
        "preset": "STDiT3-S/2",
        "params": params,
        "latent_shape": [4, *latent],
        "tokens_per_sample": T * S,
        "text_tokens": L,
        "train": {
            "batch": train_batch,
            "step_s": round(train_s, 4),
            "gflop": round(train_flops / 1e9, 2),
            "gflop_per_s": round(train_flops / train_s / 1e9, 2),
            "fraction_of_matmul": round(train_flops / train_s / peak, 3),
        },
        "sample_cfg": {
            "model_batch": 2,
            "step_s": round(sample_s, 4),
            "gflop": round(sample_flops / 1e9, 2),
            "gflop_per_s": round(sample_flops / sample_s / 1e9, 2),
            "fraction_of_matmul": round(sample_flops / sample_s / peak, 3),
            "30_steps_s": round(30 * sample_s, 1),
        },
    }


def main():
    if THREADS > 0:
        torch.set_num_threads(THREADS)
    start = time.perf_counter()
    load_before = os.getloadavg()[0]
    peak = measured_matmul_flops()
    results = [
        bench("embedded 17x64x64 (latent 5x8x8)", (5, 8, 8), (64, 64), 17, train_batch=4, peak=peak),
        bench("240p 51x240x426 (latent 15x30x53)", (15, 30, 53), (240, 426), 51, train_batch=1, repeats=1, warmup=0, peak=peak),
    ]
    write_result(
        "stdit3",
        {
            "matmul_gflop_per_s": round(peak / 1e9, 2),
            "flop_counting": "FlopCounterMode on the meta device (Linear, Conv3d, attention bmm); train = fwd+bwd",
            "workloads": results,
            "wall_s": round(time.perf_counter() - start, 1),
            "threads": torch.get_num_threads(),
            "load_average_1min_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
            "note": "2-core CPU shared with other jobs: timings vary with the machine's load",
        },
    )


if __name__ == "__main__":
    main()
