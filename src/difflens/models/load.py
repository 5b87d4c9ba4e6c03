"""Model specs → Denoisers: the oracle, difflens checkpoints, diffusers UNets, any Python callable.

Specs understood by ``load_denoiser``:

* ``oracle`` — the empirical optimal denoiser of the training data
* ``RUN_DIR`` or ``ckpt.pt`` / ``model.safetensors`` written by ``difflens train`` (self-describing)
* ``diffusers:DIR`` (or a DIR holding a diffusers ``config.json`` or pipeline ``model_index.json``):
  a ``UNet2DModel`` (the pipeline folder or its ``unet/``) read in the units it was trained in: the
  scheduler config beside it (``PIPE/scheduler/scheduler_config.json``) or given as ``scheduler=``
  sets the prediction type (epsilon / v_prediction / sample) and the discrete β schedule; without
  one the model is refused unless ``prediction_type=`` is given (then diffusers' default schedule)
* ``module:attr`` or ``path/file.py:attr`` — a network ``net(x_in, t_in)``; a class is instantiated
  with no arguments; ``checkpoint`` (.pt/.safetensors state dict) is loaded into it. Its
  parametrization (process, target, time scale) is given by the caller (default: an EDM-style
  denoiser ``net(x̃, σ) → x0``).
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import json
import pickle
import pickletools
import sys
import warnings
import zipfile
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from difflens.data import Dataset, check_same_layout
from difflens.diffusion.precond import DiscreteVP, Parametrization
from difflens.errors import DifflensError, require
from difflens.models.adapters import NetDenoiser
from difflens.models.empirical import EmpiricalDenoiser
from difflens.models.nets import build_net, count_params

CHECKPOINT_FORMAT = "difflens-checkpoint/1"


@dataclass
class LoadedModel:
    """A denoiser and what is known about it (parametrization, training recipe and data, step)."""

    denoiser: nn.Module
    info: dict = field(default_factory=dict)

    @property
    def param(self) -> Parametrization | None:
        return getattr(self.denoiser, "param", None)


def default_shape(data_shape: tuple[int, ...]) -> tuple[int, ...]:
    """Network input shape for a sample shape: grey images (H, W) get a channel axis."""
    return (1, *data_shape) if len(data_shape) == 2 else tuple(data_shape)


def load_denoiser(
    spec: str,
    *,
    data: Dataset | np.ndarray | torch.Tensor | None = None,
    checkpoint: str | Path | None = None,
    process: str | None = None,
    target: str | None = None,
    time_scale: float | None = None,
    shape: tuple[int, ...] | None = None,
    scheduler: str | Path | None = None,
    prediction_type: str | None = None,
    ema: bool = True,
    trust_pickle: bool = False,
    device: torch.device | str = "cpu",
) -> LoadedModel:
    """Open a model spec (see module doc) as a VE-form denoiser in eval mode, on ``device`` (a network's
    weights are moved there; the oracle's kernel runs there).

    diffusers models: ``scheduler`` is a scheduler_config.json, its folder or a pipeline folder (default:
    ``../scheduler/`` beside the UNet); ``prediction_type`` overrides the config's. For diffusers models
    and difflens runs, ``process``/``target`` do not change how the network is read (report units only)."""
    path = Path(spec.removeprefix("diffusers:"))
    is_diffusers = spec.startswith("diffusers:") or (path.is_dir() and _is_diffusers_dir(path))
    if not is_diffusers and (scheduler is not None or prediction_type is not None):
        raise DifflensError(
            f"model {spec!r}: a scheduler config and a prediction type apply to diffusers models only "
            "(callables take process/target)"
        )
    if spec == "oracle":
        if data is None:
            raise DifflensError("the oracle model needs training data")
        return LoadedModel(EmpiricalDenoiser(data, device=device), {"spec": spec, "kind": "oracle"})
    data_shape = tuple(data.shape) if data is not None else None
    net_shape = tuple(shape) if shape else (default_shape(data_shape) if data_shape else None)
    if is_diffusers:
        note = (
            "the scheduler config's process is used; process/target set report units only"
            if (process or target)
            else None
        )
        model = _load_diffusers(path, scheduler, prediction_type, net_shape, note)
    elif path.is_dir() or path.suffix in (".pt", ".pth", ".safetensors"):
        model = load_checkpoint(path, ema=ema, trust_pickle=trust_pickle, param=_param(process, target, time_scale))
        if model.info["kind"] == "difflens" and (process or target or time_scale):
            model.info["note"] = "a difflens run's own parametrization is used; process/target set report units only"
        if model.denoiser.shape is None and net_shape is not None:
            model.denoiser.shape = net_shape
        check_same_layout(model.denoiser.shape or (), net_shape or (), f"model {spec} inputs", "data")
    elif ":" in spec:
        net = load_callable(spec)
        if checkpoint is not None:
            _load_state(net, Path(checkpoint))
        param = _param(process, target, time_scale) or Parametrization()
        model = LoadedModel(NetDenoiser(net, param, net_shape), {"spec": spec, "kind": "callable"})
    else:
        raise DifflensError(
            f"model {spec!r}: not found; use oracle, a run folder or checkpoint (.pt/.safetensors), "
            "diffusers:DIR, or a callable module:attr / file.py:attr"
        )
    model.denoiser.to(torch.device(device)).eval()
    model.info.setdefault("spec", spec)
    model.info["param"] = model.param.describe() if model.param else None
    model.info["parameters"] = count_params(model.denoiser)
    return model


def _param(process: str | None, target: str | None, time_scale: float | None) -> Parametrization | None:
    if process is None and target is None and time_scale is None:
        return None
    return Parametrization.of(process or "edm", target or "x0", 1.0 if time_scale is None else time_scale)


# ---------------------------------------------------------------- difflens checkpoints


def checkpoint_meta(ckpt: dict) -> dict:
    """The JSON-able description stored with a difflens checkpoint (everything but the weights)."""
    return {k: v for k, v in ckpt.items() if not k.endswith("state_dict")}


def load_checkpoint(
    path: Path, *, ema: bool = True, trust_pickle: bool = False, param: Parametrization | None = None
) -> LoadedModel:
    """A difflens training checkpoint (.pt) or exported model (.safetensors), or a run folder.

    ``param`` is the parametrization of a pickled network (a difflens run stores its own)."""
    path = Path(path)
    if path.is_dir():
        final = path / "model.safetensors"
        ckpts = sorted(path.glob("ckpt_*.pt"))
        if final.exists():
            path = final
        elif ckpts:
            path = ckpts[-1]
        else:
            raise DifflensError(f"model {path}: the folder holds no model.safetensors or ckpt_*.pt")
    if not path.exists():
        raise DifflensError(f"model {path}: no such file")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file, safe_open

        try:
            with safe_open(str(path), "pt") as fh:
                meta_text = (fh.metadata() or {}).get("difflens")
            weights = load_file(str(path))
        except (SafetensorError, OSError) as exc:
            raise DifflensError(f"model {path}: cannot read safetensors file ({exc})") from None
        if meta_text is None:
            raise DifflensError(
                f"model {path}: plain weights without an architecture; pass the network as module:Class "
                f"and this file as --checkpoint"
            )
        meta = json.loads(meta_text)
        state = weights
    else:
        ckpt = _torch_load(path, trust_pickle)
        if isinstance(ckpt, nn.Module):
            return LoadedModel(NetDenoiser(ckpt, param or Parametrization()), {"spec": str(path), "kind": "module"})
        if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
            raise DifflensError(
                f"model {path}: not a difflens checkpoint (a bare state dict needs its architecture: "
                "pass the network as module:Class and this file as --checkpoint)"
            )
        meta = checkpoint_meta(ckpt)
        state = ckpt["ema_state_dict"] if ema else ckpt["state_dict"]
    net = build_net(meta["arch"])
    net.load_state_dict(state)
    p = meta["param"]
    saved = Parametrization.of(p["process"], p["target"], p["time_scale"], p.get("noise_conditioned", True))
    info = {"spec": str(path), "kind": "difflens", **meta}
    return LoadedModel(NetDenoiser(net, saved, meta.get("shape")), info)


def _is_pickle_container(path: Path) -> bool:
    """Whether the file is a torch zip archive (with its data.pkl) or starts with a well-formed pickle.

    Only parsed (pickletools.genops), never executed, so this is safe on untrusted files."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                name = next((n for n in zf.namelist() if n.endswith("data.pkl")), None)
                if name is None:
                    return False
                deque(pickletools.genops(zf.read(name)), maxlen=0)  # parse to the end, keep nothing
            return True
        with path.open("rb") as fh:
            if fh.read(1) != b"\x80":  # protocol ≥ 2 pickles (all torch.save formats) start with PROTO
                return False
            fh.seek(0)
            deque(pickletools.genops(fh), maxlen=0)  # the first pickle only: stops at its STOP opcode
        return True
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError, NotImplementedError):
        return False


