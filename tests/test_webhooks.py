from __future__ import annotations

import base64
import functools
import io
import json
import logging
import threading
import time
import typing as t

import pytest
from conftest import CURRENT_KEY
from conftest import Deliverer
from conftest import GLOBEX_CURRENT_KEY
from conftest import make_app
from conftest import NEXT_KEY
from conftest import PUBLIC_URL
from conftest import SECRETS
from flask import current_app
from flask import Flask
from marshmallow import fields
from werkzeug.test import Client
from werkzeug.test import create_environ
from werkzeug.test import run_wsgi_app
from werkzeug.test import TestResponse

from flask_qstash import current_tenant
from flask_qstash import JobContext
from flask_qstash import NonRetryableError
from flask_qstash import QStash
from flask_qstash import RetryLater
from flask_qstash import signals
from flask_qstash.signing import sign
from flask_qstash.webhooks import DeliveryMiddleware

OTHER_KEY = "sig_unknown_account_Tz4Kq8Wm2Xn6Rb9Lc3Vd7Pf1"


def _assert_clean(rv: TestResponse, *sent: str) -> None:
    """The answer carries no secret, no signature and no stack trace."""
    text = rv.get_data(as_text=True) + str(rv.headers)

    for secret in (*SECRETS, *sent):
        assert secret not in text

    assert "Traceback" not in text
    assert 'File "' not in text


@pytest.fixture(params=["middleware", "view"])
def client(request: pytest.FixtureRequest, app: Flask) -> Client:
    """Deliveries through the whole app, and straight to the Flask views.

    The app answers deliveries in its :class:`DeliveryMiddleware`; the second
    client skips it, as a request reaching the views some other way would, so
    every test here holds for both.
    """
    if request.param == "middleware":
        assert isinstance(app.wsgi_app, DeliveryMiddleware)
        return app.test_client()

    return Client(functools.partial(Flask.wsgi_app, app), TestResponse)


def test_return_answers_200_with_the_json_result(
    runs: list[t.Any], deliver: Deliverer
) -> None:
    rv = deliver("echo", {"n": 2})

    assert rv.status_code == 200
    assert rv.json == {"status": "done", "result": {"n": 2}}
    assert runs == [{"n": 2}]


@pytest.mark.parametrize(
    "key", [pytest.param(CURRENT_KEY, id="current"), pytest.param(NEXT_KEY, id="next")]
)
def test_both_signing_keys_are_accepted(
    runs: list[t.Any], deliver: Deliverer, key: str
) -> None:
    rv = deliver("echo", {"k": 1}, key=key)

    assert rv.status_code == 200
    assert runs == [{"k": 1}]


def test_declared_body_over_the_cap_is_413_before_reading(
    request: pytest.FixtureRequest, qstash: QStash
) -> None:
    ran: list[t.Any] = []
    qstash.job("echo")(ran.append)
    app = make_app(request.module.__name__, qstash, QSTASH_MAX_BODY_SIZE=100)
    deliver = Deliverer(app.test_client())
    body = deliver.envelope("echo", {})
    rv = deliver("echo", body=body, environ={"CONTENT_LENGTH": "101"})

    assert len(body) < 100
    assert rv.status_code == 413
    assert ran == []
    _assert_clean(rv)


def test_actual_body_over_the_cap_is_413(
    request: pytest.FixtureRequest, qstash: QStash
) -> None:
    ran: list[t.Any] = []
    qstash.job("echo")(ran.append)
    app = make_app(request.module.__name__, qstash, QSTASH_MAX_BODY_SIZE=100)
    deliver = Deliverer(app.test_client())
    rv = deliver("echo", {"text": "x" * 100})

    assert rv.status_code == 413
    assert ran == []


def _streamed(app: Flask, body: bytes, token: str) -> tuple[str, bytes]:
    """Post ``body`` with chunked transfer encoding: no Content-Length at all."""
    environ = create_environ(
        "/qstash/acme/echo",
        method="POST",
        headers={
            "Upstash-Signature": token,
            "Upstash-Message-Id": "msg_streamed",
            "Transfer-Encoding": "chunked",
        },
    )
    environ.pop("CONTENT_LENGTH", None)
    environ["wsgi.input"] = io.BytesIO(body)
    environ["wsgi.input_terminated"] = True
    app_iter, status, _ = run_wsgi_app(app, environ)

    try:
        return status, b"".join(app_iter)
    finally:
        getattr(app_iter, "close", lambda: None)()


