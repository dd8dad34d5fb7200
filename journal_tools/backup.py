"""Journal backup and verified restore: ``tickerml backup`` / ``tickerml restore``.

A backup is one gzip'd JSON-lines file, the same for every backend (SQLite, PostgreSQL,
the Parquet cold tier read through the journal):

* line 1: ``{"format": "tickerml-backup/1", "code_version": ...}``;
* one line per row, streams one after the other in name order, rows in seq order:
  stream ``s``, seq ``q``, event id ``id`` (base64), ``ts_event``, ``ts_recv``,
  ``priority``, ``kind``, ``exchange``, ``symbol``, ``src_seq``, payload ``pl``
  (base64), row hash ``h`` (hex) and, on a stream's first row, its ``prev`` hash;
* last line: the manifest (rows and last hash per stream, total rows) and ``digest``,
  the blake2b-256 of every line before it.

Backup first verifies every source chain. Restore reads the whole file and checks it
before it writes anything: the digest, the manifest's counts, gap-free seqs from 1,
every row's hash recomputed from its predecessor (``chain_hash``), every payload
decoding; then, into an EMPTY journal only, appends every stream in one transaction
with the original event ids (so the chains come out identical), verifies every
restored chain and compares each stream's last hash with the manifest. Any failure
names the stream and seq and leaves the target as it was.
"""

from __future__ import annotations

import argparse
import base64
import gzip
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

from adapters.journal.base import Journal, JournalError, PreparedEvent, chain_hash
from kernel.events import EventDecodeError, decode

FORMAT = "tickerml-backup/1"


class BackupError(RuntimeError):
    """A corrupt backup, a corrupt source, or a target that is not empty."""


class BackupReport(msgspec.Struct):
    path: str
    streams: dict[str, dict[str, Any]]
    rows: int
    digest: str


def backup(journal: Journal, path: Path, code_version: str = "") -> BackupReport:
    """Write every stream of ``journal`` to ``path`` (see the module docstring)."""
    digest = hashlib.blake2b(digest_size=32)
    streams: dict[str, dict[str, Any]] = {}
    total = 0
    tmp = path.with_name(path.name + ".partial")
    with gzip.open(tmp, "wb") as fh:

        def put(obj: dict[str, Any]) -> None:
            line = json.dumps(obj, separators=(",", ":"), sort_keys=True).encode() + b"\n"
            digest.update(line)
            fh.write(line)

        put({"format": FORMAT, "code_version": code_version})
        for info in sorted(journal.streams(), key=lambda s: s.stream):
            name = info.stream
            report = journal.verify(name)
            if not report.ok:
                raise BackupError(
                    f"source stream {name} is corrupt at seq {report.first_bad_seq}: "
                    f"{report.reason}; nothing written"
                )
            rows = 0
            last = ""
            for r in journal.read(name):
                row = {
                    "s": name,
                    "q": r.seq,
                    "id": base64.b64encode(r.event_id).decode(),
                    "te": r.ts_event,
                    "tr": r.ts_recv,
                    "p": r.priority,
                    "k": r.kind,
                    "x": r.exchange,
                    "y": r.symbol,
                    "ss": r.src_seq,
                    "pl": base64.b64encode(r.payload).decode(),
                    "h": r.hash.hex(),
                }
                if rows == 0:
                    row["prev"] = r.prev_hash.hex()
                put(row)
                rows += 1
                last = r.hash.hex()
            streams[name] = {"rows": rows, "last_hash": last}
            total += rows
        manifest = {"streams": streams, "rows": total}
        hexdigest = digest.hexdigest()
        tail = {"manifest": manifest, "digest": hexdigest}
        fh.write(json.dumps(tail, separators=(",", ":"), sort_keys=True).encode() + b"\n")
    tmp.replace(path)
    return BackupReport(str(path), streams, total, hexdigest)


