"""Discrete DDPM with learned variance (opensora_lib/schedulers/ddpm.py): formulas against hand-computed values."""

import math

import numpy as np
import pytest
import torch

from opensora_lib.schedulers.ddpm import (
    DDPMSampler,
    GaussianDiffusion,
    approx_standard_normal_cdf,
    discretized_gaussian_log_likelihood,
    linear_betas,
    normal_kl,
    respace,
    space_timesteps,
)


def small():
    # betas 0.1, 0.2, 0.3 -> alphas_cumprod 0.9, 0.72, 0.504
    return GaussianDiffusion(np.array([0.1, 0.2, 0.3]))


def test_linear_betas_pixart_schedule():
    b = linear_betas(1000)
    assert b[0] == pytest.approx(1e-4) and b[-1] == pytest.approx(0.02)
    assert b[1] == pytest.approx(1e-4 + (0.02 - 1e-4) / 999)
    b500 = linear_betas(500)  # scaled by 1000/T
    assert b500[0] == pytest.approx(2e-4) and b500[-1] == pytest.approx(0.04)
    d = GaussianDiffusion()
    assert d.num_timesteps == 1000
    assert d.alphas_cumprod[1] == pytest.approx((1 - 1e-4) * (1 - b[1]))


def test_schedule_quantities_by_hand():
    d = small()
    np.testing.assert_allclose(d.alphas_cumprod, [0.9, 0.72, 0.504])
    np.testing.assert_allclose(d.alphas_cumprod_prev, [1.0, 0.9, 0.72])
    # posterior variance beta_t (1 - acp_{t-1}) / (1 - acp_t)
    np.testing.assert_allclose(d.posterior_variance, [0.0, 0.2 * 0.1 / 0.28, 0.3 * 0.28 / 0.496])
    # clipped log: t = 0 uses the t = 1 value
    np.testing.assert_allclose(d.posterior_log_variance_clipped, np.log([0.2 * 0.1 / 0.28, 0.2 * 0.1 / 0.28, 0.3 * 0.28 / 0.496]))
    assert d.posterior_mean_coef1[1] == pytest.approx(0.2 * math.sqrt(0.9) / 0.28)  # 0.677631
    assert d.posterior_mean_coef2[1] == pytest.approx(0.1 * math.sqrt(0.8) / 0.28)  # 0.319438
    assert d.posterior_mean_coef1[0] == pytest.approx(1.0) and d.posterior_mean_coef2[0] == pytest.approx(0.0)


def test_q_sample_and_inverse():
    d = small()
    x0 = torch.ones(1, 2, 3)
    eps = torch.ones(1, 2, 3)
    t = torch.tensor([2])
    xt = d.q_sample(x0, t, eps)
    assert torch.allclose(xt, torch.full_like(xt, math.sqrt(0.504) + math.sqrt(0.496)))  # 1.414203
    assert torch.allclose(d.predict_xstart_from_eps(xt, t, eps), x0, atol=1e-6)
    mean, var, logvar = d.q_posterior_mean_variance(x0, xt, torch.tensor([1]))
    assert torch.allclose(mean, 0.2 * math.sqrt(0.9) / 0.28 * x0 + 0.1 * math.sqrt(0.8) / 0.28 * xt)
    assert var.flatten()[0].item() == pytest.approx(0.2 * 0.1 / 0.28)


def test_normal_kl_and_likelihood_by_hand():
    assert normal_kl(0.0, 0.0, 0.0, 0.0).item() == 0.0
    assert normal_kl(1.0, 0.0, 0.0, 0.0).item() == pytest.approx(0.5)
    assert normal_kl(0.0, math.log(4.0), 0.0, 0.0).item() == pytest.approx(0.5 * (3 - math.log(4.0)))  # 0.806853
    assert approx_standard_normal_cdf(torch.tensor(0.0)).item() == pytest.approx(0.5)
    assert approx_standard_normal_cdf(torch.tensor(1.0)).item() == pytest.approx(0.841345, abs=2e-4)
    # the bin around 0 under N(0, 1): Phi(1/255) - Phi(-1/255) ~ 2/255 * phi(0)
    ll = discretized_gaussian_log_likelihood(torch.tensor([0.0]), torch.tensor([0.0]), torch.tensor([0.0]))
    assert ll.item() == pytest.approx(math.log(2 / 255 * 0.3989423), abs=1e-4)  # -5.76702
    # edge bins extend to infinity: x = -1 -> log Phi((-1 + 1/255) / 1)
    ll = discretized_gaussian_log_likelihood(torch.tensor([-1.0]), torch.tensor([0.0]), torch.tensor([0.0]))
    assert ll.item() == pytest.approx(math.log(0.5 * math.erfc((1 - 1 / 255) / math.sqrt(2))), abs=1e-3)


