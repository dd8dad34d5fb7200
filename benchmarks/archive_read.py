#!/usr/bin/env python3
"""Replay reads from the Parquet cold tier against the SQLite database, as JSON on stdout.

    .venv/bin/python benchmarks/archive_read.py [--events 200000] [--repeat 3]

The events are the synthetic book deltas and trades of ``journal_backends.py`` (one
instrument), appended to a SQLite journal, once as one stream and once dealt round-robin
over four streams. Figures (best of ``--repeat``), in events per second of wall
time and per second of this process's CPU time (steadier on a shared machine), of
``iter_payload_blocks`` over the whole range (the replay hot path: payloads in the
canonical order, SHA-256 of every file checked on the way):

* ``sqlite_read``: every row in the database;
* ``parquet_read``: every row archived (one ordered file per stream and day: streamed in
  record batches), read through ``open_journal`` (a TieredJournal);
* ``parquet_4_streams_read``: four files per day, read, filtered and sorted by Arrow;
* ``half_half_read``: the first half archived, the second half still in the database.

``archive_write`` is ``tickerml archive``'s rate: read from the database, check, write,
read back and verify, delete.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from adapters.journal import open_journal  # noqa: E402
from adapters.journal.base import Journal, PreparedEvent  # noqa: E402
from adapters.journal.parquet import archive_journal  # noqa: E402
from adapters.journal.sqlite import SqliteJournal  # noqa: E402


def read_rate(journal: Journal, repeat: int) -> tuple[int, dict[str, int]]:
    """(events, best events/s of wall time and of CPU time) of a full-range payload read."""
    wall = cpu = 0.0
    n = 0
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        n = sum(len(block) for block in journal.iter_payload_blocks())
        wall = max(wall, n / (time.perf_counter() - t0))
        cpu = max(cpu, n / max(time.process_time() - c0, 1e-9))
    return n, {"events_per_s": round(wall), "events_per_cpu_s": round(cpu)}


def build(path: Path, rows: list[PreparedEvent], streams: int) -> None:
    j = SqliteJournal(path)
    for k in range(streams):
        mine = rows[k::streams]
        for i in range(0, len(mine), 50_000):
            j.append_prepared(f"md.BENCH.X{k}", mine[i : i + 50_000])
    j.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    from journal_backends import make_events

    out: dict[str, object] = {"benchmark": "archive_read"}
    with tempfile.TemporaryDirectory(prefix="tickerml-ar-") as tmp:
        work = Path(tmp)
        rows = make_events(args.events, work)
        out["events"] = len(rows)
        end = max(r.ts_recv for r in rows) + 1
        middle = sorted(r.ts_recv for r in rows)[len(rows) // 2]

        build(work / "one.db", rows, 1)
        out["sqlite_bytes_per_event"] = round((work / "one.db").stat().st_size / len(rows), 1)
        with SqliteJournal(work / "one.db") as j:
            out["sqlite_read"] = read_rate(j, args.repeat)[1]
            t0, c0 = time.perf_counter(), time.process_time()
            report = archive_journal(j, end, work / "one-archive")
            seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
        out["archive_write"] = {
            "events_per_s": round(report.rows / seconds),
            "events_per_cpu_s": round(report.rows / cpu),
        }
        out["archive_files"] = len(report.files)
        archive_bytes = sum(p.stat().st_size for p in (work / "one-archive").rglob("*.parquet"))
        out["archive_bytes"] = archive_bytes
        out["parquet_bytes_per_event"] = round(archive_bytes / len(rows), 1)
        with open_journal(str(work / "one.db")) as j:
            n, rate = read_rate(j, args.repeat)
            assert n == len(rows)
            out["parquet_read"] = rate

        build(work / "four.db", rows, 4)
        with SqliteJournal(work / "four.db") as j:
            out["sqlite_4_streams_read"] = read_rate(j, args.repeat)[1]
            archive_journal(j, end, work / "four-archive")
        with open_journal(str(work / "four.db")) as j:
            n, rate = read_rate(j, args.repeat)
            assert n == len(rows)
            out["parquet_4_streams_read"] = rate

        build(work / "half.db", rows, 1)
        with SqliteJournal(work / "half.db") as j:
            archive_journal(j, middle, work / "half-archive")
        with open_journal(str(work / "half.db")) as j:
            n, rate = read_rate(j, args.repeat)
            assert n == len(rows)
            out["half_half_read"] = rate
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
