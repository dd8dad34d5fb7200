"""The Kafka bus (confluent-kafka / librdkafka): events in and out, with a dead-letter path.

Topics (logical names from :class:`kernel.config.KafkaConfig`; on the cluster each is
``topic_prefix + name``):

==============  =========================================================================
topic           event kinds
==============  =========================================================================
orderbooks      BookSnapshot, BookDelta
trades          Trade, Bar
funding         FundingRate, MarkPrice
news            News
features        Features
signals         Decision
orders          OrderSubmitted, OrderAccepted, OrderRejected, OrderCancelled,
                OrderExpired, OrderAmended, OrderTriggered, OrderError, CancelRequested,
                AmendRequested
fills           Fill, FillToxic, FundingPayment
risk            RiskEvent
system          Halt, Resume, Heartbeat, Connectivity, DataQuality, LateEvent,
                SessionStarted, SessionEnded, Alert, ModelLoaded, PortfolioSnapshot
dead_letter     anything that could not be encoded, delivered or decoded
==============  =========================================================================

Message
    key ``EXCHANGE:SYMBOL`` for events that carry both (so one instrument's events stay in
    one partition, in order), else the kind; value :func:`kernel.events.encode`; headers
    ``event_id`` (the 16 raw bytes of :func:`kernel.events.event_id`) and ``kind``.
Producer (:class:`EventProducer`)
    Idempotent (``enable.idempotence``, ``acks=all``), compressed, batched by
    ``linger.ms``. librdkafka retries retriable errors itself until
    ``delivery_timeout_ms``; a delivery that still fails with a retriable error is
    produced again up to ``redeliveries`` times. A message that fails for good, or an
    event that cannot be encoded, goes to the dead-letter topic with the reason in the
    ``error`` header (and ``stage``: ``encode``, ``produce`` or ``deliver``). Failures are
    recorded in :attr:`EventProducer.failures`; :meth:`EventProducer.flush` returns how many
    messages are still undelivered.
Consumer (:class:`EventConsumer`)
    ``enable.auto.commit=false``. :meth:`EventConsumer.poll_batch` decodes a batch; a
    message that does not decode (or whose headers contradict its payload) is sent to the
    dead-letter topic, counted, and skipped, and its offset is still committed with the
    batch (after the dead letter was acknowledged). :meth:`EventConsumer.commit` commits
    explicitly. :func:`consume_into_journal` appends each batch to the journal and commits
    only after the append returned: at-least-once delivery into a journal that is
    idempotent on ``event_id`` gives each event exactly once in the journal.
Replay
    :func:`replay_from_time` positions a consumer at the first offset at or after a time
    (``offsets_for_times``).

Pointing at a real Kafka cluster
    Set ``bootstrap_servers`` in ``config/kafka.yaml`` or the environment variable
    ``TICKERML_KAFKA_BOOTSTRAP`` (``host1:9092,host2:9092``; it wins over the file). TLS and
    SASL settings go in ``client:`` in ``config/kafka.yaml`` and are passed to every
    client as they are (``security.protocol: SASL_SSL``, ``sasl.mechanism: SCRAM-SHA-512``,
    ``ssl.ca.location: /path/ca.pem``). Secrets are never in the file:
    ``TICKERML_KAFKA_SASL_USERNAME``, ``TICKERML_KAFKA_SASL_PASSWORD`` and
    ``TICKERML_KAFKA_SSL_KEY_PASSWORD`` fill ``sasl.username``, ``sasl.password`` and
    ``ssl.key.password``. Set ``replication_factor: 3`` (or leave -1 for the broker's
    default) and run ``tickerml kafka init`` once to create the topics.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Self

import msgspec
import structlog
from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_END,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from adapters.journal.base import CONTROL_STREAM, NEWS_STREAM, Journal, market_stream
from kernel.config import KafkaConfig
from kernel.events import (
    AnyEvent,
    Event,
    MarketEvent,
    decoder,
    encode,
    event_id,
    kind_of,
)

log = structlog.get_logger(__name__)

_DECODE = decoder().decode

TOPIC_OF_KIND: Mapping[str, str] = {
    "BookSnapshot": "orderbooks",
    "BookDelta": "orderbooks",
    "Trade": "trades",
    "Bar": "trades",
    "FundingRate": "funding",
    "MarkPrice": "funding",
    "News": "news",
    "Features": "features",
    "Decision": "signals",
    "OrderSubmitted": "orders",
    "OrderAccepted": "orders",
    "OrderRejected": "orders",
    "OrderCancelled": "orders",
    "OrderExpired": "orders",
    "OrderAmended": "orders",
    "OrderTriggered": "orders",
    "OrderError": "orders",
    "CancelRequested": "orders",
    "AmendRequested": "orders",
    "Fill": "fills",
    "FillToxic": "fills",
    "FundingPayment": "fills",
    "RiskEvent": "risk",
    "Halt": "system",
    "Resume": "system",
    "Heartbeat": "system",
    "Connectivity": "system",
    "DataQuality": "system",
    "LateEvent": "system",
    "SessionStarted": "system",
    "SessionEnded": "system",
    "Alert": "system",
    "ModelLoaded": "system",
    "PortfolioSnapshot": "system",
}
"""Event kind -> logical topic (the table in the module docstring)."""

EVENT_ID_HEADER = "event_id"
KIND_HEADER = "kind"
ERROR_HEADER = "error"
STAGE_HEADER = "stage"
SOURCE_HEADERS = ("source_topic", "source_partition", "source_offset")

SECRET_ENV: Mapping[str, str] = {
    "TICKERML_KAFKA_SASL_USERNAME": "sasl.username",
    "TICKERML_KAFKA_SASL_PASSWORD": "sasl.password",
    "TICKERML_KAFKA_SSL_KEY_PASSWORD": "ssl.key.password",
}
"""Environment variables that fill librdkafka secrets (never read from config files)."""

Headers = list[tuple[str, bytes]]
ClientSettings = dict[str, str | int | float | bool]


class KafkaBusError(RuntimeError):
    """The bus cannot do what was asked (broker unreachable, a commit or a dead letter
    failed, a topic is not configured)."""


# -- routing -----------------------------------------------------------------------------


def topic_for(event: Event) -> str:
    """The logical topic of ``event`` (see :data:`TOPIC_OF_KIND`)."""
    kind = kind_of(event)
    try:
        return TOPIC_OF_KIND[kind]
    except KeyError:
        raise KafkaBusError(f"no topic for event kind {kind!r}") from None


def key_for(event: Event) -> bytes:
    """``EXCHANGE:SYMBOL`` when the event has both, else its kind."""
    exchange = getattr(event, "exchange", None)
    symbol = getattr(event, "symbol", None)
    if isinstance(exchange, str) and isinstance(symbol, str) and exchange and symbol:
        return f"{exchange}:{symbol}".encode()
    return kind_of(event).encode()


def cluster_topic(config: KafkaConfig, logical: str) -> str:
    """The topic's name on the cluster: ``topic_prefix + logical``."""
    return config.topic_prefix + logical


