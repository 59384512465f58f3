from __future__ import annotations

import datetime
import json
import typing as t

import pytest
from conftest import Deliverer
from conftest import FakeClient
from conftest import make_app
from conftest import TOKEN
from flask import Flask
from marshmallow import fields
from marshmallow import Schema
from marshmallow import ValidationError

from flask_qstash import EnqueueResult
from flask_qstash import Job
from flask_qstash import JobContext
from flask_qstash import QStash
from flask_qstash import UnknownJobError
from flask_qstash import UnknownTenantError


class EmailSchema(Schema):
    to = fields.Email(required=True)


@pytest.fixture
def email(qstash: QStash) -> Job:
    @qstash.job("email", schema=EmailSchema, retries=4, timeout="2m")
    def send_email(payload: dict[str, t.Any]) -> str:
        return f"sent to {payload['to']}"

    return send_email


def test_calling_a_job_runs_the_function(app: Flask, email: Job) -> None:
    assert email({"to": "a@example.com"}) == "sent to a@example.com"
    assert vars(email)["__name__"] == "send_email"


def test_job_url_is_built_from_config(app: Flask, email: Job) -> None:
    assert email.url() == "https://app.example.com/qstash/default/email"
    assert email.url("globex") == "https://app.example.com/qstash/globex/email"


def test_job_url_of_unknown_tenant_raises(app: Flask, email: Job) -> None:
    with pytest.raises(UnknownTenantError, match="'nobody'"):
        email.url("nobody")


def test_job_url_uses_the_tenant_public_url(
    request: pytest.FixtureRequest, qstash: QStash
) -> None:
    job = qstash.job("ping")(lambda payload: None)
    app = make_app(
        request.module.__name__,
        qstash,
        QSTASH_TENANTS={"acme": {"public_url": "https://acme.example.org/"}},
    )

    with app.app_context():
        assert job.url("acme") == "https://acme.example.org/qstash/acme/ping"


def test_enqueue_publishes_one_message(
    app: Flask, email: Job, fake_client: type[FakeClient]
) -> None:
    rv = email.enqueue({"to": "a@example.com"}, delay="5m", deduplication_id="o-1")

    assert isinstance(rv, EnqueueResult)
    assert rv.message_id.startswith("msg_")
    assert (rv.job, rv.tenant, rv.deduplication_id) == (
        "email",
        "default",
        "default.email.o-1",
    )
    [call] = fake_client.calls
    assert call.method == "publish"
    assert call.token == TOKEN
    kwargs = call.kwargs
    assert kwargs["url"] == "https://app.example.com/qstash/default/email"
    assert kwargs["failure_callback"] == kwargs["url"] + "/failed"
    assert kwargs["delay"] == 300
    assert kwargs["retries"] == 4
    assert kwargs["timeout"] == 120
    assert kwargs["deduplication_id"] == "default.email.o-1"
    assert kwargs["content_type"] == "application/json"
    envelope = json.loads(kwargs["body"])
    assert envelope["payload"] == {"to": "a@example.com"}
    assert (envelope["v"], envelope["job"], envelope["tenant"]) == (
        1,
        "email",
        "default",
    )


def test_same_deduplication_id_keeps_one_message(
    app: Flask, email: Job, fake_client: type[FakeClient]
) -> None:
    first = email.enqueue({"to": "a@example.com"}, deduplication_id="once")
    again = email.enqueue({"to": "a@example.com"}, deduplication_id="once")
    other = email.enqueue({"to": "a@example.com"})

    assert again.message_id == first.message_id
    assert (first.deduplicated, again.deduplicated) == (False, True)
    assert other.message_id != first.message_id


def test_payload_failing_its_schema_publishes_nothing(
    app: Flask, email: Job, fake_client: type[FakeClient]
) -> None:
    with pytest.raises(ValidationError):
        email.enqueue({"to": "not an email"})

    with pytest.raises(ValidationError):
        email.enqueue_many([{"to": "a@example.com"}, {}])

    assert fake_client.calls == []


