"""SQLite journal: one file, WAL mode, hash-chained streams.

Durability
    ``synchronous=NORMAL`` (the default) with WAL is durable against a crash of the
    process (``kill -9``): a committed append is in the WAL, which the next open replays.
    It is *not* durable against power loss or an OS crash (the last commits may be lost,
    though the file stays consistent); pass ``synchronous="FULL"`` for that, at the cost
    of one fsync per append.
Concurrency
    One writer connection (appends, in ``BEGIN IMMEDIATE`` transactions) and one read-only
    connection (reads, verify), so a replay may iterate :meth:`read_range` while the same
    journal appends session outputs. Each read statement sees one committed snapshot.
    :meth:`SqliteJournal.transaction` groups appends into one transaction (the file's
    write lock is held for the whole block; reads in the block use the writer).
Schema (version 2)
    ``streams`` has one row per stream: its integer id, name, tail (last seq, last hash),
    time span, and whether every append so far kept the canonical order (``ordered``).
    ``events`` is clustered by ``(sid, seq)`` (``WITHOUT ROWID``); ``prev_hash`` is not
    stored, it is the previous row's ``hash`` and is filled in when reading. The
    canonical-order index is partial (market streams only) so session rows do not bloat
    it. Pages are 16 KiB: with WAL this more than doubles append speed over 4 KiB.
Read models
    Each read model is a real table of that name in the same file, created on first write:
    ``session_id TEXT, row_no INTEGER`` (primary key, clustered) and the declared
    columns (INTEGER, REAL, TEXT). ``read_models`` lists them with their declared
    columns (JSON), so a write with other columns is refused and a journal table can
    never be dropped by mistake. These tables are additive: the schema version stays 2.
Replay fast path
    When a range read can only match one market stream, holding one instrument, whose
    rows were appended in canonical order, it is read straight off the clustered key
    (about twice as fast as walking the canonical index).
Cold tier
    ``meta`` key ``archive`` holds the :class:`ArchiveState` (JSON); archived rows are
    deleted from ``events`` (the ``streams`` tails are unchanged), and ``verify`` starts
    each stream's chain at its boundary.
"""

from __future__ import annotations

import contextlib
import hashlib
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import msgspec

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

_SYNCHRONOUS = ("OFF", "NORMAL", "FULL", "EXTRA")

_SCHEMA = (
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID",
    """CREATE TABLE streams (
        sid       INTEGER PRIMARY KEY,
        name      TEXT    NOT NULL UNIQUE,
        market    INTEGER NOT NULL,
        last_seq  INTEGER NOT NULL,
        last_hash BLOB    NOT NULL,
        first_ts  INTEGER NOT NULL,
        last_ts   INTEGER NOT NULL,
        last_key  BLOB    NOT NULL,
        ordered   INTEGER NOT NULL,
        exchange  TEXT,
        symbol    TEXT
    )""",
    """CREATE TABLE events (
        sid       INTEGER NOT NULL,
        seq       INTEGER NOT NULL,
        event_id  BLOB    NOT NULL UNIQUE,
        ts_event  INTEGER NOT NULL,
        ts_recv   INTEGER NOT NULL,
        priority  INTEGER NOT NULL,
        kind      TEXT    NOT NULL,
        exchange  TEXT    NOT NULL,
        symbol    TEXT    NOT NULL,
        src_seq   INTEGER NOT NULL,
        market    INTEGER NOT NULL,
        payload   BLOB    NOT NULL,
        hash      BLOB    NOT NULL,
        PRIMARY KEY (sid, seq)
    ) WITHOUT ROWID""",
    # Canonical replay order over market streams. Queries repeat ``market = 1`` so that
    # SQLite may use this partial index.
    """CREATE INDEX events_canonical
        ON events (ts_recv, priority, exchange, symbol, src_seq, sid, seq)
        WHERE market = 1""",
)

_EVENT_COLUMNS = (
    "sid, seq, event_id, ts_event, ts_recv, priority, kind, exchange, symbol, src_seq, "
    "market, payload, hash"
)
_INSERT = f"INSERT INTO events ({_EVENT_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)"
# Read columns: the record fields in JournalRecord order, prev_hash filled in later.
_READ_COLUMNS = (
    "e.sid, e.seq, e.event_id, e.ts_event, e.ts_recv, e.priority, e.kind, e.exchange, "
    "e.symbol, e.src_seq, e.payload, e.hash"
)
# The last tie-break (same time, priority, instrument and source seq in two streams) is
# the stream's id, i.e. its creation order, so that the index alone gives the order.
_ORDER = "ORDER BY e.ts_recv, e.priority, e.exchange, e.symbol, e.src_seq, e.sid, e.seq"
_ID_CHUNK = 500
_FETCH = 8192
_KEY_ENC = msgspec.msgpack.Encoder()
_NO_KEY = _KEY_ENC.encode((-1, -1, "", "", -1))

_LEN_PREFIX = tuple(bytes((n,)) for n in range(256))
"""``chain_hash``'s one-byte event_id length prefix, precomputed."""

_TRANSACTION = ("BEGIN IMMEDIATE", "COMMIT")
_SAVEPOINT = ("SAVEPOINT append_prepared", "RELEASE append_prepared")

_READ_MODELS_DDL = (
    "CREATE TABLE IF NOT EXISTS read_models "
    "(name TEXT PRIMARY KEY, columns TEXT NOT NULL) WITHOUT ROWID"
)
_SQL_TYPES = {"int": "INTEGER", "float": "REAL", "text": "TEXT"}
_COLUMNS_CODEC = (msgspec.json.Encoder(), msgspec.json.Decoder(tuple[ReadModelColumn, ...]))


class _Stream(msgspec.Struct):
    """A stream's row in ``streams``, as the writer keeps it."""

    sid: int
    name: str
    market: int
    last_seq: int
    last_hash: bytes
    first_ts: int
    last_ts: int
    last_key: tuple[int, int, str, str, int]
    ordered: int
    exchange: str | None
    symbol: str | None


class SqliteJournal(Journal):
    """Journal in a SQLite file (created if missing). Not thread-safe.

    ``synchronous`` is SQLite's ``PRAGMA synchronous`` for the writer: ``NORMAL``
    survives a process crash, ``FULL`` also survives power loss.
    """

    def __init__(
        self,
        path: str | Path,
        synchronous: str = "NORMAL",
        checkpoint_interval_s: float | None = 0.5,
    ) -> None:
        sync = synchronous.upper()
        if sync not in _SYNCHRONOUS:
            raise JournalError(f"synchronous must be one of {_SYNCHRONOUS}, not {synchronous!r}")
        self.path = Path(path)
        if str(path) == ":memory:":
            raise JournalError("SqliteJournal needs a file; use MemoryJournal for memory")
        self._conn: sqlite3.Connection | None = None
        self._rconn: sqlite3.Connection | None = None
        self._checkpointer: _Checkpointer | None = None
        self._in_sql: dict[int, str] = {}
        self._txn_depth = 0  # > 0 inside transaction()
        try:
            self._conn = self._connect()
            self._conn.execute("PRAGMA page_size=16384")  # only takes effect on a new file
            mode = self._conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise JournalError(f"{self.path}: cannot enable WAL mode (got {mode!r})")
            self._conn.execute(f"PRAGMA synchronous={sync}")
            if checkpoint_interval_s is None:
                # Checkpoint inline every 64 MiB of WAL instead of 4 MiB.
                self._conn.execute("PRAGMA wal_autocheckpoint=4096")
            else:
                # Checkpoints run in a background thread (copying the WAL into the file and
                # its fsync no longer stall an append); inline only as a safety net at
                # 1 GiB of WAL, should the background ever fall behind.
                self._conn.execute("PRAGMA wal_autocheckpoint=65536")
            self._init_schema(self._conn)
            self._rconn = self._connect()
            self._rconn.execute("PRAGMA query_only=ON")
            if checkpoint_interval_s is not None:
                self._checkpointer = _Checkpointer(self.path, checkpoint_interval_s)
                self._checkpointer.start()
        except sqlite3.Error as exc:
            self.close()
            raise JournalError(f"{self.path}: cannot open journal: {exc}") from exc
        except BaseException:
            self.close()
            raise

    # -- connections -----------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, cached_statements=256)
        conn.execute("PRAGMA busy_timeout=10000")
        conn.execute("PRAGMA cache_size=-131072")  # KiB: 128 MiB
        conn.execute("PRAGMA temp_store=MEMORY")
        return conn

    def _init_schema(self, conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            tables = {
                r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
            }
            if "meta" not in tables:
                if tables:
                    names = ", ".join(sorted(tables))
                    raise JournalError(f"{self.path} is not a journal (has tables: {names})")
                for stmt in _SCHEMA:
                    conn.execute(stmt)
                conn.execute(
                    "INSERT INTO meta (key, value) VALUES ('schema_version', ?)",
                    (str(SCHEMA_VERSION),),
                )
            else:
                row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
                found = None if row is None else row[0]
                if found != str(SCHEMA_VERSION):
                    raise JournalError(
                        f"{self.path}: journal schema version {found} is not supported "
                        f"(this code reads version {SCHEMA_VERSION})"
                    )
            conn.execute("COMMIT")
        except BaseException:
            _rollback(conn)
            raise

    def _writer(self) -> sqlite3.Connection:
        if self._conn is None:
            raise JournalError("journal is closed")
        return self._conn

    def _reader(self) -> sqlite3.Connection:
        """The read connection; inside transaction() the writer, to see the block's rows."""
        if self._rconn is None or self._conn is None:
            raise JournalError("journal is closed")
        return self._conn if self._txn_depth else self._rconn

    def _in_clause(self, n: int) -> str:
        sql = self._in_sql.get(n)
        if sql is None:
            marks = ",".join("?" * n)
            sql = f"SELECT event_id, seq FROM events WHERE event_id IN ({marks})"
            self._in_sql[n] = sql
        return sql

    # -- append ----------------------------------------------------------------------

    def append_prepared(self, stream: str, events: Sequence[PreparedEvent]) -> list[int]:
        conn = self._writer()
        if not stream:
            raise JournalError("stream name must not be empty")
        if not events:
            return []
        # Inside transaction() the append is a savepoint of the outer transaction, so a
        # failed append still leaves nothing behind and the block may go on.
        outer = self._txn_depth > 0
        begin, end = _SAVEPOINT if outer else _TRANSACTION
        # First try without probing for stored ids (the common case: none are stored);
        # the UNIQUE(event_id) index catches any, and the second try probes for them.
        for probe in (False, True):
            try:
                conn.execute(begin)
            except sqlite3.Error as exc:
                raise JournalError(f"append to {stream}: cannot begin: {exc}") from exc
            try:
                seqs = self._append_in_txn(conn, stream, events, probe)
                conn.execute(end)
                return seqs
            except sqlite3.Error as exc:
                _abort(conn, outer)
                repeat = isinstance(exc, sqlite3.IntegrityError) and "events.event_id" in str(exc)
                if probe or not repeat:
                    msg = f"append to {stream} failed (nothing stored): {exc}"
                    raise JournalError(msg) from exc
            except BaseException:
                _abort(conn, outer)
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """Make every append in the block one transaction: all committed at the end of
        the block, or none if it raises. Reads in the block see its appends (other
        connections do not). A nested block joins the outermost one."""
        conn = self._writer()
        if self._txn_depth:
            self._txn_depth += 1
            try:
                yield
            finally:
                self._txn_depth -= 1
            return
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise JournalError(f"cannot begin a transaction: {exc}") from exc
        self._txn_depth = 1
        try:
            yield
        except BaseException:
            self._txn_depth = 0
            _abort(conn, outer=False)
            raise
        self._txn_depth = 0
        try:
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            _abort(conn, outer=False)
            raise JournalError(f"transaction failed (nothing stored): {exc}") from exc

    def _stored_ids(self, conn: sqlite3.Connection, ids: list[bytes]) -> dict[bytes, int]:
        """event_id -> seq for those of ``ids`` already stored, probed in chunks."""
        known: dict[bytes, int] = {}
        for i in range(0, len(ids), _ID_CHUNK):
            chunk = [bytearray(x) for x in ids[i : i + _ID_CHUNK]]
            for eid, seq in conn.execute(self._in_clause(len(chunk)), chunk):
                known[bytes(eid)] = seq
        return known

    def _stream_row(self, conn: sqlite3.Connection, stream: str) -> _Stream | None:
        row = conn.execute(
            "SELECT sid, name, market, last_seq, last_hash, first_ts, last_ts, last_key, "
            "ordered, exchange, symbol FROM streams WHERE name = ?",
            (stream,),
        ).fetchone()
        if row is None:
            return None
        ts, prio, exchange, symbol, src_seq = msgspec.msgpack.decode(row[7])
        sid, name, market, last_seq, last_hash, first_ts, last_ts = row[:7]
        return _Stream(
            sid,
            name,
            market,
            last_seq,
            last_hash,
            first_ts,
            last_ts,
            (ts, prio, exchange, symbol, src_seq),
            *row[8:],
        )

    def _append_in_txn(
        self, conn: sqlite3.Connection, stream: str, events: Sequence[PreparedEvent], probe: bool
    ) -> list[int]:
        """Assign seqs and hashes, insert, update the stream's tail; the caller owns the
        transaction.

        Blobs are bound as ``bytearray``: CPython 3.11's sqlite3 binds ``bytes`` through
        its adaptation protocol, about three times slower than ``bytearray``.
        """
        st = self._stream_row(conn, stream)
        if st is None:
            first = events[0]
            cur = conn.execute(
                "INSERT INTO streams (name, market, last_seq, last_hash, first_ts, last_ts, "
                "last_key, ordered, exchange, symbol) VALUES (?,?,?,?,?,?,?,?,?,?)",
                (
                    stream,
                    int(stream.startswith("md.")),
                    0,
                    bytearray(GENESIS_HASH),
                    first.ts_recv,
                    first.ts_recv,
                    _NO_KEY,
                    1,
                    first.exchange,
                    first.symbol,
                ),
            )
            sid = cur.lastrowid
            assert sid is not None
            st = _Stream(
                sid,
                stream,
                int(stream.startswith("md.")),
                0,
                GENESIS_HASH,
                first.ts_recv,
                first.ts_recv,
                (-1, -1, "", "", -1),
                1,
                first.exchange,
                first.symbol,
            )
        sid, market = st.sid, st.market
        last_seq, prev = st.last_seq, st.last_hash
        first_ts, last_ts = st.first_ts, st.last_ts
        last_key, ordered = st.last_key, st.ordered
        exchange, symbol = st.exchange, st.symbol
        # event_id -> seq for ids already stored (when probing) or earlier in this batch.
        known = self._stored_ids(conn, [ev.event_id for ev in events]) if probe else {}
        seqs: list[int] = []
        rows: list[tuple[object, ...]] = []
        add_seq = seqs.append
        add_row = rows.append
        prefix = _LEN_PREFIX
        blake2b = hashlib.blake2b
        blob = bytearray
        for ev in events:
            eid = ev.event_id
            have = known.get(eid)
            if have is not None:
                add_seq(have)
                continue
            last_seq += 1
            payload = ev.payload
            ts = ev.ts_recv
            key = (ts, ev.priority, ev.exchange, ev.symbol, ev.src_seq)
            if ordered and key < last_key:
                ordered = 0
            last_key = key
            if ts < first_ts:
                first_ts = ts
            if ts > last_ts:
                last_ts = ts
            if exchange is not None and (ev.exchange != exchange or ev.symbol != symbol):
                exchange = symbol = None
            # == chain_hash(prev, eid, payload), inlined for the hot path.
            h = blake2b(prev + prefix[len(eid)] + eid + payload, digest_size=32).digest()
            add_row(
                (
                    sid,
                    last_seq,
                    blob(eid),
                    ev.ts_event,
                    ts,
                    ev.priority,
                    ev.kind,
                    ev.exchange,
                    ev.symbol,
                    ev.src_seq,
                    market,
                    blob(payload),
                    blob(h),
                )
            )
            if probe:  # without probing, a repeat within the batch trips UNIQUE(event_id)
                known[eid] = last_seq
            add_seq(last_seq)
            prev = h
        if rows:
            conn.executemany(_INSERT, rows)
            conn.execute(
                "UPDATE streams SET last_seq = ?, last_hash = ?, first_ts = ?, last_ts = ?, "
                "last_key = ?, ordered = ?, exchange = ?, symbol = ? WHERE sid = ?",
                (
                    last_seq,
                    blob(prev),
                    first_ts,
                    last_ts,
                    _KEY_ENC.encode(last_key),
                    ordered,
                    exchange,
                    symbol,
                    sid,
                ),
            )
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
        conn = self._reader()
        where, params = read_filters(stream, from_seq, to_seq, from_ts, to_ts, "?")
        sql = (
            f"SELECT {_READ_COLUMNS} FROM events e JOIN streams s ON s.sid = e.sid "
            f"WHERE {' AND '.join(where)} ORDER BY e.seq"
        )
        return _records(conn, sql, params, self._names(conn))

    def _names(self, conn: sqlite3.Connection) -> dict[int, str]:
        return dict(conn.execute("SELECT sid, name FROM streams"))

    def _range_where(
        self,
        start_ns: int | None,
        end_ns: int | None,
        exchanges: Sequence[str] | None,
        symbols: Sequence[str] | None,
    ) -> tuple[list[str], list[object]] | None:
        where = ["e.market = 1"]
        params: list[object] = []
        if start_ns is not None:
            where.append("e.ts_recv >= ?")
            params.append(start_ns)
        if end_ns is not None:
            where.append("e.ts_recv < ?")
            params.append(end_ns)
        for col, values in (("exchange", exchanges), ("symbol", symbols)):
            if values is not None:
                vals = list(values)
                if not vals:
                    return None
                # Unary + : with a single value SQLite would treat the term as col = ?,
                # drop col from the ORDER BY and sort; as a plain filter it does not.
                # Rows of no instrument (operator Halt/Resume in md.CONTROL) always pass.
                where.append(f"(+e.{col} IN ({','.join('?' * len(vals))}) OR e.{col} = '')")
                params.extend(vals)
        return where, params

    def _range_sql(
        self,
        columns: str,
        start_ns: int | None = None,
        end_ns: int | None = None,
        exchanges: Sequence[str] | None = None,
        symbols: Sequence[str] | None = None,
    ) -> tuple[str, list[object]] | None:
        """The canonical-order query over market rows, or ``None`` if nothing can match."""
        query = self._range_where(start_ns, end_ns, exchanges, symbols)
        if query is None:
            return None
        where, params = query
        # INDEXED BY: fail loudly rather than silently sort if the plan ever changes.
        sql = (
            f"SELECT {columns} FROM events e INDEXED BY events_canonical "
            f"WHERE {' AND '.join(where)} {_ORDER}"
        )
        return sql, params

    def read_range(
        self,
        start_ns: int | None = None,
        end_ns: int | None = None,
        exchanges: Sequence[str] | None = None,
        symbols: Sequence[str] | None = None,
    ) -> Iterator[JournalRecord]:
        conn = self._reader()
        query = self._range_sql(_READ_COLUMNS, start_ns, end_ns, exchanges, symbols)
        return iter(()) if query is None else _records(conn, *query, self._names(conn))

    def iter_payload_blocks(
        self,
        start_ns: int | None = None,
        end_ns: int | None = None,
        exchanges: Sequence[str] | None = None,
        symbols: Sequence[str] | None = None,
    ) -> Iterator[Sequence[tuple[bytes]]]:
        conn = self._reader()
        query = self._range_sql("e.payload", start_ns, end_ns, exchanges, symbols)
        if query is None:
            return iter(())
        fast = self._single_ordered_stream(conn, exchanges, symbols)
        if fast is not None:
            lo, hi = self._seq_bounds(conn, fast, start_ns, end_ns)
            sql = "SELECT payload FROM events WHERE sid = ? AND seq >= ? AND seq <= ? ORDER BY seq"
            return _payload_blocks(conn, sql, [fast, lo, hi])
        return _payload_blocks(conn, *query)

    def _single_ordered_stream(
        self,
        conn: sqlite3.Connection,
        exchanges: Sequence[str] | None,
        symbols: Sequence[str] | None,
    ) -> int | None:
        """The sid of the only market stream the filters can match, if it holds one
        instrument and was appended in canonical order; else None."""
        rows = conn.execute(
            "SELECT sid, ordered, exchange, symbol FROM streams WHERE market = 1"
        ).fetchall()
        if any(ex is None or ex == "" for _, _, ex, _ in rows):
            # a stream with several instruments (filters need the index), or the control
            # stream, whose rows every range includes
            return None
        matching = [
            (sid, ordered)
            for sid, ordered, ex, sym in rows
            if (exchanges is None or ex in exchanges) and (symbols is None or sym in symbols)
        ]
        if len(matching) == 1 and matching[0][1]:
            return int(matching[0][0])
        return None

    def _seq_bounds(
        self, conn: sqlite3.Connection, sid: int, start_ns: int | None, end_ns: int | None
    ) -> tuple[int, int]:
        """Seqs of an ordered stream whose ts_recv lies in [start_ns, end_ns).

        In an ordered stream ts_recv never decreases with seq, so each bound is a binary
        search over seq by primary-key lookups (about 20 of them for a million rows)."""
        last_seq, first_ts, last_ts = conn.execute(
            "SELECT last_seq, first_ts, last_ts FROM streams WHERE sid = ?", (sid,)
        ).fetchone()

        # rows up to an archive boundary are no longer here: search from the first one left
        (least,) = conn.execute("SELECT min(seq) FROM events WHERE sid = ?", (sid,)).fetchone()
        if least is None:
            return 1, 0
        first_seq = int(least)

        def first_seq_at_or_after(ts: int) -> int:
            """The smallest seq whose ts_recv >= ts (last_seq + 1 if none)."""
            lo, hi = first_seq, last_seq + 1
            while lo < hi:
                mid = (lo + hi) // 2
                (t,) = conn.execute(
                    "SELECT ts_recv FROM events WHERE sid = ? AND seq = ?", (sid, mid)
                ).fetchone()
                if t < ts:
                    lo = mid + 1
                else:
                    hi = mid
            return lo

        lo = 1 if start_ns is None or start_ns <= first_ts else first_seq_at_or_after(start_ns)
        hi = last_seq if end_ns is None or end_ns > last_ts else first_seq_at_or_after(end_ns) - 1
        return lo, hi

    # -- read models -------------------------------------------------------------------

    def _model_columns(
        self, conn: sqlite3.Connection, table: str
    ) -> tuple[ReadModelColumn, ...] | None:
        """The declared columns of read model ``table``; None if it does not exist."""
        if (
            conn.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'read_models'"
            ).fetchone()
            is None
        ):
            return None
        row = conn.execute("SELECT columns FROM read_models WHERE name = ?", (table,)).fetchone()
        return None if row is None else _COLUMNS_CODEC[1].decode(row[0])

    @contextlib.contextmanager
    def _write_block(self, what: str) -> Iterator[sqlite3.Connection]:
        """One transaction (a savepoint inside transaction()) around a read-model write."""
        conn = self._writer()
        outer = self._txn_depth > 0
        begin, end = ("SAVEPOINT read_model", "RELEASE read_model") if outer else _TRANSACTION
        try:
            conn.execute(begin)
        except sqlite3.Error as exc:
            raise JournalError(f"{what}: cannot begin: {exc}") from exc
        try:
            yield conn
            conn.execute(end)
        except BaseException as exc:
            if outer:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK TO read_model")
                    conn.execute("RELEASE read_model")
            else:
                _rollback(conn)
            if isinstance(exc, sqlite3.Error):
                raise JournalError(f"{what} failed (nothing changed): {exc}") from exc
            raise

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
        with self._write_block(f"write read model {table}") as conn:
            stored = self._model_columns(conn, table)
            if stored is None:
                conn.execute(_READ_MODELS_DDL)
                if conn.execute("SELECT 1 FROM sqlite_master WHERE name = ?", (table,)).fetchone():
                    raise JournalError(f"{self.path}: {table!r} exists and is not a read model")
                decl = "".join(f", {c.name} {_SQL_TYPES[c.type]}" for c in cols)
                conn.execute(
                    f"CREATE TABLE {table} (session_id TEXT NOT NULL, row_no INTEGER NOT NULL"
                    f"{decl}, PRIMARY KEY (session_id, row_no)) WITHOUT ROWID"
                )
                conn.execute(
                    "INSERT INTO read_models (name, columns) VALUES (?, ?)",
                    (table, _COLUMNS_CODEC[0].encode(cols).decode()),
                )
            elif stored != cols:
                raise JournalError(read_model_mismatch(table, stored, cols))
            conn.execute(f"DELETE FROM {table} WHERE session_id = ?", (session_id,))
            names = ", ".join(["session_id", "row_no", *(c.name for c in cols)])
            marks = ",".join("?" * (len(cols) + 2))
            conn.executemany(
                f"INSERT INTO {table} ({names}) VALUES ({marks})",
                [(session_id, n, *row) for n, row in enumerate(checked)],
            )
        return len(checked)

    def read_read_model(self, table: str, session_id: str | None = None) -> ReadModelRows:
        conn = self._reader()
        check_read_model(table, ())
        cols = self._model_columns(conn, table)
        if cols is None:
            return ReadModelRows(table=table, columns=(), rows=[])
        names = ("session_id", *(c.name for c in cols))
        sql = f"SELECT {', '.join(names)} FROM {table}"
        params: tuple[str, ...] = ()
        if session_id is not None:
            sql += " WHERE session_id = ?"
            params = (session_id,)
        rows = conn.execute(sql + " ORDER BY session_id, row_no", params).fetchall()
        return ReadModelRows(table=table, columns=names, rows=rows)

    def drop_read_model(self, table: str) -> None:
        check_read_model(table, ())
        with self._write_block(f"drop read model {table}") as conn:
            if self._model_columns(conn, table) is not None:
                conn.execute(f"DROP TABLE IF EXISTS {table}")
                conn.execute("DELETE FROM read_models WHERE name = ?", (table,))

    # -- verify / inspect ------------------------------------------------------------

    def verify(self, stream: str) -> VerifyReport:
        conn = self._reader()
        st = self._stream_row(conn, stream)
        if st is None:
            return VerifyReport(stream=stream, ok=True, rows=0)
        cur = conn.execute(
            f"SELECT {_READ_COLUMNS} FROM events e JOIN streams s ON s.sid = e.sid "
            "WHERE e.sid = ? ORDER BY e.seq",
            (st.sid,),
        )
        try:
            archived, prev = archive_start(self._archive_state(conn), stream)
            n = archived
            bad: tuple[int, str] | None = None
            for row in cur:
                n += 1
                rec = _record(row, stream, prev)
                bad = check_row(n, prev, rec)
                if bad is not None:
                    break
                prev = rec.hash
            if bad is None and (n != st.last_seq or prev != st.last_hash):
                # The stream's recorded tail catches rows removed from the end.
                bad = (
                    n + 1 if n < st.last_seq else n,
                    f"stream tail is seq {n} but the journal recorded seq {st.last_seq} "
                    "(rows missing at the end, or the tail hash was altered)",
                )
            if bad is None:
                return VerifyReport(stream=stream, ok=True, rows=n - archived)
            n += sum(1 for _ in cur)  # rows: every row of the stream, checked or not
            return VerifyReport(
                stream=stream, ok=False, rows=n - archived, first_bad_seq=bad[0], reason=bad[1]
            )
        finally:
            cur.close()

    # -- cold tier -------------------------------------------------------------------

    def _archive_state(self, conn: sqlite3.Connection) -> ArchiveState | None:
        row = conn.execute("SELECT value FROM meta WHERE key = ?", (ARCHIVE_META_KEY,)).fetchone()
        return decode_archive_state(None if row is None else row[0])

    def archive_state(self) -> ArchiveState | None:
        return self._archive_state(self._reader())

    def commit_archive(self, state: ArchiveState, expected_generation: int) -> int:
        with self._write_block("archive") as conn:
            current = self._archive_state(conn)
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
                    "SELECT e.sid, e.hash FROM streams s JOIN events e "
                    "ON e.sid = s.sid AND e.seq = ? WHERE s.name = ?",
                    (b.seq, stream),
                ).fetchone()
                if b.seq < done or row is None or bytes(row[1]) != b.hash:
                    raise JournalError(
                        f"{stream}: seq {b.seq} is not in the database with the archived "
                        "row's hash; nothing deleted"
                    )
                cur = conn.execute("DELETE FROM events WHERE sid = ? AND seq <= ?", (row[0], b.seq))
                if cur.rowcount != b.seq - done:
                    raise JournalError(
                        f"{stream}: expected to delete {b.seq - done} rows, found "
                        f"{cur.rowcount}; nothing deleted"
                    )
                deleted += int(cur.rowcount)
            conn.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                (ARCHIVE_META_KEY, encode_archive_state(state)),
            )
        return deleted

    def streams(self) -> list[StreamInfo]:
        conn = self._reader()
        rows = conn.execute(
            "SELECT name, last_seq, first_ts, last_ts FROM streams WHERE last_seq > 0 ORDER BY name"
        ).fetchall()
        return [
            StreamInfo(stream=s, count=last, first_ts=lo, last_ts=hi, last_seq=last)
            for s, last, lo, hi in rows
        ]

    def close(self) -> None:
        """Close both connections (rolling back an open transaction()); idempotent.
        Later calls raise :class:`JournalError`."""
        self._txn_depth = 0
        checkpointer, self._checkpointer = getattr(self, "_checkpointer", None), None
        if checkpointer is not None:
            checkpointer.close()
        for attr in ("_rconn", "_conn"):
            conn: sqlite3.Connection | None = getattr(self, attr, None)
            if conn is not None:
                setattr(self, attr, None)
                _rollback(conn)
                conn.close()


class _Checkpointer(threading.Thread):
    """Runs ``PRAGMA wal_checkpoint(PASSIVE)`` every ``interval`` s on its own connection.

    A passive checkpoint never blocks the writer or readers; SQLite releases the GIL
    while it copies pages and syncs, so on two cores the writer keeps appending.
    """

    def __init__(self, path: Path, interval: float) -> None:
        super().__init__(name=f"sqlite-checkpoint:{path.name}", daemon=True)
        self.path = path
        self.interval = interval
        self._stop_event = threading.Event()

    def run(self) -> None:
        try:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error:
            return  # the writer's safety-net auto-checkpoint still bounds the WAL
        try:
            conn.execute("PRAGMA busy_timeout=1000")
            while not self._stop_event.wait(self.interval):
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            with contextlib.suppress(sqlite3.Error):
                conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        finally:
            conn.close()

    def close(self) -> None:
        self._stop_event.set()
        self.join(10.0)


def _abort(conn: sqlite3.Connection, outer: bool) -> None:
    """Undo a failed append: its savepoint inside transaction(), else its transaction."""
    if not outer:
        _rollback(conn)
        return
    with contextlib.suppress(sqlite3.Error):
        conn.execute("ROLLBACK TO append_prepared")
        conn.execute("RELEASE append_prepared")


