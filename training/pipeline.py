"""Training runs end to end, and the model refresh.

:func:`train_new` takes a trajectory dataset (journal_tools/trajectories.py export) to a
registered model: quarantine checks (at load and at training start), seeded
self-supervised pre-training of the feature encoder (training/encoder.py), the Decision
Transformer over the then FROZEN encoder (training/trainer.py), optionally its distilled
fast student (training/distill.py, registered as ``<name>-fast``), each registered in
the model registry (training/registry.py) with the data range, the quarantine cutoff,
the feature names and the training figures.

Refresh (``tickerml train --refresh weekly|monthly``; the schedule is :data:`SCHEDULE`,
docs/training.md has the cron lines):

* weekly (Mondays 02:00 UTC): the latest model's **outer two blocks** and its output
  heads are fine-tuned on the newest data (everything else, the frozen encoder
  included, keeps its weights: checked by hash), the feature statistics (per-feature
  mean and standard deviation, the correlation matrix) are recomputed and compared with
  the previous version's (drift in standard deviations per feature), and validation
  checks decide whether the new version is registered: the quarantine, the encoder
  hash, the untouched blocks' hash, and the held-out loss (the last episodes of the new
  data, purged) no worse than ``max_loss_increase`` over the current model's.
* monthly (the 1st, 03:00 UTC): a full retrain (new pre-training, new Decision
  Transformer), volatility-regime detection over the data (terciles of each episode's
  realised volatility of the first feature: calm / normal / turbulent, with their
  shares) recorded with the version, and the comprehensive backtest: the walk-forward
  report (training/evaluation.py) when a journal range is given.

Inputs are standardised by the encoder itself (``FeatureEncoder.set_normalisation``,
fitted on the pre-training data and frozen with the encoder: part of its hash). The
weekly refresh cannot refit them without unfreezing the encoder, so it recomputes the
statistics, records them with the version and reports the drift (in the encoder's
standard deviations); a drift beyond ``drift_alert_sd`` says the monthly refresh (which
refits them) is due.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from training.config import ModelSettings
from training.dataset import TrajectoryDataset, load_trajectories, purged_split
from training.decision_transformer import DecisionTransformer, DTConfig
from training.distill import DistillConfig, distill
from training.encoder import EncoderConfig, FeatureEncoder, pretrain_encoder, weights_hash
from training.quarantine import QUARANTINE_DAYS, Clock, quarantine_cutoff_ns, utc_now
from training.registry import ModelMeta, ModelRecord, ModelRegistry
from training.trainer import ReplayBuffer, TrainConfig, train_decision_transformer

RefreshKind = Literal["weekly", "monthly"]


class PipelineError(ValueError):
    """A training run that cannot go on (the message says why)."""


# -- shapes ------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Shape:
    """The model's size: from config/model.yaml (:meth:`from_settings`) or a preset."""

    n_layers: int
    n_heads: int
    d_model: int
    context_len: int
    max_timestep: int = 4096
    dropout: float = 0.1
    encoder_layers: int = 2
    encoder_heads: int = 4
    encoder_d_model: int = 64
    mask_ratio: float = 0.15

    @classmethod
    def from_settings(cls, s: ModelSettings) -> Shape:
        return cls(
            n_layers=s.n_layers,
            n_heads=s.n_heads,
            d_model=s.d_model,
            context_len=s.context_len,
            max_timestep=s.max_timestep,
            dropout=s.dropout,
            encoder_layers=s.encoder_layers,
            encoder_heads=s.encoder_heads,
            encoder_d_model=s.encoder_d_model,
            mask_ratio=s.mask_ratio,
        )

    def dt_config(self) -> DTConfig:
        return DTConfig(
            n_layers=self.n_layers,
            n_heads=self.n_heads,
            d_model=self.d_model,
            context_len=self.context_len,
            max_timestep=self.max_timestep,
            dropout=self.dropout,
        )


#: A small shape for the demo and the tests (minutes of CPU, not hours); production runs
#: use config/model.yaml (6-12 blocks, 8-16 heads, 128-512 dims).
TINY = Shape(
    n_layers=2,
    n_heads=2,
    d_model=32,
    context_len=8,
    max_timestep=512,
    dropout=0.0,
    encoder_layers=1,
    encoder_heads=2,
    encoder_d_model=16,
)


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    """How long and how to train (seeded: the same data and config give the same hashes
    on CPU)."""

    pretrain_steps: int = 200
    train_steps: int = 300
    distill_steps: int = 300
    batch_size: int = 32
    learning_rate: float = 3e-4
    seed: int = 0
    device: str = "cpu"
    distill: bool = True
    quarantine_days: int = QUARANTINE_DAYS
    holdout_episodes: int = 1
    max_loss_increase: float = 0.10  # weekly: refuse a version this much worse held-out
    drift_alert_sd: float = 3.0
    outer_layers: int = 2


