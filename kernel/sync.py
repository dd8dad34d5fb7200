"""Merge several input streams into one deterministic total order.

Each input stream (a venue feed, a news feed, ...) delivers events roughly in
``ts_recv`` order. The :class:`Synchronizer` buffers them and releases them in the
canonical total order once every live stream has moved past them:

* sort key: ``order_key(event)`` (ts_recv ns, priority, exchange, symbol, source seq),
  then the stream name, then the arrival index of the event within its stream. The key
  is unique per pushed event, so the order never depends on how the streams were
  interleaved when pushed.
* stream watermark: the largest ``ts_recv`` (ns) pushed on the stream.
* a stream is *idle* when its watermark is more than ``idle_timeout_ns`` behind the
  largest watermark of all streams; idle streams do not hold back the merge.
* merged watermark: min over non-idle streams of their watermark, minus
  ``allowed_lateness_ns``. Buffered events with ``ts_recv <= merged watermark`` are
  released in sort-key order.
* late: an event whose sort key is smaller than the sort key of the last released
  event (it would have to be inserted into the past). It is not reordered; it is
  emitted at the current position as a :class:`~kernel.events.LateEvent`.

Theorem the tests check: the released non-late events are always sorted by sort key,
so when no event is late the output after :meth:`Synchronizer.flush` is exactly the
pushed events sorted by sort key, whatever the interleaving.

Heartbeats are ordinary events here: they advance their stream's watermark like any
event and are emitted in the output (the engine journals them).
"""

from __future__ import annotations

import heapq

import msgspec

from kernel.events import Event, LateEvent, decode, encode, kind_of, order_key

SortKey = tuple[int, int, str, str, int, str, int]
"""(ts_recv ns, priority, exchange, symbol, source seq, stream, arrival index in stream)."""


class SyncState(msgspec.Struct, frozen=True, array_like=True):
    """Everything a :class:`Synchronizer` holds, for checkpoints (events encoded)."""

    buffer: list[tuple[SortKey, bytes]]
    wms: dict[str, int]
    arrivals: dict[str, int]
    max_wm: int | None
    last_key: SortKey | None


class SyncConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """``allowed_lateness_ns``: how far (ns) the merge waits behind the slowest live stream.

    ``idle_timeout_ns``: a stream more than this far (ns) behind the leading stream is
    idle and no longer holds the merge back.
    """

    allowed_lateness_ns: int = 0
    idle_timeout_ns: int = 5_000_000_000

    def __post_init__(self) -> None:
        if self.allowed_lateness_ns < 0:
            raise ValueError(f"allowed_lateness_ns must be >= 0, got {self.allowed_lateness_ns}")
        if self.idle_timeout_ns < 0:
            raise ValueError(f"idle_timeout_ns must be >= 0, got {self.idle_timeout_ns}")


def sort_key(stream: str, arrival: int, event: Event) -> SortKey:
    """The synchronizer's total order: ``order_key`` + stream name + arrival index."""
    ts, prio, exchange, symbol, seq = order_key(event)
    return (ts, prio, exchange, symbol, seq, stream, arrival)


