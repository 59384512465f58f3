"""Dead-letter operations per tenant and job, and ``flask qstash dlq``.

The real SDK client talks to :class:`FakeQStash`, a small stand-in for the
QStash DLQ and publish endpoints served on a free loopback port, so the SDK's
own request and response handling is exercised too.
"""

from __future__ import annotations

import base64
import itertools
import json
import logging
import threading
import typing as t
import uuid
from dataclasses import dataclass
from dataclasses import field

import pytest
from flask import Flask
from flask import jsonify
from flask import request
from flask import Response
from marshmallow import fields
from werkzeug.serving import make_server
from werkzeug.serving import WSGIRequestHandler

from flask_qstash import deadletter
from flask_qstash import QStash
from flask_qstash import UnknownTenantError
from flask_qstash.deadletter import DeadLetterNotFoundError

# PyJWT warns about HMAC keys shorter than 32 bytes, and warnings are errors.
TOKEN = "qstash_default_token_dlq_7Hc2Lx9QeV4mWp8Rt6Yz"
CURRENT_KEY = "sig_default_current_dlq_3mJ8kYjw48mhY7kAjqNG"
NEXT_KEY = "sig_default_next_dlq_5ZB6DVzB1wjE8S6rZ7eenA8P"
GLOBEX_TOKEN = "qstash_globex_token_dlq_Wq2Lk8Xr4Tn6Yp1Zs9Vb"
GLOBEX_CURRENT_KEY = "sig_globex_current_dlq_Q7vN2pX9kL4mR8tY3wZ6"
GLOBEX_NEXT_KEY = "sig_globex_next_dlq_H5jK8sD2fG6hJ9kL3zX7cV4"
SECRETS = (
    TOKEN,
    CURRENT_KEY,
    NEXT_KEY,
    GLOBEX_TOKEN,
    GLOBEX_CURRENT_KEY,
    GLOBEX_NEXT_KEY,
)
PUBLIC_URL = "https://app.example.com"


@dataclass
class Publish:
    """One publish request the fake received."""

    token: str
    destination: str
    headers: dict[str, str]
    body: bytes

    @property
    def envelope(self) -> dict[str, t.Any]:
        rv: dict[str, t.Any] = json.loads(self.body)
        return rv


