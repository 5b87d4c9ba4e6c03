"""Distillation: scalarizations, samplers, training on exact samples, pseudo-labelling, environment."""

import json
import math

import numpy as np
import pytest
import torch

from difflens.errors import DifflensError
from difflens.lab.distill.core import (
    ModelSpec,
    SamplerSpec,
    distill_generalist,
    fit_generalist,
    pareto_weights,
    pseudo_label,
)
from difflens.lab.distill.models import make_denoiser
from difflens.lab.distill.policy import TASKS, DiffusionPolicy, demonstrations, expert_actions, random_starts, rollout
from difflens.lab.distill.restore import degrade, psnr_ssim
from difflens.lab.distill.specialists import KernelSpecialist, LinearGaussian, Sampled
from difflens.lab.distill.toy import GaussianTasks, conditional_fit, excess_risk, gaussian_w2_kl
from difflens.lab.distill.train import DSMConfig, Pairs, Scalarization, eval_dsm, train_dsm


def test_tchebycheff_weights_are_the_smooth_max_gradient_and_favour_the_worst_task():
    losses = torch.tensor([0.2, 0.9, 0.5], dtype=torch.float64)
    lam = torch.tensor([0.5, 0.2, 0.3], dtype=torch.float64)
    s = Scalarization("tchebycheff", lam, smooth=0.3, ideal=[0.1, 0.1, 0.1])
    w = s.weights(losses)
    # brute force: autograd of μ·logsumexp(λ(L − z)/μ) with μ held fixed
    gap = lam * (losses - 0.1)
    mu = 0.3 * gap.abs().mean()
    x = losses.clone().requires_grad_(True)
    (mu * torch.logsumexp(lam * (x - 0.1) / mu, 0)).backward()
    assert torch.allclose(w, x.grad)
    assert int(torch.argmax(w / lam)) == int(torch.argmax(gap))
    sub = Scalarization("tchebycheff", lam, smooth=0.0).weights(losses)
    assert torch.allclose(sub, torch.tensor([0.0, 0.2, 0.0], dtype=torch.float64))  # λ·onehot(argmax λL)
    assert torch.allclose(Scalarization("linear", lam).weights(losses), lam)
    assert Scalarization("tchebycheff", lam, smooth=0.0).value(losses) == pytest.approx(0.18)
    with pytest.raises(DifflensError):
        Scalarization("pareto")


def test_tchebycheff_training_moves_weight_to_the_hardest_task():
    # task 1 has ten times the variance of task 0: its DSM loss stays larger, so it gets the weight
    g = torch.Generator().manual_seed(0)
    data = [Pairs(torch.zeros(512, 1), s * torch.randn(512, 2, generator=g)) for s in (0.1, 1.0)]
    net = make_denoiser((2,), (1,), num_tasks=2, width=32, depth=2, sigma_data=0.5)
    log = train_dsm(net, data, config=DSMConfig(steps=100, batch=64), scalarization=Scalarization("tchebycheff"))
    w = np.array(log.weights)
    w = w / w.sum(1, keepdims=True)
    assert (w[:, 1] > 0.8).all()
    lin = train_dsm(net, data, config=DSMConfig(steps=20, batch=64), scalarization=Scalarization("linear"))
    assert np.allclose(lin.weights[-1], [0.5, 0.5])


def test_gaussian_w2_kl_match_one_dimensional_closed_forms():
    m1, v1, m2, v2 = 0.3, 2.0, -0.5, 0.5
    w2, kl = gaussian_w2_kl(
        torch.tensor([[m1]], dtype=torch.float64),
        torch.tensor([[[v1]]], dtype=torch.float64),
        torch.tensor([[m2]], dtype=torch.float64),
        torch.tensor([[v2]], dtype=torch.float64),
    )
    assert float(w2) == pytest.approx(math.sqrt((m1 - m2) ** 2 + (math.sqrt(v1) - math.sqrt(v2)) ** 2))
    assert float(kl) == pytest.approx(0.5 * (v1 / v2 + (m1 - m2) ** 2 / v2 - 1 + math.log(v2 / v1)))


