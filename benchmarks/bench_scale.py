"""Scale benchmarks: low-precision GEMM rates, fast vs exact kernel, dask vs in-process.

    python benchmarks/bench_scale.py            # N = 50 000, D = 3 072 (32×32×3), 1 024 queries
    python benchmarks/bench_scale.py --quick    # N = 8 000, 256 queries

Data: 32×32 RGB patches (stride 8, all 8 flips/rotations) of the two photos bundled with
scikit-learn, scaled to [−1, 1] — natural-image statistics without a download, and full of
near-duplicates; and, for fast vs exact, Gaussian random fields with the same 1/f² spectrum and
no near-duplicates. Queries are noisy
copies x0 + σε of random training points, as in the optimal-loss estimator. The machine may be
shared, so every comparison is a ratio of timings taken in the same run.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import torch

from difflens import data
from difflens.kernel import oracle
from difflens.kernel.engines import open_engine


def patches(n: int, seed: int = 0) -> np.ndarray:
    """n random 32×32×3 uint8 patches of the scikit-learn sample photos (with flips/rotations)."""
    from sklearn.datasets import load_sample_images

    out = []
    for img in load_sample_images().images:
        for k in range(4):
            for im in (np.rot90(img, k), np.rot90(img, k)[:, ::-1]):
                h, w = im.shape[:2]
                out += [im[i : i + 32, j : j + 32] for i in range(0, h - 31, 8) for j in range(0, w - 31, 8)]
    idx = np.random.default_rng(seed).permutation(len(out))[:n]
    if len(idx) < n:
        raise SystemExit(f"only {len(out)} patches available, asked for {n}")
    return np.stack([out[i] for i in idx])


def fields(n: int, seed: int = 0) -> np.ndarray:
    """n random 32×32×3 images with natural images' 1/f² power spectrum (Gaussian random fields),
    scaled to unit standard deviation: image-like statistics without near-duplicates."""
    rng = np.random.default_rng(seed)
    f = np.sqrt(np.fft.fftfreq(32)[:, None] ** 2 + np.fft.rfftfreq(32)[None] ** 2)
    amplitude = 1.0 / np.maximum(f, 1.0 / 32)
    out = np.empty((n, 32, 32, 3), dtype=np.float32)
    for lo in range(0, n, 4096):
        k = min(4096, n - lo)
        spec = (rng.standard_normal((k, 3, 32, 17)) + 1j * rng.standard_normal((k, 3, 32, 17))) * amplitude
        img = np.fft.irfft2(spec, s=(32, 32)).transpose(0, 2, 3, 1)
        out[lo : lo + k] = img / img.std(axis=(1, 2, 3), keepdims=True) * 0.5
    return out


def timed(fn, repeat: int = 1) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def gemm_rates(b: int = 1024, c: int = 8192, d: int = 3072) -> None:
    a, w = torch.randn(b, d), torch.randn(c, d)
    flops = 2 * b * c * d
    variants = {
        "fp32": (a, w, lambda x, y: x @ y.T),
        "bf16": (a.bfloat16(), w.bfloat16(), lambda x, y: x @ y.T),
        "fp16": (a.half(), w.half(), lambda x, y: x @ y.T),
        "int8→int32": (
            torch.randint(-127, 128, (b, d), dtype=torch.int8),
            torch.randint(-127, 128, (d, c), dtype=torch.int8),
            torch._int_mm,
        ),
    }
    print(f"\n## GEMM rate, ({b}×{d}) @ ({d}×{c}), {torch.get_num_threads()} threads")
    base = None
    for name, (x, y, f) in variants.items():
        f(x, y)
        t, _ = timed(lambda f=f, x=x, y=y: f(x, y), repeat=3)
        base = base or t
        print(f"  {name:11s} {flops / t / 1e9:7.1f} GFLOP/s   {base / t:5.2f}× fp32")


def kernel_vs_fast(ds, queries_n: int, sigmas, chunk: int | None, seed: int = 0, repeat: int = 2) -> None:
    rng = np.random.default_rng(seed)
    sources = np.sort(rng.choice(ds.n, queries_n, replace=False))
    x0 = ds.take(sources)
    noise = torch.from_numpy(rng.standard_normal(x0.shape, dtype=np.float32))
    whole = ds.rows(0, ds.n)
    chunk = chunk or oracle.default_chunk_rows(ds.dim, queries_n)

    def mm_only(q):  # plain fp32 logit GEMM over the same chunks: the floor of one pass
        for lo in range(0, ds.n, chunk):
            q @ whole[lo : lo + chunk].T

    work = 4.0 * queries_n * ds.n * ds.dim  # flops of the exact kernel's two GEMMs
    fast = {"precision": "fast", "hint": sources}  # the sources' logits, as the optimal-loss estimators pass them
    t0, _ = timed(lambda: oracle.posterior(x0[:8], ds, 1.0, precision="fast", chunk_size=chunk))
    scale = ds.stats.variance * ds.dim  # J* as σ → ∞
    print(f"\n## fast vs exact kernel: N={ds.n}, D={ds.dim}, {queries_n} queries, chunks of {chunk}")
    print(f"  (first fast call, int8 copy of the data: {t0:.2f} s; cached afterwards; best of {repeat})")
    print("  median max weight: how concentrated the posterior is (1 = one point); J* ∝ mean tr Cov")
    print("  vs float64: error of the mean tr Cov of the first 64 queries against a float64 brute force")
    print(
        "  σ       max w   torch.mm  exact     fast     fast/exact  exact GFLOP/s  |ΔJ*|/J*  |ΔJ*|/J*(∞)  dropped≤"
        "  vs float64: exact   fast"
    )
    for s in sigmas:
        q = x0 + float(s) * noise
        t_mm, _ = timed(lambda q=q: mm_only(q), repeat)
        t_ex, ex = timed(lambda q=q, s=s: oracle.posterior(q, ds, s, chunk_size=chunk), repeat)
        t_fa, fa = timed(lambda q=q, s=s: oracle.posterior(q, ds, s, chunk_size=chunk, **fast), repeat)
        j_ex, j_fa = float(ex.trace_cov.mean()), float(fa.trace_cov.mean())
        truth = float64_trace_cov(q[:64], whole, s)
        rel = abs(j_fa - j_ex) / j_ex if j_ex > 0 else abs(j_fa)
        print(
            f"  {s:<7.3g} {float(ex.max_weight.median()):5.3f}  {t_mm:6.2f} s  {t_ex:6.2f} s  {t_fa:6.2f} s  "
            f"{t_ex / t_fa:6.2f}×    {work / t_ex / 1e9:8.1f}       {rel:8.1e}  {abs(j_fa - j_ex) / scale:8.1e}"
            f"     {float(fa.dropped_mass.max()):.0e}     {_error(ex, truth):8.1e}  {_error(fa, truth):8.1e}"
        )


def float64_trace_cov(q: torch.Tensor, x: torch.Tensor, sigma: float) -> torch.Tensor:
    """tr Cov[x0 | x̃] by brute force in float64, relative to each query's best point (no cancellation)."""
    q, x = q.double(), x.double()
    sq = (x * x).sum(1)
    logits = (q @ x.T - 0.5 * sq) / sigma**2
    w = torch.softmax(logits, 1)
    best = logits.argmax(1)
    spread = (sq[None] + sq[best, None] - 2 * x[best] @ x.T).clamp_min(0)  # ‖x_m − x_best‖²
    offset = w @ x - x[best]
    return ((w * spread).sum(1) - (offset * offset).sum(1)).clamp_min(0)


