"""The monthly report as CSV, JSON or a self-contained HTML page (pure rendering, no I/O)."""

from __future__ import annotations

import csv
import html
import io
from dataclasses import asdict, fields
from typing import Any

from api.accounting.service import MonthlyReport, ReportRow

COLUMNS = [f.name for f in fields(ReportRow)]
_DIGITS = {"completeness": 4, "cost": 2, "deviation_pct": 2, "co2_kg": 3}


def _cell(name: str, v: Any) -> Any:
    if isinstance(v, float):
        return round(v, _DIGITS.get(name, 3))
    return v


def row_dict(r: ReportRow) -> dict[str, Any]:
    return {k: _cell(k, v) for k, v in asdict(r).items()}


def to_json(report: MonthlyReport) -> dict[str, Any]:
    return {
        "month": report.month,
        "timezone": report.timezone,
        "start": report.start,
        "end": report.end,
        "co2_factor": report.co2_factor,
        "completeness_threshold": report.completeness_threshold,
        "columns": COLUMNS,
        "rows": [row_dict(r) for r in report.rows],
        "events": report.events,
    }


def to_csv(report: MonthlyReport) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    w.writeheader()
    for r in report.rows:
        w.writerow({k: "" if v is None else v for k, v in row_dict(r).items()})
    return buf.getvalue()


_SHOWN = ["scope", "scope_id", "name", "category", "category_name", "unit", "consumption", "intensity",
          "per_capita_day", "target", "deviation_pct", "cost", "co2_kg", "completeness", "resets",
          "quarantined", "rollovers"]  # fmt: skip


def to_html(report: MonthlyReport) -> str:
    e = html.escape
    head = "".join(f"<th>{e(c.replace('_', ' '))}</th>" for c in _SHOWN)
    body = []
    for r in report.rows:
        d = row_dict(r)
        cls = ' class="low"' if r.low_completeness else ""
        cells = "".join(f"<td>{e('' if d[c] is None else str(d[c]))}</td>" for c in _SHOWN)
        body.append(f"<tr{cls}>{cells}</tr>")
    f = report.co2_factor
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>Monthly energy report {e(report.month)}</title>"
        "<style>body{font-family:sans-serif}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
        "padding:2px 6px;text-align:right}tr.low td{background:#fde2e2}</style></head><body>"
        f"<h1>Monthly energy report {e(report.month)}</h1>"
        f"<p>{e(report.start)} to {e(report.end)} ({e(report.timezone)}). CO2 factor "
        f"{f['kg_per_kwh']} kg/kWh ({e(f['region'])}, {f['year']}; {e(f['source'])}). "
        f"Rows shaded red have under {report.completeness_threshold:.0%} of the expected readings.</p>"
        f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></body></html>"
    )
