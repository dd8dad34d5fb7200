"""Market-data validation on real recorded streams (shared/data, see its MANIFEST.md):
no false rejections, and each injected fault (a crossed update, a 10x print, a repeated
trade id, a 5 s stall) caught exactly once, by its rule, with nothing else changed.

Streams: Binance spot BTCUSDT and USD-M BTCUSDT perp, 2024-08-08, the same 346 s
(hftbacktest recordings, merged in the canonical order), and Kraken spot v1, 10 pairs,
2021-04-17, 31 s (cryptofeed capture), each through its own adapter.
"""

from __future__ import annotations

import gzip
import json
from collections import Counter
from pathlib import Path

import msgspec
import pytest

from adapters.exchanges.base import FeedConfig
from adapters.exchanges.binance import BinanceBase, BinanceSpot, BinanceUsdm
from adapters.exchanges.fake import load_capture
from adapters.exchanges.kraken import KrakenV1Exchange
from kernel.config import ValidationConfig
from kernel.events import BookDelta, DataQuality, Event, Trade, order_key
from kernel.instruments import Instrument
from kernel.validation import Validator

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
HFT = SHARED / "market" / "binance_hftbacktest"
KRAKEN = SHARED / "exchanges" / "kraken" / "cryptofeed_KRAKEN.jsonl.gz"
S = 1_000_000_000
SPOT, PERP = "BTC-USDT", "BTC-USDT-PERP"


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"recorded data not present: {path} (see shared/data/MANIFEST.md)")
    return path


def _binance(cls: type[BinanceBase], fields: dict[str, object], file: str) -> BinanceBase:
    """A Binance adapter fed one hftbacktest file (``<ns> <json>`` lines, the REST depth
    snapshot inline)."""
    filters = [
        {"filterType": "PRICE_FILTER", "tickSize": fields.pop("tick")},
        {"filterType": "LOT_SIZE", "stepSize": fields.pop("lot")},
    ]
    sym = {"symbol": "BTCUSDT", "baseAsset": "BTC", "quoteAsset": "USDT", **fields}
    sym["filters"] = filters
    channels = frozenset({"book", "trades"})
    adapter = cls(FeedConfig(symbols=["BTCUSDT"], channels=channels, extra={"legacy_url": True}))
    info = adapter.parse_exchange_info(json.dumps({"symbols": [sym]}))
    adapter.set_instruments(adapter.select(info))
    return adapter


def _binance_events(adapter: BinanceBase, file: str) -> list[Event]:
    out: list[Event] = []
    with gzip.open(_need(HFT / file), "rt") as fh:
        for line in fh:
            ts, _, text = line.partition(" ")
            if text.startswith('{"lastUpdateId"'):
                out += adapter.apply_snapshot("BTCUSDT", text, int(ts))
            else:
                out += adapter.on_frame(text, int(ts))
    return out


@pytest.fixture(scope="module")
def binance() -> tuple[list[Instrument], list[Event]]:
    spot = _binance(
        BinanceSpot,
        {"quoteAssetPrecision": 8, "baseAssetPrecision": 8, "tick": "0.01", "lot": "0.00001"},
        "spot_btcusdt_20240808.gz",
    )
    perp = _binance(
        BinanceUsdm,
        {
            "contractType": "PERPETUAL",
            "pricePrecision": 2,
            "quantityPrecision": 3,
            "tick": "0.10",
            "lot": "0.001",
        },
        "usdm_btcusdt_20240808.gz",
    )
    events = _binance_events(spot, "spot_btcusdt_20240808.gz")
    events += _binance_events(perp, "usdm_btcusdt_20240808.gz")
    events.sort(key=order_key)
    return [*spot.instruments.values(), *perp.instruments.values()], events


@pytest.fixture(scope="module")
def kraken() -> tuple[list[Instrument], list[Event]]:
    cap = load_capture(_need(KRAKEN))
    pairs = ["WAVES/EUR", "XMR/USD", "KSM/XBT", "GRT/ETH", "SC/EUR"]
    pairs += ["ETH/CHF", "OCEAN/XBT", "OMG/USD", "XBT/CHF", "ADA/XBT"]
    ex = KrakenV1Exchange(FeedConfig(symbols=pairs, depth=1000))
    ex.use_asset_pairs(cap.http[0][2])
    events: list[Event] = []
    for ts, text in cap.frames():
        events += ex.on_frame(text, round(ts * 1e9))
    return list(ex.instruments.values()), events


def run(instruments: list[Instrument], events: list[Event]) -> tuple[int, list[DataQuality]]:
    """(events refused, every finding) of one pass with the default thresholds."""
    v = Validator(ValidationConfig(enabled=True), instruments)
    refused = 0
    findings: list[DataQuality] = []
    for ev in events:
        verdict = v.check(ev)
        refused += not verdict.accept
        findings.extend(verdict.findings)
    return refused, findings


