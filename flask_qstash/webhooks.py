"""Answering the deliveries QStash sends.

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

Where deliveries are answered
-----------------------------

:meth:`QStash.init_app <flask_qstash.QStash.init_app>` registers a Flask route
per job, so ``url_for``, ``flask routes`` and ``flask qstash list-jobs`` see
them, and wraps ``app.wsgi_app`` in :class:`DeliveryMiddleware`. The
middleware answers ``POST`` requests under ``QSTASH_URL_PREFIX`` itself, inside
an application context, before Flask's request dispatch; a path that names no
job is answered 404 once its signature is checked. Every other request goes on
to Flask. When the app has ``POST`` routes of its own under the prefix, Flask's
router is asked first, so a route more specific than a job's keeps its
requests. The routes' views run the same checks, for a request that reaches
them by another way.

A delivery is a signed call from a machine, not a visit, so the app's
``before_request``, ``after_request`` and ``teardown_request`` functions and its
error handlers are not run for it: CSRF checks, login redirects and rate
limits written for browsers never turn a delivery away. The job's
application context is popped when the answer is ready, so
``teardown_appcontext`` functions, such as Flask-SQLAlchemy's session
cleanup, do run. To prepare something for every job, connect to
:data:`~flask_qstash.signals.job_received`.

.. autoclass:: DeliveryMiddleware
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
from flask import request
from flask import Response
from marshmallow import ValidationError
from werkzeug.exceptions import HTTPException
from werkzeug.http import HTTP_STATUS_CODES
from werkzeug.wsgi import get_input_stream

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
    from _typeshed.wsgi import StartResponse
    from _typeshed.wsgi import WSGIApplication
    from _typeshed.wsgi import WSGIEnvironment
    from flask import Flask
    from flask.ctx import AppContext
    from werkzeug.routing import MapAdapter

    from .config import Tenant
    from .extension import _State
    from .extension import QStash
    from .jobs import Job

logger = logging.getLogger(__name__)

# One encoder for every answer; ``json.dumps`` with options builds one per call.
_ENCODER = json.JSONEncoder(separators=(",", ":"))

_DELIVER = "deliver"
_FAILED = "failed"
_UNKNOWN = "unknown"


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


class Answer(t.NamedTuple):
    """The answer to one delivery: status, JSON body and extra headers.

    :meta private:
    """

    status: int
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()


class _Reject(Exception):
    """Stops a delivery early with an answer; internal to this module."""

    def __init__(
        self,
        status: int,
        message: str,
        reason: str,
        *,
        headers: tuple[tuple[str, str], ...] = (),
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.reason = reason
        self.headers = headers


class DeliveryMiddleware:
    """Answer ``POST`` requests to job routes before Flask's request dispatch.

    :meth:`QStash.init_app <flask_qstash.QStash.init_app>` installs it as
    ``app.wsgi_app``; there is no need to add it by hand. Middleware added to
    ``app.wsgi_app`` afterwards, such as ``ProxyFix`` or
    :class:`~flask_qstash.TenantMiddleware`, wraps it and still sees every
    request.

    A delivery runs in an application context of its own. When neither the
    app's ``SERVER_NAME`` nor a request says where the app lives, that context
    builds URLs from the tenant's public origin, so ``url_for(...,
    _external=True)`` in a handler gives links users can open.

    :param app: The Flask app whose jobs are answered.
    :param wsgi_app: The WSGI callable that answers every other request.
    :param ext: The app's extension.
    """

    def __init__(self, app: Flask, wsgi_app: WSGIApplication, ext: QStash) -> None:
        self.app = app
        self.wsgi_app = wsgi_app
        self.ext = ext
        self._state = ext._state[app]
        self._prefix = self._state.settings.url_prefix + "/"
        self._contested: bool | None = None

    def __call__(
        self, environ: WSGIEnvironment, start_response: StartResponse
    ) -> t.Iterable[bytes]:
        path: str = environ.get("PATH_INFO", "")

        if not path.startswith(self._prefix) or environ["REQUEST_METHOD"] != "POST":
            return self.wsgi_app(environ, start_response)

        route = self._route(path)

        if route is None:
            return self.wsgi_app(environ, start_response)

        app = self.app

        # Serving has begun: Flask refuses new routes from here on, so the
        # app's routes can be looked at once.
        app._got_first_request = True

        if self._contested is None:
            self._contested = self._app_routes_under_prefix()

        if self._contested and not self._flask_agrees(environ):
            return self.wsgi_app(environ, start_response)

        tenant, job, kind = route

        with app.app_context() as ctx:
            rv = _handle(app, self._state, environ, tenant, job, kind, ctx)

        body = rv.body
        start_response(
            _status_line(rv.status),
            [
                ("Content-Type", "application/json"),
                ("Content-Length", str(len(body))),
                *rv.headers,
            ],
        )
        return [body]

    def _route(self, path: str) -> tuple[str, str, str] | None:
        """Return ``(tenant, job, kind)`` for a path under the prefix.

        ``kind`` says which view Flask would pick: a known job's delivery or
        failure callback, or the 404 of an unknown one. Paths with empty or
        non-ASCII segments go on to Flask, for its usual answer.
        """
        parts = path[len(self._prefix) :].split("/")

        if len(parts) < 2 or "" in parts or not path.isascii():
            return None

        jobs = self.ext._jobs

        if len(parts) == 2 and parts[1] in jobs:
            return parts[0], parts[1], _DELIVER

        if len(parts) == 3 and parts[2] == "failed" and parts[1] in jobs:
            return parts[0], parts[1], _FAILED

        return parts[0], "/".join(parts[1:]), _UNKNOWN

    def _app_routes_under_prefix(self) -> bool:
        """Whether the app has ``POST`` routes of its own under the prefix.

        Such a route may be more specific than a job's, such as
        ``/qstash/admin/email`` beside the job ``email``; then every delivery
        asks Flask's router first, so the app's route keeps its requests.
        """
        views = self.app.view_functions
        ours = (deliver, failed, unknown)
        return any(
            rule.rule.startswith(self._prefix)
            and views.get(rule.endpoint) not in ours
            and (rule.methods is None or "POST" in rule.methods)
            for rule in self.app.url_map.iter_rules()
        )

    def _flask_agrees(self, environ: WSGIEnvironment) -> bool:
        """Whether Flask's router sends this request to one of the job views."""
        app = self.app
        adapter = app.create_url_adapter(app.request_class(environ))

        if adapter is None:
            return False

        try:
            endpoint, _ = adapter.match(method="POST")
        except HTTPException:
            return False

        return app.view_functions.get(endpoint) in (deliver, failed, unknown)


