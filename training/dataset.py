"""The trajectory dataset: arrays, the on-disk format, synthetic data and purged splits.

Format ``tickerml-trajectories/1`` (the contract shared with the model code): a
directory with ``manifest.json`` and ``trajectories.npz`` (or ``trajectories.parquet``).
N is the number of steps over all episodes, W the window, F the number of features:

* ``states`` float32 [N, W, F]: the feature window ending at the step;
* ``actions_side`` int64 [N] (0 hold, 1 buy, 2 sell), ``actions_size`` float32 [N]
  (position size as a fraction of equity, 0..1), ``actions_stop`` float32 [N] (stop-loss
  distance as a fraction of price, >= 0);
* ``rewards`` float32 [N]; ``returns_to_go`` float32 [N], the undiscounted sum of the
  rewards from the step to its episode's end (summed in float64, then rounded);
* ``timesteps`` int64 [N] (0-based within the episode); ``episode_ids`` int64 [N]
  (0..n_episodes-1 in contiguous, sorted blocks); ``ts_ns`` int64 [N] (kernel time);
* ``episode_end_ns`` int64 [n_episodes]: the time of each episode's last step.

The NPZ is written without pickles and with fixed zip timestamps, so the same dataset
always gives the same bytes (and the same blake2b-256 in the manifest).
:func:`load_trajectories` verifies that hash and refuses data newer than the quarantine
(:mod:`training.quarantine`), checking both the manifest's ``max_data_ts_ns`` and the
data's own newest timestamp, so a manifest that lies does not help.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from training.quarantine import (
    QUARANTINE_DAYS,
    Clock,
    QuarantineError,
    check_data_max,
    check_range_end,
    quarantine_cutoff_ns,
)

FORMAT = "tickerml-trajectories/1"
NPZ_FILE = "trajectories.npz"
PARQUET_FILE = "trajectories.parquet"
MANIFEST_FILE = "manifest.json"

HOLD, BUY, SELL = 0, 1, 2
"""``actions_side`` values."""

STEP_ARRAYS: dict[str, type[np.generic]] = {
    "states": np.float32,
    "actions_side": np.int64,
    "actions_size": np.float32,
    "actions_stop": np.float32,
    "rewards": np.float32,
    "returns_to_go": np.float32,
    "timesteps": np.int64,
    "episode_ids": np.int64,
    "ts_ns": np.int64,
}
"""The per-step arrays (first axis N) and their dtypes."""
ARRAYS: dict[str, type[np.generic]] = {**STEP_ARRAYS, "episode_end_ns": np.int64}
MANIFEST_KEYS = (
    "format",
    "ranges",
    "policy",
    "config_hash",
    "code_version",
    "quarantine_cutoff_ns",
    "max_data_ts_ns",
    "feature_names",
    "n_episodes",
    "n_steps",
    "window",
    "files",
)
"""The manifest fields every dataset has (more may follow)."""


class DatasetError(ValueError):
    """A dataset that breaks the format (shapes, ids, hashes, manifest)."""


def file_hash(path: str | Path) -> str:
    """blake2b-256 hex of a file's bytes."""
    h = hashlib.blake2b(digest_size=32)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def returns_to_go(rewards: np.ndarray, episode_ids: np.ndarray) -> np.ndarray:
    """Undiscounted reward sums from each step to its episode's end: a reverse cumulative
    sum per episode, in float64, rounded to float32 once."""
    r = np.asarray(rewards, dtype=np.float64)
    ids = np.asarray(episode_ids)
    out = np.empty(len(r), dtype=np.float64)
    for sl in _slices(ids):
        out[sl] = np.cumsum(r[sl][::-1])[::-1]
    return out.astype(np.float32)


def _slices(episode_ids: np.ndarray) -> list[slice]:
    if len(episode_ids) == 0:
        return []
    cuts = np.flatnonzero(np.diff(episode_ids)) + 1
    bounds = [0, *cuts.tolist(), len(episode_ids)]
    return [slice(a, b) for a, b in itertools.pairwise(bounds)]


