"""``tickerml health``: is the system healthy right now? Each check says ok, warn or fail
and why; exit 1 if any check fails, 0 otherwise (warnings included), 2 on bad input.

Checks, in the order reported:

``kafka``
    Cluster metadata within ``--timeout`` s, and every configured topic (``topic_prefix``
    + each of ``kafka.topics``, and the dead-letter topic) exists. Fail: not reachable,
    or topics missing (named; ``tickerml kafka init`` creates them).
``lag:<group>`` (one per ``--group``)
    The group's committed offset per partition (every partition it committed to) against
    the partition's high watermark; a partition with no committed offset counts
    ``high - low``. Summed over partitions; fail when the sum is above ``--max-lag``, or
    when the group has committed nothing at all (unknown group), or Kafka is down.
``journal``
    The journal opens (a SQLite file must already exist: health never creates one) and
    lists its streams; the head row (last seq) of every stream is read and its hash
    recomputed from its own ``prev_hash``, ``event_id`` and payload (cheap: one row per
    stream). With ``--verify`` every chain is re-hashed in full (``Journal.verify``).
``exchange:<EXCHANGE>:<SYMBOL>``
    The latest ``Connectivity`` status (greatest ``ts_event``, then seq) of each
    exchange-symbol in ``sys.CONNECTIVITY``: ``up`` ok, ``resync`` warn, ``down`` fail.
    No Connectivity row at all: one ``exchanges`` check, warn.
``age:<stream>``
    For each market stream ``md.*`` (not ``md.CONTROL``, ``md.NEWS``, ``md.HEARTBEAT``):
    now minus the stream's last ``ts_recv``, in seconds; fail above ``--max-age``. "Now"
    comes from the caller's clock (``--now``; the CLI's default is the wall clock). No
    market stream at all: one ``ages`` check, warn.
``disk``
    Free space of the SQLite journal's directory (else the current directory): fail
    below ``--min-disk-gb``, warn below twice that.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import msgspec

from adapters.journal import open_journal
from adapters.journal.base import (
    CONTROL_STREAM,
    NEWS_STREAM,
    Journal,
    JournalError,
    StreamInfo,
    chain_hash,
)
from kernel.config import KafkaConfig
from kernel.events import Connectivity, decode

Status = Literal["ok", "warn", "fail"]

CONNECTIVITY_STREAM = "sys.CONNECTIVITY"
HEARTBEAT_STREAM = "md.HEARTBEAT"
NOT_MARKET = frozenset({CONTROL_STREAM, NEWS_STREAM, HEARTBEAT_STREAM})
"""``md.*`` streams that are not one instrument's market data (no age check)."""

GB = 1_000_000_000
_SCHEMES = ("memory", "sqlite", "postgresql", "postgres")


class HealthInputError(ValueError):
    """Bad arguments (exit 2)."""


class Check(msgspec.Struct, frozen=True):
    """One check: its name, verdict, why, and the number measured where there is one
    (lag in messages, age in seconds, free space in GB, streams verified)."""

    name: str
    status: Status
    reason: str
    value: int | float | None = None


class HealthReport(msgspec.Struct, frozen=True):
    now_ns: int
    checks: list[Check]

    @property
    def status(self) -> Status:
        states = {c.status for c in self.checks}
        return "fail" if "fail" in states else "warn" if "warn" in states else "ok"

    @property
    def exit_code(self) -> int:
        return 1 if self.status == "fail" else 0

    def to_json(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "now_ns": self.now_ns,
            "checks": [msgspec.to_builtins(c) for c in self.checks],
        }


# -- inputs ------------------------------------------------------------------------------


def check_bootstrap(text: str) -> str:
    """``HOST:PORT[,HOST:PORT...]`` or :class:`HealthInputError`."""
    for item in text.split(","):
        host, sep, port = item.strip().rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise HealthInputError(f"--bootstrap wants HOST:PORT[,HOST:PORT...], got {text!r}")
    return text


def sqlite_path(dsn: str) -> str | None:
    """The file of a SQLite DSN (``sqlite:///path`` or a plain path); else ``None``.
    Raises :class:`HealthInputError` for a scheme no journal backend knows."""
    scheme, sep, rest = dsn.partition("://")
    if not sep:
        return dsn
    if scheme.lower() not in _SCHEMES:
        raise HealthInputError(f"unknown journal scheme {scheme!r} in {dsn!r}")
    if scheme.lower() == "sqlite":
        if not rest.startswith("/") or len(rest) < 2:
            raise HealthInputError(f"expected sqlite:///path/to/file.db, got {dsn!r}")
        return rest[1:]
    return None


