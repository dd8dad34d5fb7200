"""``tickerml migrate --from DSN --to DSN``: move a journal between backends, verified.

Typical use: an embedded SQLite journal moving to PostgreSQL. Every stream is copied
with its event ids, so seqs and the hash chain come out identical (the chain hashes
``prev_hash, event_id, payload``, nothing backend-specific).

Steps, all before anything is committed to the target:

1. check the source: every stream's hash chain and gap-free seqs (``verify``) and every
   payload decoding to an event; a corrupt row stops the migration naming stream and seq;
2. in one target transaction: append every stream (idempotent on event ids: a partly
   migrated target is completed, not duplicated);
3. validate inside that transaction: per stream the target row count equals the
   source's, the last hash equals the source's, and a sample of rows (every
   ``sample_every``-th, plus the first and the last) has the same id, payload and hash;
4. commit. Any failure rolls the transaction back and the target is left as it was.

``--dry-run`` runs step 1 and reports what would move, writing nothing. Read models are
not copied: rebuild them on the target with ``tickerml project --rebuild``.

A legacy TickerML SQLite database (``ohlcv``, ``trades``, ``order_books`` tables, no
journal) goes through :func:`migrate_legacy` instead: its rows are mapped to ``Bar``,
``Trade`` and ``BookSnapshot`` events (:mod:`journal_tools.legacy`), with the same
all-or-nothing steps.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec

from adapters.journal.base import Journal, JournalError, JournalRecord, PreparedEvent
from journal_tools.legacy import (
    LegacyError,
    LegacyRow,
    LegacySource,
    levels_of,
    timestamp_ns,
)
from kernel.events import (
    Bar,
    BookSnapshot,
    Event,
    EventDecodeError,
    MarketEvent,
    Trade,
    decode,
)


class MigrationError(RuntimeError):
    """The migration stopped; the target was left unchanged."""


class StreamReport(msgspec.Struct):
    stream: str
    rows: int
    sampled: int
    last_hash: str


class MigrationReport(msgspec.Struct):
    dry_run: bool
    streams: list[StreamReport]
    rows: int


def _check_source(journal: Journal, stream: str) -> list[JournalRecord]:
    report = journal.verify(stream)
    if not report.ok:
        raise MigrationError(
            f"source stream {stream} is corrupt at seq {report.first_bad_seq}: {report.reason}"
        )
    records = list(journal.read(stream))
    for rec in records:
        try:
            decode(rec.payload)
        except EventDecodeError as exc:
            raise MigrationError(
                f"source stream {stream} seq {rec.seq}: payload does not decode: {exc}"
            ) from None
    if len(records) != report.rows:
        raise MigrationError(f"source stream {stream}: read {len(records)} of {report.rows} rows")
    return records


def _prepared(rec: JournalRecord) -> PreparedEvent:
    return PreparedEvent.of_record(rec)


def migrate(
    source: Journal,
    target: Journal,
    *,
    dry_run: bool = False,
    sample_every: int = 997,
    progress: Callable[[str, int], None] | None = None,
) -> MigrationReport:
    """Copy every stream of ``source`` into ``target`` (see the module doc)."""
    names = [s.stream for s in source.streams()]
    checked: dict[str, list[JournalRecord]] = {}
    for name in names:
        checked[name] = _check_source(source, name)
        if progress is not None:
            progress(name, len(checked[name]))
    reports = [
        StreamReport(
            stream=name,
            rows=len(rows),
            sampled=0,
            last_hash=rows[-1].hash.hex() if rows else "",
        )
        for name, rows in checked.items()
    ]
    if dry_run:
        return MigrationReport(dry_run=True, streams=reports, rows=sum(r.rows for r in reports))
    try:
        with target.transaction():
            for report in reports:
                rows = checked[report.stream]
                for i in range(0, len(rows), 10_000):
                    target.append_prepared(
                        report.stream, [_prepared(r) for r in rows[i : i + 10_000]]
                    )
                report.sampled = _validate(target, report.stream, rows, sample_every)
    except JournalError as exc:
        raise MigrationError(f"target rejected the migration (nothing kept): {exc}") from exc
    return MigrationReport(dry_run=False, streams=reports, rows=sum(r.rows for r in reports))


def _validate(target: Journal, stream: str, rows: list[JournalRecord], every: int) -> int:
    got = {s.stream: s for s in target.streams()}.get(stream)
    count = got.count if got is not None else 0
    if count != len(rows):
        raise MigrationError(f"{stream}: target has {count} rows, source {len(rows)}")
    picks = sorted({0, len(rows) - 1, *range(0, len(rows), max(1, every))}) if rows else []
    for i in picks:
        want = rows[i]
        have = next(iter(target.read(stream, want.seq, want.seq)), None)
        if have is None or (have.event_id, have.payload, have.hash) != (
            want.event_id,
            want.payload,
            want.hash,
        ):
            raise MigrationError(f"{stream} seq {want.seq}: target row differs from the source")
    return len(picks)


# -- legacy TickerML databases -------------------------------------------------------------


class LegacyTableReport(msgspec.Struct):
    """One legacy table: rows read, events made, values rounded to the instrument's
    precision, rows compared field by field with the target after the append."""

    table: str
    rows: int
    events: int
    rounded: int
    sampled: int = 0


class LegacyStreamReport(msgspec.Struct):
    stream: str
    events: int
    new: int = 0


class LegacyMigrationReport(msgspec.Struct):
    dry_run: bool
    tables: list[LegacyTableReport]
    streams: list[LegacyStreamReport]
    events: int


def migrate_legacy(
    source: LegacySource,
    target: Journal | None,
    *,
    dry_run: bool = False,
    sample_every: int = 997,
    progress: Callable[[str, int], None] | None = None,
) -> LegacyMigrationReport:
    """Move a legacy TickerML database (:mod:`journal_tools.legacy`) into ``target``.

    1. map every row to its event (a row that cannot be mapped stops the migration,
       naming table, rowid, column and value) and check each table's row count against
       the events made;
    2. ``dry_run`` (or no ``target``): report and stop, writing nothing;
    3. in one target transaction: append each stream's events in canonical order, then
       validate: every event got a seq of its own, the stream grew by exactly the new
       events, and sampled rows (first, last and every ``sample_every``-th of each table)
       read back from the target have the event's id and payload and decode to values
       that match the legacy row (times exactly, prices and sizes within half a unit of
       the instrument's precision);
    4. commit. Any failure rolls the transaction back: the target is left as it was.
    """
    by_stream: dict[str, list[LegacyRow]] = {}
    tables: list[LegacyTableReport] = []
    try:
        for table in source.tables:
            made = 0
            for row in source.rows(table):
                by_stream.setdefault(row.stream, []).append(row)
                made += 1
            rows = source.count(table)
            if made != rows:
                raise MigrationError(f"legacy table {table}: {rows} rows but {made} events")
            tables.append(LegacyTableReport(table, rows, made, source.take_rounded()))
            if progress is not None:
                progress(table, made)
    except LegacyError as exc:
        raise MigrationError(str(exc)) from None
    for rows_of_stream in by_stream.values():
        rows_of_stream.sort(key=_canonical)
    streams = [LegacyStreamReport(s, len(r)) for s, r in sorted(by_stream.items())]
    report = LegacyMigrationReport(
        dry_run=dry_run, tables=tables, streams=streams, events=sum(t.events for t in tables)
    )
    if dry_run or target is None:
        return report
    try:
        with target.transaction():
            placed: dict[tuple[str, int], tuple[str, int]] = {}  # (table, rowid) -> (stream, seq)
            for st in streams:
                legacy_rows = by_stream[st.stream]
                before = _tail(target, st.stream)
                seqs: list[int] = []
                for i in range(0, len(legacy_rows), 10_000):
                    chunk = legacy_rows[i : i + 10_000]
                    seqs += target.append_prepared(st.stream, [r.event for r in chunk])
                st.new = _check_growth(target, st.stream, before, seqs)
                for r, seq in zip(legacy_rows, seqs, strict=True):
                    placed[(r.table, r.rowid)] = (st.stream, seq)
            for t in tables:
                t.sampled = _validate_legacy(
                    source, target, t.table, placed, by_stream, sample_every
                )
    except JournalError as exc:
        raise MigrationError(f"target rejected the migration (nothing kept): {exc}") from exc
    return report


def _canonical(row: LegacyRow) -> tuple[int, int, str, str, int]:
    ev = row.event
    return (ev.ts_recv, ev.priority, ev.exchange, ev.symbol, ev.src_seq)


def _tail(target: Journal, stream: str) -> tuple[int, int]:
    """(row count, last seq) of ``stream`` in ``target``."""
    got = {s.stream: s for s in target.streams()}.get(stream)
    return (0, 0) if got is None else (got.count, got.last_seq)


def _check_growth(target: Journal, stream: str, before: tuple[int, int], seqs: list[int]) -> int:
    """The number of new rows; raises unless each event has a seq of its own and the
    stream grew by exactly the new ones (idempotent re-runs add none)."""
    if len(set(seqs)) != len(seqs):
        raise MigrationError(
            f"{stream}: {len(seqs) - len(set(seqs))} legacy rows collapsed onto rows of "
            "other legacy rows (same event id)"
        )
    new = sum(1 for s in seqs if s > before[1])
    after = _tail(target, stream)
    if after != (before[0] + new, before[1] + new):
        raise MigrationError(
            f"{stream}: target has {after[0]} rows (last seq {after[1]}), expected "
            f"{before[0] + new} (last seq {before[1] + new})"
        )
    return new


def _validate_legacy(
    source: LegacySource,
    target: Journal,
    table: str,
    placed: dict[tuple[str, int], tuple[str, int]],
    by_stream: dict[str, list[LegacyRow]],
    every: int,
) -> int:
    """Compare sampled rows of ``table`` in the target with the legacy rows; returns how
    many were compared."""
    rowids = sorted(rowid for t, rowid in placed if t == table)
    if not rowids:
        return 0
    picks = sorted({rowids[0], rowids[-1], *rowids[:: max(1, every)]})
    events = {(r.table, r.rowid): r.event for rows in by_stream.values() for r in rows}
    for raw in source.raw_rows(table, picks):
        rowid = raw["rowid"]
        stream, seq = placed[(table, rowid)]
        want = events[(table, rowid)]
        have = next(iter(target.read(stream, seq, seq)), None)
        if have is None or (have.event_id, have.payload) != (want.event_id, want.payload):
            raise MigrationError(
                f"legacy {table} row {rowid}: {stream} seq {seq} in the target is not its event"
            )
        problem = legacy_row_mismatch(source, table, raw, decode(have.payload))
        if problem:
            raise MigrationError(f"legacy {table} row {rowid} vs {stream} seq {seq}: {problem}")
    return len(picks)


def legacy_row_mismatch(source: LegacySource, table: str, raw: dict[str, Any], ev: Event) -> str:
    """What differs between a legacy row and the event read back ("" if nothing):
    times exactly, prices and sizes within half a unit of the instrument's precision."""
    inst = source.instrument(table, raw)
    if not isinstance(ev, MarketEvent) or (ev.exchange, ev.symbol) != (inst.exchange, inst.symbol):
        return f"instrument {getattr(ev, 'exchange', '?')}:{getattr(ev, 'symbol', '?')}"
    if ev.ts_event != timestamp_ns(raw["timestamp"], "timestamp"):
        return f"time {ev.ts_event} != {raw['timestamp']!r}"

    def off(units: int, value: object, decimals: int) -> bool:
        legacy = float(str(value))
        scale = float(10**decimals)
        return abs(units / scale - legacy) > 0.5 / scale + 1e-9 * abs(legacy)

    p, q = inst.price_decimals, inst.size_decimals
    checks: list[tuple[str, int, object, int]] = []
    if isinstance(ev, Bar):
        checks = [
            ("open", ev.open, raw["open"], p),
            ("high", ev.high, raw["high"], p),
            ("low", ev.low, raw["low"], p),
            ("close", ev.close, raw["close"], p),
            ("volume", ev.volume, raw["volume"], q),
        ]
    elif isinstance(ev, Trade):
        checks = [("price", ev.price, raw["price"], p), ("size", ev.size, raw["size"], q)]
    elif isinstance(ev, BookSnapshot):
        for column, got, best_first in (("bids", ev.bids, True), ("asks", ev.asks, False)):
            want = [(pr, sz) for pr, sz in levels_of(raw[column], column) if float(str(sz))]
            want.sort(key=lambda lv: float(str(lv[0])), reverse=best_first)
            if len(want) != len(got):
                return f"{column}: {len(got)} levels, legacy row has {len(want)}"
            for n, ((pu, su), (pr, sz)) in enumerate(zip(got, want, strict=True)):
                checks += [(f"{column}[{n}].price", pu, pr, p), (f"{column}[{n}].size", su, sz, q)]
    else:
        return f"unexpected event kind {type(ev).__name__}"
    for name, units, value, decimals in checks:
        if off(units, value, decimals):
            return f"{name} {units} (10^-{decimals}) != {value!r}"
    return ""