#: Most origins whose URL adapters are kept; more are bound per delivery.
_MAX_ADAPTERS = 1000


def _bind_urls(app: Flask, state: _State, tenant: Tenant) -> MapAdapter | None:
    """Return a URL adapter for the tenant's public origin, if one is known."""
    origin = tenant.public_url or state.settings.public_url

    if origin is None:
        return None

    adapters = state.url_adapters
    adapter = adapters.get(origin)

    if adapter is None:
        scheme, _, rest = origin.partition("://")
        host, _, root = rest.partition("/")
        adapter = app.url_map.bind(host, "/" + root, url_scheme=scheme)

        if len(adapters) < _MAX_ADAPTERS:
            adapters[origin] = adapter

    return adapter


@functools.cache
def _status_line(status: int) -> str:
    return f"{status} {HTTP_STATUS_CODES.get(status, 'Unknown').upper()}"


def deliver(tenant: str, job: str) -> Response:
    """The route of every job: run one delivery of ``job`` for ``tenant``."""
    return _respond(tenant, job, _DELIVER)


def failed(tenant: str, job: str) -> Response:
    """The failure callback route of every job: report a dead run."""
    return _respond(tenant, job, _FAILED)


def unknown(tenant: str, job: str) -> Response:
    """The route of every other path under the prefix: answer 404.

    The signature is still checked first, against the tenant's keys (or the
    default account's for unknown tenants), so unsigned callers cannot probe
    which tenants and jobs exist.
    """
    return _respond(tenant, job, _UNKNOWN)


def _respond(tenant: str, job: str, kind: str) -> Response:
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    state = app.extensions["qstash"]._state[app]
    rv = _handle(app, state, request.environ, tenant, job, kind)
    return Response(rv.body, rv.status, rv.headers, mimetype="application/json")


