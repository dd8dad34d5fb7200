"""Market-data validation (kernel/validation.py): every rule on a hand-made case with
the exact values of its finding, the value just inside each threshold, determinism,
snapshot/restore and a property over valid random books."""

from __future__ import annotations

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from kernel.book import L2Book
from kernel.config import MonitoringConfig, ValidationConfig
from kernel.events import (
    BookDelta,
    BookSnapshot,
    Connectivity,
    DataQuality,
    Event,
    FundingRate,
    Heartbeat,
    Level,
    MarkPrice,
    Trade,
    encode,
)
from kernel.instruments import Instrument
from kernel.validation import Validator, Verdict

MS = 1_000_000
T0 = 1_700_000_000_000_000_000
BN, KR = "BINANCE", "KRAKEN"
SYM = "BTC-USDT"


def inst(exchange: str, price_decimals: int) -> Instrument:
    return Instrument(
        exchange=exchange,
        symbol=SYM,
        kind="spot",
        base="BTC",
        quote="USDT",
        price_decimals=price_decimals,
        size_decimals=3,
    )


INSTRUMENTS = [inst(BN, 1), inst(KR, 2)]  # KRAKEN prices have one more decimal


def validator(**overrides: object) -> Validator:
    config = ValidationConfig(**{"enabled": True, **overrides})  # type: ignore[arg-type]
    return Validator(config, INSTRUMENTS)


def snap(
    t: int, bids: tuple[Level, ...], asks: tuple[Level, ...], ex: str = BN, seq: int = 0
) -> BookSnapshot:
    """ts_recv = t; ts_event 1 ms earlier (inside every timing bound)."""
    return BookSnapshot(t - MS, t, ex, SYM, seq, bids, asks)


def delta(
    t: int, bids: tuple[Level, ...] = (), asks: tuple[Level, ...] = (), ex: str = BN, seq: int = 0
) -> BookDelta:
    return BookDelta(t - MS, t, ex, SYM, seq, bids, asks)


def trade(t: int, tid: str, price: int, size: int = 5, ex: str = BN, ts_event: int = 0) -> Trade:
    return Trade(ts_event or t - MS, t, ex, SYM, 0, tid, price, size, "buy")


def base_book(v: Validator, t: int = T0) -> None:
    """BINANCE: bid 1000 x 5, 995 x 7; ask 1010 x 5, 1020 x 3 (mid 1005)."""
    assert v.check(snap(t, ((1000, 5), (995, 7)), ((1010, 5), (1020, 3)))) == Verdict(True, ())


def only(verdict: Verdict) -> DataQuality:
    assert len(verdict.findings) == 1, verdict.findings
    return verdict.findings[0]


def assert_valid(book: L2Book | None) -> None:
    assert book is not None
    bb, ba = book.best_bid(), book.best_ask()
    if bb is not None and ba is not None:
        assert bb[0] < ba[0]


# -- crossed / locked -----------------------------------------------------------------


def test_crossed_update_rejected_and_book_unchanged() -> None:
    v = validator()
    base_book(v)
    verdict = v.check(delta(T0 + MS, bids=((1011, 1),), seq=9))
    f = only(verdict)
    assert verdict.accept is False
    assert (f.rule, f.exchange, f.symbol, f.rejected, f.source_seq) == (
        "crossed_book",
        BN,
        SYM,
        True,
        9,
    )
    assert f.detail == "best_bid=1011 best_ask=1010"
    assert (f.ts_event, f.ts_recv) == (T0 + MS, T0 + MS)
    book = v.book(BN, SYM)
    assert book is not None
    assert book.canonical() == ([(1000, 5), (995, 7)], [(1010, 5), (1020, 3)])
    assert_valid(book)
    assert v.mid_x2(BN, SYM) == 2010


def test_locked_update_rejected_and_one_tick_below_accepted() -> None:
    v = validator()
    base_book(v)
    f = only(v.check(delta(T0 + MS, bids=((1010, 1),))))
    assert (f.rule, f.detail, f.rejected) == ("locked_book", "best_bid=1010 best_ask=1010", True)
    assert v.check(delta(T0 + 2 * MS, bids=((1009, 1),))) == Verdict(True, ())
    book = v.book(BN, SYM)
    assert book is not None and book.best_bid() == (1009, 1)


