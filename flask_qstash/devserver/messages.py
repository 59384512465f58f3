"""Messages, the publish headers that describe them, and their JSON views.

:func:`parse_options` reads the ``Upstash-*`` headers of a publish, enqueue,
batch item or schedule into :class:`Options`, refusing malformed values with
:class:`ApiError` (a 4xx, never a 500). :class:`Message` is one delivery target
with its state; :func:`message_view` and friends render it in the exact shapes
the ``qstash`` SDK parses (``QSTASH_API.md`` §3.12).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import typing as t
from dataclasses import dataclass
from dataclasses import field
from urllib.parse import urlsplit

from .durations import parse_duration
from .expressions import compile_expression
from .expressions import ExpressionError

#: Retries allowed when a publish names none, as QStash does.
DEFAULT_RETRIES = 3

#: Retries are clamped to this, the highest plan cap (Pro).
MAX_RETRIES = 20

#: The longest flow-control period QStash accepts, one week in seconds.
MAX_PERIOD = 7 * 86400

_METHODS = frozenset({"GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"})
_NAME = re.compile(r"[A-Za-z0-9._-]{1,200}")
_CALLBACK_CONFIG = frozenset({"method", "timeout", "retries", "retry-delay", "delay"})

#: States after which a message is never attempted again.
TERMINAL = frozenset({"DELIVERED", "FAILED", "CANCELED"})


class ApiError(Exception):
    """A request the server refuses, answered with ``status`` and ``{"error"}``.

    :param status: The HTTP status to answer with.
    :param message: What was wrong and how to fix it.
    """

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def check_name(kind: str, value: str) -> str:
    """Return ``value`` if it is a valid queue, schedule or group name.

    :raises ApiError: 400 when it has characters other than letters, digits,
        ``-``, ``_`` and ``.``.
    """
    if not _NAME.fullmatch(value):
        raise ApiError(
            400,
            f"Invalid {kind} {value!r}. Use up to 200 letters, digits, '-', '_'"
            " or '.'.",
        )

    return value


def check_url(value: str, what: str) -> str:
    """Return ``value`` if it is an absolute ``http`` or ``https`` URL.

    :raises ApiError: 400 otherwise.
    """
    try:
        parts = urlsplit(value)
    except ValueError:
        parts = None

    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise ApiError(
            400,
            f"Invalid {what} {value!r}. Use an absolute URL starting with"
            " 'http://' or 'https://'.",
        )

    return value


@dataclass
class CallbackConfig:
    """How a callback or failure callback message is sent."""

    url: str
    headers: dict[str, list[str]] = field(default_factory=dict)
    method: str = "POST"
    timeout: int | None = None
    retries: int | None = None
    retry_delay: str | None = None
    delay: int = 0

    def to_json(self) -> dict[str, t.Any]:
        """Return a JSON-ready copy for persistence."""
        return dict(self.__dict__)


@dataclass
class Options:
    """Everything the ``Upstash-*`` headers of a publish say about a message."""

    method: str = "POST"
    header: dict[str, list[str]] = field(default_factory=dict)
    retries: int = DEFAULT_RETRIES
    retry_delay: str | None = None
    delay: int = 0
    not_before: int | None = None
    timeout: int | None = None
    dedup_id: str | None = None
    content_dedup: bool = False
    callback: CallbackConfig | None = None
    failure_callback: CallbackConfig | None = None
    flow_control_key: str | None = None
    parallelism: int | None = None
    rate: int | None = None
    period: int | None = None
    labels: list[str] = field(default_factory=list)
    redact: list[str] = field(default_factory=list)
    cron: str | None = None
    schedule_id: str | None = None
    queue_name: str | None = None


def parse_options(pairs: t.Iterable[tuple[str, str]]) -> Options:
    """Read the publish headers ``pairs`` into :class:`Options`.

    Header names are matched case-insensitively. Forwarded headers keep the case
    of the name after the prefix.

    :param pairs: ``(name, value)`` header pairs of the request or batch item.
    :raises ApiError: 400 for a malformed value, naming the header.
    """
    opts = Options()
    callback: dict[str, str] = {}
    failure: dict[str, str] = {}
    callback_headers: dict[str, list[str]] = {}
    failure_headers: dict[str, list[str]] = {}
    content_type: str | None = None
    flow_value: str | None = None

    for name, value in pairs:
        low = name.lower()

        if low == "content-type":
            content_type = value
        elif low.startswith("upstash-forward-"):
            opts.header.setdefault(name[16:], []).append(value)
        elif low == "upstash-callback":
            callback["url"] = value
        elif low.startswith("upstash-callback-"):
            _callback_part(name[17:], value, callback, callback_headers)
        elif low == "upstash-failure-callback":
            failure["url"] = value
        elif low.startswith("upstash-failure-callback-"):
            _callback_part(name[25:], value, failure, failure_headers)
        elif low == "upstash-method":
            opts.method = _method(value, name)
        elif low == "upstash-retries":
            opts.retries = _retries(value, name)
        elif low == "upstash-retry-delay":
            opts.retry_delay = _retry_delay(value, name)
        elif low == "upstash-delay":
            opts.delay = _duration(value, name)
        elif low == "upstash-not-before":
            opts.not_before = _integer(value, name)
        elif low == "upstash-timeout":
            opts.timeout = _duration(value, name) or None
        elif low == "upstash-deduplication-id":
            opts.dedup_id = value
        elif low == "upstash-content-based-deduplication":
            opts.content_dedup = value.strip().lower() == "true"
        elif low == "upstash-flow-control-key":
            opts.flow_control_key = value.strip() or None
        elif low == "upstash-flow-control-value":
            flow_value = value
        elif low == "upstash-label":
            opts.labels = [v.strip() for v in value.split(",") if v.strip()]
        elif low == "upstash-redact-fields":
            opts.redact = [v.strip() for v in value.split(",") if v.strip()]
        elif low == "upstash-cron":
            opts.cron = value
        elif low == "upstash-schedule-id":
            opts.schedule_id = check_name("schedule ID", value.strip())
        elif low == "upstash-queue-name":
            opts.queue_name = check_name("queue name", value.strip())

    # The forwarded content type wins over the request's own, as QStash does.
    if content_type is not None and not any(
        k.lower() == "content-type" for k in opts.header
    ):
        opts.header["Content-Type"] = [content_type]

    if flow_value is not None:
        _flow_value(flow_value, opts)

    if opts.flow_control_key is not None and opts.period is None:
        opts.period = 1

    opts.callback = _callback_config(callback, callback_headers, "Upstash-Callback")
    opts.failure_callback = _callback_config(
        failure, failure_headers, "Upstash-Failure-Callback"
    )
    return opts


def _callback_part(
    rest: str, value: str, config: dict[str, str], headers: dict[str, list[str]]
) -> None:
    """Sort one ``Upstash-(Failure-)Callback-<rest>`` header."""
    low = rest.lower()

    if low in _CALLBACK_CONFIG:
        config[low] = value
    elif low.startswith("forward-"):
        headers.setdefault(rest[8:], []).append(value)
    else:
        # The SDK prefixes plain callback headers without "Forward-"; forwarding
        # them too is the lenient reading QSTASH_API.md §2.2 recommends.
        headers.setdefault(rest, []).append(value)


def _callback_config(
    config: dict[str, str], headers: dict[str, list[str]], prefix: str
) -> CallbackConfig | None:
    """Build a :class:`CallbackConfig` from the sorted callback headers."""
    if "url" not in config:
        return None

    return CallbackConfig(
        url=check_url(config["url"], f"'{prefix}' URL"),
        headers=headers,
        method=_method(config.get("method", "POST"), f"{prefix}-Method"),
        timeout=(
            _duration(config["timeout"], f"{prefix}-Timeout") or None
            if "timeout" in config
            else None
        ),
        retries=(
            _retries(config["retries"], f"{prefix}-Retries")
            if "retries" in config
            else None
        ),
        retry_delay=(
            _retry_delay(config["retry-delay"], f"{prefix}-Retry-Delay")
            if "retry-delay" in config
            else None
        ),
        delay=_duration(config["delay"], f"{prefix}-Delay") if "delay" in config else 0,
    )


def _method(value: str, name: str) -> str:
    method = value.strip().upper()

    if method not in _METHODS:
        raise ApiError(
            400,
            f"Invalid '{name}' header {value!r}. Use GET, POST, PUT, DELETE or PATCH.",
        )

    return method


def _integer(value: str, name: str) -> int:
    text = value.strip()

    if not text.isdigit() or len(text) > 15:
        raise ApiError(
            400, f"Invalid '{name}' header {value!r}. Use a non-negative integer."
        )

    return int(text)


def _retries(value: str, name: str) -> int:
    # Over-cap values are clamped rather than refused, the safe reading of §5.3.
    return min(_integer(value, name), MAX_RETRIES)


def _duration(value: str, name: str) -> int:
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise ApiError(400, f"Invalid '{name}' header. {exc}") from None


def _retry_delay(value: str, name: str) -> str:
    try:
        compile_expression(value)
    except ExpressionError as exc:
        raise ApiError(400, f"Invalid '{name}' header. {exc}") from None

    return value


def _flow_value(value: str, opts: Options) -> None:
    """Read ``parallelism=3, rate=4, period=2s`` into ``opts``."""
    for part in value.split(","):
        part = part.strip()

        if not part:
            continue

        key, sep, raw = part.partition("=")
        key = key.strip().lower()
        raw = raw.strip()

        if not sep or key not in ("parallelism", "rate", "period"):
            raise ApiError(
                400,
                f"Invalid 'Upstash-Flow-Control-Value' part {part!r}. Use"
                " 'parallelism=<n>, rate=<n>, period=<duration>'.",
            )

        if key == "period":
            period = _duration(raw, "Upstash-Flow-Control-Value")

            if not 1 <= period <= MAX_PERIOD:
                raise ApiError(
                    400,
                    "The flow-control period must be between 1 second and one week.",
                )

            opts.period = period
        else:
            number = _integer(raw, "Upstash-Flow-Control-Value")

            if number < 1:
                raise ApiError(400, f"The flow-control {key} must be at least 1.")

            setattr(opts, key, number)


def content_dedup_key(destination: str, body: bytes, opts: Options) -> str:
    """Return the content-based deduplication key of a publish (§5.7)."""
    digest = hashlib.sha256()
    digest.update(destination.encode())
    digest.update(b"\0")
    digest.update(body)

    for name in sorted(opts.header, key=str.lower):
        digest.update(f"\0{name.lower()}={opts.header[name]}".encode())

    return "content:" + digest.hexdigest()


@dataclass
class Message:
    """One delivery target and its state.

    A URL-group publish makes one :class:`Message` per endpoint; a callback or
    failure callback is a :class:`Message` of its own, whose ``parent`` is the
    message it reports on.
    """

    id: str
    user: str
    seq: int
    url: str
    method: str
    body: bytes
    header: dict[str, list[str]]
    created_at: int
    not_before: int
    max_retries: int
    due: float
    kind: str = "message"
    topic_name: str | None = None
    endpoint_name: str | None = None
    queue_name: str | None = None
    schedule_id: str | None = None
    caller_ip: str | None = None
    retry_delay: str | None = None
    timeout: int | None = None
    callback: CallbackConfig | None = None
    failure_callback: CallbackConfig | None = None
    flow_control_key: str | None = None
    parallelism: int | None = None
    rate: int | None = None
    period: int | None = None
    labels: list[str] = field(default_factory=list)
    redact: list[str] = field(default_factory=list)
    parent: str | None = None
    state: str = "CREATED"
    retried: int = 0
    started: bool = False
    in_flight: bool = False
    cancel_requested: bool = False
    children: int = 0
    dlq_id: str | None = None
    response_status: int = 0
    response_header: dict[str, list[str]] = field(default_factory=dict)
    response_body: bytes = b""
    finished_at: float = 0.0

    @property
    def terminal(self) -> bool:
        """Whether the message will never be attempted again."""
        return self.state in TERMINAL

    def to_json(self) -> str:
        """Serialise the message for the store."""
        data = dict(self.__dict__)
        data["body"] = base64.b64encode(self.body).decode("ascii")
        data["response_body"] = base64.b64encode(self.response_body).decode("ascii")
        data["callback"] = self.callback.to_json() if self.callback else None
        data["failure_callback"] = (
            self.failure_callback.to_json() if self.failure_callback else None
        )
        del data["in_flight"]
        return json.dumps(data, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> Message:
        """Rebuild a message that :meth:`to_json` serialised."""
        data = json.loads(text)
        data["body"] = base64.b64decode(data["body"])
        data["response_body"] = base64.b64decode(data["response_body"])

        for key in ("callback", "failure_callback"):
            if data[key] is not None:
                data[key] = CallbackConfig(**data[key])

        return cls(**data)


def _text_or_base64(data: bytes, text_key: str, b64_key: str) -> dict[str, str]:
    """Return ``{text_key: text}`` for UTF-8 data, else ``{b64_key: base64}``."""
    try:
        return {text_key: data.decode("utf-8")}
    except UnicodeDecodeError:
        return {b64_key: base64.b64encode(data).decode("ascii")}


def _redacted(value: bytes | str) -> str:
    raw = value.encode() if isinstance(value, str) else value
    return "REDACTED:" + hashlib.sha256(raw).hexdigest()


def redact_headers(
    headers: dict[str, list[str]], redact: list[str]
) -> dict[str, t.Any]:
    """Return ``headers`` with the fields ``Upstash-Redact-Fields`` names hidden."""
    if not redact:
        return headers

    everything = "header" in redact or "headers" in redact
    names = {
        r[r.index("[") + 1 : -1].lower()
        for r in redact
        if r.startswith(("header[", "headers[")) and r.endswith("]")
    }
    return {
        k: ([_redacted(x) for x in v] if everything or k.lower() in names else v)
        for k, v in headers.items()
    }


def message_view(msg: Message) -> dict[str, t.Any]:
    """Render ``msg`` as the Message object of ``GET /v2/messages/{id}``."""
    rv: dict[str, t.Any] = {
        "messageId": msg.id,
        "url": msg.url,
        "method": msg.method,
        "maxRetries": msg.max_retries,
        "notBefore": msg.not_before,
        "createdAt": msg.created_at,
        "header": redact_headers(msg.header, msg.redact),
    }

    if "body" in msg.redact:
        rv["body"] = _redacted(msg.body)
    else:
        rv.update(_text_or_base64(msg.body, "body", "bodyBase64"))

    optional = {
        "topicName": msg.topic_name,
        "endpointName": msg.endpoint_name,
        "queueName": msg.queue_name,
        "scheduleId": msg.schedule_id,
        "callerIP": msg.caller_ip,
        "retryDelayExpression": msg.retry_delay,
        "label": msg.labels[0] if msg.labels else None,
        "labels": msg.labels or None,
        "timeout": msg.timeout,
    }
    rv.update({k: v for k, v in optional.items() if v is not None})

    rv.update(_callback_fields(msg, "Header"))
    rv.update(flow_view(msg.flow_control_key, msg.parallelism, msg.rate, msg.period))
    return rv


def _callback_fields(msg: Message, headers_key: str) -> dict[str, t.Any]:
    """The callback URLs and headers of ``msg``.

    Messages spell the header maps ``callbackHeader``, log events
    ``callbackHeaders``, as the SDK reads them; ``headers_key`` picks one.
    """
    rv: dict[str, t.Any] = {}

    if msg.callback is not None:
        rv["callback"] = msg.callback.url
        rv["callback" + headers_key] = msg.callback.headers

    if msg.failure_callback is not None:
        rv["failureCallback"] = msg.failure_callback.url
        rv["failureCallback" + headers_key] = msg.failure_callback.headers

    return rv


def flow_view(
    key: str | None, parallelism: int | None, rate: int | None, period: int | None
) -> dict[str, t.Any]:
    """Return the flow-control fields of a message or schedule view."""
    if key is None:
        return {}

    rv: dict[str, t.Any] = {"flowControlKey": key, "period": period or 1}

    if parallelism is not None:
        rv["parallelism"] = parallelism

    if rate is not None:
        rv["rate"] = rate

    return rv


def dlq_view(msg: Message) -> dict[str, t.Any]:
    """Render a failed message as a DLQ entry (§3.12 DlqMessage)."""
    rv = message_view(msg)
    rv["dlqId"] = msg.dlq_id
    rv["responseStatus"] = msg.response_status
    rv["responseHeader"] = msg.response_header
    rv.update(_text_or_base64(msg.response_body, "responseBody", "responseBodyBase64"))
    return rv


def event_view(msg: Message, state: str, now_ms: int) -> dict[str, t.Any]:
    """Render one log event of ``msg`` entering ``state`` (§3.12 LogEvent).

    Both spellings QSTASH_API.md §0.2 lists are emitted, and the message's
    retry-delay expression and labels go on every event, as the SDK tests read
    them from any event.
    """
    rv: dict[str, t.Any] = {
        "time": now_ms,
        "messageId": msg.id,
        "state": state,
        "url": msg.url,
        "method": msg.method,
        "maxRetries": msg.max_retries,
        "header": redact_headers(msg.header, msg.redact),
        "body": (
            _redacted(msg.body)
            if "body" in msg.redact
            else base64.b64encode(msg.body).decode("ascii")
        ),
    }
    optional = {
        "topicName": msg.topic_name,
        "endpointName": msg.endpoint_name,
        "queueName": msg.queue_name,
        "scheduleId": msg.schedule_id,
        "retryDelayExpr": msg.retry_delay,
        "retryDelayExpression": msg.retry_delay,
        "label": msg.labels[0] if msg.labels else None,
        "labels": msg.labels or None,
        "timeout": msg.timeout * 1000 if msg.timeout else None,
    }
    rv.update({k: v for k, v in optional.items() if v is not None})

    rv.update(_callback_fields(msg, "Headers"))
    rv.update(flow_view(msg.flow_control_key, msg.parallelism, msg.rate, msg.period))
    return rv


def response_fields(msg: Message) -> dict[str, t.Any]:
    """Return the last response of ``msg`` as ERROR event fields."""
    return {
        "responseStatus": msg.response_status,
        "responseHeader": msg.response_header,
        "responseHeaders": msg.response_header,
        "responseBody": base64.b64encode(msg.response_body).decode("ascii"),
    }
