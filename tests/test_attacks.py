"""The verification attack matrix: hostile deliveries to a real job route.

Every case posts to an app using the extension, with tenant ``acme`` on the
default account and ``globex`` on its own, and checks that the handler did not
run, that the answer is the expected 4xx and never a 500, and that the answer
carries no token, key or traceback. A few positive controls show the same
route does accept genuine deliveries. A property-based test then throws random
headers and bodies at the route.
"""

from __future__ import annotations

import base64
import hmac
import io
import json
import threading
import time
import typing as t
import uuid
from dataclasses import dataclass
from dataclasses import field

import pytest
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import given
from hypothesis import HealthCheck
from hypothesis import settings
from hypothesis import strategies as st
from marshmallow import fields
from marshmallow import Schema
from qstash import QStash as QStashClient
from werkzeug.datastructures import Headers
from werkzeug.test import EnvironBuilder
from werkzeug.test import TestResponse
from werkzeug.wrappers import Request

from flask_qstash import QStash
from flask_qstash.signing import body_hash
from flask_qstash.signing import new_jti
from flask_qstash.signing import sign

# PyJWT warns about HMAC keys shorter than 32 bytes, and warnings are errors.
TOKEN = "qstash_default_token_atk_7Hc2Lx9QeV4mWp8Rt6Yz"
CURRENT_KEY = "sig_default_current_atk_3mJ8kYjw48mhY7kAjqNG"
NEXT_KEY = "sig_default_next_atk_5ZB6DVzB1wjE8S6rZ7eenA8P"
GLOBEX_TOKEN = "qstash_globex_token_atk_Wq2Lk8Xr4Tn6Yp1Zs9Vb"
GLOBEX_CURRENT_KEY = "sig_globex_current_atk_Q7vN2pX9kL4mR8tY3wZ6"
GLOBEX_NEXT_KEY = "sig_globex_next_atk_H5jK8sD2fG6hJ9kL3zX7cV4"
WRONG_KEY = "sig_attacker_guess_atk_Zr5Tq8Wm2Xc6Vb9Nl3Kj7H"
SECRETS = (
    TOKEN,
    CURRENT_KEY,
    NEXT_KEY,
    GLOBEX_TOKEN,
    GLOBEX_CURRENT_KEY,
    GLOBEX_NEXT_KEY,
)
PUBLIC_URL = "https://app.example.com"
URL = f"{PUBLIC_URL}/qstash/acme/charge"
PATH = "/qstash/acme/charge"
MAX_BODY = 4096
PAYLOAD = {"amount": 100}

# Marks a claim to leave out of a forged token.
DROP: t.Any = object()


class ChargeSchema(Schema):
    amount = fields.Integer(required=True)
    currency = fields.String(load_default="EUR")


class _NoPublish:
    """Stands in for the SDK client; these tests publish nothing."""

    def __init__(
        self, token: str, *, retry: t.Any = None, base_url: str | None = None
    ) -> None:
        pass


@dataclass
class Harness:
    """The app under attack and what its handler saw."""

    app: Flask
    client: FlaskClient
    calls: list[dict[str, t.Any]] = field(default_factory=list)

    #: When set, the handler signals ``started`` and waits for ``release``.
    gate: bool = False
    started: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)


@pytest.fixture
def harness(request: pytest.FixtureRequest) -> Harness:
    """An app with jobs ``charge`` and ``refund`` and tenants ``acme``, ``globex``."""
    app = Flask(request.module.__name__)
    app.config.update(
        TESTING=True,
        QSTASH_TOKEN=TOKEN,
        QSTASH_CURRENT_SIGNING_KEY=CURRENT_KEY,
        QSTASH_NEXT_SIGNING_KEY=NEXT_KEY,
        QSTASH_PUBLIC_URL=PUBLIC_URL,
        QSTASH_DEV_SERVER=False,
        QSTASH_MAX_BODY_SIZE=MAX_BODY,
        QSTASH_TENANTS={
            "acme": {},
            "globex": {
                "token": GLOBEX_TOKEN,
                "current_signing_key": GLOBEX_CURRENT_KEY,
                "next_signing_key": GLOBEX_NEXT_KEY,
            },
        },
    )
    ext = QStash()
    ext.client_class = t.cast("type[QStashClient]", _NoPublish)
    rv = Harness(app, app.test_client())

    @ext.job("charge", schema=ChargeSchema)
    def charge(payload: dict[str, t.Any]) -> str:
        rv.calls.append(payload)

        if rv.gate:
            rv.started.set()
            assert rv.release.wait(10), "The test never released the handler."

        return "charged"

    @ext.job("refund", schema=ChargeSchema)
    def refund(payload: dict[str, t.Any]) -> None:
        rv.calls.append(payload)

    ext.init_app(app)
    return rv