def client_settings(config: KafkaConfig, env: Mapping[str, str] | None = None) -> ClientSettings:
    """librdkafka settings shared by every client: bootstrap, ``client`` pass-through and
    the secrets from the environment (:data:`SECRET_ENV`)."""
    env = os.environ if env is None else env
    settings: ClientSettings = {"bootstrap.servers": config.bootstrap_servers}
    settings.update(config.client)
    for var, key in SECRET_ENV.items():
        if env.get(var):
            settings[key] = env[var]
    return settings


def _header(headers: Sequence[tuple[str, bytes | None]] | None, name: str) -> bytes | None:
    for key, value in headers or ():
        if key == name:
            return value
    return None


def _msg_headers(msg: Message) -> Headers:
    """A message's headers as (name, bytes) pairs (``None`` values become ``b""``)."""
    raw = msg.headers() or []
    pairs = raw.items() if isinstance(raw, dict) else raw
    return [(k, v.encode() if isinstance(v, str) else (v or b"")) for k, v in pairs]


def _text(value: object) -> bytes:
    return str(value).encode("utf-8", "replace")


# -- producer ----------------------------------------------------------------------------


@dataclass(frozen=True)
class DeliveryFailure:
    """A message that did not reach its topic: where it was going, why, and whether its
    dead letter was stored (``dead_lettered``) or it is lost (``False``)."""

    topic: str
    key: bytes | None
    event_id: bytes | None
    stage: str
    error: str
    dead_lettered: bool


