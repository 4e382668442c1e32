"""The synthetic world: the embedded default dataset, with known ground truth.

Each sample is a clip or a still: a background (flat colour, gradient, checkerboard, stripes or dots) with one or two
objects (circle, square, triangle, diamond, cross; colours from a named palette), each moving left / right / up /
down or staying still, seen through a camera that is static, pans, tilts or zooms. The camera is a window moved
over an unbounded world: pixel (u, v) of frame t shows world point

    x = W/2 + (u + 0.5 - W/2) / zoom(t) + pan_x(t),   y = H/2 + (v + 0.5 - H/2) / zoom(t) + pan_y(t)

so "pan left" (window moving left) makes the content flow right in the frame, as in Open-Sora's camera-motion
tool. Backgrounds are functions of world coordinates, so camera motion shows in the pixels; a moving camera
always films a two-dimensional texture (checkered or dotted), since flat, gradient and striped backgrounds would
hide it. Shapes are signed-distance functions with one-pixel
anti-aliasing. Object trajectories are chosen so every object stays fully in view for the whole clip.

Everything is drawn from ``numpy.random.default_rng([seed, index])``: a sample depends only on the seed, its
index and the params, and the same params give byte-identical CSVs and identical frames.
"""

from __future__ import annotations

import csv
import re
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from .aspect import ratio_key, scaled_table
from .video_io import write_video

PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 210, 40),
    "orange": (245, 140, 30),
    "purple": (140, 60, 180),
    "pink": (240, 120, 180),
    "cyan": (40, 200, 210),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
    "gray": (128, 128, 128),
    "brown": (130, 80, 40),
}
SHAPES = ("circle", "square", "triangle", "diamond", "cross")
OBJECT_MOTIONS = ("left", "right", "up", "down", "static")
CAMERA_MOTIONS = ("static", "pan left", "pan right", "tilt up", "tilt down", "zoom in", "zoom out")
BACKGROUNDS = ("flat", "gradient", "checkered", "striped", "dotted")
# Camera motion is only visible on a texture that varies in both directions: a moving camera films a checkered
# or dotted background (a gradient changes too slowly, stripes hide motion along them, flat shows nothing).
TEXTURED_BACKGROUNDS = ("checkered", "dotted")
IMAGE_FPS = 120  # Open-Sora's fps for still images
FAST_SPEED = 0.8  # px/frame at or above which an object "moves quickly"

# The Open-Sora CSV columns, then our ground-truth columns.
OPENSORA_COLUMNS = ["path", "text", "num_frames", "height", "width", "aspect_ratio", "fps", "resolution"]
TRUTH_COLUMNS = [
    "id", "split", "kind", "res_name", "ratio_key", "background", "bg_color", "bg_color2", "num_objects",
    "obj0_shape", "obj0_color", "obj0_motion", "obj0_speed", "obj0_size",
    "obj1_shape", "obj1_color", "obj1_motion", "obj1_speed", "obj1_size",
    "camera_motion", "camera_speed", "cmotion",
]
COLUMNS = OPENSORA_COLUMNS + TRUTH_COLUMNS


def _parse_list(value, cast=str) -> list:
    """Params carry lists as comma-separated strings (papermill -p passes scalars); accept real lists too."""
    if isinstance(value, str):
        return [cast(v.strip()) for v in value.split(",") if v.strip()]
    if isinstance(value, (int, float)):
        return [cast(value)]
    return [cast(v) for v in value]


