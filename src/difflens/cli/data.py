"""Commands about data specs: ``data`` (describe) and ``convert`` (to a streaming zarr array)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from difflens import data as data_mod
from difflens.cli.common import Bars, DataOpt, ScaleName, ScaleOpt, console


def data_cmd(data: str = DataOpt, scale: ScaleName = ScaleOpt) -> None:
    """Describe a data spec: size, shape, content hash, value range, variance per dimension."""
    ds = data_mod.load(data, scale.value)
    st = ds.stats
    Console().print_json(data={**ds.summary(), "min": st.minimum, "max": st.maximum, "variance_per_dim": st.variance})


def convert_cmd(
    src: str = typer.Argument(..., help="Data spec to convert: image folder, PATH.npy, PATH.npz[:KEY], digits, ..."),
    dest: Path = typer.Argument(..., help="Output zarr array, DEST.zarr (then use --data DEST.zarr)."),
    scale: ScaleName = ScaleOpt,
    chunk_rows: int = typer.Option(None, help="Samples per zarr chunk [default: ~16 MB chunks]."),
    overwrite: bool = typer.Option(False, help="Replace DEST if it exists."),
) -> None:
    """Write data as a chunked zarr array that streams from disk (raw values + their scaling)."""
    with Bars() as bars:
        tasks = []  # the bar appears with the first rows, after convert checked its input

        def on_rows(k: int, total: int) -> None:
            if not tasks:
                tasks.append(bars.bar.add_task(f"→ {dest.name}", total=total))
            bars.bar.update(tasks[0], total=total, advance=k)

        info = data_mod.convert(
            src, dest, scale=scale.value, chunk_rows=chunk_rows, overwrite=overwrite, on_rows=on_rows
        )
    shape, rows = tuple(info["shape"]), info["chunk_rows"]
    console.print(f"wrote {info['dest']}: shape {shape}, dtype {info['dtype']}, {rows} rows per chunk")