@dataclass(eq=False)
class TrajectoryDataset:
    """Trajectories in memory: the arrays of the format (same names), the feature names
    and the manifest (empty until saved or loaded). Checked on construction."""

    states: np.ndarray
    actions_side: np.ndarray
    actions_size: np.ndarray
    actions_stop: np.ndarray
    rewards: np.ndarray
    returns_to_go: np.ndarray
    timesteps: np.ndarray
    episode_ids: np.ndarray
    ts_ns: np.ndarray
    episode_end_ns: np.ndarray
    feature_names: tuple[str, ...]
    manifest: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, dtype in ARRAYS.items():
            arr = np.ascontiguousarray(getattr(self, name))
            if arr.dtype != dtype:
                if arr.size and not np.can_cast(arr.dtype, dtype, casting="same_kind"):
                    raise DatasetError(f"{name} has dtype {arr.dtype}, expected {dtype}")
                arr = arr.astype(dtype)
            setattr(self, name, arr)
        self.feature_names = tuple(self.feature_names)
        self._check()

    def _check(self) -> None:
        n = len(self.states)
        if self.states.ndim != 3:
            raise DatasetError(f"states must be [N, window, F], got shape {self.states.shape}")
        if self.states.shape[2] != len(self.feature_names):
            raise DatasetError(
                f"states have {self.states.shape[2]} features but there are "
                f"{len(self.feature_names)} feature names"
            )
        for name in STEP_ARRAYS:
            arr = getattr(self, name)
            if name != "states" and arr.shape != (n,):
                raise DatasetError(f"{name} has shape {arr.shape}, expected ({n},)")
        ids = self.episode_ids
        n_ep = len(self.episode_end_ns)
        if n and (ids[0] != 0 or np.any(np.diff(ids) < 0) or np.any(np.diff(ids) > 1)):
            raise DatasetError("episode_ids must be 0..n_episodes-1 in contiguous sorted blocks")
        if (int(ids[-1]) + 1 if n else 0) != n_ep:
            raise DatasetError(
                f"{n_ep} episode end times for {int(ids[-1]) + 1 if n else 0} episodes"
            )
        if self.episode_end_ns.ndim != 1:
            raise DatasetError("episode_end_ns must be one-dimensional")
        side = self.actions_side
        if n and (side.min() < HOLD or side.max() > SELL):
            raise DatasetError("actions_side must be 0 (hold), 1 (buy) or 2 (sell)")
        if n and (self.actions_size.min() < 0 or self.actions_size.max() > 1):
            raise DatasetError("actions_size must be a fraction in 0..1")
        if n and self.actions_stop.min() < 0:
            raise DatasetError("actions_stop must be >= 0")
        for e, sl in enumerate(self.episode_slices()):
            steps = self.timesteps[sl]
            if not np.array_equal(steps, np.arange(len(steps))):
                raise DatasetError(f"episode {e}: timesteps are not 0..{len(steps) - 1}")
            ts = self.ts_ns[sl]
            if np.any(np.diff(ts) < 0):
                raise DatasetError(f"episode {e}: ts_ns goes backwards")
            if int(ts[-1]) != int(self.episode_end_ns[e]):
                raise DatasetError(f"episode {e}: episode_end_ns is not its last step's time")
        if np.any(np.diff(self.episode_end_ns) < 0):
            raise DatasetError("episodes are not in time order")
        if not np.array_equal(self.returns_to_go, returns_to_go(self.rewards, ids)):
            raise DatasetError("returns_to_go is not the reverse cumulative sum of rewards")

    # -- views -----------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.states)

    @property
    def n_episodes(self) -> int:
        return len(self.episode_end_ns)

    @property
    def window(self) -> int:
        return int(self.states.shape[1])

    @property
    def episode_start_ns(self) -> np.ndarray:
        """The time of each episode's first step."""
        return np.array([self.ts_ns[sl.start] for sl in self.episode_slices()], dtype=np.int64)

    def episode_slices(self) -> list[slice]:
        """One slice of the step arrays per episode, in order."""
        return _slices(self.episode_ids)

    def arrays(self) -> dict[str, np.ndarray]:
        return {name: getattr(self, name) for name in ARRAYS}

    def select_episodes(self, episodes: Sequence[int] | np.ndarray) -> TrajectoryDataset:
        """The given episodes (in time order), renumbered 0..k-1; manifest dropped."""
        chosen = sorted({int(e) for e in episodes})
        if chosen and (chosen[0] < 0 or chosen[-1] >= self.n_episodes):
            raise DatasetError(f"episode ids must be in 0..{self.n_episodes - 1}")
        slices = self.episode_slices()
        idx = (
            np.concatenate([np.arange(slices[e].start, slices[e].stop) for e in chosen])
            if chosen
            else np.zeros(0, dtype=np.int64)
        )
        ids = np.repeat(
            np.arange(len(chosen), dtype=np.int64),
            [slices[e].stop - slices[e].start for e in chosen],
        )
        steps = {name: getattr(self, name)[idx] for name in STEP_ARRAYS}
        steps["episode_ids"] = ids
        return TrajectoryDataset(
            **steps,
            episode_end_ns=self.episode_end_ns[chosen] if chosen else np.zeros(0, np.int64),
            feature_names=self.feature_names,
        )


