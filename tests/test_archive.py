"""The Parquet cold tier (``tickerml archive``), against SQLite and PostgreSQL.

A small synthetic market that crosses midnight UTC (2024-12-31 23:59:00 .. 2025-01-01
00:00:48) is imported, an operator Halt/Resume is journaled in md.CONTROL and a session is
replayed; then everything received before 00:00:30 is archived. Every assertion compares
the tiered journal with what the database held before archiving, row for row.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import msgspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import adapters.journal.parquet as parquet_tier
from adapters.config_loader import load_config
from adapters.journal import (
    Journal,
    JournalError,
    JournalRecord,
    MemoryJournal,
    PostgresJournal,
    SqliteJournal,
    open_journal,
)
from adapters.journal.base import CONTROL_STREAM, VerifyReport
from adapters.journal.parquet import (
    ArchiveError,
    ArchiveManifest,
    TieredJournal,
    archive_journal,
    manifest_name,
)
from journal_tools.cli import main, parse_time
from journal_tools.session import run_session, verify_session
from journal_tools.synth import SynthSpec, generate
from journal_tools.tardis import import_files
from kernel.events import BookDelta, Halt, Resume
from kernel.instruments import InstrumentRegistry

BACKENDS = ["sqlite", "postgres"]
START = "2024-12-31T23:59:00"
CUT = parse_time("2025-01-01T00:00:30")
LATER_CUT = parse_time("2025-01-01T00:01:00")
MIDNIGHT = parse_time("2025-01-01")


@pytest.fixture(scope="module")
def market_files(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """0.03 h (108 s) of 4 exchanges x 2 symbols + perps, across midnight UTC."""
    out = tmp_path_factory.mktemp("archive-market")
    manifest = generate(SynthSpec(out_dir=str(out), hours=0.03, seed=3, start=START))
    return [f.path for f in manifest.files]


@dataclass
class Db:
    """A fresh database journal of one backend, and how to open it again by DSN."""

    backend: str
    dsn: str
    archive: Path

    def open_raw(self) -> Journal:
        """The database alone (no cold tier)."""
        if self.backend == "sqlite":
            return SqliteJournal(self.dsn.removeprefix("sqlite:///"))
        return PostgresJournal(self.dsn)


@pytest.fixture(params=BACKENDS)
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Db:
    if request.param == "sqlite":
        return Db("sqlite", f"sqlite:///{tmp_path / 'journal.db'}", tmp_path / "archive")
    dsn = request.getfixturevalue("pg_dsn")
    if "://" not in dsn:
        pytest.skip("these tests name the schema in a URL DSN")
    sep = "&" if "?" in dsn else "?"
    schema = request.getfixturevalue("pg_schema")
    return Db("postgres", f"{dsn}{sep}schema={schema}", tmp_path / "archive")


@dataclass
class Recorded:
    """A journal with a market, operator events and one replayed session, and every row
    of it as the database held them before anything was archived."""

    db: Db
    session_id: str
    state_hash: str
    events: int
    rows: dict[str, list[JournalRecord]]
    range_rows: list[JournalRecord]
    payloads: list[bytes]


def _payloads(journal: Journal, *args: object) -> list[bytes]:
    return [p for block in journal.iter_payload_blocks(*args) for (p,) in block]  # type: ignore[arg-type]


def _snapshot(journal: Journal) -> dict[str, list[JournalRecord]]:
    return {s.stream: list(journal.read(s.stream)) for s in journal.streams()}


@pytest.fixture
def recorded(db: Db, market_files: list[str]) -> Iterator[Recorded]:
    config = load_config()
    with open_journal(db.dsn) as journal:
        import_files(
            journal, InstrumentRegistry(list(config.instruments.instruments)), market_files
        )
        halt, resume = parse_time("2024-12-31T23:59:45"), parse_time("2025-01-01T00:00:15")
        journal.append(
            CONTROL_STREAM,
            [
                Halt(ts_event=halt, ts_recv=halt, reason="test"),
                Resume(ts_event=resume, ts_recv=resume, reason="test over"),
            ],
        )
        stats = run_session(journal, config, session_id="before-archive")
        yield Recorded(
            db,
            stats.session_id,
            stats.state_hash,
            stats.events,
            _snapshot(journal),
            list(journal.read_range()),
            _payloads(journal),
        )


def _market(rec: Recorded) -> dict[str, list[JournalRecord]]:
    return {s: rows for s, rows in rec.rows.items() if s.startswith("md.")}


def _parquet_rows(directory: Path) -> list[tuple[object, ...]]:
    """Every row of every Parquet file under ``directory``, read with pyarrow alone."""
    rows: list[tuple[object, ...]] = []
    for path in sorted(directory.rglob("*.parquet")):
        table = pq.read_table(path)
        rows.extend(zip(*(table.column(n).to_pylist() for n in table.column_names), strict=True))
    return rows


def _as_row(r: JournalRecord) -> tuple[object, ...]:
    return (
        r.stream,
        r.seq,
        r.event_id,
        r.ts_event,
        r.ts_recv,
        r.priority,
        r.kind,
        r.exchange,
        r.symbol,
        r.src_seq,
        r.payload,
        r.hash,
    )


# ---------------------------------------------------------------------------------------
# Archive, then replay the same session: the same state hash
# ---------------------------------------------------------------------------------------


def test_replay_after_archive_gives_the_same_state_hash(recorded: Recorded) -> None:
    config = load_config()
    with open_journal(recorded.db.dsn) as journal:
        report = archive_journal(journal, CUT, recorded.db.archive)
    older = sum(1 for rows in _market(recorded).values() for r in rows if r.ts_recv < CUT)
    assert report.rows == report.deleted == older > 0
    assert report.generation == 1
    # 12 instrument streams and md.CONTROL, each on both days
    assert len(report.files) == 26
    assert {f.date for f in report.files} == {"2024-12-31", "2025-01-01"}

    with open_journal(recorded.db.dsn) as journal:
        assert isinstance(journal, TieredJournal)  # found through the journal's meta table
        stats = run_session(journal, config, session_id="after-archive")
        assert stats.state_hash == recorded.state_hash
        assert stats.events == recorded.events
        # the session recorded before archiving re-derives byte for byte from both tiers
        result = verify_session(journal, recorded.session_id)
        assert result.ok and result.state_hash == recorded.state_hash
        assert result.outputs_checked == len(recorded.rows[f"session.{recorded.session_id}"]) - 2


def test_both_tiers_read_as_one_journal(recorded: Recorded) -> None:
    with open_journal(recorded.db.dsn) as journal:
        archive_journal(journal, CUT, recorded.db.archive)
    with open_journal(recorded.db.dsn) as journal:
        for stream, rows in recorded.rows.items():
            assert list(journal.read(stream)) == rows  # seqs, hashes, prev_hash included
            report = journal.verify(stream)
            assert (report.ok, report.rows, report.reason) == (True, len(rows), "")
        btc = "md.BINANCE.BTC-USDT"
        first_hot = next(r for r in recorded.rows[btc] if r.ts_recv >= CUT)
        middle = list(journal.read(btc, from_seq=first_hot.seq - 3, to_seq=first_hot.seq + 2))
        assert middle == recorded.rows[btc][first_hot.seq - 4 : first_hot.seq + 2]
        timed = list(journal.read(btc, from_ts=MIDNIGHT, to_ts=CUT + 10**9))
        assert timed == [r for r in recorded.rows[btc] if MIDNIGHT <= r.ts_recv <= CUT + 10**9]
        assert list(journal.read_range()) == recorded.range_rows
        assert _payloads(journal) == recorded.payloads
        window = (MIDNIGHT - 5 * 10**9, CUT + 5 * 10**9, ["KRAKEN"], ["ETH-USDT"])
        expected = [
            r.payload
            for r in recorded.range_rows
            if window[0] <= r.ts_recv < window[1]
            and r.exchange in ("KRAKEN", "")
            and r.symbol in ("ETH-USDT", "")
        ]
        assert _payloads(journal, *window) == expected
        assert [s.stream for s in journal.streams()] == sorted(recorded.rows)


# ---------------------------------------------------------------------------------------
# Rows leave the database; the files hold exactly those rows
# ---------------------------------------------------------------------------------------


def test_rows_are_gone_from_the_database_and_the_files_hold_exactly_them(
    recorded: Recorded,
) -> None:
    with open_journal(recorded.db.dsn) as journal:
        report = archive_journal(journal, CUT, recorded.db.archive)
    market = _market(recorded)
    archived = [r for rows in market.values() for r in rows if r.ts_recv < CUT]
    with recorded.db.open_raw() as raw:
        for stream, rows in recorded.rows.items():
            left = list(raw.read(stream))
            expected = [r for r in rows if r.ts_recv >= CUT] if stream in market else rows
            assert left == expected, stream
            # the first row left links to the last archived row's hash
            if stream in market and left:
                assert left[0].prev_hash == rows[left[0].seq - 2].hash
            check = raw.verify(stream)
            assert (check.ok, check.rows) == (True, len(expected)), check
        state = raw.archive_state()
    assert state is not None and state.generation == 1
    assert {s: (b.seq, b.hash) for s, b in state.boundaries.items()} == {
        s: (max(r.seq for r in rows if r.ts_recv < CUT), rows[-1].hash)
        for s, rows in ((s, [r for r in rows if r.ts_recv < CUT]) for s, rows in market.items())
    }
    # the Parquet files, read with pyarrow alone, hold exactly the archived rows
    assert sorted(_parquet_rows(recorded.db.archive), key=lambda r: (r[0], r[1])) == sorted(
        (_as_row(r) for r in archived), key=lambda r: (r[0], r[1])
    )
    manifest = msgspec.json.decode(
        (recorded.db.archive / manifest_name(1)).read_bytes(), type=ArchiveManifest
    )
    assert hashlib.sha256((recorded.db.archive / manifest_name(1)).read_bytes()).hexdigest() == (
        state.manifest_sha256
    )
    assert sum(f.rows for f in manifest.files) == len(archived) == report.rows
    for f in manifest.files:
        path = recorded.db.archive / f.path
        assert hashlib.sha256(path.read_bytes()).hexdigest() == f.sha256
        table = pq.read_table(path)
        assert table.num_rows == f.rows
        assert set(table.column("stream").to_pylist()) == {f.stream}
        days = {parquet_tier.utc_day(t) for t in table.column("ts_recv").to_pylist()}
        assert days == {f.date}
        assert f.path.startswith(parquet_tier.partition_dir(f.stream, f.date) + "/")
    btc = next(f for f in manifest.files if f.stream == "md.BINANCE.BTC-USDT")
    assert btc.path == (
        f"date=2024-12-31/exchange=BINANCE/symbol=BTC-USDT/md.BINANCE.BTC-USDT.1-{btc.last_seq}"
        ".parquet"
    )


def test_archiving_again_is_idempotent_and_a_later_cut_adds_files(recorded: Recorded) -> None:
    with open_journal(recorded.db.dsn) as journal:
        first = archive_journal(journal, CUT, recorded.db.archive)
    files = {p: p.read_bytes() for p in recorded.db.archive.rglob("*.parquet")}
    with open_journal(recorded.db.dsn) as journal:
        again = archive_journal(journal, CUT)
        assert (again.rows, again.deleted, again.generation, again.files) == (0, 0, 1, [])
        earlier = archive_journal(journal, CUT - 60 * 10**9)
        assert (earlier.rows, earlier.generation) == (0, 1)
        later = archive_journal(journal, LATER_CUT)
        between = sum(
            1 for rows in _market(recorded).values() for r in rows if CUT <= r.ts_recv < LATER_CUT
        )
        assert later.rows == later.deleted == between > 0
        assert later.generation == 2 and len(later.files) == 12  # md.CONTROL: nothing new
        assert {p: p.read_bytes() for p in files} == files  # earlier files untouched
        assert all(int(f.path.rsplit(".", 2)[1].split("-")[0]) > 1 for f in later.files)
        assert list(journal.read_range()) == recorded.range_rows
        assert all(journal.verify(s).ok for s in recorded.rows)
        assert first.rows + later.rows == sum(
            1 for rows in _market(recorded).values() for r in rows if r.ts_recv < LATER_CUT
        )


def test_reimporting_archived_data_adds_nothing(
    recorded: Recorded, market_files: list[str]
) -> None:
    config = load_config()
    with open_journal(recorded.db.dsn) as journal:
        archive_journal(journal, CUT, recorded.db.archive)
    with open_journal(recorded.db.dsn) as journal:
        report = import_files(
            journal, InstrumentRegistry(list(config.instruments.instruments)), market_files
        )
        assert report.appended == 0 and report.duplicates == report.events > 0
        assert _snapshot(journal) == recorded.rows


# ---------------------------------------------------------------------------------------
# Corruption: found before anything is deleted; tampering found by verify, refused on read
# ---------------------------------------------------------------------------------------


def _flip_byte(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))


def _alter_payload(path: Path) -> None:
    """A well-formed Parquet file whose first row's payload differs by one byte."""
    table = pq.read_table(path)
    payloads = table.column("payload").to_pylist()
    payloads[0] = payloads[0][:-1] + bytes([payloads[0][-1] ^ 1])
    i = table.column_names.index("payload")
    table = table.set_column(i, "payload", pa.array(payloads, pa.binary()))
    pq.write_table(table, path, compression="zstd")


