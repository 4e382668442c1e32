r"""Does the embedded video engine learn a caption's motion direction, and on which data?

A diagnostic for the embedded run's motion direction (README, "What the embedded run reaches"), not part of
`make bench` (a run of the defaults took 8-27 minutes on one thread here, the most with first-use VAE encodes and
another job beside it). `benchmarks/toy_direction.py` trains STDiT3 in a plain loop; this
runs the real stage-1 engine (`opensora_lib.train.engine.VideoTrainer`: feature cache, mirroring, frame masks,
DeepSpeed bf16, timestep shift, EMA, the params of `params/train.yaml` stage 1) from the embedded adapt step 8, in
one 48 px 1:1 17-frame bucket, on clips written to a folder:

- ``--data toy``: the toy's clips (`toy_direction.make_batch`: a 16 px orange square on a grey checkerboard, every
  path starting in the middle, 1 px per frame left or right), captions in the world's style with a direction word;
  read back as the toy does (x displacement of the square's colour after decoding);
- ``--data world``: clips of the synthetic world (`synthetic.sample_spec` at 48 px 1:1, 17 frames: its colours,
  shapes, backgrounds and sizes) with the toy's motion: the first object starts in the middle of the frame on its
  axis of motion (``--start middle``; ``uniform`` keeps the whole path in view as the world does), 1 px per frame
  (``--speeds``: the world's 0.3-1.6), left or right (``--four``: also up, down and still), one object on a static
  camera (``--camera`` / ``--two``: the world's; ``--flat``: plain backgrounds). Read back with the eval's detectors
  (`eval.scores.semantic_result`) on held-out prompts of the same generator.

Every clip is drawn once (``--n`` clips, ``--steps`` x 16 samples: one pass at the defaults), as the toy's fresh
draws. ``--offset`` draws further clips and ``--init`` continues from an earlier run's checkpoint;
``--train-caption-projection`` / ``--freeze-caption-projection`` override ``freeze_y_embedder``; without either the
run follows `params/train.yaml` (which now trains it; the two-direction side runs that reached 24 of 32 ran with it
frozen, the default then).

    python -m benchmarks.engine_direction --data toy --dir /tmp/eng/toy
    python -m benchmarks.engine_direction --data world --dir /tmp/eng/w1
    python -m benchmarks.engine_direction --data world --dir /tmp/eng/w1b --offset 6400 --init /tmp/eng/w1/ckpt/last.pt
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from opensora_lib.data import synthetic as syn

FRAMES = 17
HELD_OUT_BASE = 1_000_000  # world indices of the held-out prompts (never drawn for training)


def world_walk_params(camera: bool = False, two: bool = False) -> syn.WorldParams:
    """The world at one size (48 px 1:1, 17 frames, 24 fps, no stills); a static camera and one object unless asked."""
    return syn.WorldParams(resolutions="48px:2304", aspect_ratios="1:1", min_frames=FRAMES, max_frames=FRAMES,
                           still_fraction=0.0, val_fraction=0.001, static_camera_fraction=0.3 if camera else 1.0,
                           two_object_fraction=0.3 if two else 0.0, fps_choices="24")


def world_walk_spec(params: syn.WorldParams, index: int, start: str = "middle", four: bool = False,
                    speeds: bool = False, flat: bool = False) -> syn.SampleSpec:
    """One world sample with the toy's motion (module doc). ``start``: "middle" puts the first object's centre in
    the middle of the frame along its axis of motion at frame 0 (anywhere across it), so the direction fixes where
    it is in every frame (it may leave the view partly by the last frame); "uniform" keeps its whole path in view.
    ``flat``: a plain background in the world's first background colour."""
    if start not in ("middle", "uniform"):
        raise ValueError(f"start must be 'middle' or 'uniform', got {start!r}")
    rng = np.random.default_rng([77, index])
    spec = syn.sample_spec(params, index)
    if flat:
        spec.background, spec.bg_color2 = "flat", ""
    motions = ["left", "right", "up", "down", "static"] if four else ["left", "right"]
    for obj in spec.objects:
        obj.motion = str(motions[rng.integers(len(motions))])
        obj.speed = 0.0 if obj.motion == "static" else (float(rng.uniform(0.3, 1.6)) if speeds else 1.0)
    for k, obj in enumerate(spec.objects):
        vx, _ = obj.velocity()
        margin = obj.size + 1.0
        for attempt in range(200):
            if start == "middle" and k == 0:  # middle on the axis of motion (vertical for still ones), anywhere across
                if vx != 0:
                    obj.x0, obj.y0 = spec.width / 2, float(rng.uniform(margin, spec.height - margin))
                else:
                    obj.x0, obj.y0 = float(rng.uniform(margin, spec.width - margin)), spec.height / 2
                break
            obj.x0 = float(rng.uniform(margin, spec.width - margin))
            obj.y0 = float(rng.uniform(margin, spec.height - margin))
            u, v, r = spec.view_positions(obj)
            if (u - r >= 0).all() and (u + r <= spec.width).all() and (v - r >= 0).all() and (
                    v + r <= spec.height).all():
                break
            if attempt % 20 == 19:  # no room at this speed: slow down, as the world's placement does
                obj.speed *= 0.8
    return spec


