"""Legacy TickerML SQLite databases (the harvesters' ``crypto_data.db``, before the journal).

Assumed layout (columns are found by name, in any case and order; other columns and
tables are ignored; a table that is absent is skipped):

``ohlcv``
    ``timestamp`` (also ``time``, ``ts``, ``open_time``, ``datetime``, ``date``): the
    bar's open time; ``symbol``; ``open``, ``high``, ``low``, ``close``, ``volume``;
    optional ``exchange`` and ``timeframe`` / ``interval`` (``1m``, ``5m``, ``1h``, ``1d``;
    without it every bar is ``--legacy-interval`` long, 1 minute by default, as the
    harvester fetched 1-minute klines).
``trades``
    ``timestamp``; ``symbol``; ``price``; ``quantity`` (also ``qty``, ``size``,
    ``amount``, ``volume``); ``side`` (``buy``/``sell``, any case) or ``is_buyer_maker``
    (true: the seller was the aggressor); optional ``trade_id`` and ``exchange``.
``order_books``
    ``timestamp``; ``symbol``; ``bids`` and ``asks`` as JSON lists of ``[price, size]``
    pairs or ``{"price": p, "quantity": q}`` objects; optional ``exchange``.

Values (assumptions, by what the harvesters wrote)
    * Timestamps are integers (or numeric text) in seconds, ms, µs or ns since the epoch,
      told apart by magnitude (below 1e11: s; 1e14: ms; 1e17: µs; else ns), or ISO-8601
      text (``2025-01-06T10:00:00Z``, ``2025-01-06 10:00:00``; no zone means UTC).
    * Symbols are ``BTC/USDT``, ``BTC-USDT``, ``BTC_USDT`` or run together (``BTCUSDT``,
      ``BTCUSD``: the quote is a known quote currency it ends with, the split that names
      a configured instrument first, else the longest). The
      exchange is the row's ``exchange`` column, else ``--legacy-exchange`` (BINANCE).
      The instrument ``EXCHANGE:BASE-QUOTE`` must be in ``config/instruments.yaml``:
      its decimals turn prices and sizes into integers.
    * Prices and sizes are REAL (or numeric text). They are rounded half-even to the
      instrument's precision; how many values needed rounding is reported.

Mapping (every row becomes one event in ``md.EXCHANGE.SYMBOL``; ``seq`` = the row's
rowid, the legacy table's own sequence)
    * ``ohlcv`` -> :class:`kernel.events.Bar`: ``ts_event`` = open time, ``ts_recv`` =
      open time + interval (a bar is known when it closes: a replay never sees it early);
    * ``trades`` -> :class:`kernel.events.Trade`: ``ts_event = ts_recv`` = its time,
      ``trade_id`` = the legacy ``trade_id`` (else the rowid);
    * ``order_books`` -> :class:`kernel.events.BookSnapshot`: ``ts_event = ts_recv``,
      bids best (highest) first, asks best (lowest) first, zero-size levels dropped.

The event id is :func:`kernel.events.time_prefixed_id` of the event time and
``legacy|table|rowid|payload``: migrating the same database again adds nothing.

A row that cannot be mapped raises :class:`LegacyError` naming table, rowid, column and
value; the caller stops before anything is written.
"""

from __future__ import annotations

import math
import re
import sqlite3
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import msgspec

from adapters.journal.base import PreparedEvent, market_stream, prepare
from kernel.events import (
    Bar,
    BookSnapshot,
    Level,
    MarketEvent,
    Side,
    Trade,
    encode,
    time_prefixed_id,
)
from kernel.instruments import Instrument, InstrumentError, InstrumentRegistry, normalise_symbol

LEGACY_TABLES = ("ohlcv", "trades", "order_books")
"""The tables migrated, in this order."""

QUOTES = ("FDUSD", "USDT", "USDC", "BUSD", "TUSD", "USD", "EUR", "GBP", "BTC", "ETH")
"""Quote currencies recognised at the end of a run-together symbol (``BTCUSDT``)."""