def _read_backup(path: Path) -> tuple[dict[str, Any], dict[str, list[PreparedEvent]]]:
    """The manifest and every stream's rows, all checked (see the module docstring)."""
    digest = hashlib.blake2b(digest_size=32)
    try:
        with gzip.open(path, "rb") as fh:
            lines = fh.read().splitlines(keepends=True)
    except (OSError, EOFError) as exc:
        raise BackupError(f"{path}: not a readable backup ({exc})") from None
    if len(lines) < 2:
        raise BackupError(f"{path}: truncated (no manifest line)")
    try:
        head = json.loads(lines[0])
        tail = json.loads(lines[-1])
    except ValueError as exc:
        raise BackupError(f"{path}: header or manifest is not JSON ({exc})") from None
    if head.get("format") != FORMAT:
        raise BackupError(f"{path}: format {head.get('format')!r}, expected {FORMAT!r}")
    for line in lines[:-1]:
        digest.update(line)
    if "manifest" not in tail or tail.get("digest") != digest.hexdigest():
        raise BackupError(f"{path}: digest mismatch: the file was changed or truncated")
    streams: dict[str, list[PreparedEvent]] = {}
    prev: dict[str, bytes] = {}
    for n, line in enumerate(lines[1:-1], start=2):
        try:
            row = json.loads(line)
            name, seq = row["s"], row["q"]
            event_id = base64.b64decode(row["id"])
            payload = base64.b64decode(row["pl"])
            stored = bytes.fromhex(row["h"])
        except (ValueError, KeyError) as exc:
            raise BackupError(f"{path} line {n}: not a backup row ({exc})") from None
        rows = streams.setdefault(name, [])
        if seq != len(rows) + 1:
            raise BackupError(f"{name} seq {seq}: expected seq {len(rows) + 1} (a gap)")
        before = prev.get(name)
        if before is None:
            before = bytes.fromhex(row.get("prev", ""))
        if chain_hash(before, event_id, payload) != stored:
            raise BackupError(f"{name} seq {seq}: row hash does not match its content")
        try:
            decode(payload)
        except EventDecodeError as exc:
            raise BackupError(f"{name} seq {seq}: payload does not decode: {exc}") from None
        prev[name] = stored
        rows.append(
            PreparedEvent(
                event_id,
                row["te"],
                row["tr"],
                row["p"],
                row["k"],
                row["x"],
                row["y"],
                row["ss"],
                payload,
            )
        )
    manifest: dict[str, Any] = tail["manifest"]
    for name, want in manifest["streams"].items():
        got = len(streams.get(name, []))
        if got != want["rows"]:
            raise BackupError(f"{name}: {got} rows in the file, the manifest says {want['rows']}")
        if got and prev[name].hex() != want["last_hash"]:
            raise BackupError(f"{name}: last hash differs from the manifest")
    extra = sorted(set(streams) - set(manifest["streams"]))
    if extra:
        raise BackupError(f"streams not in the manifest: {', '.join(extra)}")
    return manifest, streams


def restore(path: Path, target: Journal) -> BackupReport:
    """Restore ``path`` into the empty journal ``target``, verified (module docstring)."""
    manifest, streams = _read_backup(path)
    present = [s.stream for s in target.streams()]
    if present:
        raise BackupError(
            f"the target journal is not empty ({len(present)} streams, e.g. {present[0]}): "
            "restore only into an empty database"
        )
    try:
        with target.transaction():
            for name in sorted(streams):
                rows = streams[name]
                for i in range(0, len(rows), 10_000):
                    target.append_prepared(name, rows[i : i + 10_000])
            for name, want in manifest["streams"].items():
                report = target.verify(name)
                if not report.ok or report.rows != want["rows"]:
                    raise BackupError(
                        f"{name}: restored chain does not verify "
                        f"(rows {report.rows}, first bad seq {report.first_bad_seq})"
                    )
                last = list(target.read(name, report.rows, report.rows))
                if want["rows"] and last[0].hash.hex() != want["last_hash"]:
                    raise BackupError(f"{name}: restored last hash differs from the backup")
    except JournalError as exc:
        raise BackupError(f"the target refused the restore (nothing kept): {exc}") from exc
    digest = hashlib.blake2b(path.read_bytes(), digest_size=32).hexdigest()
    return BackupReport(str(path), manifest["streams"], manifest["rows"], digest)


def cmd_backup(args: argparse.Namespace) -> int:
    from journal_tools.cli import UsageError, _config, _journal, out
    from journal_tools.session import code_version

    config = _config(args)
    with _journal(args, config) as journal:
        try:
            report = backup(journal, Path(args.out), code_version())
        except BackupError as exc:
            raise UsageError(str(exc)) from None
    out.print(
        f"backup {report.path}: {len(report.streams)} streams, {report.rows:,} rows, "
        f"every chain verified"
    )
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    from journal_tools.cli import UsageError, _config, _journal, out

    config = _config(args)
    with _journal(args, config) as journal:
        try:
            report = restore(Path(args.file), journal)
        except BackupError as exc:
            raise UsageError(str(exc)) from None
    out.print(
        f"restored {report.rows:,} rows into {len(report.streams)} streams; every chain "
        "verified and every last hash equals the backup's"
    )
    return 0


Add = Callable[[str, Callable[[argparse.Namespace], int], str], argparse.ArgumentParser]


def add_backup_commands(add: Add) -> None:
    sp = add("backup", cmd_backup, "back up every journal stream to one verified file")
    sp.add_argument("--journal", help="journal DSN")
    sp.add_argument("--out", required=True, help="backup file to write (.jsonl.gz)")
    sp = add("restore", cmd_restore, "restore a backup into an EMPTY journal, verified")
    sp.add_argument("file", help="backup file")
    sp.add_argument("--journal", help="journal DSN (must be empty)")
