"""Optimal-loss estimators against closed forms, against each other, and across targets."""

import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from difflens import DifflensError
from difflens.analysis import optimal_loss as ol
from difflens.data import load
from difflens.diffusion import estimators
from difflens.diffusion.processes import TARGETS, conversion_factor, edm_c_out, get_process
from difflens.kernel import oracle
from reference import EPS32, Float64Engine


def curve(data, sigmas, **kw):
    return ol.optimal_loss_curve(data, np.asarray(sigmas, dtype=float), **kw)


def values(c, key="optimal_loss_x0"):
    return np.array([getattr(lv, key) for lv in c.levels])


def test_single_point_has_zero_optimal_loss():
    c = curve(np.array([[0.5, -0.2, 1.0]], dtype=np.float32), [0.01, 1.0, 100.0], samples=16)
    assert np.all(values(c) == 0.0)
    assert c.critical_sigma is None


def two_point_optimal_loss(a: float, b: float, s: float) -> float:
    """∫ p(x̃) w_a(x̃) w_b(x̃) (a − b)² dx̃ for x0 uniform on {a, b}, x̃ = x0 + s·ε (1-D)."""

    def integrand(x):
        pa, pb = stats.norm.pdf(x, a, s), stats.norm.pdf(x, b, s)
        p = 0.5 * (pa + pb)
        return 0.0 if p == 0 else p * (0.5 * pa / p) * (0.5 * pb / p) * (a - b) ** 2

    lo, hi = min(a, b) - 12 * s, max(a, b) + 12 * s
    return integrate.quad(integrand, lo, hi, points=[a, b, 0.5 * (a + b)], limit=200)[0]


@pytest.mark.parametrize("estimator", ["full", "snis", "dol"])
def test_two_points_in_1d_match_the_numerical_integral(estimator):
    data = np.array([[-0.4], [0.9]], dtype=np.float32)
    sigmas = [0.2, 0.5, 1.0, 3.0]
    c = curve(data, sigmas, samples=2000, estimator=estimator, subset=2, seed=1)
    for lv in c.levels:
        exact = two_point_optimal_loss(-0.4, 0.9, lv.sigma)
        assert abs(lv.optimal_loss_x0 - exact) < 4 * lv.stderr_x0 + 1e-4, (lv.sigma, lv.optimal_loss_x0, exact)


def test_gaussian_data_at_large_noise_is_analytic():
    v, d = 0.5, 2
    rng = np.random.default_rng(0)
    data = (math.sqrt(v) * rng.standard_normal((6000, d))).astype(np.float32)
    sigmas = [1.0, 2.0, 5.0]
    c = curve(data, sigmas, samples=1500, seed=3)
    emp_var = float(data.var(0).mean())  # the finite sample's variance replaces v
    for lv in c.levels:
        s2 = lv.sigma**2
        assert lv.optimal_loss_x0 == pytest.approx(emp_var * s2 / (emp_var + s2), rel=0.03)
        assert lv.optimal_loss_x0 == pytest.approx(v * s2 / (v + s2), rel=0.05)


def test_full_estimator_cross_check_and_plateau():
    ds = load("toy:gmm:n=300,k=4,dim=3,std=0.2")
    c = curve(ds, [0.01, 0.3, 1.0, 50.0], samples=600)
    for lv in c.levels:  # the paired Â − B̂ form has the same expectation as tr Cov
        assert abs(lv.paired_x0 - lv.optimal_loss_x0) < 5 * lv.stderr_x0 + 5e-3
    assert values(c)[0] < 1e-6  # memorisation regime
    assert values(c)[-1] == pytest.approx(ds.stats.variance, rel=0.02)  # plateau = data variance
    assert np.all(np.diff(values(c)) > 0)
    assert 0.01 < c.critical_sigma < 1.0


@pytest.mark.parametrize("process", ["ve", "vp", "vp-cosine", "edm", "fm"])
def test_every_target_is_the_x0_loss_times_its_factor(process):
    data = load("toy:circle:n=12")
    sig = [0.05, 0.3, 2.0]
    base = curve(data, sig, process=process, samples=32, seed=7)
    for target in TARGETS:
        c = curve(data, sig, process=process, target=target, samples=32, seed=7)
        ts = np.array([lv.t for lv in c.levels])
        r = conversion_factor(process, target, ts)
        assert np.allclose(values(c, "optimal_loss") / r, values(base), rtol=1e-10, atol=0)
        assert np.array_equal(values(c), values(base))  # same draws, same x0 loss
        assert np.allclose(get_process(process).s_of_t(ts), sig)


