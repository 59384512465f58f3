"""Dead letters: job runs QStash gave up on, per tenant and job.

When a delivery fails for the last time, or answers 489, QStash moves the
message to its dead-letter queue (DLQ). Every job the extension publishes
carries the label ``<tenant>.<job>``, so the functions here find one tenant's
dead letters, and one job's, by that label; an entry whose label names another
tenant is never listed, shown, replayed or deleted, even when tenants share one
QStash account.

Replaying re-enqueues the payload with the job's *current* options and schema
(:meth:`~flask_qstash.Job.enqueue`), then deletes the entry. An entry whose
payload no longer passes the schema, whose job no longer exists, or whose body
is not a job envelope is reported with the reason and left in the DLQ.

.. code-block:: python

    from flask_qstash import deadletter

    with app.app_context():
        for dead in deadletter.list_dead(qstash, "acme", job="charge"):
            print(dead.dlq_id, dead.response_status)

        deadletter.replay(qstash, "acme", None, job="charge", dry_run=True)

The same operations are on the command line as ``flask qstash dlq list``,
``show``, ``replay`` and ``delete``.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import datetime
import functools
import json
import logging
import typing as t
from dataclasses import dataclass

from marshmallow import ValidationError
from qstash.dlq import DlqFilter

from .errors import FlaskQStashError
from .errors import PublishError
from .jobs import ENVELOPE_VERSION

if t.TYPE_CHECKING:  # pragma: no cover
    from qstash.dlq import DlqMessage

    from .config import Tenant
    from .extension import QStash

logger = logging.getLogger(__name__)

#: Entries asked for per page; QStash's maximum.
PAGE_SIZE = 100

#: Pages read at most by one listing, 10,000 entries: the largest DLQ a plan
#: keeps. A listing that reaches it logs a warning and stops.
MAX_PAGES = 100

_ReplayStatus = t.Literal["replayed", "would-replay", "invalid", "failed", "missing"]


class DeadLetterNotFoundError(FlaskQStashError, LookupError):
    """No dead letter of that id belongs to the tenant (and job) asked about.

    Entries of other tenants are reported the same way as missing ones, so
    one tenant cannot learn about another's.
    """


@dataclass(frozen=True)
class DeadLetter:
    """One dead-letter queue entry of a job run."""

    #: The entry's id within the DLQ, used to show, replay and delete it.
    dlq_id: str

    #: The id of the message that failed.
    message_id: str

    #: The job's name, from the label.
    job: str

    #: The tenant id, from the label.
    tenant: str

    #: The payload of the run, or ``None`` when the body is unreadable.
    payload: t.Any

    #: The status of the last delivery attempt; 0 when none got an answer.
    response_status: int

    #: The body of the last answer, decoded as UTF-8 where possible.
    response_body: str

    #: When the message was first published.
    created_at: datetime.datetime

    #: The URL QStash delivered to.
    url: str

    #: How many retries the message was allowed; QStash used them all unless
    #: the job answered 489.
    max_retries: int

    #: Why the body cannot be replayed as it is, or ``None`` when it is a job
    #: envelope of this tenant and job.
    problem: str | None = None

    def to_dict(self) -> dict[str, t.Any]:
        """The entry as JSON-ready data, for ``--json`` output."""
        rv = dataclasses.asdict(self)
        rv["created_at"] = self.created_at.isoformat()
        return rv


@dataclass(frozen=True)
class ReplayOutcome:
    """What :func:`replay` did, or would do, with one entry."""

    #: The entry's id.
    dlq_id: str

    #: The job's name, or ``None`` when the entry was not found.
    job: str | None

    #: ``replayed`` (enqueued and deleted), ``would-replay`` (dry run),
    #: ``invalid`` (left in the DLQ, see ``reason``), ``failed`` (QStash
    #: refused a request) or ``missing`` (no such entry for the tenant).
    status: _ReplayStatus

    #: Why the entry was not replayed, or what went wrong after it was.
    reason: str | None = None

    #: The id of the new message, once enqueued.
    message_id: str | None = None

    @property
    def ok(self) -> bool:
        """Whether the entry was, or would be, replayed without a problem."""
        return self.status in ("replayed", "would-replay")


@dataclass(frozen=True)
class DeleteOutcome:
    """What :func:`delete` did with one entry."""

    #: The entry's id.
    dlq_id: str

    #: Whether the entry is gone.
    ok: bool

    #: Why it is not, when it is not.
    reason: str | None = None


def list_dead(
    ext: QStash, tenant: str | None = None, job: str | None = None
) -> list[DeadLetter]:
    """Return the dead letters of ``tenant``, optionally of one ``job`` only.

    Reads every page, up to :data:`MAX_PAGES`. Entries are matched by the label
    ``<tenant>.<job>`` the extension publishes with, so another tenant's
    entries never appear, even when both share one QStash account.

    :param ext: The extension; call inside an application context.
    :param tenant: The tenant id; the default tenant if omitted.
    :param job: Only this job's entries, including jobs no longer registered.
    :raises flask_qstash.UnknownTenantError: The tenant is not configured.
    :raises flask_qstash.PublishError: QStash did not answer the listing.
    """
    record = tenant_for(ext, tenant)
    client = ext.publisher.client(record)

    # With a job the label is exact and QStash filters; without one, the
    # tenant's prefix is matched here. Either way every entry is re-checked.
    query = DlqFilter(label=f"{record.id}.{job}") if job is not None else None
    rv: list[DeadLetter] = []
    cursor: str | None = None
    seen: set[str] = set()

    for _ in range(MAX_PAGES):
        page = ext.publisher.call(
            record,
            "a dead-letter request",
            functools.partial(
                client.dlq.list, cursor=cursor, count=PAGE_SIZE, filter=query
            ),
        )

        for message in page.messages:
            dead = _dead_letter(message, record.id)

            if dead is not None and (job is None or dead.job == job):
                rv.append(dead)

        if not page.cursor or page.cursor in seen:
            break

        seen.add(page.cursor)
        cursor = page.cursor
    else:
        logger.warning(
            "Stopped listing the dead letters of tenant %s after %d pages",
            record.id,
            MAX_PAGES,
        )

    return rv


def get_dead(
    ext: QStash, tenant: str | None, dlq_id: str, *, job: str | None = None
) -> DeadLetter:
    """Return the dead letter ``dlq_id`` of ``tenant``.

    :param ext: The extension; call inside an application context.
    :param tenant: The tenant id; the default tenant if ``None``.
    :param dlq_id: The entry's id, as :func:`list_dead` gives it.
    :param job: Require the entry to belong to this job.
    :raises DeadLetterNotFoundError: No such entry belongs to the tenant (and
        job).
    :raises flask_qstash.PublishError: QStash did not answer.
    """
    record = tenant_for(ext, tenant)
    return _get(ext, record, dlq_id, job)


def replay(
    ext: QStash,
    tenant: str | None,
    dlq_ids: t.Sequence[str] | None,
    *,
    job: str | None = None,
    dry_run: bool = False,
) -> list[ReplayOutcome]:
    """Re-enqueue dead letters with their job's current options and schema.

    Each payload is checked against the job's schema as it is now. A valid one
    is enqueued with the deduplication id ``replay-<dlq_id>``, so replaying
    the same entry twice within QStash's deduplication window enqueues one
    run, and the entry is deleted only after QStash accepted the run. Entries
    that would fail stay in the DLQ, with the reason in their outcome.

    :param ext: The extension; call inside an application context.
    :param tenant: The tenant id; the default tenant if ``None``.
    :param dlq_ids: The entries to replay; every entry of the tenant (and
        ``job``) if ``None``.
    :param job: Only entries of this job.
    :param dry_run: Check everything, but enqueue and delete nothing.
    :return: One outcome per entry, in order.
    :raises flask_qstash.UnknownTenantError: The tenant is not configured.
    :raises flask_qstash.PublishError: Listing the entries failed.
    """
    record = tenant_for(ext, tenant)
    found: list[DeadLetter | ReplayOutcome] = []

    if dlq_ids is None:
        found.extend(list_dead(ext, record.id, job))
    else:
        for dlq_id in dlq_ids:
            try:
                found.append(_get(ext, record, dlq_id, job))
            except DeadLetterNotFoundError as exc:
                found.append(ReplayOutcome(dlq_id, None, "missing", str(exc)))
            except PublishError as exc:
                found.append(ReplayOutcome(dlq_id, None, "failed", str(exc)))

    return [
        item
        if isinstance(item, ReplayOutcome)
        else _replay_one(ext, record, item, dry_run)
        for item in found
    ]


def delete(
    ext: QStash,
    tenant: str | None,
    dlq_ids: t.Sequence[str] | None,
    *,
    job: str | None = None,
) -> list[DeleteOutcome]:
    """Delete dead letters of ``tenant`` without replaying them.

    Each id is looked up first, so an id of another tenant's entry is reported
    as missing and never deleted.

    :param ext: The extension; call inside an application context.
    :param tenant: The tenant id; the default tenant if ``None``.
    :param dlq_ids: The entries to delete; every entry of the tenant (and
        ``job``) if ``None``.
    :param job: Only entries of this job.
    :return: One outcome per entry, in order.
    :raises flask_qstash.UnknownTenantError: The tenant is not configured.
    :raises flask_qstash.PublishError: Listing the entries failed.
    """
    record = tenant_for(ext, tenant)
    outcomes: dict[str, DeleteOutcome] = {}
    owned: list[str] = []

    if dlq_ids is None:
        owned = [dead.dlq_id for dead in list_dead(ext, record.id, job)]
    else:
        for dlq_id in dlq_ids:
            try:
                owned.append(_get(ext, record, dlq_id, job).dlq_id)
            except (DeadLetterNotFoundError, PublishError) as exc:
                outcomes[dlq_id] = DeleteOutcome(dlq_id, False, str(exc))

    client = ext.publisher.client(record)

    # QStash deletes up to a page of ids per request.
    for start in range(0, len(owned), PAGE_SIZE):
        chunk = owned[start : start + PAGE_SIZE]

        try:
            deleted = ext.publisher.call(
                record,
                "a dead-letter request",
                functools.partial(client.dlq.delete_many, chunk),
            )
        except PublishError as exc:
            for dlq_id in chunk:
                outcomes[dlq_id] = DeleteOutcome(dlq_id, False, str(exc))

            continue

        logger.info("Deleted %d dead letter(s) of tenant %s", deleted, record.id)

        for dlq_id in chunk:
            outcomes[dlq_id] = DeleteOutcome(dlq_id, True)

    order = list(dlq_ids) if dlq_ids is not None else owned
    return [outcomes[dlq_id] for dlq_id in dict.fromkeys(order)]


def tenant_for(ext: QStash, tenant: str | None) -> Tenant:
    """The tenant named ``tenant``, or the default tenant for ``None``."""
    return ext.get_tenant(tenant if tenant is not None else ext.settings.default_tenant)


def _get(ext: QStash, record: Tenant, dlq_id: str, job: str | None) -> DeadLetter:
    client = ext.publisher.client(record)
    missing = DeadLetterNotFoundError(
        f"No dead letter {dlq_id!r} belongs to tenant {record.id!r}"
        + (f" and job {job!r}" if job is not None else "")
        + ". List them with 'flask qstash dlq list'."
    )

    try:
        message = ext.publisher.call(
            record, "a dead-letter request", lambda: client.dlq.get(dlq_id)
        )
    except PublishError as exc:
        if exc.status == 404:
            raise missing from None

        raise

    dead = _dead_letter(message, record.id)

    if dead is None or (job is not None and dead.job != job):
        raise missing

    return dead


def _replay_one(
    ext: QStash, record: Tenant, dead: DeadLetter, dry_run: bool
) -> ReplayOutcome:
    """Check one entry against its job's current schema, then replay it."""
    handler = ext.jobs.get(dead.job)
    reason = dead.problem

    if reason is None and handler is None:
        reason = f"job {dead.job!r} is no longer registered"

    if reason is None and handler is not None:
        try:
            handler.load_payload(dead.payload)
        except ValidationError as exc:
            reason = f"the payload fails the current schema: {_messages(exc)}"

    if reason is not None or handler is None:
        return ReplayOutcome(dead.dlq_id, dead.job, "invalid", reason)

    if dry_run:
        return ReplayOutcome(dead.dlq_id, dead.job, "would-replay")

    try:
        result = handler.enqueue(
            dead.payload,
            tenant=record,
            deduplication_id=f"replay-{dead.dlq_id}",
        )
    except (PublishError, ValueError, TypeError) as exc:
        return ReplayOutcome(
            dead.dlq_id, dead.job, "failed", f"could not enqueue: {exc}"
        )

    client = ext.publisher.client(record)

    try:
        ext.publisher.call(
            record, "a dead-letter request", lambda: client.dlq.delete(dead.dlq_id)
        )
    except PublishError as exc:
        # The run is enqueued; replaying again soon is deduplicated by QStash.
        return ReplayOutcome(
            dead.dlq_id,
            dead.job,
            "failed",
            f"enqueued, but the entry could not be deleted: {exc}",
            result.message_id,
        )

    logger.info(
        "Replayed dead letter %s of job %s for tenant %s as message %s",
        dead.dlq_id,
        dead.job,
        dead.tenant,
        result.message_id,
    )
    return ReplayOutcome(
        dead.dlq_id, dead.job, "replayed", message_id=result.message_id
    )