@dataclass
class Req:
    """One delivery to post."""

    body: bytes
    token: str | None
    path: str = PATH
    message_id: str | None = field(default_factory=lambda: f"msg_{uuid.uuid4().hex}")
    headers: dict[str, str] = field(default_factory=dict)


def envelope(
    payload: t.Any = PAYLOAD, *, tenant: str = "acme", job: str = "charge"
) -> bytes:
    """A job envelope as the extension publishes it."""
    data = {
        "v": 1,
        "job": job,
        "tenant": tenant,
        "payload": payload,
        "enqueued_at": 1_700_000_000_000,
    }
    return json.dumps(data, separators=(",", ":")).encode()


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims(body: bytes, /, **overrides: t.Any) -> dict[str, t.Any]:
    """Claims of a genuine token for ``body`` at :data:`URL`, then ``overrides``."""
    now = int(time.time())
    rv: dict[str, t.Any] = {
        "aud": "",
        "body": body_hash(body),
        "exp": now + 300,
        "iat": now,
        "iss": "Upstash",
        "jti": new_jti(),
        "nbf": now,
        "sub": URL,
    }

    for name, value in overrides.items():
        if value is DROP:
            rv.pop(name, None)
        else:
            rv[name] = value

    return rv


def forge(
    payload: dict[str, t.Any] | list[t.Any] | bytes,
    *,
    key: str = CURRENT_KEY,
    header: dict[str, t.Any] | list[t.Any] | None = None,
    digest: str = "sha256",
) -> str:
    """A compact JWS with any header and payload, HMAC-signed with ``key``."""
    head = header if header is not None else {"alg": "HS256", "typ": "JWT"}
    raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    signing_input = f"{b64(json.dumps(head).encode())}.{b64(raw)}"
    mac = hmac.new(key.encode(), signing_input.encode(), digest).digest()
    return f"{signing_input}.{b64(mac)}"


def valid(body: bytes = b"", *, url: str = URL, key: str = CURRENT_KEY) -> Req:
    """A genuine delivery of ``body`` (the default envelope if empty)."""
    body = body or envelope()
    return Req(body, sign(body, url=url, key=key))


def _with(body: bytes, /, **overrides: t.Any) -> Req:
    return Req(body, forge(claims(body, **overrides)))


def _one_byte_changed() -> Req:
    body = envelope()
    rv = valid(body)
    rv.body = body.replace(b"100", b"900")
    return rv


def _alg_none(payload: dict[str, t.Any]) -> str:
    head = b64(b'{"alg":"none","typ":"JWT"}')
    return f"{head}.{b64(json.dumps(payload).encode())}."


def _path(req: Req, path: str) -> Req:
    req.path = path
    return req


def _no_message_id() -> Req:
    rv = valid()
    rv.message_id = None
    return rv