def _write_csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def _row(path: str, text: str) -> dict:
    # num_frames one above the file's: a bucket of T frames takes clips of more than T (the reference's rule); the
    # dataset reads the file's own 17 frames (probe), so the window is the whole clip
    return dict(path=path, text=text, num_frames=FRAMES + 1, height=48, width=48, aspect_ratio=1.0, fps=24)


def write_world(out: Path, n: int, offset: int = 0, start: str = "middle", four: bool = False, speeds: bool = False,
                camera: bool = False, two: bool = False, flat: bool = False, prompts_per_motion: int = 24) -> None:
    """``out``/clips/*.mp4, ``out``/train.csv and ``out``/prompts.json ({motion: held-out captions})."""
    from opensora_lib.data.video_io import write_video

    params = world_walk_params(camera, two)
    (out / "clips").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(offset, offset + n):
        spec = world_walk_spec(params, i, start, four, speeds, flat)
        path = out / "clips" / f"{i:06d}.mp4"
        write_video(path, syn.render(spec), fps=24)
        rows.append(_row(str(path), syn.make_caption(spec)))
    _write_csv(out / "train.csv", rows)
    prompts: dict[str, list[str]] = {}
    for i in range(HELD_OUT_BASE, HELD_OUT_BASE + 100 * prompts_per_motion):
        spec = world_walk_spec(params, i, start, four, speeds, flat)
        texts = prompts.setdefault(spec.objects[0].motion, [])
        if len(texts) < prompts_per_motion:
            texts.append(syn.make_caption(spec))
    (out / "prompts.json").write_text(json.dumps(prompts, indent=1))


