"""The ``tickerml`` command line.

Every subcommand has ``--help``. The journal is chosen by ``--journal DSN``, else
``TICKERML_JOURNAL_DSN``, else ``config/timescale.yaml``. Exit codes: 0 success,
1 a check failed (verify found a divergence, a hash mismatch), 2 bad input or usage.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from adapters.config_loader import ConfigError, load_config
from adapters.journal import open_journal
from adapters.journal.base import Journal, JournalError
from kernel.config import AppConfig, StrategyConfig
from kernel.events import (
    to_builtins,
)
from kernel.instruments import InstrumentRegistry

console = Console(stderr=True)
out = Console()


class UsageError(ValueError):
    """Bad arguments; exit code 2."""


def parse_time(text: str) -> int:
    """ISO-8601 date/time (UTC if no zone) or integer ns since the epoch -> ns."""
    t = text.strip()
    if t.lstrip("-").isdigit():
        return int(t)
    try:
        dt = datetime.fromisoformat(t.replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(
            f"not a time: {text!r} (use ISO-8601 like 2025-01-01T00:10 or ns)"
        ) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp()) * 1_000_000_000 + dt.microsecond * 1000


def fmt_ns(ns: int) -> str:
    if ns <= 0 or ns >= 2**63 - 1:
        return "-"
    dt = datetime.fromtimestamp(ns / 1e9, UTC)
    return dt.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


@contextmanager
def progress_bar(description: str, total: int | None, enabled: bool = True) -> Any:
    """A rich progress bar on stderr; ``update(done, total)`` moves it."""
    if not enabled:
        yield lambda done, total=None: None
        return
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    ) as prog:
        task = prog.add_task(description, total=total)

        def update(done: int, new_total: int | None = None) -> None:
            if new_total is not None:
                prog.update(task, total=new_total)
            prog.update(task, completed=done)

        yield update


def _config(args: argparse.Namespace) -> AppConfig:
    return load_config(getattr(args, "config_dir", None))


def _journal(args: argparse.Namespace, config: AppConfig) -> Journal:
    from adapters.journal.postgres import with_layout_options

    t = config.timescale
    dsn = getattr(args, "journal", None) or t.dsn
    dsn = with_layout_options(dsn, t.layout, t.hot_days, t.retention_days)
    return open_journal(dsn, getattr(args, "archive", None))


def _param_value(text: str) -> bool | int | float | str:
    """``--param`` values: true/false, integers, decimals as float, else text."""
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    return text


def _strategy_override(args: argparse.Namespace, config: AppConfig) -> StrategyConfig | None:
    name = getattr(args, "strategy", None)
    params = getattr(args, "param", None) or []
    if not name and not params:
        return None
    base = config.trading.strategy
    if name and name != base.name:
        base = StrategyConfig(name=name)
    if not params:
        return base
    merged = dict(base.params)
    for item in params:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise UsageError(f"--param wants KEY=VALUE, got {item!r}")
        merged[key] = _param_value(value)
    return StrategyConfig(name=base.name, params=merged)


# -- commands ----------------------------------------------------------------------------


def cmd_synth(args: argparse.Namespace) -> int:
    from journal_tools.synth import DEFAULT_EXCHANGES, DEFAULT_SYMBOLS, SynthSpec, generate

    spec = SynthSpec(
        out_dir=str(args.out),
        hours=args.hours,
        seed=args.seed,
        start=args.start,
        exchanges=tuple(args.exchanges.split(",")) if args.exchanges else DEFAULT_EXCHANGES,
        symbols=tuple(args.symbols.split(",")) if args.symbols else DEFAULT_SYMBOLS,
        perps=not args.no_perps,
    )
    with progress_bar("synth", None, not args.quiet) as update:
        manifest = generate(spec, progress=update)
    table = Table(title=f"synthetic market in {args.out}")
    for col in ("file", "rows"):
        table.add_column(col, justify="right" if col == "rows" else "left")
    for f in manifest.files:
        table.add_row(Path(f.path).name, f"{f.rows:,}")
    out.print(table)
    return 0


def cmd_import_tardis(args: argparse.Namespace) -> int:
    from journal_tools.tardis import import_files

    config = _config(args)
    files: list[str | Path] = [*args.book, *args.trades, *args.ticker]
    if args.dir:
        for pattern in (
            "*_incremental_book_L2_*.csv*",
            "*_trades_*.csv*",
            "*_derivative_ticker_*.csv*",
        ):
            files.extend(sorted(Path(args.dir).glob(pattern)))
    if not files:
        raise UsageError("nothing to import: give --book/--trades/--ticker files or --dir")
    registry = InstrumentRegistry(list(config.instruments.instruments))
    with _journal(args, config) as journal, progress_bar("import", None, not args.quiet) as update:
        report = import_files(journal, registry, files, skip_bad=args.skip_bad, progress=update)
    summary = msgspec.to_builtins(report)
    if args.json:
        out.print_json(data=summary)
    else:
        out.print(
            f"imported {report.rows:,} rows as {report.events:,} events "
            f"({report.appended:,} new, {report.duplicates:,} already there) into "
            f"{', '.join(report.streams)}"
            + (f"; skipped {report.skipped_rows} bad rows" if report.skipped_rows else "")
        )
        for bad in report.first_bad:
            console.print(f"[yellow]skipped[/] {bad}")
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from journal_tools.session import run_session, verify_session

    config = _config(args)
    with _journal(args, config) as journal:
        if args.verify:
            if not args.session:
                raise UsageError("--verify needs --session ID")
            result = verify_session(journal, args.session)
            if args.json:
                out.print_json(data=msgspec.to_builtins(result))
            elif result.ok:
                out.print(
                    f"[green]session {result.session_id} verified[/]: {result.outputs_checked} "
                    f"outputs identical, state hash {result.state_hash}"
                )
            else:
                d = result.divergence
                out.print(f"[red]session {result.session_id} DIVERGES[/]")
                if d is not None:
                    out.print(f"first divergence at seq {d.seq}: {d.reason}")
                    out.print(f"  expected: {json.dumps(d.expected, default=str)}")
                    out.print(f"  got:      {json.dumps(d.got, default=str)}")
            return 0 if result.ok else 1
        if args.session:
            raise UsageError("--session is for --verify; a new replay gets a new session id")
        stats_total: int | None = None
        with progress_bar("replay", stats_total, not args.quiet) as update:
            stats = run_session(
                journal,
                config,
                start_ns=parse_time(args.start) if args.start else None,
                end_ns=parse_time(args.end) if args.end else None,
                exchanges=[e.upper() for e in args.exchange] or None,
                symbols=args.symbol or None,
                strategy=_strategy_override(args, config),
                session_id=args.session_id,
                progress=lambda n: update(n),
            )
        if args.report:
            from journal_tools.report import session_report

            Path(args.report).write_text(session_report(journal, stats.session_id))
    if args.stats_json:
        Path(args.stats_json).write_bytes(msgspec.json.encode(stats))
    table = Table(title=f"replay session {stats.session_id}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in msgspec.to_builtins(stats).items():
        table.add_row(name, f"{value:,}" if isinstance(value, int) else str(value))
    out.print(table)
    out.print(f"state hash {stats.state_hash}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    config = _config(args)
    bad = 0
    with _journal(args, config) as journal:
        streams = [s.stream for s in journal.streams()]
        if args.stream:
            missing = sorted(set(args.stream) - set(streams))
            if missing:
                raise UsageError(f"no such stream(s): {', '.join(missing)}")
            streams = args.stream
        table = Table(title="journal hash chains")
        for col in ("stream", "rows", "ok", "first bad seq", "reason"):
            table.add_column(col)
        for s in streams:
            rep = journal.verify(s)
            bad += not rep.ok
            table.add_row(
                s,
                f"{rep.rows:,}",
                "[green]yes[/]" if rep.ok else "[red]NO[/]",
                str(rep.first_bad_seq or ""),
                rep.reason,
            )
    out.print(table)
    return 1 if bad else 0


def cmd_audit(args: argparse.Namespace) -> int:
    from journal_tools.session import list_sessions

    config = _config(args)
    with _journal(args, config) as journal:
        if not args.session:
            sessions = list_sessions(journal)
            if args.format == "json":
                out.print_json(data=[to_builtins(s) for s in sessions])
                return 0
            table = Table(title="sessions")
            table.add_column("session", no_wrap=True)
            for col in ("mode", "strategy", "seed", "from", "to", "config"):
                table.add_column(col)
            for s in sessions:
                table.add_row(
                    s.session_id,
                    s.mode,
                    s.strategy,
                    str(s.seed),
                    fmt_ns(s.input_from),
                    fmt_ns(s.input_to),
                    s.config_hash[:8],
                )
            out.print(table)
            return 0
        from journal_tools.audit import AuditError, build_audit, to_csv

        try:
            doc = build_audit(
                journal,
                args.session,
                decision_id=args.decision,
                start_ns=parse_time(args.start) if args.start else None,
                end_ns=parse_time(args.end) if args.end else None,
                limit=args.limit,
            )
        except AuditError as exc:
            raise UsageError(str(exc)) from None
    ok = bool(doc["hash_chain_ok"])
    if args.format == "json":
        out.print_json(data=doc)
        return 0 if ok else 1
    if args.format == "csv":
        sys.stdout.write(to_csv(doc))
        return 0 if ok else 1
    header, ended, chain = doc["session"], doc["ended"], doc["hash_chain"]
    chain_text = "[green]ok[/]" if ok else f"[red]BROKEN at seq {chain['first_bad_seq']}[/]"
    out.print(
        f"session [bold]{header['session_id']}[/] strategy {header['strategy']} seed "
        f"{header['seed']} config {header['config_hash'][:16]} code {header['code_version']}\n"
        f"inputs {fmt_ns(header['input_from'])} .. {fmt_ns(header['input_to'])}; "
        f"hash chain {chain_text} ({chain['rows']} rows)"
        + (f"; state hash {ended['state_hash'][:16]}" if ended else "; [yellow]not ended[/]")
    )
    if args.decision:
        _print_decision(doc["decisions"][0])
        return 0 if ok else 1
    table = Table(title=f"{doc['decisions_total']} decisions")
    for col in (
        "seq",
        "time",
        "decision",
        "instrument",
        "action",
        "conf",
        "reasoning",
        "thresholds",
        "risk",
        "orders",
    ):
        table.add_column(col, overflow="fold")
    for d in doc["decisions"]:
        table.add_row(
            str(d["seq"]),
            fmt_ns(d["ts"]),
            d["decision_id"],
            d["instrument"],
            d["action"],
            f"{d['confidence']:.2f}",
            d["reasoning"],
            " ".join(f"{k}={v:g}" for k, v in d["thresholds"].items()),
            d["risk_checks"],
            "; ".join(f"{o['order_id']} {o['side']} {o['state']}" for o in d["orders"]),
        )
    out.print(table)
    return 0 if ok else 1


def _print_decision(d: dict[str, Any]) -> None:
    """One decision in full: inputs, thresholds, the features sample, risk, orders, fills."""
    mark = "[green]verified[/]" if d["row"]["verified"] else "[red]NOT verified[/]"
    out.print(
        f"\ndecision [bold]{d['decision_id']}[/] seq {d['seq']} ({mark}, hash "
        f"{d['row']['hash'][:16]}) at {fmt_ns(d['ts'])} {d['instrument']} "
        f"[bold]{d['action']}[/] confidence {d['confidence']:.3f}"
        + (f" model {d['model_id']}" if d["model_id"] else "")
        + f"\nreasoning: {d['reasoning']}\nrisk checks: {d['risk_checks']}"
    )
    inputs = Table(title="inputs the decision names")
    for col in ("name", "value", "kind"):
        inputs.add_column(col)
    for k, v in d["features"].items():
        inputs.add_row(k, f"{v:.6g}", "feature")
    for k, v in d["thresholds"].items():
        inputs.add_row(k, f"{v:.6g}", "threshold")
    out.print(inputs)
    sample = d["feature_sample"]
    if sample is not None:
        t = Table(title=f"kernel features at {fmt_ns(sample['ts'])} (last sample before it)")
        t.add_column("feature")
        t.add_column("value")
        for k, v in sample["values"].items():
            t.add_row(k, f"{v:.6g}")
        out.print(t)
    orders = Table(title="orders and fills it caused")
    for col in (
        "order",
        "side",
        "type",
        "size",
        "price",
        "state",
        "fill",
        "fill price",
        "fill size",
        "fee",
        "slippage",
        "impact",
        "liq",
        "row",
    ):
        orders.add_column(col, overflow="fold")
    for o in d["orders"]:
        orders.add_row(
            o["order_id"],
            o["side"],
            o["type"],
            str(o["size"]),
            str(o["price"]),
            o["state"],
            "",
            "",
            "",
            "",
            "",
            "",
            "",
            str(o["row"]["seq"]),
        )
        for f in o["fill_rows"]:
            orders.add_row(
                "",
                "",
                "",
                "",
                "",
                "",
                f["fill_id"],
                str(f["price"]),
                str(f["size"]),
                f"{f['fee']:.8f}",
                f"{f['slippage']:.8f}",
                f"{f['impact']:.8f}",
                f["liquidity"],
                str(f["row"]["seq"]),
            )
    out.print(orders)
    p = d["pnl"]
    out.print(
        f"P&L attribution: notional {p['notional']:.8f}, fees {p['fees']:.8f}, slippage "
        f"{p['slippage']:.8f}, impact {p['impact']:.8f} (quote units)"
    )


def cmd_scenario(args: argparse.Namespace) -> int:
    from journal_tools.scenario import ScenarioError, load_scenario, run_scenario

    try:
        scenario = load_scenario(Path(args.file))
    except ScenarioError as exc:
        raise UsageError(str(exc)) from None
    for line in run_scenario(scenario):
        out.print(json.dumps(line, separators=(",", ":")), soft_wrap=True, highlight=False)
    return 0


def cmd_project(args: argparse.Namespace) -> int:
    from journal_tools.projections import cli_project

    config = _config(args)
    journal = _journal(args, config)
    try:
        return cli_project(args, journal, config)
    finally:
        journal.close()


def cmd_funding(args: argparse.Namespace) -> int:
    from journal_tools.funding import cli_funding

    config = _config(args)
    start = parse_time(args.start) if args.start else None
    end = parse_time(args.end) if args.end else None
    with _journal(args, config) as journal:
        return cli_funding(args, journal, config, start, end)


def cmd_halt(args: argparse.Namespace) -> int:
    """Kill switch on (``halt``) or off (``resume``): an operator event in md.CONTROL."""
    from adapters.journal.base import CONTROL_STREAM
    from kernel.events import Halt, Resume

    if not args.reason.strip():
        raise UsageError("--reason must say why (it is journaled and audited)")
    ts = parse_time(args.at) if args.at else int(datetime.now(UTC).timestamp() * 1e9)
    cls = Halt if args.command == "halt" else Resume
    event = cls(ts_event=ts, ts_recv=ts, reason=args.reason, source=args.source)
    config = _config(args)
    with _journal(args, config) as journal:
        (seq,) = journal.append(CONTROL_STREAM, [event])
    out.print(
        f"{args.command} journaled: {CONTROL_STREAM} seq {seq} at {fmt_ns(ts)} UTC ({args.reason})"
    )
    if not args.kafka:
        return 0
    # the live kernel listens on the Kafka topic `system`; the journal row above is the
    # record, the message the signal
    from adapters.kafka import EventProducer, KafkaBusError, topic_for

    kafka = config.kafka
    if args.bootstrap:
        kafka = msgspec.structs.replace(kafka, bootstrap_servers=args.bootstrap)
    try:
        with EventProducer(kafka, delivery_timeout_ms=5_000) as producer:
            producer.produce(event)
            left = producer.flush(10)
            failed = list(producer.failures)
    except KafkaBusError as exc:
        console.print(f"[red]journaled but not published to Kafka:[/] {exc}")
        return 1
    if left or failed:
        why = failed[0].error if failed else f"{left} message(s) undelivered"
        console.print(f"[red]journaled but not published to Kafka:[/] {why}")
        return 1
    out.print(f"published to Kafka topic {topic_for(event)} on {kafka.bootstrap_servers}")
    return 0


def _legacy_path(dsn: str) -> str | None:
    """The file of a ``sqlite:///`` DSN (or plain path) holding a legacy TickerML
    database (``ohlcv`` / ``trades`` / ``order_books``, no journal); else ``None``."""
    from journal_tools.legacy import is_legacy_sqlite

    scheme, sep, rest = dsn.partition("://")
    if sep and scheme.lower() != "sqlite":
        return None
    path = rest[1:] if sep else dsn
    return path if is_legacy_sqlite(path) else None


def _migrate_legacy(args: argparse.Namespace, path: str) -> int:
    from journal_tools.legacy import LegacyOptions, LegacySource, parse_interval
    from journal_tools.migrate import MigrationError, migrate_legacy

    registry = InstrumentRegistry(list(_config(args).instruments.instruments))
    options = LegacyOptions(args.legacy_exchange.upper(), parse_interval(args.legacy_interval))
    target = None if args.dry_run else open_journal(args.target)
    try:
        with LegacySource(path, registry, options) as source:
            report = migrate_legacy(source, target, dry_run=args.dry_run)
    except MigrationError as exc:
        console.print(f"[red]migration failed, target unchanged:[/] {exc}")
        return 1
    finally:
        if target is not None:
            target.close()
    if args.json:
        out.print_json(data=msgspec.to_builtins(report))
        return 0
    out.print(f"legacy TickerML database {path}:")
    for t in report.tables:
        out.print(f"  {t.table}: {t.rows:,} rows -> {t.events:,} events, {t.rounded:,} rounded")
    verb = "would move" if report.dry_run else "moved and verified"
    out.print(f"{verb}: {report.events:,} events in {len(report.streams)} streams")
    for st in report.streams:
        new = "" if report.dry_run else f" ({st.new:,} new)"
        out.print(f"  {st.stream}: {st.events:,} events{new}")
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    from journal_tools.migrate import MigrationError, migrate

    if args.source == args.target:
        raise UsageError("--from and --to are the same journal")
    legacy = _legacy_path(args.source)
    if legacy is not None:
        return _migrate_legacy(args, legacy)
    source = open_journal(args.source)
    try:
        target = open_journal(args.target)
    except JournalError:
        source.close()
        raise
    try:
        report = migrate(source, target, dry_run=args.dry_run)
    except MigrationError as exc:
        console.print(f"[red]migration failed, target unchanged:[/] {exc}")
        return 1
    finally:
        source.close()
        target.close()
    if args.json:
        out.print_json(data=msgspec.to_builtins(report))
    else:
        verb = "would move" if report.dry_run else "moved and verified"
        out.print(f"{verb}: {report.rows:,} rows in {len(report.streams)} streams")
        for st in report.streams:
            out.print(f"  {st.stream}: {st.rows:,} rows, last hash {st.last_hash[:16]}")
    return 0


def cmd_archive(args: argparse.Namespace) -> int:
    from journal_tools.archive import cli_archive

    with _journal(args, _config(args)) as journal:
        return cli_archive(args, journal)


def cmd_live(args: argparse.Namespace) -> int:
    """Run a live paper-trading session (collectors -> Kafka -> kernel -> journal)."""
    from journal_tools.live import LiveError, load_live_config, run_live

    app = _config(args)
    if args.bootstrap:
        app = msgspec.structs.replace(
            app, kafka=msgspec.structs.replace(app.kafka, bootstrap_servers=args.bootstrap)
        )
    try:
        live = load_live_config(args.config)
        if args.journal:
            live = msgspec.structs.replace(live, journal=args.journal)
        result = run_live(
            app,
            live,
            session_id=args.resume or args.session,
            resume=bool(args.resume),
            progress=None if args.quiet else console.print,
        )
    except LiveError as exc:
        console.print(f"[red]error:[/] {exc}")
        return 2
    out.print_json(data=msgspec.to_builtins(result))
    return 0


def cmd_record(args: argparse.Namespace) -> int:
    """Run the exchange collectors into the journal or onto Kafka."""
    from journal_tools.record import run_record

    config = _config(args)
    options = dict(kv.split("=", 1) for kv in args.option)

    def go(journal: Journal | None) -> int:
        result = run_record(
            config,
            exchanges=[e for e in args.exchanges.split(",") if e],
            symbols=[s for s in args.symbols.split(",") if s],
            to=args.to,
            journal=journal,
            raw_dir=args.raw_capture,
            duration_s=args.duration,
            channels=[c for c in args.channels.split(",") if c],
            depth=args.depth,
            ws_url=args.ws_url,
            rest_url=args.rest_url,
            options=options,
            progress=None if args.quiet else console.print,
        )
        out.print_json(data=msgspec.to_builtins(result))
        return 0

    if args.to == "journal":
        with _journal(args, config) as journal:
            return go(journal)
    return go(None)


def cmd_demo(args: argparse.Namespace) -> int:
    from journal_tools.demo import run_demo

    return run_demo(Path(args.out), hours=args.hours, seed=args.seed, quiet=args.quiet)


def cmd_kafka_init(args: argparse.Namespace) -> int:
    """Create the Kafka topics of config/kafka.yaml that do not exist yet (idempotent)."""
    from adapters.kafka import KafkaBusError, create_topics

    config = _config(args).kafka
    if args.bootstrap:
        config = msgspec.structs.replace(config, bootstrap_servers=args.bootstrap)
    try:
        created = create_topics(config, timeout=args.timeout)
    except KafkaBusError as exc:
        console.print(f"[red]error:[/] {exc}")
        return 2
    if created:
        for name in created:
            out.print(f"created {name} ({config.partitions} partitions)")
    else:
        out.print(f"all topics already exist on {config.bootstrap_servers}")
    return 0


def cmd_news(args: argparse.Namespace) -> int:
    """Poll the feeds of config/news.yaml and produce News events to Kafka (or print them)."""
    import time

    from adapters.kafka import EventProducer, KafkaBusError
    from adapters.news import NewsPoller, publish

    config = _config(args)
    if not config.news.feeds:
        raise UsageError("no feeds configured (config/news.yaml: feeds)")
    kafka = config.kafka
    if args.bootstrap:
        kafka = msgspec.structs.replace(kafka, bootstrap_servers=args.bootstrap)
    try:
        producer = None if args.print else EventProducer(kafka)
    except KafkaBusError as exc:
        console.print(f"[red]error:[/] {exc}")
        return 2
    code = 0
    with NewsPoller(config.news) as poller:
        try:
            while True:
                report = poller.poll_once()
                undelivered = 0
                if producer is None:
                    for ev in report.events:  # JSON lines
                        line = msgspec.json.encode(to_builtins(ev)).decode()
                        out.print(line, soft_wrap=True, markup=False, highlight=False)
                else:
                    undelivered = publish(report, producer)
                for f in report.failed:
                    console.print(f"[yellow]feed {f.feed} failed:[/] {f.error}")
                console.print(
                    f"news: {len(report.events)} new, {report.duplicates} duplicate(s) from "
                    f"{len(report.feeds)} feed(s), {len(report.failed)} failed"
                    + (f", {undelivered} undelivered" if undelivered else "")
                )
                code = 1 if undelivered or len(report.failed) == len(report.feeds) else 0
                if args.once:
                    break
                time.sleep(config.news.poll_interval_s)
        finally:
            if producer is not None:
                producer.close()
    return code


# -- parser ------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tickerml",
        description="Event-sourced, deterministic trading kernel: import, replay, verify, audit.",
    )
    p.add_argument("--config-dir", help="directory of the YAML config (default ./config)")
    p.add_argument("--log-format", default="auto", choices=["auto", "json", "console"])
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(
        name: str, fn: Callable[[argparse.Namespace], int], help_: str
    ) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_, description=help_)
        sp.set_defaults(func=fn)
        sp.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
        return sp

    sp = add("synth", cmd_synth, "write a deterministic synthetic market as Tardis CSV files")
    sp.add_argument("--out", required=True, type=Path, help="output directory")
    sp.add_argument("--hours", type=float, default=1.0, help="market time to generate")
    sp.add_argument("--seed", type=int, default=7)
    sp.add_argument("--start", default="2025-01-01", help="UTC start date (default 2025-01-01)")
    sp.add_argument("--exchanges", help="comma list (default binance,coinbase,kraken,kucoin)")
    sp.add_argument(
        "--symbols", help="comma list of normalised symbols (default BTC-USDT,ETH-USDT)"
    )
    sp.add_argument("--no-perps", action="store_true", help="spot only, no perps or funding")

    imp = sub.add_parser("import", help="import market history into the journal")
    isub = imp.add_subparsers(dest="format", required=True, metavar="FORMAT")
    sp = isub.add_parser(
        "tardis",
        help="Tardis CSV (gz ok): incremental_book_L2, trades, derivative_ticker",
        description="Import Tardis CSV files in one transaction (a bad row aborts it, "
        "naming file and line, unless --skip-bad).",
    )
    sp.set_defaults(func=cmd_import_tardis)
    sp.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    sp.add_argument("--book", action="append", default=[], help="incremental_book_L2 file")
    sp.add_argument("--trades", action="append", default=[], help="trades file")
    sp.add_argument("--ticker", action="append", default=[], help="derivative_ticker file")
    sp.add_argument("--dir", help="import every Tardis file in this directory")
    sp.add_argument("--journal", help="journal DSN (sqlite:///path.db, memory://)")
    sp.add_argument("--skip-bad", action="store_true", help="skip malformed rows and count them")
    sp.add_argument("--json", action="store_true", help="print the import report as JSON")

    sp = add(
        "replay", cmd_replay, "run the kernel over journaled market data (or --verify a session)"
    )
    sp.add_argument("--from", dest="start", help="start time (ISO-8601 UTC or ns), inclusive")
    sp.add_argument("--to", dest="end", help="end time (ISO-8601 UTC or ns), exclusive")
    sp.add_argument(
        "--exchange", action="append", default=[], help="only this exchange (repeatable)"
    )
    sp.add_argument("--symbol", action="append", default=[], help="only this symbol (repeatable)")
    sp.add_argument("--strategy", help="strategy name (default: config/trading.yaml)")
    sp.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="strategy parameter (repeatable; overrides config/trading.yaml)",
    )
    sp.add_argument("--journal", help="journal DSN")
    sp.add_argument("--stats-json", help="write run statistics to this JSON file")
    sp.add_argument("--report", metavar="FILE", help="write an HTML report of the session")
    sp.add_argument("--session", help="with --verify: the session to re-derive")
    sp.add_argument("--session-id", help="id for the new session (default: time + random)")
    sp.add_argument("--verify", action="store_true", help="re-derive a session and compare")
    sp.add_argument("--json", action="store_true", help="print the verify result as JSON")
    sp.add_argument("--archive", metavar="DIR", help="the Parquet archive, if it moved")

    sp = add("verify", cmd_verify, "check the hash chain and gap-free seqs of journal streams")
    sp.add_argument("--journal", help="journal DSN")
    sp.add_argument("--archive", metavar="DIR", help="the Parquet archive, if it moved")
    sp.add_argument("--stream", action="append", default=[], help="only this stream (repeatable)")

    sp = add(
        "audit",
        cmd_audit,
        "list sessions, or a session's decisions: inputs, thresholds, risk, orders, fills",
    )
    sp.add_argument("--session", help="session id (omit to list sessions)")
    sp.add_argument("--decision", help="one decision id (e.g. d7), shown in full")
    sp.add_argument("--from", dest="start", help="decisions from this time (ISO-8601 or ns)")
    sp.add_argument("--to", dest="end", help="decisions before this time (ISO-8601 or ns)")
    sp.add_argument("--journal", help="journal DSN")
    sp.add_argument("--format", choices=["table", "json", "csv"], default="table")
    sp.add_argument("--limit", type=int, default=50, help="at most this many decisions")

    sp = add(
        "migrate",
        cmd_migrate,
        "move a journal to another backend (e.g. SQLite -> PostgreSQL), verified, all or nothing",
    )
    sp.add_argument("--from", dest="source", required=True, help="source journal DSN")
    sp.add_argument("--to", dest="target", required=True, help="target journal DSN")
    sp.add_argument("--dry-run", action="store_true", help="check the source, write nothing")
    sp.add_argument("--json", action="store_true", help="print the report as JSON")
    sp.add_argument(
        "--legacy-exchange",
        default="BINANCE",
        help="legacy TickerML database: exchange of rows without one (default BINANCE)",
    )
    sp.add_argument(
        "--legacy-interval",
        default="1m",
        help="legacy TickerML database: bar length of ohlcv rows without one (default 1m)",
    )

    for name, what in (
        ("halt", "kill switch: cancel every order, flatten, refuse new orders until resume"),
        ("resume", "lift the kill switch (after a risk halt, re-entry starts at reduced size)"),
    ):
        sp = add(name, cmd_halt, what)
        sp.add_argument("--reason", required=True, help="why (journaled, shown by audit)")
        sp.add_argument("--at", help="event time (ISO-8601 UTC or ns; default: now)")
        sp.add_argument("--source", default="operator", help="who (default operator)")
        sp.add_argument("--journal", help="journal DSN")
        sp.add_argument(
            "--kafka", action="store_true", help="also publish it on the Kafka topic system"
        )
        sp.add_argument("--bootstrap", help="Kafka bootstrap servers (default: config)")

    sp = add(
        "scenario",
        cmd_scenario,
        "run a scripted scenario (book, trades, orders) and print every output as JSON lines",
    )
    sp.add_argument("file", help="scenario JSON file (format: docs/execution.md)")

    sp = add(
        "project",
        cmd_project,
        "rebuild or show the read models (portfolio_state, trade_history, trade_decisions, "
        "performance_metrics)",
    )
    sp.add_argument("--journal", help="journal DSN")
    sp.add_argument("--rebuild", action="store_true", help="recompute the read models from events")
    sp.add_argument("--show", metavar="TABLE", help="print one read model")
    sp.add_argument("--session", help="only this session")
    sp.add_argument("--format", choices=["table", "json", "csv"], default="table")
    sp.add_argument("--limit", type=int, default=50, help="at most this many rows (--show)")

    sp = add(
        "archive",
        cmd_archive,
        "move market data received before a time to Parquet (verified, then deleted from "
        "the database); replay and verify read both tiers as one",
    )
    sp.add_argument("--before", required=True, help="UTC date/time (ISO-8601) or ns, exclusive")
    sp.add_argument("--dir", help="archive directory (needed the first time; one per journal)")
    sp.add_argument("--stream", action="append", default=[], help="only this stream (repeatable)")
    sp.add_argument("--dry-run", action="store_true", help="say what would move; change nothing")
    sp.add_argument("--journal", help="journal DSN")
    sp.add_argument("--json", action="store_true", help="print the report as JSON")

    sp = add(
        "funding",
        cmd_funding,
        "funding rates per perp over the journal: last/min/max/mean rate, next funding, "
        "alerts; with --session its funding paid and expected cost",
    )
    sp.add_argument("--from", dest="start", help="start time (ISO-8601 UTC or ns), inclusive")
    sp.add_argument("--to", dest="end", help="end time (ISO-8601 UTC or ns), exclusive")
    sp.add_argument("--exchange", action="append", default=[], help="only this exchange")
    sp.add_argument("--symbol", action="append", default=[], help="only this perp symbol")
    sp.add_argument("--session", help="also this session's funding payments and position")
    sp.add_argument("--journal", help="journal DSN")
    sp.add_argument("--format", choices=["table", "json"], default="table")

    sp = add("demo", cmd_demo, "synth -> import -> replay -> verify -> summary, all embedded")
    sp.add_argument("--out", default="out/demo", help="working directory (default out/demo)")
    sp.add_argument("--hours", type=float, default=0.1)
    sp.add_argument("--seed", type=int, default=7)

    sp = add("news", cmd_news, "poll news feeds (config/news.yaml) and produce News to Kafka")
    sp.add_argument("--once", action="store_true", help="poll every feed once, then exit")
    sp.add_argument("--bootstrap", metavar="HOST:PORT", help="brokers (default: config/env)")
    sp.add_argument("--print", action="store_true", help="print the events, produce nothing")

    sp = add("live", cmd_live, "run the kernel live: collectors -> Kafka -> kernel -> journal")
    sp.add_argument("--config", required=True, type=Path, help="live config YAML (feeds...)")
    sp.add_argument("--session", help="session id for a new session (default: generated)")
    sp.add_argument("--resume", metavar="SESSION", help="continue SESSION from its checkpoint")
    sp.add_argument("--journal", help="journal URL (overrides the live config)")
    sp.add_argument("--bootstrap", metavar="HOST:PORT", help="brokers (default: config/env)")

    sp = add("record", cmd_record, "run exchange collectors into the journal or onto Kafka")
    sp.add_argument("--exchanges", required=True, help="comma list (binance,kraken,...)")
    sp.add_argument("--symbols", required=True, help="comma list (BTC-USDT or BTCUSDT, ...)")
    sp.add_argument("--to", choices=["journal", "kafka"], default="journal")
    sp.add_argument("--journal", help="journal DSN (--to journal)")
    sp.add_argument("--raw-capture", type=Path, metavar="DIR", help="also save raw frames")
    sp.add_argument("--duration", type=float, help="seconds to record (default: until ^C)")
    sp.add_argument("--channels", default="book,trades,funding", help="book,trades,funding")
    sp.add_argument("--depth", type=int, default=50, help="book levels (20 or 50 typical)")
    sp.add_argument("--ws-url", help="override the venue's WebSocket URL (e.g. a local fake)")
    sp.add_argument("--rest-url", help="override the venue's REST base URL")
    sp.add_argument(
        "--option", action="append", default=[], metavar="KEY=VALUE", help="adapter option"
    )

    from journal_tools.quality import add_quality_command

    add_quality_command(add)

    from journal_tools.health import add_health_command

    add_health_command(add)

    from journal_tools.trajectories import add_trajectories_command

    add_trajectories_command(add)

    from journal_tools.readiness import add_readiness_command

    add_readiness_command(add)

    from journal_tools.backup import add_backup_commands

    add_backup_commands(add)

    from journal_tools.dashboard import add_dashboard_command

    add_dashboard_command(add)

    from journal_tools.train_cli import add_training_commands

    add_training_commands(add)

    kafka = sub.add_parser("kafka", help="Kafka bus administration")
    ksub = kafka.add_subparsers(dest="kafka_command", required=True, metavar="ACTION")
    sp = ksub.add_parser(
        "init",
        help="create the configured topics and the dead-letter topic (existing ones are kept)",
        description="Create the topics of config/kafka.yaml with its partitions and "
        "retention; topics that exist already are left as they are.",
    )
    sp.set_defaults(func=cmd_kafka_init)
    sp.add_argument("--bootstrap", metavar="HOST:PORT", help="brokers (default: config/env)")
    sp.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the broker")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from journal_tools.logs import configure
    from journal_tools.session import SessionError
    from journal_tools.tardis import TardisFormatError

    parser = build_parser()
    args = parser.parse_args(argv)
    configure(args.log_format)
    try:
        return int(args.func(args))
    except (
        UsageError,
        ConfigError,
        TardisFormatError,
        SessionError,
        JournalError,
        ValueError,
    ) as exc:
        console.print(f"[red]error:[/] {exc}")
        return 2
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]")
        return 130


if __name__ == "__main__":
    sys.exit(main())
