"""The loop the VAE stage notebooks run: seeded batches from a `ClipBank`, `vae_train_step`, a log.

Stage 0 is ours (the 2D VAE trained alone, standing in for the SDXL VAE we cannot download); stages 1-3 are the
reference's (facts §7): 17-frame clips with 20% image steps for 1-2, random lengths 1..T for 3.
"""

from __future__ import annotations

import random
import time

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data.datasets import ClipBank
from ..models.vae import VideoAutoencoder
from ..models.vae_losses import make_vae_optimizer, vae_train_step, video_psnr_ssim


def train_vae_stage(
    model: VideoAutoencoder,
    bank: ClipBank,
    stage: int,
    steps: int,
    lr: float,
    batch_size: int,
    num_frames: int,
    crop: int,
    seed: int = 0,
    image_ratio: float = 0.2,
    kl_weight: float = 1e-6,
    bf16: bool = True,
    progress: bool = True,
) -> list[dict]:
    """Train ``model`` for ``steps`` steps of ``stage`` (0-3). Returns one log dict per step."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    length_rng = random.Random(seed)
    optimizer = make_vae_optimizer(model, stage, lr=lr)
    start = time.perf_counter()
    bar = tqdm(range(steps), desc=f"VAE stage {stage}", disable=not progress)
    # training batches are small: run the 2D VAE on all frames at once (1.4x faster per step on the CPU
    # than micro-batches of 4); the model keeps its own micro_batch_size for inference
    micro_batch_size, model.spatial_vae.micro_batch_size = model.spatial_vae.micro_batch_size, None
    try:
        history = _train_loop(model, bank, stage, bar, optimizer, rng, length_rng, batch_size, num_frames, crop,
                              image_ratio, kl_weight, bf16, start)
    finally:
        model.spatial_vae.micro_batch_size = micro_batch_size
    model.eval()
    return history


def _train_loop(model, bank, stage, bar, optimizer, rng, length_rng, batch_size, num_frames, crop, image_ratio,
                kl_weight, bf16, start) -> list[dict]:
    history = []
    for step in bar:
        # stage 0 trains on single frames of every sample (stills included); later stages on clips
        batch = bank.sample(rng, batch_size, 1 if stage == 0 else num_frames, crop, videos_only=stage != 0)
        log = vae_train_step(model, batch, stage, optimizer, rng=length_rng, image_ratio=image_ratio,
                             kl_weight=kl_weight, autocast_dtype=torch.bfloat16 if bf16 else None)
        log.update(step=step, seconds=time.perf_counter() - start)
        history.append(log)
        bar.set_postfix(loss=f"{log['loss']:.4f}")
    return history


@torch.no_grad()
def reconstruct(model: VideoAutoencoder, x: torch.Tensor, two_d_only: bool = False) -> torch.Tensor:
    """Posterior-mean reconstruction of ``x [B, 3, T, H, W]``: through both VAEs, or the 2D VAE alone."""
    model.eval()
    if two_d_only:
        return model.spatial_vae.decode(model.spatial_vae.encode(x, sample_posterior=False))
    z = model.encode(x, sample_posterior=False)
    return model.decode(z, num_frames=x.shape[2])


@torch.no_grad()
def evaluate_reconstruction(model: VideoAutoencoder, bank: ClipBank, num_frames: int, two_d_only: bool = False,
                            max_clips: int | None = None) -> dict:
    """Mean per-frame PSNR / SSIM over the clips of ``bank`` with at least ``num_frames`` frames (their first
    ``num_frames`` frames, full size)."""
    scores = []
    for index in bank.eligible(num_frames, videos_only=num_frames > 1)[:max_clips]:
        x = bank.window(int(index), num_frames)[None]  # [1, 3, T, H, W]
        scores.append(video_psnr_ssim(x, reconstruct(model, x, two_d_only)))
    if not scores:  # no clip that long in the split: say so (null in JSON), not NaN
        return {"clips": 0, "psnr": None, "ssim": None}
    return {"clips": len(scores), "psnr": float(np.mean([s["psnr"] for s in scores])),
            "ssim": float(np.mean([s["ssim"] for s in scores]))}
