"""The drop-in excess-loss monitor: synthetic losses J*(σ) + 0.1 give an excess of 0.1 at every level,
in the loop's own units (σ or t inputs), and the CSV holds it."""

import csv

import numpy as np
import pytest
import torch

from difflens.diffusion.processes import conversion_factor, get_process
from difflens.errors import DifflensError
from difflens.track import ExcessLossMonitor

SIGMAS = np.geomspace(0.01, 20.0, 9)
J_X0 = 0.25 * SIGMAS**2 / (0.25 + SIGMAS**2) * np.linspace(0.2, 1.0, 9)  # an arbitrary increasing curve


def _optimal_target(process, target, s):
    """J*(s) in target units, brute force: r(t(s))·J*_x0 with J*_x0 linear in ln s between levels."""
    proc = get_process(process)
    return conversion_factor(proc, target, proc.t_of_s(s)) * np.interp(np.log(s), np.log(SIGMAS), J_X0)


@pytest.mark.parametrize(("process", "target", "by_t"), [("vp", "eps", True), ("edm", "x0", False), ("fm", "v", True)])
def test_excess_of_synthetic_losses_is_the_offset_at_every_level(tmp_path, process, target, by_t):
    path = tmp_path / "excess.csv"
    monitor = ExcessLossMonitor(optimal=(SIGMAS, J_X0), process=process, target=target, path=path)
    rng = np.random.default_rng(0)
    proc = get_process(process)
    for step in (100, 200):
        s = np.exp(rng.uniform(np.log(SIGMAS[0]), np.log(SIGMAS[-1]), 4000))
        losses = torch.as_tensor(_optimal_target(process, target, s) + 0.1)
        if by_t:
            monitor.observe(losses, t=torch.as_tensor(proc.t_of_s(s)))
        else:
            monitor.observe(losses, sigma=torch.as_tensor(s))
        rows = monitor.flush(step)
        assert [r["sigma"] for r in rows] == pytest.approx(SIGMAS.tolist(), rel=1e-12)
        # t → s → J* round trips in float64: the offset comes back to ~1e-9 of J*'s scale
        assert all(abs(r["excess"] - 0.1) < 1e-9 * max(1.0, r["optimal"]) for r in rows)
        assert all(r["count"] > 100 for r in rows)
    table = list(csv.DictReader(path.open()))
    assert len(table) == 2 * len(SIGMAS)
    assert {r["step"] for r in table} == {"100", "200"}
    assert np.allclose([float(r["excess"]) for r in table], 0.1, rtol=0, atol=1e-9)
    assert np.allclose([float(r["loss"]) - float(r["optimal"]) for r in table], 0.1, atol=1e-9)
    assert monitor.skipped == 0


def test_monitor_reads_curve_json_skips_outside_and_refuses_bad_input(tmp_path):
    curve = {"levels": [{"sigma": float(s), "optimal_loss_x0": float(j)} for s, j in zip(SIGMAS, J_X0, strict=True)]}
    monitor = ExcessLossMonitor(optimal=curve)
    monitor.observe(np.array([1.0, 2.0, 3.0]), sigma=np.array([0.001, 1.0, 100.0]))
    (row,) = monitor.flush(1)
    assert monitor.skipped == 2
    assert row["count"] == 1
    assert row["loss"] == 2.0
    assert row["excess"] == pytest.approx(2.0 - np.interp(0.0, np.log(SIGMAS), J_X0), rel=1e-12)
    with pytest.raises(DifflensError, match="exactly one"):
        monitor.observe(np.ones(2))
    with pytest.raises(DifflensError, match="levels"):
        ExcessLossMonitor(optimal={"levels": []})
    with pytest.raises(DifflensError, match="cannot read"):
        ExcessLossMonitor(optimal=tmp_path / "missing.json")
    (tmp_path / "text.json").write_text('"ab"')  # valid JSON, but no optimal_loss.json: a clear error, not numpy's
    with pytest.raises(DifflensError, match="no JSON object"):
        ExcessLossMonitor(optimal=tmp_path / "text.json")


def test_tensorboard_event_file_holds_the_excess_at_every_level(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    rng = np.random.default_rng(1)
    with ExcessLossMonitor(optimal=(SIGMAS, J_X0), process="vp", target="eps", tensorboard=tmp_path / "tb") as monitor:
        for step in (10, 20):
            s = np.exp(rng.uniform(np.log(SIGMAS[0]), np.log(SIGMAS[-1]), 2000))
            monitor.observe(torch.as_tensor(_optimal_target("vp", "eps", s) + 0.1), sigma=torch.as_tensor(s))
            monitor.flush(step)
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    tags = {f"{key}/{ExcessLossMonitor.tag(s)}" for key in ("excess", "loss", "optimal") for s in SIGMAS}
    assert tags <= set(events.Tags()["scalars"])
    eps32 = 2.0**-24  # scalars are stored as float32: relative rounding ≤ 2⁻²⁴
    for s in SIGMAS:
        excess, loss, opt = (events.Scalars(f"{k}/{ExcessLossMonitor.tag(s)}") for k in ("excess", "loss", "optimal"))
        assert [e.step for e in excess] == [10, 20]
        assert all(abs(e.value - 0.1) <= eps32 * 0.1 + 1e-9 for e in excess)
        for lv, op in zip(loss, opt, strict=True):
            assert abs(lv.value - op.value - 0.1) <= eps32 * (abs(lv.value) + abs(op.value)) + 1e-9
    assert monitor.writer is None  # closed on exit


def test_tensorboard_needs_the_extra(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if tensorboard were not installed
    with pytest.raises(DifflensError, match="'tensorboard' extra"):
        ExcessLossMonitor(optimal=(SIGMAS, J_X0), tensorboard=tmp_path / "tb")
