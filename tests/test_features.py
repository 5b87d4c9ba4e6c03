"""Feature-space measures: Fréchet distance, 1-NN cosine, PCA features, the feature-space gap, probes."""

import numpy as np
import pytest
import torch
from scipy import linalg

from difflens.analysis import features, gap, model_error, probes
from difflens.data import as_dataset
from difflens.errors import DifflensError
from difflens.models.empirical import EmpiricalDenoiser


def _with_moments(rng, n, mean, cov):
    """n rows whose sample mean and unbiased covariance are exactly ``mean`` and ``cov``."""
    z = rng.standard_normal((n, len(mean)))
    z -= z.mean(0)
    q, _ = np.linalg.qr(z)  # orthonormal, centred columns
    return mean + np.sqrt(n - 1) * q @ linalg.sqrtm(cov).real


def test_frechet_distance_closed_form_and_brute_force():
    rng = np.random.default_rng(0)
    la, lb = np.array([1.0, 4.0, 0.25]), np.array([2.0, 1.0, 9.0])
    ma, mb = np.array([0.0, 1.0, -1.0]), np.array([0.5, 0.0, 2.0])
    a = _with_moments(rng, 50, ma, np.diag(la))
    b = _with_moments(rng, 70, mb, np.diag(lb))
    closed = ((ma - mb) ** 2).sum() + ((np.sqrt(la) - np.sqrt(lb)) ** 2).sum()  # commuting covariances
    assert features.frechet_distance(a, b) == pytest.approx(closed, rel=1e-10)
    # general covariances: against the textbook formula with scipy's sqrtm, float64
    ca = np.cov(rng.standard_normal((5, 40)))
    cb = np.cov(rng.standard_normal((5, 40)) * np.arange(1, 6)[:, None])
    a, b = _with_moments(rng, 40, ma[:1].repeat(5), ca), _with_moments(rng, 60, mb[:1].repeat(5), cb)
    brute = ((ma[0] - mb[0]) ** 2) * 5 + np.trace(ca + cb - 2 * linalg.sqrtm(ca @ cb).real)
    assert features.frechet_distance(torch.from_numpy(a), as_dataset(b.astype(np.float32))) == pytest.approx(
        brute, rel=1e-5
    )
    assert features.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-9)
    # rank-deficient (fewer rows than dimensions): finite, real, ≥ 0, and a linear feature map applies
    small = rng.standard_normal((3, 10))
    assert np.isfinite(features.frechet_distance(small, small[::-1]))
    assert features.frechet_distance(small, small) < 1e-9
    w = torch.from_numpy(rng.standard_normal((10, 2)))
    fw = features.frechet_distance(small, np.hstack([b, b]), lambda x: x.double() @ w)
    assert fw == pytest.approx(features.frechet_distance(small @ w.numpy(), np.hstack([b, b]) @ w.numpy()), rel=1e-10)
    with pytest.raises(DifflensError):
        features.frechet_distance(a[:1], b)


def test_nn_cosine_brute_force():
    rng = np.random.default_rng(1)
    q, x = rng.standard_normal((7, 4)), rng.standard_normal((23, 4))
    cos = (q @ x.T) / np.linalg.norm(q, axis=1)[:, None] / np.linalg.norm(x, axis=1)[None]
    best, idx = features.nn_cosine(q, x.astype(np.float32), chunk=5)
    np.testing.assert_array_equal(idx, cos.argmax(1))
    np.testing.assert_allclose(best, cos.max(1), atol=1e-6)  # the training rows are float32
    w = rng.standard_normal((4, 3))
    f = lambda t: t.double() @ torch.from_numpy(w)  # noqa: E731
    fq, fx = q @ w, x.astype(np.float32).astype(np.float64) @ w
    cos_f = (fq @ fx.T) / np.linalg.norm(fq, axis=1)[:, None] / np.linalg.norm(fx, axis=1)[None]
    np.testing.assert_allclose(features.nn_cosine(q, x.astype(np.float32), f)[0], cos_f.max(1), rtol=1e-12)


def test_pca_feature_and_resolve():
    rng = np.random.default_rng(2)
    x = (rng.standard_normal((200, 6)) * [5, 3, 1, 0.1, 0.1, 0.1]).astype(np.float32)
    f, desc = features.resolve_feature("pca:2", x)
    assert desc.startswith("pca:2")
    assert f.explained > 0.95
    z = f(torch.from_numpy(x)).double().numpy()
    np.testing.assert_allclose(z.mean(0), 0, atol=1e-4)
    evals = np.linalg.eigvalsh(np.cov(x.astype(np.float64).T))[::-1]
    np.testing.assert_allclose(np.var(z, axis=0, ddof=1), evals[:2], rtol=1e-4)
    assert features.resolve_feature(None, x) == (None, "pixels")
    for bad in ("pca:x", "nonsense", "pca:0"):
        with pytest.raises(DifflensError):
            features.resolve_feature(bad, x)


def test_feature_gap_identity_and_linear_closed_forms():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((30, 5)).astype(np.float32)
    den = EmpiricalDenoiser(x[:15])
    sig = [0.3, 1.0, 3.0]
    (pix,) = gap.generalization_gap(den, x[:15], x[15:], sig, seed=2)
    (ident,) = gap.generalization_gap(den, x[:15], x[15:], sig, seed=2, feature=lambda t: t)
    assert ident.e_train == pix.e_train
    assert ident.e_val == pix.e_val
    w = torch.from_numpy(rng.standard_normal((5, 3)))
    (lin,) = gap.generalization_gap(den, x[:15], x[15:], sig, seed=2, feature=lambda t: t.double() @ w)
    for split, stream, got in ((x[:15], 0, lin.e_train), (x[15:], 0, lin.e_val)):  # paired: the same noise
        n = model_error.fixed_noise(15, 5, 1, seed=2, stream=stream)[0].double()
        y = torch.from_numpy(split).double()
        for s, g in zip(sig, got, strict=True):
            err = (den(y + s * n, s).double() - y) @ w  # the projected errors, float64 brute force
            assert g == pytest.approx((err**2).mean().item(), rel=1e-5)


def test_early_stop_probes_of_the_memorizing_oracle():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((40, 8)).astype(np.float32)
    train, held = x[:20], x[20:]
    sig = torch.tensor([20.0, 2.0, 0.5, 0.05, 0.0], dtype=torch.float64)
    levels = probes.early_stop_probes(EmpiricalDenoiser(train), train, held, sig, [0, 3], samples=16, images=10)
    low = levels[1]
    # the empirical optimal denoiser memorizes: at s = 0.05 samples and train reconstructions are training points
    assert low.nn_cosine["samples"] > 1 - 1e-5
    assert low.nn_cosine["train"] > 1 - 1e-5
    assert low.nn_cosine["held"] > 1 - 1e-5  # held-out images are pulled onto training points too
    assert levels[0].nn_cosine["samples"] < 0.99  # at s = 20 every output is near the training mean
    assert probes.stop_steps(120, 4) == [0, 40, 79, 119]
    with pytest.raises(DifflensError):
        probes.early_stop_probes(EmpiricalDenoiser(train), train, held, sig, [4])
