"""The journal interface: an append-only, hash-chained, gap-free log of events per stream.

Every backend (memory, SQLite, PostgreSQL) implements :class:`Journal` and passes the one
contract suite in ``tests/test_journal_contract.py``.

Streams
    ``md.<EXCHANGE>.<SYMBOL>`` holds one instrument's market data (book, trades, funding);
    ``session.<id>`` holds one kernel session's inputs summary and every output.
Envelope
    ``seq`` is gap-free per stream starting at 1 and assigned on append; ``prev_hash`` is
    the previous row's ``hash`` in the same stream (32 zero bytes for seq 1);
    ``hash = chain_hash(prev_hash, event_id, payload)``.
Idempotence
    ``event_id`` is unique across the journal: appending an event whose id is already
    there adds nothing and returns the seq it already has. Ids start with the event's
    time (see :func:`kernel.events.event_id`) so new ids land at the end of the index.
Canonical order (``read_range``)
    ``(ts_recv, priority, exchange, symbol, src_seq, stream, seq)``: the order in which the
    kernel consumes market data (see :func:`kernel.events.order_key`).
Read models
    Projections of events (``portfolio_state``, ``trade_history``, ...) stored beside the
    journal, one row set per session: :meth:`Journal.write_read_model` replaces a
    session's rows in one transaction, :meth:`Journal.read_read_model` reads them back in
    the order written. They are derived data, never events: dropping or rebuilding them
    changes nothing in the journal (``tickerml project --rebuild``).
Cold tier
    ``tickerml archive`` moves a prefix of each stream (seqs 1..n) into Parquet files and
    deletes those rows from the database; :class:`ArchiveState` (in the ``meta`` table)
    records each stream's boundary, so ``verify`` starts the database part of a chain at
    seq n + 1 with the archived row n's hash, and ``prev_hash`` of the first row left is
    that hash. ``adapters.journal.parquet.TieredJournal`` reads both tiers as one journal.
"""

from __future__ import annotations

import hashlib
import re
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Literal, Self

import msgspec

from kernel.events import Event, MarketEvent, encode, event_id, kind_of

GENESIS_HASH = bytes(32)


def chain_hash(prev_hash: bytes, event_id: bytes, payload: bytes) -> bytes:
    """blake2b-256 over prev_hash || event_id || payload (each length-prefixed)."""
    h = hashlib.blake2b(digest_size=32)
    h.update(prev_hash)
    h.update(len(event_id).to_bytes(1, "little"))
    h.update(event_id)
    h.update(payload)
    return h.digest()


def read_filters(
    stream: str,
    from_seq: int,
    to_seq: int | None,
    from_ts: int | None,
    to_ts: int | None,
    placeholder: str,
) -> tuple[list[str], list[object]]:
    """The WHERE terms and parameters of :meth:`Journal.read` for SQL backends (tables
    aliased ``e`` for events and ``s`` for streams; ``placeholder``: ``?`` or ``%s``)."""
    ph = placeholder
    where = [f"s.name = {ph}", f"e.seq >= {ph}"]
    params: list[object] = [stream, from_seq]
    for term, value in (
        (f"e.seq <= {ph}", to_seq),
        (f"e.ts_recv >= {ph}", from_ts),
        (f"e.ts_recv <= {ph}", to_ts),
    ):
        if value is not None:
            where.append(term)
            params.append(value)
    return where, params


def market_stream(exchange: str, symbol: str) -> str:
    return f"md.{exchange}.{symbol}"


def session_stream(session_id: str) -> str:
    return f"session.{session_id}"


NEWS_STREAM = "md.NEWS"
"""Headlines (``News``): inputs like market data, of no single instrument."""

CONTROL_STREAM = "md.CONTROL"
"""Operator inputs (``Halt``, ``Resume``) that every replay folds in time order with the
market data: they belong to no instrument, so range reads include them whatever the
exchange and symbol filters."""


class JournalError(RuntimeError):
    """The journal cannot do what was asked (bad DSN, schema mismatch, closed, ...)."""


class JournalRecord(msgspec.Struct, frozen=True):
    """One stored row: the envelope plus the encoded event."""

    stream: str
    seq: int
    event_id: bytes
    ts_event: int
    ts_recv: int
    priority: int
    kind: str
    exchange: str
    symbol: str
    src_seq: int
    payload: bytes
    prev_hash: bytes
    hash: bytes


