"""Rectified flow: noising, the training loss and the Euler sampler with classifier-free guidance.

Convention (Open-Sora 1.2): t in [0, num_timesteps] (= [0, 1000]), t = 1000 is pure noise,

    x_t = (1 - t/1000) * x_0 + (t/1000) * noise,        target velocity v = x_0 - noise.

The model predicts v (its first `in_channels` output channels); sampling integrates dx/dt from
t = 1000 down to 0 with Euler steps, x <- x + v * (t_i - t_{i+1}) / 1000.

Bigger and longer videos need more noise to destroy their content, so training and sampling shift t
towards the noisy end with `timestep_transform` (resolution- and length-aware).
"""

from __future__ import annotations

import torch
from torch.distributions import LogisticNormal
from tqdm.auto import tqdm


def timestep_transform(
    t: torch.Tensor,
    model_kwargs: dict,
    base_resolution: int = 512 * 512,
    base_num_frames: int = 1,
    scale: float = 1.0,
    num_timesteps: int = 1,
    first_sample_switch: bool = False,
    frame_scale: float = 1.0,
) -> torch.Tensor:
    """Shift timesteps t [B] (in 0..num_timesteps) by the size of each sample.

        r   = sqrt(height*width / base_resolution) * sqrt(latent_frames / base_num_frames) * scale
        t'  = r*tn / (1 + (r-1)*tn) * num_timesteps,    tn = t / num_timesteps

    `model_kwargs` holds `height`, `width` (pixels) and `num_frames` (pixel frames) as [B] tensors.
    Latent frames = 1 for images, else `num_frames // 17 * 5` (the v1.2 VAE maps 17 frames to 5).
    Example: 240x426, 51 frames: r = sqrt(102240/262144) * sqrt(15) = 2.42, so t=500 -> 707.

    Arithmetic follows the dtype of the kwargs like the reference: Open-Sora passes them in bf16, so
    `height*width` is rounded (240*426 = 102240 -> 102400); pass bf16 tensors to reproduce that.
    The reference decides image vs video for the whole batch from sample 0 (`first_sample_switch=True`
    reproduces it); by default each sample decides for itself. Batches hold one bucket, so both give
    the same numbers in Open-Sora's training and sampling. Videos of 2..16 frames (0 latent frames by
    the formula, which would zero every timestep) count as 1 latent frame.

    ``frame_scale`` (ours; 1 = the reference): videos enter the formula as ``num_frames * frame_scale`` frames,
    for clips that stand in for longer ones. The embedded frame buckets 9 / 17 / 33 stand in for the released
    51 / 102 / 204; at frame_scale 6 a 48 px 9-frame clip (base 128x128) gets the shift of a released 144p
    51-frame clip (base 512x512), r = 0.375 * sqrt(15) = 1.45, where frame_scale 1 gives it an image's 0.375.
    Images (num_frames == 1) are not scaled.
    """
    t = t / num_timesteps
    resolution = model_kwargs["height"] * model_kwargs["width"]
    ratio_space = (resolution / base_resolution).sqrt()
    num_frames = model_kwargs["num_frames"]
    seen_frames = num_frames * frame_scale if frame_scale != 1 else num_frames  # (ours) the length stood in for
    latent_frames = seen_frames // 17 * 5
    if first_sample_switch:
        is_image = (num_frames[:1] == 1).expand_as(num_frames)
    else:
        is_image = num_frames == 1
    latent_frames = torch.where(is_image, torch.ones_like(latent_frames), latent_frames.clamp(min=1))
    ratio_time = (latent_frames / base_num_frames).sqrt()
    ratio = ratio_space * ratio_time * scale
    new_t = ratio * t / (1 + (ratio - 1) * t)
    return new_t * num_timesteps


