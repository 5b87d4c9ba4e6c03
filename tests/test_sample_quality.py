"""Which levels matter for samples: the per-level Pearson correlation between checkpoints' excess loss
and their samples' Fréchet distance (known answers), and `diagnose --checkpoints --sample-quality`."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from difflens.analysis.sample_quality import excess_fd_correlation, plot_correlation
from difflens.cli import app
from difflens.errors import DifflensError

runner = CliRunner()


def test_correlation_has_the_known_answers():
    fd = np.array([1.0, 2.0, 3.0, 4.0])
    excess = np.column_stack(
        [
            3.0 * fd + 1.0,  # grows with FD: r = 1
            5.0 - 0.5 * fd,  # shrinks: r = −1
            [1.0, 3.0, 2.0, 4.0],  # by hand: Σ de·df = 4, Σ de² = Σ df² = 5 → r = 0.8
            [2.0, 2.0, 2.0, 2.0],  # constant: r undefined
            [1.0, -1.0, -1.0, 1.0],  # orthogonal to the centred FD: r = 0
        ]
    )
    r = excess_fd_correlation(excess, fd)
    assert r[:3] == pytest.approx([1.0, -1.0, 0.8], abs=1e-15)
    assert np.isnan(r[3])
    assert r[4] == 0.0


def test_correlation_is_pearsons_and_ignores_per_level_units():
    rng = np.random.default_rng(0)
    excess, fd = rng.lognormal(size=(7, 5)), rng.lognormal(size=7)
    r = excess_fd_correlation(excess, fd)
    brute = [np.corrcoef(excess[:, k], fd)[0, 1] for k in range(5)]
    assert r == pytest.approx(brute, rel=0, abs=1e-13)
    factor = np.array([1e-3, 1.0, 7.0, 1e4, 0.25])  # a positive conversion factor per level (other units)
    assert excess_fd_correlation(excess * factor, fd) == pytest.approx(r, rel=0, abs=1e-13)


def test_correlation_refuses_what_it_cannot_measure():
    with pytest.raises(DifflensError, match="at least 3 checkpoints"):
        excess_fd_correlation(np.ones((2, 4)), [1.0, 2.0])
    with pytest.raises(DifflensError, match="same at every checkpoint"):
        excess_fd_correlation(np.arange(12.0).reshape(3, 4), [1.0, 1.0, 1.0])
    with pytest.raises(DifflensError, match="one FD per checkpoint"):
        excess_fd_correlation(np.ones((3, 4)), [1.0, 2.0])
    with pytest.raises(DifflensError, match="finite"):
        excess_fd_correlation(np.full((3, 2), np.nan), [1.0, 2.0, 3.0])


def _run(*args, code=0):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == code, result.output
    return result


def test_diagnose_sample_quality_over_checkpoints(tmp_path):
    run = tmp_path / "run"
    _run(
        "train",
        "--width",
        16,
        "--depth",
        1,
        "--steps",
        30,
        "--batch-size",
        32,
        "--ckpt-every",
        10,
        "--threads",
        1,
        "--out",
        run,
    )
    small = ["--sigmas", "0.05:5:4", "--images", 32, "--queries-per-level", 64, "--threads", 1]
    out = tmp_path / "diag"
    opts = ["--sample-quality", "--quality-samples", 64, "--feature", "pca:8"]
    _run("diagnose", "--model", run, "--checkpoints", run, *small, *opts, "--out", out)
    res = json.loads((out / "diagnose.json").read_text())
    q = res["sample_quality"]
    assert q["steps"] == res["history"]["steps"] == [10, 20, 30]
    assert q["feature"].startswith("pca:8")
    assert len(q["fd"]) == 3
    assert all(v > 0 for v in q["fd"])
    assert q["correlation"] == pytest.approx(excess_fd_correlation(res["history"]["excess"], q["fd"]).tolist())
    assert (out / "sample_quality.png").stat().st_size > 0
    bad = _run("diagnose", "--model", run, *small, "--sample-quality", "--out", tmp_path / "x", code=2)
    assert "--checkpoints" in bad.output


def test_plot_of_several_runs_checkpoints_uses_the_most_correlated_level(tmp_path, monkeypatch):
    """Checkpoints of several runs share a step: the right panel plots FD against the excess at the
    level of the largest |r| (a step axis would stack them all on one x)."""
    excess = np.array([[0.1, 1.0], [0.2, 3.0], [0.3, 2.0]])
    fd = [1.0, 2.0, 3.0]
    r = excess_fd_correlation(excess, fd)
    result = {"steps": [100, 100, 100], "fd": fd, "sigmas": [0.1, 1.0]}
    result |= {"correlation": r.tolist(), "feature": "pca:8 (test)"}
    drawn = {}
    monkeypatch.setattr("difflens.analysis.sample_quality.save_figure", lambda fig, path: drawn.update(fig=fig))
    plot_correlation(result, excess, tmp_path / "sq.png")
    right = drawn["fig"].axes[1]
    x, y = right.lines[0].get_data()
    assert np.argmax(np.abs(r)) == 0
    assert list(x) == pytest.approx(excess[:, 0].tolist())
    assert list(y) == fd
    assert "σ = 0.1" in right.get_xlabel()