def test_payload_that_is_not_json_publishes_nothing(
    app: Flask, qstash: QStash, fake_client: type[FakeClient]
) -> None:
    job = qstash.job("raw")(lambda payload: None)

    with pytest.raises(TypeError, match="'raw'"):
        job.enqueue({"x": object()})

    assert fake_client.calls == []


def test_dates_and_decimals_are_sent_as_strings(
    app: Flask, qstash: QStash, fake_client: type[FakeClient]
) -> None:
    job = qstash.job("raw")(lambda payload: None)
    job.enqueue({"at": datetime.date(2024, 5, 1)})

    assert json.loads(fake_client.calls[0].kwargs["body"])["payload"] == {
        "at": "2024-05-01"
    }


def test_enqueue_by_name(
    app: Flask, qstash: QStash, email: Job, fake_client: type[FakeClient]
) -> None:
    rv = qstash.enqueue("email", {"to": "a@example.com"}, tenant="globex")

    assert rv.tenant == "globex"
    assert fake_client.calls[0].kwargs["url"].endswith("/qstash/globex/email")


def test_enqueue_unknown_name_raises(
    app: Flask, qstash: QStash, email: Job, fake_client: type[FakeClient]
) -> None:
    with pytest.raises(UnknownJobError, match="'nope'.*email"):
        qstash.enqueue("nope")

    assert fake_client.calls == []


def test_enqueue_many_makes_one_batch_call(
    app: Flask, email: Job, fake_client: type[FakeClient]
) -> None:
    payloads = [{"to": f"{i}@example.com"} for i in range(3)]
    rv = email.enqueue_many(payloads, tenant="acme", deduplication_id="b")

    assert [r.deduplication_id for r in rv] == [f"acme.email.b-{i}" for i in range(3)]
    assert len({r.message_id for r in rv}) == 3
    [call] = fake_client.calls
    assert call.method == "batch"
    messages = call.kwargs["messages"]
    assert [json.loads(m["body"])["payload"] for m in messages] == payloads
    assert {m["label"] for m in messages} == {"acme.email"}


def test_enqueue_many_of_nothing_sends_nothing(
    app: Flask, email: Job, fake_client: type[FakeClient]
) -> None:
    assert email.enqueue_many([]) == []
    assert fake_client.calls == []


@pytest.mark.parametrize(
    ("options", "match"),
    [
        pytest.param({"deduplication_id": "has space"}, "Deduplication id", id="dedup"),
        pytest.param({"queue": "q", "delay": 5}, "queue", id="queue-and-delay"),
        pytest.param({"queue": "bad/queue"}, "Queue name", id="queue-name"),
        pytest.param({"delay": "soon"}, "'delay'", id="delay"),
        pytest.param(
            {"not_before": datetime.datetime(2030, 1, 1)}, "naive", id="naive"
        ),
    ],
)
def test_bad_enqueue_options_raise_before_publishing(
    app: Flask,
    qstash: QStash,
    fake_client: type[FakeClient],
    options: dict[str, t.Any],
    match: str,
) -> None:
    job = qstash.job("raw")(lambda payload: None)

    with pytest.raises(ValueError, match=match):
        job.enqueue({}, **options)

    assert fake_client.calls == []


def test_schedule_uses_a_deterministic_id(
    app: Flask, email: Job, fake_client: type[FakeClient]
) -> None:
    first = email.schedule("0 4 * * *", {"to": "a@example.com"}, tenant="acme")
    again = email.schedule("0 5 * * *", {"to": "a@example.com"}, tenant="acme")

    assert first == again == "acme.email"
    call = fake_client.calls[0]
    assert call.method == "schedule.create"
    assert call.kwargs["destination"] == "https://app.example.com/qstash/acme/email"
    assert call.kwargs["cron"] == "0 4 * * *"
    assert call.kwargs["label"] == "acme.email"


def test_schedule_accepts_a_time_zone(
    app: Flask, email: Job, fake_client: type[FakeClient]
) -> None:
    cron = "CRON_TZ=Europe/Paris 0 4 * * *"
    rv = email.schedule(cron, {"to": "a@example.com"}, schedule_id="nightly")

    assert rv == "default.nightly"
    assert fake_client.calls[0].kwargs["cron"] == cron