def test_results_are_deterministic_and_independent_of_chunk_size():
    data = load("toy:gmm:n=200,dim=4")
    sig = [0.1, 0.5, 2.0]
    a = curve(data, sig, samples=64, seed=5, chunk_size=7)
    assert np.array_equal(values(a), values(curve(data, sig, samples=64, seed=5, chunk_size=7)))  # deterministic
    f64 = Float64Engine()
    truth = values(curve(data, sig, samples=64, seed=5, engine=f64))
    # the logit error L moves each weight by ≤ L relatively, so tr Cov by ≤ 2L·tr Cov; its float32 moment sums
    # (Σp‖x‖² + P‖a‖² − 2a·Σpx, each ≤ R² per unit of weight) add ≤ 8·EPS32·R² per query, /dim per dimension
    tol = 2 * np.array([f64.level_error(s) for s in sig]) * truth + 8 * EPS32 * f64.spread**2 / data.dim
    for chunk in (7, 1000):  # any chunk size: within the float32 error of the float64 truth
        assert np.all(np.abs(values(curve(data, sig, samples=64, seed=5, chunk_size=chunk)) - truth) <= tol), chunk
    c = curve(data, sig, samples=64, seed=6)
    assert not np.allclose(values(a), values(c))


def test_dol_is_biased_low_and_cdol_moves_toward_snis_as_c_grows():
    data = load("toy:gmm:n=400,k=6,dim=4,std=0.3")
    sig = [0.2, 0.35, 0.6, 1.0]
    kw = dict(samples=800, seed=11, subset=16)
    full = values(curve(data, sig, **kw))
    dol = values(curve(data, sig, estimator="dol", **kw))
    assert np.all(dol < full)
    cdol = [values(curve(data, sig, estimator="cdol", C=C, **kw)).mean() for C in (1.0, 10.0, 100.0, 1e6)]
    assert cdol[0] == dol.mean()  # C = 1 is DOL, the same computation
    assert np.all(np.diff(cdol) > 0)
    snis = values(curve(data, sig, estimator="snis", **{**kw, "subset": 15})).mean()
    assert cdol[-1] == pytest.approx(snis, rel=0.1)  # C → ∞ is SNIS on L − 1 points


def test_subset_estimators_converge_to_full_as_l_reaches_n():
    data = load("toy:gmm:n=64,k=3,dim=3,std=0.3")
    sig = [0.15, 0.4, 1.0]
    kw = dict(samples=256, seed=2)
    f64 = Float64Engine()
    full = values(curve(data, sig, engine=f64, **kw), "paired_x0")  # the full estimator's value, in float64
    # paired = (‖x0‖² − ‖mean‖²)/dim: a float32 mean off by δ ≤ 2·L·R + 4·EPS32·(‖c‖ + R) moves it by
    # ≤ (2‖mean‖ + δ)·δ/dim, ‖mean‖ ≤ ‖c‖ + R (docs/method.md, "The kernel")
    size = float(data.rows(0, data.n).double().mean(0).norm()) + f64.spread
    delta = np.array([2 * f64.level_error(s) * f64.spread for s in sig]) + 4 * EPS32 * size
    tol = ((2 * size + delta) * delta / data.dim).max()
    snis_gap = [np.abs(values(curve(data, sig, estimator="snis", subset=L, **kw)) - full).mean() for L in (8, 32, 64)]
    assert snis_gap[-1] <= tol  # L = N: SNIS is the full posterior, up to float32 rounding
    assert snis_gap[0] > snis_gap[-1]
    # cDOL with C = (N−1)/(L−1), the inverse inclusion probability of the others, is exact at L = N
    cdol_gap = [
        np.abs(values(curve(data, sig, estimator="cdol", subset=L, C=63 / (L - 1), **kw)) - full).mean()
        for L in (8, 32, 64)
    ]
    assert cdol_gap[-1] <= tol
    assert cdol_gap[0] > cdol_gap[-1]


def test_weighted_total_matches_direct_integration():
    sig = np.geomspace(1e-3, 1e3, 200)
    j = 0.3 * sig**2 / (0.3 + sig**2)  # a smooth curve in x0 units
    quad = ol.recipe_quadrature("edm", get_process("edm"), "edm")  # EDM's F loss: λ = 1/c_out² on x0
    tot = ol.weighted_total(sig, j, np.full_like(j, 0.01), quad)

    def integrand(u):
        s = math.exp(u)
        return stats.norm.pdf(u, -1.2, 1.2) * 0.3 * s**2 / (0.3 + s**2) / edm_c_out(s) ** 2

    exact = integrate.quad(integrand, -1.2 - 6 * 1.2, -1.2 + 6 * 1.2, limit=200)[0]
    assert tot["value"] == pytest.approx(exact, rel=2e-3)
    assert tot["coverage"] == pytest.approx(1.0, abs=1e-5)
    assert 0 < tot["stderr"] < 0.01 * (quad[1] * quad[2]).sum()


