"""Signed deliveries per second through Flask-QStash, against a bare Flask route.

Run ``python bench/webhook.py``. One run measures every side with the same
requests, the same JSON body and the same headers:

``qstash``
    A Flask app with the :class:`~flask_qstash.QStash` extension (token, signing
    keys and ``QSTASH_PUBLIC_URL`` set, the memory idempotency store) and one job
    with a small marshmallow schema, called through the app's WSGI callable as
    a server would call it, so its ``DeliveryMiddleware`` answers. Every
    delivery carries a fresh ``Upstash-Signature`` token from
    :func:`flask_qstash.signing.sign` and a unique ``Upstash-Message-Id``, so
    each one is verified, parsed, validated, claimed, run and completed: the
    whole delivery path.

``bare``
    A Flask route at the same path that only does
    ``json.loads(request.get_data())`` and returns a small JSON object.

``view`` (in-process only, for information)
    The ``qstash`` app called past its middleware, so Flask dispatches the
    delivery to the job's route: the path a request takes when it reaches the
    view by another way. Same checks, plus Flask's request dispatch.

``checked`` (in-process only, for information)
    What a hand-written webhook route does at least: check the signature
    with :func:`flask_qstash.signing.verify` and load the payload with the
    same schema, with no idempotency, envelope or signals.

``qstash`` and ``bare`` are measured twice:

- **in-process**: the WSGI app is called directly with environs pre-built by
  :class:`werkzeug.test.EnvironBuilder`, so no client cost dilutes the ratio;
- **waitress**: each app is served by waitress on 127.0.0.1 in its own process
  and driven by two threads, each with a keep-alive :class:`httpx.Client`.

Tokens live 300 s, so they are signed just before each round and signing is not
timed. The sides alternate in rounds (A B, B A, ...) so machine noise hits all
alike; each side's rate is the median of its rounds.

Target: the ``qstash`` side reaches at least 0.7 of the ``bare`` side's rate
in-process. The other ratios are printed for information: over waitress,
client and server overhead is shared by both sides.
"""

from __future__ import annotations

import functools
import json
import multiprocessing
import statistics
import threading
import time
import typing as t
import uuid
from dataclasses import dataclass

import httpx
from flask import Flask
from flask import request
from marshmallow import fields
from marshmallow import Schema
from werkzeug.test import EnvironBuilder

from flask_qstash import QStash
from flask_qstash.jobs import ENVELOPE_VERSION
from flask_qstash.signing import sign
from flask_qstash.signing import verify

if t.TYPE_CHECKING:  # pragma: no cover
    from multiprocessing.connection import Connection

    from _typeshed.wsgi import WSGIApplication
    from _typeshed.wsgi import WSGIEnvironment

TOKEN = "bench-token"
CURRENT_KEY = "sig_bench_current_0123456789abcdef"
NEXT_KEY = "sig_bench_next_0123456789abcdefgh"
PUBLIC_URL = "https://bench.example"
TENANT = "default"
JOB = "signup"
PATH = f"/qstash/{TENANT}/{JOB}"
URL = PUBLIC_URL + PATH

#: Rounds per side; each round runs both sides once.
ROUNDS = 5

#: Requests per side and round, in-process and through waitress.
INPROCESS_REQUESTS = 2000
SERVER_REQUESTS = 800

#: Threads driving waitress, each with its own keep-alive client.
DRIVER_THREADS = 2

#: The in-process ratio the ``qstash`` side must reach.
TARGET = 0.7

#: The job's payload schema, shared by the ``qstash`` and ``checked`` sides.
SCHEMA: dict[str, fields.Field[t.Any]] = {
    "user_id": fields.Integer(required=True),
    "email": fields.Email(required=True),
    "plan": fields.String(),
}

BODY = json.dumps(
    {
        "v": ENVELOPE_VERSION,
        "job": JOB,
        "tenant": TENANT,
        "payload": {"user_id": 42, "email": "ada@example.com", "plan": "pro"},
        "enqueued_at": int(time.time() * 1000),
    },
    separators=(",", ":"),
).encode()


def make_qstash_app() -> Flask:
    """Return the app whose deliveries go through the extension."""
    app = Flask("bench_qstash")
    app.config.update(
        QSTASH_TOKEN=TOKEN,
        QSTASH_CURRENT_SIGNING_KEY=CURRENT_KEY,
        QSTASH_NEXT_SIGNING_KEY=NEXT_KEY,
        QSTASH_PUBLIC_URL=PUBLIC_URL,
        QSTASH_IDEMPOTENCY_STORE="memory",
        QSTASH_DEV_SERVER=False,
    )
    qstash = QStash(app)

    @qstash.job(JOB, schema=SCHEMA)
    def signup(payload: dict[str, t.Any]) -> dict[str, t.Any]:
        return {"welcomed": payload["user_id"]}

    return app


