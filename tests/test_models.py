"""Model adapters: preconditioning round trips, target units, the oracle behind every adapter,
diffusers UNets checked against diffusers' own x0 formula, loading and its errors."""

import math

import numpy as np
import pytest
import torch

from difflens.analysis.optimal_loss import optimal_loss_curve
from difflens.data import load
from difflens.diffusion.processes import TARGETS, conversion_factor
from difflens.errors import DifflensError
from difflens.models import (
    DenoiserAsNet,
    DiscreteVP,
    EmpiricalDenoiser,
    NetDenoiser,
    Parametrization,
    diffusers_denoiser,
    load_denoiser,
)
from reference import EPS32, posterior_mean

PROCESSES = ("ve", "vp", "vp-cosine", "edm", "fm")


@pytest.fixture(scope="module")
def toy():
    return load("toy:gmm:n=40,dim=3,std=0.2,seed=1")


def _queries(data, sigma, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    src = torch.arange(n) % data.n
    x0 = data.take(src.numpy())
    s = torch.as_tensor(sigma, dtype=torch.float64).expand(n) if np.ndim(sigma) == 0 else torch.as_tensor(sigma)
    return x0, x0 + s.float()[:, None] * torch.randn(x0.shape, generator=g), s


@pytest.mark.parametrize("process", PROCESSES)
def test_round_trip_every_target(toy, process):
    """The oracle presented as a raw network of any parametrization, wrapped back, is the oracle."""
    oracle = EmpiricalDenoiser(toy)
    s = torch.as_tensor(np.geomspace(0.05, 5.0, 12))
    _, x, _ = _queries(toy, s, 12)
    truth, tol = posterior_mean(x, toy.rows(0, toy.n), s**2)  # the oracle's float64 truth and its error bound
    tol = tol + 16 * EPS32 * x.abs().amax(1)  # the conversions: a few float32 operations on values ≤ |x̃|
    for target in TARGETS:
        p = Parametrization.of(process, target, time_scale=7.0)
        back = NetDenoiser(DenoiserAsNet(oracle, p), p)(x, s)
        assert ((back.double() - truth).abs().amax(1) <= tol).all(), (process, target)


@pytest.mark.parametrize("process", PROCESSES)
def test_target_loss_is_factor_times_x0_loss(toy, process):
    """Per sample: ‖ŷ − y‖² = r(s)·‖x̂0 − x0‖², with r the conversion table of processes.py."""
    s = torch.as_tensor(np.geomspace(0.02, 20.0, 16))
    x0, x, _ = _queries(toy, s, 16)
    g = torch.Generator().manual_seed(3)
    x0_hat = x0 + 0.1 * torch.randn(x0.shape, generator=g)  # any estimate
    err_x0 = ((x0_hat.double() - x0.double()) ** 2).sum(1)
    for target in TARGETS:
        p = Parametrization.of(process, target)
        err = ((p.target_of(x0_hat, x, s).double() - p.target_of(x0, x, s).double()) ** 2).sum(1)
        r = p.factor(s.numpy())
        assert np.allclose(err.numpy(), r * err_x0.numpy(), rtol=1e-3), (process, target)
        if target != "edm":
            assert np.allclose(r, conversion_factor(process, target, p.process.t_of_s(s.numpy())))


@pytest.mark.parametrize(
    ("process", "target"),
    [("edm", "x0"), ("vp", "eps"), ("vp", "v"), ("fm", "flow"), ("ve", "score"), ("edm", "edm"), ("vp-cosine", "eps")],
)
def test_oracle_loss_equals_optimal_loss(toy, process, target):
    """The oracle's training loss in any target's units = the optimal loss curve, within MC error."""
    sigmas = np.array([0.08, 0.3, 1.0])
    m = 1600
    curve = optimal_loss_curve(toy, sigmas, process=process, target=target, samples=m, seed=5)
    p = Parametrization.of(process, target)
    net = DenoiserAsNet(EmpiricalDenoiser(toy), p)
    for i, s in enumerate(sigmas):
        x0, x, ss = _queries(toy, float(s), m, seed=11 + i)
        net_x, net_t = p.inputs(x, ss)
        per = ((net(net_x, net_t).double() - p.target_of(x0, x, ss).double()) ** 2).mean(1)
        lv = curve.levels[i]
        se = math.hypot(float(per.std() / math.sqrt(m)), lv.stderr)
        assert abs(float(per.mean()) - lv.optimal_loss) < 4 * se + 1e-9 * lv.optimal_loss, (s, target)
        assert lv.optimal_loss > 0


def test_discrete_schedule_inverse():
    ac = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))
    proc = DiscreteVP(tuple(ac))
    k = np.array([0.0, 1.0, 10.0, 500.0, 999.0])
    s = proc.s_of_t(k)
    assert np.allclose(s, np.sqrt((1 - ac[k.astype(int)]) / ac[k.astype(int)]))
    for q in (1e-4, 0.3, 5.0, 300.0):  # beyond both ends too: extrapolated, still exact inverses
        assert np.isclose(proc.s_of_t(proc.t_of_s(q)), q, rtol=1e-10)


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction", "sample"])
def test_diffusers_unet_matches_diffusers_x0(prediction, tmp_path):
    """Adapter x0 = the pred_original_sample of diffusers' own DDPMScheduler.step, at integer steps;
    saved to disk and loaded by spec, it gives the same answers."""
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        layers_per_block=1,
        block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
    ).eval()
    sched = diffusers.DDPMScheduler(prediction_type=prediction, clip_sample=False)
    den = diffusers_denoiser(unet, sched).denoiser
    ac = sched.alphas_cumprod.double()
    steps = [3, 250, 900]
    g = torch.Generator().manual_seed(1)
    x_ve = torch.randn(len(steps), 64, generator=g)
    s = torch.sqrt((1 - ac[steps]) / ac[steps])
    seen = []  # the UNet's inputs and output in our adapter's call
    hook = unet.register_forward_hook(lambda _m, args, out: seen.append((*args, out.sample)))
    with torch.no_grad():
        ours = den(x_ve, s)
        hook.remove()
        ((x_t, t, out),) = seen
        assert torch.equal(t.round(), torch.tensor(steps, dtype=t.dtype))  # diffusers' own integer steps
        assert (t - t.round()).abs().max() <= 1e-3
        x_t64 = x_ve.double() * ac[steps, None].sqrt()  # x_t = √ᾱ·x̃, float64
        assert ((x_t.double().reshape(3, -1) - x_t64).abs() <= 4 * EPS32 * x_t64.abs()).all()
        for i, k in enumerate(steps):
            # diffusers' step in float64 on the UNet's very input and output; ours rounds a few times on values
            # ≤ (|x_t| + |out|)/√ᾱ
            ref = sched.step(out[i : i + 1].double(), k, x_t[i : i + 1].double()).pred_original_sample.reshape(-1)
            size = (x_t[i].abs() + out[i].abs()).double().reshape(-1) / ac[k].sqrt()
            assert ((ours[i].double() - ref).abs() <= 8 * EPS32 * size).all(), (prediction, k)
    if prediction != "v_prediction":
        return  # loading from disk: checked once
    unet.save_pretrained(tmp_path / "unet")
    sched.save_pretrained(tmp_path / "scheduler")
    loaded = load_denoiser(f"diffusers:{tmp_path}")
    with torch.no_grad():
        assert torch.equal(loaded.denoiser(x_ve, s), ours)  # the same weights and units: the same computation
        assert torch.equal(load_denoiser(str(tmp_path)).denoiser(x_ve, s), ours)  # found by layout
    assert loaded.info["param"]["target"] == {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}[prediction]


