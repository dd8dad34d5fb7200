"""Example strategy: order-book imbalance signal with journaled reasoning.

For each instrument it watches, on every book update it computes the imbalance of the
``levels`` best levels, ``(bid depth - ask depth) / (bid depth + ask depth)``, and the
microprice. When the imbalance crosses ``threshold`` (buy) or ``-threshold`` (sell) the
signal changes and a ``Decision`` is journaled naming the values and the threshold;
returning inside ``exit_threshold`` gives a ``hold``. A cooldown of ``cooldown_ms``
(plus a seeded random jitter of up to ``jitter_ms``, so quotes are not predictable)
limits how often the signal may change. It places no orders yet: the execution
simulator comes with its own issue.
"""

from __future__ import annotations

import msgspec

from kernel.config import ParamValue
from kernel.context import StrategyContext
from kernel.events import BookDelta, BookSnapshot, MarketEvent
from strategies.base import BaseStrategy


class _State(msgspec.Struct, array_like=True):
    signal: dict[str, str] = msgspec.field(default_factory=dict)
    next_allowed_ns: dict[str, int] = msgspec.field(default_factory=dict)


class ImbalanceStrategy(BaseStrategy):
    name = "imbalance"

    def __init__(
        self,
        levels: int = 5,
        threshold: float = 0.6,
        exit_threshold: float = 0.2,
        cooldown_ms: int = 1000,
        jitter_ms: int = 250,
    ) -> None:
        if not 0 < exit_threshold < threshold < 1:
            raise ValueError("need 0 < exit_threshold < threshold < 1")
        self.levels = levels
        self.threshold = threshold
        self.exit_threshold = exit_threshold
        self.cooldown_ns = cooldown_ms * 1_000_000
        self.jitter_ns = jitter_ms * 1_000_000
        self._st = _State()

    @classmethod
    def from_params(cls, params: dict[str, ParamValue]) -> ImbalanceStrategy:
        known = {"levels", "threshold", "exit_threshold", "cooldown_ms", "jitter_ms"}
        unknown = sorted(set(params) - known)
        if unknown:
            raise ValueError(f"imbalance: unknown parameter(s) {unknown}; known: {sorted(known)}")
        return cls(**params)  # type: ignore[arg-type]

    def on_market(self, ctx: StrategyContext, event: MarketEvent) -> None:
        if not isinstance(event, BookDelta | BookSnapshot):
            return
        key = f"{event.exchange}:{event.symbol}"
        st = self._st
        now = ctx.now
        if now < st.next_allowed_ns.get(key, 0):
            return
        book = ctx.book(event.exchange, event.symbol)
        if book is None or book.spread() is None:
            return  # no signal from a one-sided (or empty) book
        imb = book.imbalance(self.levels)
        prev = st.signal.get(key, "hold")
        if imb >= self.threshold:
            new = "buy"
        elif imb <= -self.threshold:
            new = "sell"
        elif abs(imb) <= self.exit_threshold:
            new = "hold"
        else:
            new = prev
        if new == prev:
            return
        inst = ctx.instrument(event.exchange, event.symbol)
        micro = book.microprice()
        mid = book.mid()
        assert micro is not None and mid is not None  # both sides exist (checked above)
        bid_depth, ask_depth = book.depth(self.levels)
        if new == "hold":
            why = f"|imbalance({self.levels})|={abs(imb):.3f} <= exit {self.exit_threshold:.2f}"
        else:
            op = ">=" if new == "buy" else "<="
            thr = self.threshold if new == "buy" else -self.threshold
            why = f"imbalance({self.levels})={imb:.3f} {op} {thr:.2f}"
        scale = 10**inst.price_decimals
        reasoning = (
            f"{why}; bid depth {inst.size_text(bid_depth)} vs ask depth "
            f"{inst.size_text(ask_depth)}; microprice {micro / scale:.{inst.price_decimals + 2}f} "
            f"vs mid {mid / scale:.{inst.price_decimals + 1}f}; signal {prev} -> {new}"
        )
        ctx.decide(
            event.exchange,
            event.symbol,
            new,
            reasoning,
            features=(
                ("imbalance", imb),
                ("microprice", micro / scale),
                ("mid", mid / scale),
                ("threshold", self.threshold),
            ),
            confidence=min(1.0, abs(imb)),
        )
        st.signal[key] = new
        jitter = int(ctx.rng.integers(0, self.jitter_ns + 1)) if self.jitter_ns else 0
        st.next_allowed_ns[key] = now + self.cooldown_ns + jitter

    def snapshot_state(self) -> bytes:
        return msgspec.msgpack.encode(self._st)

    def restore_state(self, state: bytes) -> None:
        self._st = msgspec.msgpack.decode(state, type=_State) if state else _State()
