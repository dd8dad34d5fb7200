"""kernel.metrics: golden numbers worked out by hand, and a cross-check against empyrical.

The cross-check uses ``empyrical-reloaded`` (import name ``empyrical``, a test-only
dependency in the ``dev`` extra) on seeded random daily returns, passing
``annualization=365`` (our 365-day crypto year; empyrical's default is 252). empyrical
reports max drawdown as a negative number; ours is positive.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from kernel.metrics import (
    DifferentialSharpe,
    annualisation_periods,
    annualised_return,
    calmar,
    downside_deviation,
    drawdowns,
    equity_from_returns,
    exposure,
    max_drawdown,
    profit_factor,
    returns_from_equity,
    reward_series,
    sharpe,
    sortino,
    time_in_market_ns,
    win_rate,
)

# ---------------------------------------------------------------------------------------
# The differential Sharpe ratio, by hand
# ---------------------------------------------------------------------------------------

# eta = 1/5, returns +10 %, +10 %, +8 %, -2 %. Before each step: var = B - A^2;
# dA = R - A, dB = R^2 - B, num = B dA - A dB / 2, D = num / var^(3/2); after it
# A += dA / 5, B += dB / 5.
#
#  t  R      A(t-1)  B(t-1)   var            dA       dB        num           D
#  1  0.10   0       0        0              0.10     0.01      -             0 (var <= 0)
#  2  0.10   0.02    0.002    0.0016=0.04^2  0.08     0.008     0.00008       0.00008 / 0.000064
#                                                                             = 5/4
#  3  0.08   0.036   0.0036   0.002304       0.044    0.0028    0.000108      0.000108 /
#                             = 0.048^2                                       0.000110592 = 125/128
#  4  -0.02  0.0448  0.00416  0.00215296     -0.0648  -0.00376  -0.000185344  -0.000185344 /
#                             = 0.0464^2                                      0.000099897344
#                                                                             = -45250/24389
# State after step 4: A = 0.0448 - 0.0648 / 5 = 0.03184, B = 0.00416 - 0.00376 / 5 = 0.003408.
#
#  num at t = 3: 0.0036 x 0.044 - 0.036 x 0.0028 / 2 = 0.0001584 - 0.0000504 = 0.000108
#  num at t = 4: 0.00416 x -0.0648 + 0.0448 x 0.00376 / 2 = -0.000269568 + 0.000084224
DSR_RETURNS = [0.10, 0.10, 0.08, -0.02]
DSR_D = [0.0, 5 / 4, 125 / 128, -45250 / 24389]


def test_differential_sharpe_golden_steps() -> None:
    dsr = DifferentialSharpe(eta=0.2, dd_penalty=0.0)
    assert dsr.snapshot() == (0.0, 0.0)
    for r, d in zip(DSR_RETURNS, DSR_D, strict=True):
        assert dsr.step(r, 0.0) == pytest.approx(d, abs=1e-12)
    a, b = dsr.snapshot()
    assert a == pytest.approx(0.03184, abs=1e-15)
    assert b == pytest.approx(0.003408, abs=1e-15)
    assert reward_series(DSR_RETURNS, [0.0] * 4, eta=0.2) == pytest.approx(DSR_D, abs=1e-12)


def test_differential_sharpe_is_scale_invariant_and_odd() -> None:
    # num ~ R^3 and var^(3/2) ~ R^3: scaling the returns by c > 0 keeps D; c < 0 flips it.
    scaled = reward_series([100 * r for r in DSR_RETURNS], [0.0] * 4, eta=0.2)
    assert scaled == pytest.approx(DSR_D, abs=1e-12)
    flipped = reward_series([-r for r in DSR_RETURNS], [0.0] * 4, eta=0.2)
    assert flipped == pytest.approx([-d for d in DSR_D], abs=1e-12)


def test_drawdown_penalty() -> None:
    # The same returns with equity 1 -> 1.1 -> 1.21 -> 1.3068 -> 1.280664: drawdowns
    # 0, 0, 0, 0.02 (1.280664 / 1.3068 = 0.98). lambda = 2, dd_free = 0.01: the last step
    # loses 2 x (0.02 - 0.01) = 0.02; below dd_free nothing is lost.
    dds = drawdowns(equity_from_returns(DSR_RETURNS))
    assert dds == pytest.approx([0.0, 0.0, 0.0, 0.0, 0.02], abs=1e-15)
    rewards = reward_series(DSR_RETURNS, dds[1:], eta=0.2, dd_penalty=2.0, dd_free=0.01)
    assert rewards == pytest.approx([*DSR_D[:3], DSR_D[3] - 0.02], abs=1e-12)
    dsr = DifferentialSharpe(eta=0.2, dd_penalty=2.0, dd_free=0.01)
    assert dsr.step(0.10, 0.005) == 0.0  # D_1 = 0 and 0.005 < dd_free
    assert dsr.step(0.10, 0.25) == pytest.approx(5 / 4 - 2 * 0.24, abs=1e-12)
    # defaults: lambda 1, dd_free 0 -> the whole drawdown is subtracted
    assert DifferentialSharpe().step(0.01, 0.3) == pytest.approx(-0.3, abs=1e-15)


def test_differential_sharpe_snapshot_restore_continues_identically() -> None:
    returns = [0.01, -0.02, 0.015, 0.003, -0.007, 0.02]
    whole = reward_series(returns, [0.0] * 6, eta=0.1)
    first = DifferentialSharpe(eta=0.1)
    head = [first.step(r) for r in returns[:3]]
    state = first.snapshot()
    assert isinstance(state, tuple) and all(type(x) is float for x in state)
    second = DifferentialSharpe(eta=0.1)
    second.restore(state)
    assert head + [second.step(r) for r in returns[3:]] == whole  # bit for bit


def test_differential_sharpe_refuses_bad_input() -> None:
    for eta in (0.0, 1.0, -0.1, math.nan):
        with pytest.raises(ValueError, match="eta must be in"):
            DifferentialSharpe(eta=eta)
    with pytest.raises(ValueError, match="dd_penalty"):
        DifferentialSharpe(dd_penalty=-1.0)
    with pytest.raises(ValueError, match="dd_free"):
        DifferentialSharpe(dd_free=math.inf)
    dsr = DifferentialSharpe()
    with pytest.raises(ValueError, match="return is nan"):
        dsr.step(math.nan)
    with pytest.raises(ValueError, match=r"drawdown must be a finite fraction >= 0, got -0\.1"):
        dsr.step(0.01, -0.1)  # empyrical's sign convention, refused
    assert dsr.snapshot() == (0.0, 0.0)  # nothing changed
    with pytest.raises(ValueError, match="not a DifferentialSharpe state"):
        dsr.restore((0.0, -1.0))
    with pytest.raises(ValueError, match="3 returns but 2 drawdowns"):
        reward_series([0.0, 0.0, 0.0], [0.0, 0.0])


# ---------------------------------------------------------------------------------------
# Metrics on tiny hand series
# ---------------------------------------------------------------------------------------


def test_drawdown_on_hand_series() -> None:
    # peaks 100, 120, 120, 120, 120, 130: drawdowns 0, 0, 30/120, 20/120, 40/120, 0
    equity = [100, 120, 90, 100, 80, 130]
    assert drawdowns(equity) == [0.0, 0.0, 0.25, 20 / 120, 40 / 120, 0.0]
    assert max_drawdown(equity) == 40 / 120
    assert max_drawdown([100, 101, 102]) == 0.0
    assert max_drawdown([]) == 0.0
    assert max_drawdown([-5, -10, 10, 5]) == 0.5  # no fraction of a non-positive peak
    # integer MONEY stays exact: (peak - e) is an int, one rounding in the division
    assert max_drawdown([10**17 + 1, 1]) == 10**17 / (10**17 + 1)


def test_returns_annualisation_and_annualised_return() -> None:
    assert returns_from_equity([1000, 1100, 990, 1089]) == pytest.approx([0.1, -0.1, 0.1])
    assert returns_from_equity([5]) == []
    with pytest.raises(ValueError, match="equity\\[1\\] is 0"):
        returns_from_equity([1, 0, 1])
    assert returns_from_equity([1, 0]) == [-1.0]  # only the last point may be 0
    assert equity_from_returns([0.5, -0.5], start=100) == [100.0, 150.0, 75.0]
    assert annualisation_periods(86_400_000) == 365.0
    assert annualisation_periods(3_600_000) == 8760.0
    with pytest.raises(ValueError, match="interval_ms must be > 0"):
        annualisation_periods(0)
    # growth 1.5 x 0.5 = 0.75 over 2 periods of a 4-period year: 0.75^2 - 1 = -0.4375
    assert annualised_return([0.5, -0.5], 4) == pytest.approx(-0.4375, abs=1e-15)
    assert annualised_return([0.5, -1.0], 4) == -1.0  # everything lost
    assert annualised_return([], 4) is None


def test_sharpe_sortino_calmar_on_hand_series() -> None:
    # +10 %, -10 %, +10 %: mean 1/30, sample variance ((2/30)^2 x 2 + (4/30)^2) / 2 =
    # 1/75, stdev 1/sqrt(75); Sharpe per period (1/30) sqrt(75) = sqrt(1/12); with 12
    # periods a year: 1.0.
    r = [0.1, -0.1, 0.1]
    assert sharpe(r, 12) == pytest.approx(1.0, abs=1e-12)
    assert sharpe([0.1], 12) is None
    assert sharpe([0.1, 0.1, 0.1], 12) is None  # zero variance
    # Downside deviation (target 0): sqrt((0 + 0.01 + 0) / 3) = 0.1 / sqrt(3) (divisor
    # n = 3, all returns); Sortino = (1/30) / (0.1 / sqrt 3) x sqrt(12) = sqrt(36) / 3 = 2.
    assert downside_deviation(r) == pytest.approx(0.1 / math.sqrt(3), abs=1e-15)
    assert sortino(r, 12) == pytest.approx(2.0, abs=1e-12)
    # target 0.05: excess 0.05, -0.15, 0.05, mean -1/60; DD = sqrt(0.0225 / 3) =
    # 0.15 / sqrt 3 -> Sortino = (-1/60) / 0.15 x sqrt(36) = -2/3
    assert sortino(r, 12, target=0.05) == pytest.approx(-2 / 3, abs=1e-12)
    assert sortino([0.1, 0.2], 12) is None  # nothing below target
    assert sortino([-0.1], 12) is None  # one return
    # Calmar: equity 1, 1.1, 0.99, 1.089: max drawdown 0.11 / 1.1 = 0.1; growth 1.089
    # over 3 of 12 periods a year -> 1.089^4 - 1; Calmar = that / 0.1.
    assert calmar(r, 12) == pytest.approx((1.089**4 - 1) / 0.1, rel=1e-12)
    # an explicit equity series (e.g. in MONEY) gives the drawdown
    assert calmar(r, 12, [100, 200, 50]) == pytest.approx((1.089**4 - 1) / 0.75, rel=1e-12)
    assert calmar([0.1, 0.2], 12) is None  # no drawdown
    with pytest.raises(ValueError, match="returns\\[1\\] is nan"):
        sharpe([0.1, math.nan], 12)


def test_trade_metrics_on_hand_series() -> None:
    pnls = [10, -5, 0, 7]
    assert win_rate(pnls) == 0.5  # 0 is not a win
    assert win_rate([]) is None
    assert profit_factor(pnls) == 17 / 5
    assert profit_factor([10, 7]) is None  # no losing trade
    assert profit_factor([0.5, -0.25, -0.25]) == 1.0
    assert win_rate(np.array([1.0, -1.0, 2.0])) == 2 / 3


def test_time_in_market_and_exposure() -> None:
    # flat until 10, long 10..30, flat 30..50, short 50..80, end at 100: 20 + 30 = 50 ns
    changes = [(0, 0), (10, 5), (30, 0), (50, -2), (60, -1), (80, 0)]
    assert time_in_market_ns(changes, 100) == 50
    assert exposure(50, 100) == 0.5
    assert time_in_market_ns([(0, 1)], 40) == 40  # still open at the end
    assert time_in_market_ns([], 40) == 0
    assert exposure(0, 0) is None
    with pytest.raises(ValueError, match=r"outside 0\.\.100"):
        exposure(101, 100)
    with pytest.raises(ValueError, match="position change 1 at 5 ns is before"):
        time_in_market_ns([(10, 1), (5, 0)], 20)
    with pytest.raises(ValueError, match="end_ns 5 is before"):
        time_in_market_ns([(10, 1)], 5)


# ---------------------------------------------------------------------------------------
# Cross-check against empyrical
# ---------------------------------------------------------------------------------------

SEEDS = [1, 2, 3, 4, 5]


def _daily_returns(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(0.0005, 0.03, 500)


@pytest.mark.parametrize("seed", SEEDS)
def test_matches_empyrical(seed: int) -> None:
    ep = pytest.importorskip("empyrical")
    r = _daily_returns(seed)
    rel = 1e-9
    for periods in (365, annualisation_periods(3_600_000)):
        assert sharpe(r, periods) == pytest.approx(
            ep.sharpe_ratio(r, annualization=periods), rel=rel
        )
        for target in (0.0, 0.001):
            assert sortino(r, periods, target) == pytest.approx(
                ep.sortino_ratio(r, required_return=target, annualization=periods), rel=rel
            )
            assert downside_deviation(r, target) * math.sqrt(periods) == pytest.approx(
                ep.downside_risk(r, required_return=target, annualization=periods), rel=rel
            )
        assert annualised_return(r, periods) == pytest.approx(
            ep.annual_return(r, annualization=periods), rel=rel
        )
        assert calmar(r, periods) == pytest.approx(
            ep.calmar_ratio(r, annualization=periods), rel=rel
        )
    equity = equity_from_returns(r)
    assert max_drawdown(equity) == pytest.approx(-ep.max_drawdown(r), rel=rel)
    assert returns_from_equity(equity) == pytest.approx(list(r), rel=1e-9, abs=1e-15)
    # the same Calmar from an equity series in another unit
    assert calmar(r, 365, [1000 * e for e in equity]) == pytest.approx(
        ep.calmar_ratio(r, annualization=365), rel=rel
    )
