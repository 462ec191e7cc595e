"""Command line of consumption accounting: reports."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import typer

from api.accounting import periods

report_app = typer.Typer(help="Consumption reports.", no_args_is_help=True)


@report_app.callback()
def _reports() -> None:
    """Consumption reports (a group, so that ``report monthly`` keeps its name as commands are added)."""


@report_app.command("monthly")
def monthly_report_command(
    month: str = typer.Option(None, "--month", help="YYYY-MM (default: the current month)"),
    out: Path = typer.Option(
        None, "--out", help="file to write; the format follows the suffix (.csv .json .html)"
    ),
    fmt: str = typer.Option(None, "--format", help="csv | json | html (default: from --out, else csv)"),
    config: Path = typer.Option(
        None, "--config", help="campus config (default: $CAMPUSMON_CONFIG or campus.yaml)"
    ),
    with_targets: bool = typer.Option(True, "--targets/--no-targets", help="read targets from the database"),
    measure: str = typer.Option("native", "--measure", help="native | kgce | co2: the unit of every amount"),
) -> None:
    """Per building and sub-item: consumption, intensity, target, deviation, cost, CO2, completeness."""
    import json

    from api.accounting import report, service, target_repo
    from api.accounting.settings import accounting_settings
    from campusmon.config import ConfigError, load_config
    from campusmon.influx import QueryError, StoreUnavailable, open_store

    fmt = fmt or (out.suffix.lstrip(".").lower() if out is not None and out.suffix else "csv")
    if fmt not in ("csv", "json", "html"):
        raise typer.BadParameter(f"{fmt!r} is not csv, json or html", param_hint="--format")
    if measure not in ("native", "kgce", "co2"):
        raise typer.BadParameter(f"{measure!r} is not native, kgce or co2", param_hint="--measure")
    try:
        cfg = load_config(config)
        settings = accounting_settings(cfg, str(config or "campus config"))
    except ConfigError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    now = int(time.time())
    if month is None:
        month = periods.buckets(now, now + 1, "month", cfg.site.tz)[0].label
    try:
        periods.month_range(month, cfg.site.tz)
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--month") from None
    targets: list[service.TargetRecord] = []
    if with_targets:
        from campusmon.db import init_db

        engine, sessions = init_db(cfg.database.url)
        with sessions() as s:
            targets = [(t.id, target_repo.as_spec(t)) for t in target_repo.all_targets(s)]
        engine.dispose()
    store = open_store(cfg)
    try:
        with typer.progressbar(length=len(cfg.buildings), label=f"report {month}", file=sys.stderr) as bar:
            rep = service.monthly_report(
                store, cfg, settings, month, targets, now, progress=lambda _b: bar.update(1)
            )
    except (StoreUnavailable, QueryError) as e:
        typer.echo(f"error: InfluxDB at {cfg.influxdb.url}: {e}", err=True)
        raise typer.Exit(1) from None
    finally:
        store.close()
    from api.accounting import measure as measures

    rep = measures.report_in(rep, cfg, settings, measure)
    if fmt == "csv":
        body = report.to_csv(rep)
    elif fmt == "html":
        body = report.to_html(rep, measure)
    else:
        totals = None if measure == "native" else measures.totals(rep, cfg, settings, measure)
        body = json.dumps(report.to_json(rep, measure, totals), ensure_ascii=False, indent=2) + "\n"
    if out is None:
        sys.stdout.write(body)
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(body, encoding="utf-8")
    low = sum(r.low_completeness for r in rep.rows if r.scope == "building")
    typer.echo(
        f"wrote {out}: {len(rep.rows)} rows, {low} building rows under the completeness threshold", err=True
    )
