"""The kernel: a pure, deterministic fold of events into state.

``Engine.apply(event)`` updates books and market state, fires due timers first, lets
the strategy react, and returns the events the kernel made (decisions, data-quality
findings, ...). No I/O, no wall clock, no unseeded randomness: the same inputs, config
and seed always give the same outputs and the same :meth:`Engine.state_hash`.

Clock: the kernel clock is the local receive time (``ts_recv``) of the input being
processed; timers due at or before an input's ``ts_recv`` fire before that input.
"""

from __future__ import annotations

import hashlib
import heapq
from collections.abc import Callable, Iterable, Sequence

import msgspec
import numpy as np

from kernel.book import BookError, L2Book
from kernel.config import EngineConfig
from kernel.context import StrategyContext, StrategyLike
from kernel.events import (
    BookDelta,
    BookSnapshot,
    DataQuality,
    Event,
    FundingRate,
    Halt,
    Heartbeat,
    MarketEvent,
    MarkPrice,
    Resume,
    Trade,
)
from kernel.instruments import Instrument, InstrumentError, InstrumentRegistry

STATE_VERSION = 1

_NONE: tuple[Event, ...] = ()


class EngineState(msgspec.Struct, frozen=True, array_like=True):
    """Everything the engine knows, canonically ordered: what snapshot() writes and
    state_hash() hashes. The session id is identity, not state: two sessions over the
    same inputs with the same config and seed have the same state hash."""

    version: int
    now: int
    events_in: int
    rows_in: int
    outputs: int
    decisions: int
    rejected: int
    halted: bool
    timer_seq: int
    timers: list[tuple[int, int, str]]
    books: list[tuple[str, int, int, list[tuple[int, int]], list[tuple[int, int]]]]
    last_trades: list[tuple[str, bytes]]
    funding: list[tuple[str, int, int]]
    marks: list[tuple[str, int, int]]
    rng_state: str
    strategy_state: bytes


