"""Kraken adapters (adapters/exchanges/kraken.py): spot WebSocket v2 and v1, Kraken Futures.

Data: the real recorded streams in shared/data/exchanges/kraken (see shared/data/MANIFEST.md):
``cryptofeed_KRAKEN`` (spot v1, 10 pairs, book depth 1000 with 4269 checksummed updates,
trades) and ``cryptofeed_KRAKEN_FUTURES`` (book snapshot + seq deltas, trades,
ticker_lite), Kraken's documented v2 checksum example and docs-example frames. The tests
skip, saying why, when that directory is absent.

:class:`RefBook` is an independent implementation of Kraken's documented book procedure on
the raw wire strings (dicts of text, ``Decimal`` ordering, the checksum string built by
deleting the decimal point and stripping leading zeros); the tests use it to build frames
(fresh snapshots after a resubscribe, v2 checksums) and to check the adapter's books.
"""

from __future__ import annotations

import asyncio
import base64
import calendar
import hashlib
import hmac
import json
import socket
import zlib
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import httpx
import pytest

from adapters.exchanges.base import (
    AuthError,
    BadResponse,
    BookInvalid,
    ChecksumMismatch,
    FeedConfig,
    MalformedMessage,
    RateLimited,
    RateLimiter,
    SequenceGap,
)
from adapters.exchanges.fake import Capture, FakeExchange, HttpResponse, WsScript, load_capture
from adapters.exchanges.kraken import (
    KrakenExchange,
    KrakenFuturesExchange,
    KrakenV1Exchange,
    book_checksum,
    book_depth,
    epoch_ns,
    fixed,
    parse_asset_pairs,
    resolve_pairs,
    rfc3339_ns,
    sign_request,
)
from kernel.book import L2Book
from kernel.events import (
    BookDelta,
    BookSnapshot,
    Connectivity,
    Event,
    FundingRate,
    MarkPrice,
    Trade,
)
from kernel.fixedpoint import FixedPointError
from kernel.instruments import InstrumentError

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "exchanges" / "kraken"
SPOT = DATA / "cryptofeed_KRAKEN.jsonl.gz"
FUTURES = DATA / "cryptofeed_KRAKEN_FUTURES.jsonl.gz"
V2_EXAMPLE = DATA / "kraken_docs_v2_book_checksum_example.json"
DOCS = DATA / "docs_examples"

PAIRS_V1 = [
    "WAVES/EUR",
    "XMR/USD",
    "KSM/XBT",
    "GRT/ETH",
    "SC/EUR",
    "ETH/CHF",
    "OCEAN/XBT",
    "OMG/USD",
    "XBT/CHF",
    "ADA/XBT",
]
TRADE_CONN, TICKER_CONN, BOOK_CONN = "KRAKEN.ws.48", "KRAKEN.ws.49", "KRAKEN.ws.50"
PERPS = ["PI_XRPUSD", "PI_LTCUSD", "PI_ETHUSD"]


def _need(path: Path) -> None:
    if not path.exists():
        pytest.skip(f"{path} is missing: the shared recordings (shared/data, MANIFEST.md)")


@pytest.fixture(scope="module")
def spot() -> Capture:
    _need(SPOT)
    return load_capture(SPOT)


@pytest.fixture(scope="module")
def futures() -> Capture:
    _need(FUTURES)
    return load_capture(FUTURES)


class StepClock:
    """Deterministic clock: each reading is 1 µs after the previous one."""

    def __init__(self, start: int = 1_700_000_000_000_000_000) -> None:
        self.start = start
        self.t = start

    def now_ns(self) -> int:
        self.t += 1_000
        return self.t


# ---------------------------------------------------------------------------------------
# An independent reference: Kraken's procedure on the wire strings
# ---------------------------------------------------------------------------------------


def _digits(text: str) -> str:
    return text.replace(".", "").lstrip("0")


class RefBook:
    """One pair's book as wire strings: price text -> (qty text, timestamp text)."""

    def __init__(self, depth: int) -> None:
        self.depth = depth
        self.asks: dict[str, tuple[str, str]] = {}
        self.bids: dict[str, tuple[str, str]] = {}

    def snapshot(self, asks: list[list[str]], bids: list[list[str]]) -> None:
        self.asks = {r[0]: (r[1], r[2] if len(r) > 2 else "") for r in asks}
        self.bids = {r[0]: (r[1], r[2] if len(r) > 2 else "") for r in bids}

    def apply(self, side: str, rows: list[list[str]]) -> None:
        book = self.asks if side == "a" else self.bids
        for r in rows:
            if Decimal(r[1]) == 0:
                book.pop(r[0], None)
            else:
                book[r[0]] = (r[1], r[2] if len(r) > 2 else "")
        if len(book) > self.depth:  # truncate to the subscribed depth
            for p in self.ordered(side)[self.depth :]:
                del book[p]

    def ordered(self, side: str) -> list[str]:
        if side == "a":
            return sorted(self.asks, key=Decimal)
        return sorted(self.bids, key=Decimal, reverse=True)

    def checksum(self) -> int:
        text = "".join(_digits(p) + _digits(self.asks[p][0]) for p in self.ordered("a")[:10])
        text += "".join(_digits(p) + _digits(self.bids[p][0]) for p in self.ordered("b")[:10])
        return zlib.crc32(text.encode())

    def v1_snapshot(self, channel_id: int, pair: str) -> str:
        asks = [[p, *self.asks[p]] for p in self.ordered("a")]
        bids = [[p, *self.bids[p]] for p in self.ordered("b")]
        return json.dumps([channel_id, {"as": asks, "bs": bids}, f"book-{self.depth}", pair])

    def levels(self, side: str, pd: int, sd: int) -> list[tuple[int, int]]:
        book = self.asks if side == "a" else self.bids
        return [(fixed(p, pd), fixed(book[p][0], sd)) for p in self.ordered(side)]


def _book_frames(cap: Capture, pair: str | None = None) -> list[tuple[float, str]]:
    """Frames of the book connection; with ``pair``, only that pair's book messages
    (the connection's event objects are kept)."""
    out = []
    for ts, text in cap.frames([BOOK_CONN]):
        if pair is not None and text.startswith("[") and not text.endswith(f'"{pair}"]'):
            continue
        out.append((ts, text))
    return out


