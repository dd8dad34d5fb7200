"""Distil a trained Decision Transformer into a small fast student.

The student (:class:`DistilledPolicy`) reads the same inputs at one step: the step's
feature window (through a copy of the teacher's FROZEN encoder, the same weights and
hash) and the step's return-to-go; an MLP (``n_layers`` hidden layers of ``hidden``
units, GELU) maps ``[encoder embedding, return-to-go]`` to the teacher's heads: side
logits (hold/buy/sell), size (sigmoid), stop (softplus / 100) and risk logit. It is a
Markov approximation of the teacher: no context of earlier steps, so one decision costs
one encoder pass and a few small matmuls instead of a transformer over 3K tokens.

Targets (:func:`teacher_targets`): the teacher's outputs at every step of the dataset
with the context it would have had at inference, the steps of its episode up to the
step (at most ``context_len`` of them): the first ``context_len`` steps of an episode are
read off one window from the episode's start (causal attention: output t depends on
steps <= t only), every later step is the last output of the window ending at it.

Loss: ``T^2 KL(softmax(teacher / T) || softmax(student / T))`` + MSE(size) +
MSE(stop x 100) + MSE(risk logit), means over the batch. Seeded (torch and a PCG64 for
the batches) and single-process, so on CPU the same teacher, data and config give the
same student weights hash.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from training.dataset import TrajectoryDataset
from training.decision_transformer import (
    STOP_SCALE,
    DecisionTransformer,
    ModelLoadError,
    load_frozen_blob,
)
from training.encoder import FeatureEncoder, weights_hash
from training.quarantine import QUARANTINE_DAYS, Clock
from training.trainer import check_quarantine

DISTILLED_FORMAT = "tickerml-distilled/1"


@dataclass(frozen=True)
class StudentConfig:
    """Shape of the student MLP: ``n_layers`` hidden layers of ``hidden`` units."""

    hidden: int = 128
    n_layers: int = 2

    def __post_init__(self) -> None:
        if self.hidden < 1 or self.n_layers < 1:
            raise ValueError("hidden and n_layers must be >= 1")


class DistilledPolicy(nn.Module):
    """``forward(batch)`` -> ``side_logits [B,3]``, ``size [B]``, ``stop [B]``,
    ``risk_logit [B]`` for a batch of ``states [B,W,F]`` (or ``state_emb [B,d_enc]``)
    and ``returns_to_go [B]``. The encoder is frozen as in the Decision Transformer."""

    def __init__(self, cfg: StudentConfig, encoder: FeatureEncoder) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = encoder
        for p in self.encoder.parameters():
            p.requires_grad_(False)
        self.encoder.eval()
        layers: list[nn.Module] = []
        width = encoder.d_model + 1
        for _ in range(cfg.n_layers):
            layers += [nn.Linear(width, cfg.hidden), nn.GELU()]
            width = cfg.hidden
        layers.append(nn.Linear(width, 6))
        self.mlp = nn.Sequential(*layers)
        self.encoder_hash = weights_hash(encoder)

    def train(self, mode: bool = True) -> Self:
        super().train(mode)
        self.encoder.eval()
        return self

    @torch.no_grad()
    def embed_states(self, states: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.encoder(states)
        return out

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        emb = batch.get("state_emb")
        if emb is None:
            emb = self.embed_states(batch["states"])
        x = torch.cat([emb, batch["returns_to_go"][:, None].to(emb.dtype)], dim=1)
        out = self.mlp(x)
        return {
            "side_logits": out[:, :3],
            "size": torch.sigmoid(out[:, 3]),
            "stop": F.softplus(out[:, 4]) / STOP_SCALE,
            "risk_logit": out[:, 5],
        }

    def frozen_flags(self) -> dict[str, bool]:
        enc = self.encoder
        return {
            "encoder_requires_grad": any(p.requires_grad for p in enc.parameters()),
            "encoder_training": enc.training,
        }

    def save(self, path: str | Path) -> str:
        """Write config, weights, the encoder's hash and frozen flags; returns the
        weights hash."""
        digest = weights_hash(self)
        torch.save(
            {
                "format": DISTILLED_FORMAT,
                "config": dataclasses.asdict(self.cfg),
                "encoder_config": dataclasses.asdict(self.encoder.config),
                "state_dict": self.state_dict(),
                "encoder_hash": self.encoder_hash,
                "weights_hash": digest,
                "flags": self.frozen_flags(),
            },
            Path(path),
        )
        return digest

    @classmethod
    def load(cls, path: str | Path, expected_encoder_hash: str | None = None) -> DistilledPolicy:
        """Read a saved student; the same refusals as :meth:`DecisionTransformer.load`."""
        blob, encoder = load_frozen_blob(path, DISTILLED_FORMAT, expected_encoder_hash)
        state = blob["state_dict"]
        model = cls(StudentConfig(**blob["config"]), encoder)
        model.load_state_dict(state)
        model.eval()
        if weights_hash(model) != blob["weights_hash"]:
            raise ModelLoadError(f"{path}: model weights do not match the recorded weights hash")
        return model


# -- teacher targets -----------------------------------------------------------------------


@torch.no_grad()
def teacher_targets(
    teacher: DecisionTransformer, dataset: TrajectoryDataset, chunk: int = 256
) -> dict[str, torch.Tensor]:
    """The teacher's outputs at every step with its inference-time context (module doc):
    ``state_emb [N,d_enc]`` (frozen encoder), ``side_logits [N,3]``, ``size``, ``stop``,
    ``risk_logit [N]`` and ``returns_to_go [N]``, float32, CPU."""
    teacher.eval()
    n = len(dataset)
    states = torch.from_numpy(dataset.states)
    emb = torch.cat([teacher.embed_states(states[i : i + chunk]) for i in range(0, n, chunk)])
    arrays = {
        name: torch.from_numpy(getattr(dataset, name))
        for name in ("returns_to_go", "timesteps", "actions_side", "actions_size", "actions_stop")
    }
    k = teacher.cfg.context_len
    out = {
        "side_logits": torch.zeros(n, 3),
        "size": torch.zeros(n),
        "stop": torch.zeros(n),
        "risk_logit": torch.zeros(n),
    }

    def run(idx: torch.Tensor) -> dict[str, torch.Tensor]:
        batch = {"state_emb": emb[idx], **{name: a[idx] for name, a in arrays.items()}}
        res: dict[str, torch.Tensor] = teacher(batch)
        return res

    later: list[int] = []
    for sl in dataset.episode_slices():
        head = torch.arange(sl.start, min(sl.stop, sl.start + k))
        res = run(head[None, :])
        for key in out:
            out[key][head] = res[key][0].float()
        later.extend(range(sl.start + k, sl.stop))
    ends = torch.tensor(later, dtype=torch.int64)
    offsets = torch.arange(1 - k, 1)
    for i in range(0, len(ends), chunk):
        e = ends[i : i + chunk]
        res = run(e[:, None] + offsets[None, :])
        for key in out:
            out[key][e] = res[key][:, -1].float()
    return {"state_emb": emb, "returns_to_go": arrays["returns_to_go"], **out}


# -- distillation --------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class DistillConfig:
    student: StudentConfig = field(default_factory=StudentConfig)
    steps: int = 500
    batch_size: int = 128
    learning_rate: float = 3e-3
    weight_decay: float = 0.0
    temperature: float = 1.0
    seed: int = 0
    quarantine_days: int = QUARANTINE_DAYS


@dataclass
class DistillResult:
    losses: list[float]
    agreement: float
    """Share of the dataset's steps where the student's argmax side is the teacher's."""
    weights_hash: str
    encoder_hash: str


