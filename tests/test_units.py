"""Units say what they are: which units a diagnosis used and why, in its verdict and result; logs that
cannot be in their stated units get a warning naming the likely ones; recipe totals follow the process."""

import numpy as np
import pytest

from difflens.analysis import diagnose as dg
from difflens.analysis.units import resolve_units
from difflens.data import load
from difflens.models import EmpiricalDenoiser, Parametrization

SIGMAS = np.geomspace(0.02, 20.0, 10)


@pytest.fixture(scope="module")
def train():
    return load("toy:gmm:n=120,dim=4,std=0.15,seed=2")


@pytest.fixture(scope="module")
def optimal(train):
    return dg.optimal_levels(train, SIGMAS, 256, 0)


def log_rows(losses) -> list[dict]:
    return [{"step": 100, "sigma": float(s), "loss": float(v)} for s, v in zip(SIGMAS, losses, strict=True)]


def diagnose(train, losses, units):
    return dg.diagnose_log(log_rows(losses), train, units, dg.model_recipe({}, units)[0], 256, 0)


def test_log_in_eps_units_read_as_x0_gets_a_warning_naming_eps(train, optimal):
    opt = optimal[0]
    eps = Parametrization.of("vp", "eps")
    losses = 1.3 * opt * eps.factor(SIGMAS)  # a model 30 % above optimal, logging its ε loss
    res = diagnose(train, losses, Parametrization.of("vp", "x0"))
    assert len(res["warnings"]) == 1, res["warnings"]
    assert "look like ε units, not x0" in res["warnings"][0]
    assert "below J*" in res["warnings"][0]
    assert "Warning: log losses are impossible in x0 units of vp" in dg.verdict(res)
    assert diagnose(train, losses, eps)["warnings"] == []  # read in its own units: nothing to say


def test_log_in_x0_units_read_as_eps_gets_a_warning_naming_x0(train, optimal):
    losses = 1.3 * optimal[0]
    res = diagnose(train, losses, Parametrization.of("vp", "eps"))
    assert len(res["warnings"]) == 1, res["warnings"]
    assert "look like x0 units, not ε" in res["warnings"][0]
    assert "over 100× the data variance" in res["warnings"][0]  # x0 losses read as ε at s = 20: ×400
    assert diagnose(train, losses, Parametrization.of("vp", "x0"))["warnings"] == []


def test_log_impossible_in_every_unit_says_so(train, optimal):
    losses = np.full(len(SIGMAS), 1e-9)  # below J* wherever J* is not ~0, whatever the units
    res = diagnose(train, losses, Parametrization.of("edm", "x0"))
    assert len(res["warnings"]) == 1
    assert "check the log's units" in res["warnings"][0]


@pytest.mark.parametrize(
    ("kw", "text"),
    [
        (
            dict(model_param=Parametrization.of("vp", "eps"), model_kind="difflens"),
            "losses in ε units of vp (from the run's checkpoint)",
        ),
        (
            dict(model_param=Parametrization.of("vp", "eps"), model_kind="difflens", target="x0"),
            "losses in x0 units of vp (from --process/--target); "
            "recipe totals in the model's own ε units of vp (from the run's checkpoint)",
        ),
        (
            dict(model_param=Parametrization.of("vp-cosine", "v"), model_kind="diffusers"),
            "losses in v units of vp-cosine (from the diffusers scheduler config)",
        ),
        (dict(logged={"process": "fm", "target": "flow"}), "losses in flow units of fm (from the log's header)"),
        (dict(process="vp", target="eps"), "losses in ε units of vp (from --process/--target)"),
        (dict(), "losses in x0 units of edm (the default, edm and x0: give --process/--target if not)"),
    ],
)
def test_units_resolution_says_where_the_units_came_from(kw, text):
    units = resolve_units(**kw)
    assert units.text == text
    assert units.warnings == ()


def test_options_overriding_a_logs_header_are_flagged():
    units = resolve_units(logged={"process": "vp", "target": "eps"}, target="x0")
    assert (units.report.process.name, units.report.target) == ("edm", "x0")
    assert units.warnings == ("the log records ε units of vp, but --process/--target say edm/x0: using the latter",)


def test_verdict_and_result_state_the_units(train):
    units = resolve_units(model_param=Parametrization.of("vp", "eps"), model_kind="difflens")
    quad, name = dg.model_recipe({}, units.own)
    assert name == "uniform-t"  # the default recipe follows the process
    res = dg.diagnose_model(
        EmpiricalDenoiser(train), train, None, SIGMAS[3:7], units=units.report, quad=quad, images=64, samples=64,
        units_text=units.text,
    )  # fmt: skip
    assert res["units"]["description"] == "losses in ε units of vp (from the run's checkpoint)"
    assert dg.verdict(res).startswith("Losses in ε units of vp (from the run's checkpoint).")
    plain = dg.diagnose_model(
        EmpiricalDenoiser(train), train, None, SIGMAS[3:7], units=units.report, quad=quad, images=64, samples=64
    )
    assert dg.verdict(plain).startswith("Losses in ε units of vp.")


def test_default_recipe_totals_are_in_the_models_units():
    """No recipe given, a vp/ε callable: DDPM's uniform t with λ = the ε factor, so Σ mass·λ·J*_x0 is an ε
    loss (before, EDM's log-normal weighted by 1/c_out², EDM units)."""
    param = Parametrization.of("vp", "eps")
    (s, mass, lam), name = dg.model_recipe({}, param)
    assert name == "uniform-t"
    assert mass.sum() == pytest.approx(1.0)
    assert np.allclose(lam, 1 / s**2, rtol=1e-9)  # ε factor for any process: (α/σ)² = 1/s²
    assert dg.model_recipe({}, Parametrization.of("edm", "x0"))[1] == "edm"
