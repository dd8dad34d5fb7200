"""Offline RL: trajectory datasets under the 30-day quarantine, validation, models.

Imports without torch; the torch modules (encoder, decision_transformer, trainer, iql,
distill) are imported by name."""

# -- data side: quarantine, trajectory dataset, validation (issue 9) --
from training.dataset import (
    DatasetError,
    TrajectoryDataset,
    load_trajectories,
    purged_split,
    save_trajectories,
    synthetic_trajectories,
)
from training.quarantine import (
    QUARANTINE_DAYS,
    QuarantineError,
    check_data_max,
    check_range_end,
    quarantine_cutoff_ns,
)
from training.registry import ModelMeta, ModelRecord, ModelRegistry, RegistryError
from training.validation import (
    cpcv_paths,
    cpcv_splits,
    deflated_sharpe_ratio,
    fold_metrics,
    probability_of_backtest_overfitting,
    walk_forward,
)

__all__ = [
    "QUARANTINE_DAYS",
    "DatasetError",
    "ModelMeta",
    "ModelRecord",
    "ModelRegistry",
    "QuarantineError",
    "RegistryError",
    "TrajectoryDataset",
    "check_data_max",
    "check_range_end",
    "cpcv_paths",
    "cpcv_splits",
    "deflated_sharpe_ratio",
    "fold_metrics",
    "load_trajectories",
    "probability_of_backtest_overfitting",
    "purged_split",
    "quarantine_cutoff_ns",
    "save_trajectories",
    "synthetic_trajectories",
    "walk_forward",
]