def test_sampler_with_the_true_denoiser_draws_the_true_conditional():
    tasks = GaussianTasks(k=2, dim=2, cond_dim=2, seed=3)
    g, tg = torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)
    for k in range(2):
        assert excess_risk(tasks.denoiser(k), tasks, k, samples=256) == pytest.approx((0.0, 0.0), abs=1e-10)
        sampled = conditional_fit(tasks, k, lambda c, k=k: SamplerSpec(steps=18)(tasks.denoiser(k), c, 0, (2,), g))
        exact = conditional_fit(tasks, k, lambda c, k=k: tasks.sample(k, c, tg))
        assert sampled["w2"] < 1.5 * exact["w2"] + 0.02  # within the finite-sample floor
        assert sampled["kl"] < 1.5 * exact["kl"] + 0.02


def test_training_on_abundant_exact_samples_recovers_the_true_score():
    tasks = GaussianTasks(k=1, dim=1, cond_dim=1, seed=0)
    data = [tasks.pairs(0, 4096, torch.Generator().manual_seed(0))]
    untrained = ModelSpec(width=64, depth=2).build((1,), (1,), 1, 1.0, 0)
    before = excess_risk(untrained, tasks, 0, samples=2048)[0]
    net, _ = fit_generalist(data, model=ModelSpec(width=64, depth=2), config=DSMConfig(steps=1200, batch=256))
    after = excess_risk(net, tasks, 0, samples=2048)[0]
    assert after < 0.03
    assert after < 0.05 * before


def test_pseudo_labels_from_the_true_score_reproduce_the_supervised_generalist():
    tasks = GaussianTasks(k=2, dim=1, cond_dim=1, seed=1)
    g = torch.Generator().manual_seed(0)
    conds = [tasks.conditions(k, 2048, g) for k in range(2)]
    exact = [Pairs(c, tasks.sample(k, c, g)) for k, c in enumerate(conds)]
    spec, cfg = ModelSpec(width=64, depth=2), DSMConfig(steps=800, batch=128)
    supervised, _ = fit_generalist(exact, model=spec, config=cfg)
    truth = [Sampled(tasks.denoiser(k), (1,)) for k in range(2)]
    dist = distill_generalist(truth, conds, model=spec, config=cfg)
    for k in range(2):
        # the pseudo-labels are draws from the true conditional: same moments as the exact labels
        resid = (dist.pseudo[k].x.double() - tasks.mean(k, conds[k])) / tasks.var(k, conds[k]).sqrt()
        assert abs(float(resid.mean())) < 0.1
        assert abs(float(resid.std()) - 1) < 0.1
        mu = tasks.mean(k, conds[k]).ravel()
        assert abs(float(torch.corrcoef(torch.stack([resid.ravel(), mu]))[0, 1])) < 0.1  # noise independent of c
        r_sup = excess_risk(supervised, tasks, k, k, samples=2048)[0]
        r_dist = excess_risk(dist.generalist, tasks, k, k, samples=2048)[0]
        assert abs(r_dist - r_sup) < 0.5 * max(r_sup, r_dist) + 0.01


def test_pareto_weights_are_on_the_simplex():
    for k, points in [(2, 3), (3, 2), (4, 1)]:
        grid = np.array(pareto_weights(k, points))
        assert np.allclose(grid.sum(1), 1)
        assert (grid > 0).all()
        assert len(np.unique(grid, axis=0)) == len(grid)
    with pytest.raises(DifflensError):
        pareto_weights(0)
    with pytest.raises(DifflensError):
        Pairs(torch.zeros(3, 1), torch.zeros(2, 1))


def test_environment_and_expert_are_deterministic_and_the_expert_succeeds():
    ids = np.repeat(np.arange(len(TASKS)), 20)
    runs = []
    for _ in range(2):
        starts = random_starts(TASKS, ids, np.random.default_rng(5))
        runs.append(rollout(lambda s, t: expert_actions(TASKS, t, s), TASKS, ids, starts))
    for key in ("success", "return", "states", "actions"):
        assert np.array_equal(runs[0][key], runs[1][key])
    assert runs[0]["success"].all()
    assert not np.array_equal(random_starts(TASKS, ids, np.random.default_rng(6)), starts)
    d1, d2 = (demonstrations(TASKS, 2, np.random.default_rng(0)) for _ in range(2))
    assert all(torch.equal(a.x, b.x) and torch.equal(a.cond, b.cond) for a, b in zip(d1, d2, strict=True))