@dataclass
class ProducerStats:
    produced: int = 0
    delivered: int = 0
    redelivered: int = 0
    dead_lettered: int = 0
    lost: int = 0


class EventProducer:
    """Publish events to their topics (idempotent, acks=all, compressed, batched).

    ``redeliveries``: how many times a delivery that failed with a retriable error is
    produced again (after librdkafka's own retries for ``delivery_timeout_ms``).
    ``overrides`` are extra librdkafka settings (tests). Not thread-safe.
    """

    def __init__(
        self,
        config: KafkaConfig,
        *,
        redeliveries: int = 2,
        delivery_timeout_ms: int = 120_000,
        overrides: Mapping[str, Any] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.config = config
        self.redeliveries = redeliveries
        self.stats = ProducerStats()
        self.failures: list[DeliveryFailure] = []
        self._closed = False
        self.dead_letter_topic = cluster_topic(config, config.dead_letter_topic)
        settings = client_settings(config, env)
        settings.update(
            {
                "enable.idempotence": True,
                "acks": "all",
                "compression.type": config.compression,
                "linger.ms": config.linger_ms,
                "message.timeout.ms": delivery_timeout_ms,
            }
        )
        settings.update(overrides or {})
        try:
            self._producer = Producer(settings)
        except KafkaException as exc:
            raise KafkaBusError(f"cannot create a Kafka producer: {exc}") from exc

    # -- publishing ---------------------------------------------------------------------

    def produce(
        self, event: Event, *, partition: int | None = None, eid: bytes | None = None
    ) -> None:
        """Queue ``event`` for its topic (``partition``: force one, else by key).

        ``eid`` overrides the ``event_id`` header (default :func:`kernel.events.event_id`),
        for producers whose events have an identity of their own (news: the item's URL).
        An event that cannot be encoded goes to the dead-letter topic instead (its
        ``repr`` as the value, the error in the ``error`` header)."""
        kind = kind_of(event)
        logical = topic_for(event)
        if logical not in self.config.topics:
            raise KafkaBusError(f"topic {logical!r} for {kind} is not in kafka.topics")
        topic = cluster_topic(self.config, logical)
        key = key_for(event)
        try:
            value = encode(event)
            eid = event_id(event) if eid is None else eid
        except (OverflowError, TypeError, ValueError) as exc:
            error = f"cannot encode {kind}: {exc}"
            self._record(topic, key, None, "encode", error, dead_lettered=True)
            self._dead_letter(
                topic,
                key,
                _text(repr(event)),
                [(KIND_HEADER, kind.encode())],
                "encode",
                error,
            )
            return
        headers: Headers = [(EVENT_ID_HEADER, eid), (KIND_HEADER, kind.encode())]
        self._send(topic, key, value, headers, partition, attempt=0)
        self.stats.produced += 1

    def _send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: Headers,
        partition: int | None,
        attempt: int,
    ) -> None:
        kwargs: dict[str, Any] = {
            "key": key,
            "value": value,
            "headers": headers,
            # The headers ride along: a failed delivery report may not carry them.
            "on_delivery": partial(self._on_delivery, partition, attempt, headers),
        }
        if partition is not None:
            kwargs["partition"] = partition
        try:
            self._produce_blocking(topic, kwargs)
        except KafkaException as exc:
            error = f"produce to {topic} refused: {exc.args[0].str() if exc.args else exc}"
            self._record(topic, key, _header(headers, EVENT_ID_HEADER), "produce", error, True)
            self._dead_letter(topic, key, value, headers, "produce", error)

    def _produce_blocking(self, topic: str, kwargs: dict[str, Any]) -> None:
        """``produce``, waiting for room while the local queue is full."""
        while True:
            try:
                self._producer.produce(topic, **kwargs)
                return
            except BufferError:
                self._producer.poll(0.05)

    def _on_delivery(
        self,
        partition: int | None,
        attempt: int,
        headers: Headers,
        err: KafkaError | None,
        msg: Message,
    ) -> None:
        if err is None:
            self.stats.delivered += 1
            return
        topic = msg.topic() or "?"
        if err.retriable() and not err.fatal() and attempt < self.redeliveries:
            self.stats.redelivered += 1
            log.warning("kafka.redeliver", topic=topic, error=err.str(), attempt=attempt + 1)
            self._send(topic, msg.key(), msg.value(), headers, partition, attempt + 1)
            return
        error = f"delivery to {topic} failed: {err.name()}: {err.str()}"
        self._record(topic, msg.key(), _header(headers, EVENT_ID_HEADER), "deliver", error, True)
        self._dead_letter(topic, msg.key(), msg.value(), headers, "deliver", error)

    # -- dead letters -------------------------------------------------------------------

    def send_dead_letter(
        self,
        source: tuple[str, int, int] | None,
        key: bytes | None,
        value: bytes | None,
        headers: Sequence[tuple[str, bytes | None]] | None,
        stage: str,
        error: str,
    ) -> None:
        """Queue a dead letter for a consumed message (``source``: topic, partition,
        offset); the consumer's path (see :meth:`EventConsumer.poll_batch`)."""
        extra: Headers = []
        if source is not None:
            extra = [(name, _text(v)) for name, v in zip(SOURCE_HEADERS, source, strict=True)]
        topic = source[0] if source is not None else "?"
        base: Headers = [(k, v or b"") for k, v in (headers or [])]
        self._dead_letter(topic, key, value, base + extra, stage, error)

    def _dead_letter(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: Headers,
        stage: str,
        error: str,
    ) -> None:
        log.warning("kafka.dead_letter", topic=topic, stage=stage, error=error)
        dl_headers = [
            *(h for h in headers if h[0] not in (ERROR_HEADER, STAGE_HEADER)),
            (ERROR_HEADER, _text(error)),
            (STAGE_HEADER, stage.encode()),
        ]
        if not any(h[0] == SOURCE_HEADERS[0] for h in dl_headers):
            dl_headers.append((SOURCE_HEADERS[0], _text(topic)))
        try:
            self._produce_blocking(
                self.dead_letter_topic,
                {
                    "key": key,
                    "value": value,
                    "headers": dl_headers,
                    "on_delivery": partial(self._on_dead_letter, error),
                },
            )
        except KafkaException as exc:
            self._lost(key, f"{error}; dead letter refused: {exc}")

    def _on_dead_letter(self, error: str, err: KafkaError | None, msg: Message) -> None:
        if err is None:
            self.stats.dead_lettered += 1
        else:
            self._lost(msg.key(), f"{error}; dead letter failed: {err.str()}")

    def _lost(self, key: bytes | None, error: str) -> None:
        self.stats.lost += 1
        self.failures.append(
            DeliveryFailure(self.dead_letter_topic, key, None, "dead_letter", error, False)
        )
        log.error("kafka.message_lost", error=error)

    def _record(
        self,
        topic: str,
        key: bytes | None,
        eid: bytes | None,
        stage: str,
        error: str,
        dead_lettered: bool,
    ) -> None:
        self.failures.append(DeliveryFailure(topic, key, eid, stage, error, dead_lettered))

    # -- lifecycle ----------------------------------------------------------------------

    def poll(self, timeout: float = 0.0) -> int:
        """Serve delivery callbacks; returns how many were served."""
        return int(self._producer.poll(timeout))

    def flush(self, timeout: float = 30.0) -> int:
        """Wait up to ``timeout`` s for every queued message (including redeliveries and
        dead letters queued by callbacks meanwhile); returns how many are undelivered."""
        deadline = time.monotonic() + timeout
        while True:
            left = max(0.0, deadline - time.monotonic())
            remaining = int(self._producer.flush(left))
            # Callbacks served by flush may have queued redeliveries or dead letters.
            remaining = max(remaining, len(self._producer))
            if remaining == 0 or time.monotonic() >= deadline:
                return remaining

    def __len__(self) -> int:
        return len(self._producer)

    def close(self, timeout: float = 30.0) -> int:
        """Flush, then release the client (its connections); returns the number of
        messages that could not be delivered in time (they are lost with the client)."""
        if self._closed:
            return 0
        remaining = self.flush(timeout)
        self._closed = True
        release = getattr(self._producer, "close", None)  # confluent-kafka >= 2.13
        if release is not None:
            release()
        return remaining

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        remaining = self.close()
        if remaining and exc_type is None:
            raise KafkaBusError(f"{remaining} message(s) still undelivered at close")


