"""Strategies that read features through the context: the microstructure momentum
strategy and the market maker's queue estimates, on hand-made markets with the numbers
worked out in the comments."""

from __future__ import annotations

import math

import pytest

from kernel.config import EngineConfig, LatencyProfile
from kernel.engine import Engine
from kernel.events import BookSnapshot, Decision, Event, Fill, OrderSubmitted, Trade
from kernel.instruments import Instrument
from strategies import build_strategy
from strategies.market_maker import MarketMakerStrategy
from strategies.momentum import MomentumStrategy

S = 1_000_000_000
INST = Instrument(
    exchange="BINANCE",
    symbol="BTC-USDT-PERP",
    kind="perp",
    base="BTC",
    quote="USDT",
    price_decimals=1,
    size_decimals=3,
)
INSTANT = {"BINANCE": LatencyProfile(model="constant", entry_mean_ms=0, response_mean_ms=0)}


def engine(strategy: object) -> Engine:
    return Engine(EngineConfig(), [INST], strategy, seed=1, latency=INSTANT)  # type: ignore[arg-type]


def snap(
    t: int, bids: tuple[tuple[int, int], ...], asks: tuple[tuple[int, int], ...]
) -> BookSnapshot:
    return BookSnapshot(t, t, "BINANCE", "BTC-USDT-PERP", 0, bids, asks)


def trade(t: int, price: int, size: int, side: str) -> Trade:
    return Trade(t, t, "BINANCE", "BTC-USDT-PERP", 0, str(t), price, size, side)  # type: ignore[arg-type]


def momentum() -> MomentumStrategy:
    return MomentumStrategy(
        imbalance_threshold=0.3,
        microprice_threshold_bp=0.02,
        flow_threshold=0.2,
        exit_threshold=0.1,
        evaluate_ms=0,
        size="0.010",
        max_position="0.010",
    )


def test_momentum_enters_when_all_three_signals_agree_and_exits_when_they_turn() -> None:
    """Book 60000.0 x 0.300 / 60001.0 x 0.100:
    imbalance_5 = (300 - 100) / 400 = 0.5 > 0.3;
    microprice = (600000 x 100 + 600010 x 300) / 400 = 600007.5, mid x2 = 1200010,
    offset = (2 x 600007.5 - 1200010) / 1200010 x 1e4 = 5 / 1200010 x 1e4 = 0.041666 bp
    > 0.02; flow (10 s): a sell of 10 then a buy of 30 -> (30 - 10) / 40 = 0.5 > 0.2, so
    the buy trade triggers the entry (after the sell alone the flow is -1: nothing).
    Confidence = 1/2 + (min(1, .5/.6) + min(1, .041666/.04) + min(1, .5/.4)) / 6
    = 1/2 + (0.83333 + 1 + 1) / 6 = 0.972222."""
    eng = engine(momentum())
    out: list[Event] = list(eng.apply(snap(S, ((600_000, 300),), ((600_010, 100),))))
    out += eng.apply(trade(S + 100_000_000, 600_000, 10, "sell"))
    assert not [e for e in out if isinstance(e, Decision)]
    out += eng.apply(trade(S + 200_000_000, 600_010, 30, "buy"))
    (d,) = [e for e in out if isinstance(e, Decision)]
    offset = 5 / 1_200_010 * 1e4
    assert d.action == "buy"
    assert d.reasoning == (
        "buy 0.010: all three signals above their thresholds: imbalance_5 +0.5000 vs +0.3, "
        f"microprice_offset_bp +{offset:.4f} vs +0.02, trade_imbalance_10s +0.5000 vs +0.2; "
        "position 0.000 (max 0.010)"
    )
    assert d.features == (
        ("imbalance_5", 0.5),
        ("microprice_offset_bp", pytest.approx(offset, abs=1e-12)),
        ("trade_imbalance_10s", 0.5),
        ("imbalance_threshold", 0.3),
        ("microprice_threshold_bp", 0.02),
        ("flow_threshold", 0.2),
        ("exit_threshold", 0.1),
        ("position", 0.0),
    )
    assert d.confidence == pytest.approx(0.5 + (0.5 / 0.6 + 1 + 1) / 6, abs=1e-12)
    fills = [(f.side, f.price, f.size) for f in out if isinstance(f, Fill)]
    assert fills == [("buy", 600_010, 10)]
    # at max position: the same signals give nothing more
    assert not [
        e for e in eng.apply(trade(S + 300_000_000, 600_010, 1, "buy")) if isinstance(e, Decision)
    ]
    # the book flips: imbalance (100 - 300) / 400 = -0.5 < -0.1 -> exit the long
    out = list(eng.apply(snap(S + 400_000_000, ((600_000, 100),), ((600_010, 300),))))
    (x,) = [e for e in out if isinstance(e, Decision)]
    assert (x.action, x.confidence) == ("flat", 0.75)  # imbalance only (flow still +)
    assert x.reasoning.startswith("exit 0.010: imbalance or flow turned against the position")
    assert [(f.side, f.size) for f in out if isinstance(f, Fill)] == [("sell", 10)]
    assert eng.ctx.position("BINANCE", "BTC-USDT-PERP") == 0


