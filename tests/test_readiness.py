"""``tickerml readiness``: each go-live item pass/fail on a hand-built journal."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from adapters.journal.sqlite import SqliteJournal
from journal_tools.cli import main
from journal_tools.readiness import readiness
from kernel.config import AppConfig, ExchangeConfig, ExchangesConfig
from kernel.events import Connectivity, Halt, PortfolioSnapshot, Resume, SessionStarted

DAY = 86_400 * 1_000_000_000
T0 = 1_700_000_000 * 1_000_000_000
CONFIG = AppConfig(
    exchanges=ExchangesConfig(exchanges={"BINANCE": ExchangeConfig(), "KRAKEN": ExchangeConfig()})
)


def snapshot(day: int, equity: float) -> PortfolioSnapshot:
    t = T0 + day * DAY
    e = round(equity * 1e8)
    return PortfolioSnapshot(t, t, e, e, 0, 0, 0, 0, 0, 0)


def build(path: Path, kraken_last: str = "up", halt: bool = True, days: int = 31) -> SqliteJournal:
    """A live session of ``days`` days, equity 10000 -> 10100 -> 10050 -> 10200."""
    j = SqliteJournal(path)
    started = SessionStarted(T0, T0, "live1", "live", "h", 1, "v", "momentum", T0, 0)
    step = days / 3
    j.append(
        "session.live1",
        [
            started,
            snapshot(0, 10_000),
            snapshot(round(step), 10_100),
            snapshot(round(2 * step), 10_050),
            snapshot(days, 10_200),
        ],
    )
    j.append(
        "sys.CONNECTIVITY",
        [
            Connectivity(T0, T0, "BINANCE", "BTC-USDT", "up"),
            Connectivity(T0, T0, "KRAKEN", "BTC-USDT", "down", "timeout"),
            Connectivity(T0 + 1, T0 + 1, "KRAKEN", "BTC-USDT", kraken_last),
        ],
    )
    if halt:
        j.append(
            "md.CONTROL",
            [Halt(T0 + DAY, T0 + DAY, "drill"), Resume(T0 + DAY + 1, T0 + DAY + 1, "drill over")],
        )
    return j


def by_name(items: list) -> dict[str, tuple[str, str]]:  # type: ignore[type-arg]
    return {i.name: (i.status, i.value) for i in items}


def test_a_ready_journal(tmp_path: Path) -> None:
    """Returns 0.01, -0.0049505, 0.0149254 over intervals of 31/3 days (10.33 d):
    P&L +100, -50, +150 -> win rate 66.7 %, profit factor 250 / 50 = 5; drawdown
    50 / 10100 = 0.495 %; Sharpe = mean / sample std x sqrt(365 / 10.333)."""
    j = build(tmp_path / "j.db")
    (tmp_path / "coverage.json").write_text(json.dumps({"totals": {"percent_covered": 85.25}}))
    items = by_name(readiness(j, CONFIG, tmp_path))
    rets = [10_100 / 10_000 - 1, 10_050 / 10_100 - 1, 10_200 / 10_050 - 1]
    mean = sum(rets) / 3
    std = math.sqrt(sum((r - mean) ** 2 for r in rets) / 2)
    periods = 365 * DAY / (31 * DAY / 3)
    expected_sharpe = mean / std * math.sqrt(periods)
    assert items["paper_days"] == ("pass", "31.00 days")
    assert items["sharpe"][0] == "pass"
    assert float(items["sharpe"][1]) == pytest.approx(expected_sharpe, abs=6e-4)
    assert items["max_drawdown"] == ("pass", f"{50 / 10_100 * 100:.2f} %")
    assert items["win_rate"] == ("pass", "66.7 %")
    assert items["profit_factor"] == ("pass", "5.000")
    assert items["exchanges"] == ("pass", "2/2")
    assert items["emergency_shutdown"] == ("pass", "1 halt(s), 1 resume(s)")
    assert items["coverage"] == ("pass", "85.2 %")


def test_each_item_can_fail(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    j = build(tmp_path / "j.db", kraken_last="down", halt=False, days=20)
    j.close()
    dsn = f"sqlite:///{tmp_path / 'j.db'}"
    assert main(["readiness", "--journal", dsn, "--root", str(tmp_path), "--format", "json"]) == 1
    items = {i["name"]: i for i in json.loads(capsys.readouterr().out)}
    assert (items["paper_days"]["status"], items["paper_days"]["value"]) == ("fail", "20.00 days")
    assert items["exchanges"]["status"] == "fail"
    # config/ has four exchanges; the journal saw two, KRAKEN last down
    assert items["exchanges"]["detail"] == (
        "never connected: COINBASE, KUCOIN; not up: KRAKEN:BTC-USDT down"
    )
    assert items["emergency_shutdown"]["status"] == "fail"
    assert items["coverage"]["status"] == "fail" and items["coverage"]["value"] == "unknown"


def test_no_live_session_fails_the_performance_items(tmp_path: Path) -> None:
    j = SqliteJournal(tmp_path / "empty.db")
    items = by_name(readiness(j, CONFIG, tmp_path))
    assert items["paper_days"] == ("fail", "0.00 days")
    for name in ("sharpe", "max_drawdown", "win_rate", "profit_factor"):
        assert items[name] == ("fail", "n/a")
    assert items["exchanges"] == ("fail", "0/2")
