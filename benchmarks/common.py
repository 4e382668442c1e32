"""Shared helpers for `make bench`: this machine's matmul ceiling and JSON output."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import torch

BENCH_DIR = Path(os.environ.get("BENCH_DIR", "reports/bench"))


def measured_matmul_flops(dtype: torch.dtype = torch.float32, n: int = 1024, repeats: int = 10,
                          trials: int = 1) -> float:
    """Achieved FLOP/s of a square n x n matmul on this machine (the ceiling workloads are compared to).

    With ``trials > 1`` the best of that many timings of ``repeats`` products: on a shared machine the fastest
    trial is the one least disturbed by other jobs."""
    a = torch.randn(n, n, dtype=dtype)
    b = torch.randn(n, n, dtype=dtype)
    for _ in range(2):
        a @ b
    best = float("inf")
    for _ in range(trials):
        start = time.perf_counter()
        for _ in range(repeats):
            a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 * repeats / best


def machine_info() -> dict:
    return {
        "platform": platform.platform(),
        "processor": platform.processor(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
    }


def write_result(name: str, result: dict) -> Path:
    """Write `reports/bench/<name>.json` (with machine facts) and print it."""
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    result = {"machine": machine_info(), **result}
    path = BENCH_DIR / f"{name}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return path
