"""KuCoin market data: spot books and trades, futures mark price and funding.

Protocol (notes in ``shared/EXCHANGES.md``, section KuCoin):

* **Bullet token.** WebSocket URLs are not fixed: before *every* connection (reconnects
  included) ``POST /api/v1/bullet-public`` returns a token and ``instanceServers`` (endpoint,
  ``pingInterval``, ``pingTimeout`` in ms); the adapter connects to
  ``<endpoint>?token=<token>&connectId=<unique id>`` (:meth:`KucoinBase.ws_endpoint`).
* **Welcome, then subscribe.** Nothing is sent before the server's
  ``{"type":"welcome"}``; the subscribe frames go out (through :attr:`outbox`) right after
  it, several symbols per topic (``/market/level2:A,B``), at most 100 per frame.
* **Ping.** ``{"id":..,"type":"ping"}`` every ``pingInterval``, also while frames keep
  arriving (a busy socket never goes idle); if no ``pong`` came back within
  ``pingTimeout`` of a ping, the connection is treated as dead and reopened.
* **Spot book** (``trade.l2update``): REST snapshot + buffered diffs (:class:`KucoinRule`):
  a diff whose ``sequenceEnd`` <= the snapshot's ``sequence`` is dropped; the first kept
  diff must start at or before ``sequence + 1`` and only its changes with a sequence above
  the snapshot's are applied; afterwards ``sequenceStart == previous sequenceEnd + 1``.
  Changes with price ``"0"`` are sequence-only placeholders: they advance the sequence
  and never touch the book. Messages left with no level change emit no event.
* **Trades** (``trade.l3match``): ``time`` is a nanosecond string, ``side`` the taker's.
* **Futures** (:class:`KucoinFutures`): ``/contract/instrument:{symbol}`` carries
  ``mark.index.price`` (-> :class:`MarkPrice`) and ``funding.rate`` (-> :class:`FundingRate`),
  both with JSON *numbers*, decoded exactly as decimals (never float).
* **Auth** (:class:`KucoinCredentials`): ``KC-API-SIGN`` = base64(HMAC-SHA256(secret,
  timestamp + METHOD + path?query + body)); with key version 2 the passphrase is sent
  HMAC-signed the same way (https://www.kucoin.com/docs/basic-info/connection-method/
  authentication/signing-a-message). The full-depth REST snapshot
  ``/api/v3/market/orderbook/level2`` needs a key; without one the public top-100
  snapshot ``/api/v1/market/orderbook/level2_100`` is used instead.

Symbols come from the venue's own table (``/api/v1/symbols``): a configured symbol may be
the wire name (``BCHSV-USDT``) or the normalised one (``BSV-USDT``, from
``baseCurrency``/``quoteCurrency``), never split by hand.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import itertools
import os
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any, ClassVar, Literal
from urllib.parse import urlencode

import msgspec
import structlog

from adapters.exchanges.base import (
    AuthError,
    BadResponse,
    BufferedBook,
    Clock,
    Diff,
    Disconnected,
    ExchangeInterface,
    FeedConfig,
    MalformedMessage,
    Priority,
    RateLimiter,
    decimals_of,
    instrument_from_increments,
    parse_levels,
)
from kernel.events import BookDelta, Event, FundingRate, Level, MarkPrice, Trade
from kernel.fixedpoint import POW10, RATE_DECIMALS, from_decimal, parse_fixed
from kernel.instruments import Instrument, InstrumentError, normalise_symbol

log = structlog.get_logger("tickerml.exchanges.kucoin")

EXCHANGE = "KUCOIN"
OK_CODE = "200000"
"""KuCoin's success code in every REST body (errors come with HTTP 200 too)."""

FULL_BOOK_PATH = "/api/v3/market/orderbook/level2"
"""Full-depth snapshot; needs an API key (KC-API-* headers)."""
TOP100_BOOK_PATH = "/api/v1/market/orderbook/level2_100"
"""Public top-100 snapshot (used when no key is configured)."""

MAX_SYMBOLS_PER_TOPIC = 100
"""Symbols batched into one topic string (KuCoin's per-topic limit; unverified)."""

NS_PER_MS = 1_000_000

