r"""Can STDiT3-S/2 learn "moves left" vs "moves right" from text when that is all there is to learn?

A diagnostic for the embedded run's motion direction (README, "What the embedded run reaches"), not part of
`make bench` (it trains for minutes). Latents have the size of a 48 px, 17-frame clip ([4, 5, 6, 6]): a zero
background and a 2x2 blob of one fixed 4-channel colour that moves `--speed` latent px per latent frame to the left
or to the right (bilinear, so half-pixel steps show). The caption (MiniLM states) says which. A fresh STDiT3-S/2 is
trained with the rectified-flow loss (logit-normal t, no shift), then samples `--samples` clips per caption (30
Euler steps, guidance `--cfg`); the blob's x centroid in the first and last latent frame gives the direction.

`--fixed-start` starts every blob in the middle, so the direction fixes *where* the blob is in each frame; without
it the start is drawn uniformly among the positions that keep the whole path in view (as the world places its
objects), so a blob going right starts in the left half and ends in the right half, but its position in any one
frame is spread over 2 latent px and the middle frame's spread is the same for both captions. `--first-frame` gives
the model the clean first latent frame in training and sampling (image-to-video: frame mask, timestep 0 for that
frame), which makes the later frames' positions depend on the caption given that frame. `--varied-captions` writes
captions in the embedded world's style (colour, shape, background and camera words the latents do not show; 16
held-out variants for sampling); `--init` starts from an embedded checkpoint instead of a fresh model;
`--through-vae` draws the clips in pixels (a 16 px orange square, 1 px per frame) and trains on a VAE's latents,
reading the direction after decoding; `--checker` puts a random grey checkerboard behind the square;
`--world-colours` (with `--through-vae`) draws the square in the colour its caption names (eight palette colours a
grey checkerboard cannot hide) and also reads the direction colour-blind (saturation) and whether the colour is
right. `--bf16`, `--shift`, `--ema 0.99` and `--masks` train as the embedded video stages do (DeepSpeed's bf16: a
bf16 copy runs forward and backward, fp32 masters and optimizer; the stages' timestep transform in training and
sampling; sampling from an fp32 EMA; the stage-1 frame masks).

    python -m benchmarks.toy_direction --steps 400
    python -m benchmarks.toy_direction --steps 400 --fixed-start
    python -m benchmarks.toy_direction --steps 400 --fixed-start --bf16 --shift --ema 0.99 --masks
    python -m benchmarks.toy_direction --steps 400 --first-frame
    python -m benchmarks.toy_direction --steps 400 --first-frame --init checkpoints/adapt/step8.pt
    python -m benchmarks.toy_direction --steps 400 --first-frame --init checkpoints/adapt/step8.pt \
        --through-vae checkpoints/vae/stage3.pt --checker
    python -m benchmarks.toy_direction --steps 400 --fixed-start --init checkpoints/adapt/step8.pt \
        --through-vae checkpoints/vae/stage3.pt --checker --world-colours
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


def varied_captions(n: int, seed: int, object_colours: list[str] | None = None) -> list[tuple[str, str]]:
    """n (left, right) caption pairs written by the world's own `synthetic.make_caption` from its lists (`PALETTE`,
    `SHAPES`, `BACKGROUNDS`, `CAMERA_MOTIONS`): colour, shape, pace, background and camera vary, the direction word is
    the only difference within a pair. `object_colours` limits the object's colour word to these names."""
    import random

    from opensora_lib.data import synthetic
    rng = random.Random(seed)
    colours = list(synthetic.PALETTE)
    out = []
    for _ in range(n):
        if object_colours:
            c = rng.choice(object_colours)
            c2, c3 = rng.sample([x for x in colours if x != c], 2)
        else:
            c, c2, c3 = rng.sample(colours, 3)
        back = rng.choice(synthetic.BACKGROUNDS)
        camera = rng.choice(synthetic.CAMERA_MOTIONS)
        speed = synthetic.FAST_SPEED * (1.0 if rng.choice(["slowly", "quickly"]) == "quickly" else 0.5)
        shape = rng.choice(synthetic.SHAPES)
        spec = synthetic.SampleSpec(  # only what the caption reads; the rest is never rendered
            id=0, split="train", kind="video", res_name="", ratio_key="", height=48, width=48, num_frames=FRAMES,
            fps=24, background=back, bg_color=c2, bg_color2="" if back == "flat" else c3, bg_angle=0.0, bg_period=0.0,
            camera_motion=camera, camera_speed=0.0)
        pair = []
        for d in ("left", "right"):
            spec.objects = [synthetic.ObjectSpec(shape, c, d, speed, 0.0, 0.0, 0.0)]
            pair.append(synthetic.make_caption(spec))
        out.append(tuple(pair))
    return out