def test_delta_that_deletes_the_touch_before_crossing_it_is_valid() -> None:
    v = validator()
    base_book(v)
    # delete ask 1010, bid at 1010: the best ask after the update is 1020
    assert v.check(delta(T0 + MS, bids=((1010, 2),), asks=((1010, 0),))) == Verdict(True, ())
    book = v.book(BN, SYM)
    assert book is not None and (book.best_bid(), book.best_ask()) == ((1010, 2), (1020, 3))
    assert v.mid_x2(BN, SYM) == 2030


def test_crossed_snapshot_rejected() -> None:
    v = validator()
    f = only(v.check(snap(T0, ((1012, 1), (1000, 5)), ((1010, 5),))))
    assert (f.rule, f.detail, f.rejected) == ("crossed_book", "best_bid=1012 best_ask=1010", True)
    assert v.mid_x2(BN, SYM) is None


def test_callers_book_is_read_not_changed() -> None:
    book = L2Book(BN, SYM)
    book.apply_snapshot(((1000, 5),), ((1010, 5),), T0)
    v = validator()
    assert v.check(snap(T0, ((1000, 5),), ((1010, 5),)), book).accept
    f = only(v.check(delta(T0 + MS, asks=((999, 1),)), book))
    assert (f.rule, f.detail) == ("crossed_book", "best_bid=1000 best_ask=999")
    assert v.check(delta(T0 + MS, asks=((1005, 1),)), book) == Verdict(True, ())
    assert book.canonical() == ([(1000, 5)], [(1010, 5)])  # the caller applies
    assert v.book(BN, SYM) is None
    assert v.mid_x2(BN, SYM) == 2005


# -- sizes and prices -----------------------------------------------------------------


def test_negative_size_in_delta_rejected_zero_is_a_delete() -> None:
    v = validator()
    base_book(v)
    f = only(v.check(delta(T0 + MS, bids=((999, 1), (998, -1)))))
    assert (f.rule, f.detail, f.rejected) == (
        "non_positive_size",
        "side=bid price=998 size=-1",
        True,
    )
    book = v.book(BN, SYM)
    assert book is not None and book.bids.size_at(999) == 0  # nothing of it applied
    assert v.check(delta(T0 + 2 * MS, bids=((995, 0),))) == Verdict(True, ())
    assert book.bids.levels() == [(1000, 5)]


def test_zero_size_in_snapshot_and_trade_rejected() -> None:
    v = validator()
    f = only(v.check(snap(T0, ((1000, 5),), ((1010, 0),))))
    assert (f.rule, f.detail) == ("non_positive_size", "side=ask price=1010 size=0")
    f = only(v.check(trade(T0, "a", 1000, size=0)))
    assert (f.rule, f.detail, f.rejected) == (
        "non_positive_size",
        "side=buy price=1000 size=0",
        True,
    )
    assert v.check(trade(T0, "b", 1000, size=1)).accept


def test_non_positive_prices_rejected() -> None:
    v = validator()
    f = only(v.check(trade(T0, "a", 0)))
    assert (f.rule, f.detail) == ("non_positive_price", "side=buy price=0")
    f = only(v.check(snap(T0, ((0, 5),), ((1010, 1),))))
    assert (f.rule, f.detail) == ("non_positive_price", "side=bid price=0")
    f = only(v.check(MarkPrice(T0 - MS, T0, BN, SYM, 0, -3)))
    assert (f.rule, f.detail) == ("non_positive_price", "mark_price=-3")


# -- duplicate trades -----------------------------------------------------------------


def test_duplicate_trade_id_rejected_within_window_only() -> None:
    v = validator(duplicate_trade_window=2)
    assert v.check(trade(T0, "t1", 1000)).accept
    f = only(v.check(trade(T0 + MS, "t1", 1001, size=3)))
    assert (f.rule, f.rejected) == ("duplicate_trade", True)
    assert f.detail == f"trade_id='t1' price=1001 size=3 first_ts_event={T0 - MS}"
    assert v.check(trade(T0 + MS, "t1", 1000, ex=KR)).accept  # other venue's own ids
    assert v.check(trade(T0 + 2 * MS, "t2", 1000)).accept
    assert not v.check(trade(T0 + 3 * MS, "t1", 1000)).accept  # still one of the last 2
    assert v.check(trade(T0 + 4 * MS, "t3", 1000)).accept  # t1 leaves the window
    assert v.check(trade(T0 + 5 * MS, "t1", 1000)).accept
    assert not v.check(trade(T0 + 6 * MS, "t3", 1000)).accept
    assert v.check(trade(T0 + 7 * MS, "", 1000)).accept  # no id: not checked
    assert v.check(trade(T0 + 8 * MS, "", 1000)).accept


