"""Score summaries in the shape of the seed report's VBench table (Total / Quality / Semantic), from the
rule-based detectors of `detectors.py`, tracked across checkpoints; and a VBench adapter that runs only where
VBench and its weights are installed.

Weighting (VBench's own aggregation, `tabulate_vbench_scores.py` of the reference): every dimension is a number
in [0, 1], normalised as ``(value - min) / (max - min)`` and multiplied by its dimension weight;

    quality  = sum(weighted quality dimensions)  / sum(quality weights)
    semantic = sum(weighted semantic dimensions) / sum(semantic weights)
    total    = (4 * quality + 1 * semantic) / 5

Our dimensions (the synthetic world's counterparts of VBench's; min 0 / max 1 for all, since our detectors' scales
are not VBench's and VBench's empirical bounds would not apply), each the mean over the generated clips:

quality (weight): ``subject consistency`` (1; share of frames showing the clip's main object,
`detectors.subject_presence`, standing in for VBench's feature similarity of the subject across frames),
``temporal flickering`` (1; 1 - frame difference of static regions / 255), ``motion smoothness`` (1; from the
tracked object's acceleration), ``dynamic degree`` (0.5; share of clips in which the object or the camera is
detected moving, as VBench's share of clips with large flow).
semantic (weight): ``color`` (1), ``object class`` (1; the shape), ``object motion`` (1; direction of the named
object's own motion), ``camera motion`` (1; VBench scores camera motion inside "temporal style") -- each the share
of clips whose detector agrees with the prompt; a dimension no clip states is left out.

The subject gate (quality only)
-------------------------------
Flicker and smoothness reward a clip for not changing, and reward it most when there is nothing in it: a blank,
featureless clip has almost no frame difference (flicker ~100%) and nothing to move jerkily (smoothness ~100%;
without a tracked object the detector falls back to the frames' own second difference). VBench balances them with
dimensions that need content (subject consistency, imaging and aesthetic quality, dynamic degree); our rule is
that **quality is credited only for clips that show a subject**. A clip *has a subject* when its main object is
found in at least half of its frames (`detectors.SUBJECT_MIN_SHARE`, the majority rule of the colour / shape
vote); a clip without one scores 0 on temporal flickering, motion smoothness and dynamic degree, and its subject
consistency (the share itself) is below 0.5. Clips with a subject keep the detectors' values. Why a hard gate
rather than a discount: every clip of the synthetic world shows an object in every frame, so "no object" is a
failed clip, not a degree of quality, and flicker / smoothness of an empty frame measure nothing about the
subject; the graded part (a subject seen in only some frames) is what subject consistency measures. Semantic
dimensions are not gated: they are already 0 when the named object is not found (the camera's motion is the
background's and may be right without an object).

Example: 3 featureless clips (no object in any frame; flicker 0.99, smoothness 0.99, camera "zoom in" read from
noise) score quality 0, semantic 0, total 0 gated; ungated (the rule before the gate) the same clips score quality
(0.99 + 0.99 + 0.5 * 1) / 2.5 = 99.2% and total 79.4%. That is what the embedded run before the gate recorded
(ungated total 79.25%, beside the released system's 79.23%, for a model that drew nothing); gated it is 0%. The
real val clips of the world itself score gated quality 96.1%, total 96.7% (ungated 94.6% / 95.4%): the gate costs
a clip with a subject nothing, and subject consistency adds its 100%.

Ungated scores, for transparency: ``dimension_scores(results, gate=False)`` is the rule before the gate (the
detectors' values as measured, no subject consistency dimension, quality = (flicker + smoothness + 0.5 dynamic) /
2.5). The eval stage records both: `metrics/eval.json` ``scores`` (gated, the headline) and ``scores_ungated``.

Conditioning metrics (image-to-video first-frame PSNR, extension seam continuity) are reported beside the table,
not folded into the total.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np

QUALITY_WEIGHTS = {"subject consistency": 1.0, "temporal flickering": 1.0, "motion smoothness": 1.0,
                   "dynamic degree": 0.5}
SEMANTIC_WEIGHTS = {"color": 1.0, "object class": 1.0, "object motion": 1.0, "camera motion": 1.0}
QUALITY_WEIGHT, SEMANTIC_WEIGHT = 4.0, 1.0
NORMALIZE = {k: (0.0, 1.0) for k in list(QUALITY_WEIGHTS) + list(SEMANTIC_WEIGHTS)}
TABLE_ORDER = ["total score", "quality score", "semantic score"] + list(QUALITY_WEIGHTS) + list(SEMANTIC_WEIGHTS)
INFO_KEYS = ("clips with subject",)  # passed through `summarise`, not weighted


def _mean(values) -> float | None:
    values = [float(v) for v in values if v is not None]
    return float(np.mean(values)) if values else None


def has_subject(result: dict) -> bool:
    """The gate: does this clip (a `detectors.video_adherence` result) show a subject?"""
    if "has_subject" in result:
        return bool(result["has_subject"])
    if result.get("subject") is not None:
        from .detectors import SUBJECT_MIN_SHARE

        return float(result["subject"]) >= SUBJECT_MIN_SHARE
    raise ValueError("a detector result without 'subject' / 'has_subject' cannot be gated (score it with "
                     "detectors.video_adherence, or pass gate=False)")


def dimension_scores(results: list[dict], gate: bool = True) -> dict[str, float | None]:
    """Per-dimension values from `detectors.video_adherence` results (one per generated clip).

    gate=True (the headline): quality dimensions only for clips with a subject, 0 for the others, plus
    ``subject consistency`` (see the module docstring). gate=False: the rule before the gate, the detectors' values
    as measured and no subject consistency (None). ``clips with subject`` is the share of clips that pass the gate
    (None ungated)."""
    ok = [has_subject(r) for r in results] if gate else [True] * len(results)
    moving = []
    for r, good in zip(results, ok):
        obj = r.get("detected_motion")
        cam = r.get("detected_camera")
        if obj is None and cam is None:
            moving.append(None if good else 0.0)
        else:
            moving.append(float(good and ((obj not in (None, "static")) or (cam not in (None, "static", "unknown")))))

    def gated(key):
        return [None if r.get(key) is None else (r[key] if good else 0.0) for r, good in zip(results, ok)]

    return {
        "subject consistency": _mean(r.get("subject") for r in results) if gate else None,
        "temporal flickering": _mean(gated("flicker")),
        "motion smoothness": _mean(gated("smoothness")),
        "dynamic degree": _mean(moving),
        "color": _mean(r.get("color") for r in results),
        "object class": _mean(r.get("shape") for r in results),
        "object motion": _mean(r.get("motion") for r in results),
        "camera motion": _mean(r.get("camera") for r in results),
        "clips with subject": _mean(ok) if gate else None,
    }


def summarise(dims: dict[str, float | None]) -> dict[str, float | None]:
    """Total / quality / semantic score (weights in the module docstring) plus the normalised dimensions."""
    scaled = {}
    for k, v in dims.items():
        if k in NORMALIZE and v is not None:
            lo, hi = NORMALIZE[k]
            scaled[k] = (v - lo) / (hi - lo)

    def group(weights):
        present = [k for k in weights if k in scaled]
        if not present:
            return None
        return sum(scaled[k] * weights[k] for k in present) / sum(weights[k] for k in present)

    quality, semantic = group(QUALITY_WEIGHTS), group(SEMANTIC_WEIGHTS)
    parts = [(quality, QUALITY_WEIGHT), (semantic, SEMANTIC_WEIGHT)]
    parts = [(v, w) for v, w in parts if v is not None]
    total = sum(v * w for v, w in parts) / sum(w for _, w in parts) if parts else None
    out = {"total score": total, "quality score": quality, "semantic score": semantic}
    out.update({k: scaled.get(k) for k in list(QUALITY_WEIGHTS) + list(SEMANTIC_WEIGHTS)})
    out.update({k: dims[k] for k in INFO_KEYS if k in dims})
    return out


def score_table(summaries: dict[str, dict]) -> str:
    """Markdown table, one row per label (checkpoint), columns Total / Quality / Semantic then the dimensions,
    in percent like the seed report."""
    cols = TABLE_ORDER
    head = "| model | " + " | ".join(c.title() if c.endswith("score") else c for c in cols) + " |"
    rule = "|" + "---|" * (len(cols) + 1)
    lines = [head, rule]
    for label, s in summaries.items():
        cells = ["-" if s.get(c) is None else f"{100 * s[c]:.2f}%" for c in cols]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def update_history(path: str | Path, label: str, summary: dict, extra: dict | None = None) -> list[dict]:
    """Append (or replace) a checkpoint's summary in a JSON history file; returns the history."""
    path = Path(path)
    history = json.loads(path.read_text()) if path.exists() else []
    history = [h for h in history if h.get("label") != label]
    history.append({"label": label, **summary, **(extra or {})})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(history, indent=2) + "\n")
    return history


