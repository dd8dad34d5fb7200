"""``tickerml quality``: how complete and how clean the journaled market data is.

For a time range (``ts_recv``, half open) and optionally some exchanges and symbols, the
market rows are read in the canonical order and passed through the same
:class:`kernel.validation.Validator` a session uses (config ``monitoring.validation``),
so the report counts exactly what a replay would refuse. Per stream
(``EXCHANGE:SYMBOL``):

* ``gaps``: silences longer than the stream's ``stale_after_ms`` (the ``stale_stream``
  rule's bound): between two consecutive market events, and from the range's start to
  the first event / from the last event to the range's end. Start, end and length to the
  nanosecond (shown to the second).
* ``hours``: per UTC hour of the range, ``present`` market events, ``expected`` ones
  (the stream's own rate while it was live x the hour's length in the range, rounded)
  and ``coverage_pct``, the share of the hour not inside a gap.
* ``rejected`` / ``flagged``: validation findings by rule (refused / flagged only).
* ``resyncs`` and ``downs``: ``Connectivity`` rows of the stream (``sys.CONNECTIVITY``).
* ``skew_ms``: percentiles (p50, p90, p99, max) of ``ts_recv - ts_event``, in ms.
* ``verdict``: ``bad`` when coverage is under 95 % or more than 0.1 % of the events were
  refused; ``degraded`` when there is any gap, resync, refusal or a p99 skew beyond
  ``max_skew_ms``; else ``ok``. ``reasons`` says which.

Across venues: ``divergences`` lists each ``cross_venue_band`` episode (the same
normalised symbol's mids more than ``cross_venue_band_bp`` apart): arbitrage or bad data,
the report cannot tell; the finding's values are given. ``late_events``: ``LateEvent``
rows of sessions in the range (inputs a live session saw too late to apply).
"""

from __future__ import annotations

import argparse
import html
import sys
from array import array
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec

from adapters.journal.base import Journal
from kernel.config import ValidationConfig
from kernel.events import Connectivity, MarketEvent, decode
from kernel.instruments import Instrument
from kernel.validation import Validator

HOUR_NS = 3_600_000_000_000
CONNECTIVITY_STREAM = "sys.CONNECTIVITY"


class Gap(msgspec.Struct, frozen=True):
    exchange: str
    symbol: str
    start_ns: int
    end_ns: int
    seconds: float
    start: str
    end: str


class StreamHour(msgspec.Struct, frozen=True):
    hour: str
    present: int
    expected: int
    coverage_pct: float


class StreamQuality(msgspec.Struct, frozen=True):
    exchange: str
    symbol: str
    events: int
    coverage_pct: float
    gap_seconds: float
    gaps: list[Gap]
    hours: list[StreamHour]
    rejected: dict[str, int]
    flagged: dict[str, int]
    resyncs: int
    downs: int
    skew_ms: dict[str, float]
    verdict: str
    reasons: list[str]


class Divergence(msgspec.Struct, frozen=True):
    symbol: str
    exchange: str
    other_exchange: str
    at_ns: int
    at: str
    detail: str


class QualityReport(msgspec.Struct, frozen=True):
    start_ns: int
    end_ns: int
    start: str
    end: str
    streams: list[StreamQuality]
    divergences: list[Divergence]
    late_events: int
    rejected_total: int


