"""End to end = kernel? The whole optimal-loss curve (``difflens optimal-loss``) exact and fast, against
the pure two-GEMM time of the same curve at the fp32 matmul rate measured in the same run.

    python benchmarks/bench_curve.py            # N = 50 000, D = 3 072, 64 levels × 256 queries
    python benchmarks/bench_curve.py --quick    # N = 10 000, 16 levels × 256 queries
    python benchmarks/bench_curve.py --n 2000 --dim 256 --levels 4 --repeats 1   # a smoke run

Data: the low-intrinsic-dimension set of ``bench_peers.py`` saved as a float32 ``.npy`` and opened as
the CLI does (memory-mapped). Each curve runs ``analysis.optimal_loss_run.run_optimal_loss`` from a
cold start (caches of the kernel dropped, the dataset opened again, so its statistics pass, the
resident copy and the fast screen's quantized chunks are all in the time).

Pure GEMM time: the exact kernel runs two float32 GEMMs of B×N×D per level (logits x̃·Xᵀ, then
weights·X), 4·B·N·D flops, timed with ``torch.mm`` at the kernel's shapes (B queries × one chunk).
Targets (docs/architecture.md, "Performance"): exact ≤ 1.15× GEMM, fast ≥ 3× faster than exact.
Curves alternate exact, fast, exact, …; the machine may be shared, so compare ratios within one run
(the load average is printed); with one thread (``--threads 1``) the process's CPU seconds, also
printed, are the steadier measure there.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from bench_peers import lowdim

from difflens.analysis.optimal_loss_run import run_optimal_loss
from difflens.kernel import memory, oracle, screening


def mm_rate(batch: int, rows: int, dim: int, repeats: int = 3) -> tuple[float, float]:
    """fp32 GFLOP/s of the kernel's two GEMM shapes, (B×D)·(D×C) and (B×C)·(C×D), best of ``repeats``,
    per wall second and per CPU second of this process."""
    g = torch.Generator().manual_seed(0)
    q, x, p = torch.randn(batch, dim, generator=g), torch.randn(rows, dim, generator=g), torch.rand(batch, rows)
    wall = cpu = float("inf")
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        torch.mm(q, x.T)
        torch.mm(p, x)
        wall, cpu = min(wall, time.perf_counter() - t0), min(cpu, time.process_time() - c0)
    flops = 4 * batch * rows * dim / 1e9
    return flops / wall, flops / cpu


def curve(
    path: Path, precision: str, levels: int, queries: int, target_se: float | None = None
) -> tuple[float, float, list[float]]:
    """(wall seconds, CPU seconds of this process, per-level CPU seconds) of one cold optimal-loss run
    (the first level's include opening the data: its statistics pass and the resident copy); with
    ``target_se``, adaptive queries per level (at most ``queries``)."""
    memory.release()
    screening.clear_cache()
    stamps: list[float] = []
    with tempfile.TemporaryDirectory() as out:
        t0, c0 = time.perf_counter(), time.process_time()
        run_optimal_loss(
            str(path),
            Path(out),
            precision=precision,
            sigmas=f"0.002:80:{levels}",
            queries_per_level=queries,
            target_se=target_se,
            progress=lambda _label, _total, _done: lambda _n: stamps.append(time.process_time()),
            say=lambda _s: None,
        )
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return wall, cpu, list(np.diff([c0, *stamps]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="N = 10 000, 16 levels")
    ap.add_argument("--n", type=int, default=None)
    ap.add_argument("--dim", type=int, default=3072)
    ap.add_argument("--levels", type=int, default=None)
    ap.add_argument("--queries", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=1, help="exact/fast pairs, alternating")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument(
        "--precisions",
        default="exact,fast,fast-se",
        help="curves to run, in this order (fast-se: fast with adaptive queries to --target-se)",
    )
    ap.add_argument("--target-se", type=float, default=1e-3, help="fast-se: relative standard error per level")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    n = args.n or (10000 if args.quick else 50000)
    levels = args.levels or (16 if args.quick else 64)
    b, d = args.queries, args.dim
    rows = min(n, oracle.default_chunk_rows(d, b))
    flops = 4.0 * levels * b * n * d
    print(
        f"low-intrinsic-dimension set as .npy: N = {n}, D = {d}; {levels} levels × {b} queries; "
        f"torch threads {torch.get_num_threads()}, load average {' '.join(f'{v:.1f}' for v in os.getloadavg())}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "lowdim.npy"
        np.save(path, lowdim(n, d))
        results: dict[str, list[tuple[float, float, list[float], float, float]]] = {
            name: [] for name in args.precisions.split(",")
        }
        for _ in range(args.repeats):
            for precision in results:
                rate, cpu_rate = mm_rate(b, rows, d)  # next to each curve: the load changes
                se = args.target_se if precision == "fast-se" else None
                run = curve(path, precision.removesuffix("-se"), levels, b, se)
                results[precision].append((*run, rate, cpu_rate))
    # on a shared machine the CPU seconds of this process are the steadier measure (with one thread)
    print(f"\n{'curve':<7}{'wall s':>8}{'GEMM s':>8}{'÷ GEMM':>8}{'cpu s':>8}{'GEMM cpu s':>11}{'÷ GEMM':>8}", end="")
    print(f"{'mm GFLOP/s':>12}   cpu s: first level / per later level / GEMM per level / files written")
    for precision, runs in results.items():
        for wall, cpu, per_level, rate, cpu_rate in runs:
            gemm, gemm_cpu = flops / (rate * 1e9), flops / (cpu_rate * 1e9)
            print(
                f"{precision:<7}{wall:>8.1f}{gemm:>8.1f}{wall / gemm:>8.2f}{cpu:>8.1f}{gemm_cpu:>11.1f}"
                f"{cpu / gemm_cpu:>8.2f}{rate:>12.1f}   {per_level[0]:.2f} / {np.mean(per_level[1:]):.2f} / "
                f"{gemm_cpu / levels:.2f} / {cpu - sum(per_level):.2f}"
            )
    wall = {name: min(r[0] for r in runs) for name, runs in results.items()}
    cpu = {name: min(r[1] for r in runs) for name, runs in results.items()}
    for other in ("fast", "fast-se"):
        if "exact" in results and other in results:
            ratio = f"wall {wall['exact'] / wall[other]:.2f}, cpu {cpu['exact'] / cpu[other]:.2f}"
            print(f"\nexact ÷ {other} (best of each): {ratio}", end="")
    print("\n(fast-se's GEMM column is that of the fixed-count curve: it draws fewer queries where the level's")
    print(f" standard error reaches {args.target_se:g} of its value first)")
    print("targets: exact ≤ 1.15× GEMM, exact ÷ fast ≥ 3")
    print(f"load average after: {' '.join(f'{v:.1f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