# -- kafka -------------------------------------------------------------------------------


def _kafka_error(exc: Exception) -> str:
    arg = exc.args[0] if exc.args else None
    text = getattr(arg, "str", None)
    return str(text()) if callable(text) else str(exc)


def check_kafka(config: KafkaConfig, timeout: float) -> tuple[Check, bool]:
    """The ``kafka`` check and whether the cluster answered."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    from adapters.kafka import client_settings, cluster_topic

    settings = client_settings(config)
    settings.setdefault("log_level", 2)  # one reason in the report, not librdkafka's log
    admin = AdminClient(settings)
    where = config.bootstrap_servers
    try:
        topics = set(admin.list_topics(timeout=timeout).topics)
    except KafkaException as exc:
        reason = f"not reachable at {where} within {timeout:g} s: {_kafka_error(exc)}"
        return Check("kafka", "fail", reason), False
    wanted = [cluster_topic(config, t) for t in (*config.topics, config.dead_letter_topic)]
    missing = [t for t in wanted if t not in topics]
    if missing:
        reason = (
            f"{where}: {len(missing)} of {len(wanted)} topics missing: {', '.join(missing)} "
            "(tickerml kafka init creates them)"
        )
        return Check("kafka", "fail", reason, len(missing)), True
    return Check("kafka", "ok", f"{where}: all {len(wanted)} topics exist", 0), True


def group_lag(config: KafkaConfig, group: str, timeout: float) -> dict[tuple[str, int], int]:
    """Lag per partition the group committed to: high watermark minus committed offset
    (``high - low`` where none is committed). Raises ``KafkaException`` on errors;
    empty when the group has committed nothing."""
    from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, TopicPartition
    from confluent_kafka.admin import AdminClient

    from adapters.kafka import client_settings

    settings = client_settings(config)
    settings.setdefault("log_level", 2)
    admin = AdminClient(settings)
    futures = admin.list_consumer_group_offsets(
        [ConsumerGroupTopicPartitions(group)], request_timeout=timeout
    )
    result = futures[group].result(timeout)
    parts = [tp for tp in result.topic_partitions or [] if tp.error is None]
    if not parts:
        return {}
    reader = Consumer({**settings, "group.id": f"{group}-health", "enable.auto.commit": False})
    try:
        lag: dict[tuple[str, int], int] = {}
        for tp in sorted(parts, key=lambda t: (t.topic, t.partition)):
            low, high = reader.get_watermark_offsets(
                TopicPartition(tp.topic, tp.partition), timeout=timeout
            )
            behind = high - tp.offset if tp.offset >= 0 else high - low
            lag[(tp.topic, tp.partition)] = max(behind, 0)
        return lag
    finally:
        reader.close()


def check_lag(
    config: KafkaConfig, group: str, max_lag: int, timeout: float, reachable: bool
) -> Check:
    from confluent_kafka import KafkaException

    name = f"lag:{group}"
    if not reachable:
        return Check(
            name, "fail", f"not measured: Kafka not reachable at {config.bootstrap_servers}"
        )
    try:
        lag = group_lag(config, group, timeout)
    except KafkaException as exc:
        return Check(name, "fail", f"offsets not readable: {_kafka_error(exc)}")
    if not lag:
        return Check(name, "fail", f"group {group!r} has no committed offsets (unknown group?)")
    total = sum(lag.values())
    worst = max(lag.items(), key=lambda kv: kv[1])
    reason = (
        f"{total} message(s) behind over {len(lag)} partition(s) (max {max_lag}); "
        f"most: {worst[0][0]}[{worst[0][1]}] {worst[1]}"
    )
    return Check(name, "fail" if total > max_lag else "ok", reason, total)


# -- journal -----------------------------------------------------------------------------


def open_existing(dsn: str) -> Journal:
    """Open the journal without creating a SQLite file that is not there."""
    path = sqlite_path(dsn)
    if path is not None and not Path(path).is_file():
        raise JournalError(f"no journal file at {path}")
    return open_journal(dsn)


def check_heads(journal: Journal, streams: Sequence[StreamInfo], verify: bool) -> Check:
    """Each stream's head row is there and hashes right; with ``verify`` every chain."""
    bad: list[str] = []
    rows = 0
    for info in streams:
        if verify:
            rep = journal.verify(info.stream)
            rows += rep.rows
            if not rep.ok:
                bad.append(f"{info.stream} at seq {rep.first_bad_seq}: {rep.reason}")
            continue
        try:
            head = list(journal.read(info.stream, from_seq=info.last_seq, to_seq=info.last_seq))
        except Exception as exc:  # a health check reports a broken database, never crashes
            bad.append(f"{info.stream}: head seq {info.last_seq} not readable: {exc}")
            continue
        if len(head) != 1:
            bad.append(f"{info.stream}: head seq {info.last_seq} not readable")
            continue
        r = head[0]
        if chain_hash(r.prev_hash, r.event_id, r.payload) != r.hash:
            bad.append(f"{info.stream}: head seq {r.seq} hash does not match its row")
    what = f"{len(streams)} stream(s)"
    if bad:
        return Check("journal", "fail", f"{what}; {len(bad)} bad: " + "; ".join(bad), len(bad))
    if verify:
        return Check("journal", "ok", f"{what}, every chain verified ({rows} rows)", rows)
    return Check("journal", "ok", f"{what}, every chain head readable", len(streams))


