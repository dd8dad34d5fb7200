"""Read models: projections of a session's events, rebuildable at any time.

``tickerml project --rebuild`` reads each session stream ``session.<id>`` (SessionStarted,
the kernel's outputs in order, SessionEnded), turns its events into rows with the pure
functions below and stores them beside the journal (:meth:`Journal.write_read_model`:
real tables in the SQLite file, dicts in the memory journal), replacing the session's
previous rows in one transaction. ``--show TABLE`` prints them. The rows are derived
data: rebuilding twice gives the same rows, and the journal is never changed.

Units. Money is integer MONEY units (1e-8 quote, every quote currency at par), prices and
sizes integers in the instrument's units (the instruments are those the session recorded
in ``SessionStarted.config_json``), times integer ns since the epoch. ``--show`` renders
them as exact decimals. Fill times are the fill's ``ts_recv``: the kernel time at which
the paper trader's books took the fill (the venue time is ``ts_event``).

``portfolio_state`` (one row per Fill, FundingPayment and PortfolioSnapshot, in stream order)
    The session's fills and funding payments are replayed through
    :class:`kernel.portfolio.Portfolio` (average-cost accounting, costs kept apart) from
    ``trading.engine.portfolio.initial_cash``. After each fill and funding payment a row
    is written with positions marked at each instrument's *last known price*: the later
    of its last fill price and its last mark in a PortfolioSnapshot. At a
    PortfolioSnapshot the row is the replayed books marked at that snapshot's marks (a
    position the snapshot left unmarked, mark 0, is valued at its cost basis, as the
    kernel does). ``equity = cash + sum(signed qty x mark)``, ``unrealised = sum(qty x
    mark - cost)``; ``realised`` is gross of costs. A snapshot whose journaled numbers
    differ from the replay is reported as a warning (the replay is what is stored).
    Columns: ``seq`` (the stream seq of the event that made the row), ``ts``,
    ``source`` (fill | funding | snapshot), cash, equity, realised, unrealised, fees,
    funding, impact, slippage, ``positions`` (JSON list of {instrument, qty, cost,
    mark} as decimal strings; mark null when unmarked).

``trade_history`` (one row per round trip per instrument, in the order they opened)
    A round trip starts when an instrument's position leaves zero and ends when it is
    zero again. A fill that flips the sign closes the trip with the part that brings the
    position to zero and opens a new one with the rest; its fee and impact are split in
    proportion to size (the closing share truncated toward zero, the rest to the new
    trip) and it counts as a fill (and a toxic fill) of both trips.
    ``direction``: long if the first fill bought. ``size``: the largest absolute position
    during the trip. ``avg_entry`` / ``avg_exit``: size-weighted price of the fills (or
    fill parts) that increased / decreased the position, rounded half away from zero to
    the instrument's price units (``avg_exit`` null before any exit). ``gross_pnl``: sum
    of what ``Portfolio.apply_fill`` realised on the trip's closing fills, i.e. exit
    value - entry value (average cost). ``fees``, ``impact``: charged on the trip's fills;
    ``funding``: FundingPayments on the instrument while the trip was open (received > 0).
    ``net_pnl = gross_pnl - fees - impact + funding``. ``fills``; ``toxic_fills``: fills
    with ``Fill.toxic`` or named by a FillToxic event (anywhere in the session).
    ``exit_ts`` and ``holding_ns = exit_ts - entry_ts`` are null while the trip is open;
    an open trip's P&L columns hold what it realised so far.

``trade_decisions`` (one row per Decision)
    The decision's fields (``features`` as a JSON object name -> float), ``orders``: the
    OrderSubmitted events carrying its ``decision_id``; ``filled_size``: the summed size
    of those orders' fills (size units of the decision's instrument); ``fees``: their fees.

``performance_metrics`` (one row per session)
    ``max_drawdown``, ``sharpe``, ``win_rate`` and ``profit_factor`` are computed by
    :mod:`kernel.metrics`, the one definition of these metrics (training uses it too).
    * ``start_ts``: SessionStarted's time, or when that is 0 (no --from) the first output's;
      ``end_ts``: SessionEnded's time, else the last event's; ``ended``: 1 if SessionEnded.
    * ``initial_cash``: ``trading.engine.portfolio.initial_cash``; ``final_equity``: the last
      portfolio_state row's equity (initial cash if none); ``pnl = final_equity -
      initial_cash``; ``total_return = pnl / initial_cash``.
    * ``max_drawdown = max_t (peak_t - equity_t) / peak_t`` over the equity series
      ``initial_cash, equity of every portfolio_state row``, ``peak_t`` its running
      maximum (a fraction: 0.05 is 5 %).
    * ``sharpe``: the PortfolioSnapshot rows' equity series ``e_0..e_n`` (journaled every
      ``snapshot_interval_ms``), returns ``r_i = e_i / e_(i-1) - 1``,
      ``sharpe = mean(r) / stdev(r) * sqrt(periods per year)`` with the sample standard
      deviation, a zero risk-free rate and ``365 x 86 400 000 / snapshot_interval_ms``
      periods per year (crypto trades every day). Null with fewer than two returns, zero
      variance, a non-positive equity or no snapshot interval.
    * ``round_trips``: closed round trips; ``win_rate``: the share of them with
      ``net_pnl > 0``; ``profit_factor``: sum of positive ``net_pnl`` / |sum of negative
      ``net_pnl``| (null with no closed trip, or no losing one).
    * ``exposure`` (JSON base asset -> fraction): at the last PortfolioSnapshot,
      ``sum |qty x mark|`` of the positions in each base asset (unmarked: |cost|) divided
      by that snapshot's equity (``{}`` without a snapshot; null values if equity <= 0).
    * ``buy_and_hold`` (JSON instrument -> {first, last, return}): for each traded
      instrument, the first and last price seen in the session's fills and snapshot marks
      (in stream order) and ``last / first - 1``. The first is usually the first fill,
      so this is "buy and hold from our first trade"; the kernel journals no mid before.
    * ``fills``; ``fees``, ``impact``, ``funding``, ``slippage``: the replayed totals.

``arbitrage_opportunities`` (one row per opportunity of the arbitrage strategy)
    Defined in :mod:`journal_tools.arbitrage_view` (legs, sizes, bp, expected vs realised
    P&L, legs status).
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple

import msgspec

from adapters.journal.base import (
    Journal,
    ReadModelColumn,
    ReadModelType,
    ReadModelValue,
    session_stream,
)
from journal_tools.arbitrage_view import (
    ARBITRAGE_COLUMNS,
    ARBITRAGE_OPPORTUNITIES,
    ArbitrageOpportunityRow,
    arbitrage_opportunities,
)
from kernel import metrics
from kernel.config import AppConfig
from kernel.events import (
    Decision,
    Event,
    Fill,
    FillToxic,
    FundingPayment,
    OrderSubmitted,
    PortfolioSnapshot,
    SessionEnded,
    SessionStarted,
    decode,
    kind_of,
)
from kernel.fixedpoint import MONEY_DECIMALS, POW10, format_fixed, parse_fixed
from kernel.instruments import Instrument, InstrumentError, InstrumentRegistry
from kernel.metrics import max_drawdown, profit_factor, win_rate
from kernel.portfolio import Portfolio

PORTFOLIO_STATE = "portfolio_state"
TRADE_HISTORY = "trade_history"
TRADE_DECISIONS = "trade_decisions"
PERFORMANCE_METRICS = "performance_metrics"
TABLES: tuple[str, ...] = (
    PORTFOLIO_STATE,
    TRADE_HISTORY,
    TRADE_DECISIONS,
    PERFORMANCE_METRICS,
    ARBITRAGE_OPPORTUNITIES,  # journal_tools/arbitrage_view.py
)
"""Every read model this module builds, in the order they are built and listed."""


class ProjectionError(ValueError):
    """A session cannot be projected (missing, not a session, unknown instrument...)."""


# ---------------------------------------------------------------------------------------
# Rows (one Struct per read model; field order = column order, session_id first)
# ---------------------------------------------------------------------------------------


class PortfolioStateRow(msgspec.Struct, frozen=True):
    session_id: str
    seq: int
    ts: int
    source: str
    cash: int
    equity: int
    realised: int
    unrealised: int
    fees: int
    funding: int
    impact: int
    slippage: int
    positions: str


class TradeHistoryRow(msgspec.Struct, frozen=True):
    session_id: str
    instrument: str
    direction: str
    entry_ts: int
    exit_ts: int | None
    size: int
    avg_entry: int
    avg_exit: int | None
    gross_pnl: int
    fees: int
    impact: int
    funding: int
    net_pnl: int
    fills: int
    toxic_fills: int
    holding_ns: int | None


class TradeDecisionRow(msgspec.Struct, frozen=True):
    session_id: str
    decision_id: str
    ts: int
    strategy: str
    exchange: str
    symbol: str
    action: str
    reasoning: str
    features: str
    confidence: float
    model_id: str
    orders: int
    filled_size: int
    fees: int


class PerformanceMetricsRow(msgspec.Struct, frozen=True):
    session_id: str
    strategy: str
    start_ts: int
    end_ts: int
    ended: int
    initial_cash: int
    final_equity: int
    pnl: int
    total_return: float | None
    max_drawdown: float
    sharpe: float | None
    round_trips: int
    win_rate: float | None
    profit_factor: float | None
    exposure: str
    buy_and_hold: str
    fills: int
    fees: int
    impact: int
    funding: int
    slippage: int


Row = (
    PortfolioStateRow
    | TradeHistoryRow
    | TradeDecisionRow
    | PerformanceMetricsRow
    | ArbitrageOpportunityRow
)

Unit = Literal["text", "count", "ns", "duration", "money", "price", "size", "ratio", "json"]
"""How a column is rendered by ``--show`` (stored values are ints, floats or text)."""


class ColumnSpec(NamedTuple):
    name: str
    type: ReadModelType
    unit: Unit


def _spec(*cols: tuple[str, ReadModelType, Unit]) -> tuple[ColumnSpec, ...]:
    return tuple(ColumnSpec(*c) for c in cols)


SCHEMAS: dict[str, tuple[ColumnSpec, ...]] = {
    PORTFOLIO_STATE: _spec(
        ("seq", "int", "count"),
        ("ts", "int", "ns"),
        ("source", "text", "text"),
        ("cash", "int", "money"),
        ("equity", "int", "money"),
        ("realised", "int", "money"),
        ("unrealised", "int", "money"),
        ("fees", "int", "money"),
        ("funding", "int", "money"),
        ("impact", "int", "money"),
        ("slippage", "int", "money"),
        ("positions", "text", "json"),
    ),
    TRADE_HISTORY: _spec(
        ("instrument", "text", "text"),
        ("direction", "text", "text"),
        ("entry_ts", "int", "ns"),
        ("exit_ts", "int", "ns"),
        ("size", "int", "size"),
        ("avg_entry", "int", "price"),
        ("avg_exit", "int", "price"),
        ("gross_pnl", "int", "money"),
        ("fees", "int", "money"),
        ("impact", "int", "money"),
        ("funding", "int", "money"),
        ("net_pnl", "int", "money"),
        ("fills", "int", "count"),
        ("toxic_fills", "int", "count"),
        ("holding_ns", "int", "duration"),
    ),
    TRADE_DECISIONS: _spec(
        ("decision_id", "text", "text"),
        ("ts", "int", "ns"),
        ("strategy", "text", "text"),
        ("exchange", "text", "text"),
        ("symbol", "text", "text"),
        ("action", "text", "text"),
        ("reasoning", "text", "text"),
        ("features", "text", "json"),
        ("confidence", "float", "ratio"),
        ("model_id", "text", "text"),
        ("orders", "int", "count"),
        ("filled_size", "int", "size"),
        ("fees", "int", "money"),
    ),
    PERFORMANCE_METRICS: _spec(
        ("strategy", "text", "text"),
        ("start_ts", "int", "ns"),
        ("end_ts", "int", "ns"),
        ("ended", "int", "count"),
        ("initial_cash", "int", "money"),
        ("final_equity", "int", "money"),
        ("pnl", "int", "money"),
        ("total_return", "float", "ratio"),
        ("max_drawdown", "float", "ratio"),
        ("sharpe", "float", "ratio"),
        ("round_trips", "int", "count"),
        ("win_rate", "float", "ratio"),
        ("profit_factor", "float", "ratio"),
        ("exposure", "text", "json"),
        ("buy_and_hold", "text", "json"),
        ("fills", "int", "count"),
        ("fees", "int", "money"),
        ("impact", "int", "money"),
        ("funding", "int", "money"),
        ("slippage", "int", "money"),
    ),
    ARBITRAGE_OPPORTUNITIES: _spec(*ARBITRAGE_COLUMNS),
}
"""Each read model's stored columns (after the implicit ``session_id``)."""

