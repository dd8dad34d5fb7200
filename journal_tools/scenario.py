"""``tickerml scenario FILE.json``: pin fill behaviour with a scripted market.

A scenario is one JSON object (format in docs/execution.md)::

    {
      "instrument": {"exchange": "BINANCE", "symbol": "BTC-USDT", "kind": "spot",
                     "base": "BTC", "quote": "USDT", "price_decimals": 1,
                     "size_decimals": 3, "taker_fee_ppm": 1000},
      "execution": {"queue_model": "risk_averse"},
      "latency": {"entry_ms": 50, "response_ms": 30},
      "portfolio": {"initial_cash": "10000"},
      "risk": {"max_position_pct": 25},
      "seed": 1,
      "events": [
        {"t_ms": 0, "type": "snapshot", "bids": [["100.0", "10"]], "asks": [["100.1", "10"]]},
        {"t_ms": 10, "type": "submit", "id": "o1", "side": "buy", "order_type": "market",
         "size": "12"},
        {"t_ms": 200, "type": "trade", "price": "100.0", "size": "4", "side": "sell"}
      ]
    }

Market events (snapshot, delta, trade, funding, mark) are folded at ``t_ms`` (their
exchange time is ``t_event_ms``, default ``t_ms``); actions (submit, cancel, amend) run
at ``t_ms`` before any market event of the same time; halt and resume are inputs. After
the last event the clock runs ``settle_ms`` (default 10,000) further so responses in
flight arrive. Every kernel output is printed as one JSON line with prices, sizes and
money as exact decimal strings, then a ``final`` line with positions, cash, equity
(marked to mid) and each order's state, filled size and average price.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec

from kernel.config import (
    EngineConfig,
    ExecutionConfig,
    LatencyProfile,
    PortfolioConfig,
    RiskLimitsConfig,
)
from kernel.engine import Engine
from kernel.events import (
    BookDelta,
    BookSnapshot,
    Event,
    Fill,
    FundingRate,
    Halt,
    MarkPrice,
    Resume,
    Trade,
    kind_of,
    to_builtins,
)
from kernel.fixedpoint import MONEY_DECIMALS, FixedPointError, format_fixed, parse_fixed
from kernel.instruments import Instrument, InstrumentError, InstrumentRegistry
from strategies.scripted import Action, ScriptedStrategy

NS_PER_MS = 1_000_000

PRICE_FIELDS = frozenset({"price", "trigger_price", "reference_price"})
SIZE_FIELDS = frozenset({"size", "remaining", "queue_ahead", "position", "queue_ahead_at_place"})
MONEY_FIELDS = frozenset(
    {
        "fee",
        "slippage",
        "impact_cost",
        "amount",
        "cash",
        "equity",
        "realised",
        "unrealised",
        "fees",
        "funding",
        "impact",
    }
)


class ScenarioError(ValueError):
    """A scenario file that cannot be run; the message names the event and field."""


class Scenario(msgspec.Struct, frozen=True):
    instruments: tuple[Instrument, ...]
    engine: EngineConfig
    latency: dict[str, LatencyProfile]
    risk: RiskLimitsConfig | None
    seed: int
    inputs: tuple[Event, ...]
    actions: tuple[Action, ...]
    end_ns: int


def _ms(value: Any, where: str) -> int:
    try:
        return int(Decimal(str(value)) * NS_PER_MS)
    except ArithmeticError:
        raise ScenarioError(f"{where}: not a time in ms: {value!r}") from None


def load_scenario(path: Path) -> Scenario:
    try:
        raw = json.loads(path.read_text())
    except OSError as exc:
        raise ScenarioError(f"cannot read scenario {path}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise ScenarioError(f"{path}: not JSON: {exc}") from None
    return parse_scenario(raw, str(path))


def parse_scenario(raw: Any, name: str = "scenario") -> Scenario:
    """Validate a decoded scenario object; errors name the event index and field."""
    if not isinstance(raw, dict):
        raise ScenarioError(f"{name}: a scenario is a JSON object")
    known = {
        "instrument",
        "instruments",
        "execution",
        "latency",
        "portfolio",
        "seed",
        "events",
        "settle_ms",
        "description",
        "risk",
    }
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ScenarioError(f"{name}: unknown key(s) {unknown}; known: {sorted(known)}")
    try:
        insts = raw.get("instruments") or [raw["instrument"]]
        instruments = tuple(msgspec.convert(i, Instrument) for i in insts)
        execution = msgspec.convert(raw.get("execution", {}), ExecutionConfig)
        portfolio = msgspec.convert(
            {"snapshot_interval_ms": 0, **raw.get("portfolio", {})}, PortfolioConfig
        )
        risk = msgspec.convert(raw["risk"], RiskLimitsConfig) if "risk" in raw else None
    except KeyError:
        raise ScenarioError(f"{name}: needs 'instrument' (or 'instruments')") from None
    except (msgspec.ValidationError, InstrumentError, TypeError) as exc:
        raise ScenarioError(f"{name}: {exc}") from None
    registry = InstrumentRegistry(list(instruments))
    default = instruments[0]
    latency = _latency(raw.get("latency"), instruments, name)
    inputs: list[Event] = []
    actions: list[Action] = []
    last = 0
    events = raw.get("events")
    if not isinstance(events, list):
        raise ScenarioError(f"{name}: 'events' must be a list")
    for i, e in enumerate(events):
        where = f"{name}: events[{i}]"
        if not isinstance(e, dict) or "t_ms" not in e or "type" not in e:
            raise ScenarioError(f"{where}: needs 't_ms' and 'type'")
        t = _ms(e["t_ms"], where)
        if t < last:
            raise ScenarioError(f"{where}: t_ms goes backwards ({e['t_ms']})")
        last = t
        try:
            inst = (
                registry.get(e["exchange"], e["symbol"])
                if "exchange" in e or "symbol" in e
                else default
            )
            ev = _event(e, t, inst, where)
        except (InstrumentError, FixedPointError, KeyError) as exc:
            raise ScenarioError(f"{where}: {exc}") from None
        if isinstance(ev, Action):
            actions.append(ev)
        else:
            inputs.append(ev)
    settle = _ms(raw.get("settle_ms", 10_000), f"{name}: settle_ms")
    return Scenario(
        instruments=instruments,
        engine=EngineConfig(execution=execution, portfolio=portfolio),
        latency=latency,
        risk=risk,
        seed=int(raw.get("seed", 1)),
        inputs=tuple(inputs),
        actions=tuple(actions),
        end_ns=last + settle,
    )


def _latency(
    spec: Any, instruments: tuple[Instrument, ...], name: str
) -> dict[str, LatencyProfile]:
    """``{"entry_ms": 50, "response_ms": 30}`` (constant, every exchange) or a mapping
    of exchange -> LatencyProfile fields."""
    if spec is None:
        spec = {"entry_ms": 0, "response_ms": 0}
    if not isinstance(spec, dict):
        raise ScenarioError(f"{name}: 'latency' must be an object")
    try:
        if set(spec) <= {"entry_ms", "response_ms"}:
            prof = LatencyProfile(
                model="constant",
                entry_mean_ms=float(spec.get("entry_ms", 0)),
                entry_std_ms=0.0,
                response_mean_ms=float(spec.get("response_ms", 0)),
                response_std_ms=0.0,
                spike_probability=0.0,
            )
            return {i.exchange: prof for i in instruments}
        return {ex: msgspec.convert(p, LatencyProfile) for ex, p in spec.items()}
    except (msgspec.ValidationError, ValueError, TypeError) as exc:
        raise ScenarioError(f"{name}: latency: {exc}") from None


def _levels(inst: Instrument, rows: Any, where: str) -> tuple[tuple[int, int], ...]:
    if not isinstance(rows, list):
        raise ScenarioError(f"{where}: levels must be a list of [price, size]")
    return tuple((inst.price(str(p)), inst.size(str(s))) for p, s in rows)


def _event(e: dict[str, Any], t: int, inst: Instrument, where: str) -> Event | Action:
    kind = e["type"]
    te = _ms(e["t_event_ms"], where) if "t_event_ms" in e else t
    ex, sym = inst.exchange, inst.symbol
    if kind == "snapshot":
        return BookSnapshot(
            ts_event=te,
            ts_recv=t,
            exchange=ex,
            symbol=sym,
            seq=int(e.get("seq", 0)),
            bids=_levels(inst, e.get("bids", []), where),
            asks=_levels(inst, e.get("asks", []), where),
        )
    if kind == "delta":
        return BookDelta(
            ts_event=te,
            ts_recv=t,
            exchange=ex,
            symbol=sym,
            seq=int(e.get("seq", 0)),
            bids=_levels(inst, e.get("bids", []), where),
            asks=_levels(inst, e.get("asks", []), where),
        )
    if kind == "trade":
        side = e.get("side")
        if side not in ("buy", "sell"):
            raise ScenarioError(f"{where}: trade side must be buy or sell (the aggressor)")
        return Trade(
            ts_event=te,
            ts_recv=t,
            exchange=ex,
            symbol=sym,
            seq=int(e.get("seq", 0)),
            trade_id=str(e.get("id", f"t{t}")),
            price=inst.price(str(e["price"])),
            size=inst.size(str(e["size"])),
            side=side,
        )
    if kind == "funding":
        return FundingRate(
            ts_event=te,
            ts_recv=t,
            exchange=ex,
            symbol=sym,
            seq=0,
            rate=parse_fixed(str(e["rate"]), 10),
            next_funding_ts=_ms(e["next_ms"], where) if "next_ms" in e else 0,
        )
    if kind == "mark":
        return MarkPrice(
            ts_event=te,
            ts_recv=t,
            exchange=ex,
            symbol=sym,
            seq=0,
            mark_price=inst.price(str(e["price"])),
        )
    if kind == "halt":
        return Halt(ts_event=t, ts_recv=t, reason=str(e.get("reason", "scenario")))
    if kind == "resume":
        return Resume(ts_event=t, ts_recv=t, reason=str(e.get("reason", "scenario")))
    if kind in ("submit", "cancel", "amend"):
        if "id" not in e:
            raise ScenarioError(f"{where}: {kind} needs an 'id'")
        fields: dict[str, Any] = {
            "at_ns": t,
            "op": kind,
            "order_id": str(e["id"]),
            "exchange": ex,
            "symbol": sym,
        }
        if "size" in e:
            fields["size"] = inst.size(str(e["size"]))
        if "price" in e:
            fields["price"] = inst.price(str(e["price"]))
        if "trigger_price" in e:
            fields["trigger_price"] = inst.price(str(e["trigger_price"]))
        for src, dst in (
            ("side", "side"),
            ("order_type", "order_type"),
            ("tif", "time_in_force"),
            ("reduce_only", "reduce_only"),
            ("reason", "reason"),
        ):
            if src in e:
                fields[dst] = e[src]
        try:
            return msgspec.convert(fields, Action)
        except msgspec.ValidationError as exc:
            raise ScenarioError(f"{where}: {exc}") from None
    raise ScenarioError(
        f"{where}: unknown type {kind!r} (snapshot, delta, trade, funding, mark, submit, "
        "cancel, amend, halt, resume)"
    )


def _num_ms(ns: int) -> int | float:
    return ns // NS_PER_MS if ns % NS_PER_MS == 0 else ns / NS_PER_MS


def render(ev: Event, registry: InstrumentRegistry, default: Instrument) -> dict[str, Any]:
    """An output event as a JSON-ready dict with exact decimal strings."""
    d = to_builtins(ev)
    row: dict[str, Any] = {
        "kind": kind_of(ev),
        "ts_event_ms": _num_ms(ev.ts_event),
        "ts_recv_ms": _num_ms(ev.ts_recv),
    }
    inst = default
    ex, sym = d.get("exchange"), d.get("symbol")
    if isinstance(ex, str) and isinstance(sym, str) and f"{ex}:{sym}" in registry:
        inst = registry.get(ex, sym)
    for k, v in d.items():
        if k in ("k", "ts_event", "ts_recv"):
            continue
        if isinstance(v, int) and not isinstance(v, bool):
            if k in PRICE_FIELDS:
                v = inst.price_text(v)
            elif k in SIZE_FIELDS:
                v = inst.size_text(v)
            elif k in MONEY_FIELDS:
                v = format_fixed(v, MONEY_DECIMALS)
            elif k == "latency_ns":
                k, v = "latency_ms", _num_ms(v)
        row[k] = v
    return row


def run_scenario(sc: Scenario) -> Iterator[dict[str, Any]]:
    """Run the scenario; yields one dict per kernel output, then the ``final`` dict."""
    registry = InstrumentRegistry(list(sc.instruments))
    default = sc.instruments[0]
    strat = ScriptedStrategy(list(sc.actions))
    eng = Engine(
        sc.engine,
        registry,
        strat,
        seed=sc.seed,
        session_id="scenario",
        latency=sc.latency,
        risk=sc.risk,
    )
    fills: dict[str, list[Fill]] = {}

    def emit(outs: tuple[Event, ...] | list[Event]) -> Iterator[dict[str, Any]]:
        for ev in outs:
            if isinstance(ev, Fill):
                fills.setdefault(ev.order_id, []).append(ev)
            yield render(ev, registry, default)

    yield from emit(eng.start())
    for ev in sc.inputs:
        yield from emit(eng.apply(ev))
    yield from emit(eng.advance(sc.end_ns))
    yield final_summary(eng, registry, fills, sc)


def final_summary(
    eng: Engine, registry: InstrumentRegistry, fills: dict[str, list[Fill]], sc: Scenario
) -> dict[str, Any]:
    pf = eng.portfolio
    positions: dict[str, Any] = {}
    equity = pf.cash
    for key in sorted(pf.positions):
        pos = pf.positions[key]
        inst = registry.by_key(key)
        book = eng.books.get(key)
        m2 = book.mid_x2() if book is not None else None
        value = 0
        if pos.qty:
            value = (
                inst.notional(m2, abs(pos.qty)) // 2 * (1 if pos.qty > 0 else -1)
                if m2 is not None
                else pos.cost
            )
        equity += value
        avg = ""
        if pos.qty:
            avg = str(
                (Decimal(abs(pos.cost)) / Decimal(10**MONEY_DECIMALS))
                / inst.size_decimal(abs(pos.qty))
            )
        positions[key] = {
            "size": inst.size_text(pos.qty),
            "avg_price": avg,
            "realised": format_fixed(pos.realised, MONEY_DECIMALS),
            "fees": format_fixed(pos.fees, MONEY_DECIMALS),
            "impact": format_fixed(pos.impact, MONEY_DECIMALS),
            "funding": format_fixed(pos.funding, MONEY_DECIMALS),
        }
    orders: dict[str, Any] = {}
    for a in sc.actions:
        if a.op != "submit":
            continue
        fs = fills.get(a.order_id, [])
        inst = registry.get(a.exchange, a.symbol)
        filled = sum(f.size for f in fs)
        entry: dict[str, Any] = {"filled": inst.size_text(filled)}
        if filled:
            paid = sum((Decimal(f.price) * f.size for f in fs), Decimal(0))
            mean = paid / filled / Decimal(10**inst.price_decimals)
            entry["avg_price"] = str(mean.quantize(Decimal("1e-8")))
        view = eng.orders.get(a.order_id)
        entry["open"] = view is not None
        orders[a.order_id] = entry
    return {
        "kind": "final",
        "ts_ms": _num_ms(eng.now),
        "cash": format_fixed(pf.cash, MONEY_DECIMALS),
        "equity": format_fixed(equity, MONEY_DECIMALS),
        "fees": format_fixed(pf.fees, MONEY_DECIMALS),
        "impact": format_fixed(pf.impact, MONEY_DECIMALS),
        "slippage": format_fixed(pf.slippage, MONEY_DECIMALS),
        "funding": format_fixed(pf.funding, MONEY_DECIMALS),
        "positions": positions,
        "orders": orders,
    }
