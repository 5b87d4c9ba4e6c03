"""Kernel benchmarks: GFLOP/s against plain torch.mm in the same run, the full optimal-loss
curve at CIFAR size, and the obvious broadcast implementation (speed and memory ratios).

    python benchmarks/bench_kernel.py            # N = 50 000, D = 3 072, B = 256 (a few minutes)
    python benchmarks/bench_kernel.py --quick    # small shapes, seconds
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import psutil
import torch

from difflens.analysis.optimal_loss import optimal_loss_curve
from difflens.data import as_dataset
from difflens.diffusion.processes import sigma_grid
from difflens.kernel import oracle


def best_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def naive_posterior(q: torch.Tensor, x: torch.Tensor, sigma: float):
    """The obvious version: a broadcast (N, B, D) difference tensor, softmax, weighted sum."""
    d2 = ((x[:, None, :] - q[None, :, :]) ** 2).sum(-1)  # (N, B)
    w = torch.softmax(-d2 / (2 * sigma**2), dim=0)
    mean = (w[:, :, None] * x[:, None, :]).sum(0)
    return mean, (w * ((x[:, None, :] - mean[None]) ** 2).sum(-1)).sum(0)


def measure(kind: str, n: int, b: int, d: int) -> dict:
    """Time one call of a variant; extra peak memory beyond data and queries (run in a fresh process)."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, d, generator=g) * 2 - 1
    q = x[:b] + 0.5 * torch.randn(b, d, generator=g)
    base = psutil.Process().memory_info().rss
    reset_peak_rss()
    fn = (lambda: naive_posterior(q, x, 0.5)) if kind == "naive" else (lambda: oracle.posterior(q, x, 0.5))
    seconds = best_time(fn, 2)
    return {"kind": kind, "seconds": seconds, "extra_peak_mb": max(0, peak_rss() - base) / 2**20}


def reset_peak_rss() -> None:
    """Linux: restart the process's peak-RSS counter (VmHWM) so it covers only what follows."""
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")


def peak_rss() -> int:
    with open("/proc/self/status") as fh:
        line = next(ln for ln in fh if ln.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024


def in_subprocess(kind: str, n: int, b: int, d: int) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--measure", kind, str(n), str(b), str(d)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def gflops_vs_mm(n: int, b: int, d: int, repeats: int) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, d, generator=g) * 2 - 1
    q = x[:b] + 0.3 * torch.randn(b, d, generator=g)
    flops = 4.0 * b * n * d
    w = torch.rand(b, n)
    data = as_dataset(x)  # as over the levels of a curve: row norms are computed once per dataset
    print(f"\n[kernel vs torch.mm]  N={n} D={d} B={b}  (flops counted as 4·B·N·D = {flops / 1e9:.1f} GFLOP)")
    all_threads = torch.get_num_threads()
    for threads in sorted({1, all_threads}):
        torch.set_num_threads(threads)
        t_mm = best_time(lambda: (torch.mm(q, x.T), torch.mm(w, x)), repeats)
        print(f"  {threads} thread(s): torch.mm (q·Xᵀ then W·X)  {flops / t_mm / 1e9:6.1f} GFLOP/s  {t_mm:.3f} s")
        for sigma in (0.05, 1.0, 20.0):
            t = best_time(lambda s=sigma: oracle.posterior(q, data, s), repeats)
            print(
                f"  {threads} thread(s): kernel σ={sigma:<5g}           {flops / t / 1e9:6.1f} GFLOP/s  {t:.3f} s"
                f"   ratio to mm {t_mm / t:.2f}  (target ≥ 0.85)"
            )
    torch.set_num_threads(all_threads)


def full_curve(n: int, d: int, levels: int, samples: int) -> None:
    g = torch.Generator().manual_seed(1)
    x = (torch.rand(n, d, generator=g) * 2 - 1).numpy()
    t0 = time.perf_counter()
    c = optimal_loss_curve(x, sigma_grid(0.002, 80, levels), samples=samples, seed=0)
    wall = time.perf_counter() - t0
    print(
        f"\n[full optimal-loss curve]  N={n} D={d}, {levels} levels × {samples} queries: {wall:.1f} s "
        f"(target ≤ 120 s); J* at σ=80: {c.levels[-1].optimal_loss_x0:.4f} (data variance {c.data_variance:.4f})"
    )


def naive_ratio(n: int, b: int, d: int) -> None:
    naive, kernel = in_subprocess("naive", n, b, d), in_subprocess("kernel", n, b, d)
    print(f"\n[obvious broadcast version]  N={n} D={d} B={b} (the largest the naive (N,B,D) tensor allows here)")
    for r in (naive, kernel):
        print(f"  {r['kind']:<7} {r['seconds']:.3f} s   extra peak memory {r['extra_peak_mb']:.0f} MB")
    print(
        f"  speed ratio naive/kernel {naive['seconds'] / kernel['seconds']:.1f}×, "
        f"memory ratio {naive['extra_peak_mb'] / max(kernel['extra_peak_mb'], 1):.0f}×"
    )


def memory_vs_n(ns: list[int], b: int, d: int) -> None:
    print(f"\n[kernel peak memory beyond data vs N]  D={d} B={b}")
    for n in ns:
        r = in_subprocess("kernel", n, b, d)
        print(f"  N={n:>7}: extra peak {r['extra_peak_mb']:.0f} MB, {r['seconds']:.3f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small shapes (seconds)")
    ap.add_argument("--measure", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.measure:
        kind, n, b, d = args.measure
        print(json.dumps(measure(kind, int(n), int(b), int(d))))
        return
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, cores {psutil.cpu_count()}")
    if args.quick:
        gflops_vs_mm(5_000, 64, 512, 2)
        full_curve(2_000, 256, 8, 64)
        naive_ratio(500, 16, 256)
        memory_vs_n([2_000, 8_000], 64, 256)
    else:
        gflops_vs_mm(50_000, 256, 3072, 3)
        full_curve(50_000, 3072, 64, 256)
        naive_ratio(1_000, 64, 3072)
        memory_vs_n([50_000, 100_000], 256, 3072)


if __name__ == "__main__":
    main()
