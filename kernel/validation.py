"""Market-data validation: rules every market event passes before it reaches books.

:class:`Validator` is pure and deterministic (no I/O, no wall clock): ``check(event)``
returns a :class:`Verdict`, ``accept`` (apply the event or not) and ``findings``, the
``DataQuality`` events to journal (with ``enabled`` off: always accept, no findings).
Each finding names the ``rule``, the stream (``exchange``, ``symbol``), the event's
``source_seq`` and the values in ``detail`` as space-separated ``name=value`` pairs;
``rejected`` is True exactly when the event must not be applied. A finding's
``ts_event``/``ts_recv`` is the validator clock: the largest ``ts_recv`` it has been
given (Heartbeats and Connectivity events advance it).

A *stream* is ``EXCHANGE:SYMBOL``; a *channel* of a stream is ``book``
(BookSnapshot, BookDelta), ``trade``, ``funding`` or ``mark``. Prices compared across
venues are rescaled to a common precision with each instrument's ``price_decimals``;
streams of unknown instruments are never compared across venues. Thresholds come from
:class:`kernel.config.ValidationConfig`. Inequalities are strict: a value exactly at a
threshold passes. Bands are computed in exact integers on twice the mid (``mid_x2``).

Rules, in the order they are checked (the first rejecting rule ends the check: an
event gets at most one rejecting finding):

``non_positive_size`` (rejects)
    A Trade with ``size <= 0``, a BookSnapshot level with ``size <= 0`` (a snapshot
    has no deletes), a BookDelta level with ``size < 0`` (0 is a delete). Detail:
    ``side price size``.
``non_positive_price`` (rejects)
    A Trade, book level or MarkPrice ``mark_price`` with a price ``<= 0``.
``off_tick`` / ``off_lot`` (rejects)
    A book level whose price is not a multiple of the instrument's ``tick_size`` or
    whose size is not a multiple of its ``lot_size`` (1 and 1 for unknown
    instruments): the book itself (kernel/book.py) refuses them too. Detail: ``side
    price tick`` / ``side price size lot``.
``duplicate_trade`` (rejects)
    A Trade whose non-empty ``trade_id`` is among the last ``duplicate_trade_window``
    accepted trade ids of the same stream. Detail: ``trade_id price size
    first_ts_event``.
``crossed_book`` / ``locked_book`` (rejects)
    After the update (a snapshot replaces the book; a delta is merged with the
    current book) the best bid is above (crossed) or equal to (locked) the best ask.
    Detail: ``best_bid best_ask``. The book is left as it was.
``price_band`` (rejects, except on a BookSnapshot)
    With ``ref`` the stream's last accepted mid (before this event): a Trade price, a
    MarkPrice ``mark_price``, or the mid after a BookDelta further than
    ``price_band_bp`` from ``ref``: ``|2 * price - ref_x2| * 10_000 > band_bp *
    ref_x2``. Without a mid, a Trade is compared with the stream's last accepted trade
    price. A BookSnapshot outside the band is accepted and re-anchors the reference
    (it is the venue's whole state, e.g. after a resync): the finding then has
    ``rejected=False``. Detail: ``price ref band_bp off_bp`` (prices in price units;
    the mid may be x.5).
``cross_venue_band`` (flags; rejects when ``reject_cross_venue``)
    After an accepted book event, the stream's new mid against the mid of every
    other exchange with the same normalised symbol that has a mid and is not stale:
    more than ``cross_venue_band_bp`` apart (relative to the other venue's mid). Once
    per divergence episode of an (exchange, other exchange, symbol) pair: it fires when
    the pair leaves the band and again only after it has come back within it. With
    ``reject_cross_venue`` every divergent book event is refused, each with its own
    finding (the reference mid then does not move). Detail:
    ``mid other_exchange other_mid band_bp off_bp``.
``ts_out_of_order`` (flags)
    ``ts_event`` more than ``out_of_order_tolerance_ms`` before the largest
    ``ts_event`` accepted on the same stream and channel. Detail: ``ts_event
    last_ts_event back_ns tolerance_ns channel``.
``clock_skew`` (flags)
    ``ts_recv - ts_event > max_skew_ms`` (clock drift or a stalled feed) or
    ``ts_event - ts_recv > max_future_skew_ms``; once per episode per stream: again
    only after an event of the stream within both bounds. Detail: ``skew_ns
    bound_ns``.
``stale_stream`` (flags)
    A stream that has had market events, none of them for longer than its
    ``stale_after_ms`` (per-stream override; 0: never) of validator clock: ``now -
    last_recv > stale_after``. Detected on any later input (another stream's event,
    a Heartbeat, or the stream's own next event, which then reports the silence it
    ends); once per staleness episode, which ends with the stream's next market
    event. Detail: ``last_recv silent_ns stale_after_ns``.
``sequence_gap`` (flags)
    A ``Connectivity`` event with status ``resync`` (the adapter saw a sequence gap, a
    checksum mismatch or an invalid book and asks for a new snapshot). Detail:
    ``reason``. The stream's book is not changed by it.

Timing rules (``ts_out_of_order``, ``clock_skew``) are evaluated on every market event,
rejected or not, except BookSnapshots, which neither fire them nor move their state
(the largest ``ts_event``, the end of a skew episode): a snapshot's ``ts_event`` is its
newest level's time (Kraken) or the local time of a REST call (Binance), not a message
time. State (last mid, trade ids, largest ``ts_event``) only moves on accepted events;
any market event of a stream, even a rejected one, ends its staleness.

Book view: ``check(event, book)`` reads the caller's :class:`~kernel.book.L2Book`
(the engine's own) without changing it and the caller applies an accepted event; with
``book=None`` the validator keeps and updates its own book per stream, unless it was
built with ``own_books=False`` (the engine's way: it always has the book), where None
stands for an empty book and nothing is kept. Either way the
post-update top of book of a delta costs O(levels in the delta): only the best few
existing keys are looked at.
"""

