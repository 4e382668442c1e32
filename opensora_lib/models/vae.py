"""Open-Sora 1.2 video autoencoder: a 2D image VAE (diffusers `AutoencoderKL`) followed by the
causal temporal VAE of `vae_temporal.py` (facts §2).

    pixels  x   [B, 3, T, H, W] in [-1, 1]
      | 2D VAE per frame (micro-batches of `micro_batch_size` frames), latent * 0.18215
    x_z         [B, 4, T, H/8, W/8]
      | temporal VAE per chunk of `micro_frame_size`=17 frames (17 -> 5 latent frames)
    z_temporal  [B, 4, T', H/8, W/8]
      | (z - shift) / scale per channel
    z           [B, 4, T', H/8, W/8]          (what the diffusion model sees)

`decode(z, num_frames)` runs the same steps backwards (chunks of 5 latent frames).

Also here: the released and the narrow CPU presets, the frame-count mapping, and a strict
checkpoint loader / saver (`load_vae_weights`, `save_vae`, `load_vae`).
"""

from __future__ import annotations

import copy
import json
import os
import pickle
import struct
import tempfile
import zipfile
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers import AutoencoderKL

from .vae_temporal import (
    VAE_TEMPORAL_NARROW_CONFIG,
    VAE_TEMPORAL_SD_CONFIG,
    DiagonalGaussianDistribution,
    VAETemporal,
)

__all__ = [
    "SDXL_VAE_2D_CONFIG",
    "NARROW_VAE_2D_CONFIG",
    "RELEASED_SHIFT",
    "RELEASED_SCALE",
    "VideoAutoencoderKL",
    "VideoAutoencoder",
    "VAEOutput",
    "OpenSoraVAE_V1_2",
    "OpenSoraVAE_Narrow",
    "latent_num_frames",
    "pixel_num_frames",
    "CheckpointError",
    "LoadReport",
    "read_checkpoint",
    "load_vae_weights",
    "save_vae",
    "load_vae",
]

# diffusers AutoencoderKL config of the SDXL VAE (PixArt-alpha/pixart_sigma_sdxlvae_T5_diffusers, subfolder vae).
SDXL_VAE_2D_CONFIG: dict[str, Any] = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    act_fn="silu",
    latent_channels=4,
    norm_num_groups=32,
    sample_size=1024,
    scaling_factor=0.13025,  # diffusers' own field; the pipeline uses `scaling_2d`=0.18215 instead
    force_upcast=True,
)

# Narrow CPU preset: same topology (4 levels, 3 spatial /2 down-samplers = factor 8, mid-block
# attention, 4 latent channels), far fewer channels.
NARROW_VAE_2D_CONFIG: dict[str, Any] = {
    **SDXL_VAE_2D_CONFIG,
    "block_out_channels": (32, 64, 64, 64),
    "layers_per_block": 1,
    "norm_num_groups": 16,
    "sample_size": 64,
}

RELEASED_SHIFT = (-0.10, 0.34, 0.27, 0.98)
RELEASED_SCALE = (3.85, 2.32, 2.33, 3.06)

_CHECKPOINT_FORMAT = "opensora_lib.VideoAutoencoder/1"


