"""SQLite journal: one file, WAL mode, one ``events`` table, hash-chained per stream.

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
Schema
    ``meta(key, value)`` holds ``schema_version``; opening a file of another version
    raises :class:`JournalError`. The canonical-order index is partial (market streams
    only, ``stream GLOB 'md.*'``) so session rows do not bloat it, and covering for
    payloads (market payloads are stored twice, about +20% file size) so that
    :meth:`SqliteJournal.iter_payloads` is a pure index scan.
"""

from __future__ import annotations

import contextlib
import hashlib
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path

from adapters.journal.base import (
    GENESIS_HASH,
    Journal,
    JournalError,
    JournalRecord,
    PreparedEvent,
    StreamInfo,
    VerifyReport,
)
from adapters.journal.memory import check_row

SCHEMA_VERSION = 1

_SYNCHRONOUS = ("OFF", "NORMAL", "FULL", "EXTRA")

_SCHEMA = (
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID",
    """CREATE TABLE events (
        stream    TEXT    NOT NULL,
        seq       INTEGER NOT NULL,
        event_id  BLOB    NOT NULL UNIQUE,
        ts_event  INTEGER NOT NULL,
        ts_recv   INTEGER NOT NULL,
        priority  INTEGER NOT NULL,
        kind      TEXT    NOT NULL,
        exchange  TEXT    NOT NULL,
        symbol    TEXT    NOT NULL,
        src_seq   INTEGER NOT NULL,
        payload   BLOB    NOT NULL,
        prev_hash BLOB    NOT NULL,
        hash      BLOB    NOT NULL,
        PRIMARY KEY (stream, seq)
    )""",
    # Canonical replay order, market streams only. Queries must repeat the exact
    # ``stream GLOB 'md.*'`` term for SQLite to use this partial index. ``payload`` is
    # carried so that iter_payloads (the replay hot path) never visits the table.
    """CREATE INDEX events_canonical
        ON events (ts_recv, priority, exchange, symbol, src_seq, stream, seq, payload)
        WHERE stream GLOB 'md.*'""",
)

_COLUMNS = (
    "stream, seq, event_id, ts_event, ts_recv, priority, kind, exchange, symbol, src_seq, "
    "payload, prev_hash, hash"
)
_INSERT = f"INSERT INTO events ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)"
_LAST = "SELECT seq, hash FROM events WHERE stream = ? ORDER BY seq DESC LIMIT 1"
_ORDER = "ORDER BY ts_recv, priority, exchange, symbol, src_seq, stream, seq"

_ID_CHUNK = 500
"""Ids per ``event_id IN (...)`` duplicate probe."""

_WAL_CHECKPOINT_PAGES = 16384
"""Pages of WAL (4 KiB each) after which a commit checkpoints."""

_FETCH = 8192
"""Rows per ``fetchmany`` on the read paths."""

_LEN_PREFIX = tuple(bytes((n,)) for n in range(256))
"""``chain_hash``'s one-byte event_id length prefix, precomputed."""


