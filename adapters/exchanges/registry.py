"""Which adapter class serves an exchange id (``BINANCE`` -> :class:`BinanceSpot`)."""

from __future__ import annotations

import importlib
from collections.abc import Iterable

from adapters.exchanges.base import ExchangeInterface, FeedConfig
from kernel.instruments import Instrument

VENUE_MODULES = ("binance", "coinbase", "kraken", "kucoin")


class AdapterNotFound(LookupError):
    """No adapter (or more than one) for an exchange id, or a bad ``module:Class``."""


DEFAULT_ADAPTERS = {
    "BINANCE": "adapters.exchanges.binance:BinanceSpot",
    "BINANCEUS": "adapters.exchanges.binance:BinanceUS",
    "COINBASE": "adapters.exchanges.coinbase:CoinbaseExchange",
    "KRAKEN": "adapters.exchanges.kraken:KrakenExchange",
    "KRAKENF": "adapters.exchanges.kraken:KrakenFuturesExchange",
    "KUCOIN": "adapters.exchanges.kucoin:KucoinSpot",
}
"""Where an exchange id has several adapters (spot and futures), the default one; a feed
picks another with ``adapter: module:Class``."""


def adapter_class(exchange: str, adapter: str | None = None) -> type[ExchangeInterface]:
    """The adapter of a feed: ``adapter`` (``module:Class``) if given, else the default
    for ``exchange``, else the one adapter whose ``exchange`` id it is."""
    path = adapter or DEFAULT_ADAPTERS.get(exchange.upper())
    if path:
        mod_name, _, cls_name = path.partition(":")
        try:
            obj = getattr(importlib.import_module(mod_name), cls_name)
        except (ImportError, AttributeError) as exc:
            raise AdapterNotFound(f"feed adapter {path!r} cannot be loaded: {exc}") from exc
        if not (isinstance(obj, type) and issubclass(obj, ExchangeInterface)):
            raise AdapterNotFound(f"feed adapter {path!r} is not an ExchangeInterface")
        return obj
    found: list[type[ExchangeInterface]] = []
    for mod_name in VENUE_MODULES:
        try:
            mod = importlib.import_module(f"adapters.exchanges.{mod_name}")
        except ModuleNotFoundError:
            continue
        for obj in vars(mod).values():
            if (
                isinstance(obj, type)
                and issubclass(obj, ExchangeInterface)
                and obj is not ExchangeInterface
                and getattr(obj, "exchange", None) == exchange.upper()
                and not getattr(obj, "__abstractmethods__", None)
            ):
                found.append(obj)
    if not found:
        raise AdapterNotFound(f"no exchange adapter for {exchange!r} (modules: {VENUE_MODULES})")
    if len(found) > 1:
        names = ", ".join(sorted(f"{c.__module__}:{c.__name__}" for c in found))
        raise AdapterNotFound(
            f"several adapters for {exchange!r} ({names}): name one with `adapter:`"
        )
    return found[0]


def configure_for_kernel(adapter: ExchangeInterface, instruments: Iterable[Instrument]) -> None:
    """Make ``adapter`` emit in the kernel's precision: adapters that can map the venue's
    instruments onto configured ones (Binance: ``known``) get them; every adapter refuses
    to start if its instruments disagree with the configured ones
    (:class:`~adapters.exchanges.base.InstrumentMismatch`)."""
    insts = list(instruments)
    adapter.expected = {i.key: i for i in insts}
    if hasattr(adapter, "known"):
        adapter.known = {(i.exchange, i.symbol): i for i in insts}


def build_adapter(
    exchange: str,
    config: FeedConfig,
    instruments: Iterable[Instrument] = (),
    adapter: str | None = None,
) -> ExchangeInterface:
    """The adapter of ``exchange`` (or ``adapter``, ``module:Class``) for ``config``,
    emitting in the precision of the configured ``instruments``."""
    instance = adapter_class(exchange, adapter)(config)
    configure_for_kernel(instance, instruments)
    return instance
