"""Training runs and the refresh (training/pipeline.py): pre-train -> train -> distil ->
register, the weekly refresh touching only the outer blocks and heads and refusing a
worse model, the monthly retrain with regimes, drift and regimes on hand-made data, the
schedule, the encoder's input standardisation, quarantine refusal at load."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
import torch

from training.dataset import build_dataset, save_trajectories, synthetic_trajectories
from training.decision_transformer import DecisionTransformer
from training.encoder import EncoderConfig, FeatureEncoder, weights_hash
from training.pipeline import (
    CRON,
    TINY,
    PipelineError,
    RunConfig,
    drift,
    feature_stats,
    next_run,
    refresh_weekly,
    train_new,
    volatility_regimes,
)
from training.quarantine import QuarantineError
from training.registry import ModelRegistry

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
RUN = RunConfig(
    pretrain_steps=20, train_steps=30, distill_steps=30, batch_size=16, learning_rate=3e-3, seed=3
)


def clock() -> datetime:
    return NOW


def write(ds, path: Path) -> Path:  # type: ignore[no-untyped-def]
    lo, hi = int(ds.ts_ns.min()), int(ds.episode_end_ns.max()) + 1
    save_trajectories(
        ds,
        path,
        ranges=[(lo, hi)],
        policy="synthetic",
        config_hash="c",
        code_version="test",
        clock=clock,
    )
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    ds = synthetic_trajectories(n_episodes=6, steps=24, window=4, n_features=3, seed=1)
    return write(ds, tmp_path_factory.mktemp("pipe") / "data")


def test_train_new_registers_the_model_and_its_distilled_variant(
    data: Path, tmp_path: Path
) -> None:
    reg = ModelRegistry(tmp_path / "models", clock)
    report = train_new(data, reg, "dt", TINY, RUN, clock)
    assert [r.model_id for r in report.records] == ["dt@v1", "dt-fast@v1"]
    assert report.registered and report.checks == {"quarantine": True, "encoder_frozen": True}
    assert len(report.pretrain_losses) == 20 and len(report.train_losses) == 30
    assert np.mean(report.train_losses[-5:]) < np.mean(report.train_losses[:5])
    model, record = reg.load("dt")
    assert isinstance(model, DecisionTransformer)
    assert record.feature_names == ("f0", "f1", "f2")
    assert record.extra["feature_stats"]["n"] == 6 * 24
    assert record.extra["run"]["seed"] == 3
    # the encoder standardises its inputs with the pre-training data's statistics
    ds = synthetic_trajectories(n_episodes=6, steps=24, window=4, n_features=3, seed=1)
    rows = ds.states.reshape(-1, 3).astype(np.float64)
    assert np.allclose(model.encoder.norm_mean.numpy(), rows.mean(axis=0), atol=1e-6)
    assert np.allclose(model.encoder.norm_std.numpy(), rows.std(axis=0), atol=1e-5)
    _fast, fast_record = reg.load("dt-fast")
    assert fast_record.extra["teacher"] == "dt@v1"
    # seeded: the same run again gives the same weights
    again = train_new(data, ModelRegistry(tmp_path / "again", clock), "dt", TINY, RUN, clock)
    assert again.records[0].weights_hash == record.weights_hash


def test_weekly_refresh_tunes_only_the_outer_blocks_and_heads(data: Path, tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path / "models", clock)
    train_new(data, reg, "dt", TINY, replace(RUN, distill=False), clock)
    before, _ = reg.load("dt")
    run = replace(RUN, distill=False, max_loss_increase=10.0, outer_layers=1)
    report = refresh_weekly(data, reg, "dt", run, clock)
    assert report.registered, report.reason
    assert report.checks == {
        "quarantine": True,
        "encoder_hash_unchanged": True,
        "inner_layers_unchanged": True,
        "holdout_loss_ok": True,
    }
    after, record = reg.load("dt")
    assert record.version == 2 and record.extra["parent"] == "dt@v1"
    b, a = before.state_dict(), after.state_dict()
    changed = sorted({k.split(".")[0] + ("." + k.split(".")[1] if k.startswith("blocks") else "")
                      for k in b if not torch.equal(b[k], a[k])})  # fmt: skip
    # TINY has 2 blocks; outer_layers=1: only blocks.1, the final norm and the heads moved
    assert changed == ["blocks.1", "head_risk", "head_side", "head_size", "head_stop", "ln_f"]
    assert weights_hash(after.encoder) == weights_hash(before.encoder)
    assert report.drift == {"f0": 0.0, "f1": 0.0, "f2": 0.0}  # the same data as before


def test_weekly_refresh_refuses_a_worse_model_and_registers_nothing(
    data: Path, tmp_path: Path
) -> None:
    reg = ModelRegistry(tmp_path / "models", clock)
    train_new(data, reg, "dt", TINY, replace(RUN, distill=False), clock)
    # a loss may not grow at all, and must shrink by 100 %: impossible
    run = replace(RUN, distill=False, max_loss_increase=-1.0)
    report = refresh_weekly(data, reg, "dt", run, clock)
    assert not report.registered
    assert report.checks["holdout_loss_ok"] is False
    assert report.reason.startswith("not registered: holdout_loss_ok failed")
    assert reg.versions("dt") == [1]


def test_weekly_refresh_refuses_other_features(data: Path, tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path / "models", clock)
    train_new(data, reg, "dt", TINY, replace(RUN, distill=False), clock)
    other = synthetic_trajectories(n_episodes=6, steps=24, window=4, n_features=4, seed=1)
    with pytest.raises(PipelineError, match="run the monthly"):
        refresh_weekly(write(other, tmp_path / "other"), reg, "dt", RUN, clock)


def test_monthly_refresh_retrains_and_records_regimes(data: Path, tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path / "models", clock)
    report = train_new(data, reg, "dt", TINY, replace(RUN, distill=False), clock, kind="monthly")
    assert report.regimes["episodes"] == {"calm": 2, "normal": 2, "turbulent": 2}
    assert reg.latest("dt").extra["regimes"] == report.regimes


def test_training_refuses_data_inside_the_quarantine(data: Path, tmp_path: Path) -> None:
    ds = synthetic_trajectories(n_episodes=2, steps=8, window=4, n_features=3)
    write(ds, tmp_path / "d")
    # the data is from 2024; seen from 2024-01-15 it is inside the 30 days
    with pytest.raises(QuarantineError):
        train_new(
            tmp_path / "d",
            ModelRegistry(tmp_path / "m"),
            "dt",
            TINY,
            RUN,
            lambda: datetime(2024, 1, 15, tzinfo=UTC),
        )


def hand_dataset(series: list[list[float]]) -> object:
    """One episode per series; each step's window is the single row (value, 0)."""
    rows, ids = [], []
    for e, xs in enumerate(series):
        for x in xs:
            rows.append([[x, 0.0]])
            ids.append(e)
    n = len(rows)
    return build_dataset(
        states=np.array(rows, dtype=np.float32),
        actions_side=np.zeros(n, np.int64),
        actions_size=np.zeros(n),
        actions_stop=np.zeros(n),
        rewards=np.zeros(n),
        episode_ids=np.array(ids),
        ts_ns=np.arange(n, dtype=np.int64) * 10**10,
        feature_names=["x", "zero"],
    )


