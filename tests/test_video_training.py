"""Video training: dataset, score captions, bad files, masks, feature cache, exact resume, 2 processes."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from opensora_lib.data.buckets import BucketSampler, BucketTable
from opensora_lib.data.synthetic import generate_dataset, read_csv
from opensora_lib.data.video_dataset import SampleError, VideoTextDataset, frame_window
from opensora_lib.schedulers.masks import MaskGenerator
from opensora_lib.train import engine

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
BUCKETS = {"48px": {1: [1.0, 2], 9: [1.0, 2]}}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """16 small samples (48px, 17-24 frames, a quarter stills) rendered into a temp dir."""
    out = tmp_path_factory.mktemp("world")
    paths = generate_dataset(out, dict(seed=7, num_samples=16, resolutions="48px:2304", min_frames=17, max_frames=24,
                                       val_fraction=0.1, still_fraction=0.25), progress=False)
    return paths["train"]


def _csv_with(tmp_path, world, extra_rows=(), columns=None, edit=None):
    """A copy of the world's train CSV (absolute paths), optionally with extra rows / columns."""
    import csv

    rows = read_csv(world)
    for r in rows:
        if edit:
            edit(r)
    rows = rows + [dict(rows[0], **e) for e in extra_rows]
    fields = list(rows[0]) + [c for c in (columns or []) if c not in rows[0]]
    path = tmp_path / "data.csv"
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    return path


# -- dataset ---------------------------------------------------------------------------------------


def test_samples_in_bucket_size_with_fps_and_value_range(world):
    ds = VideoTextDataset(world, seed=1)
    video_row = next(i for i in range(len(ds)) if not ds.is_image(i))
    image_row = next(i for i in range(len(ds)) if ds.is_image(i))
    s = ds.get(video_row, (9, 40, 56), epoch=0)
    assert s["video"].shape == (3, 9, 40, 56) and s["video"].min() >= -1 and s["video"].max() <= 1
    assert s["fps"] == int(float(ds.rows[video_row]["fps"])) and s["ar"] == 40 / 56
    img = ds.get(image_row, (1, 48, 48), epoch=0)
    assert img["video"].shape == (3, 1, 48, 48) and img["fps"] == 120


def test_frame_window_is_a_linspace_over_a_random_window():
    rng = np.random.default_rng(0)
    for _ in range(50):
        idx = frame_window(40, 9, 2, rng)
        assert len(idx) == 9 and idx[0] >= 0 and idx[-1] <= 39 and idx[-1] - idx[0] <= 17
        assert np.all(np.diff(idx) >= 1)
    assert frame_window(5, 9, 1, rng).tolist() == np.linspace(0, 4, 9).astype(int).tolist()  # shorter clip


def test_windows_fixed_or_redrawn_per_epoch(world):
    fixed = VideoTextDataset(world, seed=1, window="fixed", validate=False)
    rand = VideoTextDataset(world, seed=1, window="random", validate=False)
    row = next(i for i in range(len(fixed)) if int(fixed.rows[i]["num_frames"]) > 20)
    assert all(np.array_equal(fixed.frame_indices(row, 9, 0), fixed.frame_indices(row, 9, e)) for e in range(5))
    assert len({tuple(rand.frame_indices(row, 9, e)) for e in range(10)}) > 1
    assert np.array_equal(rand.frame_indices(row, 9, 3), VideoTextDataset(world, seed=1, validate=False).frame_indices(row, 9, 3))


def test_head_window_starts_every_window_at_the_first_frame(world):
    assert frame_window(40, 9, 2, None).tolist() == np.linspace(0, 17, 9).astype(int).tolist()
    head = VideoTextDataset(world, seed=1, window="head", validate=False)
    rows = [i for i in range(len(head)) if int(head.rows[i]["num_frames"]) > 20]
    assert rows
    for row in rows:
        for epoch in range(3):
            idx = head.frame_indices(row, 9, epoch)
            assert idx[0] == 0 and idx.tolist() == list(range(9))
    with pytest.raises(ValueError, match="'head'"):
        VideoTextDataset(world, seed=1, window="middle", validate=False)


