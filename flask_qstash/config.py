"""Settings and tenant configuration, validated with marshmallow.

Every ``QSTASH_*`` key is read once, in :meth:`~flask_qstash.QStash.init_app`:
from ``app.config`` first, then from the environment variable of the same
name. :func:`load_settings` turns them into a frozen :class:`Settings`; a bad
value raises :class:`ValueError` naming the key and the fix.
"""

from __future__ import annotations

import json
import os
import re
import typing as t
from dataclasses import dataclass
from dataclasses import field
from dataclasses import replace
from datetime import timedelta

from marshmallow import EXCLUDE
from marshmallow import fields
from marshmallow import post_load
from marshmallow import Schema
from marshmallow import validate
from marshmallow import ValidationError

#: Tenant ids: letters, digits, ``-`` and ``_``, starting with a letter or digit.
#: No dots, so ``tenant.queue`` names and labels split unambiguously.
TENANT_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$")

#: Job names: letters, digits, ``-``, ``_`` and ``.``.
JOB_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")

_DURATION_RE = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")

#: Default ``QSTASH_MAX_BODY_SIZE``: QStash's own 1 MiB message cap.
DEFAULT_MAX_BODY_SIZE = 1024 * 1024


def parse_duration(value: t.Any, *, name: str) -> int:
    """Return ``value`` as whole seconds.

    Accepts an int, a :class:`~datetime.timedelta` or a QStash duration string
    such as ``"90s"``, ``"1h30m"`` or ``"2d"``.

    :param value: The value to convert.
    :param name: What the value is, for the error message.
    """
    if isinstance(value, timedelta):
        value = value.total_seconds()

    if isinstance(value, bool):
        raise ValueError(f"{name} must be a duration, got {value!r}.")

    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"{name} must not be negative, got {value!r}.")

        return int(value)

    if isinstance(value, str):
        text = value.strip()

        if text.isdigit():
            return int(text)

        match = _DURATION_RE.match(text)

        if text and match:
            days, hours, minutes, seconds = (int(g or 0) for g in match.groups())
            return ((days * 24 + hours) * 60 + minutes) * 60 + seconds

    raise ValueError(
        f"{name} must be seconds or a duration such as '90s', '1h30m' or '2d',"
        f" got {value!r}."
    )


class _Duration(fields.Field[int]):
    """A duration in seconds, from an int, a timedelta or a string like ``1h``."""

    def _deserialize(
        self,
        value: t.Any,
        attr: str | None,
        data: t.Mapping[str, t.Any] | None,
        **kwargs: t.Any,
    ) -> int:
        try:
            return parse_duration(value, name="The value")
        except ValueError as exc:
            raise ValidationError(str(exc)) from None


class _Origin(fields.String):
    """An ``http(s)://host[:port]`` origin, with an optional path and no end slash."""

    def _deserialize(
        self,
        value: t.Any,
        attr: str | None,
        data: t.Mapping[str, t.Any] | None,
        **kwargs: t.Any,
    ) -> str:
        text = super()._deserialize(value, attr, data, **kwargs).strip()

        if not re.match(r"^https?://[^/?#\s]+(/[^?#\s]*)?$", text):
            raise ValidationError(
                "Must be an absolute http(s) URL without query or fragment,"
                f" got {text!r}."
            )

        return text.rstrip("/")


@dataclass(frozen=True)
class Tenant:
    """One tenant's QStash account and defaults.

    Tenants without an account of their own share the default tenant's token
    and keys; their jobs are still kept apart by the tenant id in every route,
    queue name, label and flow-control key.
    """

    #: The tenant id, as it appears in webhook paths.
    id: str

    #: The QStash API token used to publish for this tenant.
    token: str | None = field(default=None, repr=False)

    #: The QStash API base URL, ``None`` for the SDK's default.
    url: str | None = None

    #: The current signing key, tried first when verifying.
    current_signing_key: str | None = field(default=None, repr=False)

    #: The next signing key, tried second, so key rotation drops nothing.
    next_signing_key: str | None = field(default=None, repr=False)

    #: The public origin QStash calls for this tenant; the app's if ``None``.
    public_url: str | None = None

    #: Seconds to delay every job of this tenant unless a job says otherwise.
    default_delay: int | None = None

    #: Retries for every job of this tenant unless a job says otherwise.
    max_retries: int | None = None

    @property
    def signing_keys(self) -> tuple[str, ...]:
        """The signing keys to verify with, current first."""
        return tuple(k for k in (self.current_signing_key, self.next_signing_key) if k)


