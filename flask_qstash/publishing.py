"""Publishing to QStash: one client per tenant, bounded retries, batches.

The ``qstash`` SDK's own client retries only dropped connections, sleeps up to
30 seconds doing so, waits up to ten minutes for an answer and never retries a
5xx. :class:`Publisher` turns its retries off and wraps every call in a loop
bounded by ``QSTASH_PUBLISH_TIMEOUT`` and ``QSTASH_PUBLISH_RETRIES`` that also
retries 429 (waiting for the rate-limit reset) and 5xx answers. Every request
carries a deduplication id, so a retry after a lost answer never creates a
second message.
"""

from __future__ import annotations

import logging
import random
import re
import threading
import time
import typing as t
from dataclasses import dataclass

import httpx
from qstash import QStash as QStashClient
from qstash.errors import DailyMessageLimitExceededError
from qstash.errors import QStashError
from qstash.errors import RateLimitExceededError

from .errors import PublishError

if t.TYPE_CHECKING:  # pragma: no cover
    from .config import Tenant

logger = logging.getLogger(__name__)

_T = t.TypeVar("_T")
_STATUS_RE = re.compile(r"status: (\d{3})")


@dataclass(frozen=True)
class PublishRequest:
    """Everything needed to publish one job run. Built by :class:`~flask_qstash.Job`."""

    url: str
    body: str
    deduplication_id: str
    label: str
    queue: str | None = None
    delay: int | None = None
    not_before: int | None = None
    retries: int | None = None
    timeout: int | None = None
    failure_callback: str | None = None
    flow_control: dict[str, t.Any] | None = None

    def options(self) -> dict[str, t.Any]:
        """The keyword arguments for the SDK's ``publish`` and ``enqueue``."""
        rv: dict[str, t.Any] = {
            "url": self.url,
            "body": self.body,
            "content_type": "application/json",
            "deduplication_id": self.deduplication_id,
            "label": self.label,
        }

        for name in ("retries", "timeout", "failure_callback"):
            value = getattr(self, name)

            if value is not None:
                rv[name] = value

        if self.queue is not None:
            rv["queue"] = self.queue
            return rv

        if self.delay:
            rv["delay"] = self.delay

        if self.not_before is not None:
            rv["not_before"] = self.not_before

        if self.flow_control is not None:
            rv["flow_control"] = self.flow_control

        return rv


@dataclass(frozen=True)
class Published:
    """What QStash answered for one published job."""

    #: The QStash message id, ``msg_...``.
    message_id: str

    #: Whether QStash already had a message with this deduplication id and kept
    #: that one instead of creating another.
    deduplicated: bool


