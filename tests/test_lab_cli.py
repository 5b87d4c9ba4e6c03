"""The memorization / gap / toy / smooth commands end to end on tiny settings, and their errors."""

import json

import numpy as np
from typer.testing import CliRunner

from difflens.cli import app

runner = CliRunner()


def _run(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_smooth_sample_then_memorization(tmp_path):
    out = tmp_path / "smooth"
    r = _run("smooth", "sample", "--subset", 16, "--num-samples", 8, "--steps", 8, "--out", out)
    assert r.exit_code == 0, r.output
    res = json.loads((out / "smooth.json").read_text())
    assert res["memorization"]["memorization_ratio"] == 1.0  # the exact empirical score copies training images
    assert len(res["overlap"]) == 8
    assert len(res["expansion"]) == 7
    for f in ("samples.npy", "samples.png", "memorized.png", "overlap.png", "memorization.npz"):
        assert (out / f).exists()
    x = np.load(out / "samples.npy")
    assert x.shape == (8, 8, 8)
    r = _run("memorization", "--samples-file", out / "samples.npy", "--out", tmp_path / "mem", "--threshold", 0.5)
    assert r.exit_code == 0, r.output
    mem = json.loads((tmp_path / "mem" / "memorization.json").read_text())
    assert mem["memorization_ratio"] == 1.0
    assert mem["threshold"] == 0.5
    assert mem["nn_distance"]["q50"] < 1e-5
    npz = np.load(tmp_path / "mem" / "memorization.npz")
    assert set(npz.files) == {"d1", "d2", "index", "index2", "ratio"}
    assert len(npz["d1"]) == 8


def test_gap_and_toy_commands(tmp_path):
    r = _run("gap", "--model", "oracle", "--model", "oracle:T=4", "--sigmas", "0.05,1,20", "--images", 32,
             "--out", tmp_path / "gap")  # fmt: skip
    assert r.exit_code == 0, r.output
    res = json.loads((tmp_path / "gap" / "gap.json").read_text())
    assert [c["label"] for c in res["curves"]] == ["oracle", "oracle:T=4"]
    assert (tmp_path / "gap" / "gap_over_checkpoints.png").exists()
    r = _run("toy", "gap", "--values", "0.05,0.2", "--sigmas", "0.01:1:5", "--draws", 5, "--out", tmp_path / "tg")
    assert r.exit_code == 0, r.output
    assert len(json.loads((tmp_path / "tg" / "toy_gap.json").read_text())["curves"]) == 2
    r = _run("toy", "flow", "--num-samples", 20, "--steps", 6, "--levels", "0.1,1", "--out", tmp_path / "tf")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "tf" / "flow.png").exists()
    assert (tmp_path / "tf" / "overlap.png").exists()


def test_errors_are_one_line_and_nonzero(tmp_path):
    bad = tmp_path / "bad.npy"
    np.save(bad, np.zeros((3, 5), np.float32))
    r = _run("memorization", "--samples-file", bad, "--out", tmp_path / "m")
    assert r.exit_code == 2
    assert "64" in r.output
    assert not (tmp_path / "m" / "memorization.json").exists()
    r = _run("gap", "--model", "nonsense", "--out", tmp_path / "g")
    assert r.exit_code == 2
    assert "not found" in r.output
    r = _run("toy", "gap", "--sweep", "density", "--values", "2.5", "--out", tmp_path / "t")
    assert r.exit_code == 2
    assert "integers" in r.output
    r = _run("smooth", "sample", "-T", 0, "--out", tmp_path / "s")
    assert r.exit_code == 2
    assert "temperature" in r.output


def test_smooth_sample_with_a_model_callable(tmp_path, monkeypatch):
    (tmp_path / "shrink_model.py").write_text("def denoiser(x, sigma):\n    return 0.0 * x\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "m"
    args = ["--model", "shrink_model:denoiser", "--subset", 16, "--num-samples", 4, "--steps", 4, "--no-overlap"]
    r = _run("smooth", "sample", *args, "--out", out)
    assert r.exit_code == 0, r.output
    res = json.loads((out / "smooth.json").read_text())
    assert res["model"] == "shrink_model:denoiser"
    assert res["overlap"] is None
    assert np.abs(np.load(out / "samples.npy")).max() == 0.0  # a denoiser that always says 0 samples 0


def test_fd_ratio_probes_and_feature_gap(tmp_path):
    from difflens.analysis import features
    from difflens.data import load

    train, held = load("digits").split(0.5, 3)
    x = train.rows(0, train.n).numpy()
    np.save(tmp_path / "copies.npy", x.reshape(-1, 8, 8))  # a perfect copier of the training split
    r = _run("memorization", "--samples-file", tmp_path / "copies.npy", "--fd-ratio", "--holdout", 0.5,
             "--split-seed", 3, "--out", tmp_path / "m")  # fmt: skip
    assert r.exit_code == 0, r.output
    fd = json.loads((tmp_path / "m" / "memorization.json").read_text())["fd"]
    pca = features.PCAFeature(train)
    assert fd["feature"].startswith("pca:32")
    assert fd["train"] < 1e-6
    assert fd["ratio"] < 1e-6
    assert fd["held_out"] == features.frechet_distance(x, held, pca) > 0.1
    r = _run("memorization", "--samples-file", tmp_path / "copies.npy", "--fd-ratio", "--out", tmp_path / "m2")
    assert r.exit_code == 2
    assert "held-out" in r.output
    r = _run("probes", "--steps", 6, "--stops", 2, "--num-samples", 8, "--images", 8, "--out", tmp_path / "p")
    assert r.exit_code == 0, r.output
    res = json.loads((tmp_path / "p" / "probes.json").read_text())
    assert [lv["step"] for lv in res["levels"]] == [0, 5]
    assert (tmp_path / "p" / "probes.png").exists()
    assert res["levels"][1]["nn_cosine"]["train"] > 0.999  # the oracle reconstructs training images exactly
    r = _run("gap", "--sigmas", "0.05,1", "--images", 16, "--feature-gap", "--out", tmp_path / "g")
    assert r.exit_code == 0, r.output
    res = json.loads((tmp_path / "g" / "gap.json").read_text())
    assert [c["label"] for c in res["curves"]] == ["oracle", f"oracle [{res['feature']}]"]
