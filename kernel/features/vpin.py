"""VPIN: volume-synchronised probability of informed trading (Easley, Lopez de Prado,
O'Hara 2012), over equal-volume buckets, incrementally.

The tape is cut into buckets of exactly ``bucket_volume`` size units, in trade order;
a trade larger than what its bucket still needs is split, its remainder opening the
next bucket(s). A bucket closes when full. For a closed bucket with buy volume ``B``
and sell volume ``S`` (``B + S = V``) the order imbalance is ``|B - S| / V``, and

    VPIN = mean of the imbalances of the last ``n`` closed buckets

(the closed ones while fewer than ``n``; 0.0 before the first). The open bucket does
not count.

Classification of a bucket's volume:

* exact aggressor sides (``bvc=False``): ``B`` is the volume of the bucket's buy-
  aggressor trades (``Trade.side == "buy"``), ``S`` the rest;
* bulk volume classification (``bvc=True``, for venues whose aggressor is unknown): the
  bucket's price change ``dP`` = its last trade price - the previous bucket's last
  trade price (the first bucket: - its first trade price), ``sigma`` = the population
  standard deviation of the ``dP`` of the last ``n`` closed buckets including this one,
  ``B = V x Phi(dP / sigma)`` (``Phi`` the standard normal CDF), so the imbalance is
  ``|2 Phi(z) - 1| = |erf(z / sqrt 2)|``; ``sigma == 0`` gives ``B = S``. A bucket is
  classified once, when it closes.

Cost: O(1) per bucket touched; the sums of ``dP`` and ``dP**2`` are integers (exact).
A trade that fills more than ``2n`` whole buckets at the price the last bucket closed at
skips the middle ones: they have ``dP = 0`` and the same side as the ones after them,
so they would leave the window with no trace (only the bucket count records them).
"""

from __future__ import annotations

import math
from collections import deque

import msgspec


class VpinState(msgspec.Struct, array_like=True):
    filled: int
    buy: int
    first_price: int
    last_price: int
    prev_close: int | None
    completed: int
    history: list[tuple[float, int]]


class Vpin:
    """VPIN of one instrument over ``buckets`` buckets of ``bucket_volume`` size units."""

    __slots__ = (
        "bucket_volume",
        "buckets",
        "buy",
        "bvc",
        "completed",
        "filled",
        "first_price",
        "history",
        "last_price",
        "prev_close",
        "sum_dp",
        "sum_dp2",
    )

    def __init__(self, bucket_volume: int, buckets: int, bvc: bool) -> None:
        if bucket_volume <= 0 or buckets <= 0:
            raise ValueError(f"VPIN needs positive bucket volume and count, got {bucket_volume}")
        self.bucket_volume = bucket_volume
        self.buckets = buckets
        self.bvc = bvc
        self.filled = 0
        self.buy = 0
        self.first_price = 0
        self.last_price = 0
        self.prev_close: int | None = None
        self.completed = 0
        # Closed buckets, oldest first: (imbalance |B - S| / V, dP in price units).
        self.history: deque[tuple[float, int]] = deque()
        self.sum_dp = 0
        self.sum_dp2 = 0

    def add(self, price: int, size: int, is_buy: bool) -> None:
        v, n = self.bucket_volume, self.buckets
        remaining = size
        while remaining > 0:
            if self.filled == 0:
                if self.prev_close == price and remaining // v > 2 * n:
                    skip = remaining // v - 2 * n
                    remaining -= skip * v
                    self.completed += skip
                self.first_price = price
            take = min(remaining, v - self.filled)
            self.filled += take
            if is_buy:
                self.buy += take
            self.last_price = price
            remaining -= take
            if self.filled == v:
                self._close()

    def _close(self) -> None:
        v, n = self.bucket_volume, self.buckets
        base = self.prev_close if self.prev_close is not None else self.first_price
        dp = self.last_price - base
        history = self.history
        if len(history) == n:
            _, old = history.popleft()
            self.sum_dp -= old
            self.sum_dp2 -= old * old
        self.sum_dp += dp
        self.sum_dp2 += dp * dp
        if self.bvc:
            m = len(history) + 1
            spread_sq = m * self.sum_dp2 - self.sum_dp * self.sum_dp  # (m sigma)**2, exact
            if spread_sq > 0 and dp:
                z = dp * m / math.sqrt(spread_sq)
                imb = abs(math.erf(z / math.sqrt(2.0)))
            else:
                imb = 0.0
        else:
            imb = abs(2 * self.buy - v) / v
        history.append((imb, dp))
        self.completed += 1
        self.prev_close = self.last_price
        self.filled = 0
        self.buy = 0

    def value(self) -> float:
        history = self.history
        return sum(imb for imb, _ in history) / len(history) if history else 0.0

    def state(self) -> VpinState:
        return VpinState(
            self.filled,
            self.buy,
            self.first_price,
            self.last_price,
            self.prev_close,
            self.completed,
            list(self.history),
        )

    def restore(self, st: VpinState) -> None:
        self.filled, self.buy = st.filled, st.buy
        self.first_price, self.last_price = st.first_price, st.last_price
        self.prev_close, self.completed = st.prev_close, st.completed
        self.history = deque(st.history)
        self.sum_dp = sum(dp for _, dp in st.history)
        self.sum_dp2 = sum(dp * dp for _, dp in st.history)
