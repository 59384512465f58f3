from __future__ import annotations

import json
import typing as t

import pytest
from conftest import FakeClient
from conftest import GLOBEX_TOKEN
from conftest import TOKEN
from flask import Flask
from flask import jsonify
from flask import Response
from flask.testing import FlaskClient
from werkzeug.test import Client
from werkzeug.test import create_environ

from flask_qstash import current_tenant
from flask_qstash import HeaderResolver
from flask_qstash import PathPrefixResolver
from flask_qstash import QStash
from flask_qstash import SubdomainResolver
from flask_qstash import TenantMiddleware
from flask_qstash import UnknownTenantError
from flask_qstash.tenancy import ENVIRON_KEY

if t.TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse
    from _typeshed.wsgi import WSGIEnvironment

_UNSET = "<unset>"


def _echo(environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
    """A WSGI app answering with what the middleware left in the environ."""
    body = json.dumps(
        {
            "tenant": environ.get(ENVIRON_KEY, _UNSET),
            "script_name": environ.get("SCRIPT_NAME", ""),
            "path_info": environ.get("PATH_INFO", ""),
        }
    ).encode()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body]


def _get(middleware: TenantMiddleware, path: str, **kwargs: t.Any) -> t.Any:
    rv = Client(middleware).get(path, **kwargs)
    assert rv.status_code == 200
    return rv.json


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        pytest.param({"X-Tenant-ID": "acme"}, "acme", id="present"),
        pytest.param({"X-Tenant-ID": "  acme "}, "acme", id="whitespace"),
        pytest.param({}, None, id="absent"),
        pytest.param({"X-Other": "acme"}, None, id="other-header"),
    ],
)
def test_header_resolver(headers: dict[str, str], expected: str | None) -> None:
    environ = create_environ("/", headers=headers)

    assert HeaderResolver("X-Tenant-ID")(environ) == expected


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        pytest.param("acme.app.example.com", "acme", id="tenant"),
        pytest.param("ACME.App.Example.com:8443", "acme", id="case-and-port"),
        pytest.param("www.app.example.com", None, id="ignored"),
        pytest.param("app.example.com", None, id="bare"),
        pytest.param("a.b.app.example.com", None, id="too-deep"),
        pytest.param("acme.evil.com", None, id="other-domain"),
        pytest.param("acmeapp.example.com", None, id="no-dot"),
    ],
)
def test_subdomain_resolver(host: str, expected: str | None) -> None:
    environ = create_environ("/", base_url=f"http://{host}/")

    assert SubdomainResolver("app.example.com")(environ) == expected


@pytest.mark.parametrize(
    ("strip", "path", "expected"),
    [
        pytest.param(
            True, "/acme/reports/1", ("acme", "/acme", "/reports/1"), id="strip"
        ),
        pytest.param(True, "/acme", ("acme", "/acme", "/"), id="strip-root"),
        pytest.param(False, "/acme/reports", ("acme", "", "/acme/reports"), id="keep"),
        pytest.param(True, "/", (None, "", "/"), id="root"),
        pytest.param(True, "/a.b/x", (None, "", "/a.b/x"), id="invalid-id"),
    ],
)
def test_path_prefix_resolver_moves_the_segment(
    strip: bool, path: str, expected: tuple[str | None, str, str]
) -> None:
    environ = create_environ(path)
    tenant = PathPrefixResolver(strip=strip)(environ)

    assert (tenant, environ["SCRIPT_NAME"], environ["PATH_INFO"]) == expected


def _from_query(environ: WSGIEnvironment) -> str | None:
    """A plain function resolver: ``?tenant=<id>``."""
    query = environ.get("QUERY_STRING", "")
    return query.partition("tenant=")[2] or None


@pytest.mark.parametrize(
    ("resolver", "path", "kwargs", "expected"),
    [
        pytest.param(
            HeaderResolver(),
            "/",
            {"headers": {"X-Tenant-ID": "acme"}},
            "acme",
            id="header",
        ),
        pytest.param(
            SubdomainResolver("app.example.com"),
            "/",
            {"base_url": "http://globex.app.example.com/"},
            "globex",
            id="subdomain",
        ),
        pytest.param(_from_query, "/?tenant=acme", {}, "acme", id="callable"),
        pytest.param(lambda environ: "../etc", "/", {}, None, id="invalid-id-ignored"),
        pytest.param(lambda environ: "a.b", "/", {}, None, id="dotted-id-ignored"),
        pytest.param(lambda environ: "", "/", {}, None, id="empty-id-ignored"),
        pytest.param(HeaderResolver(), "/", {}, None, id="not-found"),
    ],
)
def test_middleware_stores_the_resolved_tenant(
    resolver: t.Any, path: str, kwargs: dict[str, t.Any], expected: str | None
) -> None:
    rv = _get(TenantMiddleware(_echo, resolver), path, **kwargs)

    assert rv["tenant"] == expected


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        pytest.param(
            {"headers": {"X-Tenant-ID": "first"}, "query_string": "tenant=second"},
            "first",
            id="first-wins",
        ),
        pytest.param({"query_string": "tenant=second"}, "second", id="falls-through"),
        pytest.param(
            {"headers": {"X-Tenant-ID": "bad/id"}, "query_string": "tenant=second"},
            "second",
            id="invalid-skipped",
        ),
        pytest.param({}, None, id="none"),
    ],
)
def test_resolvers_are_tried_in_order(
    kwargs: dict[str, t.Any], expected: str | None
) -> None:
    middleware = TenantMiddleware(_echo, [HeaderResolver(), _from_query])
    rv = _get(middleware, "/", **kwargs)

    assert rv["tenant"] == expected