def _handle(
    app: Flask,
    state: _State,
    environ: WSGIEnvironment,
    tenant: str,
    job: str,
    kind: str,
    app_ctx: AppContext | None = None,
) -> Answer:
    """Answer one request to a job route, inside the app's context.

    :param app_ctx: The application context :class:`DeliveryMiddleware`
        pushed for the delivery; handlers get URLs built from the public
        origin through it. ``None`` when a Flask view answers.

    Handler errors are answered by :func:`_run`; this also catches the rest,
    such as an idempotency store or a tenant loader that is down, so QStash
    retries and no answer ever carries a stack trace.
    """
    try:
        if kind == _DELIVER:
            return _deliver(app, state, environ, tenant, job, app_ctx)

        if kind == _FAILED:
            return _failed(app, state, environ, tenant, job, app_ctx)

        _authenticate(app, state, environ, tenant, job, "")
        raise _Reject(404, "Unknown job.", "unknown-job")
    except _Reject as rv:
        return _rejected(app, tenant, job, rv)
    except Exception:
        logger.exception(
            "Could not process a delivery to job %s of tenant %s", job, tenant
        )
        return _json({"error": "The delivery could not be processed."}, 500)


def _deliver(
    app: Flask,
    state: _State,
    environ: WSGIEnvironment,
    tenant: str,
    job: str,
    app_ctx: AppContext | None,
) -> Answer:
    record, handler, body = _authenticate(app, state, environ, tenant, job, "")
    payload, envelope = _parse(handler, tenant, body)
    message_id = environ.get("HTTP_UPSTASH_MESSAGE_ID")

    if not message_id:
        raise _Reject(489, "The 'Upstash-Message-Id' header is missing.", "message-id")

    ctx = JobContext(
        job,
        tenant,
        message_id,
        _int_header(environ, "HTTP_UPSTASH_RETRIED"),
        environ.get("HTTP_UPSTASH_SCHEDULE_ID") or None,
        _enqueued_at(envelope),
    )

    if app_ctx is not None and app_ctx.url_adapter is None:
        app_ctx.url_adapter = _bind_urls(app, state, record)

    return _run(app, state, record, handler, payload, ctx)


