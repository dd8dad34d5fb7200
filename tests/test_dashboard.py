"""The dashboard's model of a session (journal_tools/dashboard.py) and its HTTP routes:
values against the journaled events, incremental polling, prediction accuracy, feature
association and attention on hand-made decisions, the alert feed, clear errors. The page
itself is tested in a real browser in tests/test_dashboard_browser.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from dashboard_data import (
    BTC,
    T0,
    config,
    copy_as_live,
    expected_last,
    make_journal,
    session_events,
)

from adapters.alerts import ALERTS_STREAM
from adapters.journal.base import session_stream
from adapters.journal.memory import MemoryJournal
from journal_tools.cli import main
from journal_tools.dashboard import DashboardError, SessionView, create_app, latest_session
from journal_tools.projections import load_session, trade_history
from kernel.config import canonical_json
from kernel.events import (
    Alert,
    Connectivity,
    Decision,
    Event,
    Features,
    PortfolioSnapshot,
    RiskEvent,
    SessionStarted,
)

S = 1_000_000_000
MONEY = 10**8


@pytest.fixture(scope="module")
def journal(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    j = make_journal(tmp_path_factory.mktemp("dash") / "j.db")
    yield j
    j.close()


def test_view_of_a_replayed_session_matches_the_journal(journal) -> None:  # type: ignore[no-untyped-def]
    view = SessionView(journal, "dash")
    assert view.poll()
    st = view.state()
    events = session_events(journal, "dash")
    exp = expected_last(events)
    snaps = [e for e in events if isinstance(e, PortfolioSnapshot)]
    assert st["session"] | {"last_ts": 0} == {
        "id": "dash",
        "mode": "replay",
        "strategy": "taker",
        "live": False,
        "ended": True,
        "started_ts": 0,
        "last_ts": 0,
        "outputs": len(events),
        "initial_cash": 10_000.0,
    }
    assert st["summary"]["equity"] == round(exp["equity"], 2)
    assert st["summary"]["pnl"] == round(exp["equity"] - 10_000, 2)
    assert st["series"]["equity"][-1] == [snaps[-1].ts_event // 1_000_000, exp["equity"]]
    assert len(st["series"]["equity"]) == exp["snapshots"] == 29
    assert st["series"]["drawdown"][-1][1] == pytest.approx(exp["drawdown"], abs=1e-12)
    # the worst drawdown of the path, from the snapshots
    peak, worst = 10_000 * MONEY, 0.0
    for s in snaps:
        peak = max(peak, s.equity)
        worst = max(worst, (peak - s.equity) * 100 / peak)
    assert st["summary"]["max_drawdown_pct"] == round(worst, 4)
    # round trips: wins / closed and gross wins / gross losses
    rows = trade_history(load_session(journal, "dash"))
    pnl = [r.net_pnl for r in rows if r.exit_ts]
    wins, losses = [p for p in pnl if p > 0], [p for p in pnl if p < 0]
    assert st["summary"]["round_trips"] == len(pnl) == 15
    assert st["summary"]["win_rate"] == round(len(wins) / len(pnl), 4)
    assert st["summary"]["profit_factor"] == round(sum(wins) / -sum(losses), 4)
    # buy and hold of BTC from the first mark to the last
    marks = [m for s in snaps for _k, _q, _c, m in s.positions if m]
    assert st["summary"]["benchmark_return_pct"] == round((marks[-1] / marks[0] - 1) * 100, 4)
    # the position of the last snapshot, marked to its mid
    ((key, qty, cost, mark),) = snaps[-1].positions
    value = BTC.notional(mark, qty)
    assert st["positions"] == [
        {
            "instrument": key,
            "qty": BTC.size_text(qty),
            "avg_price": round(cost / MONEY / (qty / 1000), 6),
            "mark": BTC.price_text(mark),
            "value": round(value / MONEY, 2),
            "unrealised": round((value - cost) / MONEY, 2),
        }
    ]
    assert st["exposure"] == [
        {
            "asset": "BTC",
            "value": round(value / MONEY, 2),
            "pct_of_equity": round(value / snaps[-1].equity * 100, 2),
        }
    ]
    assert st["connectivity"] == [
        {
            "stream": "BINANCE.BTC-USDT",
            "status": "up",
            "reason": "",
            "events": 3600,
            "last_event_age_s": 0.0,
        }
    ]
    assert st["system"]["consumer_lag_s"] is None  # a replay has no lag
    assert not view.poll()  # nothing new


def test_polling_follows_a_live_session_commit_by_commit(journal) -> None:  # type: ignore[no-untyped-def]
    written, rest = copy_as_live(journal, "dash", "live-a", 200)
    view = SessionView(journal, "live-a", clock=lambda: T0 / S + 3600)
    view.poll()
    snaps = [e for e in written if isinstance(e, PortfolioSnapshot)]
    assert view.state()["summary"]["equity"] == round(snaps[-1].equity / MONEY, 2)
    assert view.state()["session"]["live"] is True
    version = view.version
    journal.append(session_stream("live-a"), rest)
    assert view.poll() and view.version == version + 1
    last = [e for e in rest if isinstance(e, PortfolioSnapshot)][-1]
    assert view.state()["summary"]["equity"] == round(last.equity / MONEY, 2)
    # lag against the (injected) wall clock: one hour after T0, the kernel at ~T0+30 min
    lag = view.state()["system"]["consumer_lag_s"]
    assert lag == round(3600 - view.last_ts / S + T0 / S, 2)


def hand_session(journal: MemoryJournal, sid: str, body: list[Event]) -> None:
    started = SessionStarted(
        0,
        0,
        sid,
        "replay",
        "h",
        1,
        "c",
        "momentum",
        0,
        0,
        config_json=canonical_json(config()).decode(),
    )
    journal.append(session_stream(sid), [started, *body])


def feat(t_s: int, mid: float) -> Features:
    return Features(T0 + t_s * S, T0 + t_s * S, "BINANCE", "BTC-USDT", ("mid",), (mid,))


def dec(t_s: int, action: str, **features: float) -> Decision:
    t = T0 + t_s * S
    return Decision(
        t, t, f"d{t_s}", "momentum", "BINANCE", "BTC-USDT", action, "r",
        tuple(features.items()), model_id="dt@v3", confidence=0.25 + t_s / 1000,
    )  # fmt: skip


def test_prediction_accuracy_scores_each_call_once_after_the_horizon() -> None:
    """buy at 100 -> 101 a minute later (right); sell at 101 -> 102 (wrong); buy at 102
    -> 102 (unchanged: not scored); a mid seen before the horizon scores nothing."""
    journal = MemoryJournal()
    body: list[Event] = [
        dec(0, "buy", mid=100.0),
        feat(30, 100.5),  # too early
        feat(60, 101.0),
        dec(60, "sell", mid=101.0),
        feat(120, 102.0),
        dec(120, "buy"),  # no mid in its features: the last mid seen (102)
        dec(121, "hold"),
        feat(180, 102.0),
    ]
    hand_session(journal, "acc", body)
    view = SessionView(journal, "acc")
    view.poll()
    model = view.state()["model"]
    assert (model["scored"], model["accuracy"]) == (2, 0.5)
    assert view.state()["series"]["accuracy"] == [
        [(T0 + 60 * S) // 1_000_000, 1.0],
        [(T0 + 120 * S) // 1_000_000, 0.5],
    ]
    assert model["model_id"] == "dt@v3"
    assert model["confidence"] == 0.371  # the last decision's (0.25 + 121 / 1000)


def test_feature_association_and_attention_from_decisions() -> None:
    journal = MemoryJournal()
    body: list[Event] = []
    for i in range(12):
        action = "buy" if i % 2 == 0 else "sell"
        sign = 1.0 if action == "buy" else -1.0
        # imb follows the direction exactly; flat is constant (no correlation defined);
        # noise is +1 on i % 4 in (0, 1) and -1 otherwise: uncorrelated with direction
        noise = 1.0 if i % 4 in (0, 1) else -1.0
        body.append(dec(i, action, imb=0.5 * sign, flat=3.0, noise=noise))
    body.append(dec(20, "buy", **{"attn.0": 0.1, "attn.1": 0.2, "attn.2": 0.7, "imb": 1.0}))
    hand_session(journal, "imp", body)
    view = SessionView(journal, "imp")
    view.poll()
    model = view.state()["model"]
    # 13 buy/sell decisions: imb is +-0.5 on the 12, 1.0 on the last (a buy)
    assert model["importance"][0]["feature"] == "imb"
    # r = (7 - 1/13) / sqrt((4 - 1/13)(13 - 1/13)) = 90 / sqrt(8568)
    assert model["importance"][0]["score"] == round(90 / 8568**0.5, 4) == 0.9723
    assert [f["feature"] for f in model["importance"]] == ["imb", "noise"]
    assert model["attention"] == [
        {"decision_id": "d20", "ts": (T0 + 20 * S) // 1_000_000, "action": "buy",
         "weights": [0.1, 0.2, 0.7]}
    ]  # fmt: skip


def test_alert_feed_breaker_and_system_alerts() -> None:
    journal = MemoryJournal()
    t = T0 + 5 * S
    hand_session(
        journal,
        "al",
        [
            Alert(t, t, "warning", "drawdown", "drawdown 5.00% >= threshold 5%"),
            RiskEvent(t, t, "drawdown", "half_size", "drawdown 10.1% >= 10%"),
        ],
    )
    journal.append(ALERTS_STREAM, [Alert(t + S, t + S, "critical", "journal_error", "disk")])
    journal.append(
        "sys.CONNECTIVITY", [Connectivity(t, t, "KRAKEN", "BTC-USD", "down", "ws closed")]
    )
    view = SessionView(journal, "al")
    view.poll()
    st = view.state()
    assert st["connectivity"] == [
        {
            "stream": "KRAKEN.BTC-USD",
            "status": "down",
            "reason": "ws closed",
            "events": 0,
            "last_event_age_s": None,
        }
    ]
    assert st["alerts"] == [
        {"ts": (t + S) // 1_000_000, "severity": "critical", "rule": "journal_error",
         "message": "disk", "source": "system"},
        {"ts": t // 1_000_000, "severity": "warning", "rule": "drawdown",
         "message": "drawdown 5.00% >= threshold 5%", "source": "kernel"},
    ]  # fmt: skip
    assert st["breaker"] == {
        "level": "half_size",
        "detail": "drawdown 10.1% >= 10%",
        "ts": t // 1_000_000,
    }


def test_errors_are_clear(journal, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(DashboardError, match="no session 'nope'"):
        SessionView(journal, "nope").poll()
    with pytest.raises(DashboardError, match="holds no session"):
        latest_session(MemoryJournal())
    two = MemoryJournal()
    hand_session(two, "old", [])
    started = SessionStarted(T0, T0, "new", "replay", "h", 1, "c", "none", 0, 0)
    two.append(session_stream("new"), [started])
    assert latest_session(two) == "new"
    db = tmp_path / "x.db"
    assert main(["dashboard", "--journal", f"sqlite:///{db}", "--host", "0.0.0.0"]) == 2


@pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")
def test_routes_serve_the_page_the_state_and_the_assets(journal) -> None:  # type: ignore[no-untyped-def]
    from starlette.testclient import TestClient

    mem = MemoryJournal()  # the test client runs the app in another thread
    mem.append(session_stream("dash"), session_events(journal, "dash"))
    mem.append("md.BINANCE.BTC-USDT", [])
    view = SessionView(mem, "dash")
    with TestClient(create_app(view)) as client:
        page = client.get("/")
        assert page.status_code == 200 and 'id="chart-equity"' in page.text
        state = client.get("/api/state").json()
        assert state["session"]["id"] == "dash"
        assert state["summary"]["equity"] == view.state()["summary"]["equity"]
        js = client.get("/static/app.js")
        assert js.status_code == 200 and "EventSource" in js.text
        assert client.get("/static/missing.js").status_code == 404