def _torch_load(path: Path, trust_pickle: bool):
    """torch.load, safely: weights only unless ``trust_pickle``; every failure is one line."""
    if not _is_pickle_container(path):
        raise DifflensError(f"model {path}: not a checkpoint (not a zip/pickle file)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        if not trust_pickle:
            raise DifflensError(
                f"model {path}: the file holds pickled Python objects; load it only if you trust it "
                "(--trust-pickle), or save a state dict instead"
            ) from None
    except Exception as exc:  # torch raises many types for damaged files; report them in one line
        raise DifflensError(f"model {path}: cannot read the checkpoint ({_first_line(exc)})") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # unpickling runs arbitrary code: any error, reported in one line
        raise DifflensError(f"model {path}: cannot read the checkpoint ({_first_line(exc)})") from None
    if not callable(obj):
        raise DifflensError(f"model {path}: the pickled object is a {type(obj).__name__}, not a network")
    return obj


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def _load_state(net, path: Path) -> None:
    if not isinstance(net, nn.Module):
        raise DifflensError("--checkpoint needs the callable to be a torch nn.Module (or a class of one)")
    if not path.exists():
        raise DifflensError(f"checkpoint {path}: no such file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = _torch_load(path, trust_pickle=False)
        if isinstance(state, dict) and state.get("format") == CHECKPOINT_FORMAT:
            state = state["ema_state_dict"]
        elif isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
    try:
        net.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as exc:
        first = str(exc).strip().splitlines()[0]
        raise DifflensError(f"checkpoint {path} does not fit the network: {first}") from None


# ---------------------------------------------------------------- callables


def load_callable(spec: str, what: str = "model") -> Any:
    """``module:attr`` or ``path/file.py:attr`` (attr may be dotted; ``py:module:attr`` is a deprecated
    spelling). Classes are instantiated; a function with no required arguments is a factory, called once."""
    if spec.startswith("py:"):
        spec = spec[3:]
        warnings.warn(
            f"the py: prefix is deprecated; write {spec!r} (as a --model it gets one σ per row)",
            FutureWarning,
            stacklevel=2,
        )
    where, _, attr = spec.rpartition(":")
    if not where or not attr:
        raise DifflensError(f"{what} {spec!r}: use module:attribute or path/file.py:attribute")
    if where.endswith(".py"):
        file = Path(where)
        if not file.is_file():
            raise DifflensError(f"{what} {spec!r}: no such file {file}")
        mod_spec = importlib.util.spec_from_file_location(f"difflens_user_{file.stem}", file)
        module = importlib.util.module_from_spec(mod_spec)
        sys.modules[mod_spec.name] = module
        try:
            mod_spec.loader.exec_module(module)
        except Exception as exc:
            raise DifflensError(f"{what} {spec!r}: importing {file} failed ({type(exc).__name__}: {exc})") from None
    else:
        try:
            module = importlib.import_module(where)
        except ImportError as exc:
            raise DifflensError(f"{what} {spec!r}: cannot import module {where!r} ({exc})") from None
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise DifflensError(f"{what} {spec!r}: {where} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if isinstance(obj, type) or _is_factory(obj):
        try:
            obj = obj()
        except TypeError as exc:
            raise DifflensError(f"{what} {spec!r}: cannot build {attr}() without arguments ({exc})") from None
    if not callable(obj):
        raise DifflensError(f"{what} {spec!r}: {attr} is a {type(obj).__name__}, not a network or function")
    return obj


def _is_factory(obj) -> bool:
    """A plain function that takes no required arguments builds the callable instead of being it."""
    if not inspect.isfunction(obj):
        return False
    params = inspect.signature(obj).parameters.values()
    return not any(p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params)


# ---------------------------------------------------------------- diffusers


DIFFUSERS_TARGETS = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}
PREDICTION_NAMES = {"eps": "epsilon", "v": "v_prediction", "x0": "sample"}  # difflens names accepted too


def _is_diffusers_dir(path: Path) -> bool:
    if (path / "model_index.json").exists() or (path / "unet" / "config.json").exists():
        return True
    cfg = path / "config.json"
    return cfg.exists() and "_class_name" in _read_json(cfg, "model config")


def _read_json(path: Path, what: str) -> dict:
    try:
        obj = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DifflensError(f"{what} {path}: not a readable JSON file ({exc})") from None
    if not isinstance(obj, dict):
        raise DifflensError(f"{what} {path}: not a JSON object")
    return obj


def _scheduler_config_path(unet_dir: Path, scheduler: str | Path | None) -> Path | None:
    """The scheduler config: ``scheduler`` (a scheduler_config.json, a folder holding one, or a pipeline
    folder), else where a diffusers pipeline keeps it beside its UNet (``PIPE/scheduler/``), else None."""
    if scheduler is not None:
        given = Path(scheduler)
        if given.is_dir():
            found = next(
                (
                    c
                    for c in (given / "scheduler_config.json", given / "scheduler" / "scheduler_config.json")
                    if c.is_file()
                ),
                None,
            )
            if found is None:
                raise DifflensError(f"scheduler {given}: the folder holds no scheduler_config.json (nor scheduler/)")
            return found
        if not given.is_file():
            raise DifflensError(f"scheduler config {given}: no such file or folder")
        return given
    beside = (unet_dir.parent / "scheduler" / "scheduler_config.json", unet_dir / "scheduler_config.json")
    return next((c for c in beside if c.is_file()), None)


def _load_diffusers(
    path: Path, scheduler: str | Path | None, prediction_type: str | None, shape, note: str | None
) -> LoadedModel:
    UNet2DModel = require("diffusers", "diffusers", "diffusers models").UNet2DModel
    if not path.is_dir():
        raise DifflensError(f"model diffusers:{path}: no such folder")
    unet_dir = path / "unet" if (path / "unet" / "config.json").exists() else path
    if not (unet_dir / "config.json").is_file():
        raise DifflensError(f"model diffusers:{path}: no config.json (give a pipeline folder or its unet/ folder)")
    found = _scheduler_config_path(unet_dir, scheduler)
    if found is None and prediction_type is None:
        raise DifflensError(
            f"model diffusers:{path}: no scheduler config beside the UNet (looked for "
            f"{unet_dir.parent / 'scheduler' / 'scheduler_config.json'}); pass --scheduler DIR|FILE, or "
            "--prediction-type to assume diffusers' default DDPM schedule (linear β 1e-4…0.02, 1000 steps)"
        )
    sched = _ddpm_scheduler(_read_json(found, "scheduler config") if found else {}, found)
    try:
        unet = UNet2DModel.from_pretrained(str(unet_dir), low_cpu_mem_usage=False)
    except (OSError, ValueError, TypeError) as exc:
        raise DifflensError(f"model {unet_dir}: cannot load a UNet2DModel ({_first_line(exc)})") from None
    info = {"kind": "diffusers", "unet": str(unet_dir), "scheduler_config": str(found) if found else None}
    if found is None:
        assumed = "no scheduler config: diffusers' default DDPM schedule assumed (linear β 1e-4…0.02, 1000 steps)"
        note = f"{assumed}; {note}" if note else assumed
    if note:
        info["note"] = note
    return diffusers_denoiser(unet, sched, prediction_type, shape, info=info)


def _ddpm_scheduler(cfg: dict, where: Path | None):
    """The training noise schedule of a DDPM-family scheduler config (any class that defines its noise by a
    β schedule: DDPM, DDIM, PNDM, Euler, DPM-Solver…), as diffusers' DDPMScheduler computes it."""
    diffusers = require("diffusers", "diffusers", "diffusers models")
    name = cfg.get("_class_name")
    cls = getattr(diffusers, name, None) if isinstance(name, str) else None
    if cls is not None and "beta_schedule" not in inspect.signature(cls.__init__).parameters:
        raise DifflensError(
            f"scheduler config {where}: {name} does not define a discrete β schedule; "
            "difflens reads DDPM-family schedulers (DDPM, DDIM, PNDM, Euler, DPM-Solver…)"
        )
    if cfg.get("timestep_type", "discrete") != "discrete":
        raise DifflensError(
            f"scheduler config {where}: timestep_type {cfg['timestep_type']!r} (continuous time input) is not "
            "supported; wrap the UNet as a callable with its own parametrization"
        )
    if cfg.get("rescale_betas_zero_snr"):
        raise DifflensError(
            f"scheduler config {where}: zero terminal SNR schedules (rescale_betas_zero_snr) are not supported"
        )
    known = inspect.signature(diffusers.DDPMScheduler.__init__).parameters
    try:
        return diffusers.DDPMScheduler(**{k: v for k, v in cfg.items() if k in known})
    except (NotImplementedError, ValueError, TypeError) as exc:
        raise DifflensError(f"scheduler config {where}: cannot build its noise schedule ({exc})") from None


def diffusers_denoiser(
    unet: nn.Module,
    scheduler: Any,  # a diffusers DDPM-family scheduler (its config and alphas_cumprod are read)
    prediction_type: str | None = None,
    shape: tuple[int, ...] | None = None,
    info: dict | None = None,
) -> LoadedModel:
    """A diffusers UNet2DModel with a DDPM-family scheduler as a VE-form denoiser.

    ``prediction_type`` (epsilon / v_prediction / sample, or eps / v / x0) overrides the scheduler's.
    The info records what was read: prediction type, β schedule, number of training timesteps."""
    cfg = scheduler.config
    pred = PREDICTION_NAMES.get(prediction_type, prediction_type) if prediction_type else cfg.prediction_type
    if pred not in DIFFUSERS_TARGETS:
        raise DifflensError(f"unsupported diffusers prediction_type {pred!r}; use {', '.join(DIFFUSERS_TARGETS)}")
    process = DiscreteVP(tuple(float(a) for a in scheduler.alphas_cumprod))
    param = Parametrization(process, DIFFUSERS_TARGETS[pred])
    ucfg = unet.config
    size = ucfg.sample_size if isinstance(ucfg.sample_size, list | tuple) else (ucfg.sample_size, ucfg.sample_size)
    check_same_layout(shape or (), (ucfg.in_channels, *size), "data", "the UNet's inputs")
    net_shape = shape or (ucfg.in_channels, *size)
    trained = cfg.get("trained_betas") is not None
    ends = not trained and cfg.beta_schedule in ("linear", "scaled_linear", "sigmoid")  # cosine ignores β ends
    read = {
        "prediction_type": pred,
        "prediction_type_from": "argument" if prediction_type else "scheduler config",
        "beta_schedule": "trained_betas" if trained else cfg.beta_schedule,
        "beta_start": float(cfg.beta_start) if ends else None,
        "beta_end": float(cfg.beta_end) if ends else None,
        "num_train_timesteps": len(scheduler.alphas_cumprod),
    }
    return LoadedModel(NetDenoiser(unet, param, net_shape), {**(info or {}), **read})
