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
    """One window's running sums over a suffix of the shared trade deque: the trades
    from absolute index ``first`` on (the deque's head has absolute index ``base`` in
    :class:`TradeFlow`)."""

    __slots__ = ("buy_volume", "first", "large_volume", "price_volume", "span_ns", "volume")

    def __init__(self, span_ns: int) -> None:
        self.span_ns = span_ns
        self.first = 0
        self.volume = 0
        self.buy_volume = 0
        self.price_volume = 0
        self.large_volume = 0

    def sums(self, entries: deque[FlowEntry], offset: int, at: int) -> WindowSums:
        """The totals at ``at``: the window's entries start at ``entries[offset]``."""
        trades = len(entries) - offset
        volume, buy, pv, large = self.volume, self.buy_volume, self.price_volume, self.large_volume
        cutoff = at - self.span_ns
        for i in range(offset, len(entries)):
            ts, price, size, is_buy, is_large = entries[i]
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
    """Windows of ``spans_ns`` (increasing) over one instrument's trades. One deque holds
    the trades of the largest window; each smaller window is a suffix of it, with its
    own running sums and start index, so a trade is stored once and evicted once per
    window."""

    __slots__ = ("base", "entries", "large_size", "last_ts", "spans_ns", "windows")

    def __init__(self, spans_ns: tuple[int, ...], large_size: int | None) -> None:
        self.spans_ns = spans_ns
        self.large_size = large_size
        self.windows = [_FlowWindow(s) for s in spans_ns]
        self.entries: deque[FlowEntry] = deque()
        self.base = 0  # absolute index of entries[0]
        self.last_ts = 0

    def add(self, ts: int, price: int, size: int, is_buy: bool) -> None:
        """A trade at ``ts`` (earlier than the last: counted at the last)."""
        if ts < self.last_ts:
            ts = self.last_ts
        self.last_ts = ts
        large = self.large_size is not None and size >= self.large_size
        self._push((ts, price, size, is_buy, large))

    def _push(self, e: FlowEntry) -> None:
        entries = self.entries
        entries.append(e)
        ts, price, size, is_buy, is_large = e
        pv = price * size
        base = self.base
        for w in self.windows:
            w.volume += size
            w.price_volume += pv
            if is_buy:
                w.buy_volume += size
            if is_large:
                w.large_volume += size
            cutoff = ts - w.span_ns
            i = w.first - base
            while entries[i][0] <= cutoff:
                _, op, osz, ob, ol = entries[i]
                w.volume -= osz
                w.price_volume -= op * osz
                if ob:
                    w.buy_volume -= osz
                if ol:
                    w.large_volume -= osz
                i += 1
            w.first = i + base
        drop = self.windows[-1].first - base  # older than the largest window
        if drop:
            for _ in range(drop):
                entries.popleft()
            self.base = base + drop

    def sums(self, index: int, at: int) -> WindowSums:
        """Window ``index`` (into ``spans_ns``) at ``at`` (>= the last trade)."""
        w = self.windows[index]
        return w.sums(self.entries, w.first - self.base, max(at, self.last_ts))

    def state(self) -> TradeFlowState:
        return TradeFlowState(self.last_ts, list(self.entries))

    def restore(self, st: TradeFlowState) -> None:
        self.windows = [_FlowWindow(s) for s in self.spans_ns]
        self.entries = deque()
        self.base = 0
        self.last_ts = st.last_ts
        for e in st.entries:
            self._push(e)
