"""``tickerml record``: run the exchange collectors into the journal or onto Kafka.

    tickerml record --exchanges binance,kraken --symbols BTC-USDT,ETH-USDT \\
        --to journal|kafka [--journal DSN] [--raw-capture DIR] [--duration S]

Each exchange's adapter (:mod:`adapters.exchanges.registry`) subscribes to the symbols
(normalised ``BTC-USDT`` or the venue's own ``BTCUSDT`` / ``XBT/USD``) and emits
normalised events:

* ``--to journal``: market events into ``md.EXCHANGE.SYMBOL`` and ``Connectivity`` into
  ``sys.CONNECTIVITY``, appended in batches (idempotent: recording the same messages
  twice adds nothing);
* ``--to kafka``: every event onto its topic (``config/kafka.yaml``), plus a
  ``Heartbeat`` per instrument stream each second, for ``tickerml live`` kernels and the
  journal sink.

``--raw-capture DIR`` also writes every raw frame, subscribe message, connection and REST
response to ``DIR/<exchange>-<UTC time>.jsonl.gz`` in the cryptofeed "format 2" layout
that :func:`adapters.exchanges.fake.load_capture` plays back: users build their own test
fixtures from it. Stops after ``--duration`` seconds or on SIGINT/SIGTERM, flushing
everything; prints what each feed saw (frames, events, gaps, resyncs, reconnects).
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import signal
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import msgspec
import structlog

from adapters.exchanges.base import ExchangeInterface, FeedConfig
from adapters.exchanges.registry import build_adapter
from adapters.journal.base import Journal, market_stream
from adapters.kafka import default_stream
from kernel.config import AppConfig
from kernel.events import Alert, Connectivity, Event, FundingRate, Heartbeat, MarkPrice
from kernel.funding import DEFAULT_ALERT_RATE, FundingMonitor
from kernel.instruments import Instrument, InstrumentError

log = structlog.get_logger("tickerml.record")

CONNECTIVITY_STREAM = "sys.CONNECTIVITY"
"""Link up/down/resync events: journaled for audits and data quality, not kernel inputs."""
ALERTS_STREAM = "sys.ALERTS"
"""Alerts raised at collection (funding above the threshold)."""


HEARTBEAT_STREAM = "md.HEARTBEAT"
"""Heartbeats are kernel inputs (they advance the clock): journaled with the market data."""


def heartbeats(adapters: Sequence[ExchangeInterface], now: int) -> list[Event]:
    """One ``Heartbeat`` at ``now`` for every instrument stream the adapters collect."""
    return [
        Heartbeat(now, now, market_stream(i.exchange, i.symbol))
        for a in adapters
        for i in a.instruments.values()
    ]


def input_stream(event: Event) -> str | None:
    """The journal stream of a collected or bus event (None: not journaled)."""
    if isinstance(event, Heartbeat):
        return HEARTBEAT_STREAM
    return system_stream(event) or default_stream(event)


def system_stream(event: Event) -> str | None:
    """The journal stream of a collector event that is not a kernel input."""
    if isinstance(event, Connectivity):
        return CONNECTIVITY_STREAM
    if isinstance(event, Alert):
        return ALERTS_STREAM
    return None


def funding_alerts(monitor: FundingMonitor, events: Sequence[Event]) -> list[Alert]:
    """Feed funding and mark events to ``monitor``; the alerts it raised."""
    out: list[Alert] = []
    for ev in events:
        if isinstance(ev, FundingRate | MarkPrice):
            try:
                out.extend(monitor.apply(ev))
            except InstrumentError:
                continue  # not a configured perp: no funding cycle to judge it by
    return out


class RecordError(ValueError):
    """Bad record arguments (unknown exchange, nothing to record)."""


class RawCapture:
    """Writes capture rows as gzip JSON lines, one file per exchange."""

    def __init__(
        self, directory: Path, exchange: str, channels: Sequence[str], symbols: Sequence[str]
    ) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        self.path = directory / f"{exchange.lower()}-{stamp}.jsonl.gz"
        self._fh: IO[str] = gzip.open(self.path, "wt", encoding="utf-8")  # noqa: SIM115
        self.rows = 0
        header = {
            "t": "header",
            "format": 2,
            "exchange": exchange,
            "config": {ch: list(symbols) for ch in channels},
            "recorded": time.time(),
            "recorder": "tickerml record",
        }
        self.write(header)

    def write(self, row: dict[str, Any]) -> None:
        self._fh.write(json.dumps(row, separators=(",", ":")) + "\n")
        self.rows += 1

    def close(self) -> None:
        self._fh.close()


class RecordResult(msgspec.Struct):
    seconds: float
    events: int
    journaled: int
    produced: int
    feeds: dict[str, dict[str, int]]
    captures: list[str]


def build_adapters(
    exchanges: Sequence[str],
    symbols: Sequence[str],
    channels: Sequence[str],
    depth: int,
    ws_url: str | None = None,
    rest_url: str | None = None,
    options: dict[str, Any] | None = None,
    instruments: Sequence[Instrument] = (),
) -> list[ExchangeInterface]:
    """One adapter per exchange; ``instruments``: the configured ones (their precision
    wins where the adapter can map onto it; a disagreement stops the adapter)."""
    if not exchanges:
        raise RecordError("name at least one exchange (--exchanges binance,kraken)")
    if not symbols:
        raise RecordError("name at least one symbol (--symbols BTC-USDT)")
    out = []
    for name in exchanges:
        cfg = FeedConfig(
            symbols=list(symbols),
            channels=frozenset(channels),
            depth=depth,
            ws_url=ws_url,
            rest_url=rest_url,
            extra=dict(options or {}),
        )
        out.append(build_adapter(name.strip().upper(), cfg, instruments))
    return out


async def record(
    adapters: Sequence[ExchangeInterface],
    *,
    journal: Journal | None = None,
    producer: Any = None,
    raw_dir: Path | None = None,
    duration_s: float | None = None,
    batch: int = 2000,
    heartbeat_s: float = 1.0,
    stop: asyncio.Event | None = None,
    progress: Callable[[str], None] | None = None,
    instruments: Sequence[Instrument] = (),
    alert_rate: int = DEFAULT_ALERT_RATE,
) -> RecordResult:
    """Run ``adapters`` until ``duration_s`` has passed or ``stop`` is set."""
    stop = stop or asyncio.Event()
    monitor = FundingMonitor(list(instruments), alert_rate) if instruments else None
    pending: list[Event] = []
    counts = {"events": 0, "journaled": 0, "produced": 0}
    captures: list[RawCapture] = []
    if raw_dir is not None:
        for a in adapters:
            cap = RawCapture(raw_dir, a.exchange, sorted(a.config.channels), a.config.symbols)
            a.raw_capture = cap.write
            captures.append(cap)

    def flush() -> None:
        nonlocal pending
        if not pending:
            return
        events, pending = pending, []
        if journal is not None:
            by_stream: dict[str, list[Event]] = {}
            for ev in events:
                stream = input_stream(ev)
                if stream is not None:
                    by_stream.setdefault(stream, []).append(ev)
            with journal.transaction():
                for stream, evs in by_stream.items():
                    journal.append(stream, evs)
                    counts["journaled"] += len(evs)
        if producer is not None:
            for ev in events:
                producer.produce(ev)
            producer.poll(0)
            counts["produced"] += len(events)

    async def sink(events: list[Event]) -> None:
        pending.extend(events)
        counts["events"] += len(events)
        if monitor is not None:
            for alert in funding_alerts(monitor, events):
                pending.append(alert)
                log.warning("funding_alert", message=alert.message)
        if len(pending) >= batch:
            flush()

    async def ticker() -> None:
        last_report = time.monotonic()
        while True:
            await asyncio.sleep(min(heartbeat_s, 0.5))
            flush()
            if producer is not None:
                pending.extend(heartbeats(adapters, time.time_ns()))
            if progress is not None and time.monotonic() - last_report >= 10:
                last_report = time.monotonic()
                progress(
                    "  ".join(
                        f"{a.exchange}: {a.stats.frames:,} frames {a.stats.events:,} events"
                        for a in adapters
                    )
                )

    async def stopper() -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=duration_s)
        for a in adapters:
            a.stop()

    t0 = time.monotonic()
    tick = asyncio.ensure_future(ticker())
    stopping = asyncio.ensure_future(stopper())
    try:
        await asyncio.gather(*(a.run(sink) for a in adapters))
    finally:
        tick.cancel()
        stopping.cancel()
        flush()
        if producer is not None:
            producer.flush(30.0)
        for cap in captures:
            cap.close()
    return RecordResult(
        seconds=round(time.monotonic() - t0, 3),
        events=counts["events"],
        journaled=counts["journaled"],
        produced=counts["produced"],
        feeds={a.exchange: a.stats.as_dict() for a in adapters},
        captures=[str(c.path) for c in captures],
    )


def run_record(
    app: AppConfig,
    *,
    exchanges: Sequence[str],
    symbols: Sequence[str],
    to: str,
    journal: Journal | None,
    raw_dir: Path | None,
    duration_s: float | None,
    channels: Sequence[str] = ("book", "trades", "funding"),
    depth: int = 50,
    ws_url: str | None = None,
    rest_url: str | None = None,
    options: dict[str, Any] | None = None,
    progress: Callable[[str], None] | None = None,
) -> RecordResult:
    """The command: build the adapters and the destination, record, close (``journal``:
    the open journal for ``to="journal"``)."""
    adapters = build_adapters(
        exchanges,
        symbols,
        channels,
        depth,
        ws_url,
        rest_url,
        options,
        instruments=list(app.instruments.instruments),
    )
    producer = None
    if to == "journal":
        if journal is None:
            raise RecordError("--to journal needs a journal")
    elif to == "kafka":
        journal = None
        from adapters.kafka import EventProducer

        producer = EventProducer(app.kafka)
    else:
        raise RecordError(f"--to must be journal or kafka, not {to!r}")

    async def main() -> RecordResult:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)
        return await record(
            adapters,
            journal=journal,
            producer=producer,
            raw_dir=raw_dir,
            duration_s=duration_s,
            stop=stop,
            progress=progress,
            instruments=list(app.instruments.instruments),
            alert_rate=app.monitoring.funding_rate_alert_units,
        )

    try:
        return asyncio.run(main())
    finally:
        if producer is not None:
            producer.close(10.0)