def write_toy(out: Path, n: int, seed: int = 0) -> None:
    """The toy's fixed-start clips on a grey checkerboard, captions from `toy_direction.varied_captions` (the last 16
    pairs held out); ``out``/prompts.json holds the held-out pairs."""
    from benchmarks import toy_direction as toy
    from opensora_lib.data.video_io import write_video

    texts = toy.varied_captions(80, seed)
    n_train = len(texts) - 16
    gen = torch.Generator().manual_seed(seed + 1)
    (out / "clips").mkdir(parents=True, exist_ok=True)
    rows = []
    for first in range(0, n, 64):
        m = min(64, n - first)
        variant = torch.randint(0, n_train, (m,), generator=gen)
        clips, direction = toy.make_batch(m, 0.5, True, gen, pixels=True, background=True)  # [m, 3, 17, 48, 48]
        for i in range(m):
            path = out / "clips" / f"{first + i:06d}.mp4"
            frames = ((clips[i].permute(1, 2, 3, 0) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()
            write_video(path, frames, fps=24)  # [17, 48, 48, 3]
            rows.append(_row(str(path), texts[int(variant[i])][int(direction[i])]))
    _write_csv(out / "train.csv", rows)
    held = texts[n_train:]
    (out / "prompts.json").write_text(json.dumps({"left": [p[0] for p in held], "right": [p[1] for p in held]},
                                                 indent=1))


def stage1_config(out: Path, steps: int, batch: int, init: str, vae_ckpt: str, params_file: str = "params/train.yaml",
                  **overrides):
    """`params/train.yaml` stage 1 in one 48 px 1:1 17-frame bucket on ``out``/train.csv (``overrides``: further
    training params)."""
    import yaml

    from opensora_lib.train import engine

    with open(params_file) as f:
        params = yaml.safe_load(f)["train"]
    return engine.stage_config(params, 1, csv=str(out / "train.csv"), buckets={"48px": {FRAMES: [1.0, batch]}},
                               resolutions="48px:2304", aspect_ratios="1:1", steps=steps,
                               feature_cache=str(out / "features"), ckpt_dir=str(out / "ckpt"), threads=1, init=init,
                               vae_ckpt=vae_ckpt, window="fixed", **overrides)


@torch.no_grad()
def sample_prompts(model, text_encoder, vae, texts: list[str], cfg, guidance: float, seed: int = 7) -> torch.Tensor:
    """Decoded clips [n, 3, 17, 48, 48] of the prompts (30 steps, the stage's timestep transform)."""
    from opensora_lib.schedulers.rectified_flow import RFLOW

    enc = text_encoder.encode(texts)
    n = len(texts)
    sampler = RFLOW(num_sampling_steps=30, cfg_scale=guidance, use_timestep_transform=cfg.use_timestep_transform,
                    base_resolution=cfg.transform_base_resolution, frame_scale=cfg.transform_frame_scale)
    k = dict(fps=torch.full((n,), 24.0), height=torch.full((n,), 48.0), width=torch.full((n,), 48.0),
             num_frames=torch.full((n,), float(FRAMES)))
    z = torch.randn(n, 4, 5, 6, 6, generator=torch.Generator().manual_seed(seed))  # [n, C, T', h, w]
    out = sampler.sample(model, z, enc["y"], enc["mask"], additional_args=k, progress=False)
    return vae.decode(out.float(), num_frames=FRAMES).clamp(-1, 1)


def read_world(pixels: torch.Tensor, texts: list[str]) -> dict:
    """The eval's detectors on decoded clips: the first object found in its colour, and where found, the direction it
    was seen to move."""
    from opensora_lib.data.datasets import to_uint8
    from opensora_lib.eval.scores import semantic_result

    results = [semantic_result(to_uint8(pixels[i]), texts[i]) for i in range(len(texts))]
    found = [r for r in results if r.get("color")]
    return {"n": len(texts), "found": len(found), "right_way": sum(bool(r.get("motion")) for r in found),
            "seen": dict(Counter(str(r.get("detected_motion")) for r in found))}


def read_toy(pixels: torch.Tensor) -> dict:
    from benchmarks import toy_direction as toy

    dx = toy.pixel_displacement(pixels, on_background=True)
    return {"n": len(dx), "mean_dx": round(dx.mean().item(), 3), "went_left": int((dx < -0.5).sum()),
            "went_right": int((dx > 0.5).sum())}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", choices=["toy", "world"], required=True)
    p.add_argument("--dir", required=True, help="folder for the clips, features, checkpoint and result.json")
    p.add_argument("--n", type=int, default=6400, help="clips to draw")
    p.add_argument("--offset", type=int, default=0, help="(world) first sample index: further fresh clips")
    p.add_argument("--start", default="middle", choices=["middle", "uniform"])
    p.add_argument("--four", action="store_true")
    p.add_argument("--speeds", action="store_true")
    p.add_argument("--camera", action="store_true")
    p.add_argument("--two", action="store_true")
    p.add_argument("--flat", action="store_true", help="(world) plain backgrounds")
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--init", default="checkpoints/adapt/step8.pt")
    p.add_argument("--vae", default="checkpoints/vae/stage3.pt")
    p.add_argument("--cfg", default="4,7", help="guidance scales to sample at, comma-separated")
    projection = p.add_mutually_exclusive_group()
    projection.add_argument("--train-caption-projection", action="store_true",
                            help="freeze_y_embedder: false (default: as params/train.yaml)")
    projection.add_argument("--freeze-caption-projection", action="store_true",
                            help="freeze_y_embedder: true, as the reference (default: as params/train.yaml)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    out = Path(args.dir)
    if not (out / "train.csv").exists():
        if args.data == "toy":
            write_toy(out, args.n)
        else:
            write_world(out, args.n, args.offset, args.start, args.four, args.speeds, args.camera, args.two, args.flat)
    extra = ({"freeze_y_embedder": args.freeze_caption_projection}
             if args.train_caption_projection or args.freeze_caption_projection else {})
    cfg = stage1_config(out, args.steps, args.batch, args.init, args.vae, **extra)
    ckpt = out / "ckpt" / "last.pt"
    start = time.perf_counter()
    if not ckpt.exists():
        from opensora_lib.train import engine

        trainer = engine.VideoTrainer(cfg, progress=False)
        trainer.train(callback=lambda e: e["step"] % 50 == 0 and print(
            f"step {e['step']} loss {e['loss']:.4f} ({time.perf_counter() - start:.0f} s)", flush=True))
        trainer.save(ckpt)
    from opensora_lib.models.text_encoder import MiniLMEncoder
    from opensora_lib.models.vae import load_vae
    from opensora_lib.sample import load_model

    model, _ = load_model(ckpt)
    text_encoder = MiniLMEncoder(model_max_length=cfg.model_max_length)
    vae = load_vae(args.vae).eval()
    prompts = json.loads((out / "prompts.json").read_text())
    result = {"args": vars(args), "train_seconds": round(time.perf_counter() - start)}
    for g in [float(x) for x in args.cfg.split(",")]:
        for motion, texts in prompts.items():
            pixels = sample_prompts(model, text_encoder, vae, texts, cfg, g)
            result[f"cfg{g:g}/{motion}"] = read_toy(pixels) if args.data == "toy" else read_world(pixels, texts)
            print(f"cfg{g:g}/{motion}", result[f"cfg{g:g}/{motion}"], flush=True)
    (out / "result.json").write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
