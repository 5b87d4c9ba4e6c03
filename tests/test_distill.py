"""Distillation: scalarizations, samplers, training on exact samples, pseudo-labelling, environment."""

import json
import math

import numpy as np
import pytest
import torch

from difflens.errors import DifflensError
from difflens.lab.distill.core import ModelSpec, SamplerSpec, distill_generalist, fit_generalist, pareto_weights
from difflens.lab.distill.models import make_denoiser
from difflens.lab.distill.policy import TASKS, DiffusionPolicy, demonstrations, expert_actions, random_starts, rollout
from difflens.lab.distill.restore import degrade, psnr_ssim
from difflens.lab.distill.toy import GaussianTasks, conditional_fit, excess_risk, gaussian_w2_kl
from difflens.lab.distill.train import DSMConfig, Pairs, Scalarization, train_dsm


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
    dist = distill_generalist([tasks.denoiser(k) for k in range(2)], conds, (1,), model=spec, config=cfg)
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
