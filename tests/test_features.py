"""kernel.features: every feature against numbers worked by hand on small books and tapes.

Prices and sizes are plain integer units (tick 1, lot 1); S is one second in ns.
"""

from __future__ import annotations

import math
from typing import Literal

import pytest

from kernel.book import L2Book
from kernel.events import BookDelta, BookSnapshot, Level, Trade
from kernel.features import (
    EventRate,
    FeatureConfig,
    FeatureSample,
    FeatureSet,
    KyleLambda,
    SignalEwma,
    TradeFlow,
    Vpin,
    decay,
    feature_names,
    imbalance,
    level_features,
    microprice,
    microprice_offset_bp,
    spread_bp,
    weighted_imbalance,
    window_label,
)

S = 1_000_000_000
EX, SYM = "X", "BTC-USDT"
LN2 = math.log(2.0)


def snap(ts: int, bids: tuple[Level, ...], asks: tuple[Level, ...]) -> BookSnapshot:
    return BookSnapshot(ts, ts, EX, SYM, 0, bids, asks)


def delta(ts: int, bids: tuple[Level, ...] = (), asks: tuple[Level, ...] = ()) -> BookDelta:
    return BookDelta(ts, ts, EX, SYM, 0, bids, asks)


def trade(ts: int, price: int, size: int, side: Literal["buy", "sell"]) -> Trade:
    return Trade(ts, ts, EX, SYM, 0, f"t{ts}", price, size, side)


BIDS: tuple[Level, ...] = ((100, 5), (99, 3), (98, 2))
ASKS: tuple[Level, ...] = ((101, 2), (102, 7), (103, 1))


def three_level_book() -> L2Book:
    book = L2Book(EX, SYM)
    book.apply_snapshot(BIDS, ASKS, 0)
    return book


# -- book features ------------------------------------------------------------------------


def test_imbalance_of_a_three_level_book() -> None:
    book = three_level_book()
    assert imbalance(book, 1) == pytest.approx(3 / 7)  # (5 - 2) / (5 + 2)
    assert imbalance(book, 2) == pytest.approx(-1 / 17)  # (8 - 9) / 17
    assert imbalance(book, 3) == 0.0  # 10 vs 10
    assert imbalance(book, 5) == 0.0  # only 3 levels: same as 3
    assert imbalance(L2Book(EX, SYM), 5) == 0.0


def test_weighted_imbalance_uses_one_over_rank() -> None:
    # bids 5/1 + 3/2 + 2/3 = 43/6, asks 2/1 + 7/2 + 1/3 = 35/6: (8/6) / (78/6) = 4/39
    assert weighted_imbalance(three_level_book(), 10) == pytest.approx(4 / 39, rel=1e-15)
    assert weighted_imbalance(L2Book(EX, SYM), 10) == 0.0


def test_microprice_and_spread() -> None:
    book = three_level_book()
    # (100 x 2 + 101 x 5) / (5 + 2) = 705 / 7, leaning to the ask: more bid size
    assert microprice(book) == pytest.approx(705 / 7, rel=1e-15)
    # (705/7 - 100.5) / 100.5 x 1e4 = (1.5 / 7) / 100.5 x 1e4 = 15000 / 703.5
    assert microprice_offset_bp(book) == pytest.approx(15000 / 703.5, rel=1e-12)
    assert spread_bp(book) == pytest.approx(1e4 / 100.5, rel=1e-15)
    empty = L2Book(EX, SYM)
    assert (microprice(empty), microprice_offset_bp(empty), spread_bp(empty)) == (0.0, 0.0, 0.0)


# -- EWMA, rates ---------------------------------------------------------------------------


def test_decay_halves_every_half_life() -> None:
    assert decay(S, S) == 0.5
    assert decay(3 * S, S) == 0.125
    assert decay(0, S) == 1.0
    assert decay(-5, S) == 1.0


