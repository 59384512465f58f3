"""Helpers for the dev server tests: a receiving Flask app and bounded waits.

The receiver is a plain Flask app (not the extension) served by Werkzeug on a
free loopback port. Every delivery is checked with both
:func:`flask_qstash.signing.verify` and the SDK's ``qstash.Receiver``, and the
test decides per path what the app answers.
"""

from __future__ import annotations

import collections
import threading
import time
import typing as t
from dataclasses import dataclass
from dataclasses import field

import qstash
from flask import Flask
from flask import request
from flask import Response
from werkzeug.serving import make_server
from werkzeug.serving import WSGIRequestHandler

from flask_qstash.devserver import DEFAULT_CURRENT_SIGNING_KEY
from flask_qstash.devserver import DEFAULT_NEXT_SIGNING_KEY
from flask_qstash.signing import verify

if t.TYPE_CHECKING:
    from flask_qstash.devserver import DevServer


@dataclass
class Delivery:
    """One request the receiver got."""

    path: str
    url: str
    method: str
    headers: dict[str, str]
    body: bytes
    received: float
    verified: bool
    sdk_verified: bool
    status: int

    @property
    def message_id(self) -> str:
        """The ``Upstash-Message-Id`` header."""
        return self.headers.get("upstash-message-id", "")


@dataclass
class Answer:
    """What the receiver answers to one delivery."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: str = "ok"
    hold: threading.Event | None = None
    hold_for: float = 0.0


class _Quiet(WSGIRequestHandler):
    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass


class Receiver:
    """A Flask app on a free port that records and verifies deliveries.

    :param keys: The signing keys deliveries must be signed with.
    """

    def __init__(
        self,
        keys: tuple[str, str] = (DEFAULT_CURRENT_SIGNING_KEY, DEFAULT_NEXT_SIGNING_KEY),
    ) -> None:
        self.keys = keys
        self.deliveries: list[Delivery] = []
        self.answers: dict[str, collections.deque[Answer]] = {}
        self.cond = threading.Condition()
        app = Flask(__name__)
        app.add_url_rule(
            "/<path:path>",
            "any",
            self._handle,
            methods=["GET", "POST", "PUT", "DELETE", "PATCH"],
        )
        self._server = make_server(
            "127.0.0.1", 0, app, threaded=True, request_handler=_Quiet
        )
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.1}
        )
        self._thread.daemon = True

    @property
    def base(self) -> str:
        """The receiver's origin, ``http://127.0.0.1:<port>``."""
        return f"http://127.0.0.1:{self._server.server_port}"

    def url(self, path: str) -> str:
        """Return the absolute URL of ``path`` on the receiver."""
        return self.base + "/" + path.lstrip("/")

    def answer(self, path: str, *answers: Answer) -> None:
        """Queue the answers for the next deliveries to ``path``."""
        self.answers.setdefault("/" + path.lstrip("/"), collections.deque()).extend(
            answers
        )

    def start(self) -> Receiver:
        """Start serving in a daemon thread."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving."""
        self._server.shutdown()
        self._server.server_close()

    def to(self, path: str) -> list[Delivery]:
        """Return the deliveries received at ``path`` so far."""
        with self.cond:
            return [d for d in self.deliveries if d.path == "/" + path.lstrip("/")]

    def wait_for(self, predicate: t.Callable[[], bool], timeout: float = 10.0) -> bool:
        """Wait until ``predicate`` holds, re-checking on each delivery."""
        return wait_on(self.cond, predicate, timeout)

    def wait_count(
        self, path: str, count: int, timeout: float = 10.0
    ) -> list[Delivery]:
        """Wait for ``count`` deliveries at ``path`` and return them."""
        target = "/" + path.lstrip("/")
        self.wait_for(
            lambda: sum(d.path == target for d in self.deliveries) >= count, timeout
        )
        return self.to(path)

    def _handle(self, path: str) -> Response:
        body = request.get_data()
        raw = request.environ.get("REQUEST_URI") or request.full_path
        url = self.base + str(raw)
        token = request.headers.get("Upstash-Signature")

        try:
            verify(token, body, url=url, keys=list(self.keys), leeway=0)
            verified = True
        except Exception:
            verified = False

        try:
            qstash.Receiver(
                current_signing_key=self.keys[0], next_signing_key=self.keys[1]
            ).verify(signature=token or "", body=body.decode(), url=url)
            sdk_verified = True
        except Exception:
            sdk_verified = False

        with self.cond:
            queue = self.answers.get("/" + path)
            answer = queue.popleft() if queue else Answer()

        if answer.hold is not None:
            answer.hold.wait(answer.hold_for)

        with self.cond:
            self.deliveries.append(
                Delivery(
                    path="/" + path,
                    url=url,
                    method=request.method,
                    headers={k.lower(): v for k, v in request.headers.items()},
                    body=body,
                    received=time.time(),
                    verified=verified,
                    sdk_verified=sdk_verified,
                    status=answer.status,
                )
            )
            self.cond.notify_all()

        return Response(answer.body, status=answer.status, headers=answer.headers)


def wait_on(
    cond: threading.Condition, predicate: t.Callable[[], bool], timeout: float
) -> bool:
    """Wait until ``predicate`` holds, at most ``timeout`` seconds.

    Re-checks whenever ``cond`` is notified, and at least every 0.1 s for
    state that changes without a notification.
    """
    deadline = time.monotonic() + timeout

    with cond:
        while not predicate():
            remaining = deadline - time.monotonic()

            if remaining <= 0:
                return False

            cond.wait(min(remaining, 0.1))

    return True


def wait_until(
    predicate: t.Callable[[], bool], timeout: float = 10.0, step: float = 0.02
) -> bool:
    """Poll ``predicate`` until it holds or ``timeout`` passes; bounded.

    Used for state that has no condition to wait on, such as the server's view
    through the SDK. Waits between polls on an :class:`threading.Event` that is
    never set, so the loop is bounded by the deadline.
    """
    pause = threading.Event()
    deadline = time.monotonic() + timeout

    while time.monotonic() < deadline:
        if predicate():
            return True

        pause.wait(step)

    return predicate()


def client(server: DevServer, token: str | None = None) -> qstash.QStash:
    """Return a sync SDK client for ``server``, without transport retries."""
    return qstash.QStash(token or server.token, base_url=server.url, retry=False)
