"""Log lines, for people (text) and for machines (JSON): the fields and the traceback survive."""

from __future__ import annotations

import json
import logging
import sys

import pytest

from floodgate import mqtt
from floodgate.broker import BrokerSettings
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


def test_aiomqtts_pending_publish_warning_is_one_line_with_a_count(caplog: pytest.LogCaptureFixture) -> None:
    """Sending a backlog, aiomqtt warned once per publish beyond its threshold: 419 lines in the issue."""
    caplog.set_level(logging.WARNING, logger="mqtt")
    summary = next(f for f in logging.getLogger("mqtt").filters if isinstance(f, mqtt.PendingCallsSummary))
    summary.every_s, summary._last = 3600.0, -float("inf")  # a fresh summary for this test
    for n in range(1001, 1420):  # what aiomqtt logs, as it logs it
        logging.getLogger("mqtt").warning(mqtt.PENDING_WARNING, n)
    logging.getLogger("mqtt").warning("Message queue is full. Discarding message.")  # others pass
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "publishing is backed up: 1 pending-publish warnings since the last such line,"
        " at most 1001 calls pending",
        "Message queue is full. Discarding message.",
    ]
    summary.every_s = 0.0  # the next line comes with the count of those held back
    logging.getLogger("mqtt").warning(mqtt.PENDING_WARNING, 1200)
    assert caplog.records[-1].getMessage() == (
        "publishing is backed up: 419 pending-publish warnings since the last such line,"
        " at most 1419 calls pending"
    )
    summary.every_s = 60.0


async def test_aiomqtt_warns_of_pending_publishes_only_beyond_a_backlog_batch() -> None:
    client = mqtt.client(
        BrokerSettings(url="mqtt://127.0.0.1:1"), identifier="x", will_topic="t", will_payload=b""
    )
    assert client.pending_calls_threshold == mqtt.PENDING_CALLS_WARN >= 1000  # an outbox batch is <= 1000
