"""The feature encoder: a small transformer over one feature window, pre-trained
self-supervised, then frozen under the Decision Transformer.

Input ``[B, W, F]`` float32 (a state of the trajectory format: W rows of F features,
oldest first); output ``[B, d]``, the last row's hidden state (bidirectional attention
inside the window: every row is in the past of the decision). Pre-training heads, kept
in the saved file: masked-feature reconstruction (per row, ``[B, W, F]``), next-step
return (``[B]``) and next-step direction (down/flat/up logits ``[B, 3]``).

:func:`weights_hash` is what the frozen backbone is checked against: blake2b-256 over
the state_dict in sorted key order, each entry as ``key``, dtype, shape and the raw
bytes of the contiguous CPU tensor.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

ENCODER_FORMAT = "tickerml-encoder/1"


class EncoderError(ValueError):
    """An encoder file that is not what it claims (format, hash)."""


def weights_hash(module: nn.Module) -> str:
    """blake2b-256 hex of a module's state_dict (sorted keys; key, dtype, shape, bytes)."""
    h = hashlib.blake2b(digest_size=32)
    state = module.state_dict()
    for key in sorted(state):
        t = state[key].detach().cpu().contiguous()
        h.update(key.encode())
        h.update(str(t.dtype).encode())
        h.update(repr(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


@dataclass(frozen=True)
class EncoderConfig:
    """Shape of the encoder: ``n_features`` F, ``window`` W (max rows), ``d_model``
    (divisible by ``n_heads``), ``n_layers`` blocks, ``dropout``."""

    n_features: int
    window: int
    d_model: int = 64
    n_heads: int = 4
    n_layers: int = 2
    dropout: float = 0.1

    def __post_init__(self) -> None:
        if min(self.n_features, self.window, self.d_model, self.n_heads, self.n_layers) < 1:
            raise ValueError("encoder sizes must be >= 1")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model {self.d_model} not divisible by n_heads {self.n_heads}")


class _Block(nn.Module):
    """Pre-LN transformer block; ``causal`` selects the mask of the attention."""

    def __init__(self, d: int, n_heads: int, dropout: float, causal: bool) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.causal = causal
        self.dropout = dropout
        self.ln1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.ln2 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))
        self.drop = nn.Dropout(dropout)

    def qkv_heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=2)
        shape = (b, t, self.n_heads, d // self.n_heads)
        return (
            q.view(shape).transpose(1, 2),
            k.view(shape).transpose(1, 2),
            v.view(shape).transpose(1, 2),
        )

    def attention_probs(self, x: torch.Tensor) -> torch.Tensor:
        """The attention probabilities ``[B, H, T, T]``, computed explicitly (audit)."""
        q, k, _ = self.qkv_heads(x)
        scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
        if self.causal:
            t = x.shape[1]
            mask = torch.ones(t, t, dtype=torch.bool, device=x.device).tril()
            scores = scores.masked_fill(~mask, float("-inf"))
        return torch.softmax(scores.float(), dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv_heads(x)
        y = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=self.causal
        )
        x = x + self.drop(self.proj(y.transpose(1, 2).reshape(b, t, d)))
        out: torch.Tensor = x + self.drop(self.mlp(self.ln2(x)))
        return out


class FeatureEncoder(nn.Module):
    """Transformer encoder over feature windows with its pre-training heads."""

    norm_mean: torch.Tensor
    norm_std: torch.Tensor

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.config = config
        d = config.d_model
        self.inp = nn.Linear(config.n_features, d)
        self.pos = nn.Embedding(config.window, d)
        self.mask_token = nn.Parameter(torch.zeros(config.n_features))
        self.blocks = nn.ModuleList(
            _Block(d, config.n_heads, config.dropout, causal=False) for _ in range(config.n_layers)
        )
        self.ln_f = nn.LayerNorm(d)
        self.recon_head = nn.Linear(d, config.n_features)
        self.return_head = nn.Linear(d, 1)
        self.direction_head = nn.Linear(d, 3)
        # input standardisation, fitted once before pre-training (set_normalisation) and
        # frozen with the rest: part of the weights hash. Identity until fitted.
        self.register_buffer("norm_mean", torch.zeros(config.n_features))
        self.register_buffer("norm_std", torch.ones(config.n_features))

    def set_normalisation(self, mean: np.ndarray, std: np.ndarray) -> None:
        """Standardise inputs as ``(x - mean) / std`` (a std under 1e-9 counts as 1): raw
        features span prices (~1e5) to imbalances (~1), which a linear input layer alone
        cannot balance. Fit on the pre-training data's rows, before pre-training."""
        m = torch.as_tensor(np.asarray(mean, dtype=np.float32))
        sd = torch.as_tensor(np.asarray(std, dtype=np.float32))
        if m.shape != (self.config.n_features,) or sd.shape != m.shape:
            raise ValueError(f"normalisation needs {self.config.n_features} means and stds")
        if not (torch.isfinite(m).all() and torch.isfinite(sd).all()):
            raise ValueError("normalisation statistics must be finite")
        self.norm_mean.copy_(m)
        self.norm_std.copy_(torch.where(sd < 1e-9, torch.ones_like(sd), sd))

    @property
    def d_model(self) -> int:
        return self.config.d_model

    def hidden(self, states: torch.Tensor, row_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Per-row hidden states ``[B, W, d]``; ``row_mask`` [B, W] bool replaces those
        rows by the learned mask token (pre-training)."""
        if states.ndim != 3 or states.shape[2] != self.config.n_features:
            raise ValueError(
                f"states must be [B, W, {self.config.n_features}], got {tuple(states.shape)}"
            )
        w = states.shape[1]
        if w > self.config.window:
            raise ValueError(f"window {w} is longer than the encoder's {self.config.window}")
        states = (states - self.norm_mean) / self.norm_std
        if row_mask is not None:
            states = torch.where(row_mask[..., None], self.mask_token.to(states.dtype), states)
        pos = torch.arange(w, device=states.device)
        x = self.inp(states) + self.pos(pos)
        for block in self.blocks:
            x = block(x)
        out: torch.Tensor = self.ln_f(x)
        return out

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        """The window's embedding ``[B, d]`` (its last row's hidden state)."""
        return self.hidden(states)[:, -1]

    def pretrain_loss(
        self,
        states: torch.Tensor,
        next_return: torch.Tensor,
        direction: torch.Tensor,
        row_mask: torch.Tensor,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Masked-row reconstruction MSE + next-step return MSE + direction CE."""
        h = self.hidden(states, row_mask)
        recon = self.recon_head(h)
        m = row_mask[..., None].expand_as(states).to(states.dtype)
        target = (states - self.norm_mean) / self.norm_std  # in the standardised space
        rec = ((recon - target) ** 2 * m).sum() / m.sum().clamp_min(1.0)
        last = h[:, -1]
        ret = F.mse_loss(self.return_head(last).squeeze(-1), next_return)
        dirl = F.cross_entropy(self.direction_head(last), direction)
        loss = rec + ret + dirl
        return loss, {"recon": rec.item(), "return": ret.item(), "direction": dirl.item()}

    def save(self, path: str | Path) -> str:
        """Write config, weights and their hash; returns the hash."""
        digest = weights_hash(self)
        torch.save(
            {
                "format": ENCODER_FORMAT,
                "config": dataclasses.asdict(self.config),
                "state_dict": self.state_dict(),
                "weights_hash": digest,
            },
            Path(path),
        )
        return digest

    @classmethod
    def load(cls, path: str | Path, expected_hash: str | None = None) -> FeatureEncoder:
        """Read a saved encoder; refuses (EncoderError) a wrong format, weights that do not
        match the recorded hash, or a hash other than ``expected_hash``. Returned in eval mode."""
        blob = torch.load(Path(path), map_location="cpu", weights_only=True)
        return cls.from_blob(blob, expected_hash, where=str(path))

    @classmethod
    def from_blob(
        cls, blob: dict[str, Any], expected_hash: str | None = None, where: str = "encoder"
    ) -> FeatureEncoder:
        if not isinstance(blob, dict) or blob.get("format") != ENCODER_FORMAT:
            raise EncoderError(f"{where}: not a {ENCODER_FORMAT} file")
        enc = cls(EncoderConfig(**blob["config"]))
        enc.load_state_dict(blob["state_dict"])
        got = weights_hash(enc)
        if got != blob["weights_hash"]:
            raise EncoderError(
                f"{where}: encoder weights hash {got} does not match the recorded "
                f"{blob['weights_hash']} (modified weights)"
            )
        if expected_hash is not None and got != expected_hash:
            raise EncoderError(f"{where}: encoder weights hash {got}, expected {expected_hash}")
        return enc.eval()


def pretrain_targets(
    states: np.ndarray, episode_ids: np.ndarray, feature: int = 0, flat: float = 0.1
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pre-training targets from a trajectory dataset's arrays: for each step with a next
    step in its episode, the next step's newest value of ``feature`` (the "return") and
    its direction (0 down: < -flat, 1 flat, 2 up: > flat). Returns (indices, next
    return float32, direction int64)."""
    ids = np.asarray(episode_ids)
    idx = np.flatnonzero(ids[:-1] == ids[1:]) if len(ids) > 1 else np.zeros(0, np.int64)
    nxt = states[idx + 1, -1, feature].astype(np.float32)
    direction = np.where(nxt > flat, 2, np.where(nxt < -flat, 0, 1)).astype(np.int64)
    return idx.astype(np.int64), nxt, direction


def pretrain_encoder(
    encoder: FeatureEncoder,
    states: np.ndarray,
    episode_ids: np.ndarray,
    *,
    steps: int = 100,
    batch_size: int = 32,
    lr: float = 1e-3,
    mask_ratio: float = 0.15,
    seed: int = 0,
    feature: int = 0,
) -> list[float]:
    """Seeded self-supervised pre-training on CPU; returns the loss of each step."""
    idx, nxt, direction = pretrain_targets(states, episode_ids, feature)
    if len(idx) == 0:
        raise ValueError("pre-training needs episodes of at least two steps")
    torch.manual_seed(seed)
    rng = np.random.Generator(np.random.PCG64(seed))
    opt = torch.optim.AdamW(encoder.parameters(), lr=lr)
    encoder.train()
    losses = []
    for _ in range(steps):
        pick = rng.integers(0, len(idx), size=batch_size)
        x = torch.from_numpy(states[idx[pick]])
        mask = torch.from_numpy(rng.random(x.shape[:2]) < mask_ratio)
        loss, _ = encoder.pretrain_loss(
            x, torch.from_numpy(nxt[pick]), torch.from_numpy(direction[pick]), mask
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        opt.step()
        losses.append(float(loss.detach()))
    encoder.eval()
    return losses


__all__ = [
    "ENCODER_FORMAT",
    "EncoderConfig",
    "EncoderError",
    "FeatureEncoder",
    "pretrain_encoder",
    "pretrain_targets",
    "weights_hash",
]
