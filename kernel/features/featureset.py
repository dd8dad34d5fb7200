"""FeatureSet: every microstructure feature of every instrument, fed by market events.

A :class:`FeatureSet` keeps, per ``EXCHANGE:SYMBOL``, its own :class:`~kernel.book.L2Book`
(from ``BookSnapshot`` / ``BookDelta``) and the incremental trade-side state (from
``Trade``), and answers :meth:`FeatureSet.features` with a dict of named floats. Book
messages that would cross or lock the book, or carry a negative size, are refused and
counted (:meth:`FeatureSet.rejected`); tick and lot are not checked here (the engine's
book and the validator do that). It is
pure and deterministic: time is each instrument's event clock, the largest
``ts_event`` it has seen (an older event counts at that time), never the wall clock.

Sampling. With ``sample_interval_ns > 0`` time is cut into ``[k x I, (k + 1) x I)``.
When an instrument's event is the first at or after the boundary ``B`` that follows
its previous event, :meth:`FeatureSet.apply` returns a :class:`FeatureSample` of that
instrument's features at ``B`` (everything before ``B``, averages decayed to ``B``),
before applying the event. A quiet stretch gives one sample, at its first boundary;
:meth:`FeatureSet.tick` gives the same samples from a heartbeat or timer instead.
``kernel.events`` has no ``Features`` event kind yet, so a sample is a plain frozen
struct; an engine integration turns it into the journaled event.

Features (0.0 where undefined, e.g. an empty side or window), in :attr:`names` order:

* ``imbalance_N`` for N in ``imbalance_levels``, ``weighted_imbalance_N``
  (1/rank weights), ``mid``, ``microprice`` (price units), ``microprice_offset_bp``,
  ``spread`` (price units), ``spread_bp`` - see :mod:`kernel.features.book`;
* ``spread_bp_ewma``, ``spread_bp_z``: EW time-average and z-score of ``spread_bp``
  with half-life ``spread_half_life_ns`` (:class:`~kernel.features.ewma.SignalEwma`),
  the signal taking a new value at every accepted book message with both sides;
* per window ``W`` of ``windows_ms`` (label ``1s``, ``250ms``): ``trade_imbalance_W``,
  ``vwap_dev_bp_W`` (mid vs the window's VWAP), ``large_trade_ratio_W`` - see
  :mod:`kernel.features.flow`;
* ``trade_intensity``: EW trades per second, half-life ``intensity_half_life_ns``
  (:class:`~kernel.features.ewma.EventRate`);
* ``vpin`` (:mod:`kernel.features.vpin`; only for instruments with a bucket volume,
  bulk volume classification for keys in ``bvc_keys``), ``kyle_lambda``
  (:mod:`kernel.features.kyle`, price units per size unit);
* ``lambda_impact_bp = kyle_lambda x flow_std / mid x 1e4``: the mid move a one-sigma
  interval of signed flow causes, in bp;
* ``toxicity = 0.5 x vpin + 0.5 x min(1, max(0, lambda_impact_bp) / toxicity_impact_ref_bp)``,
  in [0, 1]: informed-flow share (VPIN) and price impact (lambda, scaled so that
  ``toxicity_impact_ref_bp`` of impact saturates) weighed equally;
* ``queue_ahead_bid`` / ``queue_ahead_ask``: the displayed size at the best bid / ask
  (size units), all of it ahead of a hypothetical order joining the touch now;
  ``queue_eta_bid_s`` / ``queue_eta_ask_s``: ``queue_ahead / volume rate`` where the
  rate is the EW volume per second of the trades that hit that side (sell aggressors
  hit the bid, buy aggressors lift the ask; half-life ``intensity_half_life_ns``),
  capped at ``queue_eta_cap_s`` (also when the rate is 0). The estimate ignores
  cancellations ahead, which only shorten the wait.
"""

from __future__ import annotations

from itertools import pairwise

import msgspec

