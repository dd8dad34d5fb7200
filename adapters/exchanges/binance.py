"""Binance market data: spot, Binance.US, USD-M and COIN-M perpetual futures.

One module, four venues that share the wire format (``shared/EXCHANGES.md``, Binance):

============  ============  ==============================  ===============================
class         exchange id   streams / REST                  instruments
============  ============  ==============================  ===============================
BinanceSpot   ``BINANCE``   stream.binance.com:9443 /       ``BTC-USDT`` (spot)
                            api.binance.com ``/api/v3``
BinanceUS     ``BINANCEUS`` stream.binance.us:9443 /        ``BTC-USDT`` (spot)
                            api.binance.us ``/api/v3``
BinanceUsdm   ``BINANCE``   fstream.binance.com /           ``BTC-USDT-PERP`` (feed
                            fapi.binance.com ``/fapi/v1``   ``binance-futures``)
BinanceCoinm  ``BINANCE``   dstream.binance.com /           ``BTC-USD-PERP`` (feed
                            dapi.binance.com ``/dapi/v1``   ``binance-delivery``)
============  ============  ==============================  ===============================

USD-M perps keep the repository's convention (``config/instruments.yaml``): exchange
``BINANCE``, kind ``perp``, data-feed id ``binance-futures``. Dated futures
(``BTCUSD_211231``, ``BTCUSDT_240927``) are refused: the kernel's instruments know only
``spot`` and ``perp``. COIN-M sizes are **contracts** (``contractSize`` USD each), not
base units; the kernel's notional arithmetic does not apply to them.

Protocol, as implemented here:

* Subscriptions go in the URL: ``/stream?streams=btcusdt@depth@100ms/btcusdt@aggTrade``
  (combined stream, frames wrapped as ``{"stream": ..., "data": ...}``).
* Diff book (``depthUpdate``) + REST snapshot (``lastUpdateId``) through
  :class:`~adapters.exchanges.base.BufferedBook`: spot rule ``U <= id + 1 <= u`` then
  ``U == prev.u + 1`` (:class:`SpotRule`); futures rule ``U <= id <= u`` then
  ``pu == prev.u`` (:class:`FuturesRule`). The first snapshot is requested when the first
  diff of a symbol has arrived (so that the stream is live and buffering).
* ``aggTrade`` / ``trade`` -> :class:`~kernel.events.Trade`; ``m = true`` means the buyer
  was the maker, so the aggressor **sold**.
* ``markPriceUpdate`` -> :class:`~kernel.events.MarkPrice` and
  :class:`~kernel.events.FundingRate` (next funding time from ``T``; funding intervals
  differ per symbol, nothing is assumed).
* ``bookTicker`` (channel ``bbo``, optional): the best bid/ask with the book's update id
  ``u``. When the local book reaches the same id its top must equal the ticker exactly,
  else :class:`~adapters.exchanges.base.ChecksumMismatch` (resync). Binance has no book
  checksum; this is the independent check.
* ``serverShutdown`` closes the connection; the run loop reconnects and resnapshots.
  Pings are WebSocket ping frames: the ``websockets`` library answers them with a pong
  that echoes the payload, as Binance requires.
* Timestamps are milliseconds (``E`` event time, ``T`` transaction / trade time); spot
  can be asked for microseconds with ``FeedConfig.extra["time_unit"] = "MICROSECOND"``.
  ``ts_event`` is always ns.
* Private REST: HMAC-SHA256 over the exact query string (:func:`sign`), key and secret
  from ``<EXCHANGE>_API_KEY`` / ``<EXCHANGE>_API_SECRET``.

``FeedConfig.extra`` keys: ``depth_interval`` (``"100ms"``; ``""`` for the venue's
default), ``trade_stream`` (``"aggTrade"`` or ``"trade"``), ``mark_interval`` (``"1s"``;
``""`` for 3 s), ``depth_limit`` (REST snapshot depth, 1000), ``poll_depth_limit`` (100,
while the WebSocket is down), ``time_unit``, ``full_precision`` (instrument decimals from
the venue's precision fields instead of the tick and step; see
:meth:`BinanceBase.parse_exchange_info`), ``legacy_url`` (USD-M: all streams on one
connection without the 2026 routed paths).
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import os
from collections import deque
from collections.abc import Iterable, Mapping
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any, ClassVar
from urllib.parse import quote

import msgspec
import structlog

from adapters.exchanges.base import (
    PRIORITY_OTHER,
    PRIORITY_POLL,
    AuthError,
    BadResponse,
    BookInvalid,
    BufferedBook,
    ChecksumMismatch,
    Diff,
    ExchangeInterface,
    FeedConfig,
    MalformedMessage,
    Priority,
    RateLimiter,
    decimals_of,
    instrument_from_increments,
)
from kernel.events import Event, FundingRate, Level, MarkPrice, Trade
from kernel.fixedpoint import POW10, RATE_DECIMALS, FixedPointError, parse_fixed
from kernel.instruments import Instrument, InstrumentKind

log = structlog.get_logger("tickerml.exchanges.binance")

PUBLIC_CHANNELS = frozenset({"book", "bbo"})
MARKET_CHANNELS = frozenset({"trades", "funding"})

MS = 1_000_000
"""ns per millisecond."""

# ---------------------------------------------------------------------------------------
# Wire types (msgspec decodes each frame once into these)
# ---------------------------------------------------------------------------------------

Rows = list[tuple[str, str]]


class Payload(msgspec.Struct, gc=False):
    """The ``data`` of any market-data frame. Binance reuses single letters with
    different types per event (``a``: asks / aggregate trade id / best ask price), hence
    the unions; fields of other events (klines, ``st``, ``ps``, ...) are skipped."""

    e: str = ""
    E: int = 0
    T: int = 0
    s: str = ""
    U: int = 0
    u: int = 0
    pu: int = -1
    b: Rows | str | int = ""
    a: Rows | str | int = ""
    B: str = ""
    A: str = ""
    t: int = 0
    p: str = ""
    q: str = ""
    m: bool = False
    X: str = ""
    i: str = ""
    r: str = ""


class Frame(msgspec.Struct, gc=False):
    """A combined-stream frame, a raw-stream frame (fields at the top level) or a
    control reply (``{"result": null, "id": 1}``, ``{"code": ..., "msg": ...}``)."""

    stream: str = ""
    data: Payload | None = None
    event: Payload | None = None
    e: str = ""
    s: str = ""
    id: int | str | None = None
    code: int = 0
    msg: str = ""
    error: dict[str, Any] | None = None


class DepthSnapshot(msgspec.Struct, gc=False):
    """``GET /api/v3/depth`` (spot) or ``/fapi/v1/depth`` / ``/dapi/v1/depth`` (futures,
    which add ``E``/``T``)."""

    lastUpdateId: int
    bids: Rows
    asks: Rows
    E: int = 0
    T: int = 0


class SymbolInfo(msgspec.Struct, gc=False):
    symbol: str
    baseAsset: str
    quoteAsset: str
    filters: list[dict[str, Any]] = []
    status: str = ""
    contractStatus: str = ""
    contractType: str = ""
    contractSize: int = 0
    baseAssetPrecision: int = 0
    quoteAssetPrecision: int = 0
    quotePrecision: int = 0
    pricePrecision: int = 0
    quantityPrecision: int = 0


class RateLimitInfo(msgspec.Struct, gc=False):
    rateLimitType: str
    interval: str
    intervalNum: int
    limit: int


class ExchangeInfo(msgspec.Struct, gc=False):
    symbols: list[SymbolInfo] = []
    rateLimits: list[RateLimitInfo] = []


_frame_decoder = msgspec.json.Decoder(Frame)
_payload_decoder = msgspec.json.Decoder(Payload)
_snapshot_decoder = msgspec.json.Decoder(DepthSnapshot)
_info_decoder = msgspec.json.Decoder(ExchangeInfo)

# ---------------------------------------------------------------------------------------
# Book-sync rules
# ---------------------------------------------------------------------------------------


class SpotRule:
    """Spot / Binance.US: drop ``u <= lastUpdateId``; the first kept diff has
    ``U <= lastUpdateId + 1 <= u``; then ``U == prev.u + 1``."""

    def stale(self, snapshot_id: int, diff: Diff) -> bool:
        return diff.last <= snapshot_id

    def bridges(self, snapshot_id: int, diff: Diff) -> bool:
        return diff.first <= snapshot_id + 1 <= diff.last

    def follows(self, prev: Diff, diff: Diff) -> bool:
        return diff.first == prev.last + 1

    def trim(self, snapshot_id: int, diff: Diff) -> Diff:
        # sizes are absolute: re-applying the part the snapshot already holds is harmless
        return diff


class FuturesRule:
    """USD-M / COIN-M: drop ``u < lastUpdateId`` (a diff with ``u == lastUpdateId`` is
    applied); the first kept diff has ``U <= lastUpdateId <= u``; then ``pu == prev.u``
    (update ids are shared by all symbols, so ``U`` does not continue ``prev.u``)."""

    def stale(self, snapshot_id: int, diff: Diff) -> bool:
        return diff.last < snapshot_id

    def bridges(self, snapshot_id: int, diff: Diff) -> bool:
        return diff.first <= snapshot_id <= diff.last

    def follows(self, prev: Diff, diff: Diff) -> bool:
        return diff.prev == prev.last

    def trim(self, snapshot_id: int, diff: Diff) -> Diff:
        return diff


# ---------------------------------------------------------------------------------------
# Signing (private REST)
# ---------------------------------------------------------------------------------------


def sign(payload: str, secret: str) -> str:
    """Hex HMAC-SHA256 of the exact query string / body, as Binance's SIGNED endpoints
    require (https://developers.binance.com/docs/binance-spot-api-docs/rest-api/
    endpoint-security-type, "SIGNED Endpoint Examples for POST /api/v3/order")."""
    return hmac.new(secret.encode(), payload.encode(), hashlib.sha256).hexdigest()


def encode_query(params: Iterable[tuple[str, Any]]) -> str:
    """``k=v&k=v`` in the given order (the order is part of what gets signed)."""
    return "&".join(f"{k}={quote(str(v), safe='-_.~')}" for k, v in params)


def credentials(exchange: str, env: Mapping[str, str] | None = None) -> tuple[str, str]:
    """``(api_key, secret)`` from ``<EXCHANGE>_API_KEY`` / ``<EXCHANGE>_API_SECRET``."""
    env = os.environ if env is None else env
    key = env.get(f"{exchange}_API_KEY", "")
    secret = env.get(f"{exchange}_API_SECRET", "")
    if not key or not secret:
        raise AuthError(
            exchange, f"set {exchange}_API_KEY and {exchange}_API_SECRET for private endpoints"
        )
    return key, secret


# ---------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------


def _filter(filters: list[dict[str, Any]], kind: str, key: str) -> str | None:
    for f in filters:
        if f.get("filterType") == kind and f.get(key) is not None:
            return str(f[key])
    return None


def _round_fixed(text: str, decimals: int) -> int:
    """Decimal text -> fixed point, rounding half-even beyond ``decimals`` (index prices
    carry more digits than the tick)."""
    try:
        return parse_fixed(text, decimals)
    except FixedPointError:
        return int(Decimal(text).scaleb(decimals).quantize(Decimal(1), rounding=ROUND_HALF_EVEN))


def fixed(text: str, decimals: int) -> int:
    """:func:`kernel.fixedpoint.parse_fixed` with a fast path for Binance's plain
    decimals (``"61837.63000000"`` at 8 decimals); anything else (exponent, underscores,
    more digits than ``decimals``) goes through ``parse_fixed``, which raises
    :class:`~kernel.fixedpoint.FixedPointError` rather than round."""
    dot = text.find(".")
    n = len(text) - dot - 1
    if dot > 0 and n <= decimals and "_" not in text:
        try:
            return int(text.replace(".", "", 1)) * POW10[decimals - n]
        except ValueError:
            pass
    return parse_fixed(text, decimals)


SPOT_DEPTH_WEIGHTS = {
    5: 5.0,
    10: 5.0,
    20: 5.0,
    50: 5.0,
    100: 5.0,
    500: 25.0,
    1000: 50.0,
    5000: 250.0,
}
"""GET /api/v3/depth weight by ``limit`` (spot REST docs, Market data endpoints, Order book:
5 / 25 / 50 / 250 for limit 1-100 / 101-500 / 501-1000 / 1001-5000)."""
FUTURES_DEPTH_WEIGHTS = {5: 2.0, 10: 2.0, 20: 2.0, 50: 2.0, 100: 5.0, 500: 10.0, 1000: 20.0}
"""GET /fapi/v1/depth and /dapi/v1/depth weight by ``limit`` (futures REST docs, Order Book)."""


def rest_weight_table(prefix: str, depth: Mapping[int, float], info: float) -> dict[str, float]:
    """Endpoint name -> weight; depth endpoints are named with their limit
    (``/api/v3/depth?limit=1000``) because Binance weighs them by it."""
    table = {f"{prefix}/depth?limit={n}": w for n, w in depth.items()}
    table[f"{prefix}/exchangeInfo"] = info
    return table


def _is_decimal(text: str) -> bool:
    try:
        return Decimal(text).is_finite()
    except ArithmeticError:
        return False


_MEMO: tuple[dict[str, int], ...] = tuple({} for _ in range(13))
"""Parsed decimal texts by precision (0..12 decimals), shared by all instruments."""
_MEMO_MAX = 200_000


# ---------------------------------------------------------------------------------------
# The adapter
# ---------------------------------------------------------------------------------------


class BinanceBase(ExchangeInterface):
    """The shared Binance implementation; the four venues differ only in class vars."""

    kind: ClassVar[InstrumentKind] = "spot"
    feed_id: ClassVar[str] = ""
    """The instruments' data-feed id (``Instrument.venue``)."""
    api_prefix: ClassVar[str] = "/api/v3"
    futures: ClassVar[bool] = False
    routed: ClassVar[bool] = False
    """USD-M: streams are split over routed paths (``/public``, ``/market``)."""
    depth_weights: ClassVar[dict[int, float]] = SPOT_DEPTH_WEIGHTS
    weight_per_minute: ClassVar[float] = 1200.0
    """Default REST budget; lowered to ``exchangeInfo.rateLimits`` when that is smaller."""

    def __init__(
        self,
        config: FeedConfig,
        *,
        known_instruments: Iterable[Instrument] = (),
        **kwargs: Any,
    ) -> None:
        if "limiter" not in kwargs or kwargs["limiter"] is None:
            kwargs["limiter"] = RateLimiter.per_minute(
                self.weight_per_minute, weights=dict(self.rest_weights)
            )
        super().__init__(config, **kwargs)
        self.rule: SpotRule | FuturesRule = FuturesRule() if self.futures else SpotRule()
        self.known = {(i.exchange, i.symbol): i for i in known_instruments}
        self.books: dict[str, BufferedBook] = {}
        extra = config.extra
        self.depth_interval: str = extra.get("depth_interval", "100ms")
        self.trade_stream: str = extra.get("trade_stream", "aggTrade")
        self.mark_interval: str = extra.get("mark_interval", "1s")
        self.full_precision = bool(extra.get("full_precision", False))
        self.depth_limit: int = int(extra.get("depth_limit", 1000))
        self.poll_depth_limit: int = int(extra.get("poll_depth_limit", 100))
        for limit in (self.depth_limit, self.poll_depth_limit):
            if limit not in self.depth_weights:
                raise ValueError(
                    f"depth limit {limit}: {self.exchange} takes {sorted(self.depth_weights)}"
                )
        self.route = self._route(config, extra)
        self.time_unit: str = str(extra.get("time_unit", "")).upper()
        self._ts_mult = 1_000 if self.time_unit == "MICROSECOND" else MS
        self._pending_tickers: dict[str, deque[Payload]] = {}
        self.bbo_checks = 0
        """bookTicker frames compared with the local book at the same update id."""
        self.bbo_unverified = 0
        """bookTicker frames whose update id the local book never stopped at."""
        self.server_shutdowns = 0
        self.unrepresentable = 0
        """Levels, trades and tickers left out: a value finer than the instrument's
        precision (an order from before a tick/step change)."""
        self._warned: set[tuple[str, str]] = set()
        if self.trade_stream not in ("aggTrade", "trade"):
            raise ValueError(f"trade_stream must be aggTrade or trade, not {self.trade_stream}")

    def _route(self, config: FeedConfig, extra: Mapping[str, Any]) -> str:
        if not self.routed or extra.get("legacy_url"):
            return ""
        public = set(config.channels) & PUBLIC_CHANNELS
        market = set(config.channels) & MARKET_CHANNELS
        if public and market:
            raise ValueError(
                f"USD-M streams are split by route (book/bbo on /public, trades/funding on "
                f"/market; one connection cannot carry both): use "
                f"{type(self).__name__}.split(config), one adapter per route"
            )
        return "market" if market else "public"

    @classmethod
    def split(cls, config: FeedConfig, **kwargs: Any) -> list[BinanceBase]:
        """One adapter per routed path the config's channels need (USD-M: ``/public``
        for book and bbo, ``/market`` for trades and funding); run them side by side into
        the same sink. Venues without routes get one adapter."""
        if not cls.routed or config.extra.get("legacy_url"):
            return [cls(config, **kwargs)]
        out: list[BinanceBase] = []
        for group in (PUBLIC_CHANNELS, MARKET_CHANNELS):
            channels = frozenset(config.channels) & group
            if channels:
                out.append(cls(dataclasses.replace(config, channels=channels), **kwargs))
        return out

    # -- construction from config ------------------------------------------------------

    @classmethod
    def limiter_from_config(
        cls, weight_per_minute: float | None = None, weights: Mapping[str, float] | None = None
    ) -> RateLimiter:
        """A limiter from ``config/exchanges.yaml`` (``rest_weight_per_minute``,
        ``rest_weights`` keyed by REST path) over the class defaults."""
        merged = dict(cls.rest_weights)
        merged.update({k: float(v) for k, v in (weights or {}).items() if k in merged})
        return RateLimiter.per_minute(weight_per_minute or cls.weight_per_minute, weights=merged)

    # -- paths ---------------------------------------------------------------------------

    @property
    def depth_path(self) -> str:
        return f"{self.api_prefix}/depth"

    @property
    def info_path(self) -> str:
        return f"{self.api_prefix}/exchangeInfo"

    # -- instruments ---------------------------------------------------------------------

    def parse_exchange_info(self, body: bytes | str) -> dict[str, Instrument]:
        """Every instrument of ``exchangeInfo`` this venue can represent, by wire symbol.

        Tick and lot come from the ``PRICE_FILTER.tickSize`` / ``LOT_SIZE.stepSize``
        filters, base and quote from ``baseAsset`` / ``quoteAsset`` (never by splitting
        the symbol). A known instrument (``config/instruments.yaml``) keeps its fees and
        its decimals where they are at least the venue's (a warning names any that are
        coarser than the venue's data).
        """
        try:
            info = _info_decoder.decode(body)
        except msgspec.DecodeError as exc:
            raise BadResponse(self.exchange, f"exchangeInfo: {exc}") from None
        self._apply_rate_limits(info.rateLimits)
        out: dict[str, Instrument] = {}
        for s in info.symbols:
            if self.futures and s.contractType != "PERPETUAL":
                continue
            tick = _filter(s.filters, "PRICE_FILTER", "tickSize")
            lot = _filter(s.filters, "LOT_SIZE", "stepSize")
            if tick is None or lot is None:
                continue
            notional = (
                _filter(s.filters, "NOTIONAL", "minNotional")
                or _filter(s.filters, "MIN_NOTIONAL", "minNotional")
                or _filter(s.filters, "MIN_NOTIONAL", "notional")
                or "0"
            )
            # Decimals: those of the tick and the step (what config/instruments.yaml
            # uses), or with full_precision the venue's (futures pricePrecision /
            # quantityPrecision, spot the assets' 8). Books hold levels off today's tick
            # and step (resting orders from before an increment change: NKNUSDT
            # 2021-10-12 bids at 0.25974 with a tick of 0.0001, CTKUSDT-perp 0.50579 with
            # 0.001, BTCUSDT 2024-08-08 asks of 25.426189 BTC with a step of 0.00001):
            # at tick/step precision they cannot be written and are left out, counted
            # (``unrepresentable``); full_precision keeps them.
            price_decimals, size_decimals = decimals_of(tick), decimals_of(lot)
            if self.full_precision:
                if self.futures:
                    price_prec, size_prec = s.pricePrecision, s.quantityPrecision
                else:
                    price_prec = s.quoteAssetPrecision or s.quotePrecision
                    size_prec = s.baseAssetPrecision
                price_decimals = min(12, max(price_decimals, price_prec))
                size_decimals = min(12, max(size_decimals, size_prec))
            try:
                inst = instrument_from_increments(
                    self.exchange,
                    base=s.baseAsset,
                    quote=s.quoteAsset,
                    kind=self.kind,
                    tick=tick,
                    lot=lot,
                    wire_symbol=s.symbol,
                    venue=self.feed_id,
                    min_notional=notional,
                    price_decimals=price_decimals,
                    size_decimals=size_decimals,
                )
                inst = self._merge_known(inst, tick, lot, notional)
            except ValueError as exc:
                log.warning("instrument_skipped", exchange=self.exchange, symbol=s.symbol, e=exc)
                continue
            out[s.symbol.upper()] = inst
        return out

    def _merge_known(self, inst: Instrument, tick: str, lot: str, notional: str) -> Instrument:
        known = self.known.get((inst.exchange, inst.symbol))
        if known is None:
            return inst
        pd = max(known.price_decimals, inst.price_decimals)
        sd = max(known.size_decimals, inst.size_decimals)
        if (pd, sd) != (known.price_decimals, known.size_decimals):
            log.warning(
                "instrument_precision",
                exchange=inst.exchange,
                symbol=inst.symbol,
                configured=(known.price_decimals, known.size_decimals),
                venue=(inst.price_decimals, inst.size_decimals),
                using=(pd, sd),
            )
        return instrument_from_increments(
            inst.exchange,
            base=inst.base,
            quote=inst.quote,
            kind=inst.kind,
            tick=tick,
            lot=lot,
            wire_symbol=inst.wire_symbol,
            venue=inst.venue,
            min_notional=notional,
            maker_fee_ppm=known.maker_fee_ppm,
            taker_fee_ppm=known.taker_fee_ppm,
            price_decimals=pd,
            size_decimals=sd,
        )

    def _apply_rate_limits(self, limits: list[RateLimitInfo]) -> None:
        seconds = {"SECOND": 1, "MINUTE": 60, "HOUR": 3600, "DAY": 86400}
        for rl in limits:
            if rl.rateLimitType != "REQUEST_WEIGHT" or rl.interval not in seconds:
                continue
            per_s = rl.limit / (seconds[rl.interval] * max(1, rl.intervalNum))
            bucket = self.limiter.bucket
            if per_s < bucket.refill_per_s:
                bucket.refill_per_s = per_s
                bucket.capacity = min(bucket.capacity, float(rl.limit))

    def select(self, table: Mapping[str, Instrument]) -> list[Instrument]:
        """The configured symbols (wire ``BTCUSDT`` or normalised ``BTC-USDT``) from the
        venue's table."""
        by_symbol = {i.symbol: i for i in table.values()}
        chosen: list[Instrument] = []
        for want in self.config.symbols:
            inst = table.get(want.upper()) or by_symbol.get(want.upper())
            if inst is None and self.kind == "perp" and not want.upper().endswith("-PERP"):
                inst = by_symbol.get(want.upper() + "-PERP")
            if inst is None:
                raise ValueError(
                    f"{self.exchange} ({self.feed_id or 'spot'}): no instrument {want!r} in "
                    f"exchangeInfo ({len(table)} known; dated futures are not supported)"
                )
            chosen.append(inst)
        return chosen

    def set_instruments(self, instruments: Iterable[Instrument]) -> None:
        """Subscribe these instruments (what :meth:`load_instruments` does after REST)."""
        self.instruments = {i.wire_symbol.upper(): i for i in instruments}
        self.books = {}
        if "book" in self.config.channels:
            for w, i in self.instruments.items():
                book = BufferedBook(i, self.rule, self.config.max_buffer)
                # levels off today's tick / step are real (see parse_exchange_info)
                book.local.book.tick_size = 1
                book.local.book.lot_size = 1
                self.books[w] = book
        self._pending_tickers = {w: deque() for w in self.books}

    async def load_instruments(self) -> list[Instrument]:
        body = await self.http_request(
            "GET", self.info_path, endpoint=self.info_path, priority=PRIORITY_OTHER
        )
        chosen = self.select(self.parse_exchange_info(body))
        self.set_instruments(chosen)
        return chosen

    # -- connection ---------------------------------------------------------------------

    def streams(self) -> list[str]:
        """Stream names for the URL, lower case (``btcusdt@depth@100ms``)."""
        ch = self.config.channels
        out: list[str] = []
        for wire in self.instruments:
            w = wire.lower()
            if "book" in ch:
                out.append(
                    f"{w}@depth@{self.depth_interval}" if self.depth_interval else f"{w}@depth"
                )
            if "trades" in ch:
                out.append(f"{w}@{self.trade_stream}")
            if "funding" in ch and self.futures:
                out.append(
                    f"{w}@markPrice@{self.mark_interval}"
                    if self.mark_interval
                    else f"{w}@markPrice"
                )
            if "bbo" in ch:
                out.append(f"{w}@bookTicker")
        if len(out) > 1024:
            raise ValueError(f"{len(out)} streams: Binance allows 1024 per connection")
        return out

    async def ws_endpoint(self) -> str:
        base = (self.config.ws_url or self.default_ws_url).rstrip("/")
        if self.route:
            base = f"{base}/{self.route}"
        url = f"{base}/stream?streams={'/'.join(self.streams())}"
        if self.time_unit:
            url += f"&timeUnit={self.time_unit}"
        return url

    def subscribe_frames(self) -> list[str]:
        return []  # the streams are in the URL

    def on_connected(self) -> None:
        for book in self.books.values():
            book.reset()
        for pending in self._pending_tickers.values():
            pending.clear()

    # -- REST snapshot -------------------------------------------------------------------

    async def fetch_snapshot(
        self, wire_symbol: str, priority: Priority, limit: int | None = None
    ) -> list[Event]:
        if wire_symbol not in self.books:
            return []
        limit = limit or self.depth_limit
        body = await self.http_request(
            "GET",
            self.depth_path,
            endpoint=f"{self.depth_path}?limit={limit}",
            priority=priority,
            params={"symbol": wire_symbol, "limit": limit},
        )
        return self.apply_snapshot(wire_symbol, body, self.clock.now_ns())

    async def poll_rest(self) -> list[Event]:
        """While the WebSocket is down: shallow snapshots (``poll_depth_limit``, 100 by
        default: weight 5 instead of 50) of every book; the next connection resyncs
        from a full one."""
        out: list[Event] = []
        for wire in list(self.books):
            out.extend(await self.fetch_snapshot(wire, PRIORITY_POLL, self.poll_depth_limit))
        return out

    def apply_snapshot(self, wire_symbol: str, body: bytes | str, ts_recv: int) -> list[Event]:
        """Apply a REST depth body to the symbol's book (and the buffered diffs after
        it). Raises ``SnapshotTooOld`` / ``SequenceGap`` as :class:`BufferedBook` does."""
        book = self.books[wire_symbol.upper()]
        try:
            snap = _snapshot_decoder.decode(body)
        except msgspec.DecodeError as exc:
            raise BadResponse(self.exchange, f"depth snapshot: {exc}", book.inst.symbol) from None
        bids = tuple(lvl for lvl in self._levels(book.inst, snap.bids) if lvl[1])
        asks = tuple(lvl for lvl in self._levels(book.inst, snap.asks) if lvl[1])
        ts_event = (snap.T or snap.E) * MS if (snap.T or snap.E) else ts_recv
        events = book.on_snapshot(snap.lastUpdateId, bids, asks, ts_event, ts_recv)
        if self._pending_tickers.get(book.inst.wire_symbol.upper()):
            try:
                self._check_bbo(book, self._current_id(book))
            except ChecksumMismatch as exc:
                # nothing of this snapshot is emitted; the snapshot task journals the
                # resync and fetches another (a ChecksumMismatch would end that task)
                raise BookInvalid(self.exchange, exc.message, book.inst.symbol) from exc
        return events

    # -- frames --------------------------------------------------------------------------

    def on_frame(self, frame: str | bytes, ts_recv: int) -> list[Event]:
        try:
            msg = _frame_decoder.decode(frame)
        except msgspec.DecodeError as exc:
            raise MalformedMessage(self.exchange, f"undecodable frame: {exc}") from None
        d = msg.data
        if d is None:
            if msg.stream:
                raise MalformedMessage(self.exchange, f"frame for {msg.stream} without data")
            if msg.s:  # a raw (/ws/...) stream frame: the payload is the frame itself
                try:
                    d = _payload_decoder.decode(frame)
                except msgspec.DecodeError as exc:
                    raise MalformedMessage(self.exchange, f"bad raw frame: {exc}") from None
            else:
                return self._control(msg)
        e = d.e
        if e == "depthUpdate":
            return self._on_depth(d, ts_recv)
        if e == "aggTrade" or e == "trade":
            return self._on_trade(d, ts_recv)
        if e == "markPriceUpdate":
            return self._on_mark(d, ts_recv)
        if e == "bookTicker" or (not e and isinstance(d.b, str) and d.u):
            self._on_ticker(d)
            return []
        if e == "serverShutdown":
            self._server_shutdown()
        return []  # klines and other streams nobody asked for

    def _control(self, msg: Frame) -> list[Event]:
        shutdown = msg.e == "serverShutdown" or (
            msg.event is not None and msg.event.e == "serverShutdown"
        )
        if shutdown:
            self._server_shutdown()
        elif msg.code or msg.error:
            log.warning(
                "venue_error",
                exchange=self.exchange,
                code=msg.code,
                msg=msg.msg,
                error=msg.error,
                id=msg.id,
            )
        return []

    def _server_shutdown(self) -> None:
        """The venue will drop this connection: close it now; the run loop reconnects
        (and every book resyncs from a fresh snapshot)."""
        self.server_shutdowns += 1
        log.info("server_shutdown", exchange=self.exchange)
        ws = self._ws
        if ws is not None:
            self._spawn(ws.close(code=1000, reason="serverShutdown"))

    def _inst(self, wire: str) -> Instrument:
        inst = self.instruments.get(wire)
        if inst is None:
            inst = self.instruments.get(wire.upper())
            if inst is None:
                raise MalformedMessage(self.exchange, f"frame for unsubscribed symbol {wire!r}")
        return inst

    def _levels(self, inst: Instrument, rows: Any) -> tuple[Level, ...]:
        """Prices and sizes at the instrument's precision, not checked against today's
        tick and lot (see :meth:`parse_exchange_info`). A price finer than the precision
        is left out; a size finer than it makes the level absent (size 0). The same
        texts recur all the time (prices near the touch, round sizes), so parsed values
        are memoised per precision: a dict hit is ~20x cheaper than parsing."""
        pd, sd = inst.price_decimals, inst.size_decimals
        pc = _MEMO[pd]
        sc = _MEMO[sd]
        try:  # fast path: every text seen before
            return tuple([(pc[p], sc[q]) for p, q in rows])
        except KeyError:
            pass
        except (TypeError, ValueError) as exc:
            raise MalformedMessage(self.exchange, f"bad levels: {exc}", inst.symbol) from None
        if len(pc) > _MEMO_MAX or len(sc) > _MEMO_MAX:
            pc.clear()
            sc.clear()
        out: list[Level] = []
        append = out.append
        for p, q in rows:
            pv = pc.get(p)
            if pv is None:
                try:
                    pv = pc[p] = fixed(p, pd)
                except (ValueError, TypeError):
                    self._too_fine(inst, "price", p)
                    continue
            qv = sc.get(q)
            if qv is None:
                try:
                    qv = sc[q] = fixed(q, sd)
                except (ValueError, TypeError):
                    self._too_fine(inst, "size", q)
                    qv = 0
            append((pv, qv))
        return tuple(out)

    def _too_fine(self, inst: Instrument, what: str, text: Any) -> None:
        """A value that is a number but finer than the instrument's precision is counted
        and logged; anything else is a malformed frame."""
        if not isinstance(text, str) or not _is_decimal(text):
            raise MalformedMessage(self.exchange, f"bad {what} {text!r}", inst.symbol)
        self.unrepresentable += 1
        key = (inst.symbol, what)
        if key in self._warned:
            return
        self._warned.add(key)
        log.warning(
            "value_finer_than_instrument",
            exchange=self.exchange,
            symbol=inst.symbol,
            what=what,
            value=text,
            decimals=inst.price_decimals if what.endswith("price") else inst.size_decimals,
            hint="left out (counted in unrepresentable, logged once per symbol); "
            "FeedConfig.extra full_precision keeps such values",
        )

    def _on_depth(self, d: Payload, ts_recv: int) -> list[Event]:
        wire = d.s
        book = self.books.get(wire)
        if book is None:
            if wire.upper() in self.instruments:
                return []  # book channel not subscribed
            raise MalformedMessage(self.exchange, f"depth for unsubscribed symbol {wire!r}")
        inst = book.inst
        if not isinstance(d.b, list) or not isinstance(d.a, list):
            raise MalformedMessage(self.exchange, "depthUpdate without level lists", inst.symbol)
        diff = Diff(
            d.U,
            d.u,
            d.pu,
            self._levels(inst, d.b),
            self._levels(inst, d.a),
            (d.T or d.E) * self._ts_mult,
            ts_recv,
        )
        if not book.synced:
            book.on_diff(diff)
            if wire not in self._pending_snapshots:
                self.request_snapshot(wire)
            return []
        events = book.on_diff(diff)
        if events and self._pending_tickers[wire]:
            self._check_bbo(book, diff.last)
        return events

    def _on_trade(self, d: Payload, ts_recv: int) -> list[Event]:
        inst = self._inst(d.s)
        if d.X and d.X != "MARKET":
            return []  # futures insurance-fund / ADL prints: no aggressor
        trade_id = d.a if d.e == "aggTrade" else d.t
        if not isinstance(trade_id, int):
            raise MalformedMessage(self.exchange, "trade without an integer id", inst.symbol)
        try:
            price = fixed(d.p, inst.price_decimals)
            size = fixed(d.q, inst.size_decimals)
        except ValueError:
            for what, text, dec in (
                ("trade price", d.p, inst.price_decimals),
                ("trade size", d.q, inst.size_decimals),
            ):
                try:
                    fixed(text, dec)
                except ValueError:
                    self._too_fine(inst, what, text)  # garbage raises MalformedMessage
            return []
        return [
            Trade(
                (d.T or d.E) * self._ts_mult,
                ts_recv,
                inst.exchange,
                inst.symbol,
                trade_id,
                str(trade_id),
                price,
                size,
                "sell" if d.m else "buy",
            )
        ]

    def _on_mark(self, d: Payload, ts_recv: int) -> list[Event]:
        inst = self._inst(d.s)
        ts = d.E * self._ts_mult
        pd = inst.price_decimals
        try:
            events: list[Event] = [
                MarkPrice(
                    ts,
                    ts_recv,
                    inst.exchange,
                    inst.symbol,
                    0,
                    _round_fixed(d.p, pd),
                    _round_fixed(d.i, pd) if d.i else 0,
                )
            ]
            if d.r:  # empty for delivery contracts
                events.append(
                    FundingRate(
                        ts,
                        ts_recv,
                        inst.exchange,
                        inst.symbol,
                        0,
                        parse_fixed(d.r, RATE_DECIMALS),
                        d.T * MS if d.T else 0,
                    )
                )
        except (ValueError, ArithmeticError) as exc:
            raise MalformedMessage(self.exchange, f"bad markPrice: {exc}", inst.symbol) from None
        return events

    # -- bookTicker cross-check -----------------------------------------------------------

    def _on_ticker(self, d: Payload) -> None:
        """Queue a bookTicker until the book reaches its update id (parsed only then:
        most tickers fall between two depth messages and are never compared)."""
        pending = self._pending_tickers.get(d.s)
        if pending is None:
            return  # no book kept for this symbol
        if pending and pending[-1].u >= d.u:
            return  # out of order / repeated: nothing to learn
        pending.append(d)
        if len(pending) > 10_000:
            pending.popleft()
            self.bbo_unverified += 1
        book = self.books.get(d.s)
        if book is not None and book.synced:
            self._check_bbo(book, self._current_id(book))

    @staticmethod
    def _current_id(book: BufferedBook) -> int:
        return book.last.last if book.last is not None else book.snapshot_id

    def _check_bbo(self, book: BufferedBook, current: int) -> None:
        """Compare the pending tickers whose update id the book has reached."""
        pending = self._pending_tickers[book.inst.wire_symbol.upper()]
        while pending and pending[0].u < current:
            pending.popleft()
            self.bbo_unverified += 1
        if not pending or pending[0].u != current:
            return
        t = pending.popleft()
        inst = book.inst
        pd, sd = inst.price_decimals, inst.size_decimals
        if not isinstance(t.b, str) or not isinstance(t.a, str):
            raise MalformedMessage(self.exchange, "bookTicker without prices", inst.symbol)
        try:
            bid_t = (fixed(t.b, pd), fixed(t.B, sd))
            ask_t = (fixed(t.a, pd), fixed(t.A, sd))
        except ValueError:
            if not all(_is_decimal(x) for x in (t.b, t.B, t.a, t.A)):
                raise MalformedMessage(self.exchange, "bad bookTicker", inst.symbol) from None
            self.bbo_unverified += 1  # finer than the instrument: nothing to compare
            return
        self.bbo_checks += 1
        ours = book.local.book
        bid = ours.best_bid() or (0, 0)
        ask = ours.best_ask() or (0, 0)
        if bid != bid_t or ask != ask_t:
            book.reset()
            pending.clear()
            raise ChecksumMismatch(
                self.exchange,
                f"bookTicker u={t.u} bid {bid_t} ask {ask_t}, local book bid {bid} ask {ask}",
                inst.symbol,
            )

    # -- private REST ----------------------------------------------------------------------

    async def signed_request(
        self,
        method: str,
        path: str,
        params: Iterable[tuple[str, Any]] = (),
        *,
        endpoint: str | None = None,
        recv_window_ms: int = 5000,
        env: Mapping[str, str] | None = None,
    ) -> bytes:
        """A SIGNED endpoint: ``timestamp`` and ``recvWindow`` appended, the query string
        signed with the secret, the key in ``X-MBX-APIKEY``."""
        key, secret = credentials(self.exchange, env)
        pairs = [*params, ("recvWindow", recv_window_ms), ("timestamp", self.clock.now_ns() // MS)]
        query = encode_query(pairs)
        query += f"&signature={sign(query, secret)}"
        return await self.http_request(
            method,
            f"{path}?{query}",
            endpoint=endpoint or path,
            headers={"X-MBX-APIKEY": key},
        )


class BinanceSpot(BinanceBase):
    """Binance spot (``BINANCE``)."""

    exchange: ClassVar[str] = "BINANCE"
    default_ws_url: ClassVar[str] = "wss://stream.binance.com:9443"
    default_rest_url: ClassVar[str] = "https://api.binance.com"
    # exchangeInfo: weight 20 (spot REST docs, General endpoints, Exchange information)
    rest_weights: ClassVar[dict[str, float]] = rest_weight_table(
        "/api/v3", SPOT_DEPTH_WEIGHTS, 20.0
    )
    weight_per_minute: ClassVar[float] = 1200.0


class BinanceUS(BinanceSpot):
    """Binance.US (``BINANCEUS``): spot's protocol on its own hosts, no futures."""

    exchange: ClassVar[str] = "BINANCEUS"
    default_ws_url: ClassVar[str] = "wss://stream.binance.us:9443"
    default_rest_url: ClassVar[str] = "https://api.binance.us"


class BinanceUsdm(BinanceBase):
    """USD-M perpetual futures (``BINANCE``, ``BTC-USDT-PERP``, feed ``binance-futures``)."""

    exchange: ClassVar[str] = "BINANCE"
    kind: ClassVar[InstrumentKind] = "perp"
    feed_id: ClassVar[str] = "binance-futures"
    futures: ClassVar[bool] = True
    routed: ClassVar[bool] = True
    depth_weights: ClassVar[dict[int, float]] = FUTURES_DEPTH_WEIGHTS
    api_prefix: ClassVar[str] = "/fapi/v1"
    # since 2026-04-23 streams go to routed paths of this host (/public, /market):
    # https://developers.binance.com/docs/derivatives/usds-margined-futures/
    # websocket-market-streams/Important-WebSocket-Change-Notice
    default_ws_url: ClassVar[str] = "wss://fstream.binance.com"
    default_rest_url: ClassVar[str] = "https://fapi.binance.com"
    rest_weights: ClassVar[dict[str, float]] = rest_weight_table(
        "/fapi/v1", FUTURES_DEPTH_WEIGHTS, 1.0
    )
    weight_per_minute: ClassVar[float] = 2400.0


class BinanceCoinm(BinanceUsdm):
    """COIN-M perpetual futures (``BINANCE``, ``BTC-USD-PERP``, feed ``binance-delivery``).
    Sizes are contracts."""

    feed_id: ClassVar[str] = "binance-delivery"
    routed: ClassVar[bool] = False
    api_prefix: ClassVar[str] = "/dapi/v1"
    default_ws_url: ClassVar[str] = "wss://dstream.binance.com"
    default_rest_url: ClassVar[str] = "https://dapi.binance.com"
    rest_weights: ClassVar[dict[str, float]] = rest_weight_table(
        "/dapi/v1", FUTURES_DEPTH_WEIGHTS, 1.0
    )


VENUES: dict[str, type[BinanceBase]] = {
    "binance": BinanceSpot,
    "binanceus": BinanceUS,
    "binance-futures": BinanceUsdm,
    "binance-delivery": BinanceCoinm,
}
"""Adapter class by data-feed id."""