@pytest.mark.parametrize("corrupt", [_flip_byte, _alter_payload], ids=["bytes", "payload"])
def test_a_corrupted_file_fails_the_read_back_and_nothing_is_deleted(
    recorded: Recorded, monkeypatch: pytest.MonkeyPatch, corrupt: object
) -> None:
    publish = parquet_tier._publish
    hit: list[Path] = []

    def corrupting(tmp: Path, final: Path) -> None:
        publish(tmp, final)
        if final.name.startswith("md.KRAKEN.ETH-USDT.") and not hit:
            hit.append(final)
            corrupt(final)  # type: ignore[operator]

    monkeypatch.setattr(parquet_tier, "_publish", corrupting)
    with open_journal(recorded.db.dsn) as journal, pytest.raises(ArchiveError) as err:
        archive_journal(journal, CUT, recorded.db.archive)
    assert hit and hit[0].name in str(err.value)
    assert "read back" in str(err.value)
    with recorded.db.open_raw() as raw:
        assert raw.archive_state() is None
        assert _snapshot(raw) == recorded.rows  # every row still in the database
    assert list(recorded.db.archive.rglob("*.parquet")) == []  # the failed run's files
    assert list(recorded.db.archive.glob("manifest-*")) == []


def test_a_tampered_file_fails_verify_and_is_refused_on_read(recorded: Recorded) -> None:
    with open_journal(recorded.db.dsn) as journal:
        archive_journal(journal, CUT, recorded.db.archive)
    target = next(recorded.db.archive.rglob("md.KRAKEN.ETH-USDT.1-*.parquet"))
    _alter_payload(target)
    rel = target.relative_to(recorded.db.archive).as_posix()
    with open_journal(recorded.db.dsn) as journal:
        report = journal.verify("md.KRAKEN.ETH-USDT")
        assert (report.ok, report.first_bad_seq) == (False, 1)
        assert rel in report.reason and "altered" in report.reason
        assert journal.verify("md.KRAKEN.BTC-USDT").ok  # other streams are whole
        with pytest.raises(JournalError, match="refusing to read it"):
            list(journal.read("md.KRAKEN.ETH-USDT"))
        with pytest.raises(JournalError, match=rel):
            _payloads(journal)
        with pytest.raises(JournalError, match=rel):
            list(journal.read_range())
    # a forger who also fixes the manifest is caught by the digest the database keeps
    path = recorded.db.archive / manifest_name(1)
    doc = json.loads(path.read_bytes())
    for f in doc["files"]:
        if f["path"] == rel:
            f["sha256"] = hashlib.sha256(target.read_bytes()).hexdigest()
    path.write_text(json.dumps(doc))
    with open_journal(recorded.db.dsn) as journal:
        for stream in ("md.KRAKEN.ETH-USDT", "md.KRAKEN.BTC-USDT"):
            report = journal.verify(stream)
            assert (report.ok, report.first_bad_seq) == (False, 1)
            assert "manifest" in report.reason and "not the one this journal recorded" in (
                report.reason
            )
        with pytest.raises(ArchiveError, match="manifest"):
            _payloads(journal)
    with recorded.db.open_raw() as raw:  # the database's own part is untouched
        assert all(raw.verify(s).ok for s in recorded.rows)


