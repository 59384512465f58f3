from __future__ import annotations

import json
import typing as t

import pytest
from conftest import CURRENT_KEY
from conftest import Deliverer
from conftest import FakeClient
from conftest import GLOBEX_TOKEN
from conftest import make_app
from conftest import make_config
from conftest import NEXT_KEY
from conftest import SECRETS
from conftest import TOKEN
from flask import Flask
from qstash import QStash as QStashClient

from flask_qstash import QStash
from flask_qstash.config import DEFAULT_MAX_BODY_SIZE
from flask_qstash.config import load_settings
from flask_qstash.config import Tenant
from flask_qstash.idempotency import MemoryStore


def test_init_app_registers_the_extension(app: Flask, qstash: QStash) -> None:
    assert app.extensions["qstash"] is qstash
    rules = {r.rule for r in app.url_map.iter_rules()}
    assert "/qstash/<tenant>/<path:job>" in rules


def test_init_app_twice_raises(app: Flask, qstash: QStash) -> None:
    with pytest.raises(RuntimeError, match="already has a QStash extension"):
        qstash.init_app(app)

    with pytest.raises(RuntimeError, match="already has a QStash extension"):
        QStash(app)


def test_defaults(request: pytest.FixtureRequest) -> None:
    app = Flask(request.module.__name__)
    app.config["QSTASH_DEV_SERVER"] = False
    ext = QStash(app)

    with app.app_context():
        settings = ext.settings

    assert settings.url_prefix == "/qstash"
    assert settings.max_body_size == DEFAULT_MAX_BODY_SIZE
    assert settings.default_tenant == "default"
    assert settings.tenants == {}
    assert settings.token is None


def test_default_store_is_in_memory(app: Flask, qstash: QStash) -> None:
    assert isinstance(qstash.store, MemoryStore)


