"""From an image DiT to Open-Sora 1.2's video model: the image base model and the eight adaptation steps (facts §6).

Open-Sora 1.2 starts from PixArt-Σ 2K (an image DiT trained as a discrete DDPM on SDXL-VAE latents) and changes
one thing at a time, training a while after each change (steps on 8 GPUs, report_03):

    1. multi-resolution images (144p-2K)                        20k     nothing changes in the model
    2. add QK-norm                                              18k     RMSNorm on q and k, weights 1
    3. DDPM -> rectified flow (continuous time)                 10k     the objective changes, not the weights
    4. logit-normal + resolution-aware timestep sampling        33k     the timestep distribution changes
    5. AdamW eps 1e-15                                           8k     the optimiser changes
    6. video-VAE latents (per-channel normalised) + fps cond.   25k     fps embedder added, output zero-initialised
    7. temporal blocks, zero-initialised projections (images)    3k     temporal blocks added, they start as identity
    8. temporal blocks only, on videos with frame masks          38k     everything else frozen

Each change is a function here, tested alone: the model changes (`add_qk_norm`, `add_fps_conditioning`,
`add_temporal_blocks`, `freeze_all_but_temporal`) are surgery on a built STDiT3 (a new model with the new
config receives every old weight; the added weights are initialised so that the output is unchanged, except
QK-norm, which changes attention exactly as RMS-normalising q and k implies). The training changes
(`switch_to_rectified_flow`, `use_logit_normal_timesteps`, `use_small_adam_eps`, `swap_to_video_vae`, ...) edit a
`Recipe`: everything about how a model is trained that is not a weight. `apply_adapt_step(n, ...)` applies step n.

The rest is what a step needs on this machine: a feature set of VAE posteriors and caption states (computed once,
cached on disk by content), a small plain-PyTorch training loop (AdamW, grad clip, EMA), the eval loss at fixed
timesteps, still generation with the step's sampler (DDPM or rectified flow) and checkpoints that hold the model
config and the recipe, so that the next step rebuilds everything from the file alone.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn as nn

from ..data.synthetic import ObjectSpec, SampleSpec, make_caption, read_csv
from ..models.stdit3 import STDiT3, check_state_dict, load_pixart_sigma_checkpoint
from ..schedulers.ddpm import DDPMSampler, GaussianDiffusion
from ..schedulers.masks import MaskGenerator
from ..schedulers.rectified_flow import RFLOW, RFlowScheduler, timestep_transform
from ..utils.checkpoint import atomic_torch_save, load_torch_file

IMG_FPS = 120
CHECKPOINT_FORMAT = "opensora_lib.adapt/1"
NUM_TIMESTEPS = 1000
# eval loss timesteps of Open-Sora (eval/loss): linspace(0, 1000, 12)[1:-1]
EVAL_TIMESTEPS = [NUM_TIMESTEPS * k / 11 for k in range(1, 11)]

ADAPT_STEPS = {
    1: "multi-resolution images",
    2: "QK-norm",
    3: "rectified flow (continuous time)",
    4: "logit-normal + resolution-aware timestep sampling",
    5: "AdamW eps 1e-15",
    6: "video VAE (per-channel normalised) + fps conditioning",
    7: "temporal blocks, zero-initialised (images)",
    8: "temporal blocks only, videos with masks",
}

# mask ratios of configs/opensora-v1-2/train/adapt.py (facts §4.1); identity takes the remaining 0.5 (the ten ratios
# sum to 0.50; the facts table's "0.45" is an addition slip)
ADAPT_MASK_RATIOS = {
    "random": 0.2, "intepolate": 0.01, "quarter_random": 0.01, "quarter_head": 0.01, "quarter_tail": 0.01,
    "quarter_head_tail": 0.01, "image_random": 0.05, "image_head": 0.1, "image_tail": 0.05, "image_head_tail": 0.05,
}


# ==================================================================================================
# The recipe: how a model is trained (everything that is not a weight)
# ==================================================================================================


@dataclass
class Recipe:
    """objective: "ddpm" (discrete, ε + learned Σ, PixArt) or "rflow" (velocity, t continuous in [0, 1000]);
    sample_method: rectified-flow timesteps "uniform" or "logit-normal"; timestep_transform: the resolution- and
    length-aware shift; adam_eps: AdamW's eps; latents: "image_vae" (2D VAE latents x 0.18215, PixArt) or
    "video_vae" (the video VAE's latents, normalised per channel by latent_shift / latent_scale);
    resolutions: resolution names trained on ("" = all in the data); data: "images" or "videos";
    only_train_temporal: every weight but the temporal blocks frozen; mask_ratios: frame masks (videos)."""

    objective: str = "ddpm"
    sample_method: str = "uniform"
    timestep_transform: bool = False
    adam_eps: float = 1e-8
    latents: str = "image_vae"
    latent_shift: list[float] | None = None
    latent_scale: list[float] | None = None
    resolutions: str = ""
    data: str = "images"
    only_train_temporal: bool = False
    mask_ratios: dict[str, float] | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Recipe":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def resolution_list(self) -> list[str] | None:
        names = [r.strip() for r in self.resolutions.split(",") if r.strip()]
        return names or None


def switch_to_rectified_flow(recipe: Recipe) -> Recipe:
    """Step 3: discrete DDPM (ε, t in 0..999) -> rectified flow (velocity x0 - noise, continuous t, uniform).
    The weights stay: t in [0, 1000] keeps the timestep embedding's range, t = 1000 is pure noise as t = 999 was
    nearly; the first C output channels now predict the velocity; the σ channels are no longer read."""
    return dataclasses.replace(recipe, objective="rflow", sample_method="uniform", timestep_transform=False)


def use_logit_normal_timesteps(recipe: Recipe) -> Recipe:
    """Step 4: t/1000 = sigmoid(N(0, 1)), then the resolution/length-aware transform (SD3)."""
    if recipe.objective != "rflow":
        raise ValueError("logit-normal timesteps are a rectified-flow setting: switch to rectified flow first")
    return dataclasses.replace(recipe, sample_method="logit-normal", timestep_transform=True)


def use_small_adam_eps(recipe: Recipe, eps: float = 1e-15) -> Recipe:
    """Step 5: AdamW eps 1e-15 (SD3; safe with QK-norm)."""
    return dataclasses.replace(recipe, adam_eps=eps)


def swap_to_video_vae(recipe: Recipe, shift: Sequence[float], scale: Sequence[float]) -> Recipe:
    """Step 6 (data side): train on the video VAE's latents, normalised per channel: z = (z_vae - shift) / scale."""
    return dataclasses.replace(recipe, latents="video_vae", latent_shift=[float(v) for v in shift],
                               latent_scale=[float(v) for v in scale])


def train_on_videos(recipe: Recipe, mask_ratios: dict[str, float] | None = None) -> Recipe:
    """Step 8 (data side): videos with the adapt frame-mask ratios, only the temporal blocks trained."""
    return dataclasses.replace(recipe, data="videos", only_train_temporal=True,
                               mask_ratios=dict(ADAPT_MASK_RATIOS if mask_ratios is None else mask_ratios))


# ==================================================================================================
# Model surgery
# ==================================================================================================


def rebuild_stdit3(model: STDiT3, seed: int = 0, new_weights_from: STDiT3 | None = None, **changes) -> tuple[STDiT3, list[str]]:
    """A new STDiT3 with `model.config` updated by `changes`, holding every weight of `model`.

    Weights the new config adds keep their fresh initialisation (drawn from `seed`, without touching the global
    RNG), or are copied from `new_weights_from` (an already rebuilt model: keeps an EMA copy identical).
    A weight of `model` that the new config lacks, or whose shape changes, is an error. Returns (model, added keys).
    """
    config = {**model.config, **changes}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        new = STDiT3(**config)
    old_sd, new_sd = model.state_dict(), new.state_dict()
    dropped = [k for k in old_sd if k not in new_sd]
    if dropped:
        raise ValueError(f"the new config drops weight '{dropped[0]}' ({len(dropped)} in all)")
    for k, v in old_sd.items():
        if v.shape != new_sd[k].shape:
            raise ValueError(f"the new config changes the shape of '{k}': {tuple(v.shape)} -> {tuple(new_sd[k].shape)}")
    added = [k for k in new_sd if k not in old_sd]
    state = dict(new_sd)
    state.update(old_sd)
    if new_weights_from is not None:
        source = new_weights_from.state_dict()
        state.update({k: source[k] for k in added})
    new.load_state_dict(state, strict=True)
    param = next(model.parameters())
    new = new.to(device=param.device, dtype=param.dtype)
    new.train(model.training)
    return new, added


def add_qk_norm(model: STDiT3, **kw) -> STDiT3:
    """Step 2: RMSNorm on q and k of every self-attention, gains initialised to 1. Attention then uses
    q/rms(q) and k/rms(k) (per head, eps 1e-6): the output changes exactly as that normalisation implies."""
    if model.config["qk_norm"]:
        raise ValueError("the model already has QK-norm")
    new, added = rebuild_stdit3(model, qk_norm=True, **kw)
    assert added and all(k.endswith((".attn.q_norm.weight", ".attn.k_norm.weight")) for k in added), added
    return new


def add_fps_conditioning(model: STDiT3, **kw) -> STDiT3:
    """Step 6: the fps embedder (sinusoid -> Linear -> SiLU -> Linear, added to the timestep embedding) with its
    output layer zero: the output is unchanged for every fps until training moves it."""
    if model.fps_embedder is not None:
        raise ValueError("the model is already fps-conditioned")
    new, added = rebuild_stdit3(model, enable_fps=True, **kw)
    assert added and all(k.startswith("fps_embedder.") for k in added), added
    assert new.fps_embedder.mlp[2].weight.abs().max() == 0 and new.fps_embedder.mlp[2].bias.abs().max() == 0
    return new


def add_temporal_blocks(model: STDiT3, **kw) -> STDiT3:
    """Step 7: a temporal block after every spatial block (+ RoPE), with the self-attention, cross-attention and
    MLP output projections zero: each starts as the identity, so the output is unchanged."""
    if model.temporal_blocks is not None:
        raise ValueError("the model already has temporal blocks")
    new, added = rebuild_stdit3(model, enable_temporal=True, **kw)
    assert added and all(k.startswith(("temporal_blocks.", "rope.")) for k in added), added
    for block in new.temporal_blocks:
        for lin in (block.attn.proj, block.cross_attn.proj, block.mlp.fc2):
            assert lin.weight.abs().max() == 0 and lin.bias.abs().max() == 0
    return new


def freeze_all_but_temporal(model: STDiT3) -> STDiT3:
    """Step 8: only the temporal blocks train (in place; returns the model)."""
    if model.temporal_blocks is None:
        raise ValueError("the model has no temporal blocks")
    model.requires_grad_(False)
    model.temporal_blocks.requires_grad_(True)
    return model


def apply_recipe_freezing(model: STDiT3, recipe: Recipe) -> STDiT3:
    """Trainability as the recipe says (all weights, or only the temporal blocks); RoPE frequencies never."""
    if recipe.only_train_temporal:
        freeze_all_but_temporal(model)
    else:
        model.requires_grad_(True)
    if model.rope is not None:
        model.rope.freqs.requires_grad_(False)
    return model


def apply_adapt_step(step: int, model: STDiT3, ema: STDiT3 | None, recipe: Recipe, seed: int = 0,
                     latent_norm: tuple[Sequence[float], Sequence[float]] | None = None):
    """Apply adaptation step `step` (1..8) to (model, its EMA copy, recipe) -> (model, ema, recipe).

    Step 6 needs `latent_norm` = (shift, scale) of the video-VAE latents. The EMA copy gets the same surgery,
    with the added weights copied from the model (so both start equal there).
    """
    def both(fn):
        new = fn(model, seed=seed)
        new_ema = None if ema is None else rebuild_stdit3(ema, new_weights_from=new,
                                                          **{k: new.config[k] for k in ("qk_norm", "enable_fps", "enable_temporal")})[0]
        return new, new_ema

    if step == 1:
        recipe = dataclasses.replace(recipe, resolutions="")
    elif step == 2:
        model, ema = both(add_qk_norm)
    elif step == 3:
        recipe = switch_to_rectified_flow(recipe)
    elif step == 4:
        recipe = use_logit_normal_timesteps(recipe)
    elif step == 5:
        recipe = use_small_adam_eps(recipe)
    elif step == 6:
        if latent_norm is None:
            raise ValueError("step 6 needs latent_norm=(shift, scale) of the video VAE latents")
        recipe = swap_to_video_vae(recipe, *latent_norm)
        model, ema = both(add_fps_conditioning)
    elif step == 7:
        model, ema = both(add_temporal_blocks)
    elif step == 8:
        recipe = train_on_videos(recipe, recipe.mask_ratios)
    else:
        raise ValueError(f"adaptation steps are 1..8, got {step}")
    apply_recipe_freezing(model, recipe)
    if ema is not None:
        ema.requires_grad_(False)
    return model, ema, recipe


def count_parameters(model: nn.Module) -> dict:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"total": total, "trainable": trainable}


