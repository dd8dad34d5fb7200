"""kernel.features: incremental results equal a recomputation from scratch.

Each incremental estimator is checked against a brute-force version written from its
definition (hypothesis), VPIN and Kyle's lambda also against batch numpy/scipy code on
10k synthetic trades (to 1e-9), and a FeatureSet restored from a snapshot continues
exactly as the original.
"""

from __future__ import annotations

import math
import statistics
from fractions import Fraction
from typing import Literal

import msgspec
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import norm

from kernel.events import BookDelta, BookSnapshot, Trade
from kernel.features import (
    EventRate,
    FeatureConfig,
    FeatureSet,
    KyleLambda,
    SignalEwma,
    TradeFlow,
    Vpin,
)

S = 1_000_000_000
H = S  # half-life
EX, SYM = "X", "BTC-USDT"

# -- brute-force definitions --------------------------------------------------------------


def ewma_brute(updates: list[tuple[int, float]], t_end: int) -> tuple[float, float]:
    """The EW time average of the piecewise-constant path, segment by segment."""
    t0, x0 = updates[0]
    segments = [(x0, 0.5 ** ((t_end - t0) / H))]  # the first value extended into the past
    for (t, x), nxt in zip(updates, [*updates[1:], (t_end, 0.0)], strict=True):
        t_next = nxt[0]
        weight = 0.5 ** ((t_end - t_next) / H) - 0.5 ** ((t_end - t) / H)
        segments.append((x, weight))
    mean = sum(x * w for x, w in segments)
    var = sum(w * (x - mean) ** 2 for x, w in segments)
    return mean, var


times = st.lists(st.integers(0, 3 * H), min_size=1, max_size=30)


@settings(max_examples=200, deadline=None)
@given(times, st.lists(st.integers(0, 1000), min_size=30, max_size=30), st.integers(0, 3 * H))
def test_signal_ewma_equals_the_integral(gaps: list[int], xs: list[int], tail: int) -> None:
    ewma = SignalEwma(H)
    updates: list[tuple[int, float]] = []
    t = 0
    for gap, x in zip(gaps, xs, strict=False):
        t += gap
        ewma.update(t, float(x))
        if updates and updates[-1][0] == t:
            updates[-1] = (t, float(x))  # a value held for 0 ns weighs nothing
        else:
            updates.append((t, float(x)))
    mean, var = ewma.at(t + tail)
    want_mean, want_var = ewma_brute(updates, t + tail)
    assert mean == pytest.approx(want_mean, rel=1e-9, abs=1e-9)
    assert var == pytest.approx(want_var, rel=1e-7, abs=1e-6)


@settings(max_examples=200, deadline=None)
@given(times, st.integers(0, 3 * H))
def test_event_rate_equals_the_kernel_sum(gaps: list[int], tail: int) -> None:
    rate = EventRate(H)
    stamps, t = [], 0
    for gap in gaps:
        t += gap
        rate.add(t, 2.0)
        stamps.append(t)
    want = sum(2.0 * 0.5 ** ((t + tail - s) / H) for s in stamps) * math.log(2.0) * S / H
    assert rate.per_second(t + tail) == pytest.approx(want, rel=1e-12)


tape = st.lists(
    st.tuples(st.integers(0, S), st.integers(95, 105), st.integers(1, 40), st.booleans()),
    min_size=1,
    max_size=60,
)