def _dead_letter(message: DlqMessage, tenant: str) -> DeadLetter | None:
    """Read an SDK entry as a :class:`DeadLetter` of ``tenant``, or ``None``.

    ``None`` means the entry is not one of this tenant's job runs: its label
    is missing or names another tenant.
    """
    label = message.label or ""
    owner, dot, job = label.partition(".")

    # Tenant ids have no dots, so the first dot ends the tenant's part.
    if not dot or owner != tenant or not job:
        return None

    payload, problem = _envelope(_body(message.body, message.body_base64), tenant, job)
    created = datetime.datetime.fromtimestamp(
        (message.created_at or 0) / 1000, datetime.UTC
    )
    return DeadLetter(
        dlq_id=message.dlq_id,
        message_id=message.message_id,
        job=job,
        tenant=tenant,
        payload=payload,
        response_status=message.response_status or 0,
        response_body=(
            message.response_body
            if message.response_body is not None
            else _body(None, message.response_body_base64).decode("utf-8", "replace")
        ),
        created_at=created,
        url=message.url,
        max_retries=message.max_retries or 0,
        problem=problem,
    )


def _body(text: str | None, encoded: str | None) -> bytes:
    if text is not None:
        return text.encode("utf-8", "surrogatepass")

    if not encoded:
        return b""

    try:
        return base64.b64decode(encoded, validate=False)
    except (binascii.Error, ValueError):
        return b""


def _envelope(body: bytes, tenant: str, job: str) -> tuple[t.Any, str | None]:
    """Return the payload of a job envelope, and why it cannot be replayed."""
    try:
        envelope = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None, "the body is not UTF-8 JSON"

    if (
        not isinstance(envelope, dict)
        or envelope.get("v") != ENVELOPE_VERSION
        or "payload" not in envelope
    ):
        return None, f"the body is not a version {ENVELOPE_VERSION} job envelope"

    if envelope.get("tenant") != tenant or envelope.get("job") != job:
        return envelope["payload"], "the body is for another tenant or job"

    return envelope["payload"], None


def _messages(exc: ValidationError) -> str:
    """Flatten marshmallow's messages to ``field: message`` pairs."""
    messages = exc.messages

    if not isinstance(messages, dict):
        return "; ".join(str(m) for m in t.cast("list[t.Any]", messages))

    parts = []

    for name, value in sorted(messages.items(), key=lambda kv: str(kv[0])):
        text = " ".join(value) if isinstance(value, list) else json.dumps(value)
        parts.append(f"{name}: {text}")

    return "; ".join(parts)
