"""Motion score and camera-motion label from dense optical flow (OpenCV).

Both come from the same frame pairs: ``num_pairs`` pairs ``(i, i + pair_gap)`` with their first frames spread
evenly over the clip. Flow is OpenCV Farneback with the parameters of Open-Sora's camera-motion tool
(pyramid scale 0.5, 3 levels, 3 iterations, poly_n 5, sigma 1.2) except the averaging window, 9 instead of 15
(on frames of ~50 px a 15 px window spreads a small object's motion over much of the frame), or DIS (preset
medium). Flow runs on the frames projected on their colours' principal axis (:func:`contrast_pair`), not on
luminance, so edges between colours of equal brightness still move. Flows are divided by the gap, so every
number here is in **pixels per frame of the clip as stored** (when ``flow_max_side`` shrinks large frames for
speed, flows are scaled back to stored pixels).

Motion score (``flow`` column): the mean over pairs of the mean over pixels of |flow|. One change from a plain
mean: pixels where the first frame is locally featureless and nothing changed between the two frames (|gradient|
+ |frame difference| below ``activity_threshold`` levels of the projected channel) count as 0. Dense flow fills such
pixels by smoothing the motion of their neighbours, so a small object moving over a flat background "moves" a
halo several times its own area (plain mean: 2-4x the true mean pixel speed on the synthetic world); no motion
can be observed there, so none is counted. The price: uniform motion over large featureless patches is counted
as still too (camera moves over the synthetic checkerboards score about 0.6x their true speed). The gated mean
ranks clips by true speed better (Spearman 0.98 against 0.96 for the plain mean on the synthetic world), which
is what the score is for (filtering, conditioning). ``activity_threshold = 0`` gives the plain mean. Open-Sora's
score is the plain mean computed with UniMatch flow on frames resized to 320x576 and spaced 10 frames apart, so
the two scales differ.

Camera motion (``cmotion`` column), the recipe of Open-Sora's ``camera_motion_detect.py`` with thresholds for
small frames. Per pair:

1. ``median_speed`` = median |flow| over all pixels (px/frame); below ``static_threshold`` -> ``static``;
2. ``zoom_fraction`` = share of the pixels with a radial flow component that move away from the frame centre;
   above ``zoom_in_threshold`` -> ``zoom in``, below ``zoom_out_threshold`` -> ``zoom out``;
3. otherwise the direction of the median flow vector (median of x and of y; the reference takes the median of
   the angles, which breaks where angles wrap from 359 to 0 degrees) names a pan or tilt. Content flowing right
   (angle in [315, 45) degrees, image y pointing down) means the camera pans left; flowing down ([45, 135)):
   tilt up; flowing left: pan right; flowing up: tilt down.

The clip label is the pair label held by more than half the pairs (``majority``), else ``unknown``.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

import cv2
import numpy as np

CAMERA_LABELS = ("static", "pan left", "pan right", "tilt up", "tilt down", "zoom in", "zoom out")
UNKNOWN = "unknown"


@dataclass
class MotionParams:
    num_pairs: int = 6
    pair_gap: int = 4  # frames between the two frames of a pair
    method: str = "farneback"  # or "dis"
    fb_levels: int = 3  # Farneback pyramid levels (reference: 3)
    fb_winsize: int = 9  # Farneback averaging window (reference: 15, which smears motion on frames of ~50 px)
    flow_max_side: int = 0  # shrink frames whose shorter side is larger than this before flow (0: never)
    activity_threshold: float = 0.5  # grey levels (per pixel / per pair) below which a pixel counts as still
    static_threshold: float = 0.08  # px/frame: median |flow| below this -> static
    zoom_in_threshold: float = 0.7
    zoom_out_threshold: float = 0.3
    majority: float = 0.5  # the clip label needs more than this share of the pairs

    def __post_init__(self):
        if self.method not in ("farneback", "dis"):
            raise ValueError(f"unknown flow method {self.method!r}; use 'farneback' or 'dis'")
        if self.num_pairs < 1 or self.pair_gap < 1:
            raise ValueError("num_pairs and pair_gap must be >= 1")
        if not 0 <= self.zoom_out_threshold <= 0.5 <= self.zoom_in_threshold <= 1:
            raise ValueError("need 0 <= zoom_out_threshold <= 0.5 <= zoom_in_threshold <= 1")

    @classmethod
    def from_dict(cls, params: dict) -> "MotionParams":
        return cls(**{k: v for k, v in params.items() if k in cls.__dataclass_fields__})


@dataclass
class MotionResult:
    flow: float  # motion score, px/frame
    cmotion: str  # clip camera-motion label
    pairs: list[tuple[int, int]] = field(default_factory=list)
    pair_labels: list[str] = field(default_factory=list)
    pair_stats: list[dict] = field(default_factory=list)


def pair_indices(num_frames: int, num_pairs: int, gap: int) -> list[tuple[int, int]]:
    """Frame pairs ``(i, i + gap)``; the gap shrinks to fit short clips; no pairs for a single frame."""
    if num_frames < 2:
        return []
    gap = min(gap, num_frames - 1)
    starts = np.unique(np.linspace(0, num_frames - 1 - gap, num_pairs).astype(int))
    return [(int(s), int(s) + gap) for s in starts]


def to_gray(frame: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2GRAY) if frame.ndim == 3 else frame


def contrast_pair(a: np.ndarray, b: np.ndarray, max_gain: float = 4.0) -> tuple[np.ndarray, np.ndarray]:
    """Two RGB frames as one-channel uint8 images along their colours' principal axis.

    Luminance hides edges between colours of equal brightness (brown on red, say), and flow cannot follow what
    it cannot see. Both frames are projected on the first principal component of their pooled RGB values (for
    most footage close to luminance) and stretched around mid-grey so the central 99 % of values fill the
    range, with a gain of at most ``max_gain`` over the plain projection. Grey inputs pass through."""
    if a.ndim == 2:
        return a, b
    pixels = np.concatenate([a.reshape(-1, 3), b.reshape(-1, 3)]).astype(np.float64)
    mean = pixels.mean(axis=0)
    centred = pixels - mean
    values, vectors = np.linalg.eigh(centred.T @ centred / len(centred))
    axis = vectors[:, -1] * (1 if vectors[:, -1].sum() >= 0 else -1)
    projected = centred @ axis  # [2 * H * W]
    spread = np.percentile(np.abs(projected), 99.5)
    gain = min(max_gain, 127.0 / spread) if spread > 0 else 1.0
    out = np.clip(np.rint(128 + gain * projected), 0, 255).astype(np.uint8)
    h, w = a.shape[:2]
    return out[: h * w].reshape(h, w), out[h * w:].reshape(h, w)


_DIS = {}


def dense_flow(a: np.ndarray, b: np.ndarray, method: str = "farneback", levels: int = 3,
               winsize: int = 9) -> np.ndarray:
    """Displacement ``[H, W, 2]`` (x, y in pixels) taking one-channel frame ``a`` to ``b``."""
    if method == "farneback":
        return cv2.calcOpticalFlowFarneback(a, b, None, 0.5, levels, winsize, 3, 5, 1.2, 0)
    if method == "dis":
        if "medium" not in _DIS:
            _DIS["medium"] = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
        return _DIS["medium"].calc(a, b, None)
    raise ValueError(f"unknown flow method {method!r}")


def pair_stats(a: np.ndarray, b: np.ndarray, gap: int, params: MotionParams) -> dict:
    """Per-pair numbers (px/frame) from one-channel frames ``a`` and ``b`` that are ``gap`` frames apart."""
    scale = 1.0
    if params.flow_max_side and min(a.shape) > params.flow_max_side:
        scale = params.flow_max_side / min(a.shape)
        size = (max(1, round(a.shape[1] * scale)), max(1, round(a.shape[0] * scale)))
        a = cv2.resize(a, size, interpolation=cv2.INTER_AREA)
        b = cv2.resize(b, size, interpolation=cv2.INTER_AREA)
    flow = dense_flow(a, b, params.method, params.fb_levels, params.fb_winsize) / (gap * scale)  # px/frame in stored pixels
    fx, fy = flow[..., 0].astype(np.float64), flow[..., 1].astype(np.float64)
    speed = np.hypot(fx, fy)

    af = a.astype(np.float32)
    grad = np.hypot(cv2.Sobel(af, cv2.CV_32F, 1, 0, ksize=3), cv2.Sobel(af, cv2.CV_32F, 0, 1, ksize=3)) / 8
    activity = grad + np.abs(b.astype(np.float32) - af)
    observed = activity > params.activity_threshold if params.activity_threshold > 0 else np.ones_like(speed, bool)

    h, w = a.shape
    v, u = np.mgrid[0:h, 0:w].astype(np.float64)
    rx, ry = u + 0.5 - w / 2, v + 0.5 - h / 2
    radial = (fx * rx + fy * ry) / np.maximum(np.hypot(rx, ry), 1e-6)
    outward, inward = int((radial > 1e-3).sum()), int((radial < -1e-3).sum())
    return {
        "mean_speed": float((speed * observed).mean()),
        "median_speed": float(np.median(speed)),
        "dx": float(np.median(fx)),
        "dy": float(np.median(fy)),
        "zoom_fraction": outward / max(outward + inward, 1),
    }


def pair_label(stats: dict, params: MotionParams) -> str:
    if stats["median_speed"] < params.static_threshold:
        return "static"
    if stats["zoom_fraction"] > params.zoom_in_threshold:
        return "zoom in"
    if stats["zoom_fraction"] < params.zoom_out_threshold:
        return "zoom out"
    return direction_label(stats["dx"], stats["dy"])


def direction_label(dx: float, dy: float) -> str:
    """Camera move that makes the content flow by (dx, dy) (image y down)."""
    angle = math.degrees(math.atan2(dy, dx)) % 360
    if angle < 45 or angle >= 315:
        return "pan left"
    if angle < 135:
        return "tilt up"
    if angle < 225:
        return "pan right"
    return "tilt down"


def vote(labels: list[str], majority: float = 0.5) -> str:
    """The label held by more than ``majority`` of the pairs, else ``unknown`` (also for no pairs)."""
    if not labels:
        return UNKNOWN
    label, count = Counter(labels).most_common(1)[0]
    return label if count > majority * len(labels) else UNKNOWN


def analyse_frames(frames: np.ndarray, params: MotionParams | None = None,
                   pairs: list[tuple[int, int]] | None = None) -> MotionResult:
    """Motion score and camera label of ``frames [T, H, W, 3]`` (or ``[T, H, W]`` grey; or a dict from frame
    index to frame). ``pairs`` are frame indices (their difference is the gap); by default they are :func:`pair_indices` of the whole clip. A single frame gives
    ``flow = 0`` and ``cmotion = static``."""
    params = params or MotionParams()
    if pairs is None:
        pairs = pair_indices(len(frames), params.num_pairs, params.pair_gap)
    if not pairs:
        return MotionResult(flow=0.0, cmotion="static")
    stats = [pair_stats(*contrast_pair(np.asarray(frames[i]), np.asarray(frames[j])), j - i, params)
             for i, j in pairs]
    labels = [pair_label(s, params) for s in stats]
    return MotionResult(
        flow=float(np.mean([s["mean_speed"] for s in stats])),
        cmotion=vote(labels, params.majority),
        pairs=list(pairs), pair_labels=labels, pair_stats=stats,
    )


def analyse_video(path, num_frames: int, params: MotionParams | None = None) -> MotionResult:
    """:func:`analyse_frames` on a file, decoding only the frames the pairs need."""
    from .scan import read_frames_at

    params = params or MotionParams()
    pairs = pair_indices(num_frames, params.num_pairs, params.pair_gap)
    if not pairs:
        return MotionResult(flow=0.0, cmotion="static")
    needed = sorted({i for pair in pairs for i in pair})
    frames = dict(zip(needed, read_frames_at(path, needed)))  # frame index -> frame
    return analyse_frames(frames, params, pairs)
