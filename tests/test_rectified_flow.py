"""Rectified flow: timestep transform, noising, masked loss, the sampler, masks, and a 2-D toy."""

import math
import random

import pytest
import torch
import torch.nn as nn

from opensora_lib.models.stdit3 import STDiT3_Tiny_2
from opensora_lib.schedulers.masks import (
    MaskGenerator,
    apply_mask_strategy,
    extension_strategy,
    find_nearest_point,
    parse_mask_strategy,
)
from opensora_lib.schedulers.rectified_flow import (
    RFLOW,
    RFlowScheduler,
    mean_flat,
    sampling_timesteps,
    timestep_transform,
)


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def kwargs_240p(B=1, frames=51, dtype=torch.float32):
    return dict(
        height=torch.full((B,), 240.0, dtype=dtype),
        width=torch.full((B,), 426.0, dtype=dtype),
        num_frames=torch.full((B,), frames, dtype=dtype),
    )


# --- timestep transform ------------------------------------------------------------------------


def test_timestep_transform_240p_51_frames():
    # r = sqrt(240*426 / 512^2) * sqrt(51 // 17 * 5) = sqrt(0.3900146) * sqrt(15) = 2.41872
    r = math.sqrt(102240 / 262144) * math.sqrt(15)
    assert abs(r - 2.41872) < 1e-5
    t = torch.tensor([0.0, 500.0, 900.0, 1000.0])
    out = timestep_transform(t, kwargs_240p(4), num_timesteps=1000)
    # t=500: 2.41872*0.5 / (1 + 1.41872*0.5) = 707.493; t=900: 956.080; ends stay fixed
    torch.testing.assert_close(out, torch.tensor([0.0, 707.4931, 956.0797, 1000.0]), atol=2e-3, rtol=0)
    # bf16 kwargs (as Open-Sora passes them): 240*426 -> 102400, r = 0.625 * 3.875 = 2.421875 -> 707.763
    out_bf16 = timestep_transform(t[1:2], kwargs_240p(1, dtype=torch.bfloat16), num_timesteps=1000)
    assert abs(out_bf16.item() - 707.7626) < 2e-3
    # an image: only the space term, r = 0.62451 -> t=500 maps to 384.430
    out_img = timestep_transform(t[1:2], kwargs_240p(1, frames=1), num_timesteps=1000)
    assert abs(out_img.item() - 384.4303) < 2e-3


def test_timestep_transform_per_sample_vs_first_sample_switch():
    kw = dict(height=torch.tensor([240.0, 240.0]), width=torch.tensor([426.0, 426.0]), num_frames=torch.tensor([1, 51]))
    t = torch.tensor([500.0, 500.0])
    per_sample = timestep_transform(t, kw, num_timesteps=1000)
    torch.testing.assert_close(per_sample, torch.tensor([384.4303, 707.4931]), atol=2e-3, rtol=0)
    # the reference looks at sample 0 only: an image there makes every sample count as one frame
    ref_style = timestep_transform(t, kw, num_timesteps=1000, first_sample_switch=True)
    torch.testing.assert_close(ref_style, torch.tensor([384.4303, 384.4303]), atol=2e-3, rtol=0)


def test_sampling_timesteps():
    ts = sampling_timesteps(30, 1000, 2)
    assert len(ts) == 30 and ts[0].shape == (2,)
    assert ts[0][0].item() == 1000.0 and abs(ts[1][0].item() - 966.6667) < 1e-3
    assert abs(ts[-1][0].item() - 33.3333) < 1e-3
    tt = sampling_timesteps(30, 1000, 1, use_timestep_transform=True, model_kwargs=kwargs_240p())
    assert tt[0].item() == 1000.0 and tt[15].item() == pytest.approx(707.4931, abs=2e-3)


# --- noising and loss --------------------------------------------------------------------------


def test_add_noise_interpolates():
    s = RFlowScheduler()
    x0, noise = torch.randn(3, 4, 2, 2, 2), torch.randn(3, 4, 2, 2, 2)
    out = s.add_noise(x0, noise, torch.tensor([0.0, 250.0, 1000.0]))
    assert torch.equal(out[0], x0[0]) and torch.equal(out[2], noise[2])
    torch.testing.assert_close(out[1], 0.75 * x0[1] + 0.25 * noise[1])


class Recorder(nn.Module):
    """Returns a fixed output and remembers its inputs."""

    def __init__(self, out):
        super().__init__()
        self.out = out

    def forward(self, x, t, **kw):
        self.x, self.t, self.kw = x, t, kw
        return self.out


