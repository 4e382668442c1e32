"""Time STDiT3 with and without sequence parallelism: one worker per process, launched by torchrun.

    torchrun --standalone --nproc_per_node 2 -m opensora_lib.parallel.bench_sp --out sp2.json
    python -m opensora_lib.parallel.bench_sp --out sp1.json          # one process, no SP

From Python (a notebook, `benchmarks/bench_sp.py`): `launch(processes, worker_args(...))` runs the
worker under torchrun and returns its record; `sp_table(records)` turns records into the seed
report's table (speed-up against the one-process row); `plot_sp(rows, path)` draws it.

Every rank builds the same model (seed 0) and the same inputs (a CFG-sized batch of one video
latent), the model is split over all ranks (sp_size = world size unless --sp-size), and each timed
step is one forward (`--mode forward`, sampling) or forward + backward + gradient averaging
(`--mode train`). A step's time is the slowest rank's (median over the repeats; `step_s_min`: the
fastest repeat). Memory per process: on CUDA the allocator's peak; on CPU the growth of the
resident set over the runs (VmHWM after the runs minus VmRSS before the first one, with the
kernel's peak counter reset in between), i.e. activations and communication buffers. CPU time
(`cpu_s_per_step_per_rank`) and the time and bytes inside collectives are recorded per rank.
Rank 0 writes one JSON record (and, with --save-output, the output tensor for exactness checks).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist

from opensora_lib.models.stdit3 import STDiT3
from opensora_lib.parallel.sequence_parallel import CommStats, average_gradients, init_distributed


def _proc_status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM) of this process; False where unsupported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def latent_frames(num_frames: int, micro_frame_size: int = 17, time_factor: int = 4) -> int:
    """Latent frames of the Open-Sora 1.2 VAE: ceil(17/4) = 5 per full 17-frame chunk, ceil(r/4) for
    a remainder r (51 -> 15, 1 -> 1)."""
    full, rest = divmod(num_frames, micro_frame_size)
    return full * -(-micro_frame_size // time_factor) + -(-rest // time_factor)


def latent_shape(num_frames: int, height: int, width: int) -> tuple[int, int, int]:
    """Latent (T, H, W) of a pixel video: the VAE's temporal map above and an 8x spatial factor."""
    return latent_frames(num_frames), height // 8, width // 8


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--caption-channels", type=int, default=384)
    ap.add_argument("--text-tokens", type=int, default=32)
    ap.add_argument("--latent", default="15,30,53", help="latent T,H,W (240p 51 frames: 15,30,53)")
    ap.add_argument("--pixels", default="240,426", help="pixel height,width (position-embedding scale)")
    ap.add_argument("--batch", type=int, default=2, help="model batch (2 = one prompt with CFG)")
    ap.add_argument("--mode", choices=("forward", "train"), default="forward")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process")
    ap.add_argument("--sp-size", type=int, default=0, help="SP group size (0: the whole world)")
    ap.add_argument("--cross-attn", choices=("all_to_all", "local"), default="all_to_all")
    ap.add_argument("--out", default=None, help="JSON record (rank 0)")
    ap.add_argument("--save-output", default=None, help="save rank 0's output tensor here (forward mode)")
    return ap.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    state = init_distributed(sp_size=args.sp_size or world)
    device = state.device
    T, H, W = (int(v) for v in args.latent.split(","))
    ph, pw = (float(v) for v in args.pixels.split(","))
    B, L = args.batch, args.text_tokens

    torch.manual_seed(0)
    model = STDiT3(
        depth=args.depth, hidden_size=args.hidden, num_heads=args.heads, qk_norm=True,
        caption_channels=args.caption_channels, model_max_length=max(L, 1), class_dropout_prob=0.0,
    ).to(device)
    model.train(args.mode == "train")
    if state.sp_group is not None:
        model.set_sequence_parallel(state.sp_group, cross_attn_all_to_all=args.cross_attn == "all_to_all")
    g = torch.Generator().manual_seed(1)
    x = torch.randn(B, 4, T, H, W, generator=g).to(device)
    y = torch.randn(B, 1, L, args.caption_channels, generator=g).to(device)
    timestep = torch.full((B,), 700.0, device=device)
    kw = dict(fps=torch.full((B,), 24.0, device=device), height=torch.full((B,), ph), width=torch.full((B,), pw))

    def step():
        if args.mode == "forward":
            with torch.no_grad():
                return model(x, timestep, y, **kw)
        model.zero_grad(set_to_none=True)
        out = model(x, timestep, y, **kw)
        out[:, :4].pow(2).mean().backward()
        average_gradients(model, state.sp_group)
        return out.detach()

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()
        if dist.is_initialized():
            dist.barrier()

    rss0 = _proc_status_kib("VmRSS")
    hwm_reset = _reset_peak_rss()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for _ in range(args.warmup):
        out = step()
    CommStats.reset(enabled=True)
    times, cpu_times = [], []
    for _ in range(args.repeats):
        sync()
        start, cpu_start = time.perf_counter(), time.process_time()
        out = step()
        sync()
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
    comm_s, comm_bytes, comm_calls = CommStats.seconds, CommStats.bytes, CommStats.calls
    CommStats.reset(enabled=False)
    if device.type == "cuda":
        peak_mib = torch.cuda.max_memory_allocated() / 2**20
    else:
        hwm = _proc_status_kib("VmHWM")
        peak_mib = (hwm - rss0) / 1024 if (hwm is not None and rss0 is not None and hwm_reset) else float("nan")

    per_rank = torch.tensor(
        [statistics.median(times), peak_mib, comm_s / args.repeats, comm_bytes / args.repeats,
         statistics.median(cpu_times), min(times)], dtype=torch.float64)
    if dist.is_initialized():
        gathered = [torch.zeros_like(per_rank) for _ in range(world)]
        dist.all_gather(gathered, per_rank)
    else:
        gathered = [per_rank]
    S = -(-H // 2) * -(-W // 2)
    record = {
        "processes": world,
        "sp_size": state.sp_size,
        "sp": state.sp_size > 1,
        "mode": args.mode,
        "cross_attn": args.cross_attn if state.sp_size > 1 else None,
        "model": dict(depth=args.depth, hidden=args.hidden, heads=args.heads,
                      params=sum(p.numel() for p in model.parameters())),
        "latent": [4, T, H, W],
        "pixels": [int(ph), int(pw)],
        "batch": B,
        "tokens_per_frame": S,
        "tokens": T * S,
        "threads_per_process": args.threads,
        "repeats": args.repeats,
        "step_s": max(float(r[0]) for r in gathered),
        "step_s_min": max(float(r[5]) for r in gathered),
        "step_s_per_rank": [round(float(r[0]), 4) for r in gathered],
        "peak_mib_per_rank": [round(float(r[1]), 1) for r in gathered],
        "cpu_s_per_step_per_rank": [round(float(r[4]), 4) for r in gathered],
        "comm_s_per_step_per_rank": [round(float(r[2]), 4) for r in gathered],
        "comm_mib_sent_per_step_per_rank": [round(float(r[3]) / 2**20, 2) for r in gathered],
        "memory_measure": "cuda max_memory_allocated" if device.type == "cuda" else "CPU RSS growth (VmHWM - VmRSS)",
        "device": str(device),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "cpu_cores": os.cpu_count(),
    }
    if state.is_main:
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
        if args.save_output:
            torch.save(out.cpu(), args.save_output)
        print(json.dumps(record))
    if dist.is_initialized():
        # every rank waits here until rank 0 has written its record, so that no rank tears its connections down
        # while a peer still talks to it (seen once on the shared 2-core CPU: a rank aborting with "terminate
        # called without an active exception" in the 4-process run, failing the stage)
        dist.barrier()
        dist.destroy_process_group()
    return record



# ==================================================================================================
# Launching workers and reading their records (used by the notebook and benchmarks/bench_sp.py)
# ==================================================================================================


def worker_args(
    *, depth=4, hidden=128, heads=4, latent=(15, 30, 53), pixels=(240, 426), batch=2, mode="forward",
    repeats=3, warmup=1, threads=1, cross_attn="all_to_all", text_tokens=32,
) -> list[str]:
    """Command-line arguments of the worker for one configuration."""
    return [
        "--depth", str(depth), "--hidden", str(hidden), "--heads", str(heads),
        "--latent", ",".join(str(v) for v in latent), "--pixels", ",".join(str(v) for v in pixels),
        "--batch", str(batch), "--mode", mode, "--repeats", str(repeats), "--warmup", str(warmup),
        "--threads", str(threads), "--cross-attn", cross_attn, "--text-tokens", str(text_tokens),
    ]


def launch(processes: int, args: list[str], save_output: str | None = None, timeout: float = 600) -> dict:
    """Run the worker on `processes` local processes under torchrun and return rank 0's record."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "record.json"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
               "-m", "opensora_lib.parallel.bench_sp", *args, "--out", str(out)]
        if save_output:
            cmd += ["--save-output", str(save_output)]
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0 or not out.exists():
            raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-4000:]}")
        return json.loads(out.read_text())


def sp_table(
    records: list[dict], resolution: str = "", num_frames: int | None = None, seconds: float | None = None
) -> list[dict]:
    """The seed report's table, one row per record: resolution, duration, processes, SP on/off,
    time, speed-up against the one-process (one-thread) record of the same mode, and per process.

    `speedup_per_process` = speed-up / (processes x threads), i.e. per core asked for (1.0 = linear);
    `speedup_per_process_pct` is the seed's way to write it (12% for 548 s on one GPU -> 244 s on
    two: 2.24 / 2 - 1). `cpu_s_per_rank` is the CPU time of the busiest process (all its threads):
    for one-thread processes it shows how the work itself was split, whatever share of the cores
    the machine gave.
    """
    rows = []
    for rec in records:
        singles = [r for r in records if r["processes"] == 1 and r["mode"] == rec["mode"]]
        singles.sort(key=lambda r: r["threads_per_process"] != 1)  # the one-thread run first
        base = singles[0] if singles else None
        speedup = base["step_s"] / rec["step_s"] if base else float("nan")
        workers = rec["processes"] * rec["threads_per_process"]
        cpu = max(rec["cpu_s_per_step_per_rank"])
        cpu_speedup = max(base["cpu_s_per_step_per_rank"]) / cpu if base else float("nan")
        rows.append({
            "resolution": resolution,
            "seconds": seconds,
            "frames": num_frames,
            "latent": "x".join(str(v) for v in rec["latent"][1:]),
            "processes": rec["processes"],
            "sp": rec["sp"],
            "threads_per_process": rec["threads_per_process"],
            "mode": rec["mode"],
            "cross_attn": rec["cross_attn"],
            "time_s": round(rec["step_s"], 3),
            "speedup": round(speedup, 3),
            "speedup_per_process": round(speedup / workers, 3),
            "speedup_per_process_pct": round(100 * (speedup / workers - 1), 1),
            "cpu_s_per_rank": round(cpu, 3),
            "cpu_speedup": round(cpu_speedup, 3),
            "comm_s_per_rank": round(max(rec["comm_s_per_step_per_rank"]), 3),
            "comm_mib_per_rank": round(max(rec["comm_mib_sent_per_step_per_rank"]), 2),
            "peak_mib_per_process": round(max(rec["peak_mib_per_rank"]), 1),
            "load_average": rec.get("load_average_1min"),
        })
    return rows


def plot_sp(rows: list[dict], path: str | Path | None = None):
    """Two panels against the number of processes (one thread each): step time (wall, and the CPU
    time of the busiest rank, with the ideal 1/p line) and peak memory per process. A one-process
    run with more threads, if present, is drawn as a single marker."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sp_rows = sorted((r for r in rows if r["threads_per_process"] == 1), key=lambda r: r["processes"])
    threaded = [r for r in rows if r["threads_per_process"] > 1]
    p = [r["processes"] for r in sp_rows]
    base = sp_rows[0]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.4))
    ax1.plot(p, [r["time_s"] for r in sp_rows], "o-", label="wall time per step (SP)")
    ax1.plot(p, [r["cpu_s_per_rank"] for r in sp_rows], "s--", label="CPU time of the busiest rank")
    ax1.plot(p, [base["time_s"] / n for n in p], ":", color="gray", label="ideal: 1-process time / p")
    for r in threaded:
        ax1.plot([r["threads_per_process"]], [r["time_s"]], "*", ms=11, color="tab:red",
                 label=f"1 process, {r['threads_per_process']} threads (no SP)")
    ax1.set_xlabel("processes (SP group size), 1 thread each")
    ax1.set_ylabel("seconds")
    ax1.set_xticks(p)
    ax1.set_ylim(bottom=0)
    ax1.legend(fontsize=7)
    ax1.set_title("time per step", fontsize=9)
    ax2.bar([str(n) for n in p], [r["peak_mib_per_process"] for r in sp_rows], color="tab:orange")
    ax2.set_xlabel("processes (SP group size)")
    ax2.set_ylabel("MiB")
    ax2.set_title("peak memory growth per process", fontsize=9)
    fig.tight_layout()
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110, bbox_inches="tight")
    return fig


def predicted_comm_mib(batch: int, frames: int, tokens_per_frame: int, hidden: int, depth: int, processes: int,
                       out_features: int = 32, cross_attn_all_to_all: bool = True) -> float:
    """MiB one rank sends in one SP forward (fp32), from the shapes alone.

    Each spatial block exchanges q, k, v (3 x) and the attention output (1 x), and with Open-Sora's
    cross-attention also its q and output (2 x), each a [B, T, S_local, C] tensor of which the
    rank keeps 1/p; the final gather sends the local [B, T, S_local, out_features] to every other
    rank. Temporal blocks send nothing.
    """
    p = processes
    if p == 1:
        return 0.0
    local = -(-tokens_per_frame // p)
    per_tensor = batch * frames * local * hidden * 4 * (p - 1) / p
    exchanges = 6 if cross_attn_all_to_all else 4
    gather = batch * frames * local * out_features * 4 * (p - 1)
    return (depth * exchanges * per_tensor + gather) / 2**20

if __name__ == "__main__":
    main()
