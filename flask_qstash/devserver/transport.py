"""Sending delivery attempts with the standard library's HTTP client.

Each delivery worker thread keeps one persistent connection per origin, so a
busy dev server pays for a connection once, not per attempt. The standard
library client costs a fraction of a general-purpose client's CPU per
request, which matters when the server and the app share two cores.
"""

from __future__ import annotations

import http.client
import ssl
import threading
import typing as t
import urllib.parse
from dataclasses import dataclass

#: Errors that mean a reused connection was closed by the peer before it
#: answered; the attempt is sent again once on a fresh connection.
_STALE = (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError)


@dataclass
class Response:
    """What the destination answered."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes


class TransportError(Exception):
    """No answer arrived: refused, reset, timed out or not HTTP."""


class Transport:
    """Per-thread persistent connections to delivery destinations.

    :param max_body: Bytes of each answer kept; the rest is read and dropped
        so the connection can be reused.
    """

    def __init__(self, *, max_body: int) -> None:
        self.max_body = max_body
        self._local = threading.local()
        self._ssl = ssl.create_default_context()

        # Every open connection of every thread, so ``close`` reaches them all:
        # a thread-local one left open warns when its pool thread exits.
        self._open: set[http.client.HTTPConnection] = set()
        self._lock = threading.Lock()

    def request(
        self,
        method: str,
        url: str,
        *,
        body: bytes,
        headers: t.Mapping[str, str],
        timeout: float,
    ) -> Response:
        """Send one request and return the answer.

        The timeout bounds the connection and each read, the way a socket
        timeout does, not the request as a whole.

        :raises TransportError: No answer arrived.
        """
        parts = urllib.parse.urlsplit(url)
        target = parts.path or "/"

        if parts.query:
            target += "?" + parts.query

        origin = (parts.scheme, parts.hostname or "", parts.port)

        for fresh in (False, True):
            conn, reused = self._connection(origin, timeout, fresh=fresh)

            try:
                conn.request(method, target, body=body, headers=dict(headers))
                answer = conn.getresponse()
                data = answer.read(self.max_body)

                # Drain what is left so the connection stays usable.
                while answer.read(65536):
                    pass

                rv = Response(answer.status, answer.getheaders(), data)
            except _STALE as exc:
                self._drop(origin)

                if reused and not fresh:
                    continue

                raise TransportError(f"{type(exc).__name__}: {exc}") from exc
            except (OSError, http.client.HTTPException) as exc:
                self._drop(origin)
                raise TransportError(f"{type(exc).__name__}: {exc}") from exc

            if answer.will_close:
                self._drop(origin)

            return rv

        raise AssertionError("unreachable")  # pragma: no cover

    def close(self) -> None:
        """Close the connections of every thread; call it once sending stopped."""
        with self._lock:
            conns, self._open = self._open, set()

        for conn in conns:
            conn.close()

    def _connection(
        self, origin: tuple[str, str, int | None], timeout: float, *, fresh: bool
    ) -> tuple[http.client.HTTPConnection, bool]:
        conns: dict[tuple[str, str, int | None], http.client.HTTPConnection]
        conns = self._local.__dict__.setdefault("conns", {})
        conn = None if fresh else conns.get(origin)

        if conn is not None:
            conn.timeout = timeout

            if conn.sock is not None:
                conn.sock.settimeout(timeout)

            return conn, True

        scheme, host, port = origin

        if scheme == "https":
            conn = http.client.HTTPSConnection(
                host, port, timeout=timeout, context=self._ssl
            )
        else:
            conn = http.client.HTTPConnection(host, port, timeout=timeout)

        conns[origin] = conn

        with self._lock:
            self._open.add(conn)

        return conn, False

    def _drop(self, origin: tuple[str, str, int | None]) -> None:
        conn = self._local.__dict__.get("conns", {}).pop(origin, None)

        if conn is not None:
            conn.close()

            with self._lock:
                self._open.discard(conn)
