"""The HTTP API of the dev server, as the ``qstash`` SDK calls it.

A plain WSGI application on Werkzeug's request and response objects. Routes are
matched by hand because publish destinations are whole URLs inside the path:
``/v2/publish/https://app.example/x?a=1`` must be rebuilt from the raw request
line, slashes, percent escapes and query string intact (``QSTASH_API.md`` §1.1).

Every refusal answers ``{"error": "..."}`` with the status the real service
gives; an unexpected failure answers 500 and is logged, but never loses an
accepted message, since messages are stored before any answer is sent.
"""

from __future__ import annotations

import json
import logging
import re
import typing as t
from urllib.parse import quote
from urllib.parse import unquote

from werkzeug.wrappers import Request
from werkzeug.wrappers import Response

from .messages import ApiError
from .scheduler import Account
from .scheduler import Engine
from .store import DLQ_FILTERS
from .store import EVENT_FILTERS

if t.TYPE_CHECKING:  # pragma: no cover
    from _typeshed.wsgi import StartResponse
    from _typeshed.wsgi import WSGIEnvironment

logger = logging.getLogger(__name__)

#: A batch request may carry this many times the single-message body cap.
BATCH_FACTOR = 16

_ACTION = re.compile(r"([^/]+)/(pause|resume)")
_CANCEL_FILTERS = (
    "topicName",
    "queueName",
    "url",
    "label",
    "flowControlKey",
    "scheduleId",
    "callerIp",
    "fromDate",
    "toDate",
)