_COLUMNS: dict[str, dict[str, tuple[str, ...]]] = {
    "ohlcv": {
        "timestamp": ("timestamp", "time", "ts", "open_time", "datetime", "date"),
        "symbol": ("symbol", "pair"),
        "open": ("open",),
        "high": ("high",),
        "low": ("low",),
        "close": ("close",),
        "volume": ("volume",),
    },
    "trades": {
        "timestamp": ("timestamp", "time", "ts", "trade_time", "datetime"),
        "symbol": ("symbol", "pair"),
        "price": ("price",),
        "size": ("quantity", "qty", "size", "amount", "volume"),
    },
    "order_books": {
        "timestamp": ("timestamp", "time", "ts", "datetime"),
        "symbol": ("symbol", "pair"),
        "bids": ("bids",),
        "asks": ("asks",),
    },
}
_OPTIONAL = {
    "exchange": ("exchange",),
    "interval": ("timeframe", "interval"),
    "side": ("side",),
    "is_buyer_maker": ("is_buyer_maker",),
    "trade_id": ("trade_id",),
}
_INTERVAL = re.compile(r"(\d+)\s*(s|m|min|h|d|w)", re.IGNORECASE)
_UNIT_NS = {"s": 1, "m": 60, "min": 60, "h": 3_600, "d": 86_400, "w": 604_800}
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class LegacyError(ValueError):
    """A legacy row or table that cannot be migrated (the message names it)."""


def parse_interval(text: str) -> int:
    """``1m``, ``5m``, ``1h``, ``1d``, ``30s`` -> ns."""
    m = _INTERVAL.fullmatch(text.strip())
    if m is None or int(m.group(1)) <= 0:
        raise LegacyError(f"not an interval: {text!r} (use e.g. 1m, 5m, 1h, 1d)")
    return int(m.group(1)) * _UNIT_NS[m.group(2).lower()] * 1_000_000_000


def is_legacy_sqlite(path: str | Path) -> bool:
    """Whether ``path`` is a SQLite file with a legacy table and no journal tables."""
    p = Path(path)
    if not p.is_file():
        return False
    try:
        conn = sqlite3.connect(f"file:{p}?mode=ro", uri=True)
    except sqlite3.Error:
        return False
    try:
        names = {r[0].lower() for r in conn.execute("SELECT name FROM sqlite_master")}
    except sqlite3.DatabaseError:
        return False
    finally:
        conn.close()
    return bool(names & set(LEGACY_TABLES)) and not {"events", "streams"} <= names


@dataclass(frozen=True)
class LegacyOptions:
    """``exchange``: for rows without an exchange column; ``interval_ns``: the bar length
    for ``ohlcv`` rows without a timeframe column."""

    exchange: str = "BINANCE"
    interval_ns: int = 60_000_000_000


class LegacyRow(msgspec.Struct, frozen=True):
    """One legacy row mapped to an event: where it goes and where it came from."""

    stream: str
    table: str
    rowid: int
    event: PreparedEvent


@dataclass
class TableCount:
    table: str
    rows: int = 0
    events: int = 0
    rounded: int = 0


