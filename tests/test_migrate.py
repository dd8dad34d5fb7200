"""``tickerml migrate``: SQLite -> PostgreSQL (and SQLite), verified, all or nothing; legacy
TickerML SQLite databases (ohlcv, trades, order_books) into events."""

from __future__ import annotations

import sqlite3
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from adapters.config_loader import load_config
from adapters.journal import open_journal
from adapters.journal.base import CONTROL_STREAM, Journal
from adapters.journal.postgres import PostgresJournal
from adapters.journal.sqlite import SqliteJournal
from journal_tools.cli import main
from journal_tools.legacy import LegacyError, LegacySource, legacy_symbol, timestamp_ns
from journal_tools.migrate import MigrationError, migrate, migrate_legacy
from kernel.events import Bar, BookDelta, BookSnapshot, Decision, Halt, Trade, decode
from kernel.instruments import InstrumentRegistry


def fill(journal: Journal) -> None:
    deltas = [
        BookDelta(
            ts_event=i,
            ts_recv=i + 1,
            exchange="BINANCE",
            symbol="BTC-USDT",
            seq=i,
            bids=((100_00 - i, 5),),
            asks=(),
        )
        for i in range(1, 2_501)
    ]
    journal.append("md.BINANCE.BTC-USDT", deltas)
    journal.append(
        "md.BINANCE.BTC-USDT",
        [
            Trade(
                ts_event=3_000,
                ts_recv=3_001,
                exchange="BINANCE",
                symbol="BTC-USDT",
                seq=9,
                trade_id="t9",
                price=100_00,
                size=1,
                side="buy",
            )
        ],
    )
    journal.append(CONTROL_STREAM, [Halt(ts_event=50, ts_recv=50, reason="drill")])
    journal.append(
        "session.s1",
        [
            Decision(
                ts_event=7,
                ts_recv=7,
                decision_id="d1",
                strategy="x",
                exchange="BINANCE",
                symbol="BTC-USDT",
                action="buy",
                reasoning="because",
            )
        ],
    )


def rows_of(journal: Journal) -> dict[str, list[tuple[int, bytes, bytes, bytes]]]:
    return {
        s.stream: [(r.seq, r.event_id, r.payload, r.hash) for r in journal.read(s.stream)]
        for s in journal.streams()
    }


@pytest.fixture
def source(tmp_path: Path) -> SqliteJournal:
    j = SqliteJournal(tmp_path / "src.db")
    fill(j)
    return j


def test_sqlite_to_postgres_identical(source: SqliteJournal, pg_dsn: str, pg_schema: str) -> None:
    target = PostgresJournal(pg_dsn, schema=pg_schema)
    report = migrate(source, target, sample_every=100)
    assert report.rows == 2_503 and not report.dry_run
    assert [(s.stream, s.rows) for s in report.streams] == [
        ("md.BINANCE.BTC-USDT", 2_501),
        ("md.CONTROL", 1),
        ("session.s1", 1),
    ]
    # rows 0, 100, ..., 2,500 (the last is one of them): 26 compared row by row
    assert report.streams[0].sampled == 26
    assert rows_of(target) == rows_of(source)  # same seqs, ids, payloads and hashes
    assert list(target.iter_payloads()) == list(source.iter_payloads())
    assert all(target.verify(s.stream).ok for s in target.streams())
    # running it again completes nothing and duplicates nothing
    migrate(source, target)
    assert rows_of(target) == rows_of(source)
    target.close()


