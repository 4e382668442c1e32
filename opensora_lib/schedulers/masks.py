"""Frame masks: which latent frames are generated and which are given (conditioning).

Two sources:
- inference: a `mask_strategy` string says where reference latents go (image-to-video, video
  extension, editing) -> `apply_mask_strategy` places them into z and returns a float mask per
  latent frame for `RFLOW.sample` (1 = generate, 0 = keep, 0<e<1 = partial edit);
- training: `MaskGenerator` draws a random boolean mask per sample (True = generate) so the model
  learns to continue, interpolate and animate given frames.
All positions and lengths are in LATENT frames (Open-Sora 1.2; v1.1 used pixel frames).
"""

from __future__ import annotations

import math
import random

import torch

# loop_id, ref_id, ref_start, target_start, length, edit_ratio
MASK_DEFAULT = ["0", "0", "0", "0", "1", "0"]


def parse_mask_strategy(mask_strategy: str | None) -> list[list]:
    """"0,0,0,0,1,0;..." -> [[loop_id, ref_id, ref_start, target_start, length, edit_ratio], ...].

    Groups are separated by ';', each holds 1..6 comma-separated numbers; missing trailing numbers
    take the defaults 0,0,0,0,1,0. E.g. "0" = in loop 0 put frame 0 of reference 0 at frame 0, one
    frame, edit ratio 0 (image-to-video). Negative starts count from the end.
    """
    if mask_strategy is None or mask_strategy == "":
        return []
    groups = []
    for group in mask_strategy.split(";"):
        fields = [f.strip() for f in group.split(",")]
        if not 1 <= len(fields) <= 6 or any(f == "" for f in fields):
            raise ValueError(f"invalid mask strategy group {group!r} in {mask_strategy!r}")
        fields = fields + MASK_DEFAULT[len(fields):]
        groups.append([int(f) for f in fields[:5]] + [float(fields[5])])
    return groups


def find_nearest_point(value: int, point: int, max_value: int) -> int:
    """Snap `value` to a multiple of `point` (round half down; never the last multiple below max_value)."""
    t = value // point
    if value % point > point / 2 and t < max_value // point - 1:
        t += 1
    return t * point


def apply_mask_strategy(
    z: torch.Tensor,
    refs_x: list,
    mask_strategys: list,
    loop_i: int,
    align: int | None = None,
) -> torch.Tensor | None:
    """Place reference latents into z (in place) and build the per-frame mask.

    z [B, C, T, H, W] the initial noise; refs_x[i] the list of reference latents [C, T_ref, H, W] of
    sample i; mask_strategys[i] its strategy string. Only groups with `loop_id == loop_i` apply.
    Starts snap to multiples of `align` latent frames when given (v1.2 sampling uses 5); a length is
    cut to what fits in both z and the reference. Returns mask [B, T] float (edit_ratio where a
    reference went, 1 elsewhere), or None when `mask_strategys` is empty.
    """
    if len(mask_strategys) == 0:
        return None
    masks = []
    T = z.shape[2]
    for i, strategy in enumerate(mask_strategys):
        mask = torch.ones(T, dtype=torch.float, device=z.device)
        for loop_id, ref_id, ref_start, target_start, length, edit_ratio in parse_mask_strategy(strategy):
            if loop_id != loop_i:
                continue
            ref = refs_x[i][ref_id]  # [C, T_ref, H, W]
            T_ref = ref.shape[1]
            if ref_start < 0:
                ref_start = T_ref + ref_start
            if target_start < 0:
                target_start = T + target_start
            if align is not None:
                ref_start = find_nearest_point(ref_start, align, T_ref)
                target_start = find_nearest_point(target_start, align, T)
            length = min(length, T - target_start, T_ref - ref_start)
            z[i, :, target_start : target_start + length] = ref[:, ref_start : ref_start + length]
            mask[target_start : target_start + length] = edit_ratio
        masks.append(mask)
    return torch.stack(masks)  # [B, T]


