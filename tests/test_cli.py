"""The command line: the demo job runs, outputs are complete, resume continues, bad input fails cleanly."""

import json
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
import typer
from typer.testing import CliRunner

from difflens.cli import app
from difflens.data import load
from difflens.kernel import oracle

runner = CliRunner()
TINY = ["--queries-per-level", "16", "--sigmas", "0.05:20:6"]


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_optimal_loss_on_digits_writes_json_csv_png(tmp_path):
    res = run("optimal-loss", "--data", "digits", *TINY, "--out", tmp_path, "--target", "eps", "--process", "vp")
    assert res.exit_code == 0, res.output
    out = json.loads((tmp_path / "optimal_loss.json").read_text())
    assert out["dataset"]["spec"] == "digits"
    assert out["dataset"]["n"] == 1797
    assert out["dataset"]["dim"] == 64
    assert len(out["dataset"]["hash"]) == 32
    assert (out["process"], out["target"], out["estimator"], out["samples"], out["seed"]) == (
        "vp",
        "eps",
        "full",
        16,
        0,
    )
    assert len(out["levels"]) == 6
    for lv in out["levels"]:
        assert {"sigma", "t", "optimal_loss", "stderr", "optimal_loss_x0"} <= set(lv)
        assert lv["optimal_loss"] == pytest.approx(lv["optimal_loss_x0"] / lv["sigma"] ** 2, rel=1e-9)  # eps: 1/s²
    # the total follows the process (DDPM's uniform t for vp) and is in the table's units
    assert out["recipe"] == "uniform-t"
    assert out["total"]["uniform-t"]["units"].startswith("eps units of vp")
    csv_lines = (tmp_path / "optimal_loss.csv").read_text().splitlines()
    assert len(csv_lines) == 7
    assert csv_lines[0].startswith("sigma,t,optimal_loss")
    assert (tmp_path / "optimal_loss.png").read_bytes()[:4] == b"\x89PNG"