# -- consumer ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ConsumedEvent:
    """A decoded event with its Kafka coordinates and its id (from the ``event_id``
    header, else computed)."""

    event: AnyEvent
    event_id: bytes
    kind: str
    topic: str
    partition: int
    offset: int
    key: bytes | None
    timestamp_ms: int


@dataclass(frozen=True)
class ConsumedBatch:
    """One :meth:`EventConsumer.poll_batch`: the decoded events, and per partition the
    next offset to commit (dead-lettered messages included, so a commit moves past
    them)."""

    events: tuple[ConsumedEvent, ...]
    offsets: Mapping[tuple[str, int], int]
    dead_lettered: int = 0

    def __len__(self) -> int:
        return len(self.events)

    def __iter__(self) -> Iterator[ConsumedEvent]:
        return iter(self.events)


@dataclass
class ConsumerStats:
    consumed: int = 0
    dead_lettered: int = 0
    committed_batches: int = 0


class EventConsumer:
    """Read events from logical ``topics`` in consumer group ``group_id`` (manual commit).

    ``assign=True`` takes every partition of the topics without joining the group (no
    rebalance wait; starts at the group's committed offsets, else ``auto.offset.reset``,
    which defaults to ``earliest``). ``overrides`` are extra librdkafka settings (e.g. a
    short ``session.timeout.ms`` in tests). Undecodable messages go to the dead-letter
    topic through ``dead_letter_producer`` (one is made if not given). Not thread-safe.
    """

    def __init__(
        self,
        config: KafkaConfig,
        group_id: str,
        topics: Sequence[str],
        *,
        assign: bool = False,
        overrides: Mapping[str, Any] | None = None,
        env: Mapping[str, str] | None = None,
        dead_letter_producer: EventProducer | None = None,
        metadata_timeout: float = 10.0,
    ) -> None:
        if not topics:
            raise KafkaBusError("EventConsumer needs at least one topic")
        for name in topics:
            if name == config.dead_letter_topic:
                raise KafkaBusError(
                    "the dead-letter topic holds undecodable messages: read it with "
                    "read_dead_letters(), not EventConsumer"
                )
            if name not in config.topics:
                raise KafkaBusError(f"topic {name!r} is not in kafka.topics {config.topics}")
        self.config = config
        self.group_id = group_id
        self.topics = tuple(cluster_topic(config, name) for name in topics)
        self.stats = ConsumerStats()
        settings = client_settings(config, env)
        settings.update(
            {
                "group.id": group_id,
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "auto.offset.reset": "earliest",
            }
        )
        settings.update(overrides or {})
        self._owns_producer = dead_letter_producer is None
        self._dead_letters = dead_letter_producer or EventProducer(config, env=env)
        try:
            self.client = Consumer(settings)
        except KafkaException as exc:
            raise KafkaBusError(f"cannot create a Kafka consumer: {exc}") from exc
        if assign:
            self.client.assign(self.partitions(metadata_timeout))
        else:
            self.client.subscribe(list(self.topics))

    def partitions(self, timeout: float = 10.0) -> list[TopicPartition]:
        """Every partition of the consumer's topics (from the cluster's metadata)."""
        try:
            meta = self.client.list_topics(timeout=timeout)
        except KafkaException as exc:
            raise KafkaBusError(
                f"cannot read topic metadata from {self.config.bootstrap_servers}: {exc}"
            ) from exc
        out: list[TopicPartition] = []
        for topic in self.topics:
            tmeta = meta.topics.get(topic)
            if tmeta is None or tmeta.error is not None or not tmeta.partitions:
                raise KafkaBusError(f"topic {topic!r} does not exist (run `tickerml kafka init`)")
            out.extend(TopicPartition(topic, p) for p in sorted(tmeta.partitions))
        return out

    def poll_batch(self, max_messages: int = 500, timeout: float = 1.0) -> ConsumedBatch:
        """Up to ``max_messages`` messages: waits at most ``timeout`` s for the first, then
        takes what has already arrived (no further wait). Empty if nothing came."""
        messages = self.client.consume(num_messages=1, timeout=timeout)
        if messages and max_messages > 1:
            messages.extend(self.client.consume(num_messages=max_messages - 1, timeout=0))
        events: list[ConsumedEvent] = []
        offsets: dict[tuple[str, int], int] = {}
        dead = 0
        for msg in messages:
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    continue
                if err.fatal():
                    raise KafkaBusError(f"consumer failed: {err.str()}")
                log.warning("kafka.consume_error", error=err.str(), code=err.name())
                continue
            topic, partition, offset = msg.topic() or "", msg.partition() or 0, msg.offset()
            offset = offset if offset is not None else -1
            offsets[(topic, partition)] = max(offsets.get((topic, partition), 0), offset + 1)
            consumed, problem = self._decode(msg)
            if consumed is None:
                dead += 1
                self._dead_letters.send_dead_letter(
                    (topic, partition, offset),
                    msg.key(),
                    msg.value(),
                    _msg_headers(msg),
                    "decode",
                    problem,
                )
                continue
            events.append(consumed)
        self.stats.consumed += len(events)
        self.stats.dead_lettered += dead
        if dead:
            self._dead_letters.poll(0)
        return ConsumedBatch(tuple(events), offsets, dead)

    @staticmethod
    def _decode(msg: Message) -> tuple[ConsumedEvent | None, str]:
        payload = msg.value()
        if payload is None:
            return None, f"{msg.topic()}[{msg.partition()}]@{msg.offset()}: empty payload"
        try:
            event = _DECODE(payload)
        except msgspec.DecodeError as exc:
            where = f"{msg.topic()}[{msg.partition()}]@{msg.offset()}"
            return None, f"{where}: payload does not decode: {exc}"
        kind = event.__struct_config__.tag
        header_kind: bytes | None = None
        eid: bytes | None = None
        raw: Any = msg.headers() or ()
        for key, value in raw.items() if isinstance(raw, dict) else raw:
            if key == EVENT_ID_HEADER:
                eid = value.encode() if isinstance(value, str) else value
            elif key == KIND_HEADER:
                header_kind = value.encode() if isinstance(value, str) else value
        if header_kind is not None and header_kind.decode("utf-8", "replace") != kind:
            where = f"{msg.topic()}[{msg.partition()}]@{msg.offset()}"
            return None, f"{where}: kind header {header_kind!r} but the payload is a {kind}"
        if eid is None:
            eid = event_id(event)
        elif len(eid) != 16:
            where = f"{msg.topic()}[{msg.partition()}]@{msg.offset()}"
            return None, f"{where}: event_id header has {len(eid)} bytes, expected 16"
        return (
            ConsumedEvent(
                event,
                eid,
                str(kind),
                msg.topic() or "",
                msg.partition() or 0,
                msg.offset() or 0,
                msg.key(),
                msg.timestamp()[1],
            ),
            "",
        )

    def commit(self, batch: ConsumedBatch, timeout: float = 30.0) -> None:
        """Commit the batch's offsets (synchronously), after making sure its dead letters
        were stored. Raises :class:`KafkaBusError` if either fails; the batch will then be
        delivered again, which an idempotent journal absorbs."""
        if not batch.offsets:
            return
        if batch.dead_lettered:
            undelivered = self._dead_letters.flush(timeout)
            if undelivered or self._dead_letters.stats.lost:
                raise KafkaBusError(
                    f"{undelivered} dead letter(s) undelivered, {self._dead_letters.stats.lost} "
                    "lost: not committing past them"
                )
        tps = [TopicPartition(t, p, off) for (t, p), off in sorted(batch.offsets.items())]
        try:
            result = self.client.commit(offsets=tps, asynchronous=False)
        except KafkaException as exc:
            raise KafkaBusError(f"commit failed: {exc}") from exc
        for tp in result or []:
            if tp.error is not None:
                raise KafkaBusError(f"commit of {tp.topic}[{tp.partition}] failed: {tp.error}")
        self.stats.committed_batches += 1

    def committed(self, timeout: float = 10.0) -> dict[tuple[str, int], int]:
        """The group's committed offset per assigned partition (-1001: none)."""
        parts = self.client.assignment()
        return {
            (tp.topic, tp.partition): tp.offset
            for tp in self.client.committed(parts, timeout=timeout)
        }

    def close(self) -> None:
        """Leave the group without committing anything not yet committed."""
        try:
            self.client.close()
        finally:
            if self._owns_producer:
                self._dead_letters.close(10.0)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- into the journal --------------------------------------------------------------------


