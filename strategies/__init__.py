"""Strategies and the registry that builds one from config by name."""

from __future__ import annotations

from kernel.config import StrategyConfig
from strategies.arbitrage import ArbitrageStrategy
from strategies.base import BaseStrategy, Strategy
from strategies.dt_policy import DTPolicyStrategy
from strategies.imbalance import ImbalanceStrategy
from strategies.market_maker import MarketMakerStrategy
from strategies.momentum import MomentumStrategy
from strategies.taker import TakerStrategy

STRATEGIES: dict[
    str,
    type[ImbalanceStrategy]
    | type[MarketMakerStrategy]
    | type[TakerStrategy]
    | type[MomentumStrategy]
    | type[ArbitrageStrategy]
    | type[DTPolicyStrategy],
] = {
    "arbitrage": ArbitrageStrategy,
    "dt_policy": DTPolicyStrategy,
    "imbalance": ImbalanceStrategy,
    "market_maker": MarketMakerStrategy,
    "momentum": MomentumStrategy,
    "taker": TakerStrategy,
}


def build_strategy(config: StrategyConfig) -> Strategy | None:
    """The configured strategy, or None for ``name: none`` (market replay only)."""
    if config.name == "none":
        if config.params:
            raise ValueError("strategy 'none' takes no params")
        return None
    try:
        cls = STRATEGIES[config.name]
    except KeyError:
        known = ", ".join(["none", *sorted(STRATEGIES)])
        raise ValueError(f"unknown strategy {config.name!r}; known: {known}") from None
    return cls.from_params(dict(config.params))


__all__ = [
    "STRATEGIES",
    "ArbitrageStrategy",
    "BaseStrategy",
    "DTPolicyStrategy",
    "ImbalanceStrategy",
    "MarketMakerStrategy",
    "MomentumStrategy",
    "Strategy",
    "TakerStrategy",
    "build_strategy",
]