def test_config_falls_back_to_the_environment(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QSTASH_TOKEN", TOKEN)
    monkeypatch.setenv("QSTASH_CURRENT_SIGNING_KEY", CURRENT_KEY)
    monkeypatch.setenv("QSTASH_NEXT_SIGNING_KEY", NEXT_KEY)
    monkeypatch.setenv("QSTASH_PUBLIC_URL", "https://env.example.com/")
    monkeypatch.setenv("QSTASH_MAX_BODY_SIZE", "2048")
    monkeypatch.setenv("QSTASH_DEFAULT_DELAY", "1h30m")
    monkeypatch.setenv("QSTASH_TENANTS", json.dumps({"acme": {"max_retries": "2"}}))
    monkeypatch.setenv("QSTASH_DEV_SERVER", "false")
    app = Flask(request.module.__name__)
    ext = QStash(app)

    with app.app_context():
        settings = ext.settings
        acme = ext.get_tenant("acme")

    assert settings.token == TOKEN
    assert settings.public_url == "https://env.example.com"
    assert settings.max_body_size == 2048
    assert settings.default_delay == 5400
    assert settings.dev_server is False
    assert acme.max_retries == 2
    assert acme.signing_keys == (CURRENT_KEY, NEXT_KEY)


def test_app_config_wins_over_the_environment(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QSTASH_PUBLIC_URL", "https://env.example.com")
    app = make_app(request.module.__name__)
    ext = QStash(app)

    with app.app_context():
        assert ext.settings.public_url == "https://app.example.com"


@pytest.mark.parametrize(
    ("key", "value"),
    [
        pytest.param("QSTASH_MAX_BODY_SIZE", "big", id="max-body-size"),
        pytest.param("QSTASH_MAX_BODY_SIZE", 0, id="max-body-size-zero"),
        pytest.param("QSTASH_PUBLIC_URL", "ftp://app.example.com", id="public-url"),
        pytest.param("QSTASH_URL", "qstash.upstash.io", id="url"),
        pytest.param("QSTASH_URL_PREFIX", "qstash", id="prefix-no-slash"),
        pytest.param("QSTASH_URL_PREFIX", "/qstash/", id="prefix-end-slash"),
        pytest.param("QSTASH_DEFAULT_DELAY", "soon", id="default-delay"),
        pytest.param("QSTASH_MAX_RETRIES", 500, id="max-retries"),
        pytest.param("QSTASH_PUBLISH_TIMEOUT", -1, id="publish-timeout"),
        pytest.param("QSTASH_DEFAULT_TENANT", "a.b", id="default-tenant"),
        pytest.param("QSTASH_TENANTS", ["acme"], id="tenants-list"),
        pytest.param("QSTASH_TENANTS", {"acme": "x"}, id="tenant-not-mapping"),
        pytest.param("QSTASH_TENANTS", {"bad.id": {}}, id="tenant-id"),
        pytest.param(
            "QSTASH_TENANTS", {"acme": {"token": "t"}}, id="tenant-token-no-keys"
        ),
        pytest.param("QSTASH_TENANTS", {"default": {}}, id="tenant-is-default"),
    ],
)
def test_bad_config_value_names_the_key(
    request: pytest.FixtureRequest, qstash: QStash, key: str, value: t.Any
) -> None:
    app = make_app(request.module.__name__, **{key: value})

    with pytest.raises(ValueError, match=key) as info:
        qstash.init_app(app)

    assert "qstash" not in app.extensions

    for secret in SECRETS:
        assert secret not in str(info.value)


def test_bad_environment_value_names_the_key(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, qstash: QStash
) -> None:
    monkeypatch.setenv("QSTASH_TENANTS", "{not json")

    with pytest.raises(ValueError, match="'QSTASH_TENANTS' is not valid JSON"):
        qstash.init_app(Flask(request.module.__name__))


def test_repr_shows_no_secrets(app: Flask, qstash: QStash) -> None:
    settings = load_settings(
        {**make_config(), "QSTASH_IDEMPOTENCY_STORE": "redis://:hunter2pass@db:6379/0"}
    )
    tenants = [qstash.get_tenant(name) for name in ("default", "acme", "globex")]
    text = repr(settings) + repr(tenants) + repr(qstash.settings)

    assert "globex" in text
    assert "hunter2pass" not in text

    for secret in SECRETS:
        assert secret not in text


def test_two_apps_share_one_extension(
    request: pytest.FixtureRequest, qstash: QStash, fake_client: type[FakeClient]
) -> None:
    ran: list[t.Any] = []
    job = qstash.job("ping")(ran.append)
    one = make_app(request.module.__name__, qstash)
    two = make_app(
        request.module.__name__,
        qstash,
        QSTASH_PUBLIC_URL="https://two.example.com",
        QSTASH_URL_PREFIX="/jobs",
    )

    with one.app_context():
        assert job.url() == "https://app.example.com/qstash/default/ping"

    with two.app_context():
        assert job.url() == "https://two.example.com/jobs/default/ping"
        assert qstash.settings.url_prefix == "/jobs"

    deliver = Deliverer(two.test_client())
    body = deliver.envelope("ping", 1)
    token = deliver.token(
        body, job="ping", url="https://two.example.com/jobs/acme/ping"
    )
    rv = two.test_client().post(
        "/jobs/acme/ping",
        data=body,
        headers={"Upstash-Signature": token, "Upstash-Message-Id": "msg_1"},
    )

    assert rv.status_code == 200
    assert ran == [1]


def test_app_factory(
    request: pytest.FixtureRequest, fake_client: type[FakeClient]
) -> None:
    ext = QStash()
    ext.client_class = t.cast("type[QStashClient]", fake_client)

    @ext.job("ping")
    def ping(payload: t.Any) -> None:
        pass

    def create_app() -> Flask:
        app = make_app(request.module.__name__)
        ext.init_app(app)
        return app

    app = create_app()

    with app.app_context():
        ping.enqueue()

    assert len(fake_client.calls) == 1
    assert "qstash.deliver.ping" in app.view_functions


def test_extension_not_initialised_on_app_raises(
    request: pytest.FixtureRequest, qstash: QStash
) -> None:
    job = qstash.job("ping")(lambda payload: None)

    with Flask(request.module.__name__).app_context():
        with pytest.raises(RuntimeError, match="init_app"):
            job.enqueue()


def test_one_client_per_account(
    app: Flask, qstash: QStash, fake_client: type[FakeClient]
) -> None:
    job = qstash.job("ping")(lambda payload: None)

    for tenant in ("default", "acme", "globex", "acme", "globex"):
        job.enqueue(tenant=tenant)

    tokens = [c.token for c in fake_client.instances]
    assert sorted(tokens) == sorted([TOKEN, GLOBEX_TOKEN])
    assert [c.token for c in fake_client.calls] == [
        TOKEN,
        TOKEN,
        GLOBEX_TOKEN,
        TOKEN,
        GLOBEX_TOKEN,
    ]


def test_tenant_loader_supplies_tenants(
    app: Flask, qstash: QStash, deliver: Deliverer
) -> None:
    asked: list[str] = []
    ran: list[t.Any] = []
    qstash.job("ping")(ran.append)

    @qstash.tenant_loader
    def load(tenant_id: str) -> dict[str, t.Any] | None:
        asked.append(tenant_id)
        return {"max_retries": 1} if tenant_id == "initech" else None

    tenant = qstash.get_tenant("initech")

    assert isinstance(tenant, Tenant)
    assert tenant.max_retries == 1
    assert tenant.token == TOKEN
    assert qstash.find_tenant("nobody") is None
    assert deliver("ping", 1, tenant="initech").status_code == 200
    assert deliver("ping", 2, tenant="nobody").status_code == 404
    assert ran == [1]
    assert asked == ["initech", "nobody"]


def test_custom_prefix_moves_the_routes(
    request: pytest.FixtureRequest, qstash: QStash
) -> None:
    qstash.job("ping")(lambda payload: None)
    app = make_app(request.module.__name__, qstash, QSTASH_URL_PREFIX="/_/jobs")
    rules = {r.rule for r in app.url_map.iter_rules()}

    assert "/_/jobs/<tenant>/ping" in rules
    assert not any(rule.startswith("/qstash") for rule in rules)
