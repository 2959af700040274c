"""Log lines, for people (text) and for machines (JSON): the fields and the traceback survive."""

from __future__ import annotations

import json
import logging
import sys

from floodgate.logs import JsonFormatter, TextFormatter


def record() -> logging.LogRecord:
    try:
        raise ValueError("the database went away")
    except ValueError:
        rec = logging.getLogger("floodgate.test").makeRecord(
            "floodgate.test", logging.ERROR, __file__, 1, "ingest failed on %s", ("hp-01",), sys.exc_info()
        )
    rec.__dict__["node"] = "hp-01"
    return rec


def test_a_text_line_keeps_its_fields_and_its_traceback() -> None:
    text = TextFormatter().format(record())
    first, *rest = text.splitlines()
    assert first.endswith("ERROR   floodgate.test: ingest failed on hp-01  node=hp-01")
    assert rest[0] == "Traceback (most recent call last):"
    assert rest[-1] == "ValueError: the database went away"


def test_a_json_line_keeps_its_fields_and_its_traceback() -> None:
    line = json.loads(JsonFormatter().format(record()))
    assert line["level"] == "error" and line["msg"] == "ingest failed on hp-01" and line["node"] == "hp-01"
    assert line["exc"].endswith("ValueError: the database went away")
