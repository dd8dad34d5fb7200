"""Read models (journal_tools/projections.py) and their storage in every journal backend.

One hand-made session (``SESSION``) with every number worked out by hand below. Money
is in MONEY units (1e-8 quote): 1.00 quote = 100_000_000. Both instruments have
price_decimals=2 and size_decimals=5, so ``notional = price x size x 10`` MONEY and a
fee of 1000 ppm is 0.1 % of notional.

Timeline (seconds after T0; fills booked at their ts_recv):

====  =======================================  ===========================================
 t    event                                    books after it (cash, position, realised)
====  =======================================  ===========================================
  2   f1 BTC buy 0.5 @ 100.00, fee 0.05, toxic cash 9949.95, +0.5 cost 50.00
  3   f2 BTC buy 0.5 @ 102.00, fee 0.051       cash 9898.899, +1.0 cost 101.00
 60   snapshot, BTC mark 103.00                equity 10001.899, unrealised 2.00
 62   f3 BTC sell 1.0 @ 105.00, fee 0.105,     cash 10003.774, flat; realised 4.00
      impact 0.02, slippage 0.01
 64   f4 PERP sell 0.2 @ 200.00, fee 0.04      cash 10043.734, -0.2 cost -40.00
120   snapshot, PERP mark 198.00               equity 10004.134, unrealised 0.40
121   funding +0.01 received (short)           cash 10043.744, marked at 198.00
125   f5 PERP buy 0.3 @ 190.00, fee 0.057      cash 9986.687, +0.1 cost 19.00; realised 6.00
      (flip: closes 0.2, opens 0.1 long; a FillToxic names it afterwards)
180   snapshot, PERP mark 187.00               equity 10005.387, unrealised -0.30
183   f6 PERP sell 0.1 @ 185.00, fee 0.0185    cash 10005.1685, flat; realised 5.50
185   f7 BTC buy 0.1 @ 110.00, fee 0.011       cash 9994.1575, +0.1 cost 11.00 (open)
240   snapshot, BTC mark 111.00                equity 10005.2575, unrealised 0.10
250   SessionEnded
====  =======================================  ===========================================

Round trips:

* BTC long: entries 0.5@100 + 0.5@102 (avg 101.00), exit 1.0@105 -> gross 105 - 101 =
  4.00; fees 0.05 + 0.051 + 0.105 = 0.206; impact 0.02; net 3.774.
* PERP short: entry 0.2@200, exit 0.2@190 (closing part of f5) -> gross 40 - 38 = 2.00;
  fees 0.04 + 0.057 x 0.2/0.3 = 0.04 + 0.038 = 0.078; funding +0.01; net 1.932.
* PERP long: entry 0.1@190 (rest of f5), exit 0.1@185 -> gross 18.50 - 19.00 = -0.50;
  fees 0.019 + 0.0185 = 0.0375; net -0.5375.
* BTC long, still open: entry 0.1@110, fee 0.011; net so far -0.011.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import math
import sqlite3
import statistics
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from adapters.journal import (
    Journal,
    JournalError,
    MemoryJournal,
    SqliteJournal,
    prepare,
    session_stream,
)
from adapters.journal.base import ReadModelColumn
from journal_tools.cli import main
from journal_tools.projections import (
    PERFORMANCE_METRICS,
    PORTFOLIO_STATE,
    ROW_TYPES,
    SCHEMAS,
    TABLES,
    TRADE_DECISIONS,
    TRADE_HISTORY,
    PerformanceMetricsRow,
    ProjectionError,
    TradeHistoryRow,
    load_session,
    max_drawdown,
    performance_metrics,
    portfolio_state,
    profit_factor,
    project_session,
    rebuild,
    session_events,
    sharpe_ratio,
    storage_columns,
    storage_row,
    trade_decisions,
    trade_history,
    win_rate,
)
from kernel.config import (
    AppConfig,
    EngineConfig,
    InstrumentsConfig,
    PortfolioConfig,
    TradingConfig,
    canonical_json,
    config_hash,
)
from kernel.events import (
    Decision,
    Event,
    Fill,
    FillToxic,
    FundingPayment,
    OrderAccepted,
    OrderCancelled,
    OrderSubmitted,
    PortfolioSnapshot,
    SessionEnded,
    SessionStarted,
    event_id,
)
from kernel.instruments import Instrument

T0 = 1_735_689_600_000_000_000  # 2025-01-01T00:00:00Z
S = 1_000_000_000
Q = 100_000_000  # one quote unit in MONEY
BTC = "BINANCE:BTC-USDT"
PERP = "BINANCE:BTC-USDT-PERP"

INSTRUMENTS = (
    Instrument(
        exchange="BINANCE",
        symbol="BTC-USDT",
        kind="spot",
        base="BTC",
        quote="USDT",
        price_decimals=2,
        size_decimals=5,
        maker_fee_ppm=1000,
        taker_fee_ppm=1000,
    ),
    Instrument(
        exchange="BINANCE",
        symbol="BTC-USDT-PERP",
        kind="perp",
        base="BTC",
        quote="USDT",
        price_decimals=2,
        size_decimals=5,
        maker_fee_ppm=1000,
        taker_fee_ppm=1000,
    ),
)
CONFIG = AppConfig(
    trading=TradingConfig(
        engine=EngineConfig(
            portfolio=PortfolioConfig(initial_cash="10000", snapshot_interval_ms=60_000)
        )
    ),
    instruments=InstrumentsConfig(instruments=INSTRUMENTS),
)


def at(seconds: int) -> int:
    return T0 + seconds * S


def started(sid: str, config: AppConfig = CONFIG) -> SessionStarted:
    return SessionStarted(
        ts_event=T0,
        ts_recv=T0,
        session_id=sid,
        mode="replay",
        config_hash=config_hash(config),
        seed=1,
        code_version="test",
        strategy="hand",
        input_from=T0,
        input_to=at(300),
        config_json=canonical_json(config).decode(),
    )


def decision(t: int, did: str, symbol: str, action: str) -> Decision:
    return Decision(
        ts_event=at(t),
        ts_recv=at(t),
        decision_id=did,
        strategy="hand",
        exchange="BINANCE",
        symbol=symbol,
        action=action,
        reasoning=f"{action} {symbol}",
        features=(("imbalance", 0.5), ("spread_bp", 1.25)),
        model_id="m1",
        confidence=0.75,
    )


def submit(t: int, oid: str, did: str, symbol: str, side: str, size: int) -> OrderSubmitted:
    return OrderSubmitted(
        ts_event=at(t),
        ts_recv=at(t),
        order_id=oid,
        decision_id=did,
        exchange="BINANCE",
        symbol=symbol,
        side=side,  # type: ignore[arg-type]
        order_type="market",
        size=size,
    )


def fill(
    t: int,
    fid: str,
    oid: str,
    symbol: str,
    side: str,
    price: int,
    size: int,
    fee: int,
    **extra: object,
) -> Fill:
    return Fill(
        ts_event=at(t) - S // 10,  # venue time; the books take it at ts_recv
        ts_recv=at(t),
        fill_id=fid,
        order_id=oid,
        exchange="BINANCE",
        symbol=symbol,
        side=side,  # type: ignore[arg-type]
        price=price,
        size=size,
        fee=fee,
        liquidity="taker",
        **extra,  # type: ignore[arg-type]
    )


def snapshot(t: int, cash: int, equity: int, **fields: object) -> PortfolioSnapshot:
    values: dict[str, object] = {
        "realised": 0,
        "unrealised": 0,
        "fees": 0,
        "funding": 0,
        "impact": 0,
        "slippage": 0,
        "positions": (),
    }
    values.update(fields)
    return PortfolioSnapshot(ts_event=at(t), ts_recv=at(t), cash=cash, equity=equity, **values)  # type: ignore[arg-type]


def session_body(sid: str) -> list[Event]:
    """SESSION: the events of the table in the module docstring, in stream order."""
    return [
        started(sid),
        decision(1, "d1", "BTC-USDT", "buy"),  # seq 2
        submit(1, "o1", "d1", "BTC-USDT", "buy", 100_000),
        OrderAccepted(ts_event=at(1), ts_recv=at(1), order_id="o1"),
        fill(2, "f1", "o1", "BTC-USDT", "buy", 10_000, 50_000, 5_000_000, toxic=True),  # seq 5
        fill(3, "f2", "o1", "BTC-USDT", "buy", 10_200, 50_000, 5_100_000),
        snapshot(  # seq 7
            60,
            cash=989_889_900_000,
            equity=1_000_189_900_000,
            unrealised=200_000_000,
            fees=10_100_000,
            positions=((BTC, 100_000, 10_100_000_000, 10_300),),
        ),
        decision(61, "d2", "BTC-USDT", "sell"),
        submit(61, "o2", "d2", "BTC-USDT", "sell", 100_000),
        fill(  # seq 10
            62,
            "f3",
            "o2",
            "BTC-USDT",
            "sell",
            10_500,
            100_000,
            10_500_000,
            impact_cost=2_000_000,
            slippage=1_000_000,
        ),
        decision(63, "d3", "BTC-USDT-PERP", "sell"),
        submit(63, "o3", "d3", "BTC-USDT-PERP", "sell", 20_000),
        fill(64, "f4", "o3", "BTC-USDT-PERP", "sell", 20_000, 20_000, 4_000_000),  # seq 13
        snapshot(  # seq 14
            120,
            cash=1_004_373_400_000,
            equity=1_000_413_400_000,
            realised=400_000_000,
            unrealised=40_000_000,
            fees=24_600_000,
            impact=2_000_000,
            slippage=1_000_000,
            positions=((PERP, -20_000, -4_000_000_000, 19_800),),
        ),
        FundingPayment(  # seq 15
            ts_event=at(121),
            ts_recv=at(121),
            exchange="BINANCE",
            symbol="BTC-USDT-PERP",
            rate=1_250_000,
            position=-20_000,
            amount=1_000_000,
        ),
        decision(124, "d4", "BTC-USDT-PERP", "buy"),
        submit(124, "o4", "d4", "BTC-USDT-PERP", "buy", 30_000),
        fill(125, "f5", "o4", "BTC-USDT-PERP", "buy", 19_000, 30_000, 5_700_000),  # seq 18
        FillToxic(
            ts_event=at(126),
            ts_recv=at(126),
            fill_id="f5",
            order_id="o4",
            exchange="BINANCE",
            symbol="BTC-USDT-PERP",
            reason="adverse_move",
            adverse_bp=12.0,
        ),
        snapshot(  # seq 20
            180,
            cash=998_668_700_000,
            equity=1_000_538_700_000,
            realised=600_000_000,
            unrealised=-30_000_000,
            fees=30_300_000,
            funding=1_000_000,
            impact=2_000_000,
            slippage=1_000_000,
            positions=((PERP, 10_000, 1_900_000_000, 18_700),),
        ),
        decision(181, "d5", "BTC-USDT", "hold"),
        decision(182, "d6", "BTC-USDT-PERP", "sell"),
        submit(182, "o5", "d6", "BTC-USDT-PERP", "sell", 10_000),
        fill(183, "f6", "o5", "BTC-USDT-PERP", "sell", 18_500, 10_000, 1_850_000),  # seq 24
        decision(184, "d7", "BTC-USDT", "buy"),
        submit(184, "o6", "d7", "BTC-USDT", "buy", 20_000),
        fill(185, "f7", "o6", "BTC-USDT", "buy", 11_000, 10_000, 1_100_000),  # seq 27
        OrderCancelled(ts_event=at(186), ts_recv=at(186), order_id="o6", remaining=10_000),
        snapshot(  # seq 29
            240,
            cash=999_415_750_000,
            equity=1_000_525_750_000,
            realised=550_000_000,
            unrealised=10_000_000,
            fees=33_250_000,
            funding=1_000_000,
            impact=2_000_000,
            slippage=1_000_000,
            positions=((BTC, 10_000, 1_100_000_000, 11_100),),
        ),
        SessionEnded(
            ts_event=at(250),
            ts_recv=at(250),
            session_id=sid,
            state_hash="h",
            events_in=0,
            outputs=0,
        ),
    ]


def write_session(journal: Journal, sid: str, events: list[Event] | None = None) -> None:
    """Append a session stream the way journal_tools.session does (ids by ordinal)."""
    stream = session_stream(sid)
    evs = session_body(sid) if events is None else events
    journal.append_prepared(
        stream, [prepare(ev, event_id(ev, stream, i)) for i, ev in enumerate(evs)]
    )


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def journal(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Journal]:
    j: Journal
    if request.param == "postgres":
        from adapters.journal.postgres import PostgresJournal

        j = PostgresJournal(
            request.getfixturevalue("pg_dsn"), schema=request.getfixturevalue("pg_schema")
        )
    else:
        j = MemoryJournal() if request.param == "memory" else SqliteJournal(tmp_path / "j.db")
    yield j
    j.close()


SESSION = session_events(session_body("s1"))


# ---------------------------------------------------------------------------------------
# The pure projections
# ---------------------------------------------------------------------------------------


def test_row_structs_match_the_stored_schemas() -> None:
    assert set(ROW_TYPES) == set(SCHEMAS) == set(TABLES)
    for table, row_type in ROW_TYPES.items():
        assert row_type.__struct_fields__ == ("session_id", *(c.name for c in SCHEMAS[table]))


def test_trade_history_round_trips_by_hand() -> None:
    assert trade_history(SESSION) == [
        TradeHistoryRow(
            session_id="s1",
            instrument=BTC,
            direction="long",
            entry_ts=at(2),
            exit_ts=at(62),
            size=100_000,  # 1.0 BTC
            avg_entry=10_100,  # (0.5 x 100 + 0.5 x 102) / 1.0
            avg_exit=10_500,
            gross_pnl=400_000_000,  # 105.00 - 101.00
            fees=20_600_000,  # 0.05 + 0.051 + 0.105
            impact=2_000_000,
            funding=0,
            net_pnl=377_400_000,  # 4.00 - 0.206 - 0.02
            fills=3,
            toxic_fills=1,  # f1 carries toxic=True
            holding_ns=60 * S,
        ),
        TradeHistoryRow(
            session_id="s1",
            instrument=PERP,
            direction="short",
            entry_ts=at(64),
            exit_ts=at(125),
            size=20_000,
            avg_entry=20_000,
            avg_exit=19_000,
            gross_pnl=200_000_000,  # 40.00 - 38.00
            fees=7_800_000,  # 0.04 + 0.057 x 2/3
            impact=0,
            funding=1_000_000,
            net_pnl=193_200_000,  # 2.00 - 0.078 + 0.01
            fills=2,
            toxic_fills=1,  # f5, named by a FillToxic after the fill
            holding_ns=61 * S,
        ),
        TradeHistoryRow(
            session_id="s1",
            instrument=PERP,
            direction="long",
            entry_ts=at(125),
            exit_ts=at(183),
            size=10_000,
            avg_entry=19_000,
            avg_exit=18_500,
            gross_pnl=-50_000_000,  # 18.50 - 19.00
            fees=3_750_000,  # 0.057 x 1/3 + 0.0185
            impact=0,
            funding=0,
            net_pnl=-53_750_000,
            fills=2,
            toxic_fills=1,  # the flip fill f5 belongs to both trips
            holding_ns=58 * S,
        ),
        TradeHistoryRow(
            session_id="s1",
            instrument=BTC,
            direction="long",
            entry_ts=at(185),
            exit_ts=None,
            size=10_000,
            avg_entry=11_000,
            avg_exit=None,
            gross_pnl=0,
            fees=1_100_000,
            impact=0,
            funding=0,
            net_pnl=-1_100_000,
            fills=1,
            toxic_fills=0,
            holding_ns=None,
        ),
    ]


def test_portfolio_state_rows_by_hand() -> None:
    rows = portfolio_state(SESSION)
    assert [(r.seq, r.ts, r.source) for r in rows] == [
        (5, at(2), "fill"),  # f1
        (6, at(3), "fill"),  # f2
        (7, at(60), "snapshot"),
        (10, at(62), "fill"),  # f3
        (13, at(64), "fill"),  # f4
        (14, at(120), "snapshot"),
        (15, at(121), "funding"),
        (18, at(125), "fill"),  # f5
        (20, at(180), "snapshot"),
        (24, at(183), "fill"),  # f6
        (27, at(185), "fill"),  # f7
        (29, at(240), "snapshot"),
    ]
    # Quote amounts from the docstring's table, x 1e8.
    cash = [9949.95, 9898.899, 9898.899, 10003.774, 10043.734, 10043.734, 10043.744]
    cash += [9986.687, 9986.687, 10005.1685, 9994.1575, 9994.1575]
    assert [r.cash for r in rows] == [round(c * Q) for c in cash]
    # equity = cash + qty x mark; a fill row marks at the last known price (f2: 102.00;
    # the funding row: the snapshot's 198.00, later than the last fill's 200.00)
    equity = [9999.95, 10000.899, 10001.899, 10003.774, 10003.734, 10004.134, 10004.144]
    equity += [10005.687, 10005.387, 10005.1685, 10005.1575, 10005.2575]
    assert [r.equity for r in rows] == [round(e * Q) for e in equity]
    realised = [0, 0, 0, 4, 4, 4, 4, 6, 6, 5.5, 5.5, 5.5]
    assert [r.realised for r in rows] == [round(x * Q) for x in realised]
    unrealised = [0, 1, 2, 0, 0, 0.4, 0.4, 0, -0.3, 0, 0, 0.1]
    assert [r.unrealised for r in rows] == [round(x * Q) for x in unrealised]
    fees = [0.05, 0.101, 0.101, 0.206, 0.246, 0.246, 0.246, 0.303, 0.303, 0.3215, 0.3325, 0.3325]
    assert [r.fees for r in rows] == [round(x * Q) for x in fees]
    assert [r.funding for r in rows] == [0] * 6 + [1_000_000] * 6
    assert [r.impact for r in rows] == [0] * 3 + [2_000_000] * 9
    assert [r.slippage for r in rows] == [0] * 3 + [1_000_000] * 9
    assert json.loads(rows[7].positions) == [
        {"instrument": PERP, "qty": "0.10000", "cost": "19.00000000", "mark": "190.00"}
    ]
    assert json.loads(rows[4].positions) == [
        {"instrument": PERP, "qty": "-0.20000", "cost": "-40.00000000", "mark": "200.00"}
    ]
    assert json.loads(rows[3].positions) == []
    # The replay agrees with every journaled snapshot: no warning.
    assert project_session(SESSION).warnings == []


def test_a_journaled_snapshot_that_disagrees_is_a_warning() -> None:
    events = session_body("s1")
    bad = events[6]
    assert isinstance(bad, PortfolioSnapshot)
    events[6] = msgspec.structs.replace(bad, cash=bad.cash + 1)
    proj = project_session(session_events(events))
    assert len(proj.warnings) == 1
    assert "seq 7" in proj.warnings[0] and "cash 989889900001 vs 989889900000" in proj.warnings[0]
    # The stored row is the replay, not the journaled number.
    assert proj.tables[PORTFOLIO_STATE][2].cash == 989_889_900_000  # type: ignore[union-attr]


def test_trade_decisions_count_orders_fills_and_fees() -> None:
    rows = trade_decisions(SESSION)
    assert [(r.decision_id, r.action, r.orders, r.filled_size, r.fees) for r in rows] == [
        ("d1", "buy", 1, 100_000, 10_100_000),  # f1 + f2
        ("d2", "sell", 1, 100_000, 10_500_000),
        ("d3", "sell", 1, 20_000, 4_000_000),
        ("d4", "buy", 1, 30_000, 5_700_000),
        ("d5", "hold", 0, 0, 0),
        ("d6", "sell", 1, 10_000, 1_850_000),
        ("d7", "buy", 1, 10_000, 1_100_000),  # half of o6 filled, then cancelled
    ]
    first = rows[0]
    assert (first.ts, first.strategy, first.exchange, first.symbol) == (
        at(1),
        "hand",
        "BINANCE",
        "BTC-USDT",
    )
    assert (first.reasoning, first.model_id, first.confidence) == ("buy BTC-USDT", "m1", 0.75)
    assert json.loads(first.features) == {"imbalance": 0.5, "spread_bp": 1.25}


def test_performance_metrics_by_hand() -> None:
    m = performance_metrics(SESSION)
    snap_equity = [1_000_189_900_000, 1_000_413_400_000, 1_000_538_700_000, 1_000_525_750_000]
    returns = [b / a - 1 for a, b in itertools.pairwise(snap_equity)]
    # 525_600 one-minute periods in a 365-day year
    sharpe = statistics.fmean(returns) / statistics.stdev(returns) * math.sqrt(525_600)
    assert m == PerformanceMetricsRow(
        session_id="s1",
        strategy="hand",
        start_ts=T0,
        end_ts=at(250),
        ended=1,
        initial_cash=10_000 * Q,
        final_equity=1_000_525_750_000,
        pnl=525_750_000,  # realised 5.50 + unrealised 0.10 - fees 0.3325 - impact 0.02 + 0.01
        total_return=525_750_000 / (10_000 * Q),
        # peak 10005.687 (after f5), trough 10005.1575 (after f7)
        max_drawdown=52_950_000 / 1_000_568_700_000,
        sharpe=sharpe,
        round_trips=3,
        win_rate=2 / 3,
        profit_factor=(377_400_000 + 193_200_000) / 53_750_000,
        exposure=m.exposure,
        buy_and_hold=m.buy_and_hold,
        fills=7,
        fees=33_250_000,
        impact=2_000_000,
        funding=1_000_000,
        slippage=1_000_000,
    )
    assert json.loads(m.exposure) == {"BTC": 1_110_000_000 / 1_000_525_750_000}
    assert json.loads(m.buy_and_hold) == {
        BTC: {"first": "100.00", "last": "111.00", "return": 111 / 100 - 1},
        PERP: {"first": "200.00", "last": "185.00", "return": 18_500 / 20_000 - 1},
    }


def test_metric_functions_on_hand_made_series() -> None:
    # peak 120 then 90: drawdown 30/120 = 0.25; the later 100 -> 80 (0.2 of 100) is smaller
    # than its own peak 120's drawdown (40/120 = 1/3), which is the maximum.
    assert max_drawdown([100, 120, 90, 100, 80, 130]) == pytest.approx(40 / 120)
    assert max_drawdown([100, 101, 102]) == 0.0
    assert max_drawdown([]) == 0.0
    assert win_rate([10, -5, 0, 7]) == 0.5  # 0 is not a win
    assert win_rate([]) is None
    assert profit_factor([10, -5, 0, 7]) == 17 / 5
    assert profit_factor([10, 7]) is None  # no losing trip
    # returns +10 %, -10 %, +10 %: mean 1/30, sample stdev 0.2/sqrt(3) -> 1/sqrt(12) per
    # period; 12 periods a year (interval = 365 days / 12) -> Sharpe 1.0.
    interval = 365 * 86_400_000 // 12
    assert sharpe_ratio([1000, 1100, 990, 1089], interval) == pytest.approx(1.0)
    assert sharpe_ratio([1000, 1100], interval) is None  # one return
    assert sharpe_ratio([1000, 1100, 1210], interval) is None  # zero variance
    assert sharpe_ratio([1000, 1100, 990, 1089], 0) is None


def test_flip_splits_costs_and_average_prices_round_half_away() -> None:
    sid = "flip"
    events: list[Event] = [
        started(sid),
        fill(1, "a", "o", "BTC-USDT", "buy", 10_000, 100_000, 7),  # 1.0 @ 100.00
        fill(2, "b", "o", "BTC-USDT", "buy", 10_001, 200_000, 7),  # 2.0 @ 100.01
        # sell 4.0 @ 100.05: closes 3.0 (fee 11 x 3/4 = 8.25 -> 8, impact 5 x 3/4 -> 3),
        # opens a 1.0 short with the rest (fee 3, impact 2).
        fill(3, "c", "o", "BTC-USDT", "sell", 10_005, 400_000, 11, impact_cost=5),
        fill(4, "d", "o", "BTC-USDT", "buy", 10_003, 100_000, 1),
    ]
    first, second = trade_history(session_events(events))
    # entries (1 x 10000 + 2 x 10001) / 3 = 10000.67 -> 10001
    assert (first.direction, first.size, first.avg_entry, first.avg_exit) == (
        "long",
        300_000,
        10_001,
        10_005,
    )
    # gross: 3.0 x 100.05 - (100.00 + 200.02) = 0.13 quote
    assert (first.gross_pnl, first.fees, first.impact, first.fills) == (13_000_000, 22, 3, 3)
    assert first.net_pnl == 13_000_000 - 22 - 3
    assert (second.direction, second.entry_ts, second.size) == ("short", at(3), 100_000)
    assert (second.avg_entry, second.avg_exit, second.exit_ts) == (10_005, 10_003, at(4))
    # 1.0 x (100.05 - 100.03) = 0.02
    assert (second.gross_pnl, second.fees, second.impact, second.fills) == (2_000_000, 4, 2, 2)


def test_bad_sessions_are_refused_with_the_reason() -> None:
    with pytest.raises(ProjectionError, match="starts with SessionStarted"):
        session_events([fill(1, "a", "o", "BTC-USDT", "buy", 1, 1, 0)])
    unknown = [started("x"), fill(1, "a", "o", "ETH-USDT", "buy", 1, 1, 0)]
    with pytest.raises(ProjectionError, match="seq 2: unknown instrument BINANCE:ETH-USDT"):
        project_session(session_events(unknown))


# ---------------------------------------------------------------------------------------
# Read-model storage, every backend
# ---------------------------------------------------------------------------------------

COLS = [ReadModelColumn("n", "int"), ReadModelColumn("x", "float"), ReadModelColumn("t", "text")]


def test_read_model_storage_round_trip_and_replace(journal: Journal) -> None:
    empty = journal.read_read_model("demo_rows")
    assert (empty.columns, empty.rows) == ((), [])
    assert journal.write_read_model("demo_rows", "b", COLS, [(1, 0.5, "x"), (2, 1, None)]) == 2
    assert journal.write_read_model("demo_rows", "a", COLS, [(3, None, "y")]) == 1
    everything = journal.read_read_model("demo_rows")
    assert everything.columns == ("session_id", "n", "x", "t")
    # ordered by session id, then as written; an int in a float column is a float
    assert everything.rows == [("a", 3, None, "y"), ("b", 1, 0.5, "x"), ("b", 2, 1.0, None)]
    assert isinstance(everything.rows[2][2], float)
    # a rewrite replaces only that session's rows
    journal.write_read_model("demo_rows", "b", COLS, [(9, 9.0, "z")])
    assert journal.read_read_model("demo_rows", "b").rows == [("b", 9, 9.0, "z")]
    assert journal.read_read_model("demo_rows", "a").rows == [("a", 3, None, "y")]
    assert journal.read_read_model("demo_rows", "nobody").rows == []
    journal.drop_read_model("demo_rows")
    journal.drop_read_model("demo_rows")  # absent: nothing happens
    assert journal.read_read_model("demo_rows").columns == ()


def test_read_model_storage_refuses_bad_input_and_changes_nothing(journal: Journal) -> None:
    journal.write_read_model("demo_rows", "a", COLS, [(1, 1.0, "k")])
    before = journal.read_read_model("demo_rows")
    with pytest.raises(JournalError, match="row 1 column n \\(int\\) cannot hold 'two'"):
        journal.write_read_model("demo_rows", "a", COLS, [(1, 1.0, "k"), ("two", 1.0, "k")])
    with pytest.raises(JournalError, match="cannot hold True"):
        journal.write_read_model("demo_rows", "a", COLS, [(True, 1.0, "k")])
    with pytest.raises(JournalError, match="cannot hold"):
        journal.write_read_model("demo_rows", "a", COLS, [(2**63, 1.0, "k")])
    with pytest.raises(JournalError, match="3 columns"):
        journal.write_read_model("demo_rows", "a", COLS, [(1, 1.0)])
    with pytest.raises(JournalError, match="has columns \\(n int, x float, t text\\)"):
        journal.write_read_model("demo_rows", "a", COLS[:2], [(1, 1.0)])
    for name in ("events", "streams", "meta", "Bad-Name", "x; DROP TABLE events"):
        with pytest.raises(JournalError, match="not allowed"):
            journal.write_read_model(name, "a", COLS, [])
        with pytest.raises(JournalError, match="not allowed"):
            journal.read_read_model(name)
        with pytest.raises(JournalError, match="not allowed"):
            journal.drop_read_model(name)
    with pytest.raises(JournalError, match="column name 'session_id' is not allowed"):
        journal.write_read_model("other", "a", [ReadModelColumn("session_id", "text")], [])
    assert journal.read_read_model("demo_rows") == before


def test_read_model_writes_join_a_failed_transaction(journal: Journal) -> None:
    journal.write_read_model("demo_rows", "a", COLS, [(1, 1.0, "k")])
    with pytest.raises(RuntimeError, match="boom"), journal.transaction():
        journal.write_read_model("demo_rows", "a", COLS, [(2, 2.0, "k")])
        journal.write_read_model("fresh", "a", COLS, [(3, 3.0, "k")])
        journal.drop_read_model("demo_rows")
        raise RuntimeError("boom")
    assert journal.read_read_model("demo_rows").rows == [("a", 1, 1.0, "k")]
    assert journal.read_read_model("fresh").columns == ()


def test_sqlite_read_models_are_real_tables_beside_the_journal(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    with SqliteJournal(path) as j:
        write_session(j, "s1")
        rebuild(j)
    with sqlite3.connect(path) as db:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert set(TABLES) <= tables
        (n,) = db.execute("SELECT count(*) FROM trade_history WHERE session_id = 's1'").fetchone()
        assert n == 4
        net = [r[0] for r in db.execute("SELECT net_pnl FROM trade_history ORDER BY row_no")]
        assert net == [377_400_000, 193_200_000, -53_750_000, -1_100_000]
    with SqliteJournal(path) as j:  # reopens: the journal is untouched and still verifies
        assert j.verify(session_stream("s1")).ok
        assert len(j.read_read_model(PORTFOLIO_STATE, "s1").rows) == 12


# ---------------------------------------------------------------------------------------
# Rebuild
# ---------------------------------------------------------------------------------------


def test_rebuild_every_session_twice_gives_identical_rows(journal: Journal) -> None:
    write_session(journal, "s1")
    write_session(journal, "s2")
    # rows of a session that is not in the journal (any more): a full rebuild drops them
    stale = [storage_row(r) for r in trade_decisions(SESSION)]
    journal.write_read_model(TRADE_DECISIONS, "gone", storage_columns(TRADE_DECISIONS), stale)
    first = rebuild(journal)
    assert journal.read_read_model(TRADE_DECISIONS, "gone").rows == []
    assert first.warnings == []
    counts = {PORTFOLIO_STATE: 12, TRADE_HISTORY: 4, TRADE_DECISIONS: 7, PERFORMANCE_METRICS: 1}
    counts["arbitrage_opportunities"] = 0  # no arbitrage strategy in this session
    assert first.rows == {"s1": counts, "s2": counts}
    stored = {t: journal.read_read_model(t) for t in TABLES}
    assert rebuild(journal) == first
    assert {t: journal.read_read_model(t) for t in TABLES} == stored
    assert rebuild(journal, "s2").rows == {"s2": counts}
    assert {t: journal.read_read_model(t) for t in TABLES} == stored
    # what is stored is the projection, value for value
    expected = [msgspec.structs.astuple(r) for r in trade_history(load_session(journal, "s1"))]
    assert journal.read_read_model(TRADE_HISTORY, "s1").rows == expected


def test_rebuild_of_a_bad_session_writes_nothing(journal: Journal) -> None:
    write_session(journal, "s1")
    rebuild(journal)
    before = {t: journal.read_read_model(t) for t in TABLES}
    write_session(journal, "zz", [started("zz"), fill(1, "a", "o", "ETH-USDT", "buy", 1, 1, 0)])
    with pytest.raises(ProjectionError, match="session zz seq 2"):
        rebuild(journal)
    with pytest.raises(ProjectionError, match="no session 'nope'"):
        rebuild(journal, "nope")
    assert {t: journal.read_read_model(t) for t in TABLES} == before


# ---------------------------------------------------------------------------------------
# The CLI: tickerml project
# ---------------------------------------------------------------------------------------


def test_cli_rebuild_then_show(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "j.db"
    with SqliteJournal(db) as j:
        write_session(j, "s1")
    dsn = f"sqlite:///{db}"
    assert main(["project", "--journal", dsn, "--rebuild"]) == 0
    summary = capsys.readouterr().out
    assert "s1" in summary and "12" in summary

    assert main(["project", "--journal", dsn, "--show", "trade_history", "--format", "json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(lines) == 4
    assert lines[0] == {
        "session_id": "s1",
        "instrument": BTC,
        "direction": "long",
        "entry_ts": at(2),
        "exit_ts": at(62),
        "size": "1.00000",
        "avg_entry": "101.00",
        "avg_exit": "105.00",
        "gross_pnl": "4.00000000",
        "fees": "0.20600000",
        "impact": "0.02000000",
        "funding": "0.00000000",
        "net_pnl": "3.77400000",
        "fills": 3,
        "toxic_fills": 1,
        "holding_ns": 60 * S,
    }
    assert (lines[3]["exit_ts"], lines[3]["avg_exit"], lines[3]["net_pnl"]) == (
        None,
        None,
        "-0.01100000",
    )

    args = ["project", "--journal", dsn, "--show", "performance_metrics", "--format", "csv"]
    assert main(args) == 0
    (row,) = csv.DictReader(io.StringIO(capsys.readouterr().out))
    assert (row["session_id"], row["final_equity"], row["fills"]) == ("s1", "10005.25750000", "7")
    assert row["sharpe"] != "" and row["profit_factor"] != ""

    show = ["project", "--journal", dsn, "--show", "portfolio_state", "--limit", "2"]
    assert main([*show, "--session", "s1"]) == 0
    text = capsys.readouterr().out
    assert "2 of 12 rows" in text and "9949.95000000" in text


def test_cli_rebuild_with_show_keeps_json_on_stdout(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "j.db"
    with SqliteJournal(db) as j:
        write_session(j, "s1")
    args = ["project", "--journal", f"sqlite:///{db}", "--rebuild", "--session", "s1"]
    assert main([*args, "--show", "trade_decisions", "--format", "json"]) == 0
    captured = capsys.readouterr()
    rows = [json.loads(line) for line in captured.out.splitlines()]
    assert [r["decision_id"] for r in rows] == ["d1", "d2", "d3", "d4", "d5", "d6", "d7"]
    assert rows[0]["features"] == {"imbalance": 0.5, "spread_bp": 1.25}
    assert (rows[0]["filled_size"], rows[0]["fees"]) == ("1.00000", "0.10100000")
    assert "read models rebuilt" in captured.err


def test_cli_bad_usage_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dsn = f"sqlite:///{tmp_path / 'j.db'}"
    assert main(["project", "--journal", dsn, "--show", "trades_and_stuff"]) == 2
    err = capsys.readouterr().err
    assert "unknown read model 'trades_and_stuff'" in err
    assert all(t in err for t in TABLES)
    assert main(["project", "--journal", dsn]) == 2
    assert "--rebuild and/or --show" in capsys.readouterr().err
    assert main(["project", "--journal", dsn, "--rebuild", "--session", "nope"]) == 2
    assert "no session 'nope'" in capsys.readouterr().err
    assert main(["project", "--journal", dsn, "--show", "trade_history"]) == 0
    assert "has not been built" in capsys.readouterr().err
