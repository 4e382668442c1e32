"""Temporal VAE of Open-Sora 1.2 (MAGVIT-v2 style, every convolution causal in time).

It works on the 4-channel latents of the 2D (image) VAE and only compresses TIME: by
`2 ** sum(temporal_downsample)` (4 for the released model), never space.

Layout (released sizes, facts §2.2), channels shown as `filters * multiplier`:

    encoder: conv_in 4->128 | level0 4xRes(128) | (no down) | level1 4xRes(256) | down t/2
             | level2 4xRes(256) | down t/2 | level3 4xRes(512) | 4xRes(512) | GN, SiLU, 1x1x1 -> 8
    quant_conv 8->8 -> DiagonalGaussian (4 channels of mean, 4 of log-variance)
    post_quant_conv 4->4
    decoder: conv1 4->512 | 4xRes(512) | level3 4xRes(512) | up t*2 | level2 4xRes(256) | up t*2
             | level1 4xRes(256) | (no up) | level0 4xRes(128) | GN, SiLU, conv_out 128->4

"Causal" refers to the convolutions: all time padding goes to the FRONT, so a conv output at
frame t only sees input frames <= t, and (with the front zero-padding of the clip to a multiple
of the time factor) latent k is computed from frames <= 4k+3 of the padded clip; a single image
gives 1 latent. The GroupNorms, however, pool statistics over ALL frames of the clip, so inside
one encoded clip early latents still depend on later frames (as in the reference). Strict
causality holds between the 17-frame chunks the pipeline encodes independently.

Module and attribute names follow the reference so that `state_dict()` keys match the released
checkpoint (e.g. `encoder.conv_in.conv.weight`, `decoder.conv_blocks.2.conv.bias`).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "CausalConv3d",
    "ResBlock",
    "Encoder",
    "Decoder",
    "DiagonalGaussianDistribution",
    "VAETemporal",
    "VAE_TEMPORAL_SD_CONFIG",
    "VAE_TEMPORAL_NARROW_CONFIG",
    "VAE_Temporal_SD",
]


def _triple(value: int | Sequence[int]) -> tuple[int, int, int]:
    if isinstance(value, int):
        return (value, value, value)
    value = tuple(value)
    if len(value) != 3:
        raise ValueError(f"expected an int or 3 ints, got {value!r}")
    return value  # type: ignore[return-value]


class CausalConv3d(nn.Module):
    """3D convolution that never looks at future frames.

    Time: `(k_t - 1) + (1 - stride_t)` zero frames are added in front of the clip and none at the
    end; with k_t=3 that is 2 frames for stride 1 (output length = input length) and 1 frame for
    stride 2 (output length = input length / 2 for even lengths). Space: symmetric `k // 2`
    zero padding ("same" size). The wrapped `nn.Conv3d` is stored as `.conv` (checkpoint keys).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int],
        stride: int = 1,
        bias: bool = True,
    ):
        super().__init__()
        k_t, k_h, k_w = _triple(kernel_size)
        if k_h % 2 == 0 or k_w % 2 == 0:
            raise ValueError(f"spatial kernel sizes must be odd, got {(k_h, k_w)}")
        self.time_pad = (k_t - 1) + (1 - stride)
        if self.time_pad < 0:
            raise ValueError(f"time stride {stride} larger than time kernel {k_t} is not supported")
        # F.pad order for a 5D tensor: (W_left, W_right, H_top, H_bottom, T_front, T_back).
        self.padding = (k_w // 2, k_w // 2, k_h // 2, k_h // 2, self.time_pad, 0)
        self.conv = nn.Conv3d(in_channels, out_channels, (k_t, k_h, k_w), stride=(stride, 1, 1), bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [B, C_in, T, H, W] -> padded [B, C_in, T + time_pad, H + 2*(k_h//2), W + 2*(k_w//2)]
        x = F.pad(x, self.padding)
        # -> [B, C_out, (T + time_pad - k_t) // stride + 1, H, W]
        return self.conv(x)


class ResBlock(nn.Module):
    """Pre-activation residual block: GN-SiLU-conv3 | GN-SiLU-conv3, plus a 1x1x1 shortcut
    (`conv3`) when the channel count changes. Convolutions have no bias."""

    def __init__(self, in_channels: int, out_channels: int, num_groups: int = 32):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.norm1 = nn.GroupNorm(num_groups, in_channels)
        self.conv1 = CausalConv3d(in_channels, out_channels, 3, bias=False)
        self.norm2 = nn.GroupNorm(num_groups, out_channels)
        self.conv2 = CausalConv3d(out_channels, out_channels, 3, bias=False)
        if in_channels != out_channels:
            self.conv3 = CausalConv3d(in_channels, out_channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [B, C_in, T, H, W] -> [B, C_out, T, H, W]
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        if self.in_channels != self.out_channels:
            x = self.conv3(x)
        return x + h


def _check_levels(channel_multipliers: Sequence[int], temporal_downsample: Sequence[bool]) -> None:
    if len(temporal_downsample) != len(channel_multipliers) - 1:
        raise ValueError(
            "temporal_downsample needs one entry per level transition: "
            f"{len(channel_multipliers) - 1} for channel_multipliers={tuple(channel_multipliers)}, "
            f"got {tuple(temporal_downsample)}"
        )


class Encoder(nn.Module):
    """[B, in_channels, T, H, W] (T a multiple of the time factor) -> [B, out_channels, T/factor, H, W]."""

    def __init__(
        self,
        in_channels: int = 4,
        out_channels: int = 8,
        filters: int = 128,
        num_res_blocks: int = 4,
        channel_multipliers: Sequence[int] = (1, 2, 2, 4),
        temporal_downsample: Sequence[bool] = (False, True, True),
        num_groups: int = 32,
    ):
        super().__init__()
        _check_levels(channel_multipliers, temporal_downsample)
        self.num_levels = len(channel_multipliers)
        self.conv_in = CausalConv3d(in_channels, filters, 3, bias=False)

        # One list of ResBlocks per level; between levels a stride-2 (time) causal conv, or an
        # Identity placeholder (keeps the reference's list indices, so keys are conv_blocks.1/.2).
        self.block_res_blocks = nn.ModuleList()
        self.conv_blocks = nn.ModuleList()
        channels = filters
        for level, mult in enumerate(channel_multipliers):
            level_channels = filters * mult
            blocks = nn.ModuleList()
            for _ in range(num_res_blocks):
                blocks.append(ResBlock(channels, level_channels, num_groups))
                channels = level_channels
            self.block_res_blocks.append(blocks)
            if level < self.num_levels - 1:
                if temporal_downsample[level]:
                    self.conv_blocks.append(CausalConv3d(channels, channels, 3, stride=2, bias=True))
                else:
                    self.conv_blocks.append(nn.Identity())

        self.res_blocks = nn.ModuleList(ResBlock(channels, channels, num_groups) for _ in range(num_res_blocks))
        self.norm1 = nn.GroupNorm(num_groups, channels)
        self.conv2 = CausalConv3d(channels, out_channels, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [B, 4, T, H, W] -> [B, filters, T, H, W]
        x = self.conv_in(x)
        for level, blocks in enumerate(self.block_res_blocks):
            for block in blocks:
                x = block(x)  # -> [B, filters*mult[level], T_level, H, W]
            if level < self.num_levels - 1:
                x = self.conv_blocks[level](x)  # time stride 2: T_level -> T_level / 2 (or Identity)
        for block in self.res_blocks:
            x = block(x)
        # -> [B, out_channels, T / factor, H, W]
        return self.conv2(F.silu(self.norm1(x)))


class Decoder(nn.Module):
    """[B, in_channels, T', H, W] -> [B, out_channels, T' * factor, H, W]."""

    def __init__(
        self,
        in_channels: int = 4,
        out_channels: int = 4,
        filters: int = 128,
        num_res_blocks: int = 4,
        channel_multipliers: Sequence[int] = (1, 2, 2, 4),
        temporal_downsample: Sequence[bool] = (False, True, True),
        num_groups: int = 32,
    ):
        super().__init__()
        _check_levels(channel_multipliers, temporal_downsample)
        self.num_levels = len(channel_multipliers)
        self.temporal_upsample = tuple(bool(t) for t in temporal_downsample)
        channels = filters * channel_multipliers[-1]
        self.conv1 = CausalConv3d(in_channels, channels, 3, bias=True)
        self.res_blocks = nn.ModuleList(ResBlock(channels, channels, num_groups) for _ in range(num_res_blocks))

        # Built from the deepest level down, but stored so that index = level (block_res_blocks)
        # and index = level - 1 (conv_blocks: the up-sampler that runs AFTER level `level`).
        level_blocks: list[nn.ModuleList] = []
        up_blocks: list[nn.Module] = []
        for level in reversed(range(self.num_levels)):
            level_channels = filters * channel_multipliers[level]
            blocks = nn.ModuleList()
            for _ in range(num_res_blocks):
                blocks.append(ResBlock(channels, level_channels, num_groups))
                channels = level_channels
            level_blocks.insert(0, blocks)
            if level > 0:
                if temporal_downsample[level - 1]:
                    # C -> 2C, then the extra C channels become a second frame (depth-to-time).
                    up_blocks.insert(0, CausalConv3d(channels, channels * 2, 3, bias=True))
                else:
                    up_blocks.insert(0, nn.Identity())
        self.block_res_blocks = nn.ModuleList(level_blocks)
        self.conv_blocks = nn.ModuleList(up_blocks)
        self.norm1 = nn.GroupNorm(num_groups, channels)
        self.conv_out = CausalConv3d(channels, out_channels, 3, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [B, latent_channels, T', H, W] -> [B, filters*mult[-1], T', H, W]
        x = self.conv1(x)
        for block in self.res_blocks:
            x = block(x)
        for level in reversed(range(self.num_levels)):
            for block in self.block_res_blocks[level]:
                x = block(x)  # -> [B, C, T_level, H, W], C = filters*mult[level]
            if level > 0 and self.temporal_upsample[level - 1]:
                x = self.conv_blocks[level - 1](x)  # -> [B, 2C, T_level, H, W]
                b, c2, t, h, w = x.shape
                # depth-to-time "B (C 2) T H W -> B C (T 2) H W": channel 2c+j goes to frame 2t+j.
                x = x.reshape(b, c2 // 2, 2, t, h, w)  # [B, C, 2, T, H, W]
                x = x.permute(0, 1, 3, 2, 4, 5)  # [B, C, T, 2, H, W]
                x = x.reshape(b, c2 // 2, t * 2, h, w)  # [B, C, 2T, H, W]
        # -> [B, out_channels, T' * factor, H, W]
        return self.conv_out(F.silu(self.norm1(x)))


class DiagonalGaussianDistribution:
    """Posterior N(mean, exp(logvar)) from `moments [B, 2C, ...]` (first C channels = mean).

    logvar is clamped to [-30, 20] as in the reference.
    """

    def __init__(self, moments: torch.Tensor, deterministic: bool = False):
        self.moments = moments
        self.mean, logvar = torch.chunk(moments, 2, dim=1)  # each [B, C, ...]
        self.logvar = torch.clamp(logvar, -30.0, 20.0)
        self.deterministic = deterministic
        if deterministic:
            self.std = torch.zeros_like(self.mean)
            self.var = torch.zeros_like(self.mean)
        else:
            self.std = torch.exp(0.5 * self.logvar)
            self.var = torch.exp(self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        # Noise is drawn on the CPU in float32 and then moved, like the reference (same seed ->
        # same sample on any device).
        noise = torch.randn(self.mean.shape, generator=generator, dtype=torch.float32)
        return self.mean + self.std * noise.to(device=self.mean.device, dtype=self.mean.dtype)

    def mode(self) -> torch.Tensor:
        return self.mean

    def kl(self) -> torch.Tensor:
        """KL(q || N(0, I)) summed over every non-batch dim -> [B]."""
        if self.deterministic:
            return torch.zeros(self.mean.shape[0], device=self.mean.device, dtype=self.mean.dtype)
        dims = list(range(1, self.mean.ndim))
        return 0.5 * torch.sum(self.mean.pow(2) + self.var - 1.0 - self.logvar, dim=dims)

    @classmethod
    def cat(cls, parts: Sequence["DiagonalGaussianDistribution"], dim: int = 2) -> "DiagonalGaussianDistribution":
        """Join posteriors of consecutive chunks along time (KL of the result = sum of the parts)."""
        if len(parts) == 1:
            return parts[0]
        out = cls.__new__(cls)
        out.moments = None
        out.deterministic = parts[0].deterministic
        for name in ("mean", "logvar", "std", "var"):
            setattr(out, name, torch.cat([getattr(p, name) for p in parts], dim=dim))
        return out


class VAETemporal(nn.Module):
    """The temporal VAE (reference class `VAE_Temporal`, factory `VAE_Temporal_SD`).

    Args (names as the reference config):
        in_out_channels: channels of the input/output video (the 2D VAE's latent channels, 4).
        latent_embed_dim: channels of the latent the decoder consumes (4). The encoder emits
            `2 * latent_embed_dim` (mean + logvar).
        embed_dim: channels after quant_conv / before post_quant_conv (4); the posterior has this many.
        filters, num_res_blocks, channel_multipliers, temporal_downsample, num_groups: see module doc.
            NB: the reference *class* defaults temporal_downsample to (True, True, False), but the
            released model (`VAE_Temporal_SD`) uses (False, True, True); we default to the latter.
        shortcut: ours, not the reference's: a parameter-free time-averaging path around the
            networks (`_shortcut_encode`); no weights, so state-dict keys and shapes are unchanged.
    """

    def __init__(
        self,
        in_out_channels: int = 4,
        latent_embed_dim: int = 4,
        embed_dim: int = 4,
        filters: int = 128,
        num_res_blocks: int = 4,
        channel_multipliers: Sequence[int] = (1, 2, 2, 4),
        temporal_downsample: Sequence[bool] = (False, True, True),
        num_groups: int = 32,
        shortcut: bool = False,
    ):
        super().__init__()
        self.config = dict(
            in_out_channels=in_out_channels,
            latent_embed_dim=latent_embed_dim,
            embed_dim=embed_dim,
            filters=filters,
            num_res_blocks=num_res_blocks,
            channel_multipliers=tuple(channel_multipliers),
            temporal_downsample=tuple(bool(t) for t in temporal_downsample),
            num_groups=num_groups,
        )
        if shortcut:  # only recorded when on: the released config stays the reference's
            self.config["shortcut"] = True
        self.shortcut = bool(shortcut)
        self.time_downsample_factor = 2 ** sum(bool(t) for t in temporal_downsample)
        self.out_channels = in_out_channels
        self.embed_dim = embed_dim
        level_args = dict(
            filters=filters,
            num_res_blocks=num_res_blocks,
            channel_multipliers=channel_multipliers,
            temporal_downsample=temporal_downsample,
            num_groups=num_groups,
        )
        self.encoder = Encoder(in_channels=in_out_channels, out_channels=2 * latent_embed_dim, **level_args)
        self.quant_conv = CausalConv3d(2 * latent_embed_dim, 2 * embed_dim, 1)
        self.post_quant_conv = CausalConv3d(embed_dim, latent_embed_dim, 1)
        self.decoder = Decoder(in_channels=latent_embed_dim, out_channels=in_out_channels, **level_args)
        if self.shortcut:
            if embed_dim != in_out_channels:
                raise ValueError(f"the temporal shortcut needs embed_dim == in_out_channels, got {embed_dim}, {in_out_channels}")
            # start as the shortcut alone: posterior mean = time averages (quant_conv zero, so logvar 0 as a
            # fresh reference model has on average), decoder output zero, x_rec = z repeated
            for conv in (self.quant_conv.conv, self.decoder.conv_out.conv):
                nn.init.zeros_(conv.weight)
                nn.init.zeros_(conv.bias)

    def time_padding(self, num_frames: int) -> int:
        """Zero frames put in FRONT of a clip of `num_frames` frames (to reach a multiple of the factor)."""
        f = self.time_downsample_factor
        return (f - num_frames % f) % f

    def get_latent_size(self, input_size: Sequence[int | None]) -> list[int | None]:
        """[T, H, W] -> [ceil(T / factor), H, W] (None passes through)."""
        t, h, w = input_size
        if t is not None:
            t = (t + self.time_padding(t)) // self.time_downsample_factor
        return [t, h, w]

    def encode(self, x: torch.Tensor) -> DiagonalGaussianDistribution:
        # x: [B, C, T, H, W] -> front zero pad -> [B, C, T + pad, H, W] with (T + pad) % factor == 0
        pad = self.time_padding(x.shape[2])
        x = F.pad(x, (0, 0, 0, 0, pad, 0))
        h = self.encoder(x)  # [B, 2*latent_embed_dim, (T + pad) / factor, H, W]
        moments = self.quant_conv(h).to(x.dtype)  # [B, 2*embed_dim, T', H, W]
        if self.shortcut:
            moments = self._shortcut_encode(x[:, :, pad:], pad, moments)
        return DiagonalGaussianDistribution(moments)

    # -- the parameter-free shortcut (narrow preset; off in the released model) ------------------
    # A residual path around the temporal VAE (time-to-channel averaging, as DC-AE's shortcuts do
    # for space): latent frame j's mean gets the average of the frames it covers, [4j-3, 4j] of the
    # clip (the padded front repeats frame 0), and the decoder adds each latent back to its 4 frames.
    # Both paths see the same frames, so causality is unchanged. Measured on 2D latents of the
    # synthetic world: without it the narrow temporal VAE learns only the mean (MSE 0.09 = the
    # latents' variance after 300 steps), with it 0.002 after 200 steps.
    def _shortcut_encode(self, x: torch.Tensor, pad: int, moments: torch.Tensor) -> torch.Tensor:
        # x [B, C, T, H, W] (unpadded) -> frame 0 repeated in front -> [B, C, T + pad, H, W]
        if pad:
            x = torch.cat([x[:, :, :1].expand(-1, -1, pad, -1, -1), x], dim=2)
        b, c, t, h, w = x.shape
        f = self.time_downsample_factor
        means = x.reshape(b, c, t // f, f, h, w).mean(dim=3)  # [B, C, T', H, W]
        return torch.cat([moments[:, :c] + means.to(moments.dtype), moments[:, c:]], dim=1)

    def decode(self, z: torch.Tensor, num_frames: int) -> torch.Tensor:
        # z: [B, embed_dim, T', H, W] -> [B, C, T' * factor, H, W] -> drop the front pad -> [B, C, num_frames, H, W]
        pad = self.time_padding(num_frames)
        if z.shape[2] * self.time_downsample_factor - pad != num_frames:
            raise ValueError(
                f"{z.shape[2]} latent frames cannot decode to {num_frames} frames "
                f"(time factor {self.time_downsample_factor})"
            )
        x = self.decoder(self.post_quant_conv(z))
        if self.shortcut:
            x = x + z.repeat_interleave(self.time_downsample_factor, dim=2).to(x.dtype)  # [B, C, T' * factor, H, W]
        return x[:, :, pad:]

    def forward(
        self, x: torch.Tensor, sample_posterior: bool = True, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, DiagonalGaussianDistribution, torch.Tensor]:
        """Returns (reconstruction [B, C, T, H, W], posterior, z [B, embed_dim, T', H, W])."""
        posterior = self.encode(x)
        z = posterior.sample(generator) if sample_posterior else posterior.mode()
        return self.decode(z, num_frames=x.shape[2]), posterior, z


# Released configuration ("VAE_Temporal_SD", 309.69 M parameters).
VAE_TEMPORAL_SD_CONFIG = dict(
    in_out_channels=4,
    latent_embed_dim=4,
    embed_dim=4,
    filters=128,
    num_res_blocks=4,
    channel_multipliers=(1, 2, 2, 4),
    temporal_downsample=(False, True, True),
    num_groups=32,
)

# Narrow CPU configuration: same level structure and time factor 4, far fewer channels/blocks.
VAE_TEMPORAL_NARROW_CONFIG = dict(
    in_out_channels=4,
    latent_embed_dim=4,
    embed_dim=4,
    filters=32,
    num_res_blocks=1,
    channel_multipliers=(1, 2, 2, 4),
    temporal_downsample=(False, True, True),
    num_groups=8,
    shortcut=True,  # parameter-free time-averaging shortcut (see VAETemporal._shortcut_encode)
)


def VAE_Temporal_SD(**overrides) -> VAETemporal:
    """Released temporal VAE (random init; load weights with `opensora_lib.models.vae.load_vae_weights`)."""
    return VAETemporal(**{**VAE_TEMPORAL_SD_CONFIG, **overrides})