@dataclass
class FakeQStash:
    """The DLQ and publish endpoints of QStash, one DLQ per account token."""

    #: Dead-letter entries by account token, in list order.
    dlq: dict[str, list[dict[str, t.Any]]] = field(
        default_factory=lambda: {TOKEN: [], GLOBEX_TOKEN: []}
    )

    #: Every publish, in order.
    publishes: list[Publish] = field(default_factory=list)

    #: Every ``GET /v2/dlq`` query, in order.
    queries: list[dict[str, str]] = field(default_factory=list)

    #: The most entries one page holds, whatever ``count`` asks for.
    page_size: int = 100

    origin: str = ""
    _ids: itertools.count[int] = field(default_factory=itertools.count)
    _dedup: dict[str, str] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(
        self,
        label: str | None,
        payload: t.Any = None,
        *,
        token: str = TOKEN,
        body: str | None = None,
        response_body: str = "boom",
        response_base64: bytes | None = None,
    ) -> str:
        """Add a dead letter as the extension would have published it."""
        tenant, _, job = (label or "x.y").partition(".")
        dlq_id = f"1725323658779-{next(self._ids)}"
        entry: dict[str, t.Any] = {
            "dlqId": dlq_id,
            "messageId": f"msg_{uuid.uuid4().hex}",
            "url": f"{PUBLIC_URL}/qstash/{tenant}/{job}",
            "method": "POST",
            "maxRetries": 3,
            "notBefore": 0,
            "createdAt": 1_700_000_000_000,
            "responseStatus": 500,
            "body": body
            if body is not None
            else json.dumps(
                {
                    "v": 1,
                    "job": job,
                    "tenant": tenant,
                    "payload": payload,
                    "enqueued_at": 1_700_000_000_000,
                }
            ),
        }

        if response_base64 is not None:
            entry["responseBodyBase64"] = base64.b64encode(response_base64).decode()
        else:
            entry["responseBody"] = response_body

        if label is not None:
            entry["label"] = label

        self.dlq[token].append(entry)
        return dlq_id

    def ids(self, token: str = TOKEN) -> list[str]:
        """The ids still in the account's DLQ."""
        return [e["dlqId"] for e in self.dlq[token]]

    def wsgi(self) -> Flask:
        app = Flask("fake_qstash")

        @app.before_request
        def auth() -> Response | None:
            token = request.headers.get("Authorization", "").removeprefix("Bearer ")

            if token not in self.dlq:
                return Response('{"error":"unauthorized"}', 401)

            return None

        @app.get("/v2/dlq")
        def list_dlq() -> Response:
            self.queries.append(dict(request.args))
            entries = self._entries()
            label = request.args.get("label")

            if label is not None:
                entries = [e for e in entries if e.get("label") == label]

            start = int(request.args.get("cursor") or 0)
            count = min(int(request.args.get("count") or 100), self.page_size)
            page = entries[start : start + count]
            rv: dict[str, t.Any] = {"messages": page}

            if start + count < len(entries):
                rv["cursor"] = str(start + count)

            return jsonify(rv)

        @app.get("/v2/dlq/<dlq_id>")
        def get_dlq(dlq_id: str) -> Response:
            for entry in self._entries():
                if entry["dlqId"] == dlq_id:
                    return jsonify(entry)

            return Response('{"error":"not found"}', 404)

        @app.delete("/v2/dlq/<dlq_id>")
        def delete_dlq(dlq_id: str) -> Response:
            return jsonify({}) if self._delete([dlq_id]) else Response("{}", 404)

        @app.delete("/v2/dlq")
        def delete_many() -> Response:
            ids = t.cast("dict[str, list[str]]", request.get_json())["dlqIds"]
            return jsonify({"deleted": self._delete(ids)})

        @app.post("/v2/publish/<path:destination>")
        def publish(destination: str) -> tuple[Response, int]:
            return self._publish(request.path.removeprefix("/v2/publish/"))

        @app.post("/v2/enqueue/<queue>/<path:destination>")
        def enqueue(queue: str, destination: str) -> tuple[Response, int]:
            return self._publish(destination)

        return app

    def _entries(self) -> list[dict[str, t.Any]]:
        token = request.headers["Authorization"].removeprefix("Bearer ")
        return self.dlq[token]

    def _delete(self, ids: list[str]) -> int:
        entries = self._entries()

        with self._lock:
            keep = [e for e in entries if e["dlqId"] not in ids]
            deleted = len(entries) - len(keep)
            entries[:] = keep

        return deleted

    def _publish(self, destination: str) -> tuple[Response, int]:
        token = request.headers["Authorization"].removeprefix("Bearer ")
        headers = {k.lower(): v for k, v in request.headers.items()}
        dedup = headers.get("upstash-deduplication-id", uuid.uuid4().hex)

        with self._lock:
            if dedup in self._dedup:
                body = {"messageId": self._dedup[dedup], "deduplicated": True}
                return jsonify(body), 202

            self._dedup[dedup] = f"msg_{uuid.uuid4().hex}"
            self.publishes.append(
                Publish(token, destination, headers, request.get_data())
            )

        return jsonify({"messageId": self._dedup[dedup]}), 201


class _Quiet(WSGIRequestHandler):
    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass


@pytest.fixture
def fake() -> t.Iterator[FakeQStash]:
    """A :class:`FakeQStash` served on a free loopback port."""
    rv = FakeQStash()
    server = make_server(
        "127.0.0.1", 0, rv.wsgi(), threaded=True, request_handler=_Quiet
    )
    rv.origin = f"http://127.0.0.1:{server.server_port}"
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    yield rv
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.fixture
def ext() -> QStash:
    """The extension with the job ``charge``, whose schema takes ``amount``."""
    rv = QStash()

    @rv.job("charge", schema={"amount": fields.Integer(required=True)})
    def charge(payload: dict[str, t.Any]) -> None:
        raise AssertionError("Replaying must not run the job in-process.")

    return rv


