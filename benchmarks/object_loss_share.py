r"""How much of a video model's eval loss falls on the moving object? (a diagnostic, not part of `make bench`)

The README's direction experiments ask whether the object is too small a part of each clip's loss for the model to
learn its direction. On the val clips of the synthetic world (48 px videos of at least 17 frames) this encodes the
first 17 frames with the VAE (the posterior mean, latents [C, 5, h, w]) and scores the rectified-flow loss per
latent cell at the eval grid's 10 timesteps (same noise per clip, the clip's own caption). A latent cell belongs to
the object when the object's pixels (its palette colour, read from the lossless clip) cover at least `--cover` of
the cell's 8x8 patch over the frames it encodes (latent frame 0: frame 0; latent frame k: frames 4k-3 .. 4k).

Prints one JSON line: clips, the object's share of the latent cells, its share of the loss (all timesteps and
t >= 500), and the ratio of the two.

    python -m benchmarks.object_loss_share --ckpt checkpoints/train/stage3/last.pt
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from opensora_lib.data.datasets import resize_crop
from opensora_lib.data.synthetic import PALETTE, read_csv
from opensora_lib.data.video_io import read_video
from opensora_lib.eval.loss_grid import EVAL_TIMESTEPS
from opensora_lib.models.text_encoder import MiniLMEncoder
from opensora_lib.models.vae import load_vae
from opensora_lib.sample import load_model
from opensora_lib.schedulers.rectified_flow import RFlowScheduler

NUM_FRAMES = 17


def object_cells(frames: np.ndarray, colours: list[tuple[int, int, int]], latent_shape: tuple[int, int, int],
                 cover: float) -> np.ndarray:
    """frames [T, H, W, 3] uint8 -> bool [t, h, w]: latent cells whose patch the object covers by at least `cover`."""
    mask = np.zeros(frames.shape[:3], bool)  # [T, H, W]
    for colour in colours:
        mask |= np.abs(frames.astype(np.int64) - np.array(colour)).sum(-1) <= 6
    t, h, w = latent_shape
    cells = np.zeros((t, h, w))
    for k in range(t):
        idx = [0] if k == 0 else list(range(4 * k - 3, 4 * k + 1))
        patch = mask[idx][:, : h * 8, : w * 8].reshape(len(idx), h, 8, w, 8)  # [F, h, 8, w, 8]
        cells[k] = patch.mean(axis=(0, 2, 4))
    return cells >= cover


@torch.no_grad()
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--vae", default="checkpoints/vae/stage3.pt")
    ap.add_argument("--val-csv", default="data/synthetic/val.csv")
    ap.add_argument("--cover", type=float, default=0.25)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    model, _ = load_model(args.ckpt)
    model.eval()
    vae = load_vae(args.vae)
    text_encoder = MiniLMEncoder(model_max_length=model.config["model_max_length"])
    scheduler = RFlowScheduler()
    rows = [r for r in read_csv(args.val_csv) if r["kind"] == "video" and r["res_name"] == "48px"
            and int(r["num_frames"]) >= NUM_FRAMES]
    area, share, share_high = [], [], []
    for row in rows:
        frames = np.asarray(read_video(row["path"], indices=list(range(NUM_FRAMES))))  # [T, H, W, 3]
        H, W = int(row["height"]), int(row["width"])
        x = vae.encode(resize_crop(frames, H, W)[None], sample_posterior=False).float()  # [1, C, t, h, w]
        _, C, t, h, w = x.shape
        colours = [PALETTE[row[f"obj{k}_color"]] for k in range(2) if row.get(f"obj{k}_color")]
        obj = torch.from_numpy(object_cells(frames, colours, (t, h, w), args.cover))  # [t, h, w]
        if not obj.any():
            continue
        enc = text_encoder.encode([row["text"]])
        kwargs = {"y": enc["y"].float(), "mask": enc["mask"], "height": torch.tensor([float(H)]),
                  "width": torch.tensor([float(W)]), "num_frames": torch.tensor([float(NUM_FRAMES)]),
                  "ar": torch.tensor([H / W]), "fps": torch.tensor([float(row["fps"])])}
        gen = torch.Generator().manual_seed(args.seed)
        total, high = torch.zeros(t, h, w), torch.zeros(t, h, w)
        for step in EVAL_TIMESTEPS:
            noise = torch.randn(x.shape, generator=gen)
            tt = torch.tensor([float(step)])
            velocity = model(scheduler.add_noise(x, noise, tt), tt, **kwargs)[:, :C]
            err = (velocity - (x - noise)).pow(2)[0].sum(0)  # [t, h, w]
            total += err
            if step >= 500:
                high += err
        area.append(float(obj.float().mean()))
        share.append(float(total[obj].sum() / total.sum()))
        share_high.append(float(high[obj].sum() / high.sum()))
    print(json.dumps({"ckpt": args.ckpt, "clips": len(area), "object_cells": float(np.mean(area)),
                      "loss_share": float(np.mean(share)), "loss_share_t500": float(np.mean(share_high)),
                      "ratio": float(np.mean(share) / np.mean(area))}))


if __name__ == "__main__":
    main()