def test_masked_loss_by_hand():
    B, C, T, H, W = 2, 4, 3, 2, 2
    x0, noise = torch.randn(B, C, T, H, W), torch.randn(B, C, T, H, W)
    out = torch.randn(B, 2 * C, T, H, W)  # pred_sigma: the second half is ignored
    model = Recorder(out)
    mask = torch.tensor([[False, True, True], [True, True, True]])
    t = torch.tensor([400.0, 700.0])
    loss = RFlowScheduler().training_losses(model, x0, {}, noise=noise, mask=mask, t=t)["loss"]
    err = (out[:, :C] - (x0 - noise)) ** 2  # [B, C, T, H, W]
    expected0 = err[0, :, 1:].sum() / (2 * C * H * W)  # frames 1, 2 only
    expected1 = err[1].mean()
    torch.testing.assert_close(loss, torch.stack([expected0, expected1]))
    # the conditioning frame went in clean, the others noised; x_mask reached the model
    assert torch.equal(model.x[0, :, 0], x0[0, :, 0])
    torch.testing.assert_close(model.x[0, :, 1], 0.6 * x0[0, :, 1] + 0.4 * noise[0, :, 1])
    assert torch.equal(model.kw["x_mask"], mask)
    # without a mask: plain mean, velocity = first C channels
    loss_nomask = RFlowScheduler().training_losses(Recorder(out), x0, noise=noise, t=t)["loss"]
    torch.testing.assert_close(loss_nomask, err.mean(dim=(1, 2, 3, 4)))
    assert torch.equal(mean_flat(err), err.mean(dim=(1, 2, 3, 4)))


def test_training_timestep_distributions():
    torch.manual_seed(0)
    x = torch.zeros(4000, 1)
    t = RFlowScheduler(sample_method="logit-normal").sample_t(x)
    assert 0 < t.min() and t.max() < 1000
    assert abs(t.median().item() - 500) < 30  # sigmoid(N(0,1)) is symmetric around 0.5
    assert abs(((t / 1000).logit()).std().item() - 1.0) < 0.05
    tu = RFlowScheduler().sample_t(x)
    assert abs(tu.mean().item() - 500) < 20
    kw = kwargs_240p(4000)
    tt = RFlowScheduler(sample_method="logit-normal", use_timestep_transform=True).sample_t(x, kw)
    assert tt.median() > 650  # shifted towards noise for 240p 51-frame videos


# --- sampler -----------------------------------------------------------------------------------


class ConstantVelocity(nn.Module):
    """v = a for the conditional half of a CFG batch, b for the unconditional half."""

    def __init__(self, a, b):
        super().__init__()
        self.a, self.b = a, b

    def forward(self, x, t, y, **kw):
        half = x.shape[0] // 2
        v = torch.cat([torch.full_like(x[:half], self.a), torch.full_like(x[half:], self.b)])
        return torch.cat([v, v], dim=1)


def test_euler_steps_integrate_exactly_with_cfg():
    z = torch.randn(2, 4, 3, 2, 2)
    y = torch.zeros(2, 1, 5, 8)
    model = ConstantVelocity(1.0, 0.5)
    sampler = RFLOW(num_sampling_steps=7, cfg_scale=3.0, use_timestep_transform=True)
    out = sampler.sample(model, z, y, y_null=y, additional_args=kwargs_240p(2), progress=False)
    # sum of dt/1000 = 1 and v = 0.5 + 3 * (1 - 0.5) = 2
    torch.testing.assert_close(out, z + 2.0, atol=1e-5, rtol=0)


class MaskedMeanCaption(nn.Module):
    """Velocity = the mean of the caption's valid tokens (per sample, broadcast): CFG's two sides, each read through
    its own token mask, are visible in the result."""

    def forward(self, x, t, y, mask=None, **kw):
        y = y[:, 0]  # [2B, L, C]
        m = torch.ones(y.shape[:2]) if mask is None else mask.float()  # [2B, L]
        mean = (y.mean(-1) * m).sum(-1) / m.sum(-1)  # [2B]
        v = mean.reshape(-1, 1, 1, 1, 1).expand_as(x)
        return torch.cat([v, v], dim=1)


