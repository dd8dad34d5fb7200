"""Trade-tape aggregation: rolling windows per instrument and the large-trade flag.

Pure and integer. A :class:`TradeAggregator` is fed :class:`~kernel.events.Trade` events
and keeps, per instrument and per window (1 s / 10 s / 60 s by default), the trade count,
volume, buy and sell volume (by aggressor side), notional, buy and sell notional, the
VWAP numerator and the number of large trades.

Time. Windows run on exchange time (``Trade.ts_event``). An instrument's window time is
the latest ``ts_event`` it has seen; a trade older than that (out of order on the venue's
clock) is counted as if it happened at that latest time, so each window stays a queue
ordered by time (``late`` counts such trades). A window of ``W`` ns at time ``t`` holds
the trades with ``t - W < ts <= t``: a trade exactly ``W`` old is **out**.

Cost. Each trade is appended to each window's deque and evicted once from its front:
O(1) amortised per trade and window. Queries do not change state: asked at a time
``at`` later than the instrument's last trade, a window subtracts the trades that have
aged out by then without evicting them.

Units. Sizes and prices in the instrument's units; notional in MONEY units (1e-8 quote)
as :meth:`kernel.instruments.Instrument.notional` computes it per trade.
``price_volume = sum(price x size)`` (price units x size units) is the VWAP's numerator:
:attr:`WindowStats.vwap` is ``price_volume / volume`` in price units rounded half to
even (0 for an empty window), :meth:`WindowStats.vwap_exact` the exact rational.

Large trades. ``notional >= threshold`` where the threshold (MONEY units) is the
instrument's own (``EXCHANGE:SYMBOL``), else its exchange's (``EXCHANGE``); no
threshold: never large. :func:`trade_windows_config` builds them from
``config/exchanges.yaml`` (``large_trade_notional``, ``large_trade_notional_by_symbol``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from fractions import Fraction
from itertools import pairwise

import msgspec

from kernel.config import ExchangesConfig
from kernel.events import Trade
from kernel.fixedpoint import MONEY_DECIMALS, parse_fixed
from kernel.instruments import Instrument, InstrumentRegistry

MS = 1_000_000
"""Nanoseconds per millisecond."""


class TradeWindowsConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Windows (ms, strictly increasing) and large-trade thresholds (MONEY units) keyed
    ``EXCHANGE:SYMBOL`` (instrument) or ``EXCHANGE`` (every instrument of the venue)."""

    windows_ms: tuple[int, ...] = (1_000, 10_000, 60_000)
    large_notional: dict[str, int] = msgspec.field(default_factory=dict)

    def __post_init__(self) -> None:
        w = self.windows_ms
        if not w or w[0] <= 0 or any(a >= b for a, b in pairwise(w)):
            raise ValueError(f"windows_ms must be positive and increasing, got {list(w)}")
        for key, units in self.large_notional.items():
            if units < 0:
                raise ValueError(f"large_notional[{key}] must be >= 0, got {units}")


def trade_windows_config(exchanges: ExchangesConfig) -> TradeWindowsConfig:
    """The windows and thresholds of ``config/exchanges.yaml`` in kernel units."""
    large: dict[str, int] = {}
    for name, ex in exchanges.exchanges.items():
        if ex.large_trade_notional is not None:
            large[name] = parse_fixed(str(ex.large_trade_notional), MONEY_DECIMALS)
        for symbol, value in ex.large_trade_notional_by_symbol.items():
            large[f"{name}:{symbol}"] = parse_fixed(str(value), MONEY_DECIMALS)
    return TradeWindowsConfig(windows_ms=exchanges.trade_windows_ms, large_notional=large)


class WindowStats(msgspec.Struct, frozen=True):
    """One window of one instrument at ``end_ts``: the trades with
    ``end_ts - window_ms x 1e6 < ts <= end_ts`` (exchange time, ns)."""

    key: str
    window_ms: int
    end_ts: int
    trades: int = 0
    volume: int = 0
    buy_volume: int = 0
    sell_volume: int = 0
    notional: int = 0
    buy_notional: int = 0
    sell_notional: int = 0
    price_volume: int = 0
    large_trades: int = 0

    @property
    def vwap(self) -> int:
        """``price_volume / volume`` in price units, rounded half to even; 0 if empty."""
        if not self.volume:
            return 0
        return div_half_even(self.price_volume, self.volume)

    def vwap_exact(self) -> Fraction | None:
        """The exact VWAP in price units (None for an empty window)."""
        return Fraction(self.price_volume, self.volume) if self.volume else None


