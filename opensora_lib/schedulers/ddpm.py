"""Discrete-time DDPM with a learned variance: the objective of PixArt-Σ, the image model Open-Sora 1.2 starts from.

Open-Sora 1.2 adapts PixArt-Σ (facts §6), which was trained as an improved DDPM (Nichol & Dhariwal 2021, the
`IDDPM` class of PixArt's code): 1000 discrete steps, linear betas, the network predicting the noise ε in its first
C output channels and, in the other C (`pred_sigma`), where the reverse-process variance lies between its two
natural bounds. Everything here is written from the formulas:

    betas        β_t linear from 1e-4 to 0.02 (scaled by 1000/T for T != 1000), t = 0..T-1
    ᾱ_t          = Π_{s<=t} (1 - β_s)
    q(x_t | x_0) = N(√ᾱ_t x_0, (1 - ᾱ_t) I)                            x_t = √ᾱ_t x_0 + √(1-ᾱ_t) ε
    posterior    q(x_{t-1} | x_t, x_0) = N(c1_t x_0 + c2_t x_t, β̃_t),  β̃_t = β_t (1-ᾱ_{t-1}) / (1-ᾱ_t),
                 c1_t = β_t √ᾱ_{t-1} / (1-ᾱ_t),  c2_t = (1-ᾱ_{t-1}) √α_t / (1-ᾱ_t)
    learned var  log σ²_t = f log β_t + (1-f) log β̃_t,  f = (v + 1) / 2, v = the model's variance channels
    loss         MSE(ε, ε̂)  +  L_vb,  L_vb = KL(q(x_{t-1}|x_t,x_0) ‖ p(x_{t-1}|x_t)) in bits per dimension
                 (the decoder NLL at t = 0); the KL sees the predicted mean through a stop-gradient, so it trains
                 only the variance channels ("hybrid" loss, PixArt's `learn_sigma=True`, loss type MSE).

`GaussianDiffusion` holds a schedule, noises, computes the loss and one reverse step; `respace` builds the
diffusion over a subset of the timesteps (for sampling in N < 1000 steps: the model still sees the ORIGINAL
timestep index); `DDPMSampler` samples with DDIM (deterministic, the variance channels unused) or with the
ancestral IDDPM step (the learned variance used), with classifier-free guidance on ε.

Tensors: latents x [B, C, ...] (any trailing dims: [B, C, T, H, W] for STDiT3), timesteps t [B] integer.
The model is called as `model(x_t, t_model, **model_kwargs)` and returns [B, 2C, ...] (or [B, C, ...] when the
variance is not learned); t_model is the float timestep index 0..T-1 (STDiT3 embeds it as given).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

# ==================================================================================================
# Formulas
# ==================================================================================================


def linear_betas(num_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> np.ndarray:
    """PixArt's "linear" schedule: β_t evenly spaced in [beta_start, beta_end] * 1000/T (float64, [T])."""
    scale = 1000.0 / num_timesteps
    return np.linspace(scale * beta_start, scale * beta_end, num_timesteps, dtype=np.float64)


def normal_kl(mean1, logvar1, mean2, logvar2) -> torch.Tensor:
    """KL(N(mean1, e^logvar1) ‖ N(mean2, e^logvar2)) elementwise, in nats."""
    mean1, logvar1, mean2, logvar2 = (torch.as_tensor(v, dtype=torch.float32) for v in (mean1, logvar1, mean2, logvar2))
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def approx_standard_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    """Φ(x) by the tanh approximation 0.5 (1 + tanh(√(2/π) (x + 0.044715 x³)))."""
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))


def discretized_gaussian_log_likelihood(x: torch.Tensor, means: torch.Tensor, log_scales: torch.Tensor) -> torch.Tensor:
    """log P(x) of data in [-1, 1] quantised to 256 bins (width 2/255) under N(means, e^(2 log_scales)),
    elementwise in nats. The outermost bins extend to ±∞ (x < -0.999: P(X <= x + 1/255); x > 0.999:
    P(X >= x - 1/255)). Used for the t = 0 term of L_vb (as improved DDPM, also for latents)."""
    centered = x - means
    inv_std = torch.exp(-log_scales)
    cdf_plus = approx_standard_normal_cdf(inv_std * (centered + 1.0 / 255.0))
    cdf_min = approx_standard_normal_cdf(inv_std * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_delta))


def mean_flat(x: torch.Tensor) -> torch.Tensor:
    """Mean over every non-batch dim -> [B]."""
    return x.mean(dim=list(range(1, x.ndim)))


