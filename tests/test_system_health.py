"""``tickerml health`` against the session's real broker (Tansu, or the Kafka that
``TICKERML_KAFKA_BOOTSTRAP`` names) and real SQLite / PostgreSQL journals.

Every test has its own topics (a random ``topic_prefix``) and consumer groups. Ages are
measured from a fixed clock (``--now``), so every number asserted is exact.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from adapters.journal import open_journal
from adapters.kafka import cluster_topic, create_topics
from adapters.tansu import free_port
from journal_tools.cli import main
from journal_tools.health import check_disk
from kernel.config import KafkaConfig
from kernel.events import Connectivity, Halt, Trade

T0 = 1_735_689_600_000_000_000  # 2025-01-01T00:00:00Z in ns
S = 1_000_000_000
BTC = "md.BINANCE.BTC-USDT"
ETH = "md.KRAKEN.ETH-USDT"
BTC_LAST = T0 + 30 * S  # ts_recv of the last BTC trade
ETH_LAST = T0 + 20 * S  # ts_recv of the last ETH trade


def trade(exchange: str, symbol: str, n: int, ts: int) -> Trade:
    return Trade(
        ts_event=ts,
        ts_recv=ts,
        exchange=exchange,
        symbol=symbol,
        seq=n,
        trade_id=f"t{n}",
        price=4_200_000 + n,
        size=1 + n,
        side="buy",
    )


def link(exchange: str, symbol: str, status: str, ts: int, reason: str = "") -> Connectivity:
    return Connectivity(
        ts_event=ts,
        ts_recv=ts,
        exchange=exchange,
        symbol=symbol,
        status=status,  # type: ignore[arg-type]
        reason=reason,
    )


def fill(dsn: str) -> None:
    """Two instruments (3 trades each), both linked up, and an old operator halt."""
    with open_journal(dsn) as j:
        j.append(BTC, [trade("BINANCE", "BTC-USDT", n, T0 + (10 + 10 * n) * S) for n in range(3)])
        j.append(ETH, [trade("KRAKEN", "ETH-USDT", n, T0 + 10 * n * S) for n in range(3)])
        j.append("md.CONTROL", [Halt(ts_event=T0, ts_recv=T0, reason="drill", source="test")])
        j.append(
            "sys.CONNECTIVITY",
            [
                link("BINANCE", "BTC-USDT", "down", T0, "socket closed"),
                link("BINANCE", "BTC-USDT", "up", T0 + S),
                link("KRAKEN", "ETH-USDT", "up", T0 + S),
            ],
        )


@pytest.fixture
def kafka(kafka_bootstrap: str, tmp_path: Path) -> SimpleNamespace:
    """A config dir whose kafka.yaml has a fresh prefix, its topics created (1 partition)."""
    prefix = f"health{secrets.token_hex(4)}."
    (tmp_path / "kafka.yaml").write_text(f"topic_prefix: {prefix}\npartitions: 1\n")
    config = KafkaConfig(bootstrap_servers=kafka_bootstrap, topic_prefix=prefix, partitions=1)
    create_topics(config, timeout=10)
    return SimpleNamespace(config=config, config_dir=str(tmp_path), bootstrap=kafka_bootstrap)


@pytest.fixture(params=["sqlite", "postgres"])
def dsn(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'journal.db'}"
    else:
        pg = request.getfixturevalue("pg_dsn")
        schema = request.getfixturevalue("pg_schema")
        url = f"{pg}{'&' if '?' in pg else '?'}schema={schema}"
    fill(url)
    yield url


def health(
    kafka: SimpleNamespace, dsn: str, *extra: str, now: int, bootstrap: str | None = None
) -> tuple[int, dict[str, dict[str, object]], dict[str, object]]:
    """Run the CLI; returns the exit code, the checks by name (in order) and the doc."""
    args = ["--config-dir", kafka.config_dir, "health", "--journal", dsn]
    args += ["--bootstrap", bootstrap or kafka.bootstrap, "--now", str(now)]
    args += ["--min-disk-gb", "0", "--format", "json", *extra]
    return _run(args)


def _run(args: list[str]) -> tuple[int, dict[str, dict[str, object]], dict[str, object]]:
    import io
    import sys

    buf = io.StringIO()
    real, sys.stdout = sys.stdout, buf
    try:
        code = main(args)
    finally:
        sys.stdout = real
    doc = json.loads(buf.getvalue())
    return code, {c["name"]: c for c in doc["checks"]}, doc


def test_all_healthy_is_exit_0_with_every_check(kafka: SimpleNamespace, dsn: str) -> None:
    code, checks, doc = health(kafka, dsn, now=BTC_LAST + 5 * S, bootstrap=None)
    assert code == 0
    assert doc["status"] == "ok"
    assert list(checks) == [
        "kafka",
        "journal",
        "exchange:BINANCE:BTC-USDT",
        "exchange:KRAKEN:ETH-USDT",
        f"age:{BTC}",
        f"age:{ETH}",
        "disk",
    ]
    assert {c["status"] for c in checks.values()} == {"ok"}
    assert checks["kafka"]["reason"] == f"{kafka.bootstrap}: all 11 topics exist"
    assert checks["journal"] == {
        "name": "journal",
        "status": "ok",
        "reason": "4 stream(s), every chain head readable",
        "value": 4,
    }
    assert checks["exchange:BINANCE:BTC-USDT"]["reason"] == "up since 2025-01-01 00:00:01.000"
    assert checks[f"age:{BTC}"]["value"] == 5.0
    assert checks[f"age:{ETH}"]["value"] == 15.0
    assert checks[f"age:{ETH}"]["reason"] == (
        "last event 15.000 s ago at 2025-01-01 00:00:20.000 (max 60 s)"
    )

    code, checks, _ = health(kafka, dsn, "--verify", now=BTC_LAST + 5 * S)
    assert code == 0
    assert checks["journal"]["reason"] == "4 stream(s), every chain verified (10 rows)"


def test_unreachable_broker_fails_kafka_and_lag(kafka: SimpleNamespace, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'journal.db'}"
    fill(url)
    dead = f"127.0.0.1:{free_port()}"  # loopback, nothing listens there
    code, checks, doc = health(
        kafka, url, "--group", "g", "--timeout", "1", now=BTC_LAST, bootstrap=dead
    )
    assert code == 1
    assert doc["status"] == "fail"
    assert checks["kafka"]["status"] == "fail"
    assert str(checks["kafka"]["reason"]).startswith(f"not reachable at {dead} within 1 s: ")
    assert checks["lag:g"] == {
        "name": "lag:g",
        "status": "fail",
        "reason": f"not measured: Kafka not reachable at {dead}",
        "value": None,
    }
    # everything else is still checked, and healthy
    assert [n for n, c in checks.items() if c["status"] != "ok"] == ["kafka", "lag:g"]


def test_consumer_group_lag_is_exact(kafka: SimpleNamespace, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'journal.db'}"
    fill(url)
    topic = cluster_topic(kafka.config, "trades")
    producer = Producer({"bootstrap.servers": kafka.bootstrap, "linger.ms": 0})
    for n in range(10):  # one batch per message: the test broker's high watermark is exact
        producer.produce(topic, key=b"k", value=f"m{n}".encode(), partition=0)
        assert producer.flush(10) == 0
    group = f"health-{secrets.token_hex(4)}"
    committer = Consumer(
        {"bootstrap.servers": kafka.bootstrap, "group.id": group, "enable.auto.commit": False}
    )
    committer.commit(offsets=[TopicPartition(topic, 0, 7)], asynchronous=False)
    committer.close()

    code, checks, _ = health(kafka, url, "--group", group, "--max-lag", "2", now=BTC_LAST)
    assert code == 1
    assert checks[f"lag:{group}"] == {
        "name": f"lag:{group}",
        "status": "fail",
        "reason": f"3 message(s) behind over 1 partition(s) (max 2); most: {topic}[0] 3",
        "value": 3,
    }
    code, checks, _ = health(kafka, url, "--group", group, "--max-lag", "3", now=BTC_LAST)
    assert code == 0
    assert checks[f"lag:{group}"]["status"] == "ok"
    assert checks[f"lag:{group}"]["value"] == 3

    unknown = f"nobody-{secrets.token_hex(4)}"
    code, checks, _ = health(kafka, url, "--group", unknown, now=BTC_LAST)
    assert code == 1
    assert checks[f"lag:{unknown}"]["reason"] == (
        f"group {unknown!r} has no committed offsets (unknown group?)"
    )


def test_stale_stream_fails_naming_it_and_its_age(kafka: SimpleNamespace, dsn: str) -> None:
    # max age 60 s; ETH's last event is 70 s old, BTC's 60 s (not above the limit)
    code, checks, doc = health(kafka, dsn, "--max-age", "60", now=ETH_LAST + 70 * S)
    assert code == 1
    assert [n for n, c in checks.items() if c["status"] != "ok"] == [f"age:{ETH}"]
    assert checks[f"age:{ETH}"] == {
        "name": f"age:{ETH}",
        "status": "fail",
        "reason": "last event 70.000 s ago at 2025-01-01 00:00:20.000 (max 60 s)",
        "value": 70.0,
    }
    assert checks[f"age:{BTC}"]["value"] == 60.0
    assert doc["now_ns"] == ETH_LAST + 70 * S


def test_connectivity_down_is_reported(kafka: SimpleNamespace, dsn: str) -> None:
    with open_journal(dsn) as j:
        j.append(
            "sys.CONNECTIVITY",
            [
                link("KRAKEN", "ETH-USDT", "down", T0 + 40 * S, "ping timeout"),
                link("BINANCE", "BTC-USDT", "resync", T0 + 41 * S, "gap in seq"),
            ],
        )
    code, checks, _ = health(kafka, dsn, now=BTC_LAST + 5 * S)
    assert code == 1
    assert checks["exchange:KRAKEN:ETH-USDT"] == {
        "name": "exchange:KRAKEN:ETH-USDT",
        "status": "fail",
        "reason": "down since 2025-01-01 00:00:40.000 (ping timeout)",
        "value": None,
    }
    assert checks["exchange:BINANCE:BTC-USDT"]["status"] == "warn"
    assert checks["exchange:BINANCE:BTC-USDT"]["reason"] == (
        "resync since 2025-01-01 00:00:41.000 (gap in seq)"
    )
    # back up: a resync alone warns, and a warning is still exit 0
    with open_journal(dsn) as j:
        j.append("sys.CONNECTIVITY", [link("KRAKEN", "ETH-USDT", "up", T0 + 42 * S)])
    code, checks, doc = health(kafka, dsn, now=BTC_LAST + 5 * S)
    assert (code, doc["status"]) == (0, "warn")


def test_broken_chain_head_and_missing_journal(kafka: SimpleNamespace, tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    fill(f"sqlite:///{path}")
    with sqlite3.connect(path) as conn:
        where = "seq = 3 AND sid = (SELECT sid FROM streams WHERE name = ?)"
        (payload,) = conn.execute(f"SELECT payload FROM events WHERE {where}", (ETH,)).fetchone()
        tampered = payload.replace(b"t2", b"t9")  # the trade id: still decodes
        assert tampered != payload
        conn.execute(f"UPDATE events SET payload = ? WHERE {where}", (tampered, ETH))
    code, checks, _ = health(kafka, f"sqlite:///{path}", now=BTC_LAST)
    assert code == 1
    assert checks["journal"]["reason"] == (
        f"4 stream(s); 1 bad: {ETH}: head seq 3 hash does not match its row"
    )

    missing = tmp_path / "nothing-here.db"
    code, checks, _ = health(kafka, f"sqlite:///{missing}", now=BTC_LAST)
    assert code == 1
    assert checks["journal"]["reason"] == f"not reachable: no journal file at {missing}"
    assert not missing.exists()  # health never creates a journal


@pytest.mark.parametrize(
    "extra",
    [["--max-lag", "-1"], ["--bootstrap", "no-port"], ["--journal", "foo://x"], ["--now", "x"]],
)
def test_bad_input_is_exit_2(extra: list[str], tmp_path: Path) -> None:
    args = ["--config-dir", str(tmp_path), "health", "--journal", "memory://", *extra]
    assert main(args) == 2


def test_disk_thresholds() -> None:
    def usage(free_gb: float) -> object:
        return lambda _path: SimpleNamespace(free=int(free_gb * 1_000_000_000))

    assert check_disk("/x", 1, usage(0.5)).status == "fail"  # type: ignore[arg-type]
    assert check_disk("/x", 1, usage(1.5)).status == "warn"  # type: ignore[arg-type]
    ok = check_disk("/x", 1, usage(3))  # type: ignore[arg-type]
    assert (ok.status, ok.value, ok.reason) == ("ok", 3.0, "3.00 GB free in /x (min 1 GB)")


def test_table_format_and_an_empty_journal(capsys: pytest.CaptureFixture[str]) -> None:
    dead = f"127.0.0.1:{free_port()}"
    args = ["health", "--journal", "memory://", "--bootstrap", dead, "--timeout", "0.5"]
    assert main([*args, "--min-disk-gb", "0"]) == 1
    printed = capsys.readouterr().out
    assert "health: fail" in printed
    for line in ("kafka", "journal", "exchanges", "ages", "disk"):
        assert f"│ {line} " in printed
    assert printed.count("│ warn ") == 2  # exchanges and ages: nothing journaled yet
