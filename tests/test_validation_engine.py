"""Validation inside the kernel (kernel/engine.py + kernel/validation.py): a rejected
market event is journaled as a ``DataQuality`` finding with ``rejected=True``, is never
applied (books, last trades, the strategy and the state stay as they were) and is kept
in the journal; a replay applies exactly the same rules; snapshot/restore carries the
validator's state; validation off leaves the state bytes as they were."""

from __future__ import annotations

import msgspec
import pytest

from adapters.journal.base import session_stream
from adapters.journal.memory import MemoryJournal
from journal_tools.session import run_session, verify_session
from kernel.config import (
    AppConfig,
    EngineConfig,
    InstrumentsConfig,
    MonitoringConfig,
    StrategyConfig,
    ValidationConfig,
)
from kernel.context import StrategyContext
from kernel.engine import Engine
from kernel.events import (
    BookDelta,
    BookSnapshot,
    Connectivity,
    DataQuality,
    Event,
    Heartbeat,
    MarketEvent,
    Trade,
    decode,
)
from kernel.instruments import Instrument
from strategies.base import BaseStrategy

MS = 1_000_000
S = 1_000 * MS
T0 = 1_700_000_000 * S
BN, KR = "BINANCE", "KRAKEN"
SYM = "BTC-USDT"


def inst(exchange: str) -> Instrument:
    return Instrument(
        exchange=exchange,
        symbol=SYM,
        kind="spot",
        base="BTC",
        quote="USDT",
        price_decimals=1,
        size_decimals=3,
    )


INSTRUMENTS = [inst(BN), inst(KR)]
ON = ValidationConfig(enabled=True)


class Seen(BaseStrategy):
    """Records every market event it is shown."""

    name = "seen"

    def __init__(self) -> None:
        self.seen: list[MarketEvent] = []

    def on_market(self, ctx: StrategyContext, event: MarketEvent) -> None:
        self.seen.append(event)


def engine(validation: ValidationConfig | None = ON) -> tuple[Engine, Seen]:
    strat = Seen()
    return Engine(EngineConfig(), INSTRUMENTS, strat, seed=3, validation=validation), strat


def snap(t: int, ex: str = BN, bid: int = 600_000, ask: int = 600_010) -> BookSnapshot:
    return BookSnapshot(t - MS, t, ex, SYM, 1, ((bid, 100), (bid - 10, 200)), ((ask, 100),))


def delta(t: int, bids=(), asks=(), ex: str = BN) -> BookDelta:  # type: ignore[no-untyped-def]
    return BookDelta(t - MS, t, ex, SYM, t, tuple(bids), tuple(asks))


def trade(t: int, tid: str, price: int, size: int = 10, ex: str = BN) -> Trade:
    return Trade(t - MS, t, ex, SYM, 0, tid, price, size, "buy")


def findings(out: tuple[Event, ...]) -> list[tuple[str, str, bool]]:
    return [(f.rule, f.detail, f.rejected) for f in out if isinstance(f, DataQuality)]


def test_crossed_delta_is_rejected_not_applied_and_the_book_stays_valid() -> None:
    eng, strat = engine()
    eng.apply(snap(T0))
    before = eng.books[f"{BN}:{SYM}"].canonical()
    out = eng.apply(delta(T0 + MS, bids=[(600_020, 5)]))  # above the 600010 ask
    assert findings(out) == [("crossed_book", "best_bid=600020 best_ask=600010", True)]
    (f,) = out
    assert isinstance(f, DataQuality)
    assert (f.exchange, f.symbol, f.source_seq, f.ts_recv) == (BN, SYM, T0 + MS, T0 + MS)
    assert eng.books[f"{BN}:{SYM}"].canonical() == before
    assert eng.rejected == 1
    assert [type(e).__name__ for e in strat.seen] == ["BookSnapshot"]  # never shown
    book = eng.books[f"{BN}:{SYM}"]
    assert book.best_bid() == (600_000, 100) and book.best_ask() == (600_010, 100)


def test_locked_delta_rejected() -> None:
    eng, _ = engine()
    eng.apply(snap(T0))
    out = eng.apply(delta(T0 + MS, asks=[(600_000, 5)]))
    assert findings(out) == [("locked_book", "best_bid=600000 best_ask=600000", True)]
    assert eng.books[f"{BN}:{SYM}"].best_ask() == (600_010, 100)


def test_duplicate_trade_rejected_and_last_trade_unchanged() -> None:
    eng, strat = engine()
    eng.apply(snap(T0))
    first = trade(T0 + MS, "77", 600_005)
    assert eng.apply(first) == ()
    again = trade(T0 + 2 * MS, "77", 600_006)
    out = eng.apply(again)
    assert findings(out) == [
        ("duplicate_trade", f"trade_id='77' price=600006 size=10 first_ts_event={T0}", True)
    ]
    assert eng.last_trades[f"{BN}:{SYM}"] == first
    assert strat.seen[-1] == first