_E = envelope()
_ATTACKS: list[t.Any] = [
    # Signature missing or not a JWT.
    pytest.param(lambda: Req(_E, None), 401, id="no-signature"),
    pytest.param(lambda: Req(_E, ""), 401, id="empty-signature"),
    pytest.param(lambda: Req(_E, "garbage"), 401, id="garbage"),
    pytest.param(lambda: Req(_E, "eyJhbGciOiJIUzI1NiJ9.e30"), 401, id="two-segments"),
    pytest.param(lambda: Req(_E, "!!!.@@@.###"), 401, id="bad-base64"),
    pytest.param(
        lambda: Req(_E, forge(claims(_E), header=["HS256"])),
        401,
        id="header-not-object",
    ),
    pytest.param(lambda: Req(_E, forge([claims(_E)])), 401, id="claims-not-object"),
    pytest.param(lambda: Req(_E, forge(b"not json")), 401, id="claims-not-json"),
    pytest.param(
        lambda: Req(
            _E, forge(claims(_E), key=WRONG_KEY, header={"alg": "HS256", "kid": 1})
        ),
        401,
        id="kid-not-string",
    ),
    pytest.param(
        lambda: Req(
            _E,
            forge(claims(_E), key=WRONG_KEY, header={"alg": "HS256", "crit": ["exp"]}),
        ),
        401,
        id="crit-unsupported",
    ),
    pytest.param(
        lambda: Req(_E, forge(claims(_E, pad="x" * 4096))), 401, id="oversized-token"
    ),
    # Algorithms other than HS256.
    pytest.param(
        lambda: Req(_E, _alg_none(claims(_E))),
        401,
        id="alg-none",
    ),
    pytest.param(
        lambda: Req(
            _E,
            forge(claims(_E), header={"alg": "HS512", "typ": "JWT"}, digest="sha512"),
        ),
        401,
        id="alg-hs512",
    ),
    pytest.param(
        lambda: Req(_E, forge(claims(_E), header={"alg": "RS256", "typ": "JWT"})),
        401,
        id="alg-rs256",
    ),
    # Keys.
    pytest.param(lambda: valid(key=WRONG_KEY), 401, id="wrong-key"),
    pytest.param(lambda: valid(key=GLOBEX_CURRENT_KEY), 401, id="other-tenants-key"),
    pytest.param(
        lambda: Req(_E, forge(claims(_E), key=CURRENT_KEY + "x")), 401, id="key-suffix"
    ),
    # Time claims (the leeway is 5 s).
    pytest.param(lambda: _with(_E, iat=1_000, nbf=1_000, exp=1_300), 401, id="expired"),
    pytest.param(
        lambda: _with(_E, exp=int(time.time()) - 30),
        401,
        id="expired-beyond-leeway",
    ),
    pytest.param(
        lambda: _with(_E, nbf=int(time.time()) + 60),
        401,
        id="nbf-future",
    ),
    pytest.param(
        lambda: _with(_E, iat=int(time.time()) + 60),
        401,
        id="iat-future",
    ),
    pytest.param(lambda: _with(_E, exp="9999999999"), 401, id="exp-not-number"),
    pytest.param(lambda: _with(_E, exp=True), 401, id="exp-boolean"),
    # Issuer.
    pytest.param(lambda: _with(_E, iss="upstash"), 401, id="issuer-lowercase"),
    pytest.param(lambda: _with(_E, iss="Upstash "), 401, id="issuer-trailing-space"),
    pytest.param(lambda: _with(_E, iss="Upstash\u200b"), 401, id="issuer-zero-width"),
    pytest.param(lambda: _with(_E, iss="QStash"), 401, id="issuer-other"),
    pytest.param(lambda: _with(_E, iss=["Upstash"]), 401, id="issuer-list"),
    pytest.param(lambda: _with(_E, aud="https://other.example"), 401, id="aud-other"),
    pytest.param(lambda: _with(_E, jti=42), 401, id="jti-not-string"),
    # Required claims.
    *[
        pytest.param(
            (lambda name=name: _with(_E, **{name: DROP})),
            401,
            id=f"missing-{name}",
        )
        for name in ("iss", "sub", "exp", "nbf", "iat", "body")
    ],
    # Body.
    pytest.param(_one_byte_changed, 401, id="body-one-byte-changed"),
    pytest.param(lambda: _with(_E, body=body_hash(b"")), 401, id="body-hash-of-empty"),
    pytest.param(lambda: _with(_E, body=123), 401, id="body-hash-not-string"),
    # Subject: the token must name exactly this route.
    pytest.param(
        lambda: valid(url=f"{PUBLIC_URL}/qstash/acme/refund"), 401, id="sub-other-job"
    ),
    pytest.param(
        lambda: valid(url=f"{PUBLIC_URL}/qstash/default/charge"),
        401,
        id="sub-other-tenant-same-keys",
    ),
    pytest.param(
        lambda: valid(url=f"{PUBLIC_URL}/qstash/globex/charge", key=GLOBEX_CURRENT_KEY),
        401,
        id="sub-other-tenant-own-keys",
    ),
    pytest.param(
        lambda: valid(url="https://evil.example.com/qstash/acme/charge"),
        401,
        id="sub-other-host",
    ),
    pytest.param(
        lambda: valid(url="https://APP.example.com/qstash/acme/charge"),
        401,
        id="sub-host-case",
    ),
    pytest.param(
        lambda: valid(url="http://app.example.com/qstash/acme/charge"),
        401,
        id="sub-http",
    ),
    pytest.param(
        lambda: valid(url="https://app.example.com:443/qstash/acme/charge"),
        401,
        id="sub-explicit-port",
    ),
    pytest.param(lambda: valid(url=URL + "/"), 401, id="sub-trailing-slash"),
    pytest.param(lambda: valid(url=URL + "?x=1"), 401, id="sub-query-string"),
    pytest.param(lambda: valid(url=URL + "/failed"), 401, id="sub-failure-route"),
    pytest.param(lambda: _with(_E, sub=None), 401, id="sub-null"),
    pytest.param(
        lambda: _path(valid(), "/qstash/globex/charge"), 401, id="path-other-tenant"
    ),
    pytest.param(
        lambda: _path(valid(), "/qstash/default/charge"),
        401,
        id="path-other-tenant-same-keys",
    ),
    pytest.param(
        lambda: _path(valid(), "/qstash/acme/refund"), 401, id="path-other-job"
    ),
    # Verified, but nobody is there (404 heals once a deploy adds it).
    pytest.param(
        lambda: _path(
            valid(
                envelope(tenant="initech"), url=f"{PUBLIC_URL}/qstash/initech/charge"
            ),
            "/qstash/initech/charge",
        ),
        404,
        id="unknown-tenant",
    ),
    pytest.param(
        lambda: _path(
            valid(envelope(job="nope"), url=f"{PUBLIC_URL}/qstash/acme/nope"),
            "/qstash/acme/nope",
        ),
        404,
        id="unknown-job",
    ),
    pytest.param(
        lambda: _path(Req(_E, None), "/qstash/acme/nope"),
        401,
        id="unknown-job-unsigned",
    ),
    # Verified, but the data is bad (489: retrying cannot help).
    pytest.param(_no_message_id, 489, id="no-message-id"),
    pytest.param(lambda: valid(b'{"v":1,'), 489, id="invalid-json"),
    pytest.param(lambda: valid(b"\xff\xfe{}"), 489, id="non-utf8"),
    pytest.param(lambda: valid(b"[1,2,3]"), 489, id="not-an-object"),
    pytest.param(
        lambda: valid(envelope().replace(b'"v":1', b'"v":2')), 489, id="envelope-v2"
    ),
    pytest.param(
        lambda: valid(envelope(tenant="globex")), 489, id="envelope-other-tenant"
    ),
    pytest.param(lambda: valid(envelope(job="refund")), 489, id="envelope-other-job"),
    pytest.param(
        lambda: valid(envelope({"amount": 1, "admin": True})),
        489,
        id="payload-unknown-field",
    ),
    pytest.param(
        lambda: valid(envelope({"amount": "1e9"})), 489, id="payload-wrong-type"
    ),
    pytest.param(lambda: valid(envelope({})), 489, id="payload-missing-field"),
    pytest.param(lambda: valid(envelope([1, 2])), 489, id="payload-not-object"),
]


