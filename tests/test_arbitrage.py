"""The cross-exchange arbitrage monitor (strategies/arbitrage.py) and its read model.

The scripted market, worked out by hand. Two perps of one symbol, ``BTC-USDT-PERP``,
price_decimals=2, size_decimals=3 (so ``notional = price x size x 1000`` MONEY and
1 USDT = 1e8 MONEY), taker fee 10 bp (1000 ppm) on both venues. Threshold 5 bp, a fixed
cost of 1.50 USDT per opportunity, no latency drift.

    BINANCE (cheap) asks: 1000.00 x 2.000, 1003.00 x 2.000      (bid 999.00 x 10.000)
    KUCOIN  (rich)  bids: 1005.00 x 1.000, 1004.00 x 3.000      (ask 1006.00 x 5.000)

Per BTC, the marginal value of buying at ``a`` and selling at ``b`` is
``g = b (1 - 0.001) - a (1 + 0.001 + 0.0005)``:

    q in (0, 1]: buy 1000, sell 1005: g = 1003.995 - 1001.5    =  2.495
    q in (1, 2]: buy 1000, sell 1004: g = 1002.996 - 1001.5    =  1.496
    q in (2, 4]: buy 1003, sell 1004: g = 1002.996 - 1004.5045 = -1.5085

so ``G(1) = 2.495``, ``G(2) = 3.991`` and ``G(q) = 3.991 - 1.5085 (q - 2)`` after that.
Profitable means ``G(q) >= 1.50`` (the fixed cost): the gross spread beats fees,
threshold and the fixed cost only above ``q = 1.5 / 2.495 = 0.6012`` -> 0.602 BTC
(``G(0.601) = 1.499495``, ``G(0.602) = 1.50199``) and up to
``q = 2 + 2.491 / 1.5085 = 3.6513`` -> 3.651 BTC (``G(3.651) = 1.5004665``,
``G(3.652) = 1.498958``).

At 3.651 BTC: buy 2.000 @ 1000 + 1.651 @ 1003 = 2000 + 1655.953 = 3655.953 USDT, fees
2.000 + 1.655953 = 3.655953; sell 1.000 @ 1005 + 2.651 @ 1004 = 1005 + 2661.604 =
3666.604 USDT, fees 1.005 + 2.661604 = 3.666604. Gross 10.651 USDT = 29.1333 bp of
3655.953; fees 7.322557 = 20.0291 bp; net 3.328443 USDT = 9.1042 bp; less the fixed cost
(4.1029 bp) 5.0013 bp >= 5 bp. Expected P&L 3.328443 USDT = 332_844_300 MONEY.
"""

from __future__ import annotations

import json
import math
from fractions import Fraction
from pathlib import Path

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as hs

from adapters.journal import SqliteJournal, prepare, session_stream
from journal_tools.arbitrage_view import ArbitrageOpportunityRow, arbitrage_opportunities
from journal_tools.cli import main
from journal_tools.projections import (
    ROW_TYPES,
    SCHEMAS,
    TABLES,
    project_session,
    session_events,
)
from kernel.config import (
    AppConfig,
    EngineConfig,
    ExecutionConfig,
    InstrumentsConfig,
    LatencyProfile,
    StrategyConfig,
    canonical_json,
    config_hash,
)
from kernel.engine import Engine
from kernel.events import (
    BookDelta,
    BookSnapshot,
    Decision,
    Event,
    Fill,
    OrderExpired,
    OrderSubmitted,
    SessionEnded,
    SessionStarted,
    event_id,
)
from kernel.instruments import Instrument
from strategies import STRATEGIES, build_strategy
from strategies.arbitrage import (
    ArbitrageConfig,
    ArbitrageMonitor,
    ArbitrageStrategy,
    Unwind,
    expected_entry_ms,
    walk_route,
)

SYM = "BTC-USDT-PERP"
USDT = 100_000_000  # MONEY units per USDT
MS = 1_000_000


def perp(exchange: str, fee_ppm: int = 1000) -> Instrument:
    return Instrument(
        exchange=exchange,
        symbol=SYM,
        kind="perp",
        base="BTC",
        quote="USDT",
        price_decimals=2,
        size_decimals=3,
        maker_fee_ppm=fee_ppm,
        taker_fee_ppm=fee_ppm,
    )


def spot(exchange: str) -> Instrument:
    return Instrument(
        exchange=exchange,
        symbol="BTC-USDT",
        kind="spot",
        base="BTC",
        quote="USDT",
        price_decimals=2,
        size_decimals=3,
        maker_fee_ppm=1000,
        taker_fee_ppm=1000,
    )