class LegacySource:
    """A legacy database opened read-only, its rows mapped to events."""

    def __init__(
        self,
        path: str | Path,
        registry: InstrumentRegistry,
        options: LegacyOptions | None = None,
    ) -> None:
        self.path = Path(path)
        self.registry = registry
        self.options = options or LegacyOptions()
        try:
            self._conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)
            found = {
                r[0].lower(): r[0]
                for r in self._conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
            }
        except sqlite3.Error as exc:
            raise LegacyError(f"{self.path}: cannot read it as SQLite: {exc}") from None
        self.tables = [t for t in LEGACY_TABLES if t in found]
        self._names = {t: found[t] for t in self.tables}
        self._rounded = 0
        self._known: dict[str, set[str]] = {}
        for inst in registry:
            self._known.setdefault(inst.exchange, set()).add(inst.symbol)

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> LegacySource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reading ---------------------------------------------------------------------------

    def columns(self, table: str) -> dict[str, str]:
        """Canonical name -> the table's own column name (required and optional ones)."""
        name = self._names[table]
        own = {r[1].lower(): r[1] for r in self._conn.execute(f'PRAGMA table_info("{name}")')}
        out: dict[str, str] = {}
        for canon, options in _COLUMNS[table].items():
            hit = next((own[o] for o in options if o in own), None)
            if hit is None:
                raise LegacyError(
                    f"legacy table {table} has no {canon} column (looked for: "
                    f"{', '.join(options)}; it has: {', '.join(sorted(own))})"
                )
            out[canon] = hit
        for canon, options in _OPTIONAL.items():
            hit = next((own[o] for o in options if o in own), None)
            if hit is not None:
                out[canon] = hit
        if table == "trades" and "side" not in out and "is_buyer_maker" not in out:
            raise LegacyError("legacy table trades has neither a side nor an is_buyer_maker column")
        return out

    def count(self, table: str) -> int:
        (n,) = self._conn.execute(f'SELECT count(*) FROM "{self._names[table]}"').fetchone()
        return int(n)

    def raw_rows(self, table: str, rowids: Sequence[int] | None = None) -> Iterator[dict[str, Any]]:
        """Rows as ``{canonical column: value}`` with ``rowid``, in rowid order (or the
        given rowids)."""
        cols = self.columns(table)
        select = ", ".join(f'"{c}"' for c in cols.values())
        query = f'SELECT rowid, {select} FROM "{self._names[table]}"'
        if rowids is None:
            cur = self._conn.execute(query + " ORDER BY rowid")
        else:
            marks = ",".join("?" * len(rowids))
            cur = self._conn.execute(query + f" WHERE rowid IN ({marks}) ORDER BY rowid", rowids)
        names = ["rowid", *cols]
        for row in cur:
            yield dict(zip(names, row, strict=True))

    def rows(self, table: str) -> Iterator[LegacyRow]:
        """Every row of ``table`` mapped to its event (raises :class:`LegacyError`)."""
        convert: Callable[[dict[str, Any]], MarketEvent]
        convert = {"ohlcv": self._bar, "trades": self._trade, "order_books": self._book}[table]
        for raw in self.raw_rows(table):
            event = convert(raw)
            ident = b"legacy|%s|%d|" % (table.encode(), raw["rowid"]) + encode(event)
            eid = time_prefixed_id(event.ts_event, ident)
            yield LegacyRow(
                market_stream(event.exchange, event.symbol),
                table,
                raw["rowid"],
                prepare(event, eid),
            )

    def take_rounded(self) -> int:
        """How many values were rounded since the last call."""
        n, self._rounded = self._rounded, 0
        return n

    # -- mapping ---------------------------------------------------------------------------

    def instrument(self, table: str, raw: dict[str, Any]) -> Instrument:
        where = f"legacy {table} row {raw['rowid']}"
        exchange = str(raw.get("exchange") or self.options.exchange).strip().upper()
        text = raw["symbol"]
        if not isinstance(text, str) or not text.strip():
            raise LegacyError(f"{where}: symbol={text!r} is not a symbol")
        symbol = legacy_symbol(text, self._known.get(exchange, ()))
        if symbol is None:
            raise LegacyError(f"{where}: symbol={text!r} names no known quote currency")
        try:
            return self.registry.get(exchange, symbol)
        except InstrumentError:
            raise LegacyError(
                f"{where}: symbol {text!r} is {exchange}:{symbol}, which is not in "
                "config/instruments.yaml (add it, or choose the exchange with "
                "--legacy-exchange)"
            ) from None

    def _units(self, table: str, raw: dict[str, Any], column: str, decimals: int) -> int:
        value = number(raw[column], f"legacy {table} row {raw['rowid']}: {column}")
        units = value.scaleb(decimals).quantize(Decimal(1), rounding=ROUND_HALF_EVEN)
        if units != value.scaleb(decimals):
            self._rounded += 1
        return int(units)

    def _bar(self, raw: dict[str, Any]) -> MarketEvent:
        where = f"legacy ohlcv row {raw['rowid']}"
        inst = self.instrument("ohlcv", raw)
        ts = timestamp_ns(raw["timestamp"], f"{where}: timestamp")
        interval = self.options.interval_ns
        if raw.get("interval") not in (None, ""):
            try:
                interval = parse_interval(str(raw["interval"]))
            except LegacyError as exc:
                raise LegacyError(f"{where}: {exc}") from None
        o, h, low, c = (
            self._units("ohlcv", raw, k, inst.price_decimals)
            for k in ("open", "high", "low", "close")
        )
        volume = self._units("ohlcv", raw, "volume", inst.size_decimals)
        if min(o, h, low, c) <= 0 or volume < 0:
            raise LegacyError(
                f"{where}: prices must be positive and volume not negative "
                f"(open={raw['open']!r} high={raw['high']!r} low={raw['low']!r} "
                f"close={raw['close']!r} volume={raw['volume']!r})"
            )
        if h < max(o, c, low) or low > min(o, c):
            raise LegacyError(
                f"{where}: high={raw['high']!r} / low={raw['low']!r} do not bound "
                f"open={raw['open']!r} and close={raw['close']!r}"
            )
        return Bar(
            ts_event=ts,
            ts_recv=ts + interval,
            exchange=inst.exchange,
            symbol=inst.symbol,
            seq=raw["rowid"],
            interval_ns=interval,
            open=o,
            high=h,
            low=low,
            close=c,
            volume=volume,
        )

    def _trade(self, raw: dict[str, Any]) -> MarketEvent:
        where = f"legacy trades row {raw['rowid']}"
        inst = self.instrument("trades", raw)
        ts = timestamp_ns(raw["timestamp"], f"{where}: timestamp")
        price = self._units("trades", raw, "price", inst.price_decimals)
        size = self._units("trades", raw, "size", inst.size_decimals)
        if price <= 0 or size <= 0:
            raise LegacyError(
                f"{where}: price={raw['price']!r} and size={raw['size']!r} must be positive"
            )
        side = legacy_side(raw, where)
        trade_id = raw.get("trade_id")
        return Trade(
            ts_event=ts,
            ts_recv=ts,
            exchange=inst.exchange,
            symbol=inst.symbol,
            seq=raw["rowid"],
            trade_id=str(raw["rowid"] if trade_id in (None, "") else trade_id),
            price=price,
            size=size,
            side=side,
        )

    def _book(self, raw: dict[str, Any]) -> MarketEvent:
        where = f"legacy order_books row {raw['rowid']}"
        inst = self.instrument("order_books", raw)
        ts = timestamp_ns(raw["timestamp"], f"{where}: timestamp")
        sides: list[tuple[Level, ...]] = []
        for column, best_first in (("bids", True), ("asks", False)):
            levels: list[Level] = []
            for n, (p, q) in enumerate(levels_of(raw[column], f"{where}: {column}")):
                one = {"rowid": raw["rowid"], "price": p, "size": q}
                price = self._units("order_books", one, "price", inst.price_decimals)
                size = self._units("order_books", one, "size", inst.size_decimals)
                if price <= 0 or size < 0:
                    raise LegacyError(f"{where}: {column} level {n} [{p!r}, {q!r}] is not valid")
                if size:
                    levels.append((price, size))
            levels.sort(reverse=best_first)
            sides.append(tuple(levels))
        return BookSnapshot(
            ts_event=ts,
            ts_recv=ts,
            exchange=inst.exchange,
            symbol=inst.symbol,
            seq=raw["rowid"],
            bids=sides[0],
            asks=sides[1],
        )


