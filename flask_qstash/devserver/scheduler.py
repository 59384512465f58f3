"""The dev server's engine: accounts, state and the delivery scheduler.

:class:`Engine` owns every account's messages, queues, schedules, URL groups,
flow-control keys and signing keys. One lock guards all of it and the SQLite
:class:`~.store.Store`; the HTTP API and the scheduler call in under that lock,
and only the network round trip of a delivery runs outside it.

The scheduler thread sleeps on a condition until the earliest due time (at most
one second) or until something new is armed, then hands due deliveries to a
bounded worker pool. Each worker signs the attempt afresh, sends it with a
keep-alive connection of its own (:mod:`.transport`), and reports back under
the lock, where
the outcome is recorded and the next step (retry, DLQ, callbacks) is decided.

Ordering rules live in three places: a FIFO queue admits a message only while
fewer than ``parallelism`` of its messages (with their callbacks) are
unfinished; a flow-control key admits an attempt only within its parallelism,
rate and period, parking the rest on its wait list; everything else starts as
soon as it is due.
"""

from __future__ import annotations

import base64
import collections
import concurrent.futures
import dataclasses
import heapq
import logging
import math
import secrets
import threading
import time
import typing as t
from dataclasses import dataclass
from dataclasses import field

from ..signing import sign
from .cron import CronError
from .cron import parse_cron
from .durations import parse_retry_after
from .expressions import evaluate_source
from .expressions import ExpressionError
from .messages import ApiError
from .messages import CallbackConfig
from .messages import check_name
from .messages import check_url
from .messages import content_dedup_key
from .messages import dlq_view
from .messages import event_view
from .messages import flow_view
from .messages import Message
from .messages import message_view
from .messages import Options
from .messages import parse_options
from .messages import response_fields
from .store import Store
from .transport import Transport
from .transport import TransportError

logger = logging.getLogger(__name__)

#: Seconds an attempt may take when the publish names no ``Upstash-Timeout``;
#: the PAYG plan's connection limit.
DEFAULT_TIMEOUT = 300

#: How long a deduplication id is remembered, as QStash does.
DEDUP_WINDOW = 600.0

#: Finished messages kept per account for ``GET /v2/messages/{id}``.
# Real QStash forgets delivered messages quickly; the SDK's own tests read them
# back, so the newest ones stay until this many have piled up. Each one is a few
# dozen objects the garbage collector walks: at 10,000 its full collections
# paused delivery for 80 ms, so keep the window small.
MAX_FINISHED = 1_000

#: The highest queue parallelism accepted, answered with 412 beyond.
MAX_QUEUE_PARALLELISM = 100

#: Response bodies kept for the DLQ and callbacks are cut at this size.
MAX_RESPONSE_BODY = 64 * 1024

#: Schedule trigger states kept per schedule.
MAX_SCHEDULE_STATES = 10

_BASE58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_RETRY_AFTER_HEADERS = (
    "retry-after",
    "upstash-retry-after",
    "x-ratelimit-reset",
    "x-ratelimit-reset-requests",
    "x-ratelimit-reset-tokens",
)


def new_id(prefix: str, length: int = 24) -> str:
    """Return a random id such as ``msg_2KxN...`` in QStash's alphabet.

    One ``os.urandom`` call per id: :func:`secrets.choice` per character costs
    a system call each, which showed up as the top cost of a delivery.
    """
    return prefix + "".join(_BASE58[b % 58] for b in secrets.token_bytes(length))


def _now_ms() -> int:
    return int(time.time() * 1000)


def _canonical(name: str) -> str:
    """Return ``content-type`` as ``Content-Type``, as Go writes header names."""
    return "-".join(part.capitalize() for part in name.split("-"))


@dataclass
class Queue:
    """A FIFO queue of one account."""

    name: str
    parallelism: int = 1
    paused: bool = False
    created_at: int = 0
    updated_at: int = 0
    waiting: collections.deque[str] = field(default_factory=collections.deque)
    active: set[str] = field(default_factory=set)

    def to_json(self) -> dict[str, t.Any]:
        """Return the persistent part."""
        return {
            "name": self.name,
            "parallelism": self.parallelism,
            "paused": self.paused,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }

    def view(self) -> dict[str, t.Any]:
        """Render as the SDK's Queue object."""
        return {
            "name": self.name,
            "parallelism": self.parallelism,
            "createdAt": self.created_at,
            "updatedAt": self.updated_at,
            "lag": len(self.waiting) + len(self.active),
            "paused": self.paused,
        }


@dataclass
class Flow:
    """The limits and live counters of one flow-control key."""

    key: str
    parallelism: int | None = None
    rate: int | None = None
    period: int = 1
    pinned_parallelism: bool = False
    pinned_rate: bool = False
    paused: bool = False
    rate_count: int = 0
    period_start: float = 0.0
    active: int = 0
    waitlist: collections.deque[str] = field(default_factory=collections.deque)
    wake_at: float = 0.0

    def to_json(self) -> dict[str, t.Any]:
        """Return the persistent part."""
        data = dataclasses.asdict(self)
        del data["waitlist"], data["active"], data["wake_at"]
        return data

    def view(self) -> dict[str, t.Any]:
        """Render as the SDK's FlowControlInfo object."""
        return {
            "flowControlKey": self.key,
            "waitListSize": len(self.waitlist),
            "parallelismMax": self.parallelism or 0,
            "parallelismCount": self.active,
            "rateMax": self.rate or 0,
            "rateCount": self.rate_count,
            "ratePeriod": self.period,
            "ratePeriodStart": int(self.period_start),
            "isPaused": self.paused,
            "isPinnedParallelism": self.pinned_parallelism,
            "isPinnedRate": self.pinned_rate,
        }


@dataclass
class Schedule:
    """A cron schedule; its publish headers are kept raw and re-read per trigger."""

    id: str
    destination: str
    cron: str
    headers: list[tuple[str, str]]
    body: bytes
    created_at: int
    caller_ip: str | None = None
    paused: bool = False
    last_time: int | None = None
    next_time: float = 0.0
    last_states: dict[str, str] = field(default_factory=dict)
    error: str | None = None

    def to_json(self) -> dict[str, t.Any]:
        """Return the persistent form."""
        data = dataclasses.asdict(self)
        data["body"] = base64.b64encode(self.body).decode("ascii")
        return data

    @classmethod
    def from_json(cls, data: dict[str, t.Any]) -> Schedule:
        """Rebuild from :meth:`to_json`."""
        data = dict(data)
        data["body"] = base64.b64decode(data["body"])
        data["headers"] = [tuple(pair) for pair in data["headers"]]
        return cls(**data)

    def view(self) -> dict[str, t.Any]:
        """Render as the SDK's Schedule object."""
        opts = parse_options(self.headers)
        rv: dict[str, t.Any] = {
            "scheduleId": self.id,
            "destination": self.destination,
            "cron": self.cron,
            "createdAt": self.created_at,
            "method": opts.method,
            "retries": opts.retries,
            "header": opts.header,
            "isPaused": self.paused,
            "nextScheduleTime": int(self.next_time * 1000),
        }

        try:
            rv["body"] = self.body.decode("utf-8")
        except UnicodeDecodeError:
            rv["bodyBase64"] = base64.b64encode(self.body).decode("ascii")

        optional: dict[str, t.Any] = {
            "delay": opts.delay or None,
            "timeout": opts.timeout,
            "callerIP": self.caller_ip,
            "callerIp": self.caller_ip,
            "queueName": opts.queue_name,
            "lastScheduleTime": self.last_time,
            "lastScheduleStates": self.last_states or None,
            "error": self.error,
            "retryDelayExpression": opts.retry_delay,
            "label": opts.labels[0] if opts.labels else None,
        }
        rv.update({k: v for k, v in optional.items() if v is not None})

        if opts.callback is not None:
            rv["callback"] = opts.callback.url
            rv["callbackHeader"] = opts.callback.headers

        if opts.failure_callback is not None:
            rv["failureCallback"] = opts.failure_callback.url
            rv["failureCallbackHeader"] = opts.failure_callback.headers

        rv.update(
            flow_view(opts.flow_control_key, opts.parallelism, opts.rate, opts.period)
        )
        return rv