def iso(ns: int) -> str:
    """UTC time to the second (``2025-01-01T10:07:00Z``); sub-second part dropped."""
    return datetime.fromtimestamp(ns // 1_000_000_000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class _Acc:
    """One stream's running totals."""

    __slots__ = ("count", "first", "gaps", "hours", "last", "skews")

    def __init__(self) -> None:
        self.count = 0
        self.first = -1
        self.last = -1
        self.gaps: list[tuple[int, int]] = []
        self.hours: Counter[int] = Counter()
        self.skews = array("q")


def _percentiles(values: array[int]) -> dict[str, float]:
    if not values:
        return {}
    s = sorted(values)
    n = len(s)

    def at(q: float) -> float:
        return s[min(n - 1, int(q * n))] / 1e6

    return {"p50": at(0.5), "p90": at(0.9), "p99": at(0.99), "max": s[-1] / 1e6}


def _overlap(a0: int, a1: int, b0: int, b1: int) -> int:
    return max(0, min(a1, b1) - max(a0, b0))


def quality_report(
    journal: Journal,
    config: ValidationConfig,
    instruments: Sequence[Instrument] = (),
    start_ns: int | None = None,
    end_ns: int | None = None,
    exchanges: Sequence[str] | None = None,
    symbols: Sequence[str] | None = None,
) -> QualityReport:
    """The report over ``start_ns <= ts_recv < end_ns`` (see the module docstring);
    without bounds, from the first to just after the last market row. The rules run
    whether or not ``config.enabled`` applies them in sessions."""
    validator = Validator(msgspec.structs.replace(config, enabled=True), instruments)
    accs: dict[str, _Acc] = {}
    rejected: dict[str, Counter[str]] = {}
    flagged: dict[str, Counter[str]] = {}
    divergences: list[Divergence] = []
    first_seen: int | None = None
    last_seen = 0
    for rec in journal.read_range(start_ns, end_ns, exchanges, symbols):
        ev = decode(rec.payload)
        if not isinstance(ev, MarketEvent):
            validator.check(ev)
            continue
        key = f"{ev.exchange}:{ev.symbol}"
        acc = accs.get(key)
        if acc is None:
            acc = accs[key] = _Acc()
            acc.first = ev.ts_recv
        t = ev.ts_recv
        if first_seen is None:
            first_seen = t
        last_seen = max(last_seen, t)
        bound = config.stale_after_ms_by_stream.get(key, config.stale_after_ms) * 1_000_000
        if acc.count and bound and t - acc.last > bound:
            acc.gaps.append((acc.last, t))
        acc.count += 1
        acc.last = t
        acc.hours[t // HOUR_NS] += 1
        acc.skews.append(t - ev.ts_event)
        for f in validator.check(ev).findings:
            fkey = f"{f.exchange}:{f.symbol}"
            into = rejected if f.rejected else flagged
            into.setdefault(fkey, Counter())[f.rule] += 1
            if f.rule == "cross_venue_band":
                other = f.detail.split("other_exchange=", 1)[1].split(" ", 1)[0]
                divergences.append(
                    Divergence(f.symbol, f.exchange, other, f.ts_recv, iso(f.ts_recv), f.detail)
                )
    start = start_ns if start_ns is not None else (first_seen or 0)
    end = end_ns if end_ns is not None else last_seen + 1
    resyncs: Counter[str] = Counter()
    downs: Counter[str] = Counter()
    late = 0
    for info in journal.streams():
        if info.stream == CONNECTIVITY_STREAM:
            for rec in journal.read(info.stream, from_ts=start, to_ts=end - 1):
                c = decode(rec.payload)
                if isinstance(c, Connectivity):
                    if c.status == "resync":
                        resyncs[f"{c.exchange}:{c.symbol}"] += 1
                    elif c.status == "down":
                        downs[f"{c.exchange}:{c.symbol}"] += 1
        elif info.stream.startswith("session.") and info.last_ts >= start and info.first_ts < end:
            late += sum(
                1
                for rec in journal.read(info.stream, from_ts=start, to_ts=end - 1)
                if rec.kind == "LateEvent"
            )
    streams = [
        _stream_quality(
            key,
            accs[key],
            start,
            end,
            config,
            rejected.get(key, Counter()),
            flagged.get(key, Counter()),
            resyncs[key],
            downs[key],
        )
        for key in sorted(accs)
    ]
    return QualityReport(
        start_ns=start,
        end_ns=end,
        start=iso(start),
        end=iso(end),
        streams=streams,
        divergences=divergences,
        late_events=late,
        rejected_total=sum(sum(c.values()) for c in rejected.values()),
    )


def _stream_quality(
    key: str,
    acc: _Acc,
    start: int,
    end: int,
    config: ValidationConfig,
    rejected: Counter[str],
    flagged: Counter[str],
    resyncs: int,
    downs: int,
) -> StreamQuality:
    exchange, symbol = key.split(":", 1)
    bound = config.stale_after_ms_by_stream.get(key, config.stale_after_ms) * 1_000_000
    spans = list(acc.gaps)
    if bound and acc.first - start > bound:
        spans.insert(0, (start, acc.first))
    if bound and end - acc.last > bound:
        spans.append((acc.last, end))
    gap_ns = sum(b - a for a, b in spans)
    live_ns = max(1, (end - start) - gap_ns)
    rate = acc.count / live_ns
    hours: list[StreamHour] = []
    for h in range(start // HOUR_NS, (end - 1) // HOUR_NS + 1):
        h0, h1 = max(start, h * HOUR_NS), min(end, (h + 1) * HOUR_NS)
        length = h1 - h0
        silent = sum(_overlap(a, b, h0, h1) for a, b in spans)
        hours.append(
            StreamHour(
                hour=iso(h * HOUR_NS),
                present=acc.hours.get(h, 0),
                expected=round(rate * length),
                coverage_pct=round(100 * (length - silent) / length, 3),
            )
        )
    coverage = round(100 * (end - start - gap_ns) / max(1, end - start), 3)
    skew = _percentiles(acc.skews)
    refused = sum(rejected.values())
    reasons: list[str] = []
    verdict = "ok"
    if coverage < 95 or refused > acc.count / 1000:
        verdict = "bad"
    if coverage < 95:
        reasons.append(f"coverage {coverage:.3f} % < 95 %")
    if refused:
        reasons.append(f"{refused} events refused")
    if spans:
        reasons.append(f"{len(spans)} gaps, {gap_ns / 1e9:.3f} s")
    if resyncs:
        reasons.append(f"{resyncs} resyncs")
    if skew and skew["p99"] > config.max_skew_ms:
        reasons.append(f"skew p99 {skew['p99']:.1f} ms > {config.max_skew_ms} ms")
    if reasons and verdict == "ok":
        verdict = "degraded"
    return StreamQuality(
        exchange=exchange,
        symbol=symbol,
        events=acc.count,
        coverage_pct=coverage,
        gap_seconds=gap_ns / 1e9,
        gaps=[Gap(exchange, symbol, a, b, (b - a) / 1e9, iso(a), iso(b)) for a, b in spans],
        hours=hours,
        rejected=dict(sorted(rejected.items())),
        flagged=dict(sorted(flagged.items())),
        resyncs=resyncs,
        downs=downs,
        skew_ms=skew,
        verdict=verdict,
        reasons=reasons,
    )


# -- rendering ----------------------------------------------------------------------------


def to_json(report: QualityReport) -> bytes:
    return msgspec.json.encode(report)


def to_text(report: QualityReport) -> str:
    """A plain table: one line per stream, then its gaps, then divergences."""
    lines = [f"data quality {report.start} -> {report.end}"]
    lines.append(
        f"{'stream':<28}{'events':>10}{'coverage %':>12}{'gaps':>6}{'gap s':>10}"
        f"{'resyncs':>9}{'refused':>9}{'skew p99 ms':>13}  verdict"
    )
    for s in report.streams:
        p99 = s.skew_ms.get("p99", 0.0)
        lines.append(
            f"{s.exchange + ':' + s.symbol:<28}{s.events:>10}{s.coverage_pct:>12.3f}"
            f"{len(s.gaps):>6}{s.gap_seconds:>10.3f}{s.resyncs:>9}{sum(s.rejected.values()):>9}"
            f"{p99:>13.1f}  {s.verdict}"
        )
        for g in s.gaps:
            lines.append(f"    gap {g.start} -> {g.end}  {g.seconds:.3f} s")
        for rule, n in s.rejected.items():
            lines.append(f"    refused {rule}: {n}")
    for d in report.divergences:
        lines.append(f"divergence {d.symbol} {d.exchange}/{d.other_exchange} at {d.at}: {d.detail}")
    lines.append(f"late events: {report.late_events}; refused in all: {report.rejected_total}")
    return "\n".join(lines)


def to_html(report: QualityReport) -> str:
    """A self-contained page: the table and, per stream, hourly coverage as SVG bars."""
    esc = html.escape
    rows = []
    for s in report.streams:
        bars = []
        width = max(1, len(s.hours))
        for i, h in enumerate(s.hours):
            height = 40 * h.coverage_pct / 100
            colour = "#2a7" if h.coverage_pct >= 99 else "#d92" if h.coverage_pct >= 95 else "#c33"
            bars.append(
                f'<rect x="{i * 12}" y="{40 - height:.1f}" width="10" height="{height:.1f}" '
                f'fill="{colour}"><title>{esc(h.hour)}: {h.coverage_pct:.3f} % '
                f"({h.present}/{h.expected})</title></rect>"
            )
        svg = f'<svg width="{width * 12}" height="40">{"".join(bars)}</svg>'
        gaps = "<br>".join(
            f"{esc(g.start)} &rarr; {esc(g.end)} ({g.seconds:.3f} s)" for g in s.gaps
        )
        rows.append(
            f"<tr><td>{esc(s.exchange)}:{esc(s.symbol)}</td><td>{s.events}</td>"
            f"<td>{s.coverage_pct:.3f}</td><td>{gaps}</td><td>{s.resyncs}</td>"
            f"<td>{esc(json_compact(s.rejected))}</td><td>{esc(json_compact(s.skew_ms))}</td>"
            f"<td>{esc(s.verdict)}</td><td>{svg}</td></tr>"
        )
    div = "".join(
        f"<li>{esc(d.symbol)} {esc(d.exchange)}/{esc(d.other_exchange)} at {esc(d.at)}: "
        f"{esc(d.detail)}</li>"
        for d in report.divergences
    )
    return (
        "<!doctype html><meta charset=utf-8><title>TickerML data quality</title>"
        f"<h1>Data quality {esc(report.start)} &rarr; {esc(report.end)}</h1>"
        "<table border=1 cellpadding=4><tr><th>stream</th><th>events</th><th>coverage %</th>"
        "<th>gaps</th><th>resyncs</th><th>refused</th><th>skew ms</th><th>verdict</th>"
        "<th>hourly coverage</th></tr>" + "".join(rows) + "</table>"
        f"<h2>Cross-venue divergences</h2><ul>{div}</ul>"
        f"<p>late events: {report.late_events}; refused in all: {report.rejected_total}</p>"
    )


def json_compact(value: object) -> str:
    return msgspec.json.encode(value).decode()


# -- command line -------------------------------------------------------------------------


def add_quality_command(
    add: Callable[[str, Callable[[argparse.Namespace], int], str], Any],
) -> None:
    """Register ``tickerml quality`` through the CLI's ``add(name, fn, help)``."""
    sp = add("quality", cmd_quality, "data completeness and validation report per stream")
    sp.add_argument("--from", dest="start", help="start time (ISO-8601 UTC or ns), inclusive")
    sp.add_argument("--to", dest="end", help="end time (ISO-8601 UTC or ns), exclusive")
    sp.add_argument("--exchange", action="append", default=[], help="only this exchange")
    sp.add_argument("--symbol", action="append", default=[], help="only this symbol")
    sp.add_argument("--format", choices=["table", "json", "html"], default="table")
    sp.add_argument("--out", help="write the report to this file instead of stdout")
    sp.add_argument("--journal", help="journal DSN")
    sp.add_argument("--archive", metavar="DIR", help="the Parquet archive, if it moved")


def cmd_quality(args: argparse.Namespace) -> int:
    from journal_tools.cli import _config, _journal, parse_time

    config = _config(args)
    with _journal(args, config) as journal:
        report = quality_report(
            journal,
            config.monitoring.validation,
            config.instruments.instruments,
            start_ns=parse_time(args.start) if args.start else None,
            end_ns=parse_time(args.end) if args.end else None,
            exchanges=[e.upper() for e in args.exchange] or None,
            symbols=args.symbol or None,
        )
    if args.format == "json":
        text = to_json(report).decode()
    elif args.format == "html":
        text = to_html(report)
    else:
        text = to_text(report)
    if args.out:
        Path(args.out).write_text(text + "\n", encoding="utf-8")
    else:
        sys.stdout.write(text + "\n")
    return 0
