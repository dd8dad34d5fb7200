"""``tickerml migrate``: SQLite -> PostgreSQL (and SQLite), verified, all or nothing."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from adapters.journal import open_journal
from adapters.journal.base import CONTROL_STREAM, Journal
from adapters.journal.postgres import PostgresJournal
from adapters.journal.sqlite import SqliteJournal
from journal_tools.cli import main
from journal_tools.migrate import MigrationError, migrate
from kernel.events import BookDelta, Decision, Halt, Trade


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
