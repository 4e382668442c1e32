"""The video training engine of Open-Sora 1.2's stages 1-3 (facts §5, `scripts/train.py`), on DeepSpeed.

One optimizer step:

    for each of this process's micro-batches (one bucket each, `BucketSampler`):
        latents, caption states, size/fps kwargs          (`FeatureProvider`: VAE + text encoder, cached)
        frame mask per sample                             (`MaskGenerator`, the stage's mask ratios)
        rectified-flow loss: logit-normal t + resolution/length-aware transform, masked frames kept clean
        backward (DeepSpeed: ZeRO stage 2, loss / accumulation)
    optimizer step (torch AdamW, eps 1e-15, no weight decay; grad clip 1.0; lr warmup lr*(s+1)/(warmup+1))
    EMA update (decay 0.99, fp32 copy, frozen parameters skipped)

The caption projection (`y_embedder`) is frozen as in the reference configs; gradient checkpointing is a switch.

Determinism. Every random draw of a micro-batch (frame mask, timesteps, noise, caption dropout; the VAE posterior
sample is keyed by the sample itself) comes from generators seeded with (seed, epoch, position of the micro-batch
in the epoch's plan). The plan is the same whatever the number of processes, so:
- a run stopped at step k and resumed in a new process continues with the same numbers as an uninterrupted run;
- N processes with accumulation G see the same micro-batches, each step, as one process with accumulation N*G, so
  their loss curves agree up to floating-point summation order.
Checkpoints still carry the Python / numpy / torch RNG states of every process, restored on resume.

Processes: `init_distributed` works in a plain Python process or a notebook (it fills in RANK, WORLD_SIZE, ... for
one process and picks a free port) and under ``torchrun --nproc_per_node N`` (gloo on CPU, NCCL on GPU).

Checkpoints (`VideoTrainer.save`) are one file, written by rank 0 to a temp file and renamed: the model config and
preset (the model can be rebuilt from the file alone, `load_video_checkpoint`), model and EMA weights, every
process's ZeRO optimizer partition, the LR scheduler, RNG states, the sampler position, the loss history and the
training config. It loads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import importlib
import json
import logging
import os
import random
import socket
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

# On a GPU machine DeepSpeed must pick its CUDA accelerator (the package default is the CPU one).
if torch.cuda.is_available() and os.environ.get("OPENSORA_DEVICE", "") != "cpu":
    os.environ["DS_ACCELERATOR"] = "cuda"
else:
    os.environ.setdefault("DS_ACCELERATOR", "cpu")

import numpy as np  # noqa: E402

from ..data.buckets import BucketSampler, BucketTable, bucket_name  # noqa: E402
from ..data.video_dataset import VideoTextDataset, derive_seed  # noqa: E402
from ..models.stdit3 import STDIT3_PRESETS, STDiT3, check_state_dict, read_state_dict  # noqa: E402
from ..schedulers.masks import MaskGenerator  # noqa: E402
from ..schedulers.rectified_flow import RFlowScheduler, timestep_transform  # noqa: E402
from .features import FeatureProvider  # noqa: E402
from ..utils.checkpoint import atomic_torch_save, load_torch_file  # noqa: E402

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "opensora_lib.video_train/1"

# Training mask ratios of the reference configs (facts §4.1); "identity" takes the remainder.
MASK_RATIOS = {
    "stage1": {"random": 0.05, "intepolate": 0.005, "quarter_random": 0.005, "quarter_head": 0.005,
               "quarter_tail": 0.005, "quarter_head_tail": 0.005, "image_random": 0.025, "image_head": 0.05,
               "image_tail": 0.025, "image_head_tail": 0.025},  # 20 % masked
    "stage3": {"random": 0.01, "intepolate": 0.002, "quarter_random": 0.002, "quarter_head": 0.002,
               "quarter_tail": 0.002, "quarter_head_tail": 0.002, "image_random": 0.0, "image_head": 0.22,
               "image_tail": 0.005, "image_head_tail": 0.005},  # 25 % masked
    "adapt": {"random": 0.2, "intepolate": 0.01, "quarter_random": 0.01, "quarter_head": 0.01,
              "quarter_tail": 0.01, "quarter_head_tail": 0.01, "image_random": 0.05, "image_head": 0.1,
              "image_tail": 0.05, "image_head_tail": 0.05},  # 55 % masked
}
MASK_RATIOS["stage2"] = dict(MASK_RATIOS["stage1"])
# The mask type of a sample is picked by walking the ratios in dict order (identity last), so the order is part of
# the result: always use the reference configs' order, whatever order a params file (or YAML dump) gives.
MASK_ORDER = ("random", "intepolate", "quarter_random", "quarter_head", "quarter_tail", "quarter_head_tail",
              "image_random", "image_head", "image_tail", "image_head_tail", "identity")


def canonical_mask_ratios(ratios: dict | None) -> dict | None:
    """Mask ratios in the reference order (unknown names are left for MaskGenerator to reject)."""
    if not ratios:
        return None
    ordered = {k: float(ratios[k]) for k in MASK_ORDER if k in ratios}
    ordered.update({k: v for k, v in ratios.items() if k not in ordered})
    return ordered


# ==================================================================================================
# Configuration
# ==================================================================================================


@dataclass
class VideoTrainConfig:
    """Everything a video training stage reads (the `params/train.yaml` keys)."""

    stage: int = 1
    # data
    csv: str = "data/synthetic/train.csv"
    buckets: dict = field(default_factory=dict)
    resolutions: Any = None  # {"48px": 2304} or "48px:2304,64px:4096" for non-released names
    aspect_ratios: Any = None  # ratio names/keys to use (default: all of each resolution's table)
    frame_interval: int = 1
    window: str = "random"  # "random" (reference), "fixed" (same frames every epoch: cache-friendly) or "head"
    drop_last: bool = False
    score_drop_prob: float = 0.2
    use_scores: bool = True
    on_bad_file: str = "fail"  # or "skip"
    rejects_path: str = ""
    hflip_prob: float = 0.0  # (ours) mirror left-right, swapping left/right in the caption (reference: 0)
    vflip_prob: float = 0.0  # (ours) mirror top-bottom, swapping up/down in the caption (reference: 0)
    # models
    model_preset: str = "STDiT3-S/2"
    model_kwargs: dict = field(default_factory=dict)
    init: str = ""  # checkpoint to start from ("" = a fresh preset)
    init_weights: str = "model"  # "model" or "ema" weights of an init checkpoint written by this engine
    resume: str = ""  # checkpoint of this engine to continue exactly
    vae_ckpt: str = ""  # "" = a fresh OpenSoraVAE_Narrow (seeded by vae_seed)
    vae_seed: int = 0
    text_encoder: str = "minilm"  # or "t5"
    text_encoder_path: str = ""
    model_max_length: int = 64
    feature_cache: str = ""
    feature_cache_read_only: bool = False
    feature_cache_read: Any = ""  # further caches, only read (comma-separated or a list), e.g. earlier stages'
    # scheduler and masks
    mask_ratios: dict | None = None
    sample_method: str = "logit-normal"
    use_timestep_transform: bool = True
    transform_base_resolution: int = 512 * 512
    transform_frame_scale: float = 1.0  # (ours) videos count as num_frames * this in the shift; reference: 1
    # optimisation
    steps: int = 100
    lr: float = 1e-4
    warmup_steps: int = 0
    adam_eps: float = 1e-15
    adam_betas: tuple = (0.9, 0.999)
    weight_decay: float = 0.0
    fused_adam: bool = True  # torch's fused AdamW kernel (same update, ~6x faster on CPU than the loop)
    grad_clip: float = 1.0
    ema_decay: float = 0.99
    grad_checkpoint: bool = True
    freeze_y_embedder: bool = True
    precision: str = "auto"  # "auto" (bf16 where the hardware has it), "bf16" or "fp32"
    zero_stage: int = 2
    accumulation: int = 1
    seed: int = 42
    threads: int = 0  # torch threads per process (0: leave as is)
    # outputs
    ckpt_dir: str = ""
    ckpt_every: int = 0
    log_every: int = 10

    @classmethod
    def from_dict(cls, params: dict, **overrides) -> "VideoTrainConfig":
        merged = {**params, **{k: v for k, v in overrides.items() if v is not None}}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(merged) - known)
        if unknown:
            raise ValueError(f"unknown training param(s) {unknown}; known: {sorted(known)}")
        cfg = cls(**merged)
        if isinstance(cfg.adam_betas, list):
            cfg.adam_betas = tuple(cfg.adam_betas)
        return cfg

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["adam_betas"] = list(self.adam_betas)
        return d


def stage_config(params: dict, stage: int | str, **overrides) -> VideoTrainConfig:
    """Config of one stage from a params tree ``{"common": {...}, "stages": {"1": {...}, ...}}`` (the ``train``
    section of `params/train.yaml`): common keys, then the stage's keys, then non-None overrides."""
    stages = params.get("stages", {})
    key = str(stage)
    if key not in stages and int(stage) in stages:
        key = int(stage)
    if key not in stages:
        raise KeyError(f"no stage {stage!r} in params (stages: {list(stages)})")
    merged = {**params.get("common", {}), **stages[key]}
    merged.pop("after", None)  # pipeline-only: the DVC dep the stage starts from (dvc.yaml), not a training param
    merged["stage"] = int(stage)
    return VideoTrainConfig.from_dict(merged, **overrides)