def test_signal_ewma_two_updates() -> None:
    ewma = SignalEwma(S)
    ewma.update(0, 10.0)
    ewma.update(S, 20.0)
    # 10 held over [0, 1 s] (and before: the first value seeds the past): mean 10
    assert ewma.at(S) == (10.0, 0.0)
    # at 2 s, 20 held for one half-life weighs 1/2: mean 15, var 1/2 x 25 + 1/2 x 25 = 25
    mean, var = ewma.at(2 * S)
    assert mean == pytest.approx(15.0)
    assert var == pytest.approx(25.0)
    assert ewma.zscore(2 * S) == pytest.approx(1.0)  # (20 - 15) / 5
    # at 3 s 20 weighs 3/4: mean 17.5, var 3/4 x 2.5**2 + 1/4 x 7.5**2 = 18.75
    assert ewma.at(3 * S)[0] == pytest.approx(17.5)
    assert ewma.at(3 * S)[1] == pytest.approx(18.75)
    # queries change nothing
    assert ewma.at(2 * S)[0] == pytest.approx(15.0)


def test_signal_ewma_same_timestamp_updates_weigh_nothing() -> None:
    ewma = SignalEwma(S)
    ewma.update(0, 10.0)
    ewma.update(S, 1000.0)
    ewma.update(S, 20.0)  # 1000 held for 0 ns
    assert ewma.at(2 * S)[0] == pytest.approx(15.0)


def test_event_rate_two_events() -> None:
    rate = EventRate(S)
    rate.add(0)
    rate.add(S)
    # level 1/2 + 1 = 1.5; rate = level x ln2 / H = 1.5 ln 2 per second
    assert rate.per_second(S) == pytest.approx(1.5 * LN2)
    assert rate.per_second(2 * S) == pytest.approx(0.75 * LN2)


