"""``device=``: every run function hands it to what computes, and the kernel refuses a device it cannot use.

No GPU here: forwarding is checked with a spy that records the device its callee was given and stops
the run there (the "meta" device, which no code path chooses by itself, marks the value passed in);
the device-aware code itself runs with ``device="cpu"`` given explicitly, against float64 brute force.
"""

import numpy as np
import pytest
import torch

import difflens.models
from difflens.analysis import diagnose as dg
from difflens.analysis import diagnose_run, memorization_run, probes, probes_run, schedule_run
from difflens.analysis import gap as gap_mod
from difflens.analysis import memorization as mm
from difflens.analysis.model_error import level_errors
from difflens.cli import app
from difflens.data import load
from difflens.diffusion import samplers
from difflens.errors import DifflensError
from difflens.kernel import oracle
from difflens.kernel.neighbours import nearest
from difflens.lab import toy, toy_run
from difflens.lab.distill import settings
from difflens.lab.distill.models import make_denoiser
from difflens.lab.distill.run import CONFIGS, run_distill

META = torch.device("meta")


class Stop(Exception):
    """Raised by a spy after it recorded the device its callee was given."""


def spy(monkeypatch, owner, name: str, seen: list, position: int | None = None) -> list:
    """Replace ``owner.name`` by a function that records its ``device`` argument (keyword, or the
    positional one at ``position``) in ``seen`` and raises Stop; returns ``seen``."""

    def record(*args, **kwargs):
        seen.append(kwargs["device"] if "device" in kwargs else args[position])
        raise Stop

    monkeypatch.setattr(owner, name, record)
    return seen


def stopped(seen: list, call) -> list:
    with pytest.raises(Stop):
        call()
    return seen


# ---- the run functions pass device on


def test_memorization_search_gets_the_device(monkeypatch, tmp_path):
    np.save(tmp_path / "s.npy", np.zeros((4, 64), np.float32))
    seen = spy(monkeypatch, mm, "memorization", [])
    assert stopped(seen, lambda: memorization_run.run_memorization(str(tmp_path / "s.npy"), tmp_path, device=META))
    assert seen == [META]


def test_gap_models_oracle_and_errors_get_the_device(monkeypatch, tmp_path):
    seen = spy(monkeypatch, memorization_run, "load_denoiser", [])
    stopped(seen, lambda: memorization_run.run_gap(tmp_path, model=["net.pt"], device=META))
    spy(monkeypatch, gap_mod, "resolve_denoiser", seen, position=2)
    stopped(seen, lambda: memorization_run.run_gap(tmp_path, model=["oracle"], data="digits", device=META))
    monkeypatch.setattr(gap_mod, "resolve_denoiser", lambda spec, train, device: device)
    spy(monkeypatch, gap_mod, "generalization_gap", seen)
    stopped(seen, lambda: memorization_run.run_gap(tmp_path, model=["oracle"], data="digits", device=META))
    assert seen == [META, META, META]


def test_smooth_sample_denoiser_and_sampler_get_the_device(monkeypatch, tmp_path):
    den = memorization_run.sampling_denoiser(
        load("toy:gmm:n=20"), None, "empirical", 1.0, None, None, "1", device="cpu"
    )
    assert den.device == torch.device("cpu")
    seen = spy(monkeypatch, memorization_run, "load_denoiser", [])
    stopped(seen, lambda: memorization_run.run_smooth_sample(tmp_path, model="net.pt", device=META))
    spy(monkeypatch, samplers, "sample", seen)
    stopped(seen, lambda: memorization_run.run_smooth_sample(tmp_path, num_samples=2, device=META))
    assert seen == [META, META]


