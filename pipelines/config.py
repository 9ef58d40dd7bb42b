"""The configuration file: one YAML or TOML file (``--config``) whose keys override built-in defaults.

Every key, with its default (also shipped as ``pipelines/profilestream.example.yaml`` and listed in README)::

    tenant_id: tenant                 # the tenant object is the top-level key "_" + tenant_id
    commit_interval_seconds: 300      # lake window length; must divide an hour
    timestamp_skew_seconds: 300       # how far past its ingestion time an event timestamp may lie
    max_errors: 100                   # violations reported per record
    max_message_bytes: 1048576        # larger messages fail with SIZE.MESSAGE_TOO_LARGE
    datasets:                         # other ids a header's datasetId may use for a dataset
      experience_events: {aliases: []}
      profile_records: {aliases: []}

Unknown keys and wrong types are errors, reported in one line naming the file and the key.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """The configuration cannot be used; the message is one line."""


@dataclasses.dataclass(frozen=True)
class Config:
    tenant_id: str = "tenant"
    commit_interval_seconds: int = 300
    timestamp_skew_seconds: int = 300
    max_errors: int = 100
    max_message_bytes: int = 1024 * 1024
    datasets: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("commit_interval_seconds", "max_errors", "max_message_bytes"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive")
        if self.timestamp_skew_seconds < 0:
            raise ConfigError("timestamp_skew_seconds must not be negative")
        if 3600 % self.commit_interval_seconds:
            raise ConfigError(f"commit_interval_seconds must divide an hour (3600), not {self.commit_interval_seconds}")

    def dataset_aliases(self) -> dict[str, list[str]]:
        return {name: list(settings.get("aliases", ())) for name, settings in self.datasets.items()}


def load_config(path: str | Path | None, overrides: Mapping[str, Any] | None = None) -> Config:
    """The configuration in ``path`` (YAML, or TOML by its ``.toml`` suffix) over the defaults, then ``overrides``."""
    values: dict[str, Any] = dict(_read(Path(path))) if path is not None else {}
    values.update({key: value for key, value in (overrides or {}).items() if value is not None})
    where = str(path) if path is not None else "configuration"
    fields = {field.name: field for field in dataclasses.fields(Config)}
    for key, value in values.items():
        if key not in fields:
            raise ConfigError(f"{where}: unknown key {key!r} (known: {', '.join(sorted(fields))})")
        expected = {"tenant_id": str, "datasets": dict}.get(key, int)
        if not isinstance(value, expected) or isinstance(value, bool):
            raise ConfigError(f"{where}: {key} must be {expected.__name__}, not {json.dumps(value, default=str)}")
    datasets = values.get("datasets", {})
    for name, settings in datasets.items():
        if not isinstance(settings, dict) or set(settings) - {"aliases"}:
            raise ConfigError(f"{where}: datasets.{name} takes only 'aliases' (a list of dataset ids)")
        if not isinstance(settings.get("aliases", []), list):
            raise ConfigError(f"{where}: datasets.{name}.aliases must be a list")
    try:
        return Config(**values)
    except ConfigError as error:
        raise ConfigError(f"{where}: {error}") from None


def _read(path: Path) -> Mapping[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"{path}: cannot read: {error.strerror}") from None
    try:
        values = tomllib.loads(text) if path.suffix == ".toml" else yaml.safe_load(text)
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as error:
        raise ConfigError(
            f"{path}: not valid {'TOML' if path.suffix == '.toml' else 'YAML'}: {_first_line(error)}"
        ) from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: the configuration is a mapping of keys to values")
    return values


def _first_line(error: Exception) -> str:
    return " ".join(str(error).split())
