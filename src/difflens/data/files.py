"""Files written whole or not at all: the one atomic writer every layer uses (docs/architecture.md).

Everything difflens writes — JSON/CSV results, plots, HTML, checkpoints, zarr arrays — goes through
:func:`atomic_path`: the content is written under a hidden temporary sibling name and renamed over
the destination only when complete, so an interrupted run never leaves a truncated file that looks
finished. It lives in the data layer (the lowest layer that writes files) so that ``data.convert``
and ``models.train`` can use it as well as ``report``.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write ``path`` through (a file or a directory); on a clean exit it
    replaces ``path`` (an existing directory there is removed first), on an error it is deleted."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    _remove(tmp)
    try:
        yield tmp
    except BaseException:
        _remove(tmp)
        raise
    if tmp.is_dir() and (path.exists() or path.is_symlink()):  # os.replace cannot overwrite a non-empty directory
        _remove(path)
    os.replace(tmp, path)


def write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    write_bytes(path, text.encode())


def json_clean(obj: Any) -> Any:
    """JSON has no NaN/Inf: they become null (recursively through dicts, lists and tuples)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: json_clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_clean(v) for v in obj]
    return obj


def write_json(path: str | Path, obj: Any) -> None:
    """Indented JSON with NaN/Inf as null, atomically."""
    write_text(path, json.dumps(json_clean(obj), indent=2) + "\n")


def write_csv(path: str | Path, rows: Iterable[dict]) -> None:
    """Rows of dicts (columns from the first row) as CSV, atomically; no rows: an empty file."""
    rows = list(rows)
    buf = io.StringIO()
    if rows:
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    write_text(path, buf.getvalue())


def save_torch(obj: object, path: str | Path) -> None:
    """``torch.save`` atomically (checkpoints)."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
