"""Reporting results: atomic writers and the per-level log (``io``), PNG plots (``plots``) and the
self-contained HTML report (``html``). Layer: above models, below analysis (docs/architecture.md)."""

from difflens.report.html import report_html
from difflens.report.io import (
    LevelLog,
    atomic_path,
    json_clean,
    save_torch,
    write_bytes,
    write_csv,
    write_json,
    write_text,
)
from difflens.report.plots import (
    excess_figure,
    plot_excess,
    plot_heatmap,
    plot_losses,
    plot_optimal_loss,
    plt,
    save_figure,
)

_atomic_write = write_bytes  # the name the CLI used before ``write_bytes``; drop once cli/ calls write_bytes

__all__ = [
    "LevelLog",
    "atomic_path",
    "excess_figure",
    "json_clean",
    "plot_excess",
    "plot_heatmap",
    "plot_losses",
    "plot_optimal_loss",
    "plt",
    "report_html",
    "save_figure",
    "save_torch",
    "write_bytes",
    "write_csv",
    "write_json",
    "write_text",
]
