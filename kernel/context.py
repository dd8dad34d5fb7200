"""What a strategy sees and how it acts: the :class:`StrategyContext`.

A strategy reads books and the kernel clock (the local receive time of the event being
processed), draws randomness only from ``ctx.rng`` (seeded by the session), and acts
only by calling context methods, each of which becomes a journaled event.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

from kernel.book import L2Book
from kernel.config import LatencyProfile
from kernel.events import (
    Event,
    MarketEvent,
    ModelLoaded,
    OrderType,
    Side,
    TimeInForce,
    Trade,
)
from kernel.instruments import Instrument
from kernel.portfolio import Portfolio
from kernel.trades import TradeAggregator

if TYPE_CHECKING:
    from kernel.engine import Engine, OrderView


@runtime_checkable
class StrategyLike(Protocol):
    """The shape the engine needs; :mod:`strategies.base` documents it for authors."""

    name: str

    def on_start(self, ctx: StrategyContext) -> None: ...

    def on_market(self, ctx: StrategyContext, event: MarketEvent) -> None: ...

    def on_timer(self, ctx: StrategyContext, name: str) -> None: ...

    def on_order(self, ctx: StrategyContext, event: Event) -> None: ...

    def snapshot_state(self) -> bytes: ...

    def restore_state(self, state: bytes) -> None: ...


class StrategyContext:
    """The strategy's window onto the kernel. Created by the engine; not shared."""

    __slots__ = ("_engine",)

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    @property
    def now(self) -> int:
        """Kernel clock in ns: local receive time of the current event or timer."""
        return self._engine.now

    @property
    def rng(self) -> np.random.Generator:
        """The session's seeded generator (PCG64); the only randomness allowed."""
        return self._engine.rng

    @property
    def session_id(self) -> str:
        return self._engine.session_id

    def book(self, exchange: str, symbol: str) -> L2Book | None:
        return self._engine.books.get(f"{exchange}:{symbol}")

    def instrument(self, exchange: str, symbol: str) -> Instrument:
        return self._engine.instruments.get(exchange, symbol)

    def last_trade(self, exchange: str, symbol: str) -> Trade | None:
        return self._engine.last_trades.get(f"{exchange}:{symbol}")

    def trade_windows(self) -> TradeAggregator:
        """Rolling 1 s / 10 s / 60 s trade windows per instrument (volume, buy/sell
        volume, notional, VWAP, large trades; kernel/trades.py), on exchange time.
        Switched on by the first call (ask in ``on_start`` to count every trade); read
        it, never feed it: the engine adds each trade before ``on_market`` sees it."""
        return self._engine.trade_windows()

    def latency_profile(self, exchange: str) -> LatencyProfile:
        """The venue's configured order latency profile (entry and response, ms)."""
        return self._engine.venue.latency_profile(exchange)

    def use_features(self) -> None:
        """Switch the microstructure features on (kernel/features; ask in ``on_start``
        so that they have seen every event). :meth:`features` does it too."""
        self._engine.features_on()

    def features(self, exchange: str, symbol: str) -> dict[str, float]:
        """Every feature of one instrument now (names as in the ``Features`` events):
        book and trade-flow features (kernel/features/featureset.py), cross-venue ones
        (kernel/features/cross.py) and portfolio-aware ones
        (kernel/features/portfolio.py). O(levels + venues); read, never feed."""
        return self._engine.feature_values(exchange, symbol)

    def decide(
        self,
        exchange: str,
        symbol: str,
        action: str,
        reasoning: str,
        features: tuple[tuple[str, float], ...] = (),
        confidence: float = 0.0,
        model_id: str = "",
    ) -> str:
        """Journal a decision with its reasoning; returns its ``decision_id`` ("" when
        refused: over ``max_decisions_per_event`` for this input)."""
        eng = self._engine
        if not eng._spend():
            return ""
        return eng.record_decision(
            exchange,
            symbol,
            action,
            reasoning,
            eng.strategy_name,
            features=features,
            confidence=confidence,
            model_id=model_id,
        )

    def model_loaded(
        self,
        model_id: str,
        weights_hash: str,
        *,
        frozen_verified: bool,
        model_name: str = "",
        model_version: int = 0,
        encoder_hash: str = "",
        weights_sha256: str = "",
    ) -> None:
        """Journal a ``ModelLoaded`` at the kernel clock: which model (and weights) the
        strategy's decisions come from. Call it from ``on_start`` (the engine journals
        what ``on_start`` emits right after ``SessionStarted``). Not a trading action:
        it spends none of ``max_decisions_per_event``."""
        now = self._engine.now
        self._engine.emit(
            ModelLoaded(
                ts_event=now,
                ts_recv=now,
                model_id=model_id,
                weights_hash=weights_hash,
                frozen_verified=frozen_verified,
                model_name=model_name,
                model_version=model_version,
                encoder_hash=encoder_hash,
                weights_sha256=weights_sha256,
            )
        )

    def set_timer(self, at_ns: int, name: str) -> None:
        """Call ``on_timer(ctx, name)`` at kernel time ``at_ns`` (before any later input)."""
        self._engine.set_timer(at_ns, name)

    # -- orders ----------------------------------------------------------------------

    def submit(
        self,
        exchange: str,
        symbol: str,
        side: Side,
        size: int,
        *,
        order_type: OrderType = "limit",
        price: int = 0,
        time_in_force: TimeInForce = "GTC",
        trigger_price: int = 0,
        reduce_only: bool = False,
        decision_id: str = "",
        order_id: str | None = None,
    ) -> str:
        """Send an order (sizes and prices in the instrument's units); returns its id
        ("" when refused: over ``max_decisions_per_event`` for this input).

        It reaches the simulated venue after the exchange's entry latency; responses
        (``OrderAccepted``, ``Fill``...) come back through ``on_order`` after the
        response latency. ``order_type``: market | limit | stop_loss | take_profit;
        ``time_in_force`` (limit orders): GTC | IOC | FOK | POST_ONLY."""
        return self._engine.submit_order(
            exchange,
            symbol,
            side,
            size,
            order_type,
            price,
            time_in_force,
            trigger_price,
            reduce_only,
            decision_id,
            order_id,
        )

    def cancel(self, order_id: str, reason: str = "") -> None:
        """Ask the venue to cancel an order (an ``OrderError`` if it is unknown)."""
        self._engine.cancel_order(order_id, reason)

    def amend(self, order_id: str, size: int = 0, price: int = 0) -> None:
        """Change an order's total size and/or limit price (0 = unchanged)."""
        self._engine.amend_order(order_id, size, price)

    def order(self, order_id: str) -> OrderView | None:
        """An open order as the strategy knows it (None once it is closed)."""
        return self._engine.orders.get(order_id)

    def open_orders(
        self, exchange: str | None = None, symbol: str | None = None
    ) -> list[OrderView]:
        """Open orders as the strategy knows them, by id."""
        orders = self._engine.orders
        return [
            orders[k]
            for k in sorted(orders)
            if (exchange is None or orders[k].exchange == exchange)
            and (symbol is None or orders[k].symbol == symbol)
        ]

    @property
    def portfolio(self) -> Portfolio:
        """The paper trader's books as of the fills seen so far (read only, please)."""
        return self._engine.portfolio

    def equity(self) -> int:
        """Cash plus positions marked to mid, in MONEY units (1e-8 quote)."""
        return self._engine.equity()

    def risk_size(
        self,
        exchange: str,
        symbol: str,
        strength: float,
        mu: float | None = None,
        sigma: float | None = None,
        price: int = 0,
    ) -> int:
        """The risk layer's size for a signal of ``strength`` in [0, 1] and an optional
        edge estimate (mean ``mu`` and std ``sigma`` of the trade's return): fractional
        Kelly capped by the base size, times the drawdown breaker's factor. ``price``
        defaults to the mid. 0 when there is no risk layer, no price or no edge."""
        eng = self._engine
        risk = eng.risk
        inst = eng.instruments.get(exchange, symbol)
        ref = price or eng._mark(inst.key) or 0
        if risk is None or not ref:
            return 0
        return risk.size_for(inst, ref, eng.equity(), strength, mu, sigma)

    def position(self, exchange: str, symbol: str) -> int:
        """Signed position in size units."""
        return self._engine.portfolio.qty(f"{exchange}:{symbol}")