def test_diffusion_policy_is_deterministic_under_its_seed():
    net = make_denoiser((2,), (4,), num_tasks=3, width=16, depth=1)
    s = np.random.default_rng(0).uniform(-1, 1, size=(5, 4))
    ids = np.array([0, 1, 2, 0, 1])
    a1 = DiffusionPolicy(net, SamplerSpec(steps=4), seed=3)(s, ids)
    a2 = DiffusionPolicy(net, SamplerSpec(steps=4), seed=3)(s, ids)
    assert np.array_equal(a1, a2)
    assert a1.shape == (5, 2)
    assert np.abs(a1).max() <= 1


def test_degradations_and_restoration_metrics():
    g = torch.Generator().manual_seed(0)
    clean = torch.rand(4, 64) * 2 - 1
    for kind in ("noise", "blur", "mask"):
        c = degrade(kind, clean, g)
        assert c.shape == (4, 2, 8, 8)
    masked = degrade("mask", clean, g)
    assert torch.equal(masked[:, 0] * masked[:, 1], masked[:, 0])
    assert torch.equal(masked[:, 0][masked[:, 1] == 1], clean.reshape(4, 8, 8)[masked[:, 1] == 1])
    psnr, ssim = psnr_ssim(clean, clean)
    assert (psnr > 100).all()
    assert np.allclose(ssim, 1)
    psnr, _ = psnr_ssim(clean + 0.1, clean)
    assert np.allclose(psnr, 10 * np.log10(4 / 0.01), atol=0.5)  # clamping to [−1, 1] can only lower the MSE
    with pytest.raises(DifflensError):
        degrade("rotate", clean, g)


def test_cli_toy_writes_outputs_and_rejects_bad_input(tmp_path):
    from typer.testing import CliRunner

    from difflens.cli import app

    runner = CliRunner()
    bad = runner.invoke(app, ["distill", "toy", "--pairs", "0,8", "--out", str(tmp_path / "bad")])
    assert bad.exit_code == 2
    assert not (tmp_path / "bad" / "toy.json").exists()
    args = [
        "distill",
        "toy",
        "--tasks",
        "2",
        "--pairs",
        "4",
        "--unlabeled",
        "32",
        "--steps",
        "20",
        "--specialist-steps",
        "10",
        "--pareto",
        "0",
        "--no-oracle",
        "--pseudo-per-cond",
        "2",
        "--mix-real",
        "--eval-samples",
        "256",
        "--eval-conds",
        "4",
        "--sampler-steps",
        "6",
        "--out",
        str(tmp_path / "ok"),
    ]
    ok = runner.invoke(app, args)
    assert ok.exit_code == 0, ok.output
    result = json.loads((tmp_path / "ok" / "toy.json").read_text())
    assert [r["method"] for r in result["runs"]] == ["specialist", "baseline", "distilled"]
    assert all(len(r["tasks"]) == 2 for r in result["runs"])
    assert (tmp_path / "ok" / "toy.png").exists()
    assert (tmp_path / "ok" / "toy.csv").exists()
    assert result["runs"][-1]["ideal_point"] is None  # linear: z = 0
    budget = {k: result["runs"][-1][k] for k in ("pseudo_per_cond", "mix_real", "train_pairs")}
    assert budget == {"pseudo_per_cond": 2, "mix_real": True, "train_pairs": [2 * 32 + 4] * 2}
    assert result["config"]["pseudo_per_cond"] == 2
    assert result["config"]["mix_real"] is True
    lin = runner.invoke(app, ["distill", "toy", "--ideal", "specialist", "--out", str(tmp_path / "lin")])
    assert lin.exit_code == 2
    assert "tchebycheff" in lin.output
    tch = runner.invoke(
        app, [*args[:-1], str(tmp_path / "tch"), "--scalarization", "tchebycheff", "--ideal", "specialist"]
    )
    assert tch.exit_code == 0, tch.output
    z = json.loads((tmp_path / "tch" / "toy.json").read_text())["runs"][-1]["ideal_point"]
    assert len(z) == 2
    assert all(v > 0 for v in z)