class Api:
    """The WSGI application serving ``/v2/...`` for an :class:`Engine`.

    :param engine: The engine holding all state.
    :param max_body_size: The largest message body accepted, in bytes.
    """

    def __init__(self, engine: Engine, *, max_body_size: int) -> None:
        self.engine = engine
        self.max_body_size = max_body_size

    def __call__(
        self, environ: WSGIEnvironment, start_response: StartResponse
    ) -> t.Iterable[bytes]:
        request = Request(environ)

        try:
            response = self._dispatch(request)
        except ApiError as exc:
            response = _json({"error": exc.message}, exc.status)
        except Exception:
            logger.exception(
                "The dev server failed on %s %s", request.method, request.path
            )
            response = _json(
                {"error": "Internal error in the dev server; see its log."}, 500
            )

        return response(environ, start_response)

    def _dispatch(self, request: Request) -> Response:
        """Authenticate, then route on the method and path."""
        acct = self._authenticate(request)
        method = request.method
        raw = _raw_path(request.environ)
        path = request.path.rstrip("/") if request.path != "/" else "/"
        parts = path.split("/")[2:] if path.startswith("/v2/") else []

        if not parts:
            raise ApiError(404, f"No endpoint at {request.path!r}.")

        head = parts[0]
        engine = self.engine

        if head == "publish" and method == "POST":
            destination = _destination(raw, "/v2/publish/", request)
            body = self._body(request)
            status, payload = engine.publish(
                acct,
                destination,
                list(request.headers.items()),
                body,
                caller_ip=request.remote_addr,
            )
            return _json(payload, status)

        if head == "enqueue" and method == "POST":
            rest = raw.split("/v2/enqueue/", 1)[-1]
            queue, _, target = rest.partition("/")
            destination = _destination("/" + target, "/", request)
            body = self._body(request)
            status, payload = engine.publish(
                acct,
                destination,
                list(request.headers.items()),
                body,
                queue=unquote(queue),
                caller_ip=request.remote_addr,
            )
            return _json(payload, status)

        if head == "batch" and method == "POST" and len(parts) == 1:
            items = self._json_body(request, self.max_body_size * BATCH_FACTOR)

            if not isinstance(items, list):
                raise ApiError(400, "The batch body must be a JSON array of messages.")

            for item in items:
                text = item.get("body") if isinstance(item, dict) else None

                if isinstance(text, str) and len(text) > self.max_body_size:
                    raise ApiError(413, self._too_large())

            return _json(engine.batch(acct, items, caller_ip=request.remote_addr), 201)

        handler = {
            "messages": self._messages,
            "schedules": self._schedules,
            "queues": self._queues,
            "topics": self._topics,
            "dlq": self._dlq,
            "events": self._events,
            "logs": self._events,
            "keys": self._keys,
            "flowControl": self._flow,
            "globalParallelism": self._flow,
        }.get(head)

        if handler is None:
            raise ApiError(404, f"No endpoint at {request.path!r}.")

        return handler(request, acct, parts, raw)

    def _authenticate(self, request: Request) -> Account:
        """Return the account of the bearer token, or refuse with 401."""
        header = request.headers.get("Authorization", "")
        token: str | None = None

        if header[:7].lower() == "bearer ":
            token = header[7:].strip()
        elif "qstash_token" in request.args:
            token = request.args["qstash_token"]

        acct = self.engine.account(token)

        if acct is None:
            raise ApiError(
                401,
                "Unauthorized: the token is missing or unknown. Send"
                " 'Authorization: Bearer <QSTASH_TOKEN>' with a token the dev"
                " server printed.",
            )

        return acct

    def _too_large(self) -> str:
        return (
            f"The message body is larger than {self.max_body_size} bytes."
            " Send a smaller body or raise the dev server's max body size."
        )

    def _body(self, request: Request, limit: int | None = None) -> bytes:
        """Read the raw body, refusing one over the cap with 413."""
        cap = self.max_body_size if limit is None else limit

        if request.content_length is not None and request.content_length > cap:
            raise ApiError(413, self._too_large())

        data = request.stream.read(cap + 1)

        if len(data) > cap:
            raise ApiError(413, self._too_large())

        return data

    def _json_body(self, request: Request, limit: int | None = None) -> t.Any:
        """Read the body as JSON; ``None`` when it is empty."""
        data = self._body(request, limit)

        if not data.strip():
            return None

        try:
            return json.loads(data)
        except ValueError:
            raise ApiError(400, "The request body is not valid JSON.") from None

    # Resources.

    def _messages(
        self, request: Request, acct: Account, parts: list[str], raw: str
    ) -> Response:
        engine = self.engine

        if len(parts) == 2 and request.method == "GET":
            return _json(engine.get_message(acct, parts[1]))

        if len(parts) == 2 and request.method == "DELETE":
            engine.cancel(acct, [parts[1]], strict=True)
            return _json({"cancelled": 1})

        if len(parts) == 1 and request.method == "DELETE":
            data = self._json_body(request)
            ids = _multi(request, "messageIds")

            if isinstance(data, dict) and data.get("messageIds") is not None:
                ids = _strings(data["messageIds"], "messageIds")

            filters = {k: _multi(request, k) for k in _CANCEL_FILTERS}
            filters = {k: v for k, v in filters.items() if v}
            _check_dates(filters)
            count = engine.cancel(acct, ids or None, filters)
            return _json({"cancelled": count})

        raise _not_found(request)

    def _schedules(
        self, request: Request, acct: Account, parts: list[str], raw: str
    ) -> Response:
        engine = self.engine
        method = request.method
        rest = raw.split("/v2/schedules", 1)[-1].lstrip("/")
        action = _ACTION.fullmatch(rest)

        if not rest and method == "GET":
            return _json(engine.list_schedules(acct))

        if action and method in ("PATCH", "POST") and "://" not in rest:
            engine.pause_schedule(acct, unquote(action[1]), action[2] == "pause")
            return _json({})

        if method == "POST" and rest:
            destination = _destination(raw, "/v2/schedules/", request)
            body = self._body(request)
            rv = engine.create_schedule(
                acct,
                destination,
                list(request.headers.items()),
                body,
                caller_ip=request.remote_addr,
            )
            return _json(rv, 201)

        if len(parts) == 2 and method == "GET":
            return _json(engine.get_schedule(acct, parts[1]))

        if len(parts) == 2 and method == "DELETE":
            engine.delete_schedule(acct, parts[1])
            return _json({})

        raise _not_found(request)

    def _queues(
        self, request: Request, acct: Account, parts: list[str], raw: str
    ) -> Response:
        engine = self.engine
        method = request.method

        if len(parts) == 1 and method == "GET":
            return _json(engine.list_queues(acct))

        if len(parts) == 1 and method == "POST":
            data = self._json_body(request)

            if not isinstance(data, dict) or not isinstance(data.get("queueName"), str):
                raise ApiError(
                    400,
                    "The body must be a JSON object with a 'queueName' string,"
                    " and optional 'parallelism' and 'paused'.",
                )

            parallelism = data.get("parallelism", 1)
            paused = data.get("paused", False)

            if isinstance(parallelism, bool) or not isinstance(parallelism, int):
                raise ApiError(400, "'parallelism' must be an integer.")

            if not isinstance(paused, bool):
                raise ApiError(400, "'paused' must be true or false.")

            engine.upsert_queue(acct, data["queueName"], parallelism, paused)
            return _json({})

        if len(parts) == 2 and method == "GET":
            return _json(engine.get_queue(acct, parts[1]))

        if len(parts) == 2 and method == "DELETE":
            engine.delete_queue(acct, parts[1])
            return _json({})

        if len(parts) == 3 and method == "POST" and parts[2] in ("pause", "resume"):
            engine.pause_queue(acct, parts[1], parts[2] == "pause")
            return _json({})

        raise _not_found(request)

    def _topics(
        self, request: Request, acct: Account, parts: list[str], raw: str
    ) -> Response:
        engine = self.engine
        method = request.method

        if len(parts) == 1 and method == "GET":
            return _json(engine.list_topics(acct))

        if len(parts) == 2 and method == "GET":
            return _json(engine.get_topic(acct, parts[1]))

        if len(parts) == 2 and method == "DELETE":
            engine.delete_topic(acct, parts[1])
            return _json({})

        if len(parts) == 3 and parts[2] == "endpoints" and method in ("POST", "DELETE"):
            data = self._json_body(request)
            endpoints = data.get("endpoints") if isinstance(data, dict) else None

            if not isinstance(endpoints, list):
                raise ApiError(
                    400, "The body must be a JSON object with an 'endpoints' array."
                )

            if method == "POST":
                engine.upsert_endpoints(acct, parts[1], endpoints)
            else:
                engine.remove_endpoints(acct, parts[1], endpoints)

            return _json({})

        raise _not_found(request)

    def _dlq(
        self, request: Request, acct: Account, parts: list[str], raw: str
    ) -> Response:
        engine = self.engine
        method = request.method

        if len(parts) == 1 and method == "GET":
            filters = {
                k: _multi(request, k) for k in (*DLQ_FILTERS, "fromDate", "toDate")
            }
            filters = {k: v for k, v in filters.items() if v}
            _check_dates(filters)
            count = _count(request, default=100, maximum=100)
            messages, cursor = engine.list_dlq(acct, filters, _cursor(request), count)
            rv: dict[str, t.Any] = {"messages": messages}

            if cursor is not None:
                rv["cursor"] = str(cursor)

            return _json(rv)

        if len(parts) == 1 and method == "DELETE":
            data = self._json_body(request)
            ids = _multi(request, "dlqIds")

            if isinstance(data, dict) and data.get("dlqIds") is not None:
                ids = _strings(data["dlqIds"], "dlqIds")

            return _json({"deleted": engine.delete_dlq(acct, ids)})

        if parts[1:2] == ["retry"] and method == "POST":
            headers = [
                (k, v)
                for k, v in request.headers.items()
                if k.lower().startswith("upstash-")
            ]

            if len(parts) == 3:
                return _json(engine.retry_dlq(acct, parts[2], headers), 201)

            data = self._json_body(request)
            ids = _multi(request, "dlqIds")

            if isinstance(data, dict) and data.get("dlqIds") is not None:
                ids = _strings(data["dlqIds"], "dlqIds")

            responses = [engine.retry_dlq(acct, i, headers) for i in ids]
            return _json({"responses": responses}, 201)

        if len(parts) == 2 and method == "GET":
            return _json(engine.get_dlq(acct, parts[1]))

        if len(parts) == 2 and method == "DELETE":
            if not engine.delete_dlq(acct, [parts[1]]):
                raise ApiError(404, f"DLQ message {parts[1]!r} not found.")

            return _json({})

        raise _not_found(request)

    def _events(
        self, request: Request, acct: Account, parts: list[str], raw: str
    ) -> Response:
        if len(parts) != 1 or request.method != "GET":
            raise _not_found(request)

        filters = {
            k: _multi(request, k) for k in (*EVENT_FILTERS, "fromDate", "toDate")
        }
        filters = {k: v for k, v in filters.items() if v}
        _check_dates(filters)
        count = _count(request, default=1000, maximum=1000)
        events, cursor = self.engine.list_events(acct, filters, _cursor(request), count)
        rv: dict[str, t.Any] = {parts[0]: events}

        if cursor is not None:
            rv["cursor"] = str(cursor)

        return _json(rv)

    def _keys(
        self, request: Request, acct: Account, parts: list[str], raw: str
    ) -> Response:
        if len(parts) == 1 and request.method == "GET":
            return _json({"current": acct.current_key, "next": acct.next_key})

        if parts[1:] == ["rotate"] and request.method == "POST":
            return _json(self.engine.rotate_keys(acct))

        raise _not_found(request)

    def _flow(
        self, request: Request, acct: Account, parts: list[str], raw: str
    ) -> Response:
        engine = self.engine
        method = request.method

        if parts == ["globalParallelism"] and method == "GET":
            return _json(engine.global_parallelism())

        if len(parts) == 1 and method == "GET":
            return _json(engine.list_flows(acct, request.args.get("search")))

        if len(parts) == 2 and method == "GET":
            return _json(engine.flow_info(acct, parts[1]))

        if len(parts) == 3 and method == "POST":
            engine.change_flow(acct, parts[1], parts[2], request.args)
            return _json({})

        raise _not_found(request)