def default_stream(event: Event) -> str | None:
    """Market events to ``md.EXCHANGE.SYMBOL``, News to ``md.NEWS``, Halt/Resume to
    ``md.CONTROL`` (the inputs a replay folds); anything else is the kernel's own output
    and is not journaled by a bus consumer (``None``: skipped and counted)."""
    if isinstance(event, MarketEvent):
        return market_stream(event.exchange, event.symbol)
    kind = kind_of(event)
    if kind in ("Halt", "Resume"):
        return CONTROL_STREAM
    if kind == "News":
        return NEWS_STREAM
    return None


@dataclass
class IngestStats:
    """What :func:`consume_into_journal` did: batches committed, events appended
    (re-deliveries included: the journal stores each id once), events skipped because
    ``stream_of`` gave no stream, and messages sent to the dead-letter topic."""

    batches: int = 0
    appended: int = 0
    skipped: int = 0
    dead_lettered: int = 0
    streams: dict[str, int] = field(default_factory=dict)


def consume_into_journal(
    consumer: EventConsumer,
    journal: Journal,
    stream_of: Callable[[Event], str | None] = default_stream,
    *,
    max_messages: int = 500,
    timeout: float = 1.0,
    max_batches: int | None = None,
    stop_when_idle: bool = False,
    stop: Callable[[], bool] | None = None,
) -> IngestStats:
    """Append each polled batch to ``journal`` (one transaction), then commit it.

    The commit happens only after the append returned, so a crash in between re-delivers
    the batch and the journal (idempotent on ``event_id``) keeps each event once. Stops
    after ``max_batches`` polls, at the first empty poll if ``stop_when_idle``, or when
    ``stop()`` is true."""
    stats = IngestStats()
    polls = 0
    while (max_batches is None or polls < max_batches) and not (stop is not None and stop()):
        batch = consumer.poll_batch(max_messages, timeout)
        polls += 1
        stats.dead_lettered += batch.dead_lettered
        if not batch.offsets:
            if stop_when_idle:
                break
            continue
        by_stream: dict[str, list[ConsumedEvent]] = {}
        for item in batch:
            stream = stream_of(item.event)
            if stream is None:
                stats.skipped += 1
                continue
            by_stream.setdefault(stream, []).append(item)
        if by_stream:
            with journal.transaction():
                for stream, items in by_stream.items():
                    journal.append(stream, [c.event for c in items], [c.event_id for c in items])
        consumer.commit(batch)
        stats.batches += 1
        for stream, items in by_stream.items():
            stats.appended += len(items)
            stats.streams[stream] = stats.streams.get(stream, 0) + len(items)
    return stats