ROW_TYPES: dict[str, type[Row]] = {
    PORTFOLIO_STATE: PortfolioStateRow,
    TRADE_HISTORY: TradeHistoryRow,
    TRADE_DECISIONS: TradeDecisionRow,
    PERFORMANCE_METRICS: PerformanceMetricsRow,
    ARBITRAGE_OPPORTUNITIES: ArbitrageOpportunityRow,
}


def storage_columns(table: str) -> list[ReadModelColumn]:
    return [ReadModelColumn(c.name, c.type) for c in SCHEMAS[table]]


def storage_row(row: Row) -> tuple[ReadModelValue, ...]:
    """The row's values in column order, without ``session_id`` (the storage key)."""
    values: tuple[ReadModelValue, ...] = msgspec.structs.astuple(row)[1:]
    return values


def _json(value: object) -> str:
    return msgspec.json.encode(value).decode()


# ---------------------------------------------------------------------------------------
# A session's events
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SessionEvents:
    """A decoded session stream: its header, config, instruments and every event after
    SessionStarted (with its stream seq), SessionEnded excluded."""

    started: SessionStarted
    config: AppConfig
    instruments: InstrumentRegistry
    events: tuple[tuple[int, Event], ...]
    ended: SessionEnded | None

    @property
    def session_id(self) -> str:
        return self.started.session_id

    @property
    def initial_cash(self) -> int:
        return parse_fixed(self.config.trading.engine.portfolio.initial_cash, MONEY_DECIMALS)

    def instrument(self, seq: int, exchange: str, symbol: str) -> Instrument:
        try:
            return self.instruments.get(exchange, symbol)
        except InstrumentError as exc:
            raise ProjectionError(
                f"session {self.session_id} seq {seq}: {exc} (not in the session's config)"
            ) from None


