"""Features inside the kernel: ``Features`` events sampled from the engine's own books
(equal to a stand-alone FeatureSet), cross-venue and portfolio-aware features against
hand-computed values, the context's view, snapshot/restore and a journaled session."""

from __future__ import annotations

import pytest

from adapters.journal.base import session_stream
from adapters.journal.memory import MemoryJournal
from journal_tools.session import run_session, verify_session
from kernel.config import (
    AppConfig,
    EngineConfig,
    FeaturesConfig,
    InstrumentsConfig,
    LatencyProfile,
    StrategyConfig,
    TradingConfig,
)
from kernel.context import StrategyContext
from kernel.engine import Engine
from kernel.events import BookDelta, BookSnapshot, Event, Features, Fill, MarketEvent, Trade, decode
from kernel.features import FeatureConfig, FeatureSet
from kernel.features.cross import CROSS_NAMES
from kernel.features.portfolio import PORTFOLIO_NAMES
from kernel.instruments import Instrument
from strategies.base import BaseStrategy
from strategies.scripted import Action, ScriptedStrategy

MS = 1_000_000
S = 1_000 * MS
T0 = 1_700_000_000 * S
SYM = "BTC-USDT"


def inst(exchange: str, taker_fee_ppm: int = 1_000) -> Instrument:
    return Instrument(
        exchange=exchange,
        symbol=SYM,
        kind="spot",
        base="BTC",
        quote="USDT",
        price_decimals=1,
        size_decimals=3,
        taker_fee_ppm=taker_fee_ppm,
    )


BN, KR = inst("BINANCE"), inst("KRAKEN")
PARAMS = FeatureConfig(sample_interval_ns=S, windows_ms=(1_000,), imbalance_levels=(1, 2))
ON = FeaturesConfig(enabled=True, params=PARAMS)
INSTANT = {
    ex: LatencyProfile(model="constant", entry_mean_ms=0, response_mean_ms=0)
    for ex in ("BINANCE", "KRAKEN")
}


def market(n: int = 60) -> list[Event]:
    """Two venues, a delta and a trade every 100 ms on BINANCE, a delta every 250 ms on
    KRAKEN, prices wandering by a tick."""
    out: list[Event] = [
        BookSnapshot(T0, T0, "BINANCE", SYM, 1, ((600_000, 100), (599_990, 50)), ((600_020, 80),)),
        BookSnapshot(T0, T0, "KRAKEN", SYM, 1, ((600_050, 40),), ((600_070, 60),)),
    ]
    for i in range(1, n):
        t = T0 + i * 100 * MS
        out.append(BookDelta(t, t, "BINANCE", SYM, i, ((600_000, 100 + 3 * i),), ()))
        side = "buy" if i % 3 else "sell"
        out.append(Trade(t + MS, t + MS, "BINANCE", SYM, 0, f"b{i}", 600_010, 5 + i % 4, side))
        if i % 5 == 0:
            k = t + 2 * MS
            out.append(BookDelta(k, k, "KRAKEN", SYM, i, ((600_050, 40 + i),), ()))
    return out


def test_features_events_equal_a_standalone_featureset() -> None:
    eng = Engine(EngineConfig(), [BN, KR], None, features=ON)
    solo = FeatureSet(PARAMS)
    got: list[Features] = []
    want = []
    for ev in market():
        got += [e for e in eng.apply(ev) if isinstance(e, Features)]
        want += solo.apply(ev)
    assert len(got) == len(want) == 10  # 5 s of BINANCE + 5 of KRAKEN boundaries
    n = len(solo.names)
    for g, w in zip(got, want, strict=True):
        assert (g.ts_event, g.exchange, g.symbol) == (w.ts, w.exchange, w.symbol)
        assert g.names[:n] == w.names and g.values[:n] == w.values
        assert g.names[n:] == CROSS_NAMES + PORTFOLIO_NAMES
    assert [g.ts_event for g in got if g.exchange == "BINANCE"] == [T0 + k * S for k in range(1, 6)]


