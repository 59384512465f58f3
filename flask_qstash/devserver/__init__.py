"""A local QStash-compatible server for development, tests and demos.

The official ``qstash`` SDK talks to it unchanged through ``base_url`` or
``QSTASH_URL``. It signs every delivery as QStash does, retries with QStash's
backoff (optionally sped up), honours ``489`` and ``Retry-After``, keeps a
dead-letter queue, runs cron schedules, FIFO queues and flow-control keys, and
keeps its state in SQLite so a restart loses nothing.

Run it from a shell:

.. code-block:: text

    python -m flask_qstash.devserver --port 8080 --db qstash-dev.sqlite3

or embed it, for example in a test:

.. code-block:: python

    with DevServer(speed=1000) as server:
        client = qstash.QStash(server.token, base_url=server.url)
        client.message.publish_json(url="http://127.0.0.1:5000/job", body={})
        server.wait_idle()

Each of the predefined accounts in :data:`USERS` (the same tokens and keys as
Upstash's own dev server) has its own isolated state.

It is a development tool: one process, one SQLite file. In production talk to
Upstash QStash itself.
"""

from __future__ import annotations

import logging
import threading
import typing as t
from types import TracebackType

from werkzeug.serving import BaseWSGIServer
from werkzeug.serving import make_server
from werkzeug.serving import WSGIRequestHandler

from .api import Api
from .lock import DatabaseLock
from .lock import DatabaseLockedError
from .lock import running_at
from .scheduler import Engine
from .store import Store

__all__ = [
    "DatabaseLockedError",
    "DEFAULT_CURRENT_SIGNING_KEY",
    "DEFAULT_NEXT_SIGNING_KEY",
    "DEFAULT_TOKEN",
    "USERS",
    "DevServer",
    "main",
    "print_banner",
    "running_at",
]

logger = logging.getLogger(__name__)

#: The default account's token, as Upstash's dev server prints it.
DEFAULT_TOKEN = (
    "eyJVc2VySUQiOiJkZWZhdWx0VXNlciIsIlBhc3N3b3JkIjoiZGVmYXVsdFBhc3N3b3JkIn0="
)

#: The default account's current signing key.
DEFAULT_CURRENT_SIGNING_KEY = "sig_7kYjw48mhY7kAjqNGcy6cr29RJ6r"

#: The default account's next signing key.
DEFAULT_NEXT_SIGNING_KEY = "sig_5ZB6DVzB1wjE8S6rZ7eenA8Pdnhs"

#: The predefined accounts: token to ``(current_key, next_key)``.
USERS: dict[str, tuple[str, str]] = {
    DEFAULT_TOKEN: (DEFAULT_CURRENT_SIGNING_KEY, DEFAULT_NEXT_SIGNING_KEY),
    "eyJVc2VySUQiOiJ0ZXN0VXNlcjEiLCJQYXNzd29yZCI6InRlc3RQYXNzd29yZCJ9": (
        "sig_7GVPjvuwsfqF65iC8fSrs1dfYruM",
        "sig_5NoELc3EFnZn4DVS5bDs2Nk4b7Ua",
    ),
    "eyJVc2VySUQiOiJ0ZXN0VXNlcjIiLCJQYXNzd29yZCI6InRlc3RQYXNzd29yZCJ9": (
        "sig_6jWGaWRxHsw4vMSPJprXadyvrybF",
        "sig_7qHbvhmahe5GwfePDiS5Lg3pi6Qx",
    ),
    "eyJVc2VySUQiOiJ0ZXN0VXNlcjMiLCJQYXNzd29yZCI6InRlc3RQYXNzd29yZCJ9": (
        "sig_5T8FcSsynBjn9mMLBsXhpacRovJf",
        "sig_7GFR4YaDshFcqsxWRZpRB161jguD",
    ),
}


