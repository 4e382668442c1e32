"""STDiT3: the Spatial-Temporal Diffusion Transformer of Open-Sora 1.2.

Read this file top to bottom: small building blocks first, then one transformer block, then the
model, then the factories and the checkpoint tools.

The architecture follows the released STDiT3-XL/2 (Open-Sora v1.2.0) operation for operation, so
that a released checkpoint loads with `load_stdit3_checkpoint` and gives the same numbers:

    latent x [B, 4, T, H, W]
      -> patch embedding (Conv3d, kernel = stride = (1, 2, 2))           [B, T, S, C], S = H/2 * W/2
      -> + 2-D sin-cos position embedding (same for every frame)
      -> 28 x (spatial block over the S tokens of each frame,
               temporal block over the T tokens of each position, with RoPE)
      -> final layer (adaLN from the raw timestep embedding) -> unpatchify  [B, 8, T, H, W]

Conditioning: the timestep (+ fps) embedding drives an adaLN-single modulation shared by every
block (`t_block`), each block adding its own learned `scale_shift_table`; the caption enters only
through cross-attention (no norm, no gate), where every sample sees only its own valid tokens.

Differences from the reference code are in how things are computed, never in what is computed:
padding text tokens are excluded with a per-sample boolean attention mask instead of packing all
captions into one sequence; the per-frame timestep selection (`x_mask`) selects the modulation
vectors per frame instead of computing every modulated tensor twice. Both give the same numbers.

Sequence parallelism (`set_sequence_parallel(group)`, Open-Sora's Ulysses scheme, see
`opensora_lib.parallel.sequence_parallel`): the S spatial tokens are split over the ranks after the
position embedding, spatial attention and cross-attention exchange heads for tokens with two
all-to-alls, and the narrow final-layer output is gathered before unpatchify. Without a group every
line of the single-process computation is unchanged.
"""

from __future__ import annotations

import functools
import math
import os
from pathlib import Path
from typing import Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from ..parallel.sequence_parallel import (
    SPContext,
    broadcast_from_group_rank0,
    get_sequence_parallel_group,
    group_size,
)

IMG_FPS = 120  # fps value given to single images (Open-Sora's IMG_FPS)
VAE_SPATIAL_FACTOR = 8  # pixels per latent along H and W (used only when height/width are not given)


# ==================================================================================================
# Small building blocks
# ==================================================================================================


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN modulation `x * (1 + scale) + shift` (shift/scale broadcast over tokens)."""
    return x * (1 + scale) + shift


def timestep_sinusoid(t: torch.Tensor, dim: int = 256, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of scalars t [B] -> [B, dim], laid out as [cos(t f_k), sin(t f_k)].

    f_k = max_period^(-k / (dim/2)), k = 0..dim/2-1. t is used as given (0..1000 for timesteps,
    the raw value for fps): no division by the number of timesteps. Computed in float32.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None].float() * freqs[None]  # [B, half]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # [B, 2*half]
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


def _sincos(p: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """[N] positions -> [N, 2*len(inv_freq)] laid out as [sin(p f), cos(p f)]."""
    angles = p[:, None] * inv_freq[None]  # [N, F]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)


@functools.lru_cache(maxsize=256)
def sincos_2d_pos_embed(
    h: int, w: int, dim: int, scale: float, base_size: int, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """2-D sin-cos position embedding of an h x w token grid -> [h*w, dim] (tokens row-major).

    A row index r maps to the coordinate `r / scale * base_size / h`, a column index c to
    `c / scale * base_size / w`; `scale` is the pixel resolution relative to the model's reference
    side (`input_sq_size`) and `base_size = round(sqrt(h*w))`, so the coordinates span roughly the
    same range at every resolution and aspect ratio.

    Channel layout (as the released weights expect): the first dim/2 channels encode the COLUMN
    coordinate, the last dim/2 the ROW coordinate; each half is [sin(p f_k), cos(p f_k)] with
    f_k = 10000^(-2k / (dim/2)). (The reference names the halves the other way round because its
    meshgrid arguments are swapped; the numbers are what matter.)
    Cached: the returned tensor is shared, never modify it in place.
    """
    assert dim % 4 == 0, "hidden size must be divisible by 4 for the 2-D sin-cos embedding"
    half = dim // 2
    inv_freq = 1.0 / (10000 ** (torch.arange(0, half, 2, device=device).float() / half))  # [dim/4]
    rows = torch.arange(h, device=device) / scale * (base_size / h)  # [h]
    cols = torch.arange(w, device=device) / scale * (base_size / w)  # [w]
    col_of_token = cols.repeat(h)  # [h*w], column index varies fastest
    row_of_token = rows.repeat_interleave(w)  # [h*w]
    emb = torch.cat([_sincos(col_of_token, inv_freq), _sincos(row_of_token, inv_freq)], dim=-1)  # [h*w, dim]
    return emb.to(dtype)


class RMSNorm(nn.Module):
    """RMS normalisation over the last dim with a learned gain, computed in float32 (LlamaRMSNorm)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        in_dtype = x.dtype
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(in_dtype)