# -- replay, dead letters, admin ---------------------------------------------------------


def replay_from_time(
    consumer: EventConsumer, ts_ms: int, timeout: float = 10.0
) -> list[TopicPartition]:
    """Assign ``consumer`` every partition of its topics at the first offset whose
    timestamp is at or after ``ts_ms`` (ms since the epoch); a partition with no such
    message starts at its end. Leaves the group subscription (manual assignment; commits
    still go to the group). Returns the positions. Needs a broker with a working
    ``offsets_for_times`` (real Kafka; not the Tansu test broker)."""
    wanted = [TopicPartition(tp.topic, tp.partition, ts_ms) for tp in consumer.partitions(timeout)]
    try:
        found = consumer.client.offsets_for_times(wanted, timeout=timeout)
    except KafkaException as exc:
        raise KafkaBusError(f"offsets_for_times failed: {exc}") from exc
    positions = []
    for tp in found:
        if tp.error is not None:
            raise KafkaBusError(f"offsets_for_times {tp.topic}[{tp.partition}]: {tp.error}")
        offset = tp.offset if tp.offset >= 0 else OFFSET_END
        positions.append(TopicPartition(tp.topic, tp.partition, offset))
    consumer.client.unsubscribe()
    consumer.client.assign(positions)
    return positions


