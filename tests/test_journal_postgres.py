"""PostgreSQL-only journal checks: concurrent writers, COPY ingest, schema handling, raw
tampering, DSNs. The backend-independent contract is in ``test_journal_contract.py``.

Every test runs in a fresh schema of the session's test database (``tests/conftest.py``)
and is skipped when no PostgreSQL server is reachable.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

import adapters.journal.postgres as postgres_backend
from adapters.journal import (
    JournalError,
    PostgresJournal,
    StreamInfo,
    VerifyReport,
    chain_hash,
    market_stream,
    open_journal,
    prepare,
)
from adapters.journal.base import ReadModelColumn
from kernel.events import BookDelta, encode

BTC = market_stream("BINANCE", "BTC-USDT")
ETH = market_stream("BINANCE", "ETH-USDT")


def delta(seq: int, ts: int, symbol: str = "BTC-USDT", price: int = 100) -> BookDelta:
    return BookDelta(
        ts_event=ts - 10,
        ts_recv=ts,
        exchange="BINANCE",
        symbol=symbol,
        seq=seq,
        bids=((price, seq + 1),),
        asks=(),
    )


@pytest.fixture
def journal(pg_dsn: str, pg_schema: str) -> Iterator[PostgresJournal]:
    j = PostgresJournal(pg_dsn, schema=pg_schema)
    yield j
    j.close()


def _raw(dsn: str, schema: str, query: str, params: tuple[object, ...] = ()) -> list[Any]:
    """Run one statement in ``schema`` on a connection of its own (committed)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"SET search_path TO {schema}")
        cur = conn.execute(query, params)
        return cur.fetchall() if cur.description else []


def _event_count(dsn: str, schema: str) -> int:
    return int(_raw(dsn, schema, "SELECT count(*) FROM events")[0][0])


# ---------------------------------------------------------------------------------------
# Concurrent writers
# ---------------------------------------------------------------------------------------


def _run_threads(targets: list[Any]) -> None:
    errors: list[BaseException] = []

    def guarded(fn: Any) -> None:
        try:
            fn()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(fn,)) for fn in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors


def test_concurrent_writers_to_one_stream_keep_seqs_gap_free(pg_dsn: str, pg_schema: str) -> None:
    """Two journals (threads) append 4 x 50 batches of 5 events each to one stream."""
    returned: dict[int, list[int]] = {}

    def writer(w: int) -> None:
        with PostgresJournal(pg_dsn, schema=pg_schema) as j:
            seqs: list[int] = []
            for b in range(50):
                base = w * 1_000_000 + b * 10
                seqs += j.append(BTC, [delta(base + k, base + k + 1) for k in range(5)])
            returned[w] = seqs

    _run_threads([lambda w=w: writer(w) for w in range(4)])
    # Each writer's seqs increase, and together they are 1..1000 exactly once.
    for seqs in returned.values():
        assert seqs == sorted(seqs)
    assert sorted(s for seqs in returned.values() for s in seqs) == list(range(1, 1001))
    with PostgresJournal(pg_dsn, schema=pg_schema) as j:
        assert [r.seq for r in j.read(BTC)] == list(range(1, 1001))
        assert j.verify(BTC) == VerifyReport(stream=BTC, ok=True, rows=1000)


def test_concurrent_writers_of_the_same_events_store_each_once(pg_dsn: str, pg_schema: str) -> None:
    """Redelivery race: four journals append overlapping batches of the same 300 events,
    two of them to another stream; each id is stored once and no stream has a gap."""
    events = [delta(n, n * 10) for n in range(1, 301)]
    returned: dict[int, list[int]] = {}

    def writer(w: int) -> None:
        stream = BTC if w % 2 == 0 else ETH
        with PostgresJournal(pg_dsn, schema=pg_schema) as j:
            seqs: list[int] = []
            for start in range(0, 300, 20):
                # overlapping windows: each batch repeats half of the one before
                seqs += j.append(stream, events[max(0, start - 10) : start + 20])
            returned[w] = seqs

    _run_threads([lambda w=w: writer(w) for w in range(4)])
    assert _event_count(pg_dsn, pg_schema) == 300
    with PostgresJournal(pg_dsn, schema=pg_schema) as j:
        infos = j.streams()
        assert sum(i.count for i in infos) == 300
        seq_of: dict[bytes, int] = {}
        for info in infos:
            records = list(j.read(info.stream))
            assert [r.seq for r in records] == list(range(1, info.count + 1))
            assert j.verify(info.stream).ok
            seq_of.update((r.event_id, r.seq) for r in records)
        # Every writer was told the seq each event really has, whichever stream holds it.
        expected = [seq_of[prepare(e).event_id] for e in events]
        for seqs in returned.values():
            got = dict.fromkeys(range(300), -1)
            pos = 0
            for start in range(0, 300, 20):
                lo = max(0, start - 10)
                for i in range(lo, min(300, start + 20)):
                    got[i] = seqs[pos]
                    pos += 1
            assert list(got.values()) == expected


