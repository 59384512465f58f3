"""Every endpoint SDK 3.4.0 calls, and the 4xx answers to bad input."""

from __future__ import annotations

import asyncio
import typing as t

import httpx
import pytest
import qstash
from devserver_helpers import Answer
from devserver_helpers import client
from devserver_helpers import Receiver
from qstash.errors import QStashError
from qstash.log import LogState

from flask_qstash.devserver import DEFAULT_CURRENT_SIGNING_KEY
from flask_qstash.devserver import DEFAULT_NEXT_SIGNING_KEY
from flask_qstash.devserver import DevServer


@pytest.fixture
def receiver() -> t.Iterator[Receiver]:
    rv = Receiver().start()
    yield rv
    rv.stop()


@pytest.fixture
def server() -> t.Iterator[DevServer]:
    with DevServer(speed=1000, max_body_size=1000) as rv:
        yield rv


def test_keys_are_the_upstash_dev_pair(server: DevServer) -> None:
    keys = client(server).signing_key.get()
    assert (keys.current, keys.next) == (
        DEFAULT_CURRENT_SIGNING_KEY,
        DEFAULT_NEXT_SIGNING_KEY,
    )


def test_batch_and_batch_json(server: DevServer, receiver: Receiver) -> None:
    sdk = client(server)
    sdk.url_group.upsert_endpoints(
        url_group="g", endpoints=[{"url": receiver.url("g1")}]
    )
    res = sdk.message.batch_json(
        [
            {"url": receiver.url("b1"), "body": {"n": 1}, "retries": 0},
            {"url_group": "g", "body": {"n": 2}},
            {"queue": "bq", "url": receiver.url("b3"), "body": {"n": 3}},
        ]
    )
    assert isinstance(res[0], qstash.message.BatchResponse)
    assert isinstance(res[1], list) and res[1][0].url == receiver.url("g1")
    assert isinstance(res[2], qstash.message.BatchResponse)

    plain = sdk.message.batch([{"url": receiver.url("b4"), "body": "raw"}])
    assert isinstance(plain[0], qstash.message.BatchResponse)
    assert server.wait_idle()
    assert [len(receiver.to(p)) for p in ("b1", "g1", "b3", "b4")] == [1, 1, 1, 1]
    assert sdk.queue.get("bq").name == "bq"
    assert receiver.to("b4")[0].body == b"raw"


def test_batch_with_a_bad_item_accepts_nothing(server: DevServer) -> None:
    sdk = client(server)

    with pytest.raises(QStashError, match="400"):
        sdk.message.batch(
            [
                {"url": "http://127.0.0.1:9/ok", "body": "a"},
                {"url": "http://127.0.0.1:9/ok", "body": "b", "retry_delay": "x()"},
            ]
        )

    assert sdk.log.list().logs == []


def test_message_cancel_many_and_all(server: DevServer, receiver: Receiver) -> None:
    sdk = client(server)
    ids = [
        t.cast(
            qstash.message.PublishResponse,
            sdk.message.publish(url=receiver.url("c"), body=str(n), delay="1h"),
        ).message_id
        for n in range(4)
    ]
    assert sdk.message.cancel_many(ids[:2]) == 2
    assert sdk.message.cancel_many(ids[:2]) == 0
    assert sdk.message.cancel_all() == 2
    assert sdk.message.cancel_all() == 0


def test_schedules_crud(server: DevServer, receiver: Receiver) -> None:
    sdk = client(server)
    first = sdk.schedule.create(
        destination=receiver.url("s"),
        cron="*/10 * * * *",
        body="b",
        retries=2,
        delay="30s",
        callback=receiver.url("scb"),
        headers={"X-H": "1"},
        label="lbl",
        flow_control={"key": "fk", "rate": 3},
    )
    schedule = sdk.schedule.get(first)
    assert schedule.destination == receiver.url("s")
    assert schedule.cron == "*/10 * * * *"
    assert schedule.retries == 2
    assert schedule.delay == 30
    assert schedule.callback == receiver.url("scb")
    assert schedule.headers == {"X-H": ["1"]}
    assert schedule.body == "b"
    assert schedule.label == "lbl"
    assert schedule.flow_control is not None
    assert schedule.flow_control.rate == 3 and schedule.flow_control.period == 1
    assert not schedule.paused

    # The same Upstash-Schedule-Id overwrites.
    again = sdk.schedule.create(
        destination=receiver.url("s2"), cron="1 1 1 1 1", schedule_id=first
    )
    assert again == first
    assert sdk.schedule.get(first).destination == receiver.url("s2")
    assert [s.schedule_id for s in sdk.schedule.list()] == [first]

    sdk.schedule.pause(first)
    sdk.schedule.pause(first)
    assert sdk.schedule.get(first).paused
    sdk.schedule.resume(first)
    assert not sdk.schedule.get(first).paused

    sdk.schedule.delete(first)
    assert sdk.schedule.list() == []

    with pytest.raises(QStashError, match="404"):
        sdk.schedule.get(first)


