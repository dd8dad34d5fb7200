"""``tickerml audit``: for a decision, the features and thresholds behind it, the risk
checks, the orders and fills it caused, P&L attribution and the hash chain; json, csv and
table output."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from adapters.journal.sqlite import SqliteJournal
from journal_tools.audit import build_audit
from journal_tools.cli import main
from journal_tools.session import run_session
from kernel.config import (
    AppConfig,
    ExchangeConfig,
    ExchangesConfig,
    FeaturesConfig,
    InstrumentsConfig,
    LatencyProfile,
    RiskLimitsConfig,
    StrategyConfig,
    TradingConfig,
)
from kernel.events import BookSnapshot, Event, Trade
from kernel.features import FeatureConfig
from kernel.instruments import Instrument

S = 1_000_000_000
INST = Instrument(
    exchange="BINANCE",
    symbol="BTC-USDT-PERP",
    kind="perp",
    base="BTC",
    quote="USDT",
    price_decimals=1,
    size_decimals=3,
    taker_fee_ppm=500,
)
STRATEGY = StrategyConfig(
    name="momentum",
    params={
        "imbalance_threshold": 0.3,
        "microprice_threshold_bp": 0.02,
        "flow_threshold": 0.2,
        "evaluate_ms": 0,
        "size": "0.010",
        "max_position": "0.010",
    },
)


def market() -> list[Event]:
    """As in tests/test_strategies_features.py: the buy trade at 1.2 s triggers a buy
    (imbalance_5 0.5, microprice offset 0.041666 bp, 10 s flow 0.5), d1. The trade just
    after 2 s first journals the Features sample of the 2 s boundary, then (the position
    0.008 is still below 0.010) triggers d2, which the risk layer refuses."""
    sym = "BTC-USDT-PERP"
    return [
        BookSnapshot(S, S, "BINANCE", sym, 1, ((600_000, 300),), ((600_010, 100),)),
        Trade(S + S // 10, S + S // 10, "BINANCE", sym, 0, "t1", 600_000, 10, "sell"),
        Trade(S + S // 5, S + S // 5, "BINANCE", sym, 0, "t2", 600_010, 30, "buy"),
        Trade(2 * S + 1, 2 * S + 1, "BINANCE", sym, 0, "t3", 600_010, 1, "buy"),
    ]


@pytest.fixture
def session(tmp_path: Path) -> tuple[str, str]:
    instant = LatencyProfile(model="constant", entry_mean_ms=0, response_mean_ms=0)
    config = AppConfig(
        instruments=InstrumentsConfig(instruments=(INST,)),
        exchanges=ExchangesConfig(exchanges={"BINANCE": ExchangeConfig(latency=instant)}),
        risk_limits=RiskLimitsConfig(max_position_pct=5.0),
        trading=TradingConfig(
            features=FeaturesConfig(enabled=True, params=FeatureConfig(sample_interval_ns=S))
        ),
    )
    path = tmp_path / "j.db"
    journal = SqliteJournal(path)
    journal.append("md.BINANCE.BTC-USDT-PERP", market())
    run_session(journal, config, strategy=STRATEGY, session_id="aud")
    journal.close()
    return f"sqlite:///{path}", "aud"


def test_a_decision_with_its_features_thresholds_risk_orders_and_fills(
    session: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    dsn, sid = session
    assert (
        main(["audit", "--journal", dsn, "--session", sid, "--decision", "d1", "--format", "json"])
        == 0
    )
    doc = json.loads(capsys.readouterr().out)
    assert doc["hash_chain_ok"] is True and doc["decisions_total"] == 1
    (d,) = doc["decisions"]
    assert (d["decision_id"], d["action"], d["instrument"]) == (
        "d1",
        "buy",
        "BINANCE:BTC-USDT-PERP",
    )
    assert d["features"] == {
        "imbalance_5": 0.5,
        "microprice_offset_bp": pytest.approx(5 / 1_200_010 * 1e4, abs=1e-12),
        "trade_imbalance_10s": 0.5,
        "position": 0.0,
    }
    assert d["thresholds"] == {
        "imbalance_threshold": 0.3,
        "microprice_threshold_bp": 0.02,
        "flow_threshold": 0.2,
        "exit_threshold": 0.1,
    }
    # the decision came before the first sample (at 2 s): no sample to show
    assert d["feature_sample"] is None
    # risk layer: max_position_pct 5 % of 10000 USDT = 500 USDT -> 500 / 60001 = 0.00833
    # BTC, the 0.001 lot -> 0.008 of the 0.010 asked
    assert [(r["rule"], r["level"]) for r in d["risk"]] == [("resize", "normal")]
    assert "buy 0.010 -> 0.008: max_position_pct" in d["risk_checks"]
    (o,) = d["orders"]
    assert (o["side"], o["type"], o["size"], o["state"], o["fills"]) == (
        "buy",
        "market",
        8,
        "filled",
        1,
    )
    (f,) = o["fill_rows"]
    assert (f["price"], f["size"], f["liquidity"]) == (600_010, 8, "taker")
    # fee: 5 bp of 0.008 x 60001.0 = 480.008 USDT x 0.0005 = 0.240004
    assert f["fee"] == pytest.approx(0.240004, abs=1e-12)
    # impact: 0.7 x 0.03 x sqrt(0.008 / 10000) = 1.8783e-5 (0.18783 bp) of 480.008
    assert f["impact"] == pytest.approx(480.008 * 0.7 * 0.03 * (0.008 / 10_000) ** 0.5, abs=1e-8)
    assert d["pnl"]["notional"] == pytest.approx(480.008, abs=1e-9)
    assert d["pnl"]["fees"] == pytest.approx(0.240004, abs=1e-12)
    assert d["row"]["verified"] is True and len(d["row"]["hash"]) == 64


def test_the_sample_before_a_later_decision_and_csv(session: tuple[str, str]) -> None:
    dsn, sid = session
    journal = SqliteJournal(Path(dsn.removeprefix("sqlite:///")))
    doc = build_audit(journal, sid)
    journal.close()
    assert doc["decisions_total"] == 2
    d2 = doc["decisions"][1]
    sample = d2["feature_sample"]
    assert sample["ts"] == 2 * S
    assert sample["values"]["imbalance_5"] == 0.5
    assert sample["values"]["position"] == 0.008
    assert d2["risk_checks"] == (
        "limits refused: max_position_pct: 5% of equity leaves room for 0.000 of 0.002"
    )
    assert [o["state"] for o in d2["orders"]] == [
        "rejected: risk: max_position_pct: 5% of equity leaves room for 0.000 of 0.002"
    ]
    csv_rows = list(csv.reader(io.StringIO(_csv(dsn, sid))))
    assert csv_rows[0][:5] == ["seq", "decision_id", "ts", "instrument", "action"]
    assert csv_rows[1][1:5] == ["d1", str(S + S // 5), "BINANCE:BTC-USDT-PERP", "buy"]
    assert "imbalance_threshold=0.3" in csv_rows[1][9]


def _csv(dsn: str, sid: str) -> str:
    import contextlib

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["audit", "--journal", dsn, "--session", sid, "--format", "csv"]) == 0
    return buf.getvalue()


def test_table_and_unknown_decision(
    session: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    dsn, sid = session
    assert main(["audit", "--journal", dsn, "--session", sid, "--decision", "d1"]) == 0
    text = capsys.readouterr().out
    assert "imbalance_threshold" in text and "orders and fills it caused" in text
    assert main(["audit", "--journal", dsn, "--session", sid, "--decision", "d9"]) == 2
    assert "no decision 'd9'" in capsys.readouterr().err