# ==================================================================================================
# Checkpoints
# ==================================================================================================

_TRAINING_SWITCHES = dict(only_train_temporal=False, freeze_y_embedder=False, grad_checkpoint=False)


def checkpoint_config(model: STDiT3) -> dict:
    """The STDiT3 constructor kwargs to store: the architecture, with the training switches off (freezing is
    the recipe's business; a later stage sets its own)."""
    config = {k: (list(v) if isinstance(v, tuple) else v) for k, v in model.config.items()}
    config.update(_TRAINING_SWITCHES)
    return config


def json_safe(value):
    return json.loads(json.dumps(value, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))


def save_adapt_checkpoint(path: str | os.PathLike, model: STDiT3, ema: STDiT3 | None, recipe: Recipe, step: int,
                          info: dict | None = None) -> Path:
    """One file, written to a temp file and renamed: {"format", "config" (STDiT3 kwargs), "model", "ema",
    "recipe", "step" (0 = image base), "info" (JSON text)}. Loads with torch.load(weights_only=True); the video
    training engine reads it as an init checkpoint ({"config", "model", ...})."""
    sd = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    ema_sd = None if ema is None else {k: v.detach().cpu().contiguous() for k, v in ema.state_dict().items()}
    obj = {
        "format": CHECKPOINT_FORMAT,
        "config": checkpoint_config(model),
        "model_preset": "config",
        "model": sd,
        "ema": ema_sd if ema_sd is not None else sd,
        "recipe": json_safe(recipe.to_dict()),
        "step": int(step),
        "info": json.dumps(json_safe(info or {})),
    }
    return atomic_torch_save(obj, Path(path))