def test_queues_crud(server: DevServer) -> None:
    sdk = client(server)
    sdk.queue.upsert("q1", parallelism=3)
    queue = sdk.queue.get("q1")
    assert (queue.name, queue.parallelism, queue.lag, queue.paused) == (
        "q1",
        3,
        0,
        False,
    )
    assert queue.created_at <= queue.updated_at

    sdk.queue.upsert("q1", parallelism=3, paused=True)
    assert sdk.queue.get("q1").paused
    sdk.queue.upsert("q1", parallelism=3)
    assert not sdk.queue.get("q1").paused

    sdk.queue.pause("q1")
    assert sdk.queue.get("q1").paused
    sdk.queue.resume("q1")
    assert [q.name for q in sdk.queue.list()] == ["q1"]

    sdk.queue.delete("q1")
    assert sdk.queue.list() == []

    with pytest.raises(QStashError, match="404"):
        sdk.queue.get("q1")


def test_url_groups_crud(server: DevServer) -> None:
    sdk = client(server)
    sdk.url_group.upsert_endpoints(
        url_group="grp",
        endpoints=[
            {"url": "http://127.0.0.1:9/a", "name": "a"},
            {"url": "http://127.0.0.1:9/b"},
        ],
    )
    sdk.url_group.upsert_endpoints(
        url_group="grp", endpoints=[{"url": "http://127.0.0.1:9/a", "name": "a2"}]
    )
    group = sdk.url_group.get("grp")
    assert group.name == "grp" and group.created_at <= group.updated_at
    assert sorted((e.url, e.name) for e in group.endpoints) == [
        ("http://127.0.0.1:9/a", "a2"),
        ("http://127.0.0.1:9/b", None),
    ]
    assert [g.name for g in sdk.url_group.list()] == ["grp"]

    sdk.url_group.remove_endpoints(url_group="grp", endpoints=[{"name": "a2"}])
    assert [e.url for e in sdk.url_group.get("grp").endpoints] == [
        "http://127.0.0.1:9/b"
    ]

    # Removing the last endpoint deletes the group; deleting twice is fine.
    sdk.url_group.remove_endpoints(
        url_group="grp", endpoints=[{"url": "http://127.0.0.1:9/b"}]
    )
    assert sdk.url_group.list() == []
    sdk.url_group.delete("grp")

    with pytest.raises(QStashError, match="404"):
        sdk.url_group.get("grp")


def test_dlq_list_filters_cursor_delete_and_retry(
    server: DevServer, receiver: Receiver
) -> None:
    sdk = client(server)
    receiver.answer("d", *[Answer(500)] * 3)

    for n in range(3):
        sdk.message.publish(
            url=receiver.url("d"), body=str(n), retries=0, label=f"l{n}"
        )

    assert server.wait_idle()
    page = sdk.dlq.list(count=2)
    assert len(page.messages) == 2 and page.cursor is not None
    rest = sdk.dlq.list(cursor=page.cursor, count=2)
    assert len(rest.messages) == 1 and rest.cursor is None
    assert [m.label for m in sdk.dlq.list(filter={"label": "l1"}).messages] == ["l1"]
    assert sdk.dlq.list(filter={"url": "http://nowhere/"}).messages == []

    ids = [m.dlq_id for m in page.messages + rest.messages]
    sdk.dlq.delete(ids[0])

    with pytest.raises(QStashError, match="404"):
        sdk.dlq.delete(ids[0])

    with pytest.raises(QStashError, match="404"):
        sdk.dlq.get(ids[0])

    # Retry republishes the entry as a new message, then removes it.
    retried = httpx.post(
        f"{server.url}/v2/dlq/retry/{ids[1]}",
        headers={"Authorization": f"Bearer {server.token}"},
    )
    assert retried.status_code == 201
    new_id = retried.json()["messageId"]
    assert server.wait_idle()
    assert receiver.to("d")[-1].message_id == new_id
    assert receiver.to("d")[-1].sdk_verified

    assert sdk.dlq.delete_many([ids[2], "nope"]) == 1
    assert sdk.dlq.list().messages == []