class TenantSchema(Schema):
    """Validates one tenant's settings, from ``QSTASH_TENANTS`` or a loader."""

    class Meta:
        unknown = EXCLUDE

    id = fields.String(
        required=True,
        validate=validate.Regexp(
            TENANT_ID_RE,
            error="Must be 1 to 63 letters, digits, '-' or '_', got {input!r}.",
        ),
    )
    token = fields.String(load_default=None, validate=validate.Length(min=1))
    url = _Origin(load_default=None)
    current_signing_key = fields.String(
        load_default=None, validate=validate.Length(min=1)
    )
    next_signing_key = fields.String(load_default=None, validate=validate.Length(min=1))
    public_url = _Origin(load_default=None)
    default_delay = _Duration(load_default=None)
    max_retries = fields.Integer(
        load_default=None, strict=False, validate=validate.Range(min=0, max=100)
    )

    @post_load
    def _make_tenant(self, data: dict[str, t.Any], **kwargs: t.Any) -> Tenant:
        if data["token"] and not data["current_signing_key"]:
            raise ValidationError(
                "A tenant with its own token needs its own signing keys too."
                " Add 'current_signing_key' and 'next_signing_key'.",
                "current_signing_key",
            )

        if data["current_signing_key"] and not data["token"]:
            raise ValidationError(
                "A tenant with its own signing keys needs its own token too."
                " Add 'token', or drop the keys to share the default account.",
                "token",
            )

        return Tenant(**data)


_KEYS: dict[str, tuple[str, t.Any]] = {
    # config key: (settings attribute, default)
    "QSTASH_TOKEN": ("token", None),
    "QSTASH_CURRENT_SIGNING_KEY": ("current_signing_key", None),
    "QSTASH_NEXT_SIGNING_KEY": ("next_signing_key", None),
    "QSTASH_URL": ("url", None),
    "QSTASH_PUBLIC_URL": ("public_url", None),
    "QSTASH_URL_PREFIX": ("url_prefix", "/qstash"),
    "QSTASH_TENANTS": ("tenants", None),
    "QSTASH_DEFAULT_TENANT": ("default_tenant", "default"),
    "QSTASH_DEFAULT_DELAY": ("default_delay", None),
    "QSTASH_MAX_RETRIES": ("max_retries", None),
    "QSTASH_MAX_BODY_SIZE": ("max_body_size", DEFAULT_MAX_BODY_SIZE),
    "QSTASH_CLOCK_LEEWAY": ("clock_leeway", 5),
    "QSTASH_PUBLISH_TIMEOUT": ("publish_timeout", 10),
    "QSTASH_PUBLISH_RETRIES": ("publish_retries", 3),
    "QSTASH_IDEMPOTENCY_STORE": ("idempotency_store", "memory"),
    "QSTASH_IDEMPOTENCY_RETENTION": ("idempotency_retention", 14 * 86400),
    "QSTASH_LEASE": ("lease", 300),
    "QSTASH_TENANT_CACHE_TTL": ("tenant_cache_ttl", 60),
    "QSTASH_DEV_SERVER": ("dev_server", None),
    "QSTASH_DEV_SERVER_DATABASE": ("dev_server_database", None),
    "QSTASH_DEV_SERVER_SPEED": ("dev_server_speed", 1.0),
}

_FIXES: dict[str, str] = {
    "QSTASH_URL": "Use the API origin, such as 'https://qstash.upstash.io'.",
    "QSTASH_PUBLIC_URL": "Use the origin QStash calls, such as 'https://app.example.com'.",
    "QSTASH_URL_PREFIX": "Use a path such as '/qstash'.",
    "QSTASH_TENANTS": (
        "Use a mapping of tenant id to settings, such as"
        " {'acme': {'token': ..., 'current_signing_key': ...,"
        " 'next_signing_key': ...}}."
    ),
    "QSTASH_DEFAULT_DELAY": "Use seconds or a duration such as '30s'.",
    "QSTASH_IDEMPOTENCY_STORE": (
        "Use 'memory', 'sqlalchemy', a 'redis://' URL or an SQLAlchemy database URL."
    ),
}


