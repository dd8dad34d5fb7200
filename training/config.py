"""The model's typed, frozen, range-checked config (config/model.yaml).

:class:`kernel.config.ModelConfig` is the decoded YAML (types, unknown keys refused);
:class:`ModelSettings` is the same keys with the ranges of issue 9 checked, each error
naming its key: 6-12 Decision Transformer blocks, 8-16 heads, 128-512 dims,
``d_model % n_heads == 0``; context 1-1024 steps; quarantine >= 30 days.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import yaml

from kernel.config import ModelConfig
from training.quarantine import QUARANTINE_DAYS


class ModelConfigError(ValueError):
    """A config/model.yaml value outside its range (the message names the key)."""


_INT_RANGES: dict[str, tuple[int, int]] = {
    "n_layers": (6, 12),
    "n_heads": (8, 16),
    "d_model": (128, 512),
    "context_len": (1, 1024),
    "max_timestep": (1, 1 << 20),
    "encoder_layers": (1, 12),
    "encoder_heads": (1, 16),
    "encoder_d_model": (16, 512),
    "batch_size": (1, 1 << 16),
}


@dataclass(frozen=True, kw_only=True)
class ModelSettings:
    """config/model.yaml, validated. Defaults = the shipped file."""

    n_layers: int = 6
    n_heads: int = 8
    d_model: int = 256
    context_len: int = 64
    quarantine_days: int = QUARANTINE_DAYS
    dropout: float = 0.1
    max_timestep: int = 4096
    encoder_layers: int = 2
    encoder_heads: int = 4
    encoder_d_model: int = 64
    mask_ratio: float = 0.15
    gradient_checkpointing: bool = False
    learning_rate: float = 3e-4
    weight_decay: float = 0.01
    batch_size: int = 32
    cuda_memory_fraction: float = 0.9

    def __post_init__(self) -> None:
        for key, (lo, hi) in _INT_RANGES.items():
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ModelConfigError(f"model.{key} must be an integer, got {value!r}")
            if not lo <= value <= hi:
                raise ModelConfigError(f"model.{key} must be within {lo}..{hi}, got {value}")
        if self.d_model % self.n_heads:
            raise ModelConfigError(
                f"model.d_model ({self.d_model}) must be divisible by model.n_heads "
                f"({self.n_heads})"
            )
        if self.encoder_d_model % self.encoder_heads:
            raise ModelConfigError(
                f"model.encoder_d_model ({self.encoder_d_model}) must be divisible by "
                f"model.encoder_heads ({self.encoder_heads})"
            )
        if self.quarantine_days < QUARANTINE_DAYS:
            raise ModelConfigError(
                f"model.quarantine_days must be >= {QUARANTINE_DAYS}, got {self.quarantine_days}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ModelConfigError(f"model.dropout must be within [0, 1), got {self.dropout}")
        if not 0.0 < self.mask_ratio < 1.0:
            raise ModelConfigError(f"model.mask_ratio must be within (0, 1), got {self.mask_ratio}")
        if not self.learning_rate > 0.0:
            raise ModelConfigError(f"model.learning_rate must be > 0, got {self.learning_rate}")
        if self.weight_decay < 0.0:
            raise ModelConfigError(f"model.weight_decay must be >= 0, got {self.weight_decay}")
        if not 0.0 < self.cuda_memory_fraction <= 1.0:
            raise ModelConfigError(
                f"model.cuda_memory_fraction must be within (0, 1], got {self.cuda_memory_fraction}"
            )

    @classmethod
    def from_kernel(cls, config: ModelConfig) -> ModelSettings:
        """Validate the kernel's decoded :class:`ModelConfig`."""
        return cls(**msgspec.structs.asdict(config))

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def load_model_settings(path: str | Path) -> ModelSettings:
    """Read a model.yaml: unknown keys and wrong types refused by :class:`ModelConfig`,
    ranges by :class:`ModelSettings` (both as :class:`ModelConfigError`)."""
    raw = yaml.safe_load(Path(path).read_text()) or {}
    try:
        config = msgspec.convert(raw, ModelConfig)
    except msgspec.ValidationError as exc:
        raise ModelConfigError(f"{path}: {exc}") from None
    return ModelSettings.from_kernel(config)


__all__ = ["ModelConfigError", "ModelSettings", "load_model_settings"]
