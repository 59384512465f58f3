"""One dev server per database file.

Two servers on one SQLite file would both resume its pending messages and
deliver them twice. A server therefore holds an exclusive lock on
``<database>.lock`` while it runs and writes its URL into that file, so another
process (a reloader's child, a second terminal running ``flask qstash dlq``)
can find it and talk to it instead of starting its own.

The lock is an ``flock`` on POSIX systems and is released by the kernel when
the process dies, so a crash never leaves a stale lock behind.
"""

from __future__ import annotations

import os
import typing as t

try:
    import fcntl
except ImportError:  # pragma: no cover
    # Windows has no flock; there the lock is skipped, and two servers on one
    # database must be avoided by hand. Use msvcrt.locking to cover it.
    fcntl = None  # type: ignore[assignment]


class DatabaseLockedError(RuntimeError):
    """Another dev server already runs on this database.

    :param database: The database file.
    :param url: The other server's URL, if it wrote one yet.
    """

    def __init__(self, database: str, url: str | None) -> None:
        where = f" at {url}" if url else ""
        super().__init__(
            f"Another QStash dev server{where} already uses {database!r}."
            " Talk to that one, stop it, or give this server another database."
        )
        self.database = database
        self.url = url


class DatabaseLock:
    """The exclusive lock a running server holds on its database.

    :param database: The SQLite file; ``":memory:"`` needs no lock.
    """

    def __init__(self, database: str) -> None:
        self.path = database + ".lock"
        self.database = database
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock, or raise :class:`DatabaseLockedError`."""
        if fcntl is None:
            return

        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)

        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            url = _read(fd)
            os.close(fd)
            raise DatabaseLockedError(self.database, url) from None

        self._fd = fd

    def publish(self, url: str) -> None:
        """Write the server's URL for other processes to find."""
        if self._fd is None:
            return

        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, url.encode(), 0)

    def release(self) -> None:
        """Give the lock up; the file stays, empty, for the next server."""
        if self._fd is None:
            return

        os.ftruncate(self._fd, 0)
        os.close(self._fd)
        self._fd = None


def running_at(database: str) -> str | None:
    """Return the URL of the server running on ``database``, if one does."""
    if fcntl is None or database == ":memory:":
        return None

    try:
        fd = os.open(database + ".lock", os.O_RDONLY)
    except FileNotFoundError:
        return None

    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _read(fd) or None
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _read(fd: int) -> str | None:
    data: t.Final = os.pread(fd, 4096, 0)
    return data.decode("utf-8", "replace").strip() or None
