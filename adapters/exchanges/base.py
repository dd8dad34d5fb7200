"""The exchange adapter contract: connect, subscribe, sync books, emit normalised events.

An adapter turns one venue's WebSocket frames (and REST snapshots) into kernel events
(:mod:`kernel.events`): ``BookSnapshot`` / ``BookDelta`` / ``Trade`` / ``FundingRate`` /
``MarkPrice``, plus ``Connectivity`` events whenever the link goes up, down or a book is
resynchronised. It is the edge of the system: it reads the wall clock (through an
injectable :class:`Clock`) and does I/O; the kernel never does.

The split between this module and a venue module:

* :class:`ExchangeInterface` owns the transport loop (:meth:`ExchangeInterface.run`):
  connect with exponential back-off and jitter, send the subscribe frames, read frames,
  hand each one to the venue's :meth:`~ExchangeInterface.on_frame`, fetch REST snapshots
  through the rate limiter (resync snapshots first), poll REST while the WebSocket is
  down, roll long-lived connections over before the venue drops them, and count what it
  saw (:class:`FeedStats`).
* A venue module implements the abstract methods: URLs, subscribe frames, instrument
  loading, frame parsing and the venue's book-sync rule. Frame parsing is synchronous and
  free of I/O so that it can be tested (and benchmarked) frame by frame.

Errors follow one taxonomy (:class:`ExchangeError` and its subclasses), so callers and
logs can tell a sequence gap from a rate limit from a malformed frame.

Prices and sizes are parsed from their decimal text straight into the instrument's fixed
point (:meth:`kernel.instruments.Instrument.price`); no float is ever involved.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import random
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Literal, Protocol

import structlog
from msgspec.structs import replace as replace_struct

from kernel.book import BookError, L2Book
from kernel.events import (
    BookDelta,
    BookSnapshot,
    Connectivity,
    Event,
    Level,
    MarketEvent,
    MarkPrice,
    Trade,
)
from kernel.fixedpoint import POW10
from kernel.instruments import Instrument, InstrumentKind, normalise_symbol

log = structlog.get_logger("tickerml.exchanges")

# ---------------------------------------------------------------------------------------
# Error taxonomy
# ---------------------------------------------------------------------------------------

ErrorKind = Literal[
    "rate_limited",
    "auth",
    "sequence_gap",
    "checksum_mismatch",
    "disconnected",
    "malformed",
    "bad_response",
]


class ExchangeError(Exception):
    """Base of every adapter error. ``kind`` names the class of failure."""

    kind: ClassVar[ErrorKind] = "bad_response"

    def __init__(self, exchange: str, message: str, symbol: str = "") -> None:
        super().__init__(f"{exchange}{':' + symbol if symbol else ''}: {message}")
        self.exchange = exchange
        self.symbol = symbol
        self.message = message


class RateLimited(ExchangeError):
    """HTTP 429 (slow down) or 418 (IP banned); ``retry_after`` seconds if the venue said."""

    kind = "rate_limited"

    def __init__(
        self, exchange: str, message: str, retry_after: float | None = None, status: int = 429
    ) -> None:
        super().__init__(exchange, message)
        self.retry_after = retry_after
        self.status = status


class AuthError(ExchangeError):
    """Missing or rejected credentials."""

    kind = "auth"


class SequenceGap(ExchangeError):
    """A message is missing between two we saw: the book must be rebuilt."""

    kind = "sequence_gap"


class ChecksumMismatch(ExchangeError):
    """Our book's checksum disagrees with the venue's: the book must be rebuilt."""

    kind = "checksum_mismatch"


class Disconnected(ExchangeError):
    """The connection closed or could not be opened."""

    kind = "disconnected"


class MalformedMessage(ExchangeError):
    """A frame that is not valid JSON or lacks the fields its type requires.

    Counted and logged; the stream goes on.
    """

    kind = "malformed"


class InstrumentMismatch(ValueError):
    """A venue's instrument disagrees with the configured one (precision or kind)."""


class BadResponse(ExchangeError):
    """A REST response with an unexpected status or body."""

    kind = "bad_response"


# ---------------------------------------------------------------------------------------
# Clock, back-off, rate limiting
# ---------------------------------------------------------------------------------------


class Clock(Protocol):
    """Where adapters read time. The live clock is the wall clock; tests inject their own."""

    def now_ns(self) -> int: ...


class WallClock:
    """``time.time_ns`` (the only wall clock in the system is at the edges)."""

    def now_ns(self) -> int:
        return time.time_ns()


class Backoff:
    """Exponential back-off with full jitter: attempt n waits U(0, min(cap, base * 2**n)).

    Seeded so that tests are reproducible; :meth:`reset` after a connection proved stable.
    """

    def __init__(self, base_s: float = 0.5, cap_s: float = 30.0, seed: int = 0) -> None:
        if base_s <= 0 or cap_s < base_s:
            raise ValueError("backoff needs 0 < base_s <= cap_s")
        self.base_s = base_s
        self.cap_s = cap_s
        self.attempt = 0
        self._rng = random.Random(seed)

    def next_delay(self) -> float:
        ceiling = min(self.cap_s, self.base_s * (2**self.attempt))
        self.attempt += 1
        return self._rng.uniform(0.0, ceiling)

    def reset(self) -> None:
        self.attempt = 0


Priority = int
PRIORITY_RESYNC: Priority = 0
"""A book that lost sync is blind: its snapshot goes first."""
PRIORITY_SNAPSHOT: Priority = 1
PRIORITY_POLL: Priority = 2
PRIORITY_OTHER: Priority = 3


