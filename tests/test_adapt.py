"""The image base model and the eight adaptation steps (opensora_lib/train/adapt.py): every change alone."""

import copy
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from opensora_lib.models.stdit3 import STDiT3
from opensora_lib.schedulers.rectified_flow import RFLOW
from opensora_lib.train import adapt as A

CAP = 16  # caption channels of the test model


def tiny(**kw) -> STDiT3:
    torch.manual_seed(kw.pop("seed", 0))
    cfg = dict(depth=2, hidden_size=32, num_heads=2, caption_channels=CAP, model_max_length=8,
               enable_temporal=False, enable_fps=False, qk_norm=False)
    cfg.update(kw)
    return STDiT3(**cfg).eval()


def inputs(B=2, T=1, H=4, W=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, 4, T, H, W, generator=g)
    t = torch.tensor([100.0, 700.0][:B])
    y = torch.randn(B, 1, 5, CAP, generator=g)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]][:B])
    kw = dict(y=y, mask=mask, height=torch.full((B,), 8.0 * H), width=torch.full((B,), 8.0 * W),
              num_frames=torch.full((B,), 1.0 if T == 1 else 17.0), fps=torch.tensor([120.0, 24.0][:B]))
    return x, t, kw


def latent_set(n=6, T=1, h=4, w=4, num_captions=3, seed=0, res_name="48px"):
    g = torch.Generator().manual_seed(seed)
    captions = A.CaptionTable([f"caption {i}" for i in range(num_captions)],
                              [torch.randn(3 + i, CAP, generator=g) for i in range(num_captions)])
    group = {
        "mean": torch.randn(n, 4, T, h, w, generator=g), "std": torch.full((n, 4, T, h, w), 0.1),
        "caption": torch.arange(n) % num_captions, "height": torch.full((n,), 8.0 * h),
        "width": torch.full((n,), 8.0 * w), "num_frames": torch.full((n,), 1.0 if T == 1 else 17.0),
        "fps": torch.full((n,), 120.0 if T == 1 else 24.0), "res_name": [res_name] * n,
    }
    return A.LatentSet([group], "image_vae"), captions


# ---------------------------------------------------------------------------------------------------------------
# Model changes


def _rms(x):
    return F.rms_norm(x.float(), (x.shape[-1],), eps=1e-6).to(x.dtype)


class _RMS(torch.nn.Module):
    def forward(self, x):
        return _rms(x)


def test_add_qk_norm_changes_output_only_as_rms_normalisation_implies():
    old = tiny()
    new = A.add_qk_norm(old, seed=3)
    assert new.config["qk_norm"] and not old.config["qk_norm"]
    old_sd, new_sd = old.state_dict(), new.state_dict()
    added = [k for k in new_sd if k not in old_sd]
    assert added and all(k.endswith(("q_norm.weight", "k_norm.weight")) for k in added)
    assert all(torch.equal(new_sd[k], torch.ones_like(new_sd[k])) for k in added)
    assert all(torch.equal(old_sd[k], new_sd[k]) for k in old_sd)
    x, t, kw = inputs()
    with torch.no_grad():
        out_old, out_new = old(x, t, **kw), new(x, t, **kw)
        assert (out_old - out_new).abs().max() > 1e-4  # attention really changed
        # the old model with q and k RMS-normalised by a plain functional gives the new output
        reference = copy.deepcopy(old)
        for block in reference.spatial_blocks:
            block.attn.q_norm, block.attn.k_norm = _RMS(), _RMS()
        assert torch.allclose(reference(x, t, **kw), out_new, atol=1e-5)
    with pytest.raises(ValueError):
        A.add_qk_norm(new)


def test_add_fps_conditioning_leaves_output_unchanged():
    old = tiny(qk_norm=True)
    new = A.add_fps_conditioning(old)
    assert new.fps_embedder is not None and new.config["enable_fps"]
    x, t, kw = inputs()
    with torch.no_grad():
        ref = old(x, t, **kw)
        for fps in (120.0, 24.0, 8.0):
            kw["fps"] = torch.full((2,), fps)
            assert torch.equal(new(x, t, **kw), ref)
    # the zero output layer still learns: fps gets a gradient path
    new.train()
    new(x, t, **kw).pow(2).mean().backward()
    assert new.fps_embedder.mlp[2].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("T", [1, 3])
