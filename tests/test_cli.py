"""End to end through the `tickerml` CLI (in-process main(), real SQLite journal)."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest

from journal_tools.cli import main
from kernel.events import decode, encode

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def market(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A small synthetic market, imported once into a module-wide journal."""
    work = tmp_path_factory.mktemp("cli")
    data = work / "data"
    assert main(["synth", "--out", str(data), "--hours", "0.03", "--seed", "3", "-q"]) == 0
    dsn = f"sqlite:///{work / 'j.db'}"
    assert main(["import", "tardis", "--dir", str(data), "--journal", dsn, "-q"]) == 0
    return work, dsn


def replay(dsn: str, work: Path, *extra: str) -> dict[str, object]:
    stats = work / f"stats-{len(list(work.glob('stats-*')))}.json"
    assert main(["replay", "--journal", dsn, "--stats-json", str(stats), "-q", *extra]) == 0
    return json.loads(stats.read_text())  # type: ignore[no-any-return]


def test_replay_twice_same_state_hash_and_verify(
    market: tuple[Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    work, dsn = market
    a = replay(dsn, work)
    b = replay(dsn, work)
    assert a["state_hash"] == b["state_hash"]
    assert a["session_id"] != b["session_id"]
    for key in ("events", "seconds", "events_per_s", "state_hash", "peak_rss_mb", "messages"):
        assert key in a
    assert a["events"] > a["messages"] > 0
    assert a["decisions"] > 0
    capsys.readouterr()
    assert main(["replay", "--journal", dsn, "--session", str(a["session_id"]), "--verify"]) == 0
    assert "verified" in capsys.readouterr().out


def test_market_maker_session_trades_and_verifies(
    market: tuple[Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    """Orders, latency draws, queue positions and fills replay byte for byte."""
    work, dsn = market
    a = replay(dsn, work, "--strategy", "market_maker", "--exchange", "binance")
    b = replay(dsn, work, "--strategy", "market_maker", "--exchange", "binance")
    assert int(a["fills"]) > 0  # type: ignore[call-overload]
    assert (a["state_hash"], a["fills"], a["outputs"]) == (
        b["state_hash"],
        b["fills"],
        b["outputs"],
    )
    capsys.readouterr()
    assert main(["replay", "--journal", dsn, "--session", str(a["session_id"]), "--verify"]) == 0
    assert "verified" in capsys.readouterr().out
    # the audit links each decision to the orders it caused and what became of them
    args = ["audit", "--journal", dsn, "--session", str(a["session_id"]), "--format", "json"]
    assert main([*args, "--limit", "100000"]) == 0
    doc = json.loads(capsys.readouterr().out)
    orders = [o for d in doc["decisions"] for o in d["orders"]]
    assert orders
    assert sum(o["fills"] for o in orders) == a["fills"]
    assert {o["state"] for o in orders} >= {"filled", "cancelled"}


def test_scenario_prints_json_lines(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["scenario", str(ROOT / "tests" / "scenarios" / "market_walk.json")]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    fills = [(x["price"], x["size"]) for x in lines if x["kind"] == "Fill"]
    assert fills == [("100.1", "10.000"), ("100.2", "2.000"), ("100.2", "3.000")]
    assert lines[-1]["kind"] == "final" and lines[-1]["orders"]["m1"]["avg_price"] == "100.11666667"
    bad = tmp_path / "bad.json"
    raw = json.loads((ROOT / "tests" / "scenarios" / "market_walk.json").read_text())
    raw["events"][1]["size"] = "12.0001"  # finer than the lot
    bad.write_text(json.dumps(raw))
    assert main(["scenario", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "events[1]" in err and "12.0001" in err


def test_range_and_filters_change_the_inputs(market: tuple[Path, str]) -> None:
    work, dsn = market
    full = replay(dsn, work, "--strategy", "none")
    one = replay(dsn, work, "--strategy", "none", "--exchange", "binance", "--symbol", "BTC-USDT")
    part = replay(
        dsn,
        work,
        "--strategy",
        "none",
        "--from",
        "2025-01-01T00:00:30",
        "--to",
        "2025-01-01T00:01:00",
    )
    assert 0 < int(one["messages"]) < int(full["messages"])  # type: ignore[call-overload]
    assert 0 < int(part["messages"]) < int(full["messages"])  # type: ignore[call-overload]
    assert part["input_from"] == 1735689630 * 10**9
    assert part["input_to"] == 1735689660 * 10**9


def test_verify_reports_first_divergence(
    market: tuple[Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    work, dsn = market
    stats = replay(dsn, work)
    sid = str(stats["session_id"])
    db = dsn.removeprefix("sqlite:///")
    # Forge a decision's reasoning in place: verify must name that seq.
    with sqlite3.connect(db) as conn:
        seq = conn.execute(
            "SELECT min(seq) FROM events WHERE sid = (SELECT sid FROM streams WHERE name = ?) "
            "AND kind = 'Decision'",
            (f"session.{sid}",),
        ).fetchone()[0]
        payload = conn.execute(
            "SELECT payload FROM events WHERE sid = (SELECT sid FROM streams WHERE name = ?) "
            "AND seq = ?",
            (f"session.{sid}", seq),
        ).fetchone()[0]
        original = decode(bytes(payload))
        forged = encode(msgspec.structs.replace(original, reasoning="forged after the fact"))
        conn.execute(
            "UPDATE events SET payload = ? WHERE sid = (SELECT sid FROM streams WHERE name = ?) "
            "AND seq = ?",
            (forged, f"session.{sid}", seq),
        )
    capsys.readouterr()
    assert main(["replay", "--journal", dsn, "--session", sid, "--verify"]) == 1
    out = capsys.readouterr().out
    assert "DIVERGES" in out
    assert f"seq {seq}" in out
    assert main(["verify", "--journal", dsn, "--stream", f"session.{sid}"]) == 1


def test_audit_lists_decisions_with_reasoning(
    market: tuple[Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    work, dsn = market
    stats = replay(dsn, work)
    capsys.readouterr()
    assert (
        main(["audit", "--journal", dsn, "--session", str(stats["session_id"]), "--format", "json"])
        == 0
    )
    doc = json.loads(capsys.readouterr().out)
    assert doc["hash_chain_ok"] is True
    assert doc["session"]["strategy"] == "imbalance"
    assert len(doc["decisions"]) == min(50, int(stats["decisions"]))  # type: ignore[call-overload]
    d = doc["decisions"][0]
    assert d["reasoning"].startswith(("imbalance(5)=", "|imbalance(5)|="))
    assert d["thresholds"]["threshold"] == 0.6
    assert main(["audit", "--journal", dsn]) == 0
    assert str(stats["session_id"]) in capsys.readouterr().out


def test_bad_config_key_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "config"
    cfg.mkdir()
    (cfg / "trading.yaml").write_text("seed: 1\nengine:\n  sync:\n    allowed_latenes_ns: 5\n")
    code = main(["--config-dir", str(cfg), "replay", "--journal", "memory://", "-q"])
    assert code == 2
    err = capsys.readouterr().err
    assert "trading.yaml" in err and "engine.sync.allowed_latenes_ns" in err


def test_help_everywhere() -> None:
    for cmd in (
        [],
        ["synth"],
        ["import", "tardis"],
        ["replay"],
        ["verify"],
        ["audit"],
        ["scenario"],
        ["project"],
        ["demo"],
    ):
        proc = subprocess.run(
            [sys.executable, "-m", "journal_tools.cli", *cmd, "--help"],
            capture_output=True,
            text=True,
            cwd=ROOT,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
        assert "usage: tickerml" in proc.stdout


def test_demo_runs_and_verifies(tmp_path: Path) -> None:
    assert main(["demo", "--out", str(tmp_path / "demo"), "--hours", "0.02", "-q"]) == 0


def test_halt_and_resume_from_the_cli_in_a_replay(
    market: tuple[Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`tickerml halt` journals an operator Halt in md.CONTROL; a replay folds it in time
    order: after it the strategy's orders are refused and its position is flattened; the
    session verifies byte for byte; `tickerml resume` lifts it."""
    import shutil

    work, _ = market
    db = tmp_path / "j.db"
    shutil.copy(work / "j.db", db)
    dsn2 = f"sqlite:///{db}"
    at = "2025-01-01T00:01:00"
    assert main(["halt", "--reason", "drill", "--at", at, "--journal", dsn2]) == 0
    assert "halt journaled: md.CONTROL seq 1" in capsys.readouterr().out
    assert main(["resume", "--reason", "", "--journal", dsn2]) == 2  # a reason is required
    stats = replay(dsn2, tmp_path, "--strategy", "market_maker", "--exchange", "binance")
    assert (
        main(["replay", "--journal", dsn2, "--session", str(stats["session_id"]), "--verify"]) == 0
    )
    conn = sqlite3.connect(db)
    sid = conn.execute(
        "SELECT sid FROM streams WHERE name = ?", (f"session.{stats['session_id']}",)
    ).fetchone()[0]
    outs = [
        decode(p)
        for (p,) in conn.execute("SELECT payload FROM events WHERE sid = ? ORDER BY seq", (sid,))
    ]
    t_halt = 1735689660 * 10**9
    after = [o for o in outs if o.ts_recv >= t_halt and type(o).__name__ == "OrderSubmitted"]
    assert after, "the market maker kept trying"
    rejected = {o.order_id for o in outs if type(o).__name__ == "OrderRejected"}
    strategy_orders = [o for o in after if not o.reduce_only]
    assert strategy_orders and all(o.order_id in rejected for o in strategy_orders)
    cancels = [
        o for o in outs if type(o).__name__ == "OrderCancelled" and o.reason == "halt: drill"
    ]
    assert cancels  # the quotes that were resting


def test_replay_writes_an_html_report(market: tuple[Path, str]) -> None:
    """The report's equity chart ends at the last PortfolioSnapshot's equity and the fills
    table counts every Fill of the session, read independently from the journal."""
    import re
    import shutil

    from adapters.journal.base import session_stream
    from adapters.journal.sqlite import SqliteJournal
    from kernel.events import Fill, PortfolioSnapshot

    work, dsn = market
    cfg = work / "cfg-report"
    shutil.copytree(ROOT / "config", cfg, dirs_exist_ok=True)
    trading = (cfg / "trading.yaml").read_text()
    (cfg / "trading.yaml").write_text(
        trading.replace("snapshot_interval_ms: 60000", "snapshot_interval_ms: 5000")
    )
    report = work / "report.html"
    out = work / "stats-report.json"
    argv = ["--config-dir", str(cfg), "replay", "--journal", dsn, "--strategy", "market_maker"]
    assert main([*argv, "--report", str(report), "--stats-json", str(out), "-q"]) == 0
    stats = json.loads(out.read_text())
    page = report.read_text()
    journal = SqliteJournal(Path(dsn.removeprefix("sqlite:///")))
    rows = [decode(r.payload) for r in journal.read(session_stream(str(stats["session_id"])))]
    journal.close()
    snaps = [e for e in rows if isinstance(e, PortfolioSnapshot)]
    fills = [e for e in rows if isinstance(e, Fill)]
    assert len(fills) == stats["fills"] > 0 and len(snaps) >= 2
    m = re.search(r'data-title="equity \(quote\)" data-points="(\d+)" data-last="([^"]+)"', page)
    assert m is not None
    assert (int(m.group(1)), float(m.group(2))) == (len(snaps), snaps[-1].equity / 1e8)
    assert f"of {len(fills)})" in page and str(stats["state_hash"]) in page
    assert "<script" not in page and "http://" not in page.replace("http://www.w3.org", "")
