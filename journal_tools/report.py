"""A self-contained HTML report of a journaled session: ``tickerml replay --report FILE``.

One file, no external assets (charts are inline SVG drawn here), readable offline and
attachable to a review. From the session stream it shows: the session header (config
hash, seed, code version, inputs, state hash), the equity curve and the drawdown from
the ``PortfolioSnapshot`` rows, a metrics table (total return, annualised Sharpe over
the snapshot interval, max drawdown, share of positive intervals, fills, decisions,
outputs), the P&L attribution at the last snapshot (realised gross, unrealised, fees,
funding, impact, slippage), data-quality findings and risk events by rule, and the
first fills. Every chart carries ``data-last`` (its last value) for tests and tooling.
"""

from __future__ import annotations

import html
from collections import Counter
from typing import Any

from adapters.journal.base import Journal, session_stream
from kernel.events import (
    DataQuality,
    Decision,
    Features,
    Fill,
    PortfolioSnapshot,
    RiskEvent,
    SessionEnded,
    SessionStarted,
    decode,
)
from kernel.metrics import annualisation_periods, max_drawdown, returns_from_equity, sharpe

MONEY = 1e8
MAX_FILLS = 200


class ReportError(ValueError):
    """No such session."""


def svg_line(
    title: str, xs: list[int], ys: list[float], *, width: int = 760, height: int = 220
) -> str:
    """An inline SVG line chart of ``ys`` over ``xs`` (ns), with its min, max and last."""
    esc = html.escape(title)
    if len(ys) < 2:
        return (
            f'<figure class="chart" data-title="{esc}" data-points="{len(ys)}" '
            f'data-last="{ys[-1] if ys else ""}"><figcaption>{esc}: not enough points '
            f"(portfolio snapshots come once the strategy trades)</figcaption></figure>"
        )
    pad = 40
    x0, x1 = xs[0], xs[-1]
    lo, hi = min(ys), max(ys)
    span_x = (x1 - x0) or 1
    span_y = (hi - lo) or 1.0
    pts = " ".join(
        f"{pad + (x - x0) / span_x * (width - 2 * pad):.1f},"
        f"{height - pad - (y - lo) / span_y * (height - 2 * pad):.1f}"
        for x, y in zip(xs, ys, strict=True)
    )
    return (
        f'<figure class="chart" data-title="{esc}" data-points="{len(ys)}" '
        f'data-last="{ys[-1]!r}"><figcaption>{esc}: last {ys[-1]:,.4f} (min {lo:,.4f}, '
        f'max {hi:,.4f})</figcaption><svg xmlns="http://www.w3.org/2000/svg" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" role="img" aria-label="{esc}">'
        f'<rect x="0" y="0" width="{width}" height="{height}" fill="#fafafa"/>'
        f'<text x="4" y="{pad - 8}" font-size="11">{hi:,.2f}</text>'
        f'<text x="4" y="{height - pad + 14}" font-size="11">{lo:,.2f}</text>'
        f'<polyline fill="none" stroke="#1f77b4" stroke-width="1.5" points="{pts}"/></svg>'
        f"</figure>"
    )


def _table(title: str, header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows
    )
    return (
        f'<h2>{html.escape(title)}</h2><table data-title="{html.escape(title)}">'
        f"<tr>{head}</tr>{body}</table>"
    )


