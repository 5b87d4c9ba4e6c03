"""The regime sweep's defaults and budget, the shared distillation config and ``distill policy --tasks``
(docs/method.md, "Sweep cache")."""

import dataclasses
import json

import pytest
from typer.testing import CliRunner

from difflens.cli import app
from difflens.errors import DifflensError
from difflens.lab.distill.core import DistillConfig
from difflens.lab.distill.policy import TASKS, PolicyConfig, reach_tasks, run_policy
from difflens.lab.distill.restore import DIGITS, RestoreConfig
from difflens.lab.distill.run import GRIDS, PolicySweep, RestoreSweep, SweepGrid, _cell_config
from difflens.lab.distill.toy import ToyConfig

TINY_POLICY = dict(
    demos=(1,),
    unlabeled=8,
    relabel_rounds=0,
    eval_episodes=2,
    horizon=4,
    width=8,
    steps=4,
    specialist="linear",
    pareto=0,
)


def test_every_default_sweep_has_three_widths_three_seeds_and_valid_cells():
    configs = {"toy": ToyConfig(), "restore": RestoreConfig(), "policy": PolicyConfig()}
    for name, grid_cls in GRIDS.items():
        grid = grid_cls()
        grid.check()
        assert min(len(grid.sweep_widths), grid.sweep_seeds) >= 3, name
        assert min(len(grid.sweep_pairs), len(grid.sweep_ratios)) >= 2, name
        for n in grid.sweep_pairs:
            for r in grid.sweep_ratios:
                cell = _cell_config(name, grid.budget(configs[name]), n, r * n, grid.sweep_widths[0], 0)
                cell.check(DIGITS - cell.test) if name == "restore" else cell.check()


def test_sweep_budget_sets_the_generalist_steps_and_scales_the_specialists_alike():
    cfg = RestoreConfig(steps=4000, specialist_steps=2000)
    assert SweepGrid(sweep_steps=0).budget(cfg) is cfg
    cut = RestoreSweep(sweep_steps=1000).budget(cfg)
    assert (cut.steps, cut.specialist_steps) == (1000, 500)
    assert dataclasses.replace(cut, steps=4000, specialist_steps=2000) == cfg  # nothing else changes
    assert PolicySweep(sweep_steps=7).budget(PolicyConfig(steps=3000, specialist_steps=1500)).specialist_steps == 4
    assert PolicySweep(sweep_steps=10).budget(PolicyConfig(specialist_steps=0)).specialist_steps == 0
    with pytest.raises(DifflensError, match="sweep-steps"):
        SweepGrid(sweep_steps=-1).check()


def test_the_three_configs_share_one_base_and_its_checks():
    for cfg in (ToyConfig(), RestoreConfig(), PolicyConfig()):
        assert isinstance(cfg, DistillConfig)
        base = {f.name for f in dataclasses.fields(DistillConfig)}
        assert base <= {f.name for f in dataclasses.fields(cfg)}
    # the experiments' own defaults survive the shared base
    assert (ToyConfig().specialist_width, ToyConfig().mix_real) == (32, False)
    assert (RestoreConfig().specialist_width, RestoreConfig().mix_real) == (128, True)
    assert (PolicyConfig().steps, PolicyConfig().sampler_steps) == (3000, 12)
    for bad, match in ((dict(pareto=-1), "pareto"), (dict(steps=0), "steps"), (dict(ideal="x"), "ideal")):
        with pytest.raises(DifflensError, match=match):
            ToyConfig(**bad).check()
        with pytest.raises(DifflensError, match=match):
            PolicyConfig(**bad).check()
        with pytest.raises(DifflensError, match=match):
            RestoreConfig(**bad).check(DIGITS)


def test_reach_tasks_by_name_in_order_and_bad_names_rejected():
    assert reach_tasks("avoid-se, reach-ne") == (TASKS[2], TASKS[0])
    assert reach_tasks(["reach-w"]) == (TASKS[1],)
    assert ",".join(map(str, TASKS)) == "reach-ne,reach-w,avoid-se"  # the CLI's default
    for bad in ("", "reach-ne,nowhere", "reach-w,reach-w"):
        with pytest.raises(DifflensError):
            reach_tasks(bad)


def test_cli_policy_tasks_option_runs_the_named_tasks(tmp_path):
    args = ["distill", "policy", "--tasks", "reach-w,avoid-se", "--demos", "1", "--unlabeled", "8"]
    args += ["--relabel-rounds", "0", "--eval-episodes", "2", "--horizon", "4", "--width", "8", "--steps", "4"]
    args += ["--specialist", "linear", "--pareto", "0", "--out", str(tmp_path)]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    result = json.loads((tmp_path / "policy.json").read_text())
    assert result["task_names"] == ["reach-w", "avoid-se"]
    assert [t["name"] for t in result["config"]["tasks"]] == ["reach-w", "avoid-se"]
    # the same run through the library
    lib = run_policy(PolicyConfig(**{**TINY_POLICY, "tasks": reach_tasks("reach-w,avoid-se")}))
    assert (
        next(r for r in lib["runs"] if r["method"] == "baseline")["tasks"]
        == next(r for r in result["runs"] if r["method"] == "baseline")["tasks"]
    )
    bad = CliRunner().invoke(app, ["distill", "policy", "--tasks", "reach-up", "--out", str(tmp_path / "b")])
    assert bad.exit_code == 2
    assert "reach-up" in bad.output
