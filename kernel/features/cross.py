"""Cross-venue features of one instrument: the same normalised symbol on other venues.

Pure functions of the books (kernel/book.py) and the instruments (for each venue's price
decimals and taker fee); prices of venues with different ``price_decimals`` are compared
as real prices (integer / 10^decimals). Values, in :data:`CROSS_NAMES` order (0.0 where
undefined: no book with both sides on this venue, or no other venue with one):

* ``xv_venues``: other venues with both sides of a book;
* ``xv_best_bid`` / ``xv_best_ask``: best bid / ask over every venue, this one included
  (real prices);
* ``xv_mid_diff_bp``: this venue's mid against the mean mid of the others,
  ``(mid - mean) / mean x 1e4``;
* ``xv_sell_there_bp``: ``(best other bid - this ask) / this mid x 1e4``: buy here,
  sell there, gross of fees (positive: the prices cross);
* ``xv_buy_there_bp``: ``(this bid - best other ask) / this mid x 1e4``: buy there,
  sell here;
* ``arb_signal_bp``: the larger of the two minus both venues' taker fees (ppm / 100 bp):
  positive when crossing both books at the touch would profit after fees.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from kernel.book import L2Book
from kernel.instruments import Instrument

CROSS_NAMES: tuple[str, ...] = (
    "xv_venues",
    "xv_best_bid",
    "xv_best_ask",
    "xv_mid_diff_bp",
    "xv_sell_there_bp",
    "xv_buy_there_bp",
    "arb_signal_bp",
)

_EMPTY = (0.0,) * len(CROSS_NAMES)


def _touch(book: L2Book | None, inst: Instrument) -> tuple[float, float] | None:
    if book is None:
        return None
    bk, ak = book.bids.keys, book.asks.keys
    if not bk or not ak:
        return None
    scale = 10.0**inst.price_decimals
    return bk[-1] / scale, -ak[-1] / scale


def cross_venue_features(
    inst: Instrument,
    venues: Sequence[Instrument],
    books: Mapping[str, L2Book],
) -> tuple[float, ...]:
    """The :data:`CROSS_NAMES` values of ``inst``; ``venues``: every instrument with the
    same symbol (``inst`` may be among them; it is skipped)."""
    own = _touch(books.get(inst.key), inst)
    if own is None:
        return _EMPTY
    bid, ask = own
    mid = (bid + ask) / 2
    best_bid, best_ask = bid, ask
    other_bid = other_ask = 0.0
    bid_fee = ask_fee = 0
    mids = 0.0
    n = 0
    for other in venues:
        if other.key == inst.key:
            continue
        touch = _touch(books.get(other.key), other)
        if touch is None:
            continue
        ob, oa = touch
        n += 1
        mids += (ob + oa) / 2
        if ob > other_bid:
            other_bid, bid_fee = ob, other.taker_fee_ppm
        if other_ask == 0.0 or oa < other_ask:
            other_ask, ask_fee = oa, other.taker_fee_ppm
        best_bid = max(best_bid, ob)
        best_ask = min(best_ask, oa)
    if not n:
        return (0.0, bid, ask, 0.0, 0.0, 0.0, 0.0)
    mean = mids / n
    sell_there = (other_bid - ask) / mid * 1e4
    buy_there = (bid - other_ask) / mid * 1e4
    own_fee = inst.taker_fee_ppm
    arb = max(sell_there - (own_fee + bid_fee) / 100, buy_there - (own_fee + ask_fee) / 100)
    return (float(n), best_bid, best_ask, (mid - mean) / mean * 1e4, sell_there, buy_there, arb)
