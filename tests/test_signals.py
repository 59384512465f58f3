from __future__ import annotations

import logging
import typing as t

import pytest
from blinker import Signal
from conftest import Deliverer
from conftest import FakeClient
from flask import Flask

from flask_qstash import Job
from flask_qstash import QStash
from flask_qstash import signals


@pytest.fixture
def ping(qstash: QStash) -> Job:
    @qstash.job("ping")
    def ping(payload: t.Any) -> dict[str, t.Any]:
        return {"pong": payload}

    return ping


class Recorder:
    """Records every send of one signal, with its sender and data."""

    def __init__(self) -> None:
        self.sends: list[tuple[t.Any, dict[str, t.Any]]] = []

    def __call__(self, sender: t.Any, **data: t.Any) -> None:
        self.sends.append((sender, data))


@pytest.mark.parametrize(
    "signal",
    [
        pytest.param(signals.job_enqueued, id="job-enqueued"),
        pytest.param(signals.job_scheduled, id="job-scheduled"),
        pytest.param(signals.job_received, id="job-received"),
        pytest.param(signals.job_finished, id="job-finished"),
        pytest.param(signals.job_failed, id="job-failed"),
        pytest.param(signals.job_skipped, id="job-skipped"),
        pytest.param(signals.job_dead, id="job-dead"),
        pytest.param(signals.delivery_rejected, id="delivery-rejected"),
        pytest.param(signals.signature_rejected, id="signature-rejected"),
    ],
)
def test_signal_names_are_kebab_case(signal: Signal) -> None:
    name = t.cast(str, getattr(signal, "name", ""))
    python_name = next(k for k, v in vars(signals).items() if v is signal)

    assert name == python_name.replace("_", "-")


def test_enqueue_sends_job_enqueued(
    app: Flask, ping: Job, fake_client: type[FakeClient]
) -> None:
    recorder = Recorder()

    with signals.job_enqueued.connected_to(recorder, sender=app):
        rv = ping.enqueue({"n": 1}, tenant="acme")

    [(sender, data)] = recorder.sends
    assert sender is app
    assert data["job"] == "ping"
    assert data["tenant"] == "acme"
    assert data["message_id"] == rv.message_id
    assert data["deduplicated"] is False
    assert data["options"]["label"] == "acme.ping"


def test_schedule_sends_job_scheduled(
    app: Flask, ping: Job, fake_client: type[FakeClient]
) -> None:
    recorder = Recorder()

    with signals.job_scheduled.connected_to(recorder, sender=app):
        ping.schedule("*/5 * * * *", tenant="acme")

    assert recorder.sends == [
        (
            app,
            {
                "job": "ping",
                "tenant": "acme",
                "schedule_id": "acme.ping",
                "cron": "*/5 * * * *",
            },
        )
    ]


def test_delivery_sends_received_then_finished(
    app: Flask, ping: Job, deliver: Deliverer
) -> None:
    order: list[str] = []
    received = Recorder()
    finished = Recorder()

    def on_received(sender: t.Any, **data: t.Any) -> None:
        order.append("received")
        received(sender, **data)

    def on_finished(sender: t.Any, **data: t.Any) -> None:
        order.append("finished")
        finished(sender, **data)

    with (
        signals.job_received.connected_to(on_received, sender=app),
        signals.job_finished.connected_to(on_finished, sender=app),
    ):
        deliver("ping", 1, message_id="msg_1", headers={"Upstash-Retried": "2"})

    assert order == ["received", "finished"]
    assert received.sends[0][1] == {
        "job": "ping",
        "tenant": "acme",
        "message_id": "msg_1",
        "retried": 2,
    }
    data = finished.sends[0][1]
    assert data["result"] == {"pong": 1}
    assert data["duration"] >= 0


def test_duplicate_delivery_sends_job_skipped(
    app: Flask, ping: Job, deliver: Deliverer
) -> None:
    skipped = Recorder()
    deliver("ping", 1, message_id="msg_1")

    with signals.job_skipped.connected_to(skipped, sender=app):
        deliver("ping", 1, message_id="msg_1")

    assert [d["reason"] for _, d in skipped.sends] == ["done"]


def test_other_apps_receivers_are_not_called(
    request: pytest.FixtureRequest,
    app: Flask,
    ping: Job,
    fake_client: type[FakeClient],
) -> None:
    recorder = Recorder()
    other = Flask(request.module.__name__)

    with signals.job_enqueued.connected_to(recorder, sender=other):
        ping.enqueue()

    assert recorder.sends == []


def test_raising_receiver_does_not_change_the_answer(
    app: Flask, ping: Job, deliver: Deliverer, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(sender: t.Any, **data: t.Any) -> None:
        raise RuntimeError("receiver is broken")

    with (
        signals.job_received.connected_to(broken),
        signals.job_finished.connected_to(broken),
        caplog.at_level(logging.ERROR, logger="flask_qstash.signals"),
    ):
        rv = deliver("ping", 1)

    assert rv.status_code == 200
    assert rv.json == {"status": "done", "result": {"pong": 1}}
    messages = [r.getMessage() for r in caplog.records if r.exc_info]
    assert len(messages) == 2
    assert "'job-received'" in messages[0]


def test_raising_receiver_does_not_stop_a_publish(
    app: Flask,
    ping: Job,
    fake_client: type[FakeClient],
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(sender: t.Any, **data: t.Any) -> None:
        raise RuntimeError("receiver is broken")

    with (
        signals.job_enqueued.connected_to(broken),
        caplog.at_level(logging.ERROR, logger="flask_qstash.signals"),
    ):
        rv = ping.enqueue()

    assert rv.message_id
    assert len(fake_client.calls) == 1
    assert any("'job-enqueued'" in r.getMessage() for r in caplog.records)
