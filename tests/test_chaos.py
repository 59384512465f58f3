"""Chaos: 1,000 jobs through the dev server with faults and a killed app (#4).

The dev server runs in this process; the app (``chaos_app.py``) runs in a
subprocess on PostgreSQL with atomic jobs. 10% of handler attempts raise, 5%
outlive the job's timeout, every twentieth job fails for good, and the app is
killed with SIGKILL once mid-run and started again. Afterwards every job's
effect is recorded exactly once, the jobs that failed for good, and only
those, are in the dead-letter queue, and they all replay once the faults are
gone.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import typing as t
import uuid
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from chaos_app import create_app
from chaos_app import Tables
from chaos_app import tables
from flask import Flask

from flask_qstash import deadletter
from flask_qstash import QStash
from flask_qstash.devserver import DevServer

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

logger = logging.getLogger(__name__)

POSTGRES_URL = os.environ.get(
    "FLASK_QSTASH_TEST_POSTGRES_URL",
    "postgresql+psycopg://postgres@127.0.0.1:5432/test",
)
APP_SCRIPT = Path(__file__).with_name("chaos_app.py")

JOBS = 1000

#: The dev server's speed: backoff of 12 s, 148 s, 30 min... becomes 1.2 ms,
#: 15 ms, 0.2 s, 2.2 s, then 8.6 s at most.
SPEED = 10_000

#: Share of the effects recorded before the app is killed.
KILL_AT = 0.35


def _fails_for_good(n: int) -> bool:
    return n % 20 == 0


GOOD = [n for n in range(JOBS) if not _fails_for_good(n)]
DEAD = [n for n in range(JOBS) if _fails_for_good(n)]


@pytest.fixture
def engine() -> t.Iterator[sa.Engine]:
    engine = sa.create_engine(POSTGRES_URL, connect_args={"connect_timeout": 2})

    try:
        with engine.connect():
            pass
    except sa.exc.OperationalError as exc:
        engine.dispose()

        if os.environ.get("FLASK_QSTASH_SKIP_SERVICES") == "1":
            pytest.skip(f"PostgreSQL is not reachable at {POSTGRES_URL}: {exc}")

        pytest.fail(
            f"PostgreSQL is not reachable at {POSTGRES_URL} ({exc}). Start it, or"
            " set FLASK_QSTASH_SKIP_SERVICES=1 to skip these tests.",
            pytrace=False,
        )

    yield engine
    engine.dispose()


@pytest.fixture
def schema(engine: sa.Engine) -> t.Iterator[Tables]:
    rv = tables(uuid.uuid4().hex[:12])
    rv.metadata.create_all(engine)
    yield rv

    rv.metadata.drop_all(engine)

    with engine.begin() as conn:
        conn.execute(sa.text(f'DROP TABLE IF EXISTS "{rv.idempotency}"'))


@pytest.fixture
def server(tmp_path: Path) -> t.Iterator[DevServer]:
    with DevServer(
        database=str(tmp_path / "dev.sqlite3"), speed=SPEED, workers=32
    ) as server:
        yield server


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]

    return port


class AppProcess:
    """The chaos app in a subprocess, on one port across restarts."""

    def __init__(self, env: dict[str, str], port: int, logs: Path) -> None:
        self.env = {**env, "CHAOS_PORT": str(port)}
        self.url = f"http://127.0.0.1:{port}"
        self.logs = logs
        self.starts = 0
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, *, faults: bool) -> None:
        assert self._proc is None
        self.starts += 1
        log = self.logs / f"app-{self.starts}.log"

        with log.open("wb") as out:
            self._proc = subprocess.Popen(
                [sys.executable, str(APP_SCRIPT)],
                env={
                    **os.environ,
                    **self.env,
                    "CHAOS_FAULTS": "on" if faults else "off",
                },
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

        deadline = time.monotonic() + 60

        with httpx.Client(trust_env=False, timeout=1.0) as client:
            while time.monotonic() < deadline:
                if self._proc.poll() is not None:
                    pytest.fail(f"The chaos app exited:\n{self._tail(log)}")

                try:
                    if client.get(self.url + "/chaos/ready").status_code == 200:
                        return
                except httpx.HTTPError:
                    pass

                time.sleep(0.05)

        pytest.fail(f"The chaos app did not start in 60 s:\n{self._tail(log)}")

    def kill(self) -> None:
        """End the app at once, as a crash or an OOM kill would."""
        if self._proc is None:
            return

        self._proc.send_signal(signal.SIGKILL)
        self._proc.wait(timeout=30)
        self._proc = None

    def _tail(self, log: Path) -> str:
        return log.read_text(errors="replace")[-4000:]


@pytest.fixture
def app_process(
    tmp_path: Path, server: DevServer, schema: Tables
) -> t.Iterator[AppProcess]:
    port = _free_port()
    env = {
        "CHAOS_RUN": schema.effects.name.removeprefix("chaos_effects_"),
        "CHAOS_SPEED": str(SPEED),
        "CHAOS_EPOCH": str(time.time()),
        "SQLALCHEMY_DATABASE_URI": POSTGRES_URL,
        "QSTASH_URL": server.url,
        "QSTASH_PUBLIC_URL": f"http://127.0.0.1:{port}",
    }
    process = AppProcess(env, port, tmp_path)

    try:
        yield process
    finally:
        process.kill()


@pytest.fixture
def publisher(app_process: AppProcess) -> t.Iterator[Flask]:
    """The same app in this process, to publish, list and replay only."""
    app = create_app({**app_process.env, "CHAOS_FAULTS": "off"})
    yield app

    with app.app_context():
        app.extensions["chaos"]["db"].engine.dispose()


def _wait(condition: t.Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout

    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"Timed out after {timeout} s waiting for {what}.")

        time.sleep(0.05)


def _effects(engine: sa.Engine, schema: Tables) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(
                sa.select(sa.func.count()).select_from(schema.effects)
            ).scalar_one()
        )


def _dead_letters(app: Flask) -> list[deadletter.DeadLetter]:
    with app.app_context():
        ext: QStash = app.extensions["qstash"]
        return deadletter.list_dead(ext, None, "effect")


def _check_exactly_once(engine: sa.Engine, schema: Tables, expected: list[int]) -> None:
    e = schema.effects.c

    with engine.connect() as conn:
        twice = conn.execute(
            sa.select(e.n, sa.func.count()).group_by(e.n).having(sa.func.count() > 1)
        ).all()
        reused = conn.execute(
            sa.select(e.message_id, sa.func.count())
            .group_by(e.message_id)
            .having(sa.func.count() > 1)
        ).all()
        recorded = set(conn.execute(sa.select(e.n)).scalars())

    assert twice == [], "jobs whose effect was recorded more than once"
    assert reused == [], "messages whose effect was recorded more than once"
    assert sorted(set(expected) - recorded) == [], "jobs without an effect"
    assert sorted(recorded - set(expected)) == [], "jobs with an unexpected effect"


def _attempts(engine: sa.Engine, schema: Tables) -> dict[str, int]:
    a = schema.attempts.c

    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(a.outcome, sa.func.count()).group_by(a.outcome)
        ).all()

    return {outcome: int(count) for outcome, count in rows}


def _deliveries(database: Path) -> dict[str, int]:
    """Count the dev server's attempts and their answers from its event log."""
    rv: collections.Counter[str] = collections.Counter()

    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as conn:
        rows = conn.execute("SELECT state, data FROM events").fetchall()

    conn.close()

    for state, data in rows:
        event = json.loads(data)

        if state == "ACTIVE":
            rv["attempts"] += 1
        elif state == "ERROR" and event.get("error"):
            error = str(event["error"]).lower()
            rv["timed out" if "timed out" in error else "no answer"] += 1
        elif state == "ERROR":
            rv[f"status {event.get('responseStatus')}"] += 1
        elif state in ("DELIVERED", "FAILED", "RETRY"):
            rv[state.lower()] += 1

    return dict(rv)