@dataclass
class AdaptCheckpoint:
    model: STDiT3
    ema: STDiT3
    recipe: Recipe
    step: int
    info: dict
    path: str


def load_adapt_checkpoint(path: str | os.PathLike, device="cpu") -> AdaptCheckpoint:
    """Rebuild model, EMA and recipe from a file written by `save_adapt_checkpoint` (nothing else needed)."""
    path = Path(path)
    state = load_torch_file(path)
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not an adaptation checkpoint (format {CHECKPOINT_FORMAT})")
    models = []
    for key in ("model", "ema"):
        m = STDiT3(**state["config"])
        check_state_dict(m, state[key], f"{path} [{key}]")
        m.load_state_dict(state[key], strict=True)
        models.append(m.to(device))
    recipe = Recipe.from_dict(state["recipe"])
    model, ema = models
    apply_recipe_freezing(model, recipe)
    ema.requires_grad_(False).eval()
    return AdaptCheckpoint(model, ema, recipe, int(state["step"]), json.loads(state.get("info") or "{}"), str(path))


def build_image_base_model(preset: str = "STDiT3-S/2", pixart_ckpt: str = "", seed: int = 0, **overrides) -> STDiT3:
    """The image base: a spatial-only STDiT3 of a preset's size (no temporal blocks, no QK-norm, no fps), as
    PixArt-Σ. Fresh (seeded) or, with `pixart_ckpt`, initialised from a local PixArt-Σ checkpoint through the
    converter (`stdit3.load_pixart_sigma_checkpoint`)."""
    from ..models.stdit3 import STDIT3_PRESETS

    if preset not in STDIT3_PRESETS:
        raise ValueError(f"unknown preset {preset!r}; known: {list(STDIT3_PRESETS)}")
    kwargs = {**overrides, "qk_norm": False, "enable_temporal": False, "enable_fps": False}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = STDIT3_PRESETS[preset](**kwargs)
    if pixart_ckpt:
        load_pixart_sigma_checkpoint(model, pixart_ckpt)
    return model


@torch.no_grad()
def output_change(before: STDiT3, after: STDiT3, x: torch.Tensor, t: torch.Tensor, model_kwargs: dict) -> dict:
    """How much a model change moved the output on one input: max |Δ| and |Δ|/|out| (eval mode, same input;
    the fps kwarg is ignored by a model without fps conditioning)."""
    before.eval()
    after.eval()
    a = before(x, t, **model_kwargs)
    b = after(x, t, **model_kwargs)
    diff = (a - b).abs()
    return {"max_abs_diff": float(diff.max()), "rel_diff": float(diff.norm() / a.norm().clamp(min=1e-12))}


# ==================================================================================================
# Data: still captions, items, fingerprints, the feature cache
# ==================================================================================================


def still_caption(row: dict) -> str:
    """The still-image caption of a synthetic-world row ("An image of a red circle on a blue background."),
    also for a clip's frames (objects and background, no motion), from the row's ground-truth columns."""
    objects = []
    for k in range(2):
        shape, color = row.get(f"obj{k}_shape", ""), row.get(f"obj{k}_color", "")
        if shape and color:
            objects.append(ObjectSpec(shape=shape, color=color, motion="static", speed=0.0, size=1.0, x0=0.0, y0=0.0))
    spec = SampleSpec(id=0, split="", kind="image", res_name="", ratio_key="", height=int(row["height"]),
                      width=int(row["width"]), num_frames=1, fps=IMG_FPS, background=row["background"],
                      bg_color=row["bg_color"], bg_color2=row.get("bg_color2", ""), bg_angle=0.0, bg_period=1.0,
                      camera_motion="static", camera_speed=0.0, objects=objects)
    return make_caption(spec)


@dataclass
class Item:
    """One training/eval sample: frames [start, start + num_frames) of a file (a still: 0, 1)."""

    path: str
    start: int
    num_frames: int
    caption: str
    height: int
    width: int
    fps: int
    res_name: str


def _res_ok(row: dict, resolutions: Sequence[str] | None) -> bool:
    return resolutions is None or row.get("res_name", "") in resolutions


