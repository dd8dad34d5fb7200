"""The model registry: versioned, hash-checked model files in a directory.

Layout: ``<root>/<name>/v<N>/`` holds ``model.pt`` (the model's own file format:
:meth:`DecisionTransformer.save` or :meth:`DistilledPolicy.save`) and ``meta.json``
(:class:`ModelRecord` as JSON, format ``tickerml-model/1``). Versions count 1, 2, ...
per name; a version directory is written under a temporary name and renamed into place
last, so a half-written version is never listed, and a version is never overwritten.

``meta.json`` records the name, version, kind, the sha256 of ``model.pt``, the model's
``weights_hash`` (blake2b-256 of its state_dict, :func:`training.encoder.weights_hash`),
the frozen encoder's hash, the model's config, ``created_at`` (from an injectable clock,
:data:`training.quarantine.Clock`), and the training data: its time range, the quarantine
cutoff it was checked against, the feature names and the window (the state shape the
model reads). :meth:`ModelRegistry.load` checks the file's sha256 against the record
before torch reads a byte of it, then the model's own checks (frozen encoder hash,
weights hash), then both hashes against the record; any mismatch is a
:class:`RegistryError` naming the file and both hashes.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from training.quarantine import Clock, datetime_to_ns, ns_to_iso, utc_now

META_FORMAT = "tickerml-model/1"
META_FILE = "meta.json"
WEIGHTS_FILE = "model.pt"
KINDS = ("decision_transformer", "distilled")
"""What a registry version can hold: a DecisionTransformer or a DistilledPolicy."""
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_VERSION_DIR = re.compile(r"^v([1-9][0-9]*)$")

if TYPE_CHECKING:  # torch is imported when a model is saved or loaded, not to list
    from torch import nn


class RegistryError(ValueError):
    """A registry entry that is missing, malformed or does not match its hashes."""


def sha256_file(path: str | Path) -> str:
    """sha256 hex of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True, kw_only=True)
