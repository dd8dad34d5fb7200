"""The risk layer: every order passes through it before it leaves for the venue.

Pure and deterministic like the rest of the kernel; all numbers come from
``config/risk_limits.yaml`` (:class:`~kernel.config.RiskLimitsConfig`). Equity is cash
plus every position marked to mid, so fees, funding, impact and slippage (already in
the fill prices) all count in it and in the drawdown.

Sizing (:func:`sizing_fraction`, :meth:`RiskManager.size_for`): a strategy with a
signal of strength ``s`` in [0, 1] and, optionally, an edge estimate (mean ``mu`` and
standard deviation ``sigma`` of the trade's return) gets the fraction of equity
``min(base_size_pct / 100 x s, kelly_fraction x mu / sigma^2)`` (fractional Kelly caps
the base size; no edge, ``mu <= 0``, means no trade), times the breaker's size factor.

Pre-trade checks (:meth:`RiskManager.check`), in this order; each one that changes the
order is named in a ``RiskEvent``:

1. halted: refused. Reduce-only regime: only the part that reduces a position passes.
2. the size factor of the breaker or re-entry stage applies to the part that increases
   exposure;
3. ``max_positions`` open positions: a new one is refused;
4. ``max_position_pct`` of equity per position, ``max_asset_pct`` per base asset,
   ``max_exchange_pct`` per exchange, ``max_sector_pct`` per sector: resized to fit;
5. correlation: a position in the same direction as an open one in another asset whose
   mid returns correlate above ``max_correlation`` (over the last ``correlation_window``
   samples, once at least 10 are there) is refused, or resized by
   ``(1 - rho) / (1 - max_correlation)``;
6. ``min_order_usd``: smaller orders are refused (an order that closes a position
   exactly is exempt).

Drawdown (:meth:`RiskManager.on_equity`): ``dd = (peak - equity) / peak``. States
``normal -> half_size (>= 15%) -> reduce_only (>= 20%) -> halted (>= 25%: a Halt event;
the engine cancels every order and flattens)``. From ``half_size`` or ``reduce_only``,
once ``dd < recovery_pct`` re-entry starts: ``reentry`` at ``reentry_stages[0]`` of the
normal size, the next stage after each ``reentry_calm_ms`` with ``dd`` still under
``recovery_pct``, ``normal`` after the last (1.0). A new breach during re-entry goes
straight back to the breaker. ``halted`` ends only with an operator ``Resume``, which
resets the peak to the equity then (the loss is accepted) and starts re-entry. Every
transition is a ``RiskEvent``.
"""

from __future__ import annotations

import math
from itertools import pairwise

import msgspec

from kernel.config import RiskLimitsConfig
from kernel.events import Event, Halt, RiskEvent
from kernel.fixedpoint import MONEY_SCALE, POW10
from kernel.instruments import Instrument, InstrumentRegistry

# The risk states by severity (re-entry counts as normal for a new breach).
_SEVERITY = {"normal": 0, "reentry": 0, "half_size": 1, "reduce_only": 2, "halted": 3}
MIN_CORRELATION_SAMPLES = 10


def sizing_fraction(
    cfg: RiskLimitsConfig, strength: float, mu: float | None = None, sigma: float | None = None
) -> float:
    """Fraction of equity for a signal of ``strength`` (clamped to [0, 1]) and an
    optional edge estimate: ``min(base x strength, kelly_fraction x mu / sigma^2)``."""
    base = cfg.base_size_pct / 100 * min(max(strength, 0.0), 1.0)
    if mu is None or sigma is None:
        return base
    if mu <= 0 or sigma <= 0:
        return 0.0
    return min(base, cfg.kelly_fraction * mu / (sigma * sigma))


def size_units(notional_money: float, price: int, inst: Instrument) -> int:
    """Size (instrument units, down to the lot) worth ``notional_money`` at ``price``."""
    if price <= 0 or notional_money <= 0:
        return 0
    units = int(
        notional_money * POW10[inst.price_decimals + inst.size_decimals] // (price * MONEY_SCALE)
    )
    return units - units % inst.lot_size


