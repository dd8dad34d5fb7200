"""Event-time exponential averages: a signal's EW mean and variance, and an event rate.

Time is the instrument's event clock (``ts_event``, ns); the weight of anything
``dt`` ns old is ``0.5 ** (dt / half_life_ns)``. Nothing here reads a clock.

:class:`SignalEwma` treats the signal as piecewise constant: a value holds from the
time it was observed until the next observation, and the average at time ``T`` is
the exponentially weighted *time* average of that path. With weights
``w(s) = (ln 2 / H) x 0.5 ** ((T - s) / H)`` over ``s <= T``, and the first value
in effect at the first timestamp (the last one given at it) extended into the past, so
the weights integrate to 1::

    mean(T) = integral x(s) w(s) ds        var(T) = integral (x(s) - mean(T))**2 w(s) ds

Folding the value held over ``[t_last, t]`` (its weight ``1 - d`` with
``d = 0.5 ** ((t - t_last) / H)``) into the old mean ``m`` and variance ``v`` is the
exact weighted-merge step: ``delta = x - m; m += (1 - d) delta;
v = d (v + (1 - d) delta**2)``. Many updates at one timestamp therefore weigh
nothing; only how long a value held counts. The z-score is
``(x_now - mean(T)) / sqrt(var(T))`` (0 while the variance is 0).

:class:`EventRate` is an exponentially decayed count: each event adds its weight,
which then halves every ``H`` ns; ``rate(T) = (ln 2 / H) x sum w_i 0.5 ** ((T - t_i) / H)``
per ns, reported per second. A steady stream of ``r`` weight per second converges
to ``r``.
"""

from __future__ import annotations

import math

import msgspec

NS_PER_S = 1_000_000_000
LN2 = math.log(2.0)


def decay(dt_ns: int, half_life_ns: int) -> float:
    """``0.5 ** (dt / H)``; 1.0 for ``dt <= 0`` (time never runs backwards here)."""
    return 0.5 ** (dt_ns / half_life_ns) if dt_ns > 0 else 1.0


class SignalEwmaState(msgspec.Struct, array_like=True):
    started: bool
    fresh: bool
    last_ts: int
    value: float
    mean: float
    var: float


class SignalEwma:
    """EW time-average and variance of a piecewise-constant signal (module docstring)."""

    __slots__ = ("fresh", "half_life_ns", "last_ts", "mean", "started", "value", "var")

    def __init__(self, half_life_ns: int) -> None:
        if half_life_ns <= 0:
            raise ValueError(f"half_life_ns must be positive, got {half_life_ns}")
        self.half_life_ns = half_life_ns
        self.started = False
        self.fresh = False  # still at the first timestamp: a new value re-seeds the past
        self.last_ts = 0
        self.value = 0.0
        self.mean = 0.0
        self.var = 0.0

    def _folded(self, ts: int) -> tuple[float, float]:
        d = decay(ts - self.last_ts, self.half_life_ns)
        delta = self.value - self.mean
        w = 1.0 - d
        return self.mean + w * delta, d * (self.var + w * delta * delta)

    def update(self, ts: int, x: float) -> None:
        """The signal takes the value ``x`` at ``ts`` (earlier times count as the last)."""
        if not self.started:
            self.started = self.fresh = True
            self.mean, self.var, self.last_ts = x, 0.0, ts
        elif x == self.value and not self.fresh:
            return  # the signal holds its value: folding later gives the same mean/var
        elif ts > self.last_ts:
            self.mean, self.var = self._folded(ts)
            self.last_ts = ts
            self.fresh = False
        elif self.fresh:
            self.mean = x
        self.value = x

    def at(self, ts: int) -> tuple[float, float]:
        """``(mean, variance)`` at ``ts`` (>= the last update), without changing state."""
        if not self.started:
            return 0.0, 0.0
        if ts <= self.last_ts:
            return self.mean, self.var
        return self._folded(ts)

    def zscore(self, ts: int) -> float:
        mean, var = self.at(ts)
        return (self.value - mean) / math.sqrt(var) if var > 0.0 else 0.0

    def state(self) -> SignalEwmaState:
        return SignalEwmaState(
            self.started, self.fresh, self.last_ts, self.value, self.mean, self.var
        )

    def restore(self, st: SignalEwmaState) -> None:
        self.started, self.fresh, self.last_ts = st.started, st.fresh, st.last_ts
        self.value, self.mean, self.var = st.value, st.mean, st.var


class EventRateState(msgspec.Struct, array_like=True):
    last_ts: int
    level: float


class EventRate:
    """Exponentially decayed count of weighted events, read as a rate per second."""

    __slots__ = ("half_life_ns", "last_ts", "level")

    def __init__(self, half_life_ns: int) -> None:
        if half_life_ns <= 0:
            raise ValueError(f"half_life_ns must be positive, got {half_life_ns}")
        self.half_life_ns = half_life_ns
        self.last_ts = 0
        self.level = 0.0

    def add(self, ts: int, weight: float = 1.0) -> None:
        """An event of ``weight`` at ``ts`` (earlier than the last: counted at the last)."""
        if ts > self.last_ts:
            self.level *= decay(ts - self.last_ts, self.half_life_ns)
            self.last_ts = ts
        self.level += weight

    def per_second(self, ts: int) -> float:
        """The rate at ``ts`` (>= the last event) in weight per second."""
        level = self.level * decay(ts - self.last_ts, self.half_life_ns)
        return level * LN2 * NS_PER_S / self.half_life_ns

    def state(self) -> EventRateState:
        return EventRateState(self.last_ts, self.level)

    def restore(self, st: EventRateState) -> None:
        self.last_ts, self.level = st.last_ts, st.level
