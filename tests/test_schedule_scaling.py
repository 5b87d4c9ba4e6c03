"""Training schedules (weights, densities, KS tests of the samplers) and scaling-law fits
(recovery of known parameters from synthetic data)."""

import json
import math
import re

import numpy as np
import pytest
import torch
from scipy import stats

from difflens.analysis.scaling import fit_excess, fit_groups, fit_offset, fit_plain
from difflens.data import as_dataset
from difflens.diffusion import schedules as sched
from difflens.diffusion.precond import Parametrization
from difflens.diffusion.processes import get_process
from difflens.errors import DifflensError


def _schedule(**kw):
    optimal = np.geomspace(1e-4, 1.0, 12)
    kw = {"critical_sigma": 0.5, **kw}
    return sched.OptimalLossSchedule(optimal, sigma_min=0.01, sigma_max=50.0, **kw), optimal


def _paper_weight(s, optimal_x0, a, w_max, critical, mu, std):
    """a·min(1/J*_x0, w_max) + 𝒩(ln s; μ, ς²)·𝟙[s < s*], from scipy's normal density (float64)."""
    with np.errstate(divide="ignore"):
        return a * np.minimum(1 / optimal_x0, w_max) + stats.norm(mu, std).pdf(np.log(s)) * (s < critical)


def test_optimal_loss_weights_and_density_closed_form():
    s, optimal = _schedule(a=2.0, w_max=100.0, mix=0.2)
    c = s.centers
    want = _paper_weight(c, optimal, 2.0, 100.0, 0.5, math.log(0.5) - 0.5, 0.5)  # μ defaults to ln s* − ς
    assert np.allclose(s.weight(torch.as_tensor(c)).numpy(), want, rtol=1e-12, atol=0)
    assert np.allclose(s.loss_weight(torch.as_tensor(c)).numpy(), want, rtol=1e-12, atol=0)  # x0 training: r = 1
    assert (c < 0.5).any()
    assert (c > 0.5).any()
    assert s.bump_term(c[c > 0.5]).max() == 0.0
    assert np.allclose(s.probabilities(), 1 / 12)  # no model loss yet: uniform
    model = optimal * 1.5 + 0.01 * np.arange(12)
    s.set_model_loss(model)
    raw = want * (model - optimal)
    assert np.allclose(s.probabilities(), 0.8 * raw / raw.sum() + 0.2 / 12, rtol=1e-12)
    rows = s.table()
    assert len(rows) == 12
    assert math.isclose(sum(r["density"] for r in rows), 1.0)
    off, _ = _schedule(a=2.0, w_max=100.0, bump=False)
    assert np.allclose(off.weight(torch.as_tensor(c)).numpy(), 2.0 * np.minimum(1 / optimal, 100.0), rtol=1e-12)
    moved, _ = _schedule(a=2.0, w_max=100.0, bump_mu=math.log(0.1), bump_std=0.3)
    diff = moved.weight(torch.tensor([0.1, 40.0])).numpy() - off.weight(torch.tensor([0.1, 40.0])).numpy()
    assert np.isclose(diff[0], 1 / (0.3 * math.sqrt(2 * math.pi)))
    assert diff[1] == 0.0


def test_units_x0_and_target_weight_the_x0_loss_as_stated():
    """x0 units: the effective x0 weight is w_x0 whatever the target (the target loss is divided by r);
    target units (the earlier variant): w = a·min(1/(r·J*), w_max) on the target loss, r·w on the x0 loss."""
    param = Parametrization.of("vp", "eps")
    optimal = np.geomspace(1e-4, 1.0, 12)
    x0 = sched.OptimalLossSchedule(optimal, param=param, sigma_min=0.01, sigma_max=50.0, bump=False, a=2.0, w_max=50.0)
    tgt = sched.OptimalLossSchedule(
        optimal, param=param, units="target", sigma_min=0.01, sigma_max=50.0, bump=False, a=2.0, w_max=50.0
    )
    c = x0.centers
    r = param.factor(c)
    assert np.ptp(np.log(r)) > 5  # the conversion matters on this grid
    w_x0 = 2.0 * np.minimum(1 / optimal, 50.0)
    assert np.allclose(x0.weight(c).numpy(), w_x0, rtol=1e-12)
    assert np.allclose(x0.loss_weight(c).numpy() * r, w_x0, rtol=1e-12)
    w_t = 2.0 * np.minimum(1 / (r * optimal), 50.0)
    assert np.allclose(tgt.loss_weight(c).numpy(), w_t, rtol=1e-12)
    assert np.allclose(tgt.weight(c).numpy(), w_t * r, rtol=1e-12)
    model = optimal * 2 + 0.01
    for sc in (x0, tgt):
        sc.set_model_loss(model)  # x0-unit losses in, converted to the schedule's units
    raw_x0, raw_t = w_x0 * (model - optimal), w_t * r * (model - optimal)
    assert np.allclose(x0.probabilities(), 0.9 * raw_x0 / raw_x0.sum() + 0.1 / 12, rtol=1e-12)
    assert np.allclose(tgt.probabilities(), 0.9 * raw_t / raw_t.sum() + 0.1 / 12, rtol=1e-12)
    assert np.allclose([row["model_loss_x0"] for row in tgt.table()], model, rtol=1e-12)


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
    s2.set_model_loss(np.full(12, 2.0))  # fixed: a pilot's losses, then updates change nothing
    before = s2.probabilities()
    s2.update(torch.full((64,), 1.0), 100.0 * torch.ones(64))
    assert np.array_equal(s2.probabilities(), before)
    assert s2.params()["mode"] == "fixed"