class TokenBucket:
    """A token bucket of ``capacity`` weight units refilled at ``refill_per_s``.

    ``clock`` returns seconds (monotonic); injectable for tests.
    """

    def __init__(
        self, capacity: float, refill_per_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if capacity <= 0 or refill_per_s <= 0:
            raise ValueError("token bucket needs a positive capacity and refill rate")
        self.capacity = float(capacity)
        self.refill_per_s = float(refill_per_s)
        self._clock = clock
        self._tokens = float(capacity)
        self._at = clock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.capacity, self._tokens + (now - self._at) * self.refill_per_s)
        self._at = now

    def try_take(self, weight: float) -> float:
        """Take ``weight`` tokens if available and return 0, else the seconds to wait."""
        if weight > self.capacity:
            raise ValueError(f"weight {weight} exceeds the bucket capacity {self.capacity}")
        self._refill()
        if self._tokens >= weight:
            self._tokens -= weight
            return 0.0
        return (weight - self._tokens) / self.refill_per_s

    @property
    def tokens(self) -> float:
        self._refill()
        return self._tokens


class RateLimiter:
    """Per-exchange REST budget: a token bucket, endpoint weights and a priority queue.

    ``weights`` maps an endpoint name (``depth``) to its weight (default 1). Waiters are
    served strictly by (priority, arrival): a resync snapshot overtakes queued polls.
    :meth:`penalise` blocks every caller until the venue's ``Retry-After`` has passed
    (graceful degradation on 429/418).
    """

    def __init__(
        self,
        capacity: float,
        refill_per_s: float,
        weights: dict[str, float] | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.bucket = TokenBucket(capacity, refill_per_s, clock)
        self.weights = dict(weights or {})
        self._clock = clock
        self._sleep = sleep
        self._blocked_until = 0.0
        self._queue: list[tuple[int, int, float, asyncio.Future[None]]] = []
        self._order = itertools.count()
        self._pump: asyncio.Task[None] | None = None
        self._pending_names: dict[int, tuple[str, int]] = {}
        self.granted: list[tuple[str, int]] = []
        """(endpoint, priority) in the order permission was granted (for tests and logs)."""

    @classmethod
    def per_minute(cls, weight_per_minute: float, **kwargs: Any) -> RateLimiter:
        """A bucket holding one minute's budget, refilled continuously."""
        return cls(weight_per_minute, weight_per_minute / 60.0, **kwargs)

    def weight(self, endpoint: str) -> float:
        return self.weights.get(endpoint, 1.0)

    def penalise(self, seconds: float) -> None:
        """Nobody may call the venue for ``seconds`` (a 429/418 with Retry-After)."""
        self._blocked_until = max(self._blocked_until, self._clock() + max(0.0, seconds))

    @property
    def blocked_for(self) -> float:
        return max(0.0, self._blocked_until - self._clock())

    async def acquire(self, endpoint: str, priority: Priority = PRIORITY_OTHER) -> None:
        """Wait until a call to ``endpoint`` fits the budget, in priority order."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        heapq.heappush(self._queue, (priority, next(self._order), self.weight(endpoint), fut))
        self._pending_names[id(fut)] = (endpoint, priority)
        if self._pump is None or self._pump.done():
            self._pump = asyncio.create_task(self._run_pump())
        await fut

    async def _run_pump(self) -> None:
        while self._queue:
            _, _, weight, fut = self._queue[0]
            if fut.cancelled():
                heapq.heappop(self._queue)
                self._pending_names.pop(id(fut), None)
                continue
            blocked = self.blocked_for
            if blocked > 0:
                await self._sleep(blocked)
                continue
            wait = self.bucket.try_take(weight)
            if wait > 0:
                await self._sleep(wait)
                continue
            heapq.heappop(self._queue)
            name = self._pending_names.pop(id(fut), ("?", -1))
            self.granted.append(name)
            fut.set_result(None)
            await asyncio.sleep(0)


# ---------------------------------------------------------------------------------------
# Symbols and instruments
# ---------------------------------------------------------------------------------------

KNOWN_QUOTES: tuple[str, ...] = (
    "FDUSD",
    "USDT",
    "USDC",
    "BUSD",
    "TUSD",
    "USDP",
    "DAI",
    "USD",
    "EUR",
    "GBP",
    "JPY",
    "AUD",
    "CAD",
    "CHF",
    "TRY",
    "BRL",
    "BTC",
    "XBT",
    "ETH",
    "BNB",
)
"""Quote assets recognised at the end of a separator-less wire symbol, longest first."""


def split_wire_symbol(wire: str) -> tuple[str, str]:
    """``BTCUSDT`` / ``BTC-USD`` / ``XBT/USD`` / ``BTC_USDT`` -> (base, quote), upper case.

    A fallback for user input: adapters map wire symbols through the venue's own
    instrument table whenever they have it (e.g. ``exchangeInfo``), never by splitting.
    """
    text = wire.strip().upper()
    for sep in ("-", "/", "_"):
        if sep in text:
            base, _, quote = text.partition(sep)
            if base and quote and sep not in quote:
                return base, quote
            raise ValueError(f"cannot split symbol {wire!r}")
    for quote in sorted(KNOWN_QUOTES, key=len, reverse=True):
        if text.endswith(quote) and len(text) > len(quote):
            return text[: -len(quote)], quote
    raise ValueError(
        f"cannot split symbol {wire!r}: no separator and no known quote asset at its end "
        f"(known: {', '.join(KNOWN_QUOTES)})"
    )


def normalise_wire_symbol(wire: str, kind: InstrumentKind = "spot") -> str:
    """``BTCUSDT`` -> ``BTC-USDT``, ``XBT/USD`` -> ``BTC-USD`` (perps get ``-PERP``)."""
    base, quote = split_wire_symbol(wire)
    return normalise_symbol(base, quote, kind)


def decimals_of(text: str) -> int:
    """Decimal places needed to write ``text`` exactly (``"0.01000000"`` -> 2)."""
    t = text.strip()
    if "e" in t.lower():
        from decimal import Decimal

        exp = Decimal(t).normalize().as_tuple().exponent
        return max(0, -int(exp))
    if "." not in t:
        return 0
    return len(t.split(".", 1)[1].rstrip("0"))


def instrument_from_increments(
    exchange: str,
    *,
    base: str,
    quote: str,
    kind: InstrumentKind,
    tick: str,
    lot: str,
    wire_symbol: str,
    venue: str = "",
    min_notional: str = "0",
    maker_fee_ppm: int = 0,
    taker_fee_ppm: int = 0,
    price_decimals: int | None = None,
    size_decimals: int | None = None,
) -> Instrument:
    """An :class:`Instrument` from a venue's tick and lot increments (decimal text).

    Decimals default to the fewest that write the increment exactly; pass them to keep
    the venue's full precision (Kraken's checksum needs ``pair_decimals``).
    """
    from kernel.fixedpoint import MONEY_DECIMALS, parse_fixed

    pd = decimals_of(tick) if price_decimals is None else price_decimals
    sd = decimals_of(lot) if size_decimals is None else size_decimals
    base_name, _, quote_name = normalise_symbol(base, quote, "spot").partition("-")
    return Instrument(
        exchange=exchange,
        symbol=normalise_symbol(base, quote, kind),
        kind=kind,
        base=base_name,
        quote=quote_name,
        price_decimals=pd,
        size_decimals=sd,
        tick_size=max(1, parse_fixed(tick, pd)),
        lot_size=max(1, parse_fixed(lot, sd)),
        min_notional=parse_fixed(min_notional or "0", MONEY_DECIMALS),
        maker_fee_ppm=maker_fee_ppm,
        taker_fee_ppm=taker_fee_ppm,
        wire_symbol=wire_symbol,
        venue=venue,
    )


def parse_levels(
    inst: Instrument, rows: Iterable[Sequence[Any]], exchange: str = ""
) -> tuple[Level, ...]:
    """``[[price, size, ...], ...]`` decimal texts -> fixed-point levels (extra fields ignored)."""
    price, size = inst.price, inst.size
    try:
        return tuple((price(str(r[0])), size(str(r[1]))) for r in rows)
    except (ValueError, IndexError, TypeError) as exc:
        raise MalformedMessage(exchange or inst.exchange, f"bad level: {exc}", inst.symbol) from exc


# ---------------------------------------------------------------------------------------
# Counters
# ---------------------------------------------------------------------------------------


@dataclass
class FeedStats:
    """What one adapter saw; logged on stop and exposed to health checks."""

    frames: int = 0
    bytes: int = 0
    events: int = 0
    malformed: int = 0
    gaps: int = 0
    checksum_failures: int = 0
    invalid_books: int = 0
    resyncs: int = 0
    snapshots: int = 0
    connects: int = 0
    reconnects: int = 0
    rollovers: int = 0
    rate_limited: int = 0
    polls: int = 0
    unrepresentable: int = 0
    """Values finer than the configured instrument precision (rescaled events)."""
    latencies_ns: list[int] = field(default_factory=list)
    """Frame received -> its events handed to the sink, per frame that produced events
    (the last 100,000)."""

    def note_latency(self, ns: int) -> None:
        lat = self.latencies_ns
        lat.append(ns)
        if len(lat) > 200_000:
            del lat[:100_000]

    def as_dict(self) -> dict[str, int]:
        return {k: v for k, v in self.__dict__.items() if isinstance(v, int)}


# ---------------------------------------------------------------------------------------
# Book sync: buffered diffs + REST snapshot (Binance, KuCoin)
# ---------------------------------------------------------------------------------------


class BookInvalid(ExchangeError):
    """Applying an update would make the local book invalid (crossed, negative, off tick).

    The update is not emitted; the book is rebuilt from a fresh snapshot.
    """

    kind = "sequence_gap"


class SnapshotTooOld(SequenceGap):
    """The REST snapshot predates every buffered diff: fetch another (no data was lost)."""


@dataclass(frozen=True, slots=True)
class Diff:
    """One incremental book message, with the venue's update ids.

    ``first``/``last``: first and last update id it covers (Binance ``U``/``u``, KuCoin
    ``sequenceStart``/``sequenceEnd``); ``prev``: the previous message's last id when the
    venue says it (Binance futures ``pu``), else -1.
    """

    first: int
    last: int
    prev: int
    bids: tuple[Level, ...]
    asks: tuple[Level, ...]
    ts_event: int
    ts_recv: int


class DiffRule(Protocol):
    """A venue's rule for bridging a REST snapshot with buffered diffs."""

    def stale(self, snapshot_id: int, diff: Diff) -> bool:
        """The diff is already contained in the snapshot: drop it."""

    def bridges(self, snapshot_id: int, diff: Diff) -> bool:
        """The first diff kept after the snapshot is valid as its successor."""

    def follows(self, prev: Diff, diff: Diff) -> bool:
        """``diff`` directly continues ``prev`` (no message in between)."""

    def trim(self, snapshot_id: int, diff: Diff) -> Diff:
        """The part of the bridging diff that the snapshot does not already contain."""