def div_half_even(num: int, den: int) -> int:
    """``num / den`` rounded to the nearest integer, ties to even (``den > 0``)."""
    q, r = divmod(num, den)
    twice = 2 * r
    if twice > den or (twice == den and q % 2):
        q += 1
    return q


# One trade as the windows keep it: (ts, price, size, notional, is_buy, is_large).
Entry = tuple[int, int, int, int, bool, bool]


class _Window:
    """One rolling window of one instrument: its trades (a time-ordered queue) and their
    running sums."""

    __slots__ = (
        "buy_notional",
        "buy_volume",
        "entries",
        "large",
        "notional",
        "price_volume",
        "span_ns",
        "volume",
    )

    def __init__(self, span_ns: int) -> None:
        self.span_ns = span_ns
        self.entries: deque[Entry] = deque()
        self.volume = 0
        self.buy_volume = 0
        self.notional = 0
        self.buy_notional = 0
        self.price_volume = 0
        self.large = 0

    def push(self, e: Entry) -> None:
        self.entries.append(e)
        self._count(e, 1)

    def evict(self, now: int) -> None:
        """Drop the trades at or before ``now - span``."""
        cutoff = now - self.span_ns
        entries = self.entries
        while entries and entries[0][0] <= cutoff:
            self._count(entries.popleft(), -1)

    def _count(self, e: Entry, sign: int) -> None:
        _, price, size, value, is_buy, is_large = e
        self.volume += sign * size
        self.notional += sign * value
        self.price_volume += sign * price * size
        if is_buy:
            self.buy_volume += sign * size
            self.buy_notional += sign * value
        if is_large:
            self.large += sign

    def stats(self, key: str, window_ms: int, at: int) -> WindowStats:
        """The window at ``at`` (>= the last trade's time), without evicting."""
        trades = len(self.entries)
        volume, buy_volume, notional = self.volume, self.buy_volume, self.notional
        buy_notional, price_volume, large = self.buy_notional, self.price_volume, self.large
        cutoff = at - self.span_ns
        for ts, price, size, value, is_buy, is_large in self.entries:
            if ts > cutoff:
                break
            trades -= 1
            volume -= size
            notional -= value
            price_volume -= price * size
            if is_buy:
                buy_volume -= size
                buy_notional -= value
            if is_large:
                large -= 1
        return WindowStats(
            key=key,
            window_ms=window_ms,
            end_ts=at,
            trades=trades,
            volume=volume,
            buy_volume=buy_volume,
            sell_volume=volume - buy_volume,
            notional=notional,
            buy_notional=buy_notional,
            sell_notional=notional - buy_notional,
            price_volume=price_volume,
            large_trades=large,
        )


class _Tape:
    """One instrument: its windows (smallest first), clock and late-trade count."""

    __slots__ = ("last_ts", "late", "windows")

    def __init__(self, windows_ms: tuple[int, ...]) -> None:
        self.windows = [_Window(w * MS) for w in windows_ms]
        self.last_ts = 0
        self.late = 0


class TapeState(msgspec.Struct, array_like=True):
    """One instrument in :class:`TradeWindowsState`: the trades of the largest window."""

    key: str
    last_ts: int
    late: int
    entries: list[Entry]


class TradeWindowsState(msgspec.Struct, array_like=True):
    """Everything a :class:`TradeAggregator` knows, canonically ordered (by key)."""

    windows_ms: tuple[int, ...]
    tapes: list[TapeState]