def test_corrupted_source_row_fails_and_target_is_unchanged(
    source: SqliteJournal, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src_path = tmp_path / "src.db"
    source.close()
    conn = sqlite3.connect(src_path)
    conn.execute(
        "UPDATE events SET payload = X'C1' WHERE seq = 1200 AND sid = "
        "(SELECT sid FROM streams WHERE name = 'md.BINANCE.BTC-USDT')"
    )
    conn.commit()
    conn.close()
    target_path = tmp_path / "dst.db"
    target = SqliteJournal(target_path)
    target.append("session.keep", [Halt(ts_event=1, ts_recv=1, reason="already here")])
    before = rows_of(target)
    target.close()
    code = main(["migrate", "--from", f"sqlite:///{src_path}", "--to", f"sqlite:///{target_path}"])
    assert code == 1
    err = " ".join(capsys.readouterr().err.split())
    assert "source stream md.BINANCE.BTC-USDT is corrupt at seq 1200" in err
    assert "target unchanged" in err
    assert rows_of(SqliteJournal(target_path)) == before


def test_failure_inside_the_target_rolls_everything_back(
    source: SqliteJournal, tmp_path: Path
) -> None:
    target = SqliteJournal(tmp_path / "dst.db")
    # the target already holds a different event under the session stream's seq 1
    target.append("session.s1", [Halt(ts_event=1, ts_recv=1, reason="different")])
    before = rows_of(target)
    with pytest.raises(MigrationError, match=r"session.s1: target has 2 rows, source 1"):
        migrate(source, target)
    assert rows_of(target) == before  # md.* streams appended earlier were rolled back


def test_dry_run_and_cli(
    source: SqliteJournal, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = f"sqlite:///{tmp_path / 'src.db'}"
    dst = f"sqlite:///{tmp_path / 'dst.db'}"
    source.close()
    assert main(["migrate", "--from", src, "--to", dst, "--dry-run"]) == 0
    assert "would move: 2,503 rows in 3 streams" in capsys.readouterr().out
    assert open_journal(dst).streams() == []
    assert main(["migrate", "--from", src, "--to", dst]) == 0
    assert "moved and verified: 2,503 rows" in capsys.readouterr().out
    assert main(["migrate", "--from", src, "--to", src]) == 2


# -- legacy TickerML SQLite databases ------------------------------------------------------

LEGACY_T0_MS = 1_736_121_600_000  # 2025-01-06T00:00:00Z
MIN_NS = 60_000_000_000


def legacy_db(path: Path, corrupt_close_at: int | None = None) -> Path:
    """A legacy TickerML database: 150 ohlcv rows (BTC spelt two ways, ms and ISO text
    timestamps; ETH), 40 trades, 10 order-book snapshots."""
    conn = sqlite3.connect(path)
    conn.execute(
        "CREATE TABLE ohlcv (id INTEGER PRIMARY KEY AUTOINCREMENT, timestamp INTEGER NOT NULL, "
        "symbol TEXT NOT NULL, open REAL NOT NULL, high REAL NOT NULL, low REAL NOT NULL, "
        "close REAL NOT NULL, volume REAL NOT NULL, "
        "created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP, UNIQUE(timestamp, symbol))"
    )
    bars = []
    for i in range(120):
        ts: int | str = LEGACY_T0_MS + i * 60_000
        symbol = "BTC/USDT"
        if i >= 60:  # the same instrument, spelt as Binance does, with ISO text times
            ts = f"2025-01-06 {i // 60:02d}:{i % 60:02d}:00"
            symbol = "BTCUSDT"
        o = 94_000.10 + i
        bars.append((ts, symbol, o, o + 5.5, o - 3.25, o + 1.0, 1.234567))
    for i in range(30):
        o = 3_300.5 + i
        bars.append((LEGACY_T0_MS + i * 60_000, "ETH-USDT", o, o + 2, o - 1, o + 0.5, 10.5))
    conn.executemany(
        "INSERT INTO ohlcv (timestamp, symbol, open, high, low, close, volume) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        bars,
    )
    if corrupt_close_at is not None:
        conn.execute("UPDATE ohlcv SET close = 'abc' WHERE id = ?", (corrupt_close_at,))
    conn.execute(
        "CREATE TABLE trades (id INTEGER PRIMARY KEY AUTOINCREMENT, timestamp INTEGER, "
        "symbol TEXT, price REAL, quantity REAL, side TEXT, trade_id TEXT)"
    )
    conn.executemany(
        "INSERT INTO trades (timestamp, symbol, price, quantity, side, trade_id) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        [
            (
                LEGACY_T0_MS + 15_000 + i * 60_000,
                "BTC/USDT",
                94_000.5 + i,
                0.00125,
                "buy" if i % 2 else "SELL",
                str(7_000 + i),
            )
            for i in range(40)
        ],
    )
    conn.execute(
        "CREATE TABLE order_books (id INTEGER PRIMARY KEY AUTOINCREMENT, timestamp INTEGER, "
        "symbol TEXT, bids TEXT, asks TEXT)"
    )
    conn.executemany(
        "INSERT INTO order_books (timestamp, symbol, bids, asks) VALUES (?, ?, ?, ?)",
        [
            (
                LEGACY_T0_MS + 30_000 + i * 60_000,
                "BTCUSDT",
                "[[93999.5, 2], [94000.1, 0.5], [93990, 0]]",
                '[{"price": 94001.25, "quantity": 1.5}, {"price": 94000.2, "quantity": 0.25}]',
            )
            for i in range(10)
        ],
    )
    conn.commit()
    conn.close()
    return path


def registry() -> InstrumentRegistry:
    return InstrumentRegistry(list(load_config().instruments.instruments))


def test_legacy_database_migrates_with_exact_counts(
    tmp_path: Path, pg_dsn: str, pg_schema: str
) -> None:
    path = legacy_db(tmp_path / "crypto_data.db")
    target = PostgresJournal(pg_dsn, schema=pg_schema)
    with LegacySource(path, registry()) as source:
        report = migrate_legacy(source, target, sample_every=10)
    assert [(t.table, t.rows, t.events, t.rounded, t.sampled) for t in report.tables] == [
        # sampled: rowids 1, 11, 21, ... and the last; BTC volume 1.234567 -> 1.23457
        ("ohlcv", 150, 150, 120, 16),
        ("trades", 40, 40, 0, 5),
        ("order_books", 10, 10, 0, 2),
    ]
    assert [(s.stream, s.events, s.new) for s in report.streams] == [
        ("md.BINANCE.BTC-USDT", 170, 170),
        ("md.BINANCE.ETH-USDT", 30, 30),
    ]
    assert report.events == 200
    btc = [decode(r.payload) for r in target.read("md.BINANCE.BTC-USDT")]
    assert Counter(type(e).__name__ for e in btc) == {"Bar": 120, "Trade": 40, "BookSnapshot": 10}
    t0 = LEGACY_T0_MS * 1_000_000
    bar = next(e for e in btc if isinstance(e, Bar))
    assert bar == Bar(
        ts_event=t0,
        ts_recv=t0 + MIN_NS,  # known at its close
        exchange="BINANCE",
        symbol="BTC-USDT",
        seq=1,
        interval_ns=MIN_NS,
        open=9_400_010,
        high=9_400_560,
        low=9_399_685,
        close=9_400_110,
        volume=123_457,
    )
    iso_bar = [e for e in btc if isinstance(e, Bar)][60]
    assert (iso_bar.seq, iso_bar.ts_event, iso_bar.open) == (61, t0 + 60 * MIN_NS, 9_406_010)
    trades = [e for e in btc if isinstance(e, Trade)]
    assert trades[0] == Trade(
        ts_event=t0 + 15 * 10**9,
        ts_recv=t0 + 15 * 10**9,
        exchange="BINANCE",
        symbol="BTC-USDT",
        seq=1,
        trade_id="7000",
        price=9_400_050,
        size=125,
        side="sell",
    )
    book = next(e for e in btc if isinstance(e, BookSnapshot))
    assert (book.bids, book.asks) == (
        ((9_400_010, 50_000), (9_399_950, 200_000)),
        ((9_400_020, 25_000), (9_400_125, 150_000)),
    )
    # canonical order in the stream: the trade at 00:00:15 and the book at 00:00:30
    # come before the first bar, known at 00:01:00
    assert [type(e).__name__ for e in btc[:3]] == ["Trade", "BookSnapshot", "Bar"]
    assert all(target.verify(s.stream).ok for s in target.streams())
    before = rows_of(target)
    with LegacySource(path, registry()) as source:
        again = migrate_legacy(source, target)
    assert [s.new for s in again.streams] == [0, 0]
    assert rows_of(target) == before
    target.close()


def test_corrupted_legacy_row_fails_naming_it_and_target_is_unchanged(
    tmp_path: Path, pg_dsn: str, pg_schema: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = legacy_db(tmp_path / "crypto_data.db", corrupt_close_at=77)
    dsn = f"{pg_dsn}?schema={pg_schema}"
    with PostgresJournal(pg_dsn, schema=pg_schema) as target:
        target.append("session.keep", [Halt(ts_event=1, ts_recv=1, reason="already here")])
        before = rows_of(target)
    code = main(["migrate", "--from", f"sqlite:///{path}", "--to", dsn])
    assert code == 1
    err = " ".join(capsys.readouterr().err.split())
    assert "migration failed, target unchanged" in err
    assert "legacy ohlcv row 77: close='abc' is not a number" in err
    with PostgresJournal(pg_dsn, schema=pg_schema) as target:
        assert rows_of(target) == before


def test_legacy_failure_after_appending_rolls_everything_back(
    tmp_path: Path, pg_dsn: str, pg_schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sampled comparison of the last table fails after every stream was appended:
    nothing of it stays in the target."""
    import journal_tools.migrate as migrate_module

    real = migrate_module.legacy_row_mismatch

    def differ_on_books(source: LegacySource, table: str, raw: Any, ev: Any) -> str:
        return "bids differ (forced)" if table == "order_books" else real(source, table, raw, ev)

    monkeypatch.setattr(migrate_module, "legacy_row_mismatch", differ_on_books)
    path = legacy_db(tmp_path / "crypto_data.db")
    target = PostgresJournal(pg_dsn, schema=pg_schema)
    target.append("session.keep", [Halt(ts_event=1, ts_recv=1, reason="already here")])
    before = rows_of(target)
    with (
        LegacySource(path, registry()) as source,
        pytest.raises(MigrationError, match=r"legacy order_books row 1 vs md.BINANCE.BTC-USDT"),
    ):
        migrate_legacy(source, target)
    assert rows_of(target) == before
    target.close()


def test_legacy_dry_run_and_unknown_symbol(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = legacy_db(tmp_path / "crypto_data.db")
    dst = tmp_path / "dst.db"
    assert main(["migrate", "--from", str(path), "--to", f"sqlite:///{dst}", "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "ohlcv: 150 rows -> 150 events, 120 rounded" in text
    assert "would move: 200 events in 2 streams" in text
    assert not dst.exists()  # a dry run does not even create the target
    assert main(["migrate", "--from", str(path), "--to", f"sqlite:///{dst}"]) == 0
    assert "moved and verified: 200 events in 2 streams" in capsys.readouterr().out
    conn = sqlite3.connect(path)
    conn.execute("UPDATE trades SET symbol = 'BTCUSD' WHERE id = 3")
    conn.commit()
    conn.close()
    with LegacySource(path, registry()) as source, pytest.raises(MigrationError) as caught:
        migrate_legacy(source, None, dry_run=True)
    assert str(caught.value) == (
        "legacy trades row 3: symbol 'BTCUSD' is BINANCE:BTC-USD, which is not in "
        "config/instruments.yaml (add it, or choose the exchange with --legacy-exchange)"
    )


def test_legacy_values() -> None:
    assert legacy_symbol("btc/usdt") == legacy_symbol("BTCUSDT") == "BTC-USDT"
    assert legacy_symbol("XBTUSD", {"BTC-USD"}) == "BTC-USD"  # not XB-TUSD: BTC-USD is known
    assert legacy_symbol("BTCTUSD") == "BTC-TUSD"
    assert legacy_symbol("ETHBTC") == "ETH-BTC"
    assert legacy_symbol("FOO") is None
    t = 1_736_121_600
    assert timestamp_ns(t, "t") == t * 10**9
    assert timestamp_ns(t * 1000, "t") == timestamp_ns(str(t * 1000), "t") == t * 10**9
    assert timestamp_ns(t * 10**6, "t") == timestamp_ns(t * 10**9, "t") == t * 10**9
    assert timestamp_ns("2025-01-06T00:00:00Z", "t") == t * 10**9
    assert timestamp_ns("2025-01-06 02:00:00+02:00", "t") == t * 10**9
    with pytest.raises(LegacyError, match=r"ts='soon' is not a time"):
        timestamp_ns("soon", "ts")
