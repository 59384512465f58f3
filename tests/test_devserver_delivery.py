"""Delivery behaviour of the dev server, driven through the official SDK."""

from __future__ import annotations

import base64
import json
import math
import threading
import time
import typing as t

import pytest
import qstash
from devserver_helpers import Answer
from devserver_helpers import client
from devserver_helpers import Receiver
from devserver_helpers import wait_until
from qstash.log import LogState

from flask_qstash.devserver import DEFAULT_TOKEN
from flask_qstash.devserver import DevServer
from flask_qstash.devserver import USERS


@pytest.fixture
def receiver() -> t.Iterator[Receiver]:
    rv = Receiver().start()
    yield rv
    rv.stop()


@pytest.fixture
def server() -> t.Iterator[DevServer]:
    with DevServer(speed=1000) as rv:
        yield rv


def test_publish_is_delivered_signed_with_headers(
    server: DevServer, receiver: Receiver
) -> None:
    sdk = client(server)
    url = receiver.url("jobs/email?tenant=acme&x=1")
    res = sdk.message.publish_json(
        url=url, body={"to": "a@b.c"}, headers={"X-Trace": "t-1"}, method="PUT"
    )
    assert isinstance(res, qstash.message.PublishResponse)

    (got,) = receiver.wait_count("jobs/email", 1)
    assert got.verified and got.sdk_verified
    assert got.url == url
    assert got.method == "PUT"
    assert json.loads(got.body) == {"to": "a@b.c"}
    assert got.headers["upstash-message-id"] == res.message_id
    assert got.headers["upstash-retried"] == "0"
    assert got.headers["x-trace"] == "t-1"
    assert got.headers["content-type"] == "application/json"
    assert got.headers["user-agent"] == "Upstash-QStash"
    assert got.headers["upstash-caller-ip"] == "127.0.0.1"
    assert "authorization" not in got.headers

    # Finished messages stay readable, with the fields the SDK reads.
    assert server.wait_idle()
    msg = sdk.message.get(res.message_id)
    assert msg.url == url
    assert msg.method == "PUT"
    assert msg.body == '{"to": "a@b.c"}'
    assert msg.headers is not None and msg.headers["X-Trace"] == ["t-1"]
    assert msg.max_retries == 3
    assert msg.created_at <= msg.not_before


def test_every_attempt_has_a_fresh_token(server: DevServer, receiver: Receiver) -> None:
    receiver.answer("flaky", Answer(500), Answer(500))
    client(server).message.publish(url=receiver.url("flaky"), body="x", retries=2)

    got = receiver.wait_count("flaky", 3)
    assert [d.headers["upstash-retried"] for d in got] == ["0", "1", "2"]
    assert all(d.verified and d.sdk_verified for d in got)
    assert len({d.headers["upstash-signature"] for d in got}) == 3


def test_delay_and_not_before(server: DevServer, receiver: Receiver) -> None:
    sdk = client(server)
    start = time.time()
    sdk.message.publish(url=receiver.url("delayed"), body="d", delay="1s")
    sdk.message.publish(
        url=receiver.url("not-before"), body="n", not_before=int(start) + 2, delay=60
    )
    far = sdk.message.publish(url=receiver.url("far"), body="f", delay="1h")

    (delayed,) = receiver.wait_count("delayed", 1)
    (not_before,) = receiver.wait_count("not-before", 1)
    assert delayed.received - start >= 0.95
    assert int(start) + 2 <= not_before.received < start + 10

    # A message due after the timeout does not keep the server busy.
    assert server.wait_idle(timeout=5.0)
    assert receiver.to("far") == []
    assert isinstance(far, qstash.message.PublishResponse)
    assert sdk.message.get(far.message_id).not_before >= (start + 3599) * 1000


def test_default_backoff_is_sped_up(receiver: Receiver) -> None:
    receiver.answer("backoff", Answer(500), Answer(500))

    with DevServer(speed=100) as server:
        client(server).message.publish(url=receiver.url("backoff"), body="b")
        got = receiver.wait_count("backoff", 3)

    # e^2.5 = 12.2 s and e^5 = 148 s, divided by 100.
    first = got[1].received - got[0].received
    second = got[2].received - got[1].received
    assert math.exp(2.5) / 100 * 0.9 <= first < 1.0
    assert math.exp(5) / 100 * 0.9 <= second < 3.0


