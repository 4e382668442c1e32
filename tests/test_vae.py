"""Video VAE (opensora_lib.models.vae*): shapes, frame mapping, causality, released state-dict
layout, checkpoint loading/saving, the training stages and metrics. Tiny sizes throughout."""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest
import torch

from opensora_lib.models.vae import (
    CheckpointError,
    OpenSoraVAE_Narrow,
    OpenSoraVAE_V1_2,
    VideoAutoencoder,
    latent_num_frames,
    load_vae,
    load_vae_weights,
    pixel_num_frames,
    save_vae,
)
from opensora_lib.models.vae_losses import (
    frame_l1_loss,
    make_vae_optimizer,
    vae_train_step,
    video_psnr_ssim,
)
from opensora_lib.models.vae_temporal import CausalConv3d, VAETemporal

REFERENCE_LIST = Path(__file__).resolve().parents[2] / "shared/reference/vae_v1_2_state_dict.txt"

# Tiny configs: same topology as the released model (2D: 4 levels = /8, mid attention;
# temporal: levels (1, 2, 2, 4) with time down-sampling after levels 1 and 2 = /4).
TINY_2D = dict(
    down_block_types=["DownEncoderBlock2D"] * 4,
    up_block_types=["UpDecoderBlock2D"] * 4,
    block_out_channels=[8, 8, 16, 16],
    layers_per_block=1,
    norm_num_groups=4,
    latent_channels=4,
)
TINY_T = dict(
    in_out_channels=4,
    latent_embed_dim=4,
    embed_dim=4,
    filters=8,
    num_res_blocks=1,
    channel_multipliers=(1, 2, 2, 4),
    temporal_downsample=(False, True, True),
    num_groups=4,
)


def tiny_vae(**kw) -> VideoAutoencoder:
    torch.manual_seed(0)
    model = VideoAutoencoder(TINY_2D, TINY_T, shift=(0.1, -0.2, 0.3, 0.0), scale=(1.5, 2.0, 0.5, 1.0), **kw)
    # random GroupNorm affine params etc., so that nothing is trivially the identity
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return model.eval()


def video(b=1, t=17, h=16, w=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, t, h, w, generator=g) * 2 - 1


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Many tiny ops: on a shared 2-core machine OpenMP spin-waiting makes 2 threads ~10x slower.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---------------------------------------------------------------------------------------------
def test_frame_mapping_table():
    table = {1: 1, 17: 5, 20: 6, 34: 10, 51: 15, 68: 20, 102: 30, 204: 60, 408: 120}
    for frames, latents in table.items():
        assert latent_num_frames(frames) == latents
    model = tiny_vae()
    assert model.get_latent_size([17, 240, 426]) == [5, 30, 53]
    assert model.get_latent_size([20, None, 64]) == [6, None, 8]
    # inverse: the canonical (smallest) frame count per latent count
    assert [pixel_num_frames(n) for n in (1, 5, 6, 10, 15, 30)] == [1, 17, 18, 34, 51, 102]
    for n in range(1, 40):
        assert latent_num_frames(pixel_num_frames(n)) == n
    assert latent_num_frames(20, micro_frame_size=None) == 5


def test_causal_conv_pads_front_only():
    conv = CausalConv3d(2, 3, 3, stride=1)
    assert conv.time_pad == 2 and conv.padding == (1, 1, 1, 1, 2, 0)
    x = torch.randn(1, 2, 8, 5, 5)
    assert conv(x).shape == (1, 3, 8, 5, 5)
    down = CausalConv3d(2, 2, 3, stride=2)
    assert down.time_pad == 1 and down(x).shape == (1, 2, 4, 5, 5)
    assert "conv.weight" in conv.state_dict()


