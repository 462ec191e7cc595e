"""``campusmon fuel``, ``campusmon readings import`` and ``campusmon report annual|allocation``.

Entries made here are recorded in the audit log as done by ``cli:<local user>``, like the identity
commands, and hand-read meter readings take the same ingest path as the API's.
"""

from __future__ import annotations

import sys
import time
from datetime import date
from pathlib import Path
from typing import Annotated, Any

import typer

from api.accounting.cli import report_app

fuel_app = typer.Typer(help="Fuel deliveries and stock-takings (docs/assessment.md#fuel).", no_args_is_help=True)
readings_app = typer.Typer(help="Meter readings taken by hand.", no_args_is_help=True)

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="campus.yaml (env CAMPUSMON_CONFIG)")]


def _who() -> str:
    from api.auth.cli import _who as who

    return who()


def _open(config: Path | None) -> tuple[Any, Any, Any]:
    """(config, accounting settings, session factory), or exit 2 with the config's error."""
    from api.accounting.assessment import assessment_settings
    from api.accounting.settings import accounting_settings
    from campusmon.config import ConfigError, load_config
    from campusmon.db import init_db

    try:
        cfg = load_config(config)
        acc = accounting_settings(cfg, str(config or "campus config"))
        assessment_settings(cfg, str(config or "campus config"))
    except ConfigError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    _engine, sessions = init_db(cfg.database.url)
    return cfg, acc, sessions


def _audit(sessions: Any, action: str, detail: dict[str, Any]) -> None:
    from api.auth.service import AuthStore

    AuthStore(sessions, ttl=0).audit(_who(), action, detail=detail)


@fuel_app.command("add")
def fuel_add(
    fuel: Annotated[str, typer.Argument(help="coal | diesel | petrol | lpg")],
    quantity: Annotated[float, typer.Argument(help="as on the receipt")],
    unit: Annotated[str, typer.Argument(help="t, kg or L")],
    day: Annotated[str, typer.Option("--date", help="YYYY-MM-DD of the delivery or count")] = "",
    building: Annotated[str | None, typer.Option(help="building it went to")] = None,
    unit_id: Annotated[str | None, typer.Option("--unit", help="organisational unit it went to")] = None,
    supplier: Annotated[str, typer.Option()] = "",
    receipt: Annotated[str | None, typer.Option(help="receipt number (required for a delivery)")] = None,
    stock: Annotated[bool, typer.Option("--stock", help="a stock-taking: what is left on that day")] = False,
    density: Annotated[float | None, typer.Option(help="kg/L, for litres (default per fuel)")] = None,
    note: Annotated[str, typer.Option()] = "",
    config: ConfigOpt = None,
) -> None:
    """Enter one fuel delivery (or, with --stock, a stock-taking)."""
    from api.accounting import fuel as fuelmod
    from api.accounting.assessment import site_factors

    cfg, acc, sessions = _open(config)
    try:
        d = date.fromisoformat(day) if day else date.today()
    except ValueError:
        typer.echo(f"error: --date {day!r} is not YYYY-MM-DD", err=True)
        raise typer.Exit(2) from None
    e = fuelmod.FuelInput(fuel, d, quantity, unit, building, unit_id, supplier, receipt,
                          "stock" if stock else "delivery", density, note)  # fmt: skip
    with sessions() as s:
        try:
            out = fuelmod.add_entry(s, cfg, site_factors(cfg, acc), e, _who())
        except fuelmod.FuelInvalid as err:
            typer.echo(f"error: {err.field + ': ' if err.field else ''}{err}", err=True)
            raise typer.Exit(1) from None
    _audit(sessions, "fuel add", {"entry": out["id"], "fuel": out["fuel"], "receipt": out["receipt"]})
    typer.echo(f"entry {out['id']}: {out['entry']} of {out['quantity']:g} {out['unit']} {out['fuel']} "
               f"({out['quantity_kg']:g} kg) on {out['day']}")  # fmt: skip


@fuel_app.command("list")
def fuel_list(
    fuel: Annotated[str | None, typer.Option(help="only this fuel")] = None, config: ConfigOpt = None
) -> None:
    """Every entry, oldest first, as CSV."""
    import csv

    from api.accounting import fuel as fuelmod

    _cfg, _acc, sessions = _open(config)
    with sessions() as s:
        rows = [fuelmod.as_dict(r) for r in fuelmod.entries(s, fuel)]
    if not rows:
        return
    w = csv.DictWriter(sys.stdout, fieldnames=list(rows[0]), lineterminator="\n")
    w.writeheader()
    w.writerows(rows)


