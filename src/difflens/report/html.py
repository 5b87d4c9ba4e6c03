"""A self-contained HTML report (plots embedded as base64 PNGs). Every piece of text that comes from
the user or the data (title, verdict, units, table cells) is HTML-escaped."""

from __future__ import annotations

import base64
import math
from html import escape
from pathlib import Path


def _img(path: Path) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return f'<img src="data:image/png;base64,{data}" alt="{escape(Path(path).name)}" style="max-width:100%">'


def _cell(v) -> str:
    if isinstance(v, float) and math.isfinite(v):
        return f"<td>{v:.4g}</td>"
    return f"<td>{'–' if v is None else escape(str(v))}</td>"


def report_html(result: dict, pngs: list[Path], title: str) -> str:
    """A diagnose result as one HTML page: verdict, totals, per-level table and the embedded plots."""
    rows = "".join(
        "<tr>"
        + "".join(
            _cell(lv[k])
            for k in ("sigma", "optimal", "train", "held", "excess", "excess_stderr", "excess_ratio", "gap")
        )
        + "</tr>"
        for lv in result["levels"]
    )
    t = result["totals"]
    totals_text = (
        f"optimal {t['optimal']['value']:.5g} ± {t['optimal']['stderr']:.2g}, model (train) "
        f"{t['train']['value']:.5g}, excess {t['excess']:.4g} (ratio {t['excess_ratio']:.3g}); "
        f"recipe mass inside the grid {t['optimal']['coverage']:.1%}"
    )
    figs = "".join(f"<figure>{_img(p)}</figure>" for p in pngs)
    title = escape(title)
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}
table{{border-collapse:collapse;font-size:12px}} td,th{{border:1px solid #ccc;padding:2px 6px;text-align:right}}
p.verdict{{font-size:15px;background:#f4f4f4;padding:1em}}</style>
</head><body><h1>{title}</h1>
<p class="verdict">{escape(result["verdict"])}</p>
<p><b>Totals weighted by the training recipe</b>: {escape(totals_text)}</p>
{figs}
<h2>Per level ({escape(str(result["units"]["target"]))} units, per dimension)</h2>
<table><tr><th>σ</th><th>optimal J*</th><th>train</th><th>held-out</th><th>excess</th><th>± s.e.</th>
<th>excess ratio</th><th>gap (held−train)/train</th></tr>{rows}</table>
</body></html>
"""