def test_score_captions_drop_each_part_with_probability_0_2(tmp_path, world):
    def edit(r):
        r["aes"], r["flow"], r["cmotion"] = "5.5", "3.25", "pan left"

    path = _csv_with(tmp_path, world, columns=["aes", "flow", "cmotion"], edit=edit)
    ds = VideoTextDataset(path, seed=3, validate=False)
    caps = [ds.caption(row, epoch) for row in range(len(ds)) for epoch in range(150)]
    n = len(caps)
    for part in ("aesthetic score: 5.5", "motion score: 3.2", "Camera motion: pan left."):
        share = sum(part in c for c in caps) / n
        assert abs(share - 0.8) < 4 * np.sqrt(0.16 / n), (part, share)
    full = ds.rows[0]["text"] + " [aesthetic score: 5.5, motion score: 3.2] Camera motion: pan left."
    assert full in caps
    assert ds.caption(2, 7) == VideoTextDataset(path, seed=3, validate=False).caption(2, 7)  # seeded
    # the synthetic CSV's own cmotion column ("zoom out", "static", ...) becomes the reference label text
    plain = VideoTextDataset(world, seed=3, validate=False)
    row = next(i for i in range(len(plain)) if plain.rows[i]["cmotion"])
    texts = {plain.caption(row, e) for e in range(30)}
    label = plain.rows[row]["cmotion"]
    assert any(t.endswith(f"Camera motion: {label}.") for t in texts)
    assert VideoTextDataset(world, use_scores=False, validate=False).caption(row, 0) == plain.rows[row]["text"]


def _bad_csv(tmp_path, world):
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"\x00\x00\x00\x18ftypmp42 this is not a video" * 10)
    return _csv_with(tmp_path, world, extra_rows=[{"path": str(tmp_path / "missing.mp4")}, {"path": str(corrupt)}])


def test_bad_file_policy_fail_names_row_and_file(tmp_path, world):
    path = _bad_csv(tmp_path, world)
    n = len(read_csv(world))  # the bad rows are rows n (missing) and n + 1 (corrupt)
    with pytest.raises(SampleError) as err:
        VideoTextDataset(path, on_error="fail")
    assert "missing.mp4" in str(err.value) and f"row {n} " in str(err.value) and str(path) in str(err.value)
    # without validation, the failure comes when the sample is loaded, with the same message
    ds = VideoTextDataset(path, on_error="fail", validate=False)
    with pytest.raises(SampleError, match=f"row {n + 1} .*corrupt.mp4"):
        ds.get(n + 1, (9, 48, 48), 0)


def test_bad_file_policy_skip_logs_to_the_rejects_file(tmp_path, world):
    path = _bad_csv(tmp_path, world)
    rejects = tmp_path / "rejects.jsonl"
    n = len(read_csv(world))
    ds = VideoTextDataset(path, on_error="skip", rejects_path=rejects)
    lines = [json.loads(l) for l in rejects.read_text().splitlines()]
    assert [(l["row"], Path(l["path"]).name, l["when"]) for l in lines] == [(n, "missing.mp4", "probe"),
                                                                           (n + 1, "corrupt.mp4", "probe")]
    assert ds.sizes()[n] is None and ds.sizes()[n + 1] is None and None not in ds.sizes()[:n]
    plan = BucketSampler(BucketTable(BUCKETS, "48px:2304"), ds.sizes(), seed=0).plan(0)
    assert not {n, n + 1} & {r for mb in plan for r in mb.rows}
    # a file that disappears after validation is skipped when loaded, and logged
    victim = Path(ds.rows[0]["path"]).rename(tmp_path / "moved")
    try:
        assert ds.get(0, (1, 48, 48) if ds.is_image(0) else (9, 48, 48), 0) is None
    finally:
        victim.rename(ds.rows[0]["path"])
    assert json.loads(rejects.read_text().splitlines()[-1])["when"] == "load"


# -- masks, schedule, EMA --------------------------------------------------------------------------


@pytest.mark.parametrize("stage,share", [("stage3", 0.25), ("stage1", 0.20)])
def test_mask_frequency_per_stage(stage, share):
    torch.manual_seed(0)
    gen = MaskGenerator(engine.MASK_RATIOS[stage], rng=random.Random(0))
    masks = [gen.get_mask(5) for _ in range(2000)]
    observed = sum(bool((~m).any()) for m in masks) / 2000
    assert abs(observed - share) <= 0.03, observed
    assert all(m.any() for m in masks)  # never all given
    assert all(MaskGenerator(engine.MASK_RATIOS[stage]).get_mask(1).all() for _ in range(20))  # images: none


