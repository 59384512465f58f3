from __future__ import annotations

import functools
import os
import sys
import threading
import typing as t
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import redis
import sqlalchemy as sa

from flask_qstash.idempotency import Claim
from flask_qstash.idempotency import ClaimState
from flask_qstash.idempotency import DEFAULT_RETENTION
from flask_qstash.idempotency import IdempotencyStore
from flask_qstash.idempotency import MemoryStore
from flask_qstash.idempotency import RedisStore
from flask_qstash.idempotency import SQLAlchemyStore
from flask_qstash.idempotency import store_from_config

REDIS_URL = os.environ.get("FLASK_QSTASH_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
POSTGRES_URL = os.environ.get(
    "FLASK_QSTASH_TEST_POSTGRES_URL",
    "postgresql+psycopg://postgres@127.0.0.1:5432/test",
)
KEY = "acme:msg_abc"
LEASE = 30.0
RACES = 50


class FakeClock:
    """A clock that moves only when a test says so."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def _unreachable(service: str, url: str, exc: BaseException) -> t.NoReturn:
    message = (
        f"{service} is not reachable at {url} ({type(exc).__name__}: {exc})."
        " Start it, or set FLASK_QSTASH_SKIP_SERVICES=1 to skip these tests."
    )

    if os.environ.get("FLASK_QSTASH_SKIP_SERVICES") == "1":
        pytest.skip(message)

    pytest.fail(message, pytrace=False)


@pytest.fixture(scope="module")
def redis_client() -> t.Iterator[redis.Redis[bytes]]:
    client: redis.Redis[bytes] = redis.Redis.from_url(
        REDIS_URL, socket_connect_timeout=2, socket_timeout=10
    )

    try:
        client.ping()
    except redis.RedisError as exc:
        error: Exception | None = exc
    else:
        error = None

    if error is not None:
        client.close()
        _unreachable("Redis", REDIS_URL, error)

    yield client
    client.close()


@pytest.fixture(scope="module")
def postgres_engine() -> t.Iterator[sa.Engine]:
    engine = sa.create_engine(POSTGRES_URL, connect_args={"connect_timeout": 2})

    try:
        with engine.connect():
            pass
    except sa.exc.OperationalError as exc:
        error: BaseException | None = exc.orig or exc
    else:
        error = None

    if error is not None:
        engine.dispose()
        _unreachable("PostgreSQL", POSTGRES_URL, error)

    yield engine
    engine.dispose()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(
    params=[
        pytest.param("memory", id="memory"),
        pytest.param("sqlite", id="sqlite"),
        pytest.param("redis", marks=pytest.mark.redis, id="redis"),
        pytest.param("postgres", marks=pytest.mark.postgres, id="postgres"),
    ]
)
def store(
    request: pytest.FixtureRequest, clock: FakeClock, tmp_path: Path
) -> t.Iterator[IdempotencyStore]:
    backend: str = request.param
    table_name = f"qstash_idem_test_{uuid.uuid4().hex[:12]}"

    if backend == "memory":
        memory = MemoryStore(clock=clock)
        yield memory
        memory.close()
    elif backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'idempotency.db'}"
        lite = SQLAlchemyStore(url=url, table_name=table_name, clock=clock)
        yield lite
        lite.close()
    elif backend == "redis":
        client = request.getfixturevalue("redis_client")
        prefix = f"flask-qstash-test:{uuid.uuid4().hex}:"
        yield RedisStore(client, prefix=prefix, clock=clock)
        keys = list(client.scan_iter(match=prefix + "*", count=1000))

        if keys:
            client.delete(*keys)
    else:
        engine = request.getfixturevalue("postgres_engine")
        pg = SQLAlchemyStore(engine, table_name=table_name, clock=clock)
        yield pg
        pg.table.drop(engine, checkfirst=True)


def test_free_key_is_claimed(store: IdempotencyStore) -> None:
    claim = store.claim(KEY, lease=LEASE)

    assert claim.state is ClaimState.CLAIMED
    assert claim.token
    assert store.get(KEY) == Claim(ClaimState.BUSY, retry_after=30)


def test_tokens_differ_per_claim(store: IdempotencyStore) -> None:
    first = store.claim("acme:msg_1", lease=LEASE)
    second = store.claim("acme:msg_2", lease=LEASE)

    assert first.token != second.token


def test_live_lease_is_busy_with_retry_after(
    store: IdempotencyStore, clock: FakeClock
) -> None:
    store.claim(KEY, lease=LEASE)
    clock.advance(10.5)

    assert store.claim(KEY, lease=LEASE) == Claim(ClaimState.BUSY, retry_after=20)

    clock.advance(19.4)

    assert store.claim(KEY, lease=LEASE) == Claim(ClaimState.BUSY, retry_after=1)


def test_completed_key_is_done_with_result(store: IdempotencyStore) -> None:
    claim = store.claim(KEY, lease=LEASE)
    assert claim.token is not None

    assert store.complete(KEY, claim.token, result='{"sent": "héllo ✓"}')
    done = Claim(ClaimState.DONE, result='{"sent": "héllo ✓"}')
    assert store.claim(KEY, lease=LEASE) == done
    assert store.get(KEY) == done


def test_completed_without_result(store: IdempotencyStore) -> None:
    claim = store.claim(KEY, lease=LEASE)
    assert claim.token is not None

    assert store.complete(KEY, claim.token)
    assert store.claim(KEY, lease=LEASE) == Claim(ClaimState.DONE)


def test_done_stays_done_after_lease(store: IdempotencyStore, clock: FakeClock) -> None:
    claim = store.claim(KEY, lease=LEASE)
    assert claim.token is not None
    store.complete(KEY, claim.token, result="1")
    clock.advance(LEASE * 10)

    assert store.claim(KEY, lease=LEASE) == Claim(ClaimState.DONE, result="1")


def test_expired_lease_is_taken_over(store: IdempotencyStore, clock: FakeClock) -> None:
    first = store.claim(KEY, lease=LEASE)
    clock.advance(LEASE)

    assert store.get(KEY) is None

    second = store.claim(KEY, lease=LEASE)

    assert second.state is ClaimState.CLAIMED
    assert second.token not in (None, first.token)
    assert first.token is not None and second.token is not None
    assert not store.complete(KEY, first.token, result="stale")
    assert store.complete(KEY, second.token, result="fresh")
    assert store.get(KEY) == Claim(ClaimState.DONE, result="fresh")


def test_late_owner_completes_when_nobody_took_over(
    store: IdempotencyStore, clock: FakeClock
) -> None:
    claim = store.claim(KEY, lease=LEASE)
    assert claim.token is not None
    clock.advance(LEASE * 3)

    assert store.complete(KEY, claim.token, result="late")
    assert store.claim(KEY, lease=LEASE) == Claim(ClaimState.DONE, result="late")


def test_release_frees_key(store: IdempotencyStore) -> None:
    first = store.claim(KEY, lease=LEASE)
    assert first.token is not None

    store.release(KEY, first.token)

    assert store.get(KEY) is None

    second = store.claim(KEY, lease=LEASE)

    assert second.state is ClaimState.CLAIMED
    assert second.token != first.token
    assert not store.complete(KEY, first.token)


def test_release_by_non_owner_keeps_claim(store: IdempotencyStore) -> None:
    claim = store.claim(KEY, lease=LEASE)
    assert claim.token is not None

    store.release(KEY, "not-the-owner")

    assert store.claim(KEY, lease=LEASE).state is ClaimState.BUSY
    assert store.complete(KEY, claim.token)


def test_release_after_done_keeps_done(store: IdempotencyStore) -> None:
    claim = store.claim(KEY, lease=LEASE)
    assert claim.token is not None
    store.complete(KEY, claim.token, result="1")

    store.release(KEY, claim.token)

    assert store.get(KEY) == Claim(ClaimState.DONE, result="1")


def test_complete_by_non_owner_returns_false(store: IdempotencyStore) -> None:
    claim = store.claim(KEY, lease=LEASE)
    assert claim.token is not None

    assert not store.complete(KEY, "not-the-owner", result="x")
    assert store.get(KEY) == Claim(ClaimState.BUSY, retry_after=30)
    assert store.complete(KEY, claim.token, result="y")
    assert not store.complete(KEY, claim.token, result="z")
    assert store.get(KEY) == Claim(ClaimState.DONE, result="y")


def test_complete_unknown_key_returns_false(store: IdempotencyStore) -> None:
    assert not store.complete(KEY, "any-token")
    assert store.get(KEY) is None


def test_keys_are_independent(store: IdempotencyStore) -> None:
    acme = store.claim("acme:msg_1", lease=LEASE)
    globex = store.claim("globex:msg_1", lease=LEASE)
    assert acme.token is not None

    assert acme.state is globex.state is ClaimState.CLAIMED
    assert store.complete("acme:msg_1", acme.token, result="a")
    assert store.get("globex:msg_1") == Claim(ClaimState.BUSY, retry_after=30)


def test_done_is_forgotten_after_retention(
    store: IdempotencyStore, clock: FakeClock
) -> None:
    claim = store.claim(KEY, lease=LEASE)
    assert claim.token is not None
    store.complete(KEY, claim.token, result="1")

    assert store.retention == DEFAULT_RETENTION == 14 * 86400

    clock.advance(DEFAULT_RETENTION - 1)

    assert store.purge() == 0
    assert store.get(KEY) == Claim(ClaimState.DONE, result="1")

    clock.advance(1)

    assert store.get(KEY) is None
    assert store.purge() == (0 if isinstance(store, RedisStore) else 1)
    assert store.claim(KEY, lease=LEASE).state is ClaimState.CLAIMED


def test_purge_keeps_live_records(store: IdempotencyStore, clock: FakeClock) -> None:
    done = store.claim("acme:msg_done", lease=LEASE)
    assert done.token is not None
    store.complete("acme:msg_done", done.token)
    store.claim("acme:msg_running", lease=LEASE)

    assert store.purge(now=clock() + LEASE + 1) == 0
    assert store.get("acme:msg_done") == Claim(ClaimState.DONE)
    assert store.get("acme:msg_running") == Claim(ClaimState.BUSY, retry_after=30)


def test_abandoned_claim_is_purged_after_retention(
    store: IdempotencyStore, clock: FakeClock
) -> None:
    claim = store.claim(KEY, lease=LEASE)
    assert claim.token is not None
    clock.advance(LEASE + DEFAULT_RETENTION)

    assert store.purge() == (0 if isinstance(store, RedisStore) else 1)
    assert not store.complete(KEY, claim.token)
    assert store.claim(KEY, lease=LEASE).state is ClaimState.CLAIMED


@pytest.mark.parametrize("lease", [0, -1.0])
def test_lease_must_be_positive(store: IdempotencyStore, lease: float) -> None:
    with pytest.raises(ValueError, match="lease must be positive"):
        store.claim(KEY, lease=lease)


def _claim_after(
    barrier: threading.Barrier, store: IdempotencyStore, key: str
) -> Claim:
    barrier.wait()
    return store.claim(key, lease=LEASE)


def test_concurrent_claims_have_one_winner(store: IdempotencyStore) -> None:
    with ThreadPoolExecutor(max_workers=2) as pool:
        for i in range(RACES):
            key = f"acme:msg_race_{i}"
            race = functools.partial(
                _claim_after, threading.Barrier(2, timeout=10), store, key
            )
            futures = [pool.submit(race), pool.submit(race)]
            claims = [f.result(timeout=30) for f in futures]
            states = sorted(c.state.value for c in claims)

            assert states == ["busy", "claimed"], key
            assert [c.retry_after for c in claims if c.token is None] == [30]


def test_concurrent_takeovers_have_one_winner(
    store: IdempotencyStore, clock: FakeClock
) -> None:
    keys = [f"acme:msg_takeover_{i}" for i in range(RACES // 5)]

    for key in keys:
        store.claim(key, lease=LEASE)

    clock.advance(LEASE)

    with ThreadPoolExecutor(max_workers=2) as pool:
        for key in keys:
            race = functools.partial(
                _claim_after, threading.Barrier(2, timeout=10), store, key
            )
            futures = [pool.submit(race), pool.submit(race)]
            states = sorted(f.result(timeout=30).state.value for f in futures)

            assert states == ["busy", "claimed"], key


def test_memory_store_sweeps_expired_records(clock: FakeClock) -> None:
    store = MemoryStore(clock=clock, retention=100)

    for i in range(10):
        claim = store.claim(f"acme:msg_{i}", lease=LEASE)
        assert claim.token is not None
        store.complete(f"acme:msg_{i}", claim.token)

    clock.advance(100)
    store.claim("acme:msg_new", lease=LEASE)

    # The claim above swept the ten expired records already.
    assert store.purge() == 0
    assert store.get("acme:msg_0") is None


@pytest.mark.parametrize("retention", [0, -5.0])
def test_retention_must_be_positive(retention: float) -> None:
    with pytest.raises(ValueError, match="retention must be positive"):
        MemoryStore(retention=retention)


def test_config_memory() -> None:
    store = store_from_config("memory", retention=60)

    assert isinstance(store, MemoryStore)
    assert store.retention == 60


def test_config_passes_store_through() -> None:
    store = MemoryStore()

    assert store_from_config(store, retention=60) is store


@pytest.mark.parametrize(
    "url", ["redis://127.0.0.1:6379/0", "rediss://cache.example:6380", "unix:///r.s"]
)
def test_config_redis_url(url: str) -> None:
    store = store_from_config(url, retention=60)

    assert isinstance(store, RedisStore)
    assert store.retention == 60
    store.close()


def test_config_database_url(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'idempotency.db'}"
    store = store_from_config(url, retention=60)

    assert isinstance(store, SQLAlchemyStore)
    assert store.claim(KEY, lease=LEASE).state is ClaimState.CLAIMED
    store.close()


def test_config_flask_sqlalchemy_engine(tmp_path: Path) -> None:
    from flask import Flask
    from flask_sqlalchemy import SQLAlchemy

    app = Flask(__name__)
    app.config["SQLALCHEMY_DATABASE_URI"] = f"sqlite:///{tmp_path / 'app.db'}"
    db = SQLAlchemy(app)

    with app.app_context():
        store = store_from_config(
            "sqlalchemy", retention=60, engine_factory=lambda: db.engine
        )
        claim = store.claim(KEY, lease=LEASE)

        assert isinstance(store, SQLAlchemyStore)
        assert store.engine is db.engine
        assert claim.state is ClaimState.CLAIMED
        assert "qstash_idempotency" not in db.metadata.tables
        assert sa.inspect(db.engine).has_table("qstash_idempotency")

        store.close()
        db.engine.dispose()


def test_config_sqlalchemy_needs_engine() -> None:
    with pytest.raises(ValueError, match="Initialize Flask-SQLAlchemy"):
        store_from_config("sqlalchemy", retention=60)


@pytest.mark.parametrize("value", ["", "memcached", "redis:/x", "/tmp/db.sqlite"])
def test_config_rejects_unknown_value(value: str) -> None:
    with pytest.raises(ValueError, match="'QSTASH_IDEMPOTENCY_STORE' must be"):
        store_from_config(value, retention=60)


def test_redis_store_needs_redis(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "redis", None)

    with pytest.raises(RuntimeError, match=r"pip install Flask-QStash\[redis\]"):
        RedisStore(url=REDIS_URL)


def test_sql_store_needs_sqlalchemy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "sqlalchemy", None)

    with pytest.raises(RuntimeError, match=r"pip install Flask-QStash\[sqlalchemy\]"):
        SQLAlchemyStore(url="sqlite://")


def test_redis_store_needs_one_connection() -> None:
    with pytest.raises(TypeError, match="exactly one"):
        RedisStore()


def test_sql_store_needs_one_connection() -> None:
    with pytest.raises(TypeError, match="exactly one"):
        SQLAlchemyStore()


def test_zero_retention_record_is_forgotten_after_its_lease(
    store: IdempotencyStore, clock: FakeClock
) -> None:
    claim = store.claim(KEY, lease=LEASE, retention=0)

    assert claim.state is ClaimState.CLAIMED
    assert store.claim(KEY, lease=LEASE, retention=0).state is ClaimState.BUSY

    clock.advance(LEASE)

    assert store.get(KEY) is None
    assert store.purge() == (0 if isinstance(store, RedisStore) else 1)
    assert store.claim(KEY, lease=LEASE).state is ClaimState.CLAIMED
