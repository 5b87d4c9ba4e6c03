"""Memorization ratio and nearest-neighbour search against brute force."""

import numpy as np
import pytest
import torch

from difflens.analysis.memorization import memorization, nearest
from difflens.errors import DifflensError


def _brute_top2(q: np.ndarray, x: np.ndarray):
    d = np.linalg.norm(q[:, None, :].astype(np.float64) - x[None, :, :].astype(np.float64), axis=-1)
    order = np.argsort(d, axis=1, kind="stable")[:, :2]
    return np.take_along_axis(d, order, 1), order


@pytest.fixture(scope="module")
def setup():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 10)).astype(np.float32)
    near = x[rng.choice(300, 20)] + 1e-4 * rng.standard_normal((20, 10)).astype(np.float32)  # near-copies
    far = rng.standard_normal((30, 10)).astype(np.float32)
    return x, np.concatenate([near, far])


@pytest.mark.parametrize("backend", ["torch", "faiss"])
def test_top2_matches_brute_force(setup, backend):
    x, q = setup
    nb = nearest(q, x, 2, backend=backend, chunk_size=37)
    d, idx = _brute_top2(q, x)
    np.testing.assert_array_equal(nb.index, idx)
    np.testing.assert_allclose(nb.dist, d, rtol=1e-9, atol=1e-12)  # float64 re-measure: exact even for d1 ≈ 1e-4


def test_memorization_ratio_matches_brute_force(setup):
    x, q = setup
    d, _ = _brute_top2(q, x)
    for thr in (1 / 3, 0.5, 0.9):
        m = memorization(q, x, threshold=thr, chunk_size=64)
        assert m.memorization_ratio == pytest.approx(np.mean(d[:, 0] / d[:, 1] < thr))
    m = memorization(q, x)
    assert m.memorized[:20].all()
    assert not m.memorized[20:].all()
    s = m.summary()
    assert s["memorized"] == int(m.memorized.sum())
    assert sum(s["nn_distance"]["histogram"]["counts"]) == len(q)


def test_feature_space_and_exact_copies(setup):
    x, q = setup
    feat = lambda t: torch.as_tensor(t)[:, :4] * 2.0  # noqa: E731
    nb = nearest(q, x, 2, feature=feat)
    d, idx = _brute_top2(q[:, :4] * 2.0, x[:, :4] * 2.0)
    np.testing.assert_array_equal(nb.index, idx)
    np.testing.assert_allclose(nb.dist, d, rtol=1e-9)
    dup = np.concatenate([x, x[:1]])  # a duplicated training point copied exactly: d1 = d2 = 0, memorized
    m = memorization(x[:1], dup)
    assert m.d1[0] == 0
    assert m.ratio[0] == 0
    assert m.memorization_ratio == 1.0


def test_bad_input():
    x = np.zeros((5, 3), np.float32)
    with pytest.raises(DifflensError):
        memorization(np.zeros((2, 4)), x)
    with pytest.raises(DifflensError):
        memorization(np.zeros((2, 3)), x, threshold=0)
    with pytest.raises(DifflensError):
        nearest(np.zeros((2, 3)), x, 9)
