from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import json
import typing as t
from pathlib import Path

import jwt
import pytest
from qstash import Receiver

from flask_qstash.errors import SignatureError
from flask_qstash.signing import body_hash
from flask_qstash.signing import Claims
from flask_qstash.signing import ISSUER
from flask_qstash.signing import MAX_TOKEN_SIZE
from flask_qstash.signing import new_jti
from flask_qstash.signing import sign
from flask_qstash.signing import TOKEN_LIFETIME
from flask_qstash.signing import verify

VECTORS_PATH = Path(__file__).parent / "vectors" / "signing.json"

# PyJWT warns about HMAC keys shorter than 32 bytes, and warnings are errors.
KEY = "sig_current_3mJ8kYjw48mhY7kAjqNGcy6cr29RJ6r"
NEXT_KEY = "sig_next_5ZB6DVzB1wjE8S6rZ7eenA8Pdnhs9Pq"
OTHER_KEY = "sig_other_tenant_Wq2Lk8Xr4Tn6Yp1Zs9Vb3Mc7Q"
URL = "https://app.example.com/qstash/acme/send-email"
BODY = b'{"v":1,"job":"send-email","tenant":"acme","payload":{"to":"a@example.com"}}'
NOW = 1_700_000_000
JTI = "jwt_5mdXCuBkQ6ixtkJvTAFVRf8NBi3w"
HS256_HEADER = {"alg": "HS256", "typ": "JWT"}

# Marks a claim to leave out of a forged token.
_MISSING: t.Any = object()


@dataclasses.dataclass(frozen=True)
class Vector:
    """One known-answer case of ``tests/vectors/signing.json``."""

    name: str
    key: str
    url: str
    body: bytes
    iat: int
    jti: str
    lifetime: int
    body_hash: str
    token: str


def _load_vectors() -> list[Vector]:
    cases: list[dict[str, t.Any]] = json.loads(VECTORS_PATH.read_text("utf-8"))["cases"]
    rv = []

    for case in cases:
        if "body_b64" in case:
            body = base64.b64decode(case["body_b64"], validate=True)
        else:
            body = case["body"].encode("utf-8")

        rv.append(
            Vector(
                name=case["name"],
                key=case["key"],
                url=case["url"],
                body=body,
                iat=case["iat"],
                jti=case["jti"],
                lifetime=case["lifetime"],
                body_hash=case["body_hash"],
                token=case["token"],
            )
        )

    return rv


VECTORS = _load_vectors()
VECTOR_PARAMS = [pytest.param(v, id=v.name) for v in VECTORS]


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _json_segment(value: t.Any) -> str:
    return _b64url(json.dumps(value, separators=(",", ":")).encode("utf-8"))


def _hmac_token(header: t.Any, claims: t.Any, key: str = KEY) -> str:
    """Build an HS256-signed token by hand, with any header and claims."""
    signing_input = f"{_json_segment(header)}.{_json_segment(claims)}"
    mac = hmac.new(key.encode("utf-8"), signing_input.encode("ascii"), hashlib.sha256)
    return f"{signing_input}.{_b64url(mac.digest())}"


def _expected_claims(vector: Vector) -> dict[str, t.Any]:
    return {
        "aud": "",
        "body": vector.body_hash,
        "exp": vector.iat + vector.lifetime,
        "iat": vector.iat,
        "iss": "Upstash",
        "jti": vector.jti,
        "nbf": vector.iat,
        "sub": vector.url,
    }


def _claims(**overrides: t.Any) -> dict[str, t.Any]:
    """Return the claims QStash sends for ``BODY`` to ``URL`` at ``NOW``."""
    claims: dict[str, t.Any] = {
        "aud": "",
        "body": body_hash(BODY),
        "exp": NOW + TOKEN_LIFETIME,
        "iat": NOW,
        "iss": "Upstash",
        "jti": JTI,
        "nbf": NOW,
        "sub": URL,
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not _MISSING}


def _forge(claims: dict[str, t.Any], key: str = KEY, algorithm: str = "HS256") -> str:
    """Sign ``claims`` with PyJWT directly, bypassing :func:`sign`."""
    return jwt.encode(claims, key, algorithm=algorithm, headers={"typ": "JWT"})


def _reason(
    token: str | None,
    body: bytes = BODY,
    *,
    url: str = URL,
    keys: t.Sequence[str] = (KEY, NEXT_KEY),
    now: float = NOW,
    leeway: float = 5.0,
) -> str:
    """Return the ``reason`` of the error :func:`verify` raises."""
    with pytest.raises(SignatureError) as info:
        verify(token, body, url=url, keys=keys, leeway=leeway, now=now)

    # No error message may echo the token, even partly.
    message = str(info.value)
    signature = (token or "").rpartition(".")[2]

    assert not token or token not in message
    assert len(signature) < 8 or signature not in message

    return info.value.reason


