"""Buckets: every training micro-batch holds samples of one (resolution, frame count, aspect ratio).

Open-Sora 1.2 trains on a mix of sizes, lengths and shapes. A bucket table (facts §5) says, per resolution and
frame count, how likely a sample that fits is to be kept there and the per-process batch size::

    {"48px": {1: [1.0, 8], 9: [1.0, 4], 17: [[1.0, 0.33], 2]},   # resolution -> {frames: [keep, batch]}
     "64px": {1: [0.3, 8], 9: [0.4, 2]}}

``keep`` is a probability, or a pair ``[p_res, p_frames]``: ``p_frames`` is the chance that this frame count is
considered at all for a sample, ``p_res`` the chance to accept it once chosen (otherwise the sample falls to the
next smaller resolution). Tables are plain dicts of lists so they live in YAML params.

Assignment of one sample (H x W pixels, T frames), `BucketTable.assign`, as the reference does it:

- resolutions are scanned from the largest pixel budget down; a sample qualifies when H*W >= 0.8 * budget;
- a still image (T == 1) can only go to frame bucket 1, kept with probability ``keep``;
- a video takes the longest frame bucket t != 1 with T > t * frame_interval (strictly) whose ``p_frames`` draw
  passes, then is kept at this resolution with probability ``p_res``;
- the aspect-ratio bucket is the table key closest to H / W;
- each probability check uses a fresh ``np.random.default_rng(seed + epoch + row_id * num_buckets + bucket_id)``,
  where bucket_id numbers the (resolution, frames) pairs in scan order and num_buckets counts the
  (resolution, frames, ratio) triples; so assignments are redrawn every epoch and are the same in every process.

`BucketSampler` turns an epoch's assignment into micro-batches: per bucket the rows are padded to a multiple of the
batch size (or the remainder dropped), shuffled, cut into micro-batches, and the order of all micro-batches is
shuffled (torch generator seeded with seed + epoch). The epoch's list of micro-batches (its "plan") does not depend
on the number of processes except for being cut to a multiple of ``num_replicas * accumulation``; step s of rank r
takes micro-batches ``s*W*G + m*W + r`` (m = 0..G-1). So processes never share a micro-batch, and one process with
G = 2 sees exactly the micro-batches that two processes with G = 1 see, step for step.
"""

from __future__ import annotations

import math
from collections import Counter, OrderedDict
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from .aspect import RELEASED_PIXELS, RELEASED_TABLES, closest_ratio_key, ratio_key, scaled_table

APPROX = 0.8  # a sample fits a resolution when H*W >= APPROX * budget

BucketKey = tuple  # (resolution name, frames, ratio key)


def _parse_resolutions(value) -> dict[str, int] | None:
    """"48px:2304,64px:4096" or {"48px": 2304} -> {"48px": 2304}; None/"" -> None."""
    if value is None or value == "" or value == {}:
        return None
    if isinstance(value, str):
        out = {}
        for part in value.split(","):
            if part.strip():
                name, pixels = part.split(":")
                out[name.strip()] = int(pixels)
        return out
    return {str(k): int(v) for k, v in dict(value).items()}


def _parse_ratios(value) -> list[str] | None:
    if value is None or value == "" or value == []:
        return None
    if isinstance(value, str):
        value = [v for v in value.split(",") if v.strip()]
    return [ratio_key(str(v).strip()) for v in value]


