"""This machine's matmul ceiling: fp32 GFLOP/s of a plain square matmul, at 1 thread and at all cores.

The report's benchmark board divides each workload's achieved GFLOP/s (where its benchmark counts FLOPs) by
this rate at the workload's thread count. For each thread count, square products of a few sizes are timed,
each the best of BENCH_TRIALS trials (default 5) of a few products: the fastest trial is the one least
disturbed by other jobs on a shared machine, and the best size is the ceiling.

Run from the repo root: `.venv/bin/python -m benchmarks.bench_matmul` (writes reports/bench/matmul.json,
about 10-30 s).
"""

from __future__ import annotations

import os
import time

import torch

from benchmarks.common import measured_matmul_flops, write_result

SIZES = (512, 1024, 2048)
TRIALS = int(os.environ.get("BENCH_TRIALS", "5"))


def repeats_for(n: int) -> int:
    return max(1, (1024 // n) ** 3 * 4)  # about the same work per trial for every size (4 products of 1024^2)


def main() -> None:
    start = time.perf_counter()
    load_before = os.getloadavg()[0]
    cores = os.cpu_count() or 1
    default_threads = torch.get_num_threads()
    by_threads = {}
    for threads in sorted({1, cores}):
        torch.set_num_threads(threads)
        rates = {n: measured_matmul_flops(torch.float32, n=n, repeats=repeats_for(n), trials=TRIALS) / 1e9
                 for n in SIZES}
        best = max(rates, key=rates.get)
        by_threads[str(threads)] = {"gflop_per_s_by_size": {str(n): round(r, 2) for n, r in rates.items()},
                                    "best_size": best}
        print(f"{threads} thread(s): " + ", ".join(f"{n}^2 {r:.1f}" for n, r in rates.items()) + " GFLOP/s",
              flush=True)
    torch.set_num_threads(default_threads)
    write_result("matmul", {
        "what": f"fp32 torch.matmul of square matrices ({', '.join(f'{n}^2' for n in SIZES)}), best of {TRIALS} "
                "trials and of the sizes",
        "gflop_per_s_by_threads": {t: max(v["gflop_per_s_by_size"].values()) for t, v in by_threads.items()},
        "by_threads": by_threads,
        "cpu_cores": cores,
        "trials": TRIALS,
        "load_average_1min_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "wall_s": round(time.perf_counter() - start, 1),
        "note": "a shared machine: the rate is the least disturbed trial, not a guaranteed peak",
    })


if __name__ == "__main__":
    main()