class Engine:
    """``Engine(config, instruments, strategy, seed)``; feed it with :meth:`apply`."""

    def __init__(
        self,
        config: EngineConfig,
        instruments: InstrumentRegistry | Sequence[Instrument],
        strategy: StrategyLike | None = None,
        seed: int = 0,
        session_id: str = "",
    ) -> None:
        self.config = config
        self.instruments = (
            instruments
            if isinstance(instruments, InstrumentRegistry)
            else InstrumentRegistry(list(instruments))
        )
        self.strategy = strategy
        self.strategy_name = strategy.name if strategy is not None else "none"
        self.seed = seed
        self.session_id = session_id
        self.rng = np.random.Generator(np.random.PCG64(seed))
        self.books: dict[str, L2Book] = {}
        self.last_trades: dict[str, Trade] = {}
        self.funding: dict[str, tuple[int, int]] = {}
        self.marks: dict[str, tuple[int, int]] = {}
        self.now = 0
        self.events_in = 0
        self.rows_in = 0
        self.outputs = 0
        self.decisions = 0
        self.rejected = 0
        self.halted = False
        self._timers: list[tuple[int, int, str]] = []
        self._timer_seq = 0
        self._out: list[Event] = []
        self.ctx = StrategyContext(self)
        self._handlers: dict[type, Callable[[Event], None]] = {
            BookDelta: self._on_delta,  # type: ignore[dict-item]
            BookSnapshot: self._on_snapshot,  # type: ignore[dict-item]
            Trade: self._on_trade,  # type: ignore[dict-item]
            FundingRate: self._on_funding,  # type: ignore[dict-item]
            MarkPrice: self._on_mark,  # type: ignore[dict-item]
            Heartbeat: _ignore,
            Halt: self._on_halt,  # type: ignore[dict-item]
            Resume: self._on_resume,  # type: ignore[dict-item]
        }
        self._started = False

    # -- public API ------------------------------------------------------------------

    def start(self) -> tuple[Event, ...]:
        """Call the strategy's ``on_start``; returns what it emitted."""
        self._started = True
        if self.strategy is not None:
            self.strategy.on_start(self.ctx)
        return self._drain()

    def apply(self, event: Event) -> tuple[Event, ...]:
        """Fold one input event; returns the events the kernel made because of it."""
        if not self._started:
            self._started = True
            if self.strategy is not None:
                self.strategy.on_start(self.ctx)
        ts = event.ts_recv
        if self._timers and self._timers[0][0] <= ts:
            self._fire_timers(ts)
        self.events_in += 1
        if ts >= self.now:
            self.now = ts
        else:
            self._quality(
                event, "clock_regression", f"ts_recv {ts} < kernel clock {self.now}", False
            )
        handler = self._handlers.get(type(event))
        if handler is not None:
            handler(event)
        if not self._out:
            return _NONE
        return self._drain()

    def apply_many(self, events: Iterable[Event]) -> list[Event]:
        out: list[Event] = []
        for ev in events:
            res = self.apply(ev)
            if res:
                out.extend(res)
        return out

    def emit(self, event: Event) -> None:
        """Record a kernel-made event (used by the context and later layers)."""
        self._out.append(event)

    def set_timer(self, at_ns: int, name: str) -> None:
        self._timer_seq += 1
        heapq.heappush(self._timers, (at_ns, self._timer_seq, name))

    def book(self, exchange: str, symbol: str) -> L2Book | None:
        return self.books.get(f"{exchange}:{symbol}")

    # -- handlers --------------------------------------------------------------------

    def _book_for(self, ev: MarketEvent) -> L2Book | None:
        key = f"{ev.exchange}:{ev.symbol}"
        book = self.books.get(key)
        if book is None:
            try:
                inst = self.instruments.get(ev.exchange, ev.symbol)
            except InstrumentError as exc:
                self._quality(ev, "unknown_instrument", str(exc), True)
                return None
            book = self.books[key] = L2Book(
                inst.exchange, inst.symbol, inst.tick_size, inst.lot_size
            )
        return book

    def _on_delta(self, ev: BookDelta) -> None:
        book = self.books.get(f"{ev.exchange}:{ev.symbol}") or self._book_for(ev)
        if book is None:
            return
        self.rows_in += len(ev.bids) + len(ev.asks)
        try:
            book.apply_delta(ev.bids, ev.asks, ev.ts_event)
        except BookError as exc:
            self._quality(ev, exc.rule, exc.detail, True)
            return
        book.seq = ev.seq
        if self.strategy is not None:
            self.strategy.on_market(self.ctx, ev)

    def _on_snapshot(self, ev: BookSnapshot) -> None:
        book = self._book_for(ev)
        if book is None:
            return
        self.rows_in += len(ev.bids) + len(ev.asks)
        try:
            book.apply_snapshot(ev.bids, ev.asks, ev.ts_event)
        except BookError as exc:
            self._quality(ev, exc.rule, exc.detail, True)
            return
        book.seq = ev.seq
        if self.strategy is not None:
            self.strategy.on_market(self.ctx, ev)

    def _on_trade(self, ev: Trade) -> None:
        self.rows_in += 1
        if ev.size <= 0 or ev.price <= 0:
            self._quality(ev, "bad_trade", f"price {ev.price} size {ev.size}", True)
            return
        self.last_trades[f"{ev.exchange}:{ev.symbol}"] = ev
        if self.strategy is not None:
            self.strategy.on_market(self.ctx, ev)

    def _on_funding(self, ev: FundingRate) -> None:
        self.rows_in += 1
        self.funding[f"{ev.exchange}:{ev.symbol}"] = (ev.rate, ev.next_funding_ts)
        if self.strategy is not None:
            self.strategy.on_market(self.ctx, ev)

    def _on_mark(self, ev: MarkPrice) -> None:
        self.rows_in += 1
        self.marks[f"{ev.exchange}:{ev.symbol}"] = (ev.mark_price, ev.index_price)
        if self.strategy is not None:
            self.strategy.on_market(self.ctx, ev)

    def _on_halt(self, ev: Halt) -> None:
        self.halted = True

    def _on_resume(self, ev: Resume) -> None:
        self.halted = False

    # -- internals -------------------------------------------------------------------

    def _quality(self, ev: Event, rule: str, detail: str, rejected: bool) -> None:
        if rejected:
            self.rejected += 1
        ex, sym, seq = (
            (ev.exchange, ev.symbol, ev.seq) if isinstance(ev, MarketEvent) else ("", "", 0)
        )
        self._out.append(
            DataQuality(
                ts_event=self.now,
                ts_recv=self.now,
                rule=rule,
                exchange=ex,
                symbol=sym,
                detail=detail,
                rejected=rejected,
                source_seq=seq,
            )
        )

    def _fire_timers(self, up_to: int) -> None:
        timers = self._timers
        while timers and timers[0][0] <= up_to:
            at, _, name = heapq.heappop(timers)
            if at > self.now:
                self.now = at
            if self.strategy is not None:
                self.strategy.on_timer(self.ctx, name)

    def _drain(self) -> tuple[Event, ...]:
        out = self._out
        limit = self.config.max_decisions_per_event
        if len(out) > limit:
            # A runaway strategy must not flood the journal; what was cut is recorded.
            dropped = len(out) - limit
            out = out[:limit]
            out.append(
                DataQuality(
                    ts_event=self.now,
                    ts_recv=self.now,
                    rule="output_limit",
                    exchange="",
                    symbol="",
                    detail=f"{dropped} kernel outputs over max_decisions_per_event={limit}",
                    rejected=True,
                )
            )
        self._out = []
        self.outputs += len(out)
        return tuple(out)

    # -- state -----------------------------------------------------------------------

    def _state(self) -> EngineState:
        from kernel.events import encode

        books = []
        for key in sorted(self.books):
            b = self.books[key]
            bids, asks = b.canonical()
            books.append((key, b.ts_event, b.seq, bids, asks))
        return EngineState(
            version=STATE_VERSION,
            now=self.now,
            events_in=self.events_in,
            rows_in=self.rows_in,
            outputs=self.outputs,
            decisions=self.decisions,
            rejected=self.rejected,
            halted=self.halted,
            timer_seq=self._timer_seq,
            timers=sorted(self._timers),
            books=books,
            last_trades=[(k, encode(self.last_trades[k])) for k in sorted(self.last_trades)],
            funding=[(k, *self.funding[k]) for k in sorted(self.funding)],
            marks=[(k, *self.marks[k]) for k in sorted(self.marks)],
            rng_state=msgspec.json.encode(self.rng.bit_generator.state, order="sorted").decode(),
            strategy_state=self.strategy.snapshot_state() if self.strategy is not None else b"",
        )

    def snapshot(self) -> bytes:
        """The whole state as bytes; :meth:`restore` on an engine built with the same
        config, instruments and strategy class continues exactly where this one was."""
        return msgspec.msgpack.encode(self._state())

    def state_hash(self) -> str:
        """Hex blake2b-256 of :meth:`snapshot`: equal states, equal hashes."""
        return hashlib.blake2b(self.snapshot(), digest_size=32).hexdigest()

    def restore(self, snapshot: bytes) -> None:
        from kernel.events import Trade as _Trade
        from kernel.events import decode

        st = msgspec.msgpack.decode(snapshot, type=EngineState)
        if st.version != STATE_VERSION:
            raise ValueError(f"snapshot version {st.version} != engine version {STATE_VERSION}")
        self.now = st.now
        self.events_in = st.events_in
        self.rows_in = st.rows_in
        self.outputs = st.outputs
        self.decisions = st.decisions
        self.rejected = st.rejected
        self.halted = st.halted
        self._timer_seq = st.timer_seq
        self._timers = [tuple(t) for t in st.timers]  # type: ignore[misc]
        heapq.heapify(self._timers)
        self.books = {}
        for key, ts_event, seq, bids, asks in st.books:
            exchange, symbol = key.split(":", 1)
            inst = self.instruments.get(exchange, symbol)
            book = L2Book(exchange, symbol, inst.tick_size, inst.lot_size)
            book.apply_snapshot(bids, asks, ts_event)
            book.seq = seq
            self.books[key] = book
        self.last_trades = {}
        for key, payload in st.last_trades:
            tr = decode(payload)
            assert isinstance(tr, _Trade)
            self.last_trades[key] = tr
        self.funding = {k: (r, n) for k, r, n in st.funding}
        self.marks = {k: (m, i) for k, m, i in st.marks}
        self.rng.bit_generator.state = msgspec.json.decode(st.rng_state)
        if self.strategy is not None:
            self.strategy.restore_state(st.strategy_state)
        self._started = True


def _ignore(event: Event) -> None:
    return None
