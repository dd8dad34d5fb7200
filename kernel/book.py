"""L2 order book for one exchange-symbol, in integer price and size units.

Each side keeps ``sizes`` (price -> absolute size) and ``keys``, a sorted list in which
the *best* price is last (bids store ``price``, asks store ``-price``). Updates near the
touch, which are most of them, therefore move almost nothing in memory.

A message is validated before it changes anything (sizes >= 0, prices > 0, prices on
the tick, sizes on the lot) and rolled back if it would leave the book crossed or
locked, so an invalid message never corrupts the book: the caller gets a
:class:`BookError` describing it and turns it into a ``DataQuality`` event.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Iterable

from kernel.events import Level


class BookError(ValueError):
    """A book message was refused; ``rule`` names the check that failed."""

    def __init__(self, rule: str, detail: str) -> None:
        super().__init__(f"{rule}: {detail}")
        self.rule = rule
        self.detail = detail


class BookSide:
    """One side of the book. ``sign`` is +1 for bids and -1 for asks."""

    __slots__ = ("keys", "sign", "sizes")

    def __init__(self, sign: int) -> None:
        self.sign = sign
        self.sizes: dict[int, int] = {}
        self.keys: list[int] = []

    def set(self, price: int, size: int) -> int:
        """Set the absolute size at ``price`` (0 deletes); returns the previous size."""
        sizes = self.sizes
        old = sizes.get(price, 0)
        if size:
            if not old:
                insort(self.keys, price * self.sign)
            sizes[price] = size
        elif old:
            del sizes[price]
            keys = self.keys
            k = price * self.sign
            if keys[-1] == k:
                keys.pop()
            else:
                del keys[bisect_left(keys, k)]
        return old

    def clear(self) -> None:
        self.sizes.clear()
        self.keys.clear()

    def best(self) -> int | None:
        """Best price, or None if the side is empty."""
        return self.keys[-1] * self.sign if self.keys else None

    def top(self, n: int) -> list[Level]:
        """The ``n`` best levels, best first."""
        sign, sizes = self.sign, self.sizes
        return [(k * sign, sizes[k * sign]) for k in reversed(self.keys[-n:])] if n > 0 else []

    def depth(self, n: int) -> int:
        """Total size of the ``n`` best levels."""
        sign, sizes = self.sign, self.sizes
        return sum(sizes[k * sign] for k in self.keys[-n:]) if n > 0 else 0

    def size_at(self, price: int) -> int:
        return self.sizes.get(price, 0)

    def __len__(self) -> int:
        return len(self.keys)

    def levels(self) -> list[Level]:
        """Every level, best first."""
        return self.top(len(self.keys))


class L2Book:
    """The book of one instrument; ``tick_size``/``lot_size`` in price/size units."""

    __slots__ = ("asks", "bids", "exchange", "lot_size", "seq", "symbol", "tick_size", "ts_event")

    def __init__(self, exchange: str, symbol: str, tick_size: int = 1, lot_size: int = 1) -> None:
        self.exchange = exchange
        self.symbol = symbol
        self.tick_size = tick_size
        self.lot_size = lot_size
        self.bids = BookSide(1)
        self.asks = BookSide(-1)
        self.ts_event = 0
        self.seq = 0

    # -- updates ---------------------------------------------------------------------

    def _check_levels(self, levels: Iterable[Level], side: str) -> None:
        tick, lot = self.tick_size, self.lot_size
        for price, size in levels:
            if size < 0:
                raise BookError("negative_size", f"{side} {price} size {size} < 0")
            if price <= 0:
                raise BookError("non_positive_price", f"{side} price {price} <= 0")
            if price % tick:
                raise BookError("off_tick", f"{side} price {price} not a multiple of {tick}")
            if size % lot:
                raise BookError("off_lot", f"{side} {price} size {size} not a multiple of {lot}")

    def apply_snapshot(self, bids: Iterable[Level], asks: Iterable[Level], ts_event: int) -> None:
        """Replace the whole book. Raises :class:`BookError` (book unchanged) if invalid."""
        bids, asks = tuple(bids), tuple(asks)
        self._check_levels(bids, "bid")
        self._check_levels(asks, "ask")
        bid_prices = [p for p, s in bids if s]
        ask_prices = [p for p, s in asks if s]
        if bid_prices and ask_prices and max(bid_prices) >= min(ask_prices):
            raise BookError(
                "crossed_book", f"snapshot best bid {max(bid_prices)} >= ask {min(ask_prices)}"
            )
        self.bids.clear()
        self.asks.clear()
        for price, size in bids:
            self.bids.set(price, size)
        for price, size in asks:
            self.asks.set(price, size)
        self.ts_event = ts_event

    def apply_delta(self, bids: tuple[Level, ...], asks: tuple[Level, ...], ts_event: int) -> None:
        """Apply one message of absolute sizes (0 deletes; deleting a missing level is a
        no-op). Raises :class:`BookError` and leaves the book unchanged if any level is
        invalid or if the result would be crossed or locked (best bid >= best ask)."""
        bid_side, ask_side = self.bids, self.asks
        # Fast path: the final best bid is at most max(best bid, new bids) and the final
        # best ask at least min(best ask, new asks) (deletions only widen the spread), so
        # if those bounds do not meet the update cannot cross and needs no undo log.
        bk, ak = bid_side.keys, ask_side.keys
        hi = bk[-1] if bk else None
        lo = -ak[-1] if ak else None
        tick, lot = self.tick_size, self.lot_size
        for p, s in bids:
            if s < 0 or p <= 0 or p % tick or s % lot:
                self._check_levels(bids, "bid")  # raises, naming the rule
            if s and (hi is None or p > hi):
                hi = p
        for p, s in asks:
            if s < 0 or p <= 0 or p % tick or s % lot:
                self._check_levels(asks, "ask")
            if s and (lo is None or p < lo):
                lo = p
        if hi is None or lo is None or hi < lo:
            for p, s in bids:
                bid_side.set(p, s)
            for p, s in asks:
                ask_side.set(p, s)
            self.ts_event = ts_event
            return
        undo_b = [(p, bid_side.set(p, s)) for p, s in bids]
        undo_a = [(p, ask_side.set(p, s)) for p, s in asks]
        if bk and ak and bk[-1] >= -ak[-1]:
            best_bid, best_ask = bk[-1], -ak[-1]
            for p, old in reversed(undo_a):
                ask_side.set(p, old)
            for p, old in reversed(undo_b):
                bid_side.set(p, old)
            kind = "locked_book" if best_bid == best_ask else "crossed_book"
            raise BookError(kind, f"best bid {best_bid} >= best ask {best_ask} after update")
        self.ts_event = ts_event

    # -- queries ---------------------------------------------------------------------

    def best_bid(self) -> Level | None:
        k = self.bids.keys
        return (k[-1], self.bids.sizes[k[-1]]) if k else None

    def best_ask(self) -> Level | None:
        k = self.asks.keys
        return (-k[-1], self.asks.sizes[-k[-1]]) if k else None

    def spread(self) -> int | None:
        """Best ask - best bid in price units, None if a side is empty."""
        b, a = self.bids.keys, self.asks.keys
        return -a[-1] - b[-1] if b and a else None

    def mid_x2(self) -> int | None:
        """Twice the mid price, exact in price units (the mid may be half a tick)."""
        b, a = self.bids.keys, self.asks.keys
        return b[-1] - a[-1] if b and a else None

    def mid(self) -> float | None:
        """Mid price in price units as a float (features only)."""
        m = self.mid_x2()
        return None if m is None else m / 2

    def top(self, n: int) -> tuple[list[Level], list[Level]]:
        return self.bids.top(n), self.asks.top(n)

    def depth(self, n: int) -> tuple[int, int]:
        """Total bid and ask size over the ``n`` best levels of each side."""
        return self.bids.depth(n), self.asks.depth(n)

    def imbalance(self, n: int) -> float:
        """(bid depth - ask depth) / (bid depth + ask depth) over ``n`` levels; 0 if empty."""
        b, a = self.depth(n)
        return (b - a) / (b + a) if b + a else 0.0

    def microprice(self) -> float | None:
        """Size-weighted mid of the touch: (bid*ask_size + ask*bid_size)/(bid_size+ask_size)."""
        bb, ba = self.best_bid(), self.best_ask()
        if bb is None or ba is None:
            return None
        (bp, bs), (ap, as_) = bb, ba
        return (bp * as_ + ap * bs) / (bs + as_)

    def canonical(self) -> tuple[list[Level], list[Level]]:
        """Every level, best first: the book's content for hashing and snapshots."""
        return self.bids.levels(), self.asks.levels()
