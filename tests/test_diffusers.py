"""diffusers pipelines read as they were trained: the scheduler config beside the UNet (prediction type,
β schedule, timesteps) recorded in diagnose.json; the exact denoiser presented as a v-prediction DDPM
network has zero excess over the optimal loss; missing configs and damaged .pt files are one-line errors."""

import json
import math
import os
import shutil

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from difflens.analysis import diagnose as dg
from difflens.cli import app
from difflens.data import load
from difflens.errors import DifflensError
from difflens.kernel import oracle
from difflens.models import load_denoiser

diffusers = pytest.importorskip("diffusers")
runner = CliRunner()
EPS32 = float(np.finfo(np.float32).eps)
STEPS = (250, 400, 600, 850)  # integer DDPM timesteps: the diagnosis levels sit exactly on them


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    """A tiny v-prediction, cosine-schedule DDPM pipeline (unet/, scheduler/, model_index.json) for 8×8 grey images."""
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
    )
    sched = diffusers.DDPMScheduler(prediction_type="v_prediction", beta_schedule="squaredcos_cap_v2")
    root = tmp_path_factory.mktemp("pipe")
    diffusers.DDPMPipeline(unet=unet, scheduler=sched).save_pretrained(root)
    assert (root / "model_index.json").exists()
    assert (root / "scheduler" / "scheduler_config.json").exists()
    return root


@pytest.fixture(scope="module")
def train():
    return load("digits").split(0.9, 0)[0]  # 180 training images, 8×8


def cosine_alphas_cumprod(k: int = 1000) -> np.ndarray:
    """ᾱ of the Glide cosine schedule (Nichol & Dhariwal 2021) in float64, β capped at 0.999."""
    f = lambda t: np.cos((t / k + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    i = np.arange(k, dtype=np.float64)
    betas = np.minimum(1 - f(i + 1) / f(i), 0.999)
    return np.cumprod(1 - betas), betas


def test_unet_folder_reads_the_pipeline_scheduler(pipe):
    """diffusers:PIPE/unet, diffusers:PIPE and --scheduler (folder or file) all read v-prediction + cosine."""
    bare = pipe.parent / "bare_unet"
    shutil.copytree(pipe / "unet", bare, dirs_exist_ok=True)
    config = pipe / "scheduler" / "scheduler_config.json"
    for spec, kw in [
        (f"diffusers:{pipe}/unet", {}),
        (f"diffusers:{pipe}", {}),
        (str(pipe), {}),
        (f"diffusers:{bare}", {"scheduler": pipe / "scheduler"}),
        (f"diffusers:{bare}", {"scheduler": pipe}),
        (f"diffusers:{bare}", {"scheduler": config}),
    ]:
        m = load_denoiser(spec, **kw)
        assert m.info["prediction_type"] == "v_prediction", spec
        assert m.info["beta_schedule"] == "squaredcos_cap_v2"
        assert m.info["num_train_timesteps"] == 1000
        assert os.path.samefile(m.info["scheduler_config"], config)
        assert m.param.target == "v"
        assert m.info["param"]["process"] == "ddpm-discrete"
    # the process carries the cosine ᾱ: float64 formula vs diffusers' float32 cumprod, bounded by the
    # float32 error of each factor 1 − β (relative eps32·β/(1 − β), plus eps32 for β itself and the product)
    ac = np.asarray(m.param.process.alphas_cumprod)
    ref, betas = cosine_alphas_cumprod()
    bound = 4 * EPS32 * np.cumsum(1 + betas / (1 - betas))
    assert np.all(np.abs(ac / ref - 1) <= bound)
    assert np.all(np.abs(ac[:100] / ref[:100] - 1) < 1e-5)  # and the linear schedule is far away
    assert abs(ac[500] / np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))[500] - 1) > 0.1