class RotaryEmbedding(nn.Module):
    """Rotary position embedding on interleaved channel pairs (rotary-embedding-torch 0.5.3 style).

    `freqs [dim/2]` = theta^(-2k/dim) is kept as a non-trainable Parameter because the released
    state dict has it (`rope.freqs`). Channel pair (2k, 2k+1) of a head is rotated by the angle
    `position * freqs[k]`; every channel of the head is rotated.
    """

    def __init__(self, dim: int, theta: float = 10000.0):
        super().__init__()
        freqs = 1.0 / (theta ** (torch.arange(0, dim, 2)[: dim // 2].float() / dim))  # [dim/2]
        self.freqs = nn.Parameter(freqs, requires_grad=False)

    def cos_sin(self, n: int, dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin of the rotation angles of positions 0..n-1 -> two [n, dim] tensors.

        Positions follow `dtype` (the query dtype, as in the reference) and are then cast to the
        dtype of `freqs`.
        """
        pos = torch.arange(n, device=self.freqs.device, dtype=dtype or self.freqs.dtype)
        angles = pos.to(self.freqs.dtype)[:, None] * self.freqs[None]  # [n, dim/2]
        angles = angles.repeat_interleave(2, dim=-1)  # [n, dim]: (a0, a0, a1, a1, ...)
        return angles.cos(), angles.sin()


def rotate_pairs(x: torch.Tensor) -> torch.Tensor:
    """(x0, x1, x2, x3, ...) -> (-x1, x0, -x3, x2, ...) on the last dim."""
    pairs = x.unflatten(-1, (-1, 2))  # [..., dim/2, 2]
    x_even, x_odd = pairs.unbind(-1)
    return torch.stack((-x_odd, x_even), dim=-1).flatten(-2)  # [..., dim]


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x [..., L, dim] by position: cos/sin are [L, dim]."""
    return x * cos + rotate_pairs(x) * sin


class Mlp(nn.Module):
    """Linear -> GELU (tanh approximation) -> Linear."""

    def __init__(self, in_features: int, hidden_features: int, out_features: int | None = None):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden_features, out_features or in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class DropPath(nn.Module):
    """Stochastic depth: in training, zero a residual branch for a whole sample with prob p."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        return x * x.new_empty(shape).bernoulli_(keep) / keep


class PatchEmbed3D(nn.Module):
    """Video latent -> patch tokens with one Conv3d (kernel = stride = patch size).

    The latent is zero-padded at the END of W, H and T when not divisible by the patch size.
    """

    def __init__(self, patch_size: tuple[int, int, int], in_chans: int, embed_dim: int):
        super().__init__()
        self.patch_size = tuple(patch_size)
        self.proj = nn.Conv3d(in_chans, embed_dim, kernel_size=self.patch_size, stride=self.patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [B, C_in, T, H, W]
        pt, ph, pw = self.patch_size
        _, _, T, H, W = x.shape
        x = F.pad(x, (0, (-W) % pw, 0, (-H) % ph, 0, (-T) % pt))  # pad W, H, T at the end
        x = self.proj(x)  # [B, C, T', H', W']
        return x.flatten(3).permute(0, 2, 3, 1)  # [B, T', S, C] with S = H'*W' row-major


class TimestepEmbedder(nn.Module):
    """Scalar -> 256-d sinusoid ([cos, sin]) -> Linear -> SiLU -> Linear (for timesteps and fps)."""

    def __init__(self, hidden_size: int, frequency_embedding_size: int = 256):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(frequency_embedding_size, hidden_size),
            nn.SiLU(),
            nn.Linear(hidden_size, hidden_size),
        )
        self.frequency_embedding_size = frequency_embedding_size

    def forward(self, t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        # t: [B] -> [B, C]
        return self.mlp(timestep_sinusoid(t, self.frequency_embedding_size).to(dtype))


class CaptionEmbedder(nn.Module):
    """Caption projection (Mlp in -> C -> C) with caption dropout for classifier-free guidance.

    `y_embedding` [model_max_length, caption_channels] is the learned-free "null caption" (a fixed
    random table saved in checkpoints). A dropped sample's caption is replaced by its first L rows;
    the token mask is left unchanged (the reference does the same: the null caption keeps the
    original prompt's token count).
    """

    def __init__(self, in_channels: int, hidden_size: int, uncond_prob: float, token_num: int):
        super().__init__()
        self.y_proj = Mlp(in_channels, hidden_size, hidden_size)
        self.register_buffer("y_embedding", torch.randn(token_num, in_channels) / in_channels**0.5)
        self.uncond_prob = uncond_prob

    def forward(
        self, caption: torch.Tensor, train: bool, force_drop_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        # caption: [B, 1, L, C_in] -> [B, 1, L, C]
        B, _, L, _ = caption.shape
        if (train and self.uncond_prob > 0) or force_drop_ids is not None:
            if force_drop_ids is None:
                drop = torch.rand(B, device=caption.device) < self.uncond_prob  # [B]
            else:
                drop = force_drop_ids.to(caption.device) == 1  # [B]
            null = self.y_embedding[:L].to(caption.dtype)  # [L, C_in]
            caption = torch.where(drop[:, None, None, None], null, caption)
        return self.y_proj(caption)


class Attention(nn.Module):
    """Multi-head self-attention with optional QK RMS-norm and RoPE (RoPE applied after the norm)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, qk_norm: bool = False):
        super().__init__()
        assert dim % num_heads == 0, "dim must be divisible by num_heads"
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.q_norm = RMSNorm(self.head_dim) if qk_norm else nn.Identity()
        self.k_norm = RMSNorm(self.head_dim) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim)

    def forward(
        self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None, sp: SPContext | None = None
    ) -> torch.Tensor:
        # x: [N, L, C] (N independent sequences of length L)
        if sp is not None:
            return self._forward_sp(x, sp)
        N, L, C = x.shape
        qkv = self.qkv(x).view(N, L, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # [3, N, h, L, d]
        q, k, v = qkv.unbind(0)  # each [N, h, L, d]
        q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        q, k = q.to(v.dtype), k.to(v.dtype)
        x = F.scaled_dot_product_attention(q, k, v)  # [N, h, L, d], scale d^-0.5
        x = x.transpose(1, 2).reshape(N, L, C)  # [N, L, C]
        return self.proj(x)

    def _forward_sp(self, x: torch.Tensor, sp: SPContext) -> torch.Tensor:
        """Sequence-parallel spatial attention: x [N, S_local, C] holds this rank's tokens of N frames.

        One all-to-all turns q, k, v of all heads for my tokens into my heads for all tokens, the
        attention runs per head over the whole frame (padded tokens masked out as keys), a second
        all-to-all brings the heads back to the tokens' owners.
        """
        N, L, C = x.shape
        qkv = self.qkv(x).view(N, L, 3, self.num_heads, self.head_dim)  # [N, S_local, 3, h, d]
        qkv = sp.seq_to_heads(qkv, seq_dim=1, head_dim=3)  # [N, S_pad, 3, h_r, d]
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [N, h_r, S_pad, d]
        q, k = self.q_norm(q), self.k_norm(k)
        q, k = q.to(v.dtype), k.to(v.dtype)
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=sp.key_mask)  # [N, h_r, S_pad, d]
        x = sp.heads_to_seq(x.transpose(1, 2), seq_dim=1, head_dim=2)  # [N, S_local, h, d]
        return self.proj(x.reshape(N, L, C))


class MultiHeadCrossAttention(nn.Module):
    """Image tokens attend to caption tokens; each sample only to its own valid (mask=True) tokens."""

    def __init__(self, d_model: int, num_heads: int):
        super().__init__()
        assert d_model % num_heads == 0, "d_model must be divisible by num_heads"
        self.num_heads = num_heads
        self.head_dim = d_model // num_heads
        self.q_linear = nn.Linear(d_model, d_model)
        self.kv_linear = nn.Linear(d_model, d_model * 2)
        self.proj = nn.Linear(d_model, d_model)

    def forward(
        self, x: torch.Tensor, cond: torch.Tensor, cond_mask: torch.Tensor | None, sp: SPContext | None = None
    ) -> torch.Tensor:
        # x: [B, N, C] image tokens; cond: [B, L, C] caption tokens; cond_mask: [B, L] bool or None (all valid)
        if sp is not None:
            return self._forward_sp(x, cond, cond_mask, sp)
        B, N, C = x.shape
        L = cond.shape[1]
        q = self.q_linear(x).view(B, N, self.num_heads, self.head_dim).transpose(1, 2)  # [B, h, N, d]
        kv = self.kv_linear(cond).view(B, L, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # [2, B, h, L, d]
        k, v = kv.unbind(0)  # each [B, h, L, d]
        attn_mask = None if cond_mask is None else cond_mask[:, None, None, :]  # [B, 1, 1, L]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)  # [B, h, N, d]
        if cond_mask is not None:
            # a sample without any valid token attends to nothing: its output is 0 (not NaN)
            out = out.masked_fill(~cond_mask.any(dim=1)[:, None, None, None], 0.0)
        out = out.transpose(1, 2).reshape(B, N, C)  # [B, N, C]
        return self.proj(out)

    def _forward_sp(
        self, x: torch.Tensor, cond: torch.Tensor, cond_mask: torch.Tensor | None, sp: SPContext
    ) -> torch.Tensor:
        """Sequence-parallel cross-attention (Open-Sora's layout): x [B, T*S_local, C] holds this
        rank's tokens of T frames; q goes through the all-to-all, k/v of the full caption are computed
        on every rank and cut to this rank's heads. Each sample keeps its own batch row (the v1.2.0
        reference viewed q as batch 1 here, mixing samples when B > 1)."""
        B, N, C = x.shape
        T, L = N // sp.local_tokens, cond.shape[1]
        q = self.q_linear(x).view(B, T, sp.local_tokens, self.num_heads, self.head_dim)  # [B, T, S_local, h, d]
        q = sp.seq_to_heads(q, seq_dim=2, head_dim=3)  # [B, T, S_pad, h_r, d]
        h_r = q.shape[3]
        q = q.reshape(B, T * sp.padded_tokens, h_r, self.head_dim).transpose(1, 2)  # [B, h_r, T*S_pad, d]
        kv = self.kv_linear(cond).view(B, L, 2, self.num_heads, self.head_dim)[:, :, :, sp.head_slice]
        k, v = kv.permute(2, 0, 3, 1, 4).unbind(0)  # each [B, h_r, L, d]
        attn_mask = None if cond_mask is None else cond_mask[:, None, None, :]  # [B, 1, 1, L]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)  # [B, h_r, T*S_pad, d]
        if cond_mask is not None:
            out = out.masked_fill(~cond_mask.any(dim=1)[:, None, None, None], 0.0)
        out = out.transpose(1, 2).reshape(B, T, sp.padded_tokens, h_r, self.head_dim)  # [B, T, S_pad, h_r, d]
        out = sp.heads_to_seq(out, seq_dim=2, head_dim=3)  # [B, T, S_local, h, d]
        return self.proj(out.reshape(B, N, C))


# ==================================================================================================
# Transformer block and final layer
# ==================================================================================================


def per_frame(mod: torch.Tensor, mod0: torch.Tensor | None, x_mask: torch.Tensor | None) -> torch.Tensor:
    """Pick modulation vectors per frame: [B, K, C] -> [B, T or 1, K, C].

    Without x_mask every frame uses `mod` (the timestep t). With x_mask [B, T], frames where it is
    True (being generated) use `mod`, the others (clean conditioning frames) `mod0` (timestep 0).
    """
    if x_mask is None:
        return mod[:, None]  # [B, 1, K, C]
    return torch.where(x_mask[:, :, None, None], mod[:, None], mod0[:, None])  # [B, T, K, C]


class STDiT3Block(nn.Module):
    """One spatial (attention within a frame) or temporal (attention across frames) block.

    x = x + gate_msa * SelfAttn(modulate(LN(x), shift_msa, scale_msa))
    x = x + CrossAttn(x, caption)                 # no norm, no modulation, no gate
    x = x + gate_mlp * MLP(modulate(LN(x), shift_mlp, scale_mlp))
    """

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        drop_path: float = 0.0,
        qk_norm: bool = False,
        temporal: bool = False,
    ):
        super().__init__()
        self.temporal = temporal
        self.norm1 = nn.LayerNorm(hidden_size, eps=1e-6, elementwise_affine=False)
        self.attn = Attention(hidden_size, num_heads, qkv_bias=True, qk_norm=qk_norm)
        self.cross_attn = MultiHeadCrossAttention(hidden_size, num_heads)
        self.norm2 = nn.LayerNorm(hidden_size, eps=1e-6, elementwise_affine=False)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio))
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.scale_shift_table = nn.Parameter(torch.randn(6, hidden_size) / hidden_size**0.5)

    def forward(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        y_mask: torch.Tensor | None,
        t_mlp: torch.Tensor,
        t0_mlp: torch.Tensor | None = None,
        x_mask: torch.Tensor | None = None,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        sp: SPContext | None = None,
    ) -> torch.Tensor:
        # x: [B, T, S, C]; y: [B, L, C]; t_mlp, t0_mlp: [B, 6C]; x_mask: [B, T] bool
        # sp: sequence parallelism (S is then this rank's S_local); only spatial blocks communicate
        B, T, S, C = x.shape
        mod = self.scale_shift_table[None] + t_mlp.view(B, 6, C)  # [B, 6, C]
        mod0 = None if x_mask is None else self.scale_shift_table[None] + t0_mlp.view(B, 6, C)
        mod = per_frame(mod, mod0, x_mask)  # [B, T or 1, 6, C]
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mod.unsqueeze(3).unbind(2)  # [B, T|1, 1, C]

        # self-attention
        h = modulate(self.norm1(x), shift_msa, scale_msa)  # [B, T, S, C]
        if self.temporal:
            h = h.transpose(1, 2).reshape(B * S, T, C)  # [(B S), T, C]
            h = self.attn(h, rope)
            h = h.view(B, S, T, C).transpose(1, 2)  # [B, T, S, C]
        else:
            h = self.attn(h.reshape(B * T, S, C), sp=sp)  # [(B T), S, C]
            h = h.view(B, T, S, C)  # [B, T, S, C]
        x = x + self.drop_path(gate_msa * h)

        # cross-attention to the caption
        sp_cross = sp if (sp is not None and not self.temporal and sp.cross_attn_all_to_all) else None
        x = x + self.cross_attn(x.reshape(B, T * S, C), y, y_mask, sp=sp_cross).view(B, T, S, C)  # [B, T, S, C]

        # MLP
        h = modulate(self.norm2(x), shift_mlp, scale_mlp)  # [B, T, S, C]
        x = x + self.drop_path(gate_mlp * self.mlp(h))
        return x


class T2IFinalLayer(nn.Module):
    """LayerNorm -> modulation by the raw t embedding (no SiLU, no t_block) -> Linear to patch pixels.

    Reference quirk (kept by default, `legacy_x_mask=True`): for frames where x_mask is False the
    reference normalises and modulates the tokens AFTER they were already modulated with t (it
    reuses the variable), i.e. modulate(LN(modulate(LN(x), t)), t0). Only the outputs of those clean
    conditioning frames change, and neither the loss nor the sampler uses them; `legacy_x_mask=False`
    gives the plain modulate(LN(x), t0).
    """

    def __init__(self, hidden_size: int, num_patch: int, out_channels: int, legacy_x_mask: bool = True):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, eps=1e-6, elementwise_affine=False)
        self.linear = nn.Linear(hidden_size, num_patch * out_channels)
        self.scale_shift_table = nn.Parameter(torch.randn(2, hidden_size) / hidden_size**0.5)
        self.legacy_x_mask = legacy_x_mask

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, x_mask: torch.Tensor | None = None, t0: torch.Tensor | None = None
    ) -> torch.Tensor:
        # x: [B, T, S, C]; t, t0: [B, C]
        mod = self.scale_shift_table[None] + t[:, None]  # [B, 2, C]
        mod0 = None if x_mask is None else self.scale_shift_table[None] + t0[:, None]
        if x_mask is not None and self.legacy_x_mask:
            shift, scale = mod[:, None].unsqueeze(3).unbind(2)  # [B, 1, 1, C]
            shift0, scale0 = mod0[:, None].unsqueeze(3).unbind(2)  # [B, 1, 1, C]
            h = modulate(self.norm_final(x), shift, scale)  # [B, T, S, C]
            h0 = modulate(self.norm_final(h), shift0, scale0)  # [B, T, S, C] (re-normalised, see above)
            x = torch.where(x_mask[:, :, None, None], h, h0)  # [B, T, S, C]
        else:
            shift, scale = per_frame(mod, mod0, x_mask).unsqueeze(3).unbind(2)  # [B, T|1, 1, C]
            x = modulate(self.norm_final(x), shift, scale)  # [B, T, S, C]
        return self.linear(x)  # [B, T, S, num_patch * C_out]


