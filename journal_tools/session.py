"""Run the kernel over journaled market data as a session, and verify a session.

A session stream ``session.<id>`` holds ``SessionStarted`` (config, seed, code version,
input range), then every event the kernel made, in order, then ``SessionEnded`` (the
state hash). ``verify_session`` rebuilds the engine from what SessionStarted recorded,
re-runs it over the same inputs and compares every output byte for byte.
"""

from __future__ import annotations

import hashlib
import os
import resource
import subprocess
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

import msgspec

from adapters.alerts import build_dispatcher
from adapters.config_loader import redacted
from adapters.journal.base import Journal, JournalError, PreparedEvent, prepare, session_stream
from kernel.config import AppConfig, StrategyConfig, canonical_json, config_hash
from kernel.context import StrategyLike
from kernel.engine import Engine
from kernel.events import (
    Event,
    LateEvent,
    SessionEnded,
    SessionStarted,
    decode,
    decoder,
    encode,
    event_id,
    kind_of,
    to_builtins,
)
from kernel.instruments import InstrumentRegistry
from kernel.trades import trade_windows_config
from strategies import build_strategy

END_OF_TIME = 2**63 - 1


class SessionError(RuntimeError):
    """A session cannot be run or verified (missing, incomplete, bad range...)."""


class ReplayStats(msgspec.Struct):
    """What ``tickerml replay --stats-json`` writes.

    ``events`` counts market-data rows folded (book levels, trades, funding and mark
    rows): the unit the peer benchmarks use. ``messages`` counts journal events (one
    exchange message of several levels is one event). ``seconds`` is the wall time of
    the fold including reading and decoding the journal.
    """

    session_id: str
    strategy: str
    events: int
    messages: int
    seconds: float
    events_per_s: float
    messages_per_s: float
    state_hash: str
    peak_rss_mb: float
    decisions: int
    rejected: int
    outputs: int
    fills: int
    input_from: int
    input_to: int


def code_version() -> str:
    """Package version plus the git commit when run from a checkout."""
    try:
        version = metadata.version("tickerml")
    except metadata.PackageNotFoundError:
        version = "0+unknown"
    root = Path(__file__).resolve().parents[1]
    if (root / ".git").exists():
        try:
            sha = subprocess.run(
                ["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"],
                capture_output=True,
                text=True,
                timeout=5,
                check=False,
            ).stdout.strip()
        except OSError:
            sha = ""
        if sha:
            version += f"+g{sha}"
    return version


def new_session_id() -> str:
    """Made at the edge (wall clock and OS randomness) and then journaled as an input."""
    return f"{datetime.now(UTC):%Y%m%dT%H%M%S}-{os.urandom(3).hex()}"


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def build_engine(
    config: AppConfig, strategy: StrategyLike | None, seed: int, session_id: str
) -> Engine:
    """The kernel for a session: engine config, instruments, latency profiles, seed."""
    return Engine(
        config.trading.engine,
        InstrumentRegistry(list(config.instruments.instruments)),
        strategy,
        seed=seed,
        session_id=session_id,
        latency={name: ex.latency for name, ex in config.exchanges.exchanges.items()},
        risk=config.risk_limits,
        trade_windows=trade_windows_config(config.exchanges),
        validation=config.monitoring.validation,
        features=config.trading.features,
        monitoring=config.monitoring,
    )


def _output_ids(stream: str, first_ordinal: int, events: Sequence[Event]) -> list[PreparedEvent]:
    return [prepare(ev, event_id(ev, stream, first_ordinal + i)) for i, ev in enumerate(events)]


