"""The ``arbitrage_opportunities`` read model: one row per arbitrage opportunity.

Folded from a session's events (journal_tools/projections.py builds, stores and shows it
with the other read models). An opportunity is an ``arbitrage`` Decision carrying the
feature ``opportunity`` (its number ``n``: id ``arbN``; strategies/arbitrage.py); its
legs are the OrderSubmitted events with its ``decision_id`` (the buy leg names the buy
venue, the sell leg the sell venue), and its unwind is the order of the ``unwind``
Decision with the same ``opportunity`` feature. Fills are matched to those orders by
``order_id``.

Columns (after ``session_id``):

* ``opportunity`` (``arb7``), ``decision_id``, ``ts`` (the decision's kernel time, ns),
  ``symbol``, ``buy_exchange``, ``sell_exchange``;
* ``size``: the buy leg's size; ``buy_filled``, ``sell_filled``, ``unwind_filled``:
  filled sizes; all in the buy instrument's size units (a sell-side size of another
  precision is rescaled, truncating);
* ``gross_bp``, ``net_bp`` (after both taker fees): the decision's features;
* ``expected_pnl``: the decision's ``expected_pnl_e8`` (MONEY, exact: the strategy
  journals an integer below 2**53);
* ``realised_pnl``: from the fills of the legs and the unwind, ``sell notional - buy
  notional - fees - impact`` (MONEY); null while an order is open;
* ``legs``: ``open`` (an order not closed yet), ``filled`` (both legs completely),
  ``partial`` (both legs the same size, less than asked), ``missed`` (neither filled),
  ``legged`` (sizes differ and no unwind was sent), ``unwinding``, ``unwound`` (the
  unwind filled completely) or ``unwind_partial``.

An order is closed by a Fill completing it, OrderExpired, OrderCancelled or
OrderRejected.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import msgspec

from adapters.journal.base import ReadModelType
from kernel.events import (
    Decision,
    Fill,
    OrderCancelled,
    OrderExpired,
    OrderRejected,
    OrderSubmitted,
)
from kernel.fixedpoint import POW10

if TYPE_CHECKING:
    from journal_tools.projections import SessionEvents

ARBITRAGE_OPPORTUNITIES = "arbitrage_opportunities"

ViewUnit = Literal["text", "ns", "size", "ratio", "money"]

ARBITRAGE_COLUMNS: tuple[tuple[str, ReadModelType, ViewUnit], ...] = (
    ("opportunity", "text", "text"),
    ("decision_id", "text", "text"),
    ("ts", "int", "ns"),
    ("symbol", "text", "text"),
    ("buy_exchange", "text", "text"),
    ("sell_exchange", "text", "text"),
    ("size", "int", "size"),
    ("buy_filled", "int", "size"),
    ("sell_filled", "int", "size"),
    ("unwind_filled", "int", "size"),
    ("gross_bp", "float", "ratio"),
    ("net_bp", "float", "ratio"),
    ("expected_pnl", "int", "money"),
    ("realised_pnl", "int", "money"),
    ("legs", "text", "text"),
)
"""(name, storage type, ``--show`` unit) of each column after ``session_id``."""


class ArbitrageOpportunityRow(msgspec.Struct, frozen=True):
    session_id: str
    opportunity: str
    decision_id: str
    ts: int
    symbol: str
    buy_exchange: str
    sell_exchange: str
    size: int
    buy_filled: int
    sell_filled: int
    unwind_filled: int
    gross_bp: float
    net_bp: float
    expected_pnl: int
    realised_pnl: int | None
    legs: str


@dataclass
class _Order:
    exchange: str
    symbol: str
    side: str
    size: int
    filled: int = 0
    cash: int = 0  # signed MONEY: + sell notional, - buy notional, - fees, - impact
    closed: bool = False


@dataclass
class _Opp:
    number: int
    decision: Decision
    legs: list[str] = field(default_factory=list)  # order ids
    unwind: list[str] = field(default_factory=list)


def _rescale(size: int, from_decimals: int, to_decimals: int) -> int:
    if to_decimals >= from_decimals:
        return size * POW10[to_decimals - from_decimals]
    return size // POW10[from_decimals - to_decimals]


def arbitrage_opportunities(session: SessionEvents) -> list[ArbitrageOpportunityRow]:
    """The ``arbitrage_opportunities`` rows of a session, in decision order."""
    opps: dict[int, _Opp] = {}
    by_decision: dict[str, int] = {}  # decision id -> opportunity (arbitrage or unwind)
    unwind_decisions: set[str] = set()
    orders: dict[str, _Order] = {}
    for seq, ev in session.events:
        if isinstance(ev, Decision):
            feats = dict(ev.features)
            if "opportunity" not in feats or ev.action not in ("arbitrage", "unwind"):
                continue
            n = int(feats["opportunity"])
            if ev.action == "arbitrage":
                opps[n] = _Opp(n, ev)
                by_decision[ev.decision_id] = n
            elif n in opps:
                by_decision[ev.decision_id] = n
                unwind_decisions.add(ev.decision_id)
        elif isinstance(ev, OrderSubmitted):
            n_of = by_decision.get(ev.decision_id)
            if n_of is None:
                continue
            orders[ev.order_id] = _Order(ev.exchange, ev.symbol, ev.side, ev.size)
            opp = opps[n_of]
            (opp.unwind if ev.decision_id in unwind_decisions else opp.legs).append(ev.order_id)
        elif isinstance(ev, Fill):
            o = orders.get(ev.order_id)
            if o is None:
                continue
            inst = session.instrument(seq, ev.exchange, ev.symbol)
            value = inst.notional(ev.price, ev.size)
            o.filled += ev.size
            o.cash += (value if ev.side == "sell" else -value) - ev.fee - ev.impact_cost
            if o.filled >= o.size:
                o.closed = True
        elif isinstance(ev, OrderExpired | OrderCancelled | OrderRejected):
            o = orders.get(ev.order_id)
            if o is not None:
                o.closed = True
    return [_row(session, opp, orders) for _, opp in sorted(opps.items())]


def _row(session: SessionEvents, opp: _Opp, orders: dict[str, _Order]) -> ArbitrageOpportunityRow:
    d = opp.decision
    feats = dict(d.features)
    legs = [orders[o] for o in opp.legs]
    buy = next((o for o in legs if o.side == "buy"), None)
    sell = next((o for o in legs if o.side == "sell"), None)
    unwinds = [orders[o] for o in opp.unwind]
    buy_inst = session.instruments.get(d.exchange, d.symbol)
    decimals = buy_inst.size_decimals

    def own(o: _Order | None, size: int) -> int:
        if o is None:
            return 0
        return _rescale(size, session.instruments.get(o.exchange, o.symbol).size_decimals, decimals)

    size = buy.size if buy is not None else 0
    bought = buy.filled if buy is not None else 0
    sold = own(sell, sell.filled) if sell is not None else 0
    unwound = sum(own(u, u.filled) for u in unwinds)
    every = [*legs, *unwinds]
    closed = all(o.closed for o in every) and buy is not None and sell is not None
    if not closed:
        status = "unwinding" if unwinds else "open"
    elif unwinds:
        excess = abs(bought - sold)
        status = "unwound" if unwound >= excess else "unwind_partial"
    elif bought == sold == size:
        status = "filled"
    elif bought == sold == 0:
        status = "missed"
    elif bought == sold:
        status = "partial"
    else:
        status = "legged"
    return ArbitrageOpportunityRow(
        session_id=session.session_id,
        opportunity=f"arb{opp.number}",
        decision_id=d.decision_id,
        ts=d.ts_event,
        symbol=d.symbol,
        buy_exchange=buy.exchange if buy is not None else d.exchange,
        sell_exchange=sell.exchange if sell is not None else "",
        size=size,
        buy_filled=bought,
        sell_filled=sold,
        unwind_filled=unwound,
        gross_bp=float(feats.get("gross_bp", 0.0)),
        net_bp=float(feats.get("net_bp", 0.0)),
        expected_pnl=int(feats.get("expected_pnl_e8", 0.0)),
        realised_pnl=sum(o.cash for o in every) if closed else None,
        legs=status,
    )


__all__ = [
    "ARBITRAGE_COLUMNS",
    "ARBITRAGE_OPPORTUNITIES",
    "ArbitrageOpportunityRow",
    "arbitrage_opportunities",
]
