"""``tickerml archive --before DATE``: move market data received before a time from the
database to the Parquet cold tier (see :mod:`adapters.journal.parquet`).

The rows are written per stream and UTC day, read back and checked (row counts, row
digests, the hash chain against the database's hashes) and only then deleted from the
database, in one transaction; every later open of the journal reads both tiers as one.
Exit codes: 0 done (or nothing to do), 1 refused (a check failed; nothing deleted), 2 bad
input.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import msgspec
from rich.console import Console
from rich.table import Table

from adapters.journal.base import Journal
from adapters.journal.parquet import ArchiveError, ArchiveReport, archive_journal


def cli_archive(args: argparse.Namespace, journal: Journal) -> int:
    """Run ``tickerml archive`` on an open journal; prints a summary (or JSON)."""
    from journal_tools.cli import UsageError, console, fmt_ns, out, parse_time, progress_bar

    before = parse_time(args.before)
    state = journal.archive_state()
    if args.dir is None and state is None:
        raise UsageError("nothing is archived yet: say where with --dir DIR")
    if args.dir is not None and state is not None:
        recorded = Path(state.directory).resolve()
        if Path(args.dir).resolve() != recorded:
            raise UsageError(
                f"this journal archives into {recorded}, not {args.dir}; leave out --dir"
            )
    label = "archive (dry run)" if args.dry_run else "archive"
    try:
        with progress_bar(label, None, not args.quiet) as update:
            report = archive_journal(
                journal,
                before,
                args.dir,
                streams=args.stream or None,
                dry_run=args.dry_run,
                progress=lambda n: update(n),
            )
    except ArchiveError as exc:
        console.print(f"[red]archive refused, nothing deleted:[/] {exc}")
        return 1
    if args.json:
        out.print_json(data=msgspec.to_builtins(report))
        return 0
    _print_report(report, fmt_ns(before), out)
    return 0


def _print_report(report: ArchiveReport, before: str, out: Console) -> None:
    if not report.rows:
        out.print(
            f"nothing to archive before {before} UTC: every stream is archived that far "
            f"already (generation {report.generation} in {report.directory})"
        )
        return
    table = Table(title=f"rows received before {before} UTC")
    for col in ("stream", "seqs", "rows", "days"):
        table.add_column(col, justify="right" if col == "rows" else "left")
    for st in report.streams:
        days = st.days[0] if len(st.days) == 1 else f"{st.days[0]} .. {st.days[-1]}"
        table.add_row(st.stream, f"{st.from_seq}..{st.to_seq}", f"{st.rows:,}", days)
    out.print(table)
    if report.dry_run:
        out.print(
            f"dry run: would archive {report.rows:,} rows of {len(report.streams)} streams "
            f"into {report.directory}; nothing written, nothing deleted"
        )
    else:
        out.print(
            f"archived {report.rows:,} rows into {len(report.files)} Parquet files in "
            f"{report.directory} (generation {report.generation}); read back and verified, "
            f"then deleted {report.deleted:,} rows from the database"
        )
