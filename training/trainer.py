"""Offline Decision Transformer training on a trajectory dataset.

Deterministic on CPU: one seed drives the replay buffer's sampling (numpy PCG64) and
torch's dropout (``torch.manual_seed``), so the same dataset, model init and config give
the same weights hash. At start the 30-day quarantine is checked again
(:func:`training.quarantine.check_data_max` on the data's and the manifest's newest
timestamp). On CUDA: BF16 autocast (no GradScaler: bf16 has fp32's range), the memory
fraction limit of config/model.yaml; ``NCCL_P2P_DISABLE=1`` is set for every run.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from training.config import ModelSettings
from training.dataset import TrajectoryDataset
from training.decision_transformer import DecisionTransformer, DTConfig
from training.encoder import EncoderConfig, FeatureEncoder, weights_hash
from training.quarantine import QUARANTINE_DAYS, Clock, check_data_max


class ReplayBuffer:
    """Context windows of K consecutive steps of one episode, sampled uniformly.

    A window ends at any step with at least K-1 steps before it in its episode (no
    padding, so attention needs only the causal mask). Episodes shorter than K give none;
    a dataset with none is an error."""

    def __init__(self, dataset: TrajectoryDataset, context_len: int) -> None:
        self.dataset = dataset
        self.k = context_len
        ends = [
            np.arange(sl.start + context_len - 1, sl.stop)
            for sl in dataset.episode_slices()
            if sl.stop - sl.start >= context_len
        ]
        self.ends = np.concatenate(ends) if ends else np.zeros(0, dtype=np.int64)
        if len(self.ends) == 0:
            raise ValueError(f"no episode has {context_len} steps (context_len)")

    def __len__(self) -> int:
        return len(self.ends)

    def batch(
        self, ends: np.ndarray, device: torch.device | None = None
    ) -> dict[str, torch.Tensor]:
        """The windows ending at the given step indices, as tensors ``[B, K, ...]``."""
        idx = ends[:, None] + np.arange(1 - self.k, 1)[None, :]
        ds = self.dataset
        out = {
            name: torch.from_numpy(np.ascontiguousarray(getattr(ds, name)[idx]))
            for name in (
                "states",
                "returns_to_go",
                "timesteps",
                "actions_side",
                "actions_size",
                "actions_stop",
                "rewards",
            )
        }
        return {k: v.to(device) for k, v in out.items()} if device is not None else out

    def sample(
        self, batch_size: int, rng: np.random.Generator, device: torch.device | None = None
    ) -> dict[str, torch.Tensor]:
        return self.batch(self.ends[rng.integers(0, len(self.ends), size=batch_size)], device)


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    steps: int = 100
    batch_size: int = 32
    learning_rate: float = 3e-4
    weight_decay: float = 0.01
    seed: int = 0
    device: str = "cpu"
    cuda_memory_fraction: float = 0.9
    quarantine_days: int = QUARANTINE_DAYS
    grad_clip: float = 1.0


@dataclass
class TrainResult:
    losses: list[float] = field(default_factory=list)
    samples: int = 0
    seconds: float = 0.0
    weights_hash: str = ""
    encoder_hash: str = ""

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.seconds if self.seconds > 0 else 0.0


def check_quarantine(dataset: TrajectoryDataset, days: int, clock: Clock | None) -> None:
    """The training-start quarantine check (QuarantineError if the data is too recent)."""
    newest = [int(dataset.ts_ns.max())] if len(dataset) else []
    if "max_data_ts_ns" in dataset.manifest:
        newest.append(int(dataset.manifest["max_data_ts_ns"]))
    for ts in newest:
        check_data_max(ts, days, clock)


def train_decision_transformer(
    model: DecisionTransformer,
    dataset: TrajectoryDataset,
    config: TrainConfig,
    clock: Clock | None = None,
) -> TrainResult:
    """Train in place; returns per-step losses, throughput and the final hashes. The
    frozen encoder's hash is checked after training (RuntimeError if it moved)."""
    os.environ["NCCL_P2P_DISABLE"] = "1"
    check_quarantine(dataset, config.quarantine_days, clock)
    device = torch.device(config.device)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.set_per_process_memory_fraction(config.cuda_memory_fraction, device)
    torch.manual_seed(config.seed)
    rng = np.random.Generator(np.random.PCG64(config.seed))
    buffer = ReplayBuffer(dataset, model.cfg.context_len)
    model.to(device)
    encoder_before = weights_hash(model.encoder)
    opt = torch.optim.AdamW(
        model.trainable_parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )
    model.train()
    result = TrainResult()
    start = time.perf_counter()
    for _ in range(config.steps):
        batch = buffer.sample(config.batch_size, rng, device)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=cuda):
            out = model(batch)
        loss, _ = model.loss(batch, out)
        opt.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        if config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.trainable_parameters(), config.grad_clip)
        opt.step()
        result.losses.append(float(loss.detach()))
        result.samples += config.batch_size
    if cuda:
        torch.cuda.synchronize(device)
    result.seconds = time.perf_counter() - start
    model.eval()
    result.encoder_hash = weights_hash(model.encoder)
    if result.encoder_hash != encoder_before:
        raise RuntimeError("the frozen encoder changed during training")
    result.weights_hash = weights_hash(model)
    return result


__all__ = [
    "ReplayBuffer",
    "TrainConfig",
    "TrainResult",
    "build_model",
    "check_quarantine",
    "train_decision_transformer",
]


def build_model(
    settings: ModelSettings, n_features: int, window: int, seed: int = 0
) -> DecisionTransformer:
    """A fresh (seeded) encoder + Decision Transformer of the configured shape."""
    torch.manual_seed(seed)
    encoder = FeatureEncoder(
        EncoderConfig(
            n_features=n_features,
            window=window,
            d_model=settings.encoder_d_model,
            n_heads=settings.encoder_heads,
            n_layers=settings.encoder_layers,
            dropout=settings.dropout,
        )
    )
    cfg = DTConfig(
        n_layers=settings.n_layers,
        n_heads=settings.n_heads,
        d_model=settings.d_model,
        context_len=settings.context_len,
        max_timestep=settings.max_timestep,
        dropout=settings.dropout,
        gradient_checkpointing=settings.gradient_checkpointing,
    )
    return DecisionTransformer(cfg, encoder)
