"""The VAE ceiling: what the detectors can read back from *real* clips at the generation's size, before and after
the VAE round trip.

A generated clip reaches the detectors through the VAE decoder at the eval's resolution and length (48 px, 1:1, 17
frames in the embedded default). Some of what a caption states does not survive that path even for a perfect
denoiser: a centre crop to 1:1 can cut an object's edge, a narrow VAE blurs shapes and moves a small object's
centroid, and four frames share one temporal latent. This module measures that bound on the validation clips:

- ``raw``: each clip's first ``num_frames`` frames, resized to cover and centre-cropped as the sampler frames a
  reference (`opensora_lib.data.datasets.resize_crop`), scored against its own caption;
- ``vae``: the same pixels encoded (posterior mean) and decoded by the VAE, scored the same way.

Per semantic dimension (`scores.SEMANTIC_KEYS`) the hits / n of each; a generator with this VAE at this size can
be expected to score about the ``vae`` rates at best, so a generated clip's score is read against that ceiling and
against the caption-swap chance level (`scores.above_chance`).
"""

from __future__ import annotations

import torch

from ..data.aspect import ratio_key
from ..data.datasets import resize_crop, to_uint8
from ..data.video_io import read_video
from .scores import SEMANTIC_KEYS, mover_speed, semantic_counts, semantic_result


@torch.no_grad()
def vae_ceiling(vae, rows: list[dict], resolution: str = "48px", aspect_ratio: str = "1:1", num_frames: int = 17,
                progress: bool = True) -> dict:
    """Detector rates on the video rows of ``rows`` (CSV rows with "path", "text", "kind", "num_frames") that have at
    least ``num_frames`` frames: ``{"raw": {dim: {hits, n, rate}}, "vae": {...}, "clips": n, "size": [H, W],
    "per_clip": [{"caption", "raw": {...}, "vae": {...}}], "movers": {"raw": ..., "vae": ...}}`` (per clip: the
    semantic keys and the detected motion; movers: `scores.mover_speed`, how far the captioned movers move)."""
    from tqdm.auto import tqdm

    from ..sample import resolution_table

    table = resolution_table(resolution)
    key = ratio_key(aspect_ratio)
    if key not in table:
        raise ValueError(f"aspect ratio {aspect_ratio!r} not in the {resolution} table; valid: {sorted(table)}")
    height, width = table[key]
    clips = [r for r in rows if r.get("kind", "video") == "video" and int(r["num_frames"]) >= num_frames]
    raw_results, vae_results, per_clip = [], [], []
    for row in tqdm(clips, desc="vae ceiling", disable=not progress):
        pixels = resize_crop(read_video(row["path"], indices=list(range(num_frames))), height, width)  # [3, T, H, W]
        z = vae.encode(pixels[None].to(vae.device, vae.dtype), sample_posterior=False)  # [1, C, t, h, w]
        recon = vae.decode(z, num_frames=num_frames)[0].float().cpu()  # [3, T, H, W]
        pair = {}
        for name, video, bucket in (("raw", pixels, raw_results), ("vae", recon, vae_results)):
            res = semantic_result(to_uint8(video), row["text"])
            bucket.append(res)
            pair[name] = {k: res.get(k) for k in list(SEMANTIC_KEYS.values()) + ["detected_motion"]}
        per_clip.append({"caption": row["text"], **pair})
    return {"raw": semantic_counts(raw_results), "vae": semantic_counts(vae_results), "clips": len(clips),
            "size": [height, width], "num_frames": int(num_frames), "per_clip": per_clip,
            "movers": {"raw": mover_speed(raw_results), "vae": mover_speed(vae_results)}}


def ceiling_markdown(ceiling: dict) -> str:
    """The two rows (real clips, after the VAE) as a markdown table of hits / n per semantic dimension."""
    dims = list(SEMANTIC_KEYS)
    lines = ["| clips | " + " | ".join(dims) + " |", "|" + "---|" * (len(dims) + 1)]
    for name, label in (("raw", "real"), ("vae", "real, VAE round trip")):
        cells = []
        for dim in dims:
            d = ceiling[name][dim]
            cells.append("-" if not d["n"] else f"{100 * d['rate']:.0f}% ({d['hits']}/{d['n']})")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
