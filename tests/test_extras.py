"""Heavy optional parts are extras: without one, the command that needs it says which in one line (exit 2),
and choices that can do without it fall back. Absence is simulated by ``sys.modules[name] = None``."""

import sys

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from difflens.cli import app
from difflens.errors import DifflensError, has_module, require
from difflens.kernel import neighbours

TINY = ["--queries-per-level", "8", "--sigmas", "0.5:2:2"]


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def one_line(res, extra: str, what: str) -> None:
    assert res.exit_code == 2, res.output
    assert res.output.strip().splitlines() == [
        f"error: {what} needs the '{extra}' extra: pip install 'difflens[{extra}]'"
    ]


def test_require_names_the_extra(monkeypatch):
    assert require("json", "none", "x").dumps([1]) == "[1]"
    monkeypatch.setitem(sys.modules, "zarr", None)
    assert not has_module("zarr")
    with pytest.raises(DifflensError, match=r"^reading \.zarr data needs the 'scale' extra: pip install"):
        require("zarr", "scale", "reading .zarr data")


def test_dask_engine_without_the_scale_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "distributed", None)
    res = run("optimal-loss", "--data", "toy:gmm:n=50", *TINY, "--workers", "2", "--out", tmp_path / "o")
    one_line(res, "scale", "the dask engine (--workers, --scheduler)")


def test_zarr_without_the_scale_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "zarr", None)
    one_line(run("convert", "digits", tmp_path / "d.zarr"), "scale", "difflens convert (zarr output)")
    (tmp_path / "e.zarr").mkdir()
    res = run("optimal-loss", "--data", tmp_path / "e.zarr", *TINY, "--out", tmp_path / "o")
    one_line(res, "scale", "reading .zarr data")


def test_lfw_without_the_images_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "skimage", None)
    res = run("optimal-loss", "--data", "lfw", *TINY, "--out", tmp_path / "o")
    one_line(res, "images", "the lfw data set")


def test_diffusers_model_without_the_diffusers_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "diffusers", None)
    (tmp_path / "pipe").mkdir()
    res = run("diagnose", "--model", f"diffusers:{tmp_path / 'pipe'}", "--out", tmp_path / "o")
    one_line(res, "diffusers", "diffusers models")


def test_faiss_backend_without_the_faiss_extra_and_auto_falls_back(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "faiss", None)
    np.save(tmp_path / "s.npy", np.zeros((4, 64), np.float32))
    res = run("memorization", "--samples-file", tmp_path / "s.npy", "--backend", "faiss", "--out", tmp_path / "o")
    one_line(res, "faiss", "--backend faiss")
    # auto would pick faiss for this much work; without it, the torch search gives the exact answer
    monkeypatch.setattr(neighbours, "_FAISS_MIN_WORK", 0)
    rng = np.random.default_rng(0)
    x, q = rng.normal(size=(50, 4)).astype(np.float32), rng.normal(size=(5, 4)).astype(np.float32)
    nb = neighbours.nearest(torch.from_numpy(q), x, 2, backend="auto")
    d = np.sqrt(((q[:, None].astype(np.float64) - x[None].astype(np.float64)) ** 2).sum(-1))
    np.testing.assert_array_equal(nb.index, np.argsort(d, 1)[:, :2])
    np.testing.assert_allclose(nb.dist, np.sort(d, 1)[:, :2], rtol=1e-12)
