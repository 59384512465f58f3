from __future__ import annotations

import importlib

import pytest

import flask_qstash

EXPORTS = [
    "DeadJob",
    "EnqueueResult",
    "FlaskQStashError",
    "HeaderResolver",
    "Job",
    "JobContext",
    "JobControl",
    "NonRetryableError",
    "PathPrefixResolver",
    "PublishError",
    "QStash",
    "RetryLater",
    "SignatureError",
    "SubdomainResolver",
    "Tenant",
    "TenantMiddleware",
    "UnknownJobError",
    "UnknownTenantError",
    "current_tenant",
]


def test_all_is_pinned() -> None:
    assert flask_qstash.__all__ == EXPORTS


@pytest.mark.parametrize("name", EXPORTS)
def test_each_name_is_importable(name: str) -> None:
    module = importlib.import_module("flask_qstash")

    assert hasattr(module, name)
    assert name in dir(module)


@pytest.mark.parametrize(
    "name",
    [n for n in EXPORTS if n != "current_tenant"],
)
def test_each_class_says_it_lives_in_the_package(name: str) -> None:
    value = getattr(flask_qstash, name)

    assert value.__module__.startswith("flask_qstash.")
    assert value.__doc__


def test_exception_tree() -> None:
    base = flask_qstash.FlaskQStashError

    for name in (
        "PublishError",
        "UnknownJobError",
        "UnknownTenantError",
        "SignatureError",
        "JobControl",
    ):
        assert issubclass(getattr(flask_qstash, name), base)

    assert issubclass(flask_qstash.NonRetryableError, flask_qstash.JobControl)
    assert issubclass(flask_qstash.RetryLater, flask_qstash.JobControl)
    assert flask_qstash.NonRetryableError.retryable is False
    assert flask_qstash.RetryLater.retryable is True