def test_learned_variance_interpolates_between_bounds():
    d = small()
    t = torch.tensor([2, 2])
    v = torch.tensor([1.0, -1.0]).view(2, 1)
    lv = d.model_log_variance(v, t, 2).flatten()
    assert lv[0].item() == pytest.approx(math.log(0.3))  # v = 1: beta_t
    assert lv[1].item() == pytest.approx(math.log(0.3 * 0.28 / 0.496))  # v = -1: posterior variance
    mid = d.model_log_variance(torch.zeros(1, 1), torch.tensor([2]), 2).item()
    assert mid == pytest.approx(0.5 * (math.log(0.3) + math.log(0.3 * 0.28 / 0.496)))


class Oracle(torch.nn.Module):
    """Knows x0: predicts the exact eps and the given variance value; counts calls."""

    def __init__(self, d, x0, v=-1.0):
        super().__init__()
        self.d, self.x0, self.v = d, x0, v
        self.w = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x, t_model, **kw):
        # t_model is the original index; for a full schedule it is the position
        t = t_model.long()
        acp = torch.from_numpy(self.d.alphas_cumprod)[t].float().view(-1, *([1] * (x.ndim - 1)))
        eps = (x - acp.sqrt() * self.x0[: x.shape[0]]) / (1 - acp).sqrt()
        return torch.cat([eps + self.w, torch.full_like(eps, self.v) + self.w], dim=1)


def test_training_loss_zero_for_oracle_and_vb_trains_only_sigma():
    torch.manual_seed(0)
    d = GaussianDiffusion(linear_betas(50))
    x0 = torch.randn(3, 2, 1, 4, 4) * 0.5
    t = torch.tensor([5, 20, 49])
    losses = d.training_losses(Oracle(d, x0), x0, t)
    assert losses["mse"].abs().max() < 1e-8
    assert losses["vb"].abs().max() < 1e-4  # exact mean, variance = posterior variance: KL = 0
    # the vb term sees eps through a stop-gradient: d vb / d eps = 0, d vb / d v != 0
    eps_pred = torch.randn(3, 2, 1, 4, 4, requires_grad=True)
    v = torch.zeros(3, 2, 1, 4, 4, requires_grad=True)
    xt = d.q_sample(x0, t, torch.randn_like(x0))
    vb = d.vb_terms_bpd(eps_pred.detach(), v, x0, xt, t).sum()
    vb.backward()
    assert eps_pred.grad is None and v.grad.abs().sum() > 0


def test_vb_at_t0_is_decoder_nll():
    d = small()
    x0 = torch.zeros(1, 1)
    xt = d.q_sample(x0, torch.tensor([0]), torch.zeros(1, 1))
    eps = torch.zeros(1, 1)
    v = torch.ones(1, 1)  # log var = log beta_0 = log 0.1
    vb = d.vb_terms_bpd(eps, v, x0, xt, torch.tensor([0])).item()
    mean = d.p_mean_variance(eps, v, xt, torch.tensor([0]))["mean"]
    expected = -discretized_gaussian_log_likelihood(x0, mean, torch.tensor([[0.5 * math.log(0.1)]])).item() / math.log(2)
    assert vb == pytest.approx(expected)


def test_space_and_respace():
    assert space_timesteps(1000, 4) == [0, 333, 666, 999]
    assert space_timesteps(1000, 1) == [999]
    base = GaussianDiffusion()
    use = space_timesteps(1000, 10)
    r = respace(base, use)
    np.testing.assert_allclose(r.alphas_cumprod, base.alphas_cumprod[use], rtol=1e-10)
    assert r.num_timesteps == 10
    assert r.model_timesteps(torch.tensor([0, 9])).tolist() == [0.0, 999.0]


class NullCaptionOracle(Oracle):
    def null_caption(self, n, length):
        return torch.zeros(n, 1, length, 3)

    def forward(self, x, t_model, y=None, mask=None, **kw):
        return super().forward(x, t_model)


@pytest.mark.parametrize("method", ["ddim", "iddpm"])
def test_samplers_recover_x0_with_an_oracle(method):
    torch.manual_seed(0)
    sampler = DDPMSampler(num_sampling_steps=8, method=method, cfg_scale=4.5)
    x0 = torch.randn(2, 2, 1, 3, 3) * 0.5
    model = NullCaptionOracle(sampler.base, torch.cat([x0, x0]))  # the CFG batch is [cond, uncond]
    z = torch.randn_like(x0)
    y = torch.zeros(2, 1, 4, 3)
    out = sampler.sample(model, z, y, torch.ones(2, 4), generator=torch.Generator().manual_seed(0))
    # the oracle's eps is exact at every step, so the last step lands on x0 (DDIM: exactly; IDDPM: its t = 0 mean)
    assert torch.allclose(out, x0, atol=1e-4)