def test_resume_continues_an_interrupted_run(tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    assert run("optimal-loss", "--data", "toy:gmm:n=200", *TINY, "--out", full).exit_code == 0
    assert run("optimal-loss", "--data", "toy:gmm:n=200", *TINY, "--out", part).exit_code == 0
    # simulate an interruption after 2 levels (the last line cut short) and no final outputs
    lines = (part / "levels.jsonl").read_text().splitlines()
    (part / "levels.jsonl").write_text("\n".join(lines[:3]) + "\n" + lines[3][:20])
    for name in ("optimal_loss.json", "optimal_loss.csv", "optimal_loss.png"):
        (part / name).unlink()
    res = run("optimal-loss", "--data", "toy:gmm:n=200", *TINY, "--out", part, "--resume")
    assert res.exit_code == 0, res.output
    assert "resuming, 2 levels done" in res.output
    assert json.loads((part / "optimal_loss.json").read_text()) == json.loads((full / "optimal_loss.json").read_text())
    res = run("optimal-loss", "--data", "toy:gmm:n=200", *TINY, "--seed", "9", "--out", part, "--resume")
    assert res.exit_code != 0
    assert "settings differ" in res.output


def test_denoise_command_matches_the_kernel(tmp_path):
    q = np.random.default_rng(0).standard_normal((5, 8, 8)).astype(np.float32)
    np.save(tmp_path / "q.npy", q)
    args = ["--queries", tmp_path / "q.npy", "--sigma", "0.7", "--chunk-size", 700, "--out", tmp_path / "d.npy"]
    res = run("denoise", *args)
    assert res.exit_code == 0, res.output
    out = np.load(tmp_path / "d.npy")
    assert out.shape == q.shape
    # the same kernel call on the same inputs (chunks fixed, not sized from free memory): the same bits
    ref = oracle.denoise(torch.from_numpy(q.reshape(5, 64)), load("digits"), 0.7, chunk_size=700)
    assert np.array_equal(out, ref.numpy().reshape(q.shape))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["optimal-loss", "--data", "nope.npy"], "no such file"),
        (["optimal-loss", "--sigmas", "0:1:3"], "noise"),
        (["optimal-loss", "--sigmas", "-1,2"], "noise levels must be finite and > 0"),
        (["optimal-loss", "--sigmas", "-1:2:3"], "noise levels must be finite and > 0"),
        (["optimal-loss", "--estimator", "magic"], "magic"),
        (["optimal-loss", "--estimator", "dol", "--subset", "1"], "subset"),
        (["optimal-loss", "--queries-per-level", "1"], "--queries-per-level must be ≥ 2"),
        (["optimal-loss", "--holdout", "2"], "holdout"),
        (["optimal-loss", "--data", "toy:nope"], "unknown toy"),
        (["denoise", "--queries", "missing.npy", "--sigma", "1", "--out", "o.npy"], "cannot read queries"),
        (["denoise", "--queries", "QBAD", "--sigma", "1", "--out", "o.npy"], "values per query"),
        (["denoise", "--queries", "QOK", "--sigma", "0", "--out", "o.npy"], "sigma"),
        (["denoise", "--queries", "QNAN", "--sigma", "1", "--out", "o.npy"], "NaN"),
    ],
)
def test_bad_input_fails_with_one_clear_line(tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    np.save(tmp_path / "QBAD.npy", np.zeros((3, 5), np.float32))
    np.save(tmp_path / "QOK.npy", np.zeros((3, 64), np.float32))
    np.save(tmp_path / "QNAN.npy", np.full((3, 64), np.nan, np.float32))
    args = [f"{a}.npy" if a in ("QBAD", "QOK", "QNAN") else a for a in args]
    res = run(*args)
    assert res.exit_code != 0
    assert message in res.output
    assert "Traceback" not in res.output
    assert not (tmp_path / "o.npy").exists()
    assert not (tmp_path / "runs" / "optimal-loss" / "optimal_loss.json").exists()


def test_console_script_help_explains_itself():
    out = subprocess.run(
        [sys.executable, "-m", "difflens.cli", "optimal-loss", "--help"], capture_output=True, text=True
    )
    assert out.returncode == 0
    for word in ("--estimator", "--queries-per-level", "--sigmas", "--resume", "--target", "--process"):
        assert word in out.stdout


# ---- option names: one meaning per name, old spellings hidden but working for one release

HIDDEN = [
    (["optimal-loss"], "--samples", "--queries-per-level"),
    (["optimal-loss"], "-M", "--queries-per-level"),
    (["optimal-loss"], "--scheduler", "--dask-scheduler"),
    (["denoise"], "--scheduler", "--dask-scheduler"),
    (["diagnose"], "--samples", "--queries-per-level"),
    (["schedule"], "-M", "--queries-per-level"),
    (["scaling"], "--samples", "--queries-per-level"),
    (["train"], "--batch", "--batch-size"),
    (["memorization"], "--samples", "--samples-file"),
    (["gap"], "--denoiser", "--model"),
    (["smooth", "sample"], "--samples", "--num-samples"),
    (["toy", "flow"], "--samples", "--num-samples"),
    (["toy", "gap"], "-M", "--draws"),
]


@pytest.mark.parametrize(("command", "old", "new"), HIDDEN)
def test_old_spellings_are_hidden_from_help(command, old, new):
    res = run(*command, "--help")
    assert res.exit_code == 0
    assert re.search(rf"(?<![\w-]){re.escape(new)}(?![\w-])", res.output)
    assert not re.search(rf"(?<![\w-]){re.escape(old)}(?![\w-])", res.output)


def test_old_spellings_still_work(tmp_path):
    data = ["--data", "toy:gmm:n=200", "--sigmas", "0.05:20:4"]
    for name, count in (("new", ["--queries-per-level", "16"]), ("a", ["--samples", "16"]), ("b", ["-M", "16"])):
        assert run("optimal-loss", *data, *count, "--out", tmp_path / name).exit_code == 0
    new = json.loads((tmp_path / "new" / "optimal_loss.json").read_text())
    assert new["samples"] == 16
    for name in "ab":
        assert json.loads((tmp_path / name / "optimal_loss.json").read_text()) == new
    res = run("optimal-loss", "--workers", "2", "--scheduler", "tcp://127.0.0.1:1", "--out", tmp_path / "c")
    assert res.exit_code == 2
    assert "--dask-scheduler" in res.output  # the old spelling reaches the new option
    res = run("gap", "--denoiser", "nonsense", "--out", tmp_path / "g")
    assert res.exit_code == 2
    assert "not found" in res.output
    np.save(tmp_path / "bad.npy", np.zeros((3, 5), np.float32))
    res = run("memorization", "--samples", tmp_path / "bad.npy", "--out", tmp_path / "m")
    assert res.exit_code == 2
    assert "64" in res.output


def test_train_options_are_the_config_dataclass_fields():
    from difflens.cli.train import TRAIN_HELP
    from difflens.models.train import TrainConfig

    params = {p.name: p for p in typer.main.get_command(app).commands["train"].params}
    defaults = TrainConfig()
    for name in TRAIN_HELP:
        default = params[name].default
        assert getattr(default, "value", default) == getattr(defaults, name), name
    assert params["width"].default == TrainConfig.width  # one default for the API and the CLI


# ---- --device: checked before anything runs or is written

DEVICE_COMMANDS = [
    ["optimal-loss"],
    ["denoise", "--queries", "q.npy", "--sigma", "1"],
    ["diagnose", "--model", "oracle"],
    ["schedule"],
    ["scaling", "t.csv"],
    ["train"],
    ["memorization", "--samples-file", "q.npy"],
    ["gap"],
    ["smooth", "sample"],
    ["toy", "gap"],
    ["toy", "flow"],
    ["distill", "toy"],
    ["distill", "restore"],
    ["distill", "policy"],
]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
@pytest.mark.parametrize("command", DEVICE_COMMANDS)
def test_device_cuda_without_cuda_is_one_line_exit_2(tmp_path, monkeypatch, command):
    monkeypatch.chdir(tmp_path)
    np.save(tmp_path / "q.npy", np.zeros((3, 64), np.float32))
    res = run(*command, "--device", "cuda", "--out", tmp_path / "out")
    assert res.exit_code == 2
    assert res.output.strip().splitlines() == ["error: --device cuda: CUDA is not available here"]
    assert not (tmp_path / "out").exists()


def test_device_cpu_is_accepted_and_nonsense_is_refused(tmp_path):
    res = run("optimal-loss", "--data", "toy:gmm:n=50", *TINY, "--device", "cpu", "--out", tmp_path / "a")
    assert res.exit_code == 0, res.output
    res = run("optimal-loss", "--device", "tpu9", "--out", tmp_path / "b")
    assert res.exit_code == 2
    assert "--device tpu9" in res.output
    assert not (tmp_path / "b").exists()


# ---- optimal-loss: every option checked before writing; Ctrl-C keeps the finished levels


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--queries-per-level", "0"], "--queries-per-level must be ≥ 2"),
        (["--estimator", "dol", "--subset", "1"], "subset"),
        (["--recipe", "missing.csv"], "missing.csv"),
        (["--precision", "fast", "--fast-tol", "2"], "tol must be in (0, 1)"),
        (["--workers", "2", "--dask-scheduler", "tcp://127.0.0.1:1"], "not both"),
        (["--workers", "0"], "--workers"),
        (["--sigmas", "-1:2:3"], "must be finite and > 0"),
        (["--holdout", "2"], "holdout"),
    ],
)
def test_optimal_loss_validates_every_option_before_writing(tmp_path, args, message):
    out = tmp_path / "run"
    res = run("optimal-loss", "--data", "toy:gmm:n=50", "--sigmas", "0.1,1", *args, "--out", out)
    assert res.exit_code == 2
    assert message in res.output
    assert not out.exists()  # not even a header-only levels.jsonl