def pearson(xs: list[float], ys: list[float]) -> float | None:
    """Correlation of two equally long series; None if either is constant."""
    n = len(xs)
    if n < 2 or n != len(ys):
        return None
    mx, my = sum(xs) / n, sum(ys) / n
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
    sxx = sum((x - mx) ** 2 for x in xs)
    syy = sum((y - my) ** 2 for y in ys)
    if sxx <= 0 or syy <= 0:
        return None
    return sxy / math.sqrt(sxx * syy)


class Check(msgspec.Struct, frozen=True):
    """The outcome of a pre-trade check: ``size`` 0 means refused (``reason`` says why);
    ``notes`` name every rule that changed the order."""

    size: int
    reason: str = ""
    rule: str = ""
    notes: tuple[str, ...] = ()


class RiskState(msgspec.Struct, array_like=True):
    level: str = "normal"
    stage: int = -1
    stage_since: int = 0
    generation: int = 0
    peak: int = 0
    equity: int = 0
    drawdown: float = 0.0
    samples: dict[str, list[float]] = msgspec.field(default_factory=dict)
    rebalancing: dict[str, str] = msgspec.field(default_factory=dict)


class RiskManager:
    """The risk layer's state and decisions; the engine feeds it and acts on its events."""

    def __init__(self, cfg: RiskLimitsConfig, instruments: InstrumentRegistry) -> None:
        self.cfg = cfg
        self.instruments = instruments
        self.st = RiskState()

    # -- sizing ----------------------------------------------------------------------

    def size_factor(self) -> float:
        """The factor on new exposure: 1 normal, 0.5 half size, the stage in re-entry,
        0 reduce-only or halted."""
        lv = self.st.level
        if lv == "normal":
            return 1.0
        if lv == "reentry":
            return self.cfg.reentry_stages[self.st.stage]
        if lv == "half_size":
            return 0.5
        return 0.0

    def size_for(
        self,
        inst: Instrument,
        price: int,
        equity: int,
        strength: float,
        mu: float | None = None,
        sigma: float | None = None,
    ) -> int:
        """Order size for a signal, with the breaker's factor applied (see module doc)."""
        frac = sizing_fraction(self.cfg, strength, mu, sigma) * self.size_factor()
        return size_units(equity * frac, price, inst)

    # -- pre-trade check -------------------------------------------------------------

    def check(
        self,
        inst: Instrument,
        side: int,
        size: int,
        price: int,
        positions: dict[str, int],
        marks: dict[str, int],
        equity: int,
    ) -> Check:
        """Check an order of ``size`` (``side`` +1 buy / -1 sell) at ``price`` (its limit
        price, or the mark for a market order) against the open ``positions`` (signed
        sizes by instrument key) marked at ``marks``."""
        cfg = self.cfg
        key = inst.key
        if self.st.level == "halted":
            return Check(0, "halted: drawdown breaker; only an operator Resume lifts it", "halt")
        if price <= 0:
            return Check(0, "no price to value the order (no book yet)", "no_price")
        held = positions.get(key, 0)
        reduce = min(size, abs(held)) if held and (held > 0) != (side > 0) else 0
        grow = size - reduce
        notes: list[str] = []
        if grow and self.st.level == "reduce_only":
            if not reduce:
                return Check(
                    0,
                    f"reduce_only: drawdown {self.st.drawdown:.2f}% >= "
                    f"{cfg.drawdown_reduce_only_pct:g}%",
                    "reduce_only",
                )
            notes.append(f"reduce_only: cut to the {inst.size_text(reduce)} that reduces")
            grow = 0
        factor = self.size_factor()
        if grow and factor < 1.0:
            cut = _lot(int(grow * factor), inst)
            notes.append(
                f"{self.st.level} x{factor:g}: {inst.size_text(grow)} -> {inst.size_text(cut)}"
            )
            grow = cut
        if grow:
            open_keys = [k for k, q in positions.items() if q]
            after_reduce = held + side * reduce
            if not after_reduce and len([k for k in open_keys if k != key]) >= cfg.max_positions:
                return Check(
                    0,
                    f"max_positions: {len(open_keys)} open, the limit is {cfg.max_positions}",
                    "max_positions",
                )
            grow = self._fit_limits(
                inst, side, grow, price, positions, marks, equity, notes, after_reduce
            )
            if grow:
                grow = self._correlation(inst, side, grow, positions, notes)
                if not grow and notes and notes[-1].startswith("correlation"):
                    return Check(0, notes[-1], "correlation", tuple(notes))
        total = reduce + grow
        if total <= 0:
            reason = notes[-1] if notes else "nothing left after the limits"
            return Check(0, reason, "limits", tuple(notes))
        closes_exactly = reduce == abs(held) and grow == 0 and held != 0
        value = inst.notional(price, total)
        if value < cfg.min_order_usd * MONEY_SCALE and not closes_exactly:
            return Check(
                0,
                f"min_order: {value / MONEY_SCALE:.2f} {inst.quote} < {cfg.min_order_usd:g}",
                "min_order",
                tuple(notes),
            )
        return Check(total, "", "", tuple(notes))

    def _fit_limits(
        self,
        inst: Instrument,
        side: int,
        grow: int,
        price: int,
        positions: dict[str, int],
        marks: dict[str, int],
        equity: int,
        notes: list[str],
        after_reduce: int,
    ) -> int:
        """Resize the growing part to fit the position, asset, exchange and sector limits.
        ``after_reduce`` is the position once the reducing part of the order is done."""
        cfg = self.cfg
        key = inst.key
        sector = cfg.sectors.get(inst.base, inst.base)
        exposure_asset = exposure_exchange = exposure_sector = 0
        for k, q in positions.items():
            if not q or k == key:
                continue
            other = self.instruments.by_key(k)
            v = other.notional(marks.get(k, 0), abs(q))
            if other.base == inst.base:
                exposure_asset += v
            if other.exchange == inst.exchange:
                exposure_exchange += v
            if cfg.sectors.get(other.base, other.base) == sector:
                exposure_sector += v
        same_way = after_reduce and (after_reduce > 0) == (side > 0)
        own_now = inst.notional(price, abs(after_reduce)) if same_way else 0
        limits = (
            ("max_position_pct", cfg.max_position_pct, 0),
            ("max_asset_pct", cfg.max_asset_pct, exposure_asset),
            ("max_exchange_pct", cfg.max_exchange_pct, exposure_exchange),
            ("max_sector_pct", cfg.max_sector_pct, exposure_sector),
        )
        for name, pct, others in limits:
            room = equity * pct / 100 - others - own_now
            fit = size_units(room, price, inst) if room > 0 else 0
            if fit < grow:
                notes.append(
                    f"{name}: {pct:g}% of equity leaves room for {inst.size_text(fit)} "
                    f"of {inst.size_text(grow)}"
                )
                grow = fit
            if not grow:
                break
        return grow

    def _correlation(
        self, inst: Instrument, side: int, grow: int, positions: dict[str, int], notes: list[str]
    ) -> int:
        cfg = self.cfg
        if not any(
            q and self.instruments.by_key(k).base != inst.base for k, q in positions.items()
        ):
            return grow  # no open position in another asset
        mine = self._returns(inst.base)
        if mine is None:
            return grow
        worst = 0.0
        against = ""
        for k, q in sorted(positions.items()):
            if not q:
                continue
            other = self.instruments.by_key(k)
            if other.base == inst.base:
                continue
            theirs = self._returns(other.base)
            if theirs is None:
                continue
            n = min(len(mine), len(theirs))
            rho = pearson(mine[-n:], theirs[-n:])
            if rho is None:
                continue
            same_way = rho * (1 if q > 0 else -1) * side
            if same_way > worst:
                worst, against = same_way, other.base
        if worst <= cfg.max_correlation:
            return grow
        if cfg.correlation_action == "refuse":
            notes.append(
                f"correlation: {inst.base} vs open {against} rho {worst:.3f} > "
                f"{cfg.max_correlation:g}"
            )
            return 0
        cut = _lot(int(grow * (1 - worst) / (1 - cfg.max_correlation)), inst)
        notes.append(
            f"correlation: {inst.base} vs open {against} rho {worst:.3f} > "
            f"{cfg.max_correlation:g}: {inst.size_text(grow)} -> {inst.size_text(cut)}"
        )
        return cut

    def correlation_to_open(self, inst: Instrument, positions: dict[str, int]) -> float:
        """The correlation of ``inst``'s asset with the open position (another asset)
        it moves most with, signed by that position's direction: ``rho x sign(qty)``
        of largest magnitude; 0.0 without enough samples or other positions."""
        mine = self._returns(inst.base)
        if mine is None:
            return 0.0
        best = 0.0
        for k, q in sorted(positions.items()):
            other = self.instruments.by_key(k)
            if not q or other.base == inst.base:
                continue
            theirs = self._returns(other.base)
            if theirs is None:
                continue
            n = min(len(mine), len(theirs))
            rho = pearson(mine[-n:], theirs[-n:])
            if rho is not None and abs(rho) > abs(best):
                best = rho if q > 0 else -rho
        return best

    # -- correlation samples ---------------------------------------------------------

    def sample(self, mids: dict[str, float]) -> None:
        """Record one mid per base asset (called every ``correlation_interval_ms``)."""
        keep = self.cfg.correlation_window + 1
        for asset in sorted(mids):
            series = self.st.samples.setdefault(asset, [])
            series.append(mids[asset])
            if len(series) > keep:
                del series[: len(series) - keep]

    def _returns(self, asset: str) -> list[float] | None:
        s = self.st.samples.get(asset)
        if s is None or len(s) <= MIN_CORRELATION_SAMPLES:
            return None
        return [math.log(b / a) for a, b in pairwise(s) if a > 0 and b > 0]

    # -- drawdown --------------------------------------------------------------------

    def on_equity(self, equity: int, now: int) -> tuple[list[Event], int | None]:
        """Update with the current equity. Returns the events (RiskEvent, Halt) and,
        when a re-entry stage starts, the time its calm period ends (for a timer)."""
        st = self.st
        cfg = self.cfg
        st.equity = equity
        if equity > st.peak:
            st.peak = equity
        st.drawdown = dd = (st.peak - equity) / st.peak * 100 if st.peak > 0 else 0.0
        if st.level == "halted":
            return [], None
        target = (
            "halted"
            if dd >= cfg.drawdown_halt_pct
            else "reduce_only"
            if dd >= cfg.drawdown_reduce_only_pct
            else "half_size"
            if dd >= cfg.drawdown_half_size_pct
            else None
        )
        if target is not None and _SEVERITY[target] > _SEVERITY[st.level]:
            was = st.level
            threshold = {
                "halted": cfg.drawdown_halt_pct,
                "reduce_only": cfg.drawdown_reduce_only_pct,
                "half_size": cfg.drawdown_half_size_pct,
            }[target]
            st.level, st.stage, st.generation = target, -1, st.generation + 1
            detail = (
                f"drawdown {dd:.2f}% >= {threshold:g}% (peak {st.peak / MONEY_SCALE:.2f}, "
                f"equity {equity / MONEY_SCALE:.2f}); was {was}"
            )
            events: list[Event] = [
                RiskEvent(ts_event=now, ts_recv=now, rule="drawdown", level=target, detail=detail)
            ]
            if target == "halted":
                events.append(
                    Halt(ts_event=now, ts_recv=now, reason=f"risk: {detail}", source="risk")
                )
            return events, None
        if st.level in ("half_size", "reduce_only") and dd < cfg.recovery_pct:
            return self._start_reentry(now, f"drawdown {dd:.2f}% < {cfg.recovery_pct:g}%")
        return [], None

    def _start_reentry(self, now: int, why: str) -> tuple[list[Event], int | None]:
        st = self.st
        st.level, st.stage, st.stage_since = "reentry", 0, now
        st.generation += 1
        frac = self.cfg.reentry_stages[0]
        ev = RiskEvent(
            ts_event=now,
            ts_recv=now,
            rule="reentry",
            level="reentry",
            detail=f"{why}: stage 1 at {frac:.0%} of normal size",
            stage=1,
        )
        return [ev], now + self.cfg.reentry_calm_ms * 1_000_000

    def on_stage_timer(self, generation: int, now: int) -> tuple[list[Event], int | None]:
        """The calm period of a re-entry stage ended (stale timers are ignored)."""
        st = self.st
        cfg = self.cfg
        if generation != st.generation or st.level != "reentry":
            return [], None
        calm_end = now + cfg.reentry_calm_ms * 1_000_000
        if st.drawdown >= cfg.recovery_pct:
            return [], calm_end  # not calm yet: wait another period
        st.stage += 1
        st.stage_since = now
        frac = cfg.reentry_stages[st.stage]
        last = st.stage == len(cfg.reentry_stages) - 1
        if last:
            st.level, st.stage = "normal", -1
        ev = RiskEvent(
            ts_event=now,
            ts_recv=now,
            rule="reentry",
            level="normal" if last else "reentry",
            detail=f"calm for {cfg.reentry_calm_ms} ms with drawdown {st.drawdown:.2f}%: "
            f"stage {st.stage + 1 if not last else len(cfg.reentry_stages)} at {frac:.0%}",
            stage=len(cfg.reentry_stages) if last else st.stage + 1,
        )
        return [ev], None if last else calm_end

    def halt(self) -> None:
        self.st.level, self.st.stage = "halted", -1
        self.st.generation += 1

    def resume(self, equity: int, now: int) -> tuple[list[Event], int | None]:
        """Operator resume after a halt: the peak becomes today's equity, re-entry starts."""
        self.st.peak = equity
        self.st.drawdown = 0.0
        return self._start_reentry(now, "operator resume; peak reset to current equity")

    # -- dynamic adjustment ----------------------------------------------------------

    def over_limit(
        self, positions: dict[str, int], marks: dict[str, int], equity: int
    ) -> list[tuple[str, int, str]]:
        """Positions pushed past ``max_position_pct`` by more than the tolerance: (key,
        size to sell (+) or buy (-) back to the limit, why)."""
        cfg = self.cfg
        out: list[tuple[str, int, str]] = []
        if equity <= 0:
            return out
        limit = cfg.max_position_pct * (1 + cfg.rebalance_tolerance_pct / 100)
        for key in sorted(positions):
            q = positions[key]
            if not q or key in self.st.rebalancing or key not in marks:
                continue
            inst = self.instruments.by_key(key)
            value = inst.notional(marks[key], abs(q))
            pct = value / equity * 100
            if pct > limit:
                keep = size_units(equity * cfg.max_position_pct / 100, marks[key], inst)
                excess = abs(q) - keep
                if excess > 0:
                    why = (
                        f"max_position_pct: {key} is {pct:.2f}% of equity > "
                        f"{cfg.max_position_pct:g}% (+{cfg.rebalance_tolerance_pct:g}% "
                        f"tolerance): reduce by {inst.size_text(excess)}"
                    )
                    out.append((key, excess if q > 0 else -excess, why))
        return out


def _lot(units: int, inst: Instrument) -> int:
    return max(0, units - units % inst.lot_size)
