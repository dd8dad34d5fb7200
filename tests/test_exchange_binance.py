"""Binance adapters (adapters/exchanges/binance.py) against real recorded data.

Data (shared/data/MANIFEST.md): the four cryptofeed captures (spot, Binance.US, USD-M,
COIN-M; 2021) and the hftbacktest BTCUSDT recordings (spot and USD-M, 2024). The exact
counts below were computed from the files with an independent script (plain ``json``,
``Decimal`` dict books, the sync rules of EXCHANGES.md) and agree with the adapter.

Two ways in: frame by frame in recorded order (``on_frame`` / ``apply_snapshot``, exact
counts incl. the bookTicker cross-check), and through the real run loop against the
local fake exchange (WebSocket + REST on 127.0.0.1), with gaps, disconnects, malformed
frames, 429s, serverShutdown and pings.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import hmac
import itertools
import json
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest

from adapters.exchanges.base import (
    AuthError,
    BookInvalid,
    ChecksumMismatch,
    Diff,
    FeedConfig,
    MalformedMessage,
    RateLimiter,
)
from adapters.exchanges.binance import (
    BinanceBase,
    BinanceCoinm,
    BinanceSpot,
    BinanceUS,
    BinanceUsdm,
    FuturesRule,
    SpotRule,
    encode_query,
    fixed,
    sign,
)
from adapters.exchanges.fake import Capture, FakeExchange, HttpResponse, WsScript, load_capture
from kernel.events import (
    BookDelta,
    BookSnapshot,
    Connectivity,
    Event,
    FundingRate,
    MarkPrice,
    Trade,
)
from kernel.fixedpoint import parse_fixed

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
BINANCE_DIR = SHARED / "exchanges" / "binance"
HFT_DIR = SHARED / "market" / "binance_hftbacktest"


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"recorded data not present: {path} (see shared/data/MANIFEST.md)")
    return path


class StepClock:
    """Deterministic clock: every read advances by ``step`` ns."""

    def __init__(self, start: int = 1_700_000_000_000_000_000, step: int = 1_000) -> None:
        self.start = start
        self.t = start
        self.step = step

    def now_ns(self) -> int:
        self.t += self.step
        return self.t


# ---------------------------------------------------------------------------------------
# Capture helpers
# ---------------------------------------------------------------------------------------

CAPTURES: dict[str, tuple[type[BinanceBase], str]] = {
    # name -> (adapter, suffix of the subscribed symbols: COIN-M dated contracts are
    # refused because kernel instruments are spot or perp only)
    "BINANCE": (BinanceSpot, ""),
    "BINANCE_US": (BinanceUS, ""),
    "BINANCE_FUTURES": (BinanceUsdm, ""),
    "BINANCE_DELIVERY": (BinanceCoinm, "_PERP"),
}

# per capture: BookDelta events per wire symbol, trades per symbol, bookTicker checks
EXPECTED: dict[str, tuple[dict[str, int], dict[str, int], int]] = {
    "BINANCE": (
        {"NKNUSDT": 149, "BLZETH": 9, "LRCBTC": 13, "RUNEEUR": 1},
        {"NKNUSDT": 1, "LRCBTC": 1},
        26,
    ),
    "BINANCE_US": (
        {"COMPUSDT": 106, "OMGBUSD": 158, "CRVUSDT": 28, "ZRXUSDT": 40},
        {"OMGBUSD": 11},
        57,
    ),
    "BINANCE_FUTURES": (
        {"SUSHIUSDT": 252, "AKROUSDT": 188, "KEEPUSDT": 132, "CTKUSDT": 180},
        {"SUSHIUSDT": 40, "AKROUSDT": 8, "KEEPUSDT": 5, "CTKUSDT": 38},
        50,
    ),
    "BINANCE_DELIVERY": (
        {
            "BCHUSD_PERP": 208,
            "LINKUSD_PERP": 228,
            "ETCUSD_PERP": 215,
            "XRPUSD_PERP": 176,
            "TRXUSD_PERP": 139,
            "EOSUSD_PERP": 180,
        },
        {
            "BCHUSD_PERP": 2,
            "ETCUSD_PERP": 14,
            "XRPUSD_PERP": 15,
            "EOSUSD_PERP": 3,
            "LINKUSD_PERP": 5,
        },
        162,
    ),
}

_captures: dict[str, Capture] = {}


def capture(name: str) -> Capture:
    if name not in _captures:
        _captures[name] = load_capture(_need(BINANCE_DIR / f"cryptofeed_{name}.jsonl.gz"))
    return _captures[name]


def snapshots(cap: Capture) -> list[tuple[float, str, str]]:
    """(ts, wire symbol, body) of every recorded REST depth snapshot."""
    out = []
    for ts, url, body in cap.http:
        parts = urlsplit(url)
        if parts.path.endswith("/depth"):
            out.append((ts, dict(parse_qsl(parts.query))["symbol"], body))
    return out


def exchange_info(cap: Capture) -> str:
    return next(body for _, url, body in cap.http if url.endswith("/exchangeInfo"))


def frame_symbol(text: str) -> str:
    return str(json.loads(text).get("data", {}).get("s", ""))


def subscribed(name: str) -> list[str]:
    suffix = CAPTURES[name][1]
    return [s for _, s, _ in snapshots(capture(name)) if s.endswith(suffix)]


def make(
    name: str,
    channels: frozenset[str] = frozenset({"book", "trades", "bbo"}),
    full_precision: bool = False,
) -> BinanceBase:
    # the captures were recorded on one connection per venue (USD-M before its stream
    # routes were split in 2026): legacy_url keeps all channels on one adapter
    extra = {"legacy_url": True, "full_precision": full_precision}
    config = FeedConfig(symbols=subscribed(name), channels=channels, extra=extra)
    return CAPTURES[name][0](config, clock=StepClock())


def replay_recorded(name: str, full_precision: bool = False) -> tuple[BinanceBase, list[Event]]:
    """The capture frame by frame in recorded order (snapshots where they were taken)."""
    cap = capture(name)
    adapter = make(name, full_precision=full_precision)
    adapter.set_instruments(adapter.select(adapter.parse_exchange_info(exchange_info(cap))))
    wanted = set(adapter.instruments)
    items: list[tuple[float, int, str, str]] = [
        (ts, 0, sym, body) for ts, sym, body in snapshots(cap) if sym in wanted
    ]
    items += [(ts, 1, "", text) for ts, text in cap.frames() if frame_symbol(text) in wanted]
    items.sort(key=lambda x: (x[0], x[1]))
    events: list[Event] = []
    for ts, kind, sym, body in items:
        ts_ns = int(ts * 1e9)
        if kind == 0:
            events += adapter.apply_snapshot(sym, body, ts_ns)
        else:
            events += adapter.on_frame(body, ts_ns)
    return adapter, events


def book_state(adapter: BinanceBase) -> dict[str, Any]:
    return {w: b.local.book.canonical() for w, b in adapter.books.items()}


# ---------------------------------------------------------------------------------------
# Pure pieces: signing, URLs, instruments, rules
# ---------------------------------------------------------------------------------------


def test_hmac_signature_matches_the_documented_vector() -> None:
    # Binance spot REST docs, "SIGNED Endpoint Examples for POST /api/v3/order - HMAC Keys"
    # (https://developers.binance.com/docs/binance-spot-api-docs/rest-api/endpoint-security-type)
    secret = "NhqPtmdSJYdKjVHjA7PZj4Mge3R5YNiP1e3UZjInClVN65XAbvqqM6A7H5fATj0j"
    params = [
        ("symbol", "LTCBTC"),
        ("side", "BUY"),
        ("type", "LIMIT"),
        ("timeInForce", "GTC"),
        ("quantity", 1),
        ("price", "0.1"),
        ("recvWindow", 5000),
        ("timestamp", 1499827319559),
    ]
    query = encode_query(params)
    assert query == (
        "symbol=LTCBTC&side=BUY&type=LIMIT&timeInForce=GTC&quantity=1&price=0.1"
        "&recvWindow=5000&timestamp=1499827319559"
    )
    assert sign(query, secret) == "c8db56825ae71d6d79447849e617115f4a920fa2acdcab2b053c4b2838bd6b71"


def test_signed_request_reaches_the_venue_with_key_timestamp_and_signature() -> None:
    env = {"BINANCE_API_KEY": "k3y", "BINANCE_API_SECRET": "s3cret"}
    clock = StepClock(start=1_499_827_319_559_000_000, step=0)

    async def main() -> list[tuple[str, str]]:
        async with FakeExchange({"/api/v3/account": '{"balances": []}'}) as fx:
            adapter = BinanceSpot(
                FeedConfig(symbols=["BTCUSDT"], rest_url=fx.rest_url), clock=clock
            )
            body = await adapter.signed_request(
                "GET", "/api/v3/account", [("omitZeroBalances", "true")], env=env
            )
            assert body == b'{"balances": []}'
            with pytest.raises(AuthError, match="BINANCE_API_KEY"):
                await adapter.signed_request("GET", "/api/v3/account", env={})
            await adapter._http.aclose()
            return fx.requests

    requests = asyncio.run(main())
    assert len(requests) == 1
    sent = dict(parse_qsl(requests[0][1].split("?", 1)[1]))
    unsigned = "omitZeroBalances=true&recvWindow=5000&timestamp=1499827319559"
    assert sent["timestamp"] == "1499827319559" and sent["recvWindow"] == "5000"
    assert sent["signature"] == hmac.new(b"s3cret", unsigned.encode(), hashlib.sha256).hexdigest()


def test_stream_urls_hosts_and_channels() -> None:
    async def url(adapter: BinanceBase) -> str:
        return await adapter.ws_endpoint()

    spot = BinanceSpot(FeedConfig(symbols=["BTCUSDT"]))
    table = {
        "BTCUSDT": _toy_instrument(spot, "BTCUSDT", "BTC", "USDT"),
        "ETHBTC": _toy_instrument(spot, "ETHBTC", "ETH", "BTC"),
    }
    spot.set_instruments(table.values())
    assert asyncio.run(url(spot)) == (
        "wss://stream.binance.com:9443/stream?streams=btcusdt@depth@100ms/btcusdt@aggTrade"
        "/ethbtc@depth@100ms/ethbtc@aggTrade"
    )
    assert spot.rest_url == "https://api.binance.com"
    us = BinanceUS(
        FeedConfig(
            symbols=["BTCUSDT"],
            channels=frozenset({"trades", "bbo"}),
            extra={"trade_stream": "trade"},
        )
    )
    us.set_instruments([table["BTCUSDT"]])
    assert asyncio.run(url(us)) == (
        "wss://stream.binance.us:9443/stream?streams=btcusdt@trade/btcusdt@bookTicker"
    )
    assert us.rest_url == "https://api.binance.us" and us.exchange == "BINANCEUS"
    # USD-M: depth/bookTicker on the /public route, aggTrade/markPrice on /market (one
    # connection cannot carry both since 2026-04-23): one adapter per route
    um_config = FeedConfig(symbols=["BTCUSDT"], extra={"depth_interval": "0ms"})
    with pytest.raises(ValueError, match="split by route"):
        BinanceUsdm(um_config)
    public, market = BinanceUsdm.split(um_config)
    for adapter in (public, market):
        adapter.set_instruments([table["BTCUSDT"]])
    assert asyncio.run(url(public)) == (
        "wss://fstream.binance.com/public/stream?streams=btcusdt@depth@0ms"
    )
    assert asyncio.run(url(market)) == (
        "wss://fstream.binance.com/market/stream?streams=btcusdt@aggTrade/btcusdt@markPrice@1s"
    )
    assert public.rest_url == "https://fapi.binance.com" and public.depth_path == "/fapi/v1/depth"
    (legacy,) = BinanceUsdm.split(
        replace(um_config, extra={"legacy_url": True, "depth_interval": "0ms"})
    )
    legacy.set_instruments([table["BTCUSDT"]])
    assert asyncio.run(url(legacy)) == (
        "wss://fstream.binance.com/stream?streams=btcusdt@depth@0ms/btcusdt@aggTrade"
        "/btcusdt@markPrice@1s"
    )
    (cm,) = BinanceCoinm.split(FeedConfig(symbols=["BTCUSD_PERP"]))  # COIN-M: not routed
    cm.set_instruments([table["BTCUSDT"]])
    assert asyncio.run(url(cm)) == (
        "wss://dstream.binance.com/stream?streams=btcusdt@depth@100ms/btcusdt@aggTrade"
        "/btcusdt@markPrice@1s"
    )
    micro = BinanceSpot(
        FeedConfig(
            symbols=["BTCUSDT"], channels=frozenset({"trades"}), extra={"time_unit": "microsecond"}
        )
    )
    micro.set_instruments([table["BTCUSDT"]])
    assert asyncio.run(url(micro)).endswith("/stream?streams=btcusdt@aggTrade&timeUnit=MICROSECOND")
    # microsecond timestamps become ns without losing digits
    frame = {"stream": "btcusdt@aggTrade", "data": {"e": "aggTrade", "E": 1, "s": "BTCUSDT", "a": 7,
             "p": "1.00", "q": "2", "T": 1723161255342123, "m": False}}  # fmt: skip
    (trade,) = micro.on_frame(json.dumps(frame), 5)
    assert isinstance(trade, Trade) and trade.ts_event == 1_723_161_255_342_123_000


def _toy_instrument(adapter: BinanceBase, wire: str, base: str, quote: str) -> Any:
    info = {"symbols": [{"symbol": wire, "baseAsset": base, "quoteAsset": quote,
             "quoteAssetPrecision": 8, "baseAssetPrecision": 8,
             "filters": [{"filterType": "PRICE_FILTER", "tickSize": "0.01000000"},
                         {"filterType": "LOT_SIZE", "stepSize": "0.00001000"}]}]}  # fmt: skip
    return adapter.parse_exchange_info(json.dumps(info))[wire]


def test_instruments_from_exchange_info_filters_not_string_splitting() -> None:
    spot = make("BINANCE")
    table = spot.parse_exchange_info(exchange_info(capture("BINANCE")))
    assert len(table) == 1695
    nkn = table["NKNUSDT"]
    assert (nkn.exchange, nkn.symbol, nkn.kind, nkn.base, nkn.quote) == (
        "BINANCE", "NKN-USDT", "spot", "NKN", "USDT"
    )  # fmt: skip
    # decimals of the tick (0.0001) and step (1); minNotional 10 (MONEY units)
    assert (nkn.price_decimals, nkn.size_decimals, nkn.tick_size, nkn.lot_size) == (4, 0, 1, 1)
    assert nkn.min_notional == 10 * 10**8
    # full_precision: the assets' 8 decimals; tick and step in those units
    full = make("BINANCE", full_precision=True).parse_exchange_info(
        exchange_info(capture("BINANCE"))
    )
    nkn8 = full["NKNUSDT"]
    assert (nkn8.price_decimals, nkn8.size_decimals, nkn8.tick_size, nkn8.lot_size) == (
        8, 8, 10_000, 100_000_000
    )  # fmt: skip
    # the venue's own asset names, not a split of the symbol
    assert (table["BLZETH"].base, table["BLZETH"].quote) == ("BLZ", "ETH")
    assert [i.symbol for i in spot.select(table)] == ["NKN-USDT", "BLZ-ETH", "LRC-BTC", "RUNE-EUR"]
    spot.config.symbols = ["nkn-usdt", "LRCBTC"]  # normalised or wire, any case
    assert [i.wire_symbol for i in spot.select(table)] == ["NKNUSDT", "LRCBTC"]
    spot.config.symbols = ["NOPE-USDT"]
    with pytest.raises(ValueError, match="no instrument 'NOPE-USDT'"):
        spot.select(table)
    # the recorded exchangeInfo.rateLimits (1200/min) caps the REST budget
    assert spot.limiter.bucket.refill_per_s == pytest.approx(1200 / 60)

    um = make("BINANCE_FUTURES")
    ftable = um.parse_exchange_info(exchange_info(capture("BINANCE_FUTURES")))
    ctk = ftable["CTKUSDT"]
    assert (ctk.symbol, ctk.kind, ctk.venue, ctk.feed) == (
        "CTK-USDT-PERP", "perp", "binance-futures", "binance-futures"
    )  # fmt: skip
    assert (ctk.price_decimals, ctk.size_decimals, ctk.tick_size, ctk.lot_size) == (3, 0, 1, 1)
    # pricePrecision 5 with a tick of 0.001: books hold 0.50579 (a level off today's tick)
    fctk = make("BINANCE_FUTURES", full_precision=True).parse_exchange_info(
        exchange_info(capture("BINANCE_FUTURES"))
    )["CTKUSDT"]
    assert (fctk.price_decimals, fctk.size_decimals, fctk.tick_size, fctk.lot_size) == (
        5,
        0,
        100,
        1,
    )
    assert um.limiter.bucket.refill_per_s == pytest.approx(2400 / 60)

    cm = make("BINANCE_DELIVERY")
    ctable = cm.parse_exchange_info(exchange_info(capture("BINANCE_DELIVERY")))
    btc = ctable["BTCUSD_PERP"]
    assert (btc.symbol, btc.venue, btc.price_decimals, btc.tick_size) == (
        "BTC-USD-PERP", "binance-delivery", 1, 1
    )  # fmt: skip
    assert "BTCUSD_211231" not in ctable  # dated: not a kernel instrument kind
    cm.config.symbols = ["BTCUSD_211231"]
    with pytest.raises(ValueError, match="dated futures are not supported"):
        cm.select(ctable)


def test_known_instrument_keeps_fees_and_precision_when_it_fits() -> None:
    from kernel.instruments import Instrument

    known = Instrument(
        exchange="BINANCE", symbol="SUSHI-USDT-PERP", kind="perp", base="SUSHI", quote="USDT",
        price_decimals=6, size_decimals=2, maker_fee_ppm=200, taker_fee_ppm=500,
    )  # fmt: skip
    um = BinanceUsdm(
        FeedConfig(symbols=["SUSHIUSDT"], channels=frozenset({"book"})), known_instruments=[known]
    )
    inst = um.parse_exchange_info(exchange_info(capture("BINANCE_FUTURES")))["SUSHIUSDT"]
    assert (inst.price_decimals, inst.size_decimals) == (6, 2)
    assert (inst.tick_size, inst.lot_size) == (1_000, 100)  # 0.001 and 1 at 6 / 2 decimals
    assert (inst.maker_fee_ppm, inst.taker_fee_ppm) == (200, 500)


@pytest.mark.parametrize(
    "text",
    ["61837.63000000", "0.1", "0", "7", "100.", "1.2.3", "1e-5", "-1.5", "+2.5", "1_0.5",
     "0.123456789", "0.1234567890", " 1.5", ".5", "abc", "1.x", ""],
)  # fmt: skip
@pytest.mark.parametrize("decimals", [0, 2, 8])
def test_fast_decimal_parser_agrees_with_parse_fixed(text: str, decimals: int) -> None:
    def outcome(fn: Callable[[str, int], int]) -> int | str:
        try:
            return fn(text, decimals)
        except ValueError as exc:
            return type(exc).__name__

    assert outcome(fixed) == outcome(parse_fixed)


def _d(first: int, last: int, prev: int = -1) -> Diff:
    return Diff(first, last, prev, (), (), 0, 0)


def test_sync_rules_spot_and_futures() -> None:
    spot, fut = SpotRule(), FuturesRule()
    # spot: u <= id is stale; the first kept has U <= id + 1 <= u; then U == prev.u + 1
    assert spot.stale(100, _d(95, 100)) and not spot.stale(100, _d(95, 101))
    assert spot.bridges(100, _d(95, 101)) and spot.bridges(100, _d(101, 101))
    assert not spot.bridges(100, _d(102, 105))
    assert spot.follows(_d(95, 101), _d(102, 103)) and not spot.follows(_d(95, 101), _d(103, 103))
    # futures: only u < id is stale (u == id is applied); U <= id <= u; pu == prev.u
    assert fut.stale(100, _d(90, 99)) and not fut.stale(100, _d(90, 100))
    assert fut.bridges(100, _d(90, 100)) and not fut.bridges(100, _d(101, 120))
    assert fut.follows(_d(90, 100), _d(150, 160, 100))
    assert not fut.follows(_d(90, 100), _d(101, 102, 99))


def test_coin_m_dated_contracts_follow_the_futures_rule() -> None:
    # the dated contracts of the COIN-M capture are not subscribable (no kernel kind),
    # but their diffs obey the same rule: every buffered diff bridges, 0 gaps
    cap = capture("BINANCE_DELIVERY")
    ids = {s: json.loads(b)["lastUpdateId"] for _, s, b in snapshots(cap) if "_PERP" not in s}
    diffs: dict[str, list[Diff]] = {s: [] for s in ids}
    for _, text in cap.frames():
        d = json.loads(text)["data"]
        if d.get("e") == "depthUpdate" and d["s"] in ids:
            diffs[d["s"]].append(_d(d["U"], d["u"], d["pu"]))
    rule = FuturesRule()
    applied = {}
    for sym, sid in ids.items():
        kept = [d for d in diffs[sym] if not rule.stale(sid, d)]
        assert rule.bridges(sid, kept[0])
        assert all(rule.follows(a, b) for a, b in itertools.pairwise(kept))
        applied[sym] = len(kept)
    assert applied == {"BCHUSD_210924": 101, "ETHUSD_210924": 228, "BTCUSD_211231": 191,
                       "LINKUSD_211231": 122}  # fmt: skip


# ---------------------------------------------------------------------------------------
# Frame parsing
# ---------------------------------------------------------------------------------------


def _perp(adapter: BinanceBase, wire: str = "BTCUSDT", tick: str = "0.10", pp: int = 2) -> Any:
    info = {"symbols": [{"symbol": wire, "baseAsset": "BTC", "quoteAsset": "USDT",
             "contractType": "PERPETUAL", "pricePrecision": pp, "quantityPrecision": 3,
             "filters": [{"filterType": "PRICE_FILTER", "tickSize": tick},
                         {"filterType": "LOT_SIZE", "stepSize": "0.001"}]}]}  # fmt: skip
    table = adapter.parse_exchange_info(json.dumps(info))
    adapter.set_instruments(table.values())
    return table[wire]


def test_mark_price_and_funding_with_next_funding_time_from_the_frame() -> None:
    um = BinanceUsdm(FeedConfig(symbols=["BTCUSDT"], channels=frozenset({"funding"})))
    _perp(um, tick="0.01")
    doc = json.loads(
        _need(BINANCE_DIR / "docs_examples" / "nautilus_futures_mark_price_stream.json").read_text()
    )
    mark, funding = um.on_frame(json.dumps({"stream": "btcusdt@markPrice@1s", "data": doc}), 42)
    assert mark == MarkPrice(1_562_305_380_000_000_000, 42, "BINANCE", "BTC-USDT-PERP", 0,
                             1_179_415, 1_178_463)  # fmt: skip  # index 11784.62659091 -> .63
    assert funding == FundingRate(1_562_305_380_000_000_000, 42, "BINANCE", "BTC-USDT-PERP", 0,
                                  3_816_700, 1_562_306_400_000_000_000)  # fmt: skip
    # a 4-hourly symbol: the next funding time is whatever T says, nothing assumed
    four_h = dict(doc, r="-0.00012500", T=doc["E"] + 4 * 3600 * 1000 - 380_000)
    _, f4 = um.on_frame(json.dumps({"stream": "btcusdt@markPrice", "data": four_h}), 43)
    assert isinstance(f4, FundingRate)
    assert (f4.rate, f4.next_funding_ts) == (-1_250_000, (doc["E"] + 14_020_000) * 1_000_000)
    # delivery contracts send an empty funding rate: mark price only
    dated = dict(doc, r="", T=0)
    assert [type(e) for e in um.on_frame(json.dumps({"stream": "x", "data": dated}), 44)] == [
        MarkPrice
    ]


def test_trades_aggressor_side_ids_and_exchange_time() -> None:
    spot = BinanceSpot(FeedConfig(symbols=["BTCUSDT"]))
    spot.set_instruments([_toy_instrument(spot, "BTCUSDT", "BTC", "USDT")])
    agg = {"e": "aggTrade", "E": 1723161255343, "s": "BTCUSDT", "a": 5933014,
           "p": "61837.63000000", "q": "0.02000000", "f": 100, "l": 105, "T": 1723161255342,
           "m": True, "M": True}  # fmt: skip
    (t,) = spot.on_frame(json.dumps({"stream": "btcusdt@aggTrade", "data": agg}), 7)
    # m = true: the buyer was the maker, so the aggressor sold
    assert t == Trade(1_723_161_255_342_000_000, 7, "BINANCE", "BTC-USDT", 5933014, "5933014",
                      6_183_763, 2_000, "sell")  # fmt: skip
    raw = dict(agg, e="trade", t=3735683260, m=False)  # a raw /ws/ frame: no envelope
    del raw["a"]
    (t2,) = spot.on_frame(json.dumps(raw), 8)
    assert (t2.trade_id, t2.side) == ("3735683260", "buy")  # type: ignore[attr-defined]


def test_malformed_and_control_frames() -> None:
    spot = BinanceSpot(FeedConfig(symbols=["BTCUSDT"]))
    spot.set_instruments([_toy_instrument(spot, "BTCUSDT", "BTC", "USDT")])
    for bad in (
        "{not json",
        '{"stream": "btcusdt@aggTrade", "data": {"e": "aggTrade", "s": "BTCUSDT", "a": 1, '
        '"p": "1.2.3", "q": "1", "T": 1}}',
        '{"stream": "btcusdt@depth", "data": {"e": "depthUpdate", "s": "BTCUSDT", "U": 1, '
        '"u": 2, "b": [["1.00", "x"]], "a": []}}',
        '{"stream": "ethusdt@aggTrade", "data": {"e": "aggTrade", "s": "ETHUSDT", "a": 1, '
        '"p": "1", "q": "1", "T": 1}}',
        '{"stream": "btcusdt@depth"}',
    ):
        with pytest.raises(MalformedMessage):
            spot.on_frame(bad, 1)
    assert spot.on_frame('{"result": null, "id": 1}', 1) == []
    assert spot.on_frame('{"code": 2, "msg": "Invalid request"}', 1) == []
    kline = {"stream": "btcusdt@kline_1m", "data": {"e": "kline", "E": 1, "s": "BTCUSDT", "k": {}}}
    assert spot.on_frame(json.dumps(kline), 1) == []
    # serverShutdown in each plausible wrapping is recognised
    for text in (
        '{"e": "serverShutdown", "E": 1770123456789}',
        '{"event": {"e": "serverShutdown", "E": 1770123456789}}',
        '{"stream": "!serverShutdown", "data": {"e": "serverShutdown", "E": 1770123456789}}',
    ):
        assert spot.on_frame(text, 1) == []
    assert spot.server_shutdowns == 3


def test_book_ticker_disagreeing_with_the_book_is_a_checksum_mismatch() -> None:
    spot = BinanceSpot(FeedConfig(symbols=["BTCUSDT"], channels=frozenset({"book", "bbo"})))
    spot.set_instruments([_toy_instrument(spot, "BTCUSDT", "BTC", "USDT")])
    spot.apply_snapshot(
        "BTCUSDT", '{"lastUpdateId": 10, "bids": [["100.00", "1.5"]], "asks": [["100.02", "2"]]}', 1
    )
    ticker = {"u": 10, "s": "BTCUSDT", "b": "100.00", "B": "1.5", "a": "100.02", "A": "2.0"}
    spot.on_frame(json.dumps({"stream": "btcusdt@bookTicker", "data": ticker}), 2)
    assert spot.bbo_checks == 1
    diff = {"e": "depthUpdate", "E": 5, "s": "BTCUSDT", "U": 11, "u": 12,
            "b": [["100.01", "0.5"]], "a": []}  # fmt: skip
    spot.on_frame(json.dumps({"stream": "btcusdt@bookTicker", "data": dict(ticker, u=12)}), 3)
    with pytest.raises(ChecksumMismatch, match="bookTicker u=12"):
        spot.on_frame(json.dumps({"stream": "btcusdt@depth@100ms", "data": diff}), 4)
    assert not spot.books["BTCUSDT"].synced  # reset: the resync starts from a snapshot
    # a snapshot disagreeing with a ticker already queued at its id is refused as a whole
    spot.on_frame(json.dumps({"stream": "btcusdt@bookTicker", "data": dict(ticker, u=20)}), 5)
    with pytest.raises(BookInvalid, match="bookTicker u=20"):
        spot.apply_snapshot(
            "BTCUSDT",
            '{"lastUpdateId": 20, "bids": [["100.00", "1.4"]], "asks": [["100.02", "2"]]}',
            6,
        )
    assert not spot.books["BTCUSDT"].synced


# ---------------------------------------------------------------------------------------
# The captures in recorded order: exact counts, 0 gaps, bookTicker agrees
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(CAPTURES))
def test_capture_in_recorded_order(name: str) -> None:
    adapter, events = replay_recorded(name)
    deltas, trades, checks = EXPECTED[name]
    by_wire = {i.symbol: w for w, i in adapter.instruments.items()}
    got_deltas = Counter(by_wire[e.symbol] for e in events if isinstance(e, BookDelta))
    got_trades = Counter(by_wire[e.symbol] for e in events if isinstance(e, Trade))
    assert dict(got_deltas) == deltas
    assert dict(got_trades) == trades
    assert sum(isinstance(e, BookSnapshot) for e in events) == len(deltas)
    assert all(b.synced for b in adapter.books.values())
    assert adapter.bbo_checks == checks  # and no ChecksumMismatch was raised
    # BookDelta.seq is the venue's final update id u: increasing per symbol; on futures
    # the first delta may carry the snapshot's own id (u == lastUpdateId is applied)
    last: dict[str, tuple[int, bool]] = {}
    same_as_snapshot = 0
    for e in events:
        if isinstance(e, BookDelta):
            prev, prev_is_delta = last[e.symbol]
            assert e.seq > prev or (e.seq == prev and not prev_is_delta and adapter.futures)
            same_as_snapshot += e.seq == prev
        if isinstance(e, BookSnapshot | BookDelta):
            last[e.symbol] = (e.seq, isinstance(e, BookDelta))
    assert same_as_snapshot == {"BINANCE_FUTURES": 3, "BINANCE_DELIVERY": 3}.get(name, 0)
    # levels and prints from before a tick/step change (NKNUSDT bids at 0.25974 with a
    # tick of 0.0001, CTKUSDT 0.50579 with 0.001) cannot be written at tick precision
    assert adapter.unrepresentable == {"BINANCE": 68, "BINANCE_FUTURES": 131}.get(name, 0)


@pytest.mark.parametrize("name", ["BINANCE", "BINANCE_FUTURES"])
def test_full_precision_keeps_levels_off_todays_tick_and_step(name: str) -> None:
    coarse, coarse_events = replay_recorded(name)
    fine, fine_events = replay_recorded(name, full_precision=True)
    assert fine.unrepresentable == 0 and fine.bbo_checks == coarse.bbo_checks
    assert Counter(type(e) for e in fine_events) == Counter(type(e) for e in coarse_events)
    extra = 0
    for wire, book in fine.books.items():
        f, c = fine.instruments[wire], coarse.instruments[wire]
        scale = (
            10 ** (f.price_decimals - c.price_decimals),
            10 ** (f.size_decimals - c.size_decimals),
        )
        on_grid = [
            [
                (p // scale[0], s // scale[1])
                for p, s in side
                if p % scale[0] == 0 and s % scale[1] == 0
            ]
            for side in book.local.book.canonical()
        ]
        # the tick-precision book is exactly the full book less the levels it cannot write
        assert on_grid == [list(side) for side in coarse.books[wire].local.book.canonical()]
        extra += sum(len(side) for side in book.local.book.canonical()) - sum(map(len, on_grid))
    assert extra > 0


# ---------------------------------------------------------------------------------------
# hftbacktest BTCUSDT (2024): minutes of spot and USD-M, checked against bookTicker
# ---------------------------------------------------------------------------------------

HFT: dict[str, tuple[type[BinanceBase], list[str], dict[str, Any], tuple[int, ...]]] = {
    # name -> adapter, files, instrument fields, (deltas, trades, sells, bbo checks)
    "spot": (
        BinanceSpot,
        ["spot_btcusdt_20240808.gz", "spot_btcusdt_20240809.gz"],
        {
            "quoteAssetPrecision": 8,
            "baseAssetPrecision": 8,
            "tick": "0.01000000",
            "lot": "0.00001000",
        },
        (6493, 19904, 10811, 1072),
    ),
    "usdm": (
        BinanceUsdm,
        ["usdm_btcusdt_20240808.gz"],
        {
            "contractType": "PERPETUAL",
            "pricePrecision": 2,
            "quantityPrecision": 3,
            "tick": "0.10",
            "lot": "0.001",
        },
        (6547, 21313, 11697, 629),
    ),
    "usdm_0718": (
        BinanceUsdm,
        ["usdm_btcusdt_20240718.gz"],
        {
            "contractType": "PERPETUAL",
            "pricePrecision": 2,
            "quantityPrecision": 3,
            "tick": "0.10",
            "lot": "0.001",
        },
        (3321, 974, 397, 195),
    ),
}


def hft_lines(files: list[str]) -> Iterator[tuple[int, str]]:
    for f in files:
        with gzip.open(_need(HFT_DIR / f), "rt") as fh:
            for line in fh:
                ts, _, text = line.partition(" ")
                yield int(ts), text


def hft_adapter(
    name: str, channels: frozenset[str] = frozenset({"book", "trades", "bbo"})
) -> BinanceBase:
    cls, _, fields, _ = HFT[name]
    f = dict(fields)
    sym = {"symbol": "BTCUSDT", "baseAsset": "BTC", "quoteAsset": "USDT", **f,
           "filters": [{"filterType": "PRICE_FILTER", "tickSize": f.pop("tick")},
                       {"filterType": "LOT_SIZE", "stepSize": f.pop("lot")}]}  # fmt: skip
    sym.pop("tick"), sym.pop("lot")
    # recorded in 2024 on one connection (before USD-M's routed stream paths)
    adapter = cls(FeedConfig(symbols=["BTCUSDT"], channels=channels, extra={"legacy_url": True}))
    adapter.set_instruments(
        adapter.select(adapter.parse_exchange_info(json.dumps({"symbols": [sym]})))
    )
    return adapter


@pytest.mark.parametrize("name", list(HFT))
def test_hftbacktest_btcusdt_book_matches_book_ticker(name: str) -> None:
    adapter = hft_adapter(name)
    counts: Counter[str] = Counter()
    first_trade: Trade | None = None
    lot = adapter.instruments["BTCUSDT"].lot_size
    off_step: list[tuple[int, int]] = []
    zeroed: set[tuple[int, int]] = set()
    for ts, text in hft_lines(HFT[name][1]):
        if text.startswith('{"lastUpdateId"'):  # the REST snapshot, recorded inline
            events = adapter.apply_snapshot("BTCUSDT", text, ts)
        else:
            events = adapter.on_frame(text, ts)
        for e in events:
            counts[type(e).__name__] += 1
            if isinstance(e, Trade):
                counts[e.side] += 1
                first_trade = first_trade or e
            if isinstance(e, BookDelta):
                off_step += [lvl for lvl in e.bids + e.asks if lvl[1] % lot]
                zeroed.update(lvl for lvl in e.asks if lvl[0] >= 70_000_00 and not lvl[1])
    deltas, trades, sells, checks = HFT[name][3]
    assert counts["BookSnapshot"] == 1 and counts["BookDelta"] == deltas
    assert (counts["Trade"], counts["sell"], counts["buy"]) == (trades, sells, trades - sells)
    # every bookTicker whose update id the book stopped at agrees exactly (else
    # ChecksumMismatch would have been raised)
    assert adapter.bbo_checks == checks
    assert first_trade is not None
    if name == "spot":  # {"t":3735683259,"p":"61837.63000000","q":"0.02000000","T":...342,"m":true}
        assert (first_trade.trade_id, first_trade.price, first_trade.size, first_trade.side) == (
            "3735683259", 6_183_763, 2_000, "sell"
        )  # fmt: skip
        assert (first_trade.ts_event, first_trade.ts_recv) == (
            1_723_161_255_342_000_000, 1_723_161_254_087_896_568
        )  # fmt: skip
        # seven asks finer than the step of 0.00001 BTC (older resting orders far from
        # the touch: 25.426189 BTC at 200000, ...) cannot be written at 5 decimals: left
        # out (size 0), counted; everything emitted is on the step
        assert adapter.unrepresentable == 7
        assert (200_000_00, 0) in zeroed and (74_000_00, 0) in zeroed
    else:
        assert adapter.unrepresentable == 0
    assert off_step == []


# ---------------------------------------------------------------------------------------
# The run loop against the fake exchange
# ---------------------------------------------------------------------------------------


def _config(fx: FakeExchange, name: str, **kw: Any) -> FeedConfig:
    return FeedConfig(
        symbols=subscribed(name),
        channels=kw.pop("channels", frozenset({"book", "trades", "bbo"})),
        ws_url=fx.ws_url,
        rest_url=fx.rest_url,
        backoff_base_s=0.02,
        backoff_cap_s=0.05,
        poll_interval_s=0,
        **kw,
    )


def capture_frames(name: str) -> list[tuple[float, str]]:
    wanted = set(subscribed(name))
    return [(ts, t) for ts, t in capture(name).frames() if frame_symbol(t) in wanted]


async def run_until(
    adapter: BinanceBase, done: Callable[[list[Event]], bool], timeout: float = 15.0
) -> list[Event]:
    got: list[Event] = []

    async def sink(events: list[Event]) -> None:
        got.extend(events)

    task = asyncio.ensure_future(adapter.run(sink))
    deadline = time.monotonic() + timeout
    while not done(got):
        if task.done() or time.monotonic() > deadline:
            adapter.stop()
            await task
            raise AssertionError(f"timed out; stats {adapter.stats.as_dict()}")
        await asyncio.sleep(0.01)
    adapter.stop()
    await asyncio.wait_for(task, 10)
    return got


def _all_synced(adapter: BinanceBase, frames: int) -> Callable[[list[Event]], bool]:
    def done(_: list[Event]) -> bool:
        return (
            adapter.stats.frames >= frames
            and bool(adapter.books)
            and all(b.synced for b in adapter.books.values())
            and not adapter._pending_snapshots
        )

    return done


async def run_many(
    adapters: list[BinanceBase],
    fx: FakeExchange,
    done: Callable[[list[Event]], bool],
    timeout: float = 15.0,
) -> list[Event]:
    """Run the adapters into one sink, each started once the previous one has its
    connection (the fake hands out its scripts in connection order)."""
    got: list[Event] = []

    async def sink(events: list[Event]) -> None:
        got.extend(events)

    tasks = []
    deadline = time.monotonic() + timeout
    try:
        for n, adapter in enumerate(adapters):
            tasks.append(asyncio.ensure_future(adapter.run(sink)))
            while fx.ws_connects <= n and time.monotonic() < deadline:
                await asyncio.sleep(0.005)
        while not done(got):
            if any(t.done() for t in tasks) or time.monotonic() > deadline:
                stats = [a.stats.as_dict() for a in adapters]
                raise AssertionError(f"timed out; stats {stats}")
            await asyncio.sleep(0.01)
    finally:
        for adapter in adapters:
            adapter.stop()
        await asyncio.wait_for(asyncio.gather(*tasks), 10)
    return got


def _stream(text: str) -> str:
    return str(json.loads(text).get("stream", ""))


@pytest.mark.parametrize("name", list(CAPTURES))
def test_fake_exchange_playback_through_the_run_loop(name: str) -> None:
    frames = capture_frames(name)
    cls = CAPTURES[name][0]
    clock = StepClock()
    if cls.routed:  # USD-M today: book streams on /public, the rest on /market
        public = [f for f in frames if "@depth" in _stream(f[1]) or "@bookTicker" in _stream(f[1])]
        scripts = [WsScript(public), WsScript([f for f in frames if f not in public])]
    else:
        scripts = [WsScript(frames)]

    async def main() -> tuple[list[BinanceBase], list[Event], FakeExchange]:
        async with FakeExchange(capture(name).routes(), scripts) as fx:
            adapters = cls.split(_config(fx, name), clock=clock)
            booked = next(a for a in adapters if a.books or "book" in a.config.channels)

            def done(_: list[Event]) -> bool:
                return (
                    sum(a.stats.frames for a in adapters) >= len(frames)
                    and bool(booked.books)
                    and all(b.synced for b in booked.books.values())
                    and not booked._pending_snapshots
                )

            got = await run_many(adapters, fx, done)
            return adapters, got, fx

    adapters, got, fx = asyncio.run(main())
    booked = next(a for a in adapters if a.books)
    deltas, trades, _ = EXPECTED[name]
    by_wire = {i.symbol: w for w, i in booked.instruments.items()}
    assert dict(Counter(by_wire[e.symbol] for e in got if isinstance(e, BookDelta))) == deltas
    assert dict(Counter(by_wire[e.symbol] for e in got if isinstance(e, Trade))) == trades
    for a in adapters:
        st = a.stats
        assert (st.gaps, st.resyncs, st.malformed, st.checksum_failures) == (0, 0, 0, 0)
        assert st.connects == 1
    assert sum(a.stats.frames for a in adapters) == len(frames)
    assert booked.stats.snapshots == len(deltas)
    prefix = booked.api_prefix
    info = [r for r in fx.requests if r[1].endswith("/exchangeInfo")]
    assert info == [("GET", f"{prefix}/exchangeInfo")] * len(adapters)
    assert sorted(r for r in fx.requests if r not in info) == sorted(
        ("GET", f"{prefix}/depth?limit=1000&symbol={w}") for w in deltas
    )
    # every REST call was weighed by the venue's table (depth by its limit)
    for a in adapters:
        assert {name for name, _ in a.limiter.granted} <= set(a.rest_weights)
    assert booked.limiter.weight(f"{prefix}/depth?limit=1000") == (
        50.0 if prefix == "/api/v3" else 20.0
    )
    if cls.routed:
        assert [p.split("?")[0] for p in fx.ws_paths] == ["/public/stream", "/market/stream"]
    else:
        assert [p.split("?")[0] for p in fx.ws_paths] == ["/stream"]
    # the same final books as the recorded-order replay; ts_recv from the injected clock
    reference, _ = replay_recorded(name)
    assert book_state(booked) == book_state(reference)
    market = [e for e in got if not isinstance(e, Connectivity)]
    assert all(clock.start < e.ts_recv <= clock.t for e in market)


def _hft_routes(
    name: str, limit: int | None = None
) -> tuple[dict[str, str], list[tuple[float, str]], str]:
    """REST routes and WS frames for an hftbacktest file (the inline snapshot -> REST)."""
    cls, files, fields, _ = HFT[name]
    frames: list[tuple[float, str]] = []
    snap = ""
    for ts, text in itertools.islice(hft_lines(files), limit):
        if text.startswith('{"lastUpdateId"'):
            snap = text.strip()
        else:
            frames.append((ts / 1e9, text.strip()))
    f = dict(fields)
    sym = {"symbol": "BTCUSDT", "baseAsset": "BTC", "quoteAsset": "USDT", **f,
           "filters": [{"filterType": "PRICE_FILTER", "tickSize": f.pop("tick")},
                       {"filterType": "LOT_SIZE", "stepSize": f.pop("lot")}]}  # fmt: skip
    sym.pop("tick"), sym.pop("lot")
    prefix = cls.api_prefix
    routes = {f"{prefix}/exchangeInfo": json.dumps({"symbols": [sym]}), f"{prefix}/depth": snap}
    return routes, frames, snap


def _true_book(frames: list[tuple[float, str]], snap: str, upto: int) -> tuple[int, str]:
    """The book after the first diffs up to update id ``upto`` as a REST body."""
    ref = hft_adapter("spot", channels=frozenset({"book"}))
    ref.apply_snapshot("BTCUSDT", snap, 0)
    for _, text in frames:
        d = json.loads(text)["data"]
        if d.get("e") == "depthUpdate" and d["u"] <= upto:
            ref.on_frame(text, 0)
    book = ref.books["BTCUSDT"].local.book
    inst = ref.instruments["BTCUSDT"]
    bids, asks = book.canonical()
    body = {
        "lastUpdateId": upto,
        "bids": [[inst.price_text(p), inst.size_text(s)] for p, s in bids],
        "asks": [[inst.price_text(p), inst.size_text(s)] for p, s in asks],
    }
    return upto, json.dumps(body)


def test_gap_resyncs_from_a_fresh_snapshot_and_the_book_is_right_afterwards() -> None:
    routes, frames, snap = _hft_routes("spot", limit=6001)
    frames = [f for f in frames if '"depthUpdate"' in f[1]][:200]  # 100 ms apart
    dropped = 100  # well after the first snapshot is applied
    later_u = json.loads(frames[150][1])["data"]["u"]
    _, fresh = _true_book(frames, snap, later_u)
    sent = frames[:dropped] + frames[dropped + 1 :]
    last_u = json.loads(frames[-1][1])["data"]["u"]

    async def main() -> tuple[BinanceBase, list[Event], list[tuple[str, str]]]:
        # paced so that the first snapshot lands before the gap
        async with FakeExchange(routes, [WsScript(sent, pace=0.01)]) as fx:
            fx.fail_next("/api/v3/depth", HttpResponse(200, snap))  # the first snapshot
            config = FeedConfig(
                symbols=["BTCUSDT"],
                channels=frozenset({"book", "trades"}),
                ws_url=fx.ws_url,
                rest_url=fx.rest_url,
                backoff_base_s=0.02,
                backoff_cap_s=0.05,
                poll_interval_s=0,
            )
            adapter = BinanceSpot(config, clock=StepClock())
            fx.routes["/api/v3/depth"] = fresh  # what the venue serves after the gap

            def done(got: list[Event]) -> bool:
                return any(isinstance(e, BookDelta) and e.seq == last_u for e in got)

            got = await run_until(adapter, done, timeout=30)
            return adapter, got, fx.requests

    adapter, got, requests = asyncio.run(main())
    st = adapter.stats
    assert (st.gaps, st.resyncs, st.snapshots) == (1, 1, 2)
    resync = [e for e in got if isinstance(e, Connectivity) and e.status == "resync"]
    assert len(resync) == 1 and resync[0].symbol == "BTC-USDT"
    assert "sequence_gap" in resync[0].reason
    snaps = [e.seq for e in got if isinstance(e, BookSnapshot)]
    assert snaps == [50093239218, later_u]
    assert [r for r in requests if "depth" in r[0] + r[1]] == [
        ("GET", "/api/v3/depth?limit=1000&symbol=BTCUSDT")
    ] * 2
    truth = _true_book(frames, snap, last_u)[1]
    ref = hft_adapter("spot", channels=frozenset({"book"}))
    ref.apply_snapshot("BTCUSDT", truth, 0)
    assert book_state(adapter) == book_state(ref)


def test_disconnect_mid_stream_reconnects_and_resnapshots() -> None:
    name = "BINANCE_US"
    frames = capture_frames(name)

    async def main() -> tuple[BinanceBase, list[Event], FakeExchange]:
        scripts = [WsScript(frames, close_after=100), WsScript(frames)]
        async with FakeExchange(capture(name).routes(), scripts) as fx:
            adapter = BinanceUS(_config(fx, name), clock=StepClock())
            got = await run_until(adapter, _all_synced(adapter, 100 + len(frames)))
            return adapter, got, fx

    adapter, got, fx = asyncio.run(main())
    assert fx.ws_connects == 2
    assert (adapter.stats.connects, adapter.stats.reconnects) == (2, 1)
    assert (adapter.stats.gaps, adapter.stats.malformed) == (0, 0)
    statuses = [e.status for e in got if isinstance(e, Connectivity) and e.symbol == "COMP-USDT"]
    assert statuses == ["up", "down", "up", "down"]
    # every symbol snapshotted again on the new connection; the books end where the
    # recorded-order replay ends
    up2 = max(i for i, e in enumerate(got) if isinstance(e, Connectivity) and e.status == "up")
    after = {e.symbol for e in got[up2:] if isinstance(e, BookSnapshot)}
    assert after == {"COMP-USDT", "OMG-BUSD", "CRV-USDT", "ZRX-USDT"}
    depth_requests = [r for r in fx.requests if "/depth" in r[1]]
    assert len(depth_requests) >= 5  # 4 after the reconnect (+ those before the drop)
    reference, _ = replay_recorded(name)
    assert book_state(adapter) == book_state(reference)


def test_malformed_frames_are_counted_and_the_stream_goes_on() -> None:
    name = "BINANCE"
    frames = capture_frames(name)
    bad = [(frames[10][0], "{not json"), (frames[20][0], '{"stream": "nknusdt@aggTrade", '
           '"data": {"e": "aggTrade", "s": "NKNUSDT", "a": "x"}}')]  # fmt: skip
    played = frames[:10] + bad[:1] + frames[10:20] + bad[1:] + frames[20:]

    async def main() -> tuple[BinanceBase, list[Event]]:
        async with FakeExchange(capture(name).routes(), [WsScript(played)]) as fx:
            adapter = BinanceSpot(_config(fx, name), clock=StepClock())
            got = await run_until(adapter, _all_synced(adapter, len(played)))
            return adapter, got

    adapter, got = asyncio.run(main())
    assert (adapter.stats.malformed, adapter.stats.gaps, adapter.stats.resyncs) == (2, 0, 0)
    deltas = Counter(e.symbol for e in got if isinstance(e, BookDelta))
    assert sum(deltas.values()) == sum(EXPECTED[name][0].values())


class TimedFake(FakeExchange):
    """Records when each HTTP request arrived."""

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.times: list[tuple[float, str]] = []

    def _respond(self, path: str, key: str) -> HttpResponse:
        self.times.append((time.monotonic(), key))
        return super()._respond(path, key)


def test_http_429_backs_off_for_retry_after_then_retries() -> None:
    name = "BINANCE_FUTURES"
    frames = capture_frames(name)

    async def main() -> tuple[BinanceBase, TimedFake]:
        fx = TimedFake(capture(name).routes(), [WsScript(frames)])
        async with fx:
            fx.fail_next(
                "/fapi/v1/depth", HttpResponse(429, '{"code":-1003}', {"Retry-After": "0.3"})
            )
            config = _config(fx, name, channels=frozenset({"book", "bbo"}))
            adapter = BinanceUsdm(config, clock=StepClock())
            await run_until(adapter, _all_synced(adapter, len(frames)))
            return adapter, fx

    adapter, fx = asyncio.run(main())
    assert adapter.stats.rate_limited == 1 and adapter.stats.gaps == 0
    depth = [(t, k) for t, k in fx.times if "/depth" in k]
    assert len(depth) == 5  # the 429 and four snapshots
    # the refused symbol was asked for again only after Retry-After
    (t429, _), retry = depth[0], [t for t, k in depth[1:] if k == depth[0][1]]
    assert len(retry) == 1 and retry[0] - t429 >= 0.29
    # the depth weight from the class table (spot 50, futures 20 at limit=1000)
    assert adapter.limiter.weight("/fapi/v1/depth?limit=1000") == 20.0


def test_server_shutdown_closes_and_reconnects() -> None:
    name = "BINANCE"
    frames = capture_frames(name)
    shutdown = (frames[5][0], '{"event": {"e": "serverShutdown", "E": 1770123456789}}')

    async def main() -> tuple[BinanceBase, list[Event], FakeExchange]:
        scripts = [WsScript([*frames[:5], shutdown]), WsScript(frames)]
        async with FakeExchange(capture(name).routes(), scripts) as fx:
            adapter = BinanceSpot(_config(fx, name), clock=StepClock())
            got = await run_until(adapter, _all_synced(adapter, 6 + len(frames)))
            return adapter, got, fx

    adapter, got, fx = asyncio.run(main())
    assert adapter.server_shutdowns == 1
    assert fx.ws_connects == 2 and adapter.stats.reconnects == 1
    statuses = [e.status for e in got if isinstance(e, Connectivity) and e.symbol == "NKN-USDT"]
    assert statuses == ["up", "down", "up", "down"]  # the last: stopped
    reference, _ = replay_recorded(name)
    assert book_state(adapter) == book_state(reference)


def test_websocket_ping_is_answered_with_the_same_payload() -> None:
    import websockets

    pongs: list[bool] = []

    async def main() -> None:
        async def handler(ws: Any) -> None:
            waiter = await ws.ping(b"binance-ping-\x00\x01")
            await asyncio.wait_for(waiter, 2)  # resolves only on a pong echoing the payload
            pongs.append(True)
            await ws.wait_closed()

        async with websockets.serve(handler, "127.0.0.1", 0) as server:
            port = server.sockets[0].getsockname()[1]
            adapter = BinanceSpot(
                FeedConfig(symbols=["BTCUSDT"], ws_url=f"ws://127.0.0.1:{port}", poll_interval_s=0)
            )
            adapter.set_instruments([_toy_instrument(adapter, "BTCUSDT", "BTC", "USDT")])
            await run_until(adapter, lambda _: bool(pongs), timeout=5)

    asyncio.run(main())
    assert pongs == [True]


def test_rest_weights_from_config() -> None:
    import msgspec
    import yaml

    from kernel.config import ExchangesConfig

    text = (Path(__file__).resolve().parents[1] / "config" / "exchanges.yaml").read_text()
    cfg = msgspec.convert(yaml.safe_load(text), ExchangesConfig).exchanges["BINANCE"]
    limiter = BinanceSpot.limiter_from_config(cfg.rest_weight_per_minute, cfg.rest_weights)
    assert limiter.weight("/api/v3/depth?limit=1000") == 50.0
    assert limiter.weight("/api/v3/depth?limit=100") == 5.0
    assert limiter.bucket.capacity == cfg.rest_weight_per_minute
    fut = BinanceUsdm.limiter_from_config(None, cfg.rest_weights)
    assert fut.weight("/fapi/v1/depth?limit=1000") == 20.0 and fut.bucket.capacity == 2400
    assert isinstance(limiter, RateLimiter)
