"""examples/diffusers_loop.py: a diffusers UNet2DModel + DDPMScheduler loop with the optimal-loss schedule
and the excess-loss monitor runs (a few steps, seconds) and writes the per-level excess to CSV and to a
TensorBoard event file that agree."""

import csv
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "diffusers_loop.py"


def _example():
    spec = importlib.util.spec_from_file_location("diffusers_loop", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("schedule", ["optimal", "ddpm"])
def test_diffusers_loop_writes_per_level_excess_to_csv_and_tensorboard(tmp_path, schedule):
    steps, batch, bins = 12, 32, 8
    monitor = _example().run(tmp_path, steps=steps, batch=batch, schedule_name=schedule, log_every=6, bins=bins)
    table = list(csv.DictReader((tmp_path / "excess.csv").open()))
    assert {int(r["step"]) for r in table} == {6, 12}
    # every sample lands at a level of the curve (its range holds the schedule's) or is counted as skipped
    assert sum(int(r["count"]) for r in table) + monitor.skipped == steps * batch
    if schedule == "optimal":
        assert monitor.skipped == 0
    for r in table:
        loss, opt, excess = float(r["loss"]), float(r["optimal"]), float(r["excess"])
        assert excess == pytest.approx(loss - opt, rel=1e-12, abs=1e-15)
        assert opt >= 0
        assert excess > 0  # a 12-step model is far from the optimal denoiser at every level
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    eps32 = 2.0**-24  # TensorBoard stores float32 scalars
    for r in table:
        logged = {e.step: e.value for e in events.Scalars(f"excess/{monitor.tag(float(r['sigma']))}")}
        assert abs(logged[int(r["step"])] - float(r["excess"])) <= eps32 * abs(float(r["excess"]))
    levels = {float(r["sigma"]) for r in table}
    assert len(levels) >= (bins if schedule == "optimal" else bins // 2)


def test_continuous_levels_match_the_schedulers_add_noise_at_its_timesteps():
    import diffusers

    example = _example()
    scheduler = diffusers.DDPMScheduler(num_train_timesteps=1000)
    abar = scheduler.alphas_cumprod.double().numpy()
    levels = np.sqrt((1 - abar) / abar)
    k = torch.tensor([0, 1, 17, 500, 998, 999])
    s = torch.as_tensor(levels[k.numpy()])
    assert torch.allclose(example.ddpm_timestep(s, levels), k.double(), rtol=0, atol=1e-9)
    g = torch.Generator().manual_seed(0)
    x0, eps = (
        torch.randn(6, 1, 8, 8, generator=g, dtype=torch.float64),
        torch.randn(6, 1, 8, 8, generator=g, dtype=torch.float64),
    )
    # both float64 (add_noise casts ᾱ to the samples' dtype): equal to float64 rounding
    assert torch.allclose(example.noisy(x0, eps, s), scheduler.add_noise(x0, eps, k), rtol=1e-12, atol=1e-12)