class _QuietHandler(WSGIRequestHandler):
    """Log API requests at DEBUG under this package instead of to stderr."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        logger.debug("%s %s", self.requestline, code)

    def log(self, type: str, message: str, *args: t.Any) -> None:
        logger.debug(message, *args)


class DevServer:
    """A QStash-compatible server running in background threads.

    :param host: The interface to listen on; keep the loopback default unless
        other machines must reach it.
    :param port: The port, or 0 for a free one.
    :param database: A SQLite file path, or ``":memory:"`` for a throwaway
        store.
    :param speed: Retry backoff and ``Retry-After`` delays are divided by this;
        use a large value such as 1000 in tests.
    :param max_body_size: The largest message body accepted, in bytes.
    :param extra_users: More accounts, token to ``(current_key, next_key)``,
        each isolated from the others.
    :param workers: How many deliveries may be in flight at once.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        database: str = ":memory:",
        speed: float = 1.0,
        max_body_size: int = 1024 * 1024,
        extra_users: t.Mapping[str, tuple[str, str]] | None = None,
        workers: int = 16,
    ) -> None:
        if max_body_size < 1:
            raise ValueError(
                f"'max_body_size' must be at least 1 byte, got {max_body_size!r}."
                " Pass the largest body to accept, such as 1048576."
            )

        self.host = host
        self.port = port
        self.database = database
        self._db_lock: DatabaseLock | None = None
        self.speed = speed
        self.max_body_size = max_body_size
        self.workers = workers
        self.users: dict[str, tuple[str, str]] = {**USERS, **(extra_users or {})}
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None
        self._engine: Engine | None = None
        self._lock = threading.Lock()

        # Fail on a bad speed at construction, not in a background thread.
        if speed <= 0:
            raise ValueError(
                f"'speed' must be positive, got {speed!r}. Use 1 for real time"
                " or a larger number to shorten retry backoff."
            )

    @property
    def engine(self) -> Engine:
        """The running :class:`~.scheduler.Engine`; only valid after :meth:`start`."""
        if self._engine is None:
            raise RuntimeError(
                "The dev server is not running. Call 'start()' or use it as a"
                " context manager first."
            )

        return self._engine

    @property
    def url(self) -> str:
        """The base URL to give the SDK, such as ``http://127.0.0.1:8080``."""
        if self._server is None:
            raise RuntimeError(
                "The dev server has no URL before it starts. Call 'start()' first."
            )

        return f"http://{self.host}:{self._server.server_port}"

    @property
    def token(self) -> str:
        """The default account's token."""
        return DEFAULT_TOKEN

    @property
    def current_signing_key(self) -> str:
        """The default account's current signing key."""
        if self._engine is not None:
            return self._engine.accounts[DEFAULT_TOKEN].current_key

        return self.users[DEFAULT_TOKEN][0]

    @property
    def next_signing_key(self) -> str:
        """The default account's next signing key."""
        if self._engine is not None:
            return self._engine.accounts[DEFAULT_TOKEN].next_key

        return self.users[DEFAULT_TOKEN][1]

    def start(self) -> DevServer:
        """Open the store, start delivering and listen; idempotent.

        Returns once the server accepts connections.
        """
        with self._lock:
            if self._server is not None:
                return self

            lock = DatabaseLock(self.database)

            if self.database != ":memory:":
                lock.acquire()

            try:
                store = Store(self.database)
            except BaseException:
                lock.release()
                raise

            engine = Engine(
                store,
                self.users,
                speed=self.speed,
                workers=self.workers,
            )
            app = Api(engine, max_body_size=self.max_body_size)

            try:
                server = make_server(
                    self.host,
                    self.port,
                    app,
                    threaded=True,
                    request_handler=_QuietHandler,
                )
            except BaseException:
                engine.stop()
                lock.release()
                raise

            # Handler threads must never keep the interpreter alive.
            server.daemon_threads = True  # type: ignore[attr-defined]
            engine.start()
            self._engine = engine
            self._server = server
            self._thread = threading.Thread(
                target=server.serve_forever,
                kwargs={"poll_interval": 0.1},
                name="qstash-dev-http",
                daemon=True,
            )
            self._thread.start()
            self._db_lock = lock
            lock.publish(self.url)
            logger.info("QStash dev server listening on %s", self.url)
            return self

    def stop(self) -> None:
        """Stop listening and delivering and close the store; takes under 5 s."""
        with self._lock:
            server, engine, thread = self._server, self._engine, self._thread

            if server is None or engine is None:
                return

            server.shutdown()
            server.server_close()

            if thread is not None:
                thread.join(timeout=2.0)

            engine.stop()
            self._server = self._engine = self._thread = None

            if self._db_lock is not None:
                self._db_lock.release()
                self._db_lock = None

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Wait until no delivery is in flight or due within ``timeout`` seconds.

        Messages due later than ``timeout`` from now do not count, so a long
        delay never blocks a test. Returns ``False`` if still busy at the end.
        """
        return self.engine.wait_idle(timeout)

    def trigger_schedule(self, schedule_id: str, *, token: str = DEFAULT_TOKEN) -> None:
        """Fire a schedule now, through the same path as its cron.

        Cron has a one-minute resolution; tests use this instead of waiting.

        :raises ValueError: The token or schedule is unknown.
        """
        acct = self.engine.account(token)

        if acct is None:
            raise ValueError("Unknown token. Pass one of the dev server's tokens.")

        from .messages import ApiError

        try:
            self.engine.trigger_schedule(acct, schedule_id)
        except ApiError as exc:
            raise ValueError(exc.message) from None

    def __enter__(self) -> DevServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


from .__main__ import main  # noqa: E402
from .__main__ import print_banner  # noqa: E402
