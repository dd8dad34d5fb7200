"""The journal interface: an append-only, hash-chained, gap-free log of events per stream.

Every backend (memory, SQLite, PostgreSQL) implements :class:`Journal` and passes the one
contract suite in ``tests/test_journal_contract.py``.

Streams
    ``md.<EXCHANGE>.<SYMBOL>`` holds one instrument's market data (book, trades, funding);
    ``session.<id>`` holds one kernel session's inputs summary and every output.
Envelope
    ``seq`` is gap-free per stream starting at 1 and assigned on append; ``prev_hash`` is
    the previous row's ``hash`` in the same stream (32 zero bytes for seq 1);
    ``hash = chain_hash(prev_hash, event_id, payload)``.
Idempotence
    ``event_id`` is unique across the journal: appending an event whose id is already
    there adds nothing and returns the seq it already has. Ids start with the event's
    time (see :func:`kernel.events.event_id`) so new ids land at the end of the index.
Canonical order (``read_range``)
    ``(ts_recv, priority, exchange, symbol, src_seq, stream, seq)``: the order in which the
    kernel consumes market data (see :func:`kernel.events.order_key`).
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Self

import msgspec

from kernel.events import Event, MarketEvent, encode, event_id, kind_of

GENESIS_HASH = bytes(32)


def chain_hash(prev_hash: bytes, event_id: bytes, payload: bytes) -> bytes:
    """blake2b-256 over prev_hash || event_id || payload (each length-prefixed)."""
    h = hashlib.blake2b(digest_size=32)
    h.update(prev_hash)
    h.update(len(event_id).to_bytes(1, "little"))
    h.update(event_id)
    h.update(payload)
    return h.digest()


def market_stream(exchange: str, symbol: str) -> str:
    return f"md.{exchange}.{symbol}"


def session_stream(session_id: str) -> str:
    return f"session.{session_id}"


class JournalError(RuntimeError):
    """The journal cannot do what was asked (bad DSN, schema mismatch, closed, ...)."""


class JournalRecord(msgspec.Struct, frozen=True):
    """One stored row: the envelope plus the encoded event."""

    stream: str
    seq: int
    event_id: bytes
    ts_event: int
    ts_recv: int
    priority: int
    kind: str
    exchange: str
    symbol: str
    src_seq: int
    payload: bytes
    prev_hash: bytes
    hash: bytes


class PreparedEvent(msgspec.Struct, frozen=True):
    """An event encoded once, with its id and ordering columns, ready to append."""

    event_id: bytes
    ts_event: int
    ts_recv: int
    priority: int
    kind: str
    exchange: str
    symbol: str
    src_seq: int
    payload: bytes


def prepare(event: Event, eid: bytes | None = None) -> PreparedEvent:
    """Encode ``event`` and compute its columns; ``eid`` overrides the default id."""
    if isinstance(event, MarketEvent):
        exchange, symbol, src_seq = event.exchange, event.symbol, event.seq
    else:
        exchange, symbol, src_seq = "", "", 0
    return PreparedEvent(
        event_id=eid if eid is not None else event_id(event),
        ts_event=event.ts_event,
        ts_recv=event.ts_recv,
        priority=event.PRIORITY,
        kind=kind_of(event),
        exchange=exchange,
        symbol=symbol,
        src_seq=src_seq,
        payload=encode(event),
    )


class StreamInfo(msgspec.Struct, frozen=True):
    stream: str
    count: int
    first_ts: int
    last_ts: int
    last_seq: int


class VerifyReport(msgspec.Struct, frozen=True):
    """Result of :meth:`Journal.verify`. ``first_bad_seq`` is 0 when ``ok``."""

    stream: str
    ok: bool
    rows: int
    first_bad_seq: int = 0
    reason: str = ""


class Journal(ABC):
    """Backend-independent journal. Not thread-safe; one writer per stream."""

    @abstractmethod
    def append_prepared(self, stream: str, events: Sequence[PreparedEvent]) -> list[int]:
        """Append in one transaction (all or nothing); returns one seq per input event.

        Events whose ``event_id`` is already in the journal (or earlier in the same
        batch) are not stored again; their existing seq is returned.
        """

    def append(
        self, stream: str, events: Iterable[Event], event_ids: Sequence[bytes] | None = None
    ) -> list[int]:
        """Encode and append ``events`` to ``stream`` in one transaction."""
        evs = list(events)
        if event_ids is not None and len(event_ids) != len(evs):
            raise JournalError("event_ids must have one id per event")
        prepared = [
            prepare(ev, None if event_ids is None else event_ids[i]) for i, ev in enumerate(evs)
        ]
        return self.append_prepared(stream, prepared)

    @abstractmethod
    def read(
        self,
        stream: str,
        from_seq: int = 1,
        to_seq: int | None = None,
        from_ts: int | None = None,
        to_ts: int | None = None,
    ) -> Iterator[JournalRecord]:
        """Rows of one stream in seq order; seq bounds and ts_recv bounds are inclusive."""

    @abstractmethod
    def read_range(
        self,
        start_ns: int | None = None,
        end_ns: int | None = None,
        exchanges: Sequence[str] | None = None,
        symbols: Sequence[str] | None = None,
    ) -> Iterator[JournalRecord]:
        """Market rows (streams ``md.*``) with ``start_ns <= ts_recv < end_ns``, in the
        canonical order, optionally restricted to some exchanges and symbols."""

    def iter_payloads(
        self,
        start_ns: int | None = None,
        end_ns: int | None = None,
        exchanges: Sequence[str] | None = None,
        symbols: Sequence[str] | None = None,
    ) -> Iterator[bytes]:
        """Like :meth:`read_range` but only the payloads: the replay hot path."""
        for rec in self.read_range(start_ns, end_ns, exchanges, symbols):
            yield rec.payload

    @abstractmethod
    def verify(self, stream: str) -> VerifyReport:
        """Re-hash every row of ``stream``: seqs 1..n without gap, prev_hash links, each
        hash matching its content, and each payload decoding to an event."""

    @abstractmethod
    def streams(self) -> list[StreamInfo]:
        """Every stream, sorted by name."""

    @abstractmethod
    def transaction(self) -> AbstractContextManager[None]:
        """A block whose appends are committed together at its end, or not at all if it
        raises (a long import is all-or-nothing). Nested blocks join the outermost."""

    @abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