class OracleAsDDPMv(torch.nn.Module):
    """The exact empirical denoiser as a diffusers-style v-prediction network: (x_t, integer t) → v.

    Written from diffusers' own definitions, not difflens' preconditioning: x_t = √ᾱ x0 + √(1−ᾱ) ε,
    v = √ᾱ ε − √(1−ᾱ) x0 (DDPMScheduler.get_velocity), ᾱ taken at the integer timestep t."""

    def __init__(self, data, alphas_cumprod):
        super().__init__()
        self.data = data
        self.ac = torch.as_tensor(np.asarray(alphas_cumprod), dtype=torch.float64)
        self.seen = set()

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        k = torch.round(t.double())
        assert torch.all((t.double() - k).abs() < 1e-4 * (1 + k)), t  # the level falls on its timestep
        self.seen.update(int(v) for v in k)
        a = self.ac[k.long()].reshape(-1, 1, 1, 1)
        s = torch.sqrt((1 - a) / a)  # VE level of x_t / √ᾱ
        x_ve = x_t.double() / a.sqrt()
        x0 = oracle.denoise(x_ve.reshape(len(x_t), -1).float(), self.data, s.reshape(-1)).double().reshape(x_t.shape)
        eps = (x_ve - x0) / s
        return (a.sqrt() * eps - (1 - a).sqrt() * x0).float()


def test_exact_denoiser_in_v_units_has_no_excess(pipe, train):
    """The UNet replaced by the exact denoiser in v-prediction DDPM units: diagnosed loss = optimal loss
    within 4 s.e. per level, with the v-unit factor 1/(1 − ᾱ_k); read as ε-prediction it is far off."""
    loaded = load_denoiser(f"diffusers:{pipe}/unet")
    ac = np.asarray(loaded.param.process.alphas_cumprod)
    sigmas = np.sqrt((1 - ac[list(STEPS)]) / ac[list(STEPS)])
    net = OracleAsDDPMv(train, ac)
    loaded.denoiser.net = net
    optimal = dg.optimal_levels(train, sigmas, 720, 3)
    quad, _ = dg.model_recipe(loaded.info, loaded.param)
    res = dg.diagnose_model(
        loaded.denoiser, train, None, sigmas, units=loaded.param, quad=quad, images=None, seed=3, optimal=optimal
    )
    assert net.seen == set(STEPS)
    assert res["units"]["target"] == "v"
    for lv, k in zip(res["levels"], STEPS, strict=True):
        assert abs(lv["excess"]) < 4 * lv["excess_stderr"], (k, lv)
        assert math.isclose(lv["factor"], 1 / (1 - ac[k]), rel_tol=1e-9)  # ‖δv‖² = ‖δx0‖²/(1 − ᾱ)
        assert lv["optimal"] > 0
    # control: the same network read as ε-prediction is many standard errors away at every level
    wrong = load_denoiser(f"diffusers:{pipe}/unet", prediction_type="epsilon")
    wrong.denoiser.net = net
    res = dg.diagnose_model(
        wrong.denoiser, train, None, sigmas, units=loaded.param, quad=quad, images=None, seed=3, optimal=optimal
    )
    assert all(lv["excess"] > 20 * lv["excess_stderr"] for lv in res["levels"])


def test_diagnose_json_records_what_was_read(pipe, tmp_path):
    out = tmp_path / "diag"
    args = ["diagnose", "--model", f"diffusers:{pipe}/unet", "--data", "digits", "--holdout", "0.9"]
    res = runner.invoke(app, [*args, "--sigmas", "0.2,2", "--samples", "32", "--images", "16", "--out", str(out)])
    assert res.exit_code == 0, res.output
    model = json.loads((out / "diagnose.json").read_text())["model"]
    assert model["prediction_type"] == "v_prediction"
    assert model["beta_schedule"] == "squaredcos_cap_v2"
    assert model["num_train_timesteps"] == 1000
    assert os.path.samefile(model["scheduler_config"], pipe / "scheduler" / "scheduler_config.json")


