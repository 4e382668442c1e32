"""Background colour: does a clip show the background its caption names?

The synthetic world's captions name one or two background colours ("... across a red and black checkered
background", "... on a gray background"). The background covers most of every frame, so its colours are the
frame's most common palette colours: a clip *shows its background* when every background colour its caption names
is among the ``k`` most common palette colours (pixels within ``tolerance`` RGB of a palette colour;
`detectors.palette_labels`) of its middle frame, with ``k`` = 2 (two named colours, or one named colour and the
object). Gradients ("a red to brown gradient background") are not scored: the frame shows a stretch of the ramp
whose ends may lie outside it (a blue-to-red ramp's middle is purple), so its colours are not a property of the
frame. On the middle frames of the embedded world's 287 non-gradient clips and stills the rule holds for 98.6%, and
for 2.6% of swapped captions (each sample against the next 5 samples' captions); the misses are dotted backgrounds
whose dots cover less of the frame than a large object.

This is the large-area counterpart of the object colour dimension (VBench's "scene" reads the setting, ours its
colours): a model can learn what covers most of the frame long before it learns an object a few latent pixels wide, and this
dimension says whether it has. It is not folded into the total / quality / semantic scores (the seed table's
dimensions stay as they are); the eval reports it beside them, with its own caption-swap chance level
(`scores.caption_swap_control`). Kept out of `detectors.py` on purpose: that module is a dependency of the image
base and adaptation stages, and this one is read by the eval stage only.
"""

from __future__ import annotations

import re

import numpy as np

from ..data.synthetic import PALETTE
from .detectors import palette_labels

_NAMES = list(PALETTE)
_COLOUR = "|".join(_NAMES)
BACKGROUND_RE = re.compile(
    rf"\b(?:across|on) (?:a|an) (?P<c1>{_COLOUR})(?: (?:and|to) (?P<c2>{_COLOUR}))?(?: \w+)? background\b",
    re.IGNORECASE)
GRADIENT_RE = re.compile(r"\bgradient background\b", re.IGNORECASE)


def caption_background_colours(caption: str) -> list[str]:
    """The background colours a caption names (one or two; [] when it names none)."""
    m = BACKGROUND_RE.search(caption)
    if not m:
        return []
    return [c.lower() for c in (m.group("c1"), m.group("c2")) if c]


def main_colours(frame: np.ndarray, k: int = 2, tolerance: float = 60.0) -> list[str]:
    """The ``k`` most common palette colours of ``frame [H, W, 3]`` (pixels within ``tolerance``), most common
    first; fewer when fewer colours occur."""
    labels = palette_labels(np.asarray(frame)[..., :3], tolerance)
    counts = np.bincount(labels[labels >= 0].ravel(), minlength=len(_NAMES))
    order = [int(i) for i in np.argsort(counts, kind="stable")[::-1] if counts[i] > 0]
    return [_NAMES[i] for i in order[:k]]


def background_colour(frames: np.ndarray, caption: str, k: int = 2, tolerance: float = 60.0) -> dict:
    """{"background": 1 if every named background colour is among the middle frame's ``k`` main colours, else 0
    (None when the caption names no background or a gradient), "named": the caption's colours, "main": the
    frame's}."""
    frames = np.asarray(frames)
    frame = frames[len(frames) // 2] if frames.ndim == 4 else frames
    named = [] if GRADIENT_RE.search(caption) else caption_background_colours(caption)
    main = main_colours(frame, k, tolerance)
    hit = None if not named else int(all(c in main for c in named))
    return {"background": hit, "named": named, "main": main}


def validate_background(clips: list[tuple[np.ndarray, str]], shifts: int = 5) -> dict:
    """The rule on real clips ``[(frames, caption)]``: share of hits against their own captions ("truth") and
    against the captions of clips i + 1..shifts ("shuffled"), over the clips whose caption is scored."""
    n = len(clips)
    own = [background_colour(f, c)["background"] for f, c in clips]
    swapped = [background_colour(clips[i][0], clips[(i + s) % n][1])["background"]
               for i in range(n) for s in range(1, min(shifts, n - 1) + 1)]
    own = [v for v in own if v is not None]
    swapped = [v for v in swapped if v is not None]
    return {"truth": float(np.mean(own)) if own else None, "shuffled": float(np.mean(swapped)) if swapped else None,
            "n": len(own)}
