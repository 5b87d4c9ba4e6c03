"""Per-level generalization gap and the 2-D toy lab."""

import itertools
import warnings

import numpy as np
import pytest
import torch

from difflens.analysis import gap, model_error
from difflens.analysis.smoothing import EmpiricalDenoiser
from difflens.errors import DifflensError
from difflens.lab import toy


def test_blurred_denoiser_equals_numerical_posterior_of_blurred_data():
    train = torch.tensor([[1.0, 0.0], [-0.5, 0.8], [-0.3, -0.9]])
    delta, s = 0.35, 0.5
    g = np.linspace(-4, 4, 801)
    gx, gy = np.meshgrid(g, g)
    pts = np.stack([gx.ravel(), gy.ravel()], 1)
    prior = sum(np.exp(-((pts - m) ** 2).sum(1) / (2 * delta**2)) for m in train.numpy().astype(np.float64))
    queries = np.array([[0.2, 0.1], [1.3, -0.4], [-0.8, 0.9]])
    got = toy.Blurred(train, delta)(torch.from_numpy(queries), s).numpy()
    for q, y in zip(queries, got, strict=True):
        w = prior * np.exp(-((pts - q) ** 2).sum(1) / (2 * s**2))
        np.testing.assert_allclose(y, (w[:, None] * pts).sum(0) / w.sum(), atol=1e-5)
    np.testing.assert_allclose(
        toy.Blurred(train, 0.0)(torch.from_numpy(queries), s), toy.Optimal(train)(torch.from_numpy(queries), s)
    )


def test_toy_gap_vanishes_far_from_delta_and_peaks_near_it():
    (curve,) = toy.sweep("delta", [0.1], [1e-4, 0.1, 1e3], points=8, draws=50)
    small, mid, large = curve.gap
    assert abs(small) < 0.01
    assert abs(large) < 0.01
    assert mid > 0.1
    assert curve.peak_sigma == 0.1
    assert curve.error == "l2"


def test_toy_sweeps_follow_the_paper_trends():
    sig = np.geomspace(0.01, 1.0, 9)
    peak = lambda c: max(c.gap)  # noqa: E731
    by_delta = toy.sweep("delta", [0.05, 0.3], sig, points=8, draws=10)
    assert peak(by_delta[0]) > peak(by_delta[1])  # more model error, smaller gap
    by_density = toy.sweep("density", [6, 24], sig, delta=0.05, draws=10)
    assert peak(by_density[0]) > peak(by_density[1])  # denser data, smaller gap
    by_w = toy.sweep("guidance", [0.0, 2.0], sig, delta=0.05, delta_neg=0.15, draws=10)
    assert peak(by_w[1]) > peak(by_w[0])  # guidance enlarges it
    with pytest.raises(DifflensError):
        toy.sweep("density", [2.5], sig)


def test_gap_noise_is_fixed_and_oracle_gap_is_exact():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 5)).astype(np.float32)
    a = model_error.fixed_noise(10, 5, 2, seed=3, stream=1)
    assert torch.equal(a, model_error.fixed_noise(10, 5, 2, seed=3, stream=1))
    assert not torch.equal(a, model_error.fixed_noise(10, 5, 2, seed=3, stream=0))
    sig = [0.01, 1.0, 100.0]
    den = EmpiricalDenoiser(x[:20])
    curves = gap.generalization_gap({"c1": den, "c2": den}, x[:20], x[20:], sig, seed=1)
    assert curves[0].e_train == curves[1].e_train
    assert curves[0].e_val == curves[1].e_val  # same noise
    assert curves[0].e_train[0] < 1e-6
    assert curves[0].e_val[0] > 0.1  # the oracle memorizes at small s
    assert curves[0].gap[0] > 1e4
    assert abs(curves[0].gap[2]) < 0.2
    unpaired = gap.generalization_gap(den, x[:20], x[20:], sig, seed=1, paired=False)[0]
    assert unpaired.e_train == curves[0].e_train
    assert unpaired.e_val != curves[0].e_val
    # E_train at one level by hand: per-dim squared error of D(y + s·n) with the fixed noise
    n = model_error.fixed_noise(20, 5, 1, seed=1, stream=0)[0]
    y = torch.from_numpy(x[:20])
    manual = ((den(y + n, 1.0) - y) ** 2).mean().item()
    assert curves[0].e_train[1] == pytest.approx(manual, rel=1e-5)
    d = curves[0].to_dict()
    assert d["peak_sigma"] == 0.01
    assert len(d["gap"]) == 3


