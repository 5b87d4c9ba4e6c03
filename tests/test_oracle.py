"""The posterior kernel against a dense float64 brute force, closed forms and invariances."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from difflens import DifflensError, kernel
from difflens.kernel import oracle, screening


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
    # the kernel works relative to the data's mean c; its float32 logits are off by up to
    # ~2⁻²³·(‖q − c‖‖x − c‖ + ‖x − c‖²)/(s²T), and the weights move that much
    c = x.mean(0)
    spread = (x - c).norm(dim=1).max()
    size = (q - c).norm(dim=1, keepdim=True) * spread + spread**2
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
        spread=float(spread),
    )


def assert_matches(post, ref, scale=1.0):
    tol = 2e-5 * scale
    # the mean moves by at most (logit error)·max‖x_m − mean‖ ≤ 2·logit_err·spread, plus its own float32 rounding
    assert torch.allclose(post.mean, ref["mean"], atol=tol + 2 * ref["logit_err"] * ref["spread"], rtol=0)
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
    ref = brute_force(q, x, 0.8)
    for chunk, qb in [(150, 1024), (1, 7), (13, 40), (64, 3), (149, 1024)]:
        assert_matches(oracle.posterior(q, x, 0.8, chunk_size=chunk, query_batch=qb), ref)


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
    assert_matches(oracle.posterior(q, x, 0.6), brute_force(q, x, 0.3, temperature=4.0))  # s²T alone matters


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
    assert torch.all(post.max_weight == 1)
    assert torch.all(post.eff_count == 1)


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
    ref = brute_force(q, x, 1.0)
    for rows in (20_000, 100):
        assert_matches(oracle.posterior(q, x, 1.0, chunk_size=rows), ref)


def test_denoise_returns_posterior_mean_in_query_shape():
    x = torch.randn(30, 2, 3)
    q = torch.randn(4, 2, 3)
    out = oracle.denoise(q, x.reshape(30, 6), 0.5)
    assert out.shape == q.shape
    assert out.dtype == torch.float32
    ref = brute_force(q.reshape(4, 6), x.reshape(30, 6), 0.5)
    tol = 2e-5 + 2 * ref["logit_err"] * ref["spread"]
    assert torch.allclose(out.double(), ref["mean"].reshape(4, 2, 3), atol=tol, rtol=2**-23)


@pytest.mark.parametrize(
    ("kwargs", "message"),
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


@pytest.mark.parametrize("held", [True, False])
def test_row_norms_are_cached_per_dataset_without_changing_results(held, monkeypatch):
    from difflens.data import as_dataset
    from difflens.kernel import memory

    memory.release()
    if not held:  # no room for a resident copy: chunks stream and the Dataset remembers the norms
        monkeypatch.setattr(memory, "RESIDENT_FRACTION", 0.0)
    g = torch.Generator().manual_seed(6)
    x, q = torch.randn(300, 7, generator=g), torch.randn(9, 7, generator=g)
    ds = as_dataset(x)
    first = oracle.posterior(q, ds, 0.4, chunk_size=64)
    # of the rows as the kernel reads them: less the data's mean
    cache = memory.resident(ds, ds.center).sq.numpy() if held else ds.__dict__["_sq_norms"]
    assert ("_sq_norms" in ds.__dict__) is not held
    assert np.allclose(cache, ((x.double() - x.double().mean(0)) ** 2).sum(1).numpy(), rtol=1e-5)
    again = oracle.posterior(q, ds, 0.4, chunk_size=64)
    subset = oracle.posterior(q, ds, 0.4, include=np.arange(0, 300, 3), chunk_size=16)
    assert torch.equal(first.mean, again.mean)
    assert torch.equal(first.trace_cov, again.trace_cov)
    assert_matches(first, brute_force(q, x, 0.4))
    mask = torch.zeros(9, 300, dtype=torch.bool)
    mask[:, ::3] = True
    assert_matches(subset, brute_force(q, x, 0.4, mask=mask))
    memory.release()


@pytest.mark.parametrize("precision", ["exact", "fast"])
@pytest.mark.parametrize("sigma", [0.2, 1.0, 4.0])
def test_accuracy_does_not_depend_on_the_data_offset(precision, sigma):
    # un-centred data (offset 50, unit variance): ‖q‖² − 2q·x + ‖x‖² in float32 would cancel ~4·10⁴·D
    # down to ~D, losing ~2⁻²³·8·10⁴/s² per logit; relative to the data's mean the error is as at offset 0
    g = torch.Generator().manual_seed(7)
    x = torch.randn(500, 24, generator=g) + 50.0
    q = x[torch.randint(0, 500, (20,), generator=g)] + sigma * torch.randn(20, 24, generator=g)
    ref = brute_force(q, x, sigma)
    assert ref["logit_err"] < 1e-3 / sigma**2  # the error model of centred data: offset-free
    post = oracle.posterior(q, x, sigma, chunk_size=128, precision=precision)
    assert_matches(post, ref)
    lw = torch.randn(500, generator=g).double()
    assert_matches(
        oracle.posterior(q, x, sigma, log_weights=lw, precision=precision), brute_force(q, x, sigma, 1.0, lw)
    )


def test_kernel_runs_on_the_device_asked_for():
    g = torch.Generator().manual_seed(8)
    x, q = torch.randn(200, 6, generator=g), torch.randn(7, 6, generator=g)
    post = oracle.posterior(q, x, 0.5, device="cpu", chunk_size=64)
    assert post.mean.device == torch.device("cpu")
    assert_matches(post, brute_force(q, x, 0.5))
    assert kernel.resolve_device(None) == torch.device("cpu") == kernel.resolve_device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("cuda", "--device cuda: CUDA is not available here"),
        ("cuda:3", "--device cuda:3: CUDA is not available here"),
        ("gpu", "--device gpu: not a device"),
    ],
)
def test_unavailable_device_is_one_clear_error(name, message):
    with pytest.raises(DifflensError, match="^" + message):
        kernel.resolve_device(name)
    with pytest.raises(DifflensError, match="^" + message):
        oracle.posterior(torch.randn(2, 3), torch.randn(5, 3), 1.0, device=name)


@pytest.mark.skipif(torch.backends.mps.is_available(), reason="checks the refusal on a machine without MPS")
def test_unavailable_mps_is_one_clear_error():
    with pytest.raises(DifflensError, match=r"^--device mps: MPS is not available here"):
        kernel.resolve_device("mps")


def test_fast_on_a_raw_tensor_quantizes_it_once():
    g = torch.Generator().manual_seed(9)
    x = torch.randn(3000, 32, generator=g)
    q = x[:50] + 0.1 * torch.randn(50, 32, generator=g)
    with kernel.counting_work() as first:
        a = oracle.posterior(q, x, 0.1, precision="fast", chunk_size=1000)
    with kernel.counting_work() as second:
        b = oracle.posterior(q, x, 0.1, precision="fast", chunk_size=1000)
    assert first.quantized_rows == 3000
    assert second.quantized_rows == 0  # the second call hits the cache
    assert torch.equal(a.mean, b.mean)
    assert_matches(b, brute_force(q, x, 0.1))
    x[0] += 1.0  # modified in place: prepared again, and quantized again
    with kernel.counting_work() as third:
        c = oracle.posterior(q, x, 0.1, precision="fast", chunk_size=1000)
    assert third.quantized_rows == 3000
    assert_matches(c, brute_force(q, x, 0.1))


def test_screen_costs_are_calibrated_once_and_steer_speed_only():
    costs = screening.calibrated_costs()
    assert screening.Fast().gather_cost == costs["gather_cost"]
    assert screening.Fast().screen_cost == costs["screen_cost"]
    assert screening.calibrated_costs() is costs
    assert screening.calibrated_costs.cache_info().misses == 1
    assert all(math.isfinite(v) and v > 0 for v in costs.values())
    g = torch.Generator().manual_seed(10)
    x = torch.randn(2000, 16, generator=g) * 0.3 + torch.randn(20, 16, generator=g).repeat(100, 1)
    q = x[:40] + 0.2 * torch.randn(40, 16, generator=g)
    ref = brute_force(q, x, 0.2)
    exact = (oracle.posterior(q, x, 0.2, chunk_size=500).mean - ref["mean"]).abs().max()
    extremes = [
        dict(gather_cost=0.0, group_cost=0.0, call_cost=0.0, screen_cost=0.0),
        dict(gather_cost=1e9, group_cost=1e9, call_cost=1e9, screen_cost=1e9),
        dict(gather_cost=1e9, group_cost=0.0, call_cost=0.0, screen_cost=1e-9),
    ]
    for costs in [{}, *extremes]:
        post = oracle.posterior(q, x, 0.2, chunk_size=500, precision=screening.Fast(dense_fraction=1.0, **costs))
        assert (post.mean - ref["mean"]).abs().max() <= 2 * exact + 1e-12  # as close to float64 as exact is
        assert_matches(post, ref)