def session_config(started: SessionStarted, fallback: AppConfig | None = None) -> AppConfig:
    """The config a session recorded; ``fallback`` (else the defaults) if it recorded none."""
    if not started.config_json:
        return fallback if fallback is not None else AppConfig()
    try:
        return msgspec.json.decode(started.config_json, type=AppConfig)
    except msgspec.ValidationError as exc:
        raise ProjectionError(
            f"session {started.session_id}: recorded config does not decode: {exc}"
        ) from None


def session_events(
    events: Iterable[Event], fallback_config: AppConfig | None = None
) -> SessionEvents:
    """Wrap a session stream's events, in stream order (the first has seq 1)."""
    evs = list(events)
    if not evs or not isinstance(evs[0], SessionStarted):
        what = kind_of(evs[0]) if evs else "nothing"
        raise ProjectionError(f"a session stream starts with SessionStarted, not {what}")
    started = evs[0]
    config = session_config(started, fallback_config)
    try:
        registry = InstrumentRegistry(list(config.instruments.instruments))
    except InstrumentError as exc:
        raise ProjectionError(f"session {started.session_id}: {exc}") from None
    body = list(enumerate(evs, start=1))[1:]
    ended = None
    if body and isinstance(body[-1][1], SessionEnded):
        last = body.pop()[1]
        assert isinstance(last, SessionEnded)
        ended = last
    return SessionEvents(started, config, registry, tuple(body), ended)


