"""The delivery views QStash calls.

Checks run in the order of the design's response table, and the first one that
fails answers:

====================================================  ======================
situation                                             answer
====================================================  ======================
declared or actual body larger than the cap           413
signature missing, malformed, expired, wrong key,     401
wrong ``sub``, body hash mismatch, replayed token
unknown tenant or job                                 404
body not JSON, envelope invalid, payload fails its    489, non-retryable
schema, path and body disagree
same message already done                             200, handler not run
same message running elsewhere                        409, ``Retry-After``
handler raised :class:`NonRetryableError`             489, non-retryable
handler raised :class:`RetryLater`                    503, ``Retry-After``
handler raised anything else                          500
handler returned                                      200 with the result
====================================================  ======================

A failure of the machinery itself, such as an idempotency store or a tenant
loader that cannot be reached, is logged and answered 500, so QStash retries.
No answer carries a stack trace, a secret or a signature value.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import functools
import json
import logging
import time
import typing as t
from dataclasses import dataclass

from flask import current_app
from flask import g
from flask import Request
from flask import request
from flask import Response
from marshmallow import ValidationError

from . import signals
from .config import build_url
from .config import TENANT_ID_RE
from .errors import JobControl
from .errors import NonRetryableError
from .errors import RetryLater
from .errors import SignatureError
from .idempotency import ClaimState
from .idempotency import IdempotencyStore
from .idempotency import SQLAlchemyStore
from .jobs import ENVELOPE_VERSION
from .jobs import JobContext
from .signing import Claims
from .signing import verify

if t.TYPE_CHECKING:  # pragma: no cover
    from .config import Tenant
    from .extension import QStash
    from .jobs import Job

logger = logging.getLogger(__name__)

# One encoder for every answer; ``json.dumps`` with options builds one per call.
_ENCODER = json.JSONEncoder(separators=(",", ":"))


@dataclass(frozen=True)
class DeadJob:
    """A job run QStash gave up on, as reported to its failure callback.

    Handed to :meth:`QStash.on_failure <flask_qstash.QStash.on_failure>` hooks.
    """

    #: The job's name.
    job: str

    #: The tenant id.
    tenant: str

    #: The payload the run was enqueued with, or ``None`` if unreadable.
    payload: t.Any

    #: The status of the last delivery attempt; 0 when none got an answer.
    status: int

    #: The body of the last answer, decoded as UTF-8 where possible.
    response_body: str

    #: The id of the message that failed.
    message_id: str

    #: The dead-letter queue entry, for ``flask qstash dlq replay``.
    dlq_id: str | None

    #: How many times the message was retried.
    retried: int


class _Reject(Exception):
    """Stops a delivery early with an answer; internal to this module."""

    def __init__(
        self,
        status: int,
        message: str,
        reason: str,
        *,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.reason = reason
        self.headers = headers or {}


_View = t.Callable[[str, str], Response]


def _guarded(view: _View) -> _View:
    """Answer 500 with a plain JSON error when the machinery itself fails.

    Handler errors are answered by :func:`_run`; this catches the rest, such as
    an idempotency store or a tenant loader that is down, so QStash retries and
    no answer ever carries a stack trace.
    """

    @functools.wraps(view)
    def wrapper(tenant: str, job: str) -> Response:
        try:
            return view(tenant, job)
        except Exception:
            logger.exception(
                "Could not process a delivery to job %s of tenant %s", job, tenant
            )
            return _json({"error": "The delivery could not be processed."}, 500)

    return wrapper


@_guarded
def deliver(tenant: str, job: str) -> Response:
    """Run one delivery of ``job`` for ``tenant``. Registered per job."""
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    ext: QStash = app.extensions["qstash"]
    req = request._get_current_object()  # type: ignore[attr-defined]
    environ = req.environ

    try:
        record, handler, body = _authenticate(ext, req, tenant, job, "")
        payload, envelope = _parse(handler, tenant, body)
    except _Reject as rv:
        return _rejected(app, tenant, job, rv)

    message_id = environ.get("HTTP_UPSTASH_MESSAGE_ID", "")

    if not message_id:
        return _rejected(
            app,
            tenant,
            job,
            _Reject(489, "The 'Upstash-Message-Id' header is missing.", "message-id"),
        )

    ctx = JobContext(
        job=job,
        tenant=tenant,
        message_id=message_id,
        retried=_int_header(environ, "HTTP_UPSTASH_RETRIED"),
        schedule_id=environ.get("HTTP_UPSTASH_SCHEDULE_ID") or None,
        enqueued_at=_enqueued_at(envelope),
    )
    return _run(ext, app, record, handler, payload, ctx)


@_guarded
def failed(tenant: str, job: str) -> Response:
    """Receive QStash's failure callback for ``job`` and report the dead run."""
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    ext: QStash = app.extensions["qstash"]
    req = request._get_current_object()  # type: ignore[attr-defined]

    try:
        record, _, body = _authenticate(ext, req, tenant, job, "/failed")
        report = _load_json(body)

        if not isinstance(report, dict) or not report.get("sourceMessageId"):
            raise _Reject(
                489,
                "The failure report is not a JSON object with 'sourceMessageId'.",
                "envelope",
            )
    except _Reject as rv:
        return _rejected(app, tenant, job, rv)

    dead = _dead_job(tenant, job, report)
    key = f"{tenant}:dead:{dead.message_id}"
    claim = ext.store.claim(key, lease=ext.settings.lease)

    if claim.state is ClaimState.DONE:
        return _json({"status": "done"}, 200)

    if claim.state is ClaimState.BUSY:
        return _json(
            {"error": "This failure is being handled."},
            409,
            {"Retry-After": str(claim.retry_after)},
        )

    assert claim.token is not None
    logger.warning(
        "Job %s of tenant %s failed for good (message %s, status %s)",
        job,
        tenant,
        dead.message_id,
        dead.status,
    )
    g._qstash_tenant = record

    try:
        signals.send(signals.job_dead, app, **dead.__dict__)
        ext.run_failure_hooks(dead)
    except Exception:
        ext.store.release(key, claim.token)
        logger.exception("A failure hook for job %s raised", job)
        return _json({"error": "A failure hook raised."}, 500)

    ext.store.complete(key, claim.token)
    return _json({"status": "done"}, 200)


