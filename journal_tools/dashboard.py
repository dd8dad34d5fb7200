"""``tickerml dashboard``: the operator's live page, served on localhost.

What it shows comes from the journal, the record every mode writes (a live session
journals its outputs as it commits, a replay as it runs), so the same page works for a
session being traded now and for one replayed last week:

* :class:`SessionView` folds a session stream (``session.<id>``) incrementally, from the
  last seq it has seen, into what the page shows: portfolio value and P&L over time,
  buy and hold of what the session traded, drawdown, rolling Sharpe, win rate and
  profit factor (the ``trade_history`` round trips of journal_tools/projections.py),
  open positions with unrealised P&L, exposure by asset, the circuit-breaker state,
  model metrics (decision confidence, prediction accuracy, feature association with
  the decisions, attention weights where a model journals them), connectivity per
  exchange-symbol (``sys.CONNECTIVITY`` and the ``md.*`` streams), system resources
  and the alert feed (the session's ``Alert`` events and the runner's ``sys.ALERTS``).
* :func:`create_app` serves the page (``dashboard_static/``), ``/api/state`` (the whole
  state as JSON) and ``/api/stream``: server-sent events, one ``state`` message each
  time the journal has something new (checked every ``poll_s``), so a new event shows
  on the page within a poll without the browser asking.

Why Starlette and our own canvas charts: Starlette (with uvicorn) is the small ASGI
core FastAPI is built on; the dashboard has three routes and needs no request models,
so FastAPI would add nothing. Server-sent events rather than WebSocket: updates flow
one way, SSE reconnects by itself and passes through proxies as plain HTTP. The charts
are a few lines of canvas code (dashboard_static/app.js): the page must work with no
internet (no CDN), Plotly's bundle is 3.5 MB for what is a handful of line charts, and
writing our own keeps every value on the page testable (each chart carries its last
value in a ``data-last`` attribute, which the browser tests read).

Prediction accuracy: a ``buy`` or ``sell`` decision predicts the instrument's mid moves
its way; it is scored at the first mid seen (``Features`` samples, portfolio marks,
fills) at least ``accuracy_horizon_s`` later, and unchanged mids are not scored. Feature
association: for each feature named in at least 10 buy/sell decisions, the absolute
correlation of its value with the decision's direction (+1 buy, -1 sell). Attention:
a ``Decision`` whose ``features`` hold ``attn.0``, ``attn.1``, ... (strategies/
dt_policy.py journals the last layer's attention over its context that way).
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import resource
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from adapters.alerts import ALERTS_STREAM
from adapters.journal.base import Journal, session_stream
from journal_tools.projections import SessionEvents, session_config, trade_history
from kernel.events import (
    Alert,
    Connectivity,
    Decision,
    Event,
    Features,
    Fill,
    FillToxic,
    FundingPayment,
    PortfolioSnapshot,
    RiskEvent,
    SessionEnded,
    SessionStarted,
    decode,
)
from kernel.fixedpoint import MONEY_DECIMALS
from kernel.instruments import InstrumentError, InstrumentRegistry
from kernel.metrics import annualisation_periods, profit_factor, sharpe, win_rate

STATIC = Path(__file__).with_name("dashboard_static")
CONNECTIVITY_STREAM = "sys.CONNECTIVITY"
MONEY = 10**MONEY_DECIMALS
_MS = 1_000_000
_S = 1_000_000_000


# a model strategy's own outputs among its Decision inputs (strategies/dt_policy.py
# OUTPUT_FEATURES), not market features: left out of the feature association
_MODEL_OUTPUTS = frozenset(
    {"p_hold", "p_buy", "p_sell", "size", "stop", "return_to_go", "timestep", "position"}
)


class DashboardError(ValueError):
    """A clear reason the dashboard cannot show what was asked."""


class Series:
    """A time series for a chart, at most ``max_points`` long: when full, every other
    point is dropped (the last one is always kept), so a long session keeps its shape."""

    def __init__(self, max_points: int = 2000) -> None:
        self.max_points = max_points
        self.points: list[tuple[int, float]] = []

    def add(self, ts_ns: int, value: float) -> None:
        pts = self.points
        if pts and pts[-1][0] == ts_ns // _MS:
            pts[-1] = (ts_ns // _MS, value)
            return
        pts.append((ts_ns // _MS, value))
        if len(pts) > self.max_points:
            last = pts[-1]
            self.points = [*pts[:-1:2], last]

    @property
    def last(self) -> float | None:
        return self.points[-1][1] if self.points else None

    def json(self) -> list[list[float]]:
        return [[t, v] for t, v in self.points]


@dataclass
class _Pending:
    due: int
    key: str
    direction: int
    mid: float


@dataclass
class _Stream:
    status: str = "up"
    reason: str = ""
    seq: int = 0
    count: int = 0
    last_ts: int = 0


@dataclass
class _Cpu:
    last: tuple[int, int] | None = None
    pct: float | None = None


def _r(x: float | None, digits: int = 4) -> float | None:
    if x is None or not math.isfinite(x):
        return None
    return round(x, digits)


@dataclass
class SessionView:
    """The dashboard's model of one session, fed incrementally by :meth:`poll`."""

    journal: Journal
    session_id: str
    max_points: int = 2000
    accuracy_horizon_s: float = 60.0
    sharpe_window: int = 30
    live: bool | None = None  # None: live while the session has not ended
    clock: Callable[[], float] = time.time
    seq: int = 0
    outputs: int = 0
    started: SessionStarted | None = None
    ended: SessionEnded | None = None
    registry: InstrumentRegistry | None = None
    initial_cash: int = 0
    last_ts: int = 0
    equity: Series = field(init=False)
    benchmark: Series = field(init=False)
    drawdown: Series = field(init=False)
    rolling_sharpe: Series = field(init=False)
    confidence: Series = field(init=False)
    accuracy: Series = field(init=False)
    last_snapshot: PortfolioSnapshot | None = None
    peak: int = 0
    max_dd: float = 0.0
    returns: deque[float] = field(default_factory=lambda: deque(maxlen=30))
    interval_ms: int = 60_000
    bench_key: str = ""
    bench_first: int = 0
    marks: dict[str, float] = field(default_factory=dict)
    trade_events: list[tuple[int, Event]] = field(default_factory=list)
    trades_dirty: bool = False
    trade_stats: dict[str, Any] = field(default_factory=dict)
    breaker: dict[str, Any] = field(default_factory=dict)
    pending: deque[_Pending] = field(default_factory=deque)
    scored: deque[int] = field(default_factory=lambda: deque(maxlen=50))
    decisions: deque[Decision] = field(default_factory=lambda: deque(maxlen=2000))
    model_id: str = ""
    attention: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=5))
    alerts: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=100))
    alerts_seq: int = 0
    conn_seq: int = 0
    streams: dict[str, _Stream] = field(default_factory=dict)
    fills: int = 0
    writes: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=20))
    cpu: _Cpu = field(default_factory=_Cpu)
    version: int = 0

    def __post_init__(self) -> None:
        for name in ("equity", "benchmark", "drawdown", "rolling_sharpe", "confidence"):
            setattr(self, name, Series(self.max_points))
        self.accuracy = Series(self.max_points)
        self.returns = deque(maxlen=self.sharpe_window)

    # -- feeding -------------------------------------------------------------------------

    def poll(self, limit: int = 200_000) -> bool:
        """Fold what the journal has that this view has not seen; True if anything."""
        stream = session_stream(self.session_id)
        changed = False
        for n, rec in enumerate(self.journal.read(stream, from_seq=self.seq + 1), 1):
            self.seq = rec.seq
            self._fold(decode(rec.payload))
            changed = True
            if n >= limit:
                break
        if self.started is None:
            raise DashboardError(
                f"no session {self.session_id!r} in the journal (tickerml sessions lists them)"
            )
        for rec in self.journal.read(ALERTS_STREAM, from_seq=self.alerts_seq + 1):
            self.alerts_seq = rec.seq
            ev = decode(rec.payload)
            if isinstance(ev, Alert):
                self._alert(ev, "system")
                changed = True
        changed = self._poll_streams() or changed
        if self.trades_dirty:
            self._trades()
        self.writes.append((self.clock(), self.outputs))
        if changed:
            self.version += 1
        return changed

    def _fold(self, ev: Event) -> None:
        self.outputs += 1
        t = type(ev)
        if t is PortfolioSnapshot:
            self._snapshot(ev)  # type: ignore[arg-type]
        elif t is Fill:
            self.fills += 1
            self.trade_events.append((self.seq, ev))
            self.trades_dirty = True
            key = f"{ev.exchange}:{ev.symbol}"  # type: ignore[attr-defined]
            self._mid(key, self._price(key, ev.price), ev.ts_recv)  # type: ignore[attr-defined]
        elif t is FundingPayment or t is FillToxic:
            self.trade_events.append((self.seq, ev))
            self.trades_dirty = True
        elif t is Decision:
            self._decision(ev)  # type: ignore[arg-type]
        elif t is Features:
            values = ev.as_dict()  # type: ignore[attr-defined]
            mid = values.get("mid", 0.0)
            if mid > 0:
                self._mid(f"{ev.exchange}:{ev.symbol}", mid, ev.ts_event)  # type: ignore[attr-defined]
        elif t is Alert:
            self._alert(ev, "kernel")  # type: ignore[arg-type]
        elif t is RiskEvent and ev.rule == "drawdown":  # type: ignore[attr-defined]
            self.breaker = {
                "level": ev.level,  # type: ignore[attr-defined]
                "detail": ev.detail,  # type: ignore[attr-defined]
                "ts": ev.ts_event // _MS,
            }
        elif t is SessionStarted:
            self._start(ev)  # type: ignore[arg-type]
        elif t is SessionEnded:
            self.ended = ev  # type: ignore[assignment]
        if ev.ts_recv > self.last_ts and t is not SessionEnded:
            self.last_ts = ev.ts_recv

    def _start(self, ev: SessionStarted) -> None:
        self.started = ev
        config = session_config(ev)
        try:
            self.registry = InstrumentRegistry(list(config.instruments.instruments))
        except InstrumentError as exc:
            raise DashboardError(f"session {ev.session_id}: {exc}") from None
        portfolio = config.trading.engine.portfolio
        self.initial_cash = round(float(portfolio.initial_cash) * MONEY)
        self.peak = self.initial_cash
        self.interval_ms = max(1, portfolio.snapshot_interval_ms)
        self.breaker = {"level": "normal", "detail": "no breaker event", "ts": None}

    def _price(self, key: str, units: int) -> float:
        inst = self._inst(key)
        return inst.price_float(units) if inst is not None else float(units)

    def _inst(self, key: str) -> Any:
        if self.registry is None:
            return None
        try:
            return self.registry.by_key(key)
        except (InstrumentError, KeyError):
            return None

    def _snapshot(self, snap: PortfolioSnapshot) -> None:
        prev = self.last_snapshot
        self.last_snapshot = snap
        ts = snap.ts_event
        eq = snap.equity
        self.equity.add(ts, eq / MONEY)
        self.peak = max(self.peak, eq)
        dd = (self.peak - eq) * 100 / self.peak if self.peak > 0 else 0.0
        self.max_dd = max(self.max_dd, dd)
        self.drawdown.add(ts, -dd)
        if prev is not None and prev.equity > 0:
            self.returns.append(eq / prev.equity - 1)
            if len(self.returns) >= 2:
                s = sharpe(list(self.returns), annualisation_periods(self.interval_ms))
                if s is not None:
                    self.rolling_sharpe.add(ts, s)
        for key, _qty, _cost, mark in snap.positions:
            if mark:
                self._mid(key, self._price(key, mark), ts)
                if not self.bench_key:
                    self.bench_key, self.bench_first = key, mark
        if self.bench_key:
            mark = next((m for k, _q, _c, m in snap.positions if k == self.bench_key and m), 0)
            if mark and self.bench_first:
                self.benchmark.add(ts, self.initial_cash / MONEY * mark / self.bench_first)
            elif self.benchmark.last is not None:
                self.benchmark.add(ts, self.benchmark.last)

    def _mid(self, key: str, mid: float, ts: int) -> None:
        self.marks[key] = mid
        if not self.pending:
            return
        keep: deque[_Pending] = deque()
        for p in self.pending:
            if p.key == key and ts >= p.due:
                if mid != p.mid:
                    self.scored.append(1 if (mid - p.mid) * p.direction > 0 else 0)
                    self.accuracy.add(ts, sum(self.scored) / len(self.scored))
            else:
                keep.append(p)
        self.pending = keep

    def _decision(self, d: Decision) -> None:
        if d.strategy == "risk":
            return
        self.decisions.append(d)
        self.confidence.add(d.ts_event, d.confidence)
        if d.model_id:
            self.model_id = d.model_id
        key = f"{d.exchange}:{d.symbol}"
        direction = {"buy": 1, "sell": -1}.get(d.action, 0)
        if direction:
            values = dict(d.features)
            mid = values.get("mid") or values.get("microprice") or self.marks.get(key)
            if mid:
                due = d.ts_event + int(self.accuracy_horizon_s * _S)
                self.pending.append(_Pending(due, key, direction, float(mid)))
        attn = [(int(k[5:]), v) for k, v in d.features if k.startswith("attn.")]
        if attn:
            attn.sort()
            self.attention.append(
                {
                    "decision_id": d.decision_id,
                    "ts": d.ts_event // _MS,
                    "action": d.action,
                    "weights": [_r(v) for _i, v in attn],
                }
            )

    def _alert(self, a: Alert, source: str) -> None:
        self.alerts.append(
            {
                "ts": a.ts_event // _MS,
                "severity": a.severity,
                "rule": a.rule,
                "message": a.message,
                "source": source,
            }
        )

    def _trades(self) -> None:
        self.trades_dirty = False
        if self.started is None or self.registry is None:
            return
        session = SessionEvents(
            self.started,
            session_config(self.started),
            self.registry,
            tuple(self.trade_events),
            None,
        )
        rows = trade_history(session)
        closed = [r.net_pnl / MONEY for r in rows if r.exit_ts]
        self.trade_stats = {
            "round_trips": len(closed),
            "open_trips": len(rows) - len(closed),
            "win_rate": _r(win_rate(closed)),
            "profit_factor": _r(profit_factor(closed)),
        }

    def _poll_streams(self) -> bool:
        changed = False
        # the collectors' Connectivity events (journal_tools/record.py, live.py)
        for rec in self.journal.read(CONNECTIVITY_STREAM, from_seq=self.conn_seq + 1):
            self.conn_seq = rec.seq
            ev = decode(rec.payload)
            if isinstance(ev, Connectivity):
                st = self.streams.setdefault(f"md.{ev.exchange}.{ev.symbol}", _Stream())
                st.status, st.reason = ev.status, ev.reason
                changed = True
        for info in self.journal.streams():
            name = info.stream
            if not name.startswith("md."):
                continue
            st = self.streams.setdefault(name, _Stream())
            if not st.count:  # first look: only the tail of a long stream
                st.seq = max(st.seq, info.last_seq - 5000)
            if info.last_seq == st.seq and st.count == info.count:
                continue
            changed = True
            st.count, st.last_ts = info.count, info.last_ts
            for rec in self.journal.read(name, from_seq=st.seq + 1):
                st.seq = rec.seq
                if rec.kind == "Connectivity":
                    ev = decode(rec.payload)
                    if isinstance(ev, Connectivity):
                        st.status, st.reason = ev.status, ev.reason
        return changed

    # -- what the page gets --------------------------------------------------------------

    def is_live(self) -> bool:
        return self.ended is None if self.live is None else self.live

    def state(self) -> dict[str, Any]:
        """Everything the page shows, JSON-ready (money in quote currency, ts in ms)."""
        started = self.started
        if started is None:
            raise DashboardError(f"no session {self.session_id!r} in the journal")
        snap = self.last_snapshot
        eq = snap.equity / MONEY if snap is not None else self.initial_cash / MONEY
        cash0 = self.initial_cash / MONEY
        bench = self.benchmark.last
        dd_now = -(self.drawdown.last or 0.0)
        summary = {
            "equity": _r(eq, 2),
            "pnl": _r(eq - cash0, 2),
            "return_pct": _r((eq / cash0 - 1) * 100 if cash0 else None),
            "benchmark_return_pct": _r((bench / cash0 - 1) * 100 if bench and cash0 else None),
            "drawdown_pct": _r(dd_now),
            "max_drawdown_pct": _r(self.max_dd),
            "sharpe": _r(self.rolling_sharpe.last),
            "fills": self.fills,
            "decisions": len(self.decisions),
            **self.trade_stats,
        }
        if snap is not None:
            summary |= {
                "fees": _r(snap.fees / MONEY, 2),
                "funding": _r(snap.funding / MONEY, 2),
                "realised": _r(snap.realised / MONEY, 2),
                "unrealised": _r(snap.unrealised / MONEY, 2),
            }
        return {
            "version": self.version,
            "session": {
                "id": self.session_id,
                "mode": started.mode,
                "strategy": started.strategy,
                "live": self.is_live(),
                "ended": self.ended is not None,
                "started_ts": started.ts_event // _MS,
                "last_ts": self.last_ts // _MS,
                "outputs": self.outputs,
                "initial_cash": cash0,
            },
            "summary": summary,
            "series": {
                "equity": self.equity.json(),
                "benchmark": self.benchmark.json(),
                "drawdown": self.drawdown.json(),
                "sharpe": self.rolling_sharpe.json(),
                "confidence": self.confidence.json(),
                "accuracy": self.accuracy.json(),
            },
            "positions": self._positions(),
            "exposure": self._exposure(),
            "breaker": self.breaker,
            "model": {
                "model_id": self.model_id,
                "confidence": _r(self.confidence.last),
                "accuracy": _r(self.accuracy.last),
                "scored": len(self.scored),
                "importance": self._importance(),
                "attention": list(self.attention),
            },
            "connectivity": self._connectivity(),
            "system": self._system(),
            "alerts": list(reversed(self.alerts)),
        }

    def _positions(self) -> list[dict[str, Any]]:
        snap = self.last_snapshot
        out: list[dict[str, Any]] = []
        if snap is None:
            return out
        for key, qty, cost, mark in snap.positions:
            if not qty:
                continue
            inst = self._inst(key)
            if inst is None:
                continue
            value = inst.notional(mark, qty) if mark else cost
            out.append(
                {
                    "instrument": key,
                    "qty": inst.size_text(qty),
                    "avg_price": _r(cost / MONEY / (qty / 10**inst.size_decimals), 6),
                    "mark": inst.price_text(mark) if mark else None,
                    "value": _r(value / MONEY, 2),
                    "unrealised": _r((value - cost) / MONEY, 2),
                }
            )
        return out

    def _exposure(self) -> list[dict[str, Any]]:
        snap = self.last_snapshot
        if snap is None:
            return []
        by_asset: dict[str, float] = {}
        for key, qty, cost, mark in snap.positions:
            inst = self._inst(key)
            if inst is None or not qty:
                continue
            value = (inst.notional(mark, qty) if mark else cost) / MONEY
            by_asset[inst.base] = by_asset.get(inst.base, 0.0) + value
        equity = snap.equity / MONEY
        return [
            {
                "asset": a,
                "value": _r(v, 2),
                "pct_of_equity": _r(abs(v) / equity * 100 if equity > 0 else None, 2),
            }
            for a, v in sorted(by_asset.items())
        ]

    def _importance(self) -> list[dict[str, Any]]:
        rows = [d for d in self.decisions if d.action in ("buy", "sell") and d.features]
        if len(rows) < 10:
            return []
        names: dict[str, list[tuple[float, float]]] = {}
        for d in rows:
            direction = 1.0 if d.action == "buy" else -1.0
            for k, v in d.features:
                if not k.startswith(("attn.", "vote_")) and k not in _MODEL_OUTPUTS:
                    names.setdefault(k, []).append((v, direction))
        out: list[dict[str, Any]] = []
        for k, pairs in names.items():
            if len(pairs) < 10:
                continue
            arr = np.asarray(pairs, dtype=float)
            if arr[:, 0].std() == 0 or arr[:, 1].std() == 0:
                continue
            out.append({"feature": k, "score": _r(abs(float(np.corrcoef(arr.T)[0, 1])))})
        out.sort(key=lambda r: (-(r["score"] or 0.0), r["feature"]))
        return out[:12]

    def _connectivity(self) -> list[dict[str, Any]]:
        ref = int(self.clock() * _S) if self.is_live() else self.last_ts
        out = []
        for name, st in sorted(self.streams.items()):
            age = (ref - st.last_ts) / _S if st.last_ts else None
            out.append(
                {
                    "stream": name[3:],
                    "status": st.status,
                    "reason": st.reason,
                    "events": st.count,
                    "last_event_age_s": _r(age, 1),
                }
            )
        return out

    def _system(self) -> dict[str, Any]:
        rate = None
        if len(self.writes) >= 2:
            (t0, n0), (t1, n1) = self.writes[0], self.writes[-1]
            rate = (n1 - n0) / (t1 - t0) if t1 > t0 else None
        lag = None
        if self.is_live() and self.last_ts:
            lag = max(0.0, self.clock() - self.last_ts / _S)
        return {
            "cpu_pct": _r(self._cpu_pct(), 1),
            "rss_mb": _r(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "memory_used_pct": _r(_memory_used_pct(), 1),
            "load_1m": _r(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
            "consumer_lag_s": _r(lag, 2),
            "journal_write_rate": _r(rate, 1),
        }

    def _cpu_pct(self) -> float | None:
        try:
            with open("/proc/stat") as f:
                parts = [int(x) for x in f.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        idle, total = parts[3] + (parts[4] if len(parts) > 4 else 0), sum(parts)
        last = self.cpu.last
        self.cpu.last = (idle, total)
        if last is not None and total > last[1]:
            self.cpu.pct = 100.0 * (1 - (idle - last[0]) / (total - last[1]))
        return self.cpu.pct


def _memory_used_pct() -> float | None:
    try:
        with open("/proc/meminfo") as f:
            info = {line.split(":")[0]: int(line.split()[1]) for line in f if ":" in line}
        return 100.0 * (1 - info["MemAvailable"] / info["MemTotal"])
    except (OSError, KeyError, ValueError, ZeroDivisionError):
        return None


def latest_session(journal: Journal) -> str:
    """The most recently started session in the journal."""
    sessions = [
        s.stream[len("session.") :] for s in journal.streams() if s.stream.startswith("session.")
    ]
    best: tuple[int, str] | None = None
    for sid in sessions:
        rec = next(iter(journal.read(session_stream(sid), from_seq=1, to_seq=1)), None)
        if rec is not None and (best is None or rec.ts_recv >= best[0]):
            best = (rec.ts_recv, sid)
    if best is None:
        raise DashboardError("the journal holds no session (run tickerml replay or live first)")
    return best[1]


# -- the web app ---------------------------------------------------------------------------


def create_app(view: SessionView, poll_s: float = 0.5, heartbeat_s: float = 15.0) -> Any:
    """The Starlette app: ``/``, ``/static/*``, ``/api/state``, ``/api/stream`` (SSE)."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import FileResponse, JSONResponse, StreamingResponse
    from starlette.routing import Mount, Route
    from starlette.staticfiles import StaticFiles

    async def refresh() -> None:
        # in the loop's own thread: journal connections (SQLite) belong to the thread
        # that opened them; a poll folds at most ``limit`` rows, then yields
        view.poll(limit=20_000)

    async def index(request: Request) -> FileResponse:
        return FileResponse(STATIC / "index.html")

    async def state(request: Request) -> JSONResponse:
        await refresh()
        return JSONResponse(view.state())

    async def stream(request: Request) -> StreamingResponse:
        async def events() -> AsyncIterator[str]:
            sent = -1
            idle = 0.0
            while True:
                if await request.is_disconnected():
                    return
                await refresh()
                if view.version != sent:
                    sent = view.version
                    idle = 0.0
                    yield f"event: state\ndata: {json.dumps(view.state())}\n\n"
                elif idle >= heartbeat_s:
                    idle = 0.0
                    yield ": keep-alive\n\n"
                await asyncio.sleep(poll_s)
                idle += poll_s

        return StreamingResponse(
            events(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    return Starlette(
        routes=[
            Route("/", index),
            Route("/api/state", state),
            Route("/api/stream", stream),
            Mount("/static", StaticFiles(directory=STATIC), name="static"),
        ]
    )


def serve(view: SessionView, host: str, port: int, poll_s: float = 0.5) -> None:
    """Serve until interrupted (uvicorn); only loopback hosts unless asked otherwise."""
    import uvicorn

    view.poll()
    uvicorn.run(create_app(view, poll_s), host=host, port=port, log_level="warning")


def cmd_dashboard(args: Any) -> int:
    from journal_tools.cli import _config, _journal, console

    if args.host not in ("127.0.0.1", "localhost", "::1") and not args.allow_remote:
        raise DashboardError(
            f"--host {args.host} is not a loopback address; the dashboard has no "
            "authentication (pass --allow-remote to serve it anyway)"
        )
    config = _config(args)
    journal = _journal(args, config)
    try:
        session_id = args.session or latest_session(journal)
        live = {"auto": None, "live": True, "replay": False}[args.mode]
        view = SessionView(journal, session_id, live=live)
        view.poll()
        console.print(
            f"dashboard for session {session_id} ({view.outputs} outputs so far) on "
            f"http://{args.host}:{args.port}/  (^C stops)"
        )
        serve(view, args.host, args.port, args.poll)
    finally:
        journal.close()
    return 0


def add_dashboard_command(add: Callable[..., Any]) -> None:
    sp = add(
        "dashboard",
        cmd_dashboard,
        "serve the live dashboard of a session (replayed or live) on localhost",
    )
    sp.add_argument("--journal", help="journal DSN")
    sp.add_argument("--session", help="session id (default: the latest session)")
    sp.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    sp.add_argument("--port", type=int, default=8050)
    sp.add_argument("--poll", type=float, default=0.5, help="seconds between journal polls")
    sp.add_argument(
        "--mode",
        choices=["auto", "live", "replay"],
        default="auto",
        help="live: lag and stream ages against the wall clock (auto: live until it ends)",
    )
    sp.add_argument("--allow-remote", action="store_true", help="allow a non-loopback --host")