def session_report(journal: Journal, session_id: str) -> str:
    """The HTML report of one session (see the module docstring)."""
    stream = session_stream(session_id)
    chain = journal.verify(stream)
    header: SessionStarted | None = None
    ended: SessionEnded | None = None
    snaps: list[PortfolioSnapshot] = []
    fills: list[Fill] = []
    decisions = 0
    features = 0
    quality: Counter[tuple[str, bool]] = Counter()
    risk: Counter[tuple[str, str]] = Counter()
    outputs = 0
    for rec in journal.read(stream):
        ev = decode(rec.payload)
        outputs += 1
        if isinstance(ev, SessionStarted):
            header = ev
        elif isinstance(ev, SessionEnded):
            ended = ev
        elif isinstance(ev, PortfolioSnapshot):
            snaps.append(ev)
        elif isinstance(ev, Fill):
            fills.append(ev)
        elif isinstance(ev, Decision):
            decisions += 1
        elif isinstance(ev, Features):
            features += 1
        elif isinstance(ev, DataQuality):
            quality[(ev.rule, ev.rejected)] += 1
        elif isinstance(ev, RiskEvent):
            risk[(ev.rule, ev.level)] += 1
    if header is None:
        raise ReportError(f"no session {session_id!r} in the journal")
    ts = [s.ts_event for s in snaps]
    equity = [s.equity / MONEY for s in snaps]
    peak = 0.0
    dd: list[float] = []
    for e in equity:
        peak = max(peak, e)
        dd.append((e / peak - 1) * 100 if peak > 0 else 0.0)
    metrics: list[list[Any]] = [
        ["fills", len(fills)],
        ["decisions", decisions],
        ["Features samples", features],
        ["outputs journaled", outputs - 2 if ended else outputs - 1],
        ["portfolio snapshots", len(snaps)],
    ]
    if len(equity) >= 2:
        rets = returns_from_equity(equity)
        interval_ms = max(1, (ts[-1] - ts[0]) // (len(ts) - 1) // 1_000_000)
        s = sharpe(rets, annualisation_periods(interval_ms))
        metrics += [
            ["total return %", f"{(equity[-1] / equity[0] - 1) * 100:.4f}"],
            ["Sharpe (annualised)", "n/a" if s is None else f"{s:.3f}"],
            ["max drawdown %", f"{max_drawdown(equity) * 100:.4f}"],
            ["positive intervals %", f"{sum(r > 0 for r in rets) / len(rets) * 100:.1f}"],
        ]
    last = snaps[-1] if snaps else None
    attribution = (
        [
            ["realised (gross)", f"{last.realised / MONEY:,.8f}"],
            ["unrealised", f"{last.unrealised / MONEY:,.8f}"],
            ["fees", f"{last.fees / MONEY:,.8f}"],
            ["funding", f"{last.funding / MONEY:,.8f}"],
            ["impact", f"{last.impact / MONEY:,.8f}"],
            ["slippage", f"{last.slippage / MONEY:,.8f}"],
            ["equity", f"{last.equity / MONEY:,.8f}"],
        ]
        if last is not None
        else []
    )
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>TickerML session {html.escape(header.session_id)}</title>",
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:2px 6px;font-size:13px}"
        "figure{margin:1em 0}</style></head><body>",
        f"<h1>Session {html.escape(header.session_id)}</h1>",
        _table(
            "session",
            ["field", "value"],
            [
                ["mode", header.mode],
                ["strategy", header.strategy],
                ["seed", header.seed],
                ["config hash", header.config_hash],
                ["code version", header.code_version],
                ["inputs", f"{header.input_from} .. {header.input_to} ns"],
                ["state hash", ended.state_hash if ended else "not ended"],
                ["hash chain", "ok" if chain.ok else f"BROKEN at seq {chain.first_bad_seq}"],
            ],
        ),
        svg_line("equity (quote)", ts, equity),
        svg_line("drawdown %", ts, dd),
        _table("metrics", ["metric", "value"], metrics),
        _table("P&L attribution (last snapshot, quote units)", ["part", "value"], attribution),
        _table(
            "data quality",
            ["rule", "rejected", "count"],
            [[r, rej, n] for (r, rej), n in sorted(quality.items())],
        ),
        _table(
            "risk events",
            ["rule", "level", "count"],
            [[r, lv, n] for (r, lv), n in sorted(risk.items())],
        ),
        _table(
            f"fills (first {min(len(fills), MAX_FILLS)} of {len(fills)})",
            ["time ns", "order", "instrument", "side", "price", "size", "fee", "liquidity"],
            [
                [
                    f.ts_event,
                    f.order_id,
                    f"{f.exchange}:{f.symbol}",
                    f.side,
                    f.price,
                    f.size,
                    f"{f.fee / MONEY:.8f}",
                    f.liquidity,
                ]
                for f in fills[:MAX_FILLS]
            ],
        ),
        "</body></html>",
    ]
    return "".join(parts)