def test_rejected_trade_id_is_not_remembered() -> None:
    v = validator()
    base_book(v)
    assert not v.check(trade(T0 + MS, "t9", 10_050)).accept  # 10x: price band
    assert v.check(trade(T0 + 2 * MS, "t9", 1005)).accept  # the corrected print


# -- price band -----------------------------------------------------------------------


def test_trade_price_band_against_last_mid() -> None:
    v = validator()  # 500 bp
    base_book(v)  # mid 1005: |2p - 2010| * 10_000 <= 500 * 2010  <=>  |2p - 2010| <= 100.5
    assert v.check(trade(T0 + MS, "a", 1055)) == Verdict(True, ())
    assert v.check(trade(T0 + MS, "b", 955)) == Verdict(True, ())
    verdict = v.check(trade(T0 + MS, "c", 1056))
    f = only(verdict)
    assert verdict.accept is False
    assert (f.rule, f.rejected) == ("price_band", True)
    # |2112 - 2010| * 10_000 / 2010 = 507.46 bp
    assert f.detail == "price=1056 ref=1005 band_bp=500 off_bp=507.46"
    f = only(v.check(trade(T0 + MS, "d", 10_050)))  # a 10x print
    assert f.detail == "price=10050 ref=1005 band_bp=500 off_bp=90000.00"


def test_trade_band_without_book_uses_last_trade() -> None:
    v = validator(price_band_bp=100)
    assert v.check(trade(T0, "a", 1000)).accept  # nothing to compare with
    assert v.check(trade(T0, "b", 1010)).accept  # exactly 100 bp
    f = only(v.check(trade(T0, "c", 1021)))  # vs 1010: 11 / 1010 = 108.91 bp
    assert f.detail == "price=1021 ref=1010 band_bp=100 off_bp=108.91"


def test_delta_moving_the_mid_out_of_band_rejected_book_unchanged() -> None:
    v = validator()
    base_book(v)
    # the asks 1010 and 1020 go, 1200 comes: mid (1000 + 1200) / 2 = 1100
    f = only(v.check(delta(T0 + MS, asks=((1010, 0), (1020, 0), (1200, 4)))))
    assert (f.rule, f.rejected) == ("price_band", True)
    assert f.detail == "mid=1100 ref=1005 band_bp=500 off_bp=945.27"
    book = v.book(BN, SYM)
    assert book is not None and book.asks.levels() == [(1010, 5), (1020, 3)]
    # just inside: asks to 1111: mid 1055.5, |2111 - 2010| = 101 > 100.5 -> out; 1110 in
    assert not v.check(delta(T0 + MS, asks=((1010, 0), (1020, 0), (1111, 4)))).accept
    assert v.check(delta(T0 + MS, asks=((1010, 0), (1020, 0), (1110, 4)))).accept
    assert v.mid_x2(BN, SYM) == 2110


def test_snapshot_out_of_band_is_flagged_and_reanchors() -> None:
    v = validator()
    base_book(v)
    verdict = v.check(snap(T0 + MS, ((1100, 1),), ((1101, 1),)))
    f = only(verdict)
    assert verdict.accept is True
    assert (f.rule, f.rejected) == ("price_band", False)
    assert f.detail == "mid=1100.5 ref=1005 band_bp=500 off_bp=950.25"
    assert v.mid_x2(BN, SYM) == 2201
    assert v.check(trade(T0 + 2 * MS, "a", 1100)).accept


def test_mark_price_band() -> None:
    v = validator()
    base_book(v)
    assert v.check(MarkPrice(T0, T0 + MS, BN, SYM, 0, 1055)).accept
    f = only(v.check(MarkPrice(T0, T0 + MS, BN, SYM, 0, 1056)))
    assert (f.rule, f.detail, f.rejected) == (
        "price_band",
        "price=1056 ref=1005 band_bp=500 off_bp=507.46",
        True,
    )
    assert v.check(FundingRate(T0, T0 + MS, BN, SYM, 0, 10_000)) == Verdict(True, ())