def extension_strategy(loop_i: int, ref_id: int, condition_frame_length: int = 5, condition_frame_edit: float = 0.0) -> str:
    """Strategy group for video extension loop `loop_i`: the last `condition_frame_length` latent
    frames of the previous clip (reference `ref_id`) become the first frames of the new clip."""
    return f"{loop_i},{ref_id},-{condition_frame_length},0,{condition_frame_length},{condition_frame_edit}"


# Training masks ----------------------------------------------------------------------------------

MASK_TYPES = (
    "identity",
    "quarter_random",
    "quarter_head",
    "quarter_tail",
    "quarter_head_tail",
    "image_random",
    "image_head",
    "image_tail",
    "image_head_tail",
    "random",
    "intepolate",  # sic, the reference's spelling (config key)
)


class MaskGenerator:
    """Random per-sample frame masks for training (True = generate, False = given clean frame).

    mask_ratios: {mask type: probability}; "identity" (no conditioning) gets the remainder.
    Draws use Python's `random` (or `rng` when given) and torch's global RNG for the "random" type,
    as the reference. A mask is never all False (guard of the later reference fix), and 2-3 frame
    clips allow 1 quarter frame (the reference would crash on randint(1, 0)).
    """

    def __init__(self, mask_ratios: dict, rng: random.Random | None = None):
        unknown = set(mask_ratios) - set(MASK_TYPES)
        if unknown:
            raise ValueError(f"unknown mask types {sorted(unknown)}; valid: {MASK_TYPES}")
        if any(not 0 <= r <= 1 for r in mask_ratios.values()):
            raise ValueError(f"mask ratios must be in [0, 1], got {mask_ratios}")
        ratios = dict(mask_ratios)
        if "identity" not in ratios:
            ratios["identity"] = 1.0 - sum(ratios.values())
        if not math.isclose(sum(ratios.values()), 1.0, abs_tol=1e-6) or ratios["identity"] < -1e-9:
            raise ValueError(f"mask ratios must sum to 1, got {ratios}")
        self.mask_ratios = ratios
        self.rng = rng or random

    def get_mask(self, num_frames: int, device=None) -> torch.Tensor:
        """One mask [T] bool."""
        u = self.rng.random()
        name, acc = "identity", 0.0
        for mask_name, ratio in self.mask_ratios.items():
            acc += ratio
            if u < acc:
                name = mask_name
                break
        mask = torch.ones(num_frames, dtype=torch.bool, device=device)
        if num_frames <= 1:
            return mask
        qmax = max(num_frames // 4, 1)
        randint = self.rng.randint
        if name == "quarter_random":
            size = randint(1, qmax)
            pos = randint(0, num_frames - size)
            mask[pos : pos + size] = False
        elif name == "image_random":
            pos = randint(0, num_frames - 1)
            mask[pos] = False
        elif name == "quarter_head":
            mask[: randint(1, qmax)] = False
        elif name == "image_head":
            mask[:1] = False
        elif name == "quarter_tail":
            mask[-randint(1, qmax):] = False
        elif name == "image_tail":
            mask[-1:] = False
        elif name == "quarter_head_tail":
            size = randint(1, qmax)
            mask[:size] = False
            mask[-size:] = False
        elif name == "image_head_tail":
            mask[:1] = False
            mask[-1:] = False
        elif name == "intepolate":
            mask[randint(0, 1) :: 2] = False
        elif name == "random":
            ratio = self.rng.uniform(0.1, 0.9)
            mask = torch.rand(num_frames, device=device) > ratio
        if not mask.any():
            mask[-1] = True
        return mask

    def get_masks(self, x: torch.Tensor) -> torch.Tensor:
        """Masks [B, T] bool for latents x [B, C, T, H, W]."""
        return torch.stack([self.get_mask(x.shape[2], x.device) for _ in range(x.shape[0])])
