"""``tickerml funding``: funding rates per perp over the journal.

The history of funding rates is the journal itself: ``FundingRate`` and ``MarkPrice``
events are market events in each perp's stream ``md.EXCHANGE.SYMBOL``. The report folds
the rows with ``start <= ts_recv < end`` of every perp stream (symbols ending ``-PERP``,
optionally only some exchanges and symbols) through :class:`kernel.funding.FundingMonitor`
and shows per perp:

* ``rates``: FundingRate events in the range; ``last``, ``min``, ``max``, ``mean`` rate
  (RATE units, 1e-10; shown as percentages). The mean is over the events as journaled
  (one per change of rate or funding time, per the venue's feed), not time-weighted,
  rounded half to even to RATE units.
* ``next_funding``: the first funding after the last FundingRate's exchange time (the
  venue's ``next_funding_ts`` when it sent one, else the instrument's interval on the
  UTC grid); ``alerts``: the funding cycles in which ``|rate|`` went above
  ``monitoring.funding_rate_alert`` (the ``funding_rate_high`` alerts a live monitor
  would have raised).
* ``mark``: the last MarkPrice in the range.
* with ``--session ID``: ``funding_paid`` (MONEY, 1e-8 quote; negative: received) and
  ``payments``, summed over the session's ``FundingPayment`` events in the range;
  ``position``: the session's position after its fills before ``end``; ``expected_cost``:
  what that position pays at the next funding at the last rate and mark (negative:
  receives; null without a mark or a rate).

Reading a perp stream reads its book rows too (the journal has no per-kind index); a
``funding_rates`` read model would make long ranges fast.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import msgspec

from adapters.journal.base import Journal, market_stream
from kernel.config import AppConfig
from kernel.events import Fill, FundingPayment, FundingRate, MarkPrice, decode
from kernel.fixedpoint import format_fixed
from kernel.funding import FundingMonitor, rate_percent, utc_text
from kernel.instruments import InstrumentRegistry
from kernel.trades import div_half_even

FUNDING_KINDS = frozenset({"FundingRate", "MarkPrice"})


class FundingRow(msgspec.Struct, frozen=True):
    """One perp over the range; units as in the module docstring. Times in ns (0: none);
    the session columns are null without ``--session``."""

    exchange: str
    symbol: str
    rates: int
    first_ts: int
    last_ts: int
    last_rate: int
    min_rate: int
    max_rate: int
    mean_rate: int
    next_funding_ts: int
    alerts: int
    mark_price: int
    funding_paid: int | None = None
    payments: int | None = None
    position: int | None = None
    expected_cost: int | None = None


class FundingReport(msgspec.Struct, frozen=True):
    start_ns: int | None
    end_ns: int | None
    session_id: str | None
    alert_rate: int
    rows: list[FundingRow]


class _Stats:
    __slots__ = ("alerts", "count", "first_ts", "last", "last_ts", "max", "min", "total")

    def __init__(self) -> None:
        self.count = self.total = self.alerts = 0
        self.first_ts = self.last_ts = 0
        self.last = self.min = self.max = 0

    def add(self, ev: FundingRate) -> None:
        if not self.count:
            self.first_ts = ev.ts_event
            self.min = self.max = ev.rate
        self.count += 1
        self.total += ev.rate
        self.last, self.last_ts = ev.rate, ev.ts_event
        self.min, self.max = min(self.min, ev.rate), max(self.max, ev.rate)


def _perps(
    streams: set[str],
    instruments: InstrumentRegistry,
    exchanges: Sequence[str] | None,
    symbols: Sequence[str] | None,
) -> list[tuple[str, str]]:
    """(exchange, symbol) of every perp known to the config or with a journal stream."""
    found = {(i.exchange, i.symbol) for i in instruments if i.kind == "perp"}
    for stream in streams:
        parts = stream.split(".", 2)
        if len(parts) == 3 and parts[0] == "md" and parts[2].endswith("-PERP"):
            found.add((parts[1], parts[2]))
    ex = {e.upper() for e in exchanges} if exchanges else None
    sy = set(symbols) if symbols else None
    return sorted((e, s) for e, s in found if (ex is None or e in ex) and (sy is None or s in sy))


def funding_report(
    journal: Journal,
    instruments: InstrumentRegistry,
    *,
    start_ns: int | None = None,
    end_ns: int | None = None,
    exchanges: Sequence[str] | None = None,
    symbols: Sequence[str] | None = None,
    session_id: str | None = None,
    alert_rate: int = 10_000_000,
) -> FundingReport:
    """Fold the range's funding events per perp (and a session's payments); see the
    module docstring. ``end_ns`` is exclusive."""
    from journal_tools.projections import load_session

    monitor = FundingMonitor(instruments, alert_rate)
    stats: dict[str, _Stats] = {}
    streams = {info.stream for info in journal.streams()}
    perps = _perps(streams, instruments, exchanges, symbols)
    wanted = {f"{e}:{s}" for e, s in perps}
    to_ts = end_ns - 1 if end_ns is not None else None
    for exchange, symbol in perps:
        stream = market_stream(exchange, symbol)
        if stream not in streams:
            continue
        st = stats[f"{exchange}:{symbol}"] = _Stats()
        for rec in journal.read(stream, from_ts=start_ns, to_ts=to_ts):
            if rec.kind not in FUNDING_KINDS:
                continue
            ev = decode(rec.payload)
            if isinstance(ev, FundingRate):
                st.add(ev)
                st.alerts += len(monitor.apply(ev))
            elif isinstance(ev, MarkPrice):
                monitor.apply(ev)
    in_session: set[str] = set()
    if session_id is not None:
        session = load_session(journal, session_id)
        for _, out in session.events:
            if not isinstance(out, Fill | FundingPayment):
                continue
            key = f"{out.exchange}:{out.symbol}"
            if key not in wanted or (end_ns is not None and out.ts_recv >= end_ns):
                continue
            in_session.add(key)
            # every fill before the end makes the position; payments count in the range
            if isinstance(out, Fill) or start_ns is None or out.ts_recv >= start_ns:
                monitor.apply(out)
    rows = []
    for exchange, symbol in perps:
        key = f"{exchange}:{symbol}"
        st = stats.get(key) or _Stats()
        if not st.count and key not in in_session:
            continue
        paid, payments = monitor.funding_paid(key)
        with_session = session_id is not None
        rows.append(
            FundingRow(
                exchange=exchange,
                symbol=symbol,
                rates=st.count,
                first_ts=st.first_ts,
                last_ts=st.last_ts,
                last_rate=st.last,
                min_rate=st.min,
                max_rate=st.max,
                mean_rate=div_half_even(st.total, st.count) if st.count else 0,
                next_funding_ts=monitor.next_funding(key, st.last_ts) if st.count else 0,
                alerts=st.alerts,
                mark_price=monitor.mark(key) or 0,
                funding_paid=paid if with_session else None,
                payments=payments if with_session else None,
                position=monitor.position(key) if with_session else None,
                expected_cost=monitor.expected_cost(key) if with_session else None,
            )
        )
    return FundingReport(
        start_ns=start_ns,
        end_ns=end_ns,
        session_id=session_id,
        alert_rate=alert_rate,
        rows=rows,
    )


def _money(units: int | None) -> str:
    return "-" if units is None else format_fixed(units, 8)


def cli_funding(
    args: argparse.Namespace,
    journal: Journal,
    config: AppConfig,
    start_ns: int | None,
    end_ns: int | None,
) -> int:
    """Print the report (``--format table`` or ``json``); exit 0."""
    from rich.measure import Measurement
    from rich.table import Table

    from journal_tools.cli import out

    registry = InstrumentRegistry(list(config.instruments.instruments))
    report = funding_report(
        journal,
        registry,
        start_ns=start_ns,
        end_ns=end_ns,
        exchanges=args.exchange or None,
        symbols=args.symbol or None,
        session_id=args.session,
        alert_rate=config.monitoring.funding_rate_alert_units,
    )
    if args.format == "json":
        out.print_json(data=msgspec.to_builtins(report))
        return 0
    title = f"funding rates ({len(report.rows)} perps"
    title += f", session {args.session})" if args.session else ")"
    table = Table(title=title)
    cols = ["instrument", "rates", "last %", "min %", "max %", "mean %", "next funding"]
    cols += ["alerts", "mark"]
    if args.session:
        cols += ["position", "expected cost", "funding paid", "payments"]
    for col in cols:
        left = col in ("instrument", "next funding")
        table.add_column(col, justify="left" if left else "right", no_wrap=True)
    for r in report.rows:
        key = f"{r.exchange}:{r.symbol}"
        inst = registry.by_key(key) if key in registry else None
        has = r.rates > 0
        cells = [
            key,
            f"{r.rates:,}",
            *(
                rate_percent(v, 8) if has else "-"
                for v in (r.last_rate, r.min_rate, r.max_rate, r.mean_rate)
            ),
            utc_text(r.next_funding_ts) if r.next_funding_ts else "-",
            str(r.alerts),
            (inst.price_text(r.mark_price) if inst else str(r.mark_price)) if r.mark_price else "-",
        ]
        if args.session:
            pos = r.position or 0
            cells += [
                inst.size_text(pos) if inst else str(pos),
                _money(r.expected_cost),
                _money(r.funding_paid),
                str(r.payments),
            ]
        table.add_row(*cells)
    # every cell whole (as `tickerml project --show`): wider than the terminal, it wraps
    natural = Measurement.get(out, out.options.update_width(4000), table).maximum
    terminal = out.width
    out.width = max(terminal, natural)
    try:
        out.print(table)
    finally:
        out.width = terminal
    return 0
