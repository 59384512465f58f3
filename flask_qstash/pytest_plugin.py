"""Pytest fixtures for testing Flask-QStash jobs offline.

Installing Flask-QStash registers this plugin with pytest, so the fixtures are
available in every test without imports:

- :func:`qstash_deliver` posts signed deliveries to your app through its test
  client, the way QStash would. Each one passes signature verification, the
  envelope and schema checks, the idempotency claim and the handler, exactly as
  in production.
- :func:`qstash_dev_server` runs the QStash-compatible dev server around one
  test, for tests that enqueue a job and want it really delivered.

See :doc:`/testing` for examples.
"""

from __future__ import annotations

import base64
import json
import typing as t
import uuid
import warnings

import pytest

if t.TYPE_CHECKING:  # pragma: no cover
    from flask import Flask
    from flask.testing import FlaskClient
    from werkzeug.test import TestResponse

    from .config import Tenant
    from .devserver import DevServer
    from .extension import QStash
    from .jobs import Job

__all__ = ["Deliverer", "qstash_deliver", "qstash_dev_server"]

#: How many retries QStash makes when a message does not say.
_QSTASH_DEFAULT_RETRIES = 3


class Deliverer:
    """Posts signed deliveries to an app, the way QStash does.

    The :func:`qstash_deliver` fixture returns one for the ``app`` fixture.
    Calling it builds the envelope :meth:`Job.enqueue <flask_qstash.Job.enqueue>`
    would publish, signs it with the tenant's current signing key for the URL
    in ``QSTASH_PUBLIC_URL``, and posts it through the app's test client. The
    payload is not checked first, so a test can deliver one that no longer
    matches the job's schema, as a message published before a deploy might.

    :param app: The app to deliver to; it must have the extension.
    """

    def __init__(self, app: Flask) -> None:
        ext = app.extensions.get("qstash")

        if ext is None:
            raise RuntimeError(
                f"App {app.name!r} has no QStash extension, so there is nothing to"
                " deliver to. Call 'qstash.init_app(app)' before returning it."
            )

        #: The app deliveries go to.
        self.app = app

        #: The extension on :attr:`app`.
        self.extension: QStash = ext

        self._client: FlaskClient = app.test_client()

    def __call__(
        self,
        job: str | Job,
        payload: t.Any = None,
        *,
        tenant: str | None = None,
        message_id: str | None = None,
        retried: int = 0,
        schedule_id: str | None = None,
        key: str | None = None,
        headers: t.Mapping[str, str] | None = None,
    ) -> TestResponse:
        """Deliver one run of ``job`` and return the app's answer.

        .. code-block:: python

            rv = qstash_deliver("email", {"to": "a@example.com"})
            assert rv.status_code == 200

        :param job: The job or its name.
        :param payload: The payload, sent as given.
        :param tenant: The tenant id; the default tenant if omitted.
        :param message_id: The ``Upstash-Message-Id``; a fresh one if omitted.
            Pass the same id twice to test a redelivery.
        :param retried: The ``Upstash-Retried`` count, 0 for a first attempt.
        :param schedule_id: The ``Upstash-Schedule-Id``, as a cron schedule
            sends it.
        :param key: Sign with this key instead of the tenant's current one,
            such as its next key or a wrong one.
        :param headers: More headers, replacing those above.
        """
        with self.app.app_context():
            handler, record, origin = self._resolve(job, tenant)
            url = handler.url(record)
            body = handler._envelope(payload, record).encode()

        sent = {
            "Upstash-Message-Id": message_id or f"msg_{uuid.uuid4().hex}",
            "Upstash-Retried": str(retried),
        }

        if schedule_id is not None:
            sent["Upstash-Schedule-Id"] = schedule_id

        sent.update(headers or {})
        return self._post(record, origin, url, body, sent, key=key)

    def failure(
        self,
        job: str | Job,
        payload: t.Any = None,
        *,
        tenant: str | None = None,
        status: int = 500,
        body: str = "The job raised an exception.",
        dlq_id: str | None = None,
        message_id: str | None = None,
    ) -> TestResponse:
        """Report that QStash gave up on a run of ``job``; return the answer.

        Posts the signed failure callback QStash sends to the job's ``/failed``
        route once its retries are spent, which calls the
        :meth:`~flask_qstash.QStash.on_failure` hooks.

        .. code-block:: python

            rv = qstash_deliver.failure("email", {"to": "a@example.com"})
            assert rv.status_code == 200

        :param job: The job or its name.
        :param payload: The payload of the failed run.
        :param tenant: The tenant id; the default tenant if omitted.
        :param status: The status of the last delivery attempt.
        :param body: The body of the last answer.
        :param dlq_id: The dead-letter queue entry of the run.
        :param message_id: The id of the failed message; a fresh one if
            omitted.
        """
        with self.app.app_context():
            handler, record, origin = self._resolve(job, tenant)
            url = handler.url(record)
            envelope = handler._envelope(payload, record).encode()
            retries = handler._retries(record, None)

        if retries is None:
            retries = _QSTASH_DEFAULT_RETRIES

        report: dict[str, t.Any] = {
            "status": status,
            "header": {},
            "body": base64.b64encode(body.encode()).decode("ascii"),
            "retried": retries,
            "maxRetries": retries,
            "sourceMessageId": message_id or f"msg_{uuid.uuid4().hex}",
            "url": url,
            "method": "POST",
            "sourceBody": base64.b64encode(envelope).decode("ascii"),
        }

        if dlq_id is not None:
            report["dlqId"] = dlq_id

        # QStash publishes the report as a message of its own.
        sent = {"Upstash-Message-Id": f"msg_{uuid.uuid4().hex}"}
        data = json.dumps(report, separators=(",", ":")).encode()
        return self._post(record, origin, url + "/failed", data, sent)

    def _resolve(self, job: str | Job, tenant: str | None) -> tuple[Job, Tenant, str]:
        """Return the job, the tenant and its public origin; needs an app context."""
        ext = self.extension

        if isinstance(job, str):
            handler = ext.get_job(job)
        elif job.extension is ext:
            handler = job
        else:
            raise ValueError(
                f"Job {job.name!r} belongs to another QStash extension than app"
                f" {self.app.name!r}. Deliver jobs declared on the app's extension."
            )

        record = ext.default_tenant() if tenant is None else ext.get_tenant(tenant)
        return handler, record, record.public_url or ext.settings.public_url or ""

    def _post(
        self,
        tenant: Tenant,
        origin: str,
        url: str,
        body: bytes,
        headers: t.Mapping[str, str],
        *,
        key: str | None = None,
    ) -> TestResponse:
        """Sign ``body`` for ``url`` as QStash would for ``tenant`` and post it."""
        from .signing import sign

        key = key if key is not None else tenant.current_signing_key

        if not key:
            raise RuntimeError(
                f"Tenant {tenant.id!r} has no signing key, so no delivery to it can"
                " be signed. Set 'QSTASH_CURRENT_SIGNING_KEY', or the tenant's"
                " 'current_signing_key' in 'QSTASH_TENANTS'."
            )

        # PyJWT warns about short keys; test keys often are, and verifying
        # does not care, so a test signing with one should not fail.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The HMAC key is")
            token = sign(body, url=url, key=key)

        sent = {
            "Content-Type": "application/json",
            "Upstash-Signature": token,
            **headers,
        }

        # Post to the public URL, so the request is the one QStash makes: an
        # origin with a path becomes the script root, as behind a proxy.
        return self._client.post(
            url[len(origin) :], base_url=origin, data=body, headers=sent
        )