@pytest.fixture
def app(
    request: pytest.FixtureRequest, fake: FakeQStash, ext: QStash
) -> t.Iterator[Flask]:
    """An app whose default account and ``globex``'s live on ``fake``."""
    app = Flask(request.module.__name__)
    app.config.update(
        TESTING=True,
        QSTASH_TOKEN=TOKEN,
        QSTASH_CURRENT_SIGNING_KEY=CURRENT_KEY,
        QSTASH_NEXT_SIGNING_KEY=NEXT_KEY,
        QSTASH_URL=fake.origin,
        QSTASH_PUBLIC_URL=PUBLIC_URL,
        QSTASH_DEV_SERVER=False,
        QSTASH_PUBLISH_TIMEOUT=5,
        QSTASH_TENANTS={
            "acme": {},
            "globex": {
                "token": GLOBEX_TOKEN,
                "current_signing_key": GLOBEX_CURRENT_KEY,
                "next_signing_key": GLOBEX_NEXT_KEY,
                "url": fake.origin,
            },
        },
    )
    ext.init_app(app)

    with app.app_context():
        yield app

        # Close the SDK clients so no socket outlives the test.
        for tenant in ("acme", "globex"):
            client = ext.publisher.client(ext.get_tenant(tenant))
            client.http._client.close()


def _cli(app: Flask, *args: str, input: str | None = None) -> t.Any:
    rv = app.test_cli_runner().invoke(args=["qstash", "dlq", *args], input=input)

    for secret in SECRETS:
        assert secret not in rv.output

    assert "Traceback" not in rv.output
    return rv


def test_list_shows_only_the_tenants_entries(
    app: Flask, fake: FakeQStash, ext: QStash
) -> None:
    mine = [fake.add("acme.charge", {"amount": 1}), fake.add("acme.gone", {"x": 1})]
    fake.add("default.charge", {"amount": 2})
    fake.add("acmex.charge", {"amount": 3})
    fake.add(None, {"amount": 4})
    fake.add("acme", {"amount": 5})
    theirs = fake.add("globex.charge", {"amount": 6}, token=GLOBEX_TOKEN)

    assert [d.dlq_id for d in deadletter.list_dead(ext, "acme")] == mine
    assert [d.dlq_id for d in deadletter.list_dead(ext, "globex")] == [theirs]
    assert [d.tenant for d in deadletter.list_dead(ext)] == ["default"]


def test_list_filters_by_job_label(app: Flask, fake: FakeQStash, ext: QStash) -> None:
    charge = fake.add("acme.charge", {"amount": 1})
    fake.add("acme.refund", {"amount": 1})
    fake.add("globex.charge", {"amount": 1}, token=GLOBEX_TOKEN)

    rv = deadletter.list_dead(ext, "acme", job="charge")

    assert [d.dlq_id for d in rv] == [charge]
    assert fake.queries[-1]["label"] == "acme.charge"
    assert rv[0].job == "charge"
    assert rv[0].payload == {"amount": 1}
    assert rv[0].problem is None


def test_list_reads_every_page(app: Flask, fake: FakeQStash, ext: QStash) -> None:
    fake.page_size = 2
    ids = [fake.add("acme.charge", {"amount": i}) for i in range(5)]
    fake.add("default.charge", {"amount": 9})

    rv = deadletter.list_dead(ext, "acme")

    assert [d.dlq_id for d in rv] == ids
    assert [q.get("cursor") for q in fake.queries] == [None, "2", "4"]


