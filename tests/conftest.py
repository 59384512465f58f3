"""Shared fixtures: an app with the extension, a fake SDK client, signed deliveries.

No fixture here touches the network. Publishing goes to :class:`FakeClient`,
which records every call; deliveries are signed locally with
:func:`flask_qstash.signing.sign` and posted through the Flask test client.
"""

from __future__ import annotations

import json
import os
import typing as t
import uuid
from dataclasses import dataclass
from dataclasses import field

import pytest
from flask import Flask
from flask.testing import FlaskClient
from qstash import QStash as QStashClient
from qstash.message import BatchResponse
from qstash.message import EnqueueResponse
from qstash.message import PublishResponse
from werkzeug.test import Client
from werkzeug.test import TestResponse

from flask_qstash import QStash
from flask_qstash.jobs import ENVELOPE_VERSION
from flask_qstash.signing import sign

# PyJWT warns about HMAC keys shorter than 32 bytes, and warnings are errors.
TOKEN = "qstash_default_token_7Hc2Lx9QeV4mWp8Rt6Yz"
CURRENT_KEY = "sig_default_current_3mJ8kYjw48mhY7kAjqNGcy6"
NEXT_KEY = "sig_default_next_5ZB6DVzB1wjE8S6rZ7eenA8Pdnh"
GLOBEX_TOKEN = "qstash_globex_token_Wq2Lk8Xr4Tn6Yp1Zs9Vb3M"
GLOBEX_CURRENT_KEY = "sig_globex_current_Q7vN2pX9kL4mR8tY3wZ6bC1d"
GLOBEX_NEXT_KEY = "sig_globex_next_H5jK8sD2fG6hJ9kL3zX7cV4bN1m"
PUBLIC_URL = "https://app.example.com"

#: Every secret the config holds; no answer or repr may contain one.
SECRETS = (
    TOKEN,
    CURRENT_KEY,
    NEXT_KEY,
    GLOBEX_TOKEN,
    GLOBEX_CURRENT_KEY,
    GLOBEX_NEXT_KEY,
)


def make_config() -> dict[str, t.Any]:
    """The config every test app starts from.

    ``acme`` shares the default account; ``globex`` brings its own.
    """
    return {
        "TESTING": True,
        "QSTASH_TOKEN": TOKEN,
        "QSTASH_CURRENT_SIGNING_KEY": CURRENT_KEY,
        "QSTASH_NEXT_SIGNING_KEY": NEXT_KEY,
        "QSTASH_PUBLIC_URL": PUBLIC_URL,
        "QSTASH_DEV_SERVER": False,
        "QSTASH_TENANTS": {
            "acme": {},
            "globex": {
                "token": GLOBEX_TOKEN,
                "current_signing_key": GLOBEX_CURRENT_KEY,
                "next_signing_key": GLOBEX_NEXT_KEY,
            },
        },
    }


@dataclass
class Call:
    """One call the fake SDK client received."""

    #: ``"publish"``, ``"enqueue"``, ``"batch"`` or ``"schedule.create"``.
    method: str

    #: The token of the client that made the call.
    token: str

    #: The client's base URL.
    base_url: str | None

    #: The keyword arguments, or ``{"messages": [...]}`` for a batch.
    kwargs: dict[str, t.Any]


class FakeClient:
    """Stands in for ``qstash.QStash``: records calls, answers like QStash.

    Each test gets a fresh subclass from the ``fake_client`` fixture, so
    :attr:`calls` never leaks between tests.
    """

    #: Every call made through any instance, in order.
    calls: t.ClassVar[list[Call]] = []

    #: How many instances were created, one per account.
    instances: t.ClassVar[list[FakeClient]] = []

    #: Message ids by deduplication id, as QStash keeps them.
    messages: t.ClassVar[dict[str, str]] = {}

    def __init__(
        self, token: str, *, retry: t.Any = None, base_url: str | None = None
    ) -> None:
        self.token = token
        self.base_url = base_url
        self.message = _FakeMessages(self)
        self.schedule = _FakeSchedules(self)
        type(self).instances.append(self)

    def record(self, method: str, kwargs: dict[str, t.Any]) -> None:
        type(self).calls.append(Call(method, self.token, self.base_url, kwargs))

    def message_id(self, deduplication_id: str | None) -> tuple[str, bool]:
        """Return the message id for a deduplication id, and whether it existed."""
        messages = type(self).messages
        key = deduplication_id or uuid.uuid4().hex

        if key in messages:
            return messages[key], True

        messages[key] = f"msg_{uuid.uuid4().hex}"
        return messages[key], False


class _FakeMessages:
    def __init__(self, client: FakeClient) -> None:
        self._client = client

    def publish(self, **kwargs: t.Any) -> PublishResponse:
        self._client.record("publish", kwargs)
        message_id, dup = self._client.message_id(kwargs.get("deduplication_id"))
        return PublishResponse(message_id=message_id, deduplicated=dup)

    def enqueue(self, **kwargs: t.Any) -> EnqueueResponse:
        self._client.record("enqueue", kwargs)
        message_id, dup = self._client.message_id(kwargs.get("deduplication_id"))
        return EnqueueResponse(message_id=message_id, deduplicated=dup)

    def batch(self, messages: list[dict[str, t.Any]]) -> list[BatchResponse]:
        self._client.record("batch", {"messages": messages})
        rv = []

        for message in messages:
            message_id, dup = self._client.message_id(message.get("deduplication_id"))
            rv.append(BatchResponse(message_id=message_id, deduplicated=dup))

        return rv