@dataclass
class TrainReport:
    """What a run did; ``records`` are the versions it registered."""

    kind: str
    records: list[ModelRecord] = field(default_factory=list)
    pretrain_losses: list[float] = field(default_factory=list)
    train_losses: list[float] = field(default_factory=list)
    samples_per_s: float = 0.0
    holdout_loss: float | None = None
    previous_holdout_loss: float | None = None
    checks: dict[str, bool] = field(default_factory=dict)
    drift: dict[str, float] = field(default_factory=dict)
    regimes: dict[str, Any] = field(default_factory=dict)
    registered: bool = False
    reason: str = ""

    def summary(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "registered": self.registered,
            "reason": self.reason,
            "models": [r.model_id for r in self.records],
            "weights_hash": [r.weights_hash for r in self.records],
            "pretrain_loss_first_last": _ends(self.pretrain_losses),
            "train_loss_first_last": _ends(self.train_losses),
            "samples_per_s": round(self.samples_per_s, 1),
            "holdout_loss": self.holdout_loss,
            "previous_holdout_loss": self.previous_holdout_loss,
            "checks": self.checks,
            "max_drift_sd": max(self.drift.values(), default=None),
            "regimes": self.regimes,
        }


def _ends(xs: list[float]) -> list[float]:
    return [round(xs[0], 6), round(xs[-1], 6)] if xs else []


# -- statistics ----------------------------------------------------------------------------


