"""Memory the kernel may use: chunk sizes from free memory, and the data held resident in RAM.

Chunk sizes (``chunk_rows``) come from the free memory of the device the kernel runs on: host RAM
available for the CPU, ``torch.cuda.mem_get_info`` for a CUDA device, each times a safety fraction.

Data held resident (``resident``): a curve calls the kernel once per noise level, and each call would
otherwise read every row again (a copy out of a memory-mapped file), subtract the data's mean and
look the row norms up. When the centred float32 rows fit the resident budget (a quarter of physical
memory by default, less under a process or cgroup memory limit), the first full pass keeps them with
their squared norms, keyed by the source's fingerprint; later calls read views of them. Otherwise
chunks stream from the source as before (docs/architecture.md, "Performance"). The rows are the same
float32 values either way (the same subtraction, the same norms), so results do not depend on it.
"""

from __future__ import annotations

import hashlib
import resource
import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil
import torch

from difflens.kernel.source import Indices, RowSource
from difflens.kernel.state import row_sq_norms

RESIDENT_FRACTION = 0.25  # of physical memory (or of a tighter limit) that resident data may take
CPU_FRACTION = 0.05  # of available RAM one chunk (rows + per-query logits) may take
CUDA_FRACTION = 0.25  # of free device memory one chunk may take (the rest: queries, states, other work)
CPU_CHUNK_CAP = 512 << 20  # bytes: beyond this, bigger chunks no longer speed the CPU kernel up
_BUILD_ROWS_BYTES = 64 << 20  # rows read per block while building a resident copy


def chunk_rows(free_bytes: float, dim: int, batch: int, fraction: float, cap_bytes: float = float("inf")) -> int:
    """Rows per data chunk so that chunk + logits + weights take at most ``fraction`` of ``free_bytes``
    (and ``cap_bytes``): a pure function of the free memory, a power of two between 256 and 65 536 rows
    (so that calls with a few more or fewer queries cut the same chunks, which keys the fast screen's
    cache of quantized chunks)."""
    budget = min(free_bytes * fraction, cap_bytes)
    per_row = 4 * dim + 16 * batch  # chunk row (fp32) + logits/weights per query (fp32, several copies)
    rows = int(max(256, min(65536, budget // per_row)))
    return 1 << (rows.bit_length() - 1)


def free_bytes(device: torch.device | None = None) -> int:
    """Free memory where the kernel runs: ``torch.cuda.mem_get_info`` on CUDA, available RAM otherwise."""
    if device is not None and device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    return int(psutil.virtual_memory().available)


def device_chunk_rows(dim: int, batch: int, device: torch.device | None = None) -> int:
    """``chunk_rows`` for the device's free memory and safety fraction (see the module doc)."""
    if device is not None and device.type == "cuda":
        return chunk_rows(free_bytes(device), dim, batch, CUDA_FRACTION)
    return chunk_rows(free_bytes(device), dim, batch, CPU_FRACTION, CPU_CHUNK_CAP)


def memory_limit() -> int:
    """Bytes this process may use at most: physical memory, or less under an address-space/data rlimit
    or a cgroup (v2) memory limit."""
    limits = [int(psutil.virtual_memory().total)]
    used = psutil.Process().memory_info()
    for kind, in_use in ((resource.RLIMIT_AS, used.vms), (resource.RLIMIT_DATA, getattr(used, "data", used.vms))):
        soft = resource.getrlimit(kind)[0]
        if soft != resource.RLIM_INFINITY:
            limits.append(max(0, soft - in_use))
    cgroup = Path("/sys/fs/cgroup/memory.max")
    if cgroup.is_file() and (text := cgroup.read_text().strip()).isdigit():
        limits.append(int(text))
    return min(limits)


def resident_budget() -> int:
    """Bytes all resident copies together may take: ``RESIDENT_FRACTION`` of ``memory_limit``."""
    return int(RESIDENT_FRACTION * memory_limit())


@dataclass
class Resident:
    """A source's rows less its centre, as float32 in RAM, with their squared norms."""

    x: torch.Tensor  # (N, D)
    sq: torch.Tensor  # (N,)

    @property
    def nbytes(self) -> int:
        return self.x.numel() * 4 + self.sq.numel() * 4

    def chunks(self, rows: int, include: Indices | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(global index, centred rows) like ``fold.data_chunks``: views for ranges, a gather for ``include``."""
        if include is None:
            for start in range(0, len(self.x), rows):
                stop = min(start + rows, len(self.x))
                yield torch.arange(start, stop), self.x[start:stop]
            return
        idx = torch.from_numpy(np.asarray(include, dtype=np.int64))
        for part in idx.split(rows):
            yield part, self.x[part]

    def norms(self, index: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """‖x‖² of the rows at ``index`` (``x``: those rows; already known)."""
        return self.sq[index]


_HELD: OrderedDict[tuple[str, str], Resident] = OrderedDict()
_LOCK = threading.Lock()


def resident(data: RowSource, center: torch.Tensor) -> Resident | None:
    """The centred rows of ``data`` held in RAM (built on the first call, by one pass over the data), or
    None when they do not fit ``resident_budget`` beside the copies already held (older ones are dropped
    first), the allocation fails or the rows live on another device (a tensor on a GPU): the caller then
    streams chunks."""
    center = center.detach().float().cpu().contiguous()
    key = (data.fingerprint, hashlib.blake2b(center.numpy().tobytes(), digest_size=8).hexdigest())
    with _LOCK:
        if key in _HELD:
            _HELD.move_to_end(key)
            return _HELD[key]
        need = 4 * data.n * (data.dim + 1)
        budget = resident_budget()
        if need > budget or data.rows(0, 1).device.type != "cpu":  # rows already on a device are resident there
            return None
        while _HELD and sum(r.nbytes for r in _HELD.values()) + need > budget:
            _HELD.popitem(last=False)
        try:
            x = torch.empty(data.n, data.dim)
        except (MemoryError, RuntimeError):  # torch reports a failed allocation as a RuntimeError
            return None
        sq = torch.empty(data.n)
        step = max(1, _BUILD_ROWS_BYTES // (4 * data.dim))
        for start in range(0, data.n, step):
            stop = min(start + step, data.n)
            block = torch.sub(data.rows(start, stop), center, out=x[start:stop])
            sq[start:stop] = row_sq_norms(block)
        held = _HELD[key] = Resident(x, sq)
        return held


def release() -> None:
    """Drop every resident copy (tests and benchmarks use it to measure a cold start)."""
    with _LOCK:
        _HELD.clear()
