"""Funding monitor: rates, funding cycles, expected cost and alerts per perp.

Pure and integer. A :class:`FundingMonitor` is fed ``FundingRate`` and ``MarkPrice``
events, positions (``Fill`` events or :meth:`FundingMonitor.set_position`) and
``FundingPayment`` events, and answers per perp: the latest rate, the next funding time
and the time left to it, the expected cost of a position at that funding, and the
funding paid so far. Its history is the journal itself: ``FundingRate`` events are
market events, journaled already (``tickerml funding`` reports over them).

Funding times. A perp settles funding every ``funding_interval_s`` of its instrument on
the UTC grid (multiples of the interval since the epoch: 00:00, 08:00 and 16:00 UTC for
the default 8 h), unless the venue said when: the latest ``next_funding_ts`` it sent
(a later event without one keeps it) wins while it is still ahead. The next funding
after ``now`` is strictly later than ``now``: at 08:00:00.000 exactly the 08:00 funding is
happening, and the next one is 16:00 (this is the engine's rule too, see
``Engine._next_funding``). ``time_to_funding`` is therefore in ``(0, interval]``.

Funding cycle. The cycle an event belongs to is named by the funding time that ends it:
the next funding after the event's exchange time (``ts_event``).

Alerts. A rate with ``|rate| > alert_rate`` (strictly; RATE units, from
``config/monitoring.yaml`` ``funding_rate_alert``, 0.1 % by default) makes one ``Alert``
(severity ``warning``, rule ``funding_rate_high``) per instrument per funding cycle:
later high rates in the same cycle are quiet, the first high rate of a later cycle
alerts again. The alert's times are the triggering event's ``ts_recv`` (the kernel
clock).

Expected cost. What a position pays at the next funding if the latest rate holds:
``qty x mark x rate`` in MONEY units (:func:`kernel.portfolio.funding_amount` negated):
positive is paid, negative received. Longs pay a positive rate, shorts receive it.
Mark: the latest ``MarkPrice``; without one the cost is unknown (None) unless the
caller gives a mark.

Funding paid: the sum over ``FundingPayment`` events, negated (``FundingPayment.amount``
is what the position received).
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

from kernel.events import Alert, Event, Fill, FundingPayment, FundingRate, MarkPrice
from kernel.fixedpoint import format_fixed
from kernel.instruments import Instrument, InstrumentRegistry
from kernel.portfolio import funding_amount

NS = 1_000_000_000
DEFAULT_INTERVAL_S = 28_800
DEFAULT_ALERT_RATE = 10_000_000
"""0.1 % in RATE units (1e-10)."""

ALERT_RULE = "funding_rate_high"


def next_funding_time(now: int, interval_s: int, venue_next: int = 0) -> int:
    """The first funding strictly after ``now`` (ns): ``venue_next`` when it is later
    than ``now``, else the next multiple of ``interval_s`` since the epoch."""
    if venue_next > now:
        return venue_next
    iv = interval_s * NS
    return (now // iv + 1) * iv


def rate_percent(rate: int, min_decimals: int = 4) -> str:
    """A rate (RATE units) as an exact, signed percentage with at least ``min_decimals``
    (at most 8 are ever needed): ``10_000_000`` -> ``"+0.1000"``, ``-1_234_567`` ->
    ``"-0.01234567"``."""
    text = format_fixed(abs(rate), 8).rstrip("0")
    whole, _, frac = text.partition(".")
    return ("-" if rate < 0 else "+") + whole + "." + frac.ljust(min_decimals, "0")


def utc_text(ns: int) -> str:
    """``2025-01-01T08:00:00Z`` (milliseconds added when not whole seconds); integer
    arithmetic only (civil-from-days, H. Hinnant), so the kernel needs no datetime."""
    secs, rest = divmod(ns, NS)
    days, sod = divmod(secs, 86_400)
    z = days + 719_468
    era = z // 146_097
    doe = z - era * 146_097
    yoe = (doe - doe // 1_460 + doe // 36_524 - doe // 146_096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    day = doy - (153 * mp + 2) // 5 + 1
    month = mp + 3 if mp < 10 else mp - 9
    year = yoe + era * 400 + (month <= 2)
    hh, rem = divmod(sod, 3_600)
    mm, ss = divmod(rem, 60)
    ms = f".{rest // 1_000_000:03d}" if rest else ""
    return f"{year:04d}-{month:02d}-{day:02d}T{hh:02d}:{mm:02d}:{ss:02d}{ms}Z"


class FundingView(msgspec.Struct, frozen=True):
    """One perp at ``now``. ``rate`` in RATE units (``rate_ts``: its exchange time, 0 if
    none seen); ``mark_price`` in price units (0: none seen); ``position`` in size units;
    money in MONEY units: ``expected_cost`` (paid at ``next_funding_ts`` if the rate
    holds; negative: received; None: no mark) and ``funding_paid`` (so far; negative:
    received) over ``payments`` FundingPayments."""

    key: str
    now: int
    rate: int
    rate_ts: int
    next_funding_ts: int
    time_to_funding_ns: int
    mark_price: int
    position: int
    expected_cost: int | None
    funding_paid: int
    payments: int


class FundingMonitorState(msgspec.Struct, array_like=True):
    """Everything a :class:`FundingMonitor` knows, canonically ordered (by key).
    ``rates``: (key, rate, ts_event, venue next funding); ``marks``: (key, mark, index);
    ``received``: (key, sum of FundingPayment amounts, count); ``alerted``: (key,
    funding cycle last alerted)."""

    alert_rate: int
    rates: list[tuple[str, int, int, int]]
    marks: list[tuple[str, int, int]]
    positions: list[tuple[str, int]]
    received: list[tuple[str, int, int]]
    alerted: list[tuple[str, int]]


class FundingMonitor:
    """Funding per perp; see the module docstring for the rules."""

    def __init__(
        self,
        instruments: InstrumentRegistry | Sequence[Instrument],
        alert_rate: int = DEFAULT_ALERT_RATE,
    ) -> None:
        if alert_rate < 0:
            raise ValueError(f"alert_rate must be >= 0, got {alert_rate}")
        self.instruments = (
            instruments
            if isinstance(instruments, InstrumentRegistry)
            else InstrumentRegistry(list(instruments))
        )
        self.alert_rate = alert_rate
        self._rates: dict[str, tuple[int, int, int]] = {}
        self._marks: dict[str, tuple[int, int]] = {}
        self._positions: dict[str, int] = {}
        self._received: dict[str, tuple[int, int]] = {}
        self._alerted: dict[str, int] = {}

    # -- updates ---------------------------------------------------------------------

    def apply(self, event: Event) -> tuple[Alert, ...]:
        """Fold any event (others are ignored); returns the alert it raised, if any."""
        if isinstance(event, FundingRate):
            alert = self.on_funding_rate(event)
            return (alert,) if alert is not None else ()
        if isinstance(event, MarkPrice):
            self.on_mark_price(event)
        elif isinstance(event, FundingPayment):
            self.on_funding_payment(event)
        elif isinstance(event, Fill):
            self.on_fill(event)
        return ()

    def on_funding_rate(self, ev: FundingRate) -> Alert | None:
        key = f"{ev.exchange}:{ev.symbol}"
        prev = self._rates.get(key)
        venue_next = ev.next_funding_ts or (prev[2] if prev is not None else 0)
        self._rates[key] = (ev.rate, ev.ts_event, venue_next)
        if abs(ev.rate) <= self.alert_rate:
            return None
        cycle = next_funding_time(ev.ts_event, self._interval_s(key), venue_next)
        if self._alerted.get(key) == cycle:
            return None
        self._alerted[key] = cycle
        limit = rate_percent(self.alert_rate)[1:]
        return Alert(
            ts_event=ev.ts_recv,
            ts_recv=ev.ts_recv,
            severity="warning",
            rule=ALERT_RULE,
            message=f"{key} funding rate {rate_percent(ev.rate)}% is beyond +-{limit}%; "
            f"next funding {utc_text(cycle)}",
        )

    def on_mark_price(self, ev: MarkPrice) -> None:
        self._marks[f"{ev.exchange}:{ev.symbol}"] = (ev.mark_price, ev.index_price)

    def on_funding_payment(self, ev: FundingPayment) -> None:
        key = f"{ev.exchange}:{ev.symbol}"
        total, count = self._received.get(key, (0, 0))
        self._received[key] = (total + ev.amount, count + 1)

    def on_fill(self, ev: Fill) -> None:
        key = f"{ev.exchange}:{ev.symbol}"
        signed = ev.size if ev.side == "buy" else -ev.size
        self._positions[key] = self._positions.get(key, 0) + signed

    def set_position(self, key: str, qty: int) -> None:
        """The signed position (size units) of ``EXCHANGE:SYMBOL``."""
        self._positions[key] = qty

    # -- queries ---------------------------------------------------------------------

    def keys(self) -> list[str]:
        """Instruments with a funding rate seen, sorted."""
        return sorted(self._rates)

    def rate(self, key: str) -> int | None:
        """The latest funding rate (RATE units), None if none seen."""
        r = self._rates.get(key)
        return r[0] if r is not None else None

    def mark(self, key: str) -> int | None:
        m = self._marks.get(key)
        return m[0] if m is not None and m[0] > 0 else None

    def position(self, key: str) -> int:
        return self._positions.get(key, 0)

    def next_funding(self, key: str, now: int) -> int:
        """The first funding of ``key`` strictly after ``now`` (ns)."""
        r = self._rates.get(key)
        return next_funding_time(now, self._interval_s(key), r[2] if r is not None else 0)

    def time_to_funding(self, key: str, now: int) -> int:
        """ns from ``now`` to the next funding: in ``(0, interval]``."""
        return self.next_funding(key, now) - now

    def expected_cost(
        self, key: str, qty: int | None = None, mark: int | None = None
    ) -> int | None:
        """MONEY a position of ``qty`` (default: the tracked position) pays at the next
        funding at the latest rate (negative: receives); None without a rate, a mark
        (``mark`` or the latest MarkPrice) or a known instrument."""
        rate = self.rate(key)
        price = mark if mark is not None else self.mark(key)
        if rate is None or price is None or key not in self.instruments:
            return None
        size = self.position(key) if qty is None else qty
        return -funding_amount(size, price, rate, self.instruments.by_key(key))

    def funding_paid(self, key: str) -> tuple[int, int]:
        """(MONEY paid so far, negative: received; number of FundingPayments)."""
        total, count = self._received.get(key, (0, 0))
        return -total, count

    def view(self, key: str, now: int) -> FundingView:
        r = self._rates.get(key, (0, 0, 0))
        nxt = self.next_funding(key, now)
        paid, count = self.funding_paid(key)
        return FundingView(
            key=key,
            now=now,
            rate=r[0],
            rate_ts=r[1],
            next_funding_ts=nxt,
            time_to_funding_ns=nxt - now,
            mark_price=self.mark(key) or 0,
            position=self.position(key),
            expected_cost=self.expected_cost(key),
            funding_paid=paid,
            payments=count,
        )

    def _interval_s(self, key: str) -> int:
        if key in self.instruments:
            return self.instruments.by_key(key).funding_interval_s
        return DEFAULT_INTERVAL_S

    # -- state -----------------------------------------------------------------------

    def state(self) -> FundingMonitorState:
        return FundingMonitorState(
            alert_rate=self.alert_rate,
            rates=[(k, *self._rates[k]) for k in sorted(self._rates)],
            marks=[(k, *self._marks[k]) for k in sorted(self._marks)],
            positions=sorted(self._positions.items()),
            received=[(k, *self._received[k]) for k in sorted(self._received)],
            alerted=sorted(self._alerted.items()),
        )

    def restore(self, st: FundingMonitorState) -> None:
        self.alert_rate = st.alert_rate
        self._rates = {k: (r, ts, n) for k, r, ts, n in st.rates}
        self._marks = {k: (m, i) for k, m, i in st.marks}
        self._positions = dict(st.positions)
        self._received = {k: (t, c) for k, t, c in st.received}
        self._alerted = dict(st.alerted)