def test_conditional_denoiser_is_edm_preconditioning_on_the_inputs_device():
    """CondDenoiser = c_skip·x + c_out·F(c_in·x, ln(σ)/4, c, k) with EDM's coefficients at this σ_d (the
    shared Parametrization), checked against a float64 hand computation; on the meta device (no host
    copies possible) it still runs, so its preconditioning never leaves the input's device."""
    from difflens.lab.distill.models import CondDenoiser
    from difflens.lab.distill.sampling import sample

    class Lin(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Linear(3, 2)

        def forward(self, x, c_noise, cond, task):
            return self.w(torch.cat([x, cond], 1)) * torch.exp(c_noise)[:, None] + task[:, None]

    den = CondDenoiser(Lin(), (2,), sigma_data=0.7, device="cpu")
    g = torch.Generator().manual_seed(0)
    x, cond = torch.randn(5, 2, generator=g), torch.randn(5, 1, generator=g)
    sigma = torch.tensor([0.01, 0.1, 1.0, 5.0, 40.0])
    got = den(x, sigma, cond, torch.tensor([0, 1, 0, 1, 1]))
    assert got.device == torch.device("cpu")
    s, xd, sd2 = sigma.double()[:, None], x.double(), 0.49
    w, b = den.net.w.weight.detach().double(), den.net.w.bias.detach().double()
    f = (torch.cat([xd / (s**2 + sd2).sqrt(), cond.double()], 1) @ w.T + b) * torch.exp(torch.log(s) / 4)
    f = f + torch.tensor([0, 1, 0, 1, 1], dtype=torch.float64)[:, None]
    want = sd2 / (s**2 + sd2) * xd + s * 0.7 / (s**2 + sd2).sqrt() * f
    torch.testing.assert_close(got.double(), want, rtol=0, atol=1e-5 * float(want.abs().max()))
    meta = CondDenoiser(Lin(), (2,), sigma_data=0.7, device="meta")
    m = torch.device("meta")
    assert meta(torch.empty(5, 2, device=m), torch.empty(5, device=m), torch.empty(5, 1, device=m), 0).device == m
    out = sample(den, cond, 1, (2,), steps=3, churn=1.0, generator=torch.Generator().manual_seed(1), device="cpu")
    again = sample(den, cond, 1, (2,), steps=3, churn=1.0, generator=torch.Generator().manual_seed(1))
    assert out.device == torch.device("cpu")
    assert out.shape == (5, 2)
    assert torch.equal(out, again)


def test_fits_sharing_one_tchebycheff_scalarization_do_not_depend_on_their_order():
    # docs/method.md, "Distillation": every fit starts its own running loss average
    g = torch.Generator().manual_seed(0)
    a = [Pairs(torch.zeros(64, 1), s * torch.randn(64, 2, generator=g)) for s in (0.1, 1.0)]
    b = [Pairs(torch.zeros(64, 1), s * torch.randn(64, 2, generator=g)) for s in (2.0, 0.05)]
    scal = Scalarization("tchebycheff", smooth=0.1)
    spec, cfg = ModelSpec(width=16, depth=1), DSMConfig(steps=30, batch=32)
    x, sigma, cond = torch.randn(8, 2, generator=g), torch.full((8,), 0.5), torch.zeros(8, 1)

    def out(net):
        with torch.no_grad():
            return net(x, sigma, cond, torch.arange(8) % 2)

    a_first, log_a1 = fit_generalist(a, model=spec, config=cfg, scalarization=scal)
    fit_generalist(b, model=spec, config=cfg, scalarization=scal)
    a_second, log_a2 = fit_generalist(a, model=spec, config=cfg, scalarization=scal)
    assert log_a1.weights == log_a2.weights
    assert torch.equal(out(a_first), out(a_second))


def test_toy_run_result_for_an_n_does_not_depend_on_the_other_ns_run_before_it():
    from difflens.lab.distill.toy import ToyConfig, run_toy

    kw = dict(
        tasks=2,
        unlabeled=(32,),
        widths=(16,),
        specialist_width=8,
        steps=20,
        specialist_steps=10,
        batch=16,
        scalarization="tchebycheff",
        pareto=0,
        oracle=False,
        eval_samples=64,
        eval_conds=2,
        per_cond=8,
        sampler_steps=4,
    )
    both = run_toy(ToyConfig(pairs=(4, 8), **kw))["runs"]
    alone = run_toy(ToyConfig(pairs=(8,), **kw))["runs"]
    assert [r for r in both if r["n"] == 8] == alone


def _linear_task(n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    a = torch.tensor([[1.0, -0.5, 0.3], [0.2, 0.8, -1.0]], dtype=torch.float64)
    b = torch.tensor([0.5, -1.0], dtype=torch.float64)
    chol = torch.tensor([[0.3, 0.0], [0.1, 0.2]], dtype=torch.float64)
    c = torch.randn(n, 3, generator=g, dtype=torch.float64)
    x = c @ a.T + b + torch.randn(n, 2, generator=g, dtype=torch.float64) @ chol.T
    return a, b, chol @ chol.T, c, x


def test_linear_specialist_recovers_a_linear_gaussian_task_within_its_standard_errors():
    n = 4000
    a, b, cov, c, x = _linear_task(n)
    spec = LinearGaussian().fit(Pairs(c, x))
    # OLS standard errors: Cov(coef_j) = Σ_jj·(DᵀD)⁻¹ with the design D = [1, c]
    design = torch.cat([torch.ones(n, 1, dtype=torch.float64), c], 1)
    inv = torch.linalg.inv(design.T @ design).diagonal()
    se = (cov.diagonal()[:, None] * inv[None, :]).sqrt()
    assert ((spec.b - b).abs() < 5 * se[:, 0]).all()
    assert ((spec.A - a).abs() < 5 * se[:, 1:]).all()
    se_cov = ((cov**2 + cov.diagonal()[:, None] * cov.diagonal()[None, :]) / n).sqrt()  # Wishart
    assert ((spec.cov - cov).abs() < 5 * se_cov).all()
    # its samples follow N(A·c + b, Σ) (the fitted one): standardised residuals have identity covariance
    draws = spec.sample(c, torch.Generator().manual_seed(1)).double() - spec.mean(c)
    white = draws @ torch.linalg.inv(torch.linalg.cholesky(spec.cov)).T
    assert torch.allclose(white.T @ white / n, torch.eye(2, dtype=torch.float64), atol=5 * (2 / n) ** 0.5)


def test_linear_specialist_is_the_ridge_fit_with_leave_one_out_covariance_from_few_pairs():
    _, _, _, c, x = _linear_task(5, seed=2)  # 5 pairs in a 3-D condition space
    spec = LinearGaussian().fit(Pairs(c, x))
    lam = spec.ridge

    def ridge(ci, xi):  # brute force: normal equations with an unpenalised intercept
        d = torch.cat([torch.ones(len(ci), 1, dtype=torch.float64), ci], 1)
        pen = lam * torch.eye(4, dtype=torch.float64)
        pen[0, 0] = 0
        coef = torch.linalg.solve(d.T @ d + pen, d.T @ xi)
        return coef[1:].T, coef[0]

    a, b = ridge(c, x)
    torch.testing.assert_close(spec.A, a, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(spec.b, b, rtol=1e-8, atol=1e-10)
    loo = []
    for i in range(5):
        rest = torch.arange(5) != i
        ai, bi = ridge(c[rest], x[rest])
        loo.append(x[i] - (c[i] @ ai.T + bi))
    loo = torch.stack(loo)
    torch.testing.assert_close(spec.cov, loo.T @ loo / 5, rtol=1e-8, atol=1e-12)
    assert torch.linalg.eigvalsh(spec.cov).min() > 0  # not the vanishing in-sample residuals
    one = LinearGaussian().fit(Pairs(c[:1], x[:1]))
    assert torch.equal(one.sample(c, torch.Generator()).double(), x[:1].float().double().expand(5, 2))


def test_linear_specialist_denoiser_is_the_gaussian_posterior_mean():
    _, _, _, c, x = _linear_task(50, seed=3)
    spec = LinearGaussian().fit(Pairs(c, x))
    g = torch.Generator().manual_seed(0)
    q, sigma = torch.randn(6, 2, generator=g, dtype=torch.float64), torch.logspace(-2, 1, 6, dtype=torch.float64)
    got = spec(q, sigma, c[:6])
    for i in range(6):
        mu = spec.mean(c[i : i + 1])[0]
        want = mu + spec.cov @ torch.linalg.solve(
            spec.cov + sigma[i] ** 2 * torch.eye(2, dtype=torch.float64), q[i] - mu
        )
        torch.testing.assert_close(got[i], want, rtol=1e-9, atol=1e-12)


def test_kernel_specialist_reproduces_a_single_pair_and_weights_pairs_by_condition():
    x1 = torch.tensor([[0.3, -0.7]])
    one = KernelSpecialist().fit(Pairs(torch.tensor([[1.0, 2.0]]), x1))
    conds = torch.randn(9, 2, generator=torch.Generator().manual_seed(0))
    assert torch.equal(one.sample(conds, torch.Generator()), x1.expand(9, 2))
    assert torch.allclose(one(torch.randn(9, 2), torch.full((9,), 0.3), conds).double(), x1.double().expand(9, 2))
    # three pairs: the denoiser is Bayes' rule over them with condition weights (float64 brute force)
    c = torch.tensor([[0.0], [1.0], [3.0]], dtype=torch.float64)
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]], dtype=torch.float64)
    spec = KernelSpecialist().fit(Pairs(c, x))
    h = float(c.var(0).mean().sqrt()) * 3 ** (-1 / 5)
    q, qc, s = torch.tensor([[0.4, 0.2]], dtype=torch.float64), torch.tensor([[0.6]], dtype=torch.float64), 0.8
    w = torch.tensor(
        [
            math.exp(-((0.6 - ci) ** 2) / (2 * h * h) - float(((q[0] - xi) ** 2).sum()) / (2 * s * s))
            for ci, xi in zip(c[:, 0].tolist(), x, strict=True)
        ],
        dtype=torch.float64,
    )
    torch.testing.assert_close(
        spec(q, torch.tensor([s], dtype=torch.float64), qc)[0], (w / w.sum()) @ x, rtol=1e-10, atol=1e-12
    )
    # sampling picks pair i with probability w_i(c)
    draws = spec.sample(qc.expand(20000, 1), torch.Generator().manual_seed(2)).double()
    freq = torch.stack([(draws == xi).all(1).double().mean() for xi in x])
    p = spec.log_weights(qc)[0].exp()
    assert torch.allclose(freq, p, atol=5 * (0.25 / 20000) ** 0.5)