@settings(max_examples=200, deadline=None)
@given(tape, st.integers(0, 2 * S))
def test_trade_flow_equals_a_filter(trades: list[tuple[int, int, int, bool]], tail: int) -> None:
    spans = (S // 2, S, 4 * S)
    flow = TradeFlow(spans, large_size=20)
    kept, t = [], 0
    for gap, price, size, is_buy in trades:
        t += gap
        flow.add(t, price, size, is_buy)
        kept.append((t, price, size, is_buy))
    at = t + tail
    for i, span in enumerate(spans):
        inside = [k for k in kept if k[0] > at - span]
        got = flow.sums(i, at)
        assert got.trades == len(inside)
        assert got.volume == sum(k[2] for k in inside)
        assert got.buy_volume == sum(k[2] for k in inside if k[3])
        assert got.price_volume == sum(k[1] * k[2] for k in inside)
        assert got.large_volume == sum(k[2] for k in inside if k[2] >= 20)


def vpin_brute(trades: list[tuple[int, int, bool]], v: int, n: int, bvc: bool) -> tuple[float, int]:
    """Unit by unit: every size unit is (price, is_buy); buckets are chunks of ``v``."""
    units = [(price, is_buy) for price, size, is_buy in trades for _ in range(size)]
    closed = len(units) // v
    imbs, dps = [], []
    for j in range(closed):
        chunk = units[j * v : (j + 1) * v]
        base = units[j * v - 1][0] if j else chunk[0][0]
        dp = chunk[-1][0] - base
        dps.append(dp)
        if bvc:
            window = dps[-n:]
            sigma = statistics.pstdev(window)
            imbs.append(abs(math.erf(dp / sigma / math.sqrt(2))) if sigma > 0 else 0.0)
        else:
            buy = sum(1 for _, b in chunk if b)
            imbs.append(abs(2 * buy - v) / v)
    last = imbs[-n:]
    return (sum(last) / len(last) if last else 0.0), closed


@settings(max_examples=300, deadline=None)
@given(tape, st.integers(1, 7), st.integers(1, 4), st.booleans())
def test_vpin_equals_unit_by_unit_buckets(
    trades: list[tuple[int, int, int, bool]], v: int, n: int, bvc: bool
) -> None:
    vpin = Vpin(v, n, bvc)
    for _, price, size, is_buy in trades:
        vpin.add(price, size, is_buy)
    want, closed = vpin_brute([(p, s, b) for _, p, s, b in trades], v, n, bvc)
    assert vpin.completed == closed
    assert vpin.value() == pytest.approx(want, rel=1e-12, abs=1e-12)


def kyle_brute(events: list[tuple[int, bool, int]], interval: int, n: int) -> Fraction | None:
    """Intervals rebuilt from scratch; ``events`` are (ts, is_mid, value: mid_x2 or signed
    size). The slope as an exact fraction (None when undefined)."""
    k_first, k_open = events[0][0] // interval, events[-1][0] // interval
    rows = []
    mid_end: int | None = None
    for k in range(k_first, k_open):
        inside = [e for e in events if e[0] // interval == k]
        q = sum(val for _, is_mid, val in inside if not is_mid)
        mids = [val for _, is_mid, val in inside if is_mid]
        start = mid_end if mid_end is not None else (mids[0] if mids else None)
        if mids:
            mid_end = mids[-1]
        rows.append((q, mid_end - start if mid_end is not None and start is not None else 0))
    rows = rows[-n:]
    m = len(rows)
    sq, sr = sum(q for q, _ in rows), sum(r for _, r in rows)
    den = m * sum(q * q for q, _ in rows) - sq * sq
    if m < 2 or den <= 0:
        return None
    return Fraction(m * sum(q * r for q, r in rows) - sq * sr, den) / 2


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, S), st.booleans(), st.integers(-20, 20)),
        min_size=1,
        max_size=60,
    ),
    st.integers(2, 6),
)
def test_kyle_lambda_equals_exact_ols(steps: list[tuple[int, bool, int]], n: int) -> None:
    interval = S // 3
    kyle = KyleLambda(interval, n)
    events, t, mid = [], 0, 2000
    for gap, is_mid, value in steps:
        t += gap
        if is_mid:
            mid += 2 * value
            kyle.on_mid(t, mid)
            events.append((t, True, mid))
        else:
            kyle.on_trade(t, value)
            events.append((t, False, value))
    want = kyle_brute(events, interval, n)
    assert kyle.value() == (float(want) if want is not None else 0.0)


# -- against batch numpy/scipy on 10k synthetic trades -------------------------------------


def synthetic_stream(seed: int, trades: int) -> list[BookSnapshot | BookDelta | Trade]:
    """A mid random walk with a 3-level book (snapshots, and deltas on the far levels) and
    trades at the touch; exchange times strictly increasing."""
    rng = np.random.Generator(np.random.PCG64(seed))
    events: list[BookSnapshot | BookDelta | Trade] = []
    t, mid, count = 1_700_000_000 * S, 100_000, 0
    while count < trades:
        t += int(rng.integers(1, 200_000_000))
        seq = len(events) + 1
        u = rng.random()
        if u < 0.25 or not events:
            mid += int(rng.integers(-3, 4))
            bids = tuple((mid - 1 - i, int(rng.integers(1, 50))) for i in range(3))
            asks = tuple((mid + 1 + i, int(rng.integers(1, 50))) for i in range(3))
            events.append(BookSnapshot(t, t, EX, SYM, seq, bids, asks))
        elif u < 0.33:  # the third bid level changes or goes
            level = ((mid - 3, int(rng.integers(0, 9))),)
            events.append(BookDelta(t, t, EX, SYM, seq, level, ()))
        elif u < 0.35:  # an ask at the best bid: locks the book, refused
            events.append(BookDelta(t, t, EX, SYM, seq, (), ((mid - 1, 5),)))
        else:
            side: Literal["buy", "sell"] = "buy" if rng.random() < 0.5 else "sell"
            price = mid + 1 if side == "buy" else mid - 1
            size = int(rng.geometric(0.2))
            events.append(Trade(t, t, EX, SYM, seq, str(seq), price, size, side))
            count += 1
    return events


