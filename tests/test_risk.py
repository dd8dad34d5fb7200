"""The risk layer with numbers worked out by hand.

Money in the RiskManager is MONEY units (1e-8 quote): ``usd(x)`` converts.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from journal_tools.scenario import parse_scenario, run_scenario
from kernel.config import RiskLimitsConfig
from kernel.events import Halt, RiskEvent
from kernel.instruments import Instrument, InstrumentRegistry
from kernel.risk import RiskManager, pearson, size_units, sizing_fraction

BTC = Instrument(
    exchange="BINANCE",
    symbol="BTC-USDT",
    kind="spot",
    base="BTC",
    quote="USDT",
    price_decimals=2,
    size_decimals=5,
)
ETH = Instrument(
    exchange="BINANCE",
    symbol="ETH-USDT",
    kind="spot",
    base="ETH",
    quote="USDT",
    price_decimals=2,
    size_decimals=4,
)
REG = InstrumentRegistry([BTC, ETH])
HOUR_NS = 3_600 * 10**9


def usd(x: float) -> int:
    return round(x * 10**8)


def levels(events: list[Any]) -> list[tuple[str, str, int]]:
    return [(e.rule, e.level, e.stage) for e in events if isinstance(e, RiskEvent)]


# -- sizing --------------------------------------------------------------------------


def test_fractional_kelly_golden_numbers() -> None:
    cfg = RiskLimitsConfig()
    # full strength, no edge estimate: the base size, 2% of equity
    assert sizing_fraction(cfg, 1.0) == pytest.approx(0.02)
    # mu 1e-4, sigma 2%: f* = 1e-4 / 4e-4 = 0.25, a quarter of it 0.0625 > 2%: base wins
    assert sizing_fraction(cfg, 1.0, mu=1e-4, sigma=0.02) == pytest.approx(0.02)
    # half strength (1%) and mu 1e-5: f* = 0.025, x 0.25 = 0.00625 < 1%: Kelly wins
    assert sizing_fraction(cfg, 0.5, mu=1e-5, sigma=0.02) == pytest.approx(0.00625)
    assert sizing_fraction(cfg, 1.0, mu=-1e-4, sigma=0.02) == 0.0  # no edge, no trade
    assert sizing_fraction(cfg, 3.0) == pytest.approx(0.02)  # strength is clamped to 1
    # 0.625% of 10,000 USDT = 62.50 USDT at 50,000.00 = 0.00125 BTC = 125 size units
    assert size_units(usd(10_000) * 0.00625, 5_000_000, BTC) == 125
    rm = RiskManager(cfg, REG)
    assert rm.size_for(BTC, 5_000_000, usd(10_000), 0.5, mu=1e-5, sigma=0.02) == 125
    rm.st.level = "half_size"  # the breaker halves it: 62.5 units, down to the lot
    assert rm.size_for(BTC, 5_000_000, usd(10_000), 0.5, mu=1e-5, sigma=0.02) == 62


def test_minimum_order_and_position_limits() -> None:
    rm = RiskManager(RiskLimitsConfig(), REG)
    eq = usd(10_000)
    # 0.0002 BTC at 49,950.00 = 9.99 USDT: refused; 0.0002 at 50,000.00 = 10.00: passes
    chk = rm.check(BTC, 1, 20, 4_995_000, {}, {}, eq)
    assert (chk.size, chk.rule, chk.reason) == (0, "min_order", "min_order: 9.99 USDT < 10")
    assert rm.check(BTC, 1, 20, 5_000_000, {}, {}, eq).size == 20
    # 25% of 10,000 = 2,500 USDT = 0.05 BTC at 50,000: a 0.08 BTC order is cut to 0.05
    chk = rm.check(BTC, 1, 8_000, 5_000_000, {}, {}, eq)
    assert chk.size == 5_000
    assert chk.notes == ("max_position_pct: 25% of equity leaves room for 0.05000 of 0.08000",)
    # holding 0.03 already: room for 0.02
    assert rm.check(BTC, 1, 8_000, 5_000_000, {BTC.key: 3_000}, {}, eq).size == 2_000
    # selling 0.08 against a 0.03 long: 0.03 reduces, 0.05 opens a short (fits)
    assert rm.check(BTC, -1, 8_000, 5_000_000, {BTC.key: 3_000}, {}, eq).size == 8_000
    # a sixth position is refused
    five = {f"X{i}:Y": 1 for i in range(5)}
    chk = rm.check(BTC, 1, 100, 5_000_000, five, {}, eq)
    assert (chk.size, chk.rule) == (0, "max_positions")


def test_correlation_refusal_and_resize() -> None:
    rm = RiskManager(RiskLimitsConfig(), REG)
    # twelve samples: ETH moves exactly like BTC (rho 1)
    btc = [50_000.0 * (1 + 0.001 * ((i * 7) % 5 - 2)) for i in range(12)]
    for b in btc:
        rm.sample({"BTC": b, "ETH": b / 20})
    eq = usd(10_000)
    long_btc = {BTC.key: 1_000}
    chk = rm.check(ETH, 1, 1_000, 250_000, long_btc, {BTC.key: 5_000_000}, eq)
    assert (chk.size, chk.rule) == (0, "correlation")
    assert chk.reason == "correlation: ETH vs open BTC rho 1.000 > 0.7"
    # selling ETH against a BTC long is a hedge, not a concentration: allowed
    assert rm.check(ETH, -1, 1_000, 250_000, long_btc, {BTC.key: 5_000_000}, eq).size == 1_000
    # resize mode with rho 0.85: factor (1 - 0.85) / (1 - 0.7) = 0.5
    xs = [1.0, 2.0, 3.0, 4.0, 5.0]
    ys = [1.0, 3.0, 2.0, 5.0, 4.0]
    assert pearson(xs, ys) == pytest.approx(0.8)
    rm2 = RiskManager(RiskLimitsConfig(correlation_action="resize"), REG)
    rm2.st.samples = {"BTC": [1.0] * 12, "ETH": [1.0] * 12}
    rm2._returns = lambda a: [0.01, 0.02, 0.03, 0.04, 0.05] if a == "BTC" else ys  # type: ignore[method-assign]
    notes: list[str] = []
    # returns 1..5 vs 1,3,2,5,4 (shifted): rho 0.8 -> factor (1 - 0.8) / 0.3 = 2/3
    assert rm2._correlation(ETH, 1, 3_000, long_btc, notes) == 2_000
    assert notes == ["correlation: ETH vs open BTC rho 0.800 > 0.7: 0.3000 -> 0.2000"]


# -- drawdown breakers ---------------------------------------------------------------


def test_drawdown_breakers_and_staged_reentry() -> None:
    rm = RiskManager(RiskLimitsConfig(), REG)
    rm.st.peak = usd(10_000)
    seen: list[Any] = []

    def at(t: int, equity: float) -> int | None:
        events, stage_at = rm.on_equity(usd(equity), t)
        seen.extend(events)
        return stage_at

    assert at(1, 8_600) is None and seen == []  # 14%: nothing
    at(2, 8_500)  # 15.00%
    at(3, 8_000)  # 20.00%
    at(4, 8_200)  # 18%: still reduce-only
    assert levels(seen) == [("drawdown", "half_size", 0), ("drawdown", "reduce_only", 0)]
    assert seen[0].detail == ("drawdown 15.00% >= 15% (peak 10000.00, equity 8500.00); was normal")
    assert rm.size_factor() == 0.0
    stage_at = at(5, 9_100)  # 9% < 10% recovery: stage 1 at 25%
    assert stage_at == 5 + HOUR_NS
    assert levels(seen[2:]) == [("reentry", "reentry", 1)]
    assert rm.size_factor() == 0.25
    ev, nxt = rm.on_stage_timer(rm.st.generation, 5 + HOUR_NS)  # calm for an hour: 50%
    assert levels(ev) == [("reentry", "reentry", 2)] and nxt == 5 + 2 * HOUR_NS
    gen = rm.st.generation
    at(6 + HOUR_NS, 8_400)  # 16% during re-entry: straight back to half size
    assert levels(seen[3:]) == [("drawdown", "half_size", 0)]
    assert rm.on_stage_timer(gen, 5 + 2 * HOUR_NS) == ([], None)  # the old timer is stale
    stage_at = at(7 + HOUR_NS, 9_500)
    ev1, t2 = rm.on_stage_timer(rm.st.generation, stage_at or 0)
    ev2, t3 = rm.on_stage_timer(rm.st.generation, t2 or 0)
    assert levels(ev1 + ev2) == [("reentry", "reentry", 2), ("reentry", "normal", 3)]
    assert t3 is None and rm.st.level == "normal" and rm.size_factor() == 1.0
    at(8 + 3 * HOUR_NS, 7_400)  # 26%: halt
    assert levels(seen[-2:]) == [("drawdown", "halted", 0)]
    assert isinstance(seen[-1], Halt) and seen[-1].source == "risk"
    assert rm.check(BTC, 1, 100, 5_000_000, {}, {}, usd(7_400)).rule == "halt"
    assert rm.on_equity(usd(9_000), 9 + 3 * HOUR_NS) == ([], None)  # only a resume ends it
    ev, _ = rm.resume(usd(7_400), 10 + 3 * HOUR_NS)
    assert levels(ev) == [("reentry", "reentry", 1)] and rm.st.peak == usd(7_400)


BASE = {
    "instrument": {
        "exchange": "BINANCE",
        "symbol": "BTC-USDT-PERP",
        "kind": "perp",
        "base": "BTC",
        "quote": "USDT",
        "price_decimals": 1,
        "size_decimals": 0,
    },
    "execution": {"impact_y": 0.0},
    "portfolio": {"initial_cash": "10000"},
    "risk": {
        "max_position_pct": 200,
        "max_asset_pct": 200,
        "max_exchange_pct": 200,
        "max_sector_pct": 200,
        "reentry_calm_ms": 1000,
        "rebalance_tolerance_pct": 50,
    },
}


def book(t: int, mid: float) -> dict[str, Any]:
    return {
        "t_ms": t,
        "type": "snapshot",
        "bids": [[f"{mid - 0.2:.1f}", "1000"]],
        "asks": [[f"{mid + 0.2:.1f}", "1000"]],
    }


def buy(t: int, oid: str, size: str, side: str = "buy") -> dict[str, Any]:
    return {
        "t_ms": t,
        "type": "submit",
        "id": oid,
        "side": side,
        "order_type": "market",
        "size": size,
    }


def test_scripted_equity_path_through_every_breaker() -> None:
    """Buy 99 at 100.2 (cash 10,000 - 9,919.80 = 80.20); equity = 80.20 + 99 x mid."""
    events = [
        book(0, 100.0),
        buy(1, "long", "99"),
        book(10, 85.0),  # 80.2 + 8,415.0 = 8,495.2: dd 15.048% -> half size
        buy(11, "half", "10"),  # increases: halved to 5, at 85.2: cash -345.8, long 104
        book(20, 79.9),  # -345.8 + 104 x 79.9 = 7,963.8: 20.362% -> reduce-only
        buy(21, "more", "10"),  # refused
        buy(22, "trim", "10", side="sell"),  # reduces: passes (at bid 79.7)
        book(30, 74.9),  # cash -345.8 + 10 x 79.7 = 451.2; 451.2 + 94 x 74.9
        # = 7,491.8: 25.082% -> halted, every position flattened at the bid 74.7
        buy(31, "after", "1"),
        {"t_ms": 40, "type": "resume", "reason": "operator checked"},
    ]
    rows = list(run_scenario(parse_scenario({**BASE, "events": events})))
    risk = [
        (r["ts_event_ms"], r["rule"], r["level"], r["stage"])
        for r in rows
        if r["kind"] == "RiskEvent"
    ]
    assert risk == [
        (10, "drawdown", "half_size", 0),
        (11, "resize", "half_size", 0),
        (20, "drawdown", "reduce_only", 0),
        (21, "reduce_only", "refused", 0),
        (30, "drawdown", "halted", 0),
        (40, "reentry", "reentry", 1),
        (1040, "reentry", "reentry", 2),
        (2040, "reentry", "normal", 3),
    ]
    details = {r["ts_event_ms"]: r["detail"] for r in rows if r["kind"] == "RiskEvent"}
    assert details[10].startswith("drawdown 15.05% >= 15% (peak 10000.00, equity 8495.20)")
    assert details[30].startswith("drawdown 25.08% >= 25% (peak 10000.00, equity 7491.80)")
    fills = [(f["order_id"], f["side"], f["price"], f["size"]) for f in rows if f["kind"] == "Fill"]
    assert fills[:3] == [
        ("long", "buy", "100.2", "99"),
        ("half", "buy", "85.2", "5"),
        ("trim", "sell", "79.7", "10"),
    ]
    # the halt flattened 94 at the bid with a kernel order, reduce-only
    flat = [r for r in rows if r["kind"] == "OrderSubmitted" and r["reduce_only"]]
    assert [(r["side"], r["size"]) for r in flat] == [("sell", "94")]
    assert fills[3][1:] == ("sell", "74.7", "94")
    rejected = {r["order_id"]: r["reason"] for r in rows if r["kind"] == "OrderRejected"}
    assert rejected["more"] == "risk: reduce_only: drawdown 20.36% >= 20%"
    assert rejected["after"] == "halted: kill switch on"
    assert rows[-1]["positions"]["BINANCE:BTC-USDT-PERP"]["size"] == "0"


def test_halt_during_a_replay_stops_orders_and_flattens(tmp_path: Any) -> None:
    """A market maker replayed over a synthetic market, with an operator Halt in the
    middle: after it no strategy order goes out (each is rejected), in-flight ones are
    refused at the venue, and the kernel's reduce-only orders leave every position flat."""
    from adapters.config_loader import load_config
    from adapters.journal.memory import MemoryJournal
    from journal_tools.session import build_engine
    from journal_tools.synth import SynthSpec, generate
    from journal_tools.tardis import import_files
    from kernel.events import (
        Decision,
        Fill,
        OrderAccepted,
        OrderRejected,
        OrderSubmitted,
        decode,
    )
    from strategies.market_maker import MarketMakerStrategy

    config = load_config()
    manifest = generate(
        SynthSpec(
            out_dir=str(tmp_path),
            hours=0.1,
            exchanges=("binance",),
            symbols=("BTC-USDT",),
            perps=False,
            book_msgs_per_s=20.0,
            trades_per_s=4.0,
        )
    )
    journal = MemoryJournal()
    import_files(
        journal,
        InstrumentRegistry(list(config.instruments.instruments)),
        [f.path for f in manifest.files],
    )
    inputs = [decode(p) for p in journal.iter_payloads()]
    half = len(inputs) // 2
    t_halt = inputs[half].ts_recv
    halt = Halt(ts_event=t_halt, ts_recv=t_halt, reason="operator drill")
    eng = build_engine(config, MarketMakerStrategy(requote_every=10), 42, "drill")
    before: list[Any] = list(eng.start())
    after: list[Any] = []
    for i, ev in enumerate(inputs):
        if i == half:
            after.extend(eng.apply(halt))
        (after if i >= half else before).extend(eng.apply(ev))
    after.extend(eng.advance(inputs[-1].ts_recv + 60 * 10**9))
    assert sum(isinstance(o, Fill) for o in before) > 0  # it was trading
    assert eng.portfolio.qty("BINANCE:BTC-USDT") == 0  # flat at the end
    kernel_ids = {o.decision_id for o in after if isinstance(o, Decision) and o.strategy == "risk"}
    submitted = [o for o in after if isinstance(o, OrderSubmitted)]
    strategy_orders = [o.order_id for o in submitted if o.decision_id not in kernel_ids]
    assert strategy_orders, "the strategy kept trying to quote"
    rejected = {o.order_id for o in after if isinstance(o, OrderRejected)}
    assert set(strategy_orders) <= rejected  # every one refused
    # acks and fills seen after the halt but made at the venue before it (in flight on
    # the response path) are history; at the venue from the halt on, only the flatten
    # orders are accepted and filled
    flatten = {o.order_id for o in submitted if o.reduce_only and o.decision_id in kernel_ids}
    assert flatten
    venue_after = [o for o in after if isinstance(o, OrderAccepted | Fill) and o.ts_event >= t_halt]
    assert {o.order_id for o in venue_after} == flatten