def test_add_temporal_blocks_leaves_output_unchanged(T):
    old = tiny(qk_norm=True, enable_fps=True)
    new = A.add_temporal_blocks(old, seed=5)
    assert new.temporal_blocks is not None and len(new.temporal_blocks) == 2 and new.rope is not None
    x, t, kw = inputs(T=T)
    with torch.no_grad():
        assert torch.equal(new(x, t, **kw), old(x, t, **kw))
    new.train()
    new(x, t, **kw).pow(2).mean().backward()
    assert new.temporal_blocks[0].mlp.fc2.weight.grad.abs().sum() > 0  # zero init is not a dead end


def test_temporal_only_freezing_changes_only_temporal_weights():
    model = A.add_temporal_blocks(tiny(qk_norm=True, enable_fps=True))
    ema = copy.deepcopy(model).requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    recipe = A.train_on_videos(A.Recipe(objective="rflow", adam_eps=1e-15))
    data, caps = latent_set(n=2, T=3, h=2, w=2)
    A.train(model, ema, recipe, data, caps, steps=1, lr=1e-2, batch_tokens=6, progress=False)
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("temporal_blocks.") for k in changed)
    assert all(p.requires_grad == n.startswith("temporal_blocks.") for n, p in model.named_parameters())


def test_rebuild_refuses_dropping_weights():
    model = tiny(qk_norm=True)
    with pytest.raises(ValueError, match="drops"):
        A.rebuild_stdit3(model, qk_norm=False)


# ---------------------------------------------------------------------------------------------------------------
# Training changes


class Zero(torch.nn.Module):
    pred_sigma = True

    def forward(self, x, t, **kw):
        return torch.zeros(x.shape[0], 2 * x.shape[1], *x.shape[2:])


def test_ddpm_to_rectified_flow_switch_changes_objective_and_time():
    recipe = A.Recipe()
    rf = A.switch_to_rectified_flow(recipe)
    assert (rf.objective, rf.sample_method, rf.timestep_transform) == ("rflow", "uniform", False)
    x0 = torch.randn(4, 4, 1, 2, 2)
    kw = {"height": torch.full((4,), 16.0), "width": torch.full((4,), 16.0), "num_frames": torch.ones(4)}
    # a zero model: RF loss = mean (x0 - noise)^2, DDPM mse = mean noise^2, with the same noise draw
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(x0.shape, generator=g)
    out = A.training_loss(Zero(), rf, x0, kw, torch.Generator().manual_seed(0))
    assert torch.allclose(out["loss"], ((x0 - noise) ** 2).mean(dim=(1, 2, 3, 4)), atol=1e-6)
    out = A.training_loss(Zero(), recipe, x0, kw, torch.Generator().manual_seed(0))
    assert torch.allclose(out["mse"], (noise ** 2).mean(dim=(1, 2, 3, 4)), atol=1e-6)
    # continuous time in [0, 1000] for RF, integers in 0..999 for DDPM
    t = A.sample_rf_timesteps(rf, 64, kw, torch.Generator().manual_seed(1))
    assert (t != t.round()).any() and t.min() >= 0 and t.max() <= 1000


def test_logit_normal_and_resolution_aware_timesteps():
    with pytest.raises(ValueError):
        A.use_logit_normal_timesteps(A.Recipe())  # still DDPM
    recipe = A.use_logit_normal_timesteps(A.switch_to_rectified_flow(A.Recipe()))
    assert recipe.sample_method == "logit-normal" and recipe.timestep_transform
    kw = {"height": torch.full((5,), 64.0), "width": torch.full((5,), 64.0), "num_frames": torch.ones(5)}
    t = A.sample_rf_timesteps(recipe, 5, kw, torch.Generator().manual_seed(2), base_resolution=16384)
    tn = torch.sigmoid(torch.randn(5, generator=torch.Generator().manual_seed(2)))
    r = math.sqrt(64 * 64 / 16384)  # 0.5: a 64 px image is below the base resolution -> less noise
    assert torch.allclose(t, 1000 * r * tn / (1 + (r - 1) * tn), atol=1e-3)
    # videos: r grows with sqrt(latent frames) (17 frames -> 5)
    kw_v = dict(kw, num_frames=torch.full((5,), 17.0))
    tv = A.sample_rf_timesteps(recipe, 5, kw_v, torch.Generator().manual_seed(2), base_resolution=16384)
    assert (tv > t).all()


