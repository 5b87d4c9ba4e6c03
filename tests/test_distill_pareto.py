"""Pareto fronts of the distilled and the baseline generalists, and the sweep's specialist cache
(docs/method.md, "Pareto view" and "Sweep cache")."""

import json
import math

import pytest
import torch

from difflens.analysis.run_support import Interrupted
from difflens.errors import DifflensError
from difflens.lab.distill import run as drun
from difflens.lab.distill.core import ModelSpec, SpecialistCache, fit_specialists, pareto_fronts, pareto_weights
from difflens.lab.distill.run import SweepGrid, _cell_config, run_sweep
from difflens.lab.distill.toy import GaussianTasks, ToyConfig, excess_risk, run_toy
from difflens.lab.distill.train import DSMConfig, Pairs, Scalarization

TINY = dict(
    tasks=2,
    pairs=(6,),
    unlabeled=(32,),
    widths=(16,),
    specialist_width=8,
    steps=30,
    specialist_steps=20,
    batch=16,
    oracle=False,
    eval_samples=64,
    eval_conds=2,
    per_cond=8,
    sampler_steps=4,
)


def test_cli_toy_json_holds_both_fronts_with_one_point_per_weight(tmp_path):
    from typer.testing import CliRunner

    from difflens.cli import app

    args = ["distill", "toy", "--tasks", "2", "--pairs", "4", "--unlabeled", "32", "--widths", "16"]
    args += ["--steps", "20", "--specialist-steps", "10", "--pareto", "2", "--no-oracle", "--eval-samples", "64"]
    args += ["--eval-conds", "2", "--sampler-steps", "4", "--out", str(tmp_path)]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    pareto = json.loads((tmp_path / "toy.json").read_text())["pareto"]
    assert (tmp_path / "pareto.png").exists()
    assert pareto["weights"] == pareto_weights(2, 2)
    assert len(pareto["weights"]) == 4
    assert set(pareto["fronts"]) == {"distilled", "baseline"}
    for pts in pareto["fronts"].values():
        assert [p["weights"] for p in pts] == pareto["weights"]
        assert all(len(p["metrics"]) == 2 and all(math.isfinite(m["excess_risk"]) for m in p["metrics"]) for p in pts)
    # the two fronts are different training sets under the same weights, so their points differ
    assert pareto["fronts"]["distilled"][0]["metrics"] != pareto["fronts"]["baseline"][0]["metrics"]


def test_linear_extremes_ignore_the_other_task_exactly_and_order_the_per_task_metrics():
    tasks = GaussianTasks(2, seed=3)
    g = torch.Generator().manual_seed(0)
    a = [tasks.pairs(k, 64, g) for k in range(2)]
    b = [tasks.pairs(k, 64, g) for k in range(2)]
    # same targets (so the same σ_data) but the other task's conditions replaced: under λ = e_k the
    # other task's per-sample loss weight is exactly 0, so the fit cannot see its conditions
    new1 = [a[0], Pairs(b[1].cond, a[1].x)]  # task 1's conditions replaced
    new0 = [Pairs(b[0].cond, a[0].x), a[1]]  # task 0's conditions replaced

    def evaluate(net):
        return [{"excess_risk": excess_risk(net, tasks, k, k, samples=1024)[0]} for k in range(2)]

    grid = [[1.0, 0.0], [0.0, 1.0]]
    kw = dict(model=ModelSpec(width=32, depth=2), config=DSMConfig(steps=300, batch=64), seed=1)
    lin = Scalarization("linear")
    fronts = pareto_fronts({"a": (a, lin), "new1": (new1, lin), "new0": (new0, lin)}, grid, evaluate, **kw)
    risk = {name: [[m["excess_risk"] for m in p["metrics"]] for p in pts] for name, pts in fronts.items()}
    assert risk["new1"][0] == risk["a"][0]  # λ = (1, 0): the fit is bit-for-bit blind to task 1's conditions
    assert risk["new0"][1] == risk["a"][1]  # λ = (0, 1): likewise for task 0's
    assert risk["new0"][0][0] != risk["a"][0][0]  # ... while a weighted task's conditions do matter
    for r in risk.values():
        assert r[0][0] < r[1][0]  # task 0 better when it has all the weight
        assert r[1][1] < r[0][1]  # task 1 likewise


def test_specialist_cache_hits_only_for_equal_pairs_and_returns_the_fitted_objects():
    g = torch.Generator().manual_seed(0)
    pairs = [Pairs(torch.randn(5, 2, generator=g), torch.randn(5, 2, generator=g))]
    cache = SpecialistCache()
    first = fit_specialists(pairs, kind="linear", cache=cache)
    again = fit_specialists([Pairs(pairs[0].cond.clone(), pairs[0].x.clone())], kind="linear", cache=cache)
    assert again is first
    assert cache.hits == 1
    other = [Pairs(pairs[0].cond, pairs[0].x + 1)]
    assert fit_specialists(other, kind="linear", cache=cache) is not first
    assert fit_specialists(pairs, kind="kernel", cache=cache) is not first  # other settings, other key
    assert cache.hits == 1