@pytest.mark.parametrize("kind", ["linear", "kernel"])
def test_toy_run_with_light_specialists(kind):
    from difflens.lab.distill.toy import ToyConfig, run_toy

    cfg = ToyConfig(
        tasks=2,
        pairs=(4,),
        unlabeled=(32,),
        widths=(16,),
        steps=20,
        batch=16,
        specialist=kind,
        pareto=0,
        oracle=False,
        eval_samples=64,
        eval_conds=2,
        per_cond=8,
        sampler_steps=4,
    )
    runs = run_toy(cfg)["runs"]
    assert runs[0]["method"] == "specialist"
    assert runs[0]["class"] == kind
    assert all(math.isfinite(t[m]) for r in runs for t in r["tasks"] for m in ("excess_risk", "w2"))
    # a kernel specialist's conditional is discrete: where its draws at a condition coincide, the fitted
    # Gaussian is singular and its KL to the (continuous) truth is +inf — never NaN
    assert all(t["kl"] > 0 for r in runs for t in r["tasks"])
    with pytest.raises(DifflensError):
        run_toy(ToyConfig(specialist="gp"))


def test_pseudo_labels_draw_the_budget_per_condition_from_each_specialist():
    c = torch.tensor([[0.0], [1.0], [5.0]])
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]])
    spec = KernelSpecialist(bandwidth=0.05).fit(Pairs(c, x))  # h ≈ 0.1: a condition picks its nearest pair
    conds = torch.tensor([[0.1], [4.9]])
    pseudo = pseudo_label([spec], [conds], per_cond=16, seed=0)[0]
    assert len(pseudo) == 32
    assert torch.equal(pseudo.cond, conds.repeat_interleave(16, dim=0))
    # every pseudo-target is one of the task's pairs; at c = 4.9 only the third has weight
    assert all(any(torch.equal(p, xi) for xi in x) for p in pseudo.x)
    assert torch.equal(pseudo.x[16:], x[2].expand(16, 2))
    again = pseudo_label([spec], [conds], per_cond=16, seed=0)[0]
    assert torch.equal(again.x, pseudo.x)
    with pytest.raises(DifflensError):
        pseudo_label([spec], [conds], per_cond=0)