def test_vectors_cover_the_required_cases() -> None:
    by_name = {v.name: v for v in VECTORS}
    empty = by_name["empty-body"]

    assert len(by_name) == len(VECTORS) >= 5
    assert empty.body == b""
    assert empty.body_hash == "47DEQpj8HBSa-_TImW-5JCeuQeRkm5NMpJWZG3hSuFU="
    assert by_name["unicode-body"].body.decode("utf-8").isascii() is False
    assert "?" in by_name["query-string-url"].url
    assert all(len(v.key.encode()) >= 32 for v in VECTORS)


@pytest.mark.parametrize("vector", VECTOR_PARAMS)
def test_sign_reproduces_vector(vector: Vector) -> None:
    token = sign(
        vector.body,
        url=vector.url,
        key=vector.key,
        now=vector.iat,
        lifetime=vector.lifetime,
        jti=vector.jti,
    )

    assert token == vector.token


@pytest.mark.parametrize("vector", VECTOR_PARAMS)
def test_vector_matches_stdlib_hmac(vector: Vector) -> None:
    # Rebuild the token from its parts with the standard library only.
    digest = hashlib.sha256(vector.body).digest()
    token = _hmac_token(HS256_HEADER, _expected_claims(vector), key=vector.key)

    assert base64.urlsafe_b64encode(digest).decode() == vector.body_hash
    assert body_hash(vector.body) == vector.body_hash
    assert token == vector.token


@pytest.mark.parametrize("vector", VECTOR_PARAMS)
def test_vector_decodes_with_pyjwt(vector: Vector) -> None:
    header = jwt.get_unverified_header(vector.token)
    claims = jwt.decode(
        vector.token,
        vector.key,
        algorithms=["HS256"],
        issuer=ISSUER,
        options={"verify_exp": False, "verify_nbf": False, "verify_iat": False},
    )

    assert header == HS256_HEADER
    assert claims == _expected_claims(vector)


@pytest.mark.parametrize("vector", VECTOR_PARAMS)
def test_verify_accepts_vector_at_iat(vector: Vector) -> None:
    claims = verify(
        vector.token, vector.body, url=vector.url, keys=[vector.key], now=vector.iat
    )

    assert claims == Claims(
        sub=vector.url,
        jti=vector.jti,
        iat=vector.iat,
        exp=vector.iat + vector.lifetime,
    )


@pytest.mark.parametrize("vector", VECTOR_PARAMS)
def test_verify_accepts_vector_until_expiry(vector: Vector) -> None:
    last = vector.iat + vector.lifetime - 1
    keys = ["", vector.key]

    verify(vector.token, vector.body, url=vector.url, keys=keys, now=last, leeway=0)
    reason = _reason(
        vector.token, vector.body, url=vector.url, keys=keys, now=last + 1, leeway=0
    )

    assert reason == "expired"


@pytest.mark.parametrize(
    "body",
    [BODY, b"", "héllo wörld ✓ 日本語 🚀".encode()],
    ids=["json", "empty", "utf8"],
)
@pytest.mark.parametrize("key", [KEY, NEXT_KEY], ids=["current", "next"])
def test_receiver_accepts_signed_token(body: bytes, key: str) -> None:
    receiver = Receiver(current_signing_key=KEY, next_signing_key=NEXT_KEY)
    url = URL + "?region=eu"

    receiver.verify(signature=sign(body, url=url, key=key), body=body.decode(), url=url)


def test_sign_defaults() -> None:
    token = sign(BODY, url=URL, key=KEY, now=NOW)
    claims = verify(token, BODY, url=URL, keys=[KEY], now=NOW)

    assert claims.exp == NOW + TOKEN_LIFETIME == NOW + 300
    assert claims.jti.startswith("jwt_")
    assert len(claims.jti) == 32
    assert sign(BODY, url=URL, key=KEY, now=NOW) != token


def test_new_jti_format() -> None:
    jtis = {new_jti() for _ in range(20)}

    assert len(jtis) == 20

    for jti in jtis:
        assert jti.startswith("jwt_")
        assert len(jti) == 32
        assert jti[4:].isalnum()
        assert not set(jti[4:]) & set("0OIl")


@pytest.mark.parametrize("token", [None, ""])
def test_missing(token: str | None) -> None:
    assert _reason(token) == "missing"


def test_oversized() -> None:
    padded = sign(BODY, url=URL, key=KEY, now=NOW) + "a" * MAX_TOKEN_SIZE

    assert _reason("a" * (MAX_TOKEN_SIZE + 1)) == "oversized"
    assert _reason(padded) == "oversized"


