"""Out-of-sample validation: CPCV, walk-forward, fold metrics and overfitting measures.

* :func:`cpcv_splits` - combinatorial purged cross-validation (López de Prado, "Advances
  in Financial Machine Learning", 2018, ch. 12). ``n_samples`` samples in time order are
  cut into ``n_groups`` contiguous groups (``numpy.array_split`` sizes: the first
  ``n_samples % n_groups`` groups one longer); each of the C(N, k) combinations of
  ``k = n_test_groups`` groups is one split's test set, in ``itertools.combinations``
  order. Train is every other sample except those *purged* (the ``purge`` samples just
  before each test group, whose labels overlap the test) and *embargoed* (the
  ``embargo`` samples just after each test group, serially correlated with it).
* :func:`cpcv_paths` - the C(N-1, k-1) backtest paths: group g is in the test set of
  C(N-1, k-1) splits; path p takes, for every group g, the p-th of those splits (in split
  order). Each path covers every group exactly once; each (group, split) test pair is in
  exactly one path.
* :func:`walk_forward` - rolling windows on calendar months: in-sample ``[is_start,
  is_end)``, out-of-sample ``[is_end, oos_end)``, moved by ``step_months`` while the
  out-of-sample end stays within ``end``.
* :func:`fold_metrics` - Sharpe, max drawdown, win rate, profit factor of one fold, by
  :mod:`kernel.metrics` (the one source of these numbers).
* :func:`probability_of_backtest_overfitting` - CSCV (Bailey, Borwein, López de Prado &
  Zhu, "The probability of backtest overfitting", J. Comp. Finance 2017).
* :func:`deflated_sharpe_ratio` - Bailey & López de Prado, "The deflated Sharpe ratio",
  J. Portfolio Management 2014.
"""

from __future__ import annotations

import calendar
import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

import numpy as np
from scipy.stats import kurtosis as _kurtosis
from scipy.stats import norm, rankdata
from scipy.stats import skew as _skew

from kernel import metrics
from training.quarantine import datetime_to_ns

EULER_GAMMA = 0.5772156649015329

# -- CPCV --------------------------------------------------------------------------------


def cpcv_groups(n_samples: int, n_groups: int) -> list[np.ndarray]:
    """The contiguous sample groups (``numpy.array_split`` of ``0..n_samples-1``)."""
    if n_groups < 2:
        raise ValueError(f"n_groups must be >= 2, got {n_groups}")
    if n_samples < n_groups:
        raise ValueError(f"n_samples ({n_samples}) must be >= n_groups ({n_groups})")
    return [g.astype(np.int64) for g in np.array_split(np.arange(n_samples), n_groups)]


def _check_k(n_groups: int, n_test_groups: int) -> None:
    if n_groups < 2:
        raise ValueError(f"n_groups must be >= 2, got {n_groups}")
    if not 1 <= n_test_groups < n_groups:
        raise ValueError(f"n_test_groups must be in 1..{n_groups - 1}, got {n_test_groups}")