# -- values --------------------------------------------------------------------------------


def number(value: object, what: str) -> Decimal:
    """A finite number from a REAL, INTEGER or numeric text; :class:`LegacyError` else."""
    if isinstance(value, bool) or value is None or isinstance(value, bytes):
        raise LegacyError(f"{what}={value!r} is not a number")
    if isinstance(value, float):
        if not math.isfinite(value):
            raise LegacyError(f"{what}={value!r} is not a finite number")
        return Decimal(repr(value))
    if isinstance(value, int):
        return Decimal(value)
    try:
        dec = Decimal(str(value).strip())
    except InvalidOperation:
        raise LegacyError(f"{what}={value!r} is not a number") from None
    if not dec.is_finite():
        raise LegacyError(f"{what}={value!r} is not a finite number")
    return dec


def timestamp_ns(value: object, what: str) -> int:
    """Epoch s / ms / µs / ns (by magnitude) or ISO-8601 text -> ns (see the module doc)."""
    if isinstance(value, str) and value.strip():
        text = value.strip()
        try:
            dec = Decimal(text)
        except InvalidOperation:
            try:
                dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
            except ValueError:
                raise LegacyError(f"{what}={value!r} is not a time") from None
            if dt.tzinfo is None:
                dt = dt.replace(tzinfo=UTC)
            delta = dt - _EPOCH
            return (delta.days * 86_400 + delta.seconds) * 10**9 + delta.microseconds * 1000
        value = dec
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
        raise LegacyError(f"{what}={value!r} is not a time")
    dec = Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
    if not dec.is_finite() or dec <= 0:
        raise LegacyError(f"{what}={value!r} is not a time")
    magnitude = abs(dec)
    scale = 9 if magnitude < 10**11 else 6 if magnitude < 10**14 else 3 if magnitude < 10**17 else 0
    return int(dec.scaleb(scale).to_integral_value(rounding=ROUND_HALF_EVEN))