@pytest.mark.parametrize(
    "token",
    [
        "not-a-jwt",
        "a.b",
        "a.b.c",
        "....",
        "é.b.c",
        "\x00.\x00.\x00",
        _json_segment([1, 2]) + "." + _json_segment(_claims()) + ".",
        _json_segment(HS256_HEADER) + ".@@@.abc",
        _hmac_token(HS256_HEADER, [1, 2]),
        _json_segment(HS256_HEADER) + "." + _b64url(b"not json") + ".x",
    ],
    ids=[
        "no-dots",
        "two-segments",
        "garbage",
        "empty-segments",
        "non-ascii",
        "nul-bytes",
        "header-not-object",
        "payload-not-base64",
        "payload-not-object",
        "payload-not-json",
    ],
)
def test_malformed(token: str) -> None:
    assert _reason(token) == "malformed"


def test_algorithm_none() -> None:
    for alg in ("none", "None", "NONE"):
        header = _json_segment({"alg": alg, "typ": "JWT"})
        token = f"{header}.{_json_segment(_claims())}."

        assert _reason(token) == "algorithm", alg


def test_algorithm_hs512() -> None:
    # HS512 wants a 64-byte key, or PyJWT warns.
    assert _reason(_forge(_claims(), key=KEY * 2, algorithm="HS512")) == "algorithm"


def test_algorithm_rs256_header_with_hmac_signature() -> None:
    # The classic confusion attack: an asymmetric alg, signed with the HMAC key.
    token = _hmac_token({"alg": "RS256", "typ": "JWT"}, _claims())

    assert _reason(token) == "algorithm"


def test_algorithm_missing_from_header() -> None:
    assert _reason(_hmac_token({"typ": "JWT"}, _claims())) == "algorithm"


def test_hand_built_hs256_token_passes() -> None:
    # The forging helper itself is sound, so the failures above mean something.
    token = _hmac_token(HS256_HEADER, _claims())

    assert verify(token, BODY, url=URL, keys=[KEY], now=NOW).jti == JTI


def test_wrong_key() -> None:
    assert _reason(_forge(_claims(), key=OTHER_KEY)) == "wrong-key"
    assert _reason(sign(BODY, url=URL, key=OTHER_KEY, now=NOW)) == "wrong-key"


@pytest.mark.parametrize(
    "keys", [(), ("",), ("", "")], ids=["none", "empty", "empties"]
)
def test_no_usable_key(keys: tuple[str, ...]) -> None:
    assert _reason(sign(BODY, url=URL, key=KEY, now=NOW), keys=keys) == "wrong-key"


def test_next_key_passes() -> None:
    token = sign(BODY, url=URL, key=NEXT_KEY, now=NOW)

    assert verify(token, BODY, url=URL, keys=[KEY, NEXT_KEY], now=NOW).sub == URL
    assert verify(token, BODY, url=URL, keys=["", NEXT_KEY], now=NOW).sub == URL
    assert _reason(token, keys=[KEY]) == "wrong-key"


def test_current_key_passes_when_next_is_first() -> None:
    token = sign(BODY, url=URL, key=KEY, now=NOW)

    assert verify(token, BODY, url=URL, keys=[NEXT_KEY, KEY], now=NOW).sub == URL
    assert _reason(token, keys=[NEXT_KEY]) == "wrong-key"


def test_expired() -> None:
    token = sign(BODY, url=URL, key=KEY, now=NOW)
    exp = NOW + TOKEN_LIFETIME

    assert _reason(token, now=exp + 5) == "expired"
    assert _reason(token, now=exp + 3600) == "expired"
    assert _reason(token, now=exp, leeway=0) == "expired"


def test_expired_within_leeway_passes() -> None:
    token = sign(BODY, url=URL, key=KEY, now=NOW)
    exp = NOW + TOKEN_LIFETIME

    verify(token, BODY, url=URL, keys=[KEY], now=exp + 4, leeway=5)
    verify(token, BODY, url=URL, keys=[KEY], now=exp - 1, leeway=0)


@pytest.mark.parametrize(
    "claims",
    [
        _claims(iat=NOW + 6, nbf=NOW + 6, exp=NOW + 306),
        _claims(nbf=NOW + 60),
        _claims(iat=NOW + 60),
        _claims(iat=NOW + 3600, nbf=NOW + 3600, exp=NOW + 3900),
    ],
    ids=["both-beyond-leeway", "nbf-future", "iat-future", "far-future"],
)
def test_not_yet_valid(claims: dict[str, t.Any]) -> None:
    assert _reason(_forge(claims)) == "not-yet-valid"


