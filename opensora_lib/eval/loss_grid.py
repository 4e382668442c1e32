"""Rectified-flow evaluation loss over a grid of (resolution, num_frames) buckets (facts §8,
`eval/loss/eval_loss.py` of the reference).

For every cell of the grid the validation CSV gives a one-bucket set: stills for ``num_frames == 1``, clips with
at least ``num_frames`` frames otherwise (their first ``num_frames`` frames), each resized to cover and
centre-cropped to the cell's size for the sample's closest aspect ratio in the resolution's table. The VAE encodes
the pixels (posterior mean), the text encoder the captions (as written in the CSV). The loss is the training loss
(velocity MSE) at the 10 fixed timesteps ``torch.linspace(0, 1000, 12)[1:-1]`` (no timestep transform, no
masks), with noise drawn from a generator seeded with ``seed`` (42) per cell; per timestep the loss is summed over
the samples and divided by their number, and the cell's value is the mean over the 10 timesteps.

`prepare_cells` does the encoding once; `eval_loss` then scores any number of checkpoints on the same latents
(which is how the report compares checkpoints). `eval_loss_grid` does both.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..data.aspect import closest_ratio_key
from ..data.datasets import resize_crop
from ..data.synthetic import read_csv
from ..data.video_io import read_video
from ..schedulers.rectified_flow import RFlowScheduler

EVAL_TIMESTEPS = torch.linspace(0, 1000, 12)[1:-1]  # 90.9, 181.8, ..., 909.1
IMAGE_FPS = 120


def parse_grid(grid) -> list[tuple[str, int]]:
    """Cells from ``{"48px": [1, 17], ...}``, ``[("48px", 1), ...]`` or ``"48px:1,17;64px:1,17"``."""
    if isinstance(grid, str):
        out = []
        for part in grid.split(";"):
            part = part.strip()
            if not part:
                continue
            res, frames = part.split(":")
            out += [(res.strip(), int(f)) for f in frames.split(",") if f.strip()]
        return out
    if isinstance(grid, dict):
        return [(str(res), int(f)) for res, frames in grid.items() for f in frames]
    return [(str(res), int(f)) for res, f in grid]


@dataclass
class Cell:
    resolution: str
    num_frames: int
    batches: list[dict] = field(default_factory=list)  # {"x": latents [B, C, T, h, w], "y", "mask", kwargs}
    num_samples: int = 0


def _batches(samples: list[dict], batch_size: int) -> list[list[dict]]:
    by_size: dict[tuple[int, int], list[dict]] = {}
    for s in samples:
        by_size.setdefault((s["height"], s["width"]), []).append(s)
    out = []
    for size in sorted(by_size):
        group = by_size[size]
        out += [group[i:i + batch_size] for i in range(0, len(group), batch_size)]
    return out


@torch.no_grad()
def prepare_cells(vae, text_encoder, csv_path: str | Path, grid, batch_size: int = 8,
                  max_samples: int | None = None, device="cpu") -> list[Cell]:
    """Encode the validation set once per cell (latents and caption states)."""
    from ..sample import resolution_table

    rows = read_csv(csv_path)
    cells = []
    for res, frames in parse_grid(grid):
        table = resolution_table(res)
        if frames == 1:
            chosen = [r for r in rows if int(r["num_frames"]) == 1]
        else:
            chosen = [r for r in rows if int(r["num_frames"]) >= frames]
        chosen = chosen[:max_samples] if max_samples else chosen
        samples = []
        for r in chosen:
            h, w = table[closest_ratio_key(int(r["height"]), int(r["width"]), list(table))]
            fps = IMAGE_FPS if frames == 1 else int(float(r.get("fps") or 24))
            samples.append({"row": r, "height": h, "width": w, "fps": fps})
        cell = Cell(res, frames, num_samples=len(samples))
        for group in _batches(samples, batch_size):
            h, w = group[0]["height"], group[0]["width"]
            pixels = torch.stack([resize_crop(read_video(s["row"]["path"], indices=list(range(frames))), h, w)
                                  for s in group])  # [B, 3, T, H, W]
            x = vae.encode(pixels.to(vae.device, vae.dtype), sample_posterior=False).float().cpu()
            enc = text_encoder.encode([s["row"]["text"] for s in group])
            n = len(group)
            cell.batches.append({
                "x": x, "y": enc["y"].float().cpu(), "mask": enc["mask"].cpu(),
                "height": torch.full((n,), float(h)), "width": torch.full((n,), float(w)),
                "num_frames": torch.full((n,), float(frames)), "ar": torch.full((n,), h / w),
                "fps": torch.tensor([float(s["fps"]) for s in group]),
            })
        cells.append(cell)
    return cells


@torch.no_grad()
def eval_loss(model, cells: list[Cell], seed: int = 42, timesteps: torch.Tensor = EVAL_TIMESTEPS,
              device="cpu") -> list[dict]:
    """The loss table: one row per cell {"resolution", "num_frames", "num_samples", "loss", "loss_per_t"}
    (loss None for an empty cell)."""
    scheduler = RFlowScheduler()
    model = model.eval()
    table = []
    for cell in cells:
        gen = torch.Generator().manual_seed(seed)
        per_t = []
        for t in timesteps:
            total = 0.0
            for b in cell.batches:
                x = b["x"].to(device)
                noise = torch.randn(x.shape, generator=gen).to(device)
                kwargs = {k: b[k].to(device) for k in ("y", "mask", "height", "width", "num_frames", "ar", "fps")}
                tt = torch.full((x.shape[0],), float(t), device=device)
                total += float(scheduler.training_losses(model, x, kwargs, noise=noise, t=tt)["loss"].sum())
            per_t.append(total / cell.num_samples if cell.num_samples else None)
        loss = float(np.mean(per_t)) if cell.num_samples else None
        table.append({"resolution": cell.resolution, "num_frames": cell.num_frames, "num_samples": cell.num_samples,
                      "loss": loss, "loss_per_t": per_t})
    return table


def eval_loss_grid(model, vae, text_encoder, csv_path, grid, seed: int = 42, batch_size: int = 8,
                   max_samples: int | None = None, device="cpu") -> list[dict]:
    """`prepare_cells` then `eval_loss`."""
    cells = prepare_cells(vae, text_encoder, csv_path, grid, batch_size, max_samples, device)
    return eval_loss(model, cells, seed, device=device)


def summarise(table: list[dict]) -> dict:
    """Mean loss per resolution (over lengths), per length (over resolutions) and overall, skipping empty cells."""
    def mean(vals):
        vals = [v for v in vals if v is not None]
        return float(np.mean(vals)) if vals else None

    res = list(dict.fromkeys(r["resolution"] for r in table))
    frames = sorted({r["num_frames"] for r in table})
    return {
        "per_resolution": {k: mean([r["loss"] for r in table if r["resolution"] == k]) for k in res},
        "per_num_frames": {str(k): mean([r["loss"] for r in table if r["num_frames"] == k]) for k in frames},
        "mean": mean([r["loss"] for r in table]),
    }


def plot_loss_grid(tables: dict[str, list[dict]], out_dir: str | Path) -> list[Path]:
    """Two figures like the report's: eval loss per resolution (one line per number of frames) and per number of
    frames (one line per resolution), one panel per checkpoint label. Returns the PNG paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    labels = list(tables)
    paths = []
    for kind in ("resolution", "num_frames"):
        other = "num_frames" if kind == "resolution" else "resolution"
        fig, axes = plt.subplots(1, len(labels), figsize=(4.2 * len(labels), 3.2), squeeze=False, sharey=True)
        for ax, label in zip(axes[0], labels):
            table = tables[label]
            xs = list(dict.fromkeys(r[kind] for r in table))
            for line in dict.fromkeys(r[other] for r in table):
                ys = [next((r["loss"] for r in table if r[kind] == x and r[other] == line), None) for x in xs]
                pts = [(i, y) for i, y in enumerate(ys) if y is not None]
                if pts:
                    name = ("image" if line == 1 else f"{line} frames") if other == "num_frames" else str(line)
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
            ax.set_xticks(range(len(xs)), [str(x) for x in xs])
            ax.set_xlabel("resolution" if kind == "resolution" else "number of frames")
            ax.set_title(label)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        axes[0][0].set_ylabel("eval loss (mean over 10 timesteps)")
        fig.tight_layout()
        path = out_dir / f"loss_per_{'resolution' if kind == 'resolution' else 'length'}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths
