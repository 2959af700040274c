"""The collector's tables, as SQLAlchemy Core metadata: one definition for SQLite and PostgreSQL.

``messages`` is the idempotency ledger: one row per ``msg_id`` ever stored,
with (node, boot, seq), from which sequence gaps are derived rather than kept
as mutable state that two collectors could race on. The tables are created
and upgraded by the numbered steps in ``cloud.db.migrations``.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    false,
    select,
    text,
    true,
)

metadata = MetaData()
Id = BigInteger().with_variant(Integer, "sqlite")  # SQLite autoincrements INTEGER only

schema_version = Table(
    "schema_version",
    metadata,
    Column("version", Integer, primary_key=True),
    Column("applied_ms", BigInteger, nullable=False),
)
messages = Table(
    "messages",
    metadata,
    Column("msg_id", String(26), primary_key=True),
    Column("node", String(64), nullable=False),
    Column("boot", BigInteger, nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("kind", String(16), nullable=False),
    Column("ts", BigInteger, nullable=False),
    Column("received_ms", BigInteger, nullable=False),
    Index("messages_node_boot_seq", "node", "boot", "seq"),
)
nodes = Table(
    "nodes",
    metadata,
    Column("node", String(64), primary_key=True),
    Column("site_name", Text),
    Column("address", Text),
    Column("lat", Float),
    Column("lon", Float),
    Column("agent_version", String(32)),
    Column("config_hash", String(64)),
    Column("online", Boolean, nullable=False, default=False),
    Column("boot", BigInteger),
    Column("last_seen_ms", BigInteger),
    Column("birth_ms", BigInteger),
    Column("health", Text),
    # The site plays a drill or a simulation (birth's site.exercise): its CAP messages say Exercise.
    Column("exercise", Boolean, nullable=False, server_default=false()),
)
devices = Table(
    "devices",
    metadata,
    Column("node", String(64), primary_key=True),
    Column("dev", String(64), primary_key=True),
    Column("kind", String(16), nullable=False),
    Column("model", String(64), nullable=False),
    Column("unit", String(16)),
    Column("thresholds", Text),
    # Newest reading's time (edge clock), kept at ingest: what silence checks read.
    Column("last_reading_ms", BigInteger),
)
# A time series: one metric of one device of one node. Readings name it by id:
# an index entry of (integer, time) costs the database a third of what
# (node, dev, metric, time) as text did, and each row is half as long.
series = Table(
    "series",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("node", String(64), nullable=False),
    Column("dev", String(64), nullable=False),
    Column("metric", String(64), nullable=False),
    UniqueConstraint("node", "dev", "metric", name="series_key"),
)
readings = Table(
    "readings",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("series", Integer, nullable=False),
    Column("ts", BigInteger, nullable=False),
    Column("value", Float, nullable=False),
    Column("quality", String(8), nullable=False),
    Index("readings_series_ts", "series", "ts"),
)
# Readings with their series' names: what queries select from and filter on
# (both databases look the series up by its key, then the readings by index).
named_readings = (
    select(
        readings.c.id,
        series.c.node,
        series.c.dev,
        series.c.metric,
        readings.c.ts,
        readings.c.value,
        readings.c.quality,
    )
    .join_from(readings, series, readings.c.series == series.c.id)
    .subquery("named_readings")
)
alerts = Table(
    "alerts",
    metadata,
    Column("id", String(26), primary_key=True),
    Column("node", String(64), nullable=False),
    Column("dev", String(64), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("level", String(8), nullable=False),
    Column("max_level", String(8), nullable=False),
    Column("first_ts", BigInteger, nullable=False),
    Column("last_ts", BigInteger, nullable=False),
    Column("peak_value", Float),
    Column("unit", String(16)),
    Column("threshold", Float),
    Column("reason", Text),
    Index("alerts_open", "level", "node"),
)
alert_transitions = Table(
    "alert_transitions",
    metadata,
    Column("msg_id", String(26), primary_key=True),
    Column("alert_id", String(26), nullable=False, index=True),
    Column("level", String(8), nullable=False),
    Column("prev", String(8), nullable=False),
    Column("value", Float),
    Column("threshold", Float),  # the threshold of this transition's level (the alert's)
    Column("ts", BigInteger, nullable=False),
    Column("actions", Text),
    # Why, when the node's alert said (a sensor fault's reason) or the collector closed the
    # episode itself: ``reconciled: …`` (cloud.reconcile).
    Column("reason", Text),
    # False until the transition has been applied to its ticket, which happens
    # in the episode's own order whatever batch stored it first (cloud.tickets).
    Column("ticketed", Boolean, nullable=False, server_default=true()),
    # When the ticket step first found it held (its predecessor not stored yet), on
    # the collector's clock; held long enough, it is released out of order (migration 16).
    Column("held_ms", BigInteger),
    # A forecast's (kind ``forecast``): the seconds from ``ts`` until the level is expected to be
    # reached, and (the collector's own rainfall forecasts) how likely it is, 0 to 1.
    Column("eta_s", Float),
    Column("probability", Float),
    Index(
        "alert_transitions_held",
        "held_ms",
        postgresql_where=text("NOT ticketed"),
        sqlite_where=text("NOT ticketed"),
    ),
)
events = Table(
    "events",
    metadata,
    Column("msg_id", String(26), primary_key=True),
    Column("node", String(64), nullable=False),
    Column("dev", String(64)),
    Column("type", String(32), nullable=False),
    Column("detail", Text),
    Column("ts", BigInteger, nullable=False),
    Index("events_node_ts", "node", "ts"),
)
dead_letters = Table(
    "dead_letters",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("topic", Text, nullable=False),
    Column("payload", LargeBinary, nullable=False),
    Column("code", String(32), nullable=False),
    Column("detail", Text, nullable=False),
    Column("received_ms", BigInteger, nullable=False),
)

V1_TABLES = [
    schema_version,
    messages,
    nodes,
    devices,
    readings,
    alerts,
    alert_transitions,
    events,
    dead_letters,
]

# Tickets (migration 2). ``open_key`` is "<node>/<kind>" while the ticket is not
# closed and NULL after: a unique index on it keeps one open ticket per site and
# kind even with several collectors racing to open one.
tickets = Table(
    "tickets",
    metadata,
    Column("id", String(26), primary_key=True),
    Column("node", String(64), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("title", Text, nullable=False),
    Column("state", String(16), nullable=False),
    Column("priority", String(8), nullable=False),
    Column("department", String(32), nullable=False),
    Column("unit", String(64), nullable=False),
    Column("open_key", String(96), unique=True),
    Column("created_ms", BigInteger, nullable=False),
    Column("updated_ms", BigInteger, nullable=False),
    Column("dispatched_ms", BigInteger),
    Column("opened_ms", BigInteger),  # when it last became open (made, reopened, rejected)
    Column("dispatch_due_ms", BigInteger),  # dispatch by then, or it escalates (while open)
    Column("accept_due_ms", BigInteger),
    Column("handle_due_ms", BigInteger),
    Column("accepted_ms", BigInteger),
    Column("handled_ms", BigInteger),
    Column("verified_ms", BigInteger),
    Column("closed_ms", BigInteger),
    Column("accepted_on_time", Boolean),
    Column("handled_on_time", Boolean),
    Column("escalation", Integer, nullable=False, server_default="0"),
    Column("escalations", Integer, nullable=False, server_default="0"),
    Column("next_check_ms", BigInteger, index=True),
    Column("score", Integer),
    Column("comment", Text),
    Column("duplicate_of", String(26)),
    Column("reopened", Integer, nullable=False, server_default="0"),
    Column("last_alert_id", String(26)),
    Column("lat", Float),
    Column("lon", Float),
    Index("tickets_unit_state", "unit", "state"),
    Index("tickets_node_kind", "node", "kind", "closed_ms"),
)
ticket_timeline = Table(
    "ticket_timeline",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("ticket_id", String(26), nullable=False, index=True),
    Column("ts", BigInteger, nullable=False),
    Column("actor", String(128), nullable=False),
    Column("action", String(32), nullable=False),
    Column("from_state", String(16)),
    Column("to_state", String(16)),
    Column("note", Text),
    Column("detail", Text),
)
ticket_alerts = Table(
    "ticket_alerts",
    metadata,
    Column("alert_id", String(26), primary_key=True),
    Column("ticket_id", String(26), nullable=False, index=True),
)
V2_TABLES = [tickets, ticket_timeline, ticket_alerts]

commands = Table(
    "commands",
    metadata,
    Column("cmd_id", String(26), primary_key=True),
    Column("node", String(64), nullable=False),
    Column("type", String(32), nullable=False),
    Column("dev", String(64)),
    Column("args", Text, nullable=False),
    Column("issued_by", String(128), nullable=False),
    Column("reason", Text, nullable=False),
    Column("issued_ms", BigInteger, nullable=False),
    Column("expires_ms", BigInteger, nullable=False),
    # sent -> done | rejected | failed (from cmd-result) | timeout (no result by expiry)
    Column("status", String(16), nullable=False),
    Column("result_reason", Text),
    Column("result_ms", BigInteger),
    Index("commands_node", "node", "issued_ms"),
    Index("commands_open", "status", "expires_ms"),
)
V3_TABLES = [commands]

users = Table(
    "users",
    metadata,
    Column("username", String(64), primary_key=True),
    Column("display_name", Text),
    Column("password_hash", Text),
    Column("role", String(16), nullable=False),
    Column("unit", String(64)),
    Column("disabled", Boolean, nullable=False, server_default="0"),
    Column("created_ms", BigInteger, nullable=False),
)
api_tokens = Table(
    "api_tokens",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("username", String(64), nullable=False, index=True),
    Column("secret_hash", Text, nullable=False),
    Column("label", Text),
    Column("created_ms", BigInteger, nullable=False),
    Column("expires_ms", BigInteger),
    Column("revoked", Boolean, nullable=False, server_default="0"),
)
audit = Table(
    "audit",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("ts", BigInteger, nullable=False),
    Column("actor", String(128), nullable=False),
    Column("method", String(8), nullable=False),
    Column("path", Text, nullable=False),
    Column("status", Integer, nullable=False),
    Column("detail", Text),
    Index("audit_ts", "ts"),
)
V4_TABLES = [users, api_tokens, audit]

# Outgoing notifications, delivered at least once: a row is leased while it is
# being sent, retried with backoff, and kept (sent or failed) as a record.
notifications = Table(
    "notifications",
    metadata,
    Column("id", String(26), primary_key=True),
    Column("channel", String(8), nullable=False),
    Column("target", Text, nullable=False),
    Column("event", String(32), nullable=False),
    Column("ticket_id", String(26), nullable=False, index=True),
    Column("payload", Text, nullable=False),
    Column("status", String(8), nullable=False),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("next_attempt_ms", BigInteger, nullable=False),
    Column("last_error", Text),
    Column("created_ms", BigInteger, nullable=False),
    Column("sent_ms", BigInteger),
    Index("notifications_due", "status", "next_attempt_ms"),
)
V5_TABLES = [notifications]

# One-minute aggregates, kept after raw readings expire; filled from readings by id.
readings_1m = Table(
    "readings_1m",
    metadata,
    Column("node", String(64), primary_key=True),
    Column("dev", String(64), primary_key=True),
    Column("metric", String(64), primary_key=True),
    Column("minute", BigInteger, primary_key=True),
    Column("n", Integer, nullable=False),
    Column("vmin", Float, nullable=False),
    Column("vmax", Float, nullable=False),
    Column("vsum", Float, nullable=False),
    # The minute's readings of quality good (the forecast's fits take only those): how many,
    # their sum. NULL on minutes rolled up before these columns existed (quality unknown).
    Column("good_n", Integer),
    Column("good_sum", Float),
)
rollup_state = Table(
    "rollup_state",
    metadata,
    Column("name", String(32), primary_key=True),
    Column("done_id", BigInteger, nullable=False),
    Column("mark_id", BigInteger, nullable=False),
    Column("updated_ms", BigInteger, nullable=False),
)
# rollup_state's rows that are not followers of readings but say when a job last ran (the
# forecast round and the forecasts' expiry, cloud.db.forecast): they hold no reading back.
JOB_ROWS = ("forecast", "forecast_expiry")
V6_TABLES = [readings_1m, rollup_state]

# Failed logins in a row per key ("user <name>", "address <ip>"), shared by every
# collector on the database: the login throttle (cloud/auth.py) reads it before
# any password is hashed. Rows quiet for a day are forgotten.
login_failures = Table(
    "login_failures",
    metadata,
    Column("key", String(200), primary_key=True),
    Column("failures", Integer, nullable=False),
    Column("last_ms", BigInteger, nullable=False),
    Index("login_failures_last", "last_ms"),
)
V7_TABLES = [login_failures]

# Rainfall forecasts (cloud.rainfall): one row per site of each document taken, its
# steps and series as JSON. The latest of a site: the greatest issued_ms, then id.
rainfall_forecasts = Table(
    "rainfall_forecasts",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("node", String(64), nullable=False),
    Column("issued_ms", BigInteger, nullable=False),
    Column("source", String(100), nullable=False),
    Column("start_ms", BigInteger, nullable=False),
    Column("end_ms", BigInteger, nullable=False),
    Column("steps", Text, nullable=False),
    Column("series", Text, nullable=False),
    Column("via", String(40), nullable=False),
    Column("origin", String(200), nullable=False),
    Column("received_ms", BigInteger, nullable=False),
    # SHA-256 of the site's issue time, source, steps and series: the same forecast taken
    # again is not stored again (NULL on rows stored before it was kept).
    Column("digest", String(64)),
    Index("rainfall_forecasts_node_issued", "node", "issued_ms"),
    Index("rainfall_forecasts_node_digest", "node", "digest", unique=True),
)
V8_TABLES = [rainfall_forecasts]

# Each site's fitted depth model (cloud.forecast): every fit kept, with its data span, the
# samples it used and its error; a site's current fit is its latest (greatest id).
site_fits = Table(
    "site_fits",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("node", String(64), nullable=False),
    Column("fitted_ms", BigInteger, nullable=False),
    Column("span_from_ms", BigInteger, nullable=False),
    Column("span_to_ms", BigInteger, nullable=False),
    Column("n", Integer, nullable=False),
    Column("events", Integer, nullable=False),
    Column("rmse_mm", Float, nullable=False),
    Column("params", Text, nullable=False),  # JSON: cloud.forecast.model.PARAMS
    Column("dt_s", Float, nullable=False),
    Column("dev", String(64), nullable=False),  # the level sensor whose depth it learnt
    Column("rain", String(80), nullable=False),  # where its rain came from: a gauge, or forecasts
    Index("site_fits_node", "node", "id"),
)
# Each site's latest forecast run (cloud.forecast): its status and, when ok, the band and the
# crossings as JSON. One row per site, replaced at each run.
site_forecasts = Table(
    "site_forecasts",
    metadata,
    Column("node", String(64), primary_key=True),
    Column("run_ms", BigInteger, nullable=False),
    Column("status", String(16), nullable=False),
    Column("result", Text, nullable=False),
)
V9_TABLES = [site_fits, site_forecasts]