def resolution_sizes(
    name: str, pixels: int | None = None, aspect_ratios: Sequence[str] | None = None
) -> tuple[int, dict[str, tuple[int, int]]]:
    """(pixel budget, {ratio key: (H, W)}) of a resolution.

    With ``pixels`` (the embedded default) the table is `scaled_table(pixels, aspect_ratios)`. Without, the released
    table of ``name`` is used (restricted to ``aspect_ratios`` when given). Released resolutions whose table is not
    in `aspect.RELEASED_TABLES` (the PixArt-style "256", "512", "1024", "2048" and "1080p", "2k") get a table of the
    same 17 ratio keys computed from the budget (multiples of 16) - an approximation of the reference's sizes.
    """
    keys = list(aspect_ratios) if aspect_ratios else None
    if pixels is not None:
        return int(pixels), scaled_table(int(pixels), keys)
    if name in RELEASED_TABLES:
        table = RELEASED_TABLES[name]
        if keys:
            table = {k: table[k] for k in keys}
        return RELEASED_PIXELS[name], dict(table)
    if name in RELEASED_PIXELS:
        return RELEASED_PIXELS[name], scaled_table(RELEASED_PIXELS[name], keys, multiple=16)
    raise ValueError(f"unknown resolution {name!r}: give its pixel budget (e.g. resolutions '{name}:4096') "
                     f"or use a released name ({', '.join(RELEASED_PIXELS)})")


def normalize_bucket_config(config: dict) -> "OrderedDict[str, OrderedDict[int, tuple]]":
    """YAML table -> {res: {frames: (keep, batch_size)}} with keep a float or a (p_res, p_frames) tuple.

    Accepts int or str frame keys and lists or tuples; checks probabilities and batch sizes (a batch size may be
    None only where keep is 0, as in the reference's "0.0, None" entries).
    """
    out: OrderedDict = OrderedDict()
    for res, per_t in dict(config).items():
        res = str(res)
        if not isinstance(per_t, dict) or not per_t:
            raise ValueError(f"bucket table: resolution {res!r} needs a non-empty {{frames: [keep, batch_size]}} map")
        out[res] = OrderedDict()
        for t, entry in per_t.items():
            try:
                t_int = int(t)
            except (TypeError, ValueError) as err:
                raise ValueError(f"bucket table {res}: frame count {t!r} is not an integer") from err
            if t_int < 1:
                raise ValueError(f"bucket table {res}: frame count must be >= 1, got {t_int}")
            if not isinstance(entry, (list, tuple)) or len(entry) != 2:
                raise ValueError(f"bucket table {res}/{t_int}: entry must be [keep, batch_size], got {entry!r}")
            keep, bs = entry
            if isinstance(keep, (list, tuple)):
                if len(keep) != 2:
                    raise ValueError(f"bucket table {res}/{t_int}: keep must be p or [p_res, p_frames], got {keep!r}")
                keep = (float(keep[0]), float(keep[1]))
                probs = keep
            else:
                keep = float(keep)
                probs = (keep,)
            if any(not 0.0 <= p <= 1.0 for p in probs):
                raise ValueError(f"bucket table {res}/{t_int}: probabilities must be in [0, 1], got {keep!r}")
            p_res = keep[0] if isinstance(keep, tuple) else keep
            if bs is None:
                if p_res > 0:
                    raise ValueError(f"bucket table {res}/{t_int}: batch size None needs keep 0, got {keep!r}")
            else:
                bs = int(bs)
                if bs < 1:
                    raise ValueError(f"bucket table {res}/{t_int}: batch size must be >= 1, got {bs}")
            out[res][t_int] = (keep, bs)
    return out


def bucket_config_to_yaml(config: dict) -> dict:
    """The inverse of `normalize_bucket_config`: plain dicts and lists (YAML/JSON-safe)."""
    return {
        res: {int(t): [list(keep) if isinstance(keep, tuple) else keep, bs] for t, (keep, bs) in per_t.items()}
        for res, per_t in normalize_bucket_config(config).items()
    }


def bucket_name(key: BucketKey) -> str:
    """("64px", 17, "1.00") -> "64px/17f/1.00"."""
    return f"{key[0]}/{key[1]}f/{key[2]}"


