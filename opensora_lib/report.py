"""The HTML report: one self-contained page (images and videos inlined, no scripts, no CDN).

Sections follow the seed report. Each section lists the metrics files and figures it draws on; a section whose
inputs the pipeline has not produced yet says so instead of showing numbers. Every section ends with its
provenance: the DVC stages that produced its inputs, their params and the hashes of their deps (from dvc.lock).
"""

from __future__ import annotations

import base64
import html
import json
import mimetypes
from dataclasses import dataclass, field
from pathlib import Path

import yaml


@dataclass
class Section:
    key: str
    title: str
    intro: str  # what the seed report says and what we measure, in our words
    metrics: list[str] = field(default_factory=list)  # metrics/<name>.json files
    figures: list[str] = field(default_factory=list)  # glob patterns under reports/figures/ (images, gif, mp4)
    stages: list[str] = field(default_factory=list)  # DVC stages whose provenance is shown
    seed_numbers: dict = field(default_factory=dict)  # the released system's numbers, at its scale


SECTIONS: list[Section] = [
    Section(
        key="data",
        title="Data: the synthetic world",
        intro=(
            "Open-Sora 1.2 trains on about 30M clips (Webvid-10M, Panda-70M, MiraData, ...) filtered by "
            "aesthetic, motion and OCR scores. With no data to download, this pipeline renders its own world of "
            "moving shapes under a moving camera, whose captions are written from the ground truth, so later "
            "stages can measure caption adherence objectively."
        ),
        metrics=["data"],
        figures=["data/*"],
        stages=["data"],
        seed_numbers={"clips (stage 1-3 training)": "~30M", "training video hours": "~80k"},
    ),
    Section(
        key="data_tools",
        title="Data tools: from a folder of videos to a training CSV",
        intro=(
            "Open-Sora 1.2 cut raw video into scenes (PySceneDetect), scored each clip for aesthetics (CLIP + "
            "MLP), motion (optical flow) and camera motion, and wrote the scores into the captions. Our tools "
            "do the same on any folder of videos (broken files are rejected with a reason). On the synthetic "
            "world, where the truth is known, the camera-motion label and the motion score are measured "
            "against it. The aesthetic column is a labelled "
            "image-quality proxy (aes_proxy), not the LAION score, unless local CLIP weights are given."
        ),
        metrics=["data_tools"],
        figures=["data_tools/*"],
        stages=["data_tools"],
        seed_numbers={"camera-motion labels kept (high confidence)": "~13k clips",
                      "motion score": "UniMatch mean |flow| at 320x576, frames 10 apart"},
    ),
    Section(
        key="vae",
        title="Video compression network",
        intro=(
            "Open-Sora 1.2 compresses video 4x in time and 8x8 in space: the SDXL image VAE on every frame, then a "
            "causal 3D-convolution temporal VAE on the 2D latents, trained in three stages (frozen 2D VAE with an "
            "identity loss; without it; full pixel reconstruction over mixed lengths). The seed compares it with "
            "the 2D VAE alone by SSIM and PSNR. Our stage 0 trains a narrow 2D VAE from scratch as the SDXL VAE's "
            "stand-in, then the same three stages run at CPU scale."
        ),
        metrics=["vae_stage0", "vae_stage1", "vae_stage2", "vae_stage3", "vae_eval"],
        figures=["vae/*", "vae_stage*/*"],
        stages=["vae_2d_pretrain", "vae@1", "vae@2", "vae@3", "vae_eval"],
    ),
    Section(
        key="adapt",
        title="Rectified flow and model adaptation",
        intro="An image DiT adapted to STDiT3 in eight steps; eval loss and caption adherence per step.",
        metrics=["image_base"] + [f"adapt_step{i}" for i in range(1, 9)],
        figures=["adapt/*"],
    ),
    Section(
        key="train",
        title="Multi-stage video training",
        intro=(
            "Open-Sora 1.2 trains in three stages over resolution x frame-count x aspect-ratio buckets, with frame "
            "masks for image-to-video and extension (25% of samples in stage 3) and score suffixes in captions; "
            "ZeRO-2, AdamW eps 1e-15, EMA 0.99. Here the same engine trains STDiT3-S/2 on the synthetic world."
        ),
        metrics=["train_stage1", "train_stage2", "train_stage3"],
        figures=["train/*/*"],
        stages=["video@1", "video@2", "video@3"],
    ),
    Section(
        key="eval",
        title="Evaluation",
        intro=(
            "The seed tracks the rectified-flow validation loss per resolution and per length at 10 fixed timesteps, "
            "and VBench scores. We compute the same loss grid, and replace VBench (whose weights cannot be "
            "downloaded here) with detectors that read the synthetic world's truth back from pixels (object colour, "
            "shape, motion direction, camera motion, flicker, smoothness), validated on real clips. Our scores are "
            "on our own scale, not VBench's; the gallery shows generated clips."
        ),
        metrics=["eval"],
        figures=["eval/*", "gallery/*"],
        stages=["eval", "sample"],
    ),
    Section(
        key="sp",
        title="Sequence parallelism",
        intro=(
            "Open-Sora 1.2 splits the spatial tokens of long, high-resolution videos across devices (Ulysses): "
            "before each spatial attention an all-to-all trades the sequence split for a head split, and back "
            "after it; temporal blocks stay local. Here the same code runs over CPU processes (gloo) on a narrow "
            "STDiT3 at a 240p, 51-frame latent; outputs equal the single-process model (checked by the stage). "
            "The table gives time, speed-up, CPU time, bytes exchanged and peak memory per process."
        ),
        metrics=["sequence_parallel"],
        figures=["sp/*"],
        stages=["sequence_parallel"],
    ),
]