def load_session(
    journal: Journal, session_id: str, fallback_config: AppConfig | None = None
) -> SessionEvents:
    """Read and decode ``session.<session_id>`` from the journal."""
    records = list(journal.read(session_stream(session_id)))
    if not records:
        raise ProjectionError(f"no session {session_id!r} in the journal")
    if [r.seq for r in records] != list(range(1, len(records) + 1)):
        raise ProjectionError(f"session {session_id}: stream seqs are not 1..{len(records)}")
    return session_events((decode(r.payload) for r in records), fallback_config)


# ---------------------------------------------------------------------------------------
# portfolio_state
# ---------------------------------------------------------------------------------------


@dataclass
class _PortfolioReplay:
    rows: list[PortfolioStateRow]
    snapshots: list[PortfolioSnapshot]  # the replayed books at each PortfolioSnapshot
    portfolio: Portfolio
    warnings: list[str]


def _positions_json(snap: PortfolioSnapshot, registry: InstrumentRegistry) -> str:
    out = []
    for key, qty, cost, mark in snap.positions:
        inst = registry.by_key(key)
        out.append(
            {
                "instrument": key,
                "qty": inst.size_text(qty),
                "cost": format_fixed(cost, MONEY_DECIMALS),
                "mark": inst.price_text(mark) if mark else None,
            }
        )
    return _json(out)


def _state_row(
    session: SessionEvents, seq: int, source: str, snap: PortfolioSnapshot
) -> PortfolioStateRow:
    return PortfolioStateRow(
        session_id=session.session_id,
        seq=seq,
        ts=snap.ts_recv,
        source=source,
        cash=snap.cash,
        equity=snap.equity,
        realised=snap.realised,
        unrealised=snap.unrealised,
        fees=snap.fees,
        funding=snap.funding,
        impact=snap.impact,
        slippage=snap.slippage,
        positions=_positions_json(snap, session.instruments),
    )


def _snapshot_differences(
    seq: int, journaled: PortfolioSnapshot, replayed: PortfolioSnapshot
) -> str:
    diffs = [
        f"{name} {getattr(journaled, name)} vs {getattr(replayed, name)}"
        for name in PortfolioSnapshot.__struct_fields__
        if getattr(journaled, name) != getattr(replayed, name)
    ]
    return f"seq {seq}: PortfolioSnapshot (journaled vs replayed) differs: {'; '.join(diffs)}"


def _replay_portfolio(session: SessionEvents) -> _PortfolioReplay:
    registry = session.instruments
    pf = Portfolio(session.initial_cash)
    last_price: dict[str, int] = {}
    rows: list[PortfolioStateRow] = []
    snapshots: list[PortfolioSnapshot] = []
    warnings: list[str] = []
    for seq, ev in session.events:
        if isinstance(ev, Fill):
            inst = session.instrument(seq, ev.exchange, ev.symbol)
            pf.apply_fill(ev, inst)
            last_price[inst.key] = ev.price
            snap = pf.snapshot_event(ev.ts_recv, last_price, registry)
            rows.append(_state_row(session, seq, "fill", snap))
        elif isinstance(ev, FundingPayment):
            inst = session.instrument(seq, ev.exchange, ev.symbol)
            pf.apply_funding(inst.key, ev.amount)
            snap = pf.snapshot_event(ev.ts_recv, last_price, registry)
            rows.append(_state_row(session, seq, "funding", snap))
        elif isinstance(ev, PortfolioSnapshot):
            marks = {key: mark for key, _qty, _cost, mark in ev.positions if mark}
            for key in marks:
                session.instrument(seq, *key.split(":", 1))
            last_price.update(marks)
            snap = pf.snapshot_event(ev.ts_recv, marks, registry)
            snapshots.append(snap)
            rows.append(_state_row(session, seq, "snapshot", snap))
            if msgspec.structs.replace(snap, ts_event=ev.ts_event) != ev:
                warnings.append(_snapshot_differences(seq, ev, snap))
    return _PortfolioReplay(rows, snapshots, pf, warnings)