class PreparedEvent(msgspec.Struct, frozen=True):
    """An event encoded once, with its id and ordering columns, ready to append."""

    event_id: bytes
    ts_event: int
    ts_recv: int
    priority: int
    kind: str
    exchange: str
    symbol: str
    src_seq: int
    payload: bytes

    @classmethod
    def of_record(cls, r: JournalRecord) -> PreparedEvent:
        """A stored row, ready to append elsewhere (copies, migrations, benchmarks)."""
        return cls(
            r.event_id,
            r.ts_event,
            r.ts_recv,
            r.priority,
            r.kind,
            r.exchange,
            r.symbol,
            r.src_seq,
            r.payload,
        )


def prepare(event: Event, eid: bytes | None = None) -> PreparedEvent:
    """Encode ``event`` and compute its columns; ``eid`` overrides the default id."""
    if isinstance(event, MarketEvent):
        exchange, symbol, src_seq = event.exchange, event.symbol, event.seq
    else:
        exchange, symbol, src_seq = "", "", 0
    return PreparedEvent(
        event_id=eid if eid is not None else event_id(event),
        ts_event=event.ts_event,
        ts_recv=event.ts_recv,
        priority=event.PRIORITY,
        kind=kind_of(event),
        exchange=exchange,
        symbol=symbol,
        src_seq=src_seq,
        payload=encode(event),
    )


class StreamInfo(msgspec.Struct, frozen=True):
    stream: str
    count: int
    first_ts: int
    last_ts: int
    last_seq: int


class VerifyReport(msgspec.Struct, frozen=True):
    """Result of :meth:`Journal.verify`. ``first_bad_seq`` is 0 when ``ok``."""

    stream: str
    ok: bool
    rows: int
    first_bad_seq: int = 0
    reason: str = ""


class ArchiveBoundary(msgspec.Struct, frozen=True):
    """Rows 1..``seq`` of a stream are in the cold tier, no longer in the database;
    ``hash`` is row ``seq``'s hash, the ``prev_hash`` of the first row still there."""

    seq: int
    hash: bytes


class ArchiveState(msgspec.Struct, frozen=True):
    """What a journal records about its cold tier (``meta`` key ``archive``): the archive
    directory (absolute), the generation and SHA-256 of its manifest
    (``manifest-<generation>.json`` there) and each archived stream's boundary."""

    directory: str
    generation: int
    manifest_sha256: str
    boundaries: dict[str, ArchiveBoundary]


ARCHIVE_META_KEY = "archive"
_ARCHIVE_CODEC = (msgspec.json.Encoder(), msgspec.json.Decoder(ArchiveState))


def encode_archive_state(state: ArchiveState) -> str:
    return _ARCHIVE_CODEC[0].encode(state).decode()


def decode_archive_state(text: str | None) -> ArchiveState | None:
    """The state stored under ``meta`` key ``archive`` (``None``: nothing archived)."""
    if text is None:
        return None
    try:
        return _ARCHIVE_CODEC[1].decode(text)
    except msgspec.DecodeError as exc:
        raise JournalError(f"the journal's archive record does not decode: {exc}") from exc


def archive_start(state: ArchiveState | None, stream: str) -> tuple[int, bytes]:
    """``(last archived seq, its hash)`` of ``stream``; ``(0, GENESIS_HASH)`` if none."""
    b = None if state is None else state.boundaries.get(stream)
    return (0, GENESIS_HASH) if b is None else (b.seq, b.hash)


ReadModelType = Literal["int", "float", "text"]
"""A read-model column's type: 64-bit integer, float, or text (JSON is text)."""

ReadModelValue = int | float | str | None
"""One cell of a read model; ``None`` (SQL NULL) is allowed in every column."""

READ_MODEL_RESERVED = frozenset({"session_id", "row_no"})
"""Columns every read-model table has and that callers do not declare: ``session_id``
(the key of a row set) and ``row_no`` (the order rows were written in, from 0)."""

JOURNAL_TABLES = frozenset({"meta", "streams", "events", "read_models"})
"""Names a read model may not take: the journal's own tables (in any backend)."""

_READ_MODEL_NAME = re.compile(r"[a-z][a-z0-9_]{0,62}")
_INT64 = (-(2**63), 2**63 - 1)


