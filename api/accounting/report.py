"""The monthly report as CSV, JSON or a self-contained HTML page (pure rendering, no I/O).

``csv_text``, ``html_table`` and ``html_page`` are the one table writer of every tabular output
(the monthly report, the annual assessment, the cost allocation), so empty cells, escaping and the
shading of rows under the completeness line look the same everywhere.
"""

from __future__ import annotations

import csv
import html
import io
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, fields
from typing import Any

from api.accounting.service import MonthlyReport, ReportRow

COLUMNS = [f.name for f in fields(ReportRow)]
_DIGITS = {"completeness": 4, "cost": 2, "deviation_pct": 2, "co2_kg": 3}
LOW_FILL = "FDE2E2"  # rows under the completeness line, in HTML and XLSX alike
_STYLE = (
    "body{font-family:sans-serif}table{border-collapse:collapse;margin-bottom:1em}td,th{border:1px solid #ccc;"
    "padding:2px 6px}td{text-align:right}tr.low td{background:#fde2e2}"
)


def cell_text(v: Any) -> Any:
    """An empty cell for a missing figure: ``None`` would read as a value in a spreadsheet."""
    return "" if v is None else v


def csv_text(columns: Sequence[str], rows: Iterable[Mapping[str, Any]]) -> str:
    """Rows as CSV with a header line; keys outside ``columns`` are left out."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n", extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({k: cell_text(v) for k, v in r.items()})
    return buf.getvalue()


def html_table(
    columns: Sequence[str], rows: Iterable[Mapping[str, Any]], low: Iterable[bool] | None = None
) -> str:
    """An HTML table of ``columns``; rows flagged in ``low`` are shaded (``class="low"``)."""
    e = html.escape
    head = "".join(f"<th>{e(c.replace('_', ' '))}</th>" for c in columns)
    flags = iter(low) if low is not None else None
    body = []
    for r in rows:
        cls = ' class="low"' if flags is not None and next(flags) else ""
        body.append(
            f"<tr{cls}>" + "".join(f"<td>{e(str(cell_text(r.get(c))))}</td>" for c in columns) + "</tr>"
        )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def html_page(title: str, body: str) -> str:
    """A self-contained page (no external assets) around already-escaped ``body``."""
    t = html.escape(title)
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{t}</title><style>{_STYLE}</style></head>"
        f"<body><h1>{t}</h1>{body}</body></html>"
    )


def xlsx_table(
    ws: Any, columns: Sequence[str], rows: Iterable[Mapping[str, Any]], low: Iterable[bool] | None = None
) -> None:
    """Fill an openpyxl sheet: a bold header, one line per row, shaded rows where ``low`` says so."""
    from openpyxl.styles import Font, PatternFill

    ws.append(list(columns))
    for cell in ws[1]:
        cell.font = Font(bold=True)
    red = PatternFill("solid", fgColor=LOW_FILL)
    flags = iter(low) if low is not None else None
    for r in rows:
        ws.append([r.get(c) for c in columns])
        if flags is not None and next(flags):
            for cell in ws[ws.max_row]:
                cell.fill = red


def _cell(name: str, v: Any) -> Any:
    if isinstance(v, float):
        return round(v, _DIGITS.get(name, 3))
    return v


def row_dict(r: ReportRow) -> dict[str, Any]:
    return {k: _cell(k, v) for k, v in asdict(r).items()}


def to_json(
    report: MonthlyReport, measure: str = "native", totals: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    out = {
        "month": report.month,
        "timezone": report.timezone,
        "start": report.start,
        "end": report.end,
        "measure": measure,
        "co2_factor": report.co2_factor,
        "completeness_threshold": report.completeness_threshold,
        "columns": COLUMNS,
        "rows": [row_dict(r) for r in report.rows],
        "events": report.events,
    }
    if totals is not None:
        out["totals"] = totals
    return out


def to_csv(report: MonthlyReport) -> str:
    return csv_text(COLUMNS, (row_dict(r) for r in report.rows))


_SHOWN = ["scope", "scope_id", "name", "category", "category_name", "unit", "consumption", "intensity",
          "per_capita_day", "target", "deviation_pct", "cost", "co2_kg", "completeness", "resets",
          "quarantined", "rollovers"]  # fmt: skip


def to_html(report: MonthlyReport, measure: str = "native") -> str:
    e = html.escape
    f = report.co2_factor
    what = {"kgce": " in standard coal (kgce)", "co2": " in kg CO2"}.get(measure, "")
    intro = (
        f"<p>{e(report.start)} to {e(report.end)} ({e(report.timezone)}){e(what)}. CO2 factor "
        f"{f['kg_per_kwh']} kg/kWh ({e(f['region'])}, {f['year']}; {e(f['source'])}). "
        f"Rows shaded red have under {report.completeness_threshold:.0%} of the expected readings.</p>"
    )
    table = html_table(_SHOWN, (row_dict(r) for r in report.rows), (r.low_completeness for r in report.rows))
    return html_page(f"Monthly energy report {report.month}", intro + table)
