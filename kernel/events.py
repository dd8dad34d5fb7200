"""Every event the system knows, as frozen tagged msgspec Structs in one union.

Conventions (all events):

* ``ts_event``: exchange time (market events) or kernel-clock time of creation
  (kernel and system events), integer nanoseconds since the Unix epoch.
* ``ts_recv``: local receive time in ns. Kernel-made events take it from the kernel
  clock too; the wall clock never enters the kernel.
* Prices and sizes are integers in the instrument's precision (see
  :mod:`kernel.instruments`); money is in MONEY units (1e-8 quote); funding rates in
  RATE units (1e-10). Features and confidences are floats.
* Encoded as msgpack arrays whose first element is the tag. Schema evolution: add
  fields only at the end and with defaults; never reuse or rename a tag.
"""

from __future__ import annotations

import hashlib
from typing import ClassVar, Literal

import msgspec

Side = Literal["buy", "sell"]
"""For trades, the aggressor's side: ``buy`` lifted the ask, ``sell`` hit the bid."""

Level = tuple[int, int]
"""One price level: (price units, absolute size units). Size 0 deletes the level."""


class Event(msgspec.Struct, frozen=True, array_like=True, gc=False, tag_field="k"):
    """Base of every event. ``PRIORITY`` orders events that share a timestamp."""

    ts_event: int
    ts_recv: int

    PRIORITY: ClassVar[int] = 5


# ---------------------------------------------------------------------------------------
# Market events
# ---------------------------------------------------------------------------------------


class MarketEvent(Event, frozen=True):
    """An event from a venue. ``seq`` is the source's own sequence (0 when it has none)."""

    exchange: str
    symbol: str
    seq: int


class BookSnapshot(MarketEvent, frozen=True, tag="BookSnapshot"):
    """The whole visible book: it replaces every level. Bids best first, asks best first."""

    bids: tuple[Level, ...]
    asks: tuple[Level, ...]

    PRIORITY: ClassVar[int] = 3


class BookDelta(MarketEvent, frozen=True, tag="BookDelta"):
    """One exchange message of absolute level sizes; size 0 deletes the level."""

    bids: tuple[Level, ...]
    asks: tuple[Level, ...]

    PRIORITY: ClassVar[int] = 3


class Trade(MarketEvent, frozen=True, tag="Trade"):
    """A print. ``side`` is the aggressor's side."""

    trade_id: str
    price: int
    size: int
    side: Side

    PRIORITY: ClassVar[int] = 2


class FundingRate(MarketEvent, frozen=True, tag="FundingRate"):
    """A perp's funding rate (RATE units, 1e-10) and the next funding time (ns, 0 if unknown)."""

    rate: int
    next_funding_ts: int = 0

    PRIORITY: ClassVar[int] = 1


class MarkPrice(MarketEvent, frozen=True, tag="MarkPrice"):
    """Mark and index price of a perp (price units; index 0 if not sent)."""

    mark_price: int
    index_price: int = 0

    PRIORITY: ClassVar[int] = 1


class News(Event, frozen=True, tag="News"):
    """A headline from a news source; ``symbols`` are normalised symbols it concerns."""

    source: str
    headline: str
    url: str = ""
    symbols: tuple[str, ...] = ()
    body: str = ""

    PRIORITY: ClassVar[int] = 4


class Bar(MarketEvent, frozen=True, tag="Bar"):
    """An OHLCV bar (candle) over ``interval_ns`` from ``ts_event``, its open time; it is
    known at its close, so ``ts_recv`` is ``ts_event + interval_ns`` unless the source
    says otherwise. Prices in price units, ``volume`` in size units (base currency);
    ``trades`` is the number of prints in it (0: not known). Added after every other
    kind (legacy TickerML ``ohlcv`` rows, see journal_tools/legacy.py)."""

    interval_ns: int
    open: int
    high: int
    low: int
    close: int
    volume: int = 0
    trades: int = 0

    PRIORITY: ClassVar[int] = 2


# ---------------------------------------------------------------------------------------
# Kernel events (made by the kernel, journaled in the session stream)
# ---------------------------------------------------------------------------------------

OrderType = Literal["market", "limit", "stop_loss", "take_profit"]
TimeInForce = Literal["GTC", "IOC", "FOK", "POST_ONLY"]
Liquidity = Literal["maker", "taker"]


