"""The decision audit of a journaled session: ``tickerml audit --session ID``.

For every decision (or one, ``--decision``; or a time range, ``--from/--to``) of a
session stream it shows:

* the decision: time, instrument, action, confidence, model version (``model_id``, and
  the session's last ``ModelLoaded`` before it), the reasoning text;
* its inputs: the named values the strategy journaled with it, split into ``features``
  and ``thresholds`` (names containing ``threshold`` or ending in ``_max_s`` / ``_max``),
  and the instrument's last journaled ``Features`` sample at or before the decision
  (every kernel feature; empty when the session did not emit features);
* risk checks: the ``RiskEvent`` rows the risk layer journaled for its orders (a refusal
  or a resize), else ``passed``;
* the orders it caused (``OrderSubmitted`` with its ``decision_id``), their final state
  and every fill (price, size, fee, liquidity, slippage, impact, toxic);
* P&L attribution over its fills: notional, fees, slippage and impact (quote units);
  funding is per position, not per decision, and is left to the session totals;
* the hash chain: the stream is verified row by row (``Journal.verify``); each row
  shown carries its seq and row hash and ``verified`` says whether it lies before the
  first bad row.

Formats: ``table`` (rich), ``json`` (one document), ``csv`` (one row per decision).
"""

from __future__ import annotations

import csv
import io
from typing import Any

import msgspec

from adapters.journal.base import Journal, session_stream
from kernel.events import (
    Decision,
    Features,
    Fill,
    FillToxic,
    ModelLoaded,
    OrderCancelled,
    OrderExpired,
    OrderRejected,
    OrderSubmitted,
    RiskEvent,
    SessionEnded,
    SessionStarted,
    decode,
    kind_of,
    to_builtins,
)

MONEY = 1e8


class AuditError(ValueError):
    """No such session or decision."""


def is_threshold(name: str) -> bool:
    return "threshold" in name or name.endswith(("_max_s", "_max"))