def test_event_rate_converges_to_a_steady_rate() -> None:
    rate = EventRate(S)
    for i in range(200):  # 10 per second for 20 s, half-life 1 s
        rate.add(i * S // 10)
    # the sum of 2**(-k/10) for k >= 0 is 1 / (1 - 2**-0.1); x ln2 ~ 10.35 (discrete events)
    expected = LN2 / (1 - 2**-0.1)
    assert rate.per_second(199 * S // 10) == pytest.approx(expected, rel=1e-5)


# -- trade flow ---------------------------------------------------------------------------


def test_trade_flow_window() -> None:
    flow = TradeFlow((S, 10 * S), large_size=2)
    flow.add(S // 5, 100, 3, True)
    flow.add(7 * S // 10, 102, 1, False)
    flow.add(11 * S // 10, 101, 2, True)
    w = flow.sums(0, 11 * S // 10)  # cutoff 0.1 s: all three
    assert (w.trades, w.volume, w.buy_volume, w.large_volume) == (3, 6, 5, 5)
    assert w.trade_imbalance == pytest.approx(4 / 6)
    assert w.vwap == pytest.approx(604 / 6)
    assert w.large_ratio == pytest.approx(5 / 6)
    # mid 101 vs VWAP 604/6: (606 - 604) / 604 x 1e4
    assert w.vwap_dev_bp(101.0) == pytest.approx(2 / 604 * 1e4)
    w = flow.sums(0, 12 * S // 10)  # cutoff 0.2 s: the first trade is exactly 1 s old: out
    assert (w.trades, w.volume, w.buy_volume) == (2, 3, 2)
    assert w.trade_imbalance == pytest.approx(1 / 3)
    assert w.vwap == pytest.approx(304 / 3)
    assert flow.sums(1, 12 * S // 10).volume == 6
    assert flow.sums(0, 5 * S).trade_imbalance == 0.0  # empty window


# -- VPIN ---------------------------------------------------------------------------------


def test_vpin_exact_aggressor_three_buckets() -> None:
    vpin = Vpin(bucket_volume=10, buckets=3, bvc=False)
    vpin.add(100, 10, True)  # bucket 1: B 10 S 0 -> 1.0
    vpin.add(100, 4, False)
    vpin.add(100, 8, True)  # 6 close bucket 2 (B 6 S 4 -> 0.2), 2 open bucket 3
    vpin.add(100, 8, False)  # bucket 3: B 2 S 8 -> 0.6
    assert vpin.completed == 3
    assert vpin.value() == pytest.approx((1.0 + 0.2 + 0.6) / 3)
    vpin.add(100, 3, True)  # open bucket: not counted
    assert vpin.value() == pytest.approx(0.6)
    vpin.add(100, 7, False)  # bucket 4: B 3 S 7 -> 0.4, bucket 1 leaves the window
    assert vpin.value() == pytest.approx((0.2 + 0.6 + 0.4) / 3)


def test_vpin_bulk_volume_classification() -> None:
    vpin = Vpin(bucket_volume=10, buckets=3, bvc=True)
    vpin.add(100, 10, True)  # dP 0 (first bucket: last - first price): B = S
    assert vpin.value() == 0.0
    vpin.add(102, 10, True)  # dP 2; dPs (0, 2): sigma 1, z 2: |2 Phi(2) - 1| = erf(2 / sqrt 2)
    first_two = math.erf(math.sqrt(2.0))
    assert first_two == pytest.approx(0.9544997361, rel=1e-9)
    assert vpin.value() == pytest.approx(first_two / 2)
    vpin.add(101, 10, False)  # dP -1; dPs (0, 2, -1): mean 1/3, sigma sqrt(14) / 3
    z = -1 / (math.sqrt(14) / 3)
    assert vpin.value() == pytest.approx((first_two + abs(math.erf(z / math.sqrt(2)))) / 3)


def test_vpin_huge_trade_skips_identical_buckets() -> None:
    vpin = Vpin(bucket_volume=1, buckets=2, bvc=False)
    vpin.add(100, 1, False)
    vpin.add(100, 1000, True)  # 1000 buy buckets at the close price
    assert vpin.completed == 1001
    assert vpin.value() == 1.0
    assert len(vpin.history) == 2


# -- Kyle's lambda ------------------------------------------------------------------------

LINE_Q = (2, -4, 6, 0, 10)
LINE_R = tuple(2 + q // 2 for q in LINE_Q)  # r = 2 + q / 2 (price units): slope 1/2


def line_events() -> list[BookSnapshot | Trade]:
    """Interval k (1 s): a trade of signed size q_k at k + 0.1 s, then the mid moves r_k at
    k + 0.5 s; the book is bid mid - 1, ask mid + 1."""
    mid = 1000
    events: list[BookSnapshot | Trade] = [snap(0, ((mid - 1, 5),), ((mid + 1, 5),))]
    for k, (q, r) in enumerate(zip(LINE_Q, LINE_R, strict=True)):
        if q:
            events.append(trade(k * S + S // 10, mid, abs(q), "buy" if q > 0 else "sell"))
        mid += r
        events.append(snap(k * S + S // 2, ((mid - 1, 5),), ((mid + 1, 5),)))
    return events


def test_kyle_lambda_of_points_on_a_line_is_the_slope() -> None:
    kyle = KyleLambda(S, 5)
    for e in line_events():
        if isinstance(e, Trade):
            kyle.on_trade(e.ts_event, e.size if e.side == "buy" else -e.size)
        else:
            kyle.on_mid(e.ts_event, e.bids[0][0] + e.asks[0][0])
    assert len(kyle.history) == 4  # interval 4 is still open
    kyle.advance(5 * S)
    assert [q for q, _ in kyle.history] == list(LINE_Q)
    assert [r for _, r in kyle.history] == [2 * r for r in LINE_R]  # doubled mids
    assert kyle.value() == 0.5
    # population std of q: mean 2.8, squared deviations sum 116.8, / 5 = 23.36
    assert kyle.flow_std() == pytest.approx(math.sqrt(23.36))


def test_kyle_lambda_quiet_intervals_count_as_zero() -> None:
    kyle = KyleLambda(S, 3)
    kyle.on_mid(0, 200)
    kyle.on_trade(S // 2, 4)
    kyle.on_mid(S // 2, 204)  # interval 0: (4, 4)
    kyle.on_trade(10 * S, 1)  # closes 0, then 9 quiet intervals: only 3 are kept
    assert list(kyle.history) == [(0, 0), (0, 0), (0, 0)]
    assert kyle.value() == 0.0  # q constant: no slope


# -- FeatureSet ---------------------------------------------------------------------------


def test_feature_names() -> None:
    names = feature_names(FeatureConfig(windows_ms=(250, 1000)))
    assert names[:3] == ("imbalance_5", "imbalance_10", "imbalance_20")
    assert "trade_imbalance_250ms" in names and "vwap_dev_bp_1s" in names
    assert window_label(60_000) == "60s"
    assert len(set(names)) == len(names)


def test_feature_set_book_and_spread_ewma() -> None:
    fs = FeatureSet(FeatureConfig(spread_half_life_ns=S, sample_interval_ns=0))
    assert fs.apply(snap(0, BIDS, ASKS)) == []
    f = fs.features(EX, SYM)
    assert f["imbalance_5"] == 0.0
    assert f["imbalance_10"] == 0.0
    assert f["weighted_imbalance_10"] == pytest.approx(4 / 39)
    assert f["microprice"] == pytest.approx(705 / 7)
    assert f["mid"] == 100.5
    assert f["spread"] == 1.0
    first_bp = 1e4 / 100.5
    assert f["spread_bp"] == pytest.approx(first_bp)
    fs.apply(delta(S, asks=((101, 0),)))  # ask 102: spread 2, mid 101
    second_bp = 2e4 / 101
    f = fs.features(EX, SYM, at=2 * S)
    assert f["spread_bp"] == pytest.approx(second_bp)
    assert f["spread_bp_ewma"] == pytest.approx((first_bp + second_bp) / 2)
    assert f["spread_bp_z"] == pytest.approx(1.0)  # half way, std = half the gap
    assert f["imbalance_5"] == pytest.approx((10 - 8) / 18)


def test_feature_set_trades_vpin_lambda_toxicity() -> None:
    config = FeatureConfig(
        vpin_bucket_volume={EX: 5},
        vpin_buckets=10,
        lambda_intervals=5,
        toxicity_impact_ref_bp=100.0,
        sample_interval_ns=0,
    )
    fs = FeatureSet(config)
    for e in line_events():
        fs.apply(e)
    fs.apply(trade(5 * S + S // 5, 1010, 1, "buy"))  # closes interval 4
    f = fs.features(EX, SYM)
    assert f["kyle_lambda"] == 0.5
    # the tape: buy 2, sell 4, buy 6, buy 10, buy 1 = 23 -> 4 buckets of 5:
    # [B2 S3] [S1 B4] [B5] [B5] -> 0.2, 0.6, 1, 1
    assert f["vpin"] == pytest.approx((0.2 + 0.6 + 1 + 1) / 4)
    mid = 1000 + sum(LINE_R)  # 1019
    assert f["mid"] == mid
    impact = 0.5 * math.sqrt(23.36) / mid * 1e4
    assert f["lambda_impact_bp"] == pytest.approx(impact)
    assert f["toxicity"] == pytest.approx(0.5 * 0.7 + 0.5 * impact / 100)


def test_feature_set_queue_estimate() -> None:
    fs = FeatureSet(FeatureConfig(intensity_half_life_ns=S, sample_interval_ns=0))
    fs.apply(snap(0, BIDS, ASKS))
    fs.apply(trade(0, 100, 4, "sell"))
    f = fs.features(EX, SYM, at=S)
    assert f["queue_ahead_bid"] == 5.0
    assert f["queue_ahead_ask"] == 2.0
    # sell volume rate at 1 s: 4 x 1/2 x ln2 per s; 5 ahead at the bid
    assert f["queue_eta_bid_s"] == pytest.approx(5 / (2 * LN2))
    assert f["queue_eta_ask_s"] == 86_400.0  # no buy flow: the cap
    assert f["trade_intensity"] == pytest.approx(0.5 * LN2)


def test_feature_set_large_trade_ratio_and_vwap_dev() -> None:
    fs = FeatureSet(FeatureConfig(large_trade_size={f"{EX}:{SYM}": 3}, sample_interval_ns=0))
    fs.apply(snap(0, ((100, 1),), ((102, 1),)))
    fs.apply(trade(1, 102, 3, "buy"))
    fs.apply(trade(2, 100, 1, "sell"))
    f = fs.features(EX, SYM)
    assert f["large_trade_ratio_1s"] == pytest.approx(3 / 4)
    assert f["trade_imbalance_1s"] == pytest.approx(2 / 4)
    # VWAP 406/4 = 101.5, mid 101: (101 - 101.5) / 101.5 x 1e4
    assert f["vwap_dev_bp_1s"] == pytest.approx(-0.5 / 101.5 * 1e4)


def test_sampling_at_interval_boundaries() -> None:
    fs = FeatureSet(FeatureConfig(sample_interval_ns=S))
    assert fs.apply(snap(S // 2, BIDS, ASKS)) == []
    assert fs.apply(trade(7 * S // 10, 100, 1, "sell")) == []
    out = fs.apply(trade(S + S // 5, 101, 1, "buy"))
    assert len(out) == 1
    sample = out[0]
    assert isinstance(sample, FeatureSample)
    assert (sample.ts, sample.exchange, sample.symbol) == (S, EX, SYM)
    assert sample.names == fs.names
    # the sample holds the state before the 1.2 s trade, at 1 s
    ref = FeatureSet(FeatureConfig(sample_interval_ns=S))
    ref.apply(snap(S // 2, BIDS, ASKS))
    ref.apply(trade(7 * S // 10, 100, 1, "sell"))
    assert sample.as_dict() == ref.features(EX, SYM, at=S)
    assert sample.as_dict()["trade_imbalance_1s"] == -1.0
    # a quiet stretch gives one sample, at its first boundary; an event exactly on a
    # boundary comes after that boundary's sample
    out = fs.apply(trade(5 * S, 101, 1, "buy"))
    assert [s.ts for s in out] == [2 * S]
    assert [s.ts for s in fs.apply(trade(6 * S, 101, 1, "buy"))] == [6 * S]
    assert fs.apply(trade(6 * S, 101, 1, "buy")) == []


def test_rejected_book_message_changes_nothing() -> None:
    fs = FeatureSet(FeatureConfig(sample_interval_ns=0))
    fs.apply(snap(0, BIDS, ASKS))
    before = fs.features(EX, SYM)
    fs.apply(delta(1, bids=((101, 1),)))  # would lock the book
    assert fs.rejected(EX, SYM) == 1
    assert fs.features(EX, SYM) == before


def test_out_of_order_event_counts_at_the_clock() -> None:
    fs = FeatureSet(FeatureConfig(sample_interval_ns=0))
    fs.apply(trade(5 * S, 100, 1, "buy"))
    fs.apply(trade(S, 100, 1, "sell"))  # older: counted at 5 s
    assert fs.features(EX, SYM)["trade_imbalance_1s"] == 0.0


def test_snapshot_restore_round_trip() -> None:
    fs = FeatureSet(FeatureConfig(vpin_bucket_volume={EX: 5}, lambda_intervals=5))
    for e in line_events():
        fs.apply(e)
    data = fs.snapshot()
    other = FeatureSet(fs.config)
    other.restore_bytes(data)
    assert other.snapshot() == data
    assert other.features(EX, SYM) == fs.features(EX, SYM)
    with pytest.raises(ValueError, match="another feature configuration"):
        FeatureSet(FeatureConfig(windows_ms=(1000,))).restore_bytes(data)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"imbalance_levels": (0,)}, "imbalance_levels"),
        ({"windows_ms": (10, 10)}, "windows_ms"),
        ({"spread_half_life_ns": 0}, "spread_half_life_ns"),
        ({"vpin_bucket_volume": {"X": 0}}, r"vpin_bucket_volume\[X\]"),
        ({"lambda_intervals": 1}, "lambda_intervals"),
    ],
)
def test_config_rejects_bad_values(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FeatureConfig(**kwargs)  # type: ignore[arg-type]


def test_level_features_match_the_single_functions() -> None:
    book = three_level_book()
    got = level_features(book, (1, 2, 5), 2)
    singles = [imbalance(book, 1), imbalance(book, 2), imbalance(book, 5)]
    assert got == [*singles, weighted_imbalance(book, 2)]
    assert level_features(L2Book(EX, SYM), (5,), 10) == [0.0, 0.0]


def test_tick_samples_without_an_event() -> None:
    fs = FeatureSet(FeatureConfig(sample_interval_ns=S))
    fs.apply(snap(S // 2, BIDS, ASKS))
    fs.apply(BookSnapshot(S // 3, S // 3, "Y", SYM, 0, BIDS, ASKS))
    assert fs.tick(S - 1) == []
    out = fs.tick(3 * S + 1)
    assert [(s.exchange, s.ts) for s in out] == [("X", S), ("Y", S)]
    assert out[0].as_dict()["imbalance_5"] == 0.0
    assert fs.tick(3 * S + 2) == []
    # the next event samples at the next boundary after the tick, as if it were an event
    assert [s.ts for s in fs.apply(trade(4 * S, 100, 1, "sell"))] == [4 * S]


def test_queries_of_an_unseen_instrument_store_nothing() -> None:
    fs = FeatureSet()
    assert fs.features("Z", SYM)["mid"] == 0.0
    assert fs.book("Z", SYM) is None
    assert fs.keys() == []
    assert fs.rejected("Z", SYM) == 0
