"""Idempotency stores: a job runs at most once per QStash message.

QStash delivers at least once: a timeout, a lost answer or a retry after a
crash can bring the same message back, even while the first delivery still
runs. Before the handler runs, the webhook view claims the key
``"{tenant}:{Upstash-Message-Id}"`` in an :class:`IdempotencyStore`:

- A free key is :attr:`~ClaimState.CLAIMED` with a fresh owner token and a
  lease. The view runs the handler, then calls :meth:`~IdempotencyStore.complete`
  on success or :meth:`~IdempotencyStore.release` on failure, so QStash's retry
  may take over.
- A completed key answers :attr:`~ClaimState.DONE` with the stored result, and
  the view answers 200 without running the handler again.
- A key whose lease is still live answers :attr:`~ClaimState.BUSY` with the
  seconds until the lease ends, and the view answers 409 with ``Retry-After``.
- A key whose lease has run out (its worker died) or whose attempt was released
  is taken over by the next claim.

Every record is kept for ``retention`` seconds (14 days by default) after its
last change, then forgotten. A record still running when its lease ends stays
owned by its token until another claim takes it over, so a slow handler that
finishes before any retry arrives still records its result.

Three backends share these semantics:

.. autoclass:: MemoryStore
.. autoclass:: RedisStore
.. autoclass:: SQLAlchemyStore

Pick one with ``QSTASH_IDEMPOTENCY_STORE``, read by :func:`store_from_config`.
The in-memory store only protects one process; use Redis or a SQL database as
soon as more than one worker answers deliveries.
"""

from __future__ import annotations

import abc
import dataclasses
import enum
import logging
import math
import secrets
import threading
import time
import typing as t

if t.TYPE_CHECKING:  # pragma: no cover
    import redis
    import sqlalchemy as sa

logger = logging.getLogger(__name__)

#: Seconds a record is kept after its last change, by default 14 days.
DEFAULT_RETENTION = 14 * 86400.0

_RUNNING = "running"
_DONE = "done"

# Claims retry when a record vanishes between two statements; this bounds it.
_CLAIM_ATTEMPTS = 5


class ClaimState(enum.Enum):
    """The outcome of :meth:`IdempotencyStore.claim`."""

    #: The caller owns the key and must run the handler.
    CLAIMED = "claimed"

    #: The message was already handled; answer 200 without running.
    DONE = "done"

    #: Another delivery holds a live lease; answer 409 with ``Retry-After``.
    BUSY = "busy"


@dataclasses.dataclass(frozen=True)
class Claim:
    """What a store knows about one key."""

    #: The outcome.
    state: ClaimState

    #: The owner token when :attr:`~ClaimState.CLAIMED`; pass it back to
    #: :meth:`IdempotencyStore.complete` or :meth:`IdempotencyStore.release`.
    token: str | None = None

    #: Seconds until the live lease ends when :attr:`~ClaimState.BUSY`, at least 1.
    retry_after: int = 0

    #: The JSON text stored by :meth:`IdempotencyStore.complete`, when
    #: :attr:`~ClaimState.DONE`.
    result: str | None = None