def test_missing_or_wrong_scheduler_configs_are_one_line_errors(pipe, tmp_path):
    bare = tmp_path / "unet"
    shutil.copytree(pipe / "unet", bare)
    with pytest.raises(DifflensError, match=r"--scheduler.*--prediction-type") as err:
        load_denoiser(f"diffusers:{bare}")
    (tmp_path / "empty").mkdir()
    edm = tmp_path / "edm.json"
    edm.write_text(json.dumps({"_class_name": "EDMEulerScheduler", "sigma_data": 0.5, "prediction_type": "epsilon"}))
    zero = tmp_path / "zero.json"
    zero.write_text(json.dumps({"_class_name": "DDPMScheduler", "rescale_betas_zero_snr": True}))
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    errors = [err.value]
    for scheduler, words in [
        (tmp_path / "empty", "no scheduler_config.json"),
        (tmp_path / "missing.json", "no such file"),
        (edm, "discrete β schedule"),
        (zero, "zero terminal SNR"),
        (bad, "not a readable JSON"),
    ]:
        with pytest.raises(DifflensError, match=words) as err:
            load_denoiser(f"diffusers:{bare}", scheduler=scheduler)
        errors.append(err.value)
    with pytest.raises(DifflensError, match="unsupported diffusers prediction_type") as err:
        load_denoiser(f"diffusers:{bare}", scheduler=pipe, prediction_type="flow")
    errors.append(err.value)
    with pytest.raises(DifflensError, match="diffusers models only") as err:
        load_denoiser("oracle", prediction_type="epsilon")
    errors.append(err.value)
    assert all("\n" not in str(e) for e in errors)
    res = runner.invoke(app, ["diagnose", "--model", f"diffusers:{bare}", "--scheduler", str(tmp_path / "empty")])
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output


def test_prediction_type_overrides_the_config(pipe, tmp_path):
    bare = tmp_path / "unet"
    shutil.copytree(pipe / "unet", bare)
    m = load_denoiser(f"diffusers:{bare}", scheduler=pipe, prediction_type="epsilon")
    assert (m.param.target, m.info["prediction_type"], m.info["prediction_type_from"]) == ("eps", "epsilon", "argument")
    assert m.info["beta_schedule"] == "squaredcos_cap_v2"  # the schedule still comes from the config
    m = load_denoiser(f"diffusers:{pipe}/unet", prediction_type="sample")
    assert m.param.target == "x0"
    assert m.info["prediction_type"] == "sample"
    m = load_denoiser(f"diffusers:{bare}", prediction_type="v")  # no config: the assumed schedule is said
    assert m.info["beta_schedule"] == "linear"
    assert m.info["scheduler_config"] is None
    assert "assumed" in m.info["note"]
    assert np.allclose(m.param.process.alphas_cumprod, np.cumprod(1 - np.linspace(1e-4, 0.02, 1000)), rtol=1e-4)
    # --target on a diffusers model sets report units only; the model is still read as v-prediction
    m = load_denoiser(f"diffusers:{pipe}/unet", target="eps")
    assert m.param.target == "v"
    assert "report units" in m.info["note"]


def test_damaged_checkpoints_are_one_line_errors(tmp_path):
    """Random bytes or text are 'not a checkpoint' (no --trust-pickle advice), with or without the flag;
    a truncated archive and an unimportable pickled class are one line too."""
    rng = np.random.default_rng(0)
    (tmp_path / "random.pt").write_bytes(rng.bytes(4096))
    (tmp_path / "text.pt").write_text("hello world, not a checkpoint")
    torch.save(torch.nn.Linear(3, 3), tmp_path / "module.pt")
    data = (tmp_path / "module.pt").read_bytes()
    (tmp_path / "truncated.pt").write_bytes(data[: len(data) // 2])
    # a protocol-2 pickle of a class from a module that does not exist
    (tmp_path / "ghost.pt").write_bytes(b"\x80\x02cno_such_module_xyz\nGhost\nq\x00)\x81q\x01.")
    for name in ("random.pt", "text.pt"):
        for trust in (False, True):
            with pytest.raises(DifflensError, match=r"not a checkpoint \(not a zip/pickle file\)") as err:
                load_denoiser(str(tmp_path / name), trust_pickle=trust)
            assert "trust" not in str(err.value)
            assert "\n" not in str(err.value)
    with pytest.raises(DifflensError, match="--trust-pickle"):
        load_denoiser(str(tmp_path / "module.pt"))
    assert isinstance(load_denoiser(str(tmp_path / "module.pt"), trust_pickle=True).denoiser.net, torch.nn.Linear)
    for name in ("truncated.pt", "ghost.pt"):
        with pytest.raises(DifflensError) as err:
            load_denoiser(str(tmp_path / name), trust_pickle=True)
        assert "\n" not in str(err.value), name
    res = runner.invoke(app, ["diagnose", "--model", str(tmp_path / "random.pt"), "--trust-pickle"])
    assert res.exit_code == 2
    assert "not a checkpoint" in res.output
    assert "Traceback" not in res.output