def test_shapes_encode_decode():
    model = tiny_vae()
    with torch.no_grad():
        for t in (1, 17, 20):
            x = video(2, t, 16, 24)
            z = model.encode(x, sample_posterior=False)
            assert z.shape == (2, 4, latent_num_frames(t), 2, 3)
            y = model.decode(z, num_frames=t)
            assert y.shape == x.shape
            assert torch.isfinite(y).all()
        assert model.decode(torch.randn(1, 4, 6, 2, 2)).shape == (1, 3, 18, 16, 16)  # default count
        with pytest.raises(ValueError):
            model.decode(torch.randn(1, 4, 6, 2, 2), num_frames=17)
        out = model(video(1, 9), sample_posterior=False)
        assert out.x_rec.shape == (1, 3, 9, 16, 16) and out.x_z.shape == (1, 4, 9, 2, 2)
        assert out.x_z_rec.shape == out.x_z.shape and out.z.shape == (1, 4, 3, 2, 2)
        assert out.posterior.mean.shape == out.z.shape


def test_normalisation_and_sampling():
    model = tiny_vae()
    x = video(1, 5)
    with torch.no_grad():
        raw = model.encode(x, sample_posterior=False, normalize=False)
        z = model.encode(x, sample_posterior=False)
        torch.testing.assert_close(z, (raw - model.shift) / model.scale)
        assert model.shift.shape == model.scale.shape == (1, 4, 1, 1, 1)
        a = model.encode(x, generator=torch.Generator().manual_seed(1))
        b = model.encode(x, generator=torch.Generator().manual_seed(1))
        c = model.encode(x, generator=torch.Generator().manual_seed(2))
        torch.testing.assert_close(a, b)
        assert not torch.allclose(a, c)


def test_calibration_measures_the_latents_training_samples():
    """estimate_shift_scale measures sampled latents by default (what training encodes), so normalised samples
    have unit spread even in a channel whose posterior means barely vary; the means-only option can't see the
    posterior noise and gives a scale far too small for sampled latents."""
    model = tiny_vae()
    clips = [video(2, 17, seed=s) for s in range(3)]
    g = lambda s: torch.Generator().manual_seed(s)  # noqa: E731
    shift, scale = model.estimate_shift_scale(clips, generator=g(0))
    _, scale_means = model.estimate_shift_scale(clips, sample_posterior=False)
    model.set_shift_scale(shift, scale)
    with torch.no_grad():
        z = torch.cat([model.encode(c, generator=g(10 + i)) for i, c in enumerate(clips)], dim=0)  # sampled
    per_channel = z.transpose(0, 1).reshape(4, -1)  # [C, N]
    assert per_channel.mean(dim=1).abs().max() < 0.2
    assert ((per_channel.std(dim=1) - 1).abs() < 0.2).all()
    # a fresh posterior has log-variance ~0: the sampled spread (noise included) is far above the means' spread
    assert all(s > 2 * m for s, m in zip(scale, scale_means))


def _without_groupnorm(module: torch.nn.Module) -> torch.nn.Module:
    for name, child in module.named_children():
        if isinstance(child, torch.nn.GroupNorm):
            setattr(module, name, torch.nn.Identity())
        else:
            _without_groupnorm(child)
    return module


@pytest.mark.parametrize("shortcut", [False, True])
def test_temporal_vae_convolutions_are_causal(shortcut):
    """Every conv is causal: with the GroupNorms taken out, latent k depends on frames <= 4k+3
    only, and decoded frame t on latents <= t // 4. The narrow preset's time-averaging shortcut
    keeps this (random, not zero, weights everywhere)."""
    torch.manual_seed(0)
    tvae = _without_groupnorm(VAETemporal(**TINY_T, shortcut=shortcut)).eval()
    if shortcut:  # its zero-initialised convs would hide a leak
        with torch.no_grad():
            for p in tvae.parameters():
                p.add_(0.1 * torch.randn_like(p))
    x = torch.randn(1, 4, 12, 3, 3)
    x2 = x.clone()
    x2[:, :, 8:] = torch.randn_like(x2[:, :, 8:])  # change frames 8..11
    with torch.no_grad():
        m1, m2 = tvae.encode(x).mean, tvae.encode(x2).mean  # 12 frames -> 3 latents
        torch.testing.assert_close(m1[:, :, :2], m2[:, :, :2], rtol=0, atol=0)
        assert not torch.allclose(m1[:, :, 2], m2[:, :, 2])
        z = torch.randn(1, 4, 3, 3, 3)
        z2 = z.clone()
        z2[:, :, 2] += 1.0
        d1, d2 = tvae.decode(z, 12), tvae.decode(z2, 12)
        torch.testing.assert_close(d1[:, :, :8], d2[:, :, :8], rtol=0, atol=0)
        assert not torch.allclose(d1[:, :, 8:], d2[:, :, 8:])


