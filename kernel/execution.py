"""The simulated venue: order matching against the recorded market, pure and seeded.

The engine owns one :class:`Venue`. Orders travel from the strategy to the venue with
an *entry* latency and every venue response (ack, fill, cancel) travels back with a
*response* latency, both drawn from the exchange's :class:`LatencyProfile` with the
venue's own generator (seeded from the session seed). Messages on one exchange's
connection stay in order (a later response is never seen before an earlier one).

Clocks. The venue stamps what it does with venue time: an order's arrival time, or the
exchange time (``ts_event``) of the market event that caused a fill. The strategy sees
responses at local time ``venue time + response latency``. The kernel processes an
arrival once every input received (``ts_recv``) up to the arrival time has been
folded; a market message already sent by the exchange but still in flight on the
feed is folded after it (the error is bounded by the feed's latency).

Matching rules (documented, tested, and what ``tickerml scenario`` pins):

* Market orders walk the opposite side level by level from the best price; each level
  gives one taker ``Fill``. What is left when the book runs out expires.
* Limit orders take what crosses at or better than their price (taker fills), then
  GTC rests, IOC expires the rest, FOK expires whole unless all of it can fill,
  POST_ONLY is rejected if it would take.
* Own fills deplete liquidity. Taker fills remove what they took from the venue's
  view of the level (an overlay on the market book), so the same displayed liquidity
  never fills two orders. *Reconciliation*: the next market update that touches that
  price (a delta naming it, or a snapshot) replaces the level, and the overlay there
  is dropped: the market's own updates are the truth again.
* Queue position (FIFO). A resting order joins behind the displayed size at its price
  (``queue_ahead``). A trade at our price consumes the queue front to back: first the
  size ahead of us, then us, then what is behind us; own orders at the same level are
  served in arrival order and one trade's volume fills them only once. A trade through
  our price (a sell below our bid) fills us completely. A size decrease of our level
  that trades do not explain is a cancel, which moves us up per the queue model
  (``risk_averse``: ahead = min(ahead, level size); ``power`` / ``log``: the expected
  share of the cancel that was ahead of us). Increases join behind us.
* Book through: when the market's opposite best price reaches our resting price (an
  ask at or below our bid), the queue at our price is gone and we fill completely.
* Stop-loss / take-profit orders wait at the venue until their trigger holds on the
  last trade price or on the mid (``trigger_source``), then act as market orders
  (price 0) or limit orders (price set).
* Amend: size down at the same price keeps priority; a price change or size up loses
  it (the order re-joins the end of the queue at its new price).
* Square-root impact: a taker order of Q base units costs
  ``Y * sigma_daily * sqrt(Q / ADV)`` (in bp of its notional) plus the impact still in
  effect from our earlier taker orders (signed: our buys make later buys dearer and
  later sells cheaper). A fraction stays (permanent); the rest decays with a
  half-life. The cost is charged per fill (``Fill.impact_cost``); fill prices stay on
  the book's ticks. Maker fills carry no impact.
* Fees: the instrument's maker/taker rates on each fill's notional.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import msgspec
import numpy as np

from kernel.book import BookSide, L2Book
from kernel.config import ExecutionConfig, LatencyProfile
from kernel.events import (
    AmendRequested,
    BookDelta,
    CancelRequested,
    Event,
    Fill,
    FillToxic,
    OrderAccepted,
    OrderAmended,
    OrderCancelled,
    OrderError,
    OrderExpired,
    OrderRejected,
    OrderSubmitted,
    OrderTriggered,
    Side,
    Trade,
)
from kernel.fixedpoint import POW10, apply_rate_ppm, notional
from kernel.instruments import Instrument, InstrumentError, InstrumentRegistry
from kernel.portfolio import Portfolio

ALLOWED_TRANSITIONS: dict[str, frozenset[str]] = {
    "submitted": frozenset({"accepted", "rejected"}),
    "accepted": frozenset({"partially_filled", "filled", "cancelled", "expired"}),
    "partially_filled": frozenset({"partially_filled", "filled", "cancelled", "expired"}),
    "filled": frozenset(),
    "cancelled": frozenset(),
    "rejected": frozenset(),
    "expired": frozenset(),
}

NS_PER_MS = 1_000_000
BP = 10_000.0


def sqrt_impact_bp(q: float, adv: float, sigma_daily: float, y: float) -> float:
    """Square-root market impact in basis points: ``Y * sigma_daily * sqrt(Q / ADV)``.

    >>> round(sqrt_impact_bp(100, 10_000, 0.03, 0.7), 9)
    21.0
    """
    if q <= 0:
        return 0.0
    return y * sigma_daily * math.sqrt(q / adv) * BP


def lognormal_params(mean: float, std: float) -> tuple[float, float]:
    """(mu, sigma) of the log-normal whose own mean and standard deviation are given."""
    if mean <= 0:
        return (-math.inf, 0.0)
    s2 = math.log1p((std / mean) ** 2)
    return math.log(mean) - s2 / 2, math.sqrt(s2)


class LatencyModel:
    """Draws entry and response delays (ns) for one exchange."""

    __slots__ = ("_entry", "_resp", "constant", "profile", "rng")

    def __init__(self, profile: LatencyProfile, rng: np.random.Generator) -> None:
        self.profile = profile
        self.rng = rng
        self.constant = profile.model == "constant"
        self._entry = lognormal_params(profile.entry_mean_ms, profile.entry_std_ms)
        self._resp = lognormal_params(profile.response_mean_ms, profile.response_std_ms)

    def _draw(self, mean: float, params: tuple[float, float]) -> int:
        p = self.profile
        if self.constant:
            return round(mean * NS_PER_MS)
        mu, sigma = params
        ms = float(self.rng.lognormal(mu, sigma)) if mean > 0 else 0.0
        if p.spike_probability > 0 and float(self.rng.random()) < p.spike_probability:
            ms *= p.spike_multiplier
        return round(ms * NS_PER_MS)

    def entry_ns(self) -> int:
        return self._draw(self.profile.entry_mean_ms, self._entry)

    def response_ns(self) -> int:
        return self._draw(self.profile.response_mean_ms, self._resp)


class SimOrder(msgspec.Struct, array_like=True):
    """An order as the venue knows it. ``side`` is +1 buy / -1 sell; ``ahead`` the
    displayed size ahead of it in the queue; ``traded`` trade volume at its price since
    the level's last depth update (so the update's decrease is not counted twice)."""

    order_id: str
    key: str
    side: int
    order_type: str
    tif: str
    price: int
    trigger_price: int
    size: int
    ts_submit: int
    filled: int = 0
    state: str = "submitted"
    ahead: int = 0
    ahead_at_place: int = 0
    traded: int = 0
    resting: bool = False
    fills: int = 0
    reduce_only: bool = False
    decision_id: str = ""
    clipped: bool = False

    @property
    def remaining(self) -> int:
        return self.size - self.filled


class Watch(msgspec.Struct, array_like=True):
    """A fill being watched for an adverse move of the mid within the toxic window."""

    key: str
    fill_id: str
    order_id: str
    side: int
    mid_x2: int
    deadline: int


class VenueState(msgspec.Struct, array_like=True):
    """The venue, canonically ordered. ``queues`` keeps arrival order at each level
    (key, side, price, order ids) and ``stops`` the order stops are checked in."""

    orders: list[SimOrder]
    queues: list[tuple[str, int, int, list[str]]]
    stops: list[tuple[str, list[str]]]
    taken: list[tuple[str, int, int, int]]
    impact: list[tuple[str, float, float, int]]
    watches: list[Watch]
    last_in: list[tuple[str, int]]
    last_out: list[tuple[str, int]]
    fills: int
    rng_state: str


Deliver = Callable[[Event], None]


class Venue:
    """The simulated exchanges. ``deliver(event)`` hands a response to the engine, which
    shows it to the strategy at ``event.ts_recv``."""

    def __init__(
        self,
        config: ExecutionConfig,
        latency: dict[str, LatencyProfile],
        books: dict[str, L2Book],
        instruments: InstrumentRegistry,
        portfolio: Portfolio,
        deliver: Deliver,
        seed: int,
    ) -> None:
        self.cfg = config
        self.books = books
        self.instruments = instruments
        self.portfolio = portfolio
        self.deliver = deliver
        self.rng = np.random.Generator(np.random.PCG64([seed, 0x76656E7565]))
        self._latency_cfg = latency
        self._latency: dict[str, LatencyModel] = {}
        self.orders: dict[str, SimOrder] = {}
        # key -> (bid levels, ask levels): price -> resting orders in arrival order
        self.resting: dict[str, tuple[dict[int, list[SimOrder]], dict[int, list[SimOrder]]]] = {}
        # key -> (highest resting bid, lowest resting ask): where a new far-side level
        # would be a book-through
        self.bounds: dict[str, tuple[int | None, int | None]] = {}
        self.stops: dict[str, list[SimOrder]] = {}
        # key -> (bids, asks): price -> size our taker fills removed from that level
        self.taken: dict[str, tuple[dict[int, int], dict[int, int]]] = {}
        # key -> (permanent bp, temporary bp, temporary as of ns); signed (+ = up)
        self.impact: dict[str, tuple[float, float, int]] = {}
        self.watches: dict[str, list[Watch]] = {}
        self._gates: dict[str, tuple[int, float, float]] = {}
        self.active: set[str] = set()
        self.last_in: dict[str, int] = {}
        self.last_out: dict[str, int] = {}
        self.fills = 0
        self.now = 0
        self.halted = False  # kill switch: only reduce-only orders are accepted
        q = config.queue_model
        self._queue_f: Callable[[float], float] | None = (
            None
            if q == "risk_averse"
            else (lambda x, n=config.queue_power: x**n)
            if q == "power"
            else math.log1p
        )

    # -- latency ---------------------------------------------------------------------

    def latency_profile(self, exchange: str) -> LatencyProfile:
        """The configured latency profile of a venue (the default one if none)."""
        return self._latency_cfg.get(exchange) or LatencyProfile()

    def latency(self, exchange: str) -> LatencyModel:
        m = self._latency.get(exchange)
        if m is None:
            profile = self._latency_cfg.get(exchange) or LatencyProfile()
            m = self._latency[exchange] = LatencyModel(profile, self.rng)
        return m

    def arrival_time(self, exchange: str, sent_at: int) -> int:
        """When a request sent at local ``sent_at`` reaches the venue (FIFO per exchange)."""
        t = max(sent_at + self.latency(exchange).entry_ns(), self.last_in.get(exchange, 0))
        self.last_in[exchange] = t
        return t

    def _response_time(self, exchange: str, venue_t: int) -> int:
        t = max(
            venue_t + self.latency(exchange).response_ns(),
            self.last_out.get(exchange, 0),
            self.now,
        )
        self.last_out[exchange] = t
        return t

    # -- requests arriving at the venue -------------------------------------------------

    def arrive(self, req: Event, t: int) -> None:
        """Process a strategy request at venue time ``t``."""
        if isinstance(req, OrderSubmitted):
            self._new_order(req, t)
        elif isinstance(req, CancelRequested):
            self._cancel(req, t)
        elif isinstance(req, AmendRequested):
            self._amend(req, t)

    def _new_order(self, req: OrderSubmitted, t: int) -> None:
        key = f"{req.exchange}:{req.symbol}"
        tr = self._response_time(req.exchange, t)
        side = 1 if req.side == "buy" else -1
        o = SimOrder(
            order_id=req.order_id,
            key=key,
            side=side,
            order_type=req.order_type,
            tif=req.time_in_force,
            price=req.price,
            trigger_price=req.trigger_price,
            size=req.size,
            ts_submit=req.ts_recv,
            reduce_only=req.reduce_only,
            decision_id=req.decision_id,
        )
        try:
            inst = self.instruments.by_key(key)
        except InstrumentError:
            self._reject(o, t, tr, f"unknown instrument {key}")
            return
        reason = self._check_new(o, inst)
        if not reason and self.halted and not o.reduce_only:
            reason = "halted: kill switch on (an order in flight when the halt came)"
        if reason:
            self._reject(o, t, tr, reason)
            return
        book = self.books.get(key)
        if o.order_type in ("stop_loss", "take_profit"):
            self._transition(o, "accepted", t, tr)
            self.orders[o.order_id] = o
            self.deliver(
                OrderAccepted(
                    ts_event=t, ts_recv=tr, order_id=o.order_id, size=o.size if o.clipped else 0
                )
            )
            self.stops.setdefault(key, []).append(o)
            self.active.add(key)
            ref = self._trigger_ref(key)
            if ref is not None:
                self._check_stops(key, ref, t, tr)
            return
        if o.order_type == "limit" and o.tif == "POST_ONLY" and book is not None:
            best = self._effective_best(key, book, -side)
            if best is not None and (o.price >= best if side > 0 else o.price <= best):
                self._reject(o, t, tr, f"post_only_would_cross: best opposite {best}")
                return
        if o.order_type == "market" and (
            book is None or not (book.asks if side > 0 else book.bids)
        ):
            self._reject(o, t, tr, "no_liquidity: the opposite side of the book is empty")
            return
        self.orders[o.order_id] = o
        self._transition(o, "accepted", t, tr)
        if o.order_type == "market":
            self.deliver(
                OrderAccepted(
                    ts_event=t, ts_recv=tr, order_id=o.order_id, size=o.size if o.clipped else 0
                )
            )
            self._take(o, inst, None, t, tr)
            self._finish_aggressive(o, t, tr)
        else:
            self._place_limit(o, inst, t, tr, ack=True)

    def _check_new(self, o: SimOrder, inst: Instrument) -> str:
        if o.size <= 0:
            return f"size {o.size} must be > 0"
        if o.size % inst.lot_size:
            return f"size {inst.size_text(o.size)} is not a multiple of the lot"
        if o.order_type == "limit" and o.price <= 0:
            return "a limit order needs a price > 0"
        if o.order_type == "market" and o.price:
            return "a market order takes no price"
        if o.order_type in ("stop_loss", "take_profit") and o.trigger_price <= 0:
            return f"a {o.order_type} order needs a trigger_price > 0"
        for p in (o.price, o.trigger_price):
            if p % inst.tick_size:
                return f"price {inst.price_text(p)} is not a multiple of the tick"
        ref = o.price or o.trigger_price or self._touch(o.key, -o.side)
        if ref and inst.min_notional and inst.notional(ref, o.size) < inst.min_notional:
            return (
                f"min_notional: {inst.price_text(ref)} x {inst.size_text(o.size)} is under "
                f"{inst.min_notional / 1e8:g} {inst.quote}"
            )
        held = self.portfolio.qty(o.key)
        if o.reduce_only:
            if held == 0 or (held > 0) == (o.side > 0):
                return (
                    f"reduce_only: position {inst.size_text(held)} cannot be reduced by this order"
                )
            if o.size > abs(held):
                o.size = abs(held)  # clipped to the position, as venues do for reduce-only
                o.clipped = True
        if inst.kind == "spot" and o.side < 0:
            committed = sum(
                x.remaining for x in self.orders.values() if x.key == o.key and x.side < 0
            )
            if o.size + committed > held:
                return (
                    f"insufficient_position: selling {inst.size_text(o.size)} with "
                    f"{inst.size_text(held - committed)} available (spot cannot go short)"
                )
        if inst.kind == "spot" and o.side > 0 and ref:
            cost = inst.notional(ref, o.size)
            cost += apply_rate_ppm(cost, max(inst.taker_fee_ppm, inst.maker_fee_ppm, 0))
            if cost > self.portfolio.cash:
                return (
                    f"insufficient_balance: needs {cost / 1e8:.2f} {inst.quote}, "
                    f"cash {self.portfolio.cash / 1e8:.2f}"
                )
        return ""

    def _reject(self, o: SimOrder, t: int, tr: int, reason: str) -> None:
        o.state = "rejected"
        self.deliver(OrderRejected(ts_event=t, ts_recv=tr, order_id=o.order_id, reason=reason))

    def _place_limit(self, o: SimOrder, inst: Instrument, t: int, tr: int, ack: bool) -> None:
        """A limit order at the venue: take what crosses, then rest / expire per TIF."""
        book = self.books.get(o.key)
        marketable = False
        if book is not None:
            best = self._effective_best(o.key, book, -o.side)
            marketable = best is not None and (best <= o.price if o.side > 0 else best >= o.price)
        if o.tif == "FOK" and (
            not marketable or self._available(o.key, book, o.side, o.price) < o.remaining
        ):
            if ack:
                self.deliver(
                    OrderAccepted(
                        ts_event=t, ts_recv=tr, order_id=o.order_id, size=o.size if o.clipped else 0
                    )
                )
            self._expire(o, t, tr)
            return
        rests = o.tif in ("GTC", "POST_ONLY")
        if not marketable and rests:
            self._join(o, book, t)
            if ack:
                self.deliver(
                    OrderAccepted(ts_event=t, ts_recv=tr, order_id=o.order_id, queue_ahead=o.ahead)
                )
            return
        if ack:
            self.deliver(
                OrderAccepted(
                    ts_event=t, ts_recv=tr, order_id=o.order_id, size=o.size if o.clipped else 0
                )
            )
        if marketable:
            self._take(o, inst, o.price, t, tr)
        if o.remaining and rests:
            self._join(o, book, t)
        else:
            self._finish_aggressive(o, t, tr)

    def _finish_aggressive(self, o: SimOrder, t: int, tr: int) -> None:
        if o.remaining:
            self._expire(o, t, tr)
        else:
            self._remove(o)

    def _expire(self, o: SimOrder, t: int, tr: int) -> None:
        if self._transition(o, "expired", t, tr):
            self.deliver(
                OrderExpired(ts_event=t, ts_recv=tr, order_id=o.order_id, remaining=o.remaining)
            )
        self._remove(o)

    def _cancel(self, req: CancelRequested, t: int) -> None:
        o = self.orders.get(req.order_id)
        tr = self._response_time(req.exchange, t)
        if o is None:
            self.deliver(
                OrderError(
                    ts_event=t,
                    ts_recv=tr,
                    order_id=req.order_id,
                    action="cancel",
                    state="closed",
                    reason="unknown order, or already filled, cancelled or expired",
                )
            )
            return
        if self._transition(o, "cancelled", t, tr):
            self.deliver(
                OrderCancelled(
                    ts_event=t,
                    ts_recv=tr,
                    order_id=o.order_id,
                    reason=req.reason,
                    remaining=o.remaining,
                )
            )
            self._remove(o)

    def cancel_all(self, t: int, reason: str) -> None:
        """Kill switch: cancel every open order at once (cancel-on-disconnect)."""
        for oid in sorted(self.orders):
            ex = self._exchange_of(self.orders[oid])
            self._cancel(
                CancelRequested(ts_event=t, ts_recv=t, order_id=oid, exchange=ex, reason=reason), t
            )

    def _amend(self, req: AmendRequested, t: int) -> None:
        o = self.orders.get(req.order_id)
        tr = self._response_time(req.exchange, t)
        if o is None or o.order_type not in ("limit", "stop_loss", "take_profit"):
            self.deliver(
                OrderError(
                    ts_event=t,
                    ts_recv=tr,
                    order_id=req.order_id,
                    action="amend",
                    state="closed" if o is None else o.state,
                    reason="unknown or closed order"
                    if o is None
                    else "only limit and stop orders can be amended",
                )
            )
            return
        inst = self.instruments.by_key(o.key)
        new_size = req.size or o.size
        new_price = req.price or o.price
        problem = ""
        if new_size <= o.filled:
            problem = f"new size {inst.size_text(new_size)} <= filled {inst.size_text(o.filled)}"
        elif new_size % inst.lot_size or new_price % inst.tick_size:
            problem = "new size or price off the lot/tick"
        elif o.order_type == "limit" and new_price <= 0:
            problem = "price must be > 0"
        if problem:
            self.deliver(
                OrderError(
                    ts_event=t,
                    ts_recv=tr,
                    order_id=o.order_id,
                    action="amend",
                    state=o.state,
                    reason=problem,
                )
            )
            return
        keep = new_price == o.price and new_size <= o.size
        requeue = o.order_type == "limit" and o.resting and not keep
        crosses = False
        o.size, o.price = new_size, new_price
        if requeue:
            self._unrest(o)
            book = self.books.get(o.key)
            best = None if book is None else self._effective_best(o.key, book, -o.side)
            crosses = best is not None and (best <= o.price if o.side > 0 else best >= o.price)
            if not crosses:
                self._join(o, book, t)
        self.deliver(
            OrderAmended(
                ts_event=t,
                ts_recv=tr,
                order_id=o.order_id,
                size=new_size,
                price=new_price,
                priority_kept=keep,
                queue_ahead=o.ahead,
            )
        )
        if crosses:
            self._take(o, inst, o.price, t, tr)
            if o.remaining:
                self._join(o, book, t)

    # -- market events ---------------------------------------------------------------

    def apply_delta(self, key: str, book: L2Book, ev: BookDelta) -> None:
        """Apply a market delta to ``book`` (raises BookError, nothing changed, if it is
        invalid) and update queues, depletion, book-through fills, mid-triggered stops
        and toxicity watches for our orders on this instrument. The hot path of a
        replay with orders: it tests the cheap conditions first."""
        lv = self.resting.get(key)
        prev: list[tuple[int, int, int]] | None = None
        through = False
        if lv is not None:
            bids, asks = lv
            high_bid, low_ask = self.bounds[key]
            for p, sz in ev.bids:
                if p in bids:
                    item = (1, p, book.bids.sizes.get(p, 0))
                    prev = [item] if prev is None else [*prev, item]
                elif sz and low_ask is not None and p >= low_ask:
                    through = True  # a bid at or above our ask: book through
            for p, sz in ev.asks:
                if p in asks:
                    item = (-1, p, book.asks.sizes.get(p, 0))
                    prev = [item] if prev is None else [*prev, item]
                elif sz and high_bid is not None and p <= high_bid:
                    through = True
        book.apply_delta(ev.bids, ev.asks, ev.ts_event)
        t = ev.ts_event
        if self.taken:
            tk = self.taken.get(key)
            if tk is not None:
                for p, _ in ev.bids:
                    tk[0].pop(p, None)
                for p, _ in ev.asks:
                    tk[1].pop(p, None)
                if not tk[0] and not tk[1]:
                    del self.taken[key]
                    self._tidy(key)
        if lv is not None:
            if prev is not None:
                bsz, asz = book.bids.sizes, book.asks.sizes
                for side, p, before in prev:
                    orders = lv[0 if side > 0 else 1].get(p)
                    if orders:
                        self._depth_change(orders, before, (bsz if side > 0 else asz).get(p, 0))
            # the far side reaching our price can only come from a new level there
            if through and self.cfg.book_through_fills:
                self._book_through(key, book, t)
        if self.stops and key in self.stops and self.cfg.trigger_source == "mid":
            m2 = book.mid_x2()
            if m2 is not None:
                self._check_stops(key, m2 // 2, t, None)
        if self._gates:
            gate = self._gates.get(key)
            if gate is not None:
                if t > gate[0]:
                    self._check_watches(key, book, t)
                else:
                    bk, ak = book.bids.keys, book.asks.keys
                    if bk and ak and not gate[1] < bk[-1] - ak[-1] < gate[2]:
                        self._check_watches(key, book, t)

    def on_snapshot(self, key: str, t: int) -> None:
        self.taken.pop(key, None)
        book = self.books[key]
        lv = self.resting.get(key)
        if lv is not None:
            for side_levels, side in ((lv[0], book.bids), (lv[1], book.asks)):
                for p, orders in side_levels.items():
                    size = side.size_at(p)
                    for o in orders:
                        o.ahead = min(o.ahead, size)
                        o.traded = 0
        self._after_book(key, book, t)

    def _after_book(self, key: str, book: L2Book, t: int) -> None:
        """After a snapshot: everything that a whole new book can set off."""
        if self.cfg.book_through_fills and key in self.resting:
            self._book_through(key, book, t)
        if key in self.stops and self.cfg.trigger_source == "mid":
            m2 = book.mid_x2()
            if m2 is not None:
                self._check_stops(key, m2 // 2, t, None)
        if key in self.watches:
            self._check_watches(key, book, t)

    def on_trade(self, key: str, ev: Trade) -> None:
        t = ev.ts_event
        lv = self.resting.get(key)
        if lv is not None:
            inst = self.instruments.by_key(key)
            if ev.side == "sell":  # hits bids at or above the print
                levels = lv[0]
                hit = sorted((p for p in levels if p >= ev.price), reverse=True)
            else:
                levels = lv[1]
                hit = sorted(p for p in levels if p <= ev.price)
            for p in hit:
                orders = levels[p]
                if p != ev.price:  # traded through our price: the whole level went
                    for o in list(orders):
                        self._fill(o, inst, p, o.remaining, "maker", t, None, 0, 0.0)
                else:
                    self._queue_trade(orders, inst, ev.size, t)
        if key in self.stops and self.cfg.trigger_source == "trade":
            self._check_stops(key, ev.price, t, None)

    # -- queue -----------------------------------------------------------------------

    def _queue_trade(self, orders: list[SimOrder], inst: Instrument, volume: int, t: int) -> None:
        """A trade of ``volume`` at our level: front to back, each unit once."""
        own = 0
        for o in list(orders):
            o.traded += volume
            reach = volume - own  # the part of the trade that reached o's queue segment
            if reach <= o.ahead:
                o.ahead -= reach
                continue
            excess = reach - o.ahead
            o.ahead = 0
            q = min(o.remaining, excess)
            own += q
            self._fill(o, inst, o.price, q, "maker", t, None, 0, 0.0)

    def _depth_change(self, orders: list[SimOrder], before: int, after: int) -> None:
        f = self._queue_f
        for o in orders:
            explained = o.traded
            o.traded = 0
            cancelled = before - after - explained
            if cancelled > 0 and f is not None and o.ahead > 0:
                front = o.ahead
                back = max(before - explained - front, 0)
                ff, fb = f(float(front)), f(float(back))
                share = ff / (ff + fb) if ff + fb > 0 else 0.0
                o.ahead = max(0, front - round(cancelled * share))
            if o.ahead > after:
                o.ahead = after

    def _join(self, o: SimOrder, book: L2Book | None, t: int) -> None:
        side_idx = 0 if o.side > 0 else 1
        displayed = 0
        if book is not None:
            displayed = (book.bids if o.side > 0 else book.asks).size_at(o.price)
            tk = self.taken.get(o.key)
            if tk is not None:
                displayed = max(0, displayed - tk[side_idx].get(o.price, 0))
        o.ahead = o.ahead_at_place = displayed
        o.traded = 0
        o.resting = True
        lv = self.resting.get(o.key)
        if lv is None:
            lv = self.resting[o.key] = ({}, {})
        lv[side_idx].setdefault(o.price, []).append(o)
        self._bound(o.key)
        self.active.add(o.key)

    def _unrest(self, o: SimOrder) -> None:
        if not o.resting:
            return
        o.resting = False
        lv = self.resting.get(o.key)
        if lv is None:
            return
        levels = lv[0 if o.side > 0 else 1]
        orders = levels.get(o.price)
        if orders is not None:
            orders.remove(o)
            if not orders:
                del levels[o.price]
        if not lv[0] and not lv[1]:
            del self.resting[o.key]
        self._bound(o.key)

    def _bound(self, key: str) -> None:
        lv = self.resting.get(key)
        if lv is None:
            self.bounds.pop(key, None)
        else:
            self.bounds[key] = (max(lv[0]) if lv[0] else None, min(lv[1]) if lv[1] else None)

    def _remove(self, o: SimOrder) -> None:
        self._unrest(o)
        stops = self.stops.get(o.key)
        if stops is not None and o in stops:
            stops.remove(o)
            if not stops:
                del self.stops[o.key]
        self.orders.pop(o.order_id, None)
        self._tidy(o.key)

    def _book_through(self, key: str, book: L2Book, t: int) -> None:
        bids, asks = self.resting[key]
        best_ask = book.asks.best()
        if best_ask is not None and bids and max(bids) >= best_ask:
            inst = self.instruments.by_key(key)
            for p in sorted((p for p in bids if p >= best_ask), reverse=True):
                for o in list(bids.get(p, ())):
                    self._fill(o, inst, p, o.remaining, "maker", t, None, 0, 0.0)
        best_bid = book.bids.best()
        if best_bid is not None and asks and min(asks) <= best_bid:
            inst = self.instruments.by_key(key)
            for p in sorted(p for p in asks if p <= best_bid):
                for o in list(asks.get(p, ())):
                    self._fill(o, inst, p, o.remaining, "maker", t, None, 0, 0.0)

    # -- taking liquidity ------------------------------------------------------------

    def _effective_best(self, key: str, book: L2Book, side: int) -> int | None:
        """Best price of a book side (+1 bids, -1 asks) after our own takes."""
        bs = book.bids if side > 0 else book.asks
        tk = self.taken.get(key)
        if tk is None:
            return bs.best()
        taken = tk[0 if side > 0 else 1]
        sign, sizes = bs.sign, bs.sizes
        for k in reversed(bs.keys):
            p = k * sign
            if sizes[p] > taken.get(p, 0):
                return p
        return None

    def _touch(self, key: str, side: int) -> int:
        book = self.books.get(key)
        if book is None:
            return 0
        return self._effective_best(key, book, side) or 0

    def _levels(
        self, key: str, bs: BookSide, limit: int | None, buy: bool
    ) -> Iterable[tuple[int, int]]:
        """(price, available) on the opposite side, best first, within ``limit``."""
        tk = self.taken.get(key)
        taken = (tk[1] if buy else tk[0]) if tk is not None else None
        sign, sizes = bs.sign, bs.sizes
        for k in reversed(bs.keys):
            p = k * sign
            if limit is not None and (p > limit if buy else p < limit):
                return
            avail = sizes[p] - (taken.get(p, 0) if taken else 0)
            if avail > 0:
                yield p, avail

    def _available(self, key: str, book: L2Book | None, side: int, limit: int) -> int:
        if book is None:
            return 0
        bs = book.asks if side > 0 else book.bids
        return sum(a for _, a in self._levels(key, bs, limit, side > 0))

    def _take(self, o: SimOrder, inst: Instrument, limit: int | None, t: int, tr: int) -> None:
        book = self.books.get(o.key)
        if book is None:
            return
        buy = o.side > 0
        bs = book.asks if buy else book.bids
        plan: list[tuple[int, int]] = []
        want = o.remaining
        for p, avail in self._levels(o.key, bs, limit, buy):
            q = min(want, avail)
            plan.append((p, q))
            want -= q
            if not want:
                break
        if not plan:
            return
        tk = self.taken.get(o.key)
        if tk is None:
            tk = self.taken[o.key] = ({}, {})
        taken = tk[1] if buy else tk[0]
        for p, q in plan:
            taken[p] = taken.get(p, 0) + q
        self.active.add(o.key)
        total = sum(q for _, q in plan)
        imp = self.cfg.impact_for(o.key)
        own_bp = sqrt_impact_bp(
            total / POW10[inst.size_decimals], imp.adv, imp.sigma_daily, self.cfg.impact_y
        )
        shift = self._impact_shift(o.key, t)
        impact_bp = own_bp + o.side * shift
        touch = plan[0][0]
        pd, sd = inst.price_decimals, inst.size_decimals
        for p, q in plan:
            slip = notional(abs(p - touch), pd, q, sd)
            self._fill(o, inst, p, q, "taker", t, tr, slip, impact_bp)
        self._add_impact(o.key, o.side * own_bp, t)

    def _impact_shift(self, key: str, t: int) -> float:
        st = self.impact.get(key)
        if st is None:
            return 0.0
        perm, temp, at = st
        hl = self.cfg.impact_half_life_ms * NS_PER_MS
        return perm + temp * float(0.5 ** (max(0, t - at) / hl))

    def _add_impact(self, key: str, signed_bp: float, t: int) -> None:
        if not signed_bp:
            return
        perm, temp, at = self.impact.get(key, (0.0, 0.0, t))
        hl = self.cfg.impact_half_life_ms * NS_PER_MS
        temp = temp * float(0.5 ** (max(0, t - at) / hl))
        phi = self.cfg.impact_permanent_fraction
        self.impact[key] = (perm + phi * signed_bp, temp + (1 - phi) * signed_bp, t)

    # -- fills -----------------------------------------------------------------------

    def _fill(
        self,
        o: SimOrder,
        inst: Instrument,
        price: int,
        size: int,
        liquidity: str,
        t: int,
        tr: int | None,
        slippage: int,
        impact_bp: float,
    ) -> None:
        if size <= 0:
            return
        if tr is None:
            tr = self._response_time(inst.exchange, t)
        new_state = "filled" if o.filled + size == o.size else "partially_filled"
        if size > o.remaining or not self._transition(o, new_state, t, tr):
            return
        o.filled += size
        o.fills += 1
        self.fills += 1
        value = inst.notional(price, size)
        ppm = inst.maker_fee_ppm if liquidity == "maker" else inst.taker_fee_ppm
        toxic = liquidity == "maker" and o.ahead_at_place > self.cfg.toxic_queue_ratio * o.size
        fill_id = f"{o.order_id}:f{o.fills}"
        side: Side = "buy" if o.side > 0 else "sell"
        self.deliver(
            Fill(
                ts_event=t,
                ts_recv=tr,
                fill_id=fill_id,
                order_id=o.order_id,
                exchange=inst.exchange,
                symbol=inst.symbol,
                side=side,
                price=price,
                size=size,
                fee=apply_rate_ppm(value, ppm),
                liquidity="maker" if liquidity == "maker" else "taker",
                queue_ahead=o.ahead_at_place if liquidity == "maker" else 0,
                toxic=toxic,
                impact_bp=round(impact_bp, 6),
                latency_ns=t - o.ts_submit,
                slippage=slippage,
                impact_cost=round(value * impact_bp / BP),
            )
        )
        if toxic:
            self.deliver(
                FillToxic(
                    ts_event=t,
                    ts_recv=tr,
                    fill_id=fill_id,
                    order_id=o.order_id,
                    exchange=inst.exchange,
                    symbol=inst.symbol,
                    reason="queue_position",
                    queue_ahead_at_place=o.ahead_at_place,
                )
            )
        book = self.books.get(o.key)
        m2 = book.mid_x2() if book is not None else None
        if m2 is not None and self.cfg.toxic_window_ms > 0:
            self.watches.setdefault(o.key, []).append(
                Watch(
                    key=o.key,
                    fill_id=fill_id,
                    order_id=o.order_id,
                    side=o.side,
                    mid_x2=m2,
                    deadline=t + self.cfg.toxic_window_ms * NS_PER_MS,
                )
            )
            self._watch_gate(o.key)
            self.active.add(o.key)
        if new_state == "filled":
            self._remove(o)

    def _watch_gate(self, key: str) -> None:
        """The cheap test that decides whether a book event needs a look at the
        watches: the earliest deadline, the highest mid at which a buy fill turns
        adverse and the lowest at which a sell fill does."""
        ws = self.watches.get(key)
        if not ws:
            self._gates.pop(key, None)
            return
        f = self.cfg.toxic_adverse_bp / BP
        lo = max((w.mid_x2 * (1 - f) for w in ws if w.side > 0), default=-math.inf)
        hi = min((w.mid_x2 * (1 + f) for w in ws if w.side < 0), default=math.inf)
        self._gates[key] = (min(w.deadline for w in ws), lo, hi)

    def _check_watches(self, key: str, book: L2Book, t: int) -> None:
        """Expire watches past their deadline and report adverse moves. The delta path
        calls it only when the gate (:meth:`_watch_gate`) says something may change."""
        m2 = book.mid_x2()
        keep = []
        limit = self.cfg.toxic_adverse_bp
        for w in self.watches[key]:
            if t > w.deadline:
                continue
            if m2 is None:
                keep.append(w)
                continue
            adverse = (w.mid_x2 - m2) * w.side / w.mid_x2 * BP
            if adverse >= limit:
                inst = self.instruments.by_key(key)
                self.deliver(
                    FillToxic(
                        ts_event=t,
                        ts_recv=self._response_time(inst.exchange, t),
                        fill_id=w.fill_id,
                        order_id=w.order_id,
                        exchange=inst.exchange,
                        symbol=inst.symbol,
                        reason="adverse_move",
                        adverse_bp=round(adverse, 4),
                    )
                )
            else:
                keep.append(w)
        if keep:
            self.watches[key] = keep
        else:
            del self.watches[key]
        self._watch_gate(key)
        self._tidy(key)

    # -- stops -----------------------------------------------------------------------

    def _trigger_ref(self, key: str) -> int | None:
        book = self.books.get(key)
        if self.cfg.trigger_source == "mid":
            m2 = book.mid_x2() if book is not None else None
            return None if m2 is None else m2 // 2
        return None  # trade-triggered stops wait for the next print

    def _check_stops(self, key: str, ref: int, t: int, tr: int | None) -> None:
        fired = []
        for o in self.stops.get(key, ()):
            trig = o.trigger_price
            if o.order_type == "stop_loss":
                hit = ref <= trig if o.side < 0 else ref >= trig
            else:
                hit = ref >= trig if o.side < 0 else ref <= trig
            if hit:
                fired.append(o)
        if not fired:
            return
        inst = self.instruments.by_key(key)
        for o in fired:
            self.stops[key].remove(o)
            if not self.stops[key]:
                del self.stops[key]
            t_resp = tr if tr is not None else self._response_time(inst.exchange, t)
            self.deliver(
                OrderTriggered(
                    ts_event=t,
                    ts_recv=t_resp,
                    order_id=o.order_id,
                    trigger_price=o.trigger_price,
                    reference_price=ref,
                    source=self.cfg.trigger_source,
                )
            )
            if o.price == 0:
                self._take(o, inst, None, t, t_resp)
                self._finish_aggressive(o, t, t_resp)
            else:
                o.order_type = "limit"
                self._place_limit(o, inst, t, t_resp, ack=False)

    # -- bookkeeping -----------------------------------------------------------------

    def _transition(self, o: SimOrder, new: str, t: int, tr: int) -> bool:
        """Move ``o`` to ``new`` if the state machine allows it; else an OrderError."""
        if new in ALLOWED_TRANSITIONS[o.state]:
            o.state = new
            return True
        self.deliver(
            OrderError(
                ts_event=t,
                ts_recv=tr,
                order_id=o.order_id,
                action=new,
                state=o.state,
                reason=f"illegal transition {o.state} -> {new}",
            )
        )
        return False

    def _exchange_of(self, o: SimOrder | None) -> str:
        return o.key.split(":", 1)[0] if o is not None else ""

    def _tidy(self, key: str) -> None:
        if (
            key not in self.resting
            and key not in self.stops
            and key not in self.taken
            and key not in self.watches
        ):
            self.active.discard(key)

    # -- state -----------------------------------------------------------------------

    def state(self) -> VenueState:
        taken = []
        for key in sorted(self.taken):
            for side_idx, side in ((0, 1), (1, -1)):
                for p in sorted(self.taken[key][side_idx]):
                    taken.append((key, side, p, self.taken[key][side_idx][p]))
        queues = []
        for key in sorted(self.resting):
            for side, side_levels in zip((1, -1), self.resting[key], strict=True):
                for p in sorted(side_levels):
                    queues.append((key, side, p, [o.order_id for o in side_levels[p]]))
        return VenueState(
            orders=[self.orders[k] for k in sorted(self.orders)],
            queues=queues,
            stops=[(k, [o.order_id for o in self.stops[k]]) for k in sorted(self.stops)],
            taken=taken,
            impact=[(k, *self.impact[k]) for k in sorted(self.impact)],
            watches=[w for k in sorted(self.watches) for w in self.watches[k]],
            last_in=sorted(self.last_in.items()),
            last_out=sorted(self.last_out.items()),
            fills=self.fills,
            rng_state=msgspec.json.encode(self.rng.bit_generator.state, order="sorted").decode(),
        )

    def restore(self, st: VenueState) -> None:
        """Continue exactly where :meth:`state` was taken."""
        self.orders = {o.order_id: o for o in st.orders}
        self.resting = {}
        self.stops = {}
        self.active = set()
        for key, side, p, ids in st.queues:
            lv = self.resting.setdefault(key, ({}, {}))
            lv[0 if side > 0 else 1][p] = [self.orders[i] for i in ids]
            self.active.add(key)
        for key, ids in st.stops:
            self.stops[key] = [self.orders[i] for i in ids]
            self.active.add(key)
        self.bounds = {}
        for key in self.resting:
            self._bound(key)
        self.taken = {}
        for key, side, p, q in st.taken:
            self.taken.setdefault(key, ({}, {}))[0 if side > 0 else 1][p] = q
            self.active.add(key)
        self.impact = {k: (perm, temp, at) for k, perm, temp, at in st.impact}
        self.watches = {}
        self._gates = {}
        for w in st.watches:
            self.watches.setdefault(w.key, []).append(w)
            self.active.add(w.key)
        for key in self.watches:
            self._watch_gate(key)
        self.last_in = dict(st.last_in)
        self.last_out = dict(st.last_out)
        self.fills = st.fills
        self.rng.bit_generator.state = msgspec.json.decode(st.rng_state)
        self._latency = {}
