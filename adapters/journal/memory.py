"""In-memory journal: the reference semantics of :class:`Journal`, for tests and demos.

Nothing is persisted. A batch is staged completely (seqs, hashes) before anything is
published, so a failure anywhere in a batch leaves the journal exactly as it was.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence

from adapters.journal.base import (
    GENESIS_HASH,
    Journal,
    JournalError,
    JournalRecord,
    PreparedEvent,
    ReadModelColumn,
    ReadModelRows,
    ReadModelValue,
    StreamInfo,
    VerifyReport,
    chain_hash,
    check_read_model,
    check_read_model_rows,
    read_model_mismatch,
)
from kernel.events import EventDecodeError, MarketEvent, decode, kind_of

MARKET_PREFIX = "md."


def check_row(expected_seq: int, prev_hash: bytes, r: JournalRecord) -> tuple[int, str] | None:
    """Check one row of a stream read in seq order; ``None`` if it is sound.

    ``expected_seq`` is the seq the row must have, ``prev_hash`` the previous row's hash
    (``GENESIS_HASH`` for seq 1). Returns ``(first_bad_seq, reason)`` otherwise. Shared by
    every backend's ``verify`` so they report identically.
    """
    seq = r.seq
    if seq != expected_seq:
        if seq > expected_seq:
            return expected_seq, f"seq {expected_seq}: missing (gap: next row has seq {seq})"
        return seq, f"seq {seq}: out of order (expected seq {expected_seq})"
    if r.prev_hash != prev_hash:
        link = "the genesis hash" if seq == 1 else f"the hash of seq {seq - 1}"
        return seq, f"seq {seq}: prev_hash does not match {link} (chain broken)"
    if chain_hash(r.prev_hash, r.event_id, r.payload) != r.hash:
        return seq, f"seq {seq}: hash mismatch (row was altered)"
    try:
        ev = decode(r.payload)
    except EventDecodeError as exc:
        return seq, f"seq {seq}: payload does not decode ({exc})"
    kind = kind_of(ev)
    if kind != r.kind:
        return seq, f"seq {seq}: stored kind {r.kind!r} but the payload is a {kind!r}"
    # The hash covers event_id and payload only: check the ordering columns against the
    # payload so that an edited ts_recv/priority cannot silently reorder a replay.
    if isinstance(ev, MarketEvent):
        exchange, symbol, src_seq = ev.exchange, ev.symbol, ev.seq
    else:
        exchange, symbol, src_seq = "", "", 0
    expected = (
        ("ts_event", r.ts_event, ev.ts_event),
        ("ts_recv", r.ts_recv, ev.ts_recv),
        ("priority", r.priority, ev.PRIORITY),
        ("exchange", r.exchange, exchange),
        ("symbol", r.symbol, symbol),
        ("src_seq", r.src_seq, src_seq),
    )
    for name, stored, derived in expected:
        if stored != derived:
            return seq, f"seq {seq}: column {name}={stored!r} but the payload has {derived!r}"
    return None


def _canonical_key(r: JournalRecord) -> tuple[int, int, str, str, int, str, int]:
    return (r.ts_recv, r.priority, r.exchange, r.symbol, r.src_seq, r.stream, r.seq)


class _ReadModel:
    """One in-memory read model: its declared columns and each session's rows."""

    __slots__ = ("columns", "sessions")

    def __init__(
        self,
        columns: tuple[ReadModelColumn, ...],
        sessions: dict[str, list[tuple[ReadModelValue, ...]]] | None = None,
    ) -> None:
        self.columns = columns
        self.sessions: dict[str, list[tuple[ReadModelValue, ...]]] = sessions or {}

    def copy(self) -> _ReadModel:
        return _ReadModel(self.columns, dict(self.sessions))