@pytest.fixture
def qstash_deliver(request: pytest.FixtureRequest) -> Deliverer:
    """Post signed deliveries to the ``app`` fixture's app; see :class:`Deliverer`.

    Needs an ``app`` fixture that returns your Flask app with the extension,
    the convention pytest-flask uses; pytest-flask itself is not required.

    .. code-block:: python

        def test_email(qstash_deliver):
            rv = qstash_deliver("email", {"to": "a@example.com"}, tenant="acme")
            assert rv.status_code == 200
    """
    try:
        app = request.getfixturevalue("app")
    except pytest.FixtureLookupError:
        pytest.fail(
            "qstash_deliver needs an 'app' fixture returning your Flask app, as"
            " pytest-flask expects. Define one in conftest.py.",
            pytrace=False,
        )

    return Deliverer(app)


@pytest.fixture
def qstash_dev_server() -> t.Iterator[DevServer]:
    """A :class:`~flask_qstash.devserver.DevServer` running for one test.

    It keeps its state in memory and runs retries 100 times faster than
    QStash. Point the app at it with ``QSTASH_URL = server.url``,
    ``QSTASH_TOKEN = server.token`` and its signing keys, serve the app on a
    loopback port named by ``QSTASH_PUBLIC_URL``, and wait for deliveries with
    ``server.wait_idle()``. :doc:`/testing` shows the whole pattern.
    """
    from .devserver import DevServer

    with DevServer(database=":memory:", speed=100) as server:
        yield server