class Decision(Event, frozen=True, tag="Decision"):
    """A strategy's decision, with the reasoning and inputs that made it.

    ``action`` is the field's own word (``buy``, ``sell``, ``hold``, ``cancel``,
    ``quote``); ``features`` are the named inputs (floats) the reasoning refers to.
    """

    decision_id: str
    strategy: str
    exchange: str
    symbol: str
    action: str
    reasoning: str
    features: tuple[tuple[str, float], ...] = ()
    model_id: str = ""
    confidence: float = 0.0


class OrderSubmitted(Event, frozen=True, tag="OrderSubmitted"):
    """The strategy sent an order; it reaches the venue after the entry latency.

    ``price`` is the limit price (0 for market orders and for stop/take-profit orders
    that become market orders when triggered); ``trigger_price`` the stop/take-profit
    level; ``time_in_force`` applies to limit orders."""

    order_id: str
    decision_id: str
    exchange: str
    symbol: str
    side: Side
    order_type: OrderType
    size: int
    price: int = 0
    time_in_force: TimeInForce = "GTC"
    trigger_price: int = 0
    reduce_only: bool = False


class OrderAccepted(Event, frozen=True, tag="OrderAccepted"):
    """The venue took the order (``ts_event``: venue time; ``ts_recv``: when the
    strategy sees the ack). ``queue_ahead`` is the displayed size ahead of a resting
    limit order when it joined its level."""

    order_id: str
    queue_ahead: int = 0
    size: int = 0  # the size the venue took when it differs (a clipped reduce-only order)


class CancelRequested(Event, frozen=True, tag="CancelRequested"):
    """The strategy asked to cancel an order; the request travels the entry latency."""

    order_id: str
    exchange: str
    reason: str = ""


class AmendRequested(Event, frozen=True, tag="AmendRequested"):
    """The strategy asked to change an order's total ``size`` and/or limit ``price``
    (0 = unchanged). Size down at the same price keeps queue priority; anything else
    loses it."""

    order_id: str
    exchange: str
    size: int = 0
    price: int = 0


class OrderAmended(Event, frozen=True, tag="OrderAmended"):
    order_id: str
    size: int
    price: int
    priority_kept: bool
    queue_ahead: int = 0


class OrderTriggered(Event, frozen=True, tag="OrderTriggered"):
    """A stop-loss / take-profit order's trigger condition held at the venue."""

    order_id: str
    trigger_price: int
    reference_price: int
    source: str


class OrderError(Event, frozen=True, tag="OrderError"):
    """An order action that is not legal in the order's state (e.g. cancelling a
    filled order, or a transition the state machine forbids). Nothing changed."""

    order_id: str
    action: str
    state: str
    reason: str


class OrderRejected(Event, frozen=True, tag="OrderRejected"):
    order_id: str
    reason: str


class OrderCancelled(Event, frozen=True, tag="OrderCancelled"):
    order_id: str
    reason: str = ""
    remaining: int = 0


class OrderExpired(Event, frozen=True, tag="OrderExpired"):
    order_id: str
    remaining: int = 0


class Fill(Event, frozen=True, tag="Fill"):
    """A (possibly partial) fill of one of our orders at the simulated venue.

    ``fee`` in MONEY units; ``impact_bp`` the price impact attributed to it;
    ``latency_ns`` submit -> fill (venue time of the fill - local submit time).
    ``queue_ahead`` is the displayed size that was ahead of a maker order when it
    joined its level (0 for taker fills). ``slippage`` (MONEY) is how much worse than
    the touch at arrival a taker fill was (already in ``price``); ``impact_cost``
    (MONEY) the impact charged on top (``notional x impact_bp / 1e4``).
    """

    fill_id: str
    order_id: str
    exchange: str
    symbol: str
    side: Side
    price: int
    size: int
    fee: int
    liquidity: Liquidity
    queue_ahead: int = 0
    toxic: bool = False
    impact_bp: float = 0.0
    latency_ns: int = 0
    slippage: int = 0
    impact_cost: int = 0


class FillToxic(Event, frozen=True, tag="FillToxic"):
    """A queue-position / adverse-selection warning about one of our fills.

    ``reason`` is ``queue_position`` (the queue ahead at placement was over the
    configured multiple of the order size; the Fill itself carries ``toxic=True``) or
    ``adverse_move`` (the mid moved ``adverse_bp`` against the fill within the window;
    the Fill was already journaled, so this event is the record)."""

    fill_id: str
    order_id: str
    exchange: str
    symbol: str
    reason: str
    queue_ahead_at_place: int = 0
    adverse_bp: float = 0.0


class FundingPayment(Event, frozen=True, tag="FundingPayment"):
    """Funding settled on a perp position; ``amount`` is MONEY received (negative: paid)."""

    exchange: str
    symbol: str
    rate: int
    position: int
    amount: int


