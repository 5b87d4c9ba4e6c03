"""Trainer variants against memorization: a noise-unconditioned network (constant time input) and targets
smoothed by temperature below s_c (the kernel's E_T(s)[x0 | x̃]); checkpoints remember both."""

import copy
import math

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from difflens.analysis.smoothing import smoothed_target
from difflens.cli import app
from difflens.data import load
from difflens.errors import DifflensError
from difflens.models import DenoiserAsNet, EmpiricalDenoiser, NetDenoiser, Parametrization, load_denoiser
from difflens.models.nets import build_net
from difflens.models.train import SmoothedTargets, TrainConfig, train
from reference import EPS32, posterior_mean


@pytest.fixture(scope="module")
def toy():
    return load("toy:gmm:n=24,dim=4,std=0.3,seed=2")


class Spy(torch.nn.Module):
    """Records the time input it is given and answers a fixed function of x only."""

    def forward(self, x, t):
        self.t = t.clone()
        return torch.tanh(x)


@pytest.mark.parametrize("target", ["edm", "x0", "eps", "v"])
def test_unconditioned_network_gets_a_constant_time_input(target):
    param = Parametrization.of("edm" if target == "edm" else "vp", target, noise_conditioned=False)
    x = torch.randn(6, 4)
    s = torch.tensor([0.01, 0.1, 0.5, 1.0, 5.0, 40.0], dtype=torch.float64)
    net_x, net_t = param.inputs(x, s)
    assert torch.equal(net_t, torch.zeros(6))
    cond_x, cond_t = Parametrization.of("edm" if target == "edm" else "vp", target).inputs(x, s)
    assert torch.equal(net_x, cond_x)  # the scaling around the network still uses s
    assert len(torch.unique(cond_t)) == 6
    spy = Spy()
    NetDenoiser(spy, param)(x, s)
    assert torch.equal(spy.t, torch.zeros(6))


def test_unconditioned_denoiser_is_the_preconditioned_sigma_blind_net():
    """D(x̃, s) = c_skip(s)·x̃ + c_out(s)·F(c_in(s)·x̃) with F blind to s: same x̃ at two levels differs only
    through the EDM coefficients."""
    torch.manual_seed(0)
    net = build_net({"name": "mlp", "dim": 4, "width": 16, "depth": 2})
    den = NetDenoiser(net, Parametrization.of("edm", "edm", noise_conditioned=False))
    net64 = copy.deepcopy(net).double()
    x = torch.randn(5, 4)
    for s in (0.05, 0.7, 12.0):
        sd = 0.5
        c_skip, c_out, c_in = sd**2 / (s**2 + sd**2), s * sd / math.sqrt(s**2 + sd**2), 1 / math.sqrt(s**2 + sd**2)
        with torch.no_grad():  # float64 truth, and a plain float32 evaluation of the same formula
            truth = c_skip * x.double() + c_out * net64(c_in * x.double(), torch.zeros(5, dtype=torch.float64))
            plain = c_skip * x + c_out * net(c_in * x, torch.zeros(5))
            got = den(x, s)
        # the adapter is no worse than a plain float32 evaluation (k = 4), plus a few roundings of its size
        floor = 8 * EPS32 * float(truth.abs().max())
        assert float((got.double() - truth).abs().max()) <= 4 * float((plain.double() - truth).abs().max()) + floor
        # the raw network would respond to a time input: the blindness comes from never getting one
        assert not torch.allclose(net(c_in * x, torch.full((5,), 3.0)), net(c_in * x, torch.zeros(5)))