def run_session(
    journal: Journal,
    config: AppConfig,
    *,
    start_ns: int | None = None,
    end_ns: int | None = None,
    exchanges: Sequence[str] | None = None,
    symbols: Sequence[str] | None = None,
    strategy: StrategyConfig | None = None,
    session_id: str | None = None,
    progress: Callable[[int], None] | None = None,
    write_batch: int = 10_000,
) -> ReplayStats:
    """Replay market data from the journal through the kernel as a journaled session."""
    strategy_cfg = strategy or config.trading.strategy
    config = msgspec.structs.replace(
        config, trading=msgspec.structs.replace(config.trading, strategy=strategy_cfg)
    )
    session_id = session_id or new_session_id()
    stream = session_stream(session_id)
    if any(s.stream == stream for s in journal.streams()):
        raise SessionError(f"session {session_id} already exists in the journal")
    public = redacted(config)
    strat = build_strategy(strategy_cfg)
    engine = build_engine(config, strat, config.trading.seed, session_id)
    ex = tuple(sorted(exchanges)) if exchanges else ()
    sy = tuple(sorted(symbols)) if symbols else ()
    lo = start_ns if start_ns is not None else 0
    hi = end_ns if end_ns is not None else END_OF_TIME
    started = SessionStarted(
        ts_event=lo,
        ts_recv=lo,
        session_id=session_id,
        mode="replay",
        config_hash=config_hash(public),
        seed=config.trading.seed,
        code_version=code_version(),
        strategy=strategy_cfg.name,
        input_from=lo,
        input_to=hi,
        exchanges=ex,
        symbols=sy,
        config_json=canonical_json(public).decode(),
    )
    ordinal = 0
    journal.append_prepared(stream, _output_ids(stream, ordinal, [started]))
    ordinal += 1

    # alerts are journaled with the outputs; then the sinks get them (no webhook from a
    # backtest unless webhook_in_replay)
    dispatch = build_dispatcher(config.monitoring.alerts, session_id, webhook=False)
    pending: list[Event] = list(engine.start())
    decode_payload = decoder().decode
    apply = engine.apply
    t0 = time.perf_counter()
    last_ts = lo
    n = 0
    for block in journal.iter_payload_blocks(lo, hi, ex or None, sy or None):
        for (payload,) in block:
            out = apply(decode_payload(payload))
            if out:
                pending.extend(out)
        n += len(block)
        if len(pending) >= write_batch:
            journal.append_prepared(stream, _output_ids(stream, ordinal, pending))
            dispatch(pending)
            ordinal += len(pending)
            pending = []
        if progress is not None:
            progress(n)
    seconds = time.perf_counter() - t0
    last_ts = engine.now or last_ts
    if pending:
        journal.append_prepared(stream, _output_ids(stream, ordinal, pending))
        dispatch(pending)
        ordinal += len(pending)
    dispatch.close()
    state_hash = engine.state_hash()
    ended = SessionEnded(
        ts_event=last_ts,
        ts_recv=last_ts,
        session_id=session_id,
        state_hash=state_hash,
        events_in=engine.events_in,
        outputs=engine.outputs,
    )
    journal.append_prepared(stream, _output_ids(stream, ordinal, [ended]))
    if progress is not None:
        progress(n)
    events = engine.rows_in
    return ReplayStats(
        session_id=session_id,
        strategy=strategy_cfg.name,
        events=events,
        messages=engine.events_in,
        seconds=round(seconds, 4),
        events_per_s=round(events / seconds, 1) if seconds else 0.0,
        messages_per_s=round(engine.events_in / seconds, 1) if seconds else 0.0,
        state_hash=state_hash,
        peak_rss_mb=round(peak_rss_mb(), 1),
        decisions=engine.decisions,
        rejected=engine.rejected,
        outputs=engine.outputs,
        fills=engine.venue.fills,
        input_from=lo,
        input_to=hi,
    )


class Divergence(msgspec.Struct):
    """The first place a re-derived session differs from the journal."""

    seq: int
    expected: dict[str, object] | None
    got: dict[str, object] | None
    reason: str


class VerifyResult(msgspec.Struct):
    session_id: str
    ok: bool
    outputs_checked: int
    state_hash: str
    chain_ok: bool
    divergence: Divergence | None = None