from kernel.book import BookError, L2Book
from kernel.events import BookDelta, BookSnapshot, Event, Level, Trade
from kernel.features import book as bookf
from kernel.features.ewma import (
    EventRate,
    EventRateState,
    SignalEwma,
    SignalEwmaState,
    decay,
)
from kernel.features.flow import TradeFlow, TradeFlowState
from kernel.features.kyle import KyleLambda, KyleLambdaState
from kernel.features.vpin import Vpin, VpinState

MS = 1_000_000
_NO_SAMPLES: list[FeatureSample] = []  # shared empty result: never appended to
SECOND = 1_000_000_000


class FeatureConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Feature parameters. Times in ns unless named ``_ms``; sizes in size units keyed
    ``EXCHANGE:SYMBOL`` (one instrument) or ``EXCHANGE`` (every instrument of a venue)."""

    imbalance_levels: tuple[int, ...] = (5, 10, 20)
    weighted_levels: int = 10
    spread_half_life_ns: int = 60 * SECOND
    intensity_half_life_ns: int = 10 * SECOND
    windows_ms: tuple[int, ...] = (1_000, 10_000, 60_000)
    large_trade_size: dict[str, int] = msgspec.field(default_factory=dict)
    vpin_bucket_volume: dict[str, int] = msgspec.field(default_factory=dict)
    vpin_buckets: int = 50
    bvc_keys: tuple[str, ...] = ()
    lambda_interval_ns: int = SECOND
    lambda_intervals: int = 60
    toxicity_impact_ref_bp: float = 10.0
    queue_eta_cap_s: float = 86_400.0
    sample_interval_ns: int = SECOND

    def __post_init__(self) -> None:
        if not self.imbalance_levels or min(self.imbalance_levels) <= 0:
            raise ValueError(f"imbalance_levels must be positive, got {self.imbalance_levels}")
        if self.weighted_levels <= 0:
            raise ValueError(f"weighted_levels must be positive, got {self.weighted_levels}")
        w = self.windows_ms
        if not w or w[0] <= 0 or any(a >= b for a, b in pairwise(w)):
            raise ValueError(f"windows_ms must be positive and increasing, got {list(w)}")
        for name in ("spread_half_life_ns", "intensity_half_life_ns", "lambda_interval_ns"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.vpin_buckets <= 0 or self.lambda_intervals < 2:
            raise ValueError("vpin_buckets must be >= 1 and lambda_intervals >= 2")
        for table in ("large_trade_size", "vpin_bucket_volume"):
            for key, units in getattr(self, table).items():
                if units <= 0:
                    raise ValueError(f"{table}[{key}] must be positive, got {units}")
        if self.toxicity_impact_ref_bp <= 0 or self.queue_eta_cap_s <= 0:
            raise ValueError("toxicity_impact_ref_bp and queue_eta_cap_s must be positive")
        if self.sample_interval_ns < 0:
            raise ValueError(f"sample_interval_ns must be >= 0, got {self.sample_interval_ns}")


def window_label(ms: int) -> str:
    """``1000`` -> ``1s``, ``250`` -> ``250ms``."""
    return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms}ms"


def feature_names(config: FeatureConfig) -> tuple[str, ...]:
    names = [f"imbalance_{n}" for n in config.imbalance_levels]
    names += [
        f"weighted_imbalance_{config.weighted_levels}",
        "mid",
        "microprice",
        "microprice_offset_bp",
        "spread",
        "spread_bp",
        "spread_bp_ewma",
        "spread_bp_z",
    ]
    for ms in config.windows_ms:
        w = window_label(ms)
        names += [f"trade_imbalance_{w}", f"vwap_dev_bp_{w}", f"large_trade_ratio_{w}"]
    names += [
        "trade_intensity",
        "vpin",
        "kyle_lambda",
        "lambda_impact_bp",
        "toxicity",
        "queue_ahead_bid",
        "queue_ahead_ask",
        "queue_eta_bid_s",
        "queue_eta_ask_s",
    ]
    return tuple(names)


class FeatureSample(msgspec.Struct, frozen=True, array_like=True):
    """One instrument's features at ``ts`` (ns, event time): ``values[i]`` is ``names[i]``."""

    ts: int
    exchange: str
    symbol: str
    names: tuple[str, ...]
    values: tuple[float, ...]

    def as_dict(self) -> dict[str, float]:
        return dict(zip(self.names, self.values, strict=True))


