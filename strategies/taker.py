"""A periodic taker: a market order every ``every`` trades, alternating buy and sell.

Exercises the book walk, slippage, impact and taker fees; the peers benchmark's
``taker`` mode. Each order is a ``Decision`` naming the trade count and the side.
"""

from __future__ import annotations

import msgspec

from kernel.config import ParamValue
from kernel.context import StrategyContext
from kernel.events import MarketEvent, Side, Trade
from strategies.base import BaseStrategy


class _State(msgspec.Struct, array_like=True):
    trades: dict[str, int] = msgspec.field(default_factory=dict)
    orders: int = 0


class TakerStrategy(BaseStrategy):
    name = "taker"

    def __init__(self, size: str = "0.001", every: int = 1000) -> None:
        if every < 1:
            raise ValueError("every must be >= 1")
        self.size_text = str(size)
        self.every = every
        self._st = _State()

    @classmethod
    def from_params(cls, params: dict[str, ParamValue]) -> TakerStrategy:
        unknown = sorted(set(params) - {"size", "every"})
        if unknown:
            raise ValueError(f"taker: unknown parameter(s) {unknown}; known: ['every', 'size']")
        return cls(**params)  # type: ignore[arg-type]

    def on_market(self, ctx: StrategyContext, event: MarketEvent) -> None:
        if type(event) is not Trade:
            return
        key = f"{event.exchange}:{event.symbol}"
        st = self._st
        n = st.trades.get(key, 0) + 1
        st.trades[key] = n
        if n % self.every:
            return
        side: Side = "buy" if st.orders % 2 == 0 else "sell"
        inst = ctx.instrument(event.exchange, event.symbol)
        size = inst.size(self.size_text)
        if side == "sell" and inst.kind == "spot":
            size = min(size, ctx.position(event.exchange, event.symbol))
            if size <= 0:
                return
        st.orders += 1
        did = ctx.decide(
            event.exchange,
            event.symbol,
            side,
            f"trade {n}: every {self.every} trades a market {side} of {inst.size_text(size)}",
            confidence=0.5,
        )
        ctx.submit(event.exchange, event.symbol, side, size, order_type="market", decision_id=did)

    def snapshot_state(self) -> bytes:
        return msgspec.msgpack.encode(self._st)

    def restore_state(self, state: bytes) -> None:
        self._st = msgspec.msgpack.decode(state, type=_State) if state else _State()