class IdempotencyStore(abc.ABC):
    """Base class of the stores that keep a job from running twice.

    Every method is safe to call from several threads, and :meth:`claim`,
    :meth:`complete` and :meth:`release` are atomic across every process that
    shares the store.

    :param retention: Seconds a record is kept after its last change.
    :param clock: Returns the current Unix time; tests pass a fake one.
    """

    #: Seconds a record is kept after its last change.
    retention: float

    def __init__(
        self,
        *,
        retention: float = DEFAULT_RETENTION,
        clock: t.Callable[[], float] = time.time,
    ) -> None:
        if not retention > 0:
            raise ValueError(
                f"The idempotency retention must be positive, got {retention!r}."
                " Pass the number of seconds to remember a handled message."
            )

        self.retention = float(retention)
        self._clock = clock

    @abc.abstractmethod
    def claim(self, key: str, *, lease: float, retention: float | None = None) -> Claim:
        """Try to take ``key`` for one delivery attempt.

        :param key: ``"{tenant}:{message_id}"``.
        :param lease: Seconds the claim protects the key; after that another
            delivery may take it over.
        :param retention: Seconds the record outlives its lease if it is never
            completed; the store's retention if omitted. Records that only
            need to outlive a lease, such as used token ids, pass 0.
        """

    @abc.abstractmethod
    def complete(self, key: str, token: str, *, result: str | None = None) -> bool:
        """Mark ``key`` done if ``token`` still owns it.

        Returns ``False`` without changing anything when the claim was lost,
        because another delivery took the key over after the lease ended.

        :param key: The claimed key.
        :param token: The token of the :class:`Claim`.
        :param result: JSON text to hand to later deliveries of the message.
        """

    @abc.abstractmethod
    def release(self, key: str, token: str) -> None:
        """Free ``key`` after a failed attempt so QStash's retry may take it.

        Does nothing if ``token`` no longer owns the key.

        :param key: The claimed key.
        :param token: The token of the :class:`Claim`.
        """

    @abc.abstractmethod
    def get(self, key: str) -> Claim | None:
        """Return the state of ``key`` without changing it.

        :attr:`~ClaimState.DONE` or :attr:`~ClaimState.BUSY`, or ``None`` when a
        claim would succeed.

        :param key: The key to look at.
        """

    @abc.abstractmethod
    def purge(self, now: float | None = None) -> int:
        """Delete the records past their retention and return how many.

        :param now: Unix time to compare with; the store's clock if omitted.
        """

    @abc.abstractmethod
    def close(self) -> None:
        """Release the connections this store opened itself."""

    def _now(self, now: float | None = None) -> float:
        """Return ``now``, or the store's clock when it is ``None``."""
        return self._clock() if now is None else now


def _check_lease(lease: float) -> None:
    """Refuse a lease that would expire at once."""
    if not lease > 0:
        raise ValueError(
            f"The idempotency lease must be positive, got {lease!r}."
            " Pass the seconds one attempt may run before a retry takes over."
        )


def _new_token() -> str:
    """Return a fresh, unguessable owner token."""
    return secrets.token_hex(16)


def _retry_after(lease_until: float, now: float) -> int:
    """Return whole seconds until ``lease_until``, at least 1."""
    return max(1, math.ceil(lease_until - now))


@dataclasses.dataclass
class _Record:
    """One key of a :class:`MemoryStore`."""

    state: str
    token: str
    lease_until: float
    expires_at: float
    result: str | None = None


class MemoryStore(IdempotencyStore):
    """Keep records in a dictionary of this process.

    The default, and enough for a single process with any number of threads.
    Records past their retention are swept lazily by later claims, so memory
    stays bounded by the messages of one retention period.

    :param retention: Seconds a record is kept after its last change.
    :param clock: Returns the current Unix time; tests pass a fake one.
    """

    #: Least seconds between two sweeps of expired records.
    sweep_interval: float = 60.0

    def __init__(
        self,
        *,
        retention: float = DEFAULT_RETENTION,
        clock: t.Callable[[], float] = time.time,
    ) -> None:
        super().__init__(retention=retention, clock=clock)
        self._lock = threading.Lock()
        self._records: dict[str, _Record] = {}
        self._next_sweep = float("-inf")

    def claim(self, key: str, *, lease: float, retention: float | None = None) -> Claim:
        _check_lease(lease)
        keep = self.retention if retention is None else retention

        with self._lock:
            now = self._clock()
            self._sweep(now)
            record = self._live(key, now)

            if record is not None and record.state == _DONE:
                return Claim(ClaimState.DONE, result=record.result)

            if record is not None and record.lease_until > now:
                return Claim(
                    ClaimState.BUSY, retry_after=_retry_after(record.lease_until, now)
                )

            if record is not None:
                logger.info("Taking over %s after its lease ran out.", key)

            token = _new_token()
            self._records[key] = _Record(
                state=_RUNNING,
                token=token,
                lease_until=now + lease,
                expires_at=now + lease + keep,
            )

        return Claim(ClaimState.CLAIMED, token=token)

    def complete(self, key: str, token: str, *, result: str | None = None) -> bool:
        with self._lock:
            now = self._clock()
            record = self._live(key, now)

            if record is None or record.state != _RUNNING or record.token != token:
                return False

            record.state = _DONE
            record.expires_at = now + self.retention
            record.result = result

        return True

    def release(self, key: str, token: str) -> None:
        with self._lock:
            record = self._records.get(key)

            if (
                record is not None
                and record.state == _RUNNING
                and record.token == token
            ):
                del self._records[key]

    def get(self, key: str) -> Claim | None:
        with self._lock:
            now = self._clock()
            record = self._live(key, now)

            if record is None:
                return None

            if record.state == _DONE:
                return Claim(ClaimState.DONE, result=record.result)

            if record.lease_until > now:
                return Claim(
                    ClaimState.BUSY, retry_after=_retry_after(record.lease_until, now)
                )

        return None

    def purge(self, now: float | None = None) -> int:
        with self._lock:
            return self._purge(self._now(now))

    def close(self) -> None:
        with self._lock:
            self._records.clear()

    def _live(self, key: str, now: float) -> _Record | None:
        """Return the record of ``key`` unless it is past its retention."""
        record = self._records.get(key)

        if record is None or record.expires_at <= now:
            return None

        return record

    def _sweep(self, now: float) -> None:
        """Purge expired records at most once per :attr:`sweep_interval`."""
        if now < self._next_sweep:
            return

        self._next_sweep = now + min(self.sweep_interval, self.retention)
        count = self._purge(now)

        if count:
            logger.debug("Swept %d expired idempotency records.", count)

    def _purge(self, now: float) -> int:
        """Delete expired records; the caller holds the lock."""
        expired = [k for k, r in self._records.items() if r.expires_at <= now]

        for key in expired:
            del self._records[key]

        return len(expired)


