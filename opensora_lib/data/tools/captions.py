"""Captions for cut clips, and the score suffixes Open-Sora appends to them.

Where a caption comes from, first found wins:

1. a sidecar text file next to the *source* video, same stem: ``clip.mp4`` -> ``clip.txt`` (UTF-8, stripped);
2. a captions CSV with columns ``path, text``: ``path`` relative to the CSV (or absolute) names a source video
   or a cut clip; a bare file name also matches when no other row has the same name;
3. a :class:`Captioner` (e.g. a local vision-language model) given the clip's frames.

Every scene of a source gets the source's caption unless the CSV names the clip itself.

Score suffixes, as ``tools/datasets/datautil.py`` writes them (``--merge-cmotion`` then ``--score-to-text``)::

    <caption> Camera motion: pan left. [aesthetic score: 5.5, motion score: 1.2]

Each score is dropped independently with probability ``score_drop_prob`` (Open-Sora: 0.2), the camera motion
with ``cmotion_drop_prob`` (Open-Sora: 0, it always keeps it); ``unknown`` camera motion is never written;
the brackets go when both scores are dropped. Draws come from a seeded ``numpy`` generator, one row after the
other, so the same seed gives the same captions.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

CMOTION_TEXT = {  # our labels and Open-Sora's underscore spellings -> caption text
    "static": "static", "pan left": "pan left", "pan right": "pan right", "tilt up": "tilt up",
    "tilt down": "tilt down", "zoom in": "zoom in", "zoom out": "zoom out",
    "pan_left": "pan left", "pan_right": "pan right", "tilt_up": "tilt up", "tilt_down": "tilt down",
    "zoom_in": "zoom in", "zoom_out": "zoom out",
}


@runtime_checkable
class Captioner(Protocol):
    """Something that writes a caption for a clip, e.g. a local vision-language model.

    ``frames`` are uint8 ``[T, H, W, 3]`` (a few frames sampled over the clip); ``path`` is the clip file."""

    def caption(self, frames: np.ndarray, path: str) -> str: ...


class TemplateCaptioner:
    """A stand-in captioner that states only what the tools measured (for folders with no captions at all).

    It is an example of the interface, not a description of the content."""

    def __init__(self, template: str = "A video clip."):
        self.template = template

    def caption(self, frames: np.ndarray, path: str) -> str:
        return self.template


class CaptionTable:
    """Captions from sidecar files and an optional captions CSV."""

    def __init__(self, csv_path: str | os.PathLike | None = None):
        self.by_path: dict[str, str] = {}
        self.by_name: dict[str, str | None] = {}  # None: the bare name is ambiguous
        if csv_path:
            csv_path = Path(csv_path)
            if not csv_path.is_file():
                raise FileNotFoundError(f"captions CSV not found: {csv_path}")
            with open(csv_path, newline="", encoding="utf-8") as f:
                reader = csv.DictReader(f)
                if reader.fieldnames is None or not {"path", "text"} <= set(reader.fieldnames):
                    raise ValueError(f"{csv_path}: a captions CSV needs columns 'path' and 'text'")
                for row in reader:
                    p = Path(row["path"])
                    full = p if p.is_absolute() else csv_path.parent / p
                    self.by_path[str(full.resolve())] = row["text"].strip()
                    name = p.name
                    self.by_name[name] = None if name in self.by_name else row["text"].strip()

    def lookup(self, source: str | os.PathLike, clip: str | os.PathLike | None = None) -> tuple[str, str] | None:
        """``(caption, where)`` for a clip cut from ``source``, or None."""
        source = Path(source)
        if clip is not None:
            hit = self.by_path.get(str(Path(clip).resolve()))
            if hit:
                return hit, "csv"
        sidecar = source.with_suffix(".txt")
        if sidecar.is_file():
            text = sidecar.read_text(encoding="utf-8").strip()
            if text:
                return text, "sidecar"
        hit = self.by_path.get(str(source.resolve())) or self.by_name.get(source.name)
        if hit:
            return hit, "csv"
        return None


def score_suffix(text: str, rng: np.random.Generator, aes: float | None = None, flow: float | None = None,
                 cmotion: str | None = None, score_drop_prob: float = 0.2, cmotion_drop_prob: float = 0.0) -> str:
    """``text`` with Open-Sora's camera-motion sentence and score brackets (see the module docstring).

    Three draws are taken from ``rng`` on every call (camera, aesthetic, motion), used or not, so one row's
    missing score does not shift the next row's draws."""
    draws = rng.random(3)
    out = text.strip()
    label = CMOTION_TEXT.get(cmotion or "")
    if label and draws[0] >= cmotion_drop_prob:
        out = f"{out} Camera motion: {label}."
    scores = []
    if aes is not None and not _missing(aes) and draws[1] >= score_drop_prob:
        scores.append(f"aesthetic score: {float(aes):.1f}")
    if flow is not None and not _missing(flow) and draws[2] >= score_drop_prob:
        scores.append(f"motion score: {float(flow):.1f}")
    if scores:
        out = f"{out} [{', '.join(scores)}]"
    return out


def _missing(value) -> bool:
    return value == "" or (isinstance(value, float) and np.isnan(value))
