"""Zhou, Zhang & Wright's method (docs/method.md, "Smoothing"): the Eq. 10 target against a float64 brute
force, its identity with the continuum p_MN score, the L_u (Eq. 9) optimum, and the paper's samplers."""

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from difflens.analysis import smoothing
from difflens.cli import app
from difflens.data import as_dataset
from difflens.diffusion import samplers
from difflens.errors import DifflensError
from difflens.models import load_denoiser
from difflens.models import train as train_mod

runner = CliRunner()


def eq10_brute(x, src, data, sigma, collapse, k, feature=None):
    """Eq. 10 written out in float64 numpy: neighbours of the source, best shells, softmax(f/T)."""
    x, data = np.asarray(x, np.float64), np.asarray(data, np.float64)
    d = data.shape[1]
    feats = data if feature is None else np.asarray(feature(torch.from_numpy(data)).double())
    t = 1.0 if collapse is None else max(collapse / sigma, 1.0)
    out = np.empty_like(x)
    for b, s in enumerate(src):
        nbr = np.argsort(np.linalg.norm(feats - feats[s], axis=1), kind="stable")[:k]
        diff = x[b] - data[nbr]
        shell = np.linalg.norm(diff, axis=1) / np.sqrt(d)  # σ*_j
        f = -(d - 2) * np.log(shell) - (diff**2).sum(1) / (2 * shell**2)
        g = f / t
        w = np.exp(g - g.max())
        w /= w.sum()
        out[b] = (w[:, None] * (-diff / shell[:, None] ** 2)).sum(0)
    return out


@pytest.fixture(scope="module")
def problem(tmp_path_factory):
    rng = np.random.default_rng(3)
    data = rng.normal(size=(24, 7)).astype(np.float32)
    src = np.array([0, 5, 5, 11, 23, 17])
    sigma = 0.8
    x = data[src].astype(np.float64) + sigma * rng.normal(size=(len(src), 7))
    where = tmp_path_factory.mktemp("eq10")
    np.save(where / "data.npy", data)
    np.save(where / "q.npy", x)
    np.save(where / "s.npy", src)
    return data, src, sigma, x, where


def _rel(a, b):
    return np.max(np.abs(a - b)) / np.max(np.abs(b))


@pytest.mark.parametrize(("collapse", "k"), [(None, None), (4.0, None), (4.0, 5), (0.5, 3)])
def test_smooth_score_cli_equals_float64_brute_force(problem, collapse, k):
    data, src, sigma, x, where = problem
    args = ["smooth", "score", "--data", where / "data.npy", "--queries", where / "q.npy", "--sources"]
    args += [where / "s.npy", "--sigma", sigma, "--out", where / "out.npy"]
    args += (["--collapse", collapse] if collapse else []) + (["--k", k] if k else [])
    res = runner.invoke(app, [str(a) for a in args])
    assert res.exit_code == 0, res.output
    got = np.load(where / "out.npy")
    assert got.dtype == np.float64
    assert got.shape == x.shape
    assert _rel(got, eq10_brute(x, src, data, sigma, collapse, k or len(data))) < 1e-6


def eq10_official_brute(x, src, data, sigma, k):
    """The authors' code's Eq. 10 (losses.py, compute_explicit_score) in float64 numpy: log-weights
    −(D/(2T))·ln(r²/D) with T = √D, components −(x − μ_j)/σ² at the training level σ."""
    x, data = np.asarray(x, np.float64), np.asarray(data, np.float64)
    d = data.shape[1]
    out = np.empty_like(x)
    for b, s in enumerate(src):
        nbr = np.argsort(np.linalg.norm(data - data[s], axis=1), kind="stable")[:k]
        diff = x[b] - data[nbr]
        g = -d / (2 * np.sqrt(d)) * np.log((diff**2).sum(1) / d)
        w = np.exp(g - g.max())
        w /= w.sum()
        out[b] = (w[:, None] * (-diff / sigma**2)).sum(0)
    return out


@pytest.mark.parametrize("k", [None, 5, 1])
def test_smooth_score_official_form_equals_float64_brute_force(problem, k):
    data, src, sigma, x, where = problem
    args = ["smooth", "score", "--data", where / "data.npy", "--queries", where / "q.npy", "--sources"]
    args += [where / "s.npy", "--sigma", sigma, "--form", "official", "--out", where / "off.npy"]
    res = runner.invoke(app, [str(a) for a in args + (["--k", k] if k else [])])
    assert res.exit_code == 0, res.output
    got = np.load(where / "off.npy")
    assert _rel(got, eq10_official_brute(x, src, data, sigma, k or len(data))) < 1e-6
    paper = eq10_brute(x, src, data, sigma, None, k or len(data))
    assert _rel(got, paper) > 0.1  # the two forms really differ
    if k == 1:  # the released default K = 1: the source alone, i.e. the plain L_u target −(x − μ)/σ²
        assert _rel(got, -(x - data[src]) / sigma**2) < 1e-6