def check_exchanges(journal: Journal, streams: Sequence[StreamInfo]) -> list[Check]:
    if not any(s.stream == CONNECTIVITY_STREAM for s in streams):
        return [Check("exchanges", "warn", f"no Connectivity events in {CONNECTIVITY_STREAM}")]
    latest: dict[tuple[str, str], tuple[int, int, Connectivity]] = {}
    for rec in journal.read(CONNECTIVITY_STREAM):
        ev = decode(rec.payload)
        if not isinstance(ev, Connectivity):
            continue
        key = (ev.exchange, ev.symbol)
        seen = latest.get(key)
        if seen is None or (ev.ts_event, rec.seq) > seen[:2]:
            latest[key] = (ev.ts_event, rec.seq, ev)
    checks = []
    for (exchange, symbol), (_, _, ev) in sorted(latest.items()):
        status: Status = "ok" if ev.status == "up" else "warn" if ev.status == "resync" else "fail"
        reason = f"{ev.status} since {_fmt_ns(ev.ts_event)}" + (
            f" ({ev.reason})" if ev.reason else ""
        )
        checks.append(Check(f"exchange:{exchange}:{symbol}", status, reason))
    return checks


def check_ages(streams: Sequence[StreamInfo], now_ns: int, max_age_s: float) -> list[Check]:
    checks = []
    for info in streams:
        if not info.stream.startswith("md.") or info.stream in NOT_MARKET:
            continue
        age = (now_ns - info.last_ts) / 1e9
        status: Status = "fail" if age > max_age_s else "ok"
        reason = f"last event {age:.3f} s ago at {_fmt_ns(info.last_ts)} (max {max_age_s:g} s)"
        checks.append(Check(f"age:{info.stream}", status, reason, round(age, 3)))
    if not checks:
        return [Check("ages", "warn", "no market stream (md.EXCHANGE.SYMBOL) in the journal")]
    return checks


def check_disk(
    path: str | Path,
    min_gb: float,
    usage: Callable[[str | Path], Any] = shutil.disk_usage,
) -> Check:
    free = usage(path).free / GB
    reason = f"{free:.2f} GB free in {path} (min {min_gb:g} GB)"
    status: Status = "fail" if free < min_gb else "warn" if free < 2 * min_gb else "ok"
    return Check("disk", status, reason, round(free, 2))


def _fmt_ns(ns: int) -> str:
    from journal_tools.cli import fmt_ns

    return fmt_ns(ns)


# -- all of it ---------------------------------------------------------------------------


