"""A small multi-tenant SaaS app that runs its background jobs on QStash.

Two tenants, ``acme`` and ``globex``, sign users up through ``POST /signup``
with an ``X-Tenant-ID`` header. Each signup enqueues a welcome email; an
invoice job shows :class:`~flask_qstash.NonRetryableError` sending a bad run
to the dead-letter queue; ``GET /`` shows what ran for which tenant.

With no QStash credentials the app uses the embedded dev server, so
``python -m example_app`` runs the whole flow on one machine.
"""

from __future__ import annotations

import threading
import time
import typing as t

from flask import Flask
from flask import jsonify
from flask import render_template_string
from flask import request
from flask import url_for
from marshmallow import fields
from marshmallow import validate
from marshmallow import ValidationError

from flask_qstash import current_tenant
from flask_qstash import DeadJob
from flask_qstash import HeaderResolver
from flask_qstash import JobContext
from flask_qstash import NonRetryableError
from flask_qstash import QStash
from flask_qstash import TenantMiddleware
from flask_qstash import UnknownTenantError

qstash = QStash()


class Activity:
    """What the jobs did, per tenant, for the dashboard and the demo run."""

    def __init__(self) -> None:
        self.events: list[dict[str, t.Any]] = []
        self._changed = threading.Condition()

    def record(self, **event: t.Any) -> None:
        with self._changed:
            self.events.append({"at": time.time(), **event})
            self._changed.notify_all()

    def wait_for(
        self, predicate: t.Callable[[list[dict[str, t.Any]]], bool], timeout: float
    ) -> bool:
        """Wait until ``predicate(events)`` holds, at most ``timeout`` seconds."""
        with self._changed:
            return self._changed.wait_for(lambda: predicate(self.events), timeout)


activity = Activity()


@qstash.job(
    "welcome-email",
    schema={
        "email": fields.Email(required=True),
        "name": fields.String(required=True, validate=validate.Length(min=1, max=100)),
    },
    retries=3,
)
def welcome_email(payload: dict[str, t.Any], ctx: JobContext) -> dict[str, t.Any]:
    """Pretend to send a welcome email; the result is the delivery's answer.

    ``url_for`` builds the email's link from ``QSTASH_PUBLIC_URL``.
    """
    link = url_for("dashboard", _external=True)
    activity.record(
        job=ctx.job,
        tenant=ctx.tenant,
        message_id=ctx.message_id,
        email=payload["email"],
        link=link,
    )
    return {"sent_to": payload["email"], "link": link}


@qstash.job(
    "invoice",
    schema={"amount_cents": fields.Integer(required=True), "email": fields.Email()},
    retries=2,
)
def invoice(payload: dict[str, t.Any], ctx: JobContext) -> dict[str, t.Any]:
    """Bill a customer; a non-positive amount can never succeed."""
    if payload["amount_cents"] <= 0:
        raise NonRetryableError("An invoice needs a positive amount.")

    activity.record(
        job=ctx.job,
        tenant=ctx.tenant,
        message_id=ctx.message_id,
        amount=payload["amount_cents"],
    )
    return {"billed": payload["amount_cents"]}


@qstash.job("daily-report", cron="CRON_TZ=Europe/Paris 0 7 * * *")
def daily_report(payload: t.Any, ctx: JobContext) -> None:
    """Summarise yesterday; ``flask qstash sync-schedules`` creates the schedule."""
    activity.record(job=ctx.job, tenant=ctx.tenant, message_id=ctx.message_id)


@qstash.on_failure
def report_dead_job(dead: DeadJob) -> None:
    """QStash gave up on a run: record it where an operator will look."""
    activity.record(
        job=dead.job,
        tenant=dead.tenant,
        message_id=dead.message_id,
        dead=True,
        status=dead.status,
        dlq_id=dead.dlq_id,
    )


_DASHBOARD = """<!doctype html>
<title>Flask-QStash example</title>
<h1>Jobs that ran</h1>
<table border="1" cellpadding="4">
<tr><th>tenant</th><th>job</th><th>message</th><th>detail</th></tr>
{% for e in events %}
<tr><td>{{ e.tenant }}</td><td>{{ e.job }}</td><td>{{ e.message_id }}</td>
<td>{{ "dead-lettered" if e.dead else (e.email or e.amount or "") }}</td></tr>
{% else %}
<tr><td colspan="4">Nothing yet: POST /signup with an X-Tenant-ID header.</td></tr>
{% endfor %}
</table>
"""


def create_app(config: t.Mapping[str, t.Any] | None = None) -> Flask:
    """Create the example app.

    :param config: Overrides for ``app.config``, such as ``QSTASH_PUBLIC_URL``.
    """
    app = Flask(__name__)
    app.config.update(
        QSTASH_TENANTS={"acme": {}, "globex": {}},
        QSTASH_DEV_SERVER=True,
    )
    app.config.update(config or {})
    qstash.init_app(app)
    app.wsgi_app = TenantMiddleware(  # type: ignore[method-assign]
        app.wsgi_app,
        resolver=HeaderResolver("X-Tenant-ID"),
        exclude=[app.config.get("QSTASH_URL_PREFIX", "/qstash")],
    )

    @app.errorhandler(ValidationError)
    def invalid_payload(error: ValidationError) -> t.Any:
        return jsonify(error="Invalid input.", fields=error.messages), 400

    @app.errorhandler(UnknownTenantError)
    def unknown_tenant(error: UnknownTenantError) -> t.Any:
        return jsonify(error="Unknown tenant: send a known X-Tenant-ID header."), 404

    @app.post("/signup")
    def signup() -> t.Any:
        data = request.get_json(force=True)
        result = welcome_email.enqueue(
            {"email": data.get("email"), "name": data.get("name")}
        )
        tenant = current_tenant.id if current_tenant is not None else None
        return jsonify(tenant=tenant, message_id=result.message_id), 202

    @app.post("/invoices")
    def create_invoice() -> t.Any:
        data = request.get_json(force=True)
        result = invoice.enqueue(
            {"amount_cents": data.get("amount_cents"), "email": data.get("email")}
        )
        return jsonify(message_id=result.message_id), 202

    @app.get("/")
    def dashboard() -> str:
        tenant = request.args.get("tenant")
        events = [e for e in activity.events if tenant in (None, e["tenant"])]
        return render_template_string(_DASHBOARD, events=events)

    return app
