"""Cross-exchange arbitrage: the pure :class:`ArbitrageMonitor` and its kernel strategy.

The monitor compares the books of one normalised symbol (``BTC-USDT``) on every venue
that quotes it and, for each ordered pair (buy on the cheap venue, sell on the rich
one), walks both books level by level. With ``B(q)`` the cost of buying ``q`` on the
cheap venue's asks and ``S(q)`` the proceeds of selling ``q`` into the rich venue's
bids, taker fee rates ``fb``, ``fs`` (ppm), threshold ``h`` (the minimum profit plus the
latency haircut, in 1e-6 of notional) and a fixed cost ``K`` per opportunity
(quote, e.g. the amortised withdrawal fee of the rebalancing transfer)::

    G(q) = S(q) * (1 - fs) - B(q) * (1 + fb + h)        profitable  <=>  G(q) >= K

``G`` is concave and piecewise linear in ``q`` (each level pair gives one slope), so
the profitable sizes are one interval ``[min_profitable, max_profitable]``; both ends
are found exactly in integers (sizes on a common lot grid of the two instruments,
prices on a common tick scale). The traded size is then risk-adjusted:
``depth_fraction`` of ``max_profitable``, capped by ``max_size``, by inventory on each
venue (a spot sell cannot exceed what the venue holds; ``max_inventory`` bounds the
position a leg may build), by cash for a spot buy (the venue's own check: limit price
x size plus fee), and refused below ``min_profitable`` or an instrument's
``min_notional``.

Latency. Between the decision and an order's arrival each venue's mid drifts; the
expected absolute move over the venue's expected entry latency ``t`` (the latency
profile's mean, times ``1 + p (m - 1)`` for spikes of probability ``p`` and multiplier
``m`` in the log-normal model) is ``sqrt(2/pi) * sigma * sqrt(t)``, with ``sigma^2``
the per-second variance of the mid's log returns (EWMA with ``vol_half_life_ms``). The
two legs' drifts (in bp, rounded up to 0.01 bp) are added to the threshold, so the
size and the decision are latency aware. The decision's confidence is
``Phi(margin / drift)``: the chance that a drift of that size does not eat the margin
over the threshold (1 when no drift is expected).

Execution. Both legs go out in the same kernel step as IOC limit orders at the
worst price each walk touches (``ctx.submit``). The monitor tracks their fills; once
both are closed (filled, expired, cancelled or rejected) a mismatch is legging risk:
the excess is unwound with a market order on the venue that over-filled (sell what was
bought, buy back what was sold), journaled as an ``unwind`` Decision. When everything
is closed the opportunity is reconciled: ``expected_pnl = S - B - fees`` at the quoted
books (fees per level, rounded as the venue rounds each fill) against
``realised_pnl = sell notional - buy notional - fees - impact`` of every fill of the
legs and the unwind (``fixed_cost`` and the latency haircut are not fills and are in
neither). Analytics: opportunities, hits (both legs completely filled), hit rate
(hits / reconciled) and the mean realised bp captured (realised P&L over the bought
notional, over reconciled opportunities that bought something).

Rebalancing. A paper portfolio keeps positions per venue and cannot move coins, so a
transfer is a plan: when a spot sell venue's inventory after a trade is under
``rebalance_below``, a ``rebalance`` Decision names the transfer (half the difference
from the venue with more), the route's transfer time (``transfer_s``,
``transfer_s_by_route``) and its arrival time; one transfer per route is pending at a
time (a timer clears it at arrival).

Every action is a ``Decision`` (``arbitrage``, ``unwind``, ``reconcile``,
``rebalance``, ``skip``) whose reasoning names the numbers and the thresholds, and whose
features carry ``opportunity`` (the monitor's number: ``arb7`` is 7) for the read
model ``arbitrage_opportunities`` (journal_tools/arbitrage_view.py). Money is integer
MONEY units (1e-8 quote), prices and sizes the instruments' integer units; floats only
for bp, volatilities and confidence.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Literal

import msgspec

from kernel.book import L2Book
from kernel.config import LatencyProfile, ParamValue
from kernel.context import StrategyContext
from kernel.events import (
    BookDelta,
    BookSnapshot,
    Event,
    Fill,
    MarketEvent,
    OrderCancelled,
    OrderExpired,
    OrderRejected,
    Side,
)
from kernel.fixedpoint import MONEY_DECIMALS, POW10, apply_rate_ppm, format_fixed, parse_fixed
from kernel.instruments import Instrument
from strategies.base import BaseStrategy

PPM = 1_000_000
"""Rates (fees, thresholds as fractions of notional) are in 1e-6 units."""

CENTI_BP_PER_PPM = 1
"""A hundredth of a basis point is 1e-6 of notional: thresholds in 0.01 bp are ppm."""

Level = tuple[int, int]
LegsStatus = Literal["open", "filled", "partial", "missed", "legged", "unwound", "unwind_partial"]


class ArbitrageConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The arbitrage strategy's parameters (``trading.strategy.params``).

    Decimal quantities are text (exact): ``min_profit_bp`` in bp with at most two
    decimals; ``depth_fraction`` in (0, 1] with at most six; ``max_size``,
    ``max_inventory`` and ``rebalance_below`` in base units ("" = no cap / never);
    ``fixed_cost`` in quote per opportunity. ``symbols`` / ``exchanges``: comma lists
    ("" = every symbol seen on two venues or more / every venue). ``latency_ms``:
    ``BINANCE=150,KUCOIN=180`` expected entry latencies that override the latency
    profiles. ``transfer_s_by_route``: ``BINANCE>COINBASE=600`` overrides
    ``transfer_s``. ``max_levels``: book levels walked per side. ``cooldown_ms``:
    kernel time between two opportunities of one symbol (besides one in flight at a
    time; the strategy sees the market's book, not what its own fills took from it).
    ``skip_journal``: journal a ``skip`` Decision when a profitable spread cannot be
    traded (once per route and kind of reason, until the route trades)."""

    symbols: str = ""
    exchanges: str = ""
    min_profit_bp: str = "2"
    depth_fraction: str = "0.5"
    max_size: str = ""
    max_inventory: str = ""
    fixed_cost: str = "0"
    vol_half_life_ms: int = 10_000
    latency_ms: str = ""
    transfer_s: int = 1_800
    transfer_s_by_route: str = ""
    rebalance_below: str = ""
    max_levels: int = 50
    cooldown_ms: int = 1_000
    skip_journal: bool = True

    def __post_init__(self) -> None:
        if self.vol_half_life_ms <= 0 or self.max_levels < 1:
            raise ValueError("arbitrage: need vol_half_life_ms > 0 and max_levels >= 1")
        if self.transfer_s < 0 or self.cooldown_ms < 0:
            raise ValueError("arbitrage: need transfer_s >= 0 and cooldown_ms >= 0")
        if parse_fixed(self.min_profit_bp, 2) < 0:
            raise ValueError("arbitrage: min_profit_bp must be >= 0")
        if not 0 < parse_fixed(self.depth_fraction, 6) <= PPM:
            raise ValueError("arbitrage: depth_fraction must be within (0, 1]")
        if parse_fixed(self.fixed_cost, MONEY_DECIMALS) < 0:
            raise ValueError("arbitrage: fixed_cost must be >= 0")
        _pairs(self.latency_ms, "latency_ms")
        _pairs(self.transfer_s_by_route, "transfer_s_by_route")


