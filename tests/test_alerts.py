"""Alerts (kernel/alerts.py, adapters/alerts.py): each rule on a hand-made case with the
values worked out by hand, deduplication / cooldown / rate limits, one alert (not a
storm) on a scripted drawdown through the engine, snapshot/restore, journaling and
verification in a replay, the webhook sink against a local HTTP server (with failures
and retries) and the runner's system alerts on an injected clock."""

from __future__ import annotations

import itertools
import json
import math
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from structlog.testing import capture_logs

from adapters.alerts import (
    AlertDispatcher,
    LogSink,
    SystemAlerts,
    WebhookSink,
    build_dispatcher,
)
from adapters.journal.base import session_stream
from adapters.journal.memory import MemoryJournal
from journal_tools.session import run_session, verify_session
from kernel.alerts import AlertEngine, AlertGate
from kernel.config import (
    AlertsConfig,
    AppConfig,
    EngineConfig,
    InstrumentsConfig,
    LatencyProfile,
    MonitoringConfig,
    StrategyConfig,
)
from kernel.engine import Engine
from kernel.events import (
    Alert,
    BookSnapshot,
    Connectivity,
    Decision,
    Event,
    Features,
    FillToxic,
    Halt,
    PortfolioSnapshot,
    Resume,
    RiskEvent,
    decode,
)
from kernel.fixedpoint import MONEY_DECIMALS
from kernel.instruments import Instrument
from strategies.scripted import Action, ScriptedStrategy

S = 1_000_000_000
T0 = 1_700_000_000 * S
USD = 10**MONEY_DECIMALS
BN = "BINANCE"
SYM = "BTC-USDT"
BTC = Instrument(
    exchange=BN,
    symbol=SYM,
    kind="spot",
    base="BTC",
    quote="USDT",
    price_decimals=1,
    size_decimals=3,
)
ON = AlertsConfig(enabled=True)


def alerts_engine(cfg: AlertsConfig = ON, breaker_pct: float | None = None) -> AlertEngine:
    return AlertEngine(cfg, 10_000 * USD, breaker_pct, spread_z=4.0)


def equity(t_s: float, usd: float) -> PortfolioSnapshot:
    t = T0 + int(t_s * S)
    e = round(usd * USD)
    return PortfolioSnapshot(t, t, e, e, 0, 0, 0, 0, 0, 0)


def scan(eng: AlertEngine, ev: Event) -> list[tuple[str, str, str]]:
    return [(a.severity, a.rule, a.message) for a in eng.scan([ev], ev.ts_event)]


# -- the gate ---------------------------------------------------------------------------


def test_gate_deduplicates_until_cleared_then_honours_the_cooldown() -> None:
    g = AlertGate(cooldown_s=300, max_per_minute=10)
    assert g.fire("k", 0) == (True, 0)
    assert g.fire("k", 1 * S) == (False, 0)  # active: a duplicate, not even counted
    assert g.suppressed_total == 0
    g.clear("k")
    assert g.fire("k", 100 * S) == (False, 0)  # within 300 s of the last: suppressed
    assert g.suppressed_total == 1
    g.clear("k")
    assert g.fire("k", 299 * S) == (False, 0)
    g.clear("k")
    # 300 s after the last alert: fires, telling how many were held back
    assert g.fire("k", 300 * S) == (True, 2)
    assert (g.fired, g.suppressed_total) == (2, 2)


def test_gate_limits_all_keys_per_rolling_minute() -> None:
    g = AlertGate(cooldown_s=0, max_per_minute=2)
    assert g.fire("a", 0)[0] and g.fire("b", 10 * S)[0]
    assert g.fire("c", 20 * S) == (False, 0)  # third within the minute
    g.clear("c")
    assert g.fire("c", 59 * S) == (False, 0)
    g.clear("c")
    # at 60 s the alert of t=0 has left the window
    assert g.fire("c", 60 * S) == (True, 2)


# -- rules, one hand-made case each ------------------------------------------------------