# Each script reads and writes one key, so it runs atomically on Redis Cluster
# too. Times are integer milliseconds from the store's clock, not Redis's, so
# a fake clock in tests moves both the lease and the retention.
_CLAIM_LUA = """
local now = tonumber(ARGV[1])
local rec = redis.call('HMGET', KEYS[1], 'state', 'lease_until', 'expires_at', 'result')
local taken = 0
if rec[1] and tonumber(rec[3]) > now then
  if rec[1] == 'done' then
    return {'done', rec[4]}
  end
  if tonumber(rec[2]) > now then
    return {'busy', rec[2]}
  end
  taken = 1
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'state', 'running', 'token', ARGV[2],
  'lease_until', ARGV[3], 'expires_at', ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return {'claimed', taken}
"""

_COMPLETE_LUA = """
local rec = redis.call('HMGET', KEYS[1], 'state', 'token', 'expires_at')
if rec[1] ~= 'running' or rec[2] ~= ARGV[1]
    or tonumber(rec[3]) <= tonumber(ARGV[2]) then
  return 0
end
redis.call('HSET', KEYS[1], 'state', 'done', 'expires_at', ARGV[3])
if ARGV[5] == '1' then
  redis.call('HSET', KEYS[1], 'result', ARGV[6])
end
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 1
"""