# ==================================================================================================
# The model
# ==================================================================================================

_REGISTERED = "registered"  # use the group registered with opensora_lib.parallel.set_sequence_parallel_group


class _SPSetting:
    """Holds a model's sequence-parallel process group (None, a group, or `_REGISTERED`).

    Process groups cannot be copied or pickled: a deep copy (an EMA model) shares the setting, a
    pickled model forgets it.
    """

    def __init__(self, group=None, cross_attn_all_to_all: bool = True):
        self.group = group
        self.cross_attn_all_to_all = cross_attn_all_to_all

    def resolve(self):
        return get_sequence_parallel_group() if isinstance(self.group, str) else self.group

    def __deepcopy__(self, memo):
        return self

    def __reduce__(self):
        kept = self.group if isinstance(self.group, str) else None
        return (_SPSetting, (kept, self.cross_attn_all_to_all))


class STDiT3(nn.Module):
    """Open-Sora 1.2 video diffusion transformer.

    Keyword names follow the reference config (`STDiT3Config`). Extra switches of ours:
      enable_temporal: build the temporal blocks (and RoPE); False gives a spatial-only image model
                       (PixArt-style base; stage 7 of the adaptation adds the temporal blocks).
      enable_fps:      build the fps embedder; False for models without fps conditioning.
      grad_checkpoint: recompute each block in the backward pass (saves memory in training).
      pos_emb_from_first_sample: reproduce the reference's use of sample 0's height/width for every
                       sample's position-embedding scale. Off by default: each sample uses its own
                       size. Training and inference batches hold one size, so both give the same
                       numbers for the released weights.
      legacy_final_x_mask: reproduce the reference's final-layer treatment of x_mask=False frames
                       (see T2IFinalLayer; changes only outputs that nothing reads). On by default.
      enable_sequence_parallelism: split the spatial tokens over the group registered with
                       `opensora_lib.parallel.set_sequence_parallel_group` (or call
                       `set_sequence_parallel(group)`); a runtime setting, not part of `config`.
    `enable_flash_attn` / `enable_layernorm_kernel` are accepted for config compatibility and change
    nothing (attention always goes through `scaled_dot_product_attention`).
    """

    def __init__(
        self,
        depth: int,
        hidden_size: int,
        num_heads: int,
        patch_size: tuple[int, int, int] = (1, 2, 2),
        in_channels: int = 4,
        caption_channels: int = 4096,
        model_max_length: int = 300,
        mlp_ratio: float = 4.0,
        class_dropout_prob: float = 0.1,
        pred_sigma: bool = True,
        drop_path: float = 0.0,
        qk_norm: bool = False,
        input_sq_size: int = 512,
        enable_temporal: bool = True,
        enable_fps: bool = True,
        grad_checkpoint: bool = False,
        freeze_y_embedder: bool = False,
        only_train_temporal: bool = False,
        pos_emb_from_first_sample: bool = False,
        legacy_final_x_mask: bool = True,
        enable_flash_attn: bool = False,
        enable_layernorm_kernel: bool = False,
        enable_sequence_parallelism: bool = False,
        skip_y_embedder: bool = False,
        input_size=None,
    ):
        super().__init__()
        if skip_y_embedder:
            raise NotImplementedError("skip_y_embedder (pre-extracted caption features) is not supported")
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size {hidden_size} is not divisible by num_heads {num_heads}")
        self.config = dict(
            depth=depth,
            hidden_size=hidden_size,
            num_heads=num_heads,
            patch_size=tuple(patch_size),
            in_channels=in_channels,
            caption_channels=caption_channels,
            model_max_length=model_max_length,
            mlp_ratio=mlp_ratio,
            class_dropout_prob=class_dropout_prob,
            pred_sigma=pred_sigma,
            drop_path=drop_path,
            qk_norm=qk_norm,
            input_sq_size=input_sq_size,
            enable_temporal=enable_temporal,
            enable_fps=enable_fps,
            grad_checkpoint=grad_checkpoint,
            freeze_y_embedder=freeze_y_embedder,
            only_train_temporal=only_train_temporal,
            pos_emb_from_first_sample=pos_emb_from_first_sample,
            legacy_final_x_mask=legacy_final_x_mask,
        )
        self.depth = depth
        self.hidden_size = hidden_size
        self.num_heads = num_heads
        self.patch_size = tuple(patch_size)
        self.in_channels = in_channels
        self.out_channels = in_channels * 2 if pred_sigma else in_channels
        self.pred_sigma = pred_sigma
        self.input_sq_size = input_sq_size
        self.grad_checkpoint = grad_checkpoint
        self.pos_emb_from_first_sample = pos_emb_from_first_sample
        self._sp = _SPSetting(_REGISTERED if enable_sequence_parallelism else None)

        # Construction order = the reference's, so the state dict lists keys in the same order.
        self.rope = RotaryEmbedding(hidden_size // num_heads) if enable_temporal else None
        self.x_embedder = PatchEmbed3D(self.patch_size, in_channels, hidden_size)
        self.t_embedder = TimestepEmbedder(hidden_size)
        self.fps_embedder = TimestepEmbedder(hidden_size) if enable_fps else None
        self.t_block = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size))
        self.y_embedder = CaptionEmbedder(caption_channels, hidden_size, class_dropout_prob, model_max_length)

        drop_rates = [r.item() for r in torch.linspace(0, drop_path, depth, device="cpu")]
        self.spatial_blocks = nn.ModuleList(
            [STDiT3Block(hidden_size, num_heads, mlp_ratio, drop_rates[i], qk_norm) for i in range(depth)]
        )
        self.temporal_blocks = (
            nn.ModuleList(
                [
                    STDiT3Block(hidden_size, num_heads, mlp_ratio, drop_rates[i], qk_norm, temporal=True)
                    for i in range(depth)
                ]
            )
            if enable_temporal
            else None
        )
        self.final_layer = T2IFinalLayer(
            hidden_size, math.prod(self.patch_size), self.out_channels, legacy_x_mask=legacy_final_x_mask
        )

        self.initialize_weights()
        if only_train_temporal:
            self.requires_grad_(False)
            if self.temporal_blocks is not None:
                self.temporal_blocks.requires_grad_(True)
        if freeze_y_embedder:
            self.y_embedder.requires_grad_(False)
        if self.rope is not None:
            self.rope.freqs.requires_grad_(False)

    def initialize_weights(self) -> None:
        """xavier-uniform Linear weights with zero biases; fps embedder N(0, 0.02) in, zero out;
        temporal blocks' attention/cross-attention/MLP output weights zero (blocks start as identity).
        The patch Conv3d keeps PyTorch's default init; the final layer is not zeroed."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        if self.fps_embedder is not None:
            nn.init.normal_(self.fps_embedder.mlp[0].weight, std=0.02)
            nn.init.zeros_(self.fps_embedder.mlp[0].bias)
            nn.init.zeros_(self.fps_embedder.mlp[2].weight)
            nn.init.zeros_(self.fps_embedder.mlp[2].bias)
        for block in self.temporal_blocks or []:
            nn.init.zeros_(block.attn.proj.weight)
            nn.init.zeros_(block.cross_attn.proj.weight)
            nn.init.zeros_(block.mlp.fc2.weight)

    # ---------------------------------------------------------------------------------------------

    def set_sequence_parallel(self, group, cross_attn_all_to_all: bool = True) -> "STDiT3":
        """Split the spatial tokens over `group` in every forward (None: single process again).

        Every rank of the group must call the model with the same inputs; the output (the full
        [B, C_out, T, H, W]) is then the same on every rank. In training, average the parameter
        gradients over the group (DDP over the world does) to get the single-process gradients.
        `cross_attn_all_to_all=False` runs the spatial cross-attention on the local tokens without
        communication (exact too: cross-attention treats every token on its own).
        """
        self._sp = _SPSetting(group, cross_attn_all_to_all)
        return self

    @property
    def sequence_parallel_group(self):
        """The SP group used by forward, or None (single process / group of one)."""
        group = self._sp.resolve()
        return group if group_size(group) > 1 else None

    def get_dynamic_size(self, x: torch.Tensor) -> tuple[int, int, int]:
        """Token grid (T', H', W') of a latent [B, C, T, H, W] (sizes rounded up to the patch)."""
        _, _, T, H, W = x.shape
        pt, ph, pw = self.patch_size
        return -(-T // pt), -(-H // ph), -(-W // pw)

    def null_caption(self, n: int, length: int | None = None) -> torch.Tensor:
        """The null (unconditional) caption for CFG: [n, 1, L, caption_channels]."""
        table = self.y_embedder.y_embedding
        length = table.shape[0] if length is None else length
        return table[None, None, :length].expand(n, 1, length, table.shape[1])

    def position_embedding(
        self, x: torch.Tensor, H: int, W: int, height: torch.Tensor | None, width: torch.Tensor | None
    ) -> torch.Tensor:
        """Spatial position embedding of the H x W token grid of latent x [B, C, T, Hx, Wx] -> [B or 1, 1, S, C]."""
        B = x.shape[0]
        base_size = round((H * W) ** 0.5)
        if height is None or width is None:  # assume the usual 8x VAE
            height = torch.full((B,), x.shape[3] * VAE_SPATIAL_FACTOR, dtype=torch.float32)
            width = torch.full((B,), x.shape[4] * VAE_SPATIAL_FACTOR, dtype=torch.float32)
        sizes = [(height[0].item(), width[0].item())]  # reference: sample 0 for everyone
        if not self.pos_emb_from_first_sample:
            sizes = [(h.item(), w.item()) for h, w in zip(height.reshape(-1), width.reshape(-1))]
            if len(sizes) != B:
                sizes = sizes * (B // len(sizes))  # [B/k] kwargs for a CFG-doubled batch
        scales = [(h * w) ** 0.5 / self.input_sq_size for h, w in sizes]
        embs = {s: sincos_2d_pos_embed(H, W, self.hidden_size, s, base_size, x.device, x.dtype) for s in scales}
        if len(embs) == 1:
            return embs[scales[0]][None, None]  # [1, 1, S, C]
        return torch.stack([embs[s] for s in scales])[:, None]  # [B, 1, S, C]

    def encode_text(
        self, y: torch.Tensor, mask: torch.Tensor | None, force_drop_ids: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Caption states [B, 1, L, C_cap] + token mask [B', L] -> ([B, L', C], bool mask [B, L'] or None).

        Columns after the last valid token of the whole batch are cut off (they would be masked
        anyway); the mask is None when every remaining token is valid.
        """
        B = y.shape[0]
        y = self.y_embedder(y, self.training, force_drop_ids).squeeze(1)  # [B, L, C]
        if mask is None:
            return y, None
        mask = mask.reshape(mask.shape[0], -1) != 0  # [B', L]
        if mask.shape[0] != B:  # e.g. one mask for the [cond, uncond] halves of a CFG batch
            mask = mask.repeat(B // mask.shape[0], 1)  # [B, L]
        valid_cols = mask.any(dim=0).nonzero()
        length = int(valid_cols.max().item()) + 1 if len(valid_cols) else 1
        y, mask = y[:, :length], mask[:, :length]  # [B, L', C], [B, L']
        return y, (None if bool(mask.all()) else mask)

    def forward(
        self,
        x: torch.Tensor,
        timestep: torch.Tensor,
        y: torch.Tensor,
        mask: torch.Tensor | None = None,
        x_mask: torch.Tensor | None = None,
        fps: torch.Tensor | None = None,
        height: torch.Tensor | None = None,
        width: torch.Tensor | None = None,
        force_drop_ids: torch.Tensor | None = None,
        **kwargs,
    ) -> torch.Tensor:
        """x [B, C_in, T, H, W], timestep [B] in 0..1000, y [B, 1, L, C_cap], mask [B, L] (0/1),
        x_mask [B, T] bool (False = clean conditioning frame), fps/height/width [B].
        Other kwargs (num_frames, ar, ...) are accepted and ignored. Returns float32 [B, C_out, T, H, W]."""
        dtype = self.x_embedder.proj.weight.dtype
        B = x.shape[0]
        x, timestep, y = x.to(dtype), timestep.to(dtype), y.to(dtype)
        _, _, Tx, Hx, Wx = x.shape
        T, H, W = self.get_dynamic_size(x)

        # timestep (+ fps) embedding and the shared adaLN-single projection
        t = self.t_embedder(timestep, dtype)  # [B, C]
        fps_emb = 0
        if self.fps_embedder is not None:
            if fps is None:
                raise ValueError(f"this STDiT3 is fps-conditioned: pass fps [B] (use {IMG_FPS} for images)")
            fps = fps.reshape(-1)
            if fps.shape[0] != B:
                fps = fps.repeat(B // fps.shape[0])
            fps_emb = self.fps_embedder(fps, dtype)  # [B, C]
        t = t + fps_emb
        t_mlp = self.t_block(t)  # [B, 6C]
        t0 = t0_mlp = None
        if x_mask is not None:
            x_mask = x_mask.to(torch.bool)
            if x_mask.shape[0] != B:
                x_mask = x_mask.repeat(B // x_mask.shape[0], 1)
            t0 = self.t_embedder(torch.zeros_like(timestep), dtype) + fps_emb  # [B, C]
            t0_mlp = self.t_block(t0)  # [B, 6C]

        # sequence parallelism: every rank keeps S_local of the S spatial tokens of every frame
        sp_group = self.sequence_parallel_group
        sp = None
        if sp_group is not None:
            sp = SPContext.build(sp_group, H * W, self.num_heads, x.device, self._sp.cross_attn_all_to_all)
            if self.training:
                force_drop_ids = self._sp_same_random_draws(sp, B, x.device, force_drop_ids)

        # caption
        y, y_mask = self.encode_text(y, mask, force_drop_ids)  # [B, L', C], [B, L'] or None

        # patch tokens + spatial position embedding (the same for every frame)
        pos_emb = self.position_embedding(x, H, W, height, width)  # [B or 1, 1, S, C]
        x = self.x_embedder(x)  # [B, T, S, C]
        x = x + pos_emb  # [B, T, S, C]
        if sp is not None:
            x = sp.shard(x)  # [B, T, S_local, C]

        # blocks: spatial, temporal, spatial, temporal, ...
        rope = self.rope.cos_sin(T, dtype=dtype) if self.rope is not None else None  # 2 x [T, head_dim]
        blocks = []
        for i in range(self.depth):
            blocks.append(self.spatial_blocks[i])
            if self.temporal_blocks is not None:
                blocks.append(self.temporal_blocks[i])
        for block in blocks:
            args = (x, y, y_mask, t_mlp, t0_mlp, x_mask, rope if block.temporal else None, sp)
            if self.grad_checkpoint and self.training and torch.is_grad_enabled():
                x = checkpoint(block, *args, use_reentrant=False)
            else:
                x = block(*args)  # [B, T, S, C]

        x = self.final_layer(x, t, x_mask, t0)  # [B, T, S, pt*ph*pw*C_out]
        if sp is not None:
            x = sp.unshard(x)  # per-token final layer ran on the local tokens; gather the narrow output
        x = self.unpatchify(x, T, H, W, Tx, Hx, Wx)  # [B, C_out, Tx, Hx, Wx]
        return x.float()

    def _sp_same_random_draws(self, sp: SPContext, B: int, device, force_drop_ids):
        """In training, the ranks of an SP group must draw the same caption dropout: rank 0 of the
        group draws, the others receive. Stochastic depth would need the same, so it is refused."""
        if any(isinstance(m, DropPath) for m in self.modules()):
            raise ValueError("drop_path > 0 is not supported with sequence parallelism in training")
        if force_drop_ids is None and self.y_embedder.uncond_prob > 0:
            drop = (torch.rand(B, device=device) < self.y_embedder.uncond_prob).long()  # [B]
            force_drop_ids = broadcast_from_group_rank0(drop, sp.group)
        return force_drop_ids

    def unpatchify(self, x: torch.Tensor, T: int, H: int, W: int, Tx: int, Hx: int, Wx: int) -> torch.Tensor:
        """Token features [B, T, S, (pt ph pw C_out)] -> [B, C_out, T*pt, H*ph, W*pw], cropped to (Tx, Hx, Wx)."""
        B = x.shape[0]
        pt, ph, pw = self.patch_size
        x = x.reshape(B, T, H, W, pt, ph, pw, self.out_channels)  # [B, T, H, W, pt, ph, pw, C_out]
        x = x.permute(0, 7, 1, 4, 2, 5, 3, 6)  # [B, C_out, T, pt, H, ph, W, pw]
        x = x.reshape(B, self.out_channels, T * pt, H * ph, W * pw)  # [B, C_out, T*pt, H*ph, W*pw]
        return x[:, :, :Tx, :Hx, :Wx]


# ==================================================================================================
# Factories
# ==================================================================================================
# The released checkpoint was built with qk_norm=True: the reference factories build through
# STDiT3Config, whose default is qk_norm=True (and every v1.2 config sets it), and the released
# state dict holds `attn.q_norm.weight`/`attn.k_norm.weight`. So our released-size factories default
# to qk_norm=True, while the bare class keeps the interop default qk_norm=False.


def _build(from_pretrained: str | None, defaults: dict, overrides: dict) -> STDiT3:
    model = STDiT3(**{**defaults, **overrides})
    if from_pretrained is not None:
        load_stdit3_checkpoint(model, from_pretrained)
    return model


def STDiT3_XL_2(from_pretrained: str | None = None, **kw) -> STDiT3:
    """Released size (1.2 B parameters): depth 28, hidden 1152, 16 heads, qk_norm."""
    return _build(from_pretrained, dict(depth=28, hidden_size=1152, num_heads=16, qk_norm=True), kw)


def STDiT3_3B_2(from_pretrained: str | None = None, **kw) -> STDiT3:
    """Unreleased 3B size: depth 28, hidden 1872, 26 heads, qk_norm."""
    return _build(from_pretrained, dict(depth=28, hidden_size=1872, num_heads=26, qk_norm=True), kw)


def STDiT3_S_2(from_pretrained: str | None = None, **kw) -> STDiT3:
    """CPU preset (~18 M parameters): depth 8, hidden 256, 4 heads, MiniLM captions (384 ch, 64 tokens)."""
    defaults = dict(depth=8, hidden_size=256, num_heads=4, qk_norm=True, caption_channels=384, model_max_length=64)
    return _build(from_pretrained, defaults, kw)


def STDiT3_Tiny_2(from_pretrained: str | None = None, **kw) -> STDiT3:
    """Test preset (~0.4 M parameters): depth 2, hidden 64, 2 heads, MiniLM captions (384 ch, 64 tokens)."""
    defaults = dict(depth=2, hidden_size=64, num_heads=2, qk_norm=True, caption_channels=384, model_max_length=64)
    return _build(from_pretrained, defaults, kw)


STDIT3_PRESETS = {
    "STDiT3-XL/2": STDiT3_XL_2,
    "STDiT3-3B/2": STDiT3_3B_2,
    "STDiT3-S/2": STDiT3_S_2,
    "STDiT3-Tiny/2": STDiT3_Tiny_2,
}


# ==================================================================================================
# Checkpoints
# ==================================================================================================


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be read or does not fit the model (message names file and key)."""


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a state dict from .pt/.pth (torch.load with weights_only=True) or .safetensors, on CPU.

    A dict wrapping the weights under "state_dict", "model", "module" or "ema" is unwrapped.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        elif path.suffix in (".pt", ".pth", ".bin", ".ckpt"):
            state = torch.load(path, map_location="cpu", weights_only=True)
        else:
            raise CheckpointError(f"{path}: unknown checkpoint format (use .pt, .pth or .safetensors)")
    except CheckpointError:
        raise
    except Exception as err:  # truncated/corrupt file, pickled code, ...
        raise CheckpointError(f"{path}: cannot read checkpoint ({type(err).__name__}: {err})") from err
    for wrapper in ("state_dict", "model", "module", "ema"):
        if isinstance(state, dict) and wrapper in state and isinstance(state[wrapper], dict):
            state = state[wrapper]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: does not hold a flat state dict of tensors")
    return state


def check_state_dict(
    model: nn.Module, state: dict[str, torch.Tensor], source: str, allow_missing: Iterable[str] = ()
) -> None:
    """Raise CheckpointError naming `source` and the first missing/unexpected/mis-shaped key.

    Keys starting with one of `allow_missing` may be absent (e.g. "temporal_blocks." when loading a
    spatial-only checkpoint into a full model).
    """
    allow_missing = tuple(allow_missing)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state and not k.startswith(allow_missing)]
    unexpected = [k for k in state if k not in expected]
    if missing:
        raise CheckpointError(f"{source}: missing key '{missing[0]}' ({len(missing)} missing in all)")
    if unexpected:
        raise CheckpointError(f"{source}: unexpected key '{unexpected[0]}' ({len(unexpected)} unexpected in all)")
    for k, v in state.items():
        if tuple(v.shape) != tuple(expected[k].shape):
            raise CheckpointError(
                f"{source}: shape mismatch for key '{k}': checkpoint {tuple(v.shape)}, model {tuple(expected[k].shape)}"
            )


def load_stdit3_checkpoint(
    model: nn.Module, path: str | os.PathLike, allow_missing: Iterable[str] = ()
) -> nn.Module:
    """Strictly load a local checkpoint into `model` (no network, no pickled code).

    Every model key must be present (except those starting with an `allow_missing` prefix), no extra
    key may be present and every shape must match; otherwise a CheckpointError names the file and
    the first offending key.
    """
    if not Path(path).exists():
        raise CheckpointError(
            f"{path}: checkpoint file not found (Hugging Face ids are not downloaded: pass a local file)"
        )
    state = read_state_dict(path)
    check_state_dict(model, state, str(path), allow_missing)
    model.load_state_dict(state, strict=False)
    return model


PIXART_MISSING_OK = ("temporal_blocks.", "fps_embedder.", "rope.")


def convert_pixart_sigma_state_dict(state: dict[str, torch.Tensor], model_max_length: int = 300) -> dict:
    """Map a PixArt-Sigma (PixArtMS) state dict onto STDiT3 names and shapes.

    - unwraps {"state_dict": ...};
    - `blocks.i.` -> `spatial_blocks.i.`;
    - the 2-D patch conv weight [C, 4, 2, 2] gets a time axis: [C, 4, 1, 2, 2];
    - the fixed `pos_embed` (and any `pos_embed_temporal`) is dropped (STDiT3 computes it);
    - `y_embedder.y_embedding` is cut to `model_max_length` rows or extended by repeating its last row.
    The result lacks the temporal blocks, the fps embedder, `rope.freqs` and (for a model with qk_norm)
    the q/k norms: load it with `load_pixart_sigma_checkpoint` or `check_state_dict(allow_missing=...)`.
    """
    if "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    out = {}
    for key, value in state.items():
        if key in ("pos_embed", "pos_embed_temporal"):
            continue
        if key == "x_embedder.proj.weight" and value.ndim == 4:
            value = value.unsqueeze(2)  # [C, C_in, 2, 2] -> [C, C_in, 1, 2, 2]
        if key == "y_embedder.y_embedding":
            n = value.shape[0]
            if n > model_max_length:
                value = value[:model_max_length]
            elif n < model_max_length:
                value = torch.cat([value, value[-1:].expand(model_max_length - n, -1)], dim=0)
        if key.startswith("blocks."):
            key = "spatial_" + key
        out[key] = value
    return out


def load_pixart_sigma_checkpoint(model: STDiT3, path: str | os.PathLike) -> STDiT3:
    """Initialise STDiT3's spatial part from a local PixArt-Sigma checkpoint (.pth/.safetensors)."""
    state = convert_pixart_sigma_state_dict(read_state_dict(path), model.y_embedder.y_embedding.shape[0])
    allow = PIXART_MISSING_OK
    if not any(".attn.q_norm." in k for k in state):
        allow = allow + tuple(k for k in model.state_dict() if ".attn.q_norm." in k or ".attn.k_norm." in k)
    check_state_dict(model, state, str(path), allow)
    model.load_state_dict(state, strict=False)
    return model