def test_drawdown_fires_at_the_threshold_once_rearms_and_counts_suppressed() -> None:
    eng = alerts_engine()
    assert scan(eng, equity(0, 10_000)) == []
    assert scan(eng, equity(60, 10_200)) == []  # new peak
    assert scan(eng, equity(120, 9_700)) == []  # 500 / 10200 = 4.90 %
    # 510 / 10200 = 5.00 %: at the threshold
    assert scan(eng, equity(180, 9_690)) == [
        (
            "warning",
            "drawdown",
            "drawdown 5.00% >= threshold 5% (equity 9,690.00, peak 10,200.00)",
        )
    ]
    assert scan(eng, equity(240, 9_500)) == []  # still in drawdown: the same alert
    assert scan(eng, equity(300, 9_750)) == []  # 4.41 %: not re-armed (needs < 4 %)
    assert scan(eng, equity(360, 9_600)) == []
    assert scan(eng, equity(420, 9_800)) == []  # 3.92 %: re-armed
    assert scan(eng, equity(450, 9_600)) == []  # 270 s after the alert: suppressed
    assert scan(eng, equity(460, 9_800)) == []
    assert scan(eng, equity(500, 9_000)) == [
        (
            "warning",
            "drawdown",
            "drawdown 11.76% >= threshold 5% (equity 9,000.00, peak 10,200.00) "
            "(1 repeat suppressed)",
        )
    ]


def test_risk_limit_approached_at_the_fraction_of_the_first_breaker() -> None:
    eng = alerts_engine(AlertsConfig(enabled=True, drawdown_pct=20), breaker_pct=10.0)
    assert scan(eng, equity(0, 9_201)) == []  # 7.99 %
    assert scan(eng, equity(1, 9_200)) == [
        (
            "warning",
            "risk_limit_approached",
            "drawdown 8.00% >= 0.8 x first breaker 10% = 8% (equity 9,200.00, peak 10,000.00)",
        )
    ]
    assert scan(eng, equity(2, 9_000)) == []


def features(t_s: float, **values: float) -> Features:
    t = T0 + int(t_s * S)
    return Features(t, t, BN, SYM, tuple(values), tuple(values.values()))


def test_spread_zscore_fires_beyond_the_threshold_and_rearms_under_half() -> None:
    eng = alerts_engine()
    assert scan(eng, features(0, spread_bp=1.0, spread_bp_ewma=1.0, spread_bp_z=1.0)) == []
    fired = scan(eng, features(1, spread_bp=9.5, spread_bp_ewma=1.2, spread_bp_z=4.5))
    assert fired == [
        (
            "warning",
            "spread_zscore",
            "BINANCE:BTC-USDT spread z-score 4.50 beyond +/-4 (spread 9.50 bp, average 1.20 bp)",
        )
    ]
    assert scan(eng, features(2, spread_bp_z=3.0)) == []  # over half: still the same
    assert scan(eng, features(3, spread_bp_z=-6.0)) == []
    assert scan(eng, features(4, spread_bp_z=1.5)) == []  # under 2: re-armed
    assert scan(eng, features(5, spread_bp_z=5.0)) == []  # cooldown (300 s)
    assert scan(eng, features(6, spread_bp_z=0.0)) == []
    later = scan(eng, features(301, spread_bp=0.2, spread_bp_ewma=1.0, spread_bp_z=-4.0))
    assert later == [
        (
            "warning",
            "spread_zscore",
            "BINANCE:BTC-USDT spread z-score -4.00 beyond +/-4 (spread 0.20 bp, "
            "average 1.00 bp) (1 repeat suppressed)",
        )
    ]