def test_recipe_round_trip_and_checks(tmp_path):
    """A recipe file rebuilds the schedule; an x0-unit one serves another target, a target-unit one refuses."""
    edm, eps = Parametrization.of("edm", "edm"), Parametrization.of("edm", "eps")
    optimal = np.geomspace(1e-4, 1.0, 12)
    for units in ("x0", "target"):
        s = sched.OptimalLossSchedule(optimal, param=edm, units=units, critical_sigma=0.5, sigma_min=0.01)
        s.set_model_loss(optimal * 3 + 1e-3)
        path = tmp_path / f"{units}.json"
        path.write_text(json.dumps({**s.recipe(), "data": {"hash": "abc", "spec": "x", "n": 1}}))
        back = sched.load_recipe(path, edm)
        assert np.allclose(back.probabilities(), s.probabilities(), rtol=1e-12)
        assert back.fixed
        sig = torch.tensor([0.02, 0.3, 7.0])
        assert np.allclose(back.loss_weight(sig).numpy(), s.loss_weight(sig).numpy(), rtol=1e-12)
    other = sched.load_recipe(tmp_path / "x0.json", eps)
    x0_back = sched.load_recipe(tmp_path / "x0.json", edm)
    assert np.allclose(other.weight(sig).numpy(), x0_back.weight(sig).numpy(), rtol=1e-12)  # same x0 weights
    assert np.allclose(other.loss_weight(sig).numpy() * eps.factor(sig.numpy()), other.weight(sig).numpy())
    with pytest.raises(DifflensError, match="cannot weight"):
        sched.load_recipe(tmp_path / "target.json", eps)
    with pytest.raises(DifflensError, match="other data"):
        sched.load_recipe(tmp_path / "x0.json", edm, as_dataset(np.zeros((4, 2), np.float32)))
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(DifflensError, match="not a schedule recipe"):
        sched.load_recipe(tmp_path / "bad.json", edm)


@pytest.mark.parametrize("mix", [0.0, 0.3])
def test_optimal_loss_sampler_ks(mix):
    """The sampler draws from the density it states (KS on the piecewise-linear CDF in ln σ)."""
    s, optimal = _schedule(mix=mix)
    s.set_model_loss(optimal + np.linspace(0.0, 0.5, 12) ** 2 + 1e-3)
    draws = s.sample(20000, torch.Generator().manual_seed(1)).numpy()
    assert stats.kstest(draws, s.cdf).pvalue > 1e-3
    shifted, _ = _schedule(mix=mix)
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
    with pytest.raises(DifflensError, match="critical"):
        sched.OptimalLossSchedule([1.0, 2.0])  # the critical-σ term needs s*
    with pytest.raises(DifflensError, match="units"):
        sched.OptimalLossSchedule([1.0, 2.0], bump=False, units="F")
    with pytest.raises(DifflensError, match="no critical"):  # J* far below the data's variance everywhere
        sched.OptimalLossSchedule.from_data(np.eye(3, 8, dtype=np.float32) * 100, bins=2, sigma_max=0.1, samples=4)
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