def argmax_agreement(student: DistilledPolicy, targets: dict[str, torch.Tensor]) -> float:
    """Share of steps where the student's argmax side equals the teacher's."""
    with torch.inference_mode():
        pred = student(
            {"state_emb": targets["state_emb"], "returns_to_go": targets["returns_to_go"]}
        )["side_logits"].argmax(1)
    return float((pred == targets["side_logits"].argmax(1)).double().mean())


def distill(
    teacher: DecisionTransformer,
    dataset: TrajectoryDataset,
    config: DistillConfig | None = None,
    clock: Clock | None = None,
) -> tuple[DistilledPolicy, DistillResult]:
    """A student trained to match the teacher on ``dataset`` (quarantine checked first)."""
    config = config or DistillConfig()
    check_quarantine(dataset, config.quarantine_days, clock)
    teacher_hash = weights_hash(teacher)
    targets = teacher_targets(teacher, dataset)
    torch.manual_seed(config.seed)
    rng = np.random.Generator(np.random.PCG64(config.seed))
    student = DistilledPolicy(config.student, copy.deepcopy(teacher.encoder))
    if student.encoder_hash != teacher.encoder_hash:
        raise RuntimeError("the student's encoder copy is not the teacher's")
    opt = torch.optim.AdamW(
        [p for p in student.parameters() if p.requires_grad],
        lr=config.learning_rate,
        weight_decay=config.weight_decay,
    )
    t = config.temperature
    soft = F.log_softmax(targets["side_logits"] / t, dim=1)
    student.train()
    losses: list[float] = []
    n = len(dataset)
    for _ in range(config.steps):
        idx = torch.from_numpy(rng.integers(0, n, size=config.batch_size))
        res = student(
            {"state_emb": targets["state_emb"][idx], "returns_to_go": targets["returns_to_go"][idx]}
        )
        kl = F.kl_div(
            F.log_softmax(res["side_logits"] / t, dim=1),
            soft[idx],
            reduction="batchmean",
            log_target=True,
        ) * (t * t)
        size = F.mse_loss(res["size"], targets["size"][idx])
        stop = F.mse_loss(res["stop"] * STOP_SCALE, targets["stop"][idx] * STOP_SCALE)
        risk = F.mse_loss(res["risk_logit"], targets["risk_logit"][idx])
        loss = kl + size + stop + risk
        opt.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        opt.step()
        losses.append(float(loss.detach()))
    student.eval()
    if weights_hash(teacher) != teacher_hash:
        raise RuntimeError("the teacher changed during distillation")
    return student, DistillResult(
        losses=losses,
        agreement=argmax_agreement(student, targets),
        weights_hash=weights_hash(student),
        encoder_hash=student.encoder_hash,
    )


__all__ = [
    "DISTILLED_FORMAT",
    "DistillConfig",
    "DistillResult",
    "DistilledPolicy",
    "StudentConfig",
    "argmax_agreement",
    "distill",
    "teacher_targets",
]
