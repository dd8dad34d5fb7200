"""The paper trader's books: cash, positions, realised and unrealised P&L, costs.

Pure and integer: money is in MONEY units (1e-8 quote), sizes in each instrument's
size units. Every quote currency counts at par (USDT = USD = USDC).

Accounting is cash-based for spot and perps alike: a buy pays its notional, a sell
receives it, so ``equity = cash + sum(size x mark)`` for every position, long or short.
For linear perps this equals margin accounting's equity (margin balance + unrealised
P&L); it differs only in what is called cash. Costs are tracked separately so that
none is hidden:

* ``fees``: maker/taker fees charged (negative for rebates), paid from cash;
* ``impact``: the square-root market-impact cost of taker fills, paid from cash;
* ``funding``: perp funding received (negative: paid), into cash;
* ``slippage``: how much worse than the touch at arrival a taker order filled. It is
  already inside the fill prices, so it is reported, not charged again.

Realised P&L uses the average cost of the open position and is gross of costs:
``net P&L = realised + unrealised - fees - impact + funding``.
"""

from __future__ import annotations

import msgspec

from kernel.events import Fill, PortfolioSnapshot
from kernel.fixedpoint import POW10, RATE_DECIMALS, notional
from kernel.instruments import Instrument, InstrumentRegistry

RATE_SCALE = POW10[RATE_DECIMALS]


class Position(msgspec.Struct, array_like=True):
    """One instrument's position. ``cost`` is the signed MONEY basis of the open size
    (positive long, negative short); ``cost / size`` is the average entry price."""

    key: str
    qty: int = 0
    cost: int = 0
    realised: int = 0
    fees: int = 0
    funding: int = 0
    impact: int = 0
    slippage: int = 0
    volume: int = 0
    fills: int = 0
    opened_ts: int = 0


class PortfolioState(msgspec.Struct, array_like=True):
    cash: int
    initial_cash: int
    positions: list[Position]
    realised: int
    fees: int
    funding: int
    impact: int
    slippage: int


def _part(amount: int, num: int, den: int) -> int:
    """``amount * num / den`` truncated toward zero (exact integer arithmetic)."""
    q = abs(amount) * num // den
    return q if amount >= 0 else -q


class Portfolio:
    """Cash and positions, updated by fills and funding payments."""

    def __init__(self, initial_cash: int) -> None:
        self.initial_cash = initial_cash
        self.cash = initial_cash
        self.positions: dict[str, Position] = {}
        self.realised = 0
        self.fees = 0
        self.funding = 0
        self.impact = 0
        self.slippage = 0

    # -- updates ---------------------------------------------------------------------

    def apply_fill(self, fill: Fill, inst: Instrument) -> int:
        """Book one fill; returns the gross P&L it realised (MONEY)."""
        key = inst.key
        pos = self.positions.get(key)
        if pos is None:
            pos = self.positions[key] = Position(key)
        side = 1 if fill.side == "buy" else -1
        pd, sd = inst.price_decimals, inst.size_decimals
        value = notional(fill.price, pd, fill.size, sd)
        self.cash -= side * value + fill.fee + fill.impact_cost
        pos.fees += fill.fee
        pos.impact += fill.impact_cost
        pos.slippage += fill.slippage
        pos.volume += value
        pos.fills += 1
        self.fees += fill.fee
        self.impact += fill.impact_cost
        self.slippage += fill.slippage
        realised = 0
        size = fill.size
        if pos.qty and (pos.qty > 0) != (side > 0):
            held = abs(pos.qty)
            closing = min(held, size)
            basis = _part(pos.cost, closing, held)
            value_closed = notional(fill.price, pd, closing, sd)
            realised = -side * value_closed - basis
            pos.qty += side * closing
            pos.cost -= basis
            size -= closing
        if size:
            if not pos.qty:
                pos.opened_ts = fill.ts_event
            pos.qty += side * size
            pos.cost += side * notional(fill.price, pd, size, sd)
        pos.realised += realised
        self.realised += realised
        return realised

    def apply_funding(self, key: str, amount: int) -> None:
        pos = self.positions.get(key)
        if pos is None:
            pos = self.positions[key] = Position(key)
        pos.funding += amount
        self.funding += amount
        self.cash += amount

    # -- queries ---------------------------------------------------------------------

    def qty(self, key: str) -> int:
        pos = self.positions.get(key)
        return pos.qty if pos is not None else 0

    def open_positions(self) -> list[Position]:
        return [self.positions[k] for k in sorted(self.positions) if self.positions[k].qty]

    def snapshot_event(
        self, now: int, marks: dict[str, int], instruments: InstrumentRegistry
    ) -> PortfolioSnapshot:
        """The books marked at ``marks`` (price units per key; a position without a mark
        is marked at its average entry price, so it adds no unrealised P&L)."""
        value = 0
        unrealised = 0
        rows = []
        for pos in self.open_positions():
            inst = instruments.by_key(pos.key)
            mark = marks.get(pos.key)
            if mark is None:
                pos_value = pos.cost
                mark = 0
            else:
                pos_value = _signed_notional(mark, pos.qty, inst)
            value += pos_value
            unrealised += pos_value - pos.cost
            rows.append((pos.key, pos.qty, pos.cost, mark))
        return PortfolioSnapshot(
            ts_event=now,
            ts_recv=now,
            cash=self.cash,
            equity=self.cash + value,
            realised=self.realised,
            unrealised=unrealised,
            fees=self.fees,
            funding=self.funding,
            impact=self.impact,
            slippage=self.slippage,
            positions=tuple(rows),
        )

    # -- state -----------------------------------------------------------------------

    def state(self) -> PortfolioState:
        return PortfolioState(
            cash=self.cash,
            initial_cash=self.initial_cash,
            positions=[self.positions[k] for k in sorted(self.positions)],
            realised=self.realised,
            fees=self.fees,
            funding=self.funding,
            impact=self.impact,
            slippage=self.slippage,
        )

    def restore(self, st: PortfolioState) -> None:
        self.cash = st.cash
        self.initial_cash = st.initial_cash
        self.positions = {p.key: p for p in st.positions}
        self.realised = st.realised
        self.fees = st.fees
        self.funding = st.funding
        self.impact = st.impact
        self.slippage = st.slippage


def _signed_notional(price: int, qty: int, inst: Instrument) -> int:
    v = notional(price, inst.price_decimals, abs(qty), inst.size_decimals)
    return v if qty >= 0 else -v


def funding_amount(qty: int, mark: int, rate: int, inst: Instrument) -> int:
    """Funding received by a position of ``qty`` at ``mark`` for a ``rate`` in RATE
    units: ``-qty x mark x rate``, rounded half away from zero. Longs pay a positive
    rate, shorts receive it."""
    num = -_signed_notional(mark, qty, inst) * rate
    q, r = divmod(abs(num), RATE_SCALE)
    if 2 * r >= RATE_SCALE:
        q += 1
    return q if num >= 0 else -q