def portfolio_state(session: SessionEvents) -> list[PortfolioStateRow]:
    """The ``portfolio_state`` rows of a session (see the module docstring)."""
    return _replay_portfolio(session).rows


# ---------------------------------------------------------------------------------------
# trade_history
# ---------------------------------------------------------------------------------------


class _Trip(msgspec.Struct):
    """A round trip being built. ``*_px_qty`` are sums of price x size (raw units)."""

    instrument: str
    direction: str
    entry_ts: int
    exit_ts: int | None = None
    size: int = 0
    entry_px_qty: int = 0
    entry_qty: int = 0
    exit_px_qty: int = 0
    exit_qty: int = 0
    gross: int = 0
    fees: int = 0
    impact: int = 0
    funding: int = 0
    fills: int = 0
    toxic: int = 0


def _share(amount: int, num: int, den: int) -> int:
    """``amount * num / den`` truncated toward zero."""
    q = abs(amount) * num // den
    return q if amount >= 0 else -q


def _avg_price(px_qty: int, qty: int) -> int:
    """``px_qty / qty`` rounded half away from zero (both non-negative)."""
    return (2 * px_qty + qty) // (2 * qty)


def _trip_row(session_id: str, t: _Trip) -> TradeHistoryRow:
    return TradeHistoryRow(
        session_id=session_id,
        instrument=t.instrument,
        direction=t.direction,
        entry_ts=t.entry_ts,
        exit_ts=t.exit_ts,
        size=t.size,
        avg_entry=_avg_price(t.entry_px_qty, t.entry_qty),
        avg_exit=_avg_price(t.exit_px_qty, t.exit_qty) if t.exit_qty else None,
        gross_pnl=t.gross,
        fees=t.fees,
        impact=t.impact,
        funding=t.funding,
        net_pnl=t.gross - t.fees - t.impact + t.funding,
        fills=t.fills,
        toxic_fills=t.toxic,
        holding_ns=None if t.exit_ts is None else t.exit_ts - t.entry_ts,
    )


def _trade_history(session: SessionEvents) -> tuple[list[TradeHistoryRow], list[str]]:
    toxic_ids = {ev.fill_id for _, ev in session.events if isinstance(ev, FillToxic)}
    pf = Portfolio(session.initial_cash)
    open_trips: dict[str, _Trip] = {}
    trips: list[_Trip] = []
    warnings: list[str] = []
    for seq, ev in session.events:
        if isinstance(ev, FundingPayment):
            key = session.instrument(seq, ev.exchange, ev.symbol).key
            trip = open_trips.get(key)
            if trip is None:
                warnings.append(f"seq {seq}: FundingPayment on {key} with no open position")
            else:
                trip.funding += ev.amount
            continue
        if not isinstance(ev, Fill):
            continue
        inst = session.instrument(seq, ev.exchange, ev.symbol)
        key = inst.key
        before = pf.qty(key)
        realised = pf.apply_fill(ev, inst)
        side = 1 if ev.side == "buy" else -1
        toxic = int(ev.toxic or ev.fill_id in toxic_ids)
        closing = min(abs(before), ev.size) if before and (before > 0) != (side > 0) else 0
        opening = ev.size - closing
        fee_closing = impact_closing = 0
        if closing:
            trip = open_trips[key]
            fee_closing = _share(ev.fee, closing, ev.size)
            impact_closing = _share(ev.impact_cost, closing, ev.size)
            trip.exit_px_qty += ev.price * closing
            trip.exit_qty += closing
            trip.gross += realised
            trip.fees += fee_closing
            trip.impact += impact_closing
            trip.fills += 1
            trip.toxic += toxic
            if closing == abs(before):
                trip.exit_ts = ev.ts_recv
                del open_trips[key]
        if opening:
            trip = open_trips.get(key)
            if trip is None:
                direction = "long" if side > 0 else "short"
                trip = open_trips[key] = _Trip(key, direction, ev.ts_recv)
                trips.append(trip)
            trip.entry_px_qty += ev.price * opening
            trip.entry_qty += opening
            trip.fees += ev.fee - fee_closing
            trip.impact += ev.impact_cost - impact_closing
            trip.fills += 1
            trip.toxic += toxic
            trip.size = max(trip.size, abs(pf.qty(key)))
    return [_trip_row(session.session_id, t) for t in trips], warnings


def trade_history(session: SessionEvents) -> list[TradeHistoryRow]:
    """The ``trade_history`` rows of a session (see the module docstring)."""
    return _trade_history(session)[0]


# ---------------------------------------------------------------------------------------
# trade_decisions
# ---------------------------------------------------------------------------------------