Levels = tuple[Level, ...]


class LocalBook:
    """A validated local book of one instrument: nothing invalid is ever emitted.

    Wraps :class:`kernel.book.L2Book`; every snapshot and delta is applied here first and
    only emitted if it leaves a valid (uncrossed, non-negative, on-tick) book.
    """

    __slots__ = ("book", "inst")

    def __init__(self, inst: Instrument) -> None:
        self.inst = inst
        self.book = L2Book(inst.exchange, inst.symbol, inst.tick_size, inst.lot_size)

    def snapshot(
        self,
        bids: tuple[Level, ...],
        asks: tuple[Level, ...],
        ts_event: int,
        ts_recv: int,
        seq: int,
    ) -> BookSnapshot:
        try:
            # worst level first: each insert lands at the end of the side's sorted key
            # list instead of its front (a 46,000-level snapshot: 0.04 s instead of 0.24 s)
            self.book.apply_snapshot(bids[::-1], asks[::-1], ts_event)
        except BookError as exc:
            raise BookInvalid(self.inst.exchange, f"snapshot {exc}", self.inst.symbol) from exc
        return BookSnapshot(
            ts_event, ts_recv, self.inst.exchange, self.inst.symbol, seq, bids, asks
        )

    def delta(
        self,
        bids: tuple[Level, ...],
        asks: tuple[Level, ...],
        ts_event: int,
        ts_recv: int,
        seq: int,
    ) -> BookDelta:
        try:
            self.book.apply_delta(bids, asks, ts_event)
        except BookError as exc:
            raise BookInvalid(self.inst.exchange, f"update {exc}", self.inst.symbol) from exc
        return BookDelta(ts_event, ts_recv, self.inst.exchange, self.inst.symbol, seq, bids, asks)