_RELEASE_LUA = """
local rec = redis.call('HMGET', KEYS[1], 'state', 'token')
if rec[1] == 'running' and rec[2] == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


def _ms(seconds: float) -> int:
    """Return ``seconds`` as whole milliseconds."""
    return round(seconds * 1000)


def _text(value: t.Any) -> str | None:
    """Return a Redis reply as text, whether the client decodes replies or not."""
    if value is None:
        return None

    if isinstance(value, bytes):
        return value.decode("utf-8")

    return str(value)


class RedisStore(IdempotencyStore):
    """Keep records in Redis, shared by every process that uses the server.

    Claims, completions and releases are Lua scripts, so each is atomic. Every
    record carries a TTL of its lease plus the retention, so Redis forgets it
    on its own and :meth:`purge` has nothing to do.

    :param client: A ``redis.Redis`` client to use; it stays open on
        :meth:`close`.
    :param url: A ``redis://``, ``rediss://`` or ``unix://`` URL to connect to
        when ``client`` is not given; the store closes this connection.
    :param prefix: Prepended to every key, to share a database with other data.
    :param retention: Seconds a record is kept after its last change.
    :param clock: Returns the current Unix time; tests pass a fake one.
    """

    def __init__(
        self,
        client: redis.Redis[t.Any] | None = None,
        *,
        url: str | None = None,
        prefix: str = "flask-qstash:idem:",
        retention: float = DEFAULT_RETENTION,
        clock: t.Callable[[], float] = time.time,
    ) -> None:
        super().__init__(retention=retention, clock=clock)

        try:
            import redis
        except ImportError:
            raise RuntimeError(
                "The Redis idempotency store needs the 'redis' package."
                " Install it with 'pip install Flask-QStash[redis]'."
            ) from None

        if (client is None) == (url is None):
            raise TypeError(
                "'RedisStore' needs exactly one of 'client' and 'url'."
                " Pass a 'redis.Redis' client or a 'redis://' URL."
            )

        if client is None:
            client = redis.Redis.from_url(t.cast(str, url))

        self._client = client
        self._owns_client = url is not None
        self.prefix = prefix
        self._claim_script = client.register_script(_CLAIM_LUA)
        self._complete_script = client.register_script(_COMPLETE_LUA)
        self._release_script = client.register_script(_RELEASE_LUA)

    def claim(self, key: str, *, lease: float, retention: float | None = None) -> Claim:
        _check_lease(lease)
        keep = self.retention if retention is None else retention

        now = _ms(self._clock())
        lease_until = now + _ms(lease)
        expires_at = lease_until + _ms(keep)
        token = _new_token()
        rv = self._claim_script(
            keys=[self.prefix + key],
            args=[now, token, lease_until, expires_at, expires_at - now],
        )
        state = _text(rv[0])

        if state == _DONE:
            return Claim(ClaimState.DONE, result=_text(rv[1]) if len(rv) > 1 else None)

        if state == "busy":
            seconds = (int(_text(rv[1]) or 0) - now) / 1000
            return Claim(ClaimState.BUSY, retry_after=_retry_after(seconds, 0))

        if int(rv[1]):
            logger.info("Taking over %s after its lease ran out.", key)

        return Claim(ClaimState.CLAIMED, token=token)

    def complete(self, key: str, token: str, *, result: str | None = None) -> bool:
        now = _ms(self._clock())
        expires_at = now + _ms(self.retention)
        rv = self._complete_script(
            keys=[self.prefix + key],
            args=[
                token,
                now,
                expires_at,
                expires_at - now,
                "0" if result is None else "1",
                "" if result is None else result,
            ],
        )

        return bool(int(rv))

    def release(self, key: str, token: str) -> None:
        self._release_script(keys=[self.prefix + key], args=[token])

    def get(self, key: str) -> Claim | None:
        now = _ms(self._clock())
        state, lease_until, expires_at, result = (
            _text(v)
            for v in self._client.hmget(
                self.prefix + key, ["state", "lease_until", "expires_at", "result"]
            )
        )

        if state is None or int(expires_at or 0) <= now:
            return None

        if state == _DONE:
            return Claim(ClaimState.DONE, result=result)

        if int(lease_until or 0) > now:
            seconds = (int(lease_until or 0) - now) / 1000
            return Claim(ClaimState.BUSY, retry_after=_retry_after(seconds, 0))

        return None

    def purge(self, now: float | None = None) -> int:
        # Every key carries a TTL, so Redis deletes expired records itself.
        return 0

    def close(self) -> None:
        if self._owns_client:
            self._client.close()


class SQLAlchemyStore(IdempotencyStore):
    """Keep records in a SQL table through SQLAlchemy 2.

    Works on its own engine or on the application's Flask-SQLAlchemy engine
    (``db.engine``): the table lives in the store's own ``MetaData``, so it
    never appears in the application's models or migrations. A claim is an
    ``INSERT ... ON CONFLICT DO NOTHING`` followed, when the key exists, by an
    ``UPDATE`` conditioned on the lease having run out, so two workers never
    both win, on PostgreSQL and SQLite alike. Other databases fall back to a
    plain ``INSERT`` inside a savepoint.

    :param engine: The engine to use; it stays open on :meth:`close`.
    :param url: A database URL to create an engine from when ``engine`` is not
        given; the store disposes of that engine on :meth:`close`.
    :param table_name: The name of the table.
    :param retention: Seconds a record is kept after its last change.
    :param create_table: Create the table if it does not exist.
    :param clock: Returns the current Unix time; tests pass a fake one.
    """

    def __init__(
        self,
        engine: sa.Engine | None = None,
        *,
        url: str | None = None,
        table_name: str = "qstash_idempotency",
        retention: float = DEFAULT_RETENTION,
        create_table: bool = True,
        clock: t.Callable[[], float] = time.time,
    ) -> None:
        super().__init__(retention=retention, clock=clock)

        try:
            import sqlalchemy as sa
        except ImportError:
            raise RuntimeError(
                "The SQL idempotency store needs the 'sqlalchemy' package."
                " Install it with 'pip install Flask-QStash[sqlalchemy]'."
            ) from None

        if (engine is None) == (url is None):
            raise TypeError(
                "'SQLAlchemyStore' needs exactly one of 'engine' and 'url'."
                " Pass a SQLAlchemy engine or a database URL."
            )

        if engine is None:
            engine = sa.create_engine(t.cast(str, url))

        self.engine = engine
        self._owns_engine = url is not None

        #: The table holding the records, in a ``MetaData`` of its own.
        self.table = sa.Table(
            table_name,
            sa.MetaData(),
            sa.Column("key", sa.String(512), primary_key=True),
            sa.Column("state", sa.String(16), nullable=False),
            sa.Column("token", sa.String(64), nullable=False),
            sa.Column("lease_until", sa.Double, nullable=False),
            sa.Column("expires_at", sa.Double, nullable=False, index=True),
            sa.Column("result", sa.Text, nullable=True),
        )

        if create_table:
            self.create_table()

    def create_table(self) -> None:
        """Create the table and its index unless they exist."""
        import sqlalchemy as sa

        try:
            self.table.create(self.engine, checkfirst=True)
        except sa.exc.DatabaseError:
            # Another process may have created it between the check and ours.
            if not sa.inspect(self.engine).has_table(self.table.name):
                raise

    def claim(self, key: str, *, lease: float, retention: float | None = None) -> Claim:
        import sqlalchemy as sa

        _check_lease(lease)
        keep = self.retention if retention is None else retention
        c = self.table.c

        # A record may vanish between the statements (a release, a purge); then
        # the next attempt inserts it afresh.
        for _ in range(_CLAIM_ATTEMPTS):
            now = self._clock()
            token = _new_token()
            values = {
                "state": _RUNNING,
                "token": token,
                "lease_until": now + lease,
                "expires_at": now + lease + keep,
                "result": None,
            }

            with self.engine.begin() as conn:
                if self._insert(conn, {"key": key, **values}):
                    return Claim(ClaimState.CLAIMED, token=token)

                stale = sa.or_(
                    c.expires_at <= now,
                    sa.and_(c.state == _RUNNING, c.lease_until <= now),
                )
                taken = conn.execute(
                    sa.update(self.table).where(c.key == key, stale).values(values)
                )

                if taken.rowcount == 1:
                    logger.info("Taking over %s after its lease ran out.", key)
                    return Claim(ClaimState.CLAIMED, token=token)

                row = conn.execute(
                    sa.select(c.state, c.lease_until, c.result).where(c.key == key)
                ).one_or_none()

            if row is None:
                continue

            if row.state == _DONE:
                return Claim(ClaimState.DONE, result=row.result)

            return Claim(
                ClaimState.BUSY, retry_after=_retry_after(row.lease_until, now)
            )

        raise RuntimeError(
            f"Could not claim {key!r} in {_CLAIM_ATTEMPTS} attempts."
            " Another process keeps deleting it; check what purges the table."
        )

    def complete(
        self,
        key: str,
        token: str,
        *,
        result: str | None = None,
        connection: sa.Connection | sa.orm.Session | None = None,
    ) -> bool:
        """Mark ``key`` done if ``token`` still owns it.

        :param connection: Run the update on this connection or session,
            inside its transaction and without committing, so the caller's own
            writes and the completion commit together or not at all.
        """
        import sqlalchemy as sa

        now = self._clock()
        c = self.table.c
        stmt = (
            sa.update(self.table)
            .where(
                c.key == key,
                c.token == token,
                c.state == _RUNNING,
                c.expires_at > now,
            )
            .values(state=_DONE, expires_at=now + self.retention, result=result)
        )

        if connection is not None:
            rv: sa.CursorResult[t.Any] = connection.execute(stmt)  # type: ignore[assignment]
            return rv.rowcount == 1

        with self.engine.begin() as conn:
            return conn.execute(stmt).rowcount == 1

    def release(self, key: str, token: str) -> None:
        import sqlalchemy as sa

        c = self.table.c
        stmt = sa.delete(self.table).where(
            c.key == key, c.token == token, c.state == _RUNNING
        )

        with self.engine.begin() as conn:
            conn.execute(stmt)

    def get(self, key: str) -> Claim | None:
        import sqlalchemy as sa

        now = self._clock()
        c = self.table.c
        stmt = sa.select(c.state, c.lease_until, c.result).where(
            c.key == key, c.expires_at > now
        )

        with self.engine.connect() as conn:
            row = conn.execute(stmt).one_or_none()

        if row is None:
            return None

        if row.state == _DONE:
            return Claim(ClaimState.DONE, result=row.result)

        if row.lease_until > now:
            return Claim(
                ClaimState.BUSY, retry_after=_retry_after(row.lease_until, now)
            )

        return None

    def purge(self, now: float | None = None) -> int:
        import sqlalchemy as sa

        stmt = sa.delete(self.table).where(self.table.c.expires_at <= self._now(now))

        with self.engine.begin() as conn:
            return conn.execute(stmt).rowcount

    def close(self) -> None:
        if self._owns_engine:
            self.engine.dispose()

    def _insert(self, conn: sa.Connection, values: dict[str, t.Any]) -> bool:
        """Insert a new record unless the key exists; return whether it did."""
        import sqlalchemy as sa

        name = conn.dialect.name
        inserted = self.table.c.key

        # RETURNING, because drivers report no reliable rowcount for an INSERT.
        if name == "postgresql":
            from sqlalchemy.dialects import postgresql

            pg_stmt = (
                postgresql.insert(self.table)
                .values(values)
                .on_conflict_do_nothing()
                .returning(inserted)
            )
            return conn.execute(pg_stmt).first() is not None

        if name == "sqlite":
            from sqlalchemy.dialects import sqlite

            lite_stmt = sqlite.insert(self.table).values(values)
            lite_stmt = lite_stmt.on_conflict_do_nothing()

            # SQLite before 3.35 has no RETURNING, but its rowcount is exact.
            if not conn.dialect.insert_returning:
                return conn.execute(lite_stmt).rowcount == 1

            return conn.execute(lite_stmt.returning(inserted)).first() is not None

        try:
            with conn.begin_nested():
                conn.execute(sa.insert(self.table).values(values))
        except sa.exc.IntegrityError:
            return False

        return True


def store_from_config(
    value: str | IdempotencyStore,
    *,
    retention: float = DEFAULT_RETENTION,
    engine_factory: t.Callable[[], sa.Engine] | None = None,
) -> IdempotencyStore:
    """Return the store that ``QSTASH_IDEMPOTENCY_STORE`` names.

    - ``"memory"``: a :class:`MemoryStore`, for a single process.
    - ``"redis://..."``, ``"rediss://..."``, ``"unix://..."``: a
      :class:`RedisStore` on that server.
    - any other URL: a :class:`SQLAlchemyStore` on that database, such as
      ``"postgresql+psycopg://app@db/app"``.
    - ``"sqlalchemy"``: a :class:`SQLAlchemyStore` on the engine that
      ``engine_factory`` returns, the app's Flask-SQLAlchemy ``db.engine``.
    - an :class:`IdempotencyStore`: used as it is.

    :param value: The config value.
    :param retention: Seconds a record is kept after its last change.
    :param engine_factory: Returns the app's SQLAlchemy engine.
    """
    if isinstance(value, IdempotencyStore):
        return value

    if not isinstance(value, str):
        raise TypeError(
            "'QSTASH_IDEMPOTENCY_STORE' must be a string or an 'IdempotencyStore',"
            f" got {type(value).__name__!r}. Use 'memory', 'sqlalchemy' or a URL."
        )

    name = value.strip()

    if name.lower() == "memory":
        return MemoryStore(retention=retention)

    if name.lower() == "sqlalchemy":
        if engine_factory is None:
            raise ValueError(
                "'QSTASH_IDEMPOTENCY_STORE' is 'sqlalchemy' but the app has no"
                " Flask-SQLAlchemy engine. Initialize Flask-SQLAlchemy on the app"
                " before Flask-QStash, or set a database URL instead."
            )

        return SQLAlchemyStore(engine=engine_factory(), retention=retention)

    scheme, sep, _ = name.partition("://")

    if sep and scheme.lower() in ("redis", "rediss", "unix"):
        return RedisStore(url=name, retention=retention)

    if sep and scheme:
        return SQLAlchemyStore(url=name, retention=retention)

    raise ValueError(
        f"'QSTASH_IDEMPOTENCY_STORE' must be 'memory', 'sqlalchemy' or a URL, got"
        f" {value!r}. Use 'memory' for one process, or a 'redis://' or database"
        " URL that every worker shares."
    )
