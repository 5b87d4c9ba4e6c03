"""Processes invert their noise levels; target conversion factors follow their definitions."""

import numpy as np
import pytest

from difflens import DifflensError
from difflens.diffusion.processes import PROCESSES, TARGETS, conversion_factor, edm_c_out, get_process, parse_sigmas

T = np.linspace(0.05, 0.95, 19)


@pytest.mark.parametrize("name", list(PROCESSES))
def test_t_of_s_inverts_s_of_t(name):
    p = get_process(name)
    s = p.s_of_t(T)
    assert np.all(np.diff(s) > 0), "s must increase with t"
    assert np.allclose(p.t_of_s(s), T, atol=1e-9)


@pytest.mark.parametrize("name", list(PROCESSES))
def test_derivatives_match_finite_differences(name):
    p, h = get_process(name), 1e-6
    assert np.allclose(p.dalpha(T), (p.alpha(T + h) - p.alpha(T - h)) / (2 * h), rtol=1e-5, atol=1e-6)
    assert np.allclose(p.dsigma(T), (p.sigma(T + h) - p.sigma(T - h)) / (2 * h), rtol=1e-5, atol=1e-6)


def test_vp_processes_preserve_variance_and_follow_ddpm_betas():
    for name in ("vp", "vp-cosine"):
        p = get_process(name)
        assert np.allclose(p.alpha(T) ** 2 + p.sigma(T) ** 2, 1.0)
    # discrete DDPM: ᾱ_1000 = Π(1 − β_i), β linear 1e-4…0.02; the continuous form matches closely
    betas = np.linspace(1e-4, 0.02, 1000)
    abar_discrete = np.cumprod(1 - betas)
    p = get_process("vp")
    steps = np.array([10, 100, 500, 999])
    assert np.allclose(p.abar((steps + 1) / 1000), abar_discrete[steps], rtol=0.02, atol=1e-5)


def test_conversion_factors_match_closed_forms():
    fm, vp, ve, edm = (get_process(n) for n in ("fm", "vp", "ve", "edm"))
    assert np.allclose(conversion_factor(fm, "flow", T), 1 / T**2)
    assert np.allclose(conversion_factor(vp, "v", T), 1 / vp.sigma(T) ** 2)
    assert np.allclose(conversion_factor(ve, "eps", T), 1 / ve.sigma(T) ** 2)
    assert np.allclose(conversion_factor(edm, "edm", T), 1 / edm_c_out(T) ** 2)
    assert np.allclose(conversion_factor(vp, "score", T), vp.alpha(T) ** 2 / vp.sigma(T) ** 4)
    for name in PROCESSES:
        assert np.allclose(conversion_factor(name, "x0", T), 1.0)


@pytest.mark.parametrize("name", list(PROCESSES))
@pytest.mark.parametrize("target", list(TARGETS))
def test_conversion_factor_is_the_error_ratio_of_a_perturbed_x0(name, target):
    # a prediction of x0 that is off by δ is off by sqrt(r)·δ in the target's units
    p = get_process(name)
    rng = np.random.default_rng(0)
    x0, eps, delta = rng.standard_normal((3, 5))
    t = 0.37
    a, s, da, ds = p.alpha(t), p.sigma(t), p.dalpha(t), p.dsigma(t)
    xt = a * x0 + s * eps
    sv = s / a  # VE-equivalent level
    c_skip = 0.25 / (sv**2 + 0.25)

    def target_of(x0_hat):
        eps_hat = (xt - a * x0_hat) / s
        return {
            "x0": x0_hat,
            "eps": eps_hat,
            "score": -eps_hat / s,
            "v": a * eps_hat - s * x0_hat,
            "flow": da * x0_hat + ds * eps_hat,
            "edm": (x0_hat - c_skip * xt / a) / edm_c_out(sv),
        }[target]

    err = np.sum((target_of(x0 + delta) - target_of(x0)) ** 2) / np.sum(delta**2)
    assert err == pytest.approx(float(conversion_factor(p, target, t)), rel=1e-9)


def test_bad_names_and_grids():
    with pytest.raises(DifflensError, match="unknown process"):
        get_process("ddim")
    with pytest.raises(DifflensError, match="unknown target"):
        conversion_factor("edm", "noise", 0.5)
    for bad in ("0:1:4", "-1,2", "a:b:c", "", "1,nan"):
        with pytest.raises(DifflensError):
            parse_sigmas(bad)
    assert np.allclose(parse_sigmas("0.01:100:5"), [0.01, 0.1, 1, 10, 100])