class BufferedBook:
    """Snapshot + diff synchronisation for one instrument.

    Until a snapshot arrives, diffs are buffered (at most ``max_buffer``; beyond that the
    oldest are dropped and the bridge check decides whether a new snapshot is needed).
    :meth:`on_snapshot` drops stale diffs, checks the bridge and replays the rest;
    afterwards every diff must follow the previous one or :class:`SequenceGap` is raised
    (the caller journals ``Connectivity(resync)`` and requests a new snapshot).
    """

    def __init__(self, inst: Instrument, rule: DiffRule, max_buffer: int = 10_000) -> None:
        self.inst = inst
        self.rule = rule
        self.max_buffer = max_buffer
        self.local = LocalBook(inst)
        self.buffer: list[Diff] = []
        self.last: Diff | None = None
        self.synced = False
        self.snapshot_id = -1

    def reset(self) -> None:
        """Forget the book: the next snapshot starts it again (after a gap or reconnect)."""
        self.buffer.clear()
        self.last = None
        self.synced = False
        self.snapshot_id = -1

    def on_diff(self, diff: Diff) -> list[Event]:
        if not self.synced:
            self.buffer.append(diff)
            if len(self.buffer) > self.max_buffer:
                del self.buffer[0]
            return []
        last = self.last
        if last is not None and not self.rule.follows(last, diff):
            self.reset()
            self.buffer.append(diff)
            raise SequenceGap(
                self.inst.exchange,
                f"update {diff.first}..{diff.last} does not follow {last.first}..{last.last}",
                self.inst.symbol,
            )
        if last is None:
            if self.rule.stale(self.snapshot_id, diff):
                return []
            if not self.rule.bridges(self.snapshot_id, diff):
                self.reset()
                self.buffer.append(diff)
                raise SequenceGap(
                    self.inst.exchange,
                    f"update {diff.first}..{diff.last} does not bridge snapshot {self.snapshot_id}",
                    self.inst.symbol,
                )
            diff = self.rule.trim(self.snapshot_id, diff)
        self.last = diff
        return [self._apply(diff)]

    def _apply(self, d: Diff) -> BookDelta:
        try:
            return self.local.delta(d.bids, d.asks, d.ts_event, d.ts_recv, d.last)
        except BookInvalid:
            self.reset()
            raise

    def on_snapshot(
        self,
        snapshot_id: int,
        bids: tuple[Level, ...],
        asks: tuple[Level, ...],
        ts_event: int,
        ts_recv: int,
    ) -> list[Event]:
        """Apply a REST snapshot and the buffered diffs that follow it.

        Raises :class:`SequenceGap` if the buffered diffs do not bridge the snapshot (the
        snapshot is older than the first buffered diff: fetch another one).
        """
        rule = self.rule
        kept = [d for d in self.buffer if not rule.stale(snapshot_id, d)]
        if kept and not rule.bridges(snapshot_id, kept[0]):
            self.buffer = kept
            raise SnapshotTooOld(
                self.inst.exchange,
                f"snapshot {snapshot_id} is not bridged by update {kept[0].first}..{kept[0].last}",
                self.inst.symbol,
            )
        out: list[Event] = [self.local.snapshot(bids, asks, ts_event, ts_recv, snapshot_id)]
        self.snapshot_id = snapshot_id
        self.synced = True
        self.buffer = []
        self.last = None
        for i, d in enumerate(kept):
            # A buffered diff becomes usable only once the snapshot is here: it takes the
            # snapshot's receive time (its exchange time is kept), so the events an
            # adapter emits never go back in ts_recv, the kernel's order.
            if d.ts_recv < ts_recv:
                d = replace(d, ts_recv=ts_recv)
            if i == 0:
                d = rule.trim(snapshot_id, d)
            elif not rule.follows(kept[i - 1], d):
                self.reset()
                self.buffer = kept[i:]
                raise SequenceGap(
                    self.inst.exchange,
                    f"buffered update {d.first}..{d.last} does not follow {kept[i - 1].last}",
                    self.inst.symbol,
                )
            self.last = d
            out.append(self._apply(d))
        return out