@pytest.mark.parametrize(
    ("cron", "match"),
    [
        pytest.param("0 4 * *", "five fields", id="four-fields"),
        pytest.param("61 4 * * *", "invalid", id="bad-minute"),
        pytest.param("CRON_TZ=Mars/Olympus 0 4 * * *", "time zone", id="bad-zone"),
        pytest.param("CRON_TZ=../etc/passwd 0 4 * * *", "time zone", id="zone-path"),
    ],
)
def test_schedule_rejects_bad_cron(
    app: Flask, email: Job, fake_client: type[FakeClient], cron: str, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        email.schedule(cron, {"to": "a@example.com"})

    assert fake_client.calls == []


def test_job_with_bad_cron_is_refused_at_declaration(qstash: QStash) -> None:
    with pytest.raises(ValueError, match="five fields"):
        qstash.job("nightly", cron="0 4 * *")(lambda payload: None)


def test_sync_schedules_covers_every_tenant(
    app: Flask, qstash: QStash, fake_client: type[FakeClient]
) -> None:
    qstash.job("nightly", cron="0 4 * * *")(lambda payload: None)

    assert qstash.sync_schedules() == [
        "default.nightly",
        "acme.nightly",
        "globex.nightly",
    ]


def test_duplicate_job_name_raises(qstash: QStash, email: Job) -> None:
    with pytest.raises(ValueError, match="'email' is already registered"):
        qstash.job("email")(lambda payload: None)


@pytest.mark.parametrize("name", ["", "a/b", "-x", "a b"])
def test_invalid_job_name_raises(qstash: QStash, name: str) -> None:
    with pytest.raises(ValueError, match="not valid"):
        qstash.job(name)(lambda payload: None)


def test_declaring_a_job_after_the_first_request_raises(
    app: Flask, qstash: QStash
) -> None:
    app.test_client().get("/")

    with pytest.raises(RuntimeError, match="after app"):
        qstash.job("late")(lambda payload: None)

    assert "late" not in qstash.jobs


def test_context_is_passed_only_when_declared(
    qstash: QStash, deliver: Deliverer
) -> None:
    seen: list[tuple[t.Any, ...]] = []

    @qstash.job("one")
    def one(payload: t.Any) -> None:
        seen.append((payload,))

    @qstash.job("two")
    def two(payload: t.Any, ctx: JobContext) -> None:
        seen.append((payload, ctx))

    @qstash.job("kwonly")
    def kwonly(payload: t.Any, *, extra: int = 0) -> None:
        seen.append((payload, extra))

    deliver("one", 1)
    deliver("two", 2, message_id="msg_two", headers={"Upstash-Retried": "3"})
    deliver("kwonly", 3)

    assert seen[0] == (1,)
    assert seen[1][0] == 2
    ctx = seen[1][1]
    assert isinstance(ctx, JobContext)
    assert (ctx.job, ctx.tenant, ctx.message_id, ctx.retried) == (
        "two",
        "acme",
        "msg_two",
        3,
    )
    assert ctx.enqueued_at is not None
    assert seen[2] == (3, 0)


def test_enqueue_inside_a_delivery_keeps_its_tenant(
    qstash: QStash, deliver: Deliverer, fake_client: type[FakeClient]
) -> None:
    @qstash.job("next")
    def next_step(payload: t.Any) -> None:
        pass

    @qstash.job("first")
    def first(payload: t.Any) -> str:
        return next_step.enqueue(payload).tenant

    rv = deliver("first", {"n": 1}, tenant="globex")

    assert rv.json == {"status": "done", "result": "globex"}
    assert fake_client.calls[0].kwargs["url"].endswith("/qstash/globex/next")


def test_outside_a_request_the_default_tenant_is_used(
    request: pytest.FixtureRequest, qstash: QStash, fake_client: type[FakeClient]
) -> None:
    job = qstash.job("ping")(lambda payload: None)
    app = make_app(request.module.__name__, qstash)

    with app.app_context():
        assert job.enqueue().tenant == "default"