def trade_decisions(session: SessionEvents) -> list[TradeDecisionRow]:
    """The ``trade_decisions`` rows of a session (see the module docstring)."""
    orders: dict[str, int] = {}  # decision_id -> orders submitted
    decision_of: dict[str, str] = {}  # order_id -> decision_id
    filled: dict[str, int] = {}
    fees: dict[str, int] = {}
    for _, ev in session.events:
        if isinstance(ev, OrderSubmitted):
            orders[ev.decision_id] = orders.get(ev.decision_id, 0) + 1
            decision_of[ev.order_id] = ev.decision_id
        elif isinstance(ev, Fill) and ev.order_id in decision_of:
            did = decision_of[ev.order_id]
            filled[did] = filled.get(did, 0) + ev.size
            fees[did] = fees.get(did, 0) + ev.fee
    return [
        TradeDecisionRow(
            session_id=session.session_id,
            decision_id=ev.decision_id,
            ts=ev.ts_event,
            strategy=ev.strategy,
            exchange=ev.exchange,
            symbol=ev.symbol,
            action=ev.action,
            reasoning=ev.reasoning,
            features=_json(dict(ev.features)),
            confidence=ev.confidence,
            model_id=ev.model_id,
            orders=orders.get(ev.decision_id, 0),
            filled_size=filled.get(ev.decision_id, 0),
            fees=fees.get(ev.decision_id, 0),
        )
        for _, ev in session.events
        if isinstance(ev, Decision)
    ]


# ---------------------------------------------------------------------------------------
# performance_metrics
# ---------------------------------------------------------------------------------------


def sharpe_ratio(equity: Sequence[int], interval_ms: int) -> float | None:
    """Annualised Sharpe of an equity series sampled every ``interval_ms`` (365-day
    year, zero risk-free rate); None if it is undefined (see the module docstring).
    :func:`kernel.metrics.sharpe` of :func:`kernel.metrics.returns_from_equity`."""
    if interval_ms <= 0 or any(e <= 0 for e in equity[:-1]):
        return None
    return metrics.sharpe(
        metrics.returns_from_equity(equity), metrics.annualisation_periods(interval_ms)
    )


def _exposure(snap: PortfolioSnapshot | None, registry: InstrumentRegistry) -> str:
    if snap is None:
        return "{}"
    gross: dict[str, int] = {}
    for key, qty, cost, mark in snap.positions:
        inst = registry.by_key(key)
        value = abs(cost) if not mark else inst.notional(mark, abs(qty))
        gross[inst.base] = gross.get(inst.base, 0) + value
    exposure = {
        base: (value / snap.equity if snap.equity > 0 else None)
        for base, value in sorted(gross.items())
    }
    return _json(exposure)


def _buy_and_hold(session: SessionEvents) -> str:
    prices: dict[str, tuple[int, int]] = {}  # key -> (first, last) price seen
    traded: set[str] = set()
    for seq, ev in session.events:
        seen: list[tuple[str, int]] = []
        if isinstance(ev, Fill):
            key = session.instrument(seq, ev.exchange, ev.symbol).key
            traded.add(key)
            seen.append((key, ev.price))
        elif isinstance(ev, PortfolioSnapshot):
            seen.extend((key, mark) for key, _q, _c, mark in ev.positions if mark)
        for key, price in seen:
            first = prices.get(key, (price, price))[0]
            prices[key] = (first, price)
    out = {}
    for key in sorted(traded):
        inst = session.instruments.by_key(key)
        first, last = prices[key]
        out[key] = {
            "first": inst.price_text(first),
            "last": inst.price_text(last),
            "return": last / first - 1 if first > 0 else None,
        }
    return _json(out)


def _performance(
    session: SessionEvents, replay: _PortfolioReplay, trips: Sequence[TradeHistoryRow]
) -> PerformanceMetricsRow:
    initial = session.initial_cash
    rows = replay.rows
    final_equity = rows[-1].equity if rows else initial
    first_ts = session.events[0][1].ts_recv if session.events else 0
    start_ts = session.started.ts_event or first_ts
    if session.ended is not None:
        end_ts = session.ended.ts_event
    else:
        end_ts = session.events[-1][1].ts_recv if session.events else start_ts
    closed = [t.net_pnl for t in trips if t.exit_ts is not None]
    pf = replay.portfolio
    interval_ms = session.config.trading.engine.portfolio.snapshot_interval_ms
    return PerformanceMetricsRow(
        session_id=session.session_id,
        strategy=session.started.strategy,
        start_ts=start_ts,
        end_ts=end_ts,
        ended=int(session.ended is not None),
        initial_cash=initial,
        final_equity=final_equity,
        pnl=final_equity - initial,
        total_return=(final_equity - initial) / initial if initial > 0 else None,
        max_drawdown=max_drawdown([initial, *(r.equity for r in rows)]),
        sharpe=sharpe_ratio([s.equity for s in replay.snapshots], interval_ms),
        round_trips=len(closed),
        win_rate=win_rate(closed),
        profit_factor=profit_factor(closed),
        exposure=_exposure(replay.snapshots[-1] if replay.snapshots else None, session.instruments),
        buy_and_hold=_buy_and_hold(session),
        fills=sum(1 for _, ev in session.events if isinstance(ev, Fill)),
        fees=pf.fees,
        impact=pf.impact,
        funding=pf.funding,
        slippage=pf.slippage,
    )