@settings(max_examples=60, deadline=None)
@example(moves=[(0, -45)] * 12 + [(1, 30)] * 5 + [(0, -45)] * 10, size_a=100, size_b=50)
@given(
    st.lists(st.tuples(st.sampled_from([0, 1]), st.integers(-45, 30)), min_size=5, max_size=80),
    st.integers(50, 120),
    st.integers(10, 60),
)
def test_quiet_bands_change_nothing(moves: list[tuple[int, int]], size_a: int, size_b: int) -> None:
    """Equity bands skip re-evaluation only where nothing can happen: on random walks of
    two held instruments the risk layer makes exactly the same events and orders as when
    it re-evaluates on every mid move."""
    from kernel.config import EngineConfig, LatencyProfile, RiskLimitsConfig
    from kernel.engine import Engine
    from kernel.events import BookSnapshot
    from strategies.scripted import Action, ScriptedStrategy

    insts = [
        Instrument(
            exchange="BINANCE",
            symbol=f"{b}-USDT-PERP",
            kind="perp",
            base=b,
            quote="USDT",
            price_decimals=1,
            size_decimals=0,
        )
        for b in ("BTC", "ETH")
    ]
    risk = RiskLimitsConfig(
        max_position_pct=90,
        max_asset_pct=90,
        max_exchange_pct=100,
        max_sector_pct=100,
        reentry_calm_ms=50,
    )
    zero = {"BINANCE": LatencyProfile(model="constant", entry_mean_ms=0, response_mean_ms=0)}

    def run(use_bands: bool) -> list[Any]:
        actions = [
            Action(
                at_ns=2_500_000,  # after both books exist
                op="submit",
                order_id=f"o{i}",
                exchange="BINANCE",
                symbol=inst.symbol,
                side="buy",
                order_type="market",
                size=size,
            )
            for i, (inst, size) in enumerate(zip(insts, (size_a, size_b), strict=True))
        ]
        eng = Engine(
            EngineConfig(), insts, ScriptedStrategy(actions), seed=1, latency=zero, risk=risk
        )
        eng._use_bands = use_bands
        mids = [1000, 1000]
        outs: list[Any] = list(eng.start())
        t = 0
        for which, step in [(0, 0), (1, 0), *moves]:
            t += 1_000_000
            mids[which] = max(50, mids[which] + step)
            outs += eng.apply(
                BookSnapshot(
                    ts_event=t,
                    ts_recv=t,
                    exchange="BINANCE",
                    symbol=insts[which].symbol,
                    seq=0,
                    bids=((mids[which] - 1, 10_000),),
                    asks=((mids[which] + 1, 10_000),),
                )
            )
        return [o for o in outs if not isinstance(o, type(None))]

    with_bands = run(True)
    assert with_bands == run(False)
    return_kinds = {type(o).__name__ for o in with_bands}
    assert "Fill" in return_kinds
