"""Offline-RL data (issue 9): the quarantine, the trajectory dataset, CPCV, walk-forward,
overfitting measures, and ``tickerml export-trajectories`` end to end on a journal."""

from __future__ import annotations

import hashlib
import json
import math
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from freezegun import freeze_time

from adapters.config_loader import load_config
from adapters.journal import open_journal
from journal_tools.cli import main
from journal_tools.session import run_session
from kernel.config import StrategyConfig
from kernel.events import Decision, decode
from kernel.features import FeatureSet
from training.dataset import (
    DatasetError,
    TrajectoryDataset,
    build_dataset,
    load_trajectories,
    purged_split,
    save_trajectories,
    synthetic_trajectories,
)
from training.quarantine import (
    NS_PER_DAY,
    QuarantineError,
    check_data_max,
    check_range_end,
    datetime_to_ns,
    quarantine_cutoff_ns,
)
from training.validation import (
    add_months,
    cpcv_path_returns,
    cpcv_paths,
    cpcv_splits,
    deflated_sharpe_ratio,
    expected_max_sharpe,
    fold_metrics,
    probabilistic_sharpe_ratio,
    probability_of_backtest_overfitting,
    walk_forward,
)


def ns(text: str) -> int:
    return datetime_to_ns(datetime.fromisoformat(text).replace(tzinfo=UTC))


# -- quarantine ------------------------------------------------------------------------------


@freeze_time("2025-03-01T00:00:00Z")
def test_quarantine_cutoff_boundary_and_message() -> None:
    cutoff = ns("2025-01-30T00:00:00")  # 2025-03-01 - 30 days (February has 28)
    assert quarantine_cutoff_ns() == cutoff
    assert check_range_end(cutoff) == cutoff  # exactly 30 days: allowed
    assert check_data_max(cutoff) == cutoff
    with pytest.raises(QuarantineError) as exc:
        check_range_end(cutoff + 1)  # one ns later: refused
    assert "2025-01-30T00:00:00.000000001Z" in str(exc.value)
    with pytest.raises(QuarantineError) as exc:
        check_range_end(ns("2025-02-01T12:00:00"))
    msg = str(exc.value)
    assert "range end 2025-02-01T12:00:00.000000000Z" in msg
    assert "2.500 days too recent" in msg
    assert "up to 2025-01-30T00:00:00.000000000Z" in msg
    with pytest.raises(QuarantineError, match="newest data timestamp"):
        check_data_max(cutoff + NS_PER_DAY)
    with pytest.raises(QuarantineError, match="cannot be shorter than 30 days"):
        check_range_end(0, days=29)
    # a longer quarantine is stricter
    with pytest.raises(QuarantineError):
        check_range_end(cutoff, days=31)


def test_quarantine_clock_is_injectable() -> None:
    def clock() -> datetime:
        return datetime(2024, 6, 30, 12, 0, tzinfo=UTC)

    assert quarantine_cutoff_ns(30, clock) == ns("2024-05-31T12:00:00")
    check_range_end(ns("2024-05-31T12:00:00"), 30, clock)
    with pytest.raises(QuarantineError):
        check_range_end(ns("2024-05-31T12:00:01"), 30, clock)


# -- dataset ---------------------------------------------------------------------------------


