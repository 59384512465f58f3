"""Exceptions raised by Flask-QStash.

The tree, with what each one means to the caller::

    FlaskQStashError
    ├── PublishError          QStash did not accept a job; nothing may have run
    ├── UnknownJobError       no job of that name is registered
    ├── UnknownTenantError    no tenant of that id is configured or loadable
    ├── SignatureError        a delivery failed verification; ``reason`` says why
    └── JobControl            raised by a handler to steer QStash
        ├── NonRetryableError answered with 489, the message goes to the DLQ
        └── RetryLater        answered with 503 and ``Retry-After``

Misuse while setting up (a bad config value, decorating too late) raises the
built-in :class:`ValueError`, :class:`TypeError` or :class:`RuntimeError`
instead, since no caller should catch those.
"""

from __future__ import annotations

import typing as t


class FlaskQStashError(Exception):
    """Base class of every exception Flask-QStash raises on purpose."""


class PublishError(FlaskQStashError):
    """QStash did not accept a publish, schedule or batch request.

    Raised after the bounded retries of :mod:`flask_qstash.publishing` are used
    up, or at once when retrying cannot help (a rejected token, a bad request).
    Because every publish carries a deduplication id, calling ``enqueue`` again
    with the same ``deduplication_id`` is safe: QStash keeps at most one message.

    :param message: What went wrong and what to do about it.
    :param status: The HTTP status QStash answered with, or ``None`` when no
        answer arrived (connection refused, timeout).
    :param retryable: Whether trying again later can succeed.
    """

    def __init__(
        self, message: str, *, status: int | None = None, retryable: bool = False
    ) -> None:
        super().__init__(message)
        self.status = status
        self.retryable = retryable


class UnknownJobError(FlaskQStashError, LookupError):
    """No job of the given name is registered with the extension."""


class UnknownTenantError(FlaskQStashError, LookupError):
    """No tenant of the given id is configured or returned by the tenant loader."""


class SignatureError(FlaskQStashError):
    """A delivery's ``Upstash-Signature`` failed verification.

    :param reason: A short machine-readable word naming the failed check:
        ``missing``, ``oversized``, ``malformed``, ``algorithm``,
        ``wrong-key``, ``expired``, ``not-yet-valid``, ``issuer``,
        ``missing-claim``, ``subject`` or ``body-hash``.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


class JobControl(FlaskQStashError):
    """Base class of the exceptions a handler raises to tell QStash what to do.

    Subclasses carry their behaviour as class attributes, so a receiver of the
    ``job-failed`` signal can read it without knowing each class.
    """

    #: The HTTP status the delivery is answered with.
    status_code: t.ClassVar[int] = 500

    #: Whether QStash will deliver the message again.
    retryable: t.ClassVar[bool] = True


class NonRetryableError(JobControl):
    """Raise from a handler when retrying can never succeed.

    The delivery is answered with status 489 and ``Upstash-NonRetryable-Error:
    true``, so QStash moves the message to the dead-letter queue at once
    instead of retrying it.

    .. code-block:: python

        @qstash.job("charge")
        def charge(payload):
            if payload["amount"] <= 0:
                raise NonRetryableError("Amount must be positive.")
    """

    status_code = 489
    retryable = False


class RetryLater(JobControl):
    """Raise from a handler to be delivered again after ``seconds``.

    The delivery is answered with status 503 and ``Retry-After: <seconds>``,
    which QStash uses as the delay before its next attempt. The attempt still
    counts against the job's retries.

    :param seconds: How long QStash should wait, at least 1. QStash ignores
        values over one day and falls back to its own backoff.
    :param message: Why, for logs and signals.
    """

    status_code = 503
    retryable = True

    def __init__(self, seconds: int = 60, message: str = "") -> None:
        if seconds < 1:
            raise ValueError(
                f"'RetryLater' needs a delay of at least 1 second, got {seconds!r}."
                " Pass the number of seconds QStash should wait."
            )

        super().__init__(message or f"Retry in {seconds} seconds.")
        self.seconds = int(seconds)
