"""Command line of waste alerts: backtests and the rule list."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

alerts_app = typer.Typer(help="Waste alerts: backtest rules over stored data.", no_args_is_help=True)

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="campus.yaml (env CAMPUSMON_CONFIG)")]


def _config(path: Path | None):
    from campusmon.config import ConfigError, load_config

    try:
        cfg = load_config(path)
        from api.alerts.config import alerts_config

        alerts_config(cfg, str(path or "campus.yaml"))
        return cfg
    except ConfigError as e:
        typer.secho(f"configuration error:\n{e}", err=True, fg="red")
        raise typer.Exit(2) from None


def _table(alerts: list[dict]) -> str:
    cols = [
        ("id", 4),
        ("rule", 26),
        ("severity", 8),
        ("status", 7),
        ("subject", 24),
        ("since", 16),
        ("first_seen", 16),
        ("cleared_at", 16),
        ("waste/day", 12),
    ]
    lines = ["  ".join(name.ljust(w) for name, w in cols)]
    for a in alerts:
        waste = a["waste"]
        w = f"{waste['per_day']:.1f} {waste['unit']}" if waste["per_day"] is not None else ""
        row = [
            str(a["id"]),
            a["rule"],
            a["severity"],
            a["status"],
            f"{a['subject']['kind']}:{a['subject']['id']}",
            (a["since"] or "")[:16],
            (a["first_seen"] or "")[:16],
            (a["cleared_at"] or "")[:16],
            w,
        ]
        lines.append("  ".join(v[:w_].ljust(w_) for v, (_n, w_) in zip(row, cols, strict=True)))
    return "\n".join(lines)


@alerts_app.command("backtest")
def backtest_cmd(
    config: ConfigOpt = None,
    start: Annotated[
        str, typer.Option(help="period start: ISO date/time (campus-local if naive) or Unix seconds")
    ] = "",
    end: Annotated[str, typer.Option(help="period end (exclusive)")] = "",
    rules: Annotated[
        str | None, typer.Option(help="comma-separated rule ids; 'leak.*' selects a family")
    ] = None,
    fmt: Annotated[str, typer.Option("--format", help="jsonl or table")] = "jsonl",
    step: Annotated[
        int | None, typer.Option(help="seconds between window-rule passes (default: schedule)")
    ] = None,
    commit: Annotated[bool, typer.Option(help="also put the results into the live alert feed")] = False,
    labels: Annotated[
        Path | None, typer.Option(help="incidents.json: score the alerts against labelled incidents")
    ] = None,
) -> None:
    """Print the alerts the rules would have raised over a past period."""
    from api.accounting.periods import parse_local
    from api.alerts.backtest import BacktestError, backtest
    from campusmon.config import ConfigError
    from campusmon.db import init_db
    from campusmon.influx import QueryError, StoreUnavailable, open_store

    if fmt not in ("jsonl", "table"):
        raise typer.BadParameter("use jsonl or table", param_hint="--format")
    cfg = _config(config)
    tz = cfg.site.tz

    def when(text: str, name: str) -> int:
        if not text:
            raise typer.BadParameter("is required", param_hint=f"--{name}")
        try:
            return int(text) if text.isdigit() else parse_local(text, tz)
        except ValueError as e:
            raise typer.BadParameter(str(e), param_hint=f"--{name}") from None

    s, e = when(start, "start"), when(end, "end")
    scored = None
    if labels is not None:
        from api.alerts.labels import LabelsError, parse_labels

        try:
            scored = parse_labels(json.loads(labels.read_text()))
        except (OSError, ValueError, LabelsError) as err:
            raise typer.BadParameter(f"{labels}: {err}", param_hint="--labels") from None
    store = open_store(cfg)
    _engine, sessions = init_db(cfg.database.url)
    try:
        if cfg.targets:  # quotas under version control count without the API running
            from api.alerts.targets_config import load_config_targets

            load_config_targets(cfg, sessions, str(config or "campus.yaml"))
        res = backtest(cfg, store, s, e, rules.split(",") if rules else None, step, sessions, commit=commit)
    except (BacktestError, ConfigError) as err:
        typer.secho(str(err), err=True, fg="red")
        raise typer.Exit(2) from None
    except (StoreUnavailable, QueryError) as err:
        typer.secho(f"InfluxDB: {err}", err=True, fg="red")
        raise typer.Exit(1) from None
    finally:
        store.close()
    if fmt == "jsonl":
        for a in res.alerts:
            typer.echo(json.dumps(a, ensure_ascii=False))
    else:
        typer.echo(_table(res.alerts))
    summary = res.summary()
    if scored is not None:
        from api.alerts.labels import score_labels

        summary["score"] = score_labels(scored, res.alerts, len(cfg.meters), s, e, tz)
    typer.echo(json.dumps(summary, ensure_ascii=False), err=True)


@alerts_app.command("rules")
def rules_cmd(config: ConfigOpt = None) -> None:
    """Every rule with its campus-wide settings (defaults plus alerts.rules of the config)."""
    from api.alerts.config import alerts_config
    from api.alerts.rules import RULES

    cfg = _config(config)
    acfg = alerts_config(cfg)
    for r in RULES.values():
        p = acfg.params(r.id)
        typer.echo(f"{r.id}  [{r.kind}, {(p.severity or r.severity).value}]  {r.title}")
        typer.echo(f"    basis: {r.basis}")
        typer.echo(f"    settings: {json.dumps(p.model_dump(mode='json'))}")