def test_synthetic_dataset_contract_and_determinism(tmp_path: Path) -> None:
    ds = synthetic_trajectories(n_episodes=3, steps=5, window=4, n_features=6, seed=11)
    assert len(ds) == 15 and ds.n_episodes == 3
    assert ds.states.shape == (15, 4, 6) and ds.states.dtype == np.float32
    for name in ("actions_side", "timesteps", "episode_ids", "ts_ns", "episode_end_ns"):
        assert getattr(ds, name).dtype == np.int64
    assert ds.episode_ids.tolist() == [0] * 5 + [1] * 5 + [2] * 5
    assert ds.timesteps.tolist() == [0, 1, 2, 3, 4] * 3
    assert ds.episode_slices() == [slice(0, 5), slice(5, 10), slice(10, 15)]
    assert ds.episode_end_ns.tolist() == [ds.ts_ns[4], ds.ts_ns[9], ds.ts_ns[14]]
    # windows slide: row t of a state is row t+1 of the state before it
    np.testing.assert_array_equal(ds.states[1, :-1], ds.states[0, 1:])
    # the behaviour policy's rule on the last row
    f0 = ds.states[:, -1, 0]
    assert np.array_equal(ds.actions_side == 1, f0 > 0.5)
    assert np.array_equal(ds.actions_side == 2, f0 < -0.5)
    again = synthetic_trajectories(n_episodes=3, steps=5, window=4, n_features=6, seed=11)
    for name, arr in ds.arrays().items():
        np.testing.assert_array_equal(arr, getattr(again, name))
    a = save_trajectories(
        ds, tmp_path / "a", ranges=[(0, 1)], policy="p", config_hash="c", code_version="v"
    )
    b = save_trajectories(
        again, tmp_path / "b", ranges=[(0, 1)], policy="p", config_hash="c", code_version="v"
    )
    assert a["files"] == b["files"]  # same data, same bytes


def test_returns_to_go_is_checked() -> None:
    ds = synthetic_trajectories(2, 4, 2, 3, seed=1)
    bad = ds.returns_to_go.copy()
    bad[0] += 1.0
    fields: dict[str, Any] = {**ds.arrays(), "returns_to_go": bad}
    with pytest.raises(DatasetError, match="reverse cumulative sum"):
        TrajectoryDataset(**fields, feature_names=ds.feature_names)
    ids = ds.episode_ids.copy()
    ids[1] = 1  # 0, 1, 0, ... : not contiguous blocks
    fields = {**ds.arrays(), "episode_ids": ids}
    with pytest.raises(DatasetError, match="contiguous"):
        TrajectoryDataset(**fields, feature_names=ds.feature_names)


