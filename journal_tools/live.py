"""``tickerml live``: collectors -> Kafka -> synchronizer -> kernel -> Kafka and the journal.

One process runs three parts:

* **collectors** (a background thread with an asyncio loop): one exchange adapter per
  configured feed, producing market events, ``Connectivity`` events and one ``Heartbeat``
  per instrument stream every ``heartbeat_ms`` to Kafka (idempotent producer).
* **journal sink** (consumer group ``<group>-journal``): stores the inputs a replay folds
  (market events in ``md.EXCHANGE.SYMBOL``, heartbeats in ``md.HEARTBEAT``, news, operator
  halts) and the ``Connectivity`` events (``sys.CONNECTIVITY``, not a kernel input),
  committing each batch only after the journal append (at-least-once into an idempotent
  journal = exactly once).
* **kernel** (consumer ``<group>-kernel-<session>``): reads the same topics, drops
  duplicates (same ``event_id``) and events outside the session (other exchanges, before
  the session started), merges the streams with the :class:`~kernel.sync.Synchronizer`
  and folds them through the engine. Its outputs go to the session stream of the journal
  (ids derived from their ordinal, so a re-derived output is recognised) and to Kafka.
  Inputs that arrive after the merge has passed them become ``LateEvent`` outputs and are
  not applied; ``tickerml verify`` skips exactly those, so a live session re-runs byte for
  byte from the journal.

Checkpoints: outputs are held back until a checkpoint, which appends them to the
session stream and replaces the session's row of the ``live_checkpoints`` read model
(engine, synchronizer, duplicate filter, output ordinal, the next Kafka offset of every
partition) in one journal transaction; only then are they published to Kafka. A batch
that made outputs is checkpointed at once (decisions are not delayed), others every
``checkpoint_every`` inputs. After a crash (``kill -9``), ``tickerml live --resume
SESSION`` restores the last checkpoint and re-reads Kafka from its offsets: what the
killed process had not checkpointed never reached the journal or Kafka, so the session
continues one consistent history (which inputs count as late depends on how partitions
are fetched, so a re-run after a crash may differ there; it is the journaled history that
``verify`` reproduces). The journal sink resumes from its committed offsets; the journal
is idempotent on ``event_id``, so nothing is lost and nothing is duplicated.

Streams for the synchronizer are Kafka partitions (``topic:partition``): each is in
production order, which per collector is receive order.

SIGTERM / SIGINT: the collectors stop and flush, the kernel drains what Kafka holds,
flushes the synchronizer and journals ``SessionEnded`` with the state hash and the end of
its input range; the sink drains; the process exits 0.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import signal
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import msgspec
import structlog
import yaml

from adapters.alerts import ALERTS_STREAM, SystemAlerts, build_dispatcher
from adapters.config_loader import redacted
from adapters.exchanges import registry
from adapters.exchanges.base import ExchangeInterface, FeedConfig
from adapters.exchanges.registry import AdapterNotFound
from adapters.journal import open_journal
from adapters.journal.base import (
    Journal,
    JournalError,
    PreparedEvent,
    ReadModelColumn,
    prepare,
    session_stream,
)
from adapters.kafka import (
    ConsumedBatch,
    EventConsumer,
    EventProducer,
    KafkaBusError,
    consume_into_journal,
    default_stream,
    replay_from_time,
)
from journal_tools.record import funding_alerts, heartbeats, input_stream
from journal_tools.session import (
    END_OF_TIME,
    SessionError,
    build_engine,
    code_version,
    new_session_id,
)
from kernel.config import AppConfig, KafkaConfig, canonical_json, config_hash
from kernel.events import (
    Event,
    Heartbeat,
    LateEvent,
    MarketEvent,
    SessionEnded,
    SessionStarted,
    event_id,
)
from kernel.funding import DEFAULT_ALERT_RATE, FundingMonitor
from kernel.instruments import Instrument
from kernel.sync import SyncConfig, Synchronizer
from strategies import build_strategy

log = structlog.get_logger("tickerml.live")

INPUT_TOPICS = ("orderbooks", "trades", "funding", "news", "system")


class LiveError(RuntimeError):
    """The live configuration is invalid or the session cannot start or resume."""


class FeedSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One collector: an adapter (by its exchange id) and what it subscribes to."""

    exchange: str
    symbols: list[str]
    adapter: str | None = None
    channels: list[str] = msgspec.field(default_factory=lambda: ["book", "trades", "funding"])
    depth: int = 50
    ws_url: str | None = None
    rest_url: str | None = None
    options: dict[str, Any] = msgspec.field(default_factory=dict)


class LiveConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``tickerml live --config FILE``; see ``docs/live.example.yaml``."""

    journal: str = "sqlite:///var/journal.db"
    feeds: list[FeedSpec] = msgspec.field(default_factory=list)
    group: str = "tickerml"
    heartbeat_ms: int = 1000
    allowed_lateness_ms: int = 250
    idle_timeout_ms: int = 5000
    checkpoint_every: int = 5000
    dedupe_window_s: int = 600
    poll_timeout_ms: int = 100
    drain_idle_polls: int = 3
    consumer_overrides: dict[str, Any] = msgspec.field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.feeds:
            raise LiveError("live config: `feeds` is empty; name at least one exchange feed")
        for name, value in (
            ("heartbeat_ms", self.heartbeat_ms),
            ("checkpoint_every", self.checkpoint_every),
            ("poll_timeout_ms", self.poll_timeout_ms),
            ("drain_idle_polls", self.drain_idle_polls),
        ):
            if value <= 0:
                raise LiveError(f"live config: {name} must be > 0, got {value}")


def load_live_config(path: str | Path) -> LiveConfig:
    p = Path(path)
    try:
        raw = yaml.safe_load(p.read_text())
    except OSError as exc:
        raise LiveError(f"cannot read live config {p}: {exc}") from exc
    except yaml.YAMLError as exc:
        raise LiveError(f"live config {p} is not valid YAML: {exc}") from exc
    try:
        return msgspec.convert(raw or {}, LiveConfig)
    except msgspec.ValidationError as exc:
        raise LiveError(f"live config {p}: {exc}") from exc


def adapter_class(exchange: str, adapter: str | None = None) -> type[ExchangeInterface]:
    """:func:`adapters.exchanges.registry.adapter_class`, errors as :class:`LiveError`."""
    try:
        return registry.adapter_class(exchange, adapter)
    except AdapterNotFound as exc:
        raise LiveError(str(exc)) from exc


CHECKPOINT_MODEL = "live_checkpoints"
CHECKPOINT_COLUMNS = (ReadModelColumn("blob", "text"),)


class Checkpoint(msgspec.Struct, frozen=True):
    session_id: str
    engine: bytes
    sync: bytes
    seen: list[tuple[bytes, int]]
    ordinal: int
    offsets: list[tuple[str, int, int]]
    input_from: int
    last_ts: int
    inputs: int
    ended: bool = False


# ---------------------------------------------------------------------------------------
# The kernel side
# ---------------------------------------------------------------------------------------


class LiveKernel:
    """Folds bus events through the engine for one session; journals and publishes outputs."""

    def __init__(
        self,
        app: AppConfig,
        live: LiveConfig,
        journal: Journal,
        producer: EventProducer | None,
        session_id: str,
        exchanges: Sequence[str],
        input_from: int,
    ) -> None:
        self.app = app
        self.live = live
        self.journal = journal
        self.producer = producer
        self.session_id = session_id
        self.stream = session_stream(session_id)
        self.exchanges = frozenset(e.upper() for e in exchanges)
        self.engine = build_engine(
            app, build_strategy(app.trading.strategy), app.trading.seed, session_id
        )
        self.sync = Synchronizer(
            SyncConfig(
                allowed_lateness_ns=live.allowed_lateness_ms * 1_000_000,
                idle_timeout_ns=live.idle_timeout_ms * 1_000_000,
            )
        )
        self.seen: dict[bytes, int] = {}
        self.ordinal = 0
        self.offsets: dict[tuple[str, int], int] = {}
        self.input_from = input_from
        self.last_ts = input_from
        self.inputs = 0
        self.since_checkpoint = 0
        self.duplicates = 0
        self.skipped = 0
        self.late = 0
        self.pending: list[Event] = []
        self.checkpoints = 0
        self.dispatch = build_dispatcher(app.monitoring.alerts, session_id, webhook=True)

    # -- life cycle --------------------------------------------------------------------

    def start(self) -> None:
        """A new session: journal SessionStarted (and the strategy's first outputs)."""
        public = redacted(self.app)
        started = SessionStarted(
            ts_event=self.input_from,
            ts_recv=self.input_from,
            session_id=self.session_id,
            mode="live",
            config_hash=config_hash(public),
            seed=self.app.trading.seed,
            code_version=code_version(),
            strategy=self.app.trading.strategy.name,
            input_from=self.input_from,
            input_to=END_OF_TIME,
            exchanges=tuple(sorted(self.exchanges)),
            symbols=(),
            config_json=canonical_json(public).decode(),
        )
        self.pending.append(started)
        self.pending.extend(self.engine.start())
        self.commit()

    def resume(self) -> None:
        """Continue a session from its last checkpoint (after a crash or a restart)."""
        rows = self.journal.read_read_model(CHECKPOINT_MODEL, self.session_id).rows
        if not rows:
            raise LiveError(f"session {self.session_id} has no checkpoint to resume from")
        try:
            cp = msgspec.msgpack.decode(base64.b64decode(str(rows[-1][-1])), type=Checkpoint)
        except (ValueError, msgspec.DecodeError) as exc:
            raise LiveError(
                f"session {self.session_id}: checkpoint does not decode: {exc}"
            ) from exc
        if cp.ended:
            raise LiveError(f"session {self.session_id} has ended; start a new session")
        self.engine._started = True  # the strategy's on_start ran before the checkpoint
        self.engine.restore(cp.engine)
        self.sync.restore(cp.sync)
        self.seen = dict(cp.seen)
        self.ordinal = cp.ordinal
        self.offsets = {(t, p): o for t, p, o in cp.offsets}
        self.input_from = cp.input_from
        self.last_ts = cp.last_ts
        self.inputs = cp.inputs

    def commit(self, ended: bool = False) -> None:
        """Journal the pending outputs and the checkpoint in one transaction, then
        publish the outputs."""
        cp = Checkpoint(
            session_id=self.session_id,
            engine=self.engine.snapshot(),
            sync=self.sync.snapshot(),
            seen=sorted(self.seen.items()),
            ordinal=self.ordinal + len(self.pending),
            offsets=sorted((t, p, o) for (t, p), o in self.offsets.items()),
            input_from=self.input_from,
            last_ts=self.last_ts,
            inputs=self.inputs,
            ended=ended,
        )
        blob = base64.b64encode(msgspec.msgpack.encode(cp)).decode()
        events, stream, first = self.pending, self.stream, self.ordinal
        prepared: list[PreparedEvent] = [
            prepare(ev, event_id(ev, stream, first + i)) for i, ev in enumerate(events)
        ]
        with self.journal.transaction():
            if prepared:
                self.journal.append_prepared(stream, prepared)
            self.journal.write_read_model(
                CHECKPOINT_MODEL, self.session_id, CHECKPOINT_COLUMNS, [(blob,)]
            )
        self.ordinal += len(events)
        self.pending = []
        self.since_checkpoint = 0
        self.checkpoints += 1
        if events:
            self.dispatch(events)
        if self.producer is not None and events:
            for ev in events:
                self.producer.produce(ev)
            self.producer.poll(0)

    def finish(self) -> SessionEnded:
        """Flush the synchronizer and journal SessionEnded (state hash, input range end)."""
        for ev in self.sync.flush():
            self.pending.extend(self._apply(ev))
        ended = SessionEnded(
            ts_event=self.last_ts,
            ts_recv=self.last_ts,
            session_id=self.session_id,
            state_hash=self.engine.state_hash(),
            events_in=self.engine.events_in,
            outputs=self.engine.outputs,
            input_to=self.last_ts + 1,
        )
        self.pending.append(ended)
        self.commit(ended=True)
        self.dispatch.close()
        return ended

    # -- folding -------------------------------------------------------------------------

    def wants(self, event: Event) -> bool:
        """Is ``event`` an input of this session (what its replay will read)?"""
        if event.ts_recv < self.input_from:
            return False
        if isinstance(event, MarketEvent):
            return event.exchange in self.exchanges
        if isinstance(event, Heartbeat):
            return True
        return default_stream(event) is not None  # news, halts

    def process(self, batch: ConsumedBatch) -> int:
        """Fold one consumed batch; returns the number of outputs it made."""
        outs = self.pending
        made = len(outs)
        seen = self.seen
        for item in batch:
            ev = item.event
            if not self.wants(ev):
                self.skipped += 1
                continue
            if item.event_id in seen:
                self.duplicates += 1
                continue
            seen[item.event_id] = ev.ts_recv
            for released in self.sync.push(f"{item.topic}:{item.partition}", ev):
                outs.extend(self._apply(released))
            self.inputs += 1
            self.since_checkpoint += 1
        for (topic, part), off in batch.offsets.items():
            self.offsets[(topic, part)] = off
        made = len(outs) - made
        if made or self.since_checkpoint >= self.live.checkpoint_every:
            self._prune_seen()
            self.commit()
        return made

    def _apply(self, ev: Event) -> Sequence[Event]:
        if isinstance(ev, LateEvent):
            self.late += 1
            return (ev,)
        if ev.ts_recv > self.last_ts:
            self.last_ts = ev.ts_recv
        return self.engine.apply(ev)

    def _prune_seen(self) -> None:
        horizon = self.last_ts - self.live.dedupe_window_s * 1_000_000_000
        self.seen = {k: ts for k, ts in self.seen.items() if ts >= horizon}


# ---------------------------------------------------------------------------------------
# Collectors
# ---------------------------------------------------------------------------------------


class Collectors:
    """Runs the feed adapters and the heartbeat ticker in a background asyncio thread."""

    def __init__(
        self,
        live: LiveConfig,
        producer: EventProducer,
        instruments: Sequence[Instrument] = (),
        alert_rate: int = DEFAULT_ALERT_RATE,
    ) -> None:
        self.live = live
        self.producer = producer
        self.adapters: list[ExchangeInterface] = []
        for spec in live.feeds:
            cfg = FeedConfig(
                symbols=list(spec.symbols),
                channels=frozenset(spec.channels),
                depth=spec.depth,
                ws_url=spec.ws_url,
                rest_url=spec.rest_url,
                extra=dict(spec.options),
            )
            try:
                adapter = registry.build_adapter(spec.exchange, cfg, instruments, spec.adapter)
            except AdapterNotFound as exc:
                raise LiveError(str(exc)) from exc
            self.adapters.append(adapter)
        self.monitor = FundingMonitor(list(instruments), alert_rate) if instruments else None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread: threading.Thread | None = None
        self._stopped = threading.Event()
        self.produced = 0
        self.error: BaseException | None = None

    def start(self) -> None:
        self.thread = threading.Thread(target=self._run, name="collectors", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self.loop = loop
        try:
            loop.run_until_complete(self._main())
        except BaseException as exc:  # reported by the main thread
            self.error = exc
            log.error("collectors_failed", error=repr(exc))
        finally:
            loop.close()
            self._stopped.set()

    async def _sink(self, events: list[Event]) -> None:
        if self.monitor is not None:
            events = [*events, *funding_alerts(self.monitor, events)]
        produce = self.producer.produce
        for ev in events:
            produce(ev)
        self.produced += len(events)
        self.producer.poll(0)

    async def _heartbeats(self) -> None:
        interval = self.live.heartbeat_ms / 1000.0
        while True:
            await asyncio.sleep(interval)
            await self._sink(heartbeats(self.adapters, time.time_ns()))

    async def _main(self) -> None:
        beat = asyncio.ensure_future(self._heartbeats())
        try:
            await asyncio.gather(*(a.run(self._sink) for a in self.adapters))
        finally:
            beat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beat

    def stop(self, timeout: float = 15.0) -> None:
        loop = self.loop
        if loop is not None and not self._stopped.is_set():
            for adapter in self.adapters:
                loop.call_soon_threadsafe(adapter.stop)
        if self.thread is not None:
            self.thread.join(timeout)


# ---------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------


class LiveResult(msgspec.Struct):
    session_id: str
    state_hash: str
    inputs: int
    outputs: int
    duplicates: int
    late: int
    journaled_by_sink: int
    produced_by_collectors: int


def run_live(
    app: AppConfig,
    live: LiveConfig,
    *,
    session_id: str | None = None,
    resume: bool = False,
    stop: Callable[[], bool] | None = None,
    install_signals: bool = True,
    progress: Callable[[str], None] | None = None,
) -> LiveResult:
    """Run a live session until SIGTERM/SIGINT (or ``stop()``); see the module docstring."""
    kafka: KafkaConfig = app.kafka
    if resume and not session_id:
        raise LiveError("--resume needs the session id")
    session_id = session_id or new_session_id()
    stopping = threading.Event()
    if install_signals:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stopping.set())

    def should_stop() -> bool:
        return stopping.is_set() or (stop is not None and stop())

    journal = open_journal(live.journal)
    sink_journal = open_journal(live.journal)
    stream = session_stream(session_id)
    exists = any(s.stream == stream for s in journal.streams())
    if exists and not resume:
        raise SessionError(
            f"session {session_id} already exists in the journal (use --resume to continue it)"
        )
    if resume and not exists:
        raise LiveError(f"session {session_id} is not in the journal; nothing to resume")
    overrides = dict(live.consumer_overrides)
    out_producer = EventProducer(kafka)
    in_producer = EventProducer(kafka)
    exchanges = sorted({f.exchange.upper() for f in live.feeds})
    kernel = LiveKernel(app, live, journal, out_producer, session_id, exchanges, time.time_ns())
    kconsumer = EventConsumer(
        kafka,
        f"{live.group}-kernel-{session_id}",
        INPUT_TOPICS,
        assign=True,
        overrides=overrides,
    )
    if resume:
        kernel.resume()
        _seek(kconsumer, kernel.offsets)
    else:
        kernel.start()
        # start a minute before the session; where the broker cannot say (Tansu answers
        # 0) that is the beginning, and older messages are skipped by time anyway
        try:
            replay_from_time(kconsumer, kernel.input_from // 1_000_000 - 60_000)
        except KafkaBusError as exc:
            log.warning("offsets_for_times_failed", error=str(exc))
    sink = EventConsumer(
        kafka, f"{live.group}-journal", INPUT_TOPICS, assign=True, overrides=overrides
    )
    collectors = Collectors(
        live,
        in_producer,
        list(app.instruments.instruments),
        app.monitoring.funding_rate_alert_units,
    )
    collectors.start()
    say = progress or (lambda _m: None)
    say(f"live session {session_id}: {len(collectors.adapters)} feed(s), journal {live.journal}")
    journaled = 0
    timeout = live.poll_timeout_ms / 1000.0
    last_report = last_lag = time.monotonic()
    system = SystemAlerts(
        app.monitoring,
        lambda alerts: sink_journal.append(ALERTS_STREAM, alerts),
        time.time_ns,
    )
    try:
        while not should_stop():
            if collectors.error is not None:
                raise LiveError(f"collectors failed: {collectors.error!r}")
            try:
                journaled += consume_into_journal(
                    sink, sink_journal, input_stream, timeout=timeout, max_batches=1
                ).appended
                batch = kconsumer.poll_batch(2000, timeout)
                if batch.offsets:
                    kernel.process(batch)
            except JournalError as exc:
                system.journal_error(exc)
                raise
            if time.monotonic() - last_lag > 1 and kernel.inputs:
                last_lag = time.monotonic()
                # how far the kernel's event clock trails the wall clock
                system.lag((time.time_ns() - kernel.last_ts) / 1e9, "kernel clock vs now")
            if time.monotonic() - last_report > 10:
                last_report = time.monotonic()
                say(
                    f"inputs {kernel.inputs:,} outputs {kernel.ordinal:,} "
                    f"journaled {journaled:,} late {kernel.late} dup {kernel.duplicates}"
                )
        say("stopping: collectors")
        collectors.stop()
        in_producer.flush(30.0)
        say("stopping: draining the kernel")
        idle = 0
        while idle < live.drain_idle_polls:
            batch = kconsumer.poll_batch(2000, timeout)
            if batch.offsets:
                kernel.process(batch)
                idle = 0
            else:
                idle += 1
        ended = kernel.finish()
        out_producer.flush(30.0)
        say("stopping: draining the journal sink")
        journaled += consume_into_journal(
            sink, sink_journal, input_stream, timeout=timeout, stop_when_idle=True
        ).appended
        # A last idle round: messages produced just before the flush may still arrive.
        for _ in range(live.drain_idle_polls):
            journaled += consume_into_journal(
                sink, sink_journal, input_stream, timeout=timeout, stop_when_idle=True
            ).appended
    finally:
        collectors.stop(1.0)
        for closer in (kconsumer.close, sink.close):
            with contextlib.suppress(Exception):
                closer()
        for prod in (in_producer, out_producer):
            with contextlib.suppress(Exception):
                prod.close(10.0)
        journal.close()
        sink_journal.close()
    return LiveResult(
        session_id=session_id,
        state_hash=ended.state_hash,
        inputs=kernel.inputs,
        outputs=kernel.ordinal,
        duplicates=kernel.duplicates,
        late=kernel.late,
        journaled_by_sink=journaled,
        produced_by_collectors=collectors.produced,
    )


def _seek(consumer: EventConsumer, offsets: dict[tuple[str, int], int]) -> None:
    """Assign every partition at the checkpoint's offsets (the rest from the start)."""
    from confluent_kafka import OFFSET_BEGINNING, TopicPartition

    parts = consumer.partitions()
    consumer.client.assign(
        [
            TopicPartition(
                tp.topic, tp.partition, offsets.get((tp.topic, tp.partition), OFFSET_BEGINNING)
            )
            for tp in parts
        ]
    )