# ==================================================================================================
# Processes, precision, DeepSpeed
# ==================================================================================================


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def device_for_rank(local_rank: int = 0) -> torch.device:
    if torch.cuda.is_available() and os.environ.get("OPENSORA_DEVICE", "") != "cpu":
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def init_distributed(backend: str | None = None, skip_shm_op: bool = True) -> tuple[int, int, int]:
    """Start torch.distributed through DeepSpeed; returns (rank, world_size, local_rank).

    In a process not started by a launcher (a notebook, ``python -m``) the launcher variables are filled in for a
    single process (free port on 127.0.0.1). ``backend`` defaults to NCCL on GPU, gloo on CPU. ``skip_shm_op``
    skips building DeepSpeed's shared-memory all-reduce op (a C++ build of ~1 minute on first use; DeepSpeed uses it
    only for inference all-reduce, never for training).
    """
    import deepspeed
    import torch.distributed as dist

    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    if not dist.is_initialized():
        if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
            os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1")
            os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
            os.environ["MASTER_PORT"] = os.environ.get("OPENSORA_MASTER_PORT", str(free_port()))
        os.environ.setdefault("LOCAL_RANK", os.environ["RANK"])
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(free_port()))
        local_rank = int(os.environ["LOCAL_RANK"])
        device = device_for_rank(local_rank)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        backend = backend or ("nccl" if device.type == "cuda" else "gloo")
        ds_torch = importlib.import_module("deepspeed.comm.torch")  # (`deepspeed.comm.torch` the attribute is torch)
        original = ds_torch.build_shm_op
        if skip_shm_op:
            ds_torch.build_shm_op = lambda: None
        try:
            deepspeed.init_distributed(dist_backend=backend, verbose=False)
        finally:
            ds_torch.build_shm_op = original
    return dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0"))


