"""Coinbase Advanced Trade market data: ``level2`` books and ``market_trades`` prints.

Protocol (see ``shared/EXCHANGES.md`` and the recording in
``shared/data/exchanges/coinbase/``):

* One WebSocket ``wss://advanced-trade-ws.coinbase.com``; one channel per subscribe
  message: ``level2`` (frames arrive as ``"channel": "l2_data"``), ``market_trades`` and
  always ``heartbeats`` (without traffic the venue closes idle sockets). A ``jwt`` field
  is added to every subscribe message when credentials are configured (a fresh token per
  message: it expires after 120 s). The server's WebSocket pings are answered by the
  ``websockets`` library; Advanced Trade has no application-level ping.
* ``level2``: the first event per product is a ``snapshot`` of the **whole** book (46,000
  levels for BTC-USD in the recording), then ``update`` events; ``new_quantity`` is the
  absolute size at ``price_level`` ("0" deletes), ``side`` is ``bid`` / ``offer``. There
  is no REST snapshot in this flow: a book is (re)built only from an in-band snapshot,
  which the venue sends on subscribe.
* ``sequence_num`` is **one counter per connection across all channels**. A gap means a
  message (of any channel) was lost on the socket: every book of the connection is
  suspect, so ``Connectivity(resync)`` is journaled for every product and the connection
  is closed; the reconnect resubscribes and every book comes back with a fresh snapshot.
  A book that would become invalid (crossed, or a level that does not parse) is rebuilt
  alone: ``level2`` is unsubscribed and resubscribed for that product.
* ``market_trades``: ``side`` is the **maker's** side (checked on the recording: all 47
  ``SELL`` prints at the best ask and all 17 ``BUY`` prints at the best bid), so the
  aggressor is the opposite side. The first event after subscribing is a ``snapshot`` of
  the last 100 trades per product: history, not new prints. On the first connection it is
  not emitted (those trades happened before collection started); after a reconnect the
  snapshot trades newer than the last trade emitted for that product are emitted, which
  fills (part of) the hole the disconnect left. Update frames carrying several trades list
  them newest first; they are emitted oldest first.
* Time: ``event_time`` (book) and ``time`` (trades) are RFC 3339 with microseconds and are
  ``ts_event``; the envelope ``timestamp`` (nanoseconds, send time) is used only when an
  event has no time of its own. Both are parsed to integer nanoseconds exactly.
* While the WebSocket is down the REST fallback polls the public
  ``GET /api/v3/brokerage/market/product_book?product_id=...&limit=N``
  (``{"pricebook": {"product_id", "bids": [{"price", "size"}], "asks": [...], "time"}}``,
  https://docs.cdp.coinbase.com/api-reference/advanced-trade-api/rest-api/public/get-public-product-book).
* Instruments come from the public ``GET /api/v3/brokerage/market/products``: tick =
  ``price_increment`` (equal to ``quote_increment`` for all 920 products of the recorded
  table; ``quote_increment`` is the fallback), lot = ``base_increment``.
* Private REST endpoints carry ``Authorization: Bearer <JWT>`` (:func:`cdp_jwt`), keys from
  ``COINBASE_API_KEY_NAME`` / ``COINBASE_API_PRIVATE_KEY``.
"""

from __future__ import annotations

import base64
import calendar
import datetime
import os
import secrets
import time
from collections.abc import Callable, Mapping
from typing import Any, ClassVar
from urllib.parse import urlsplit

import msgspec
import structlog