@dataclass
class WorldParams:
    """What `params/data.yaml` controls. Lists may be given as comma-separated strings."""

    seed: int = 2024
    num_samples: int = 320
    still_fraction: float = 0.2
    val_fraction: float = 0.125
    resolutions: str | dict = "48px:2304,64px:4096"  # name:pixel budget
    aspect_ratios: str | list = "1:1,3:4,4:3,9:16,16:9"
    min_frames: int = 17
    max_frames: int = 51
    fps_choices: str | list = "16,24"
    max_duration: float = 2.2  # seconds
    two_object_fraction: float = 0.3
    static_camera_fraction: float = 0.3  # share of clips filmed by a static camera
    # object radius as a fraction of the frame's short side: "low,high" (drawn uniformly). At 48 px a radius of
    # 0.2-0.28 is a diameter of 2-3.4 latent pixels (the VAE is 8x) under the embedded DiT's 3x3 to 4x4 tokens.
    object_size: str | list = "0.2,0.28"
    # speed of a moving object in px/frame, "low,high" (drawn uniformly; placement slows an object down until its
    # whole path stays in view, so long clips end up slower). The camera pans / tilts at 0.3-1.0 px/frame.
    object_speed: str | list = "0.3,1.6"
    # where a moving object starts (ours): "uniform" anywhere its whole path stays in view; "middle" with its centre
    # in the middle of the view along its axis of motion at frame 0 (anywhere across it), so that the caption's
    # direction also says where it is in every later frame; its centre then stays in view to the clip's end (the
    # object may leave the view partly; it is slowed down like a uniform one until it fits). Static objects are
    # placed uniformly either way.
    object_start: str = "uniform"

    def __post_init__(self):
        if isinstance(self.resolutions, str):
            pairs = [p.split(":") for p in _parse_list(self.resolutions)]
            self.resolutions = {name: int(pix) for name, pix in pairs}
        self.aspect_ratios = _parse_list(self.aspect_ratios)
        self.fps_choices = _parse_list(self.fps_choices, int)
        self.object_size = _parse_list(self.object_size, float)
        self.object_speed = _parse_list(self.object_speed, float)
        if len(self.object_speed) != 2 or not 0 < self.object_speed[0] <= self.object_speed[1]:
            raise ValueError(f"object_speed must be 'low,high' px/frame with 0 < low <= high, got {self.object_speed}")
        if len(self.object_size) != 2 or not 0 < self.object_size[0] <= self.object_size[1] < 0.5:
            raise ValueError(f"object_size must be 'low,high' with 0 < low <= high < 0.5 (a radius as a fraction "
                             f"of the short side), got {self.object_size}")
        if self.object_start not in ("uniform", "middle"):
            raise ValueError(f"object_start must be 'uniform' or 'middle', got {self.object_start!r}")
        for r in self.aspect_ratios:
            ratio_key(r)  # raises on unknown names
        if not 1 <= self.min_frames <= self.max_frames:
            raise ValueError(f"need 1 <= min_frames <= max_frames, got {self.min_frames}, {self.max_frames}")
        if not 0 <= self.still_fraction <= 1 or not 0 < self.val_fraction < 1:
            raise ValueError("still_fraction must be in [0, 1] and val_fraction in (0, 1)")

    @classmethod
    def from_dict(cls, params: dict) -> "WorldParams":
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(params) - known)
        if unknown:
            raise ValueError(f"unknown data param(s) {unknown}; known: {sorted(known)}")
        return cls(**params)

    def size_tables(self) -> dict[str, dict[str, tuple[int, int]]]:
        return {name: scaled_table(pix, self.aspect_ratios) for name, pix in self.resolutions.items()}


@dataclass
class ObjectSpec:
    shape: str
    color: str
    motion: str
    speed: float  # in-world px/frame (in view pixels at zoom 1)
    size: float  # radius in px
    x0: float  # world position at frame 0
    y0: float

    def velocity(self) -> tuple[float, float]:
        return {
            "left": (-self.speed, 0.0), "right": (self.speed, 0.0),
            "up": (0.0, -self.speed), "down": (0.0, self.speed), "static": (0.0, 0.0),
        }[self.motion]


