"""L2 book: exact values for snapshot, deltas, deletes, validation and rollback."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kernel.book import BookError, L2Book


def make() -> L2Book:
    b = L2Book("BINANCE", "BTC-USDT", tick_size=5, lot_size=10)
    b.apply_snapshot([(1000, 100), (995, 200), (990, 300)], [(1005, 50), (1010, 60)], 1)
    return b


def test_snapshot_top_of_book_and_depth() -> None:
    b = make()
    assert b.best_bid() == (1000, 100)
    assert b.best_ask() == (1005, 50)
    assert b.spread() == 5
    assert b.mid_x2() == 2005
    assert b.mid() == 1002.5
    assert b.top(2) == ([(1000, 100), (995, 200)], [(1005, 50), (1010, 60)])
    assert b.depth(2) == (300, 110)
    assert b.depth(10) == (600, 110)
    # (300 - 110) / (300 + 110)
    assert b.imbalance(2) == pytest.approx(190 / 410)
    # (1000*50 + 1005*100) / 150
    assert b.microprice() == pytest.approx(150500 / 150)


def test_delta_update_insert_delete() -> None:
    b = make()
    b.apply_delta(((1000, 0), (985, 40)), ((1005, 20), (1015, 70)), 2)
    assert b.best_bid() == (995, 200)
    assert b.bids.levels() == [(995, 200), (990, 300), (985, 40)]
    assert b.asks.levels() == [(1005, 20), (1010, 60), (1015, 70)]
    # deleting a level that is not there is a no-op, not an error
    b.apply_delta(((970, 0),), (), 3)
    assert len(b.bids) == 3
    assert b.ts_event == 3


def test_snapshot_replaces_everything() -> None:
    b = make()
    b.apply_snapshot([(900, 10)], [(905, 10)], 9)
    assert b.canonical() == ([(900, 10)], [(905, 10)])


@pytest.mark.parametrize(
    ("bids", "asks", "rule"),
    [
        (((1005, 10),), (), "locked_book"),
        (((1010, 10),), (), "crossed_book"),
        ((), ((995, 10),), "crossed_book"),
        (((995, -10),), (), "negative_size"),
        (((997, 10),), (), "off_tick"),
        (((995, 15),), (), "off_lot"),
        (((0, 10),), (), "non_positive_price"),
    ],
)
def test_invalid_delta_is_refused_and_book_unchanged(bids, asks, rule) -> None:  # type: ignore[no-untyped-def]
    b = make()
    before = b.canonical()
    with pytest.raises(BookError) as err:
        b.apply_delta(bids, asks, 5)
    assert err.value.rule == rule
    assert b.canonical() == before
    assert b.ts_event == 1


def test_rollback_restores_deleted_and_changed_levels() -> None:
    b = make()
    before = b.canonical()
    # deletes the best ask, changes a bid, then crosses with a new bid at 1010
    with pytest.raises(BookError):
        b.apply_delta(((995, 500), (1010, 10)), ((1005, 0),), 5)
    assert b.canonical() == before


def test_crossed_snapshot_refused() -> None:
    b = make()
    with pytest.raises(BookError) as err:
        b.apply_snapshot([(1000, 10)], [(995, 10)], 3)
    assert err.value.rule == "crossed_book"
    assert b.best_bid() == (1000, 100)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.booleans(), st.integers(1, 60), st.integers(0, 5)),
        min_size=1,
        max_size=80,
    )
)
def test_book_matches_dict_model(ops: list[tuple[bool, int, int]]) -> None:
    """Against a plain dict model: same levels, and never crossed after any accepted update."""
    b = L2Book("X", "Y")
    model: dict[bool, dict[int, int]] = {True: {}, False: {}}
    for is_bid, tick, size in ops:
        price = tick if is_bid else tick + 30  # overlapping ranges: some updates cross
        try:
            b.apply_delta(((price, size),) if is_bid else (), () if is_bid else ((price, size),), 0)
        except BookError:
            continue
        side = model[is_bid]
        if size:
            side[price] = size
        else:
            side.pop(price, None)
        assert b.bids.levels() == sorted(model[True].items(), reverse=True)
        assert b.asks.levels() == sorted(model[False].items())
        bb, ba = b.best_bid(), b.best_ask()
        if bb and ba:
            assert bb[0] < ba[0]
