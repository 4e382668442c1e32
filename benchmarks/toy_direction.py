r"""Can STDiT3-S/2 learn "moves left" vs "moves right" from text when that is all there is to learn?

A diagnostic for the embedded run's motion direction (README, "What the embedded run reaches"), not part of
`make bench` (it trains for minutes). Latents have the size of a 48 px, 17-frame clip ([4, 5, 6, 6]): a zero
background and a 2x2 blob of one fixed 4-channel colour that moves `--speed` latent px per latent frame to the left
or to the right (bilinear, so half-pixel steps show). The caption (MiniLM states) says which. A fresh STDiT3-S/2 is
trained with the rectified-flow loss (logit-normal t, no shift), then samples `--samples` clips per caption (30
Euler steps, guidance `--cfg`); the blob's x centroid in the first and last latent frame gives the direction.

`--fixed-start` starts every blob in the middle, so the direction also changes *where* the blob is in each frame;
without it the start is uniform and the direction is only a relation between frames (each frame on its own looks
the same for both captions). `--first-frame` gives the model the clean first latent frame in training and sampling
(image-to-video: frame mask, timestep 0 for that frame), which makes the later frames' positions depend on the
caption given that frame. `--varied-captions` writes captions in the embedded world's style (colour, shape,
background and camera words the latents do not show; 16 held-out variants for sampling); `--init` starts from an
embedded checkpoint instead of a fresh model; `--through-vae` draws the clips in pixels (a 16 px orange square, 1 px
per frame) and trains on a VAE's latents, reading the direction after decoding; `--checker` puts a random grey
checkerboard behind the square.

    python -m benchmarks.toy_direction --steps 400
    python -m benchmarks.toy_direction --steps 400 --fixed-start
    python -m benchmarks.toy_direction --steps 400 --first-frame
    python -m benchmarks.toy_direction --steps 400 --first-frame --init checkpoints/adapt/step8.pt
    python -m benchmarks.toy_direction --steps 400 --first-frame --init checkpoints/adapt/step8.pt \
        --through-vae checkpoints/vae/stage3.pt --checker
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from opensora_lib.models.stdit3 import STDiT3_S_2
from opensora_lib.models.text_encoder import MiniLMEncoder
from opensora_lib.schedulers.rectified_flow import RFLOW, RFlowScheduler

T, H, W, C = 5, 6, 6, 4  # latent frames, height, width, channels of a 48 px 17-frame clip
FRAMES = 4 * (T - 1) + 1  # pixel frames of T latent frames (17: the VAE is causal, 4x in time)
COLOUR = torch.tensor([1.5, -1.0, 0.8, -0.6])
CAPTIONS = ["A square moves slowly left.", "A square moves slowly right."]


def render(x0: float, y0: int, v: float) -> torch.Tensor:
    """One clip [C, T, H, W]: a 2-px-wide blob whose left edge is at x0 + v*t (bilinear), rows y0 and y0 + 1."""
    out = torch.zeros(C, T, H, W)
    xs = torch.arange(W, dtype=torch.float32)
    rows = ((torch.arange(H) >= y0) & (torch.arange(H) < y0 + 2)).float()  # [H]
    for t in range(T):
        left = x0 + v * t
        cover = sum((1 - (xs - (left + k)).abs()).clamp(min=0) for k in (0, 1)).clamp(max=1)  # [W]
        out[:, t] = COLOUR[:, None, None] * (rows[:, None] * cover[None, :])
    return out


def varied_captions(n: int, seed: int) -> list[tuple[str, str]]:
    """n (left, right) caption pairs in the embedded world's style: colour, shape, background and camera vary."""
    import random
    rng = random.Random(seed)
    colours = ["red", "orange", "yellow", "green", "blue", "purple", "pink", "white", "black", "brown", "cyan", "grey"]
    shapes = ["circle", "square", "triangle", "star", "diamond"]
    backs = ["flat", "gradient", "striped", "checkered"]
    cams = ["The camera is static.", "The camera pans left.", "The camera pans right.", "The camera tilts up.",
            "The camera zooms in."]
    out = []
    for _ in range(n):
        c, c2, c3 = rng.sample(colours, 3)
        back = rng.choice(backs)
        bg = f"a {c2} background" if back == "flat" else f"a {c2} and {c3} {back} background"
        pace = rng.choice(["slowly", "quickly"])
        cam = rng.choice(cams)
        shape = rng.choice(shapes)
        out.append(tuple(f"A {c} {shape} moves {pace} {d} across {bg}. {cam}" for d in ("left", "right")))
    return out