def test_volatility_zscore_against_hand_computed_ew_statistics() -> None:
    """half-life 1 sample: alpha = 0.5. |log moves| 0.001, 0.003 (warm-up, 2 samples):
    mean 0.0005 -> 0.00175, var 2.5e-7 -> 0.5 (2.5e-7 + 0.5 x 0.0025^2) = 1.6875e-6.
    Move 0.001: z = -0.00075 / sqrt(1.6875e-6) = -0.577 (no alert); mean 0.001375, var
    0.5 (1.6875e-6 + 0.5 x 0.00075^2) = 9.84375e-7. Move 0.02: z = 0.018625 /
    sqrt(9.84375e-7) = 18.77."""
    cfg = AlertsConfig(enabled=True, volatility_half_life=1, volatility_warmup=2)
    eng = alerts_engine(cfg)
    mid = 100.0
    out = scan(eng, features(0, mid=mid))
    for i, move in enumerate([0.001, 0.003, -0.001], 1):
        mid *= math.exp(move)
        out += scan(eng, features(i, mid=mid))
    assert out == []
    assert eng.vol[f"{BN}:{SYM}"].mean == pytest.approx(0.001375, abs=1e-12)
    assert eng.vol[f"{BN}:{SYM}"].var == pytest.approx(9.84375e-7, rel=1e-9)
    mid *= math.exp(0.02)
    assert scan(eng, features(4, mid=mid)) == [
        (
            "warning",
            "volatility_zscore",
            "BINANCE:BTC-USDT mid move 200.00 bp is 18.77 sd above its average 13.75 bp "
            "(threshold 6)",
        )
    ]


def decision(t_s: float, confidence: float, strategy: str = "momentum") -> Decision:
    t = T0 + int(t_s * S)
    return Decision(t, t, f"d{t_s}", strategy, BN, SYM, "buy", "r", confidence=confidence)


def test_model_confidence_low_on_the_ew_mean_of_strategy_decisions() -> None:
    """span 3: alpha 0.5. 0.5 -> 0.35 -> 0.225 (< 0.3 after 3 decisions: alert) ->
    0.3125 (not re-armed: needs >= 0.35) -> 0.40625 (re-armed). Kernel risk decisions
    are not the model's and do not count."""
    eng = alerts_engine(AlertsConfig(enabled=True, confidence_span=3, cooldown_s=0))
    assert scan(eng, decision(0, 0.5)) == []
    assert scan(eng, decision(1, 0.0, strategy="risk")) == []
    assert scan(eng, decision(2, 0.2)) == []
    assert scan(eng, decision(3, 0.1)) == [
        (
            "warning",
            "model_confidence_low",
            "momentum: mean confidence 0.225 over the last ~3 decisions < 0.3",
        )
    ]
    assert scan(eng, decision(4, 0.4)) == []
    assert eng.conf_mean == pytest.approx(0.3125)
    assert "model_confidence_low" in eng.gate.active
    assert scan(eng, decision(5, 0.5)) == []
    assert "model_confidence_low" not in eng.gate.active


def toxic(t_s: float) -> FillToxic:
    t = T0 + int(t_s * S)
    return FillToxic(t, t, f"f{t_s}", "o1", BN, SYM, "adverse_move", adverse_bp=12.0)


def test_toxic_fills_count_in_the_window_and_rearm_as_they_expire() -> None:
    eng = alerts_engine()
    assert scan(eng, toxic(0)) == [] and scan(eng, toxic(10)) == []
    assert scan(eng, toxic(20)) == [
        (
            "warning",
            "toxic_fills",
            "3 toxic fills within 60 s (threshold 3); last BINANCE:BTC-USDT adverse_move",
        )
    ]
    assert scan(eng, toxic(30)) == []  # 4 in the window: the same episode
    eng.scan([], T0 + 75 * S)  # t=0 and t=10 expire: 2 left, not under half of 3
    assert "toxic_fills" in eng.gate.active
    eng.scan([], T0 + 85 * S)  # t=20 expires: 1 left -> re-armed
    assert "toxic_fills" not in eng.gate.active
    assert scan(eng, toxic(400)) == [] and scan(eng, toxic(401)) == []
    assert [a[1] for a in scan(eng, toxic(402))] == ["toxic_fills"]