class PortfolioSnapshot(Event, frozen=True, tag="PortfolioSnapshot"):
    """The paper trader's books at a moment, marked to mid. Money in MONEY units.

    ``positions``: (instrument key, signed size, cost basis, mark price) per open
    position; ``realised`` is gross of costs; ``equity = cash + sum(size x mark)``."""

    cash: int
    equity: int
    realised: int
    unrealised: int
    fees: int
    funding: int
    impact: int
    slippage: int
    positions: tuple[tuple[str, int, int, int], ...] = ()


class RiskEvent(Event, frozen=True, tag="RiskEvent"):
    """A risk-layer action: a breaker level change, a limit hit, a re-entry stage, a refusal."""

    rule: str
    level: str
    detail: str
    stage: int = 0


class Halt(Event, frozen=True, tag="Halt"):
    """Kill switch: cancel all, flatten and refuse new orders until a Resume."""

    reason: str
    source: str = "operator"


class Resume(Event, frozen=True, tag="Resume"):
    reason: str
    source: str = "operator"


class DataQuality(Event, frozen=True, tag="DataQuality"):
    """A market event failed a validation rule (e.g. a crossed book).

    ``rejected`` means the event was not applied; ``detail`` names the values.
    """

    rule: str
    exchange: str
    symbol: str
    detail: str
    rejected: bool = True
    source_seq: int = 0


# ---------------------------------------------------------------------------------------
# System events
# ---------------------------------------------------------------------------------------


class SessionStarted(Event, frozen=True, tag="SessionStarted"):
    """Everything needed to re-run a session: config hash, seed, code, inputs."""

    session_id: str
    mode: str
    config_hash: str
    seed: int
    code_version: str
    strategy: str
    input_from: int
    input_to: int
    exchanges: tuple[str, ...] = ()
    symbols: tuple[str, ...] = ()
    config_json: str = ""


class SessionEnded(Event, frozen=True, tag="SessionEnded"):
    """``input_to``: the exclusive end (ns) of the inputs the session read, when it was
    not known at the start (a live session); 0 means ``SessionStarted.input_to``."""

    session_id: str
    state_hash: str
    events_in: int
    outputs: int
    input_to: int = 0


class Heartbeat(Event, frozen=True, tag="Heartbeat"):
    """Advances ``stream``'s watermark to ``ts_recv`` when it carries no data."""

    stream: str

    PRIORITY: ClassVar[int] = 0


class Connectivity(Event, frozen=True, tag="Connectivity"):
    exchange: str
    symbol: str
    status: Literal["up", "down", "resync"]
    reason: str = ""

    PRIORITY: ClassVar[int] = 0


class LateEvent(Event, frozen=True, tag="LateEvent"):
    """An input that arrived after its stream's watermark had passed it; not applied.

    ``payload`` is the late event, encoded; ``watermark`` the merged watermark then.
    """

    stream: str
    kind: str
    lateness_ns: int
    watermark: int
    payload: bytes


class Features(Event, frozen=True, tag="Features"):
    """One instrument's features, sampled by the kernel (kernel/features): ``values[i]``
    is ``names[i]`` (floats; 0.0 where undefined). ``ts_event`` is the sample boundary
    (exchange time, ns: the features of everything before it), ``ts_recv`` the kernel
    clock when the sample was made."""

    exchange: str
    symbol: str
    names: tuple[str, ...]
    values: tuple[float, ...]

    def as_dict(self) -> dict[str, float]:
        return dict(zip(self.names, self.values, strict=True))


class ModelLoaded(Event, frozen=True, tag="ModelLoaded"):
    """A strategy loaded a model (journaled from its ``on_start``, before any input, so
    ``ts_event`` is the kernel clock then, usually 0). ``model_id`` is what its Decisions
    carry (``name@vN``); ``weights_hash`` the blake2b-256 of the model's state_dict
    (training/encoder.py ``weights_hash``); ``frozen_verified``: the weights file matched
    the registry's sha256 and the frozen encoder matched ``encoder_hash``. The last four
    fields were added after the first three (defaults: not known)."""

    model_id: str
    weights_hash: str
    frozen_verified: bool
    model_name: str = ""
    model_version: int = 0
    encoder_hash: str = ""
    weights_sha256: str = ""


class Alert(Event, frozen=True, tag="Alert"):
    severity: Literal["info", "warning", "critical"]
    rule: str
    message: str


