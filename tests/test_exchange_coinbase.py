"""Coinbase Advanced Trade adapter (adapters/exchanges/coinbase.py) against the real 2026
capture played back by the local fake exchange.

The capture (``shared/data/exchanges/coinbase/cryptofeed_COINBASE.jsonl.gz``, see
MANIFEST.md) holds the product table and 1030 frames of one connection (``sequence_num``
0..1029 across all channels): two ``l2_data`` snapshots (46,000 levels for BTC-USD,
23,334 for ETH-USD), 773 ``l2_data`` updates, 59 ``market_trades`` frames (the first two
are snapshots of recent trades), 160 ``ticker``, 25 ``heartbeats``, 6 ``candles`` and 5
``subscriptions``. Expected numbers come from an independent reference replay in this file
(:func:`reference_books`: Decimal arithmetic on the raw JSON, one level at a time) and from
the venue's own ``ticker`` frames (``best_bid``/``best_ask`` and their sizes).
"""

from __future__ import annotations

import asyncio
import base64
import calendar
import functools
import json
from collections.abc import Callable, Coroutine
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from adapters.exchanges.base import (
    AuthError,
    BookInvalid,
    FeedConfig,
    MalformedMessage,
    RateLimiter,
    SequenceGap,
)
from adapters.exchanges.coinbase import (
    PRODUCT_BOOK_PATH,
    PRODUCTS_PATH,
    CdpCredentials,
    CoinbaseExchange,
    bulk_fixed,
    cdp_jwt,
    fixed_parser,
    parse_rfc3339_ns,
    trade_side_from_maker,
)
from adapters.exchanges.fake import Capture, FakeExchange, HttpResponse, WsScript, load_capture
from kernel.book import L2Book
from kernel.events import BookDelta, BookSnapshot, Connectivity, Event, Trade

CAPTURE = (
    Path(__file__).resolve().parents[2]
    / "shared"
    / "data"
    / "exchanges"
    / "coinbase"
    / "cryptofeed_COINBASE.jsonl.gz"
)
PRODUCTS = ("BTC-USD", "ETH-USD")
SUBSCRIBES = 3  # market_trades, level2, heartbeats
NS = 1_000_000_000