def _rollback(conn: sqlite3.Connection) -> None:
    """Roll back an open transaction, if any, without masking the error in flight."""
    with contextlib.suppress(sqlite3.Error):
        if conn.in_transaction:
            conn.execute("ROLLBACK")


def _record(row: Any, stream: str, prev_hash: bytes) -> JournalRecord:
    (_sid, seq, eid, ts_event, ts_recv, prio, kind, exchange, symbol, src_seq, payload, h) = row
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


def _records(
    conn: sqlite3.Connection, sql: str, params: list[object], names: dict[int, str]
) -> Iterator[JournalRecord]:
    """Rows as records, fetched in blocks; ``prev_hash`` is the previous row's hash in
    the same stream (looked up once per stream when a read starts mid-stream)."""
    cur = conn.execute(sql, params)
    prev_of: dict[int, tuple[int, bytes]] = {}
    row: Any
    try:
        fetch = cur.fetchmany
        while rows := fetch(_FETCH):
            for row in rows:
                sid, seq = row[0], row[1]
                last = prev_of.get(sid)
                if last is not None and last[0] == seq - 1:
                    prev = last[1]
                elif seq == 1:
                    prev = GENESIS_HASH
                else:
                    found = conn.execute(
                        "SELECT hash FROM events WHERE sid = ? AND seq = ?",
                        (sid, seq - 1),
                    ).fetchone()
                    if found is not None:
                        prev = found[0]
                    else:  # the previous row was archived (or is missing)
                        meta = conn.execute(
                            "SELECT value FROM meta WHERE key = ?", (ARCHIVE_META_KEY,)
                        ).fetchone()
                        state = decode_archive_state(None if meta is None else meta[0])
                        done, h = archive_start(state, names[sid])
                        prev = h if done == seq - 1 else GENESIS_HASH
                rec = _record(row, names[sid], prev)
                prev_of[sid] = (seq, rec.hash)
                yield rec
    finally:
        cur.close()


def _payload_blocks(
    conn: sqlite3.Connection, sql: str, params: list[object]
) -> Iterator[Sequence[tuple[bytes]]]:
    """Single-column rows ``(payload,)``, fetched in blocks."""
    cur = conn.execute(sql, params)
    try:
        fetch = cur.fetchmany
        while rows := fetch(_FETCH):
            yield rows
    finally:
        cur.close()
