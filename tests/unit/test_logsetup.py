"""datastore.logsetup: JSON log lines are valid JSON objects with time, level, logger and msg
(the text format is the project's ``event.name key=value`` message behind a prefix)."""

from __future__ import annotations

import json
import logging
import sys

from datastore.logsetup import JsonFormatter


def _record(msg: str, *args: object, exc: bool = False) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError('bad "value"\nsecond line')
        except ValueError:
            exc_info = sys.exc_info()
    return logging.LogRecord(
        "felix.agent", logging.WARNING, __file__, 1, msg, args or None, exc_info
    )


def test_json_lines_are_objects_with_the_structured_fields() -> None:
    line = JsonFormatter().format(_record('felix.start node=%s note="%s"', "n1", "a\tb ü"))
    assert "\n" not in line
    doc = json.loads(line)
    assert doc["level"] == "warning" and doc["logger"] == "felix.agent"
    assert doc["msg"] == 'felix.start node=n1 note="a\tb ü"'
    assert doc["time"].endswith("Z") and doc["time"][10] == "T"


def test_json_lines_carry_exceptions_on_one_line() -> None:
    line = JsonFormatter().format(_record("bgp.reconcile_failed", exc=True))
    assert "\n" not in line
    doc = json.loads(line)
    assert "ValueError" in doc["exception"] and "second line" in doc["exception"]
