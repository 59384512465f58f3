"""Jobs: decorated functions that run as QStash deliveries.

:meth:`QStash.job <flask_qstash.QStash.job>` wraps a function in a
:class:`Job`. Calling the job runs the function directly; :meth:`Job.enqueue`
publishes a run to QStash, which later delivers it to the job's webhook route.
"""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import functools
import inspect
import json
import logging
import re
import time
import typing as t
import uuid
import zoneinfo
from dataclasses import dataclass

from cronsim import CronSim
from cronsim import CronSimError
from flask import current_app
from marshmallow import fields
from marshmallow import Schema

from . import signals
from .config import JOB_NAME_RE
from .config import parse_duration
from .publishing import PublishRequest

if t.TYPE_CHECKING:  # pragma: no cover
    from .config import Tenant
    from .extension import QStash

logger = logging.getLogger(__name__)

#: The version of the JSON envelope every job body is wrapped in.
ENVELOPE_VERSION = 1

_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,100}$")
_DEDUP_ID_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,100}$")
_CRON_TZ_RE = re.compile(r"^CRON_TZ=(\S+)\s+(.*)$")

SchemaLike = Schema | type[Schema] | t.Mapping[str, fields.Field[t.Any]]


@dataclass(frozen=True)
class JobContext:
    """What a handler learns about the delivery it runs in.

    A handler receives it as its second argument when it declares one:

    .. code-block:: python

        @qstash.job("email")
        def send_email(payload, ctx):
            log.info("attempt %d of message %s", ctx.retried + 1, ctx.message_id)
    """

    #: The job's name.
    job: str

    #: The tenant id from the webhook path.
    tenant: str

    #: The QStash message id, stable across retries of one run.
    message_id: str

    #: How many times QStash delivered this message before, 0 at first.
    retried: int = 0

    #: The schedule that created this run, if a cron schedule did.
    schedule_id: str | None = None

    #: When the run was enqueued, if the envelope says.
    enqueued_at: datetime.datetime | None = None


@dataclass(frozen=True)
class EnqueueResult:
    """What :meth:`Job.enqueue` returns for one published run."""

    #: The job's name.
    job: str

    #: The tenant id the run belongs to.
    tenant: str

    #: The QStash message id.
    message_id: str

    #: The deduplication id the message was published with.
    deduplication_id: str

    #: Whether QStash already had this deduplication id and kept that message.
    deduplicated: bool = False


def split_cron(cron: str) -> tuple[str | None, str]:
    """Split an optional ``CRON_TZ=<zone>`` prefix off ``cron`` and check both.

    :raises ValueError: The expression or the zone is invalid.
    """
    text = cron.strip()
    zone: str | None = None
    match = _CRON_TZ_RE.match(text)

    if match:
        zone, text = match.group(1), match.group(2).strip()

        try:
            zoneinfo.ZoneInfo(zone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"Unknown time zone {zone!r} in cron {cron!r}."
                " Use an IANA name such as 'CRON_TZ=Europe/Paris 0 4 * * *'."
            ) from None

    if len(text.split()) != 5:
        raise ValueError(
            f"Cron {cron!r} must have five fields (minute hour day month weekday),"
            " optionally after a 'CRON_TZ=<zone>' prefix."
        )

    try:
        CronSim(text, datetime.datetime(2000, 1, 1))
    except CronSimError as exc:
        raise ValueError(
            f"Cron {cron!r} is invalid: {exc}. Fix the expression."
        ) from None

    return zone, text


