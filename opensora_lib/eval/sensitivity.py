"""Caption sensitivity: does the denoiser listen to each factor its caption states?

Generation scores (`scores`, `detectors`) say whether a sampled clip shows what the prompt asks, which needs the
whole 30-step chain to get everything right at once. This probe asks a narrower question of the denoiser itself: on
real clips, is the rectified-flow loss lower with the true caption than with the same caption where one factor of
the first named object (its colour or its motion direction) or the camera's motion is swapped for another value?
A model that has learned a factor predicts the velocity better when the caption states it correctly; a model that
ignores the factor scores the same either way.

Per clip the true and the swapped caption see the same latents, timesteps (the eval loss's 10 equidistant ones) and
noise, so the difference is paired. Reported per factor: the mean losses, the mean difference (swapped - true) and
its standard error, the clips where the true caption wins, and a one-sided sign test (`scores.binomial_tail` at
1/2); and the same difference per timestep (``by_t``: does the preference hold where sampling decides the layout,
at high noise, or only near the clean clip?). Swaps: colour -> the next palette colour the caption does not use; motion left <-> right, up <-> down (clips
whose first object moves); camera pans / tilts / zooms to the opposite direction (clips with a moving camera).
"""

from __future__ import annotations

import re

import numpy as np
import torch

from ..data.aspect import closest_ratio_key
from ..data.datasets import resize_crop
from ..data.synthetic import PALETTE, parse_caption
from ..data.video_io import read_video
from ..schedulers.rectified_flow import RFlowScheduler
from .loss_grid import EVAL_TIMESTEPS
from .scores import binomial_tail

FACTORS = ("color", "motion", "camera")
_OPPOSITE = {"left": "right", "right": "left", "up": "down", "down": "up", "in": "out", "out": "in"}


def swap_factor(caption: str, factor: str) -> str | None:
    """``caption`` with one factor changed (module docstring), or None when the caption does not state it."""
    if factor not in FACTORS:
        raise ValueError(f"unknown factor {factor!r}; choose from {FACTORS}")
    parsed = parse_caption(caption)
    obj = parsed["objects"][0] if parsed["objects"] else None
    if factor == "camera":
        cam = parsed["camera_motion"]
        if cam is None or cam == "static":
            return None
        verb, direction = cam.split()
        old = f"The camera {verb}s {direction}."
        return caption.replace(old, f"The camera {verb}s {_OPPOSITE[direction]}.", 1) if old in caption else None
    if obj is None:
        return None
    noun = f"{obj['color']} {obj['shape']}"
    if factor == "color":
        used = set(re.findall(r"[a-z]+", caption.lower()))
        new = next(c for c in list(PALETTE)[list(PALETTE).index(obj["color"]) + 1:] + list(PALETTE)
                   if c not in used)
        return caption.replace(noun, f"{new} {obj['shape']}", 1)
    m = _named_motion(caption, obj)
    if m is None:
        return None
    return caption[:m.start()] + f"{noun} moves {m.group(1)} {_OPPOSITE[obj['motion']]}" + caption[m.end():]


def _named_motion(caption: str, obj: dict) -> re.Match | None:
    """Where ``caption`` says that its parsed object ``obj`` moves ("red circle moves quickly left"; group 1 the
    pace), or None when the object stays still."""
    if obj["motion"] not in _OPPOSITE:
        return None
    return re.search(rf"{obj['color']} {obj['shape']} moves (\w+) {obj['motion']}\b", caption)


def still_caption(caption: str) -> str | None:
    """``caption`` with its first named object standing still ("across" becomes "on" when nothing moves then), or
    None when it names no moving object."""
    objects = parse_caption(caption)["objects"]
    m = _named_motion(caption, objects[0]) if objects else None
    if m is None:
        return None
    obj = objects[0]
    out = caption[:m.start()] + f"{obj['color']} {obj['shape']} stays still" + caption[m.end():]
    return out if " moves " in out else out.replace(" across ", " on ", 1)


@torch.no_grad()
def _clip_losses(model, x: torch.Tensor, states: list[dict], fps: float, seed: int) -> list[list[float]]:
    """Eval loss of one clip's latents ``x [1, C, T, h, w]`` under each caption encoding (same noise), per timestep
    of `EVAL_TIMESTEPS`: ``[caption][timestep]``."""
    scheduler = RFlowScheduler()
    out = []
    for enc in states:
        gen = torch.Generator().manual_seed(seed)
        per_t = []
        for t in EVAL_TIMESTEPS:
            noise = torch.randn(x.shape, generator=gen)
            kwargs = {"y": enc["y"].float(), "mask": enc["mask"], "height": enc["height"], "width": enc["width"],
                      "num_frames": enc["num_frames"], "ar": enc["ar"], "fps": torch.tensor([fps])}
            per_t.append(float(scheduler.training_losses(model, x, kwargs, noise=noise, t=torch.tensor([float(t)]))
                               ["loss"].sum()))
        out.append(per_t)
    return out


