"""A simple inventory-aware market maker: quotes both sides at the touch.

Every ``requote_every`` book events of an instrument it re-quotes: a bid at the best
bid and an ask at the best ask, each ``spread_ticks`` further out, both shifted by
``skew_ticks`` per ``size`` of inventory against the position (long -> lower quotes, so
the ask fills first). A quote already at the right price and size is left alone (it
keeps its queue priority); otherwise it is cancelled and replaced. No bid while the
position is at ``+max_inventory`` (no ask at ``-max_inventory``); on spot it never asks
for more than it holds. ``sides: bid`` (or ``ask``) quotes one side only. Every
re-quote is a ``Decision`` naming the touch, the inventory and the skew.

Queue estimates (``queue_eta_max_s > 0``; kernel/features): joining the touch on a side
means waiting behind its displayed size. The features give the expected time to fill
there (``queue_eta_bid_s`` / ``queue_eta_ask_s``: size ahead over the rate at which
aggressive trades hit that side). When the wait behind the *other* traders' size at the
touch (our own resting size there excluded) is above ``queue_eta_max_s`` and the spread
has room, the quote steps one tick inside the touch (ahead of the queue); a touch that
is only our own order is never stepped over. The decision names the queue ahead, the
estimated wait and the threshold.

Sizes are decimal strings in base units (``"0.01"``).
"""

from __future__ import annotations

import msgspec

from kernel.config import ParamValue
from kernel.context import StrategyContext
from kernel.events import BookDelta, BookSnapshot, MarketEvent, Side
from strategies.base import BaseStrategy


class _State(msgspec.Struct, array_like=True):
    book_events: dict[str, int] = msgspec.field(default_factory=dict)
    quotes: dict[str, list[str]] = msgspec.field(default_factory=dict)
    requotes: int = 0