def feature_stats(ds: TrajectoryDataset) -> dict[str, Any]:
    """Per feature mean / sd of each step's newest row, and their correlation matrix."""
    rows = ds.states[:, -1, :].astype(np.float64)
    mean = rows.mean(axis=0)
    sd = rows.std(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        corr = np.atleast_2d(np.corrcoef(rows.T)) if len(rows) > 1 else np.eye(rows.shape[1])
    corr = np.asarray(np.nan_to_num(corr, nan=0.0), dtype=np.float64)
    return {
        "names": list(ds.feature_names),
        "mean": [float(x) for x in mean],
        "sd": [float(x) for x in sd],
        "corr": [[round(float(x), 6) for x in row] for row in corr],
        "n": len(rows),
    }


def drift(previous: dict[str, Any], now: dict[str, Any]) -> dict[str, float]:
    """|mean now - mean then| in the then standard deviations, per feature present in
    both (a constant feature that moved counts as inf)."""
    out = {}
    pairs = zip(previous["mean"], previous["sd"], strict=True)
    then = dict(zip(previous.get("names", []), pairs, strict=True))
    for name, m in zip(now["names"], now["mean"], strict=True):
        if name not in then:
            continue
        m0, sd0 = then[name]
        d = abs(m - m0)
        out[name] = round(d / sd0, 4) if sd0 > 0 else (0.0 if d == 0 else math.inf)
    return out


def volatility_regimes(ds: TrajectoryDataset, feature: int = 0) -> dict[str, Any]:
    """Each episode's realised volatility (sd of the step-to-step change of feature
    ``feature``'s newest value) split at the terciles into calm / normal / turbulent."""
    vols = []
    for ep in np.unique(ds.episode_ids):
        x = ds.states[ds.episode_ids == ep, -1, feature].astype(np.float64)
        vols.append(float(np.std(np.diff(x))) if len(x) > 2 else 0.0)
    v = np.asarray(vols)
    if len(v) == 0:
        return {}
    lo, hi = np.quantile(v, [1 / 3, 2 / 3])
    labels = np.where(v <= lo, 0, np.where(v <= hi, 1, 2))
    names = ("calm", "normal", "turbulent")
    return {
        "feature": ds.feature_names[feature],
        "thresholds": [float(lo), float(hi)],
        "episodes": {n: int((labels == i).sum()) for i, n in enumerate(names)},
        "last_episode": names[int(labels[-1])],
    }


# -- building and training -------------------------------------------------------------------


def pretrained_encoder(
    ds: TrajectoryDataset, shape: Shape, run: RunConfig
) -> tuple[FeatureEncoder, list[float]]:
    torch.manual_seed(run.seed)
    enc = FeatureEncoder(
        EncoderConfig(
            n_features=ds.states.shape[2],
            window=ds.states.shape[1],
            d_model=shape.encoder_d_model,
            n_heads=shape.encoder_heads,
            n_layers=shape.encoder_layers,
            dropout=shape.dropout,
        )
    )
    rows = ds.states.reshape(-1, ds.states.shape[2]).astype(np.float64)
    enc.set_normalisation(rows.mean(axis=0), rows.std(axis=0))
    losses = pretrain_encoder(
        enc,
        ds.states,
        ds.episode_ids,
        steps=run.pretrain_steps,
        batch_size=run.batch_size,
        mask_ratio=shape.mask_ratio,
        seed=run.seed,
    )
    return enc, losses


def _train_cfg(run: RunConfig, steps: int) -> TrainConfig:
    return TrainConfig(
        steps=steps,
        batch_size=run.batch_size,
        learning_rate=run.learning_rate,
        seed=run.seed,
        device=run.device,
        quarantine_days=run.quarantine_days,
    )


def holdout_loss(model: DecisionTransformer, ds: TrajectoryDataset) -> float:
    """The mean loss over every context window of ``ds`` (deterministic, eval mode)."""
    model.eval()
    buffer = ReplayBuffer(ds, model.cfg.context_len)
    total, n = 0.0, 0
    with torch.inference_mode():
        for i in range(0, len(buffer.ends), 64):
            batch = buffer.batch(buffer.ends[i : i + 64])
            loss, _ = model.loss(batch)
            k = len(buffer.ends[i : i + 64])
            total += float(loss) * k
            n += k
    return total / max(n, 1)


def _split(ds: TrajectoryDataset, run: RunConfig) -> tuple[TrajectoryDataset, TrajectoryDataset]:
    """(train, held out): the last ``holdout_episodes`` episodes held out, purged."""
    n_ep = ds.n_episodes
    if n_ep <= run.holdout_episodes:
        raise PipelineError(
            f"the dataset has {n_ep} episode(s); a refresh needs more than "
            f"holdout_episodes={run.holdout_episodes} to hold some out"
        )
    first = int(ds.episode_start_ns[n_ep - run.holdout_episodes])
    train, test = purged_split(ds, [(first, int(ds.episode_end_ns.max()) + 1)])
    return ds.select_episodes(train), ds.select_episodes(test)


def _meta(ds: TrajectoryDataset, run: RunConfig, clock: Clock | None, **extra: Any) -> ModelMeta:
    ranges = ds.manifest.get("ranges") or [[int(ds.ts_ns.min()), int(ds.ts_ns.max()) + 1]]
    return ModelMeta(
        data_from_ns=int(ranges[0][0]),
        data_to_ns=int(ranges[-1][1]),
        quarantine_cutoff_ns=quarantine_cutoff_ns(run.quarantine_days, clock),
        feature_names=ds.feature_names,
        extra={
            "dataset_hash": ds.manifest.get("dataset_hash", ""),
            "run": dataclasses.asdict(run),
            **extra,
        },
    )


def _register(
    registry: ModelRegistry,
    name: str,
    model: DecisionTransformer,
    ds: TrajectoryDataset,
    run: RunConfig,
    clock: Clock | None,
    report: TrainReport,
    **extra: Any,
) -> None:
    record = registry.register(name, model, _meta(ds, run, clock, **extra))
    report.records.append(record)
    if run.distill:
        student, result = distill(
            model,
            ds,
            DistillConfig(
                steps=run.distill_steps, seed=run.seed, quarantine_days=run.quarantine_days
            ),
            clock,
        )
        fast = registry.register(
            f"{name}-fast",
            student,
            _meta(ds, run, clock, teacher=record.model_id, agreement=result.agreement),
        )
        report.records.append(fast)
    report.registered = True


def train_new(
    dataset_dir: str | Path,
    registry: ModelRegistry,
    name: str,
    shape: Shape,
    run: RunConfig,
    clock: Clock | None = None,
    kind: str = "train",
) -> TrainReport:
    """Pre-train an encoder, train a Decision Transformer over it (frozen), register."""
    ds = load_trajectories(dataset_dir, clock, run.quarantine_days)
    report = TrainReport(kind=kind)
    enc, report.pretrain_losses = pretrained_encoder(ds, shape, run)
    torch.manual_seed(run.seed)
    model = DecisionTransformer(shape.dt_config(), enc)
    result = train_decision_transformer(model, ds, _train_cfg(run, run.train_steps), clock)
    report.train_losses = result.losses
    report.samples_per_s = result.samples_per_s
    report.checks = {
        "quarantine": True,
        "encoder_frozen": result.encoder_hash == model.encoder_hash,
    }
    stats = feature_stats(ds)
    extra: dict[str, Any] = {"feature_stats": stats, "refresh": kind}
    if kind == "monthly":
        report.regimes = volatility_regimes(ds)
        extra["regimes"] = report.regimes
    _register(registry, name, model, ds, run, clock, report, **extra)
    return report


def refresh_weekly(
    dataset_dir: str | Path,
    registry: ModelRegistry,
    name: str,
    run: RunConfig,
    clock: Clock | None = None,
) -> TrainReport:
    """Fine-tune the latest ``name``'s outer blocks and heads on the new data; register
    only if every validation check passes (see the module docstring)."""
    ds = load_trajectories(dataset_dir, clock, run.quarantine_days)
    current, record = registry.load(name)
    if not isinstance(current, DecisionTransformer):
        raise PipelineError(f"{record.model_id} is a {record.kind}, not a Decision Transformer")
    if tuple(record.feature_names) != tuple(ds.feature_names):
        raise PipelineError(
            f"{record.model_id} reads features {list(record.feature_names)}, the new data "
            f"has {list(ds.feature_names)}: run the monthly (full) refresh"
        )
    train_ds, held = _split(ds, run)
    report = TrainReport(kind="weekly")
    report.previous_holdout_loss = holdout_loss(current, held)
    model = _copy(current)
    n = len(model.blocks)
    outer = set(range(max(0, n - run.outer_layers), n))
    heads = ("ln_f.", "head_side.", "head_size.", "head_stop.", "head_risk.")
    tuned_prefixes = (*(f"blocks.{i}." for i in sorted(outer)), *heads)
    for pname, p in model.named_parameters():
        p.requires_grad_(pname.startswith(tuned_prefixes) and not pname.startswith("encoder."))
    inner_before = _hash_except(model, tuned_prefixes)
    result = train_decision_transformer(model, train_ds, _train_cfg(run, run.train_steps), clock)
    report.train_losses = result.losses
    report.samples_per_s = result.samples_per_s
    for p in model.parameters():  # as loaded models are: only the encoder frozen
        p.requires_grad_(True)
    for p in model.encoder.parameters():
        p.requires_grad_(False)
    report.holdout_loss = holdout_loss(model, held)
    stats = feature_stats(ds)
    previous = record.extra.get("feature_stats")
    report.drift = drift(previous, stats) if isinstance(previous, dict) else {}
    report.checks = {
        "quarantine": True,
        "encoder_hash_unchanged": weights_hash(model.encoder) == record.encoder_hash,
        "inner_layers_unchanged": _hash_except(model, tuned_prefixes) == inner_before,
        "holdout_loss_ok": report.holdout_loss
        <= report.previous_holdout_loss * (1 + run.max_loss_increase),
    }
    failed = [k for k, ok in report.checks.items() if not ok]
    if failed:
        report.reason = (
            f"not registered: {', '.join(failed)} failed (held-out loss "
            f"{report.holdout_loss:.6f} vs {report.previous_holdout_loss:.6f} of {record.model_id})"
        )
        return report
    _register(
        registry,
        name,
        model,
        ds,
        run,
        clock,
        report,
        feature_stats=stats,
        refresh="weekly",
        parent=record.model_id,
        drift_sd=report.drift,
        tuned=list(tuned_prefixes),
    )
    return report


def _copy(model: DecisionTransformer) -> DecisionTransformer:
    clone = DecisionTransformer(model.cfg, _encoder_copy(model.encoder))
    clone.load_state_dict(model.state_dict())
    return clone


def _encoder_copy(enc: FeatureEncoder) -> FeatureEncoder:
    out = FeatureEncoder(enc.config)
    out.load_state_dict(enc.state_dict())
    return out.eval()


def _hash_except(model: torch.nn.Module, prefixes: tuple[str, ...]) -> str:
    import hashlib

    h = hashlib.blake2b(digest_size=16)
    for k, v in sorted(model.state_dict().items()):
        if not k.startswith(prefixes):
            h.update(k.encode())
            h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


# -- schedule -------------------------------------------------------------------------------

#: When each refresh runs (UTC): weekly Mondays 02:00, monthly on the 1st at 03:00.
SCHEDULE: dict[str, dict[str, int | None]] = {
    "weekly": {"weekday": 0, "day": None, "hour": 2},
    "monthly": {"weekday": None, "day": 1, "hour": 3},
}
CRON = {"weekly": "0 2 * * 1", "monthly": "0 3 1 * *"}


def next_run(kind: RefreshKind, now: datetime | None = None) -> datetime:
    """The next scheduled time of ``kind`` strictly after ``now`` (UTC)."""
    now = (now or utc_now()).astimezone(UTC)
    rule = SCHEDULE[kind]
    hour = int(rule["hour"] or 0)
    if kind == "weekly":
        day = now.replace(hour=hour, minute=0, second=0, microsecond=0)
        day += timedelta(days=(int(rule["weekday"] or 0) - day.weekday()) % 7)
        return day if day > now else day + timedelta(days=7)
    first = now.replace(day=1, hour=hour, minute=0, second=0, microsecond=0)
    if first > now:
        return first
    year, month = (now.year + 1, 1) if now.month == 12 else (now.year, now.month + 1)
    return first.replace(year=year, month=month)


__all__ = [
    "CRON",
    "SCHEDULE",
    "TINY",
    "PipelineError",
    "RunConfig",
    "Shape",
    "TrainReport",
    "drift",
    "feature_stats",
    "holdout_loss",
    "next_run",
    "refresh_weekly",
    "train_new",
    "volatility_regimes",
]
