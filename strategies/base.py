"""The Strategy protocol and a base class with no-op defaults.

A strategy is a pure object driven by the kernel: it reads the context (books, last
trades, clock, seeded RNG) and acts only through context methods (``ctx.decide``,
``ctx.set_timer``, ``ctx.submit``, ``ctx.cancel``, ``ctx.amend``), each of which becomes a
journaled event. It never talks to Kafka, a database or an exchange, never reads the
wall clock and never draws from an unseeded RNG. Its state must round-trip through
``snapshot_state``/``restore_state`` so a session can be snapshotted and resumed.
"""

from __future__ import annotations

from kernel.context import StrategyContext, StrategyLike
from kernel.events import Event, MarketEvent

Strategy = StrategyLike
"""What the engine calls: ``name``, ``on_start``, ``on_market``, ``on_timer``,
``on_order``, ``snapshot_state`` and ``restore_state``."""


class BaseStrategy:
    """Convenience base: override what you need. Stateless by default."""

    name = "base"

    def on_start(self, ctx: StrategyContext) -> None:
        return None

    def on_market(self, ctx: StrategyContext, event: MarketEvent) -> None:
        return None

    def on_timer(self, ctx: StrategyContext, name: str) -> None:
        return None

    def on_order(self, ctx: StrategyContext, event: Event) -> None:
        """Responses to our orders, seen after the response latency: OrderAccepted,
        OrderRejected, OrderCancelled, OrderExpired, OrderAmended, OrderTriggered,
        OrderError, Fill, FillToxic."""
        return None

    def snapshot_state(self) -> bytes:
        return b""

    def restore_state(self, state: bytes) -> None:
        return None


__all__ = ["BaseStrategy", "Strategy", "StrategyContext"]
