"""The duration grammars QStash accepts.

Two grammars are in use. Request headers (``Upstash-Delay``, ``Upstash-Timeout``
and the flow-control ``period``) take one or more ``<integer><unit>`` groups with
units ``s``, ``m``, ``h`` and ``d``, or a bare integer meaning seconds. A
destination's ``Retry-After`` answer takes integer seconds, an RFC 1123 date or a
Go duration such as ``6m5s`` or ``1.5s`` (units ``ns``, ``us``, ``µs``, ``ms``,
``s``, ``m`` and ``h``).
"""

from __future__ import annotations

import email.utils
import re
import time

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_HEADER_DURATION = re.compile(r"(?:\d+[smhd])+")
_HEADER_GROUP = re.compile(r"(\d+)([smhd])")

_GO_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_GO_DURATION = re.compile(r"(?:\d+(?:\.\d*)?(?:ns|us|µs|μs|ms|s|m|h))+")
_GO_GROUP = re.compile(r"(\d+(?:\.\d*)?)(ns|us|µs|μs|ms|s|m|h)")

#: Response-driven delays longer than this are ignored, as QStash does.
MAX_RETRY_AFTER = 86400.0


def parse_duration(value: str) -> int:
    """Return the seconds in a header duration such as ``1h30m3s`` or ``10``.

    :param value: The header value.
    :raises ValueError: The value does not follow the grammar.
    """
    text = value.strip().lower()

    if text.isdigit():
        return int(text)

    if not _HEADER_DURATION.fullmatch(text):
        raise ValueError(
            f"Invalid duration {value!r}. Use groups such as '10s', '5m', '2h',"
            " '7d' or '1h30m'."
        )

    return sum(int(n) * _UNITS[unit] for n, unit in _HEADER_GROUP.findall(text))


def parse_retry_after(value: str, *, now: float | None = None) -> float | None:
    """Return the delay in seconds a ``Retry-After`` style header asks for.

    Answers ``None`` when the value cannot be read or asks for more than one day,
    in which case QStash falls back to its own backoff.

    :param value: The header value: seconds, an HTTP date or a Go duration.
    :param now: Unix time to measure an HTTP date against.
    """
    text = value.strip()
    seconds: float | None = None

    if re.fullmatch(r"\d+", text):
        seconds = float(text)
    elif _GO_DURATION.fullmatch(text):
        seconds = sum(float(n) * _GO_UNITS[u] for n, u in _GO_GROUP.findall(text))
    else:
        try:
            moment = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None

        current = time.time() if now is None else now
        seconds = max(0.0, moment.timestamp() - current)

    if seconds > MAX_RETRY_AFTER:
        return None

    return seconds
