"""Model specs → Denoisers: the oracle, difflens checkpoints, diffusers UNets, any Python callable.

Specs understood by ``load_denoiser``:

* ``oracle`` — the empirical optimal denoiser of the training data
* ``RUN_DIR`` or ``ckpt.pt`` / ``model.safetensors`` written by ``difflens train`` (self-describing)
* ``diffusers:DIR`` (or a DIR holding a diffusers ``config.json`` or pipeline ``model_index.json``):
  a ``UNet2DModel`` with its scheduler config (prediction type epsilon / v_prediction / sample)
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
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from difflens.diffusion.precond import DiscreteVP, Parametrization
from difflens.errors import DifflensError
from difflens.models.adapters import NetDenoiser, OracleDenoiser
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
    data=None,
    checkpoint: str | Path | None = None,
    process: str | None = None,
    target: str | None = None,
    time_scale: float | None = None,
    shape: tuple[int, ...] | None = None,
    scheduler: str | Path | None = None,
    ema: bool = True,
    trust_pickle: bool = False,
) -> LoadedModel:
    """Open a model spec (see module doc) as a VE-form denoiser in eval mode."""
    if spec == "oracle":
        if data is None:
            raise DifflensError("the oracle model needs training data")
        return LoadedModel(OracleDenoiser(data), {"spec": spec, "kind": "oracle"})
    data_shape = tuple(data.shape) if data is not None else None
    net_shape = tuple(shape) if shape else (default_shape(data_shape) if data_shape else None)
    path = Path(spec.removeprefix("diffusers:"))
    if spec.startswith("diffusers:") or (path.is_dir() and _is_diffusers_dir(path)):
        model = _load_diffusers(path, scheduler, target, net_shape)
    elif path.is_dir() or path.suffix in (".pt", ".pth", ".safetensors"):
        model = load_checkpoint(path, ema=ema, trust_pickle=trust_pickle, param=_param(process, target, time_scale))
        if model.info["kind"] == "difflens" and (process or target or time_scale):
            model.info["note"] = "a difflens run's own parametrization is used; process/target set report units only"
        if model.denoiser.shape is None and net_shape is not None:
            model.denoiser.shape = net_shape
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
    model.denoiser.eval()
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


def _torch_load(path: Path, trust_pickle: bool):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        if not trust_pickle:
            raise DifflensError(
                f"model {path}: the file holds pickled Python objects; load it only if you trust it "
                "(--trust-pickle), or save a state dict instead"
            ) from None
    except (OSError, RuntimeError, EOFError) as exc:
        raise DifflensError(f"model {path}: cannot read the checkpoint ({exc})") from None
    obj = torch.load(path, map_location="cpu", weights_only=False)
    if not callable(obj):
        raise DifflensError(f"model {path}: the pickled object is a {type(obj).__name__}, not a network")
    return obj


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


def load_callable(spec: str, what: str = "model"):
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


def _is_diffusers_dir(path: Path) -> bool:
    if (path / "model_index.json").exists() or (path / "unet" / "config.json").exists():
        return True
    cfg = path / "config.json"
    return cfg.exists() and "_class_name" in json.loads(cfg.read_text())


def _load_diffusers(path: Path, scheduler: str | Path | None, target: str | None, shape) -> LoadedModel:
    try:
        from diffusers import DDPMScheduler, UNet2DModel
    except ImportError:
        raise DifflensError("diffusers models need the diffusers package (pip install diffusers)") from None
    if not path.is_dir():
        raise DifflensError(f"model diffusers:{path}: no such folder")
    unet_dir = path / "unet" if (path / "unet" / "config.json").exists() else path
    try:
        unet = UNet2DModel.from_pretrained(str(unet_dir))
    except (OSError, ValueError) as exc:
        raise DifflensError(f"model {path}: cannot load a UNet2DModel ({exc})") from None
    candidates = (
        [Path(scheduler)]
        if scheduler
        else [path / "scheduler" / "scheduler_config.json", path / "scheduler_config.json"]
    )
    found = next((c for c in candidates if c.exists()), None)
    if scheduler and found is None:
        raise DifflensError(f"scheduler config {scheduler}: no such file")
    sched = DDPMScheduler.from_config(json.loads(found.read_text())) if found else DDPMScheduler()
    return diffusers_denoiser(unet, sched, target, shape, info={"kind": "diffusers", "scheduler": str(found)})


def diffusers_denoiser(unet, scheduler, target: str | None = None, shape=None, info: dict | None = None) -> LoadedModel:
    """A diffusers UNet2DModel with a DDPM-family scheduler as a VE-form denoiser."""
    pred = scheduler.config.prediction_type
    if target is None and pred not in DIFFUSERS_TARGETS:
        raise DifflensError(f"unsupported diffusers prediction_type {pred!r}; use {', '.join(DIFFUSERS_TARGETS)}")
    process = DiscreteVP(tuple(float(a) for a in scheduler.alphas_cumprod))
    param = Parametrization(process, target or DIFFUSERS_TARGETS[pred])
    cfg = unet.config
    size = cfg.sample_size if isinstance(cfg.sample_size, list | tuple) else (cfg.sample_size, cfg.sample_size)
    net_shape = shape or (cfg.in_channels, *size)
    return LoadedModel(NetDenoiser(unet, param, net_shape), {**(info or {}), "prediction_type": pred})