def test_negative_prompt_replaces_the_null_caption_with_its_own_token_mask():
    z = torch.zeros(1, 4, 2, 2, 2)
    y = torch.full((1, 1, 4, 8), 1.0)
    y_mask = torch.tensor([[1, 1, 0, 0]])
    y_neg = torch.tensor([0.5, 0.5, 0.5, 9.0]).reshape(1, 1, 4, 1).expand(1, 1, 4, 8)
    sampler = RFLOW(num_sampling_steps=4, cfg_scale=3.0, use_timestep_transform=False)
    # the negative prompt's own mask keeps all 4 tokens: mean (0.5 * 3 + 9) / 4 = 2.625; v = 2.625 + 3 (1 - 2.625)
    out = sampler.sample(MaskedMeanCaption(), z, y, y_mask, y_null=y_neg, progress=False,
                         y_null_mask=torch.tensor([[1, 1, 1, 1]]))
    torch.testing.assert_close(out, z + (2.625 + 3.0 * (1.0 - 2.625)), atol=1e-5, rtol=0)
    # without it the prompt's mask applies to the negative side too (the null-caption rule): mean 0.5
    out = sampler.sample(MaskedMeanCaption(), z, y, y_mask, y_null=y_neg, progress=False)
    torch.testing.assert_close(out, z + (0.5 + 3.0 * (1.0 - 0.5)), atol=1e-5, rtol=0)


def test_sampler_keeps_conditioning_frames_bit_exact():
    torch.manual_seed(0)
    model = STDiT3_Tiny_2().eval()
    with torch.no_grad():  # make the temporal blocks matter
        for p in model.temporal_blocks.parameters():
            p.add_(0.05 * torch.randn_like(p))
    B, T = 2, 4
    z = torch.randn(B, 4, T, 4, 4)
    refs = [[torch.randn(4, 2, 4, 4)], [torch.randn(4, 3, 4, 4)]]
    frame_mask = apply_mask_strategy(z, refs, ["0,0,0,0,1", "0,0,-1,-1,1,0.5"], loop_i=0)
    assert frame_mask.tolist() == [[0.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 0.5]]
    assert torch.equal(z[0, :, 0], refs[0][0][:, 0]) and torch.equal(z[1, :, 3], refs[1][0][:, 2])
    z_in = z.clone()
    y = torch.randn(B, 1, 6, 384)
    y_mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1]])
    add = dict(kwargs_240p(B, frames=17), fps=torch.full((B,), 24.0))
    sampler = RFLOW(num_sampling_steps=5, cfg_scale=4.0, use_timestep_transform=True)
    out = sampler.sample(model, z, y, y_mask, additional_args=add, mask=frame_mask, progress=False)
    assert torch.equal(out[0, :, 0], z_in[0, :, 0])  # edit ratio 0: untouched, bit for bit
    assert not torch.equal(out[1, :, 3], z_in[1, :, 3])  # edit ratio 0.5: regenerated from t=500
    assert not torch.allclose(out[0, :, 1:], z_in[0, :, 1:])
    assert torch.isfinite(out).all()


# --- masks -------------------------------------------------------------------------------------


def test_parse_mask_strategy():
    assert parse_mask_strategy("") == [] and parse_mask_strategy(None) == []
    assert parse_mask_strategy("0") == [[0, 0, 0, 0, 1, 0.0]]
    assert parse_mask_strategy("0,0,0,0,8,0.3;1,2,-5,0,5") == [[0, 0, 0, 0, 8, 0.3], [1, 2, -5, 0, 5, 0.0]]
    with pytest.raises(ValueError):
        parse_mask_strategy("0,0,0,0,1,0,7")
    assert extension_strategy(1, 1) == "1,1,-5,0,5,0.0"
    assert parse_mask_strategy(extension_strategy(1, 1)) == [[1, 1, -5, 0, 5, 0.0]]


def test_apply_mask_strategy_alignment_and_clipping():
    assert find_nearest_point(7, 5, 15) == 5 and find_nearest_point(8, 5, 15) == 10
    assert find_nearest_point(13, 5, 15) == 10  # never the last multiple below max
    z = torch.zeros(1, 4, 15, 2, 2)
    ref = torch.arange(10.0).view(1, 10, 1, 1).expand(4, 10, 2, 2)
    mask = apply_mask_strategy(z, [[ref]], ["0,0,-5,12,8,0.2"], loop_i=0, align=5)
    # ref start -5 -> 5; target 12 snaps to 10; length min(8, 15-10, 10-5) = 5
    torch.testing.assert_close(mask[0], torch.tensor([1.0] * 10 + [0.2] * 5))
    assert z[0, 0, 10:, 0, 0].tolist() == [5.0, 6.0, 7.0, 8.0, 9.0]
    # other loops are ignored
    assert apply_mask_strategy(torch.zeros(1, 4, 5, 2, 2), [[ref]], ["1,0"], loop_i=0)[0].tolist() == [1.0] * 5
    assert apply_mask_strategy(z, [], [], loop_i=0) is None