def test_circuit_breaker_levels_halt_and_disconnect() -> None:
    eng = alerts_engine(AlertsConfig(enabled=True, cooldown_s=0))
    t = T0

    def risk(level: str) -> RiskEvent:
        return RiskEvent(t, t, "drawdown", level, f"drawdown at {level}")

    assert scan(eng, risk("half_size")) == [
        ("warning", "circuit_breaker", "drawdown breaker -> half_size: drawdown at half_size")
    ]
    assert scan(eng, risk("half_size")) == []
    assert scan(eng, RiskEvent(t, t, "max_position", "refused", "x")) == []  # not a breaker
    assert [a[0] for a in scan(eng, risk("halted"))] == ["critical"]
    assert [a[0] for a in scan(eng, risk("normal"))] == ["info"]
    assert [a[0] for a in scan(eng, risk("half_size"))] == ["warning"]  # level changed again

    assert scan(eng, Halt(t, t, "operator pressed stop")) == [
        ("critical", "halt", "kill switch: operator pressed stop")
    ]
    assert scan(eng, Halt(t, t, "again")) == []
    assert scan(eng, Resume(t, t, "ok")) == []
    assert [a[1] for a in scan(eng, Halt(t, t, "third"))] == ["halt"]

    down = Connectivity(t, t, BN, SYM, "down", "socket closed")
    assert scan(eng, down) == [
        ("warning", "disconnect", "BINANCE:BTC-USDT disconnected: socket closed")
    ]
    assert scan(eng, down) == []
    assert scan(eng, Connectivity(t, t, BN, SYM, "up")) == []
    assert [a[1] for a in scan(eng, down)] == ["disconnect"]


def test_alerts_config_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="drawdown_pct"):
        AlertsConfig(drawdown_pct=0)
    with pytest.raises(ValueError, match="webhook_url"):
        AlertsConfig(webhook_url="ftp://x")
    with pytest.raises(ValueError, match="max_per_minute"):
        AlertsConfig(max_per_minute=0)


# -- through the engine: a scripted drawdown --------------------------------------------

ZERO = {BN: LatencyProfile(model="constant", entry_mean_ms=0, response_mean_ms=0)}
BUY = Action(
    at_ns=T0 + 5 * S,
    op="submit",
    order_id="o1",
    exchange=BN,
    symbol=SYM,
    side="buy",
    order_type="market",
    size=150,  # 0.15 BTC, ~9,000 USDT of the 10,000
)


def book(t: int, mid: int) -> BookSnapshot:
    return BookSnapshot(t, t, BN, SYM, 0, ((mid - 5, 10_000),), ((mid + 5, 10_000),))


def drawdown_path() -> list[BookSnapshot]:
    """Every 10 s for 40 min: 60,000 for 5 min, down to 56,930 by minute 10, then the
    mid alternates each minute between 56,930 and 56,400 (~4.6 % and ~5.4 % drawdown
    of the account): the threshold is crossed again and again without ever re-arming."""
    out = []
    for i in range(240):
        minute = i // 6
        if minute < 5:
            mid = 600_000
        elif minute < 10:
            mid = 600_000 - (600_000 - 569_300) * (i - 30) // 30
        else:
            mid = 569_300 if minute % 2 == 0 else 564_000
        out.append(book(T0 + i * 10 * S, mid))
    return out


def drawdown_engine(monitoring: MonitoringConfig | None = None) -> Engine:
    return Engine(
        EngineConfig(),
        [BTC],
        ScriptedStrategy([BUY]),
        seed=1,
        latency=ZERO,
        monitoring=monitoring or MonitoringConfig(alerts=ON),
    )


def run_all(eng: Engine, events: list[BookSnapshot]) -> list[Event]:
    out: list[Event] = list(eng.start())
    for ev in events:
        out += eng.apply(ev)
    return out


def test_scripted_drawdown_crossing_the_threshold_many_times_is_one_alert() -> None:
    out = run_all(drawdown_engine(), drawdown_path())
    snaps = [e for e in out if isinstance(e, PortfolioSnapshot)]
    alerts = [e for e in out if isinstance(e, Alert)]
    # the drawdown of every snapshot, from the snapshots themselves
    peak = 10_000 * USD
    dds = []
    for s in snaps:
        peak = max(peak, s.equity)
        dds.append((peak - s.equity) * 100 / peak)
    crossings = sum(1 for a, b in itertools.pairwise(dds) if a < 5 <= b)
    assert crossings >= 10  # a storm, without deduplication
    assert all(d > 4 for d in dds[dds.index(next(d for d in dds if d >= 5)) :])  # no re-arm
    assert [a.rule for a in alerts] == ["drawdown"]
    first = next(s for s, d in zip(snaps, dds, strict=True) if d >= 5)
    (alert,) = alerts
    assert alert.ts_event == first.ts_event
    assert f"equity {first.equity / USD:,.2f}, peak 10,000.00" in alert.message
    # the alert comes right after the snapshot that crossed, in the same outputs
    assert out[out.index(alert) - 1] == first