def make_bare_app() -> Flask:
    """Return the app whose route only parses the JSON body."""
    app = Flask("bench_bare")

    @app.post(PATH)
    def receive() -> dict[str, t.Any]:
        data = json.loads(request.get_data())
        return {"status": "done", "result": {"welcomed": data["payload"]["user_id"]}}

    return app


def make_checked_app() -> Flask:
    """Return a route that verifies and validates by hand, without the extension."""
    app = Flask("bench_checked")
    schema = Schema.from_dict(SCHEMA)()

    @app.post(PATH)
    def receive() -> dict[str, t.Any]:
        body = request.get_data()
        verify(
            request.headers.get("Upstash-Signature"),
            body,
            url=URL,
            keys=[CURRENT_KEY, NEXT_KEY],
        )
        payload = schema.load(json.loads(body)["payload"])
        return {"status": "done", "result": {"welcomed": payload["user_id"]}}

    return app


def make_headers(count: int, tag: str) -> list[dict[str, str]]:
    """Sign ``count`` deliveries of :data:`BODY`, each with a fresh message id."""
    run = uuid.uuid4().hex[:8]
    return [
        {
            "Content-Type": "application/json",
            "Upstash-Signature": sign(BODY, url=URL, key=CURRENT_KEY),
            "Upstash-Message-Id": f"msg_{run}_{tag}_{i}",
            "Upstash-Retried": "0",
        }
        for i in range(count)
    ]


def make_environs(headers: list[dict[str, str]]) -> list[WSGIEnvironment]:
    """Build one WSGI environ per delivery, before any timing starts."""
    rv = []

    for h in headers:
        builder = EnvironBuilder(
            path=PATH, method="POST", data=BODY, headers=list(h.items())
        )
        rv.append(builder.get_environ())
        builder.close()

    return rv


class _StartResponse:
    """A WSGI ``start_response`` that counts answers other than 200."""

    def __init__(self) -> None:
        self.failures = 0
        self.last_status = ""

    def __call__(
        self, status: str, headers: list[tuple[str, str]], exc_info: t.Any = None
    ) -> t.Callable[[bytes], object]:
        if not status.startswith("200"):
            self.failures += 1
            self.last_status = status

        return self._write

    def _write(self, data: bytes) -> None:
        pass


def time_wsgi(app: WSGIApplication, environs: list[WSGIEnvironment]) -> float:
    """Call ``app`` once per environ, as a WSGI server would; return seconds."""
    start_response = _StartResponse()
    started = time.perf_counter()

    for environ in environs:
        rv = app(environ, start_response)

        try:
            for _ in rv:
                pass
        finally:
            close = getattr(rv, "close", None)

            if close is not None:
                close()

    elapsed = time.perf_counter() - started

    if start_response.failures:
        raise RuntimeError(
            f"{start_response.failures} in-process deliveries failed, the last with"
            f" {start_response.last_status!r}. Fix the bench setup."
        )

    return elapsed


def time_http(clients: list[httpx.Client], headers: list[dict[str, str]]) -> float:
    """Send the deliveries over the keep-alive ``clients``; return wall seconds."""
    failures: list[int] = []
    shares = [headers[i :: len(clients)] for i in range(len(clients))]

    def drive(client: httpx.Client, share: list[dict[str, str]]) -> None:
        for h in share:
            response = client.post(PATH, content=BODY, headers=h)

            if response.status_code != 200:
                failures.append(response.status_code)

    threads = [
        threading.Thread(target=drive, args=(client, share))
        for client, share in zip(clients, shares, strict=True)
    ]
    started = time.perf_counter()

    for thread in threads:
        thread.start()

    for thread in threads:
        thread.join()

    elapsed = time.perf_counter() - started

    if failures:
        raise RuntimeError(
            f"{len(failures)} deliveries over HTTP failed, the first with status"
            f" {failures[0]}. Fix the bench setup."
        )

    return elapsed


def serve(variant: str, conn: Connection) -> None:
    """Serve one variant with waitress on a free loopback port, until killed."""
    from waitress.server import create_server

    app = make_qstash_app() if variant == "qstash" else make_bare_app()
    # waitress ships no type hints.
    server = create_server(  # type: ignore[no-untyped-call]
        app, host="127.0.0.1", port=0, threads=4
    )
    conn.send(server.effective_port)
    conn.close()
    server.run()