AnyEvent = (
    BookSnapshot
    | BookDelta
    | Trade
    | FundingRate
    | MarkPrice
    | News
    | Decision
    | OrderSubmitted
    | CancelRequested
    | AmendRequested
    | OrderAccepted
    | OrderRejected
    | OrderCancelled
    | OrderExpired
    | OrderAmended
    | OrderTriggered
    | OrderError
    | Fill
    | FillToxic
    | FundingPayment
    | PortfolioSnapshot
    | RiskEvent
    | Halt
    | Resume
    | DataQuality
    | SessionStarted
    | SessionEnded
    | Heartbeat
    | Connectivity
    | LateEvent
    | ModelLoaded
    | Alert
    | Bar
    | Features
)

EVENT_TYPES: tuple[type[Event], ...] = (
    BookSnapshot,
    BookDelta,
    Trade,
    FundingRate,
    MarkPrice,
    News,
    Decision,
    OrderSubmitted,
    CancelRequested,
    AmendRequested,
    OrderAccepted,
    OrderRejected,
    OrderCancelled,
    OrderExpired,
    OrderAmended,
    OrderTriggered,
    OrderError,
    Fill,
    FillToxic,
    FundingPayment,
    PortfolioSnapshot,
    RiskEvent,
    Halt,
    Resume,
    DataQuality,
    SessionStarted,
    SessionEnded,
    Heartbeat,
    Connectivity,
    LateEvent,
    ModelLoaded,
    Alert,
    Bar,
    Features,
)

MARKET_KINDS: frozenset[str] = frozenset(
    {"BookSnapshot", "BookDelta", "Trade", "FundingRate", "MarkPrice", "News", "Bar"}
)

_ENCODER = msgspec.msgpack.Encoder()
_DECODER: msgspec.msgpack.Decoder[AnyEvent] = msgspec.msgpack.Decoder(AnyEvent)


class EventDecodeError(ValueError):
    """Bytes that are not a valid event of a known kind."""


def kind_of(event: Event) -> str:
    """The event's tag (``"BookDelta"``)."""
    return str(type(event).__struct_config__.tag)


def encode(event: Event) -> bytes:
    """The one wire format (Kafka payloads and journal rows): msgpack."""
    return _ENCODER.encode(event)


def decode(payload: bytes) -> AnyEvent:
    try:
        return _DECODER.decode(payload)
    except msgspec.DecodeError as exc:
        raise EventDecodeError(str(exc)) from exc


def decoder() -> msgspec.msgpack.Decoder[AnyEvent]:
    """The shared decoder, for hot loops that want to bind ``.decode`` once."""
    return _DECODER


def to_builtins(event: Event) -> dict[str, object]:
    """A JSON-friendly dict with field names (bytes become base64)."""
    out: dict[str, object] = {"kind": kind_of(event)}
    for name in event.__struct_fields__:
        out[name] = msgspec.to_builtins(getattr(event, name))
    return out


def time_prefixed_id(ts: int, identity: bytes) -> bytes:
    """16 bytes: big-endian ``ts`` (8) + blake2b-64 of ``identity`` (8).

    The time prefix makes ids of new events sort after old ones, so the journal's unique
    index is appended to at its end instead of at random places (several times faster).
    """
    return (ts & 0xFFFF_FFFF_FFFF_FFFF).to_bytes(8, "big") + hashlib.blake2b(
        identity, digest_size=8
    ).digest()


def event_id(event: Event, stream: str = "", source_seq: int | None = None) -> bytes:
    """Deterministic 16-byte id, so a re-delivered message is recognised as the same.

    ``ts_event`` (8 bytes, big-endian) followed by an 8-byte hash of the identity:

    * any event given ``source_seq`` (e.g. the n-th output of a session):
      (stream, kind, source_seq);
    * market events with a source sequence: (kind, exchange, symbol, seq);
    * otherwise: (kind, encoded content).
    """
    kind = kind_of(event)
    if source_seq is not None:
        identity = f"s|{stream}|{kind}|{source_seq}".encode()
    elif isinstance(event, MarketEvent) and event.seq:
        identity = f"m|{kind}|{event.exchange}|{event.symbol}|{event.seq}".encode()
    else:
        identity = b"c|" + encode(event)
    return time_prefixed_id(event.ts_event, identity)


def order_key(event: Event) -> tuple[int, int, str, str, int]:
    """The canonical total order: (ts_recv, priority, exchange, symbol, source seq)."""
    if isinstance(event, MarketEvent):
        return (event.ts_recv, event.PRIORITY, event.exchange, event.symbol, event.seq)
    return (event.ts_recv, event.PRIORITY, "", "", 0)