# -- cross-venue band -------------------------------------------------------------------


def test_cross_venue_band_once_per_episode_with_rescaled_prices() -> None:
    v = validator()  # 200 bp
    base_book(v)  # BINANCE mid 100.5 (1 decimal): 1005
    assert v.check(snap(T0, ((10_000, 5),), ((10_100, 5),), ex=KR)).accept  # 100.50
    # KRAKEN mid 102.50: |20500 - 20100| * 10_000 = 4_000_000 <= 200 * 20100: inside
    assert v.check(snap(T0 + MS, ((10_200, 5),), ((10_300, 5),), ex=KR)) == Verdict(True, ())
    verdict = v.check(delta(T0 + 2 * MS, bids=((10_210, 1),), ex=KR, seq=4))
    f = only(verdict)
    assert verdict.accept is True
    assert (f.rule, f.exchange, f.rejected, f.source_seq) == ("cross_venue_band", KR, False, 4)
    # 410 * 10_000 / 20100 = 203.98 bp
    assert f.detail == "mid=10255 other_exchange=BINANCE other_mid=1005 band_bp=200 off_bp=203.98"
    # the same episode: no more findings, from either side
    assert v.check(delta(T0 + 3 * MS, bids=((10_220, 1),), ex=KR)) == Verdict(True, ())
    assert v.check(delta(T0 + 3 * MS, bids=((999, 1),))) == Verdict(True, ())
    # back inside, then out again: a new episode
    assert v.check(delta(T0 + 4 * MS, bids=((10_210, 0), (10_220, 0)), ex=KR)) == Verdict(True, ())
    f = only(v.check(delta(T0 + 5 * MS, bids=((10_230, 1),), ex=KR)))
    assert f.rule == "cross_venue_band"


def test_cross_venue_band_can_reject_and_ignores_stale_venues() -> None:
    v = validator(reject_cross_venue=True)
    base_book(v)
    assert v.check(snap(T0, ((10_000, 5),), ((10_100, 5),), ex=KR)).accept
    verdict = v.check(snap(T0 + MS, ((10_300, 5),), ((10_400, 5),), ex=KR))
    assert verdict.accept is False and only(verdict).rejected is True
    assert v.mid_x2(KR, SYM) == 20100  # not applied
    # BINANCE silent for more than 3 s: stale, so no longer a reference
    later = T0 + 3_000 * MS + 1
    verdict = v.check(snap(later, ((10_300, 5),), ((10_400, 5),), ex=KR))
    assert [f.rule for f in verdict.findings] == ["stale_stream"]
    assert verdict.accept is True


# -- timing -----------------------------------------------------------------------------


def test_ts_out_of_order_per_stream_and_channel() -> None:
    v = validator()  # 250 ms
    t = T0 + 1_000 * MS
    assert v.check(trade(t, "a", 1000, ts_event=t)).accept
    assert v.check(trade(t, "b", 1000, ts_event=t - 250 * MS)) == Verdict(True, ())
    verdict = v.check(trade(t, "c", 1000, ts_event=t - 250 * MS - 1))
    f = only(verdict)
    assert verdict.accept is True
    assert (f.rule, f.rejected) == ("ts_out_of_order", False)
    assert f.detail == (
        f"ts_event={t - 250 * MS - 1} last_ts_event={t} back_ns={250 * MS + 1} "
        f"tolerance_ns={250 * MS} channel=trade"
    )
    # another channel of the stream, another exchange: their own clocks
    assert v.check(BookSnapshot(t - 900 * MS, t, BN, SYM, 0, ((999, 1),), ())).accept
    assert v.check(trade(t, "a", 1000, ex=KR, ts_event=t - 900 * MS)) == Verdict(True, ())