# ---------------------------------------------------------------------------------------
# The adapter
# ---------------------------------------------------------------------------------------

EventSink = Callable[[list[Event]], Awaitable[None]]
"""Receives each batch of events an adapter produces (in order)."""

Channel = Literal["book", "trades", "funding"]


@dataclass
class FeedConfig:
    """What to collect and where from.

    ``symbols``: wire (``BTCUSDT``) or normalised (``BTC-USDT``) symbols. ``depth``: levels
    kept for top-N polling and Kraken-style depth subscriptions (20 or 50 typical).
    ``ws_url`` / ``rest_url`` override the venue's hosts (tests point them at the local
    fake exchange). ``rollover_s``: planned reconnect before the venue's connection
    lifetime (Binance: 24 h). ``poll_interval_s``: REST polling while the WebSocket is
    down (0 disables it).
    """

    symbols: Sequence[str]
    channels: frozenset[str] = frozenset({"book", "trades", "funding"})
    depth: int = 50
    ws_url: str | None = None
    rest_url: str | None = None
    rollover_s: float = 23 * 3600.0
    ping_interval_s: float | None = 20.0
    poll_interval_s: float = 1.0
    backoff_base_s: float = 0.5
    backoff_cap_s: float = 30.0
    stable_after_s: float = 10.0
    seed: int = 0
    max_buffer: int = 10_000
    rest_timeout_s: float = 10.0
    extra: dict[str, Any] = field(default_factory=dict)