@pytest.mark.parametrize(
    ("size", "status"),
    [
        pytest.param(100, "413 REQUEST ENTITY TOO LARGE", id="over-cap"),
        pytest.param(10, "200 OK", id="under-cap"),
    ],
)
def test_streamed_body_is_capped_while_reading(
    request: pytest.FixtureRequest, qstash: QStash, size: int, status: str
) -> None:
    ran: list[t.Any] = []
    qstash.job("echo")(ran.append)
    app = make_app(request.module.__name__, qstash, QSTASH_MAX_BODY_SIZE=100)
    deliver = Deliverer(app.test_client())
    body = deliver.envelope("echo", "x" * size)
    token = deliver.token(body, job="echo")
    rv_status, _ = _streamed(app, body, token)

    assert rv_status == status
    assert len(ran) == (1 if size == 10 else 0)


@pytest.mark.parametrize(
    "case",
    [
        pytest.param("missing", id="missing"),
        pytest.param("malformed", id="malformed"),
        pytest.param("expired", id="expired"),
        pytest.param("wrong-key", id="wrong-key"),
        pytest.param("subject", id="wrong-sub"),
        pytest.param("body-hash", id="body-hash-mismatch"),
    ],
)
def test_bad_signature_is_401(runs: list[t.Any], deliver: Deliverer, case: str) -> None:
    body = deliver.envelope("echo", {"x": 1})
    url = deliver.url("echo")
    tokens = {
        "missing": "",
        "malformed": "not-a-jwt",
        "expired": sign(body, url=url, key=CURRENT_KEY, now=int(time.time()) - 3600),
        "wrong-key": sign(body, url=url, key=OTHER_KEY),
        "subject": sign(body, url=deliver.url("other"), key=CURRENT_KEY),
        "body-hash": sign(body + b" ", url=url, key=CURRENT_KEY),
    }
    reasons: list[str] = []

    def on_reject(sender: Flask, **data: t.Any) -> None:
        reasons.append(data["reason"])

    with signals.signature_rejected.connected_to(on_reject):
        rv = deliver("echo", body=body, token=tokens[case])

    assert rv.status_code == 401
    assert runs == []
    assert reasons == [case]
    _assert_clean(rv, tokens[case] or "unused")


def test_replayed_token_is_401(runs: list[t.Any], deliver: Deliverer) -> None:
    body = deliver.envelope("echo", {"x": 1})
    token = deliver.token(body, job="echo")
    first = deliver("echo", body=body, token=token, message_id="msg_1")
    second = deliver("echo", body=body, token=token, message_id="msg_2")

    assert first.status_code == 200
    assert second.status_code == 401
    assert runs == [{"x": 1}]


@pytest.mark.parametrize(
    ("job", "path_tenant", "signed"),
    [
        pytest.param("echo", "nobody", True, id="unknown-tenant"),
        pytest.param("nope", "acme", True, id="unknown-job"),
        pytest.param("nope", "acme", False, id="unknown-job-unsigned-is-401"),
    ],
)
def test_unknown_tenant_or_job(
    runs: list[t.Any], deliver: Deliverer, job: str, path_tenant: str, signed: bool
) -> None:
    body = deliver.envelope(job, {}, tenant=path_tenant)
    token = deliver.token(body, job=job, tenant=path_tenant) if signed else ""
    rv = deliver(job, body=body, tenant=path_tenant, token=token)

    assert rv.status_code == (404 if signed else 401)
    assert runs == []
    _assert_clean(rv)


