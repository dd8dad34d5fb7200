"""The go-live checklist: ``tickerml readiness``, computed from the journal and the project.

Items (each pass or fail with the value it saw; thresholds are options with these
defaults):

* ``paper_days``: the live (paper) sessions cover at least 30 days: the sum over
  ``mode == "live"`` sessions of the span from their first to their last row;
* ``sharpe``: annualised Sharpe of the live sessions' ``PortfolioSnapshot`` equity
  (returns per snapshot interval, chained in time order) above 1.5;
* ``max_drawdown``: their largest peak-to-trough equity drop below 15 %;
* ``win_rate`` / ``profit_factor``: over the P&L of the snapshot intervals (equity
  changes): share of positive intervals at least 50 %, gains over losses at least 1.3;
* ``exchanges``: every configured (enabled) exchange's latest ``Connectivity`` status in
  ``sys.CONNECTIVITY`` is ``up`` for all its symbols;
* ``emergency_shutdown``: the kill switch was exercised: a ``Halt`` journaled in
  ``md.CONTROL`` (``tickerml halt``) and a later ``Resume``;
* ``coverage``: test coverage above 80 %, read from ``coverage.json`` (``coverage json``)
  in the project root; absent -> fail, saying how to produce it.

Exit status 0 when every item passes, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Literal

from adapters.journal.base import CONTROL_STREAM, Journal
from kernel.config import AppConfig
from kernel.events import (
    Connectivity,
    Halt,
    PortfolioSnapshot,
    Resume,
    SessionStarted,
    decode,
)
from kernel.metrics import annualisation_periods, max_drawdown, returns_from_equity, sharpe

CONNECTIVITY_STREAM = "sys.CONNECTIVITY"
DAY_NS = 86_400 * 1_000_000_000


@dataclass(frozen=True)
class Thresholds:
    paper_days: float = 30.0
    sharpe: float = 1.5
    max_drawdown_pct: float = 15.0
    win_rate: float = 0.5
    profit_factor: float = 1.3
    coverage_pct: float = 80.0


@dataclass(frozen=True)
class Item:
    name: str
    status: Literal["pass", "fail"]
    value: str
    detail: str


def _item(name: str, ok: bool, value: str, detail: str) -> Item:
    return Item(name, "pass" if ok else "fail", value, detail)


def readiness(
    journal: Journal, config: AppConfig, root: Path, th: Thresholds | None = None
) -> list[Item]:
    """Every checklist item (see the module docstring)."""
    th = th or Thresholds()
    streams = {s.stream: s for s in journal.streams()}
    live: list[tuple[SessionStarted, list[PortfolioSnapshot], int, int]] = []
    for name, info in sorted(streams.items()):
        if not name.startswith("session."):
            continue
        rows = journal.read(name)
        first = next(iter(rows), None)
        if first is None:
            continue
        started = decode(first.payload)
        if not isinstance(started, SessionStarted) or started.mode != "live":
            continue
        snaps = [
            ev
            for r in journal.read(name)
            if r.kind == "PortfolioSnapshot"
            and isinstance(ev := decode(r.payload), PortfolioSnapshot)
        ]
        live.append((started, snaps, first.ts_recv, info.last_ts))
    items: list[Item] = []
    span = sum(max(0, last - start) for _, _, start, last in live)
    items.append(
        _item(
            "paper_days",
            span >= th.paper_days * DAY_NS,
            f"{span / DAY_NS:.2f} days",
            f"{len(live)} live session(s); need >= {th.paper_days:g} days",
        )
    )
    snaps = sorted((s for _, ss, _, _ in live for s in ss), key=lambda s: s.ts_event)
    equity = [s.equity / 1e8 for s in snaps]
    if len(equity) >= 3:
        rets = returns_from_equity(equity)
        interval_ms = max(1, (snaps[-1].ts_event - snaps[0].ts_event) // (len(snaps) - 1) // 10**6)
        sr = sharpe(rets, annualisation_periods(interval_ms))
        dd = max_drawdown(equity) * 100
        pnl = [b - a for a, b in pairwise(equity)]
        gains = sum(p for p in pnl if p > 0)
        losses = -sum(p for p in pnl if p < 0)
        wins = sum(p > 0 for p in pnl) / len(pnl)
        pf = gains / losses if losses > 0 else float("inf") if gains > 0 else 0.0
        items += [
            _item(
                "sharpe",
                sr is not None and sr > th.sharpe,
                "n/a" if sr is None else f"{sr:.3f}",
                f"need > {th.sharpe:g} ({len(rets)} intervals of {interval_ms} ms)",
            ),
            _item(
                "max_drawdown",
                dd < th.max_drawdown_pct,
                f"{dd:.2f} %",
                f"need < {th.max_drawdown_pct:g} %",
            ),
            _item(
                "win_rate",
                wins >= th.win_rate,
                f"{wins * 100:.1f} %",
                f"positive snapshot intervals; need >= {th.win_rate * 100:g} %",
            ),
            _item(
                "profit_factor",
                pf >= th.profit_factor,
                f"{pf:.3f}",
                f"gains / losses over snapshot intervals; need >= {th.profit_factor:g}",
            ),
        ]
    else:
        why = f"{len(equity)} portfolio snapshot(s) in live sessions; need at least 3"
        items += [
            _item(n, False, "n/a", why)
            for n in ("sharpe", "max_drawdown", "win_rate", "profit_factor")
        ]
    items.append(_exchanges(journal, config, CONNECTIVITY_STREAM in streams))
    items.append(_shutdown(journal, CONTROL_STREAM in streams))
    items.append(_coverage(root, th.coverage_pct))
    return items


def _exchanges(journal: Journal, config: AppConfig, present: bool) -> Item:
    wanted = sorted(n for n, ex in config.exchanges.exchanges.items() if ex.enabled)
    latest: dict[tuple[str, str], tuple[int, int, str]] = {}
    if present:
        for rec in journal.read(CONNECTIVITY_STREAM):
            ev = decode(rec.payload)
            if isinstance(ev, Connectivity):
                key = (ev.exchange, ev.symbol)
                if key not in latest or (ev.ts_event, rec.seq) > latest[key][:2]:
                    latest[key] = (ev.ts_event, rec.seq, ev.status)
    down = sorted(f"{e}:{s} {st}" for (e, s), (_, _, st) in latest.items() if st != "up")
    seen = {e for e, _ in latest}
    missing = [e for e in wanted if e not in seen]
    ok = bool(wanted) and not down and not missing
    parts = []
    if missing:
        parts.append("never connected: " + ", ".join(missing))
    if down:
        parts.append("not up: " + ", ".join(down))
    return _item(
        "exchanges",
        ok,
        f"{len(wanted) - len(missing)}/{len(wanted)}",
        "; ".join(parts) or f"every configured exchange up ({', '.join(wanted)})",
    )


def _shutdown(journal: Journal, present: bool) -> Item:
    halts = resumes = 0
    if present:
        for rec in journal.read(CONTROL_STREAM):
            ev = decode(rec.payload)
            halts += isinstance(ev, Halt)
            resumes += isinstance(ev, Resume) and halts > 0
    return _item(
        "emergency_shutdown",
        halts > 0 and resumes > 0,
        f"{halts} halt(s), {resumes} resume(s)",
        "a journaled Halt and a later Resume in md.CONTROL (`tickerml halt` / `resume`)",
    )


def _coverage(root: Path, need: float) -> Item:
    path = root / "coverage.json"
    if not path.exists():
        return _item(
            "coverage",
            False,
            "unknown",
            f"no {path.name}: run `coverage run -m pytest && coverage json`; need > {need:g} %",
        )
    try:
        pct = float(json.loads(path.read_text())["totals"]["percent_covered"])
    except (KeyError, ValueError, TypeError) as exc:
        return _item("coverage", False, "unreadable", f"{path.name}: {exc}")
    return _item("coverage", pct > need, f"{pct:.1f} %", f"need > {need:g} %")


def cmd_readiness(args: argparse.Namespace) -> int:
    from journal_tools.cli import _config, _journal, out

    config = _config(args)
    th = Thresholds(paper_days=args.paper_days, sharpe=args.min_sharpe)
    with _journal(args, config) as journal:
        items = readiness(journal, config, Path(args.root), th)
    if args.format == "json":
        out.print_json(data=[item.__dict__ for item in items])
    else:
        from rich.table import Table

        table = Table(title="go-live readiness")
        for col in ("item", "status", "value", "detail"):
            table.add_column(col, overflow="fold")
        for item in items:
            colour = "green" if item.status == "pass" else "red"
            table.add_row(item.name, f"[{colour}]{item.status}[/]", item.value, item.detail)
        out.print(table)
    return 0 if all(i.status == "pass" for i in items) else 1


Add = Callable[[str, Callable[[argparse.Namespace], int], str], argparse.ArgumentParser]


def add_readiness_command(add: Add) -> None:
    sp = add(
        "readiness", cmd_readiness, "the go-live checklist from the journal (exit 1 if not ready)"
    )
    sp.add_argument("--journal", help="journal DSN")
    sp.add_argument("--format", choices=["table", "json"], default="table")
    sp.add_argument("--root", default=".", help="project root (for coverage.json)")
    sp.add_argument("--paper-days", type=float, default=30.0, help="days of paper trading needed")
    sp.add_argument("--min-sharpe", type=float, default=1.5, help="annualised Sharpe needed")
