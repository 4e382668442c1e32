"""Losses, one training step and reconstruction metrics for the video VAE (facts §7).

Reference stages (configs/vae/train/stage{1,2,3}.py), all run on the un-normalised training pass
(`VideoAutoencoder.forward`, whole clip as one temporal chunk):

| stage | trains            | clip                                   | loss                                          |
|-------|-------------------|----------------------------------------|-----------------------------------------------|
| 1     | temporal VAE only | 17 frames; 20% of steps: frame 0 only  | L1(x_z, x_z_rec) [+ L1(x_z, z) on image steps] |
| 2     | both VAEs         | same                                   | L1(x_z, x_z_rec)                              |
| 3     | both VAEs         | first n frames, n ~ U{1..T} per step   | L1(x, x_rec) [+ w*LPIPS] + 1e-6 * KL          |

Reductions (reference `VAELoss` with its log-variance parameter fixed at 0, so nll == L1):
  L1 terms: |a - b| summed over every element, divided by the number of frames B*T;
  perceptual: a per-frame value broadcast over (C, H, W) before that sum, i.e. weighted by C*H*W;
  KL: 0.5 * sum(mu^2 + var - 1 - logvar) over (C, T', h, w), summed over the batch, divided by B.

Stage 0 is ours, not the reference's: the reference starts from the pretrained SDXL VAE, which we
do not have offline, so the narrow 2D VAE is first trained alone on frames with
L1(x, x_rec) + 1e-6 * KL (same reductions, frames as the batch).
"""

from __future__ import annotations

import random
from contextlib import nullcontext
from typing import Any, Callable, Mapping

import torch
import torch.nn as nn

from .vae import VideoAutoencoder
from .vae_temporal import DiagonalGaussianDistribution

__all__ = [
    "frame_l1_loss",
    "kl_loss",
    "vae_stage_loss",
    "spatial_vae_loss",
    "freeze_for_stage",
    "make_vae_optimizer",
    "mix_clip_length",
    "vae_train_step",
    "video_psnr_ssim",
]

PerceptualFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _frames(x: torch.Tensor) -> torch.Tensor:
    # [B, C, T, H, W] -> [(B T), C, H, W]
    b, c, t, h, w = x.shape
    return x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)


def frame_l1_loss(
    target: torch.Tensor,
    recon: torch.Tensor,
    perceptual_fn: PerceptualFn | None = None,
    perceptual_weight: float = 0.0,
) -> torch.Tensor:
    """sum |target - recon| / (B*T) for [B, C, T, H, W] tensors (optionally + perceptual)."""
    target_f, recon_f = _frames(target.float()), _frames(recon.float())  # [(B T), C, H, W]
    per_elem = (target_f - recon_f).abs()
    if perceptual_fn is not None and perceptual_weight > 0:
        p = perceptual_fn(target_f, recon_f).reshape(-1, 1, 1, 1)  # one value per frame, [(B T), 1, 1, 1]
        per_elem = per_elem + perceptual_weight * p  # broadcast: weighted by C*H*W as in the reference
    return per_elem.sum() / per_elem.shape[0]


def kl_loss(posterior: DiagonalGaussianDistribution) -> torch.Tensor:
    """KL to N(0, I), summed over all latent elements, averaged over the batch."""
    kl = posterior.kl().float()  # [B]
    return kl.sum() / kl.shape[0]


