"""Diagnosis against the optimal loss, logs, and the train/diagnose/schedule/scaling commands
end to end on digits with tiny settings."""

import csv
import json
import math

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from difflens import report
from difflens.analysis import diagnose as dg
from difflens.analysis import gap
from difflens.analysis.optimal_loss import optimal_loss_curve, recipe_quadrature
from difflens.cli import app
from difflens.data import load
from difflens.models import EmpiricalDenoiser, Parametrization, load_denoiser

runner = CliRunner()


@pytest.fixture(scope="module")
def split():
    return load("toy:gmm:n=120,dim=4,std=0.15,seed=2").split(0.25, 0)


def test_oracle_has_no_excess_and_a_generalization_gap(split):
    train, held = split
    sigmas = np.geomspace(0.1, 3.0, 6)
    units = Parametrization.of("vp", "eps")
    quad = recipe_quadrature("edm", units.process, "eps")
    res = dg.diagnose_model(
        EmpiricalDenoiser(train), train, held, sigmas, units=units, quad=quad, images=None, samples=720, seed=3
    )
    for lv in res["levels"]:
        assert abs(lv["excess"]) < 4 * lv["excess_stderr"] + 1e-12, lv
        assert math.isclose(lv["optimal"], lv["factor"] * lv["optimal_x0"])
    small = res["levels"][0]  # the oracle snaps to training points: held-out images are far worse
    assert small["held_x0"] > 2 * small["train_x0"] + 1e-6
    curve = optimal_loss_curve(train, sigmas, samples=720, seed=3, process="vp", target="eps", recipe="edm")
    assert math.isclose(res["totals"]["optimal"]["value"], curve.total["edm"]["value"], rel_tol=1e-9)
    text = dg.verdict(res)
    assert "held-out" in text.lower()
    assert "σ" in text


def test_log_at_the_optimum_has_zero_excess(split, tmp_path):
    """A log whose losses equal J* (FM flow units, given by t) shows zero excess; t → σ = t/(1 − t)."""
    train, _ = split
    units = Parametrization.of("fm", "flow")
    ts = np.array([0.1, 0.3, 0.5, 0.7])
    sig = ts / (1 - ts)
    opt, _, _ = dg.optimal_levels(train, sig, 256, 0)
    path = tmp_path / "log.csv"
    with path.open("w") as fh:
        w = csv.writer(fh)
        w.writerow(["step", "t", "loss"])
        for t, j, r in zip(ts, opt, units.factor(sig), strict=True):
            w.writerow([5, t, j * r * 3])
            w.writerow([10, t, j * r])
    rows = dg.read_loss_log(path, units.process)
    assert np.allclose(sorted({r["sigma"] for r in rows}), sig)
    res = dg.diagnose_log(rows, train, units, recipe_quadrature("edm", units.process, "flow"), 256, 0)
    assert np.allclose([lv["excess"] for lv in res["levels"]], 0.0, atol=1e-9)
    assert res["history"]["steps"] == [5, 10]
    assert np.allclose(res["history"]["excess"][0], 2 * opt * units.factor(sig))


def _run(*args):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result


