"""The model registry (training/registry.py): versioned files, metadata, sha256 refusal,
and the ModelLoaded event's schema evolution. Tiny models, CPU, one thread."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import pytest
import torch

from kernel.events import ModelLoaded, decode, encode
from training.decision_transformer import DecisionTransformer, DTConfig
from training.encoder import EncoderConfig, FeatureEncoder, weights_hash
from training.registry import (
    META_FORMAT,
    ModelMeta,
    ModelRegistry,
    RegistryError,
    load_path,
)

torch.set_num_threads(1)

F_, W, K = 4, 5, 4
NAMES = ("imbalance_5", "microprice_offset_bp", "trade_imbalance_10s", "spread_bp")
CREATED = datetime(2024, 3, 1, 12, 30, 0, 250_000, tzinfo=UTC)


def tiny(seed: int = 0) -> DecisionTransformer:
    torch.manual_seed(seed)
    enc = FeatureEncoder(EncoderConfig(n_features=F_, window=W, d_model=8, n_heads=2, n_layers=1))
    cfg = DTConfig(n_layers=1, n_heads=2, d_model=16, context_len=K, max_timestep=64, dropout=0.0)
    return DecisionTransformer(cfg, enc).eval()


def registry(root: Path) -> ModelRegistry:
    return ModelRegistry(root, clock=lambda: CREATED)


META = ModelMeta(
    data_from_ns=1_704_067_200_000_000_000,
    data_to_ns=1_704_153_600_000_000_000,
    quarantine_cutoff_ns=1_706_659_200_000_000_000,
    feature_names=NAMES,
    extra={"dataset_hash": "ab" * 32, "target_return": 0.5},
)


def test_register_versions_metadata_and_round_trip(tmp_path: Path) -> None:
    reg = registry(tmp_path)
    a, b = tiny(0), tiny(1)
    r1 = reg.register("dt", a, META)
    r2 = reg.register("dt", b, META)
    assert (r1.version, r2.version, r2.model_id) == (1, 2, "dt@v2")
    assert reg.versions("dt") == [1, 2] and reg.names() == ["dt"]
    assert reg.latest("dt").version == 2
    assert reg.resolve("dt@1").weights_hash == reg.resolve("dt@v1").weights_hash
    assert reg.resolve("dt").version == 2
    meta = json.loads((tmp_path / "dt" / "v1" / "meta.json").read_text())
    weights = (tmp_path / "dt" / "v1" / "model.pt").read_bytes()
    assert meta["format"] == META_FORMAT
    assert meta["name"] == "dt" and meta["version"] == 1 and meta["kind"] == "decision_transformer"
    assert meta["weights_sha256"] == hashlib.sha256(weights).hexdigest()
    assert meta["weights_hash"] == weights_hash(a)
    assert meta["encoder_hash"] == weights_hash(a.encoder) == a.encoder_hash
    assert meta["created_at"] == "2024-03-01T12:30:00.250000000Z"
    assert meta["created_at_ns"] == 1_709_296_200_250_000_000
    assert meta["training_data"] == {
        "from_ns": 1_704_067_200_000_000_000,
        "to_ns": 1_704_153_600_000_000_000,
        "quarantine_cutoff_ns": 1_706_659_200_000_000_000,
        "feature_names": list(NAMES),
        "window": W,
    }
    assert meta["config"]["model"]["context_len"] == K
    assert meta["config"]["encoder"]["n_features"] == F_
    assert meta["extra"] == {"dataset_hash": "ab" * 32, "target_return": 0.5}
    model, rec = reg.load("dt", 1)
    assert rec == reg.get("dt", 1) and rec.feature_names == NAMES
    assert isinstance(model, DecisionTransformer) and not model.training
    assert weights_hash(model) == weights_hash(a) != weights_hash(b)
    x = {
        "states": torch.randn(2, K, W, F_),
        "returns_to_go": torch.zeros(2, K),
        "timesteps": torch.arange(K).repeat(2, 1),
        "actions_side": torch.zeros(2, K, dtype=torch.int64),
        "actions_size": torch.zeros(2, K),
        "actions_stop": torch.zeros(2, K),
    }
    assert torch.equal(model(x)["side_logits"], a(x)["side_logits"])
    latest, rec2 = reg.load("dt")
    assert rec2.version == 2 and weights_hash(latest) == weights_hash(b)
    by_path, rec3 = load_path(tmp_path / "dt" / "v2" / "model.pt")
    assert rec3 == rec2 and weights_hash(by_path) == weights_hash(b)


def test_a_flipped_byte_is_refused(tmp_path: Path) -> None:
    reg = registry(tmp_path)
    rec = reg.register("dt", tiny(), META)
    path = rec.weights_path
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    bad = hashlib.sha256(bytes(data)).hexdigest()
    with pytest.raises(RegistryError) as exc:
        reg.load("dt")
    assert str(exc.value) == (
        f"{path}: sha256 {bad} does not match the registry's {rec.weights_sha256} for dt@v1; "
        "refusing to load modified weights"
    )


def test_a_rewritten_record_is_refused_by_the_model_hashes(tmp_path: Path) -> None:
    """A forger who rewrites model.pt AND its sha256 in meta.json still meets the
    recorded weights hash."""
    reg = registry(tmp_path)
    model = tiny(0)
    rec = reg.register("dt", model, META)
    meta_path = rec.path / "meta.json"

    def forge(other: DecisionTransformer) -> None:
        other.save(rec.weights_path)  # other weights, a self-consistent file
        meta = json.loads(meta_path.read_text())
        meta["weights_sha256"] = hashlib.sha256(rec.weights_path.read_bytes()).hexdigest()
        meta_path.write_text(json.dumps(meta))

    with torch.no_grad():
        model.head_side.bias += 1.0  # same frozen encoder, other policy weights
    forge(model)
    with pytest.raises(RegistryError) as exc:
        reg.load("dt")
    assert str(exc.value) == (
        f"{rec.weights_path}: weights hash {weights_hash(model)} does not match the "
        f"registry's {rec.weights_hash} for dt@v1"
    )
    forge(tiny(5))  # another encoder too
    with pytest.raises(RegistryError, match="refusing to load a modified encoder"):
        reg.load("dt")


def test_missing_and_malformed_entries_name_what_is_wrong(tmp_path: Path) -> None:
    reg = registry(tmp_path)
    with pytest.raises(RegistryError, match=r"no model 'dt' in .* \(models: none\)"):
        reg.latest("dt")
    reg.register("dt", tiny(), META)
    with pytest.raises(RegistryError, match=r"no model 'dt' version 7 .*\(versions: \[1\]\)"):
        reg.get("dt", 7)
    with pytest.raises(RegistryError, match="model name"):
        reg.register("../evil", tiny(), META)
    with pytest.raises(RegistryError, match="3 feature names for a model of 4 features"):
        reg.register("dt", tiny(), ModelMeta(feature_names=NAMES[:3]))
    with pytest.raises(RegistryError, match="cannot register a Linear"):
        reg.register("lin", torch.nn.Linear(2, 2), META)
    with pytest.raises(RegistryError, match="the version must be N or vN"):
        reg.resolve("dt@latest")
    (tmp_path / "dt" / "v1" / "meta.json").write_text('{"format": "other"}')
    with pytest.raises(RegistryError, match="format 'other'"):
        reg.get("dt", 1)
    assert reg.versions("dt") == [1]  # a temporary directory is never listed
    (tmp_path / "dt" / ".v2.tmp-1").mkdir()
    assert reg.versions("dt") == [1]


def test_model_loaded_event_round_trips_and_old_payloads_decode() -> None:
    ev = ModelLoaded(
        ts_event=5,
        ts_recv=6,
        model_id="dt@v3",
        weights_hash="a" * 64,
        frozen_verified=True,
        model_name="dt",
        model_version=3,
        encoder_hash="b" * 64,
        weights_sha256="c" * 64,
    )
    assert decode(encode(ev)) == ev
    # a payload written before the last four fields existed
    old = msgspec.msgpack.encode(["ModelLoaded", 5, 6, "dt@v3", "a" * 64, True])
    back = decode(old)
    assert isinstance(back, ModelLoaded)
    assert (back.model_id, back.model_name, back.model_version, back.encoder_hash) == (
        "dt@v3",
        "",
        0,
        "",
    )
