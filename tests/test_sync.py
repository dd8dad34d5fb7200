"""Tests for kernel.sync: exact hand-made merges and hypothesis properties."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kernel.events import (
    BookDelta,
    Event,
    Heartbeat,
    LateEvent,
    Trade,
    decode,
    encode,
    order_key,
)
from kernel.sync import SortKey, SyncConfig, Synchronizer, sort_key

BIG_IDLE = 10**18


def bd(ts: int, exchange: str = "binance", symbol: str = "BTC-USDT", seq: int = 0) -> BookDelta:
    return BookDelta(ts - 1, ts, exchange, symbol, seq, bids=((100, 1),), asks=())


def tr(ts: int, exchange: str = "binance", symbol: str = "BTC-USDT", seq: int = 0) -> Trade:
    return Trade(ts - 1, ts, exchange, symbol, seq, f"t{seq}", 100, 1, "buy")


def hb(ts: int, stream: str) -> Heartbeat:
    return Heartbeat(ts, ts, stream=stream)


def late(event: Event, stream: str, lateness_ns: int, watermark: int) -> LateEvent:
    kind = type(event).__name__
    return LateEvent(
        ts_event=event.ts_event,
        ts_recv=event.ts_recv,
        stream=stream,
        kind=kind,
        lateness_ns=lateness_ns,
        watermark=watermark,
        payload=encode(event),
    )


# ---------------------------------------------------------------------------------------
# Hand-made examples with exact outputs
# ---------------------------------------------------------------------------------------


def test_config_defaults_and_validation() -> None:
    cfg = SyncConfig()
    assert cfg.allowed_lateness_ns == 0
    assert cfg.idle_timeout_ns == 5_000_000_000
    with pytest.raises(ValueError):
        SyncConfig(allowed_lateness_ns=-1)
    with pytest.raises(ValueError):
        SyncConfig(idle_timeout_ns=-1)


def test_empty_synchronizer() -> None:
    sync = Synchronizer(SyncConfig())
    assert sync.pending == 0
    assert sync.merged_watermark is None
    assert sync.watermark("binance") is None
    assert sync.flush() == []


def test_two_streams_exact_order_with_ties() -> None:
    sync = Synchronizer(SyncConfig(allowed_lateness_ns=0, idle_timeout_ns=BIG_IDLE))
    hb_b, hb_c = hb(0, "binance"), hb(0, "coinbase")
    b1 = bd(10, "binance", "BTC-USDT", 1)
    b2 = bd(20, "binance", "ETH-USDT", 2)
    b3 = bd(20, "binance", "BTC-USDT", 3)
    c1 = tr(20, "coinbase", "BTC-USD", 1)
    c2 = bd(30, "coinbase", "BTC-USD", 2)
    b4 = bd(30, "binance", "BTC-USDT", 4)
    b5 = tr(40, "binance", "BTC-USDT", 5)

    assert sync.push("binance", hb_b) == [hb_b]  # the only stream: released at once
    assert sync.push("coinbase", hb_c) == [hb_c]  # same order key, later stream name
    assert sync.push("binance", b1) == []  # coinbase is still at 0
    assert sync.push("binance", b2) == []
    assert sync.push("binance", b3) == []
    assert sync.pending == 3
    assert sync.merged_watermark == 0
    # coinbase reaches 20: the Trade (priority 2) goes before the BookDeltas (3) at 20,
    # and BTC-USDT before ETH-USDT although it arrived later.
    assert sync.push("coinbase", c1) == [b1, c1, b3, b2]
    assert sync.merged_watermark == 20
    assert sync.push("coinbase", c2) == []
    # Equal ts and priority: binance before coinbase although coinbase arrived first.
    assert sync.push("binance", b4) == [b4, c2]
    assert sync.push("binance", b5) == []
    assert sync.pending == 1
    assert sync.watermark("binance") == 40
    assert sync.watermark("coinbase") == 30
    assert sync.flush() == [b5]
    assert sync.pending == 0

    # Same per-stream sequences pushed stream by stream (with a lateness budget so that
    # nothing is released early) give the same total order.
    expected = [hb_b, hb_c, b1, c1, b3, b2, b4, c2, b5]
    for order in (("binance", "coinbase"), ("coinbase", "binance")):
        other = Synchronizer(SyncConfig(allowed_lateness_ns=1_000, idle_timeout_ns=BIG_IDLE))
        per_stream = {"binance": [hb_b, b1, b2, b3, b4, b5], "coinbase": [hb_c, c1, c2]}
        out: list[Event] = []
        for stream in order:
            for ev in per_stream[stream]:
                out += other.push(stream, ev)
        assert out == []
        assert other.flush() == expected


def test_idle_stream_does_not_block() -> None:
    sync = Synchronizer(SyncConfig(allowed_lateness_ns=0, idle_timeout_ns=100))
    a0, b0 = bd(0, "binance"), bd(0, "coinbase")
    a50, a100, a101 = bd(50), bd(100), bd(101)
    assert sync.push("a", a0) == [a0]
    assert sync.push("b", b0) == [b0]
    assert sync.push("a", a50) == []
    assert sync.push("a", a100) == []  # exactly idle_timeout behind: still live
    assert not sync.is_idle("b")
    assert sync.merged_watermark == 0
    assert sync.push("a", a101) == [a50, a100, a101]  # b is now > 100 ns behind: idle
    assert sync.is_idle("b")
    assert sync.merged_watermark == 101
    # b wakes up with data from its past: flagged late, not reordered.
    b60 = bd(60, "coinbase")
    assert sync.push("b", b60) == [late(b60, "b", lateness_ns=41, watermark=60)]
    assert not sync.is_idle("b")
    assert sync.merged_watermark == 60  # b holds the merge back again
    a110 = bd(110)
    assert sync.push("a", a110) == []
    assert sync.push("b", hb(110, "b")) == [hb(110, "b"), a110]


def test_heartbeat_advances_watermark_and_is_emitted() -> None:
    sync = Synchronizer(SyncConfig(allowed_lateness_ns=0, idle_timeout_ns=BIG_IDLE))
    assert sync.push("a", hb(0, "a")) == [hb(0, "a")]
    assert sync.push("b", hb(0, "b")) == [hb(0, "b")]
    a10, a20 = bd(10), bd(20)
    assert sync.push("a", a10) == []
    assert sync.push("a", a20) == []
    assert sync.push("b", hb(15, "b")) == [a10, hb(15, "b")]
    assert sync.watermark("b") == 15
    assert sync.merged_watermark == 15
    assert sync.pending == 1
    assert sync.push("b", hb(25, "b")) == [a20]
    assert sync.pending == 1
    assert sync.flush() == [hb(25, "b")]


def test_allowed_lateness() -> None:
    sync = Synchronizer(SyncConfig(allowed_lateness_ns=10, idle_timeout_ns=BIG_IDLE))
    a100, b100 = bd(100, "binance"), bd(100, "coinbase")
    assert sync.push("a", a100) == []
    assert sync.push("b", b100) == []
    assert sync.merged_watermark == 90
    a120 = bd(120, "binance")
    assert sync.push("a", a120) == []
    b95 = bd(95, "coinbase")  # 5 ns behind its own stream, within the budget
    assert sync.push("b", b95) == []
    b130 = bd(130, "coinbase")
    assert sync.push("b", b130) == [b95, a100, b100]
    assert sync.merged_watermark == 110
    b105 = bd(105, "coinbase")  # after the last released (100): still in order
    assert sync.push("b", b105) == [b105]
    a85 = bd(85, "binance")  # 35 ns behind its stream, 20 ns before the last released
    assert sync.push("a", a85) == [late(a85, "a", lateness_ns=20, watermark=110)]
    assert sync.watermark("a") == 120  # a late event never lowers a watermark
    assert sync.pending == 2
    assert sync.flush() == [a120, b130]


def test_late_at_equal_timestamp() -> None:
    """Late means: sort key below the last released one, including at equal ts_recv."""
    sync = Synchronizer(SyncConfig(allowed_lateness_ns=0, idle_timeout_ns=BIG_IDLE))
    assert sync.push("b", hb(0, "b")) == [hb(0, "b")]
    # Same order key, but stream "a" sorts before the released "b": late by 0 ns.
    assert sync.push("a", hb(0, "a")) == [late(hb(0, "a"), "a", lateness_ns=0, watermark=0)]

    d10 = bd(10)
    assert sync.push("a", d10) == []  # b still at 0
    assert sync.push("b", hb(10, "b")) == [hb(10, "b"), d10]
    # A Trade (priority 2) at 10 after a BookDelta (3) at 10 was released: late.
    t10 = tr(10)
    assert sync.push("a", t10) == [late(t10, "a", lateness_ns=0, watermark=10)]
    # The same order key again from the same stream: arrival order, not late.
    assert sync.push("a", d10) == [d10]
    assert sync.last_released == (*order_key(d10), "a", 3)  # 4th push on "a"


def test_lateness_of_one_ns_holds_equal_timestamps() -> None:
    """With allowed_lateness_ns=1 events at the watermark wait, so ties reorder safely."""
    sync = Synchronizer(SyncConfig(allowed_lateness_ns=1, idle_timeout_ns=BIG_IDLE))
    d10, t10 = bd(10), tr(10)
    assert sync.push("a", d10) == []
    assert sync.push("a", t10) == []
    assert sync.push("a", hb(11, "a")) == [t10, d10]
    assert sync.flush() == [hb(11, "a")]


def test_push_after_flush_continues() -> None:
    sync = Synchronizer(SyncConfig(allowed_lateness_ns=5, idle_timeout_ns=BIG_IDLE))
    a10 = bd(10)
    assert sync.push("a", a10) == []
    assert sync.flush() == [a10]
    a8, a20 = bd(8), bd(20)
    assert sync.push("a", a8) == [late(a8, "a", lateness_ns=2, watermark=5)]
    assert sync.push("a", a20) == []
    assert sync.flush() == [a20]


def test_many_streams_watermark_heap_compaction() -> None:
    """Long runs keep the watermark heap consistent with a direct recomputation."""
    cfg = SyncConfig(allowed_lateness_ns=3, idle_timeout_ns=50)
    sync = Synchronizer(cfg)
    streams = [f"s{i}" for i in range(5)]
    for t in range(1, 400):
        stream = streams[(t * 7) % 5] if t % 11 else streams[0]
        sync.push(stream, hb(t, stream))
        wms = {s: sync.watermark(s) for s in streams if sync.watermark(s) is not None}
        top = max(v for v in wms.values() if v is not None)
        live = [v for v in wms.values() if v is not None and top - v <= cfg.idle_timeout_ns]
        assert sync.merged_watermark == min(live) - cfg.allowed_lateness_ns


# ---------------------------------------------------------------------------------------
# Hypothesis properties
# ---------------------------------------------------------------------------------------

STREAMS = ("a", "b", "c")


@st.composite
def events(draw: st.DrawFn, stream: str, max_ts: int) -> Event:
    ts = draw(st.integers(0, max_ts))
    kind = draw(st.sampled_from(("bd", "tr", "hb")))
    if kind == "hb":
        return hb(ts, stream)
    exchange = draw(st.sampled_from(("binance", "coinbase")))
    symbol = draw(st.sampled_from(("BTC", "ETH")))
    seq = draw(st.integers(0, 2))
    return bd(ts, exchange, symbol, seq) if kind == "bd" else tr(ts, exchange, symbol, seq)


Pushes = list[tuple[str, Event]]


@st.composite
def per_stream(draw: st.DrawFn, *, ordered: bool, max_ts: int = 40) -> dict[str, list[Event]]:
    """Per-stream sequences; ts_event is made a unique id (it is not in the order key)."""
    n = draw(st.integers(1, len(STREAMS)))
    seqs: dict[str, list[Event]] = {}
    uid = 0
    for stream in STREAMS[:n]:
        evs = draw(st.lists(events(stream, max_ts), max_size=12))
        if ordered:
            evs.sort(key=lambda e: e.ts_recv)
        tagged: list[Event] = []
        for ev in evs:
            uid += 1
            tagged.append(_with_uid(ev, uid))
        seqs[stream] = tagged
    return seqs


def _with_uid(ev: Event, uid: int) -> Event:
    if isinstance(ev, Heartbeat):
        return Heartbeat(uid, ev.ts_recv, stream=ev.stream)
    if isinstance(ev, Trade):
        return Trade(uid, ev.ts_recv, ev.exchange, ev.symbol, ev.seq, ev.trade_id, 100, 1, "buy")
    assert isinstance(ev, BookDelta)
    return BookDelta(uid, ev.ts_recv, ev.exchange, ev.symbol, ev.seq, ev.bids, ev.asks)


def interleave(seqs: dict[str, list[Event]], order: list[str]) -> Pushes:
    """Push order: ``order`` is a permutation of the stream labels, one per event."""
    cursors = dict.fromkeys(seqs, 0)
    pushes: Pushes = []
    for stream in order:
        pushes.append((stream, seqs[stream][cursors[stream]]))
        cursors[stream] += 1
    return pushes


def labels(seqs: dict[str, list[Event]]) -> list[str]:
    return [s for s, evs in seqs.items() for _ in evs]


def expected_order(seqs: dict[str, list[Event]]) -> list[Event]:
    keyed = [(sort_key(s, i, ev), ev) for s, evs in seqs.items() for i, ev in enumerate(evs)]
    keyed.sort(key=lambda kv: kv[0])
    return [ev for _, ev in keyed]


def run(cfg: SyncConfig, pushes: Pushes) -> tuple[list[list[Event]], list[Event]]:
    sync = Synchronizer(cfg)
    steps = [sync.push(stream, ev) for stream, ev in pushes]
    return steps, sync.flush()


def flat(steps: list[list[Event]], tail: list[Event]) -> list[Event]:
    return [ev for step in steps for ev in step] + tail


@st.composite
def ordered_case(draw: st.DrawFn) -> tuple[dict[str, list[Event]], list[str], list[str]]:
    seqs = draw(per_stream(ordered=True))
    order1 = draw(st.permutations(labels(seqs)))
    order2 = draw(st.permutations(labels(seqs)))
    return seqs, order1, order2


@settings(max_examples=200, deadline=None)
@given(case=ordered_case(), idle=st.integers(0, 60))
def test_property_order_independent_of_interleaving(
    case: tuple[dict[str, list[Event]], list[str], list[str]], idle: int
) -> None:
    """(1) With lateness > every ts, the flushed output is the sorted multiset."""
    seqs, order1, order2 = case
    cfg = SyncConfig(allowed_lateness_ns=10**6, idle_timeout_ns=idle)
    want = expected_order(seqs)
    out1 = flat(*run(cfg, interleave(seqs, order1)))
    out2 = flat(*run(cfg, interleave(seqs, order2)))
    by_stream = flat(*run(cfg, interleave(seqs, labels(seqs))))
    assert out1 == want
    assert out2 == want
    assert by_stream == want


@st.composite
def unordered_case(draw: st.DrawFn) -> tuple[dict[str, list[Event]], list[str]]:
    seqs = draw(per_stream(ordered=draw(st.booleans())))
    return seqs, draw(st.permutations(labels(seqs)))


@settings(max_examples=300, deadline=None)
@given(case=unordered_case(), idle=st.integers(0, 60), lateness=st.sampled_from((0, 0, 3)))
def test_property_nothing_lost_and_sorted(
    case: tuple[dict[str, list[Event]], list[str]], idle: int, lateness: int
) -> None:
    """(2) Every event comes out exactly once, as itself or inside a LateEvent; the
    non-late output is sorted; each LateEvent's fields are exact."""
    seqs, order = case
    cfg = SyncConfig(allowed_lateness_ns=lateness, idle_timeout_ns=idle)
    pushes = interleave(seqs, order)
    out = flat(*run(cfg, pushes))

    origin: dict[bytes, SortKey] = {}
    arrivals: Counter[str] = Counter()
    for stream, ev in pushes:
        origin[encode(ev)] = sort_key(stream, arrivals[stream], ev)
        arrivals[stream] += 1

    seen: Counter[bytes] = Counter()
    last: SortKey | None = None
    any_late = False
    for ev in out:
        if isinstance(ev, LateEvent):
            any_late = True
            inner = decode(ev.payload)
            key = origin[ev.payload]
            assert last is not None and key < last
            assert ev.stream == key[5]
            assert ev.kind == type(inner).__name__
            assert (ev.ts_event, ev.ts_recv) == (inner.ts_event, inner.ts_recv)
            assert ev.lateness_ns == last[0] - inner.ts_recv >= 0
            seen[ev.payload] += 1
        else:
            key = origin[encode(ev)]
            assert last is None or key > last  # strictly increasing sort key
            assert last is None or order_key(ev) >= last[:5]
            last = key
            seen[encode(ev)] += 1
    assert seen == Counter(encode(ev) for _, ev in pushes)
    if not any_late:
        assert out == expected_order(seqs)


