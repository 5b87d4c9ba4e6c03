"""Settings shared by the distillation stages: the denoiser architecture (``ModelSpec``), the sampler
(``SamplerSpec``) and σ_data of a training set."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from difflens.lab.distill.models import CondDenoiser, make_denoiser
from difflens.lab.distill.sampling import sample
from difflens.lab.distill.train import Pairs


@dataclass
class ModelSpec:
    """Architecture of a conditional denoiser (see ``models.make_denoiser``) and the device it is built
    on; training and sampling then run where it lives."""

    arch: str = "mlp"
    width: int = 128
    depth: int = 3
    device: torch.device | str = "cpu"

    def build(
        self, x_shape: Sequence[int], cond_shape: Sequence[int], num_tasks: int, sigma_data: float, seed: int
    ) -> CondDenoiser:
        return make_denoiser(
            tuple(x_shape),
            tuple(cond_shape),
            num_tasks=num_tasks,
            arch=self.arch,
            width=self.width,
            depth=self.depth,
            sigma_data=sigma_data,
            seed=seed,
            device=self.device,
        )


@dataclass
class SamplerSpec:
    """Settings of the EDM Heun sampler used for pseudo-labels and evaluation. ``clip``: clamp the final
    samples to [−clip, clip] (the data range, e.g. 1 for images in [−1, 1]), so that a specialist's rare
    wild extrapolations do not end up as pseudo-labels. Sampling runs on the denoiser's device; the
    samples come back on the CPU."""

    steps: int = 18
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    churn: float = 0.0
    chunk: int = 2048
    clip: float | None = None

    def __call__(self, denoiser, cond: torch.Tensor, task, x_shape, generator: torch.Generator) -> torch.Tensor:
        task = torch.as_tensor(task, dtype=torch.long).reshape(-1).expand(len(cond))
        parts = [
            sample(
                denoiser,
                cond[i : i + self.chunk],
                task[i : i + self.chunk],
                tuple(x_shape),
                steps=self.steps,
                sigma_min=self.sigma_min,
                sigma_max=self.sigma_max,
                churn=self.churn,
                generator=generator,
            )
            for i in range(0, len(cond), self.chunk)
        ]
        x = (torch.cat(parts) if parts else torch.empty((0, *x_shape))).cpu()
        return x.clamp(-self.clip, self.clip) if self.clip is not None else x


def data_sigma(data: Sequence[Pairs]) -> float:
    """σ_data for EDM preconditioning: the standard deviation of all targets (at least 1e-3)."""
    x = torch.cat([p.x.reshape(len(p), -1) for p in data])
    return max(float(x.std()), 1e-3) if x.numel() > 1 else 0.5