class Publisher:
    """Publishes for every tenant of one app, with one client per account.

    :param client_class: The SDK client class, or a stand-in with the same
        constructor and ``message``/``schedule`` attributes.
    :param timeout: Seconds one publish may take in all, retries included.
    :param retries: Extra attempts after a retryable failure.
    """

    def __init__(
        self, *, client_class: type[QStashClient], timeout: float, retries: int
    ) -> None:
        self.client_class = client_class
        self.timeout = timeout
        self.retries = retries
        self._clients: dict[tuple[str | None, str | None], QStashClient] = {}
        self._lock = threading.Lock()
        self._local = threading.local()

    def client(self, tenant: Tenant) -> QStashClient:
        """Return the SDK client for ``tenant``'s account, creating it once.

        Tenants that share an account share its client and its connections.
        """
        if not tenant.token:
            raise PublishError(
                f"Tenant {tenant.id!r} has no QStash token, so nothing is published."
                " Set 'QSTASH_TOKEN' (or the tenant's 'token'), or set"
                " 'QSTASH_DEV_SERVER = True' to use the local dev server."
            )

        key = (tenant.token, tenant.url)
        client = self._clients.get(key)

        if client is not None:
            return client

        with self._lock:
            client = self._clients.get(key)

            if client is None:
                client = self._make_client(tenant.token, tenant.url)
                self._clients[key] = client

        return client

    def _make_client(self, token: str, url: str | None) -> QStashClient:
        client = self.client_class(token, retry=False, base_url=url)
        http = getattr(client, "http", None)

        # The SDK has no timeout option and waits up to 600 s for an answer;
        # bound each request by the publish budget. Drop this once it has one.
        if http is not None and isinstance(
            getattr(http, "_client", None), httpx.Client
        ):
            http._client.timeout = httpx.Timeout(
                self.timeout, connect=min(self.timeout, 5.0)
            )
            hooks = http._client.event_hooks
            http._client.event_hooks = {
                **hooks,
                "request": [*hooks["request"], self._limit_to_budget],
            }

        return client

    def _limit_to_budget(self, request: httpx.Request) -> None:
        """Let a request wait only for what is left of its publish's budget."""
        deadline: float | None = getattr(self._local, "deadline", None)

        if deadline is None:
            return

        left = max(0.001, deadline - time.monotonic())
        timeout = httpx.Timeout(left, connect=min(left, 5.0))
        request.extensions = {**request.extensions, "timeout": timeout.as_dict()}

    def publish(self, tenant: Tenant, request: PublishRequest) -> Published:
        """Publish one job run, retrying within the budget."""
        client = self.client(tenant)
        options = request.options()

        rv: t.Any

        if request.queue is not None:
            rv = self.call(tenant, "a job", lambda: client.message.enqueue(**options))
        else:
            rv = self.call(tenant, "a job", lambda: client.message.publish(**options))

        return Published(rv.message_id, bool(rv.deduplicated))

    def publish_batch(
        self, tenant: Tenant, requests: t.Sequence[PublishRequest]
    ) -> list[Published]:
        """Publish several job runs in one batch request."""
        client = self.client(tenant)
        batch: list[t.Any] = [r.options() for r in requests]
        rv: list[t.Any] = self.call(
            tenant, "a batch", lambda: client.message.batch(batch)
        )
        return [Published(r.message_id, bool(r.deduplicated)) for r in rv]

    def call(self, tenant: Tenant, what: str, func: t.Callable[[], _T]) -> _T:
        """Run ``func`` with bounded retries, raising :class:`PublishError`.

        :param tenant: Whose account is called, for messages.
        :param what: What is being sent, for messages (``"a job"``).
        :param func: The SDK call.
        """
        deadline = time.monotonic() + self.timeout

        # Every attempt's requests share the one budget; see _limit_to_budget.
        self._local.deadline = deadline

        try:
            return self._retry(tenant, what, func, deadline)
        finally:
            self._local.deadline = None

    def _retry(
        self, tenant: Tenant, what: str, func: t.Callable[[], _T], deadline: float
    ) -> _T:
        attempt = 0

        while True:
            attempt += 1

            try:
                return func()
            except Exception as exc:
                status, wait, reason = _classify(exc, attempt)

                if wait is None:
                    raise _fatal(tenant, what, status, reason) from exc

                last = attempt > self.retries
                late = time.monotonic() + wait > deadline

                if last or late:
                    raise PublishError(
                        f"QStash did not accept {what} for tenant {tenant.id!r} after"
                        f" {attempt} attempt(s): {reason}. Try again later; repeating"
                        " the call with the same deduplication id cannot duplicate it.",
                        status=status,
                        retryable=True,
                    ) from exc

                logger.warning(
                    "Retrying %s for tenant %s in %.2f s: %s",
                    what,
                    tenant.id,
                    wait,
                    reason,
                )
                time.sleep(wait)


def _classify(exc: Exception, attempt: int) -> tuple[int | None, float | None, str]:
    """Return the status, the wait before retrying (``None``: don't) and a reason."""
    backoff = min(2.0, 0.1 * 2 ** (attempt - 1)) * (0.5 + random.random() / 2)

    if isinstance(exc, DailyMessageLimitExceededError):
        return 429, None, "the daily message quota is used up"

    if isinstance(exc, RateLimitExceededError):
        return 429, _until_reset(exc.reset, backoff), "rate limited"

    if isinstance(exc, QStashError):
        match = _STATUS_RE.search(str(exc))
        status = int(match.group(1)) if match else None

        if status is None or status >= 500 or status == 408:
            return status, backoff, f"QStash answered {status or 'an error'}"

        return status, None, f"QStash answered {status}"

    if isinstance(exc, httpx.TimeoutException):
        return None, backoff, "QStash did not answer in time"

    if isinstance(exc, httpx.TransportError):
        return None, backoff, f"cannot reach QStash ({type(exc).__name__})"

    raise exc


def _until_reset(reset: str | None, fallback: float) -> float:
    """Seconds until a ``Burst-RateLimit-Reset`` unix time, or ``fallback``."""
    try:
        value = float(reset) if reset is not None else None
    except ValueError:
        value = None

    if value is None:
        return fallback

    # Some deployments send milliseconds; anything far in the future is.
    if value > 1e11:
        value /= 1000

    return max(0.05, value - time.time())


def _fatal(tenant: Tenant, what: str, status: int | None, reason: str) -> PublishError:
    if status == 401:
        fix = (
            f"Check the QStash token of tenant {tenant.id!r}"
            " ('QSTASH_TOKEN' or the tenant's 'token')."
        )
    elif status == 429:
        fix = "Wait for the quota to reset or raise the plan's limit."
    else:
        fix = f"Check what was sent; sending {what} unchanged will fail again."

    return PublishError(
        f"QStash refused {what} for tenant {tenant.id!r}: {reason}. {fix}",
        status=status,
        retryable=status == 429,
    )
