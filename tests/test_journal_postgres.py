"""PostgreSQL-only journal checks: concurrent writers, COPY ingest, schema handling, raw
tampering, DSNs. The backend-independent contract is in ``test_journal_contract.py``.

Every test runs in a fresh schema of the session's test database (``tests/conftest.py``)
and is skipped when no PostgreSQL server is reachable.
"""

from __future__ import annotations

import itertools
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
from kernel.events import BookDelta, Heartbeat, encode

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
        layout = j.layout
    assert layout in ("partitioned", "timescaledb")  # a new journal is never plain
    assert sorted(_raw(pg_dsn, pg_schema, "SELECT key, value FROM meta")) == [
        ("layout", layout),
        ("schema_version", "2"),
    ]


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
    # a thorough forger also rewrites the stored prev_hash (partitioned layouts store it)
    _raw(
        pg_dsn,
        pg_schema,
        "UPDATE events SET seq = 1, hash = %s, prev_hash = %s WHERE seq = 3",
        (chain_hash(bytes(32), r3.event_id, r3.payload), bytes(32)),
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
    # the partition's (events_pYYYYMMDD_canonical) or chunk's copy of events_canonical
    assert re.search(r"events(_p\d{8})?_canonical", text), text
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


# ---------------------------------------------------------------------------------------
# Layouts: day partitions, TimescaleDB, the old unpartitioned table
# ---------------------------------------------------------------------------------------

DAY = postgres_backend.DAY_NS
JAN1 = 1_735_689_600 * 1_000_000_000  # 2025-01-01T00:00:00Z


def _rows_per_partition(dsn: str, schema: str) -> dict[str, int]:
    return dict(
        _raw(dsn, schema, "SELECT tableoid::regclass::text, count(*) FROM events GROUP BY 1")
    )


def _leaf_partitions(dsn: str, schema: str) -> list[str]:
    return sorted(
        r[0]
        for r in _raw(
            dsn,
            schema,
            "SELECT relid::regclass::text FROM pg_partition_tree('events') WHERE isleaf",
        )
    )


def test_batch_spanning_three_days_lands_in_three_day_partitions(
    pg_dsn: str, pg_schema: str
) -> None:
    with PostgresJournal(pg_dsn, schema=pg_schema, layout="partitioned") as j:
        assert j.layout == "partitioned"
        # 40 events (COPY path): 10 on Jan 1 (the last at 23:59:59.999999999), 20 on Jan 2,
        # 10 on Jan 3 (the first at 00:00:00 exactly); ts_event = ts - 10 ns (see delta)
        times = [JAN1 + DAY - 10 * 60 * 10**9 + n * 60 * 10**9 for n in range(10)]
        times[-1] = JAN1 + DAY - 1 + 10
        times += [JAN1 + DAY + 10 + n * 3_600 * 10**9 for n in range(20)]
        times += [JAN1 + 2 * DAY + 10 + n * 10**9 for n in range(10)]
        batch = [delta(n + 1, ts) for n, ts in enumerate(times)]
        assert j.append(BTC, batch) == list(range(1, 41))
        assert _leaf_partitions(pg_dsn, pg_schema) == [
            "events_p20250101",
            "events_p20250102",
            "events_p20250103",
        ]
        assert _rows_per_partition(pg_dsn, pg_schema) == {
            "events_p20250101": 10,
            "events_p20250102": 20,
            "events_p20250103": 10,
        }
        # duplicates, again across the three days, in a big and a small batch: one row each
        assert j.append(BTC, batch[::-1]) == list(range(40, 0, -1))
        assert j.append(ETH, [batch[0], batch[15], batch[39], delta(99, JAN1 + 3 * DAY + 10)]) == [
            1,
            16,
            40,
            1,
        ]
        assert _rows_per_partition(pg_dsn, pg_schema) == {
            "events_p20250101": 10,
            "events_p20250102": 20,
            "events_p20250103": 10,
            "events_p20250104": 1,
        }
        records = list(j.read(BTC))
        assert [r.payload for r in records] == [encode(e) for e in batch]
        assert all(b.prev_hash == a.hash for a, b in itertools.pairwise(records))
        assert [r.seq for r in j.read_range()] == [*range(1, 41), 1]  # canonical order
        assert j.verify(BTC) == VerifyReport(stream=BTC, ok=True, rows=40)
    # the partition key is event_id itself (ranges of its 8-byte time prefix), so the
    # idempotence constraint is UNIQUE (event_id) alone, as in the plain layout
    unique = _raw(
        pg_dsn,
        pg_schema,
        "SELECT pg_get_constraintdef(oid) FROM pg_constraint "
        "WHERE conrelid = 'events'::regclass AND contype = 'u'",
    )
    assert unique == [("UNIQUE (event_id)",)]
    bounds = _raw(
        pg_dsn,
        pg_schema,
        "SELECT pg_get_expr(relpartbound, oid) FROM pg_class WHERE relname = 'events_p20250102'",
    )
    jan2, jan3 = ((JAN1 + d * DAY).to_bytes(8, "big").hex() for d in (1, 2))
    assert bounds == [(f"FOR VALUES FROM ('\\x{jan2}') TO ('\\x{jan3}')",)]


def test_a_batch_whose_middle_is_on_another_day_still_finds_its_partition(
    pg_dsn: str, pg_schema: str
) -> None:
    """The append creates partitions for the first and last id's day; an id in between
    on another day is refused by PostgreSQL (no partition), and the retry creates every
    day's partition: all rows stored once, seqs gap-free."""
    with PostgresJournal(pg_dsn, schema=pg_schema, layout="partitioned") as j:
        times = [JAN1 + 10 + n for n in range(20)]
        times[10] = JAN1 + 5 * DAY + 10  # Jan 6, between two Jan 1 ids
        batch = [delta(n + 1, ts) for n, ts in enumerate(times)]
        assert j.append(BTC, batch) == list(range(1, 21))
        assert _rows_per_partition(pg_dsn, pg_schema) == {
            "events_p20250101": 19,
            "events_p20250106": 1,
        }
        assert j.verify(BTC) == VerifyReport(stream=BTC, ok=True, rows=20)


def test_ids_of_any_shape_find_their_partition(pg_dsn: str, pg_schema: str) -> None:
    """Partitions follow PostgreSQL's bytea order of the ids: a time before 1970 (its
    prefix, read unsigned, sorts after every later time) and ids shorter than 8 bytes."""
    hb = Heartbeat(ts_event=1, ts_recv=1, stream="x")
    before_1970 = (-1).to_bytes(8, "big", signed=True) + b"12345678"  # 1969-12-31T23:59:59.999
    ids = [b"", b"\x00\x01", before_1970, (JAN1 + DAY).to_bytes(8, "big")[:5], b"\xff" * 3]
    # b'\x00\x01' is 2**48 ns (1970-01-04T06:11) less a little
    assert [postgres_backend.id_day(i) for i in ids] == [0, 3, -1, 20089, -1]
    with PostgresJournal(pg_dsn, schema=pg_schema, layout="partitioned") as j:
        assert j.append("session.ids", [hb] * 5, event_ids=ids) == [1, 2, 3, 4, 5]
        assert j.append("session.ids", [hb] * 5, event_ids=ids[::-1]) == [5, 4, 3, 2, 1]
    assert _rows_per_partition(pg_dsn, pg_schema) == {
        "events_p19691231": 2,
        "events_p19700101": 1,
        "events_p19700104": 1,
        "events_p20250101": 1,  # 5 bytes of Jan 2's prefix sort just below Jan 2
    }


def test_a_partition_dropped_behind_the_journals_back_is_created_again(
    pg_dsn: str, pg_schema: str
) -> None:
    with PostgresJournal(pg_dsn, schema=pg_schema, layout="partitioned") as j:
        j.append(BTC, [delta(1, JAN1 + 10)])
        _raw(pg_dsn, pg_schema, "DROP TABLE events_p20250101")  # the journal still believes in it
        assert j.append(ETH, [delta(2, JAN1 + 20)]) == [1]
        assert _rows_per_partition(pg_dsn, pg_schema) == {"events_p20250101": 1}


def test_partition_creation_does_not_wait_for_a_long_reader(pg_dsn: str, pg_schema: str) -> None:
    """A replay holding its snapshot (and locks on every partition) does not stop an
    append from creating the next day's partition."""
    with PostgresJournal(pg_dsn, schema=pg_schema, layout="partitioned") as j:
        j.append(BTC, [delta(n, JAN1 + 100 + n) for n in range(1, 40)])
        reader = j.read_range()
        next(reader)  # the read's transaction is open, holding its locks
        with PostgresJournal(pg_dsn, schema=pg_schema) as writer:
            writer._writer().execute("SET lock_timeout = '2s'")
            assert writer.append(BTC, [delta(40, JAN1 + DAY + 50)]) == [40]
        assert len(list(reader)) == 38  # still its own snapshot
        assert _leaf_partitions(pg_dsn, pg_schema) == ["events_p20250101", "events_p20250102"]


def test_a_journal_created_before_layouts_is_kept_as_it_is(pg_dsn: str, pg_schema: str) -> None:
    """Schema version 1 (one unpartitioned events table, as the code before layouts made
    it) opens in the plain layout and is written and read as before."""
    _raw(pg_dsn, "public", f"CREATE SCHEMA {pg_schema}")
    for stmt in (*postgres_backend._COMMON_SCHEMA, *postgres_backend._PLAIN_EVENTS):
        _raw(pg_dsn, pg_schema, stmt)
    _raw(pg_dsn, pg_schema, "INSERT INTO meta (key, value) VALUES ('schema_version', '1')")
    with PostgresJournal(pg_dsn, schema=pg_schema) as j:
        assert j.layout == "plain"
        assert j.append(BTC, [delta(n, JAN1 + n * DAY) for n in range(1, 21)]) == list(range(1, 21))
        assert j.append(BTC, [delta(3, JAN1 + 3 * DAY)]) == [3]
        records = list(j.read(BTC))
        assert records[5].prev_hash == records[4].hash
        assert j.verify(BTC) == VerifyReport(stream=BTC, ok=True, rows=20)
    assert _raw(pg_dsn, pg_schema, "SELECT key, value FROM meta") == [("schema_version", "1")]
    # an ordinary table ("r"), not a partitioned one ("p")
    relkind = "SELECT relkind FROM pg_class WHERE oid = 'events'::regclass"
    assert _raw(pg_dsn, pg_schema, relkind) == [("r",)]
    with pytest.raises(JournalError, match="holds a journal of layout plain, not partitioned"):
        PostgresJournal(pg_dsn, schema=pg_schema, layout="partitioned")


def test_layout_options_from_the_dsn_and_the_config() -> None:
    dsn = "postgresql://u@h/db?schema=s&layout=partitioned&hot_days=3&sslmode=disable"
    libpq, options = postgres_backend.take_dsn_options(dsn)
    assert libpq == "postgresql://u@h/db?sslmode=disable"
    assert options == {"schema": "s", "layout": "partitioned", "hot_days": "3"}
    assert (
        postgres_backend.with_layout_options("postgresql://u@h/db?hot_days=3", "auto", 7, 90)
        == "postgresql://u@h/db?hot_days=3&layout=auto&retention_days=90"
    )
    assert postgres_backend.with_layout_options("sqlite:///x.db", "auto", 7, 0) == "sqlite:///x.db"
    with pytest.raises(JournalError, match="layout 'sharded' is not one of"):
        PostgresJournal("postgresql://u@127.0.0.1:1/db?layout=sharded")


def _timescale_dsn(pg_dsn: str) -> str | None:
    """A server where TimescaleDB can be used: ``TICKERML_TEST_TIMESCALE_DSN`` (e.g. the
    PGlite recipe in docs/storage.md), else the test server if it has the extension."""
    import os

    env = os.environ.get("TICKERML_TEST_TIMESCALE_DSN")
    if env:
        return env
    found = _raw(
        pg_dsn, "public", "SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'"
    )
    return pg_dsn if found else None


def test_timescaledb_layout_hypertable_chunks_and_policies(pg_dsn: str, pg_schema: str) -> None:
    dsn = _timescale_dsn(pg_dsn)
    if dsn is None:
        pytest.skip(
            "TimescaleDB not available: the test server has no timescaledb extension "
            "(pg_available_extensions) and TICKERML_TEST_TIMESCALE_DSN is not set; the "
            "partitioned layout is tested instead (docs/storage.md: testing the "
            "TimescaleDB path with PGlite)"
        )
    url = f"{dsn}{'&' if '?' in dsn else '?'}schema={pg_schema}&hot_days=3&retention_days=30"
    # Small batches (the INSERT path) and reads inside transaction() use the one writer
    # connection: PGlite serves one connection at a time and has no COPY.
    with PostgresJournal(url) as j:
        assert j.layout == "timescaledb"
        batch = [delta(n, JAN1 + n * DAY // 2 + 10) for n in range(6)]  # 3 days, 2 per day
        assert j.append(BTC, batch) == list(range(1, 7))
        assert j.append(BTC, batch[:3]) == [1, 2, 3]  # duplicates: one row each
        with j.transaction():
            assert [r.payload for r in j.read(BTC)] == [encode(e) for e in batch]
            assert j.verify(BTC) == VerifyReport(stream=BTC, ok=True, rows=6)
    with psycopg.connect(dsn, autocommit=True) as conn:
        chunks = conn.execute(
            "SELECT range_start_integer, range_end_integer FROM timescaledb_information.chunks "
            "WHERE hypertable_schema = %s AND hypertable_name = 'events' ORDER BY 1",
            (pg_schema,),
        ).fetchall()
        assert chunks == [(JAN1 + d * DAY, JAN1 + (d + 1) * DAY) for d in range(3)]
        settings = conn.execute(
            "SELECT attname, segmentby_column_index, orderby_column_index "
            "FROM timescaledb_information.compression_settings WHERE hypertable_schema = %s "
            "ORDER BY attname",
            (pg_schema,),
        ).fetchall()
        # TimescaleDB adds the time column to the order by itself
        assert settings == [("id_ts", None, 2), ("seq", None, 1), ("sid", 1, None)]
        jobs = conn.execute(
            "SELECT proc_name, config FROM timescaledb_information.jobs "
            "WHERE hypertable_schema = %s ORDER BY proc_name",
            (pg_schema,),
        ).fetchall()
        assert [
            (name, config.get("compress_after"), config.get("drop_after")) for name, config in jobs
        ] == [
            ("policy_compression", 3 * DAY, None),
            ("policy_retention", None, 30 * DAY),
        ]
        # warm data compressed (what the policy does after hot_days), then re-delivered
        row = conn.execute(
            "SELECT extnamespace::regnamespace::text FROM pg_extension "
            "WHERE extname = 'timescaledb'"
        ).fetchone()
        assert row is not None
        ts = row[0]
        conn.execute(
            f"SELECT {ts}.compress_chunk(c) FROM {ts}.show_chunks(%s::regclass) c",
            (f"{pg_schema}.events",),
        )
    with PostgresJournal(url) as j:
        assert j.append(BTC, [*batch, delta(6, JAN1 + 5)]) == list(range(1, 8))
        with j.transaction():
            assert j.verify(BTC) == VerifyReport(stream=BTC, ok=True, rows=7)
    with psycopg.connect(dsn, autocommit=True) as conn:
        count = conn.execute(f"SELECT count(*) FROM {pg_schema}.events").fetchone()
        assert count == (7,)
