"""Import Tardis CSV files (``incremental_book_L2``, ``trades``, ``derivative_ticker``).

Tardis CSV is the de-facto format of crypto market history (NautilusTrader and
hftbacktest load it too). Rules applied here:

* Timestamps are microseconds since the epoch; ``timestamp`` becomes ``ts_event`` and
  ``local_timestamp`` becomes ``ts_recv`` (both in ns).
* Book rows that share ``timestamp``, ``local_timestamp`` and ``is_snapshot`` form one
  exchange message: one ``BookDelta`` (absolute sizes, 0 deletes) or, for a block of
  snapshot rows, one ``BookSnapshot`` (the book is cleared, then the rows applied).
* Prices and amounts are parsed exactly into the instrument's fixed point (no float).
* One instrument's files are merged into its stream ``md.<EXCHANGE>.<SYMBOL>`` in the
  canonical order (local time, then trades before book messages at equal times).
* ``seq`` of each event is the line number of its (first) row in its file, and its
  ``event_id`` hashes the file name and that line, so importing a file again adds nothing.
* The whole import is one journal transaction: a malformed row raises
  :class:`TardisFormatError` naming file and line and the journal is left as it was,
  unless ``skip_bad`` is set, in which case bad rows (and the message they belong to)
  are skipped, counted and recorded as a ``DataQuality`` event in stream ``import``.
"""

from __future__ import annotations

import gzip
import heapq
import io
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import msgspec

from adapters.journal.base import Journal, PreparedEvent, market_stream
from kernel.events import (
    BookDelta,
    BookSnapshot,
    DataQuality,
    Event,
    FundingRate,
    MarkPrice,
    Side,
    Trade,
    encode,
    kind_of,
    time_prefixed_id,
)
from kernel.fixedpoint import POW10, FixedPointError, parse_fixed
from kernel.instruments import Instrument, InstrumentError, InstrumentRegistry

BOOK_HEADER = "exchange,symbol,timestamp,local_timestamp,is_snapshot,side,price,amount"
TRADES_HEADER = "exchange,symbol,timestamp,local_timestamp,id,side,price,amount"
TICKER_HEADER = (
    "exchange,symbol,timestamp,local_timestamp,funding_timestamp,funding_rate,"
    "predicted_funding_rate,open_interest,last_price,index_price,mark_price"
)
HEADERS = {
    "incremental_book_L2": BOOK_HEADER,
    "trades": TRADES_HEADER,
    "derivative_ticker": TICKER_HEADER,
}


class TardisFormatError(ValueError):
    """A malformed file or row; the message names the file and the line."""

    def __init__(self, file: str, line: int, reason: str) -> None:
        super().__init__(f"{file}:{line}: {reason}")
        self.file = file
        self.line = line
        self.reason = reason


class ImportReport(msgspec.Struct):
    """What an import did. ``rows`` counts data rows read (book levels + trades +
    ticker rows); ``events`` the journal events made from them."""

    files: list[str] = msgspec.field(default_factory=list)
    streams: list[str] = msgspec.field(default_factory=list)
    rows: int = 0
    events: int = 0
    appended: int = 0
    duplicates: int = 0
    skipped_rows: int = 0
    first_bad: list[str] = msgspec.field(default_factory=list)
    first_ts: int = 0
    last_ts: int = 0


def file_kind(path: str | Path) -> str:
    """Which Tardis data type a file holds, from its name or, failing that, its header."""
    name = Path(path).name
    for kind in HEADERS:
        if f"_{kind}_" in name:
            return kind
    header = _open_text(path).readline().strip()
    for kind, h in HEADERS.items():
        if header == h:
            return kind
    raise TardisFormatError(str(path), 1, f"not a Tardis book/trades/ticker file: {header!r}")


def _open_text(path: str | Path) -> IO[str]:
    p = str(path)
    if p.endswith(".gz"):
        return io.TextIOWrapper(gzip.open(p, "rb"), encoding="utf-8", newline="")
    return open(p, encoding="utf-8", newline="")


class _Progress:
    """Bytes of the compressed inputs read so far, for progress bars."""

    def __init__(self, callback: Callable[[int, int], None] | None, files: list[Path]) -> None:
        self.callback = callback
        self.total = sum(os.path.getsize(f) for f in files)
        self.raw: dict[str, IO[bytes]] = {}
        self.done_before = 0

    def report(self) -> None:
        if self.callback is not None:
            pos = sum(f.tell() for f in self.raw.values() if not f.closed)
            self.callback(min(self.total, self.done_before + pos), self.total)


