"""Parquet cold tier: a prefix of each stream moved out of the database into Parquet
files, and :class:`TieredJournal`, which reads both tiers as one journal.

Layout (archive directory ``DIR``)
    ``date=YYYY-MM-DD/exchange=EX/symbol=SYM/<stream>.<first_seq>-<last_seq>.parquet``
    for a market stream ``md.EX.SYM`` (any other stream:
    ``date=YYYY-MM-DD/stream=<name>/...``). A file holds the archived rows of one stream
    received (``ts_recv``) on one UTC day, in seq order, with every envelope column but
    ``prev_hash`` (the previous row's hash, as in the databases), zstd-compressed.
    ``manifest-<generation>.json`` lists every file (row count, seq, time and event-id
    spans, a BLAKE2b digest of its rows, its last row hash, the SHA-256 of its bytes) and
    each stream's boundary: rows 1..seq are archived, row seq has hash ``hash``.
Trust
    The database is the root. Its ``meta`` row (:class:`ArchiveState`) holds the
    manifest's SHA-256 and each stream's boundary; the manifest holds each file's SHA-256;
    each stream's archived chain must run from the genesis hash to the boundary hash the
    database recorded, and the first row left in the database links to that hash. A file
    whose bytes differ from its manifest entry is refused on read (:class:`ArchiveError`)
    and reported by ``verify``, naming the file.
Writing (:func:`archive_journal`)
    Each stream's rows from its previous boundary up to the first row received at or after
    ``before`` (a prefix in seq order, so the chain left in the database stays whole) are
    checked (chain, content), written per UTC day, read back from disk and checked again
    (row counts, row digests, the hash chain against the database's hashes). Only then is
    the next manifest written and are the rows deleted, in one database transaction
    (:meth:`Journal.commit_archive`). A failure anywhere deletes nothing and removes the
    files of the failed run. Archiving what is archived already adds nothing.
Reading (:class:`TieredJournal`)
    ``read`` yields a stream's archived rows, then its database rows; ``read_range`` and
    ``iter_payload_blocks`` merge both tiers in the canonical order (ties between streams
    broken by stream name). Replay's payload path reads the archive day by day: one
    time-ordered file is streamed in record batches, several files of a day are read,
    filtered and sorted by Arrow. Appends go to the database; an event whose id is
    archived already in the stream appended to is not stored again (its archived seq is
    returned).
"""

from __future__ import annotations

import contextlib
import hashlib
import heapq
import itertools
import os
import re
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from adapters.journal.base import (
    GENESIS_HASH,
    ArchiveBoundary,
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
    chain_hash,
)
from adapters.journal.memory import check_row
from kernel.events import decode, order_key

FORMAT = "tickerml-archive"
FORMAT_VERSION = 1
NS_PER_DAY = 86_400 * 1_000_000_000
ROW_GROUP_ROWS = 65_536
_BLOCK_ROWS = 8192
_CACHED_FILES = 8

SCHEMA = pa.schema(
    [
        ("stream", pa.string()),
        ("seq", pa.int64()),
        ("event_id", pa.binary()),
        ("ts_event", pa.int64()),
        ("ts_recv", pa.int64()),
        ("priority", pa.int32()),
        ("kind", pa.string()),
        ("exchange", pa.string()),
        ("symbol", pa.string()),
        ("src_seq", pa.int64()),
        ("payload", pa.binary()),
        ("hash", pa.binary()),
    ]
)
"""One archived row: the :class:`JournalRecord` fields but ``prev_hash``."""

_RECORD_COLUMNS = tuple(SCHEMA.names)
_CANONICAL = [
    (name, "ascending")
    for name in ("ts_recv", "priority", "exchange", "symbol", "src_seq", "stream", "seq")
]
_STREAM_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@+=-]{0,199}")
_ROW_ENCODE = msgspec.msgpack.Encoder().encode


class ArchiveError(JournalError):
    """The cold tier cannot be written or read as asked (altered file, wrong directory,
    a chain that does not match the database...). Nothing in the database was changed."""


class ArchiveFile(msgspec.Struct, frozen=True):
    """One Parquet file of the archive, as its manifest lists it.

    ``path`` is relative to the archive directory; ``first_ts`` / ``last_ts`` are the
    smallest and largest ``ts_recv`` (ns); ``ordered``: rows in seq order are also in the
    canonical order; ``instruments``: the distinct ``(exchange, symbol)`` of its rows;
    ``rows_blake2b`` digests every row (its columns as one msgpack array, ``SCHEMA`` order)
    in seq order; ``last_hash`` is the hash of its last row; ``sha256`` is of the file's
    bytes. A file holds a run of consecutive seqs (a stream whose receive times go back
    and forth over midnight gets several files for one day)."""

    path: str
    stream: str
    date: str
    rows: int
    first_seq: int
    last_seq: int
    first_ts: int
    last_ts: int
    min_event_id: str
    max_event_id: str
    ordered: bool
    instruments: list[tuple[str, str]]
    rows_blake2b: str
    last_hash: str
    sha256: str
    generation: int


class StreamBoundary(msgspec.Struct, frozen=True):
    """Rows 1..``seq`` of the stream are archived; ``hash`` (hex) is row ``seq``'s."""

    seq: int
    hash: str