MEDIA_SUFFIXES = {".png", ".jpg", ".jpeg", ".gif", ".svg", ".mp4"}


def _data_uri(path: Path) -> str:
    mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode()}"


def _flatten(prefix: str, value, out: dict) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
    else:
        out[prefix] = value


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return html.escape(str(value))


def metrics_table(metrics: dict) -> str:
    flat: dict = {}
    _flatten("", metrics, flat)
    rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{_fmt(v)}</td></tr>" for k, v in flat.items())
    return f"<table><tr><th>metric</th><th>value</th></tr>{rows}</table>"


def media_html(path: Path, root: Path) -> str:
    """An inlined image, GIF or MP4 with its file name as caption."""
    name = html.escape(str(path.relative_to(root)) if path.is_relative_to(root) else path.name)
    if path.suffix.lower() == ".mp4":
        body = f'<video controls muted loop src="{_data_uri(path)}"></video>'
    else:
        body = f'<img alt="{name}" src="{_data_uri(path)}">'
    return f"<figure>{body}<figcaption>{name}</figcaption></figure>"


def provenance_html(stages: list[str], lock: dict) -> str:
    """Params and dep hashes of the given stages, as recorded in dvc.lock."""
    items = []
    for stage in stages:
        entry = lock.get("stages", {}).get(stage)
        if not entry:
            continue
        params = {}
        for values in entry.get("params", {}).values():
            _flatten("", values, params)
        deps = ", ".join(f"{html.escape(d['path'])} <code>{d.get('md5', '')[:10]}</code>"
                         for d in entry.get("deps", []))
        param_text = ", ".join(f"{html.escape(k)}={_fmt(v)}" for k, v in params.items())
        items.append(f"<li><b>{html.escape(stage)}</b>: params {param_text or '(none)'}; deps {deps}</li>")
    if not items:
        return ""
    return f"<details><summary>provenance (dvc.lock)</summary><ul>{''.join(items)}</ul></details>"


CSS = """
body{font-family:sans-serif;max-width:1100px;margin:auto;padding:1em;color:#222}
table{border-collapse:collapse;margin:.5em 0;font-size:13px}td,th{border:1px solid #ccc;padding:2px 8px}
th{background:#eee}figure{display:inline-block;margin:.5em}img,video{max-width:100%}
figcaption{font-size:11px;color:#666}.missing{color:#a33}section{border-top:1px solid #ddd;margin-top:1.5em}
"""


def build_report(root: str | Path = ".", out: str | Path = "reports/index.html", title: str = "Open-Sora 1.2,"
                 " reproduced") -> Path:
    """Write the report; returns its path. Reads metrics/*.json, reports/figures/**, reports/bench/*.json
    and dvc.lock under ``root``."""
    root = Path(root)
    out = root / out
    lock_path = root / "dvc.lock"
    lock = yaml.safe_load(lock_path.read_text()) if lock_path.exists() else {}
    lock = lock or {}
    parts = [f"<h1>{html.escape(title)}</h1>",
             "<p>Every number and figure below was produced by <code>dvc repro</code> in this repository. "
             "Numbers labelled <i>released</i> are the Open-Sora 1.2 report's, at its scale (1.1B parameters, "
             "tens of millions of clips, hundreds of GPUs); ours come from the embedded CPU default.</p>"]
    for section in SECTIONS:
        parts.append(f'<section id="{section.key}"><h2>{html.escape(section.title)}</h2>')
        parts.append(f"<p>{html.escape(section.intro)}</p>")
        found = False
        for name in section.metrics:
            path = root / "metrics" / f"{name}.json"
            if path.exists():
                found = True
                parts.append(f"<h3>{html.escape(name)}</h3>{metrics_table(json.loads(path.read_text()))}")
        if section.seed_numbers:
            rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(str(v))}</td></tr>"
                           for k, v in section.seed_numbers.items())
            parts.append(f"<table><tr><th>released system</th><th>value</th></tr>{rows}</table>")
        for pattern in section.figures:
            for fig in sorted((root / "reports" / "figures").glob(pattern)):
                if fig.suffix.lower() not in MEDIA_SUFFIXES:
                    continue
                found = True
                parts.append(media_html(fig, root))
        if not found:
            parts.append('<p class="missing">Not produced by this pipeline yet.</p>')
        parts.append(provenance_html(section.stages, lock))
        parts.append("</section>")

    bench = sorted((root / "reports" / "bench").glob("*.json"))
    parts.append('<section id="bench"><h2>Benchmarks (<code>make bench</code>)</h2>')
    if bench:
        for path in bench:
            parts.append(f"<h3>{html.escape(path.stem)}</h3>{metrics_table(json.loads(path.read_text()))}")
    else:
        parts.append('<p class="missing">No benchmark results yet: run <code>make bench</code>.</p>')
    parts.append("</section>")

    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{CSS}</style></head><body>{''.join(parts)}</body></html>")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page)
    return out
