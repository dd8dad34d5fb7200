"""The kernel: a pure, deterministic fold of events into state.

``Engine.apply(event)`` updates books and market state, fires due timers first, lets
the strategy react, and returns the events the kernel made (decisions, data-quality
findings, ...). No I/O, no wall clock, no unseeded randomness: the same inputs, config
and seed always give the same outputs and the same :meth:`Engine.state_hash`.

Clock: the kernel clock is the local receive time (``ts_recv``) of the input being
processed. Scheduled work (strategy timers, orders reaching the venue after their entry
latency, venue responses reaching the strategy after their response latency, funding
settlements, portfolio snapshots) due at or before an input's ``ts_recv`` happens
before that input, in time order (ties in the order it was scheduled).
"""

from __future__ import annotations

import hashlib
import heapq
from collections.abc import Callable, Iterable, Mapping, Sequence

import msgspec
import numpy as np

from kernel.alerts import AlertEngine
from kernel.book import BookError, L2Book
from kernel.config import (
    EngineConfig,
    FeaturesConfig,
    LatencyProfile,
    MonitoringConfig,
    RiskLimitsConfig,
    ValidationConfig,
)
from kernel.context import StrategyContext, StrategyLike
from kernel.events import (
    AmendRequested,
    BookDelta,
    BookSnapshot,
    CancelRequested,
    Connectivity,
    DataQuality,
    Decision,
    Event,
    Features,
    Fill,
    FundingPayment,
    FundingRate,
    Halt,
    Heartbeat,
    MarketEvent,
    MarkPrice,
    OrderAccepted,
    OrderAmended,
    OrderCancelled,
    OrderError,
    OrderExpired,
    OrderRejected,
    OrderSubmitted,
    OrderType,
    Resume,
    RiskEvent,
    Side,
    TimeInForce,
    Trade,
    decode,
    encode,
)
from kernel.execution import Venue, VenueState
from kernel.features.cross import CROSS_NAMES, cross_venue_features
from kernel.features.featureset import FeatureSample, FeatureSet
from kernel.features.portfolio import PORTFOLIO_NAMES, heat, portfolio_features
from kernel.fixedpoint import MONEY_DECIMALS, POW10, parse_fixed
from kernel.instruments import Instrument, InstrumentError, InstrumentRegistry
from kernel.portfolio import Portfolio, PortfolioState, funding_amount
from kernel.risk import RiskManager, RiskState
from kernel.trades import TradeAggregator, TradeWindowsConfig
from kernel.validation import Validator

STATE_VERSION = 3

# Kinds of scheduled work, in the engine's one time-ordered heap.
TIMER, ARRIVAL, DELIVERY, FUNDING, SNAPSHOT, RISK_STAGE, RISK_SAMPLE = range(7)

SchedEntry = tuple[int, int, int, object]


class OrderView(msgspec.Struct, array_like=True):
    """An order as the strategy knows it: from what it sent and the responses it has
    seen so far (the venue may already be ahead of this view)."""

    order_id: str
    exchange: str
    symbol: str
    side: Side
    order_type: OrderType
    size: int
    price: int
    time_in_force: TimeInForce
    trigger_price: int = 0
    filled: int = 0
    state: str = "submitted"


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
    sched: list[tuple[int, int, int, bytes]]
    books: list[tuple[str, int, int, list[tuple[int, int]], list[tuple[int, int]]]]
    last_trades: list[tuple[str, bytes]]
    funding: list[tuple[str, int, int]]
    marks: list[tuple[str, int, int]]
    rng_state: str
    strategy_state: bytes
    order_seq: int
    orders: list[OrderView]
    funding_keys: list[str]
    snapshots_on: bool
    venue: VenueState
    portfolio: PortfolioState
    risk: RiskState | None
    held_mids: list[tuple[str, int]]
    flattening: list[tuple[str, str]]


class EngineStateWithTrades(EngineState, frozen=True, array_like=True):
    """:class:`EngineState` plus the trade windows a strategy switched on
    (:meth:`Engine.trade_windows`), encoded by :meth:`TradeAggregator.snapshot`. A
    separate type so that the state of every session without them (the bytes and the
    state hash) stays as it was: the field is written only when the windows are on, and
    :meth:`Engine.restore` reads both shapes."""

    trade_windows: bytes = b""


class EngineStateValidated(EngineStateWithTrades, frozen=True, array_like=True):
    """:class:`EngineStateWithTrades` plus the market-data validator's state
    (kernel/validation.py, :meth:`Validator.snapshot`), written only when validation is
    on, so that sessions without it keep their bytes and state hash."""

    validator: bytes = b""


class EngineStateWithFeatures(EngineStateValidated, frozen=True, array_like=True):
    """:class:`EngineStateValidated` plus the features' state (kernel/features,
    :meth:`FeatureSet.snapshot`; the books are the engine's own), written only when
    features are on."""

    features: bytes = b""


class EngineStateWithAlerts(EngineStateWithFeatures, frozen=True, array_like=True):
    """:class:`EngineStateWithFeatures` plus the alert engine's state (kernel/alerts.py,
    :meth:`AlertEngine.snapshot`), written only when alerts are on."""

    alerts: bytes = b""


