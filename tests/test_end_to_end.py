"""End to end: a real Flask app using the extension, against the embedded dev server.

Each test builds an app with ``QSTASH_DEV_SERVER = True``, so ``init_app``
starts its own dev server, and serves the app for real with Werkzeug on a free
loopback port that ``QSTASH_PUBLIC_URL`` points at. Jobs are enqueued through
the public API; the dev server signs and delivers them over HTTP, retries,
dead-letters and calls the failure callback, and the app's handlers record
what they saw. Waits are bounded by conditions, never fixed sleeps.
"""

from __future__ import annotations

import datetime
import io
import math
import os
import threading
import time
import typing as t
from dataclasses import dataclass
from dataclasses import field

import pytest
import qstash as qstash_sdk
from devserver_helpers import wait_on
from flask import current_app
from flask import Flask
from marshmallow import fields
from werkzeug.serving import BaseWSGIServer
from werkzeug.serving import make_server
from werkzeug.serving import WSGIRequestHandler

from flask_qstash import current_tenant
from flask_qstash import DeadJob
from flask_qstash import deadletter
from flask_qstash import JobContext
from flask_qstash import NonRetryableError
from flask_qstash import QStash
from flask_qstash import RetryLater
from flask_qstash import signals
from flask_qstash import SignatureError
from flask_qstash.devserver import DEFAULT_CURRENT_SIGNING_KEY
from flask_qstash.devserver import DEFAULT_NEXT_SIGNING_KEY
from flask_qstash.devserver import DevServer
from flask_qstash.extension import DEV_SERVER_ENV
from flask_qstash.signing import verify

if t.TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse
    from _typeshed.wsgi import WSGIApplication
    from _typeshed.wsgi import WSGIEnvironment
    from blinker import NamedSignal
    from qstash import QStash as QStashClient

#: Retry backoff and ``Retry-After`` are divided by this on the dev server.
SPEED = 200.0

#: The dev server's default account's keys, which sign every delivery here.
KEYS = [DEFAULT_CURRENT_SIGNING_KEY, DEFAULT_NEXT_SIGNING_KEY]

#: The signals every harness records, by name.
RECORDED = (
    signals.job_received,
    signals.job_finished,
    signals.job_failed,
    signals.job_dead,
    signals.job_enqueued,
)


@dataclass
class Event:
    """One thing that happened: a handler run, a signal, a failure hook call."""

    kind: str
    data: dict[str, t.Any]
    at: float = field(default_factory=time.time)


@dataclass
class Delivery:
    """One request the served app received, captured before Flask read it."""

    path: str
    headers: dict[str, str]
    body: bytes
    at: float
    status: int = 0