def test_temporal_vae_groupnorm_sees_whole_clip():
    """Reference property we mirror: GroupNorm statistics span all frames of the clip, so
    inside one encoded clip the early latents DO change when later frames change (the model is
    causal only in its convolutions, and strictly causal only across 17-frame chunks)."""
    torch.manual_seed(0)
    tvae = VAETemporal(**TINY_T).eval()
    x = torch.randn(1, 4, 12, 3, 3)
    x2 = x.clone()
    x2[:, :, 8:] += 1.0
    with torch.no_grad():
        assert not torch.allclose(tvae.encode(x).mean[:, :, 0], tvae.encode(x2).mean[:, :, 0])


def test_pipeline_causal_across_chunks():
    """With sample_posterior=False, latents of 17-frame chunks that end before the first
    changed frame are unchanged; the prefix of a clip encodes like the clip."""
    model = tiny_vae()
    x = video(1, 51, seed=1)
    x2 = x.clone()
    x2[:, :, 30:] = video(1, 21, seed=2)  # frames 30.. differ (inside chunk [17, 34))
    with torch.no_grad():
        z1 = model.encode(x, sample_posterior=False)
        z2 = model.encode(x2, sample_posterior=False)
    assert z1.shape[2] == 15
    torch.testing.assert_close(z1[:, :, :5], z2[:, :, :5], rtol=0, atol=0)  # chunk [0, 17)
    assert not torch.allclose(z1[:, :, 5:10], z2[:, :, 5:10])  # chunk [17, 34)
    with torch.no_grad():
        z_prefix = model.encode(x[:, :, :34], sample_posterior=False)  # first two chunks alone
        z_one = model.encode(x[:, :, :17], sample_posterior=False)
    # (not bit-exact: the 2D VAE's micro-batches of 4 frames have other sizes at the clip end,
    # and CPU conv kernels may round differently per batch size)
    torch.testing.assert_close(z_prefix, z1[:, :, :10], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(z_one, z1[:, :, :5], rtol=1e-4, atol=1e-5)
    # decoding is chunk-causal as well: changing latent chunk 1 leaves frames 0..16 unchanged
    z3 = z1.clone()
    z3[:, :, 5:] += 1.0
    with torch.no_grad():
        d1, d3 = model.decode(z1, num_frames=51), model.decode(z3, num_frames=51)
    torch.testing.assert_close(d1[:, :, :17], d3[:, :, :17], rtol=0, atol=0)


def _reference_shapes() -> dict[str, list[int]]:
    out = {}
    for line in REFERENCE_LIST.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        m = re.match(r"(\S+) \[([\d, ]*)\]", line)
        out[m.group(1)] = [int(s) for s in m.group(2).split(",") if s.strip()]
    return out


def test_released_state_dict_matches_reference():
    if not REFERENCE_LIST.is_file():
        pytest.skip(f"reference key list not found at {REFERENCE_LIST} (shared/ checkout absent)")
    with torch.device("meta"):
        model = OpenSoraVAE_V1_2()
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    ref = _reference_shapes()
    assert len(ref) == 517
    assert list(ours) == list(ref)  # same keys, same order
    assert ours == ref
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == 393_341_007  # 393.3 M
    assert abs(sum(p.numel() for p in model.temporal_vae.parameters()) / 1e6 - 309.69) < 0.01
    assert abs(sum(p.numel() for p in model.spatial_vae.parameters()) / 1e6 - 83.65) < 0.01
    assert model.micro_frame_size == 17 and model.micro_z_frame_size == 5


def test_narrow_preset_builds():
    model = OpenSoraVAE_Narrow()
    assert model.get_latent_size([17, 64, 64]) == [5, 8, 8]
    assert model.time_factor == 4


# ---------------------------------------------------------------------------------------------
# The parameter-free shortcuts (ours; on in the narrow preset, off in the released one)
def test_shortcuts_add_no_weights_and_are_off_for_released_sizes():
    with torch.device("meta"):
        on = OpenSoraVAE_Narrow()
        off = OpenSoraVAE_Narrow(shortcut_2d=False, vae_temporal={"shortcut": False})
        released = OpenSoraVAE_V1_2()
    assert on.spatial_vae.shortcut and on.temporal_vae.shortcut
    assert not off.spatial_vae.shortcut and not off.temporal_vae.shortcut
    assert not released.spatial_vae.shortcut and not released.temporal_vae.shortcut
    assert "shortcut" not in released.config["vae_temporal"]  # the released config stays the reference's
    shapes = lambda m: {k: tuple(v.shape) for k, v in m.state_dict().items()}  # noqa: E731
    assert shapes(on) == shapes(off)


def test_temporal_shortcut_starts_as_time_average_and_repeat():
    """A fresh shortcut model encodes latent j as the mean of frames [4j-3, 4j] (frame 0 alone
    for j=0), decodes each latent to its 4 frames: a static clip comes back exactly, a still's
    latent equals its 2D latent (the stage-1 identity loss is 0 at step 0)."""
    torch.manual_seed(0)
    tvae = VAETemporal(**TINY_T, shortcut=True).eval()
    x = torch.randn(1, 4, 17, 3, 3)
    with torch.no_grad():
        z = tvae.encode(x).mode()  # [1, 4, 5, 3, 3]
        torch.testing.assert_close(z[:, :, 0], x[:, :, 0])
        torch.testing.assert_close(z[:, :, 2], x[:, :, 5:9].mean(dim=2))
        rec = tvae.decode(z, 17)
        torch.testing.assert_close(rec[:, :, 5:9], z[:, :, 2:3].expand(-1, -1, 4, -1, -1))
        static = x[:, :, :1].expand(-1, -1, 17, -1, -1)
        torch.testing.assert_close(tvae.decode(tvae.encode(static).mode(), 17), static)
        still = x[:, :, :1]
        torch.testing.assert_close(tvae.encode(still).mode(), still)


def test_2d_shortcut_carries_the_patch_colours():
    """With the learned encoder output zeroed, the first 3 scaled latent channels are the 8x8
    patch means, and a fresh decoder (last conv zero) returns them bilinearly up-sampled."""
    import torch.nn.functional as F

    torch.manual_seed(0)
    model = VideoAutoencoder(TINY_2D, TINY_T, shortcut_2d=True).eval()
    quant = model.spatial_vae.module.quant_conv
    with torch.no_grad():
        quant.weight.zero_()
        quant.bias.zero_()
    x = video(1, 2, 16, 24)
    with torch.no_grad():
        x_z = model.spatial_vae.encode(x, sample_posterior=False)  # [1, 4, 2, 2, 3]
        frames = x[0].permute(1, 0, 2, 3)  # [T, 3, H, W]
        pooled = F.avg_pool2d(frames, 8)  # [T, 3, 2, 3]
        torch.testing.assert_close(x_z[0, :3].permute(1, 0, 2, 3), pooled, rtol=1e-5, atol=1e-6)
        assert torch.all(x_z[0, 3] == 0)
        rec = model.spatial_vae.decode(x_z)
        expected = F.interpolate(pooled, size=(16, 24), mode="bilinear", align_corners=False)
        torch.testing.assert_close(rec[0].permute(1, 0, 2, 3), expected, rtol=1e-5, atol=1e-6)


def test_shortcut_flags_survive_save_and_load(tmp_path):
    torch.manual_seed(0)
    model = VideoAutoencoder(TINY_2D, {**TINY_T, "shortcut": True}, shortcut_2d=True).eval()
    loaded = load_vae(save_vae(tmp_path / "sc.pt", model)).eval()
    assert loaded.spatial_vae.shortcut and loaded.temporal_vae.shortcut
    x = video(1, 5)
    with torch.no_grad():
        torch.testing.assert_close(loaded.decode(loaded.encode(x, sample_posterior=False), num_frames=5),
                                   model.decode(model.encode(x, sample_posterior=False), num_frames=5),
                                   rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------
def test_save_load_round_trip(tmp_path):
    model = tiny_vae()
    model.set_shift_scale([0.5, 0.1, -0.1, 0.2], [2.0, 1.0, 3.0, 1.5])
    x = video(1, 5)
    with torch.no_grad():
        ref = model.decode(model.encode(x, sample_posterior=False), num_frames=5)
    for name in ("vae.safetensors", "vae.pt"):
        path = save_vae(tmp_path / name, model)
        assert not list(tmp_path.glob(".*.tmp"))  # temp file renamed away
        loaded = load_vae(path).eval()
        torch.testing.assert_close(loaded.shift, model.shift)
        with torch.no_grad():
            out = loaded.decode(loaded.encode(x, sample_posterior=False), num_frames=5)
        torch.testing.assert_close(out, ref, rtol=0, atol=0)
        # plain strict load into a fresh model
        other = tiny_vae()
        report = load_vae_weights(other, path)
        assert report.ok and report.loaded == len(model.state_dict())


def test_loader_wrong_shape_names_file_and_key(tmp_path):
    from safetensors.torch import save_file

    sd = {k: v.contiguous() for k, v in tiny_vae().state_dict().items()}
    key = "temporal_vae.encoder.conv_in.conv.weight"
    sd[key] = torch.zeros(3, 3, 3, 3, 3)
    path = tmp_path / "bad_shape.safetensors"
    save_file(sd, str(path))
    with pytest.raises(CheckpointError) as e:
        load_vae_weights(tiny_vae(), path)
    assert str(path) in str(e.value) and key in str(e.value)
    assert e.value.mismatched[0][0] == key


def test_loader_missing_keys_names_file_and_first_key(tmp_path):
    sd = tiny_vae().state_dict()
    keys = list(sd)
    cut = {k: sd[k] for k in keys[: len(keys) // 2]}  # checkpoint missing its second half
    path = tmp_path / "half.pt"
    torch.save(cut, path)
    with pytest.raises(CheckpointError) as e:
        load_vae_weights(tiny_vae(), path)
    assert str(path) in str(e.value) and keys[len(keys) // 2] in str(e.value)
    # non-strict: loads what is there, reports the rest
    report = load_vae_weights(tiny_vae(), path, strict=False)
    assert report.missing[0] == keys[len(keys) // 2] and report.loaded == len(cut)


def test_loader_truncated_files(tmp_path):
    model = tiny_vae()
    st = save_vae(tmp_path / "full.safetensors", model)
    data = st.read_bytes()
    trunc = tmp_path / "trunc.safetensors"
    trunc.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as e:
        load_vae_weights(tiny_vae(), trunc)
    msg = str(e.value)
    assert str(trunc) in msg and "first bad key" in msg
    # the named key is one whose bytes are past the cut
    bad = re.search(r"first bad key: '([^']+)'", msg).group(1)
    assert bad in model.state_dict()

    pt = save_vae(tmp_path / "full.pt", model)
    data = pt.read_bytes()
    trunc_pt = tmp_path / "trunc.pt"
    trunc_pt.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as e:
        load_vae_weights(tiny_vae(), trunc_pt)
    assert str(trunc_pt) in str(e.value)
    m = re.search(r"first bad key: '([^']+)'", str(e.value))
    assert m is not None and m.group(1) in model.state_dict()


def test_loader_diffusers_folder_goes_into_2d_part(tmp_path):
    src = tiny_vae()
    src.spatial_vae.module.save_pretrained(tmp_path / "sdxl" / "vae")
    dst = tiny_vae()
    with torch.no_grad():
        for p in dst.spatial_vae.parameters():
            p.zero_()
    before = {k: v.clone() for k, v in dst.temporal_vae.state_dict().items()}
    report = load_vae_weights(dst, tmp_path / "sdxl")  # finds the vae/ subfolder
    assert report.ok
    for k, v in src.spatial_vae.state_dict().items():
        torch.testing.assert_close(dst.spatial_vae.state_dict()[k], v)
    for k, v in before.items():
        torch.testing.assert_close(dst.temporal_vae.state_dict()[k], v)


def test_load_into_meta_model(tmp_path):
    path = save_vae(tmp_path / "m.safetensors", tiny_vae())
    with torch.device("meta"):
        model = VideoAutoencoder(TINY_2D, TINY_T)
    load_vae_weights(model, path)
    assert all(t.device.type == "cpu" for t in model.state_dict().values())


# ---------------------------------------------------------------------------------------------
def test_l1_reduction_matches_reference_definition():
    a, b = torch.randn(2, 4, 3, 5, 5), torch.randn(2, 4, 3, 5, 5)
    torch.testing.assert_close(frame_l1_loss(a, b), (a - b).abs().sum() / 6)
    per_frame = lambda u, v: torch.ones(u.shape[0])  # noqa: E731 - perceptual stand-in
    torch.testing.assert_close(frame_l1_loss(a, b, per_frame, 0.1), ((a - b).abs().sum() + 0.1 * 6 * 4 * 25) / 6)


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_train_steps(stage):
    model = tiny_vae()
    opt = make_vae_optimizer(model, stage, lr=1e-3)
    before_2d = {k: v.clone() for k, v in model.spatial_vae.state_dict().items()}
    before_t = {k: v.clone() for k, v in model.temporal_vae.state_dict().items()}
    rng = random.Random(0)
    x = video(1, 9, 16, 16)
    for i in range(2):
        logs = vae_train_step(model, x, stage, opt, rng=rng, image_ratio=0.5)
        assert all(v == v and abs(v) != float("inf") for v in logs.values()), logs
    assert all(torch.isfinite(p).all() for p in model.parameters())
    changed_2d = any(not torch.equal(v, model.spatial_vae.state_dict()[k]) for k, v in before_2d.items())
    changed_t = any(not torch.equal(v, model.temporal_vae.state_dict()[k]) for k, v in before_t.items())
    if stage == 0:
        assert changed_2d and not changed_t
    elif stage == 1:
        assert changed_t and not changed_2d  # 2D VAE frozen in stage 1
    else:
        assert changed_t and changed_2d


def test_stage1_image_step_has_identity_loss():
    model = tiny_vae()
    opt = make_vae_optimizer(model, 1)
    logs = vae_train_step(model, video(1, 5), 1, opt, rng=random.Random(0), image_ratio=1.0)
    assert logs["num_frames"] == 1 and "identity_loss" in logs
    logs = vae_train_step(model, {"video": video(1, 5)}, 1, opt, rng=random.Random(0), image_ratio=0.0)
    assert logs["num_frames"] == 5 and "identity_loss" not in logs


def test_psnr_ssim():
    x = video(1, 3, 16, 16)
    same = video_psnr_ssim(x, x)
    assert same["psnr"] == 100.0 and abs(same["ssim"] - 1) < 1e-6
    noisy = (x + 0.1 * torch.randn_like(x)).clamp(-1, 1)
    m = video_psnr_ssim(x, noisy)
    mse = (((x + 1) / 2 - (noisy + 1) / 2) ** 2).flatten(1).mean()  # one frame group per video
    assert 15 < m["psnr"] < 40 and 0 < m["ssim"] < 1
    assert abs(m["psnr"] - float(10 * torch.log10(1 / mse))) < 0.5
