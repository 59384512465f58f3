"""Signing and verifying QStash delivery tokens.

QStash signs every delivery with a JWT in the ``Upstash-Signature`` header:
HS256 over the signing key's UTF-8 bytes, issuer ``Upstash``, ``sub`` set to
the exact URL the request goes to and ``body`` set to the base64url SHA-256 of
the raw body. :func:`verify` checks such a token the way the webhook view needs
it: on raw bytes, with both signing keys, a clock leeway, and an error that
names the failed check. :func:`sign` produces the same tokens, for the dev
server and for tests.

PyJWT produces the tokens. The SDK's ``qstash.Receiver`` is not used for
deliveries: in qstash 3.4.0 its clock tolerance is ignored, a token without a
``body`` claim raises :class:`KeyError`, it takes no bytes, and its error hides
which check failed.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import json
import re
import secrets
import time
import typing as t
from dataclasses import dataclass

import jwt

from .errors import SignatureError

#: The ``iss`` claim of every QStash token.
ISSUER = "Upstash"

#: Seconds a token stays valid after it is issued, as QStash does.
TOKEN_LIFETIME = 300

#: Tokens longer than this are refused before any parsing. Real ones are about
#: 400 bytes; the cap keeps a hostile header from costing decode time.
MAX_TOKEN_SIZE = 4096

_REQUIRED_CLAIMS = ("iss", "sub", "exp", "nbf", "iat", "jti", "body")
_TOKEN_RE = re.compile(r"[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*")
_JTI_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


@dataclass(frozen=True)
class Claims:
    """The verified claims of a delivery token."""

    #: The URL the token was issued for.
    sub: str

    #: The token id, unique per delivery attempt.
    jti: str

    #: Unix time the token was issued at.
    iat: int

    #: Unix time the token expires at.
    exp: int


def body_hash(body: bytes) -> str:
    """Return the ``body`` claim for ``body``: padded base64url of its SHA-256.

    :param body: The raw request body.
    """
    digest = hashlib.sha256(body).digest()
    return base64.urlsafe_b64encode(digest).decode("ascii")


def new_jti() -> str:
    """Return a fresh token id in QStash's format, ``jwt_`` and 28 characters."""
    return "jwt_" + "".join(secrets.choice(_JTI_ALPHABET) for _ in range(28))


def sign(
    body: bytes,
    *,
    url: str,
    key: str,
    now: int | None = None,
    lifetime: int = TOKEN_LIFETIME,
    jti: str | None = None,
) -> str:
    """Return an ``Upstash-Signature`` token for delivering ``body`` to ``url``.

    The token has the header, the claims and the claim order QStash emits, so
    both :func:`verify` and ``qstash.Receiver`` accept it.

    :param body: The exact bytes that will be sent.
    :param url: The exact URL the request goes to; it becomes ``sub``.
    :param key: The signing key, such as ``QSTASH_CURRENT_SIGNING_KEY``.
    :param now: Unix time to issue the token at; the current time if omitted.
    :param lifetime: Seconds until ``exp``.
    :param jti: The token id; a fresh random one if omitted.

    .. code-block:: python

        token = sign(b'{"v": 1}', url="https://app.example/qstash/acme/email",
                     key=app.config["QSTASH_CURRENT_SIGNING_KEY"])
    """
    issued = int(time.time()) if now is None else int(now)

    # Claims in alphabetical order, as QStash's Go encoder writes them.
    claims: dict[str, t.Any] = {
        "aud": "",
        "body": body_hash(body),
        "exp": issued + lifetime,
        "iat": issued,
        "iss": ISSUER,
        "jti": jti if jti is not None else new_jti(),
        "nbf": issued,
        "sub": url,
    }

    return jwt.encode(claims, key, algorithm="HS256", headers={"typ": "JWT"})