def plot_history(history: list[dict], path: str | Path, keys=("total score", "quality score", "semantic score")):
    """Scores across checkpoints (in history order), like the report's VBench-during-training figure; keys ending
    in "(ungated)" are drawn dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    labels = [h["label"] for h in history]
    for k in keys:
        ys = [np.nan if h.get(k) is None else 100 * h[k] for h in history]
        ax.plot(range(len(labels)), ys, marker="o", label=k, linestyle="--" if k.endswith("(ungated)") else "-")
    ax.set_xticks(range(len(labels)), labels, rotation=20, fontsize=8)
    ax.set_ylabel("score (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------------------------------
# VBench adapter

VBENCH_DIMENSIONS = [
    "subject_consistency", "background_consistency", "motion_smoothness", "dynamic_degree", "aesthetic_quality",
    "imaging_quality", "temporal_flickering",
]  # the prompt-free (custom input) dimensions VBench can score on any folder of videos


def vbench_available(cache_dir: str | Path | None = None) -> tuple[bool, str]:
    """(ok, reason): VBench runs only with its package installed and its weights already on disk."""
    if importlib.util.find_spec("vbench") is None:
        return False, "skipped: vbench not installed"
    cache = Path(cache_dir) if cache_dir else Path.home() / ".cache" / "vbench"
    if not cache.is_dir() or not any(cache.iterdir()):
        return False, f"skipped: vbench weights not found in {cache} (they are never downloaded here)"
    return True, "ok"


def run_vbench(videos_dir: str | Path, out_dir: str | Path, dimensions=VBENCH_DIMENSIONS,
               cache_dir: str | Path | None = None, device: str = "cpu") -> dict:
    """VBench on a folder of videos (custom-input mode, local weights only). Returns {"status", "scores"}; the
    status says "skipped: ..." (no number at all) when VBench or its weights are missing, "error: ..." when it
    fails."""
    ok, reason = vbench_available(cache_dir)
    if not ok:
        return {"status": reason, "scores": None}
    try:
        import torch
        from vbench import VBench

        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        bench = VBench(torch.device(device), None, str(out_dir))
        bench.evaluate(videos_path=str(videos_dir), name="opensora_lib", dimension_list=list(dimensions),
                       local=True, read_frame=False, mode="custom_input")
        result_file = out_dir / "opensora_lib_eval_results.json"
        raw = json.loads(result_file.read_text())
        return {"status": "ok", "scores": {k: float(v[0]) for k, v in raw.items()}}
    except Exception as err:  # an installed but broken VBench must not stop the report
        return {"status": f"error: {type(err).__name__}: {err}", "scores": None}


# ---------------------------------------------------------------------------------------------------------------
# Scoring generated clips


def score_records(records: list[dict], captions: list[str] | None = None) -> list[dict]:
    """`semantic_result` (`detectors.video_adherence` and the background colour) on the clips
    `opensora_lib.sample.generate` wrote (their lossless ``pixels`` copies), against ``captions`` (default: each
    record's prompt without the loop syntax or conditions)."""
    from ..data.video_io import read_video
    from ..sample import extract_json, split_loops

    out = []
    for k, rec in enumerate(records):
        caption = captions[k] if captions else split_loops(extract_json(rec["prompt"])[0])[0][1]
        res = semantic_result(read_video(rec["pixels"]), caption)
        res["prompt"] = caption
        out.append(res)
    return out


# ---------------------------------------------------------------------------------------------------------------
# Above chance? The caption-swap control
#
# A model that ignores its prompt still scores something on the semantic dimensions: clips that always show a green
# object "match" every prompt that names green, and a detector may read a direction into noise. The chance level of
# *these very clips* is measured by scoring each of them against the other prompts' captions (a permutation
# control): clip i against caption (i + s) mod n for s = 1..shifts. Clips that follow their own prompts score higher
# on their own captions; how surprising the difference is, is read from a one-sided exact binomial test
# (H0: each clip matches its own caption with the control's rate).

SEMANTIC_KEYS = {"color": "color", "object class": "shape", "object motion": "motion", "camera motion": "camera",
                 "background colour": "background"}  # the last is reported beside the table, not weighted


def semantic_result(frames: np.ndarray, caption: str) -> dict:
    """`detectors.video_adherence` plus the background colour hit (`background.background_colour`)."""
    from .background import background_colour
    from .detectors import video_adherence

    res = video_adherence(frames, caption)
    res["background"] = background_colour(frames, caption)["background"]
    return res


def image_to_video_result(frames: np.ndarray, condition: np.ndarray, caption: str) -> dict:
    """One image-to-video clip against its condition image (the first frame of a real clip) and that clip's caption.

    ``psnr``: the first frame against the condition (`detectors.first_frame_fidelity`): the conditioned latent frame
    stays exact, so this is the VAE's reconstruction error, the same for every model. What the model adds is the
    continuation: ``seam_jump`` / ``seam_score`` (`detectors.seam_continuity` at frame 1: does the clip jump from the
    given frame to the first generated one, against its own pace of change) and ``object_kept`` (the caption's first
    object found in its colour by the colour vote of `detectors.video_adherence`, which reads frames spread over
    the whole clip: an object that is only in the given frame fails it)."""
    from .detectors import first_frame_fidelity, seam_continuity

    seam = seam_continuity(frames, 1)
    res = semantic_result(frames, caption)
    return {"psnr": first_frame_fidelity(frames, condition)["psnr"], "seam_jump": seam["jump"],
            "seam_score": seam["score"], "object_kept": res.get("color"), "motion": res.get("motion"),
            "detected_motion": res.get("detected_motion")}


def summarise_image_to_video(results: list[dict]) -> dict:
    """Means over `image_to_video_result` records (None where no clip has the value)."""
    def mean(key):
        return _mean(r.get(key) for r in results)

    return {"clips": len(results), "psnr_mean": mean("psnr"), "seam_score_mean": mean("seam_score"),
            "seam_jump_mean": mean("seam_jump"), "object_kept": mean("object_kept"),
            "motion_given_object_found": motion_given_object_found(
                [{"color": r.get("object_kept"), "motion": r.get("motion")} for r in results])}


def image_to_video_table(results: dict[str, dict[str, dict]]) -> str:
    """Markdown: ``{checkpoint: {setting: summarise_image_to_video(...)}}`` as one row per checkpoint and setting."""
    lines = ["| model | setting | clips | first-frame PSNR (dB) | seam score | object kept | motion, object kept |",
             "|---|---|---|---|---|---|---|"]
    for name, settings in results.items():
        for setting, s in settings.items():
            m = s["motion_given_object_found"]
            cells = ["-" if s[k] is None else fmt.format(s[k]) for k, fmt in
                     (("psnr_mean", "{:.1f}"), ("seam_score_mean", "{:.2f}"), ("object_kept", "{:.0%}"))]
            motion = f"{m['hits']}/{m['n']}" if m["n"] else "-"
            lines.append(f"| {name} | {setting} | {s['clips']} | " + " | ".join(cells) + f" | {motion} |")
    return "\n".join(lines)


def binomial_tail(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p): the one-sided p-value of k successes in n trials at rate p."""
    from math import comb

    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be in [0, 1], got {p}")
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    return float(min(1.0, sum(comb(n, i) * p ** i * (1.0 - p) ** (n - i) for i in range(k, n + 1))))


def caption_swap_control(clips: list[np.ndarray], captions: list[str], shifts: int | None = None) -> dict:
    """The semantic dimensions of ``clips`` scored against the *other* clips' captions: clip i against caption
    (i + s) mod n, s = 1..shifts (default: every other caption). Returns the mean per dimension (None where no
    swapped caption states it), the hit counts behind each mean (``counts``: {dim: {"hits", "n"}}) and the number
    of (clip, caption) pairs."""
    n = len(clips)
    if n != len(captions):
        raise ValueError(f"{n} clips but {len(captions)} captions")
    shifts = n - 1 if shifts is None else min(int(shifts), n - 1)
    values: dict[str, list[float]] = {dim: [] for dim in SEMANTIC_KEYS}
    for i, frames in enumerate(clips):
        for s in range(1, shifts + 1):
            res = semantic_result(frames, captions[(i + s) % n])
            for dim, key in SEMANTIC_KEYS.items():
                if res.get(key) is not None:
                    values[dim].append(float(res[key]))
    out: dict = {dim: (float(np.mean(v)) if v else None) for dim, v in values.items()}
    out["counts"] = {dim: {"hits": int(sum(v)), "n": len(v)} for dim, v in values.items()}
    out["pairs"] = n * shifts
    return out


def semantic_counts(results: list[dict]) -> dict[str, dict]:
    """Per semantic dimension (`SEMANTIC_KEYS`): hits / n over the results that state it, and the rate (None when
    none does)."""
    out = {}
    for dim, key in SEMANTIC_KEYS.items():
        vals = [int(r[key]) for r in results if r.get(key) is not None]
        out[dim] = {"hits": sum(vals), "n": len(vals), "rate": sum(vals) / len(vals) if vals else None}
    return out


def above_chance(results: list[dict], control: dict, alpha: float = 0.05) -> dict[str, dict]:
    """Per semantic dimension: hits / n of the clips against their own captions (`semantic_result` results, as
    `score_records` gives them), the control's chance rate, the one-sided binomial p-value and whether it is below ``alpha``.

    The test's rate is the control's with one hit and one miss added, (hits + 1) / (n + 2) (Laplace's rule), when
    the control has its counts: a finite control that never hit would otherwise make any single hit "certain"."""
    out = semantic_counts(results)
    for dim, own in out.items():
        k, n, chance = own["hits"], own["n"], control.get(dim)
        counts = control.get("counts", {}).get(dim)
        rate0 = (counts["hits"] + 1) / (counts["n"] + 2) if counts and counts["n"] else chance
        p = binomial_tail(k, n, rate0) if n and rate0 is not None else None
        own.update(chance=chance, p_value=p, above=bool(p is not None and p < alpha))
    return out


def _chance_cell(d: dict, above: bool) -> str:
    """One cell of `chance_table`: 'rate (hits/n) vs chance, p', or '-' where nothing was measured."""
    if not d or d.get("rate") is None or d.get("chance") is None:
        return "-"
    mark = " **above**" if above else ""
    return f"{100 * d['rate']:.1f}% ({d['hits']}/{d['n']}) vs {100 * d['chance']:.1f}%, p={d['p_value']:.3g}{mark}"


def chance_table(tests: dict[str, dict[str, dict]], given_found: dict[str, dict] | None = None,
                 alpha: float = 0.05) -> str:
    """Markdown: one row per checkpoint, per semantic dimension 'rate (chance, p)' in percent.

    ``given_found`` ({label: `motion_given_object_found`}) adds a last column, the direction among the clips whose
    object was found against 1 in 5: "object motion" needs the colour found too, so it can pass on colour alone."""
    extra = ["direction where colour found"] if given_found is not None else []
    head = "| model | " + " | ".join(list(SEMANTIC_KEYS) + extra) + " |"
    lines = [head, "|" + "---|" * (len(SEMANTIC_KEYS) + len(extra) + 1)]
    for label, t in tests.items():
        cells = [_chance_cell(t[dim], t[dim].get("above", False)) for dim in SEMANTIC_KEYS]
        if given_found is not None:
            m = given_found.get(label) or {}
            cells.append(_chance_cell(m, m.get("p_value") is not None and m["p_value"] < alpha))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def motion_given_object_found(results: list[dict], num_directions: int = 5) -> dict:
    """Direction accuracy among the clips whose named object was found (colour vote passed) and tracked: hits / n
    and the one-sided binomial p-value against guessing one of ``num_directions`` (left, right, up, down, static).
    Separates "moves the way the prompt says" from "shows the named object at all", which `above_chance`'s object
    motion mixes."""
    found = [int(r["motion"]) for r in results if r.get("motion") is not None and r.get("color")]
    k, n = sum(found), len(found)
    return {"hits": k, "n": n, "rate": k / n if n else None, "chance": 1.0 / num_directions,
            "p_value": binomial_tail(k, n, 1.0 / num_directions) if n else None}



def motion_by_group(results: list[dict], groups: tuple[str, ...], group_of) -> dict[str, dict]:
    """`motion_given_object_found` per group: ``group_of(result)`` names each result's group (None: left out),
    e.g. the prompt's camera or whether the caption moves the object. ``{group: {...}}`` in the order of ``groups``."""
    labels = [group_of(r) for r in results]
    return {g: motion_given_object_found([r for r, lab in zip(results, labels) if lab == g]) for g in groups}


def split_line(split: dict[str, dict]) -> str:
    """``motion_by_group(...)`` as one line: "group: hits/n (p = ...); ..."."""
    return "; ".join(f"{g}: {m['hits']}/{m['n']}" + (f" (p = {m['p_value']:.3g})" if m["n"] else "")
                     for g, m in split.items())

_UNIT = {"left": (-1.0, 0.0), "right": (1.0, 0.0), "up": (0.0, -1.0), "down": (0.0, 1.0)}  # image axes: y down


def mover_speed(results: list[dict]) -> dict:
    """How far the named objects that the caption says move actually move, among the clips whose object was found
    (colour vote passed) and tracked: ``n``, ``median_speed`` (px/frame of the detected own motion, any direction),
    ``median_along`` (px/frame along the captioned direction: negative goes the other way) and ``static_share``
    (share read as standing still). Separates "moves, but the wrong way" from "does not move": the world's movers go
    0.8-1.6 px/frame (`params/data.yaml` object_speed), so the same numbers on real clips are the yardstick."""
    along, speed, static = [], [], 0
    for r in results:
        named = r.get("named") or {}
        if not r.get("color") or r.get("velocity") is None or named.get("motion") not in _UNIT:
            continue
        v = np.asarray(r["velocity"], dtype=np.float64)
        speed.append(float(np.hypot(*v)))
        along.append(float(v @ np.asarray(_UNIT[named["motion"]])))
        static += r.get("detected_motion") == "static"
    n = len(speed)
    return {"n": n, "median_speed": float(np.median(speed)) if n else None,
            "median_along": float(np.median(along)) if n else None, "static_share": static / n if n else None}


def mover_speed_markdown(rows: dict[str, dict]) -> str:
    """``{label: mover_speed(...)}`` as a markdown table (px/frame)."""
    lines = ["| clips | movers found | median speed (px/frame) | median along the caption (px/frame) | read as still |",
             "|---|---|---|---|---|"]
    for label, m in rows.items():
        if not m["n"]:
            lines.append(f"| {label} | 0 | - | - | - |")
            continue
        lines.append(f"| {label} | {m['n']} | {m['median_speed']:.2f} | {m['median_along']:+.2f} | "
                     f"{100 * m['static_share']:.0f}% |")
    return "\n".join(lines)
