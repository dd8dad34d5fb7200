"""Offline-RL models (issue 9): config ranges, the encoder and its hash, the Decision
Transformer (shapes, causal mask, frozen backbone, load refusal), seeded training and
the quarantine at training start. Tiny models, CPU, one thread."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from freezegun import freeze_time

from kernel.config import ModelConfig
from training.config import ModelConfigError, ModelSettings, load_model_settings
from training.dataset import synthetic_trajectories
from training.decision_transformer import DecisionTransformer, DTConfig, ModelLoadError
from training.encoder import EncoderConfig, EncoderError, FeatureEncoder, weights_hash
from training.quarantine import QuarantineError
from training.trainer import ReplayBuffer, TrainConfig, build_model, train_decision_transformer

torch.set_num_threads(1)

F_, W, K = 4, 5, 4


def tiny(seed: int = 0, dropout: float = 0.0) -> DecisionTransformer:
    torch.manual_seed(seed)
    enc = FeatureEncoder(EncoderConfig(n_features=F_, window=W, d_model=8, n_heads=2, n_layers=1))
    cfg = DTConfig(
        n_layers=2, n_heads=2, d_model=16, context_len=K, max_timestep=64, dropout=dropout
    )
    return DecisionTransformer(cfg, enc)


def data(episodes: int = 2, steps: int = 12, seed: int = 0):  # type: ignore[no-untyped-def]
    return synthetic_trajectories(episodes, steps, W, F_, seed)


def a_batch(b: int = 3) -> dict[str, torch.Tensor]:
    ds = data()
    buf = ReplayBuffer(ds, K)
    return buf.batch(buf.ends[:b])


# -- config ------------------------------------------------------------------------------


def test_config_defaults_match_the_shipped_yaml() -> None:
    root = Path(__file__).resolve().parents[1]
    s = load_model_settings(root / "config" / "model.yaml")
    assert (s.n_layers, s.n_heads, s.d_model, s.context_len, s.quarantine_days) == (
        6,
        8,
        256,
        64,
        30,
    )
    assert s == ModelSettings.from_kernel(ModelConfig())


@pytest.mark.parametrize(
    ("key", "value", "fragment"),
    [
        ("n_layers", 5, "model.n_layers must be within 6..12, got 5"),
        ("n_layers", 13, "model.n_layers must be within 6..12, got 13"),
        ("n_heads", 7, "model.n_heads must be within 8..16, got 7"),
        ("n_heads", 17, "model.n_heads must be within 8..16"),
        ("d_model", 127, "model.d_model must be within 128..512"),
        ("d_model", 513, "model.d_model must be within 128..512"),
        ("d_model", 260, "model.d_model (260) must be divisible by model.n_heads (8)"),
        ("quarantine_days", 29, "model.quarantine_days must be >= 30"),
        ("dropout", 1.0, "model.dropout"),
    ],
)
def test_config_range_errors_name_the_key(key: str, value: object, fragment: str) -> None:
    with pytest.raises(ModelConfigError) as exc:
        ModelSettings(**{key: value})  # type: ignore[arg-type]
    assert fragment in str(exc.value)


def test_config_bounds_are_inclusive_and_unknown_keys_refused(tmp_path: Path) -> None:
    ModelSettings(n_layers=12, n_heads=16, d_model=512)
    ModelSettings(n_layers=6, n_heads=8, d_model=128)
    p = tmp_path / "model.yaml"
    p.write_text("n_layers: 6\nn_layrs: 7\n")
    with pytest.raises(ModelConfigError, match="n_layrs"):
        load_model_settings(p)


# -- encoder -----------------------------------------------------------------------------


def test_weights_hash_matches_an_independent_blake2b() -> None:
    import hashlib

    lin = torch.nn.Linear(2, 1)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, -2.0]]))
        lin.bias.copy_(torch.tensor([0.5]))
    h = hashlib.blake2b(digest_size=32)
    for key, arr in (
        ("bias", np.array([0.5], np.float32)),
        ("weight", np.array([1.0, -2.0], np.float32)),
    ):
        shape = "(1,)" if key == "bias" else "(1, 2)"
        h.update(key.encode() + b"torch.float32" + shape.encode() + arr.tobytes())
    assert weights_hash(lin) == h.hexdigest()


def test_encoder_shapes_save_load_and_refusal(tmp_path: Path) -> None:
    torch.manual_seed(0)
    enc = FeatureEncoder(EncoderConfig(n_features=F_, window=W, d_model=8, n_heads=2, n_layers=1))
    enc.eval()
    x = torch.randn(3, W, F_)
    assert enc(x).shape == (3, 8)
    assert enc.recon_head(enc.hidden(x)).shape == (3, W, F_)
    digest = enc.save(tmp_path / "enc.pt")
    back = FeatureEncoder.load(tmp_path / "enc.pt", expected_hash=digest)
    assert torch.equal(back(x), enc(x))
    blob = torch.load(tmp_path / "enc.pt", weights_only=True)
    blob["state_dict"]["inp.weight"][0, 0] += 1e-3
    torch.save(blob, tmp_path / "bad.pt")
    with pytest.raises(EncoderError, match="modified weights"):
        FeatureEncoder.load(tmp_path / "bad.pt")


# -- Decision Transformer ----------------------------------------------------------------


def test_shapes_and_attention_weights() -> None:
    model = tiny().eval()
    batch = a_batch(3)
    assert batch["states"].shape == (3, K, W, F_)
    out = model(batch)
    assert out["side_logits"].shape == (3, K, 3)
    for key in ("size", "stop", "risk_logit"):
        assert out[key].shape == (3, K)
    assert bool(((out["size"] > 0) & (out["size"] < 1)).all())
    assert bool((out["stop"] >= 0).all())
    probs = model.attention_weights(batch)
    assert len(probs) == 2 and probs[0].shape == (3, 2, 3 * K, 3 * K)
    upper = torch.ones(3 * K, 3 * K, dtype=torch.bool).triu(1)
    assert bool((probs[0][..., upper] == 0).all())
    torch.testing.assert_close(probs[1].sum(-1), torch.ones(3, 2, 3 * K))


def test_causal_mask_future_tokens_change_no_earlier_output() -> None:
    model = tiny().eval()
    batch = a_batch(2)
    base = model(batch)
    # the action of step 2 (token 8): outputs at steps 0..2 (state tokens 1, 4, 7) stay
    changed = {k: v.clone() for k, v in batch.items()}
    changed["actions_side"][:, 2] = (changed["actions_side"][:, 2] + 1) % 3
    changed["actions_size"][:, 2] += 0.5
    out = model(changed)
    for key in base:
        assert torch.equal(out[key][:, :3], base[key][:, :3]), key
    assert not torch.equal(out["side_logits"][:, 3], base["side_logits"][:, 3])
    # the state and return-to-go of step 3: steps 0..2 stay, step 3 moves
    changed = {k: v.clone() for k, v in batch.items()}
    changed["states"][:, 3] += 1.0
    changed["returns_to_go"][:, 3] += 1.0
    out = model(changed)
    for key in base:
        assert torch.equal(out[key][:, :3], base[key][:, :3]), key
    assert not torch.equal(out["side_logits"][:, 3], base["side_logits"][:, 3])


def test_save_load_roundtrip_and_modified_encoder_refused(tmp_path: Path) -> None:
    model = tiny().eval()
    batch = a_batch(2)
    path = tmp_path / "dt.pt"
    digest = model.save(path)
    back = DecisionTransformer.load(path, expected_encoder_hash=model.encoder_hash)
    assert weights_hash(back) == digest
    assert torch.equal(back(batch)["side_logits"], model(batch)["side_logits"])
    with pytest.raises(ModelLoadError, match="expected encoder hash"):
        DecisionTransformer.load(path, expected_encoder_hash="0" * 64)
    blob = torch.load(path, weights_only=True)
    blob["state_dict"]["encoder.blocks.0.qkv.weight"][0, 0] += 1e-4
    torch.save(blob, tmp_path / "bad.pt")
    with pytest.raises(ModelLoadError, match="modified encoder"):
        DecisionTransformer.load(tmp_path / "bad.pt")
    blob = torch.load(path, weights_only=True)
    blob["flags"]["encoder_requires_grad"] = True
    torch.save(blob, tmp_path / "flags.pt")
    with pytest.raises(ModelLoadError, match="not frozen"):
        DecisionTransformer.load(tmp_path / "flags.pt")


def test_wrapping_keeps_the_pretrained_encoder_weights() -> None:
    torch.manual_seed(0)
    enc = FeatureEncoder(EncoderConfig(n_features=F_, window=W, d_model=8, n_heads=2, n_layers=1))
    before = weights_hash(enc)
    model = DecisionTransformer(DTConfig(n_layers=1, n_heads=2, d_model=16, context_len=K), enc)
    assert weights_hash(model.encoder) == before == model.encoder_hash


def test_encoder_stays_frozen_through_training() -> None:
    model = tiny(dropout=0.1)
    before = weights_hash(model.encoder)
    model.train()
    assert model.training and not model.encoder.training
    assert not any(p.requires_grad for p in model.encoder.parameters())
    assert all(p.requires_grad for n, p in model.named_parameters() if not n.startswith("encoder."))
    dt_before = weights_hash(model)
    res = train_decision_transformer(model, data(), TrainConfig(steps=5, batch_size=4))
    assert weights_hash(model.encoder) == before == res.encoder_hash
    assert res.weights_hash != dt_before
    model.train()
    assert not model.encoder.training


def test_gradient_checkpointing_gives_the_same_gradients() -> None:
    batch = a_batch(2)
    grads = []
    for flag in (False, True):
        model = tiny()
        model.cfg = DTConfig(**{**model.cfg.__dict__, "gradient_checkpointing": flag})
        model.train()
        loss, _ = model.loss(batch)
        loss.backward()  # type: ignore[no-untyped-call]
        grads.append(model.head_side.weight.grad.clone())  # type: ignore[union-attr]
    torch.testing.assert_close(grads[0], grads[1])


def test_tiny_overfit_on_8_samples() -> None:
    ds = synthetic_trajectories(1, 8 + K - 1, W, F_, seed=3)
    model = tiny(seed=1)
    assert len(ReplayBuffer(ds, K)) == 8
    res = train_decision_transformer(
        model, ds, TrainConfig(steps=300, batch_size=8, learning_rate=3e-3, weight_decay=0.0)
    )
    assert res.losses[0] > 1.5
    assert res.losses[-1] < 0.05


def test_seeded_training_is_reproducible() -> None:
    hashes = []
    for _ in range(2):
        model = tiny(seed=2, dropout=0.1)
        res = train_decision_transformer(model, data(), TrainConfig(steps=6, batch_size=4, seed=7))
        hashes.append(res.weights_hash)
    assert hashes[0] == hashes[1]
    other = train_decision_transformer(
        tiny(seed=2, dropout=0.1), data(), TrainConfig(steps=6, batch_size=4, seed=8)
    )
    assert other.weights_hash != hashes[0]


def test_quarantine_refused_at_training_start() -> None:
    ds = data()  # steps from 2024-01-01T00:00:00Z, 10 s apart
    model = tiny()
    before = weights_hash(model)
    with freeze_time("2024-01-20T00:00:00Z"), pytest.raises(QuarantineError, match="30-day"):
        train_decision_transformer(model, ds, TrainConfig(steps=1, batch_size=2))
    assert weights_hash(model) == before
    with freeze_time("2024-03-01T00:00:00Z"):
        train_decision_transformer(model, ds, TrainConfig(steps=1, batch_size=2))


def test_build_model_from_default_settings() -> None:
    model = build_model(ModelSettings(), n_features=F_, window=W)
    assert len(model.blocks) == 6 and model.cfg.d_model == 256 and model.cfg.context_len == 64
    assert model.encoder.d_model == 64


# -- IQL baseline --------------------------------------------------------------------------


def test_iql_learns_the_profitable_behaviour_separately_and_reproducibly() -> None:
    from training.iql import IQLConfig, train_iql

    ds = synthetic_trajectories(4, 64, 4, 4, seed=0)
    cfg = IQLConfig(steps=600, batch_size=64, lr=1e-3)
    agent, losses = train_iql(ds, cfg)
    assert losses[-1] < losses[0] / 4
    s = torch.from_numpy(ds.states.reshape(len(ds), -1))
    with torch.no_grad():
        pred = agent.act(s)["side_logits"].argmax(1).numpy()
    majority = np.bincount(ds.actions_side).max() / len(ds)
    assert majority < 0.5
    assert (pred == ds.actions_side).mean() > 0.9
    ids = {id(p) for p in agent.policy.parameters()}
    assert ids.isdisjoint(id(p) for p in agent.value.parameters())
    assert ids.isdisjoint(id(p) for p in agent.q1.parameters())
    again, _ = train_iql(ds, cfg)
    assert weights_hash(again) == weights_hash(agent)
    with freeze_time("2024-01-20T00:00:00Z"), pytest.raises(QuarantineError):
        train_iql(ds, cfg)