def test_path_prefix_rewrite_reaches_the_app() -> None:
    rv = _get(TenantMiddleware(_echo, PathPrefixResolver()), "/acme/reports")

    assert rv == {"tenant": "acme", "script_name": "/acme", "path_info": "/reports"}


@pytest.mark.parametrize(
    ("exclude", "path", "passed"),
    [
        pytest.param(("/qstash",), "/qstash/acme/email", True, id="default-prefix"),
        pytest.param(("/qstash",), "/qstash", True, id="prefix-itself"),
        pytest.param(("/qstash",), "/qstashy/acme", False, id="not-a-prefix"),
        pytest.param(("/jobs/",), "/jobs/acme/email", True, id="custom-prefix"),
    ],
)
def test_excluded_paths_pass_through_untouched(
    exclude: tuple[str, ...], path: str, passed: bool
) -> None:
    middleware = TenantMiddleware(
        _echo, PathPrefixResolver(), exclude=exclude, required=True
    )
    rv = Client(middleware).get(path)

    if passed:
        assert rv.status_code == 200
        assert rv.json == {"tenant": _UNSET, "script_name": "", "path_info": path}
    else:
        assert rv.json is not None
        assert rv.json["tenant"] == "qstashy"


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        pytest.param({"X-Tenant-ID": "acme"}, 200, id="found"),
        pytest.param({}, 404, id="missing"),
        pytest.param({"X-Tenant-ID": "no/pe"}, 404, id="invalid"),
    ],
)
def test_required_answers_404_without_a_tenant(
    headers: dict[str, str], status: int
) -> None:
    middleware = TenantMiddleware(_echo, HeaderResolver(), required=True)
    rv = Client(middleware).get("/", headers=headers)

    assert rv.status_code == status

    if status == 404:
        assert rv.json == {"error": "Unknown tenant."}


@pytest.fixture
def tenant_app(app: Flask, qstash: QStash) -> Flask:
    """``app`` behind a header-resolving middleware, with a view enqueuing."""

    @qstash.job("report", queue="reports", parallelism=2)
    def report(payload: t.Any) -> None:
        pass

    @qstash.job("ping", rate=5, period="1m")
    def ping(payload: t.Any) -> None:
        pass

    @app.post("/enqueue/<name>")
    def enqueue(name: str) -> Response:
        try:
            rv = qstash.enqueue(name, {"n": 1})
        except UnknownTenantError as exc:
            return jsonify(error=str(exc), type="UnknownTenantError")

        tenant = current_tenant
        return jsonify(
            tenant=rv.tenant, current=tenant.id if tenant is not None else None
        )

    app.wsgi_app = TenantMiddleware(  # type: ignore[method-assign]
        app.wsgi_app, HeaderResolver()
    )
    return app


@pytest.mark.parametrize(
    ("tenant", "token"),
    [
        pytest.param("acme", TOKEN, id="shared-account"),
        pytest.param("globex", GLOBEX_TOKEN, id="own-account"),
    ],
)
def test_enqueue_in_a_request_uses_the_resolved_tenant(
    tenant_app: Flask,
    client: FlaskClient,
    fake_client: type[FakeClient],
    tenant: str,
    token: str,
) -> None:
    rv = client.post("/enqueue/report", headers={"X-Tenant-ID": tenant})

    assert rv.json == {"tenant": tenant, "current": tenant}
    [call] = fake_client.calls
    assert call.method == "enqueue"
    assert call.token == token
    assert call.kwargs["url"] == f"https://app.example.com/qstash/{tenant}/report"
    assert call.kwargs["queue"] == f"{tenant}.reports"
    assert call.kwargs["label"] == f"{tenant}.report"
    assert json.loads(call.kwargs["body"])["tenant"] == tenant


def test_flow_control_key_carries_the_tenant(
    tenant_app: Flask, client: FlaskClient, fake_client: type[FakeClient]
) -> None:
    client.post("/enqueue/ping", headers={"X-Tenant-ID": "globex"})

    [call] = fake_client.calls
    assert call.method == "publish"
    assert call.kwargs["flow_control"] == {
        "key": "globex.ping",
        "rate": 5,
        "period": 60,
    }
    assert call.kwargs["label"] == "globex.ping"


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="unresolved"),
        pytest.param({"X-Tenant-ID": "nobody"}, id="unknown"),
        pytest.param({"X-Tenant-ID": "bad.id"}, id="invalid"),
    ],
)
def test_enqueue_without_a_tenant_in_a_request_publishes_nothing(
    tenant_app: Flask,
    client: FlaskClient,
    fake_client: type[FakeClient],
    headers: dict[str, str],
) -> None:
    rv = client.post("/enqueue/ping", headers=headers)

    assert rv.json is not None
    assert rv.json["type"] == "UnknownTenantError"
    assert fake_client.calls == []


def test_webhook_prefix_is_not_resolved(tenant_app: Flask, client: FlaskClient) -> None:
    # The delivery route must not 404 from the middleware, and an unsigned
    # call is refused by the signature check, not by tenancy.
    rv = client.post("/qstash/acme/ping", data=b"{}")

    assert rv.status_code == 401
