"""Publishing through the real ``qstash`` SDK to a fake QStash on loopback.

The fake speaks just enough of ``POST /v2/publish/<url>`` and ``/v2/batch``
for the SDK, and follows a script of answers: a 429 with a rate-limit reset, a
500, a connection dropped after the message was created, and success. Like
QStash, it creates one message per deduplication id.
"""

from __future__ import annotations

import collections
import json
import socket
import threading
import time
import typing as t
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from dataclasses import field
from http.server import BaseHTTPRequestHandler
from http.server import ThreadingHTTPServer

import pytest
from conftest import make_app
from conftest import TOKEN
from flask import Flask

from flask_qstash import Job
from flask_qstash import PublishError
from flask_qstash import QStash

#: Seconds one publish may take in all, retries included.
BUDGET = 5.0

#: Seconds a busy machine may add to a budget before the caller gets control
#: back; less than any overrun the budget tests look for.
SLACK = 0.4


@dataclass
class Seen:
    """One request the fake received."""

    path: str
    authorization: str
    deduplication_ids: list[str]


@dataclass
class FakeQStash:
    """State of the fake server: the script, what it saw, what it created."""

    url: str = ""
    script: collections.deque[str] = field(default_factory=collections.deque)
    default: str = "ok"
    seen: list[Seen] = field(default_factory=list)
    messages: dict[str, str] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    #: Set to let "slow" and "hang" answers go on.
    release: threading.Event = field(default_factory=threading.Event)

    def next_answer(self) -> str:
        with self.lock:
            return self.script.popleft() if self.script else self.default

    def create(self, deduplication_id: str) -> tuple[str, bool]:
        """Create the message for ``deduplication_id`` unless it exists."""
        with self.lock:
            if deduplication_id in self.messages:
                return self.messages[deduplication_id], True

            message_id = f"msg_{uuid.uuid4().hex}"
            self.messages[deduplication_id] = message_id
            return message_id, False


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: t.Any) -> None:
        pass

    def do_POST(self) -> None:
        fake = self.server.fake
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))

        if self.path == "/v2/batch":
            items = json.loads(body)
            ids = [item["headers"]["Upstash-Deduplication-Id"] for item in items]
        else:
            ids = [self.headers["Upstash-Deduplication-Id"]]

        fake.seen.append(Seen(self.path, self.headers["Authorization"], ids))
        answer = fake.next_answer()

        if answer == "slow500":
            # Answer late, but within the budget.
            fake.release.wait(0.6)
            answer = "500"
        elif answer == "hang":
            # Never answer; the client has given up by the time this returns.
            fake.release.wait(10)
            self.close_connection = True
            return

        if answer == "429":
            reset = str(int(time.time() + 1))
            self._send(429, {"error": "rate limited"}, {"Burst-RateLimit-Reset": reset})
        elif answer in ("400", "401", "500"):
            self._send(int(answer), {"error": f"status {answer}"})
        elif answer == "drop":
            # QStash created the message but the answer never arrives.
            for dedup in ids:
                fake.create(dedup)

            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
        else:
            rv = []

            for dedup in ids:
                message_id, dup = fake.create(dedup)
                rv.append({"messageId": message_id, "deduplicated": dup})

            self._send(200, rv if self.path == "/v2/batch" else rv[0])

    def _send(
        self, status: int, data: t.Any, headers: dict[str, str] | None = None
    ) -> None:
        body = json.dumps(data).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))

        for name, value in (headers or {}).items():
            self.send_header(name, value)

        self.end_headers()
        self.wfile.write(body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    fake: FakeQStash


@pytest.fixture
def fake_qstash() -> Iterator[FakeQStash]:
    """A fake QStash API on a free loopback port."""
    server = _Server(("127.0.0.1", 0), _Handler)
    server.fake = FakeQStash(url=f"http://127.0.0.1:{server.server_address[1]}")
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}
    )
    thread.start()

    try:
        yield server.fake
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def real_app(request: pytest.FixtureRequest, fake_qstash: FakeQStash) -> Flask:
    """An app whose extension uses the SDK's real client against the fake."""
    return make_app(
        request.module.__name__,
        QStash(),
        QSTASH_URL=fake_qstash.url,
        QSTASH_PUBLISH_TIMEOUT=BUDGET,
        QSTASH_PUBLISH_RETRIES=5,
    )


def _job(app: Flask) -> Job:
    ext: QStash = app.extensions["qstash"]
    return ext.job("ping")(lambda payload: None)


def test_publish_reaches_the_api(real_app: Flask, fake_qstash: FakeQStash) -> None:
    job = _job(real_app)

    with real_app.app_context():
        rv = job.enqueue({"n": 1}, deduplication_id="one")

    [seen] = fake_qstash.seen
    assert seen.path == "/v2/publish/https://app.example.com/qstash/default/ping"
    assert seen.authorization == f"Bearer {TOKEN}"
    assert seen.deduplication_ids == ["default.ping.one"]
    assert fake_qstash.messages == {"default.ping.one": rv.message_id}


