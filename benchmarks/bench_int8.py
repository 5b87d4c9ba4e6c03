"""Could split-int8 GEMMs beat fp32 for the exact kernel? fp32 operands split into int8 slices with exact
int32 accumulation (``torch._int_mm``): rates at the kernel's shapes, the split's accuracy against float64
next to fp32's own, and the projected speed-up of the kernel's logit GEMM.

    python benchmarks/bench_int8.py            # B = 256 queries × C = 16 384 rows × D = 3 072
    python benchmarks/bench_int8.py --quick    # C = 4 096

Each row v is split as v ≈ a·(V₁ + V₂/254 + V₃/254² + …), |V_k| ≤ 127, a per-row scale; k slices carry
≈ 8k bits. A product of two such rows keeps the pairs (i, j) with i + j ≤ k + 1 (k(k+1)/2 int8 GEMMs):
the dropped pairs weigh 254^-(k+1) or less. fp32's own rounding (24 bits) needs k = 3 (six GEMMs),
so split-int8 pays only if int8 runs > 6× fp32 *and* the slicing (a pass over each operand per slice)
and the int32 → float64 recombination cost less than the rest. The decision and the numbers measured
are in docs/architecture.md, "Performance".
"""

from __future__ import annotations

import argparse
import time

import torch


def best(fn, repeats: int = 3) -> float:
    """Fastest of ``repeats`` wall times (s): the least disturbed by other processes."""
    out = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out = min(out, time.perf_counter() - t0)
    return out


def split(v: torch.Tensor, slices: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(per-row scale a (n,) float64, [V₁, V₂, …] int8): v ≈ a·Σ_k V_k·254^-(k−1)."""
    a = v.double().abs().amax(1).clamp_min(1e-300) / 127.0
    rest = v.double() / a[:, None]
    parts = []
    for _ in range(slices):
        q = rest.round().clamp_(-127, 127)
        parts.append(q.to(torch.int8))
        rest = (rest - q) * 254.0
    return a, parts


def split_mm(q: torch.Tensor, x: torch.Tensor, slices: int) -> torch.Tensor:
    """q·xᵀ (float64) from the int8 slices: the pairs (i, j) with i + j ≤ slices − 1 (0-based)."""
    aq, qs = split(q, slices)
    ax, xs = split(x, slices)
    out = torch.zeros(len(q), len(x), dtype=torch.float64)
    for i in range(slices):
        for j in range(slices - i):
            out += torch._int_mm(qs[i], xs[j].T).double() * 254.0 ** -(i + j)
    return out * aq[:, None] * ax[None, :]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="C = 4 096 rows")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    b, c, d = 256, 4096 if args.quick else 16384, 3072
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}; shapes ({b}×{d})·({d}×{c})")
    if not hasattr(torch, "_int_mm"):
        print("torch._int_mm is not available: split-int8 cannot run here")
        return
    g = torch.Generator().manual_seed(0)
    q, x = torch.randn(b, d, generator=g), torch.randn(c, d, generator=g)
    qi = torch.randint(-127, 128, (b, d), dtype=torch.int8, generator=g)
    xi = torch.randint(-127, 128, (c, d), dtype=torch.int8, generator=g)
    flops = 2 * b * c * d
    t32 = best(lambda: torch.mm(q, x.T))
    t8 = best(lambda: torch._int_mm(qi, xi.T))
    print(f"fp32 mm   {flops / t32 / 1e9:8.1f} GFLOP/s   {t32 * 1e3:8.1f} ms")
    print(f"int8 mm   {flops / t8 / 1e9:8.1f} GOP/s     {t8 * 1e3:8.1f} ms   ({t32 / t8:.2f}× fp32)")
    exact = q.double() @ x.double().T
    scale = (q.double().norm(dim=1)[:, None] * x.double().norm(dim=1)[None, :]).max()
    err32 = float((torch.mm(q, x.T).double() - exact).abs().max() / scale)
    print(f"\nmax |error| / max ‖q‖‖x‖ against float64: fp32 mm {err32:.1e}")
    print(f"{'slices':>6}{'int8 GEMMs':>12}{'error':>10}{'÷ fp32 error':>14}{'GEMMs only':>12}{'with slicing':>14}")
    for slices in (2, 3, 4):
        gemms = slices * (slices + 1) // 2
        err = float((split_mm(q, x, slices) - exact).abs().max() / scale)
        whole = best(lambda s=slices: split_mm(q, x, s), repeats=2)
        print(
            f"{slices:>6}{gemms:>12}{err:>10.1e}{err / err32:>14.2f}{t32 / (gemms * t8):>11.2f}×{t32 / whole:>13.2f}×"
        )
    print("\n(speed-up of the logit GEMM over fp32: > 1 pays; the split must also have error ÷ fp32 error ≲ 1)")


if __name__ == "__main__":
    main()