@pytest.mark.timeout(300)
def test_chaos(
    tmp_path: Path,
    engine: sa.Engine,
    schema: Tables,
    server: DevServer,
    app_process: AppProcess,
    publisher: Flask,
) -> None:
    started = time.monotonic()
    app_process.start(faults=True)

    with publisher.app_context():
        job = publisher.extensions["qstash"].get_job("effect")

        # Batches of 250 keep each request well under the 1 MB body cap.
        for start in range(0, JOBS, 250):
            job.enqueue_many(
                {"n": n, "fail_for_good": _fails_for_good(n)}
                for n in range(start, min(start + 250, JOBS))
            )

    # Kill the app once about a third of the effects are recorded.
    _wait(
        lambda: _effects(engine, schema) >= KILL_AT * len(GOOD),
        90,
        f"{KILL_AT:.0%} of the effects",
    )
    app_process.kill()
    killed_at = _effects(engine, schema)
    app_process.start(faults=True)

    # Every message ends, delivered or dead: the longest backoff is 8.6 s.
    assert server.wait_idle(timeout=150), "the dev server still has deliveries due"
    _check_exactly_once(engine, schema, GOOD)
    dead = sorted(d.payload["n"] for d in _dead_letters(publisher))
    assert sorted(set(dead) - set(DEAD)) == [], "good jobs in the DLQ"
    assert dead == DEAD
    assert {d.response_status for d in _dead_letters(publisher)} == {489}
    attempts = _attempts(engine, schema)
    deliveries = _deliveries(tmp_path / "dev.sqlite3")

    # The fault is fixed: restart without faults and replay the dead letters.
    app_process.kill()
    app_process.start(faults=False)

    with publisher.app_context():
        outcomes = deadletter.replay(publisher.extensions["qstash"], None, None)

    assert sorted(o.status for o in outcomes) == ["replayed"] * len(DEAD)
    assert server.wait_idle(timeout=60), "the dev server still has deliveries due"
    _check_exactly_once(engine, schema, list(range(JOBS)))
    assert _dead_letters(publisher) == []

    logger.info(
        "Chaos run: %.1f s, killed at %d effects, %d answers of 409, %d effect"
        " writes rolled back; handler attempts %s; dev server before the replay %s",
        time.monotonic() - started,
        killed_at,
        deliveries.get("status 409", 0),
        attempts.get("ok", 0) + attempts.get("timeout", 0) - len(GOOD),
        attempts,
        deliveries,
    )