def run_async(fn: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run an async test in a fresh event loop (no pytest-asyncio here)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        asyncio.run(fn(*args, **kwargs))

    return wrapper


needs_capture = pytest.mark.skipif(
    not CAPTURE.exists(), reason=f"Coinbase capture not found at {CAPTURE} (shared data absent)"
)


# ---------------------------------------------------------------------------------------
# Reference model: Decimal arithmetic on the raw frames, independent of the adapter
# ---------------------------------------------------------------------------------------

Side = dict[Decimal, tuple[str, str]]
"""price -> (price text, quantity text) as on the wire."""


def reference_books(frames: list[str]) -> dict[str, tuple[Side, Side]]:
    """Every product's book after ``frames`` (snapshot replaces, "0" deletes)."""
    books: dict[str, tuple[Side, Side]] = {}
    for text in frames:
        msg = json.loads(text)
        if msg["channel"] != "l2_data":
            continue
        for ev in msg["events"]:
            if ev["type"] == "snapshot":
                books[ev["product_id"]] = ({}, {})
            bids, asks = books[ev["product_id"]]
            for u in ev["updates"]:
                side = bids if u["side"] == "bid" else asks
                price = Decimal(u["price_level"])
                if Decimal(u["new_quantity"]) == 0:
                    side.pop(price, None)
                else:
                    side[price] = (u["price_level"], u["new_quantity"])
    return books


def units(text: str, decimals: int) -> int:
    value = Decimal(text).scaleb(decimals)
    assert value == value.to_integral_value()
    return int(value)


def reference_levels(side: Side, best_first_desc: bool) -> list[tuple[int, int]]:
    prices = sorted(side, reverse=best_first_desc)
    return [(units(side[p][0], 2), units(side[p][1], 8)) for p in prices]


def snapshot_frame(product: str, bids: Side, asks: Side, seq: int, event_time: str) -> str:
    """An ``l2_data`` snapshot of the given book, shaped like the recorded ones."""
    updates = [
        {
            "side": "bid",
            "event_time": event_time,
            "price_level": bids[p][0],
            "new_quantity": bids[p][1],
        }
        for p in sorted(bids, reverse=True)
    ] + [
        {
            "side": "offer",
            "event_time": event_time,
            "price_level": asks[p][0],
            "new_quantity": asks[p][1],
        }
        for p in sorted(asks)
    ]
    return json.dumps(
        {
            "channel": "l2_data",
            "client_id": "",
            "timestamp": "2026-08-09T21:10:00.000000001Z",
            "sequence_num": seq,
            "events": [{"type": "snapshot", "product_id": product, "updates": updates}],
        },
        separators=(",", ":"),
    )


def resequence(frames: list[str], first: int) -> list[str]:
    """The frames with ``sequence_num`` rewritten to first, first+1, ..."""
    out = []
    for i, text in enumerate(frames):
        msg = json.loads(text)
        msg["sequence_num"] = first + i
        out.append(json.dumps(msg, separators=(",", ":")))
    return out


def replay(events: list[Event]) -> dict[str, L2Book]:
    """Books rebuilt from the emitted events alone (what a consumer of the journal sees)."""
    books: dict[str, L2Book] = {}
    for e in events:
        if isinstance(e, BookSnapshot):
            book = books.setdefault(e.symbol, L2Book(e.exchange, e.symbol))
            book.apply_snapshot(e.bids, e.asks, e.ts_event)
        elif isinstance(e, BookDelta):
            books[e.symbol].apply_delta(e.bids, e.asks, e.ts_event)
    return books


def assert_book_equals(book: L2Book, ref: tuple[Side, Side]) -> None:
    assert book.bids.levels() == reference_levels(ref[0], True)
    assert book.asks.levels() == reference_levels(ref[1], False)


def update_trades(frames: list[str]) -> list[dict[str, Any]]:
    """Trades of the ``market_trades`` update events, in wire order."""
    out = []
    for text in frames:
        msg = json.loads(text)
        if msg["channel"] == "market_trades":
            for ev in msg["events"]:
                if ev["type"] == "update":
                    out.extend(ev["trades"])
    return out


# ---------------------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def capture() -> Capture:
    if not CAPTURE.exists():
        pytest.skip(f"Coinbase capture not found at {CAPTURE} (shared data absent)")
    return load_capture(CAPTURE)


@pytest.fixture(scope="module")
def frames(capture: Capture) -> list[str]:
    return [text for _, text in capture.frames()]


@pytest.fixture(scope="module")
def products_body(capture: Capture) -> str:
    return capture.routes()[PRODUCTS_PATH]


@pytest.fixture(scope="module")
def full_reference(frames: list[str]) -> dict[str, tuple[Side, Side]]:
    return reference_books(frames)


class StepClock:
    """Deterministic clock: 1 µs per reading, from a fixed origin."""

    def __init__(self, start: int = 1_800_000_000 * NS) -> None:
        self.t = start
        self.start = start

    def now_ns(self) -> int:
        self.t += 1_000
        return self.t


def make_adapter(
    products_body: str, config: FeedConfig | None = None, **kwargs: Any
) -> CoinbaseExchange:
    """An adapter with its instruments loaded from the recorded table and books ready."""
    ex = CoinbaseExchange(
        config or FeedConfig(symbols=list(PRODUCTS)), use_env_credentials=False, **kwargs
    )
    ex.instruments = {i.wire_symbol.upper(): i for i in ex.instruments_from_products(products_body)}
    ex.on_connected()
    return ex


def feed(ex: CoinbaseExchange, frames: list[str], ts0: int = 0) -> list[Event]:
    out: list[Event] = []
    for i, text in enumerate(frames):
        out.extend(ex.on_frame(text, ts0 + i))
    return out


# ---------------------------------------------------------------------------------------
# Pure parsing
# ---------------------------------------------------------------------------------------


def test_parse_rfc3339_ns_exact() -> None:
    minute = calendar.timegm((2026, 8, 9, 21, 5, 0, 0, 0, 0))
    # envelope timestamp: nanoseconds
    assert parse_rfc3339_ns("2026-08-09T21:05:48.228568804Z") == (minute + 48) * NS + 228568804
    # event_time: microseconds; a trade time with 5 digits (trailing zero dropped)
    assert parse_rfc3339_ns("2026-08-09T21:05:48.170326Z") == (minute + 48) * NS + 170326000
    assert parse_rfc3339_ns("2026-08-09T21:05:38.50436Z") == (minute + 38) * NS + 504360000
    assert parse_rfc3339_ns("2026-08-09T21:05:38Z") == (minute + 38) * NS
    assert parse_rfc3339_ns("2026-08-09T23:05:38.5+02:00") == (minute + 38) * NS + 500_000_000
    assert parse_rfc3339_ns("2026-08-09T20:35:38.5-00:30") == (minute + 38) * NS + 500_000_000
    # past the float's 15-16 significant digits: 1.786e18 ns needs 19 digits exactly
    assert parse_rfc3339_ns("2026-08-09T21:05:48.000000001Z") % 10 == 1
    for bad in (
        "",
        "2026-08-09",
        "2026-08-09T21:05:48.Z",
        "2026-08-09T21:05:48.1234567890Z",
        "2026-08-09T21:05:4xZ",
        "2026-13-09T21:05:48Z",
        "2026-08-09T21:05:61Z",
        "2026-08-09 21:05:48 +0000 UTC",
        "2026-08-09T21:05:48+0200",
    ):
        with pytest.raises(ValueError, match="RFC 3339"):
            parse_rfc3339_ns(bad)


def test_fixed_parser_exact_and_strict() -> None:
    price = fixed_parser(2)
    size = fixed_parser(8)
    assert price("65083.66") == 6508366
    assert price("126296") == 12629600
    assert price("1919.5") == 191950
    assert price("0.10") == 10
    assert price("1.230") == 123  # extra zero digits are exact
    assert size("0.0000052") == 520
    assert size("0.00000001") == 1
    assert size("1e-5") == 1000  # exponent form through kernel.fixedpoint
    assert fixed_parser(2, step=5)("1.05") == 105
    for parse, bad in (
        (price, "0.123"),
        (price, "-1.00"),
        (price, "1.2.3"),
        (price, ""),
        (price, "abc"),
        (fixed_parser(2, step=5), "1.04"),
    ):
        with pytest.raises(ValueError):
            parse(bad)


@needs_capture
def test_bulk_parser_matches_scalar_on_the_whole_btc_snapshot(frames: list[str]) -> None:
    snap = json.loads(frames[13])
    assert snap["channel"] == "l2_data" and snap["events"][0]["type"] == "snapshot"
    updates = snap["events"][0]["updates"]
    assert len(updates) == 46000
    prices = [u["price_level"] for u in updates]
    sizes = [u["new_quantity"] for u in updates]
    assert bulk_fixed(prices, 2) == [fixed_parser(2)(p) for p in prices]
    assert bulk_fixed(sizes, 8) == [fixed_parser(8)(s) for s in sizes]
    assert bulk_fixed(sizes, 8) == [units(s, 8) for s in sizes]
    with pytest.raises(ValueError):
        bulk_fixed(["1.5", "0.123"], 2)  # a dropped digit
    with pytest.raises(ValueError):
        bulk_fixed(["1.5", "-2"], 2)
    with pytest.raises(ValueError):
        bulk_fixed(["1.5", "1 000"], 2)
    with pytest.raises(ValueError):
        bulk_fixed(["1.05", "1.04"], 2, step=5)


# ---------------------------------------------------------------------------------------
# Instruments and subscriptions
# ---------------------------------------------------------------------------------------


@needs_capture
def test_instruments_from_the_recorded_product_table(products_body: str) -> None:
    ex = CoinbaseExchange(
        FeedConfig(symbols=["btc-usd", "ETH-USD", "BTC-EUR"]), use_env_credentials=False
    )
    btc, eth, btc_eur = ex.instruments_from_products(products_body)
    assert (btc.symbol, btc.base, btc.quote, btc.wire_symbol) == (
        "BTC-USD",
        "BTC",
        "USD",
        "BTC-USD",
    )
    # quote_increment 0.01 -> 2 decimals, tick 1; base_increment 0.00000001 -> 8 decimals
    assert (btc.price_decimals, btc.tick_size, btc.size_decimals, btc.lot_size) == (2, 1, 8, 1)
    assert btc.min_notional == 1 * 10**8  # quote_min_size "1" in MONEY units
    assert (eth.symbol, eth.price_decimals, eth.size_decimals) == ("ETH-USD", 2, 8)
    assert btc_eur.symbol == "BTC-EUR"
    with pytest.raises(ValueError, match="unknown product 'NOPE-USD'"):
        CoinbaseExchange(
            FeedConfig(symbols=["NOPE-USD"]), use_env_credentials=False
        ).instruments_from_products(products_body)


@needs_capture
def test_usdc_alias_routes_the_usd_products_frames(products_body: str, frames: list[str]) -> None:
    """BTC-USDC is an alias of BTC-USD (``"alias": "BTC-USD"`` in the table); public
    channels answer it with BTC-USD data, which lands on the BTC-USDC instrument."""
    ex = make_adapter(products_body, FeedConfig(symbols=["BTC-USDC"]))
    assert ex.instruments["BTC-USDC"].symbol == "BTC-USDC"
    events = feed(ex, frames)
    snaps = [e for e in events if isinstance(e, BookSnapshot)]
    assert [(s.symbol, len(s.bids), len(s.asks)) for s in snaps] == [("BTC-USDC", 18764, 27236)]
    btc_trades = [t for t in update_trades(frames) if t["product_id"] == "BTC-USD"]
    assert len([e for e in events if isinstance(e, Trade)]) == len(btc_trades) == 47


@needs_capture
def test_subscribe_frames_one_channel_each_heartbeats_always(products_body: str) -> None:
    ex = make_adapter(products_body)
    assert [json.loads(f) for f in ex.subscribe_frames()] == [
        {"type": "subscribe", "product_ids": list(PRODUCTS), "channel": "market_trades"},
        {"type": "subscribe", "product_ids": list(PRODUCTS), "channel": "level2"},
        {"type": "subscribe", "product_ids": list(PRODUCTS), "channel": "heartbeats"},
    ]
    books_only = make_adapter(products_body, FeedConfig(PRODUCTS, channels=frozenset({"book"})))
    assert [json.loads(f)["channel"] for f in books_only.subscribe_frames()] == [
        "level2",
        "heartbeats",
    ]
    assert ex.ping_frame() is None  # no application-level ping on Advanced Trade


# ---------------------------------------------------------------------------------------
# Frame-by-frame playback of the capture
# ---------------------------------------------------------------------------------------


@needs_capture
def test_capture_playback_events_and_final_books(
    products_body: str, frames: list[str], full_reference: dict[str, tuple[Side, Side]]
) -> None:
    ex = make_adapter(products_body)
    events = feed(ex, frames, ts0=10**18)
    snaps = [e for e in events if isinstance(e, BookSnapshot)]
    deltas = [e for e in events if isinstance(e, BookDelta)]
    trades = [e for e in events if isinstance(e, Trade)]
    assert len(events) == len(snaps) + len(deltas) + len(trades)
    assert [(s.symbol, s.seq, len(s.bids), len(s.asks)) for s in snaps] == [
        ("BTC-USD", 13, 18764, 27236),
        ("ETH-USD", 21, 6935, 16399),
    ]
    assert len(deltas) == 773
    # market_trades snapshots (200 old trades) are history: only the 79 update prints
    assert len(trades) == len(update_trades(frames)) == 79
    # ts_event = event_time (microseconds) exactly; seq = sequence_num; ts_recv as given
    minute = calendar.timegm((2026, 8, 9, 21, 5, 0, 0, 0, 0))
    assert snaps[0].ts_event == (minute + 48) * NS + 170326000
    assert snaps[0].ts_recv == 10**18 + 13
    assert snaps[0].bids[0] == (6508366, 20371215) and snaps[0].asks[0][0] == 6508367
    first_delta = json.loads(frames[14])
    assert deltas[0].seq == first_delta["sequence_num"] == 14
    assert deltas[0].ts_event == parse_rfc3339_ns(
        first_delta["events"][0]["updates"][0]["event_time"]
    )
    assert len(deltas[0].bids) + len(deltas[0].asks) == len(first_delta["events"][0]["updates"])
    # the local books, and the books rebuilt from the emitted events, equal the reference
    rebuilt = replay(events)
    for product in PRODUCTS:
        assert_book_equals(ex.books[product].local.book, full_reference[product])
        assert_book_equals(rebuilt[product], full_reference[product])
    assert (len(rebuilt["BTC-USD"].bids), len(rebuilt["BTC-USD"].asks)) == (18769, 27238)
    assert (len(rebuilt["ETH-USD"].bids), len(rebuilt["ETH-USD"].asks)) == (6925, 16403)


@needs_capture
def test_books_against_the_ticker_channel(products_body: str, frames: list[str]) -> None:
    """At every ``ticker`` frame, the book built from the events emitted so far is compared
    with the ticker's best bid/ask and their sizes. ``level2`` is batched (~50 ms) while
    ``ticker`` is per trade, so the two agree only where no trade happened inside a batch:
    of the 160 tickers, 6 precede the books' snapshots; of the other 154, 114 agree on both
    prices and both sizes and 132 on both prices (counted independently with Decimal)."""
    ex = make_adapter(products_body)
    books: dict[str, L2Book] = {}
    compared = full = prices = 0
    for i, text in enumerate(frames):
        for e in ex.on_frame(text, i):  # rebuild the books from the emitted events alone
            if isinstance(e, BookSnapshot):
                books[e.symbol] = L2Book(e.exchange, e.symbol)
                books[e.symbol].apply_snapshot(e.bids, e.asks, e.ts_event)
            elif isinstance(e, BookDelta):
                books[e.symbol].apply_delta(e.bids, e.asks, e.ts_event)
        msg = json.loads(text)
        if msg["channel"] != "ticker":
            continue
        for ev in msg["events"]:
            for t in ev["tickers"]:
                book = books.get(t["product_id"])
                if book is None:
                    continue
                compared += 1
                bid, ask = book.best_bid(), book.best_ask()
                assert bid is not None and ask is not None
                want_bid = (units(t["best_bid"], 2), units(t["best_bid_quantity"], 8))
                want_ask = (units(t["best_ask"], 2), units(t["best_ask_quantity"], 8))
                prices += bid[0] == want_bid[0] and ask[0] == want_ask[0]
                full += bid == want_bid and ask == want_ask
    assert (compared, full, prices) == (154, 114, 132)


@needs_capture
def test_trade_aggressor_is_the_opposite_of_the_makers_side(
    products_body: str, frames: list[str]
) -> None:
    """``side`` in market_trades is the maker's: every SELL print at the best ask (47) and
    every BUY print at the best bid (17) of the book just before it."""
    assert (trade_side_from_maker("SELL"), trade_side_from_maker("BUY")) == ("buy", "sell")
    ex = make_adapter(products_body)
    wire_side = {t["trade_id"]: t["side"] for t in update_trades(frames)}
    at_ask = at_bid = 0
    for i, text in enumerate(frames):
        before = {
            p: (b.local.book.best_bid(), b.local.book.best_ask()) for p, b in ex.books.items()
        }
        for e in ex.on_frame(text, i):
            if not isinstance(e, Trade) or before[e.symbol][0] is None:
                continue
            bid, ask = before[e.symbol]
            assert bid is not None and ask is not None
            assert e.side == {"SELL": "buy", "BUY": "sell"}[wire_side[e.trade_id]]
            if e.price == ask[0]:
                at_ask += 1
                assert e.side == "buy"
            elif e.price == bid[0]:
                at_bid += 1
                assert e.side == "sell"
    assert (at_ask, at_bid) == (47, 17)


@needs_capture
def test_multi_trade_frames_are_emitted_oldest_first(products_body: str, frames: list[str]) -> None:
    ex = make_adapter(products_body)
    multi = 0
    for i, text in enumerate(frames):
        trades = [e for e in ex.on_frame(text, i) if isinstance(e, Trade)]
        if len(trades) > 1:
            multi += 1
            keys = [(t.ts_event, int(t.trade_id)) for t in trades]
            assert keys == sorted(keys)
            wire = json.loads(text)["events"][0]["trades"]
            assert [t.trade_id for t in trades] == [w["trade_id"] for w in reversed(wire)]
    assert multi == 12


@needs_capture
def test_trade_snapshot_after_reconnect_fills_the_hole(
    products_body: str, frames: list[str]
) -> None:
    """First connection: the snapshot is history (not emitted). After a reconnect: the
    snapshot's trades newer than the last one emitted are emitted, oldest first."""
    trades = update_trades(frames)
    btc = sorted(
        (t for t in trades if t["product_id"] == "BTC-USD"), key=lambda t: int(t["trade_id"])
    )
    ex = make_adapter(products_body)
    first = [e for e in feed(ex, frames[:1]) if isinstance(e, Trade)]
    assert first == []  # 100 BTC-USD trades of history
    # three update prints arrive, then the connection drops
    for n, t in enumerate(btc[:3]):
        msg = {
            "channel": "market_trades",
            "timestamp": "2026-08-09T21:05:50Z",
            "sequence_num": 1 + n,
            "events": [{"type": "update", "trades": [t]}],
        }
        assert [e.trade_id for e in ex.on_frame(json.dumps(msg), 0)] == [t["trade_id"]]
    ex.on_connected()
    # the new connection's snapshot: the 8 newest trades, newest first
    snap = {
        "channel": "market_trades",
        "timestamp": "2026-08-09T21:06:00Z",
        "sequence_num": 0,
        "events": [{"type": "snapshot", "trades": list(reversed(btc[:8]))}],
    }
    filled = ex.on_frame(json.dumps(snap), 0)
    assert [e.trade_id for e in filled] == [t["trade_id"] for t in btc[3:8]]
    assert all(isinstance(e, Trade) and e.symbol == "BTC-USD" for e in filled)


@needs_capture
def test_sequence_gap_on_the_connection_stops_everything_until_reconnect(
    products_body: str, frames: list[str]
) -> None:
    ex = make_adapter(products_body)
    feed(ex, frames[:300])
    with pytest.raises(SequenceGap, match="sequence_num 301, expected 300"):
        ex.on_frame(frames[301], 301)
    assert not any(b.synced for b in ex.books.values())
    assert feed(ex, frames[302:400]) == []  # the connection is being closed
    ex.on_connected()
    assert len(feed(ex, frames[:30])) > 0


@needs_capture
def test_malformed_frames(products_body: str, frames: list[str]) -> None:
    ex = make_adapter(products_body)
    feed(ex, frames[:30])
    with pytest.raises(MalformedMessage, match="undecodable frame"):
        ex.on_frame('{"channel": "l2_data", "sequence_num": 30, "events": [', 0)
    with pytest.raises(MalformedMessage, match="error frame"):
        ex.on_frame('{"type":"error","message":"failure to subscribe"}', 0)
    # a book frame with a bad level: the product's book is rebuilt (BookInvalid)
    bad = json.loads(frames[30])
    assert bad["channel"] == "l2_data"
    bad["events"][0]["updates"][0]["new_quantity"] = "0.123456789"
    with pytest.raises(BookInvalid, match="bad level"):
        ex.on_frame(json.dumps(bad), 0)
    assert not ex.books[bad["events"][0]["product_id"]].synced
    # two events in one frame, the second invalid: the first book changed without being
    # emitted, so every book is rebuilt (no symbol: Connectivity(resync) for all)
    ex.on_connected()
    feed(ex, frames[:30])
    assert all(b.synced for b in ex.books.values())
    good, worse = json.loads(frames[30]), json.loads(frames[30])
    worse["events"][0]["product_id"] = (
        "ETH-USD" if good["events"][0]["product_id"] == "BTC-USD" else "BTC-USD"
    )
    worse["events"][0]["updates"][0]["side"] = "middle"
    good["events"].append(worse["events"][0])
    with pytest.raises(BookInvalid, match="side 'middle'") as raised:
        ex.on_frame(json.dumps(good), 0)
    assert raised.value.symbol == ""
    assert not any(b.synced for b in ex.books.values())


# ---------------------------------------------------------------------------------------
# Through the real run loop against the fake exchange
# ---------------------------------------------------------------------------------------


async def run_until(
    fx: FakeExchange,
    config: FeedConfig,
    done: Callable[[CoinbaseExchange, list[Event]], bool],
    timeout: float = 15.0,
    **kwargs: Any,
) -> tuple[CoinbaseExchange, list[Event]]:
    ex = CoinbaseExchange(config, use_env_credentials=False, **kwargs)
    events: list[Event] = []

    async def sink(batch: list[Event]) -> None:
        events.extend(batch)

    task = asyncio.ensure_future(ex.run(sink))
    try:
        async with asyncio.timeout(timeout):
            while not done(ex, events):
                if task.done():
                    task.result()
                await asyncio.sleep(0.01)
    finally:
        ex.stop()
        await asyncio.wait_for(task, 5.0)
    return ex, events


def live_config(fx: FakeExchange, **overrides: Any) -> FeedConfig:
    settings: dict[str, Any] = {
        "symbols": list(PRODUCTS),
        "ws_url": fx.ws_url,
        "rest_url": fx.rest_url,
        "poll_interval_s": 0.0,
        "backoff_base_s": 0.01,
        "backoff_cap_s": 0.05,
    }
    settings.update(overrides)
    return FeedConfig(**settings)


def of(events: list[Event], kind: type) -> list[Any]:
    return [e for e in events if isinstance(e, kind)]


def timed(frames: list[str]) -> list[tuple[float, str]]:
    return [(float(i), f) for i, f in enumerate(frames)]


@needs_capture
@run_async
async def test_run_loop_plays_the_capture(
    products_body: str, frames: list[str], full_reference: dict[str, tuple[Side, Side]]
) -> None:
    routes = {PRODUCTS_PATH: products_body}
    async with FakeExchange(routes, [WsScript(timed(frames), wait_for=SUBSCRIBES)]) as fx:
        clock = StepClock()
        ex, events = await run_until(
            fx, live_config(fx), lambda ex, _: ex.stats.frames == len(frames), clock=clock
        )
    assert [json.loads(f)["channel"] for f in fx.client_frames[0]] == [
        "market_trades",
        "level2",
        "heartbeats",
    ]
    assert ex.stats.frames == 1030 and ex.stats.malformed == 0 and ex.stats.gaps == 0
    assert (len(of(events, BookSnapshot)), len(of(events, BookDelta)), len(of(events, Trade))) == (
        2,
        773,
        79,
    )
    conn = of(events, Connectivity)
    assert [(c.symbol, c.status) for c in conn] == [
        ("BTC-USD", "up"),
        ("ETH-USD", "up"),
        ("BTC-USD", "down"),
        ("ETH-USD", "down"),
    ]
    # ts_recv comes from the injected clock
    market = [e for e in events if not isinstance(e, Connectivity)]
    assert all(clock.start < e.ts_recv <= clock.t for e in market)
    rebuilt = replay(events)
    for product in PRODUCTS:
        assert_book_equals(rebuilt[product], full_reference[product])
    assert len(ex.stats.latencies_ns) == 2 + 773 + 57  # one per frame that emitted events


def resumed_script(frames: list[str], resume_at: int) -> list[str]:
    """A second connection: fresh snapshots of the books as of ``frames[:resume_at]``, then
    the recorded frames from ``resume_at`` on, numbered from 0 like a new connection."""
    books = reference_books(frames[:resume_at])
    snaps = [
        snapshot_frame(p, *books[p], seq=0, event_time="2026-08-09T21:06:00.5Z") for p in PRODUCTS
    ]
    return resequence(snaps, 0) + resequence(frames[resume_at:], len(snaps))


@needs_capture
@run_async
async def test_sequence_gap_resyncs_every_book_by_reconnecting(
    products_body: str, frames: list[str], full_reference: dict[str, tuple[Side, Side]]
) -> None:
    """Frame 299 (an l2 update) is lost on the first connection: frame 300 shows the gap,
    Connectivity(resync) is journaled for both products, the socket is closed, and the
    second connection's fresh snapshots rebuild both books exactly."""
    gap = 299
    assert json.loads(frames[gap])["channel"] == "l2_data"
    first = frames[:gap] + frames[gap + 1 :]
    second = resumed_script(frames, gap + 1)
    scripts = [
        WsScript(timed(first), wait_for=SUBSCRIBES),
        WsScript(timed(second), wait_for=SUBSCRIBES),
    ]
    async with FakeExchange({PRODUCTS_PATH: products_body}, scripts) as fx:
        ex, events = await run_until(
            fx,
            live_config(fx),
            lambda ex, _: fx.ws_connects == 2 and ex.last_sequence == len(second) - 1,
        )
    assert fx.ws_connects == 2 and ex.stats.gaps == 1 and ex.stats.resyncs == 1
    assert ex.stats.reconnects == 1
    conn = [(c.symbol, c.status) for c in of(events, Connectivity)]
    assert conn[:4] == [
        ("BTC-USD", "up"),
        ("ETH-USD", "up"),
        ("BTC-USD", "resync"),
        ("ETH-USD", "resync"),
    ]
    assert conn[4:8] == [
        ("BTC-USD", "down"),
        ("ETH-USD", "down"),
        ("BTC-USD", "up"),
        ("ETH-USD", "up"),
    ]
    resync = of(events, Connectivity)[2]
    assert resync.reason == "sequence_gap: sequence_num 300, expected 299"
    snaps = of(events, BookSnapshot)
    assert [(s.symbol, s.seq) for s in snaps] == [
        ("BTC-USD", 13),
        ("ETH-USD", 21),
        ("BTC-USD", 0),
        ("ETH-USD", 1),
    ]
    # nothing after the gap was emitted from the first connection: every print once
    trades = of(events, Trade)
    assert len(trades) == 79 and len({t.trade_id for t in trades}) == 79
    rebuilt = replay(events)
    for product in PRODUCTS:
        assert_book_equals(rebuilt[product], full_reference[product])


@needs_capture
@run_async
async def test_disconnect_mid_stream_reconnects_and_resnapshots(
    products_body: str, frames: list[str], full_reference: dict[str, tuple[Side, Side]]
) -> None:
    cut = 400
    second = resumed_script(frames, cut)
    scripts = [
        WsScript(timed(frames), wait_for=SUBSCRIBES, close_after=cut),
        WsScript(timed(second), wait_for=SUBSCRIBES),
    ]
    async with FakeExchange({PRODUCTS_PATH: products_body}, scripts) as fx:
        ex, events = await run_until(
            fx, live_config(fx), lambda ex, _: ex.stats.frames == cut + len(second)
        )
    assert fx.ws_connects == 2 and ex.stats.reconnects == 1 and ex.stats.gaps == 0
    assert [json.loads(f)["channel"] for f in fx.client_frames[1]] == [
        "market_trades",
        "level2",
        "heartbeats",
    ]
    statuses = [c.status for c in of(events, Connectivity)]
    assert statuses[:6] == ["up", "up", "down", "down", "up", "up"]
    assert "resync" not in statuses
    assert len(of(events, BookSnapshot)) == 4
    trades = of(events, Trade)
    assert len(trades) == 79 and len({t.trade_id for t in trades}) == 79
    rebuilt = replay(events)
    for product in PRODUCTS:
        assert_book_equals(rebuilt[product], full_reference[product])


@needs_capture
@run_async
async def test_malformed_json_is_counted_and_the_stream_goes_on(
    products_body: str, frames: list[str], full_reference: dict[str, tuple[Side, Side]]
) -> None:
    played = [*frames[:500], '{"channel":"l2_data","sequence_num":', *frames[500:]]
    async with FakeExchange(
        {PRODUCTS_PATH: products_body}, [WsScript(timed(played), wait_for=SUBSCRIBES)]
    ) as fx:
        ex, events = await run_until(
            fx, live_config(fx), lambda ex, _: ex.stats.frames == len(played)
        )
    assert ex.stats.malformed == 1 and ex.stats.gaps == 0 and ex.stats.resyncs == 0
    assert (len(of(events, BookSnapshot)), len(of(events, BookDelta)), len(of(events, Trade))) == (
        2,
        773,
        79,
    )
    rebuilt = replay(events)
    for product in PRODUCTS:
        assert_book_equals(rebuilt[product], full_reference[product])


@needs_capture
@run_async
async def test_crossed_update_resubscribes_only_that_product(
    products_body: str, frames: list[str]
) -> None:
    """An ETH-USD update that would cross the book is refused (BookInvalid): Connectivity
    (resync) for ETH-USD only, level2 is unsubscribed and resubscribed for ETH-USD on the
    same connection, and the venue's fresh snapshot rebuilds that book."""
    upto = 100
    ref = reference_books(frames[:upto])
    eth_bids, eth_asks = ref["ETH-USD"]
    best_ask = min(eth_asks)
    crossing = {
        "channel": "l2_data",
        "timestamp": "2026-08-09T21:05:52Z",
        "sequence_num": upto,
        "events": [
            {
                "type": "update",
                "product_id": "ETH-USD",
                "updates": [
                    {
                        "side": "bid",
                        "event_time": "2026-08-09T21:05:52Z",
                        "price_level": str(best_ask + Decimal("0.01")),
                        "new_quantity": "1",
                    }
                ],
            }
        ],
    }
    fresh_bids = {p: v for p, v in list(eth_bids.items())[:50]}
    fresh_asks = {p: v for p, v in list(eth_asks.items())[:60]}
    counter = [upto + 1]

    def reply(text: str) -> list[str]:
        msg = json.loads(text)
        out = [
            json.dumps(
                {
                    "channel": "subscriptions",
                    "timestamp": "2026-08-09T21:05:53Z",
                    "sequence_num": counter[0],
                    "events": [{"subscriptions": {}}],
                }
            )
        ]
        counter[0] += 1
        if msg["type"] == "subscribe" and msg["channel"] == "level2":
            out.append(
                snapshot_frame(
                    "ETH-USD", fresh_bids, fresh_asks, counter[0], "2026-08-09T21:05:53.25Z"
                )
            )
            counter[0] += 1
        return out

    script = WsScript(
        timed([*frames[:upto], json.dumps(crossing)]), wait_for=SUBSCRIBES, reply=reply
    )
    async with FakeExchange({PRODUCTS_PATH: products_body}, [script]) as fx:
        ex, events = await run_until(fx, live_config(fx), lambda ex, _: ex.stats.frames == upto + 4)
    assert fx.ws_connects == 1 and ex.stats.invalid_books == 1 and ex.stats.resyncs == 1
    assert [(c.symbol, c.status) for c in of(events, Connectivity) if c.status == "resync"] == [
        ("ETH-USD", "resync")
    ]
    assert [
        (m["type"], m["channel"], m["product_ids"])
        for m in map(json.loads, fx.client_frames[0][SUBSCRIBES:])
    ] == [
        ("unsubscribe", "level2", ["ETH-USD"]),
        ("subscribe", "level2", ["ETH-USD"]),
    ]
    snaps = of(events, BookSnapshot)
    assert [(s.symbol, s.seq, len(s.bids), len(s.asks)) for s in snaps] == [
        ("BTC-USD", 13, 18764, 27236),
        ("ETH-USD", 21, 6935, 16399),
        ("ETH-USD", upto + 3, 50, 60),
    ]
    eth = ex.books["ETH-USD"].local.book
    assert_book_equals(eth, (fresh_bids, fresh_asks))
    assert_book_equals(ex.books["BTC-USD"].local.book, ref["BTC-USD"])  # untouched


@needs_capture
@run_async
async def test_http_429_backs_off_by_retry_after_and_retries(
    products_body: str, frames: list[str]
) -> None:
    sleeps: list[float] = []

    async def recording_sleep(seconds: float) -> None:
        sleeps.append(seconds)
        await asyncio.sleep(seconds)

    limiter = RateLimiter(10, 10.0, sleep=recording_sleep)
    async with FakeExchange(
        {PRODUCTS_PATH: products_body}, [WsScript(timed(frames[:40]), wait_for=SUBSCRIBES)]
    ) as fx:
        fx.fail_next(PRODUCTS_PATH, HttpResponse(429, "{}", {"Retry-After": "0.3"}))
        ex, events = await run_until(
            fx, live_config(fx), lambda ex, _: ex.stats.frames == 40, limiter=limiter
        )
    assert ex.stats.rate_limited == 1
    assert [r for r in fx.requests if r[1] == PRODUCTS_PATH] == [("GET", PRODUCTS_PATH)] * 2
    assert any(0.2 < s <= 0.3 for s in sleeps)  # the limiter held the retry for Retry-After
    assert len(of(events, BookSnapshot)) == 2


def product_book_body(product: str, mid: int) -> str:
    """A public product book shaped as documented (get-public-product-book)."""
    bids = [{"price": f"{mid - k}.00", "size": f"0.{k:02d}"} for k in range(1, 6)]
    asks = [{"price": f"{mid + k}.00", "size": f"1.{k}"} for k in range(1, 6)]
    return json.dumps(
        {
            "pricebook": {
                "product_id": product,
                "bids": bids,
                "asks": asks,
                "time": "2026-08-09T21:06:00.123456Z",
            },
            "last": str(mid),
            "mid_market": str(mid),
            "spread_bps": "1",
            "spread_absolute": "2",
        }
    )


@needs_capture
@run_async
async def test_rest_polling_while_the_websocket_is_down(products_body: str) -> None:
    routes = {
        PRODUCTS_PATH: products_body,
        f"{PRODUCT_BOOK_PATH}?limit=5&product_id=BTC-USD": product_book_body("BTC-USD", 65000),
        f"{PRODUCT_BOOK_PATH}?limit=5&product_id=ETH-USD": product_book_body("ETH-USD", 1900),
    }
    async with FakeExchange(routes, []) as fx:  # every WebSocket is closed at once
        fx.fail_next(PRODUCT_BOOK_PATH, HttpResponse(429, "{}", {"Retry-After": "0.05"}))
        ex, events = await run_until(
            fx,
            live_config(fx, depth=5, poll_interval_s=0.02),
            lambda ex, ev: {s.symbol for s in of(ev, BookSnapshot)} == set(PRODUCTS),
        )
    assert ex.stats.rate_limited == 1 and ex.stats.polls >= 2
    snaps = {s.symbol: s for s in of(events, BookSnapshot)}
    btc = snaps["BTC-USD"]
    assert btc.seq == 0
    assert btc.bids == tuple((100 * (65000 - k), k * 10**6) for k in range(1, 6))
    assert btc.asks == tuple((100 * (65000 + k), 10**8 + k * 10**7) for k in range(1, 6))
    minute = calendar.timegm((2026, 8, 9, 21, 6, 0, 0, 0, 0))
    assert btc.ts_event == minute * NS + 123456000
    assert not ex.books["BTC-USD"].synced  # the WebSocket book waits for its own snapshot
    assert ("GET", f"{PRODUCT_BOOK_PATH}?limit=5&product_id=ETH-USD") in fx.requests


# ---------------------------------------------------------------------------------------
# JWT auth (no documented test vector exists: verify with the public key, check claims)
# ---------------------------------------------------------------------------------------


def _b64decode(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def _decode_jwt(token: str) -> tuple[dict[str, Any], dict[str, Any], bytes, bytes]:
    head, body, sig = token.split(".")
    return (
        json.loads(_b64decode(head)),
        json.loads(_b64decode(body)),
        _b64decode(sig),
        f"{head}.{body}".encode(),
    )


def test_es256_jwt_verifies_with_the_public_key_and_carries_every_claim() -> None:
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    ).decode()
    name = "organizations/org-1/apiKeys/key-1"
    env = {"COINBASE_API_KEY_NAME": name, "COINBASE_API_PRIVATE_KEY": pem.replace("\n", "\\n")}
    creds = CdpCredentials.from_env(env)
    assert creds is not None
    token = creds.rest_token(
        "get", "api.coinbase.com", "/api/v3/brokerage/accounts?limit=5", now=1_786_309_548
    )
    header, claims, sig, signed = _decode_jwt(token)
    assert header == {"alg": "ES256", "kid": name, "nonce": header["nonce"], "typ": "JWT"}
    assert len(header["nonce"]) == 32 and int(header["nonce"], 16) >= 0
    assert claims == {
        "iss": "cdp",
        "sub": name,
        "nbf": 1_786_309_548,
        "exp": 1_786_309_668,
        "uri": "GET api.coinbase.com/api/v3/brokerage/accounts",
    }
    assert len(sig) == 64  # raw r || s, not DER
    der = encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big"))
    key.public_key().verify(der, signed, ec.ECDSA(hashes.SHA256()))  # raises if invalid
    from cryptography.exceptions import InvalidSignature

    with pytest.raises(InvalidSignature):
        key.public_key().verify(der, signed.replace(b".", b"!"), ec.ECDSA(hashes.SHA256()))
    # two tokens never share a nonce
    assert _decode_jwt(creds.ws_token())[0]["nonce"] != header["nonce"]
    # the WebSocket token has no uri
    ws_claims = _decode_jwt(creds.ws_token(now=100))[1]
    assert ws_claims == {"iss": "cdp", "sub": name, "nbf": 100, "exp": 220}


def test_ed25519_key_signs_eddsa() -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    key = ed25519.Ed25519PrivateKey.generate()
    seed = key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    pub = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    creds = CdpCredentials("key-2", base64.b64encode(seed + pub).decode())
    header, claims, sig, signed = _decode_jwt(
        creds.rest_token("POST", "api.coinbase.com", "/api/v3/brokerage/orders", now=5)
    )
    assert (
        header["alg"] == "EdDSA"
        and claims["uri"] == "POST api.coinbase.com/api/v3/brokerage/orders"
    )
    key.public_key().verify(sig, signed)


def test_credentials_from_env_and_errors() -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    assert CdpCredentials.from_env({}) is None
    with pytest.raises(AuthError, match="set both"):
        CdpCredentials.from_env({"COINBASE_API_KEY_NAME": "k"})
    with pytest.raises(AuthError, match="cannot load"):
        CdpCredentials("k", "-----BEGIN EC PRIVATE KEY-----\nnope\n-----END EC PRIVATE KEY-----\n")
    with pytest.raises(AuthError, match="P-256"):
        CdpCredentials(
            "k", ec.generate_private_key(ec.SECP384R1()).private_bytes(*_pem_args()).decode()
        )
    with pytest.raises(AuthError, match="needs"):
        CoinbaseExchange(FeedConfig(PRODUCTS), use_env_credentials=False).auth_headers("GET", "/x")


def _pem_args() -> tuple[Any, Any, Any]:
    from cryptography.hazmat.primitives import serialization

    return (
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )


@run_async
async def test_private_request_sends_a_signed_bearer_token() -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    seen: list[httpx.Request] = []

    async def hook(request: httpx.Request) -> None:
        seen.append(request)

    http = httpx.AsyncClient(event_hooks={"request": [hook]})
    routes = {"/api/v3/brokerage/accounts": '{"accounts": [], "has_next": false}'}
    async with FakeExchange(routes, []) as fx:
        ex = CoinbaseExchange(
            FeedConfig(PRODUCTS, rest_url=fx.rest_url),
            http=http,
            credentials=CdpCredentials("key-3", key),
        )
        body = await ex.private_request("GET", "/api/v3/brokerage/accounts", params={"limit": "5"})
        await http.aclose()
    assert body == {"accounts": [], "has_next": False}
    assert fx.requests == [("GET", "/api/v3/brokerage/accounts?limit=5")]
    scheme, token = seen[0].headers["Authorization"].split(" ")
    assert scheme == "Bearer"
    claims = _decode_jwt(token)[1]
    assert claims["uri"] == f"GET {fx.rest_url.split('//')[1]}/api/v3/brokerage/accounts"
    assert claims["sub"] == "key-3" and claims["exp"] - claims["nbf"] == 120


@needs_capture
def test_subscribe_frames_carry_a_fresh_ws_jwt_with_credentials(products_body: str) -> None:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

    key = ec.generate_private_key(ec.SECP256R1())
    ex = make_adapter(products_body, credentials=CdpCredentials("key-4", key))
    tokens = [json.loads(f)["jwt"] for f in ex.subscribe_frames()]
    assert len(tokens) == 3 and len(set(tokens)) == 3
    for token in tokens:
        header, claims, sig, signed = _decode_jwt(token)
        assert header["kid"] == "key-4" and "uri" not in claims
        der = encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big"))
        key.public_key().verify(der, signed, ec.ECDSA(hashes.SHA256()))


def test_cdp_jwt_rejects_unknown_key_types() -> None:
    with pytest.raises(AuthError, match="unsupported key type"):
        cdp_jwt("k", object())
    assert msgspec.json.decode(_b64decode(cdp_jwt("k", _ec_key(), now=1).split(".")[1]))["nbf"] == 1


def _ec_key() -> Any:
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())