class TradeAggregator:
    """Rolling trade windows per instrument; see the module docstring for the rules."""

    def __init__(
        self,
        config: TradeWindowsConfig,
        instruments: InstrumentRegistry | Sequence[Instrument],
    ) -> None:
        self.config = config
        self.instruments = (
            instruments
            if isinstance(instruments, InstrumentRegistry)
            else InstrumentRegistry(list(instruments))
        )
        self.windows_ms = config.windows_ms
        self._tapes: dict[str, _Tape] = {}
        self._thresholds: dict[str, int | None] = {}

    # -- large trades ----------------------------------------------------------------

    def large_threshold(self, inst: Instrument) -> int | None:
        """The instrument's large-trade notional (MONEY units), or None (never large)."""
        key = inst.key
        if key not in self._thresholds:
            large = self.config.large_notional
            self._thresholds[key] = large.get(key, large.get(inst.exchange))
        return self._thresholds[key]

    def is_large(self, trade: Trade) -> bool:
        """``notional >= threshold`` for the trade's instrument (unknown instrument:
        :class:`~kernel.instruments.InstrumentError`)."""
        inst = self.instruments.get(trade.exchange, trade.symbol)
        threshold = self.large_threshold(inst)
        return threshold is not None and inst.notional(trade.price, trade.size) >= threshold

    # -- updates ---------------------------------------------------------------------

    def add(self, trade: Trade) -> bool:
        """Count one trade in every window of its instrument; returns its large flag.

        Unknown instrument: :class:`~kernel.instruments.InstrumentError`; a trade with
        a non-positive price or size: ``ValueError`` (the engine rejects those first)."""
        if trade.price <= 0 or trade.size <= 0:
            raise ValueError(
                f"{trade.exchange}:{trade.symbol} trade {trade.trade_id!r}: "
                f"price {trade.price} size {trade.size} must be positive"
            )
        inst = self.instruments.get(trade.exchange, trade.symbol)
        key = inst.key
        tape = self._tapes.get(key)
        if tape is None:
            tape = self._tapes[key] = _Tape(self.windows_ms)
        ts = trade.ts_event
        if ts < tape.last_ts:
            tape.late += 1
            ts = tape.last_ts
        tape.last_ts = ts
        value = inst.notional(trade.price, trade.size)
        threshold = self.large_threshold(inst)
        large = threshold is not None and value >= threshold
        entry: Entry = (ts, trade.price, trade.size, value, trade.side == "buy", large)
        for window in tape.windows:
            window.push(entry)
            window.evict(ts)
        return large

    # -- queries ---------------------------------------------------------------------

    def keys(self) -> list[str]:
        """Instruments that have seen a trade, sorted."""
        return sorted(self._tapes)

    def last_ts(self, key: str) -> int:
        """The instrument's window time: its latest trade's ``ts_event`` (0: none)."""
        tape = self._tapes.get(key)
        return tape.last_ts if tape is not None else 0

    def late(self, key: str) -> int:
        """Trades that arrived older than the instrument's window time (counted at it)."""
        tape = self._tapes.get(key)
        return tape.late if tape is not None else 0

    def window(self, key: str, window_ms: int, at: int | None = None) -> WindowStats:
        """One window of ``key`` (``EXCHANGE:SYMBOL``) at exchange time ``at`` (default
        and minimum: the instrument's last trade time). ``window_ms`` must be one of
        the configured windows. No trade seen yet: an empty window."""
        try:
            idx = self.windows_ms.index(window_ms)
        except ValueError:
            raise ValueError(
                f"no {window_ms} ms window (configured: {list(self.windows_ms)})"
            ) from None
        tape = self._tapes.get(key)
        if tape is None:
            return WindowStats(key=key, window_ms=window_ms, end_ts=at or 0)
        t = tape.last_ts if at is None or at < tape.last_ts else at
        return tape.windows[idx].stats(key, window_ms, t)

    def windows(self, key: str, at: int | None = None) -> tuple[WindowStats, ...]:
        """Every configured window of ``key`` at ``at``, smallest first."""
        return tuple(self.window(key, w, at) for w in self.windows_ms)

    # -- state -----------------------------------------------------------------------

    def state(self) -> TradeWindowsState:
        return TradeWindowsState(
            windows_ms=self.windows_ms,
            tapes=[
                TapeState(k, t.last_ts, t.late, list(t.windows[-1].entries))
                for k, t in sorted(self._tapes.items())
            ],
        )

    def restore(self, st: TradeWindowsState) -> None:
        """Continue from a :meth:`state`. Each smaller window holds exactly the suffix of
        the largest one younger than its span, so the largest window's trades suffice."""
        if tuple(st.windows_ms) != self.windows_ms:
            raise ValueError(
                f"trade windows state has windows {list(st.windows_ms)}, "
                f"this aggregator {list(self.windows_ms)}"
            )
        self._tapes = {}
        for saved in st.tapes:
            tape = self._tapes[saved.key] = _Tape(self.windows_ms)
            tape.last_ts, tape.late = saved.last_ts, saved.late
            for window in tape.windows:
                cutoff = saved.last_ts - window.span_ns
                for e in saved.entries:
                    if e[0] > cutoff:
                        window.push(e)

    def snapshot(self) -> bytes:
        return msgspec.msgpack.encode(self.state())

    def restore_bytes(self, data: bytes) -> None:
        self.restore(msgspec.msgpack.decode(data, type=TradeWindowsState))