from adapters.exchanges.base import (
    PRIORITY_POLL,
    AuthError,
    BadResponse,
    BookInvalid,
    Clock,
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
from kernel.events import Event, Level, Side, Trade
from kernel.fixedpoint import POW10, parse_fixed
from kernel.instruments import Instrument

log = structlog.get_logger("tickerml.exchanges.coinbase")

EXCHANGE = "COINBASE"
PRODUCTS_PATH = "/api/v3/brokerage/market/products"
PRODUCT_BOOK_PATH = "/api/v3/brokerage/market/product_book"
ENV_KEY_NAME = "COINBASE_API_KEY_NAME"
ENV_PRIVATE_KEY = "COINBASE_API_PRIVATE_KEY"
JWT_LIFETIME_S = 120

# ---------------------------------------------------------------------------------------
# Exact text -> int parsing (no float anywhere)
# ---------------------------------------------------------------------------------------

_NS = 1_000_000_000
_minute_cache: dict[str, int] = {}


def parse_rfc3339_ns(text: str) -> int:
    """``2026-08-09T21:05:48.228568804Z`` -> integer ns since the epoch, exactly.

    Accepts 0-9 fractional digits and ``Z`` or a ``±hh:mm`` offset. The epoch seconds of
    each ``YYYY-MM-DDTHH:MM`` prefix are cached, so a frame costs a few slices and one
    ``int()`` of the fraction.
    """
    try:
        head = text[:16]
        minute = _minute_cache.get(head)
        if minute is None:
            if text[4] != "-" or text[7] != "-" or text[10] not in "Tt " or text[13] != ":":
                raise ValueError
            fields = (text[0:4], text[5:7], text[8:10], text[11:13], text[14:16])
            if not "".join(fields).isdigit():
                raise ValueError
            year, month, day, hour, mins = map(int, fields)
            datetime.datetime(year, month, day, hour, mins)  # validates the fields
            minute = calendar.timegm((year, month, day, hour, mins, 0, 0, 0, 0))
            if len(_minute_cache) > 4096:
                _minute_cache.clear()
            _minute_cache[head] = minute
        if text[16] != ":":
            raise ValueError
        sec = text[17:19]
        if not sec.isdigit() or sec > "60":
            raise ValueError
        last = text[-1]
        if last == "Z" or last == "z":
            rest = text[19:-1]
            offset = 0
        else:
            tz = text[-6:]
            if tz[0] not in "+-" or tz[3] != ":" or not (tz[1:3] + tz[4:6]).isdigit():
                raise ValueError
            offset = int(tz[1:3]) * 3600 + int(tz[4:6]) * 60
            if tz[0] == "-":
                offset = -offset
            rest = text[19:-6]
        frac = 0
        if rest:
            digits = rest[1:]
            if rest[0] != "." or not digits.isdigit() or len(digits) > 9:
                raise ValueError
            frac = int(digits) * POW10[9 - len(digits)]
        return (minute + int(sec) - offset) * _NS + frac
    except (ValueError, IndexError):
        raise ValueError(f"not an RFC 3339 timestamp: {text!r}") from None


def fixed_parser(decimals: int, step: int = 1) -> Callable[[str], int]:
    """An exact parser of non-negative decimal text into ``10**-decimals`` units that must
    be a multiple of ``step`` (the tick or lot). Faster than
    :func:`kernel.fixedpoint.parse_fixed` (one ``replace`` and one ``int``); exponent
    forms go through it. Raises ``ValueError``."""
    pows = POW10
    scale = pows[decimals]

    def parse(text: str) -> int:
        i = text.find(".")
        try:
            if i < 0:
                value = int(text) * scale
            else:
                digits = text.replace(".", "")
                n = len(digits) - i
                if n <= decimals and len(digits) == len(text) - 1:
                    value = int(digits) * pows[decimals - n]
                else:
                    value = parse_fixed(text, decimals)
        except ValueError:
            value = parse_fixed(text, decimals)  # exponent forms; a precise error otherwise
        if value < 0:
            raise ValueError(f"negative number {text!r}")
        if step != 1 and value % step:
            raise ValueError(f"{text!r} is not a multiple of the increment")
        return value

    return parse


BULK_LEVELS = 512
"""Events with at least this many levels (snapshots) are parsed column-wise by Arrow."""

_arrow_ready = False


def bulk_fixed(texts: list[str], decimals: int, step: int = 1) -> list[int]:
    """:func:`fixed_parser` for a whole column at C speed: Arrow casts the strings to
    ``decimal128(38, decimals)`` exactly (it refuses a cast that would drop a non-zero
    digit, and anything that is not a decimal number), and the unscaled integers are
    read straight from the 16-byte little-endian words. 46,000 levels: ~10 ms instead of
    ~80 ms. Raises ``ValueError``."""
    import numpy as np
    import pyarrow as pa

    global _arrow_ready
    _arrow_ready = True
    if not texts:
        return []
    arr = pa.array(texts, pa.string()).cast(pa.decimal128(38, decimals))  # ArrowInvalid
    if arr.null_count:
        raise ValueError("null number")
    buf = arr.buffers()[1]
    if buf is None:
        raise ValueError("no decimal buffer")
    words = np.frombuffer(buf, dtype="<i8")[arr.offset * 2 : (arr.offset + len(arr)) * 2]
    low, high = words[0::2], words[1::2]
    if not ((high == 0) & (low >= 0)).all():
        raise ValueError("a negative number, or one too large for 63 bits")
    if step != 1 and (low % step).any():
        raise ValueError("a number off its increment")
    values: list[int] = low.tolist()
    return values


def warm_bulk_parser() -> None:
    """Arrow's first decimal cast costs ~0.5 s (kernel registry); pay it before a feed."""
    if not _arrow_ready:
        bulk_fixed(["1.5"], 2)


# ---------------------------------------------------------------------------------------
# Wire structures (msgspec: unknown fields are skipped in C)
# ---------------------------------------------------------------------------------------


class _Envelope(msgspec.Struct):
    channel: str = ""
    timestamp: str = ""
    sequence_num: int = -1
    events: msgspec.Raw = msgspec.Raw(b"[]")
    type: str = ""  # {"type": "error", "message": ...} frames carry no channel
    message: str = ""


class _L2Level(msgspec.Struct):
    side: str
    price_level: str
    new_quantity: str
    event_time: str = ""


class _L2Event(msgspec.Struct):
    type: str
    product_id: str
    updates: list[_L2Level] = []


class _WireTrade(msgspec.Struct):
    product_id: str
    trade_id: str
    price: str
    size: str
    side: str
    time: str = ""


class _TradesEvent(msgspec.Struct):
    type: str
    trades: list[_WireTrade] = []


class _Product(msgspec.Struct):
    product_id: str
    base_increment: str
    quote_increment: str
    price_increment: str = ""
    base_currency_id: str = ""
    quote_currency_id: str = ""
    quote_min_size: str = "0"
    status: str = ""
    alias: str = ""
    alias_to: list[str] = []
    product_type: str = "SPOT"


class _Products(msgspec.Struct):
    products: list[_Product]


class _BookLevel(msgspec.Struct):
    price: str
    size: str


class _PriceBook(msgspec.Struct):
    product_id: str = ""
    bids: list[_BookLevel] = []
    asks: list[_BookLevel] = []
    time: str = ""


class _ProductBook(msgspec.Struct):
    pricebook: _PriceBook


_envelope_decoder = msgspec.json.Decoder(_Envelope)
_l2_decoder = msgspec.json.Decoder(list[_L2Event])
_trades_decoder = msgspec.json.Decoder(list[_TradesEvent])
_products_decoder = msgspec.json.Decoder(_Products)
_product_book_decoder = msgspec.json.Decoder(_ProductBook)

_AGGRESSOR: dict[str, Side] = {"SELL": "buy", "BUY": "sell"}
"""``market_trades.side`` is the maker's side; the aggressor took the other one."""

_IGNORED_CHANNELS = frozenset({"heartbeats", "ticker", "ticker_batch", "candles", "status"})


# ---------------------------------------------------------------------------------------
# JWT (CDP API keys)
# ---------------------------------------------------------------------------------------


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def load_private_key(secret: str) -> Any:
    """A CDP key secret: an EC P-256 PEM (``-----BEGIN EC PRIVATE KEY-----``, newlines
    possibly escaped as ``\\n`` in an environment variable) or a base64 Ed25519 key
    (64 bytes: seed + public key, or the 32-byte seed)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519

    text = secret.strip().replace("\\n", "\n")
    try:
        if text.startswith("-----BEGIN"):
            key = serialization.load_pem_private_key(text.encode(), password=None)
            if isinstance(key, ec.EllipticCurvePrivateKey):
                if not isinstance(key.curve, ec.SECP256R1):
                    raise AuthError(EXCHANGE, f"EC key on {key.curve.name}, ES256 needs P-256")
                return key
            if isinstance(key, ed25519.Ed25519PrivateKey):
                return key
            raise AuthError(EXCHANGE, f"unsupported key type {type(key).__name__}")
        raw = base64.b64decode(text, validate=True)
        if len(raw) not in (32, 64):
            raise AuthError(EXCHANGE, "an Ed25519 secret must be 32 or 64 bytes")
        return ed25519.Ed25519PrivateKey.from_private_bytes(raw[:32])
    except (ValueError, TypeError) as exc:
        raise AuthError(EXCHANGE, f"cannot load the API private key: {exc}") from None


def cdp_jwt(
    key_name: str,
    private_key: Any,
    *,
    uri: str | None = None,
    now: int | None = None,
    nonce: str | None = None,
) -> str:
    """A CDP bearer token (https://docs.cdp.coinbase.com/coinbase-app/authentication-authorization/api-key-authentication).

    Header ``{"alg": "ES256" | "EdDSA", "kid": key_name, "nonce": <random hex>, "typ":
    "JWT"}``; claims ``iss = "cdp"``, ``sub = key_name``, ``nbf = now``, ``exp = nbf +
    120`` and, for REST, ``uri = "<METHOD> api.coinbase.com<path>"`` (no query string).
    WebSocket tokens have no ``uri``. ES256 signatures are the raw 64-byte ``r || s``
    (RFC 7515 appendix A.3), not DER. Coinbase publishes no test vector for this token, so
    the tests verify the signature with the public key and check every claim.
    """
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

    if isinstance(private_key, ed25519.Ed25519PrivateKey):
        alg = "EdDSA"
    elif isinstance(private_key, ec.EllipticCurvePrivateKey):
        alg = "ES256"
    else:
        raise AuthError(EXCHANGE, f"unsupported key type {type(private_key).__name__}")
    issued = int(time.time()) if now is None else now
    header = {"alg": alg, "kid": key_name, "nonce": nonce or secrets.token_hex(16), "typ": "JWT"}
    claims: dict[str, Any] = {
        "iss": "cdp",
        "sub": key_name,
        "nbf": issued,
        "exp": issued + JWT_LIFETIME_S,
    }
    if uri is not None:
        claims["uri"] = uri
    signing_input = (
        _b64url(msgspec.json.encode(header)) + "." + _b64url(msgspec.json.encode(claims))
    ).encode("ascii")
    if alg == "EdDSA":
        signature = private_key.sign(signing_input)
    else:
        r, s = decode_dss_signature(private_key.sign(signing_input, ec.ECDSA(hashes.SHA256())))
        signature = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    return signing_input.decode("ascii") + "." + _b64url(signature)


class CdpCredentials:
    """An API key name and its loaded private key."""

    __slots__ = ("key", "key_name")

    def __init__(self, key_name: str, private_key: str | Any) -> None:
        if not key_name:
            raise AuthError(EXCHANGE, "empty API key name")
        self.key_name = key_name
        self.key = load_private_key(private_key) if isinstance(private_key, str) else private_key

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> CdpCredentials | None:
        """From ``COINBASE_API_KEY_NAME`` / ``COINBASE_API_PRIVATE_KEY``; None if unset."""
        env = os.environ if environ is None else environ
        name, secret = env.get(ENV_KEY_NAME, ""), env.get(ENV_PRIVATE_KEY, "")
        if not name and not secret:
            return None
        if not name or not secret:
            raise AuthError(EXCHANGE, f"set both {ENV_KEY_NAME} and {ENV_PRIVATE_KEY}")
        return cls(name, secret)

    def rest_token(self, method: str, host: str, path: str, now: int | None = None) -> str:
        uri = f"{method.upper()} {host}{path.split('?', 1)[0]}"
        return cdp_jwt(self.key_name, self.key, uri=uri, now=now)

    def ws_token(self, now: int | None = None) -> str:
        return cdp_jwt(self.key_name, self.key, now=now)


# ---------------------------------------------------------------------------------------
# The adapter
# ---------------------------------------------------------------------------------------


class _Book:
    """One product's validated book and whether the WebSocket stream may update it."""

    __slots__ = ("local", "price", "price_cache", "size", "synced")

    def __init__(self, inst: Instrument) -> None:
        self.local = LocalBook(inst)
        self.synced = False
        self.price = fixed_parser(inst.price_decimals, inst.tick_size)
        self.size = fixed_parser(inst.size_decimals, inst.lot_size)
        self.price_cache: dict[str, int] = {}


class CoinbaseExchange(ExchangeInterface):
    """Coinbase Advanced Trade public market data (``level2`` + ``market_trades``)."""

    exchange: ClassVar[str] = EXCHANGE
    default_ws_url: ClassVar[str] = "wss://advanced-trade-ws.coinbase.com"
    default_rest_url: ClassVar[str] = "https://api.coinbase.com"
    rest_weights: ClassVar[dict[str, float]] = {}
    public_rate_per_s: ClassVar[float] = 10.0
    """Public REST budget: about 10 requests/s per IP (EXCHANGES.md, unverified)."""

    def __init__(
        self,
        config: FeedConfig,
        *,
        clock: Clock | None = None,
        limiter: RateLimiter | None = None,
        http: Any = None,
        credentials: CdpCredentials | None = None,
        use_env_credentials: bool = True,
    ) -> None:
        if limiter is None:
            limiter = RateLimiter(self.public_rate_per_s, self.public_rate_per_s)
        super().__init__(config, clock=clock, limiter=limiter, http=http)
        self.credentials = credentials
        if credentials is None and use_env_credentials:
            self.credentials = CdpCredentials.from_env()
        self.books: dict[str, _Book] = {}
        """Per product id (wire symbol): the local book and its sync state."""
        self._route: dict[str, str] = {}
        """product_id in frames -> subscribed product id (aliases included)."""
        self._last_trade: dict[str, int] = {}
        self._expect_seq = -1
        self._dead = False
        self._gap_close = False
        self._closing = False

    @property
    def last_sequence(self) -> int:
        """The last ``sequence_num`` accepted on the current connection (-1: none yet)."""
        return self._expect_seq - 1 if self._expect_seq >= 0 else -1

    # -- instruments -----------------------------------------------------------------

    async def load_instruments(self) -> list[Instrument]:
        body = await self.http_request("GET", PRODUCTS_PATH, endpoint="products")
        return self.instruments_from_products(body)

    def instruments_from_products(self, body: bytes | str) -> list[Instrument]:
        """The subscribed instruments from a ``/market/products`` body."""
        try:
            products = _products_decoder.decode(body).products
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise BadResponse(EXCHANGE, f"products: {exc}") from exc
        by_id = {p.product_id.upper(): p for p in products}
        out: list[Instrument] = []
        for wanted in self.config.symbols:
            product = by_id.get(wanted.strip().upper())
            if product is None:
                raise ValueError(f"{EXCHANGE}: unknown product {wanted!r}")
            out.append(self._instrument(product))
        self._set_routes(out, by_id)
        return out

    @staticmethod
    def _instrument(p: _Product) -> Instrument:
        base, _, quote = p.product_id.partition("-")
        if p.status and p.status != "online":
            log.warning("product_not_online", exchange=EXCHANGE, product=p.product_id)
        return instrument_from_increments(
            EXCHANGE,
            base=p.base_currency_id or base,
            quote=p.quote_currency_id or quote,
            kind="spot",
            tick=p.price_increment or p.quote_increment,
            lot=p.base_increment,
            wire_symbol=p.product_id,
            min_notional=p.quote_min_size or "0",
        )

    def _set_routes(self, insts: list[Instrument], by_id: dict[str, _Product]) -> None:
        """Public channels answer ``-USDC`` subscriptions with the ``-USD`` product's data
        (EXCHANGES.md): route an alias's frames to the subscribed product unless the alias
        is subscribed itself."""
        wires = {i.wire_symbol.upper() for i in insts}
        route = {w: w for w in wires}
        for w in sorted(wires):
            product = by_id.get(w)
            alias = product.alias.upper() if product is not None else ""
            if alias and alias not in wires and alias not in route:
                route[alias] = w
        self._route = route

    def _ensure_books(self) -> None:
        if not self._route:
            self._route = {w: w for w in self.instruments}
        for wire, inst in self.instruments.items():
            if wire not in self.books:
                self.books[wire] = _Book(inst)

    # -- subscriptions ---------------------------------------------------------------

    def _channel_frame(self, kind: str, channel: str, products: list[str]) -> str:
        msg: dict[str, Any] = {"type": kind, "product_ids": products, "channel": channel}
        if self.credentials is not None:
            msg["jwt"] = self.credentials.ws_token()
        return msgspec.json.encode(msg).decode()

    def subscribe_frames(self) -> list[str]:
        products = [i.wire_symbol for i in self.instruments.values()]
        channels = self.config.channels
        frames = []
        if "trades" in channels:
            frames.append(self._channel_frame("subscribe", "market_trades", products))
        if "book" in channels:
            frames.append(self._channel_frame("subscribe", "level2", products))
        frames.append(self._channel_frame("subscribe", "heartbeats", products))
        return frames

    def on_connected(self) -> None:
        self._ensure_books()
        if "book" in self.config.channels:
            warm_bulk_parser()
        self._expect_seq = -1
        self._dead = False
        self._gap_close = False
        self._closing = False
        for book in self.books.values():
            book.synced = False

    async def resync(self, wire_symbol: str) -> None:
        """After a sequence gap: close the connection (once); the reconnect rebuilds every
        book. After an invalid book: resubscribe ``level2`` for that product only."""
        book = self.books.get(wire_symbol)
        if book is not None:
            book.synced = False
        ws = self._ws
        if ws is None:
            return  # down: the next connection's subscribe brings fresh snapshots
        if self._gap_close:
            if not self._closing:
                self._closing = True
                self._spawn(ws.close())
            return
        product = self.instruments[wire_symbol].wire_symbol
        self.outbox.append(self._channel_frame("unsubscribe", "level2", [product]))
        self.outbox.append(self._channel_frame("subscribe", "level2", [product]))

    # -- REST fallback ---------------------------------------------------------------

    async def fetch_snapshot(self, wire_symbol: str, priority: Priority) -> list[Event]:
        """Top ``config.depth`` levels from the public product book (no sequence links it
        to the WebSocket stream, so the WebSocket book waits for its own snapshot)."""
        inst = self.instrument(wire_symbol)
        body = await self.http_request(
            "GET",
            PRODUCT_BOOK_PATH,
            endpoint="product_book",
            priority=priority,
            params={"product_id": inst.wire_symbol, "limit": str(self.config.depth)},
        )
        return [self.product_book_snapshot(wire_symbol, body, self.clock.now_ns())]

    def product_book_snapshot(self, wire_symbol: str, body: bytes | str, ts_recv: int) -> Event:
        self._ensure_books()
        book = self.books[wire_symbol.upper()]
        inst = book.local.inst
        try:
            pb = _product_book_decoder.decode(body).pricebook
            bids = tuple(
                sorted(((book.price(x.price), book.size(x.size)) for x in pb.bids), reverse=True)
            )
            asks = tuple(sorted((book.price(x.price), book.size(x.size)) for x in pb.asks))
            ts_event = parse_rfc3339_ns(pb.time) if pb.time else ts_recv
        except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as exc:
            raise BadResponse(EXCHANGE, f"product_book {inst.wire_symbol}: {exc}") from exc
        if pb.product_id and pb.product_id.upper() != inst.wire_symbol.upper():
            raise BadResponse(EXCHANGE, f"product_book for {pb.product_id}, asked {wire_symbol}")
        book.synced = False
        return book.local.snapshot(bids, asks, ts_event, ts_recv, 0)

    async def poll_rest(self) -> list[Event]:
        """One REST snapshot per product while the WebSocket is down; a 429 ends the round
        early (the limiter is blocked for Retry-After) keeping what was fetched."""
        out: list[Event] = []
        for wire in list(self.instruments):
            try:
                out.extend(await self.fetch_snapshot(wire, PRIORITY_POLL))
            except RateLimited as exc:
                log.info("poll_rate_limited", exchange=EXCHANGE, error=str(exc))
                break
            except ExchangeError as exc:
                log.info("poll_failed", exchange=EXCHANGE, product=wire, error=str(exc))
        return out

    # -- private REST ----------------------------------------------------------------

    def auth_headers(self, method: str, path: str) -> dict[str, str]:
        """``Authorization: Bearer <JWT>`` for one private request."""
        if self.credentials is None:
            raise AuthError(EXCHANGE, f"private endpoint needs {ENV_KEY_NAME}/{ENV_PRIVATE_KEY}")
        host = urlsplit(self.rest_url).netloc
        return {"Authorization": f"Bearer {self.credentials.rest_token(method, host, path)}"}

    async def private_request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        json_body: Any = None,
        endpoint: str = "private",
    ) -> Any:
        """A signed call to a private endpoint (``/api/v3/brokerage/accounts``), decoded."""
        body = await self.http_request(
            method,
            path,
            endpoint=endpoint,
            params=params,
            json_body=json_body,
            headers=self.auth_headers(method, path),
        )
        try:
            return msgspec.json.decode(body)
        except msgspec.DecodeError as exc:
            raise BadResponse(EXCHANGE, f"{method} {path}: {exc}") from exc

    # -- frames ----------------------------------------------------------------------

    def on_frame(self, frame: str | bytes, ts_recv: int) -> list[Event]:
        if self._dead:
            return []  # after a gap: this connection is being closed
        if not self.books:
            self._ensure_books()
        try:
            env = _envelope_decoder.decode(frame)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise MalformedMessage(EXCHANGE, f"undecodable frame: {exc}") from None
        seq = env.sequence_num
        if seq >= 0:
            expect = self._expect_seq
            if expect >= 0 and seq != expect:
                self._dead = True
                self._gap_close = True
                for book in self.books.values():
                    book.synced = False
                raise SequenceGap(EXCHANGE, f"sequence_num {seq}, expected {expect}")
            if expect < 0 and seq != 0:
                log.info("first_sequence_not_zero", exchange=EXCHANGE, sequence_num=seq)
            self._expect_seq = seq + 1
        channel = env.channel
        if channel == "l2_data":
            return self._on_l2(env, ts_recv)
        if channel == "market_trades":
            return self._on_trades(env, ts_recv)
        if channel in _IGNORED_CHANNELS:
            return []
        if channel == "subscriptions":
            return []
        if env.type == "error" or not channel:
            raise MalformedMessage(EXCHANGE, f"error frame: {env.message or frame[:200]!r}")
        return []

    def _on_l2(self, env: _Envelope, ts_recv: int) -> list[Event]:
        try:
            events = _l2_decoder.decode(env.events)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            # a book message was lost: rebuild every book (per-product resubscribe)
            for book in self.books.values():
                book.synced = False
            raise BookInvalid(EXCHANGE, f"undecodable l2_data: {exc}") from None
        out: list[Event] = []
        seq = env.sequence_num
        for ev in events:
            wire = self._route.get(ev.product_id)
            if wire is None:
                wire = self._route.get(ev.product_id.upper())
                if wire is None:
                    continue  # a product we did not subscribe to
            book = self.books[wire]
            try:
                if ev.type == "snapshot":
                    out.append(self._l2_snapshot(book, ev, env, seq, ts_recv))
                elif book.synced:
                    out.append(self._l2_update(book, ev, env, seq, ts_recv))
            except BookInvalid as exc:
                if not out:
                    raise
                # earlier events of this frame changed books but will not be emitted:
                # those books are no longer what the journal says, so rebuild them all
                for b in self.books.values():
                    b.synced = False
                raise BookInvalid(EXCHANGE, exc.message) from None
        return out

    def _levels(
        self, book: _Book, ev: _L2Event, env: _Envelope
    ) -> tuple[list[Level], list[Level], int]:
        """(bids, asks, ts_event) of one l2 event; raises BookInvalid on a bad level."""
        updates = ev.updates
        try:
            if len(updates) >= BULK_LEVELS:
                bids, asks, times = self._levels_bulk(book, updates)
            else:
                bids, asks, times = self._levels_loop(book, updates)
            ts_event = max(parse_rfc3339_ns(t) for t in times if t) if any(times) else 0
            if not ts_event:
                ts_event = parse_rfc3339_ns(env.timestamp)
        except ValueError as exc:
            book.synced = False
            raise BookInvalid(EXCHANGE, f"bad level: {exc}", book.local.inst.symbol) from None
        return bids, asks, ts_event

    @staticmethod
    def _levels_loop(
        book: _Book, updates: list[_L2Level]
    ) -> tuple[list[Level], list[Level], set[str]]:
        bids: list[Level] = []
        asks: list[Level] = []
        parse_price, parse_size, cache = book.price, book.size, book.price_cache
        times: set[str] = set()
        last_time = None
        for u in updates:
            text = u.price_level
            price = cache.get(text)
            if price is None:
                price = parse_price(text)
                if len(cache) >= 200_000:
                    cache.clear()
                cache[text] = price
            side = u.side
            if side == "bid":
                bids.append((price, parse_size(u.new_quantity)))
            elif side == "offer" or side == "ask":
                asks.append((price, parse_size(u.new_quantity)))
            else:
                raise ValueError(f"side {side!r}")
            if u.event_time != last_time:
                last_time = u.event_time
                times.add(last_time)
        return bids, asks, times

    @staticmethod
    def _levels_bulk(
        book: _Book, updates: list[_L2Level]
    ) -> tuple[list[Level], list[Level], set[str]]:
        inst = book.local.inst
        prices = bulk_fixed([u.price_level for u in updates], inst.price_decimals, inst.tick_size)
        sizes = bulk_fixed([u.new_quantity for u in updates], inst.size_decimals, inst.lot_size)
        sides = [u.side for u in updates]
        n_bids = sides.count("bid")
        if sides.count("offer") + n_bids == len(sides) and sides[n_bids:].count("bid") == 0:
            # the wire lists every bid, then every offer: slice the columns in C
            bids = list(zip(prices[:n_bids], sizes[:n_bids], strict=True))
            asks = list(zip(prices[n_bids:], sizes[n_bids:], strict=True))
        else:
            bids, asks = [], []
            for side, level in zip(sides, zip(prices, sizes, strict=True), strict=True):
                if side == "bid":
                    bids.append(level)
                elif side == "offer" or side == "ask":
                    asks.append(level)
                else:
                    raise ValueError(f"side {side!r}")
        return bids, asks, {u.event_time for u in updates}

    def _l2_snapshot(
        self, book: _Book, ev: _L2Event, env: _Envelope, seq: int, ts_recv: int
    ) -> Event:
        bids, asks, ts_event = self._levels(book, ev, env)
        bids.sort(reverse=True)  # already ordered on the wire: timsort checks it in O(n)
        asks.sort()
        snap = book.local.snapshot(tuple(bids), tuple(asks), ts_event, ts_recv, seq)
        book.synced = True
        return snap

    def _l2_update(
        self, book: _Book, ev: _L2Event, env: _Envelope, seq: int, ts_recv: int
    ) -> Event:
        bids, asks, ts_event = self._levels(book, ev, env)
        try:
            return book.local.delta(tuple(bids), tuple(asks), ts_event, ts_recv, seq)
        except BookInvalid:
            book.synced = False
            raise

    def _on_trades(self, env: _Envelope, ts_recv: int) -> list[Event]:
        try:
            events = _trades_decoder.decode(env.events)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise MalformedMessage(EXCHANGE, f"undecodable market_trades: {exc}") from None
        out: list[Event] = []
        seq = env.sequence_num
        route, last_ids = self._route, self._last_trade
        for ev in events:
            batch: list[tuple[int, int, str, Trade]] = []
            for t in ev.trades:
                wire = route.get(t.product_id)
                if wire is None:
                    continue  # a product we did not subscribe to
                try:
                    trade, tid = self._trade(wire, t, env, seq, ts_recv)
                except ValueError as exc:
                    self.stats.malformed += 1
                    log.warning("malformed_trade", exchange=EXCHANGE, error=str(exc))
                    continue
                batch.append((trade.ts_event, tid, wire, trade))
            if ev.type == "snapshot":
                # history: emit only what is newer than the last trade already emitted
                # (after a reconnect); on first contact just remember where history ends
                newest: dict[str, int] = {}
                for _, tid, wire, _ in batch:
                    newest[wire] = max(newest.get(wire, -1), tid)
                batch = [x for x in batch if x[2] in last_ids and x[1] > last_ids[x[2]]]
                for wire, tid in newest.items():
                    last_ids.setdefault(wire, tid)
            if len(batch) > 1:
                batch.sort(key=lambda x: (x[0], x[1]))  # the wire lists newest first
            for _, tid, wire, trade in batch:
                out.append(trade)
                if tid > last_ids.get(wire, -1):
                    last_ids[wire] = tid
        return out

    def _trade(
        self, wire: str, t: _WireTrade, env: _Envelope, seq: int, ts_recv: int
    ) -> tuple[Trade, int]:
        book = self.books[wire]
        side = trade_side_from_maker(t.side)
        ts = parse_rfc3339_ns(t.time or env.timestamp)
        tid = int(t.trade_id) if t.trade_id.isdigit() else -1
        price = book.price(t.price)
        if price <= 0:
            raise ValueError(f"trade price {t.price!r}")
        trade = Trade(
            ts,
            ts_recv,
            EXCHANGE,
            book.local.inst.symbol,
            seq,
            t.trade_id,
            price,
            book.size(t.size),
            side,
        )
        return trade, tid


def trade_side_from_maker(maker_side: str) -> Side:
    """``market_trades.side`` (maker's side) -> the aggressor's side (``buy``/``sell``)."""
    side = _AGGRESSOR.get(maker_side)
    if side is None:
        raise ValueError(f"unknown trade side {maker_side!r}")
    return side
