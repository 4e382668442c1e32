"""Sequence parallelism on this machine: STDiT3 on 1 vs 2 gloo processes (one CPU thread each).

Workloads (a narrow STDiT3 at the 240p, 51-frame latent 15x30x53 = 6075 tokens, 405 a frame, so
2 ranks hold 203 tokens a frame with one padded token):
- "forward": depth 4, hidden 128, 4 heads, model batch 2 (one prompt with CFG): 1 process, 2 processes
  with Open-Sora's all-to-all cross-attention, 2 processes with local cross-attention;
- "train": depth 2, hidden 128, 4 heads, batch 1, forward + backward + gradient averaging: 1 vs 2.
Each configuration is a `torchrun --standalone` launch of `opensora_lib.parallel.bench_sp` (see there
for what is measured); the step time is the median over BENCH_REPEATS (default 2) after one warm-up.

Run from the repo root: `.venv/bin/python -m benchmarks.bench_sp` (writes reports/bench/sp.json).
"""

from __future__ import annotations

import os
import time

from benchmarks.common import write_result
from opensora_lib.parallel.bench_sp import launch, latent_shape, sp_table, worker_args

REPEATS = int(os.environ.get("BENCH_REPEATS", "2"))


def main() -> None:
    start = time.perf_counter()
    latent = latent_shape(51, 240, 426)
    common = dict(latent=latent, pixels=(240, 426), repeats=REPEATS, warmup=1, threads=1)
    fwd = worker_args(depth=4, hidden=128, heads=4, batch=2, mode="forward", **common)
    fwd_local = worker_args(depth=4, hidden=128, heads=4, batch=2, mode="forward", cross_attn="local", **common)
    train = worker_args(depth=2, hidden=128, heads=4, batch=1, mode="train", **common)
    forward_records = [launch(1, fwd), launch(2, fwd)]
    local_record = launch(2, fwd_local)
    train_records = [launch(1, train), launch(2, train)]
    rows = (
        sp_table(forward_records + [local_record], "240p", 51, round(51 / 24, 1))
        + sp_table(train_records, "240p", 51, round(51 / 24, 1))
    )
    write_result("sp", {
        "workload": "STDiT3 narrow (hidden 128, 4 heads), 240p 51 frames (latent 15x30x53), gloo, 1 thread/process",
        "cpu_cores": os.cpu_count(),
        "table": rows,
        "records": forward_records + [local_record] + train_records,
        "wall_s": round(time.perf_counter() - start, 1),
    })


if __name__ == "__main__":
    main()