def _json(data: t.Any, status: int = 200) -> Response:
    return Response(
        json.dumps(data, separators=(",", ":")),
        status=status,
        mimetype="application/json",
    )


def _not_found(request: Request) -> ApiError:
    return ApiError(404, f"No endpoint for {request.method} {request.path!r}.")


def _raw_path(environ: WSGIEnvironment) -> str:
    """Return the path as the client sent it, percent escapes kept."""
    raw = environ.get("RAW_URI") or environ.get("REQUEST_URI")

    if not raw:
        return quote(environ.get("PATH_INFO", ""), safe="/:@!$&'()*+,;=-._~%")

    path = str(raw).split("?", 1)[0]

    # An absolute-form request line carries the origin; drop it.
    if not path.startswith("/"):
        path = "/" + path.split("/", 3)[-1]

    return path


def _destination(raw: str, prefix: str, request: Request) -> str:
    """Rebuild the destination after ``prefix``, with the query minus config keys."""
    destination = raw.split(prefix, 1)[-1]

    if not destination:
        raise ApiError(
            400, "The destination is missing. Put a URL or URL group name in the path."
        )

    if not destination.startswith(("http://", "https://")):
        destination = unquote(destination)

    query = request.environ.get("QUERY_STRING", "")
    kept = [
        pair
        for pair in query.split("&")
        if pair and not pair.lower().startswith(("qstash_token=", "upstash-"))
    ]

    if kept:
        destination += "?" + "&".join(kept)

    return destination


def _multi(request: Request, name: str) -> list[str]:
    """Return every value of a query parameter, repeated or comma-joined."""
    values: list[str] = []

    for value in request.args.getlist(name):
        values.extend(v for v in value.split(",") if v)

    return values


def _strings(value: t.Any, name: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ApiError(400, f"'{name}' must be an array of strings.")

    return value


def _check_dates(filters: dict[str, list[str]]) -> None:
    for name in ("fromDate", "toDate"):
        for value in filters.get(name, []):
            if not value.isdigit():
                raise ApiError(
                    400, f"Invalid {name!r} {value!r}. Use unix milliseconds."
                )


def _count(request: Request, *, default: int, maximum: int) -> int:
    raw = request.args.get("count")

    if raw is None:
        return default

    if not raw.isdigit() or int(raw) < 1:
        raise ApiError(400, f"Invalid 'count' {raw!r}. Use a positive integer.")

    return min(int(raw), maximum)


def _cursor(request: Request) -> int | None:
    raw = request.args.get("cursor")

    if not raw:
        return None

    if not raw.isdigit():
        raise ApiError(400, f"Invalid 'cursor' {raw!r}. Pass back the one you got.")

    return int(raw)