def _pairs(text: str, where: str) -> dict[str, float]:
    """``A=1,B=2.5`` -> {A: 1.0, B: 2.5}; a clear error for anything else."""
    out: dict[str, float] = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        key, eq, value = item.partition("=")
        try:
            number = float(value)
        except ValueError:
            number = -1.0
        if not eq or not key.strip() or number < 0:
            raise ValueError(f"arbitrage: {where}: expected NAME=NUMBER >= 0, got {item!r}")
        out[key.strip().upper()] = number
    return out


def _names(text: str) -> frozenset[str]:
    return frozenset(s.strip().upper() for s in text.split(",") if s.strip())


def expected_entry_ms(profile: LatencyProfile) -> float:
    """Mean entry latency (ms) of a profile, spikes included for the log-normal model."""
    if profile.model == "constant":
        return profile.entry_mean_ms
    p, m = profile.spike_probability, profile.spike_multiplier
    return profile.entry_mean_ms * (1 + p * (m - 1))


def _lcm(a: int, b: int) -> int:
    return a * b // math.gcd(a, b)


# ---------------------------------------------------------------------------------------
# The book walk
# ---------------------------------------------------------------------------------------


class Walk(msgspec.Struct, frozen=True):
    """The profitable interval of one route, on the common size grid.

    Sizes are in grid units of ``10**-grid_decimals`` base, multiples of ``step`` (the
    least common multiple of both lots); ``min_size``/``max_size`` 0 when none is
    profitable. ``buy_unit``/``sell_unit``: grid units per instrument size unit."""

    min_size: int
    max_size: int
    step: int
    grid_decimals: int
    buy_unit: int
    sell_unit: int