def test_official_form_ignores_collapse_and_rejects_it_on_the_cli(problem):
    data, src, sigma, x, where = problem
    plain = smoothing.TemperatureScore(data, None, 5, form="official")(x, src, sigma).numpy()
    cold = smoothing.TemperatureScore(data, 4.0, 5, form="official")(x, src, sigma).numpy()
    np.testing.assert_array_equal(plain, cold)
    args = ["smooth", "score", "--data", where / "data.npy", "--queries", where / "q.npy", "--sources"]
    args += [where / "s.npy", "--sigma", sigma, "--form", "official", "--collapse", 4, "--out", where / "x.npy"]
    res = runner.invoke(app, [str(a) for a in args])
    assert res.exit_code == 2
    assert "fixed temperature" in res.output
    with pytest.raises(DifflensError, match=r"unknown Eq\. 10 form"):
        smoothing.TemperatureScore(data, form="song")


def test_neighbours_are_the_sources_not_the_querys(problem):
    data, src, sigma, x, _ = problem
    got = smoothing.TemperatureScore(data, 4.0, 3)(x, src, sigma).numpy()
    assert _rel(got, eq10_brute(x, src, data, sigma, 4.0, 3)) < 1e-6
    # the same sum over each query's own 3 nearest points is a different target (so the test can fail)
    own = np.argsort(np.linalg.norm(x[:, None] - data[None].astype(np.float64), axis=2), axis=1)[:, 0]
    assert not np.array_equal(own, src)
    assert _rel(got, eq10_brute(x, own, data, sigma, 4.0, 3)) > 1e-3


def test_feature_space_neighbours(problem):
    data, src, sigma, x, _ = problem

    def first_two(v):
        return v[:, :2]

    got = smoothing.TemperatureScore(data, 4.0, 4, feature=first_two)(x, src, sigma).numpy()
    assert _rel(got, eq10_brute(x, src, data, sigma, 4.0, 4, feature=first_two)) < 1e-6
    assert _rel(got, eq10_brute(x, src, data, sigma, 4.0, 4)) > 1e-3


def test_temperature_is_one_at_and_above_collapse(problem):
    data, src, _, x, _ = problem
    plain = smoothing.TemperatureScore(data)
    cold = smoothing.TemperatureScore(data, collapse_sigma=0.8)
    np.testing.assert_array_equal(
        cold.temperature_at(torch.tensor([0.2, 0.8, 3.0], dtype=torch.float64)).numpy(), [4.0, 1.0, 1.0]
    )
    for s in (0.8, 3.0):
        np.testing.assert_array_equal(cold(x, src, s).numpy(), plain(x, src, s).numpy())
    assert _rel(cold(x, src, 0.2).numpy(), plain(x, src, 0.2).numpy()) > 1e-3


def test_eq10_at_unit_temperature_is_the_continuum_p_mn_score():
    """With T = 1 and K = N, softmax_j(f_j) is exactly the posterior over j of p_MN with log-uniform levels
    σ ∈ (0, ∞) (∫ σ^(2−D)·e^(−r²/2σ²) dσ/σ ∝ r^(2−D)), whose score is −(D−2)·Σ_j w_j (x − x_j)/r_j². Eq. 10
    uses σ*_j² = r_j²/D instead of the maximiser r_j²/(D−2), so it is that score times D/(D−2) exactly."""
    rng = np.random.default_rng(0)
    d = 6
    data = rng.uniform(-1, 1, (5, d)).astype(np.float32)
    x = data[[0, 2, 4, 1]].astype(np.float64) + rng.normal(0, 0.4, (4, d))
    eq10 = smoothing.TemperatureScore(data)(x, np.array([0, 2, 4, 1]), 1.0).numpy()
    levels = np.geomspace(1e-4, 1e5, 6000)  # uniform in ln σ: the continuum as a trapezoid sum
    diff = x[:, None, :] - data[None].astype(np.float64)  # (B, N, D)
    r2 = (diff**2).sum(-1)
    logit = -(d - 2) * np.log(levels)[None, :, None] - r2[:, None, :] / (2 * levels[None, :, None] ** 2)
    w = np.exp(logit - logit.max(axis=(1, 2), keepdims=True))
    w /= w.sum(axis=(1, 2), keepdims=True)  # (B, L, N)
    p_mn = -np.einsum("bln,bnd->bd", w / levels[None, :, None] ** 2, diff)
    assert _rel(eq10 * (d - 2) / d, p_mn) < 1e-6
    assert _rel(eq10, p_mn) > 0.1  # the factor D/(D−2) = 1.5 is real
    # the library's p_MN (float32 kernel logits, float64 level merge) on the same levels agrees
    lib = smoothing.UnconditionedMixture(data, levels[::20]).score(torch.from_numpy(x)).numpy()
    assert _rel(lib, p_mn) < 1e-4