class SqliteJournal(Journal):
    """Journal in a SQLite file (created if missing). Not thread-safe.

    ``synchronous`` is SQLite's ``PRAGMA synchronous`` for the writer: ``NORMAL``
    survives a process crash, ``FULL`` also survives power loss.
    """

    def __init__(self, path: str | Path, synchronous: str = "NORMAL") -> None:
        sync = synchronous.upper()
        if sync not in _SYNCHRONOUS:
            raise JournalError(f"synchronous must be one of {_SYNCHRONOUS}, not {synchronous!r}")
        self.path = Path(path)
        if str(path) == ":memory:":
            raise JournalError("SqliteJournal needs a file; use MemoryJournal for memory")
        self._conn: sqlite3.Connection | None = None
        self._rconn: sqlite3.Connection | None = None
        self._in_sql: dict[int, str] = {}
        self._txn_depth = 0  # > 0 inside transaction()
        try:
            self._conn = self._connect()
            mode = self._conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise JournalError(f"{self.path}: cannot enable WAL mode (got {mode!r})")
            self._conn.execute(f"PRAGMA synchronous={sync}")
            # Checkpoint every 64 MiB of WAL rather than SQLite's 4 MiB: the random-keyed
            # event_id index dirties many pages per commit, and each checkpoint fsyncs.
            self._conn.execute(f"PRAGMA wal_autocheckpoint={_WAL_CHECKPOINT_PAGES}")
            self._conn.execute(f"PRAGMA journal_size_limit={_WAL_CHECKPOINT_PAGES * 4096}")
            self._init_schema(self._conn)
            self._rconn = self._connect()
            self._rconn.execute("PRAGMA query_only=ON")
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
        conn.execute("PRAGMA mmap_size=1073741824")  # 1 GiB of address space
        return conn

    def _init_schema(self, conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            found_tables = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            tables = {r[0] for r in found_tables}
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
                known[eid] = seq
        return known

    def _append_in_txn(
        self, conn: sqlite3.Connection, stream: str, events: Sequence[PreparedEvent], probe: bool
    ) -> list[int]:
        """Assign seqs and hashes and insert; the caller owns the transaction.

        Blobs are bound as ``bytearray``: CPython 3.11's sqlite3 binds ``bytes`` through
        its adaptation protocol, about three times slower than ``bytearray``.
        """
        row = conn.execute(_LAST, (stream,)).fetchone()
        last_seq: int
        prev: bytes
        last_seq, prev = (0, GENESIS_HASH) if row is None else row
        # event_id -> seq for ids already stored (when probing) or earlier in this batch.
        known = self._stored_ids(conn, [ev.event_id for ev in events]) if probe else {}
        seqs: list[int] = []
        rows: list[tuple[object, ...]] = []
        add_seq = seqs.append
        add_row = rows.append
        prefix = _LEN_PREFIX
        blake2b = hashlib.blake2b
        blob = bytearray
        prev_blob = blob(prev)
        for ev in events:
            eid = ev.event_id
            have = known.get(eid)
            if have is not None:
                add_seq(have)
                continue
            last_seq += 1
            payload = ev.payload
            # == chain_hash(prev, eid, payload), inlined for the hot path.
            h = blake2b(prev + prefix[len(eid)] + eid + payload, digest_size=32).digest()
            h_blob = blob(h)
            add_row(
                (
                    stream,
                    last_seq,
                    blob(eid),
                    ev.ts_event,
                    ev.ts_recv,
                    ev.priority,
                    ev.kind,
                    ev.exchange,
                    ev.symbol,
                    ev.src_seq,
                    blob(payload),
                    prev_blob,
                    h_blob,
                )
            )
            if probe:  # without probing, a repeat within the batch trips UNIQUE(event_id)
                known[eid] = last_seq
            add_seq(last_seq)
            prev = h
            prev_blob = h_blob
        if rows:
            conn.executemany(_INSERT, rows)
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
        where = ["stream = ?", "seq >= ?"]
        params: list[object] = [stream, from_seq]
        if to_seq is not None:
            where.append("seq <= ?")
            params.append(to_seq)
        if from_ts is not None:
            where.append("ts_recv >= ?")
            params.append(from_ts)
        if to_ts is not None:
            where.append("ts_recv <= ?")
            params.append(to_ts)
        sql = f"SELECT {_COLUMNS} FROM events WHERE {' AND '.join(where)} ORDER BY seq"
        return _records(conn, sql, params)

    def _range_sql(
        self,
        columns: str,
        start_ns: int | None = None,
        end_ns: int | None = None,
        exchanges: Sequence[str] | None = None,
        symbols: Sequence[str] | None = None,
    ) -> tuple[str, list[object]] | None:
        """The canonical-order query over market rows, or ``None`` if nothing can match."""
        where = ["stream GLOB 'md.*'"]
        params: list[object] = []
        if start_ns is not None:
            where.append("ts_recv >= ?")
            params.append(start_ns)
        if end_ns is not None:
            where.append("ts_recv < ?")
            params.append(end_ns)
        for col, values in (("exchange", exchanges), ("symbol", symbols)):
            if values is not None:
                vals = list(values)
                if not vals:
                    return None
                # Unary + : with a single value SQLite would treat the term as col = ?,
                # drop col from the ORDER BY and sort; as a plain filter it does not.
                where.append(f"+{col} IN ({','.join('?' * len(vals))})")
                params.extend(vals)
        # INDEXED BY: fail loudly rather than silently sort if the plan ever changes.
        sql = (
            f"SELECT {columns} FROM events INDEXED BY events_canonical "
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
        query = self._range_sql(_COLUMNS, start_ns, end_ns, exchanges, symbols)
        return iter(()) if query is None else _records(conn, *query)

    def iter_payloads(
        self,
        start_ns: int | None = None,
        end_ns: int | None = None,
        exchanges: Sequence[str] | None = None,
        symbols: Sequence[str] | None = None,
    ) -> Iterator[bytes]:
        """Payloads in canonical order straight off the covering index: no row objects."""
        conn = self._reader()
        query = self._range_sql("payload", start_ns, end_ns, exchanges, symbols)
        return iter(()) if query is None else _payloads(conn, *query)

    # -- verify / inspect ------------------------------------------------------------

    def verify(self, stream: str) -> VerifyReport:
        conn = self._reader()
        sql = f"SELECT {_COLUMNS} FROM events WHERE stream = ? ORDER BY seq"
        cur = conn.execute(sql, (stream,))
        try:
            prev = GENESIS_HASH
            n = 0
            bad: tuple[int, str] | None = None
            for row in cur:
                n += 1
                rec = JournalRecord(*row)
                bad = check_row(n, prev, rec)
                if bad is not None:
                    break
                prev = rec.hash
            if bad is None:
                return VerifyReport(stream=stream, ok=True, rows=n)
            n += sum(1 for _ in cur)  # rows: every row of the stream, checked or not
            return VerifyReport(
                stream=stream, ok=False, rows=n, first_bad_seq=bad[0], reason=bad[1]
            )
        finally:
            cur.close()

    def streams(self) -> list[StreamInfo]:
        conn = self._reader()
        rows = conn.execute(
            "SELECT stream, COUNT(*), MIN(ts_recv), MAX(ts_recv), MAX(seq) "
            "FROM events GROUP BY stream ORDER BY stream"
        ).fetchall()
        return [
            StreamInfo(stream=s, count=c, first_ts=lo, last_ts=hi, last_seq=last)
            for s, c, lo, hi, last in rows
        ]

    def close(self) -> None:
        """Close both connections (rolling back an open transaction()); idempotent.
        Later calls raise :class:`JournalError`."""
        self._txn_depth = 0
        for attr in ("_rconn", "_conn"):
            conn: sqlite3.Connection | None = getattr(self, attr, None)
            if conn is not None:
                setattr(self, attr, None)
                _rollback(conn)
                conn.close()


_TRANSACTION = ("BEGIN IMMEDIATE", "COMMIT")
_SAVEPOINT = ("SAVEPOINT append_prepared", "RELEASE append_prepared")


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


def _records(conn: sqlite3.Connection, sql: str, params: list[object]) -> Iterator[JournalRecord]:
    """Rows as records, fetched in blocks. The query runs when iteration starts."""
    cur = conn.execute(sql, params)
    try:
        fetch = cur.fetchmany
        while rows := fetch(_FETCH):
            for row in rows:
                yield JournalRecord(*row)
    finally:
        cur.close()


def _payloads(conn: sqlite3.Connection, sql: str, params: list[object]) -> Iterator[bytes]:
    """Single-column rows unwrapped to the payload bytes, fetched in blocks."""
    cur = conn.execute(sql, params)
    try:
        fetch = cur.fetchmany
        while rows := fetch(_FETCH):
            for (payload,) in rows:
                yield payload
    finally:
        cur.close()
