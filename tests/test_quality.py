"""``tickerml quality`` (journal_tools/quality.py): a synthetic day with a known
7-minute gap, a resync, a refused print and a cross-venue divergence, reported exactly."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec

from adapters.journal.base import market_stream
from adapters.journal.memory import MemoryJournal
from journal_tools.quality import iso, quality_report, to_html, to_json, to_text
from kernel.config import ValidationConfig
from kernel.events import BookSnapshot, Connectivity, Event, LateEvent, Trade
from kernel.instruments import Instrument

S = 1_000_000_000
DAY = 1_735_689_600 * S  # 2025-01-01T00:00:00Z
SYM = "BTC-USDT"
GAP_FROM, GAP_TO = DAY + 10 * 3600 * S, DAY + (10 * 3600 + 420) * S  # 10:00:00 -> 10:07:00


def inst(exchange: str) -> Instrument:
    return Instrument(
        exchange=exchange,
        symbol=SYM,
        kind="spot",
        base="BTC",
        quote="USDT",
        price_decimals=1,
        size_decimals=3,
    )


def day_of_trades(exchange: str, gap: bool) -> list[Event]:
    """A print every 2 s of 2025-01-01 (ts_event 40 ms before receipt); with ``gap``
    nothing strictly between 10:00:00 and 10:07:00."""
    out: list[Event] = []
    for i in range(43_200):
        t = DAY + 2 * i * S
        if gap and GAP_FROM < t < GAP_TO:
            continue
        out.append(Trade(t - 40_000_000, t, exchange, SYM, i + 1, f"{i}", 1_000_000, 5, "buy"))
    return out


def test_synthetic_day_with_a_7_minute_gap() -> None:
    j = MemoryJournal()
    bn = day_of_trades("BINANCE", gap=True)
    # the print of 00:03:18 sent again under another sequence number (an identical row
    # would be the same event to the journal): refused as duplicate_trade
    bn.insert(100, msgspec.structs.replace(bn[99], seq=10**9))
    j.append(market_stream("BINANCE", SYM), bn)
    kr = day_of_trades("KRAKEN", gap=False)
    # at noon each venue sends a book, KRAKEN's 3 % above: a cross-venue divergence
    noon = DAY + 12 * 3600 * S
    j.append(
        market_stream("BINANCE", SYM),
        [BookSnapshot(noon, noon + 1, "BINANCE", SYM, 0, ((999_000, 1),), ((1_001_000, 1),))],
    )
    kr.append(
        BookSnapshot(noon + 1, noon + 2, "KRAKEN", SYM, 0, ((1_029_000, 1),), ((1_031_000, 1),))
    )
    j.append(market_stream("KRAKEN", SYM), kr)
    j.append(
        "sys.CONNECTIVITY",
        [Connectivity(DAY + 5 * S, DAY + 5 * S, "KRAKEN", SYM, "resync", "sequence_gap: 1 -> 3")],
    )
    j.append(
        "session.s1",
        [LateEvent(DAY + 7 * S, DAY + 7 * S, "md.KRAKEN.BTC-USDT", "Trade", 5, DAY, b"")],
    )
    config = ValidationConfig()
    report = quality_report(j, config, [inst("BINANCE"), inst("KRAKEN")], DAY, DAY + 24 * 3600 * S)
    assert (report.start, report.end) == ("2025-01-01T00:00:00Z", "2025-01-02T00:00:00Z")
    bn_q, kr_q = report.streams
    assert (bn_q.exchange, kr_q.exchange) == ("BINANCE", "KRAKEN")
    # the gap, to the second (and to the ns): last print 10:00:00, next 10:07:00
    assert len(bn_q.gaps) == 1
    g = bn_q.gaps[0]
    assert (g.start, g.end, g.seconds) == ("2025-01-01T10:00:00Z", "2025-01-01T10:07:00Z", 420.0)
    assert (g.start_ns, g.end_ns) == (GAP_FROM, GAP_TO)
    # 209 prints missing (10:00:02 .. 10:06:58), one repeated, one snapshot
    assert bn_q.events == 43_200 - 209 + 1 + 1
    assert bn_q.coverage_pct == round(100 * (86_400 - 420) / 86_400, 3)
    hour10 = bn_q.hours[10]
    assert hour10.hour == "2025-01-01T10:00:00Z"
    assert (hour10.present, hour10.coverage_pct) == (1_800 - 209, round(100 * 3180 / 3600, 3))
    assert bn_q.hours[9].coverage_pct == 100.0 and bn_q.hours[9].present == 1_800
    # expected: the stream's live rate (42,993 events / 85,980 s) x 3600 s
    assert hour10.expected == round(42_993 / 85_980 * 3600) == 1_800
    assert bn_q.rejected == {"duplicate_trade": 1}
    assert bn_q.verdict == "degraded"
    assert bn_q.reasons == ["1 events refused", "1 gaps, 420.000 s"]
    assert bn_q.skew_ms == {"p50": 40.0, "p90": 40.0, "p99": 40.0, "max": 40.0}
    assert kr_q.gaps == [] and kr_q.coverage_pct == 100.0
    assert (kr_q.resyncs, kr_q.verdict, kr_q.reasons) == (1, "degraded", ["1 resyncs"])
    assert report.late_events == 1
    assert report.rejected_total == 1
    # KRAKEN mid 1030 vs BINANCE 1000: 300 bp > 200 bp
    (d,) = report.divergences
    assert (d.symbol, d.exchange, d.other_exchange, d.at) == (
        SYM,
        "KRAKEN",
        "BINANCE",
        iso(noon + 2),
    )
    assert "off_bp=300.00" in d.detail
    # the three forms
    assert json.loads(to_json(report))["streams"][0]["gaps"][0]["seconds"] == 420.0
    text = to_text(report)
    assert "gap 2025-01-01T10:00:00Z -> 2025-01-01T10:07:00Z  420.000 s" in text
    page = to_html(report)
    assert page.startswith("<!doctype html>") and page.count("<svg") == 2
    assert "2025-01-01T10:00:00Z &rarr; 2025-01-01T10:07:00Z (420.000 s)" in page


def test_leading_and_trailing_silence_are_gaps() -> None:
    j = MemoryJournal()
    evs = [
        Trade(t - 1, t, "BINANCE", SYM, 0, str(t), 1_000_000, 5, "buy")
        for t in range(DAY + 60 * S, DAY + 120 * S, S)
    ]
    j.append(market_stream("BINANCE", SYM), evs)
    report = quality_report(j, ValidationConfig(), [inst("BINANCE")], DAY, DAY + 180 * S)
    (s,) = report.streams
    assert [(g.start, g.end, g.seconds) for g in s.gaps] == [
        ("2025-01-01T00:00:00Z", "2025-01-01T00:01:00Z", 60.0),
        ("2025-01-01T00:01:59Z", "2025-01-01T00:03:00Z", 61.0),
    ]
    assert s.verdict == "bad"  # 121 s of 180 silent
    assert s.coverage_pct == round(100 * 59 / 180, 3)


def test_cli_quality_json_and_html(tmp_path: Path) -> None:
    from adapters.journal import open_journal
    from journal_tools.cli import main

    dsn = f"sqlite:///{tmp_path / 'j.db'}"
    j = open_journal(dsn)
    j.append(market_stream("BINANCE", SYM), day_of_trades("BINANCE", gap=True)[:21_600])
    j.close()
    out = tmp_path / "q.json"
    args = ["quality", "--journal", dsn, "--from", "2025-01-01T09:00:00", "--to"]
    args += ["2025-01-01T11:00:00", "--exchange", "binance", "--format", "json"]
    assert main([*args, "--out", str(out), "-q"]) == 0
    report = json.loads(out.read_text())
    (s,) = report["streams"]
    assert [(g["start"], g["end"], g["seconds"]) for g in s["gaps"]] == [
        ("2025-01-01T10:00:00Z", "2025-01-01T10:07:00Z", 420.0)
    ]
    assert [h["coverage_pct"] for h in s["hours"]] == [100.0, round(100 * 3180 / 3600, 3)]
    page = tmp_path / "q.html"
    assert main([*args[:-1], "html", "--out", str(page), "-q"]) == 0
    assert "10:07:00Z (420.000 s)" in page.read_text()
