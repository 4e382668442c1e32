"""Getting pixels out of a dataset CSV into training tensors.

- `resize_crop`: Open-Sora's "resize_crop" transform: resize so the frame covers the target size (bicubic), then
  centre-crop; values mapped to [-1, 1].
- `ClipBank`: every clip of a (small) CSV decoded once into memory, with seeded random batches of fixed-length
  windows and crops. This is what the VAE stages train on: the embedded dataset is ~100 MB of uint8 pixels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .synthetic import read_csv
from .video_io import read_video


def to_tensor(frames: np.ndarray) -> torch.Tensor:
    """uint8 [T, H, W, 3] -> float [3, T, H, W] in [-1, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(frames)).float()  # [T, H, W, 3]
    return x.permute(3, 0, 1, 2).div(127.5).sub(1.0)  # [3, T, H, W]


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """float [3, T, H, W] in [-1, 1] -> uint8 [T, H, W, 3]."""
    x = x.detach().float().clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8)
    return x.permute(1, 2, 3, 0).cpu().numpy()


def resize_crop(frames: np.ndarray, height: int, width: int) -> torch.Tensor:
    """Resize-to-cover then centre-crop to (height, width). uint8 [T, H, W, 3] -> float [3, T, h, w] in [-1, 1]."""
    t, h, w, _ = frames.shape
    x = to_tensor(frames).permute(1, 0, 2, 3)  # [T, 3, H, W]
    scale = max(height / h, width / w)
    new_h, new_w = max(height, round(h * scale)), max(width, round(w * scale))
    if (new_h, new_w) != (h, w):
        x = F.interpolate(x, size=(new_h, new_w), mode="bicubic", align_corners=False, antialias=True)
    top, left = (new_h - height) // 2, (new_w - width) // 2
    x = x[:, :, top:top + height, left:left + width].clamp(-1, 1)  # [T, 3, h, w]
    return x.permute(1, 0, 2, 3).contiguous()  # [3, T, h, w]


class ClipBank:
    """All clips of a CSV in memory (uint8), and seeded random batches drawn from them."""

    def __init__(self, csv_path: str | Path, progress: bool = True, limit: int | None = None):
        self.rows = read_csv(csv_path)[:limit]
        self.clips = [read_video(r["path"]) for r in tqdm(self.rows, desc=f"decode {Path(csv_path).name}",
                                                           disable=not progress)]
        self.lengths = np.array([len(c) for c in self.clips])

    def __len__(self) -> int:
        return len(self.clips)

    def min_side(self) -> int:
        return int(min(min(c.shape[1], c.shape[2]) for c in self.clips))

    def eligible(self, num_frames: int, videos_only: bool = False) -> np.ndarray:
        ok = self.lengths >= num_frames
        if videos_only:
            ok &= self.lengths > 1
        return np.nonzero(ok)[0]

    def window(self, index: int, num_frames: int, start: int = 0, crop: int | None = None,
               top: int | None = None, left: int | None = None) -> torch.Tensor:
        """Frames [start, start+num_frames) of clip ``index``, centre-cropped (or at top/left) to crop x crop.
        Returns float [3, T, h, w] in [-1, 1]."""
        clip = self.clips[index][start:start + num_frames]
        if crop is not None:
            h, w = clip.shape[1:3]
            top = (h - crop) // 2 if top is None else top
            left = (w - crop) // 2 if left is None else left
            clip = clip[:, top:top + crop, left:left + crop]
        return to_tensor(clip)

    def sample(self, rng: np.random.Generator, batch_size: int, num_frames: int, crop: int,
               videos_only: bool = False) -> torch.Tensor:
        """A batch [B, 3, T, crop, crop] of random windows and crops from clips with at least T frames."""
        pool = self.eligible(num_frames, videos_only and num_frames > 1)
        if len(pool) == 0:
            raise ValueError(f"no clip has {num_frames} frames (longest: {self.lengths.max()})")
        out = []
        for index in rng.choice(pool, size=batch_size):
            clip = self.clips[index]
            start = int(rng.integers(0, len(clip) - num_frames + 1))
            top = int(rng.integers(0, clip.shape[1] - crop + 1))
            left = int(rng.integers(0, clip.shape[2] - crop + 1))
            out.append(self.window(int(index), num_frames, start, crop, top, left))
        return torch.stack(out)  # [B, 3, T, crop, crop]