def space_timesteps(num_timesteps: int, num_steps: int) -> list[int]:
    """`num_steps` timesteps spread evenly over 0..T-1, both ends included, rounded, ascending.
    (E.g. T=1000, N=4 -> [0, 333, 666, 999].)"""
    if not 1 <= num_steps <= num_timesteps:
        raise ValueError(f"num_steps must be in 1..{num_timesteps}, got {num_steps}")
    if num_steps == 1:
        return [num_timesteps - 1]
    return sorted({int(round(v)) for v in np.linspace(0, num_timesteps - 1, num_steps)})


def _extract(arr: np.ndarray, t: torch.Tensor, ndim: int) -> torch.Tensor:
    """arr[t] as float32 [B, 1, ..., 1] (ndim dims) on t's device."""
    out = torch.from_numpy(arr).to(t.device)[t.long()].float()
    return out.reshape(-1, *([1] * (ndim - 1)))


# ==================================================================================================
# The diffusion
# ==================================================================================================


class GaussianDiffusion:
    """A DDPM over the given betas (default: PixArt's linear 1000-step schedule) with learned variance.

    `timestep_map[i]` is the timestep index given to the model at position i of this schedule (the identity
    for a full schedule; the original indices for a respaced one, see `respace`).
    """

    def __init__(
        self,
        betas: Sequence[float] | np.ndarray | None = None,
        num_timesteps: int = 1000,
        learn_sigma: bool = True,
        timestep_map: Sequence[int] | None = None,
    ):
        betas = linear_betas(num_timesteps) if betas is None else np.asarray(betas, dtype=np.float64)
        if betas.ndim != 1 or not ((betas > 0) & (betas <= 1)).all():
            raise ValueError("betas must be a 1-D array in (0, 1]")
        self.betas = betas
        self.num_timesteps = T = len(betas)
        self.learn_sigma = learn_sigma
        self.timestep_map = np.arange(T) if timestep_map is None else np.asarray(timestep_map, dtype=np.int64)

        alphas = 1.0 - betas
        self.alphas_cumprod = np.cumprod(alphas)
        self.alphas_cumprod_prev = np.append(1.0, self.alphas_cumprod[:-1])
        self.sqrt_alphas_cumprod = np.sqrt(self.alphas_cumprod)
        self.sqrt_one_minus_alphas_cumprod = np.sqrt(1.0 - self.alphas_cumprod)
        self.sqrt_recip_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod)
        self.sqrt_recipm1_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod - 1.0)
        self.posterior_variance = betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        # β̃_0 = 0: the log is clipped by using β̃_1 at t = 0
        pv1 = self.posterior_variance[1] if T > 1 else self.posterior_variance[0]
        self.posterior_log_variance_clipped = np.log(np.append(pv1, self.posterior_variance[1:]))
        self.posterior_mean_coef1 = betas * np.sqrt(self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        self.posterior_mean_coef2 = (1.0 - self.alphas_cumprod_prev) * np.sqrt(alphas) / (1.0 - self.alphas_cumprod)

    # -- forward process ------------------------------------------------------------------------
    def sample_t(self, batch_size: int, device=None, generator: torch.Generator | None = None) -> torch.Tensor:
        """Training timesteps [B], uniform integers in 0..T-1."""
        return torch.randint(0, self.num_timesteps, (batch_size,), generator=generator).to(device)

    def q_sample(self, x_start: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = √ᾱ_t x_0 + √(1-ᾱ_t) ε."""
        n = x_start.ndim
        return _extract(self.sqrt_alphas_cumprod, t, n) * x_start + _extract(self.sqrt_one_minus_alphas_cumprod, t, n) * noise

    def q_posterior_mean_variance(self, x_start: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor):
        """Mean, variance and clipped log-variance of q(x_{t-1} | x_t, x_0)."""
        n = x_start.ndim
        mean = _extract(self.posterior_mean_coef1, t, n) * x_start + _extract(self.posterior_mean_coef2, t, n) * x_t
        return mean, _extract(self.posterior_variance, t, n), _extract(self.posterior_log_variance_clipped, t, n)

    def predict_xstart_from_eps(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """x̂_0 = (x_t - √(1-ᾱ_t) ε) / √ᾱ_t."""
        n = x_t.ndim
        return _extract(self.sqrt_recip_alphas_cumprod, t, n) * x_t - _extract(self.sqrt_recipm1_alphas_cumprod, t, n) * eps

    def model_timesteps(self, t: torch.Tensor) -> torch.Tensor:
        """The timestep value the model sees for position t of this schedule (float [B])."""
        return torch.from_numpy(self.timestep_map).to(t.device)[t.long()].float()

    # -- reverse process ------------------------------------------------------------------------
    def split_output(self, model_output: torch.Tensor, channels: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """[B, 2C or more, ...] -> ε [B, C, ...], variance values v [B, C, ...] (None without learned sigma)."""
        eps = model_output[:, :channels]
        if not self.learn_sigma:
            return eps, None
        if model_output.shape[1] < 2 * channels:
            raise ValueError(f"learned sigma needs {2 * channels} output channels, got {model_output.shape[1]}")
        return eps, model_output[:, channels:2 * channels]

    def model_log_variance(self, var_values: torch.Tensor | None, t: torch.Tensor, ndim: int) -> torch.Tensor:
        """log σ²_t = f log β_t + (1-f) log β̃_t, f = (v+1)/2; without learned sigma the upper bound log β_t
        (with β̃_1 at t = 0), as the fixed-large variance of DDPM."""
        max_log = _extract(np.log(self.betas), t, ndim)
        min_log = _extract(self.posterior_log_variance_clipped, t, ndim)
        if var_values is None:
            fixed = np.log(np.append(self.posterior_variance[1] if self.num_timesteps > 1 else self.betas[0], self.betas[1:]))
            return _extract(fixed, t, ndim)
        frac = (var_values + 1.0) / 2.0
        return frac * max_log + (1.0 - frac) * min_log

    def p_mean_variance(self, eps: torch.Tensor, var_values: torch.Tensor | None, x_t: torch.Tensor, t: torch.Tensor,
                        clip_denoised: bool = False) -> dict:
        """Reverse step p(x_{t-1} | x_t) from the model's ε and variance values."""
        log_var = self.model_log_variance(var_values, t, x_t.ndim)
        pred_xstart = self.predict_xstart_from_eps(x_t, t, eps)
        if clip_denoised:
            pred_xstart = pred_xstart.clamp(-1, 1)
        mean, _, _ = self.q_posterior_mean_variance(pred_xstart, x_t, t)
        return {"mean": mean, "log_variance": log_var, "variance": torch.exp(log_var), "pred_xstart": pred_xstart}

    def vb_terms_bpd(self, eps: torch.Tensor, var_values: torch.Tensor | None, x_start: torch.Tensor, x_t: torch.Tensor,
                     t: torch.Tensor) -> torch.Tensor:
        """L_vb per sample [B] in bits/dim: KL(q ‖ p) for t > 0, the discretised decoder NLL for t = 0."""
        true_mean, _, true_log_var = self.q_posterior_mean_variance(x_start, x_t, t)
        out = self.p_mean_variance(eps, var_values, x_t, t)
        kl = mean_flat(normal_kl(true_mean, true_log_var, out["mean"], out["log_variance"])) / math.log(2.0)
        nll = -discretized_gaussian_log_likelihood(x_start, out["mean"], 0.5 * out["log_variance"])
        nll = mean_flat(nll) / math.log(2.0)
        return torch.where(t == 0, nll, kl)

    def training_losses(
        self,
        model,
        x_start: torch.Tensor,
        t: torch.Tensor | None = None,
        model_kwargs: dict | None = None,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> dict:
        """Per-sample losses {"loss", "mse", "vb"} (each [B]); loss = mse + vb (vb = 0 without learned sigma).

        The variational term gets the predicted ε through a stop-gradient: it trains only the variance
        channels, the MSE trains ε.
        """
        B, C = x_start.shape[:2]
        if t is None:
            t = self.sample_t(B, x_start.device, generator)
        if noise is None:
            noise = torch.randn(x_start.shape, generator=generator).to(x_start)
        x_t = self.q_sample(x_start, t, noise)
        out = model(x_t, self.model_timesteps(t), **(model_kwargs or {}))
        eps, var_values = self.split_output(out, C)
        mse = mean_flat((noise - eps.float()) ** 2)
        if var_values is None:
            vb = torch.zeros_like(mse)
        else:
            vb = self.vb_terms_bpd(eps.detach().float(), var_values.float(), x_start, x_t, t)
        return {"loss": mse + vb, "mse": mse, "vb": vb}


def respace(diffusion: GaussianDiffusion, use_timesteps: Sequence[int]) -> GaussianDiffusion:
    """The diffusion restricted to `use_timesteps` (ascending original indices): the new betas are
    β'_i = 1 - ᾱ_{s_i} / ᾱ_{s_{i-1}}, so ᾱ' at position i equals ᾱ at s_i; the model keeps seeing s_i."""
    use = sorted(int(s) for s in use_timesteps)
    if not use or use[0] < 0 or use[-1] >= diffusion.num_timesteps:
        raise ValueError("use_timesteps must be indices in 0..T-1")
    betas, last = [], 1.0
    for s in use:
        acp = diffusion.alphas_cumprod[s]
        betas.append(1.0 - acp / last)
        last = acp
    return GaussianDiffusion(np.array(betas), learn_sigma=diffusion.learn_sigma, timestep_map=use)


# ==================================================================================================
# Sampling
# ==================================================================================================


class DDPMSampler:
    """Sample a DDPM-trained STDiT3 in `num_sampling_steps` steps with classifier-free guidance.

    method "ddim": deterministic DDIM (eta = 0 by default), uses only ε;
    method "iddpm": ancestral steps of the respaced diffusion with the learned variance (PixArt's IDDPM sampler).
    Guidance acts on ε: ε = ε_u + s (ε_c - ε_u); the variance channels are the conditional ones.
    """

    def __init__(self, num_sampling_steps: int = 25, num_timesteps: int = 1000, method: str = "ddim",
                 cfg_scale: float = 4.5, eta: float = 0.0, learn_sigma: bool = True):
        if method not in ("ddim", "iddpm"):
            raise ValueError(f"method must be 'ddim' or 'iddpm', got {method!r}")
        self.method = method
        self.cfg_scale = cfg_scale
        self.eta = eta
        self.base = GaussianDiffusion(linear_betas(num_timesteps), learn_sigma=learn_sigma)
        self.diffusion = respace(self.base, space_timesteps(num_timesteps, num_sampling_steps))
        self.num_sampling_steps = self.diffusion.num_timesteps

    def _guided(self, model, z, i, model_args, guidance_scale):
        t = torch.full((z.shape[0],), i, dtype=torch.long, device=z.device)
        t_model = self.diffusion.model_timesteps(t)
        out = model(torch.cat([z, z]), torch.cat([t_model, t_model]), **model_args).float()
        eps, var_values = self.diffusion.split_output(out, z.shape[1])
        eps_c, eps_u = eps.chunk(2)
        eps = eps_u + guidance_scale * (eps_c - eps_u)
        var_values = None if var_values is None else var_values.chunk(2)[0]
        return t, eps, var_values

    @torch.no_grad()
    def sample(
        self,
        model,
        z: torch.Tensor,
        y: torch.Tensor,
        y_mask: torch.Tensor | None = None,
        y_null: torch.Tensor | None = None,
        additional_args: dict | None = None,
        guidance_scale: float | None = None,
        generator: torch.Generator | None = None,
        progress: bool = False,
    ) -> torch.Tensor:
        """From noise z [B, C, ...] (x_T) to x_0. y [B, 1, L, C_cap], y_mask [B, L]; y_null defaults to the
        model's null caption (same token mask, as Open-Sora); additional_args: [B] tensors (height, width, fps...)."""
        guidance_scale = self.cfg_scale if guidance_scale is None else guidance_scale
        B = z.shape[0]
        if y_null is None:
            y_null = model.null_caption(B, y.shape[2])
        args = {k: (torch.cat([v, v]) if torch.is_tensor(v) and v.shape[:1] == (B,) else v)
                for k, v in (additional_args or {}).items()}
        args["y"] = torch.cat([y, y_null.to(y)])
        if y_mask is not None:
            args["mask"] = torch.cat([y_mask, y_mask])
        d = self.diffusion
        x = z.float()
        for i in tqdm(range(d.num_timesteps - 1, -1, -1), desc="ddpm sampling", disable=not progress, leave=False):
            t, eps, var_values = self._guided(model, x, i, args, guidance_scale)
            if self.method == "ddim":
                x0 = d.predict_xstart_from_eps(x, t, eps)
                acp = _extract(d.alphas_cumprod, t, x.ndim)
                acp_prev = _extract(d.alphas_cumprod_prev, t, x.ndim)
                sigma = self.eta * torch.sqrt((1 - acp_prev) / (1 - acp)) * torch.sqrt(1 - acp / acp_prev)
                x = acp_prev.sqrt() * x0 + (1 - acp_prev - sigma**2).clamp(min=0).sqrt() * eps
                if self.eta > 0 and i > 0:
                    x = x + sigma * torch.randn(x.shape, generator=generator).to(x)
            else:
                out = d.p_mean_variance(eps, var_values, x, t)
                x = out["mean"]
                if i > 0:
                    x = x + torch.exp(0.5 * out["log_variance"]) * torch.randn(x.shape, generator=generator).to(x)
        return x