@dataclass
class SampleSpec:
    """The full ground truth of one sample; `render` turns it into pixels."""

    id: int
    split: str
    kind: str  # "video" | "image"
    res_name: str
    ratio_key: str
    height: int
    width: int
    num_frames: int
    fps: int
    background: str
    bg_color: str
    bg_color2: str
    bg_angle: float
    bg_period: float
    camera_motion: str
    camera_speed: float  # px/frame for pans/tilts, zoom factor change per frame for zooms
    objects: list[ObjectSpec] = field(default_factory=list)

    @property
    def ext(self) -> str:
        return "png" if self.kind == "image" else "mp4"

    @property
    def rel_path(self) -> str:
        return f"{'images' if self.kind == 'image' else 'clips'}/{self.id:05d}.{self.ext}"

    def camera(self, t: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Window offset (pan_x, pan_y) and zoom per frame, t: [T]."""
        zeros = np.zeros_like(t, dtype=np.float64)
        ones = np.ones_like(t, dtype=np.float64)
        v = self.camera_speed
        if self.camera_motion == "pan left":
            return -v * t, zeros, ones
        if self.camera_motion == "pan right":
            return v * t, zeros, ones
        if self.camera_motion == "tilt up":
            return zeros, -v * t, ones
        if self.camera_motion == "tilt down":
            return zeros, v * t, ones
        if self.camera_motion == "zoom in":
            return zeros, zeros, 1.0 + v * t
        if self.camera_motion == "zoom out":
            return zeros, zeros, 1.0 / (1.0 + v * t)
        return zeros, zeros, ones

    def view_positions(self, obj: ObjectSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Object centre in view pixels and its on-screen radius, per frame."""
        t = np.arange(self.num_frames, dtype=np.float64)
        px, py, zoom = self.camera(t)
        vx, vy = obj.velocity()
        u = (obj.x0 + vx * t - px - self.width / 2) * zoom + self.width / 2
        v = (obj.y0 + vy * t - py - self.height / 2) * zoom + self.height / 2
        return u, v, obj.size * zoom


# ---------------------------------------------------------------------------------------------------------------
# Captions


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _object_phrase(obj: ObjectSpec, still: bool) -> str:
    """'orange circle moves quickly right' (the article is added by the caller)."""
    noun = f"{obj.color} {obj.shape}"
    if still:
        return noun
    if obj.motion == "static":
        return f"{noun} stays still"
    pace = "quickly" if obj.speed >= FAST_SPEED else "slowly"
    return f"{noun} moves {pace} {obj.motion}"


def _background_phrase(spec: SampleSpec) -> str:
    article = _article(spec.bg_color)
    if spec.background == "flat":
        return f"{article} {spec.bg_color} background"
    if spec.background == "gradient":
        return f"{article} {spec.bg_color} to {spec.bg_color2} gradient background"
    return f"{article} {spec.bg_color} and {spec.bg_color2} {spec.background} background"


def _camera_sentence(motion: str) -> str:
    if motion == "static":
        return "The camera is static."
    verb, direction = motion.split()
    return f"The camera {verb}s {direction}."


def make_caption(spec: SampleSpec) -> str:
    """Plain English from the ground truth, e.g.
    'A red circle moves quickly right across a blue background. The camera pans left.'"""
    still = spec.kind == "image"
    subject = " and ".join(f"{_article(o.color)} {_object_phrase(o, still)}" for o in spec.objects)
    background = _background_phrase(spec)
    if still:
        return f"An image of {subject} on {background}."
    moving = any(o.motion != "static" for o in spec.objects)
    preposition = "across" if moving else "on"
    sentence = f"{subject[0].upper()}{subject[1:]} {preposition} {background}."
    return f"{sentence} {_camera_sentence(spec.camera_motion)}"


# ---------------------------------------------------------------------------------------------------------------
# Sampling the ground truth


def _contrasting_colors(rng: np.random.Generator, avoid: list[str], k: int, min_dist: float = 120.0) -> list[str]:
    names = [n for n in PALETTE if all(np.linalg.norm(np.subtract(PALETTE[n], PALETTE[a])) >= min_dist
                                       for a in avoid)]
    picked = rng.choice(len(names), size=k, replace=False)
    return [names[i] for i in picked]


def _place_objects(rng: np.random.Generator, spec: SampleSpec, objects: list[ObjectSpec], start: str = "uniform"
                   ) -> None:
    """Choose start positions (and shrink speeds if needed) so each object stays fully inside the view.

    With ``start="middle"`` (`WorldParams.object_start`) a moving object starts in the middle of the view on its axis
    of motion, only its centre must stay inside, and it must not overlap an object placed before it at frame 0 (two
    movers on one axis both start on its middle line); where 100 draws across the axis find no free place, it starts
    as in the uniform world instead."""
    placed: list[ObjectSpec] = []
    for obj in objects:
        middle = start == "middle" and obj.motion in ("left", "right", "up", "down")
        misses, overlaps = 0, 0
        for attempt in range(600):  # slows down every 20 misses: 0.8**30 of the speed at the end
            margin = obj.size + 1.0
            obj.x0 = float(rng.uniform(margin, spec.width - margin))
            obj.y0 = float(rng.uniform(margin, spec.height - margin))
            if middle:  # the view's middle at frame 0 along the axis of motion (frame 0: no pan, zoom 1)
                if obj.motion in ("left", "right"):
                    obj.x0 = spec.width / 2
                else:
                    obj.y0 = spec.height / 2
            u, v, r = spec.view_positions(obj)
            if middle:  # the centre stays in view along the axis, the whole object across it
                along, size, across, other = (u, spec.width, v, spec.height) if obj.motion in ("left", "right") else (
                    v, spec.height, u, spec.width)
                inside = (along >= 0).all() and (along <= size).all() and (across - r >= 0).all() and (
                    across + r <= other).all()
                free = all(math.hypot(obj.x0 - o.x0, obj.y0 - o.y0) > obj.size + o.size + 1.0 for o in placed)
                if inside and not free:
                    overlaps += 1
                    middle = overlaps < 100  # no free place on the middle line: start as in the uniform world
                    continue
            else:
                inside = (u - r >= 0).all() and (u + r <= spec.width).all() and (v - r >= 0).all() and (
                    v + r <= spec.height).all()
            if inside:
                placed.append(obj)
                break
            misses += 1
            if misses % 20 == 0:  # no room at this speed: slow down
                obj.speed *= 0.8
                if spec.camera_motion != "static":
                    spec.camera_speed *= 0.9
        else:
            raise RuntimeError(f"sample {spec.id}: could not place a {obj.shape} inside the view")


def sample_spec(params: WorldParams, index: int) -> SampleSpec:
    rng = np.random.default_rng([params.seed, index])
    split = "val" if rng.random() < params.val_fraction else "train"
    still = rng.random() < params.still_fraction
    tables = params.size_tables()
    res_name = list(tables)[rng.integers(len(tables))]
    key = ratio_key(params.aspect_ratios[rng.integers(len(params.aspect_ratios))])
    height, width = tables[res_name][key]

    if still:
        num_frames, fps = 1, IMAGE_FPS
    else:
        fps = int(params.fps_choices[rng.integers(len(params.fps_choices))])
        longest = max(params.min_frames, min(params.max_frames, int(params.max_duration * fps)))
        num_frames = int(rng.integers(params.min_frames, longest + 1))

    camera = "static"
    if not still and rng.random() >= params.static_camera_fraction:
        camera = CAMERA_MOTIONS[1 + rng.integers(len(CAMERA_MOTIONS) - 1)]
    backgrounds = BACKGROUNDS if camera == "static" else TEXTURED_BACKGROUNDS
    background = backgrounds[rng.integers(len(backgrounds))]
    bg_color, bg_color2 = (str(c) for c in rng.choice(list(PALETTE), size=2, replace=False))
    if background == "flat":
        bg_color2 = ""
    camera_speed = 0.0
    if camera.startswith(("pan", "tilt")):
        camera_speed = float(rng.uniform(0.3, 1.0))
    elif camera.startswith("zoom"):
        camera_speed = float(rng.uniform(0.3, 0.6)) / max(num_frames - 1, 1)  # total zoom 1.3x-1.6x

    spec = SampleSpec(
        id=index, split=split, kind="image" if still else "video", res_name=res_name, ratio_key=key,
        height=height, width=width, num_frames=num_frames, fps=fps, background=background,
        bg_color=bg_color, bg_color2=bg_color2, bg_angle=float(rng.uniform(0, math.pi)),
        bg_period=float(rng.uniform(0.3, 0.5) * min(height, width)), camera_motion=camera,
        camera_speed=camera_speed,
    )
    num_objects = 2 if rng.random() < params.two_object_fraction else 1
    colors = _contrasting_colors(rng, [c for c in (bg_color, bg_color2) if c], num_objects)
    shapes = rng.choice(len(SHAPES), size=num_objects, replace=False)
    objects = []
    for k in range(num_objects):
        motion = "static" if still else OBJECT_MOTIONS[rng.integers(len(OBJECT_MOTIONS))]
        speed = 0.0 if motion == "static" else float(rng.uniform(*params.object_speed))
        size = float(rng.uniform(*params.object_size) * min(height, width))
        objects.append(ObjectSpec(SHAPES[shapes[k]], colors[k], motion, speed, size, 0.0, 0.0))
    _place_objects(rng, spec, objects, params.object_start)
    spec.objects = objects
    return spec


# ---------------------------------------------------------------------------------------------------------------
# Rendering


def _shape_sdf(shape: str, dx: np.ndarray, dy: np.ndarray, r: float) -> np.ndarray:
    """Signed distance (px, negative inside) to a shape of radius r centred at the origin."""
    if shape == "circle":
        return np.hypot(dx, dy) - r
    if shape == "square":
        s = 0.8 * r
        qx, qy = np.abs(dx) - s, np.abs(dy) - s
        return np.hypot(np.maximum(qx, 0), np.maximum(qy, 0)) + np.minimum(np.maximum(qx, qy), 0)
    if shape == "diamond":
        return (np.abs(dx) + np.abs(dy) - 1.15 * r) / math.sqrt(2)
    if shape == "triangle":  # equilateral, apex up, half-side 1.1 r, centred on its centroid
        k, h = math.sqrt(3.0), 1.1 * r
        px, py = np.abs(dx) - h, -dy + h / k  # y up
        fold = px + k * py > 0  # reflect into the region nearest the edge
        px, py = np.where(fold, (px - k * py) / 2, px), np.where(fold, (-k * px - py) / 2, py)
        px = px - np.clip(px, -2 * h, 0)
        return -np.hypot(px, py) * np.sign(py)
    if shape == "cross":
        arm, half = r, 0.35 * r

        def box(px, py, bx, by):
            qx, qy = np.abs(px) - bx, np.abs(py) - by
            return np.hypot(np.maximum(qx, 0), np.maximum(qy, 0)) + np.minimum(np.maximum(qx, qy), 0)

        return np.minimum(box(dx, dy, arm, half), box(dx, dy, half, arm))
    raise ValueError(f"unknown shape {shape!r}; known: {SHAPES}")


def _background(spec: SampleSpec, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """RGB float [H, W, 3] of the background at world points (x, y)."""
    a = np.asarray(PALETTE[spec.bg_color], dtype=np.float64)
    if spec.background == "flat":
        return np.broadcast_to(a, x.shape + (3,)).copy()
    b = np.asarray(PALETTE[spec.bg_color2], dtype=np.float64)
    c, s = math.cos(spec.bg_angle), math.sin(spec.bg_angle)
    if spec.background == "gradient":
        span = 2.0 * max(spec.height, spec.width)
        m = np.clip(0.5 + ((x - spec.width / 2) * c + (y - spec.height / 2) * s) / span, 0, 1)
    elif spec.background == "striped":
        m = np.clip(0.5 + 2.0 * np.sin(2 * math.pi * (x * c + y * s) / spec.bg_period), 0, 1)
    elif spec.background == "checkered":
        m = np.clip(0.5 + 2.0 * np.sin(math.pi * x / spec.bg_period) * np.sin(math.pi * y / spec.bg_period), 0, 1)
    elif spec.background == "dotted":  # a square lattice of soft dots, radius 0.3 period
        p = spec.bg_period
        dist = np.hypot(np.mod(x, p) - p / 2, np.mod(y, p) - p / 2)
        m = np.clip(0.5 + (0.3 * p - dist), 0, 1)
    else:
        raise ValueError(f"unknown background {spec.background!r}; known: {BACKGROUNDS}")
    return a * (1 - m[..., None]) + b * m[..., None]


def render(spec: SampleSpec) -> np.ndarray:
    """Pixels of a sample: uint8 [T, H, W, 3]."""
    t_all = np.arange(spec.num_frames, dtype=np.float64)
    pan_x, pan_y, zoom = spec.camera(t_all)
    v, u = np.meshgrid(np.arange(spec.height) + 0.5, np.arange(spec.width) + 0.5, indexing="ij")  # [H, W]
    frames = np.empty((spec.num_frames, spec.height, spec.width, 3), dtype=np.uint8)
    for t in range(spec.num_frames):
        x = spec.width / 2 + (u - spec.width / 2) / zoom[t] + pan_x[t]  # world coords [H, W]
        y = spec.height / 2 + (v - spec.height / 2) / zoom[t] + pan_y[t]
        image = _background(spec, x, y)
        for obj in reversed(spec.objects):  # back to front: the first object the caption names is in front
            vx, vy = obj.velocity()
            sdf = _shape_sdf(obj.shape, x - (obj.x0 + vx * t), y - (obj.y0 + vy * t), obj.size)
            coverage = np.clip(0.5 - sdf * zoom[t], 0.0, 1.0)[..., None]  # one-pixel anti-aliasing
            image = image * (1 - coverage) + np.asarray(PALETTE[obj.color], dtype=np.float64) * coverage
        frames[t] = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    return frames


# ---------------------------------------------------------------------------------------------------------------
# The dataset on disk


def spec_to_row(spec: SampleSpec) -> dict:
    row = {
        "path": spec.rel_path,
        "text": make_caption(spec),
        "num_frames": spec.num_frames,
        "height": spec.height,
        "width": spec.width,
        "aspect_ratio": f"{spec.height / spec.width:.4f}",
        "fps": spec.fps,
        "resolution": spec.height * spec.width,
        "id": spec.id,
        "split": spec.split,
        "kind": spec.kind,
        "res_name": spec.res_name,
        "ratio_key": spec.ratio_key,
        "background": spec.background,
        "bg_color": spec.bg_color,
        "bg_color2": spec.bg_color2,
        "num_objects": len(spec.objects),
        "camera_motion": spec.camera_motion,
        "camera_speed": f"{spec.camera_speed:.4f}",
        "cmotion": spec.camera_motion if spec.kind == "video" else "",
    }
    for k in range(2):
        obj = spec.objects[k] if k < len(spec.objects) else None
        row[f"obj{k}_shape"] = obj.shape if obj else ""
        row[f"obj{k}_color"] = obj.color if obj else ""
        row[f"obj{k}_motion"] = obj.motion if obj else ""
        row[f"obj{k}_speed"] = f"{obj.speed:.4f}" if obj else ""
        row[f"obj{k}_size"] = f"{obj.size:.3f}" if obj else ""
    return row


def write_csv(path: str | Path, rows: list[dict]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return path


def read_csv(path: str | Path, absolute_paths: bool = True) -> list[dict]:
    """Rows of a dataset CSV; ``path`` entries are made absolute (they are stored relative to the CSV)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"dataset CSV not found: {path}")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if rows:
        missing = [c for c in OPENSORA_COLUMNS[:5] if c not in rows[0]]
        if missing:
            raise ValueError(f"{path}: missing required column(s) {missing}")
    if absolute_paths:
        for row in rows:
            if not Path(row["path"]).is_absolute():
                row["path"] = str((path.parent / row["path"]).resolve())
    return rows


def generate_dataset(out_dir: str | Path, params: WorldParams | dict, progress: bool = True) -> dict[str, Path]:
    """Render every sample to ``out_dir`` and write ``meta.csv``, ``train.csv``, ``val.csv`` and
    ``world.json`` (the params). Returns the written CSV paths."""
    if isinstance(params, dict):
        params = WorldParams.from_dict(params)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for index in tqdm(range(params.num_samples), desc="synthetic world", disable=not progress):
        spec = sample_spec(params, index)
        write_video(out_dir / spec.rel_path, render(spec), fps=spec.fps)
        rows.append(spec_to_row(spec))
    paths = {
        "meta": write_csv(out_dir / "meta.csv", rows),
        "train": write_csv(out_dir / "train.csv", [r for r in rows if r["split"] == "train"]),
        "val": write_csv(out_dir / "val.csv", [r for r in rows if r["split"] == "val"]),
    }
    (out_dir / "world.json").write_text(json.dumps(asdict(params), indent=2, sort_keys=True) + "\n")
    return paths


def spec_from_row(row: dict, params: WorldParams | dict) -> SampleSpec:
    """Rebuild the full ground truth of a CSV row (re-sampled from the seed and the row's id)."""
    if isinstance(params, dict):
        params = WorldParams.from_dict(params)
    return sample_spec(params, int(row["id"]))


def heldout_captions(params: WorldParams | dict, n: int) -> list[str]:
    """Captions of `n` video samples the dataset never rendered: ids num_samples, num_samples + 1, ... of the same
    world (stills skipped), so neither training nor validation saw them. More eval prompts than the val split has."""
    if isinstance(params, dict):
        params = WorldParams.from_dict(params)
    if params.still_fraction >= 1 and n > 0:
        raise ValueError("this world has no videos (still_fraction 1): no held-out video captions")
    captions, index = [], params.num_samples
    while len(captions) < n:
        spec = sample_spec(params, index)
        if spec.kind == "video":
            captions.append(make_caption(spec))
        index += 1
    return captions


def dataset_statistics(rows: list[dict]) -> dict:
    """Counts and distributions for the data report and ``metrics/data.json``."""
    videos = [r for r in rows if r["kind"] == "video"]
    durations = [int(r["num_frames"]) / float(r["fps"]) for r in videos]
    frames = [int(r["num_frames"]) for r in videos]

    def counts(key, subset=rows):
        out: dict[str, int] = {}
        for r in subset:
            if r[key]:
                out[r[key]] = out.get(r[key], 0) + 1
        return dict(sorted(out.items()))

    shape_counts: dict[str, int] = {}
    color_counts: dict[str, int] = {}
    motion_counts: dict[str, int] = {}
    for r in rows:
        for k in range(int(r["num_objects"])):
            shape_counts[r[f"obj{k}_shape"]] = shape_counts.get(r[f"obj{k}_shape"], 0) + 1
            color_counts[r[f"obj{k}_color"]] = color_counts.get(r[f"obj{k}_color"], 0) + 1
            if r["kind"] == "video":
                motion_counts[r[f"obj{k}_motion"]] = motion_counts.get(r[f"obj{k}_motion"], 0) + 1
    caption_words = [len(r["text"].split()) for r in rows]
    return {
        "num_samples": len(rows),
        "num_videos": len(videos),
        "num_images": len(rows) - len(videos),
        "num_train": sum(r["split"] == "train" for r in rows),
        "num_val": sum(r["split"] == "val" for r in rows),
        "total_frames": sum(int(r["num_frames"]) for r in rows),
        "duration_s": {"mean": float(np.mean(durations)) if durations else 0.0,
                       "min": float(np.min(durations)) if durations else 0.0,
                       "max": float(np.max(durations)) if durations else 0.0,
                       "total": float(np.sum(durations))},
        "num_frames": {"mean": float(np.mean(frames)) if frames else 0.0,
                       "min": int(np.min(frames)) if frames else 0,
                       "max": int(np.max(frames)) if frames else 0},
        "caption_words": {"mean": float(np.mean(caption_words)), "max": int(np.max(caption_words))},
        "resolutions": counts("res_name"),
        "sizes": counts("size", [{**r, "size": f"{r['height']}x{r['width']}"} for r in rows]),
        "aspect_ratios": counts("ratio_key"),
        "backgrounds": counts("background"),
        "camera_motion": counts("camera_motion", videos),
        "object_motion": dict(sorted(motion_counts.items())),
        "shapes": dict(sorted(shape_counts.items())),
        "colors": dict(sorted(color_counts.items())),
        "fps": counts("fps", videos),
    }


_CAPTION_OBJECT = re.compile(
    r"\b(?i:a|an) (?P<color>" + "|".join(PALETTE) + r") (?P<shape>" + "|".join(SHAPES) + r")"
    r"(?: (?:moves (?P<pace>slowly|quickly) (?P<motion>left|right|up|down)|(?P<still>stays still)))?"
)
_CAPTION_CAMERA = re.compile(r"The camera (?:is (?P<static>static)|(?P<verb>pans|tilts|zooms) (?P<dir>\w+))\.")


def parse_caption(text: str) -> dict:
    """Recover the ground-truth factors a caption states (the inverse of `make_caption`); also reads prompts
    written in the same grammar. Returns ``{"objects": [{color, shape, motion}], "camera_motion": str|None}``."""
    body = text.split(" on ", 1)[0] if text.startswith("An image of") else text
    body = re.split(r" (?:across|on) (?:a|an) ", body, maxsplit=1)[0]
    objects = []
    for m in _CAPTION_OBJECT.finditer(body):
        motion = m["motion"] or ("static" if m["still"] else None)
        objects.append({"color": m["color"], "shape": m["shape"], "motion": motion})
    camera = None
    if (m := _CAPTION_CAMERA.search(text)) is not None:
        camera = "static" if m["static"] else f"{m['verb'][:-1]} {m['dir']}"
    return {"objects": objects, "camera_motion": camera}