def test_feature_stats_drift_and_regimes_by_hand() -> None:
    # diffs (1, -1, 1) x 1, 2, 4: population sd sqrt(8/9) x 1, 2, 4
    ds = hand_dataset([[0, 1, 0, 1], [0, 2, 0, 2], [0, 4, 0, 4]])
    stats = feature_stats(ds)  # type: ignore[arg-type]
    assert stats["mean"] == [pytest.approx(14 / 12), 0.0]
    # x: 12 values, mean 7/6; E[x^2] = (2 + 8 + 32) / 12 = 3.5
    assert stats["sd"][0] == pytest.approx((3.5 - (7 / 6) ** 2) ** 0.5)
    later = dict(stats, mean=[stats["mean"][0] + 2 * stats["sd"][0], 0.0])
    assert drift(stats, later) == {"x": 2.0, "zero": 0.0}
    assert drift(stats, dict(stats, mean=[stats["mean"][0], 1.0]))["zero"] == float("inf")
    regimes = volatility_regimes(ds)  # type: ignore[arg-type]
    assert regimes["episodes"] == {"calm": 1, "normal": 1, "turbulent": 1}
    assert regimes["last_episode"] == "turbulent"
    # terciles by linear interpolation: at 2/3 between v0 and v1, 1/3 between v1 and v2
    s = (8 / 9) ** 0.5
    assert regimes["thresholds"] == [pytest.approx(s * (1 + 2 / 3)), pytest.approx(s * (2 + 2 / 3))]


