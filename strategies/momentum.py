"""Microstructure momentum: trade with the book imbalance, the microprice and the flow.

Every ``evaluate_ms`` of kernel time (at the first book or trade event after it) it reads
three features of the instrument through ``ctx.features`` (kernel/features):

* ``imbalance_N`` (N = ``levels``): depth imbalance of the N best levels, in [-1, 1];
* ``microprice_offset_bp``: the microprice against the mid, in bp;
* ``trade_imbalance_W`` (W = ``flow_window``, e.g. ``10s``): buy minus sell volume over
  the window, over the volume, in [-1, 1].

Entry: all three beyond their thresholds in the same direction (``imbalance_threshold``,
``microprice_threshold_bp``, ``flow_threshold``): ``buy`` when all are above, ``sell``
when all are below the negatives (on spot a sell only closes what is held). Exit
(``flat``): a position whose imbalance or flow has turned against it beyond
``exit_threshold``. Orders are market orders of ``size`` base units capped so the
position stays within ``max_position``; nothing is evaluated while an order of its own
on the instrument is still open. Confidence of an entry:
``1/2 + mean_i(min(1, |value_i| / (2 x threshold_i))) / 2``, in (0.75, 1]: 1.0 when every
signal is at twice its threshold or more; of an exit: ``1/2 + 1/4`` per signal (of
imbalance and flow) beyond the exit threshold. Every entry and exit is a ``Decision``
whose reasoning names each value and its threshold; the features tuple carries the
values and thresholds by name.
"""

from __future__ import annotations

import msgspec

from kernel.config import ParamValue
from kernel.context import StrategyContext
from kernel.events import BookDelta, BookSnapshot, MarketEvent, Side, Trade
from strategies.base import BaseStrategy

MS = 1_000_000


class _State(msgspec.Struct, array_like=True):
    next_eval_ns: dict[str, int] = msgspec.field(default_factory=dict)
    entries: int = 0
    exits: int = 0