def _touch(book: L2Book) -> tuple[int, int] | None:
    bk, ak = book.bids.keys, book.asks.keys
    return (bk[-1], -ak[-1]) if bk and ak else None


def _lookup(table: dict[str, int], exchange: str, symbol: str) -> int | None:
    value = table.get(f"{exchange}:{symbol}")
    return value if value is not None else table.get(exchange)


class _Instrument:
    """Everything the features of one instrument need."""

    __slots__ = (
        "book",
        "buy_volume",
        "clock",
        "exchange",
        "flow",
        "key",
        "kyle",
        "next_sample",
        "rejected",
        "sell_volume",
        "spread",
        "symbol",
        "top",
        "trades",
        "vpin",
    )

    def __init__(self, config: FeatureConfig, exchange: str, symbol: str) -> None:
        self.key = f"{exchange}:{symbol}"
        self.exchange, self.symbol = exchange, symbol
        # the touch (best bid, best ask) at the last book change, None when a side was
        # empty: derived from the book, so a restore sets it from the book again
        self.top: tuple[int, int] | None = None
        self.book = L2Book(exchange, symbol)
        self.clock = 0
        self.next_sample = 0
        self.rejected = 0
        self.spread = SignalEwma(config.spread_half_life_ns)
        self.trades = EventRate(config.intensity_half_life_ns)
        self.buy_volume = EventRate(config.intensity_half_life_ns)
        self.sell_volume = EventRate(config.intensity_half_life_ns)
        self.flow = TradeFlow(
            tuple(ms * MS for ms in config.windows_ms),
            _lookup(config.large_trade_size, exchange, symbol),
        )
        bucket = _lookup(config.vpin_bucket_volume, exchange, symbol)
        bvc = exchange in config.bvc_keys or f"{exchange}:{symbol}" in config.bvc_keys
        self.vpin = Vpin(bucket, config.vpin_buckets, bvc) if bucket is not None else None
        self.kyle = KyleLambda(config.lambda_interval_ns, config.lambda_intervals)


class InstrumentFeaturesState(msgspec.Struct, array_like=True):
    exchange: str
    symbol: str
    clock: int
    next_sample: int
    rejected: int
    book_ts: int
    bids: list[Level]
    asks: list[Level]
    spread: SignalEwmaState
    trades: EventRateState
    buy_volume: EventRateState
    sell_volume: EventRateState
    flow: TradeFlowState
    vpin: VpinState | None
    kyle: KyleLambdaState


class FeatureSetState(msgspec.Struct, array_like=True):
    """Everything a :class:`FeatureSet` knows, by instrument key (sorted)."""

    names: tuple[str, ...]
    instruments: list[InstrumentFeaturesState]