class BucketTable:
    """A bucket table with its resolution sizes; assigns samples to buckets.

    config: {res: {frames: [keep, batch_size]}} (see module doc).
    resolutions: {res: pixel budget} for resolutions that are not released names (the embedded "48px", "64px"),
        or a "name:pixels,..." string; released names need nothing.
    aspect_ratios: ratio names or keys to use (default: every key of the resolution's table).
    """

    def __init__(self, config: dict, resolutions: dict | str | None = None, aspect_ratios: Iterable[str] | str | None = None):
        self.config = normalize_bucket_config(config)
        budgets = _parse_resolutions(resolutions) or {}
        ratios = _parse_ratios(aspect_ratios)
        self.sizes: dict[str, dict[str, tuple[int, int]]] = {}
        self.pixels: dict[str, int] = {}
        for res in self.config:
            self.pixels[res], self.sizes[res] = resolution_sizes(res, budgets.get(res), ratios)
        # scan order: largest pixel budget first; frames longest first
        self.res_order = sorted(self.config, key=lambda r: self.pixels[r], reverse=True)
        self.frames = {r: sorted(self.config[r], reverse=True) for r in self.res_order}
        self.bucket_ids: dict[tuple[str, int], int] = {}
        for res in self.res_order:
            for t in self.frames[res]:
                self.bucket_ids[(res, t)] = len(self.bucket_ids)
        self.num_buckets = sum(len(self.sizes[r]) * len(self.frames[r]) for r in self.res_order)

    # -- table lookups ------------------------------------------------------------------------
    def keep_prob(self, res: str, frames: int) -> tuple[float, float | None]:
        """(p_res, p_frames) of a (resolution, frames) entry; p_frames is None for the plain form."""
        keep = self.config[res][frames][0]
        return (keep[0], keep[1]) if isinstance(keep, tuple) else (keep, None)

    def batch_size(self, key: BucketKey | tuple[str, int]) -> int | None:
        return self.config[key[0]][int(key[1])][1]

    def size(self, key: BucketKey) -> tuple[int, int, int]:
        """(T, H, W) of a bucket."""
        res, frames, ratio = key
        h, w = self.sizes[res][ratio]
        return int(frames), int(h), int(w)

    def keys(self) -> list[BucketKey]:
        return [(r, t, k) for r in self.res_order for t in self.frames[r] for k in self.sizes[r]]

    # -- assignment ---------------------------------------------------------------------------
    def check_seed(self, seed: int, epoch: int, row_id: int) -> int:
        """The base of the per-check seeds of one sample: seed + epoch + row_id * num_buckets."""
        return int(seed) + int(epoch) + int(row_id) * self.num_buckets

    def assign(self, num_frames: int, height: int, width: int, frame_interval: int = 1, base_seed: int = 0) -> BucketKey | None:
        """The bucket of one sample (see module doc), or None when no bucket keeps it.

        ``base_seed`` = `check_seed(seed, epoch, row_id)`; each check adds the (resolution, frames) bucket id.
        """
        T, H, W = int(num_frames), int(height), int(width)
        pixels = H * W
        for res in self.res_order:
            if pixels < APPROX * self.pixels[res]:
                continue
            entries = self.config[res]
            if T == 1:
                if 1 not in entries:
                    continue
                p_res = self.keep_prob(res, 1)[0]
                rng = np.random.default_rng(base_seed + self.bucket_ids[(res, 1)])
                if rng.random() < p_res:
                    return res, 1, closest_ratio_key(H, W, list(self.sizes[res]))
                continue
            chosen = None
            for t in self.frames[res]:
                rng = np.random.default_rng(base_seed + self.bucket_ids[(res, t)])
                p_res, p_frames = self.keep_prob(res, t)
                if p_frames is not None and rng.random() > p_frames:
                    continue  # this length is not considered for this sample
                if t != 1 and T > t * frame_interval:
                    chosen = t
                    break
            if chosen is None:
                continue
            # the same generator continues: its next draw decides whether to stay at this resolution
            if p_res >= 1 or rng.random() < p_res:
                return res, chosen, closest_ratio_key(H, W, list(self.sizes[res]))
        return None

    def to_dict(self) -> dict:
        return {
            "buckets": bucket_config_to_yaml(self.config),
            "pixels": dict(self.pixels),
            "sizes": {r: {k: list(v) for k, v in s.items()} for r, s in self.sizes.items()},
        }


@dataclass(frozen=True)
class MicroBatch:
    """One micro-batch: its bucket, the CSV row ids, and its position in the epoch's plan."""

    bucket: BucketKey
    rows: tuple[int, ...]
    index: int  # position in the epoch plan (same for every process and accumulation split)