def post(client: FlaskClient, req: Req) -> TestResponse:
    headers = {"Content-Type": "application/json", "Upstash-Retried": "0"}

    if req.token is not None:
        headers["Upstash-Signature"] = req.token

    if req.message_id is not None:
        headers["Upstash-Message-Id"] = req.message_id

    headers.update(req.headers)
    return client.post(req.path, data=req.body, headers=headers)


def assert_refused(rv: TestResponse, status: int, token: str | None = None) -> None:
    """The answer is ``status``, a plain JSON error, with nothing secret in it."""
    text = rv.get_data(as_text=True)

    assert rv.status_code == status, text
    assert rv.is_json and set(rv.get_json()) == {"error"}
    assert "Traceback" not in text

    for secret in SECRETS:
        assert secret not in text
        assert all(secret not in value for value in rv.headers.values())

    if token:
        assert token not in text

    if status == 489:
        assert rv.headers["Upstash-NonRetryable-Error"] == "true"


@pytest.mark.parametrize(("make", "status"), _ATTACKS)
def test_attack_is_refused(
    harness: Harness, make: t.Callable[[], Req], status: int
) -> None:
    req = make()

    rv = post(harness.client, req)

    assert_refused(rv, status, req.token)
    assert harness.calls == []


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: valid(), id="current-key"),
        pytest.param(lambda: valid(key=NEXT_KEY), id="next-key-only"),
        pytest.param(lambda: _with(_E, body=body_hash(_E)), id="body-hash-padded"),
        pytest.param(
            lambda: _with(_E, body=body_hash(_E).rstrip("=")), id="body-hash-unpadded"
        ),
        pytest.param(lambda: _with(_E, nbf=0), id="nbf-zero"),
        pytest.param(
            lambda: _path(
                valid(
                    envelope(tenant="globex"),
                    url=f"{PUBLIC_URL}/qstash/globex/charge",
                    key=GLOBEX_NEXT_KEY,
                ),
                "/qstash/globex/charge",
            ),
            id="own-account-next-key",
        ),
    ],
)
def test_genuine_delivery_is_accepted(
    harness: Harness, make: t.Callable[[], Req]
) -> None:
    rv = post(harness.client, make())

    assert rv.status_code == 200, rv.get_data(as_text=True)
    assert rv.get_json() == {"status": "done", "result": "charged"}
    assert harness.calls == [{"amount": 100, "currency": "EUR"}]


