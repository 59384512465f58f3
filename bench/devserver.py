"""Benchmark of the QStash dev server, on loopback only, in well under a minute.

Prints, from one run:

- messages accepted per second, one publish per request and in batches of 100;
- deliveries per second end to end, to a Flask app behind waitress running in a
  second process, with every delivery signed and verified;
- p50 and p99 lateness of delayed messages against their due time, at light
  load.

Run it with ``python bench/devserver.py``.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import typing as t

import httpx
import qstash

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from flask_qstash.devserver import DEFAULT_CURRENT_SIGNING_KEY  # noqa: E402
from flask_qstash.devserver import DEFAULT_NEXT_SIGNING_KEY  # noqa: E402
from flask_qstash.devserver import DevServer  # noqa: E402

SINGLE = 2000
BATCHES = 40
BATCH_SIZE = 100
END_TO_END = 5000
LATE_SECONDS = 8
LATE_PER_SECOND = 10


def serve_receiver(port: int) -> None:
    """Run the receiving Flask app under waitress (the second process)."""
    import waitress
    from flask import Flask
    from flask import jsonify
    from flask import request

    from flask_qstash.signing import verify

    app = Flask("bench-receiver")
    lock = threading.Lock()
    stats: dict[str, t.Any] = {"count": 0, "bad": 0, "late": []}
    keys = [DEFAULT_CURRENT_SIGNING_KEY, DEFAULT_NEXT_SIGNING_KEY]

    @app.post("/deliver/<kind>")
    def deliver(kind: str) -> tuple[str, int]:
        arrived = time.time()
        body = request.get_data()
        url = f"http://127.0.0.1:{port}/deliver/{kind}"

        try:
            verify(request.headers.get("Upstash-Signature"), body, url=url, keys=keys)
            ok = True
        except Exception:
            ok = False

        with lock:
            stats["count"] += 1
            stats["bad"] += not ok

            if kind == "late":
                stats["late"].append(arrived - json.loads(body)["due"])

        return "ok", 200

    @app.get("/stats")
    def get_stats() -> t.Any:
        with lock:
            return jsonify(stats)

    @app.post("/reset")
    def reset() -> str:
        with lock:
            stats.update(count=0, bad=0, late=[])

        return "ok"

    # Waitress warns about its task queue under load; that is the point here.
    logging.getLogger("waitress").setLevel(logging.ERROR)
    waitress.serve(  # type: ignore[no-untyped-call]
        app, host="127.0.0.1", port=port, threads=16, _quiet=True
    )


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait(predicate: t.Callable[[], bool], timeout: float) -> bool:
    pause = threading.Event()
    deadline = time.monotonic() + timeout

    while time.monotonic() < deadline:
        if predicate():
            return True

        pause.wait(0.05)

    return False


def main() -> int:
    logging.basicConfig(level=logging.WARNING)
    port = _free_port()
    receiver = subprocess.Popen(
        [sys.executable, __file__, "--receiver", str(port)],
        env={**os.environ, "PYTHONPATH": ROOT},
    )
    stats_url = f"http://127.0.0.1:{port}/stats"

    # One client for all polling: building one per call costs the dev server,
    # which shares this process, milliseconds of CPU each time.
    poller = httpx.Client(trust_env=False)

    def stats() -> dict[str, t.Any]:
        return t.cast(dict[str, t.Any], poller.get(stats_url).json())

    def receiver_up() -> bool:
        try:
            return poller.get(stats_url, timeout=0.5).is_success
        except httpx.HTTPError:
            return False

    try:
        if not _wait(receiver_up, 20):
            print("The receiver did not start.")
            return 1

        with tempfile.TemporaryDirectory() as tmp:
            server = DevServer(
                database=os.path.join(tmp, "bench.sqlite3"),
                workers=int(os.environ.get("BENCH_WORKERS", "16")),
            )

            with server:
                return _run(server, port, stats)
    finally:
        poller.close()
        receiver.terminate()
        receiver.wait(timeout=10)


def _run(server: DevServer, port: int, stats: t.Callable[[], dict[str, t.Any]]) -> int:
    sdk = qstash.QStash(server.token, base_url=server.url, retry=False)
    target = f"http://127.0.0.1:{port}/deliver/"

    # Accepted per second, one message per request, from 4 client threads. The
    # long delay keeps deliveries out of the measurement.
    def publish_some(count: int) -> None:
        own = qstash.QStash(server.token, base_url=server.url, retry=False)

        for _ in range(count):
            own.message.publish(url=target + "accept", body="x", delay="1h")

    start = time.perf_counter()

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        list(pool.map(publish_some, [SINGLE // 4] * 4))

    single_rate = SINGLE / (time.perf_counter() - start)

    start = time.perf_counter()

    for _ in range(BATCHES):
        sdk.message.batch(
            [
                {"url": target + "accept", "body": "x", "delay": "1h"}
                for _ in range(BATCH_SIZE)
            ]
        )

    batch_rate = BATCHES * BATCH_SIZE / (time.perf_counter() - start)
    sdk.message.cancel_all()

    # End to end: every message due at once, counted when the app has it.
    start = time.perf_counter()

    for offset in range(0, END_TO_END, BATCH_SIZE):
        sdk.message.batch(
            [
                {"url": target + "e2e", "body": json.dumps({"n": offset + n})}
                for n in range(BATCH_SIZE)
            ]
        )

    done = _wait(lambda: stats()["count"] >= END_TO_END, 40)
    e2e_elapsed = time.perf_counter() - start
    e2e = stats()
    server.wait_idle(10)

    # Lateness at light load: a few messages due at each whole second.
    httpx.post(f"http://127.0.0.1:{port}/reset", trust_env=False)
    first = int(time.time()) + 2

    for second in range(LATE_SECONDS):
        due = first + second

        for _ in range(LATE_PER_SECOND):
            sdk.message.publish(
                url=target + "late",
                body=json.dumps({"due": due}),
                not_before=due,
            )

    total = LATE_SECONDS * LATE_PER_SECOND
    _wait(lambda: stats()["count"] >= total, LATE_SECONDS + 10)
    late = sorted(stats()["late"])
    p50 = statistics.median(late) * 1000 if late else float("nan")
    p99 = late[min(len(late) - 1, int(len(late) * 0.99))] * 1000 if late else 0.0

    print(f"accepted, single publish:  {single_rate:8.0f} messages/s")
    print(f"accepted, batches of {BATCH_SIZE}:  {batch_rate:8.0f} messages/s")
    print(
        f"delivered end to end:      {e2e['count'] / e2e_elapsed:8.0f} deliveries/s"
        f" ({e2e['count']} in {e2e_elapsed:.1f} s, {e2e['bad']} failed"
        f" verification{'' if done else ', INCOMPLETE'})"
    )
    print(
        f"lateness of delayed messages: p50 {p50:.1f} ms, p99 {p99:.1f} ms"
        f" ({len(late)} of {total})"
    )
    return 0 if done and not e2e["bad"] and len(late) == total else 1


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--receiver":
        serve_receiver(int(sys.argv[2]))
        raise SystemExit(0)

    raise SystemExit(main())