def test_oracle_behind_a_diffusers_parametrization_gives_identical_losses(toy):
    ac = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))
    oracle = EmpiricalDenoiser(toy)
    s = torch.as_tensor([0.1, 0.4, 1.5, 4.0], dtype=torch.float64)
    x0, x, _ = _queries(toy, s, 4)
    truth, tol = posterior_mean(x, toy.rows(0, toy.n), s**2)
    delta = tol + 16 * EPS32 * x.abs().amax(1)  # per element: the oracle's error bound and the conversions'
    ref = ((truth - x0.double()) ** 2).mean(1)  # float64 loss; a mean off by ≤ δ moves it by ≤ (2|D − x0| + δ)·δ
    bound = (2 * (truth - x0.double()).abs().amax(1) + delta) * delta
    for target in ("eps", "v", "x0"):
        p = Parametrization(DiscreteVP(tuple(ac)), target)
        wrapped = NetDenoiser(DenoiserAsNet(oracle, p), p)
        assert ((((wrapped(x, s) - x0).double() ** 2).mean(1) - ref).abs() <= bound).all(), target


EDM_NET = """
import torch
class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a = torch.nn.Parameter(torch.tensor(0.0))
    def forward(self, x, sigma):
        return x / (1 + sigma.reshape(-1, *([1] * (x.ndim - 1))) ** 2) + self.a
def shrink(x, sigma):
    return x / (1 + sigma.reshape(-1, *([1] * (x.ndim - 1))) ** 2)
def wrong(x, sigma):
    return x.sum(1)
NOT_CALLABLE = 3
"""