def tally(findings: list[DataQuality]) -> Counter[tuple[str, str, bool]]:
    return Counter((f.rule, f.symbol, f.rejected) for f in findings)


def test_binance_recording_has_no_false_rejections(
    binance: tuple[list[Instrument], list[Event]],
) -> None:
    instruments, events = binance
    kinds = Counter(type(e).__name__ for e in events)
    assert kinds == {"Trade": 31_070, "BookDelta": 9_996, "BookSnapshot": 2}
    refused, findings = run(instruments, events)
    assert refused == 0
    # The recorder's clock ran ~1.27 s behind Binance's (first spot trade: ts_event
    # 1723161255.342, received 1723161254.088): one clock_skew episode per stream.
    assert tally(findings) == {("clock_skew", SPOT, False): 1, ("clock_skew", PERP, False): 1}


def test_kraken_recording_has_no_false_rejections(
    kraken: tuple[list[Instrument], list[Event]],
) -> None:
    instruments, events = kraken
    refused, findings = run(instruments, events)
    assert refused == 0
    # quiet pairs (GRT/ETH, OCEAN/XBT, ...) silent for just over 3 s: flags only
    assert {(f.rule, f.rejected) for f in findings} == {("stale_stream", False)}
    assert len(findings) == 5


def _index(events: list[Event], kind: type, symbol: str, nth: int) -> int:
    """Index of the ``nth`` event of ``kind`` on ``symbol``."""
    hits = [i for i, e in enumerate(events) if isinstance(e, kind) and e.symbol == symbol]
    return hits[nth]


def _only_new(base: list[DataQuality], faulted: list[DataQuality]) -> DataQuality:
    """The one finding the fault added; everything else must be as without it."""
    added = tally(faulted) - tally(base)
    assert sum(added.values()) == 1, added
    assert tally(base) - tally(faulted) == Counter()
    (rule, symbol, rejected) = next(iter(added))
    return next(f for f in faulted if (f.rule, f.symbol, f.rejected) == (rule, symbol, rejected))


@pytest.fixture(scope="module")
def baseline(binance: tuple[list[Instrument], list[Event]]) -> list[DataQuality]:
    return run(*binance)[1]


def test_injected_crossed_update_caught_once(
    binance: tuple[list[Instrument], list[Event]], baseline: list[DataQuality]
) -> None:
    instruments, events = binance
    k = _index(events, BookDelta, SPOT, 2_000)
    v = Validator(ValidationConfig(enabled=True), instruments)
    for ev in events[: k + 1]:
        v.check(ev)
    book = v.book("BINANCE", SPOT)
    assert book is not None
    best_ask = book.best_ask()
    assert best_ask is not None
    at = events[k]
    bad = BookDelta(at.ts_event, at.ts_recv, "BINANCE", SPOT, 0, ((best_ask[0] + 1, 1),), ())
    refused, faulted = run(instruments, [*events[: k + 1], bad, *events[k + 1 :]])
    assert refused == 1
    f = _only_new(baseline, faulted)
    assert (f.rule, f.rejected) == ("crossed_book", True)
    assert f.detail == f"best_bid={best_ask[0] + 1} best_ask={best_ask[0]}"


def test_injected_10x_print_caught_once(
    binance: tuple[list[Instrument], list[Event]], baseline: list[DataQuality]
) -> None:
    instruments, events = binance
    k = _index(events, Trade, PERP, 5_000)
    at = events[k]
    assert isinstance(at, Trade)
    bad = msgspec.structs.replace(at, trade_id=at.trade_id + "-x", price=at.price * 10)
    refused, faulted = run(instruments, [*events[: k + 1], bad, *events[k + 1 :]])
    assert refused == 1
    f = _only_new(baseline, faulted)
    assert (f.rule, f.symbol, f.rejected) == ("price_band", PERP, True)
    assert f.detail.startswith(f"price={at.price * 10} ref=")


def test_injected_duplicate_trade_id_caught_once(
    binance: tuple[list[Instrument], list[Event]], baseline: list[DataQuality]
) -> None:
    instruments, events = binance
    k = _index(events, Trade, SPOT, 7_000)
    at = events[k]
    assert isinstance(at, Trade)
    refused, faulted = run(instruments, [*events[: k + 1], at, *events[k + 1 :]])
    assert refused == 1
    f = _only_new(baseline, faulted)
    assert (f.rule, f.symbol, f.rejected) == ("duplicate_trade", SPOT, True)
    assert f.detail == (
        f"trade_id={at.trade_id!r} price={at.price} size={at.size} first_ts_event={at.ts_event}"
    )


