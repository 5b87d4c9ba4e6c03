"""Training schedules (weights, densities, KS tests of the samplers) and scaling-law fits
(recovery of known parameters from synthetic data)."""

import math
import re

import numpy as np
import pytest
import torch
from scipy import stats

from difflens.analysis.scaling import fit_excess, fit_groups, fit_offset, fit_plain
from difflens.diffusion import schedules as sched
from difflens.diffusion.processes import get_process
from difflens.errors import DifflensError


def _schedule(**kw):
    optimal = np.geomspace(1e-4, 1.0, 12)
    return sched.OptimalLossSchedule(optimal, sigma_min=0.01, sigma_max=50.0, **kw), optimal


def test_optimal_loss_weights_and_density_closed_form():
    s, optimal = _schedule(a=2.0, w_max=100.0, mix=0.2)
    assert np.allclose(s.weight(torch.as_tensor(s.centers)).numpy(), 2.0 * np.minimum(1 / optimal, 100.0))
    assert np.allclose(s.probabilities(), 1 / 12)  # no model loss yet: uniform
    model = optimal * 1.5 + 0.01 * np.arange(12)
    s.set_model_loss(model)
    raw = 2.0 * np.minimum(1 / optimal, 100.0) * (model - optimal)
    assert np.allclose(s.probabilities(), 0.8 * raw / raw.sum() + 0.2 / 12)
    rows = s.table()
    assert len(rows) == 12
    assert math.isclose(sum(r["p"] for r in rows), 1.0)
    bumped, _ = _schedule(a=2.0, w_max=100.0, bump=3.0, bump_center=0.1, bump_width=0.3)
    diff = (bumped.weight(torch.tensor([0.1, 40.0])) - s.weight(torch.tensor([0.1, 40.0]))).numpy()
    assert np.isclose(diff[0], 2.0 * 3.0)
    assert abs(diff[1]) < 1e-6  # a·bump at the centre, none far away


def test_running_estimate_follows_losses():
    s, _optimal = _schedule(decay=0.9, warmup=4)
    gen = torch.Generator().manual_seed(0)
    for _ in range(60):
        sig = s.sample(512, gen)
        s.update(sig, 3.0 * torch.ones(512))
    assert np.allclose(s.model_loss, 3.0)
    assert s.counts.min() >= 4
    state = s.state_dict()
    s2, _ = _schedule()
    s2.load_state_dict(state)
    assert np.allclose(s2.probabilities(), s.probabilities())


@pytest.mark.parametrize("mix", [0.0, 0.3])
def test_optimal_loss_sampler_ks(mix):
    """The sampler draws from the density it states (KS on the piecewise-linear CDF in ln σ)."""
    s, optimal = _schedule(mix=mix)
    s.set_model_loss(optimal + np.linspace(0.0, 0.5, 12) ** 2 + 1e-3)
    draws = s.sample(20000, torch.Generator().manual_seed(1)).numpy()
    assert stats.kstest(draws, s.cdf).pvalue > 1e-3
    shifted = sched.OptimalLossSchedule(optimal, sigma_min=0.01, sigma_max=50.0, mix=mix)
    shifted.set_model_loss(optimal + np.linspace(0.5, 0.0, 12) ** 2 + 1e-3)
    assert stats.kstest(draws, shifted.cdf).pvalue < 1e-6  # the test can fail


def test_fixed_schedules_ks():
    gen = torch.Generator().manual_seed(2)
    ln = np.log(sched.LogNormal().sample(20000, gen).numpy())
    assert stats.kstest(ln, stats.norm(-1.2, 1.2).cdf).pvalue > 1e-3
    proc = get_process("vp")
    t = proc.t_of_s(sched.UniformT(proc, t_min=0.01).sample(20000, gen).numpy())
    assert stats.kstest(t, stats.uniform(0.01, 0.99).cdf).pvalue > 1e-3
    _s, mass, weight = sched.LogNormal().quadrature()
    assert np.all(weight == 1.0)
    assert math.isclose(mass.sum(), 1.0, rel_tol=1e-6)


def test_schedule_errors():
    with pytest.raises(DifflensError):
        sched.OptimalLossSchedule([1.0])
    with pytest.raises(DifflensError, match="bump"):
        sched.OptimalLossSchedule([1.0, 2.0], bump=1.0)
    with pytest.raises(DifflensError):
        sched.from_description({"name": "cosine"}, get_process("edm"))


def _synthetic(alpha=-0.35, beta=4.0, e=0.2, n=10, noise=0.01, seed=0):
    rng = np.random.default_rng(seed)
    c = np.geomspace(1e3, 1e8, n)
    return c, e + beta * c**alpha * np.exp(noise * rng.standard_normal(n))


