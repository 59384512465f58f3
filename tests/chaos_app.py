"""The app the chaos test (``test_chaos.py``) runs, killed and restarted.

Run as a script it serves :func:`create_app` with Waitress on
``127.0.0.1:$CHAOS_PORT``; the test process imports it to build the same app
for publishing, listing dead letters and replaying them. Everything is read
from the environment (or the mapping passed to :func:`create_app`):

``CHAOS_RUN``
    Suffix of this run's tables, so runs never see each other's rows.
``CHAOS_FAULTS``
    ``on`` injects faults: 10% of attempts raise, 5% outlive the job's
    timeout, and every ``fail_for_good`` job fails for good. ``off`` runs
    every job cleanly, as after a fix.
``CHAOS_SPEED``, ``CHAOS_EPOCH``
    The dev server's speed factor and a Unix time shared by every process;
    the idempotency store's clock runs ``CHAOS_SPEED`` times faster from
    ``CHAOS_EPOCH``, as the dev server's retry clock does.
``SQLALCHEMY_DATABASE_URI``, ``QSTASH_URL``, ``QSTASH_PUBLIC_URL``
    The database, the dev server, and the origin the dev server calls.

Each handler attempt is also written to the ``chaos_attempts_<run>`` table on
a connection of its own that commits at once, so the attempts survive the
rollbacks and the kill, and the test can count them.
"""

from __future__ import annotations

import os
import random
import time
import typing as t

import sqlalchemy as sa
from flask import Flask
from flask_sqlalchemy import SQLAlchemy
from marshmallow import fields

from flask_qstash import JobContext
from flask_qstash import NonRetryableError
from flask_qstash import QStash
from flask_qstash import signals
from flask_qstash.devserver import DEFAULT_CURRENT_SIGNING_KEY
from flask_qstash.devserver import DEFAULT_NEXT_SIGNING_KEY
from flask_qstash.devserver import DEFAULT_TOKEN
from flask_qstash.idempotency import SQLAlchemyStore

#: Share of attempts that raise, and of attempts that outlive the timeout.
FAIL_RATE = 0.10
TIMEOUT_RATE = 0.05

#: The job's per-attempt timeout in seconds and its retries.
JOB_TIMEOUT = 1
RETRIES = 10

#: How long an attempt picked to time out sleeps before finishing normally.
SLOW_SLEEP = JOB_TIMEOUT + 0.3


class Tables(t.NamedTuple):
    """The tables of one run, in a ``MetaData`` of their own."""

    metadata: sa.MetaData
    effects: sa.Table
    attempts: sa.Table
    idempotency: str