def test_mask_generator():
    gen = MaskGenerator({"image_head": 0.5, "quarter_tail": 0.25}, rng=random.Random(0))
    assert gen.mask_ratios["identity"] == pytest.approx(0.25)
    masks = gen.get_masks(torch.zeros(400, 4, 8, 1, 1))
    assert masks.shape == (400, 8) and masks.dtype == torch.bool
    assert masks.any(dim=1).all()
    head = (~masks[:, 0]) & masks[:, 1:].all(dim=1)
    assert 0.4 < head.float().mean() < 0.6
    assert gen.get_mask(1).tolist() == [True]
    with pytest.raises(ValueError):
        MaskGenerator({"bogus": 0.1})


# --- a 2-D Gaussian mixture learned with rectified flow ----------------------------------------

CENTERS = torch.tensor([[2.0, 2.0], [-2.0, 2.0], [2.0, -2.0], [-2.0, -2.0]])


def mixture(n, g):
    return CENTERS[torch.randint(0, 4, (n,), generator=g)] + 0.3 * torch.randn(n, 2, generator=g)


class ToyVelocity(nn.Module):
    """Small MLP v(x, t); points are [B, 2, 1, 1, 1] tensors so the video scheduler applies unchanged."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(18, 128), nn.SiLU(), nn.Linear(128, 128), nn.SiLU(), nn.Linear(128, 2))

    def forward(self, x, t, **kw):
        B = x.shape[0]
        angles = (t.float()[:, None] / 1000) * (2.0 ** torch.arange(8.0))[None] * math.pi  # [B, 8]
        h = torch.cat([x.reshape(B, 2), angles.sin(), angles.cos()], dim=1)
        return self.net(h).reshape(B, 2, 1, 1, 1)


def energy_distance(a, b):
    return (2 * torch.cdist(a, b).mean() - torch.cdist(a, a).mean() - torch.cdist(b, b).mean()).item()


def sample_points(model, n, seed):
    torch.manual_seed(seed)
    z = torch.randn(n, 2, 1, 1, 1)
    y = torch.zeros(n, 1, 1, 1)
    return RFLOW(num_sampling_steps=30, cfg_scale=1.0).sample(model, z, y, y_null=y, progress=False).reshape(n, 2)


def test_rectified_flow_learns_2d_gaussian_mixture():
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = ToyVelocity()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    scheduler = RFlowScheduler()
    for _ in range(1500):
        x = mixture(256, g).reshape(256, 2, 1, 1, 1)
        loss = scheduler.training_losses(model, x)["loss"].mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    data = mixture(2000, g)
    samples = sample_points(model, 2000, seed=1)
    threshold = 0.06
    # sanity of the threshold: two data draws are far below it; an untrained model and a Gaussian
    # with the mixture's mean and covariance are far above it
    assert energy_distance(mixture(2000, g), data) < 0.02
    assert energy_distance(sample_points(ToyVelocity(), 2000, seed=1), data) > 5 * threshold
    assert energy_distance(torch.randn(2000, 2, generator=g) * math.sqrt(4.09), data) > 2 * threshold
    assert energy_distance(samples, data) < threshold
    # every mode gets its share, and samples sit near a centre
    nearest = torch.cdist(samples, CENTERS).min(dim=1)
    share = torch.bincount(nearest.indices, minlength=4) / len(samples)
    assert (share > 0.15).all() and (share < 0.35).all()
    assert nearest.values.median() < 0.6
    torch.testing.assert_close(samples.mean(0), torch.zeros(2), atol=0.25, rtol=0)


def test_base_resolution_reaches_training_and_sampling_timesteps():
    """The transform's neutral pixel count is a setting of both the training sampler and the Euler sampler (the
    embedded pipeline trains and samples at 128x128 = 16384): a 48x48 still has r = sqrt(2304/16384) = 0.375, so
    t = 500 -> 0.375*0.5 / (1 - 0.625*0.5) * 1000 = 272.727..."""
    from opensora_lib.schedulers.rectified_flow import RFlowScheduler, sampling_timesteps

    kwargs = {"height": torch.tensor([48.0]), "width": torch.tensor([48.0]), "num_frames": torch.tensor([1])}
    ts = sampling_timesteps(2, 1000, 1, use_timestep_transform=True, model_kwargs=kwargs, base_resolution=16384)
    assert ts[1].item() == pytest.approx(0.1875 / 0.6875 * 1000, rel=1e-6)
    ts_ref = sampling_timesteps(2, 1000, 1, use_timestep_transform=True, model_kwargs=kwargs)  # 512*512
    r = (2304 / 262144) ** 0.5
    assert ts_ref[1].item() == pytest.approx(r * 0.5 / (1 + (r - 1) * 0.5) * 1000, rel=1e-6)

    sched = RFlowScheduler(use_timestep_transform=True, base_resolution=16384)
    torch.manual_seed(0)
    t = sched.sample_t(torch.zeros(4096, 4, 1, 6, 6), {k: v.expand(4096) for k, v in kwargs.items()})
    # uniform t through the transform with r = 0.375: its mean is below 500 and matches the closed form
    u = torch.linspace(0, 1, 100001)
    expected = (0.375 * u / (1 - 0.625 * u)).mean().item() * 1000
    assert t.mean().item() == pytest.approx(expected, abs=12)


def test_frame_scale_gives_a_stand_in_clip_the_released_clips_shift():
    """frame_scale (ours): the embedded 9-frame bucket stands in for the released 51-frame one. At frame_scale 6 a
    48x48 9-frame clip against the 128x128 base gets exactly the shift of a 144x256 51-frame clip against 512x512:
    r = 0.375 * sqrt(54 // 17 * 5) = 0.375 * sqrt(15) = 1.4524, so t = 500 -> 1.4524*0.5 / (1 + 0.4524*0.5) * 1000."""
    t = torch.tensor([250.0, 500.0, 900.0])
    ours = {"height": torch.full((3,), 48.0), "width": torch.full((3,), 48.0), "num_frames": torch.full((3,), 9.0)}
    released = {"height": torch.full((3,), 144.0), "width": torch.full((3,), 256.0), "num_frames": torch.full((3,), 51.0)}
    scaled = timestep_transform(t, ours, base_resolution=16384, num_timesteps=1000, frame_scale=6)
    torch.testing.assert_close(scaled, timestep_transform(t, released, num_timesteps=1000))
    r = 0.375 * math.sqrt(15)
    assert scaled[1].item() == pytest.approx(r * 0.5 / (1 + (r - 1) * 0.5) * 1000, rel=1e-6)
    # frame_scale 1 is the reference: a 9-frame clip has 0 latent frames by the formula and counts as one (r = 0.375)
    plain = timestep_transform(t, ours, base_resolution=16384, num_timesteps=1000)
    assert plain[1].item() == pytest.approx(0.1875 / 0.6875 * 1000, rel=1e-6)
    # stills are not scaled
    still = {k: v.clone() for k, v in ours.items()}
    still["num_frames"] = torch.ones(3)
    torch.testing.assert_close(timestep_transform(t, still, base_resolution=16384, num_timesteps=1000, frame_scale=6),
                               timestep_transform(t, still, base_resolution=16384, num_timesteps=1000))


def test_frame_scale_reaches_training_and_sampling_timesteps():
    kwargs = {"height": torch.tensor([48.0]), "width": torch.tensor([48.0]), "num_frames": torch.tensor([17.0])}
    r = 0.375 * math.sqrt(102 // 17 * 5)  # 17 frames stand in for 102: 30 latent frames

    class RecordTimesteps(nn.Module):
        def __init__(self):
            super().__init__()
            self.seen = []

        def forward(self, x, t, y, **kw):
            self.seen.append(t[0].item())
            return torch.zeros(x.shape[0], 2 * x.shape[1], *x.shape[2:])

    model = RecordTimesteps()
    sampler = RFLOW(num_sampling_steps=2, use_timestep_transform=True, base_resolution=16384, frame_scale=6)
    sampler.sample(model, torch.zeros(1, 4, 5, 6, 6), torch.zeros(1, 1, 3, 8), y_null=torch.zeros(1, 1, 3, 8),
                   additional_args=kwargs, progress=False)
    assert model.seen[1] == pytest.approx(r * 0.5 / (1 + (r - 1) * 0.5) * 1000, rel=1e-6)
    sched = RFlowScheduler(use_timestep_transform=True, base_resolution=16384, frame_scale=6)
    torch.manual_seed(0)
    t = sched.sample_t(torch.zeros(4096, 4, 5, 6, 6), {k: v.expand(4096) for k, v in kwargs.items()})
    u = torch.linspace(0, 1, 100001)
    expected = (r * u / (1 + (r - 1) * u)).mean().item() * 1000
    assert t.mean().item() == pytest.approx(expected, abs=12)