class MomentumStrategy(BaseStrategy):
    name = "momentum"

    def __init__(
        self,
        levels: int = 5,
        imbalance_threshold: float = 0.3,
        microprice_threshold_bp: float = 0.2,
        flow_window: str = "10s",
        flow_threshold: float = 0.2,
        exit_threshold: float = 0.1,
        evaluate_ms: int = 250,
        size: str = "0.01",
        max_position: str = "0.03",
    ) -> None:
        if not 0 < imbalance_threshold < 1 or not 0 < flow_threshold < 1:
            raise ValueError("imbalance_threshold and flow_threshold must be within (0, 1)")
        if microprice_threshold_bp <= 0 or exit_threshold < 0 or evaluate_ms < 0:
            raise ValueError(
                "need microprice_threshold_bp > 0, exit_threshold >= 0, evaluate_ms >= 0"
            )
        self.levels = levels
        self.imbalance_threshold = imbalance_threshold
        self.microprice_threshold_bp = microprice_threshold_bp
        self.flow_window = flow_window
        self.flow_threshold = flow_threshold
        self.exit_threshold = exit_threshold
        self.evaluate_ns = evaluate_ms * MS
        self.size_text = str(size)
        self.max_position_text = str(max_position)
        self._names = (
            f"imbalance_{levels}",
            "microprice_offset_bp",
            f"trade_imbalance_{flow_window}",
        )
        self._st = _State()

    @classmethod
    def from_params(cls, params: dict[str, ParamValue]) -> MomentumStrategy:
        known = {
            "levels",
            "imbalance_threshold",
            "microprice_threshold_bp",
            "flow_window",
            "flow_threshold",
            "exit_threshold",
            "evaluate_ms",
            "size",
            "max_position",
        }
        unknown = sorted(set(params) - known)
        if unknown:
            raise ValueError(f"momentum: unknown parameter(s) {unknown}; known: {sorted(known)}")
        return cls(**params)  # type: ignore[arg-type]

    def on_start(self, ctx: StrategyContext) -> None:
        ctx.use_features()

    def on_market(self, ctx: StrategyContext, event: MarketEvent) -> None:
        cls = type(event)
        if cls is not BookDelta and cls is not BookSnapshot and cls is not Trade:
            return
        key = f"{event.exchange}:{event.symbol}"
        st = self._st
        now = ctx.now
        if now < st.next_eval_ns.get(key, 0):
            return
        if ctx.open_orders(event.exchange, event.symbol):
            return  # the last order is still working: its fills decide the position
        st.next_eval_ns[key] = now + self.evaluate_ns
        self._evaluate(ctx, event.exchange, event.symbol)

    def _evaluate(self, ctx: StrategyContext, exchange: str, symbol: str) -> None:
        features = ctx.features(exchange, symbol)
        try:
            imb, micro, flow = (features[n] for n in self._names)
        except KeyError as exc:
            raise ValueError(
                f"momentum: feature {exc.args[0]!r} is not computed (check levels / "
                f"flow_window against trading.features.params)"
            ) from None
        ths = (self.imbalance_threshold, self.microprice_threshold_bp, self.flow_threshold)
        values = (imb, micro, flow)
        inst = ctx.instrument(exchange, symbol)
        pos = ctx.position(exchange, symbol)
        max_pos = inst.size(self.max_position_text)
        size = inst.size(self.size_text)
        up = all(v > t for v, t in zip(values, ths, strict=True))
        down = all(v < -t for v, t in zip(values, ths, strict=True))
        side: Side | None = None
        action = ""
        qty = 0
        if up and pos < max_pos:
            side, action, qty = "buy", "buy", min(size, max_pos - pos)
        elif down and (pos > -max_pos if inst.kind == "perp" else pos > 0):
            side, action = "sell", "sell"
            qty = min(size, pos + max_pos) if inst.kind == "perp" else min(size, pos)
        elif pos and self._against(pos, imb, flow):
            side = "sell" if pos > 0 else "buy"
            action, qty = "flat", abs(pos)
        if side is None or qty <= 0:
            return
        named = ", ".join(
            f"{n} {v:+.4f} vs {'+' if side == 'buy' else '-'}{t:g}"
            for n, v, t in zip(self._names, values, ths, strict=True)
        )
        if action == "flat":
            e = self.exit_threshold
            evidence = [abs(v) for v in (imb, flow) if (v < -e if pos > 0 else v > e)]
            confidence = min(1.0, 0.5 + 0.25 * len(evidence))
            reasoning = (
                f"exit {inst.size_text(pos)}: imbalance or flow turned against the position "
                f"beyond exit_threshold {e:g} ({self._names[0]} {imb:+.4f}, "
                f"{self._names[2]} {flow:+.4f})"
            )
            self._st.exits += 1
        else:
            strength = [min(1.0, abs(v) / t / 2) for v, t in zip(values, ths, strict=True)]
            confidence = 0.5 + sum(strength) / len(strength) / 2
            reasoning = (
                f"{action} {inst.size_text(qty)}: all three signals "
                f"{'above' if side == 'buy' else 'below'} their thresholds: {named}; "
                f"position {inst.size_text(pos)} (max {self.max_position_text})"
            )
            self._st.entries += 1
        did = ctx.decide(
            exchange,
            symbol,
            action,
            reasoning,
            features=(
                *zip(self._names, values, strict=True),
                ("imbalance_threshold", self.imbalance_threshold),
                ("microprice_threshold_bp", self.microprice_threshold_bp),
                ("flow_threshold", self.flow_threshold),
                ("exit_threshold", self.exit_threshold),
                ("position", pos / 10**inst.size_decimals),
            ),
            confidence=confidence,
        )
        if did:
            ctx.submit(exchange, symbol, side, qty, order_type="market", decision_id=did)

    def _against(self, pos: int, imb: float, flow: float) -> bool:
        e = self.exit_threshold
        return (imb < -e or flow < -e) if pos > 0 else (imb > e or flow > e)

    def snapshot_state(self) -> bytes:
        return msgspec.msgpack.encode(self._st)

    def restore_state(self, state: bytes) -> None:
        self._st = msgspec.msgpack.decode(state, type=_State) if state else _State()