def build_audit(
    journal: Journal,
    session_id: str,
    *,
    decision_id: str | None = None,
    start_ns: int | None = None,
    end_ns: int | None = None,
    limit: int | None = None,
) -> dict[str, Any]:
    """The audit document of a session (see the module docstring)."""
    stream = session_stream(session_id)
    chain = journal.verify(stream)
    bad = chain.first_bad_seq if not chain.ok else None
    header: SessionStarted | None = None
    ended: SessionEnded | None = None
    decisions: list[dict[str, Any]] = []
    by_id: dict[str, dict[str, Any]] = {}
    orders: dict[str, dict[str, Any]] = {}
    last_features: dict[str, Features] = {}
    model: ModelLoaded | None = None
    current: dict[str, Any] | None = None  # the decision whose actions follow it
    for rec in journal.read(stream):
        ev = decode(rec.payload)
        row = {"seq": rec.seq, "hash": rec.hash.hex(), "verified": bad is None or rec.seq < bad}
        if isinstance(ev, SessionStarted):
            header = ev
        elif isinstance(ev, SessionEnded):
            ended = ev
        elif isinstance(ev, Features):
            last_features[f"{ev.exchange}:{ev.symbol}"] = ev
        elif isinstance(ev, ModelLoaded):
            model = ev
        elif isinstance(ev, Decision):
            inputs = dict(ev.features)
            sample = last_features.get(f"{ev.exchange}:{ev.symbol}")
            current = {
                "decision_id": ev.decision_id,
                "seq": rec.seq,
                "row": row,
                "ts": ev.ts_event,
                "instrument": f"{ev.exchange}:{ev.symbol}",
                "strategy": ev.strategy,
                "action": ev.action,
                "confidence": ev.confidence,
                "reasoning": ev.reasoning,
                "model_id": ev.model_id,
                "model": (
                    {"model_id": model.model_id, "weights_hash": model.weights_hash}
                    if model is not None
                    else None
                ),
                "features": {k: v for k, v in inputs.items() if not is_threshold(k)},
                "thresholds": {k: v for k, v in inputs.items() if is_threshold(k)},
                "feature_sample": (
                    {"ts": sample.ts_event, "values": sample.as_dict()} if sample else None
                ),
                "risk": [],
                "orders": [],
                "pnl": {"notional": 0.0, "fees": 0.0, "slippage": 0.0, "impact": 0.0},
            }
            decisions.append(current)
            by_id[ev.decision_id] = current
        elif isinstance(ev, OrderSubmitted):
            order = {
                "order_id": ev.order_id,
                "row": row,
                "side": ev.side,
                "type": ev.order_type,
                "size": ev.size,
                "price": ev.price,
                "state": "submitted",
                "filled": 0,
                "fees": 0,
                "fills": 0,
                "fill_rows": [],
            }
            orders[ev.order_id] = order
            owner = by_id.get(ev.decision_id)
            if owner is not None:
                owner["orders"].append(order)
        elif isinstance(ev, RiskEvent):
            # the risk layer journals its check of an order right where it is submitted,
            # after the decision that asked for it
            if current is not None and ev.ts_event == current["ts"]:
                current["risk"].append(
                    {"rule": ev.rule, "level": ev.level, "detail": ev.detail, "row": row}
                )
        else:
            oid = getattr(ev, "order_id", None)
            info = orders.get(oid) if isinstance(oid, str) else None
            if info is None:
                continue
            if isinstance(ev, Fill):
                info["filled"] += ev.size
                info["fees"] += ev.fee
                info["fills"] += 1
                info["state"] = "filled" if info["filled"] >= info["size"] else "partial"
                info["fill_rows"].append(
                    {
                        "fill_id": ev.fill_id,
                        "row": row,
                        "ts": ev.ts_event,
                        "price": ev.price,
                        "size": ev.size,
                        "fee": ev.fee / MONEY,
                        "liquidity": ev.liquidity,
                        "slippage": ev.slippage / MONEY,
                        "impact": ev.impact_cost / MONEY,
                        "toxic": ev.toxic,
                    }
                )
            elif isinstance(ev, FillToxic):
                for f in info["fill_rows"]:
                    if f["fill_id"] == ev.fill_id:
                        f["toxic"] = True
            elif isinstance(ev, OrderRejected):
                info["state"] = f"rejected: {ev.reason}"
            elif isinstance(ev, OrderCancelled | OrderExpired):
                info["state"] = kind_of(ev).removeprefix("Order").lower()
    if header is None:
        raise AuditError(f"no session {session_id!r} in the journal")
    instruments = {i.key: i for i in _instruments(header)}
    for d in decisions:
        inst = instruments.get(d["instrument"])
        pnl = d["pnl"]
        for o in d["orders"]:
            for f in o["fill_rows"]:
                if inst is not None:
                    pnl["notional"] += inst.notional(f["price"], f["size"]) / MONEY
                pnl["fees"] += f["fee"]
                pnl["slippage"] += f["slippage"]
                pnl["impact"] += f["impact"]
        d["risk_checks"] = (
            "passed"
            if not d["risk"]
            else "; ".join(f"{r['rule']} {r['level']}: {r['detail']}" for r in d["risk"])
        )
    chosen = decisions
    if decision_id is not None:
        chosen = [d for d in decisions if d["decision_id"] == decision_id]
        if not chosen:
            raise AuditError(f"no decision {decision_id!r} in session {session_id}")
    if start_ns is not None:
        chosen = [d for d in chosen if d["ts"] >= start_ns]
    if end_ns is not None:
        chosen = [d for d in chosen if d["ts"] < end_ns]
    total = len(chosen)
    if limit is not None:
        chosen = chosen[:limit]
    return {
        "session": to_builtins(header),
        "ended": to_builtins(ended) if ended else None,
        "hash_chain_ok": chain.ok,
        "hash_chain": msgspec.to_builtins(chain),
        "decisions_total": total,
        "decisions": chosen,
    }


def _instruments(header: SessionStarted) -> list[Any]:
    from kernel.config import AppConfig

    try:
        config = msgspec.json.decode(header.config_json, type=AppConfig)
    except msgspec.ValidationError:
        return []
    return list(config.instruments.instruments)


CSV_COLUMNS = (
    "seq",
    "decision_id",
    "ts",
    "instrument",
    "action",
    "confidence",
    "model_id",
    "reasoning",
    "features",
    "thresholds",
    "risk_checks",
    "orders",
    "fills",
    "notional",
    "fees",
    "slippage",
    "impact",
    "row_hash",
    "verified",
)


def to_csv(doc: dict[str, Any]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for d in doc["decisions"]:
        fills = [f for o in d["orders"] for f in o["fill_rows"]]
        w.writerow(
            [
                d["seq"],
                d["decision_id"],
                d["ts"],
                d["instrument"],
                d["action"],
                f"{d['confidence']:.6g}",
                d["model_id"],
                d["reasoning"],
                " ".join(f"{k}={v:.6g}" for k, v in d["features"].items()),
                " ".join(f"{k}={v:.6g}" for k, v in d["thresholds"].items()),
                d["risk_checks"],
                " ".join(f"{o['order_id']}:{o['side']}:{o['state']}" for o in d["orders"]),
                " ".join(f"{f['fill_id']}:{f['size']}@{f['price']}" for f in fills),
                f"{d['pnl']['notional']:.8f}",
                f"{d['pnl']['fees']:.8f}",
                f"{d['pnl']['slippage']:.8f}",
                f"{d['pnl']['impact']:.8f}",
                d["row"]["hash"],
                d["row"]["verified"],
            ]
        )
    return buf.getvalue()