def legacy_symbol(text: str, known: Collection[str] = ()) -> str | None:
    """``BTC/USDT``, ``btc-usdt``, ``BTC_USDT``, ``BTCUSDT`` -> ``BTC-USDT``; ``None`` when
    a run-together symbol ends in no known quote (:data:`QUOTES`). A run-together symbol
    that splits more than one way (``BTCTUSD``: TUSD or USD) takes the first split in
    ``known`` (symbols of the exchange's instruments), else the longest quote."""
    s = text.strip().upper()
    for sep in ("/", "-", "_", ":"):
        if sep in s:
            base, _, quote = s.partition(sep)
            return normalise_symbol(base, quote, "spot") if base and quote else None
    splits = [
        normalise_symbol(s[: -len(q)], q, "spot")
        for q in sorted(QUOTES, key=len, reverse=True)
        if s.endswith(q) and len(s) > len(q)
    ]
    return next((c for c in splits if c in known), splits[0] if splits else None)


def legacy_side(raw: dict[str, Any], where: str) -> Side:
    side = raw.get("side")
    if side not in (None, ""):
        text = str(side).strip().lower()
        if text in ("buy", "b", "bid"):
            return "buy"
        if text in ("sell", "s", "ask"):
            return "sell"
        raise LegacyError(f"{where}: side={side!r} is neither buy nor sell")
    maker = raw.get("is_buyer_maker")
    if maker in (None, ""):
        raise LegacyError(f"{where}: no side and no is_buyer_maker")
    flag = str(maker).strip().lower()
    if flag in ("1", "true", "t", "yes"):
        return "sell"  # the buyer rested: the seller hit the bid
    if flag in ("0", "false", "f", "no"):
        return "buy"
    raise LegacyError(f"{where}: is_buyer_maker={maker!r} is not a boolean")


def levels_of(value: object, what: str) -> list[tuple[object, object]]:
    """JSON ``[[price, size], ...]`` or ``[{"price": p, "quantity": q}, ...]``."""
    try:
        doc = msgspec.json.decode(value if isinstance(value, bytes | str) else b"")
    except msgspec.DecodeError:
        raise LegacyError(f"{what}={value!r} is not a JSON list of levels") from None
    if not isinstance(doc, list):
        raise LegacyError(f"{what}={value!r} is not a JSON list of levels")
    out: list[tuple[object, object]] = []
    for n, level in enumerate(doc):
        if isinstance(level, list) and len(level) >= 2:
            out.append((level[0], level[1]))
        elif isinstance(level, dict) and "price" in level:
            size = next(
                (level[k] for k in ("quantity", "qty", "size", "amount") if k in level), None
            )
            out.append((level["price"], size))
        else:
            raise LegacyError(f"{what}: level {n} {level!r} is not [price, size]")
    return out