@pytest.fixture
def typed_runs(qstash: QStash) -> list[t.Any]:
    """Register ``email`` with a schema and record every run of it."""
    calls: list[t.Any] = []

    @qstash.job("email", schema={"to": fields.Email(required=True)})
    def email(payload: t.Any) -> None:
        calls.append(payload)

    return calls


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        pytest.param(b"not json", "json", id="not-json"),
        pytest.param(b"\xff\xfe", "json", id="not-utf8"),
        pytest.param(b"[1, 2]", "envelope", id="not-an-object"),
        pytest.param(
            b'{"v":2,"job":"email","tenant":"acme","payload":{}}',
            "envelope",
            id="wrong-version",
        ),
        pytest.param(
            b'{"v":1,"job":"email","tenant":"acme"}', "envelope", id="no-payload"
        ),
        pytest.param(
            b'{"v":1,"job":"email","tenant":"acme","payload":{"to":"nope"}}',
            "schema",
            id="schema",
        ),
        pytest.param(
            b'{"v":1,"job":"email","tenant":"globex","payload":{"to":"a@b.co"}}',
            "mismatch",
            id="other-tenant-in-body",
        ),
        pytest.param(
            b'{"v":1,"job":"echo","tenant":"acme","payload":{"to":"a@b.co"}}',
            "mismatch",
            id="other-job-in-body",
        ),
    ],
)
def test_bad_data_is_489_non_retryable(
    typed_runs: list[t.Any], deliver: Deliverer, body: bytes, reason: str
) -> None:
    reasons: list[str] = []

    def on_reject(sender: Flask, **data: t.Any) -> None:
        reasons.append(data["reason"])

    with signals.delivery_rejected.connected_to(on_reject):
        rv = deliver("email", body=body)

    assert rv.status_code == 489
    assert rv.headers["Upstash-NonRetryable-Error"] == "true"
    assert typed_runs == []
    assert reasons == [reason]
    _assert_clean(rv)


def test_valid_payload_passes_the_schema(
    typed_runs: list[t.Any], deliver: Deliverer
) -> None:
    rv = deliver("email", {"to": "a@example.com"})

    assert rv.status_code == 200
    assert typed_runs == [{"to": "a@example.com"}]


def test_already_done_answers_200_without_running(
    runs: list[t.Any], deliver: Deliverer
) -> None:
    first = deliver("echo", {"n": 1}, message_id="msg_same")
    again = deliver("echo", {"n": 1}, message_id="msg_same")

    assert first.status_code == again.status_code == 200
    assert again.json == first.json
    assert runs == [{"n": 1}]


def test_message_claimed_elsewhere_is_409_with_retry_after(
    runs: list[t.Any], qstash: QStash, deliver: Deliverer
) -> None:
    qstash.store.claim("acme:msg_busy", lease=30)
    rv = deliver("echo", {}, message_id="msg_busy")

    assert rv.status_code == 409
    assert 1 <= int(rv.headers["Retry-After"]) <= 30
    assert runs == []


def test_message_running_in_another_thread_is_409(
    app: Flask, qstash: QStash, deliver: Deliverer
) -> None:
    started = threading.Event()
    release = threading.Event()
    runs: list[t.Any] = []

    @qstash.job("slow")
    def slow(payload: t.Any) -> str:
        runs.append(payload)
        started.set()
        release.wait(10)
        return "ok"

    answers: list[TestResponse] = []
    first = threading.Thread(
        target=lambda: answers.append(
            deliver("slow", 1, message_id="msg_both", client=app.test_client())
        )
    )
    first.start()

    try:
        assert started.wait(10)
        second = deliver("slow", 2, message_id="msg_both")
    finally:
        release.set()
        first.join(10)

    assert second.status_code == 409
    assert int(second.headers["Retry-After"]) >= 1
    assert [a.status_code for a in answers] == [200]
    assert runs == [1]


def test_non_retryable_error_is_489(qstash: QStash, deliver: Deliverer) -> None:
    @qstash.job("fail")
    def fail(payload: t.Any) -> None:
        raise NonRetryableError(f"bad key {CURRENT_KEY}")

    rv = deliver("fail", {})

    assert rv.status_code == 489
    assert rv.headers["Upstash-NonRetryable-Error"] == "true"
    _assert_clean(rv)


def test_retry_later_is_503_with_retry_after(
    qstash: QStash, deliver: Deliverer
) -> None:
    @qstash.job("later")
    def later(payload: t.Any) -> None:
        raise RetryLater(7)

    first = deliver("later", {}, message_id="msg_later")
    again = deliver("later", {}, message_id="msg_later")

    assert first.status_code == again.status_code == 503
    assert first.headers["Retry-After"] == "7"
    assert "Upstash-NonRetryable-Error" not in first.headers


