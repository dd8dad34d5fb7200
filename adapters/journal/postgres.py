"""PostgreSQL journal (psycopg 3): hash-chained streams in one schema, COPY ingest.

Connections
    One writer connection (autocommit; every append is its own transaction, or a
    savepoint inside :meth:`PostgresJournal.transaction`) and a small pool of read
    connections. Every read (an iterator, ``verify``, ``streams``) runs in its own
    ``REPEATABLE READ READ ONLY`` transaction on a pooled connection and iterates a
    server-side cursor, so it sees one committed snapshot, taken when it starts, however
    many rows are appended while it runs. Inside ``transaction()`` reads use the writer
    (to see the block's own appends) and fetch their rows at once.
Schema (in schema ``tickerml`` unless told otherwise; layouts in docs/storage.md)
    ``meta`` (``schema_version``, ``layout``); ``streams``: one row per stream with its id
    (its creation order), name, tail (last seq, last hash), time span, whether every
    append so far kept the canonical order (``ordered``, ``last_key``) and its instrument
    (NULL once a stream holds several); ``events`` in the layout chosen when the journal
    was created:

    * ``partitioned`` (schema version 2), where TimescaleDB cannot be used: native range
      partitions of ``event_id`` itself, one per UTC day of the ids' 8-byte time prefix
      (``events_pYYYYMMDD``, bounds in bytea order: :func:`partition_bounds`), created by
      the append that first touches the day, before its COPY
      (:meth:`PostgresJournal._ensure_partitions`);
    * ``timescaledb`` (schema version 2), where ``CREATE EXTENSION timescaledb`` works: a
      hypertable on ``id_ts``, the ids' time prefix as a signed integer
      (:func:`id_time`), in chunks of one UTC day, compressed (segmented by stream,
      ordered by seq) once older than ``hot_days``, dropped after ``retention_days`` when
      that is set (> 0);
    * ``plain`` (schema version 1): the one table of journals created before layouts
      existed, opened and written as it is (``tickerml migrate`` to another schema moves
      it into a partitioned one).

    Ids made by :func:`kernel.events.event_id` (and by the importers) start with the
    event time, big-endian, so both keys put a day's events together. A unique index of a
    partitioned table (or hypertable) must contain the partition key: partitioned by
    ``event_id``, idempotence stays ``UNIQUE (event_id)``; a hypertable needs a time
    column, so it is ``UNIQUE (event_id, id_ts)``, as strict since ``id_ts`` is a function
    of ``event_id`` (``verify`` checks each row's ``id_ts``). Either way one id always
    lands in one partition or chunk, whatever the ids look like. ``(sid, seq)`` is a
    plain index there (seqs stay gap-free and unique through the stream lock) and each row
    stores its ``prev_hash``: finding the previous row by ``(sid, seq - 1)`` would probe
    every partition; ``verify`` checks it. In the ``plain`` layout ``(sid, seq)`` is the
    primary key and ``prev_hash`` is the previous row's ``hash``, joined in when reading.
    The canonical-order index is partial (``WHERE market``) so session rows stay out of
    it. Text that takes part in an order (stream names, exchange, symbol, session ids) is
    ``COLLATE "C"``: bytewise, as Python and SQLite compare strings.
Appends and concurrency
    An append locks its stream's row (``SELECT ... FOR UPDATE``), so writers to one
    stream queue up and seqs stay gap-free. Seqs and hashes are computed here for the
    events not stored yet. The first try does not look for stored ids (the common case:
    none) and COPYs (binary) straight into ``events``; the UNIQUE index on event_id
    refuses the whole COPY if an id is stored already. The retry (after rolling back)
    probes for stored ids and COPYs the new rows into a temporary staging table, moved
    with ``INSERT ... SELECT ... ON CONFLICT (event_id) DO NOTHING`` in the statement
    that also moves the stream's tail; if that insert count falls short (another writer
    stored one of the ids meanwhile) it is rolled back and tried again. Batches under
    :data:`COPY_MIN_ROWS` rows are inserted from arrays in one statement instead.
Read models
    Tables of their own name in the same schema (``session_id``, ``row_no`` and the
    declared columns as BIGINT, DOUBLE PRECISION, TEXT), listed in ``read_models`` with
    their declared columns (JSON), as in the SQLite backend.
Cold tier
    As in the SQLite backend: ``meta`` key ``archive`` holds the :class:`ArchiveState`,
    archived rows are deleted from ``events`` and ``verify`` starts at each boundary.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import msgspec
import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from psycopg.types.string import BytesBinaryDumper

from adapters.journal.base import (
    ARCHIVE_META_KEY,
    GENESIS_HASH,
    ArchiveState,
    Journal,
    JournalError,
    JournalRecord,
    PreparedEvent,
    ReadModelColumn,
    ReadModelRows,
    ReadModelValue,
    StreamInfo,
    VerifyReport,
    archive_start,
    check_read_model,
    check_read_model_rows,
    decode_archive_state,
    encode_archive_state,
    read_filters,
    read_model_mismatch,
)
from adapters.journal.memory import check_row

SCHEMA_VERSION = 2
"""Schema version of journals created now (layouts ``timescaledb`` and ``partitioned``).
Version 1 journals (layout ``plain``) are still opened and written."""
PLAIN_SCHEMA_VERSION = 1
DEFAULT_SCHEMA = "tickerml"

Layout = Literal["timescaledb", "partitioned", "plain"]
LAYOUTS = ("auto", "timescaledb", "partitioned", "plain")
"""``auto``: TimescaleDB where the extension can be used, else ``partitioned``."""

DAY_NS = 86_400 * 1_000_000_000
"""One partition (or chunk) of ``events``: a UTC day of the event ids' time prefix."""

_INT64_MIN = -(2**63)
_EPOCH_DAY = date(1970, 1, 1)
_PARTITION = re.compile(r"events_p(\d{4})(\d{2})(\d{2})")

_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")

