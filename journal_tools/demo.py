"""``tickerml demo``: the whole embedded path in one command.

synth (Tardis CSV) -> import into a fresh SQLite journal -> replay with the example
strategy -> paper-trade one instrument with the market maker through the execution
simulator -> re-derive both sessions (replay --verify) -> verify every hash chain ->
rebuild the read models -> summary. Exit code 0 only if every check passed.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from adapters.config_loader import load_config
from adapters.journal.sqlite import SqliteJournal
from journal_tools.projections import load_session as load_projection_session
from journal_tools.projections import performance_metrics, rebuild
from journal_tools.session import run_session, verify_session
from journal_tools.synth import SynthSpec, generate
from journal_tools.tardis import import_files
from kernel.config import StrategyConfig
from kernel.events import Decision, decode
from kernel.fixedpoint import MONEY_DECIMALS, format_fixed
from kernel.instruments import InstrumentRegistry


def run_demo(out_dir: Path, hours: float = 0.1, seed: int = 7, quiet: bool = False) -> int:
    console = Console()
    config = load_config()
    data_dir = out_dir / "data"
    db = out_dir / "journal.db"
    if data_dir.exists():
        shutil.rmtree(data_dir)
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    out_dir.mkdir(parents=True, exist_ok=True)

    def step(msg: str) -> None:
        if not quiet:
            console.print(f"[bold cyan]>>[/] {msg}")

    t0 = time.perf_counter()
    step(f"synth: {hours} h of 4 exchanges x 2 symbols (+ perps) into {data_dir}")
    manifest = generate(SynthSpec(out_dir=str(data_dir), hours=hours, seed=seed))
    t_synth = time.perf_counter() - t0

    step(f"import: Tardis CSV -> {db}")
    registry = InstrumentRegistry(list(config.instruments.instruments))
    journal = SqliteJournal(db)
    try:
        t1 = time.perf_counter()
        report = import_files(journal, registry, [f.path for f in manifest.files])
        t_import = time.perf_counter() - t1

        step(f"replay: strategy {config.trading.strategy.name}, seed {config.trading.seed}")
        stats = run_session(journal, config)

        step("paper trading: market_maker on BINANCE BTC-USDT through the simulated venue")
        mm = run_session(
            journal,
            config,
            exchanges=["BINANCE"],
            symbols=["BTC-USDT"],
            strategy=StrategyConfig(name="market_maker"),
        )

        step(f"verify: re-derive sessions {stats.session_id}, {mm.session_id}")
        result = verify_session(journal, stats.session_id)
        mm_result = verify_session(journal, mm.session_id)

        step("read models: portfolio_state, trade_history, trade_decisions, performance_metrics")
        rebuilt = rebuild(journal)
        perf = performance_metrics(load_projection_session(journal, mm.session_id))

        step("verify: hash chains of every stream")
        chains = [journal.verify(s.stream) for s in journal.streams()]
        decisions = [
            ev
            for rec in journal.read(f"session.{stats.session_id}")
            if isinstance(ev := decode(rec.payload), Decision)
        ]
    finally:
        journal.close()

    chains_ok = all(c.ok for c in chains)
    table = Table(title="TickerML demo")
    table.add_column("step")
    table.add_column("result", justify="right")
    table.add_row("synthetic files", f"{len(manifest.files)} in {t_synth:.1f} s")
    table.add_row(
        "imported",
        f"{report.rows:,} rows -> {report.events:,} events, {len(report.streams)} streams "
        f"in {t_import:.1f} s ({report.rows / t_import:,.0f} rows/s)",
    )
    table.add_row(
        "replayed",
        f"{stats.events:,} records / {stats.messages:,} events in {stats.seconds:.2f} s "
        f"({stats.events_per_s:,.0f} records/s)",
    )
    table.add_row("decisions journaled", f"{stats.decisions:,}")
    table.add_row("rejected market events", f"{stats.rejected:,}")
    table.add_row("state hash", stats.state_hash[:32])
    table.add_row(
        "paper trading (market_maker)",
        f"{mm.decisions:,} decisions, {mm.fills:,} fills in {mm.seconds:.2f} s; equity "
        f"{format_fixed(perf.final_equity, MONEY_DECIMALS)[:-6]} from "
        f"{format_fixed(perf.initial_cash, MONEY_DECIMALS)[:-6]}, fees "
        f"{format_fixed(perf.fees, MONEY_DECIMALS)[:-6]}",
    )
    for name, res in (("replay --verify", result), ("paper --verify", mm_result)):
        table.add_row(
            name,
            f"[green]identical[/] ({res.outputs_checked} outputs)"
            if res.ok
            else "[red]DIVERGED[/]",
        )
    table.add_row(
        "read models",
        ", ".join(
            f"{t} {sum(r.get(t, 0) for r in rebuilt.rows.values())}"
            for t in ("portfolio_state", "trade_history", "trade_decisions")
        ),
    )
    table.add_row(
        "hash chains", f"[green]ok[/] ({len(chains)} streams)" if chains_ok else "[red]BROKEN[/]"
    )
    console.print(table)
    for d in decisions[:3]:
        console.print(
            f"[dim]{d.decision_id}[/] {d.exchange}:{d.symbol} [bold]{d.action}[/]: {d.reasoning}"
        )
    console.print(
        f"next: .venv/bin/tickerml audit --journal sqlite:///{db} --session {stats.session_id}\n"
        f"      .venv/bin/tickerml project --journal sqlite:///{db} --show trade_history "
        f"--session {mm.session_id}"
    )
    return 0 if result.ok and mm_result.ok and chains_ok else 1
