"""Nearest-neighbour search for the memorization ratio: streaming torch vs faiss vs one dense cdist.

Prints wall time per backend and checks that all three agree on the top-2 indices and distances.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from difflens.analysis.memorization import nearest


def main(n: int = 20000, dim: int = 64, queries: int = 1024, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    data = rng.standard_normal((n, dim)).astype(np.float32)
    q = np.concatenate([data[: queries // 2] + 1e-3, rng.standard_normal((queries - queries // 2, dim))]).astype(
        np.float32
    )
    t = time.perf_counter()
    d = torch.cdist(torch.from_numpy(q).double(), torch.from_numpy(data).double())
    ref_d, ref_i = torch.topk(d, 2, largest=False)
    dense = time.perf_counter() - t
    print(f"top-2 of {queries} queries among {n} points, D={dim}")
    print(f"  dense float64 cdist: {dense:7.3f} s (memory {queries * n * 8 / 2**20:.0f} MiB for the distance matrix)")
    for backend in ("torch", "faiss"):
        t = time.perf_counter()
        nb = nearest(q, data, 2, backend=backend, chunk_size=4096)
        took = time.perf_counter() - t
        same = np.array_equal(nb.index, ref_i.numpy()) and np.allclose(nb.dist, ref_d.numpy(), rtol=1e-9)
        print(f"  streaming {backend:5s}:    {took:7.3f} s  agrees with dense: {same}")


if __name__ == "__main__":
    import argparse

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="a smaller problem (5000 points, 256 queries)")
    args = p.parse_args()
    main(*((5000, 64, 256) if args.quick else ()))