def test_smoothed_targets_match_the_kernel_below_sc_and_x0_above(toy):
    g = torch.Generator().manual_seed(3)
    idx = torch.arange(8) % toy.n
    x0 = toy.take(idx.numpy())
    s = torch.tensor([0.05, 0.2, 0.4, 0.9, 1.1, 2.0, 0.3, 5.0], dtype=torch.float64)
    x = x0 + s.float()[:, None] * torch.randn(x0.shape, generator=g)
    sc, temp = 1.0, 3.0
    got = SmoothedTargets(toy, temp, sc)(x0, x, s)
    low = s < sc
    assert torch.equal(got[low], smoothed_target(x[low], s[low], toy, temp, sc))  # the same kernel call
    assert torch.equal(got[~low], x0[~low])
    # brute force: softmax weights at T(s) = T·max(s_c/s, 1)
    data = toy.rows(0, toy.n)
    for b in np.flatnonzero(low.numpy()):
        t_s = temp * max(sc / float(s[b]), 1.0)
        want, tol = posterior_mean(x[b : b + 1], data, float(s[b]) ** 2 * t_s)  # float64, float32 error bound
        assert float((got[b].double() - want[0]).abs().max()) <= float(tol[0])


def _cfg(path, **kw):
    return TrainConfig(
        data=str(path), holdout=0.0, width=16, depth=2, steps=30, batch=32, log_every=10, ckpt_every=15, **kw
    )


@pytest.fixture(scope="module")
def toy_file(tmp_path_factory, toy):
    path = tmp_path_factory.mktemp("data") / "toy.npy"
    np.save(path, toy.rows(0, toy.n).numpy())
    return path


@pytest.mark.parametrize(
    "flags",
    [
        {"noise_unconditioned": True},
        {"smooth_below": 1.0},
        {"smooth_below": 2.0, "smooth_temperature": 4.0, "noise_unconditioned": True},
    ],
)
def test_tiny_runs_with_variants_reload_with_their_settings(tmp_path, toy_file, toy, flags):
    base = train(_cfg(toy_file), tmp_path / "base")
    summary = train(_cfg(toy_file, **flags), tmp_path / "run", device="cpu")  # the device plumbing, on the CPU
    assert summary["config"]["noise_unconditioned"] == flags.get("noise_unconditioned", False)
    assert summary["config"]["smooth_below"] == flags.get("smooth_below")
    x = torch.randn(7, toy.dim, generator=torch.Generator().manual_seed(0))
    outs = []
    for spec in (tmp_path / "run", tmp_path / "run" / "ckpt_0000015.pt"):
        model = load_denoiser(str(spec), device="cpu")
        assert next(model.denoiser.parameters()).device == torch.device("cpu")
        assert model.param.noise_conditioned == (not flags.get("noise_unconditioned", False))
        assert model.info["config"]["smooth_temperature"] == flags.get("smooth_temperature", 1.0)
        outs.append(model.denoiser(x, 0.3))
    assert all(torch.isfinite(o).all() for o in outs)
    # the same seed and budget without the flags trains a different model
    base_out = load_denoiser(str(tmp_path / "base")).denoiser(x, 0.3)
    assert not torch.allclose(base_out, outs[0])
    assert base["param"]["noise_conditioned"] is True


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"smooth_temperature": 5.0}, "needs --smooth-below"),
        ({"smooth_below": 1.0, "smooth_temperature": 0.0}, "--smooth-temperature"),
        ({"smooth_below": -1.0}, "--smooth-below"),
        ({"smooth_below": float("inf")}, "--smooth-below"),
        ({"noise_unconditioned": True, "time_scale": 1000.0}, "noise-unconditioned"),
    ],
)
def test_bad_flag_combinations(tmp_path, toy_file, flags, message):
    with pytest.raises(DifflensError, match=message):
        train(_cfg(toy_file, **flags), tmp_path / "bad")
    assert not (tmp_path / "bad" / "model.safetensors").exists()


def test_unconditioned_time_input_cannot_be_inverted(toy):
    param = Parametrization.of("edm", "edm", noise_conditioned=False)
    with pytest.raises(DifflensError, match="no noise level"):
        DenoiserAsNet(EmpiricalDenoiser(toy), param)(torch.zeros(2, toy.dim), torch.zeros(2))


def test_cli_rejects_smooth_temperature_alone(tmp_path, toy_file):
    res = CliRunner().invoke(
        app, ["train", "--data", str(toy_file), "--smooth-temperature", "3", "--out", str(tmp_path)]
    )
    assert res.exit_code == 2
    assert "--smooth-below" in res.output