def test_fat_finger_trade_rejected() -> None:
    """Mid 600005; 10x print 6000050 is 90000 bp off, beyond the 500 bp band."""
    eng, _ = engine()
    eng.apply(snap(T0))
    out = eng.apply(trade(T0 + MS, "1", 6_000_050))
    assert findings(out) == [
        ("price_band", "price=6000050 ref=600005 band_bp=500 off_bp=90000.00", True)
    ]
    assert f"{BN}:{SYM}" not in eng.last_trades


def test_non_positive_size_rejected_before_the_book() -> None:
    eng, _ = engine()
    eng.apply(snap(T0))
    out = eng.apply(delta(T0 + MS, asks=[(600_020, -5)]))
    assert findings(out) == [("non_positive_size", "side=ask price=600020 size=-5", True)]
    assert eng.rejected == 1


def test_flags_are_journaled_and_the_event_is_applied() -> None:
    """A 4 s silence on KRAKEN (stale after 3 s) is flagged on the next input; a
    clock-skewed BINANCE delta (3 s late, bound 2 s) is flagged and applied."""
    eng, strat = engine()
    eng.apply(snap(T0, KR, 600_000, 600_020))
    eng.apply(snap(T0 + S, BN))
    out = eng.apply(Heartbeat(T0 + 4 * S, T0 + 4 * S, "md"))
    assert findings(out) == [
        ("stale_stream", f"last_recv={T0} silent_ns={4 * S} stale_after_ns={3 * S}", False)
    ]
    assert [f.exchange for f in out if isinstance(f, DataQuality)] == [KR]
    late = BookDelta(T0 + S + MS, T0 + 4 * S + 2 * MS, BN, SYM, 9, ((600_000, 7),), ())
    out = eng.apply(late)
    assert ("clock_skew", f"skew_ns={3 * S + MS} bound_ns={2 * S}", False) in findings(out)
    assert eng.books[f"{BN}:{SYM}"].best_bid() == (600_000, 7)
    assert strat.seen[-1] == late
    assert eng.rejected == 0


def test_validation_off_applies_everything_and_keeps_the_old_state_shape() -> None:
    off, _ = engine(None)
    plain = Engine(EngineConfig(), INSTRUMENTS, Seen(), seed=3)
    events: list[Event] = [snap(T0), trade(T0 + MS, "1", 6_000_050)]
    for ev in events:
        off.apply(ev)
        plain.apply(ev)
    assert off.last_trades[f"{BN}:{SYM}"].price == 6_000_050  # no band without rules
    assert off.snapshot() == plain.snapshot()
    disabled, _ = engine(ValidationConfig(enabled=False))
    for ev in events:
        disabled.apply(ev)
    assert disabled.state_hash() == plain.state_hash()


def faulty_day() -> list[Event]:
    """Two venues, one delta per 100 ms each for 20 s, with four faults on BINANCE: a
    crossed update, a 10x print, a repeated trade id and (KRAKEN) a 5 s stall."""
    out: list[Event] = [snap(T0, BN), snap(T0, KR, 600_000, 600_020)]
    for i in range(1, 200):
        t = T0 + i * 100 * MS
        out.append(delta(t, bids=[(600_000, 100 + i)]))
        if not 80 <= i < 130:  # KRAKEN silent 5 s
            out.append(delta(t + MS, bids=[(600_000, 50 + i)], ex=KR))
        if i % 10 == 0:
            out.append(trade(t + 2 * MS, f"b{i}", 600_005))
    out.insert(50, delta(T0 + 2_500 * MS + 3 * MS, bids=[(600_030, 1)]))  # crossed
    out.insert(120, trade(T0 + 6_000 * MS + 3 * MS, "fat", 6_000_050))  # 10x
    dup = next(e for e in out if isinstance(e, Trade) and e.trade_id == "b100")
    out.append(msgspec.structs.replace(dup, ts_event=dup.ts_event + 5, ts_recv=dup.ts_recv + 5))
    out.sort(key=lambda e: e.ts_recv)
    return out


def test_replay_journals_rejections_keeps_inputs_and_verifies() -> None:
    config = AppConfig(
        instruments=InstrumentsConfig(instruments=tuple(INSTRUMENTS)),
        monitoring=MonitoringConfig(validation=ON),
    )
    journal = MemoryJournal()
    events = faulty_day()
    journal.append("md.BINANCE.BTC-USDT", [e for e in events if e.exchange == BN])  # type: ignore[attr-defined]
    journal.append("md.KRAKEN.BTC-USDT", [e for e in events if e.exchange == KR])  # type: ignore[attr-defined]
    n_inputs = len(events)
    stats = run_session(journal, config, strategy=StrategyConfig(name="none"), session_id="v")
    assert stats.rejected == 3
    rows = [decode(r.payload) for r in journal.read(session_stream("v"))]
    dq = [(e.rule, e.exchange, e.rejected) for e in rows if isinstance(e, DataQuality)]
    assert sorted(dq) == [
        ("crossed_book", BN, True),
        ("duplicate_trade", BN, True),
        ("price_band", BN, True),
        ("stale_stream", KR, False),
    ]
    # the rejected inputs are still in the journal, untouched
    kept = len(list(journal.read("md.BINANCE.BTC-USDT"))) + len(
        list(journal.read("md.KRAKEN.BTC-USDT"))
    )
    assert kept == n_inputs
    result = verify_session(journal, "v")
    assert result.ok, result
    again = run_session(journal, config, strategy=StrategyConfig(name="none"), session_id="w")
    assert again.state_hash == stats.state_hash