SPOT_SIZE_DECIMALS = 12
"""Spot sizes are kept at 1e-12 with a lot of one unit, not at ``baseIncrement``: book
sizes are aggregates that need not be multiples of the order increment, nor stop at its
decimals (the 2021 capture: BSV-USDT snapshot size ``0.00019434546`` with baseIncrement
1e-8; CAPP-BTC snapshot sizes off its 0.01 increment; COV-BTC level2 updates off its
0.0001). Prices are on ``priceIncrement`` everywhere in the capture, and are checked."""

# ---------------------------------------------------------------------------------------
# REST signing
# ---------------------------------------------------------------------------------------


def hmac_b64(secret: str, message: str) -> str:
    """base64(HMAC-SHA256(secret, message)), the encoding of ``KC-API-SIGN``."""
    digest = hmac.new(secret.encode(), message.encode(), hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


@dataclass(frozen=True)
class KucoinCredentials:
    """An API key for KuCoin's private REST endpoints (and the full-depth snapshot).

    ``key_version`` "1" sends the passphrase as is; "2" and "3" send it HMAC-signed.
    """

    key: str
    secret: str = field(repr=False)
    passphrase: str = field(repr=False)
    key_version: str = "2"

    ENV: ClassVar[tuple[str, str, str]] = (
        "KUCOIN_API_KEY",
        "KUCOIN_API_SECRET",
        "KUCOIN_API_PASSPHRASE",
    )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> KucoinCredentials | None:
        """``KUCOIN_API_KEY`` / ``_SECRET`` / ``_PASSPHRASE`` (and optionally
        ``KUCOIN_API_KEY_VERSION``); None if none is set, :class:`AuthError` if only some."""
        env = os.environ if env is None else env
        values = [env.get(name, "") for name in cls.ENV]
        if not any(values):
            return None
        missing = [name for name, v in zip(cls.ENV, values, strict=True) if not v]
        if missing:
            raise AuthError(EXCHANGE, f"incomplete credentials: {', '.join(missing)} not set")
        key, secret, passphrase = values
        version = env.get("KUCOIN_API_KEY_VERSION", "") or "2"
        return cls(key, secret, passphrase, key_version=version)

    def headers(
        self, method: str, path: str, body: str = "", *, timestamp_ms: int
    ) -> dict[str, str]:
        """The ``KC-API-*`` headers for one request.

        ``path`` includes the query string, not URL-encoded (``/api/v1/x?a=1``); ``body``
        is the exact JSON text sent ("" for GET/DELETE).
        """
        ts = str(timestamp_ms)
        passphrase = (
            self.passphrase if self.key_version == "1" else hmac_b64(self.secret, self.passphrase)
        )
        return {
            "KC-API-KEY": self.key,
            "KC-API-SIGN": hmac_b64(self.secret, ts + method.upper() + path + body),
            "KC-API-TIMESTAMP": ts,
            "KC-API-PASSPHRASE": passphrase,
            "KC-API-KEY-VERSION": self.key_version,
        }


# ---------------------------------------------------------------------------------------
# Wire shapes
# ---------------------------------------------------------------------------------------

Change = tuple[str, str, str]
"""One level2 change: [price, size, sequence] as decimal texts."""


class _L2Changes(msgspec.Struct):
    asks: list[Change] = []
    bids: list[Change] = []


class _L2Data(msgspec.Struct):
    symbol: str
    sequenceStart: int
    sequenceEnd: int
    changes: _L2Changes
    time: int = 0  # ms; absent in older frames


class _MatchData(msgspec.Struct):
    symbol: str
    sequence: str | int
    side: Literal["buy", "sell"]
    price: str
    size: str
    time: str | int  # ns
    tradeId: str


class _MarkData(msgspec.Struct):
    markPrice: Decimal
    timestamp: int  # ms
    indexPrice: Decimal | None = None


class _FundingData(msgspec.Struct):
    fundingRate: Decimal
    timestamp: int  # ms


class _L2Msg(msgspec.Struct, tag_field="subject", tag="trade.l2update"):
    data: _L2Data


class _MatchMsg(msgspec.Struct, tag_field="subject", tag="trade.l3match"):
    data: _MatchData


class _MarkMsg(msgspec.Struct, tag_field="subject", tag="mark.index.price"):
    topic: str
    data: _MarkData


class _FundingMsg(msgspec.Struct, tag_field="subject", tag="funding.rate"):
    topic: str
    data: _FundingData


DataDecoder = tuple[str, Callable[[str | bytes], Any]]
"""(quoted subject to look for in the frame text, decoder of that message shape)."""
_DATA_SUBJECTS = frozenset({"trade.l2update", "trade.l3match", "mark.index.price", "funding.rate"})


class _Control(msgspec.Struct):
    """Any frame: welcome / ack / pong / error, or a message we do not parse."""

    type: str = ""
    id: str | int | None = None
    subject: str = ""
    topic: str = ""
    code: str | int | None = None
    data: Any = None


class _Envelope(msgspec.Struct):
    code: str
    data: Any = None
    msg: str = ""


class _Server(msgspec.Struct):
    endpoint: str
    pingInterval: int = 18_000
    pingTimeout: int = 10_000
    protocol: str = "websocket"


class _Bullet(msgspec.Struct):
    token: str
    instanceServers: list[_Server]


class _SymbolRow(msgspec.Struct):
    symbol: str
    baseCurrency: str
    quoteCurrency: str
    priceIncrement: str
    baseIncrement: str
    name: str = ""
    quoteMinSize: str = "0"
    enableTrading: bool = True


class _ContractRow(msgspec.Struct):
    symbol: str
    baseCurrency: str
    quoteCurrency: str
    tickSize: Decimal
    lotSize: Decimal = Decimal(1)
    type: str = "FFWCSX"
    indexPriceTickSize: Decimal | None = None
    status: str = "Open"


class _BookData(msgspec.Struct):
    sequence: str | int
    bids: list[tuple[str, str]]
    asks: list[tuple[str, str]]
    time: int = 0  # ms


_decode_l2 = msgspec.json.Decoder(_L2Msg).decode
_decode_match = msgspec.json.Decoder(_MatchMsg).decode
_decode_mark = msgspec.json.Decoder(_MarkMsg).decode
_decode_funding = msgspec.json.Decoder(_FundingMsg).decode
_decode_control = msgspec.json.Decoder(_Control).decode
_decode_envelope = msgspec.json.Decoder(_Envelope).decode
_encode = msgspec.json.Encoder().encode


def _body(exchange: str, raw: bytes, what: str, type_: type[Any]) -> Any:
    """The ``data`` of a REST reply as ``type_``; :class:`BadResponse` on an error code."""
    try:
        env = _decode_envelope(raw)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise BadResponse(exchange, f"{what}: not a KuCoin reply: {exc}") from exc
    if env.code != OK_CODE:
        raise BadResponse(exchange, f"{what}: code {env.code} {env.msg}".rstrip())
    try:
        return msgspec.convert(env.data, type_)
    except msgspec.ValidationError as exc:
        raise BadResponse(exchange, f"{what}: unexpected data: {exc}") from exc


# ---------------------------------------------------------------------------------------
# Book sync rule
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KucoinDiff(Diff):
    """A level2 message with its raw changes, kept for per-change trimming."""

    changes: _L2Changes | None = None


def fixed(text: str, decimals: int) -> int:
    """Decimal text -> integer units of ``10**-decimals``: a fast path for plain
    ``123.45`` texts, anything else (signs, exponents, extra digits) through
    :func:`kernel.fixedpoint.parse_fixed` (which refuses to round)."""
    whole, dot, frac = text.partition(".")
    n = len(frac)
    if n <= decimals and whole.isdigit() and (frac.isdigit() or not dot):
        return int(whole + frac) * POW10[decimals - n]
    return parse_fixed(text, decimals)


def levels_from_changes(
    inst: Instrument, rows: Sequence[Change], after: int = -1
) -> tuple[Level, ...]:
    """Fixed-point levels of level2 changes, skipping price-"0" placeholders and (when
    ``after`` >= 0) changes whose own sequence is <= ``after``. Prices must be on the
    tick, sizes on the lot (:class:`InstrumentError` otherwise)."""
    if not rows:
        return ()
    pd, sd, tick, lot = inst.price_decimals, inst.size_decimals, inst.tick_size, inst.lot_size
    out: list[Level] = []
    for p, s, q in rows:
        if p == "0" or (after >= 0 and int(q) <= after):
            continue
        price = fixed(p, pd)
        size = fixed(s, sd)
        if price % tick or size % lot:
            raise InstrumentError(f"{inst.key}: level {p} x {s} is off the tick or the lot")
        out.append((price, size))
    return tuple(out)


class KucoinRule:
    """KuCoin spot's bridging rule (EXCHANGES.md, verified on the 2021 capture)."""

    __slots__ = ("inst",)

    def __init__(self, inst: Instrument) -> None:
        self.inst = inst

    def stale(self, snapshot_id: int, diff: Diff) -> bool:
        return diff.last <= snapshot_id

    def bridges(self, snapshot_id: int, diff: Diff) -> bool:
        return diff.first <= snapshot_id + 1 <= diff.last

    def follows(self, prev: Diff, diff: Diff) -> bool:
        return diff.first == prev.last + 1

    def trim(self, snapshot_id: int, diff: Diff) -> Diff:
        """Keep only the changes with a sequence above the snapshot's."""
        if diff.first > snapshot_id or not isinstance(diff, KucoinDiff) or diff.changes is None:
            return diff
        ch = diff.changes
        return dataclasses.replace(
            diff,
            first=snapshot_id + 1,
            bids=levels_from_changes(self.inst, ch.bids, snapshot_id),
            asks=levels_from_changes(self.inst, ch.asks, snapshot_id),
        )


# ---------------------------------------------------------------------------------------
# Shared transport: bullet token, welcome, ping
# ---------------------------------------------------------------------------------------


def _ms_to_ns(ms: int) -> int:
    return ms * NS_PER_MS


def _exact_price(inst: Instrument, value: Decimal) -> int:
    """A computed price (mark, index) in price units, rounded half-even to the precision."""
    q = value.scaleb(inst.price_decimals).to_integral_value(rounding=ROUND_HALF_EVEN)
    return int(q)


class KucoinBase(ExchangeInterface):
    """The bullet-token connection, welcome/ack/pong handling and pings of both venues."""

    exchange: ClassVar[str] = EXCHANGE
    bullet_path: ClassVar[str] = "/api/v1/bullet-public"
    rest_weights: ClassVar[dict[str, float]] = {
        # Public pool: 2000 weight per 30 s at VIP0 (www.kucoin.com/docs-new/rate-limit);
        # the weights are from the endpoint pages (unverified).
        "bullet": 10.0,
        "symbols": 4.0,
        "contracts": 3.0,
        "book_full": 3.0,
        "book_top100": 4.0,
    }

    def __init__(
        self,
        config: FeedConfig,
        *,
        clock: Clock | None = None,
        limiter: RateLimiter | None = None,
        http: Any = None,
        credentials: KucoinCredentials | None = None,
    ) -> None:
        # A private copy: the ping interval is set from each bullet reply.
        config = dataclasses.replace(config)
        super().__init__(
            config,
            clock=clock,
            limiter=limiter or RateLimiter(2000, 2000 / 30, weights=dict(self.rest_weights)),
            http=http,
        )
        self.credentials = credentials if credentials is not None else KucoinCredentials.from_env()
        self._configured_ping_s = config.ping_interval_s
        self.ping_timeout_s = 10.0
        self._ids = itertools.count(1)
        self.welcomed = False
        self.acks = 0
        self.errors: list[str] = []
        """Error frames the venue sent (e.g. a refused subscription), newest last."""
        self.last_ws_url = ""
        self._ping_due = 0.0
        self._unanswered_since: float | None = None

    def retry_after_s(self, headers: Any) -> float | None:
        """KuCoin says when its quota resets in ``gw-ratelimit-reset`` (ms); a
        ``Retry-After`` is honoured where that is missing."""
        reset = headers.get("gw-ratelimit-reset")
        if reset:
            try:
                return max(0.0, float(reset) / 1000.0)
            except ValueError:
                pass
        return super().retry_after_s(headers)

    # -- connection ------------------------------------------------------------------

    async def ws_endpoint(self) -> str:
        """POST bullet-public (every connection needs a fresh token) and build the URL."""
        raw = await self.http_request("POST", self.bullet_path, endpoint="bullet")
        bullet: _Bullet = _body(self.exchange, raw, "bullet-public", _Bullet)
        servers = [s for s in bullet.instanceServers if s.protocol == "websocket"]
        if not servers:
            raise BadResponse(self.exchange, "bullet-public: no websocket instance server")
        server = servers[0]
        ping_s = server.pingInterval / 1000.0
        if self._configured_ping_s:
            ping_s = min(ping_s, self._configured_ping_s)
        self.config.ping_interval_s = ping_s
        self.ping_timeout_s = server.pingTimeout / 1000.0
        sep = "&" if "?" in server.endpoint else "?"
        query = urlencode({"token": bullet.token, "connectId": uuid.uuid4().hex})
        self.last_ws_url = f"{server.endpoint}{sep}{query}"
        return self.last_ws_url

    def subscribe_frames(self) -> list[str]:
        """Nothing before the welcome: see :meth:`topic_frames`."""
        return []

    def topics(self) -> list[str]:
        """Topic prefixes (``/market/level2``) to subscribe for the configured channels."""
        raise NotImplementedError

    def topic_frames(self) -> list[str]:
        """Subscribe frames, symbols batched per topic (sent after the welcome)."""
        wires = [i.wire_symbol for i in self.instruments.values()]
        out: list[str] = []
        for prefix in self.topics():
            for k in range(0, len(wires), MAX_SYMBOLS_PER_TOPIC):
                batch = ",".join(wires[k : k + MAX_SYMBOLS_PER_TOPIC])
                frame = {
                    "id": str(next(self._ids)),
                    "type": "subscribe",
                    "topic": f"{prefix}:{batch}",
                    "privateChannel": False,
                    "response": True,
                }
                out.append(_encode(frame).decode())
        return out

    def on_connected(self) -> None:
        self.welcomed = False
        now = time.monotonic()
        self._ping_due = now + (self.config.ping_interval_s or float("inf"))
        self._unanswered_since = None

    def ping_frame(self) -> str | None:
        """The application ping; raises :class:`Disconnected` when the oldest unanswered
        ping is older than ``pingTimeout`` (checked at each ping)."""
        now = time.monotonic()
        since = self._unanswered_since
        if since is None:
            self._unanswered_since = now
        elif now - since >= self.ping_timeout_s:
            raise Disconnected(self.exchange, f"no pong within {self.ping_timeout_s:g} s of a ping")
        self._ping_due = now + (self.config.ping_interval_s or float("inf"))
        return _encode({"id": str(next(self._ids)), "type": "ping"}).decode()

    # -- frames ----------------------------------------------------------------------

    def on_frame(self, frame: str | bytes, ts_recv: int) -> list[Event]:
        if time.monotonic() >= self._ping_due:
            ping = self.ping_frame()
            if ping is not None:
                self.outbox.append(ping)
        text = frame if isinstance(frame, str) else frame.decode("utf-8", "replace")
        # Pick the typed decoder by the quoted subject in the text (a substring search is
        # far cheaper than a failed decode); the decoder still checks the subject field.
        for marker, decode in self.data_decoders:
            if marker in text:
                try:
                    msg = decode(text)
                except (msgspec.ValidationError, msgspec.DecodeError) as exc:
                    return self._on_control(text, exc)
                try:
                    return self.on_message(msg, ts_recv)
                except ValueError as exc:  # InstrumentError, FixedPointError
                    raise MalformedMessage(self.exchange, f"bad value: {exc}") from exc
        return self._on_control(text, None)

    data_decoders: ClassVar[tuple[DataDecoder, ...]] = ()
    """The data messages this venue parses (everything else is a control frame)."""

    def on_message(self, msg: Any, ts_recv: int) -> list[Event]:
        """A decoded data message (one of :attr:`data_decoders`' shapes)."""
        return []

    def _on_control(self, frame: str, error: Exception | None) -> list[Event]:
        try:
            ctl = _decode_control(frame)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            raise MalformedMessage(self.exchange, f"not a JSON object: {exc}") from exc
        if ctl.subject in _DATA_SUBJECTS and (error is not None or ctl.type == "message"):
            why = error if error is not None else "not the expected shape"
            raise MalformedMessage(self.exchange, f"{ctl.subject}: {why}")
        kind = ctl.type
        if kind == "welcome":
            self.welcomed = True
            self.outbox.extend(self.topic_frames())
            self.on_welcome()
        elif kind == "ack":
            self.acks += 1
            self.on_ack()
        elif kind == "pong":
            self._unanswered_since = None
        elif kind == "error":
            text = f"code {ctl.code}: {ctl.data}"
            self.errors.append(text)
            log.warning("venue_error", exchange=self.exchange, id=ctl.id, error=text)
        return []

    def on_welcome(self) -> None:
        """The server said welcome (subscriptions are on their way)."""

    def on_ack(self) -> None:
        """A subscription was acknowledged."""


# ---------------------------------------------------------------------------------------
# Spot
# ---------------------------------------------------------------------------------------


class KucoinSpot(KucoinBase):
    """KuCoin spot: level2 books (REST snapshot + diffs) and trades."""

    default_ws_url: ClassVar[str] = ""  # from the bullet token
    default_rest_url: ClassVar[str] = "https://api.kucoin.com"
    data_decoders: ClassVar[tuple[DataDecoder, ...]] = (
        ('"trade.l2update"', _decode_l2),
        ('"trade.l3match"', _decode_match),
    )

    def __init__(self, config: FeedConfig, **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        self.books: dict[str, BufferedBook] = {}
        """Per wire symbol; reset on every connection."""

    # -- instruments -----------------------------------------------------------------

    async def load_instruments(self) -> list[Instrument]:
        raw = await self.http_request("GET", "/api/v1/symbols", endpoint="symbols")
        return self.use_symbols(raw)

    def use_symbols(self, raw: bytes | str) -> list[Instrument]:
        """Resolve the configured symbols in a ``/api/v1/symbols`` reply and make their
        books (what :meth:`load_instruments` does after fetching it; no I/O)."""
        body = raw.encode() if isinstance(raw, str) else raw
        rows: list[_SymbolRow] = _body(self.exchange, body, "symbols", list[_SymbolRow])
        insts = resolve_spot_symbols(rows, self.config.symbols)
        self.instruments = {i.wire_symbol.upper(): i for i in insts}
        self._make_books(insts)
        return insts

    def _make_books(self, insts: Iterable[Instrument]) -> None:
        self.books = {
            i.wire_symbol: BufferedBook(i, KucoinRule(i), self.config.max_buffer) for i in insts
        }

    def topics(self) -> list[str]:
        ch = self.config.channels
        return [t for c, t in (("book", "/market/level2"), ("trades", "/market/match")) if c in ch]

    def on_connected(self) -> None:
        super().on_connected()
        if not self.books:
            self._make_books(self.instruments.values())
        for book in self.books.values():
            book.reset()

    def on_ack(self) -> None:
        # A subscription is live: fetch the snapshots now, so that books of quiet symbols
        # sync too (diffs meanwhile are buffered).
        if "book" in self.config.channels:
            for wire, book in self.books.items():
                if not book.synced:
                    self.request_snapshot(wire)

    # -- frames ----------------------------------------------------------------------

    def on_message(self, msg: Any, ts_recv: int) -> list[Event]:
        if type(msg) is _L2Msg:
            return self._on_level2(msg.data, ts_recv)
        if type(msg) is _MatchMsg:
            return self._on_match(msg.data, ts_recv)
        return []

    def _on_level2(self, d: _L2Data, ts_recv: int) -> list[Event]:
        book = self.books.get(d.symbol)
        if book is None:
            raise MalformedMessage(self.exchange, f"level2 for unsubscribed {d.symbol!r}")
        inst = book.inst
        ch = d.changes
        diff = KucoinDiff(
            d.sequenceStart,
            d.sequenceEnd,
            -1,
            levels_from_changes(inst, ch.bids),
            levels_from_changes(inst, ch.asks),
            d.time * NS_PER_MS if d.time else ts_recv,
            ts_recv,
            ch,
        )
        if not book.synced:
            self.request_snapshot(d.symbol)
        events = book.on_diff(diff)
        if events:
            delta = events[0]
            if isinstance(delta, BookDelta) and not delta.bids and not delta.asks:
                return []  # placeholders only: the sequence moved, the book did not
        return events

    def _on_match(self, d: _MatchData, ts_recv: int) -> list[Event]:
        inst = self.instruments.get(d.symbol)
        if inst is None:
            raise MalformedMessage(self.exchange, f"match for unsubscribed {d.symbol!r}")
        return [
            Trade(
                int(d.time),
                ts_recv,
                self.exchange,
                inst.symbol,
                int(d.sequence),
                d.tradeId,
                inst.price(d.price),
                inst.size(d.size),
                d.side,
            )
        ]

    # -- REST snapshot ---------------------------------------------------------------

    def snapshot_path(self) -> str:
        """Full depth with a key, else the public top 100 (``extra["snapshot_path"]``
        overrides)."""
        path = self.config.extra.get("snapshot_path")
        if path:
            return str(path)
        return FULL_BOOK_PATH if self.credentials is not None else TOP100_BOOK_PATH

    async def fetch_snapshot(self, wire_symbol: str, priority: Priority) -> list[Event]:
        path = self.snapshot_path()
        query = f"symbol={wire_symbol}"
        headers = None
        if self.credentials is not None and path == FULL_BOOK_PATH:
            headers = self.credentials.headers(
                "GET", f"{path}?{query}", timestamp_ms=self.clock.now_ns() // NS_PER_MS
            )
        endpoint = "book_full" if path == FULL_BOOK_PATH else "book_top100"
        raw = await self.http_request(
            "GET",
            path,
            endpoint=endpoint,
            priority=priority,
            params={"symbol": wire_symbol},
            headers=headers,
        )
        return self.on_snapshot_body(wire_symbol, raw, self.clock.now_ns())

    def on_snapshot_body(self, wire_symbol: str, raw: bytes, ts_recv: int) -> list[Event]:
        """Apply a REST level2 reply to the symbol's book (with the buffered diffs that
        follow it); no I/O."""
        snap: _BookData = _body(self.exchange, raw, f"book {wire_symbol}", _BookData)
        book = self.books.get(wire_symbol)
        if book is None:
            raise MalformedMessage(self.exchange, f"snapshot for unsubscribed {wire_symbol!r}")
        inst = book.inst
        try:
            seq = int(snap.sequence)
            bids = parse_levels(inst, snap.bids, self.exchange)
            asks = parse_levels(inst, snap.asks, self.exchange)
        except ValueError as exc:
            raise MalformedMessage(self.exchange, f"snapshot {wire_symbol}: {exc}") from exc
        ts_event = snap.time * NS_PER_MS if snap.time else ts_recv
        return self._drop_empty(book.on_snapshot(seq, bids, asks, ts_event, ts_recv))

    @staticmethod
    def _drop_empty(events: list[Event]) -> list[Event]:
        return [e for e in events if not isinstance(e, BookDelta) or e.bids or e.asks]


def resolve_spot_symbols(rows: Sequence[_SymbolRow], wanted: Sequence[str]) -> list[Instrument]:
    """Instruments for the configured symbols, looked up in KuCoin's symbol table by wire
    name (``BCHSV-USDT``), display name or normalised symbol (``BSV-USDT``)."""
    by_name: dict[str, _SymbolRow] = {}
    for r in rows:
        by_name[normalise_symbol(r.baseCurrency, r.quoteCurrency, "spot")] = r
        if r.name:
            by_name[r.name.upper()] = r
    by_name.update({r.symbol.upper(): r for r in rows})  # the wire name wins
    out: list[Instrument] = []
    for want in wanted:
        row = by_name.get(want.strip().upper())
        if row is None:
            raise InstrumentError(
                f"{EXCHANGE}: no symbol {want!r} in /api/v1/symbols ({len(rows)} symbols)"
            )
        out.append(
            instrument_from_increments(
                EXCHANGE,
                base=row.baseCurrency,
                quote=row.quoteCurrency,
                kind="spot",
                tick=row.priceIncrement,
                lot="0." + "0" * (SPOT_SIZE_DECIMALS - 1) + "1",
                wire_symbol=row.symbol,
                min_notional=row.quoteMinSize,
            )
        )
    return out


# ---------------------------------------------------------------------------------------
# Futures: mark price and funding
# ---------------------------------------------------------------------------------------


class KucoinFutures(KucoinBase):
    """KuCoin futures perps: mark/index price and funding rate (``/contract/instrument``).

    Books and trades of futures are not collected here (different level2 format).
    """

    default_ws_url: ClassVar[str] = ""
    default_rest_url: ClassVar[str] = "https://api-futures.kucoin.com"
    data_decoders: ClassVar[tuple[DataDecoder, ...]] = (
        ('"mark.index.price"', _decode_mark),
        ('"funding.rate"', _decode_funding),
    )

    async def load_instruments(self) -> list[Instrument]:
        raw = await self.http_request("GET", "/api/v1/contracts/active", endpoint="contracts")
        rows: list[_ContractRow] = _body(self.exchange, raw, "contracts", list[_ContractRow])
        return resolve_contracts(rows, self.config.symbols)

    def topics(self) -> list[str]:
        return ["/contract/instrument"] if "funding" in self.config.channels else []

    def on_message(self, msg: Any, ts_recv: int) -> list[Event]:
        if type(msg) is _MarkMsg:
            inst = self._topic_instrument(msg.topic)
            m = msg.data
            index = 0 if m.indexPrice is None else _exact_price(inst, m.indexPrice)
            return [
                MarkPrice(
                    _ms_to_ns(m.timestamp),
                    ts_recv,
                    self.exchange,
                    inst.symbol,
                    0,
                    _exact_price(inst, m.markPrice),
                    index,
                )
            ]
        if type(msg) is _FundingMsg:
            inst = self._topic_instrument(msg.topic)
            f = msg.data
            rate = from_decimal(f.fundingRate, RATE_DECIMALS)
            return [
                FundingRate(_ms_to_ns(f.timestamp), ts_recv, self.exchange, inst.symbol, 0, rate)
            ]
        return []

    def _topic_instrument(self, topic: str) -> Instrument:
        wire = topic.rpartition(":")[2]
        inst = self.instruments.get(wire)
        if inst is None:
            raise MalformedMessage(self.exchange, f"message for unsubscribed {topic!r}")
        return inst


def resolve_contracts(rows: Sequence[_ContractRow], wanted: Sequence[str]) -> list[Instrument]:
    """Perp instruments (``type`` FFWCSX) for the configured symbols: wire (``XBTUSDTM``)
    or normalised (``BTC-USDT-PERP``). Price decimals cover the finer of the tick and the
    index tick, so marks and indices are exact where the venue rounds them there."""
    perps = [row for row in rows if row.type == "FFWCSX"]
    by_name = {normalise_symbol(r.baseCurrency, r.quoteCurrency, "perp"): r for r in perps}
    by_name.update({r.symbol.upper(): r for r in perps})  # the wire name wins
    out: list[Instrument] = []
    for want in wanted:
        row = by_name.get(want.strip().upper())
        if row is None:
            raise InstrumentError(f"{EXCHANGE}: no perpetual {want!r} in /api/v1/contracts/active")
        ticks = [row.tickSize] + ([row.indexPriceTickSize] if row.indexPriceTickSize else [])
        decimals = max(decimals_of(format(t, "f")) for t in ticks)
        out.append(
            instrument_from_increments(
                EXCHANGE,
                base=row.baseCurrency,
                quote=row.quoteCurrency,
                kind="perp",
                tick=format(row.tickSize, "f"),
                lot=format(row.lotSize, "f"),
                wire_symbol=row.symbol,
                venue="kucoin-futures",
                price_decimals=decimals,
            )
        )
    return out


__all__ = [
    "EXCHANGE",
    "FULL_BOOK_PATH",
    "TOP100_BOOK_PATH",
    "KucoinBase",
    "KucoinCredentials",
    "KucoinDiff",
    "KucoinFutures",
    "KucoinRule",
    "KucoinSpot",
    "hmac_b64",
    "levels_from_changes",
    "resolve_contracts",
    "resolve_spot_symbols",
]
