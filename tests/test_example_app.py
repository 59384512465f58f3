"""The example app runs end to end on the embedded dev server."""

from __future__ import annotations

import re

import pytest

from example_app import activity
from example_app.__main__ import main


def test_example_runs_end_to_end(capsys: pytest.CaptureFixture[str]) -> None:
    activity.events.clear()

    assert main([]) == 0

    out = capsys.readouterr().out
    assert "The example ran end to end." in out
    assert "FAILED" not in out
    assert {e["tenant"] for e in activity.events} == {"acme", "globex"}
    assert sum(1 for e in activity.events if e.get("dead")) == 1

    # The welcome emails link to the dashboard at the app's public origin.
    links = {e["link"] for e in activity.events if e["job"] == "welcome-email"}
    assert len(links) == 1
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+/", links.pop())