def hardware_has_bf16(device: torch.device) -> bool:
    """Native bf16 arithmetic: a CUDA device that supports it, or a CPU with AVX512-BF16 / AMX."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision: str, device: torch.device) -> str:
    if precision == "auto":
        return "bf16" if hardware_has_bf16(device) else "fp32"
    if precision not in ("bf16", "fp32"):
        raise ValueError(f"precision must be 'auto', 'bf16' or 'fp32', got {precision!r}")
    return precision


def deepspeed_config(cfg: VideoTrainConfig, precision: str) -> dict:
    return {
        "train_micro_batch_size_per_gpu": 1,  # bookkeeping only: micro-batch sizes vary by bucket
        "gradient_accumulation_steps": cfg.accumulation,
        "gradient_clipping": cfg.grad_clip,
        "zero_optimization": {"stage": cfg.zero_stage},
        "zero_allow_untested_optimizer": True,  # torch.optim.AdamW as the client optimizer
        "bf16": {"enabled": precision == "bf16"},
        "fp16": {"enabled": False},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def warmup_factor(warmup_steps: int) -> Callable[[int], float]:
    """LinearWarmupLR: lr * (step + 1) / (warmup + 1) for step < warmup, then lr."""
    def factor(step: int) -> float:
        return (step + 1) / (warmup_steps + 1) if step < warmup_steps else 1.0
    return factor


class EMA:
    """fp32 exponential moving average of a model's trainable parameters (frozen ones stay as copied)."""

    def __init__(self, model: torch.nn.Module):
        self.model = copy.deepcopy(model).float().eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: torch.nn.Module, decay: float, fp32_source: Callable | None = None) -> None:
        ema = dict(self.model.named_parameters())
        for name, param in model.named_parameters():
            if not param.requires_grad:
                continue
            value = fp32_source(param) if fp32_source is not None else None
            value = param.detach() if value is None else value
            ema[name].mul_(decay).add_(value.to(ema[name].device, torch.float32), alpha=1 - decay)

    def state_dict(self) -> dict:
        return {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state)