class Job:
    """A function that runs as a QStash job. Created by :meth:`QStash.job`.

    :param extension: The extension the job is registered with.
    :param func: The handler, taking the payload and optionally a
        :class:`JobContext`.
    :param name: The job's name, the last segment of its webhook path.
    :param schema: A marshmallow schema (class, instance, or a mapping of
        fields) the payload must satisfy, checked at enqueue and at delivery.
    :param retries: How many times QStash retries a failed delivery.
    :param timeout: Seconds QStash waits for one delivery.
    :param queue: A queue name; runs then go one after another, per tenant.
    :param delay: Default delay for every run, in seconds or as ``"10m"``.
    :param cron: Cron expressions the job is scheduled on, created per tenant
        by ``flask qstash sync-schedules``.
    :param parallelism: At most this many runs at once, per tenant.
    :param rate: At most this many runs started per ``period``, per tenant.
    :param period: The rate's period, in seconds or as ``"1m"``.
    :param atomic: Commit the app's Flask-SQLAlchemy session together with the
        record that the run is done, in one transaction, so the run's database
        writes happen exactly once even if the process dies mid-way. Needs
        ``QSTASH_IDEMPOTENCY_STORE = "sqlalchemy"``; the handler must not
        commit itself.
    """

    def __init__(
        self,
        extension: QStash,
        func: t.Callable[..., t.Any],
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
    ) -> None:
        if not JOB_NAME_RE.match(name):
            raise ValueError(
                f"Job name {name!r} is not valid. Use 1 to 100 letters, digits,"
                " '-', '_' or '.', starting with a letter or digit."
            )

        if retries is not None and not 0 <= retries <= 100:
            raise ValueError(
                f"'retries' of job {name!r} must be 0 to 100, got {retries!r}."
            )

        if queue is not None:
            _check_queue(queue)

        if queue is not None and delay is not None:
            raise ValueError(
                f"Job {name!r} has both a queue and a delay, but QStash queues take"
                " no delay. Drop one of them."
            )

        functools.update_wrapper(self, func)
        self.extension = extension
        self.func = func
        self.name = name
        self.schema = _as_schema(schema)
        self.retries = retries
        self.timeout = _opt_duration(timeout, f"'timeout' of job {name!r}")
        self.queue = queue
        self.delay = _opt_duration(delay, f"'delay' of job {name!r}")
        self.crons: tuple[str, ...] = (
            (cron,) if isinstance(cron, str) else tuple(cron or ())
        )
        self.parallelism = parallelism
        self.rate = rate
        self.period = _opt_duration(period, f"'period' of job {name!r}")
        self.atomic = atomic
        self.takes_context = _takes_context(func)

        for expression in self.crons:
            split_cron(expression)

    def __repr__(self) -> str:
        return f"<Job {self.name!r}>"

    def __call__(self, *args: t.Any, **kwargs: t.Any) -> t.Any:
        """Run the function directly, in this process, as a plain call."""
        return self.func(*args, **kwargs)

    def url(self, tenant: str | Tenant | None = None) -> str:
        """The absolute webhook URL QStash calls to run this job for ``tenant``.

        :param tenant: A tenant or tenant id; resolved as :meth:`enqueue` does
            if omitted.
        """
        record = self.extension.resolve_tenant(tenant)
        return self.extension.webhook_url(record, self.name)

    def failure_url(self, tenant: str | Tenant | None = None) -> str:
        """The URL QStash reports a run of this job to when it gives up."""
        record = self.extension.resolve_tenant(tenant)
        return self.extension.webhook_url(record, self.name) + "/failed"

    def enqueue(
        self,
        payload: t.Any = None,
        *,
        tenant: str | Tenant | None = None,
        delay: int | str | datetime.timedelta | None = None,
        not_before: int | datetime.datetime | None = None,
        deduplication_id: str | None = None,
        retries: int | None = None,
        timeout: int | str | datetime.timedelta | None = None,
        queue: str | None = None,
    ) -> EnqueueResult:
        """Publish one run of this job and return its QStash message id.

        The payload is checked against the job's schema first; if it fails,
        :class:`marshmallow.ValidationError` is raised and nothing is
        published.

        :param payload: JSON-serialisable data handed to the function.
        :param tenant: Whose run this is. Inside a request, the tenant
            :class:`~flask_qstash.TenantMiddleware` resolved; inside a
            delivery, the delivery's tenant; otherwise the default tenant.
        :param delay: Wait this long before the first delivery.
        :param not_before: Deliver no earlier than this unix time or datetime;
            wins over ``delay``.
        :param deduplication_id: QStash keeps one message per id for ten
            minutes; a fresh id is generated when omitted.
        :param retries: Override the job's retries.
        :param timeout: Override the job's delivery timeout.
        :param queue: Override the job's queue.
        :raises flask_qstash.PublishError: QStash did not accept the run.

        .. code-block:: python

            result = send_email.enqueue({"to": "a@example.com"}, delay="5m")
        """
        record = self.extension.resolve_tenant(tenant)
        request = self._prepare(
            payload,
            record,
            delay=delay,
            not_before=not_before,
            deduplication_id=deduplication_id,
            retries=retries,
            timeout=timeout,
            queue=queue,
        )
        published = self.extension.publisher.publish(record, request)
        return self._published(
            record, request, published.message_id, published.deduplicated
        )

    def enqueue_many(
        self,
        payloads: t.Iterable[t.Any],
        *,
        tenant: str | Tenant | None = None,
        delay: int | str | datetime.timedelta | None = None,
        not_before: int | datetime.datetime | None = None,
        deduplication_id: str | None = None,
        retries: int | None = None,
        timeout: int | str | datetime.timedelta | None = None,
        queue: str | None = None,
    ) -> list[EnqueueResult]:
        """Publish one run per payload in a single batch request.

        Every payload is checked before anything is sent: one invalid payload
        raises :class:`marshmallow.ValidationError` and publishes none. With a
        ``deduplication_id``, run ``i`` gets ``"<id>-<i>"``.

        Takes the same options as :meth:`enqueue`, applied to every run.
        """
        record = self.extension.resolve_tenant(tenant)
        requests = [
            self._prepare(
                payload,
                record,
                delay=delay,
                not_before=not_before,
                deduplication_id=(
                    None if deduplication_id is None else f"{deduplication_id}-{i}"
                ),
                retries=retries,
                timeout=timeout,
                queue=queue,
            )
            for i, payload in enumerate(payloads)
        ]

        if not requests:
            return []

        published = self.extension.publisher.publish_batch(record, requests)
        return [
            self._published(record, r, p.message_id, p.deduplicated)
            for r, p in zip(requests, published, strict=True)
        ]

    def schedule(
        self,
        cron: str,
        payload: t.Any = None,
        *,
        tenant: str | Tenant | None = None,
        schedule_id: str | None = None,
    ) -> str:
        """Create or replace a cron schedule running this job; return its id.

        The id defaults to ``<tenant>.<job>``, so calling this again (on every
        deploy, say) updates the one schedule instead of adding another.

        :param cron: Five cron fields in UTC, optionally prefixed with
            ``CRON_TZ=<IANA zone>``, such as ``"CRON_TZ=Europe/Paris 0 4 * * *"``.
        :param payload: The payload of every run.
        :param tenant: Whose schedule this is, resolved as :meth:`enqueue` does.
        :param schedule_id: A name for the schedule, prefixed with the tenant.
        """
        split_cron(cron)
        record = self.extension.resolve_tenant(tenant)
        suffix = schedule_id if schedule_id is not None else self.name

        if not _NAME_RE.match(suffix):
            raise ValueError(
                f"Schedule id {suffix!r} is not valid. Use letters, digits, '-', '_'"
                " and '.'."
            )

        full_id = f"{record.id}.{suffix}"
        body = self._body(payload, record)
        options: dict[str, t.Any] = {
            "destination": self.url(record),
            "cron": cron,
            "body": body,
            "content_type": "application/json",
            "schedule_id": full_id,
            "failure_callback": self.failure_url(record),
            "label": self._label(record),
        }
        retries = self._retries(record, None)

        if retries is not None:
            options["retries"] = retries

        if self.timeout is not None:
            options["timeout"] = self.timeout

        if self.queue is not None:
            options["queue"] = f"{record.id}.{self.queue}"

        client = self.extension.publisher.client(record)
        rv = self.extension.publisher.call(
            record, "a schedule", lambda: client.schedule.create(**options)
        )
        logger.info(
            "Scheduled job %s for tenant %s as %s (%s)", self.name, record.id, rv, cron
        )
        signals.send(
            signals.job_scheduled,
            current_app._get_current_object(),  # type: ignore[attr-defined]
            job=self.name,
            tenant=record.id,
            schedule_id=rv,
            cron=cron,
        )
        return str(rv)

    def load_payload(self, payload: t.Any) -> t.Any:
        """Check ``payload`` against the job's schema and return the loaded data.

        :raises marshmallow.ValidationError: The payload does not match.
        """
        if self.schema is None:
            return payload

        return self.schema.load({} if payload is None else payload)

    def describe(self) -> dict[str, t.Any]:
        """The job's options as plain data, for ``flask qstash list-jobs``."""
        return {
            "name": self.name,
            "function": f"{self.func.__module__}.{self.func.__qualname__}",
            "schema": sorted(self.schema.fields) if self.schema is not None else None,
            "retries": self.retries,
            "timeout": self.timeout,
            "queue": self.queue,
            "delay": self.delay,
            "schedules": list(self.crons),
            "parallelism": self.parallelism,
            "rate": self.rate,
            "period": self.period,
            "atomic": self.atomic,
        }

    def _body(self, payload: t.Any, tenant: Tenant) -> str:
        self.load_payload(payload)
        return self._envelope(payload, tenant)

    def _envelope(self, payload: t.Any, tenant: Tenant) -> str:
        """The JSON body of a run, with ``payload`` as given and not checked."""
        try:
            return _ENCODER.encode(
                {
                    "v": ENVELOPE_VERSION,
                    "job": self.name,
                    "tenant": tenant.id,
                    "payload": payload,
                    "enqueued_at": int(time.time() * 1000),
                }
            )
        except (TypeError, ValueError) as exc:
            raise TypeError(
                f"The payload of job {self.name!r} is not JSON-serialisable: {exc}."
                " Pass dicts, lists, strings, numbers, booleans and None, or"
                " dates, UUIDs and decimals, which are sent as strings."
            ) from None

    def _label(self, tenant: Tenant) -> str:
        return f"{tenant.id}.{self.name}"

    def _retries(self, tenant: Tenant, override: int | None) -> int | None:
        for value in (override, self.retries, tenant.max_retries):
            if value is not None:
                return value

        return self.extension.settings.max_retries

    def _prepare(
        self,
        payload: t.Any,
        tenant: Tenant,
        *,
        delay: int | str | datetime.timedelta | None,
        not_before: int | datetime.datetime | None,
        deduplication_id: str | None,
        retries: int | None,
        timeout: int | str | datetime.timedelta | None,
        queue: str | None,
    ) -> PublishRequest:
        body = self._body(payload, tenant)
        queue = queue if queue is not None else self.queue

        if queue is not None:
            _check_queue(queue)

        seconds = _opt_duration(delay, "'delay'")

        if seconds is None and queue is None:
            for value in (
                self.delay,
                tenant.default_delay,
                self.extension.settings.default_delay,
            ):
                if value is not None:
                    seconds = value
                    break

        if queue is not None and (seconds or not_before is not None):
            raise ValueError(
                f"Job {self.name!r} goes to queue {queue!r}, and QStash queues take no"
                " delay or not-before. Drop the delay, or enqueue without a queue."
            )

        if deduplication_id is None:
            dedup = f"{tenant.id}.{self.name}.{uuid.uuid4().hex}"
        elif _DEDUP_ID_RE.match(deduplication_id):
            dedup = f"{tenant.id}.{self.name}.{deduplication_id}"
        else:
            raise ValueError(
                f"Deduplication id {deduplication_id!r} is not valid. Use 1 to 100"
                " letters, digits, '-', '_', '.' or ':'."
            )

        flow_control: dict[str, t.Any] | None = None

        if self.parallelism is not None or self.rate is not None:
            flow_control = {"key": f"{tenant.id}.{self.name}"}

            if self.parallelism is not None:
                flow_control["parallelism"] = self.parallelism

            if self.rate is not None:
                flow_control["rate"] = self.rate

            if self.period is not None:
                flow_control["period"] = self.period

        job_timeout = _opt_duration(timeout, "'timeout'")
        url = self.extension.webhook_url(tenant, self.name)
        return PublishRequest(
            url=url,
            body=body,
            deduplication_id=dedup,
            label=self._label(tenant),
            queue=f"{tenant.id}.{queue}" if queue is not None else None,
            delay=seconds,
            not_before=_unix(not_before),
            retries=self._retries(tenant, retries),
            timeout=job_timeout if job_timeout is not None else self.timeout,
            failure_callback=url + "/failed",
            flow_control=flow_control,
        )

    def _published(
        self,
        tenant: Tenant,
        request: PublishRequest,
        message_id: str,
        deduplicated: bool,
    ) -> EnqueueResult:
        logger.info(
            "Enqueued job %s for tenant %s as message %s",
            self.name,
            tenant.id,
            message_id,
        )
        if signals.job_enqueued.receivers:
            signals.send(
                signals.job_enqueued,
                current_app._get_current_object(),  # type: ignore[attr-defined]
                job=self.name,
                tenant=tenant.id,
                message_id=message_id,
                deduplicated=deduplicated,
                options=request.options(),
            )
        return EnqueueResult(
            job=self.name,
            tenant=tenant.id,
            message_id=message_id,
            deduplication_id=request.deduplication_id,
            deduplicated=deduplicated,
        )