class Synchronizer:
    """Merges per-stream event sequences into one total order (see the module docstring).

    Cost: O(log n) per buffered event and amortised O(log s) per push for the watermark
    (n buffered events, s streams). Pure: no clock, no I/O.
    """

    __slots__ = (
        "_arrivals",
        "_buffer",
        "_config",
        "_last_key",
        "_max_wm",
        "_wm_heap",
        "_wms",
    )

    def __init__(self, config: SyncConfig | None = None) -> None:
        self._config = config if config is not None else SyncConfig()
        self._buffer: list[tuple[SortKey, Event]] = []
        self._wms: dict[str, int] = {}
        self._arrivals: dict[str, int] = {}
        # Lazy min-heap of (watermark ns, stream). An entry is dead when the stream has
        # moved on (watermark differs) or is idle; idleness never ends without a new
        # watermark (and so a new entry), because the idle threshold only rises.
        self._wm_heap: list[tuple[int, str]] = []
        self._max_wm: int | None = None
        self._last_key: SortKey | None = None

    @property
    def config(self) -> SyncConfig:
        return self._config

    @property
    def pending(self) -> int:
        """Number of events buffered, not yet released."""
        return len(self._buffer)

    @property
    def streams(self) -> tuple[str, ...]:
        """The streams seen so far, sorted by name."""
        return tuple(sorted(self._wms))

    def watermark(self, stream: str) -> int | None:
        """The largest ``ts_recv`` (ns) pushed on ``stream``; None if none was pushed."""
        return self._wms.get(stream)

    def is_idle(self, stream: str) -> bool:
        """True when ``stream`` is more than ``idle_timeout_ns`` behind the leading stream."""
        wm = self._wms.get(stream)
        if wm is None or self._max_wm is None:
            return False
        return self._max_wm - wm > self._config.idle_timeout_ns

    @property
    def merged_watermark(self) -> int | None:
        """Min watermark (ns) over non-idle streams minus ``allowed_lateness_ns``.

        None before the first push. It can go down when a new stream appears or an idle
        one wakes up; released output never goes back (late events are flagged instead).
        """
        low = self._min_live_watermark()
        return None if low is None else low - self._config.allowed_lateness_ns

    @property
    def last_released(self) -> SortKey | None:
        """Sort key of the last event released (None before any release)."""
        return self._last_key

    def push(self, stream: str, event: Event) -> list[Event]:
        """Take one event from ``stream``; return what is now released, in order.

        A late event comes back first, wrapped in a LateEvent; nothing it carried is
        buffered. Heartbeats advance ``stream``'s watermark (the ``stream`` argument, not
        the Heartbeat's own field) and are released like any event.
        """
        arrival = self._arrivals.get(stream, 0)
        self._arrivals[stream] = arrival + 1
        key = sort_key(stream, arrival, event)
        self._advance(stream, event.ts_recv)
        out: list[Event] = []
        last = self._last_key
        if last is not None and key < last:
            merged = self.merged_watermark
            assert merged is not None  # a stream was just advanced
            out.append(
                LateEvent(
                    ts_event=event.ts_event,
                    ts_recv=event.ts_recv,
                    stream=stream,
                    kind=kind_of(event),
                    lateness_ns=last[0] - event.ts_recv,
                    watermark=merged,
                    payload=encode(event),
                )
            )
        else:
            heapq.heappush(self._buffer, (key, event))
        self._release(out)
        return out

    def flush(self) -> list[Event]:
        """Release everything buffered, in order (end of input). Watermarks are kept."""
        out: list[Event] = []
        buffer = self._buffer
        while buffer:
            key, event = heapq.heappop(buffer)
            self._last_key = key
            out.append(event)
        return out

    def snapshot(self) -> bytes:
        """The whole state as bytes; :meth:`restore` on a synchronizer with the same
        config continues exactly where this one was."""
        state = SyncState(
            buffer=sorted((key, encode(ev)) for key, ev in self._buffer),
            wms=dict(sorted(self._wms.items())),
            arrivals=dict(sorted(self._arrivals.items())),
            max_wm=self._max_wm,
            last_key=self._last_key,
        )
        return msgspec.msgpack.encode(state)

    def restore(self, snapshot: bytes) -> None:
        st = msgspec.msgpack.decode(snapshot, type=SyncState)
        self._buffer = [(tuple(key), decode(raw)) for key, raw in st.buffer]  # type: ignore[misc]
        heapq.heapify(self._buffer)
        self._wms = dict(st.wms)
        self._arrivals = dict(st.arrivals)
        self._wm_heap = [(wm, s) for s, wm in self._wms.items()]
        heapq.heapify(self._wm_heap)
        self._max_wm = st.max_wm
        self._last_key = tuple(st.last_key) if st.last_key is not None else None  # type: ignore[assignment]

    # -----------------------------------------------------------------------------------

    def _advance(self, stream: str, ts: int) -> None:
        old = self._wms.get(stream)
        if old is not None and ts <= old:
            return
        self._wms[stream] = ts
        if self._max_wm is None or ts > self._max_wm:
            self._max_wm = ts
        heapq.heappush(self._wm_heap, (ts, stream))
        if len(self._wm_heap) > 2 * len(self._wms) + 16:
            # Drop dead entries that sit below a live minimum (amortised O(1) per push).
            self._wm_heap = [(wm, s) for s, wm in self._wms.items()]
            heapq.heapify(self._wm_heap)

    def _min_live_watermark(self) -> int | None:
        if self._max_wm is None:
            return None
        threshold = self._max_wm - self._config.idle_timeout_ns
        heap = self._wm_heap
        while heap:
            wm, stream = heap[0]
            if wm >= threshold and self._wms[stream] == wm:
                return wm
            heapq.heappop(heap)
        raise AssertionError("the leading stream is never idle")  # pragma: no cover

    def _release(self, out: list[Event]) -> None:
        merged = self.merged_watermark
        if merged is None:
            return
        buffer = self._buffer
        while buffer and buffer[0][0][0] <= merged:
            key, event = heapq.heappop(buffer)
            self._last_key = key
            out.append(event)