# ==================================================================================================
# Models and checkpoints
# ==================================================================================================


def _json_safe(value):
    return json.loads(json.dumps(value, default=lambda o: list(o) if isinstance(o, tuple) else str(o)))


def read_checkpoint(path: str | os.PathLike) -> dict:
    """A checkpoint file of this engine (``torch.load(weights_only=True)``); raises naming the file."""
    state = load_torch_file(path)
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not a video training checkpoint (format {CHECKPOINT_FORMAT})")
    return state


def _is_engine_checkpoint(path: str | os.PathLike) -> dict | None:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        return None
    if isinstance(state, dict) and state.get("format") == CHECKPOINT_FORMAT:
        return state
    if isinstance(state, dict) and "config" in state and any(k in state for k in ("model", "state_dict", "ema")):
        return state
    return None


def _stored_config(state: dict) -> dict | None:
    config = state.get("config")
    if isinstance(config, str):
        config = json.loads(config)
    return dict(config) if isinstance(config, dict) else None


def build_model(cfg: VideoTrainConfig) -> tuple[STDiT3, dict]:
    """The STDiT3 to train and where its weights came from.

    With ``cfg.init`` the model is rebuilt from the config stored in the checkpoint when there is one (this
    engine's files, or any ``{"config": ..., "model"/"state_dict"/"ema": ...}``), else from ``cfg.model_preset``;
    weights load strictly. The training switches (grad checkpointing, frozen caption projection) come from cfg.
    """
    switches = dict(grad_checkpoint=cfg.grad_checkpoint, freeze_y_embedder=cfg.freeze_y_embedder)
    info = {"init": cfg.init or None, "preset": cfg.model_preset}
    torch.manual_seed(derive_seed(cfg.seed, 0x6D6F64))
    if not cfg.init:
        if cfg.model_preset not in STDIT3_PRESETS:
            raise ValueError(f"unknown model preset {cfg.model_preset!r}; known: {list(STDIT3_PRESETS)}")
        model = STDIT3_PRESETS[cfg.model_preset](**{**cfg.model_kwargs, **switches})
        return model, info
    state = _is_engine_checkpoint(cfg.init)
    config = _stored_config(state) if state is not None else None
    if config is not None:
        config.update(switches)
        model = STDiT3(**config)
        info["preset"] = state.get("model_preset", "config")
        which = cfg.init_weights if cfg.init_weights in state else next(
            k for k in ("model", "state_dict", "ema") if k in state)
        weights = state[which]
        info["weights"] = which
        check_state_dict(model, weights, str(cfg.init))
        model.load_state_dict(weights, strict=False)
    else:
        model = STDIT3_PRESETS[cfg.model_preset](**{**cfg.model_kwargs, **switches})
        weights = read_state_dict(cfg.init)
        check_state_dict(model, weights, str(cfg.init))
        model.load_state_dict(weights, strict=False)
        info["weights"] = "state_dict"
    # the freeze switch acts in __init__; re-apply after loading (load_state_dict keeps requires_grad)
    if cfg.freeze_y_embedder:
        model.y_embedder.requires_grad_(False)
    return model, info