@pytest.fixture(scope="module")
def pilot(tmp_path_factory):
    """A tiny pilot run on digits and its fixed x0-unit schedule.json (`difflens schedule --model RUN`)."""
    from typer.testing import CliRunner

    from difflens.cli import app
    from difflens.models.train import TrainConfig, train

    root = tmp_path_factory.mktemp("pilot")
    train(TrainConfig(width=16, depth=1, steps=30, batch=32, log_every=30, ckpt_every=30), root / "run", threads=1)
    args = ["schedule", "--model", root / "run", "--holdout", 0.1, "--bins", 8, "--queries-per-level", 64]
    res = CliRunner().invoke(app, [str(a) for a in [*args, "--images", 64, "--out", root / "s"]])
    assert res.exit_code == 0, res.output
    return root, json.loads((root / "s" / "schedule.json").read_text())


def test_schedule_json_weight_and_density_are_the_papers(pilot):
    """Every level: weight = a·min(1/J*_x0, w_max) + 𝒩(ln σ; μ, ς²)·𝟙[σ < σ*] to 1e-9 relative, and density ∝
    weight·max(J_θ − J*, 0) mixed with the uniform floor."""
    root, rec = pilot
    p, levels = rec["params"], rec["levels"]
    assert p["units"] == "x0"
    assert p["mode"] == "fixed"
    assert p["bump"]
    assert len(levels) == 8
    assert math.isclose(p["bump_mu"], math.log(p["critical_sigma"]) - p["bump_std"], rel_tol=1e-12)
    s = np.array([lv["sigma"] for lv in levels])
    j = np.array([lv["optimal_loss_x0"] for lv in levels])
    want = _paper_weight(s, j, p["a"], p["w_max"], p["critical_sigma"], p["bump_mu"], p["bump_std"])
    got = np.array([lv["weight"] for lv in levels])
    assert np.all(np.abs(got / want - 1) < 1e-9)
    assert (s < p["critical_sigma"]).any()
    assert (s > p["critical_sigma"]).any()
    model = np.array([lv["model_loss_x0"] for lv in levels])
    assert np.all(np.isfinite(model))
    assert (model > j).any()
    raw = want * np.maximum(model - j, 0.0)
    expect = (1 - p["mix"]) * raw / raw.sum() + p["mix"] / len(levels)
    assert np.allclose([lv["density"] for lv in levels], expect, rtol=1e-9, atol=0)
    assert (root / "s" / "schedule.png").stat().st_size > 0


def test_x0_schedule_puts_the_same_x0_weight_on_eps_and_edm_targets(pilot):
    """The same tiny model trained on the eps and on the edm target with one fixed x0-unit recipe: the same σ
    draws, and per level the same effective weight on the x0 loss, measured by the trainer as
    multiplier × target loss / x0 loss (the x0 loss from the output converted to x0). Float32 output and
    target give each per-sample loss a relative error ~eps32·√D ≈ 1e-6, so 1e-4 is a wide bound; the target
    losses themselves differ by orders of magnitude."""
    from difflens.models.train import TrainConfig, train

    root, _ = pilot
    recipe = str(root / "s" / "schedule.json")
    levels = {}
    for target in ("eps", "edm"):
        cfg = TrainConfig(target=target, schedule=recipe, width=16, depth=1, steps=40, batch=64, log_every=40)
        train(cfg, root / target, threads=1)
        rows = json.loads((root / target / "metrics.jsonl").read_text().splitlines()[-1])["levels"]
        levels[target] = {r["sigma"]: r for r in rows}
    assert levels["eps"].keys() == levels["edm"].keys()
    assert len(levels["eps"]) > 10
    assert [r["count"] for r in levels["eps"].values()] == [r["count"] for r in levels["edm"].values()]
    schedule = sched.load_recipe(recipe, Parametrization.of("edm", "edm"))
    ratio = []
    for sigma, e in levels["eps"].items():
        d = levels["edm"][sigma]
        assert math.isclose(e["weight_x0"], d["weight_x0"], rel_tol=1e-4)
        half = 0.5 * (math.log(80.0) - math.log(0.002)) / 32  # the log's bin around sigma
        w = schedule.weight(np.exp(np.linspace(math.log(sigma) - half, math.log(sigma) + half, 201))).numpy()
        assert w.min() * (1 - 1e-4) <= e["weight_x0"] <= w.max() * (1 + 1e-4)  # it is w_x0 of the bin
        ratio.append(e["loss"] / d["loss"])
    assert max(ratio) / min(ratio) > 100  # target-unit losses differ by orders of magnitude across levels