def verify_session(journal: Journal, session_id: str) -> VerifyResult:
    """Re-derive every output of a journaled session and compare it with the journal."""
    stream = session_stream(session_id)
    records = list(journal.read(stream))
    if not records:
        raise SessionError(f"no session {session_id!r} in the journal")
    chain = journal.verify(stream)
    first = decode(records[0].payload)
    if not isinstance(first, SessionStarted):
        raise SessionError(
            f"session {session_id}: first event is {kind_of(first)}, not SessionStarted"
        )
    last = decode(records[-1].payload)
    if not isinstance(last, SessionEnded):
        raise SessionError(
            f"session {session_id} has no SessionEnded (it did not finish); cannot verify"
        )
    try:
        config = msgspec.json.decode(first.config_json, type=AppConfig)
    except msgspec.ValidationError as exc:
        raise SessionError(f"session {session_id}: recorded config does not decode: {exc}") from exc
    # The hash is of the recorded text itself: a config field added later (decoded with
    # its default) must not make old sessions unverifiable.
    recorded = hashlib.blake2b(first.config_json.encode(), digest_size=32).hexdigest()
    if recorded != first.config_hash:
        raise SessionError(f"session {session_id}: recorded config does not match its hash")
    engine = build_engine(
        config, build_strategy(config.trading.strategy), first.seed, first.session_id
    )
    expected = records[1:-1]
    late: set[bytes] = set()
    if first.mode == "live":
        # A live session journals the inputs that arrived too late to be applied as
        # LateEvent outputs of its own; the journal sink stored the events themselves
        # with the market data. The re-run skips exactly those (and the LateEvent rows
        # are not outputs the kernel makes).
        kept = []
        for rec in expected:
            ev = decode(rec.payload)
            if isinstance(ev, LateEvent):
                late.add(ev.payload)
            else:
                kept.append(rec)
        expected = kept
    input_to = last.input_to or first.input_to
    idx = 0
    divergence: Divergence | None = None

    def compare(outs: Sequence[Event]) -> bool:
        nonlocal idx, divergence
        for ev in outs:
            if idx >= len(expected):
                divergence = Divergence(
                    seq=records[-1].seq,
                    expected=to_builtins(last),
                    got=to_builtins(ev),
                    reason="re-run made more outputs than the journal has",
                )
                return False
            rec = expected[idx]
            if encode(ev) != rec.payload:
                divergence = Divergence(
                    seq=rec.seq,
                    expected=to_builtins(decode(rec.payload)),
                    got=to_builtins(ev),
                    reason="output differs",
                )
                return False
            idx += 1
        return True

    ok = compare(engine.start())
    if ok:
        dec = decoder().decode
        apply = engine.apply
        for block in journal.iter_payload_blocks(
            first.input_from, input_to, first.exchanges or None, first.symbols or None
        ):
            for (payload,) in block:
                if late and payload in late:
                    continue
                out = apply(dec(payload))
                if out and not compare(out):
                    ok = False
                    break
            if not ok:
                break
    state_hash = engine.state_hash()
    if ok and idx < len(expected):
        ok = False
        rec = expected[idx]
        divergence = Divergence(
            seq=rec.seq,
            expected=to_builtins(decode(rec.payload)),
            got=None,
            reason=f"re-run made {idx} outputs, the journal has {len(expected)}",
        )
    if ok and engine.events_in != last.events_in:
        ok = False
        divergence = Divergence(
            seq=records[-1].seq,
            expected=to_builtins(last),
            got=None,
            reason=f"re-run read {engine.events_in} input events, "
            f"the session read {last.events_in}",
        )
    if ok and state_hash != last.state_hash:
        ok = False
        divergence = Divergence(
            seq=records[-1].seq,
            expected={"state_hash": last.state_hash},
            got={"state_hash": state_hash},
            reason="final state hash differs",
        )
    return VerifyResult(
        session_id=session_id,
        ok=ok and chain.ok,
        outputs_checked=idx,
        state_hash=state_hash,
        chain_ok=chain.ok,
        divergence=divergence
        if divergence is not None or chain.ok
        else Divergence(seq=chain.first_bad_seq, expected=None, got=None, reason=chain.reason),
    )


def list_sessions(journal: Journal) -> list[SessionStarted]:
    out = []
    for info in journal.streams():
        if info.stream.startswith("session."):
            rec = next(iter(journal.read(info.stream, 1, 1)), None)
            if rec is not None:
                ev = decode(rec.payload)
                if isinstance(ev, SessionStarted):
                    out.append(ev)
    return out


__all__ = [
    "JournalError",
    "ReplayStats",
    "SessionError",
    "VerifyResult",
    "list_sessions",
    "run_session",
    "verify_session",
]
