"""GPU check: the kernel on CUDA against a float64 CPU brute force, and its speed against torch.mm.

Run: ``PYTHONPATH=src python benchmarks/gpu_check.py``. Without CUDA it says so and exits 0.
Chunk sizes are the kernel's own (``oracle.default_chunk_rows``): from the device's free memory
(``torch.cuda.mem_get_info``, a quarter of it for one chunk's buffers; docs/architecture.md, "Performance").
"""

from __future__ import annotations

import sys
import time

import torch

from difflens.kernel import oracle


def brute_force_mean(q: torch.Tensor, x: torch.Tensor, sigma: float) -> torch.Tensor:
    """E[x0 | x̃] in float64 on the CPU (dense softmax)."""
    q, x = q.double().cpu(), x.double().cpu()
    w = torch.softmax(-torch.cdist(q, x).square() / (2 * sigma**2), 1)
    return w @ x


def timed(fn, repeats: int = 5) -> float:
    torch.cuda.synchronize()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> int:
    if not torch.cuda.is_available():
        print("no GPU here (torch.cuda.is_available() is False): nothing to check")
        return 0
    device = torch.device("cuda")
    print(f"device: {torch.cuda.get_device_name(device)}")
    gen = torch.Generator().manual_seed(0)

    # accuracy: small enough for a float64 brute force, with an offset (un-centred data)
    x = torch.randn(4000, 64, generator=gen) + 10.0
    q = x[:256] + 0.5 * torch.randn(256, 64, generator=gen)
    for sigma in (0.1, 0.5, 2.0):
        gpu = oracle.posterior(q.to(device), x, sigma, chunk_size=oracle.default_chunk_rows(64, 256, device)).mean
        cpu = oracle.posterior(q, x, sigma).mean
        ref = brute_force_mean(q, x, sigma)
        print(
            f"sigma {sigma}: max |gpu − float64| {float((gpu.cpu() - ref).abs().max()):.2e}, "
            f"max |cpu − float64| {float((cpu - ref).abs().max()):.2e}"
        )

    # speed: the kernel's two GEMMs per chunk against torch.mm of the same shapes
    n, dim, batch = 200_000, 3072, 1024
    x = torch.randn(n, dim, device=device)
    q = torch.randn(batch, dim, device=device)
    rows = oracle.default_chunk_rows(dim, batch, device)  # what posterior picks on this device
    flops = 2 * 2 * batch * n * dim  # logits + weighted mean
    kernel_s = timed(lambda: oracle.posterior(q, x, 30.0, chunk_size=rows), repeats=3)
    mm_s = timed(lambda: [torch.mm(q, x[i : i + rows].T) for i in range(0, n, rows)]) * 2
    print(f"chunk rows {rows}; kernel {kernel_s * 1e3:.1f} ms = {flops / kernel_s / 1e12:.2f} TFLOP/s")
    print(f"torch.mm of the same shapes {mm_s * 1e3:.1f} ms = {flops / mm_s / 1e12:.2f} TFLOP/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
