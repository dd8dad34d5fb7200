"""Rolling trade-flow windows of one instrument: trade imbalance, VWAP and large trades.

A window of ``W`` ns at time ``t`` holds the trades with ``t - W < ts <= t`` (the same
rule as :mod:`kernel.trades`); each trade is pushed once and evicted once per window,
so updates are O(1) amortised; queries at a later time subtract the aged-out trades
without evicting them. Sums are integers (sizes, ``price x size``), so they are exact.

Per window:

* ``trade_imbalance = (buy volume - sell volume) / volume`` by aggressor side, in [-1, 1];
* ``vwap = sum(price x size) / volume`` (price units) and
  ``vwap_dev_bp = (mid - vwap) / vwap x 1e4`` (the caller passes the mid);
* ``large_ratio = volume of large trades / volume`` where a trade is large when its size
  is at least the instrument's threshold (size units; no threshold: never large).

Every ratio is 0.0 for an empty window.
"""

from __future__ import annotations

from collections import deque

import msgspec

# One trade as a window keeps it: (ts, price, size, is_buy, is_large).
FlowEntry = tuple[int, int, int, bool, bool]


class WindowSums(msgspec.Struct, frozen=True):
    """A window's totals at some time (sizes in size units, ``price_volume`` in
    price units x size units)."""

    trades: int = 0
    volume: int = 0
    buy_volume: int = 0
    price_volume: int = 0
    large_volume: int = 0

    @property
    def trade_imbalance(self) -> float:
        v = self.volume
        return (2 * self.buy_volume - v) / v if v else 0.0

    @property
    def vwap(self) -> float:
        return self.price_volume / self.volume if self.volume else 0.0

    @property
    def large_ratio(self) -> float:
        return self.large_volume / self.volume if self.volume else 0.0

    def vwap_dev_bp(self, mid: float) -> float:
        vwap = self.vwap
        return (mid - vwap) / vwap * 1e4 if vwap > 0.0 and mid > 0.0 else 0.0


class _FlowWindow:
    __slots__ = ("buy_volume", "entries", "large_volume", "price_volume", "span_ns", "volume")

    def __init__(self, span_ns: int) -> None:
        self.span_ns = span_ns
        self.entries: deque[FlowEntry] = deque()
        self.volume = 0
        self.buy_volume = 0
        self.price_volume = 0
        self.large_volume = 0

    def _count(self, e: FlowEntry, sign: int) -> None:
        _, price, size, is_buy, is_large = e
        self.volume += sign * size
        self.price_volume += sign * price * size
        if is_buy:
            self.buy_volume += sign * size
        if is_large:
            self.large_volume += sign * size

    def push(self, e: FlowEntry) -> None:
        self.entries.append(e)
        self._count(e, 1)
        cutoff = e[0] - self.span_ns
        entries = self.entries
        while entries[0][0] <= cutoff:
            self._count(entries.popleft(), -1)

    def sums(self, at: int) -> WindowSums:
        trades = len(self.entries)
        volume, buy, pv, large = self.volume, self.buy_volume, self.price_volume, self.large_volume
        cutoff = at - self.span_ns
        for ts, price, size, is_buy, is_large in self.entries:
            if ts > cutoff:
                break
            trades -= 1
            volume -= size
            pv -= price * size
            if is_buy:
                buy -= size
            if is_large:
                large -= size
        return WindowSums(trades, volume, buy, pv, large)


class TradeFlowState(msgspec.Struct, array_like=True):
    """The trades of the largest window; the smaller windows are its suffixes."""

    last_ts: int
    entries: list[FlowEntry]


class TradeFlow:
    """Windows of ``spans_ns`` (increasing) over one instrument's trades."""

    __slots__ = ("large_size", "last_ts", "spans_ns", "windows")

    def __init__(self, spans_ns: tuple[int, ...], large_size: int | None) -> None:
        self.spans_ns = spans_ns
        self.large_size = large_size
        self.windows = [_FlowWindow(s) for s in spans_ns]
        self.last_ts = 0

    def add(self, ts: int, price: int, size: int, is_buy: bool) -> None:
        """A trade at ``ts`` (earlier than the last: counted at the last)."""
        ts = max(ts, self.last_ts)
        self.last_ts = ts
        large = self.large_size is not None and size >= self.large_size
        entry: FlowEntry = (ts, price, size, is_buy, large)
        for window in self.windows:
            window.push(entry)

    def sums(self, index: int, at: int) -> WindowSums:
        """Window ``index`` (into ``spans_ns``) at ``at`` (>= the last trade)."""
        return self.windows[index].sums(max(at, self.last_ts))

    def state(self) -> TradeFlowState:
        return TradeFlowState(self.last_ts, list(self.windows[-1].entries))

    def restore(self, st: TradeFlowState) -> None:
        self.windows = [_FlowWindow(s) for s in self.spans_ns]
        self.last_ts = st.last_ts
        for window in self.windows:
            cutoff = st.last_ts - window.span_ns
            for e in st.entries:
                if e[0] > cutoff:
                    window.push(e)