def test_other_exception_is_500_logged_and_signalled(
    app: Flask,
    qstash: QStash,
    deliver: Deliverer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    @qstash.job("boom")
    def boom(payload: t.Any) -> None:
        raise KeyError(f"secret {CURRENT_KEY}")

    failures: list[dict[str, t.Any]] = []

    def on_failed(sender: Flask, **data: t.Any) -> None:
        failures.append({"sender": sender, **data})

    with (
        signals.job_failed.connected_to(on_failed, sender=app),
        caplog.at_level(logging.ERROR, logger="flask_qstash"),
    ):
        rv = deliver("boom", {}, message_id="msg_boom")

    assert rv.status_code == 500
    assert "Upstash-NonRetryable-Error" not in rv.headers
    _assert_clean(rv)
    assert len(failures) == 1
    assert failures[0]["sender"] is app
    assert isinstance(failures[0]["error"], KeyError)
    assert failures[0]["retryable"] is True
    assert failures[0]["message_id"] == "msg_boom"
    assert any(r.exc_info and "boom" in r.getMessage() for r in caplog.records)


def test_failed_run_can_be_retried(qstash: QStash, deliver: Deliverer) -> None:
    attempts: list[int] = []

    @qstash.job("flaky")
    def flaky(payload: t.Any, ctx: JobContext) -> int:
        attempts.append(ctx.retried)

        if len(attempts) == 1:
            raise RuntimeError("first attempt fails")

        return len(attempts)

    first = deliver("flaky", {}, message_id="msg_flaky")
    again = deliver(
        "flaky", {}, message_id="msg_flaky", headers={"Upstash-Retried": "1"}
    )

    assert (first.status_code, again.status_code) == (500, 200)
    assert attempts == [0, 1]


def test_handler_runs_in_app_context_with_path_tenant(
    app: Flask, qstash: QStash, deliver: Deliverer
) -> None:
    seen: list[tuple[t.Any, ...]] = []

    @qstash.job("where")
    def where(payload: t.Any) -> None:
        tenant = current_tenant
        seen.append((current_app.name, tenant.id if tenant else None))

    rv = deliver("where", {}, tenant="globex")

    assert rv.status_code == 200
    assert seen == [(app.name, "globex")]


@pytest.mark.parametrize(
    ("tenant", "path_tenant", "key", "signed_for"),
    [
        pytest.param("globex", "acme", GLOBEX_CURRENT_KEY, "globex", id="a-token-at-b"),
        pytest.param(
            "globex", "acme", GLOBEX_CURRENT_KEY, "acme", id="a-key-retargeted-at-b"
        ),
        pytest.param("acme", "globex", CURRENT_KEY, "acme", id="default-at-own-keys"),
        pytest.param(
            "acme", "globex", CURRENT_KEY, "globex", id="default-key-retargeted"
        ),
    ],
)
def test_cross_tenant_delivery_is_refused(
    qstash: QStash,
    deliver: Deliverer,
    tenant: str,
    path_tenant: str,
    key: str,
    signed_for: str,
) -> None:
    runs: list[t.Any] = []
    qstash.job("echo")(runs.append)
    body = deliver.envelope("echo", {}, tenant=path_tenant)
    token = sign(body, url=deliver.url("echo", tenant=signed_for), key=key)
    rv = deliver("echo", body=body, tenant=tenant, path_tenant=path_tenant, token=token)

    assert rv.status_code == 401
    assert runs == []


@pytest.mark.parametrize(
    ("headers", "signed_url"),
    [
        pytest.param(
            {"Host": "evil.example"},
            "https://evil.example/qstash/acme/echo",
            id="host",
        ),
        pytest.param(
            {"X-Forwarded-Host": "evil.example"},
            "https://evil.example/qstash/acme/echo",
            id="x-forwarded-host",
        ),
        pytest.param(
            {"X-Forwarded-Proto": "http"},
            "http://app.example.com/qstash/acme/echo",
            id="x-forwarded-proto",
        ),
    ],
)
def test_forged_host_headers_do_not_change_the_signed_url(
    runs: list[t.Any], deliver: Deliverer, headers: dict[str, str], signed_url: str
) -> None:
    body = deliver.envelope("echo", {"n": 1})
    forged = deliver("echo", body=body, url=signed_url, headers=headers)
    genuine = deliver("echo", body=body, headers=headers)

    assert forged.status_code == 401
    assert genuine.status_code == 200
    assert runs == [{"n": 1}]


def test_missing_message_id_is_489(runs: list[t.Any], deliver: Deliverer) -> None:
    rv = deliver("echo", {}, headers={"Upstash-Message-Id": ""})

    assert rv.status_code == 489
    assert runs == []


def test_failure_callback_runs_hooks_once(qstash: QStash, deliver: Deliverer) -> None:
    runs: list[t.Any] = []
    dead: list[t.Any] = []
    qstash.job("echo")(runs.append)
    qstash.on_failure(dead.append)
    envelope = deliver.envelope("echo", {"n": 1})
    report = {
        "status": 500,
        "sourceMessageId": "msg_dead",
        "sourceBody": base64.b64encode(envelope).decode(),
        "body": base64.b64encode(b"oops").decode(),
        "dlqId": "dlq_1",
        "retried": 3,
    }
    body = json.dumps(report).encode()
    url = f"{PUBLIC_URL}/qstash/acme/echo/failed"

    first = deliver.client.post(
        "/qstash/acme/echo/failed",
        data=body,
        headers={"Upstash-Signature": sign(body, url=url, key=CURRENT_KEY)},
    )
    again = deliver.client.post(
        "/qstash/acme/echo/failed",
        data=body,
        headers={"Upstash-Signature": sign(body, url=url, key=CURRENT_KEY)},
    )

    assert first.status_code == again.status_code == 200
    assert len(dead) == 1
    assert (dead[0].payload, dead[0].status, dead[0].response_body) == (
        {"n": 1},
        500,
        "oops",
    )
    assert runs == []


@pytest.mark.parametrize(
    "report",
    [
        pytest.param({"status": 500, "dlqId": "dlq_1"}, id="no-source-message-id"),
        pytest.param(["not", "an", "object"], id="not-an-object"),
    ],
)
def test_malformed_failure_report_is_489(
    qstash: QStash, deliver: Deliverer, report: t.Any
) -> None:
    dead: list[t.Any] = []
    qstash.job("echo")(lambda payload: None)
    qstash.on_failure(dead.append)
    body = json.dumps(report).encode()
    url = f"{PUBLIC_URL}/qstash/acme/echo/failed"

    rv = deliver.client.post(
        "/qstash/acme/echo/failed",
        data=body,
        headers={"Upstash-Signature": sign(body, url=url, key=CURRENT_KEY)},
    )

    assert rv.status_code == 489
    assert rv.headers["Upstash-NonRetryable-Error"] == "true"
    assert dead == []


def test_store_outage_is_a_plain_500(
    qstash: QStash, app: Flask, deliver: Deliverer, caplog: pytest.LogCaptureFixture
) -> None:
    runs: list[t.Any] = []
    qstash.job("echo")(runs.append)

    with app.app_context():
        store = qstash.store

    def broken(*args: t.Any, **kwargs: t.Any) -> t.Any:
        raise ConnectionError("store unreachable at redis://:hunter2@cache")

    store.claim = broken  # type: ignore[method-assign]
    rv = deliver("echo", {"n": 1})

    assert rv.status_code == 500
    assert rv.get_json() == {"error": "The delivery could not be processed."}
    assert "hunter2" not in rv.get_data(as_text=True)
    assert runs == []
    assert "Could not process a delivery to job echo" in caplog.text


def test_tenant_loader_outage_is_a_plain_500(
    qstash: QStash, deliver: Deliverer
) -> None:
    runs: list[t.Any] = []
    qstash.job("echo")(runs.append)

    @qstash.tenant_loader
    def load(tenant_id: str) -> None:
        raise TimeoutError("database down")

    rv = deliver("echo", {}, tenant="initech")

    assert rv.status_code == 500
    assert rv.get_json() == {"error": "The delivery could not be processed."}
    assert runs == []
