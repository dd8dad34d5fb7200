"""Kraken: spot WebSocket v2 (the default) and v1, and Kraken Futures (perpetuals).

Spot (``KRAKEN``):

* :class:`KrakenExchange` speaks WebSocket v2 (``wss://ws.kraken.com/v2``): JSON objects,
  ``BTC/USD`` symbols, RFC 3339 timestamps, a CRC32 checksum on book snapshots **and**
  updates, prices and sizes as JSON *numbers* that carry the pair's full precision. Frames
  are decoded with msgspec's ``float_hook=str``, so every number keeps its exact text and
  goes straight into fixed point (never through ``float``).
* :class:`KrakenV1Exchange` speaks v1 (``wss://ws.kraken.com``): arrays
  ``[channelID, payload..., channelName, pair]``, ``XBT/USD`` symbols, epoch-second strings
  with microseconds, decimal strings, the checksum ``c`` on updates only, and the optional
  republish flag ``"r"`` as a fourth level element (applied like any other level). It is
  here because the only real recorded Kraken stream (``cryptofeed_KRAKEN``) is v1.

Book maintenance follows Kraken's guides (docs.kraken.com/api/docs/guides/spot-ws-book-v2
and spot-ws-book-v1): apply every level of a message, delete ``qty == 0`` levels, truncate
each side to the subscribed depth (Kraken sends no delete for a level that falls out of
range; the emitted :class:`~kernel.events.BookDelta` carries those truncations as size-0
levels so that a consumer replaying the events holds the same book), then verify the CRC32
of the ten best asks (low to high) and bids (high to low), each level written as its price
text then its quantity text with the decimal point removed and leading zeros stripped.
The text is the wire's fixed precision with trailing zeros kept: the book stores integers,
and the checksum renders them at the precision learnt from the snapshot's own texts
(v1 sends more decimals than ``pair_decimals``: ``"354.80000000"`` for XMR/USD whose
``pair_decimals`` is 2), which equals the integer itself scaled by a power of ten.

A checksum mismatch or an update that would cross the book raises
:class:`~adapters.exchanges.base.ChecksumMismatch` / ``BookInvalid``; the run loop journals
``Connectivity(resync)`` and :meth:`KrakenExchange.resync` unsubscribes and resubscribes
that pair's book (Kraken's documented recovery), whose fresh snapshot restarts the book.
There is no REST book needed for sync; while the WebSocket is down the run loop polls the
public ``/0/public/Depth`` endpoint instead.

Instruments come from ``/0/public/AssetPairs``: ``wsname`` (``XBT/USD``), ``altname``
(``XBTUSD``, the REST ``pair`` parameter), ``pair_decimals`` / ``lot_decimals`` (the
fixed-point precision), ``tick_size`` and ``costmin`` where present, the first fee tier.
``XBT`` -> ``BTC`` and ``XDG`` -> ``DOGE`` via :func:`kernel.instruments.normalise_symbol`
applied to the table's own base/quote split of ``wsname``.

REST private calls are signed from the environment (``KRAKEN_API_KEY``,
``KRAKEN_API_SECRET``) with :func:`sign_request`.

Futures (``KRAKENF``): :class:`KrakenFuturesExchange` on ``wss://futures.kraken.com/ws/v1``:
``book_snapshot`` then ``book`` deltas (one level each) with a per-product ``seq`` that
must increase by exactly one (else resync by resubscribing), ``trade`` (taker side), and
the ``ticker`` feed for funding (``relative_funding_rate`` -> ``FundingRate``,
``next_funding_rate_time``) and ``markPrice`` -> ``MarkPrice``.
"""

from __future__ import annotations

import base64
import calendar
import hashlib
import hmac
import os
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any, ClassVar
from urllib.parse import urlencode

import msgspec
import structlog

from adapters.exchanges.base import (
    PRIORITY_OTHER,
    AuthError,
    BadResponse,
    BookInvalid,
    ChecksumMismatch,
    ExchangeError,
    ExchangeInterface,
    FeedConfig,
    LocalBook,
    MalformedMessage,
    Priority,
    RateLimited,
    RateLimiter,
    SequenceGap,
    instrument_from_increments,
)
from kernel.book import BookError
from kernel.events import (
    BookDelta,
    BookSnapshot,
    Event,
    FundingRate,
    Level,
    MarkPrice,
    Side,
    Trade,
)
from kernel.fixedpoint import POW10, RATE_DECIMALS, FixedPointError, parse_fixed
from kernel.instruments import Instrument, InstrumentError, normalise_symbol

log = structlog.get_logger("tickerml.exchanges.kraken")

BOOK_DEPTHS: tuple[int, ...] = (10, 25, 100, 500, 1000)
"""Depths Kraken's ``book`` channel accepts (v1 and v2)."""

CHECKSUM_LEVELS = 10
"""The checksum covers the ten best levels per side, whatever the subscribed depth."""

NS = 1_000_000_000

_decode_json = msgspec.json.Decoder(float_hook=str).decode
"""Untyped decoding that keeps every JSON number with a fraction or exponent as its exact
text (``45285.20`` -> ``"45285.20"``); integers stay ``int``."""

_encode_json = msgspec.json.encode


def book_depth(wanted: int) -> int:
    """The smallest depth Kraken accepts that holds ``wanted`` levels (at most 1000)."""
    for d in BOOK_DEPTHS:
        if d >= wanted:
            return d
    return BOOK_DEPTHS[-1]


# ---------------------------------------------------------------------------------------
# Numbers, times, checksums, signatures
# ---------------------------------------------------------------------------------------


def fixed(value: object, decimals: int) -> int:
    """A decimal text (or a JSON integer) -> an integer of ``10**-decimals`` units, exactly.

    The fast path handles the plain ``[-]digits[.digits]`` texts Kraken sends; anything
    else (an exponent) goes through :func:`kernel.fixedpoint.parse_fixed`. Raises
    ``ValueError`` (``FixedPointError``) if the value would have to be rounded.
    """
    if type(value) is str:
        whole, _, frac = value.partition(".")
        n = len(frac)
        try:
            units = int(whole + frac)
        except ValueError:
            return parse_fixed(value, decimals)
        if n == decimals:
            return units
        if n < decimals:
            return units * POW10[decimals - n]
        q, r = divmod(units, POW10[n - decimals])
        if r:
            raise FixedPointError(f"{value!r} has more than {decimals} decimals")
        return q
    if type(value) is int:
        return value * POW10[decimals]
    raise FixedPointError(f"not a decimal number: {value!r}")