# ---------------------------------------------------------------------------------------------
# Frame-count mapping
# ---------------------------------------------------------------------------------------------
def latent_num_frames(num_frames: int, micro_frame_size: int | None = 17, time_factor: int = 4) -> int:
    """Pixel frames -> latent frames (facts §2.1): each full chunk of `micro_frame_size` frames
    gives ceil(micro/4) latents (17 -> 5), a remainder r gives ceil(r/4).

    1->1, 17->5, 20->6, 34->10, 51->15, 102->30, 204->60, 408->120.
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")

    def ceil_div(a: int) -> int:
        return -(-a // time_factor)

    if micro_frame_size is None:
        return ceil_div(num_frames)
    full, rest = divmod(num_frames, micro_frame_size)
    return full * ceil_div(micro_frame_size) + (ceil_div(rest) if rest else 0)


def pixel_num_frames(latent_frames: int, micro_frame_size: int | None = 17, time_factor: int = 4) -> int:
    """Latent frames -> the canonical pixel frame count that `decode` produces by default.

    The map above is not one-to-one (17..20 frames all give 5 latents); we return the smallest
    count, `time_factor * n - (time_factor - 1)` per chunk, i.e. 5 -> 17, 1 -> 1, 10 -> 34, 6 -> 18.
    Pass `num_frames` to `decode` explicitly to get any other count.
    """
    if latent_frames < 1:
        raise ValueError(f"latent_frames must be >= 1, got {latent_frames}")

    def minimal(n: int) -> int:
        return time_factor * n - (time_factor - 1)

    if micro_frame_size is None:
        return minimal(latent_frames)
    micro_z = -(-micro_frame_size // time_factor)
    full, rest = divmod(latent_frames, micro_z)
    return full * micro_frame_size + (minimal(rest) if rest else 0)


# ---------------------------------------------------------------------------------------------
# 2D part
# ---------------------------------------------------------------------------------------------
def _clean_2d_config(config: dict[str, Any]) -> dict[str, Any]:
    """Drop diffusers bookkeeping fields (`_class_name`, `_diffusers_version`, ...)."""
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in config.items() if not k.startswith("_")}


class VideoAutoencoderKL(nn.Module):
    """Frame-wise 2D VAE on videos; the diffusers model is `.module` (checkpoint prefix `module.`).

    Latents are multiplied by `scaling` (0.18215: the SD1 constant the reference hard-codes even
    for the SDXL VAE, facts §12.2). Frames are processed `micro_batch_size` at a time (None = all).
    """

    def __init__(self, config: dict[str, Any], micro_batch_size: int | None = 4, scaling: float = 0.18215,
                 shortcut: bool = False):
        super().__init__()
        self.module = AutoencoderKL(**_clean_2d_config(config))
        self.micro_batch_size = micro_batch_size
        self.scaling = scaling
        self.out_channels = self.module.config.latent_channels
        self.patch_size = (1, 2 ** (len(self.module.config.block_out_channels) - 1), 2 ** (len(self.module.config.block_out_channels) - 1))
        self.shortcut = bool(shortcut)
        if self.shortcut:
            in_ch = self.module.config.in_channels
            if self.out_channels < in_ch or self.module.config.out_channels != in_ch:
                raise ValueError(f"the 2D shortcut needs latent_channels >= in_channels = out_channels, got "
                                 f"{self.out_channels} latent, {in_ch} in, {self.module.config.out_channels} out")
            # start as the shortcut alone: the decoder's last conv is zero, so x_rec = upsample(pool(x)) at step 0
            nn.init.zeros_(self.module.decoder.conv_out.weight)
            nn.init.zeros_(self.module.decoder.conv_out.bias)

    def _chunks(self, n: int) -> list[slice]:
        step = n if not self.micro_batch_size else self.micro_batch_size
        return [slice(i, i + step) for i in range(0, n, step)]

    def encode(
        self,
        x: torch.Tensor,
        sample_posterior: bool = True,
        generator: torch.Generator | None = None,
        return_posterior: bool = False,
    ):
        """x [B, 3, T, H, W] -> x_z [B, 4, T, H/8, W/8] (scaled). With `return_posterior`, also the
        diffusers posterior over the flattened frames ([B*T, 4, h, w], unscaled)."""
        b, c, t, h, w = x.shape
        frames = x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)  # [B*T, 3, H, W]
        latents, means, logvars = [], [], []
        for sl in self._chunks(b * t):
            dist = self.module.encode(frames[sl]).latent_dist  # mean/logvar: [n, 4, H/8, W/8]
            if self.shortcut:
                mean = self._shortcut_encode(frames[sl], dist.mean)
                if sample_posterior:
                    noise = torch.randn(mean.shape, generator=generator, dtype=torch.float32)
                    latents.append(mean + dist.std * noise.to(device=mean.device, dtype=mean.dtype))
                else:
                    latents.append(mean)
            else:
                mean = dist.mean
                latents.append(dist.sample(generator) if sample_posterior else dist.mode())
            if return_posterior:
                means.append(mean)
                logvars.append(dist.logvar)
        x_z = torch.cat(latents, dim=0) * self.scaling  # [B*T, 4, h, w]
        x_z = x_z.reshape(b, t, *x_z.shape[1:]).permute(0, 2, 1, 3, 4)  # [B, 4, T, h, w]
        if not return_posterior:
            return x_z
        moments = torch.cat([torch.cat(means), torch.cat(logvars)], dim=1)  # [B*T, 8, h, w]
        return x_z, DiagonalGaussianDistribution(moments)

    def decode(self, x_z: torch.Tensor) -> torch.Tensor:
        """x_z [B, 4, T, h, w] (scaled) -> x [B, 3, T, 8h, 8w]."""
        b, c, t, h, w = x_z.shape
        frames = x_z.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w) / self.scaling  # [B*T, 4, h, w]
        out = torch.cat([self._decode_frames(frames[sl]) for sl in self._chunks(b * t)], dim=0)
        return out.reshape(b, t, *out.shape[1:]).permute(0, 2, 1, 3, 4)  # [B, 3, T, H, W]

    # -- the parameter-free shortcut (narrow preset; off for the SDXL VAE) ------------------------
    # A residual path around the whole 2D VAE, in the spirit of DC-AE's space-to-channel shortcuts:
    # the first 3 scaled latent channels carry the 8x8 average colour of their patch, and the
    # decoder adds those colours back, bilinearly up-sampled. The networks learn the residual.
    # Measured on the synthetic world: without it the narrow VAE stays at the per-image mean colour
    # (~12-14 dB) for the whole CPU budget; the shortcut alone scores ~18.6 dB before any training.
    def _shortcut_encode(self, frames: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
        # frames [n, 3, H, W] -> pooled [n, 3, h, w], added to mean[:, :3] in unscaled units
        pooled = F.avg_pool2d(frames.to(mean.dtype), self.patch_size[1]) / self.scaling
        c = pooled.shape[1]
        return torch.cat([mean[:, :c] + pooled, mean[:, c:]], dim=1)  # [n, 4, h, w]

    def _decode_frames(self, frames: torch.Tensor) -> torch.Tensor:
        # frames [n, 4, h, w] (unscaled) -> [n, 3, H, W]
        out = self.module.decode(frames).sample
        if self.shortcut:
            colours = frames[:, : out.shape[1]] * self.scaling  # [n, 3, h, w], the pooled colours
            out = out + F.interpolate(colours.to(out.dtype), size=out.shape[-2:], mode="bilinear", align_corners=False)
        return out

    def get_latent_size(self, input_size: Sequence[int | None]) -> list[int | None]:
        return [None if s is None else s // p for s, p in zip(input_size, self.patch_size)]


# ---------------------------------------------------------------------------------------------
# Pipeline
# ---------------------------------------------------------------------------------------------
class VAEOutput(NamedTuple):
    """Training-mode outputs (no shift/scale normalisation anywhere)."""

    x_rec: torch.Tensor | None  # [B, 3, T, H, W] pixel reconstruction (None if decode_pixels=False)
    x_z_rec: torch.Tensor  # [B, 4, T, h, w] temporal-VAE reconstruction of x_z
    z: torch.Tensor  # [B, 4, T', h, w] temporal latent (sampled or mean)
    posterior: DiagonalGaussianDistribution  # temporal posterior over all of z
    x_z: torch.Tensor  # [B, 4, T, h, w] 2D latents (scaled by 0.18215)


def _as_channel_buffer(value, channels: int) -> torch.Tensor:
    t = torch.as_tensor(value, dtype=torch.float32).flatten()
    if t.numel() == 1:
        t = t.expand(channels).clone()
    if t.numel() != channels:
        raise ValueError(f"expected 1 or {channels} values, got {t.numel()}")
    return t.view(1, channels, 1, 1, 1)  # [1, C, 1, 1, 1]


class VideoAutoencoder(nn.Module):
    """`VideoAutoencoderPipeline` of the reference (`OpenSoraVAE_V1_2` is this at released sizes).

    Args:
        vae_2d: diffusers `AutoencoderKL` config dict.
        vae_temporal: `VAETemporal` kwargs (in_out_channels, latent_embed_dim, embed_dim, filters,
            num_res_blocks, channel_multipliers, temporal_downsample, num_groups).
        micro_frame_size: the temporal VAE sees chunks of this many frames (None = whole clip).
        micro_batch_size: frames per 2D VAE call (None = all at once).
        shift, scale: per-channel latent normalisation, a scalar or one value per channel.
        scaling_2d: multiplier of the 2D latents.
        freeze_vae_2d: set requires_grad=False on the 2D VAE.
        shortcut_2d: add the parameter-free colour shortcut around the 2D VAE (see
            `VideoAutoencoderKL._shortcut_encode`); on in the narrow preset, off in the released one.
        cal_loss: reference compatibility switch: when True, `encode` returns
            `(z, posterior, x_z)` and `decode` returns `(x, x_z)`, both without normalisation, as the
            reference's `cal_loss=True` mode. Prefer `forward()` / `encode(normalize=False)`.
    """

    def __init__(
        self,
        vae_2d: dict[str, Any],
        vae_temporal: dict[str, Any],
        micro_frame_size: int | None = 17,
        micro_batch_size: int | None = 4,
        shift: float | Sequence[float] = 0.0,
        scale: float | Sequence[float] = 1.0,
        scaling_2d: float = 0.18215,
        freeze_vae_2d: bool = False,
        cal_loss: bool = False,
        shortcut_2d: bool = False,
    ):
        super().__init__()
        vae_2d = _clean_2d_config(dict(vae_2d))
        vae_temporal = dict(vae_temporal)
        self.spatial_vae = VideoAutoencoderKL(vae_2d, micro_batch_size=micro_batch_size, scaling=scaling_2d,
                                              shortcut=shortcut_2d)
        self.temporal_vae = VAETemporal(**vae_temporal)
        if self.temporal_vae.config["in_out_channels"] != self.spatial_vae.out_channels:
            raise ValueError(
                f"temporal VAE in_out_channels={self.temporal_vae.config['in_out_channels']} but the 2D VAE "
                f"has {self.spatial_vae.out_channels} latent channels"
            )
        self.micro_frame_size = micro_frame_size
        self.micro_z_frame_size = (
            None if micro_frame_size is None else self.temporal_vae.get_latent_size([micro_frame_size, None, None])[0]
        )
        self.out_channels = self.temporal_vae.embed_dim
        self.cal_loss = cal_loss
        # (scale registered first: same state_dict order as the reference)
        self.register_buffer("scale", _as_channel_buffer(scale, self.out_channels))  # [1, C, 1, 1, 1]
        self.register_buffer("shift", _as_channel_buffer(shift, self.out_channels))  # [1, C, 1, 1, 1]
        self.config: dict[str, Any] = dict(
            vae_2d=vae_2d,
            vae_temporal={k: (list(v) if isinstance(v, tuple) else v) for k, v in self.temporal_vae.config.items()},
            micro_frame_size=micro_frame_size,
            micro_batch_size=micro_batch_size,
            shift=self.shift.flatten().tolist() if self.shift.device.type != "meta" else _listify(shift),
            scale=self.scale.flatten().tolist() if self.scale.device.type != "meta" else _listify(scale),
            scaling_2d=scaling_2d,
            freeze_vae_2d=freeze_vae_2d,
            shortcut_2d=bool(shortcut_2d),
        )
        if freeze_vae_2d:
            self.spatial_vae.requires_grad_(False)

    # -- sizes -------------------------------------------------------------------------------
    @property
    def time_factor(self) -> int:
        return self.temporal_vae.time_downsample_factor

    def get_latent_size(self, input_size: Sequence[int | None]) -> list[int | None]:
        """[T, H, W] pixels -> [T', H//8, W//8] latents (None passes through)."""
        t, h, w = self.spatial_vae.get_latent_size(input_size)
        if t is not None:
            t = latent_num_frames(t, self.micro_frame_size, self.time_factor)
        return [t, h, w]

    def get_num_frames(self, latent_frames: int) -> int:
        """Default pixel frame count for `latent_frames` latents (see `pixel_num_frames`)."""
        return pixel_num_frames(latent_frames, self.micro_frame_size, self.time_factor)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def get_temporal_last_layer(self) -> torch.Tensor:
        return self.temporal_vae.decoder.conv_out.conv.weight

    # -- temporal stage ----------------------------------------------------------------------
    def _chunk_size(self, micro_frame_size) -> int | None:
        return self.micro_frame_size if micro_frame_size == "default" else micro_frame_size

    def encode_temporal(
        self,
        x_z: torch.Tensor,
        sample_posterior: bool = True,
        generator: torch.Generator | None = None,
        micro_frame_size: int | None | str = "default",
    ) -> tuple[torch.Tensor, DiagonalGaussianDistribution]:
        """x_z [B, 4, T, h, w] -> (z [B, 4, T', h, w], posterior over all T'), chunk by chunk."""
        chunk = self._chunk_size(micro_frame_size) or x_z.shape[2]
        zs, posteriors = [], []
        for start in range(0, x_z.shape[2], chunk):
            posterior = self.temporal_vae.encode(x_z[:, :, start : start + chunk])  # chunk of <= 17 frames
            zs.append(posterior.sample(generator) if sample_posterior else posterior.mode())
            posteriors.append(posterior)
        # NB: in cal_loss mode with chunks the reference returns only the LAST chunk's posterior;
        # we return all chunks joined along time (identical when the whole clip is one chunk,
        # which is how the reference trains: micro_frame_size=None).
        return torch.cat(zs, dim=2), DiagonalGaussianDistribution.cat(posteriors, dim=2)

    def decode_temporal(
        self, z: torch.Tensor, num_frames: int | None = None, micro_frame_size: int | None | str = "default"
    ) -> torch.Tensor:
        """z [B, 4, T', h, w] (unnormalised) -> x_z [B, 4, num_frames, h, w], chunks of 5 latents."""
        chunk = self._chunk_size(micro_frame_size)
        factor = self.time_factor
        if num_frames is None:
            num_frames = pixel_num_frames(z.shape[2], chunk, factor)
        if latent_num_frames(num_frames, chunk, factor) != z.shape[2]:
            raise ValueError(
                f"{z.shape[2]} latent frames do not decode to {num_frames} frames "
                f"(micro_frame_size={chunk}: {num_frames} frames <-> {latent_num_frames(num_frames, chunk, factor)} latents)"
            )
        if chunk is None:
            return self.temporal_vae.decode(z, num_frames=num_frames)
        z_chunk = -(-chunk // factor)  # 5 latent frames per 17-frame chunk
        outs, remaining = [], num_frames
        for start in range(0, z.shape[2], z_chunk):
            outs.append(self.temporal_vae.decode(z[:, :, start : start + z_chunk], num_frames=min(chunk, remaining)))
            remaining -= chunk
        return torch.cat(outs, dim=2)

    # -- public API ----------------------------------------------------------------------------
    def normalize(self, z: torch.Tensor) -> torch.Tensor:
        return (z - self.shift.to(z.dtype)) / self.scale.to(z.dtype)

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        return z * self.scale.to(z.dtype) + self.shift.to(z.dtype)

    def encode(
        self,
        x: torch.Tensor,
        sample_posterior: bool = True,
        normalize: bool | None = None,
        generator: torch.Generator | None = None,
    ):
        """x [B, 3, T, H, W] in [-1, 1] -> z [B, 4, T', H/8, W/8].

        `sample_posterior=True` samples both posteriors (the reference's behaviour, global RNG or
        `generator`); False takes both means. `normalize` (default: not cal_loss) applies
        `(z - shift) / scale`.
        """
        x_z = self.spatial_vae.encode(x, sample_posterior=sample_posterior, generator=generator)
        z, posterior = self.encode_temporal(x_z, sample_posterior=sample_posterior, generator=generator)
        if normalize is None:
            normalize = not self.cal_loss
        if self.cal_loss:
            return (self.normalize(z) if normalize else z), posterior, x_z
        return self.normalize(z) if normalize else z

    def decode(self, z: torch.Tensor, num_frames: int | None = None, normalize: bool | None = None):
        """z [B, 4, T', h, w] -> x [B, 3, num_frames, 8h, 8w].

        `num_frames` defaults to `get_num_frames(T')` (17 per 5 latents); pass it to decode e.g. 20
        frames from 6 latents. `normalize` (default: not cal_loss): z is normalised, undo that first.
        """
        if normalize is None:
            normalize = not self.cal_loss
        if normalize:
            z = self.denormalize(z)
        x_z = self.decode_temporal(z, num_frames)
        x = self.spatial_vae.decode(x_z)
        return (x, x_z) if self.cal_loss else x

    def forward(
        self,
        x: torch.Tensor,
        sample_posterior: bool = True,
        micro_frame_size: int | None | str = None,
        decode_pixels: bool = True,
        generator: torch.Generator | None = None,
    ) -> VAEOutput:
        """Training pass (reference `cal_loss=True` forward): no normalisation.

        `micro_frame_size` defaults to None = the whole clip in one temporal chunk, as the reference
        VAE training configs; pass "default" to use the model's chunking. `decode_pixels=False`
        skips the 2D decoder (stages 1-2 never use the pixel reconstruction).
        """
        x_z = self.spatial_vae.encode(x, sample_posterior=sample_posterior, generator=generator)  # [B, 4, T, h, w]
        z, posterior = self.encode_temporal(x_z, sample_posterior, generator, micro_frame_size)  # [B, 4, T', h, w]
        x_z_rec = self.decode_temporal(z, x_z.shape[2], micro_frame_size)  # [B, 4, T, h, w]
        x_rec = self.spatial_vae.decode(x_z_rec) if decode_pixels else None  # [B, 3, T, H, W]
        return VAEOutput(x_rec, x_z_rec, z, posterior, x_z)

    @torch.no_grad()
    def estimate_shift_scale(
        self,
        videos: Sequence[torch.Tensor] | torch.Tensor,
        sample_posterior: bool = True,
        generator: torch.Generator | None = None,
    ) -> tuple[list[float], list[float]]:
        """Per-channel mean / std of the (unnormalised) temporal latents over `videos` ([B, 3, T, H, W] tensors);
        set them with `set_shift_scale` so that z is ~N(0, 1).

        By default the latents are *sampled* from the posterior, as training (the reference's `encode`) sees them:
        a channel the encoder barely uses has a tiny posterior mean but noise of std ~1, and scaling it by the
        spread of the means alone would blow that noise up (we measured x14 on a briefly trained VAE).
        `sample_posterior=False` measures the posterior means instead."""
        if isinstance(videos, torch.Tensor):
            videos = [videos]
        zs = [self.encode(v, sample_posterior=sample_posterior, normalize=False, generator=generator)
              for v in videos]
        zs = [z[0] if isinstance(z, tuple) else z for z in zs]
        flat = torch.cat([z.transpose(0, 1).reshape(z.shape[1], -1) for z in zs], dim=1)  # [C, N]
        return flat.mean(dim=1).tolist(), flat.std(dim=1).tolist()

    def set_shift_scale(self, shift, scale) -> None:
        self.shift.copy_(_as_channel_buffer(shift, self.out_channels))
        self.scale.copy_(_as_channel_buffer(scale, self.out_channels))
        self.config["shift"] = self.shift.flatten().tolist()
        self.config["scale"] = self.scale.flatten().tolist()

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "VideoAutoencoder":
        return cls(**copy.deepcopy(config))


def _listify(v):
    if isinstance(v, (int, float)):
        return v
    return [float(x) for x in v]


# ---------------------------------------------------------------------------------------------
# Presets
# ---------------------------------------------------------------------------------------------
def _build(preset_2d, preset_temporal, shift, scale, overrides: dict[str, Any]) -> VideoAutoencoder:
    overrides = dict(overrides)
    from_pretrained = overrides.pop("from_pretrained", None)
    kwargs: dict[str, Any] = dict(
        vae_2d={**preset_2d, **overrides.pop("vae_2d", {})},
        vae_temporal={**preset_temporal, **overrides.pop("vae_temporal", {})},
        micro_frame_size=17,
        micro_batch_size=4,
        shift=shift,
        scale=scale,
    )
    kwargs.update(overrides)
    model = VideoAutoencoder(**kwargs)
    if from_pretrained is not None:
        load_vae_weights(model, from_pretrained)
    return model


def OpenSoraVAE_V1_2(**overrides) -> VideoAutoencoder:
    """Released sizes: SDXL 2D VAE (83.65 M) + VAE_Temporal_SD (309.69 M) = 393.3 M parameters,
    micro_frame_size 17, micro_batch_size 4, released shift/scale. Keyword overrides replace
    constructor args; `vae_2d=`/`vae_temporal=` dicts are merged into the presets;
    `from_pretrained=path` loads a checkpoint strictly (see `load_vae_weights`)."""
    return _build(SDXL_VAE_2D_CONFIG, VAE_TEMPORAL_SD_CONFIG, RELEASED_SHIFT, RELEASED_SCALE, overrides)


def OpenSoraVAE_Narrow(**overrides) -> VideoAutoencoder:
    """Narrow CPU preset, same topology (spatial /8, time /4, 17 -> 5 chunking), shift 0 / scale 1
    until calibrated with `estimate_shift_scale` + `set_shift_scale`. Both parameter-free shortcuts
    are on (`shortcut_2d=False, vae_temporal={"shortcut": False}` turns them off): trained from
    scratch on a CPU budget, the plain networks do not get past the mean colour."""
    return _build(NARROW_VAE_2D_CONFIG, VAE_TEMPORAL_NARROW_CONFIG, 0.0, 1.0, {"shortcut_2d": True, **overrides})


# ---------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------
class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or does not fit the model. The message names the file
    and the first offending key; `missing`, `unexpected`, `mismatched` hold all of them."""

    def __init__(self, message: str, missing=(), unexpected=(), mismatched=()):
        super().__init__(message)
        self.missing = list(missing)
        self.unexpected = list(unexpected)
        self.mismatched = list(mismatched)


@dataclass
class LoadReport:
    path: str
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple, tuple]] = field(default_factory=list)  # (key, checkpoint shape, model shape)
    loaded: int = 0

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)


_WEIGHT_NAMES = (
    "diffusion_pytorch_model.safetensors",
    "model.safetensors",
    "diffusion_pytorch_model.bin",
    "pytorch_model.bin",
)


def _first_truncated_safetensors_key(path: Path) -> tuple[str | None, str]:
    """Check a .safetensors header against the file size: (first key whose bytes are missing, reason)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return None, f"file is {size} bytes, too short for a safetensors header"
        (n,) = struct.unpack("<Q", head)
        if 8 + n > size:
            return None, f"header claims {n} bytes but the file has {size}"
        try:
            header = json.loads(f.read(n))
        except ValueError as e:
            return None, f"unreadable header ({e})"
    available = size - 8 - n
    entries = sorted(
        ((k, v) for k, v in header.items() if k != "__metadata__"), key=lambda kv: kv[1]["data_offsets"][0]
    )
    for key, info in entries:
        if info["data_offsets"][1] > available:
            return key, f"data of '{key}' ends at byte {info['data_offsets'][1]} but only {available} data bytes exist"
    return None, ""


class _TensorRef:
    def __init__(self, storage_key: str):
        self.storage_key = storage_key


def _first_truncated_torch_zip_key(path: Path) -> str | None:
    """Best effort for a truncated torch.save zip (its central directory at the end is gone):
    walk the local file headers, unpickle `data.pkl` to learn which storage record holds which
    tensor, and return the first tensor (in pickle order) whose record is missing or cut short."""
    import io

    data = path.read_bytes()

    def record_size(start: int, declared: int, flags: int) -> int | None:
        if not flags & 0x08:  # sizes are in the local header
            return declared if start + declared <= len(data) else None
        # sizes follow the data in a descriptor "PK\x07\x08" crc size usize (torch writes these)
        pos = data.find(b"PK\x07\x08", start)
        while pos >= 0:
            if struct.unpack("<I", data[pos + 8 : pos + 12])[0] == pos - start or (
                len(data) >= pos + 16 and struct.unpack("<Q", data[pos + 8 : pos + 16])[0] == pos - start
            ):
                return pos - start
            pos = data.find(b"PK\x07\x08", pos + 1)
        return None

    records: dict[str, tuple[int, int | None]] = {}  # name -> (data start, size or None if cut)
    pos = 0
    while pos + 30 <= len(data) and data[pos : pos + 4] == b"PK\x03\x04":
        flags = struct.unpack("<H", data[pos + 6 : pos + 8])[0]
        declared, _, name_len, extra_len = struct.unpack("<IIHH", data[pos + 18 : pos + 30])
        name = data[pos + 30 : pos + 30 + name_len].decode("utf-8", "replace")
        start = pos + 30 + name_len + extra_len
        size = record_size(start, declared, flags)
        records[name] = (start, size)
        if size is None:
            break
        pos = start + size
        if flags & 0x08:  # skip the data descriptor (16 bytes, or 24 with zip64 sizes)
            pos += 24 if data[pos + 16 : pos + 20] not in (b"PK\x03\x04", b"PK\x01\x02") else 16
    pkl_name = next((n for n in records if n.endswith("data.pkl")), None)
    if pkl_name is None:
        return None
    prefix = pkl_name[: -len("data.pkl")]

    class _Unpickler(pickle.Unpickler):
        def find_class(self, module, name):
            if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
                return lambda storage, *args: _TensorRef(storage)
            if (module, name) == ("collections", "OrderedDict"):
                return OrderedDict
            if module == "torch":
                return lambda *a, **k: None  # dtypes / storage classes
            raise pickle.UnpicklingError(f"{module}.{name} not allowed")

        def persistent_load(self, pid):
            return str(pid[2])  # ('storage', storage_type, key, location, numel)

    obj = _Unpickler(io.BytesIO(data[records[pkl_name][0] :])).load()  # pickle stops at its STOP opcode

    def walk(o, name=""):
        if isinstance(o, _TensorRef):
            yield name, o
        elif isinstance(o, dict):
            for k, v in o.items():
                yield from walk(v, f"{name}.{k}" if name else str(k))

    for key, ref in walk(obj):
        rec = records.get(f"{prefix}data/{ref.storage_key}")
        if rec is None or rec[1] is None:
            for wrapper in ("state_dict.", "model."):
                if key.startswith(wrapper):
                    key = key[len(wrapper) :]
            return key
    return None


def _unwrap(obj: Any, path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    config = None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        if isinstance(obj.get("config"), str):
            config = json.loads(obj["config"])
        obj = obj["state_dict"]
    elif isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        obj = obj["model"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: not a state dict (expected a mapping of names to tensors)")
    sd = dict(obj)
    if sd and all(k.startswith("module.") for k in sd):  # DDP wrapper
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    return sd, config


def read_checkpoint(path: str | os.PathLike, subfolder: str | None = None) -> tuple[dict[str, torch.Tensor], dict | None, str]:
    """Read a checkpoint from disk (never from the network).

    Returns (state_dict, stored VideoAutoencoder config or None, kind) with kind "pipeline" (keys
    as `VideoAutoencoder.state_dict()`), or "2d" (a diffusers AutoencoderKL folder / state dict).
    """
    path = Path(path)
    if subfolder:
        path = path / subfolder
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or directory")
    if path.is_dir():
        weights = next((path / n for n in _WEIGHT_NAMES if (path / n).is_file()), None)
        if weights is None and (path / "vae").is_dir():
            return read_checkpoint(path / "vae")
        if weights is None:
            raise CheckpointError(f"{path}: no weights file found (looked for {', '.join(_WEIGHT_NAMES)})")
        sd, config, kind = read_checkpoint(weights)
        return sd, config, kind

    config = None
    if path.suffix == ".safetensors":
        from safetensors import safe_open
        from safetensors.torch import load_file

        bad_key, reason = _first_truncated_safetensors_key(path)
        if reason:
            where = f" (first bad key: '{bad_key}')" if bad_key else ""
            raise CheckpointError(f"{path}: truncated or corrupt safetensors file{where}: {reason}")
        try:
            sd = load_file(str(path), device="cpu")
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
        except Exception as e:  # noqa: BLE001 - re-raised with the file name
            raise CheckpointError(f"{path}: cannot read safetensors file: {e}") from e
        if "config" in meta:
            config = json.loads(meta["config"])
    elif path.suffix in (".pt", ".pth", ".bin", ".ckpt"):
        try:
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001
            bad_key = None
            if zipfile.is_zipfile(path) or path.read_bytes()[:4] == b"PK\x03\x04":
                try:
                    bad_key = _first_truncated_torch_zip_key(path)
                except Exception:  # noqa: BLE001 - best effort only
                    bad_key = None
            where = f" (first bad key: '{bad_key}')" if bad_key else ""
            raise CheckpointError(f"{path}: cannot read torch checkpoint, truncated or corrupt{where}: {e}") from e
        sd, config = _unwrap(obj, path)
    else:
        raise CheckpointError(f"{path}: unknown checkpoint type (use .safetensors, .pt, .pth or a diffusers folder)")
    kind = "pipeline" if any(k.startswith(("spatial_vae.", "temporal_vae.")) for k in sd) else "2d"
    return sd, config, kind


def load_vae_weights(
    model: VideoAutoencoder,
    path: str | os.PathLike,
    strict: bool = True,
    subfolder: str | None = None,
) -> LoadReport:
    """Load a local checkpoint into `model`.

    Accepts a `.safetensors` / `.pt` / `.pth` file with pipeline keys (`spatial_vae.module.*`,
    `temporal_vae.*`, `shift`, `scale`), or a diffusers `AutoencoderKL` folder / 2D-only state
    dict, which goes into the 2D part alone (`model.spatial_vae.module`). Shape mismatches always
    raise `CheckpointError`; with `strict`, so do missing and unexpected keys (a 2D-only
    checkpoint is only checked against the 2D part). Works on meta-device models (tensors are
    assigned, cast to the model's dtype).
    """
    sd, _, kind = read_checkpoint(path, subfolder)
    return _load_state(model, sd, kind, str(path), strict)


def _load_state(model: VideoAutoencoder, sd: dict[str, torch.Tensor], kind: str, path: str, strict: bool) -> LoadReport:
    target: nn.Module = model.spatial_vae.module if kind == "2d" else model
    expected = target.state_dict()
    report = LoadReport(path=str(path))
    for key, value in sd.items():
        if key not in expected:
            report.unexpected.append(key)
        elif tuple(value.shape) != tuple(expected[key].shape):
            report.mismatched.append((key, tuple(value.shape), tuple(expected[key].shape)))
    report.missing = [k for k in expected if k not in sd]
    problems = bool(report.mismatched) or (strict and (report.missing or report.unexpected))
    if problems:
        first = (
            f"shape mismatch at '{report.mismatched[0][0]}': checkpoint {list(report.mismatched[0][1])} vs model "
            f"{list(report.mismatched[0][2])}"
            if report.mismatched
            else f"missing key '{report.missing[0]}'"
            if report.missing
            else f"unexpected key '{report.unexpected[0]}'"
        )

        def show(names):
            names = [n if isinstance(n, str) else n[0] for n in names]
            return ", ".join(names[:8]) + (f", ... ({len(names)} in all)" if len(names) > 8 else "")

        parts = [f"{path}: checkpoint ({kind}) does not fit the model: {first}"]
        for label, names in (("missing", report.missing), ("unexpected", report.unexpected), ("mismatched", report.mismatched)):
            if names:
                parts.append(f"  {label} ({len(names)}): {show(names)}")
        raise CheckpointError("\n".join(parts), report.missing, report.unexpected, report.mismatched)

    usable = {k: v for k, v in sd.items() if k in expected}
    on_meta = any(t.device.type == "meta" for t in expected.values())
    if on_meta:
        usable = {k: v.to(expected[k].dtype) for k, v in usable.items()}
    target.load_state_dict(usable, strict=False, assign=on_meta)
    report.loaded = len(usable)
    return report


def _atomic_write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_vae(path: str | os.PathLike, model: VideoAutoencoder) -> Path:
    """Save weights + constructor config (atomically: temp file + rename). `.safetensors` keeps
    the config in the header metadata; any other suffix uses torch.save of
    `{"format", "config" (JSON string), "state_dict"}` (loadable with weights_only=True)."""
    path = Path(path)
    config = dict(model.config)
    config["shift"] = model.shift.flatten().tolist()
    config["scale"] = model.scale.flatten().tolist()
    config_json = json.dumps(config)
    sd = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        _atomic_write(path, lambda tmp: save_file(sd, tmp, metadata={"format": _CHECKPOINT_FORMAT, "config": config_json}))
    else:
        _atomic_write(path, lambda tmp: torch.save({"format": _CHECKPOINT_FORMAT, "config": config_json, "state_dict": sd}, tmp))
    return path


def load_vae(path: str | os.PathLike, device: str | torch.device = "cpu") -> VideoAutoencoder:
    """Rebuild a `VideoAutoencoder` from a file written by `save_vae` (config + weights)."""
    sd, config, kind = read_checkpoint(path)
    if config is None:
        raise CheckpointError(
            f"{path}: no model config stored in this checkpoint; build the model (e.g. OpenSoraVAE_V1_2()) "
            "and use load_vae_weights"
        )
    with torch.device("meta"):
        model = VideoAutoencoder.from_config(config)
    _load_state(model, sd, kind, str(path), strict=True)
    leftover = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.device.type == "meta"]
    if leftover:
        raise CheckpointError(f"{path}: tensors not set by the checkpoint: {', '.join(leftover[:8])}")
    return model.to(device)
