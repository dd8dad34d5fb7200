"""kernel.trades: rolling trade windows and the large-trade flag, numbers worked by hand.

Instrument BTC-USDT at price_decimals 2, size_decimals 5: a price of 60000.00 is
6_000_000 units, a size of 0.1 BTC is 10_000 units, and a notional in MONEY units
(1e-8 USDT) is ``price x size x 10``.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Literal

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adapters.config_loader import load_config
from kernel.config import EngineConfig, ExchangeConfig, ExchangesConfig
from kernel.context import StrategyContext
from kernel.engine import Engine
from kernel.events import MarketEvent, Trade
from kernel.instruments import Instrument, InstrumentError
from kernel.trades import (
    TradeAggregator,
    TradeWindowsConfig,
    WindowStats,
    div_half_even,
    trade_windows_config,
)
from strategies.base import BaseStrategy

MS = 1_000_000
T0 = 1_735_689_600_000 * MS  # 2025-01-01T00:00:00Z
USDT = 100_000_000  # MONEY units per USDT
BTC = "BINANCE:BTC-USDT"


def inst(exchange: str = "BINANCE", base: str = "BTC", size_decimals: int = 5) -> Instrument:
    return Instrument(
        exchange=exchange,
        symbol=f"{base}-USDT",
        kind="spot",
        base=base,
        quote="USDT",
        price_decimals=2,
        size_decimals=size_decimals,
    )


INSTRUMENTS = [inst(), inst(base="ETH", size_decimals=4), inst("KRAKEN")]


def trade(
    ms: int,
    price: int,
    size: int,
    side: Literal["buy", "sell"],
    where: tuple[str, str] = ("BINANCE", "BTC-USDT"),
    seq: int = 0,
) -> Trade:
    t = T0 + ms * MS
    return Trade(t, t + 5 * MS, where[0], where[1], seq, f"t{seq or ms}", price, size, side)


# The hand-made tape: (ms after T0, price, size, aggressor side)
#   1:    0 ms  buy  60000.00 x 0.10000   notional  6000.00
#   2:  400 ms  sell 60010.00 x 0.05000   notional  3000.50
#   3:  999 ms  buy  60020.00 x 0.20000   notional 12004.00
#   4: 1000 ms  sell 59990.00 x 0.15000   notional  8998.50
TAPE = [
    trade(0, 6_000_000, 10_000, "buy", seq=1),
    trade(400, 6_001_000, 5_000, "sell", seq=2),
    trade(999, 6_002_000, 20_000, "buy", seq=3),
    trade(1000, 5_999_000, 15_000, "sell", seq=4),
]


def aggregator(**large: int) -> TradeAggregator:
    return TradeAggregator(TradeWindowsConfig(large_notional=dict(large)), INSTRUMENTS)


def test_notional_units_of_the_tape() -> None:
    assert [INSTRUMENTS[0].notional(t.price, t.size) for t in TAPE] == [
        6_000 * USDT,
        3_000_50 * USDT // 100,
        12_004 * USDT,
        8_998_50 * USDT // 100,
    ]


def test_a_trade_exactly_one_window_old_is_out() -> None:
    agg = aggregator()
    for t in TAPE[:3]:
        agg.add(t)
    # at 999 ms the 1 s window (t - 1 s, t] = (-1 ms, 999 ms] still holds trade 1
    assert agg.window(BTC, 1_000).trades == 3
    agg.add(TAPE[3])
    # at 1000 ms it is (0 ms, 1000 ms]: trade 1, exactly 1 s old, is out
    one = agg.window(BTC, 1_000)
    assert one == WindowStats(
        key=BTC,
        window_ms=1_000,
        end_ts=T0 + 1_000 * MS,
        trades=3,
        volume=40_000,  # 0.05 + 0.20 + 0.15 BTC
        buy_volume=20_000,
        sell_volume=20_000,
        notional=24_003 * USDT,  # 3000.50 + 12004.00 + 8998.50
        buy_notional=12_004 * USDT,
        sell_notional=11_999 * USDT,
        # 6_001_000 x 5_000 + 6_002_000 x 20_000 + 5_999_000 x 15_000
        price_volume=240_030_000_000,
        large_trades=0,
    )
    assert one.vwap == 6_000_750  # 240_030_000_000 / 40_000 = 60007.50 exactly
    assert one.vwap_exact() == Fraction(6_000_750)


def test_ten_second_window_holds_the_whole_tape() -> None:
    agg = aggregator()
    for t in TAPE:
        agg.add(t)
    ten = agg.window(BTC, 10_000)
    assert (ten.trades, ten.volume, ten.buy_volume, ten.sell_volume) == (4, 50_000, 30_000, 20_000)
    assert ten.notional == 30_003 * USDT
    assert ten.price_volume == 300_030_000_000
    assert ten.vwap == 6_000_600  # 300_030_000_000 / 50_000 = 60006.00
    assert [w.window_ms for w in agg.windows(BTC)] == [1_000, 10_000, 60_000]
    assert agg.windows(BTC)[2] == msgspec.structs.replace(ten, window_ms=60_000)


def test_vwap_rounds_half_to_even_and_the_exact_value_is_a_rational() -> None:
    agg = aggregator()
    for t in TAPE[:3]:
        agg.add(t)
    w = agg.window(BTC, 1_000)
    # (60e9 + 30.005e9 + 120.04e9) / 35_000 = 6_001_285.714...
    assert w.price_volume == 210_045_000_000 and w.volume == 35_000
    assert w.vwap_exact() == Fraction(42_009_000, 7)
    assert w.vwap == 6_001_286
    assert (div_half_even(201, 2), div_half_even(203, 2), div_half_even(205, 2)) == (100, 102, 102)
    assert (div_half_even(7, 3), div_half_even(8, 3), div_half_even(-5, 2)) == (2, 3, -2)
    ties = aggregator()
    ties.add(trade(0, 101, 1, "buy"))
    ties.add(trade(1, 102, 1, "sell"))
    assert ties.window(BTC, 1_000).vwap == 102  # 101.5 -> 102 (even)
    assert ties.window(BTC, 1_000).vwap_exact() == Fraction(203, 2)


def test_queries_at_a_later_time_age_trades_out_without_changing_state() -> None:
    agg = aggregator()
    for t in TAPE:
        agg.add(t)
    before = agg.snapshot()
    # at 1400 ms: (400 ms, 1400 ms] -> trade 2 (exactly 1 s old) is out; 3 and 4 stay
    later = agg.window(BTC, 1_000, at=T0 + 1_400 * MS)
    assert (later.trades, later.volume, later.buy_volume, later.sell_volume) == (
        2,
        35_000,
        20_000,
        15_000,
    )
    assert later.end_ts == T0 + 1_400 * MS
    empty = agg.window(BTC, 1_000, at=T0 + 2_000 * MS)  # trade 4 is exactly 1 s old
    assert (empty.trades, empty.volume, empty.notional, empty.vwap) == (0, 0, 0, 0)
    assert empty.vwap_exact() is None
    assert agg.window(BTC, 60_000, at=T0 + 60_999 * MS).trades == 1  # trade 4 only
    assert agg.window(BTC, 60_000, at=T0 + 61_000 * MS).trades == 0
    # a time before the last trade is the last trade's time
    assert agg.window(BTC, 1_000, at=T0) == agg.window(BTC, 1_000)
    assert agg.snapshot() == before
    assert agg.window(BTC, 1_000).trades == 3


def test_adding_a_trade_evicts_at_the_boundary() -> None:
    agg = aggregator()
    for t in TAPE:
        agg.add(t)
    agg.add(trade(11_000, 6_000_000, 1_000, "buy", seq=5))  # trade 4 is now exactly 10 s old
    ten = agg.window(BTC, 10_000)
    assert (ten.trades, ten.volume, ten.buy_volume) == (1, 1_000, 1_000)
    sixty = agg.window(BTC, 60_000)
    assert (sixty.trades, sixty.volume, sixty.buy_volume, sixty.sell_volume) == (
        5,
        51_000,
        31_000,
        20_000,
    )
    assert agg.window(BTC, 1_000).trades == 1
    state = agg.state()
    assert [len(t.entries) for t in state.tapes] == [5]


def test_instruments_are_apart_and_unknown_ones_are_refused() -> None:
    agg = aggregator()
    agg.add(TAPE[0])
    agg.add(trade(0, 300_000, 10_000, "sell", ("BINANCE", "ETH-USDT")))  # 3000.00 x 1 ETH
    agg.add(trade(5, 6_000_000, 3_000, "sell", ("KRAKEN", "BTC-USDT")))
    assert agg.keys() == ["BINANCE:BTC-USDT", "BINANCE:ETH-USDT", "KRAKEN:BTC-USDT"]
    eth = agg.window("BINANCE:ETH-USDT", 1_000)
    assert (eth.trades, eth.sell_volume, eth.notional, eth.vwap) == (
        1,
        10_000,
        3_000 * USDT,
        300_000,
    )
    assert agg.window(BTC, 1_000).trades == 1
    assert agg.window("COINBASE:BTC-USDT", 1_000) == WindowStats(
        key="COINBASE:BTC-USDT", window_ms=1_000, end_ts=0
    )
    with pytest.raises(InstrumentError, match="unknown instrument COINBASE:BTC-USDT"):
        agg.add(trade(0, 1, 1, "buy", ("COINBASE", "BTC-USDT")))
    with pytest.raises(ValueError, match="no 5000 ms window"):
        agg.window(BTC, 5_000)
    with pytest.raises(ValueError, match="must be positive"):
        agg.add(trade(0, 6_000_000, 0, "buy"))


def test_a_late_trade_counts_at_the_instruments_latest_time() -> None:
    agg = aggregator()
    agg.add(trade(1_000, 6_000_000, 1_000, "buy"))
    agg.add(trade(200, 6_000_000, 2_000, "sell"))  # 800 ms older than the last trade
    assert agg.late(BTC) == 1
    assert agg.last_ts(BTC) == T0 + 1_000 * MS
    # counted at 1000 ms, so it leaves the 1 s window at 2000 ms, not at 1200 ms
    assert agg.window(BTC, 1_000, at=T0 + 1_999 * MS).trades == 2
    assert agg.window(BTC, 1_000, at=T0 + 2_000 * MS).trades == 0


def test_large_flag_at_the_threshold() -> None:
    agg = aggregator(BINANCE=10_000 * USDT, **{"BINANCE:ETH-USDT": 5_000 * USDT})
    at = trade(0, 5_000_000, 20_000, "buy")  # 50000.00 x 0.2 = 10000.00: at the threshold
    below = trade(1, 5_000_000, 19_999, "buy")  # 9999.95
    assert agg.is_large(at) and not agg.is_large(below)
    assert agg.add(at) is True and agg.add(below) is False
    # the instrument's own threshold wins over the exchange's
    eth = trade(2, 500_000, 10_000, "sell", ("BINANCE", "ETH-USDT"))  # 5000.00 x 1 ETH
    assert agg.is_large(eth)
    assert not agg.is_large(msgspec.structs.replace(eth, size=9_999))
    # no threshold for KRAKEN: never large
    huge = trade(3, 10_000_000, 100_000_000, "buy", ("KRAKEN", "BTC-USDT"))
    assert not agg.is_large(huge)
    assert agg.large_threshold(INSTRUMENTS[2]) is None
    assert agg.window(BTC, 1_000).large_trades == 1
    assert aggregator().window(BTC, 1_000).large_trades == 0


def test_thresholds_and_windows_come_from_exchanges_yaml() -> None:
    cfg = ExchangesConfig(
        exchanges={
            "BINANCE": ExchangeConfig(
                large_trade_notional="10000",
                large_trade_notional_by_symbol={"ETH-USDT": 5000, "BTC-USDT-PERP": "250000.5"},
            ),
            "KRAKEN": ExchangeConfig(),
        },
        trade_windows_ms=(500, 5_000),
    )
    tw = trade_windows_config(cfg)
    assert tw.windows_ms == (500, 5_000)
    assert tw.large_notional == {
        "BINANCE": 10_000 * USDT,
        "BINANCE:ETH-USDT": 5_000 * USDT,
        "BINANCE:BTC-USDT-PERP": 25_000_050_000_000,
    }
    repo = trade_windows_config(load_config().exchanges)
    assert repo.windows_ms == (1_000, 10_000, 60_000)
    assert repo.large_notional["BINANCE"] == 100_000 * USDT
    assert repo.large_notional["BINANCE:BTC-USDT-PERP"] == 250_000 * USDT


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"large_trade_notional": 1.5}, "Expected `str | int | null`, got `float`"),
        ({"large_trade_notional": "1e5x"}, "large_trade_notional: not a decimal number"),
        ({"large_trade_notional": "-1"}, "must be >= 0"),
        ({"large_trade_notional_by_symbol": {"BTC-USDT": "0.000000001"}}, "more than 8 decimals"),
    ],
)
def test_bad_thresholds_are_refused(data: dict[str, object], message: str) -> None:
    with pytest.raises(msgspec.ValidationError, match=message):
        msgspec.convert(data, ExchangeConfig)


def test_bad_windows_are_refused() -> None:
    with pytest.raises(msgspec.ValidationError, match="positive and increasing"):
        msgspec.convert({"trade_windows_ms": [1000, 1000]}, ExchangesConfig)
    with pytest.raises(ValueError, match="positive and increasing"):
        TradeWindowsConfig(windows_ms=(0, 10))


def test_state_round_trip_continues_identically() -> None:
    a = aggregator(BINANCE=10_000 * USDT)
    for t in TAPE:
        a.add(t)
    a.add(trade(500, 6_000_000, 7, "buy"))  # late
    b = aggregator(BINANCE=10_000 * USDT)
    b.restore_bytes(a.snapshot())
    assert b.snapshot() == a.snapshot()
    nxt = trade(10_999, 6_000_100, 4_000, "sell")
    a.add(nxt)
    b.add(nxt)
    assert a.windows(BTC) == b.windows(BTC)
    assert a.snapshot() == b.snapshot()
    with pytest.raises(ValueError, match="has windows"):
        TradeAggregator(TradeWindowsConfig(windows_ms=(1_000,)), INSTRUMENTS).restore(a.state())


def brute_force(tape: list[tuple[int, int, int, bool]], window_ns: int, at: int) -> tuple[int, ...]:
    """Every sum straight from the definition: clamped times, (at - W, at]."""
    clamped, last = [], 0
    for ts, price, size, buy in tape:
        last = max(last, ts)
        clamped.append((last, price, size, buy))
    inside = [e for e in clamped if at - window_ns < e[0] <= at]
    return (
        len(inside),
        sum(e[2] for e in inside),
        sum(e[2] for e in inside if e[3]),
        sum(e[1] * e[2] for e in inside),
        sum(INSTRUMENTS[0].notional(e[1], e[2]) for e in inside),
    )


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from([0, 1, 250, 999, 1_000, 1_001, 9_999, 10_000, 60_000, -300]),
            st.integers(1, 10_000_000),
            st.integers(1, 1_000_000),
            st.booleans(),
        ),
        min_size=1,
        max_size=60,
    ),
    st.sampled_from([0, 1, 999, 1_000, 10_000, 59_999, 60_000]),
)
def test_windows_match_the_definition(
    steps: list[tuple[int, int, int, bool]], query_after_ms: int
) -> None:
    agg = aggregator()
    tape, t = [], T0
    for step_ms, price, size, buy in steps:
        t += step_ms * MS
        tape.append((t, price, size, buy))
        agg.add(Trade(t, t, "BINANCE", "BTC-USDT", 0, "x", price, size, "buy" if buy else "sell"))
        for w in agg.windows_ms:
            got = agg.window(BTC, w)
            expect = brute_force(tape, w * MS, agg.last_ts(BTC))
            assert (
                got.trades,
                got.volume,
                got.buy_volume,
                got.price_volume,
                got.notional,
            ) == expect
    at = agg.last_ts(BTC) + query_after_ms * MS
    for w in agg.windows_ms:
        got = agg.window(BTC, w, at=at)
        assert (got.trades, got.volume, got.buy_volume, got.price_volume, got.notional) == (
            brute_force(tape, w * MS, at)
        )


# -- in the engine -----------------------------------------------------------------------


class WindowWatcher(BaseStrategy):
    """Switches the engine's trade windows on and records the 1 s window at each trade."""

    name = "window_watcher"

    def __init__(self) -> None:
        self.seen: list[tuple[int, int, int]] = []

    def on_start(self, ctx: StrategyContext) -> None:
        ctx.trade_windows()

    def on_market(self, ctx: StrategyContext, event: MarketEvent) -> None:
        if isinstance(event, Trade):
            w = ctx.trade_windows().window(f"{event.exchange}:{event.symbol}", 1_000)
            self.seen.append((w.trades, w.volume, w.vwap))