def _is_update(text: str) -> bool:
    return text.startswith("[") and '"c":"' in text


# ---------------------------------------------------------------------------------------
# Pure pieces: signing, numbers, times, instruments, checksums
# ---------------------------------------------------------------------------------------


def test_sign_request_matches_krakens_documented_example() -> None:
    # https://docs.kraken.com/api/docs/guides/spot-rest-auth ("Examples")
    secret = (
        "kQH5HW/8p1uGOVjbgWA7FunAmGO8lsSUXNsu3eow76sz84Q18fWxnyRzBHCd3pd5nE9qa99HAZtuZuj6F1huXg=="
    )
    postdata = "nonce=1616492376594&ordertype=limit&pair=XBTUSD&price=37500&type=buy&volume=1.25"
    assert (
        sign_request("/0/private/AddOrder", 1616492376594, postdata, secret)
        == "4/dpxb3iT4tp/ZCVEwSnEsLxx0bqyhLpdfOpc6fn7OR8+"
        "UClSV5n9E6aSS8MPtnRfp32bAb0nmbRn6H8ndwLUQ=="
    )
    with pytest.raises(AuthError):
        sign_request("/0/private/Balance", 1, "nonce=1", "not base64!")


def test_fixed_point_and_timestamps_are_exact() -> None:
    assert fixed("354.80000000", 2) == 35480  # v1 sends 8 decimals for a 2-decimal pair
    assert fixed("0.000022900", 8) == 2290
    assert fixed("45285.2", 1) == 452852
    assert fixed("0.001", 8) == 100_000
    assert fixed(45000, 1) == 450_000  # an integral JSON number
    assert fixed("1e-3", 8) == 100_000
    with pytest.raises(FixedPointError):
        fixed("1.23", 1)
    assert epoch_ns("1618678133.366461") == 1_618_678_133_366_461_000
    expected = calendar.timegm((2023, 9, 25, 7, 49, 37)) * 10**9 + 708_706_000
    assert rfc3339_ns("2023-09-25T07:49:37.708706Z") == expected
    assert rfc3339_ns("2023-09-25T07:49:37.708706Z") == expected  # cached day
    assert rfc3339_ns("2023-09-25T07:49:37Z") == expected - 708_706_000
    assert rfc3339_ns("2023-09-25T09:49:37.5+02:00") == expected - 208_706_000
    assert [book_depth(n) for n in (1, 10, 11, 50, 100, 999, 5000)] == [
        10,
        10,
        25,
        100,
        100,
        1000,
        1000,
    ]


def test_asset_pairs_table_gives_precision_fees_and_normalised_symbols(spot: Capture) -> None:
    body = spot.http[0][2]
    v2 = parse_asset_pairs(body)
    v1 = parse_asset_pairs(body, v2=False)
    assert len(v2) == len(v1) > 250
    assert not [p for p in v2 if p.key.endswith(".d")]  # dark pool pairs have no wsname
    by_key = {p.key: p for p in v2}
    btc = by_key["XXBTZUSD"]
    assert (btc.altname, btc.wsname, btc.v2name) == ("XBTUSD", "XBT/USD", "BTC/USD")
    i = btc.instrument
    assert (i.key, i.base, i.quote, i.wire_symbol) == ("KRAKEN:BTC-USD", "BTC", "USD", "BTC/USD")
    assert (i.price_decimals, i.size_decimals, i.tick_size, i.lot_size) == (1, 8, 1, 1)
    assert (i.taker_fee_ppm, i.maker_fee_ppm) == (2600, 1600)  # 0.26 % / 0.16 %
    doge = by_key["XDGUSD"]
    assert (doge.v2name, doge.instrument.symbol, doge.instrument.price_decimals) == (
        "DOGE/USD",
        "DOGE-USD",
        7,
    )
    assert {p.instrument.wire_symbol for p in v1 if p.key == "XDGUSD"} == {"XDG/USD"}
    # every way of naming a pair resolves to the same row
    for name in ("XBTUSD", "XXBTZUSD", "xbt/usd", "BTC/USD", "BTC-USD"):
        assert resolve_pairs(v2, [name]) == [btc]
    chosen = resolve_pairs(v1, PAIRS_V1)
    assert [p.instrument.symbol for p in chosen] == [
        "WAVES-EUR",
        "XMR-USD",
        "KSM-BTC",
        "GRT-ETH",
        "SC-EUR",
        "ETH-CHF",
        "OCEAN-BTC",
        "OMG-USD",
        "BTC-CHF",
        "ADA-BTC",
    ]
    with pytest.raises(InstrumentError):
        resolve_pairs(v2, ["NOPE/USD"])


def _v2_number_levels(rows: list[dict[str, str]]) -> str:
    """Levels as JSON numbers that keep their digits, as on the v2 wire."""
    return ",".join(f'{{"price":{r["price"]},"qty":{r["qty"]}}}' for r in rows)


def _v2_book(kind: str, symbol: str, bids: str, asks: str, checksum: int, ts: str = "") -> str:
    stamp = f',"timestamp":"{ts}"' if ts else ""
    return (
        f'{{"channel":"book","type":"{kind}","data":[{{"symbol":"{symbol}",'
        f'"bids":[{bids}],"asks":[{asks}],"checksum":{checksum}{stamp}}}]}}'
    )