def test_stage_params_use_the_reference_mask_ratios():
    for path in ("params/train.yaml", "params/released/train.yaml"):
        stages = yaml.safe_load((ROOT / path).read_text())["train"]["stages"]
        assert stages["1"]["mask_ratios"] == engine.MASK_RATIOS["stage1"]
        assert stages["2"]["mask_ratios"] == engine.MASK_RATIOS["stage2"]
        assert stages["3"]["mask_ratios"] == engine.MASK_RATIOS["stage3"]


def test_warmup_schedule_and_ema():
    f = engine.warmup_factor(4)
    assert [f(s) for s in range(6)] == [0.2, 0.4, 0.6, 0.8, 1.0, 1.0]
    assert engine.warmup_factor(0)(0) == 1.0
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 3))
    model[0].requires_grad_(False)
    ema = engine.EMA(model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update(model, 0.99)
    assert torch.allclose(ema.model[0].weight, model[0].weight - 1)  # frozen: not updated
    assert torch.allclose(ema.model[1].weight, model[1].weight - 0.99)


def test_config_from_params_and_released_switch():
    params = yaml.safe_load((ROOT / "params/train.yaml").read_text())["train"]
    cfg = engine.stage_config(params, 3, steps=5)
    assert cfg.stage == 3 and cfg.steps == 5 and cfg.adam_eps == 1e-15 and cfg.ema_decay == 0.99
    assert cfg.freeze_y_embedder == bool(params["common"]["freeze_y_embedder"])
    assert cfg.zero_stage == 2 and cfg.lr == float(params["common"]["lr"]) and cfg.window == params["common"]["window"]
    released = engine.stage_config(yaml.safe_load((ROOT / "params/released/train.yaml").read_text())["train"], 1)
    assert released.freeze_y_embedder  # the released stages keep the caption projection frozen
    assert released.model_preset == "STDiT3-XL/2" and released.warmup_steps == 1000 and released.precision == "bf16"
    assert released.lr == 1e-4  # the released configs' lr (the embedded default trains at 5e-4, params/train.yaml)
    # the timestep transform sees video lengths as they are in the released run, scaled in the embedded one
    assert released.transform_frame_scale == 1.0
    assert cfg.transform_frame_scale == float(params["common"]["transform_frame_scale"])
    with pytest.raises(ValueError, match="unknown training param"):
        engine.VideoTrainConfig.from_dict({"stpes": 3})


# -- feature cache ---------------------------------------------------------------------------------


class _TinyText:
    """A stand-in text encoder (same interface as MiniLMEncoder) for the cache test."""

    model_max_length, output_dim = 8, 4

    def __init__(self):
        torch.manual_seed(0)
        self.model = torch.nn.Embedding(1000, 4)
        self.calls = 0

    def encode(self, texts):
        self.calls += 1
        ids = torch.tensor([[hash(w) % 1000 for w in t.split()][:8] + [0] * max(0, 8 - len(t.split())) for t in texts])
        mask = (torch.arange(8)[None] < torch.tensor([min(len(t.split()), 8) for t in texts])[:, None]).long()
        return {"y": self.model(ids)[:, None].detach(), "mask": mask}


class _TinyVAE(torch.nn.Module):
    """A stand-in VAE (8x down, 17 -> 5 frames, posterior sample from the generator) for the cache test; the real
    narrow VAE runs in the engine tests below."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.proj = torch.nn.Conv3d(3, 4, kernel_size=(1, 8, 8), stride=(1, 8, 8))

    def encode(self, x, generator=None):
        z = self.proj(x[:, :, ::4] if x.shape[2] > 1 else x)
        return z + 0.1 * torch.randn(z.shape, generator=generator)


def test_feature_cache_is_transparent(tmp_path, world):
    from opensora_lib.train.features import FeatureProvider

    vae = _TinyVAE()
    ds = VideoTextDataset(world, seed=2, window="fixed")
    table = BucketTable(BUCKETS, "48px:2304")
    mb = BucketSampler(table, ds.sizes(), seed=0).plan(0)[0]
    plain = FeatureProvider(ds, vae, _TinyText()).batch(mb, table, 0)
    cached = FeatureProvider(ds, vae, _TinyText(), cache_dir=tmp_path / "fc").batch(mb, table, 0)
    text = _TinyText()
    reader = FeatureProvider(ds, None, text, cache_dir=tmp_path / "fc", read_only=True, vae_id=
                             FeatureProvider(ds, vae, text).vae_id)
    again = reader.batch(mb, table, 0)
    for b in (cached, again):
        assert torch.equal(b["x"], plain["x"]) and torch.equal(b["y"], plain["y"]) and torch.equal(b["mask"], plain["mask"])
    assert reader.stats["latent_misses"] == 0 and text.calls == 0  # everything came from the cache
    assert plain["x"].shape[:3] == (2, 4, 1 if mb.bucket[1] == 1 else 3)


def test_mirror_caption_swaps_direction_words_only():
    from opensora_lib.data.video_dataset import mirror_caption

    text = ("A red circle moves quickly left and a blue cross moves slowly up across a green and white checkered "
            "background. The camera pans right. Camera motion: pan_right.")
    h = mirror_caption(text, True, False)
    assert h == text.replace("left", "@").replace("right", "left").replace("@", "right")
    assert mirror_caption(text, False, True) == text.replace("moves slowly up", "moves slowly down")
    assert mirror_caption(mirror_caption(text, True, True), True, True) == text  # a mirror twice is the identity
    assert mirror_caption("The camera tilts down. Camera motion: tilt_down.", False, True) == (
        "The camera tilts up. Camera motion: tilt_up.")
    assert mirror_caption("The camera zooms in.", True, True) == "The camera zooms in."


def test_mirrored_samples_swap_the_caption_and_the_pixels_together(world):
    from opensora_lib.data.synthetic import parse_caption
    from opensora_lib.data.video_dataset import mirror_caption
    from opensora_lib.train.features import FeatureProvider

    with pytest.raises(ValueError, match="hflip_prob"):
        VideoTextDataset(world, hflip_prob=1.5, validate=False)
    plain = VideoTextDataset(world, seed=2, window="fixed", use_scores=False)
    half = VideoTextDataset(world, seed=2, window="fixed", use_scores=False, hflip_prob=0.5, vflip_prob=0.5)
    draws = [half.flips(row, epoch) for row in range(len(half)) for epoch in range(25)]
    assert draws == [half.flips(row, epoch) for row in range(len(half)) for epoch in range(25)]  # seeded
    for axis in (0, 1):
        assert 0.4 < np.mean([d[axis] for d in draws]) < 0.6
    assert all(plain.flips(row, 0) == (False, False) for row in range(len(plain)))

    both = VideoTextDataset(world, seed=2, window="fixed", use_scores=False, hflip_prob=1.0, vflip_prob=1.0)
    row = next(i for i in range(len(plain)) if not plain.is_image(i)  # a clip whose object moves
               and any(o["motion"] != "static" for o in parse_caption(plain.rows[i]["text"])["objects"]))
    size = (9, 48, 48)
    a, b = plain.get(row, size, 0), both.get(row, size, 0)
    assert torch.equal(b["video"], a["video"].flip([-1, -2]))  # [3, T, H, W] mirrored on both axes
    swap = {"left": "right", "right": "left", "up": "down", "down": "up", "static": "static"}
    truth, mirrored = parse_caption(a["text"]), parse_caption(b["text"])
    assert [swap[o["motion"]] for o in truth["objects"]] == [o["motion"] for o in mirrored["objects"]]
    assert [o["color"] for o in truth["objects"]] == [o["color"] for o in mirrored["objects"]]

    # the feature cache holds unmirrored latents; a batch mirrors them with the caption
    table = BucketTable(BUCKETS, "48px:2304")
    mb = next(m for m in BucketSampler(table, plain.sizes(), seed=0).plan(0)  # clips with a left / right word
              if any(w in plain.caption(r, 0) for r in m.rows for w in ("left", "right")))
    vae = _TinyVAE()
    x0 = FeatureProvider(plain, vae, _TinyText()).batch(mb, table, 0)
    hor = VideoTextDataset(world, seed=2, window="fixed", use_scores=False, hflip_prob=1.0)
    x1 = FeatureProvider(hor, vae, _TinyText()).batch(mb, table, 0)
    assert torch.equal(x1["x"], x0["x"].flip(-1))  # [B, C, T', h, w]
    assert x1["texts"] == [mirror_caption(t, True, False) for t in x0["texts"]] != x0["texts"]


# -- engine in separate processes ------------------------------------------------------------------

DRIVER = textwrap.dedent('''
    import json, sys, torch
    torch.set_num_threads(1)
    from opensora_lib.train.engine import VideoTrainConfig, VideoTrainer
    spec = json.load(open(sys.argv[1]))
    for phase in spec["phases"]:
        cfg = VideoTrainConfig.from_dict({**spec["config"], **phase.get("config", {})})
        trainer = VideoTrainer(cfg, progress=False)
        record = []
        def keep(entry):
            weights = torch.cat([p.detach().float().flatten() for p in trainer.engine.module.parameters()])
            ema = torch.cat([p.detach().flatten() for p in trainer.ema.model.parameters()])
            record.append({"step": entry["step"], "loss": entry["loss"], "weights": weights, "ema": ema})
        trainer.train(phase["steps"], callback=keep)
        if phase.get("save"):
            trainer.save(phase["save"])
        if trainer.rank == 0 and phase.get("record"):
            torch.save(record, phase["record"])
        trainer.close()
''')


def _env():
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu",
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT", "MASTER_ADDR"):
        env.pop(k, None)
    return env


def _run(cmd, cwd):
    proc = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return proc


def _config(world, tmp):
    return {
        "stage": 3, "csv": str(world), "buckets": BUCKETS, "resolutions": "48px:2304",
        "aspect_ratios": "1:1,3:4,4:3,9:16,16:9", "model_preset": "STDiT3-Tiny/2", "mask_ratios": engine.MASK_RATIOS["stage3"],
        "feature_cache": str(tmp / "features"), "warmup_steps": 2, "seed": 3, "threads": 1, "precision": "fp32",
        "zero_stage": 2, "grad_checkpoint": True, "window": "fixed", "accumulation": 2, "steps": 6,
    }


@pytest.fixture(scope="module")
def straight_and_stopped(world, tmp_path_factory):
    """One process: 6 steps straight (recorded), then a fresh trainer: 3 steps, checkpoint, stop."""
    tmp = tmp_path_factory.mktemp("resume")
    (tmp / "driver.py").write_text(DRIVER)
    spec = {"config": _config(world, tmp), "phases": [
        {"steps": 6, "record": str(tmp / "straight.pt")},
        {"steps": 3, "record": str(tmp / "first3.pt"), "save": str(tmp / "ckpt" / "step3.pt")},
    ]}
    (tmp / "spec.json").write_text(json.dumps(spec))
    _run([sys.executable, str(tmp / "driver.py"), str(tmp / "spec.json")], ROOT)
    return tmp


def test_exact_resume_in_a_new_process(straight_and_stopped):
    tmp = straight_and_stopped
    spec = json.loads((tmp / "spec.json").read_text())
    spec["phases"] = [{"steps": 6, "record": str(tmp / "resumed.pt"),
                       "config": {"resume": str(tmp / "ckpt" / "step3.pt")}}]
    (tmp / "spec_resume.json").write_text(json.dumps(spec))
    _run([sys.executable, str(tmp / "driver.py"), str(tmp / "spec_resume.json")], ROOT)
    straight = torch.load(tmp / "straight.pt")
    first3 = torch.load(tmp / "first3.pt")
    resumed = torch.load(tmp / "resumed.pt")
    assert [r["step"] for r in resumed] == [4, 5, 6]
    assert [r["loss"] for r in first3] == [r["loss"] for r in straight[:3]]
    assert [r["loss"] for r in resumed] == [r["loss"] for r in straight[3:]]  # bit-identical
    for a, b in zip(straight[3:], resumed):
        assert torch.equal(a["weights"], b["weights"]) and torch.equal(a["ema"], b["ema"])
    assert not any(p.name.endswith(".tmp") for p in (tmp / "ckpt").iterdir())  # atomic write left nothing behind


def test_checkpoint_rebuilds_the_model_from_the_file_alone(straight_and_stopped):
    path = straight_and_stopped / "ckpt" / "step3.pt"
    state = torch.load(path, weights_only=True)  # plain tensors and containers only
    assert state["step"] == 3 and state["sampler"]["step"] == 3 and len(state["rng"]) == 1
    assert {"python", "numpy", "torch"} <= set(state["rng"][0]) and state["optimizer"][0]["base_optimizer_state"]
    first3 = torch.load(straight_and_stopped / "first3.pt")
    for which, key in (("ema", "ema"), ("model", "weights")):
        model = engine.load_video_checkpoint(path, weights=which)
        assert model.config["depth"] == 2 and not model.training
        assert torch.equal(torch.cat([p.detach().flatten() for p in model.parameters()]), first3[-1][key])


@pytest.mark.slow
def test_two_processes_match_one_process_with_the_same_global_batch(world, straight_and_stopped, tmp_path):
    """torchrun, 2 processes x accumulation 1 vs 1 process x accumulation 2 (the straight run)."""
    config = _config(world, straight_and_stopped)
    config.update(accumulation=1, ckpt_dir=str(tmp_path / "ckpt"))
    params = {"train": {"common": config, "stages": {"3": {}}}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    _run([str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_port", str(engine.free_port()), "-m",
          "opensora_lib.train.video", "--params", str(tmp_path / "params.yaml"), "--stage", "3", "--metrics",
          str(tmp_path / "m.json"), "--figures", str(tmp_path / "fig")], ROOT)
    metrics = json.loads((tmp_path / "m.json").read_text())
    straight = torch.load(straight_and_stopped / "straight.pt")
    two = [loss for _, loss in metrics["loss_curve"]]
    one = [r["loss"] for r in straight]
    assert metrics["world_size"] == 2 and len(two) == len(one) == 6
    np.testing.assert_allclose(two, one, rtol=1e-4)
    two_model = engine.load_video_checkpoint(tmp_path / "ckpt" / "last.pt", weights="model")
    flat = torch.cat([p.detach().flatten() for p in two_model.parameters()])
    # Weights agree to summation order; with AdamW eps 1e-15 a near-zero gradient whose rounding differs can move
    # its weight by up to one learning-rate step (1e-4), so a few elements differ by that much.
    diff = (flat - straight[-1]["weights"]).abs()
    assert diff.max() <= 5e-4 and diff.mean() < 1e-6 and (diff > 1e-5).float().mean() < 1e-3


def test_mask_ratio_order_does_not_matter():
    """The type pick walks the ratios in order: the engine fixes the reference order, so a YAML dump that sorts keys
    gives the same masks."""
    shuffled = dict(sorted(engine.MASK_RATIOS["stage3"].items()))
    assert list(engine.canonical_mask_ratios(shuffled)) == list(engine.MASK_RATIOS["stage3"])
    draws = []
    for ratios in (engine.MASK_RATIOS["stage3"], shuffled):
        torch.manual_seed(0)
        gen = MaskGenerator(engine.canonical_mask_ratios(ratios), rng=random.Random(1))
        draws.append([gen.get_mask(5).tolist() for _ in range(300)])
    assert draws[0] == draws[1]


def test_init_from_other_checkpoint_formats(tmp_path):
    """An init checkpoint with a stored config (e.g. the adaptation stage's) rebuilds that model; a bare state dict
    loads strictly into the preset; training switches come from the training config."""
    from opensora_lib.models.stdit3 import STDiT3_Tiny_2

    torch.manual_seed(1)
    src, other = STDiT3_Tiny_2(), STDiT3_Tiny_2()
    sd = {k: v.clone() for k, v in src.state_dict().items()}
    ema = {k: v.clone() for k, v in other.state_dict().items()}
    config = {k: (list(v) if isinstance(v, tuple) else v) for k, v in src.config.items()}
    torch.save({"format": "someone-else/1", "config": config, "model": sd, "ema": ema}, tmp_path / "adapt.pt")
    torch.save(sd, tmp_path / "bare.pt")
    for path, which, expect in (("adapt.pt", "model", sd), ("adapt.pt", "ema", ema), ("bare.pt", "model", sd)):
        cfg = engine.VideoTrainConfig(init=str(tmp_path / path), init_weights=which, model_preset="STDiT3-Tiny/2",
                                      grad_checkpoint=True, freeze_y_embedder=True)
        model, info = engine.build_model(cfg)
        assert all(torch.equal(model.state_dict()[k], v) for k, v in expect.items())
        assert model.grad_checkpoint and not any(p.requires_grad for p in model.y_embedder.parameters())
    with pytest.raises(Exception, match="bare.pt"):
        engine.build_model(engine.VideoTrainConfig(init=str(tmp_path / "bare.pt"), model_preset="STDiT3-S/2"))
