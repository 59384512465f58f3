"""Enqueue throughput of Flask-QStash against the ``qstash`` SDK, on loopback.

Run ``python bench/enqueue.py``. A minimal QStash stand-in runs in a thread on
127.0.0.1 (HTTP/1.1 keep-alive, one write per answer). It answers
``POST /v2/publish/...`` with ``{"messageId": "msg_<n>", "deduplicated": false}``
and ``POST /v2/batch`` with one such object per item of the request array. It
checks nothing, so the client side dominates what is measured.

Two comparisons, each run in alternating rounds (A B, B A, ...) so machine
noise hits both sides alike; each side's rate is the median of its rounds:

**per job**
    :meth:`Job.enqueue <flask_qstash.Job.enqueue>` inside ``app.app_context()``
    (schema check, envelope, deduplication id, label, failure callback, signal)
    against the SDK's ``message.publish_json`` on one reused
    ``qstash.QStash(token, base_url=origin)`` client, given the same URL,
    payload, label, failure callback and a fresh deduplication id.
    Target: the extension reaches at least 0.9 of the SDK's rate.

**batch**
    :meth:`Job.enqueue_many <flask_qstash.Job.enqueue_many>` of 1,000 jobs, one
    batch request, against a loop of 1,000 :meth:`Job.enqueue` calls.
    Target: the batch is at least 10 times faster.
"""

from __future__ import annotations

import itertools
import json
import socket
import statistics
import threading
import time
import typing as t
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from http.server import ThreadingHTTPServer

from flask import Flask
from marshmallow import fields
from qstash import QStash as QStashClient

from flask_qstash import QStash

if t.TYPE_CHECKING:  # pragma: no cover
    from flask_qstash import Job

TOKEN = "bench-token"
CURRENT_KEY = "sig_bench_current_0123456789abcdef"
NEXT_KEY = "sig_bench_next_0123456789abcdefgh"
PUBLIC_URL = "https://bench.example"
JOB = "signup"
URL = f"{PUBLIC_URL}/qstash/default/{JOB}"

#: Rounds per side in the per-job comparison, and jobs per side and round. Many
#: short rounds spread the noise of a shared machine evenly over both sides.
SINGLE_ROUNDS = 10
SINGLE_JOBS = 300

#: Rounds per side in the batch comparison.
BATCH_ROUNDS = 5

#: Jobs in one batch, and in the per-job loop it is compared with.
BATCH_JOBS = 1000

#: The per-job rate the extension must reach, as a share of the SDK's.
SINGLE_TARGET = 0.9

#: How many times faster one batch must be than the per-job loop.
BATCH_TARGET = 10.0

_message_ids = itertools.count(1)


class _Handler(BaseHTTPRequestHandler):
    """Answers publish and batch requests the way QStash does, and nothing else."""

    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))

        if self.path.startswith("/v2/publish/"):
            self._answer(200, _published())
        elif self.path == "/v2/batch":
            self._answer(200, [_published() for _ in json.loads(body)])
        else:
            self._answer(404, {"error": "not found"})

    def _answer(self, status: int, data: t.Any) -> None:
        payload = json.dumps(data, separators=(",", ":")).encode()
        reason = self.responses[status][0]

        # Head and body in one write, so no small packet waits for an ACK.
        self.wfile.write(
            f"HTTP/1.1 {status} {reason}\r\n"
            "Content-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\n\r\n".encode()
            + payload
        )

    def log_message(self, format: str, *args: t.Any) -> None:
        pass


def _published() -> dict[str, t.Any]:
    return {"messageId": f"msg_{next(_message_ids)}", "deduplicated": False}


def start_stand_in() -> ThreadingHTTPServer:
    """Serve the stand-in on a free loopback port from a daemon thread."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def make_app(origin: str) -> tuple[Flask, Job]:
    """Return an app publishing to ``origin``, and its one job."""
    app = Flask("bench_enqueue")
    app.config.update(
        QSTASH_TOKEN=TOKEN,
        QSTASH_CURRENT_SIGNING_KEY=CURRENT_KEY,
        QSTASH_NEXT_SIGNING_KEY=NEXT_KEY,
        QSTASH_URL=origin,
        QSTASH_PUBLIC_URL=PUBLIC_URL,
        QSTASH_DEV_SERVER=False,
    )
    qstash = QStash(app)

    @qstash.job(
        JOB,
        schema={
            "user_id": fields.Integer(required=True),
            "email": fields.Email(required=True),
            "plan": fields.String(),
        },
    )
    def signup(payload: dict[str, t.Any]) -> None:
        pass

    return app, signup


def payloads(count: int) -> list[dict[str, t.Any]]:
    """Return ``count`` small payloads that pass the job's schema."""
    return [
        {"user_id": i, "email": "ada@example.com", "plan": "pro"} for i in range(count)
    ]