def build_dataset(
    *,
    states: np.ndarray,
    actions_side: np.ndarray,
    actions_size: np.ndarray,
    actions_stop: np.ndarray,
    rewards: np.ndarray,
    episode_ids: np.ndarray,
    ts_ns: np.ndarray,
    feature_names: Sequence[str],
) -> TrajectoryDataset:
    """A dataset from steps: timesteps, returns-to-go and episode end times derived."""
    ids = np.asarray(episode_ids, dtype=np.int64)
    ts = np.asarray(ts_ns, dtype=np.int64)
    slices = _slices(ids)
    timesteps = np.zeros(len(ids), dtype=np.int64)
    for sl in slices:
        timesteps[sl] = np.arange(sl.stop - sl.start)
    rewards32 = np.asarray(rewards, dtype=np.float32)
    return TrajectoryDataset(
        states=np.asarray(states, dtype=np.float32),
        actions_side=np.asarray(actions_side, dtype=np.int64),
        actions_size=np.asarray(actions_size, dtype=np.float32),
        actions_stop=np.asarray(actions_stop, dtype=np.float32),
        rewards=rewards32,
        returns_to_go=returns_to_go(rewards32, ids),
        timesteps=timesteps,
        episode_ids=ids,
        ts_ns=ts,
        episode_end_ns=np.array([ts[sl.stop - 1] for sl in slices], dtype=np.int64),
        feature_names=tuple(feature_names),
    )


# -- synthetic data ----------------------------------------------------------------------

SYNTHETIC_START_NS = 1_704_067_200 * 1_000_000_000
"""2024-01-01T00:00:00Z: synthetic steps start here (well outside the quarantine)."""
SYNTHETIC_STEP_NS = 10_000_000_000


def synthetic_trajectories(
    n_episodes: int = 8,
    steps: int = 64,
    window: int = 16,
    n_features: int = 8,
    seed: int = 0,
) -> TrajectoryDataset:
    """A deterministic dataset with a learnable signal, for model tests and the demo.

    Each episode is an AR(1) feature series (coefficient 0.9, unit-variance noise),
    states are its sliding windows. The behaviour policy looks at the last row: buy when
    feature 0 > 0.5, sell when < -0.5, else hold; size = logistic(feature 1); stop =
    0.01 x |feature 2| (0 with fewer than 3 features). Reward = 0.01 x direction x
    feature 0 + N(0, 0.001), direction +1 buy / -1 sell / 0 hold: the signal pays. Steps
    are 10 s apart from 2024-01-01, episodes back to back."""
    if min(n_episodes, steps, window, n_features) < 1:
        raise ValueError("n_episodes, steps, window and n_features must be >= 1")
    rng = np.random.Generator(np.random.PCG64(seed))
    total = n_episodes * steps
    states = np.empty((total, window, n_features), dtype=np.float32)
    for e in range(n_episodes):
        series = np.empty((steps + window - 1, n_features), dtype=np.float64)
        series[0] = rng.standard_normal(n_features) / np.sqrt(1 - 0.81)
        noise = rng.standard_normal((len(series) - 1, n_features))
        for t in range(1, len(series)):
            series[t] = 0.9 * series[t - 1] + noise[t - 1]
        windows = np.lib.stride_tricks.sliding_window_view(series, (window, n_features))
        states[e * steps : (e + 1) * steps] = windows[:, 0].astype(np.float32)
    last = states[:, -1, :].astype(np.float64)
    f0 = last[:, 0]
    side = np.where(f0 > 0.5, BUY, np.where(f0 < -0.5, SELL, HOLD)).astype(np.int64)
    f1 = last[:, 1] if n_features > 1 else np.zeros(total)
    size = np.where(side == HOLD, 0.0, 1.0 / (1.0 + np.exp(-f1)))
    f2 = last[:, 2] if n_features > 2 else np.zeros(total)
    stop = np.where(side == HOLD, 0.0, 0.01 * np.abs(f2))
    direction = np.where(side == BUY, 1.0, np.where(side == SELL, -1.0, 0.0))
    rewards = 0.01 * direction * f0 + 0.001 * rng.standard_normal(total)
    ids = np.repeat(np.arange(n_episodes, dtype=np.int64), steps)
    ts = SYNTHETIC_START_NS + np.arange(total, dtype=np.int64) * SYNTHETIC_STEP_NS
    ds = build_dataset(
        states=states,
        actions_side=side,
        actions_size=size,
        actions_stop=stop,
        rewards=rewards,
        episode_ids=ids,
        ts_ns=ts,
        feature_names=[f"f{i}" for i in range(n_features)],
    )
    ds.manifest = {"format": FORMAT, "policy": "synthetic", "synthetic_seed": seed}
    return ds