def test_probes_model_oracle_and_sampler_get_the_device(monkeypatch, tmp_path):
    seen = spy(monkeypatch, probes_run, "load_denoiser", [])
    stopped(seen, lambda: probes_run.run_probes(tmp_path, model="net.pt", device=META))
    spy(monkeypatch, gap_mod, "resolve_denoiser", seen, position=2)
    stopped(seen, lambda: probes_run.run_probes(tmp_path, data="toy:gmm:n=20", device=META))
    monkeypatch.setattr(gap_mod, "resolve_denoiser", lambda spec, train, device: device)
    spy(monkeypatch, probes, "early_stop_probes", seen)
    stopped(seen, lambda: probes_run.run_probes(tmp_path, data="toy:gmm:n=20", feature=None, device=META))
    assert seen == [META, META, META]


def test_diagnose_model_optimal_loss_and_errors_get_the_device(monkeypatch, tmp_path):
    seen = spy(monkeypatch, diagnose_run, "load_denoiser", [])
    stopped(seen, lambda: diagnose_run.run_diagnose(tmp_path, model="net.pt", device=META))
    stopped(seen, lambda: diagnose_run.run_diagnose(tmp_path, model="oracle", data="toy:gmm:n=20", device=META))
    monkeypatch.setattr(diagnose_run, "load_denoiser", difflens.models.load_denoiser)
    spy(monkeypatch, dg, "optimal_levels", seen, position=4)
    stopped(seen, lambda: diagnose_run.run_diagnose(tmp_path, model="oracle", data="toy:gmm:n=20", device=META))
    assert seen == [META, META, META]


def test_schedule_and_scaling_get_the_device(monkeypatch, tmp_path):
    seen = spy(monkeypatch, schedule_run.sched.OptimalLossSchedule, "from_data", [])
    stopped(seen, lambda: schedule_run.run_schedule(tmp_path, {}, data="toy:gmm:n=20", device=META))
    spy(monkeypatch, schedule_run.sc, "load_denoiser", seen)
    (tmp_path / "run1").mkdir()
    stopped(seen, lambda: schedule_run.run_scaling(tmp_path, runs=str(tmp_path / "run*"), device=META))
    assert seen == [META, META]


def test_toy_lab_gets_the_device(monkeypatch, tmp_path):
    seen = spy(monkeypatch, toy, "generalization_gap", [])
    stopped(seen, lambda: toy_run.run_toy_gap(tmp_path, [0.1], sigmas="1", device=META))
    spy(monkeypatch, samplers, "sample", seen)
    stopped(seen, lambda: toy_run.run_toy_flow(tmp_path, [1.0], num_samples=2, device=META))
    assert seen == [META, META]
    assert toy_run.toy_denoiser("guided", torch.zeros(3, 2), 0.1, 0.3, 1.0, "cpu").positive.optimal.device.type == "cpu"


@pytest.mark.parametrize("name", ["toy", "restore", "policy"])
def test_distill_nets_are_built_on_the_device(monkeypatch, tmp_path, name):
    seen = spy(monkeypatch, settings, "make_denoiser", [])
    stopped(seen, lambda: run_distill(name, CONFIGS[name](), tmp_path, device=META))
    assert seen == [META]


def test_train_command_passes_the_device(monkeypatch, tmp_path):
    from typer.testing import CliRunner

    import difflens.cli.train as cli_train

    seen = spy(monkeypatch, cli_train, "train", [])
    res = CliRunner().invoke(app, ["train", "--device", "cpu", "--out", str(tmp_path)])
    assert isinstance(res.exception, Stop)
    assert seen == [torch.device("cpu")]


# ---- the device-aware code, on the CPU given explicitly


def test_kernel_and_search_refuse_a_device_they_cannot_use():
    q, x = torch.zeros(2, 3, device=META), torch.rand(5, 3)
    with pytest.raises(DifflensError, match="--device meta"):
        oracle.posterior(q, x, 1.0)
    with pytest.raises(DifflensError, match="--device meta"):
        nearest(q, x, 2)