def test_clock_skew_once_per_episode() -> None:
    v = validator()  # 2000 ms late, 1000 ms early
    t = T0
    assert v.check(trade(t, "a", 1000, ts_event=t - 2_000 * MS)) == Verdict(True, ())
    f = only(v.check(trade(t + 1, "b", 1000, ts_event=t - 2_000 * MS)))
    assert (f.rule, f.rejected) == ("clock_skew", False)
    assert f.detail == f"skew_ns={2_000 * MS + 1} bound_ns={2_000 * MS}"
    assert v.check(trade(t + 1_500 * MS, "c", 1000, ts_event=t - 1_000 * MS)).findings == ()
    d = trade(t + 1_600 * MS, "d", 1000, ts_event=t + 1_599 * MS)
    assert v.check(d).findings == ()  # the episode ends
    e = trade(t + 4_000 * MS, "e", 1000, ts_event=t + 1_600 * MS)
    assert only(v.check(e)).detail == f"skew_ns={2_400 * MS} bound_ns={2_000 * MS}"
    # ts_event ahead of the receive time
    v = validator()
    assert v.check(trade(t, "a", 1000, ts_event=t + 1_000 * MS)) == Verdict(True, ())
    f = only(v.check(trade(t, "b", 1000, ts_event=t + 1_000 * MS + 1)))
    assert f.detail == f"skew_ns={-(1_000 * MS + 1)} bound_ns=-{1_000 * MS}"


def test_stale_stream_once_per_episode_from_other_streams_and_heartbeats() -> None:
    v = validator()  # 3000 ms
    assert v.check(trade(T0, "a", 1000)).accept
    assert v.check(trade(T0 + 3_000 * MS, "k1", 1000, ex=KR)) == Verdict(True, ())
    verdict = v.check(trade(T0 + 3_000 * MS + 1, "k2", 1000, ex=KR))
    f = only(verdict)
    assert (f.rule, f.exchange, f.symbol, f.rejected) == ("stale_stream", BN, SYM, False)
    assert f.detail == f"last_recv={T0} silent_ns={3_000 * MS + 1} stale_after_ns={3_000 * MS}"
    assert (f.ts_event, f.ts_recv) == (T0 + 3_000 * MS + 1, T0 + 3_000 * MS + 1)
    assert v.check(trade(T0 + 4_000 * MS, "k3", 1000, ex=KR)).findings == ()
    # BINANCE is back; a heartbeat 3 s + 1 ns after its last event finds it stale again
    assert v.check(trade(T0 + 5_000 * MS, "b", 1000)).accept
    assert v.check(Heartbeat(T0 + 7_000 * MS, T0 + 7_000 * MS, "system")).findings == ()
    hb = Heartbeat(T0 + 8_000 * MS + 1, T0 + 8_000 * MS + 1, "system")
    rules = sorted((f.rule, f.exchange) for f in v.check(hb).findings)
    assert rules == [("stale_stream", BN), ("stale_stream", KR)]


def test_stale_override_zero_means_never() -> None:
    v = validator(stale_after_ms_by_stream={f"{BN}:{SYM}": 0})
    assert v.check(trade(T0, "a", 1000)).accept
    assert v.check(trade(T0 + 60_000 * MS, "k", 1000, ex=KR)).findings == ()


def test_resync_is_a_sequence_gap_finding() -> None:
    v = validator()
    ev = Connectivity(T0, T0, BN, SYM, "resync", "sequence_gap: 10 -> 12")
    f = only(v.check(ev))
    assert (f.rule, f.exchange, f.symbol, f.rejected) == ("sequence_gap", BN, SYM, False)
    assert f.detail == "reason='sequence_gap: 10 -> 12'"
    assert v.check(Connectivity(T0, T0, BN, SYM, "down", "x")) == Verdict(True, ())


def test_disabled_accepts_everything() -> None:
    v = validator(enabled=False)
    assert v.check(trade(T0, "a", 0)) == Verdict(True, ())


def test_config_defaults_and_checks() -> None:
    assert MonitoringConfig().validation == ValidationConfig()
    for bad in ({"price_band_bp": 0}, {"stale_after_ms_by_stream": {"BTC": 5}}):
        try:
            ValidationConfig(**bad)  # type: ignore[arg-type]
        except ValueError:
            continue
        raise AssertionError(bad)


# -- determinism and snapshot/restore -----------------------------------------------------


