"""Signals sent by Flask-QStash, for monitoring and metrics.

Every signal is sent with the app as the sender and keyword data only. A
receiver that raises is logged and ignored: it never changes what QStash is
answered, and never stops a publish.

.. code-block:: python

    from flask_qstash import signals

    @signals.job_failed.connect_via(app)
    def report(sender, job, tenant, error, **extra):
        metrics.increment("jobs.failed", tags={"job": job, "tenant": tenant})
"""

from __future__ import annotations

import logging
import typing as t

from blinker import NamedSignal
from blinker import Namespace

logger = logging.getLogger(__name__)

# Signals sent by Flask-QStash itself.
_signals = Namespace()

job_enqueued = _signals.signal("job-enqueued")
"""Sent after QStash accepts a job. Receivers get ``job``, ``tenant``,
``message_id``, ``deduplicated`` and ``options`` (the publish options).
"""

job_scheduled = _signals.signal("job-scheduled")
"""Sent after QStash accepts a cron schedule. Receivers get ``job``,
``tenant``, ``schedule_id`` and ``cron``.
"""

job_received = _signals.signal("job-received")
"""Sent when a verified delivery is about to run. Receivers get ``job``,
``tenant``, ``message_id`` and ``retried``.
"""

job_finished = _signals.signal("job-finished")
"""Sent after a handler returned. Receivers get ``job``, ``tenant``,
``message_id``, ``result`` and ``duration`` in seconds.
"""

job_failed = _signals.signal("job-failed")
"""Sent after a handler raised. Receivers get ``job``, ``tenant``,
``message_id``, ``error`` (the exception), ``retryable`` and ``duration``.
"""

job_skipped = _signals.signal("job-skipped")
"""Sent when a delivery is answered without running the handler because the
message is already done or running elsewhere. Receivers get ``job``,
``tenant``, ``message_id`` and ``reason`` (``"done"`` or ``"busy"``).
"""

job_dead = _signals.signal("job-dead")
"""Sent when QStash gives up on a job and reports it to the failure callback.
Receivers get ``job``, ``tenant``, ``payload``, ``status``, ``response_body``
``message_id`` and ``dlq_id``.
"""

delivery_rejected = _signals.signal("delivery-rejected")
"""Sent when a delivery is refused before any handler runs. Receivers get
``job``, ``tenant``, ``status`` and ``reason``.
"""

signature_rejected = _signals.signal("signature-rejected")
"""Sent when a delivery fails verification. Receivers get ``tenant``, ``job``
and ``reason``, the name of the failed check; never the token.
"""


def send(signal: NamedSignal, sender: t.Any, **data: t.Any) -> None:
    """Send ``signal``, logging instead of raising when a receiver fails.

    :param signal: One of the signals above.
    :param sender: The app.
    :param data: The keyword data receivers get.
    """
    if not signal.receivers:
        return

    for receiver in signal.receivers_for(sender):
        try:
            receiver(sender, **data)
        except Exception:
            logger.exception("A receiver of the %r signal raised", signal.name)