@_guarded
def unknown(tenant: str, job: str) -> Response:
    """Answer a delivery for a job no handler is registered for.

    The signature is still checked first, against the tenant's keys (or the
    default account's for unknown tenants), so unsigned callers cannot probe
    which tenants and jobs exist.
    """
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    ext: QStash = app.extensions["qstash"]
    req = request._get_current_object()  # type: ignore[attr-defined]

    try:
        _authenticate(ext, req, tenant, job, "")
    except _Reject as rv:
        return _rejected(app, tenant, job, rv)

    return _rejected(app, tenant, job, _Reject(404, "Unknown job.", "unknown-job"))


def _authenticate(
    ext: QStash, req: Request, tenant: str, job: str, suffix: str
) -> tuple[Tenant, Job, bytes]:
    """Read the body within the cap, verify it, then look up tenant and job."""
    state = ext._get_state()
    settings = state.settings
    body = _read_body(req, settings.max_body_size)

    record = state.tenants.get(tenant)

    if record is None and TENANT_ID_RE.match(tenant):
        record = ext.find_tenant(tenant)

    keys_from = record if record is not None else state.tenants[settings.default_tenant]
    url = build_url(settings, keys_from, job, tenant_id=tenant) + suffix

    try:
        claims = verify(
            req.environ.get("HTTP_UPSTASH_SIGNATURE"),
            body,
            url=url,
            keys=keys_from.signing_keys,
            leeway=settings.clock_leeway,
        )
    except SignatureError as exc:
        raise _Reject(401, "Invalid signature.", exc.reason) from None

    if record is None:
        raise _Reject(404, "Unknown tenant.", "unknown-tenant")

    handler = ext.jobs.get(job)

    if handler is None:
        raise _Reject(404, "Unknown job.", "unknown-job")

    # A token is good for one attempt: QStash signs every attempt afresh, so a
    # token seen before is a replay, even with another message id.
    if not _first_use(state.store, tenant, claims, settings.clock_leeway):
        raise _Reject(401, "Invalid signature.", "replayed")

    return record, handler, body


def _read_body(req: Request, cap: int) -> bytes:
    """Read the raw body, refusing more than ``cap`` bytes before reading them.

    A declared length over the cap is refused at once; a streamed body with no
    declared length is read in chunks and refused as soon as it passes the cap.
    """
    declared = req.content_length

    if declared is not None:
        if declared > cap:
            raise _Reject(413, "The body is larger than the limit.", "too-large")

        # The server delivers exactly the declared length, so the raw input is
        # read directly; Werkzeug's stream wrapper costs more than the read.
        body: bytes = req.environ["wsgi.input"].read(declared)
        return body

    chunks: list[bytes] = []
    size = 0

    while True:
        chunk = req.stream.read(min(65536, cap + 1 - size))

        if not chunk:
            return b"".join(chunks)

        chunks.append(chunk)
        size += len(chunk)

        if size > cap:
            raise _Reject(413, "The body is larger than the limit.", "too-large")


