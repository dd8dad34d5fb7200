"""A replayed session for the dashboard tests: a deterministic 30-minute BTC-USDT market
(book and a trade every second, the mid walking down then up) traded by the periodic
taker (a market buy or sell of 0.1 BTC every 60 trades), with features sampled every
10 s and a portfolio snapshot every minute, replayed through ``run_session`` into a
SQLite journal. The expected page values are computed from the journaled events."""

from __future__ import annotations

from pathlib import Path

import msgspec

from adapters.journal.base import session_stream
from adapters.journal.sqlite import SqliteJournal
from journal_tools.session import run_session
from kernel.config import (
    AppConfig,
    EngineConfig,
    ExchangeConfig,
    ExchangesConfig,
    FeaturesConfig,
    InstrumentsConfig,
    LatencyProfile,
    PortfolioConfig,
    StrategyConfig,
    TradingConfig,
)
from kernel.events import BookSnapshot, Event, PortfolioSnapshot, Trade, decode
from kernel.features import FeatureConfig
from kernel.instruments import Instrument

S = 1_000_000_000
T0 = 1_767_225_600 * S  # 2026-01-01T00:00:00Z
BTC = Instrument(
    exchange="BINANCE",
    symbol="BTC-USDT",
    kind="spot",
    base="BTC",
    quote="USDT",
    price_decimals=1,
    size_decimals=3,
    taker_fee_ppm=500,
)
MINUTES = 30


def mid_at(i: int) -> int:
    """Mid in price units (0.1 USDT) at second i: down 3 USDT/s for 15 min, then up."""
    half = MINUTES * 30
    return 600_000 - 30 * i if i < half else 600_000 - 30 * half + 20 * (i - half)


def market() -> list[Event]:
    out: list[Event] = []
    for i in range(MINUTES * 60):
        t = T0 + i * S
        mid = mid_at(i)
        out.append(
            BookSnapshot(t, t, "BINANCE", "BTC-USDT", 0, ((mid - 5, 5_000),), ((mid + 5, 5_000),))
        )
        side = "buy" if i % 3 else "sell"
        price = mid + 5 if side == "buy" else mid - 5
        out.append(
            Trade(t + 1, t + 1, "BINANCE", "BTC-USDT", 0, f"t{i}", price, 10, side)  # type: ignore[arg-type]
        )
    return out


def config() -> AppConfig:
    instant = LatencyProfile(model="constant", entry_mean_ms=0, response_mean_ms=0)
    return AppConfig(
        instruments=InstrumentsConfig(instruments=(BTC,)),
        exchanges=ExchangesConfig(exchanges={"BINANCE": ExchangeConfig(latency=instant)}),
        trading=TradingConfig(
            engine=EngineConfig(
                portfolio=PortfolioConfig(initial_cash="10000", snapshot_interval_ms=60_000)
            ),
            features=FeaturesConfig(enabled=True, params=FeatureConfig(sample_interval_ns=10 * S)),
        ),
    )


STRATEGY = StrategyConfig(name="taker", params={"size": "0.100", "every": 60})


def make_journal(path: Path, session_id: str = "dash") -> SqliteJournal:
    journal = SqliteJournal(str(path))
    journal.append("md.BINANCE.BTC-USDT", market())
    run_session(journal, config(), strategy=STRATEGY, session_id=session_id)
    return journal


def session_events(journal: SqliteJournal, session_id: str) -> list[Event]:
    return [decode(r.payload) for r in journal.read(session_stream(session_id))]


def expected_last(events: list[Event]) -> dict[str, float]:
    """The last equity and drawdown (%, negative) from the journaled snapshots."""
    snaps = [e for e in events if isinstance(e, PortfolioSnapshot)]
    peak = 10_000 * 10**8
    dd = 0.0
    for s in snaps:
        peak = max(peak, s.equity)
        dd = -(peak - s.equity) * 100 / peak
    return {"equity": snaps[-1].equity / 10**8, "drawdown": dd, "snapshots": len(snaps)}


def copy_as_live(
    journal: SqliteJournal, source: str, target: str, upto: int
) -> tuple[list[Event], list[Event]]:
    """Write the first ``upto`` events of session ``source`` as session ``target`` (as a
    live session that has committed that far); return (written, the rest without the
    SessionEnded) so a test can commit the rest later."""
    events = session_events(journal, source)
    started = msgspec.structs.replace(events[0], session_id=target, mode="live")  # type: ignore[type-var]
    body = [started, *events[1:]]
    if type(body[-1]).__name__ == "SessionEnded":
        body.pop()
    journal.append(session_stream(target), body[:upto])
    return body[:upto], body[upto:]
