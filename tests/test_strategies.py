"""The order-sending strategies on hand-made markets (zero latency, exact prices)."""

from __future__ import annotations

import argparse

import pytest

from journal_tools.cli import UsageError, _strategy_override
from kernel.config import AppConfig, EngineConfig, LatencyProfile, StrategyConfig, TradingConfig
from kernel.engine import Engine
from kernel.events import (
    BookDelta,
    BookSnapshot,
    CancelRequested,
    Decision,
    Event,
    Fill,
    OrderSubmitted,
    Trade,
)
from kernel.instruments import Instrument
from strategies import build_strategy
from strategies.market_maker import MarketMakerStrategy
from strategies.taker import TakerStrategy

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


def snap(t: int, bid: int, ask: int) -> BookSnapshot:
    return BookSnapshot(
        ts_event=t,
        ts_recv=t,
        exchange="BINANCE",
        symbol="BTC-USDT-PERP",
        seq=0,
        bids=((bid, 5_000),),
        asks=((ask, 5_000),),
    )


def trade(t: int, price: int, side: str = "sell") -> Trade:
    return Trade(
        ts_event=t,
        ts_recv=t,
        exchange="BINANCE",
        symbol="BTC-USDT-PERP",
        seq=0,
        trade_id=str(t),
        price=price,
        size=1,
        side=side,  # type: ignore[arg-type]
    )


def test_taker_alternates_market_orders_every_n_trades() -> None:
    eng = engine(TakerStrategy(size="0.002", every=2))
    outs: list[Event] = list(eng.apply(snap(1, 1000, 1001)))
    for t in range(2, 7):  # five trades: orders after the 2nd and the 4th
        outs += eng.apply(trade(t, 1000))
    fills = [(f.side, f.price, f.size, f.liquidity) for f in outs if isinstance(f, Fill)]
    assert fills == [("buy", 1001, 2, "taker"), ("sell", 1000, 2, "taker")]
    assert [d.reasoning for d in outs if isinstance(d, Decision)] == [
        "trade 2: every 2 trades a market buy of 0.002",
        "trade 4: every 2 trades a market sell of 0.002",
    ]


def test_market_maker_quotes_the_touch_and_skews_with_inventory() -> None:
    mm = MarketMakerStrategy(size="0.010", requote_every=2, skew_ticks=1, max_inventory="0.05")
    eng = engine(mm)
    outs: list[Event] = list(eng.apply(snap(1, 1000, 1002)))
    outs += eng.apply(snap(2, 1000, 1002))  # 2nd book event: quote
    subs = [(o.side, o.price, o.size) for o in outs if isinstance(o, OrderSubmitted)]
    assert subs == [("buy", 1000, 10), ("sell", 1002, 10)]
    # a sell print through our bid fills it: long 0.010 = one size -> skew one tick down
    outs = list(eng.apply(trade(3, 999)))
    assert [(f.side, f.price, f.size) for f in outs if isinstance(f, Fill)] == [("buy", 1000, 10)]
    eng.apply(snap(4, 1000, 1002))
    outs = list(eng.apply(snap(5, 1000, 1002)))  # 2nd book event after the last quote
    subs = [(o.side, o.price, o.size) for o in outs if isinstance(o, OrderSubmitted)]
    cancels = [o.order_id for o in outs if isinstance(o, CancelRequested)]
    assert subs == [("buy", 999, 10), ("sell", 1001, 10)]
    assert cancels == ["o2"]  # the old ask at 1002 is replaced; the filled bid is gone
    (dec,) = [o for o in outs if isinstance(o, Decision)]
    assert "touch 100.0/100.2, inventory 0.010" in dec.reasoning
    assert "skew 0.1" in dec.reasoning


def test_market_maker_one_side_and_unchanged_quotes_stay() -> None:
    eng = engine(MarketMakerStrategy(size="0.010", requote_every=1, sides="bid"))
    outs: list[Event] = list(eng.apply(snap(1, 1000, 1002)))
    assert [(o.side, o.price) for o in outs if isinstance(o, OrderSubmitted)] == [("buy", 1000)]
    outs = list(
        eng.apply(
            BookDelta(
                ts_event=2,
                ts_recv=2,
                exchange="BINANCE",
                symbol="BTC-USDT-PERP",
                seq=0,
                bids=(),
                asks=((1003, 1_000),),
            )
        )
    )
    assert outs == []  # same touch: the quote keeps its place, nothing is journaled
    with pytest.raises(ValueError, match="sides"):
        MarketMakerStrategy(sides="middle")


def test_replay_param_overrides() -> None:
    cfg = AppConfig(trading=TradingConfig(strategy=StrategyConfig(name="imbalance")))
    ns = argparse.Namespace(strategy="market_maker", param=["size=0.001", "requote_every=50"])
    got = _strategy_override(ns, cfg)
    assert got == StrategyConfig(name="market_maker", params={"size": 0.001, "requote_every": 50})
    mm = build_strategy(got)
    assert isinstance(mm, MarketMakerStrategy) and mm.size_text == "0.001"
    with pytest.raises(UsageError, match="KEY=VALUE"):
        _strategy_override(argparse.Namespace(strategy=None, param=["oops"]), cfg)
    with pytest.raises(ValueError, match="unknown parameter"):
        build_strategy(StrategyConfig(name="taker", params={"every": 3, "colour": "red"}))