def mean_flat(tensor: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over all non-batch dims -> [B]. With a frame mask [B, T] (True = counted) the mean of a
    [B, C, T, H, W] tensor runs over the True frames only: sum / (num_true_frames * C * H * W)."""
    if mask is None:
        return tensor.mean(dim=list(range(1, tensor.ndim)))
    assert tensor.ndim == 5 and tensor.shape[2] == mask.shape[1], "mask must be [B, T] for a [B, C, T, H, W] loss"
    B, C, T, H, W = tensor.shape
    per_frame = tensor.transpose(1, 2).reshape(B, T, C * H * W)  # [B, T, C*H*W]
    mask = mask.to(tensor.dtype)
    return (per_frame * mask[:, :, None]).sum(dim=(1, 2)) / (mask.sum(dim=1) * C * H * W)


class RFlowScheduler:
    """Rectified-flow training: timestep sampling, noising and the velocity loss."""

    def __init__(
        self,
        num_timesteps: int = 1000,
        num_sampling_steps: int = 10,
        use_discrete_timesteps: bool = False,
        sample_method: str = "uniform",
        loc: float = 0.0,
        scale: float = 1.0,
        use_timestep_transform: bool = False,
        transform_scale: float = 1.0,
        first_sample_switch: bool = False,
        base_resolution: int = 512 * 512,
        frame_scale: float = 1.0,
    ):
        if sample_method not in ("uniform", "logit-normal"):
            raise ValueError(f"sample_method must be 'uniform' or 'logit-normal', got {sample_method!r}")
        if use_discrete_timesteps and sample_method != "uniform":
            raise ValueError("discrete timesteps need sample_method='uniform'")
        self.num_timesteps = num_timesteps
        self.num_sampling_steps = num_sampling_steps
        self.use_discrete_timesteps = use_discrete_timesteps
        self.sample_method = sample_method
        self.loc, self.scale = loc, scale
        # t/1000 = sigmoid(N(loc, scale^2)), drawn through torch's LogisticNormal like the reference
        self.distribution = LogisticNormal(torch.tensor([loc]), torch.tensor([scale]))
        self.use_timestep_transform = use_timestep_transform
        self.transform_scale = transform_scale
        self.first_sample_switch = first_sample_switch
        self.base_resolution = base_resolution  # pixels where the transform is neutral (reference: 512*512)
        self.frame_scale = frame_scale  # video lengths as the transform sees them (ours; reference: 1)

    def sample_t(self, x_start: torch.Tensor, model_kwargs: dict | None = None) -> torch.Tensor:
        """Training timesteps [B] in [0, num_timesteps] (transformed when enabled)."""
        B, device = x_start.shape[0], x_start.device
        if self.use_discrete_timesteps:
            t = torch.randint(0, self.num_timesteps, (B,), device=device)
        elif self.sample_method == "uniform":
            t = torch.rand((B,), device=device) * self.num_timesteps
        else:
            t = self.distribution.sample((B,))[:, 0].to(device) * self.num_timesteps
        if self.use_timestep_transform:
            t = timestep_transform(
                t,
                model_kwargs,
                base_resolution=self.base_resolution,
                scale=self.transform_scale,
                num_timesteps=self.num_timesteps,
                first_sample_switch=self.first_sample_switch,
                frame_scale=self.frame_scale,
            )
        return t

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """x_t = (1 - t/N) * x_0 + (t/N) * noise, with t [B] broadcast over [B, ...]."""
        keep = 1 - timesteps.float() / self.num_timesteps  # [B], weight of x_0
        keep = keep.reshape(-1, *([1] * (original_samples.ndim - 1)))  # [B, 1, 1, 1, 1]
        return keep * original_samples + (1 - keep) * noise

    def training_losses(
        self,
        model,
        x_start: torch.Tensor,
        model_kwargs: dict | None = None,
        noise: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        weights: torch.Tensor | None = None,
        t: torch.Tensor | None = None,
    ) -> dict:
        """Velocity MSE per sample: {"loss": [B]}.

        x_start [B, C, T, H, W] clean latents; `mask` [B, T] bool (False = clean conditioning frame:
        its input stays x_0, the model sees it with timestep 0 and it is left out of the loss);
        `weights` a per-timestep table indexed by integer t; `t` [B] fixed timesteps (no sampling,
        no transform: eval loss). When `mask` is given and `model_kwargs` has no `x_mask`, the mask
        is passed to the model as `x_mask`.
        """
        model_kwargs = dict(model_kwargs or {})
        if t is None:
            t = self.sample_t(x_start, model_kwargs)
        if noise is None:
            noise = torch.randn_like(x_start)
        assert noise.shape == x_start.shape

        x_t = self.add_noise(x_start, noise, t)
        if mask is not None:
            mask = mask.to(torch.bool)
            x_clean = self.add_noise(x_start, noise, torch.zeros_like(t))  # = x_start
            x_t = torch.where(mask[:, None, :, None, None], x_t, x_clean)
            model_kwargs.setdefault("x_mask", mask)

        out = model(x_t, t, **model_kwargs)
        velocity = out[:, : x_start.shape[1]]  # first in_channels channels (pred_sigma half unused)
        err = (velocity - (x_start - noise)).pow(2)
        if weights is not None:
            w = weights.to(x_start.device)[t.long()].float()  # [B]
            err = w.reshape(-1, *([1] * (err.ndim - 1))) * err
        return {"loss": mean_flat(err, mask=mask)}


def sampling_timesteps(
    num_sampling_steps: int,
    num_timesteps: int,
    batch_size: int,
    device=None,
    use_discrete_timesteps: bool = False,
    use_timestep_transform: bool = False,
    model_kwargs: dict | None = None,
    first_sample_switch: bool = False,
    base_resolution: int = 512 * 512,
    frame_scale: float = 1.0,
) -> list[torch.Tensor]:
    """The N sampling times t_i = (1 - i/N) * num_timesteps, i = 0..N-1, each as a [B] tensor
    (transformed per sample when enabled)."""
    ts = [(1.0 - i / num_sampling_steps) * num_timesteps for i in range(num_sampling_steps)]
    if use_discrete_timesteps:
        ts = [int(round(t)) for t in ts]
    ts = [torch.tensor([t] * batch_size, device=device) for t in ts]
    if use_timestep_transform:
        ts = [
            timestep_transform(t, model_kwargs, base_resolution=base_resolution, num_timesteps=num_timesteps,
                               first_sample_switch=first_sample_switch, frame_scale=frame_scale)
            for t in ts
        ]
    return ts


class RFLOW:
    """Rectified-flow sampler (Euler + classifier-free guidance) of Open-Sora 1.2.

    Defaults are those of the v1.2 inference config (30 steps, guidance 7.0); the reference class
    itself defaults to 10 steps and 4.0. Extra keyword arguments go to `RFlowScheduler`.
    """

    def __init__(
        self,
        num_sampling_steps: int = 30,
        num_timesteps: int = 1000,
        cfg_scale: float = 7.0,
        use_discrete_timesteps: bool = False,
        use_timestep_transform: bool = False,
        first_sample_switch: bool = False,
        **kwargs,
    ):
        self.num_sampling_steps = num_sampling_steps
        self.num_timesteps = num_timesteps
        self.cfg_scale = cfg_scale
        self.use_discrete_timesteps = use_discrete_timesteps
        self.use_timestep_transform = use_timestep_transform
        self.first_sample_switch = first_sample_switch
        self.scheduler = RFlowScheduler(
            num_timesteps=num_timesteps,
            num_sampling_steps=num_sampling_steps,
            use_discrete_timesteps=use_discrete_timesteps,
            use_timestep_transform=use_timestep_transform,
            first_sample_switch=first_sample_switch,
            **kwargs,
        )

    @torch.no_grad()
    def sample(
        self,
        model,
        z: torch.Tensor,
        y: torch.Tensor,
        y_mask: torch.Tensor | None = None,
        y_null: torch.Tensor | None = None,
        additional_args: dict | None = None,
        mask: torch.Tensor | None = None,
        guidance_scale: float | None = None,
        progress: bool = True,
        y_null_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Integrate from noise z [B, C, T, H, W] (t = 1000) to a clean latent (t = 0).

        y [B, 1, L, C_cap] caption states, y_mask [B, L] their token mask; y_null the unconditional
        caption [B, 1, L, C_cap] (default: the model's `y_embedding`, first L rows, with the same
        token mask, as Open-Sora; a negative prompt's states go here, with their own mask in
        `y_null_mask` [B, L]). additional_args: [B] tensors `height`, `width`, `num_frames`,
        `fps` (and anything else the model takes).

        mask [B, T] float per latent frame: 1 = generate, 0 = keep the frame of z (a conditioning
        reference placed there beforehand, see `masks.apply_mask_strategy`), 0 < e < 1 = partial edit
        (the frame is noised to level e*1000 and regenerated from there). Frames with 0 come out
        bit-identical to the input z.
        """
        guidance_scale = self.cfg_scale if guidance_scale is None else guidance_scale
        B = z.shape[0]
        additional_args = dict(additional_args or {})
        if y_null is None:
            y_null = model.null_caption(B, y.shape[2])
        y_null = y_null.to(device=y.device, dtype=y.dtype)

        # model arguments for the CFG batch [cond, uncond]: [B] tensors are doubled
        model_args = {k: (torch.cat([v, v]) if torch.is_tensor(v) and v.shape[:1] == (B,) else v)
                      for k, v in additional_args.items()}
        model_args["y"] = torch.cat([y, y_null])  # [2B, 1, L, C_cap]
        if y_mask is not None:  # the null caption keeps the prompt's mask; a negative prompt has its own
            model_args["mask"] = torch.cat([y_mask, y_mask if y_null_mask is None else y_null_mask.to(y_mask)])

        timesteps = sampling_timesteps(
            self.num_sampling_steps,
            self.num_timesteps,
            B,
            device=z.device,
            use_discrete_timesteps=self.use_discrete_timesteps,
            use_timestep_transform=self.use_timestep_transform,
            model_kwargs=additional_args,
            first_sample_switch=self.first_sample_switch,
            base_resolution=self.scheduler.base_resolution,
            frame_scale=self.scheduler.frame_scale,
        )

        if mask is not None:
            noise_added = mask == 1  # [B, T]: frames that start as noise

        steps = tqdm(range(len(timesteps)), desc="sampling", disable=not progress, leave=False)
        for i in steps:
            t = timesteps[i]  # [B]
            if mask is not None:
                # frames whose edit level e*1000 is reached by t join the generation now: noise them to t
                x0 = z.clone()
                x_noise = self.scheduler.add_noise(x0, torch.randn_like(x0), t)
                x_mask = mask * self.num_timesteps >= t[:, None]  # [B, T] bool
                newly = x_mask & ~noise_added
                z = torch.where(newly[:, None, :, None, None], x_noise, x0)
                noise_added = x_mask
                model_args["x_mask"] = torch.cat([x_mask, x_mask])  # [2B, T]

            out = model(torch.cat([z, z]), torch.cat([t, t]), **model_args)  # [2B, C_out, T, H, W]
            v_cond, v_uncond = out[:, : z.shape[1]].chunk(2, dim=0)
            v = v_uncond + guidance_scale * (v_cond - v_uncond)

            dt = timesteps[i] - timesteps[i + 1] if i < len(timesteps) - 1 else timesteps[i]  # [B]
            dt = dt / self.num_timesteps
            z = z + v * dt.reshape(-1, 1, 1, 1, 1).to(v.dtype)

            if mask is not None:  # frames not (yet) generated go back to exactly what they were
                z = torch.where(x_mask[:, None, :, None, None], z, x0)
        return z

    def sample_prompts(
        self,
        model,
        text_encoder,
        z: torch.Tensor,
        prompts: list[str],
        device=None,
        additional_args: dict | None = None,
        mask: torch.Tensor | None = None,
        guidance_scale: float | None = None,
        progress: bool = True,
    ) -> torch.Tensor:
        """Reference-style entry point: encode `prompts` with `text_encoder` (our text_encoder API),
        then `sample`. The null caption comes from the model."""
        enc = text_encoder.encode(prompts)
        y = enc["y"].to(z.device)
        y_mask = enc["mask"].to(z.device)
        return self.sample(model, z, y, y_mask, None, additional_args, mask, guidance_scale, progress)

    def training_losses(self, model, x_start, model_kwargs=None, noise=None, mask=None, weights=None, t=None):
        return self.scheduler.training_losses(model, x_start, model_kwargs, noise, mask, weights, t)