def make_batch(n: int, speed: float, fixed_start: bool, gen: torch.Generator,
               pixels: bool = False, background: bool = False,
               colours: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """n clips [n, C, T, H, W] (`pixels`: [n, 3, FRAMES, 8H, 8W]) and their directions [n] (0 left, 1 right); every blob
    stays in view. `colours` [n, 3] in [-1, 1]: each pixel square's colour (default `PIXEL_COLOUR`)."""
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
                                           background=checker_background(gen) if background else None,
                                           colour=None if colours is None else colours[i])
                             for i in range(n)])
    else:
        clips = torch.stack([render(float(x0[i]), int(y0[i]), float(v[i])) for i in range(n)])
    return clips, direction


PIXEL_COLOUR = torch.tensor([1.0, 0.3, -0.6])  # orange on black, in [-1, 1]
# --world-colours: the world's palette minus what a grey checkerboard (levels in [-1, 0.2]) would hide
WORLD_TOY_COLOURS = ["red", "green", "blue", "yellow", "orange", "purple", "pink", "cyan"]


def palette_rgb(names: list[str]) -> torch.Tensor:
    """World palette colours by name, as RGB in [-1, 1] [len(names), 3]."""
    from opensora_lib.data import synthetic
    return torch.tensor([synthetic.PALETTE[c] for c in names], dtype=torch.float32) / 127.5 - 1.0


def caption_colours(pairs: list[tuple[str, str]]) -> torch.Tensor:
    """The object colour each (left, right) caption pair names, as RGB in [-1, 1] [pairs, 3]."""
    from opensora_lib.data import synthetic
    return palette_rgb([synthetic.parse_caption(left)["objects"][0]["color"] for left, _ in pairs])


def render_pixels(x0: float, y0: int, v: float, background: torch.Tensor | None = None,
                  colour: torch.Tensor | None = None) -> torch.Tensor:
    """The clip `render` describes, drawn in pixels [3, FRAMES, 8H, 8W] (48 px, 17 frames) for the VAE: a 16x16 px
    square whose left edge is at 8 * (x0 + v * f / 4) px in frame f (4 pixel frames per latent frame), on black or
    on a still `background` [3, 8H, 8W]; `colour` [3] in [-1, 1] (default `PIXEL_COLOUR`)."""
    colour = PIXEL_COLOUR if colour is None else colour
    out = torch.full((3, FRAMES, 8 * H, 8 * W), -1.0)
    if background is not None:
        out[:] = background[:, None]
    xs = torch.arange(8 * W, dtype=torch.float32) + 0.5
    rows = ((torch.arange(8 * H) >= 8 * y0) & (torch.arange(8 * H) < 8 * y0 + 16)).float()  # [8H]
    for f in range(FRAMES):
        left = 8 * (x0 + v * f / 4)
        cover = ((xs - left).clamp(0, 1) * (left + 16 - xs).clamp(0, 1))  # [8W], antialiased edges
        alpha = rows[:, None] * cover[None, :]  # [8H, 8W]
        out[:, f] = out[:, f] * (1 - alpha[None]) + alpha[None] * colour[:, None, None]
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


def pixel_displacement(pixels: torch.Tensor, on_background: bool = False,
                       colours: torch.Tensor | None = None) -> torch.Tensor:
    """x centroid of the square's colour in the last pixel frame minus the first, in latent px (/8), per clip [n].
    `on_background`: weigh pixels by closeness to the square's colour (grey backgrounds are far from it);
    `colours` [n, 3]: each clip's square colour, weighed by closeness (within 0.5 in [-1, 1] units)."""
    if colours is not None or on_background:
        ref, radius = (colours, 0.5) if colours is not None else (PIXEL_COLOUR[None], 0.8)  # [n or 1, 3]
        dist = (pixels - ref[:, :, None, None, None]).norm(dim=1)  # [n, F, 8H, 8W]
        mass = (1 - dist / radius).clamp(min=0)
    else:
        mass = ((pixels + 1.0) * (PIXEL_COLOUR[None, :, None, None, None] + 1.0)).sum(1).clamp(min=0)  # [n, F, 8H, 8W]
    return _x_shift(mass)