def test_plain_fit_recovers_known_law():
    c, j = _synthetic(e=0.0)
    fit = fit_plain(c, j)
    assert abs(fit.alpha + 0.35) < 0.01
    assert abs(fit.beta / 4.0 - 1) < 0.1
    assert fit.alpha_ci[0] < -0.35 < fit.alpha_ci[1]
    assert fit.r2 > 0.999
    assert fit.corr < -0.999


def test_excess_fit_straightens_and_offset_fit_finds_the_floor():
    c, j = _synthetic(e=0.2)
    plain, excess, offset = fit_plain(c, j), fit_excess(c, j, 0.2), fit_offset(c, j)
    assert abs(excess.alpha + 0.35) < 0.01
    assert excess.alpha_ci[0] < -0.35 < excess.alpha_ci[1]
    assert abs(offset.offset - 0.2) < 0.01
    assert offset.offset_ci[0] < 0.2 < offset.offset_ci[1]
    assert abs(offset.alpha + 0.35) < 0.03
    assert abs(offset.beta / 4.0 - 1) < 0.3
    assert abs(excess.corr) > abs(plain.corr)
    assert excess.r2 > plain.r2
    assert np.allclose(excess.predict(c), j, rtol=0.05)


def test_fit_groups_and_errors():
    c, j = _synthetic(e=0.1)
    rows = [{"x": x, "loss": y, "sigma": 1.0} for x, y in zip(c, j, strict=True)]
    rows += [{"x": x, "loss": 2 * y, "sigma": 2.0} for x, y in zip(c, j, strict=True)]
    groups = fit_groups(rows, lambda s: {1.0: 0.1, 2.0: 0.2}[s])
    assert [g["sigma"] for g in groups] == [1.0, 2.0]
    assert all(abs(g["fits"]["excess"]["alpha"] + 0.35) < 0.01 for g in groups)
    too_big = fit_groups(rows[:10], lambda s: 1.0)  # J* above the losses: excess fit refused, others kept
    assert "excess" in too_big[0]["errors"]
    assert "plain" in too_big[0]["fits"]
    with pytest.raises(DifflensError, match="at least 3"):
        fit_plain([1.0, 2.0], [1.0, 0.5])
    with pytest.raises(DifflensError, match="> 0"):
        fit_plain([1.0, 2.0, 0.0], [1.0, 0.5, 0.2])


def test_offset_fit_on_flat_noisy_losses_does_not_crash():
    """Losses that do not depend on C (an MLP width family at σ = 5 on digits, which once overflowed
    the interval of β): the fits complete and report a weak correlation."""
    c = np.array([2096.0, 4896.0, 12800.0, 37824.0, 124736.0, 446016.0])
    j = np.array([0.286433, 0.285386, 0.29321, 0.28778, 0.285413, 0.283832])
    groups = fit_groups([{"x": x, "loss": y} for x, y in zip(c, j, strict=True)], lambda s: 0.2765)
    fits = groups[0]["fits"]
    assert set(fits) == {"plain", "offset", "excess"}
    assert abs(fits["plain"]["corr"]) < 0.9
    assert abs(fits["excess"]["corr"]) < 0.9


def test_plot_fits_draws_every_group_or_names_those_left_out(monkeypatch, tmp_path):
    """Thirteen groups: thirteen panels (none silently dropped); beyond MAX_PANELS, a line says which not."""
    from difflens.analysis import scaling

    figs = []
    monkeypatch.setattr(scaling, "save_figure", lambda fig, path: figs.append(fig))
    c = np.geomspace(1e3, 1e6, 5)

    def groups(n):
        rows = [{"x": x, "loss": 0.1 * s + x**-0.5, "sigma": s, "optimal": 0.1 * s} for s in range(1, n) for x in c]
        return fit_groups(rows + [{"x": x, "loss": 1 + x**-0.5, "optimal": 1.0} for x in c])

    assert scaling.plot_fits(groups(13), tmp_path / "a.png", "params") == []
    titles = [ax.get_title() for ax in figs[0].axes if ax.get_title()]
    assert len(titles) == 13
    assert titles[0] == "total"
    assert titles[-1] == "σ = 12"
    left = scaling.plot_fits(groups(30), tmp_path / "b.png", "params")
    drawn = [ax.get_title() for ax in figs[1].axes if ax.get_title()]
    assert len(drawn) == scaling.MAX_PANELS
    assert len(left) == 30 - scaling.MAX_PANELS
    assert drawn[0] == "total"
    assert drawn[-1] == "σ = 29"
    note = " ".join(t.get_text() for t in figs[1].texts)
    assert f"{len(left)} of 30 groups not drawn" in note
    assert "scaling.json" in note
    assert sorted(float(v) for v in re.findall(r"σ=([\d.]+)", note)) == [g["sigma"] for g in left]