_COMMON_SCHEMA = (
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE streams (
        sid       SERIAL  PRIMARY KEY,
        name      TEXT    COLLATE "C" NOT NULL UNIQUE,
        market    BOOLEAN NOT NULL,
        last_seq  BIGINT  NOT NULL,
        last_hash BYTEA   NOT NULL,
        first_ts  BIGINT  NOT NULL,
        last_ts   BIGINT  NOT NULL,
        last_key  BYTEA   NOT NULL,
        ordered   BOOLEAN NOT NULL,
        exchange  TEXT    COLLATE "C",
        symbol    TEXT    COLLATE "C"
    )""",
    """CREATE TABLE read_models (name TEXT PRIMARY KEY, columns TEXT NOT NULL)""",
)

# Canonical replay order over market streams; queries repeat ``e.market``.
_CANONICAL = "(ts_recv, priority, exchange, symbol, src_seq, sid, seq) WHERE market"

_PLAIN_EVENTS = (
    """CREATE TABLE events (
        sid       INTEGER NOT NULL,
        seq       BIGINT  NOT NULL,
        event_id  BYTEA   NOT NULL UNIQUE,
        ts_event  BIGINT  NOT NULL,
        ts_recv   BIGINT  NOT NULL,
        priority  INTEGER NOT NULL,
        kind      TEXT    NOT NULL,
        exchange  TEXT    COLLATE "C" NOT NULL,
        symbol    TEXT    COLLATE "C" NOT NULL,
        src_seq   BIGINT  NOT NULL,
        market    BOOLEAN NOT NULL,
        payload   BYTEA   NOT NULL,
        hash      BYTEA   NOT NULL,
        PRIMARY KEY (sid, seq)
    )""",
    f"CREATE INDEX events_canonical ON events {_CANONICAL}",
)
"""The ``plain`` layout (schema version 1), as journals created before layouts have it."""

_DAILY_COLUMNS = """
        sid       INTEGER NOT NULL,
        seq       BIGINT  NOT NULL,
        event_id  BYTEA   NOT NULL,{id_ts}
        ts_event  BIGINT  NOT NULL,
        ts_recv   BIGINT  NOT NULL,
        priority  INTEGER NOT NULL,
        kind      TEXT    NOT NULL,
        exchange  TEXT    COLLATE "C" NOT NULL,
        symbol    TEXT    COLLATE "C" NOT NULL,
        src_seq   BIGINT  NOT NULL,
        market    BOOLEAN NOT NULL,
        payload   BYTEA   NOT NULL,
        prev_hash BYTEA   NOT NULL,
        hash      BYTEA   NOT NULL"""

_PARTITIONED_EVENTS = (
    "CREATE TABLE events (" + _DAILY_COLUMNS.format(id_ts="") + ",\n        UNIQUE (event_id)\n"
    "    ) PARTITION BY RANGE (event_id)",
    "CREATE INDEX events_stream ON events (sid, seq)",
    f"CREATE INDEX events_canonical ON events {_CANONICAL}",
)
"""The ``partitioned`` layout: ranges of ``event_id`` (bytewise), one UTC day of the ids'
time prefix each, so ``UNIQUE (event_id)`` contains the partition key as PostgreSQL
requires."""

_TIMESCALEDB_EVENTS = (
    "CREATE TABLE events ("
    + _DAILY_COLUMNS.format(id_ts="\n        id_ts     BIGINT  NOT NULL,")
    + ",\n        UNIQUE (event_id, id_ts)\n    )",
    "CREATE INDEX events_stream ON events (sid, seq)",
    f"CREATE INDEX events_canonical ON events {_CANONICAL}",
)
"""The ``timescaledb`` layout: a hypertable needs an integer or time column to chunk by,
``id_ts`` (the id's time prefix), which its unique indexes must contain."""

_STAGING = "tickerml_staging"
_UPDATE_TAIL = (
    "UPDATE streams SET last_seq = %s, last_hash = %s, first_ts = %s, last_ts = %s, "
    "last_key = %s, ordered = %s, exchange = %s, symbol = %s WHERE sid = %s"
)
_TAIL = (
    "upd AS (UPDATE streams SET last_seq = %s, last_hash = %s, first_ts = %s, "
    "last_ts = %s, last_key = %s, ordered = %s, exchange = %s, symbol = %s "
    "WHERE sid = %s) SELECT count(*) FROM ins"
)
COPY_MIN_ROWS = 16
"""Batches of at least this many new rows go through COPY; smaller ones are inserted
from arrays in one statement (a COPY costs a round trip more)."""


@dataclass(frozen=True)
class _Statements:
    """The SQL that differs between the ``plain`` layout and the daily ones."""

    copy_types: tuple[str, ...]
    staging_ddl: str
    # First try of a batch: straight into events (no id is expected to be stored; the
    # unique index refuses the whole COPY if one is, and the retry goes through staging).
    copy_direct: str
    copy_staged: str
    # One statement empties the staging table into events and moves the stream's tail;
    # its result is the number of rows inserted (short of the staged count if an id was
    # stored meanwhile). Emptying it here (not TRUNCATE, which costs over a millisecond)
    # lets the next append of a transaction() block reuse it; ON COMMIT DELETE ROWS
    # reclaims the space at commit.
    move: str
    # Small batches skip the staging table: one statement inserts them from arrays.
    insert_arrays: str
    probe: str
    # Read columns: the record fields in JournalRecord order with the previous row's
    # hash (stored, or joined in by ``prev_join``); sid first, to name the stream.
    read_columns: str
    prev_join: str
    verify: str


def _statements(layout: Layout) -> _Statements:
    names = ["sid", "seq", "event_id", "ts_event", "ts_recv", "priority", "kind"]
    names += ["exchange", "symbol", "src_seq", "market", "payload", "hash"]
    types = ["int4", "int8", "bytea", "int8", "int8", "int4", "text"]
    types += ["text", "text", "int8", "bool", "bytea", "bytea"]
    sql_types = ["INTEGER", "BIGINT", "BYTEA", "BIGINT", "BIGINT", "INTEGER", "TEXT"]
    sql_types += ["TEXT", "TEXT", "BIGINT", "BOOLEAN", "BYTEA", "BYTEA"]
    stored_prev = layout != "plain"
    if stored_prev:
        names[-1:-1], types[-1:-1], sql_types[-1:-1] = ["prev_hash"], ["bytea"], ["BYTEA"]
    if layout == "timescaledb":
        names[3:3], types[3:3], sql_types[3:3] = ["id_ts"], ["int8"], ["BIGINT"]
    cols = ", ".join(names)
    conflict = "(event_id, id_ts)" if layout == "timescaledb" else "(event_id)"
    staged = f"WITH staged AS (DELETE FROM {_STAGING} RETURNING {cols}), "
    arrays = ", ".join(f"%s::{t}[]" for t in types)
    read = "e.sid, e.seq, e.event_id, e.ts_event, e.ts_recv, e.priority, e.kind, e.exchange, "
    read += "e.symbol, e.src_seq, e.payload, " + ("e.prev_hash" if stored_prev else "p.hash")
    verify = "SELECT seq, event_id, ts_event, ts_recv, priority, kind, exchange, symbol, "
    verify += "src_seq, payload, hash" + (", prev_hash" if stored_prev else "")
    verify += ", id_ts" if layout == "timescaledb" else ""
    return _Statements(
        copy_types=tuple(types),
        staging_ddl=f"CREATE TEMP TABLE IF NOT EXISTS {_STAGING} ("
        + ", ".join(f"{n} {t}" for n, t in zip(names, sql_types, strict=True))
        + ") ON COMMIT DELETE ROWS",
        copy_direct=f"COPY events ({cols}) FROM STDIN (FORMAT BINARY)",
        copy_staged=f"COPY {_STAGING} ({cols}) FROM STDIN (FORMAT BINARY)",
        move=f"{staged}ins AS (INSERT INTO events ({cols}) SELECT {cols} FROM staged "
        f"ON CONFLICT {conflict} DO NOTHING RETURNING 1), {_TAIL}",
        insert_arrays=f"WITH ins AS (INSERT INTO events ({cols}) SELECT * FROM unnest({arrays}) "
        f"ON CONFLICT {conflict} DO NOTHING RETURNING 1), {_TAIL}",
        probe="SELECT event_id, seq FROM events WHERE event_id = ANY(%s)"
        + (" AND id_ts = ANY(%s)" if layout == "timescaledb" else ""),
        read_columns=read + ", e.hash",
        prev_join=""
        if stored_prev
        else "LEFT JOIN events p ON p.sid = e.sid AND p.seq = e.seq - 1",
        verify=verify + " FROM events WHERE sid = %s ORDER BY seq",
    )


_STATEMENTS: dict[Layout, _Statements] = {
    layout: _statements(layout) for layout in ("plain", "partitioned", "timescaledb")
}


def id_time(event_id: bytes) -> int:
    """``id_ts``: the id's first 8 bytes as a big-endian signed integer (zero-padded when
    shorter): the event time (ns) of every id :func:`kernel.events.event_id` makes."""
    head = event_id[:8]
    if len(head) < 8:
        head = head.ljust(8, b"\0")
    return int.from_bytes(head, "big", signed=True)


def partition_name(day: int) -> str:
    """``events_pYYYYMMDD``: the partition of UTC day ``day`` (days since 1970-01-01)."""
    return f"events_p{_EPOCH_DAY + timedelta(days=day):%Y%m%d}"


def id_day(event_id: bytes) -> int:
    """The UTC day (since 1970-01-01) whose partition holds ``event_id``: the day of its
    time prefix (:func:`id_time`). Partitions are ranges of ``event_id`` in PostgreSQL's
    bytea order (bytewise, a shorter value first on a tie), which for ids of 8 bytes or
    more is the order of the prefix read unsigned; a shorter id sorts just below its
    zero-padded form."""
    head = event_id[:8]
    unsigned = int.from_bytes(head.ljust(8, b"\0"), "big")
    if len(head) < 8 and unsigned:
        unsigned -= 1
    signed = unsigned - 2**64 if unsigned >= 2**63 else unsigned
    return signed // DAY_NS


def _bytea_bound(unsigned: int) -> sql.Composable:
    if unsigned >= 2**64:
        return sql.SQL("MAXVALUE")
    return sql.SQL("{}::bytea").format(sql.Literal("\\x" + unsigned.to_bytes(8, "big").hex()))


def partition_bounds(day: int) -> tuple[sql.Composable, sql.Composable]:
    """The ``FROM (...) TO (...)`` bounds (bytea) of day ``day``'s partition: the 8-byte
    prefixes of its first and next day's times, as unsigned big-endian bytes (the
    negative times before 1970 sort after the positive ones, day -1 ending at MAXVALUE).
    Day 0 starts at MINVALUE, so even ids shorter than 8 bytes have a partition."""
    lo, hi = max(day * DAY_NS, _INT64_MIN), min((day + 1) * DAY_NS, 2**63)
    lo_u = lo % 2**64
    hi_u = hi if hi > 0 else hi + 2**64  # day -1 ends at 2**64: MAXVALUE
    return (sql.SQL("MINVALUE") if day == 0 else _bytea_bound(lo_u), _bytea_bound(hi_u))


_STREAM_ROW = (
    "SELECT sid, market, last_seq, last_hash, first_ts, last_ts, last_key, ordered, "
    "exchange, symbol FROM streams WHERE name = %s"
)
_ORDER = "ORDER BY e.ts_recv, e.priority, e.exchange, e.symbol, e.src_seq, e.sid, e.seq"
_FETCH = 8192
_MAX_TRIES = 8
_IDLE_READERS = 4
_KEY_ENC = msgspec.msgpack.Encoder()
_NO_KEY = (-1, -1, "", "", -1)
_LEN_PREFIX = tuple(bytes((n,)) for n in range(256))
"""``chain_hash``'s one-byte event_id length prefix, precomputed."""

_SQL_TYPES = {"int": "BIGINT", "float": "DOUBLE PRECISION", "text": "TEXT"}
_COPY_MODEL_TYPES = {"int": "int8", "float": "float8", "text": "text"}
_COLUMNS_CODEC = (msgspec.json.Encoder(), msgspec.json.Decoder(tuple[ReadModelColumn, ...]))


class _Retry(Exception):
    """Raised inside an append's transaction to roll it back and try again."""


DSN_OPTIONS = ("schema", "layout", "hot_days", "retention_days")
"""Query parameters of a URL DSN that are the journal's, not libpq's."""


def take_dsn_options(dsn: str) -> tuple[str, dict[str, str]]:
    """``(libpq DSN, options)``: takes :data:`DSN_OPTIONS` out of a URL DSN (libpq
    refuses parameters it does not know); the last value of each wins."""
    if "://" not in dsn:
        return dsn, {}
    parts = urlsplit(dsn)
    query = parse_qsl(parts.query, keep_blank_values=True)
    options = {k: v for k, v in query if k in DSN_OPTIONS}
    if not options:
        return dsn, {}
    rest = urlencode([(k, v) for k, v in query if k not in DSN_OPTIONS])
    return urlunsplit(parts._replace(query=rest)), options


def split_dsn(dsn: str) -> tuple[str, str | None]:
    """``(libpq DSN, schema)``: takes the ``schema`` query parameter (and the other
    :data:`DSN_OPTIONS`) out of a URL DSN; ``None`` when there is no schema."""
    libpq, options = take_dsn_options(dsn)
    return libpq, options.get("schema")


def with_layout_options(
    dsn: str, layout: str = "auto", hot_days: int = 7, retention_days: int = 0
) -> str:
    """A PostgreSQL URL DSN with the journal layout options of ``config/timescale.yaml``
    added where the DSN does not set them itself; any other DSN as it is."""
    scheme = dsn.partition("://")[0].lower()
    if scheme not in ("postgresql", "postgres"):
        return dsn
    parts = urlsplit(dsn)
    query = parse_qsl(parts.query, keep_blank_values=True)
    have = {k for k, _ in query}
    wanted = {"layout": layout, "hot_days": str(hot_days), "retention_days": str(retention_days)}
    query += [(k, v) for k, v in wanted.items() if k not in have]
    return urlunsplit(parts._replace(query=urlencode(query)))


def _option_int(name: str, given: int | None, options: dict[str, str], default: int) -> int:
    if given is not None:
        value = given
    else:
        try:
            value = int(options.get(name, default))
        except ValueError:
            raise JournalError(f"PostgreSQL journal option {name}={options[name]!r}") from None
    if value < 0:
        raise JournalError(f"PostgreSQL journal option {name} must not be negative")
    return value


def describe_dsn(dsn: str) -> tuple[str, str]:
    """``(where, password)``: ``host:port/dbname`` for messages (never the password),
    and the password, to scrub it from error texts ("" if none)."""
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.Error:
        return "<unparsable DSN>", ""
    host = str(params.get("host") or os.environ.get("PGHOST") or "localhost")
    port = str(params.get("port") or os.environ.get("PGPORT") or "5432")
    db = str(params.get("dbname") or os.environ.get("PGDATABASE") or params.get("user") or "")
    return f"{host}:{port}/{db}", str(params.get("password") or "")


def _scrub(text: str, password: str) -> str:
    return text.replace(password, "***") if password else text


class _Stream(msgspec.Struct):
    """A stream's row in ``streams``, as the writer keeps it."""

    sid: int
    market: bool
    last_seq: int
    last_hash: bytes
    first_ts: int
    last_ts: int
    last_key: tuple[int, int, str, str, int]
    ordered: bool
    exchange: str | None
    symbol: str | None


class PostgresJournal(Journal):
    """Journal in schema ``schema`` of a PostgreSQL database (created on first open).

    ``dsn`` is a libpq connection string or URL (a ``schema`` query parameter in a URL
    names the schema when ``schema`` is not given). Not thread-safe; several journals
    (threads, processes) may append to one schema, even to one stream.
    """

    def __init__(
        self,
        dsn: str,
        schema: str | None = None,
        connect_timeout: int = 10,
        *,
        layout: str | None = None,
        hot_days: int | None = None,
        retention_days: int | None = None,
    ) -> None:
        libpq_dsn, options = take_dsn_options(dsn)
        self.schema = schema or options.get("schema") or DEFAULT_SCHEMA
        self.requested_layout = layout or options.get("layout") or "auto"
        self.hot_days = _option_int("hot_days", hot_days, options, 7)
        self.retention_days = _option_int("retention_days", retention_days, options, 0)
        if self.requested_layout not in LAYOUTS:
            raise JournalError(
                f"PostgreSQL journal layout {self.requested_layout!r} is not one of "
                f"{', '.join(LAYOUTS)}"
            )
        self.layout: Layout = "plain"
        self._sql = _STATEMENTS["plain"]
        self._days: frozenset[int] | None = None
        self._ts_schema = ""
        self.layout_reason = ""
        """Why a journal created with layout ``auto`` is not on TimescaleDB ("" if it is,
        or when it was opened, not created)."""
        if not _SCHEMA_NAME.fullmatch(self.schema):
            raise JournalError(
                f"PostgreSQL schema name {self.schema!r} is not allowed "
                "(lower-case letters, digits and _)"
            )
        self._dsn = libpq_dsn
        self._connect_timeout = connect_timeout
        self.where, self._password = describe_dsn(libpq_dsn)
        self._conn: psycopg.Connection[Any] | None = None
        self._idle: list[psycopg.Connection[Any]] = []
        self._readers: set[psycopg.Connection[Any]] = set()
        self._txn_depth = 0
        self._search_path = sql.SQL("SET search_path TO {}").format(sql.Identifier(self.schema))
        try:
            self._conn = self._connect(autocommit=True)
            self._init_schema(self._conn)
            self._sql = _STATEMENTS[self.layout]
            self._conn.execute(self._sql.staging_ddl)
        except psycopg.Error as exc:
            self.close()
            raise JournalError(
                f"PostgreSQL journal at {self.where} schema {self.schema}: "
                f"{_scrub(str(exc).strip(), self._password)}"
            ) from exc
        except BaseException:
            self.close()
            raise

    # -- connections -----------------------------------------------------------------

    def _connect(self, autocommit: bool) -> psycopg.Connection[Any]:
        kwargs: dict[str, Any] = {}
        if "connect_timeout" not in conninfo_to_dict(self._dsn):
            kwargs["connect_timeout"] = self._connect_timeout
        try:
            conn = psycopg.connect(self._dsn, autocommit=True, **kwargs)
        except psycopg.Error as exc:
            raise JournalError(
                f"cannot connect to PostgreSQL at {self.where}: "
                f"{_scrub(str(exc).strip(), self._password)}"
            ) from exc
        conn.execute(self._search_path)
        conn.autocommit = autocommit
        # bytea through the plain bytes dumper (C when psycopg_binary is there), not the
        # DB-API wrapper-aware one registered for the oid by default: COPY is twice as fast
        conn.adapters.register_dumper(bytes, BytesBinaryDumper)
        return conn

    def _init_schema(self, conn: psycopg.Connection[Any]) -> None:
        with conn.transaction():
            # Serialise first opens of one schema (two processes starting at once).
            conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"tickerml:{self.schema}",))
            conn.execute(
                sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(self.schema))
            )
            tables = {
                r[0]
                for r in conn.execute(
                    "SELECT tablename FROM pg_tables WHERE schemaname = %s", (self.schema,)
                )
            }
            if "meta" not in tables:
                if tables:
                    names = ", ".join(sorted(tables))
                    raise JournalError(
                        f"PostgreSQL schema {self.schema} at {self.where} is not a journal "
                        f"(has tables: {names})"
                    )
                self.layout = self._create(conn)
                return
            meta = dict(
                conn.execute(
                    "SELECT key, value FROM meta WHERE key IN ('schema_version', 'layout')"
                ).fetchall()
            )
            found = meta.get("schema_version")
            if found == str(PLAIN_SCHEMA_VERSION):
                self.layout = "plain"  # created before layouts: kept as it is
            elif found == str(SCHEMA_VERSION) and meta.get("layout") in (
                "timescaledb",
                "partitioned",
            ):
                self.layout = meta["layout"]
            else:
                raise JournalError(
                    f"PostgreSQL schema {self.schema} at {self.where}: journal schema version "
                    f"{found} is not supported (this code reads versions "
                    f"{PLAIN_SCHEMA_VERSION} and {SCHEMA_VERSION})"
                )
            if self.requested_layout not in ("auto", self.layout):
                raise JournalError(
                    f"PostgreSQL schema {self.schema} at {self.where} holds a journal of "
                    f"layout {self.layout}, not {self.requested_layout}"
                )

    def _create(self, conn: psycopg.Connection[Any]) -> Layout:
        """Create the journal's tables in the requested layout; returns the layout."""
        layout: Layout
        if self.requested_layout in ("auto", "timescaledb"):
            why_not = self._enable_timescaledb(conn)
            if why_not is None:
                layout = "timescaledb"
            elif self.requested_layout == "timescaledb":
                raise JournalError(
                    f"PostgreSQL at {self.where}: layout timescaledb asked for, but {why_not}"
                )
            else:
                layout = "partitioned"
                self.layout_reason = f"partitioned: {why_not}"
        else:
            layout = "partitioned" if self.requested_layout == "partitioned" else "plain"
        for stmt in _COMMON_SCHEMA:
            conn.execute(stmt)
        if layout == "plain":
            for stmt in _PLAIN_EVENTS:
                conn.execute(stmt)
        else:
            ddl = _PARTITIONED_EVENTS if layout == "partitioned" else _TIMESCALEDB_EVENTS
            for stmt in ddl:
                conn.execute(stmt)
        if layout == "timescaledb":
            self._timescaledb_policies(conn)
        version = PLAIN_SCHEMA_VERSION if layout == "plain" else SCHEMA_VERSION
        conn.execute(
            "INSERT INTO meta (key, value) VALUES ('schema_version', %s), ('layout', %s)",
            (str(version), layout),
        )
        return layout

    def _enable_timescaledb(self, conn: psycopg.Connection[Any]) -> str | None:
        """Make the timescaledb extension usable (``CREATE EXTENSION`` if the server has it
        and it is not installed yet); ``None`` if it is, else why not."""
        query = (
            "SELECT n.nspname FROM pg_extension e JOIN pg_namespace n "
            "ON n.oid = e.extnamespace WHERE e.extname = 'timescaledb'"
        )
        row = conn.execute(query).fetchone()
        if row is None:
            available = conn.execute(
                "SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'"
            ).fetchone()
            if available is None:
                return "the server has no timescaledb extension"
            try:
                with conn.transaction():  # a savepoint: a refusal leaves the rest intact
                    conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb SCHEMA public")
            except psycopg.Error as exc:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
                return f"CREATE EXTENSION timescaledb failed: {first}"
            row = conn.execute(query).fetchone()
            if row is None:  # pragma: no cover - created just above
                return "CREATE EXTENSION timescaledb did not install it"
        self._ts_schema = str(row[0])
        return None

    def _timescaledb_policies(self, conn: psycopg.Connection[Any]) -> None:
        """``events`` as a hypertable of one-day chunks of ``id_ts``, compressed after
        ``hot_days`` (and dropped after ``retention_days`` when > 0)."""
        ts = sql.Identifier(self._ts_schema)
        events = f"{self.schema}.events"
        conn.execute(
            sql.SQL(
                "SELECT {}.create_hypertable(%s::regclass, 'id_ts', "
                "chunk_time_interval => %s::bigint)"
            ).format(ts),
            (events, DAY_NS),
        )
        # Policies on an integer time column need "now" in the column's unit (ns).
        conn.execute(
            sql.SQL(
                "CREATE FUNCTION {}.tickerml_now_ns() RETURNS BIGINT LANGUAGE SQL STABLE "
                "AS $$ SELECT (extract(epoch FROM now()) * 1000000000)::bigint $$"
            ).format(sql.Identifier(self.schema))
        )
        conn.execute(
            sql.SQL("SELECT {}.set_integer_now_func(%s::regclass, %s::regproc)").format(ts),
            (events, f"{self.schema}.tickerml_now_ns"),
        )
        conn.execute(
            "ALTER TABLE events SET (timescaledb.compress, "
            "timescaledb.compress_segmentby = 'sid', timescaledb.compress_orderby = 'seq')"
        )
        conn.execute(
            sql.SQL(
                "SELECT {}.add_compression_policy(%s::regclass, compress_after => %s::bigint)"
            ).format(ts),
            (events, self.hot_days * DAY_NS),
        )
        if self.retention_days > 0:
            conn.execute(
                sql.SQL(
                    "SELECT {}.add_retention_policy(%s::regclass, drop_after => %s::bigint)"
                ).format(ts),
                (events, self.retention_days * DAY_NS),
            )

    def partition_days(self, conn: psycopg.Connection[Any] | None = None) -> set[int]:
        """The UTC days (since 1970-01-01) that have a partition (``partitioned`` layout)."""
        conn = conn or self._writer()
        rows = conn.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = %s::regclass",
            (f"{self.schema}.events",),
        ).fetchall()
        days = set()
        for (name,) in rows:
            m = _PARTITION.fullmatch(name)
            if m is not None:
                day = date(int(m.group(1)), int(m.group(2)), int(m.group(3)))
                days.add((day - _EPOCH_DAY).days)
        return days

    def _ensure_partitions(self, conn: psycopg.Connection[Any], days: set[int]) -> None:
        """Create the partitions of ``days`` that do not exist yet, in the caller's
        transaction (so a rollback takes them back too).

        Each is created as a table of its own and then attached: ``ATTACH PARTITION``
        takes only a SHARE UPDATE EXCLUSIVE lock on ``events``, so readers (a long replay
        holding its snapshot) and other writers go on meanwhile, where ``CREATE TABLE ...
        PARTITION OF`` would queue behind every reader with an ACCESS EXCLUSIVE lock.
        There is no DEFAULT partition for the same reason: attaching a partition locks
        the default one ACCESS EXCLUSIVE (and scans it). A row of a day without a
        partition is refused by PostgreSQL (nothing is stored); the append then forgets
        what it knew of the partitions and tries again, creating it."""
        if self._days is not None and days <= self._days:
            return
        # One creator at a time; the lock is held until this transaction ends, and a
        # second creator then sees the first one's partitions (READ COMMITTED).
        lock = f"tickerml:{self.schema}:partitions"
        conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (lock,))
        existing = self.partition_days(conn)
        for day in sorted(days - existing):
            name = sql.Identifier(partition_name(day))
            lo, hi = partition_bounds(day)
            conn.execute(sql.SQL("CREATE TABLE {} (LIKE events INCLUDING DEFAULTS)").format(name))
            conn.execute(
                sql.SQL("CREATE INDEX {} ON {} " + _CANONICAL).format(
                    sql.Identifier(partition_name(day) + "_canonical"), name
                )
            )
            conn.execute(
                sql.SQL(
                    "ALTER TABLE events ATTACH PARTITION {} FOR VALUES FROM ({}) TO ({})"
                ).format(name, lo, hi)
            )
            existing.add(day)
        self._days = frozenset(existing)

    def _writer(self) -> psycopg.Connection[Any]:
        if self._conn is None:
            raise JournalError("journal is closed")
        return self._conn

    @contextlib.contextmanager
    def _snapshot(self, writer: bool) -> Iterator[psycopg.Connection[Any]]:
        """A connection whose statements all see one snapshot: the writer inside
        transaction(), else a pooled reader in a REPEATABLE READ READ ONLY transaction
        (ended, and the reader pooled again, when the block ends)."""
        if writer:
            yield self._writer()
            return
        conn = self._idle.pop() if self._idle else None
        if conn is None:
            conn = self._connect(autocommit=False)
            conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            conn.read_only = True
            self._readers.add(conn)
        try:
            yield conn
        finally:
            if conn.closed:
                self._readers.discard(conn)
            else:
                try:
                    conn.rollback()
                except psycopg.Error:
                    self._readers.discard(conn)
                    conn.close()
                else:
                    if self._conn is not None and len(self._idle) < _IDLE_READERS:
                        self._idle.append(conn)
                    else:
                        self._readers.discard(conn)
                        conn.close()

    def _reading(self) -> bool:
        """Check the journal is open; whether reads go to the writer (in a block)."""
        self._writer()
        return self._txn_depth > 0

    # -- append ----------------------------------------------------------------------

    def append_prepared(self, stream: str, events: Sequence[PreparedEvent]) -> list[int]:
        conn = self._writer()
        if not stream:
            raise JournalError("stream name must not be empty")
        if not events:
            return []
        # Each try is a transaction (a savepoint inside transaction()): a failure, or a
        # short insert count, rolls back everything it did.
        for attempt in range(_MAX_TRIES):
            days = self._days  # partitions created by a rolled-back try are gone again
            try:
                with conn.transaction():
                    seqs = self._append_in_txn(conn, stream, events, probe=attempt > 0)
                return seqs
            except _Retry:
                self._days = None if self._days is None else days
                continue
            except psycopg.Error as exc:
                self._days = days
                msg = f"append to {stream} failed (nothing stored): {str(exc).strip()}"
                raise JournalError(msg) from exc
        raise JournalError(
            f"append to {stream} failed (nothing stored): event ids kept colliding with "
            f"concurrent writers after {_MAX_TRIES} tries"
        )

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """Make every append (and read-model write) in the block one transaction: all
        committed at the end of the block, or none if it raises. Reads in the block see
        its appends (other connections do not). A nested block joins the outermost one."""
        conn = self._writer()
        if self._txn_depth:
            self._txn_depth += 1
            try:
                yield
            finally:
                self._txn_depth -= 1
            return
        self._txn_depth = 1
        days = self._days
        try:
            with conn.transaction():
                yield
        except psycopg.Error as exc:
            self._days = days
            raise JournalError(f"transaction failed (nothing stored): {exc}") from exc
        except BaseException:
            self._days = days  # partitions the block created were rolled back with it
            raise
        finally:
            self._txn_depth = 0

    def _lock_stream(
        self, conn: psycopg.Connection[Any], stream: str, first: PreparedEvent
    ) -> _Stream:
        """The stream's row, locked until the transaction ends (created if missing)."""
        row = conn.execute(_STREAM_ROW + " FOR UPDATE", (stream,)).fetchone()
        if row is None:
            conn.execute(
                "INSERT INTO streams (name, market, last_seq, last_hash, first_ts, last_ts, "
                "last_key, ordered, exchange, symbol) "
                "VALUES (%s, %s, 0, %s, %s, %s, %s, TRUE, %s, %s) "
                "ON CONFLICT (name) DO NOTHING",
                (
                    stream,
                    stream.startswith("md."),
                    GENESIS_HASH,
                    first.ts_recv,
                    first.ts_recv,
                    _KEY_ENC.encode(_NO_KEY),
                    first.exchange,
                    first.symbol,
                ),
            )
            row = conn.execute(_STREAM_ROW + " FOR UPDATE", (stream,)).fetchone()
            assert row is not None
        sid, market, last_seq, last_hash, first_ts, last_ts, key, ordered, ex, sym = row
        ts, prio, exchange, symbol, src_seq = msgspec.msgpack.decode(key)
        return _Stream(
            sid,
            market,
            last_seq,
            last_hash,
            first_ts,
            last_ts,
            (ts, prio, exchange, symbol, src_seq),
            ordered,
            ex,
            sym,
        )

    def _append_in_txn(
        self,
        conn: psycopg.Connection[Any],
        stream: str,
        events: Sequence[PreparedEvent],
        probe: bool,
    ) -> list[int]:
        """Assign seqs and hashes, stage, insert, move the tail; raises :class:`_Retry`
        if fewer rows went in than were staged. The caller owns the transaction."""
        st = self._lock_stream(conn, stream, events[0])
        sid, market = st.sid, st.market
        last_seq, prev = st.last_seq, st.last_hash
        first_ts, last_ts = st.first_ts, st.last_ts
        last_key, ordered = st.last_key, st.ordered
        exchange, symbol = st.exchange, st.symbol
        # event_id -> seq for ids already stored (when probing) or earlier in this batch.
        known: dict[bytes, int] = {}
        layout = self.layout
        if probe:
            ids = list({ev.event_id for ev in events})
            params: tuple[object, ...] = (ids,)
            if layout == "timescaledb":
                params = (ids, [id_time(i) for i in ids])
            for eid, seq in conn.execute(self._sql.probe, params):
                known[eid] = seq
        seqs: list[int] = []
        rows: list[tuple[object, ...]] = []
        add_seq = seqs.append
        add_row = rows.append
        prefix = _LEN_PREFIX
        blake2b = hashlib.blake2b
        for ev in events:
            eid = ev.event_id
            have = known.get(eid)
            if have is not None:
                add_seq(have)
                continue
            last_seq += 1
            ts = ev.ts_recv
            key = (ts, ev.priority, ev.exchange, ev.symbol, ev.src_seq)
            if ordered and key < last_key:
                ordered = False
            last_key = key
            if ts < first_ts:
                first_ts = ts
            if ts > last_ts:
                last_ts = ts
            if exchange is not None and (ev.exchange != exchange or ev.symbol != symbol):
                exchange = symbol = None
            # == chain_hash(prev, eid, payload), inlined for the hot path.
            h = blake2b(prev + prefix[len(eid)] + eid + ev.payload, digest_size=32).digest()
            if layout == "partitioned":
                add_row(
                    (
                        sid,
                        last_seq,
                        eid,
                        ev.ts_event,
                        ts,
                        ev.priority,
                        ev.kind,
                        ev.exchange,
                        ev.symbol,
                        ev.src_seq,
                        market,
                        ev.payload,
                        prev,
                        h,
                    )
                )
            elif layout == "plain":
                add_row(
                    (
                        sid,
                        last_seq,
                        eid,
                        ev.ts_event,
                        ts,
                        ev.priority,
                        ev.kind,
                        ev.exchange,
                        ev.symbol,
                        ev.src_seq,
                        market,
                        ev.payload,
                        h,
                    )
                )
            else:
                add_row(
                    (
                        sid,
                        last_seq,
                        eid,
                        id_time(eid),
                        ev.ts_event,
                        ts,
                        ev.priority,
                        ev.kind,
                        ev.exchange,
                        ev.symbol,
                        ev.src_seq,
                        market,
                        ev.payload,
                        prev,
                        h,
                    )
                )
            known[eid] = last_seq
            add_seq(last_seq)
            prev = h
        if not rows:
            return seqs
        tail = (
            last_seq,
            prev,
            first_ts,
            last_ts,
            _KEY_ENC.encode(last_key),
            ordered,
            exchange,
            symbol,
            sid,
        )
        if self.layout == "partitioned":
            # Ids are time-prefixed and batches come in time order: when the first and the
            # last id fall on one day, so (almost always) does every id between; a row of
            # another day finds no partition, and that append is retried after creating
            # the partitions of every id (the retry probes, and takes the full set).
            first_day, last_day = id_day(events[0].event_id), id_day(events[-1].event_id)
            if first_day == last_day and not probe:
                self._ensure_partitions(conn, {first_day})
            else:
                self._ensure_partitions(conn, {id_day(ev.event_id) for ev in events})
        statements = self._sql
        try:
            with conn.cursor() as cur:
                if not probe and len(rows) >= COPY_MIN_ROWS:
                    try:
                        with cur.copy(statements.copy_direct) as copy:
                            copy.set_types(statements.copy_types)
                            write_rows(copy, rows)
                    except psycopg.errors.UniqueViolation:
                        raise _Retry from None  # an id is stored: roll back, probe, stage
                    cur.execute(_UPDATE_TAIL, tail)
                    return seqs
                if len(rows) >= COPY_MIN_ROWS:
                    with cur.copy(statements.copy_staged) as copy:
                        copy.set_types(statements.copy_types)
                        write_rows(copy, rows)
                    cur.execute(statements.move, tail)
                else:
                    columns = [list(col) for col in zip(*rows, strict=True)]
                    cur.execute(statements.insert_arrays, (*columns, *tail))
                moved = cur.fetchone()
        except psycopg.errors.CheckViolation as exc:
            if "no partition" not in str(exc):
                raise
            # a day's partition this journal believed in is gone (detached, dropped by
            # an archive): forget what it knows, roll back and create it again
            self._days = None
            raise _Retry from None
        if moved is None or moved[0] != len(rows):
            raise _Retry  # an id is stored already: roll back, probe, try again
        return seqs

    # -- read ------------------------------------------------------------------------

    def read(
        self,
        stream: str,
        from_seq: int = 1,
        to_seq: int | None = None,
        from_ts: int | None = None,
        to_ts: int | None = None,
    ) -> Iterator[JournalRecord]:
        writer = self._reading()
        where, params = read_filters(stream, from_seq, to_seq, from_ts, to_ts, "%s")
        query = (
            f"SELECT {self._sql.read_columns} FROM events e JOIN streams s ON s.sid = e.sid "
            f"{self._sql.prev_join} WHERE {' AND '.join(where)} ORDER BY e.seq"
        )
        return self._records(writer, query, params)

    def _range_where(
        self,
        start_ns: int | None,
        end_ns: int | None,
        exchanges: Sequence[str] | None,
        symbols: Sequence[str] | None,
    ) -> tuple[str, list[object]] | None:
        """The WHERE clause of a range read, or ``None`` if nothing can match."""
        where = ["e.market"]
        params: list[object] = []
        if start_ns is not None:
            where.append("e.ts_recv >= %s")
            params.append(start_ns)
        if end_ns is not None:
            where.append("e.ts_recv < %s")
            params.append(end_ns)
        for col, values in (("exchange", exchanges), ("symbol", symbols)):
            if values is not None:
                vals = list(values)
                if not vals:
                    return None
                # Rows of no instrument (operator Halt/Resume in md.CONTROL) always pass.
                where.append(f"(e.{col} = ANY(%s) OR e.{col} = '')")
                params.append(vals)
        return " AND ".join(where), params

    def read_range(
        self,
        start_ns: int | None = None,
        end_ns: int | None = None,
        exchanges: Sequence[str] | None = None,
        symbols: Sequence[str] | None = None,
    ) -> Iterator[JournalRecord]:
        writer = self._reading()
        found = self._range_where(start_ns, end_ns, exchanges, symbols)
        if found is None:
            return iter(())
        where, params = found
        query = (
            f"SELECT {self._sql.read_columns} FROM events e {self._sql.prev_join} "
            f"WHERE {where} {_ORDER}"
        )
        return self._records(writer, query, params)

    def iter_payload_blocks(
        self,
        start_ns: int | None = None,
        end_ns: int | None = None,
        exchanges: Sequence[str] | None = None,
        symbols: Sequence[str] | None = None,
    ) -> Iterator[Sequence[tuple[bytes]]]:
        writer = self._reading()
        found = self._range_where(start_ns, end_ns, exchanges, symbols)
        if found is None:
            return iter(())
        where, params = found
        query = f"SELECT e.payload FROM events e WHERE {where} {_ORDER}"
        return self._blocks(writer, query, params)

    def _blocks(
        self, writer: bool, query: str, params: Sequence[object]
    ) -> Iterator[list[tuple[Any, ...]]]:
        """Rows of ``query`` in blocks, from one snapshot taken at the first block."""
        with self._snapshot(writer) as conn:
            if writer:
                rows = conn.execute(query, params, binary=True).fetchall()
                for i in range(0, len(rows), _FETCH):
                    yield rows[i : i + _FETCH]
                return
            with conn.cursor(name="tickerml_read", binary=True) as cur:
                cur.execute(query, params)
                while rows := cur.fetchmany(_FETCH):
                    yield rows

    def _records(
        self, writer: bool, query: str, params: Sequence[object]
    ) -> Iterator[JournalRecord]:
        """Rows of ``query`` (``_READ_COLUMNS``) as records, from one snapshot."""
        with self._snapshot(writer) as conn:
            names: dict[int, str] = dict(conn.execute("SELECT sid, name FROM streams").fetchall())
            archived = self._archive_state_in(conn)
            rows: Iterator[list[tuple[Any, ...]]]
            if writer:
                rows = iter([conn.execute(query, params, binary=True).fetchall()])
                yield from _to_records(rows, names, archived)
                return
            with conn.cursor(name="tickerml_read", binary=True) as cur:
                cur.execute(query, params)
                yield from _to_records(iter(lambda: cur.fetchmany(_FETCH), []), names, archived)

    # -- read models -------------------------------------------------------------------

    def _model_columns(
        self, conn: psycopg.Connection[Any], table: str
    ) -> tuple[ReadModelColumn, ...] | None:
        """The declared columns of read model ``table``; None if it does not exist."""
        row = conn.execute("SELECT columns FROM read_models WHERE name = %s", (table,)).fetchone()
        return None if row is None else _COLUMNS_CODEC[1].decode(row[0])

    @contextlib.contextmanager
    def _write_block(self, what: str) -> Iterator[psycopg.Connection[Any]]:
        """One transaction (a savepoint inside transaction()) around a read-model write."""
        conn = self._writer()
        try:
            with conn.transaction():
                yield conn
        except psycopg.Error as exc:
            raise JournalError(f"{what} failed (nothing changed): {str(exc).strip()}") from exc

    def write_read_model(
        self,
        table: str,
        session_id: str,
        columns: Sequence[ReadModelColumn],
        rows: Iterable[Sequence[ReadModelValue]],
    ) -> int:
        cols = tuple(columns)
        check_read_model(table, cols)
        checked = check_read_model_rows(table, cols, rows)
        name = sql.Identifier(table)
        with self._write_block(f"write read model {table}") as conn:
            stored = self._model_columns(conn, table)
            if stored is None:
                if conn.execute(
                    "SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                    "WHERE n.nspname = %s AND c.relname = %s",
                    (self.schema, table),
                ).fetchone():
                    raise JournalError(
                        f"PostgreSQL schema {self.schema}: {table!r} exists and is not a read model"
                    )
                decl = sql.SQL("").join(
                    sql.SQL(", {} {}").format(sql.Identifier(c.name), sql.SQL(_SQL_TYPES[c.type]))
                    for c in cols
                )
                conn.execute(
                    sql.SQL(
                        'CREATE TABLE {} (session_id TEXT COLLATE "C" NOT NULL, '
                        "row_no BIGINT NOT NULL{}, PRIMARY KEY (session_id, row_no))"
                    ).format(name, decl)
                )
                conn.execute(
                    "INSERT INTO read_models (name, columns) VALUES (%s, %s)",
                    (table, _COLUMNS_CODEC[0].encode(cols).decode()),
                )
            elif stored != cols:
                raise JournalError(read_model_mismatch(table, stored, cols))
            conn.execute(
                sql.SQL("DELETE FROM {} WHERE session_id = %s").format(name), (session_id,)
            )
            if checked:
                names = sql.SQL(", ").join(
                    sql.Identifier(n) for n in ("session_id", "row_no", *(c.name for c in cols))
                )
                types = ["text", "int8", *(_COPY_MODEL_TYPES[c.type] for c in cols)]
                with (
                    conn.cursor() as cur,
                    cur.copy(
                        sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(name, names)
                    ) as copy,
                ):
                    copy.set_types(types)
                    for n, row in enumerate(checked):
                        copy.write_row((session_id, n, *row))
        return len(checked)

    def read_read_model(self, table: str, session_id: str | None = None) -> ReadModelRows:
        writer = self._reading()
        check_read_model(table, ())
        with self._snapshot(writer) as conn:
            cols = self._model_columns(conn, table)
            if cols is None:
                return ReadModelRows(table=table, columns=(), rows=[])
            names = ("session_id", *(c.name for c in cols))
            query = sql.SQL("SELECT {} FROM {}").format(
                sql.SQL(", ").join(sql.Identifier(n) for n in names), sql.Identifier(table)
            )
            params: tuple[str, ...] = ()
            if session_id is not None:
                query += sql.SQL(" WHERE session_id = %s")
                params = (session_id,)
            rows = conn.execute(query + sql.SQL(" ORDER BY session_id, row_no"), params).fetchall()
        return ReadModelRows(table=table, columns=names, rows=rows)

    def drop_read_model(self, table: str) -> None:
        check_read_model(table, ())
        with self._write_block(f"drop read model {table}") as conn:
            if self._model_columns(conn, table) is not None:
                conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(table)))
                conn.execute("DELETE FROM read_models WHERE name = %s", (table,))

    # -- verify / inspect ------------------------------------------------------------

    def verify(self, stream: str) -> VerifyReport:
        writer = self._reading()
        with self._snapshot(writer) as conn:
            tail = conn.execute(
                "SELECT sid, last_seq, last_hash FROM streams WHERE name = %s", (stream,)
            ).fetchone()
            if tail is None:
                return VerifyReport(stream=stream, ok=True, rows=0)
            sid, last_seq, last_hash = tail
            archived, prev = archive_start(self._archive_state_in(conn), stream)
            query = self._sql.verify
            if writer:
                cur = conn.cursor(binary=True)
            else:
                cur = conn.cursor(name="tickerml_verify", binary=True)
            with cur:
                cur.execute(query, (sid,))
                n = archived
                bad: tuple[int, str] | None = None
                for r in (r for block in iter(lambda: cur.fetchmany(_FETCH), []) for r in block):
                    n += 1
                    # stored prev_hash (daily layouts) must equal the previous row's hash
                    rec = _record(stream, r[:10], r[11] if len(r) > 11 else prev, r[10])
                    bad = check_row(n, prev, rec)
                    if bad is None and len(r) > 12 and r[12] != id_time(r[1]):
                        bad = (
                            n,
                            f"seq {n}: id_ts {r[12]} is not the time prefix of its event id "
                            f"({id_time(r[1])}): it is in the wrong chunk",
                        )
                    if bad is not None:
                        break
                    prev = rec.hash
                if bad is None and (n != last_seq or prev != last_hash):
                    # The stream's recorded tail catches rows removed from the end.
                    bad = (
                        n + 1 if n < last_seq else n,
                        f"stream tail is seq {n} but the journal recorded seq {last_seq} "
                        "(rows missing at the end, or the tail hash was altered)",
                    )
                if bad is None:
                    return VerifyReport(stream=stream, ok=True, rows=n - archived)
            count = conn.execute("SELECT count(*) FROM events WHERE sid = %s", (sid,)).fetchone()
            return VerifyReport(
                stream=stream,
                ok=False,
                rows=0 if count is None else count[0],
                first_bad_seq=bad[0],
                reason=bad[1],
            )

    # -- cold tier -------------------------------------------------------------------

    def _archive_state_in(self, conn: psycopg.Connection[Any]) -> ArchiveState | None:
        row = conn.execute("SELECT value FROM meta WHERE key = %s", (ARCHIVE_META_KEY,)).fetchone()
        return decode_archive_state(None if row is None else row[0])

    def archive_state(self) -> ArchiveState | None:
        writer = self._reading()
        with self._snapshot(writer) as conn:
            return self._archive_state_in(conn)

    def commit_archive(self, state: ArchiveState, expected_generation: int) -> int:
        with self._write_block("archive") as conn:
            conn.execute(
                "SELECT pg_advisory_xact_lock(hashtext(%s))", (f"tickerml-archive:{self.schema}",)
            )
            current = self._archive_state_in(conn)
            found = 0 if current is None else current.generation
            if found != expected_generation:
                raise JournalError(
                    f"archive generation is {found}, expected {expected_generation} "
                    "(another archive ran meanwhile); nothing deleted"
                )
            deleted = 0
            for stream, b in sorted(state.boundaries.items()):
                done, _ = archive_start(current, stream)
                if b.seq == done:
                    continue
                row = conn.execute(
                    "SELECT s.sid, e.hash FROM streams s JOIN events e "
                    "ON e.sid = s.sid AND e.seq = %s WHERE s.name = %s FOR UPDATE OF s",
                    (b.seq, stream),
                ).fetchone()
                if b.seq < done or row is None or bytes(row[1]) != b.hash:
                    raise JournalError(
                        f"{stream}: seq {b.seq} is not in the database with the archived "
                        "row's hash; nothing deleted"
                    )
                cur = conn.execute(
                    "DELETE FROM events WHERE sid = %s AND seq <= %s", (row[0], b.seq)
                )
                if cur.rowcount != b.seq - done:
                    raise JournalError(
                        f"{stream}: expected to delete {b.seq - done} rows, found "
                        f"{cur.rowcount}; nothing deleted"
                    )
                deleted += int(cur.rowcount)
            conn.execute(
                "INSERT INTO meta (key, value) VALUES (%s, %s) "
                "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                (ARCHIVE_META_KEY, encode_archive_state(state)),
            )
        return deleted

    def streams(self) -> list[StreamInfo]:
        writer = self._reading()
        with self._snapshot(writer) as conn:
            rows = conn.execute(
                "SELECT name, last_seq, first_ts, last_ts FROM streams WHERE last_seq > 0 "
                "ORDER BY name"
            ).fetchall()
        return [
            StreamInfo(stream=s, count=last, first_ts=lo, last_ts=hi, last_seq=last)
            for s, last, lo, hi in rows
        ]

    def close(self) -> None:
        """Close every connection (rolling back an open transaction()); idempotent.
        Later calls raise :class:`JournalError`."""
        self._txn_depth = 0
        conn, self._conn = self._conn, None
        readers, self._readers, self._idle = self._readers, set(), []
        for c in [*readers, *([conn] if conn is not None else [])]:
            with contextlib.suppress(psycopg.Error):
                c.close()