@dataclass
class Account:
    """Everything one token owns; accounts never see each other's state."""

    id: str
    current_key: str
    next_key: str
    messages: dict[str, Message] = field(default_factory=dict)
    finished: collections.deque[str] = field(default_factory=collections.deque)
    queues: dict[str, Queue] = field(default_factory=dict)
    schedules: dict[str, Schedule] = field(default_factory=dict)
    topics: dict[str, dict[str, t.Any]] = field(default_factory=dict)
    flows: dict[str, Flow] = field(default_factory=dict)
    dedup: dict[str, tuple[str, float]] = field(default_factory=dict)


@dataclass
class _Attempt:
    """What a worker needs to send one attempt, copied under the lock."""

    account: str
    message_id: str
    url: str
    method: str
    body: bytes
    headers: dict[str, str]
    key: str
    timeout: float


@dataclass
class _Outcome:
    """What came back from one attempt."""

    status: int = 0
    headers: dict[str, list[str]] = field(default_factory=dict)
    body: bytes = b""
    error: str | None = None


class Engine:
    """All state of a dev server and the scheduler that delivers it.

    :param store: Where state is persisted.
    :param users: Token to ``(current_key, next_key)`` of every account.
    :param speed: Backoff and ``Retry-After`` delays are divided by this.
    :param workers: How many attempts may be in flight at once.
    """

    def __init__(
        self,
        store: Store,
        users: t.Mapping[str, tuple[str, str]],
        *,
        speed: float = 1.0,
        workers: int = 16,
    ) -> None:
        if speed <= 0:
            raise ValueError(
                f"The speed factor must be positive, got {speed!r}."
                " Use 1 for real time or a larger number to shorten backoff."
            )

        self.store = store
        self.speed = speed
        self.workers = workers
        self.lock = threading.RLock()
        self.cond = threading.Condition(self.lock)
        self.accounts: dict[str, Account] = {}
        self._heap: list[tuple[float, int, str, str, str]] = []
        self._counter = 0
        self._seq = 0
        self._in_flight = 0
        self._outcomes: list[tuple[_Attempt, _Outcome]] = []
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._transport: Transport | None = None

        with self.lock:
            for token, (current, next_key) in users.items():
                stored = store.get_keys(token)

                if stored is not None:
                    current, next_key = stored

                self.accounts[token] = Account(token, current, next_key)

            self._load()

    # Lifecycle.

    def start(self) -> None:
        """Start the worker pool and the scheduler thread."""
        with self.lock:
            if self._thread is not None:
                return

            # Deliveries go straight to the destination: no proxy settings from
            # the environment, and no redirects followed, as QStash does.
            self._transport = Transport(max_body=MAX_RESPONSE_BODY)
            self._pool = concurrent.futures.ThreadPoolExecutor(
                max_workers=self.workers, thread_name_prefix="qstash-dev-delivery"
            )
            self._thread = threading.Thread(
                target=self._run, name="qstash-dev-scheduler", daemon=True
            )
            self._thread.start()

    def stop(self) -> None:
        """Stop delivering and close the store; bounded by the join timeout.

        Attempts still in flight are abandoned: their messages stay pending in
        the store and are delivered again on the next start.
        """
        with self.lock:
            self._stopping = True
            self.cond.notify_all()

        if self._thread is not None:
            self._thread.join(timeout=2.0)

        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

        if self._transport is not None:
            self._transport.close()

        with self.lock:
            self.store.close()

    # Accounts.

    def account(self, token: str | None) -> Account | None:
        """Return the account of a bearer token, or ``None``."""
        if token is None:
            return None

        return self.accounts.get(token)

    def rotate_keys(self, acct: Account) -> dict[str, str]:
        """Make ``next`` the current key and generate a fresh ``next``."""
        with self.lock:
            acct.current_key = acct.next_key
            acct.next_key = new_id("sig_", 28)
            self.store.set_keys(acct.id, acct.current_key, acct.next_key)
            return {"current": acct.current_key, "next": acct.next_key}

    # Publishing.

    def publish(
        self,
        acct: Account,
        destination: str,
        headers: t.Iterable[tuple[str, str]],
        body: bytes,
        *,
        queue: str | None = None,
        caller_ip: str | None = None,
    ) -> tuple[int, t.Any]:
        """Accept one publish or enqueue and answer ``(status, json)``.

        :raises ApiError: For a malformed header, destination or queue name.
        """
        opts = parse_options(headers)

        with self.lock, self.store.transaction():
            results, fresh = self._publish(
                acct, destination, opts, body, queue=queue, caller_ip=caller_ip
            )

        payload: t.Any = results if not _is_url(destination) else results[0]
        return (201 if fresh else 202), payload

    def batch(
        self, acct: Account, items: list[t.Any], *, caller_ip: str | None
    ) -> list[t.Any]:
        """Accept a batch: every item is checked first, then all go in together.

        :raises ApiError: 400 naming the first bad item; nothing is accepted then.
        """
        parsed: list[tuple[str, Options, bytes, str | None]] = []

        for index, item in enumerate(items):
            if not isinstance(item, dict) or not isinstance(
                item.get("destination"), str
            ):
                raise ApiError(
                    400,
                    f"Batch item {index} has no 'destination'. Give each item a"
                    " 'destination' URL or URL group name.",
                )

            raw_headers = item.get("headers") or {}
            raw_body = item.get("body")
            queue = item.get("queue")

            if not isinstance(raw_headers, dict) or not all(
                isinstance(v, str) for v in raw_headers.values()
            ):
                raise ApiError(
                    400, f"Batch item {index} has 'headers' that are not strings."
                )

            if raw_body is not None and not isinstance(raw_body, str):
                raise ApiError(
                    400, f"Batch item {index} has a 'body' that is not a string."
                )

            if queue is not None and not isinstance(queue, str):
                raise ApiError(
                    400, f"Batch item {index} has a 'queue' that is not a string."
                )

            opts = parse_options(list(raw_headers.items()))
            body = (raw_body or "").encode("utf-8")
            parsed.append((item["destination"], opts, body, queue))

        rv: list[t.Any] = []

        with self.lock, self.store.transaction():
            # Check destinations and queue names before anything is accepted.
            for destination, _, _, queue in parsed:
                self._targets(acct, destination)

                if queue is not None:
                    check_name("queue name", queue)

            for destination, opts, body, queue in parsed:
                results, _ = self._publish(
                    acct, destination, opts, body, queue=queue, caller_ip=caller_ip
                )
                rv.append(results if not _is_url(destination) else results[0])

        return rv

    def _targets(
        self, acct: Account, destination: str
    ) -> list[tuple[str, str | None, str | None]]:
        """Return ``(url, group, endpoint name)`` for each delivery target."""
        if _is_url(destination):
            return [(check_url(destination, "destination"), None, None)]

        group = acct.topics.get(destination)

        if group is None:
            raise ApiError(
                404,
                f"URL group {destination!r} not found. Create it by adding"
                " endpoints, or publish to an 'http(s)://' URL.",
            )

        return [(e["url"], destination, e.get("name")) for e in group["endpoints"]]

    def _publish(
        self,
        acct: Account,
        destination: str,
        opts: Options,
        body: bytes,
        *,
        queue: str | None,
        caller_ip: str | None,
        schedule_id: str | None = None,
    ) -> tuple[list[dict[str, t.Any]], bool]:
        """Create the messages of one publish; the caller holds the lock."""
        targets = self._targets(acct, destination)
        now = time.time()
        now_ms = int(now * 1000)

        if queue is not None:
            self._ensure_queue(acct, check_name("queue name", queue), now_ms)

        if opts.flow_control_key is not None:
            self._configure_flow(acct, opts)

        due = (
            float(opts.not_before) if opts.not_before is not None else now + opts.delay
        )
        dedup = opts.dedup_id

        if dedup is None and opts.content_dedup:
            dedup = content_dedup_key(destination, body, opts)

        results: list[dict[str, t.Any]] = []
        fresh = False

        for url, group, endpoint in targets:
            entry: dict[str, t.Any] = {} if group is None else {"url": url}

            if dedup is not None:
                key = f"{dedup}\0{url}"
                seen = acct.dedup.get(key)

                if seen is not None and seen[1] > now:
                    entry.update(messageId=seen[0], deduplicated=True)
                    results.append(entry)
                    continue

            self._seq += 1
            msg = Message(
                id=new_id("msg_"),
                user=acct.id,
                seq=self._seq,
                url=url,
                method=opts.method,
                body=body,
                header=opts.header,
                created_at=now_ms,
                not_before=int(due * 1000),
                max_retries=opts.retries,
                due=due,
                topic_name=group,
                endpoint_name=endpoint,
                queue_name=queue,
                schedule_id=schedule_id,
                caller_ip=caller_ip,
                retry_delay=opts.retry_delay,
                timeout=opts.timeout,
                callback=opts.callback,
                failure_callback=opts.failure_callback,
                flow_control_key=opts.flow_control_key,
                parallelism=opts.parallelism,
                rate=opts.rate,
                period=opts.period,
                labels=opts.labels,
                redact=opts.redact,
            )

            if dedup is not None:
                acct.dedup[f"{dedup}\0{url}"] = (msg.id, now + DEDUP_WINDOW)
                self.store.save_object(
                    acct.id, "dedup", f"{dedup}\0{url}", [msg.id, now + DEDUP_WINDOW]
                )

            self._add(acct, msg)
            entry.update(messageId=msg.id, deduplicated=False)
            results.append(entry)
            fresh = True
            logger.debug("Accepted message %s for %s", msg.id, url)

        return results, fresh or not targets

    def _add(self, acct: Account, msg: Message) -> None:
        """Store a new message, log CREATED and arm or enqueue it."""
        acct.messages[msg.id] = msg
        self._save(msg)
        self._event(msg, "CREATED")

        if msg.queue_name is not None and msg.kind == "message":
            acct.queues[msg.queue_name].waiting.append(msg.id)
            self._pump(acct, acct.queues[msg.queue_name])
        else:
            self._arm(msg)

    def _save(self, msg: Message) -> None:
        self.store.save_message(msg.user, msg.id, msg.seq, msg.terminal, msg.to_json())

    def _event(self, msg: Message, state: str, **extra: t.Any) -> None:
        event = event_view(msg, state, _now_ms())
        event.update(extra)
        self.store.add_event(
            msg.user,
            event,
            topic=msg.topic_name,
            queue=msg.queue_name,
            schedule=msg.schedule_id,
            label=msg.labels[0] if msg.labels else None,
        )

    def _arm(self, msg: Message) -> None:
        """Put ``msg`` on the timeline at ``msg.due`` and wake the scheduler."""
        self._push(msg.due, "m", msg.user, msg.id)

    def _push(self, due: float, kind: str, user: str, ident: str) -> None:
        self._counter += 1
        heapq.heappush(self._heap, (due, self._counter, kind, user, ident))

        if self._heap[0][1] == self._counter:
            self.cond.notify_all()

    # Queues.

    def _ensure_queue(self, acct: Account, name: str, now_ms: int) -> Queue:
        queue = acct.queues.get(name)

        if queue is None:
            queue = acct.queues[name] = Queue(
                name, created_at=now_ms, updated_at=now_ms
            )
            self.store.save_object(acct.id, "queue", name, queue.to_json())

        return queue

    def _pump(self, acct: Account, queue: Queue) -> None:
        """Admit waiting messages while the queue has free slots."""
        while (
            not queue.paused and queue.waiting and len(queue.active) < queue.parallelism
        ):
            msg = acct.messages.get(queue.waiting.popleft())

            if msg is None or msg.terminal:
                continue

            queue.active.add(msg.id)
            self._arm(msg)

    def upsert_queue(
        self, acct: Account, name: str, parallelism: int, paused: bool
    ) -> None:
        """Create or update a queue; ``paused`` is always applied, as the SDK sends it.

        :raises ApiError: 400 for a bad name or parallelism, 412 over the limit.
        """
        check_name("queue name", name)

        if parallelism < 1:
            raise ApiError(400, "Queue parallelism must be at least 1.")

        if parallelism > MAX_QUEUE_PARALLELISM:
            raise ApiError(
                412,
                f"Queue parallelism {parallelism} is over the limit of"
                f" {MAX_QUEUE_PARALLELISM}. Use flow control for more.",
            )

        with self.lock:
            now_ms = _now_ms()
            queue = self._ensure_queue(acct, name, now_ms)
            queue.parallelism = parallelism
            queue.paused = paused
            queue.updated_at = now_ms
            self.store.save_object(acct.id, "queue", name, queue.to_json())
            self._pump(acct, queue)

    def get_queue(self, acct: Account, name: str) -> dict[str, t.Any]:
        """Return one queue's view.

        :raises ApiError: 404 when unknown.
        """
        with self.lock:
            return self._queue(acct, name).view()

    def list_queues(self, acct: Account) -> list[dict[str, t.Any]]:
        """Return every queue's view."""
        with self.lock:
            return [q.view() for q in acct.queues.values()]

    def pause_queue(self, acct: Account, name: str, paused: bool) -> None:
        """Pause or resume a queue; resuming continues from the oldest message."""
        with self.lock:
            queue = self._queue(acct, name)
            queue.paused = paused
            queue.updated_at = _now_ms()
            self.store.save_object(acct.id, "queue", name, queue.to_json())
            self._pump(acct, queue)

    def delete_queue(self, acct: Account, name: str) -> None:
        """Delete a queue and cancel the messages still waiting in it."""
        # What QStash does with waiting messages is not documented; cancelling
        # them keeps nothing stranded in a queue that no longer exists.
        with self.lock, self.store.transaction():
            queue = self._queue(acct, name)

            for msg_id in list(queue.waiting):
                msg = acct.messages.get(msg_id)

                if msg is not None and not msg.terminal:
                    self._cancel(acct, msg)

            del acct.queues[name]
            self.store.delete_object(acct.id, "queue", name)

    def _queue(self, acct: Account, name: str) -> Queue:
        queue = acct.queues.get(name)

        if queue is None:
            raise ApiError(404, f"Queue {name!r} not found.")

        return queue

    # Flow control.

    def _configure_flow(self, acct: Account, opts: Options) -> None:
        """Create the key of ``opts`` or update its unpinned limits."""
        key = t.cast(str, opts.flow_control_key)
        flow = acct.flows.get(key)

        if flow is None:
            flow = acct.flows[key] = Flow(key, period_start=time.time())

        if not flow.pinned_parallelism:
            flow.parallelism = opts.parallelism

        if not flow.pinned_rate:
            flow.rate = opts.rate
            flow.period = opts.period or 1

        self.store.save_object(acct.id, "flow", key, flow.to_json())

    def _admit(self, flow: Flow, now: float) -> bool:
        """Take one attempt slot of ``flow`` if its limits allow it now."""
        if flow.paused:
            return False

        if flow.parallelism is not None and flow.active >= flow.parallelism:
            return False

        if now - flow.period_start >= flow.period:
            flow.period_start = now
            flow.rate_count = 0

        if flow.rate is not None and flow.rate_count >= flow.rate:
            return False

        flow.active += 1
        flow.rate_count += 1
        return True

    def _drain(self, acct: Account, flow: Flow) -> None:
        """Start wait-listed messages of ``flow`` while its limits allow."""
        now = time.time()

        while flow.waitlist:
            msg = acct.messages.get(flow.waitlist[0])

            if msg is None or msg.terminal or msg.in_flight:
                flow.waitlist.popleft()
                continue

            if not self._admit(flow, now):
                break

            flow.waitlist.popleft()
            self._start(acct, msg)

        # A rate-limited key wakes itself when its period ends.
        if (
            flow.waitlist
            and not flow.paused
            and flow.rate is not None
            and flow.rate_count >= flow.rate
            and flow.wake_at != flow.period_start + flow.period
        ):
            flow.wake_at = flow.period_start + flow.period
            self._push(flow.wake_at, "f", acct.id, flow.key)

    def flow_info(self, acct: Account, key: str) -> dict[str, t.Any]:
        """Return one flow-control key's view.

        :raises ApiError: 404 when no message has used the key.
        """
        with self.lock:
            return self._flow(acct, key).view()

    def list_flows(self, acct: Account, search: str | None) -> list[dict[str, t.Any]]:
        """Return every key's view, optionally only keys containing ``search``."""
        with self.lock:
            return [
                f.view()
                for f in acct.flows.values()
                if search is None or search in f.key
            ]

    def global_parallelism(self) -> dict[str, int]:
        """Return the worker limit and the attempts in flight now."""
        with self.lock:
            return {"parallelismMax": self.workers, "parallelismCount": self._in_flight}

    def change_flow(
        self, acct: Account, key: str, action: str, args: t.Mapping[str, str]
    ) -> None:
        """Apply pause, resume, pin, unpin, resetRate or reset to a key.

        :raises ApiError: 404 for an unknown key, 400 for a bad pin value.
        """
        with self.lock:
            flow = self._flow(acct, key)
            now = time.time()

            if action == "pause":
                flow.paused = True
            elif action == "resume":
                flow.paused = False
            elif action == "pin":
                _pin(flow, args)
                flow.rate_count = 0
                flow.period_start = now
            elif action == "unpin":
                if args.get("parallelism", "").lower() == "true":
                    flow.pinned_parallelism = False

                if args.get("rate", "").lower() == "true":
                    flow.pinned_rate = False
            elif action in ("resetRate", "reset"):
                flow.rate_count = 0
                flow.period_start = now
            else:
                raise ApiError(404, f"Unknown flow-control action {action!r}.")

            self.store.save_object(acct.id, "flow", key, flow.to_json())
            self._drain(acct, flow)

    def _flow(self, acct: Account, key: str) -> Flow:
        flow = acct.flows.get(key)

        if flow is None:
            raise ApiError(404, f"Flow-control key {key!r} not found.")

        return flow

    # Messages.

    def get_message(self, acct: Account, msg_id: str) -> dict[str, t.Any]:
        """Return one message's view.

        :raises ApiError: 404 when unknown.
        """
        with self.lock:
            msg = acct.messages.get(msg_id)

            if msg is None:
                raise ApiError(404, f"Message {msg_id!r} not found.")

            return message_view(msg)

    def cancel(
        self,
        acct: Account,
        ids: list[str] | None,
        filters: t.Mapping[str, list[str]] | None = None,
        *,
        strict: bool = False,
    ) -> int:
        """Cancel messages by id, by filter, or all of them; return the count.

        :param strict: Answer 404 when a single named message is unknown or
            already finished.
        """
        with self.lock, self.store.transaction():
            if ids is not None:
                targets = [acct.messages.get(i) for i in ids]
            else:
                targets = [
                    m for m in acct.messages.values() if _matches(m, filters or {})
                ]

            count = 0

            for msg in targets:
                if msg is None or msg.terminal:
                    if strict:
                        raise ApiError(404, "Message not found or already finished.")

                    continue

                count += self._cancel(acct, msg)

            return count

    def _cancel(self, acct: Account, msg: Message) -> int:
        """Cancel one unfinished message; an attempt in flight is let finish."""
        if msg.cancel_requested:
            return 0

        msg.cancel_requested = True
        self._event(msg, "CANCEL_REQUESTED")

        if msg.in_flight:
            self._save(msg)
            return 1

        if msg.queue_name is not None and msg.kind == "message":
            queue = acct.queues.get(msg.queue_name)

            if queue is not None and msg.id in queue.waiting:
                queue.waiting.remove(msg.id)

        if msg.flow_control_key is not None:
            flow = acct.flows.get(msg.flow_control_key)

            if flow is not None and msg.id in flow.waitlist:
                flow.waitlist.remove(msg.id)

        msg.state = "CANCELED"
        self._event(msg, "CANCELED")
        self._terminate(acct, msg)
        return 1

    # Schedules.

    def create_schedule(
        self,
        acct: Account,
        destination: str,
        headers: list[tuple[str, str]],
        body: bytes,
        *,
        caller_ip: str | None,
    ) -> dict[str, str]:
        """Create a schedule, or overwrite the one ``Upstash-Schedule-Id`` names.

        :raises ApiError: 400 for a missing or bad cron or header, 404 for an
            unknown URL group.
        """
        opts = parse_options(headers)

        if opts.cron is None:
            raise ApiError(
                400,
                "The 'Upstash-Cron' header is missing. Give a cron expression"
                " such as '*/5 * * * *'.",
            )

        try:
            cron = parse_cron(opts.cron)
        except CronError as exc:
            raise ApiError(400, str(exc)) from None

        # The headers that describe each triggered message are kept verbatim.
        kept = [
            (k, v)
            for k, v in headers
            if k.lower().startswith("upstash-") or k.lower() == "content-type"
        ]

        with self.lock:
            self._targets(acct, destination)
            schedule_id = opts.schedule_id or new_id("scd_")
            old = acct.schedules.get(schedule_id)
            sched = Schedule(
                id=schedule_id,
                destination=destination,
                cron=opts.cron,
                headers=kept,
                body=body,
                created_at=old.created_at if old else _now_ms(),
                caller_ip=caller_ip,
                next_time=cron.next_after(time.time()),
            )
            acct.schedules[schedule_id] = sched
            self.store.save_object(acct.id, "schedule", schedule_id, sched.to_json())
            self._push(sched.next_time, "s", acct.id, schedule_id)
            return {"scheduleId": schedule_id}

    def get_schedule(self, acct: Account, schedule_id: str) -> dict[str, t.Any]:
        """Return one schedule's view.

        :raises ApiError: 404 when unknown.
        """
        with self.lock:
            return self._schedule(acct, schedule_id).view()

    def list_schedules(self, acct: Account) -> list[dict[str, t.Any]]:
        """Return every schedule's view."""
        with self.lock:
            return [s.view() for s in acct.schedules.values()]

    def delete_schedule(self, acct: Account, schedule_id: str) -> None:
        """Delete a schedule; messages it already created are kept."""
        with self.lock:
            self._schedule(acct, schedule_id)
            del acct.schedules[schedule_id]
            self.store.delete_object(acct.id, "schedule", schedule_id)

    def pause_schedule(self, acct: Account, schedule_id: str, paused: bool) -> None:
        """Pause or resume a schedule; both are idempotent."""
        with self.lock:
            sched = self._schedule(acct, schedule_id)
            sched.paused = paused
            self.store.save_object(acct.id, "schedule", schedule_id, sched.to_json())

    def trigger_schedule(self, acct: Account, schedule_id: str) -> None:
        """Make a schedule fire now, through the same path as its cron."""
        with self.lock:
            sched = self._schedule(acct, schedule_id)
            sched.next_time = time.time()
            self._push(sched.next_time, "s", acct.id, schedule_id)

    def _schedule(self, acct: Account, schedule_id: str) -> Schedule:
        sched = acct.schedules.get(schedule_id)

        if sched is None:
            raise ApiError(404, f"Schedule {schedule_id!r} not found.")

        return sched

    def _fire(self, acct: Account, sched: Schedule) -> None:
        """Create the messages of one trigger and arm the next one."""
        now = time.time()

        if not sched.paused:
            opts = parse_options(sched.headers)
            sched.last_time = int(now * 1000)

            try:
                with self.store.transaction():
                    results, _ = self._publish(
                        acct,
                        sched.destination,
                        opts,
                        sched.body,
                        queue=opts.queue_name,
                        caller_ip=sched.caller_ip,
                        schedule_id=sched.id,
                    )
            except ApiError as exc:
                sched.error = exc.message
                logger.warning("Schedule %s could not trigger: %s", sched.id, exc)
            else:
                sched.error = None

                for result in results:
                    sched.last_states[result["messageId"]] = "IN_PROGRESS"

                while len(sched.last_states) > MAX_SCHEDULE_STATES:
                    del sched.last_states[next(iter(sched.last_states))]

        try:
            sched.next_time = parse_cron(sched.cron).next_after(now)
        except CronError:
            return

        self.store.save_object(acct.id, "schedule", sched.id, sched.to_json())
        self._push(sched.next_time, "s", acct.id, sched.id)

    # URL groups.

    def upsert_endpoints(
        self, acct: Account, group: str, endpoints: list[dict[str, t.Any]]
    ) -> None:
        """Add endpoints to a group, creating it; an existing URL is updated."""
        check_name("URL group name", group)
        checked = [_endpoint(e) for e in endpoints]

        with self.lock:
            now_ms = _now_ms()
            topic = acct.topics.setdefault(
                group,
                {
                    "name": group,
                    "createdAt": now_ms,
                    "updatedAt": now_ms,
                    "endpoints": [],
                },
            )

            for new in checked:
                topic["endpoints"] = [
                    e for e in topic["endpoints"] if e["url"] != new["url"]
                ]
                topic["endpoints"].append(new)

            topic["updatedAt"] = now_ms
            self.store.save_object(acct.id, "topic", group, topic)

    def remove_endpoints(
        self, acct: Account, group: str, endpoints: list[dict[str, t.Any]]
    ) -> None:
        """Remove endpoints by URL or name; removing the last deletes the group."""
        with self.lock:
            topic = acct.topics.get(group)

            if topic is None:
                raise ApiError(404, f"URL group {group!r} not found.")

            for gone in endpoints:
                if not isinstance(gone, dict):
                    raise ApiError(400, "Each endpoint must be an object.")

                topic["endpoints"] = [
                    e
                    for e in topic["endpoints"]
                    if not (
                        ("url" in gone and e["url"] == gone["url"])
                        or ("name" in gone and e.get("name") == gone["name"])
                    )
                ]

            if topic["endpoints"]:
                topic["updatedAt"] = _now_ms()
                self.store.save_object(acct.id, "topic", group, topic)
            else:
                del acct.topics[group]
                self.store.delete_object(acct.id, "topic", group)

    def get_topic(self, acct: Account, group: str) -> dict[str, t.Any]:
        """Return one URL group.

        :raises ApiError: 404 when unknown.
        """
        with self.lock:
            topic = acct.topics.get(group)

            if topic is None:
                raise ApiError(404, f"URL group {group!r} not found.")

            return dict(topic)

    def list_topics(self, acct: Account) -> list[dict[str, t.Any]]:
        """Return every URL group."""
        with self.lock:
            return [dict(topic) for topic in acct.topics.values()]

    def delete_topic(self, acct: Account, group: str) -> None:
        """Delete a URL group; an unknown one is no error, as the SDK tests expect."""
        with self.lock:
            if acct.topics.pop(group, None) is not None:
                self.store.delete_object(acct.id, "topic", group)

    # Dead-letter queue.

    def list_dlq(
        self,
        acct: Account,
        filters: t.Mapping[str, list[str]],
        cursor: int | None,
        count: int | None,
    ) -> tuple[list[dict[str, t.Any]], int | None]:
        """Return DLQ entries matching ``filters`` and the next cursor."""
        with self.lock:
            rows, next_cursor = self.store.list_dlq(
                acct.id, filters, cursor=cursor, count=count
            )
            return [_public(r) for r in rows], next_cursor

    def get_dlq(self, acct: Account, dlq_id: str) -> dict[str, t.Any]:
        """Return one DLQ entry.

        :raises ApiError: 404 when unknown.
        """
        with self.lock:
            return _public(self._dlq(acct, dlq_id))

    def delete_dlq(self, acct: Account, dlq_ids: list[str]) -> int:
        """Delete DLQ entries and return how many existed."""
        with self.lock, self.store.transaction():
            return self.store.delete_dlq(acct.id, dlq_ids)

    def retry_dlq(
        self, acct: Account, dlq_id: str, headers: list[tuple[str, str]]
    ) -> dict[str, str]:
        """Publish a DLQ entry again as a new message and remove the entry.

        Publish headers on the retry request override the stored settings.
        """
        override = parse_options(headers) if headers else None

        with self.lock, self.store.transaction():
            entry = self._dlq(acct, dlq_id)
            old = Message.from_json(entry["_message"])
            now = time.time()
            self._seq += 1
            msg = dataclasses.replace(
                old,
                id=new_id("msg_"),
                seq=self._seq,
                created_at=int(now * 1000),
                not_before=int(now * 1000),
                due=now,
                state="CREATED",
                retried=0,
                started=False,
                cancel_requested=False,
                children=0,
                dlq_id=None,
                response_status=0,
                response_header={},
                response_body=b"",
                finished_at=0.0,
                kind="message" if old.kind == "message" else old.kind,
                parent=None,
            )

            if override is not None:
                _apply_override(msg, override, headers)

            if msg.queue_name is not None:
                self._ensure_queue(acct, msg.queue_name, msg.created_at)

            self.store.delete_dlq(acct.id, [dlq_id])
            self._add(acct, msg)
            return {"messageId": msg.id}

    def _dlq(self, acct: Account, dlq_id: str) -> dict[str, t.Any]:
        entry = self.store.get_dlq(acct.id, dlq_id)

        if entry is None:
            raise ApiError(404, f"DLQ message {dlq_id!r} not found.")

        return entry

    # Events.

    def list_events(
        self,
        acct: Account,
        filters: t.Mapping[str, list[str]],
        cursor: int | None,
        count: int,
    ) -> tuple[list[dict[str, t.Any]], int | None]:
        """Return log events newest first and the next cursor."""
        with self.lock:
            return self.store.list_events(acct.id, filters, cursor=cursor, count=count)

    # Scheduler.

    def wait_idle(self, timeout: float) -> bool:
        """Wait until nothing is in flight or due before ``timeout`` from now."""
        deadline = time.monotonic() + timeout
        horizon = time.time() + timeout

        with self.cond:
            while self._busy(horizon):
                remaining = deadline - time.monotonic()

                if remaining <= 0:
                    return False

                self.cond.wait(min(remaining, 0.25))

            return True

    def _busy(self, horizon: float) -> bool:
        if self._in_flight:
            return True

        for due, _, kind, user, ident in self._heap:
            if kind == "m" and due <= horizon:
                msg = self.accounts[user].messages.get(ident)

                if msg is not None and not msg.terminal and msg.due == due:
                    return True

        for acct in self.accounts.values():
            for flow in acct.flows.values():
                if flow.waitlist and not flow.paused:
                    return True

        return False

    def _run(self) -> None:
        """Scheduler loop: dispatch what is due, then sleep until the next due."""
        with self.cond:
            while not self._stopping:
                if self._outcomes:
                    self._record_outcomes()

                now = time.time()

                if self._heap and self._heap[0][0] <= now:
                    with self.store.transaction():
                        while self._heap and self._heap[0][0] <= now:
                            _, _, kind, user, ident = heapq.heappop(self._heap)

                            try:
                                self._due(kind, user, ident)
                            except Exception:
                                logger.exception("Failed to dispatch %s", ident)

                if self._outcomes:
                    continue

                timeout = 1.0

                if self._heap:
                    timeout = min(timeout, max(0.0, self._heap[0][0] - time.time()))

                self.cond.wait(timeout)

    def _record_outcomes(self) -> None:
        """Record every finished attempt in one transaction."""
        outcomes, self._outcomes = self._outcomes, []

        with self.store.transaction():
            for attempt, outcome in outcomes:
                self._in_flight -= 1

                try:
                    self._finish(attempt.account, attempt.message_id, outcome)
                except Exception:
                    logger.exception(
                        "Recording the outcome of %s failed", attempt.message_id
                    )

        self.cond.notify_all()

    def _due(self, kind: str, user: str, ident: str) -> None:
        """Handle one heap entry whose time has come."""
        acct = self.accounts[user]

        if kind == "s":
            sched = acct.schedules.get(ident)

            if sched is not None and sched.next_time <= time.time():
                self._fire(acct, sched)

            return

        if kind == "f":
            flow = acct.flows.get(ident)

            if flow is not None:
                self._drain(acct, flow)

            return

        msg = acct.messages.get(ident)

        if msg is None or msg.terminal or msg.in_flight or msg.due > time.time():
            return

        if msg.flow_control_key is not None:
            flow = acct.flows.get(msg.flow_control_key)

            if flow is not None and (
                flow.waitlist or not self._admit(flow, time.time())
            ):
                flow.waitlist.append(msg.id)
                self._drain(acct, flow)
                return

        self._start(acct, msg)

    def _start(self, acct: Account, msg: Message) -> None:
        """Log ACTIVE and hand the attempt to a worker."""
        assert self._pool is not None
        msg.in_flight = True
        msg.started = True
        msg.state = "ACTIVE"
        self._in_flight += 1
        self._event(msg, "ACTIVE")

        headers: dict[str, str] = {
            "User-Agent": "Upstash-QStash",
            "Upstash-Message-Id": msg.id,
            "Upstash-Retried": str(msg.retried),
        }

        for name, values in msg.header.items():
            headers[name] = ", ".join(values)

        if msg.schedule_id is not None:
            headers["Upstash-Schedule-Id"] = msg.schedule_id

        if msg.caller_ip is not None:
            headers["Upstash-Caller-Ip"] = msg.caller_ip

        if msg.topic_name is not None:
            headers["Upstash-Topic-Name"] = msg.topic_name

        attempt = _Attempt(
            account=acct.id,
            message_id=msg.id,
            url=msg.url,
            method=msg.method,
            body=msg.body,
            headers=headers,
            key=acct.current_key,
            timeout=float(msg.timeout or DEFAULT_TIMEOUT),
        )
        self._pool.submit(self._deliver, attempt)

    def _deliver(self, attempt: _Attempt) -> None:
        """Worker: sign and send one attempt, then record its outcome."""
        outcome = _Outcome()
        started = time.monotonic()

        try:
            # Each attempt is signed afresh so ``exp`` holds when it arrives.
            attempt.headers["Upstash-Signature"] = sign(
                attempt.body,
                url=attempt.url,
                key=attempt.key,
                jti=new_id("jwt_", 28),
            )
            assert self._transport is not None
            response = self._transport.request(
                attempt.method,
                attempt.url,
                body=attempt.body,
                headers=attempt.headers,
                timeout=attempt.timeout,
            )
            outcome.status = response.status
            outcome.headers = {}

            for name, value in response.headers:
                outcome.headers.setdefault(_canonical(name), []).append(value)

            outcome.body = response.body
        except TransportError as exc:
            outcome.error = str(exc)
        except Exception as exc:
            logger.exception("Delivery of %s failed unexpectedly", attempt.message_id)
            outcome.error = f"{type(exc).__name__}: {exc}"

        logger.info(
            "Sent %s to %s: %s in %.0f ms",
            attempt.message_id,
            attempt.url,
            outcome.status or outcome.error,
            (time.monotonic() - started) * 1000,
        )

        # The scheduler thread records outcomes in batches, one commit each, which
        # keeps lock hand-offs and SQLite commits off the hot path.
        with self.cond:
            if self._stopping:
                return

            self._outcomes.append((attempt, outcome))
            self.cond.notify_all()

    def _finish(self, user: str, msg_id: str, outcome: _Outcome) -> None:
        """Record an attempt's outcome and decide what happens next."""
        acct = self.accounts[user]
        msg = acct.messages.get(msg_id)

        if msg is None:
            return

        msg.in_flight = False
        attempt_retried = msg.retried
        msg.response_status = outcome.status
        msg.response_header = outcome.headers
        msg.response_body = outcome.body
        flow = (
            acct.flows.get(msg.flow_control_key)
            if msg.flow_control_key is not None
            else None
        )

        if flow is not None:
            flow.active = max(0, flow.active - 1)

        with self.store.transaction():
            if 200 <= outcome.status < 300:
                msg.state = "DELIVERED"
                self._event(msg, "DELIVERED", responseStatus=outcome.status)
            else:
                self._failed_attempt(acct, msg, outcome)

            if msg.callback is not None and msg.kind == "message":
                self._spawn_callback(acct, msg, outcome, attempt_retried, failure=False)

            if msg.state == "FAILED" and msg.failure_callback is not None:
                self._spawn_callback(acct, msg, outcome, attempt_retried, failure=True)

            if msg.terminal:
                self._terminate(acct, msg)

            if flow is not None:
                self._drain(acct, flow)

    def _failed_attempt(self, acct: Account, msg: Message, outcome: _Outcome) -> None:
        """Log ERROR, then schedule a retry or fail the message to the DLQ."""
        extra = response_fields(msg)

        if outcome.error is not None:
            extra["error"] = outcome.error

        self._event(msg, "ERROR", **extra)

        if msg.cancel_requested:
            msg.state = "CANCELED"
            self._event(msg, "CANCELED")
            return

        non_retryable = outcome.status == 489 and any(
            v.strip().lower() == "true"
            for v in outcome.headers.get("Upstash-Nonretryable-Error", [])
        )

        if non_retryable or msg.retried >= msg.max_retries:
            msg.state = "FAILED"
            self._seq += 1
            msg.dlq_id = f"{_now_ms()}-{self._seq}"
            view = dlq_view(msg)
            view["_message"] = msg.to_json()
            self.store.add_dlq(msg.user, msg.dlq_id, view, now_ms=_now_ms())
            self._event(msg, "FAILED", **extra)
            logger.info("Message %s failed and moved to the DLQ", msg.id)
            return

        msg.retried += 1
        msg.due = time.time() + self._retry_delay(msg, outcome)
        msg.state = "RETRY"
        self._event(msg, "RETRY", nextDeliveryTime=int(msg.due * 1000))
        self._save(msg)
        self._arm(msg)

    def _retry_delay(self, msg: Message, outcome: _Outcome) -> float:
        """Return seconds until the next attempt, already divided by the speed."""
        for name in _RETRY_AFTER_HEADERS:
            values = outcome.headers.get(_canonical(name))

            if values:
                asked = parse_retry_after(values[0])

                if asked is not None:
                    return asked / self.speed

        if msg.retry_delay is not None:
            try:
                millis = evaluate_source(msg.retry_delay, retried=msg.retried - 1)
            except ExpressionError as exc:
                logger.warning("Retry delay of %s failed: %s", msg.id, exc)
            else:
                return max(0.0, millis) / 1000 / self.speed

        return min(86400.0, math.exp(2.5 * msg.retried)) / self.speed

    def _spawn_callback(
        self,
        acct: Account,
        msg: Message,
        outcome: _Outcome,
        retried: int,
        *,
        failure: bool,
    ) -> None:
        """Publish the callback or failure callback of one attempt (§5.4)."""
        config = t.cast(
            CallbackConfig, msg.failure_callback if failure else msg.callback
        )
        payload: dict[str, t.Any] = {
            "status": outcome.status,
            "header": outcome.headers,
            "body": base64.b64encode(outcome.body).decode("ascii"),
            "retried": retried,
            "maxRetries": msg.max_retries,
            "sourceMessageId": msg.id,
            "url": msg.url,
            "method": msg.method,
            "sourceHeader": msg.header,
            "sourceBody": base64.b64encode(msg.body).decode("ascii"),
            "notBefore": str(msg.not_before),
            "createdAt": str(msg.created_at),
        }
        optional = {
            "scheduleId": msg.schedule_id,
            "callerIP": msg.caller_ip,
            "topicName": msg.topic_name,
            "endpointName": msg.endpoint_name,
            "dlqId": msg.dlq_id if failure else None,
        }
        payload.update({k: v for k, v in optional.items() if v is not None})

        if outcome.error is not None:
            payload["error"] = outcome.error

        now = time.time()
        header = dict(config.headers)
        header["Content-Type"] = ["application/json"]
        self._seq += 1
        child = Message(
            id=new_id("msg_"),
            user=acct.id,
            seq=self._seq,
            url=config.url,
            method=config.method,
            body=_json_bytes(payload),
            header=header,
            created_at=int(now * 1000),
            not_before=int((now + config.delay) * 1000),
            max_retries=(
                config.retries if config.retries is not None else msg.max_retries
            ),
            due=now + config.delay,
            kind="failure-callback" if failure else "callback",
            caller_ip=msg.caller_ip,
            retry_delay=config.retry_delay,
            timeout=config.timeout,
            parent=msg.id,
        )
        msg.children += 1
        self._save(msg)
        self._add(acct, child)

    def _terminate(self, acct: Account, msg: Message) -> None:
        """Persist a finished message and release what it held."""
        msg.finished_at = time.time()
        self._save(msg)
        acct.finished.append(msg.id)
        self._update_schedule_state(acct, msg)
        self._release(acct, msg)

        if msg.parent is not None:
            parent = acct.messages.get(msg.parent)

            if parent is not None:
                parent.children = max(0, parent.children - 1)
                self._save(parent)
                self._release(acct, parent)

        while len(acct.finished) > MAX_FINISHED:
            old_id = acct.finished.popleft()
            old = acct.messages.get(old_id)

            if old is not None and old.terminal and not old.children:
                del acct.messages[old_id]
                self.store.delete_message(acct.id, old_id)

    def _release(self, acct: Account, msg: Message) -> None:
        """Free a queue slot once a message and all its callbacks are done."""
        if msg.queue_name is None or not msg.terminal or msg.children:
            return

        queue = acct.queues.get(msg.queue_name)

        if queue is not None and msg.id in queue.active:
            queue.active.discard(msg.id)
            self._pump(acct, queue)

    def _update_schedule_state(self, acct: Account, msg: Message) -> None:
        if msg.schedule_id is None:
            return

        sched = acct.schedules.get(msg.schedule_id)

        if sched is not None and msg.id in sched.last_states:
            sched.last_states[msg.id] = (
                "SUCCESS" if msg.state == "DELIVERED" else "FAIL"
            )
            self.store.save_object(acct.id, "schedule", sched.id, sched.to_json())

    # Restart.

    def _load(self) -> None:
        """Rebuild memory from the store and re-arm every pending delivery."""
        for user, name, data in self.store.load_objects("queue"):
            if user in self.accounts:
                self.accounts[user].queues[name] = Queue(**data)

        for user, name, data in self.store.load_objects("flow"):
            if user in self.accounts:
                self.accounts[user].flows[name] = Flow(**data)

        for user, name, data in self.store.load_objects("topic"):
            if user in self.accounts:
                self.accounts[user].topics[name] = data

        now = time.time()

        for user, name, data in self.store.load_objects("dedup"):
            if user in self.accounts and data[1] > now:
                self.accounts[user].dedup[name] = (data[0], data[1])

        for user, name, data in self.store.load_objects("schedule"):
            if user not in self.accounts:
                continue

            sched = Schedule.from_json(data)

            # Triggers missed while the server was down are skipped, as a cron
            # daemon does; the next one is computed from now.
            try:
                sched.next_time = parse_cron(sched.cron).next_after(now)
            except CronError:
                continue

            self.accounts[user].schedules[name] = sched
            self._push(sched.next_time, "s", user, name)

        pending: list[Message] = []

        for text in self.store.load_messages():
            msg = Message.from_json(text)
            acct = self.accounts.get(msg.user)
            self._seq = max(self._seq, msg.seq)

            if acct is None:
                continue

            acct.messages[msg.id] = msg

            if msg.terminal:
                acct.finished.append(msg.id)
            else:
                msg.children = 0
                pending.append(msg)

        for msg in pending:
            acct = self.accounts[msg.user]

            if msg.parent is not None and msg.parent in acct.messages:
                acct.messages[msg.parent].children += 1

            if msg.queue_name is not None and msg.kind == "message":
                queue = self._ensure_queue(acct, msg.queue_name, msg.created_at)

                if msg.started:
                    queue.active.add(msg.id)
                    self._arm(msg)
                else:
                    queue.waiting.append(msg.id)
            else:
                self._arm(msg)

        for acct in self.accounts.values():
            # A finished message whose callbacks are pending still holds its slot.
            for msg_id in acct.finished:
                msg = acct.messages[msg_id]

                if msg.queue_name is not None and msg.children:
                    queue = self._ensure_queue(acct, msg.queue_name, msg.created_at)
                    queue.active.add(msg.id)

            for queue in acct.queues.values():
                self._pump(acct, queue)

        if pending:
            logger.info("Resumed %d pending messages from the store", len(pending))