def make_batch(n: int, speed: float, fixed_start: bool, gen: torch.Generator,
               pixels: bool = False, background: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """n clips [n, C, T, H, W] (`pixels`: [n, 3, FRAMES, 8H, 8W]) and their directions [n] (0 left, 1 right); every blob
    stays in view."""
    direction = torch.randint(0, 2, (n,), generator=gen)
    travel = speed * (T - 1)
    x0 = torch.rand(n, generator=gen) * (W - 2 - travel)
    x0 = torch.where(direction == 1, x0, x0 + travel)
    if fixed_start:
        x0 = torch.full((n,), (W - 2) / 2)
    y0 = torch.randint(0, H - 1, (n,), generator=gen)
    v = torch.where(direction == 1, speed, -speed)
    if pixels:
        clips = torch.stack([render_pixels(float(x0[i]), int(y0[i]), float(v[i]),
                                           background=checker_background(gen) if background else None)
                             for i in range(n)])
    else:
        clips = torch.stack([render(float(x0[i]), int(y0[i]), float(v[i])) for i in range(n)])
    return clips, direction


PIXEL_COLOUR = torch.tensor([1.0, 0.3, -0.6])  # orange on black, in [-1, 1]


def render_pixels(x0: float, y0: int, v: float, background: torch.Tensor | None = None) -> torch.Tensor:
    """The clip `render` describes, drawn in pixels [3, FRAMES, 8H, 8W] (48 px, 17 frames) for the VAE: a 16x16 px
    square whose left edge is at 8 * (x0 + v * f / 4) px in frame f (4 pixel frames per latent frame), on black or
    on a still `background` [3, 8H, 8W]."""
    out = torch.full((3, FRAMES, 8 * H, 8 * W), -1.0)
    if background is not None:
        out[:] = background[:, None]
    xs = torch.arange(8 * W, dtype=torch.float32) + 0.5
    rows = ((torch.arange(8 * H) >= 8 * y0) & (torch.arange(8 * H) < 8 * y0 + 16)).float()  # [8H]
    for f in range(FRAMES):
        left = 8 * (x0 + v * f / 4)
        cover = ((xs - left).clamp(0, 1) * (left + 16 - xs).clamp(0, 1))  # [8W], antialiased edges
        alpha = rows[:, None] * cover[None, :]  # [8H, 8W]
        out[:, f] = out[:, f] * (1 - alpha[None]) + alpha[None] * PIXEL_COLOUR[:, None, None]
    return out


def checker_background(gen: torch.Generator) -> torch.Tensor:
    """A grey checkerboard [3, 8H, 8W]: period 8-16 px, random phase, two levels in [-1, 0.2] at least 0.3 apart (far
    from the orange square, so its colour still finds it after decoding)."""
    period = int(torch.randint(8, 17, (1,), generator=gen))
    phase = torch.randint(0, period, (2,), generator=gen)
    u = torch.rand(2, generator=gen).tolist()
    a = -1.0 + 0.9 * u[0]  # [-1, -0.1]
    b = min(a + 0.3 + 0.3 * u[1], 0.2)  # 0.3 or more above a (a + 0.3 <= 0.2)
    ys = (torch.arange(8 * H) + phase[0]) // max(period // 2, 1)
    xs = (torch.arange(8 * W) + phase[1]) // max(period // 2, 1)
    cells = ((ys[:, None] + xs[None, :]) % 2).float()  # [8H, 8W]
    return (a + (b - a) * cells)[None].expand(3, -1, -1).clone()


def pixel_displacement(pixels: torch.Tensor, on_background: bool = False) -> torch.Tensor:
    """x centroid of the square's colour in the last pixel frame minus the first, in latent px (/8), per clip [n].
    `on_background`: weigh pixels by closeness to the square's colour (grey backgrounds are far from it)."""
    if on_background:
        dist = (pixels - PIXEL_COLOUR[None, :, None, None, None]).norm(dim=1)  # [n, F, 8H, 8W]
        mass = (1 - dist / 0.8).clamp(min=0)
    else:
        mass = ((pixels + 1.0) * (PIXEL_COLOUR[None, :, None, None, None] + 1.0)).sum(1).clamp(min=0)  # [n, F, 8H, 8W]
    cx = (mass.sum(2) * torch.arange(mass.shape[-1], dtype=torch.float32)).sum(-1) / mass.sum((2, 3)).clamp(min=1e-6)
    return (cx[:, -1] - cx[:, 0]) / 8


def displacement(latents: torch.Tensor) -> torch.Tensor:
    """x centroid of the blob's colour in the last latent frame minus the first, per clip [n]."""
    mass = (latents * COLOUR[None, :, None, None, None]).sum(1).clamp(min=0)  # [n, T, H, W]
    cx = (mass.sum(2) * torch.arange(W, dtype=torch.float32)).sum(-1) / mass.sum((2, 3)).clamp(min=1e-6)  # [n, T]
    return cx[:, -1] - cx[:, 0]


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--speed", type=float, default=0.5, help="latent px per latent frame")
    p.add_argument("--fixed-start", action="store_true")
    p.add_argument("--first-frame", action="store_true", help="condition on the clean first latent frame")
    p.add_argument("--samples", type=int, default=32)
    p.add_argument("--cfg", type=float, default=4.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--init", default="", help="start from this STDiT3 checkpoint (its EMA weights) instead of a fresh "
                                            "STDiT3-S/2, e.g. checkpoints/adapt/step8.pt; implies --varied-captions")
    p.add_argument("--through-vae", default="", help="draw the clips in pixels and train on this VAE's latents "
                                                  "(e.g. checkpoints/vae/stage3.pt); the direction is read after decoding")
    p.add_argument("--checker", action="store_true", help="with --through-vae: a random grey checkerboard behind "
                                                           "the square")
    p.add_argument("--varied-captions", action="store_true",
                   help="captions in the embedded world's style, with a random colour, shape, background and camera "
                        "sentence that the latents do not show (only the direction word matters)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)

    if args.init:
        args.varied_captions = True  # the embedded checkpoints read 64 caption tokens
    length = 64 if args.varied_captions else 16
    texts = varied_captions(80, args.seed) if args.varied_captions else [CAPTIONS]
    captions = MiniLMEncoder(model_max_length=length).encode([t for pair in texts for t in pair])
    n_train = max(len(texts) - 16, 1)  # the last 16 caption pairs are held out for sampling
    gen = torch.Generator().manual_seed(args.seed + 1)  # training draws: clips, then caption variants

    def kwargs(direction: torch.Tensor, held_out: bool = False) -> dict:
        n = len(direction)
        if len(texts) == 1:
            variant = torch.zeros(n, dtype=torch.long)
        elif held_out:
            variant = n_train + torch.arange(n) % (len(texts) - n_train)
        else:
            variant = torch.randint(0, n_train, (n,), generator=gen)
        row = 2 * variant + direction
        return dict(y=captions["y"][row].float(), mask=captions["mask"][row],
                    fps=torch.full((n,), 24.0), height=torch.full((n,), 48.0), width=torch.full((n,), 48.0),
                    num_frames=torch.full((n,), float(FRAMES)))

    if args.init:
        from opensora_lib.sample import load_model

        model, _ = load_model(args.init)
        model.requires_grad_(True)
        if model.rope is not None:
            model.rope.freqs.requires_grad_(False)
    else:
        model = STDiT3_S_2(model_max_length=length, class_dropout_prob=0.1)
    vae = None
    if args.through_vae:
        from opensora_lib.models.vae import load_vae

        vae = load_vae(args.through_vae).eval().requires_grad_(False)

    def to_vae_latents(pixels: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return vae.encode(pixels, sample_posterior=False).float()  # [n, 4, 5, 6, 6], the VAE's normalisation

    scheduler = RFlowScheduler(sample_method="logit-normal")
    opt = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=5e-4, eps=1e-15)
    start = time.perf_counter()
    losses = []
    model.train()
    for step in range(args.steps):
        clips, direction = make_batch(args.batch, args.speed, args.fixed_start, gen, pixels=vae is not None,
                                      background=args.checker)
        if vae is not None:
            clips = to_vae_latents(clips)
        mask = None
        if args.first_frame:  # False = a clean conditioning frame (kept as x_0, timestep 0, not in the loss)
            mask = torch.ones(args.batch, T, dtype=torch.bool)
            mask[:, 0] = False
        loss = scheduler.training_losses(model, clips, kwargs(direction), mask=mask)["loss"].mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        if step % 100 == 0 or step == args.steps - 1:
            print(f"step {step}: loss {loss.item():.4f} ({time.perf_counter() - start:.0f} s)", flush=True)

    model.eval()
    sampler = RFLOW(num_sampling_steps=30, cfg_scale=args.cfg)
    result = {"steps": args.steps, "fixed_start": args.fixed_start, "first_frame": args.first_frame,
              "speed": args.speed, "cfg": args.cfg,
              "final_loss": sum(losses[-20:]) / len(losses[-20:])}
    for d, name in enumerate(("left", "right")):
        n = args.samples
        k = kwargs(torch.full((n,), d), held_out=True)
        y, mask = k.pop("y"), k.pop("mask")
        z = torch.randn(n, C, T, H, W, generator=torch.Generator().manual_seed(args.seed + 7))
        frame_mask = None
        if args.first_frame:  # the first frame of clips that go either way, from the middle of the view
            reference, _ = make_batch(n, args.speed, True, torch.Generator().manual_seed(args.seed + 11),
                                      pixels=vae is not None, background=args.checker)
            if vae is not None:
                reference = to_vae_latents(reference)
            z[:, :, 0] = reference[:, :, 0]
            frame_mask = torch.ones(n, T)
            frame_mask[:, 0] = 0.0
        out = sampler.sample(model, z, y, mask, additional_args=k, mask=frame_mask, progress=False)
        if vae is None:
            dx = displacement(out)
        else:
            with torch.no_grad():
                dx = pixel_displacement(vae.decode(out.float(), num_frames=FRAMES).clamp(-1, 1), on_background=args.checker)
        result[name] = {"mean_dx": dx.mean().item(), "went_left": int((dx < -0.5).sum()),
                        "went_right": int((dx > 0.5).sum()), "n": n}
    result["seconds"] = time.perf_counter() - start
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
