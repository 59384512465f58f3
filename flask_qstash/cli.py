"""``flask qstash ...``: the operator's view of jobs, schedules and the dev server."""

from __future__ import annotations

import json
import typing as t

import click
from flask import current_app
from flask.cli import with_appcontext

from . import deadletter
from .errors import PublishError
from .errors import UnknownTenantError

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
    _table(headers, table)


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


# ---------------------------------------------------------------------------
# flask qstash dlq ...


def _clean(value: t.Any, limit: int | None = None) -> str:
    """``value`` as one printable line: no terminal control characters."""
    text = "".join(
        c if c.isprintable() else repr(c)[1:-1] for c in str(value).replace("\n", " ")
    )

    if limit is not None and len(text) > limit:
        return text[: limit - 3] + "..."

    return text


def _table(headers: t.Sequence[str], rows: t.Sequence[t.Sequence[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    click.echo(
        "  ".join(
            h.upper().ljust(w) for h, w in zip(headers, widths, strict=True)
        ).rstrip()
    )

    for row in rows:
        click.echo(
            "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        )


class _Errors:
    """Turns the expected errors of an operation into a clean CLI error."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: t.Any, exc: BaseException | None, tb: t.Any) -> None:
        if isinstance(
            exc, UnknownTenantError | deadletter.DeadLetterNotFoundError | PublishError
        ):
            raise click.ClickException(str(exc)) from None


_tenant_option = click.option(
    "--tenant", default=None, help="The tenant id. Default: the default tenant."
)
_job_option = click.option("--job", default=None, help="Only entries of this job.")


@click.group(
    "dlq",
    help="Inspect, replay and delete dead-lettered job runs.",
)
def dlq_cli() -> None:
    pass


@dlq_cli.command("list")
@_tenant_option
@_job_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@with_appcontext
def list_command(tenant: str | None, job: str | None, as_json: bool) -> None:
    """List the dead letters of a tenant, optionally of one job."""
    ext = _extension()

    with _Errors():
        tenant_id = deadletter.tenant_for(ext, tenant).id
        entries = deadletter.list_dead(ext, tenant_id, job)

    if as_json:
        click.echo(json.dumps([e.to_dict() for e in entries], indent=2))
        return

    if not entries:
        click.echo(f"No dead letters for tenant {tenant_id}.")
        return

    rows = [
        [
            _clean(e.dlq_id),
            _clean(e.job),
            str(e.response_status),
            e.created_at.strftime("%Y-%m-%d %H:%M:%S"),
            _clean(e.message_id),
            _clean(e.problem or "-", 60),
        ]
        for e in entries
    ]
    _table(["dlq id", "job", "status", "created (utc)", "message id", "note"], rows)
    click.echo(f"{len(entries)} dead letter(s) for tenant {tenant_id}.")


@dlq_cli.command("show")
@click.argument("dlq_id")
@_tenant_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@with_appcontext
def show_command(dlq_id: str, tenant: str | None, as_json: bool) -> None:
    """Show one dead letter with its payload and the last answer."""
    ext = _extension()

    with _Errors():
        dead = deadletter.get_dead(ext, tenant, dlq_id)

    if as_json:
        click.echo(json.dumps(dead.to_dict(), indent=2))
        return

    fields = [
        ("dlq id", dead.dlq_id),
        ("message id", dead.message_id),
        ("tenant", dead.tenant),
        ("job", dead.job),
        ("url", dead.url),
        ("created", dead.created_at.isoformat()),
        ("max retries", dead.max_retries),
        ("last status", dead.response_status),
        ("last answer", _clean(dead.response_body, 500) or "-"),
        ("problem", dead.problem or "-"),
    ]

    for name, value in fields:
        click.echo(f"{name + ':':<13} {_clean(value)}")

    click.echo("payload:")

    for line in json.dumps(dead.payload, indent=2).splitlines():
        click.echo("  " + _clean(line))


@dlq_cli.command("replay")
@click.argument("dlq_ids", nargs=-1)
@click.option("--all", "replay_all", is_flag=True, help="Replay every entry.")
@_job_option
@_tenant_option
@click.option("--dry-run", is_flag=True, help="Check only; enqueue and delete nothing.")
@with_appcontext
def replay_command(
    dlq_ids: tuple[str, ...],
    replay_all: bool,
    job: str | None,
    tenant: str | None,
    dry_run: bool,
) -> None:
    """Re-enqueue dead letters with their job's current schema and options.

    Entries whose payload fails the current schema, or whose job is gone, are
    listed with the reason and kept. Exits with status 1 if any entry was not
    (or, with --dry-run, would not be) replayed.
    """
    _need_ids(dlq_ids, replay_all, "replay")
    ext = _extension()

    with _Errors():
        outcomes = deadletter.replay(
            ext, tenant, None if replay_all else dlq_ids, job=job, dry_run=dry_run
        )

    if not outcomes:
        click.echo("No dead letters to replay.")
        return

    rows = [
        [
            _clean(o.dlq_id),
            _clean(o.job or "-"),
            o.status,
            _clean(o.message_id or o.reason or "-", 100),
        ]
        for o in outcomes
    ]
    _table(["dlq id", "job", "result", "message id / reason"], rows)
    good = sum(o.ok for o in outcomes)
    verb = "would be replayed" if dry_run else "replayed"
    click.echo(f"{good} of {len(outcomes)} dead letter(s) {verb}.")

    if good != len(outcomes):
        raise click.exceptions.Exit(1)


@dlq_cli.command("delete")
@click.argument("dlq_ids", nargs=-1)
@click.option("--all", "delete_all", is_flag=True, help="Delete every entry.")
@_job_option
@_tenant_option
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@with_appcontext
def delete_command(
    dlq_ids: tuple[str, ...],
    delete_all: bool,
    job: str | None,
    tenant: str | None,
    yes: bool,
) -> None:
    """Delete dead letters without replaying them."""
    _need_ids(dlq_ids, delete_all, "delete")
    ext = _extension()

    with _Errors():
        tenant_id = deadletter.tenant_for(ext, tenant).id

    what = (
        f"every dead letter of tenant {tenant_id}"
        + (f" and job {job}" if job is not None else "")
        if delete_all
        else f"{len(dlq_ids)} dead letter(s) of tenant {tenant_id}"
    )

    if not yes:
        click.confirm(f"Delete {what}?", abort=True)

    with _Errors():
        outcomes = deadletter.delete(
            ext, tenant_id, None if delete_all else dlq_ids, job=job
        )

    if not outcomes:
        click.echo("No dead letters to delete.")
        return

    rows = [
        [_clean(o.dlq_id), "deleted" if o.ok else "kept", _clean(o.reason or "-", 100)]
        for o in outcomes
    ]
    _table(["dlq id", "result", "reason"], rows)
    good = sum(o.ok for o in outcomes)
    click.echo(f"{good} of {len(outcomes)} dead letter(s) deleted.")

    if good != len(outcomes):
        raise click.exceptions.Exit(1)


def _need_ids(dlq_ids: tuple[str, ...], every: bool, verb: str) -> None:
    if every and dlq_ids:
        raise click.UsageError(
            f"Both ids and '--all' were given. Name the entries to {verb}, or pass"
            " '--all' alone."
        )

    if not every and not dlq_ids:
        raise click.UsageError(
            f"No dead letter ids were given. Name the entries to {verb}, or pass"
            " '--all' (with '--job' to limit it to one job)."
        )


qstash_cli.add_command(dlq_cli)