def test_v2_documented_checksum_example_and_truncation_deletes(spot: Capture) -> None:
    _need(V2_EXAMPLE)
    example = json.loads(V2_EXAMPLE.read_text())
    data = example["message"]["data"][0]
    assert example["expected_checksum"] == 3310070434
    ex = KrakenExchange(FeedConfig(symbols=["BTC/USD"], depth=10), clock=StepClock())
    ex.use_asset_pairs(spot.http[0][2])
    inst = ex.instruments["BTC/USD"]
    lv = [(fixed(r["price"], 1), fixed(r["qty"], 8)) for r in data["asks"]]
    bv = [(fixed(r["price"], 1), fixed(r["qty"], 8)) for r in data["bids"]]
    assert book_checksum(lv, bv) == 3310070434

    frame = _v2_book(
        "snapshot",
        "BTC/USD",
        _v2_number_levels(data["bids"]),
        _v2_number_levels(data["asks"]),
        3310070434,
    )
    (snap,) = ex.on_frame(frame, 7)
    assert isinstance(snap, BookSnapshot) and snap.symbol == "BTC-USD" and snap.ts_recv == 7
    assert snap.bids[0] == (452835, 10_000_000) and snap.asks[0] == (452852, 100_000)
    assert ex.checksums_verified == 1

    # a new best bid pushes the 11th bid out: the delta carries its deletion
    ref = RefBook(10)
    ref.snapshot(
        [[r["price"], r["qty"]] for r in data["asks"]],
        [[r["price"], r["qty"]] for r in data["bids"]],
    )
    assert ref.checksum() == 3310070434  # the reference agrees with Kraken's example
    ref.apply("b", [["45283.6", "0.50000000"]])
    update = _v2_book(
        "update",
        "BTC/USD",
        '{"price":45283.6,"qty":0.50000000}',
        "",
        ref.checksum(),
        "2022-06-13T08:09:10.123456Z",
    )
    (delta,) = ex.on_frame(update, 8)
    assert isinstance(delta, BookDelta)
    assert delta.bids == ((452836, 50_000_000), (452766, 0)) and delta.asks == ()
    assert delta.ts_event == calendar.timegm((2022, 6, 13, 8, 9, 10)) * 10**9 + 123_456_000
    book = ex.books["BTC/USD"].local.book
    assert len(book.bids) == 10 and book.bids.top(1) == [(452836, 50_000_000)]
    assert ex.checksums_verified == 2

    # a wrong checksum: ChecksumMismatch, the pair is unsynced, later updates are dropped
    bad = _v2_book("update", "BTC/USD", '{"price":45283.7,"qty":1.0}', "", 12345)
    with pytest.raises(ChecksumMismatch) as err:
        ex.on_frame(bad, 9)
    assert err.value.symbol == inst.symbol
    assert not ex.books["BTC/USD"].synced
    assert ex.on_frame(update, 10) == []


# ---------------------------------------------------------------------------------------
# The recorded v1 stream, offline (frame by frame through on_frame)
# ---------------------------------------------------------------------------------------


def _v1_adapter(spot: Capture, **kw: Any) -> KrakenV1Exchange:
    ex = KrakenV1Exchange(FeedConfig(symbols=PAIRS_V1, depth=1000, **kw), clock=StepClock())
    ex.use_asset_pairs(spot.http[0][2])
    return ex


def test_every_recorded_v1_checksum_verifies_and_the_events_rebuild_the_book(
    spot: Capture,
) -> None:
    ex = _v1_adapter(spot)
    events: list[Event] = []
    last_c: dict[str, int] = {}
    frames = _book_frames(spot)
    for n, (_, text) in enumerate(frames):
        events.extend(ex.on_frame(text, n))
        if _is_update(text):
            last_c[json.loads(text)[-1]] = int(text.rsplit('"c":"', 1)[1].split('"', 1)[0])
    snaps = [e for e in events if isinstance(e, BookSnapshot)]
    deltas = [e for e in events if isinstance(e, BookDelta)]
    n_updates = sum(_is_update(t) for _, t in frames)
    assert (len(snaps), len(deltas), n_updates) == (10, 4269, 4269)
    assert ex.checksums_verified == 4269  # every checksum the venue sent
    # a consumer replaying the emitted events holds the adapter's (checksummed) book
    for wire, pb in ex.books.items():
        inst = pb.inst
        replay = L2Book(inst.exchange, inst.symbol, inst.tick_size, inst.lot_size)
        for e in events:
            if isinstance(e, BookSnapshot) and e.symbol == inst.symbol:
                replay.apply_snapshot(e.bids, e.asks, e.ts_event)
            elif isinstance(e, BookDelta) and e.symbol == inst.symbol:
                replay.apply_delta(e.bids, e.asks, e.ts_event)
        assert replay.canonical() == pb.local.book.canonical()
        assert len(replay.bids) <= 1000 and len(replay.asks) <= 1000
        bids, asks = replay.top(10)
        assert book_checksum(asks, bids, pb.price_scale, pb.qty_scale) == last_c[wire]
    # exchange time at the venue's microseconds, local time from the injected clock
    first = deltas[0]
    assert first.symbol == "XMR-USD" and first.ts_event == 1_618_678_133_365_913_000
    assert first.bids == ((35415, 500_000_000),)


def test_recorded_v1_trades_keep_the_aggressor_side(spot: Capture) -> None:
    ex = _v1_adapter(spot)
    frames = spot.frames([TRADE_CONN])
    trades = [e for n, (_, t) in enumerate(frames) for e in ex.on_frame(t, 1000 + n)]
    rows = [r for _, t in frames if t.startswith("[") for r in json.loads(t)[1]]
    assert len(trades) == len(rows) == 10
    assert all(isinstance(t, Trade) for t in trades)
    first = trades[0]
    assert isinstance(first, Trade)
    assert (first.symbol, first.price, first.size, first.side) == (
        "XMR-USD",
        35411,
        89_594_024,
        "sell",
    )
    assert first.ts_event == 1_618_678_142_557_535_000
    sides = [t.side for t in trades if isinstance(t, Trade)]
    assert sides == ["buy" if r[3] == "b" else "sell" for r in rows]
    assert len({t.trade_id for t in trades if isinstance(t, Trade)}) == 10