def vae_stage_loss(
    out,
    x: torch.Tensor,
    stage: int,
    kl_weight: float = 1e-6,
    perceptual_fn: PerceptualFn | None = None,
    perceptual_weight: float = 0.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Loss of reference stage 1, 2 or 3 from a `VideoAutoencoder.forward` output `out`
    (`VAEOutput`) and the input clip `x [B, 3, T, H, W]`. Returns (loss, logged parts)."""
    logs: dict[str, float] = {}
    if stage in (1, 2):
        loss = frame_l1_loss(out.x_z, out.x_z_rec)
        logs["z_rec_loss"] = loss.item()
        if stage == 1 and x.shape[2] == 1:  # image step: the latent should equal the 2D latent
            identity = frame_l1_loss(out.x_z, out.z)
            loss = loss + identity
            logs["identity_loss"] = identity.item()
        return loss, logs
    if stage == 3:
        if out.x_rec is None:
            raise ValueError("stage 3 needs the pixel reconstruction (forward with decode_pixels=True)")
        rec = frame_l1_loss(x, out.x_rec, perceptual_fn, perceptual_weight)
        kl = kl_loss(out.posterior)
        logs.update(rec_loss=rec.item(), kl_loss=kl.item())
        return rec + kl_weight * kl, logs
    raise ValueError(f"stage must be 1, 2 or 3 here, got {stage}")


def spatial_vae_loss(
    model: VideoAutoencoder,
    x: torch.Tensor,
    kl_weight: float = 1e-6,
    sample_posterior: bool = True,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Stage 0 (ours): the 2D VAE alone on the frames of `x [B, 3, T, H, W]`."""
    x_z, posterior = model.spatial_vae.encode(x, sample_posterior, generator, return_posterior=True)
    x_rec = model.spatial_vae.decode(x_z)  # [B, 3, T, H, W]
    rec = frame_l1_loss(x, x_rec)
    kl = posterior.kl().float().sum() / posterior.mean.shape[0]  # per frame
    return rec + kl_weight * kl, {"rec_loss": rec.item(), "kl_loss": kl.item()}


def freeze_for_stage(model: VideoAutoencoder, stage: int) -> list[nn.Parameter]:
    """Set requires_grad for `stage` and return the trainable parameters.
    0: 2D VAE only; 1: temporal VAE only (2D frozen, as the reference); 2, 3: everything."""
    if stage not in (0, 1, 2, 3):
        raise ValueError(f"unknown VAE training stage {stage}")
    model.spatial_vae.requires_grad_(stage != 1)
    model.temporal_vae.requires_grad_(stage != 0)
    return [p for p in model.parameters() if p.requires_grad]


def make_vae_optimizer(
    model: VideoAutoencoder,
    stage: int,
    lr: float = 1e-5,
    weight_decay: float = 0.0,
    eps: float = 1e-8,
    betas: tuple[float, float] = (0.9, 0.999),
) -> torch.optim.AdamW:
    """AdamW over the parameters `stage` trains (reference: lr 1e-5, wd 0, eps 1e-8)."""
    return torch.optim.AdamW(freeze_for_stage(model, stage), lr=lr, weight_decay=weight_decay, eps=eps, betas=betas)


def mix_clip_length(x: torch.Tensor, stage: int, rng: random.Random, image_ratio: float = 0.2) -> torch.Tensor:
    """Reference length mixing: stages 1-2 keep only frame 0 with prob `image_ratio`
    ("mixed_video_image"); stage 3 keeps the first n ~ U{1..T} frames ("mixed_video_random")."""
    if stage in (1, 2):
        return x[:, :, :1] if rng.random() < image_ratio else x
    if stage == 3:
        return x[:, :, : rng.randint(1, x.shape[2])]
    return x


def vae_train_step(
    model: VideoAutoencoder,
    batch: torch.Tensor | Mapping[str, Any],
    stage: int,
    optimizer: torch.optim.Optimizer,
    *,
    grad_clip: float = 1.0,
    image_ratio: float = 0.2,
    mix_length: bool = True,
    rng: random.Random | None = None,
    autocast_dtype: torch.dtype | None = None,
    kl_weight: float = 1e-6,
    perceptual_fn: PerceptualFn | None = None,
    perceptual_weight: float = 0.0,
    generator: torch.Generator | None = None,
) -> dict[str, float]:
    """One optimisation step of VAE training stage 0 (ours: 2D only), 1, 2 or 3.

    `batch`: a video `[B, 3, T, H, W]` in [-1, 1] or a dict with key "video". The stage's
    parameters are (re)frozen every call, so a frozen part never changes even if `optimizer`
    holds its parameters. `autocast_dtype=torch.bfloat16` runs the model under CPU/GPU autocast
    (losses in fp32). Returns floats: loss, its parts, grad_norm (before clipping), num_frames.
    """
    x = batch["video"] if isinstance(batch, Mapping) else batch
    x = x.to(device=model.device, dtype=model.dtype)
    rng = rng if rng is not None else random._inst  # module-level RNG, like the reference's random.random()
    if mix_length:
        x = mix_clip_length(x, stage, rng, image_ratio)
    params = freeze_for_stage(model, stage)
    model.train()
    optimizer.zero_grad(set_to_none=True)
    ctx = torch.autocast(x.device.type, dtype=autocast_dtype) if autocast_dtype is not None else nullcontext()
    with ctx:
        if stage == 0:
            loss, logs = spatial_vae_loss(model, x, kl_weight=kl_weight, generator=generator)
        else:
            out = model(x, micro_frame_size=None, decode_pixels=(stage == 3), generator=generator)
            loss, logs = vae_stage_loss(out, x, stage, kl_weight, perceptual_fn, perceptual_weight)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(params, grad_clip if grad_clip else float("inf"))
    optimizer.step()
    return {"loss": loss.item(), **logs, "grad_norm": float(grad_norm), "num_frames": x.shape[2]}


@torch.no_grad()
def video_psnr_ssim(x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """Mean per-frame PSNR (dB, capped at 100 like the reference eval) and SSIM (11x11 Gaussian,
    sigma 1.5) of two videos `[B, 3, T, H, W]` in [-1, 1], computed with torchmetrics on [0, 1]."""
    from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

    if x.shape != y.shape:
        raise ValueError(f"shape mismatch {tuple(x.shape)} vs {tuple(y.shape)}")
    a = _frames(((x.float().clamp(-1, 1) + 1) / 2))  # [(B T), 3, H, W] in [0, 1]
    b = _frames(((y.float().clamp(-1, 1) + 1) / 2))
    psnr = peak_signal_noise_ratio(b, a, data_range=1.0, reduction="none", dim=(1, 2, 3))  # [(B T)]
    psnr = torch.nan_to_num(psnr, posinf=100.0).clamp(max=100.0)
    ssim = structural_similarity_index_measure(b, a, data_range=1.0, reduction="none")  # [(B T)]
    return {"psnr": psnr.mean().item(), "ssim": ssim.mean().item()}