def performance_metrics(session: SessionEvents) -> PerformanceMetricsRow:
    """The ``performance_metrics`` row of a session (see the module docstring)."""
    return _performance(session, _replay_portfolio(session), trade_history(session))


# ---------------------------------------------------------------------------------------
# All read models of a session; rebuild into the journal's storage
# ---------------------------------------------------------------------------------------


class Projection(msgspec.Struct, frozen=True):
    """Every read model of one session, plus what looked inconsistent while building."""

    session_id: str
    tables: dict[str, list[Row]]
    warnings: list[str]


def project_session(session: SessionEvents) -> Projection:
    replay = _replay_portfolio(session)
    trips, trip_warnings = _trade_history(session)
    tables: dict[str, list[Row]] = {
        PORTFOLIO_STATE: list(replay.rows),
        TRADE_HISTORY: list(trips),
        TRADE_DECISIONS: list(trade_decisions(session)),
        PERFORMANCE_METRICS: [_performance(session, replay, trips)],
        ARBITRAGE_OPPORTUNITIES: list(arbitrage_opportunities(session)),
    }
    return Projection(session.session_id, tables, replay.warnings + trip_warnings)


def write_projection(journal: Journal, projection: Projection) -> dict[str, int]:
    """Replace the session's rows of every read model; returns rows per table."""
    counts = {}
    with journal.transaction():
        for table in TABLES:
            rows = [storage_row(r) for r in projection.tables[table]]
            counts[table] = journal.write_read_model(
                table, projection.session_id, storage_columns(table), rows
            )
    return counts


class RebuildReport(msgspec.Struct, frozen=True):
    """Rows written per session and table; warnings as ``session: message``."""

    rows: dict[str, dict[str, int]]
    warnings: list[str]


def rebuild(
    journal: Journal, session_id: str | None = None, fallback_config: AppConfig | None = None
) -> RebuildReport:
    """Recompute the read models of one session, or of every session in the journal.

    Every session is projected before anything is written; the writes happen in one
    transaction. Rebuilding every session first drops the read models, so rows of
    sessions no longer in the journal (and tables of an older layout) go away.
    """
    from journal_tools.session import list_sessions

    every = session_id is None
    ids = [s.session_id for s in list_sessions(journal)] if every else [str(session_id)]
    projections = [project_session(load_session(journal, sid, fallback_config)) for sid in ids]
    rows: dict[str, dict[str, int]] = {}
    with journal.transaction():
        if every:
            for table in TABLES:
                journal.drop_read_model(table)
        for proj in projections:
            rows[proj.session_id] = write_projection(journal, proj)
    warnings = [f"{p.session_id}: {w}" for p in projections for w in p.warnings]
    return RebuildReport(rows=rows, warnings=warnings)


# ---------------------------------------------------------------------------------------
# --show rendering and the CLI entry point
# ---------------------------------------------------------------------------------------

Format = Literal["table", "json", "csv"]

TEXT_WIDTH = 48
"""Widest a text or JSON column gets in ``--show`` tables (longer cells fold)."""


def _row_instrument(
    table: str, row: dict[str, ReadModelValue], registry: InstrumentRegistry | None
) -> Instrument | None:
    if registry is None:
        return None
    if table == TRADE_HISTORY:
        key = str(row.get("instrument"))
    elif table == TRADE_DECISIONS:
        key = f"{row.get('exchange')}:{row.get('symbol')}"
    elif table == ARBITRAGE_OPPORTUNITIES:
        key = f"{row.get('buy_exchange')}:{row.get('symbol')}"
    else:
        return None
    return registry.by_key(key) if key in registry else None


def render_value(unit: Unit, value: ReadModelValue, inst: Instrument | None, fmt: Format) -> object:
    """A stored value as ``--show`` prints it: exact decimal strings for money, prices
    and sizes (when the instrument is known), nested JSON in JSON output, readable
    times and durations in the table."""
    if value is None:
        return None if fmt == "json" else ""
    if unit == "money" and isinstance(value, int):
        return format_fixed(value, MONEY_DECIMALS)
    if unit == "price" and isinstance(value, int) and inst is not None:
        return inst.price_text(value)
    if unit == "size" and isinstance(value, int) and inst is not None:
        return inst.size_text(value)
    if unit == "json" and fmt == "json" and isinstance(value, str):
        return msgspec.json.decode(value)
    if fmt == "table":
        if unit == "ns" and isinstance(value, int):
            from journal_tools.cli import fmt_ns

            return fmt_ns(value)
        if unit == "duration" and isinstance(value, int):
            return f"{format_fixed(value // POW10[6], 3)}s"
        if unit == "ratio" and isinstance(value, float):
            return f"{value:.6g}"
    return value


def _session_registries(
    journal: Journal, fallback: AppConfig | None
) -> dict[str, InstrumentRegistry]:
    from journal_tools.session import list_sessions

    out: dict[str, InstrumentRegistry] = {}
    for started in list_sessions(journal):
        try:
            config = session_config(started, fallback)
            out[started.session_id] = InstrumentRegistry(list(config.instruments.instruments))
        except (ProjectionError, InstrumentError):
            continue
    return out


