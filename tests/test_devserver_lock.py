"""One dev server per database file, and the extension joins a running one."""

from __future__ import annotations

import typing as t
from pathlib import Path

import pytest
from conftest import make_app
from flask import Flask

from flask_qstash import QStash
from flask_qstash.devserver import DatabaseLockedError
from flask_qstash.devserver import DevServer
from flask_qstash.devserver import running_at
from flask_qstash.extension import DEV_SERVER_ENV


def test_second_server_on_one_database_is_refused(tmp_path: Path) -> None:
    database = str(tmp_path / "dev.sqlite3")

    with DevServer(database=database) as first:
        assert running_at(database) == first.url

        with pytest.raises(DatabaseLockedError, match="already uses") as info:
            DevServer(database=database).start()

        assert info.value.url == first.url

    assert running_at(database) is None

    # Once the first is gone, the database is free again.
    with DevServer(database=database) as again:
        assert running_at(database) == again.url


def test_memory_databases_are_never_locked() -> None:
    with DevServer() as first, DevServer() as second:
        assert first.url != second.url
        assert running_at(":memory:") is None


def _dev_app(request: pytest.FixtureRequest, database: str) -> Flask:
    return make_app(
        request.module.__name__,
        QStash(),
        QSTASH_TOKEN=None,
        QSTASH_CURRENT_SIGNING_KEY=None,
        QSTASH_NEXT_SIGNING_KEY=None,
        QSTASH_DEV_SERVER=True,
        QSTASH_DEV_SERVER_DATABASE=database,
    )


def test_app_joins_the_server_running_on_its_database(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    database = str(tmp_path / "dev.sqlite3")
    first = _dev_app(request, database)
    servers: list[t.Any] = []

    try:
        with first.app_context():
            server = first.extensions["qstash"].dev_server
            servers.append(server)
            url = first.extensions["qstash"].settings.url

        assert server is not None
        assert url == server.url

        # A second process has no environment variable from a reloader parent.
        monkeypatch.delenv(DEV_SERVER_ENV)
        second = _dev_app(request, database)

        with second.app_context():
            assert second.extensions["qstash"].dev_server is None
            assert second.extensions["qstash"].settings.url == url
    finally:
        for running in servers:
            running.stop()

        monkeypatch.delenv(DEV_SERVER_ENV, raising=False)
