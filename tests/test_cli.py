"""The command line: the demo job runs, outputs are complete, resume continues, bad input fails cleanly."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
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
    assert out["dataset"]["spec"] == "digits" and out["dataset"]["n"] == 1797 and out["dataset"]["dim"] == 64
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
    assert "edm" in out["total"]
    csv_lines = (tmp_path / "optimal_loss.csv").read_text().splitlines()
    assert len(csv_lines) == 7 and csv_lines[0].startswith("sigma,t,optimal_loss")
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
    assert res.exit_code != 0 and "settings differ" in res.output


def test_denoise_command_matches_the_kernel(tmp_path):
    q = np.random.default_rng(0).standard_normal((5, 8, 8)).astype(np.float32)
    np.save(tmp_path / "q.npy", q)
    res = run("denoise", "--queries", tmp_path / "q.npy", "--sigma", "0.7", "--out", tmp_path / "d.npy")
    assert res.exit_code == 0, res.output
    out = np.load(tmp_path / "d.npy")
    assert out.shape == q.shape
    ref = oracle.denoise(torch.from_numpy(q.reshape(5, 64)), load("digits"), 0.7).numpy().reshape(q.shape)
    assert np.allclose(out, ref, atol=1e-6)


@pytest.mark.parametrize(
    "args, message",
    [
        (["optimal-loss", "--data", "nope.npy"], "no such file"),
        (["optimal-loss", "--sigmas", "0:1:3"], "noise"),
        (["optimal-loss", "--sigmas", "-1,2"], "noise levels must be finite and > 0"),
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
