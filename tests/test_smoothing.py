"""Closed-form samplers, temperature smoothing, K-nearest truncation, p_MN, expansion factor, overlap."""

import math

import numpy as np
import pytest
import torch

from difflens.analysis import smoothing, trajectories
from difflens.analysis.memorization import memorization
from difflens.diffusion import samplers
from difflens.errors import DifflensError
from difflens.kernel import oracle
from reference import posterior_mean


@pytest.fixture(scope="module")
def points16():
    return torch.from_numpy(np.random.default_rng(1).uniform(-1, 1, (16, 12)).astype(np.float32))


def test_empirical_sampler_collapses_onto_training_points(points16):
    sig = samplers.edm_sigmas(24, 0.002, 20.0)
    x = samplers.initial_noise(24, 12, 20.0, seed=0)
    base = samplers.sample(smoothing.EmpiricalDenoiser(points16), x, sig, method="heun").samples
    m = memorization(base, points16)
    assert m.memorization_ratio >= 0.95
    assert m.d1.max() < 1e-3
    hot = samplers.sample(smoothing.EmpiricalDenoiser(points16, temperature=1e6), x, sig, method="heun").samples
    assert memorization(hot, points16).memorization_ratio <= 0.5


def test_temperature_schedule_and_k_truncation(points16):
    den = smoothing.EmpiricalDenoiser(points16, temperature=2.0, collapse_sigma=0.5)
    t = den.temperature_at(torch.tensor([0.1, 0.5, 2.0], dtype=torch.float64))
    np.testing.assert_allclose(t.numpy(), [10.0, 2.0, 2.0])
    q = points16[:5] + 0.7 * torch.randn(5, 12, generator=torch.Generator().manual_seed(0))
    full = smoothing.EmpiricalDenoiser(points16, temperature=3.0)
    assert torch.equal(smoothing.EmpiricalDenoiser(points16, 3.0, k=16)(q, 0.4), full(q, 0.4))  # K = N: no truncation
    mean, tol = posterior_mean(q, points16, 0.4**2 * 3.0)
    assert ((full(q, 0.4).double() - mean).abs().amax(1) <= tol).all()  # s²T in the softmax, float64 truth
    got = smoothing.EmpiricalDenoiser(points16, 3.0, k=4)(q.double(), 0.4)
    d = torch.cdist(q.double(), points16.double())
    for b in range(5):
        keep = torch.topk(d[b], 4, largest=False).indices
        mean, tol = posterior_mean(q[b : b + 1], points16[keep], 0.4**2 * 3.0, data=points16)
        assert (got[b] - mean[0]).abs().max() <= tol[0]
    with pytest.raises(DifflensError):
        smoothing.EmpiricalDenoiser(points16, k=17)


def _log_pmn(x: torch.Tensor, data: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """Brute-force log Σ_ij σ_i² N(x; x_j, σ_i² I) (float64, differentiable)."""
    d = x.shape[1]
    sq = ((x[:, None, :] - data[None]) ** 2).sum(-1)  # (B, N)
    logits = -(d - 2) * torch.log(sigmas)[None, :, None] - sq[:, None, :] / (2 * sigmas[None, :, None] ** 2)
    return torch.logsumexp(logits.reshape(len(x), -1), 1) - d / 2 * math.log(2 * math.pi)


def test_pmn_score_is_gradient_of_log_density(points16):
    sig = torch.tensor([0.05, 0.2, 0.6, 1.5, 4.0], dtype=torch.float64)
    mix = smoothing.UnconditionedMixture(points16, sig)
    gen = torch.Generator().manual_seed(3)
    x = (points16[:6].double() + 0.5 * torch.randn(6, 12, generator=gen, dtype=torch.float64)).requires_grad_()
    ref = _log_pmn(x, points16.double(), sig)
    (grad,) = torch.autograd.grad(ref.sum(), x)
    score = mix.score(x.detach())
    np.testing.assert_allclose(score.numpy(), grad.numpy(), rtol=2e-4, atol=2e-4 * grad.abs().max().item())
    lp = mix.log_density(x.detach())
    np.testing.assert_allclose((lp - lp[0]).numpy(), (ref - ref[0]).detach().numpy(), atol=1e-3)
    pi = mix.shell_weights(x.detach())
    np.testing.assert_allclose(pi.sum(1).numpy(), 1.0, atol=1e-9)
    den = mix(x.detach(), 0.3)  # as a denoiser: x + s²·score
    np.testing.assert_allclose(den.numpy(), (x.detach() + 0.09 * score).numpy(), atol=1e-9)


def test_heun_matches_closed_form_flow_of_a_gaussian():
    """Data N(0, v I): D(x, s) = x·v/(v+s²) and the ODE solution is x_T·√((v+s²)/(v+s_T²))."""
    v = 0.3
    lin = lambda x, s: x * v / (v + s**2)  # noqa: E731
    sig = samplers.edm_sigmas(80, 0.01, 50.0)
    x0 = samplers.initial_noise(5, 3, 50.0, seed=1)
    tr = samplers.sample(lin, x0, sig, method="heun", record=True)
    for k in (10, 40, 79):
        s = float(sig[k])
        np.testing.assert_allclose(tr.states[k], x0 * math.sqrt((v + s * s) / (v + 2500.0)), rtol=2e-3)
    out = samplers.sample(lin, x0, sig, method="pc", corrector_steps=1, seed=0).samples
    assert out.shape == x0.shape
    assert torch.isfinite(out).all()


def test_expansion_factor_of_a_linear_denoiser():
    c = 0.4
    lin = lambda x, s: c * x  # noqa: E731
    sig = samplers.edm_sigmas(6, 0.01, 10.0)
    tr = samplers.sample(lin, samplers.initial_noise(4, 3, 10.0), sig, method="euler", record=True)
    g = smoothing.expansion_factor(lin, tr, method="euler")
    s = sig.numpy()
    expect = np.abs(1 + (s[1:] - s[:-1]) * (1 - c) / s[:-1])[:-1]  # the last jump to s = 0 is left out
    np.testing.assert_allclose(g, np.repeat(expect[:, None], 4, 1), rtol=1e-6)


def test_trajectory_overlap_identifies_noised_training_samples(points16):
    assert trajectories.overlap_coefficient(np.arange(50.0), np.arange(50.0)) == pytest.approx(1.0)
    assert trajectories.overlap_coefficient(np.zeros(10), np.ones(10) * 5) == 0.0
    gen = torch.Generator().manual_seed(0)
    sig = torch.tensor([1.0, 0.3, 0.05, 0.0], dtype=torch.float64)
    src = torch.randint(0, 16, (64,), generator=gen)
    states = [
        points16[src].double() + float(s) * torch.randn(64, 12, generator=gen, dtype=torch.float64) for s in sig[:-1]
    ]
    far = [torch.full((64, 12), 3.0, dtype=torch.float64) for _ in sig[:-1]]  # nowhere near the data
    same = trajectories.trajectory_overlap(points16, samplers.Trajectory(states[-1], sig, states), probes=64)
    other = trajectories.trajectory_overlap(points16, samplers.Trajectory(far[-1], sig, far), probes=64)
    assert min(lv.overlap_nn_distance for lv in same) > 0.5
    assert max(lv.overlap_nn_distance for lv in other) < 0.1
    post = oracle.posterior(states[1], points16, 0.3)
    assert same[1].sampler_max_weight["median"] == float(np.quantile(post.max_weight.numpy(), 0.5))  # same kernel call