def test_cli_train_diagnose_schedule_scaling(tmp_path):
    run = tmp_path / "run"
    tiny = ["--steps", 30, "--batch-size", 32, "--log-every", 10, "--ckpt-every", 15, "--threads", 1]
    _run("train", "--width", 16, "--depth", 1, *tiny, "--out", run)
    assert sorted(p.name for p in run.iterdir()) == [
        "ckpt_0000015.pt",
        "ckpt_0000030.pt",
        "metrics.jsonl",
        "model.safetensors",
        "train.json",
    ]
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [10, 20, 30]
    assert lines[0]["levels"]
    a, b = load_denoiser(str(run)), load_denoiser(str(run / "ckpt_0000030.pt"))
    x = torch.randn(5, 64)
    with torch.no_grad():
        assert torch.equal(a.denoiser(x, 0.5), b.denoiser(x, 0.5))  # both the EMA weights: the same computation

    diag = tmp_path / "diag"
    small = ["--sigmas", "0.05:5:5", "--images", 48, "--queries-per-level", 96, "--threads", 1]
    _run("diagnose", "--model", run, "--checkpoints", run, *small, "--out", diag)
    res = json.loads((diag / "diagnose.json").read_text())
    assert len(res["levels"]) == 5
    assert res["held_images"] == 48
    assert res["recipe"] == "edm"
    assert len(res["history"]["steps"]) == 2
    assert "Over training (steps 15–30)" in res["verdict"]
    html = (diag / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 3
    assert res["verdict"][:40] in html
    _run("diagnose", "--model", run, *small, "--target", "eps", "--process", "vp", "--out", tmp_path / "eps")
    eps = json.loads((tmp_path / "eps" / "diagnose.json").read_text())
    assert eps["units"]["target"] == "eps"
    assert [lv["train_x0"] for lv in eps["levels"]] == [lv["train_x0"] for lv in res["levels"]]  # same draws
    _run("diagnose", "--from-log", run / "metrics.jsonl", "--queries-per-level", 64, "--out", tmp_path / "l")
    logged = json.loads((tmp_path / "l" / "diagnose.json").read_text())
    assert logged["units"]["target"] == "edm"
    assert len(logged["history"]["steps"]) == 3  # units read from the log

    _run(
        "schedule", "--from-log", run / "metrics.jsonl", "--bins", 8, "--queries-per-level", 64, "--out", tmp_path / "s"
    )
    table = list(csv.DictReader((tmp_path / "s" / "schedule.csv").open()))
    assert len(table) == 8
    assert math.isclose(sum(float(r["density"]) for r in table), 1.0, rel_tol=1e-6)
    assert (tmp_path / "s" / "schedule.png").exists()
    assert (tmp_path / "s" / "recipe.csv").exists()

    rng = np.random.default_rng(0)
    with (tmp_path / "t.csv").open("w") as fh:
        fh.write("params,loss,sigma\n")
        for c in np.geomspace(1e3, 1e6, 6):
            for s in (0.1, 1.0):
                fh.write(f"{c},{0.3 * s + c**-0.5 * math.exp(0.01 * rng.standard_normal())},{s}\n")
    out = _run("scaling", tmp_path / "t.csv", "--data", "digits", "--queries-per-level", 64, "--out", tmp_path / "sc")
    fits = json.loads((tmp_path / "sc" / "scaling.json").read_text())
    assert [g["sigma"] for g in fits["groups"]] == [0.1, 1.0]
    assert "plain" in fits["groups"][0]["fits"]
    assert "power-law fits" in out.output

    for w in (4, 8):  # a width family from runs: three runs of growing width, same budget
        _run("train", "--width", w, "--depth", 1, *tiny, "--out", tmp_path / f"w{w}")
    (tmp_path / "w16").symlink_to(run)
    _run(
        "scaling",
        "--runs",
        f"{tmp_path}/w*",
        "--sigmas",
        "0.5,2",
        "--images",
        32,
        "--queries-per-level",
        64,
        "--out",
        tmp_path / "sr",
    )
    fits = json.loads((tmp_path / "sr" / "scaling.json").read_text())
    assert [g["sigma"] for g in fits["groups"]] == [None, 0.5, 2.0]
    assert all(g["n"] == 3 and "plain" in g["fits"] for g in fits["groups"])
    expect = sorted(load_denoiser(str(tmp_path / f"w{w}")).info["parameters"] for w in (4, 8, 16))
    assert sorted(fits["groups"][0]["x"]) == expect


def test_cli_optimal_loss_schedule_unet(tmp_path):
    run = tmp_path / "u"
    args = ["--arch", "unet", "--width", 8, "--schedule", "optimal-loss", "--bins", 8, "--steps", 12]
    _run("train", *args, "--batch-size", 16, "--log-every", 6, "--ckpt-every", 12, "--threads", 1, "--out", run)
    info = load_denoiser(str(run)).info
    assert info["schedule"]["name"] == "optimal-loss"
    assert sum(info["schedule_state"]["counts"]) == 12 * 16
    _run("diagnose", "-m", run, "--sigmas", "0.1,1", "--images", 16, "--queries-per-level", 32, "--out", tmp_path / "d")
    assert json.loads((tmp_path / "d" / "diagnose.json").read_text())["recipe"] == "optimal-loss"


def test_cli_bad_inputs_exit_2(tmp_path):
    for args in (
        ["diagnose", "--model", tmp_path / "nothing.pt"],
        ["diagnose", "--model", "no_module_abc:net"],
        ["diagnose"],
        ["train", "--arch", "unet", "--data", "toy:circle", "--steps", 1],
        ["scaling", tmp_path / "missing.csv"],
        ["scaling"],
    ):
        result = runner.invoke(app, [str(a) for a in args])
        assert result.exit_code == 2, (args, result.output)
        assert "error:" in result.output


def test_diagnose_and_gap_measure_on_the_same_images_and_noise(split):
    """One per-level error and one seeding scheme: diagnose's train/held-out losses are gap's E_train/E_val."""
    train, held = split
    sig = [0.1, 1.0]
    den = EmpiricalDenoiser(train)
    units = Parametrization.of("edm", "x0")
    res = dg.diagnose_model(
        den,
        train,
        held,
        sig,
        units=units,
        quad=recipe_quadrature("edm", units.process, "x0"),
        images=20,
        seed=5,
        batch_size=256,
        optimal=(np.ones(2), np.zeros(2), {}),
    )
    (curve,) = gap.generalization_gap(den, train, held, sig, seed=5, max_images=20, paired=False, batch=256)
    assert [lv["train_x0"] for lv in res["levels"]] == pytest.approx(curve.e_train, rel=1e-12)
    assert [lv["held_x0"] for lv in res["levels"]] == pytest.approx(curve.e_val, rel=1e-12)
    # and by hand, in float64, from the documented scheme: images by default_rng([seed, 0]), noise by
    # SeedSequence([seed, 0])
    idx = np.sort(np.random.default_rng([5, 0]).choice(train.n, 20, replace=False))
    y = train.take(idx).double()
    gen = torch.Generator().manual_seed(int(np.random.SeedSequence([5, 0]).generate_state(1)[0]))
    noise = torch.randn(1, 20, train.dim, generator=gen)[0].double()
    x = (y + 1.0 * noise).float()
    rows = train.rows(0, train.n).double()
    logits = -((x.double()[:, None] - rows[None]) ** 2).sum(-1) / 2
    x0 = torch.softmax(logits, 1) @ rows
    want = ((x0 - y) ** 2).mean().item()
    assert res["levels"][1]["train_x0"] == pytest.approx(want, rel=1e-4)  # float32 oracle vs float64


def _levels(optimal, train, se):
    return [
        {
            "sigma": s,
            "optimal": o,
            "train": t,
            "held": None,
            "excess": t - o,
            "excess_stderr": e,
            "excess_ratio": (t - o) / o if o > 0 else math.inf,
        }
        for s, o, t, e in zip(np.geomspace(0.01, 10, len(optimal)), optimal, train, se, strict=True)
    ]


def test_excess_plot_stays_readable_where_the_optimal_loss_vanishes():
    """J* → 1e-40 at small σ made the ratio axis reach 1e40: the ratio is clipped, the excess is symlog."""
    opt = [1e-40, 1e-12, 1e-3, 0.1, 0.5]
    trn = [0.02, 0.03, 0.04, 0.15, 0.5]
    result = {"levels": _levels(opt, trn, [1e-3] * 5), "units": {"target": "x0", "process": "edm"}}
    fig = report.excess_figure(result)
    excess_ax, ratio_ax = fig.axes
    lo, hi = report.plots.RATIO_CLIP
    assert ratio_ax.get_ylim()[0] >= lo / 2
    assert ratio_ax.get_ylim()[1] <= hi * 2
    assert excess_ax.get_yscale() == "symlog"
    assert excess_ax.get_ylim()[1] < 1
    assert r"$J_\theta - J^*$" in excess_ax.get_ylabel()
    assert r"$J_\theta / J^*$" in ratio_ax.get_ylabel()
    clipped = [line for line in ratio_ax.get_lines() if line.get_marker() == "^"]
    assert len(clipped) == 1
    assert len(clipped[0].get_xdata()) == 2  # the two levels with J* ≈ 0, on the edge
    report.plt.close(fig)


def test_html_report_escapes_user_text():
    result = {
        "levels": [{**lv, "gap": None} for lv in _levels([0.1], [0.2], [0.01])],
        "totals": {
            "optimal": {"value": 0.1, "stderr": 0.01, "coverage": 1.0},
            "train": {"value": 0.2},
            "excess": 0.1,
            "excess_ratio": 1.0,
        },
        "verdict": "loss <b>high</b> & rising",
        "units": {"target": "x0<i>"},
    }
    page = report.report_html(result, [], "run <script>alert(1)</script>")
    assert "<script>" not in page
    assert "<b>high" not in page
    assert "x0<i>" not in page
    assert "run &lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "loss &lt;b&gt;high&lt;/b&gt; &amp; rising" in page


def _write_half_then_fail(path):
    with report.atomic_path(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("interrupted")


def test_atomic_writer_leaves_nothing_on_failure_and_replaces_folders(tmp_path):
    path = tmp_path / "a" / "r.json"
    report.write_json(path, {"x": math.nan, "y": [1.5, math.inf]})
    assert json.loads(path.read_text()) == {"x": None, "y": [1.5, None]}
    with pytest.raises(RuntimeError, match="interrupted"):
        _write_half_then_fail(path)
    assert json.loads(path.read_text())["x"] is None
    assert sorted(p.name for p in path.parent.iterdir()) == ["r.json"]
    folder = tmp_path / "d.zarr"
    for content in ("old", "new"):
        with report.atomic_path(folder) as tmp:
            tmp.mkdir()
            (tmp / content).write_text(content)
    assert [p.name for p in folder.iterdir()] == ["new"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "d.zarr"]
    report.save_torch({"w": torch.ones(2)}, tmp_path / "c.pt")
    assert torch.equal(torch.load(tmp_path / "c.pt")["w"], torch.ones(2))