def test_small_adam_eps_reaches_the_optimizer(monkeypatch):
    recipe = A.use_small_adam_eps(A.switch_to_rectified_flow(A.Recipe()))
    assert recipe.adam_eps == 1e-15
    seen = {}
    real = torch.optim.AdamW

    def spy(params, **kw):
        seen.update(kw)
        return real(params, **kw)

    monkeypatch.setattr(torch.optim, "AdamW", spy)
    data, caps = latent_set()
    A.train(tiny(), None, recipe, data, caps, steps=1, progress=False)
    assert seen["eps"] == 1e-15 and seen["weight_decay"] == 0.0 and seen["betas"] == (0.9, 0.999)


def test_video_vae_swap_normalises_per_channel():
    shift, scale = [0.5, -1.0, 0.0, 2.0], [2.0, 0.5, 1.0, 4.0]
    recipe = A.swap_to_video_vae(A.Recipe(objective="rflow"), shift, scale)
    assert recipe.latents == "video_vae"
    z = torch.randn(2, 4, 1, 3, 3)
    n = A.normalize_latent(z, recipe)
    assert torch.allclose(n[:, 1], (z[:, 1] + 1.0) / 0.5)
    assert torch.allclose(A.denormalize_latent(n, recipe), z, atol=1e-6)
    data, caps = latent_set()
    data.groups[0]["std"].zero_()
    x0, kw = A.make_batch(data.groups[0], [0, 1], caps, recipe)
    assert torch.allclose(x0, A.normalize_latent(data.groups[0]["mean"][:2], recipe))
    # image-VAE latents pass unnormalised
    assert torch.equal(A.normalize_latent(z, A.Recipe()), z)


def test_latent_norm_modes():
    class FakeVAE:
        shift = torch.zeros(1, 4, 1, 1, 1)
        scale = torch.ones(1, 4, 1, 1, 1)

    data, _ = latent_set(n=50)
    shift, scale, src = A.video_latent_norm(FakeVAE(), data, "auto")
    assert src == "estimate"  # identity shift/scale = never calibrated
    means = data.groups[0]["mean"].transpose(0, 1).reshape(4, -1)
    assert np.allclose(shift, means.mean(1).numpy(), atol=1e-6)
    assert np.allclose(scale, (means.var(1) + 0.01).sqrt().numpy(), atol=1e-5)  # posterior std 0.1 included
    vae = FakeVAE()
    vae.scale = torch.full((1, 4, 1, 1, 1), 3.0)
    assert A.video_latent_norm(vae, data, "auto")[2] == "vae"


def test_apply_adapt_steps_in_order_keep_ema_consistent():
    model = tiny()
    ema = copy.deepcopy(model).requires_grad_(False)
    recipe = A.Recipe(resolutions="64px")
    x, t, kw = inputs(T=1)
    for step in range(1, 9):
        prev = copy.deepcopy(ema)
        model, ema, recipe = A.apply_adapt_step(step, model, ema, recipe, seed=step, latent_norm=([0.0] * 4, [1.0] * 4))
        m_sd, e_sd = model.state_dict(), ema.state_dict()
        assert m_sd.keys() == e_sd.keys()
        if step in (6, 7):
            with torch.no_grad():
                assert torch.equal(ema(x, t, **kw), prev(x, t, **kw))
            new_keys = [k for k in e_sd if k not in prev.state_dict()]
            assert all(torch.equal(m_sd[k], e_sd[k]) for k in new_keys)
    assert model.config["qk_norm"] and model.config["enable_fps"] and model.config["enable_temporal"]
    assert recipe.objective == "rflow" and recipe.sample_method == "logit-normal" and recipe.timestep_transform
    assert recipe.adam_eps == 1e-15 and recipe.latents == "video_vae" and recipe.resolutions == ""
    assert recipe.data == "videos" and recipe.only_train_temporal and recipe.mask_ratios == A.ADAPT_MASK_RATIOS
    assert math.isclose(1 - sum(recipe.mask_ratios.values()), 0.5)  # identity: half the clips (facts §4.1 table says 0.45: its sum is off)
    with pytest.raises(ValueError):
        A.apply_adapt_step(9, model, ema, recipe)


# ---------------------------------------------------------------------------------------------------------------
# Training, checkpoints, sampling