@readings_app.command("import")
def readings_import(
    csv_path: Annotated[Path, typer.Option("--csv", help="meter,time,value[,quantity,unit] per row")],
    config: ConfigOpt = None,
) -> None:
    """Import hand-read meter registers through the ingest path; refused rows are listed and kept
    as dead letters, the rest are stored."""
    from api.accounting import fuel as fuelmod
    from campusmon.deadletter import DeadLetters
    from campusmon.influx import StoreUnavailable, open_store
    from campusmon.ingest import Ingestor

    cfg, _acc, sessions = _open(config)
    try:
        rows = fuelmod.read_csv(csv_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        typer.echo(f"error: {csv_path}: {e}", err=True)
        raise typer.Exit(2) from None
    store = open_store(cfg)
    try:
        out = fuelmod.ingest_manual(Ingestor(cfg, store, DeadLetters(sessions), "manual"), cfg, rows, _who())
    except StoreUnavailable as e:
        typer.echo(f"error: InfluxDB at {cfg.influxdb.url}: {e}; nothing was stored", err=True)
        raise typer.Exit(1) from None
    finally:
        store.close()
    _audit(sessions, "readings import", {"file": str(csv_path), "rows": len(rows), "stored": out["stored"]})
    for line in out["errors"] + out["refused"]:
        typer.echo(f"refused: {line}", err=True)
    typer.echo(f"stored {out['stored']} of {len(rows)} readings from {csv_path}", err=True)
    if out["errors"] or out["refused"]:
        raise typer.Exit(1)


def _write(out: Path | None, body: bytes | str) -> None:
    if out is None:
        if isinstance(body, bytes):
            sys.stdout.buffer.write(body)
        else:
            sys.stdout.write(body)
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(body, bytes):
        out.write_bytes(body)
    else:
        out.write_text(body, encoding="utf-8")


def _format(fmt: str | None, out: Path | None, allowed: tuple[str, ...]) -> str:
    fmt = fmt or (out.suffix.lstrip(".").lower() if out is not None and out.suffix else allowed[0])
    if fmt not in allowed:
        raise typer.BadParameter(f"{fmt!r} is not {', '.join(allowed)}", param_hint="--format")
    return fmt


@report_app.command("annual")
def annual_report(
    year: Annotated[int, typer.Option("--year", help="calendar year, local time")] = 0,
    fmt: Annotated[str | None, typer.Option("--format", help="html | csv | xlsx | json (default: from --out)")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="file to write (stdout if left out)")] = None,
    config: ConfigOpt = None,
) -> None:
    """The annual target check of every unit (年度目标考核): kgce, per m² and person, score, pass/fail."""
    import json

    from sqlalchemy import select

    from api.accounting import assessment, fuel
    from campusmon.db import AssessmentOverride
    from campusmon.influx import QueryError, StoreUnavailable, open_store

    fmt = _format(fmt, out, ("html", "csv", "xlsx", "json"))
    cfg, acc, sessions = _open(config)
    year = year or date.today().year
    with sessions() as s:
        rows = fuel.entries(s)
        overrides = {
            r.org_unit: r.reason for r in s.scalars(select(AssessmentOverride).where(AssessmentOverride.year == year))
        }
    store = open_store(cfg)
    try:
        with typer.progressbar(length=len(cfg.units), label=f"assessment {year}", file=sys.stderr) as bar:
            a = assessment.annual_assessment(
                store, cfg, acc, year, rows, overrides, int(time.time()), progress=lambda _u: bar.update(1)
            )
    except (StoreUnavailable, QueryError) as e:
        typer.echo(f"error: InfluxDB at {cfg.influxdb.url}: {e}", err=True)
        raise typer.Exit(1) from None
    finally:
        store.close()
    body: bytes | str = {
        "html": assessment.to_html,
        "csv": assessment.to_csv,
        "xlsx": assessment.to_xlsx,
        "json": lambda x: json.dumps(assessment.to_json(x), ensure_ascii=False, indent=2) + "\n",
    }[fmt](a)
    _write(out, body)
    flagged = sum(r.flagged for r in a.units)
    passed = sum(r.passed is True for r in a.units)
    typer.echo(f"{len(a.units)} units: {passed} passed, {flagged} flagged under the completeness line", err=True)


@report_app.command("allocation")
def allocation_report(
    month: Annotated[str, typer.Option("--month", help="YYYY-MM")],
    fmt: Annotated[str | None, typer.Option("--format", help="csv | xlsx (default: from --out)")] = None,
    out: Annotated[Path | None, typer.Option("--out")] = None,
    config: ConfigOpt = None,
) -> None:
    """Each unit's bill for a month; shared buildings split by assessment.allocation_rule."""
    from api.accounting import allocation, periods
    from api.accounting.assessment import assessment_settings
    from campusmon.influx import QueryError, StoreUnavailable, open_store

    fmt = _format(fmt, out, ("csv", "xlsx"))
    cfg, acc, _sessions = _open(config)
    try:
        periods.month_range(month, cfg.site.tz)
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--month") from None
    store = open_store(cfg)
    try:
        lines = allocation.monthly_allocation(store, cfg, acc, month)
    except (StoreUnavailable, QueryError) as e:
        typer.echo(f"error: InfluxDB at {cfg.influxdb.url}: {e}", err=True)
        raise typer.Exit(1) from None
    finally:
        store.close()
    rule = assessment_settings(cfg).allocation_rule
    _write(out, allocation.to_csv(lines) if fmt == "csv" else allocation.to_xlsx(lines, rule))