def _is_url(destination: str) -> bool:
    return destination.startswith(("http://", "https://"))


def _json_bytes(data: t.Any) -> bytes:
    import json

    return json.dumps(data, separators=(",", ":")).encode("utf-8")


def _public(entry: dict[str, t.Any]) -> dict[str, t.Any]:
    """Drop the private copy of the message kept inside a DLQ entry."""
    return {k: v for k, v in entry.items() if not k.startswith("_")}


def _endpoint(data: t.Any) -> dict[str, t.Any]:
    """Check one endpoint object of a URL-group upsert."""
    if not isinstance(data, dict) or not isinstance(data.get("url"), str):
        raise ApiError(400, "Each endpoint needs a 'url' string.")

    rv: dict[str, t.Any] = {"url": check_url(data["url"], "endpoint URL")}

    if data.get("name") is not None:
        if not isinstance(data["name"], str):
            raise ApiError(400, "An endpoint 'name' must be a string.")

        rv["name"] = data["name"]

    return rv


def _pin(flow: Flow, args: t.Mapping[str, str]) -> None:
    """Apply the ``parallelism``, ``rate`` and ``period`` of a pin request."""
    values: dict[str, int] = {}

    for name in ("parallelism", "rate", "period"):
        if name in args:
            raw = args[name]

            if not raw.isdigit() or int(raw) < 1:
                raise ApiError(
                    400, f"Invalid pin {name} {raw!r}. Use a positive integer."
                )

            values[name] = int(raw)

    if "parallelism" in values:
        flow.parallelism = values["parallelism"]
        flow.pinned_parallelism = True

    if "rate" in values or "period" in values:
        flow.rate = values.get("rate", flow.rate)
        flow.period = values.get("period", flow.period)
        flow.pinned_rate = True