def text_decimals(value: object) -> int:
    """Digits after the decimal point in a number's wire text (``"0.00100000"`` -> 8)."""
    if type(value) is str:
        _, dot, frac = value.partition(".")
        if "e" in value or "E" in value:
            return max(0, -int(Decimal(value).as_tuple().exponent))
        return len(frac) if dot else 0
    return 0


def epoch_ns(text: str) -> int:
    """Kraken v1 epoch seconds (``"1618678133.366461"``) -> integer ns, exactly."""
    whole, _, frac = text.partition(".")
    return int(whole) * NS + (int(frac[:9].ljust(9, "0")) if frac else 0)


_DAY_NS: dict[str, int] = {}


def rfc3339_ns(text: str) -> int:
    """``"2023-09-25T07:49:37.708706Z"`` -> integer ns since the epoch, exactly (UTC)."""
    day = text[:10]
    base = _DAY_NS.get(day)
    if (
        base is not None
        and len(text) >= 20
        and text[10] == "T"
        and text[-1] == "Z"
        and text[13] == ":"
        and text[16] == ":"
    ):
        secs = int(text[11:13]) * 3600 + int(text[14:16]) * 60 + int(text[17:19])
        frac = text[20:-1] if text[19] == "." else ""
        return base + secs * NS + (int(frac[:9].ljust(9, "0")) if frac else 0)
    if base is None and len(text) >= 10:
        y, m, d = int(day[0:4]), int(day[5:7]), int(day[8:10])
        _DAY_NS[day] = calendar.timegm((y, m, d, 0, 0, 0)) * NS
        return rfc3339_ns(text)
    dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    frac_ns = 0
    if "." in text:
        tail = text.split(".", 1)[1]
        n = 0
        while n < len(tail) and tail[n].isdigit():
            n += 1
        frac_ns = int(tail[:n][:9].ljust(9, "0")) if n else 0
    return calendar.timegm(dt.utctimetuple()) * NS + frac_ns


def book_checksum(
    asks: Iterable[Level], bids: Iterable[Level], price_scale: int = 1, qty_scale: int = 1
) -> int:
    """Kraken's book CRC32 (unsigned) of fixed-point levels, best first on each side.

    Each level contributes ``str(price * price_scale) + str(qty * qty_scale)``: for a
    positive integer that *is* the wire text with the decimal point removed and leading
    zeros stripped, when the integer is expressed at the wire's precision (the scales
    convert the book's precision to the wire's). Only the first ten levels count.
    """
    parts: list[str] = []
    for side in (asks, bids):
        for n, (price, qty) in enumerate(side):
            if n == CHECKSUM_LEVELS:
                break
            parts.append(str(price * price_scale))
            parts.append(str(qty * qty_scale))
    return zlib.crc32("".join(parts).encode("ascii"))


def sign_request(uri_path: str, nonce: int | str, postdata: str, secret_b64: str) -> str:
    """Kraken spot REST ``API-Sign``:
    base64(HMAC-SHA512(key=base64decode(secret), msg=uri_path + SHA256(nonce + postdata))).

    From Kraken's "Spot REST Authentication" guide
    (https://docs.kraken.com/api/docs/guides/spot-rest-auth), whose worked example (an
    AddOrder for 1.25 XBTUSD at 37500) is the test vector in tests/test_exchange_kraken.py.
    """
    try:
        key = base64.b64decode(secret_b64, validate=True)
    except (ValueError, TypeError) as exc:
        raise AuthError("KRAKEN", "the API secret is not valid base64") from exc
    digest = hashlib.sha256((str(nonce) + postdata).encode()).digest()
    mac = hmac.new(key, uri_path.encode() + digest, hashlib.sha512)
    return base64.b64encode(mac.digest()).decode()


def _percent_to_ppm(value: object) -> int:
    """A fee in percent (``0.26``, decoded as text) -> parts per million (2600)."""
    return int((Decimal(str(value)) * 10_000).to_integral_value())


def _raise_api_errors(exchange: str, errors: Sequence[str], what: str) -> None:
    """Kraken answers HTTP 200 with ``{"error": [...]}``: map it onto the taxonomy."""
    text = "; ".join(str(e) for e in errors)
    if any(("Rate limit" in e or "Too many requests" in e or "Throttled" in e) for e in errors):
        raise RateLimited(exchange, f"{what}: {text}", retry_after=None, status=200)
    if any(
        e.startswith(("EAPI:Invalid key", "EAPI:Invalid signature", "EAPI:Invalid nonce"))
        or "Permission denied" in e
        for e in errors
    ):
        raise AuthError(exchange, f"{what}: {text}")
    raise BadResponse(exchange, f"{what}: {text}")


# ---------------------------------------------------------------------------------------
# The AssetPairs table
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KrakenPair:
    """One row of ``/0/public/AssetPairs`` and the instrument made from it."""

    key: str
    """The REST result key (``XXBTZUSD``)."""
    altname: str
    """The REST ``pair`` parameter (``XBTUSD``)."""
    wsname: str
    """WebSocket v1 name (``XBT/USD``)."""
    v2name: str
    """WebSocket v2 name (``BTC/USD``)."""
    instrument: Instrument


def _v2_asset(asset: str) -> str:
    return normalise_symbol(asset, "X", "spot").split("-")[0]


