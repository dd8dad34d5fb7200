#!/usr/bin/env python3
"""Cost of the microstructure features (kernel/features), as JSON on stdout.

    .venv/bin/python benchmarks/features.py [--events 300000] [--seed 1]

A synthetic single-instrument stream (seeded numpy PCG64): a 25-level book per side,
book deltas near the touch (~70%), a fresh snapshot when the mid moves (~5%), and
trades at the touch (~25%); exchange times 1-20 ms apart. Reported:

* ``book_only_us``: per event, applying the book messages to a bare ``L2Book`` (the
  cost the engine pays anyway);
* ``featureset_us``: per event, ``FeatureSet.apply`` with every feature on (book,
  spread EWMA, windows, rates, VPIN, Kyle's lambda) and sampling every 100 ms;
* ``feature_update_us``: the difference, i.e. what the features add per event;
* ``featureset_unsampled_us`` / ``feature_update_unsampled_us``: the same without
  sampling (the incremental updates alone; the FeatureSet's own book included);
* ``query_us``: one ``FeatureSet.features`` call (every feature of the instrument);
* ``samples`` and ``events_per_s``.

Single-threaded; timings are wall clock on this machine (best of ``--repeat``).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Literal

import msgspec
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kernel.book import BookError, L2Book
from kernel.events import BookDelta, BookSnapshot, Trade
from kernel.features import FeatureConfig, FeatureSet

EX, SYM = "BINANCE", "BTC-USDT"
LEVELS = 25


def stream(n: int, seed: int) -> list[BookSnapshot | BookDelta | Trade]:
    rng = np.random.Generator(np.random.PCG64(seed))
    u = rng.random(n)
    gaps = rng.integers(1_000_000, 20_000_000, n)
    offsets = rng.integers(1, LEVELS + 1, n)
    sizes = rng.integers(0, 500, n)
    trade_sizes = rng.geometric(0.05, n)
    sides = rng.random(n) < 0.5
    moves = rng.integers(-2, 3, n)
    t, mid = 1_700_000_000_000_000_000, 6_000_000
    out: list[BookSnapshot | BookDelta | Trade] = []

    def snapshot(i: int) -> BookSnapshot:
        bids = tuple((mid - k, 100 + 7 * k) for k in range(1, LEVELS + 1))
        asks = tuple((mid + k, 100 + 5 * k) for k in range(1, LEVELS + 1))
        return BookSnapshot(t, t, EX, SYM, i, bids, asks)

    for i in range(n):
        t += int(gaps[i])
        if i == 0 or u[i] < 0.05:
            mid += int(moves[i])
            out.append(snapshot(i))
        elif u[i] < 0.75:
            level = ((mid - int(offsets[i]) if sides[i] else mid + int(offsets[i])), int(sizes[i]))
            if sides[i]:
                out.append(BookDelta(t, t, EX, SYM, i, (level,), ()))
            else:
                out.append(BookDelta(t, t, EX, SYM, i, (), (level,)))
        else:
            side: Literal["buy", "sell"] = "buy" if sides[i] else "sell"
            price = mid + 1 if sides[i] else mid - 1
            out.append(Trade(t, t, EX, SYM, i, str(i), price, int(trade_sizes[i]), side))
    return out


def book_only(events: list[BookSnapshot | BookDelta | Trade]) -> float:
    book = L2Book(EX, SYM)
    t0 = time.perf_counter()
    for e in events:
        try:
            if isinstance(e, BookSnapshot):
                book.apply_snapshot(e.bids, e.asks, e.ts_event)
            elif isinstance(e, BookDelta):
                book.apply_delta(e.bids, e.asks, e.ts_event)
        except BookError:
            pass
    return time.perf_counter() - t0


CONFIG = FeatureConfig(
    vpin_bucket_volume={EX: 2_000},
    large_trade_size={EX: 100},
    sample_interval_ns=100_000_000,
)


def with_features(
    events: list[BookSnapshot | BookDelta | Trade], config: FeatureConfig = CONFIG
) -> tuple[float, int, FeatureSet]:
    fs = FeatureSet(config)
    samples = 0
    t0 = time.perf_counter()
    for e in events:
        samples += len(fs.apply(e))
    return time.perf_counter() - t0, samples, fs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    events = stream(args.events, args.seed)
    n = len(events)
    base = min(book_only(events) for _ in range(args.repeat))
    runs = [with_features(events) for _ in range(args.repeat)]
    full = min(r[0] for r in runs)
    unsampled_config = msgspec.structs.replace(CONFIG, sample_interval_ns=0)
    unsampled = min(with_features(events, unsampled_config)[0] for _ in range(args.repeat))
    samples, fs = runs[0][1], runs[0][2]
    queries = 20_000
    t0 = time.perf_counter()
    for _ in range(queries):
        fs.features(EX, SYM)
    query = (time.perf_counter() - t0) / queries
    print(
        json.dumps(
            {
                "benchmark": "features",
                "python": platform.python_version(),
                "machine": platform.machine(),
                "events": n,
                "trades": sum(isinstance(e, Trade) for e in events),
                "book_only_us": round(base / n * 1e6, 3),
                "featureset_us": round(full / n * 1e6, 3),
                "feature_update_us": round((full - base) / n * 1e6, 3),
                "featureset_unsampled_us": round(unsampled / n * 1e6, 3),
                "feature_update_unsampled_us": round((unsampled - base) / n * 1e6, 3),
                "query_us": round(query * 1e6, 2),
                "samples": samples,
                "events_per_s": round(n / full),
                "features": len(fs.names),
                "rejected": fs.rejected(EX, SYM),
                "state_bytes": len(fs.snapshot()),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