def test_resolve_denoiser_specs(tmp_path, monkeypatch):
    x = np.zeros((4, 2), np.float32)
    den = gap.resolve_denoiser("oracle:T=2,sc=0.5,k=3", x)
    assert (den.temperature, den.collapse_sigma, den.k) == (2, 0.5, 3)
    (tmp_path / "my_models.py").write_text(
        "def make():\n    return lambda x, s: 0 * x\n\ndef half(x, s):\n    return x / 2\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    q = torch.ones(3, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the one syntax of models.load: no deprecation warning
        assert torch.equal(gap.resolve_denoiser("my_models:make", x)(q, 1.0), torch.zeros(3, 2))
        assert torch.equal(gap.resolve_denoiser(f"{tmp_path}/my_models.py:half", x)(q, 1.0), q / 2)
    with pytest.warns(FutureWarning, match="py: prefix is deprecated; write 'my_models:half'"):
        assert torch.equal(gap.resolve_denoiser("py:my_models:half", x)(q, 1.0), q / 2)
    with pytest.raises(DifflensError):
        gap.resolve_denoiser("oracle:X=1", x)
    for bad in ("2.5", "true"):  # a fractional or boolean K is refused, not passed on to the kernel's top-k
        with pytest.raises(DifflensError, match="k must be a whole number"):
            gap.resolve_denoiser(f"oracle:k={bad}", x)
    with pytest.raises(DifflensError, match="no_such_module_xyz"), pytest.warns(FutureWarning):
        gap.resolve_denoiser("py:no_such_module_xyz:f", x)
    with pytest.raises(DifflensError, match="unknown denoiser"):
        gap.resolve_denoiser("nothing", x)


def test_toy_circle_is_the_papers_setting():
    train, val = toy.circle()
    assert train.shape == val.shape == (10, 2)
    turn = np.arctan2(train[:, 1].double().numpy(), train[:, 0].double().numpy()) / (2 * np.pi) % 1
    np.testing.assert_allclose(np.sort(turn), 0.01 + np.arange(10) / 10, atol=1e-6)  # rotated by 0.01 turn
    both = torch.cat([train, val]).double()
    np.testing.assert_allclose(torch.linalg.vector_norm(both, dim=1), 1.0, atol=1e-6)
    assert torch.cdist(both, both).add(torch.eye(20, dtype=both.dtype) * 9).min() > 2 * np.sin(np.pi / 20) - 1e-6
    # random mode: 2n angles drawn, the first half val, the second train, in drawing order (not sorted)
    tr, va = toy.circle(5, random=True, radius=2.0, seed=4)
    a = np.random.default_rng(4).uniform(0, 2 * np.pi, 10)
    x = 2.0 * np.stack([np.cos(a), np.sin(a)], 1)
    np.testing.assert_allclose(va, x[:5], atol=1e-6)
    np.testing.assert_allclose(tr, x[5:], atol=1e-6)
    s = toy.paper_sigmas(radius=10.0)
    assert len(s) == 120
    assert s[0] == pytest.approx(2e-3)
    assert s[-1] == pytest.approx(80.0)
    r = s[::-1] ** (1 / 7)  # EDM ρ = 7: equally spaced in s^(1/ρ)
    np.testing.assert_allclose(np.diff(r), np.diff(r)[0], rtol=1e-9)
    with pytest.raises(DifflensError):
        toy.circle(radius=0.0)


def test_toy_gap_defaults_peak_inside_and_shrink_with_delta():
    """The paper's qualitative result with the default setting: G peaks at an intermediate level, and the
    peak falls as δ grows over the default δ values (every 4th level of the default grid, to stay fast)."""
    sig = toy.paper_sigmas()[::4]
    curves = toy.sweep("delta", toy.PAPER_DELTAS, sig, draws=10)
    peaks = []
    for c in curves:
        i = int(np.argmax(c.gap))
        assert 0 < i < len(sig) - 1
        assert c.gap[i] > 5 * max(abs(c.gap[0]), abs(c.gap[-1]))
        peaks.append(c.gap[i])
    assert all(a > b for a, b in itertools.pairwise(peaks)), peaks