def load_video_checkpoint(path: str | os.PathLike, weights: str = "ema", device="cpu", **overrides) -> STDiT3:
    """Rebuild the trained STDiT3 from a checkpoint file alone (``weights``: "ema" or "model")."""
    state = read_checkpoint(path)
    config = _stored_config(state)
    config.update(overrides)
    model = STDiT3(**config)
    sd = state[weights]
    check_state_dict(model, sd, str(path))
    model.load_state_dict(sd, strict=True)
    return model.to(device).eval()


def _sanitize_optimizer_state(state: dict) -> dict:
    """A ZeRO optimizer state_dict without the Python objects that weights_only loading refuses."""
    out = {}
    for k, v in state.items():
        if k in ("loss_scaler", "param_slice_mappings"):
            continue  # rebuilt by the optimizer (no loss scaling in fp32/bf16); only for universal checkpoints
        if k == "zero_stage":
            v = int(v)
        out[k] = v
    return out


def _rng_state() -> dict:
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ==================================================================================================
# Text encoder and VAE
# ==================================================================================================


def build_text_encoder(cfg: VideoTrainConfig, device):
    from ..models.text_encoder import MiniLMEncoder, T5Encoder

    if cfg.text_encoder == "minilm":
        return MiniLMEncoder(cfg.text_encoder_path or None, model_max_length=cfg.model_max_length, device=device)
    if cfg.text_encoder == "t5":
        if not cfg.text_encoder_path:
            raise ValueError("text_encoder 't5' needs text_encoder_path (a local T5 directory)")
        return T5Encoder(cfg.text_encoder_path, model_max_length=cfg.model_max_length, device=device)
    raise ValueError(f"text_encoder must be 'minilm' or 't5', got {cfg.text_encoder!r}")


def build_vae(cfg: VideoTrainConfig, device):
    from ..models.vae import OpenSoraVAE_Narrow, load_vae

    if cfg.vae_ckpt:
        return load_vae(cfg.vae_ckpt, device=device).eval()
    state = torch.get_rng_state()
    torch.manual_seed(cfg.vae_seed)
    vae = OpenSoraVAE_Narrow().to(device).eval()
    torch.set_rng_state(state)
    return vae


# ==================================================================================================
# The trainer
# ==================================================================================================