class _SettingsSchema(Schema):
    class Meta:
        unknown = EXCLUDE

    QSTASH_TOKEN = fields.String(load_default=None)
    QSTASH_CURRENT_SIGNING_KEY = fields.String(load_default=None)
    QSTASH_NEXT_SIGNING_KEY = fields.String(load_default=None)
    QSTASH_URL = _Origin(load_default=None)
    QSTASH_PUBLIC_URL = _Origin(load_default=None)
    QSTASH_URL_PREFIX = fields.String(
        validate=validate.Regexp(
            r"^/[A-Za-z0-9_.~/-]*[A-Za-z0-9_.~-]$",
            error="Must start with '/' and not end with '/', got {input!r}.",
        )
    )
    QSTASH_TENANTS = fields.Dict(
        keys=fields.String(), values=fields.Raw(), load_default=None
    )
    QSTASH_DEFAULT_TENANT = fields.String(
        validate=validate.Regexp(
            TENANT_ID_RE, error="Not a valid tenant id: {input!r}."
        )
    )
    QSTASH_DEFAULT_DELAY = _Duration(load_default=None)
    QSTASH_MAX_RETRIES = fields.Integer(
        load_default=None, strict=False, validate=validate.Range(min=0, max=100)
    )
    QSTASH_MAX_BODY_SIZE = fields.Integer(strict=False, validate=validate.Range(min=1))
    QSTASH_CLOCK_LEEWAY = fields.Float(validate=validate.Range(min=0, max=300))
    QSTASH_PUBLISH_TIMEOUT = fields.Float(validate=validate.Range(min=0.1, max=600))
    QSTASH_PUBLISH_RETRIES = fields.Integer(
        strict=False, validate=validate.Range(min=0, max=20)
    )
    QSTASH_IDEMPOTENCY_STORE = fields.Raw()
    QSTASH_IDEMPOTENCY_RETENTION = _Duration()
    QSTASH_LEASE = _Duration(validate=validate.Range(min=1))
    QSTASH_TENANT_CACHE_TTL = _Duration()
    QSTASH_DEV_SERVER = fields.Boolean(load_default=None, allow_none=True)
    QSTASH_DEV_SERVER_DATABASE = fields.String(load_default=None)
    QSTASH_DEV_SERVER_SPEED = fields.Float(validate=validate.Range(min=0.001))


@dataclass(frozen=True)
class Settings:
    """Every ``QSTASH_*`` setting of one app, validated.

    The attributes are the keys without the ``QSTASH_`` prefix, lower-cased;
    ``docs/config.rst`` documents each key.
    """

    token: str | None = field(repr=False)
    current_signing_key: str | None = field(repr=False)
    next_signing_key: str | None = field(repr=False)
    url: str | None
    public_url: str | None
    url_prefix: str
    tenants: dict[str, Tenant]
    default_tenant: str
    default_delay: int | None
    max_retries: int | None
    max_body_size: int
    clock_leeway: float
    publish_timeout: float
    publish_retries: int
    # A store URL may carry a database password.
    idempotency_store: t.Any = field(repr=False)
    idempotency_retention: int
    lease: int
    tenant_cache_ttl: int
    dev_server: bool | None
    dev_server_database: str | None
    dev_server_speed: float

    def default(self) -> Tenant:
        """The tenant built from the top-level keys."""
        return Tenant(
            id=self.default_tenant,
            token=self.token,
            url=self.url,
            current_signing_key=self.current_signing_key,
            next_signing_key=self.next_signing_key,
            public_url=self.public_url,
            default_delay=self.default_delay,
            max_retries=self.max_retries,
        )

    def with_account(
        self, *, token: str, url: str, current_signing_key: str, next_signing_key: str
    ) -> Settings:
        """Return a copy whose default account is the given one (the dev server)."""
        return replace(
            self,
            token=token,
            url=url,
            current_signing_key=current_signing_key,
            next_signing_key=next_signing_key,
        )


def read_raw(
    config: t.Mapping[str, t.Any], environ: t.Mapping[str, str]
) -> dict[str, t.Any]:
    """Collect every known key from ``config``, falling back to ``environ``.

    Empty environment variables count as unset, as a shell's ``export X=`` does.
    """
    raw: dict[str, t.Any] = {}

    for key, (_, default) in _KEYS.items():
        if key in config and config[key] is not None:
            raw[key] = config[key]
        elif environ.get(key):
            raw[key] = _from_environ(key, environ[key])
        elif default is not None:
            raw[key] = default

    return raw


def _from_environ(key: str, value: str) -> t.Any:
    if key != "QSTASH_TENANTS":
        return value

    try:
        return json.loads(value)
    except ValueError:
        raise ValueError(
            "The environment variable 'QSTASH_TENANTS' is not valid JSON."
            f" {_FIXES['QSTASH_TENANTS']}"
        ) from None


