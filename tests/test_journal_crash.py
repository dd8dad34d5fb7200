"""kill -9 a process that is appending to a SqliteJournal; nothing acked may be lost.

The writer (``tests/crash_writer.py``) appends batches of 500 events and prints ``ACK
<batch_no> <last_seq> <append_us>`` after each append returns; from each ACK on it is
inside the next append. The parent kills it with SIGKILL at a chosen fraction of an
append's duration after an ACK (so the kills land early in the append, mid-insert and
around the commit), several times on the same file, and after each kill checks that the
journal verifies, holds whole batches only, and holds every acked batch (and at most
the one batch that was committed but not yet acked).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from crash_writer import BATCH, STREAM

from adapters.journal import SqliteJournal, VerifyReport

ROOT = Path(__file__).resolve().parent.parent
WRITER = Path(__file__).resolve().with_name("crash_writer.py")

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


KILLS = [(5, 0.0), (13, 0.3), (21, 0.5), (8, 0.65), (11, 0.8), (16, 0.95)]
"""(ACKs to read, then the fraction of the last append's duration to wait) per kill."""


def _parse_ack(line: str) -> tuple[int, int, int]:
    word, batch_no, last_seq, append_us = line.split()
    assert word == "ACK", line
    return int(batch_no), int(last_seq), int(append_us)


def _run_and_kill(db: Path, kill_after: int, fraction: float) -> list[tuple[int, int, int]]:
    """Start a writer; once it has acked ``kill_after`` batches, wait ``fraction`` of its
    last append's duration (the wait picks the kill point, it synchronises nothing) and
    SIGKILL it.

    Returns every ACK it wrote, including those flushed after the ones read before the
    kill (they are in the pipe already).
    """
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    )
    proc = subprocess.Popen(
        [sys.executable, str(WRITER), str(db)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=env,
    )
    assert proc.stdout is not None and proc.stderr is not None
    acks: list[tuple[int, int, int]] = []
    try:
        while len(acks) < kill_after:
            line = proc.stdout.readline()
            if not line:
                proc.wait(timeout=10)
                pytest.fail(f"writer exited early ({proc.returncode}): {proc.stderr.read()}")
            acks.append(_parse_ack(line))
        if fraction:
            time.sleep(fraction * acks[-1][2] / 1e6)
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=10) == -signal.SIGKILL
        acks.extend(_parse_ack(line) for line in proc.stdout.read().splitlines())
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        proc.stdout.close()
        proc.stderr.close()
    return acks


def test_kill_9_while_appending_loses_no_acked_batch(tmp_path: Path) -> None:
    db = tmp_path / "crash.db"
    stored = 0
    for kill_after, fraction in KILLS:
        acks = _run_and_kill(db, kill_after, fraction)
        # The writer continued where the previous (killed) one left the file.
        first_batch = stored // BATCH + 1
        assert [(b, s) for b, s, _ in acks] == [
            (first_batch + i, (first_batch + i) * BATCH) for i in range(len(acks))
        ]
        last_acked = acks[-1][1]

        with SqliteJournal(db) as journal:
            seqs = [rec.seq for rec in journal.read(STREAM)]
            stored = len(seqs)
            assert journal.verify(STREAM) == VerifyReport(stream=STREAM, ok=True, rows=stored)
            src_seqs = [rec.src_seq for rec in journal.read(STREAM)]

        assert seqs == list(range(1, stored + 1))
        assert src_seqs == seqs
        assert stored % BATCH == 0, "a partial batch was stored"
        # Every acked batch is there; at most one more (committed, killed before its ACK).
        assert last_acked <= stored <= last_acked + BATCH