def lognormal_average(f, lo: float, hi: float) -> float:
    """∫ f(s) over ln s ~ N(−1.2, 1.2²) (EDM's training levels), for s in [lo, hi]."""
    return integrate.quad(lambda u: stats.norm.pdf(u, -1.2, 1.2) * f(math.exp(u)), math.log(lo), math.log(hi))[0]


@pytest.fixture(scope="module")
def small():
    return load("toy:gmm:n=150,k=3,dim=3,std=0.2")


def test_vp_eps_total_is_in_eps_units_under_uniform_t_by_default(small):
    """The weighted total is in the units of the table (ε) and, with no recipe given, uses DDPM's uniform
    t for vp: Σ Δt · J*_ε(s(t)) with ᾱ(t) = exp(−0.1 t − 9.95 t²), s = √(1/ᾱ − 1) and J*_ε = J*_x0/s²."""
    sig = np.geomspace(0.02, 20.0, 9)
    c = curve(small, sig, process="vp", target="eps", samples=64, seed=1)
    assert c.recipe == "uniform-t"
    assert c.to_dict()["recipe"] == "uniform-t"
    assert np.allclose(values(c, "optimal_loss"), values(c) / sig**2, rtol=1e-9, atol=0)  # the table: ε units
    t = (np.arange(200_000) + 0.5) / 200_000
    s = np.sqrt(np.expm1(0.1 * t + 9.95 * t**2))
    inside = (s >= sig[0]) & (s <= sig[-1])
    j_eps = np.interp(np.log(s[inside]), np.log(sig), values(c)) / s[inside] ** 2
    total = c.total["uniform-t"]
    assert total["value"] == pytest.approx(j_eps.sum() / len(t), rel=1e-3)
    assert total["coverage"] == pytest.approx(inside.mean(), abs=1e-3)
    assert total["units"] == "eps units of vp, per dimension"
    # an explicit recipe is used as given, still in the table's units
    c = curve(small, sig, process="vp", target="eps", samples=64, seed=1, recipe="edm")
    j_eps = lambda s: np.interp(math.log(s), np.log(sig), values(c)) / s**2  # noqa: E731
    assert c.recipe == "edm"
    assert c.total["edm"]["value"] == pytest.approx(lognormal_average(j_eps, 0.02, 20), rel=1e-3)


def test_edm_x0_total_is_in_x0_units_under_the_edm_recipe_by_default(small):
    sig = np.geomspace(0.02, 20.0, 9)
    c = curve(small, sig, process="edm", target="x0", samples=64, seed=1)
    assert c.recipe == "edm"
    j_x0 = lambda s: np.interp(math.log(s), np.log(sig), values(c))  # noqa: E731
    assert c.total["edm"]["value"] == pytest.approx(lognormal_average(j_x0, 0.02, 20), rel=1e-3)
    assert c.total["edm"]["value"] < small.stats.variance  # an x0 loss never exceeds the data variance


@pytest.mark.parametrize(("process", "recipe"), [("vp", "uniform-t"), ("vp-cosine", "uniform-t"), ("fm", "uniform-t")])
def test_default_recipe_follows_the_process(process, recipe):
    assert ol.default_recipe(process) == recipe
    assert ol.default_recipe(get_process(process)) == recipe
    assert ol.default_recipe("edm") == ol.default_recipe("ve") == "edm"


def test_recipe_table_and_bad_recipes(tmp_path):
    table = tmp_path / "recipe.csv"
    table.write_text("sigma,p,weight\n0.5,1,2\n2.0,3,1\n")
    quad = ol.recipe_quadrature(str(table), get_process("edm"), "x0")
    tot = ol.weighted_total(np.array([0.1, 10.0]), np.array([1.0, 1.0]), np.zeros(2), quad)
    assert tot["value"] == pytest.approx(0.25 * 2 + 0.75 * 1)
    eps = ol.recipe_quadrature(str(table), get_process("edm"), "eps")  # weights apply to ε losses = x0 / s²
    tot = ol.weighted_total(np.array([0.1, 10.0]), np.array([1.0, 1.0]), np.zeros(2), eps)
    assert tot["value"] == pytest.approx(0.25 * 2 / 0.5**2 + 0.75 * 1 / 2.0**2)
    bad = tmp_path / "bad.csv"
    bad.write_text("sigma,prob\n1,1\n")
    with pytest.raises(DifflensError, match="sigma,p"):
        ol.recipe_quadrature(str(bad), get_process("edm"), "x0")
    with pytest.raises(DifflensError, match="unknown recipe"):
        ol.recipe_quadrature("ddpm-ish", get_process("edm"), "x0")


