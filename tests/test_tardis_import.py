"""Tardis CSV import: exact events, canonical merge, idempotence, bad rows."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from adapters.journal import MemoryJournal, SqliteJournal
from adapters.journal.base import Journal
from journal_tools.tardis import TardisFormatError, import_files
from kernel.events import BookDelta, BookSnapshot, DataQuality, Trade, decode
from kernel.instruments import Instrument, InstrumentRegistry

REGISTRY = InstrumentRegistry(
    [
        Instrument(
            exchange="BINANCE",
            symbol="BTC-USDT",
            kind="spot",
            base="BTC",
            quote="USDT",
            price_decimals=2,
            size_decimals=5,
            wire_symbol="BTCUSDT",
        )
    ]
)

BOOK = """exchange,symbol,timestamp,local_timestamp,is_snapshot,side,price,amount
binance,BTCUSDT,1704067200000000,1704067200001000,true,bid,60000.0,0.102
binance,BTCUSDT,1704067200000000,1704067200001000,true,bid,59999.9,0.2
binance,BTCUSDT,1704067200000000,1704067200001000,true,ask,60000.1,0.023
binance,BTCUSDT,1704067200000000,1704067200001000,true,ask,60000.2,1.5
binance,BTCUSDT,1704067200000867,1704067200002106,false,bid,59998.6,0.107
binance,BTCUSDT,1704067200000867,1704067200002106,false,bid,60000.0,0.105
binance,BTCUSDT,1704067200002000,1704067200003000,false,ask,60000.1,0.003
binance,BTCUSDT,1704067200009646,1704067200010832,false,bid,59999.9,0
"""

TRADES = """exchange,symbol,timestamp,local_timestamp,id,side,price,amount
binance,BTCUSDT,1704067200001636,1704067200002811,1,buy,60000.1,0.020
binance,BTCUSDT,1704067200001999,1704067200003000,2,sell,60000.0,0.001
"""


def write(tmp: Path, name: str, text: str) -> Path:
    p = tmp / name
    with gzip.open(p, "wt") as fh:
        fh.write(text)
    return p


@pytest.fixture(params=["memory", "sqlite"])
def journal(request: pytest.FixtureRequest, tmp_path: Path) -> Journal:
    j: Journal = MemoryJournal() if request.param == "memory" else SqliteJournal(tmp_path / "j.db")
    yield j  # type: ignore[misc]
    j.close()


def files(tmp: Path, book: str = BOOK, trades: str = TRADES) -> list[Path]:
    return [
        write(tmp, "binance_incremental_book_L2_2024-01-01_BTCUSDT.csv.gz", book),
        write(tmp, "binance_trades_2024-01-01_BTCUSDT.csv.gz", trades),
    ]


def test_import_exact_events_in_canonical_order(journal: Journal, tmp_path: Path) -> None:
    report = import_files(journal, REGISTRY, files(tmp_path))
    assert (report.rows, report.events, report.appended, report.duplicates) == (10, 6, 6, 0)
    assert report.streams == ["md.BINANCE.BTC-USDT"]
    events = [decode(r.payload) for r in journal.read("md.BINANCE.BTC-USDT")]
    assert events == [
        BookSnapshot(
            1704067200000000000,
            1704067200001000000,
            "BINANCE",
            "BTC-USDT",
            2,
            ((6000000, 10200), (5999990, 20000)),
            ((6000010, 2300), (6000020, 150000)),
        ),
        BookDelta(
            1704067200000867000,
            1704067200002106000,
            "BINANCE",
            "BTC-USDT",
            6,
            ((5999860, 10700), (6000000, 10500)),
            (),
        ),
        Trade(
            1704067200001636000,
            1704067200002811000,
            "BINANCE",
            "BTC-USDT",
            2,
            "1",
            6000010,
            2000,
            "buy",
        ),
        # equal local time: the trade (priority 2) comes before the book message (3)
        Trade(
            1704067200001999000,
            1704067200003000000,
            "BINANCE",
            "BTC-USDT",
            3,
            "2",
            6000000,
            100,
            "sell",
        ),
        BookDelta(
            1704067200002000000,
            1704067200003000000,
            "BINANCE",
            "BTC-USDT",
            8,
            (),
            ((6000010, 300),),
        ),
        BookDelta(
            1704067200009646000, 1704067200010832000, "BINANCE", "BTC-USDT", 9, ((5999990, 0),), ()
        ),
    ]
    assert [r.seq for r in journal.read("md.BINANCE.BTC-USDT")] == [1, 2, 3, 4, 5, 6]
    assert journal.verify("md.BINANCE.BTC-USDT").ok


def test_reimport_adds_nothing(journal: Journal, tmp_path: Path) -> None:
    fs = files(tmp_path)
    import_files(journal, REGISTRY, fs)
    again = import_files(journal, REGISTRY, fs)
    assert (again.events, again.appended, again.duplicates) == (6, 0, 6)
    assert journal.streams()[0].count == 6


def test_bad_row_names_file_and_line_and_leaves_journal_unchanged(
    journal: Journal, tmp_path: Path
) -> None:
    (tmp_path / "ok").mkdir()
    import_files(journal, REGISTRY, files(tmp_path / "ok"))
    before = [(s.stream, s.count, s.last_seq) for s in journal.streams()]
    bad_book = BOOK.replace("60000.2,1.5", "60000.2,1.5x")
    (tmp_path / "bad").mkdir()
    fs = files(tmp_path / "bad", book=bad_book.replace("1704067200000000,", "1704067300000000,"))
    with pytest.raises(TardisFormatError) as err:
        import_files(journal, REGISTRY, fs)
    assert err.value.file == "binance_incremental_book_L2_2024-01-01_BTCUSDT.csv.gz"
    assert err.value.line == 5
    assert "1.5x" in str(err.value)
    assert [(s.stream, s.count, s.last_seq) for s in journal.streams()] == before


def test_skip_bad_imports_the_rest_and_journals_the_count(journal: Journal, tmp_path: Path) -> None:
    bad_trades = TRADES + "binance,BTCUSDT,1704067200005000,1704067200006000,3,hold,60000.0,0.001\n"
    bad_trades += "binance,BTCUSDT,1704067200005001,1704067200006001,4,buy,60000.001,0.001\n"
    report = import_files(journal, REGISTRY, files(tmp_path, trades=bad_trades), skip_bad=True)
    assert report.skipped_rows == 2
    assert report.first_bad[0].endswith(":4: side must be buy or sell, got 'hold'")
    assert report.appended == 6
    recs = list(journal.read("import"))
    assert len(recs) == 1
    dq = decode(recs[0].payload)
    assert isinstance(dq, DataQuality)
    assert dq.rule == "import_skipped_rows"
    assert dq.detail.startswith("2 bad rows skipped")


@pytest.mark.parametrize(
    ("book", "line", "reason"),
    [
        (BOOK.replace("exchange,symbol", "exch,symbol"), 1, "expected header"),
        (BOOK.replace("true,ask,60000.1", "maybe,ask,60000.1"), 4, "is_snapshot"),
        (BOOK.replace("false,bid,59998.6", "false,middle,59998.6"), 6, "side must be bid or ask"),
        (
            BOOK.replace("binance,BTCUSDT,1704067200002000", "binance,ETHUSDT,1704067200002000"),
            8,
            "file mixes instruments: binance:ETHUSDT after binance:BTCUSDT",
        ),
        (
            BOOK.replace("binance,BTCUSDT", "binance,SOLUSDT"),
            2,
            "no instrument for feed 'binance' symbol 'SOLUSDT'",
        ),
        (BOOK.replace("59998.6,0.107", "59998.6,-0.107"), 6, "invalid"),
        (BOOK.replace("60000.1,0.003", "60000.1,0.0031234"), 8, "more than 5 decimals"),
        (BOOK.replace("true,bid,59999.9,0.2", "true,bid,59999.9"), 3, "expected 8 columns"),
    ],
)
def test_malformed_rows(tmp_path: Path, book: str, line: int, reason: str) -> None:
    journal = MemoryJournal()
    with pytest.raises(TardisFormatError) as err:
        import_files(journal, REGISTRY, files(tmp_path, book=book))
    assert err.value.line == line
    assert reason in str(err.value)
    assert journal.streams() == []
