"""Kyle's lambda: the price impact of signed order flow, by rolling OLS over time intervals.

Event time is cut into intervals ``[k x interval_ns, (k + 1) x interval_ns)``. For each
closed interval ``k``:

* ``q_k`` = signed volume: buy-aggressor size - sell-aggressor size of its trades
  (size units);
* ``r_k`` = mid change: the mid after the last book update in the interval minus the
  mid at the end of the previous interval (price units; the first mid ever seen opens
  its interval; 0 while there is no mid).

Intervals with no event count, as ``(0, 0)``: quiet time is data too. Over the last
``n`` closed intervals (fewer while fewer have closed), lambda is the OLS slope (with
intercept) of ``r`` on ``q``::

    lambda = (n sum(q r) - sum(q) sum(r)) / (n sum(q**2) - sum(q)**2)

in price units per size unit; 0.0 when fewer than 2 intervals or ``q`` is constant.
The mid is kept doubled (``L2Book.mid_x2``), so every sum is an exact integer and only
the final division is a float. The open interval does not count.

``flow_std`` (size units) is the population standard deviation of ``q`` over the same
intervals, used to express lambda as the impact of a one-sigma interval of flow.
"""

from __future__ import annotations

import math
from collections import deque

import msgspec


class KyleLambdaState(msgspec.Struct, array_like=True):
    current: int | None
    flow: int
    mid_open_x2: int | None
    mid_last_x2: int | None
    history: list[tuple[int, int]]


class KyleLambda:
    """Rolling Kyle's lambda of one instrument (see the module docstring)."""

    __slots__ = (
        "current",
        "flow",
        "history",
        "interval_ns",
        "intervals",
        "mid_last_x2",
        "mid_open_x2",
        "sum_q",
        "sum_q2",
        "sum_qr",
        "sum_r",
    )

    def __init__(self, interval_ns: int, intervals: int) -> None:
        if interval_ns <= 0 or intervals < 2:
            raise ValueError(
                f"Kyle's lambda needs interval_ns > 0 and intervals >= 2, "
                f"got {interval_ns}, {intervals}"
            )
        self.interval_ns = interval_ns
        self.intervals = intervals
        self.current: int | None = None
        self.flow = 0
        self.mid_open_x2: int | None = None
        self.mid_last_x2: int | None = None
        # Closed intervals, oldest first: (signed volume, doubled mid change).
        self.history: deque[tuple[int, int]] = deque()
        self.sum_q = 0
        self.sum_r = 0
        self.sum_q2 = 0
        self.sum_qr = 0

    def _push(self, q: int, r: int) -> None:
        history = self.history
        if len(history) == self.intervals:
            oq, or_ = history.popleft()
            self.sum_q -= oq
            self.sum_r -= or_
            self.sum_q2 -= oq * oq
            self.sum_qr -= oq * or_
        history.append((q, r))
        self.sum_q += q
        self.sum_r += r
        self.sum_q2 += q * q
        self.sum_qr += q * r

    def advance(self, ts: int) -> None:
        """Close every interval that ends at or before ``ts``."""
        k = ts // self.interval_ns
        current = self.current
        if current is None:
            self.current = k
            return
        if k <= current:
            return
        last, start = self.mid_last_x2, self.mid_open_x2
        self._push(self.flow, last - start if last is not None and start is not None else 0)
        for _ in range(min(k - current - 1, self.intervals)):
            self._push(0, 0)
        self.current = k
        self.flow = 0
        self.mid_open_x2 = last

    def on_mid(self, ts: int, mid_x2: int) -> None:
        self.advance(ts)
        if self.mid_open_x2 is None:
            self.mid_open_x2 = mid_x2
        self.mid_last_x2 = mid_x2

    def on_trade(self, ts: int, signed_size: int) -> None:
        self.advance(ts)
        self.flow += signed_size

    def value(self) -> float:
        n = len(self.history)
        den = n * self.sum_q2 - self.sum_q * self.sum_q
        if n < 2 or den <= 0:
            return 0.0
        return (n * self.sum_qr - self.sum_q * self.sum_r) / den / 2

    def flow_std(self) -> float:
        n = len(self.history)
        spread_sq = n * self.sum_q2 - self.sum_q * self.sum_q
        return math.sqrt(spread_sq) / n if n and spread_sq > 0 else 0.0

    def state(self) -> KyleLambdaState:
        return KyleLambdaState(
            self.current, self.flow, self.mid_open_x2, self.mid_last_x2, list(self.history)
        )

    def restore(self, st: KyleLambdaState) -> None:
        self.current, self.flow = st.current, st.flow
        self.mid_open_x2, self.mid_last_x2 = st.mid_open_x2, st.mid_last_x2
        self.history = deque()
        self.sum_q = self.sum_r = self.sum_q2 = self.sum_qr = 0
        for q, r in st.history:
            self._push(q, r)