def _first_use(
    store: IdempotencyStore, tenant: str, claims: Claims, leeway: float
) -> bool:
    """Record the token id until the token expires; ``False`` if already seen."""
    lifetime = max(1.0, claims.exp + leeway - time.time())
    claim = store.claim(f"{tenant}:jti:{claims.jti}", lease=lifetime, retention=0)
    return claim.state is ClaimState.CLAIMED


def _parse(handler: Job, tenant: str, body: bytes) -> tuple[t.Any, dict[str, t.Any]]:
    """Check the envelope and the payload; anything wrong here is final (489)."""
    envelope = _load_json(body)

    if (
        not isinstance(envelope, dict)
        or envelope.get("v") != ENVELOPE_VERSION
        or not isinstance(envelope.get("job"), str)
        or not isinstance(envelope.get("tenant"), str)
        or "payload" not in envelope
    ):
        raise _Reject(
            489,
            f"The body is not a version {ENVELOPE_VERSION} job envelope.",
            "envelope",
        )

    if envelope["tenant"] != tenant or envelope["job"] != handler.name:
        raise _Reject(489, "The body is for another tenant or job.", "mismatch")

    try:
        payload = handler.load_payload(envelope["payload"])
    except ValidationError as exc:
        raise _Reject(
            489, "The payload does not match the job's schema.", "schema"
        ) from exc

    return payload, envelope


def _load_json(body: bytes) -> t.Any:
    try:
        return json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise _Reject(489, "The body is not UTF-8 JSON.", "json") from None


def _run(
    ext: QStash,
    app: t.Any,
    tenant: Tenant,
    handler: Job,
    payload: t.Any,
    ctx: JobContext,
) -> Response:
    key = f"{ctx.tenant}:{ctx.message_id}"
    lease = handler.timeout + 30 if handler.timeout is not None else ext.settings.lease
    claim = ext.store.claim(key, lease=lease)

    if claim.state is ClaimState.DONE:
        logger.info("Skipped job %s message %s: already done", ctx.job, ctx.message_id)
        signals.send(signals.job_skipped, app, **_ids(ctx), reason="done")
        return Response(
            claim.result or '{"status":"done"}', 200, mimetype="application/json"
        )

    if claim.state is ClaimState.BUSY:
        logger.info(
            "Deferred job %s message %s: running elsewhere", ctx.job, ctx.message_id
        )
        signals.send(signals.job_skipped, app, **_ids(ctx), reason="busy")
        return _json(
            {"error": "This message is running elsewhere."},
            409,
            {"Retry-After": str(max(1, claim.retry_after))},
        )

    assert claim.token is not None
    g._qstash_tenant = tenant
    g._qstash_context = ctx
    signals.send(signals.job_received, app, **_ids(ctx), retried=ctx.retried)
    started = time.perf_counter()

    try:
        rv = (
            handler.func(payload, ctx)
            if handler.takes_context
            else handler.func(payload)
        )
    except Exception as exc:
        if handler.atomic:
            app.extensions["sqlalchemy"].session.rollback()

        ext.store.release(key, claim.token)
        return _handler_failed(app, ctx, exc, time.perf_counter() - started)

    duration = time.perf_counter() - started
    result = _result_body(ctx, rv)

    if handler.atomic:
        if not _complete_atomically(app, ext.store, key, claim.token, result):
            logger.warning(
                "Job %s message %s outlived its lease of %s s and was rolled back;"
                " raise the job's timeout",
                ctx.job,
                ctx.message_id,
                lease,
            )
            return _json(
                {"error": "This message was taken over by another delivery."},
                409,
                {"Retry-After": "1"},
            )
    elif not ext.store.complete(key, claim.token, result=result):
        logger.warning(
            "Job %s message %s outlived its lease of %s s; raise the job's timeout",
            ctx.job,
            ctx.message_id,
            lease,
        )

    logger.info(
        "Ran job %s for tenant %s, message %s, in %.3f s",
        ctx.job,
        ctx.tenant,
        ctx.message_id,
        duration,
    )
    signals.send(signals.job_finished, app, **_ids(ctx), result=rv, duration=duration)
    return Response(result, 200, mimetype="application/json")


