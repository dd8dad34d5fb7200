"""Writer process for ``test_journal_crash.py``: appends batches until it is killed.

Usage: ``python tests/crash_writer.py DB_PATH``

Appends batches of :data:`BATCH` BookDelta events to :data:`STREAM`, continuing after
the stream's last seq (source seq == stream seq, so every id is new). After each
``append_prepared`` returns (the batch is committed) it prints ``ACK <batch_no>
<last_seq> <append_us>`` and flushes, so every ACK the parent reads names a committed
batch; ``append_us`` (how long that append took, in microseconds) lets the parent aim
its SIGKILL at a chosen point inside the next append.
"""

from __future__ import annotations

import sys
import time

from adapters.journal import SqliteJournal, market_stream, prepare
from kernel.events import BookDelta

BATCH = 500
STREAM = market_stream("BINANCE", "BTC-USDT")
T0 = 1_700_000_000_000_000_000
"""ts_recv of seq 1 (ns); seq n arrives at T0 + n ms."""


def batch(first_seq: int) -> list[BookDelta]:
    """BATCH deltas with source seqs first_seq .. first_seq + BATCH - 1."""
    return [
        BookDelta(
            ts_event=T0 + n * 1_000_000 - 1_000,
            ts_recv=T0 + n * 1_000_000,
            exchange="BINANCE",
            symbol="BTC-USDT",
            seq=n,
            bids=((6_500_000 + n % 97, 1 + n % 13),),
            asks=((6_500_100 + n % 89, 1 + n % 11),),
        )
        for n in range(first_seq, first_seq + BATCH)
    ]


def main(path: str) -> None:
    journal = SqliteJournal(path)
    last_seq = next((s.last_seq for s in journal.streams() if s.stream == STREAM), 0)
    batch_no = last_seq // BATCH
    out = sys.stdout
    pending = [prepare(ev) for ev in batch(last_seq + 1)]
    while True:
        batch_no += 1
        start = time.perf_counter_ns()
        seqs = journal.append_prepared(STREAM, pending)
        append_us = (time.perf_counter_ns() - start) // 1000
        last_seq = seqs[-1]
        # Prepare the next batch before acking this one, so that from each ACK on the
        # writer is inside append_prepared: that is where the parent's SIGKILL lands.
        pending = [prepare(ev) for ev in batch(last_seq + 1)]
        out.write(f"ACK {batch_no} {last_seq} {append_us}\n")
        out.flush()


if __name__ == "__main__":
    main(sys.argv[1])