def _iso(epoch_text: str) -> str:
    whole, _, frac = epoch_text.partition(".")
    return datetime.fromtimestamp(int(whole), UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{frac}Z"


def _v1_to_v2(spot: Capture, v2names: dict[str, str]) -> list[str]:
    """The recorded v1 book stream re-encoded as v2 frames (numbers with their digits,
    snapshot checksums from :class:`RefBook`, v1 update checksums as they were)."""
    out = []
    for _, text in _book_frames(spot):
        m = json.loads(text)
        if not isinstance(m, list):
            continue
        pair = m[-1]
        if "as" in m[1]:
            ref = RefBook(1000)
            ref.snapshot(m[1]["as"], m[1]["bs"])
            bids = [{"price": r[0], "qty": r[1]} for r in m[1]["bs"]]
            asks = [{"price": r[0], "qty": r[1]} for r in m[1]["as"]]
            out.append(
                _v2_book(
                    "snapshot",
                    v2names[pair],
                    _v2_number_levels(bids),
                    _v2_number_levels(asks),
                    ref.checksum(),
                )
            )
            continue
        bids, asks, c, ts = [], [], 0, ""
        for part in m[1:-2]:
            for r in part.get("b", []):
                bids.append({"price": r[0], "qty": r[1]})
                ts = max(ts, r[2])
            for r in part.get("a", []):
                asks.append({"price": r[0], "qty": r[1]})
                ts = max(ts, r[2])
            c = int(part.get("c", c))
        out.append(
            _v2_book(
                "update",
                v2names[pair],
                _v2_number_levels(bids),
                _v2_number_levels(asks),
                c,
                _iso(ts),
            )
        )
    return out


def test_v2_parser_verifies_the_recorded_stream_re_encoded_as_v2(spot: Capture) -> None:
    v1 = _v1_adapter(spot)
    v1_events = [e for n, (_, t) in enumerate(_book_frames(spot)) for e in v1.on_frame(t, n)]
    v2 = KrakenExchange(FeedConfig(symbols=PAIRS_V1, depth=1000), clock=StepClock())
    v2.use_asset_pairs(spot.http[0][2])
    names = {p.wsname: p.v2name for p in v2.pairs.values()}
    assert names["XBT/CHF"] == "BTC/CHF" and names["KSM/XBT"] == "KSM/BTC"
    v2_events = [e for n, t in enumerate(_v1_to_v2(spot, names)) for e in v2.on_frame(t, n)]
    assert v2.checksums_verified == 4269 + 10  # v2 snapshots carry a checksum too
    assert len(v2_events) == len(v1_events) == 4279
    for a, b in zip(v1_events, v2_events, strict=True):
        assert type(a) is type(b) and a.symbol == b.symbol  # type: ignore[attr-defined]
        assert (a.bids, a.asks) == (b.bids, b.asks)  # type: ignore[attr-defined]
        if isinstance(a, BookDelta):
            assert a.ts_event == b.ts_event  # RFC 3339 and epoch seconds agree to the µs
    for wire, pb in v1.books.items():
        assert v2.books[names[wire]].local.book.canonical() == pb.local.book.canonical()


def test_v2_trades_control_messages_and_malformed_frames(spot: Capture) -> None:
    ex = KrakenExchange(FeedConfig(symbols=["XBT/USD"]), clock=StepClock())
    ex.use_asset_pairs(spot.http[0][2])
    frame = (
        '{"channel":"trade","type":"update","data":[{"symbol":"BTC/USD","side":"sell",'
        '"price":68471.2,"qty":0.00100000,"ord_type":"market","trade_id":74000001,'
        '"timestamp":"2024-05-02T10:01:02.123456Z"}]}'
    )
    (t,) = ex.on_frame(frame, 99)
    assert isinstance(t, Trade)
    assert (t.symbol, t.price, t.size, t.side, t.seq, t.trade_id) == (
        "BTC-USD",
        684712,
        100_000,
        "sell",
        74000001,
        "74000001",
    )
    assert t.ts_event == calendar.timegm((2024, 5, 2, 10, 1, 2)) * 10**9 + 123_456_000
    assert t.ts_recv == 99
    _need(DOCS)
    for name in ("nautilus_ws_pong.json", "nautilus_ws_subscribe_response.json"):
        assert ex.on_frame((DOCS / name).read_text(), 1) == []
    assert ex.on_frame('{"channel":"heartbeat"}', 1) == []
    for bad in (
        "{not json",
        "[1,2]",
        '{"x":1}',
        '{"channel":"trade","data":[{"symbol":"BTC/USD"}]}',
    ):
        with pytest.raises(MalformedMessage):
            ex.on_frame(bad, 1)
    with pytest.raises(MalformedMessage):  # a pair nobody subscribed
        ex.on_frame(frame.replace("BTC/USD", "ETH/USD"), 1)


# ---------------------------------------------------------------------------------------
# Through the run loop against the local fake exchange
# ---------------------------------------------------------------------------------------


def _config(fx: FakeExchange, symbols: list[str], **kw: Any) -> FeedConfig:
    base: dict[str, Any] = {
        "depth": 1000,
        "ws_url": fx.ws_url,
        "rest_url": fx.rest_url,
        "ping_interval_s": None,
        "poll_interval_s": 0,
        "backoff_base_s": 0.01,
        "backoff_cap_s": 0.05,
    }
    base.update(kw)
    return FeedConfig(symbols=symbols, **base)


async def _run_until(
    ex: Any, done: Callable[[list[Event]], bool], timeout: float = 15
) -> list[Event]:
    got: list[Event] = []

    async def sink(events: list[Event]) -> None:
        got.extend(events)
        if done(got):
            ex.stop()

    await asyncio.wait_for(ex.run(sink), timeout)
    return got


def _count(events: list[Event], kind: type) -> int:
    return sum(isinstance(e, kind) for e in events)


def test_run_loop_plays_back_the_recorded_stream(spot: Capture) -> None:
    frames = spot.frames([TRADE_CONN, BOOK_CONN])
    clock = StepClock()

    async def main() -> tuple[KrakenV1Exchange, list[Event], list[list[str]]]:
        script = WsScript(frames, wait_for=2)
        async with FakeExchange(spot.routes(), [script]) as fx:
            ex = KrakenV1Exchange(_config(fx, PAIRS_V1), clock=clock)
            got = await _run_until(
                ex, lambda g: ex.checksums_verified == 4269 and _count(g, Trade) == 10
            )
            return ex, got, fx.client_frames

    ex, got, sent = asyncio.run(main())
    assert [json.loads(f) for f in sent[0]] == [
        {
            "event": "subscribe",
            "pair": PAIRS_V1,
            "subscription": {"name": "book", "depth": 1000},
            "reqid": 1,
        },
        {"event": "subscribe", "pair": PAIRS_V1, "subscription": {"name": "trade"}, "reqid": 2},
    ]
    st = ex.stats
    assert (st.malformed, st.checksum_failures, st.resyncs, st.connects) == (0, 0, 0, 1)
    assert (_count(got, BookSnapshot), _count(got, BookDelta), _count(got, Trade)) == (
        10,
        4269,
        10,
    )
    assert [e.status for e in got if isinstance(e, Connectivity)][:10] == ["up"] * 10
    market = [e for e in got if isinstance(e, BookSnapshot | BookDelta | Trade)]
    stamps = [e.ts_recv for e in market]
    assert stamps == sorted(stamps) and clock.start < stamps[0] and stamps[-1] <= clock.t


def _xmr_stream(spot: Capture) -> tuple[list[tuple[float, str]], int]:
    """XMR/USD book frames (with the connection's event objects), and the index of the
    snapshot among them."""
    frames = _book_frames(spot, "XMR/USD")
    snap = next(i for i, (_, t) in enumerate(frames) if t.startswith("[") and '"as"' in t)
    return frames, snap


def test_checksum_mismatch_resubscribes_and_the_fresh_snapshot_restores_the_book(
    spot: Capture,
) -> None:
    frames, snap_at = _xmr_stream(spot)
    snapshot = json.loads(frames[snap_at][1])
    updates = [json.loads(t) for _, t in frames[snap_at + 1 :] if t.startswith("[")]
    k = 5  # the 6th update arrives with a wrong checksum
    ref = RefBook(1000)
    ref.snapshot(snapshot[1]["as"], snapshot[1]["bs"])

    def apply(m: list[Any]) -> None:
        for part in m[1:-2]:
            for side in ("a", "b"):
                if side in part:
                    ref.apply(side, part[side])

    script: list[tuple[float, str]] = list(frames[: snap_at + 1])
    for m in updates[:k]:
        apply(m)
        script.append((0.0, json.dumps(m)))
    corrupt = json.loads(json.dumps(updates[k]))
    corrupt[-3]["c"] = str((int(corrupt[-3]["c"]) + 1) % 2**32)
    apply(updates[k])
    script.append((0.0, json.dumps(corrupt)))
    for m in updates[k + 1 : k + 4]:  # in flight while the unsubscribe travels: dropped
        apply(m)
        script.append((0.0, json.dumps(m)))
    status = {"channelID": 992, "channelName": "book-1000", "event": "subscriptionStatus"}
    sub = {"pair": "XMR/USD", "subscription": {"depth": 1000, "name": "book"}}
    script.append((0.0, json.dumps({**status, **sub, "status": "unsubscribed"})))
    script.append((0.0, json.dumps({**status, **sub, "status": "subscribed"})))
    script.append((0.0, ref.v1_snapshot(992, "XMR/USD")))
    for m in updates[k + 4 :]:
        apply(m)
        script.append((0.0, json.dumps(m)))
    expected_verified = k + len(updates) - (k + 4)

    async def main() -> tuple[KrakenV1Exchange, list[Event], list[list[str]]]:
        async with FakeExchange(spot.routes(), [WsScript(script, wait_for=1)]) as fx:
            cfg = _config(fx, ["XMR/USD"], channels=frozenset({"book"}))
            ex = KrakenV1Exchange(cfg, clock=StepClock())
            got = await _run_until(ex, lambda g: ex.checksums_verified == expected_verified)
            return ex, got, fx.client_frames

    ex, got, sent = asyncio.run(main())
    assert [json.loads(f) for f in sent[0]] == [
        {
            "event": e,
            "pair": ["XMR/USD"],
            "subscription": {"name": "book", "depth": 1000},
            "reqid": n,
        }
        for n, e in ((1, "subscribe"), (2, "unsubscribe"), (3, "subscribe"))
    ]
    assert (ex.stats.checksum_failures, ex.stats.resyncs) == (1, 1)
    kinds = [e.status if isinstance(e, Connectivity) else type(e).__name__ for e in got]
    assert kinds == [
        "up",
        "BookSnapshot",
        *["BookDelta"] * k,
        "resync",
        "BookSnapshot",
        *["BookDelta"] * (len(updates) - (k + 4)),
        "down",  # stopped
    ]
    resync = next(e for e in got if isinstance(e, Connectivity) and e.status == "resync")
    assert resync.symbol == "XMR-USD" and resync.reason.startswith("checksum_mismatch")
    book = ex.books["XMR/USD"].local.book
    assert book.canonical() == (ref.levels("b", 2, 8), ref.levels("a", 2, 8))


def test_malformed_frames_are_counted_and_the_stream_goes_on(spot: Capture) -> None:
    frames, snap_at = _xmr_stream(spot)
    n_updates = sum(_is_update(t) for _, t in frames)
    bad = [
        (0.0, "{not json"),
        (0.0, '[1,"x"]'),
        (0.0, '[992,{"b":[["x","1","2"]],"c":"1"},"book-1000","XMR/USD"]'),
    ]
    script = [*frames[: snap_at + 3], *bad, *frames[snap_at + 3 :]]

    async def main() -> KrakenV1Exchange:
        async with FakeExchange(spot.routes(), [WsScript(script, wait_for=1)]) as fx:
            ex = KrakenV1Exchange(
                _config(fx, ["XMR/USD"], channels=frozenset({"book"})), clock=StepClock()
            )
            await _run_until(ex, lambda g: ex.checksums_verified == n_updates)
            return ex

    ex = asyncio.run(main())
    assert (ex.stats.malformed, ex.stats.resyncs, ex.checksums_verified) == (3, 0, n_updates)


def test_disconnect_mid_stream_reconnects_and_resnapshots(spot: Capture) -> None:
    frames, snap_at = _xmr_stream(spot)
    cut = snap_at + 40
    first_pass = sum(_is_update(t) for _, t in frames[:cut])
    total = first_pass + sum(_is_update(t) for _, t in frames)

    async def main() -> tuple[KrakenV1Exchange, list[Event], FakeExchange]:
        scripts = [WsScript(frames, wait_for=1, close_after=cut), WsScript(frames, wait_for=1)]
        async with FakeExchange(spot.routes(), scripts) as fx:
            ex = KrakenV1Exchange(
                _config(fx, ["XMR/USD"], channels=frozenset({"book"})), clock=StepClock()
            )
            got = await _run_until(ex, lambda g: ex.checksums_verified == total)
            return ex, got, fx

    ex, got, fx = asyncio.run(main())
    assert fx.ws_connects == 2
    assert [json.loads(f)["event"] for f in fx.client_frames[1]] == ["subscribe"]
    assert (ex.stats.connects, ex.stats.reconnects, ex.stats.checksum_failures) == (2, 1, 0)
    assert [e.status for e in got if isinstance(e, Connectivity)] == ["up", "down", "up", "down"]
    snaps = [i for i, e in enumerate(got) if isinstance(e, BookSnapshot)]
    down = next(i for i, e in enumerate(got) if isinstance(e, Connectivity) and e.status == "down")
    assert len(snaps) == 2 and snaps[0] < down < snaps[1]
    assert _count(got[:down], BookDelta) == first_pass


def test_http_429_on_asset_pairs_backs_off_by_retry_after(spot: Capture) -> None:
    frames, snap_at = _xmr_stream(spot)
    frames = frames[: snap_at + 1]  # stop on the snapshot with nothing left unread
    slept: list[float] = []

    async def recording_sleep(seconds: float) -> None:
        slept.append(seconds)
        await asyncio.sleep(seconds)

    async def main() -> tuple[KrakenV1Exchange, list[tuple[str, str]]]:
        async with FakeExchange(spot.routes(), [WsScript(frames, wait_for=1)]) as fx:
            fx.fail_next("/0/public/AssetPairs", HttpResponse(429, "", {"Retry-After": "0.3"}))
            limiter = RateLimiter(5, 1.0, sleep=recording_sleep)
            ex = KrakenV1Exchange(
                _config(fx, ["XMR/USD"], channels=frozenset({"book"})),
                clock=StepClock(),
                limiter=limiter,
            )
            await _run_until(ex, lambda g: _count(g, BookSnapshot) == 1)
            return ex, fx.requests

    ex, requests = asyncio.run(main())
    assert requests == [("GET", "/0/public/AssetPairs")] * 2
    assert ex.stats.rate_limited == 1
    assert ex.limiter.granted == [("asset_pairs", 3)] * 2
    assert slept and 0.2 < max(slept) <= 0.3  # the retry waited out Retry-After


def _refused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_rest_depth_polling_while_the_websocket_is_down(spot: Capture) -> None:
    _, snap_at = _xmr_stream(spot)
    snap = json.loads(_xmr_stream(spot)[0][snap_at][1])
    asks = [[r[0], r[1], int(Decimal(r[2]))] for r in snap[1]["as"][:10]]
    bids = [[r[0], r[1], int(Decimal(r[2]))] for r in snap[1]["bs"][:10]]
    depth = json.dumps({"error": [], "result": {"XXMRZUSD": {"asks": asks, "bids": bids}}})
    routes = {**spot.routes(), "/0/public/Depth?count=10&pair=XMRUSD": depth}

    async def main() -> tuple[KrakenV1Exchange, list[Event], list[tuple[str, str]]]:
        async with FakeExchange(routes, []) as fx:
            fx.fail_next(
                "/0/public/Depth",
                HttpResponse(200, '{"error":["EAPI:Rate limit exceeded"],"result":{}}'),
            )
            cfg = _config(
                fx,
                ["XMR/USD"],
                depth=10,
                ws_url=f"ws://127.0.0.1:{_refused_port()}/",
                poll_interval_s=0.05,
            )
            ex = KrakenV1Exchange(cfg, clock=StepClock(), limiter=RateLimiter(5, 50.0))
            got = await _run_until(ex, lambda g: _count(g, BookSnapshot) == 1)
            return ex, got, fx.requests

    ex, got, requests = asyncio.run(main())
    assert requests[0] == ("GET", "/0/public/AssetPairs")
    assert requests[1:] == [("GET", "/0/public/Depth?count=10&pair=XMRUSD")] * 2
    assert ex.stats.rate_limited == 1 and ex.stats.polls >= 1
    assert isinstance(got[0], Connectivity) and got[0].status == "down"
    (snapshot,) = [e for e in got if isinstance(e, BookSnapshot)]
    assert snapshot.asks == tuple((fixed(r[0], 2), fixed(r[1], 8)) for r in asks)
    assert snapshot.bids == tuple((fixed(r[0], 2), fixed(r[1], 8)) for r in bids)
    assert snapshot.ts_event == max(r[2] for r in asks + bids) * 10**9
    assert not ex.books["XMR/USD"].synced  # the WebSocket book still waits for its snapshot


def test_application_ping_v2_and_v1(spot: Capture) -> None:
    async def pings(cls: type[KrakenExchange]) -> list[dict[str, Any]]:
        async with FakeExchange(spot.routes(), [WsScript([], wait_for=1)]) as fx:
            cfg = _config(fx, ["XBT/USD"], channels=frozenset({"book"}), ping_interval_s=0.03)
            ex = cls(cfg, clock=StepClock())
            task = asyncio.ensure_future(ex.run(lambda events: asyncio.sleep(0)))
            for _ in range(400):
                if fx.client_frames and len(fx.client_frames[0]) >= 3:
                    break
                await asyncio.sleep(0.01)
            ex.stop()
            await asyncio.wait_for(task, 5)
            return [json.loads(f) for f in fx.client_frames[0]]

    v2 = asyncio.run(pings(KrakenExchange))
    assert v2[0]["method"] == "subscribe" and v2[0]["params"]["symbol"] == ["BTC/USD"]
    assert v2[0]["params"]["depth"] == 1000 and v2[0]["params"]["snapshot"] is True
    assert v2[1:3] == [{"method": "ping", "req_id": 2}, {"method": "ping", "req_id": 3}]
    v1 = asyncio.run(pings(KrakenV1Exchange))
    assert v1[0]["pair"] == ["XBT/USD"]
    assert v1[1:3] == [{"event": "ping", "reqid": 2}, {"event": "ping", "reqid": 3}]
    ex = _v1_adapter(spot)
    assert ex.on_frame('{"event":"pong","reqid":2}', 1) == []


def test_private_rest_is_signed_from_the_environment(
    spot: Capture, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = base64.b64encode(b"kraken test secret 0123456789").decode()
    seen: list[dict[str, str]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        body = request.content.decode()
        form = dict(parse_qsl(body))
        digest = hashlib.sha256((form["nonce"] + body).encode()).digest()
        mac = hmac.new(base64.b64decode(secret), request.url.path.encode() + digest, hashlib.sha512)
        seen.append(
            {
                "path": request.url.path,
                "key": request.headers["API-Key"],
                "ok": str(request.headers["API-Sign"] == base64.b64encode(mac.digest()).decode()),
                "nonce": form["nonce"],
            }
        )
        if request.url.path.endswith("/Balance"):
            return httpx.Response(200, json={"error": ["EAPI:Invalid key"]})
        return httpx.Response(
            200, json={"error": [], "result": {"token": "tok123", "expires": 900}}
        )

    async def main() -> tuple[str, KrakenV1Exchange]:
        client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
        cfg = FeedConfig(symbols=["XBT/USD"], rest_url="https://api.kraken.test")
        ex = KrakenV1Exchange(cfg, clock=StepClock(), http=client)
        with pytest.raises(AuthError):  # no credentials yet
            await ex.private_request("Balance")
        monkeypatch.setenv("KRAKEN_API_KEY", "key-abc")
        monkeypatch.setenv("KRAKEN_API_SECRET", secret)
        token = await ex.websocket_token()
        with pytest.raises(AuthError):
            await ex.private_request("Balance")
        await client.aclose()
        return token, ex

    token, _ = asyncio.run(main())
    assert token == "tok123"
    assert [s["path"] for s in seen] == ["/0/private/GetWebSocketsToken", "/0/private/Balance"]
    assert all(s["ok"] == "True" and s["key"] == "key-abc" for s in seen)
    assert int(seen[0]["nonce"]) < int(seen[1]["nonce"])  # strictly increasing


def test_kraken_api_errors_map_onto_the_taxonomy(spot: Capture) -> None:
    ex = _v1_adapter(spot)
    with pytest.raises(RateLimited):
        ex._result(b'{"error":["EAPI:Rate limit exceeded"]}', "x")
    assert ex.stats.rate_limited == 1 and ex.limiter.blocked_for > 0
    with pytest.raises(AuthError):
        ex._result(b'{"error":["EAPI:Invalid nonce"]}', "x")
    with pytest.raises(BadResponse):
        ex._result(b'{"error":["EGeneral:Invalid arguments"]}', "x")
    with pytest.raises(BadResponse):
        ex._result(b"<html>", "x")


# ---------------------------------------------------------------------------------------
# Kraken Futures
# ---------------------------------------------------------------------------------------


def _futures_adapter(futures: Capture, symbols: list[str] = PERPS) -> KrakenFuturesExchange:
    ex = KrakenFuturesExchange(FeedConfig(symbols=symbols), clock=StepClock())
    ex.use_instruments(futures.http[0][2])
    return ex


def _product(text: str) -> str:
    return str(json.loads(text).get("product_id", ""))


def test_futures_instruments_are_perpetuals_with_the_tick_precision(futures: Capture) -> None:
    ex = _futures_adapter(futures, ["pi_xbtusd", "ETH-USD-PERP", "PI_XRPUSD"])
    insts = {i.wire_symbol: i for i in ex.instruments.values()}
    xbt = insts["PI_XBTUSD"]
    assert (xbt.key, xbt.kind, xbt.price_decimals, xbt.tick_size) == (
        "KRAKENF:BTC-USD-PERP",
        "perp",
        1,
        5,
    )
    assert (insts["PI_ETHUSD"].price_decimals, insts["PI_ETHUSD"].tick_size) == (2, 5)
    assert insts["PI_XRPUSD"].price_decimals == 4 and xbt.funding_interval_s == 3600
    with pytest.raises(InstrumentError):  # dated futures are not instruments here
        _futures_adapter(futures, ["FI_XBTUSD_210924"])


def test_futures_recorded_book_seq_trades_and_ticker_top_of_book(futures: Capture) -> None:
    ex = _futures_adapter(futures)
    events: list[Event] = []
    checked = 0
    for n, (_, text) in enumerate(futures.frames()):
        msg = json.loads(text)
        product = msg.get("product_id", "")
        if msg.get("feed") == "ticker_lite" and product in ex.books:
            # an independent top-of-book stream: the book must agree with it
            book = ex.books[product]
            pd = book.inst.price_decimals
            assert book.local.book.best_bid() is not None
            assert book.local.book.best_bid()[0] == fixed(str(msg["bid"]), pd)  # type: ignore[index]
            assert book.local.book.best_ask()[0] == fixed(str(msg["ask"]), pd)  # type: ignore[index]
            checked += 1
            continue
        if product and product not in ex.books:
            continue  # the dated futures of the recording
        events.extend(ex.on_frame(text, n))
    deltas = [e for e in events if isinstance(e, BookDelta)]
    expected = [
        json.loads(t)
        for _, t in futures.frames()
        if '"feed":"book","product_id"' in t and _product(t) in PERPS
    ]
    assert _count(events, BookSnapshot) == 3 and len(deltas) == len(expected) == 4574
    assert [d.seq for d in deltas] == [m["seq"] for m in expected]
    assert checked == 41
    trades = [e for e in events if isinstance(e, Trade)]
    recorded = [
        m
        for m in (json.loads(t) for _, t in futures.frames())
        if m.get("feed") == "trade" and m.get("product_id") in PERPS  # not trade_snapshot
    ]
    assert [(t.seq, t.trade_id, t.side, t.size) for t in trades] == [
        (m["seq"], m["uid"], m["side"], int(m["qty"])) for m in recorded
    ]
    first = trades[0]
    assert (first.symbol, first.side, first.price, first.size) == (
        "LTC-USD-PERP",
        "buy",
        11944,
        320,
    )
    assert first.ts_event == 1_626_994_929_946_000_000 and first.seq == 5956


def test_futures_seq_gap_resubscribes_and_recovers(futures: Capture) -> None:
    product = "PI_LTCUSD"
    frames = [
        (ts, t)
        for ts, t in futures.frames()
        if _product(t) == product and '"feed":"book' in t and '"event"' not in t
    ]
    snap = json.loads(frames[0][1])
    deltas = [json.loads(t) for _, t in frames[1:]]
    book = {"bids": {}, "asks": {}}  # price text -> qty, an independent replay
    for side in ("bids", "asks"):
        for r in snap[side]:
            book[side][r["price"]] = r["qty"]

    def apply(m: dict[str, Any]) -> None:
        side = book["bids" if m["side"] == "buy" else "asks"]
        if m["qty"] == 0:
            side.pop(m["price"], None)
        else:
            side[m["price"]] = m["qty"]

    gap_at = 20
    script = [(0.0, json.dumps(snap))]
    for m in deltas[:gap_at]:
        apply(m)
        script.append((0.0, json.dumps(m)))
    apply(deltas[gap_at])  # lost on the way: the next seq jumps
    for m in deltas[gap_at + 1 : gap_at + 3]:
        apply(m)
        script.append((0.0, json.dumps(m)))
    fresh = {
        "feed": "book_snapshot",
        "product_id": product,
        "timestamp": deltas[gap_at + 2]["timestamp"],
        "seq": deltas[gap_at + 2]["seq"],
        "tickSize": None,
        "bids": [{"price": p, "qty": q} for p, q in sorted(book["bids"].items(), reverse=True)],
        "asks": [{"price": p, "qty": q} for p, q in sorted(book["asks"].items())],
    }
    script.append((0.0, json.dumps(fresh)))
    for m in deltas[gap_at + 3 :]:
        apply(m)
        script.append((0.0, json.dumps(m)))
    last_seq = deltas[-1]["seq"]

    async def main() -> tuple[KrakenFuturesExchange, list[Event], list[list[str]]]:
        async with FakeExchange(futures.routes(), [WsScript(script, wait_for=1)]) as fx:
            cfg = _config(fx, [product], channels=frozenset({"book"}))
            ex = KrakenFuturesExchange(cfg, clock=StepClock())
            got = await _run_until(
                ex, lambda g: any(isinstance(e, BookDelta) and e.seq == last_seq for e in g)
            )
            return ex, got, fx.client_frames

    ex, got, sent = asyncio.run(main())
    assert [json.loads(f) for f in sent[0]] == [
        {"event": e, "feed": "book", "product_ids": [product]}
        for e in ("subscribe", "unsubscribe", "subscribe")
    ]
    assert (ex.stats.gaps, ex.stats.resyncs) == (1, 1)
    kinds = [e.status if isinstance(e, Connectivity) else type(e).__name__ for e in got]
    assert kinds == [
        "up",
        "BookSnapshot",
        *["BookDelta"] * gap_at,
        "resync",
        "BookSnapshot",
        *["BookDelta"] * (len(deltas) - gap_at - 3),
        "down",  # stopped
    ]
    inst = ex.instruments[product]
    pd = inst.price_decimals
    l2 = ex.books[product].local.book
    assert l2.canonical() == (
        [(fixed(str(p), pd), int(q)) for p, q in sorted(book["bids"].items(), reverse=True)],
        [(fixed(str(p), pd), int(q)) for p, q in sorted(book["asks"].items())],
    )


def test_futures_ticker_gives_funding_and_mark_price(futures: Capture) -> None:
    _need(DOCS)
    ex = _futures_adapter(futures, ["PI_XBTUSD"])
    frame = (DOCS / "nautilus_ws_futures_ticker.json").read_text()
    funding, mark = ex.on_frame(frame, 5)
    # relative_funding_rate -1.380384722222e-6 in RATE units (1e-10), half-even
    assert funding == FundingRate(
        1676393235406000000, 5, "KRAKENF", "BTC-USD-PERP", 0, -13804, 1676394000000000000
    )
    # markPrice 21979.68641534714, index 21984.54 at the 0.1 precision of PI_XBTUSD
    assert mark == MarkPrice(1676393235406000000, 5, "KRAKENF", "BTC-USD-PERP", 0, 219797, 219845)
    for bad in ("]", "[1]", '{"feed":"ticker","product_id":"PI_XBTUSD"}', '{"a":1}'):
        with pytest.raises(MalformedMessage):
            ex.on_frame(bad, 1)


def test_futures_invalid_update_resyncs(futures: Capture) -> None:
    ex = _futures_adapter(futures, ["PI_LTCUSD"])
    snap = next(t for _, t in futures.frames() if '"book_snapshot"' in t and "PI_LTCUSD" in t)
    ex.on_frame(snap, 1)
    m = json.loads(snap)
    best_ask = m["asks"][0]["price"]
    cross = {
        "feed": "book",
        "product_id": "PI_LTCUSD",
        "side": "buy",
        "seq": m["seq"] + 1,
        "price": best_ask,
        "qty": 5.0,
        "timestamp": m["timestamp"],
    }
    with pytest.raises(BookInvalid):
        ex.on_frame(json.dumps(cross), 2)
    assert not ex.books["PI_LTCUSD"].synced
    assert ex.on_frame(json.dumps({**cross, "seq": m["seq"] + 2}), 3) == []  # unsynced
    (again,) = ex.on_frame(snap, 4)
    assert isinstance(again, BookSnapshot) and ex.books["PI_LTCUSD"].synced
    with pytest.raises(SequenceGap):
        ex.on_frame(json.dumps({**cross, "seq": m["seq"] + 2, "price": 1.0}), 5)
    assert not ex.books["PI_LTCUSD"].synced