def test_ctrl_c_keeps_finished_levels_and_resume_completes(tmp_path, monkeypatch):
    from difflens.analysis import optimal_loss as ol

    args = ["optimal-loss", "--data", "toy:gmm:n=200", *TINY]
    assert run(*args, "--out", tmp_path / "full").exit_code == 0
    real, calls = ol.estimate_level, []

    def interrupted_at_third_level(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(ol, "estimate_level", interrupted_at_third_level)
    res = run(*args, "--out", tmp_path / "part")
    assert res.exit_code == 130
    assert "interrupted — 2 levels kept; rerun with --resume" in res.output
    assert "Traceback" not in res.output
    assert not (tmp_path / "part" / "optimal_loss.json").exists()
    monkeypatch.setattr(ol, "estimate_level", real)
    res = run(*args, "--out", tmp_path / "part", "--resume")
    assert res.exit_code == 0
    assert "resuming, 2 levels done" in res.output
    part, full = (json.loads((tmp_path / d / "optimal_loss.json").read_text()) for d in ("part", "full"))
    assert part == full


def test_diagnose_progress_has_a_total(tmp_path):
    from difflens.analysis.diagnose_run import run_diagnose

    bars = []

    def progress(description, total, completed=0):
        bars.append([description, total, 0])
        return lambda n=1: bars[-1].__setitem__(2, bars[-1][2] + n)

    run_diagnose(tmp_path, model="oracle", sigmas="0.5,2", images=8, queries_per_level=8, progress=progress,
                 say=lambda s: None)  # fmt: skip
    assert bars
    assert all(total is not None and done == total for _, total, done in bars)


def test_optimal_loss_target_se_reports_the_queries_each_level_used(tmp_path):
    bad = run("optimal-loss", "--data", "toy:gmm:n=200", *TINY, "--target-se", "0", "--out", tmp_path / "bad")
    assert bad.exit_code == 2
    assert "--target-se" in bad.output
    assert not (tmp_path / "bad").exists()  # checked before anything is written
    args = ["optimal-loss", "--data", "toy:gmm:n=200", "--queries-per-level", "96", "--sigmas", "0.05,50"]
    res = run(*args, "--target-se", "0.05", "--out", tmp_path / "a")
    assert res.exit_code == 0, res.output
    out = json.loads((tmp_path / "a" / "optimal_loss.json").read_text())
    assert out["target_se"] == 0.05
    assert out["samples"] == 96
    for lv in out["levels"]:
        assert lv["stderr_x0"] <= 0.05 * lv["optimal_loss_x0"] or lv["samples"] == 96
    assert out["levels"][-1]["samples"] == 32  # σ = 50: the first batch is enough
    assert "queries" in res.output
