"""SQLite persistence for the dev server.

The engine keeps its working state in memory and writes every change through to
SQLite before it answers, so a restart, or a crash of the process, loses no
accepted message and resumes every pending delivery. The database runs in WAL
mode with ``synchronous=NORMAL``: a killed process loses nothing, and only a
power cut may lose the last moments, which is the right trade for development.

Log events and dead-letter entries live only here and are queried with SQL, so
they cost no memory however many there are.

The store is not thread-safe by itself; the engine calls it under its own lock.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import typing as t

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS keys (
    user TEXT PRIMARY KEY, current TEXT NOT NULL, next TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS messages (
    user TEXT NOT NULL, id TEXT NOT NULL, seq INTEGER NOT NULL,
    terminal INTEGER NOT NULL, data TEXT NOT NULL, PRIMARY KEY (user, id)
);
CREATE INDEX IF NOT EXISTS messages_terminal ON messages (terminal, seq);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, user TEXT NOT NULL, time INTEGER NOT NULL,
    message_id TEXT NOT NULL, state TEXT NOT NULL, url TEXT, topic TEXT, queue TEXT,
    schedule TEXT, label TEXT, data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_user ON events (user, seq);
CREATE INDEX IF NOT EXISTS events_message ON events (message_id);
CREATE TABLE IF NOT EXISTS dlq (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, user TEXT NOT NULL, dlq_id TEXT NOT NULL,
    message_id TEXT NOT NULL, time INTEGER NOT NULL, url TEXT, topic TEXT,
    queue TEXT, schedule TEXT, status INTEGER, caller_ip TEXT, label TEXT,
    data TEXT NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS dlq_id ON dlq (user, dlq_id);
CREATE TABLE IF NOT EXISTS objects (
    user TEXT NOT NULL, kind TEXT NOT NULL, name TEXT NOT NULL, data TEXT NOT NULL,
    PRIMARY KEY (user, kind, name)
);
"""

#: Filters of the event and DLQ lists, mapped to their column.
EVENT_FILTERS = {
    "messageId": "message_id",
    "messageIds": "message_id",
    "state": "state",
    "url": "url",
    "topicName": "topic",
    "queueName": "queue",
    "scheduleId": "schedule",
    "label": "label",
}
DLQ_FILTERS = {
    "messageId": "message_id",
    "dlqIds": "dlq_id",
    "url": "url",
    "topicName": "topic",
    "queueName": "queue",
    "scheduleId": "schedule",
    "responseStatus": "status",
    "callerIp": "caller_ip",
    "label": "label",
}


