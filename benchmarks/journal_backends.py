#!/usr/bin/env python3
"""Journal backends side by side: append (ingest) events/s per batch size and replay read
events/s, for SQLite and PostgreSQL, as JSON on stdout.

    .venv/bin/python benchmarks/journal_backends.py [--events 200000]
        [--batches 1000,10000,50000] [--pg postgresql://postgres@127.0.0.1:5432/postgres]

Events are real-looking book deltas and trades from the synthetic generator, encoded
once (append measures the journal, not the encoder). PostgreSQL runs in a fresh schema
that is dropped afterwards; it is skipped (and says so) when the server is unreachable.
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from adapters.journal.base import Journal, PreparedEvent  # noqa: E402
from adapters.journal.sqlite import SqliteJournal  # noqa: E402


def make_events(n: int, work: Path) -> list[PreparedEvent]:
    from adapters.config_loader import load_config
    from journal_tools.synth import SynthSpec, generate
    from journal_tools.tardis import import_files
    from kernel.instruments import InstrumentRegistry

    manifest = generate(
        SynthSpec(
            out_dir=str(work / "data"),
            hours=0.2,
            exchanges=("binance",),
            symbols=("BTC-USDT",),
            perps=False,
            book_msgs=int(n * 0.9),
            trades=int(n * 0.1),
        )
    )
    src = SqliteJournal(work / "src.db")
    import_files(
        src,
        InstrumentRegistry(list(load_config().instruments.instruments)),
        [f.path for f in manifest.files],
    )
    rows = [PreparedEvent.of_record(r) for r in src.read_range()]
    src.close()
    return rows[:n]


def run(journal: Journal, rows: list[PreparedEvent], batch: int) -> dict[str, float]:
    t0 = time.perf_counter()
    for i in range(0, len(rows), batch):
        journal.append_prepared("md.BENCH.X", rows[i : i + batch])
    append_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    n = sum(len(block) for block in journal.iter_payload_blocks())
    read_s = time.perf_counter() - t0
    return {
        "batch": batch,
        "events": len(rows),
        "append_s": round(append_s, 3),
        "append_events_per_s": round(len(rows) / append_s),
        "read_events": n,
        "read_events_per_s": round(n / read_s),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--batches", default="1000,10000,50000")
    ap.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = ap.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    out: dict[str, object] = {"benchmark": "journal_backends"}
    with tempfile.TemporaryDirectory(prefix="tickerml-jb-") as tmp:
        work = Path(tmp)
        rows = make_events(args.events, work)
        out["events"] = len(rows)
        sqlite_runs = []
        for b in batches:
            j = SqliteJournal(work / f"s{b}.db")
            sqlite_runs.append(run(j, rows, b))
            j.close()
        out["sqlite"] = sqlite_runs
        try:
            from adapters.journal.postgres import PostgresJournal

            pg_runs = []
            for b in batches:
                schema = f"bench_{secrets.token_hex(4)}"
                pj = PostgresJournal(args.pg, schema=schema)
                try:
                    pg_runs.append(run(pj, rows, b))
                finally:
                    pj.close()
                    import psycopg

                    with psycopg.connect(args.pg, autocommit=True) as conn:
                        conn.execute(f"DROP SCHEMA {schema} CASCADE")
            out["postgres"] = pg_runs
        except Exception as exc:
            out["postgres"] = {"skipped": f"{type(exc).__name__}: {exc}"}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
