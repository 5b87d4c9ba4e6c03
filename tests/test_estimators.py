"""Stochastic optimal-loss estimators report honest standard errors: over repeated seeds, the mean
reported standard error matches the spread of the estimates themselves."""

import math

import numpy as np
import pytest
import torch

from difflens.analysis.optimal_loss import optimal_loss_curve
from difflens.data import load
from difflens.diffusion.estimators import grouped_stderr


def spread_and_reported(data, sigmas, seeds, **kw) -> tuple[np.ndarray, np.ndarray]:
    """(s.d. of the estimates over seeds, mean reported standard error) per level."""
    est, se = [], []
    for seed in seeds:
        c = optimal_loss_curve(data, sigmas, seed=seed, **kw)
        est.append([lv.optimal_loss_x0 for lv in c.levels])
        se.append([lv.stderr_x0 for lv in c.levels])
    return np.std(est, axis=0, ddof=1), np.mean(se, axis=0)


@pytest.mark.parametrize("kw", [dict(estimator="snis", subset=64), dict(estimator="cdol")])
def test_reported_stderr_matches_the_spread_over_seeds_on_digits(kw):
    """The s.d. of 30 estimates is itself known to ±13 % (χ with 29 d.o.f.), hence the 25 % band."""
    sd, se = spread_and_reported(load("digits"), [0.5, 2.0], range(30), samples=128, **kw)
    assert np.all(np.abs(se / sd - 1) < 0.25), (se, sd)


@pytest.mark.parametrize("estimator", ["snis", "cdol"])
def test_stderr_counts_the_shared_subset_on_a_sphere(estimator):
    """Points on a sphere at large noise: ‖x_n‖² is the same for every query, so the estimate's noise is
    almost all in ‖μ̂‖², which the queries sharing a subset share. Counting those queries as independent
    reports an error bar ~5× too small."""
    x = np.random.default_rng(0).standard_normal((400, 8))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    sd, se = spread_and_reported(x, [3.0], range(60), samples=64, estimator=estimator, subset=16)
    assert abs(se[0] / sd[0] - 1) < 0.25, (se, sd)


def test_grouped_stderr_brute_force():
    y = torch.from_numpy(np.random.default_rng(1).standard_normal(60))
    assert grouped_stderr(y, 1) == pytest.approx(float(y.std()) / math.sqrt(60), rel=1e-12)
    means = y.reshape(6, 10).mean(1)  # equal groups: the s.e. of the mean of the group means
    assert grouped_stderr(y, 10) == pytest.approx(float(means.std()) / math.sqrt(6), rel=1e-12)
    # unequal last group: the cluster formula written out
    g = np.arange(60) // 25
    dev = np.array([(y.numpy()[g == k] - y.numpy().mean()).sum() for k in range(3)])
    assert grouped_stderr(y, 25) == pytest.approx(math.sqrt(1.5 * (dev**2).sum()) / 60, rel=1e-12)
    assert math.isnan(grouped_stderr(y, 60))