def test_events_filters_and_pagination(server: DevServer, receiver: Receiver) -> None:
    sdk = client(server)
    res = t.cast(
        qstash.message.PublishResponse,
        sdk.message.publish(
            url=receiver.url("ev"), body="e", label="lab", retry_delay="1000"
        ),
    )
    assert server.wait_idle()

    logs = sdk.log.list(filter={"message_id": res.message_id}).logs
    assert [e.state for e in logs] == [
        LogState.DELIVERED,
        LogState.ACTIVE,
        LogState.CREATED,
    ]
    assert all(e.label == "lab" for e in logs)
    assert logs[0].retry_delay_expression == "1000"
    assert logs[0].url == receiver.url("ev")

    assert len(sdk.log.list(filter={"state": LogState.DELIVERED}).logs) == 1
    assert len(sdk.log.list(filter={"state": LogState.IN_PROGRESS}).logs) == 1
    assert len(sdk.log.list(filter={"message_ids": [res.message_id, "x"]}).logs) == 3
    page = sdk.log.list(count=2)
    assert len(page.logs) == 2 and page.cursor
    assert len(sdk.log.list(cursor=page.cursor).logs) == 1
    assert sdk.log.list(filter={"label": "other"}).logs == []

    legacy = httpx.get(
        f"{server.url}/v2/logs", headers={"Authorization": f"Bearer {server.token}"}
    )
    assert len(legacy.json()["logs"]) == 3


def test_flow_control_endpoints(server: DevServer) -> None:
    sdk = client(server)

    with pytest.raises(QStashError, match="404"):
        sdk.flow_control.get("fk")

    sdk.message.publish(
        url="http://127.0.0.1:9/x",
        body="x",
        delay="1h",
        flow_control={"key": "fk", "parallelism": 2, "rate": 5, "period": "1m"},
    )
    info = sdk.flow_control.get("fk")
    assert (info.parallelism_max, info.rate_max, info.rate_period) == (2, 5, 60)

    sdk.flow_control.pin("fk", {"parallelism": 3, "rate": 20, "period": 120})
    info = sdk.flow_control.get("fk")
    assert (info.parallelism_max, info.rate_max, info.rate_period) == (3, 20, 120)
    assert info.is_pinned_parallelism and info.is_pinned_rate

    sdk.flow_control.unpin("fk", {"parallelism": True, "rate": False})
    info = sdk.flow_control.get("fk")
    assert not info.is_pinned_parallelism and info.is_pinned_rate

    sdk.flow_control.pause("fk")
    assert sdk.flow_control.get("fk").is_paused
    sdk.flow_control.resume("fk")
    sdk.flow_control.reset_rate("fk")
    info = sdk.flow_control.get("fk")
    assert info.rate_count == 0 and not info.is_paused

    parallelism = sdk.flow_control.get_global_parallelism()
    assert parallelism.parallelism_max > 0