def test_retry_delay_expression_and_retry_after(receiver: Receiver) -> None:
    receiver.answer("expr", Answer(500), Answer(500))
    receiver.answer("after", Answer(503, {"Retry-After": "50"}))

    with DevServer(speed=100) as server:
        sdk = client(server)
        sdk.message.publish(
            url=receiver.url("expr"), body="e", retry_delay="20000 * (1 + retried)"
        )
        sdk.message.publish(url=receiver.url("after"), body="a")
        expr = receiver.wait_count("expr", 3)
        after = receiver.wait_count("after", 2)

    # 20 s then 40 s, divided by 100. The lower bounds tell the expression
    # from the default backoff; the upper ones, far below the unsped delays,
    # leave room for a busy machine.
    assert 0.18 <= expr[1].received - expr[0].received < 2.0
    assert 0.38 <= expr[2].received - expr[1].received < 2.0

    # Retry-After of 50 s wins over the 12 s default backoff.
    assert 0.48 <= after[1].received - after[0].received < 2.0


def test_exhausted_retries_go_to_dlq_with_failure_callback(
    server: DevServer, receiver: Receiver
) -> None:
    sdk = client(server)
    receiver.answer("fails", *[Answer(404, body="404 Not Found")] * 2)
    res = sdk.message.publish(
        url=receiver.url("fails"),
        body="payload",
        retries=1,
        failure_callback=receiver.url("failed"),
        failure_callback_headers={"Upstash-Failure-Callback-Forward-X-Kind": "fail"},
        label="billing",
    )
    assert isinstance(res, qstash.message.PublishResponse)

    (failed,) = receiver.wait_count("failed", 1)
    assert failed.verified and failed.sdk_verified
    assert failed.headers["x-kind"] == "fail"
    report = json.loads(failed.body)

    dlq = sdk.dlq.list()
    assert [m.message_id for m in dlq.messages] == [res.message_id]
    entry = dlq.messages[0]
    assert entry.response_status == 404
    assert entry.response_body == "404 Not Found"
    assert entry.label == "billing"
    assert dlq.cursor is None

    assert report["status"] == 404
    assert report["retried"] == 1
    assert report["maxRetries"] == 1
    assert report["sourceMessageId"] == res.message_id
    assert report["dlqId"] == entry.dlq_id
    assert base64.b64decode(report["body"]) == b"404 Not Found"
    assert base64.b64decode(report["sourceBody"]) == b"payload"
    assert report["url"] == receiver.url("fails")

    assert sdk.dlq.get(entry.dlq_id).message_id == res.message_id


def test_non_retryable_489_skips_retries(server: DevServer, receiver: Receiver) -> None:
    receiver.answer(
        "bad", Answer(489, {"Upstash-NonRetryable-Error": "true"}, "bad data")
    )
    receiver.answer("plain489", Answer(489), Answer(200))
    sdk = client(server)
    bad = sdk.message.publish(url=receiver.url("bad"), body="x", retries=5)
    sdk.message.publish(url=receiver.url("plain489"), body="x", retries=5)

    assert server.wait_idle()
    assert len(receiver.to("bad")) == 1
    assert isinstance(bad, qstash.message.PublishResponse)

    # Without the header, 489 is an ordinary failure and is retried.
    assert len(receiver.to("plain489")) == 2
    entries = sdk.dlq.list(filter={"response_status": 489}).messages
    assert [e.message_id for e in entries] == [bad.message_id]

    states = [e.state for e in sdk.log.list(filter={"message_id": bad.message_id}).logs]
    assert states == [
        LogState.FAILED,
        LogState.ERROR,
        LogState.ACTIVE,
        LogState.CREATED,
    ]


def test_callback_after_each_attempt(server: DevServer, receiver: Receiver) -> None:
    receiver.answer("cb-target", Answer(500, body="boom"), Answer(201, body="made"))
    res = client(server).message.publish(
        url=receiver.url("cb-target"),
        body="src",
        callback=receiver.url("cb"),
        callback_headers={"Upstash-Callback-Forward-X-Cb": "1"},
    )
    assert isinstance(res, qstash.message.PublishResponse)

    calls = receiver.wait_count("cb", 2)
    reports = sorted((json.loads(c.body) for c in calls), key=lambda r: r["retried"])
    assert [r["status"] for r in reports] == [500, 201]
    assert [base64.b64decode(r["body"]) for r in reports] == [b"boom", b"made"]
    assert all(r["sourceMessageId"] == res.message_id for r in reports)
    assert "dlqId" not in reports[1]
    assert all(
        c.verified and c.sdk_verified and c.headers["x-cb"] == "1" for c in calls
    )


def test_attempt_timeout_counts_as_failure(
    server: DevServer, receiver: Receiver
) -> None:
    release = threading.Event()
    receiver.answer("slow", Answer(hold=release, hold_for=5.0), Answer())

    try:
        client(server).message.publish(
            url=receiver.url("slow"), body="s", timeout="1s", retries=1
        )
        assert receiver.wait_for(lambda: len(receiver.to("slow")) >= 1, timeout=8)
    finally:
        release.set()

    assert server.wait_idle()
    events = client(server).log.list(filter={"state": LogState.ERROR}).logs
    assert events and "Timeout" in (events[0].error or "")


