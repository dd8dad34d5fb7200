"""``tickerml demo``: the whole embedded path in one command.

synth (Tardis CSV) -> import into a fresh SQLite journal -> replay with the example
strategy -> re-derive the session (replay --verify) -> verify every hash chain ->
summary. Exit code 0 only if every check passed.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from adapters.config_loader import load_config
from adapters.journal.sqlite import SqliteJournal
from journal_tools.session import run_session, verify_session
from journal_tools.synth import SynthSpec, generate
from journal_tools.tardis import import_files
from kernel.events import Decision, decode
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

        step(f"verify: re-derive session {stats.session_id} and compare every output")
        result = verify_session(journal, stats.session_id)

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
        "replay --verify",
        f"[green]identical[/] ({result.outputs_checked} outputs)"
        if result.ok
        else "[red]DIVERGED[/]",
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
        f"next: .venv/bin/tickerml audit --journal sqlite:///{db} --session {stats.session_id}"
    )
    return 0 if result.ok and chains_ok else 1