class MemoryJournal(Journal):
    """Rows kept in per-stream lists (index ``seq - 1``); ids in one dict. Read models
    are kept in dicts by table, then by session id."""

    def __init__(self) -> None:
        self._rows: dict[str, list[JournalRecord]] = {}
        self._ids: dict[bytes, int] = {}  # event_id -> seq (in whichever stream holds it)
        self._closed = False
        self._txn_depth = 0
        # Inside transaction(): each touched stream's length before it, and the ids added.
        self._undo_lengths: dict[str, int] = {}
        self._undo_ids: list[bytes] = []
        self._models: dict[str, _ReadModel] = {}
        # Inside transaction(): each touched read model as it was before (None: absent).
        self._undo_models: dict[str, _ReadModel | None] = {}

    def _check_open(self) -> None:
        if self._closed:
            raise JournalError("journal is closed")

    def append_prepared(self, stream: str, events: Sequence[PreparedEvent]) -> list[int]:
        self._check_open()
        if not stream:
            raise JournalError("stream name must not be empty")
        rows = self._rows.get(stream, [])
        last_seq = len(rows)
        prev = rows[-1].hash if rows else GENESIS_HASH
        ids = self._ids
        staged: list[JournalRecord] = []
        staged_ids: dict[bytes, int] = {}
        seqs: list[int] = []
        for ev in events:
            eid = ev.event_id
            known = ids.get(eid)
            if known is None:
                known = staged_ids.get(eid)
            if known is not None:
                seqs.append(known)
                continue
            last_seq += 1
            h = chain_hash(prev, eid, ev.payload)
            staged.append(
                JournalRecord(
                    stream=stream,
                    seq=last_seq,
                    event_id=eid,
                    ts_event=ev.ts_event,
                    ts_recv=ev.ts_recv,
                    priority=ev.priority,
                    kind=ev.kind,
                    exchange=ev.exchange,
                    symbol=ev.symbol,
                    src_seq=ev.src_seq,
                    payload=ev.payload,
                    prev_hash=prev,
                    hash=h,
                )
            )
            staged_ids[eid] = last_seq
            seqs.append(last_seq)
            prev = h
        # Publish: nothing above touched shared state.
        if staged:
            if self._txn_depth:
                self._undo_lengths.setdefault(stream, len(rows))
                self._undo_ids.extend(staged_ids)
            self._rows.setdefault(stream, []).extend(staged)
            ids.update(staged_ids)
        return seqs

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """Make every append in the block all-or-nothing: if the block raises, every
        row it appended is removed again. A nested block joins the outermost one."""
        self._check_open()
        self._txn_depth += 1
        if self._txn_depth > 1:
            try:
                yield
            finally:
                self._txn_depth -= 1
            return
        try:
            yield
        except BaseException:
            for stream, length in self._undo_lengths.items():
                if length:
                    del self._rows[stream][length:]
                else:
                    self._rows.pop(stream, None)
            for eid in self._undo_ids:
                self._ids.pop(eid, None)
            for table, model in self._undo_models.items():
                if model is None:
                    self._models.pop(table, None)
                else:
                    self._models[table] = model
            raise
        finally:
            self._txn_depth = 0
            self._undo_lengths = {}
            self._undo_ids = []
            self._undo_models = {}

    def read(
        self,
        stream: str,
        from_seq: int = 1,
        to_seq: int | None = None,
        from_ts: int | None = None,
        to_ts: int | None = None,
    ) -> Iterator[JournalRecord]:
        self._check_open()
        rows = self._rows.get(stream, [])
        lo = max(from_seq, 1) - 1
        hi = len(rows) if to_seq is None else max(min(to_seq, len(rows)), 0)
        for r in rows[lo:hi]:
            if from_ts is not None and r.ts_recv < from_ts:
                continue
            if to_ts is not None and r.ts_recv > to_ts:
                continue
            yield r

    def read_range(
        self,
        start_ns: int | None = None,
        end_ns: int | None = None,
        exchanges: Sequence[str] | None = None,
        symbols: Sequence[str] | None = None,
    ) -> Iterator[JournalRecord]:
        self._check_open()
        ex = None if exchanges is None else frozenset(exchanges)
        sy = None if symbols is None else frozenset(symbols)
        out = [
            r
            for stream, rows in self._rows.items()
            if stream.startswith(MARKET_PREFIX)
            for r in rows
            if (start_ns is None or r.ts_recv >= start_ns)
            and (end_ns is None or r.ts_recv < end_ns)
            and (ex is None or r.exchange in ex or r.exchange == "")
            and (sy is None or r.symbol in sy or r.symbol == "")
        ]
        out.sort(key=_canonical_key)
        yield from out

    def verify(self, stream: str) -> VerifyReport:
        self._check_open()
        rows = self._rows.get(stream, [])
        prev = GENESIS_HASH
        for expected, r in enumerate(rows, start=1):
            bad = check_row(expected, prev, r)
            if bad is not None:
                return VerifyReport(
                    stream=stream, ok=False, rows=len(rows), first_bad_seq=bad[0], reason=bad[1]
                )
            prev = r.hash
        return VerifyReport(stream=stream, ok=True, rows=len(rows))

    def streams(self) -> list[StreamInfo]:
        self._check_open()
        return [
            StreamInfo(
                stream=name,
                count=len(rows),
                first_ts=min(r.ts_recv for r in rows),
                last_ts=max(r.ts_recv for r in rows),
                last_seq=rows[-1].seq,
            )
            for name, rows in sorted(self._rows.items())
            if rows
        ]

    # -- read models -------------------------------------------------------------------

    def _remember_model(self, table: str) -> None:
        """Inside transaction(): keep ``table`` as it was before the block touched it."""
        if self._txn_depth and table not in self._undo_models:
            model = self._models.get(table)
            self._undo_models[table] = None if model is None else model.copy()

    def write_read_model(
        self,
        table: str,
        session_id: str,
        columns: Sequence[ReadModelColumn],
        rows: Iterable[Sequence[ReadModelValue]],
    ) -> int:
        self._check_open()
        cols = tuple(columns)
        check_read_model(table, cols)
        checked = check_read_model_rows(table, cols, rows)  # before anything changes
        model = self._models.get(table)
        if model is not None and model.columns != cols:
            raise JournalError(read_model_mismatch(table, model.columns, cols))
        self._remember_model(table)
        if model is None:
            model = self._models[table] = _ReadModel(cols)
        model.sessions[session_id] = checked
        return len(checked)

    def read_read_model(self, table: str, session_id: str | None = None) -> ReadModelRows:
        self._check_open()
        check_read_model(table, ())
        model = self._models.get(table)
        if model is None:
            return ReadModelRows(table=table, columns=(), rows=[])
        names = ("session_id", *(c.name for c in model.columns))
        ids = sorted(model.sessions) if session_id is None else [session_id]
        rows = [(sid, *row) for sid in ids for row in model.sessions.get(sid, [])]
        return ReadModelRows(table=table, columns=names, rows=rows)

    def drop_read_model(self, table: str) -> None:
        self._check_open()
        check_read_model(table, ())
        if table in self._models:
            self._remember_model(table)
            del self._models[table]

    def close(self) -> None:
        self._closed = True
