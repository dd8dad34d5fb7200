"""A strategy that follows a script: timed submit / cancel / amend actions.

Used by ``tickerml scenario`` and by tests to pin fill behaviour. Each action runs at
its kernel time (a timer), so an action at the same time as a market event happens
before that event is folded.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from kernel.context import StrategyContext
from kernel.events import OrderType, Side, TimeInForce
from strategies.base import BaseStrategy


class Action(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One scripted action; prices and sizes in instrument units (0 = not given)."""

    at_ns: int
    op: Literal["submit", "cancel", "amend"]
    order_id: str
    exchange: str = ""
    symbol: str = ""
    side: Side = "buy"
    order_type: OrderType = "limit"
    size: int = 0
    price: int = 0
    time_in_force: TimeInForce = "GTC"
    trigger_price: int = 0
    reduce_only: bool = False
    reason: str = ""


class ScriptedStrategy(BaseStrategy):
    name = "scripted"

    def __init__(self, actions: list[Action]) -> None:
        self.actions = list(actions)

    def on_start(self, ctx: StrategyContext) -> None:
        for i, a in enumerate(self.actions):
            ctx.set_timer(a.at_ns, f"action:{i}")

    def on_timer(self, ctx: StrategyContext, name: str) -> None:
        if not name.startswith("action:"):
            return
        a = self.actions[int(name.split(":", 1)[1])]
        if a.op == "submit":
            inst = ctx.instrument(a.exchange, a.symbol)
            at = f"@ {inst.price_text(a.price)}" if a.price else "at market"
            did = ctx.decide(
                a.exchange,
                a.symbol,
                a.side,
                f"scripted action at {a.at_ns} ns: {a.order_type} {a.side} "
                f"{inst.size_text(a.size)} {at}",
                confidence=1.0,
            )
            ctx.submit(
                a.exchange,
                a.symbol,
                a.side,
                a.size,
                order_type=a.order_type,
                price=a.price,
                time_in_force=a.time_in_force,
                trigger_price=a.trigger_price,
                reduce_only=a.reduce_only,
                decision_id=did,
                order_id=a.order_id,
            )
        elif a.op == "cancel":
            ctx.cancel(a.order_id, a.reason)
        else:
            ctx.amend(a.order_id, size=a.size, price=a.price)