class ReferenceSync:
    """Naive restatement of the spec (O(n) per push) to cross-check the heap version."""

    def __init__(self, cfg: SyncConfig) -> None:
        self.cfg = cfg
        self.buffer: list[tuple[SortKey, Event]] = []
        self.wms: dict[str, int] = {}
        self.arrivals: Counter[str] = Counter()
        self.last: SortKey | None = None

    def merged(self) -> int | None:
        if not self.wms:
            return None
        top = max(self.wms.values())
        live = [w for w in self.wms.values() if top - w <= self.cfg.idle_timeout_ns]
        return min(live) - self.cfg.allowed_lateness_ns

    def push(self, stream: str, ev: Event) -> list[Event]:
        key = sort_key(stream, self.arrivals[stream], ev)
        self.arrivals[stream] += 1
        self.wms[stream] = max(self.wms.get(stream, ev.ts_recv), ev.ts_recv)
        merged = self.merged()
        assert merged is not None
        out: list[Event] = []
        if self.last is not None and key < self.last:
            out.append(late(ev, stream, self.last[0] - ev.ts_recv, merged))
        else:
            self.buffer.append((key, ev))
        ready = sorted((kv for kv in self.buffer if kv[0][0] <= merged), key=lambda kv: kv[0])
        self.buffer = [kv for kv in self.buffer if kv[0][0] > merged]
        for key, ev in ready:
            self.last = key
            out.append(ev)
        return out