def mixed_events() -> list[Event]:
    evs: list[Event] = [snap(T0, ((1000, 5), (995, 7)), ((1010, 5), (1020, 3)))]
    evs.append(snap(T0 + MS, ((10_000, 5),), ((10_100, 5),), ex=KR))
    for i in range(1, 40):
        t = T0 + i * 200 * MS
        evs.append(delta(t, bids=((1000 - i % 3, 1 + i),), asks=((1010 + i % 4, 2),), seq=i))
        evs.append(trade(t + 1, f"t{i % 25}", 1004 + i % 5))
        if i % 7 == 0:
            evs.append(delta(t + 2, bids=((1030, 1),)))  # crossed
        if i % 11 == 0:
            evs.append(trade(t + 3, "x", 10_050))  # 10x
        if i < 10 or i > 30:
            evs.append(delta(t + 4, bids=((9_900 + i, 1),), ex=KR))
    evs.append(Connectivity(T0 + 9_000 * MS, T0 + 9_000 * MS, KR, SYM, "resync", "gap"))
    return evs


def run(v: Validator, events: list[Event]) -> list[bytes]:
    out: list[bytes] = []
    for ev in events:
        verdict = v.check(ev)
        out.append(b"A" if verdict.accept else b"R")
        out.extend(encode(f) for f in verdict.findings)
    return out


def test_same_events_same_findings() -> None:
    events = mixed_events()
    a, b = validator(), validator()
    out_a, out_b = run(a, events), run(b, events)
    assert out_a == out_b
    assert a.snapshot() == b.snapshot()
    assert out_a.count(b"R") == 22  # 5 crossed deltas, 3 10x trades, 14 repeated ids