def test_engine_windows_are_opt_in_counted_before_on_market_and_snapshotted() -> None:
    strat = WindowWatcher()
    eng = Engine(
        EngineConfig(),
        INSTRUMENTS,
        strat,
        seed=1,
        trade_windows=TradeWindowsConfig(large_notional={"BINANCE": 10_000 * USDT}),
    )
    eng.apply_many(TAPE[:3])
    assert strat.seen == [(1, 10_000, 6_000_000), (2, 15_000, 6_000_333), (3, 35_000, 6_001_286)]
    restored = Engine(EngineConfig(), INSTRUMENTS, WindowWatcher(), seed=1)
    restored.restore(eng.snapshot())
    assert restored.state_hash() == eng.state_hash()
    assert restored.trade_windows().snapshot() == eng.trade_windows().snapshot()
    assert restored.trade_windows().window(BTC, 1_000).large_trades == 1
    eng.apply(TAPE[3])
    restored.apply(TAPE[3])
    assert restored.state_hash() == eng.state_hash()
    assert strat.seen[-1] == (3, 40_000, 6_000_750)
    # without the opt-in the state has no trade windows (the golden hash of
    # tests/test_engine.py pins that layout), and with it the state differs
    plain = Engine(EngineConfig(), INSTRUMENTS, BaseStrategy(), seed=1)
    plain.apply_many(TAPE)
    assert plain._trades is None
    switched = Engine(EngineConfig(), INSTRUMENTS, BaseStrategy(), seed=1)
    switched.trade_windows()
    switched.apply_many(TAPE)
    assert switched.state_hash() != plain.state_hash()
    fresh = Engine(EngineConfig(), INSTRUMENTS, BaseStrategy(), seed=1)
    fresh.restore(plain.snapshot())
    assert fresh._trades is None and fresh.state_hash() == plain.state_hash()