class ArchiveManifest(msgspec.Struct, frozen=True):
    """``manifest-<generation>.json``: every file and every stream's boundary."""

    generation: int
    before_ns: int
    streams: dict[str, StreamBoundary]
    files: list[ArchiveFile]
    format: str = FORMAT
    version: int = FORMAT_VERSION


class StreamArchived(msgspec.Struct, frozen=True):
    """What one run moves of one stream: seqs ``from_seq..to_seq`` over ``days``."""

    stream: str
    from_seq: int
    to_seq: int
    rows: int
    days: list[str]


class ArchiveReport(msgspec.Struct):
    """What :func:`archive_journal` did (or, with ``dry_run``, would do)."""

    directory: str
    before_ns: int
    generation: int
    dry_run: bool
    rows: int
    deleted: int
    streams: list[StreamArchived]
    files: list[ArchiveFile]


_MANIFEST_ENC = msgspec.json.Encoder()
_MANIFEST_DEC = msgspec.json.Decoder(ArchiveManifest)


def manifest_name(generation: int) -> str:
    return f"manifest-{generation:06d}.json"


def utc_day(ts_ns: int) -> str:
    """``YYYY-MM-DD`` of a time in ns since the epoch (UTC)."""
    return (datetime(1970, 1, 1, tzinfo=UTC) + timedelta(days=ts_ns // NS_PER_DAY)).strftime(
        "%Y-%m-%d"
    )


def partition_dir(stream: str, day: str) -> str:
    """The directory (relative) of ``stream``'s file for UTC ``day``."""
    parts = stream.split(".")
    if len(parts) == 3 and parts[0] == "md" and all(parts):
        return f"date={day}/exchange={parts[1]}/symbol={parts[2]}"
    return f"date={day}/stream={stream}"


def _check_stream_name(stream: str) -> None:
    if not _STREAM_NAME.fullmatch(stream) or ".." in stream:
        raise ArchiveError(f"stream name {stream!r} cannot name an archive file")


def _columns(table: pa.Table, names: Sequence[str] = _RECORD_COLUMNS) -> list[list[Any]]:
    return [table.column(n).to_pylist() for n in names]


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _publish(tmp: Path, final: Path) -> None:
    """Make a written file durable under its final name (fsync, rename, fsync dir)."""
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, final)
    _fsync_dir(final.parent)


# -- reading -------------------------------------------------------------------------------