@dataclass
class Side:
    """The timings of one variant across rounds."""

    name: str
    requests: int
    seconds: list[float]

    @property
    def rate(self) -> float:
        """The median of the per-round rates, in requests per second."""
        return statistics.median(self.requests / s for s in self.seconds)


def run_rounds(
    name: str,
    requests: int,
    measure: t.Callable[[str, list[dict[str, str]]], float],
    variants: tuple[str, ...] = ("qstash", "bare"),
) -> dict[str, Side]:
    """Run :data:`ROUNDS` rounds of every variant, rotating which goes first."""
    sides = {v: Side(f"{v} {name}", requests, []) for v in variants}

    # One untimed warm-up each, so first-request set-up is not measured.
    for variant in sides:
        measure(variant, make_headers(min(requests, 200), f"warm-{variant}"))

    for r in range(ROUNDS):
        shift = r % len(variants)
        order = variants[shift:] + variants[:shift]

        for variant in order:
            headers = make_headers(requests, f"{name}-{r}-{variant}")
            sides[variant].seconds.append(measure(variant, headers))

    return sides


def bench_in_process() -> dict[str, Side]:
    """Measure the apps called directly through WSGI."""
    apps: dict[str, WSGIApplication] = {
        "qstash": make_qstash_app(),
        "bare": make_bare_app(),
        "view": functools.partial(Flask.wsgi_app, make_qstash_app()),
        "checked": make_checked_app(),
    }

    def measure(variant: str, headers: list[dict[str, str]]) -> float:
        return time_wsgi(apps[variant], make_environs(headers))

    return run_rounds(
        "in-process",
        INPROCESS_REQUESTS,
        measure,
        ("qstash", "bare", "view", "checked"),
    )


def bench_waitress() -> dict[str, Side]:
    """Measure both apps behind waitress, each in a process of its own."""
    context = multiprocessing.get_context("spawn")
    processes = []
    origins: dict[str, str] = {}

    try:
        for variant in ("qstash", "bare"):
            parent, child = context.Pipe(duplex=False)
            process = context.Process(target=serve, args=(variant, child), daemon=True)
            process.start()
            processes.append(process)
            child.close()

            if not parent.poll(30):
                raise RuntimeError(f"The {variant} server did not start in 30 s.")

            origins[variant] = f"http://127.0.0.1:{parent.recv()}"

        clients = {
            variant: [httpx.Client(base_url=origin) for _ in range(DRIVER_THREADS)]
            for variant, origin in origins.items()
        }

        def measure(variant: str, headers: list[dict[str, str]]) -> float:
            return time_http(clients[variant], headers)

        try:
            return run_rounds("waitress", SERVER_REQUESTS, measure)
        finally:
            for pool in clients.values():
                for client in pool:
                    client.close()
    finally:
        for process in processes:
            process.terminate()
            process.join(5)


def report(title: str, sides: dict[str, Side], target: float | None) -> None:
    """Print one comparison as a table and its ratio lines."""
    print(f"\n{title}")
    print(f"{'variant':<22}{'requests':>10}{'seconds':>10}{'req/s':>10}")

    for side in sides.values():
        total = side.requests * len(side.seconds)
        print(f"{side.name:<22}{total:>10}{sum(side.seconds):>10.2f}{side.rate:>10.0f}")

    ratio = sides["qstash"].rate / sides["bare"].rate

    if target is None:
        verdict = "(no target; client and server cost are shared)"
    else:
        verdict = f"target >= {target:.2f}: {'PASS' if ratio >= target else 'BELOW'}"

    print(f"ratio qstash/bare: {ratio:.2f}  {verdict}")

    for other in ("view", "checked"):
        if other in sides:
            ratio = sides[other].rate / sides["bare"].rate
            print(f"ratio {other}/bare: {ratio:.2f}  (information)")


def main() -> None:
    """Run both comparisons and print them."""
    print(
        f"Signed deliveries vs bare JSON route: {ROUNDS} alternating rounds per"
        " side, median req/s per side"
    )
    started = time.perf_counter()
    in_process = bench_in_process()
    report(
        f"in-process WSGI calls ({INPROCESS_REQUESTS} per round)", in_process, TARGET
    )
    served = bench_waitress()
    report(
        f"waitress on 127.0.0.1, {DRIVER_THREADS} httpx keep-alive threads"
        f" ({SERVER_REQUESTS} per round)",
        served,
        None,
    )
    print(f"\ntotal {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