@dataclass(frozen=True)
class DeadLetter:
    """A message in the dead-letter topic: the original key, value and headers, why it is
    there (``error``, ``stage``) and where it came from (``source``)."""

    key: bytes | None
    value: bytes | None
    error: str
    stage: str
    source: str
    headers: tuple[tuple[str, bytes], ...]
    offset: int


def read_dead_letters(
    config: KafkaConfig,
    *,
    timeout: float = 10.0,
    idle: float = 1.0,
    env: Mapping[str, str] | None = None,
) -> list[DeadLetter]:
    """Every message now in the dead-letter topic, read without a group from the start:
    until ``idle`` s passed without a message (after the first one) or ``timeout`` s in
    all. Partitions whose watermarks show them empty are not read."""
    topic = cluster_topic(config, config.dead_letter_topic)
    settings = client_settings(config, env)
    settings.update({"group.id": "tickerml-dead-letter-reader", "enable.auto.commit": False})
    consumer = Consumer(settings)
    try:
        meta = consumer.list_topics(topic, timeout=timeout)
        tmeta = meta.topics.get(topic)
        if tmeta is None or tmeta.error is not None:
            return []
        parts = []
        for p in sorted(tmeta.partitions):
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout)
            if high > low:
                parts.append(TopicPartition(topic, p, OFFSET_BEGINNING))
        if not parts:
            return []
        consumer.assign(parts)
        out: list[DeadLetter] = []
        deadline = time.monotonic() + timeout
        last = time.monotonic()
        while time.monotonic() < deadline and (not out or time.monotonic() - last < idle):
            msgs = consumer.consume(num_messages=500, timeout=0.1)
            for msg in msgs:
                if msg.error() is not None:
                    continue
                last = time.monotonic()
                headers = tuple(_msg_headers(msg))
                out.append(
                    DeadLetter(
                        key=msg.key(),
                        value=msg.value(),
                        error=(_header(headers, ERROR_HEADER) or b"").decode("utf-8", "replace"),
                        stage=(_header(headers, STAGE_HEADER) or b"").decode(),
                        source=(_header(headers, SOURCE_HEADERS[0]) or b"").decode(),
                        headers=headers,
                        offset=msg.offset() or 0,
                    )
                )
        return out
    finally:
        consumer.close()


