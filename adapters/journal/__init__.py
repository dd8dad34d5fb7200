"""Journal backends and :func:`open_journal`, which picks one from a DSN."""

from __future__ import annotations

from pathlib import Path

from adapters.journal.base import (
    GENESIS_HASH,
    Journal,
    JournalError,
    JournalRecord,
    PreparedEvent,
    StreamInfo,
    VerifyReport,
    chain_hash,
    market_stream,
    prepare,
    session_stream,
)
from adapters.journal.memory import MemoryJournal
from adapters.journal.postgres import PostgresJournal
from adapters.journal.sqlite import SqliteJournal

__all__ = [
    "GENESIS_HASH",
    "Journal",
    "JournalError",
    "JournalRecord",
    "MemoryJournal",
    "PostgresJournal",
    "PreparedEvent",
    "SqliteJournal",
    "StreamInfo",
    "VerifyReport",
    "chain_hash",
    "market_stream",
    "open_journal",
    "prepare",
    "session_stream",
]


def open_journal(dsn: str, archive_dir: str | Path | None = None) -> Journal:
    """Open the journal a DSN names.

    * ``memory://``: a fresh :class:`MemoryJournal`.
    * ``sqlite:///relative/path.db``, ``sqlite:////absolute/path.db`` (everything after
      ``sqlite:///`` is the path), or a plain file path: a :class:`SqliteJournal`.
    * ``postgresql://user@host:port/db?schema=NAME`` (or ``postgres://``): a
      :class:`PostgresJournal` in schema ``NAME`` (default ``tickerml``), created on first
      open. A server that cannot be reached raises :class:`JournalError` naming host and
      port (never the password).

    A journal with archived rows (``tickerml archive``), or opened with ``archive_dir``
    (the archive's directory, if it moved), comes wrapped in a
    :class:`~adapters.journal.parquet.TieredJournal` that reads the Parquet cold tier and
    the database as one journal.
    """
    journal = _open_backend(dsn)
    try:
        if archive_dir is None and journal.archive_state() is None:
            return journal
        from adapters.journal.parquet import TieredJournal

        return TieredJournal(journal, archive_dir)
    except BaseException:
        journal.close()
        raise


def _open_backend(dsn: str) -> Journal:
    if not dsn:
        raise JournalError("empty journal DSN")
    scheme, sep, rest = dsn.partition("://")
    if not sep:
        return SqliteJournal(dsn)
    scheme = scheme.lower()
    if scheme == "memory":
        if rest:
            raise JournalError(f"memory:// takes no path, got {dsn!r}")
        return MemoryJournal()
    if scheme == "sqlite":
        if not rest.startswith("/") or len(rest) < 2:
            raise JournalError(f"expected sqlite:///path/to/file.db, got {dsn!r}")
        return SqliteJournal(rest[1:])
    if scheme in ("postgresql", "postgres"):
        return PostgresJournal(dsn)
    raise JournalError(f"unknown journal scheme {scheme!r} in {dsn!r}")