def _paired_stats(true: np.ndarray, swapped: np.ndarray) -> dict:
    """Mean losses, mean difference (swapped - true) with its standard error, true-caption wins and sign test."""
    diff = swapped - true
    n = len(diff)
    wins = int((diff > 0).sum())
    return {"n": n, "loss_true": float(true.mean()), "loss_swapped": float(swapped.mean()), "diff": float(diff.mean()),
            "diff_se": float(diff.std(ddof=1) / np.sqrt(n)) if n > 1 else None, "true_wins": wins,
            "p_value": binomial_tail(wins, n, 0.5)}


@torch.no_grad()
def caption_sensitivity(model, vae, text_encoder, rows: list[dict], factors=FACTORS, resolution: str = "48px",
                        num_frames: int = 17, seed: int = 42, progress: bool = True) -> dict:
    """The probe on the clips of ``rows`` (CSV rows with "path", "text", "fps", "height", "width") that have at least
    ``num_frames`` frames, each resized / cropped to ``resolution`` at its closest aspect ratio.
    Returns ``{factor: {"n", "loss_true", "loss_swapped", "diff", "diff_se", "true_wins", "p_value", "by_t"}}``:
    the first seven over the mean loss of the 10 timesteps, ``by_t`` the list of the same seven plus "t" per timestep
    (n = 0, None values and an empty ``by_t`` when no clip states the factor)."""
    from tqdm.auto import tqdm

    from ..sample import resolution_table

    table = resolution_table(resolution)
    model = model.eval()
    pairs: dict[str, list[tuple[list[float], list[float]]]] = {f: [] for f in factors}
    clips = [r for r in rows if int(r["num_frames"]) >= num_frames]
    for row in tqdm(clips, desc="caption sensitivity", disable=not progress):
        swaps = {f: swap_factor(row["text"], f) for f in factors}
        swaps = {f: s for f, s in swaps.items() if s is not None}
        if not swaps:
            continue
        h, w = table[closest_ratio_key(int(row["height"]), int(row["width"]), list(table))]
        pixels = resize_crop(read_video(row["path"], indices=list(range(num_frames))), h, w)[None]  # [1, 3, T, H, W]
        x = vae.encode(pixels.to(vae.device, vae.dtype), sample_posterior=False).float().cpu()  # [1, C, t, h, w]
        captions = [row["text"]] + list(swaps.values())
        enc = text_encoder.encode(captions)
        states = [{"y": enc["y"][i:i + 1].cpu(), "mask": enc["mask"][i:i + 1].cpu(),
                   "height": torch.tensor([float(h)]), "width": torch.tensor([float(w)]),
                   "num_frames": torch.tensor([float(num_frames)]), "ar": torch.tensor([h / w])}
                  for i in range(len(captions))]
        losses = _clip_losses(model, x, states, float(row.get("fps") or 24), seed)
        for k, f in enumerate(swaps):
            pairs[f].append((losses[0], losses[k + 1]))
    out = {}
    for f in factors:
        arr = np.asarray(pairs[f], dtype=np.float64).reshape(-1, 2, len(EVAL_TIMESTEPS))  # [clip, true/swapped, t]
        if len(arr) == 0:
            out[f] = {"n": 0, "loss_true": None, "loss_swapped": None, "diff": None, "diff_se": None,
                      "true_wins": 0, "p_value": None, "by_t": []}
            continue
        mean_t = arr.mean(axis=2)  # [clip, 2]: the loss averaged over the timesteps
        out[f] = _paired_stats(mean_t[:, 0], mean_t[:, 1])
        out[f]["by_t"] = [{"t": float(t), **_paired_stats(arr[:, 0, j], arr[:, 1, j])}
                          for j, t in enumerate(EVAL_TIMESTEPS)]
    return out


def sensitivity_markdown(results: dict[str, dict]) -> str:
    """``{checkpoint: caption_sensitivity(...)}`` as a markdown table."""
    factors = list(next(iter(results.values()))) if results else []
    lines = ["| model | " + " | ".join(factors) + " |", "|---" * (len(factors) + 1) + "|"]
    for name, res in results.items():
        cells = []
        for f in factors:
            r = res[f]
            cells.append("-" if not r["n"] else
                         f"{r['diff']:+.4f} ± {r['diff_se'] or 0:.4f}, true wins {r['true_wins']}/{r['n']}, "
                         f"p={r['p_value']:.3g}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def sensitivity_by_t_markdown(results: dict[str, dict], factor: str = "motion") -> str:
    """One factor's difference (swapped - true) per timestep of ``{checkpoint: caption_sensitivity(...)}``, a row per
    checkpoint: "diff (true wins / n)" under each t (t = 1000 is pure noise)."""
    ts = next((r[factor]["by_t"] for r in results.values() if r.get(factor, {}).get("by_t")), [])
    if not ts:
        return f"(no clip states the {factor})"
    lines = ["| model | " + " | ".join(f"t={b['t']:.0f}" for b in ts) + " |", "|---" * (len(ts) + 1) + "|"]
    for name, res in results.items():
        by_t = res.get(factor, {}).get("by_t") or []
        cells = [f"{b['diff']:+.4f} ({b['true_wins']}/{b['n']})" for b in by_t] or ["-"] * len(ts)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
