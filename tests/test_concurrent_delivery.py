"""Two deliveries of one message at once, through the app, on each shared store.

Redis and PostgreSQL are the stores several worker processes share, so the
race is run against the real servers: exactly one delivery runs the handler,
the other is answered 409 with ``Retry-After``.
"""

from __future__ import annotations

import threading
import typing as t
import uuid
from pathlib import Path

import pytest
import redis
from conftest import Deliverer
from conftest import FakeClient
from conftest import make_app
from flask import Flask
from test_idempotency import POSTGRES_URL
from test_idempotency import REDIS_URL
from werkzeug.test import TestResponse

from flask_qstash import QStash
from flask_qstash.idempotency import IdempotencyStore
from flask_qstash.idempotency import RedisStore
from flask_qstash.idempotency import SQLAlchemyStore

WAIT = 10.0


@pytest.fixture(
    params=[
        pytest.param("redis", marks=pytest.mark.redis, id="redis"),
        pytest.param("postgres", marks=pytest.mark.postgres, id="postgres"),
        pytest.param("sqlite", id="sqlite"),
    ]
)
def store(
    request: pytest.FixtureRequest, tmp_path: Path
) -> t.Iterator[IdempotencyStore]:
    backend: str = request.param

    if backend == "redis":
        client: redis.Redis[bytes] = redis.Redis.from_url(REDIS_URL)
        prefix = f"flask-qstash-test:{uuid.uuid4().hex}:"
        yield RedisStore(client, prefix=prefix)
        keys = list(client.scan_iter(match=prefix + "*", count=1000))

        if keys:
            client.delete(*keys)

        client.close()
        return

    url = POSTGRES_URL if backend == "postgres" else f"sqlite:///{tmp_path / 'i.db'}"
    sql = SQLAlchemyStore(url=url, table_name=f"qstash_race_{uuid.uuid4().hex[:12]}")
    yield sql
    sql.table.drop(sql.engine, checkfirst=True)
    sql.close()


def test_same_message_twice_at_once_runs_once(
    request: pytest.FixtureRequest, store: IdempotencyStore
) -> None:
    qstash = QStash(idempotency_store=store)
    qstash.client_class = FakeClient  # type: ignore[assignment]
    started = threading.Event()
    release = threading.Event()
    runs: list[t.Any] = []

    @qstash.job("charge")
    def charge(payload: t.Any) -> str:
        runs.append(payload)
        started.set()

        # Hold the claim until the second delivery has been answered.
        assert release.wait(WAIT)
        return "charged"

    app: Flask = make_app(request.module.__name__, qstash)
    first: list[TestResponse] = []
    message_id = f"msg_{uuid.uuid4().hex}"

    def deliver_first() -> None:
        first.append(
            Deliverer(app.test_client())("charge", {"n": 1}, message_id=message_id)
        )

    thread = threading.Thread(target=deliver_first)
    thread.start()

    try:
        assert started.wait(WAIT)
        second = Deliverer(app.test_client())("charge", {"n": 1}, message_id=message_id)
    finally:
        release.set()
        thread.join(WAIT)

    assert second.status_code == 409
    assert int(second.headers["Retry-After"]) >= 1
    assert [r.status_code for r in first] == [200]
    assert runs == [{"n": 1}]

    # A later redelivery finds the message done and does not run it again.
    third = Deliverer(app.test_client())("charge", {"n": 1}, message_id=message_id)

    assert third.status_code == 200
    assert third.get_json() == {"status": "done", "result": "charged"}
    assert runs == [{"n": 1}]
