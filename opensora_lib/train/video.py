"""Entry point of the video training stages: ``python -m opensora_lib.train.video``.

    # one process (also what the notebook does, in its own kernel)
    python -m opensora_lib.train.video --params params/train.yaml --stage 1
    # several processes (gloo on CPU, NCCL on GPU); every rank runs the same command
    torchrun --nproc_per_node 2 -m opensora_lib.train.video --params params/train.yaml --stage 1 --accumulation 1

A stage reads ``train.common`` and ``train.stages.<stage>`` of the params file (see `engine.stage_config`), trains,
and writes (rank 0): the checkpoint ``<ckpt_dir>/last.pt``, the metrics JSON, the loss curve and the bucket-usage
figure. The same functions are used by `notebooks/30_video_train.ipynb`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import yaml

from .engine import VideoTrainConfig, VideoTrainer, stage_config


def load_params(path: str | os.PathLike, section: str = "train") -> dict:
    with open(path) as f:
        params = yaml.safe_load(f)
    if section not in params:
        raise KeyError(f"{path}: no '{section}' section")
    return params[section]


def loss_figure(history: list[dict], path: str | os.PathLike, title: str):
    from ..plots import loss_curve

    steps = [e["step"] for e in history]
    losses = [e["loss"] for e in history]
    return loss_curve(steps, losses, path, title=title, smooth=min(10, max(len(losses) // 5, 0)))


def bucket_figure(usage: dict, path: str | os.PathLike, title: str):
    """Bar chart: training samples per bucket (resolution / frames / aspect ratio)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = usage.get("samples", {})
    names = list(samples)
    fig, ax = plt.subplots(figsize=(max(6, 0.28 * len(names) + 2), 3.8))
    colors = ["#4c72b0" if n.split("/")[1] != "1f" else "#dd8452" for n in names]
    ax.bar(range(len(names)), [samples[n] for n in names], color=colors)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=70, fontsize=7)
    ax.set_ylabel("samples")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return fig


def usage_by(usage: dict, part: int) -> dict:
    """Samples grouped by one part of the bucket name (0 resolution, 1 frames, 2 ratio)."""
    out: dict = {}
    for name, n in usage.get("samples", {}).items():
        key = name.split("/")[part]
        out[key] = out.get(key, 0) + n
    return dict(sorted(out.items()))


def write_outputs(trainer: VideoTrainer, ckpt_dir: str | os.PathLike, metrics_path: str | os.PathLike | None,
                  figures_dir: str | os.PathLike | None, wall_seconds: float | None = None) -> dict:
    """Checkpoint ``<ckpt_dir>/last.pt`` (collective), then on rank 0 the metrics JSON and the figures.
    Returns the metrics."""
    ckpt = Path(ckpt_dir) / "last.pt"
    trainer.save(ckpt)
    summary = trainer.summary()
    usage = trainer.bucket_usage()
    metrics = {
        **summary,
        "wall_seconds": wall_seconds,
        "checkpoint": str(ckpt),
        "init": trainer.model_info.get("init"),
        "bucket_usage": usage,
        "samples_by_resolution": usage_by(usage, 0),
        "samples_by_frames": usage_by(usage, 1),
        "loss_curve": [[e["step"], round(e["loss"], 6)] for e in trainer.history],
    }
    if trainer.rank == 0:
        stage = trainer.cfg.stage
        if figures_dir:
            figures = Path(figures_dir)
            loss_figure(trainer.history, figures / f"stage{stage}_loss.png", f"video stage {stage}: loss")
            bucket_figure(usage, figures / f"stage{stage}_buckets.png", f"video stage {stage}: samples per bucket")
            metrics["figures"] = [str(figures / f"stage{stage}_loss.png"), str(figures / f"stage{stage}_buckets.png")]
        if metrics_path:
            Path(metrics_path).parent.mkdir(parents=True, exist_ok=True)
            Path(metrics_path).write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def run_stage(cfg: VideoTrainConfig, metrics_path=None, figures_dir=None, progress: bool = True) -> dict:
    """Train one stage from a config and write its outputs (collective)."""
    start = time.perf_counter()
    trainer = VideoTrainer(cfg, progress=progress)
    trainer.train()
    metrics = write_outputs(trainer, cfg.ckpt_dir or f"checkpoints/train/stage{cfg.stage}", metrics_path,
                            figures_dir, wall_seconds=time.perf_counter() - start)
    trainer.close()
    return metrics


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m opensora_lib.train.video", description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", default="params/train.yaml", help="params YAML with a `train` section")
    parser.add_argument("--stage", required=True, help="stage key in train.stages (1, 2, 3)")
    parser.add_argument("--steps", type=int)
    parser.add_argument("--init", help="checkpoint to start from ('' = fresh preset)")
    parser.add_argument("--resume", help="checkpoint of this engine to continue exactly")
    parser.add_argument("--csv")
    parser.add_argument("--vae-ckpt")
    parser.add_argument("--feature-cache")
    parser.add_argument("--accumulation", type=int)
    parser.add_argument("--precision", choices=["auto", "bf16", "fp32"])
    parser.add_argument("--seed", type=int)
    parser.add_argument("--ckpt-dir")
    parser.add_argument("--metrics", help="metrics JSON path (default metrics/train_stage<N>.json)")
    parser.add_argument("--figures", default="reports/figures/train")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    cfg = stage_config(
        params, args.stage, steps=args.steps, init=args.init, resume=args.resume, csv=args.csv,
        vae_ckpt=args.vae_ckpt, feature_cache=args.feature_cache, accumulation=args.accumulation,
        precision=args.precision, seed=args.seed,
        ckpt_dir=args.ckpt_dir,
    )
    if not cfg.ckpt_dir:
        cfg.ckpt_dir = f"checkpoints/train/stage{args.stage}"
    metrics = run_stage(cfg, args.metrics or f"metrics/train_stage{args.stage}.json", args.figures,
                        progress=sys.stderr.isatty())
    if int(os.environ.get("RANK", "0")) == 0:
        keys = ("stage", "steps", "final_loss", "samples_per_s", "train_seconds", "world_size", "checkpoint")
        print(json.dumps({k: metrics.get(k) for k in keys}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
