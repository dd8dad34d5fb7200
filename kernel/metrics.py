"""Performance metrics and the RL reward: pure functions of return and equity series.

The single source of these numbers: the read models (journal_tools.projections) and
training call these functions. Pure: no I/O, no clock, no randomness; plain floats, with
``math.fsum`` for sums. Money stays integer elsewhere; an equity series may be ints (MONEY
units) or floats, and ratios of ints are taken with Python's correctly rounded ``/``.

Conventions (r_1..r_n are simple periodic returns, P = periods per year):

* ``returns_from_equity``: r_i = e_i / e_(i-1) - 1 (every e_(i-1) must be > 0).
* ``annualisation_periods(interval_ms)`` = 365 x 86 400 000 / interval_ms: a 365-day
  calendar year, since crypto trades every day (daily returns: P = 365).
* ``sharpe`` = mean(r) / stdev(r) x sqrt(P), stdev the sample one (divisor n - 1), zero
  risk-free rate. None with fewer than 2 returns or zero variance.
* ``sortino`` = mean(r - T) / DD x sqrt(P), with target T (default 0) and the downside
  deviation DD = sqrt( (1/n) x sum_i min(0, r_i - T)^2 ): the mean over *all* n returns
  (returns above target count as 0), divisor n, not n - 1 and not the number of
  returns below target. This is empyrical's ``downside_risk`` (and Sortino & Price's
  target downside deviation). None with fewer than 2 returns or DD = 0 (no return
  below the target).
* ``drawdowns(equity)``: dd_t = (peak_t - e_t) / peak_t, peak_t = max(e_0..e_t), a
  positive fraction (0.25 is 25 % below the peak); 0 while the peak is not positive.
  ``max_drawdown`` = max_t dd_t (0.0 for an empty or never-falling series).
* ``annualised_return`` = (prod_i (1 + r_i))^(P / n) - 1 (compounded, the CAGR); -1.0
  when the growth prod_i (1 + r_i) is <= 0 (everything lost).
* ``calmar`` = annualised_return(r) / max_drawdown(equity), where equity defaults to
  the compounded series 1, (1 + r_1), (1 + r_1)(1 + r_2), ... None when there is no
  drawdown or no return.
* ``win_rate`` = #(pnl > 0) / #pnl (a zero P&L is not a win); ``profit_factor`` =
  sum(pnl > 0) / |sum(pnl < 0)| (None without a loss).
* ``exposure`` = time_in_market / total time: the fraction of the period with an open
  position (``time_in_market_ns`` measures it from position changes).

The RL reward: the differential Sharpe ratio (Moody & Saffell 1998, "Reinforcement
learning for trading"; 2001, "Learning to trade via direct reinforcement") with a
drawdown penalty. Exponential moving estimates of the first and second moments of the
returns R_t, with adaptation rate eta (0 < eta < 1), start at A_0 = B_0 = 0:

    dA_t = R_t - A_(t-1)
    dB_t = R_t^2 - B_(t-1)
    D_t  = (B_(t-1) x dA_t - 0.5 x A_(t-1) x dB_t) / (B_(t-1) - A_(t-1)^2)^(3/2)
    D_t  = 0 while the variance term B_(t-1) - A_(t-1)^2 is <= 0 (e.g. at t = 1)
    A_t  = A_(t-1) + eta x dA_t
    B_t  = B_(t-1) + eta x dB_t

    reward_t = D_t - lambda x max(0, drawdown_t - dd_free)

D_t is the first-order sensitivity of the moving Sharpe ratio A / sqrt(B - A^2) to eta
when R_t arrives (so it is invariant to the scale of the returns). ``drawdown_t`` is a
positive fraction as from :func:`drawdowns`. Defaults: eta = 0.01 (a memory of about
1 / eta = 100 steps), lambda = 1.0 (``dd_penalty``), dd_free = 0.0 (every bit of
drawdown is penalised).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence

YEAR_MS = 365 * 86_400_000
"""A 365-day year in milliseconds (crypto trades every day)."""


# ---------------------------------------------------------------------------------------
# Input checks
# ---------------------------------------------------------------------------------------


def _finite_floats(values: Iterable[float], what: str) -> list[float]:
    out = [float(v) for v in values]
    for i, v in enumerate(out):
        if not math.isfinite(v):
            raise ValueError(f"{what}[{i}] is {v}, not a finite number")
    return out


def _equity_list(equity: Iterable[float]) -> list[float]:
    """The series as given (ints stay ints, so their ratios are correctly rounded)."""
    out = list(equity)
    for i, e in enumerate(out):
        if not isinstance(e, int) and not math.isfinite(e):
            raise ValueError(f"equity[{i}] is {e}, not a finite number")
    return out


def _total(values: Sequence[float]) -> float:
    """Exact for ints; ``math.fsum`` (correctly rounded) once a float is involved."""
    if all(isinstance(v, int) for v in values):
        return sum(values)
    return math.fsum(values)


# ---------------------------------------------------------------------------------------
# Series
# ---------------------------------------------------------------------------------------


def annualisation_periods(interval_ms: int) -> float:
    """Periods per 365-day year for returns sampled every ``interval_ms`` milliseconds
    (``365 x 86 400 000 / interval_ms``: 365.0 for daily, 8760.0 for hourly)."""
    if interval_ms <= 0:
        raise ValueError(f"interval_ms must be > 0, got {interval_ms}")
    return YEAR_MS / interval_ms


def returns_from_equity(equity: Iterable[float]) -> list[float]:
    """Simple returns ``e_i / e_(i-1) - 1`` of an equity series (one fewer than points).

    Raises ValueError for a non-positive equity before the last point (a return from it
    is undefined) or a non-finite value."""
    values = _equity_list(equity)
    for i, e in enumerate(values[:-1]):
        if e <= 0:
            raise ValueError(f"equity[{i}] is {e}: a return needs a positive equity before it")
    return [b / a - 1 for a, b in itertools.pairwise(values)]


def equity_from_returns(returns: Iterable[float], start: float = 1.0) -> list[float]:
    """The compounded equity series ``start, start(1 + r_1), start(1 + r_1)(1 + r_2), ...``
    (one more point than returns)."""
    out = [float(start)]
    for r in _finite_floats(returns, "returns"):
        out.append(out[-1] * (1.0 + r))
    return out


def drawdowns(equity: Iterable[float]) -> list[float]:
    """Drawdown at each point: ``(peak_t - e_t) / peak_t`` with ``peak_t`` the running
    maximum up to and including t; a positive fraction, 0.0 at a new high and while the
    peak is not positive (a fall from a non-positive peak is not a fraction of it)."""
    out: list[float] = []
    peak: float | None = None
    for e in _equity_list(equity):
        peak = e if peak is None else max(peak, e)
        out.append((peak - e) / peak if peak > 0 else 0.0)
    return out


def max_drawdown(equity: Iterable[float]) -> float:
    """The largest drawdown of the series, ``max_t (peak_t - e_t) / peak_t`` (see
    :func:`drawdowns`); 0.0 for an empty series or one that never falls."""
    return max(drawdowns(equity), default=0.0)


# ---------------------------------------------------------------------------------------
# Ratios over returns
# ---------------------------------------------------------------------------------------


def sharpe(returns: Iterable[float], periods_per_year: float) -> float | None:
    """Annualised Sharpe ratio: ``mean(r) / stdev(r) x sqrt(periods_per_year)``.

    Sample standard deviation (divisor n - 1), zero risk-free rate. None with fewer
    than 2 returns or zero variance (all returns equal)."""
    r = _finite_floats(returns, "returns")
    n = len(r)
    if n < 2 or max(r) == min(r):
        return None
    mean = math.fsum(r) / n
    sd = math.sqrt(math.fsum((x - mean) ** 2 for x in r) / (n - 1))
    if sd == 0:
        return None
    return mean / sd * math.sqrt(periods_per_year)


def downside_deviation(returns: Iterable[float], target: float = 0.0) -> float:
    """``sqrt( (1/n) x sum_i min(0, r_i - target)^2 )`` over all n returns, per period
    (not annualised); 0.0 for no returns. Equal to empyrical's ``downside_risk`` before
    its ``x sqrt(annualization)``."""
    r = _finite_floats(returns, "returns")
    if not r:
        return 0.0
    return math.sqrt(math.fsum(min(0.0, x - target) ** 2 for x in r) / len(r))


def sortino(returns: Iterable[float], periods_per_year: float, target: float = 0.0) -> float | None:
    """Annualised Sortino ratio: ``mean(r - target) / DD x sqrt(periods_per_year)`` with
    DD the :func:`downside_deviation` (divisor n, all returns). ``target`` is per period.
    None with fewer than 2 returns or no return below the target (DD = 0)."""
    r = _finite_floats(returns, "returns")
    if len(r) < 2:
        return None
    dd = downside_deviation(r, target)
    if dd == 0:
        return None
    excess = math.fsum(x - target for x in r) / len(r)
    return excess / dd * math.sqrt(periods_per_year)


def annualised_return(returns: Iterable[float], periods_per_year: float) -> float | None:
    """Compound annual growth: ``(prod_i (1 + r_i))^(periods_per_year / n) - 1``; -1.0
    when the growth is <= 0 (everything lost); None without returns."""
    r = _finite_floats(returns, "returns")
    if not r:
        return None
    growth = math.prod(1.0 + x for x in r)
    if growth <= 0:
        return -1.0
    result: float = growth ** (periods_per_year / len(r)) - 1.0
    return result


def calmar(
    returns: Iterable[float],
    periods_per_year: float,
    equity: Iterable[float] | None = None,
) -> float | None:
    """Calmar ratio: :func:`annualised_return` / :func:`max_drawdown` of ``equity``.

    ``equity`` defaults to the returns compounded from 1.0 (:func:`equity_from_returns`),
    so the first return's loss counts as a drawdown from the start. None when there is
    no drawdown or no return."""
    r = _finite_floats(returns, "returns")
    mdd = max_drawdown(equity_from_returns(r) if equity is None else equity)
    ann = annualised_return(r, periods_per_year)
    if mdd == 0 or ann is None:
        return None
    return ann / mdd


# ---------------------------------------------------------------------------------------
# Trades and time in market
# ---------------------------------------------------------------------------------------


def win_rate(pnls: Iterable[float]) -> float | None:
    """Share of trades with a positive P&L (a zero P&L is not a win); None without any."""
    values = list(pnls)
    return sum(1 for p in values if p > 0) / len(values) if values else None


def profit_factor(pnls: Iterable[float]) -> float | None:
    """Gross profit / gross loss: ``sum(p > 0) / |sum(p < 0)|``; None without a loss.
    Exact for integer P&L (the division is the only rounding)."""
    values = list(pnls)
    loss = -_total([p for p in values if p < 0])
    if not loss:
        return None
    return _total([p for p in values if p > 0]) / loss


def time_in_market_ns(position_changes: Iterable[tuple[int, float]], end_ns: int) -> int:
    """Nanoseconds with an open position, from ``(ts_ns, position_after)`` changes in time
    order up to ``end_ns``: each change's position holds until the next change (or
    ``end_ns``) and counts when it is non-zero. For a book of several instruments pass
    any measure that is non-zero exactly when something is open (e.g. gross notional)."""
    total = 0
    prev: tuple[int, float] | None = None
    for i, (ts, position) in enumerate(position_changes):
        if prev is not None:
            if ts < prev[0]:
                raise ValueError(f"position change {i} at {ts} ns is before the one before it")
            if prev[1]:
                total += ts - prev[0]
        prev = (ts, position)
    if prev is not None:
        if end_ns < prev[0]:
            raise ValueError(f"end_ns {end_ns} is before the last position change {prev[0]}")
        if prev[1]:
            total += end_ns - prev[0]
    return total


def exposure(time_in_market: int, total_ns: int) -> float | None:
    """Fraction of the period with an open position: ``time_in_market / total_ns`` (both
    ns, 0 <= time_in_market <= total_ns); None for an empty period (total_ns <= 0)."""
    if total_ns <= 0:
        return None
    if not 0 <= time_in_market <= total_ns:
        raise ValueError(f"time in market {time_in_market} ns is outside 0..{total_ns} ns")
    return time_in_market / total_ns


# ---------------------------------------------------------------------------------------
# The RL reward: differential Sharpe ratio with a drawdown penalty
# ---------------------------------------------------------------------------------------

DSR_ETA = 0.01
"""Default adaptation rate of the moving moments (a memory of about 100 steps)."""
DSR_DD_PENALTY = 1.0
"""Default lambda: reward lost per unit of drawdown beyond ``dd_free``."""
DSR_DD_FREE = 0.0
"""Default drawdown (a fraction) that goes unpenalised."""


class DifferentialSharpe:
    """Moody & Saffell's differential Sharpe ratio minus a drawdown penalty, one step at
    a time (formula in the module docstring). State is the pair of moving moments
    ``(A, B)``; :meth:`snapshot` / :meth:`restore` carry it as a plain tuple."""

    __slots__ = ("_a", "_b", "dd_free", "dd_penalty", "eta")

    def __init__(
        self,
        eta: float = DSR_ETA,
        dd_penalty: float = DSR_DD_PENALTY,
        dd_free: float = DSR_DD_FREE,
    ) -> None:
        if not 0 < eta < 1:
            raise ValueError(f"eta must be in (0, 1), got {eta}")
        if not (math.isfinite(dd_penalty) and dd_penalty >= 0):
            raise ValueError(f"dd_penalty must be a finite number >= 0, got {dd_penalty}")
        if not (math.isfinite(dd_free) and dd_free >= 0):
            raise ValueError(f"dd_free must be a finite number >= 0, got {dd_free}")
        self.eta = float(eta)
        self.dd_penalty = float(dd_penalty)
        self.dd_free = float(dd_free)
        self._a = 0.0
        self._b = 0.0

    def differential_sharpe(self, return_: float) -> float:
        """D_t for ``return_`` from the current moments, without updating them."""
        a, b = self._a, self._b
        variance = b - a * a
        if variance <= 0:
            return 0.0
        denominator: float = variance**1.5
        return (b * (return_ - a) - 0.5 * a * (return_ * return_ - b)) / denominator

    def step(self, return_: float, drawdown: float = 0.0) -> float:
        """The reward for one period's simple return and the drawdown after it (a
        positive fraction); then updates the moving moments A and B."""
        if not math.isfinite(return_):
            raise ValueError(f"return is {return_}, not a finite number")
        if not (math.isfinite(drawdown) and drawdown >= 0):
            raise ValueError(f"drawdown must be a finite fraction >= 0, got {drawdown}")
        d = self.differential_sharpe(return_)
        self._a += self.eta * (return_ - self._a)
        self._b += self.eta * (return_ * return_ - self._b)
        return d - self.dd_penalty * max(0.0, drawdown - self.dd_free)

    def snapshot(self) -> tuple[float, float]:
        """The state ``(A, B)``: the moving first and second moments of the returns."""
        return (self._a, self._b)

    def restore(self, state: tuple[float, float]) -> None:
        """Continue from a :meth:`snapshot`."""
        a, b = state
        if not (math.isfinite(a) and math.isfinite(b) and b >= 0):
            raise ValueError(f"not a DifferentialSharpe state (A, B with B >= 0): {state!r}")
        self._a, self._b = float(a), float(b)


def reward_series(
    returns: Iterable[float],
    drawdowns: Iterable[float],
    eta: float = DSR_ETA,
    dd_penalty: float = DSR_DD_PENALTY,
    dd_free: float = DSR_DD_FREE,
) -> list[float]:
    """The reward at every step of a fresh :class:`DifferentialSharpe` (one per return;
    ``drawdowns[t]`` is the drawdown after ``returns[t]``)."""
    r = list(returns)
    dd = list(drawdowns)
    if len(r) != len(dd):
        raise ValueError(f"{len(r)} returns but {len(dd)} drawdowns; give one per return")
    dsr = DifferentialSharpe(eta, dd_penalty, dd_free)
    return [dsr.step(x, d) for x, d in zip(r, dd, strict=True)]


__all__ = [
    "DSR_DD_FREE",
    "DSR_DD_PENALTY",
    "DSR_ETA",
    "YEAR_MS",
    "DifferentialSharpe",
    "annualisation_periods",
    "annualised_return",
    "calmar",
    "downside_deviation",
    "drawdowns",
    "equity_from_returns",
    "exposure",
    "max_drawdown",
    "profit_factor",
    "returns_from_equity",
    "reward_series",
    "sharpe",
    "sortino",
    "time_in_market_ns",
    "win_rate",
]