def cpcv_splits(
    n_samples: int,
    n_groups: int,
    n_test_groups: int,
    purge: int = 0,
    embargo: int = 0,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """The C(n_groups, n_test_groups) ``(train, test)`` index arrays (int64, sorted).

    ``purge``: samples removed from train just before each test group; ``embargo``:
    samples removed from train just after each test group (both counts of samples)."""
    _check_k(n_groups, n_test_groups)
    if purge < 0 or embargo < 0:
        raise ValueError(f"purge and embargo must be >= 0, got {purge}, {embargo}")
    groups = cpcv_groups(n_samples, n_groups)
    out = []
    for combo in itertools.combinations(range(n_groups), n_test_groups):
        test_mask = np.zeros(n_samples, dtype=bool)
        drop = np.zeros(n_samples, dtype=bool)
        for g in combo:
            first, last = int(groups[g][0]), int(groups[g][-1])
            test_mask[first : last + 1] = True
            drop[max(0, first - purge) : first] = True
            drop[last + 1 : last + 1 + embargo] = True
        train = np.flatnonzero(~test_mask & ~drop).astype(np.int64)
        out.append((train, np.flatnonzero(test_mask).astype(np.int64)))
    return out


def cpcv_split_groups(n_groups: int, n_test_groups: int) -> list[tuple[int, ...]]:
    """The test groups of each split, in split order."""
    _check_k(n_groups, n_test_groups)
    return list(itertools.combinations(range(n_groups), n_test_groups))


def cpcv_paths(n_groups: int, n_test_groups: int) -> list[list[tuple[int, int]]]:
    """The C(N-1, k-1) backtest paths, each ``[(group, split_index), ...]`` for groups
    0..N-1: the split whose out-of-sample prediction covers that group on the path."""
    combos = cpcv_split_groups(n_groups, n_test_groups)
    in_test: list[list[int]] = [[] for _ in range(n_groups)]
    for s, combo in enumerate(combos):
        for g in combo:
            in_test[g].append(s)
    n_paths = math.comb(n_groups - 1, n_test_groups - 1)
    return [[(g, in_test[g][p]) for g in range(n_groups)] for p in range(n_paths)]


def cpcv_path_returns(
    n_samples: int,
    n_groups: int,
    n_test_groups: int,
    split_test_returns: Sequence[np.ndarray],
) -> np.ndarray:
    """``[n_paths, n_samples]``: each path's out-of-sample returns over every sample.

    ``split_test_returns[s]`` holds split s's returns at its test indices (in the order
    :func:`cpcv_splits` gives them)."""
    groups = cpcv_groups(n_samples, n_groups)
    combos = cpcv_split_groups(n_groups, n_test_groups)
    if len(split_test_returns) != len(combos):
        raise ValueError(f"{len(split_test_returns)} splits given, expected {len(combos)}")
    offsets: list[dict[int, slice]] = []
    for s, combo in enumerate(combos):
        pos, table = 0, {}
        for g in combo:
            table[g] = slice(pos, pos + len(groups[g]))
            pos += len(groups[g])
        if len(split_test_returns[s]) != pos:
            raise ValueError(f"split {s}: {len(split_test_returns[s])} returns for {pos} samples")
        offsets.append(table)
    paths = cpcv_paths(n_groups, n_test_groups)
    out = np.empty((len(paths), n_samples), dtype=np.float64)
    for p, path in enumerate(paths):
        for g, s in path:
            out[p, groups[g]] = np.asarray(split_test_returns[s], dtype=np.float64)[offsets[s][g]]
    return out


# -- walk-forward ------------------------------------------------------------------------

IS_MONTHS = (3, 12)
OOS_MONTHS = (1, 3)


def add_months(dt: datetime, months: int) -> datetime:
    """``dt`` moved by whole calendar months; the day is clamped to the month's last."""
    idx = dt.year * 12 + (dt.month - 1) + months
    year, month = divmod(idx, 12)
    day = min(dt.day, calendar.monthrange(year, month + 1)[1])
    return dt.replace(year=year, month=month + 1, day=day)


@dataclass(frozen=True)
class WalkForwardWindow:
    """One fold: in-sample ``[is_start, is_end)``, out-of-sample ``[oos_start, oos_end)``
    (UTC datetimes; ``oos_start == is_end``)."""

    is_start: datetime
    is_end: datetime
    oos_start: datetime
    oos_end: datetime

    def ns(self) -> tuple[int, int, int, int]:
        """The four bounds as ns since the epoch."""
        return (
            datetime_to_ns(self.is_start),
            datetime_to_ns(self.is_end),
            datetime_to_ns(self.oos_start),
            datetime_to_ns(self.oos_end),
        )


def walk_forward(
    start: datetime,
    end: datetime,
    is_months: int = 6,
    oos_months: int = 1,
    step_months: int = 1,
) -> list[WalkForwardWindow]:
    """Rolling windows from ``start`` while ``oos_end <= end``: in-sample 3-12 months,
    out-of-sample 1-3 months, moved ``step_months`` (>= 1) at a time. Naive = UTC."""
    if not IS_MONTHS[0] <= is_months <= IS_MONTHS[1]:
        raise ValueError(f"is_months must be in {IS_MONTHS[0]}..{IS_MONTHS[1]}, got {is_months}")
    if not OOS_MONTHS[0] <= oos_months <= OOS_MONTHS[1]:
        raise ValueError(
            f"oos_months must be in {OOS_MONTHS[0]}..{OOS_MONTHS[1]}, got {oos_months}"
        )
    if step_months < 1:
        raise ValueError(f"step_months must be >= 1, got {step_months}")
    start = start if start.tzinfo else start.replace(tzinfo=UTC)
    end = end if end.tzinfo else end.replace(tzinfo=UTC)
    if end <= start:
        raise ValueError(f"end {end.isoformat()} is not after start {start.isoformat()}")
    out = []
    i = 0
    while True:
        is_start = add_months(start, i * step_months)
        is_end = add_months(start, i * step_months + is_months)
        oos_end = add_months(start, i * step_months + is_months + oos_months)
        if oos_end > end:
            break
        out.append(WalkForwardWindow(is_start, is_end, is_end, oos_end))
        i += 1
    return out


# -- fold metrics ------------------------------------------------------------------------


@dataclass(frozen=True)
class FoldMetrics:
    """One out-of-sample fold. ``sharpe`` annualised (None: < 2 returns or no variance);
    ``max_drawdown`` a positive fraction of the compounded equity; ``win_rate`` and
    ``profit_factor`` over the trade P&Ls (or the periodic returns when no trades are
    given); None where undefined."""

    n_periods: int
    total_return: float
    sharpe: float | None
    max_drawdown: float
    win_rate: float | None
    profit_factor: float | None


def fold_metrics(
    returns: Sequence[float] | np.ndarray,
    periods_per_year: float,
    trade_pnls: Sequence[float] | None = None,
) -> FoldMetrics:
    """The fold's metrics from its periodic simple returns (and trade P&Ls if any)."""
    r = [float(x) for x in returns]
    equity = metrics.equity_from_returns(r)
    pnls = list(trade_pnls) if trade_pnls is not None else r
    return FoldMetrics(
        n_periods=len(r),
        total_return=equity[-1] - 1.0,
        sharpe=metrics.sharpe(r, periods_per_year),
        max_drawdown=metrics.max_drawdown(equity),
        win_rate=metrics.win_rate(pnls),
        profit_factor=metrics.profit_factor(pnls),
    )


# -- probability of backtest overfitting ---------------------------------------------------

Metric = Literal["sharpe", "mean"] | Callable[[np.ndarray], np.ndarray]


def _column_sharpe(m: np.ndarray) -> np.ndarray:
    """Per column mean / sample std (not annualised); +-inf for a constant non-zero
    column, 0 for a constant zero one."""
    mean = m.mean(axis=0)
    sd = m.std(axis=0, ddof=1) if len(m) > 1 else np.zeros(m.shape[1])
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(sd > 0, mean / np.where(sd > 0, sd, 1.0), np.sign(mean) * np.inf)
    return np.where((sd == 0) & (mean == 0), 0.0, out)


@dataclass(frozen=True)
class PBOResult:
    """CSCV result: ``pbo`` = share of combinations with logit <= 0 (the in-sample best
    at or below the out-of-sample median); per combination the in-sample best column,
    its out-of-sample relative rank ``omega`` = rank / (N + 1) and ``logits`` =
    ln(omega / (1 - omega))."""

    pbo: float
    logits: np.ndarray
    omega: np.ndarray
    best_in_sample: np.ndarray
    n_combinations: int


def probability_of_backtest_overfitting(
    returns: np.ndarray,
    n_submatrices: int = 16,
    metric: Metric = "sharpe",
) -> PBOResult:
    """PBO by combinatorially symmetric cross-validation over a ``[T, N]`` matrix of
    returns (T periods in time order, N strategy configurations).

    Rows are cut into ``S = n_submatrices`` (even) contiguous blocks; each of the C(S,
    S/2) choices of S/2 blocks is in-sample, the rest out-of-sample. The configuration
    best in-sample (first on ties) is ranked out-of-sample (1 = worst, ties averaged)."""
    m = np.asarray(returns, dtype=np.float64)
    if m.ndim != 2 or m.shape[1] < 2:
        raise ValueError(f"returns must be [T, N] with N >= 2 configurations, got {m.shape}")
    s = n_submatrices
    if s < 2 or s % 2:
        raise ValueError(f"n_submatrices must be even and >= 2, got {s}")
    if len(m) < s:
        raise ValueError(f"{len(m)} periods cannot make {s} submatrices")
    if not np.all(np.isfinite(m)):
        raise ValueError("returns must be finite")
    score: Callable[[np.ndarray], np.ndarray]
    if metric == "sharpe":
        score = _column_sharpe
    elif metric == "mean":
        score = lambda x: x.mean(axis=0)  # noqa: E731
    elif callable(metric):
        score = metric
    else:
        raise ValueError(f"unknown metric {metric!r}")
    blocks = np.array_split(np.arange(len(m)), s)
    n = m.shape[1]
    logits, omegas, best = [], [], []
    for combo in itertools.combinations(range(s), s // 2):
        chosen = set(combo)
        is_rows = np.concatenate([blocks[i] for i in combo])
        oos_rows = np.concatenate([blocks[i] for i in range(s) if i not in chosen])
        r_is = score(m[is_rows])
        r_oos = score(m[oos_rows])
        n_star = int(np.argmax(r_is))
        omega = float(rankdata(r_oos)[n_star]) / (n + 1)
        best.append(n_star)
        omegas.append(omega)
        logits.append(math.log(omega / (1.0 - omega)))
    lam = np.array(logits)
    return PBOResult(
        pbo=float(np.mean(lam <= 0.0)),
        logits=lam,
        omega=np.array(omegas),
        best_in_sample=np.array(best, dtype=np.int64),
        n_combinations=len(lam),
    )


# -- deflated Sharpe ratio -----------------------------------------------------------------


def expected_max_sharpe(n_trials: int, sharpe_variance: float) -> float:
    """E[max SR] of ``n_trials`` independent trials with true SR 0 and the given
    variance of their SR estimates: sqrt(V) x ((1 - g) Z^-1(1 - 1/N) + g Z^-1(1 -
    1/(N e))), g the Euler-Mascheroni constant (0 for a single trial)."""
    if n_trials < 1:
        raise ValueError(f"n_trials must be >= 1, got {n_trials}")
    if sharpe_variance < 0:
        raise ValueError(f"sharpe_variance must be >= 0, got {sharpe_variance}")
    if n_trials == 1:
        return 0.0
    g = EULER_GAMMA
    z = (1 - g) * norm.ppf(1 - 1 / n_trials) + g * norm.ppf(1 - 1 / (n_trials * math.e))
    return float(math.sqrt(sharpe_variance) * z)


def probabilistic_sharpe_ratio(
    sharpe: float,
    benchmark: float,
    n_obs: int,
    skew: float = 0.0,
    kurtosis: float = 3.0,
) -> float:
    """P[true SR > benchmark] = Z((SR - SR*) sqrt(T - 1) / sqrt(1 - g3 SR + (g4 - 1)/4
    SR^2)): per-period (not annualised) Sharpe ratios, T observations, g3 the skewness
    and g4 the (non-excess) kurtosis of the returns."""
    if n_obs < 2:
        raise ValueError(f"n_obs must be >= 2, got {n_obs}")
    denom = 1.0 - skew * sharpe + (kurtosis - 1.0) / 4.0 * sharpe * sharpe
    if denom <= 0:
        raise ValueError("1 - skew x SR + (kurtosis - 1)/4 x SR^2 must be > 0")
    z = (sharpe - benchmark) * math.sqrt(n_obs - 1) / math.sqrt(denom)
    return float(norm.cdf(z))


def deflated_sharpe_ratio(
    sharpe: float,
    n_obs: int,
    n_trials: int,
    sharpe_variance: float,
    skew: float = 0.0,
    kurtosis: float = 3.0,
) -> float:
    """DSR: the probabilistic Sharpe ratio against the expected maximum SR of
    ``n_trials`` trials (:func:`expected_max_sharpe`). Inputs per period."""
    sr0 = expected_max_sharpe(n_trials, sharpe_variance)
    return probabilistic_sharpe_ratio(sharpe, sr0, n_obs, skew, kurtosis)


def deflated_sharpe_from_returns(
    returns: Sequence[float] | np.ndarray, trial_sharpes: Sequence[float] | np.ndarray
) -> float:
    """DSR of a return series (per-period SR, sample skewness and kurtosis) given the
    per-period Sharpe ratios of every trial tried (their count and variance)."""
    r = np.asarray(returns, dtype=np.float64)
    trials = np.asarray(trial_sharpes, dtype=np.float64)
    if len(r) < 3:
        raise ValueError("need at least 3 returns")
    sd = r.std(ddof=1)
    if sd == 0:
        raise ValueError("returns have no variance")
    sr = float(r.mean() / sd)
    var = float(trials.var(ddof=1)) if len(trials) > 1 else 0.0
    return deflated_sharpe_ratio(
        sr,
        len(r),
        max(1, len(trials)),
        var,
        float(_skew(r)),
        float(_kurtosis(r, fisher=False)),
    )


__all__ = [
    "EULER_GAMMA",
    "FoldMetrics",
    "PBOResult",
    "WalkForwardWindow",
    "add_months",
    "cpcv_groups",
    "cpcv_path_returns",
    "cpcv_paths",
    "cpcv_split_groups",
    "cpcv_splits",
    "deflated_sharpe_from_returns",
    "deflated_sharpe_ratio",
    "expected_max_sharpe",
    "fold_metrics",
    "probabilistic_sharpe_ratio",
    "probability_of_backtest_overfitting",
    "walk_forward",
]
