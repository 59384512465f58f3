"""Persistence: a restart, even after SIGKILL, loses and repeats nothing."""

from __future__ import annotations

import collections
import os
import pathlib
import signal
import socket
import subprocess
import sys
import typing as t

import httpx
import pytest
import qstash
from devserver_helpers import Answer
from devserver_helpers import client
from devserver_helpers import Receiver
from devserver_helpers import wait_until
from qstash.log import LogState

from flask_qstash.devserver import DEFAULT_TOKEN
from flask_qstash.devserver import DevServer


@pytest.fixture
def receiver() -> t.Iterator[Receiver]:
    rv = Receiver().start()
    yield rv
    rv.stop()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _spawn(db: pathlib.Path, port: int) -> subprocess.Popen[bytes]:
    """Start the dev server as a process and wait until it answers."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "flask_qstash.devserver",
            "--db",
            str(db),
            "--port",
            str(port),
            "--log-level",
            "WARNING",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )

    def ready() -> bool:
        try:
            return httpx.get(
                f"http://127.0.0.1:{port}/v2/keys",
                headers={"Authorization": f"Bearer {DEFAULT_TOKEN}"},
                timeout=0.5,
            ).is_success
        except httpx.HTTPError:
            return False

    if not wait_until(ready, timeout=20, step=0.05):
        proc.kill()
        output = proc.communicate(timeout=5)[0].decode(errors="replace")
        pytest.fail(f"The dev server did not start:\n{output}")

    return proc


def _published_id(res: t.Any) -> str:
    assert isinstance(
        res, qstash.message.PublishResponse | qstash.message.EnqueueResponse
    )
    return res.message_id


@pytest.mark.slow
def test_sigkill_restart_delivers_everything_once(
    tmp_path: pathlib.Path, receiver: Receiver
) -> None:
    db = tmp_path / "qstash.sqlite3"
    port = _free_port()
    proc = _spawn(db, port)
    base_url = f"http://127.0.0.1:{port}"
    sdk = qstash.QStash(DEFAULT_TOKEN, base_url=base_url, retry=False)
    expected: set[str] = set()

    try:
        for n in range(5):
            expected.add(
                _published_id(
                    sdk.message.publish(
                        url=receiver.url(f"delayed/{n}"), body=str(n), delay=3
                    )
                )
            )
            receiver.answer(f"retry/{n}", Answer(500))
            expected.add(
                _published_id(
                    sdk.message.publish(
                        url=receiver.url(f"retry/{n}"), body=str(n), retry_delay="2500"
                    )
                )
            )

        sdk.queue.upsert("held", paused=True)

        for n in range(3):
            expected.add(
                _published_id(
                    sdk.message.enqueue(
                        queue="held", url=receiver.url("queued"), body=str(n)
                    )
                )
            )

        # Kill only once every first attempt is recorded, so none is in flight.
        assert wait_until(
            lambda: len(sdk.log.list(filter={"state": LogState.RETRY}).logs) == 5
        )
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=10)

    assert sum(d.status == 200 for d in receiver.deliveries) == 0
    proc = _spawn(db, port)

    try:
        sdk.queue.resume("held")

        def all_done() -> bool:
            return {d.message_id for d in receiver.deliveries if d.status == 200} >= (
                expected
            )

        assert receiver.wait_for(all_done, timeout=20)
        assert wait_until(lambda: sdk.queue.get("held").lag == 0)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=10)

    successes = collections.Counter(
        d.message_id for d in receiver.deliveries if d.status == 200
    )
    assert set(successes) == expected
    assert max(successes.values()) == 1
    assert [d.body for d in receiver.to("queued")] == [b"0", b"1", b"2"]
    assert all(d.verified and d.sdk_verified for d in receiver.deliveries)


def test_restart_in_process_keeps_state(
    tmp_path: pathlib.Path, receiver: Receiver
) -> None:
    db = str(tmp_path / "state.sqlite3")

    with DevServer(database=db, speed=1000) as server:
        sdk = client(server)
        keys = sdk.signing_key.rotate()
        sdk.queue.upsert("kept", parallelism=2)
        sdk.url_group.upsert_endpoints(
            url_group="grp", endpoints=[{"url": receiver.url("grp")}]
        )
        schedule_id = sdk.schedule.create(
            destination=receiver.url("s"), cron="1 1 1 1 1"
        )
        pending = _published_id(
            sdk.message.publish(url=receiver.url("later"), body="x", delay="1h")
        )
        receiver.answer("dead", Answer(500))
        sdk.message.publish(url=receiver.url("dead"), body="d", retries=0)
        assert server.wait_idle()

    with DevServer(database=db, speed=1000) as server:
        sdk = client(server)
        assert sdk.signing_key.get().current == keys.current
        assert sdk.queue.get("kept").parallelism == 2
        assert sdk.url_group.get("grp").endpoints[0].url == receiver.url("grp")
        assert sdk.schedule.get(schedule_id).cron == "1 1 1 1 1"
        assert sdk.message.get(pending).body == "x"
        assert len(sdk.dlq.list().messages) == 1
        assert len(sdk.log.list().logs) == 5
        sdk.message.cancel(pending)
        assert sdk.message.get(pending).body == "x"
