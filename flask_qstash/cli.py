"""``flask qstash ...``: the operator's view of jobs, schedules and the dev server."""

from __future__ import annotations

import json
import typing as t

import click
from flask import current_app
from flask.cli import with_appcontext

from .deadletter import dlq_cli

if t.TYPE_CHECKING:  # pragma: no cover
    from .extension import QStash


def _extension() -> QStash:
    ext: QStash | None = current_app.extensions.get("qstash")

    if ext is None:
        raise click.ClickException(
            "This app has no QStash extension. Call 'QStash(app)' or"
            " 'qstash.init_app(app)' in the app factory."
        )

    return ext


@click.group("qstash", help="Inspect and operate Flask-QStash jobs.")
def qstash_cli() -> None:
    pass


@qstash_cli.command("list-jobs")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@with_appcontext
def list_jobs(as_json: bool) -> None:
    """List every job with its route, schema and options."""
    ext = _extension()
    prefix = ext.settings.url_prefix
    rows = []

    for name in sorted(ext.jobs):
        info = ext.jobs[name].describe()
        info["route"] = f"{prefix}/<tenant>/{name}"
        rows.append(info)

    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return

    if not rows:
        click.echo("No jobs are registered.")
        return

    headers = ["name", "route", "schema", "retries", "queue", "schedules"]
    table = [
        [
            row["name"],
            row["route"],
            ", ".join(row["schema"]) if row["schema"] is not None else "-",
            "default" if row["retries"] is None else str(row["retries"]),
            row["queue"] or "-",
            "; ".join(row["schedules"]) or "-",
        ]
        for row in rows
    ]
    widths = [max(len(h), *(len(r[i]) for r in table)) for i, h in enumerate(headers)]
    click.echo(
        "  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True))
    )

    for row in table:
        click.echo(
            "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        )


@qstash_cli.command("sync-schedules")
@click.option(
    "--tenant",
    "tenants",
    multiple=True,
    help="Only this tenant; repeat for several. Default: every configured tenant.",
)
@with_appcontext
def sync_schedules(tenants: tuple[str, ...]) -> None:
    """Create or update the cron schedules that jobs declare with ``cron=``."""
    ext = _extension()
    ids = ext.sync_schedules(tenants or None)

    for schedule_id in ids:
        click.echo(f"synced {schedule_id}")

    click.echo(f"{len(ids)} schedule(s) synced.")


@qstash_cli.command("dev")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8080, show_default=True, type=int)
@click.option(
    "--db", "database", default=None, help="SQLite file; in-memory if omitted."
)
@click.option("--speed", default=1.0, show_default=True, type=float)
def dev(host: str, port: int, database: str | None, speed: float) -> None:
    """Run the QStash-compatible dev server in the foreground."""
    from . import devserver

    argv = ["--host", host, "--port", str(port), "--speed", str(speed)]

    if database is not None:
        argv += ["--db", database]

    raise SystemExit(devserver.main(argv))


qstash_cli.add_command(dlq_cli)