def verify(
    token: str | None,
    body: bytes,
    *,
    url: str,
    keys: t.Sequence[str],
    leeway: float = 5.0,
    now: float | None = None,
) -> Claims:
    """Check a delivery token against the raw body and the expected URL.

    Each key is tried in turn, so a delivery signed with either the current or
    the next signing key passes, and key rotation never drops a delivery. The
    first check that fails raises :class:`~flask_qstash.errors.SignatureError`
    whose ``reason`` names it; the message never contains the token.

    Only HS256 exists for QStash tokens, so the check is written out here
    rather than configured in a general JWT library: the algorithm can never
    be chosen by the token, and a delivery costs one HMAC per key tried.

    :param token: The ``Upstash-Signature`` header value, or ``None``.
    :param body: The raw request body, exactly as received.
    :param url: The URL the delivery must have been sent to, built from
        configuration and never from request headers.
    :param keys: The signing keys to try, current first.
    :param leeway: Seconds of clock skew tolerated for ``exp``, ``nbf`` and
        ``iat``.
    :param now: Unix time to check against; the current time if omitted.
    """
    if not token:
        raise SignatureError("missing", "The 'Upstash-Signature' header is missing.")

    if len(token) > MAX_TOKEN_SIZE:
        raise SignatureError("oversized", "The signature token is too long.")

    if not _TOKEN_RE.fullmatch(token):
        raise SignatureError("malformed", "The signature is not a JWT.")

    parts = token.split(".")
    _check_header(parts[0])

    signature = _b64decode(parts[2])
    signing_input = token[: len(parts[0]) + 1 + len(parts[1])].encode("ascii")

    for key in keys:
        if not key:
            continue

        expected = hmac.digest(key.encode("utf-8"), signing_input, "sha256")

        if hmac.compare_digest(expected, signature):
            break
    else:
        raise SignatureError("wrong-key", "No signing key matches the signature.")

    claims = _decode_segment(parts[1])

    if not isinstance(claims, dict):
        raise SignatureError("malformed", "The signature claims are not an object.")

    _check_claims(claims, leeway=leeway, now=time.time() if now is None else now)
    sub = claims["sub"]

    if not hmac.compare_digest(
        sub.encode("utf-8", "surrogatepass"), url.encode("utf-8", "surrogatepass")
    ):
        raise SignatureError("subject", "The signature was issued for another URL.")

    claimed = claims["body"]
    expected_hash = body_hash(body).rstrip("=")

    if not isinstance(claimed, str) or not hmac.compare_digest(
        claimed.rstrip("=").encode("utf-8", "surrogatepass"), expected_hash.encode()
    ):
        raise SignatureError("body-hash", "The body does not match the signature.")

    return Claims(
        sub=sub,
        jti=claims["jti"],
        iat=int(claims["iat"]),
        exp=int(claims["exp"]),
    )


@functools.lru_cache(maxsize=16)
def _check_header(segment: str) -> None:
    """Check a token's header segment; cached, since QStash sends one header.

    Only segments that pass are cached: a failure raises, and ``lru_cache``
    stores no exceptions.
    """
    header = _decode_segment(segment)

    if not isinstance(header, dict):
        raise SignatureError("malformed", "The signature header is not an object.")

    if header.get("alg") != "HS256":
        raise SignatureError("algorithm", "The signature is not signed with HS256.")

    # Critical extensions must be understood to be honoured (RFC 7515); none are.
    if "crit" in header or "b64" in header:
        raise SignatureError("malformed", "The signature uses unknown extensions.")


def _b64decode(segment: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError):
        raise SignatureError("malformed", "The signature is not a JWT.") from None


def _decode_segment(segment: str) -> t.Any:
    try:
        return json.loads(_b64decode(segment))
    except ValueError:
        raise SignatureError("malformed", "The signature is not a JWT.") from None


def _check_claims(claims: dict[str, t.Any], *, leeway: float, now: float) -> None:
    """Check the claims of a token whose HMAC matched."""
    for name in _REQUIRED_CLAIMS:
        if claims.get(name) is None:
            raise SignatureError(
                "missing-claim", f"The signature lacks the {name!r} claim."
            )

    if claims["iss"] != ISSUER:
        raise SignatureError("issuer", "The signature has the wrong issuer.")

    # QStash sends an empty audience; any other would be meant for someone else.
    if claims.get("aud") not in (None, "", []):
        raise SignatureError("malformed", "The signature is meant for an audience.")

    if not isinstance(claims["sub"], str) or not isinstance(claims["jti"], str):
        raise SignatureError("malformed", "The 'sub' and 'jti' claims must be text.")

    for name in ("exp", "nbf", "iat"):
        value = claims[name]

        if isinstance(value, bool) or not isinstance(value, int | float):
            raise SignatureError("malformed", f"The {name!r} claim is not a number.")

    if claims["exp"] <= now - leeway:
        raise SignatureError("expired", "The signature has expired.")

    if claims["nbf"] > now + leeway or claims["iat"] > now + leeway:
        raise SignatureError("not-yet-valid", "The signature is not valid yet.")
