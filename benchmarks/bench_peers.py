"""Peers side by side: difflens exact, difflens fast and the in-memory cdist → softmax → mm pattern
(the pattern of Gu et al.'s code), on the same data, in the same process, per noise level.

    python benchmarks/bench_peers.py            # N = 50 000, D = 3 072, 256 queries
    python benchmarks/bench_peers.py --quick    # N = 8 000, D = 3 072, 128 queries
    python benchmarks/bench_peers.py --n 2000 --dim 192 --batch 32 --repeats 1   # a smoke run

Data: a low-intrinsic-dimension set, x = z·U/8 + 0.05·ε with z ~ N(0, I₆₄), U ~ N(0, 1)^{64×D},
ε ~ N(0, I_D), scaled so max |x| = 1 (image sets behave like this: a few dozen directions carry most
of the variance). Queries are noised training points x0 + σε. difflens runs as ``oracle.denoise``
does, without hints (the fast screen prunes on its running floor,
docs/method.md, "Fast precision (screening)"), on a ``Dataset`` prepared once; "fast, hinted" passes
each query's source as a hint, as the optimal-loss estimator does.

Per method: the best of ``--repeats`` wall times, its speed relative to cdist, the peak resident
memory above the level before the call (RSS sampled every millisecond by a thread, so a peak shorter
than that can be missed), and the largest error of the posterior mean against a float64 brute force
on the first 8 queries. The machine may be shared: compare ratios within one run.
"""

from __future__ import annotations

import argparse
import threading
import time
from collections.abc import Callable

import numpy as np
import psutil
import torch

from difflens import data
from difflens.kernel import oracle


def lowdim(n: int, dim: int, rank: int = 64, seed: int = 0) -> np.ndarray:
    """n points near a random rank-``rank`` subspace of R^dim, max |x| = 1 (see the module docstring)."""
    rng = np.random.default_rng(seed)
    u = rng.standard_normal((rank, dim), dtype=np.float32)
    x = rng.standard_normal((n, rank), dtype=np.float32) @ u / 8 + 0.05 * rng.standard_normal(
        (n, dim), dtype=np.float32
    )
    return x / np.abs(x).max()


def cdist_softmax_mm(q: torch.Tensor, x: torch.Tensor, sigma: float) -> torch.Tensor:
    """The in-memory pattern: all B × N squared distances, a softmax over them, one matmul (float32)."""
    w = torch.softmax(-torch.cdist(q, x).square() / (2 * sigma**2), 1)
    return w @ x


class PeakRSS:
    """Peak resident memory above the level at entry, sampled every millisecond by a thread."""

    def __init__(self) -> None:
        self.proc = psutil.Process()
        self.peak = 0
        self._stop = threading.Event()

    def __enter__(self) -> PeakRSS:
        self.base = self.proc.memory_info().rss
        self.peak = self.base
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.001)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)

    @property
    def delta_mb(self) -> float:
        return (self.peak - self.base) / 2**20


def measure(fn: Callable[[], torch.Tensor], repeats: int) -> tuple[float, float, torch.Tensor]:
    """(best wall time in ms, peak RSS delta in MB over all repeats, the last result)."""
    best, peak, out = float("inf"), 0.0, None
    for _ in range(repeats):
        with PeakRSS() as mem:
            t0 = time.perf_counter()
            out = fn()
            best = min(best, (time.perf_counter() - t0) * 1e3)
        peak = max(peak, mem.delta_mb)
    return best, peak, out


def truth(q: torch.Tensor, x: torch.Tensor, sigma: float) -> torch.Tensor:
    """The posterior mean in float64 (dense softmax), the reference every method is compared with."""
    w = torch.softmax(-torch.cdist(q.double(), x.double()).square() / (2 * sigma**2), 1)
    return w @ x.double()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="N = 8 000, 128 queries")
    ap.add_argument("--n", type=int, default=None)
    ap.add_argument("--dim", type=int, default=3072)
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--sigmas", default="0.1,0.5,2,10")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    n = args.n or (8000 if args.quick else 50000)
    batch = args.batch or (128 if args.quick else 256)
    x_np = lowdim(n, args.dim)
    ds = data.as_dataset(x_np)
    x = torch.from_numpy(x_np)
    rng = np.random.default_rng(1)
    src = rng.choice(n, size=batch, replace=False)
    print(f"low-intrinsic-dimension set: N = {n}, D = {args.dim}, B = {batch}; torch threads {torch.get_num_threads()}")
    oracle.denoise(x[:4], ds, 1.0, precision="fast")  # warm-up: the fast screen's calibration and quantized cache
    for sigma in (float(s) for s in args.sigmas.split(",")):
        q = x[src] + sigma * torch.from_numpy(rng.standard_normal((batch, args.dim), dtype=np.float32))
        ref = truth(q[:8], x, sigma)
        methods = {
            "cdist → softmax → mm": lambda q=q, s=sigma: cdist_softmax_mm(q, x, s),
            "difflens exact": lambda q=q, s=sigma: oracle.denoise(q, ds, s),
            "difflens fast": lambda q=q, s=sigma: oracle.denoise(q, ds, s, precision="fast"),
            "difflens fast, hinted": lambda q=q, s=sigma: oracle.posterior(q, ds, s, precision="fast", hint=src).mean,
        }
        rows = {name: measure(fn, args.repeats) for name, fn in methods.items()}
        base = rows["cdist → softmax → mm"][0]
        print(f"\nσ = {sigma:g}")
        print(f"{'method':<24}{'ms':>10}{'× cdist':>10}{'peak MB':>10}{'max |Δ| vs f64':>17}")
        for name, (ms, mb, out) in rows.items():
            err = float((out[:8].double() - ref).abs().max())
            print(f"{name:<24}{ms:>10.1f}{base / ms:>10.2f}{mb:>10.1f}{err:>17.2e}")


if __name__ == "__main__":
    main()