def test_async_client_covers_the_endpoints(
    server: DevServer, receiver: Receiver
) -> None:
    async def scenario() -> None:
        sdk = qstash.AsyncQStash(server.token, base_url=server.url, retry=False)
        res = await sdk.message.publish(url=receiver.url("a"), body="a", delay="1h")
        assert isinstance(res, qstash.message.PublishResponse)
        assert (await sdk.message.get(res.message_id)).body == "a"
        await sdk.message.cancel(res.message_id)
        assert await sdk.message.cancel_all() == 0

        schedule_id = await sdk.schedule.create(
            destination=receiver.url("s"), cron="1 1 1 1 1"
        )
        await sdk.schedule.pause(schedule_id)
        assert (await sdk.schedule.get(schedule_id)).paused
        assert len(await sdk.schedule.list()) == 1
        await sdk.schedule.delete(schedule_id)

        await sdk.queue.upsert("aq")
        assert [q.name for q in await sdk.queue.list()] == ["aq"]
        await sdk.queue.pause("aq")
        await sdk.queue.delete("aq")

        await sdk.url_group.upsert_endpoints(
            url_group="ag", endpoints=[{"url": receiver.url("ag")}]
        )
        assert (await sdk.url_group.get("ag")).name == "ag"
        await sdk.url_group.delete("ag")

        assert (await sdk.dlq.list()).messages == []
        assert len((await sdk.log.list()).logs) == 3
        keys = await sdk.signing_key.get()
        assert keys.current == DEFAULT_CURRENT_SIGNING_KEY
        assert (await sdk.flow_control.get_global_parallelism()).parallelism_max > 0

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("headers", "fragment"),
    [
        pytest.param({"Upstash-Delay": "soon"}, "Upstash-Delay", id="delay"),
        pytest.param({"Upstash-Retries": "-1"}, "Upstash-Retries", id="retries"),
        pytest.param(
            {"Upstash-Not-Before": "x"}, "Upstash-Not-Before", id="not-before"
        ),
        pytest.param({"Upstash-Method": "BREW"}, "Upstash-Method", id="method"),
        pytest.param({"Upstash-Retry-Delay": "os.system(1)"}, "Retry-Delay", id="expr"),
        pytest.param({"Upstash-Timeout": "1y"}, "Upstash-Timeout", id="timeout"),
        pytest.param({"Upstash-Callback": "ftp://x"}, "Callback", id="callback"),
        pytest.param(
            {"Upstash-Flow-Control-Key": "k", "Upstash-Flow-Control-Value": "speed=3"},
            "Flow-Control",
            id="flow-value",
        ),
        pytest.param(
            {
                "Upstash-Flow-Control-Key": "k",
                "Upstash-Flow-Control-Value": "period=8d",
            },
            "period",
            id="flow-period",
        ),
    ],
)
def test_malformed_headers_get_400(
    server: DevServer, headers: dict[str, str], fragment: str
) -> None:
    response = httpx.post(
        f"{server.url}/v2/publish/http://127.0.0.1:9/x",
        headers={"Authorization": f"Bearer {server.token}", **headers},
        content=b"x",
    )
    assert response.status_code == 400
    assert fragment in response.json()["error"]


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        pytest.param("GET", "/v2/messages/msg_nope", 404, id="message"),
        pytest.param("DELETE", "/v2/messages/msg_nope", 404, id="cancel"),
        pytest.param("GET", "/v2/schedules/nope", 404, id="schedule"),
        pytest.param("DELETE", "/v2/schedules/nope", 404, id="schedule-delete"),
        pytest.param("PATCH", "/v2/schedules/nope/pause", 404, id="schedule-pause"),
        pytest.param("GET", "/v2/queues/nope", 404, id="queue"),
        pytest.param("POST", "/v2/queues/nope/pause", 404, id="queue-pause"),
        pytest.param("GET", "/v2/topics/nope", 404, id="group"),
        pytest.param("DELETE", "/v2/topics/nope", 200, id="group-delete"),
        pytest.param("GET", "/v2/dlq/1-1", 404, id="dlq"),
        pytest.param("POST", "/v2/dlq/retry/1-1", 404, id="dlq-retry"),
        pytest.param("GET", "/v2/flowControl/nope", 404, id="flow"),
        pytest.param("POST", "/v2/flowControl/nope/pause", 404, id="flow-pause"),
        pytest.param("POST", "/v2/publish/unknown-group", 404, id="publish-group"),
        pytest.param("POST", "/v2/publish/http://", 400, id="publish-bad-url"),
        pytest.param("POST", "/v2/publish/", 400, id="publish-nothing"),
        pytest.param(
            "POST", "/v2/enqueue/bad%20name/http://x.io/", 400, id="queue-name"
        ),
        pytest.param("POST", "/v2/schedules/http://x.io/", 400, id="no-cron"),
        pytest.param("GET", "/v2/events?cursor=abc", 400, id="bad-cursor"),
        pytest.param("GET", "/v2/dlq?fromDate=yesterday", 400, id="bad-date"),
        pytest.param("GET", "/v2/nothing", 404, id="no-route"),
        pytest.param("PUT", "/v2/queues", 404, id="wrong-method"),
    ],
)
def test_bad_requests_get_4xx(
    server: DevServer, method: str, path: str, status: int
) -> None:
    response = httpx.request(
        method, server.url + path, headers={"Authorization": f"Bearer {server.token}"}
    )
    assert response.status_code == status

    if status >= 400:
        assert response.json()["error"]