def test_cross_venue_features_by_hand() -> None:
    """BINANCE 60000.0 / 60002.0, KRAKEN 60005.0 / 60007.0, taker fees 10 bp each.
    For BINANCE: mid 60001; KRAKEN mid 60006.
    xv_mid_diff_bp = (60001 - 60006) / 60006 x 1e4 = -0.833250...
    xv_sell_there_bp = (60005 - 60002) / 60001 x 1e4 = 0.499991...
    xv_buy_there_bp = (60000 - 60007) / 60001 x 1e4 = -1.166647...
    arb_signal_bp = 0.499991 - 20 = -19.500008..."""
    eng = Engine(EngineConfig(), [BN, KR], None)
    eng.apply(BookSnapshot(T0, T0, "BINANCE", SYM, 1, ((600_000, 10),), ((600_020, 10),)))
    eng.apply(BookSnapshot(T0, T0, "KRAKEN", SYM, 1, ((600_050, 10),), ((600_070, 10),)))
    f = eng.feature_values("BINANCE", SYM)
    assert f["xv_venues"] == 1.0
    assert (f["xv_best_bid"], f["xv_best_ask"]) == (60005.0, 60002.0)
    assert f["xv_mid_diff_bp"] == pytest.approx((60001 - 60006) / 60006 * 1e4, abs=1e-9)
    assert f["xv_sell_there_bp"] == pytest.approx(3 / 60001 * 1e4, abs=1e-9)
    assert f["xv_buy_there_bp"] == pytest.approx(-7 / 60001 * 1e4, abs=1e-9)
    assert f["arb_signal_bp"] == pytest.approx(3 / 60001 * 1e4 - 20, abs=1e-9)
    k = eng.feature_values("KRAKEN", SYM)
    # KRAKEN: sell there (BINANCE bid 60000) - ask 60007 -> -7/60006; buy there: 60005 - 60002
    assert k["xv_buy_there_bp"] == pytest.approx(3 / 60006 * 1e4, abs=1e-9)
    assert k["arb_signal_bp"] == pytest.approx(3 / 60006 * 1e4 - 20, abs=1e-9)
    lone = Engine(EngineConfig(), [BN, KR], None)
    lone.apply(BookSnapshot(T0, T0, "BINANCE", SYM, 1, ((600_000, 10),), ((600_020, 10),)))
    assert [lone.feature_values("BINANCE", SYM)[n] for n in CROSS_NAMES] == [
        0.0,
        60000.0,
        60002.0,
        0.0,
        0.0,
        0.0,
        0.0,
    ]


def test_portfolio_features_by_hand() -> None:
    """Buy 0.100 BTC at market at T0 + 1 ms against an ask of 60002.0 (fee 10 bp); then the
    book moves to 60010.0 / 60012.0: position 0.1, unrealised P&L at the mid 60011
    = 0.1 x 60011 - cost (the fill's price x 0.1), held 2.999 s at T0 + 3 s."""
    buy = Action(
        at_ns=T0 + MS,
        op="submit",
        order_id="o1",
        exchange="BINANCE",
        symbol=SYM,
        side="buy",
        order_type="market",
        size=100,
    )
    eng = Engine(EngineConfig(), [BN, KR], ScriptedStrategy([buy]), latency=INSTANT, features=ON)
    eng.apply(BookSnapshot(T0, T0, "BINANCE", SYM, 1, ((600_000, 5_000),), ((600_020, 5_000),)))
    out = eng.apply(BookDelta(T0 + 2 * MS, T0 + 2 * MS, "BINANCE", SYM, 2, ((600_000, 4_000),), ()))
    fills = [e for e in out if isinstance(e, Fill)]
    assert sum(f.size for f in fills) == 100
    cost = sum(f.price * f.size for f in fills) / 10 / 1000  # quote units
    charges = sum(f.fee + f.impact_cost for f in fills) / 1e8  # fee and impact, MONEY
    t = T0 + 3 * S
    eng.apply(BookSnapshot(t, t, "BINANCE", SYM, 3, ((600_100, 5_000),), ((600_120, 5_000),)))
    f = eng.feature_values("BINANCE", SYM)
    assert f["position"] == 0.1
    assert f["position_pnl"] == pytest.approx(0.1 * 60011 - cost, abs=1e-6)
    assert f["time_in_position_s"] == pytest.approx(2.999)
    # heat without a risk layer: |0.1 x 60011| / equity (one slot at 100 %), equity = cash
    # + 0.1 x 60011 and cash = 10000 - cost - fee (10 bp of cost) - impact cost
    assert sum(f.fee for f in fills) == 600_020_000  # 10 bp of 6002.0 USDT
    equity = 10_000 - cost - charges + 0.1 * 60011
    assert eng.equity() / 1e8 == pytest.approx(equity, abs=1e-8)
    assert f["portfolio_heat"] == pytest.approx(0.1 * 60011 / equity, rel=1e-12)
    assert eng.feature_values("KRAKEN", SYM)["position"] == 0.0


