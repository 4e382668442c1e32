"""Video VAE speed and memory: encode / decode ms per frame and peak RSS.

Run from the repository root:  .venv/bin/python -m benchmarks.bench_vae  (about 1.5 minutes of
CPU time; more wall time when the machine is shared)

Each measurement runs in its own subprocess so that its peak resident set size is clean:
`peak_rss_mb` is `resource.getrusage(RUSAGE_SELF).ru_maxrss` at the end of the child (model +
input + the operation: optional warm-up and the timed runs), `op_peak_delta_mb` is that minus the RSS just
before the first call (model built, input allocated), i.e. what the operation itself needs.
FLOPs are counted with torch.utils.flop_counter on one extra run and compared with the
measured fp32 matmul ceiling of this machine. Posterior means are used (sample_posterior=False);
fp32, no autocast (bf16 convolutions are much slower than fp32 on this AVX2 CPU).

Writes reports/bench/vae.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

CASES = [
    # name, preset, frames, height, width, timed repeats, warm-up run
    ("embedded_17x64x64", "narrow", 17, 64, 64, 3, True),
    ("240p_17x240x426", "narrow", 17, 240, 426, 1, False),  # seconds per call: no warm-up needed
]


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _worker(spec: dict) -> dict:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from opensora_lib.models.vae import OpenSoraVAE_Narrow, OpenSoraVAE_V1_2

    torch.manual_seed(0)
    factory = {"narrow": OpenSoraVAE_Narrow, "released": OpenSoraVAE_V1_2}[spec["preset"]]
    model = factory().eval()
    t, h, w = spec["frames"], spec["height"], spec["width"]
    lt, lh, lw = model.get_latent_size([t, h, w])
    with torch.no_grad():
        if spec["op"] == "encode":
            inp = torch.rand(1, 3, t, h, w) * 2 - 1

            def op():
                return model.encode(inp, sample_posterior=False)

        else:
            inp = torch.randn(1, model.out_channels, lt, lh, lw)

            def op():
                return model.decode(inp, num_frames=t)

        rss_before = _rss_mb()
        if spec["warmup"]:
            op()
        times = []
        for _ in range(spec["repeats"]):
            start = time.perf_counter()
            out = op()
            times.append(time.perf_counter() - start)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB on Linux
        with FlopCounterMode(display=False) as counter:
            op()
        flops = counter.get_total_flops()
    best = min(times)
    return {
        "op": spec["op"],
        "input_shape": list(inp.shape),
        "output_shape": list(out.shape),
        "seconds_best": round(best, 4),
        "ms_per_frame": round(1000 * best / t, 2),
        "flops": flops,
        "achieved_gflops": round(flops / best / 1e9, 2),
        "rss_before_op_mb": round(rss_before, 1),
        "peak_rss_mb": round(peak, 1),
        "op_peak_delta_mb": round(peak - rss_before, 1),
        "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 3),
        "threads": torch.get_num_threads(),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(_worker(json.loads(args.worker))))
        return

    import torch

    from benchmarks.common import measured_matmul_flops, write_result

    env = dict(os.environ)
    # On a shared 2-core machine OpenMP spin-waiting can make 2 threads ~10x slower.
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    ceiling = measured_matmul_flops(torch.float32)
    results: dict[str, dict] = {}
    for name, preset, frames, height, width, repeats, warmup in CASES:
        results[name] = {}
        for op in ("encode", "decode"):
            spec = dict(preset=preset, frames=frames, height=height, width=width, repeats=repeats, warmup=warmup, op=op)
            proc = subprocess.run(
                [sys.executable, "-m", "benchmarks.bench_vae", "--worker", json.dumps(spec)],
                capture_output=True,
                text=True,
                env=env,
                check=True,
            )
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            r["fraction_of_matmul_ceiling"] = round(r["achieved_gflops"] * 1e9 / ceiling, 3)
            results[name][op] = r
            print(f"{name} {op}: {r['ms_per_frame']} ms/frame, peak RSS {r['peak_rss_mb']} MB "
                  f"(+{r['op_peak_delta_mb']} MB)", flush=True)
    write_result(
        "vae",
        {
            "benchmark": "video VAE encode/decode (posterior means, fp32, batch 1)",
            "memory_method": "subprocess per measurement; resource.getrusage ru_maxrss (peak RSS) "
            "and its delta over the RSS before the first call",
            "omp_wait_policy": env["OMP_WAIT_POLICY"],
            "fp32_matmul_ceiling_gflops": round(ceiling / 1e9, 2),
            "cases": results,
        },
    )


if __name__ == "__main__":
    main()