def test_two_step_train_of_image_base_ddpm():
    model = tiny()
    ema = copy.deepcopy(model).requires_grad_(False)
    before = copy.deepcopy(model.state_dict())
    data, caps = latent_set()
    hist = A.train(model, ema, A.Recipe(), data, caps, steps=2, lr=1e-3, batch_tokens=16, log_every=1, progress=False)
    assert [h["step"] for h in hist] == [1, 2] and all(math.isfinite(h["loss"]) for h in hist)
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    ev = A.eval_loss(ema, A.Recipe(), data, caps, timesteps=[100.0, 500.0])
    assert ev["kind"] == "ddpm" and set(ev["per_t"]) == {100.0, 500.0} and math.isfinite(ev["mse"])
    assert A.eval_loss(ema, A.Recipe(), data, caps, timesteps=[100.0, 500.0]) == ev  # fixed noise: repeatable


def test_two_step_train_of_adapt_step8_on_masked_videos():
    model = A.add_temporal_blocks(A.add_fps_conditioning(A.add_qk_norm(tiny())))
    recipe = A.train_on_videos(A.use_logit_normal_timesteps(A.switch_to_rectified_flow(A.Recipe())))
    data, caps = latent_set(n=4, T=5)
    hist = A.train(model, copy.deepcopy(model), recipe, data, caps, steps=2, batch_tokens=80, log_every=1,
                   progress=False, base_resolution=16384)
    assert len(hist) == 2 and all(math.isfinite(h["loss"]) for h in hist)
    ev = A.eval_loss(model, recipe, data, caps, timesteps=[500.0])
    assert ev["kind"] == "rflow" and math.isfinite(ev["loss"])


def test_checkpoint_round_trip(tmp_path):
    model = A.add_temporal_blocks(A.add_qk_norm(tiny()))
    ema = copy.deepcopy(model)
    with torch.no_grad():
        next(ema.parameters()).add_(1.0)
    recipe = A.use_small_adam_eps(A.switch_to_rectified_flow(A.Recipe()))
    recipe = A.train_on_videos(recipe)
    path = A.save_adapt_checkpoint(tmp_path / "ck" / "step2.pt", model, ema, recipe, 2, {"metrics": {"eval_loss": 1.5}})
    assert not list((tmp_path / "ck").glob(".*.tmp"))  # temp file renamed away
    ck = A.load_adapt_checkpoint(path)
    assert ck.step == 2 and ck.recipe == recipe and ck.info["metrics"]["eval_loss"] == 1.5
    for k, v in model.state_dict().items():
        assert torch.equal(ck.model.state_dict()[k], v) and torch.equal(ck.ema.state_dict()[k], ema.state_dict()[k])
    assert ck.model.config["qk_norm"] and not ck.model.config["only_train_temporal"]  # freezing lives in the recipe
    raw = torch.load(path, weights_only=True)
    assert set(raw) >= {"config", "model", "ema", "recipe"}  # what the video engine's init reads
    json.loads(raw["info"])
    with pytest.raises(FileNotFoundError):
        A.load_adapt_checkpoint(tmp_path / "missing.pt")


def test_image_base_from_a_pixart_sigma_checkpoint(tmp_path):
    donor = A.build_image_base_model("STDiT3-Tiny/2", seed=7)
    pixart = {}
    for k, v in donor.state_dict().items():
        if k == "x_embedder.proj.weight":
            v = v[:, :, 0]  # PixArt's 2-D patch conv
        pixart[k.replace("spatial_blocks.", "blocks.")] = v
    pixart["pos_embed"] = torch.zeros(1, 16, 64)
    torch.save({"state_dict": pixart}, tmp_path / "pixart.pth")
    base = A.build_image_base_model("STDiT3-Tiny/2", str(tmp_path / "pixart.pth"), seed=0)
    assert not base.config["qk_norm"] and base.temporal_blocks is None and base.fps_embedder is None
    assert all(torch.equal(v, donor.state_dict()[k]) for k, v in base.state_dict().items())


def test_rf_sample_matches_rflow_with_the_released_base_resolution():
    model = A.add_fps_conditioning(A.add_qk_norm(tiny()))
    x, _, kw = inputs(T=1)
    extra = {k: kw[k] for k in ("height", "width", "num_frames", "fps")}
    ours = A.rf_sample(model, x.clone(), kw["y"], kw["mask"], extra, num_steps=4, cfg_scale=3.0,
                       use_timestep_transform=True, base_resolution=512 * 512)
    ref = RFLOW(num_sampling_steps=4, cfg_scale=3.0, use_timestep_transform=True).sample(
        model, x.clone(), kw["y"], kw["mask"], additional_args=extra, progress=False)
    assert torch.allclose(ours, ref, atol=1e-5)