@pytest.mark.parametrize(
    "same_message",
    [
        pytest.param(False, id="new-message-id"),
        pytest.param(True, id="same-message-id"),
    ],
)
def test_replayed_token_is_refused(harness: Harness, same_message: bool) -> None:
    req = valid()
    assert post(harness.client, req).status_code == 200

    again = Req(req.body, req.token)

    if same_message:
        again.message_id = req.message_id

    rv = post(harness.client, again)

    assert_refused(rv, 401, req.token)
    assert len(harness.calls) == 1


def test_redelivery_after_success_does_not_rerun(harness: Harness) -> None:
    first = valid()
    assert post(harness.client, first).status_code == 200

    # QStash signs every attempt afresh; a new token for the same message.
    again = valid()
    again.message_id = first.message_id
    rv = post(harness.client, again)

    assert rv.status_code == 200
    assert rv.get_json() == {"status": "done", "result": "charged"}
    assert len(harness.calls) == 1


def test_concurrent_deliveries_run_once(harness: Harness) -> None:
    harness.gate = True
    message_id = f"msg_{uuid.uuid4().hex}"
    answers: dict[str, TestResponse] = {}

    def deliver(name: str) -> None:
        req = valid()
        req.message_id = message_id
        answers[name] = post(harness.app.test_client(), req)

    first = threading.Thread(target=deliver, args=("first",))
    second = threading.Thread(target=deliver, args=("second",))
    first.start()
    assert harness.started.wait(10)

    # The first delivery is inside the handler; the second must not enter it.
    second.start()
    second.join(10)
    harness.release.set()
    first.join(10)

    assert not first.is_alive() and not second.is_alive()
    assert answers["first"].status_code == 200
    assert_refused(answers["second"], 409)
    assert int(answers["second"].headers["Retry-After"]) >= 1
    assert len(harness.calls) == 1

    late = valid()
    late.message_id = message_id
    rv = post(harness.client, late)

    assert rv.status_code == 200
    assert len(harness.calls) == 1