class ArchiveTier:
    """The archive of one journal at one generation, checked against the journal's
    :class:`ArchiveState` when opened; every file is checked against its SHA-256 each
    time it is read."""

    def __init__(self, directory: str | Path, state: ArchiveState) -> None:
        self.directory = Path(directory)
        self.state = state
        if not self.directory.is_dir():
            raise ArchiveError(
                f"archive directory {self.directory} not found: this journal's rows up to its "
                "archive boundaries are there (pass --archive DIR if it moved)"
            )
        path = self.directory / manifest_name(state.generation)
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise ArchiveError(f"cannot read the archive manifest {path}: {exc}") from exc
        if hashlib.sha256(raw).hexdigest() != state.manifest_sha256:
            raise ArchiveError(
                f"archive manifest {path} is not the one this journal recorded (SHA-256 "
                "differs): it was altered, or the directory holds another journal's archive"
            )
        try:
            self.manifest = _MANIFEST_DEC.decode(raw)
        except msgspec.DecodeError as exc:
            raise ArchiveError(f"archive manifest {path} does not decode: {exc}") from exc
        bounds = {s: StreamBoundary(b.seq, b.hash.hex()) for s, b in state.boundaries.items()}
        if self.manifest.streams != bounds or self.manifest.generation != state.generation:
            raise ArchiveError(
                f"archive manifest {path} disagrees with the journal's archive boundaries"
            )
        self._by_stream: dict[str, list[ArchiveFile]] = {}
        for f in self.manifest.files:
            self._by_stream.setdefault(f.stream, []).append(f)
        for files in self._by_stream.values():
            files.sort(key=lambda f: f.first_seq)
        # a few files' columns, for hash lookups and id probes (bounded: archives are big)
        self._cache: OrderedDict[tuple[str, str], Any] = OrderedDict()

    # -- files ---------------------------------------------------------------------------

    def files_of(self, stream: str) -> list[ArchiveFile]:
        """The stream's files, by first seq."""
        return list(self._by_stream.get(stream, ()))

    def checked_bytes(self, f: ArchiveFile) -> bytes:
        """The file's bytes, refused unless their SHA-256 is the manifest's."""
        try:
            raw = (self.directory / f.path).read_bytes()
        except OSError as exc:
            raise ArchiveError(f"archive file {f.path}: cannot read it ({exc})") from exc
        got = hashlib.sha256(raw).hexdigest()
        if got != f.sha256:
            raise ArchiveError(
                f"archive file {f.path}: SHA-256 {got[:16]}... differs from the manifest's "
                f"{f.sha256[:16]}... (the file was altered); refusing to read it"
            )
        return raw

    def load(self, f: ArchiveFile, columns: Sequence[str] | None = None) -> pa.Table:
        """The file's rows (``columns`` of them), after checking its bytes' SHA-256."""
        raw = self.checked_bytes(f)
        try:
            table = pq.read_table(pa.BufferReader(raw), columns=list(columns) if columns else None)
        except (pa.ArrowException, OSError) as exc:
            raise ArchiveError(f"archive file {f.path}: cannot read it ({exc})") from exc
        if table.num_rows != f.rows:
            raise ArchiveError(
                f"archive file {f.path} has {table.num_rows} rows, its manifest says {f.rows}"
            )
        return table

    def _seq_ordered(self, files: Sequence[ArchiveFile]) -> Iterator[pa.Table]:
        """Tables of ``files`` (one stream's) whose rows, taken in turn, are in seq order:
        file by file when their seq spans do not overlap, else all at once, sorted."""
        if all(a.last_seq < b.first_seq for a, b in itertools.pairwise(files)):
            for f in files:
                yield self.load(f)
            return
        tables = [self.load(f) for f in files]
        if tables:
            yield pa.concat_tables(tables).sort_by([("seq", "ascending")])

    def _cached(self, f: ArchiveFile, what: str, build: Callable[[], Any]) -> Any:
        key = (f.path, what)
        value = self._cache.get(key)
        if value is None:
            value = self._cache[key] = build()
            if len(self._cache) > _CACHED_FILES:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(key)
        return value

    def hash_before(self, stream: str, seq: int) -> bytes:
        """The hash of archived row ``seq - 1`` of ``stream`` (genesis for seq 1)."""
        if seq <= 1:
            return GENESIS_HASH
        want = seq - 1
        for f in self.files_of(stream):
            if not f.first_seq <= want <= f.last_seq:
                continue

            def index(f: ArchiveFile = f) -> tuple[np.ndarray[Any, Any], list[bytes]]:
                table = self.load(f, ["seq", "hash"])
                return table.column("seq").to_numpy(), table.column("hash").to_pylist()

            seqs, hashes = self._cached(f, "seq_hash", index)
            i = int(np.searchsorted(seqs, want))
            if i < len(hashes) and seqs[i] == want:
                return hashes[i]  # type: ignore[no-any-return]
        raise ArchiveError(f"{stream}: seq {want} is not in the archive")

    def lookup_ids(self, stream: str, ids: Sequence[bytes]) -> dict[bytes, int]:
        """``event_id -> seq`` for those of ``ids`` archived in ``stream`` (an event
        appended again goes to its own stream: ids name the instrument or the stream)."""
        files = self.files_of(stream)
        if not files or not ids:
            return {}
        lo, hi = min(ids), max(ids)
        found: dict[bytes, int] = {}
        for f in files:
            if bytes.fromhex(f.max_event_id) < lo or bytes.fromhex(f.min_event_id) > hi:
                continue

            def id_index(f: ArchiveFile = f) -> dict[bytes, int]:
                table = self.load(f, ["event_id", "seq"])
                return dict(
                    zip(
                        table.column("event_id").to_pylist(),
                        table.column("seq").to_pylist(),
                        strict=True,
                    )
                )

            known: dict[bytes, int] = self._cached(f, "ids", id_index)
            for eid in ids:
                seq = known.get(eid)
                if seq is not None:
                    found[eid] = seq
        return found

    # -- range reads -----------------------------------------------------------------------

    def _range_files(
        self,
        start_ns: int | None,
        end_ns: int | None,
        exchanges: Sequence[str] | None,
        symbols: Sequence[str] | None,
    ) -> list[list[tuple[ArchiveFile, bool]]]:
        """Market files a range read may touch, grouped by day (days in order); with each,
        whether every row passes the instrument filters (no row filter needed)."""
        by_day: dict[str, list[tuple[ArchiveFile, bool]]] = {}
        for f in self.manifest.files:
            if not f.stream.startswith("md."):
                continue
            if (start_ns is not None and f.last_ts < start_ns) or (
                end_ns is not None and f.first_ts >= end_ns
            ):
                continue
            passes = [
                (exchanges is None or ex in exchanges or ex == "")
                and (symbols is None or sym in symbols or sym == "")
                for ex, sym in f.instruments
            ]
            if not any(passes):
                continue
            by_day.setdefault(f.date, []).append((f, all(passes)))
        return [by_day[d] for d in sorted(by_day)]

    def max_ts(
        self,
        start_ns: int | None,
        end_ns: int | None,
        exchanges: Sequence[str] | None,
        symbols: Sequence[str] | None,
    ) -> int:
        """An upper bound of ``ts_recv`` over the archived rows a range read yields
        (-1 if it yields none)."""
        return max(
            (
                f.last_ts
                for day in self._range_files(start_ns, end_ns, exchanges, symbols)
                for f, _ in day
            ),
            default=-1,
        )

    @staticmethod
    def _filter(
        table: pa.Table,
        start_ns: int | None,
        end_ns: int | None,
        exchanges: Sequence[str] | None,
        symbols: Sequence[str] | None,
        instruments_pass: bool,
    ) -> pa.Table:
        mask = None
        terms = []
        if start_ns is not None:
            terms.append(pc.greater_equal(table.column("ts_recv"), start_ns))
        if end_ns is not None:
            terms.append(pc.less(table.column("ts_recv"), end_ns))
        if not instruments_pass:
            for col, values in (("exchange", exchanges), ("symbol", symbols)):
                if values is not None:
                    c = table.column(col)
                    terms.append(
                        pc.or_(
                            pc.is_in(c, value_set=pa.array(list(values), pa.string())),
                            pc.equal(c, ""),
                        )
                    )
        for t in terms:
            mask = t if mask is None else pc.and_(mask, t)
        return table if mask is None else table.filter(mask)

    def _day_tables(
        self,
        start_ns: int | None,
        end_ns: int | None,
        exchanges: Sequence[str] | None,
        symbols: Sequence[str] | None,
        columns: Sequence[str] | None,
    ) -> Iterator[pa.Table]:
        """Per day, the matching rows of every file of the day in the canonical order."""
        for day in self._range_files(start_ns, end_ns, exchanges, symbols):
            tables = [
                self._filter(self.load(f, columns), start_ns, end_ns, exchanges, symbols, ok)
                for f, ok in day
            ]
            table = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
            if len(tables) > 1 or not day[0][0].ordered:
                table = table.sort_by(_CANONICAL)
            yield table

    def payload_blocks(
        self,
        start_ns: int | None = None,
        end_ns: int | None = None,
        exchanges: Sequence[str] | None = None,
        symbols: Sequence[str] | None = None,
    ) -> Iterator[list[tuple[bytes]]]:
        """Payloads of the archived market rows in ``[start_ns, end_ns)`` in the
        canonical order, in blocks of one-tuples (as :meth:`Journal.iter_payload_blocks`)."""
        for day in self._range_files(start_ns, end_ns, exchanges, symbols):
            f, every_row = day[0]
            if len(day) == 1 and f.ordered and every_row:
                yield from self._stream_ordered(f, start_ns, end_ns)
                continue
            cols = [
                "ts_recv",
                "priority",
                "exchange",
                "symbol",
                "src_seq",
                "stream",
                "seq",
                "payload",
            ]
            tables = [
                self._filter(self.load(g, cols), start_ns, end_ns, exchanges, symbols, ok)
                for g, ok in day
            ]
            table = pa.concat_tables(tables).sort_by(_CANONICAL)
            payloads = table.column("payload").to_pylist()
            for i in range(0, len(payloads), _BLOCK_ROWS):
                yield list(zip(payloads[i : i + _BLOCK_ROWS], strict=True))

    def _stream_ordered(
        self, f: ArchiveFile, start_ns: int | None, end_ns: int | None
    ) -> Iterator[list[tuple[bytes]]]:
        """One file whose rows are in the canonical order, in record batches; its times
        never decrease, so the time bounds cut each batch by binary search."""
        try:
            pf = pq.ParquetFile(pa.BufferReader(self.checked_bytes(f)))
        except pa.ArrowException as exc:
            raise ArchiveError(f"archive file {f.path}: cannot read it ({exc})") from exc
        lo_ns = start_ns if start_ns is not None and f.first_ts < start_ns else None
        hi_ns = end_ns if end_ns is not None and f.last_ts >= end_ns else None
        for batch in pf.iter_batches(batch_size=_BLOCK_ROWS, columns=["ts_recv", "payload"]):
            payloads = batch.column(1).to_pylist()
            if lo_ns is not None or hi_ns is not None:
                ts = batch.column(0).to_numpy()
                lo = 0 if lo_ns is None else int(np.searchsorted(ts, lo_ns))
                hi = len(payloads) if hi_ns is None else int(np.searchsorted(ts, hi_ns))
                payloads = payloads[lo:hi]
            if payloads:
                yield list(zip(payloads, strict=True))

    def records(
        self,
        start_ns: int | None = None,
        end_ns: int | None = None,
        exchanges: Sequence[str] | None = None,
        symbols: Sequence[str] | None = None,
    ) -> Iterator[JournalRecord]:
        """Archived market rows in ``[start_ns, end_ns)`` as records, canonical order."""
        last: dict[str, tuple[int, bytes]] = {}
        for table in self._day_tables(start_ns, end_ns, exchanges, symbols, None):
            yield from self._to_records(_columns(table), last)

    def _to_records(
        self, cols: list[list[Any]], last: dict[str, tuple[int, bytes]]
    ) -> Iterator[JournalRecord]:
        """Rows (columns in ``SCHEMA`` order) as records; ``last`` holds each stream's
        last seq and hash seen, so that ``prev_hash`` is looked up only at a gap."""
        for stream, seq, eid, ts_e, ts_r, prio, kind, ex, sym, src, payload, h in zip(
            *cols, strict=True
        ):
            seen = last.get(stream)
            prev = seen[1] if seen is not None and seen[0] == seq - 1 else None
            if prev is None:
                prev = self.hash_before(stream, seq)
            last[stream] = (seq, h)
            yield JournalRecord(
                stream, seq, eid, ts_e, ts_r, prio, kind, ex, sym, src, payload, prev, h
            )

    def read(
        self,
        stream: str,
        from_seq: int = 1,
        to_seq: int | None = None,
        from_ts: int | None = None,
        to_ts: int | None = None,
    ) -> Iterator[JournalRecord]:
        """Archived rows of one stream in seq order; bounds as :meth:`Journal.read`."""
        files = [
            f
            for f in self.files_of(stream)
            if f.last_seq >= from_seq
            and (to_seq is None or f.first_seq <= to_seq)
            and (from_ts is None or f.last_ts >= from_ts)
            and (to_ts is None or f.first_ts <= to_ts)
        ]
        last: dict[str, tuple[int, bytes]] = {}
        for table in self._seq_ordered(files):
            seq = table.column("seq")
            terms = [pc.greater_equal(seq, from_seq)]
            if to_seq is not None:
                terms.append(pc.less_equal(seq, to_seq))
            if from_ts is not None:
                terms.append(pc.greater_equal(table.column("ts_recv"), from_ts))
            if to_ts is not None:
                terms.append(pc.less_equal(table.column("ts_recv"), to_ts))
            mask = terms[0]
            for t in terms[1:]:
                mask = pc.and_(mask, t)
            yield from self._to_records(_columns(table.filter(mask)), last)

    def verify(self, stream: str) -> VerifyReport:
        """Re-check the stream's archived rows: seqs 1..n, the chain from the genesis
        hash, each row's hash and content, and that it ends at the database's boundary."""
        done, boundary_hash = archive_start(self.state, stream)
        prev = GENESIS_HASH
        n = 0
        bad: tuple[int, str] | None = None
        try:
            for table in self._seq_ordered(self.files_of(stream)):
                for stream_, seq, eid, ts_e, ts_r, prio, kind, ex, sym, src, payload, h in zip(
                    *_columns(table), strict=True
                ):
                    n += 1
                    rec = JournalRecord(
                        stream_, seq, eid, ts_e, ts_r, prio, kind, ex, sym, src, payload, prev, h
                    )
                    bad = check_row(n, prev, rec)
                    if bad is not None:
                        break
                    prev = rec.hash
                if bad is not None:
                    break
        except ArchiveError as exc:
            bad = (n + 1, str(exc))
        if bad is None and (n != done or prev != boundary_hash):
            bad = (
                min(n, done) + 1,
                f"archive holds seqs 1..{n} but the journal's boundary is seq {done} "
                "(or its hash differs)",
            )
        if bad is None:
            return VerifyReport(stream=stream, ok=True, rows=n)
        return VerifyReport(stream=stream, ok=False, rows=n, first_bad_seq=bad[0], reason=bad[1])


