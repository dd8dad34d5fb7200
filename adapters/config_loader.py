"""Load config/*.yaml into the frozen :class:`kernel.config.AppConfig`.

Each file ``<stem>.yaml`` fills the field ``<stem>`` of AppConfig; a missing file keeps
the defaults. An unknown or mistyped key is a :class:`ConfigError` naming the file and
the key's path. Environment variables override what must not live in files:

* ``TICKERML_CONFIG_DIR``: where the YAML files are (default ``./config``, then the
  repository's ``config/``)
* ``TICKERML_JOURNAL_DSN``: the journal DSN (``timescale.dsn``)
* ``TICKERML_KAFKA_BOOTSTRAP``: Kafka bootstrap servers (``kafka.bootstrap_servers``)
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec
import yaml

from kernel.config import AppConfig
from kernel.instruments import InstrumentError, InstrumentRegistry

REPO_CONFIG_DIR = Path(__file__).resolve().parents[1] / "config"


class ConfigError(ValueError):
    """A config file is missing, unreadable or has a bad key or value."""


def find_config_dir(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    if env.get("TICKERML_CONFIG_DIR"):
        path = Path(env["TICKERML_CONFIG_DIR"])
        if not path.is_dir():
            raise ConfigError(f"TICKERML_CONFIG_DIR={path} is not a directory")
        return path
    local = Path.cwd() / "config"
    if (local / "trading.yaml").is_file():
        return local
    return REPO_CONFIG_DIR


_PATH_RE = re.compile(r" - at `\$\.?([^`]*)`$")


def _explain(exc: msgspec.ValidationError, file: Path) -> ConfigError:
    msg = str(exc)
    m = _PATH_RE.search(msg)
    where = ""
    if m:
        where = m.group(1) or "<top level>"
        msg = msg[: m.start()]
    unknown = re.match(r"Object contains unknown field `([^`]*)`", msg)
    if unknown:
        key = (
            f"{where}.{unknown.group(1)}" if where and where != "<top level>" else unknown.group(1)
        )
        return ConfigError(f"{file}: unknown key `{key}`")
    return ConfigError(f"{file}: {msg}" + (f" (at `{where}`)" if where else ""))


def load_config(
    config_dir: str | Path | None = None, env: Mapping[str, str] | None = None
) -> AppConfig:
    """Read every known YAML file in ``config_dir`` and apply environment overrides."""
    env = os.environ if env is None else env
    directory = Path(config_dir) if config_dir is not None else find_config_dir(env)
    sections: dict[str, Any] = {}
    fields = msgspec.structs.fields(AppConfig)
    for field in fields:
        file = directory / f"{field.name}.yaml"
        if not file.is_file():
            continue
        try:
            data = yaml.safe_load(file.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{file}: not valid YAML: {exc}") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"{file}: expected a mapping at the top level")
        try:
            sections[field.name] = msgspec.convert(data, field.type)
        except msgspec.ValidationError as exc:
            raise _explain(exc, file) from exc
        except InstrumentError as exc:
            raise ConfigError(f"{file}: {exc}") from exc
    unexpected = sorted(
        p.name for p in directory.glob("*.yaml") if p.stem not in {f.name for f in fields}
    )
    if unexpected:
        raise ConfigError(
            f"{directory}: unknown config file(s) {unexpected}; known: "
            + ", ".join(f"{f.name}.yaml" for f in fields)
        )
    config = AppConfig(**sections)
    if env.get("TICKERML_JOURNAL_DSN"):
        config = msgspec.structs.replace(
            config,
            timescale=msgspec.structs.replace(config.timescale, dsn=env["TICKERML_JOURNAL_DSN"]),
        )
    if env.get("TICKERML_KAFKA_BOOTSTRAP"):
        config = msgspec.structs.replace(
            config,
            kafka=msgspec.structs.replace(
                config.kafka, bootstrap_servers=env["TICKERML_KAFKA_BOOTSTRAP"]
            ),
        )
    try:
        InstrumentRegistry(list(config.instruments.instruments))
    except InstrumentError as exc:
        raise ConfigError(f"{directory / 'instruments.yaml'}: {exc}") from exc
    return config


def redacted(config: AppConfig) -> AppConfig:
    """The config with secrets removed (the DSN's password): what is hashed and journaled."""
    dsn = re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", config.timescale.dsn)
    return msgspec.structs.replace(
        config, timescale=msgspec.structs.replace(config.timescale, dsn=dsn)
    )
