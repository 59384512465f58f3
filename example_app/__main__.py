"""Run the example end to end: ``python -m example_app`` (``make run``).

Starts the app behind a real WSGI server on a free loopback port with the
embedded QStash dev server, signs two tenants' users up over HTTP, sends one
invoice that can never succeed, and waits until every job ran (or was
dead-lettered) for the right tenant. Exits 0 when everything happened as it
should. ``python -m example_app serve`` keeps the app running for a browser.
"""

from __future__ import annotations

import logging
import socket
import sys
import threading
import typing as t

import httpx
from werkzeug.serving import make_server

from . import activity
from . import create_app


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _check(label: str, ok: bool) -> bool:
    print(f"  [{'ok' if ok else 'FAILED'}] {label}")
    return ok


def run_demo(base: str) -> bool:
    """Drive the running app at ``base`` and check what the jobs did."""
    results: list[bool] = []

    with httpx.Client(base_url=base, timeout=10) as http:
        for tenant, email in [
            ("acme", "ada@acme.test"),
            ("globex", "grace@globex.test"),
        ]:
            rv = http.post(
                "/signup",
                json={"email": email, "name": email.split("@")[0]},
                headers={"X-Tenant-ID": tenant},
            )
            print(f"POST /signup as {tenant}: {rv.status_code} {rv.json()}")
            results.append(_check(f"{tenant} signup accepted", rv.status_code == 202))

        rv = http.post(
            "/signup", json={"email": "not-an-email"}, headers={"X-Tenant-ID": "acme"}
        )
        print(f"POST /signup with bad input: {rv.status_code} {rv.json()}")
        results.append(
            _check("bad input refused before publishing", rv.status_code == 400)
        )

        rv = http.post(
            "/signup",
            json={"email": "x@y.test", "name": "x"},
            headers={"X-Tenant-ID": "initech"},
        )
        print(f"POST /signup as unknown tenant: {rv.status_code} {rv.json()}")
        results.append(_check("unknown tenant refused", rv.status_code == 404))

        for amount in (1250, 0):
            rv = http.post(
                "/invoices",
                json={"amount_cents": amount, "email": "ada@acme.test"},
                headers={"X-Tenant-ID": "acme"},
            )
            print(f"POST /invoices amount={amount}: {rv.status_code} {rv.json()}")

    def done(events: list[dict[str, t.Any]]) -> bool:
        emails = [e for e in events if e["job"] == "welcome-email"]
        billed = [e for e in events if e["job"] == "invoice" and not e.get("dead")]
        dead = [e for e in events if e.get("dead")]
        return len(emails) >= 2 and len(billed) >= 1 and len(dead) >= 1

    finished = activity.wait_for(done, timeout=30)
    results.append(_check("every job ran or was dead-lettered within 30 s", finished))
    print("\nWhat ran:")

    for event in activity.events:
        detail = (
            "dead-lettered"
            if event.get("dead")
            else event.get("email", event.get("amount", ""))
        )
        tenant, job, message = event["tenant"], event["job"], event["message_id"]
        print(f"  {tenant:<8} {job:<14} {message:<40} {detail}")

    by_email = {
        e.get("email"): e["tenant"]
        for e in activity.events
        if e["job"] == "welcome-email"
    }
    results.append(
        _check(
            "each tenant's job ran as that tenant",
            by_email.get("ada@acme.test") == "acme"
            and by_email.get("grace@globex.test") == "globex",
        )
    )
    runs = [e["message_id"] for e in activity.events if not e.get("dead")]
    results.append(_check("no job ran twice", len(runs) == len(set(runs))))
    return all(results)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(levelname)-7s %(name)s: %(message)s"
    )
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    args = sys.argv[1:] if argv is None else argv
    serve = bool(args) and args[0] == "serve"
    port = _free_port() if not serve else 5000
    base = f"http://127.0.0.1:{port}"
    app = create_app(
        {
            "QSTASH_PUBLIC_URL": base,
            "QSTASH_DEV_SERVER_DATABASE": None if serve else ":memory:",
        }
    )
    server = make_server("127.0.0.1", port, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()

    with app.app_context():
        dev = app.extensions["qstash"].settings.url

    print(f"Example app on {base}, QStash dev server on {dev}")

    try:
        if serve:
            print("Open the dashboard at " + base + "/ ; Ctrl-C stops.")
            thread.join()
            return 0

        ok = run_demo(base)
        print("\nThe example ran end to end." if ok else "\nThe example FAILED.")
        return 0 if ok else 1
    finally:
        server.shutdown()

        with app.app_context():
            dev_server = app.extensions["qstash"].dev_server

        if dev_server is not None:
            dev_server.stop()


if __name__ == "__main__":
    raise SystemExit(main())