def test_a_moved_archive_is_named_with_archive_dir(recorded: Recorded, tmp_path: Path) -> None:
    with open_journal(recorded.db.dsn) as journal:
        archive_journal(journal, CUT, recorded.db.archive)
    moved = tmp_path / "cold"
    shutil.move(recorded.db.archive, moved)
    with open_journal(recorded.db.dsn) as journal, pytest.raises(ArchiveError, match="--archive"):
        _payloads(journal)
    with open_journal(recorded.db.dsn, archive_dir=moved) as journal:
        assert _payloads(journal) == recorded.payloads
        with pytest.raises(ArchiveError, match="archives into"):
            archive_journal(journal, LATER_CUT, moved)


# ---------------------------------------------------------------------------------------
# A stream whose receive times go back: the cut is a seq prefix, reads merge both tiers
# ---------------------------------------------------------------------------------------


def _delta(seq: int, ts: int) -> BookDelta:
    return BookDelta(
        ts_event=ts - 10,
        ts_recv=ts,
        exchange="BINANCE",
        symbol="BTC-USDT",
        seq=seq,
        bids=((100 + seq, seq),),
        asks=(),
    )


def test_an_unordered_stream_keeps_its_chain_and_the_canonical_order(db: Db) -> None:
    day = 86_400 * 10**9
    t0 = MIDNIGHT - day + 10 * 3600 * 10**9  # 2024-12-31 10:00
    # seq:  1      2            3             4       5
    ts = [t0 + 3600 * 10**9, t0 + day - 9 * 3600 * 10**9, t0, t0 + day, t0 + 2 * 10**9]
    stream = "md.BINANCE.BTC-USDT"
    other = "md.COINBASE.BTC-USDT"
    with open_journal(db.dsn) as journal:
        journal.append(stream, [_delta(i + 1, t) for i, t in enumerate(ts)])
        journal.append(
            other,
            [
                BookDelta(
                    ts_event=t,
                    ts_recv=t,
                    exchange="COINBASE",
                    symbol="BTC-USDT",
                    seq=i,
                    bids=((7, 1),),
                    asks=(),
                )
                for i, t in enumerate((t0 + 5, t0 + day + 5), 1)
            ],
        )
        before = _snapshot(journal), list(journal.read_range()), _payloads(journal)
        # row 2 is received at 2025-01-01 01:00, so the prefix before 00:30 is row 1 alone:
        # rows 3 and 5, received before row 1, stay in the database after row 2
        report = archive_journal(journal, MIDNIGHT + 1800 * 10**9, db.archive)
        assert [(s.stream, s.from_seq, s.to_seq) for s in report.streams] == [
            (stream, 1, 1),
            (other, 1, 1),
        ]
    with open_journal(db.dsn) as journal:
        assert (_snapshot(journal), list(journal.read_range()), _payloads(journal)) == before
        assert journal.verify(stream).ok and journal.verify(other).ok
        # archive rows 2..5 too: day files 2024-12-31 {3, 5} and 2025-01-01 {2}, {4}
        report = archive_journal(journal, MIDNIGHT + 2 * day)
        assert [(f.date, f.first_seq, f.last_seq) for f in report.files if f.stream == stream] == [
            ("2025-01-01", 2, 2),
            ("2024-12-31", 3, 3),
            ("2025-01-01", 4, 4),
            ("2024-12-31", 5, 5),
        ]
        assert (_snapshot(journal), list(journal.read_range()), _payloads(journal)) == before
        assert journal.verify(stream) == VerifyReport(stream, True, 5)