class Store:
    """The SQLite database behind one dev server.

    :param path: A file path, or ``":memory:"`` for a throwaway database.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._depth = 0

        if path != ":memory:":
            self._db.execute("PRAGMA journal_mode=WAL")

        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        """Close the connection; later calls fail."""
        self._db.close()

    @contextlib.contextmanager
    def transaction(self) -> t.Iterator[None]:
        """Group the writes inside into one commit; nesting joins the outer one."""
        if self._depth:
            self._depth += 1

            try:
                yield
            finally:
                self._depth -= 1

            return

        self._db.execute("BEGIN")
        self._depth = 1

        try:
            yield
        except BaseException:
            self._depth = 0
            self._db.execute("ROLLBACK")
            raise

        self._depth = 0
        self._db.execute("COMMIT")

    # Meta and keys.

    def get_meta(self, key: str, default: str) -> str:
        """Return a stored setting, or ``default``."""
        row = self._db.execute(
            "SELECT value FROM meta WHERE key = ?", (key,)
        ).fetchone()
        return default if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        """Store a setting."""
        self._db.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value)
        )

    def get_keys(self, user: str) -> tuple[str, str] | None:
        """Return a user's ``(current, next)`` signing keys, if stored."""
        row = self._db.execute(
            "SELECT current, next FROM keys WHERE user = ?", (user,)
        ).fetchone()
        return None if row is None else (str(row[0]), str(row[1]))

    def set_keys(self, user: str, current: str, next_key: str) -> None:
        """Store a user's signing keys."""
        self._db.execute(
            "INSERT OR REPLACE INTO keys (user, current, next) VALUES (?, ?, ?)",
            (user, current, next_key),
        )

    # Messages.

    def save_message(
        self, user: str, msg_id: str, seq: int, terminal: bool, data: str
    ) -> None:
        """Insert or replace one message."""
        self._db.execute(
            "INSERT OR REPLACE INTO messages (user, id, seq, terminal, data)"
            " VALUES (?, ?, ?, ?, ?)",
            (user, msg_id, seq, int(terminal), data),
        )

    def delete_message(self, user: str, msg_id: str) -> None:
        """Forget one message."""
        self._db.execute(
            "DELETE FROM messages WHERE user = ? AND id = ?", (user, msg_id)
        )

    def load_messages(self) -> list[str]:
        """Return every stored message, oldest first."""
        rows = self._db.execute("SELECT data FROM messages ORDER BY seq").fetchall()
        return [str(row[0]) for row in rows]

    # Generic objects: queues, schedules, URL groups, flow-control keys, dedup ids.

    def save_object(self, user: str, kind: str, name: str, data: t.Any) -> None:
        """Insert or replace one object of ``kind``."""
        self._db.execute(
            "INSERT OR REPLACE INTO objects (user, kind, name, data)"
            " VALUES (?, ?, ?, ?)",
            (user, kind, name, json.dumps(data, separators=(",", ":"))),
        )

    def delete_object(self, user: str, kind: str, name: str) -> None:
        """Forget one object of ``kind``."""
        self._db.execute(
            "DELETE FROM objects WHERE user = ? AND kind = ? AND name = ?",
            (user, kind, name),
        )

    def load_objects(self, kind: str) -> list[tuple[str, str, t.Any]]:
        """Return every ``(user, name, data)`` of ``kind``."""
        rows = self._db.execute(
            "SELECT user, name, data FROM objects WHERE kind = ? ORDER BY rowid",
            (kind,),
        ).fetchall()
        return [(str(u), str(n), json.loads(d)) for u, n, d in rows]

    # Events.

    def add_event(
        self,
        user: str,
        event: dict[str, t.Any],
        *,
        topic: str | None,
        queue: str | None,
        schedule: str | None,
        label: str | None,
    ) -> None:
        """Append one log event."""
        self._db.execute(
            "INSERT INTO events (user, time, message_id, state, url, topic, queue,"
            " schedule, label, data) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                user,
                event["time"],
                event["messageId"],
                event["state"],
                event["url"],
                topic,
                queue,
                schedule,
                label,
                json.dumps(event, separators=(",", ":")),
            ),
        )

    def list_events(
        self,
        user: str,
        filters: t.Mapping[str, list[str]],
        *,
        cursor: int | None,
        count: int,
    ) -> tuple[list[dict[str, t.Any]], int | None]:
        """Return events newest first, and the cursor of the next page or ``None``.

        :param filters: Query values by API name; values of one filter are ORed,
            different filters ANDed.
        """
        where, args = _where(user, filters, EVENT_FILTERS, time_column="time")

        if cursor is not None:
            where += " AND seq < ?"
            args.append(cursor)

        rows = self._db.execute(
            f"SELECT seq, data FROM events WHERE {where} ORDER BY seq DESC LIMIT ?",
            (*args, count + 1),
        ).fetchall()
        more = len(rows) > count
        rows = rows[:count]
        next_cursor = int(rows[-1][0]) if more and rows else None
        return [json.loads(data) for _, data in rows], next_cursor

    # Dead-letter queue.

    def add_dlq(
        self, user: str, dlq_id: str, view: dict[str, t.Any], *, now_ms: int
    ) -> None:
        """Add one dead-letter entry rendered as ``view``."""
        self._db.execute(
            "INSERT INTO dlq (user, dlq_id, message_id, time, url, topic, queue,"
            " schedule, status, caller_ip, label, data)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                user,
                dlq_id,
                view["messageId"],
                now_ms,
                view["url"],
                view.get("topicName"),
                view.get("queueName"),
                view.get("scheduleId"),
                view["responseStatus"],
                view.get("callerIP"),
                view.get("label"),
                json.dumps(view, separators=(",", ":")),
            ),
        )

    def get_dlq(self, user: str, dlq_id: str) -> dict[str, t.Any] | None:
        """Return one dead-letter entry, or ``None``."""
        row = self._db.execute(
            "SELECT data FROM dlq WHERE user = ? AND dlq_id = ?", (user, dlq_id)
        ).fetchone()
        return None if row is None else t.cast(dict[str, t.Any], json.loads(row[0]))

    def delete_dlq(self, user: str, dlq_ids: t.Iterable[str]) -> int:
        """Delete entries by id and return how many existed."""
        deleted = 0

        for dlq_id in dlq_ids:
            deleted += self._db.execute(
                "DELETE FROM dlq WHERE user = ? AND dlq_id = ?", (user, dlq_id)
            ).rowcount

        return deleted

    def list_dlq(
        self,
        user: str,
        filters: t.Mapping[str, list[str]],
        *,
        cursor: int | None,
        count: int | None,
    ) -> tuple[list[dict[str, t.Any]], int | None]:
        """Return entries oldest first, and the next page's cursor or ``None``."""
        where, args = _where(user, filters, DLQ_FILTERS, time_column="time")

        if cursor is not None:
            where += " AND seq > ?"
            args.append(cursor)

        limit = -1 if count is None else count + 1
        rows = self._db.execute(
            f"SELECT seq, data FROM dlq WHERE {where} ORDER BY seq LIMIT ?",
            (*args, limit),
        ).fetchall()
        more = count is not None and len(rows) > count
        rows = rows[:count] if count is not None else rows
        next_cursor = int(rows[-1][0]) if more and rows else None
        return [json.loads(data) for _, data in rows], next_cursor


def _where(
    user: str,
    filters: t.Mapping[str, list[str]],
    columns: t.Mapping[str, str],
    *,
    time_column: str,
) -> tuple[str, list[t.Any]]:
    """Build a WHERE clause from API filters; unknown filters are ignored."""
    clauses = ["user = ?"]
    args: list[t.Any] = [user]

    for name, values in filters.items():
        if name == "fromDate" and values:
            clauses.append(f"{time_column} >= ?")
            args.append(int(values[0]))
        elif name == "toDate" and values:
            clauses.append(f"{time_column} <= ?")
            args.append(int(values[0]))
        elif name in columns and values:
            column = columns[name]

            if name == "state" and "IN_PROGRESS" in values:
                values = [v for v in values if v != "IN_PROGRESS"]
                values += ["ACTIVE", "RETRY", "ERROR"]

            marks = ", ".join("?" for _ in values)
            clauses.append(f"{column} IN ({marks})")
            args.extend(values)

    return " AND ".join(clauses), args