def test_alert_state_survives_snapshot_restore() -> None:
    """Cut after the alert: the resumed engine knows the drawdown alert is active (no
    second alert) and ends with the same state hash as the straight run."""
    path = drawdown_path()
    whole = drawdown_engine()
    straight = run_all(whole, path)
    first = drawdown_engine()
    head = run_all(first, path[:120])
    assert [e.rule for e in head if isinstance(e, Alert)] == ["drawdown"]
    resumed = drawdown_engine()
    resumed.restore(first.snapshot())
    tail: list[Event] = []
    for ev in path[120:]:
        tail += resumed.apply(ev)
    assert head + tail == straight
    assert resumed.state_hash() == whole.state_hash()
    assert not [e for e in tail if isinstance(e, Alert)]


def test_alerts_off_keep_the_state_of_before() -> None:
    path = drawdown_path()
    plain = Engine(EngineConfig(), [BTC], ScriptedStrategy([BUY]), seed=1, latency=ZERO)
    off = drawdown_engine(MonitoringConfig())
    assert run_all(plain, path) == run_all(off, path)
    assert plain.snapshot() == off.snapshot()
    assert off.alerts is None


# -- replay: journaled with the outputs and verified ------------------------------------


def test_replay_journals_alerts_and_verifies() -> None:
    config = AppConfig(
        instruments=InstrumentsConfig(instruments=(BTC,)),
        monitoring=MonitoringConfig(alerts=AlertsConfig(enabled=True, log_in_replay=True)),
    )
    journal = MemoryJournal()
    t = T0
    inputs: list[Event] = [book(t, 600_000)]
    for t_s, status in [(10, "down"), (20, "up"), (30, "down"), (40, "up"), (400, "down")]:
        ts = t + t_s * S
        inputs += [book(ts - S, 600_000), Connectivity(ts, ts, BN, SYM, status, "ws closed")]  # type: ignore[arg-type]
    journal.append(f"md.{BN}.{SYM}", inputs)
    with capture_logs() as logs:
        stats = run_session(journal, config, strategy=StrategyConfig(name="none"), session_id="a")
    rows = [decode(r.payload) for r in journal.read(session_stream("a"))]
    alerts = [(a.ts_event, a.message) for a in rows if isinstance(a, Alert)]
    assert alerts == [
        (t + 10 * S, "BINANCE:BTC-USDT disconnected: ws closed"),
        (t + 400 * S, "BINANCE:BTC-USDT disconnected: ws closed (1 repeat suppressed)"),
    ]
    # the log sink saw the same two (and no webhook is called from a backtest)
    assert [e["message"] for e in logs if e.get("event") == "alert"] == [m for _, m in alerts]
    assert verify_session(journal, "a").ok
    again = run_session(journal, config, strategy=StrategyConfig(name="none"), session_id="b")
    assert again.state_hash == stats.state_hash


# -- sinks -------------------------------------------------------------------------------