def test_snapshot_restore_continues_identically() -> None:
    events = mixed_events()
    whole = validator()
    expected = run(whole, events)
    for cut in (1, 17, len(events) // 2, len(events) - 3):
        first = validator()
        head = run(first, events[:cut])
        resumed = validator()
        resumed.restore(first.snapshot())
        assert resumed.snapshot() == first.snapshot()
        tail = run(resumed, events[cut:])
        assert head + tail == expected
        assert resumed.snapshot() == whole.snapshot()


def test_findings_of_the_mixed_run() -> None:
    v = validator()
    findings = [f for e in mixed_events() for f in v.check(e).findings]
    by_rule: dict[str, int] = {}
    for f in findings:
        by_rule[f.rule] = by_rule.get(f.rule, 0) + 1
    # i = 7, 14, ..., 35: 5 crossed deltas; i = 11, 22, 33: 3 10x trades; ids t{i % 25}
    # repeat for i = 26..39: 14 duplicates; one resync; the KRAKEN book is silent from
    # i = 9 (T0 + 1.8 s + 4 ns) to i = 31 (T0 + 6.2 s + 4 ns): stale once, found at
    # i = 25 (T0 + 5.0 s), 3.2 s - 4 ns after its last event
    assert by_rule == {
        "crossed_book": 5,
        "price_band": 3,
        "duplicate_trade": 14,
        "sequence_gap": 1,
        "stale_stream": 1,
    }
    stale = next(f for f in findings if f.rule == "stale_stream")
    assert (stale.exchange, stale.ts_recv) == (KR, T0 + 5_000 * MS)
    assert stale.detail == (
        f"last_recv={T0 + 1_800 * MS + 4} silent_ns={3_200 * MS - 4} stale_after_ns={3_000 * MS}"
    )
    rejecting = {"crossed_book", "price_band", "duplicate_trade"}
    assert all(f.rejected == (f.rule in rejecting) for f in findings)


# -- property: valid books never trip the structural rules --------------------------------

SPLIT = 1_000
bid_levels = st.lists(
    st.tuples(st.integers(1, SPLIT - 1), st.integers(1, 50)), max_size=8, unique_by=lambda x: x[0]
)
ask_levels = st.lists(
    st.tuples(st.integers(SPLIT, 2 * SPLIT), st.integers(1, 50)),
    max_size=8,
    unique_by=lambda x: x[0],
)
delta_bids = st.lists(
    st.tuples(st.integers(1, SPLIT - 1), st.integers(0, 50)), max_size=5, unique_by=lambda x: x[0]
)
delta_asks = st.lists(
    st.tuples(st.integers(SPLIT, 2 * SPLIT), st.integers(0, 50)),
    max_size=5,
    unique_by=lambda x: x[0],
)

STRUCTURAL = {"crossed_book", "locked_book", "non_positive_size", "non_positive_price"}


@settings(max_examples=150, deadline=None)
@given(bid_levels, ask_levels, st.lists(st.tuples(delta_bids, delta_asks), max_size=20))
def test_valid_random_books_never_trip_structural_rules(
    bids: list[Level], asks: list[Level], deltas: list[tuple[list[Level], list[Level]]]
) -> None:
    v = validator(price_band_bp=1_000_000)  # a band no move of these books leaves
    mirror = L2Book(BN, SYM)
    ev: BookSnapshot | BookDelta = snap(T0, tuple(sorted(bids)), tuple(sorted(asks)))
    for i, (db, da) in enumerate([([], []), *deltas]):
        if i:
            ev = delta(T0 + i * MS, bids=tuple(db), asks=tuple(da))
        verdict = v.check(ev)
        assert not STRUCTURAL & {f.rule for f in verdict.findings}
        assert verdict.accept
        if isinstance(ev, BookSnapshot):
            mirror.apply_snapshot(ev.bids, ev.asks, ev.ts_event)
        else:
            mirror.apply_delta(ev.bids, ev.asks, ev.ts_event)
        book = v.book(BN, SYM)
        assert book is not None and book.canonical() == mirror.canonical()
        m2 = mirror.mid_x2()
        if m2 is not None:
            assert v.mid_x2(BN, SYM) == m2


@settings(max_examples=150, deadline=None)
@given(bid_levels, ask_levels, delta_bids, st.integers(SPLIT, 2 * SPLIT))
def test_random_crossing_delta_rejected_and_book_stays_valid(
    bids: list[Level], asks: list[Level], db: list[Level], cross_at: int
) -> None:
    v = validator(price_band_bp=1_000_000)
    v.check(snap(T0, tuple(bids), tuple(asks)))
    book = v.book(BN, SYM)
    assert book is not None
    before = book.canonical()
    verdict = v.check(delta(T0 + MS, bids=(*db, (cross_at, 1))))
    best_ask = book.best_ask()
    if best_ask is not None and cross_at >= best_ask[0]:
        assert not verdict.accept
        assert only(verdict).rule in {"crossed_book", "locked_book"}
        assert book.canonical() == before
    assert_valid(book)


def test_off_tick_and_off_lot_levels_rejected() -> None:
    v = Validator(
        ValidationConfig(enabled=True),
        [msgspec.structs.replace(inst(BN, 1), tick_size=5, lot_size=10)],
    )
    f = only(v.check(snap(T0, ((1003, 10),), ((1010, 10),))))
    assert (f.rule, f.detail, f.rejected) == ("off_tick", "side=bid price=1003 tick=5", True)
    f = only(v.check(snap(T0, ((1000, 10),), ((1010, 15),))))
    assert (f.rule, f.detail) == ("off_lot", "side=ask price=1010 size=15 lot=10")
    assert v.check(snap(T0, ((1000, 10),), ((1010, 20),))) == Verdict(True, ())


def test_snapshots_stay_out_of_the_timing_rules() -> None:
    """A REST snapshot stamped with a local clock 1.5 s ahead: no skew, and the deltas
    after it (exchange time) are not out of order."""
    v = validator()
    t = T0
    assert v.check(delta(t, bids=((999, 1),))).accept
    rest = BookSnapshot(t + 1_500 * MS, t, BN, SYM, 0, ((1000, 5),), ((1010, 5),))
    assert v.check(rest) == Verdict(True, ())
    assert v.check(delta(t + MS, bids=((998, 1),))) == Verdict(True, ())


def test_without_own_books_none_is_an_empty_book_and_nothing_is_kept() -> None:
    v = Validator(ValidationConfig(enabled=True), INSTRUMENTS, own_books=False)
    assert v.check(snap(T0, ((1000, 5),), ((1010, 5),))).accept
    assert v.book(BN, SYM) is None
    assert v.mid_x2(BN, SYM) == 2010
    f = only(v.check(delta(T0 + MS, bids=((1011, 1),), asks=((1010, 2),))))
    assert (f.rule, f.detail) == ("crossed_book", "best_bid=1011 best_ask=1010")