def test_bad_sources_are_one_line_errors(problem):
    data, src, sigma, x, where = problem
    score = smoothing.TemperatureScore(data, 1.0, 3)
    with pytest.raises(DifflensError, match="source indices"):
        score(x[:1], np.array([24]), sigma)
    with pytest.raises(DifflensError, match="one source per query"):
        score(x, src[:2], sigma)
    with pytest.raises(DifflensError, match="coincides"):
        score(data[:1], np.array([0]), sigma)
    np.save(where / "bad.npy", src.astype(np.float64))
    args = ["smooth", "score", "--data", where / "data.npy", "--queries", where / "q.npy", "--sources"]
    res = runner.invoke(app, [str(a) for a in [*args, where / "bad.npy", "--sigma", 1, "--out", where / "o.npy"]])
    assert res.exit_code == 2
    assert "integer indices" in res.output


def gaussian_denoiser(v):
    """Exact denoiser of N(0, v·I) data: D(x, s) = v/(v + s²)·x, so score(x, s) = −x/(v + s²)."""
    return lambda x, s: v / (v + s * s) * x


def test_song_pc_step_matches_the_official_update_by_hand():
    v, s, s_next, snr = 0.7, 2.0, 1.5, 0.16
    x0 = torch.from_numpy(np.random.default_rng(0).normal(0, 2.0, (3, 5)))
    got = samplers.sample(gaussian_denoiser(v), x0, torch.tensor([s, s_next, 0.0]), method="pc-song", seed=4)
    # by hand, with the sampler's noise stream: corrector z1, predictor z2, then at s_next corrector z3
    gen = samplers.seeded_generator(4, 1)
    z1, z2, z3 = (torch.randn(3, 5, generator=gen, dtype=torch.float64).numpy() for _ in range(3))
    x = x0.numpy()

    def corrector(x, z, level):
        g = -x / (v + level**2)
        eps = 2 * (snr * np.linalg.norm(z, axis=1).mean() / np.linalg.norm(g, axis=1).mean()) ** 2
        return x + eps * g + np.sqrt(2 * eps) * z

    x = corrector(x, z1, s)
    x = x - (s**2 - s_next**2) * x / (v + s**2) + np.sqrt(s**2 - s_next**2) * z2
    x = corrector(x, z3, s_next)
    x = x - s_next**2 * x / (v + s_next**2)  # the last predictor returns its noise-free mean
    np.testing.assert_allclose(got.samples.numpy(), x, rtol=1e-12, atol=1e-12)


def test_geometric_grid_and_sigma_star_step():
    sig = samplers.geometric_sigmas()
    assert len(sig) == 1001
    assert sig[0] == 50.0
    assert abs(float(sig[-2]) - 0.01) < 1e-15
    assert sig[-1] == 0
    np.testing.assert_allclose(np.diff(np.log(sig[:-1].numpy())), np.log(0.01 / 50) / 999)
    # one training point, D = 7: the p_MN/Eq. 10 score −D·(x − μ)/‖x − μ‖² moves a fraction α to μ
    mu = torch.linspace(-1, 1, 7).double()  # float32 values: the training rows are float32
    score = smoothing.TemperatureScore(mu[None].float())

    def den(x, s):
        return x + s * s * score(x, np.zeros(len(x), dtype=np.int64), s)

    x = mu + torch.from_numpy(np.random.default_rng(1).normal(0, 0.5, (4, 7)))
    out = samplers.sample(den, x, torch.tensor([3.0, 1.0, 0.0]), method="sigma-star", alpha=0.25).samples
    np.testing.assert_allclose(out.numpy(), (mu + 0.75**2 * (x - mu)).numpy(), rtol=1e-12, atol=1e-12)


TRI = np.array([[1.0, 0.0], [-0.5, 0.8], [-0.5, -0.8]], np.float32)