class _Hook(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        server: Any = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with server.lock:
            server.bodies.append(body)
            status = server.statuses.pop(0) if server.statuses else 200
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        return None


@pytest.fixture
def hook() -> Iterator[Any]:
    server: Any = ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    server.bodies, server.statuses, server.lock = [], [], threading.Lock()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def alert(rule: str, message: str = "m", severity: str = "warning") -> Alert:
    return Alert(T0, T0, severity, rule, message)  # type: ignore[arg-type]


def test_webhook_posts_json_and_retries_server_errors(hook: Any) -> None:
    url = f"http://127.0.0.1:{hook.server_address[1]}/alerts"
    hook.statuses = [500, 503]  # the first alert's first two tries fail
    sink = WebhookSink(url, timeout_s=2.0, retries=2)
    dispatch = AlertDispatcher([sink], session_id="s1")
    assert dispatch([alert("drawdown", "dd 5%"), equity(0, 1), alert("halt", "stop")]) == 2
    dispatch.close()
    expected = {"severity": "warning", "rule": "drawdown", "message": "dd 5%", "ts_event": T0}
    assert hook.bodies[:3] == [{**expected, "session_id": "s1"}] * 3
    assert [b["rule"] for b in hook.bodies] == ["drawdown"] * 3 + ["halt"]
    assert (sink.delivered, sink.failed) == (2, 0)


def test_webhook_gives_up_after_its_retries_and_counts_it(hook: Any) -> None:
    url = f"http://127.0.0.1:{hook.server_address[1]}/"
    hook.statuses = [500, 500]  # both tries of the first alert
    sink = WebhookSink(url, timeout_s=2.0, retries=1)
    with capture_logs() as logs:
        sink.deliver(alert("drawdown"), "s")
        sink.deliver(alert("halt"), "s")
        sink.close()
    assert [b["rule"] for b in hook.bodies] == ["drawdown", "drawdown", "halt"]
    assert (sink.delivered, sink.failed) == (1, 1)
    (failed,) = [e for e in logs if e["event"] == "alert.webhook_failed"]
    assert (failed["attempts"], failed["error"]) == (2, "HTTP 500")
    # nobody listening: a connection error, counted, never raised
    dead = ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    port = dead.server_address[1]
    dead.server_close()
    sink = WebhookSink(f"http://127.0.0.1:{port}/", timeout_s=1.0, retries=0)
    sink.deliver(alert("x"), "s")
    sink.close()
    assert (sink.delivered, sink.failed) == (0, 1)


def test_dispatcher_sinks_follow_the_config(hook: Any) -> None:
    url = f"http://127.0.0.1:{hook.server_address[1]}/"
    assert build_dispatcher(AlertsConfig(webhook_url=url), "s").sinks == []  # disabled
    live = build_dispatcher(AlertsConfig(enabled=True, webhook_url=url), "s")
    assert [type(s) for s in live.sinks] == [LogSink, WebhookSink]
    replay = build_dispatcher(AlertsConfig(enabled=True, webhook_url=url), "s", webhook=False)
    assert replay.sinks == []  # a backtest: the journal only
    logged = build_dispatcher(
        AlertsConfig(enabled=True, webhook_url=url, log_in_replay=True), "s", webhook=False
    )
    assert [type(s) for s in logged.sinks] == [LogSink]
    both = build_dispatcher(
        AlertsConfig(enabled=True, webhook_url=url, webhook_in_replay=True, log=False),
        "s",
        webhook=False,
    )
    assert [type(s) for s in both.sinks] == [WebhookSink]
    for d in (live, replay, logged, both):
        d.close()


def test_system_alerts_for_lag_and_journal_errors_on_an_injected_clock() -> None:
    clock = [T0]
    written: list[Alert] = []
    mon = MonitoringConfig(consumer_lag_alert_s=5.0, alerts=ON)
    sys_alerts = SystemAlerts(mon, written.extend, lambda: clock[0])
    assert sys_alerts.lag(4.9) is None
    first = sys_alerts.lag(6.0, "kernel clock vs now")
    assert first is not None
    assert first.message == "consumer lag 6.0 s > 5 s (kernel clock vs now)"
    clock[0] += 1 * S
    assert sys_alerts.lag(9.0) is None  # the same episode
    assert sys_alerts.lag(2.4) is None  # under half: re-armed
    clock[0] += 400 * S
    assert sys_alerts.lag(5.5) is not None
    err = sys_alerts.journal_error(OSError("disk full"))
    assert err is not None and (err.severity, err.message) == (
        "critical",
        "journal write failed: OSError: disk full",
    )
    assert sys_alerts.journal_error(OSError("disk full")) is None
    assert [a.rule for a in written] == ["consumer_lag", "consumer_lag", "journal_error"]
    assert [a.ts_event for a in written] == [T0, T0 + 401 * S, T0 + 401 * S]
    # off by config: nothing raised, nothing written
    quiet = SystemAlerts(MonitoringConfig(), written.extend, lambda: clock[0])
    assert quiet.lag(100.0) is None and len(written) == 3