def test_snapshot_restore_carries_the_validator() -> None:
    """Cut in the middle (after the 10x print, before the duplicate): the resumed engine
    still knows trade id b100 and rejects its repeat, and ends in the same state."""
    events = faulty_day()
    whole, _ = engine()
    outs_whole = [whole.apply(e) for e in events]
    cut = [i for i, e in enumerate(events) if isinstance(e, Trade) and e.trade_id == "b100"][1]
    part, _ = engine()
    for e in events[:cut]:
        part.apply(e)
    resumed, _ = engine()
    resumed.restore(part.snapshot())
    last = resumed.apply(events[cut])
    assert last == outs_whole[cut]
    assert [f[0] for f in findings(last)] == ["duplicate_trade"]
    for e in events[cut + 1 :]:
        resumed.apply(e)
    assert resumed.state_hash() == whole.state_hash()


TICKED = [
    Instrument(
        exchange=ex,
        symbol=SYM,
        kind="spot",
        base="BTC",
        quote="USDT",
        price_decimals=1,
        size_decimals=3,
        tick_size=10,
        lot_size=5,
    )
    for ex in (BN, KR)
]


@pytest.mark.parametrize(
    ("fault", "rule", "rejected", "detail"),
    [
        (delta(T0 + MS, bids=[(600_005, 5)]), "off_tick", True, "side=bid price=600005 tick=10"),
        (
            delta(T0 + MS, asks=[(600_020, 7)]),
            "off_lot",
            True,
            "side=ask price=600020 size=7 lot=5",
        ),
        (delta(T0 + MS, bids=[(0, 5)]), "non_positive_price", True, "side=bid price=0"),
        (
            delta(T0 + MS, bids=[(600_000, -5)]),
            "non_positive_size",
            True,
            "side=bid price=600000 size=-5",
        ),
        (
            delta(T0 + MS, bids=[(600_020, 5)]),
            "crossed_book",
            True,
            "best_bid=600020 best_ask=600010",
        ),
        (
            delta(T0 + MS, asks=[(600_000, 5)]),
            "locked_book",
            True,
            "best_bid=600000 best_ask=600000",
        ),
        (
            trade(T0 + MS, "1", 6_000_050),
            "price_band",
            True,
            "price=6000050 ref=600005 band_bp=500 off_bp=90000.00",
        ),
        (
            BookDelta(T0 - 400 * MS, T0 + MS, BN, SYM, 5, ((599_990, 5),), ()),
            "ts_out_of_order",
            False,
            None,
        ),
        (
            snap(T0 + MS, BN, 587_000, 587_010),
            "cross_venue_band",
            False,
            None,
        ),
        (
            Connectivity(T0 + MS, T0 + MS, BN, SYM, "resync", "gap 4 -> 6"),
            "sequence_gap",
            False,
            "reason='gap 4 -> 6'",
        ),
    ],
)
def test_every_rule_in_the_kernel(
    fault: Event, rule: str, rejected: bool, detail: str | None
) -> None:
    """Each rule on a hand-made case through the engine: the finding is journaled with
    its values; a rejected event changes nothing (book, last trade, strategy), a flagged
    one is applied; the book stays valid (best bid < best ask)."""
    strat = Seen()
    eng = Engine(EngineConfig(), TICKED, strat, seed=3, validation=ON)
    eng.apply(snap(T0 - 300 * MS, KR, 600_000, 600_010))
    eng.apply(snap(T0, BN))
    eng.apply(delta(T0 + MS // 2, bids=[(599_990, 200)]))  # a delta: ts_event T0 - 0.5 ms
    before = eng.snapshot()
    seen = len(strat.seen)
    out = eng.apply(fault)
    found = [f for f in out if isinstance(f, DataQuality) and f.rule == rule]
    assert len(found) == 1, out
    assert found[0].rejected is rejected
    if detail is not None:
        assert found[0].detail == detail
    book = eng.books[f"{BN}:{SYM}"]
    bid, ask = book.best_bid(), book.best_ask()
    assert bid is not None and ask is not None and bid[0] < ask[0]
    if rejected:
        assert eng.rejected == 1 and len(strat.seen) == seen
        assert engine_books(eng) == engine_books_of(before)
    elif isinstance(fault, MarketEvent):
        assert strat.seen[-1] == fault  # flagged and applied


def engine_books(eng: Engine) -> list[object]:
    return [(k, b.canonical()) for k, b in sorted(eng.books.items())] + [
        sorted(eng.last_trades.items())
    ]


def engine_books_of(snapshot: bytes) -> list[object]:
    eng = Engine(EngineConfig(), TICKED, Seen(), seed=3, validation=ON)
    eng.restore(snapshot)
    return engine_books(eng)