def test_callables_and_checkpoints(tmp_path, monkeypatch):
    """file.py:Class with a state dict, file.py:function, and an importable module:attr."""
    from safetensors.torch import save_file

    file = tmp_path / "mynet.py"
    file.write_text(EDM_NET)
    torch.save({"a": torch.tensor(0.5)}, tmp_path / "w.pt")
    save_file({"a": torch.tensor(0.25)}, str(tmp_path / "w.safetensors"))
    x, s = torch.ones(2, 4), torch.tensor([1.0, 3.0])
    expect = x / (1 + s[:, None] ** 2)
    m = load_denoiser(f"{file}:Net", checkpoint=tmp_path / "w.pt")
    assert torch.allclose(m.denoiser(x, s), expect + 0.5)
    m = load_denoiser(f"{file}:Net", checkpoint=tmp_path / "w.safetensors")
    assert torch.allclose(m.denoiser(x, s), expect + 0.25)
    assert torch.allclose(load_denoiser(f"{file}:shrink").denoiser(x, s), expect)
    monkeypatch.syspath_prepend(str(tmp_path))
    vp = load_denoiser("mynet:shrink", process="vp", target="x0")  # sees x_t = α x̃ and t(s)
    t = vp.param.process.t_of_s(s.numpy())
    xd, sd = x.double(), s.double()[:, None]
    expect_vp = xd / torch.sqrt(1 + sd**2) / (1 + torch.as_tensor(t, dtype=torch.float64)[:, None] ** 2)
    # float64 closed form; the float32 path rounds a few times on values ≤ |x̃|
    assert ((vp.denoiser(x, s).double() - expect_vp).abs() <= 8 * EPS32 * xd.abs()).all()


def test_bad_model_specs_give_clear_errors(tmp_path):
    from safetensors.torch import save_file

    file = tmp_path / "mynet.py"
    file.write_text(EDM_NET)
    (tmp_path / "broken.py").write_text("raise RuntimeError('boom')\n")
    torch.save({"weight": torch.zeros(3)}, tmp_path / "bare.pt")
    save_file({"weight": torch.zeros(3)}, str(tmp_path / "bare.safetensors"))
    torch.save({"b": torch.tensor(1.0)}, tmp_path / "other.pt")
    cases = {
        str(tmp_path / "missing.pt"): "no such file",
        "no_such_module_xyz:net": "cannot import module",
        f"{file}:Missing": "has no attribute",
        f"{file}:NOT_CALLABLE": "not a network",
        f"{tmp_path}/broken.py:net": "importing",
        str(tmp_path / "bare.pt"): "architecture",
        str(tmp_path / "bare.safetensors"): "architecture",
        "notaspec": "not found",
        "oracle": "needs training data",
    }
    for spec, words in cases.items():
        with pytest.raises(DifflensError, match=words):
            load_denoiser(spec)
    with pytest.raises(DifflensError, match="does not fit the network"):
        load_denoiser(f"{file}:Net", checkpoint=tmp_path / "other.pt")
    with pytest.raises(DifflensError, match="unknown target"):
        Parametrization.of("vp", "noise")
    with pytest.raises(DifflensError, match="same shape"):
        load_denoiser(f"{file}:wrong").denoiser(torch.ones(2, 3), 1.0)
    with pytest.raises(DifflensError, match="cannot be called"):
        load_denoiser("torch.nn:Identity").denoiser(torch.ones(2, 3), 1.0)


# ---------------------------------------------------------------- devices: preconditioning stays on x's device


def _all_params():
    ac = tuple(np.cumprod(1 - np.linspace(1e-4, 0.02, 200)))
    for proc in (*PROCESSES, DiscreteVP(ac)):
        for target in TARGETS:
            if not (isinstance(proc, DiscreteVP) and target == "flow"):  # a discrete schedule has no α̇, σ̇
                yield Parametrization.of(proc, target, time_scale=3.0)


def test_precond_coefficients_are_torch_tensors_on_x_device_in_x_dtype():
    """No NumPy round trip: the coefficients are torch tensors on x's device (explicit device="cpu") in
    x's dtype, equal to the process formulas evaluated in float64 NumPy (the closed forms)."""
    device = torch.device("cpu")
    s64 = torch.as_tensor(np.geomspace(0.01, 40.0, 9), device=device)
    for p in _all_params():
        for dtype in (torch.float64, torch.float32):
            x = torch.ones(9, 2, 3, dtype=dtype, device=device)
            c = p.coefficients(s64.to(dtype), x)
            for v in (c.c_skip, c.c_out, c.c_in, c.c_noise):
                assert torch.is_tensor(v)
                assert v.device == device
                assert v.dtype == dtype
            assert c.c_in.shape == (9, 1, 1)
            assert c.c_noise.shape == (9,)
        s = s64.numpy()
        t = p.process.t_of_s(s)
        if p.target == "edm":
            c_in, noise = 1 / np.sqrt(s**2 + 0.25), np.log(s) / 4 * 3.0
        else:
            c_in, noise = p.process.alpha(t), t * 3.0
        c = p.coefficients(s64, torch.ones(9, 3, dtype=torch.float64))
        np.testing.assert_allclose(c.c_in.numpy().ravel(), c_in, rtol=1e-12)
        np.testing.assert_allclose(c.c_noise.numpy(), noise, rtol=1e-12, atol=1e-15)
        x0, eps = np.full(9, 0.3), np.full(9, -1.1)  # x0 = c_skip·x̃ + c_out·y for the target's true y
        y = p.target_of(torch.as_tensor(x0)[:, None], torch.as_tensor(x0 + s * eps)[:, None], s64).numpy().ravel()
        np.testing.assert_allclose(c.c_skip.numpy().ravel() * (x0 + s * eps) + c.c_out.numpy().ravel() * y, x0)