def test_feature_cache_and_batches(tmp_path):
    cache = A.FeatureCache(tmp_path)
    calls = []
    value, hit = cache.get("x", {"a": 1}, lambda: calls.append(1) or {"t": torch.ones(2)})
    value2, hit2 = cache.get("x", {"a": 1}, lambda: calls.append(1) or {"t": torch.zeros(2)})
    assert (hit, hit2) == (False, True) and calls == [1] and torch.equal(value2["t"], torch.ones(2))
    data, caps = latent_set(n=6, h=4, w=4)  # 4 tokens a sample
    sampler = A.BatchSampler(data, batch_tokens=12, seed=0)
    g, idx = sampler.next()
    assert len(idx) == 3 and len(set(idx.tolist())) == 3
    y, mask = caps.batch([0, 2])
    assert y.shape == (2, 1, 5, CAP) and mask.sum(1).tolist() == [3, 5]
    assert len(data.subset(["64px"])) == 0 and len(data.subset(None)) == 6


def test_still_caption_from_truth_columns():
    row = {"height": "48", "width": "48", "background": "checkered", "bg_color": "red", "bg_color2": "black",
           "obj0_shape": "cross", "obj0_color": "blue", "obj1_shape": "", "obj1_color": ""}
    assert A.still_caption(row) == "An image of a blue cross on a red and black checkered background."
    row.update(obj1_shape="circle", obj1_color="orange", background="flat")
    assert A.still_caption(row) == "An image of a blue cross and an orange circle on a red background."


def test_video_training_engine_reads_an_adapt_checkpoint(tmp_path):
    engine = pytest.importorskip("opensora_lib.train.engine")
    model = A.add_temporal_blocks(A.add_fps_conditioning(A.add_qk_norm(tiny())))
    A.freeze_all_but_temporal(model)
    path = A.save_adapt_checkpoint(tmp_path / "step8.pt", model, copy.deepcopy(model), A.train_on_videos(A.Recipe()), 8)
    rebuilt, info = engine.build_model(engine.VideoTrainConfig(init=str(path), freeze_y_embedder=False))
    assert info["weights"] == "model" and rebuilt.config["enable_temporal"] and rebuilt.config["qk_norm"]
    assert all(p.requires_grad for n, p in rebuilt.named_parameters() if not n.startswith("rope."))  # no step-8 freeze
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in rebuilt.state_dict().items())


def test_encode_posteriors_goes_through_the_vae_wrapper(tmp_path, monkeypatch):
    """The adaptation features are the pipeline's own latents: with the narrow preset's colour shortcut on, the
    2D posterior means equal `spatial_vae.encode(mode)` (the shortcut included) and the video-space means equal
    the temporal posterior over them."""
    from opensora_lib.models.vae import VideoAutoencoder

    torch.manual_seed(0)
    tiny_2d = dict(down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
                   block_out_channels=[8, 8, 16, 16], layers_per_block=1, norm_num_groups=4, latent_channels=4)
    tiny_t = dict(in_out_channels=4, latent_embed_dim=4, embed_dim=4, filters=8, num_res_blocks=1,
                  channel_multipliers=(1, 2, 2, 4), temporal_downsample=(False, True, True), num_groups=4, shortcut=True)
    vae = VideoAutoencoder(tiny_2d, tiny_t, shortcut_2d=True).eval()
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, size=(5, 16, 24, 3), dtype=np.uint8)
    frames[..., 0] = rng.integers(200, 240, size=(5, 16, 24))  # a red cast: patch means far from 0
    monkeypatch.setattr(A, "_read_frames", lambda item, cache: frames[item.start:item.start + item.num_frames])
    items = [A.Item("clip.mp4", 0, 5, "a clip", 16, 24, 24, "48px")]
    x = torch.from_numpy(frames).float().permute(3, 0, 1, 2)[None] / 127.5 - 1  # [1, 3, 5, 16, 24]
    with torch.no_grad():
        x_z = vae.spatial_vae.encode(x, sample_posterior=False)
        z = vae.temporal_vae.encode(x_z).mode()
    image = A.encode_posteriors(items, vae, "image_vae")
    video = A.encode_posteriors(items, vae, "video_vae")
    torch.testing.assert_close(image["mean"][0], x_z[0], rtol=1e-5, atol=1e-5)
    assert image["mean"][0][0].mean() > 0.5  # the red cast is in the first (shortcut) channel
    torch.testing.assert_close(video["mean"][0], z[0], rtol=1e-5, atol=1e-5)
    assert image["std"][0].shape == x_z[0].shape and bool((image["std"][0] > 0).all())
