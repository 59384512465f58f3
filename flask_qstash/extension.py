"""The :class:`QStash` extension: configuration, jobs, routes and tenants."""

from __future__ import annotations

import logging
import os
import threading
import time
import typing as t
import weakref
from dataclasses import dataclass
from dataclasses import field
from dataclasses import replace

import httpx
from flask import current_app
from flask import Flask
from flask import g
from flask import has_request_context
from flask import request
from qstash import QStash as QStashClient

from . import webhooks
from .config import build_url
from .config import load_settings
from .config import load_tenant
from .config import Settings
from .config import Tenant
from .config import TENANT_ID_RE
from .errors import UnknownJobError
from .errors import UnknownTenantError
from .idempotency import IdempotencyStore
from .idempotency import SQLAlchemyStore
from .idempotency import store_from_config
from .jobs import EnqueueResult
from .jobs import Job
from .jobs import SchemaLike
from .publishing import Publisher
from .tenancy import ENVIRON_KEY

if t.TYPE_CHECKING:  # pragma: no cover
    import datetime

    from werkzeug.routing import MapAdapter

    from .devserver import DevServer
    from .webhooks import DeadJob

logger = logging.getLogger(__name__)

_F = t.TypeVar("_F", bound=t.Callable[..., t.Any])
TenantLoader = t.Callable[[str], "t.Mapping[str, t.Any] | Tenant | None"]
FailureHook = t.Callable[["DeadJob"], None]

#: The environment variable through which a reloader's child process finds the
#: dev server its parent started, so one server serves both.
DEV_SERVER_ENV = "FLASK_QSTASH_DEV_SERVER_URL"


