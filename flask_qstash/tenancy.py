"""Tenant resolution
=================

:class:`TenantMiddleware` decides which tenant a request belongs to before any
view runs, and stores the tenant id in the WSGI environ under
``"flask_qstash.tenant"``. Jobs enqueued while handling the request are then
published with that tenant's QStash account, routes and queue names, without
passing the tenant around by hand.

It wraps the app's WSGI callable, the way Flask documents for middleware:

.. code-block:: python

    from flask_qstash import HeaderResolver, TenantMiddleware

    app.wsgi_app = TenantMiddleware(
        app.wsgi_app, resolver=HeaderResolver("X-Tenant-ID")
    )

A resolver is any callable taking the environ and returning a tenant id or
``None``. Several may be given; the first id found wins. Ids that are not
valid tenant ids count as not found, so a resolver cannot smuggle path
characters into a webhook URL.

Webhook deliveries are never resolved here: QStash deliveries carry their
tenant in the signed path, and the paths under ``exclude`` (``/qstash`` by
default, the default ``QSTASH_URL_PREFIX``) pass through untouched. Pass your
prefix if you changed it.

When no tenant is found, the environ key is set to ``None``. Enqueueing a job
in such a request without naming a tenant raises
:class:`~flask_qstash.errors.UnknownTenantError` rather than falling back to
another tenant's account. With ``required=True`` the middleware answers 404
itself instead.

.. autoclass:: TenantMiddleware
.. autoclass:: HeaderResolver
.. autoclass:: SubdomainResolver
.. autoclass:: PathPrefixResolver
.. autodata:: current_tenant
"""

from __future__ import annotations

import json
import typing as t

from flask import current_app
from flask import g
from flask import has_app_context
from flask import has_request_context
from flask import request
from werkzeug.local import LocalProxy

from .config import TENANT_ID_RE

if t.TYPE_CHECKING:  # pragma: no cover
    from _typeshed.wsgi import StartResponse
    from _typeshed.wsgi import WSGIApplication
    from _typeshed.wsgi import WSGIEnvironment

    from .config import Tenant

#: The environ key holding the resolved tenant id, or ``None``.
ENVIRON_KEY = "flask_qstash.tenant"

#: A callable that reads a tenant id from the WSGI environ.
Resolver = t.Callable[["WSGIEnvironment"], str | None]


class HeaderResolver:
    """Read the tenant id from a request header.

    Use it only behind a gateway that sets the header itself: a client can
    send any header it likes.

    :param header: The header name, such as ``"X-Tenant-ID"``.
    """

    def __init__(self, header: str = "X-Tenant-ID") -> None:
        self.header = header
        self._key = "HTTP_" + header.upper().replace("-", "_")

    def __call__(self, environ: WSGIEnvironment) -> str | None:
        value: object = environ.get(self._key)
        return value.strip() if isinstance(value, str) else None


class SubdomainResolver:
    """Read the tenant id from the first label of the host name.

    ``acme.app.example.com`` gives ``acme`` when ``server_name`` is
    ``app.example.com``. Deeper names (``a.b.app.example.com``) and the names
    in ``ignore`` give ``None``.

    :param server_name: The host name tenants are subdomains of.
    :param ignore: Subdomains that are not tenants.
    """

    def __init__(self, server_name: str, *, ignore: t.Iterable[str] = ("www",)) -> None:
        self.server_name = server_name.lower().strip(".")
        self.ignore = frozenset(name.lower() for name in ignore)

    def __call__(self, environ: WSGIEnvironment) -> str | None:
        host = environ.get("HTTP_HOST") or environ.get("SERVER_NAME") or ""
        host = host.lower().rsplit(":", 1)[0] if "]" not in host else host.lower()
        suffix = "." + self.server_name

        if not host.endswith(suffix):
            return None

        label = host[: -len(suffix)]

        if "." in label or label in self.ignore:
            return None

        return label


class PathPrefixResolver:
    """Read the tenant id from the first path segment.

    ``/acme/reports`` gives ``acme``. With ``strip`` (the default) the segment
    moves from ``PATH_INFO`` to ``SCRIPT_NAME``, so the app's routes need no
    tenant part and ``url_for`` keeps generating tenant URLs.

    :param strip: Move the segment out of ``PATH_INFO``.
    :param ignore: First segments that are not tenants, such as ``static``.
    """

    def __init__(
        self, *, strip: bool = True, ignore: t.Iterable[str] = ("static",)
    ) -> None:
        self.strip = strip
        self.ignore = frozenset(ignore)

    def __call__(self, environ: WSGIEnvironment) -> str | None:
        path: str = environ.get("PATH_INFO", "")
        segment, _, rest = path.lstrip("/").partition("/")

        if not segment or segment in self.ignore or not TENANT_ID_RE.match(segment):
            return None

        if self.strip:
            environ["SCRIPT_NAME"] = environ.get("SCRIPT_NAME", "") + "/" + segment
            environ["PATH_INFO"] = "/" + rest

        return segment


class TenantMiddleware:
    """Resolve the tenant of every request before the app sees it.

    :param app: The WSGI application to wrap, usually ``app.wsgi_app``.
    :param resolver: A resolver, or several tried in order.
    :param exclude: Path prefixes passed through unresolved; the webhook
        prefix belongs here.
    :param required: Answer 404 when no tenant is found, instead of passing
        the request on with the tenant set to ``None``.
    """

    def __init__(
        self,
        app: WSGIApplication,
        resolver: Resolver | t.Sequence[Resolver],
        *,
        exclude: t.Iterable[str] = ("/qstash",),
        required: bool = False,
    ) -> None:
        self.app = app
        self.resolvers: tuple[Resolver, ...] = (
            tuple(resolver) if isinstance(resolver, t.Sequence) else (resolver,)
        )
        self.exclude = tuple(p.rstrip("/") for p in exclude)
        self.required = required

    def __call__(
        self, environ: WSGIEnvironment, start_response: StartResponse
    ) -> t.Iterable[bytes]:
        path = environ.get("PATH_INFO", "")

        if any(path == p or path.startswith(p + "/") for p in self.exclude):
            return self.app(environ, start_response)

        tenant = self.resolve(environ)
        environ[ENVIRON_KEY] = tenant

        if tenant is None and self.required:
            body = json.dumps({"error": "Unknown tenant."}).encode()
            start_response(
                "404 Not Found",
                [
                    ("Content-Type", "application/json"),
                    ("Content-Length", str(len(body))),
                ],
            )
            return [body]

        return self.app(environ, start_response)

    def resolve(self, environ: WSGIEnvironment) -> str | None:
        """Return the first valid tenant id the resolvers find, or ``None``."""
        for resolver in self.resolvers:
            tenant = resolver(environ)

            if tenant and TENANT_ID_RE.match(tenant):
                return tenant

        return None


def _get_current_tenant() -> Tenant | None:
    if not has_app_context():
        return None

    tenant: Tenant | None = g.get("_qstash_tenant")

    if tenant is not None:
        return tenant

    if not has_request_context():
        return None

    tenant_id = request.environ.get(ENVIRON_KEY)

    if not tenant_id:
        return None

    ext = current_app.extensions.get("qstash")

    if ext is None:
        return None

    return ext.find_tenant(tenant_id)  # type: ignore[no-any-return]


current_tenant: Tenant | None = LocalProxy(_get_current_tenant)  # type: ignore[assignment]
"""The :class:`~flask_qstash.config.Tenant` of the current delivery or request.

During a delivery it is the tenant named in the webhook path. During a request
it is the tenant :class:`TenantMiddleware` resolved, if that tenant is known.
Otherwise it is ``None``.
"""
