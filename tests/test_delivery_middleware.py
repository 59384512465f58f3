"""Deliveries answered by DeliveryMiddleware, before Flask's request dispatch."""

from __future__ import annotations

import functools
import json
import typing as t

import flask
import pytest
from conftest import CURRENT_KEY
from conftest import Deliverer
from conftest import make_app
from conftest import make_config
from conftest import PUBLIC_URL
from flask import abort
from flask import Flask
from flask import g
from flask import has_request_context
from flask import url_for
from werkzeug.test import Client
from werkzeug.test import TestResponse

from flask_qstash import DeadJob
from flask_qstash import HeaderResolver
from flask_qstash import QStash
from flask_qstash import TenantMiddleware
from flask_qstash.signing import sign
from flask_qstash.webhooks import DeliveryMiddleware

if t.TYPE_CHECKING:  # pragma: no cover
    from _typeshed.wsgi import StartResponse
    from _typeshed.wsgi import WSGIEnvironment


def test_init_app_installs_the_middleware(app: Flask) -> None:
    assert isinstance(app.wsgi_app, DeliveryMiddleware)
    assert app.wsgi_app.app is app


def test_browser_hooks_do_not_run_for_deliveries(
    request: pytest.FixtureRequest, qstash: QStash
) -> None:
    # Not the ``app`` fixture: pytest-flask pushes a request context around it.
    app = make_app(request.module.__name__, qstash)
    deliver = Deliverer(app.test_client())
    hooks: list[str] = []
    seen: list[tuple[bool, str]] = []

    @app.before_request
    def refuse() -> None:
        hooks.append("before_request")
        abort(403)

    @app.after_request
    def stamp(response: t.Any) -> t.Any:
        hooks.append("after_request")
        return response

    @app.teardown_request
    def teardown_request(exc: BaseException | None) -> None:
        hooks.append("teardown_request")

    @app.teardown_appcontext
    def teardown_appcontext(exc: BaseException | None) -> None:
        hooks.append("teardown_appcontext")

    @app.get("/page")
    def page() -> str:
        return "page"

    @qstash.job("probe")
    def probe(payload: t.Any) -> None:
        g.marker = "set"
        seen.append((has_request_context(), g.marker))

    rv = deliver("probe", {})

    assert rv.status_code == 200
    assert seen == [(False, "set")]
    assert hooks == ["teardown_appcontext"]

    # A job this deploy does not know yet gets the table's 404, not the hook's.
    hooks.clear()
    missing = deliver("not-deployed-yet", {})

    assert missing.status_code == 404
    assert missing.get_json() == {"error": "Unknown job."}
    assert hooks == ["teardown_appcontext"]

    # The same hooks do run for the app's own pages.
    hooks.clear()
    assert deliver.client.get("/page").status_code == 403
    assert hooks == [
        "before_request",
        "after_request",
        "teardown_request",
        "teardown_appcontext",
    ]


@pytest.mark.parametrize(
    ("tenant", "public_url", "expected"),
    [
        pytest.param(
            "acme", None, "https://app.example.com/invoices/7", id="default-origin"
        ),
        pytest.param(
            "globex",
            "https://globex.example/billing",
            "https://globex.example/billing/invoices/7",
            id="tenant-origin-with-root",
        ),
    ],
)
def test_url_for_in_a_handler_uses_the_public_origin(
    request: pytest.FixtureRequest,
    qstash: QStash,
    tenant: str,
    public_url: str | None,
    expected: str,
) -> None:
    links: list[str] = []

    @qstash.job("link")
    def link(payload: t.Any) -> None:
        links.append(url_for("invoice", invoice_id=7, _external=True))

    config = make_config()

    if public_url is not None:
        config["QSTASH_TENANTS"][tenant]["public_url"] = public_url

    app = make_app(request.module.__name__, qstash, **config)
    app.add_url_rule("/invoices/<int:invoice_id>", "invoice", lambda invoice_id: "")
    deliver = Deliverer(app.test_client())
    origin = public_url or "https://app.example.com"
    rv = deliver("link", {}, tenant=tenant, url=f"{origin}/qstash/{tenant}/link")

    assert rv.status_code == 200
    assert links == [expected]


def test_server_name_wins_over_the_public_origin(
    request: pytest.FixtureRequest, qstash: QStash
) -> None:
    links: list[str] = []

    @qstash.job("link")
    def link(payload: t.Any) -> None:
        links.append(url_for("home", _external=True))

    app = make_app(request.module.__name__, qstash, SERVER_NAME="www.example.org")
    app.add_url_rule("/", "home", lambda: "")
    rv = Deliverer(app.test_client())("link", {}, headers={"Host": "www.example.org"})

    assert rv.status_code == 200
    assert links == ["http://www.example.org/"]


def test_app_routes_under_the_prefix_still_reach_flask(
    app: Flask, runs: list[t.Any], deliver: Deliverer
) -> None:
    @app.post("/qstash/admin/stats")
    def stats() -> dict[str, int]:
        return {"runs": len(runs)}

    assert deliver("echo", {"n": 1}).status_code == 200
    rv = deliver.client.post("/qstash/admin/stats")

    assert rv.status_code == 200
    assert rv.get_json() == {"runs": 1}