from __future__ import annotations

from bisect import insort
from collections import deque
from collections.abc import Iterable
from typing import NamedTuple

import msgspec

from kernel.book import BookSide, L2Book
from kernel.config import ValidationConfig
from kernel.events import (
    BookDelta,
    BookSnapshot,
    Connectivity,
    DataQuality,
    Event,
    FundingRate,
    Level,
    MarketEvent,
    MarkPrice,
    Trade,
)
from kernel.instruments import Instrument

STATE_VERSION = 1
_MS = 1_000_000


class Verdict(NamedTuple):
    """``accept``: apply the event; ``findings``: DataQuality events to journal."""

    accept: bool
    findings: tuple[DataQuality, ...]


_ACCEPT = Verdict(True, ())


class _Stream:
    """What the validator remembers of one ``EXCHANGE:SYMBOL``."""

    __slots__ = (
        "book",
        "diverging",
        "last_recv",
        "last_trade_price",
        "last_ts",
        "mid_x2",
        "skewed",
        "stale",
        "trade_ids",
        "trade_seen",
    )

    def __init__(self) -> None:
        self.mid_x2 = 0  # last accepted mid x2 (0: none)
        self.last_trade_price = 0
        self.last_ts: dict[str, int] = {}  # channel -> largest accepted ts_event
        self.last_recv = 0
        self.stale = False
        self.skewed = False
        self.trade_ids: deque[str] = deque()
        self.trade_seen: dict[str, int] = {}  # trade id -> its ts_event
        self.diverging: set[str] = set()  # other exchanges out of the cross-venue band
        self.book: L2Book | None = None


class _StreamState(msgspec.Struct, array_like=True, frozen=True):
    key: str
    mid_x2: int
    last_trade_price: int
    last_ts: list[tuple[str, int]]
    last_recv: int
    stale: bool
    skewed: bool
    trades: list[tuple[str, int]]
    diverging: list[str]
    book: tuple[list[Level], list[Level]] | None


class _State(msgspec.Struct, array_like=True, frozen=True):
    version: int
    now: int
    streams: list[_StreamState]


_CHANNEL: dict[type, str] = {
    BookSnapshot: "book",
    BookDelta: "book",
    Trade: "trade",
    FundingRate: "funding",
    MarkPrice: "mark",
}