def _failed(
    app: Flask,
    state: _State,
    environ: WSGIEnvironment,
    tenant: str,
    job: str,
    app_ctx: AppContext | None,
) -> Answer:
    record, _, body = _authenticate(app, state, environ, tenant, job, "/failed")
    report = _load_json(body)

    if not isinstance(report, dict) or not report.get("sourceMessageId"):
        raise _Reject(
            489,
            "The failure report is not a JSON object with 'sourceMessageId'.",
            "envelope",
        )

    dead = _dead_job(tenant, job, report)
    store = state.store
    key = f"{tenant}:dead:{dead.message_id}"
    claim = store.claim(key, lease=state.settings.lease)

    if claim.state is ClaimState.DONE:
        return _DONE

    if claim.state is ClaimState.BUSY:
        return _json(
            {"error": "This failure is being handled."},
            409,
            (("Retry-After", str(claim.retry_after)),),
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

    if app_ctx is not None and app_ctx.url_adapter is None:
        app_ctx.url_adapter = _bind_urls(app, state, record)

    try:
        signals.send(signals.job_dead, app, **dead.__dict__)
        app.extensions["qstash"].run_failure_hooks(dead)
    except Exception:
        store.release(key, claim.token)
        logger.exception("A failure hook for job %s raised", job)
        return _json({"error": "A failure hook raised."}, 500)

    store.complete(key, claim.token)
    return _DONE


def _authenticate(
    app: Flask,
    state: _State,
    environ: WSGIEnvironment,
    tenant: str,
    job: str,
    suffix: str,
) -> tuple[Tenant, Job, bytes]:
    """Read the body within the cap, verify it, then look up tenant and job."""
    settings = state.settings
    body = _read_body(environ, settings.max_body_size)
    record = state.tenants.get(tenant)

    if record is None and TENANT_ID_RE.match(tenant):
        record = app.extensions["qstash"].find_tenant(tenant)

    keys_from = record if record is not None else state.tenants[settings.default_tenant]
    url = build_url(settings, keys_from, job, tenant_id=tenant) + suffix

    try:
        claims = verify(
            environ.get("HTTP_UPSTASH_SIGNATURE"),
            body,
            url=url,
            keys=keys_from.signing_keys,
            leeway=settings.clock_leeway,
        )
    except SignatureError as exc:
        raise _Reject(401, "Invalid signature.", exc.reason) from None

    if record is None:
        raise _Reject(404, "Unknown tenant.", "unknown-tenant")

    handler = app.extensions["qstash"]._jobs.get(job)

    if handler is None:
        raise _Reject(404, "Unknown job.", "unknown-job")

    # A token is good for one attempt: QStash signs every attempt afresh, so a
    # token seen before is a replay, even with another message id.
    if not _first_use(state.store, tenant, claims, settings.clock_leeway):
        raise _Reject(401, "Invalid signature.", "replayed")

    return record, handler, body


def _read_body(environ: WSGIEnvironment, cap: int) -> bytes:
    """Read the raw body, refusing more than ``cap`` bytes before reading them.

    A declared length over the cap is refused at once; a streamed body with no
    declared length is read in chunks and refused as soon as it passes the cap.
    """
    declared = environ.get("CONTENT_LENGTH")

    if declared:
        try:
            length = max(0, int(declared))
        except ValueError:
            length = None

        if length is not None:
            if length > cap:
                raise _Reject(413, "The body is larger than the limit.", "too-large")

            # The server delivers exactly the declared length.
            body: bytes = environ["wsgi.input"].read(length)
            return body

    stream = get_input_stream(environ)
    chunks: list[bytes] = []
    size = 0

    while True:
        chunk = stream.read(min(65536, cap + 1 - size))

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
    app: Flask,
    state: _State,
    tenant: Tenant,
    handler: Job,
    payload: t.Any,
    ctx: JobContext,
) -> Answer:
    store = state.store
    key = f"{ctx.tenant}:{ctx.message_id}"
    lease = (
        handler.timeout + 30 if handler.timeout is not None else state.settings.lease
    )
    claim = store.claim(key, lease=lease)

    if claim.state is ClaimState.DONE:
        logger.info("Skipped job %s message %s: already done", ctx.job, ctx.message_id)
        signals.send(signals.job_skipped, app, **_ids(ctx), reason="done")
        return Answer(200, (claim.result or '{"status":"done"}').encode())

    if claim.state is ClaimState.BUSY:
        logger.info(
            "Deferred job %s message %s: running elsewhere", ctx.job, ctx.message_id
        )
        signals.send(signals.job_skipped, app, **_ids(ctx), reason="busy")
        return _json(
            {"error": "This message is running elsewhere."},
            409,
            (("Retry-After", str(max(1, claim.retry_after))),),
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

        store.release(key, claim.token)
        return _handler_failed(app, ctx, exc, time.perf_counter() - started)

    duration = time.perf_counter() - started
    result = _result_body(ctx, rv)

    if handler.atomic:
        if not _complete_atomically(app, store, key, claim.token, result):
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
                (("Retry-After", "1"),),
            )
    elif not store.complete(key, claim.token, result=result):
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
    return Answer(200, result.encode())


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
    app: Flask, ctx: JobContext, exc: Exception, duration: float
) -> Answer:
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
            _NON_RETRYABLE,
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
            (("Retry-After", str(exc.seconds)),),
        )

    logger.exception(
        "Job %s for tenant %s raised on message %s (attempt %d)",
        ctx.job,
        ctx.tenant,
        ctx.message_id,
        ctx.retried + 1,
    )
    return _json({"error": "The job raised an exception."}, 500)


def _rejected(app: Flask, tenant: str, job: str, rv: _Reject) -> Answer:
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

    headers = rv.headers + _NON_RETRYABLE if rv.status == 489 else rv.headers
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
    data: dict[str, t.Any], status: int, headers: tuple[tuple[str, str], ...] = ()
) -> Answer:
    return Answer(status, _ENCODER.encode(data).encode(), headers)


_NON_RETRYABLE = (("Upstash-NonRetryable-Error", "true"),)
_DONE = Answer(200, b'{"status":"done"}')
