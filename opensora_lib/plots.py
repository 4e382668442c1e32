"""Figures for the notebooks and the report (matplotlib, Agg backend, PNG files)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .data.video_io import read_video  # noqa: E402


def _save(fig, path: str | Path | None) -> None:
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110, bbox_inches="tight")


def sample_grid(rows: list[dict], path: str | Path | None = None, frames_per_sample: int = 4, max_rows: int = 6):
    """One row per sample: ``frames_per_sample`` linspace frames and the caption underneath."""
    rows = rows[:max_rows]
    fig, axes = plt.subplots(len(rows), frames_per_sample, figsize=(2.0 * frames_per_sample, 2.3 * len(rows)),
                             squeeze=False)
    for i, row in enumerate(rows):
        n = min(frames_per_sample, int(row["num_frames"]))
        video = read_video(row["path"], num_frames=n)  # [n, H, W, 3]
        for j in range(frames_per_sample):
            ax = axes[i, j]
            ax.axis("off")
            if j < n:
                ax.imshow(video[j], interpolation="nearest")
        axes[i, 0].set_title("\n".join(textwrap.wrap(row["text"], 70)), fontsize=7, loc="left")
    fig.tight_layout()
    _save(fig, path)
    return fig


def _bar(ax, counts: dict, title: str) -> None:
    ax.bar(list(counts), list(counts.values()), color="#4c72b0")
    ax.set_title(title, fontsize=9)
    ax.tick_params(axis="x", labelrotation=45, labelsize=7)


def data_statistics_figure(rows: list[dict], stats: dict, path: str | Path | None = None):
    """Durations, sizes, aspect ratios, caption lengths and class balance of a dataset."""
    fig, axes = plt.subplots(3, 3, figsize=(12, 10))
    videos = [r for r in rows if r["kind"] == "video"]
    axes[0, 0].hist([int(r["num_frames"]) / float(r["fps"]) for r in videos], bins=15, color="#4c72b0")
    axes[0, 0].set_title("clip duration (s)", fontsize=9)
    axes[0, 1].hist([len(r["text"].split()) for r in rows], bins=15, color="#55a868")
    axes[0, 1].set_title("caption length (words)", fontsize=9)
    _bar(axes[0, 2], stats["sizes"], "frame size (H x W)")
    _bar(axes[1, 0], stats["aspect_ratios"], "aspect ratio (H/W)")
    _bar(axes[1, 1], stats["camera_motion"], "camera motion (videos)")
    _bar(axes[1, 2], stats["object_motion"], "object motion (videos)")
    _bar(axes[2, 0], stats["shapes"], "object shapes")
    _bar(axes[2, 1], stats["colors"], "object colours")
    _bar(axes[2, 2], stats["backgrounds"], "backgrounds")
    fig.tight_layout()
    _save(fig, path)
    return fig


def loss_curve(steps, losses, path: str | Path | None = None, title: str = "loss", smooth: int = 0):
    """A training curve, optionally with a moving average."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(steps, losses, alpha=0.4 if smooth else 1.0, label="loss")
    if smooth and len(losses) > smooth:
        kernel = np.ones(smooth) / smooth
        ax.plot(steps[smooth - 1:], np.convolve(losses, kernel, mode="valid"), label=f"mean of {smooth}")
        ax.legend()
    ax.set_xlabel("step")
    ax.set_title(title)
    fig.tight_layout()
    _save(fig, path)
    return fig