A, B = perp("BINANCE"), perp("KUCOIN")
A_BIDS = [(99_900, 10_000)]
A_ASKS = [(100_000, 2_000), (100_300, 2_000)]
B_BIDS = [(100_500, 1_000), (100_400, 3_000)]
B_ASKS = [(100_600, 5_000)]
CONFIG = ArbitrageConfig(min_profit_bp="5", depth_fraction="1", fixed_cost="1.5")


def books(b_bids: list[tuple[int, int]] = B_BIDS) -> dict[str, tuple[list, list]]:  # type: ignore[type-arg]
    return {"BINANCE": (A_BIDS, A_ASKS), "KUCOIN": (b_bids, B_ASKS)}


def reference_interval(
    buy: Instrument,
    asks: list[tuple[int, int]],
    sell: Instrument,
    bids: list[tuple[int, int]],
    hurdle_ppm: int,
    fixed_cost: int,
) -> tuple[int, int]:
    """Brute force in exact rationals: every size on the common lot grid, the VWAP walk
    of both books, fees unrounded; (min, max) profitable grid size, (0, 0) if none."""
    d = max(buy.size_decimals, sell.size_decimals)
    ub, us = 10 ** (d - buy.size_decimals), 10 ** (d - sell.size_decimals)
    step = math.lcm(buy.lot_size * ub, sell.lot_size * us)

    def value(inst: Instrument, levels: list[tuple[int, int]], q: int) -> Fraction | None:
        left, total = q, Fraction(0)
        for price, size in levels:
            take = min(size, left)
            total += Fraction(price, 10**inst.price_decimals) * Fraction(
                take, 10**inst.size_decimals
            )
            left -= take
        return None if left else total

    ok = []
    q = step
    while True:
        bv, sv = value(buy, asks, q // ub), value(sell, bids, q // us)
        if bv is None or sv is None:
            break
        net = sv * (1 - Fraction(sell.taker_fee_ppm, 10**6)) - bv * (
            1 + Fraction(buy.taker_fee_ppm + hurdle_ppm, 10**6)
        )
        if net >= Fraction(fixed_cost, USDT):
            ok.append(q)
        q += step
    return (min(ok), max(ok)) if ok else (0, 0)


# ---------------------------------------------------------------------------------------
# Detection and sizing (the pure monitor)
# ---------------------------------------------------------------------------------------


def test_walk_finds_the_profitable_sizes_worked_out_by_hand() -> None:
    walk = walk_route(A, A_ASKS, B, B_BIDS, hurdle_ppm=500, fixed_cost=150 * USDT // 100)
    assert (walk.min_size, walk.max_size, walk.step) == (602, 3651, 1)
    assert reference_interval(A, A_ASKS, B, B_BIDS, 500, 150 * USDT // 100) == (602, 3651)


def test_scripted_book_is_detected_with_the_right_size_and_net_bp() -> None:
    mon = ArbitrageMonitor(CONFIG, [A, B])
    quote, why = mon.evaluate(SYM, books())
    assert why == {}
    assert quote is not None
    assert (quote.buy.exchange, quote.sell.exchange) == ("BINANCE", "KUCOIN")
    assert (quote.buy.size, quote.sell.size) == (3651, 3651)
    assert (quote.buy.limit, quote.sell.limit) == (100_300, 100_400)  # worst level touched
    assert (quote.buy.value, quote.buy.fee) == (365_595_300_000, 365_595_300)
    assert (quote.sell.value, quote.sell.fee) == (366_660_400_000, 366_660_400)
    assert quote.expected_pnl == 332_844_300  # 3.328443 USDT
    assert quote.adjusted_pnl == 332_844_300 - 150_000_000  # less the fixed cost
    bought = Fraction(365_595_300_000)
    assert quote.gross_bp == pytest.approx(float(Fraction(1_065_100_000) / bought * 10_000))
    assert quote.fees_bp == pytest.approx(float(Fraction(732_255_700) / bought * 10_000))
    assert quote.net_bp == pytest.approx(float(Fraction(332_844_300) / bought * 10_000))
    assert round(quote.gross_bp, 4) == 29.1333 and round(quote.net_bp, 4) == 9.1042
    assert round(quote.net_bp - quote.fixed_cost_bp, 4) == 5.0013 >= quote.threshold_bp
    assert (quote.latency_bp, quote.confidence) == (0.0, 1.0)


def test_the_spread_beats_fees_only_above_a_size() -> None:
    mon = ArbitrageMonitor(CONFIG, [A, B])
    # 0.601 BTC of the 1005 bid: G(0.601) = 1.499495 < 1.50 fixed cost -> nothing
    quote, why = mon.evaluate(SYM, books([(100_500, 601)]))
    assert (quote, why) == (None, {})
    # 0.602 BTC: G = 1.50199 >= 1.50 -> detected at exactly that size
    quote, _ = mon.evaluate(SYM, books([(100_500, 602)]))
    assert quote is not None and quote.buy.size == 602
    assert (quote.walk.min_size, quote.walk.max_size) == (602, 602)


def test_below_the_fee_threshold_nothing_is_detected() -> None:
    free = ArbitrageMonitor(ArbitrageConfig(min_profit_bp="5", depth_fraction="1"), [A, B])
    # gross 15 bp (1001.50 vs 1000.00) under the 20 bp of both taker fees
    assert free.evaluate(SYM, books([(100_150, 5_000)])) == (None, {})
    # gross 24 bp: beats the fees (net ~4 bp) but not fees + the 5 bp threshold
    assert free.evaluate(SYM, books([(100_240, 5_000)])) == (None, {})
    # gross 25.1 bp: net = 1002.51 x 0.999 - 1000 x 1.0015 = 0.00349 USDT/BTC >= 0: trades
    quote, _ = free.evaluate(SYM, books([(100_251, 1_000)]))
    assert quote is not None and quote.buy.size == 1_000


def test_risk_adjusted_sizing_caps_and_refusals() -> None:
    half = ArbitrageMonitor(
        ArbitrageConfig(min_profit_bp="5", depth_fraction="0.5", fixed_cost="1.5"), [A, B]
    )
    quote, _ = half.evaluate(SYM, books())
    assert quote is not None and quote.buy.size == 1825  # 3.651 x 0.5, floored to the lot
    assert quote.size_reason == "depth fraction 0.5"
    # a per-trade cap under the minimum profitable size (0.602) refuses, saying why
    capped = ArbitrageMonitor(
        ArbitrageConfig(min_profit_bp="5", depth_fraction="1", fixed_cost="1.5", max_size="0.5"),
        [A, B],
    )
    quote, why = capped.evaluate(SYM, books())
    assert quote is None
    assert why == {
        "BINANCE>KUCOIN": "size capped by max_size 0.5 to 0.500, under the minimum profitable 0.602"
    }
    # perps: max_inventory bounds the position each leg may build (long 1.2 already)
    inv = ArbitrageMonitor(
        ArbitrageConfig(min_profit_bp="5", depth_fraction="1", fixed_cost="1.5", max_inventory="2"),
        [A, B],
    )
    quote, _ = inv.evaluate(SYM, books(), positions={"BINANCE": 1_200})
    assert quote is not None and quote.buy.size == 800
    assert quote.size_reason == "BINANCE inventory room 0.800"


def test_spot_legs_are_capped_by_inventory_and_cash() -> None:
    a, b = spot("BINANCE"), spot("KUCOIN")
    mon = ArbitrageMonitor(CONFIG, [a, b])
    bk = books()
    # the sell venue holds 1.000 BTC: a spot sell cannot exceed it
    quote, _ = mon.evaluate("BTC-USDT", bk, positions={"KUCOIN": 1_000})
    assert quote is not None and quote.sell.size == 1_000
    assert quote.size_reason == "KUCOIN holds 1.000"
    # cash 1001 USDT: the venue's check is limit x size + 0.1 % fee <= cash -> 1.000
    quote, _ = mon.evaluate("BTC-USDT", bk, positions={"KUCOIN": 5_000}, cash=1001 * USDT)
    assert quote is not None and quote.buy.size == 1_000
    assert quote.size_reason == "cash 1001.00000000"
    # nothing held on the sell venue: refused
    quote, why = mon.evaluate("BTC-USDT", bk, positions={})
    assert quote is None and "KUCOIN holds 0.000" in why["BINANCE>KUCOIN"]


def test_latency_drift_raises_the_hurdle() -> None:
    # both venues 250 ms constant entry latency; BINANCE's mid moves 1000.00 -> 1001.00
    # in 1 s: sigma = ln(1.001) per sqrt(s), expected |move| over 0.25 s
    # sqrt(2/pi) x ln(1.001) x sqrt(0.25) = 3.98743 bp; KUCOIN has no return yet.
    prof = LatencyProfile(model="constant", entry_mean_ms=250, response_mean_ms=0)
    mon = ArbitrageMonitor(CONFIG, [A, B], {"BINANCE": prof, "KUCOIN": prof})
    mon.observe_mid(A.key, 0, 200_000)
    mon.observe_mid(A.key, 10**9, 200_200)
    drift = math.sqrt(2 / math.pi) * math.log(1.001) * 0.5 * 1e4
    assert mon.drift_bp(A.key, "BINANCE") == pytest.approx(drift, rel=1e-12)
    assert round(drift, 5) == 3.98743
    quote, _ = mon.evaluate(SYM, books())
    assert quote is not None
    # hurdle 5 + 3.99 bp (the drift rounded up to 0.01 bp): per BTC g = 2.096, 1.097,
    # -1.908697 -> G(2) = 3.193; profitable from 1.5/2.096 = 0.716 to
    # 2 + 1.693/1.908697 = 2.886
    assert quote.latency_bp == 3.99
    assert (quote.walk.min_size, quote.walk.max_size) == (716, 2886)
    assert reference_interval(A, A_ASKS, B, B_BIDS, 899, 150_000_000) == (716, 2886)
    margin = quote.net_bp - quote.fixed_cost_bp - quote.latency_bp - quote.threshold_bp
    assert quote.confidence == pytest.approx(0.5 * (1 + math.erf(margin / drift / 2**0.5)))
    assert 0.5 < quote.confidence < 1.0
    # log-normal profiles: the mean counts the spikes
    assert expected_entry_ms(LatencyProfile(entry_mean_ms=100, spike_probability=0.1)) == 140.0


levels = hs.lists(hs.tuples(hs.integers(1, 300), hs.integers(1, 60)), min_size=1, max_size=4)


@settings(max_examples=150, deadline=None)
@given(
    asks=levels,
    bids=levels,
    hurdle=hs.integers(0, 3000),
    fixed=hs.integers(0, USDT),
    lot=hs.sampled_from([1, 2, 5]),
)
def test_walk_matches_brute_force(
    asks: list[tuple[int, int]],
    bids: list[tuple[int, int]],
    hurdle: int,
    fixed: int,
    lot: int,
) -> None:
    # buy: 2 price decimals, 3 size decimals; sell: 1 price decimal, 2 size decimals
    buy = Instrument(
        exchange="X", symbol=SYM, kind="perp", base="BTC", quote="USDT",
        price_decimals=2, size_decimals=3, lot_size=lot, taker_fee_ppm=700,
    )  # fmt: skip
    sell = Instrument(
        exchange="Y", symbol=SYM, kind="perp", base="BTC", quote="USDT",
        price_decimals=1, size_decimals=2, taker_fee_ppm=300,
    )  # fmt: skip
    # about 40 % of the examples profitable nowhere, 45 % up to the end of a book,
    # 15 % up to an interior size; most with a minimum size above one lot
    ask_levels, p = [], 100_000
    for dp, size in asks:  # asks rising from 1000.00 by 0.01..3.00
        p += dp
        ask_levels.append((p, size * 10))
    bid_levels, p = [], 10_100
    for dp, size in bids:  # bids falling from 1010.0 by 0.1..6.0
        p -= dp % 60 + 1
        bid_levels.append((p, size))
    walk = walk_route(buy, ask_levels, sell, bid_levels, hurdle, fixed)
    ref = reference_interval(buy, ask_levels, sell, bid_levels, hurdle, fixed)
    assert (walk.min_size, walk.max_size) == ref


# ---------------------------------------------------------------------------------------
# Legging risk and reconciliation (the pure monitor)
# ---------------------------------------------------------------------------------------


def fill(oid: str, inst: Instrument, side: str, price: int, size: int, n: int = 1) -> Fill:
    value = inst.notional(price, size)
    return Fill(
        ts_event=0,
        ts_recv=0,
        fill_id=f"{oid}:f{n}",
        order_id=oid,
        exchange=inst.exchange,
        symbol=inst.symbol,
        side=side,  # type: ignore[arg-type]
        price=price,
        size=size,
        fee=value // 1000,  # 10 bp, exact for these sizes
        liquidity="taker",
    )


def test_legging_one_leg_filled_the_other_ioc_expired_is_unwound() -> None:
    mon = ArbitrageMonitor(CONFIG, [A, B])
    quote, _ = mon.evaluate(SYM, books())
    assert quote is not None
    n = mon.open(quote, "d1", 5, "o1", "o2")
    assert mon.busy(SYM, 5)
    mon.on_fill(fill("o1", A, "buy", 100_000, 2_000))
    mon.on_fill(fill("o1", A, "buy", 100_300, 1_651, 2))
    assert mon.pending_unwind(n) is None  # the sell leg is still open
    mon.on_closed("o2", "IOC expired")  # nothing filled on KUCOIN
    unwind = mon.pending_unwind(n)
    assert unwind == Unwind(n, "BINANCE", SYM, "sell", 3_651)
    assert not mon.ready(n)
    mon.set_unwind(unwind, "o3")
    mon.on_fill(fill("o3", A, "sell", 99_900, 3_651))
    assert mon.ready(n)
    opp = mon.reconcile(n)
    # bought 3655.953 + fees 3.655953, sold back 3.651 @ 999.00 = 3647.349 - 3.647349:
    # -3655.953 - 3.655953 + 3647.349 - 3.647349 = -15.907302 USDT
    assert opp.realised_pnl == -1_590_730_200
    assert opp.expected_pnl == 332_844_300
    assert opp.legs_status == "unwound"
    a = mon.st.analytics
    assert (a.opportunities, a.reconciled, a.hits, a.legged, a.hit_rate) == (1, 1, 0, 1, 0.0)
    assert a.avg_bp_captured == pytest.approx(-1_590_730_200 / 365_595_300_000 * 1e4)
    assert mon.busy(SYM, 5 + 999 * MS)  # reconciled, but within the 1 s cooldown
    assert not mon.busy(SYM, 5 + 1000 * MS)


def test_a_sell_leg_that_fills_alone_is_bought_back_on_its_venue() -> None:
    mon = ArbitrageMonitor(CONFIG, [A, B])
    quote, _ = mon.evaluate(SYM, books())
    assert quote is not None
    n = mon.open(quote, "d1", 5, "o1", "o2")
    mon.on_fill(fill("o2", B, "sell", 100_500, 1_000))
    mon.on_closed("o2", "IOC expired")
    mon.on_closed("o1", "rejected: no_liquidity")
    assert mon.pending_unwind(n) == Unwind(n, "KUCOIN", SYM, "buy", 1_000)


def test_reconciliation_of_a_full_hit_is_exact() -> None:
    mon = ArbitrageMonitor(CONFIG, [A, B])
    quote, _ = mon.evaluate(SYM, books())
    assert quote is not None
    n = mon.open(quote, "d1", 5, "o1", "o2")
    for f in (
        fill("o1", A, "buy", 100_000, 2_000),
        fill("o2", B, "sell", 100_500, 1_000),
        fill("o1", A, "buy", 100_300, 1_651, 2),
        fill("o2", B, "sell", 100_400, 2_651, 2),
    ):
        mon.on_fill(f)
    assert mon.pending_unwind(n) is None and mon.ready(n)
    opp = mon.reconcile(n)
    assert (opp.legs_status, opp.realised_pnl, opp.expected_pnl) == (
        "filled",
        332_844_300,
        332_844_300,
    )
    assert mon.st.analytics.hit_rate == 1.0
    assert mon.st.analytics.avg_bp_captured == pytest.approx(9.104173385, abs=1e-9)


def test_rebalance_plans_one_transfer_per_route() -> None:
    a, b = spot("BINANCE"), spot("KUCOIN")
    cfg = ArbitrageConfig(rebalance_below="0.5", transfer_s_by_route="BINANCE>KUCOIN=600")
    mon = ArbitrageMonitor(cfg, [a, b])
    held = {"BINANCE": 3_000, "KUCOIN": 200}
    t = mon.plan_rebalance("BTC-USDT", "BINANCE", "KUCOIN", held, now=7)
    assert t is not None
    assert (t.size, t.transfer_s, t.arrives) == (1_400, 600.0, 7 + 600 * 10**9)  # half of 2.8
    assert mon.plan_rebalance("BTC-USDT", "BINANCE", "KUCOIN", held, now=8) is None  # pending
    assert mon.transfer_seconds("KUCOIN", "BINANCE") == 1800.0  # the default transfer_s
    mon.transfer_arrived(t.route)
    assert mon.plan_rebalance("BTC-USDT", "BINANCE", "KUCOIN", held, now=9) is not None
    assert mon.plan_rebalance("BTC-USDT", "BINANCE", "KUCOIN", {"KUCOIN": 600}, 9) is None


# ---------------------------------------------------------------------------------------
# The strategy in the engine: two venues
# ---------------------------------------------------------------------------------------

INSTANT = LatencyProfile(model="constant", entry_mean_ms=0, response_mean_ms=0)
NO_IMPACT = EngineConfig(execution=ExecutionConfig(impact_y=0.0))


def engine(latency: dict[str, LatencyProfile] | None = None) -> Engine:
    lat = latency or {"BINANCE": INSTANT, "KUCOIN": INSTANT}
    strategy = ArbitrageStrategy(CONFIG)
    return Engine(NO_IMPACT, [A, B], strategy, seed=1, latency=lat)


def snap(t: int, exchange: str, bids: list[tuple[int, int]], asks: list[tuple[int, int]]) -> Event:
    return BookSnapshot(
        ts_event=t,
        ts_recv=t,
        exchange=exchange,
        symbol=SYM,
        seq=0,
        bids=tuple(bids),
        asks=tuple(asks),
    )


def market() -> list[Event]:
    return [snap(1 * MS, "BINANCE", A_BIDS, A_ASKS), snap(2 * MS, "KUCOIN", B_BIDS, B_ASKS)]


def test_engine_sends_both_legs_at_once_and_reconciles_exactly() -> None:
    eng = engine()
    outs = eng.apply_many(market())
    decisions = [o for o in outs if isinstance(o, Decision)]
    subs = [o for o in outs if isinstance(o, OrderSubmitted)]
    assert [d.action for d in decisions] == ["arbitrage", "reconcile"]
    arb = decisions[0]
    # both IOC legs in the same kernel step, both naming the decision
    assert [(s.exchange, s.side, s.size, s.price, s.time_in_force, s.ts_event) for s in subs] == [
        ("BINANCE", "buy", 3651, 100_300, "IOC", 2 * MS),
        ("KUCOIN", "sell", 3651, 100_400, "IOC", 2 * MS),
    ]
    assert {s.decision_id for s in subs} == {arb.decision_id}
    assert arb.reasoning.startswith(
        "arb1: buy 3.651 BTC-USDT-PERP on BINANCE (VWAP 1001.36, limit 1003.00) and sell on "
        "KUCOIN (VWAP 1004.27, limit 1004.00): gross 29.1333 bp, fees 20.0291 bp (taker 10 "
        "+ 10 bp), net 9.1042 bp, latency drift 0.00 bp, fixed cost 4.1029 bp vs threshold "
        "5.00 bp; profitable sizes 0.602..3.651, size 3.651 (capped by depth fraction 1)"
    )
    assert arb.reasoning.endswith(
        "expected P&L 3.32844300, after latency and fixed cost 1.82844300"
    )
    feats = dict(arb.features)
    assert (feats["opportunity"], feats["expected_pnl_e8"], feats["threshold_bp"]) == (
        1.0,
        332_844_300.0,
        5.0,
    )
    assert arb.confidence == 1.0
    fills = [(f.exchange, f.side, f.price, f.size) for f in outs if isinstance(f, Fill)]
    assert sorted(fills) == [
        ("BINANCE", "buy", 100_000, 2_000),
        ("BINANCE", "buy", 100_300, 1_651),
        ("KUCOIN", "sell", 100_400, 2_651),
        ("KUCOIN", "sell", 100_500, 1_000),
    ]
    rec = dict(decisions[1].features)
    assert (rec["expected_pnl_e8"], rec["realised_pnl_e8"], rec["difference_e8"]) == (
        332_844_300.0,
        332_844_300.0,
        0.0,
    )
    assert (rec["hit_rate"], rec["opportunities"]) == (1.0, 1.0)
    assert "legs filled; expected P&L 3.32844300, realised 3.32844300" in decisions[1].reasoning
    # the paper trader agrees: long 3.651 on one venue, short 3.651 on the other (flat in
    # BTC), cash up by exactly the realised P&L (sell proceeds - buy cost - fees)
    assert eng.portfolio.qty(A.key) == 3651 and eng.portfolio.qty(B.key) == -3651
    assert eng.portfolio.cash - eng.portfolio.initial_cash == 332_844_300


def legged_run() -> tuple[Engine, list[Event]]:
    # KUCOIN orders take 10 ms to arrive; its bids drop to 1001.00 at 5 ms, so the sell
    # IOC (limit 1004.00) finds nothing and expires while the buy has filled at once
    lat = {
        "BINANCE": INSTANT,
        "KUCOIN": LatencyProfile(model="constant", entry_mean_ms=10, response_mean_ms=0),
    }
    eng = engine(lat)
    outs = eng.apply_many(market())
    delta = BookDelta(
        ts_event=5 * MS,
        ts_recv=5 * MS,
        exchange="KUCOIN",
        symbol=SYM,
        seq=0,
        bids=((100_500, 0), (100_400, 0), (100_100, 5_000)),
        asks=(),
    )
    outs += eng.apply(delta)
    outs += eng.advance(20 * MS)
    return eng, outs


def test_engine_legging_risk_unwinds_and_journals_why() -> None:
    eng, outs = legged_run()
    decisions = [o for o in outs if isinstance(o, Decision)]
    assert [d.action for d in decisions] == ["arbitrage", "unwind", "reconcile"]
    expired = [o for o in outs if isinstance(o, OrderExpired)]
    assert [(e.order_id, e.remaining) for e in expired] == [("o2", 3651)]
    unwind = decisions[1]
    assert unwind.reasoning == (
        "arb1: legging risk: buy leg on BINANCE filled 3.651 of 3.651 (filled), sell leg on "
        "KUCOIN filled 0.000 of 3.651 (IOC expired) -> unwind: market sell 3.651 on BINANCE"
    )
    (sub,) = [
        o for o in outs if isinstance(o, OrderSubmitted) and o.decision_id == unwind.decision_id
    ]
    assert (sub.exchange, sub.side, sub.order_type, sub.size) == ("BINANCE", "sell", "market", 3651)
    rec = dict(decisions[2].features)
    # -3655.953 - 3.655953 + 3647.349 - 3.647349 = -15.907302 USDT
    assert (rec["expected_pnl_e8"], rec["realised_pnl_e8"]) == (332_844_300.0, -1_590_730_200.0)
    assert rec["hit_rate"] == 0.0
    assert "legs unwound" in decisions[2].reasoning
    assert eng.portfolio.qty(A.key) == 0 and eng.portfolio.qty(B.key) == 0
    assert eng.portfolio.cash - eng.portfolio.initial_cash == -1_590_730_200


def test_engine_snapshot_mid_flight_restores_the_legs() -> None:
    _, whole = legged_run()
    lat = {
        "BINANCE": INSTANT,
        "KUCOIN": LatencyProfile(model="constant", entry_mean_ms=10, response_mean_ms=0),
    }
    eng = engine(lat)
    first = eng.apply_many(market())  # the sell leg is in flight now
    resumed = engine(lat)
    resumed.restore(eng.snapshot())
    rest = list(
        resumed.apply(
            BookDelta(
                ts_event=5 * MS,
                ts_recv=5 * MS,
                exchange="KUCOIN",
                symbol=SYM,
                seq=0,
                bids=((100_500, 0), (100_400, 0), (100_100, 5_000)),
                asks=(),
            )
        )
    )
    rest += resumed.advance(20 * MS)
    assert first + rest == whole


def test_registry_builds_it_from_typed_params() -> None:
    assert STRATEGIES["arbitrage"] is ArbitrageStrategy
    strat = build_strategy(
        StrategyConfig(
            name="arbitrage", params={"min_profit_bp": 5, "depth_fraction": 1.0, "max_levels": 5}
        )
    )
    assert isinstance(strat, ArbitrageStrategy)
    assert strat.monitor.min_profit_ppm == 500 and strat.monitor.depth_fraction_ppm == 10**6
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) \['colour'\]"):
        build_strategy(StrategyConfig(name="arbitrage", params={"colour": "red"}))
    with pytest.raises(ValueError, match="depth_fraction"):
        ArbitrageConfig(depth_fraction="1.5")
    with pytest.raises(ValueError, match="latency_ms"):
        ArbitrageConfig(latency_ms="BINANCE:150")


# ---------------------------------------------------------------------------------------
# The read model arbitrage_opportunities
# ---------------------------------------------------------------------------------------

APP = AppConfig(instruments=InstrumentsConfig(instruments=(A, B)))


def session_stream_events(sid: str, outs: list[Event]) -> list[Event]:
    start = SessionStarted(
        ts_event=0,
        ts_recv=0,
        session_id=sid,
        mode="replay",
        config_hash=config_hash(APP),
        seed=1,
        code_version="test",
        strategy="arbitrage",
        input_from=0,
        input_to=20 * MS,
        config_json=canonical_json(APP).decode(),
    )
    end = SessionEnded(
        ts_event=20 * MS,
        ts_recv=20 * MS,
        session_id=sid,
        state_hash="",
        events_in=3,
        outputs=len(outs),
    )
    return [start, *outs, end]


def test_read_model_rows_for_a_hit_and_a_legged_opportunity() -> None:
    hit_outs = engine().apply_many(market())
    _, legged = legged_run()
    rows = arbitrage_opportunities(session_events(session_stream_events("s1", hit_outs)))
    assert rows == [
        ArbitrageOpportunityRow(
            session_id="s1",
            opportunity="arb1",
            decision_id="d1",
            ts=2 * MS,
            symbol=SYM,
            buy_exchange="BINANCE",
            sell_exchange="KUCOIN",
            size=3651,
            buy_filled=3651,
            sell_filled=3651,
            unwind_filled=0,
            gross_bp=rows[0].gross_bp,
            net_bp=rows[0].net_bp,
            expected_pnl=332_844_300,
            realised_pnl=332_844_300,
            legs="filled",
        )
    ]
    assert (round(rows[0].gross_bp, 4), round(rows[0].net_bp, 4)) == (29.1333, 9.1042)
    (row,) = arbitrage_opportunities(session_events(session_stream_events("s2", legged)))
    assert (row.buy_filled, row.sell_filled, row.unwind_filled) == (3651, 0, 3651)
    assert (row.expected_pnl, row.realised_pnl, row.legs) == (
        332_844_300,
        -1_590_730_200,
        "unwound",
    )
    # still in flight at the end of a session: open, no realised P&L yet
    lat = {"BINANCE": INSTANT, "KUCOIN": LatencyProfile(model="constant", entry_mean_ms=10)}
    flight = engine(lat).apply_many(market())
    (row,) = arbitrage_opportunities(session_events(session_stream_events("s3", flight)))
    assert (row.legs, row.realised_pnl, row.buy_filled) == ("open", None, 3651)


def test_read_model_is_registered_and_shown_by_tickerml(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert "arbitrage_opportunities" in TABLES
    assert ROW_TYPES["arbitrage_opportunities"] is ArbitrageOpportunityRow
    assert [c.name for c in SCHEMAS["arbitrage_opportunities"]] == list(
        ArbitrageOpportunityRow.__struct_fields__[1:]
    )
    _, legged = legged_run()
    evs = session_stream_events("s2", legged)
    proj = project_session(session_events(evs))
    assert len(proj.tables["arbitrage_opportunities"]) == 1
    db = tmp_path / "j.db"
    with SqliteJournal(db) as j:
        stream = session_stream("s2")
        j.append_prepared(
            stream, [prepare(ev, event_id(ev, stream, i)) for i, ev in enumerate(evs)]
        )
    dsn = f"sqlite:///{db}"
    args = ["project", "--journal", dsn, "--rebuild", "--show", "arbitrage_opportunities"]
    assert main([*args, "--format", "json"]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    got = json.loads(line)
    assert {k: got[k] for k in ("opportunity", "buy_exchange", "sell_exchange", "legs")} == {
        "opportunity": "arb1",
        "buy_exchange": "BINANCE",
        "sell_exchange": "KUCOIN",
        "legs": "unwound",
    }
    assert (got["size"], got["sell_filled"], got["unwind_filled"]) == ("3.651", "0.000", "3.651")
    assert (got["expected_pnl"], got["realised_pnl"]) == ("3.32844300", "-15.90730200")
    assert msgspec.json.decode(line)["gross_bp"] == pytest.approx(29.1333, abs=1e-4)


def test_engine_journals_an_untradeable_spread_once() -> None:
    cfg = ArbitrageConfig(min_profit_bp="5", depth_fraction="1", fixed_cost="1.5", max_size="0.5")
    lat = {"BINANCE": INSTANT, "KUCOIN": INSTANT}
    eng = Engine(NO_IMPACT, [A, B], ArbitrageStrategy(cfg), seed=1, latency=lat)
    outs = eng.apply_many([*market(), snap(3 * MS, "KUCOIN", B_BIDS, B_ASKS)])
    assert not [o for o in outs if isinstance(o, OrderSubmitted)]
    (skip,) = [o for o in outs if isinstance(o, Decision)]
    assert (skip.action, skip.exchange, skip.ts_event) == ("skip", "BINANCE", 2 * MS)
    assert skip.reasoning == (
        "BTC-USDT-PERP BINANCE>KUCOIN: the spread beats fees and threshold but size capped "
        "by max_size 0.5 to 0.500, under the minimum profitable 0.602"
    )