def _best_after(side: BookSide, levels: tuple[Level, ...], new_best: int | None) -> int | None:
    """The best price of ``side`` once the absolute sizes ``levels`` (whose best price
    of non-zero size is ``new_best``) are applied, without changing it. Looks at the
    current best keys only until one the update does not touch: O(len(levels))."""
    sign = side.sign
    keys = side.keys
    best = new_best
    if keys:
        top = keys[-1] * sign
        if new_best is not None and new_best * sign >= top * sign:
            return new_best  # at or through the current best: nothing existing beats it
        touched = dict(levels)
        for k in reversed(keys):
            price = k * sign
            if price not in touched:
                if best is None or price * sign > best * sign:
                    best = price
                break
    return best


def _fmt_x2(value_x2: int) -> str:
    """A price given x2 in price units, exact (``2005`` -> ``1002.5``)."""
    return str(value_x2 // 2) if value_x2 % 2 == 0 else f"{value_x2 // 2}.5"


def _off_bp(price_x2: int, ref_x2: int) -> str:
    return f"{abs(price_x2 - ref_x2) * 10_000 / ref_x2:.2f}"


class Validator:
    """``Validator(config, instruments)``; feed it every input with :meth:`check`."""

    def __init__(
        self,
        config: ValidationConfig,
        instruments: Iterable[Instrument] = (),
        own_books: bool = True,
    ) -> None:
        self.config = config
        self._own_books = own_books
        instruments = tuple(instruments)
        self._decimals = {i.key: i.price_decimals for i in instruments}
        self._steps = {i.key: (i.tick_size, i.lot_size) for i in instruments}
        self._scale_to = max(self._decimals.values(), default=0)
        self._streams: dict[str, _Stream] = {}
        self._by_symbol: dict[str, list[str]] = {}  # symbol -> stream keys
        self.now = 0
        self._next_deadline: int | None = None
        self._ooo_ns = config.out_of_order_tolerance_ms * _MS
        self._skew_ns = config.max_skew_ms * _MS
        self._future_ns = config.max_future_skew_ms * _MS
        self._enabled = config.enabled
        self._stale_ns: dict[str, int] = {}  # stream -> stale_after in ns (cache)
        # stream -> factor bringing its prices to the common precision
        self._scale = {k: 10 ** (self._scale_to - d) for k, d in self._decimals.items()}

    # -- public API ------------------------------------------------------------------

    def check(self, event: Event, book: L2Book | None = None) -> Verdict:
        """Validate one input. ``book``: the caller's book of the event's stream (read,
        not changed); None: the validator's own book, updated when the event is
        accepted. Non-market events only advance the clock (and Connectivity resyncs
        are reported)."""
        if event.ts_recv > self.now:
            self.now = event.ts_recv
        if not self._enabled:
            return _ACCEPT
        cls = type(event)
        if cls is BookDelta and self._clean_delta(event, book):  # type: ignore[arg-type]
            return _ACCEPT
        if cls is Trade and self._clean_trade(event):  # type: ignore[arg-type]
            return _ACCEPT
        out: list[DataQuality] = []
        deadline = self._next_deadline
        if deadline is not None and self.now > deadline:
            self._scan_stale(out)
        channel = _CHANNEL.get(type(event))
        if channel is None or not isinstance(event, MarketEvent):
            if isinstance(event, Connectivity) and event.status == "resync":
                out.append(
                    self._finding(
                        "sequence_gap",
                        event.exchange,
                        event.symbol,
                        0,
                        f"reason={event.reason!r}",
                        False,
                    )
                )
            return Verdict(True, tuple(out))
        key = f"{event.exchange}:{event.symbol}"
        st = self._streams.get(key)
        if st is None:
            st = self._streams[key] = _Stream()
            insort(self._by_symbol.setdefault(event.symbol, []), key)
        snapshot = isinstance(event, BookSnapshot)
        if not snapshot:
            self._timing(event, st, channel, out)
        accept = self._content(event, key, st, book, out)
        if accept and not snapshot:
            last = st.last_ts.get(channel)
            if last is None or event.ts_event > last:
                st.last_ts[channel] = event.ts_event
        st.last_recv = event.ts_recv
        st.stale = False
        after = self._stale_ns.get(key)
        if after is None:
            after = self._stale_ns[key] = self._stale_after(key)
        if after:
            d = event.ts_recv + after
            if self._next_deadline is None or d < self._next_deadline:
                self._next_deadline = d
        if accept and not out:
            return _ACCEPT
        return Verdict(accept, tuple(out))

    def _clean_delta(self, ev: BookDelta, book: L2Book | None) -> bool:
        """The common case of a book delta, checked without the general machinery: no
        staleness scan due, an existing single-venue stream, timestamps in order and
        within the skew bounds, valid levels, an uncrossed book after it, a mid within
        the band. If all of it holds, apply its effects and return True (accepted, no
        finding: exactly what the general path would do); else change nothing and return
        False, and the general path (which reports what is wrong) takes the event."""
        deadline = self._next_deadline
        if deadline is not None and self.now > deadline:
            return False
        key = f"{ev.exchange}:{ev.symbol}"
        st = self._streams.get(key)
        if st is None or st.skewed or len(self._by_symbol[ev.symbol]) > 1:
            return False
        ts = ev.ts_event
        last = st.last_ts.get("book")
        if last is not None and last - ts > self._ooo_ns:
            return False
        skew = ev.ts_recv - ts
        if skew > self._skew_ns or -skew > self._future_ns:
            return False
        tick, lot = self._steps.get(key, (1, 1))
        new_bid: int | None = None
        for price, size in ev.bids:
            if size < 0 or price <= 0 or price % tick or size % lot:
                return False
            if size and (new_bid is None or price > new_bid):
                new_bid = price
        new_ask: int | None = None
        for price, size in ev.asks:
            if size < 0 or price <= 0 or price % tick or size % lot:
                return False
            if size and (new_ask is None or price < new_ask):
                new_ask = price
        own = book is None and self._own_books
        if book is None:
            book = st.book
            if book is None:
                return False
        best_bid = _best_after(book.bids, ev.bids, new_bid) if ev.bids else book.bids.best()
        best_ask = _best_after(book.asks, ev.asks, new_ask) if ev.asks else book.asks.best()
        mid_x2 = 0
        if best_bid is not None and best_ask is not None:
            if best_bid >= best_ask:
                return False
            mid_x2 = best_bid + best_ask
            ref = st.mid_x2
            if (
                mid_x2 != ref
                and ref > 0
                and abs(mid_x2 - ref) * 10_000 > self.config.price_band_bp * ref
            ):
                return False
        if own:
            book.apply_delta(ev.bids, ev.asks, ts)
            book.seq = ev.seq
        if mid_x2:
            st.mid_x2 = mid_x2
        if last is None or ts > last:
            st.last_ts["book"] = ts
        st.last_recv = ev.ts_recv
        st.stale = False
        after = self._stale_ns.get(key)
        if after is None:
            after = self._stale_ns[key] = self._stale_after(key)
        if after:
            d = ev.ts_recv + after
            if deadline is None or d < deadline:
                self._next_deadline = d
        return True

    def _clean_trade(self, ev: Trade) -> bool:
        """As :meth:`_clean_delta`, for a trade: positive size and price, a new trade id,
        in order and within the skew bounds, within the band."""
        deadline = self._next_deadline
        if deadline is not None and self.now > deadline:
            return False
        key = f"{ev.exchange}:{ev.symbol}"
        st = self._streams.get(key)
        if st is None or st.skewed:
            return False
        ts = ev.ts_event
        last = st.last_ts.get("trade")
        if last is not None and last - ts > self._ooo_ns:
            return False
        skew = ev.ts_recv - ts
        if skew > self._skew_ns or -skew > self._future_ns:
            return False
        price = ev.price
        tid = ev.trade_id
        if ev.size <= 0 or price <= 0 or (tid and tid in st.trade_seen):
            return False
        ref = st.mid_x2 or 2 * st.last_trade_price
        p2 = 2 * price
        if ref > 0 and abs(p2 - ref) * 10_000 > self.config.price_band_bp * ref:
            return False
        st.last_trade_price = price
        window = self.config.duplicate_trade_window
        if tid and window:
            st.trade_seen[tid] = ts
            ids = st.trade_ids
            ids.append(tid)
            if len(ids) > window:
                del st.trade_seen[ids.popleft()]
        if last is None or ts > last:
            st.last_ts["trade"] = ts
        st.last_recv = ev.ts_recv
        st.stale = False
        after = self._stale_ns.get(key)
        if after is None:
            after = self._stale_ns[key] = self._stale_after(key)
        if after:
            d = ev.ts_recv + after
            if deadline is None or d < deadline:
                self._next_deadline = d
        return True

    def mid_x2(self, exchange: str, symbol: str) -> int | None:
        """The stream's last accepted mid x2 (price units), None if none."""
        st = self._streams.get(f"{exchange}:{symbol}")
        return st.mid_x2 if st is not None and st.mid_x2 else None

    def book(self, exchange: str, symbol: str) -> L2Book | None:
        """The validator's own book of a stream (only when checked with ``book=None``)."""
        st = self._streams.get(f"{exchange}:{symbol}")
        return st.book if st is not None else None

    # -- rules -----------------------------------------------------------------------

    def _timing(self, ev: MarketEvent, st: _Stream, channel: str, out: list[DataQuality]) -> None:
        last = st.last_ts.get(channel)
        if last is not None and last - ev.ts_event > self._ooo_ns:
            out.append(
                self._flag(
                    ev,
                    "ts_out_of_order",
                    f"ts_event={ev.ts_event} last_ts_event={last} "
                    f"back_ns={last - ev.ts_event} tolerance_ns={self._ooo_ns} "
                    f"channel={channel}",
                )
            )
        skew = ev.ts_recv - ev.ts_event
        bound = self._skew_ns if skew >= 0 else self._future_ns
        if abs(skew) > bound:
            if not st.skewed:
                st.skewed = True
                sign = "" if skew >= 0 else "-"
                out.append(self._flag(ev, "clock_skew", f"skew_ns={skew} bound_ns={sign}{bound}"))
        else:
            st.skewed = False

    def _content(
        self,
        ev: MarketEvent,
        key: str,
        st: _Stream,
        book: L2Book | None,
        out: list[DataQuality],
    ) -> bool:
        if isinstance(ev, BookDelta | BookSnapshot):
            return self._book_event(ev, key, st, book, out)
        if isinstance(ev, Trade):
            return self._trade(ev, st, out)
        if isinstance(ev, MarkPrice):
            if ev.mark_price <= 0:
                out.append(self._reject(ev, "non_positive_price", f"mark_price={ev.mark_price}"))
                return False
            return self._band(ev, st, 2 * ev.mark_price, st.mid_x2, "price", True, out)
        return True  # FundingRate: timing rules only

    def _trade(self, ev: Trade, st: _Stream, out: list[DataQuality]) -> bool:
        if ev.size <= 0:
            out.append(
                self._reject(
                    ev, "non_positive_size", f"side={ev.side} price={ev.price} size={ev.size}"
                )
            )
            return False
        if ev.price <= 0:
            out.append(self._reject(ev, "non_positive_price", f"side={ev.side} price={ev.price}"))
            return False
        tid = ev.trade_id
        if tid and tid in st.trade_seen:
            out.append(
                self._reject(
                    ev,
                    "duplicate_trade",
                    f"trade_id={tid!r} price={ev.price} size={ev.size} "
                    f"first_ts_event={st.trade_seen[tid]}",
                )
            )
            return False
        ref = st.mid_x2 or 2 * st.last_trade_price
        if not self._band(ev, st, 2 * ev.price, ref, "price", True, out):
            return False
        st.last_trade_price = ev.price
        window = self.config.duplicate_trade_window
        if tid and window:
            st.trade_seen[tid] = ev.ts_event
            st.trade_ids.append(tid)
            if len(st.trade_ids) > window:
                del st.trade_seen[st.trade_ids.popleft()]
        return True

    def _book_event(
        self,
        ev: BookDelta | BookSnapshot,
        key: str,
        st: _Stream,
        book: L2Book | None,
        out: list[DataQuality],
    ) -> bool:
        snapshot = isinstance(ev, BookSnapshot)
        floor = 1 if snapshot else 0
        tick, lot = self._steps.get(key, (1, 1))
        # one pass per side: the level rules, and the best new price of the message
        new_bid: int | None = None
        for price, size in ev.bids:
            if size < floor or price <= 0 or price % tick or size % lot:
                out.append(self._level_error(ev, "bid", price, size, floor, tick, lot))
                return False
            if size and (new_bid is None or price > new_bid):
                new_bid = price
        new_ask: int | None = None
        for price, size in ev.asks:
            if size < floor or price <= 0 or price % tick or size % lot:
                out.append(self._level_error(ev, "ask", price, size, floor, tick, lot))
                return False
            if size and (new_ask is None or price < new_ask):
                new_ask = price
        own = book is None and self._own_books
        if book is None:
            book = st.book
            if book is None:
                book = L2Book(ev.exchange, ev.symbol, tick, lot)
                if own:
                    st.book = book
        if snapshot:
            best_bid, best_ask = new_bid, new_ask
        else:
            best_bid = _best_after(book.bids, ev.bids, new_bid)
            best_ask = _best_after(book.asks, ev.asks, new_ask)
        if best_bid is not None and best_ask is not None and best_bid >= best_ask:
            rule = "locked_book" if best_bid == best_ask else "crossed_book"
            out.append(self._reject(ev, rule, f"best_bid={best_bid} best_ask={best_ask}"))
            return False
        mid_x2 = best_bid + best_ask if best_bid is not None and best_ask is not None else 0
        if mid_x2 and not self._band(ev, st, mid_x2, st.mid_x2, "mid", not snapshot, out):
            return False
        if mid_x2 and not self._cross_venue(ev, key, st, mid_x2, out):
            return False
        if own:  # every rule of the book's own was checked above: this cannot raise
            if isinstance(ev, BookSnapshot):
                book.apply_snapshot(ev.bids, ev.asks, ev.ts_event)
            else:
                book.apply_delta(ev.bids, ev.asks, ev.ts_event)
            book.seq = ev.seq
        if mid_x2:  # else a side is empty: the last mid stays the reference
            st.mid_x2 = mid_x2
        return True

    def _band(
        self,
        ev: MarketEvent,
        st: _Stream,
        price_x2: int,
        ref_x2: int,
        what: str,
        reject: bool,
        out: list[DataQuality],
    ) -> bool:
        band = self.config.price_band_bp
        if ref_x2 <= 0 or abs(price_x2 - ref_x2) * 10_000 <= band * ref_x2:
            return True
        detail = (
            f"{what}={_fmt_x2(price_x2)} ref={_fmt_x2(ref_x2)} band_bp={band} "
            f"off_bp={_off_bp(price_x2, ref_x2)}"
        )
        out.append(self._finding_of(ev, "price_band", detail, reject))
        return not reject

    def _cross_venue(
        self, ev: MarketEvent, key: str, st: _Stream, mid_x2: int, out: list[DataQuality]
    ) -> bool:
        scale = self._scale.get(key)
        keys = self._by_symbol.get(ev.symbol, ())
        if scale is None or len(keys) < 2:
            return True
        band = self.config.cross_venue_band_bp
        mid = mid_x2 * scale
        reject = self.config.reject_cross_venue
        accept = True
        for other_key in keys:
            if other_key == key:
                continue
            other = self._streams[other_key]
            other_scale = self._scale.get(other_key)
            if not other.mid_x2 or other.stale or other_scale is None:
                continue
            other_mid = other.mid_x2 * other_scale
            other_ex = other_key.split(":", 1)[0]
            if abs(mid - other_mid) * 10_000 <= band * other_mid:
                st.diverging.discard(other_ex)
                self._streams[other_key].diverging.discard(ev.exchange)
                continue
            if reject:  # every divergent event is refused, each with its finding
                accept = False
            elif other_ex in st.diverging:
                continue
            else:
                st.diverging.add(other_ex)
                other.diverging.add(ev.exchange)
            out.append(
                self._finding_of(
                    ev,
                    "cross_venue_band",
                    f"mid={_fmt_x2(mid_x2)} other_exchange={other_ex} "
                    f"other_mid={_fmt_x2(other.mid_x2)} band_bp={band} "
                    f"off_bp={_off_bp(mid, other_mid)}",
                    reject,
                )
            )
        return accept

    def _stale_after(self, key: str) -> int:
        ms = self.config.stale_after_ms_by_stream.get(key, self.config.stale_after_ms)
        return ms * _MS

    def _scan_stale(self, out: list[DataQuality]) -> None:
        now = self.now
        nxt: int | None = None
        for key in sorted(self._streams):
            st = self._streams[key]
            after = self._stale_after(key)
            if st.stale or not after:
                continue
            if now - st.last_recv > after:
                st.stale = True
                exchange, symbol = key.split(":", 1)
                out.append(
                    self._finding(
                        "stale_stream",
                        exchange,
                        symbol,
                        0,
                        f"last_recv={st.last_recv} silent_ns={now - st.last_recv} "
                        f"stale_after_ns={after}",
                        False,
                    )
                )
            else:
                d = st.last_recv + after
                if nxt is None or d < nxt:
                    nxt = d
        self._next_deadline = nxt

    def _level_error(
        self, ev: MarketEvent, side: str, price: int, size: int, floor: int, tick: int, lot: int
    ) -> DataQuality:
        if size < floor:
            return self._reject(ev, "non_positive_size", f"side={side} price={price} size={size}")
        if price <= 0:
            return self._reject(ev, "non_positive_price", f"side={side} price={price}")
        if price % tick:
            return self._reject(ev, "off_tick", f"side={side} price={price} tick={tick}")
        return self._reject(ev, "off_lot", f"side={side} price={price} size={size} lot={lot}")

    # -- findings --------------------------------------------------------------------

    def _finding(
        self, rule: str, exchange: str, symbol: str, seq: int, detail: str, rejected: bool
    ) -> DataQuality:
        return DataQuality(
            ts_event=self.now,
            ts_recv=self.now,
            rule=rule,
            exchange=exchange,
            symbol=symbol,
            detail=detail,
            rejected=rejected,
            source_seq=seq,
        )

    def _finding_of(self, ev: MarketEvent, rule: str, detail: str, rejected: bool) -> DataQuality:
        return self._finding(rule, ev.exchange, ev.symbol, ev.seq, detail, rejected)

    def _reject(self, ev: MarketEvent, rule: str, detail: str) -> DataQuality:
        return self._finding_of(ev, rule, detail, True)

    def _flag(self, ev: MarketEvent, rule: str, detail: str) -> DataQuality:
        return self._finding_of(ev, rule, detail, False)

    # -- state -----------------------------------------------------------------------

    def snapshot(self) -> bytes:
        """The whole state as bytes (canonical: equal states, equal bytes)."""
        streams = []
        for key in sorted(self._streams):
            st = self._streams[key]
            streams.append(
                _StreamState(
                    key=key,
                    mid_x2=st.mid_x2,
                    last_trade_price=st.last_trade_price,
                    last_ts=sorted(st.last_ts.items()),
                    last_recv=st.last_recv,
                    stale=st.stale,
                    skewed=st.skewed,
                    trades=[(t, st.trade_seen[t]) for t in st.trade_ids],
                    diverging=sorted(st.diverging),
                    book=st.book.canonical() if st.book is not None else None,
                )
            )
        return msgspec.msgpack.encode(_State(STATE_VERSION, self.now, streams))

    def restore(self, snapshot: bytes) -> None:
        """Continue exactly where the validator that wrote ``snapshot`` was (same config
        and instruments)."""
        state = msgspec.msgpack.decode(snapshot, type=_State)
        if state.version != STATE_VERSION:
            raise ValueError(f"validator snapshot version {state.version} != {STATE_VERSION}")
        self.now = state.now
        self._streams = {}
        self._by_symbol = {}
        self._next_deadline = None
        for s in state.streams:
            st = _Stream()
            st.mid_x2 = s.mid_x2
            st.last_trade_price = s.last_trade_price
            st.last_ts = dict(s.last_ts)
            st.last_recv = s.last_recv
            st.stale = s.stale
            st.skewed = s.skewed
            st.trade_ids = deque(t for t, _ in s.trades)
            st.trade_seen = dict(s.trades)
            st.diverging = set(s.diverging)
            exchange, symbol = s.key.split(":", 1)
            if s.book is not None:
                tick, lot = self._steps.get(s.key, (1, 1))
                st.book = L2Book(exchange, symbol, tick, lot)
                st.book.apply_snapshot(s.book[0], s.book[1], 0)
            self._streams[s.key] = st
            insort(self._by_symbol.setdefault(symbol, []), s.key)
            after = self._stale_after(s.key)
            if after and not st.stale:
                d = st.last_recv + after
                if self._next_deadline is None or d < self._next_deadline:
                    self._next_deadline = d
