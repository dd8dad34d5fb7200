"""Order-book features of an :class:`~kernel.book.L2Book`, computed on demand in O(levels).

Sizes and prices are the book's integer units; results are floats (features only).
Every function returns 0.0 where the feature is undefined (an empty side).

* ``imbalance(book, n)``: ``(B - A) / (B + A)`` with ``B``, ``A`` the total bid and ask
  size of the ``n`` best levels of each side; in [-1, 1], positive = more bids.
* ``weighted_imbalance(book, n)``: the same with level ``i`` (1 = the touch) weighted
  ``1 / i``: ``B = sum b_i / i``, ``A = sum a_i / i``. Rank weights, not distance
  weights, so the feature does not depend on the tick size; the touch counts twice the
  second level, three times the third, and so on.
* ``microprice(book)``: ``(bid x ask_size + ask x bid_size) / (bid_size + ask_size)``
  in price units; ``microprice_offset_bp``: ``(microprice - mid) / mid x 1e4``.
* ``spread_bp(book)``: ``(ask - bid) / mid x 1e4``.
"""

from __future__ import annotations

from kernel.book import L2Book


def imbalance(book: L2Book, levels: int) -> float:
    bid, ask = book.depth(levels)
    total = bid + ask
    return (bid - ask) / total if total else 0.0


def weighted_imbalance(book: L2Book, levels: int) -> float:
    bids, asks = book.top(levels)
    bid = sum(size / rank for rank, (_, size) in enumerate(bids, 1))
    ask = sum(size / rank for rank, (_, size) in enumerate(asks, 1))
    total = bid + ask
    return (bid - ask) / total if total > 0.0 else 0.0


def mid(book: L2Book) -> float:
    m = book.mid_x2()
    return m / 2 if m is not None else 0.0


def microprice(book: L2Book) -> float:
    m = book.microprice()
    return m if m is not None else 0.0


def microprice_offset_bp(book: L2Book) -> float:
    m2, micro = book.mid_x2(), book.microprice()
    if m2 is None or micro is None:
        return 0.0
    return (2 * micro - m2) / m2 * 1e4


def spread(book: L2Book) -> float:
    s = book.spread()
    return float(s) if s is not None else 0.0


def spread_bp(book: L2Book) -> float:
    s, m2 = book.spread(), book.mid_x2()
    return 2e4 * s / m2 if s is not None and m2 else 0.0


def level_features(book: L2Book, levels: tuple[int, ...], weighted_levels: int) -> list[float]:
    """``[imbalance(book, n) for n in levels] + [weighted_imbalance(book, weighted_levels)]``
    from one walk of the deepest levels needed (the same numbers, fewer passes)."""
    deepest = max(max(levels), weighted_levels)
    bids, asks = book.top(deepest)
    out = []
    for n in levels:
        bid = sum(size for _, size in bids[:n])
        ask = sum(size for _, size in asks[:n])
        out.append((bid - ask) / (bid + ask) if bid + ask else 0.0)
    wb = sum(size / rank for rank, (_, size) in enumerate(bids[:weighted_levels], 1))
    wa = sum(size / rank for rank, (_, size) in enumerate(asks[:weighted_levels], 1))
    out.append((wb - wa) / (wb + wa) if wb + wa > 0.0 else 0.0)
    return out