class Reader(BaseStrategy):
    """Reads features through the context at every market event (and records them)."""

    name = "reader"

    def __init__(self, name: str = "imbalance_5") -> None:
        self.feature = name
        self.seen: list[float] = []

    def on_start(self, ctx: StrategyContext) -> None:
        ctx.use_features()

    def on_market(self, ctx: StrategyContext, event: MarketEvent) -> None:
        self.seen.append(ctx.features(event.exchange, event.symbol)[self.feature])


def test_a_strategy_switches_features_on_without_emitting() -> None:
    r = Reader()
    eng = Engine(EngineConfig(), [BN, KR], r)
    outs = [o for ev in market(20) for o in eng.apply(ev)]
    assert not [o for o in outs if isinstance(o, Features)]
    assert r.seen[0] == pytest.approx((150 - 80) / 230)  # BINANCE's snapshot, 5 levels


def test_snapshot_restore_with_features_on() -> None:
    events = market()
    whole = Engine(EngineConfig(), [BN, KR], Reader("imbalance_1"), features=ON)
    outs = [whole.apply(e) for e in events]
    cut = 70
    part = Engine(EngineConfig(), [BN, KR], Reader("imbalance_1"), features=ON)
    for e in events[:cut]:
        part.apply(e)
    resumed = Engine(EngineConfig(), [BN, KR], Reader("imbalance_1"), features=ON)
    resumed.restore(part.snapshot())
    assert resumed.state_hash() == part.state_hash()
    rest = [resumed.apply(e) for e in events[cut:]]
    assert rest == outs[cut:]
    assert resumed.state_hash() == whole.state_hash()
    plain = Engine(EngineConfig(), [BN, KR], None)
    off = Engine(EngineConfig(), [BN, KR], None, features=FeaturesConfig(enabled=False))
    for e in events:
        plain.apply(e)
        off.apply(e)
    assert off.snapshot() == plain.snapshot()  # off: the state as before features


def test_a_replayed_session_journals_features_and_verifies() -> None:
    config = AppConfig(
        instruments=InstrumentsConfig(instruments=(BN, KR)),
        trading=TradingConfig(features=ON),
    )
    journal = MemoryJournal()
    events = market()
    journal.append("md.BINANCE.BTC-USDT", [e for e in events if e.exchange == "BINANCE"])  # type: ignore[attr-defined]
    journal.append("md.KRAKEN.BTC-USDT", [e for e in events if e.exchange == "KRAKEN"])  # type: ignore[attr-defined]
    run_session(journal, config, strategy=StrategyConfig(name="none"), session_id="f")
    rows = [decode(r.payload) for r in journal.read(session_stream("f"))]
    feats = [e for e in rows if isinstance(e, Features)]
    assert len(feats) == 10
    assert verify_session(journal, "f").ok