def test_not_yet_valid_within_leeway_passes() -> None:
    token = sign(BODY, url=URL, key=KEY, now=NOW + 5)

    verify(token, BODY, url=URL, keys=[KEY], now=NOW, leeway=5)

    assert _reason(token, now=NOW, leeway=4) == "not-yet-valid"


@pytest.mark.parametrize(
    "issuer",
    ["upstash", "Upstash ", " Upstash", "UPSTASH", "Qstash", "", 123, [ISSUER]],
)
def test_issuer(issuer: t.Any) -> None:
    assert _reason(_hmac_token(HS256_HEADER, _claims(iss=issuer))) == "issuer"


@pytest.mark.parametrize("claim", ["iss", "sub", "exp", "nbf", "iat", "body"])
def test_missing_claim(claim: str) -> None:
    assert _reason(_forge(_claims(**{claim: _MISSING}))) == "missing-claim"


@pytest.mark.parametrize(
    "sub",
    [
        "https://app.example.com/qstash/acme/other-job",
        "https://app.example.com/qstash/globex/send-email",
        "http://app.example.com/qstash/acme/send-email",
        URL + "/",
        URL + "?x=1",
        URL + "#frag",
        "https://APP.example.com/qstash/acme/send-email",
        "https://app.example.com:443/qstash/acme/send-email",
        "https://evil.example/qstash/acme/send-email",
        "",
    ],
    ids=[
        "other-job",
        "other-tenant",
        "http",
        "trailing-slash",
        "query",
        "fragment",
        "host-case",
        "explicit-port",
        "other-host",
        "empty",
    ],
)
def test_subject(sub: str) -> None:
    assert _reason(_forge(_claims(sub=sub))) == "subject"


def test_subject_query_string_must_match_exactly() -> None:
    url = URL + "?a=1&b=2"
    token = sign(BODY, url=url, key=KEY, now=NOW)

    verify(token, BODY, url=url, keys=[KEY], now=NOW)

    assert _reason(token, url=URL) == "subject"
    assert _reason(token, url=URL + "?b=2&a=1") == "subject"


def test_body_hash_one_byte_changed() -> None:
    token = sign(BODY, url=URL, key=KEY, now=NOW)

    for index in (0, len(BODY) // 2, len(BODY) - 1):
        changed = bytearray(BODY)
        changed[index] ^= 0x01

        assert _reason(token, bytes(changed)) == "body-hash", index


def test_body_hash_other_bodies() -> None:
    token = sign(BODY, url=URL, key=KEY, now=NOW)

    assert _reason(token, b"") == "body-hash"
    assert _reason(token, BODY[:-1]) == "body-hash"
    assert _reason(token, BODY + b"\n") == "body-hash"
    assert _reason(sign(b"", url=URL, key=KEY, now=NOW), BODY) == "body-hash"


@pytest.mark.parametrize("padded", [True, False], ids=["padded", "stripped"])
def test_body_hash_padding_is_optional(padded: bool) -> None:
    value = body_hash(BODY) if padded else body_hash(BODY).rstrip("=")
    token = _forge(_claims(body=value))

    assert value.endswith("=") is padded
    assert verify(token, BODY, url=URL, keys=[KEY], now=NOW).sub == URL


def test_body_hash_other_encodings_refused() -> None:
    digest = hashlib.sha256(b"").digest()
    standard = base64.b64encode(digest).decode()
    empty_hash = "47DEQpj8HBSa-_TImW-5JCeuQeRkm5NMpJWZG3hSuFU="

    # The empty body's hash has '-' and '_', so the standard alphabet differs.
    assert standard != empty_hash

    for value in (standard, digest.hex(), 123):
        token = _hmac_token(HS256_HEADER, _claims(body=value))

        assert _reason(token, b"") == "body-hash", value


@pytest.mark.parametrize(
    "claims",
    [
        _claims(exp=str(NOW + 300)),
        _claims(exp=True),
        _claims(exp=[NOW + 300]),
        _claims(nbf=str(NOW)),
        _claims(iat={"t": NOW}),
    ],
    ids=["exp-string", "exp-bool", "exp-list", "nbf-string", "iat-object"],
)
def test_non_numeric_time_claim(claims: dict[str, t.Any]) -> None:
    assert _reason(_hmac_token(HS256_HEADER, claims)) == "malformed"


def test_claims_are_returned() -> None:
    token = sign(BODY, url=URL, key=KEY, now=NOW, jti=JTI, lifetime=60)

    assert verify(token, BODY, url=URL, keys=[KEY], now=NOW) == Claims(
        sub=URL, jti=JTI, iat=NOW, exp=NOW + 60
    )