class FeatureSet:
    """Microstructure features per instrument; see the module docstring."""

    def __init__(
        self, config: FeatureConfig | None = None, books: dict[str, L2Book] | None = None
    ) -> None:
        self.config = config if config is not None else FeatureConfig()
        self.names = feature_names(self.config)
        self._instruments: dict[str, _Instrument] = {}
        # shared books (the engine's, by EXCHANGE:SYMBOL): read, never changed; None:
        # the set keeps its own book per instrument
        self._books = books
        self._current: _Instrument | None = None  # the instrument of the last due()

    def share_books(self, books: dict[str, L2Book]) -> None:
        """Read ``books`` (the engine's, after it restored them) instead of own books."""
        self._books = books
        for key, inst in self._instruments.items():
            book = books.get(key)
            if book is not None:
                inst.book = book
            inst.top = _touch(inst.book)

    def _get(self, exchange: str, symbol: str) -> _Instrument:
        key = f"{exchange}:{symbol}"
        inst = self._instruments.get(key)
        if inst is None:
            inst = self._instruments[key] = _Instrument(self.config, exchange, symbol)
            if self._books is not None and key in self._books:
                inst.book = self._books[key]
        return inst

    def keys(self) -> list[str]:
        """Instruments seen so far, sorted."""
        return sorted(self._instruments)

    def book(self, exchange: str, symbol: str) -> L2Book | None:
        """The instrument's book as the features see it (None: no event seen yet)."""
        inst = self._instruments.get(f"{exchange}:{symbol}")
        return inst.book if inst is not None else None

    def rejected(self, exchange: str, symbol: str) -> int:
        """Book messages refused (crossed, negative size...) and ignored for features."""
        inst = self._instruments.get(f"{exchange}:{symbol}")
        return inst.rejected if inst is not None else 0

    # -- updates ---------------------------------------------------------------------

    def apply(self, event: Event) -> list[FeatureSample]:
        """Fold one event in; returns the sample it triggers (at most one). Events other
        than book messages and trades are ignored. ``apply`` = :meth:`due` then
        :meth:`update`."""
        if not isinstance(event, BookSnapshot | BookDelta | Trade):
            return []
        samples = self.due(event)
        self.update(event)
        return samples

    def due(
        self, event: BookSnapshot | BookDelta | Trade, key: str | None = None
    ) -> list[FeatureSample]:
        """The first half of :meth:`apply`: moves the instrument's clock to the event and
        returns the sample of the boundary the event crosses (features of everything
        before it), without folding the event in. With shared books the engine calls it
        before it changes its book, and :meth:`update` once it has. ``key``: the
        event's ``EXCHANGE:SYMBOL`` when the caller has it."""
        inst = self._instruments.get(key or f"{event.exchange}:{event.symbol}")
        if inst is None:
            inst = self._get(event.exchange, event.symbol)
        ts = event.ts_event
        if ts < inst.clock:
            ts = inst.clock
        interval = self.config.sample_interval_ns
        inst.clock = ts
        self._current = inst
        if interval and ts >= inst.next_sample:
            samples = [self._sample(inst, inst.next_sample)] if inst.next_sample else _NO_SAMPLES
            inst.next_sample = (ts // interval + 1) * interval
            return samples
        return _NO_SAMPLES

    def update(self, event: BookSnapshot | BookDelta | Trade) -> None:
        """The second half of :meth:`apply`: fold the event in at the instrument's clock
        (call :meth:`due` with the same event just before). With shared books a book
        message is one the engine has applied to its book (refused ones are not passed
        on)."""
        inst = self._current
        if inst is None or inst.symbol != event.symbol or inst.exchange != event.exchange:
            inst = self._instruments[f"{event.exchange}:{event.symbol}"]
        if type(event) is Trade:
            self._on_trade(inst, inst.clock, event)
        elif self._books is None:
            self._on_book(inst, inst.clock, event)  # type: ignore[arg-type]
        else:
            inst.book = self._books[inst.key]
            self._on_shared_book(inst, inst.clock)

    def tick(self, ts: int) -> list[FeatureSample]:
        """Time reached ``ts`` without an event (a heartbeat, an engine timer): the samples
        of every instrument whose next boundary is at or before ``ts``, by key, as an event
        at ``ts`` would trigger them. Clocks do not move."""
        interval = self.config.sample_interval_ns
        samples: list[FeatureSample] = []
        if not interval:
            return samples
        for _, inst in sorted(self._instruments.items()):
            if inst.next_sample and ts >= inst.next_sample:
                samples.append(self._sample(inst, inst.next_sample))
                inst.next_sample = (ts // interval + 1) * interval
        return samples

    def _on_book(self, inst: _Instrument, ts: int, event: BookSnapshot | BookDelta) -> None:
        book = inst.book
        try:
            if isinstance(event, BookSnapshot):
                book.apply_snapshot(event.bids, event.asks, ts)
            else:
                book.apply_delta(event.bids, event.asks, ts)
        except BookError:
            inst.rejected += 1
            return
        self._on_shared_book(inst, ts)

    def _on_shared_book(self, inst: _Instrument, ts: int) -> None:
        """After a book change: the spread signal and Kyle's mid. A change that leaves
        the touch where it was inside the same lambda interval changes neither (the
        spread signal holds its value, which folds the same later; the interval's last
        mid is the same), so it is skipped: most deltas are away from the touch."""
        book = inst.book
        bk, ak = book.bids.keys, book.asks.keys
        if not bk or not ak:
            inst.top = None
            return
        bid, ask = bk[-1], -ak[-1]
        kyle = inst.kyle
        cur = kyle.current
        if inst.top == (bid, ask) and cur is not None and ts < (cur + 1) * kyle.interval_ns:
            return
        inst.top = (bid, ask)
        m2 = bid + ask
        inst.spread.update(ts, 2e4 * (ask - bid) / m2)
        kyle.on_mid(ts, m2)

    def _on_trade(self, inst: _Instrument, ts: int, trade: Trade) -> None:
        is_buy = trade.side == "buy"
        size = trade.size
        trades, buys, sells = inst.trades, inst.buy_volume, inst.sell_volume
        last = trades.last_ts
        if buys.last_ts == last == sells.last_ts:
            # the three rates share a clock and a half-life: one decay for all (the same
            # value as decaying each on its own; decay(a) x decay(b) = decay(a + b))
            if ts > last:
                d = decay(ts - last, trades.half_life_ns)
                trades.level *= d
                buys.level *= d
                sells.level *= d
                trades.last_ts = buys.last_ts = sells.last_ts = ts
            trades.level += 1.0
            if is_buy:
                buys.level += size
            else:
                sells.level += size
        else:  # restored from a state where they drifted apart
            trades.add(ts)
            (buys if is_buy else sells).add(ts, float(size))
        inst.flow.add(ts, trade.price, size, is_buy)
        if inst.vpin is not None:
            inst.vpin.add(trade.price, size, is_buy)
        inst.kyle.on_trade(ts, size if is_buy else -size)

    # -- queries ---------------------------------------------------------------------

    def features(self, exchange: str, symbol: str, at: int | None = None) -> dict[str, float]:
        """The instrument's features at event time ``at`` (default and minimum: its
        clock). Does not change state."""
        inst = self._instruments.get(f"{exchange}:{symbol}")
        if inst is None:  # never seen: every feature at its empty value, nothing stored
            inst = _Instrument(self.config, exchange, symbol)
        t = inst.clock if at is None or at < inst.clock else at
        return dict(zip(self.names, self._values(inst, t), strict=True))

    def _sample(self, inst: _Instrument, ts: int) -> FeatureSample:
        book = inst.book
        return FeatureSample(ts, book.exchange, book.symbol, self.names, self._values(inst, ts))

    def _values(self, inst: _Instrument, t: int) -> tuple[float, ...]:
        cfg, book = self.config, inst.book
        values = bookf.level_features(book, cfg.imbalance_levels, cfg.weighted_levels)
        mid = bookf.mid(book)
        spread_mean, _ = inst.spread.at(t)
        values += [
            mid,
            bookf.microprice(book),
            bookf.microprice_offset_bp(book),
            bookf.spread(book),
            bookf.spread_bp(book),
            spread_mean,
            inst.spread.zscore(t),
        ]
        for i in range(len(cfg.windows_ms)):
            sums = inst.flow.sums(i, t)
            values += [sums.trade_imbalance, sums.vwap_dev_bp(mid), sums.large_ratio]
        vpin = inst.vpin.value() if inst.vpin is not None else 0.0
        kyle = inst.kyle.value()
        impact_bp = kyle * inst.kyle.flow_std() / mid * 1e4 if mid > 0.0 else 0.0
        toxicity = 0.5 * vpin + 0.5 * min(1.0, max(0.0, impact_bp) / cfg.toxicity_impact_ref_bp)
        best_bid, best_ask = book.best_bid(), book.best_ask()
        ahead_bid = float(best_bid[1]) if best_bid is not None else 0.0
        ahead_ask = float(best_ask[1]) if best_ask is not None else 0.0
        values += [
            inst.trades.per_second(t),
            vpin,
            kyle,
            impact_bp,
            toxicity,
            ahead_bid,
            ahead_ask,
            self._eta(ahead_bid, inst.sell_volume.per_second(t)),
            self._eta(ahead_ask, inst.buy_volume.per_second(t)),
        ]
        return tuple(values)

    def _eta(self, ahead: float, rate: float) -> float:
        cap = self.config.queue_eta_cap_s
        if ahead <= 0.0:
            return 0.0
        return min(cap, ahead / rate) if rate > 0.0 else cap

    # -- state -----------------------------------------------------------------------

    def state(self) -> FeatureSetState:
        out = []
        for _, inst in sorted(self._instruments.items()):
            book = inst.book
            # shared books are the engine's state, not the features'
            bids, asks = book.canonical() if self._books is None else ([], [])
            out.append(
                InstrumentFeaturesState(
                    exchange=book.exchange,
                    symbol=book.symbol,
                    clock=inst.clock,
                    next_sample=inst.next_sample,
                    rejected=inst.rejected,
                    book_ts=book.ts_event,
                    bids=bids,
                    asks=asks,
                    spread=inst.spread.state(),
                    trades=inst.trades.state(),
                    buy_volume=inst.buy_volume.state(),
                    sell_volume=inst.sell_volume.state(),
                    flow=inst.flow.state(),
                    vpin=inst.vpin.state() if inst.vpin is not None else None,
                    kyle=inst.kyle.state(),
                )
            )
        return FeatureSetState(self.names, out)

    def restore(self, st: FeatureSetState) -> None:
        """Continue from a :meth:`state` taken with the same configuration."""
        if tuple(st.names) != self.names:
            raise ValueError("feature state was taken with another feature configuration")
        instruments: dict[str, _Instrument] = {}
        for saved in st.instruments:
            inst = _Instrument(self.config, saved.exchange, saved.symbol)
            inst.clock, inst.next_sample, inst.rejected = (
                saved.clock,
                saved.next_sample,
                saved.rejected,
            )
            inst.book.apply_snapshot(saved.bids, saved.asks, saved.book_ts)
            inst.top = _touch(inst.book)
            inst.spread.restore(saved.spread)
            inst.trades.restore(saved.trades)
            inst.buy_volume.restore(saved.buy_volume)
            inst.sell_volume.restore(saved.sell_volume)
            inst.flow.restore(saved.flow)
            if (saved.vpin is None) != (inst.vpin is None):
                raise ValueError(f"{saved.exchange}:{saved.symbol}: VPIN configuration differs")
            if inst.vpin is not None and saved.vpin is not None:
                inst.vpin.restore(saved.vpin)
            inst.kyle.restore(saved.kyle)
            instruments[f"{saved.exchange}:{saved.symbol}"] = inst
        self._instruments = instruments
        if self._books is not None:
            self.share_books(self._books)

    def snapshot(self) -> bytes:
        """The state as msgpack bytes (deterministic: same state, same bytes)."""
        return msgspec.msgpack.encode(self.state())

    def restore_bytes(self, data: bytes) -> None:
        self.restore(msgspec.msgpack.decode(data, type=FeatureSetState))