def write_rows(copy: psycopg.Copy, rows: Sequence[tuple[object, ...]]) -> None:
    """Hand the staged rows to COPY (a function of its own so tests can fail mid-way)."""
    write = copy.write_row
    for row in rows:
        write(row)


def _to_records(
    blocks: Iterator[list[tuple[Any, ...]]],
    names: dict[int, str],
    archived: ArchiveState | None = None,
) -> Iterator[JournalRecord]:
    for rows in blocks:
        for row in rows:
            prev = row[11]
            name = names[row[0]]
            if prev is None:  # seq 1, or the previous row was archived
                done, h = archive_start(archived, name)
                prev = h if done and done == row[1] - 1 else GENESIS_HASH
            yield _record(name, row[1:11], prev, row[12])


def _record(stream: str, fields: Sequence[Any], prev_hash: bytes, h: bytes) -> JournalRecord:
    """A record from ``(seq, event_id, ts_event, ts_recv, priority, kind, exchange, symbol,
    src_seq, payload)`` and the two hashes."""
    seq, eid, ts_event, ts_recv, prio, kind, exchange, symbol, src_seq, payload = fields
    return JournalRecord(
        stream,
        seq,
        eid,
        ts_event,
        ts_recv,
        prio,
        kind,
        exchange,
        symbol,
        src_seq,
        payload,
        prev_hash,
        h,
    )