@pytest.mark.parametrize(
    ("method", "path"),
    [
        pytest.param("GET", "/qstash/acme/echo", id="get"),
        pytest.param("PUT", "/qstash/acme/echo", id="put"),
        pytest.param("POST", "/qstash/acme/echo/", id="trailing-slash"),
        pytest.param("POST", "/qstash//echo", id="empty-tenant"),
        pytest.param("POST", "/qstash/acme/echo/extra", id="deeper-path"),
        pytest.param("POST", "/qstash/acme/nope", id="unknown-job"),
        pytest.param("POST", "/qstash/acme/nope/failed", id="unknown-job-callback"),
        pytest.param("POST", "/qstash/acmé/echo", id="non-ascii-tenant"),
        pytest.param("POST", "/qstash", id="prefix-only"),
    ],
)
def test_other_requests_get_the_same_answer_as_from_flask(
    app: Flask, runs: list[t.Any], deliver: Deliverer, method: str, path: str
) -> None:
    body = deliver.envelope("echo", {"n": 1})
    token = deliver.token(body, job="echo")
    headers = {"Upstash-Signature": token, "Upstash-Message-Id": "msg_odd"}
    direct = Client(functools.partial(Flask.wsgi_app, app), TestResponse)

    through_app = deliver.client.open(path, method=method, data=body, headers=headers)
    through_flask = direct.open(path, method=method, data=body, headers=headers)

    assert through_app.status_code == through_flask.status_code
    assert through_app.status_code != 200
    assert through_app.get_json(silent=True) == through_flask.get_json(silent=True)
    assert runs == []


def test_a_delivery_counts_as_the_first_request(
    qstash: QStash, runs: list[t.Any], deliver: Deliverer
) -> None:
    assert deliver("echo", {"n": 1}).status_code == 200

    with pytest.raises(RuntimeError, match="after app .* started serving"):
        qstash.job("late")(lambda payload: None)


class _Recorder:
    """Plain WSGI middleware that records the paths it passes on."""

    def __init__(self, wsgi_app: t.Any) -> None:
        self.wsgi_app = wsgi_app
        self.paths: list[str] = []

    def __call__(
        self, environ: WSGIEnvironment, start_response: StartResponse
    ) -> t.Iterable[bytes]:
        self.paths.append(environ["PATH_INFO"])
        return self.wsgi_app(environ, start_response)  # type: ignore[no-any-return]


def test_middleware_added_later_wraps_deliveries(
    app: Flask, runs: list[t.Any], deliver: Deliverer
) -> None:
    recorder = _Recorder(app.wsgi_app)
    app.wsgi_app = TenantMiddleware(  # type: ignore[method-assign]
        recorder, HeaderResolver(), required=True
    )

    rv = deliver("echo", {"n": 2})

    assert rv.status_code == 200
    assert runs == [{"n": 2}]
    assert recorder.paths == ["/qstash/acme/echo"]


def test_machinery_failure_in_the_middleware_is_a_plain_500(
    app: Flask,
    qstash: QStash,
    runs: list[t.Any],
    deliver: Deliverer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(*args: t.Any, **kwargs: t.Any) -> t.NoReturn:
        raise ConnectionError("store is down")

    monkeypatch.setattr(qstash._state[app].store, "claim", broken)
    rv = deliver("echo", {"n": 3})

    assert rv.status_code == 500
    assert rv.get_json() == {"error": "The delivery could not be processed."}
    assert rv.headers["Content-Type"] == "application/json"
    assert int(rv.headers["Content-Length"]) == len(rv.get_data())
    assert runs == []


def test_routes_stay_registered_for_url_for_and_flask_routes(
    app: Flask, runs: list[t.Any]
) -> None:
    rules = {r.rule: r.endpoint for r in app.url_map.iter_rules()}

    assert rules["/qstash/<tenant>/echo"] == "qstash.deliver.echo"
    assert rules["/qstash/<tenant>/echo/failed"] == "qstash.failed.echo"
    assert "qstash.deliver.echo" in app.view_functions

    with app.test_request_context():
        assert url_for("qstash.deliver.echo", tenant="acme") == "/qstash/acme/echo"


def test_url_for_in_a_failure_hook_uses_the_public_origin(
    request: pytest.FixtureRequest, qstash: QStash
) -> None:
    links: list[str] = []
    qstash.job("echo")(lambda payload: None)

    @qstash.on_failure
    def report(dead: DeadJob) -> None:
        links.append(url_for("dlq", dlq_id=dead.dlq_id, _external=True))

    app = make_app(request.module.__name__, qstash)
    app.add_url_rule("/dlq/<dlq_id>", "dlq", lambda dlq_id: "")
    body = json.dumps({"sourceMessageId": "msg_dead", "dlqId": "dlq_1"}).encode()
    url = f"{PUBLIC_URL}/qstash/acme/echo/failed"
    rv = app.test_client().post(
        "/qstash/acme/echo/failed",
        data=body,
        headers={"Upstash-Signature": sign(body, url=url, key=CURRENT_KEY)},
    )

    assert rv.status_code == 200
    assert links == [f"{PUBLIC_URL}/dlq/dlq_1"]


def test_a_more_specific_app_route_keeps_its_requests(
    request: pytest.FixtureRequest, qstash: QStash, runs: list[t.Any]
) -> None:
    app = make_app(request.module.__name__, qstash)
    dispatched: list[str] = []

    @app.before_request
    def record() -> None:
        dispatched.append(flask.request.path)

    @app.post("/qstash/admin/echo")
    def admin_echo() -> dict[str, str]:
        return {"answered_by": "app"}

    deliver = Deliverer(app.test_client())
    mine = deliver.client.post("/qstash/admin/echo")
    delivered = deliver("echo", {"n": 1})

    assert mine.get_json() == {"answered_by": "app"}
    assert delivered.status_code == 200
    assert runs == [{"n": 1}]

    # Only the app's own route went through Flask's dispatch.
    assert dispatched == ["/qstash/admin/echo"]