# -- purged selection ----------------------------------------------------------------------


def purged_split(
    dataset: TrajectoryDataset,
    test_ranges: Sequence[tuple[int, int]],
    embargo_ns: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """``(train_episodes, test_episodes)`` for test time ranges ``[lo, hi)`` (ns).

    Test: the episodes lying wholly inside a test range. Train: the episodes whose span
    ``[first step, episode end]`` overlaps no test range (purging: an episode that ends
    inside a test range has seen what the test is judged on) and that do not start
    within ``embargo_ns`` after a test range's end (serial correlation). Episodes that
    straddle a test range belong to neither."""
    if embargo_ns < 0:
        raise ValueError(f"embargo_ns must be >= 0, got {embargo_ns}")
    start = dataset.episode_start_ns
    end = dataset.episode_end_ns
    test = np.zeros(dataset.n_episodes, dtype=bool)
    train = np.ones(dataset.n_episodes, dtype=bool)
    for lo, hi in test_ranges:
        if hi <= lo:
            raise ValueError(f"empty test range [{lo}, {hi})")
        test |= (start >= lo) & (end < hi)
        overlaps = (start < hi) & (end >= lo)
        embargoed = (start >= hi) & (start < hi + embargo_ns)
        train &= ~overlaps & ~embargoed
    return np.flatnonzero(train), np.flatnonzero(test)


# -- files -------------------------------------------------------------------------------


def _write_npz(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """numpy's .npz layout, written deterministically (fixed zip times, sorted names)."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6) as zf:
        for name in sorted(arrays):
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            with zf.open(info, "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.ascontiguousarray(arrays[name]), allow_pickle=False)


def _write_parquet(path: Path, ds: TrajectoryDataset) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    n, w, f = ds.states.shape
    flat = pa.array(ds.states.reshape(-1), type=pa.float32())
    states = pa.FixedSizeListArray.from_arrays(flat, w * f)
    ends = ds.episode_end_ns[ds.episode_ids] if n else np.zeros(0, np.int64)
    columns: dict[str, Any] = {"states": states}
    for name in STEP_ARRAYS:
        if name != "states":
            columns[name] = pa.array(getattr(ds, name))
    columns["episode_end_ns"] = pa.array(ends)
    schema_meta = {b"window": str(w).encode(), b"n_features": str(f).encode()}
    table = pa.table(columns).replace_schema_metadata(schema_meta)
    pq.write_table(table, path, compression="zstd")


def _read_parquet(path: Path, window: int, n_features: int) -> dict[str, np.ndarray]:
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    out: dict[str, np.ndarray] = {}
    n = table.num_rows
    flat = table.column("states").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    out["states"] = np.asarray(flat, dtype=np.float32).reshape(n, window, n_features)
    for name in STEP_ARRAYS:
        if name != "states":
            out[name] = table.column(name).to_numpy()
    ends = table.column("episode_end_ns").to_numpy()
    ids = out["episode_ids"]
    out["episode_end_ns"] = np.array([ends[sl.stop - 1] for sl in _slices(ids)], dtype=np.int64)
    return out


def save_trajectories(
    dataset: TrajectoryDataset,
    out_dir: str | Path,
    *,
    ranges: Sequence[tuple[int, int]],
    policy: str,
    config_hash: str,
    code_version: str,
    max_data_ts_ns: int | None = None,
    fmt: str = "npz",
    extra: Mapping[str, Any] | None = None,
    quarantine_days: int = QUARANTINE_DAYS,
    clock: Clock | None = None,
) -> dict[str, Any]:
    """Write ``dataset`` to ``out_dir`` (NPZ or Parquet, then ``manifest.json`` last) and
    return the manifest. ``max_data_ts_ns`` is the newest market time the data depends
    on (default: the newest step). Refuses data or ranges inside the quarantine."""
    if fmt not in ("npz", "parquet"):
        raise DatasetError(f"format must be npz or parquet, got {fmt!r}")
    data_max = int(dataset.ts_ns.max()) if len(dataset) else 0
    max_ts = max(data_max, max_data_ts_ns if max_data_ts_ns is not None else 0)
    for _, hi in ranges:
        check_range_end(hi, quarantine_days, clock)
    check_data_max(max_ts, quarantine_days, clock)
    cutoff = quarantine_cutoff_ns(quarantine_days, clock)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    name = NPZ_FILE if fmt == "npz" else PARQUET_FILE
    tmp = out / f".{name}.tmp"
    if fmt == "npz":
        _write_npz(tmp, dataset.arrays())
    else:
        _write_parquet(tmp, dataset)
    os.replace(tmp, out / name)
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "ranges": [[int(lo), int(hi)] for lo, hi in ranges],
        "policy": policy,
        "config_hash": config_hash,
        "code_version": code_version,
        "quarantine_days": quarantine_days,
        "quarantine_cutoff_ns": cutoff,
        "max_data_ts_ns": max_ts,
        "feature_names": list(dataset.feature_names),
        "n_episodes": dataset.n_episodes,
        "n_steps": len(dataset),
        "window": dataset.window,
        "files": {name: file_hash(out / name)},
    }
    for key, value in (extra or {}).items():
        manifest.setdefault(key, value)
    tmp_manifest = out / f".{MANIFEST_FILE}.tmp"
    tmp_manifest.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    os.replace(tmp_manifest, out / MANIFEST_FILE)
    dataset.manifest = manifest
    return manifest


def load_trajectories(
    path: str | Path,
    clock: Clock | None = None,
    quarantine_days: int = QUARANTINE_DAYS,
) -> TrajectoryDataset:
    """Read a dataset directory: check the format, each file's hash, the arrays, and the
    quarantine against the manifest's ``max_data_ts_ns``, its range ends and the data's
    own newest ``ts_ns`` (QuarantineError if any is too recent)."""
    root = Path(path)
    try:
        manifest = json.loads((root / MANIFEST_FILE).read_text())
    except FileNotFoundError:
        raise DatasetError(f"{root}: no {MANIFEST_FILE}") from None
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{root / MANIFEST_FILE}: not JSON ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        got = manifest.get("format") if isinstance(manifest, dict) else manifest
        raise DatasetError(f"{root}: format {got!r}, expected {FORMAT!r}")
    missing = sorted(k for k in MANIFEST_KEYS if k not in manifest)
    if missing:
        raise DatasetError(f"{root / MANIFEST_FILE}: missing {', '.join(missing)}")
    # the manifest's own claims first: refused before reading any array
    check_data_max(int(manifest["max_data_ts_ns"]), quarantine_days, clock)
    for _, hi in manifest["ranges"]:
        check_range_end(int(hi), quarantine_days, clock)
    files: dict[str, str] = manifest["files"]
    if not files:
        raise DatasetError(f"{root}: the manifest lists no files")
    for name, expected in files.items():
        got = file_hash(root / name)
        if got != expected:
            raise DatasetError(
                f"{root / name}: blake2b-256 {got} does not match the manifest's {expected}"
            )
    names = tuple(manifest["feature_names"])
    if NPZ_FILE in files:
        with np.load(root / NPZ_FILE, allow_pickle=False) as z:
            missing = sorted(set(ARRAYS) - set(z.files))
            if missing:
                raise DatasetError(f"{root / NPZ_FILE}: missing arrays {missing}")
            arrays = {k: z[k] for k in ARRAYS}
    elif PARQUET_FILE in files:
        arrays = _read_parquet(root / PARQUET_FILE, int(manifest["window"]), len(names))
    else:
        raise DatasetError(f"{root}: no {NPZ_FILE} or {PARQUET_FILE} in the manifest")
    ds = TrajectoryDataset(**arrays, feature_names=names, manifest=manifest)
    if len(ds):
        check_data_max(int(ds.ts_ns.max()), quarantine_days, clock)
        check_data_max(int(ds.episode_end_ns.max()), quarantine_days, clock)
    if ds.n_episodes != manifest["n_episodes"] or len(ds) != manifest["n_steps"]:
        raise DatasetError(
            f"{root}: {ds.n_episodes} episodes / {len(ds)} steps, the manifest says "
            f"{manifest['n_episodes']} / {manifest['n_steps']}"
        )
    return ds


__all__ = [
    "BUY",
    "FORMAT",
    "HOLD",
    "SELL",
    "DatasetError",
    "QuarantineError",
    "TrajectoryDataset",
    "build_dataset",
    "file_hash",
    "load_trajectories",
    "purged_split",
    "returns_to_go",
    "save_trajectories",
    "synthetic_trajectories",
]