class ReadModelColumn(msgspec.Struct, frozen=True):
    """A declared read-model column (``session_id`` and ``row_no`` are implicit)."""

    name: str
    type: ReadModelType


class ReadModelRows(msgspec.Struct, frozen=True):
    """What :meth:`Journal.read_read_model` returns: ``columns`` start with
    ``session_id``; ``rows`` are ordered by session id, then in the order written.
    A table never written has no columns and no rows."""

    table: str
    columns: tuple[str, ...]
    rows: list[tuple[ReadModelValue, ...]]


def check_read_model(table: str, columns: Sequence[ReadModelColumn]) -> None:
    """Raise :class:`JournalError` unless ``table`` and ``columns`` are usable names (lower
    case identifiers, so that every backend may use them as SQL names unquoted)."""
    if not _READ_MODEL_NAME.fullmatch(table) or table in JOURNAL_TABLES:
        raise JournalError(
            f"read model name {table!r} is not allowed (lower-case letters, digits and _, "
            f"not one of the journal's tables {sorted(JOURNAL_TABLES)})"
        )
    seen: set[str] = set()
    for col in columns:
        if not _READ_MODEL_NAME.fullmatch(col.name) or col.name in READ_MODEL_RESERVED:
            raise JournalError(f"read model {table}: column name {col.name!r} is not allowed")
        if col.name in seen:
            raise JournalError(f"read model {table}: column {col.name!r} declared twice")
        if col.type not in ("int", "float", "text"):
            raise JournalError(f"read model {table}: column {col.name} has type {col.type!r}")
        seen.add(col.name)


def _fits(kind: ReadModelType, v: object) -> bool:
    """Whether a column of type ``kind`` may hold ``v`` (bool is not a number here)."""
    if v is None:
        return True
    if kind == "text":
        return isinstance(v, str)
    if isinstance(v, bool) or not isinstance(v, int | float):
        return False
    if kind == "int":
        return isinstance(v, int) and _INT64[0] <= v <= _INT64[1]
    return True


def check_read_model_rows(
    table: str,
    columns: Sequence[ReadModelColumn],
    rows: Iterable[Sequence[ReadModelValue]],
) -> list[tuple[ReadModelValue, ...]]:
    """The rows as tuples, each value checked against its column's type (an int is
    accepted for a float column and stored as a float; ints must fit 64 bits). Raises
    :class:`JournalError` naming the row and column otherwise."""
    out: list[tuple[ReadModelValue, ...]] = []
    width = len(columns)
    for n, row in enumerate(rows):
        if len(row) != width:
            raise JournalError(
                f"read model {table}: row {n} has {len(row)} values for {width} columns"
            )
        values: list[ReadModelValue] = []
        for col, v in zip(columns, row, strict=True):
            if not _fits(col.type, v):
                raise JournalError(
                    f"read model {table}: row {n} column {col.name} ({col.type}) cannot hold {v!r}"
                )
            values.append(float(v) if col.type == "float" and v is not None else v)
        out.append(tuple(values))
    return out


def read_model_mismatch(
    table: str, stored: Sequence[ReadModelColumn], given: Sequence[ReadModelColumn]
) -> str:
    """The error message for a write whose columns differ from the stored table's."""

    def spec(cols: Sequence[ReadModelColumn]) -> str:
        return ", ".join(f"{c.name} {c.type}" for c in cols)

    return (
        f"read model {table} has columns ({spec(stored)}) but the write has "
        f"({spec(given)}); drop it and rebuild every session "
        "(`tickerml project --rebuild` without --session)"
    )