def show(
    journal: Journal,
    table: str,
    session_id: str | None = None,
    fmt: Format = "table",
    limit: int | None = None,
    fallback_config: AppConfig | None = None,
) -> int:
    """Print read model ``table`` to stdout; returns the number of rows printed."""
    from rich.measure import Measurement
    from rich.table import Table

    from journal_tools.cli import console, out

    stored = journal.read_read_model(table, session_id)
    if not stored.columns:
        console.print(
            f"[yellow]read model {table} has not been built[/]; run `tickerml project --rebuild`"
        )
        return 0
    units: dict[str, Unit] = {c.name: c.unit for c in SCHEMAS[table]}
    units["session_id"] = "text"
    registries = _session_registries(journal, fallback_config)
    fallback_registry = (
        InstrumentRegistry(list(fallback_config.instruments.instruments))
        if fallback_config is not None
        else None
    )
    rows = stored.rows if limit is None else stored.rows[:limit]
    rendered: list[list[object]] = []
    for values in rows:
        row = dict(zip(stored.columns, values, strict=True))
        registry = registries.get(str(row["session_id"]), fallback_registry)
        inst = _row_instrument(table, row, registry)
        rendered.append([render_value(units.get(c, "text"), v, inst, fmt) for c, v in row.items()])
    if fmt == "json":
        for r in rendered:
            line = msgspec.json.encode(dict(zip(stored.columns, r, strict=True)))
            sys.stdout.write(line.decode() + "\n")
    elif fmt == "csv":
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(stored.columns)
        writer.writerows(rendered)
    else:
        title = f"{table}: {len(rows)} of {len(stored.rows)} rows"
        t = Table(title=title)
        for c in stored.columns:
            if units.get(c, "text") in ("text", "json"):
                t.add_column(c, overflow="fold", max_width=TEXT_WIDTH)
            else:
                t.add_column(c, justify="right", no_wrap=True)
        for r in rendered:
            t.add_row(*(str(v) for v in r))
        # Every cell whole, like psql: a table wider than the terminal wraps (or scrolls
        # in `less -S`) rather than squeezing columns to nothing.
        natural = Measurement.get(out, out.options.update_width(4000), t).maximum
        terminal = out.width
        out.width = max(terminal, natural)
        try:
            out.print(t)
        finally:
            out.width = terminal
    sys.stdout.flush()
    return len(rows)


def cli_project(args: argparse.Namespace, journal: Journal, config: AppConfig) -> int:
    """``tickerml project``: ``--rebuild`` (one --session or all) and/or ``--show TABLE``.
    Exit 0, or 2 for bad usage (an unknown table, a missing session)."""
    from rich.table import Table

    from journal_tools.cli import console, out

    table: str | None = args.show
    valid = ", ".join(TABLES)
    if table is not None and table not in TABLES:
        console.print(f"[red]error:[/] unknown read model {table!r}; the tables are: {valid}")
        return 2
    if not args.rebuild and table is None:
        console.print(f"[red]error:[/] give --rebuild and/or --show TABLE (tables: {valid})")
        return 2
    if args.limit is not None and args.limit < 0:
        console.print("[red]error:[/] --limit must be >= 0")
        return 2
    if args.rebuild:
        try:
            report = rebuild(journal, args.session, config)
        except ProjectionError as exc:
            console.print(f"[red]error:[/] {exc}")
            return 2
        summary = Table(title=f"read models rebuilt for {len(report.rows)} session(s)")
        summary.add_column("session", no_wrap=True)
        for name in TABLES:
            summary.add_column(name, justify="right")
        for sid, counts in report.rows.items():
            summary.add_row(sid, *(f"{counts[name]:,}" for name in TABLES))
        # Keep stdout machine-readable when rows are printed as JSON or CSV after it.
        (console if table is not None and args.format != "table" else out).print(summary)
        for w in report.warnings:
            console.print(f"[yellow]warning:[/] {w}")
    if table is not None:
        show(journal, table, args.session, args.format, args.limit, config)
    return 0


__all__ = [
    "PERFORMANCE_METRICS",
    "PORTFOLIO_STATE",
    "ROW_TYPES",
    "SCHEMAS",
    "TABLES",
    "TRADE_DECISIONS",
    "TRADE_HISTORY",
    "PerformanceMetricsRow",
    "PortfolioStateRow",
    "Projection",
    "ProjectionError",
    "RebuildReport",
    "SessionEvents",
    "TradeDecisionRow",
    "TradeHistoryRow",
    "cli_project",
    "load_session",
    "max_drawdown",
    "performance_metrics",
    "portfolio_state",
    "profit_factor",
    "project_session",
    "rebuild",
    "session_events",
    "sharpe_ratio",
    "show",
    "storage_columns",
    "storage_row",
    "trade_decisions",
    "trade_history",
    "win_rate",
]
