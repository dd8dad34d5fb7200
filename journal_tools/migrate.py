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
"""

from __future__ import annotations

from collections.abc import Callable

import msgspec

from adapters.journal.base import Journal, JournalError, JournalRecord, PreparedEvent
from kernel.events import EventDecodeError, decode


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
    return PreparedEvent(
        rec.event_id,
        rec.ts_event,
        rec.ts_recv,
        rec.priority,
        rec.kind,
        rec.exchange,
        rec.symbol,
        rec.src_seq,
        rec.payload,
    )


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