def image_items(csv_path: str | os.PathLike, frames_per_clip: int = 2, resolutions: Sequence[str] | None = None,
                limit: int | None = None) -> list[Item]:
    """Stills (their own frame) and `frames_per_clip` frames of every clip (at (k+1)/(n+1) of its length), all
    with still captions; `resolutions` keeps only those resolution names."""
    items = []
    for row in read_csv(csv_path):
        if not _res_ok(row, resolutions):
            continue
        n = int(row["num_frames"])
        caption = still_caption(row)
        starts = [0] if n == 1 else sorted({min(n - 1, int(n * (k + 1) / (frames_per_clip + 1))) for k in range(frames_per_clip)})
        for s in starts:
            items.append(Item(row["path"], s, 1, caption, int(row["height"]), int(row["width"]), IMG_FPS,
                              row.get("res_name", "")))
    return items[:limit] if limit else items


def video_items(csv_path: str | os.PathLike, num_frames: int = 17, max_clips: int | None = None,
                resolutions: Sequence[str] | None = None) -> list[Item]:
    """The first `num_frames` frames of every clip that long (full captions: motion and camera)."""
    items = []
    for row in read_csv(csv_path):
        if int(row["num_frames"]) < num_frames or not _res_ok(row, resolutions):
            continue
        items.append(Item(row["path"], 0, num_frames, row["text"], int(row["height"]), int(row["width"]),
                          int(float(row["fps"])), row.get("res_name", "")))
    return items[:max_clips] if max_clips else items


def file_digest(path: str | os.PathLike, full_limit: int = 256 * 2**20) -> str:
    """sha1 of a file's bytes (files over `full_limit`: of its size and first/last MiB), or of a directory's
    files (relative name + digest)."""
    path = Path(path)
    h = hashlib.sha1()
    if path.is_dir():
        for f in sorted(p for p in path.rglob("*") if p.is_file()):
            h.update(str(f.relative_to(path)).encode())
            h.update(file_digest(f, full_limit).encode())
        return h.hexdigest()
    size = path.stat().st_size
    with open(path, "rb") as f:
        if size <= full_limit:
            for chunk in iter(lambda: f.read(2**20), b""):
                h.update(chunk)
        else:
            h.update(str(size).encode())
            h.update(f.read(2**20))
            f.seek(size - 2**20)
            h.update(f.read(2**20))
    return h.hexdigest()


def items_digest(items: Sequence[Item]) -> str:
    """sha1 over every item's fields and the digest of every file it reads."""
    h = hashlib.sha1()
    digests: dict[str, str] = {}
    for it in items:
        if it.path not in digests:
            digests[it.path] = file_digest(it.path)
        h.update(json.dumps([digests[it.path], it.start, it.num_frames, it.caption, it.height, it.width, it.fps]).encode())
    return h.hexdigest()


class FeatureCache:
    """Tensors computed from inputs that a content key names, kept as one `.pt` file per key under `cache_dir`
    (temp file + rename). A cache is only ever a shortcut: the same key always holds the same numbers.
    `cache_dir=""` disables it."""

    def __init__(self, cache_dir: str | os.PathLike | None):
        self.dir = Path(cache_dir) if cache_dir else None

    @staticmethod
    def key(parts: dict) -> str:
        return hashlib.sha1(json.dumps(json_safe(parts), sort_keys=True).encode()).hexdigest()[:20]

    def get(self, kind: str, parts: dict, compute: Callable[[], dict]) -> tuple[dict, bool]:
        """(value, hit): the cached value of (kind, parts), or compute() stored under that key."""
        path = None if self.dir is None else self.dir / f"{kind}-{self.key(parts)}.pt"
        if path is not None and path.is_file():
            try:
                return torch.load(path, map_location="cpu", weights_only=True), True
            except Exception:
                pass  # unreadable: recompute and overwrite
        value = compute()
        if path is not None:
            atomic_torch_save(value, path)
        return value, False


# ==================================================================================================
# Features: VAE posteriors and caption states
# ==================================================================================================


def _read_frames(item: Item, cache: dict) -> np.ndarray:
    from ..data.video_io import read_video

    if item.path not in cache:
        cache.clear()  # items come grouped by file: keep one decoded file
        cache[item.path] = read_video(item.path)
    frames = cache[item.path][item.start:item.start + item.num_frames]
    if len(frames) != item.num_frames:
        raise ValueError(f"{item.path}: has {len(cache[item.path])} frames, need {item.start + item.num_frames}")
    return frames