def _check_queue(queue: str) -> None:
    if not _NAME_RE.match(queue):
        raise ValueError(
            f"Queue name {queue!r} is not valid. Use 1 to 100 letters, digits, '-',"
            " '_' or '.'."
        )


def _as_schema(schema: SchemaLike | None) -> Schema | None:
    if schema is None or isinstance(schema, Schema):
        return schema

    if isinstance(schema, type) and issubclass(schema, Schema):
        return schema()

    if isinstance(schema, t.Mapping):
        return Schema.from_dict(dict(schema))()

    raise TypeError(
        f"A job schema must be a marshmallow Schema class or instance, or a mapping"
        f" of fields, got {type(schema).__name__}."
    )


def _takes_context(func: t.Callable[..., t.Any]) -> bool:
    """Whether ``func`` declares a second positional parameter for the context."""
    try:
        parameters = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):
        return False

    positional = [
        p
        for p in parameters
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)
    ]
    return len(positional) >= 2 or any(p.kind == p.VAR_POSITIONAL for p in positional)


def _opt_duration(
    value: int | str | datetime.timedelta | None, name: str
) -> int | None:
    if value is None:
        return None

    return parse_duration(value, name=name)


def _unix(value: int | datetime.datetime | None) -> int | None:
    if value is None or isinstance(value, int):
        return value

    if value.tzinfo is None:
        raise ValueError(
            "'not_before' is a naive datetime, which is ambiguous."
            " Pass an aware datetime, such as datetime.now(timezone.utc)."
        )

    return int(value.timestamp())


def _json_default(value: t.Any) -> t.Any:
    if isinstance(value, datetime.datetime | datetime.date | datetime.time):
        return value.isoformat()

    if isinstance(value, uuid.UUID | decimal.Decimal):
        return str(value)

    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)

    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


# One encoder for every envelope; ``json.dumps`` with options builds one per call.
_ENCODER = json.JSONEncoder(separators=(",", ":"), default=_json_default)
