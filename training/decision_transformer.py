"""A Decision Transformer over trajectories, on a frozen feature encoder. One file.

Tokens: per step t three tokens, in order (return-to-go R_t, state s_t, action a_t), so a
context of K steps is a sequence of 3K tokens. R_t is a Linear(1 -> d); s_t is the FROZEN
:class:`training.encoder.FeatureEncoder` embedding of the step's feature window through
a Linear(d_enc -> d); a_t is an Embedding(side) plus a Linear of (size, stop). Each token
also gets the timestep embedding of its step (clamped to ``max_timestep - 1``).

Causal self-attention (``F.scaled_dot_product_attention(is_causal=True)``, flash kernels
on GPU): token i sees tokens <= i. The heads read the STATE token of each step, which
has seen R_<=t, s_<=t and a_<t, never a_t: action side logits (hold/buy/sell, the
dataset's 0/1/2), size (sigmoid, fraction 0..1), stop-loss distance (softplus, fraction
of price >= 0) and a risk score (logit of P(step reward < 0)).

Frozen backbone: the encoder's parameters have ``requires_grad=False`` and it stays in
eval mode whatever ``train()`` is called with. :meth:`DecisionTransformer.load` checks
the saved encoder weights against their recorded hash (and an expected one, if given)
and the frozen flags, and refuses otherwise.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from training.encoder import EncoderConfig, FeatureEncoder, weights_hash

DT_FORMAT = "tickerml-dt/1"
STOP_SCALE = 100.0
"""The stop head works in percent of price (softplus / 100 = the fraction) and its loss is
on stop x 100, so it weighs like the others."""


class ModelLoadError(ValueError):
    """A saved model whose frozen encoder is not what it was trained on."""


@dataclass(frozen=True)
class DTConfig:
    """Shape of the Decision Transformer (ranges are checked by training/config.py)."""

    n_layers: int = 6
    n_heads: int = 8
    d_model: int = 256
    context_len: int = 64
    max_timestep: int = 4096
    dropout: float = 0.1
    gradient_checkpointing: bool = False

    def __post_init__(self) -> None:
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model {self.d_model} not divisible by n_heads {self.n_heads}")


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: DTConfig) -> None:
        super().__init__()
        self.n_heads = cfg.n_heads
        self.dropout = cfg.dropout
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.resid_drop = nn.Dropout(cfg.dropout)

    def _heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, t, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=2)
        shape = (b, t, self.n_heads, d // self.n_heads)
        return (
            q.view(shape).transpose(1, 2),
            k.view(shape).transpose(1, 2),
            v.view(shape).transpose(1, 2),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self._heads(x)
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
        out: torch.Tensor = self.resid_drop(self.proj(y.transpose(1, 2).reshape(b, t, d)))
        return out

    def probs(self, x: torch.Tensor) -> torch.Tensor:
        """softmax(q k^T / sqrt(d_head) + causal mask), float32 ``[B, H, T, T]``."""
        q, k, _ = self._heads(x)
        scores = (q @ k.transpose(-2, -1)).float() / math.sqrt(q.shape[-1])
        t = x.shape[1]
        future = torch.ones(t, t, dtype=torch.bool, device=x.device).triu(1)
        return torch.softmax(scores.masked_fill(future, float("-inf")), dim=-1)


class Block(nn.Module):
    def __init__(self, cfg: DTConfig) -> None:
        super().__init__()
        d = cfg.d_model
        self.ln1 = nn.LayerNorm(d)
        self.attn = CausalSelfAttention(cfg)
        self.ln2 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(
            nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d), nn.Dropout(cfg.dropout)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        out: torch.Tensor = x + self.mlp(self.ln2(x))
        return out


class KVCache:
    """Keys and values ``[1, H, T, d_head]`` per block of one token sequence, for
    :meth:`DecisionTransformer.extend`; ``truncate`` drops the newest tokens."""

    def __init__(self, n_layers: int) -> None:
        self.k: list[torch.Tensor | None] = [None] * n_layers
        self.v: list[torch.Tensor | None] = [None] * n_layers
        self.length = 0

    def truncate(self, n_tokens: int) -> None:
        for i, (k, v) in enumerate(zip(self.k, self.v, strict=True)):
            if k is not None and v is not None:
                self.k[i], self.v[i] = k[:, :, :n_tokens], v[:, :, :n_tokens]
        self.length = min(self.length, n_tokens)


class DecisionTransformer(nn.Module):
    """``forward(batch)`` -> dict of ``side_logits [B,K,3]``, ``size [B,K]``, ``stop [B,K]``,
    ``risk_logit [B,K]``. A batch is a dict of tensors: ``states [B,K,W,F]`` float32 (or
    ``state_emb [B,K,d_enc]``, precomputed by :meth:`embed_states`), ``returns_to_go
    [B,K]``, ``timesteps [B,K]`` int64, ``actions_side [B,K]`` int64, ``actions_size``
    and ``actions_stop [B,K]`` float32. K may be shorter than ``context_len``."""

    def __init__(self, cfg: DTConfig, encoder: FeatureEncoder) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.encoder = encoder
        for p in self.encoder.parameters():
            p.requires_grad_(False)
        self.encoder.eval()
        self.embed_rtg = nn.Linear(1, d)
        self.embed_state = nn.Linear(encoder.d_model, d)
        self.embed_side = nn.Embedding(3, d)
        self.embed_size_stop = nn.Linear(2, d)
        self.embed_time = nn.Embedding(cfg.max_timestep, d)
        self.ln_in = nn.LayerNorm(d)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(d)
        self.head_side = nn.Linear(d, 3)
        self.head_size = nn.Linear(d, 1)
        self.head_stop = nn.Linear(d, 1)
        self.head_risk = nn.Linear(d, 1)
        for name, child in self.named_children():
            if name != "encoder":  # the pre-trained encoder keeps its weights
                child.apply(self._init)
        self.encoder_hash = weights_hash(encoder)  # checked at load

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)

    def train(self, mode: bool = True) -> Self:
        """Train mode for everything except the frozen encoder (always eval)."""
        super().train(mode)
        self.encoder.eval()
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    @torch.no_grad()
    def embed_states(self, states: torch.Tensor) -> torch.Tensor:
        """Frozen encoder embeddings ``[..., d_enc]`` of windows ``[..., W, F]``."""
        lead = states.shape[:-2]
        emb = self.encoder(states.reshape(-1, *states.shape[-2:]))
        out: torch.Tensor = emb.reshape(*lead, emb.shape[-1])
        return out

    def tokens(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The interleaved input sequence ``[B, 3K, d]`` (R_0, s_0, a_0, R_1, ...)."""
        emb = batch.get("state_emb")
        if emb is None:
            emb = self.embed_states(batch["states"])
        b, k = emb.shape[:2]
        if k > self.cfg.context_len:
            raise ValueError(f"{k} steps is more than context_len {self.cfg.context_len}")
        t = self.embed_time(batch["timesteps"].clamp(0, self.cfg.max_timestep - 1))
        r = self.embed_rtg(batch["returns_to_go"][..., None])
        s = self.embed_state(emb)
        a = self.embed_side(batch["actions_side"]) + self.embed_size_stop(
            torch.stack([batch["actions_size"], batch["actions_stop"] * STOP_SCALE], dim=-1)
        )
        x = torch.stack([r + t, s + t, a + t], dim=2).reshape(b, 3 * k, -1)
        out: torch.Tensor = self.drop(self.ln_in(x))
        return out

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x = self.tokens(batch)
        for block in self.blocks:
            if self.cfg.gradient_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return self.heads(self.ln_f(x)[:, 1::3])  # the state tokens

    def heads(self, h: torch.Tensor) -> dict[str, torch.Tensor]:
        """The output heads over final hidden states ``[..., d]``."""
        return {
            "side_logits": self.head_side(h),
            "size": torch.sigmoid(self.head_size(h).squeeze(-1)),
            "stop": F.softplus(self.head_stop(h).squeeze(-1)) / STOP_SCALE,
            "risk_logit": self.head_risk(h).squeeze(-1),
        }

    @torch.no_grad()
    def extend(self, cache: KVCache, tokens: torch.Tensor) -> torch.Tensor:
        """Append ``tokens [1, n, d]`` (from :meth:`tokens`) to one cached sequence and
        return their final hidden states ``[1, n, d]`` (after ``ln_f``): exactly what a
        full forward over the cached tokens and these gives at these positions, up to
        float rounding, at the cost of the n new tokens only (eval mode)."""
        x = tokens
        past = cache.length
        n = x.shape[1]
        mask = None
        if n > 1:  # causal among the new tokens; every cached token is visible
            mask = torch.ones(n, past + n, dtype=torch.bool, device=x.device).tril(past)
        for i, block in enumerate(self.blocks):
            assert isinstance(block, Block)
            q, k, v = block.attn._heads(block.ln1(x))
            ck, cv = cache.k[i], cache.v[i]
            if ck is not None and cv is not None:
                k = torch.cat([ck, k], dim=2)
                v = torch.cat([cv, v], dim=2)
            cache.k[i], cache.v[i] = k, v
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            x = x + block.attn.proj(y.transpose(1, 2).reshape(1, n, -1))
            x = x + block.mlp(block.ln2(x))
        cache.length = past + n
        out: torch.Tensor = self.ln_f(x)
        return out

    def loss(
        self, batch: dict[str, torch.Tensor], out: dict[str, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """CE(side) + MSE(size) + MSE(stop x 100) + BCE(risk: reward < 0), means over B x K."""
        out = self(batch) if out is None else out
        side = F.cross_entropy(
            out["side_logits"].float().flatten(0, 1), batch["actions_side"].flatten()
        )
        size = F.mse_loss(out["size"].float(), batch["actions_size"])
        stop = F.mse_loss(out["stop"].float() * STOP_SCALE, batch["actions_stop"] * STOP_SCALE)
        risk = F.binary_cross_entropy_with_logits(
            out["risk_logit"].float(), (batch["rewards"] < 0).float()
        )
        total = side + size + stop + risk
        parts = {
            k: float(v.detach())
            for k, v in (("side", side), ("size", size), ("stop", stop), ("risk", risk))
        }
        return total, parts

    @torch.no_grad()
    def attention_weights(self, batch: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """Per block, the attention probabilities ``[B, H, 3K, 3K]`` recomputed explicitly
        (not by the fused kernel), for audit. Each row sums to 1; above the diagonal is 0."""
        x = self.tokens(batch)
        probs = []
        for block in self.blocks:
            assert isinstance(block, Block)
            probs.append(block.attn.probs(block.ln1(x)))
            x = block(x)
        return probs

    # -- files ------------------------------------------------------------------------

    def save(self, path: str | Path) -> str:
        """Write config, weights, the encoder's hash and frozen flags; returns the
        model's weights hash."""
        digest = weights_hash(self)
        torch.save(
            {
                "format": DT_FORMAT,
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

    def frozen_flags(self) -> dict[str, bool]:
        enc = self.encoder
        return {
            "encoder_requires_grad": any(p.requires_grad for p in enc.parameters()),
            "encoder_training": enc.training,
        }

    @classmethod
    def load(
        cls, path: str | Path, expected_encoder_hash: str | None = None
    ) -> DecisionTransformer:
        """Read a saved model; refuses (ModelLoadError) when the encoder weights do not
        hash to the recorded (or the expected) encoder hash, when the frozen flags are not
        (requires_grad False, training False), or when the whole file's hash differs."""
        blob, encoder = load_frozen_blob(path, DT_FORMAT, expected_encoder_hash)
        model = cls(DTConfig(**blob["config"]), encoder)
        model.load_state_dict(blob["state_dict"])
        model.eval()
        if weights_hash(model) != blob["weights_hash"]:
            raise ModelLoadError(f"{path}: model weights do not match the recorded weights hash")
        return model


def load_frozen_blob(
    path: str | Path, fmt: str, expected_encoder_hash: str | None = None
) -> tuple[dict[str, Any], FeatureEncoder]:
    """Read a saved model over a frozen encoder (a Decision Transformer or its distilled
    student): the file's blob and its encoder, after the refusals every such model makes:
    another format, an encoder not frozen when saved (flags), encoder weights that do not
    hash to the recorded (or the expected) encoder hash."""
    blob: dict[str, Any] = torch.load(Path(path), map_location="cpu", weights_only=True)
    if not isinstance(blob, dict) or blob.get("format") != fmt:
        raise ModelLoadError(f"{path}: not a {fmt} file")
    flags = blob.get("flags", {})
    if flags != {"encoder_requires_grad": False, "encoder_training": False}:
        raise ModelLoadError(f"{path}: the encoder was not frozen when saved (flags {flags})")
    encoder = FeatureEncoder(EncoderConfig(**blob["encoder_config"]))
    prefix = "encoder."
    state = blob["state_dict"]
    encoder.load_state_dict({k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)})
    got = weights_hash(encoder)
    for name, want in (("recorded", blob["encoder_hash"]), ("expected", expected_encoder_hash)):
        if want is not None and got != want:
            raise ModelLoadError(
                f"{path}: frozen encoder weights hash {got} does not match the {name} "
                f"encoder hash {want}; refusing to load a modified encoder"
            )
    return blob, encoder


__all__ = [
    "DT_FORMAT",
    "DTConfig",
    "DecisionTransformer",
    "KVCache",
    "ModelLoadError",
    "load_frozen_blob",
]
