"""Validation by kernel replays with the policy frozen (journal_tools/rl.py): walk-forward
folds trained on their in-sample range and replayed out of sample, CPCV splits with purge
and embargo and their backtest paths, tampered weights refused, the quarantine, and the
end-to-end ``tickerml rl-demo`` (export -> pre-train -> train -> distil -> walk-forward)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from adapters.config_loader import load_config
from adapters.journal.sqlite import SqliteJournal
from journal_tools.cli import main
from journal_tools.projections import load_session
from journal_tools.rl import (
    EvalSpec,
    Setup,
    cpcv_eval,
    frozen_replay,
    walk_forward_eval,
    windows_ns,
)
from journal_tools.synth import SynthSpec, generate
from journal_tools.tardis import import_files
from kernel.config import StrategyConfig
from kernel.events import ModelLoaded, PortfolioSnapshot
from kernel.instruments import InstrumentRegistry
from training.pipeline import TINY, RunConfig
from training.quarantine import QuarantineError, ns_to_iso
from training.registry import ModelRegistry

MIN = 60_000_000_000
RUN = RunConfig(pretrain_steps=10, train_steps=20, batch_size=16, distill=False, seed=1)
SPEC = EvalSpec(
    behaviour=StrategyConfig(
        name="momentum",
        params={
            "imbalance_threshold": 0.1,
            "microprice_threshold_bp": 0.05,
            "flow_threshold": 0.05,
            "evaluate_ms": 0,
        },
    ),
    instrument="BINANCE:BTC-USDT",
    window=4,
    step_s=10.0,
    episode_minutes=10.0,
    trials=(0.5, 1.0),
    primary=1.0,
)


def setup(root: Path, name: str) -> Setup:
    return Setup(
        registry_root=root / "models", work_dir=root / name, name=name, shape=TINY, run=RUN
    )


@pytest.fixture(scope="module")
def market(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("rl")
    manifest = generate(
        SynthSpec(
            out_dir=str(root / "data"),
            hours=1.5,
            seed=11,
            exchanges=("binance",),
            symbols=("BTC-USDT",),
            perps=False,
        )
    )
    config = load_config()
    journal = SqliteJournal(root / "j.db")
    registry = InstrumentRegistry(list(config.instruments.instruments))
    import_files(journal, registry, [f.path for f in manifest.files])
    info = [s for s in journal.streams() if s.stream.startswith("md.")]
    lo = min(s.first_ts for s in info)
    hi = max(s.last_ts for s in info) + 1
    yield journal, config, lo, hi, root
    journal.close()


def test_walk_forward_trains_per_fold_and_replays_out_of_sample_frozen(market) -> None:  # type: ignore[no-untyped-def]
    journal, config, lo, hi, root = market
    windows = windows_ns(lo, hi, 40 * MIN, 20 * MIN, 20 * MIN)
    assert len(windows) == 2 and windows[1][0] == lo + 20 * MIN
    report = walk_forward_eval(journal, config, SPEC, windows, setup(root, "t"))
    assert len(report.folds) == 2
    reg = ModelRegistry(root / "models")
    for i, (fold, (_a, _b, oos_lo, oos_hi)) in enumerate(zip(report.folds, windows, strict=True)):
        assert fold["model"] == f"t-wf{i}@v1"
        assert fold["out_of_sample"] == [ns_to_iso(oos_lo), ns_to_iso(oos_hi)]
        record = reg.get(f"t-wf{i}", 1)
        assert record.data_to_ns <= oos_lo  # trained on the in-sample range only
        for t, trial in fold["trials"].items():
            assert trial["frozen"] is True
            session = load_session(journal, trial["session"], config)
            (loaded,) = [e for _, e in session.events if isinstance(e, ModelLoaded)]
            assert (loaded.model_id, loaded.weights_hash) == (record.model_id, record.weights_hash)
            assert loaded.frozen_verified
            eq = [e.equity for _, e in session.events if isinstance(e, PortfolioSnapshot)]
            assert trial["n_periods"] == max(0, len(eq) - 1)
            if len(eq) >= 2:
                assert trial["total_return"] == pytest.approx(eq[-1] / eq[0] - 1, rel=1e-9)
            assert float(t) in SPEC.trials
        # the primary trial's figures are the fold's
        assert fold["sharpe"] == fold["trials"]["1"]["sharpe"]
    assert report.summary["folds"] == 2 and report.summary["n_trials"] == 2


def test_cpcv_purges_embargoes_and_joins_paths(market) -> None:  # type: ignore[no-untyped-def]
    journal, config, lo, hi, root = market
    report = cpcv_eval(
        journal,
        config,
        SPEC,
        lo,
        hi,
        3,
        2,
        5 * MIN,
        2 * MIN,
        setup(root, "c"),
    )
    g = [lo + (hi - lo) * i // 3 for i in range(4)]
    assert [s["test_groups"] for s in report.folds] == [[0, 1], [0, 2], [1, 2]]
    iso = ns_to_iso
    assert [s["train_ranges"] for s in report.folds] == [
        [[iso(g[2] + 2 * MIN), iso(g[3])]],  # after test group 1: embargo
        [[iso(g[1] + 2 * MIN), iso(g[2] - 5 * MIN)]],  # between the tests: both
        [[iso(g[0]), iso(g[1] - 5 * MIN)]],  # before test group 1: purge
    ]
    assert report.summary["splits"] == 3 and report.summary["paths"] == 2
    # path p joins, per group, the p-th split that tested it: C(N-1, k-1) = 2 paths
    assert [p["splits"] for p in report.summary["path_metrics"]] == [[0, 0, 1], [1, 2, 2]]


def test_tampered_weights_are_refused_before_the_replay(market, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    journal, config, lo, _hi, root = market
    reg = ModelRegistry(root / "models")
    record = reg.get("t-wf0", 1)
    copy = tmp_path / "t-wf0" / "v1"  # a registry laid out the same way
    import shutil

    shutil.copytree(record.path, copy)
    weights = copy / record.weights_path.name
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    tampered = replace(record, path=copy)
    with pytest.raises(Exception, match="sha256"):
        frozen_replay(journal, config, tampered, lo, lo + 10 * MIN, SPEC, 1.0, "tampered")


def test_walk_forward_refuses_training_inside_the_quarantine(market) -> None:  # type: ignore[no-untyped-def]
    journal, config, lo, hi, root = market
    from datetime import UTC, datetime

    soon_after = datetime.fromtimestamp(hi / 1e9 + 86400, UTC)  # a day after the data
    with pytest.raises(QuarantineError):
        walk_forward_eval(
            journal,
            config,
            SPEC,
            windows_ns(lo, hi, 40 * MIN, 20 * MIN, 20 * MIN),
            replace(setup(root, "q"), clock=lambda: soon_after),
        )


@pytest.mark.slow
def test_rl_demo_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    assert main(["rl-demo", "--out", str(out), "--hours", "1", "-q"]) == 0
    doc = json.loads((out / "report.json").read_text())
    assert doc["train"]["models"] == ["demo-dt@v1", "demo-dt-fast@v1"]
    assert doc["train"]["checks"] == {"quarantine": True, "encoder_frozen": True}
    wf = doc["walk_forward"]
    assert len(wf["folds"]) == 2
    assert all(t["frozen"] for f in wf["folds"] for t in f["trials"].values())
    assert (out / "trajectories" / "manifest.json").is_file()
    assert sorted(p.name for p in (out / "models").iterdir()) == [
        "demo-dt",
        "demo-dt-fast",
        "demo-dt-wf0",
        "demo-dt-wf1",
    ]