class _FakeSchedules:
    def __init__(self, client: FakeClient) -> None:
        self._client = client

    def create(self, **kwargs: t.Any) -> str:
        self._client.record("schedule.create", kwargs)
        return str(kwargs.get("schedule_id") or f"scd_{uuid.uuid4().hex}")


@pytest.fixture(autouse=True)
def _clean_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep the developer's ``QSTASH_*`` variables out of every test."""
    for key in list(os.environ):
        if key.startswith(("QSTASH_", "FLASK_QSTASH_")):
            monkeypatch.delenv(key)


@pytest.fixture
def fake_client() -> type[FakeClient]:
    """A fresh :class:`FakeClient` subclass whose records start empty."""
    return type(
        "FakeClient",
        (FakeClient,),
        {"calls": [], "instances": [], "messages": {}},
    )


@pytest.fixture
def qstash(fake_client: type[FakeClient]) -> QStash:
    """The extension, publishing through ``fake_client``; not yet on an app."""
    ext = QStash()
    ext.client_class = t.cast("type[QStashClient]", fake_client)
    return ext


def make_app(name: str, qstash: QStash | None = None, **config: t.Any) -> Flask:
    """Return an app with :func:`make_config` updated by ``config``.

    :param name: The import name, usually ``request.module.__name__``.
    :param qstash: Initialise this extension on the app, if given.
    """
    app = Flask(name)
    app.config.update(make_config())
    app.config.update(config)

    if qstash is not None:
        qstash.init_app(app)

    return app


@pytest.fixture
def app(request: pytest.FixtureRequest, qstash: QStash) -> Flask:
    """An app with the extension and the default tenant config.

    Tests declare jobs on ``qstash`` before their first request.
    """
    return make_app(request.module.__name__, qstash)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def runs(qstash: QStash) -> list[t.Any]:
    """Register ``echo`` (returns its payload) and record every run of it."""
    calls: list[t.Any] = []

    @qstash.job("echo")
    def echo(payload: t.Any) -> t.Any:
        calls.append(payload)
        return payload

    return calls


@dataclass
class Deliverer:
    """Posts signed deliveries to the app, as QStash does.

    Calling it builds the job envelope, signs it with the tenant's current
    key for the URL from config, and posts it with a fresh message id. Every
    part can be overridden to build a bad delivery.
    """

    client: Client
    keys: dict[str, str] = field(default_factory=lambda: {"globex": GLOBEX_CURRENT_KEY})

    def envelope(
        self, job: str, payload: t.Any = None, *, tenant: str = "acme"
    ) -> bytes:
        """The JSON body of a run of ``job`` for ``tenant``."""
        data = {
            "v": ENVELOPE_VERSION,
            "job": job,
            "tenant": tenant,
            "payload": payload,
            "enqueued_at": 1_700_000_000_000,
        }
        return json.dumps(data, separators=(",", ":")).encode()

    def url(self, job: str, *, tenant: str = "acme") -> str:
        """The URL QStash signs a delivery of ``job`` for, from config."""
        return f"{PUBLIC_URL}/qstash/{tenant}/{job}"

    def token(
        self,
        body: bytes,
        *,
        job: str,
        tenant: str = "acme",
        key: str | None = None,
        url: str | None = None,
        now: int | None = None,
    ) -> str:
        """Sign ``body`` as QStash would for a delivery of ``job``."""
        return sign(
            body,
            url=url if url is not None else self.url(job, tenant=tenant),
            key=key if key is not None else self.keys.get(tenant, CURRENT_KEY),
            now=now,
        )

    def __call__(
        self,
        job: str,
        payload: t.Any = None,
        *,
        tenant: str = "acme",
        path_tenant: str | None = None,
        body: bytes | None = None,
        key: str | None = None,
        url: str | None = None,
        token: str | None = None,
        message_id: str | None = None,
        headers: dict[str, str] | None = None,
        environ: dict[str, t.Any] | None = None,
        client: Client | None = None,
    ) -> TestResponse:
        """Deliver a run of ``job`` and return the app's answer.

        :param tenant: Whose envelope and signature this is.
        :param path_tenant: The tenant in the request path, ``tenant`` if
            omitted.
        :param body: Raw body instead of the envelope.
        :param key: Signing key instead of the tenant's current one.
        :param url: URL to sign for instead of the configured one.
        :param token: The whole ``Upstash-Signature`` value; ``""`` sends none.
        :param environ: WSGI environ overrides, such as a false
            ``CONTENT_LENGTH``.
        """
        if body is None:
            body = self.envelope(job, payload, tenant=tenant)

        if token is None:
            token = self.token(body, job=job, tenant=tenant, key=key, url=url)

        sent = {
            "Content-Type": "application/json",
            "Upstash-Message-Id": message_id or f"msg_{uuid.uuid4().hex}",
            "Upstash-Retried": "0",
        }

        if token:
            sent["Upstash-Signature"] = token

        sent.update(headers or {})
        path = f"/qstash/{path_tenant or tenant}/{job}"
        return (client or self.client).post(
            path, data=body, headers=sent, environ_overrides=environ
        )


@pytest.fixture
def deliver(client: Client) -> Deliverer:
    """Post signed deliveries to ``app``; see :class:`Deliverer`."""
    return Deliverer(client)


# The pytest_plugin tests run pytest inside pytest.
pytest_plugins = ("pytester",)