def _x_shift(mass: torch.Tensor) -> torch.Tensor:
    """x centroid of `mass` [n, F, 8H, 8W] in the last pixel frame minus the first, in latent px (/8) [n]."""
    cx = (mass.sum(2) * torch.arange(mass.shape[-1], dtype=torch.float32)).sum(-1) / mass.sum((2, 3)).clamp(min=1e-6)
    return (cx[:, -1] - cx[:, 0]) / 8


def saturated_displacement(pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Colour-blind read-back for --world-colours: the square is the only saturated thing on a grey checkerboard, so
    mass = saturation (max - min channel, above 0.3). Returns the x displacement (latent px, last pixel frame minus
    first) [n] and the mean colour of the saturated pixels [n, 3]."""
    sat = pixels.amax(1) - pixels.amin(1)  # [n, F, 8H, 8W]
    mass = (sat - 0.3).clamp(min=0)
    colour = (pixels * mass[:, None]).sum((2, 3, 4)) / mass[:, None].sum((2, 3, 4)).clamp(min=1e-6)  # [n, 3]
    return _x_shift(mass), colour


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
    p.add_argument("--world-colours", action="store_true",
                   help="with --through-vae: the square takes the colour its caption names (the world's palette, "
                        "minus the greys and brown that a grey checkerboard would hide), so the caption's colour word "
                        "matters too, as in the world")
    p.add_argument("--bf16", action="store_true",
                   help="train as the embedded video stages do (DeepSpeed bf16): forward and backward in a bf16 copy "
                        "of the model, fp32 master weights and optimizer; sampling in fp32")
    p.add_argument("--shift", action="store_true",
                   help="the embedded video stages' timestep transform in training and sampling (params/train.yaml: "
                        "base 128x128 px, frame scale 6, so a 48 px 17-frame clip gets r = 2.05, t shifted towards "
                        "noise)")
    p.add_argument("--ema", type=float, default=0.0,
                   help="sample with an fp32 EMA of the weights at this decay (the video stages: 0.99); 0 = raw weights")
    p.add_argument("--masks", action="store_true",
                   help="the video stage-1 frame masks (20%% of samples get clean conditioning frames)")
    args = p.parse_args(argv)
    if args.world_colours and not args.through_vae:
        p.error("--world-colours draws pixels: it needs --through-vae")
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)

    if args.init or args.world_colours:
        args.varied_captions = True  # the embedded checkpoints read 64 caption tokens; world colours need the words
    length = 64 if args.varied_captions else 16
    texts = (varied_captions(80, args.seed, WORLD_TOY_COLOURS if args.world_colours else None)
             if args.varied_captions else [CAPTIONS])
    # the square's colour per caption pair [pairs, 3] (None: PIXEL_COLOUR for every clip)
    pair_rgb = caption_colours(texts) if args.world_colours else None
    captions = MiniLMEncoder(model_max_length=length).encode([t for pair in texts for t in pair])
    n_train = max(len(texts) - 16, 1)  # the last 16 caption pairs are held out for sampling
    gen = torch.Generator().manual_seed(args.seed + 1)  # training draws: clips, then caption variants

    def pick_variants(n: int, held_out: bool = False) -> torch.Tensor:
        if len(texts) == 1:
            return torch.zeros(n, dtype=torch.long)
        if held_out:
            return n_train + torch.arange(n) % (len(texts) - n_train)
        return torch.randint(0, n_train, (n,), generator=gen)

    def kwargs(direction: torch.Tensor, variant: torch.Tensor | None = None) -> dict:
        n = len(direction)
        if variant is None:  # a training draw
            variant = pick_variants(n)
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

    stage_params = None
    if args.shift or args.masks:  # the video stages' settings, as params/train.yaml gives them
        import yaml

        with open("params/train.yaml") as f:
            stage_params = yaml.safe_load(f)["train"]
    shift = {}
    if args.shift:
        common = stage_params["common"]
        shift = dict(use_timestep_transform=True, base_resolution=common["transform_base_resolution"],
                     frame_scale=common["transform_frame_scale"])
    scheduler = RFlowScheduler(sample_method="logit-normal", **shift)
    ema = None
    if args.ema:
        from opensora_lib.train.engine import EMA

        ema = EMA(model)
    mask_gen = None
    if args.masks:
        import random

        from opensora_lib.schedulers.masks import MaskGenerator
        from opensora_lib.train.engine import canonical_mask_ratios

        ratios = stage_params["stages"]["1"]["mask_ratios"]
        mask_gen = MaskGenerator(canonical_mask_ratios(ratios), rng=random.Random(args.seed + 3))
    opt = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=5e-4, eps=1e-15)
    work = model  # the copy that runs forward / backward: the fp32 model itself, or its bf16 copy (--bf16)
    if args.bf16:
        import copy

        work = copy.deepcopy(model).to(torch.bfloat16)
    start = time.perf_counter()
    losses = []
    model.train()
    work.train()
    for step in range(args.steps):
        variant = pick_variants(args.batch) if pair_rgb is not None else None  # the caption first: it names the colour
        clips, direction = make_batch(args.batch, args.speed, args.fixed_start, gen, pixels=vae is not None,
                                      background=args.checker,
                                      colours=None if variant is None else pair_rgb[variant])
        if vae is not None:
            clips = to_vae_latents(clips)
        mask = None
        if args.first_frame:  # False = a clean conditioning frame (kept as x_0, timestep 0, not in the loss)
            mask = torch.ones(args.batch, T, dtype=torch.bool)
            mask[:, 0] = False
        elif mask_gen is not None:
            mask = mask_gen.get_masks(clips)  # [B, T] bool
        if work is not model:  # bf16 weights from the fp32 masters, as DeepSpeed's bf16 optimizer keeps them
            with torch.no_grad():
                for w, m in zip(work.parameters(), model.parameters()):
                    w.copy_(m)
        loss = scheduler.training_losses(work, clips, kwargs(direction, variant=variant), mask=mask)["loss"].mean()
        opt.zero_grad(set_to_none=True)
        work.zero_grad(set_to_none=True)
        loss.backward()
        if work is not model:
            for w, m in zip(work.parameters(), model.parameters()):
                m.grad = None if w.grad is None else w.grad.float()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if ema is not None:
            ema.update(model, args.ema)
        losses.append(loss.item())
        if step % 100 == 0 or step == args.steps - 1:
            print(f"step {step}: loss {loss.item():.4f} ({time.perf_counter() - start:.0f} s)", flush=True)

    if ema is not None:
        model = ema.model
    model.eval()
    sampler = RFLOW(num_sampling_steps=30, cfg_scale=args.cfg, **shift)
    result = {"steps": args.steps, "fixed_start": args.fixed_start, "first_frame": args.first_frame, "bf16": args.bf16,
              "shift": args.shift, "ema": args.ema, "masks": args.masks,
              "speed": args.speed, "cfg": args.cfg,
              "final_loss": sum(losses[-20:]) / len(losses[-20:])}
    for d, name in enumerate(("left", "right")):
        n = args.samples
        variant = pick_variants(n, held_out=True)
        colours = None if pair_rgb is None else pair_rgb[variant]
        k = kwargs(torch.full((n,), d), variant=variant)
        y, mask = k.pop("y"), k.pop("mask")
        z = torch.randn(n, C, T, H, W, generator=torch.Generator().manual_seed(args.seed + 7))
        frame_mask = None
        if args.first_frame:  # the first frame of clips that go either way, from the middle of the view
            reference, _ = make_batch(n, args.speed, True, torch.Generator().manual_seed(args.seed + 11),
                                      pixels=vae is not None, background=args.checker, colours=colours)
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
                pixels = vae.decode(out.float(), num_frames=FRAMES).clamp(-1, 1)
            dx = pixel_displacement(pixels, on_background=args.checker, colours=colours)
        result[name] = {"mean_dx": dx.mean().item(), "went_left": int((dx < -0.5).sum()),
                        "went_right": int((dx > 0.5).sum()), "n": n}
        if colours is not None:  # also read colour-blind, and whether the square has its caption's colour
            sdx, seen = saturated_displacement(pixels)
            nearest = pair_rgb[torch.cdist(seen, pair_rgb).argmin(1)]  # the caption colour closest to what was drawn
            right_colour = (nearest - colours).norm(dim=1) < 1e-6
            result[name].update(saturated={"mean_dx": sdx.mean().item(), "went_left": int((sdx < -0.5).sum()),
                                           "went_right": int((sdx > 0.5).sum())},
                                colour_right=int(right_colour.sum()))
    result["seconds"] = time.perf_counter() - start
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
