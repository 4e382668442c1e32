"""Bucket tables, bucket assignment and the bucketed sampler (opensora_lib.data.buckets)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml

from opensora_lib.data.buckets import (
    BucketSampler,
    BucketTable,
    bucket_config_to_yaml,
    expected_keep_rate,
    normalize_bucket_config,
)

ROOT = Path(__file__).resolve().parents[1]
RES = "48px:2304,64px:4096"
RATIOS = "1:1,3:4,4:3,9:16,16:9"


def _table(config):
    return BucketTable(config, RES, RATIOS)


def _rows(n, size):
    return [size] * n


# -- tables ----------------------------------------------------------------------------------------


def test_config_forms_parse_and_round_trip():
    cfg = {"64px": {"1": [0.3, 6], 9: [[0.5, 0.33], 3]}, "48px": {17: (1.0, 2), 33: [0.0, None]}}
    norm = normalize_bucket_config(cfg)
    assert norm["64px"][1] == (0.3, 6) and norm["64px"][9] == ((0.5, 0.33), 3) and norm["48px"][33] == (0.0, None)
    assert normalize_bucket_config(bucket_config_to_yaml(cfg)) == norm
    yaml.safe_dump(bucket_config_to_yaml(cfg))  # YAML-safe
    for bad in ({"64px": {1: [1.5, 2]}}, {"64px": {1: [0.5, None]}}, {"64px": {1: [0.5]}}, {"64px": {0: [1, 1]}}):
        with pytest.raises(ValueError):
            normalize_bucket_config(bad)


def test_table_order_ids_and_sizes():
    t = _table({"48px": {1: [1.0, 8], 9: [1.0, 4]}, "64px": {1: [1.0, 6], 17: [1.0, 2], 9: [1.0, 3]}})
    assert t.res_order == ["64px", "48px"]  # largest pixel budget first
    assert t.frames["64px"] == [17, 9, 1]  # longest first
    assert t.bucket_ids == {("64px", 17): 0, ("64px", 9): 1, ("64px", 1): 2, ("48px", 9): 3, ("48px", 1): 4}
    assert t.num_buckets == 5 * 5  # (res, frames) pairs x 5 ratios
    assert t.size(("64px", 17, "1.00")) == (17, 64, 64)
    assert t.size(("48px", 9, "0.56")) == (9, 32, 64)  # H/W key: 9:16 is wider than tall


@pytest.mark.parametrize("path", ["params/train.yaml", "params/released/train.yaml"])
def test_stage_tables_in_params_build(path):
    params = yaml.safe_load((ROOT / path).read_text())["train"]
    common = params["common"]
    for key, stage in params["stages"].items():
        t = BucketTable(stage["buckets"], common.get("resolutions") or None, common.get("aspect_ratios") or None)
        for res, per_t in stage["buckets"].items():
            for frames, (keep, bs) in per_t.items():
                assert t.batch_size((str(res), int(frames))) == bs
                p_res, p_frames = t.keep_prob(str(res), int(frames))
                assert p_res == (keep[0] if isinstance(keep, list) else keep)
                assert p_frames == (keep[1] if isinstance(keep, list) else None)
        assert 0.19 <= sum(stage["mask_ratios"].values()) <= 0.251


def test_released_stage3_has_the_reference_entries():
    stages = yaml.safe_load((ROOT / "params/released/train.yaml").read_text())["train"]["stages"]
    t = BucketTable(stages["3"]["buckets"])
    assert t.keep_prob("240p", 408) == (0.5, 0.4) and t.batch_size(("240p", 408)) == 2
    assert t.keep_prob("480p", 408) == (0.0, None) and t.batch_size(("480p", 408)) is None
    assert t.batch_size(("144p", 1)) == 475
    assert t.sizes["240p"]["0.56"] == (240, 426)


# -- assignment rules ------------------------------------------------------------------------------


def test_assignment_rules():
    t = _table({"64px": {1: [1.0, 6], 9: [1.0, 3], 17: [1.0, 2]}, "48px": {1: [1.0, 8], 9: [1.0, 4]}})
    # resolution: H*W >= 0.8 * budget, largest budget first
    assert t.assign(20, 64, 64)[:2] == ("64px", 17)
    assert t.assign(20, 56, 60)[:2] == ("64px", 17)  # 3360 >= 0.8 * 4096
    assert t.assign(20, 56, 58)[:2] == ("48px", 9)  # 3248 < 3276.8: next resolution, which has no 17-bucket
    assert t.assign(20, 30, 40) is None  # 1200 < 0.8 * 2304: fits nothing
    # frames: the longest bucket with T strictly greater than bucket frames * frame_interval
    assert t.assign(17, 64, 64)[:2] == ("64px", 9)
    assert t.assign(18, 64, 64)[:2] == ("64px", 17)
    assert t.assign(19, 64, 64, frame_interval=2)[:2] == ("64px", 9)  # 19 > 9*2, not > 17*2
    assert t.assign(18, 64, 64, frame_interval=2) is None  # 18 is not > 9*2
    assert t.assign(9, 64, 64) is None  # a video never goes to the 1-frame bucket
    # images only go to the 1-frame bucket
    assert t.assign(1, 64, 64)[:2] == ("64px", 1)
    assert t.assign(1, 48, 48)[:2] == ("48px", 1)
    # the closest ratio key (H / W)
    assert t.assign(20, 88, 48)[2] == "1.78"
    assert t.assign(20, 40, 56)[2] == "0.75"
    assert t.assign(20, 60, 64)[2] == "1.00"


def test_threshold_exactness():
    t = _table({"64px": {9: [1.0, 3]}})
    assert t.assign(10, 56, 58) is None  # 3248 < 3276.8
    assert t.assign(10, 3277, 1) is not None  # exactly above 0.8 * 4096
    assert t.assign(9, 64, 64) is None  # 9 is not > 9
    assert t.assign(10, 64, 64, frame_interval=2) is None  # 10 is not > 18


def test_per_check_seed_is_the_reference_formula():
    """The keep decision of row r at epoch e for (res, frames) uses default_rng(seed+e+r*num_buckets+bucket_id)."""
    cfg = {"64px": {17: [0.5, 2]}, "48px": {17: [1.0, 2]}}
    t = _table(cfg)
    seed, epoch = 42, 3
    for row in range(50):
        base = seed + epoch + row * t.num_buckets
        expect_64 = np.random.default_rng(base + t.bucket_ids[("64px", 17)]).random() < 0.5
        assert (t.assign(20, 64, 64, 1, t.check_seed(seed, epoch, row))[0] == "64px") == expect_64


def test_tuple_form_draw_order():
    """(p_res, p_frames): first draw of the generator decides the length, the second the resolution."""
    t = _table({"64px": {17: [[0.6, 0.5], 2]}, "48px": {17: [1.0, 2]}})
    bid = t.bucket_ids[("64px", 17)]
    for base in range(200):
        rng = np.random.default_rng(base + bid)
        u1, u2 = rng.random(), rng.random()
        expect = "64px" if (u1 <= 0.5 and u2 < 0.6) else "48px"
        assert t.assign(20, 64, 64, 1, base)[0] == expect


def test_keep_probabilities_match_the_table_statistically():
    """4000 rows per case, fixed seed: observed keep rates within 4 sigma of p_res * p_frames."""
    cfg = {"64px": {1: [0.3, 6], 9: [[0.6, 0.5], 3], 17: [0.4, 2]}, "48px": {1: [1.0, 8], 9: [1.0, 4], 17: [1.0, 2]}}
    t = _table(cfg)
    n = 4000
    cases = [((1, 64, 64), ("64px", 1)), ((12, 64, 64), ("64px", 9)), ((20, 64, 64), ("64px", 17))]
    for size, (res, frames) in cases:
        sampler = BucketSampler(t, _rows(n, size), seed=7)
        got = Counter(k[:2] for k in sampler.assign(epoch=0))
        rate = got[(res, frames)] / n
        p = expected_keep_rate(t, res, frames)
        assert abs(rate - p) < 4 * np.sqrt(p * (1 - p) / n), (size, rate, p)
        # everything not kept at 64px falls to 48px (keep 1.0 there), nothing is lost
        assert got[(res, frames)] + sum(v for k, v in got.items() if k[0] == "48px") == n
    # redrawn per epoch: the same rows get different decisions
    sampler = BucketSampler(t, _rows(500, (20, 64, 64)), seed=7)
    assert sampler.assign(0) != sampler.assign(1)


# -- sampler ---------------------------------------------------------------------------------------


def _mixed_sizes(n=300, seed=0):
    rng = np.random.default_rng(seed)
    hw = [(64, 64), (72, 56), (48, 88), (48, 48), (40, 56), (32, 64)]
    out = []
    for _ in range(n):
        h, w = hw[rng.integers(len(hw))]
        t = 1 if rng.random() < 0.2 else int(rng.integers(17, 52))
        out.append((t, h, w))
    return out


CFG = {"64px": {1: [0.5, 6], 9: [0.5, 3], 17: [[0.5, 0.33], 2], 33: [[0.5, 0.5], 1]},
       "48px": {1: [1.0, 8], 9: [1.0, 4], 17: [1.0, 3], 33: [1.0, 2]}}


def test_every_micro_batch_is_one_bucket_of_its_batch_size():
    t = _table(CFG)
    sizes = _mixed_sizes()
    for drop_last in (False, True):
        sampler = BucketSampler(t, sizes, seed=1, drop_last=drop_last)
        assignment = sampler.assign(0)
        plan = sampler.plan(0)
        assert plan
        for mb in plan:
            assert len(mb.rows) == t.batch_size(mb.bucket)
            assert all(assignment[r] == mb.bucket for r in mb.rows)
        used = Counter(r for mb in plan for r in mb.rows)
        kept = [r for r, k in enumerate(assignment) if k is not None]
        if drop_last:
            assert max(used.values()) == 1  # no sample twice
        else:
            assert set(used) == set(kept)  # every kept sample is used; repeats only pad buckets


def test_plan_is_deterministic_per_seed_and_epoch():
    t = _table(CFG)
    sizes = _mixed_sizes()
    a = BucketSampler(t, sizes, seed=5).plan(2)
    b = BucketSampler(t, sizes, seed=5).plan(2)
    assert a == b
    assert a != BucketSampler(t, sizes, seed=5).plan(3)
    assert a != BucketSampler(t, sizes, seed=6).plan(2)


def test_sharding_without_overlap_and_accumulation_equivalence():
    t = _table(CFG)
    sizes = _mixed_sizes()
    one = BucketSampler(t, sizes, seed=3, accumulation=2, drop_last=True)
    ranks = [BucketSampler(t, sizes, seed=3, num_replicas=2, rank=r, drop_last=True) for r in range(2)]
    steps = one.steps_per_epoch(0)
    assert steps == ranks[0].steps_per_epoch(0) == ranks[1].steps_per_epoch(0) > 0
    seen = [set(), set()]
    for s in range(steps):
        mine = [r.local_batches(0, s)[0] for r in ranks]
        assert {mb.index for mb in mine} == {mb.index for mb in one.local_batches(0, s)}
        for r in range(2):
            seen[r].update(mine[r].rows)
    assert not seen[0] & seen[1]  # processes never share a sample (drop_last: no padding repeats)


def test_sampler_state_round_trip_and_epoch_rollover():
    t = _table(CFG)
    sizes = _mixed_sizes(120)
    a = BucketSampler(t, sizes, seed=9)
    n = a.steps_per_epoch(0)
    trace = [a.next()[:2] for _ in range(n + 3)]
    assert trace[n] == (1, 0)  # rolls over into epoch 1
    b = BucketSampler(t, sizes, seed=9)
    for _ in range(5):
        b.next()
    state = b.state_dict()
    c = BucketSampler(t, sizes, seed=9)
    c.load_state_dict(state)
    assert [c.next()[:2] for _ in range(n - 2)] == trace[5:n + 3]
    with pytest.raises(ValueError):
        BucketSampler(t, sizes, seed=9, accumulation=2).load_state_dict(state)


def test_rows_left_out_are_never_sampled():
    t = _table(CFG)
    sizes = _mixed_sizes(100)
    sizes[3] = sizes[10] = None
    plan = BucketSampler(t, sizes, seed=2).plan(0)
    assert not {3, 10} & {r for mb in plan for r in mb.rows}


def test_usage_counts():
    t = _table(CFG)
    sampler = BucketSampler(t, _mixed_sizes(200), seed=4)
    usage = sampler.usage(0)
    assert usage["micro_batches"] == len(sampler.plan(0))
    assert sum(usage["batches"].values()) == usage["micro_batches"]
    assert usage["kept"] <= usage["rows"] == 200