class _Reader:
    """Shared row-reading machinery: header check, instrument resolution, bad rows."""

    def __init__(
        self,
        path: Path,
        kind: str,
        registry: InstrumentRegistry,
        skip_bad: bool,
        report: ImportReport,
        progress: _Progress,
    ) -> None:
        self.path = path
        self.name = path.name
        self.kind = kind
        self.registry = registry
        self.skip_bad = skip_bad
        self.report = report
        self.progress = progress
        raw = open(path, "rb")  # noqa: SIM115 - closed by rows()
        progress.raw[str(path)] = raw
        self.fh: IO[str] = (
            io.TextIOWrapper(gzip.GzipFile(fileobj=raw, mode="rb"), encoding="utf-8", newline="")
            if str(path).endswith(".gz")
            else io.TextIOWrapper(raw, encoding="utf-8", newline="")
        )
        header = self.fh.readline().strip()
        if header != HEADERS[kind]:
            self.close()
            raise TardisFormatError(
                self.name, 1, f"expected header {HEADERS[kind]!r}, got {header!r}"
            )
        self.inst: Instrument | None = None
        self.feed = ""
        self.wire = ""

    def instrument(self, feed: str, wire: str, line: int) -> Instrument:
        if self.inst is None:
            try:
                self.inst = self.registry.by_wire(feed, wire)
            except InstrumentError as exc:
                raise TardisFormatError(self.name, line, str(exc)) from None
            self.feed, self.wire = feed, wire
        elif feed != self.feed or wire != self.wire:
            raise TardisFormatError(
                self.name,
                line,
                f"file mixes instruments: {feed}:{wire} after {self.feed}:{self.wire}",
            )
        return self.inst

    def bad(self, line: int, reason: str) -> None:
        if not self.skip_bad:
            raise TardisFormatError(self.name, line, reason)
        self.report.skipped_rows += 1
        if len(self.report.first_bad) < 10:
            self.report.first_bad.append(f"{self.name}:{line}: {reason}")

    def close(self) -> None:
        raw = self.progress.raw.pop(str(self.path), None)
        if raw is not None:
            self.progress.done_before += os.path.getsize(self.path)
        self.fh.close()


def _scaler(decimals: int) -> Callable[[str], int]:
    """A fast exact decimal parser for one precision; falls back to parse_fixed."""
    pow10 = POW10

    def parse(text: str) -> int:
        dot = text.find(".")
        if dot < 0:
            if text.isdigit():
                return int(text) * pow10[decimals]
            return parse_fixed(text, decimals)
        n = len(text) - dot - 1
        if n <= decimals and n > 0:
            whole = text[:dot]
            frac = text[dot + 1 :]
            if whole.isdigit() and frac.isdigit():
                return int(whole + frac) * pow10[decimals - n]
        return parse_fixed(text, decimals)

    return parse


def _book_events(r: _Reader) -> Iterator[Event]:
    """One BookDelta/BookSnapshot per message (rows sharing ts, local ts, snapshot flag)."""
    report = r.report
    bids: list[tuple[int, int]] = []
    asks: list[tuple[int, int]] = []
    cur: tuple[str, str, str] | None = None
    first_line = 0
    bad_msg = False
    inst: Instrument | None = None
    price_of: Callable[[str], int] = int
    size_of: Callable[[str], int] = int
    ts_e = ts_r = 0
    tick = lot = 1
    line = 1
    rows = 0

    def flush() -> Event | None:
        nonlocal bids, asks
        assert inst is not None and cur is not None
        if bad_msg:
            bids, asks = [], []
            return None
        cls = BookSnapshot if cur[2] == "true" else BookDelta
        if cls is BookSnapshot:
            bids.sort(key=lambda lv: -lv[0])
            asks.sort()
        ev = cls(ts_e, ts_r, inst.exchange, inst.symbol, first_line, tuple(bids), tuple(asks))
        bids, asks = [], []
        return ev

    for raw_line in r.fh:
        line += 1
        rows += 1
        if not rows & 0x3FFF:
            r.progress.report()
        parts = raw_line.rstrip("\r\n").split(",")
        if len(parts) != 8:
            if not raw_line.strip():
                rows -= 1
                continue
            r.bad(line, f"expected 8 columns, got {len(parts)}")
            bad_msg = True
            continue
        feed, wire, ts, local, snap, side, price_s, amount_s = parts
        key = (ts, local, snap)
        if key != cur:
            if cur is not None:
                ev = flush()
                if ev is not None:
                    yield ev
            cur = key
            first_line = line
            bad_msg = False
            if inst is None:
                inst = r.instrument(feed, wire, line)
                price_of = _scaler(inst.price_decimals)
                size_of = _scaler(inst.size_decimals)
                tick, lot = inst.tick_size, inst.lot_size
            try:
                ts_e = int(ts) * 1000
                ts_r = int(local) * 1000
            except ValueError:
                r.bad(line, f"bad timestamp {ts!r} or local_timestamp {local!r}")
                bad_msg = True
                continue
            if snap != "true" and snap != "false":
                r.bad(line, f"is_snapshot must be true or false, got {snap!r}")
                bad_msg = True
                continue
        if feed != r.feed or wire != r.wire:
            r.instrument(feed, wire, line)
        try:
            price = price_of(price_s)
            size = size_of(amount_s)
        except (FixedPointError, ValueError) as exc:
            r.bad(line, f"bad price/amount {price_s!r}/{amount_s!r}: {exc}")
            bad_msg = True
            continue
        if price <= 0 or size < 0 or price % tick or size % lot:
            r.bad(
                line, f"price {price_s} / amount {amount_s} invalid for {inst.key if inst else ''}"
            )
            bad_msg = True
            continue
        if side == "bid":
            bids.append((price, size))
        elif side == "ask":
            asks.append((price, size))
        else:
            r.bad(line, f"side must be bid or ask, got {side!r}")
            bad_msg = True
    if cur is not None:
        ev = flush()
        if ev is not None:
            yield ev
    report.rows += rows