# ---------------------------------------------------------------------------------------
# Backends without SQL, and the command line
# ---------------------------------------------------------------------------------------


def test_the_memory_journal_has_no_cold_tier(tmp_path: Path) -> None:
    journal = MemoryJournal()
    journal.append("md.BINANCE.BTC-USDT", [_delta(1, 1_000)])
    with pytest.raises(JournalError, match="MemoryJournal has no cold tier"):
        archive_journal(journal, 2_000, tmp_path / "archive")
    assert [r.seq for r in journal.read("md.BINANCE.BTC-USDT")] == [1]


def test_cli_archive_dry_run_then_archive_verify_and_replay(
    market_files: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dsn = f"sqlite:///{tmp_path / 'j.db'}"
    data = Path(market_files[0]).parent
    assert main(["import", "tardis", "--dir", str(data), "--journal", dsn, "-q"]) == 0
    stats = tmp_path / "before.json"
    assert main(["replay", "--journal", dsn, "-q", "--stats-json", str(stats)]) == 0
    state_hash = json.loads(stats.read_text())["state_hash"]
    archive = tmp_path / "archive"
    capsys.readouterr()
    args = ["archive", "--journal", dsn, "--before", "2025-01-01T00:00:30", "-q"]
    assert main(args) == 2  # the first archive must say where
    assert "--dir" in capsys.readouterr().err
    assert main([*args, "--dir", str(archive), "--dry-run"]) == 0
    assert "dry run: would archive" in capsys.readouterr().out
    assert not archive.exists()
    # one instrument, a window cutting into both day files: the streamed (one ordered
    # file per day) path of the archive, then the database
    window = (parse_time("2024-12-31T23:59:30"), parse_time("2025-01-01T00:00:40"))
    one = (*window, ["BINANCE"], ["BTC-USDT"])
    with SqliteJournal(tmp_path / "j.db") as raw:
        assert raw.archive_state() is None
        rows_before = {s.stream: len(list(raw.read(s.stream))) for s in raw.streams()}
        one_before = _payloads(raw, *one)
    assert main([*args, "--dir", str(archive), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["rows"] == report["deleted"] > 0 and len(report["files"]) == 24
    with SqliteJournal(tmp_path / "j.db") as raw:
        left = sum(len(list(raw.read(s.stream))) for s in raw.streams())
    assert left == sum(rows_before.values()) - report["rows"]
    with open_journal(dsn) as journal:
        assert _payloads(journal, *one) == one_before
    assert main(args) == 0  # again: nothing to do
    assert "nothing to archive" in capsys.readouterr().out
    assert main([*args, "--dir", str(tmp_path / "elsewhere")]) == 2
    capsys.readouterr()
    assert main(["verify", "--journal", dsn, "-q"]) == 0
    after = tmp_path / "after.json"
    assert main(["replay", "--journal", dsn, "-q", "--stats-json", str(after)]) == 0
    assert json.loads(after.read_text())["state_hash"] == state_hash
    _flip_byte(next(archive.rglob("md.KUCOIN.BTC-USDT.1-*.parquet")))
    capsys.readouterr()
    assert main(["verify", "--journal", dsn, "-q"]) == 1
    assert main(["replay", "--journal", dsn, "-q"]) == 2
    assert "altered" in capsys.readouterr().err
