"""A model's error per noise level on a split, with the noise fixed per image (docs/method.md).

Shared by ``diagnose`` (model loss vs the optimal loss), ``gap`` (generalization gap), ``scaling``
(losses of runs) and the ``schedule`` command, so that they measure the same thing the same way.

Seeding, one scheme for all: a stream number separates what one seed must keep independent
(stream 0 = the training split, 1 = the held-out/validation split). The image subsample of a split
is ``numpy.random.default_rng([seed, stream])``; its noise is a torch generator seeded with
``SeedSequence([seed, stream])``. Both are pure functions of (seed, stream): every level and every
checkpoint evaluated with one seed sees the same images and the same noise, so differences between
levels and between checkpoints are not Monte-Carlo noise. Images and noise are drawn on the CPU and
only the noisy inputs go to the denoiser's ``device``, so the numbers do not depend on where it runs.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt
import torch

from difflens.data import Dataset, as_dataset
from difflens.errors import DifflensError

ERRORS = ("mse", "l2")
TRAIN, HELD = 0, 1  # streams


def pick_images(
    data: Dataset | np.ndarray | torch.Tensor, limit: int | None, seed: int, stream: int = TRAIN
) -> torch.Tensor:
    """Up to ``limit`` rows (n, D) of a split: all of them, or a seeded random subset in data order."""
    ds = as_dataset(data)
    if limit is None or limit >= ds.n:
        return ds.rows(0, ds.n)
    idx = np.sort(np.random.default_rng([seed, stream]).choice(ds.n, size=limit, replace=False))
    return ds.take(idx)


def fixed_noise(n: int, dim: int, draws: int = 1, seed: int = 0, stream: int = TRAIN) -> torch.Tensor:
    """(draws, n, D) standard normal noise, a pure function of (seed, stream)."""
    gen = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, stream]).generate_state(1)[0]))
    return torch.randn(draws, n, dim, generator=gen, dtype=torch.float32)


@torch.no_grad()
def level_errors(
    denoiser: Callable,
    images: torch.Tensor,
    noise: torch.Tensor,
    sigmas: npt.ArrayLike,
    *,
    error: str = "mse",
    batch: int = 512,
    feature: Callable | None = None,
    device: torch.device | str | None = None,
) -> np.ndarray:
    """(levels, n) float64 error of ``denoiser(y + s·n, s)`` against each image y, averaged over the
    noise draws (``noise`` is (draws, n, D) or (n, D)): per-dimension squared error (``mse``, a
    training loss in x0 units) or the unsquared L2 norm (``l2``). With a ``feature`` map (n, D) → (n, F)
    the error is taken between the features of the estimate and of the image instead. The denoiser's
    inputs are sent to ``device`` (default: left on the CPU) and its outputs compared on the CPU."""
    if error not in ERRORS:
        raise DifflensError(f"unknown error {error!r}; choose one of {', '.join(ERRORS)}")
    noise = noise[None] if noise.ndim == 2 else noise
    n, dim = images.shape
    y_all = images.float()[None].expand(len(noise), -1, -1).reshape(-1, dim)
    flat_noise = noise.reshape(-1, dim)
    sig = np.atleast_1d(np.asarray(sigmas, dtype=np.float64))
    out = np.empty((len(sig), n))
    for k, s in enumerate(sig):
        x_all = y_all + float(s) * flat_noise
        errs = []
        for i in range(0, len(y_all), batch):
            y = y_all[i : i + batch]
            x = x_all[i : i + batch] if device is None else x_all[i : i + batch].to(device)
            est = torch.as_tensor(denoiser(x, float(s))).cpu()
            if est.shape != y.shape:
                raise DifflensError(f"the denoiser returned shape {tuple(est.shape)} for input {tuple(y.shape)}")
            if feature is not None:
                est, y = torch.as_tensor(feature(est)), torch.as_tensor(feature(y))
                if est.ndim != 2 or est.shape != y.shape:
                    raise DifflensError(f"the feature map must return (n, F) for n inputs, got {tuple(est.shape)}")
            diff = est.double() - y.double()
            errs.append((diff * diff).mean(1) if error == "mse" else torch.linalg.vector_norm(diff, dim=1))
        out[k] = torch.cat(errs).reshape(len(noise), n).mean(0).numpy()
    return out


def split_errors(
    denoiser: Callable,
    data: Dataset,
    sigmas: npt.ArrayLike,
    *,
    images: int | None,
    seed: int,
    stream: int = TRAIN,
    draws: int = 1,
    error: str = "mse",
    batch: int = 512,
    device: torch.device | str | None = None,
) -> np.ndarray:
    """(levels, images) errors on up to ``images`` images of one split, with that split's fixed noise;
    the denoiser runs on ``device`` (see ``level_errors``)."""
    y = pick_images(data, images, seed, stream)
    noise = fixed_noise(len(y), y.shape[1], draws, seed, stream)
    return level_errors(denoiser, y, noise, sigmas, error=error, batch=batch, device=device)
