"""The posterior kernel against a dense float64 brute force, closed forms and invariances."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from difflens import DifflensError, kernel
from difflens.kernel import oracle


def brute_force(q, x, sigma, temperature=1.0, log_weights=None, mask=None):
    """Dense softmax in float64: every statistic the kernel returns."""
    q, x = q.double(), x.double()
    s2t = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1, 1) ** 2 * torch.as_tensor(
        temperature, dtype=torch.float64
    ).reshape(-1, 1)
    logits = -((q[:, None] - x[None]) ** 2).sum(-1) / (2 * s2t)
    if log_weights is not None:
        logits = logits + torch.as_tensor(log_weights, dtype=torch.float64)[None]
    if mask is not None:
        logits = logits.masked_fill(~mask, -math.inf)
    w = torch.softmax(logits, 1)
    mean = w @ x
    # the kernel's float32 logits are off by up to ~2⁻²³·(‖q‖‖x‖ + ‖x‖²)/(s²T): weights move that much
    size = q.norm(dim=1, keepdim=True) * x.norm(dim=1).max() + (x * x).sum(1).max()
    logit_err = float((2.0**-23 * size / s2t).max())
    trace = (w * ((x[None] - mean[:, None]) ** 2).sum(-1)).sum(1)
    return dict(
        mean=mean,
        trace_cov=trace,
        log_norm=torch.logsumexp(logits, 1),
        max_weight=w.max(1).values,
        eff_count=1 / (w**2).sum(1),
        argmax=w.argmax(1),
        logit_err=logit_err,
    )


def assert_matches(post, ref, scale=1.0):
    tol = 2e-5 * scale
    assert torch.allclose(post.mean, ref["mean"], atol=tol, rtol=1e-4)
    assert torch.allclose(post.trace_cov, ref["trace_cov"], atol=tol * scale, rtol=1e-3)
    assert torch.allclose(post.log_norm, ref["log_norm"], atol=1e-3, rtol=1e-5)
    assert torch.allclose(post.max_weight, ref["max_weight"], atol=1e-5 + ref["logit_err"])
    assert torch.allclose(post.eff_count, ref["eff_count"], rtol=1e-4 + 2 * ref["logit_err"])
    clear = ref["max_weight"] > 0.51  # argmax is only well defined without near-ties
    assert torch.equal(post.argmax[clear], ref["argmax"][clear])


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 70),
    d=st.integers(1, 9),
    b=st.integers(1, 12),
    sigma=st.floats(0.05, 20.0),
    chunk=st.integers(1, 80),
    seed=st.integers(0, 10_000),
)
def test_kernel_matches_brute_force(n, d, b, sigma, chunk, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    q = x[torch.randint(0, n, (b,), generator=g)] + sigma * torch.randn(b, d, generator=g)
    post = oracle.posterior(q, x, sigma, chunk_size=chunk)
    assert_matches(post, brute_force(q, x, sigma))


def test_same_result_for_any_chunk_size_and_query_batch():
    g = torch.Generator().manual_seed(1)
    x, q = torch.randn(150, 16, generator=g), torch.randn(40, 16, generator=g)
    ref = oracle.posterior(q, x, 0.8, chunk_size=150)
    for chunk, qb in [(1, 7), (13, 40), (64, 3), (149, 1024)]:
        post = oracle.posterior(q, x, 0.8, chunk_size=chunk, query_batch=qb)
        assert torch.allclose(post.mean, ref.mean, atol=1e-6)
        assert torch.allclose(post.trace_cov, ref.trace_cov, rtol=1e-5, atol=1e-7)
        assert torch.allclose(post.log_norm, ref.log_norm, atol=1e-5)
        assert torch.equal(post.argmax, ref.argmax)


def test_partials_merge_in_any_order():
    g = torch.Generator().manual_seed(2)
    x, q = torch.randn(90, 5, generator=g), torch.randn(6, 5, generator=g)
    scale = torch.full((6,), 1 / 0.7**2, dtype=torch.float64)
    parts = [kernel.chunk_state(q, scale, x[i : i + 30], torch.arange(i, i + 30)) for i in (0, 30, 60)]
    a = parts[0].merge(parts[1]).merge(parts[2])
    b = parts[2].merge(parts[0].merge(parts[1]))
    qn = (q.double() ** 2).sum(1)
    pa, pb = a.finalize(qn, scale), b.finalize(qn, scale)
    assert torch.allclose(pa.mean, pb.mean, atol=1e-12)
    assert torch.allclose(pa.trace_cov, pb.trace_cov, atol=1e-12)
    assert_matches(pa, brute_force(q, x, 0.7))


def test_temperature_is_s2_times_t_in_the_softmax():
    g = torch.Generator().manual_seed(3)
    x, q = torch.randn(60, 4, generator=g), torch.randn(9, 4, generator=g)
    post = oracle.posterior(q, x, 0.3, temperature=4.0, chunk_size=11)
    assert_matches(post, brute_force(q, x, 0.3, temperature=4.0))
    same = oracle.posterior(q, x, 0.6)
    assert torch.allclose(post.mean, same.mean, atol=1e-6)


def test_per_query_sigma_and_temperature():
    g = torch.Generator().manual_seed(4)
    x, q = torch.randn(50, 3, generator=g), torch.randn(5, 3, generator=g)
    sig = np.array([0.1, 0.5, 1.0, 2.0, 8.0])
    temp = np.array([1.0, 2.0, 1.0, 0.5, 3.0])
    post = oracle.posterior(q, x, sig, temperature=temp, chunk_size=7)
    assert_matches(post, brute_force(q, x, sig, temperature=temp))


def test_log_weights_include_exclude_and_extra_match_brute_force():
    g = torch.Generator().manual_seed(5)
    x, q = torch.randn(40, 3, generator=g), torch.randn(6, 3, generator=g)
    lw = torch.randn(40, generator=g).numpy()
    post = oracle.posterior(q, x, 0.9, log_weights=lw, chunk_size=9)
    assert_matches(post, brute_force(q, x, 0.9, log_weights=lw))

    include = np.array([1, 4, 5, 17, 30, 39])
    mask = torch.zeros(6, 40, dtype=torch.bool)
    mask[:, include] = True
    post = oracle.posterior(q, x, 0.9, include=include, chunk_size=4)
    assert_matches(post, brute_force(q, x, 0.9, mask=mask))
    assert set(post.argmax.tolist()) <= set(include.tolist())

    exclude = torch.tensor([[0, 3], [1, -1], [2, 2], [39, 38], [-1, -1], [5, 6]])
    mask = torch.ones(6, 40, dtype=torch.bool)
    for i, row in enumerate(exclude):
        mask[i, row[row >= 0]] = False
    post = oracle.posterior(q, x, 0.9, exclude=exclude, chunk_size=8)
    assert_matches(post, brute_force(q, x, 0.9, mask=mask))

    # a per-query extra point with its own log weight = the same point added to the data with that weight
    src = torch.tensor([3, 8, 1, 0, 22, 39])
    scale = 1 / 0.9**2
    xs = x[src].double()
    logit = ((q.double() * xs).sum(1) - 0.5 * (xs**2).sum(1)) * scale - math.log(2.5)
    extra = kernel.PosteriorState.of_points(logit, x[src], src)
    post = oracle.posterior(q, x, 0.9, exclude=src, extra=extra)
    lw_rows = torch.zeros(6, 40, dtype=torch.float64)
    lw_rows[torch.arange(6), src] = -math.log(2.5)
    ref = brute_force(q, x, 0.9, log_weights=None, mask=None)
    logits = -((q.double()[:, None] - x.double()[None]) ** 2).sum(-1) / (2 * 0.81) + lw_rows
    w = torch.softmax(logits, 1)
    ref["mean"] = w @ x.double()
    ref["trace_cov"] = (w * ((x.double()[None] - ref["mean"][:, None]) ** 2).sum(-1)).sum(1)
    assert torch.allclose(post.mean, ref["mean"], atol=1e-5)
    assert torch.allclose(post.trace_cov, ref["trace_cov"], atol=1e-5, rtol=1e-4)
    assert torch.allclose(post.log_norm, torch.logsumexp(logits, 1), atol=1e-4)


def test_single_training_point_has_zero_posterior_variance():
    x = torch.tensor([[0.3, -1.2, 2.0]])
    q = torch.randn(8, 3) * 5
    post = oracle.posterior(q, x, 1.0)
    assert torch.all(post.trace_cov == 0)
    assert torch.allclose(post.mean, x.double().expand(8, 3))
    assert torch.all(post.max_weight == 1) and torch.all(post.eff_count == 1)


def test_trace_cov_does_not_cancel_when_one_point_dominates():
    # w_b ≈ 1e-6 so tr Cov = w_a w_b ‖a − b‖² ≈ 1e-6, while ‖x‖² = 64: Σw‖x‖² − ‖mean‖² in float32
    # would be off by ~eps·64 ≈ 4e-6, i.e. by several times the answer
    a = torch.full((1, 64), 1.0)
    b = a.clone()
    b[0, 0] += 1.0
    x = torch.cat([a, b])
    sigma = 0.2
    # place the query so that the logit gap is ln(1e6)
    gap = math.log(1e6)
    shift = 0.5 - gap * sigma**2  # along the first coordinate, between a and b
    q = a.clone()
    q[0, 0] += shift
    post = oracle.posterior(q, x, sigma)
    wb = 1 / (1 + math.exp(gap))
    expected = wb * (1 - wb) * 1.0
    assert post.trace_cov.item() == pytest.approx(expected, rel=1e-3)


def test_memory_is_bounded_by_chunk_not_n():
    # the kernel never materialises (N, B, D) nor (B, N): peak tensor size follows the chunk
    x, q = torch.randn(20_000, 8), torch.randn(16, 8)
    state = kernel.posterior_state(q, kernel.data_chunks(kernel.as_source(x), 100), torch.ones(16))
    assert state.mean.shape == (16, 8)
    full = oracle.posterior(q, x, 1.0, chunk_size=20_000)
    small = oracle.posterior(q, x, 1.0, chunk_size=100)
    assert torch.allclose(full.mean, small.mean, atol=1e-6)


def test_denoise_returns_posterior_mean_in_query_shape():
    x = torch.randn(30, 2, 3)
    q = torch.randn(4, 2, 3)
    out = oracle.denoise(q, x.reshape(30, 6), 0.5)
    assert out.shape == q.shape and out.dtype == torch.float32
    ref = brute_force(q.reshape(4, 6), x.reshape(30, 6), 0.5)["mean"].float().reshape(4, 2, 3)
    assert torch.allclose(out, ref, atol=1e-5)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(sigma=0.0), "sigma"),
        (dict(sigma=-1.0), "sigma"),
        (dict(sigma=float("nan")), "sigma"),
        (dict(sigma=1.0, temperature=0.0), "sigma"),
        (dict(sigma=np.ones(3)), "one value per query"),
        (dict(sigma=1.0, log_weights=np.zeros(3)), "log_weights"),
        (dict(sigma=1.0, exclude=np.arange(10).reshape(2, 5)), "exclude"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, message):
    x, q = torch.randn(10, 2), torch.randn(4, 2)
    with pytest.raises(DifflensError, match=message):
        oracle.posterior(q, x, **kwargs)


def test_bad_queries_raise_clear_errors():
    x = torch.randn(10, 2)
    with pytest.raises(DifflensError, match="values each"):
        oracle.posterior(torch.randn(3, 5), x, 1.0)
    q = torch.randn(3, 2)
    q[1, 0] = float("nan")
    with pytest.raises(DifflensError, match="NaN"):
        oracle.posterior(q, x, 1.0)
    with pytest.raises(DifflensError, match="excluded"):
        oracle.posterior(torch.randn(1, 2), x[:1], 1.0, exclude=[0])


def test_row_norms_are_cached_per_dataset_without_changing_results():
    from difflens.data import as_dataset

    g = torch.Generator().manual_seed(6)
    x, q = torch.randn(300, 7, generator=g), torch.randn(9, 7, generator=g)
    ds = as_dataset(x)
    first = oracle.posterior(q, ds, 0.4, chunk_size=64)
    cache = ds.__dict__["_sq_norms"]
    assert np.allclose(cache, (x.double() ** 2).sum(1).numpy(), rtol=1e-5)
    again = oracle.posterior(q, ds, 0.4, chunk_size=64)
    subset = oracle.posterior(q, ds, 0.4, include=np.arange(0, 300, 3), chunk_size=16)
    assert torch.equal(first.mean, again.mean) and torch.equal(first.trace_cov, again.trace_cov)
    assert_matches(first, brute_force(q, x, 0.4))
    mask = torch.zeros(9, 300, dtype=torch.bool)
    mask[:, ::3] = True
    assert_matches(subset, brute_force(q, x, 0.4, mask=mask))