def test_forward_paths_never_leave_the_inputs_device():
    """On the meta device nothing can be copied to the host (.numpy(), .cpu(), .item() all fail), so
    preconditioning, NetDenoiser, DenoiserAsNet and the samplers running there prove the forward paths
    compute on the input's device."""
    from difflens.diffusion import samplers
    from difflens.models.nets import build_net

    meta = torch.device("meta")
    x = torch.empty(4, 3, device=meta)
    s = torch.empty(4, dtype=torch.float64, device=meta)
    for p in _all_params():
        net_x, net_t = p.inputs(x, s)
        outs = (net_x, net_t, p.to_x0(x, x, s), p.target_of(x, x, s), p.ve_input(net_x, s), p.sigma_of_time(net_t))
        assert all(o.device == meta for o in outs), p.describe()
    net = build_net({"name": "mlp", "dim": 3, "width": 8, "depth": 1})
    den = NetDenoiser(net, Parametrization.of("vp", "v"), device=meta)
    assert den(x, 0.5).device == meta
    assert next(den.parameters()).device == meta
    raw = DenoiserAsNet(lambda x, s: 0.5 * x, Parametrization.of("fm", "flow"))
    assert raw(x, torch.full((4,), 0.3, device=meta)).device == meta
    sig = samplers.edm_sigmas(3, 0.01, 5.0)
    for method in samplers.METHODS:
        init = samplers.initial_noise(4, 3, 5.0, device=meta)
        out = samplers.sample(den, init, sig, method=method, device=meta).samples
        assert out.device == meta
        assert out.shape == (4, 3)


def test_net_denoiser_and_samplers_on_an_explicit_cpu_device(toy):
    """device="cpu" spelled out: the weights and every answer are on the CPU; the answer is EDM's
    c_skip·x̃ + c_out·F(c_in·x̃, ln(s)/4) computed by hand in float64 (float32 rounding apart)."""
    from difflens.diffusion import samplers

    lin = torch.nn.Linear(3, 3).double()

    class F(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = lin.float()

        def forward(self, x, t):
            return self.lin(x) * torch.cos(t)[:, None]

    den = NetDenoiser(F(), Parametrization.of("edm", "edm"), device="cpu")
    x = torch.randn(6, 3, generator=torch.Generator().manual_seed(0))
    s = torch.as_tensor(np.geomspace(0.05, 20.0, 6))
    got = den(x, s)
    assert got.device == torch.device("cpu")
    assert got.dtype == torch.float32
    xd, sd = x.double(), s[:, None]
    w, b = lin.weight.detach().double(), lin.bias.detach().double()
    c_skip, c_out, c_in = 0.25 / (sd**2 + 0.25), sd * 0.5 / (sd**2 + 0.25).sqrt(), 1 / (sd**2 + 0.25).sqrt()
    want = c_skip * xd + c_out * ((c_in * xd) @ w.T + b) * torch.cos(torch.log(sd) / 4)
    torch.testing.assert_close(got.double(), want, rtol=0, atol=1e-5 * float(want.abs().max()))
    sig = samplers.edm_sigmas(4, 0.01, 5.0)
    init = samplers.initial_noise(5, toy.dim, 5.0, seed=2, device="cpu")
    for method in samplers.METHODS:
        explicit = samplers.sample(EmpiricalDenoiser(toy, device="cpu"), init, sig, method=method, device="cpu")
        assert explicit.samples.device == torch.device("cpu")
        assert explicit.samples.dtype == torch.float64
        default = samplers.sample(EmpiricalDenoiser(toy), init, sig, method=method)
        assert torch.equal(explicit.samples, default.samples)  # the same seeded draws on every device
    loaded = load_denoiser("oracle", data=toy, device="cpu").denoiser
    assert loaded(init.float(), 1.0).device == torch.device("cpu")