@pytest.mark.parametrize(
    ("cron", "status"),
    [
        pytest.param("61 * * * *", 400, id="range"),
        pytest.param("* * *", 400, id="fields"),
        pytest.param("CRON_TZ=Nowhere/City * * * * *", 400, id="zone"),
        pytest.param("CRON_TZ=Asia/Tokyo 0 9 * * MON-FRI", 201, id="good"),
    ],
)
def test_cron_validation(server: DevServer, cron: str, status: int) -> None:
    response = httpx.post(
        f"{server.url}/v2/schedules/http://127.0.0.1:9/x",
        headers={"Authorization": f"Bearer {server.token}", "Upstash-Cron": cron},
    )
    assert response.status_code == status


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("has space", id="space"),
        pytest.param("slash/inside", id="slash"),
        pytest.param("x" * 201, id="long"),
        pytest.param("", id="empty"),
    ],
)
def test_invalid_queue_names(server: DevServer, name: str) -> None:
    with pytest.raises(QStashError, match="400"):
        client(server).queue.upsert(name)


def test_queue_parallelism_limits(server: DevServer) -> None:
    with pytest.raises(QStashError, match="400"):
        client(server).queue.upsert("q", parallelism=0)

    with pytest.raises(QStashError, match="412"):
        client(server).queue.upsert("q", parallelism=1000)


@pytest.mark.parametrize(
    "authorization",
    [
        pytest.param(None, id="missing"),
        pytest.param("Bearer wrong", id="wrong"),
        pytest.param("Basic abc", id="scheme"),
    ],
)
def test_bad_token_gets_401(server: DevServer, authorization: str | None) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    response = httpx.get(f"{server.url}/v2/queues", headers=headers)
    assert response.status_code == 401
    assert "token" in response.json()["error"]

    with pytest.raises(QStashError, match="401"):
        qstash.QStash("wrong", base_url=server.url, retry=False).queue.list()


def test_query_token_is_accepted(server: DevServer) -> None:
    response = httpx.get(f"{server.url}/v2/queues?qstash_token={server.token}")
    assert response.status_code == 200


def test_oversized_bodies_get_413(server: DevServer) -> None:
    sdk = client(server)

    with pytest.raises(QStashError, match="413"):
        sdk.message.publish(url="http://127.0.0.1:9/x", body="x" * 1001)

    with pytest.raises(QStashError, match="413"):
        sdk.message.batch([{"url": "http://127.0.0.1:9/x", "body": "y" * 1001}])

    # Exactly the cap is accepted.
    sdk.message.publish(url="http://127.0.0.1:9/x", body="x" * 1000, delay="1h")


def test_destination_query_and_escapes_are_kept(
    server: DevServer, receiver: Receiver
) -> None:
    sdk = client(server)
    url = receiver.url("a%20b/c?q=1&r=two")
    res = t.cast(qstash.message.PublishResponse, sdk.message.publish(url=url, body="x"))
    (got,) = receiver.wait_count("a b/c", 1)
    assert got.url == url and got.verified and got.sdk_verified
    assert sdk.message.get(res.message_id).url == url


def test_redacted_fields_are_hidden_in_api_output(
    server: DevServer, receiver: Receiver
) -> None:
    sdk = client(server)
    res = t.cast(
        qstash.message.PublishResponse,
        sdk.message.publish(
            url=receiver.url("secret"),
            body="card=4242",
            headers={"Authorization": "Bearer s3cret"},
            redact={"body": True, "header": ["Authorization"]},
            delay="1h",
        ),
    )
    msg = sdk.message.get(res.message_id)
    assert msg.body is not None and msg.body.startswith("REDACTED:")
    assert msg.headers is not None
    assert msg.headers["Authorization"][0].startswith("REDACTED:")