def test_the_schedule() -> None:
    assert CRON == {"weekly": "0 2 * * 1", "monthly": "0 3 1 * *"}
    sunday = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
    assert next_run("weekly", sunday) == datetime(2026, 12, 7, 2, 0, tzinfo=UTC)
    monday_early = datetime(2026, 12, 7, 1, 59, tzinfo=UTC)
    assert next_run("weekly", monday_early) == datetime(2026, 12, 7, 2, 0, tzinfo=UTC)
    monday_at = datetime(2026, 12, 7, 2, 0, tzinfo=UTC)
    assert next_run("weekly", monday_at) == datetime(2026, 12, 14, 2, 0, tzinfo=UTC)
    assert next_run("monthly", sunday) == datetime(2027, 1, 1, 3, 0, tzinfo=UTC)
    first = datetime(2027, 2, 1, 2, 0, tzinfo=UTC)
    assert next_run("monthly", first) == datetime(2027, 2, 1, 3, 0, tzinfo=UTC)


def test_normalisation_is_part_of_the_frozen_encoder() -> None:
    enc = FeatureEncoder(
        EncoderConfig(n_features=2, window=3, d_model=8, n_heads=2, n_layers=1)
    ).eval()
    h0 = weights_hash(enc)
    x = torch.tensor([[[100.0, 1.0], [102.0, 0.0], [101.0, -1.0]]])
    before = enc(x)
    enc.set_normalisation(np.array([101.0, 0.0]), np.array([1.0, 0.0]))  # sd 0 -> 1
    assert weights_hash(enc) != h0
    assert torch.equal(enc.norm_std, torch.tensor([1.0, 1.0]))
    # standardised: the same as the identity encoder on (x - mean) / sd
    enc2 = FeatureEncoder(enc.config).eval()
    enc2.load_state_dict({**enc.state_dict(), "norm_mean": torch.zeros(2)})
    assert torch.allclose(enc(x), enc2(x - torch.tensor([101.0, 0.0])), atol=1e-6)
    assert not torch.allclose(before, enc(x))
    with pytest.raises(ValueError, match="finite"):
        enc.set_normalisation(np.array([np.nan, 0.0]), np.array([1.0, 1.0]))


def test_train_and_models_commands(data: Path, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    from journal_tools.cli import main

    reg = tmp_path / "models"
    args = ["--registry", str(reg), "--shape", "tiny", "--pretrain-steps", "5", "--steps", "5"]
    assert main(["train", "--data", str(data), "--name", "m", "--no-distill", *args]) == 0
    assert "train: registered m@v1" in capsys.readouterr().out
    assert main(["models", "verify", "m@1", "--registry", str(reg)]) == 0
    weights = ModelRegistry(reg).get("m", 1).weights_path
    blob = bytearray(weights.read_bytes())
    blob[-10] ^= 0x01
    weights.write_bytes(bytes(blob))
    capsys.readouterr()
    assert main(["models", "verify", "m", "--registry", str(reg)]) == 1
    assert "FAIL m@v1" in capsys.readouterr().out
    assert main(["train", "--schedule"]) == 0
    assert '"cron": "0 2 * * 1"' in capsys.readouterr().out
    assert main(["train", "--name", "m", *args]) == 2  # no --data