def parse_asset_pairs(
    body: bytes | str, exchange: str = "KRAKEN", v2: bool = True
) -> list[KrakenPair]:
    """Every pair with a ``wsname`` in an AssetPairs response, as :class:`KrakenPair` rows.

    The instrument's wire symbol is the v2 name (``BTC/USD``) or, with ``v2=False``, the v1
    ``wsname``. Base and quote come from the table's own split of ``wsname`` (not from
    guessing where ``XXBTZUSD`` splits) and are normalised (``XBT`` -> ``BTC``).
    """
    try:
        doc = _decode_json(body)
        errors = doc.get("error") or []
        result = doc["result"]
    except (msgspec.DecodeError, AttributeError, KeyError, TypeError) as exc:
        raise BadResponse(exchange, f"AssetPairs: unexpected body: {exc}") from exc
    if errors:
        _raise_api_errors(exchange, errors, "AssetPairs")
    out: list[KrakenPair] = []
    for key, row in result.items():
        wsname = row.get("wsname")
        if not wsname or "/" not in wsname:
            continue  # dark-pool ".d" pairs have no WebSocket name
        base, quote = wsname.split("/", 1)
        v2name = f"{_v2_asset(base)}/{_v2_asset(quote)}"
        pd = int(row["pair_decimals"])
        sd = int(row["lot_decimals"])
        tick = row.get("tick_size")
        fees = row.get("fees") or []
        fees_maker = row.get("fees_maker") or fees
        try:
            inst = instrument_from_increments(
                exchange,
                base=base,
                quote=quote,
                kind="spot",
                tick=str(tick) if tick else f"1e-{pd}",
                lot=f"1e-{sd}",
                wire_symbol=v2name if v2 else wsname,
                min_notional=str(row.get("costmin") or "0"),
                taker_fee_ppm=_percent_to_ppm(fees[0][1]) if fees else 0,
                maker_fee_ppm=_percent_to_ppm(fees_maker[0][1]) if fees_maker else 0,
                price_decimals=pd,
                size_decimals=sd,
            )
        except (ValueError, ArithmeticError) as exc:
            log.warning("asset_pair_skipped", pair=key, error=str(exc))
            continue
        out.append(KrakenPair(key, str(row.get("altname", key)), wsname, v2name, inst))
    return out


def resolve_pairs(pairs: Iterable[KrakenPair], symbols: Iterable[str]) -> list[KrakenPair]:
    """The pairs named by ``symbols``: any of ``BTC-USD``, ``BTC/USD``, ``XBT/USD``,
    ``XBTUSD`` or ``XXBTZUSD`` (case-insensitive). Unknown names raise
    :class:`~kernel.instruments.InstrumentError` (a configuration error, not retried)."""
    index: dict[str, KrakenPair] = {}
    for p in pairs:
        for name in (p.key, p.altname, p.wsname, p.v2name, p.instrument.symbol):
            index.setdefault(name.upper(), p)
    out: list[KrakenPair] = []
    for sym in symbols:
        found = index.get(sym.strip().upper())
        if found is None:
            raise InstrumentError(f"KRAKEN: no asset pair {sym!r} in AssetPairs")
        if found not in out:
            out.append(found)
    return out


# ---------------------------------------------------------------------------------------
# One pair's book
# ---------------------------------------------------------------------------------------


class PairBook:
    """The validated local book of one pair plus what its checksum needs.

    ``price_scale`` / ``qty_scale``: 10**(wire decimals - book decimals), learnt from the
    snapshot texts. ``synced`` is False from a checksum failure (or a new connection)
    until the next snapshot.
    """

    __slots__ = (
        "_ask_text",
        "_bid_text",
        "_price_zeros",
        "_qty_zeros",
        "depth",
        "inst",
        "local",
        "pd",
        "price_scale",
        "qty_scale",
        "sd",
        "synced",
        "verified",
    )

    def __init__(self, inst: Instrument, depth: int) -> None:
        self.inst = inst
        self.depth = depth
        self.local = LocalBook(inst)
        self.pd = inst.price_decimals
        self.sd = inst.size_decimals
        self.price_scale = 1
        self.qty_scale = 1
        self._price_zeros = ""
        self._qty_zeros = ""
        self._ask_text: dict[int, tuple[int, str]] = {}
        self._bid_text: dict[int, tuple[int, str]] = {}
        self.synced = False
        self.verified = 0
        """Checksums that matched since this book was created."""

    def learn_scales(self, prices: Iterable[object], qtys: Iterable[object]) -> None:
        pw = max((text_decimals(p) for p in prices), default=0)
        qw = max((text_decimals(q) for q in qtys), default=0)
        self.price_scale = POW10[max(0, pw - self.pd)]
        self.qty_scale = POW10[max(0, qw - self.sd)]
        # str(units * 10**z) is str(units) + z zeros for the positive prices and sizes
        # of a book: append the zeros instead of multiplying
        self._price_zeros = "0" * max(0, pw - self.pd)
        self._qty_zeros = "0" * max(0, qw - self.sd)
        self._ask_text.clear()
        self._bid_text.clear()

    def checksum(self) -> int:
        """CRC32 of the ten best asks then bids. Each level's text is cached by price
        with its size: a message changes one or two of the twenty, so most are reused."""
        book = self.local.book
        pz, qz = self._price_zeros, self._qty_zeros
        parts: list[str] = []
        asz = book.asks.sizes
        cache = self._ask_text
        if len(cache) > 4 * CHECKSUM_LEVELS + 64:
            cache.clear()
        for k in book.asks.keys[: -CHECKSUM_LEVELS - 1 : -1]:
            q = asz[-k]
            c = cache.get(k)
            if c is None or c[0] != q:
                c = (q, f"{-k}{pz}{q}{qz}")
                cache[k] = c
            parts.append(c[1])
        bsz = book.bids.sizes
        cache = self._bid_text
        if len(cache) > 4 * CHECKSUM_LEVELS + 64:
            cache.clear()
        for k in book.bids.keys[: -CHECKSUM_LEVELS - 1 : -1]:
            q = bsz[k]
            c = cache.get(k)
            if c is None or c[0] != q:
                c = (q, f"{k}{pz}{q}{qz}")
                cache[k] = c
            parts.append(c[1])
        return zlib.crc32("".join(parts).encode("ascii"))

    def verify(self, expected: int) -> None:
        got = self.checksum()
        if got != expected:
            self.synced = False
            raise ChecksumMismatch(
                self.inst.exchange,
                f"checksum {got} != venue's {expected}",
                self.inst.symbol,
            )
        self.verified += 1

    def snapshot(
        self,
        bids: tuple[Level, ...],
        asks: tuple[Level, ...],
        ts_event: int,
        ts_recv: int,
        checksum: int | None = None,
    ) -> BookSnapshot:
        try:
            event = self.local.snapshot(bids, asks, ts_event, ts_recv, 0)
        except BookInvalid:
            self.synced = False
            raise
        self.synced = True
        if checksum is not None:
            self.verify(checksum)
        return event

    def update(
        self,
        bids: list[Level],
        asks: list[Level],
        ts_event: int,
        ts_recv: int,
        checksum: int | None,
    ) -> BookDelta:
        """Apply one message, truncate to the depth, verify the checksum."""
        book = self.local.book
        try:
            book.apply_delta(tuple(bids), tuple(asks), ts_event)
        except BookError as exc:
            self.synced = False
            raise BookInvalid(self.inst.exchange, f"update {exc}", self.inst.symbol) from exc
        depth = self.depth
        over = len(book.bids.keys) - depth
        if over > 0:
            for k in book.bids.keys[:over]:
                bids.append((k, 0))
            for price, _ in bids[-over:]:
                book.bids.set(price, 0)
        over = len(book.asks.keys) - depth
        if over > 0:
            for k in book.asks.keys[:over]:
                asks.append((-k, 0))
            for price, _ in asks[-over:]:
                book.asks.set(price, 0)
        if checksum is not None:
            self.verify(checksum)
        inst = self.inst
        return BookDelta(ts_event, ts_recv, inst.exchange, inst.symbol, 0, tuple(bids), tuple(asks))


