from __future__ import annotations

import json
import typing as t

import pytest
from flask import Flask
from marshmallow import fields

from flask_qstash import QStash


@pytest.fixture
def jobs(qstash: QStash) -> None:
    @qstash.job(
        "email",
        schema={"to": fields.Email(required=True), "subject": fields.String()},
        retries=5,
    )
    def send_email(payload: t.Any) -> None:
        pass

    @qstash.job("report", queue="reports", cron=["0 4 * * *", "0 16 * * *"])
    def build_report(payload: t.Any) -> None:
        pass


def test_list_jobs_table(app: Flask, jobs: None) -> None:
    rv = app.test_cli_runner().invoke(args=["qstash", "list-jobs"])

    assert rv.exit_code == 0, rv.output
    header, email, report = rv.output.splitlines()
    assert header.split() == [
        "NAME",
        "ROUTE",
        "SCHEMA",
        "RETRIES",
        "QUEUE",
        "SCHEDULES",
    ]
    assert email.split() == [
        "email",
        "/qstash/<tenant>/email",
        "subject,",
        "to",
        "5",
        "-",
        "-",
    ]
    assert report.split("  ")[0] == "report"
    assert "/qstash/<tenant>/report" in report
    assert "default" in report
    assert "reports" in report
    assert "0 4 * * *; 0 16 * * *" in report
    assert header.index("ROUTE") == email.index("/qstash") == report.index("/qstash")


def test_list_jobs_json(app: Flask, jobs: None) -> None:
    rv = app.test_cli_runner().invoke(args=["qstash", "list-jobs", "--json"])

    assert rv.exit_code == 0, rv.output
    data = json.loads(rv.output)
    assert [row["name"] for row in data] == ["email", "report"]
    email, report = data
    assert email["route"] == "/qstash/<tenant>/email"
    assert email["schema"] == ["subject", "to"]
    assert email["retries"] == 5
    assert email["function"].endswith("send_email")
    assert report["queue"] == "reports"
    assert report["schedules"] == ["0 4 * * *", "0 16 * * *"]
    assert report["schema"] is None


def test_list_jobs_without_jobs(app: Flask) -> None:
    rv = app.test_cli_runner().invoke(args=["qstash", "list-jobs"])

    assert rv.exit_code == 0
    assert rv.output == "No jobs are registered.\n"


def test_list_jobs_json_without_jobs(app: Flask) -> None:
    rv = app.test_cli_runner().invoke(args=["qstash", "list-jobs", "--json"])

    assert json.loads(rv.output) == []