# ---------------------------------------------------------------------------------------
# Idempotence and COPY ingest
# ---------------------------------------------------------------------------------------


def test_reappending_stored_events_stores_nothing(
    journal: PostgresJournal, pg_dsn: str, pg_schema: str
) -> None:
    batch = [delta(n, n * 100) for n in range(1, 51)]
    assert journal.append(BTC, batch) == list(range(1, 51))
    before = _raw(pg_dsn, pg_schema, "SELECT sid, seq, hash FROM events ORDER BY sid, seq")
    assert journal.append(BTC, batch) == list(range(1, 51))
    assert journal.append(ETH, batch[::-1]) == list(range(50, 0, -1))
    assert _raw(pg_dsn, pg_schema, "SELECT sid, seq, hash FROM events ORDER BY sid, seq") == before
    assert journal.streams() == [
        StreamInfo(stream=BTC, count=50, first_ts=100, last_ts=5000, last_seq=50)
    ]
    assert journal.append(BTC, [*batch[:3], delta(51, 5100)]) == [1, 2, 3, 51]


def test_copy_ingest_of_20000_events(
    journal: PostgresJournal, monkeypatch: pytest.MonkeyPatch, pg_dsn: str, pg_schema: str
) -> None:
    """One batch of 20,000 goes through COPY (counted) and reads back in order."""
    copied: list[int] = []
    write_rows = postgres_backend.write_rows

    def counting(copy: Any, rows: Any) -> None:
        copied.append(len(rows))
        write_rows(copy, rows)

    monkeypatch.setattr(postgres_backend, "write_rows", counting)
    batch = [delta(n, 1_000 + n) for n in range(1, 20_001)]
    started = time.perf_counter()
    seqs = journal.append(BTC, batch)
    elapsed = time.perf_counter() - started
    print(f"appended 20,000 events in {elapsed:.3f}s ({20_000 / elapsed:,.0f}/s)")
    assert seqs == list(range(1, 20_001))
    assert copied == [20_000]
    assert _event_count(pg_dsn, pg_schema) == 20_000
    assert journal.verify(BTC) == VerifyReport(stream=BTC, ok=True, rows=20_000)
    payloads = [p for block in journal.iter_payload_blocks() for (p,) in block]
    assert payloads == [encode(e) for e in batch]
    assert [len(b) for b in journal.iter_payload_blocks(end_ns=1_000 + 10_001)] == [8192, 1808]


# ---------------------------------------------------------------------------------------
# Schema, reopen, tampering
# ---------------------------------------------------------------------------------------


def test_open_journal_with_schema_and_reopen_continues(pg_dsn: str, pg_schema: str) -> None:
    url = f"{pg_dsn}?schema={pg_schema}"
    with open_journal(url) as j:
        assert isinstance(j, PostgresJournal) and j.schema == pg_schema
        assert j.append(BTC, [delta(n, n * 100) for n in (1, 2, 3)]) == [1, 2, 3]
    with open_journal(url.replace("postgresql://", "postgres://", 1)) as j:
        assert j.append(BTC, [delta(2, 200), delta(4, 400)]) == [2, 4]
        records = list(j.read(BTC))
        assert [r.seq for r in records] == [1, 2, 3, 4]
        assert records[3].prev_hash == records[2].hash
        assert j.verify(BTC) == VerifyReport(stream=BTC, ok=True, rows=4)
    assert _raw(pg_dsn, pg_schema, "SELECT key, value FROM meta") == [("schema_version", "1")]


def test_schema_version_mismatch_and_foreign_schema(pg_dsn: str, pg_schema: str) -> None:
    PostgresJournal(pg_dsn, schema=pg_schema).close()
    _raw(pg_dsn, pg_schema, "UPDATE meta SET value = '7' WHERE key = 'schema_version'")
    with pytest.raises(JournalError, match="journal schema version 7 is not supported"):
        PostgresJournal(pg_dsn, schema=pg_schema)
    other = pg_schema + "_other"
    _raw(pg_dsn, "public", f"CREATE SCHEMA {other}")
    _raw(pg_dsn, other, "CREATE TABLE things (x int)")
    with pytest.raises(JournalError, match=f"schema {other} .* is not a journal"):
        PostgresJournal(pg_dsn, schema=other)