# -- the journal of both tiers ------------------------------------------------------------


def _canonical(r: JournalRecord) -> tuple[int, int, str, str, int, str, int]:
    return (r.ts_recv, r.priority, r.exchange, r.symbol, r.src_seq, r.stream, r.seq)


def _close(it: Iterator[Any]) -> None:
    close = getattr(it, "close", None)
    if close is not None:
        close()


class TieredJournal(Journal):
    """A database journal and its Parquet archive read as one journal.

    ``archive_dir`` overrides the directory the journal recorded (an archive that was
    moved). The archive is opened on the first read that needs it, so appends work
    while it is not reachable.
    """

    def __init__(self, inner: Journal, archive_dir: str | Path | None = None) -> None:
        self.inner = inner
        self._dir = None if archive_dir is None else Path(archive_dir)
        self._tier: ArchiveTier | None = None

    def tier(self, state: ArchiveState) -> ArchiveTier:
        """The archive for ``state`` (opened again when the state changed)."""
        if self._tier is None or self._tier.state != state:
            self._tier = ArchiveTier(self._dir or Path(state.directory), state)
        return self._tier

    # -- writes ----------------------------------------------------------------------------

    def append_prepared(self, stream: str, events: Sequence[PreparedEvent]) -> list[int]:
        state = self.inner.archive_state() if events else None
        if state is None:
            return self.inner.append_prepared(stream, events)
        if stream not in state.boundaries:
            return self.inner.append_prepared(stream, events)
        known = self.tier(state).lookup_ids(stream, [ev.event_id for ev in events])
        if not known:
            return self.inner.append_prepared(stream, events)
        fresh = iter(
            self.inner.append_prepared(stream, [ev for ev in events if ev.event_id not in known])
        )
        return [known[ev.event_id] if ev.event_id in known else next(fresh) for ev in events]

    def transaction(self) -> AbstractContextManager[None]:
        return self.inner.transaction()

    # -- reads -----------------------------------------------------------------------------

    def read(
        self,
        stream: str,
        from_seq: int = 1,
        to_seq: int | None = None,
        from_ts: int | None = None,
        to_ts: int | None = None,
    ) -> Iterator[JournalRecord]:
        db = iter(self.inner.read(stream, from_seq, to_seq, from_ts, to_ts))
        return self._read(stream, from_seq, to_seq, from_ts, to_ts, db)

    def _read(
        self,
        stream: str,
        from_seq: int,
        to_seq: int | None,
        from_ts: int | None,
        to_ts: int | None,
        db: Iterator[JournalRecord],
    ) -> Iterator[JournalRecord]:
        try:
            # The database's snapshot is taken at its first row; the archive state is read
            # after it, so it covers at least what that snapshot no longer holds, and
            # database rows it covers too are skipped.
            first = next(db, None)
            state = self.inner.archive_state()
            done = archive_start(state, stream)[0]
            if state is not None and done >= from_seq:
                hi = done if to_seq is None else min(done, to_seq)
                yield from self.tier(state).read(stream, from_seq, hi, from_ts, to_ts)
            if first is not None and first.seq > done:
                yield first
            for rec in db:
                if rec.seq > done:
                    yield rec
        finally:
            _close(db)

    def read_range(
        self,
        start_ns: int | None = None,
        end_ns: int | None = None,
        exchanges: Sequence[str] | None = None,
        symbols: Sequence[str] | None = None,
    ) -> Iterator[JournalRecord]:
        db = iter(self.inner.read_range(start_ns, end_ns, exchanges, symbols))
        return self._read_range(start_ns, end_ns, exchanges, symbols, db)

    def _read_range(
        self,
        start_ns: int | None,
        end_ns: int | None,
        exchanges: Sequence[str] | None,
        symbols: Sequence[str] | None,
        db: Iterator[JournalRecord],
    ) -> Iterator[JournalRecord]:
        try:
            first = next(db, None)
            state = self.inner.archive_state()
            if state is None:
                if first is not None:
                    yield first
                yield from db
                return
            bounds = {s: b.seq for s, b in state.boundaries.items()}
            rest = (r for r in db if r.seq > bounds.get(r.stream, 0))
            db_rows: Iterator[JournalRecord] = rest
            if first is not None and first.seq > bounds.get(first.stream, 0):
                db_rows = itertools.chain([first], rest)
            archived = self.tier(state).records(start_ns, end_ns, exchanges, symbols)
            yield from heapq.merge(archived, db_rows, key=_canonical)
        finally:
            _close(db)

    def iter_payload_blocks(
        self,
        start_ns: int | None = None,
        end_ns: int | None = None,
        exchanges: Sequence[str] | None = None,
        symbols: Sequence[str] | None = None,
    ) -> Iterator[Sequence[tuple[bytes]]]:
        return self._payload_blocks(start_ns, end_ns, exchanges, symbols)

    def _payload_blocks(
        self,
        start_ns: int | None,
        end_ns: int | None,
        exchanges: Sequence[str] | None,
        symbols: Sequence[str] | None,
    ) -> Iterator[Sequence[tuple[bytes]]]:
        for _attempt in range(3):
            before = self.inner.archive_state()
            db = iter(self.inner.iter_payload_blocks(start_ns, end_ns, exchanges, symbols))
            try:
                first = next(db, None)  # the database's snapshot starts here
                after = self.inner.archive_state()
                if after != before:
                    continue  # an archive committed meanwhile: start again
                if after is None:
                    if first is not None:
                        yield first
                    yield from db
                    return
                tier = self.tier(after)
                first_ts = order_key(decode(first[0][0]))[0] if first else None
                if first_ts is None or tier.max_ts(start_ns, end_ns, exchanges, symbols) < first_ts:
                    # every archived row comes first: the common case (a cut by date)
                    yield from tier.payload_blocks(start_ns, end_ns, exchanges, symbols)
                    if first is not None:
                        yield first
                    yield from db
                    return
            finally:
                _close(db)
            block: list[tuple[bytes]] = []
            for rec in self.read_range(start_ns, end_ns, exchanges, symbols):
                block.append((rec.payload,))
                if len(block) >= _BLOCK_ROWS:
                    yield block
                    block = []
            if block:
                yield block
            return
        raise JournalError("the archive changed during three attempts to read; try again")

    def verify(self, stream: str) -> VerifyReport:
        """The archived part (checked against the database's boundary), then the
        database part (which starts at that boundary), as one report."""
        for _attempt in range(3):
            state = self.inner.archive_state()
            done = archive_start(state, stream)[0]
            if state is None or done == 0:
                return self.inner.verify(stream)
            try:
                cold = self.tier(state).verify(stream)
            except ArchiveError as exc:  # no trusted manifest: nothing archived checks out
                cold = VerifyReport(stream, False, 0, 1, str(exc))
            hot = self.inner.verify(stream)
            if self.inner.archive_state() != state:
                continue
            rows = cold.rows + hot.rows
            if not cold.ok:
                return VerifyReport(stream, False, rows, cold.first_bad_seq, cold.reason)
            if not hot.ok:
                return VerifyReport(stream, False, rows, hot.first_bad_seq, hot.reason)
            return VerifyReport(stream, True, rows)
        raise JournalError("the archive changed during three attempts to verify; try again")

    def streams(self) -> list[StreamInfo]:
        return self.inner.streams()

    # -- cold tier, read models, lifetime: the database's ------------------------------------

    def archive_state(self) -> ArchiveState | None:
        return self.inner.archive_state()

    def commit_archive(self, state: ArchiveState, expected_generation: int) -> int:
        return self.inner.commit_archive(state, expected_generation)

    def write_read_model(
        self,
        table: str,
        session_id: str,
        columns: Sequence[ReadModelColumn],
        rows: Iterable[Sequence[ReadModelValue]],
    ) -> int:
        return self.inner.write_read_model(table, session_id, columns, rows)

    def read_read_model(self, table: str, session_id: str | None = None) -> ReadModelRows:
        return self.inner.read_read_model(table, session_id)

    def drop_read_model(self, table: str) -> None:
        self.inner.drop_read_model(table)

    def close(self) -> None:
        self.inner.close()