def _error(post, truth: torch.Tensor) -> float:
    got = post.trace_cov[: len(truth)].mean()
    return float(abs(got - truth.mean()) / truth.mean()) if truth.mean() > 0 else float(got)


def dask_vs_local(array: np.ndarray, queries_n: int, chunk: int, workers: int = 2) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.npy"
        np.save(path, array)
        ds = data.load(str(path))
        rng = np.random.default_rng(1)
        q = ds.take(np.sort(rng.choice(ds.n, queries_n, replace=False))) + 0.5 * torch.randn(queries_n, ds.dim)
        print(f"\n## dask, {workers} local workers (1 thread each) vs in-process ({torch.get_num_threads()} threads)")
        print(f"  N={ds.n}, D={ds.dim} memory-mapped from {path.name}, {queries_n} queries, chunks of {chunk}")
        oracle.posterior(q, ds, 0.5, chunk_size=chunk)  # page cache warm, same for both
        t_local, local = timed(lambda: oracle.posterior(q, ds, 0.5, chunk_size=chunk), repeat=2)
        t_start = time.perf_counter()
        with open_engine(workers=workers) as engine:
            t_start = time.perf_counter() - t_start
            oracle.posterior(q[:8], ds, 0.5, chunk_size=chunk, engine=engine)  # workers import torch etc.
            t_dask, remote = timed(lambda: oracle.posterior(q, ds, 0.5, chunk_size=chunk, engine=engine), repeat=2)
            mem = engine.client.run(
                lambda: (psutil.Process().memory_info().rss, psutil.Process().memory_full_info().uss)
            )
        diff = float((remote.mean - local.mean).abs().max())
        print(f"  cluster start {t_start:.1f} s (once per run)")
        print(f"  in-process {t_local:.2f} s, dask {t_dask:.2f} s: overhead ratio {t_dask / t_local:.2f}×")
        for addr, (rss, uss) in sorted(mem.items()):
            print(f"  worker {addr}: RSS {rss / 2**20:.0f} MB (incl. mapped data pages), unique {uss / 2**20:.0f} MB")
        print(f"  max |mean difference| dask vs in-process: {diff:.1e}")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small sizes (a minute)")
    args = p.parse_args(argv)
    n, queries_n, chunk = (8000, 256, 4000) if args.quick else (50000, 1024, None)
    print(f"# bench_scale ({'quick' if args.quick else 'full'}), {os.cpu_count()} CPUs, torch {torch.__version__}")
    gemm_rates(*((256, 4096, 3072) if args.quick else (1024, 8192, 3072)))
    raw = patches(n)
    ds = data.as_dataset(raw.reshape(n, -1).astype(np.float32) / 127.5 - 1.0)
    print("\n# data: natural-image patches (two photos, overlapping, 8 flips/rotations: many near-duplicates)")
    kernel_vs_fast(ds, queries_n, [0.02, 0.1, 0.3, 1.0, 3.0, 10.0, 40.0], chunk)
    print("\n# data: Gaussian random fields with a 1/f² spectrum (image statistics, no near-duplicates), std 0.5")
    kernel_vs_fast(data.as_dataset(fields(n).reshape(n, -1)), queries_n, [0.3, 1.0, 3.0, 10.0], chunk)
    dask_vs_local(np.asarray(ds.array), queries_n, chunk or 8192)


if __name__ == "__main__":
    sys.exit(main())
