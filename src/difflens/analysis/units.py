"""Which units a diagnosis speaks in: the model's own (its training loss) and the reporting units, where
each came from, and a one-line description for the verdict, the report and diagnose.json."""

from __future__ import annotations

from dataclasses import dataclass

from difflens.diffusion.precond import Parametrization
from difflens.diffusion.processes import get_process

__all__ = ["MODEL_SOURCES", "TARGET_NAMES", "Units", "describe_units", "resolve_units", "units_phrase"]

TARGET_NAMES = {"x0": "x0", "eps": "ε", "score": "score", "v": "v", "flow": "flow", "edm": "EDM F"}


def units_phrase(process: str, target: str) -> str:
    """'ε units of vp'."""
    return f"{TARGET_NAMES.get(target, target)} units of {process}"


def describe_units(param: Parametrization, source: str | None = None) -> str:
    """'losses in ε units of vp (from the run's checkpoint)': the units of a table of losses."""
    text = f"losses in {units_phrase(param.process.name, param.target)}"
    return f"{text} ({source})" if source else text


@dataclass(frozen=True)
class Units:
    """The units a diagnosis reports in (``report``), the model's own (``own``: its training loss, in
    which recipe totals are weighted), where each came from, and warnings about the choice."""

    report: Parametrization
    own: Parametrization
    source: str
    own_source: str
    warnings: tuple[str, ...] = ()

    @property
    def text(self) -> str:
        """One line for the verdict, the report and diagnose.json."""
        text = describe_units(self.report, self.source)
        if (self.report.process.name, self.report.target) != (self.own.process.name, self.own.target):
            own = units_phrase(self.own.process.name, self.own.target)
            text += f"; recipe totals in the model's own {own} ({self.own_source})"
        return text


MODEL_SOURCES = {"difflens": "from the run's checkpoint", "diffusers": "from the diffusers scheduler config"}


def resolve_units(
    model_param: Parametrization | None = None,
    model_kind: str | None = None,
    logged: dict | None = None,
    process: str | None = None,
    target: str | None = None,
) -> Units:
    """Which units a diagnosis uses. A difflens run or a diffusers model knows its own; a metrics.jsonl
    records its own (``logged``, see ``log_units``) unless --process/--target are given; anything else
    uses --process/--target (default edm, x0). For runs and diffusers models --process/--target only
    change the reporting units, never the model's own."""
    given = "from --process/--target"
    warnings = []
    if model_param is not None and model_kind in MODEL_SOURCES:
        own, own_source = model_param, MODEL_SOURCES[model_kind]
    elif model_param is not None and (process or target):
        own, own_source = model_param, given
    elif logged and not (process or target):
        own, own_source = Parametrization.of(logged["process"], logged["target"]), "from the log's header"
    else:
        own = Parametrization.of(process or "edm", target or "x0")
        own_source = given if process or target else "the default, edm and x0: give --process/--target if not"
        if logged and (logged.get("process"), logged.get("target")) != (own.process.name, own.target):
            warnings.append(
                f"the log records {units_phrase(logged['process'], logged['target'])}, "
                f"but --process/--target say {own.process.name}/{own.target}: using the latter"
            )
    report, source = own, own_source
    if model_kind in MODEL_SOURCES and (process or target):
        proc = get_process(process) if process else own.process
        report, source = Parametrization(proc, target or own.target), given
    return Units(report, own, source, own_source, tuple(warnings))