def run_health(
    *,
    kafka: KafkaConfig,
    dsn: str,
    groups: Sequence[str] = (),
    max_lag: int = 1000,
    max_age_s: float = 60.0,
    min_disk_gb: float = 1.0,
    verify: bool = False,
    timeout: float = 5.0,
    clock: Callable[[], int] = time.time_ns,
) -> HealthReport:
    """Every check (see the module docstring); ``clock`` gives now in ns since the epoch."""
    if max_lag < 0 or max_age_s <= 0 or min_disk_gb < 0 or timeout <= 0:
        raise HealthInputError(
            "--max-lag must be >= 0, --max-age and --timeout > 0, --min-disk-gb >= 0"
        )
    if any(not g.strip() for g in groups):
        raise HealthInputError("--group must name a consumer group")
    check_bootstrap(kafka.bootstrap_servers)
    db_file = sqlite_path(dsn)
    now_ns = clock()
    kafka_check, reachable = check_kafka(kafka, timeout)
    checks = [kafka_check]
    checks += [check_lag(kafka, g, max_lag, timeout, reachable) for g in groups]
    try:
        journal = open_existing(dsn)
    except Exception as exc:  # JournalError (names host and port, never the password)
        checks.append(Check("journal", "fail", f"not reachable: {exc}"))
    else:
        try:
            streams = journal.streams()
            checks.append(check_heads(journal, streams, verify))
            checks += check_exchanges(journal, streams)
            checks += check_ages(streams, now_ns, max_age_s)
        except Exception as exc:  # any database error is a failed check, not a crash
            checks.append(Check("journal", "fail", f"not readable: {type(exc).__name__}: {exc}"))
        finally:
            journal.close()
    where = Path(db_file).resolve().parent if db_file else Path.cwd()
    checks.append(check_disk(where if where.is_dir() else Path.cwd(), min_disk_gb))
    return HealthReport(now_ns, checks)


# -- CLI ---------------------------------------------------------------------------------


def add_health_command(
    add: Callable[[str, Callable[[argparse.Namespace], int], str], Any],
) -> None:
    """Register ``tickerml health`` through the CLI's ``add(name, fn, help)``."""
    sp = add(
        "health",
        cmd_health,
        "system health: Kafka, journal, consumer lag, exchanges, last event age, disk; "
        "exit 1 if a check fails",
    )
    sp.add_argument("--journal", help="journal DSN")
    sp.add_argument("--bootstrap", metavar="HOST:PORT", help="brokers (default: config/env)")
    sp.add_argument(
        "--group", action="append", default=[], help="consumer group to measure (repeatable)"
    )
    sp.add_argument("--max-lag", type=int, default=1000, help="messages (default 1000)")
    sp.add_argument("--max-age", type=float, default=60.0, help="seconds (default 60)")
    sp.add_argument("--min-disk-gb", type=float, default=1.0, help="GB free (default 1)")
    sp.add_argument("--verify", action="store_true", help="verify every hash chain in full")
    sp.add_argument("--timeout", type=float, default=5.0, help="Kafka timeout, s (default 5)")
    sp.add_argument("--now", help="ages as of this time (ISO-8601 UTC or ns; default: now)")
    sp.add_argument("--format", choices=["table", "json"], default="table")


def cmd_health(args: argparse.Namespace) -> int:
    from rich.table import Table

    from journal_tools.cli import UsageError, _config, out, parse_time

    config = _config(args)
    kafka = config.kafka
    if args.bootstrap:
        kafka = msgspec.structs.replace(kafka, bootstrap_servers=args.bootstrap)
    dsn = args.journal or config.timescale.dsn
    if sqlite_path(dsn) is None:  # PostgreSQL: the layout options, as every command
        from adapters.journal.postgres import with_layout_options

        t = config.timescale
        dsn = with_layout_options(dsn, t.layout, t.hot_days, t.retention_days)
    now = parse_time(args.now) if args.now else None
    try:
        report = run_health(
            kafka=kafka,
            dsn=dsn,
            groups=args.group,
            max_lag=args.max_lag,
            max_age_s=args.max_age,
            min_disk_gb=args.min_disk_gb,
            verify=args.verify,
            timeout=args.timeout,
            clock=time.time_ns if now is None else (lambda: now),
        )
    except HealthInputError as exc:
        raise UsageError(str(exc)) from None
    if args.format == "json":
        sys.stdout.write(json.dumps(report.to_json()) + "\n")
        return report.exit_code
    colour = {"ok": "green", "warn": "yellow", "fail": "red"}
    table = Table(title=f"health: {report.status}")
    for col in ("check", "status", "reason"):
        table.add_column(col, overflow="fold")
    for c in report.checks:
        table.add_row(c.name, f"[{colour[c.status]}]{c.status}[/]", c.reason)
    out.print(table)
    return report.exit_code
