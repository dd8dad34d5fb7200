"""Instruments: what is traded where, and at which precision.

An instrument is identified by ``exchange:symbol`` where ``exchange`` is the venue in
upper case (``BINANCE``) and ``symbol`` the normalised symbol (``BTC-USDT``, perps end
in ``-PERP``). Prices are integers of ``10**-price_decimals`` quote; sizes integers of
``10**-size_decimals`` base; ``tick_size`` and ``lot_size`` are in those units.
"""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from typing import Literal

import msgspec

from kernel.fixedpoint import POW10, format_fixed, notional, parse_fixed, to_decimal

InstrumentKind = Literal["spot", "perp"]


class InstrumentError(ValueError):
    """An instrument definition is inconsistent, or a value does not fit it."""


class Instrument(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One tradable instrument on one venue.

    ``maker_fee_ppm`` / ``taker_fee_ppm`` are fee rates in parts per million of
    notional (2 bp = 200); negative means a rebate. ``min_notional`` is in MONEY units
    (1e-8 quote). ``funding_interval_s`` applies to perps only. ``wire_symbol`` is the
    venue's own symbol (``BTCUSDT``) and ``venue`` the data-feed id it arrives under
    (Tardis exchange id, ``binance-futures``; default: the exchange in lower case).
    """

    exchange: str
    symbol: str
    kind: InstrumentKind
    base: str
    quote: str
    price_decimals: int
    size_decimals: int
    tick_size: int = 1
    lot_size: int = 1
    min_notional: int = 0
    maker_fee_ppm: int = 0
    taker_fee_ppm: int = 0
    wire_symbol: str = ""
    funding_interval_s: int = 28_800
    venue: str = ""

    def __post_init__(self) -> None:
        if self.exchange != self.exchange.upper() or not self.exchange:
            raise InstrumentError(f"exchange must be upper case, got {self.exchange!r}")
        if not 0 <= self.price_decimals <= 12 or not 0 <= self.size_decimals <= 12:
            raise InstrumentError(f"{self.key}: decimals must be within 0..12")
        if self.tick_size <= 0 or self.lot_size <= 0:
            raise InstrumentError(f"{self.key}: tick_size and lot_size must be positive")
        expected = normalise_symbol(self.base, self.quote, self.kind)
        if self.symbol != expected:
            raise InstrumentError(
                f"{self.exchange}:{self.symbol}: symbol must be {expected!r} for "
                f"base={self.base} quote={self.quote} kind={self.kind}"
            )

    @property
    def key(self) -> str:
        """``EXCHANGE:SYMBOL``, the instrument's identity (and the Kafka key)."""
        return f"{self.exchange}:{self.symbol}"

    @property
    def feed(self) -> str:
        """The data-feed id (``binance``, ``binance-futures``)."""
        return self.venue or self.exchange.lower()

    def price(self, text: str) -> int:
        """Parse a price string exactly; it must be a multiple of ``tick_size``."""
        units = parse_fixed(text, self.price_decimals)
        if units % self.tick_size:
            raise InstrumentError(f"{self.key}: price {text} is not a multiple of the tick")
        return units

    def size(self, text: str) -> int:
        """Parse a size string exactly; it must be a multiple of ``lot_size``."""
        units = parse_fixed(text, self.size_decimals)
        if units % self.lot_size:
            raise InstrumentError(f"{self.key}: size {text} is not a multiple of the lot")
        return units

    def price_text(self, units: int) -> str:
        return format_fixed(units, self.price_decimals)

    def size_text(self, units: int) -> str:
        return format_fixed(units, self.size_decimals)

    def price_decimal(self, units: int) -> Decimal:
        return to_decimal(units, self.price_decimals)

    def size_decimal(self, units: int) -> Decimal:
        return to_decimal(units, self.size_decimals)

    def notional(self, price: int, size: int) -> int:
        """Money value (1e-8 quote units) of ``size`` at ``price``."""
        return notional(price, self.price_decimals, size, self.size_decimals)

    def price_float(self, units: int) -> float:
        """For features and models only; never for book, order or money state."""
        return units / POW10[self.price_decimals]


def normalise_symbol(base: str, quote: str, kind: InstrumentKind) -> str:
    """``BTC``, ``USDT``, ``spot`` -> ``BTC-USDT``; perps get ``-PERP``.

    ``XBT`` becomes ``BTC`` and ``XDG`` becomes ``DOGE`` (Kraken's and KuCoin
    futures' names), so one asset has one name across venues.
    """
    aliases = {"XBT": "BTC", "XDG": "DOGE"}
    b = aliases.get(base.upper(), base.upper())
    q = aliases.get(quote.upper(), quote.upper())
    return f"{b}-{q}-PERP" if kind == "perp" else f"{b}-{q}"


class InstrumentRegistry:
    """Instruments by key and by (exchange, wire symbol); immutable after construction."""

    __slots__ = ("_by_key", "_by_wire")

    def __init__(self, instruments: list[Instrument] | tuple[Instrument, ...]) -> None:
        by_key: dict[str, Instrument] = {}
        by_wire: dict[tuple[str, str], Instrument] = {}
        for inst in instruments:
            if inst.key in by_key:
                raise InstrumentError(f"duplicate instrument {inst.key}")
            by_key[inst.key] = inst
            if inst.wire_symbol:
                wire_key = (inst.feed, inst.wire_symbol.upper())
                if wire_key in by_wire:
                    raise InstrumentError(f"two instruments for feed symbol {wire_key}")
                by_wire[wire_key] = inst
        self._by_key = by_key
        self._by_wire = by_wire

    def __iter__(self) -> Iterator[Instrument]:
        return iter(sorted(self._by_key.values(), key=lambda i: i.key))

    def __len__(self) -> int:
        return len(self._by_key)

    def __contains__(self, key: object) -> bool:
        return key in self._by_key

    def get(self, exchange: str, symbol: str) -> Instrument:
        try:
            return self._by_key[f"{exchange}:{symbol}"]
        except KeyError:
            raise InstrumentError(f"unknown instrument {exchange}:{symbol}") from None

    def by_key(self, key: str) -> Instrument:
        """Look up by ``EXCHANGE:SYMBOL``."""
        try:
            return self._by_key[key]
        except KeyError:
            raise InstrumentError(f"unknown instrument {key}") from None

    def by_wire(self, feed: str, wire_symbol: str) -> Instrument:
        """Look up by data-feed id and the venue's own symbol (``binance``, ``BTCUSDT``)."""
        try:
            return self._by_wire[(feed.lower(), wire_symbol.upper())]
        except KeyError:
            known = sorted(f"{e}:{w}" for e, w in self._by_wire)
            raise InstrumentError(
                f"no instrument for feed {feed.lower()!r} symbol {wire_symbol.upper()!r} "
                f"(known wire symbols: {', '.join(known) or 'none'}); "
                "add it to config/instruments.yaml"
            ) from None

    def keys(self) -> list[str]:
        return sorted(self._by_key)