@settings(max_examples=300, deadline=None)
@given(
    case=unordered_case(),
    idle=st.integers(0, 60),
    lateness=st.integers(0, 10),
)
def test_property_deterministic_and_matches_reference(
    case: tuple[dict[str, list[Event]], list[str]], idle: int, lateness: int
) -> None:
    """(3) Same pushes give the same outputs, step by step, as a naive reference."""
    seqs, order = case
    cfg = SyncConfig(allowed_lateness_ns=lateness, idle_timeout_ns=idle)
    pushes = interleave(seqs, order)
    first = run(cfg, pushes)
    second = run(cfg, pushes)
    assert first == second
    assert [encode(e) for e in flat(*first)] == [encode(e) for e in flat(*second)]

    sync, ref = Synchronizer(cfg), ReferenceSync(cfg)
    for stream, ev in pushes:
        assert sync.push(stream, ev) == ref.push(stream, ev)
        assert sync.pending == len(ref.buffer)
        assert sync.merged_watermark == ref.merged()
        assert sync.watermark(stream) == ref.wms[stream]
    assert sync.flush() == [ev for _, ev in sorted(ref.buffer, key=lambda kv: kv[0])]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["a", "b", "c"]), st.integers(0, 50)), min_size=1, max_size=40
    ),
    st.integers(0, 40),
    st.integers(0, 20),
)
def test_snapshot_restore_continues_exactly(
    pushes: list[tuple[str, int]], cut: int, lateness: int
) -> None:
    """A synchronizer restored from a snapshot taken after any prefix of the pushes
    releases exactly what the uninterrupted one releases (the live kernel's checkpoints)."""
    cfg = SyncConfig(allowed_lateness_ns=lateness, idle_timeout_ns=30)
    events = [(s, tr(ts, seq=i + 1)) for i, (s, ts) in enumerate(pushes)]
    whole = Synchronizer(cfg)
    expected = [e for s, ev in events for e in whole.push(s, ev)] + whole.flush()
    first = Synchronizer(cfg)
    cut = min(cut, len(events))
    got = [e for s, ev in events[:cut] for e in first.push(s, ev)]
    resumed = Synchronizer(cfg)
    resumed.restore(first.snapshot())
    assert resumed.snapshot() == first.snapshot()
    got += [e for s, ev in events[cut:] for e in resumed.push(s, ev)] + resumed.flush()
    assert got == expected