@dataclass
class _State:
    """Per-app state, kept by the extension in a weak mapping.

    :meta private:
    """

    settings: Settings
    publisher: Publisher
    store: IdempotencyStore
    dev_server: DevServer | None = None
    tenant_cache: dict[str, tuple[float, Tenant | None]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    #: URL adapters bound to public origins, for handlers' ``url_for``.
    url_adapters: dict[str, MapAdapter] = field(default_factory=dict)

    #: The default tenant and ``QSTASH_TENANTS``, with accounts filled in, built
    #: once so a delivery never rebuilds them.
    tenants: dict[str, Tenant] = field(init=False)

    def __post_init__(self) -> None:
        settings = self.settings
        self.tenants = {
            settings.default_tenant: settings.default(),
            **{
                tenant_id: _with_account(tenant, settings)
                for tenant_id, tenant in settings.tenants.items()
            },
        }


class QStash:
    """Background jobs for a Flask app, run by Upstash QStash.

    .. code-block:: python

        qstash = QStash(app)

        @qstash.job("email", schema={"to": fields.Email(required=True)})
        def send_email(payload):
            ...

        send_email.enqueue({"to": "a@example.com"})

    Jobs are recorded on the extension and get a webhook route on every app it
    is initialised on, so the app-factory pattern and several apps in one
    process both work.

    :param app: Call :meth:`init_app` on this app right away.
    :param idempotency_store: The store that keeps jobs from running twice;
        built from ``QSTASH_IDEMPOTENCY_STORE`` if omitted.
    """

    #: The SDK client class used to publish; replace it to substitute another.
    client_class: type[QStashClient] = QStashClient

    def __init__(
        self,
        app: Flask | None = None,
        *,
        idempotency_store: IdempotencyStore | None = None,
    ) -> None:
        self._jobs: dict[str, Job] = {}
        self._state: weakref.WeakKeyDictionary[Flask, _State] = (
            weakref.WeakKeyDictionary()
        )
        self._store = idempotency_store
        self._tenant_loader: TenantLoader | None = None
        self._failure_hooks: list[FailureHook] = []

        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Read the app's ``QSTASH_*`` settings and register the job routes.

        Every key is read once, here, from ``app.config`` and then from the
        environment; see :doc:`/config`. A bad value raises
        :class:`ValueError` naming the key and the fix.

        ``app.wsgi_app`` is wrapped in a
        :class:`~flask_qstash.webhooks.DeliveryMiddleware`, which answers
        deliveries before Flask's request dispatch; see :doc:`/delivery`.

        :param app: The app to set up.
        """
        if "qstash" in app.extensions:
            raise RuntimeError(
                "This app already has a QStash extension."
                " Reuse that one instead of creating a second."
            )

        settings = load_settings(app.config)
        store = self._store or store_from_config(
            settings.idempotency_store,
            retention=settings.idempotency_retention,
            engine_factory=lambda: _flask_sqlalchemy_engine(app),
        )

        # Refuse a bad set-up before anything starts or is registered.
        for job in self._jobs.values():
            _check_atomic(app, store, job)

        dev_server = None

        if _wants_dev_server(app, settings):
            settings, dev_server = _start_dev_server(app, settings)

        publisher = Publisher(
            client_class=self.client_class,
            timeout=settings.publish_timeout,
            retries=settings.publish_retries,
        )
        self._state[app] = _State(settings, publisher, store, dev_server)
        app.extensions["qstash"] = self
        prefix = settings.url_prefix
        app.add_url_rule(
            f"{prefix}/<tenant>/<path:job>",
            endpoint="qstash.unknown",
            view_func=webhooks.unknown,
            methods=["POST"],
        )

        for job in self._jobs.values():
            _add_routes(app, prefix, job)

        app.wsgi_app = webhooks.DeliveryMiddleware(  # type: ignore[method-assign]
            app, app.wsgi_app, self
        )

        from .cli import qstash_cli

        app.cli.add_command(qstash_cli)

        if settings.public_url is None and dev_server is None:
            logger.warning(
                "'QSTASH_PUBLIC_URL' is not set; jobs of app %s cannot be enqueued"
                " until it is",
                app.name,
            )

    def job(
        self,
        name: str,
        *,
        schema: SchemaLike | None = None,
        retries: int | None = None,
        timeout: int | str | datetime.timedelta | None = None,
        queue: str | None = None,
        delay: int | str | datetime.timedelta | None = None,
        cron: str | t.Sequence[str] | None = None,
        parallelism: int | None = None,
        rate: int | None = None,
        period: int | str | datetime.timedelta | None = None,
        atomic: bool = False,
    ) -> t.Callable[[t.Callable[..., t.Any]], Job]:
        """Turn a function into a :class:`~flask_qstash.Job` named ``name``.

        The function takes the validated payload and, if it declares a second
        parameter, a :class:`~flask_qstash.JobContext`. It runs inside an
        application context. Its webhook route is
        ``{QSTASH_URL_PREFIX}/<tenant>/{name}``.

        See :class:`~flask_qstash.Job` for the options.

        .. code-block:: python

            @qstash.job("report", schema=ReportSchema, retries=5, timeout="2m")
            def build_report(payload, ctx):
                ...
        """

        def decorator(func: t.Callable[..., t.Any]) -> Job:
            if name in self._jobs:
                raise ValueError(
                    f"A job named {name!r} is already registered"
                    f" ({self._jobs[name].describe()['function']})."
                    " Give each job its own name."
                )

            job = Job(
                self,
                func,
                name,
                schema=schema,
                retries=retries,
                timeout=timeout,
                queue=queue,
                delay=delay,
                cron=cron,
                parallelism=parallelism,
                rate=rate,
                period=period,
                atomic=atomic,
            )

            apps = list(self._state.items())

            # Check every app first, so a refusal leaves no app half-registered.
            for app, state in apps:
                _check_atomic(app, state.store, job)

                if app._got_first_request:
                    raise RuntimeError(
                        f"Job {name!r} was declared after app {app.name!r} started"
                        " serving requests, so QStash could not reach it. Declare"
                        " jobs at import time, before the first request."
                    )

            for app, state in apps:
                _add_routes(app, state.settings.url_prefix, job)

            self._jobs[name] = job
            return job

        return decorator

    def enqueue(
        self, name: str, payload: t.Any = None, **options: t.Any
    ) -> EnqueueResult:
        """Enqueue the job named ``name``; see :meth:`Job.enqueue`.

        For callers that know a job only by name, such as another service.

        :raises flask_qstash.UnknownJobError: No job has that name.
        """
        return self.get_job(name).enqueue(payload, **options)

    def get_job(self, name: str) -> Job:
        """Return the job named ``name``.

        :raises flask_qstash.UnknownJobError: No job has that name.
        """
        try:
            return self._jobs[name]
        except KeyError:
            raise UnknownJobError(
                f"No job is named {name!r}."
                f" Known jobs: {', '.join(sorted(self._jobs)) or 'none'}."
            ) from None

    @property
    def jobs(self) -> t.Mapping[str, Job]:
        """Every registered job by name."""
        return self._jobs

    def tenant_loader(self, func: TenantLoader) -> TenantLoader:
        """Register a function that loads tenants not in ``QSTASH_TENANTS``.

        It takes a tenant id and returns a mapping of tenant settings (the keys
        of ``QSTASH_TENANTS`` entries), a :class:`~flask_qstash.Tenant`, or
        ``None`` for an unknown tenant. Results are cached for
        ``QSTASH_TENANT_CACHE_TTL`` seconds.

        .. code-block:: python

            @qstash.tenant_loader
            def load_tenant(tenant_id):
                row = db.session.get(Customer, tenant_id)
                return None if row is None else {"token": row.qstash_token, ...}
        """
        self._tenant_loader = func
        return func

    def on_failure(self, func: FailureHook) -> FailureHook:
        """Register a function called when QStash gives up on a job run.

        It receives a :class:`~flask_qstash.DeadJob` inside an application
        context, once per failed message. If it raises, QStash calls again.
        """
        self._failure_hooks.append(func)
        return func

    def run_failure_hooks(self, dead: DeadJob) -> None:
        """Call every :meth:`on_failure` hook with ``dead``."""
        for hook in self._failure_hooks:
            hook(dead)

    def sync_schedules(self, tenants: t.Iterable[str] | None = None) -> list[str]:
        """Create or update the schedules jobs declare with ``cron=``.

        Schedule ids are derived from tenant, job and position, so running
        this on every deploy updates schedules instead of adding more.

        :param tenants: Tenant ids; the default and every configured tenant
            if omitted.
        :return: The schedule ids created or updated.
        """
        settings = self.settings
        ids = (
            list(tenants)
            if tenants is not None
            else [
                settings.default_tenant,
                *settings.tenants,
            ]
        )
        rv: list[str] = []

        for tenant_id in ids:
            for job in self._jobs.values():
                for i, cron in enumerate(job.crons):
                    suffix = job.name if len(job.crons) == 1 else f"{job.name}.{i}"
                    rv.append(job.schedule(cron, tenant=tenant_id, schedule_id=suffix))

        return rv

    @property
    def settings(self) -> Settings:
        """The current app's validated settings."""
        return self._get_state().settings

    @property
    def publisher(self) -> Publisher:
        """The current app's :class:`~flask_qstash.publishing.Publisher`."""
        return self._get_state().publisher

    @property
    def store(self) -> IdempotencyStore:
        """The current app's idempotency store."""
        return self._get_state().store

    @property
    def dev_server(self) -> DevServer | None:
        """The dev server this app started, if it started one."""
        return self._get_state().dev_server

    def default_tenant(self) -> Tenant:
        """The tenant built from the top-level keys."""
        state = self._get_state()
        return state.tenants[state.settings.default_tenant]

    def find_tenant(self, tenant_id: str) -> Tenant | None:
        """Return the tenant ``tenant_id``, or ``None`` if nobody knows it.

        Looks in ``QSTASH_TENANTS``, then asks the tenant loader. Tenants
        without an account of their own get the default tenant's.
        """
        state = self._get_state()
        settings = state.settings
        configured = state.tenants.get(tenant_id)

        if configured is not None:
            return configured

        if self._tenant_loader is None or not TENANT_ID_RE.match(tenant_id):
            return None

        now = time.monotonic()
        cached = state.tenant_cache.get(tenant_id)

        if cached is not None and cached[0] > now:
            return cached[1]

        data = self._tenant_loader(tenant_id)
        tenant = (
            None
            if data is None
            else _with_account(load_tenant(data, tenant_id), settings)
        )

        with state.lock:
            state.tenant_cache[tenant_id] = (now + settings.tenant_cache_ttl, tenant)

        return tenant

    def get_tenant(self, tenant_id: str) -> Tenant:
        """Return the tenant ``tenant_id``.

        :raises flask_qstash.UnknownTenantError: Nobody knows the tenant.
        """
        tenant = self.find_tenant(tenant_id)

        if tenant is None:
            raise UnknownTenantError(
                f"Tenant {tenant_id!r} is not configured. Add it to 'QSTASH_TENANTS'"
                " or return it from the '@qstash.tenant_loader' function."
            )

        return tenant

    def resolve_tenant(self, tenant: str | Tenant | None = None) -> Tenant:
        """Return the tenant a job is published for.

        An explicit tenant wins. Otherwise: the tenant of the delivery being
        run, then the tenant :class:`~flask_qstash.TenantMiddleware` resolved
        for the request, then, outside requests or without the middleware, the
        default tenant. A request whose tenant could not be resolved raises
        instead of borrowing another tenant's account.
        """
        if isinstance(tenant, Tenant):
            return tenant

        if tenant is not None:
            return self.get_tenant(tenant)

        current: Tenant | None = g.get("_qstash_tenant")

        if current is not None:
            return current

        if has_request_context() and ENVIRON_KEY in request.environ:
            tenant_id = request.environ[ENVIRON_KEY]

            if not tenant_id:
                raise UnknownTenantError(
                    "No tenant was resolved for this request, so the job has no"
                    " account to use. Pass 'tenant=' explicitly, or make the"
                    " TenantMiddleware resolver find one."
                )

            return self.get_tenant(tenant_id)

        return self.default_tenant()

    def webhook_url(
        self, tenant: Tenant, job: str, *, tenant_id: str | None = None
    ) -> str:
        """The absolute URL QStash calls to deliver ``job`` for ``tenant``.

        Built only from configuration, never from request headers.

        :param tenant: Whose public origin to use.
        :param job: The job name.
        :param tenant_id: The tenant id in the path, if not ``tenant.id``.
        """
        return build_url(self.settings, tenant, job, tenant_id=tenant_id)

    def _get_state(self) -> _State:
        app = current_app._get_current_object()  # type: ignore[attr-defined]

        try:
            return self._state[app]
        except KeyError:
            raise RuntimeError(
                f"The QStash extension is not initialised on app {app.name!r}."
                " Call 'qstash.init_app(app)' first."
            ) from None


def _check_atomic(app: Flask, store: IdempotencyStore, job: Job) -> None:
    if not job.atomic:
        return

    if not isinstance(store, SQLAlchemyStore) or "sqlalchemy" not in app.extensions:
        raise ValueError(
            f"Job {job.name!r} is atomic, which needs its completion and the app's"
            " Flask-SQLAlchemy session in one database. Initialise Flask-SQLAlchemy"
            " first and set 'QSTASH_IDEMPOTENCY_STORE = \"sqlalchemy\"'."
        )


def _add_routes(app: Flask, prefix: str, job: Job) -> None:
    rule = f"{prefix}/<tenant>/{job.name}"
    app.add_url_rule(
        rule,
        endpoint=f"qstash.deliver.{job.name}",
        view_func=webhooks.deliver,
        methods=["POST"],
        defaults={"job": job.name},
    )
    app.add_url_rule(
        rule + "/failed",
        endpoint=f"qstash.failed.{job.name}",
        view_func=webhooks.failed,
        methods=["POST"],
        defaults={"job": job.name},
    )


def _with_account(tenant: Tenant, settings: Settings) -> Tenant:
    """Give ``tenant`` the default account unless it has its own."""
    if tenant.token:
        return tenant

    return replace(
        tenant,
        token=settings.token,
        url=tenant.url or settings.url,
        current_signing_key=settings.current_signing_key,
        next_signing_key=settings.next_signing_key,
    )


def _wants_dev_server(app: Flask, settings: Settings) -> bool:
    if settings.dev_server is not None:
        return settings.dev_server

    # Zero set-up: a debug app with no account talks to the dev server.
    return app.debug and not settings.token


def _start_dev_server(
    app: Flask, settings: Settings
) -> tuple[Settings, DevServer | None]:
    """Start the dev server, or join the one already running for this app.

    A reloader's child finds its parent's server through an environment
    variable; any other process finds a server on the same database through
    the database's lock file.
    """
    from . import devserver

    public_url = settings.public_url or "http://127.0.0.1:{}".format(
        os.environ.get("FLASK_RUN_PORT", "5000")
    )
    settings = replace(settings, public_url=public_url)
    shared = os.environ.get(DEV_SERVER_ENV)

    if shared and _dev_server_answers(shared):
        logger.info("Using the QStash dev server at %s", shared)
        return _dev_settings(settings, shared), None

    database = settings.dev_server_database or os.path.join(
        app.instance_path, "qstash-dev.sqlite3"
    )

    if database != ":memory:":
        os.makedirs(os.path.dirname(database) or ".", exist_ok=True)

    # Another process may already run a server on this database, such as
    # 'flask run' while 'flask qstash dlq' runs in a second terminal.
    running = devserver.running_at(database)

    if running and _dev_server_answers(running):
        logger.info(
            "Using the QStash dev server at %s (state in %s)", running, database
        )
        return _dev_settings(settings, running), None

    server = devserver.DevServer(database=database, speed=settings.dev_server_speed)

    try:
        server.start()
    except devserver.DatabaseLockedError:
        # It started between our look and our start; join it once it answers.
        deadline = time.monotonic() + 10

        while time.monotonic() < deadline:
            running = devserver.running_at(database)

            if running and _dev_server_answers(running):
                return _dev_settings(settings, running), None

            time.sleep(0.1)

        raise

    os.environ[DEV_SERVER_ENV] = server.url
    logger.info(
        "Started the QStash dev server at %s (state in %s)", server.url, database
    )
    return _dev_settings(settings, server.url), server


def _dev_server_answers(url: str) -> bool:
    """Whether a dev server with the default credentials answers at ``url``."""
    from . import devserver

    try:
        rv = httpx.get(
            url + "/v2/keys",
            headers={"Authorization": f"Bearer {devserver.DEFAULT_TOKEN}"},
            timeout=1.0,
        )
    except httpx.HTTPError:
        return False

    return rv.status_code == 200


def _dev_settings(settings: Settings, url: str) -> Settings:
    from . import devserver

    return settings.with_account(
        token=devserver.DEFAULT_TOKEN,
        url=url,
        current_signing_key=devserver.DEFAULT_CURRENT_SIGNING_KEY,
        next_signing_key=devserver.DEFAULT_NEXT_SIGNING_KEY,
    )


def _flask_sqlalchemy_engine(app: Flask) -> t.Any:
    ext = app.extensions.get("sqlalchemy")

    if ext is None:
        raise RuntimeError(
            "'QSTASH_IDEMPOTENCY_STORE' is 'sqlalchemy' but the app has no"
            " Flask-SQLAlchemy extension. Initialise Flask-SQLAlchemy first, or give"
            " a database URL instead."
        )

    with app.app_context():
        return ext.engine