def test_deduplication_answers_202(server: DevServer, receiver: Receiver) -> None:
    sdk = client(server)
    first = sdk.message.publish(
        url=receiver.url("dedup"), body="1", deduplication_id="order-1"
    )
    again = sdk.message.publish(
        url=receiver.url("dedup"), body="2", deduplication_id="order-1"
    )
    content = [
        sdk.message.publish(
            url=receiver.url("dedup"), body="same", content_based_deduplication=True
        )
        for _ in range(2)
    ]
    assert isinstance(first, qstash.message.PublishResponse)
    assert isinstance(again, qstash.message.PublishResponse)
    assert again.message_id == first.message_id and again.deduplicated
    assert [c.deduplicated for c in content] == [False, True]  # type: ignore[union-attr]

    assert server.wait_idle()
    assert sorted(d.body for d in receiver.to("dedup")) == [b"1", b"same"]


def test_fifo_queue_waits_for_retries_and_resumes(
    server: DevServer, receiver: Receiver
) -> None:
    sdk = client(server)
    sdk.queue.upsert("orders", parallelism=1, paused=True)
    receiver.answer("q", Answer(500), Answer(200))

    for n in range(5):
        sdk.message.enqueue(queue="orders", url=receiver.url("q"), body=str(n))

    assert sdk.queue.get("orders").lag == 5
    assert server.wait_idle(timeout=5.0)
    assert receiver.to("q") == []

    sdk.queue.resume("orders")
    got = receiver.wait_count("q", 6)
    assert [d.body for d in got] == [b"0", b"0", b"1", b"2", b"3", b"4"]
    assert server.wait_idle()
    assert sdk.queue.get("orders").lag == 0


def test_queue_parallelism_limits_in_flight(
    server: DevServer, receiver: Receiver
) -> None:
    sdk = client(server)
    sdk.queue.upsert("wide", parallelism=2)
    release = threading.Event()
    receiver.answer("wide", *[Answer(hold=release, hold_for=5.0)] * 4)
    started: list[float] = []

    for n in range(4):
        sdk.message.enqueue_json(queue="wide", url=receiver.url("wide"), body=n)

    # Two are held at the receiver; the other two must wait in the queue.
    assert wait_until(lambda: sdk.queue.get("wide").lag == 4)
    assert wait_until(
        lambda: server.engine.global_parallelism()["parallelismCount"] == 2
    )
    started.append(time.time())
    release.set()
    assert len(receiver.wait_count("wide", 4)) == 4
    assert server.wait_idle()


def test_flow_control_parallelism_and_rate(
    server: DevServer, receiver: Receiver
) -> None:
    sdk = client(server)
    release = threading.Event()
    receiver.answer("fc", *[Answer(hold=release, hold_for=5.0)] * 3)

    for n in range(3):
        sdk.message.publish(
            url=receiver.url("fc"),
            body=str(n),
            flow_control={"key": "tenant-a", "parallelism": 1, "rate": 10, "period": 5},
        )

    assert wait_until(lambda: sdk.flow_control.get("tenant-a").wait_list_size == 2)
    info = sdk.flow_control.get("tenant-a")
    assert info.parallelism_max == 1 and info.parallelism_count == 1
    assert info.rate_max == 10 and info.rate_period == 5
    release.set()
    assert len(receiver.wait_count("fc", 3)) == 3
    assert server.wait_idle()


def test_flow_control_rate_holds_excess_until_the_period_ends(
    server: DevServer, receiver: Receiver
) -> None:
    sdk = client(server)
    start = time.time()

    for n in range(3):
        sdk.message.publish(
            url=receiver.url("rate"),
            body=str(n),
            flow_control={"key": "r", "rate": 2, "period": 1},
        )

    got = receiver.wait_count("rate", 3)
    assert len(got) == 3
    assert got[2].received - start >= 0.9


def test_url_group_fan_out(server: DevServer, receiver: Receiver) -> None:
    sdk = client(server)
    sdk.url_group.upsert_endpoints(
        url_group="team",
        endpoints=[
            {"url": receiver.url("ep1"), "name": "one"},
            {"url": receiver.url("ep2")},
        ],
    )
    res = sdk.message.publish(url_group="team", body="hello")
    assert isinstance(res, list)
    assert sorted(r.url for r in res) == [receiver.url("ep1"), receiver.url("ep2")]

    (one,) = receiver.wait_count("ep1", 1)
    (two,) = receiver.wait_count("ep2", 1)
    assert one.verified and two.verified and one.sdk_verified and two.sdk_verified
    assert one.headers["upstash-topic-name"] == "team"
    assert one.message_id != two.message_id

    group = sdk.url_group.get("team")
    assert {e.url for e in group.endpoints} == {
        receiver.url("ep1"),
        receiver.url("ep2"),
    }
    assert sdk.message.get(res[0].message_id).url_group == "team"