def load_settings(
    config: t.Mapping[str, t.Any], environ: t.Mapping[str, str] | None = None
) -> Settings:
    """Validate the ``QSTASH_*`` keys of ``config`` and return :class:`Settings`.

    :param config: The app's config.
    :param environ: The environment to fall back to; :data:`os.environ` if omitted.
    :raises ValueError: A key has a bad value; the message names it and the fix.
    """
    raw = read_raw(config, os.environ if environ is None else environ)

    try:
        data = _SettingsSchema().load(raw)
    except ValidationError as exc:
        raise _config_error(exc.messages) from None

    tenants = _load_tenants(data.get("QSTASH_TENANTS") or {})
    default_id = data["QSTASH_DEFAULT_TENANT"]

    if default_id in tenants:
        raise ValueError(
            f"'QSTASH_TENANTS' defines {default_id!r}, the default tenant's id."
            " Configure the default tenant with the top-level keys, or change"
            " 'QSTASH_DEFAULT_TENANT'."
        )

    if bool(data["QSTASH_TOKEN"]) and not data["QSTASH_CURRENT_SIGNING_KEY"]:
        raise ValueError(
            "'QSTASH_CURRENT_SIGNING_KEY' is not set, so no delivery can be verified."
            " Copy both signing keys from the QStash console next to 'QSTASH_TOKEN'."
        )

    kwargs = {attr: data.get(key, default) for key, (attr, default) in _KEYS.items()}
    kwargs["tenants"] = tenants
    return Settings(**kwargs)


def load_tenant(data: t.Mapping[str, t.Any] | Tenant, tenant_id: str) -> Tenant:
    """Validate one tenant's settings, as given by a tenant loader.

    :param data: A mapping of tenant settings, or a ready :class:`Tenant`.
    :param tenant_id: The id the tenant was asked for.
    :raises ValueError: The settings are invalid or carry another id.
    """
    if isinstance(data, Tenant):
        tenant = data
    else:
        try:
            tenant = TenantSchema().load({"id": tenant_id, **data})
        except ValidationError as exc:
            raise ValueError(
                f"The tenant loader returned invalid settings for {tenant_id!r}:"
                f" {_flatten(exc.messages)}"
            ) from None

    if tenant.id != tenant_id:
        raise ValueError(
            f"The tenant loader was asked for {tenant_id!r} but returned {tenant.id!r}."
            " Return the tenant with the id it was asked for, or None."
        )

    return tenant


def _load_tenants(raw: t.Mapping[str, t.Any]) -> dict[str, Tenant]:
    tenants: dict[str, Tenant] = {}

    for tenant_id, value in raw.items():
        if not isinstance(value, t.Mapping):
            raise ValueError(
                f"'QSTASH_TENANTS[{tenant_id!r}]' must be a mapping of settings,"
                f" got {type(value).__name__}. {_FIXES['QSTASH_TENANTS']}"
            )

        try:
            tenants[tenant_id] = TenantSchema().load({**value, "id": tenant_id})
        except ValidationError as exc:
            raise ValueError(
                f"'QSTASH_TENANTS[{tenant_id!r}]' is invalid: {_flatten(exc.messages)}"
            ) from None

    return tenants


def _config_error(messages: t.Any) -> ValueError:
    key = sorted(messages)[0]
    fix = _FIXES.get(key, "See the configuration docs for the accepted values.")
    return ValueError(f"{key!r} is invalid: {_flatten(messages[key])} {fix}")


def _flatten(messages: t.Any) -> str:
    if isinstance(messages, dict):
        return " ".join(f"{k}: {_flatten(v)}" for k, v in sorted(messages.items()))

    if isinstance(messages, list):
        return " ".join(_flatten(m) for m in messages)

    return str(messages)


def build_url(
    settings: Settings, tenant: Tenant, job: str, *, tenant_id: str | None = None
) -> str:
    """Return ``{public origin}{prefix}/{tenant}/{job}``, the URL QStash calls.

    Built only from configuration, never from request headers.
    """
    origin = tenant.public_url or settings.public_url

    if origin is None:
        raise RuntimeError(
            "'QSTASH_PUBLIC_URL' is not set, so QStash would not know where to"
            " deliver jobs. Set it to the app's public origin, such as"
            " 'https://app.example.com'."
        )

    return f"{origin}{settings.url_prefix}/{tenant_id or tenant.id}/{job}"