def walk_route(
    buy: Instrument,
    asks: Sequence[Level],
    sell: Instrument,
    bids: Sequence[Level],
    hurdle_ppm: int,
    fixed_cost: int = 0,
) -> Walk:
    """The sizes for which buying on ``buy``'s ``asks`` and selling into ``sell``'s
    ``bids`` (best first, the instruments' units) earn at least ``hurdle_ppm`` (1e-6 of
    the bought notional) plus ``fixed_cost`` (MONEY) net of both taker fees."""
    d = max(buy.size_decimals, sell.size_decimals)
    p = max(buy.price_decimals, sell.price_decimals)
    ub, us = POW10[d - buy.size_decimals], POW10[d - sell.size_decimals]
    pb, ps = POW10[p - buy.price_decimals], POW10[p - sell.price_decimals]
    step = _lcm(buy.lot_size * ub, sell.lot_size * us)
    # value scale 10**-e quote: raw price x size products (10**-(p+d)) and money (10**-8)
    e = max(p + d, MONEY_DECIMALS)
    raw_scale = POW10[e - p - d]
    k_target = fixed_cost * POW10[e - MONEY_DECIMALS] * PPM
    buy_mult = PPM + buy.taker_fee_ppm + hurdle_ppm
    sell_mult = PPM - sell.taker_fee_ppm
    i = j = 0
    ra = asks[0][1] * ub if asks else 0
    rb = bids[0][1] * us if bids else 0
    q = 0
    g_total = 0  # G(q) in 10**-e quote x 1e-6
    q_lo = 0
    while i < len(asks) and j < len(bids):
        slope = (bids[j][0] * ps * sell_mult - asks[i][0] * pb * buy_mult) * raw_scale
        n = min(ra, rb)
        if slope >= 0:
            if not q_lo and g_total + slope * n >= k_target and (slope > 0 or k_target <= 0):
                need = 1 if slope == 0 else max(1, -(-(k_target - g_total) // slope))
                q_lo = q + need
            q += n
            g_total += slope * n
        else:
            if g_total < k_target:
                break
            k = min(n, (g_total - k_target) // -slope)
            q += k
            g_total += slope * k
            if k < n:
                break
        ra -= n
        rb -= n
        if ra == 0:
            i += 1
            ra = asks[i][1] * ub if i < len(asks) else 0
        if rb == 0:
            j += 1
            rb = bids[j][1] * us if j < len(bids) else 0
    if not q_lo or g_total < k_target:
        return Walk(0, 0, step, d, ub, us)
    lo = -(-q_lo // step) * step
    hi = q // step * step
    if lo > hi:
        return Walk(0, 0, step, d, ub, us)
    return Walk(lo, hi, step, d, ub, us)


class LegPlan(msgspec.Struct, frozen=True):
    """One leg of a sized opportunity: what walking the book for ``size`` gives.
    ``limit``: the worst level price touched; ``value``: notional (MONEY); ``fee``: the
    taker fee rounded per level as the venue rounds each fill."""

    exchange: str
    symbol: str
    side: Side
    size: int
    limit: int
    value: int
    fee: int


def plan_leg(inst: Instrument, side: Side, levels: Sequence[Level], size: int) -> LegPlan:
    """Walk ``levels`` (best first) for ``size`` (instrument units; must fit)."""
    left, value, fee, limit = size, 0, 0, 0
    for price, avail in levels:
        if left <= 0:
            break
        take = min(avail, left)
        v = inst.notional(price, take)
        value += v
        fee += apply_rate_ppm(v, inst.taker_fee_ppm)
        limit = price
        left -= take
    if left > 0:
        raise ValueError(f"{inst.key}: the book holds less than {inst.size_text(size)}")
    return LegPlan(inst.exchange, inst.symbol, side, size, limit, value, fee)


class Quote(msgspec.Struct, frozen=True):
    """A detected, sized opportunity. bp are of the bought notional ``buy.value``."""

    symbol: str
    buy: LegPlan
    sell: LegPlan
    walk: Walk
    size_reason: str
    gross_bp: float
    fees_bp: float
    net_bp: float
    latency_bp: float
    fixed_cost_bp: float
    threshold_bp: float
    expected_pnl: int
    adjusted_pnl: int
    confidence: float


# ---------------------------------------------------------------------------------------
# Tracking state (msgspec, so the strategy's state round-trips)
# ---------------------------------------------------------------------------------------


class Leg(msgspec.Struct, array_like=True):
    order_id: str
    exchange: str
    symbol: str
    side: Side
    size: int
    filled: int = 0
    value: int = 0
    fees: int = 0
    impact: int = 0
    closed: bool = False
    close_reason: str = ""


class Opportunity(msgspec.Struct, array_like=True):
    number: int
    decision_id: str
    ts: int
    symbol: str
    buy: Leg
    sell: Leg
    expected_pnl: int
    gross_bp: float
    net_bp: float
    unwind: Leg | None = None
    realised_pnl: int = 0
    legs_status: LegsStatus = "open"


class Analytics(msgspec.Struct, array_like=True):
    """Running counts; ``captured_bp_sum`` over ``captured_n`` reconciled opportunities
    that bought something."""

    opportunities: int = 0
    reconciled: int = 0
    hits: int = 0
    partial: int = 0
    legged: int = 0
    missed: int = 0
    expected_pnl: int = 0
    realised_pnl: int = 0
    captured_bp_sum: float = 0.0
    captured_n: int = 0

    @property
    def hit_rate(self) -> float:
        return self.hits / self.reconciled if self.reconciled else 0.0

    @property
    def avg_bp_captured(self) -> float:
        return self.captured_bp_sum / self.captured_n if self.captured_n else 0.0


class MidVol(msgspec.Struct, array_like=True):
    """EWMA of squared mid log returns per second; ``ts``/``mid_x2`` the last sample."""

    ts: int = 0
    mid_x2: int = 0
    var_per_s: float = 0.0
    samples: int = 0


class MonitorState(msgspec.Struct, array_like=True):
    next_number: int = 1
    vols: dict[str, MidVol] = msgspec.field(default_factory=dict)
    open: dict[int, Opportunity] = msgspec.field(default_factory=dict)
    by_order: dict[str, int] = msgspec.field(default_factory=dict)
    busy: dict[str, int] = msgspec.field(default_factory=dict)  # symbol -> opportunity
    next_allowed: dict[str, int] = msgspec.field(default_factory=dict)  # symbol -> ns
    transfers: dict[str, int] = msgspec.field(default_factory=dict)  # route -> arrival ns
    analytics: Analytics = msgspec.field(default_factory=Analytics)
    skips: dict[str, str] = msgspec.field(default_factory=dict)  # route -> last reason
    venues: dict[str, list[str]] = msgspec.field(default_factory=dict)  # symbol -> venues


class Unwind(msgspec.Struct, frozen=True):
    """What legging left: trade ``side`` ``size`` on ``exchange`` to be flat again."""

    number: int
    exchange: str
    symbol: str
    side: Side
    size: int


class Transfer(msgspec.Struct, frozen=True):
    """A planned inventory transfer ``size`` (units of the source instrument)."""

    route: str
    symbol: str
    source: str
    destination: str
    size: int
    transfer_s: float
    arrives: int


# ---------------------------------------------------------------------------------------
# The monitor
# ---------------------------------------------------------------------------------------


class ArbitrageMonitor:
    """Detection, sizing, leg tracking, reconciliation and analytics; no engine needed.

    ``instruments``: every instrument it may see (same normalised symbol = same asset).
    ``latency``: per-exchange profiles (the ``latency_ms`` config wins)."""

    def __init__(
        self,
        config: ArbitrageConfig,
        instruments: Iterable[Instrument] = (),
        latency: Mapping[str, LatencyProfile] | None = None,
    ) -> None:
        self.config = config
        self.instruments: dict[str, Instrument] = {i.key: i for i in instruments}
        self.latency: dict[str, LatencyProfile] = dict(latency or {})
        self.latency_ms = _pairs(config.latency_ms, "latency_ms")
        self.transfer_by_route = _pairs(config.transfer_s_by_route, "transfer_s_by_route")
        self.symbols = _names(config.symbols)
        self.exchanges = _names(config.exchanges)
        self.min_profit_ppm = parse_fixed(config.min_profit_bp, 2) * CENTI_BP_PER_PPM
        self.depth_fraction_ppm = parse_fixed(config.depth_fraction, 6)
        self.fixed_cost = parse_fixed(config.fixed_cost, MONEY_DECIMALS)
        self.st = MonitorState()

    # -- configuration lookups --------------------------------------------------------

    def add_instrument(self, inst: Instrument) -> None:
        self.instruments.setdefault(inst.key, inst)

    def watches(self, exchange: str, symbol: str) -> bool:
        return (not self.symbols or symbol in self.symbols) and (
            not self.exchanges or exchange in self.exchanges
        )

    def entry_latency_ms(self, exchange: str) -> float:
        if exchange in self.latency_ms:
            return self.latency_ms[exchange]
        return expected_entry_ms(self.latency.get(exchange) or LatencyProfile())

    def transfer_seconds(self, source: str, destination: str) -> float:
        return self.transfer_by_route.get(f"{source}>{destination}", float(self.config.transfer_s))

    def _size_cap(self, text: str, inst: Instrument) -> int | None:
        return inst.size(text) if text else None

    # -- volatility ------------------------------------------------------------------

    def observe_mid(self, key: str, ts: int, mid_x2: int | None) -> None:
        """Feed a mid (twice the mid, price units) seen at kernel time ``ts`` (ns). Moves
        within one timestamp are folded into the next sample's return."""
        if mid_x2 is None or mid_x2 <= 0:
            return
        v = self.st.vols.get(key)
        if v is None:
            self.st.vols[key] = MidVol(ts, mid_x2)
            return
        dt = ts - v.ts
        if dt <= 0:
            return
        r = math.log(mid_x2 / v.mid_x2)
        rate = r * r / (dt / 1e9)
        if v.samples == 0:
            v.var_per_s = rate
        else:
            alpha = 1.0 - 2.0 ** (-(dt / 1e6) / self.config.vol_half_life_ms)
            v.var_per_s += alpha * (rate - v.var_per_s)
        v.samples += 1
        v.ts, v.mid_x2 = ts, mid_x2

    def sigma_per_sqrt_s(self, key: str) -> float:
        v = self.st.vols.get(key)
        return math.sqrt(v.var_per_s) if v is not None and v.samples else 0.0

    def drift_bp(self, key: str, exchange: str) -> float:
        """Expected |mid move| (bp) over the venue's expected entry latency."""
        t_s = self.entry_latency_ms(exchange) / 1e3
        return math.sqrt(2 / math.pi) * self.sigma_per_sqrt_s(key) * math.sqrt(t_s) * 1e4

    # -- detection and sizing -----------------------------------------------------------

    def evaluate(
        self,
        symbol: str,
        books: Mapping[str, tuple[Sequence[Level], Sequence[Level]]],
        positions: Mapping[str, int] | None = None,
        cash: int | None = None,
    ) -> tuple[Quote | None, dict[str, str]]:
        """The best opportunity (largest latency- and cost-adjusted expected P&L) over
        every ordered venue pair of ``symbol``, and, per route ``BUY>SELL`` with a
        profitable spread that could not be traded, why. ``books``: exchange -> (bids,
        asks) best first; ``positions``: exchange -> signed position (size units);
        ``cash``: MONEY available for spot buys (None: unchecked)."""
        positions = positions or {}
        best: Quote | None = None
        why: dict[str, str] = {}
        venues = sorted(books)
        for bx in venues:
            for sx in venues:
                if bx == sx:
                    continue
                asks, bids = books[bx][1], books[sx][0]
                if not asks or not bids:
                    continue
                buy = self.instruments[f"{bx}:{symbol}"]
                sell = self.instruments[f"{sx}:{symbol}"]
                quote, reason = self.quote_route(buy, asks, sell, bids, positions, cash)
                if quote is None:
                    if reason:
                        why[f"{bx}>{sx}"] = reason
                    continue
                if best is None or quote.adjusted_pnl > best.adjusted_pnl:
                    best = quote
        return best, why

    def quote_route(
        self,
        buy: Instrument,
        asks: Sequence[Level],
        sell: Instrument,
        bids: Sequence[Level],
        positions: Mapping[str, int] | None = None,
        cash: int | None = None,
    ) -> tuple[Quote | None, str]:
        """Size and price one route; (None, "") when nothing is profitable and (None,
        reason) when a profitable spread cannot be traded."""
        positions = positions or {}
        # cheap rejection: the touch must beat both fees at all
        p = max(buy.price_decimals, sell.price_decimals)
        touch_sell = bids[0][0] * POW10[p - sell.price_decimals] * (PPM - sell.taker_fee_ppm)
        touch_buy = asks[0][0] * POW10[p - buy.price_decimals] * (PPM + buy.taker_fee_ppm)
        if touch_sell <= touch_buy:
            return None, ""
        drift = self.drift_bp(buy.key, buy.exchange) + self.drift_bp(sell.key, sell.exchange)
        latency_ppm = math.ceil(drift * 100 - 1e-9) * CENTI_BP_PER_PPM if drift > 0 else 0
        hurdle = self.min_profit_ppm + latency_ppm
        walk = walk_route(buy, asks, sell, bids, hurdle, self.fixed_cost)
        if not walk.max_size:
            return None, ""
        step = walk.step
        size = walk.max_size * self.depth_fraction_ppm // PPM // step * step
        reason = f"depth fraction {_decimal_text(self.depth_fraction_ppm, 6)}"
        caps: list[tuple[int, str]] = []
        if (cap := self._size_cap(self.config.max_size, buy)) is not None:
            caps.append((cap * walk.buy_unit, f"max_size {self.config.max_size}"))
        held_buy = positions.get(buy.exchange, 0)
        held_sell = positions.get(sell.exchange, 0)
        max_inv_b = self._size_cap(self.config.max_inventory, buy)
        max_inv_s = self._size_cap(self.config.max_inventory, sell)
        if max_inv_b is not None:
            room = max(0, max_inv_b - held_buy)
            caps.append(
                (room * walk.buy_unit, f"{buy.exchange} inventory room {buy.size_text(room)}")
            )
        if sell.kind == "spot":
            held = max(0, held_sell)
            caps.append((held * walk.sell_unit, f"{sell.exchange} holds {sell.size_text(held)}"))
        elif max_inv_s is not None:
            room = max(0, max_inv_s + held_sell)
            caps.append(
                (room * walk.sell_unit, f"{sell.exchange} short room {sell.size_text(room)}")
            )
        for cap_grid, why in caps:
            cap_grid = cap_grid // step * step
            if cap_grid < size:
                size, reason = cap_grid, why
        if cash is not None and buy.kind == "spot" and size > 0:
            affordable = self._affordable(buy, asks, walk, size, cash)
            if affordable < size:
                size, reason = affordable, f"cash {format_fixed(cash, MONEY_DECIMALS)}"
        if size < walk.min_size or size <= 0:
            return None, (
                f"size capped by {reason} to {buy.size_text(size // walk.buy_unit)}, under "
                f"the minimum profitable {buy.size_text(walk.min_size // walk.buy_unit)}"
            )
        bleg = plan_leg(buy, "buy", asks, size // walk.buy_unit)
        sleg = plan_leg(sell, "sell", bids, size // walk.sell_unit)
        for inst, leg in ((buy, bleg), (sell, sleg)):
            if inst.min_notional and inst.notional(leg.limit, leg.size) < inst.min_notional:
                return None, f"{inst.key} leg under min_notional"
        b = bleg.value
        gross_bp = (sleg.value - b) / b * 1e4
        fees_bp = (bleg.fee + sleg.fee) / b * 1e4
        expected = sleg.value - b - bleg.fee - sleg.fee
        latency_cost = math.ceil(b * drift / 1e4) if drift > 0 else 0
        adjusted = expected - latency_cost - self.fixed_cost
        threshold_bp = self.min_profit_ppm / 100
        latency_bp = latency_ppm / 100
        fixed_bp = self.fixed_cost / b * 1e4
        margin = gross_bp - fees_bp - fixed_bp - latency_bp - threshold_bp
        confidence = 1.0 if drift <= 0 else 0.5 * (1 + math.erf(margin / drift / math.sqrt(2)))
        return (
            Quote(
                symbol=buy.symbol,
                buy=bleg,
                sell=sleg,
                walk=walk,
                size_reason=reason,
                gross_bp=gross_bp,
                fees_bp=fees_bp,
                net_bp=gross_bp - fees_bp,
                latency_bp=latency_bp,
                fixed_cost_bp=fixed_bp,
                threshold_bp=threshold_bp,
                expected_pnl=expected,
                adjusted_pnl=adjusted,
                confidence=max(0.0, min(1.0, confidence)),
            ),
            "",
        )

    def _affordable(
        self, buy: Instrument, asks: Sequence[Level], walk: Walk, size: int, cash: int
    ) -> int:
        """Largest grid size <= ``size`` the venue's spot cash check accepts (limit price
        x size plus the larger fee rate)."""
        fee = max(buy.taker_fee_ppm, buy.maker_fee_ppm, 0)

        def ok(q: int) -> bool:
            leg = plan_leg(buy, "buy", asks, q // walk.buy_unit)
            cost = buy.notional(leg.limit, leg.size)
            return cost + apply_rate_ppm(cost, fee) <= cash

        lo, hi = 0, size // walk.step  # in steps; ok(0) holds
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if ok(mid * walk.step):
                lo = mid
            else:
                hi = mid - 1
        return lo * walk.step

    # -- execution tracking ----------------------------------------------------------

    def busy(self, symbol: str, now: int) -> bool:
        return symbol in self.st.busy or now < self.st.next_allowed.get(symbol, 0)

    def open(self, quote: Quote, decision_id: str, ts: int, buy_oid: str, sell_oid: str) -> int:
        """Track a quote whose two legs were sent as ``buy_oid``/``sell_oid`` ("" = the
        order was refused: that leg is closed unfilled). Returns its number."""
        st = self.st
        n = st.next_number
        st.next_number += 1
        b, s = quote.buy, quote.sell
        opp = Opportunity(
            number=n,
            decision_id=decision_id,
            ts=ts,
            symbol=quote.symbol,
            buy=Leg(buy_oid, b.exchange, b.symbol, "buy", b.size, closed=not buy_oid),
            sell=Leg(sell_oid, s.exchange, s.symbol, "sell", s.size, closed=not sell_oid),
            expected_pnl=quote.expected_pnl,
            gross_bp=quote.gross_bp,
            net_bp=quote.net_bp,
        )
        st.open[n] = opp
        for oid in (buy_oid, sell_oid):
            if oid:
                st.by_order[oid] = n
        st.busy[quote.symbol] = n
        st.analytics.opportunities += 1
        st.next_allowed[quote.symbol] = ts + self.config.cooldown_ms * 1_000_000
        return n

    def number_of(self, order_id: str) -> int | None:
        return self.st.by_order.get(order_id)

    def _leg(self, opp: Opportunity, order_id: str) -> Leg | None:
        for leg in (opp.buy, opp.sell, opp.unwind):
            if leg is not None and leg.order_id == order_id:
                return leg
        return None

    def on_fill(self, fill: Fill) -> int | None:
        """Account a fill of a tracked order; returns its opportunity's number."""
        n = self.st.by_order.get(fill.order_id)
        if n is None:
            return None
        opp = self.st.open[n]
        leg = self._leg(opp, fill.order_id)
        assert leg is not None
        inst = self.instruments[f"{fill.exchange}:{fill.symbol}"]
        leg.filled += fill.size
        leg.value += inst.notional(fill.price, fill.size)
        leg.fees += fill.fee
        leg.impact += fill.impact_cost
        if leg.filled >= leg.size:
            leg.closed, leg.close_reason = True, "filled"
        return n

    def on_closed(self, order_id: str, reason: str) -> int | None:
        """A tracked order ended (expired, cancelled, rejected); returns its number."""
        n = self.st.by_order.get(order_id)
        if n is None:
            return None
        leg = self._leg(self.st.open[n], order_id)
        assert leg is not None
        leg.closed, leg.close_reason = True, reason
        return n

    def pending_unwind(self, n: int) -> Unwind | None:
        """After both legs closed: the unwind legging calls for (None if matched, if a
        leg is still open, or if an unwind was already sent)."""
        opp = self.st.open[n]
        if not (opp.buy.closed and opp.sell.closed) or opp.unwind is not None:
            return None
        buy_inst = self.instruments[f"{opp.buy.exchange}:{opp.symbol}"]
        sell_inst = self.instruments[f"{opp.sell.exchange}:{opp.symbol}"]
        d = max(buy_inst.size_decimals, sell_inst.size_decimals)
        bought = opp.buy.filled * POW10[d - buy_inst.size_decimals]
        sold = opp.sell.filled * POW10[d - sell_inst.size_decimals]
        if bought > sold:
            size = (bought - sold) // POW10[d - buy_inst.size_decimals]
            return Unwind(n, opp.buy.exchange, opp.symbol, "sell", size) if size else None
        if sold > bought:
            size = (sold - bought) // POW10[d - sell_inst.size_decimals]
            return Unwind(n, opp.sell.exchange, opp.symbol, "buy", size) if size else None
        return None

    def set_unwind(self, unwind: Unwind, order_id: str) -> None:
        """The unwind order was sent as ``order_id`` ("" = refused: closed unfilled)."""
        opp = self.st.open[unwind.number]
        opp.unwind = Leg(
            order_id, unwind.exchange, unwind.symbol, unwind.side, unwind.size, closed=not order_id
        )
        if order_id:
            self.st.by_order[order_id] = unwind.number

    def ready(self, n: int) -> bool:
        """Every order of the opportunity closed and no unwind still owed."""
        opp = self.st.open[n]
        legs_closed = opp.buy.closed and opp.sell.closed
        unwind_closed = opp.unwind is None or opp.unwind.closed
        return legs_closed and unwind_closed and self.pending_unwind(n) is None

    def reconcile(self, n: int) -> Opportunity:
        """Close opportunity ``n``: realised P&L, legs status, analytics."""
        st = self.st
        opp = st.open.pop(n)
        for leg in (opp.buy, opp.sell, opp.unwind):
            if leg is not None:
                st.by_order.pop(leg.order_id, None)
        if st.busy.get(opp.symbol) == n:
            del st.busy[opp.symbol]
        realised = 0
        for leg in (opp.buy, opp.sell, opp.unwind):
            if leg is not None:
                sign = 1 if leg.side == "sell" else -1
                realised += sign * leg.value - leg.fees - leg.impact
        opp.realised_pnl = realised
        a = st.analytics
        b, s = opp.buy, opp.sell
        if opp.unwind is not None:
            opp.legs_status = (
                "unwound" if opp.unwind.filled >= opp.unwind.size else "unwind_partial"
            )
            a.legged += 1
        elif b.filled == b.size and s.filled == s.size:
            opp.legs_status = "filled"
            a.hits += 1
        elif b.filled == 0 and s.filled == 0:
            opp.legs_status = "missed"
            a.missed += 1
        elif b.filled and s.filled:
            opp.legs_status = "partial"
            a.partial += 1
        else:  # pragma: no cover - a mismatch always gets an unwind
            opp.legs_status = "legged"
            a.legged += 1
        a.reconciled += 1
        a.expected_pnl += opp.expected_pnl
        a.realised_pnl += realised
        if b.value:
            a.captured_bp_sum += realised / b.value * 1e4
            a.captured_n += 1
        return opp

    # -- rebalancing -----------------------------------------------------------------

    def plan_rebalance(
        self, symbol: str, source: str, destination: str, positions: Mapping[str, int], now: int
    ) -> Transfer | None:
        """A transfer into spot venue ``destination`` when its inventory is under
        ``rebalance_below`` and no transfer on the route is pending: half the difference
        from ``source``. Registers it as pending until its arrival."""
        text = self.config.rebalance_below
        dest = self.instruments.get(f"{destination}:{symbol}")
        src = self.instruments.get(f"{source}:{symbol}")
        if not text or dest is None or src is None or dest.kind != "spot" or src.kind != "spot":
            return None
        route = f"{source}>{destination}:{symbol}"
        if route in self.st.transfers:
            return None
        held_dest, held_src = positions.get(destination, 0), positions.get(source, 0)
        d = max(src.size_decimals, dest.size_decimals)
        us, ud = POW10[d - src.size_decimals], POW10[d - dest.size_decimals]
        if held_dest >= dest.size(text) or held_src * us <= held_dest * ud:
            return None
        size = (held_src * us - held_dest * ud) // 2 // us
        if size <= 0:
            return None
        secs = self.transfer_seconds(source, destination)
        arrives = now + round(secs * 1e9)
        self.st.transfers[route] = arrives
        return Transfer(route, symbol, source, destination, size, secs, arrives)

    def transfer_arrived(self, route: str) -> None:
        self.st.transfers.pop(route, None)

    # -- state -----------------------------------------------------------------------

    def snapshot_state(self) -> bytes:
        return msgspec.msgpack.encode(self.st)

    def restore_state(self, state: bytes) -> None:
        self.st = msgspec.msgpack.decode(state, type=MonitorState) if state else MonitorState()


# ---------------------------------------------------------------------------------------
# The kernel strategy
# ---------------------------------------------------------------------------------------

_STR_FIELDS = frozenset(f for f, t in ArbitrageConfig.__annotations__.items() if t in ("str", str))


def _money(units: int) -> str:
    return format_fixed(units, MONEY_DECIMALS)


def _decimal_text(units: int, decimals: int) -> str:
    """``500000, 6`` -> ``0.5``; ``1000000, 6`` -> ``1``."""
    text = format_fixed(units, decimals)
    return text.rstrip("0").rstrip(".") if "." in text else text


class ArbitrageStrategy(BaseStrategy):
    """The monitor driven by the kernel: evaluates on every book update of a watched
    symbol, sends both legs, unwinds legging, reconciles and plans rebalancing."""

    name = "arbitrage"

    def __init__(
        self,
        config: ArbitrageConfig | None = None,
        latency: Mapping[str, LatencyProfile] | None = None,
    ) -> None:
        self.config = config or ArbitrageConfig()
        self._latency_given = latency is not None
        self.monitor = ArbitrageMonitor(self.config, (), latency)

    @classmethod
    def from_params(cls, params: dict[str, ParamValue]) -> ArbitrageStrategy:
        known = set(ArbitrageConfig.__struct_fields__)
        unknown = sorted(set(params) - known)
        if unknown:
            raise ValueError(f"arbitrage: unknown parameter(s) {unknown}; known: {sorted(known)}")
        fixed: dict[str, ParamValue] = {}
        for key, value in params.items():
            if key in _STR_FIELDS and not isinstance(value, str | bool):
                value = str(value)  # a CLI number given for a decimal-text field
            fixed[key] = value
        try:
            config = msgspec.convert(fixed, ArbitrageConfig)
        except msgspec.ValidationError as exc:
            raise ValueError(f"arbitrage: {exc}") from None
        return cls(config)

    # -- market ----------------------------------------------------------------------

    def _profile(self, ctx: StrategyContext, exchange: str) -> None:
        """Learn an exchange's latency profile from the context when it offers one."""
        mon = self.monitor
        if self._latency_given or exchange in mon.latency:
            return
        mon.latency[exchange] = ctx.latency_profile(exchange)

    def on_market(self, ctx: StrategyContext, event: MarketEvent) -> None:
        cls = type(event)
        if cls is not BookDelta and cls is not BookSnapshot:
            return
        ex, sym = event.exchange, event.symbol
        mon = self.monitor
        if not mon.watches(ex, sym):
            return
        key = f"{ex}:{sym}"
        self._ensure(ctx, ex, sym)
        venues = mon.st.venues.setdefault(sym, [])
        if ex not in venues:
            venues.append(ex)
            venues.sort()
        book = ctx.book(ex, sym)
        if book is None:
            return
        now = ctx.now
        mon.observe_mid(key, now, book.mid_x2())
        if len(venues) < 2 or mon.busy(sym, now):
            return
        depth = self.config.max_levels
        books: dict[str, tuple[Sequence[Level], Sequence[Level]]] = {}
        for v in venues:
            b: L2Book | None = ctx.book(v, sym)
            if b is not None:
                books[v] = (b.bids.top(depth), b.asks.top(depth))
        positions = {v: ctx.position(v, sym) for v in books}
        quote, why = mon.evaluate(sym, books, positions, ctx.portfolio.cash)
        if quote is None:
            self._skips(ctx, sym, why)
            return
        self._open(ctx, quote)

    def _skips(self, ctx: StrategyContext, symbol: str, why: dict[str, str]) -> None:
        if not self.config.skip_journal:
            return
        seen = self.monitor.st.skips
        for route, reason in sorted(why.items()):
            rkey = f"{route}:{symbol}"
            kind = reason.split(" to ")[0]  # the cap, not the size it gave
            if seen.get(rkey) == kind:
                continue
            seen[rkey] = kind
            bx = route.split(">")[0]
            ctx.decide(
                bx,
                symbol,
                "skip",
                f"{symbol} {route}: the spread beats fees and threshold but {reason}",
                confidence=1.0,
            )

    def _open(self, ctx: StrategyContext, q: Quote) -> None:
        mon = self.monitor
        n = mon.st.next_number
        buy = mon.instruments[f"{q.buy.exchange}:{q.symbol}"]
        sell = mon.instruments[f"{q.sell.exchange}:{q.symbol}"]
        bw, sw = q.buy, q.sell
        vb = bw.value / POW10[MONEY_DECIMALS] / (bw.size / POW10[buy.size_decimals])
        vs = sw.value / POW10[MONEY_DECIMALS] / (sw.size / POW10[sell.size_decimals])
        unit = q.walk.buy_unit
        reasoning = (
            f"arb{n}: buy {buy.size_text(bw.size)} {q.symbol} on {buy.exchange} (VWAP {vb:.6g}, "
            f"limit {buy.price_text(bw.limit)}) and sell on {sell.exchange} (VWAP {vs:.6g}, "
            f"limit {sell.price_text(sw.limit)}): gross {q.gross_bp:.4f} bp, fees "
            f"{q.fees_bp:.4f} bp (taker {buy.taker_fee_ppm / 100:g} + "
            f"{sell.taker_fee_ppm / 100:g} bp), net {q.net_bp:.4f} bp, latency drift "
            f"{q.latency_bp:.2f} bp, fixed cost {q.fixed_cost_bp:.4f} bp vs threshold "
            f"{q.threshold_bp:.2f} bp; profitable sizes "
            f"{buy.size_text(q.walk.min_size // unit)}..{buy.size_text(q.walk.max_size // unit)}, "
            f"size {buy.size_text(bw.size)} (capped by {q.size_reason}); expected P&L "
            f"{_money(q.expected_pnl)}, after latency and fixed cost {_money(q.adjusted_pnl)}"
        )
        did = ctx.decide(
            buy.exchange,
            q.symbol,
            "arbitrage",
            reasoning,
            features=(
                ("opportunity", float(n)),
                ("gross_bp", q.gross_bp),
                ("fees_bp", q.fees_bp),
                ("net_bp", q.net_bp),
                ("latency_bp", q.latency_bp),
                ("fixed_cost_bp", q.fixed_cost_bp),
                ("threshold_bp", q.threshold_bp),
                ("size", bw.size / POW10[buy.size_decimals]),
                ("buy_vwap", vb),
                ("sell_vwap", vs),
                ("expected_pnl_e8", float(q.expected_pnl)),
                ("adjusted_pnl_e8", float(q.adjusted_pnl)),
            ),
            confidence=q.confidence,
        )
        if not did:
            return
        mon.st.skips.pop(f"{buy.exchange}>{sell.exchange}:{q.symbol}", None)
        boid = ctx.submit(
            buy.exchange,
            q.symbol,
            "buy",
            bw.size,
            price=bw.limit,
            time_in_force="IOC",
            decision_id=did,
        )
        soid = ctx.submit(
            sell.exchange,
            q.symbol,
            "sell",
            sw.size,
            price=sw.limit,
            time_in_force="IOC",
            decision_id=did,
        )
        mon.open(q, did, ctx.now, boid, soid)
        self._progress(ctx, n)

    # -- orders ----------------------------------------------------------------------

    def _ensure(self, ctx: StrategyContext, exchange: str, symbol: str) -> None:
        """Know the instrument (and its venue's latency) after a restore."""
        if f"{exchange}:{symbol}" not in self.monitor.instruments:
            self.monitor.add_instrument(ctx.instrument(exchange, symbol))
            self._profile(ctx, exchange)

    def on_order(self, ctx: StrategyContext, event: Event) -> None:
        mon = self.monitor
        if isinstance(event, Fill):
            if mon.number_of(event.order_id) is None:
                return
            self._ensure(ctx, event.exchange, event.symbol)
            n = mon.on_fill(event)
        elif isinstance(event, OrderExpired):
            n = mon.on_closed(event.order_id, "IOC expired")
        elif isinstance(event, OrderCancelled):
            n = mon.on_closed(event.order_id, f"cancelled {event.reason}".strip())
        elif isinstance(event, OrderRejected):
            n = mon.on_closed(event.order_id, f"rejected: {event.reason}")
        else:
            return
        if n is not None:
            self._progress(ctx, n)

    def _progress(self, ctx: StrategyContext, n: int) -> None:
        mon = self.monitor
        opp = mon.st.open.get(n)
        if opp is None:
            return
        for leg in (opp.buy, opp.sell):
            self._ensure(ctx, leg.exchange, leg.symbol)
        unwind = mon.pending_unwind(n)
        if unwind is not None:
            self._unwind(ctx, unwind)
        if mon.ready(n):
            self._reconcile(ctx, mon.reconcile(n))

    def _unwind(self, ctx: StrategyContext, u: Unwind) -> None:
        mon = self.monitor
        opp = mon.st.open[u.number]
        inst = mon.instruments[f"{u.exchange}:{u.symbol}"]
        bi = mon.instruments[f"{opp.buy.exchange}:{opp.symbol}"]
        si = mon.instruments[f"{opp.sell.exchange}:{opp.symbol}"]

        def state(leg: Leg, inst: Instrument) -> str:
            return (
                f"{leg.side} leg on {leg.exchange} filled {inst.size_text(leg.filled)} of "
                f"{inst.size_text(leg.size)} ({leg.close_reason})"
            )

        did = ctx.decide(
            u.exchange,
            u.symbol,
            "unwind",
            f"arb{u.number}: legging risk: {state(opp.buy, bi)}, {state(opp.sell, si)} -> "
            f"unwind: market {u.side} {inst.size_text(u.size)} on {u.exchange}",
            features=(
                ("opportunity", float(u.number)),
                ("buy_filled", opp.buy.filled / POW10[bi.size_decimals]),
                ("sell_filled", opp.sell.filled / POW10[si.size_decimals]),
                ("unwind_size", u.size / POW10[inst.size_decimals]),
            ),
            confidence=1.0,
        )
        oid = ""
        if did:
            oid = ctx.submit(
                u.exchange, u.symbol, u.side, u.size, order_type="market", decision_id=did
            )
        mon.set_unwind(u, oid)

    def _reconcile(self, ctx: StrategyContext, opp: Opportunity) -> None:
        a = self.monitor.st.analytics
        diff = opp.realised_pnl - opp.expected_pnl
        captured = opp.realised_pnl / opp.buy.value * 1e4 if opp.buy.value else 0.0
        ctx.decide(
            opp.buy.exchange,
            opp.symbol,
            "reconcile",
            f"arb{opp.number}: legs {opp.legs_status}; expected P&L {_money(opp.expected_pnl)}, "
            f"realised {_money(opp.realised_pnl)} (difference {_money(diff)}), captured "
            f"{captured:.4f} bp; {a.opportunities} opportunities, {a.reconciled} reconciled, "
            f"hit rate {a.hit_rate:.4f}, average captured {a.avg_bp_captured:.4f} bp",
            features=(
                ("opportunity", float(opp.number)),
                ("expected_pnl_e8", float(opp.expected_pnl)),
                ("realised_pnl_e8", float(opp.realised_pnl)),
                ("difference_e8", float(diff)),
                ("captured_bp", captured),
                ("opportunities", float(a.opportunities)),
                ("hit_rate", a.hit_rate),
                ("avg_bp_captured", a.avg_bp_captured),
            ),
            confidence=1.0,
        )
        self._rebalance(ctx, opp)

    def _rebalance(self, ctx: StrategyContext, opp: Opportunity) -> None:
        mon = self.monitor
        sym = opp.symbol
        positions = {v: ctx.position(v, sym) for v in mon.st.venues.get(sym, [])}
        t = mon.plan_rebalance(sym, opp.buy.exchange, opp.sell.exchange, positions, ctx.now)
        if t is None:
            return
        src = mon.instruments[f"{t.source}:{sym}"]
        dest = mon.instruments[f"{t.destination}:{sym}"]
        ctx.decide(
            t.destination,
            sym,
            "rebalance",
            f"arb{opp.number}: {t.destination} holds {dest.size_text(positions[t.destination])} "
            f"{dest.base} < rebalance_below {self.config.rebalance_below}: transfer "
            f"{src.size_text(t.size)} from {t.source} (holds "
            f"{src.size_text(positions[t.source])}), transfer time {t.transfer_s:g} s, "
            f"arrives at {t.arrives}",
            features=(
                ("opportunity", float(opp.number)),
                ("transfer_size", t.size / POW10[src.size_decimals]),
                ("transfer_s", t.transfer_s),
            ),
            confidence=1.0,
        )
        ctx.set_timer(t.arrives, f"arbitrage:transfer:{t.route}")

    def on_timer(self, ctx: StrategyContext, name: str) -> None:
        prefix = "arbitrage:transfer:"
        if name.startswith(prefix):
            self.monitor.transfer_arrived(name[len(prefix) :])

    # -- state -----------------------------------------------------------------------

    def snapshot_state(self) -> bytes:
        return self.monitor.snapshot_state()

    def restore_state(self, state: bytes) -> None:
        self.monitor.restore_state(state)


__all__ = [
    "Analytics",
    "ArbitrageConfig",
    "ArbitrageMonitor",
    "ArbitrageStrategy",
    "Leg",
    "LegPlan",
    "LegsStatus",
    "Opportunity",
    "Quote",
    "Transfer",
    "Unwind",
    "Walk",
    "expected_entry_ms",
    "plan_leg",
    "walk_route",
]