def test_schedule_trigger_delivers_with_schedule_id(
    server: DevServer, receiver: Receiver
) -> None:
    sdk = client(server)
    schedule_id = sdk.schedule.create_json(
        destination=receiver.url("cron"),
        cron="CRON_TZ=Europe/Paris */5 * * * *",
        body={"report": True},
        schedule_id="nightly-report",
    )
    assert schedule_id == "nightly-report"
    schedule = sdk.schedule.get(schedule_id)
    assert schedule.next_schedule_time is not None
    assert schedule.next_schedule_time > time.time() * 1000

    server.trigger_schedule(schedule_id)
    (got,) = receiver.wait_count("cron", 1)
    assert got.headers["upstash-schedule-id"] == "nightly-report"
    assert got.verified and got.sdk_verified

    assert server.wait_idle()
    states = sdk.schedule.get(schedule_id).last_schedule_states or {}
    assert list(states.values()) == [qstash.schedule.ScheduleState.SUCCESS]

    # A paused schedule skips its triggers.
    sdk.schedule.pause(schedule_id)
    server.trigger_schedule(schedule_id)
    assert server.wait_idle()
    assert len(receiver.to("cron")) == 1


def test_cancel_pending_message(server: DevServer, receiver: Receiver) -> None:
    sdk = client(server)
    res = sdk.message.publish(url=receiver.url("never"), body="x", delay="1h")
    assert isinstance(res, qstash.message.PublishResponse)

    sdk.message.cancel(res.message_id)
    states = [e.state for e in sdk.log.list(filter={"message_id": res.message_id}).logs]
    assert states == [LogState.CANCELED, LogState.CANCEL_REQUESTED, LogState.CREATED]
    assert server.wait_idle(timeout=5.0)

    with pytest.raises(qstash.errors.QStashError, match="404"):
        sdk.message.cancel(res.message_id)


def test_accounts_are_isolated(receiver: Receiver) -> None:
    other_token = list(USERS)[1]
    extra = {"tenant-token": ("sig_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "sig_b" * 7)}

    with DevServer(speed=1000, extra_users=extra) as server:
        mine, theirs = client(server), client(server, other_token)
        extra_client = client(server, "tenant-token")
        mine.queue.upsert("private")
        res = mine.message.publish(url=receiver.url("iso"), body="x", delay="1h")
        assert isinstance(res, qstash.message.PublishResponse)

        assert theirs.queue.list() == []

        with pytest.raises(qstash.errors.QStashError, match="404"):
            theirs.message.get(res.message_id)

        assert theirs.message.cancel_all() == 0
        assert extra_client.signing_key.get().current == extra["tenant-token"][0]
        assert mine.signing_key.get().current == USERS[DEFAULT_TOKEN][0]
        assert theirs.signing_key.get().current == USERS[other_token][0]

        # The other account's delivery is signed with its own key.
        other_receiver = Receiver(keys=USERS[other_token]).start()

        try:
            theirs.message.publish(url=other_receiver.url("theirs"), body="y")
            (got,) = other_receiver.wait_count("theirs", 1)
            assert got.verified and got.sdk_verified
        finally:
            other_receiver.stop()


def test_rotated_keys_sign_new_deliveries(server: DevServer) -> None:
    sdk = client(server)
    before = sdk.signing_key.get()
    after = sdk.signing_key.rotate()
    assert after.current == before.next
    assert after.next != before.next and after.next.startswith("sig_")
    assert server.current_signing_key == after.current

    receiver = Receiver(keys=(after.current, after.next)).start()

    try:
        sdk.message.publish(url=receiver.url("rotated"), body="r")
        (got,) = receiver.wait_count("rotated", 1)
        assert got.verified and got.sdk_verified
    finally:
        receiver.stop()


def test_async_client_publishes_and_reads(
    server: DevServer, receiver: Receiver
) -> None:
    import asyncio

    async def scenario() -> tuple[str, int]:
        sdk = qstash.AsyncQStash(server.token, base_url=server.url, retry=False)
        res = await sdk.message.publish_json(url=receiver.url("async"), body={"a": 1})
        assert isinstance(res, qstash.message.PublishResponse)
        await sdk.queue.upsert("aq", parallelism=2)
        queue = await sdk.queue.get("aq")
        return res.message_id, queue.parallelism

    message_id, parallelism = asyncio.run(scenario())
    (got,) = receiver.wait_count("async", 1)
    assert got.message_id == message_id and got.sdk_verified
    assert parallelism == 2
