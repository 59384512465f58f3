"""Cron expressions with QStash's optional ``CRON_TZ=`` prefix.

QStash takes standard five-field cron expressions evaluated in UTC, optionally
prefixed with ``CRON_TZ=<IANA zone>`` (the syntax of Go's robfig/cron), as in
``CRON_TZ=America/New_York 0 4 * * *``. The prefix is read here with
:mod:`zoneinfo`; the fields are matched by :mod:`cronsim`, which also handles
daylight saving transitions in the named zone.
"""

from __future__ import annotations

import datetime as dt
import zoneinfo
from dataclasses import dataclass

from cronsim import CronSim
from cronsim import CronSimError

_UTC = dt.UTC


class CronError(ValueError):
    """A cron expression or its ``CRON_TZ`` zone is invalid."""


@dataclass(frozen=True)
class Cron:
    """A parsed cron expression."""

    #: The expression as given, prefix included.
    source: str

    #: The five fields, without the prefix.
    fields: str

    #: The zone the fields are read in.
    zone: dt.tzinfo

    def next_after(self, moment: float) -> float:
        """Return the first trigger time strictly after ``moment``.

        :param moment: A unix time in seconds.
        """
        start = dt.datetime.fromtimestamp(moment, tz=self.zone)
        return next(CronSim(self.fields, start)).timestamp()


def parse_cron(source: str) -> Cron:
    """Parse a cron expression such as ``CRON_TZ=Europe/Paris */5 * * * *``.

    :param source: The ``Upstash-Cron`` header value.
    :raises CronError: The zone is unknown or the fields are not five valid
        cron fields.
    """
    text = source.strip()
    zone: dt.tzinfo = _UTC

    if text.startswith(("CRON_TZ=", "TZ=")):
        prefix, _, text = text.partition(" ")
        name = prefix.partition("=")[2]

        try:
            zone = zoneinfo.ZoneInfo(name)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise CronError(
                f"Unknown time zone {name!r} in the cron expression."
                " Use an IANA name such as 'CRON_TZ=America/New_York'."
            ) from None

    fields = " ".join(text.split())

    if len(fields.split(" ")) != 5:
        raise CronError(
            f"Invalid cron expression {source!r}. Use five fields: minute, hour,"
            " day of month, month and day of week, such as '*/5 * * * *'."
        )

    try:
        CronSim(fields, dt.datetime(2000, 1, 1, tzinfo=_UTC))
    except CronSimError as exc:
        raise CronError(
            f"Invalid cron expression {source!r}: {exc}. Check each of the five fields."
        ) from None

    return Cron(source=source, fields=fields, zone=zone)