def _trade_events(r: _Reader) -> Iterator[Event]:
    report = r.report
    inst: Instrument | None = None
    price_of: Callable[[str], int] = int
    size_of: Callable[[str], int] = int
    line = 1
    rows = 0
    for raw_line in r.fh:
        line += 1
        rows += 1
        if not rows & 0x3FFF:
            r.progress.report()
        parts = raw_line.rstrip("\r\n").split(",")
        if len(parts) != 8:
            if not raw_line.strip():
                rows -= 1
                continue
            r.bad(line, f"expected 8 columns, got {len(parts)}")
            continue
        feed, wire, ts, local, trade_id, side, price_s, amount_s = parts
        if inst is None:
            inst = r.instrument(feed, wire, line)
            price_of = _scaler(inst.price_decimals)
            size_of = _scaler(inst.size_decimals)
        elif feed != r.feed or wire != r.wire:
            r.instrument(feed, wire, line)
        try:
            ts_e = int(ts) * 1000
            ts_r = int(local) * 1000
            price = price_of(price_s)
            size = size_of(amount_s)
        except (FixedPointError, ValueError) as exc:
            r.bad(line, f"bad number in trade row: {exc}")
            continue
        if side != "buy" and side != "sell":
            r.bad(line, f"side must be buy or sell, got {side!r}")
            continue
        if price <= 0 or size <= 0 or price % inst.tick_size or size % inst.lot_size:
            r.bad(line, f"trade price {price_s} / amount {amount_s} invalid for {inst.key}")
            continue
        aggressor: Side = "buy" if side == "buy" else "sell"
        yield Trade(ts_e, ts_r, inst.exchange, inst.symbol, line, trade_id, price, size, aggressor)
    report.rows += rows


def _ticker_events(r: _Reader) -> Iterator[Event]:
    """MarkPrice for every row with a mark price; FundingRate when rate or time changes."""
    report = r.report
    inst: Instrument | None = None
    last_funding: tuple[int, int] | None = None
    line = 1
    rows = 0
    for raw_line in r.fh:
        line += 1
        rows += 1
        parts = raw_line.rstrip("\r\n").split(",")
        if len(parts) != 11:
            if not raw_line.strip():
                rows -= 1
                continue
            r.bad(line, f"expected 11 columns, got {len(parts)}")
            continue
        feed, wire, ts, local, funding_ts, rate_s, _pred, _oi, _last, index_s, mark_s = parts
        if inst is None or feed != r.feed or wire != r.wire:
            inst = r.instrument(feed, wire, line)
        try:
            ts_e = int(ts) * 1000
            ts_r = int(local) * 1000
            if rate_s:
                key = (parse_fixed(rate_s, 10), int(funding_ts) * 1000 if funding_ts else 0)
                if key != last_funding:
                    last_funding = key
                    yield FundingRate(ts_e, ts_r, inst.exchange, inst.symbol, line, key[0], key[1])
            if mark_s:
                mark = parse_fixed(mark_s, inst.price_decimals)
                index = parse_fixed(index_s, inst.price_decimals) if index_s else 0
                yield MarkPrice(ts_e, ts_r, inst.exchange, inst.symbol, line, mark, index)
        except (FixedPointError, ValueError) as exc:
            r.bad(line, f"bad number in ticker row: {exc}")
    report.rows += rows


_EVENTS = {
    "incremental_book_L2": _book_events,
    "trades": _trade_events,
    "derivative_ticker": _ticker_events,
}