def test_injected_5s_stall_caught_once(
    binance: tuple[list[Instrument], list[Event]], baseline: list[DataQuality]
) -> None:
    """The perp feed goes quiet for 5 s from the middle of the recording and then goes on
    (every later perp event 5 s later): the spot stream's events find it stale once."""
    instruments, events = binance
    start = events[0].ts_recv + 150 * S
    shifted: list[Event] = []
    for ev in events:
        if isinstance(ev, Trade | BookDelta) and ev.symbol == PERP and ev.ts_recv >= start:
            ev = msgspec.structs.replace(
                ev, ts_event=ev.ts_event + 5 * S, ts_recv=ev.ts_recv + 5 * S
            )
        shifted.append(ev)
    end = events[-1].ts_recv  # the recording's end, not a stall: nothing after it
    shifted = sorted((e for e in shifted if e.ts_recv <= end), key=order_key)
    refused, faulted = run(instruments, shifted)
    assert refused == 0
    f = _only_new(baseline, faulted)
    assert (f.rule, f.exchange, f.symbol, f.rejected) == ("stale_stream", "BINANCE", PERP, False)
    last = max(e.ts_recv for e in events if e.symbol == PERP and e.ts_recv < start)
    first_after = min(e.ts_recv for e in shifted if e.ts_recv > last + 3 * S)
    assert f.ts_recv == first_after  # found by the first event past the 3 s bound
    assert f.detail == (f"last_recv={last} silent_ns={first_after - last} stale_after_ns={3 * S}")


def test_recording_through_the_kernel_with_a_crossed_update(
    binance: tuple[list[Instrument], list[Event]],
) -> None:
    """The same recording through the engine (validation on, as config/monitoring.yaml
    has it): nothing refused; an injected crossed update is refused exactly once, not
    applied (the book after it equals the book of the clean run) and the book stays
    uncrossed."""
    from kernel.config import EngineConfig
    from kernel.engine import Engine

    instruments, events = binance

    def kernel(evs: list[Event]) -> tuple[Engine, list[DataQuality]]:
        eng = Engine(EngineConfig(), instruments, None, validation=ValidationConfig(enabled=True))
        out: list[DataQuality] = []
        for ev in evs:
            out += [f for f in eng.apply(ev) if isinstance(f, DataQuality)]
        return eng, out

    clean, found = kernel(events)
    assert clean.rejected == 0 and not [f for f in found if f.rejected]
    k = _index(events, BookDelta, SPOT, 2_000)
    probe, _ = kernel(events[: k + 1])
    best_ask = probe.books[f"BINANCE:{SPOT}"].best_ask()
    assert best_ask is not None
    at = events[k]
    bad = BookDelta(at.ts_event, at.ts_recv, "BINANCE", SPOT, 0, ((best_ask[0] + 1, 1),), ())
    faulted, found_f = kernel([*events[: k + 1], bad, *events[k + 1 :]])
    assert faulted.rejected == 1
    assert [(f.rule, f.rejected) for f in found_f if f.rejected] == [("crossed_book", True)]
    for key, book in faulted.books.items():
        assert book.canonical() == clean.books[key].canonical()
        bid, ask = book.best_bid(), book.best_ask()
        assert bid is None or ask is None or bid[0] < ask[0]


def test_the_delta_fast_path_changes_nothing(
    binance: tuple[list[Instrument], list[Event]], kraken: tuple[list[Instrument], list[Event]]
) -> None:
    """Validator._clean_delta / _clean_trade (the common cases, checked inline) against
    the general path alone, on both recordings with faults injected: every 997th event
    a crossed level, a negative size, a 10x mid or a 400 ms step back; every 991st a
    repeated trade id, a 10x print or a zero size. Every verdict and the final state
    are identical."""
    for instruments, events in (binance, kraken):
        faulted: list[Event] = []
        for i, ev in enumerate(events):
            faulted.append(ev)
            if isinstance(ev, BookDelta) and i % 997 == 0 and ev.bids:
                price = ev.bids[0][0]
                kind = (i // 997) % 4
                if kind == 0:
                    bad = msgspec.structs.replace(ev, bids=((price * 2, 1),), asks=())
                elif kind == 1:
                    bad = msgspec.structs.replace(ev, bids=((price, -1),))
                elif kind == 2:
                    bad = msgspec.structs.replace(
                        ev, bids=((price * 10, 1),), asks=((price * 11, 1),)
                    )
                else:
                    bad = msgspec.structs.replace(ev, ts_event=ev.ts_event - 400_000_000)
                faulted.append(bad)
            if isinstance(ev, Trade) and i % 991 == 0:
                kind = (i // 991) % 3
                if kind == 0:
                    faulted.append(ev)  # the same trade id again
                elif kind == 1:
                    faulted.append(msgspec.structs.replace(ev, trade_id="", price=ev.price * 10))
                else:
                    faulted.append(msgspec.structs.replace(ev, trade_id="", size=0))
        fast = Validator(ValidationConfig(enabled=True), instruments)
        slow = Validator(ValidationConfig(enabled=True), instruments)
        slow._clean_delta = lambda ev, book: False  # type: ignore[method-assign]
        slow._clean_trade = lambda ev: False  # type: ignore[method-assign]
        for ev in faulted:
            assert fast.check(ev) == slow.check(ev)
        assert fast.snapshot() == slow.snapshot()
