"""kernel.funding and ``tickerml funding``: funding times, alerts, expected cost, the report.

Numbers worked by hand. Instruments: BTC-USDT-PERP at price_decimals 2, size_decimals 3
(60000.00 is 6_000_000 price units, 0.5 BTC is 500 size units); a notional in MONEY
units (1e-8 USDT) is ``price x size x 1000``. Rates in RATE units (1e-10): 0.1 % is
10_000_000, 0.01 % is 1_000_000.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import msgspec
import pytest
import yaml

from adapters.config_loader import load_config
from adapters.journal import open_journal
from adapters.journal.base import Journal, session_stream
from adapters.journal.memory import MemoryJournal
from journal_tools.cli import main
from journal_tools.funding import FundingRow, funding_report
from kernel.config import (
    AppConfig,
    EngineConfig,
    InstrumentsConfig,
    MonitoringConfig,
    canonical_json,
)
from kernel.engine import Engine
from kernel.events import (
    Alert,
    BookSnapshot,
    Event,
    Fill,
    FundingPayment,
    FundingRate,
    MarkPrice,
    SessionStarted,
    Trade,
)
from kernel.funding import (
    FundingMonitor,
    FundingView,
    next_funding_time,
    rate_percent,
    utc_text,
)
from kernel.instruments import Instrument, InstrumentRegistry

NS = 1_000_000_000
MS = 1_000_000
H = 3_600 * NS
T0 = 1_735_689_600 * NS  # 2025-01-01T00:00:00Z
USDT = 100_000_000
BIN = "BINANCE:BTC-USDT-PERP"
KU = "KUCOIN:BTC-USDT-PERP"


def perp(exchange: str, interval_s: int = 28_800) -> Instrument:
    return Instrument(
        exchange=exchange,
        symbol="BTC-USDT-PERP",
        kind="perp",
        base="BTC",
        quote="USDT",
        price_decimals=2,
        size_decimals=3,
        funding_interval_s=interval_s,
    )


SPOT = Instrument(
    exchange="BINANCE",
    symbol="BTC-USDT",
    kind="spot",
    base="BTC",
    quote="USDT",
    price_decimals=2,
    size_decimals=3,
)
INSTRUMENTS = [perp("BINANCE"), perp("KUCOIN", 14_400), SPOT]


def rate(t: int, value: int, exchange: str = "BINANCE", next_ts: int = 0) -> FundingRate:
    """A FundingRate at exchange time ``t``, received 50 ms later."""
    return FundingRate(t, t + 50 * MS, exchange, "BTC-USDT-PERP", 0, value, next_ts)


def mark(t: int, price: int, exchange: str = "BINANCE") -> MarkPrice:
    return MarkPrice(t, t + 50 * MS, exchange, "BTC-USDT-PERP", 0, price)


def fill(t: int, side: Literal["buy", "sell"], size: int, price: int = 6_000_000) -> Fill:
    return Fill(t, t, f"f{t}", f"o{t}", "BINANCE", "BTC-USDT-PERP", side, price, size, 0, "taker")


def payment(t: int, amount: int, position: int, value: int = 0) -> FundingPayment:
    return FundingPayment(t, t, "BINANCE", "BTC-USDT-PERP", value, position, amount)


# -- funding times -----------------------------------------------------------------------


def test_time_to_next_funding_around_eight_utc() -> None:
    mon = FundingMonitor(INSTRUMENTS)
    before = T0 + 8 * H - 1 * MS  # 07:59:59.999
    assert mon.next_funding(BIN, before) == T0 + 8 * H
    assert mon.time_to_funding(BIN, before) == 1 * MS
    # at 08:00:00.000 the 08:00 funding is happening: the next one is 16:00
    assert mon.next_funding(BIN, T0 + 8 * H) == T0 + 16 * H
    assert mon.time_to_funding(BIN, T0 + 8 * H) == 8 * H
    assert mon.time_to_funding(BIN, T0 + 8 * H + 1) == 8 * H - 1
    assert mon.next_funding(BIN, T0) == T0 + 8 * H  # midnight -> 08:00
    assert mon.next_funding(BIN, T0 + 16 * H) == T0 + 24 * H  # 16:00 -> next day 00:00
    # a 4-hour perp: 04:00, 08:00, ...
    assert mon.time_to_funding(KU, T0 + 4 * H - 1 * MS) == 1 * MS
    assert mon.next_funding(KU, T0 + 4 * H) == T0 + 8 * H
    # an unknown instrument gets the 8-hour default
    assert mon.next_funding("X:Y-USDT-PERP", T0 + 1) == T0 + 8 * H


def test_the_venues_next_funding_time_wins_while_ahead() -> None:
    mon = FundingMonitor(INSTRUMENTS)
    mon.apply(rate(T0 + 1 * H, 1_000_000, next_ts=T0 + 6 * H))  # the venue says 06:00
    assert mon.next_funding(BIN, T0 + 5 * H) == T0 + 6 * H
    mon.apply(rate(T0 + 5 * H + 30 * 60 * NS, 1_000_000))  # no time sent: keeps 06:00
    assert mon.next_funding(BIN, T0 + 5 * H + 30 * 60 * NS) == T0 + 6 * H
    # once 06:00 has come, the UTC grid again
    assert mon.next_funding(BIN, T0 + 6 * H) == T0 + 8 * H
    assert next_funding_time(T0 + 6 * H, 28_800, T0 + 6 * H) == T0 + 8 * H
    assert next_funding_time(T0 + 6 * H - 1, 28_800, T0 + 6 * H) == T0 + 6 * H


def test_funding_times_agree_with_the_engines_settlement_schedule() -> None:
    eng = Engine(EngineConfig(), INSTRUMENTS, None, seed=0)
    mon = FundingMonitor(INSTRUMENTS)
    inst = perp("BINANCE")
    for now, venue in [
        (T0, 0),
        (T0 + 8 * H - 1 * MS, 0),
        (T0 + 8 * H, 0),
        (T0 + 3 * H, T0 + 6 * H),
        (T0 + 6 * H, T0 + 6 * H),
    ]:
        eng.now = now
        eng.funding[BIN] = (1, venue)
        mon.restore(msgspec.structs.replace(mon.state(), rates=[(BIN, 1, now, venue)]))
        assert mon.next_funding(BIN, now) == eng._next_funding(inst)


# -- alerts ------------------------------------------------------------------------------


def test_alert_strictly_above_the_threshold() -> None:
    mon = FundingMonitor(INSTRUMENTS, alert_rate=10_000_000)
    assert mon.apply(rate(T0 + 1 * H, 10_000_000)) == ()  # exactly 0.1 %: quiet
    assert mon.apply(rate(T0 + 1 * H, -10_000_000)) == ()
    (alert,) = mon.apply(rate(T0 + 1 * H + NS, 10_000_001))
    assert alert == Alert(
        ts_event=T0 + 1 * H + NS + 50 * MS,  # the kernel clock: the rate's receive time
        ts_recv=T0 + 1 * H + NS + 50 * MS,
        severity="warning",
        rule="funding_rate_high",
        message="BINANCE:BTC-USDT-PERP funding rate +0.10000001% is beyond +-0.1000%; "
        "next funding 2025-01-01T08:00:00Z",
    )


def test_alerts_deduplicated_per_instrument_per_cycle() -> None:
    mon = FundingMonitor(INSTRUMENTS)
    got = [
        mon.apply(ev)
        for ev in [
            rate(T0 + 1 * H, 15_000_000),  # alert: cycle ending 08:00
            rate(T0 + 5 * H, 20_000_000),  # same cycle: quiet
            rate(T0 + 6 * H, 500_000),  # back to normal ...
            rate(T0 + 7 * H, 12_000_000),  # ... and high again in the same cycle: quiet
            rate(T0 + 8 * H - 1 * MS, 20_000_000),  # 07:59:59.999 exchange time: quiet
            rate(T0 + 8 * H, 15_000_000),  # 08:00:00.000: the cycle ending 16:00 alerts
            rate(T0 + 9 * H, -12_000_000),  # negative, same cycle: quiet
            rate(T0 + 9 * H, -12_000_000, "KUCOIN"),  # another perp: its own alert
            rate(T0 + 16 * H, -11_000_000),  # next cycle again
        ]
    ]
    fired = [(i, a[0].message) for i, a in enumerate(got) if a]
    assert fired == [
        (0, f"{BIN} funding rate +0.1500% is beyond +-0.1000%; next funding 2025-01-01T08:00:00Z"),
        (5, f"{BIN} funding rate +0.1500% is beyond +-0.1000%; next funding 2025-01-01T16:00:00Z"),
        (7, f"{KU} funding rate -0.1200% is beyond +-0.1000%; next funding 2025-01-01T12:00:00Z"),
        (8, f"{BIN} funding rate -0.1100% is beyond +-0.1000%; next funding 2025-01-02T00:00:00Z"),
    ]
    assert mon.rate(BIN) == -11_000_000 and mon.rate(KU) == -12_000_000


def test_the_cycle_is_decided_by_exchange_time() -> None:
    """Received after 08:00 but sent at 07:59:59.990: it belongs to the 08:00 cycle."""
    mon = FundingMonitor(INSTRUMENTS)
    assert mon.apply(rate(T0 + 1 * H, 15_000_000))
    late = FundingRate(
        T0 + 8 * H - 10 * MS, T0 + 8 * H + 40 * MS, "BINANCE", "BTC-USDT-PERP", 0, 15_000_000
    )
    assert mon.apply(late) == ()


def test_alert_threshold_from_monitoring_yaml() -> None:
    assert MonitoringConfig().funding_rate_alert_units == 10_000_000
    assert MonitoringConfig(funding_rate_alert="0.0005").funding_rate_alert_units == 5_000_000
    assert load_config().monitoring.funding_rate_alert_units == 10_000_000
    with pytest.raises(msgspec.ValidationError, match="more than 10 decimals"):
        msgspec.convert({"funding_rate_alert": "0.00000000001"}, MonitoringConfig)
    with pytest.raises(msgspec.ValidationError, match="must be >= 0"):
        msgspec.convert({"funding_rate_alert": "-0.001"}, MonitoringConfig)
    with pytest.raises(msgspec.ValidationError, match="Expected `str`, got `float`"):
        msgspec.convert({"funding_rate_alert": 0.001}, MonitoringConfig)
    with pytest.raises(ValueError, match="alert_rate must be >= 0"):
        FundingMonitor(INSTRUMENTS, alert_rate=-1)


# -- expected cost and funding paid ------------------------------------------------------


def test_expected_cost_long_pays_short_receives() -> None:
    mon = FundingMonitor(INSTRUMENTS)
    mon.apply(rate(T0, 1_000_000))  # +0.01 %
    assert mon.expected_cost(BIN, 500) is None  # no mark yet
    mon.apply(mark(T0, 6_000_000))  # 60000.00
    # 0.5 BTC x 60000.00 = 30000 USDT; x 0.01 % = 3 USDT
    assert mon.expected_cost(BIN, 500) == 3 * USDT
    assert mon.expected_cost(BIN, -500) == -3 * USDT
    mon.apply(rate(T0 + 1, -1_000_000))  # a negative rate: longs receive
    assert mon.expected_cost(BIN, 500) == -3 * USDT
    assert mon.expected_cost(BIN, -500) == 3 * USDT
    # 0.001 BTC x 10000.00 = 10 USDT = 1e9 MONEY; x 15e-10 = 1.5 -> 2, half away from zero
    mon.apply(rate(T0 + 2, 15))
    assert mon.expected_cost(BIN, 1, mark=1_000_000) == 2
    assert mon.expected_cost(BIN, -1, mark=1_000_000) == -2
    assert mon.expected_cost(KU, 500) is None  # no rate for it
    assert mon.expected_cost("X:Y-USDT-PERP", 1, mark=1) is None  # unknown instrument


def test_positions_from_fills_and_funding_paid_from_payments() -> None:
    mon = FundingMonitor(INSTRUMENTS)
    for ev in [
        rate(T0, 1_000_000),
        mark(T0, 6_000_000),
        fill(T0 + 1 * H, "buy", 500),
        payment(T0 + 8 * H, -300_000_000, 500),
        fill(T0 + 9 * H, "sell", 200),
        payment(T0 + 16 * H, -250_000_000, 300),
        payment(T0 + 24 * H, 100_000_000, 300),
    ]:
        assert mon.apply(ev) == ()
    assert mon.position(BIN) == 300
    assert mon.expected_cost(BIN) == 180_000_000  # 0.3 x 60000 x 0.01 % = 1.8 USDT
    assert mon.funding_paid(BIN) == (450_000_000, 3)
    assert mon.funding_paid(KU) == (0, 0)
    mon.set_position(BIN, -100)
    assert mon.expected_cost(BIN) == -60_000_000
    now = T0 + 24 * H + 1 * H
    assert mon.view(BIN, now) == FundingView(
        key=BIN,
        now=now,
        rate=1_000_000,
        rate_ts=T0,
        next_funding_ts=T0 + 32 * H,
        time_to_funding_ns=7 * H,
        mark_price=6_000_000,
        position=-100,
        expected_cost=-60_000_000,
        funding_paid=450_000_000,
        payments=3,
    )


def test_state_round_trip_keeps_the_dedup() -> None:
    mon = FundingMonitor(INSTRUMENTS)
    for ev in [
        rate(T0 + 1 * H, 15_000_000, next_ts=T0 + 8 * H),
        mark(T0, 6_000_000),
        fill(T0, "buy", 500),
        payment(T0 + 1, -5, 500),
    ]:
        mon.apply(ev)
    other = FundingMonitor(INSTRUMENTS, alert_rate=1)
    other.restore(
        msgspec.msgpack.decode(msgspec.msgpack.encode(mon.state()), type=type(mon.state()))
    )
    assert other.state() == mon.state()
    assert other.view(BIN, T0 + 2 * H) == mon.view(BIN, T0 + 2 * H)
    assert other.apply(rate(T0 + 2 * H, 15_000_000)) == ()  # already alerted this cycle
    assert other.apply(rate(T0 + 8 * H, 15_000_000))  # the next cycle alerts


def test_text_helpers() -> None:
    assert rate_percent(10_000_000) == "+0.1000"
    assert rate_percent(-1_234_567) == "-0.01234567"
    assert rate_percent(0) == "+0.0000"
    assert rate_percent(10_000_000_000) == "+100.0000"
    assert rate_percent(15_000_000, 8) == "+0.15000000"
    for ns in [
        0,
        T0,
        T0 + 8 * H,
        1_709_251_199_999_000_000,
        951_782_400 * NS + 1,
        4_102_444_800 * NS,
    ]:
        dt = datetime.fromtimestamp(ns // NS, UTC)
        ms = (ns % NS) // MS
        expect = dt.strftime("%Y-%m-%dT%H:%M:%S") + (f".{ms:03d}" if ns % NS else "") + "Z"
        assert utc_text(ns) == expect
    assert utc_text(1_709_251_199_999_000_000) == "2024-02-29T23:59:59.999Z"


# -- tickerml funding --------------------------------------------------------------------


def market_events() -> dict[str, list[Event]]:
    binance: list[Event] = [
        BookSnapshot(T0, T0 + 10 * MS, "BINANCE", "BTC-USDT-PERP", 1, ((6_000_000, 1),), ()),
        rate(T0 + 1 * H, 1_000_000, next_ts=T0 + 8 * H),
        mark(T0 + 1 * H, 6_000_000),
        rate(T0 + 2 * H, 12_000_000, next_ts=T0 + 8 * H),  # alert (cycle 08:00)
        rate(T0 + 3 * H, 15_000_000, next_ts=T0 + 8 * H),  # same cycle
        rate(T0 + 9 * H, 11_000_000, next_ts=T0 + 16 * H),  # alert (cycle 16:00)
        mark(T0 + 9 * H, 6_100_000),
        rate(T0 + 10 * H, -3_000_000, next_ts=T0 + 16 * H),
    ]
    return {
        "md.BINANCE.BTC-USDT-PERP": binance,
        "md.KUCOIN.BTC-USDT-PERP": [rate(T0 + 5 * H, 500_000, "KUCOIN")],
        "md.BINANCE.BTC-USDT": [
            Trade(T0, T0, "BINANCE", "BTC-USDT", 1, "t1", 6_000_000, 1, "buy"),
        ],
    }


def session_events() -> list[Event]:
    config = AppConfig(instruments=InstrumentsConfig(instruments=tuple(INSTRUMENTS)))
    return [
        SessionStarted(
            T0,
            T0,
            "s1",
            "replay",
            "h",
            1,
            "test",
            "hand",
            T0,
            T0 + 24 * H,
            config_json=canonical_json(config).decode(),
        ),
        fill(T0 + 30 * 60 * NS, "buy", 500),
        payment(T0 + 8 * H, -360_000_000, 500, 12_000_000),
        fill(T0 + 12 * H, "sell", 200),
        payment(T0 + 16 * H, 90_000_000, 300, -3_000_000),
    ]


def fill_journal(journal: Journal) -> None:
    for stream, events in market_events().items():
        journal.append(stream, events)
    journal.append(session_stream("s1"), session_events())


def test_report_over_the_whole_journal_with_a_session() -> None:
    journal = MemoryJournal()
    fill_journal(journal)
    report = funding_report(journal, InstrumentRegistry(INSTRUMENTS), session_id="s1")
    assert report.rows == [
        FundingRow(
            exchange="BINANCE",
            symbol="BTC-USDT-PERP",
            rates=5,
            first_ts=T0 + 1 * H,
            last_ts=T0 + 10 * H,
            last_rate=-3_000_000,
            min_rate=-3_000_000,
            max_rate=15_000_000,
            mean_rate=7_200_000,  # (1 + 12 + 15 + 11 - 3) / 5 x 1e6
            next_funding_ts=T0 + 16 * H,  # the venue's time after the last rate
            alerts=2,
            mark_price=6_100_000,
            funding_paid=270_000_000,  # 3.60 paid - 0.90 received
            payments=2,
            position=300,
            # 0.3 BTC x 61000.00 = 18300 USDT x -0.03 % = -5.49: received
            expected_cost=-549_000_000,
        ),
        FundingRow(
            exchange="KUCOIN",
            symbol="BTC-USDT-PERP",
            rates=1,
            first_ts=T0 + 5 * H,
            last_ts=T0 + 5 * H,
            last_rate=500_000,
            min_rate=500_000,
            max_rate=500_000,
            mean_rate=500_000,
            next_funding_ts=T0 + 8 * H,  # 4-hour grid after 05:00
            alerts=0,
            mark_price=0,
            funding_paid=0,
            payments=0,
            position=0,
            expected_cost=None,
        ),
    ]


def test_report_over_a_range_and_filters() -> None:
    journal = MemoryJournal()
    fill_journal(journal)
    report = funding_report(
        journal,
        InstrumentRegistry(INSTRUMENTS),
        start_ns=T0 + 2 * H,
        end_ns=T0 + 10 * H,  # exclusive: the 10:00 rate is out
        exchanges=["binance"],
        session_id="s1",
    )
    (row,) = report.rows
    assert (row.rates, row.last_rate, row.min_rate, row.max_rate) == (
        3,
        11_000_000,
        11_000_000,
        15_000_000,
    )
    assert row.mean_rate == 12_666_667  # 38e6 / 3 = 12_666_666.67
    assert (row.next_funding_ts, row.alerts, row.mark_price) == (T0 + 16 * H, 2, 6_100_000)
    # the 08:00 payment only; the position of the fills before 10:00
    assert (row.funding_paid, row.payments, row.position) == (360_000_000, 1, 500)
    # 0.5 BTC x 61000.00 = 30500 USDT x 0.11 % = 33.55 USDT
    assert row.expected_cost == 3_355_000_000
    plain = funding_report(journal, InstrumentRegistry(INSTRUMENTS), symbols=["BTC-USDT-PERP"])
    assert [r.exchange for r in plain.rows] == ["BINANCE", "KUCOIN"]
    assert plain.rows[0].funding_paid is None and plain.rows[0].expected_cost is None
    assert funding_report(journal, InstrumentRegistry(INSTRUMENTS), symbols=["BTC-USDT"]).rows == []


def test_cli_funding_table_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config_dir = tmp_path / "config"
    config_dir.mkdir()
    (config_dir / "instruments.yaml").write_text(
        yaml.safe_dump({"instruments": [msgspec.to_builtins(i) for i in INSTRUMENTS]})
    )
    (config_dir / "monitoring.yaml").write_text('funding_rate_alert: "0.00125"\n')
    dsn = f"sqlite:///{tmp_path / 'j.db'}"
    with open_journal(dsn) as journal:
        fill_journal(journal)
    base = ["--config-dir", str(config_dir), "funding", "--journal", dsn]
    assert main([*base, "--format", "json", "--session", "s1", "--exchange", "BINANCE"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["alert_rate"] == 12_500_000
    (row,) = doc["rows"]
    assert row["alerts"] == 1  # only 0.15 % is above 0.125 %
    assert (row["funding_paid"], row["expected_cost"]) == (270_000_000, -549_000_000)
    assert main([*base, "--from", "2025-01-01T02:00", "--to", "2025-01-01T10:00"]) == 0
    text = capsys.readouterr().out
    assert "BINANCE:BTC-USDT-PERP" in text and "KUCOIN:BTC-USDT-PERP" in text
    assert "+0.15000000" in text and "+0.12666667" in text and "2025-01-01T16:00:00Z" in text
    assert main([*base, "--session", "nope"]) == 2
    assert "no session 'nope'" in capsys.readouterr().err