class BucketSampler:
    """Deterministic bucketed micro-batches, sharded over processes (see module doc).

    sizes: per CSV row (T, H, W), or None for rows to leave out (e.g. rejected files).
    num_replicas / rank: data-parallel processes; accumulation: micro-batches per process per optimizer step.
    drop_last: drop each bucket's remainder (reference training) instead of padding it by repeating rows, and cut
        the plan to a multiple of num_replicas * accumulation instead of repeating its first micro-batches.
    """

    def __init__(
        self,
        table: BucketTable,
        sizes: Sequence[tuple[int, int, int] | None],
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
        accumulation: int = 1,
        frame_interval: int = 1,
        shuffle: bool = True,
        drop_last: bool = False,
    ):
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} outside 0..{num_replicas - 1}")
        if accumulation < 1:
            raise ValueError("accumulation must be >= 1")
        self.table = table
        self.sizes = list(sizes)
        self.seed = int(seed)
        self.num_replicas = int(num_replicas)
        self.rank = int(rank)
        self.accumulation = int(accumulation)
        self.frame_interval = int(frame_interval)
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.epoch = 0
        self.step = 0  # next optimizer step within the epoch
        self._plans: dict[int, list[MicroBatch]] = {}

    @property
    def group(self) -> int:
        """Micro-batches consumed per optimizer step by all processes together."""
        return self.num_replicas * self.accumulation

    # -- per epoch ----------------------------------------------------------------------------
    def assign(self, epoch: int) -> list[BucketKey | None]:
        """Bucket of every row in ``epoch`` (None: not kept, or left out)."""
        out = []
        for row_id, size in enumerate(self.sizes):
            if size is None:
                out.append(None)
                continue
            T, H, W = size
            out.append(self.table.assign(T, H, W, self.frame_interval, self.table.check_seed(self.seed, epoch, row_id)))
        return out

    def group_rows(self, epoch: int) -> "OrderedDict[BucketKey, list[int]]":
        """{bucket: row ids} in order of first appearance, rows in CSV order."""
        groups: OrderedDict = OrderedDict()
        for row_id, key in enumerate(self.assign(epoch)):
            if key is not None:
                groups.setdefault(key, []).append(row_id)
        return groups

    def plan(self, epoch: int) -> list[MicroBatch]:
        """All micro-batches of ``epoch`` in consumption order (cached)."""
        if epoch in self._plans:
            return self._plans[epoch]
        g = torch.Generator()
        g.manual_seed(self.seed + epoch)
        batches: list[tuple[BucketKey, tuple[int, ...]]] = []
        for key, rows in self.group_rows(epoch).items():
            bs = self.table.batch_size(key)
            remainder = len(rows) % bs
            if remainder:
                if self.drop_last:
                    rows = rows[: len(rows) - remainder]
                else:
                    rows = rows + [rows[i % len(rows)] for i in range(bs - remainder)]
            if self.shuffle and rows:
                rows = [rows[i] for i in torch.randperm(len(rows), generator=g).tolist()]
            batches.extend((key, tuple(rows[i : i + bs])) for i in range(0, len(rows), bs))
        if self.shuffle and batches:
            batches = [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]
        remainder = len(batches) % self.group
        if remainder:
            if self.drop_last or not batches:
                batches = batches[: len(batches) - remainder]
            else:
                batches = batches + [batches[i % len(batches)] for i in range(self.group - remainder)]
        plan = [MicroBatch(key, rows, i) for i, (key, rows) in enumerate(batches)]
        self._plans = {epoch: plan}  # keep one epoch
        return plan

    def steps_per_epoch(self, epoch: int | None = None) -> int:
        return len(self.plan(self.epoch if epoch is None else epoch)) // self.group

    def local_batches(self, epoch: int, step: int) -> list[MicroBatch]:
        """This process's ``accumulation`` micro-batches of optimizer step ``step`` of ``epoch``."""
        plan = self.plan(epoch)
        base = step * self.group
        if base + self.group > len(plan):
            raise IndexError(f"epoch {epoch} has {len(plan) // self.group} steps, asked for step {step}")
        return [plan[base + m * self.num_replicas + self.rank] for m in range(self.accumulation)]

    def global_batches(self, epoch: int, step: int) -> list[MicroBatch]:
        """Every process's micro-batches of one step (for statistics)."""
        plan = self.plan(epoch)
        return plan[step * self.group : (step + 1) * self.group]

    # -- iteration with state -----------------------------------------------------------------
    def next(self) -> tuple[int, int, list[MicroBatch]]:
        """(epoch, step, local micro-batches) at the current position, then advance (rolling over epochs)."""
        for _ in range(1000):
            if self.step < self.steps_per_epoch(self.epoch):
                break
            self.epoch += 1
            self.step = 0
        else:
            raise RuntimeError("no bucket keeps any sample: the bucket table and the data do not match")
        epoch, step = self.epoch, self.step
        self.step += 1
        return epoch, step, self.local_batches(epoch, step)

    def state_dict(self) -> dict:
        return {"seed": self.seed, "epoch": self.epoch, "step": self.step, "num_replicas": self.num_replicas,
                "accumulation": self.accumulation}

    def load_state_dict(self, state: dict) -> None:
        if int(state["seed"]) != self.seed:
            raise ValueError(f"sampler state was saved with seed {state['seed']}, this sampler has {self.seed}")
        group = int(state.get("num_replicas", 1)) * int(state.get("accumulation", 1))
        if group != self.group:
            raise ValueError(
                f"sampler state was saved with {group} micro-batches per step (processes x accumulation), this run has "
                f"{self.group}: the position within the epoch would not match"
            )
        self.epoch, self.step = int(state["epoch"]), int(state["step"])

    # -- statistics ---------------------------------------------------------------------------
    def usage(self, epoch: int) -> dict:
        """Samples and micro-batches per bucket in the plan of ``epoch`` (all processes)."""
        plan = self.plan(epoch)
        samples, batches = Counter(), Counter()
        for mb in plan:
            samples[bucket_name(mb.bucket)] += len(mb.rows)
            batches[bucket_name(mb.bucket)] += 1
        kept = sum(1 for k in self.assign(epoch) if k is not None)
        return {
            "epoch": epoch,
            "rows": sum(1 for s in self.sizes if s is not None),
            "kept": kept,
            "micro_batches": len(plan),
            "steps": len(plan) // self.group,
            "samples": dict(sorted(samples.items())),
            "batches": dict(sorted(batches.items())),
        }