class Engine:
    """``Engine(config, instruments, strategy, seed)``; feed it with :meth:`apply`."""

    def __init__(
        self,
        config: EngineConfig,
        instruments: InstrumentRegistry | Sequence[Instrument],
        strategy: StrategyLike | None = None,
        seed: int = 0,
        session_id: str = "",
        latency: Mapping[str, LatencyProfile] | None = None,
        risk: RiskLimitsConfig | None = None,
        trade_windows: TradeWindowsConfig | None = None,
        validation: ValidationConfig | None = None,
        features: FeaturesConfig | None = None,
        monitoring: MonitoringConfig | None = None,
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
        # rolling trade windows: off until a strategy asks for them (trade_windows())
        self._trade_windows_config = trade_windows or TradeWindowsConfig()
        self._trades: TradeAggregator | None = None
        self.funding: dict[str, tuple[int, int]] = {}
        self.marks: dict[str, tuple[int, int]] = {}
        self.now = 0
        self.events_in = 0
        self.rows_in = 0
        self.outputs = 0
        self.decisions = 0
        self.rejected = 0
        self.halted = False
        self._sched: list[SchedEntry] = []
        self._due_now = False  # something was scheduled at or before the kernel clock
        self._timer_seq = 0
        self._out: list[Event] = []
        self._budget = config.max_decisions_per_event
        self._refused = 0
        self.orders: dict[str, OrderView] = {}
        self._order_seq = 0
        self._funding_keys: set[str] = set()
        self._snapshots_on = False
        self.portfolio = Portfolio(parse_fixed(config.portfolio.initial_cash, MONEY_DECIMALS))
        self.venue = Venue(
            config.execution,
            dict(latency or {}),
            self.books,
            self.instruments,
            self.portfolio,
            self._from_venue,
            seed,
        )
        # the risk layer: every strategy order passes through it (None: no risk layer,
        # as in scenarios that pin the venue alone)
        self.risk = (
            RiskManager(risk, self.instruments) if risk is not None and risk.enabled else None
        )
        self._held_mids: dict[str, int] = {}  # held instrument -> mid_x2 last valued at
        self._held_values: dict[str, int] = {}  # held instrument -> signed value (MONEY)
        self._bands: dict[str, tuple[int, int]] = {}  # held instrument -> quiet mid_x2 range
        self._use_bands = True  # tests switch it off to compare with evaluating every move
        self._risk_floor = 0  # equity at or below which the first breaker may trip
        self._position_cap_pct = (
            risk.max_position_pct * (1 + risk.rebalance_tolerance_pct / 100)
            if risk is not None
            else 100.0
        )
        if self.risk is not None:  # the drawdown counts from the starting equity
            self.risk.st.peak = self.risk.st.equity = self.portfolio.initial_cash
            self._risk_floor = int(
                self.risk.st.peak * (100 - self.risk.cfg.drawdown_half_size_pct) // 100
            )
        self._flattening: dict[str, str] = {}  # instrument -> kernel order flattening it
        self.ctx = StrategyContext(self)
        # bound once: the per-event calls of the hot path
        self._on_market = strategy.on_market if strategy is not None else None
        self._active = self.venue.active
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
        # market-data validation (kernel/validation.py): every input passes it before it
        # reaches books, features and the strategy; a rejected event is not applied
        self.validator = (
            Validator(validation, self.instruments, own_books=False)
            if validation is not None and validation.enabled
            else None
        )
        # microstructure features (kernel/features) over the engine's own books: on when
        # configured (then sampled into Features events) or when a strategy reads them
        self._features_cfg = features or FeaturesConfig()
        self._features: FeatureSet | None = None
        self._feature_names: tuple[str, ...] = ()
        self._venues: dict[str, list[Instrument]] = {}
        for inst in self.instruments:
            self._venues.setdefault(inst.symbol, []).append(inst)
        if self._features_cfg.enabled:
            self.features_on()
        # alerts (kernel/alerts.py) over the kernel's inputs and outputs: journaled with
        # the outputs, so a replay makes the same ones
        self.alerts = (
            AlertEngine(
                monitoring.alerts,
                self.portfolio.initial_cash,
                risk.drawdown_half_size_pct if risk is not None and risk.enabled else None,
                monitoring.spread_zscore_alert,
            )
            if monitoring is not None and monitoring.alerts.enabled
            else None
        )
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
        sched = self._sched
        if sched and sched[0][0] <= ts:
            self._advance(ts)
        self.events_in += 1
        if ts >= self.now:
            self.now = ts
        else:
            self._quality(
                event, "clock_regression", f"ts_recv {ts} < kernel clock {self.now}", False
            )
        handler = self._handlers.get(type(event))
        validator = self.validator
        if validator is not None and not self._validate(validator, event):
            handler = None
        elif self.alerts is not None and type(event) in _ALERT_INPUTS:
            self._out.extend(self.alerts.scan([event], self.now))
        if handler is not None:
            handler(event)
        if self._due_now:
            self._due_now = False
            self._advance(self.now)  # responses with no latency are seen at once
        if not self._out:
            return _NONE
        return self._drain()

    def advance(self, ts: int) -> tuple[Event, ...]:
        """Move the kernel clock to ``ts`` without an input: everything scheduled up to
        then happens (the end of a scenario, or idle time in a live session)."""
        if not self._started:
            self.start()
        if self._sched and self._sched[0][0] <= ts:
            self._advance(ts)
        if ts > self.now:
            self.now = ts
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
        self._schedule(at_ns, TIMER, name)

    def trade_windows(self) -> TradeAggregator:
        """The rolling trade windows (kernel/trades.py), switched on by the first call:
        from then on every valid trade of a known instrument is counted, and the windows
        are part of the state. Off (the default) they cost nothing and leave the state
        hash as it was; a strategy that wants them asks in ``on_start``."""
        if self._trades is None:
            self._trades = TradeAggregator(self._trade_windows_config, self.instruments)
        return self._trades

    def features_on(self) -> FeatureSet:
        """The features (kernel/features), switched on by the first call (config
        ``trading.features.enabled`` calls it at construction; a strategy that reads
        features calls it through the context in ``on_start``). They fold every accepted
        market event from then on and are part of the state; sampled into ``Features``
        events only when configured."""
        if self._features is None:
            cfg = self._features_cfg
            params = cfg.params
            if not (cfg.enabled and cfg.emit) and params.sample_interval_ns:
                params = msgspec.structs.replace(params, sample_interval_ns=0)
            self._features = FeatureSet(params, books=self.books)
            self._feature_names = self._features.names + CROSS_NAMES + PORTFOLIO_NAMES
        return self._features

    def feature_values(self, exchange: str, symbol: str) -> dict[str, float]:
        """Every feature of one instrument now: the microstructure features at its event
        clock, then the cross-venue (kernel/features/cross.py) and portfolio-aware
        (kernel/features/portfolio.py) ones."""
        fs = self.features_on()
        values = fs.features(exchange, symbol)
        extra = self._extra_features(f"{exchange}:{symbol}")
        values.update(zip(CROSS_NAMES + PORTFOLIO_NAMES, extra, strict=True))
        return values

    def _extra_features(self, key: str, gross: int | None = None) -> tuple[float, ...]:
        if key not in self.instruments:
            return (0.0,) * (len(CROSS_NAMES) + len(PORTFOLIO_NAMES))
        inst = self.instruments.by_key(key)
        cross = cross_venue_features(inst, self._venues.get(inst.symbol, ()), self.books)
        pos = self.portfolio.positions.get(key)
        held = self._positions()
        if gross is None:
            gross = self._gross_exposure(held)
        cap_pct, slots = 100.0, 1
        correlation = 0.0
        if self.risk is not None:
            cap_pct, slots = self.risk.cfg.max_position_pct, self.risk.cfg.max_positions
            if held:
                correlation = self.risk.correlation_to_open(inst, held)
        h = heat(gross, self.equity(), cap_pct, slots)
        if pos is None or not pos.qty:
            return cross + portfolio_features(0.0, None, 0, 0, self.now, h, correlation)
        mark = self._mark(key)
        value = None
        if mark is not None:
            v = inst.notional(mark, abs(pos.qty))
            value = v if pos.qty > 0 else -v
        qty = pos.qty / POW10[inst.size_decimals]
        return cross + portfolio_features(
            qty, value, pos.cost, pos.opened_ts, self.now, h, correlation
        )

    def _gross_exposure(self, held: dict[str, int]) -> int:
        return sum(
            abs(self._position_value(k, q, self.portfolio.positions[k].cost))
            for k, q in held.items()
        )

    def _emit_samples(self, samples: list[FeatureSample]) -> None:
        gross = self._gross_exposure(self._positions())
        names = self._feature_names
        now = self.now
        for s in samples:
            key = f"{s.exchange}:{s.symbol}"
            ev = Features(
                ts_event=s.ts,
                ts_recv=now,
                exchange=s.exchange,
                symbol=s.symbol,
                names=names,
                values=s.values + self._extra_features(key, gross),
            )
            self._out.append(ev)

    def _schedule(self, at_ns: int, kind: int, data: object) -> None:
        self._timer_seq += 1
        heapq.heappush(self._sched, (at_ns, self._timer_seq, kind, data))
        if at_ns <= self.now:
            self._due_now = True

    # -- orders (called through the strategy context) ---------------------------------

    def submit_order(
        self,
        exchange: str,
        symbol: str,
        side: Side,
        size: int,
        order_type: OrderType = "limit",
        price: int = 0,
        time_in_force: TimeInForce = "GTC",
        trigger_price: int = 0,
        reduce_only: bool = False,
        decision_id: str = "",
        order_id: str | None = None,
        internal: bool = False,
    ) -> str:
        inst = self.instruments.get(exchange, symbol)  # unknown: the strategy's bug
        if not internal and not self._spend():
            return ""
        if order_id is None:
            self._order_seq += 1
            order_id = f"o{self._order_seq}"
            while order_id in self.orders:
                self._order_seq += 1
                order_id = f"o{self._order_seq}"
        elif order_id in self.orders:
            raise ValueError(f"order id {order_id!r} is already in use")
        now = self.now
        refusal = ""
        if self.risk is not None and not internal and not self.halted:
            size, refusal = self._risk_check(inst, side, size, price or trigger_price)
        sub = OrderSubmitted(
            ts_event=now,
            ts_recv=now,
            order_id=order_id,
            decision_id=decision_id,
            exchange=inst.exchange,
            symbol=inst.symbol,
            side=side,
            order_type=order_type,
            size=size,
            price=price,
            time_in_force=time_in_force,
            trigger_price=trigger_price,
            reduce_only=reduce_only,
        )
        self.emit(sub)
        if not self._snapshots_on:
            self._snapshots_on = True
            iv = self.config.portfolio.snapshot_interval_ms * 1_000_000
            if iv > 0:
                self._schedule((now // iv + 1) * iv, SNAPSHOT, "")
            if self.risk is not None:
                self._schedule(now, RISK_SAMPLE, "")
        if (self.halted and not internal) or refusal:
            reason = f"risk: {refusal}" if refusal else "halted: kill switch on"
            self.emit(OrderRejected(ts_event=now, ts_recv=now, order_id=order_id, reason=reason))
            return order_id
        self.orders[order_id] = OrderView(
            order_id,
            inst.exchange,
            inst.symbol,
            side,
            order_type,
            size,
            price,
            time_in_force,
            trigger_price,
        )
        self.venue.now = now
        self._schedule(self.venue.arrival_time(inst.exchange, now), ARRIVAL, sub)
        return order_id

    def cancel_order(self, order_id: str, reason: str = "") -> None:
        if not self._spend():
            return
        view = self._open_view(order_id, "cancel")
        if view is not None:
            now = self.now
            self._send(
                CancelRequested(
                    ts_event=now,
                    ts_recv=now,
                    order_id=order_id,
                    exchange=view.exchange,
                    reason=reason,
                ),
                view.exchange,
            )

    def amend_order(self, order_id: str, size: int = 0, price: int = 0) -> None:
        if not self._spend():
            return
        view = self._open_view(order_id, "amend")
        if view is not None:
            now = self.now
            self._send(
                AmendRequested(
                    ts_event=now,
                    ts_recv=now,
                    order_id=order_id,
                    exchange=view.exchange,
                    size=size,
                    price=price,
                ),
                view.exchange,
            )

    def _open_view(self, order_id: str, action: str) -> OrderView | None:
        """The strategy's open order, or an OrderError saying there is none."""
        view = self.orders.get(order_id)
        if view is None:
            self.emit(
                OrderError(
                    ts_event=self.now,
                    ts_recv=self.now,
                    order_id=order_id,
                    action=action,
                    state="unknown",
                    reason="no open order with this id",
                )
            )
        return view

    def _send(self, req: Event, exchange: str) -> None:
        """Journal a request and schedule its arrival at the venue."""
        self.emit(req)
        self.venue.now = self.now
        self._schedule(self.venue.arrival_time(exchange, self.now), ARRIVAL, req)

    def _from_venue(self, ev: Event) -> None:
        """A venue response: the strategy sees it at ``ev.ts_recv``."""
        self._schedule(ev.ts_recv, DELIVERY, ev)

    def _delivered(self, ev: Event) -> None:
        self.emit(ev)
        oid: str | None = getattr(ev, "order_id", None)
        view = self.orders.get(oid) if oid is not None else None
        closed = False
        if isinstance(ev, Fill):
            inst = self.instruments.get(ev.exchange, ev.symbol)
            self.portfolio.apply_fill(ev, inst)
            if view is not None:
                view.filled += ev.size
                view.state = "filled" if view.filled >= view.size else "partially_filled"
                if view.state == "filled":
                    del self.orders[ev.order_id]
                    closed = True
            if inst.kind == "perp" and inst.key not in self._funding_keys:
                self._funding_keys.add(inst.key)
                self._schedule(self._next_funding(inst), FUNDING, inst.key)
            if self.risk is not None:
                self._track_held(inst.key)
                self._risk_update()
        elif view is not None:
            if isinstance(ev, OrderAccepted):
                view.state = "accepted"
                if ev.size:
                    view.size = ev.size
            elif isinstance(ev, OrderRejected | OrderCancelled | OrderExpired):
                del self.orders[ev.order_id]
                closed = True
            elif isinstance(ev, OrderAmended):
                view.size, view.price = ev.size, ev.price
        if closed and oid is not None and self.risk is not None:
            self._kernel_order_closed(oid)
        if self.strategy is not None:
            self.strategy.on_order(self.ctx, ev)

    def _track_held(self, key: str) -> None:
        """Keep the set of held instruments whose mid moves equity (and drawdown)."""
        if self.portfolio.qty(key):
            book = self.books.get(key)
            m2 = book.mid_x2() if book is not None else None
            self._held_mids[key] = m2 if m2 is not None else 0
        else:
            self._held_mids.pop(key, None)

    def _kernel_order_closed(self, oid: str) -> None:
        assert self.risk is not None
        for table in (self._flattening, self.risk.st.rebalancing):
            for key in [k for k, o in table.items() if o == oid]:
                del table[key]
        if self.halted and self._positions():
            self._flatten("position left after a flatten order closed")

    def _next_funding(self, inst: Instrument) -> int:
        given = self.funding.get(inst.key, (0, 0))[1]
        if given > self.now:
            return given
        iv = inst.funding_interval_s * 1_000_000_000
        return (self.now // iv + 1) * iv

    def _mark(self, key: str) -> int | None:
        mark = self.marks.get(key)
        if mark is not None and mark[0] > 0:
            return mark[0]
        book = self.books.get(key)
        m2 = book.mid_x2() if book is not None else None
        return None if m2 is None else m2 // 2

    def _settle_funding(self, key: str) -> None:
        self._funding_keys.discard(key)
        qty = self.portfolio.qty(key)
        if not qty:
            return
        inst = self.instruments.by_key(key)
        rate = self.funding.get(key)
        mark = self._mark(key)
        if rate is None or mark is None:
            self.emit(
                DataQuality(
                    ts_event=self.now,
                    ts_recv=self.now,
                    rule="funding_unpriced",
                    exchange=inst.exchange,
                    symbol=inst.symbol,
                    detail=f"funding time with a position of {inst.size_text(qty)} but no "
                    f"{'funding rate' if rate is None else 'mark or mid price'} seen yet",
                    rejected=False,
                )
            )
        else:
            amount = funding_amount(qty, mark, rate[0], inst)
            self.portfolio.apply_funding(key, amount)
            self._risk_update()
            self.emit(
                FundingPayment(
                    ts_event=self.now,
                    ts_recv=self.now,
                    exchange=inst.exchange,
                    symbol=inst.symbol,
                    rate=rate[0],
                    position=qty,
                    amount=amount,
                )
            )
        self._funding_keys.add(key)
        self._schedule(self._next_funding(inst), FUNDING, key)

    def _portfolio_snapshot(self) -> None:
        marks = {}
        for pos in self.portfolio.open_positions():
            m = self._mark(pos.key)
            if m is not None:
                marks[pos.key] = m
        self.emit(self.portfolio.snapshot_event(self.now, marks, self.instruments))
        iv = self.config.portfolio.snapshot_interval_ms * 1_000_000
        self._schedule(self.now + iv, SNAPSHOT, "")

    def book(self, exchange: str, symbol: str) -> L2Book | None:
        return self.books.get(f"{exchange}:{symbol}")

    # -- risk ------------------------------------------------------------------------

    def record_decision(
        self,
        exchange: str,
        symbol: str,
        action: str,
        reasoning: str,
        strategy: str,
        features: tuple[tuple[str, float], ...] = (),
        confidence: float = 0.0,
        model_id: str = "",
    ) -> str:
        """Journal a Decision (the strategy's, through the context, or the kernel's own
        as ``risk``); returns its id. Ids are session-local (``d7``): the session stream
        makes them unique, and the state (which holds them in orders) must not depend on
        the session's id."""
        self.decisions += 1
        decision_id = f"d{self.decisions}"
        now = self.now
        self.emit(
            Decision(
                ts_event=now,
                ts_recv=now,
                decision_id=decision_id,
                strategy=strategy,
                exchange=exchange,
                symbol=symbol,
                action=action,
                reasoning=reasoning,
                features=features,
                model_id=model_id,
                confidence=confidence,
            )
        )
        return decision_id

    def _positions(self) -> dict[str, int]:
        return {k: p.qty for k, p in self.portfolio.positions.items() if p.qty}

    def equity(self) -> int:
        """Cash plus every position marked to mid (mark price, else cost basis)."""
        return self.portfolio.cash + sum(
            self._position_value(key, pos.qty, pos.cost)
            for key, pos in self.portfolio.positions.items()
            if pos.qty
        )

    def _position_value(self, key: str, qty: int, cost: int) -> int:
        """A position's signed value at its mark, or its cost basis when unmarked."""
        mark = self._mark(key)
        if mark is None:
            return cost
        v = self.instruments.by_key(key).notional(mark, abs(qty))
        return v if qty > 0 else -v

    def _risk_check(self, inst: Instrument, side: Side, size: int, price: int) -> tuple[int, str]:
        """Pre-trade risk: (approved size, refusal reason or ""); journals what it did."""
        assert self.risk is not None
        positions = self._positions()
        marks = {k: m for k in positions if (m := self._mark(k)) is not None}
        ref = price or self._mark(inst.key) or 0
        chk = self.risk.check(
            inst, 1 if side == "buy" else -1, size, ref, positions, marks, self.equity()
        )
        now = self.now
        if not chk.size:
            self.emit(
                RiskEvent(
                    ts_event=now, ts_recv=now, rule=chk.rule, level="refused", detail=chk.reason
                )
            )
            return size, chk.reason
        if chk.size != size:
            self.emit(
                RiskEvent(
                    ts_event=now,
                    ts_recv=now,
                    rule="resize",
                    level=self.risk.st.level,
                    detail=f"{inst.key} {side} {inst.size_text(size)} -> "
                    f"{inst.size_text(chk.size)}: " + "; ".join(chk.notes),
                )
            )
        return chk.size, ""

    def _mid_moved(self, key: str, m2: int) -> None:
        """The mid (x2) of a held instrument moved. Inside its band nothing can change
        (see :meth:`_rebuild_bands`); outside it, re-evaluate everything."""
        self._held_mids[key] = m2
        mark = self.marks.get(key)
        if mark is not None and mark[0] > 0:
            return  # valued at its mark price: MarkPrice events move it, not the mid
        band = self._bands.get(key)
        if band is None or not band[0] < m2 < band[1]:
            self._risk_update()

    def _rebuild_bands(self) -> None:
        """For each held instrument valued at its mid, the range of mid (x2) within which
        no drawdown breaker, new peak or position limit can be reached: the slack of
        equity to the breaker floor below and to the peak above, and the position cap,
        split evenly among the held instruments (so that all of them moving inside
        their bands together still cannot cross), with a safety margin. Only in the
        normal state; otherwise every move is evaluated."""
        bands = self._bands
        bands.clear()
        risk = self.risk
        if risk is None or risk.st.level != "normal" or self.halted or not self._use_bands:
            return
        keys = [k for k in self._held_mids if k in self._held_values and k not in self.marks]
        if not keys:
            return
        st = risk.st
        equity = self.portfolio.cash + sum(self._held_values.values())
        n = len(self._held_values)
        down = (equity - self._risk_floor) / n
        up = (st.peak - equity) / n
        cap = self._position_cap_pct / 100 * self._risk_floor
        if down <= 0 or up < 0:
            return
        if any(abs(v) > cap for v in self._held_values.values()) or st.rebalancing:
            return  # a position near its cap: a fall in equity alone could cross it
        for key in keys:
            inst = self.instruments.by_key(key)
            qty = self.portfolio.qty(key)
            if not qty:
                continue
            per_m2 = (
                abs(qty)
                * POW10[MONEY_DECIMALS]
                / POW10[inst.price_decimals + inst.size_decimals]
                / 2
            )
            v0 = self._held_values[key]
            lo_v, hi_v = max(v0 - down, -cap), min(v0 + up, cap)
            if qty > 0:
                lo, hi = lo_v / per_m2, hi_v / per_m2
            else:
                lo, hi = -hi_v / per_m2, -lo_v / per_m2
            margin = 2 + abs(hi) * 1e-9
            bands[key] = (int(lo + margin) + 1, int(hi - margin) - 1)

    def _risk_update(self) -> None:
        """Re-evaluate drawdown and position limits after equity changed."""
        risk = self.risk
        if risk is None:
            return
        self._revalue_held()
        events, stage_at = risk.on_equity(
            self.portfolio.cash + sum(self._held_values.values()), self.now
        )
        cfg = risk.cfg
        self._risk_floor = int(risk.st.peak * (100 - cfg.drawdown_half_size_pct) // 100)
        self._risk_events(events, stage_at)
        if not self.halted:
            positions = self._positions()
            marks = {k: m for k in positions if (m := self._mark(k)) is not None}
            for key, qty, why in risk.over_limit(positions, marks, risk.st.equity):
                inst = self.instruments.by_key(key)
                now = self.now
                self.emit(
                    RiskEvent(
                        ts_event=now, ts_recv=now, rule="rebalance", level="reduce", detail=why
                    )
                )
                oid = self._kernel_order(inst, "sell" if qty > 0 else "buy", abs(qty), why)
                risk.st.rebalancing[key] = oid
        self._rebuild_bands()

    def _revalue_held(self) -> None:
        """Every held position's signed value at its mark (cost basis if unmarked)."""
        values = self._held_values
        values.clear()
        for key, pos in self.portfolio.positions.items():
            if pos.qty:
                values[key] = self._position_value(key, pos.qty, pos.cost)

    def _risk_events(self, events: list[Event], stage_at: int | None) -> None:
        assert self.risk is not None
        for ev in events:
            self.emit(ev)
            if isinstance(ev, Halt):
                self._halt(ev.reason)
        if stage_at is not None:
            self._schedule(stage_at, RISK_STAGE, str(self.risk.st.generation))

    def _kernel_order(self, inst: Instrument, side: Side, size: int, why: str) -> str:
        """A reduce-only market order the kernel itself sends (flatten, rebalance)."""
        did = self.record_decision(inst.exchange, inst.symbol, side, why, "risk", confidence=1.0)
        return self.submit_order(
            inst.exchange,
            inst.symbol,
            side,
            size,
            order_type="market",
            reduce_only=True,
            decision_id=did,
            internal=True,
        )

    def _halt(self, reason: str) -> None:
        """Kill switch: cancel every order, refuse new ones, flatten every position."""
        self.halted = True
        venue = self.venue
        venue.now = self.now
        venue.halted = True
        venue.cancel_all(self.now, f"halt: {reason}")
        self._flatten(reason)

    def _flatten(self, reason: str) -> None:
        for key, qty in sorted(self._positions().items()):
            if key in self._flattening:
                continue
            inst = self.instruments.by_key(key)
            oid = self._kernel_order(
                inst, "sell" if qty > 0 else "buy", abs(qty), f"flatten on halt: {reason}"
            )
            self._flattening[key] = oid

    def _risk_sample(self) -> None:
        assert self.risk is not None
        mids: dict[str, float] = {}
        for key in sorted(self.books):
            inst = self.instruments.by_key(key)
            if inst.base in mids:
                continue
            m2 = self.books[key].mid_x2()
            if m2 is not None:
                mids[inst.base] = m2 / 2
        self.risk.sample(mids)
        self._schedule(
            self.now + self.risk.cfg.correlation_interval_ms * 1_000_000, RISK_SAMPLE, ""
        )

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
        key = f"{ev.exchange}:{ev.symbol}"
        book = self.books.get(key) or self._book_for(ev)
        if book is None:
            return
        bids, asks = ev.bids, ev.asks
        self.rows_in += len(bids) + len(asks)
        fs = self._features
        if fs is not None:
            samples = fs.due(ev, key)
            if samples:
                self._emit_samples(samples)
        try:
            if key in self._active:
                # the venue watches this instrument: it applies the delta around its own
                # queue bookkeeping (sizes before and after at our levels)
                self.venue.now = self.now
                self.venue.apply_delta(key, book, ev)
            else:
                book.apply_delta(bids, asks, ev.ts_event)
        except BookError as exc:
            self._quality(ev, exc.rule, exc.detail, True)
            return
        book.seq = ev.seq
        if fs is not None:
            fs.update(ev)
        held = self._held_mids
        if held and key in held:
            bk, ak = book.bids.keys, book.asks.keys
            if bk and ak:
                m2 = bk[-1] - ak[-1]
                if m2 != held[key]:  # the mid (x2) moved
                    band = self._bands.get(key)
                    if band is not None and band[0] < m2 < band[1]:
                        held[key] = m2  # inside its quiet band: nothing can change
                    else:
                        self._mid_moved(key, m2)
        on_market = self._on_market
        if on_market is not None:
            on_market(self.ctx, ev)

    def _on_snapshot(self, ev: BookSnapshot) -> None:
        book = self._book_for(ev)
        if book is None:
            return
        self.rows_in += len(ev.bids) + len(ev.asks)
        fs = self._features
        if fs is not None:
            samples = fs.due(ev)
            if samples:
                self._emit_samples(samples)
        try:
            book.apply_snapshot(ev.bids, ev.asks, ev.ts_event)
        except BookError as exc:
            self._quality(ev, exc.rule, exc.detail, True)
            return
        book.seq = ev.seq
        if fs is not None:
            fs.update(ev)
        key = f"{ev.exchange}:{ev.symbol}"
        if key in self._active:
            self.venue.now = self.now
            self.venue.on_snapshot(key, ev.ts_event)
        if key in self._held_mids:
            m2 = book.mid_x2()
            if m2 is not None and m2 != self._held_mids[key]:
                self._mid_moved(key, m2)
        if self._on_market is not None:
            self._on_market(self.ctx, ev)

    def _on_trade(self, ev: Trade) -> None:
        self.rows_in += 1
        if ev.size <= 0 or ev.price <= 0:
            self._quality(ev, "bad_trade", f"price {ev.price} size {ev.size}", True)
            return
        key = f"{ev.exchange}:{ev.symbol}"
        self.last_trades[key] = ev
        fs = self._features
        if fs is not None:
            samples = fs.due(ev, key)
            if samples:
                self._emit_samples(samples)
            fs.update(ev)
        trades = self._trades
        if trades is not None and key in self.instruments:
            trades.add(ev)
        if key in self._active:
            self.venue.now = self.now
            self.venue.on_trade(key, ev)
        if self._on_market is not None:
            self._on_market(self.ctx, ev)

    def _on_funding(self, ev: FundingRate) -> None:
        self.rows_in += 1
        self.funding[f"{ev.exchange}:{ev.symbol}"] = (ev.rate, ev.next_funding_ts)
        if self._on_market is not None:
            self._on_market(self.ctx, ev)

    def _on_mark(self, ev: MarkPrice) -> None:
        self.rows_in += 1
        key = f"{ev.exchange}:{ev.symbol}"
        self.marks[key] = (ev.mark_price, ev.index_price)
        if key in self._held_mids:
            self._risk_update()
        if self._on_market is not None:
            self._on_market(self.ctx, ev)

    def _on_halt(self, ev: Halt) -> None:
        self._halt(ev.reason)

    def _on_resume(self, ev: Resume) -> None:
        self.halted = False
        self.venue.halted = False
        self._flattening.clear()
        if self.risk is not None and self.risk.st.level == "halted":
            self._risk_events(*self.risk.resume(self.equity(), self.now))

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

    def _validate(self, validator: Validator, event: Event) -> bool:
        """Run the validation rules on one input; journal their findings; False when
        the event is rejected (it is then counted and not applied)."""
        book = (
            self.books.get(f"{event.exchange}:{event.symbol}")
            if isinstance(event, MarketEvent)
            else None
        )
        accept, findings = validator.check(event, book)
        if findings:
            self._out.extend(findings)
        if not accept:
            self.rejected += 1
        return accept

    def _advance(self, up_to: int) -> None:
        sched = self._sched
        while sched and sched[0][0] <= up_to:
            at, _, kind, data = heapq.heappop(sched)
            if at > self.now:
                self.now = at
            if kind == DELIVERY:
                self._delivered(data)  # type: ignore[arg-type]
            elif kind == ARRIVAL:
                self.venue.now = self.now
                self.venue.arrive(data, at)  # type: ignore[arg-type]
            elif kind == TIMER:
                if self.strategy is not None:
                    self.strategy.on_timer(self.ctx, data)  # type: ignore[arg-type]
            elif kind == FUNDING:
                self._settle_funding(data)  # type: ignore[arg-type]
            elif kind == SNAPSHOT:
                self._portfolio_snapshot()
            elif kind == RISK_STAGE and self.risk is not None:
                self._risk_events(*self.risk.on_stage_timer(int(str(data)), self.now))
            elif kind == RISK_SAMPLE and self.risk is not None:
                self._risk_sample()

    def _spend(self) -> bool:
        """One strategy action (decision, order, cancel, amend) out of the per-input
        budget ``max_decisions_per_event``; False (and counted) when it is used up."""
        if self._budget > 0:
            self._budget -= 1
            return True
        self._refused += 1
        return False

    def _drain(self) -> tuple[Event, ...]:
        out = self._out
        limit = self.config.max_decisions_per_event
        self._budget = limit
        if self._refused:
            # A runaway strategy must not flood the journal; what was refused is recorded.
            out.append(
                DataQuality(
                    ts_event=self.now,
                    ts_recv=self.now,
                    rule="output_limit",
                    exchange="",
                    symbol="",
                    detail=f"{self._refused} strategy actions refused over "
                    f"max_decisions_per_event={limit}",
                    rejected=True,
                )
            )
            self._refused = 0
        if self.alerts is not None and out:
            out.extend(self.alerts.scan(out, self.now))
        self._out = []
        self.outputs += len(out)
        return tuple(out)

    # -- state -----------------------------------------------------------------------

    def _state(self) -> EngineState:
        books = []
        for key in sorted(self.books):
            b = self.books[key]
            bids, asks = b.canonical()
            books.append((key, b.ts_event, b.seq, bids, asks))
        extra: dict[str, bytes] = {}
        cls = EngineState
        if self._trades is not None:
            cls = EngineStateWithTrades
            extra["trade_windows"] = self._trades.snapshot()
        if self.validator is not None:
            cls = EngineStateValidated
            extra["trade_windows"] = extra.get("trade_windows", b"")
            extra["validator"] = self.validator.snapshot()
        if self._features is not None:
            cls = EngineStateWithFeatures
            extra["trade_windows"] = extra.get("trade_windows", b"")
            extra["validator"] = extra.get("validator", b"")
            extra["features"] = self._features.snapshot()
        if self.alerts is not None:
            cls = EngineStateWithAlerts
            for name in ("trade_windows", "validator", "features"):
                extra[name] = extra.get(name, b"")
            extra["alerts"] = self.alerts.snapshot()
        return cls(
            version=STATE_VERSION,
            now=self.now,
            events_in=self.events_in,
            rows_in=self.rows_in,
            outputs=self.outputs,
            decisions=self.decisions,
            rejected=self.rejected,
            halted=self.halted,
            timer_seq=self._timer_seq,
            sched=[(t, q, k, _sched_bytes(k, d)) for t, q, k, d in sorted(self._sched)],
            books=books,
            last_trades=[(k, encode(self.last_trades[k])) for k in sorted(self.last_trades)],
            funding=[(k, *self.funding[k]) for k in sorted(self.funding)],
            marks=[(k, *self.marks[k]) for k in sorted(self.marks)],
            rng_state=msgspec.json.encode(self.rng.bit_generator.state, order="sorted").decode(),
            strategy_state=self.strategy.snapshot_state() if self.strategy is not None else b"",
            order_seq=self._order_seq,
            orders=[self.orders[k] for k in sorted(self.orders)],
            funding_keys=sorted(self._funding_keys),
            snapshots_on=self._snapshots_on,
            venue=self.venue.state(),
            portfolio=self.portfolio.state(),
            risk=self.risk.st if self.risk is not None else None,
            held_mids=sorted(self._held_mids.items()),
            flattening=sorted(self._flattening.items()),
            **extra,
        )

    def snapshot(self) -> bytes:
        """The whole state as bytes; :meth:`restore` on an engine built with the same
        config, instruments and strategy class continues exactly where this one was."""
        return msgspec.msgpack.encode(self._state())

    def state_hash(self) -> str:
        """Hex blake2b-256 of :meth:`snapshot`: equal states, equal hashes."""
        return hashlib.blake2b(self.snapshot(), digest_size=32).hexdigest()

    def restore(self, snapshot: bytes) -> None:
        st = msgspec.msgpack.decode(snapshot, type=EngineStateWithAlerts)
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
        self._sched = [(t, q, k, _sched_data(k, d)) for t, q, k, d in st.sched]
        heapq.heapify(self._sched)
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
            assert isinstance(tr, Trade)
            self.last_trades[key] = tr
        self.funding = {k: (r, n) for k, r, n in st.funding}
        self.marks = {k: (m, i) for k, m, i in st.marks}
        self.rng.bit_generator.state = msgspec.json.decode(st.rng_state)
        if self.strategy is not None:
            self.strategy.restore_state(st.strategy_state)
        self._order_seq = st.order_seq
        self.orders = {o.order_id: o for o in st.orders}
        self._funding_keys = set(st.funding_keys)
        self._snapshots_on = st.snapshots_on
        self.portfolio.restore(st.portfolio)
        self.venue.books = self.books
        self.venue.restore(st.venue)
        if self.risk is not None and st.risk is not None:
            self.risk.st = st.risk
        self._held_mids = dict(st.held_mids)
        self._flattening = dict(st.flattening)
        self._trades = None
        if st.trade_windows:
            self.trade_windows().restore_bytes(st.trade_windows)
        if self.validator is not None:
            if not st.validator:
                raise ValueError("snapshot has no validator state but validation is on")
            self.validator.restore(st.validator)
        if st.features:
            self._features = None
            self.features_on().restore_bytes(st.features)
        elif self._features is not None:
            self._features = FeatureSet(self._features.config, books=self.books)
        if self.alerts is not None:
            if not st.alerts:
                raise ValueError("snapshot has no alert state but alerts are on")
            self.alerts.restore(st.alerts)

        if self.risk is not None:
            self._revalue_held()
            self._bands.clear()  # every move re-evaluates until the next full update
            peak = self.risk.st.peak
            self._risk_floor = int(peak * (100 - self.risk.cfg.drawdown_half_size_pct) // 100)
        self.venue.halted = self.halted
        self._active = self.venue.active
        self._started = True


_ALERT_INPUTS = frozenset({Connectivity, Halt, Resume})


def _ignore(event: Event) -> None:
    return None


def _sched_bytes(kind: int, data: object) -> bytes:
    if kind in (ARRIVAL, DELIVERY):
        return encode(data)  # type: ignore[arg-type]
    return str(data).encode()


def _sched_data(kind: int, data: bytes) -> object:
    if kind in (ARRIVAL, DELIVERY):
        return decode(data)
    return data.decode()