def _matches(msg: Message, filters: t.Mapping[str, list[str]]) -> bool:
    """Whether ``msg`` passes the bulk-cancel filters (§3.4)."""
    fields = {
        "topicName": msg.topic_name,
        "queueName": msg.queue_name,
        "url": msg.url,
        "label": msg.labels[0] if msg.labels else None,
        "flowControlKey": msg.flow_control_key,
        "scheduleId": msg.schedule_id,
        "callerIp": msg.caller_ip,
    }

    for name, values in filters.items():
        if name in fields and values and fields[name] not in values:
            return False

        if name == "fromDate" and values and msg.created_at < int(values[0]):
            return False

        if name == "toDate" and values and msg.created_at > int(values[0]):
            return False

    return True


def _apply_override(
    msg: Message, opts: Options, headers: list[tuple[str, str]]
) -> None:
    """Apply the publish headers of a DLQ retry request to ``msg``."""
    names = {k.lower() for k, _ in headers}

    if "upstash-method" in names:
        msg.method = opts.method

    if "upstash-retries" in names:
        msg.max_retries = opts.retries

    if "upstash-retry-delay" in names:
        msg.retry_delay = opts.retry_delay

    if "upstash-timeout" in names:
        msg.timeout = opts.timeout

    if opts.header:
        msg.header = {**msg.header, **opts.header}
