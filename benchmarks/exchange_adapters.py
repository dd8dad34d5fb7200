#!/usr/bin/env python3
"""Exchange adapter speed through the real run loop against the local fake exchange.

    .venv/bin/python benchmarks/exchange_adapters.py [--venue kraken ...] [--repeat 5]

For each venue a recorded stream (shared/data/exchanges/...) is played back by
:class:`adapters.exchanges.fake.FakeExchange` on 127.0.0.1 as fast as the socket takes it,
and the venue's adapter collects it with :meth:`ExchangeInterface.run` (WebSocket client,
frame parsing, book sync and checksums, the sink). Printed as JSON:

    {venue: {frames_per_s, events_per_s, latency_p50_us, latency_p99_us, ...}}

* ``frames_per_s`` / ``events_per_s``: frames read and events emitted per second of wall
  time between the first event and the last.
* ``latency_*_us``: per frame that produced events, the time from the frame being taken
  off the local socket (its ``ts_recv``) to its events having been handed to the sink
  (``FeedStats.latencies_ns``).
* ``parse_frames_per_s``: the same frames through ``on_frame`` alone (no I/O), the
  parser's ceiling.

Adding a venue: write ``async def bench_<venue>(repeat: int) -> dict[str, float]`` (see
:func:`playback` for the measurement) and register it in :data:`BENCHMARKS`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from adapters.exchanges.base import ExchangeInterface, FeedConfig, RateLimiter  # noqa: E402
from adapters.exchanges.fake import FakeExchange, WsScript, load_capture  # noqa: E402
from kernel.events import BookSnapshot, Connectivity, Event  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "exchanges"

Frames = Sequence[tuple[float, str]]


def _quantile(values: list[int], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return float(ordered[min(len(ordered) - 1, int(q * len(ordered)))])


async def playback(
    make: Callable[[FakeExchange], ExchangeInterface],
    offline: Callable[[], ExchangeInterface],
    routes: dict[str, str],
    frames: Frames,
    wait_for: int = 1,
) -> dict[str, float]:
    """Play ``frames`` to a fresh adapter from ``make(fx)`` until it has emitted as many
    market events as ``offline()`` (the same adapter, instruments loaded, no I/O) makes of
    them through ``on_frame`` alone, which is also timed."""
    parser = offline()
    expected = 0
    t0 = time.perf_counter()
    for n, (_, text) in enumerate(frames):
        expected += len(parser.on_frame(text, n))
    parse_s = time.perf_counter() - t0

    first = last = 0.0
    events = 0
    async with FakeExchange(routes, [WsScript(frames, wait_for=wait_for)]) as fx:
        ex = make(fx)

        async def sink(batch: list[Event]) -> None:
            nonlocal first, last, events
            now = time.perf_counter()
            market = sum(not isinstance(e, Connectivity) for e in batch)
            if market:
                if not events:
                    first = now
                events += market
                last = now
                if events >= expected:
                    ex.stop()

        await asyncio.wait_for(ex.run(sink), timeout=300)
    wall = max(last - first, 1e-9)
    lat = ex.stats.latencies_ns
    return {
        "frames": ex.stats.frames,
        "events": events,
        "frames_per_s": round(ex.stats.frames / wall),
        "events_per_s": round(events / wall),
        "latency_p50_us": round(_quantile(lat, 0.50) / 1000, 1),
        "latency_p99_us": round(_quantile(lat, 0.99) / 1000, 1),
        "latency_mean_us": round(statistics.fmean(lat) / 1000, 1) if lat else 0.0,
        "parse_frames_per_s": round(len(frames) / parse_s),
        "malformed": ex.stats.malformed,
        "resyncs": ex.stats.resyncs,
    }


# ---------------------------------------------------------------------------------------
# Kraken
# ---------------------------------------------------------------------------------------

KRAKEN_PAIRS = [
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


def _kraken_config(fx: FakeExchange | None, symbols: list[str], depth: int = 1000) -> FeedConfig:
    return FeedConfig(
        symbols=symbols,
        depth=depth,
        ws_url=fx.ws_url if fx else None,
        rest_url=fx.rest_url if fx else None,
        ping_interval_s=None,
        poll_interval_s=0,
    )


async def bench_kraken(repeat: int) -> dict[str, float]:
    """Spot v1, the recorded cryptofeed_KRAKEN book (depth 1000, 4269 checksummed
    updates) + trade connections, ``repeat`` times over (each pass resnapshots)."""
    from adapters.exchanges.kraken import KrakenV1Exchange

    cap = load_capture(DATA / "kraken" / "cryptofeed_KRAKEN.jsonl.gz")
    frames = cap.frames(["KRAKEN.ws.48", "KRAKEN.ws.50"]) * repeat
    want = 4269 * repeat

    made: list[KrakenV1Exchange] = []

    def make(fx: FakeExchange) -> ExchangeInterface:
        ex = KrakenV1Exchange(_kraken_config(fx, KRAKEN_PAIRS), limiter=RateLimiter(100, 100))
        made.append(ex)
        return ex

    def offline() -> ExchangeInterface:
        ex = KrakenV1Exchange(_kraken_config(None, KRAKEN_PAIRS))
        ex.use_asset_pairs(cap.http[0][2])
        return ex

    out = await playback(make, offline, cap.routes(), frames, wait_for=2)
    out["checksums_verified"] = made[0].checksums_verified
    out["checksums_expected"] = want
    return out


async def bench_kraken_futures(repeat: int) -> dict[str, float]:
    """Kraken Futures, the recorded cryptofeed_KRAKEN_FUTURES stream of the three
    perpetuals (book snapshot + seq deltas, trades), ``repeat`` times over."""
    from adapters.exchanges.kraken import KrakenFuturesExchange

    cap = load_capture(DATA / "kraken" / "cryptofeed_KRAKEN_FUTURES.jsonl.gz")
    perps = ["PI_XRPUSD", "PI_LTCUSD", "PI_ETHUSD"]
    frames = [
        (ts, t)
        for ts, t in cap.frames()
        if any(p in t for p in perps) and '"ticker_lite"' not in t and '"event"' not in t
    ] * repeat
    deltas = sum('"feed":"book","product_id"' in t for _, t in frames)

    def make(fx: FakeExchange) -> ExchangeInterface:
        cfg = FeedConfig(
            symbols=perps,
            channels=frozenset({"book", "trades"}),
            ws_url=fx.ws_url,
            rest_url=fx.rest_url,
            ping_interval_s=None,
            poll_interval_s=0,
        )
        return KrakenFuturesExchange(cfg, limiter=RateLimiter(100, 100))

    def offline() -> ExchangeInterface:
        ex = KrakenFuturesExchange(FeedConfig(symbols=perps))
        ex.use_instruments(cap.http[0][2])
        return ex

    out = await playback(make, offline, cap.routes(), frames, wait_for=2)
    out["deltas"] = deltas
    return out


# ---------------------------------------------------------------------------------------
# KuCoin
# ---------------------------------------------------------------------------------------

KUCOIN_SYMBOLS = [
    "BSV-USDT",
    "SNX-BTC",
    "CAPP-BTC",
    "ANKR-BTC",
    "FET-BTC",
    "DAPPT-BTC",
    "NRG-BTC",
    "COV-BTC",
    "EQZ-BTC",
]
"""The nine symbols with a REST snapshot in cryptofeed_KUCOIN."""


async def _kucoin_pass(
    cap: Any, frames: Frames, gap_s: float | None
) -> tuple[int, int, float, list[int], list[int]]:
    """One connection playing ``frames`` (back to back, or ``gap_s`` apart) through
    :meth:`KucoinSpot.run`: (frames, market events, seconds from "up" to the last event,
    ts_recv -> sink latencies, fake's send -> sink latencies), both in ns."""
    from adapters.exchanges.kucoin import KucoinCredentials, KucoinSpot

    if gap_s is not None:
        frames = [(n * gap_s, text) for n, (_, text) in enumerate(frames)]
    script = WsScript(frames, pace=1.0 if gap_s is not None else 0.0)
    up = last = 0.0
    events = 0
    wire: list[int] = []
    async with FakeExchange(cap.routes(), [script]) as fx:
        fx.routes["/api/v1/bullet-public"] = json.dumps(
            {
                "code": "200000",
                "data": {
                    "token": "bench",
                    "instanceServers": [{"endpoint": fx.ws_url, "protocol": "websocket"}],
                },
            }
        )
        cfg = FeedConfig(
            symbols=KUCOIN_SYMBOLS,
            channels=frozenset({"book", "trades"}),
            rest_url=fx.rest_url,
            poll_interval_s=0,
        )
        ex = KucoinSpot(
            cfg,
            limiter=RateLimiter(1000, 1000),
            credentials=KucoinCredentials("bench", "bench", "bench"),
        )

        async def sink(batch: list[Event]) -> None:
            nonlocal up, last, events
            now = time.perf_counter()
            first = batch[0]
            if isinstance(first, Connectivity):
                if first.status == "up":
                    up = now
                return
            events += len(batch)
            last = now
            if not isinstance(first, BookSnapshot):  # frame-driven (not a REST snapshot)
                wire.append(time.perf_counter_ns() - fx.sent_ns[ex.stats.frames - 1])

        async def watch() -> None:
            while ex.stats.frames < len(frames) or ex.stats.snapshots < len(KUCOIN_SYMBOLS):
                await asyncio.sleep(0.005)
            ex.stop()

        watcher = asyncio.ensure_future(watch())
        await asyncio.wait_for(ex.run(sink), timeout=300)
        await watcher
    if ex.stats.gaps or ex.stats.malformed:
        raise RuntimeError(f"kucoin playback not clean: {ex.stats.as_dict()}")
    return ex.stats.frames, events, last - up, list(ex.stats.latencies_ns), wire


async def bench_kucoin(repeat: int) -> dict[str, float]:
    """Spot, the recorded cryptofeed_KUCOIN stream (4721 frames: 3853 level2 updates of 9
    books synced from their REST snapshots, 18 trades, 830 tickers the adapter ignores),
    ``repeat`` fresh connections at full speed; then one paced pass (a frame every 0.5 ms)
    for the latency from the fake exchange's send to the sink (``wire_latency_*``)."""
    from adapters.exchanges.kucoin import KucoinSpot

    cap = load_capture(DATA / "kucoin" / "cryptofeed_KUCOIN.jsonl.gz")
    frames = cap.frames()

    offline = KucoinSpot(FeedConfig(symbols=KUCOIN_SYMBOLS), credentials=None)
    offline.use_symbols(cap.routes()["/api/v1/symbols"])
    for _, url, body in cap.http:  # books synced first, so that updates are applied
        if "/orderbook/level2?" in url:
            offline.on_snapshot_body(url.rsplit("symbol=", 1)[1], body.encode(), 0)
    t0 = time.perf_counter()
    for n, (_, text) in enumerate(frames):
        offline.on_frame(text, n)
    parse_s = time.perf_counter() - t0

    n_frames = n_events = 0
    wall = 0.0
    lat: list[int] = []
    for _ in range(repeat):
        f, e, w, latencies, _wire = await _kucoin_pass(cap, frames, None)
        n_frames, n_events, wall, lat = n_frames + f, n_events + e, wall + w, lat + latencies
    _, _, _, _, wire = await _kucoin_pass(cap, frames, 0.0005)
    return {
        "frames": n_frames,
        "events": n_events,
        "frames_per_s": round(n_frames / wall),
        "events_per_s": round(n_events / wall),
        "latency_p50_us": round(_quantile(lat, 0.50) / 1000, 1),
        "latency_p99_us": round(_quantile(lat, 0.99) / 1000, 1),
        "latency_mean_us": round(statistics.fmean(lat) / 1000, 1) if lat else 0.0,
        "wire_latency_p50_us": round(_quantile(wire, 0.50) / 1000, 1),
        "wire_latency_p99_us": round(_quantile(wire, 0.99) / 1000, 1),
        "parse_frames_per_s": round(len(frames) / parse_s),
    }


# ---------------------------------------------------------------------------------------
# Coinbase Advanced Trade
# ---------------------------------------------------------------------------------------


async def bench_coinbase(repeat: int) -> dict[str, float]:
    """The recorded cryptofeed_COINBASE connection (1030 frames: 2 full-book level2
    snapshots of 46,000 + 23,334 levels, 773 level2 updates, 57 trade frames, tickers,
    heartbeats and candles the adapter only sequence-checks), ``repeat`` times over on one
    connection with ``sequence_num`` renumbered to stay gap-free (each pass resnapshots)."""
    import re

    from adapters.exchanges.coinbase import PRODUCTS_PATH, CoinbaseExchange

    cap = load_capture(DATA / "coinbase" / "cryptofeed_COINBASE.jsonl.gz")
    recorded = cap.frames()
    seq = re.compile(r'"sequence_num":(\d+)')
    frames: list[tuple[float, str]] = []
    for k in range(repeat):
        for ts, text in recorded:
            head, tail = text[:200], text[200:]
            n = k * len(recorded)
            head = seq.sub(lambda m, n=n: f'"sequence_num":{int(m.group(1)) + n}', head, 1)
            frames.append((ts, head + tail))
    products = ["BTC-USD", "ETH-USD"]
    routes = {PRODUCTS_PATH: cap.routes()[PRODUCTS_PATH]}

    def config(fx: FakeExchange | None) -> FeedConfig:
        return FeedConfig(
            symbols=products,
            ws_url=fx.ws_url if fx else None,
            rest_url=fx.rest_url if fx else None,
            ping_interval_s=None,
            poll_interval_s=0,
        )

    def make(fx: FakeExchange) -> ExchangeInterface:
        return CoinbaseExchange(config(fx), use_env_credentials=False)

    def offline() -> ExchangeInterface:
        ex = CoinbaseExchange(config(None), use_env_credentials=False)
        insts = ex.instruments_from_products(routes[PRODUCTS_PATH])
        ex.instruments = {i.wire_symbol.upper(): i for i in insts}
        ex.on_connected()
        return ex

    out = await playback(make, offline, routes, frames, wait_for=3)
    out["snapshot_levels"] = 46000 + 23334
    return out


# ---------------------------------------------------------------------------------------
# Binance
# ---------------------------------------------------------------------------------------

HFT = ROOT.parent / "shared" / "data" / "market" / "binance_hftbacktest"


def _binance_recording(name: str) -> tuple[str, list[tuple[float, str]]]:
    """(REST snapshot body, frames) of an hftbacktest BTCUSDT file ("<ns> <json>" lines;
    the REST depth snapshot is recorded inline as one line)."""
    import gzip

    snapshot = ""
    frames: list[tuple[float, str]] = []
    with gzip.open(HFT / name, "rt") as fh:
        for line in fh:
            ts, _, text = line.rstrip("\n").partition(" ")
            if text.startswith('{"lastUpdateId"'):
                snapshot = text
            else:
                frames.append((int(ts) / 1e9, text))
    return snapshot, frames


async def _bench_binance(
    repeat: int, cls_name: str, recording: str, info: dict[str, Any]
) -> dict[str, float]:
    """The whole recording (depth diffs, trades and bookTicker, which the adapter checks
    against its book) through the run loop, ``repeat`` runs on fresh connections; the
    median run by frames/s is reported. Recorded on one connection, so USD-M uses
    ``legacy_url`` (today's routed paths split book and trades over two)."""
    from adapters.exchanges import binance

    cls = getattr(binance, cls_name)
    snapshot, frames = _binance_recording(recording)
    body = json.dumps({"symbols": [info]})
    routes = {f"{cls.api_prefix}/exchangeInfo": body, f"{cls.api_prefix}/depth": snapshot}
    channels = frozenset({"book", "trades", "bbo"})
    extra = {"legacy_url": True, "trade_stream": "trade"}

    def config(fx: FakeExchange | None) -> FeedConfig:
        return FeedConfig(
            symbols=["BTCUSDT"],
            channels=channels,
            ws_url=fx.ws_url if fx else None,
            rest_url=fx.rest_url if fx else None,
            ping_interval_s=None,
            poll_interval_s=0,
            extra=extra,
        )

    made: list[Any] = []

    def make(fx: FakeExchange) -> ExchangeInterface:
        ex = cls(config(fx), limiter=RateLimiter(100_000, 100_000))
        made.append(ex)
        return ex

    def offline() -> ExchangeInterface:
        ex = cls(config(None))
        ex.set_instruments(ex.select(ex.parse_exchange_info(body)))
        ex.apply_snapshot("BTCUSDT", snapshot, 0)
        return ex

    runs = []
    for _ in range(max(1, repeat)):
        out = await playback(make, offline, routes, frames, wait_for=0)
        out["bbo_checks"] = made[-1].bbo_checks
        out["gaps"] = made[-1].stats.gaps
        runs.append(out)
    runs.sort(key=lambda r: r["frames_per_s"])
    result = runs[len(runs) // 2]
    result["runs"] = len(runs)
    return result


async def bench_binance(repeat: int) -> dict[str, float]:
    """Binance spot BTCUSDT 2024-08-08 (hftbacktest): 41,249 frames, 3,451 depth@100ms
    diffs, 9,757 trades, 28,040 bookTicker."""
    info = {"symbol": "BTCUSDT", "baseAsset": "BTC", "quoteAsset": "USDT", "filters": [
        {"filterType": "PRICE_FILTER", "tickSize": "0.01000000"},
        {"filterType": "LOT_SIZE", "stepSize": "0.00001000"}]}  # fmt: skip
    return await _bench_binance(repeat, "BinanceSpot", "spot_btcusdt_20240808.gz", info)


async def bench_binance_usdm(repeat: int) -> dict[str, float]:
    """Binance USD-M BTCUSDT 2024-08-08 (hftbacktest): 93,953 frames, 6,551 depth@0ms
    diffs (about 70 levels each), 21,313 trades, 66,089 bookTicker."""
    info = {"symbol": "BTCUSDT", "baseAsset": "BTC", "quoteAsset": "USDT",
            "contractType": "PERPETUAL", "filters": [
                {"filterType": "PRICE_FILTER", "tickSize": "0.10"},
                {"filterType": "LOT_SIZE", "stepSize": "0.001"}]}  # fmt: skip
    return await _bench_binance(repeat, "BinanceUsdm", "usdm_btcusdt_20240808.gz", info)


BENCHMARKS: dict[str, Callable[[int], Coroutine[Any, Any, dict[str, float]]]] = {
    "binance": bench_binance,
    "binance_usdm": bench_binance_usdm,
    "coinbase": bench_coinbase,
    "kraken": bench_kraken,
    "kraken_futures": bench_kraken_futures,
    "kucoin": bench_kucoin,
}
"""Venue name -> benchmark (each venue engineer adds their own entry)."""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument(
        "--venue",
        action="append",
        choices=sorted(BENCHMARKS),
        help="venue to run (repeatable; default: all)",
    )
    ap.add_argument("--repeat", type=int, default=5, help="passes over each recording")
    args = ap.parse_args()
    import logging

    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    result: dict[str, Any] = {}
    for name in args.venue or sorted(BENCHMARKS):
        result[name] = asyncio.run(BENCHMARKS[name](args.repeat))
    result["_machine"] = {"python": platform.python_version(), "platform": platform.platform()}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