def test_verify_detects_tampering(journal: PostgresJournal, pg_dsn: str, pg_schema: str) -> None:
    journal.append(BTC, [delta(n, n * 100) for n in range(1, 6)])
    forged = encode(delta(2, 200, price=999))
    _raw(pg_dsn, pg_schema, "UPDATE events SET payload = %s WHERE seq = 2", (forged,))
    assert journal.verify(BTC) == VerifyReport(
        stream=BTC,
        ok=False,
        rows=5,
        first_bad_seq=2,
        reason="seq 2: hash mismatch (row was altered)",
    )
    _raw(pg_dsn, pg_schema, "DELETE FROM events WHERE seq = 2")
    assert journal.verify(BTC) == VerifyReport(
        stream=BTC,
        ok=False,
        rows=4,
        first_bad_seq=2,
        reason="seq 2: missing (gap: next row has seq 3)",
    )
    _raw(pg_dsn, pg_schema, "DELETE FROM events WHERE seq <= 2 OR seq >= 4")
    (r3,) = journal.read(BTC)
    _raw(
        pg_dsn,
        pg_schema,
        "UPDATE events SET seq = 1, hash = %s WHERE seq = 3",
        (chain_hash(bytes(32), r3.event_id, r3.payload),),
    )
    assert journal.verify(BTC) == VerifyReport(
        stream=BTC,
        ok=False,
        rows=1,
        first_bad_seq=2,
        reason="stream tail is seq 1 but the journal recorded seq 5 "
        "(rows missing at the end, or the tail hash was altered)",
    )


def test_transaction_is_invisible_to_other_journals_until_commit(
    pg_dsn: str, pg_schema: str
) -> None:
    with (
        PostgresJournal(pg_dsn, schema=pg_schema) as j,
        PostgresJournal(pg_dsn, schema=pg_schema) as other,
    ):
        with j.transaction():
            assert j.append(BTC, [delta(1, 100)]) == [1]
            assert other.streams() == []
            assert list(other.read_range()) == []
        assert other.streams() == [
            StreamInfo(stream=BTC, count=1, first_ts=100, last_ts=100, last_seq=1)
        ]


def test_range_reads_walk_the_canonical_index(journal: PostgresJournal) -> None:
    """The canonical order comes off the partial index (no sort) once the planner has
    to choose between them; ``COLLATE "C"`` on exchange/symbol makes that possible."""
    journal.append(BTC, [delta(n, n * 100) for n in range(1, 50)])
    found = journal._range_where(5, 900, ["BINANCE"], ["BTC-USDT"])
    assert found is not None
    where, params = found
    conn = journal._writer()
    with conn.transaction():
        conn.execute("SET LOCAL enable_seqscan = off")
        conn.execute("SET LOCAL enable_bitmapscan = off")
        plan = conn.execute(
            f"EXPLAIN SELECT e.payload FROM events e WHERE {where} {postgres_backend._ORDER}",
            params,
        ).fetchall()
    text = "\n".join(r[0] for r in plan)
    assert "events_canonical" in text
    assert "Sort" not in text


# ---------------------------------------------------------------------------------------
# Read models
# ---------------------------------------------------------------------------------------

COLS = [ReadModelColumn("n", "int"), ReadModelColumn("x", "float"), ReadModelColumn("t", "text")]


def test_read_models_round_trip_and_join_transactions(journal: PostgresJournal) -> None:
    assert journal.read_read_model("demo_rows").columns == ()
    assert journal.write_read_model("demo_rows", "b", COLS, [(1, 0.5, "x"), (2, 1, None)]) == 2
    assert journal.write_read_model("demo_rows", "a", COLS, [(3, None, "y")]) == 1
    rows = journal.read_read_model("demo_rows")
    assert rows.columns == ("session_id", "n", "x", "t")
    assert rows.rows == [("a", 3, None, "y"), ("b", 1, 0.5, "x"), ("b", 2, 1.0, None)]
    with pytest.raises(RuntimeError, match="abort"), journal.transaction():
        journal.write_read_model("demo_rows", "a", COLS, [(4, 4.0, "z")])
        journal.write_read_model("other_rows", "a", COLS, [(5, 5.0, "w")])
        assert journal.read_read_model("demo_rows", "a").rows == [("a", 4, 4.0, "z")]
        raise RuntimeError("abort")
    assert journal.read_read_model("demo_rows", "a").rows == [("a", 3, None, "y")]
    assert journal.read_read_model("other_rows").columns == ()
    with pytest.raises(JournalError, match=re.escape("has columns (n int, x float, t text)")):
        journal.write_read_model("demo_rows", "a", COLS[:2], [(1, 1.0)])
    journal.drop_read_model("demo_rows")
    journal.drop_read_model("demo_rows")
    assert journal.read_read_model("demo_rows").rows == []


# ---------------------------------------------------------------------------------------
# DSNs
# ---------------------------------------------------------------------------------------


def test_unreachable_server_names_host_and_port_not_the_password() -> None:
    with pytest.raises(JournalError) as caught:
        open_journal("postgresql://trader:hunter2@127.0.0.1:1/journal?schema=live")
    message = str(caught.value)
    assert message.startswith("cannot connect to PostgreSQL at 127.0.0.1:1/journal: ")
    assert "hunter2" not in message


def test_split_dsn() -> None:
    assert postgres_backend.split_dsn("postgresql://u@h:5/db?schema=s&sslmode=disable") == (
        "postgresql://u@h:5/db?sslmode=disable",
        "s",
    )
    assert postgres_backend.split_dsn("postgresql://u@h/db") == ("postgresql://u@h/db", None)
    assert postgres_backend.split_dsn("host=h dbname=db") == ("host=h dbname=db", None)
