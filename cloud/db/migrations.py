"""The schema's numbered migrations, recorded in ``schema_version``.

Every collector runs them at start-up (``Store.migrate``; PostgreSQL
serialises concurrent runners with an advisory lock). Each step is a
synchronous function of a SQLAlchemy connection, run through ``run_sync``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import MetaData, Table, inspect

from cloud.db import partitions
from cloud.db.schema import (
    V1_TABLES,
    V2_TABLES,
    V3_TABLES,
    V4_TABLES,
    V5_TABLES,
    V6_TABLES,
    V7_TABLES,
    V8_TABLES,
    V9_TABLES,
    alert_transitions,
    devices,
    metadata,
    nodes,
    rainfall_forecasts,
    readings,
    readings_1m,
    series,
    tickets,
)


def _creating(tables: list[Table]) -> Callable[[Any], None]:
    def step(conn: Any) -> None:
        metadata.create_all(conn, tables=tables)

    return step


def _adding(table: Table, column: str) -> Callable[[Any], None]:
    """Add a column an older schema lacks (a new database has it from the table's definition)."""

    def step(conn: Any) -> None:
        if column not in {c["name"] for c in inspect(conn).get_columns(table.name)}:
            ddl = table.c[column].type.compile(conn.dialect)
            conn.exec_driver_sql(f"ALTER TABLE {table.name} ADD COLUMN {column} {ddl}")

    return step


def _naming_series(conn: Any) -> None:
    """Readings of schema 1 to 7 (node, dev, metric on every row) moved to series ids.

    Ids are kept, so the rollup and an InfluxDB export carry on where they
    were. A database created since has the new table from its definition.
    """
    series.create(conn, checkfirst=True)
    if "series" in {c["name"] for c in inspect(conn).get_columns("readings")}:
        return
    conn.exec_driver_sql(
        "INSERT INTO series (node, dev, metric)"
        " SELECT DISTINCT node, dev, metric FROM readings ORDER BY 1, 2, 3"
    )
    moved = readings.to_metadata(MetaData(), name="readings_new")
    moved.create(conn)
    conn.exec_driver_sql(
        "INSERT INTO readings_new (id, series, ts, value, quality)"
        " SELECT r.id, s.id, r.ts, r.value, r.quality FROM readings r"
        " JOIN series s ON s.node = r.node AND s.dev = r.dev AND s.metric = r.metric"
    )
    conn.exec_driver_sql("DROP TABLE readings")
    conn.exec_driver_sql("ALTER TABLE readings_new RENAME TO readings")
    if conn.dialect.name == "postgresql":  # new ids go on after the moved ones
        conn.exec_driver_sql(
            "SELECT setval(pg_get_serial_sequence('readings', 'id'), COALESCE(MAX(id), 0) + 1, false)"
            " FROM readings"
        )


def _ticketing(conn: Any) -> None:
    """``alert_transitions.ticketed``: the transitions stored before it had reached their tickets."""
    if "ticketed" not in {c["name"] for c in inspect(conn).get_columns("alert_transitions")}:
        yes = "true" if conn.dialect.name == "postgresql" else "1"
        conn.exec_driver_sql(
            f"ALTER TABLE alert_transitions ADD COLUMN ticketed BOOLEAN NOT NULL DEFAULT {yes}"
        )


def _flagging(table: Table, column: str) -> Callable[[Any], None]:
    """Add a boolean column, false on every existing row, that an older schema lacks."""

    def step(conn: Any) -> None:
        if column not in {c["name"] for c in inspect(conn).get_columns(table.name)}:
            no = "false" if conn.dialect.name == "postgresql" else "0"
            conn.exec_driver_sql(
                f"ALTER TABLE {table.name} ADD COLUMN {column} BOOLEAN NOT NULL DEFAULT {no}"
            )

    return step


def _holding(conn: Any) -> None:
    """``alert_transitions.held_ms`` and the index of held transitions (their timed release).

    Transitions held before it are held from the upgrade: nothing else would
    give them a time, and they would be held for good."""
    _adding(alert_transitions, "held_ms")(conn)
    for index in alert_transitions.indexes:
        if index.name == "alert_transitions_held":
            index.create(conn, checkfirst=True)
    no = "false" if conn.dialect.name == "postgresql" else "0"
    conn.exec_driver_sql(
        f"UPDATE alert_transitions SET held_ms = {int(time.time() * 1000)}"  # noqa: S608 (a number)
        f" WHERE ticketed = {no} AND held_ms IS NULL"
    )


def _partitioning(conn: Any) -> None:
    """PostgreSQL: ``readings`` becomes partitioned by week (``cloud.db.partitions``), rows and ids kept.

    The plain table's rows are copied into the new one (weeks with readings from a year ago
    to a week from now get a partition each, the rest goes to the default partition), so the
    migration takes about as long as copying the table. SQLite keeps its plain table.
    """
    if conn.dialect.name != "postgresql" or partitions.is_partitioned(conn.exec_driver_sql):
        return
    run = conn.exec_driver_sql
    sequence = run("SELECT pg_get_serial_sequence('readings', 'id')").scalar()
    run("ALTER TABLE readings RENAME TO readings_plain")
    for (key,) in run("SELECT conname FROM pg_constraint WHERE conrelid = 'readings_plain'::regclass").all():
        run(f"ALTER TABLE readings_plain DROP CONSTRAINT {key}")  # their names go to the new table's
    mine = "tablename = 'readings_plain' AND schemaname = current_schema()"
    for (index,) in run(f"SELECT indexname FROM pg_indexes WHERE {mine}").all():  # noqa: S608
        run(f"DROP INDEX {index}")
    for sql in partitions.create_parent(sequence):
        run(sql)
    week, now = partitions.WEEK_MS, int(time.time() * 1000)
    first, this = partitions.week_of(now - 53 * week), partitions.week_of(now)
    held = run(
        f"SELECT DISTINCT (ts - {partitions.MONDAY_MS}) / {week} * {week} + {partitions.MONDAY_MS}"  # noqa: S608
        f" FROM readings_plain WHERE ts >= {first} AND ts < {this}"
    ).scalars()
    for w in sorted({*held, *range(this, this + (partitions.AHEAD + 1) * week, week)}):
        for sql in partitions.make_week(w):
            run(sql)
    run("SET LOCAL lock_timeout TO DEFAULT")  # make_week's
    run("INSERT INTO readings SELECT id, series, ts, value, quality FROM readings_plain")
    run("DROP TABLE readings_plain")


def _digesting(conn: Any) -> None:
    """``rainfall_forecasts.digest`` and its unique index (rows before it keep NULL: all differ)."""
    _adding(rainfall_forecasts, "digest")(conn)
    for index in rainfall_forecasts.indexes:
        if index.name == "rainfall_forecasts_node_digest":
            index.create(conn, checkfirst=True)


def _good_minutes(conn: Any) -> None:
    """``readings_1m.good_n`` and ``good_sum``: the count and sum of each minute's good readings.

    Minutes rolled up before keep NULL (their readings' quality is not known): the forecast's
    fits, which take good readings only, leave them out."""
    _adding(readings_1m, "good_n")(conn)
    _adding(readings_1m, "good_sum")(conn)


# Each migration creates the tables of its version, or alters older ones.
MIGRATIONS: list[Callable[[Any], None]] = [
    *(_creating(t) for t in (V1_TABLES, V2_TABLES, V3_TABLES, V4_TABLES, V5_TABLES, V6_TABLES)),
    _adding(devices, "last_reading_ms"),
    _naming_series,
    _ticketing,
    _creating(V7_TABLES),
    _adding(alert_transitions, "threshold"),
    _flagging(nodes, "exercise"),
    _adding(alert_transitions, "reason"),
    _adding(tickets, "opened_ms"),
    _adding(tickets, "dispatch_due_ms"),
    _holding,
    _partitioning,
    _creating(V8_TABLES),
    _adding(alert_transitions, "eta_s"),
    _adding(alert_transitions, "probability"),
    _digesting,
    _creating(V9_TABLES),
    _good_minutes,
]