def _oversized(chunked: bool, harness: Harness) -> TestResponse:
    body = envelope({"amount": 1, "note": "x" * MAX_BODY})
    builder = EnvironBuilder(
        path=PATH,
        method="POST",
        input_stream=io.BytesIO(body),
        headers=Headers(
            {
                "Content-Type": "application/json",
                "Upstash-Signature": sign(body, url=URL, key=CURRENT_KEY),
                "Upstash-Message-Id": f"msg_{uuid.uuid4().hex}",
            }
        ),
    )
    environ = builder.get_environ()

    if chunked:
        # As a server passes a chunked request: no length, a terminated stream.
        del environ["CONTENT_LENGTH"]
        environ["HTTP_TRANSFER_ENCODING"] = "chunked"
        environ["wsgi.input_terminated"] = True

    return harness.client.open(Request(environ))


@pytest.mark.parametrize(
    "chunked",
    [pytest.param(False, id="content-length"), pytest.param(True, id="chunked")],
)
def test_body_over_the_cap_is_refused(harness: Harness, chunked: bool) -> None:
    rv = _oversized(chunked, harness)

    assert_refused(rv, 413)
    assert harness.calls == []


_HEADER_TEXT = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"),
    max_size=120,
)
_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
_BODIES = st.one_of(
    st.binary(max_size=1024),
    st.text(max_size=300).map(lambda s: s.encode("utf-8", "surrogatepass")),
    _JSON.map(lambda v: json.dumps(v).encode()),
    _JSON.map(lambda v: envelope(v)),
    st.builds(
        envelope,
        st.fixed_dictionaries({"amount": st.integers()}),
        tenant=st.sampled_from(["acme", "globex", "default", ""]),
        job=st.sampled_from(["charge", "refund", "x"]),
    ),
)


_HEADERS: list[dict[str, t.Any]] = [
    {"alg": "HS256", "typ": "JWT"},
    {"alg": "HS256"},
    {"alg": "none"},
    {"alg": "HS512"},
    {"alg": "RS256"},
    {"alg": "HS256", "kid": 7},
    {"alg": "HS256", "crit": ["b64"], "b64": False},
]


@st.composite
def _deliveries(draw: st.DrawFn) -> Req:
    """A random delivery whose signature is never genuine for its body."""
    body = draw(_BODIES)
    kind = draw(st.sampled_from(["text", "segments", "near-valid"]))

    if kind == "text":
        token: str | None = draw(st.none() | _HEADER_TEXT)
    elif kind == "segments":
        segment = st.text("ABCDEFabcdef0123456789-_=", max_size=40)
        token = ".".join(draw(st.lists(segment, min_size=1, max_size=5)))
    else:
        # Real structure and often the real key, but the body claim is always
        # for other bytes, so nothing here may ever pass.
        overrides = draw(
            st.dictionaries(
                st.sampled_from(["iss", "sub", "exp", "nbf", "iat", "jti", "aud"]),
                st.just(DROP) | _JSON,
                max_size=3,
            )
        )
        forged = claims(body, **overrides)
        forged["body"] = body_hash(body + b"!")
        header = draw(st.sampled_from(_HEADERS))
        key = draw(st.sampled_from([CURRENT_KEY, NEXT_KEY, WRONG_KEY, GLOBEX_NEXT_KEY]))
        token = forge(forged, key=key, header=header)

    headers: dict[str, str] = {}
    content_type = draw(
        st.none()
        | st.sampled_from(["application/json", "text/plain", "multipart/form-data"])
        | _HEADER_TEXT
    )

    if content_type is not None:
        headers["Content-Type"] = content_type

    path = draw(
        st.sampled_from(
            [PATH, "/qstash/globex/charge", "/qstash/initech/charge", "/qstash/acme/x"]
        )
    )
    return Req(
        body,
        token,
        path=path,
        message_id=draw(st.none() | _HEADER_TEXT),
        headers=headers,
    )


@settings(
    max_examples=300,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(req=_deliveries())
def test_random_deliveries_never_run_or_crash(harness: Harness, req: Req) -> None:
    rv = post(harness.client, req)

    assert rv.status_code in (401, 404, 413, 489), rv.get_data(as_text=True)
    assert harness.calls == []
    text = rv.get_data(as_text=True)

    for secret in SECRETS:
        assert secret not in text