def test_vpin_and_lambda_against_numpy_on_10k_trades() -> None:
    events = synthetic_stream(7, 10_000)
    tape = [e for e in events if isinstance(e, Trade)]
    assert len(tape) == 10_000
    bucket, n, interval, intervals = 20, 50, S, 60
    for bvc in (False, True):
        config = FeatureConfig(
            vpin_bucket_volume={EX: bucket},
            vpin_buckets=n,
            bvc_keys=(EX,) if bvc else (),
            lambda_interval_ns=interval,
            lambda_intervals=intervals,
            sample_interval_ns=0,
        )
        fs = FeatureSet(config)
        for e in events:
            fs.apply(e)
        got = fs.features(EX, SYM)

        sizes = np.array([tr.size for tr in tape], dtype=np.int64)
        prices = np.array([tr.price for tr in tape], dtype=np.int64)
        buys = np.array([tr.side == "buy" for tr in tape])
        cum = np.cumsum(sizes)
        closed = int(cum[-1] // bucket)
        bounds = bucket * np.arange(1, closed + 1)
        if bvc:
            last = prices[np.searchsorted(cum, bounds, side="left")]
            dp = np.diff(np.concatenate(([prices[0]], last))).astype(float)
            imb = np.zeros(closed)
            for j in range(closed):
                sigma = dp[max(0, j - n + 1) : j + 1].std()
                if sigma > 0:
                    imb[j] = abs(2 * norm.cdf(dp[j] / sigma) - 1)
        else:
            cum_buy = np.concatenate(([0], np.cumsum(sizes * buys)))
            buy_at = np.interp(bounds, np.concatenate(([0], cum)), cum_buy)
            bucket_buy = np.diff(np.concatenate(([0.0], buy_at)))
            imb = np.abs(2 * bucket_buy - bucket) / bucket
        assert got["vpin"] == pytest.approx(imb[-n:].mean(), rel=1e-9, abs=1e-12)

    ts = np.array([e.ts_event for e in events], dtype=np.int64)
    k = ts // interval - ts[0] // interval
    is_trade = np.array([isinstance(e, Trade) for e in events])
    signed = np.array(
        [(e.size if e.side == "buy" else -e.size) if isinstance(e, Trade) else 0 for e in events]
    )
    book = FeatureSet(FeatureConfig(sample_interval_ns=0))
    mids = np.full(len(events), np.nan)
    for i, e in enumerate(events):  # the mid after each event (the book applied alone)
        if not isinstance(e, Trade):
            book.apply(e)
        mids[i] = book.features(EX, SYM)["mid"]
    k_open = int(k[-1])
    q = np.bincount(k[is_trade], weights=signed[is_trade], minlength=k_open + 1)[:k_open]
    last_idx = np.searchsorted(k, np.arange(k_open), side="right") - 1
    mid_end = mids[last_idx]
    r = np.diff(np.concatenate(([mids[0]], mid_end)))
    slope = np.polyfit(q[-intervals:], r[-intervals:], 1)[0]
    assert got["kyle_lambda"] == pytest.approx(slope, rel=1e-9)
    assert got["kyle_lambda"] != 0.0


# -- determinism and snapshot / restore ----------------------------------------------------


def run(fs: FeatureSet, events: list[BookSnapshot | BookDelta | Trade]) -> list[bytes]:
    out = []
    for e in events:
        out += [msgspec.msgpack.encode(s) for s in fs.apply(e)]
    return out


CONFIG = FeatureConfig(
    vpin_bucket_volume={EX: 15},
    vpin_buckets=5,
    bvc_keys=(f"{EX}:{SYM}",),
    large_trade_size={EX: 8},
    lambda_interval_ns=S // 2,
    lambda_intervals=6,
    sample_interval_ns=S // 4,
)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(0, 400))
def test_restore_continues_identically(seed: int, cut: int) -> None:
    events = synthetic_stream(seed, 150)
    cut = min(cut, len(events))
    whole = FeatureSet(CONFIG)
    whole_out = run(whole, events)

    first = FeatureSet(CONFIG)
    out = run(first, events[:cut])
    resumed = FeatureSet(CONFIG)
    resumed.restore_bytes(first.snapshot())
    out += run(resumed, events[cut:])
    assert out == whole_out
    assert resumed.snapshot() == whole.snapshot()
    assert resumed.features(EX, SYM) == whole.features(EX, SYM)


def test_two_runs_give_the_same_bytes() -> None:
    events = synthetic_stream(3, 2000)
    a, b = FeatureSet(CONFIG), FeatureSet(CONFIG)
    assert run(a, events) == run(b, events)
    assert a.snapshot() == b.snapshot()
    assert len(run(FeatureSet(CONFIG), events)) > 100
    assert a.rejected(EX, SYM) > 0  # the stream has refused (locking) deltas