def create_topics(
    config: KafkaConfig, *, timeout: float = 10.0, env: Mapping[str, str] | None = None
) -> list[str]:
    """Create every configured topic and the dead-letter topic that does not exist yet,
    with ``partitions``, ``replication_factor`` and ``retention.ms`` from the config.
    Existing topics are left as they are. Returns the names created (cluster names)."""
    settings = client_settings(config, env)
    # A broker that does not answer is reported once, by the exception below, instead of
    # librdkafka logging every reconnect attempt (level 3) to stderr.
    settings.setdefault("log_level", 2)
    admin = AdminClient(settings)
    names = [cluster_topic(config, t) for t in (*config.topics, config.dead_letter_topic)]
    try:
        existing = set(admin.list_topics(timeout=timeout).topics)
    except KafkaException as exc:
        raise KafkaBusError(
            f"Kafka not reachable at {config.bootstrap_servers}: {exc.args[0].str()}"
        ) from exc
    retention_ms = str(config.retention_hours * 3_600_000)
    missing = [
        NewTopic(
            name,
            num_partitions=config.partitions,
            replication_factor=config.replication_factor,
            config={"retention.ms": retention_ms},
        )
        for name in names
        if name not in existing
    ]
    if not missing:
        return []
    futures = admin.create_topics(missing, operation_timeout=timeout, request_timeout=timeout)
    created = []
    for name, future in futures.items():
        try:
            future.result(timeout)
        except KafkaException as exc:
            if exc.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS:
                continue
            raise KafkaBusError(f"cannot create topic {name}: {exc.args[0].str()}") from exc
        created.append(name)
    return sorted(created, key=names.index)
