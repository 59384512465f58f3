"""Signing and verifying QStash delivery tokens.

QStash signs every delivery with a JWT in the ``Upstash-Signature`` header:
HS256 over the signing key's UTF-8 bytes, issuer ``Upstash``, ``sub`` set to
the exact URL the request goes to and ``body`` set to the base64url SHA-256 of
the raw body. :func:`verify` checks such a token the way the webhook view needs
it: on raw bytes, with both signing keys, a clock leeway, and an error that
names the failed check. :func:`sign` produces the same tokens, for the dev
server and for tests.

The SDK's ``qstash.Receiver`` is not used for deliveries: in qstash 3.4.0 its
clock tolerance is ignored, a token without a ``body`` claim raises
:class:`KeyError`, it takes no bytes, and its error hides which check failed.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
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

# Time claims are checked by ``_check_times`` against one clock, not by PyJWT.
_OPTIONS: jwt.types.Options = {
    "require": ["iss", "sub", "exp", "nbf", "iat", "jti", "body"],
    "verify_exp": False,
    "verify_nbf": False,
    "verify_iat": False,
}
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

    try:
        header = jwt.get_unverified_header(token)
    except jwt.InvalidTokenError:
        # Not only DecodeError: a bad ``kid`` or ``crit`` header raises its parent.
        raise SignatureError("malformed", "The signature is not a JWT.") from None

    if header.get("alg") != "HS256":
        raise SignatureError("algorithm", "The signature is not signed with HS256.")

    claims = _decode_with_any_key(token, keys, leeway=leeway, now=now)
    sub = claims["sub"]

    if not isinstance(sub, str) or not hmac.compare_digest(
        sub.encode("utf-8", "surrogatepass"), url.encode("utf-8", "surrogatepass")
    ):
        raise SignatureError("subject", "The signature was issued for another URL.")

    claimed = claims["body"]
    expected = body_hash(body).rstrip("=")

    if not isinstance(claimed, str) or not hmac.compare_digest(
        claimed.rstrip("=").encode("utf-8", "surrogatepass"), expected.encode()
    ):
        raise SignatureError("body-hash", "The body does not match the signature.")

    return Claims(
        sub=sub,
        jti=str(claims.get("jti", "")),
        iat=int(claims["iat"]),
        exp=int(claims["exp"]),
    )


def _decode_with_any_key(
    token: str, keys: t.Sequence[str], *, leeway: float, now: float | None
) -> dict[str, t.Any]:
    """Decode ``token`` with the first key whose HMAC matches.

    A token whose HMAC matches but whose claims fail is reported with the claim
    check that failed, not as a key mismatch, so operators see the real cause.
    """
    for key in keys:
        if not key:
            continue

        try:
            claims: dict[str, t.Any] = jwt.decode(
                token, key, algorithms=["HS256"], issuer=ISSUER, options=_OPTIONS
            )
        except jwt.InvalidSignatureError:
            continue
        except jwt.InvalidIssuerError:
            raise SignatureError(
                "issuer", "The signature has the wrong issuer."
            ) from None
        except jwt.MissingRequiredClaimError as exc:
            raise SignatureError(
                "missing-claim", f"The signature lacks the {exc.claim!r} claim."
            ) from None
        except jwt.InvalidTokenError:
            raise SignatureError(
                "malformed", "The signature is not a valid JWT."
            ) from None

        _check_times(claims, leeway=leeway, now=time.time() if now is None else now)
        return claims

    raise SignatureError("wrong-key", "No signing key matches the signature.")


def _check_times(claims: dict[str, t.Any], *, leeway: float, now: float) -> None:
    """Check ``exp``, ``nbf`` and ``iat`` against ``now`` with ``leeway``.

    PyJWT takes no clock argument, so the time claims are checked here; that
    keeps tests and the dev server's own checks on one clock.
    """
    for name in ("exp", "nbf", "iat"):
        value = claims[name]

        if isinstance(value, bool) or not isinstance(value, int | float):
            raise SignatureError("malformed", f"The {name!r} claim is not a number.")

    if claims["exp"] <= now - leeway:
        raise SignatureError("expired", "The signature has expired.")

    if claims["nbf"] > now + leeway or claims["iat"] > now + leeway:
        raise SignatureError("not-yet-valid", "The signature is not valid yet.")