def expected_keep_rate(table: BucketTable, res: str, frames: int) -> float:
    """Probability that a sample fitting (res, frames) first is kept there: p_frames (if any) * p_res."""
    p_res, p_frames = table.keep_prob(res, frames)
    return p_res * (1.0 if p_frames is None else p_frames)


def describe_table(table: BucketTable) -> list[dict[str, Any]]:
    """One row per (resolution, frames): keep probabilities, batch size and the (H, W) of each ratio."""
    rows = []
    for res in table.res_order:
        for t in table.frames[res]:
            p_res, p_frames = table.keep_prob(res, t)
            rows.append({
                "resolution": res, "pixels": table.pixels[res], "frames": t, "p_res": p_res,
                "p_frames": p_frames, "batch_size": table.batch_size((res, t)),
                "bucket_id": table.bucket_ids[(res, t)],
                "sizes": {k: f"{h}x{w}" for k, (h, w) in table.sizes[res].items()},
            })
    return rows


def latent_tokens(key: BucketKey, table: BucketTable, spatial: int = 8, patch: tuple[int, int, int] = (1, 2, 2)) -> int:
    """Diffusion tokens per sample of a bucket (VAE: 8x spatial, 17 -> 5 frames; STDiT3 patch 1x2x2)."""
    from ..models.vae import latent_num_frames

    T, H, W = table.size(key)
    t = latent_num_frames(T)
    return math.ceil(t / patch[0]) * math.ceil(H / spatial / patch[1]) * math.ceil(W / spatial / patch[2])