def _keyed(
    events: Iterator[Event], file_tag: bytes
) -> Iterator[tuple[int, int, int, Event, bytes]]:
    for ev in events:
        yield ev.ts_recv, ev.PRIORITY, ev.seq, ev, file_tag  # type: ignore[attr-defined]


def import_files(
    journal: Journal,
    registry: InstrumentRegistry,
    files: list[str | Path],
    skip_bad: bool = False,
    batch_size: int = 20_000,
    progress: Callable[[int, int], None] | None = None,
) -> ImportReport:
    """Import Tardis files into ``journal`` in one transaction; see the module doc."""
    report = ImportReport()
    paths = [Path(f) for f in files]
    for p in paths:
        if not p.is_file():
            raise TardisFormatError(str(p), 0, "no such file")
    prog = _Progress(progress, paths)
    readers: list[_Reader] = []
    try:
        for p in paths:
            readers.append(_Reader(p, file_kind(p), registry, skip_bad, report, prog))
        # Resolve each file's instrument from its first data row, then group by stream.
        groups: dict[str, list[_Reader]] = {}
        for r in readers:
            inst = _peek_instrument(r)
            if inst is None:
                continue
            groups.setdefault(market_stream(inst.exchange, inst.symbol), []).append(r)
        with journal.transaction():
            for stream, rs in sorted(groups.items()):
                merged = heapq.merge(
                    *(_keyed(_EVENTS[r.kind](r), r.name.encode()) for r in rs),
                    key=lambda t: (t[0], t[1], t[2]),
                )
                _append_stream(journal, stream, merged, report, batch_size)
                report.streams.append(stream)
            if report.skipped_rows:
                journal.append(
                    "import",
                    [
                        DataQuality(
                            ts_event=report.last_ts,
                            ts_recv=report.last_ts,
                            rule="import_skipped_rows",
                            exchange="",
                            symbol="",
                            detail=f"{report.skipped_rows} bad rows skipped importing "
                            f"{', '.join(p.name for p in paths)}; first: "
                            + "; ".join(report.first_bad[:3]),
                        )
                    ],
                )
        prog.report()
    finally:
        for r in readers:
            r.close()
    report.files = [str(p) for p in paths]
    return report


def _peek_instrument(r: _Reader) -> Instrument | None:
    """Read the first data row's exchange and symbol without losing the row."""
    pos_line = r.fh.readline()
    if not pos_line.strip():
        return None
    parts = pos_line.split(",", 2)
    inst = r.instrument(parts[0], parts[1], 2)
    rest = r.fh
    r.fh = _Chain(pos_line, rest)  # type: ignore[assignment]
    return inst


class _Chain:
    """A text source that yields one pushed-back line before the rest of a file."""

    def __init__(self, first: str, rest: IO[str]) -> None:
        self.first: str | None = first
        self.rest = rest

    def __iter__(self) -> Iterator[str]:
        if self.first is not None:
            first, self.first = self.first, None
            yield first
        yield from self.rest

    def close(self) -> None:
        self.rest.close()


def _append_stream(
    journal: Journal,
    stream: str,
    merged: Iterator[tuple[int, int, int, Event, bytes]],
    report: ImportReport,
    batch_size: int,
) -> None:
    tail = next((s.last_seq for s in journal.streams() if s.stream == stream), 0)
    batch: list[PreparedEvent] = []
    first = report.first_ts
    last = report.last_ts
    for ts_recv, prio, seq, ev, tag in merged:
        payload = encode(ev)
        kind = kind_of(ev)
        eid = time_prefixed_id(ev.ts_event, b"tardis|%s|%s|%d" % (tag, kind.encode(), seq))
        batch.append(
            PreparedEvent(
                eid,
                ev.ts_event,
                ts_recv,
                prio,
                kind,
                ev.exchange,  # type: ignore[attr-defined]
                ev.symbol,  # type: ignore[attr-defined]
                seq,
                payload,
            )
        )
        if not first or ts_recv < first:
            first = ts_recv
        if ts_recv > last:
            last = ts_recv
        if len(batch) >= batch_size:
            tail = _flush(journal, stream, batch, report, tail)
            batch = []
    if batch:
        _flush(journal, stream, batch, report, tail)
    report.first_ts, report.last_ts = first, last


def _flush(
    journal: Journal, stream: str, batch: list[PreparedEvent], report: ImportReport, tail: int
) -> int:
    """Append; returns the stream's new tail seq."""
    seqs = journal.append_prepared(stream, batch)
    report.events += len(batch)
    # A duplicate returns the seq it already had (<= tail); new rows get seqs above it.
    new = sum(1 for q in seqs if q > tail)
    report.duplicates += len(batch) - new
    report.appended += new
    return max(tail, *seqs) if seqs else tail
