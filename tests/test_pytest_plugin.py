"""The pytest plugin, used as a Flask-QStash user would use it.

Each test writes a small user project (an app module, a ``conftest.py`` with
an ``app`` fixture, a test module) and runs pytest on it. The plugin is loaded
through its ``pytest11`` entry point, and the inner run turns warnings into
errors too. Most runs are in-process, for speed; one runs in a subprocess, as
a user's would.
"""

from __future__ import annotations

import textwrap

import pytest

#: The user's app: two jobs, a failure hook, and a tenant with its own keys.
APP = """
from flask import Flask
from marshmallow import fields

from flask_qstash import QStash

qstash = QStash()
runs = []
dead = []

# Short test keys are fine: the plugin signs with them without a warning.
CURRENT_KEY = "test-current-key"
GLOBEX_KEY = "sig_globex_current_Q7vN2pX9kL4mR8tY3wZ6bC1d"


@qstash.job("email", schema={"to": fields.Email(required=True)})
def send_email(payload, ctx):
    runs.append((payload, ctx))
    return {"sent": payload["to"]}


@qstash.on_failure
def record_failure(dead_job):
    dead.append(dead_job)


def create_app(**config):
    app = Flask(__name__)
    app.config.update(
        TESTING=True,
        QSTASH_TOKEN="test-token",
        QSTASH_CURRENT_SIGNING_KEY=CURRENT_KEY,
        QSTASH_NEXT_SIGNING_KEY="test-next-key",
        QSTASH_PUBLIC_URL="https://shop.example.com",
        QSTASH_DEV_SERVER=False,
        QSTASH_TENANTS={
            "acme": {},
            "globex": {
                "token": "globex-token",
                "current_signing_key": GLOBEX_KEY,
                "next_signing_key": "sig_globex_next_H5jK8sD2fG6hJ9kL3zX7cV4bN1m",
            },
        },
    )
    app.config.update(config)
    qstash.init_app(app)
    return app
"""

CONFTEST = """
import pytest

import shop


@pytest.fixture
def app():
    shop.runs.clear()
    shop.dead.clear()
    return shop.create_app()
"""

DELIVERS = """
from flask_qstash import JobContext

import shop


def test_delivers(qstash_deliver):
    rv = qstash_deliver("email", {"to": "a@example.com"}, tenant="acme", retried=2)

    assert rv.status_code == 200
    assert rv.json == {"status": "done", "result": {"sent": "a@example.com"}}
    [(payload, ctx)] = shop.runs
    assert payload == {"to": "a@example.com"}
    assert isinstance(ctx, JobContext)
    assert (ctx.job, ctx.tenant, ctx.retried) == ("email", "acme", 2)
    assert ctx.message_id.startswith("msg_")
    assert ctx.enqueued_at is not None


def test_default_tenant_and_job_object(qstash_deliver):
    rv = qstash_deliver(shop.send_email, {"to": "b@example.com"}, schedule_id="s1")

    assert rv.status_code == 200
    [(_, ctx)] = shop.runs
    assert (ctx.tenant, ctx.schedule_id) == ("default", "s1")
"""

BAD_PAYLOAD = """
import shop


def test_bad_payload(qstash_deliver):
    rv = qstash_deliver("email", {"to": "not an address"})

    assert rv.status_code == 489
    assert rv.headers["Upstash-NonRetryable-Error"] == "true"
    assert shop.runs == []
"""

REDELIVERY = """
import shop


def test_redelivery_runs_once(qstash_deliver):
    first = qstash_deliver("email", {"to": "a@example.com"}, message_id="msg_1")
    again = qstash_deliver(
        "email", {"to": "a@example.com"}, message_id="msg_1", retried=1
    )

    assert (first.status_code, again.status_code) == (200, 200)
    assert again.json == first.json
    assert len(shop.runs) == 1
"""

TENANT_KEYS = """
import shop


def test_signed_with_the_tenants_keys(qstash_deliver):
    rv = qstash_deliver("email", {"to": "a@example.com"}, tenant="globex")

    assert rv.status_code == 200
    assert shop.runs[0][1].tenant == "globex"


def test_another_tenants_key_is_refused(qstash_deliver):
    rv = qstash_deliver(
        "email", {"to": "a@example.com"}, tenant="globex", key=shop.CURRENT_KEY
    )

    assert rv.status_code == 401
    assert shop.runs == []
"""