class VideoTrainer:
    """One stage of video training (see module doc). Collective: every process builds one and calls the same
    methods (`train`, `save`)."""

    def __init__(self, cfg: VideoTrainConfig, text_encoder=None, vae=None, progress: bool = True):
        import deepspeed
        import torch.distributed as dist

        self.cfg = cfg
        self.progress = progress
        self.rank, self.world_size, self.local_rank = init_distributed()
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.device = device_for_rank(self.local_rank)
        self.precision = resolve_precision(cfg.precision, self.device)
        self.dtype = torch.bfloat16 if self.precision == "bf16" else torch.float32
        random.seed(cfg.seed)
        np.random.seed(cfg.seed % 2**32)
        torch.manual_seed(cfg.seed)

        # data (skipped rows are logged to rejects_path, by default <ckpt_dir>/rejects.jsonl)
        rejects = cfg.rejects_path or (str(Path(cfg.ckpt_dir) / "rejects.jsonl") if cfg.ckpt_dir else None)
        self.dataset = VideoTextDataset(
            cfg.csv, frame_interval=cfg.frame_interval, seed=cfg.seed, window=cfg.window,
            score_drop_prob=cfg.score_drop_prob, use_scores=cfg.use_scores, on_error=cfg.on_bad_file,
            rejects_path=rejects, write_rejects=self.rank == 0,
            hflip_prob=cfg.hflip_prob, vflip_prob=cfg.vflip_prob,
        )
        self.table = BucketTable(cfg.buckets, cfg.resolutions, cfg.aspect_ratios)
        self.sampler = BucketSampler(
            self.table, self.dataset.sizes(), seed=cfg.seed, num_replicas=self.world_size, rank=self.rank,
            accumulation=cfg.accumulation, frame_interval=cfg.frame_interval, drop_last=cfg.drop_last,
        )
        self.mask_ratios = canonical_mask_ratios(cfg.mask_ratios)
        if self.mask_ratios is not None:
            MaskGenerator(self.mask_ratios)  # validates the ratios now

        # models
        self.text_encoder = text_encoder if text_encoder is not None else build_text_encoder(cfg, self.device)
        self.vae = vae if vae is not None else build_vae(cfg, self.device)
        read_dirs = cfg.feature_cache_read
        if isinstance(read_dirs, str):
            read_dirs = [d.strip() for d in read_dirs.split(",") if d.strip()]
        self.features = FeatureProvider(self.dataset, self.vae, self.text_encoder, cfg.feature_cache or None,
                                        read_only=cfg.feature_cache_read_only, read_dirs=read_dirs or (),
                                        device=self.device)
        model, self.model_info = build_model(cfg)
        caption_channels = model.config["caption_channels"]
        if caption_channels != self.text_encoder.output_dim:
            raise ValueError(f"the model takes {caption_channels}-channel captions, the text encoder gives "
                             f"{self.text_encoder.output_dim}")
        self.model_config = dict(model.config)
        self.ema = EMA(model)
        self.ema.model.to(self.device)
        trainable = [p for p in model.parameters() if p.requires_grad]
        self.num_params = sum(p.numel() for p in model.parameters())
        self.num_trainable = sum(p.numel() for p in trainable)
        optimizer = torch.optim.AdamW(trainable, lr=cfg.lr, betas=tuple(cfg.adam_betas), eps=cfg.adam_eps,
                                      weight_decay=cfg.weight_decay, fused=cfg.fused_adam or None)
        lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_factor(cfg.warmup_steps))
        self.engine, self.optimizer, _, self.lr_scheduler = deepspeed.initialize(
            model=model.to(self.device), optimizer=optimizer, lr_scheduler=lr_scheduler,
            model_parameters=trainable, config=deepspeed_config(cfg, self.precision),
        )
        self.engine.train()
        self.scheduler = RFlowScheduler(
            base_resolution=cfg.transform_base_resolution, sample_method=cfg.sample_method,
            use_timestep_transform=cfg.use_timestep_transform, frame_scale=cfg.transform_frame_scale,
        )
        self.global_step = 0
        self.history: list[dict] = []
        self.train_seconds = 0.0
        self._dist = dist
        if cfg.resume:
            self.load(cfg.resume)

    # -- one step -----------------------------------------------------------------------------
    def _model_kwargs(self, batch: dict) -> dict:
        d = self.device
        return {
            "y": batch["y"].to(d, self.dtype),
            "mask": batch["mask"].to(d),
            **{k: batch[k].to(d, self.dtype) for k in ("height", "width", "num_frames", "fps", "ar")},
        }

    def train_step(self) -> dict:
        """One optimizer step over this process's micro-batches; returns the step's log (global numbers)."""
        start = time.perf_counter()
        epoch, step, micro_batches = self.sampler.next()
        lr = float(self.optimizer.param_groups[0]["lr"])  # the rate this step uses
        losses, samples, masked = [], 0, 0
        for mb in micro_batches:
            batch = self.features.batch(mb, self.table, epoch)
            x = batch["x"].to(self.device)
            mb_seed = derive_seed(self.cfg.seed, epoch, mb.index, 0x57E9)
            torch.manual_seed(mb_seed)
            frame_mask = None
            if self.mask_ratios is not None:
                frame_mask = MaskGenerator(self.mask_ratios, rng=random.Random(mb_seed)).get_masks(x)
                masked += int((~frame_mask).any(dim=1).sum())
            out = self.scheduler.training_losses(self.engine, x, self._model_kwargs(batch), mask=frame_mask)
            loss = out["loss"].mean()
            self.engine.backward(loss)
            self.engine.step()
            losses.append(loss.detach().float())
            samples += x.shape[0]
        self.ema.update(self.engine.module, self.cfg.ema_decay, self._fp32_source())
        totals = torch.stack([torch.stack(losses).mean(), torch.tensor(float(samples)), torch.tensor(float(masked))])
        if self.world_size > 1:
            totals = totals.to(self.device)
            self._dist.all_reduce(totals)
            totals = totals.cpu()
            totals[0] /= self.world_size
        self.global_step += 1
        seconds = time.perf_counter() - start
        self.train_seconds += seconds
        grad_norm = self.engine.get_global_grad_norm()
        entry = {
            "step": self.global_step,
            "epoch": epoch,
            "epoch_step": step,
            "loss": float(totals[0]),
            "lr": lr,
            "grad_norm": None if grad_norm is None else float(grad_norm),
            "samples": int(totals[1]),
            "masked_samples": int(totals[2]),
            "seconds": seconds,
            "buckets": [bucket_name(mb.bucket) for mb in self.sampler.global_batches(epoch, step)],
        }
        self.history.append(entry)
        return entry

    def _fp32_source(self):
        if self.precision != "bf16" or self.cfg.zero_stage == 0:
            return None
        from deepspeed.utils import safe_get_full_fp32_param

        return safe_get_full_fp32_param

    def train(self, steps: int | None = None, callback: Callable[[dict], None] | None = None) -> list[dict]:
        """Train until ``steps`` optimizer steps in total (cfg.steps by default); periodic checkpoints when
        ``cfg.ckpt_every`` and ``cfg.ckpt_dir`` are set. Returns the new log entries."""
        from tqdm.auto import tqdm

        total = self.cfg.steps if steps is None else steps
        new = []
        bar = tqdm(total=max(total - self.global_step, 0), desc=f"video stage {self.cfg.stage}",
                   disable=not self.progress or self.rank != 0)
        while self.global_step < total:
            entry = self.train_step()
            new.append(entry)
            bar.update(1)
            bar.set_postfix(loss=f"{entry['loss']:.4f}")
            if callback is not None:
                callback(entry)
            if self.cfg.ckpt_every and self.cfg.ckpt_dir and self.global_step % self.cfg.ckpt_every == 0:
                self.save(Path(self.cfg.ckpt_dir) / f"step-{self.global_step:06d}.pt")
        bar.close()
        return new

    # -- checkpoints --------------------------------------------------------------------------
    def _gather(self, obj) -> list | None:
        if self.world_size == 1:
            return [obj]
        out = [None] * self.world_size if self.rank == 0 else None
        self._dist.gather_object(obj, out, dst=0)
        return out

    def save(self, path: str | os.PathLike) -> Path | None:
        """Write the whole training state to ``path`` (collective; rank 0 writes, temp file + rename)."""
        path = Path(path)
        per_rank = self._gather({
            "optimizer": _sanitize_optimizer_state(self.optimizer.state_dict()),
            "rng": _rng_state(),
        })
        if self.rank == 0:
            model_sd = {k: v.detach().float().cpu().clone() for k, v in self.engine.module.state_dict().items()}
            state = {
                "format": CHECKPOINT_FORMAT,
                "stage": self.cfg.stage,
                "model_preset": self.model_info.get("preset"),
                "config": _json_safe(self.model_config),
                "model": model_sd,
                "ema": self.ema.state_dict(),
                "optimizer": [r["optimizer"] for r in per_rank],
                "rng": [r["rng"] for r in per_rank],
                "lr_scheduler": self.lr_scheduler.state_dict(),
                "sampler": self.sampler.state_dict(),
                "step": self.global_step,
                "world_size": self.world_size,
                "accumulation": self.cfg.accumulation,
                "zero_stage": self.cfg.zero_stage,
                "precision": self.precision,
                "train_seconds": self.train_seconds,
                "history": _json_safe(self.history),
                "train_config": _json_safe(self.cfg.to_dict()),
                "bucket_table": _json_safe(self.table.to_dict()),
                "init": _json_safe(self.model_info),
            }
            atomic_torch_save(state, path)
        if self.world_size > 1:
            self._dist.barrier()
        return path if self.rank == 0 else None

    def load(self, path: str | os.PathLike) -> None:
        """Continue from a checkpoint of this engine exactly (same processes x accumulation; collective)."""
        state = read_checkpoint(path)
        if state["world_size"] != self.world_size:
            raise ValueError(f"{path}: saved by {state['world_size']} process(es), this run has {self.world_size}: "
                             "the ZeRO optimizer partitions do not match")
        if state["accumulation"] != self.cfg.accumulation:
            raise ValueError(f"{path}: saved with accumulation {state['accumulation']}, this run has "
                             f"{self.cfg.accumulation}")
        if _stored_config(state) != _json_safe(self.model_config):
            raise ValueError(f"{path}: the stored model config differs from this run's model")
        self.engine.module.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        if self.cfg.zero_stage > 0:
            self.optimizer.load_state_dict(state["optimizer"], load_optimizer_states=True,
                                           load_from_fp32_weights=True)
        else:
            self.optimizer.load_state_dict(state["optimizer"][self.rank])
        self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        self.sampler.load_state_dict(state["sampler"])
        self.global_step = int(state["step"])
        self.engine.global_steps = self.global_step
        self.engine.micro_steps = self.global_step * self.cfg.accumulation
        self.train_seconds = float(state.get("train_seconds", 0.0))
        self.history = list(state.get("history", []))
        _set_rng_state(state["rng"][self.rank])

    # -- summaries ----------------------------------------------------------------------------
    def bucket_usage(self) -> dict:
        """Samples and micro-batches per bucket over the steps trained so far (all processes)."""
        samples, batches = Counter(), Counter()
        for entry in self.history:
            epoch, step = entry["epoch"], entry["epoch_step"]
            for mb in self.sampler.global_batches(epoch, step):
                samples[bucket_name(mb.bucket)] += len(mb.rows)
                batches[bucket_name(mb.bucket)] += 1
        return {"samples": dict(sorted(samples.items())), "micro_batches": dict(sorted(batches.items()))}

    def summary(self) -> dict:
        losses = [e["loss"] for e in self.history]
        tail = losses[-10:]
        samples = sum(e["samples"] for e in self.history)
        seconds = sum(e["seconds"] for e in self.history)
        return {
            "stage": self.cfg.stage,
            "steps": self.global_step,
            "final_loss": float(np.mean(tail)) if tail else None,
            "first_loss": losses[0] if losses else None,
            "samples": samples,
            "train_seconds": seconds,
            "samples_per_s": samples / seconds if seconds else None,
            "steps_per_s": len(losses) / seconds if seconds else None,
            "masked_fraction": (sum(e["masked_samples"] for e in self.history) / samples) if samples else None,
            "world_size": self.world_size,
            "accumulation": self.cfg.accumulation,
            "precision": self.precision,
            "zero_stage": self.cfg.zero_stage,
            "params": self.num_params,
            "trainable_params": self.num_trainable,
            "feature_cache": dict(self.features.stats),
            "rejected_rows": len(self.dataset.rejected),
        }

    def close(self) -> None:
        """Release the DeepSpeed engine (the process group stays up for the next trainer)."""
        with contextlib.suppress(Exception):
            self.engine.destroy()
