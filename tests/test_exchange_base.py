"""The adapter contract (adapters/exchanges/base.py) on a toy venue against the fake exchange.

The toy venue speaks a minimal protocol: ``{"s": SYM, "U": first, "u": last, "b": [...],
"a": [...]}`` diffs with Binance-spot bridging, and a REST snapshot at ``/depth``.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, ClassVar

import msgspec
import pytest

from adapters.exchanges.base import (
    PRIORITY_POLL,
    PRIORITY_RESYNC,
    PRIORITY_SNAPSHOT,
    Backoff,
    BufferedBook,
    Diff,
    ExchangeInterface,
    FeedConfig,
    MalformedMessage,
    Priority,
    RateLimiter,
    SequenceGap,
    TokenBucket,
    decimals_of,
    instrument_from_increments,
    normalise_wire_symbol,
    parse_levels,
    split_wire_symbol,
)
from adapters.exchanges.fake import FakeExchange, HttpResponse, WsScript
from kernel.events import BookDelta, BookSnapshot, Connectivity, Event, Trade
from kernel.instruments import Instrument

# ---------------------------------------------------------------------------------------
# Pure pieces
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("wire", "expected"),
    [
        ("BTCUSDT", "BTC-USDT"),
        ("btcusdt", "BTC-USDT"),
        ("BTC-USD", "BTC-USD"),
        ("XBT/USD", "BTC-USD"),
        ("XDG/EUR", "DOGE-EUR"),
        ("ETHBTC", "ETH-BTC"),
        ("BTC_USDT", "BTC-USDT"),
        ("SOLFDUSD", "SOL-FDUSD"),
    ],
)
def test_normalise_wire_symbol(wire: str, expected: str) -> None:
    assert normalise_wire_symbol(wire) == expected


def test_perp_normalisation_and_unsplittable_symbol() -> None:
    assert normalise_wire_symbol("BTCUSDT", "perp") == "BTC-USDT-PERP"
    with pytest.raises(ValueError, match="no known quote asset"):
        split_wire_symbol("FOOBAR")


def test_decimals_and_instrument_from_increments() -> None:
    assert decimals_of("0.01000000") == 2
    assert decimals_of("1.00000000") == 0
    assert decimals_of("1e-5") == 5
    inst = instrument_from_increments(
        "BINANCE",
        base="XBT",
        quote="USDT",
        kind="spot",
        tick="0.01000000",
        lot="0.00001000",
        wire_symbol="BTCUSDT",
        min_notional="5.0",
    )
    assert (inst.symbol, inst.price_decimals, inst.size_decimals) == ("BTC-USDT", 2, 5)
    assert (inst.tick_size, inst.lot_size, inst.min_notional) == (1, 1, 500_000_000)
    assert parse_levels(inst, [["65000.10000000", "0.00120000", "x"]]) == ((6_500_010, 120),)
    with pytest.raises(MalformedMessage, match="bad level"):
        parse_levels(inst, [["65000.123", "1"]])


def test_backoff_is_exponential_with_full_jitter_and_resets() -> None:
    b = Backoff(base_s=1.0, cap_s=8.0, seed=7)
    delays = [b.next_delay() for _ in range(6)]
    ceilings = [1, 2, 4, 8, 8, 8]
    assert all(0 <= d <= c for d, c in zip(delays, ceilings, strict=True))
    again = Backoff(base_s=1.0, cap_s=8.0, seed=7)
    assert [again.next_delay() for _ in range(6)] == delays  # seeded: reproducible
    b.reset()
    assert b.attempt == 0


def test_token_bucket_refills_at_its_rate() -> None:
    now = [0.0]
    bucket = TokenBucket(10, 2.0, clock=lambda: now[0])
    assert bucket.try_take(8) == 0.0
    assert bucket.try_take(4) == pytest.approx(1.0)  # 2 left, 2 missing at 2/s
    now[0] = 1.0
    assert bucket.try_take(4) == 0.0
    with pytest.raises(ValueError, match="exceeds the bucket capacity"):
        bucket.try_take(11)


def test_rate_limiter_serves_resync_first_and_honours_retry_after() -> None:
    now = [0.0]
    slept: list[float] = []

    async def fake_sleep(s: float) -> None:
        slept.append(s)
        now[0] += s

    async def main() -> list[tuple[str, int]]:
        lim = RateLimiter(2, 1.0, weights={"depth": 2.0}, clock=lambda: now[0], sleep=fake_sleep)
        lim.penalise(5.0)  # a 429 with Retry-After: 5
        tasks = [
            asyncio.ensure_future(lim.acquire("poll", PRIORITY_POLL)),
            asyncio.ensure_future(lim.acquire("depth", PRIORITY_SNAPSHOT)),
            asyncio.ensure_future(lim.acquire("depth", PRIORITY_RESYNC)),
        ]
        await asyncio.gather(*tasks)
        return lim.granted

    granted = asyncio.run(main())
    assert granted == [("depth", PRIORITY_RESYNC), ("depth", PRIORITY_SNAPSHOT), ("poll", 2)]
    assert slept[0] == pytest.approx(5.0)  # blocked for the whole Retry-After first
    # depth (2) empties the bucket; the next depth waits 2 s, the poll 1 s more.
    assert now[0] == pytest.approx(5.0 + 2.0 + 1.0)


# ---------------------------------------------------------------------------------------
# Buffered sync with a Binance-spot-like rule
# ---------------------------------------------------------------------------------------


class SpotRule:
    def stale(self, snapshot_id: int, diff: Diff) -> bool:
        return diff.last <= snapshot_id

    def bridges(self, snapshot_id: int, diff: Diff) -> bool:
        return diff.first <= snapshot_id + 1 <= diff.last

    def follows(self, prev: Diff, diff: Diff) -> bool:
        return diff.first == prev.last + 1

    def trim(self, snapshot_id: int, diff: Diff) -> Diff:
        return diff


def _inst() -> Instrument:
    return instrument_from_increments(
        "TOY", base="BTC", quote="USD", kind="spot", tick="0.1", lot="0.001", wire_symbol="BTCUSD"
    )


def _diff(first: int, last: int, bids: Any = (), asks: Any = ()) -> Diff:
    return Diff(first, last, -1, tuple(bids), tuple(asks), first * 1000, first * 1000 + 1)


def test_buffered_book_bridges_snapshot_and_detects_gaps() -> None:
    bb = BufferedBook(_inst(), SpotRule())
    assert bb.on_diff(_diff(8, 9, bids=[(1000, 5)])) == []  # buffered, stale later
    assert bb.on_diff(_diff(10, 12, asks=[(1010, 3)])) == []  # bridges snapshot 10
    out = bb.on_snapshot(10, ((1000, 1),), ((1020, 2),), 5, 6)
    assert [type(e) for e in out] == [BookSnapshot, BookDelta]
    assert isinstance(out[1], BookDelta) and out[1].seq == 12
    assert bb.local.book.best_ask() == (1010, 3)
    assert bb.local.book.best_bid() == (1000, 1)  # the stale diff 8..9 was dropped
    (d,) = bb.on_diff(_diff(13, 13, bids=[(1001, 4)]))
    assert isinstance(d, BookDelta) and d.seq == 13
    with pytest.raises(SequenceGap, match="does not follow"):
        bb.on_diff(_diff(15, 16))
    assert not bb.synced and len(bb.buffer) == 1


def test_buffered_book_refuses_unbridged_snapshot_and_crossed_update() -> None:
    bb = BufferedBook(_inst(), SpotRule())
    bb.on_diff(_diff(20, 21))
    with pytest.raises(SequenceGap, match="not bridged"):
        bb.on_snapshot(10, ((1000, 1),), ((1020, 2),), 5, 6)
    assert not bb.synced
    bb.on_snapshot(19, ((1000, 1),), ((1020, 2),), 5, 6)
    from adapters.exchanges.base import BookInvalid

    with pytest.raises(BookInvalid, match="crossed_book"):
        bb.on_diff(_diff(22, 22, bids=[(1030, 1)]))
    assert not bb.synced  # never emitted; a new snapshot is needed


# ---------------------------------------------------------------------------------------
# The run loop against the fake exchange
# ---------------------------------------------------------------------------------------


class ToyFrame(msgspec.Struct):
    s: str
    U: int
    u: int
    b: list[list[str]]
    a: list[list[str]]


class ToyVenue(ExchangeInterface):
    exchange = "TOY"
    default_ws_url = "ws://127.0.0.1:1/"
    default_rest_url = "http://127.0.0.1:1"
    rest_weights: ClassVar[dict[str, float]] = {"depth": 1.0}

    def __init__(self, config: FeedConfig, **kw: Any) -> None:
        super().__init__(config, **kw)
        self.books: dict[str, BufferedBook] = {}
        self._decode = msgspec.json.Decoder(ToyFrame).decode

    async def load_instruments(self) -> list[Instrument]:
        return [_inst()]

    def subscribe_frames(self) -> list[str]:
        return [json.dumps({"subscribe": list(self.config.symbols)})]

    def on_connected(self) -> None:
        self.books = {w: BufferedBook(i, SpotRule()) for w, i in self.instruments.items()}
        for wire in self.instruments:
            self.request_snapshot(wire)

    def on_frame(self, frame: str | bytes, ts_recv: int) -> list[Event]:
        try:
            f = self._decode(frame)
        except msgspec.DecodeError as exc:
            raise MalformedMessage(self.exchange, f"bad frame: {exc}") from exc
        inst = self.instrument(f.s)
        d = Diff(f.U, f.u, -1, parse_levels(inst, f.b), parse_levels(inst, f.a), f.U, ts_recv)
        return self.books[f.s].on_diff(d)

    async def fetch_snapshot(self, wire_symbol: str, priority: Priority) -> list[Event]:
        body = await self.http_request(
            "GET", "/depth", endpoint="depth", priority=priority, params={"symbol": wire_symbol}
        )
        snap = json.loads(body)
        inst = self.instrument(wire_symbol)
        bb = self.books[wire_symbol]
        now = self.clock.now_ns()
        return bb.on_snapshot(
            snap["id"], parse_levels(inst, snap["bids"]), parse_levels(inst, snap["asks"]), now, now
        )


def _frame(
    first: int, last: int, bid: str, size: str, at: float | None = None
) -> tuple[float, str]:
    body = {"s": "BTCUSD", "U": first, "u": last, "b": [[bid, size]], "a": []}
    return (float(first) if at is None else at, json.dumps(body))


SNAP_100 = json.dumps({"id": 100, "bids": [["99.0", "1.5"]], "asks": [["100.0", "1"]]})
SNAP_105 = json.dumps({"id": 105, "bids": [["99.0", "1.5"]], "asks": [["100.0", "1"]]})


def _config(fx: FakeExchange) -> FeedConfig:
    return FeedConfig(
        symbols=["BTCUSD"],
        ws_url=fx.ws_url,
        rest_url=fx.rest_url,
        backoff_base_s=0.05,
        backoff_cap_s=0.1,
        poll_interval_s=0,
    )


async def _collect(venue: ToyVenue, got: list[Event], until_seq: int) -> None:
    async def sink(events: list[Event]) -> None:
        got.extend(events)
        if any(isinstance(e, BookDelta) and e.seq == until_seq for e in events):
            venue.stop()

    await asyncio.wait_for(venue.run(sink), timeout=10)


def test_run_loop_resyncs_after_gap_counts_malformed_and_backs_off_on_429() -> None:
    # Paced playback (recorded gaps x1): the snapshot (delayed 0.2 s by a 429) lands
    # between the frames at t=0.0..0.1 and the gap at t=0.6.
    frames = [
        _frame(99, 100, "99.0", "1", at=0.0),  # stale: contained in snapshot 100
        _frame(101, 101, "99.5", "2", at=0.05),  # bridges snapshot 100
        (0.1, "{not json"),  # malformed: counted, skipped
        _frame(102, 103, "99.6", "3", at=0.1),
        _frame(105, 105, "99.7", "4", at=0.6),  # 104 missing -> resync
        _frame(106, 106, "99.8", "5", at=0.9),
    ]
    got: list[Event] = []

    async def main() -> ToyVenue:
        script = WsScript(frames, wait_for=1, pace=1.0)
        async with FakeExchange({"/depth?symbol=BTCUSD": SNAP_100}, [script]) as fx:
            fx.fail_next("/depth", HttpResponse(429, "", {"Retry-After": "0.2"}))
            venue = ToyVenue(_config(fx), limiter=RateLimiter(100, 100))

            async def swap_snapshot() -> None:  # after the gap the venue's depth is at 105
                while not any(isinstance(e, Connectivity) and e.status == "resync" for e in got):
                    await asyncio.sleep(0.005)
                fx.routes["/depth?symbol=BTCUSD"] = SNAP_105

            swapper = asyncio.ensure_future(swap_snapshot())
            await _collect(venue, got, until_seq=106)
            swapper.cancel()
            assert fx.client_frames[0] == ['{"subscribe": ["BTCUSD"]}']
            # the 429, the first snapshot, then the resync snapshot (retried while the
            # venue still served the old one, which the buffered diff 105 cannot bridge)
            assert set(fx.requests) == {("GET", "/depth?symbol=BTCUSD")}
            assert len(fx.requests) >= 3
            return venue

    venue = asyncio.run(main())
    st = venue.stats
    assert (st.malformed, st.gaps, st.resyncs, st.rate_limited) == (1, 1, 1, 1)
    assert (st.connects, st.reconnects, st.snapshots) == (1, 0, 2)
    seq = [
        (type(e).__name__, e.status if isinstance(e, Connectivity) else e.seq)  # type: ignore[attr-defined]
        for e in got
    ]
    assert seq == [
        ("Connectivity", "up"),
        ("BookSnapshot", 100),
        ("BookDelta", 101),
        ("BookDelta", 103),
        ("Connectivity", "resync"),
        ("BookSnapshot", 105),  # diff 105 is contained in it (stale)
        ("BookDelta", 106),
        ("Connectivity", "down"),  # stopped
    ]
    book = venue.books["BTCUSD"].local.book
    assert book.best_bid() == (998, 5000) and book.best_ask() == (1000, 1000)


def test_run_loop_reconnects_and_resnapshots_after_a_disconnect() -> None:
    frames = [_frame(101, 101, "99.5", "2"), _frame(102, 102, "99.6", "3")]
    got: list[Event] = []

    async def main() -> ToyVenue:
        scripts = [
            WsScript(frames, wait_for=1, close_after=1),  # drops after one frame
            WsScript([*frames, _frame(103, 103, "99.7", "4")], wait_for=1),
        ]
        async with FakeExchange({"/depth?symbol=BTCUSD": SNAP_100}, scripts) as fx:
            venue = ToyVenue(_config(fx), limiter=RateLimiter(100, 100))
            await _collect(venue, got, until_seq=103)
            assert fx.ws_connects == 2
            assert fx.client_frames[1] == ['{"subscribe": ["BTCUSD"]}']  # resubscribed
            return venue

    venue = asyncio.run(main())
    assert (venue.stats.connects, venue.stats.reconnects) == (2, 1)
    statuses = [e.status for e in got if isinstance(e, Connectivity)]
    assert statuses == ["up", "down", "up", "down"]  # the last: stopped
    snaps = [e.seq for e in got if isinstance(e, BookSnapshot)]
    assert snaps[-1] == 100 and len(snaps) >= 2  # resnapshotted on the new connection
    last_conn = got[max(i for i, e in enumerate(got) if isinstance(e, BookSnapshot)) :]
    assert [e.seq for e in last_conn if isinstance(e, BookDelta)] == [101, 102, 103]


# ---------------------------------------------------------------------------------------
# Rescaling to the configured precision
# ---------------------------------------------------------------------------------------


def _configured(price_decimals: int, size_decimals: int, kind: str = "spot") -> Instrument:
    return Instrument(
        exchange="TOY",
        symbol="BTC-USD-PERP" if kind == "perp" else "BTC-USD",
        kind=kind,  # type: ignore[arg-type]
        base="BTC",
        quote="USD",
        price_decimals=price_decimals,
        size_decimals=size_decimals,
        wire_symbol="BTCUSD",
    )


def _venue_with(expected: Instrument) -> ToyVenue:
    venue = ToyVenue(FeedConfig(symbols=["BTCUSD"], poll_interval_s=0))
    venue.expected = {expected.key: expected}
    venue.instruments = {"BTCUSD": _inst()}  # what run() loads before connecting
    venue.check_expected()
    return venue


def test_events_are_rescaled_to_the_configured_precision() -> None:
    # venue: price 1 decimal (tick 0.1), size 3 decimals; configured: 2 and 2
    venue = _venue_with(_configured(2, 2))
    assert venue._rescale == {"TOY:BTC-USD": (1, -1)}
    delta = BookDelta(1, 2, "TOY", "BTC-USD", 7, ((1000, 1234), (999, 9)), ((1001, 0),))
    out = venue._rescaled(delta)
    assert isinstance(out, BookDelta)
    # 100.0 x 1.234 -> 100.00 x 1.23 (floored); 99.9 x 0.009 -> 99.90 x 0.00 (deleted)
    assert out.bids == ((10000, 123), (9990, 0)) and out.asks == ((10010, 0),)
    trade = Trade(1, 2, "TOY", "BTC-USD", 8, "t", 1005, 1999, "buy")
    got = venue._rescaled(trade)
    assert isinstance(got, Trade) and (got.price, got.size) == (10050, 199)


def test_coarser_configured_price_drops_off_grid_levels_and_rounds_trades() -> None:
    venue = _venue_with(_configured(0, 3))  # whole units; sizes unchanged
    delta = BookDelta(1, 2, "TOY", "BTC-USD", 7, ((1000, 5), (1005, 6)), ())
    out = venue._rescaled(delta)
    assert isinstance(out, BookDelta) and out.bids == ((100, 5),)  # 100.5 is off the grid
    assert venue.stats.unrepresentable == 1
    prices = []
    for p in (1005, 1015, 1006):  # 100.5 -> 100 (half-even), 101.5 -> 102, 100.6 -> 101
        t = venue._rescaled(Trade(1, 2, "TOY", "BTC-USD", 8, "t", p, 5, "buy"))
        assert isinstance(t, Trade)
        prices.append(t.price)
    assert prices == [100, 102, 101]
    assert venue.stats.unrepresentable == 4
    only_off_grid = BookDelta(1, 2, "TOY", "BTC-USD", 9, ((1005, 1),), ())
    assert venue._rescaled(only_off_grid) is None  # nothing left to emit


def test_a_different_kind_refuses_to_start() -> None:
    from adapters.exchanges.base import InstrumentMismatch

    venue = ToyVenue(FeedConfig(symbols=["BTCUSD"], poll_interval_s=0))
    perp = _configured(1, 3, kind="perp")
    venue.expected = {"TOY:BTC-USD": perp}

    async def sink(events: list[Event]) -> None:
        pass

    # run() loads the instruments and refuses before it connects
    with pytest.raises(InstrumentMismatch, match="the venue lists a spot"):
        asyncio.run(asyncio.wait_for(venue.run(sink), 5))


def test_planned_rollover_reconnects_before_the_venue_drops_the_connection() -> None:
    frames = [_frame(101, 101, "99.5", "2"), _frame(102, 102, "99.6", "3")]
    got: list[Event] = []

    async def main() -> ToyVenue:
        async with FakeExchange({"/depth?symbol=BTCUSD": SNAP_100}, [WsScript(frames)]) as fx:
            cfg = _config(fx)
            cfg.rollover_s = 0.4  # Binance: 24 h; here: a fraction of a second
            venue = ToyVenue(cfg, limiter=RateLimiter(100, 100))

            async def sink(events: list[Event]) -> None:
                got.extend(events)
                if venue.stats.rollovers >= 2:
                    venue.stop()

            await asyncio.wait_for(venue.run(sink), timeout=10)
            assert fx.ws_connects >= 2
            return venue

    venue = asyncio.run(main())
    assert venue.stats.rollovers >= 2 and venue.stats.reconnects >= 1
    downs = [e.reason for e in got if isinstance(e, Connectivity) and e.status == "down"]
    assert downs[:2] == ["planned rollover", "planned rollover"]
    # each new connection resnapshots and resubscribes
    assert sum(isinstance(e, BookSnapshot) for e in got) >= 2
