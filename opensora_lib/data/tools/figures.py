"""Figures of the data tools (matplotlib, Agg, PNG): what the tools found and how they compare with the truth."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _save(fig, path) -> None:
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110, bbox_inches="tight")


def confusion_figure(labels: list[str], matrix, path=None, title: str = "camera motion"):
    """Counts, with cells shaded by the share of their truth row."""
    matrix = np.asarray(matrix)
    shares = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(6.4, 5.4))
    ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            if matrix[i, j]:
                ax.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=8,
                        color="white" if shares[i, j] > 0.6 else "black")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.set_xlabel("detected")
    ax.set_ylabel("truth")
    accuracy = np.trace(matrix) / max(matrix.sum(), 1)
    ax.set_title(f"{title} (accuracy {accuracy:.1%}, n={matrix.sum()})", fontsize=9)
    fig.tight_layout()
    _save(fig, path)
    return fig


def score_distributions(rows: list[dict], path=None, aes_column: str = "aes_proxy"):
    """Clip durations, frame sizes, aesthetic (or proxy) and motion scores, camera-motion labels."""
    fig, axes = plt.subplots(2, 3, figsize=(12, 6.5))
    axes[0, 0].hist([int(r["num_frames"]) / float(r["fps"]) for r in rows], bins=15, color="#4c72b0")
    axes[0, 0].set_title("clip duration (s)", fontsize=9)
    sizes = Counter(f"{r['height']}x{r['width']}" for r in rows)
    axes[0, 1].bar(list(sizes), list(sizes.values()), color="#4c72b0")
    axes[0, 1].set_title("resolution (H x W)", fontsize=9)
    axes[0, 1].tick_params(axis="x", labelrotation=45, labelsize=7)
    axes[0, 2].hist([float(r[aes_column]) for r in rows], bins=15, color="#55a868")
    label = "aesthetic score (CLIP+MLP)" if aes_column == "aes" else "aes_proxy (image-quality proxy, not LAION)"
    axes[0, 2].set_title(label, fontsize=9)
    axes[1, 0].hist([float(r["flow"]) for r in rows], bins=20, color="#c44e52")
    axes[1, 0].set_title("motion score (mean |flow|, px/frame)", fontsize=9)
    cm = Counter(r["cmotion"] for r in rows)
    axes[1, 1].bar(list(cm), list(cm.values()), color="#8172b2")
    axes[1, 1].set_title("camera motion (detected)", fontsize=9)
    axes[1, 1].tick_params(axis="x", labelrotation=45, labelsize=7)
    axes[1, 2].hist([len(r["text"].split()) for r in rows], bins=15, color="#937860")
    axes[1, 2].set_title("caption length with suffixes (words)", fontsize=9)
    fig.tight_layout()
    _save(fig, path)
    return fig


def motion_vs_truth(records: list[dict], path=None, key: str = "true_mean_speed"):
    """Motion score against the true mean pixel speed, one colour per background."""
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    for background in sorted({r["background"] for r in records}):
        sub = [r for r in records if r["background"] == background]
        ax.scatter([r[key] for r in sub], [r["flow"] for r in sub], s=10, label=background, alpha=0.7)
    xs, ys = [r[key] for r in records], [r["flow"] for r in records]
    top = max(xs + [1e-3])
    ceiling = max(1.5 * top, 1.2 * float(np.percentile(ys, 98)) if ys else 0.0, 1e-3)
    above = sum(y > ceiling for y in ys)
    ax.set_ylim(-0.03 * ceiling, ceiling)
    ax.plot([0, top], [0, top], color="gray", lw=0.8, ls="--")
    if above:
        ax.set_title(f"{above} clip(s) above {ceiling:.2f} px/frame not shown", fontsize=8)
    ax.set_xlabel("true mean pixel speed (px/frame)")
    ax.set_ylabel("motion score (px/frame)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)
    return fig


def count_mentions(texts: list[str], terms: list[str] | dict[str, str]) -> dict[str, int]:
    """How many captions mention each term: a list of plain terms (whole words, case-insensitive) or a dict
    from label to regular expression."""
    if not isinstance(terms, dict):
        terms = {t: r"\b" + re.escape(t) + r"\b" for t in terms}
    patterns = {label: re.compile(pattern, re.IGNORECASE) for label, pattern in terms.items()}
    return {label: sum(bool(p.search(text)) for text in texts) for label, p in patterns.items()}


def mentions_figure(objects: dict[str, int], actions: dict[str, int], path=None):
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    for ax, counts, title in ((axes[0], objects, "objects mentioned"), (axes[1], actions, "actions mentioned")):
        ax.bar(list(counts), list(counts.values()), color="#4c72b0")
        ax.set_title(f"{title} (captions)", fontsize=9)
        ax.tick_params(axis="x", labelrotation=45, labelsize=7)
    fig.tight_layout()
    _save(fig, path)
    return fig
