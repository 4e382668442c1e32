r"""Does guidance against the direction-swapped caption bring the sampled direction out?

A diagnostic for the embedded run's motion direction (README, "What the embedded run reaches"), not part of
`make bench` (about 3 minutes per setting on 2 cores). It samples the eval's 80 held-out prompts (the first 20 val
clip captions and 60 captions of unrendered world samples, as `notebooks/40_eval.ipynb` with `params/eval.yaml`) from a
trained checkpoint and scores them with the eval's detectors. With `--negative swap` each prompt's unconditional side
of classifier-free guidance is the same caption with the named (first) object's direction reversed ("left" <->
"right", "up" <-> "down"), so guidance amplifies exactly the difference the direction words make; prompts whose
object stays still keep the null caption. `--negative none` is the eval's own setting and reproduces its numbers.

    python -m benchmarks.direction_contrast --negative swap --cfg 8
"""

import argparse
import json
import re
import time
from pathlib import Path

import torch

from opensora_lib.data.synthetic import heldout_captions, read_csv
from opensora_lib.eval import scores
from opensora_lib.sample import generate

OPPOSITE = {"left": "right", "right": "left", "up": "down", "down": "up"}


def swap_first_direction(prompt: str) -> str:
    """The prompt with its first 'moves <speed> <direction>' reversed; unchanged when there is none."""
    return re.sub(r"moves (quickly|slowly) (left|right|up|down)",
                  lambda m: f"moves {m.group(1)} {OPPOSITE[m.group(2)]}", prompt, count=1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--negative", choices=("none", "swap"), default="swap")
    p.add_argument("--cfg", type=float, default=4.0)
    p.add_argument("--model", default="checkpoints/train/stage3/last.pt")
    p.add_argument("--vae", default="checkpoints/vae/stage3.pt")
    p.add_argument("--val-csv", default="data/synthetic/val.csv")
    p.add_argument("--out", default="reports/bench/direction_contrast")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    rows = read_csv(args.val_csv)
    prompts = [r["text"] for r in rows if r["kind"] == "video"][:20]
    prompts += heldout_captions(json.loads((Path(args.val_csv).parent / "world.json").read_text()), 60)
    negatives = None
    if args.negative == "swap":
        negatives = [swap_first_direction(q) if swap_first_direction(q) != q else "" for q in prompts]
    t0 = time.perf_counter()
    records = generate(dict(prompts=prompts, model=args.model, vae=args.vae,
                            out=f"{args.out}/{args.negative}_cfg{args.cfg:g}", name="heldout", resolution="48px",
                            aspect_ratio="1:1", num_frames=17, steps=30, cfg=args.cfg, seed=42, formats=("gif",),
                            negative_prompts=negatives, transform_base_resolution=16384, transform_frame_scale=6))
    results = scores.score_records(records)
    print(json.dumps({"negative": args.negative, "cfg": args.cfg, "colour": sum(r["color"] for r in results),
                      "prompts": len(results), "direction_where_colour_found": scores.motion_given_object_found(results),
                      "seconds": round(time.perf_counter() - t0, 1)}))


if __name__ == "__main__":
    main()