class ModelMeta:
    """What the caller knows about a model being registered: the training data's time
    range ``[data_from_ns, data_to_ns)`` (ns), the quarantine cutoff it was checked
    against, the feature names of its states (in column order) and anything else
    (``extra``, JSON values: e.g. the dataset's hash, the teacher of a distilled model)."""

    data_from_ns: int = 0
    data_to_ns: int = 0
    quarantine_cutoff_ns: int = 0
    feature_names: tuple[str, ...] = ()
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class ModelRecord:
    """One registered version (``meta.json``). ``path`` is its directory."""

    name: str
    version: int
    kind: str
    weights_sha256: str
    weights_hash: str
    encoder_hash: str
    config: dict[str, Any]
    created_at: str
    created_at_ns: int
    data_from_ns: int
    data_to_ns: int
    quarantine_cutoff_ns: int
    feature_names: tuple[str, ...]
    window: int
    extra: dict[str, Any]
    path: Path

    @property
    def model_id(self) -> str:
        """``name@vN``: what Decisions and ModelLoaded events carry."""
        return f"{self.name}@v{self.version}"

    @property
    def weights_path(self) -> Path:
        return self.path / WEIGHTS_FILE

    def to_json(self) -> dict[str, Any]:
        return {
            "format": META_FORMAT,
            "name": self.name,
            "version": self.version,
            "kind": self.kind,
            "weights_file": WEIGHTS_FILE,
            "weights_sha256": self.weights_sha256,
            "weights_hash": self.weights_hash,
            "encoder_hash": self.encoder_hash,
            "config": self.config,
            "created_at": self.created_at,
            "created_at_ns": self.created_at_ns,
            "training_data": {
                "from_ns": self.data_from_ns,
                "to_ns": self.data_to_ns,
                "quarantine_cutoff_ns": self.quarantine_cutoff_ns,
                "feature_names": list(self.feature_names),
                "window": self.window,
            },
            "extra": self.extra,
        }

    @classmethod
    def from_json(cls, raw: Any, path: Path) -> ModelRecord:
        where = path / META_FILE
        if not isinstance(raw, dict) or raw.get("format") != META_FORMAT:
            got = raw.get("format") if isinstance(raw, dict) else type(raw).__name__
            raise RegistryError(f"{where}: format {got!r}, expected {META_FORMAT!r}")
        try:
            data = raw["training_data"]
            record = cls(
                name=str(raw["name"]),
                version=int(raw["version"]),
                kind=str(raw["kind"]),
                weights_sha256=str(raw["weights_sha256"]),
                weights_hash=str(raw["weights_hash"]),
                encoder_hash=str(raw["encoder_hash"]),
                config=dict(raw["config"]),
                created_at=str(raw["created_at"]),
                created_at_ns=int(raw["created_at_ns"]),
                data_from_ns=int(data["from_ns"]),
                data_to_ns=int(data["to_ns"]),
                quarantine_cutoff_ns=int(data["quarantine_cutoff_ns"]),
                feature_names=tuple(str(n) for n in data["feature_names"]),
                window=int(data["window"]),
                extra=dict(raw.get("extra", {})),
                path=path,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise RegistryError(f"{where}: malformed record ({exc!r})") from None
        if record.kind not in KINDS:
            raise RegistryError(f"{where}: unknown kind {record.kind!r}; known: {KINDS}")
        return record


def describe(model: nn.Module) -> tuple[str, dict[str, Any], int, int]:
    """``(kind, config, window, n_features)`` of a registrable model."""
    import dataclasses

    from training.decision_transformer import DecisionTransformer
    from training.distill import DistilledPolicy

    enc = getattr(model, "encoder", None)
    if isinstance(model, DecisionTransformer):
        kind, cfg = "decision_transformer", dataclasses.asdict(model.cfg)
    elif isinstance(model, DistilledPolicy):
        kind, cfg = "distilled", dataclasses.asdict(model.cfg)
    else:
        raise RegistryError(
            f"cannot register a {type(model).__name__}: only DecisionTransformer and "
            "DistilledPolicy models"
        )
    assert enc is not None
    ecfg = enc.config
    return kind, {"model": cfg, "encoder": dataclasses.asdict(ecfg)}, ecfg.window, ecfg.n_features


def _load_kind(kind: str, path: Path, encoder_hash: str) -> nn.Module:
    from training.decision_transformer import DecisionTransformer, ModelLoadError
    from training.distill import DistilledPolicy
    from training.encoder import EncoderError

    try:
        if kind == "decision_transformer":
            return DecisionTransformer.load(path, expected_encoder_hash=encoder_hash)
        return DistilledPolicy.load(path, expected_encoder_hash=encoder_hash)
    except (ModelLoadError, EncoderError) as exc:
        raise RegistryError(str(exc)) from None  # the message names the file


class ModelRegistry:
    """``ModelRegistry(root)``: register, list and load model versions (see module doc)."""

    def __init__(self, root: str | Path, clock: Clock | None = None) -> None:
        self.root = Path(root)
        self.clock = clock or utc_now

    # -- listing -----------------------------------------------------------------------

    @staticmethod
    def check_name(name: str) -> str:
        if not isinstance(name, str) or not _NAME.match(name):
            raise RegistryError(
                f"model name {name!r} must be 1-64 of A-Z a-z 0-9 _ . - (not starting "
                "with . _ or -)"
            )
        return name

    def names(self) -> list[str]:
        """Model names with at least one version, sorted."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and self.versions(p.name))

    def versions(self, name: str) -> list[int]:
        """Registered versions of ``name``, ascending (temporary directories ignored)."""
        d = self.root / self.check_name(name)
        if not d.is_dir():
            return []
        found = []
        for p in d.iterdir():
            m = _VERSION_DIR.match(p.name)
            if m and p.is_dir() and (p / META_FILE).is_file():
                found.append(int(m.group(1)))
        return sorted(found)

    def get(self, name: str, version: int) -> ModelRecord:
        """The record of ``name`` version ``version`` (RegistryError if there is none)."""
        path = self.root / self.check_name(name) / f"v{int(version)}"
        meta = path / META_FILE
        if not meta.is_file():
            have = self.versions(name)
            raise RegistryError(
                f"no model {name!r} version {version} in {self.root} (versions: {have or 'none'})"
            )
        try:
            raw = json.loads(meta.read_text())
        except json.JSONDecodeError as exc:
            raise RegistryError(f"{meta}: not JSON ({exc})") from None
        record = ModelRecord.from_json(raw, path)
        if record.name != name or record.version != int(version):
            raise RegistryError(
                f"{meta}: records {record.model_id}, but lies at {name}@v{int(version)}"
            )
        return record

    def latest(self, name: str) -> ModelRecord:
        """The highest version of ``name``."""
        have = self.versions(name)
        if not have:
            known = ", ".join(self.names()) or "none"
            raise RegistryError(f"no model {name!r} in {self.root} (models: {known})")
        return self.get(name, have[-1])

    def resolve(self, spec: str) -> ModelRecord:
        """``name`` (latest) or ``name@N`` / ``name@vN``."""
        name, sep, version = spec.partition("@")
        if not sep:
            return self.latest(name)
        v = version[1:] if version.startswith("v") else version
        if not v.isdigit():
            raise RegistryError(f"model spec {spec!r}: the version must be N or vN")
        return self.get(name, int(v))

    # -- writing -----------------------------------------------------------------------

    def register(self, name: str, model: nn.Module, meta: ModelMeta | None = None) -> ModelRecord:
        """Save ``model`` as the next version of ``name``; returns its record."""
        from training.encoder import weights_hash

        self.check_name(name)
        meta = meta or ModelMeta()
        kind, config, window, n_features = describe(model)
        if meta.feature_names and len(meta.feature_names) != n_features:
            raise RegistryError(
                f"{len(meta.feature_names)} feature names for a model of {n_features} features"
            )
        base = self.root / name
        base.mkdir(parents=True, exist_ok=True)
        have = self.versions(name)
        version = (have[-1] if have else 0) + 1
        tmp = base / f".v{version}.tmp-{os.getpid()}"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        try:
            digest = model.save(tmp / WEIGHTS_FILE)  # type: ignore[operator]
            if digest != weights_hash(model):
                raise RegistryError(f"{name}: the saved weights hash is not the model's")
            now = self.clock()
            record = ModelRecord(
                name=name,
                version=version,
                kind=kind,
                weights_sha256=sha256_file(tmp / WEIGHTS_FILE),
                weights_hash=str(digest),
                encoder_hash=str(model.encoder_hash),
                config=config,
                created_at=ns_to_iso(datetime_to_ns(now)),
                created_at_ns=datetime_to_ns(now),
                data_from_ns=int(meta.data_from_ns),
                data_to_ns=int(meta.data_to_ns),
                quarantine_cutoff_ns=int(meta.quarantine_cutoff_ns),
                feature_names=tuple(meta.feature_names),
                window=window,
                extra=json.loads(json.dumps(dict(meta.extra))),
                path=base / f"v{version}",
            )
            (tmp / META_FILE).write_text(
                json.dumps(record.to_json(), indent=2, sort_keys=True) + "\n"
            )
            try:
                os.rename(tmp, record.path)  # fails if the version appeared meanwhile
            except OSError as exc:
                raise RegistryError(
                    f"{record.path}: could not publish version {version} ({exc})"
                ) from None
        finally:
            if tmp.exists():
                shutil.rmtree(tmp)
        return record

    # -- reading -----------------------------------------------------------------------

    def verify(self, record: ModelRecord) -> str:
        """The weights file's sha256, if it is the recorded one (else RegistryError)."""
        path = record.weights_path
        if not path.is_file():
            raise RegistryError(f"{path}: missing weights file of {record.model_id}")
        got = sha256_file(path)
        if got != record.weights_sha256:
            raise RegistryError(
                f"{path}: sha256 {got} does not match the registry's {record.weights_sha256} "
                f"for {record.model_id}; refusing to load modified weights"
            )
        return got

    def load(self, name: str, version: int | None = None) -> tuple[nn.Module, ModelRecord]:
        """The model (eval mode, frozen encoder checked) and its record; the latest
        version when ``version`` is None. RegistryError on any hash mismatch."""
        record = self.latest(name) if version is None else self.get(name, version)
        return self.load_record(record), record

    def load_record(self, record: ModelRecord) -> nn.Module:
        from training.encoder import weights_hash

        self.verify(record)  # before torch reads the file
        model = _load_kind(record.kind, record.weights_path, record.encoder_hash)
        got = weights_hash(model)
        if got != record.weights_hash:
            raise RegistryError(
                f"{record.weights_path}: weights hash {got} does not match the registry's "
                f"{record.weights_hash} for {record.model_id}"
            )
        return model.eval()


def load_path(path: str | Path) -> tuple[nn.Module, ModelRecord]:
    """Load a registry version directory (``.../<name>/v<N>``) or its ``model.pt``,
    checked against the ``meta.json`` beside it."""
    p = Path(path)
    vdir = p.parent if p.is_file() or p.name == WEIGHTS_FILE else p
    m = _VERSION_DIR.match(vdir.name)
    if not m:
        raise RegistryError(f"{path}: not a registry version directory (<root>/<name>/vN)")
    registry = ModelRegistry(vdir.parent.parent)
    return registry.load(vdir.parent.name, int(m.group(1)))


def load_many(registry: ModelRegistry, specs: Sequence[str]) -> list[tuple[nn.Module, ModelRecord]]:
    """Several ``name`` / ``name@N`` specs, each verified."""
    out = []
    for spec in specs:
        record = registry.resolve(spec.strip())
        out.append((registry.load_record(record), record))
    return out


__all__ = [
    "KINDS",
    "META_FILE",
    "META_FORMAT",
    "WEIGHTS_FILE",
    "ModelMeta",
    "ModelRecord",
    "ModelRegistry",
    "RegistryError",
    "load_many",
    "load_path",
    "sha256_file",
]
