"""Unit tests of the dev server's grammars: durations, retry delays, cron."""

from __future__ import annotations

import datetime as dt

import pytest

from flask_qstash.devserver.cron import CronError
from flask_qstash.devserver.cron import parse_cron
from flask_qstash.devserver.durations import parse_duration
from flask_qstash.devserver.durations import parse_retry_after
from flask_qstash.devserver.expressions import evaluate_source
from flask_qstash.devserver.expressions import ExpressionError


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        pytest.param("10s", 10, id="seconds"),
        pytest.param("1m", 60, id="minutes"),
        pytest.param("2h", 7200, id="hours"),
        pytest.param("7d", 604800, id="days"),
        pytest.param("1h30m3s", 5403, id="groups"),
        pytest.param("1d10h30m", 124200, id="days-groups"),
        pytest.param("42", 42, id="bare"),
        pytest.param(" 5S ", 5, id="case-space"),
    ],
)
def test_parse_duration(value: str, seconds: int) -> None:
    assert parse_duration(value) == seconds


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("", id="empty"),
        pytest.param("10x", id="unit"),
        pytest.param("s", id="no-number"),
        pytest.param("-5s", id="negative"),
        pytest.param("1.5s", id="fraction"),
    ],
)
def test_parse_duration_rejects(value: str) -> None:
    with pytest.raises(ValueError, match="Invalid duration"):
        parse_duration(value)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        pytest.param("30", 30.0, id="integer"),
        pytest.param("0", 0.0, id="zero"),
        pytest.param("6m5s", 365.0, id="go"),
        pytest.param("1500ms", 1.5, id="millis"),
        pytest.param("Thu, 01 Jan 2026 00:01:00 GMT", 60.0, id="http-date"),
        pytest.param("90000", None, id="over-a-day"),
        pytest.param("soon", None, id="garbage"),
    ],
)
def test_parse_retry_after(value: str, seconds: float | None) -> None:
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC).timestamp()
    assert parse_retry_after(value, now=now) == seconds


@pytest.mark.parametrize(
    ("source", "retried", "millis"),
    [
        pytest.param("1000", 0, 1000.0, id="constant"),
        pytest.param("1000 * (1 + retried)", 2, 3000.0, id="linear"),
        pytest.param("pow(2, retried) * 1000", 3, 8000.0, id="pow"),
        pytest.param("max(10, min(5, retried))", 1, 10.0, id="min-max"),
        pytest.param("floor(sqrt(retried)) + ceil(0.2) + abs(-1)", 4, 4.0, id="fns"),
        pytest.param("round(exp(0)) + 7 % 4 - -1", 0, 5.0, id="ops"),
        pytest.param("2 ** retried", 4, 16.0, id="power-op"),
    ],
)
def test_retry_delay_expression(source: str, retried: int, millis: float) -> None:
    assert evaluate_source(source, retried=retried) == millis


@pytest.mark.parametrize(
    "source",
    [
        pytest.param("__import__('os').system('true')", id="import"),
        pytest.param("retried.__class__", id="attribute"),
        pytest.param("[1, 2]", id="list"),
        pytest.param("x + 1", id="unknown-name"),
        pytest.param("open('/etc/passwd')", id="unknown-function"),
        pytest.param("pow(10, 10000)", id="overflow"),
        pytest.param("1 / 0", id="zero-division"),
        pytest.param("lambda: 1", id="lambda"),
        pytest.param("1 +", id="syntax"),
        pytest.param("'a' * 3", id="string"),
        pytest.param("9" * 600, id="too-long"),
        pytest.param("sqrt()", id="no-args"),
    ],
)
def test_retry_delay_expression_rejects(source: str) -> None:
    with pytest.raises(ExpressionError):
        evaluate_source(source, retried=1)


def test_cron_in_utc() -> None:
    cron = parse_cron("*/5 * * * *")
    start = dt.datetime(2026, 3, 1, 10, 2, 30, tzinfo=dt.UTC).timestamp()
    expected = dt.datetime(2026, 3, 1, 10, 5, tzinfo=dt.UTC).timestamp()
    assert cron.next_after(start) == expected


def test_cron_tz_prefix_follows_dst() -> None:
    cron = parse_cron("CRON_TZ=America/New_York 0 4 * * *")

    # 04:00 in New York is 09:00 UTC in winter and 08:00 UTC in summer.
    winter = dt.datetime(2026, 1, 10, tzinfo=dt.UTC).timestamp()
    summer = dt.datetime(2026, 7, 10, tzinfo=dt.UTC).timestamp()
    assert (
        cron.next_after(winter)
        == dt.datetime(2026, 1, 10, 9, tzinfo=dt.UTC).timestamp()
    )
    assert (
        cron.next_after(summer)
        == dt.datetime(2026, 7, 10, 8, tzinfo=dt.UTC).timestamp()
    )


@pytest.mark.parametrize(
    "source",
    [
        pytest.param("* * * *", id="four-fields"),
        pytest.param("0 * * * * *", id="six-fields"),
        pytest.param("61 * * * *", id="minute-range"),
        pytest.param("CRON_TZ=Mars/Olympus 0 * * * *", id="zone"),
        pytest.param("every day", id="words"),
        pytest.param("0 0 31 2 *", id="impossible"),
    ],
)
def test_cron_rejects(source: str) -> None:
    with pytest.raises(CronError):
        parse_cron(source)