class ExchangeInterface(ABC):
    """One venue's market-data collector. Subclasses implement the abstract methods.

    Life cycle: :meth:`run` (until :meth:`stop`) = load instruments once, then for each
    connection: open the WebSocket, :meth:`on_connected`, send :meth:`subscribe_frames`,
    feed every frame to :meth:`on_frame`; on a :class:`SequenceGap` /
    :class:`ChecksumMismatch` / :class:`BookInvalid` emit ``Connectivity(resync)`` and call
    :meth:`resync`; on disconnect emit ``Connectivity(down)``, poll REST
    (:meth:`poll_rest`) and reconnect after a back-off delay.
    """

    exchange: ClassVar[str]
    """Exchange id in events (``BINANCE``)."""
    default_ws_url: ClassVar[str]
    default_rest_url: ClassVar[str]
    rest_weights: ClassVar[dict[str, float]] = {}
    protocol_ping_s: ClassVar[float | None] = None
    """WebSocket protocol-level ping interval for venues that require client pings
    (Kraken Futures: one at least every 60 s); None: only :meth:`ping_frame`."""

    def __init__(
        self,
        config: FeedConfig,
        *,
        clock: Clock | None = None,
        limiter: RateLimiter | None = None,
        http: Any = None,
    ) -> None:
        self.config = config
        self.clock: Clock = clock or WallClock()
        self.limiter = limiter or RateLimiter.per_minute(1200, weights=dict(self.rest_weights))
        self.stats = FeedStats()
        self.backoff = Backoff(config.backoff_base_s, config.backoff_cap_s, config.seed)
        self.instruments: dict[str, Instrument] = {}
        """Subscribed instruments by wire symbol (upper case)."""
        self._http = http
        self._ws: Any = None
        self._stop = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._pending_snapshots: set[str] = set()
        self._sink: EventSink | None = None
        self.expected: dict[str, Instrument] = {}
        """Instruments the consumer of the events already knows (``EXCHANGE:SYMBOL`` ->
        instrument, e.g. the kernel's ``config/instruments.yaml``). Events of an instrument
        whose venue precision differs are rescaled to the configured precision on the way
        out (:meth:`_rescaled`); a different kind raises :class:`InstrumentMismatch`."""
        self._rescale: dict[str, tuple[int, int]] = {}
        self.raw_capture: Callable[[dict[str, Any]], None] | None = None
        """If set, called with every raw frame, subscribe frame, connect and REST response
        as a cryptofeed-style capture row (``{"t": "recv", "ts": ..., "data": ...}``), so a
        recording can be played back by :mod:`adapters.exchanges.fake`."""
        self.outbox: list[str] = []
        """Frames for the venue (pongs, resubscribes) sent after the current frame."""

    # -- venue specifics -------------------------------------------------------------

    @abstractmethod
    async def load_instruments(self) -> list[Instrument]:
        """Fetch the venue's instrument table and return the subscribed instruments."""

    @abstractmethod
    def subscribe_frames(self) -> list[str]:
        """Frames to send after connecting (may be empty if the URL subscribes)."""

    @abstractmethod
    def on_frame(self, frame: str | bytes, ts_recv: int) -> list[Event]:
        """Parse one frame into events; raise the taxonomy's errors. No I/O."""

    def on_connected(self) -> None:  # noqa: B027 - optional hook
        """A new connection is open: reset per-connection state (books, sequences)."""

    async def ws_endpoint(self) -> str:
        """The URL to connect to (KuCoin fetches a token first)."""
        return self.config.ws_url or self.default_ws_url

    @property
    def rest_url(self) -> str:
        return (self.config.rest_url or self.default_rest_url).rstrip("/")

    async def fetch_snapshot(self, wire_symbol: str, priority: Priority) -> list[Event]:
        """REST snapshot of one book as events (venues with in-band snapshots don't)."""
        raise NotImplementedError(f"{self.exchange} has no REST book snapshot")

    async def resync(self, wire_symbol: str) -> None:
        """Rebuild one book after a gap: by default a REST snapshot at top priority."""
        self.request_snapshot(wire_symbol, PRIORITY_RESYNC)

    async def poll_rest(self) -> list[Event]:
        """REST fallback while the WebSocket is down: fresh snapshots of every book."""
        out: list[Event] = []
        for wire in list(self.instruments):
            try:
                out.extend(await self.fetch_snapshot(wire, PRIORITY_POLL))
            except NotImplementedError:
                return out
        return out

    def retry_after_s(self, headers: Any) -> float | None:
        """Seconds to wait after a 429/418: ``Retry-After`` (venues with their own header
        override this)."""
        return _retry_after(headers.get("Retry-After"))

    def ping_frame(self) -> str | None:
        """An application-level ping to send every ``ping_interval_s`` (None: rely on
        WebSocket-level pings)."""
        return None

    # -- helpers for venue modules ----------------------------------------------------

    def instrument(self, wire_symbol: str) -> Instrument:
        try:
            return self.instruments[wire_symbol.upper()]
        except KeyError:
            raise MalformedMessage(
                self.exchange, f"frame for unsubscribed symbol {wire_symbol!r}"
            ) from None

    def connectivity(self, status: Literal["up", "down", "resync"], reason: str) -> list[Event]:
        now = self.clock.now_ns()
        return [
            Connectivity(now, now, self.exchange, inst.symbol, status, reason)
            for inst in self.instruments.values()
        ]

    def request_snapshot(self, wire_symbol: str, priority: Priority = PRIORITY_SNAPSHOT) -> None:
        """Fetch a REST snapshot in the background (once per symbol at a time)."""
        if wire_symbol in self._pending_snapshots or self._sink is None:
            return
        self._pending_snapshots.add(wire_symbol)
        self._spawn(self._snapshot_task(wire_symbol, priority))

    async def http_request(
        self,
        method: str,
        path: str,
        *,
        endpoint: str,
        priority: Priority = PRIORITY_OTHER,
        params: dict[str, Any] | None = None,
        json_body: Any = None,
        headers: dict[str, str] | None = None,
        content: bytes | None = None,
    ) -> bytes:
        """One REST call through the rate limiter; 429/418 raise :class:`RateLimited` after
        penalising the limiter by the venue's ``Retry-After``. ``content``: a raw body
        (a form-encoded, signed POST) instead of ``json_body``."""
        import httpx

        await self.limiter.acquire(endpoint, priority)
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=self.config.rest_timeout_s)
        url = path if path.startswith("http") else f"{self.rest_url}{path}"
        try:
            resp = await self._http.request(
                method, url, params=params, json=json_body, headers=headers, content=content
            )
        except httpx.HTTPError as exc:
            raise Disconnected(self.exchange, f"{method} {url}: {exc!r}") from exc
        if resp.status_code in (429, 418):
            retry = self.retry_after_s(resp.headers)
            self.stats.rate_limited += 1
            self.limiter.penalise(retry if retry is not None else 1.0)
            raise RateLimited(
                self.exchange,
                f"{method} {url} -> HTTP {resp.status_code}",
                retry_after=retry,
                status=resp.status_code,
            )
        if resp.status_code in (401, 403):
            raise AuthError(self.exchange, f"{method} {url} -> HTTP {resp.status_code}")
        if resp.status_code >= 400:
            raise BadResponse(
                self.exchange, f"{method} {url} -> HTTP {resp.status_code}: {resp.text[:200]}"
            )
        body: bytes = resp.content
        if self.raw_capture is not None:
            self.raw_capture(
                {
                    "t": "http",
                    "conn": f"{self.exchange}.http",
                    "ts": time.time(),
                    "url": str(resp.url),
                    "data": body.decode("utf-8", "replace"),
                }
            )
        return body

    # -- the loop ----------------------------------------------------------------------

    def stop(self) -> None:
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _emit(self, events: list[Event], ts_recv: int | None = None) -> None:
        if not events or self._sink is None:
            return
        if self._rescale:
            events = [e for e in map(self._rescaled, events) if e is not None]
            if not events:
                return
        self.stats.events += len(events)
        await self._sink(events)
        if ts_recv is not None:
            self.stats.note_latency(self.clock.now_ns() - ts_recv)

    def check_expected(self) -> None:
        """Compare the loaded instruments with :attr:`expected`: set up rescaling where
        the precision differs, raise :class:`InstrumentMismatch` where the kind does."""
        self._rescale = {}
        for inst in self.instruments.values():
            want = self.expected.get(inst.key)
            if want is None:
                continue
            if want.kind != inst.kind:
                raise InstrumentMismatch(
                    f"{inst.key}: the venue lists a {inst.kind}, config/instruments.yaml a "
                    f"{want.kind}"
                )
            dp = want.price_decimals - inst.price_decimals
            ds = want.size_decimals - inst.size_decimals
            if dp or ds:
                self._rescale[inst.key] = (dp, ds)
                log.info(
                    "rescaling",
                    exchange=self.exchange,
                    instrument=inst.key,
                    venue=(inst.price_decimals, inst.size_decimals),
                    configured=(want.price_decimals, want.size_decimals),
                )

    def _rescaled(self, ev: Event) -> Event | None:
        """``ev`` in the configured precision of its instrument.

        Finer configured precision: exact (multiply). Coarser: a book level whose price is
        not on the configured grid is left out (the same price is always left out, so the
        book stays consistent), sizes are floored to the configured precision (a level
        that floors to 0 is deleted), trade and mark prices are rounded half-even; each
        loss is counted in ``stats.unrepresentable``.
        """
        if not isinstance(ev, MarketEvent):
            return ev
        scale = self._rescale.get(f"{ev.exchange}:{ev.symbol}")
        if scale is None:
            return ev
        dp, ds = scale
        if isinstance(ev, BookSnapshot | BookDelta):
            bids = self._rescale_levels(ev.bids, dp, ds)
            asks = self._rescale_levels(ev.asks, dp, ds)
            if not bids and not asks and (ev.bids or ev.asks):
                return None
            return replace_struct(ev, bids=bids, asks=asks)
        if isinstance(ev, Trade):
            price = self._rescale_price(ev.price, dp)
            return replace_struct(ev, price=price, size=_floor(ev.size, ds))
        if isinstance(ev, MarkPrice):
            return replace_struct(
                ev,
                mark_price=self._rescale_price(ev.mark_price, dp),
                index_price=self._rescale_price(ev.index_price, dp),
            )
        return ev

    def _rescale_levels(self, levels: tuple[Level, ...], dp: int, ds: int) -> tuple[Level, ...]:
        if dp >= 0 and ds >= 0:
            pm, sm = POW10[dp], POW10[ds]
            return tuple((p * pm, s * sm) for p, s in levels)
        out = []
        for p, s in levels:
            price = _exact(p, dp)
            if price is None:
                self.stats.unrepresentable += 1
                continue
            out.append((price, _floor(s, ds)))
        return tuple(out)

    def _rescale_price(self, units: int, d: int) -> int:
        exact = _exact(units, d)
        if exact is not None:
            return exact
        self.stats.unrepresentable += 1
        m = POW10[-d]
        q, r = divmod(units, m)
        return q + 1 if 2 * r > m or (2 * r == m and q % 2) else q

    async def _snapshot_task(self, wire: str, priority: Priority) -> None:
        try:
            while not self.stopping:
                try:
                    events = await self.fetch_snapshot(wire, priority)
                except RateLimited as exc:
                    log.warning("rate_limited", exchange=self.exchange, error=str(exc))
                    continue  # the limiter now blocks until Retry-After has passed
                except SnapshotTooOld as exc:
                    log.info("snapshot_not_bridged", exchange=self.exchange, error=str(exc))
                    await self._sleep_or_stop(self.backoff.next_delay())
                    continue
                except (SequenceGap, BookInvalid) as exc:
                    # a gap inside the buffered diffs: journal it; the next snapshot
                    # may bridge the diffs after the gap
                    await self._note_sync_error(exc)
                    await self._sleep_or_stop(self.backoff.next_delay())
                    continue
                except (Disconnected, BadResponse, MalformedMessage) as exc:
                    log.warning("snapshot_failed", exchange=self.exchange, error=str(exc))
                    await asyncio.sleep(self.backoff.next_delay())
                    continue
                self.stats.snapshots += 1
                await self._emit(events)
                return
        finally:
            self._pending_snapshots.discard(wire)

    async def _handle_sync_error(self, exc: ExchangeError) -> None:
        insts = await self._note_sync_error(exc)
        for inst in insts:
            await self.resync(inst.wire_symbol.upper())

    async def _note_sync_error(self, exc: ExchangeError) -> list[Instrument]:
        """Count a gap / checksum / invalid-book error and journal Connectivity(resync)."""
        if isinstance(exc, ChecksumMismatch):
            self.stats.checksum_failures += 1
        elif isinstance(exc, BookInvalid):
            self.stats.invalid_books += 1
        else:
            self.stats.gaps += 1
        self.stats.resyncs += 1
        log.warning("resync", exchange=self.exchange, kind=exc.kind, error=str(exc))
        now = self.clock.now_ns()
        insts = [i for i in self.instruments.values() if not exc.symbol or i.symbol == exc.symbol]
        await self._emit(
            [
                Connectivity(
                    now, now, self.exchange, i.symbol, "resync", f"{exc.kind}: {exc.message}"
                )
                for i in insts
            ]
        )
        return insts

    async def run(self, sink: EventSink) -> None:
        """Collect until :meth:`stop`. Reconnects forever; never raises for venue errors
        (they are counted, logged and journaled as ``Connectivity`` events)."""
        import websockets

        self._sink = sink
        self._stop.clear()
        while not self.instruments and not self.stopping:
            try:
                insts = await self.load_instruments()
                self.instruments = {i.wire_symbol.upper(): i for i in insts}
            except (ExchangeError, OSError) as exc:
                log.warning("instruments_failed", exchange=self.exchange, error=str(exc))
                await self._sleep_or_stop(self.backoff.next_delay())
        self.check_expected()
        poller: asyncio.Task[None] | None = None
        first = True
        while not self.stopping:
            try:
                url = await self.ws_endpoint()
                async with websockets.connect(
                    url,
                    max_size=None,
                    ping_interval=self.protocol_ping_s,
                    compression=None,
                    open_timeout=self.config.rest_timeout_s,
                    close_timeout=1.0,
                ) as ws:
                    self._ws = ws
                    self.stats.connects += 1
                    if not first:
                        self.stats.reconnects += 1
                    first = False
                    if poller is not None:
                        poller.cancel()
                        poller = None
                    self.on_connected()
                    await self._emit(self.connectivity("up", "connected"))
                    cap = self.raw_capture
                    conn = f"{self.exchange}.ws.{self.stats.connects}"
                    if cap is not None:
                        cap({"t": "connect", "conn": conn, "ts": time.time(), "addr": url})
                    for frame in self.subscribe_frames():
                        if cap is not None:
                            cap({"t": "send", "conn": conn, "ts": time.time(), "data": frame})
                        await ws.send(frame)
                    reason = await self._read(ws)
                    if reason == "rollover":
                        self.stats.rollovers += 1
                        await self._emit(self.connectivity("down", "planned rollover"))
                        continue
                    if reason == "stopped":
                        break
            except (TimeoutError, OSError, ExchangeError) as exc:
                log.warning("connect_failed", exchange=self.exchange, error=repr(exc))
                reason = f"connect failed: {exc!r}"
            except websockets.exceptions.WebSocketException as exc:
                reason = f"websocket error: {exc!r}"
            finally:
                self._ws = None
            if self.stopping:
                break
            await self._emit(self.connectivity("down", str(reason)))
            if poller is None and self.config.poll_interval_s > 0:
                poller = asyncio.ensure_future(self._poll_loop())
            await self._sleep_or_stop(self.backoff.next_delay())
        if poller is not None:
            poller.cancel()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._emit(self.connectivity("down", "stopped"))
        if self._http is not None:
            await self._http.aclose()
            self._http = None
        log.info("feed_stopped", exchange=self.exchange, **self.stats.as_dict())

    async def _sleep_or_stop(self, seconds: float) -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._stop.wait(), timeout=seconds)

    async def _poll_loop(self) -> None:
        while not self.stopping:
            try:
                events = await self.poll_rest()
                self.stats.polls += 1
                await self._emit(events)
            except ExchangeError as exc:
                log.info("poll_failed", exchange=self.exchange, error=str(exc))
            await self._sleep_or_stop(self.config.poll_interval_s)

    async def _read(self, ws: Any) -> str:
        """Read frames until the socket closes, the feed stops or a rollover is due.

        The read loop itself is a plain ``async for`` (no task or timer per frame); a
        supervisor task sends application pings, resets the back-off once the connection
        proved stable, and closes the socket for a stop or a planned rollover.
        """
        import websockets

        why = ["closed"]

        async def supervise() -> None:
            opened = time.monotonic()
            ping_every = self.config.ping_interval_s or float("inf")
            next_ping = opened + ping_every
            stable_at = opened + self.config.stable_after_s
            rollover_at = opened + self.config.rollover_s
            while True:
                now = time.monotonic()
                wake = min(next_ping, rollover_at, stable_at if stable_at > 0 else rollover_at)
                await self._sleep_or_stop(max(0.0, wake - now))
                now = time.monotonic()
                if self.stopping or now >= rollover_at:
                    why[0] = "stopped" if self.stopping else "rollover"
                    await ws.close()
                    return
                if stable_at > 0 and now >= stable_at:
                    self.backoff.reset()
                    stable_at = -1.0
                if now >= next_ping:
                    try:
                        ping = self.ping_frame()
                    except ExchangeError as exc:  # the keep-alive failed (e.g. no pong)
                        why[0] = f"ping: {exc}"
                        await ws.close()
                        return
                    if ping is not None:
                        await ws.send(ping)
                    next_ping = now + ping_every

        supervisor = asyncio.ensure_future(supervise())
        clock, handle = self.clock, self.handle_frame
        try:
            async for frame in ws:
                await handle(frame, clock.now_ns())
                if self.outbox:
                    out, self.outbox = self.outbox, []
                    for f in out:
                        await ws.send(f)
                if why[0] != "closed":
                    break
        except websockets.exceptions.ConnectionClosed as exc:
            if why[0] == "closed":
                why[0] = f"closed: {exc}"
        finally:
            supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await supervisor
        if why[0] == "closed" and self.stopping:
            why[0] = "stopped"
        return why[0]

    async def handle_frame(self, frame: str | bytes, ts_recv: int) -> None:
        """Count, parse and emit one frame; sync errors trigger a resync, malformed frames
        are counted and skipped."""
        self.stats.frames += 1
        self.stats.bytes += len(frame)
        if self.raw_capture is not None:
            text = frame if isinstance(frame, str) else frame.decode("utf-8", "replace")
            self.raw_capture(
                {
                    "t": "recv",
                    "conn": f"{self.exchange}.ws.{self.stats.connects}",
                    "ts": ts_recv / 1e9,
                    "data": text,
                }
            )
        try:
            events = self.on_frame(frame, ts_recv)
        except MalformedMessage as exc:
            self.stats.malformed += 1
            log.warning("malformed_frame", exchange=self.exchange, error=str(exc))
            return
        except (SequenceGap, ChecksumMismatch, BookInvalid) as exc:
            await self._handle_sync_error(exc)
            return
        if events:
            await self._emit(events, ts_recv)


def _exact(units: int, d: int) -> int | None:
    """``units`` moved ``d`` decimal places (d < 0: coarser), or None if not exact."""
    if d >= 0:
        return units * POW10[d]
    q, r = divmod(units, POW10[-d])
    return None if r else q


def _floor(units: int, d: int) -> int:
    return units * POW10[d] if d >= 0 else units // POW10[-d]


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None