# -- writing -------------------------------------------------------------------------------


class _PartWriter:
    """Writes one stream's rows of one UTC day to a temporary Parquet file, in row
    groups, keeping what its manifest entry needs."""

    def __init__(self, directory: Path, stream: str, day: str, generation: int) -> None:
        self.stream = stream
        self.day = day
        self.generation = generation
        self.dir = directory / partition_dir(stream, day)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.tmp = self.dir / f".{stream}.{generation}.{os.getpid()}.tmp"
        self.writer = pq.ParquetWriter(self.tmp, SCHEMA, compression="zstd")
        self.buffer: list[tuple[Any, ...]] = []
        self.digest = hashlib.blake2b(digest_size=32)
        self.rows = 0
        self.first_seq = self.last_seq = 0
        self.first_ts = 2**63 - 1
        self.last_ts = -(2**63)
        self.min_id = self.max_id = b""
        self.ordered = True
        self.last_key: tuple[int, int, str, str, int] = (-(2**63), -1, "", "", -(2**63))
        self.instruments: set[tuple[str, str]] = set()
        self.last_hash = b""
        self.final: Path | None = None

    def add(self, r: JournalRecord) -> None:
        row = (
            r.stream,
            r.seq,
            r.event_id,
            r.ts_event,
            r.ts_recv,
            r.priority,
            r.kind,
            r.exchange,
            r.symbol,
            r.src_seq,
            r.payload,
            r.hash,
        )
        self.buffer.append(row)
        self.digest.update(_ROW_ENCODE(row))
        key = (r.ts_recv, r.priority, r.exchange, r.symbol, r.src_seq)
        if key < self.last_key:
            self.ordered = False
        self.last_key = key
        if len(self.buffer) >= ROW_GROUP_ROWS:
            self._flush()

    def _flush(self) -> None:
        """Write the buffered rows as one row group; fold them into the span stats."""
        if not self.buffer:
            return
        cols = list(zip(*self.buffer, strict=True))
        batch = pa.record_batch(
            [pa.array(c, f.type) for c, f in zip(cols, SCHEMA, strict=True)], schema=SCHEMA
        )
        if not self.rows:
            self.first_seq = self.buffer[0][1]
            self.min_id = self.max_id = self.buffer[0][2]
        self.rows += len(self.buffer)
        self.last_seq = self.buffer[-1][1]
        self.last_hash = self.buffer[-1][11]
        self.first_ts = min(self.first_ts, min(cols[4]))
        self.last_ts = max(self.last_ts, max(cols[4]))
        self.min_id = min(self.min_id, min(cols[2]))
        self.max_id = max(self.max_id, max(cols[2]))
        self.instruments.update(zip(cols[7], cols[8], strict=True))
        self.writer.write_batch(batch)
        self.buffer = []

    def finish(self) -> Path:
        """Close the file and give it its final name; returns it."""
        self._flush()
        self.writer.close()
        self.final = self.dir / f"{self.stream}.{self.first_seq}-{self.last_seq}.parquet"
        _publish(self.tmp, self.final)
        return self.final

    def discard(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()
        for p in (self.tmp, self.final):
            if p is not None:
                p.unlink(missing_ok=True)

    def entry(self, directory: Path, sha256: str) -> ArchiveFile:
        assert self.final is not None
        return ArchiveFile(
            path=self.final.relative_to(directory).as_posix(),
            stream=self.stream,
            date=self.day,
            rows=self.rows,
            first_seq=self.first_seq,
            last_seq=self.last_seq,
            first_ts=self.first_ts,
            last_ts=self.last_ts,
            min_event_id=self.min_id.hex(),
            max_event_id=self.max_id.hex(),
            ordered=self.ordered,
            instruments=sorted(self.instruments),
            rows_blake2b=self.digest.hexdigest(),
            last_hash=self.last_hash.hex(),
            sha256=sha256,
            generation=self.generation,
        )


def _read_back(directory: Path, part: _PartWriter, prev: bytes) -> ArchiveFile:
    """Re-read a written file from disk, batch by batch, and check it holds exactly the
    rows written: the row count, the digest of every column, and the hash chain from
    ``prev`` (the hash of the row before its first). Returns its manifest entry."""
    assert part.final is not None
    rel = part.final.relative_to(directory).as_posix()
    digest = hashlib.blake2b(digest_size=32)
    update = digest.update
    rows = 0
    seq = part.first_seq - 1
    try:
        raw = part.final.read_bytes()
        pf = pq.ParquetFile(pa.BufferReader(raw))
        if pf.schema_arrow != SCHEMA:
            raise ArchiveError(f"archive file {rel} was read back with another schema")
        for batch in pf.iter_batches(batch_size=ROW_GROUP_ROWS):
            cols = [batch.column(i).to_pylist() for i in range(batch.num_columns)]
            for row in zip(*cols, strict=True):
                update(_ROW_ENCODE(row))
                seq += 1
                if row[1] != seq:
                    raise ArchiveError(f"archive file {rel}: seq {seq} read back as {row[1]}")
                if chain_hash(prev, row[2], row[10]) != row[11]:
                    raise ArchiveError(
                        f"archive file {rel}: seq {seq} read back breaks the hash chain"
                    )
                prev = row[11]
                rows += 1
    except (OSError, pa.ArrowException) as exc:
        raise ArchiveError(f"archive file {rel} cannot be read back: {exc}") from exc
    if rows != part.rows:
        raise ArchiveError(f"archive file {rel} read back {rows} rows, {part.rows} were written")
    if digest.digest() != part.digest.digest():
        raise ArchiveError(f"archive file {rel} read back other rows than were written")
    return part.entry(directory, hashlib.sha256(raw).hexdigest())


def archive_journal(
    journal: Journal,
    before_ns: int,
    directory: str | Path | None = None,
    *,
    streams: Sequence[str] | None = None,
    dry_run: bool = False,
    progress: Callable[[int], None] | None = None,
) -> ArchiveReport:
    """Move every stream's rows received before ``before_ns`` (a prefix in seq order) to
    Parquet in ``directory``, verified, then delete them from the database.

    ``streams`` defaults to every market stream (``md.*``); session streams stay in the
    database unless named. ``directory`` defaults to the journal's archive; a journal
    archives into one directory only. ``progress(rows)`` is called as rows are read.
    Raises :class:`ArchiveError` (nothing deleted) when a row fails its checks, a file does
    not read back as written, or the database changed under the run.
    """
    inner = journal.inner if isinstance(journal, TieredJournal) else journal
    state = inner.archive_state()
    if directory is None:
        if state is None:
            raise ArchiveError("nothing is archived yet: say where (--dir DIR)")
        directory = state.directory
    root = Path(directory).resolve()
    if state is not None and Path(state.directory).resolve() != root:
        raise ArchiveError(
            f"this journal archives into {state.directory}, not {root}; "
            "leave out --dir (one journal, one archive)"
        )
    old = ArchiveTier(root, state).manifest if state is not None else None
    generation = (state.generation if state is not None else 0) + 1
    known = [s.stream for s in inner.streams()]
    names = sorted(streams) if streams else [s for s in known if s.startswith("md.")]
    missing = sorted(set(names) - set(known))
    if missing:
        raise ArchiveError(f"no such stream(s): {', '.join(missing)}")
    for name in names:
        _check_stream_name(name)

    report = ArchiveReport(str(root), before_ns, generation, dry_run, 0, 0, [], [])
    parts: list[_PartWriter] = []
    boundaries = dict(state.boundaries) if state is not None else {}
    manifest_path: Path | None = None
    seen = 0
    try:
        for stream in names:
            done, prev = archive_start(state, stream)
            part_prev = prev  # the hash before the open part's first row
            part: _PartWriter | None = None
            days: set[str] = set()
            last_day_no, day = None, ""
            seq = done
            rows = inner.read(stream, from_seq=done + 1)
            try:
                for rec in rows:
                    if rec.ts_recv >= before_ns:
                        break
                    seq += 1
                    bad = check_row(seq, prev, rec)
                    if bad is not None:
                        raise ArchiveError(
                            f"{stream}: {bad[1]}; the journal fails verify there, nothing archived"
                        )
                    day_no = rec.ts_recv // NS_PER_DAY
                    if day_no != last_day_no:
                        last_day_no, day = day_no, utc_day(rec.ts_recv)
                        days.add(day)
                    if not dry_run:
                        # one open file per stream: a new day closes (and checks) the last
                        if part is not None and part.day != day:
                            part.finish()
                            report.files.append(_read_back(root, part, part_prev))
                            part_prev, part = prev, None
                        if part is None:
                            part = _PartWriter(root, stream, day, generation)
                            parts.append(part)
                        part.add(rec)
                    prev = rec.hash
                    seen += 1
                    if progress is not None and seen % 10_000 == 0:
                        progress(seen)
            finally:
                _close(rows)
            if part is not None:
                part.finish()
                report.files.append(_read_back(root, part, part_prev))
            if seq == done:
                continue
            report.streams.append(StreamArchived(stream, done + 1, seq, seq - done, sorted(days)))
            report.rows += seq - done
            boundaries[stream] = ArchiveBoundary(seq, prev)
        if progress is not None:
            progress(seen)
        if dry_run or not report.rows:
            if not report.rows:
                report.generation = generation - 1
            return report
        manifest = ArchiveManifest(
            generation=generation,
            before_ns=max(before_ns, old.before_ns) if old is not None else before_ns,
            streams={s: StreamBoundary(b.seq, b.hash.hex()) for s, b in sorted(boundaries.items())},
            files=sorted(
                [*(old.files if old is not None else []), *report.files],
                key=lambda f: (f.stream, f.first_seq),
            ),
        )
        raw = msgspec.json.format(_MANIFEST_ENC.encode(manifest), indent=1)
        manifest_path = root / manifest_name(generation)
        tmp = root / f".{manifest_path.name}.tmp"
        tmp.write_bytes(raw)
        _publish(tmp, manifest_path)
        new_state = ArchiveState(
            directory=str(root),
            generation=generation,
            manifest_sha256=hashlib.sha256(raw).hexdigest(),
            boundaries=boundaries,
        )
        report.deleted = inner.commit_archive(new_state, generation - 1)
        return report
    except BaseException:
        for p in parts:
            p.discard()
        if manifest_path is not None:
            manifest_path.unlink(missing_ok=True)
        raise


__all__ = [
    "ArchiveError",
    "ArchiveFile",
    "ArchiveManifest",
    "ArchiveReport",
    "ArchiveTier",
    "StreamArchived",
    "TieredJournal",
    "archive_journal",
    "manifest_name",
    "partition_dir",
    "utc_day",
]
