"""A session recorded before a config field existed still verifies.

Config structs only grow fields with defaults (schema evolution). A session journaled
by an older version records config JSON without the new field; verification hashes the
recorded text (not a re-encoding of the decoded struct, which would now include the new
default) and re-runs with the default, which reproduces the old behaviour.
"""

from __future__ import annotations

import hashlib
import json

import msgspec

from adapters.journal.base import prepare, session_stream
from adapters.journal.memory import MemoryJournal
from journal_tools.session import run_session, verify_session
from kernel.config import AppConfig, InstrumentsConfig, StrategyConfig
from kernel.events import BookSnapshot, SessionStarted, decode, event_id
from kernel.instruments import Instrument


def test_a_session_recorded_without_a_newer_field_still_verifies() -> None:
    inst = Instrument(
        exchange="BINANCE",
        symbol="BTC-USDT",
        kind="spot",
        base="BTC",
        quote="USDT",
        price_decimals=1,
        size_decimals=3,
    )
    config = AppConfig(instruments=InstrumentsConfig(instruments=(inst,)))
    source = MemoryJournal()
    big, small = 20, 2  # imbalance +-0.82: the signal flips every book, 2 s apart
    source.append(
        "md.BINANCE.BTC-USDT",
        [
            BookSnapshot(
                ts_event=t * 2_000_000_000,
                ts_recv=t * 2_000_000_000,
                exchange="BINANCE",
                symbol="BTC-USDT",
                seq=t,
                bids=((1000, big if t % 2 else small),),
                asks=((1002, small if t % 2 else big),),
            )
            for t in range(1, 40)
        ],
    )
    stats = run_session(source, config, strategy=StrategyConfig(name="imbalance"), session_id="old")
    assert stats.decisions > 0
    # rewrite the session as an older version would have recorded it: without the
    # kafka.client field (added later, default {})
    stream = session_stream("old")
    records = list(source.read(stream))
    started = decode(records[0].payload)
    assert isinstance(started, SessionStarted)
    doc = json.loads(started.config_json)
    del doc["kafka"]["client"]
    old_json = msgspec.json.encode(doc, order="sorted").decode()
    old_started = msgspec.structs.replace(
        started,
        config_json=old_json,
        config_hash=hashlib.blake2b(old_json.encode(), digest_size=32).hexdigest(),
    )
    target = MemoryJournal()
    for info in source.streams():
        if info.stream != stream:
            target.append_prepared(
                info.stream,
                [prepare(decode(r.payload), r.event_id) for r in source.read(info.stream)],
            )
    target.append_prepared(
        stream,
        [prepare(old_started, event_id(old_started, stream, 0))]
        + [prepare(decode(r.payload), r.event_id) for r in records[1:]],
    )
    result = verify_session(target, "old")
    assert result.ok, result.divergence
    assert result.state_hash == stats.state_hash