# ---------------------------------------------------------------------------------------
# Spot, WebSocket v2
# ---------------------------------------------------------------------------------------


class KrakenExchange(ExchangeInterface):
    """Kraken spot over WebSocket v2 (book with checksums, trades)."""

    exchange: ClassVar[str] = "KRAKEN"
    default_ws_url: ClassVar[str] = "wss://ws.kraken.com/v2"
    default_rest_url: ClassVar[str] = "https://api.kraken.com"
    ws_version: ClassVar[int] = 2
    api_key_env: ClassVar[str] = "KRAKEN_API_KEY"
    api_secret_env: ClassVar[str] = "KRAKEN_API_SECRET"

    def __init__(
        self,
        config: FeedConfig,
        *,
        clock: Any = None,
        limiter: RateLimiter | None = None,
        http: Any = None,
    ) -> None:
        # Public REST: about one call per second per IP (a small burst allowed).
        super().__init__(config, clock=clock, limiter=limiter or RateLimiter(5, 1.0), http=http)
        self.depth = book_depth(config.depth)
        self.pairs: dict[str, KrakenPair] = {}
        """By wire symbol (upper case), like :attr:`instruments`."""
        self.books: dict[str, PairBook] = {}
        self._req_id = 0
        self._nonce = 0

    # -- instruments -----------------------------------------------------------------

    async def load_instruments(self) -> list[Instrument]:
        body = await self.http_request("GET", "/0/public/AssetPairs", endpoint="asset_pairs")
        return self.use_asset_pairs(body)

    def use_asset_pairs(self, body: bytes | str) -> list[Instrument]:
        """Take the configured pairs from an AssetPairs body (also for offline parsing)."""
        table = parse_asset_pairs(body, self.exchange, v2=self.ws_version == 2)
        chosen = resolve_pairs(table, self.config.symbols)
        self.pairs = {p.instrument.wire_symbol.upper(): p for p in chosen}
        self.books = {w: PairBook(p.instrument, self.depth) for w, p in self.pairs.items()}
        self.instruments = {w: p.instrument for w, p in self.pairs.items()}
        return [p.instrument for p in chosen]

    @property
    def checksums_verified(self) -> int:
        """Venue checksums that matched the local book, over every pair."""
        return sum(b.verified for b in self.books.values())

    def book(self, wire_symbol: str) -> PairBook:
        try:
            return self.books[wire_symbol]
        except KeyError:
            try:
                return self.books[wire_symbol.upper()]
            except KeyError:
                raise MalformedMessage(
                    self.exchange, f"book frame for unsubscribed pair {wire_symbol!r}"
                ) from None

    # -- subscriptions ---------------------------------------------------------------

    def _next_req_id(self) -> int:
        self._req_id += 1
        return self._req_id

    def _wires(self) -> list[str]:
        return [i.wire_symbol for i in self.instruments.values()]

    def _book_frame(self, method: str, wires: list[str]) -> str:
        params: dict[str, Any] = {"channel": "book", "symbol": wires, "depth": self.depth}
        if method == "subscribe":
            params["snapshot"] = True
        return _encode_json(
            {"method": method, "params": params, "req_id": self._next_req_id()}
        ).decode()

    def subscribe_frames(self) -> list[str]:
        wires = self._wires()
        frames = []
        if "book" in self.config.channels:
            frames.append(self._book_frame("subscribe", wires))
        if "trades" in self.config.channels:
            params = {"channel": "trade", "symbol": wires, "snapshot": False}
            frames.append(
                _encode_json(
                    {"method": "subscribe", "params": params, "req_id": self._next_req_id()}
                ).decode()
            )
        return frames

    def resubscribe_frames(self, wire_symbol: str) -> list[str]:
        """Unsubscribe and subscribe one pair's book: Kraken's way to a fresh snapshot."""
        wire = self.instruments[wire_symbol.upper()].wire_symbol
        return [self._book_frame("unsubscribe", [wire]), self._book_frame("subscribe", [wire])]

    def ping_frame(self) -> str | None:
        return _encode_json({"method": "ping", "req_id": self._next_req_id()}).decode()

    def on_connected(self) -> None:
        for book in self.books.values():
            book.synced = False

    async def resync(self, wire_symbol: str) -> None:
        """A checksum mismatch or an invalid update: resubscribe the pair (no REST)."""
        book = self.books.get(wire_symbol.upper())
        if book is not None:
            book.synced = False
        self.outbox.extend(self.resubscribe_frames(wire_symbol))

    # -- frames ----------------------------------------------------------------------

    def on_frame(self, frame: str | bytes, ts_recv: int) -> list[Event]:
        try:
            msg = _decode_json(frame)
        except msgspec.DecodeError as exc:
            raise MalformedMessage(self.exchange, f"not JSON: {exc}") from exc
        try:
            return self._dispatch(msg, ts_recv)
        except ExchangeError:
            raise
        except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
            raise MalformedMessage(self.exchange, f"bad message: {exc!r}") from exc

    def _dispatch(self, msg: Any, ts_recv: int) -> list[Event]:
        if type(msg) is not dict:
            raise MalformedMessage(self.exchange, "v2 frames are JSON objects")
        channel = msg.get("channel")
        if channel == "book":
            return self._on_book(msg, ts_recv)
        if channel == "trade":
            return self._on_trades(msg["data"], ts_recv)
        if channel in ("heartbeat", "status"):
            return []
        method = msg.get("method")
        if method is not None:
            if msg.get("success") is False:
                log.warning("request_failed", exchange=self.exchange, method=method, reply=msg)
            return []  # subscribe / unsubscribe acks, pong
        if channel is None:
            raise MalformedMessage(self.exchange, "object without channel or method")
        return []  # channels not subscribed here (ticker, ohlc, ...)

    def _on_book(self, msg: dict[str, Any], ts_recv: int) -> list[Event]:
        snapshot = msg["type"] == "snapshot"
        out: list[Event] = []
        for d in msg["data"]:
            book = self.book(d["symbol"])
            if not snapshot and not book.synced:
                continue  # stale updates before the resubscribed snapshot
            pd, sd = book.pd, book.sd
            raw_bids = d.get("bids") or ()
            raw_asks = d.get("asks") or ()
            bids = [(fixed(r["price"], pd), fixed(r["qty"], sd)) for r in raw_bids]
            asks = [(fixed(r["price"], pd), fixed(r["qty"], sd)) for r in raw_asks]
            ts = d.get("timestamp")
            ts_event = rfc3339_ns(ts) if ts else ts_recv
            checksum = d.get("checksum")
            if snapshot:
                rows = [*raw_bids, *raw_asks]
                book.learn_scales((r["price"] for r in rows), (r["qty"] for r in rows))
                out.append(book.snapshot(tuple(bids), tuple(asks), ts_event, ts_recv, checksum))
            else:
                out.append(book.update(bids, asks, ts_event, ts_recv, checksum))
        return out

    def _on_trades(self, data: list[dict[str, Any]], ts_recv: int) -> list[Event]:
        out: list[Event] = []
        ex = self.exchange
        for t in data:
            inst = self.instrument(t["symbol"])
            side = t["side"]
            if side != "buy" and side != "sell":
                raise MalformedMessage(ex, f"trade side {side!r}", inst.symbol)
            tid = t.get("trade_id", 0)
            out.append(
                Trade(
                    rfc3339_ns(t["timestamp"]),
                    ts_recv,
                    ex,
                    inst.symbol,
                    tid if type(tid) is int else 0,
                    str(tid),
                    fixed(t["price"], inst.price_decimals),
                    fixed(t["qty"], inst.size_decimals),
                    side,
                )
            )
        return out

    # -- REST ------------------------------------------------------------------------

    async def rest_public(
        self, path: str, params: dict[str, Any], endpoint: str, priority: Priority
    ) -> Any:
        body = await self.http_request(
            "GET", path, endpoint=endpoint, priority=priority, params=params
        )
        return self._result(body, path)

    def _result(self, body: bytes, what: str) -> Any:
        try:
            doc = _decode_json(body)
            errors = doc.get("error") or []
        except (msgspec.DecodeError, AttributeError) as exc:
            raise BadResponse(self.exchange, f"{what}: not a Kraken reply: {exc}") from exc
        if errors:
            if any("Rate limit" in e or "Too many requests" in e for e in errors):
                self.stats.rate_limited += 1
                self.limiter.penalise(1.0)
            _raise_api_errors(self.exchange, errors, what)
        if "result" not in doc:
            raise BadResponse(self.exchange, f"{what}: no result")
        return doc["result"]

    async def fetch_snapshot(self, wire_symbol: str, priority: Priority) -> list[Event]:
        """``/0/public/Depth`` as a ``BookSnapshot`` (REST fallback while the WS is down).

        The WebSocket book of the pair is marked unsynced: only the next WebSocket
        snapshot restarts checksummed updates.
        """
        wire = wire_symbol.upper()
        pair = self.pairs[wire]
        book = self.books[wire]
        result = await self.rest_public(
            "/0/public/Depth",
            {"pair": pair.altname, "count": self.depth},
            "depth",
            priority,
        )
        try:
            (levels,) = result.values()
            pd, sd = book.pd, book.sd
            bids = tuple((fixed(r[0], pd), fixed(r[1], sd)) for r in levels["bids"])
            asks = tuple((fixed(r[0], pd), fixed(r[1], sd)) for r in levels["asks"])
            stamps = [int(r[2]) for r in (*levels["bids"], *levels["asks"])]
        except (AttributeError, KeyError, IndexError, TypeError, ValueError) as exc:
            raise MalformedMessage(self.exchange, f"Depth: {exc!r}", book.inst.symbol) from exc
        now = self.clock.now_ns()
        ts_event = max(stamps) * NS if stamps else now
        event = book.snapshot(bids, asks, ts_event, now)
        book.synced = False
        return [event]

    def credentials(self) -> tuple[str, str]:
        key = os.environ.get(self.api_key_env, "")
        secret = os.environ.get(self.api_secret_env, "")
        if not key or not secret:
            raise AuthError(
                self.exchange, f"set {self.api_key_env} and {self.api_secret_env} for private calls"
            )
        return key, secret

    def next_nonce(self) -> int:
        """Strictly increasing (microseconds of the injected clock, or last + 1)."""
        self._nonce = max(self._nonce + 1, self.clock.now_ns() // 1000)
        return self._nonce

    async def private_request(
        self, method: str, params: dict[str, Any] | None = None, priority: Priority = PRIORITY_OTHER
    ) -> Any:
        """POST ``/0/private/<method>`` signed with the environment's key pair."""
        key, secret = self.credentials()
        nonce = self.next_nonce()
        postdata = urlencode({"nonce": nonce, **(params or {})})
        path = f"/0/private/{method}"
        headers = {
            "API-Key": key,
            "API-Sign": sign_request(path, nonce, postdata, secret),
            "Content-Type": "application/x-www-form-urlencoded; charset=utf-8",
        }
        body = await self.http_request(
            "POST",
            path,
            endpoint="private",
            priority=priority,
            headers=headers,
            content=postdata.encode(),
        )
        return self._result(body, path)

    async def websocket_token(self) -> str:
        """A fresh token for ``wss://ws-auth.kraken.com`` (one per connection)."""
        result = await self.private_request("GetWebSocketsToken")
        try:
            return str(result["token"])
        except (KeyError, TypeError) as exc:
            raise BadResponse(self.exchange, f"GetWebSocketsToken: {result!r}") from exc


# ---------------------------------------------------------------------------------------
# Spot, WebSocket v1
# ---------------------------------------------------------------------------------------

_V1_SIDES: dict[str, Side] = {"b": "buy", "s": "sell"}


class KrakenV1Exchange(KrakenExchange):
    """Kraken spot over WebSocket v1 (arrays, ``XBT/USD``, checksum on updates)."""

    default_ws_url: ClassVar[str] = "wss://ws.kraken.com"
    ws_version: ClassVar[int] = 1

    def _book_frame(self, method: str, wires: list[str]) -> str:
        return _encode_json(
            {
                "event": method,
                "pair": wires,
                "subscription": {"name": "book", "depth": self.depth},
                "reqid": self._next_req_id(),
            }
        ).decode()

    def subscribe_frames(self) -> list[str]:
        wires = self._wires()
        frames = []
        if "book" in self.config.channels:
            frames.append(self._book_frame("subscribe", wires))
        if "trades" in self.config.channels:
            frames.append(
                _encode_json(
                    {
                        "event": "subscribe",
                        "pair": wires,
                        "subscription": {"name": "trade"},
                        "reqid": self._next_req_id(),
                    }
                ).decode()
            )
        return frames

    def ping_frame(self) -> str | None:
        return _encode_json({"event": "ping", "reqid": self._next_req_id()}).decode()

    def _dispatch(self, msg: Any, ts_recv: int) -> list[Event]:
        if type(msg) is list:
            if len(msg) < 4:
                raise MalformedMessage(self.exchange, f"short channel message ({len(msg)})")
            name = msg[-2]
            if name[:4] == "book":
                return self._on_book_v1(msg, ts_recv)
            if name == "trade":
                return self._on_trades_v1(msg[1], msg[-1], ts_recv)
            return []  # ticker, spread, ohlc: not collected
        if type(msg) is dict:
            event = msg.get("event")
            if event == "subscriptionStatus" and msg.get("status") == "error":
                log.warning("subscription_error", exchange=self.exchange, reply=msg)
            elif event == "error":
                log.warning("venue_error", exchange=self.exchange, reply=msg)
            elif event is None:
                raise MalformedMessage(self.exchange, "object without event")
            return []  # heartbeat, systemStatus, subscriptionStatus, pong
        raise MalformedMessage(self.exchange, "v1 frames are arrays or objects")

    def _on_book_v1(self, msg: list[Any], ts_recv: int) -> list[Event]:
        book = self.book(msg[-1])
        first = msg[1]
        pd, sd = book.pd, book.sd
        if "as" in first or "bs" in first:
            raw_asks = first.get("as", ())
            raw_bids = first.get("bs", ())
            snap_asks = tuple((fixed(r[0], pd), fixed(r[1], sd)) for r in raw_asks)
            snap_bids = tuple((fixed(r[0], pd), fixed(r[1], sd)) for r in raw_bids)
            ts_snap = max((epoch_ns(r[2]) for r in (*raw_asks, *raw_bids)), default=ts_recv)
            rows = (*raw_asks[:1], *raw_bids[:1])
            book.learn_scales((r[0] for r in rows), (r[1] for r in rows))
            return [book.snapshot(snap_bids, snap_asks, ts_snap, ts_recv)]
        if not book.synced:
            return []  # stale updates before the resubscribed snapshot
        bids: list[Level] = []
        asks: list[Level] = []
        checksum: int | None = None
        ts_event = 0
        for part in msg[1:-2]:
            for key, rows in part.items():
                if key == "a":
                    target = asks
                elif key == "b":
                    target = bids
                elif key == "c":
                    checksum = int(rows)
                    continue
                else:
                    continue
                for r in rows:
                    target.append((fixed(r[0], pd), fixed(r[1], sd)))
                    t = epoch_ns(r[2])
                    if t > ts_event:
                        ts_event = t
        return [book.update(bids, asks, ts_event or ts_recv, ts_recv, checksum)]

    def _on_trades_v1(self, rows: list[list[Any]], pair: str, ts_recv: int) -> list[Event]:
        inst = self.instrument(pair)
        ex, sym = self.exchange, inst.symbol
        pd, sd = inst.price_decimals, inst.size_decimals
        out: list[Event] = []
        for n, r in enumerate(rows):
            side = _V1_SIDES.get(r[3])
            if side is None:
                raise MalformedMessage(ex, f"trade side {r[3]!r}", sym)
            ts = epoch_ns(r[2])
            # v1 trades carry no id (newer v1 frames append one): time + index in message
            tid = str(r[6]) if len(r) > 6 else f"{r[2]}-{n}"
            out.append(Trade(ts, ts_recv, ex, sym, 0, tid, fixed(r[0], pd), fixed(r[1], sd), side))
        return out


# ---------------------------------------------------------------------------------------
# Kraken Futures (perpetuals)
# ---------------------------------------------------------------------------------------


def round_units(value: object, decimals: int) -> int:
    """A JSON number's text -> units of ``10**-decimals``, rounded half-even.

    Only for values that are not on any grid: Kraken Futures' ``markPrice`` and ``index``
    (``21979.68641534714``) and the relative funding rate in RATE units (1e-10).
    """
    try:
        d = Decimal(str(value))
    except ArithmeticError as exc:
        raise FixedPointError(f"not a decimal number: {value!r}") from exc
    if not d.is_finite():
        raise FixedPointError(f"not a finite number: {value!r}")
    return int(d.scaleb(decimals).to_integral_value(rounding=ROUND_HALF_EVEN))


@dataclass(frozen=True, slots=True)
class FuturesProduct:
    """One perpetual from ``/derivatives/api/v3/instruments``."""

    product_id: str
    """Upper case, as in data frames (``PI_XBTUSD``)."""
    instrument: Instrument


def parse_futures_instruments(body: bytes | str, exchange: str = "KRAKENF") -> list[FuturesProduct]:
    """The perpetuals (``PI_`` inverse, ``PF_`` linear) in an instruments response.

    Dated futures (``FI_``) are left out: the kernel's instruments are spot or perp.
    Base/quote come from the row's ``base``/``quote`` when the venue sends them, else from
    the product id's body (``PI_XBTUSD`` -> ``XBT``/``USD``); the price precision from
    ``tickSize``, the size precision from ``contractValueTradePrecision`` (0 when absent:
    whole contracts).
    """
    try:
        doc = _decode_json(body)
        rows = doc["instruments"]
    except (msgspec.DecodeError, KeyError, TypeError) as exc:
        raise BadResponse(exchange, f"instruments: unexpected body: {exc}") from exc
    out: list[FuturesProduct] = []
    for row in rows:
        symbol = str(row.get("symbol", "")).upper()
        prefix, _, body_name = symbol.partition("_")
        if prefix not in ("PI", "PF") or "_" in body_name or not row.get("tickSize"):
            continue
        try:
            if row.get("base") and row.get("quote"):
                base, quote = str(row["base"]), str(row["quote"])
            else:
                base, quote = _futures_split(body_name)
            tick = str(row["tickSize"])
            sd = max(0, int(row.get("contractValueTradePrecision") or 0))
            inst = instrument_from_increments(
                exchange,
                base=base,
                quote=quote,
                kind="perp",
                tick=tick,
                lot=f"1e-{sd}",
                wire_symbol=symbol,
                venue="kraken-futures",
                size_decimals=sd,
            )
        except (ValueError, ArithmeticError) as exc:
            log.warning("futures_instrument_skipped", symbol=symbol, error=str(exc))
            continue
        # Kraken Futures perps fund hourly (next_funding_rate_time carries the truth)
        out.append(FuturesProduct(symbol, msgspec.structs.replace(inst, funding_interval_s=3600)))
    return out


_FUTURES_QUOTES: tuple[str, ...] = ("USDT", "USDC", "USD", "EUR", "GBP")


def _futures_split(body: str) -> tuple[str, str]:
    """``XBTUSD`` -> (``XBT``, ``USD``) for a product id without base/quote fields (the
    2021 instruments table has none). Not :func:`split_wire_symbol`: that one knows
    ``TUSD`` and would read ``XBTUSD`` as ``XB``/``TUSD``."""
    for quote in _FUTURES_QUOTES:
        if body.endswith(quote) and len(body) > len(quote):
            return body[: -len(quote)], quote
    raise ValueError(f"cannot split product {body!r}")


class _FuturesBook:
    __slots__ = ("inst", "local", "seq", "synced")

    def __init__(self, inst: Instrument) -> None:
        self.inst = inst
        self.local = LocalBook(inst)
        self.seq = -1
        self.synced = False


class KrakenFuturesExchange(ExchangeInterface):
    """Kraken Futures perpetuals: book (snapshot + ``seq``-checked deltas), trades, and
    funding / mark price from the ``ticker`` feed."""

    exchange: ClassVar[str] = "KRAKENF"
    default_ws_url: ClassVar[str] = "wss://futures.kraken.com/ws/v1"
    default_rest_url: ClassVar[str] = "https://futures.kraken.com"
    protocol_ping_s: ClassVar[float | None] = 30.0
    """Kraken Futures drops a connection without a client ping for 60 s
    (support.kraken.com "Subscriptions - WebSockets API (derivatives)")."""

    def __init__(
        self,
        config: FeedConfig,
        *,
        clock: Any = None,
        limiter: RateLimiter | None = None,
        http: Any = None,
    ) -> None:
        super().__init__(config, clock=clock, limiter=limiter or RateLimiter(5, 1.0), http=http)
        self.books: dict[str, _FuturesBook] = {}

    async def load_instruments(self) -> list[Instrument]:
        body = await self.http_request(
            "GET", "/derivatives/api/v3/instruments", endpoint="instruments"
        )
        return self.use_instruments(body)

    def use_instruments(self, body: bytes | str) -> list[Instrument]:
        """Take the configured perpetuals from an instruments body (also offline)."""
        table = parse_futures_instruments(body, self.exchange)
        index: dict[str, FuturesProduct] = {}
        for p in table:
            index.setdefault(p.product_id, p)
            index.setdefault(p.instrument.symbol, p)
        chosen: list[FuturesProduct] = []
        for sym in self.config.symbols:
            found = index.get(sym.strip().upper())
            if found is None:
                raise InstrumentError(f"{self.exchange}: no perpetual {sym!r} in instruments")
            if any(c.instrument.symbol == found.instrument.symbol for c in chosen):
                if found not in chosen:
                    raise InstrumentError(
                        f"{self.exchange}: {sym!r} and another product are both "
                        f"{found.instrument.symbol}; collect them in separate feeds"
                    )
                continue
            chosen.append(found)
        self.instruments = {p.product_id: p.instrument for p in chosen}
        self.books = {p.product_id: _FuturesBook(p.instrument) for p in chosen}
        return [p.instrument for p in chosen]

    # -- subscriptions ---------------------------------------------------------------

    def _feed_frame(self, event: str, feed: str, products: list[str]) -> str:
        return _encode_json({"event": event, "feed": feed, "product_ids": products}).decode()

    def subscribe_frames(self) -> list[str]:
        products = list(self.instruments)
        frames = []
        if "book" in self.config.channels:
            frames.append(self._feed_frame("subscribe", "book", products))
        if "trades" in self.config.channels:
            frames.append(self._feed_frame("subscribe", "trade", products))
        if "funding" in self.config.channels:
            frames.append(self._feed_frame("subscribe", "ticker", products))
        return frames

    def on_connected(self) -> None:
        for book in self.books.values():
            book.synced = False
            book.seq = -1

    async def resync(self, wire_symbol: str) -> None:
        """A ``seq`` gap: resubscribe the product's book for a fresh ``book_snapshot``."""
        product = wire_symbol.upper()
        book = self.books.get(product)
        if book is not None:
            book.synced = False
        self.outbox.append(self._feed_frame("unsubscribe", "book", [product]))
        self.outbox.append(self._feed_frame("subscribe", "book", [product]))

    # -- frames ----------------------------------------------------------------------

    def on_frame(self, frame: str | bytes, ts_recv: int) -> list[Event]:
        try:
            msg = _decode_json(frame)
        except msgspec.DecodeError as exc:
            raise MalformedMessage(self.exchange, f"not JSON: {exc}") from exc
        if type(msg) is not dict:
            raise MalformedMessage(self.exchange, "futures frames are JSON objects")
        try:
            feed = msg.get("feed")
            if feed == "book":
                if "event" in msg:
                    return []  # subscribed / unsubscribed ack
                return self._on_delta(msg, ts_recv)
            if feed == "book_snapshot":
                return self._on_snapshot(msg, ts_recv)
            if feed == "trade":
                return [] if "event" in msg else [self._trade(msg, ts_recv)]
            if feed == "ticker":
                return [] if "event" in msg else self._on_ticker(msg, ts_recv)
            event = msg.get("event")
            if event in ("error", "subscribed_failed", "alert"):
                log.warning("venue_error", exchange=self.exchange, reply=msg)
            elif event is None and feed is None:
                raise MalformedMessage(self.exchange, "object without feed or event")
            return []  # info, subscribed, heartbeat, trade_snapshot, ticker_lite, ...
        except ExchangeError:
            raise
        except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
            raise MalformedMessage(self.exchange, f"bad message: {exc!r}") from exc

    def _book(self, product: str) -> _FuturesBook:
        try:
            return self.books[product]
        except KeyError:
            raise MalformedMessage(
                self.exchange, f"frame for unsubscribed product {product!r}"
            ) from None

    def _on_snapshot(self, msg: dict[str, Any], ts_recv: int) -> list[Event]:
        book = self._book(msg["product_id"])
        pd, sd = book.inst.price_decimals, book.inst.size_decimals
        bids = tuple((fixed(r["price"], pd), fixed(r["qty"], sd)) for r in msg["bids"])
        asks = tuple((fixed(r["price"], pd), fixed(r["qty"], sd)) for r in msg["asks"])
        seq = int(msg["seq"])
        event = book.local.snapshot(bids, asks, int(msg["timestamp"]) * 1_000_000, ts_recv, seq)
        book.seq = seq
        book.synced = True
        return [event]

    def _on_delta(self, msg: dict[str, Any], ts_recv: int) -> list[Event]:
        book = self._book(msg["product_id"])
        if not book.synced:
            return []
        seq = int(msg["seq"])
        if seq != book.seq + 1:
            book.synced = False
            raise SequenceGap(self.exchange, f"seq {seq} after {book.seq}", book.inst.symbol)
        inst = book.inst
        level = ((fixed(msg["price"], inst.price_decimals), fixed(msg["qty"], inst.size_decimals)),)
        side = msg["side"]
        ts_event = int(msg["timestamp"]) * 1_000_000
        try:
            if side == "buy":
                event = book.local.delta(level, (), ts_event, ts_recv, seq)
            elif side == "sell":
                event = book.local.delta((), level, ts_event, ts_recv, seq)
            else:
                raise MalformedMessage(self.exchange, f"book side {side!r}", inst.symbol)
        except BookInvalid:
            book.synced = False
            raise
        book.seq = seq
        return [event]

    def _trade(self, t: dict[str, Any], ts_recv: int) -> Trade:
        inst = self._book(t["product_id"]).inst
        side = t["side"]
        if side != "buy" and side != "sell":
            raise MalformedMessage(self.exchange, f"trade side {side!r}", inst.symbol)
        return Trade(
            int(t["time"]) * 1_000_000,
            ts_recv,
            self.exchange,
            inst.symbol,
            int(t.get("seq", 0)),
            str(t.get("uid", "")),
            fixed(t["price"], inst.price_decimals),
            fixed(t["qty"], inst.size_decimals),
            side,
        )

    def _on_ticker(self, msg: dict[str, Any], ts_recv: int) -> list[Event]:
        inst = self._book(msg["product_id"]).inst
        ts_event = int(msg["time"]) * 1_000_000
        out: list[Event] = []
        rate = msg.get("relative_funding_rate")
        if rate is not None:
            nxt = msg.get("next_funding_rate_time")
            out.append(
                FundingRate(
                    ts_event,
                    ts_recv,
                    self.exchange,
                    inst.symbol,
                    0,
                    round_units(rate, RATE_DECIMALS),
                    int(nxt) * 1_000_000 if nxt else 0,
                )
            )
        mark = msg.get("markPrice")
        if mark is not None:
            index = msg.get("index")
            pd = inst.price_decimals
            out.append(
                MarkPrice(
                    ts_event,
                    ts_recv,
                    self.exchange,
                    inst.symbol,
                    0,
                    round_units(mark, pd),
                    round_units(index, pd) if index is not None else 0,
                )
            )
        return out

    async def fetch_snapshot(self, wire_symbol: str, priority: Priority) -> list[Event]:
        """REST ``/derivatives/api/v3/orderbook`` (fallback while the WebSocket is down)."""
        product = wire_symbol.upper()
        book = self._book(product)
        body = await self.http_request(
            "GET",
            "/derivatives/api/v3/orderbook",
            endpoint="orderbook",
            priority=priority,
            params={"symbol": product},
        )
        try:
            doc = _decode_json(body)
            if doc.get("result") != "success":
                raise BadResponse(self.exchange, f"orderbook: {doc.get('error', doc)!r}")
            ob = doc["orderBook"]
            pd, sd = book.inst.price_decimals, book.inst.size_decimals
            bids = tuple((fixed(r[0], pd), fixed(r[1], sd)) for r in ob["bids"])
            asks = tuple((fixed(r[0], pd), fixed(r[1], sd)) for r in ob["asks"])
            served = doc.get("serverTime")
        except (msgspec.DecodeError, AttributeError, KeyError, IndexError, TypeError) as exc:
            raise MalformedMessage(self.exchange, f"orderbook: {exc!r}", book.inst.symbol) from exc
        now = self.clock.now_ns()
        event = book.local.snapshot(bids, asks, rfc3339_ns(served) if served else now, now, 0)
        book.synced = False
        return [event]