def time_enqueue(job: Job, items: list[dict[str, t.Any]]) -> float:
    """Enqueue each payload on its own; return seconds."""
    started = time.perf_counter()

    for payload in items:
        job.enqueue(payload)

    return time.perf_counter() - started


def time_enqueue_many(job: Job, items: list[dict[str, t.Any]]) -> float:
    """Enqueue every payload in one batch; return seconds."""
    started = time.perf_counter()
    results = job.enqueue_many(items)
    elapsed = time.perf_counter() - started

    if len(results) != len(items) or not all(r.message_id for r in results):
        raise RuntimeError("The batch did not return one message id per job.")

    return elapsed


def time_publish_json(client: QStashClient, items: list[dict[str, t.Any]]) -> float:
    """Publish each payload with the SDK, as a hand-written enqueue would."""
    started = time.perf_counter()

    for payload in items:
        client.message.publish_json(
            url=URL,
            body=payload,
            deduplication_id=f"default.{JOB}.{uuid.uuid4().hex}",
            label=f"default.{JOB}",
            failure_callback=f"{URL}/failed",
        )

    return time.perf_counter() - started


@dataclass
class Side:
    """The timings of one variant across rounds."""

    name: str
    jobs: int
    seconds: list[float]

    @property
    def rate(self) -> float:
        """The median of the per-round rates, in jobs per second."""
        return statistics.median(self.jobs / s for s in self.seconds)


def alternate(
    rounds: int,
    a: Side,
    run_a: t.Callable[[], float],
    b: Side,
    run_b: t.Callable[[], float],
) -> None:
    """Warm both sides up once, then run ``rounds`` alternating rounds."""
    run_a()
    run_b()

    for r in range(rounds):
        if r % 2 == 0:
            a.seconds.append(run_a())
            b.seconds.append(run_b())
        else:
            b.seconds.append(run_b())
            a.seconds.append(run_a())


def report(title: str, a: Side, b: Side, what: str, target: float) -> None:
    """Print one comparison as a table and a ratio line."""
    print(f"\n{title}")
    print(f"{'variant':<30}{'jobs':>8}{'seconds':>10}{'jobs/s':>10}")

    for side in (a, b):
        total = side.jobs * len(side.seconds)
        print(f"{side.name:<30}{total:>8}{sum(side.seconds):>10.2f}{side.rate:>10.0f}")

    ratio = a.rate / b.rate
    verdict = "PASS" if ratio >= target else "BELOW"
    print(f"{what}: {ratio:.2f}  target >= {target:g}: {verdict}")


def main() -> None:
    """Run both comparisons against one stand-in and print them."""
    started = time.perf_counter()
    server = start_stand_in()
    origin = f"http://127.0.0.1:{server.server_address[1]}"
    app, job = make_app(origin)
    client = QStashClient(TOKEN, base_url=origin)
    print(
        f"Enqueue against a loopback QStash stand-in at {origin}: alternating"
        " rounds, median jobs/s per side"
    )

    try:
        with app.app_context():
            single = payloads(SINGLE_JOBS)
            enqueue = Side("Job.enqueue", SINGLE_JOBS, [])
            publish = Side("SDK publish_json (reused)", SINGLE_JOBS, [])
            alternate(
                SINGLE_ROUNDS,
                enqueue,
                lambda: time_enqueue(job, single),
                publish,
                lambda: time_publish_json(client, single),
            )
            report(
                f"per job ({SINGLE_ROUNDS} rounds of {SINGLE_JOBS} per side)",
                enqueue,
                publish,
                "ratio enqueue/publish_json",
                SINGLE_TARGET,
            )

            batch = payloads(BATCH_JOBS)
            many = Side(f"Job.enqueue_many({BATCH_JOBS})", BATCH_JOBS, [])
            loop = Side(f"{BATCH_JOBS} x Job.enqueue", BATCH_JOBS, [])
            alternate(
                BATCH_ROUNDS,
                many,
                lambda: time_enqueue_many(job, batch),
                loop,
                lambda: time_enqueue(job, batch),
            )
            report(
                f"batch ({BATCH_ROUNDS} rounds of {BATCH_JOBS} jobs per side)",
                many,
                loop,
                "speed-up enqueue_many/loop",
                BATCH_TARGET,
            )
    finally:
        client.http._client.close()
        server.shutdown()
        server.server_close()

    print(f"\ntotal {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