def test_unconditioned_loss_reaches_the_p_mn_score(tmp_path):
    """L_u (Eq. 9) on 3 points in 2-D: the trained σ-blind score net is within 5 % (σ²-weighted relative
    mean-square error, measured 1.9 %) of the exact p_MN score over the training levels, where the
    per-sample conditional score, the regression's target, is 180 % off."""
    np.save(tmp_path / "tri.npy", TRI)
    cfg = train_mod.TrainConfig(
        data=str(tmp_path / "tri.npy"), holdout=0, loss="unconditioned", levels=64, level_min=0.1, level_max=3.0,
        steps=600, batch=128, width=64, lr=2e-3, ckpt_every=10**6, log_every=600,
    )  # fmt: skip
    summary = train_mod.train(cfg, tmp_path / "run", threads=1)
    assert summary["param"] == {"process": "ve", "target": "score", "time_scale": 1.0, "noise_conditioned": False}
    den = load_denoiser(str(tmp_path / "run")).denoiser
    g = torch.Generator().manual_seed(5)
    levels = train_mod.GeometricLevels(0.1, 3.0, 64).levels
    i, s = torch.randint(0, 3, (4000,), generator=g), levels[torch.randint(0, 64, (4000,), generator=g)]
    mu = torch.from_numpy(TRI).double()[i]
    x = mu + s[:, None] * torch.randn(4000, 2, generator=g, dtype=torch.float64)
    with torch.no_grad():
        net = (den(x.float(), s).double() - x) / s[:, None] ** 2
    ref = smoothing.UnconditionedMixture(TRI, levels.numpy()).score(x)

    def rel(a):
        return float((s**2 * ((a - ref) ** 2).sum(1)).mean() / (s**2 * (ref**2).sum(1)).mean())

    assert rel(net) < 0.05
    assert rel(-(x - mu) / s[:, None] ** 2) > 1.0


def test_smoothed_loss_targets_switch_at_collapse():
    data = np.random.default_rng(2).normal(size=(12, 5)).astype(np.float32)
    cfg = train_mod.TrainConfig(loss="smoothed", collapse=0.5, k=4)
    loss = train_mod.SmoothedLoss(cfg, as_dataset(data), torch.device("cpu"))
    idx = torch.tensor([0, 3, 3, 7])
    s = torch.tensor([0.1, 0.5, 0.9, 2.0], dtype=torch.float64)
    x0 = torch.from_numpy(data)[idx]
    x = x0 + s[:, None].float() * torch.randn(4, 5, generator=torch.Generator().manual_seed(0))
    y = loss.target(x0, idx, x, s).double()
    for b in range(2):
        ref = eq10_brute(x.numpy()[b : b + 1], idx.numpy()[b : b + 1], data, float(s[b]), 0.5, 4)
        assert _rel(y[b : b + 1].numpy(), ref) < 1e-6
    cond = (-(x.double() - x0.double()) / s[:, None] ** 2).numpy()
    assert _rel(y[2:].numpy(), cond[2:]) < 1e-6
    assert _rel(y[:2].numpy(), cond[:2]) > 1e-2  # below σ_collapse the target really changed
    official = train_mod.SmoothedLoss(
        train_mod.TrainConfig(loss="smoothed", collapse=0.5, k=4, smoothed_form="official"),
        as_dataset(data),
        torch.device("cpu"),
    )
    y = official.target(x0, idx, x, s).double()
    for b in range(2):
        ref = eq10_official_brute(x.numpy()[b : b + 1], idx.numpy()[b : b + 1], data, float(s[b]), 4)
        assert _rel(y[b : b + 1].numpy(), ref) < 1e-6
    assert _rel(y[2:].numpy(), cond[2:]) < 1e-6


@pytest.mark.parametrize(
    ("flags", "match"),
    [
        ({"loss": "smoothed"}, "--collapse"),
        ({"loss": "unconditioned", "collapse": 1.0}, "belong to --loss smoothed"),
        ({"loss": "unconditioned", "target": "x0"}, "--target"),
        ({"loss": "unconditioned", "level_min": 2.0, "level_max": 1.0}, "level_min"),
        ({"loss": "nope"}, "unknown loss"),
        ({"loss": "unconditioned", "smoothed_form": "official"}, "belong to --loss smoothed"),
        ({"loss": "smoothed", "collapse": 1.0, "smoothed_form": "song"}, "unknown --smoothed-form"),
    ],
)
def test_loss_config_errors(tmp_path, flags, match):
    with pytest.raises(DifflensError, match=match):
        train_mod.train(train_mod.TrainConfig(**flags), tmp_path)