def test_numpy_queries_run_on_the_cpu():
    """NumPy ≥ 2 arrays carry ``device == "cpu"`` (a string): the kernel and the search take them."""
    rng = np.random.default_rng(0)
    x32, q32 = rng.normal(size=(40, 3)).astype(np.float32), rng.normal(size=(6, 3)).astype(np.float32)
    x, q = x32.astype(np.float64), q32.astype(np.float64)
    post = oracle.posterior(q32, x32, 1.0)
    logits = -((q[:, None, :] - x[None]) ** 2).sum(-1) / 2
    w = np.exp(logits - logits.max(1, keepdims=True))
    w /= w.sum(1, keepdims=True)
    # float32 logits: error ∝ (‖q‖² + ‖x‖²)/σ²·eps32; the mean moves by that times the spread of x
    eps32 = float(np.finfo(np.float32).eps)
    tol = 8 * eps32 * ((q**2).sum(1).max() + (x**2).sum(1).max()) * np.abs(x).max()
    np.testing.assert_allclose(post.mean.numpy(), w @ x, rtol=0, atol=tol)
    nb = nearest(q32, x32, 2, device="cpu")
    d = np.sqrt(((q[:, None, :] - x[None]) ** 2).sum(-1))
    np.testing.assert_array_equal(nb.index, np.argsort(d, 1)[:, :2])
    np.testing.assert_allclose(nb.dist, np.sort(d, 1)[:, :2], rtol=1e-12)


def test_nearest_with_a_feature_map_on_the_device_matches_brute_force():
    rng = np.random.default_rng(1)
    x, q = torch.from_numpy(rng.normal(size=(300, 5))).float(), torch.from_numpy(rng.normal(size=(7, 5))).float()
    nb = nearest(q, x, 3, feature=lambda t: t[:, :2] * 3.0, chunk_size=64, device="cpu")
    # features are float32 (as the search takes them); distances between them are exact in float64
    fq, fx = (q[:, :2] * 3.0).double(), (x[:, :2] * 3.0).double()
    d = (fq[:, None, :] - fx[None]).pow(2).sum(-1).sqrt().numpy()
    np.testing.assert_array_equal(nb.index, np.argsort(d, 1, kind="stable")[:, :3])
    np.testing.assert_allclose(nb.dist, np.sort(d, 1)[:, :3], rtol=1e-12)
    assert nb.dist.dtype == np.float64


def test_level_errors_send_inputs_to_the_device_and_compare_on_the_cpu():
    """The denoiser sees its inputs on ``device``; the errors are the float64 brute force's."""
    gen = torch.Generator().manual_seed(0)
    y, n = torch.randn(10, 4, generator=gen), torch.randn(2, 10, 4, generator=gen)
    devices = []

    def shrink(x, s):
        devices.append(x.device)
        return x / (1 + s**2)

    got = level_errors(shrink, y, n, [0.5, 2.0], device="cpu")
    assert devices
    assert all(d == torch.device("cpu") for d in devices)
    for k, s in enumerate([0.5, 2.0]):
        x = y.double() + s * n.double()
        want = ((x / (1 + s**2) - y.double()) ** 2).mean(-1).mean(0).numpy()
        np.testing.assert_allclose(got[k], want, rtol=1e-5)  # float32 inputs, float64 comparison


def test_distill_net_takes_inputs_from_any_device_and_answers_on_theirs():
    """A conditional denoiser built on a device answers CPU callers on the CPU (metrics stay there)."""
    net = make_denoiser((2,), (2,), num_tasks=1, width=8, depth=1, device="cpu")
    assert net.device == torch.device("cpu")
    x, c = torch.randn(5, 2), torch.randn(5, 2)
    out = net(x, torch.full((5,), 0.5), c, 0)
    assert out.shape == x.shape
    assert out.device == x.device
    spec = settings.ModelSpec(width=8, depth=1, device="cpu")
    assert spec.build((2,), (2,), 1, 1.0, 0).device == torch.device("cpu")