def tables(run: str) -> Tables:
    """Describe the tables of run ``run``; nothing is created."""
    metadata = sa.MetaData()
    effects = sa.Table(
        f"chaos_effects_{run}",
        metadata,
        sa.Column("id", sa.Integer, primary_key=True),
        # No unique constraint: a duplicate effect must be visible, not refused.
        sa.Column("n", sa.Integer, nullable=False),
        sa.Column("message_id", sa.String(64), nullable=False),
    )
    attempts = sa.Table(
        f"chaos_attempts_{run}",
        metadata,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("n", sa.Integer, nullable=True),
        sa.Column("message_id", sa.String(64), nullable=False),
        sa.Column("retried", sa.Integer, nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
    )
    return Tables(metadata, effects, attempts, f"chaos_idem_{run}")


def create_app(env: t.Mapping[str, str] | None = None) -> Flask:
    """Build the chaos app from ``env``, :data:`os.environ` if omitted."""
    env = os.environ if env is None else env
    run = env["CHAOS_RUN"]
    faults = env.get("CHAOS_FAULTS", "off") == "on"
    speed = float(env.get("CHAOS_SPEED", "1"))
    epoch = float(env.get("CHAOS_EPOCH", "0"))
    schema = tables(run)

    app = Flask(__name__)
    app.config.update(
        SQLALCHEMY_DATABASE_URI=env["SQLALCHEMY_DATABASE_URI"],
        # Each request holds at most two connections: the session's and the
        # attempt log's; the store borrows one between them.
        SQLALCHEMY_ENGINE_OPTIONS={"pool_size": 40, "max_overflow": 0},
        QSTASH_URL=env["QSTASH_URL"],
        QSTASH_PUBLIC_URL=env["QSTASH_PUBLIC_URL"],
        QSTASH_TOKEN=DEFAULT_TOKEN,
        QSTASH_CURRENT_SIGNING_KEY=DEFAULT_CURRENT_SIGNING_KEY,
        QSTASH_NEXT_SIGNING_KEY=DEFAULT_NEXT_SIGNING_KEY,
        QSTASH_DEV_SERVER=False,
        QSTASH_IDEMPOTENCY_STORE="sqlalchemy",
    )
    db = SQLAlchemy()
    db.init_app(app)

    with app.app_context():
        engine = db.engine

    # The dev server divides Retry-After and backoff by its speed, so leases
    # must run on the same accelerated clock, or a message whose lease is held
    # by a killed process would spend every retry on 409s before it ends.
    def clock() -> float:
        now = time.time()
        return now + (now - epoch) * (speed - 1)

    store = SQLAlchemyStore(
        engine=engine,
        table_name=schema.idempotency,
        # A day of real time, whatever the speed.
        retention=86400 * speed,
        clock=clock,
    )
    qstash = QStash(idempotency_store=store)

    def log_attempt(n: int | None, ctx: JobContext, outcome: str) -> None:
        with engine.begin() as conn:
            conn.execute(
                schema.attempts.insert().values(
                    n=n,
                    message_id=ctx.message_id,
                    retried=ctx.retried,
                    outcome=outcome,
                    pid=os.getpid(),
                )
            )

    @qstash.job(
        "effect",
        schema={
            "n": fields.Integer(required=True),
            "fail_for_good": fields.Boolean(load_default=False),
        },
        retries=RETRIES,
        timeout=JOB_TIMEOUT,
        atomic=True,
    )
    def effect(payload: dict[str, t.Any], ctx: JobContext) -> int:
        n: int = payload["n"]
        outcome = "ok"

        if faults and payload["fail_for_good"]:
            outcome = "dead"
        elif faults:
            draw = random.random()

            if draw < FAIL_RATE:
                outcome = "fail"
            elif draw < FAIL_RATE + TIMEOUT_RATE:
                outcome = "timeout"

        log_attempt(n, ctx, outcome)

        if outcome == "dead":
            raise NonRetryableError(f"job {n} is told to fail for good")

        if outcome == "fail":
            raise RuntimeError(f"injected failure of job {n}")

        if outcome == "timeout":
            time.sleep(SLOW_SLEEP)

        # Not committed here: the atomic job commits it with the completion.
        db.session.execute(
            schema.effects.insert().values(n=n, message_id=ctx.message_id)
        )
        return n

    @signals.job_skipped.connect_via(app)
    def skipped(sender: Flask, **extra: t.Any) -> None:
        ctx = JobContext(job=extra["job"], tenant="", message_id=extra["message_id"])
        log_attempt(None, ctx, f"skip-{extra['reason']}")

    @app.get("/chaos/ready")
    def ready() -> str:
        return "ready"

    qstash.init_app(app)
    app.extensions["chaos"] = {"db": db, "tables": schema, "receivers": [skipped]}
    return app


def main() -> None:
    """Serve the app on ``127.0.0.1:$CHAOS_PORT`` until killed."""
    import waitress

    waitress.serve(  # type: ignore[no-untyped-call]
        create_app(),
        host="127.0.0.1",
        port=int(os.environ["CHAOS_PORT"]),
        threads=int(os.environ.get("CHAOS_THREADS", "32")),
        connection_limit=200,
        _quiet=True,
    )


if __name__ == "__main__":
    main()
