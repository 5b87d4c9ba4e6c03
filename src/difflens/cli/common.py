"""What every command shares: the error handling, progress bars, choice lists derived from the library's
registries, the shared options, hidden aliases of old option spellings and ``--device`` validation.

Commands are thin (parse → one library call → print); see docs/architecture.md ("adding a command")."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import types
import typing
from collections.abc import Callable, Iterable, Sequence
from enum import Enum
from pathlib import Path
from typing import Any

import click
import torch
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from typer.core import TyperCommand, TyperOption

from difflens.analysis.model_error import ERRORS
from difflens.data.sources import SCALES
from difflens.diffusion import schedules
from difflens.diffusion.estimators import ESTIMATORS
from difflens.diffusion.processes import PROCESSES, TARGETS
from difflens.diffusion.samplers import METHODS
from difflens.errors import DifflensError
from difflens.kernel import resolve_device
from difflens.kernel.neighbours import BACKENDS
from difflens.kernel.screening import PRECISIONS
from difflens.models.load import DIFFUSERS_TARGETS
from difflens.models.nets import ARCHS

console = Console(stderr=True)


def choice(name: str, values: Iterable[str]) -> type[Enum]:
    """A str Enum (typer's choice type) whose members are a library registry's names."""
    return Enum(name, {v: v for v in values}, type=str)


ProcessName = choice("ProcessName", PROCESSES)
TargetName = choice("TargetName", TARGETS)
EstimatorName = choice("EstimatorName", ESTIMATORS)
ScaleName = choice("ScaleName", SCALES)
PrecisionName = choice("PrecisionName", PRECISIONS)
SamplerName = choice("SamplerName", METHODS)
ArchName = choice("ArchName", ARCHS)
ErrorName = choice("ErrorName", ERRORS)
BackendName = choice("BackendName", BACKENDS)
ScheduleUnits = choice("ScheduleUnits", schedules.UNITS)
PredictionType = choice("PredictionType", DIFFUSERS_TARGETS)

# Old spellings kept for one release: accepted, hidden from --help (only where they are not the option's name).
OLD_SPELLINGS = {"--samples", "-M", "--scheduler", "--batch", "--denoiser"}

DATA_HELP = "Data spec: digits (default), lfw, PATH.npy, PATH.npz[:KEY], an image folder, or toy:NAME[:k=v,...]."
DataOpt = typer.Option("digits", "--data", "-d", help=DATA_HELP)
ScaleOpt = typer.Option(ScaleName.auto, help="auto: integer/image data → [−1, 1], floats as given.")
SeedOpt = typer.Option(0, help="Random seed: same seed, same results.")
DeviceOpt = typer.Option("cpu", help="Where models and the kernel run: cpu, cuda, cuda:N or mps.")
WorkersOpt = typer.Option(None, "--workers", help="Run the kernel on a local dask cluster of N worker processes.")
DaskOpt = typer.Option(
    None, "--dask-scheduler", "--scheduler", help="Run the kernel on an existing dask cluster (tcp://host:8786)."
)
PrecisionOpt = typer.Option(
    PrecisionName.exact,
    help="fast: an int8 screen skips training points of provably negligible weight (same answer, < 1e-16 of "
    "the mass skipped); 3-4.5x faster where the posterior sits on a few points (low noise), no faster at high noise.",
)
FastTolOpt = typer.Option(1e-16, "--fast-tol", help="With --precision fast: most posterior mass skipped per query.")
ChunkOpt = typer.Option(None, help="Data rows per kernel chunk [default: from free memory].")
ThreadsOpt = typer.Option(0, help="Torch CPU threads (0 = torch's default).")
SigmasOpt = typer.Option("0.002:80:24", help="Noise levels: LO:HI:N log grid or a comma list.")
ModelOpt = typer.Option(
    None,
    "--model",
    "-m",
    help="oracle, a run folder, ckpt .pt/.safetensors, diffusers:DIR, module:attr or file.py:attr.",
)


def out_opt(default: str) -> typing.Any:
    return typer.Option(Path(default), "--out", "-o", help="Output directory.")


def queries_opt(default: int, help: str = "Noisy queries per noise level for the optimal loss.") -> typing.Any:
    return typer.Option(default, "--queries-per-level", "--samples", "-M", help=help)


def check_device(name: str) -> torch.device:
    """``--device`` checked before any work: a device that is present, or one clear line."""
    return resolve_device(name)


def set_threads(threads: int) -> None:
    if threads:
        torch.set_num_threads(threads)


def friendly_errors(fn: Callable) -> Callable:
    """Bad input ends the command with one clear line on stderr and exit code 2 (Ctrl-C: 130)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except DifflensError as exc:
            console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except MemoryError:
            console.print("[bold red]error:[/] out of memory: lower --chunk-size or the number of queries")
            raise typer.Exit(2) from None
        except KeyboardInterrupt as exc:
            console.print(str(exc) or "interrupted", highlight=False)  # a run says what it kept
            raise typer.Exit(130) from None

    return wrapper


class Bars:
    """Rich progress bars handed to library functions as ``progress(description, total) -> advance(n)``."""

    def __init__(self):
        self.bar = Progress(
            TextColumn("[progress.description]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )

    def __enter__(self) -> Bars:
        self.bar.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.bar.__exit__(*exc)

    def __call__(self, description: str, total: int | None, completed: int = 0) -> Callable[[int], None]:
        task = self.bar.add_task(description, total=total, completed=completed)
        return lambda n=1: self.bar.advance(task, n)


def value(v: Any) -> Any:
    """An Enum choice's string, anything else as given."""
    return v.value if isinstance(v, Enum) else v


def int_list(text: str, name: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise DifflensError(f"{name} must be a comma-separated list of integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise DifflensError(f"{name} needs positive integers, got {text!r}")
    return values


def float_list(text: str, what: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise DifflensError(f"cannot parse {what} {text!r}: use a comma list like 0.1,0.2") from None
    if not values:
        raise DifflensError(f"{what} is empty")
    return values


# ---- hidden aliases: an option lists its old spellings after its name; --help shows only the new ones


class AliasOption(TyperOption):
    def get_help_record(self, ctx: click.Context) -> tuple[str, str] | None:
        opts = self.opts
        self.opts = [o for o in opts if o not in OLD_SPELLINGS or o == opts[0]]
        try:
            return super().get_help_record(ctx)
        finally:
            self.opts = opts


class AliasCommand(TyperCommand):
    """A command whose options' old spellings work but stay out of --help."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for p in self.params:
            if isinstance(p, TyperOption) and any(o in OLD_SPELLINGS for o in p.opts[1:]):
                p.__class__ = AliasOption


# ---- options generated from a config dataclass's fields (the dataclass is the one source of defaults)


def _field_type(hint) -> tuple[type, bool]:
    """(CLI type, optional?) of a dataclass field's type hint."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return args[0], True
    if typing.get_origin(hint) is tuple:
        return str, False  # a comma list
    return hint, False


def config_options(
    cls: type,
    help: dict[str, str],
    *,
    into: str,
    decls: dict[str, tuple[str, ...]] | None = None,
    choices: dict[str, type[Enum]] | None = None,
    build: Callable[[dict], typing.Any] | None = None,
) -> Callable[[Callable], Callable]:
    """Add one option per field named in ``help`` (default, type and choices from the dataclass ``cls``) to
    a command; the command receives them as ``into=cls(**fields)`` (or ``build(fields)``)."""
    decls, choices = decls or {}, choices or {}
    hints = typing.get_type_hints(cls)
    defaults = {f.name: f.default for f in dataclasses.fields(cls)}
    params, kinds = [], {}
    for name, text in help.items():
        kind, _optional = _field_type(hints[name])
        default = defaults[name]
        if name in choices:
            kind, default = choices[name], choices[name](default)
        elif typing.get_origin(hints[name]) is tuple:
            kinds[name] = typing.get_args(hints[name])[0]
            default = ",".join(map(str, default))
        opt = typer.Option(default, *decls.get(name, ()), help=text)
        params.append(inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=opt, annotation=kind))

    def decorate(fn: Callable) -> Callable:
        sig = inspect.signature(fn)
        own = [p for p in sig.parameters.values() if p.name != into]

        @functools.wraps(fn)
        def command(**kwargs):
            fields = {}
            for name in help:
                v = value(kwargs.pop(name))
                kind = kinds.get(name)
                if kind is int:
                    v = int_list(v, "--" + name.replace("_", "-"))
                elif kind is str:
                    v = tuple(t.strip() for t in v.split(",") if t.strip())
                fields[name] = v
            return fn(**kwargs, **{into: build(fields) if build else cls(**fields)})

        del command.__wrapped__  # typer reads the signature below, not fn's
        command.__signature__ = sig.replace(parameters=[*params, *own])
        command.__annotations__ = {
            **{k: v for k, v in typing.get_type_hints(fn).items() if k != into},
            **{p.name: p.annotation for p in params},
        }
        return command

    return decorate


def register(group: typer.Typer, name: str, fn: Callable) -> None:
    """Add ``fn`` to ``group`` as command ``name`` with friendly errors and hidden old spellings."""
    group.command(name, cls=AliasCommand)(friendly_errors(fn))


def require_one(what: Sequence[tuple[str, object]], at_most: bool = False) -> None:
    """Exactly one (or at most one) of the named options is given."""
    given = [n for n, v in what if v is not None]
    if len(given) > 1 or (not at_most and not given):
        names = " or ".join(n for n, _ in what)
        raise DifflensError(f"give {'at most' if at_most else 'exactly'} one of {names}")
