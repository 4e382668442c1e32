"""The video training dataset over an Open-Sora CSV (facts §5, `VariableVideoTextDataset`).

A sample is asked for in a bucket size (T, H, W) chosen by `buckets.BucketSampler`:

- frames: a window of ``T * frame_interval`` consecutive frames at a random start, from which T frames are taken
  by linspace (rounded down); a clip shorter than the window gives the whole clip, linspace-sampled;
- pixels: resize to cover (H, W) (bicubic, antialiased), centre crop, values in [-1, 1] (`datasets.resize_crop`);
- fps: the clip's fps // frame_interval; 120 for still images (Open-Sora's IMG_FPS);
- caption: the CSV text plus score conditioning from the ``aes``, ``flow`` and ``cmotion`` columns where present,
  each part left out with probability ``score_drop_prob`` (0.2): ``"<text> [aesthetic score: 5.5, motion score:
  3.0] Camera motion: pan left."`` (the reference writes these offline with `datautil.py --score-to-text` and
  ``--merge-cmotion``; we draw them per sample and epoch, so every epoch sees a fresh choice).

All randomness is seeded from (seed, epoch, row): the same call gives the same sample in every process and run.
``window="fixed"`` draws the frame window from (seed, row, T) only, so a sample's frames are the same every epoch
(what makes cached latents reusable); ``"random"`` redraws it per epoch like the reference; ``"head"`` (ours)
always takes the clip's first frames, so a clip's start is the start of every window of it.

Mirroring (ours, off by default; the reference has no caption-aware flips): with ``hflip_prob`` / ``vflip_prob`` a
sample is mirrored left-right / top-bottom, drawn per (seed, epoch, row), and its caption's direction words are
swapped to match ("moves left" -> "moves right", "pan left" -> "pan right"; "up" <-> "down" for the vertical
flip). This is only right for captions that name directions in the frame, as the synthetic world's do: the
clip and the caption of its mirror image are a pair that differs in the direction alone. `flips` gives the draw,
`caption` and `get` apply it; a feature cache keeps unmirrored latents and mirrors them (`train.features`).

Bad files: with ``on_error="fail"`` a missing, empty or corrupt file raises `SampleError` naming the CSV row and
the file; with ``"skip"`` the row is left out, a warning is logged and a JSON line ``{"row", "path", "error",
"when"}`` is appended to the rejects file. ``validate=True`` probes every file when the dataset is built, so bad
rows are known before any bucket is formed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import re
from pathlib import Path

import numpy as np
import torch

from ..models.text_encoder import DROP_SCORE_PROB, merge_cmotion, score_to_text
from .datasets import resize_crop
from .synthetic import read_csv
from .video_io import VideoFileError, is_image_path, probe_video, read_video

log = logging.getLogger(__name__)

IMAGE_FPS = 120
ON_ERROR = ("fail", "skip")
_MIRROR_WORDS = {"h": {"left": "right", "right": "left"}, "v": {"up": "down", "down": "up"}}
_DIRECTION_WORD = re.compile(r"(?<![A-Za-z])(left|right|up|down)(?![A-Za-z])")


def mirror_caption(text: str, horizontal: bool, vertical: bool) -> str:
    """The caption of the mirrored clip: left <-> right when mirrored left-right, up <-> down when mirrored
    top-bottom (whole words, also inside labels like "pan_left")."""
    swap = {**(_MIRROR_WORDS["h"] if horizontal else {}), **(_MIRROR_WORDS["v"] if vertical else {})}
    if not swap:
        return text
    return _DIRECTION_WORD.sub(lambda m: swap.get(m.group(1), m.group(1)), text)


def derive_seed(*parts: int) -> int:
    """A 63-bit seed mixed from integers (numpy SeedSequence): stable across processes and Python runs."""
    words = np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts] + [len(parts)]).generate_state(2)
    return int((int(words[0]) << 31) ^ int(words[1])) & ((1 << 63) - 1)


class SampleError(RuntimeError):
    """A dataset row whose file cannot be used; the message names the row and the file."""

    def __init__(self, row: int, path: str, reason: str, csv_path: str | None = None):
        self.row, self.path, self.reason = row, path, reason
        where = f"row {row}" + (f" of {csv_path}" if csv_path else "")
        super().__init__(f"{where}: {path}: {reason}")


def _number(value) -> float | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = value.strip()
        if value == "" or value.lower() == "nan":
            return None
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(x) else x


def cmotion_label(value) -> str | None:
    """CSV camera-motion value -> the label `merge_cmotion` knows ("zoom out" -> "zoom_out"); None if empty."""
    if not isinstance(value, str) or not value.strip():
        return None
    return value.strip().lower().replace(" ", "_")


def mirror(x: torch.Tensor, horizontal: bool, vertical: bool) -> torch.Tensor:
    """Mirror [..., H, W] pixels or latents left-right (last axis) and / or top-bottom (second last)."""
    dims = ([-1] if horizontal else []) + ([-2] if vertical else [])
    return x.flip(dims) if dims else x


def frame_window(total: int, num_frames: int, frame_interval: int, rng: np.random.Generator | None) -> np.ndarray:
    """Open-Sora's temporal random crop: a window of num_frames*frame_interval frames (the whole clip if shorter)
    starting at a random frame in [0, max(0, total - size - 1)] (the reference's range: the last possible start is
    never drawn), then num_frames indices by linspace, rounded down. ``rng=None``: the window starts at frame 0."""
    size = num_frames * frame_interval
    start = 0 if rng is None else int(rng.integers(0, max(0, total - size - 1) + 1))
    end = min(start + size, total)
    return np.linspace(start, end - 1, num_frames).astype(np.int64)


class VideoTextDataset:
    """Rows of an Open-Sora CSV as training samples in bucket sizes (see module doc)."""

    def __init__(
        self,
        csv_path: str | os.PathLike,
        frame_interval: int = 1,
        seed: int = 0,
        window: str = "random",
        score_drop_prob: float = DROP_SCORE_PROB,
        use_scores: bool = True,
        on_error: str = "fail",
        rejects_path: str | os.PathLike | None = None,
        validate: bool = True,
        write_rejects: bool = True,
        hflip_prob: float = 0.0,
        vflip_prob: float = 0.0,
    ):
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
        if window not in ("random", "fixed", "head"):
            raise ValueError(f"window must be 'random', 'fixed' or 'head', got {window!r}")
        self.csv_path = str(csv_path)
        self.rows = read_csv(csv_path)
        self.frame_interval = int(frame_interval)
        self.seed = int(seed)
        self.window = window
        self.score_drop_prob = float(score_drop_prob)
        self.use_scores = use_scores
        for name, value in (("hflip_prob", hflip_prob), ("vflip_prob", vflip_prob)):
            if not 0.0 <= float(value) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value!r}")
        self.hflip_prob = float(hflip_prob)
        self.vflip_prob = float(vflip_prob)
        self.on_error = on_error
        self.rejects_path = Path(rejects_path) if rejects_path else None
        self.write_rejects = write_rejects  # only one process of a distributed run writes the file
        self.rejected: dict[int, str] = {}
        self.num_frames_in_file: dict[int, int] = {}
        self._file_hashes: dict[int, str] = {}
        self.columns = set(self.rows[0]) if self.rows else set()
        if validate:
            self.validate()

    def __len__(self) -> int:
        return len(self.rows)

    # -- errors -------------------------------------------------------------------------------
    def _bad(self, row_id: int, err: Exception, when: str) -> None:
        path = self.rows[row_id]["path"]
        reason = err.reason if isinstance(err, VideoFileError) else f"{type(err).__name__}: {err}"
        if self.on_error == "fail":
            raise SampleError(row_id, path, reason, self.csv_path) from err
        if row_id in self.rejected:
            return
        self.rejected[row_id] = reason
        log.warning("skipping row %d of %s: %s: %s", row_id, self.csv_path, path, reason)
        if self.rejects_path is not None and self.write_rejects:
            self.rejects_path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.rejects_path, "a") as f:
                f.write(json.dumps({"csv": self.csv_path, "row": row_id, "path": path, "error": reason,
                                    "when": when}) + "\n")

    def validate(self) -> dict[int, str]:
        """Probe every file (container, stream, frame count); apply the error policy. Returns the rejected rows."""
        for row_id, row in enumerate(self.rows):
            try:
                info = probe_video(row["path"])
                self.num_frames_in_file[row_id] = int(info["num_frames"])
            except (VideoFileError, OSError, ValueError) as err:
                self._bad(row_id, err, "probe")
        return dict(self.rejected)

    # -- metadata -----------------------------------------------------------------------------
    def size(self, row_id: int) -> tuple[int, int, int] | None:
        """(T, H, W) of a row as the CSV states it; None for rejected rows."""
        if row_id in self.rejected:
            return None
        row = self.rows[row_id]
        try:
            return int(float(row["num_frames"])), int(float(row["height"])), int(float(row["width"]))
        except (TypeError, ValueError) as err:
            self._bad(row_id, ValueError(f"bad num_frames/height/width in the CSV: {err}"), "csv")
            return None

    def sizes(self) -> list[tuple[int, int, int] | None]:
        return [self.size(i) for i in range(len(self.rows))]

    def is_image(self, row_id: int) -> bool:
        return is_image_path(self.rows[row_id]["path"])

    def fps(self, row_id: int) -> int:
        """fps given to the model: the clip's fps // frame_interval, 120 for images."""
        if self.is_image(row_id):
            return IMAGE_FPS
        fps = _number(self.rows[row_id].get("fps"))
        if fps is None:
            fps = probe_video(self.rows[row_id]["path"])["fps"] or 24
        return int(fps) // self.frame_interval

    def file_hash(self, row_id: int) -> str:
        """sha1 of the file's bytes (memoised): the identity of the pixels in feature-cache keys."""
        if row_id not in self._file_hashes:
            h = hashlib.sha1()
            with open(self.rows[row_id]["path"], "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
            self._file_hashes[row_id] = h.hexdigest()
        return self._file_hashes[row_id]

    # -- sampling -----------------------------------------------------------------------------
    def frame_indices(self, row_id: int, num_frames: int, epoch: int) -> np.ndarray:
        """Indices of the frames a (row, bucket frames, epoch) sample takes."""
        if num_frames == 1 and self.is_image(row_id):
            return np.zeros(1, dtype=np.int64)
        total = self.num_frames_in_file.get(row_id)
        if total is None:
            total = int(float(self.rows[row_id]["num_frames"]))
        if self.window == "head":
            return frame_window(total, num_frames, self.frame_interval, None)
        if self.window == "fixed":
            rng = np.random.default_rng(derive_seed(self.seed, row_id, num_frames, 0x5749))
        else:
            rng = np.random.default_rng(derive_seed(self.seed, epoch, row_id, num_frames, 0x5749))
        return frame_window(total, num_frames, self.frame_interval, rng)

    def flips(self, row_id: int, epoch: int) -> tuple[bool, bool]:
        """(left-right, top-bottom): whether this (row, epoch) sample is mirrored (see module doc)."""
        if not (self.hflip_prob or self.vflip_prob):
            return False, False
        rng = random.Random(derive_seed(self.seed, epoch, row_id, 0xF119))
        return rng.random() < self.hflip_prob, rng.random() < self.vflip_prob

    def caption(self, row_id: int, epoch: int) -> str:
        """The row's text with score / camera-motion suffixes, each dropped with prob ``score_drop_prob``, and its
        direction words mirrored with the sample (`flips`)."""
        row = self.rows[row_id]
        text = row["text"]
        if self.use_scores:
            rng = random.Random(derive_seed(self.seed, epoch, row_id, 0x7e47))
            text = score_to_text(text, _number(row.get("aes")), _number(row.get("flow")), self.score_drop_prob, rng)
            label = cmotion_label(row.get("cmotion"))
            if label is not None and rng.random() > self.score_drop_prob:
                text = merge_cmotion(text, label)
        return mirror_caption(text, *self.flips(row_id, epoch))

    def load_video(self, row_id: int, size: tuple[int, int, int], epoch: int) -> torch.Tensor:
        """Pixels [3, T, H, W] in [-1, 1] of a row in bucket size (T, H, W), not mirrored (`get` mirrors; a feature
        cache stores these and mirrors the latents). Errors follow the policy: raises
        `SampleError` (``"fail"``) or returns None after logging (``"skip"``)."""
        T, H, W = size
        try:
            indices = self.frame_indices(row_id, T, epoch)
            frames = read_video(self.rows[row_id]["path"], indices=indices)  # [T, h, w, 3]
            return resize_crop(frames, H, W)  # [3, T, H, W]
        except (VideoFileError, OSError, ValueError) as err:
            self._bad(row_id, err, "load")
            return None

    def get(self, row_id: int, size: tuple[int, int, int], epoch: int) -> dict | None:
        """One sample: video [3, T, H, W], text, num_frames, height, width, ar, fps (None if skipped)."""
        video = self.load_video(row_id, size, epoch)
        if video is None:
            return None
        T, H, W = size
        video = mirror(video, *self.flips(row_id, epoch))  # [3, T, H, W]
        return {"video": video, "text": self.caption(row_id, epoch), "num_frames": T, "height": H, "width": W,
                "ar": H / W, "fps": self.fps(row_id), "row": row_id}