@torch.no_grad()
def encode_posteriors(items: Sequence[Item], vae, space: str, batch_size: int = 32, progress: bool = False) -> dict:
    """VAE posterior of every item: {"mean", "std": lists of [C, T', h, w] tensors}.

    space "image_vae": the 2D VAE (`vae.spatial_vae`), scaled latents (x 0.18215) of each frame;
    space "video_vae": the temporal VAE's posterior over the 2D VAE's posterior MEANS (unnormalised; the 2D
    posterior is not sampled here, so a training sample draws only the temporal posterior).
    Frames keep their own size (no resizing); items of one size are encoded together.
    """
    from tqdm.auto import tqdm

    from ..data.datasets import to_tensor

    if space not in ("image_vae", "video_vae"):
        raise ValueError(f"space must be 'image_vae' or 'video_vae', got {space!r}")
    spatial = vae.spatial_vae
    means: list[torch.Tensor | None] = [None] * len(items)
    stds: list[torch.Tensor | None] = [None] * len(items)
    groups: dict[tuple, list[int]] = {}
    for i, it in enumerate(items):
        groups.setdefault((it.num_frames, it.height, it.width), []).append(i)
    decoded: dict = {}
    bar = tqdm(total=len(items), desc=f"encode ({space})", disable=not progress, leave=False)
    for (T, H, W), idx in groups.items():
        step = max(1, batch_size // T)
        for s in range(0, len(idx), step):
            chunk = idx[s:s + step]
            x = torch.stack([to_tensor(_read_frames(items[i], decoded)) for i in chunk])  # [b, 3, T, H, W]
            b = x.shape[0]
            # through the wrapper, not its diffusers module: the wrapper adds what the narrow preset's
            # shortcut puts into the latent (the 8x8 patch colours)
            mean2d, dist = spatial.encode(x, sample_posterior=False, return_posterior=True)  # [b, C, T, h, w] scaled
            std2d = (dist.std * spatial.scaling).reshape(b, T, *dist.std.shape[1:])  # [b*T, C, h, w] -> [b, T, C, h, w]
            std2d = std2d.permute(0, 2, 1, 3, 4)  # [b, C, T, h, w]
            if space == "image_vae":
                mean, std = mean2d, std2d
            else:
                _, posterior = vae.encode_temporal(mean2d, sample_posterior=False)
                mean, std = posterior.mean, posterior.std
            for j, i in enumerate(chunk):
                means[i], stds[i] = mean[j].float().clone(), std[j].float().clone()
            bar.update(len(chunk))
    bar.close()
    return {"mean": means, "std": stds}


def encode_captions(captions: Sequence[str], text_encoder, batch_size: int = 64) -> list[torch.Tensor]:
    """Token states of each caption, valid tokens only: list of [L_i, C] float32."""
    out = []
    for s in range(0, len(captions), batch_size):
        enc = text_encoder.encode(list(captions[s:s + batch_size]))
        y, mask = enc["y"][:, 0].float(), enc["mask"]
        for j in range(y.shape[0]):
            out.append(y[j, : int(mask[j].sum())].clone())
    return out


class CaptionTable:
    """Caption states by index; `batch(idx)` pads them to the longest -> (y [B, 1, L, C], mask [B, L])."""

    def __init__(self, captions: Sequence[str], states: Sequence[torch.Tensor]):
        self.captions = list(captions)
        self.states = list(states)
        self.index = {c: i for i, c in enumerate(self.captions)}

    def batch(self, idx: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        states = [self.states[i] for i in idx]
        L = max(s.shape[0] for s in states)
        C = states[0].shape[1]
        y = torch.zeros(len(states), 1, L, C)
        mask = torch.zeros(len(states), L, dtype=torch.long)
        for j, s in enumerate(states):
            y[j, 0, : s.shape[0]] = s
            mask[j, : s.shape[0]] = 1
        return y, mask

    def for_captions(self, captions: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.batch([self.index[c] for c in captions])


def text_encoder_key(kind: str, path: str, model_max_length: int) -> dict:
    """Content key of a text encoder without loading it (its files' digest)."""
    if kind == "minilm" and not path:
        from ..models.text_encoder import minilm_path

        path = str(minilm_path())
    return {"kind": kind, "files": file_digest(path) if path else "", "L": model_max_length}


def load_caption_table(captions: Sequence[str], cache: FeatureCache, kind: str = "minilm", path: str = "",
                       model_max_length: int = 64, device="cpu") -> tuple[CaptionTable, bool]:
    """Caption states of the unique `captions` (cached by text and encoder files; the encoder loads only on a miss)."""
    unique = sorted(set(captions))

    def compute():
        from ..models.text_encoder import TEXT_ENCODERS

        enc = TEXT_ENCODERS[kind](path or None, model_max_length=model_max_length, device=device)
        return {"captions": unique, "states": encode_captions(unique, enc)}

    parts = {"captions": hashlib.sha1("\n".join(unique).encode()).hexdigest(), **text_encoder_key(kind, path, model_max_length)}
    value, hit = cache.get("captions", parts, compute)
    return CaptionTable(value["captions"], value["states"]), hit


# ==================================================================================================
# Latent sets and batches
# ==================================================================================================


@dataclass
class LatentSet:
    """Posteriors of a set of items grouped by latent shape, ready for batching.

    groups: list of dicts with "mean", "std" [N, C, T, h, w], "caption" [N] (index into the CaptionTable),
    "height", "width", "num_frames", "fps" [N] (pixels / pixel frames / fps), "res_name" (list of N names).
    """

    groups: list[dict]
    space: str

    def __len__(self) -> int:
        return sum(len(g["caption"]) for g in self.groups)

    @classmethod
    def build(cls, items: Sequence[Item], posteriors: dict, captions: CaptionTable, space: str) -> "LatentSet":
        by_shape: dict[tuple, list[int]] = {}
        for i, m in enumerate(posteriors["mean"]):
            by_shape.setdefault(tuple(m.shape), []).append(i)
        groups = []
        for shape, idx in sorted(by_shape.items()):
            groups.append({
                "mean": torch.stack([posteriors["mean"][i] for i in idx]),
                "std": torch.stack([posteriors["std"][i] for i in idx]),
                "caption": torch.tensor([captions.index[items[i].caption] for i in idx]),
                "height": torch.tensor([float(items[i].height) for i in idx]),
                "width": torch.tensor([float(items[i].width) for i in idx]),
                "num_frames": torch.tensor([float(items[i].num_frames) for i in idx]),
                "fps": torch.tensor([float(items[i].fps) for i in idx]),
                "res_name": [items[i].res_name for i in idx],
            })
        return cls(groups, space)

    def subset(self, resolutions: Sequence[str] | None) -> "LatentSet":
        """Only the samples of these resolution names (None: all)."""
        if resolutions is None:
            return self
        groups = []
        for g in self.groups:
            keep = [i for i, r in enumerate(g["res_name"]) if r in resolutions]
            if keep:
                k = torch.tensor(keep)
                groups.append({key: ([v[i] for i in keep] if key == "res_name" else v[k]) for key, v in g.items()})
        return LatentSet(groups, self.space)

    def channel_stats(self, posterior: bool = True) -> tuple[list[float], list[float]]:
        """Per-channel mean and std of the latents over every sample and position: of posterior samples
        (var = var of the means + mean posterior variance; what training sees), or of the means alone."""
        flat = lambda key: torch.cat([g[key].transpose(0, 1).reshape(g[key].shape[1], -1) for g in self.groups], dim=1)  # noqa: E731
        means = flat("mean").double()
        var = means.var(dim=1)
        if posterior:
            var = var + flat("std").double().pow(2).mean(dim=1)
        return means.mean(dim=1).tolist(), var.sqrt().tolist()


def tokens_per_sample(group: dict, patch: tuple[int, int, int] = (1, 2, 2)) -> int:
    _, _, T, h, w = group["mean"].shape
    return math.ceil(T / patch[0]) * math.ceil(h / patch[1]) * math.ceil(w / patch[2])


def normalize_latent(z: torch.Tensor, recipe: Recipe) -> torch.Tensor:
    """(z - shift) / scale per channel for video-VAE latents; image-VAE latents as they are."""
    if recipe.latents != "video_vae" or recipe.latent_shift is None:
        return z
    shift = torch.tensor(recipe.latent_shift, dtype=z.dtype).view(1, -1, 1, 1, 1)
    scale = torch.tensor(recipe.latent_scale, dtype=z.dtype).view(1, -1, 1, 1, 1)
    return (z - shift) / scale


def denormalize_latent(z: torch.Tensor, recipe: Recipe) -> torch.Tensor:
    if recipe.latents != "video_vae" or recipe.latent_shift is None:
        return z
    shift = torch.tensor(recipe.latent_shift, dtype=z.dtype).view(1, -1, 1, 1, 1)
    scale = torch.tensor(recipe.latent_scale, dtype=z.dtype).view(1, -1, 1, 1, 1)
    return z * scale + shift


def make_batch(group: dict, idx: Sequence[int] | torch.Tensor, captions: CaptionTable, recipe: Recipe,
               generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict]:
    """x0 (a posterior sample, normalised as the recipe says) [B, C, T, h, w] and the model kwargs
    (y, mask, height, width, num_frames, fps)."""
    idx = torch.as_tensor(idx, dtype=torch.long)
    mean, std = group["mean"][idx], group["std"][idx]
    x0 = mean + std * torch.randn(mean.shape, generator=generator)
    x0 = normalize_latent(x0, recipe)
    y, mask = captions.batch(group["caption"][idx].tolist())
    kwargs = {"y": y, "mask": mask, "height": group["height"][idx], "width": group["width"][idx],
              "num_frames": group["num_frames"][idx], "fps": group["fps"][idx]}
    return x0, kwargs


class BatchSampler:
    """Random micro-batches, each from one latent shape (a bucket): the shape is drawn with probability
    proportional to its sample count; the batch holds max(1, batch_tokens // tokens per sample) samples,
    drawn without replacement (with, when the bucket is smaller)."""

    def __init__(self, data: LatentSet, batch_tokens: int, seed: int = 0):
        if not data.groups:
            raise ValueError("no samples to train on")
        self.data = data
        self.batch_tokens = batch_tokens
        self.rng = np.random.default_rng(seed)
        sizes = np.array([len(g["caption"]) for g in data.groups], dtype=np.float64)
        self.p = sizes / sizes.sum()

    def batch_size(self, group: dict) -> int:
        return max(1, self.batch_tokens // tokens_per_sample(group))

    def next(self) -> tuple[dict, np.ndarray]:
        g = self.data.groups[int(self.rng.choice(len(self.data.groups), p=self.p))]
        n, b = len(g["caption"]), self.batch_size(g)
        return g, self.rng.choice(n, size=b, replace=b > n)


# ==================================================================================================
# Losses
# ==================================================================================================


def sample_rf_timesteps(recipe: Recipe, batch_size: int, model_kwargs: dict, generator: torch.Generator | None = None,
                        base_resolution: int = 512 * 512, frame_scale: float = 1.0) -> torch.Tensor:
    """Rectified-flow training timesteps [B] in [0, 1000]: uniform, or sigmoid(N(0, 1)) * 1000 (logit-normal),
    then the resolution/length-aware transform when the recipe says so (base resolution in pixels, video lengths
    times `frame_scale`: `timestep_transform`)."""
    if recipe.sample_method == "uniform":
        t = torch.rand(batch_size, generator=generator) * NUM_TIMESTEPS
    elif recipe.sample_method == "logit-normal":
        t = torch.sigmoid(torch.randn(batch_size, generator=generator)) * NUM_TIMESTEPS
    else:
        raise ValueError(f"unknown sample_method {recipe.sample_method!r}")
    if recipe.timestep_transform:
        t = timestep_transform(t, model_kwargs, base_resolution=base_resolution, num_timesteps=NUM_TIMESTEPS,
                               frame_scale=frame_scale)
    return t


def training_loss(model, recipe: Recipe, x0: torch.Tensor, model_kwargs: dict, generator: torch.Generator | None = None,
                  mask: torch.Tensor | None = None, base_resolution: int = 512 * 512, frame_scale: float = 1.0) -> dict:
    """Per-sample losses of the recipe's objective: DDPM {"loss" = mse + vb, "mse", "vb"}, rectified flow {"loss"}."""
    noise = torch.randn(x0.shape, generator=generator)
    if recipe.objective == "ddpm":
        if mask is not None:
            raise ValueError("frame masks are a rectified-flow feature")
        diffusion = GaussianDiffusion(learn_sigma=getattr(model, "pred_sigma", True))
        t = diffusion.sample_t(x0.shape[0], generator=generator)
        return diffusion.training_losses(model, x0, t, model_kwargs, noise=noise)
    t = sample_rf_timesteps(recipe, x0.shape[0], model_kwargs, generator, base_resolution, frame_scale)
    return RFlowScheduler(num_timesteps=NUM_TIMESTEPS).training_losses(model, x0, model_kwargs, noise=noise, mask=mask, t=t)


# ==================================================================================================
# Training loop
# ==================================================================================================


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * model, trainable parameters only (frozen ones are skipped)."""
    ema_params = dict(ema.named_parameters())
    for name, p in model.named_parameters():
        if p.requires_grad:
            ema_params[name].mul_(decay).add_(p.detach().float(), alpha=1 - decay)


def train(
    model: STDiT3,
    ema: STDiT3 | None,
    recipe: Recipe,
    data: LatentSet,
    captions: CaptionTable,
    steps: int,
    lr: float = 1e-4,
    batch_tokens: int = 288,
    seed: int = 0,
    grad_clip: float = 1.0,
    ema_decay: float = 0.99,
    warmup_steps: int = 0,
    weight_decay: float = 0.0,
    base_resolution: int = 512 * 512,
    frame_scale: float = 1.0,
    log_every: int = 10,
    progress: bool = True,
) -> list[dict]:
    """`steps` AdamW steps (eps from the recipe, betas (0.9, 0.999), linear warmup then constant lr, grad clip,
    EMA of the trainable weights) on micro-batches of `data`. Videos get frame masks (recipe.mask_ratios).
    Every random draw comes from generators seeded by `seed`. Returns the history [{step, loss, lr, seconds}]."""
    from tqdm.auto import tqdm

    apply_recipe_freezing(model, recipe)
    params = [p for p in model.parameters() if p.requires_grad]
    history: list[dict] = []
    if steps <= 0:
        return history
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.999), eps=recipe.adam_eps, weight_decay=weight_decay)
    sampler = BatchSampler(data, batch_tokens, seed)
    gen = torch.Generator().manual_seed(seed)
    masks = None
    if recipe.data == "videos" and recipe.mask_ratios:
        masks = MaskGenerator(recipe.mask_ratios, rng=random.Random(seed))
    torch.manual_seed(seed)  # caption dropout and the "random" mask type use the global RNG
    model.train()
    start = time.perf_counter()
    running: list[float] = []
    bar = tqdm(range(steps), desc="train", disable=not progress, leave=False)
    for step in bar:
        lr_now = lr * (step + 1) / (warmup_steps + 1) if step < warmup_steps else lr
        for group in opt.param_groups:
            group["lr"] = lr_now
        g, idx = sampler.next()
        x0, kwargs = make_batch(g, idx, captions, recipe, gen)
        mask = masks.get_masks(x0) if masks is not None else None
        losses = training_loss(model, recipe, x0, kwargs, gen, mask, base_resolution, frame_scale)
        loss = losses["loss"].mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
        opt.step()
        if ema is not None:
            ema_update(ema, model, ema_decay)
        running.append(loss.item())
        if (step + 1) % log_every == 0 or step + 1 == steps:
            history.append({"step": step + 1, "loss": float(np.mean(running)), "lr": lr_now,
                            "seconds": time.perf_counter() - start})
            bar.set_postfix(loss=f"{history[-1]['loss']:.4f}")
            running = []
    model.eval()
    return history


# ==================================================================================================
# Evaluation: eval loss, generation, adherence
# ==================================================================================================


@torch.no_grad()
def eval_loss(model: STDiT3, recipe: Recipe, data: LatentSet, captions: CaptionTable, seed: int = 42,
              batch_tokens: int = 2048, timesteps: Sequence[float] = EVAL_TIMESTEPS) -> dict:
    """The loss of the recipe's objective at fixed timesteps (Open-Sora's eval loss: 1000 k / 11, k = 1..10, no
    transform, no masks), averaged over every sample of `data` per timestep, then over the timesteps.
    Every (sample, timestep) pair gets its own posterior sample and noise from a generator seeded by (seed, bucket):
    the same numbers at every call. All timesteps of a bucket run in the same forward passes (at most
    `batch_tokens` latent tokens each). DDPM: t rounded to integers (91 .. 909), loss = mse + vb ("mse" too)."""
    model.eval()
    K = len(timesteps)
    sums = torch.zeros(K, dtype=torch.float64)
    sums_mse = torch.zeros(K, dtype=torch.float64)
    count = 0
    for gi, g in enumerate(data.groups):
        gen = torch.Generator().manual_seed(seed * 1000 + gi)
        n = len(g["caption"])
        sample_idx = torch.arange(n).repeat(K)  # [K*n]: timestep-major
        t_idx = torch.arange(K).repeat_interleave(n)
        rows = max(1, batch_tokens // tokens_per_sample(g))
        for s in range(0, K * n, rows):
            sl = slice(s, min(K * n, s + rows))
            x0, kwargs = make_batch(g, sample_idx[sl], captions, recipe, gen)
            noise = torch.randn(x0.shape, generator=gen)
            t_vals = torch.tensor([float(timesteps[k]) for k in t_idx[sl].tolist()])
            if recipe.objective == "ddpm":
                diffusion = GaussianDiffusion(learn_sigma=model.pred_sigma)
                t = t_vals.round().clamp(max=NUM_TIMESTEPS - 1).long()
                out = diffusion.training_losses(model, x0, t, kwargs, noise=noise)
                sums_mse.index_add_(0, t_idx[sl], out["mse"].double())
            else:
                out = RFlowScheduler(num_timesteps=NUM_TIMESTEPS).training_losses(model, x0, kwargs, noise=noise, t=t_vals)
            sums.index_add_(0, t_idx[sl], out["loss"].double())
        count += n
    per_t = {round(float(t), 1): float(v) / count for t, v in zip(timesteps, sums)}
    result = {"kind": recipe.objective, "loss": float(np.mean(list(per_t.values()))), "per_t": per_t,
              "num_samples": count}
    if recipe.objective == "ddpm":
        result["mse"] = float(sums_mse.sum()) / (count * K)
    return result


@torch.no_grad()
def rf_sample(model, z: torch.Tensor, y: torch.Tensor, y_mask: torch.Tensor | None, model_kwargs: dict,
              num_steps: int = 30, cfg_scale: float = 7.0, use_timestep_transform: bool = True,
              base_resolution: int = 512 * 512, frame_scale: float = 1.0) -> torch.Tensor:
    """Rectified-flow Euler sampling with classifier-free guidance (`RFLOW.sample`, no frame masks) at the
    recipe's timestep-transform base resolution and frame scale."""
    sampler = RFLOW(num_sampling_steps=num_steps, num_timesteps=NUM_TIMESTEPS, cfg_scale=cfg_scale,
                    use_timestep_transform=use_timestep_transform, base_resolution=base_resolution,
                    frame_scale=frame_scale)
    return sampler.sample(model, z, y, y_mask, additional_args=model_kwargs, progress=False)


@dataclass
class Prompt:
    caption: str
    height: int
    width: int
    num_frames: int = 1
    fps: int = IMG_FPS


def eval_prompts(csv_path: str | os.PathLike, num: int, resolutions: Sequence[str] | None = None) -> list[Prompt]:
    """The first `num` rows of a held-out CSV as still prompts (still caption, the row's own size)."""
    prompts = []
    for row in read_csv(csv_path):
        if _res_ok(row, resolutions):
            prompts.append(Prompt(still_caption(row), int(row["height"]), int(row["width"])))
    return prompts[:num]


def decode_latents(z: torch.Tensor, vae, recipe: Recipe, num_frames: int = 1) -> torch.Tensor:
    """Model-space latents [B, C, T, h, w] -> pixels [B, 3, T', H, W] in [-1, 1] with the recipe's VAE."""
    z = denormalize_latent(z.float(), recipe)
    if recipe.latents == "image_vae":
        return vae.spatial_vae.decode(z)
    return vae.decode(z, num_frames=num_frames, normalize=False)


@torch.no_grad()
def generate(model: STDiT3, recipe: Recipe, prompts: Sequence[Prompt], captions: CaptionTable, vae, seed: int = 0,
             ddpm_steps: int = 25, ddpm_method: str = "ddim", ddpm_cfg: float = 4.5, rf_steps: int = 30,
             rf_cfg: float = 7.0, base_resolution: int = 512 * 512, latent_channels: int = 4,
             vae_time_factor: int = 4, frame_scale: float = 1.0) -> list[np.ndarray]:
    """Generate every prompt (batched by size) with the recipe's sampler and VAE -> uint8 [T, H, W, 3] arrays.
    Noise comes from a generator seeded by `seed` (the same prompts and seed give the same noise at every step)."""
    from ..data.datasets import to_uint8
    from ..models.vae import latent_num_frames

    model.eval()
    out: list[np.ndarray | None] = [None] * len(prompts)
    by_size: dict[tuple, list[int]] = {}
    for i, p in enumerate(prompts):
        by_size.setdefault((p.num_frames, p.height, p.width), []).append(i)
    gen = torch.Generator().manual_seed(seed)
    for (T, H, W), idx in by_size.items():
        T_lat = 1 if T == 1 or recipe.latents == "image_vae" else latent_num_frames(T)
        z = torch.randn(len(idx), latent_channels, T_lat, H // 8, W // 8, generator=gen)
        y, mask = captions.for_captions([prompts[i].caption for i in idx])
        kwargs = {"height": torch.full((len(idx),), float(H)), "width": torch.full((len(idx),), float(W)),
                  "num_frames": torch.full((len(idx),), float(T)),
                  "fps": torch.tensor([float(prompts[i].fps) for i in idx])}
        if recipe.objective == "ddpm":
            sampler = DDPMSampler(ddpm_steps, NUM_TIMESTEPS, method=ddpm_method, cfg_scale=ddpm_cfg,
                                  learn_sigma=model.pred_sigma)
            x = sampler.sample(model, z, y, mask, additional_args=kwargs, generator=gen)
        else:
            x = rf_sample(model, z, y, mask, kwargs, rf_steps, rf_cfg, recipe.timestep_transform, base_resolution,
                          frame_scale)
        pixels = decode_latents(x, vae, recipe, num_frames=T)  # [b, 3, T, H, W]
        for j, i in enumerate(idx):
            out[i] = to_uint8(pixels[j])
    return out  # type: ignore[return-value]


def adherence(images: Sequence[np.ndarray], captions: Sequence[str], fn: Callable[[np.ndarray, str], dict]) -> dict:
    """Mean colour / shape / score of `fn(image, caption)` (e.g. `eval.detectors.image_adherence`) over the
    stills ([H, W, 3] or the first frame of [T, H, W, 3])."""
    rows = []
    for img, cap in zip(images, captions):
        img = img[0] if img.ndim == 4 else img
        r = fn(img, cap)
        rows.append({"color": int(r["color"]), "shape": int(r["shape"]), "score": float(r["score"])})
    mean = lambda k: float(np.mean([r[k] for r in rows])) if rows else float("nan")  # noqa: E731
    return {"color": mean("color"), "shape": mean("shape"), "score": mean("score"), "n": len(rows), "per_prompt": rows}


# ==================================================================================================
# Figures
# ==================================================================================================


def sample_grid_figure(images: Sequence[np.ndarray], captions: Sequence[str], path: str | os.PathLike | None = None,
                       title: str = "", scores: Sequence[dict] | None = None, cols: int = 8):
    """Generated stills in a grid, each titled with its prompt's first object (and its adherence)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..data.synthetic import parse_caption

    n = len(images)
    cols = min(cols, n) or 1
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.7 * cols, 1.95 * rows + 0.4), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i, (img, cap) in enumerate(zip(images, captions)):
        ax = axes.flat[i]
        ax.imshow(img[0] if img.ndim == 4 else img, interpolation="nearest")
        objs = parse_caption(cap)["objects"]
        label = f"{objs[0]['color']} {objs[0]['shape']}" if objs else cap[:18]
        if scores is not None:
            s = scores[i]
            label += f"\n{'C' if s['color'] else 'c'}{'S' if s['shape'] else 's'}"
        ax.set_title(label, fontsize=7)
    if title or scores is not None:
        legend = "  (C / S: the named colour / shape found, c / s: not)" if scores is not None else ""
        fig.suptitle(title + legend, fontsize=9)
    fig.tight_layout()
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
        plt.close(fig)
    return fig


def loss_figure(history: Sequence[dict], path: str | os.PathLike | None = None, title: str = "training loss"):
    import matplotlib.pyplot as plt

    from ..plots import loss_curve

    fig = loss_curve([h["step"] for h in history], [h["loss"] for h in history], path=path, title=title)
    if path is not None:
        plt.close(fig)
    return fig


# ==================================================================================================
# VAE helpers
# ==================================================================================================


def load_vae_for_adapt(path: str, seed: int = 0, device="cpu"):
    """The VAE of a `save_vae` checkpoint, or (path "") a fresh seeded `OpenSoraVAE_Narrow` (development only)."""
    from ..models.vae import OpenSoraVAE_Narrow, load_vae

    if path:
        return load_vae(path, device=device).eval()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return OpenSoraVAE_Narrow().to(device).eval()


def vae_key(path: str, seed: int = 0) -> dict:
    return {"vae": file_digest(path) if path else f"fresh-narrow-{seed}"}


def vae_is_calibrated(vae) -> bool:
    """False when the VAE's latent shift/scale are the identity (0 / 1), i.e. never set."""
    return not (bool((vae.shift == 0).all()) and bool((vae.scale == 1).all()))


def video_latent_norm(vae, data: LatentSet, mode: str = "auto") -> tuple[list[float], list[float], str]:
    """(shift, scale, source) of the per-channel normalisation for video-VAE latents.
    mode "vae": the VAE's own shift/scale; "estimate": mean/std per channel of `data`'s posterior means;
    "auto": the VAE's when calibrated (not 0/1), else the estimate."""
    if mode not in ("auto", "vae", "estimate"):
        raise ValueError(f"latent_norm must be auto, vae or estimate, got {mode!r}")
    if mode == "vae" or (mode == "auto" and vae_is_calibrated(vae)):
        return vae.shift.flatten().tolist(), vae.scale.flatten().tolist(), "vae"
    mean, std = data.channel_stats()
    return mean, std, "estimate"


def load_latent_set(items: Sequence[Item], vae, vae_path: str, space: str, captions: CaptionTable,
                    cache: FeatureCache, vae_seed: int = 0, progress: bool = False) -> tuple[LatentSet, bool]:
    """Posteriors of `items` in `space` (cached by VAE file, items and their files), as a LatentSet.
    `vae` may be a callable returning the VAE (called only on a cache miss)."""
    # "encoder": bumped when encode_posteriors changes what it computes (2: through the 2D VAE wrapper, shortcut
    # included), so caches written by older code are not read back
    parts = {"space": space, "items": items_digest(items), "encoder": 2, **vae_key(vae_path, vae_seed)}

    def compute():
        v = vae() if callable(vae) and not isinstance(vae, nn.Module) else vae
        return encode_posteriors(items, v, space, progress=progress)

    value, hit = cache.get(f"latents-{space}", parts, compute)
    return LatentSet.build(items, value, captions, space), hit