class Journal(ABC):
    """Backend-independent journal. Not thread-safe; one writer per stream."""

    @abstractmethod
    def append_prepared(self, stream: str, events: Sequence[PreparedEvent]) -> list[int]:
        """Append in one transaction (all or nothing); returns one seq per input event.

        Events whose ``event_id`` is already in the journal (or earlier in the same
        batch) are not stored again; their existing seq is returned.
        """

    def append(
        self, stream: str, events: Iterable[Event], event_ids: Sequence[bytes] | None = None
    ) -> list[int]:
        """Encode and append ``events`` to ``stream`` in one transaction."""
        evs = list(events)
        if event_ids is not None and len(event_ids) != len(evs):
            raise JournalError("event_ids must have one id per event")
        prepared = [
            prepare(ev, None if event_ids is None else event_ids[i]) for i, ev in enumerate(evs)
        ]
        return self.append_prepared(stream, prepared)

    @abstractmethod
    def read(
        self,
        stream: str,
        from_seq: int = 1,
        to_seq: int | None = None,
        from_ts: int | None = None,
        to_ts: int | None = None,
    ) -> Iterator[JournalRecord]:
        """Rows of one stream in seq order; seq bounds and ts_recv bounds are inclusive."""

    @abstractmethod
    def read_range(
        self,
        start_ns: int | None = None,
        end_ns: int | None = None,
        exchanges: Sequence[str] | None = None,
        symbols: Sequence[str] | None = None,
    ) -> Iterator[JournalRecord]:
        """Market rows (streams ``md.*``) with ``start_ns <= ts_recv < end_ns``, in the
        canonical order, optionally restricted to some exchanges and symbols."""

    def iter_payloads(
        self,
        start_ns: int | None = None,
        end_ns: int | None = None,
        exchanges: Sequence[str] | None = None,
        symbols: Sequence[str] | None = None,
    ) -> Iterator[bytes]:
        """Like :meth:`read_range` but only the payloads: the replay hot path."""
        for block in self.iter_payload_blocks(start_ns, end_ns, exchanges, symbols):
            for (payload,) in block:
                yield payload

    def iter_payload_blocks(
        self,
        start_ns: int | None = None,
        end_ns: int | None = None,
        exchanges: Sequence[str] | None = None,
        symbols: Sequence[str] | None = None,
    ) -> Iterator[Sequence[tuple[bytes]]]:
        """The payloads of :meth:`read_range` in blocks of one-tuples ``(payload,)``, as
        a database cursor hands them out: the replay loop unpacks them without a
        generator step per event. Backends override this (not :meth:`iter_payloads`)."""
        block: list[tuple[bytes]] = []
        for rec in self.read_range(start_ns, end_ns, exchanges, symbols):
            block.append((rec.payload,))
            if len(block) >= 4096:
                yield block
                block = []
        if block:
            yield block

    @abstractmethod
    def verify(self, stream: str) -> VerifyReport:
        """Re-hash every row of ``stream``: seqs 1..n without gap, prev_hash links, each
        hash matching its content, and each payload decoding to an event."""

    @abstractmethod
    def streams(self) -> list[StreamInfo]:
        """Every stream, sorted by name."""

    # -- cold tier -----------------------------------------------------------------------

    def archive_state(self) -> ArchiveState | None:
        """The journal's cold-tier record; ``None`` while nothing is archived."""
        return None

    def commit_archive(self, state: ArchiveState, expected_generation: int) -> int:
        """In one transaction: delete each stream's rows up to its boundary in ``state``
        and record ``state``; returns the rows deleted. Refused (nothing changed) unless
        the recorded generation is ``expected_generation`` (0: none) and each boundary's
        row is still there with the boundary's hash."""
        raise JournalError(f"{type(self).__name__} has no cold tier (archive needs SQL)")

    @abstractmethod
    def transaction(self) -> AbstractContextManager[None]:
        """A block whose appends are committed together at its end, or not at all if it
        raises (a long import is all-or-nothing). Nested blocks join the outermost."""

    # -- read models -------------------------------------------------------------------

    @abstractmethod
    def write_read_model(
        self,
        table: str,
        session_id: str,
        columns: Sequence[ReadModelColumn],
        rows: Iterable[Sequence[ReadModelValue]],
    ) -> int:
        """Replace ``session_id``'s rows of read model ``table`` with ``rows`` (one value
        per column, in ``columns`` order), in one transaction; returns the row count.

        The table is created on first write. Writing with columns other than those the
        table was created with raises :class:`JournalError` (drop it first: the rows are
        derived, :meth:`drop_read_model` loses nothing that cannot be rebuilt). Inside
        :meth:`transaction` the write joins the block.
        """

    @abstractmethod
    def read_read_model(self, table: str, session_id: str | None = None) -> ReadModelRows:
        """Rows of read model ``table`` (of one session, or of all sessions ordered by
        session id), each session's rows in the order written."""

    @abstractmethod
    def drop_read_model(self, table: str) -> None:
        """Remove read model ``table`` with every session's rows (nothing if absent)."""

    @abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