def test_critical_sigma_interpolates_in_log_space():
    s = np.array([0.1, 1.0, 10.0])
    assert ol.critical_sigma(s, [0.0, 0.02, 1.0], plateau=1.0) == pytest.approx(10**-0.5, rel=1e-9)
    assert ol.critical_sigma(s, [0.0, 0.0, 0.001], plateau=1.0) is None


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        (dict(estimator="magic"), "unknown estimator"),
        (dict(estimator="dol", subset=1), "subset"),
        (dict(estimator="snis", subset=999), "subset"),
        (dict(estimator="cdol", C=-1.0), "--C"),
        (dict(samples=1), "samples"),
        (dict(reduction="max"), "reduction"),
        (dict(target="noise"), "unknown target"),
        (dict(target_se=0.0), "target-se"),
        (dict(target_se=math.nan), "target-se"),
    ],
)
def test_bad_settings(kw, message):
    with pytest.raises(DifflensError, match=message):
        curve(np.random.default_rng(0).standard_normal((20, 2)).astype(np.float32), [1.0], **kw)


# ---------------------------------------------------------------- adaptive queries per level


def _old_level(data, sigma, samples, rng, precision="exact"):
    """A level as computed before adaptive queries existed: one draw of ``samples`` sources, their noise,
    one posterior call with the sources as hints, the mean of tr Cov / D and its standard error as the
    cluster formula with groups of one computed it (float64, √(M/(M−1)·Σ dev²)/M)."""
    src = estimators.sources_for_level(data.n, samples, rng)
    x0 = data.take(src)
    q = x0 + float(sigma) * torch.from_numpy(rng.standard_normal(x0.shape, dtype=np.float32))
    v = oracle.posterior(q, data, float(sigma), hint=src, precision=precision).trace_cov / data.dim
    dev = v - v.mean()
    return float(v.mean()), float(torch.sqrt(len(v) / (len(v) - 1) * (dev**2).sum()) / len(v))


@pytest.mark.parametrize("precision", ["exact", "fast"])
def test_without_a_target_every_level_is_bit_identical_to_one_fixed_batch(precision):
    ds = load("toy:gmm:n=300")
    sig = [0.05, 0.5, 5.0]
    c = curve(ds, sig, samples=48, seed=4, precision=precision)
    for i, (lv, s) in enumerate(zip(c.levels, sig, strict=True)):
        j, se = _old_level(ds, s, 48, estimators.level_rng(4, i), precision)
        assert (lv.optimal_loss_x0, lv.stderr_x0, lv.samples) == (j, se, 48)
    assert c.target_se is None


@pytest.mark.parametrize("estimator", ["full", "snis"])
def test_target_se_stops_each_level_at_its_precision_or_at_the_maximum(estimator):
    ds = load("digits")
    rel, most = 0.01, 512
    c = curve(ds, [0.1, 1.0, 3.0, 80.0], samples=most, seed=2, target_se=rel, estimator=estimator, subset=64)
    for lv in c.levels:
        assert 32 <= lv.samples <= most
        assert lv.stderr_x0 <= rel * lv.optimal_loss_x0 or lv.samples == most, lv
    assert c.target_se == rel
    assert c.samples == most
    again = curve(ds, [0.1, 1.0, 3.0, 80.0], samples=most, seed=2, target_se=rel, estimator=estimator, subset=64)
    assert again.levels == c.levels  # deterministic given the seed (each level its own stream)


def test_target_se_needs_few_queries_at_high_noise():
    """σ = 80 on digits: the posterior is spread over all points, tr Cov barely varies between queries,
    so 32 queries already give a relative s.e. far below 1e-3 while a low level needs more."""
    ds = load("digits")
    c = curve(ds, [0.5, 80.0], samples=1024, seed=0, target_se=1e-3)
    low, high = c.levels
    assert high.samples == 32
    assert high.stderr_x0 <= 1e-3 * high.optimal_loss_x0
    assert low.samples > high.samples
    # the 32 queries are the first 32 of the level's stratified draw: distinct sources
    src = estimators.sources_for_level(ds.n, 1024, estimators.level_rng(0, 1))
    assert len(np.unique(src[:32])) == 32


def test_cluster_stderr_with_unequal_groups_brute_force():
    y = torch.tensor([1.0, 2.0, 4.0, 0.5, 3.0, 3.5, 1.5])
    labels = torch.tensor([0, 0, 1, 1, 1, 2, 3])
    dev = y.double() - y.double().mean()
    sums = np.array([dev[:2].sum(), dev[2:5].sum(), dev[5], dev[6]])
    assert estimators.cluster_stderr(y, labels) == pytest.approx(math.sqrt(4 / 3 * (sums**2).sum()) / 7, rel=1e-12)