def test_cli_sweep_writes_the_regime_map_and_its_cells_are_the_one_off_runs(tmp_path):
    from typer.testing import CliRunner

    from difflens.cli import app
    from difflens.lab.distill.toy import ToyConfig, run_toy

    small = ["--tasks", "2", "--steps", "20", "--specialist-steps", "10"]
    small += ["--eval-samples", "64", "--eval-conds", "2", "--sampler-steps", "4", "--specialist", "linear"]
    grid = ["--sweep-pairs", "4", "--sweep-ratios", "2,4", "--sweep-widths", "8", "--sweep-seeds", "2"]
    res = CliRunner().invoke(app, ["distill", "toy", "--sweep", *small, *grid, "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    sweep = json.loads((tmp_path / "sweep.json").read_text())
    assert (tmp_path / "sweep.png").exists()
    assert "distilled − baseline (mean ± sd over seeds)" in res.output  # the printed regime table
    assert not (tmp_path / "toy.json").exists()
    cells = sweep["cells"]
    assert sorted((c["ratio"], c["seed"]) for c in cells) == [(2, 0), (2, 1), (4, 0), (4, 1)]
    for c in cells:
        for m in ("excess_risk", "w2"):
            want = np.mean([d[m] - b[m] for b, d in zip(c["baseline"], c["distilled"], strict=True)])
            assert c["diff"][m] == pytest.approx(want, rel=1e-12)
    for row in (r for r in sweep["summary"] if r["metric"] == "excess_risk"):
        d = [c["diff"]["excess_risk"] for c in cells if c["ratio"] == row["ratio"]]
        assert row["mean"] == pytest.approx(np.mean(d))
        assert row["sd"] == pytest.approx(np.std(d, ddof=1))
    # a cell is the experiment run alone at that cell's settings
    cfg = ToyConfig(
        tasks=2,
        pairs=(4,),
        unlabeled=(16,),
        widths=(8,),
        steps=20,
        specialist_steps=10,
        eval_samples=64,
        eval_conds=2,
        sampler_steps=4,
        specialist="linear",
        pareto=0,
        oracle=False,
        seed=1,
    )
    alone = {r["method"]: r["tasks"] for r in run_toy(cfg)["runs"]}
    cell = next(c for c in cells if c["ratio"] == 4 and c["seed"] == 1)
    assert cell["baseline"] == alone["baseline"]
    assert cell["distilled"] == alone["distilled"]
    bad = CliRunner().invoke(app, ["distill", "toy", "--sweep", "--sweep-ratios", "0", "--out", str(tmp_path / "b")])
    assert bad.exit_code == 2
    lone = CliRunner().invoke(app, ["distill", "toy", "--resume", "--out", str(tmp_path / "r")])
    assert lone.exit_code == 2
    assert "--sweep" in lone.output
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("kind", ["linear", "kernel"])
def test_specialist_ideal_point_works_for_specialists_without_a_device(kind):
    """The Tchebycheff ideal point evaluates each specialist's DSM loss; light specialists have no
    ``device`` (they run on the CPU), which used to raise AttributeError."""
    tasks = GaussianTasks(2, 2, 2, seed=0)
    g = torch.Generator().manual_seed(0)
    pairs = [tasks.pairs(k, 8, g) for k in range(2)]
    specs = [(LinearGaussian() if kind == "linear" else KernelSpecialist()).fit(p) for p in pairs]
    unlabeled = [tasks.conditions(k, 16, g) for k in range(2)]
    dist = distill_generalist(
        specs, unlabeled, model=ModelSpec(width=16, depth=1), config=DSMConfig(steps=2, batch=8), ideal="specialist"
    )
    cpu = [float(eval_dsm(s, [p], device="cpu")[0]) for s, p in zip(specs, dist.pseudo, strict=True)]
    assert dist.ideal == cpu
    assert all(math.isfinite(z) and z >= 0 for z in cpu)