def test_transient_failures_are_retried_and_create_one_message(
    real_app: Flask, fake_qstash: FakeQStash
) -> None:
    fake_qstash.script.extend(["429", "500", "drop", "ok"])
    job = _job(real_app)
    started = time.monotonic()

    with real_app.app_context():
        rv = job.enqueue({"n": 1})

    elapsed = time.monotonic() - started
    assert elapsed < BUDGET
    assert len(fake_qstash.seen) == 4
    assert {s.deduplication_ids[0] for s in fake_qstash.seen} == {rv.deduplication_id}
    assert fake_qstash.messages == {rv.deduplication_id: rv.message_id}
    assert rv.deduplicated is True


def test_batch_is_retried_as_one_request(
    real_app: Flask, fake_qstash: FakeQStash
) -> None:
    fake_qstash.script.extend(["500", "drop", "ok"])
    job = _job(real_app)

    with real_app.app_context():
        rv = job.enqueue_many([1, 2, 3])

    assert [s.path for s in fake_qstash.seen] == ["/v2/batch"] * 3
    assert len(fake_qstash.messages) == 3
    assert [r.message_id for r in rv] == [
        fake_qstash.messages[r.deduplication_id] for r in rv
    ]


def test_exhausted_budget_raises_a_retryable_error(
    request: pytest.FixtureRequest, fake_qstash: FakeQStash
) -> None:
    fake_qstash.default = "500"
    app = make_app(
        request.module.__name__,
        QStash(),
        QSTASH_URL=fake_qstash.url,
        QSTASH_PUBLISH_TIMEOUT=1.0,
        QSTASH_PUBLISH_RETRIES=20,
    )
    job = _job(app)
    started = time.monotonic()

    with app.app_context(), pytest.raises(PublishError) as info:
        job.enqueue()

    assert time.monotonic() - started < 1.0 + SLACK
    assert (info.value.status, info.value.retryable) == (500, True)
    assert len(fake_qstash.seen) >= 2
    assert fake_qstash.messages == {}


def test_slow_answers_stay_within_the_budget(
    request: pytest.FixtureRequest, fake_qstash: FakeQStash
) -> None:
    # The second attempt may only use what the first one left of the budget.
    fake_qstash.script.extend(["slow500", "hang"])
    app = make_app(
        request.module.__name__,
        QStash(),
        QSTASH_URL=fake_qstash.url,
        QSTASH_PUBLISH_TIMEOUT=1.0,
        QSTASH_PUBLISH_RETRIES=5,
    )
    job = _job(app)
    started = time.monotonic()

    try:
        with app.app_context(), pytest.raises(PublishError) as info:
            job.enqueue()
    finally:
        fake_qstash.release.set()

    # A second attempt given a whole new second would end near 1.6 s.
    assert time.monotonic() - started < 1.0 + SLACK
    assert info.value.retryable is True
    assert len(fake_qstash.seen) == 2


def test_exhausted_retries_raise_a_retryable_error(
    request: pytest.FixtureRequest, fake_qstash: FakeQStash
) -> None:
    fake_qstash.default = "drop"
    app = make_app(
        request.module.__name__,
        QStash(),
        QSTASH_URL=fake_qstash.url,
        QSTASH_PUBLISH_TIMEOUT=BUDGET,
        QSTASH_PUBLISH_RETRIES=2,
    )
    job = _job(app)

    with app.app_context(), pytest.raises(PublishError) as info:
        job.enqueue()

    assert (info.value.status, info.value.retryable) == (None, True)
    assert len(fake_qstash.seen) == 3
    assert len(fake_qstash.messages) == 1


@pytest.mark.parametrize("status", [400, 401])
def test_client_errors_are_not_retried(
    real_app: Flask, fake_qstash: FakeQStash, status: int
) -> None:
    fake_qstash.default = str(status)
    job = _job(real_app)

    with real_app.app_context(), pytest.raises(PublishError) as info:
        job.enqueue()

    assert (info.value.status, info.value.retryable) == (status, False)
    assert len(fake_qstash.seen) == 1
    assert TOKEN not in str(info.value)


def test_unreachable_api_raises(request: pytest.FixtureRequest) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]

    app = make_app(
        request.module.__name__,
        QStash(),
        QSTASH_URL=f"http://127.0.0.1:{port}",
        QSTASH_PUBLISH_TIMEOUT=1.0,
        QSTASH_PUBLISH_RETRIES=2,
    )
    job = _job(app)

    with app.app_context(), pytest.raises(PublishError) as info:
        job.enqueue()

    assert (info.value.status, info.value.retryable) == (None, True)


def test_missing_token_raises(request: pytest.FixtureRequest) -> None:
    app = make_app(request.module.__name__, QStash(), QSTASH_TOKEN=None)
    job = _job(app)

    with app.app_context(), pytest.raises(PublishError, match="'QSTASH_TOKEN'"):
        job.enqueue(tenant="acme")