def test_cached_sweep_is_bit_identical_to_refitting_every_cell(tmp_path):
    cfg = ToyConfig(**{**TINY, "specialist": "mlp", "pareto": 0})
    grid = SweepGrid(sweep_pairs=(6,), sweep_ratios=(2, 4), sweep_widths=(16,), sweep_seeds=2)
    sweep = run_sweep("toy", cfg, grid, tmp_path)
    # two ratios share each (n, seed)'s specialists and each (n, width, seed)'s baseline: two fits saved per seed
    assert sweep["fits_reused"] == 4
    for cell in sweep["cells"]:
        alone = run_toy(_cell_config("toy", cfg, cell["n"], cell["unlabeled"], cell["width"], cell["seed"]))
        runs = {r["method"]: r["tasks"] for r in alone["runs"]}
        assert cell["baseline"] == runs["baseline"]
        assert cell["distilled"] == runs["distilled"]


def test_an_interrupted_sweep_resumes_to_the_same_cells(tmp_path, monkeypatch):
    """Each finished cell is on disk (cells.jsonl) before the next starts; --resume trains only the rest
    and gives the cells of an uninterrupted sweep; other settings refuse to resume."""
    cfg = ToyConfig(**{**TINY, "specialist": "linear", "pareto": 0})
    grid = SweepGrid(sweep_pairs=(6,), sweep_ratios=(2, 4), sweep_widths=(16,), sweep_seeds=2)
    whole = run_sweep("toy", cfg, grid, tmp_path / "whole")
    runner, metrics, plot = drun.EXPERIMENTS["toy"]
    calls = []

    def stop_at_third(*args, **kwargs):
        calls.append(args[0])
        if len(calls) == 3:
            raise KeyboardInterrupt
        return runner(*args, **kwargs)

    monkeypatch.setitem(drun.EXPERIMENTS, "toy", (stop_at_third, metrics, plot))
    with pytest.raises(Interrupted, match="2 of 4 cells kept"):
        run_sweep("toy", cfg, grid, tmp_path / "cut")
    assert len((tmp_path / "cut" / "cells.jsonl").read_text().splitlines()) == 1 + 2  # header + 2 cells
    assert not (tmp_path / "cut" / "sweep.json").exists()
    calls.clear()
    monkeypatch.setitem(drun.EXPERIMENTS, "toy", (runner, metrics, plot))
    resumed = run_sweep("toy", cfg, grid, tmp_path / "cut", resume=True)
    assert resumed["cells"] == whole["cells"]
    assert json.loads((tmp_path / "cut" / "sweep.json").read_text())["cells"] == whole["cells"]
    other = SweepGrid(sweep_pairs=(6,), sweep_ratios=(2,), sweep_widths=(16,))
    with pytest.raises(DifflensError, match="cannot resume"):
        run_sweep("toy", cfg, other, tmp_path / "cut", resume=True)


def test_restore_and_policy_trace_both_fronts_with_two_tasks_only():
    from difflens.lab.distill.policy import TASKS, PolicyConfig, run_policy
    from difflens.lab.distill.restore import RestoreConfig, run_restore

    small = dict(steps=10, specialist="linear", batch=8, sampler_steps=2, pareto=1)
    restore = dict(pairs=(4,), unlabeled=16, test=6, width=16, oracle=False, **small)
    policy = dict(demos=(1,), unlabeled=16, relabel_rounds=0, eval_episodes=2, horizon=5, width=16, **small)
    results = {
        "restore": run_restore(RestoreConfig(degradations=("noise", "mask"), **restore)),
        "policy": run_policy(PolicyConfig(tasks=TASKS[:2], **policy)),
    }
    for name, result in results.items():
        pareto = result["pareto"]
        assert pareto["weights"] == pareto_weights(2, 1), name
        for pts in (pareto["fronts"]["distilled"], pareto["fronts"]["baseline"]):
            assert [p["weights"] for p in pts] == pareto["weights"]
            assert all(len(p["metrics"]) == 2 for p in pts)
    assert {"psnr", "ssim"} <= set(results["restore"]["pareto"]["fronts"]["baseline"][0]["metrics"][0])
    assert {"success", "return"} <= set(results["policy"]["pareto"]["fronts"]["baseline"][0]["metrics"][0])
    assert run_restore(RestoreConfig(degradations=("noise", "blur", "mask"), **restore))["pareto"] is None
