"""The HTML report: one self-contained page (images and videos inlined, no scripts, no CDN).

Sections follow the seed report. Each section lists the metrics files and figures it draws on; a section whose
inputs the pipeline has not produced yet says so instead of showing numbers. Every section ends with its
provenance: the DVC stages that produced its inputs, their params and the hashes of their deps (from dvc.lock).
Each section opens with the released system's numbers beside ours (opensora_lib/seed_numbers.py); the page ends
with the benchmark board (reports/bench/*.json against this machine's fp32 matmul rate, reports/bench/matmul.json).
"""

from __future__ import annotations

import base64
import html
import json
import mimetypes
from dataclasses import dataclass, field
from pathlib import Path


from opensora_lib import seed_numbers


@dataclass
class Section:
    key: str
    title: str
    intro: str  # what the seed report says and what we measure, in our words
    metrics: list[str] = field(default_factory=list)  # metrics/<name>.json files
    figures: list[str] = field(default_factory=list)  # glob patterns under reports/figures/ (images, gif, mp4)
    stages: list[str] = field(default_factory=list)  # DVC stages whose provenance is shown
    summary: str = ""  # name of a function of this module that renders a cross-file summary table (root -> html)


SECTIONS: list[Section] = [
    Section(
        key="data",
        title="Data: the synthetic world",
        intro=(
            "Open-Sora 1.2 trains on Webvid-10M, then a 20M-clip subset of Panda-70M (aesthetic score >= 4.5), "
            "then ~2M high-quality clips scored for aesthetics and motion. With no data to download, this "
            "pipeline renders its own world of moving shapes under a moving camera, whose captions are written "
            "from the ground truth, so later stages can measure caption adherence objectively."
        ),
        metrics=["data"],
        figures=["data/*"],
        stages=["data"],
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
    ),
    Section(
        key="vae",
        title="Video compression network",
        intro=(
            "Open-Sora 1.2 compresses video 4x in time and 8x8 in space: the SDXL image VAE on every frame, then a "
            "causal 3D-convolution temporal VAE on the 2D latents, trained in three stages (frozen 2D VAE with an "
            "identity loss; without it; full pixel reconstruction over mixed lengths). The seed compares it with "
            "the 2D VAE alone by SSIM and PSNR. Our stage 0 trains a narrow 2D VAE from scratch as the SDXL VAE's "
            "stand-in, then the same three stages run at CPU scale. The narrow preset adds two parameter-free "
            "shortcuts (ours, not the reference's; no weights, so checkpoints keep the reference's keys): the 2D "
            "latent carries each 8x8 patch's mean colour and the temporal latent each 4-frame mean, and the "
            "networks learn the residual. Without them the narrow VAEs stay at the mean colour of a frame "
            "(~11-13 dB) for the whole CPU budget."
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
        figures=["image_base/*", "adapt/step*/*"],
        stages=["image_base"] + [f"adapt@{i}" for i in range(1, 9)],
        summary="adapt_chain_html",
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
            "on our own scale, not VBench's. Each semantic dimension, and the background colours the prompt "
            "names, is tested against its chance level measured on the model's own clips (scored against other "
            "prompts' captions; above_chance.md, whose last column asks whether the object moves the captioned way where its "
            "colour was found, against 1 in 5). A probe of the denoiser itself compares its loss on real clips "
            "under the true caption and under one with a factor swapped (caption_sensitivity.md): does it use the "
            "colour, the motion direction (also per timestep), the camera? The ceiling (vae_ceiling.md) "
            "is what the detectors read from real clips at the generation's size after the VAE round trip; "
            "mover_speed.md, how far the objects the caption moves actually move, generated against real. "
            "Image-to-video (image_to_video.md): the "
            "given frame is exact, the question is whether what follows continues it, at two guidance scales. The "
            "gallery shows generated clips."
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


MEDIA_SUFFIXES = {".png", ".jpg", ".jpeg", ".gif", ".svg", ".mp4", ".md"}  # .md: a pipe table a stage wrote


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


def markdown_table_html(text: str) -> str:
    """A Markdown pipe table (header, separator, rows) as an HTML table; other lines are dropped."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip().startswith("|")]
    rows = [[c.strip() for c in ln.strip("|").split("|")] for ln in lines]
    rows = [r for r in rows if not all(set(c) <= set("-: ") for c in r)]  # the |---|---| separator
    if not rows:
        return ""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows[1:])
    return f'<table class="seed"><tr>{head}</tr>{body}</table>'


def media_html(path: Path, root: Path) -> str:
    """An inlined image, GIF or MP4 (or a Markdown table) with its file name as caption."""
    name = html.escape(str(path.relative_to(root)) if path.is_relative_to(root) else path.name)
    if path.suffix.lower() == ".md":
        return f"<figure>{markdown_table_html(path.read_text())}<figcaption>{name}</figcaption></figure>"
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


# --- the seed's numbers beside ours -------------------------------------------------------------------------------

MISSING = object()  # an input the pipeline has not produced


def _dig(value, keys: list[str]):
    for key in keys:
        if isinstance(value, dict) and key in value:
            value = value[key]
        elif isinstance(value, list) and key.isdigit() and int(key) < len(value):
            value = value[int(key)]
        else:
            return MISSING
    return value


def lookup_ours(spec: str, root: Path, lock: dict):
    """Our counterpart of a seed number (see opensora_lib.seed_numbers): ``metrics/<name>.json:<a.b.c>`` or
    ``dvc.lock:<stage>:<a.b.c>``. Returns MISSING when the file, stage or key is absent."""
    if spec.startswith("dvc.lock:"):
        _, stage, key = spec.split(":", 2)
        entry = lock.get("stages", {}).get(stage)
        if not entry:
            return MISSING
        params: dict = {}
        for values in entry.get("params", {}).values():
            _flatten("", values, params)
        return params.get(key, MISSING)
    file, key = spec.split(":", 1)
    path = root / file
    if not path.exists():
        return MISSING
    return _dig(json.loads(path.read_text()), key.split("."))


def _fmt_ours(value) -> str:
    if isinstance(value, bool) or value is None:
        return "—" if value is None else str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return "—" if value != value else f"{value:.4g}"  # NaN: not measurable at this scale
    if isinstance(value, list):
        return ", ".join(_fmt_ours(v) for v in value)
    if isinstance(value, dict):
        return ", ".join(f"{html.escape(str(k))}: {_fmt_ours(v)}" for k, v in value.items())
    return html.escape(str(value))


def seed_table_html(numbers: list, root: Path, lock: dict) -> str:
    """The released system's numbers (at its scale) beside ours, one row per SeedNumber, with the source."""
    if not numbers:
        return ""
    rows = []
    for n in numbers:
        released = html.escape(n.released) if n.released is not None else "—"
        if n.ours is None:
            ours = "—"
        else:
            value = lookup_ours(n.ours, root, lock)
            if value is MISSING:
                ours = '<span class="missing">not produced yet</span>'
            elif n.percent and isinstance(value, (int, float)) and not isinstance(value, bool):
                ours = f"{100 * value:.2f}%"  # a fraction in metrics, shown in the seed's unit
            else:
                ours = _fmt_ours(value)
        if n.ours_note:
            ours += f' <span class="note">({html.escape(n.ours_note)})</span>'
        where = f' <span class="note">[{html.escape(n.ours)}]</span>' if n.ours else ""
        rows.append(f"<tr><td>{html.escape(n.quantity)}</td><td>{released}</td><td>{ours}{where}</td>"
                    f'<td class="note">{html.escape(n.source)}</td></tr>')
    return ('<table class="seed"><tr><th>quantity</th><th>released system, at its scale</th>'
            f"<th>ours (this run)</th><th>source of the released number</th></tr>{''.join(rows)}</table>")


# --- the benchmark board -----------------------------------------------------------------------------------------
#
# Every reports/bench/<name>.json is walked for workloads: a dict holding a time (the first of TIME_KEYS) is one
# workload (its children are details); lists of workloads are labelled by their ID_KEYS. A workload that records
# its FLOPs ("flops", or "gflop" in 10^9) gets achieved GFLOP/s = FLOPs / time and its fraction of this machine's
# fp32 matmul rate (reports/bench/matmul.json, benchmarks/bench_matmul.py) at the same thread count; others show
# their time and throughput and "—". The thread count is the workload's "threads" / "threads_per_process", else the
# nearest enclosing "threads", else the file's machine.threads.

TIME_KEYS = ("step_s", "seconds_best", "time_s", "seconds_per_step", "seconds")
RATE_KEYS = ("samples_per_s", "clips_per_s", "frames_per_s", "steps_per_s")
ID_KEYS = ("name", "op", "mode", "processes", "cross_attn", "precision")
SKIP_KEYS = {"machine", "records"}  # "records": the raw runs that a file's summary table already shows
CEILING_FILE = "matmul"


@dataclass
class BenchRow:
    bench: str
    workload: str
    time_key: str
    seconds: float
    rates: dict
    threads: int | None
    threads_recorded: bool = True  # False: the file's machine.threads (its main process), not the workload's
    gflop: float | None = None
    gflop_per_s: float | None = None
    ceiling_gflop_per_s: float | None = None
    fraction: float | None = None


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _item_label(item, index: int) -> str:
    if isinstance(item, dict):
        ids = [f"{k}={item[k]}" if k != "name" else str(item[k]) for k in ID_KEYS if item.get(k) is not None]
        if ids:
            return ", ".join(ids)
    return str(index)


def ceiling_for(threads: int | None, ceilings: dict[int, float]) -> float | None:
    """The matmul rate measured at this thread count, else at the largest count measured (None if none)."""
    if not ceilings:
        return None
    if threads in ceilings:
        return ceilings[threads]
    return ceilings[max(ceilings)]


def bench_rows(name: str, data: dict, ceilings: dict[int, float]) -> list[BenchRow]:
    """The workloads of one benchmark file, with achieved GFLOP/s and the fraction of the ceiling where known."""
    rows: list[BenchRow] = []

    def walk(node, label: list[str], threads, recorded: bool):
        if isinstance(node, list):
            for i, item in enumerate(node):
                walk(item, label + [_item_label(item, i)], threads, recorded)
            return
        if not isinstance(node, dict):
            return
        for key in ("threads", "threads_per_process"):
            if _number(node.get(key)):
                threads, recorded = int(node[key]), True
                break
        time_key = next((k for k in TIME_KEYS if _number(node.get(k))), None)
        if time_key is None:
            for key, child in node.items():
                if key not in SKIP_KEYS and isinstance(child, (dict, list)):
                    walk(child, label + [str(key)], threads, recorded)
            return
        row = BenchRow(name, " / ".join(label) or "(all)", time_key, float(node[time_key]),
                       {k: node[k] for k in RATE_KEYS if _number(node.get(k))}, threads, recorded)
        if _number(node.get("flops")):
            row.gflop = node["flops"] / 1e9
        elif _number(node.get("gflop")):
            row.gflop = float(node["gflop"])
        if row.gflop is not None and row.seconds > 0:
            row.gflop_per_s = row.gflop / row.seconds
            row.ceiling_gflop_per_s = ceiling_for(threads, ceilings)
            if row.ceiling_gflop_per_s:
                row.fraction = row.gflop_per_s / row.ceiling_gflop_per_s
        rows.append(row)

    machine_threads = _dig(data, ["machine", "threads"])
    walk(data, [], int(machine_threads) if _number(machine_threads) else None, False)
    return rows


def read_ceilings(matmul: dict | None) -> dict[int, float]:
    """{threads: fp32 matmul GFLOP/s} from reports/bench/matmul.json."""
    if not matmul:
        return {}
    return {int(k): float(v) for k, v in matmul.get("gflop_per_s_by_threads", {}).items()}


def _g(value, digits: str = ".4g") -> str:
    return "—" if value is None else format(value, digits)


def bench_board_html(bench_dir: Path) -> str:
    """The benchmark section: the matmul ceiling, every workload's time / throughput / fraction, raw files."""
    files = sorted(bench_dir.glob("*.json"))
    if not files:
        return '<p class="missing">No benchmark results yet: run <code>make bench</code>.</p>'
    data = {p.stem: json.loads(p.read_text()) for p in files}
    matmul = data.get(CEILING_FILE)
    ceilings = read_ceilings(matmul)
    parts = []
    if ceilings:
        rates = ", ".join(f"{t} thread{'s' if t > 1 else ''}: <b>{v:.4g} GFLOP/s</b>"
                          for t, v in sorted(ceilings.items()))
        what = html.escape(str(matmul.get("what", "")))
        parts.append(f"<p>Ceiling, this machine's fp32 matmul rate ({what}): {rates}. Each workload's achieved "
                     "GFLOP/s (where its benchmark counts FLOPs) is divided by the rate at its thread count. "
                     "Benchmarks ran at different times on a shared machine, so a fraction can exceed 1 when the "
                     "ceiling was measured under heavier load than the workload.</p>")
    else:
        parts.append('<p class="missing">No matmul ceiling (reports/bench/matmul.json): run '
                     "<code>python -m benchmarks.bench_matmul</code> or <code>make bench</code>; fractions are "
                     "shown as —.</p>")
    rows = [r for name, d in data.items() if name != CEILING_FILE for r in bench_rows(name, d, ceilings)]
    body = "".join(
        f"<tr><td>{html.escape(r.bench)}</td><td>{html.escape(r.workload)}</td>"
        f"<td>{_g(r.threads, 'd')}{'' if r.threads_recorded or r.threads is None else '*'}</td>"
        f"<td>{html.escape(r.time_key)} = {r.seconds:.4g}</td>"
        f"<td>{', '.join(f'{v:.4g} {html.escape(k[:-6])}/s' for k, v in r.rates.items()) or '—'}</td>"
        f"<td>{_g(r.gflop)}</td><td>{_g(r.gflop_per_s)}</td><td>{_g(r.ceiling_gflop_per_s)}</td>"
        f"<td><b>{_g(r.fraction, '.3f')}</b></td></tr>" for r in rows)
    parts.append("<table><tr><th>benchmark</th><th>workload</th><th>threads</th><th>time (s)</th>"
                 "<th>throughput</th><th>GFLOP</th><th>GFLOP/s</th><th>ceiling GFLOP/s</th>"
                 f"<th>fraction of ceiling</th></tr>{body}</table>")
    if any(not r.threads_recorded for r in rows):
        parts.append('<p class="note">* threads of the benchmark\'s main process; the workload records none.</p>')
    for name, d in data.items():
        parts.append(f"<details><summary>{html.escape(name)}.json</summary>{metrics_table(d)}</details>")
    return "".join(parts)


CSS = """
body{font-family:sans-serif;max-width:1100px;margin:auto;padding:1em;color:#222}
table{border-collapse:collapse;margin:.5em 0;font-size:13px}td,th{border:1px solid #ccc;padding:2px 8px}
th{background:#eee}figure{display:inline-block;margin:.5em}img,video{max-width:100%}
figcaption{font-size:11px;color:#666}.missing{color:#a33}section{border-top:1px solid #ddd;margin-top:1.5em}
.note{font-size:11px;color:#666}table.seed td:nth-child(2){background:#f4f4fb}
"""


def _read_lock(path: Path) -> dict:
    """dvc.lock as DVC reads it: YAML 1.2 (ruamel), so an unquoted `1:1` stays a string (PyYAML's YAML 1.1 reads
    it as the base-60 integer 61)."""
    from ruamel.yaml import YAML

    return YAML(typ="safe", pure=True).load(path.read_text()) or {}


def adapt_chain_html(root: Path) -> str:
    """One row per link of the adaptation chain (image base, steps 1-8): the change, the eval loss (DDPM before
    step 3, rectified flow from step 3), the caption adherence of generated stills, and the change in adherence
    from step 1 (the seed's claim: image ability is kept through the chain)."""
    rows = []
    for name in ["image_base"] + [f"adapt_step{i}" for i in range(1, 9)]:
        path = root / "metrics" / f"{name}.json"
        if path.exists():
            rows.append((name, json.loads(path.read_text())))
    if not rows:
        return ""
    first = next((m.get("adherence", {}).get("score") for n, m in rows if n == "adapt_step1"), None)
    out = ['<h3>The chain at a glance</h3><table class="seed"><tr><th>checkpoint</th><th>change</th>'
           "<th>train steps</th><th>eval loss (kind)</th><th>adherence: colour / shape / score</th>"
           "<th>score vs step 1 (points)</th></tr>"]
    for name, m in rows:
        adh = m.get("adherence", {}) or {}
        score = adh.get("score")
        delta = "—" if score is None or first is None else f"{100 * (score - first):+.1f}"
        loss = m.get("eval_loss")
        kind = m.get("eval_loss_kind", "")
        out.append(
            f"<tr><td>{html.escape(name)}</td><td>{html.escape(str(m.get('name', 'image base (DDPM)')))}</td>"
            f"<td>{_fmt(m.get('train_steps'))}</td><td>{_fmt(loss)} ({html.escape(str(kind))})</td>"
            f"<td>{_fmt(adh.get('color'))} / {_fmt(adh.get('shape'))} / {_fmt(score)}</td><td>{delta}</td></tr>")
    out.append("</table>")
    return "".join(out)


def build_report(root: str | Path = ".", out: str | Path = "reports/index.html", title: str = "Open-Sora 1.2,"
                 " reproduced") -> Path:
    """Write the report; returns its path. Reads metrics/*.json, reports/figures/**, reports/bench/*.json
    and dvc.lock under ``root``."""
    root = Path(root)
    out = root / out
    lock_path = root / "dvc.lock"
    lock = _read_lock(lock_path) if lock_path.exists() else {}
    lock = lock or {}
    parts = [f"<h1>{html.escape(title)}</h1>",
             "<p>Every number and figure below was produced by <code>dvc repro</code> in this repository. "
             "Each section opens with the numbers of the <i>released system, at its scale</i> (Open-Sora 1.2: "
             "STDiT3-XL/2 with 1.2B parameters, millions of clips, 12 nodes x 8 GPUs for video training) beside "
             "ours from this run (the embedded CPU default), each with its source; a released number missing "
             "from our reference notes shows as —.</p>"]
    for section in SECTIONS:
        parts.append(f'<section id="{section.key}"><h2>{html.escape(section.title)}</h2>')
        parts.append(f"<p>{html.escape(section.intro)}</p>")
        parts.append(seed_table_html(seed_numbers.for_section(section.key), root, lock))
        found = False
        if section.summary:
            summary = globals()[section.summary](root)
            found = found or bool(summary)
            parts.append(summary)
        for name in section.metrics:
            path = root / "metrics" / f"{name}.json"
            if path.exists():
                found = True
                table = metrics_table(json.loads(path.read_text()))
                rows = table.count("<tr>") - 1
                parts.append(f"<details><summary>metrics/{html.escape(name)}.json ({rows} values)</summary>"
                             f"{table}</details>")
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

    parts.append('<section id="bench"><h2>Benchmark board (<code>make bench</code>)</h2>')
    parts.append(bench_board_html(root / "reports" / "bench"))
    parts.append("</section>")

    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{CSS}</style></head><body>{''.join(parts)}</body></html>")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page)
    return out