FAILURE = """
import shop


def test_failure_runs_the_hook(qstash_deliver):
    rv = qstash_deliver.failure(
        "email",
        {"to": "a@example.com"},
        tenant="globex",
        status=503,
        body="down",
        dlq_id="dlq_1",
        message_id="msg_7",
    )

    assert rv.status_code == 200
    [dead] = shop.dead
    assert (dead.job, dead.tenant, dead.status) == ("email", "globex", 503)
    assert (dead.response_body, dead.dlq_id, dead.message_id) == (
        "down", "dlq_1", "msg_7"
    )
    assert dead.payload == {"to": "a@example.com"}
    assert dead.retried == 3
"""

DEV_SERVER = """
import threading

import pytest
from flask import Flask
from werkzeug.serving import make_server

import shop


@pytest.fixture
def live_app(qstash_dev_server):
    # Bind first: the app's public URL needs the port.
    http = make_server("127.0.0.1", 0, Flask("placeholder"), threaded=True)
    app = shop.create_app(
        QSTASH_URL=qstash_dev_server.url,
        QSTASH_TOKEN=qstash_dev_server.token,
        QSTASH_CURRENT_SIGNING_KEY=qstash_dev_server.current_signing_key,
        QSTASH_NEXT_SIGNING_KEY=qstash_dev_server.next_signing_key,
        QSTASH_PUBLIC_URL=f"http://127.0.0.1:{http.server_port}",
        QSTASH_TENANTS={},
    )
    http.app = app
    thread = threading.Thread(
        target=http.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    yield app
    http.shutdown()
    thread.join()


def test_enqueue_is_delivered(live_app, qstash_dev_server):
    with live_app.app_context():
        result = shop.send_email.enqueue({"to": "a@example.com"})

    assert qstash_dev_server.wait_idle()
    [(payload, ctx)] = shop.runs
    assert payload == {"to": "a@example.com"}
    assert ctx.message_id == result.message_id
"""

NO_APP = """
def test_needs_app(qstash_deliver):
    pass
"""


@pytest.fixture
def project(pytester: pytest.Pytester) -> pytest.Pytester:
    """A user project with the app module, its conftest and strict warnings."""
    pytester.makepyfile(shop=textwrap.dedent(APP))
    pytester.makeconftest(textwrap.dedent(CONFTEST))
    pytester.makeini("[pytest]\nfilterwarnings = error\n")
    return pytester


@pytest.mark.parametrize(
    ("source", "passed", "args"),
    [
        pytest.param(DELIVERS, 2, (), id="delivers"),
        pytest.param(DELIVERS, 2, ("-p", "no:flask"), id="without-pytest-flask"),
        pytest.param(BAD_PAYLOAD, 1, (), id="bad-payload"),
        pytest.param(REDELIVERY, 1, (), id="redelivery"),
        pytest.param(TENANT_KEYS, 2, (), id="tenant-keys"),
        pytest.param(FAILURE, 1, (), id="failure"),
        pytest.param(DEV_SERVER, 1, (), id="dev-server"),
    ],
)
def test_fixture(
    project: pytest.Pytester, source: str, passed: int, args: tuple[str, ...]
) -> None:
    project.makepyfile(test_user=textwrap.dedent(source))

    result = _run_inprocess(project, *args)

    result.assert_outcomes(passed=passed)


def test_fixtures_load_in_a_fresh_process(project: pytest.Pytester) -> None:
    project.makepyfile(test_user=textwrap.dedent(DELIVERS))

    result = project.runpytest_subprocess("-p", "no:hypothesispytest")

    result.assert_outcomes(passed=2)


def test_deliver_without_app_fixture(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_user=textwrap.dedent(NO_APP))

    result = _run_inprocess(pytester, "-p", "no:flask")

    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        ["*qstash_deliver needs an 'app' fixture returning your Flask app*"]
    )


def _run_inprocess(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    # This process imported Flask-QStash before the inner run starts, so pytest
    # warns that it cannot rewrite the plugin's package; a fresh process would
    # not. Hypothesis's plugin re-imports all of Hypothesis on every inner run.
    return pytester.runpytest_inprocess(
        "-W",
        "ignore::pytest.PytestAssertRewriteWarning",
        "-p",
        "no:hypothesispytest",
        *args,
    )