def test_momentum_builds_from_config_and_rejects_unknown_params() -> None:
    from kernel.config import StrategyConfig

    s = build_strategy(StrategyConfig(name="momentum", params={"levels": 10}))
    assert isinstance(s, MomentumStrategy) and s.levels == 10
    with pytest.raises(ValueError, match="unknown parameter"):
        build_strategy(StrategyConfig(name="momentum", params={"leverage": 3}))


def mm() -> MarketMakerStrategy:
    return MarketMakerStrategy(
        size="0.010", requote_every=1, skew_ticks=0, max_inventory="0.050", queue_eta_max_s=5
    )


def quotes(out: list[Event] | tuple[Event, ...]) -> list[tuple[str, int]]:
    return [(o.side, o.price) for o in out if isinstance(o, OrderSubmitted)]


def test_market_maker_steps_inside_a_slow_queue() -> None:
    """Touch 60000.0 x 5.000 / 60003.0 x 5.000 and no trades yet: no side has a fill rate,
    so each wait is the cap (86400 s > 5 s) and both quotes step one tick (0.1) inside:
    bid 60000.1, ask 60002.9."""
    eng = engine(mm())
    out = eng.apply(snap(S, ((600_000, 5_000),), ((600_030, 5_000),)))
    assert quotes(out) == [("buy", 600_001), ("sell", 600_029)]
    (d,) = [e for e in out if isinstance(e, Decision)]
    assert "bid queue 5.000 ahead, est. wait 86400.0 s > queue_eta_max_s 5 -> one tick inside" in (
        d.reasoning
    )
    f = dict(d.features)
    assert (f["queue_ahead_bid"], f["queue_eta_bid_s"], f["queue_eta_max_s"]) == (5.0, 86400.0, 5.0)


def test_market_maker_joins_a_fast_queue() -> None:
    """Sells of 50.000 in all hit the bid at t = 1 s: the EW sell rate (half-life 10 s) is
    50000 x ln 2 / 10 = 3465.7 size units/s, so the wait behind 5.000 is
    5000 / 3465.7 = 1.4427 s < 5 s: the bid joins the touch (60000.0); the ask side has no
    buys, waits the cap and steps inside (60002.9)."""
    eng = engine(mm())
    eng.apply(trade(S - 1, 600_000, 50_000, "sell"))
    out = eng.apply(snap(S, ((600_000, 5_000),), ((600_030, 5_000),)))
    assert quotes(out) == [("buy", 600_000), ("sell", 600_029)]
    (d,) = [e for e in out if isinstance(e, Decision)]
    rate = 50_000 * math.log(2) / 10
    assert dict(d.features)["queue_eta_bid_s"] == pytest.approx(5_000 / rate, rel=1e-6)
    assert "bid queue" not in d.reasoning and "ask queue 5.000 ahead" in d.reasoning


def test_market_maker_without_queue_estimates_is_unchanged() -> None:
    eng = engine(MarketMakerStrategy(size="0.010", requote_every=1, skew_ticks=0))
    out = eng.apply(snap(S, ((600_000, 5_000),), ((600_030, 5_000),)))
    assert quotes(out) == [("buy", 600_000), ("sell", 600_030)]  # at the touch
    assert eng._features is None  # nothing switched the features on
