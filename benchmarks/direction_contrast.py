r"""Does guidance against the direction-swapped caption bring the sampled direction out?

A diagnostic for the embedded run's motion direction (README, "What the embedded run reaches"), not part of
`make bench` (about 3 minutes per setting on 2 cores). It samples the eval's 80 held-out prompts (the first 20 val
clip captions and 60 captions of unrendered world samples, as `notebooks/40_eval.ipynb` with `params/eval.yaml`) from a
trained checkpoint and scores them with the eval's detectors; resolution, length, steps, seed and timestep transform
are read from `params/eval.yaml`. With `--negative swap` each prompt's unconditional side of classifier-free guidance
is the same caption with the named (first) object's direction reversed: the caption-sensitivity probe's own swap
(`opensora_lib.eval.sensitivity.swap_factor`), so guidance amplifies exactly the difference the probe measures;
prompts whose object stays still keep the null caption. With `--negative still` the negative is the caption with the
named object standing still (guidance then amplifies what the motion words add). `--negative none` is the eval's own
setting and reproduces its numbers. Besides the direction it prints how far the found movers move
(`scores.mover_speed`, px/frame; the world draws them at 0.8-1.6).

    python -m benchmarks.direction_contrast --negative swap --cfg 8
    python -m benchmarks.direction_contrast --negative still --cfg 4
"""

import argparse
import json
import time
from pathlib import Path

import torch
import yaml

from opensora_lib.data.synthetic import heldout_captions, read_csv
from opensora_lib.eval import scores
from opensora_lib.eval.sensitivity import still_caption, swap_factor
from opensora_lib.sample import generate


def direction_negatives(prompts: list[str]) -> list[str]:
    """Per prompt, the caption with the named object's direction reversed, or '' (the null caption) where the
    object stays still."""
    return [swap_factor(q, "motion") or "" for q in prompts]


def still_negatives(prompts: list[str]) -> list[str]:
    """Per prompt, the caption with the named (first) object standing still (`sensitivity.still_caption`), or ''
    where it already stays still."""
    return [still_caption(q) or "" for q in prompts]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--negative", choices=("none", "swap", "still"), default="swap")
    p.add_argument("--cfg", type=float, default=4.0)
    p.add_argument("--params", default="params/eval.yaml")
    p.add_argument("--model", default="checkpoints/train/stage3/last.pt")
    p.add_argument("--out", default="reports/bench/direction_contrast")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    ev = yaml.safe_load(Path(args.params).read_text())["eval"]
    rows = read_csv(ev["val_csv"])
    prompts = [r["text"] for r in rows if r["kind"] == "video"][: int(ev["num_prompts"])]
    world = json.loads((Path(ev["val_csv"]).parent / "world.json").read_text())
    prompts += heldout_captions(world, int(ev["heldout_prompts"]))
    negatives = None if args.negative == "none" else \
        {"swap": direction_negatives, "still": still_negatives}[args.negative](prompts)
    t0 = time.perf_counter()
    records = generate(dict(prompts=prompts, model=args.model, vae=ev["vae_ckpt"],
                            out=f"{args.out}/{args.negative}_cfg{args.cfg:g}", name="heldout",
                            resolution=ev["resolution"], aspect_ratio=ev["aspect_ratio"],
                            num_frames=int(ev["num_frames"]), steps=int(ev["steps"]), cfg=args.cfg,
                            seed=int(ev["seed"]), formats=("gif",), negative_prompts=negatives,
                            transform_base_resolution=int(ev["transform_base_resolution"]),
                            transform_frame_scale=float(ev["transform_frame_scale"])))
    results = scores.score_records(records)
    print(json.dumps({"negative": args.negative, "cfg": args.cfg, "colour": sum(r["color"] for r in results),
                      "prompts": len(results), "direction_where_colour_found": scores.motion_given_object_found(results),
                      "movers": scores.mover_speed(results),
                      "seconds": round(time.perf_counter() - t0, 1)}))


if __name__ == "__main__":
    main()