class MarketMakerStrategy(BaseStrategy):
    name = "market_maker"

    def __init__(
        self,
        size: str = "0.01",
        requote_every: int = 100,
        spread_ticks: int = 0,
        skew_ticks: int = 1,
        max_inventory: str = "0.03",
        sides: str = "both",
        queue_eta_max_s: float = 0.0,
    ) -> None:
        if requote_every < 1 or spread_ticks < 0 or skew_ticks < 0:
            raise ValueError("need requote_every >= 1, spread_ticks >= 0, skew_ticks >= 0")
        if sides not in ("both", "bid", "ask"):
            raise ValueError(f"sides must be both, bid or ask, not {sides!r}")
        if queue_eta_max_s < 0:
            raise ValueError("queue_eta_max_s must be >= 0 (0: queue estimates off)")
        self.sides = sides
        self.queue_eta_max_s = float(queue_eta_max_s)
        self.size_text = str(size)
        self.requote_every = requote_every
        self.spread_ticks = spread_ticks
        self.skew_ticks = skew_ticks
        self.max_inventory_text = str(max_inventory)
        self._st = _State()

    @classmethod
    def from_params(cls, params: dict[str, ParamValue]) -> MarketMakerStrategy:
        known = {
            "size",
            "requote_every",
            "spread_ticks",
            "skew_ticks",
            "max_inventory",
            "sides",
            "queue_eta_max_s",
        }
        unknown = sorted(set(params) - known)
        if unknown:
            raise ValueError(
                f"market_maker: unknown parameter(s) {unknown}; known: {sorted(known)}"
            )
        return cls(**params)  # type: ignore[arg-type]

    def on_start(self, ctx: StrategyContext) -> None:
        if self.queue_eta_max_s > 0:
            ctx.use_features()

    def on_market(self, ctx: StrategyContext, event: MarketEvent) -> None:
        cls = type(event)
        if cls is not BookDelta and cls is not BookSnapshot:
            return
        key = f"{event.exchange}:{event.symbol}"
        counts = self._st.book_events
        n = counts.get(key, 0) + 1
        counts[key] = n
        if n % self.requote_every:
            return
        self._requote(ctx, event, key)

    def _requote(self, ctx: StrategyContext, event: MarketEvent, key: str) -> None:
        st = self._st
        book = ctx.book(event.exchange, event.symbol)
        if book is None:
            return
        bb, ba = book.best_bid(), book.best_ask()
        if bb is None or ba is None:
            return
        inst = ctx.instrument(event.exchange, event.symbol)
        size = inst.size(self.size_text)
        max_inv = inst.size(self.max_inventory_text)
        inv = ctx.position(event.exchange, event.symbol)
        tick = inst.tick_size
        skew = (inv * self.skew_ticks // size) * tick if size else 0
        bid_px = bb[0] - self.spread_ticks * tick - skew
        ask_px = ba[0] + self.spread_ticks * tick - skew
        if bid_px >= ask_px:
            bid_px = ask_px - tick
        queue_note = ""
        queue_features: tuple[tuple[str, float], ...] = ()
        if self.queue_eta_max_s > 0:
            bid_px, ask_px, queue_note, queue_features = self._queue_step(
                ctx, event, key, bb, ba, bid_px, ask_px
            )
        want: dict[Side, tuple[int, int]] = {}
        if inv < max_inv and bid_px > 0 and self.sides != "ask":
            want["buy"] = (bid_px, min(size, max_inv - inv))
        ask_size = min(size, inv + max_inv) if inst.kind == "perp" else min(size, inv)
        if ask_size > 0 and self.sides != "bid":
            want["sell"] = (ask_px, ask_size)
        keep: list[str] = []
        changes = []
        for oid in st.quotes.get(key, []):
            view = ctx.order(oid)
            if view is None:
                continue
            target = want.get(view.side)
            if (
                target is not None
                and view.price == target[0]
                and view.size - view.filled == target[1]
            ):
                keep.append(oid)
                del want[view.side]
            else:
                changes.append(oid)
        if not changes and not want:
            st.quotes[key] = keep
            return
        st.requotes += 1
        quote = ", ".join(
            f"{side} {inst.size_text(q)} @ {inst.price_text(p)}" for side, (p, q) in want.items()
        )
        did = ctx.decide(
            event.exchange,
            event.symbol,
            "quote",
            f"requote after {self.requote_every} book events: touch "
            f"{inst.price_text(bb[0])}/{inst.price_text(ba[0])}, inventory "
            f"{inst.size_text(inv)} (max {self.max_inventory_text}) -> skew "
            f"{inst.price_text(skew)}{queue_note}; cancel {len(changes)}, new: "
            f"{quote or 'none'}",
            features=(
                ("best_bid", inst.price_float(bb[0])),
                ("best_ask", inst.price_float(ba[0])),
                ("inventory", inv / 10**inst.size_decimals),
                ("skew_ticks", skew / tick),
                *queue_features,
            ),
            confidence=0.5,
        )
        for oid in changes:
            ctx.cancel(oid, "requote")
        for side, (p, q) in want.items():
            oid = ctx.submit(event.exchange, event.symbol, side, q, price=p, decision_id=did)
            if oid:
                keep.append(oid)
        st.quotes[key] = keep

    def _queue_step(
        self,
        ctx: StrategyContext,
        event: MarketEvent,
        key: str,
        bb: tuple[int, int],
        ba: tuple[int, int],
        bid_px: int,
        ask_px: int,
    ) -> tuple[int, int, str, tuple[tuple[str, float], ...]]:
        """Step a quote one tick inside a touch whose queue (others' size) would take
        longer than ``queue_eta_max_s`` to clear; (bid, ask, reasoning, features)."""
        f = ctx.features(event.exchange, event.symbol)
        inst = ctx.instrument(event.exchange, event.symbol)
        tick = inst.tick_size
        ours = {"buy": 0, "sell": 0}
        for oid in self._st.quotes.get(key, []):
            view = ctx.order(oid)
            if view is not None and view.price == (bb[0] if view.side == "buy" else ba[0]):
                ours[view.side] += view.size - view.filled
        limit = self.queue_eta_max_s
        notes = []
        out: list[tuple[str, float]] = []
        for side, touch, eta_name in (
            ("buy", bb, "queue_eta_bid_s"),
            ("sell", ba, "queue_eta_ask_s"),
        ):
            others = touch[1] - ours[side]
            eta = f[eta_name] * others / touch[1] if touch[1] > 0 else 0.0
            label = "bid" if side == "buy" else "ask"
            out += [(f"queue_ahead_{label}", others / 10**inst.size_decimals), (eta_name, eta)]
            if others <= 0 or eta <= limit:
                continue
            if side == "buy" and bid_px == bb[0] and bid_px + tick < ask_px:
                bid_px += tick
            elif side == "sell" and ask_px == ba[0] and ask_px - tick > bid_px:
                ask_px -= tick
            else:
                continue
            notes.append(
                f"{label} queue {inst.size_text(others)} ahead, est. wait {eta:.1f} s > "
                f"queue_eta_max_s {limit:g} -> one tick inside"
            )
        out.append(("queue_eta_max_s", limit))
        return bid_px, ask_px, ("; " + "; ".join(notes)) if notes else "", tuple(out)

    def snapshot_state(self) -> bytes:
        return msgspec.msgpack.encode(self._st)

    def restore_state(self, state: bytes) -> None:
        self._st = msgspec.msgpack.decode(state, type=_State) if state else _State()
