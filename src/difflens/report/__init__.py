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
    plot_schedule,
    plt,
    save_figure,
)

__all__ = [
    "LevelLog",
    "atomic_path",
    "excess_figure",
    "json_clean",
    "plot_excess",
    "plot_heatmap",
    "plot_losses",
    "plot_optimal_loss",
    "plot_schedule",
    "plt",
    "report_html",
    "save_figure",
    "save_torch",
    "write_bytes",
    "write_csv",
    "write_json",
    "write_text",
]