@pytest.mark.parametrize("fmt", ["npz", "parquet"])
def test_save_load_round_trip_and_hash(tmp_path: Path, fmt: str) -> None:
    ds = synthetic_trajectories(4, 6, 3, 5, seed=2)
    manifest = save_trajectories(
        ds,
        tmp_path,
        ranges=[(0, int(ds.ts_ns.max()) + 1)],
        policy="synthetic",
        config_hash="h",
        code_version="v",
        fmt=fmt,
    )
    name = "trajectories.npz" if fmt == "npz" else "trajectories.parquet"
    digest = hashlib.blake2b((tmp_path / name).read_bytes(), digest_size=32).hexdigest()
    assert manifest["files"] == {name: digest}
    assert manifest["max_data_ts_ns"] == int(ds.ts_ns.max())
    assert (manifest["n_episodes"], manifest["n_steps"], manifest["window"]) == (4, 24, 3)
    back = load_trajectories(tmp_path)
    for key, arr in ds.arrays().items():
        np.testing.assert_array_equal(arr, getattr(back, key))
        assert getattr(back, key).dtype == arr.dtype
    assert back.feature_names == ds.feature_names
    assert back.manifest == manifest
    data = bytearray((tmp_path / name).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (tmp_path / name).write_bytes(bytes(data))
    with pytest.raises(DatasetError, match="does not match the manifest"):
        load_trajectories(tmp_path)


def _recent(ds: TrajectoryDataset, start_ns: int) -> TrajectoryDataset:
    shift = start_ns - int(ds.ts_ns[0])
    return build_dataset(
        states=ds.states,
        actions_side=ds.actions_side,
        actions_size=ds.actions_size,
        actions_stop=ds.actions_stop,
        rewards=ds.rewards,
        episode_ids=ds.episode_ids,
        ts_ns=ds.ts_ns + shift,
        feature_names=ds.feature_names,
    )


def test_load_refuses_recent_data_even_when_the_manifest_lies(tmp_path: Path) -> None:
    ds = _recent(synthetic_trajectories(2, 3, 2, 2, seed=3), ns("2025-01-10T00:00:00"))
    newest = int(ds.ts_ns.max())
    with freeze_time("2025-02-05T00:00:00Z"), pytest.raises(QuarantineError):
        save_trajectories(
            ds, tmp_path, ranges=[(0, newest + 1)], policy="p", config_hash="c", code_version="v"
        )
    assert not (tmp_path / "manifest.json").exists()
    with freeze_time("2030-01-01T00:00:00Z"):
        save_trajectories(
            ds, tmp_path, ranges=[(0, newest + 1)], policy="p", config_hash="c", code_version="v"
        )
    manifest_path = tmp_path / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["max_data_ts_ns"] = ns("2024-01-01T00:00:00")  # the manifest lies
    manifest["ranges"] = [[0, ns("2024-01-01T00:00:00")]]
    manifest_path.write_text(json.dumps(manifest))
    with freeze_time("2025-02-05T00:00:00Z"), pytest.raises(QuarantineError) as exc:
        load_trajectories(tmp_path)  # the data's own newest timestamp is 26 days old
    assert "newest data timestamp" in str(exc.value)
    # the boundary: exactly 30 days after the newest step loads
    boundary = datetime.fromtimestamp(newest // 10**9, UTC) + timedelta(days=30)
    assert datetime_to_ns(boundary) == newest + 30 * NS_PER_DAY
    with freeze_time(boundary):
        assert len(load_trajectories(tmp_path)) == 6
    with freeze_time(boundary.replace(microsecond=0)) as frozen:
        frozen.tick(-1)  # one second before the boundary
        with pytest.raises(QuarantineError):
            load_trajectories(tmp_path)
    # and a manifest whose own claim is too recent is refused before any array is read
    manifest["max_data_ts_ns"] = ns("2029-12-31T00:00:00")
    manifest_path.write_text(json.dumps(manifest))
    with freeze_time("2030-01-01T00:00:00Z"), pytest.raises(QuarantineError):
        load_trajectories(tmp_path)


def test_purged_split_by_episode_end_times() -> None:
    # 5 episodes of 3 steps, 10 s apart, back to back: episode e spans [30e, 30e + 20] s
    ds = synthetic_trajectories(5, 3, 2, 2, seed=0)
    t0 = int(ds.ts_ns[0])
    s = 10**9
    assert (ds.episode_start_ns - t0).tolist() == [0, 30 * s, 60 * s, 90 * s, 120 * s]
    assert (ds.episode_end_ns - t0).tolist() == [20 * s, 50 * s, 80 * s, 110 * s, 140 * s]
    # test range [60 s, 81 s): episode 2 is inside; nothing straddles it
    train, test = purged_split(ds, [(t0 + 60 * s, t0 + 81 * s)])
    assert test.tolist() == [2] and train.tolist() == [0, 1, 3, 4]
    # test range [45 s, 81 s): episode 1 ends inside it (purged), episode 2 is the test
    train, test = purged_split(ds, [(t0 + 45 * s, t0 + 81 * s)])
    assert test.tolist() == [2] and train.tolist() == [0, 3, 4]
    # an embargo of 15 s after 81 s removes episode 3 (starts at 90 s), not 4 (120 s)
    train, test = purged_split(ds, [(t0 + 60 * s, t0 + 81 * s)], embargo_ns=15 * s)
    assert test.tolist() == [2] and train.tolist() == [0, 1, 4]
    sub = ds.select_episodes(train)
    assert sub.n_episodes == 3 and sub.episode_ids.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    np.testing.assert_array_equal(sub.episode_end_ns, ds.episode_end_ns[[0, 1, 4]])


# -- CPCV --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "k"), [(6, 2), (5, 1), (6, 3), (8, 2), (10, 4)])
def test_cpcv_counts(n: int, k: int) -> None:
    splits = cpcv_splits(10 * n, n, k)
    paths = cpcv_paths(n, k)
    assert len(splits) == math.comb(n, k)
    assert len(paths) == math.comb(n - 1, k - 1)
    # every path covers every group once; every (group, split) test pair is on one path
    pairs = [pair for path in paths for pair in path]
    assert all([g for g, _ in path] == list(range(n)) for path in paths)
    assert len(pairs) == len(set(pairs)) == math.comb(n, k) * k
    for train, test in splits:
        assert len(test) == 10 * k and len(train) == 10 * (n - k)
        assert not set(train.tolist()) & set(test.tolist())


def test_cpcv_six_groups_two_test_groups() -> None:
    assert len(cpcv_splits(60, 6, 2, 1, 1)) == 15
    assert len(cpcv_paths(6, 2)) == 5


def test_cpcv_paths_four_groups_by_hand() -> None:
    # splits in order: 0:(0,1) 1:(0,2) 2:(0,3) 3:(1,2) 4:(1,3) 5:(2,3)
    assert cpcv_paths(4, 2) == [
        [(0, 0), (1, 0), (2, 1), (3, 2)],
        [(0, 1), (1, 3), (2, 3), (3, 4)],
        [(0, 2), (1, 4), (2, 5), (3, 5)],
    ]


def test_cpcv_purge_and_embargo_index_by_index() -> None:
    # 16 samples, 4 groups of 4: G0 0-3, G1 4-7, G2 8-11, G3 12-15; purge 2 before each
    # test group, embargo 1 after each
    splits = cpcv_splits(16, 4, 2, purge=2, embargo=1)
    expected = [
        # (test groups, train)
        ((0, 1), [9, 10, 11, 12, 13, 14, 15]),  # 8 embargoed after G1
        ((0, 2), [5, 13, 14, 15]),  # 4 embargo(G0), 6-7 purge(G2), 12 embargo(G2)
        ((0, 3), [5, 6, 7, 8, 9]),  # 4 embargo(G0), 10-11 purge(G3)
        ((1, 2), [0, 1, 13, 14, 15]),  # 2-3 purge(G1), 12 embargo(G2)
        ((1, 3), [0, 1, 9]),  # 2-3 purge(G1), 8 embargo(G1), 10-11 purge(G3)
        ((2, 3), [0, 1, 2, 3, 4, 5]),  # 6-7 purge(G2)
    ]
    groups = [list(range(4 * g, 4 * g + 4)) for g in range(4)]
    assert len(splits) == len(expected)
    for (train, test), (combo, want_train) in zip(splits, expected, strict=True):
        assert test.tolist() == sorted(i for g in combo for i in groups[g])
        assert train.tolist() == want_train
        assert train.dtype == np.int64 and test.dtype == np.int64
    # unequal groups follow numpy.array_split: 10 samples in 3 groups = 4, 3, 3
    train, test = cpcv_splits(10, 3, 1, purge=1, embargo=2)[1]  # G1 = 4..6 is the test
    assert test.tolist() == [4, 5, 6] and train.tolist() == [0, 1, 2, 9]


def test_cpcv_path_returns_reassemble_each_sample_once() -> None:
    n, groups, k = 12, 4, 2
    splits = cpcv_splits(n, groups, k)
    # split s predicts sample i as 100 s + i: each path shows which split covered it
    oos = [100.0 * s + test.astype(float) for s, (_, test) in enumerate(splits)]
    paths = cpcv_path_returns(n, groups, k, oos)
    assert paths.shape == (3, 12)
    for p, path in enumerate(cpcv_paths(groups, k)):
        for g, s in path:
            idx = np.arange(3 * g, 3 * g + 3)
            np.testing.assert_array_equal(paths[p, idx], 100.0 * s + idx)


def test_cpcv_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        cpcv_splits(10, 1, 1)
    with pytest.raises(ValueError):
        cpcv_splits(10, 4, 4)
    with pytest.raises(ValueError):
        cpcv_splits(3, 4, 1)
    with pytest.raises(ValueError):
        cpcv_splits(10, 4, 1, purge=-1)


# -- walk-forward ---------------------------------------------------------------------------


def test_walk_forward_windows_by_hand() -> None:
    windows = walk_forward(datetime(2024, 1, 1), datetime(2025, 1, 1), 6, 1, 1)
    got = [(w.is_start, w.is_end, w.oos_start, w.oos_end) for w in windows]

    def d(y: int, m: int) -> datetime:
        return datetime(y, m, 1, tzinfo=UTC)

    assert got == [
        (d(2024, 1), d(2024, 7), d(2024, 7), d(2024, 8)),
        (d(2024, 2), d(2024, 8), d(2024, 8), d(2024, 9)),
        (d(2024, 3), d(2024, 9), d(2024, 9), d(2024, 10)),
        (d(2024, 4), d(2024, 10), d(2024, 10), d(2024, 11)),
        (d(2024, 5), d(2024, 11), d(2024, 11), d(2024, 12)),
        (d(2024, 6), d(2024, 12), d(2024, 12), d(2025, 1)),
    ]
    assert windows[0].ns() == (
        ns("2024-01-01T00:00:00"),
        ns("2024-07-01T00:00:00"),
        ns("2024-07-01T00:00:00"),
        ns("2024-08-01T00:00:00"),
    )
    # 3 months in-sample, 3 out, step 2: Jan-Apr/Apr-Jul, Mar-Jun/Jun-Sep; May-Aug/Aug-Nov
    w = walk_forward(datetime(2024, 1, 1), datetime(2024, 11, 1), 3, 3, 2)
    assert [(x.is_start.month, x.is_end.month, x.oos_end.month) for x in w] == [
        (1, 4, 7),
        (3, 6, 9),
        (5, 8, 11),
    ]


def test_walk_forward_validates_ranges_and_months() -> None:
    for is_m, oos_m, step in ((2, 1, 1), (13, 1, 1), (6, 0, 1), (6, 4, 1), (6, 1, 0)):
        with pytest.raises(ValueError):
            walk_forward(datetime(2024, 1, 1), datetime(2026, 1, 1), is_m, oos_m, step)
    assert walk_forward(datetime(2024, 1, 1), datetime(2024, 6, 1), 6, 1) == []
    assert add_months(datetime(2024, 1, 31), 1) == datetime(2024, 2, 29)
    assert add_months(datetime(2023, 11, 30), 3) == datetime(2024, 2, 29)


# -- metrics, PBO, deflated Sharpe ------------------------------------------------------------


def test_fold_metrics_by_hand() -> None:
    m = fold_metrics([0.01, -0.02, 0.03], periods_per_year=365)
    assert m.n_periods == 3
    assert m.total_return == pytest.approx(1.01 * 0.98 * 1.03 - 1, abs=1e-15)
    assert m.max_drawdown == pytest.approx(0.02, abs=1e-15)  # from 1.01 to 0.9898
    assert m.win_rate == pytest.approx(2 / 3)
    assert m.profit_factor == pytest.approx(0.04 / 0.02)
    # mean 0.02/3, sample sd sqrt(0.0038/3/2): Sharpe x sqrt(365)
    sd = math.sqrt(((0.01 - 0.02 / 3) ** 2 + (-0.02 - 0.02 / 3) ** 2 + (0.03 - 0.02 / 3) ** 2) / 2)
    assert m.sharpe == pytest.approx(0.02 / 3 / sd * math.sqrt(365), rel=1e-12)
    t = fold_metrics([0.01, 0.0], 365, trade_pnls=[5.0, -1.0, -1.0, 3.0])
    assert t.win_rate == 0.5 and t.profit_factor == 4.0


def test_pbo_hand_example() -> None:
    # 4 periods (one per submatrix) x 3 configurations, metric = mean
    m = np.array([[4, 1, 2], [2, 3, 0], [0, 2, 3], [1, 0, 4]], dtype=float)
    r = probability_of_backtest_overfitting(m, n_submatrices=4, metric="mean")
    # in-sample {0,1}: A best (6 vs 4, 2); OOS {2,3} sums 1, 2, 7 -> A ranks 1 -> w = 1/4
    # {0,2}: C (5) -> OOS {1,3}: 3, 3, 4 -> rank 3 -> 3/4;  {0,3}: C -> OOS 2, 5, 3 -> 2/4
    # {1,2}: B (5) -> OOS 5, 1, 6 -> 1/4;  {1,3}: C -> OOS 4, 3, 5 -> 3/4
    # {2,3}: C (7) -> OOS 6, 4, 2 -> 1/4
    assert r.n_combinations == 6
    assert r.best_in_sample.tolist() == [0, 2, 2, 1, 2, 2]
    np.testing.assert_allclose(r.omega, [0.25, 0.75, 0.5, 0.25, 0.75, 0.25])
    ln3 = math.log(3)
    np.testing.assert_allclose(r.logits, [-ln3, ln3, 0.0, -ln3, ln3, -ln3], atol=1e-15)
    assert r.pbo == pytest.approx(4 / 6)  # logits <= 0


def test_pbo_dominant_configuration_is_not_overfit() -> None:
    rng = np.random.default_rng(0)
    base = rng.normal(0, 0.01, size=(64, 5))
    base[:, 3] = np.abs(base[:, 3]) + 0.05  # always the best, in and out of sample
    r = probability_of_backtest_overfitting(base, n_submatrices=8)
    assert r.n_combinations == math.comb(8, 4)
    assert r.pbo == 0.0 and set(r.best_in_sample.tolist()) == {3}
    assert np.allclose(r.omega, 5 / 6)


def test_deflated_sharpe_paper_example() -> None:
    # Bailey & Lopez de Prado (2014), numerical example: 100 trials, best annualised SR
    # 2.5 over 5 years of daily returns (T = 1250), variance of the trials' annualised SR
    # 0.5, skewness -3, kurtosis 10. Paper: SR0 = 0.1132 (per day), DSR = 0.9004.
    sr = 2.5 / math.sqrt(250)
    var = 0.5 / 250
    assert expected_max_sharpe(100, var) == pytest.approx(0.1132, abs=5e-5)
    dsr = deflated_sharpe_ratio(
        sr, n_obs=1250, n_trials=100, sharpe_variance=var, skew=-3, kurtosis=10
    )
    assert dsr == pytest.approx(0.9004, abs=5e-5)
    # one trial: no deflation; SR 0 against 0 is a coin toss
    assert expected_max_sharpe(1, var) == 0.0
    assert deflated_sharpe_ratio(0.0, 100, 1, var) == 0.5
    # PSR by hand for normal returns: Z(0.1 x sqrt(99) / sqrt(1 + 0.5 x 0.01))
    z = 0.1 * math.sqrt(99) / math.sqrt(1 + 0.005)
    assert probabilistic_sharpe_ratio(0.1, 0.0, 100) == pytest.approx(
        0.5 * (1 + math.erf(z / math.sqrt(2))), abs=1e-12
    )


# -- export-trajectories end to end ---------------------------------------------------------

START = "2025-01-01T00:00:00"
END = "2025-01-01T00:03:00"
STEP_S = 5
EPISODE_MIN = 1
WINDOW = 8


@pytest.fixture(scope="module")
def journal_dsn(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Three minutes of one synthetic market (BINANCE BTC-USDT) in a SQLite journal."""
    work = tmp_path_factory.mktemp("traj")
    data = work / "data"
    argv = ["synth", "--out", str(data), "--hours", "0.05", "--seed", "3", "-q"]
    assert main([*argv, "--exchanges", "binance", "--symbols", "BTC-USDT", "--no-perps"]) == 0
    dsn = f"sqlite:///{work / 'j.db'}"
    assert main(["import", "tardis", "--dir", str(data), "--journal", dsn, "-q"]) == 0
    return dsn


def export(dsn: str, out: Path, *extra: str) -> int:
    return main(
        [
            "export-trajectories",
            "--journal",
            dsn,
            "--from",
            START,
            "--to",
            END,
            "--policy",
            "taker",
            "--param",
            "every=20",
            "--out",
            str(out),
            "--window",
            str(WINDOW),
            "--episode-minutes",
            str(EPISODE_MIN),
            "--step-seconds",
            str(STEP_S),
            "-q",
            *extra,
        ]
    )


def test_export_refused_inside_the_quarantine_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "never.db"
    with freeze_time("2025-01-15T00:00:00Z"):
        assert export(f"sqlite:///{db}", tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert "range end 2025-01-01T00:03:00" in err and "too recent" in err
    assert not db.exists()  # the journal was not even opened
    assert not (tmp_path / "out").exists()


def test_export_at_exactly_thirty_days_passes(journal_dsn: str, tmp_path: Path) -> None:
    with freeze_time("2025-01-31T00:02:59.999999Z"):
        assert export(journal_dsn, tmp_path / "early") == 2
    with freeze_time("2025-01-31T00:03:00Z"):
        assert export(journal_dsn, tmp_path / "ok") == 0
    manifest = json.loads((tmp_path / "ok" / "manifest.json").read_text())
    assert manifest["quarantine_cutoff_ns"] == ns(END)


def test_export_end_to_end(journal_dsn: str, tmp_path: Path) -> None:
    out = tmp_path / "traj"
    assert export(journal_dsn, out) == 0
    ds = load_trajectories(out)
    names = FeatureSet().names
    n = len(ds)
    lo, hi = ns(START), ns(END)
    step, episode = STEP_S * 10**9, EPISODE_MIN * 60 * 10**9

    # shapes and dtypes of the contract
    assert ds.states.shape == (n, WINDOW, len(names)) and ds.states.dtype == np.float32
    assert ds.feature_names == names
    for name in ("actions_side", "timesteps", "episode_ids", "ts_ns"):
        assert getattr(ds, name).shape == (n,) and getattr(ds, name).dtype == np.int64
    for name in ("actions_size", "actions_stop", "rewards", "returns_to_go"):
        assert getattr(ds, name).shape == (n,) and getattr(ds, name).dtype == np.float32

    # episodes: monotone contiguous ids, fixed one-minute time windows from --from
    ids = ds.episode_ids
    assert ids[0] == 0 and np.all(np.diff(ids) >= 0) and np.all(np.diff(ids) <= 1)
    assert ds.n_episodes == 3
    assert np.all((ds.ts_ns - lo) // episode == ids)
    assert np.all(np.diff(ds.ts_ns) >= 0) and ds.ts_ns.max() < hi
    for e, sl in enumerate(ds.episode_slices()):
        assert ds.timesteps[sl].tolist() == list(range(sl.stop - sl.start))
        assert ds.episode_end_ns[e] == ds.ts_ns[sl.stop - 1]
        # returns-to-go: the reverse cumulative sum of the episode's rewards, exactly
        want = np.cumsum(ds.rewards[sl].astype(np.float64)[::-1])[::-1].astype(np.float32)
        np.testing.assert_array_equal(ds.returns_to_go[sl], want)

    # hold steps on the grid; decision steps are exactly the policy's decisions in a replay
    hold = ds.actions_side == 0
    assert np.all((ds.ts_ns[hold] - lo) % step == 0)
    journal = open_journal(journal_dsn)
    try:
        stats = run_session(
            journal,
            load_config(None),
            start_ns=lo,
            end_ns=hi,
            exchanges=["BINANCE"],
            symbols=["BTC-USDT"],
            strategy=StrategyConfig(name="taker", params={"every": 20}),
        )
        decisions = [
            ev
            for rec in journal.read(f"session.{stats.session_id}")
            if isinstance(ev := decode(rec.payload), Decision)
        ]
    finally:
        journal.close()
    assert decisions and stats.fills > 0
    assert ds.ts_ns[~hold].tolist() == [d.ts_event for d in decisions]
    sides = [1 if d.action == "buy" else 2 for d in decisions]
    assert ds.actions_side[~hold].tolist() == sides
    assert ds.manifest["fills"] == stats.fills

    # size: 0.001 BTC at the mid over 10 000 USDT of equity (the first order); stops none
    first = int(np.flatnonzero(~hold)[0])
    mid_ticks = ds.states[first, -1, names.index("mid")]
    assert ds.actions_size[first] == pytest.approx(0.001 * mid_ticks * 0.01 / 10_000, rel=1e-5)
    assert np.all(ds.actions_size[hold] == 0) and np.all(ds.actions_stop == 0)
    # no position before the first order: equity flat, every reward exactly 0
    assert np.all(ds.rewards[:first] == 0) and np.any(ds.rewards[first:] != 0)
    # the state ends with the step's own features and slides along the hold grid
    h = np.flatnonzero(hold)
    a, b = h[WINDOW + 2], h[WINDOW + 3]
    np.testing.assert_array_equal(ds.states[b, :-1], ds.states[a, 1:])

    # manifest fields
    m = ds.manifest
    assert m["format"] == "tickerml-trajectories/1"
    assert m["ranges"] == [[lo, hi]]
    assert m["policy"] == "taker" and m["policy_params"] == {"every": 20}
    assert len(m["config_hash"]) == 64 and int(m["config_hash"], 16) >= 0
    assert m["code_version"].startswith("0.1.0")
    assert ds.ts_ns.max() <= m["max_data_ts_ns"] < hi
    assert m["quarantine_cutoff_ns"] > hi
    assert m["feature_names"] == list(names)
    assert (m["n_episodes"], m["n_steps"], m["window"]) == (3, n, WINDOW)
    digest = hashlib.blake2b((out / "trajectories.npz").read_bytes(), digest_size=32)
    assert m["files"] == {"trajectories.npz": digest.hexdigest()}
    assert m["instrument"] == "BINANCE:BTC-USDT"

    # deterministic, and Parquet holds the same arrays
    assert export(journal_dsn, tmp_path / "again") == 0
    again = json.loads((tmp_path / "again" / "manifest.json").read_text())
    assert again["files"] == m["files"]
    assert export(journal_dsn, tmp_path / "pq", "--format", "parquet") == 0
    pq = load_trajectories(tmp_path / "pq")
    for key, arr in ds.arrays().items():
        np.testing.assert_array_equal(arr, getattr(pq, key))


def test_export_rejects_unknown_policy_and_instrument(
    journal_dsn: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["export-trajectories", "--journal", journal_dsn, "--from", START, "--to", END]
    assert main([*argv, "--policy", "nope", "--out", str(tmp_path / "a"), "-q"]) == 2
    assert "unknown strategy" in capsys.readouterr().err
    assert (
        main(
            [
                *argv,
                "--policy",
                "taker",
                "--instrument",
                "KRAKEN:XYZ",
                "--out",
                str(tmp_path / "b"),
                "-q",
            ]
        )
        == 2
    )
    assert "unknown instrument" in capsys.readouterr().err


def test_export_library_two_ranges_writes_nothing_to_the_journal(
    journal_dsn: str, tmp_path: Path
) -> None:
    from journal_tools.trajectories import ExportSpec, export_trajectories

    r1 = (ns("2025-01-01T00:00:00"), ns("2025-01-01T00:01:00"))
    r2 = (ns("2025-01-01T00:02:00"), ns("2025-01-01T00:03:00"))
    spec = ExportSpec(
        ranges=(r1, r2),
        policy=StrategyConfig(name="taker", params={"every": 20}),
        window=4,
        episode_ns=30 * 10**9,
        step_ns=10 * 10**9,
    )
    journal = open_journal(journal_dsn)
    try:
        before = journal.streams()
        report = export_trajectories(
            journal,
            load_config(None),
            spec,
            tmp_path / "two",
            clock=lambda: datetime(2025, 2, 1, 0, 3, tzinfo=UTC),  # 31 days after r2
        )
        assert journal.streams() == before
        with pytest.raises(QuarantineError):
            export_trajectories(
                journal,
                load_config(None),
                spec,
                tmp_path / "refused",
                clock=lambda: datetime(2025, 1, 31, 0, 2, tzinfo=UTC),
            )
    finally:
        journal.close()
    assert not (tmp_path / "refused").exists()
    ds = load_trajectories(tmp_path / "two", clock=lambda: datetime(2025, 2, 1, tzinfo=UTC))
    assert ds.manifest["ranges"] == [list(r1), list(r2)]
    # two 30-second episodes per range, numbered on across the ranges
    assert report.n_episodes == ds.n_episodes == 4
    starts = [r1[0], r1[0] + 30 * 10**9, r2[0], r2[0] + 30 * 10**9]
    for e, sl in enumerate(ds.episode_slices()):
        assert np.all((ds.ts_ns[sl] >= starts[e]) & (ds.ts_ns[sl] < starts[e] + 30 * 10**9))
    assert not np.any((ds.ts_ns >= r1[1]) & (ds.ts_ns < r2[0]))
    assert ds.states.shape[1:] == (4, len(FeatureSet().names))