def _complete_atomically(
    app: t.Any, store: IdempotencyStore, key: str, token: str, result: str
) -> bool:
    """Commit the app's session with the completion, or roll both back."""
    session = app.extensions["sqlalchemy"].session

    try:
        done = t.cast(SQLAlchemyStore, store).complete(
            key, token, result=result, connection=session
        )

        if not done:
            session.rollback()
            return False

        session.commit()
    except Exception:
        session.rollback()
        raise

    return True


def _handler_failed(
    app: t.Any, ctx: JobContext, exc: Exception, duration: float
) -> Response:
    retryable = not isinstance(exc, JobControl) or exc.retryable
    signals.send(
        signals.job_failed,
        app,
        **_ids(ctx),
        error=exc,
        retryable=retryable,
        duration=duration,
    )

    if isinstance(exc, NonRetryableError):
        logger.warning(
            "Job %s message %s failed for good: %s", ctx.job, ctx.message_id, exc
        )
        return _json(
            {"error": "The job failed and must not be retried."},
            489,
            {"Upstash-NonRetryable-Error": "true"},
        )

    if isinstance(exc, RetryLater):
        logger.info(
            "Job %s message %s asked to retry in %d s",
            ctx.job,
            ctx.message_id,
            exc.seconds,
        )
        return _json(
            {"error": "The job asked to be retried later."},
            503,
            {"Retry-After": str(exc.seconds)},
        )

    logger.exception(
        "Job %s for tenant %s raised on message %s (attempt %d)",
        ctx.job,
        ctx.tenant,
        ctx.message_id,
        ctx.retried + 1,
    )
    return _json({"error": "The job raised an exception."}, 500)


def _rejected(app: t.Any, tenant: str, job: str, rv: _Reject) -> Response:
    if rv.status == 401:
        logger.warning(
            "Rejected a delivery to job %s of tenant %s: signature check %s failed",
            job,
            tenant,
            rv.reason,
        )
        signals.send(
            signals.signature_rejected, app, tenant=tenant, job=job, reason=rv.reason
        )
    else:
        logger.warning(
            "Refused a delivery to job %s of tenant %s with %d: %s",
            job,
            tenant,
            rv.status,
            rv.reason,
        )
        signals.send(
            signals.delivery_rejected,
            app,
            tenant=tenant,
            job=job,
            status=rv.status,
            reason=rv.reason,
        )

    headers = dict(rv.headers)

    if rv.status == 489:
        headers["Upstash-NonRetryable-Error"] = "true"

    return _json({"error": rv.message}, rv.status, headers)


def _result_body(ctx: JobContext, rv: t.Any) -> str:
    try:
        return _ENCODER.encode({"status": "done", "result": rv})
    except (TypeError, ValueError):
        logger.warning(
            "Job %s returned a value that is not JSON-serialisable; answering null",
            ctx.job,
        )
        return '{"status":"done","result":null}'


def _dead_job(tenant: str, job: str, report: dict[str, t.Any]) -> DeadJob:
    payload: t.Any = None
    source = _b64(report.get("sourceBody"))

    try:
        envelope = json.loads(source)
        payload = envelope.get("payload") if isinstance(envelope, dict) else None
    except ValueError:
        pass

    status = report.get("status")
    retried = report.get("retried")
    return DeadJob(
        job=job,
        tenant=tenant,
        payload=payload,
        status=status if isinstance(status, int) else 0,
        response_body=_b64(report.get("body")),
        message_id=str(report.get("sourceMessageId") or ""),
        dlq_id=str(report["dlqId"]) if report.get("dlqId") else None,
        retried=retried if isinstance(retried, int) else 0,
    )


def _b64(value: t.Any) -> str:
    if not isinstance(value, str):
        return ""

    try:
        return base64.b64decode(value, validate=False).decode("utf-8", "replace")
    except (binascii.Error, ValueError):
        return ""


def _ids(ctx: JobContext) -> dict[str, t.Any]:
    return {"job": ctx.job, "tenant": ctx.tenant, "message_id": ctx.message_id}


def _int_header(environ: dict[str, t.Any], key: str) -> int:
    try:
        return max(0, int(environ.get(key, "0")))
    except ValueError:
        return 0


def _enqueued_at(envelope: dict[str, t.Any]) -> datetime.datetime | None:
    value = envelope.get("enqueued_at")

    if not isinstance(value, int) or isinstance(value, bool):
        return None

    try:
        return datetime.datetime.fromtimestamp(value / 1000, datetime.UTC)
    except (OverflowError, OSError, ValueError):
        return None


def _json(
    data: dict[str, t.Any], status: int, headers: dict[str, str] | None = None
) -> Response:
    return Response(
        _ENCODER.encode(data),
        status,
        headers=headers,
        mimetype="application/json",
    )