def test_list_stops_after_max_pages(
    app: Flask,
    fake: FakeQStash,
    ext: QStash,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(deadletter, "MAX_PAGES", 2)
    fake.page_size = 1
    ids = [fake.add("acme.charge", {"amount": i}) for i in range(3)]

    with caplog.at_level(logging.WARNING, "flask_qstash.deadletter"):
        rv = deadletter.list_dead(ext, "acme")

    assert [d.dlq_id for d in rv] == ids[:2]
    assert "after 2 pages" in caplog.text


def test_get_dead_reads_the_entry(app: Flask, fake: FakeQStash, ext: QStash) -> None:
    dlq_id = fake.add("acme.charge", {"amount": 7}, response_base64=b"\xffbad")

    rv = deadletter.get_dead(ext, "acme", dlq_id)

    assert rv.dlq_id == dlq_id
    assert (rv.tenant, rv.job, rv.payload) == ("acme", "charge", {"amount": 7})
    assert rv.response_status == 500
    assert rv.response_body == "\ufffdbad"
    assert rv.created_at.year == 2023
    assert rv.url == f"{PUBLIC_URL}/qstash/acme/charge"
    assert rv.max_retries == 3


@pytest.mark.parametrize(
    ("label", "token", "job"),
    [
        pytest.param("default.charge", TOKEN, None, id="same-account-other-tenant"),
        pytest.param("globex.charge", GLOBEX_TOKEN, None, id="other-account"),
        pytest.param(None, TOKEN, None, id="no-label"),
        pytest.param("acme.charge", TOKEN, "refund", id="other-job"),
    ],
)
def test_get_dead_refuses_other_entries(
    app: Flask,
    fake: FakeQStash,
    ext: QStash,
    label: str | None,
    token: str,
    job: str | None,
) -> None:
    dlq_id = fake.add(label, {"amount": 1}, token=token)

    with pytest.raises(DeadLetterNotFoundError, match="List them"):
        deadletter.get_dead(ext, "acme", dlq_id, job=job)


def test_get_dead_unknown_id(app: Flask, fake: FakeQStash, ext: QStash) -> None:
    with pytest.raises(DeadLetterNotFoundError):
        deadletter.get_dead(ext, "acme", "1-1")


def test_unknown_tenant_is_refused(app: Flask, ext: QStash) -> None:
    with pytest.raises(UnknownTenantError):
        deadletter.list_dead(ext, "initech")


@pytest.mark.parametrize(
    ("tenant", "token"),
    [
        pytest.param("acme", TOKEN, id="shared-account"),
        pytest.param("globex", GLOBEX_TOKEN, id="own-account"),
    ],
)
def test_replay_republishes_and_deletes(
    app: Flask, fake: FakeQStash, ext: QStash, tenant: str, token: str
) -> None:
    dlq_id = fake.add(f"{tenant}.charge", {"amount": 42}, token=token)
    other = fake.add(f"{tenant}.charge", {"amount": 1}, token=token)

    [rv] = deadletter.replay(ext, tenant, [dlq_id])

    assert rv.ok and rv.status == "replayed"
    assert rv.message_id is not None and rv.message_id.startswith("msg_")
    assert fake.ids(token) == [other]
    [sent] = fake.publishes
    assert sent.token == token
    assert sent.destination == f"{PUBLIC_URL}/qstash/{tenant}/charge"
    assert sent.envelope["payload"] == {"amount": 42}
    assert (sent.envelope["tenant"], sent.envelope["job"]) == (tenant, "charge")
    assert sent.headers["upstash-label"] == f"{tenant}.charge"
    assert (
        sent.headers["upstash-deduplication-id"] == f"{tenant}.charge.replay-{dlq_id}"
    )


@pytest.mark.parametrize(
    ("label", "payload", "body", "reason"),
    [
        pytest.param(
            "acme.charge", {"amount": "lots"}, None, "amount: ", id="wrong-type"
        ),
        pytest.param("acme.charge", {}, None, "amount: ", id="missing-field"),
        pytest.param(
            "acme.charge",
            {"amount": 1, "cents": 5},
            None,
            "cents: Unknown field.",
            id="unknown-field",
        ),
        pytest.param("acme.refund", {"amount": 1}, None, "no longer", id="job-gone"),
        pytest.param("acme.charge", None, "not json", "not UTF-8 JSON", id="not-json"),
        pytest.param(
            "acme.charge",
            None,
            '{"v":2,"job":"charge","tenant":"acme","payload":{"amount":1}}',
            "not a version 1",
            id="envelope-v2",
        ),
        pytest.param(
            "acme.charge",
            None,
            '{"v":1,"job":"charge","tenant":"globex","payload":{"amount":1}}',
            "another tenant",
            id="envelope-other-tenant",
        ),
    ],
)
@pytest.mark.parametrize("dry_run", [False, True], ids=["real", "dry-run"])
def test_replay_keeps_entries_that_would_fail(
    app: Flask,
    fake: FakeQStash,
    ext: QStash,
    label: str,
    payload: t.Any,
    body: str | None,
    reason: str,
    dry_run: bool,
) -> None:
    dlq_id = fake.add(label, payload, body=body)

    [rv] = deadletter.replay(ext, "acme", [dlq_id], dry_run=dry_run)

    assert rv.status == "invalid" and not rv.ok
    assert rv.reason is not None and reason in rv.reason
    assert fake.ids() == [dlq_id]
    assert fake.publishes == []


def test_replay_all_of_a_job(app: Flask, fake: FakeQStash, ext: QStash) -> None:
    good = fake.add("acme.charge", {"amount": 1})
    bad = fake.add("acme.charge", {"amount": "x"})
    other_job = fake.add("acme.refund", {"amount": 1})
    other_tenant = fake.add("default.charge", {"amount": 1})

    rv = deadletter.replay(ext, "acme", None, job="charge")

    assert [(o.dlq_id, o.status) for o in rv] == [
        (good, "replayed"),
        (bad, "invalid"),
    ]
    assert fake.ids() == [bad, other_job, other_tenant]
    assert len(fake.publishes) == 1


def test_replay_dry_run_changes_nothing(
    app: Flask, fake: FakeQStash, ext: QStash
) -> None:
    ids = [fake.add("acme.charge", {"amount": i}) for i in range(3)]

    rv = deadletter.replay(ext, "acme", None, dry_run=True)

    assert [o.status for o in rv] == ["would-replay"] * 3
    assert all(o.ok for o in rv)
    assert fake.ids() == ids
    assert fake.publishes == []


def test_replay_reports_missing_ids(app: Flask, fake: FakeQStash, ext: QStash) -> None:
    theirs = fake.add("default.charge", {"amount": 1})

    rv = deadletter.replay(ext, "acme", ["1-404", theirs])

    assert [o.status for o in rv] == ["missing", "missing"]
    assert fake.ids() == [theirs]
    assert fake.publishes == []


def test_replay_twice_is_deduplicated(
    app: Flask, fake: FakeQStash, ext: QStash
) -> None:
    dlq_id = fake.add("acme.charge", {"amount": 1})
    entry = dict(fake.dlq[TOKEN][0])

    [first] = deadletter.replay(ext, "acme", [dlq_id])
    fake.dlq[TOKEN].append(entry)
    [second] = deadletter.replay(ext, "acme", [dlq_id])

    assert first.message_id == second.message_id
    assert len(fake.publishes) == 1


def test_delete_only_the_tenants_entries(
    app: Flask, fake: FakeQStash, ext: QStash
) -> None:
    mine = fake.add("acme.charge", {"amount": 1})
    theirs = fake.add("default.charge", {"amount": 1})

    rv = deadletter.delete(ext, "acme", [mine, theirs, "1-404"])

    assert [(o.dlq_id, o.ok) for o in rv] == [
        (mine, True),
        (theirs, False),
        ("1-404", False),
    ]
    assert fake.ids() == [theirs]


def test_delete_all_of_a_job(app: Flask, fake: FakeQStash, ext: QStash) -> None:
    fake.page_size = 1
    charges = [fake.add("acme.charge", {"amount": i}) for i in range(3)]
    refund = fake.add("acme.refund", {"amount": 1})

    rv = deadletter.delete(ext, "acme", None, job="charge")

    assert [o.dlq_id for o in rv] == charges
    assert fake.ids() == [refund]


def test_cli_list_table_and_json(app: Flask, fake: FakeQStash) -> None:
    mine = fake.add("acme.charge", {"amount": 1})
    gone = fake.add("acme.refund", {"amount": 1}, body="garbage")
    theirs = fake.add("default.charge", {"amount": 1})

    rv = _cli(app, "list", "--tenant", "acme")

    assert rv.exit_code == 0, rv.output
    lines = rv.output.splitlines()
    assert lines[0].split() == [
        "DLQ",
        "ID",
        "JOB",
        "STATUS",
        "CREATED",
        "(UTC)",
        "MESSAGE",
        "ID",
        "NOTE",
    ]
    assert mine in rv.output and gone in rv.output and theirs not in rv.output
    assert "the body is not UTF-8 JSON" in rv.output
    assert lines[-1] == "2 dead letter(s) for tenant acme."

    rv = _cli(app, "list", "--tenant", "acme", "--job", "charge", "--json")

    assert rv.exit_code == 0
    [data] = json.loads(rv.output)
    assert data["dlq_id"] == mine
    assert data["payload"] == {"amount": 1}
    assert data["created_at"].startswith("2023-11-14T22:13:20")


def test_cli_list_empty_and_unknown_tenant(app: Flask) -> None:
    rv = _cli(app, "list", "--tenant", "globex")

    assert rv.exit_code == 0
    assert rv.output == "No dead letters for tenant globex.\n"

    rv = _cli(app, "list", "--tenant", "initech")

    assert rv.exit_code == 1
    assert "Error: Tenant 'initech' is not configured." in rv.output


def test_cli_show(app: Flask, fake: FakeQStash) -> None:
    dlq_id = fake.add(
        "acme.charge", {"amount": 3}, response_body="bad\x1b[31m gateway\nline"
    )

    rv = _cli(app, "show", dlq_id, "--tenant", "acme")

    assert rv.exit_code == 0, rv.output
    assert f"dlq id:       {dlq_id}" in rv.output
    assert "job:          charge" in rv.output
    assert "last status:  500" in rv.output
    assert "\x1b" not in rv.output
    assert "bad\\x1b[31m gateway line" in rv.output
    assert '"amount": 3' in rv.output

    rv = _cli(app, "show", dlq_id, "--tenant", "globex")

    assert rv.exit_code == 1
    assert "No dead letter" in rv.output


def test_cli_replay_success(app: Flask, fake: FakeQStash) -> None:
    ids = [fake.add("acme.charge", {"amount": i}) for i in range(2)]

    rv = _cli(app, "replay", *ids, "--tenant", "acme")

    assert rv.exit_code == 0, rv.output
    assert rv.output.count("replayed") == 3
    assert rv.output.splitlines()[-1] == "2 of 2 dead letter(s) replayed."
    assert fake.ids() == []
    assert len(fake.publishes) == 2


def test_cli_replay_failure_exit_code(app: Flask, fake: FakeQStash) -> None:
    good = fake.add("acme.charge", {"amount": 1})
    bad = fake.add("acme.charge", {"amount": 1, "cents": 1})

    rv = _cli(app, "replay", "--all", "--tenant", "acme")

    assert rv.exit_code == 1
    assert "invalid" in rv.output
    assert "the payload fails the current schema: cents: Unknown field." in rv.output
    assert rv.output.splitlines()[-1] == "1 of 2 dead letter(s) replayed."
    assert fake.ids() == [bad]
    assert good not in fake.ids()


def test_cli_replay_dry_run(app: Flask, fake: FakeQStash) -> None:
    good = fake.add("acme.charge", {"amount": 1})
    bad = fake.add("acme.refund", {"amount": 1})

    rv = _cli(app, "replay", "--all", "--tenant", "acme", "--dry-run")

    assert rv.exit_code == 1
    assert "would-replay" in rv.output
    assert "job 'refund' is no longer registered" in rv.output
    assert rv.output.splitlines()[-1] == "1 of 2 dead letter(s) would be replayed."
    assert fake.ids() == [good, bad]
    assert fake.publishes == []


@pytest.mark.parametrize("command", ["replay", "delete"])
@pytest.mark.parametrize(
    "args",
    [
        pytest.param([], id="no-ids"),
        pytest.param(["1-0", "--all"], id="ids-and-all"),
    ],
)
def test_cli_needs_ids_or_all(
    app: Flask, fake: FakeQStash, command: str, args: list[str]
) -> None:
    dlq_id = fake.add("default.charge", {"amount": 1})

    rv = _cli(app, command, *args, "--yes" if command == "delete" else "--dry-run")

    assert rv.exit_code == 2
    assert "'--all'" in rv.output
    assert fake.ids() == [dlq_id]


def test_cli_delete_asks_first(app: Flask, fake: FakeQStash) -> None:
    dlq_id = fake.add("acme.charge", {"amount": 1})

    rv = _cli(app, "delete", dlq_id, "--tenant", "acme", input="n\n")

    assert rv.exit_code == 1
    assert "Delete 1 dead letter(s) of tenant acme? [y/N]" in rv.output
    assert "Aborted" in rv.output
    assert fake.ids() == [dlq_id]

    rv = _cli(app, "delete", dlq_id, "--tenant", "acme", input="y\n")

    assert rv.exit_code == 0, rv.output
    assert rv.output.splitlines()[-1] == "1 of 1 dead letter(s) deleted."
    assert fake.ids() == []


def test_cli_delete_all_and_failures(app: Flask, fake: FakeQStash) -> None:
    charges = [fake.add("acme.charge", {"amount": i}) for i in range(2)]
    refund = fake.add("acme.refund", {"amount": 1})

    rv = _cli(app, "delete", "--all", "--job", "charge", "--tenant", "acme", "--yes")

    assert rv.exit_code == 0, rv.output
    assert all(dlq_id in rv.output for dlq_id in charges)
    assert fake.ids() == [refund]

    rv = _cli(app, "delete", refund, "1-404", "--tenant", "acme", "--yes")

    assert rv.exit_code == 1
    assert "kept" in rv.output and "No dead letter '1-404'" in rv.output
    assert rv.output.splitlines()[-1] == "1 of 2 dead letter(s) deleted."
    assert fake.ids() == []