class Recorder:
    """Thread-safe record of events, with bounded waits on a condition."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.events: list[Event] = []
        self.deliveries: list[Delivery] = []

    def add(self, kind: str, **data: t.Any) -> None:
        with self.cond:
            self.events.append(Event(kind, data))
            self.cond.notify_all()

    def of(self, kind: str) -> list[Event]:
        with self.cond:
            return [e for e in self.events if e.kind == kind]

    def to(self, path: str) -> list[Delivery]:
        with self.cond:
            return [d for d in self.deliveries if d.path == path]

    def wait(self, predicate: t.Callable[[], bool], timeout: float = 10.0) -> bool:
        """Wait until ``predicate`` holds, re-checked on every event."""
        return wait_on(self.cond, predicate, timeout)

    def wait_count(self, kind: str, count: int, timeout: float = 10.0) -> list[Event]:
        """Wait for ``count`` events of ``kind``; fail the test if they never come."""
        ok = self.wait(
            lambda: sum(e.kind == kind for e in self.events) >= count, timeout
        )
        events = self.of(kind)
        assert ok, f"expected {count} {kind!r} events, got {len(events)}"
        return events


class Capture:
    """WSGI middleware recording each request's raw body, headers and status.

    It reads the body itself and re-injects it as :class:`io.BytesIO`, since
    the extension reads ``wsgi.input`` directly. ``target`` is set once the
    app exists, so the server can bind its port before the app is configured.
    """

    def __init__(self, rec: Recorder) -> None:
        self.rec = rec
        self.target: WSGIApplication | None = None

    def __call__(
        self, environ: WSGIEnvironment, start_response: StartResponse
    ) -> t.Iterable[bytes]:
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        environ["wsgi.input"] = io.BytesIO(body)
        delivery = Delivery(
            path=environ.get("PATH_INFO", ""),
            headers={
                k[5:].replace("_", "-").lower(): v
                for k, v in environ.items()
                if k.startswith("HTTP_")
            },
            body=body,
            at=time.time(),
        )

        def capture(status: str, headers: t.Any, exc_info: t.Any = None) -> t.Any:
            delivery.status = int(status.split()[0])
            return start_response(status, headers, exc_info)

        assert self.target is not None
        rv = self.target(environ, capture)

        with self.rec.cond:
            self.rec.deliveries.append(delivery)
            self.rec.cond.notify_all()

        return rv


class _Quiet(WSGIRequestHandler):
    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass


@dataclass
class Served:
    """An app with the extension, served on a loopback port."""

    app: Flask
    ext: QStash
    rec: Recorder
    public_url: str
    http: BaseWSGIServer

    @property
    def dev_server(self) -> DevServer:
        with self.app.app_context():
            server = self.ext.dev_server

        assert server is not None
        return server

    def client(self, tenant: str = "acme") -> QStashClient:
        """The SDK client the extension publishes with for ``tenant``."""
        with self.app.app_context():
            return self.ext.publisher.client(self.ext.get_tenant(tenant))

    def idle(self, timeout: float = 10.0) -> None:
        """Wait until the dev server has nothing in flight or due soon."""
        assert self.dev_server.wait_idle(timeout)

    def check_signature(self, delivery: Delivery, *, body: bytes | None = None) -> None:
        """Verify a captured delivery with the extension and with the SDK.

        :param body: Check this body instead of the captured one.
        """
        data = delivery.body if body is None else body
        url = self.public_url + delivery.path
        token = delivery.headers["upstash-signature"]
        claims = verify(token, data, url=url, keys=KEYS)
        assert claims.sub == url
        self.check_with_sdk(delivery, body=body)

    def check_with_sdk(self, delivery: Delivery, *, body: bytes | None = None) -> None:
        """Verify a captured delivery with ``qstash.Receiver`` only."""
        data = delivery.body if body is None else body
        qstash_sdk.Receiver(
            current_signing_key=KEYS[0], next_signing_key=KEYS[1]
        ).verify(
            signature=delivery.headers["upstash-signature"],
            body=data.decode(),
            url=self.public_url + delivery.path,
        )


Serve = t.Callable[..., Served]


@pytest.fixture
def rec() -> Recorder:
    return Recorder()


@pytest.fixture
def ext() -> QStash:
    return QStash()


@pytest.fixture
def serve(request: pytest.FixtureRequest, rec: Recorder) -> t.Iterator[Serve]:
    """Build and serve apps; stop their dev servers and HTTP servers after."""
    started: list[Served] = []
    connected: list[tuple[NamedSignal, t.Callable[..., None]]] = []

    def factory(ext: QStash, **config: t.Any) -> Served:
        capture = Capture(rec)
        http = make_server(
            "127.0.0.1", 0, capture, threaded=True, request_handler=_Quiet
        )
        http.daemon_threads = True  # type: ignore[attr-defined]
        public_url = f"http://127.0.0.1:{http.server_port}"
        app = Flask(request.module.__name__)
        app.config.update(
            TESTING=True,
            QSTASH_DEV_SERVER=True,
            QSTASH_DEV_SERVER_DATABASE=":memory:",
            QSTASH_DEV_SERVER_SPEED=SPEED,
            QSTASH_PUBLIC_URL=public_url,
            QSTASH_TENANTS={"acme": {}, "globex": {}},
        )
        app.config.update(config)
        ext.init_app(app)
        capture.target = app.wsgi_app
        served = Served(app, ext, rec, public_url, http)
        started.append(served)

        for signal in RECORDED:

            def receiver(
                sender: Flask, *, _name: str = signal.name, **data: t.Any
            ) -> None:
                rec.add(_name, **data)

            signal.connect(receiver, sender=app, weak=False)
            connected.append((signal, receiver))

        threading.Thread(
            target=http.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()
        return served

    yield factory

    for signal, receiver in connected:
        signal.disconnect(receiver)

    for served in reversed(started):
        with served.app.app_context():
            server = served.ext.dev_server

            if server is not None:
                server.stop()

            # Close the SDK clients so no socket outlives the test.
            for tenant in ("default", "acme", "globex"):
                client = served.ext.publisher.client(served.ext.get_tenant(tenant))
                client.http._client.close()

        served.http.shutdown()
        served.http.server_close()

    # The extension exports its dev server's URL for a reloader's child; a
    # later test must start its own server, not join this stopped one.
    os.environ.pop(DEV_SERVER_ENV, None)


def _record_run(rec: Recorder, payload: t.Any, ctx: JobContext) -> None:
    tenant = current_tenant
    rec.add(
        "run",
        payload=payload,
        ctx=ctx,
        app=current_app._get_current_object(),  # type: ignore[attr-defined]
        current_tenant=tenant.id if tenant is not None else None,
    )


def test_enqueue_runs_once_with_verified_signature(
    ext: QStash, serve: Serve, rec: Recorder
) -> None:
    @ext.job("greet", schema={"name": fields.String(required=True)})
    def greet(payload: dict[str, t.Any], ctx: JobContext) -> dict[str, str]:
        _record_run(rec, payload, ctx)
        return {"hello": payload["name"]}

    s = serve(ext)

    with s.app.app_context():
        result = greet.enqueue({"name": "Ada"}, tenant="acme")

    (run,) = rec.wait_count("run", 1)
    ctx = run.data["ctx"]
    assert run.data["payload"] == {"name": "Ada"}
    assert run.data["app"] is s.app
    assert run.data["current_tenant"] == "acme"
    assert ctx == JobContext(
        job="greet",
        tenant="acme",
        message_id=result.message_id,
        retried=0,
        schedule_id=None,
        enqueued_at=ctx.enqueued_at,
    )
    assert ctx.enqueued_at is not None
    assert result.tenant == "acme" and result.job == "greet"

    rec.wait_count("job-finished", 1)
    s.idle()
    assert len(rec.of("run")) == 1
    (delivery,) = rec.to("/qstash/acme/greet")
    assert delivery.status == 200
    assert delivery.headers["upstash-message-id"] == result.message_id
    s.check_signature(delivery)

    # Both checks that pass must also be able to fail.
    with pytest.raises(SignatureError):
        s.check_signature(delivery, body=delivery.body + b" ")

    with pytest.raises(qstash_sdk.errors.SignatureError):
        s.check_with_sdk(delivery, body=delivery.body + b" ")


def test_delay_postpones_the_run(ext: QStash, serve: Serve, rec: Recorder) -> None:
    @ext.job("later")
    def later(payload: t.Any, ctx: JobContext) -> None:
        _record_run(rec, payload, ctx)

    s = serve(ext)
    start = time.time()

    with s.app.app_context():
        later.enqueue({"n": 1}, delay=2)

    assert not rec.wait(lambda: bool(rec.of("run")), timeout=1.5)
    (run,) = rec.wait_count("run", 1, timeout=5)
    assert run.at - start >= 1.9


def test_not_before_postpones_the_run(ext: QStash, serve: Serve, rec: Recorder) -> None:
    @ext.job("at")
    def at(payload: t.Any, ctx: JobContext) -> None:
        _record_run(rec, payload, ctx)

    s = serve(ext)
    start = time.time()
    when = datetime.datetime.fromtimestamp(math.ceil(start) + 1, datetime.UTC)

    with s.app.app_context():
        at.enqueue(None, not_before=when.astimezone(datetime.timezone.max))

    (run,) = rec.wait_count("run", 1, timeout=5)
    assert run.at >= when.timestamp() - 0.05
    assert run.at - start >= 1.0 - 0.05


def test_failing_handler_is_retried_until_it_succeeds(
    ext: QStash, serve: Serve, rec: Recorder
) -> None:
    @ext.job("flaky")
    def flaky(payload: t.Any, ctx: JobContext) -> str:
        _record_run(rec, payload, ctx)

        if ctx.retried < 2:
            raise RuntimeError("not yet")

        return "ok"

    s = serve(ext)

    with s.app.app_context():
        result = flaky.enqueue({"n": 1}, tenant="globex", retries=3)

    runs = rec.wait_count("run", 3)
    rec.wait_count("job-finished", 1)
    s.idle()
    assert [r.data["ctx"].retried for r in rec.of("run")] == [0, 1, 2]
    assert {r.data["ctx"].message_id for r in runs} == {result.message_id}
    assert [d.status for d in rec.to("/qstash/globex/flaky")] == [500, 500, 200]
    assert len(rec.of("job-failed")) == 2
    assert all(e.data["retryable"] for e in rec.of("job-failed"))
    (finished,) = rec.of("job-finished")
    assert finished.data["result"] == "ok"
    assert rec.of("job-dead") == []

    for delivery in rec.to("/qstash/globex/flaky"):
        s.check_signature(delivery)

    message = s.client("globex").log.list(filter={"message_id": result.message_id})
    assert "DELIVERED" in {log.state.value for log in message.logs}


def test_retry_later_honours_retry_after(
    ext: QStash, serve: Serve, rec: Recorder
) -> None:
    # Retry-After is divided by the speed factor, as backoff is: 200 s -> 1 s,
    # while the first backoff step would be e^2.5 / 200 = 0.06 s.
    wait = int(SPEED)

    @ext.job("polite")
    def polite(payload: t.Any, ctx: JobContext) -> None:
        _record_run(rec, payload, ctx)

        if ctx.retried == 0:
            raise RetryLater(wait)

    s = serve(ext)

    with s.app.app_context():
        polite.enqueue(None, tenant="acme")

    first, second = rec.wait_count("run", 2, timeout=10)
    assert second.at - first.at >= wait / SPEED - 0.1
    assert second.data["ctx"].retried == 1
    deliveries = rec.to("/qstash/acme/polite")
    assert deliveries[0].status == 503
    assert [d.status for d in deliveries] == [503, 200]
    (failed,) = rec.of("job-failed")
    assert isinstance(failed.data["error"], RetryLater)


def test_non_retryable_error_goes_to_the_dead_letter_queue(
    ext: QStash, serve: Serve, rec: Recorder
) -> None:
    @ext.job("charge")
    def charge(payload: t.Any, ctx: JobContext) -> None:
        _record_run(rec, payload, ctx)
        raise NonRetryableError("card declined")

    @ext.on_failure
    def hook(dead: DeadJob) -> None:
        rec.add("hook", dead=dead, app=current_app._get_current_object())  # type: ignore[attr-defined]

    s = serve(ext)

    with s.app.app_context():
        result = charge.enqueue({"amount": 5}, tenant="acme", retries=3)

    (call,) = rec.wait_count("hook", 1)
    s.idle()
    dead: DeadJob = call.data["dead"]
    assert call.data["app"] is s.app
    assert (dead.job, dead.tenant, dead.payload) == ("charge", "acme", {"amount": 5})
    assert dead.status == 489
    assert dead.message_id == result.message_id
    assert dead.retried == 0
    assert dead.dlq_id

    assert len(rec.of("run")) == 1
    assert [d.status for d in rec.to("/qstash/acme/charge")] == [489]
    assert len(rec.of("hook")) == 1
    (signal,) = rec.of("job-dead")
    assert signal.data["dlq_id"] == dead.dlq_id

    (callback,) = rec.to("/qstash/acme/charge/failed")
    assert callback.status == 200
    s.check_signature(callback)

    with s.app.app_context():
        (entry,) = deadletter.list_dead(ext, "acme", "charge")
        assert deadletter.list_dead(ext, "globex") == []

    assert entry.dlq_id == dead.dlq_id
    assert entry.message_id == result.message_id
    assert entry.response_status == 489
    assert entry.payload == {"amount": 5}
    assert entry.problem is None
    sdk_entries = s.client().dlq.list().messages
    assert [m.dlq_id for m in sdk_entries] == [dead.dlq_id]
    assert sdk_entries[0].label == "acme.charge"


def test_exhausted_retries_go_to_the_dead_letter_queue(
    ext: QStash, serve: Serve, rec: Recorder
) -> None:
    @ext.job("doomed", retries=1)
    def doomed(payload: t.Any, ctx: JobContext) -> None:
        _record_run(rec, payload, ctx)
        raise RuntimeError("always")

    @ext.on_failure
    def hook(dead: DeadJob) -> None:
        rec.add("hook", dead=dead)

    s = serve(ext)

    with s.app.app_context():
        result = doomed.enqueue([1, 2], tenant="globex")

    (call,) = rec.wait_count("hook", 1)
    s.idle()
    dead: DeadJob = call.data["dead"]
    assert (dead.job, dead.tenant, dead.payload) == ("doomed", "globex", [1, 2])
    assert dead.status == 500
    assert dead.retried == 1
    assert dead.message_id == result.message_id
    assert [r.data["ctx"].retried for r in rec.of("run")] == [0, 1]
    assert len(rec.of("hook")) == 1
    assert len(rec.of("job-dead")) == 1

    with s.app.app_context():
        (entry,) = deadletter.list_dead(ext, "globex", "doomed")

    assert entry.dlq_id == dead.dlq_id
    assert entry.max_retries == 1


def test_schedule_runs_with_its_schedule_id(
    ext: QStash, serve: Serve, rec: Recorder
) -> None:
    @ext.job("tick")
    def tick(payload: t.Any, ctx: JobContext) -> None:
        _record_run(rec, payload, ctx)

    s = serve(ext)

    with s.app.app_context():
        schedule_id = tick.schedule("* * * * *", {"every": "minute"}, tenant="acme")
        paris = tick.schedule(
            "CRON_TZ=Europe/Paris 0 4 * * *", tenant="globex", schedule_id="nightly"
        )

    assert schedule_id == "acme.tick"
    assert paris == "globex.nightly"
    s.dev_server.trigger_schedule(schedule_id)
    run = rec.wait_count("run", 1)[0]
    assert run.data["ctx"].schedule_id == schedule_id
    assert run.data["ctx"].tenant == "acme"
    assert run.data["payload"] == {"every": "minute"}
    s.check_signature(rec.to("/qstash/acme/tick")[0])

    client = s.client()
    assert client.schedule.get(paris).cron == "CRON_TZ=Europe/Paris 0 4 * * *"
    assert client.schedule.get(schedule_id).cron == "* * * * *"
    destination = client.schedule.get(paris).destination
    assert destination == f"{s.public_url}/qstash/globex/tick"


def test_queue_runs_in_order_one_at_a_time(
    ext: QStash, serve: Serve, rec: Recorder
) -> None:
    started = threading.Event()

    @ext.job("serial_job", queue="serial")
    def serial_job(payload: dict[str, int], ctx: JobContext) -> None:
        rec.add("start", n=payload["n"])

        if payload["n"] == 0:
            # Hold the first run a while; a concurrent second run would end it.
            started.wait(0.5)
        else:
            started.set()

        rec.add("end", n=payload["n"])

    s = serve(ext)

    with s.app.app_context():
        serial_job.enqueue({"n": 0}, tenant="acme")
        serial_job.enqueue({"n": 1}, tenant="acme")

    rec.wait_count("end", 2)
    order = [(e.kind, e.data["n"]) for e in rec.events if e.kind in ("start", "end")]
    assert order == [("start", 0), ("end", 0), ("start", 1), ("end", 1)]

    logs = s.client().log.list(filter={"queue": "acme.serial"}).logs
    assert logs, "the runs went through the tenant's queue"


def test_enqueue_many_runs_each_payload_once(
    ext: QStash, serve: Serve, rec: Recorder
) -> None:
    @ext.job("bulk")
    def bulk(payload: dict[str, int], ctx: JobContext) -> None:
        _record_run(rec, payload, ctx)

    s = serve(ext)

    with s.app.app_context():
        results = bulk.enqueue_many([{"i": i} for i in range(50)], tenant="globex")

    assert len({r.message_id for r in results}) == 50
    rec.wait_count("run", 50, timeout=20)
    s.idle()
    runs = rec.of("run")
    assert sorted(r.data["payload"]["i"] for r in runs) == list(range(50))
    assert {r.data["ctx"].message_id for r in runs} == {r.message_id for r in results}


def test_each_tenant_sees_its_own_runs_and_labels(
    ext: QStash, serve: Serve, rec: Recorder
) -> None:
    @ext.job("report")
    def report(payload: dict[str, str], ctx: JobContext) -> None:
        _record_run(rec, payload, ctx)

    s = serve(ext)

    with s.app.app_context():
        ids = {
            tenant: report.enqueue({"for": tenant}, tenant=tenant).message_id
            for tenant in ("acme", "globex")
        }

    rec.wait_count("run", 2)
    s.idle()

    for run in rec.of("run"):
        ctx = run.data["ctx"]
        assert run.data["payload"] == {"for": ctx.tenant}
        assert run.data["current_tenant"] == ctx.tenant
        assert ids[ctx.tenant] == ctx.message_id

    client = s.client()

    for tenant, message_id in ids.items():
        logs = client.log.list(filter={"message_id": message_id}).logs
        assert logs
        assert {log.label for log in logs} == {f"{tenant}.report"}
        assert {log.url for log in logs} == {f"{s.public_url}/qstash/{tenant}/report"}


def test_replay_from_the_dead_letter_queue_runs_the_fixed_job(
    ext: QStash, serve: Serve, rec: Recorder
) -> None:
    broken = threading.Event()
    broken.set()

    @ext.job("import_data")
    def import_data(payload: t.Any, ctx: JobContext) -> str:
        _record_run(rec, payload, ctx)

        if broken.is_set():
            raise NonRetryableError("bad config")

        return "imported"

    s = serve(ext)

    with s.app.app_context():
        import_data.enqueue({"file": "a.csv"}, tenant="acme")

    rec.wait_count("job-dead", 1)
    s.idle()
    broken.clear()

    with s.app.app_context():
        (entry,) = deadletter.list_dead(ext, "acme")
        (outcome,) = deadletter.replay(ext, "acme", None)

    assert outcome.status == "replayed", outcome.reason
    assert outcome.dlq_id == entry.dlq_id
    finished = rec.wait_count("job-finished", 1)
    assert finished[0].data["result"] == "imported"
    assert finished[0].data["message_id"] == outcome.message_id
    runs = rec.of("run")
    assert [r.data["payload"] for r in runs] == [{"file": "a.csv"}] * 2

    with s.app.app_context():
        assert deadletter.list_dead(ext, "acme") == []


def test_second_app_joins_the_running_dev_server(serve: Serve, rec: Recorder) -> None:
    first = QStash()
    second = QStash()

    for ext in (first, second):

        @ext.job("ping")
        def ping(payload: t.Any, ctx: JobContext) -> None:
            _record_run(rec, payload, ctx)

    a = serve(first)
    url = a.dev_server.url
    assert os.environ[DEV_SERVER_ENV] == url

    b = serve(second)

    with b.app.app_context():
        assert second.dev_server is None
        assert second.settings.url == url
        assert second.default_tenant().url == url
        second.jobs["ping"].enqueue({"from": "b"}, tenant="globex")

    (run,) = rec.wait_count("run", 1)
    assert run.data["app"] is b.app
    assert run.data["payload"] == {"from": "b"}
    assert rec.to("/qstash/globex/ping")[0].status == 200
