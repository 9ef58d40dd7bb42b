"""The configuration file: one YAML or TOML file (``--config``) whose keys override built-in defaults.

Every key, with its default and what it does, is in ``pipelines/profilestream.example.yaml`` (README,
"Configuration"): ``tenant_id``, ``commit_interval_seconds``, ``timestamp_skew_seconds``, ``max_errors``,
``max_message_bytes``, ``max_batch_entries``, ``datasets`` (aliases), ``namespaces`` (a list replaces the standard set
of :data:`identity.namespaces.STANDARD_NAMESPACES`), ``identity`` (graph limits, quarantine, blocked values and
patterns, phone region, identity fields), ``inlet`` (``serve --pubsub-topic``) and ``profiles`` (merge policy,
guardrails, TTL, flushing). A section may give any subset of its keys.

A connection takes ``token`` or ``token_env`` (the variable holding it; neither: no token asked), ``rate_per_second``
and ``burst`` (its token bucket, counted in requests), ``schema`` and ``dataset``, the ``schemaRef`` and
``datasetId`` attributes of messages that name none themselves, ``allowed_origins`` (the web pages whose browsers
may send to it) and ``public`` (no token, for browsers; it must set ``rate_per_second``, ``burst`` and
``allowed_origins``) (:class:`service.settings.InletConnection`).

``event_ttl_days`` applies where profiles are read (``profile get``, ``serve``), by each event's ``timestamp``
against the lookup's clock: it hides old bodies from ``recent`` only; ``count``, ``by_type``, ``first_seen`` and
``last_seen`` still count every event kept.

A namespace is ``{code, type}`` plus optional ``numeric_id``, ``unique``, ``priority`` and ``hash_of``
(:class:`identity.namespaces.Namespace`; type is cookie, device, cross-device, person or hashed).
Unknown keys and wrong types are errors, reported in one line naming the file and the key.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import yaml

from core.errors import ConfigError
from identity.graph import GraphRules
from identity.namespaces import (
    DEFAULT_IDENTITY_FIELDS,
    STANDARD_NAMESPACES,
    IdentityRules,
    Namespace,
    NamespaceRegistry,
)
from identity.stitching import StitchSettings
from lake.windows import COMMIT_INTERVAL_S, divides_an_hour
from messages.decoding import MAX_BATCH_ENTRIES, MAX_MESSAGE_BYTES
from profiles.model import DEFAULT_LIMITS, DatasetPrecedence, MergePolicy, ProfileLimits, TimestampOrdered
from profiles.writer import ProfileSettings
from schemas.validation import DEFAULT_POLICY, ValidationPolicy
from service.settings import InletConnection, InletSettings


@dataclasses.dataclass(frozen=True, kw_only=True)
class IdentitySettings:
    """The ``identity`` key: the identity graph's limits and the rules identities are extracted by."""

    max_identities_per_graph: int = GraphRules.max_identities
    quarantine_links: int = GraphRules.quarantine_links
    quarantine_window_seconds: int = GraphRules.quarantine_window_us // 1_000_000
    blocked_values: tuple[str, ...] = IdentityRules.blocked_values
    blocked_patterns: tuple[str, ...] = IdentityRules.blocked_patterns
    phone_region: str = IdentityRules.phone_region
    fields: Mapping[str, str] = dataclasses.field(default_factory=lambda: dict(DEFAULT_IDENTITY_FIELDS))

    def __post_init__(self) -> None:
        for name in ("max_identities_per_graph", "quarantine_links", "quarantine_window_seconds"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"identity.{name} must be positive")


TIMESTAMP_ORDERED = "timestamp_ordered"
DATASET_PRECEDENCE = "dataset_precedence"
_DAY_US = 86_400 * 1_000_000


@dataclasses.dataclass(frozen=True, kw_only=True)
class ProfilesSettings:
    """The ``profiles`` key: the merge policy, the guardrails, the buffering of MergeProfiles and the event TTL.

    The defaults are those of :class:`profiles.writer.ProfileSettings` and :data:`profiles.model.DEFAULT_LIMITS`.
    """

    merge_policy: str = TIMESTAMP_ORDERED
    dataset_order: tuple[str, ...] = ()
    recent_events: int = DEFAULT_LIMITS.recent_events
    max_events: int = DEFAULT_LIMITS.max_events
    max_event_bytes: int = DEFAULT_LIMITS.max_event_bytes
    max_record_bytes: int = DEFAULT_LIMITS.max_record_bytes
    event_ttl_days: float | None = None
    flush_interval_seconds: float = ProfileSettings.flush_interval_s
    max_buffered: int = ProfileSettings.max_buffered
    shards: int = ProfileSettings.shards

    def __post_init__(self) -> None:
        if self.merge_policy not in (TIMESTAMP_ORDERED, DATASET_PRECEDENCE):
            raise ConfigError(
                f"profiles.merge_policy must be {TIMESTAMP_ORDERED} or {DATASET_PRECEDENCE}, not {self.merge_policy!r}"
            )
        if self.merge_policy == DATASET_PRECEDENCE and not self.dataset_order:
            raise ConfigError(f"profiles.dataset_order must name the datasets {DATASET_PRECEDENCE} ranks, first wins")
        if self.merge_policy != DATASET_PRECEDENCE and self.dataset_order:
            raise ConfigError(f"profiles.dataset_order applies only to merge_policy: {DATASET_PRECEDENCE}")
        if not all(isinstance(name, str) and name for name in self.dataset_order):
            raise ConfigError("profiles.dataset_order must be a list of dataset names")
        if len(set(self.dataset_order)) < len(self.dataset_order):
            raise ConfigError("profiles.dataset_order names a dataset twice")
        for name in ("max_event_bytes", "max_record_bytes", "flush_interval_seconds", "max_buffered", "shards"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"profiles.{name} must be positive")
        if self.event_ttl_days is not None and self.event_ttl_days <= 0:
            raise ConfigError("profiles.event_ttl_days must be positive (or null: no TTL)")
        try:
            self.limits()
        except ValueError as error:
            raise ConfigError(f"profiles: {error}") from None

    def limits(self) -> ProfileLimits:
        """The guardrails fragments are kept within; raises ValueError when they contradict each other."""
        return ProfileLimits(
            max_events=self.max_events,
            recent_events=self.recent_events,
            max_event_bytes=self.max_event_bytes,
            max_record_bytes=self.max_record_bytes,
        )

    def policy(self) -> MergePolicy:
        """The merge policy ``merge_policy`` names, ranking ``dataset_order`` for dataset precedence."""
        if self.merge_policy == DATASET_PRECEDENCE:
            return DatasetPrecedence(self.dataset_order)
        return TimestampOrdered()


@dataclasses.dataclass(frozen=True)
class Config:
    tenant_id: str = "tenant"
    commit_interval_seconds: int = COMMIT_INTERVAL_S
    timestamp_skew_seconds: int = DEFAULT_POLICY.timestamp_skew_us // 1_000_000
    max_errors: int = DEFAULT_POLICY.max_errors
    max_message_bytes: int = MAX_MESSAGE_BYTES
    max_batch_entries: int = MAX_BATCH_ENTRIES
    datasets: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
    namespaces: tuple[Namespace, ...] = STANDARD_NAMESPACES
    identity: IdentitySettings = dataclasses.field(default_factory=IdentitySettings)
    inlet: InletSettings = dataclasses.field(default_factory=InletSettings)
    profiles: ProfilesSettings = dataclasses.field(default_factory=ProfilesSettings)

    def __post_init__(self) -> None:
        for name in ("commit_interval_seconds", "max_errors", "max_message_bytes", "max_batch_entries"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive")
        if self.timestamp_skew_seconds < 0:
            raise ConfigError("timestamp_skew_seconds must not be negative")
        if not divides_an_hour(self.commit_interval_seconds):
            raise ConfigError(f"commit_interval_seconds must divide an hour (3600), not {self.commit_interval_seconds}")
        try:
            registry = self.namespace_registry()
        except ValueError as error:
            raise ConfigError(f"namespaces: {error}") from None
        try:
            self.identity_rules()
        except ValueError as error:
            raise ConfigError(f"identity: {error}") from None
        for path, code in self.identity.fields.items():
            if registry.resolve(code) is None:
                raise ConfigError(
                    f"identity.fields.{path} names {code!r}, which is not a configured namespace "
                    "(identity.fields must follow a custom namespaces list)"
                )

    def dataset_aliases(self) -> dict[str, list[str]]:
        return {name: list(settings.get("aliases", ())) for name, settings in self.datasets.items()}

    def namespace_registry(self) -> NamespaceRegistry:
        return NamespaceRegistry(self.namespaces)

    def validation_policy(self) -> ValidationPolicy:
        return ValidationPolicy(timestamp_skew_us=self.timestamp_skew_seconds * 1_000_000, max_errors=self.max_errors)

    def identity_rules(self) -> IdentityRules:
        identity = self.identity
        return IdentityRules(
            fields=identity.fields,
            blocked_values=identity.blocked_values,
            blocked_patterns=identity.blocked_patterns,
            phone_region=identity.phone_region,
        )

    def stitch_settings(self) -> StitchSettings:
        """The namespaces, normalisation rules and linking rules the configuration sets."""
        identity = self.identity
        graph = GraphRules(
            unique_namespaces=frozenset(namespace.code for namespace in self.namespaces if namespace.unique),
            priority={namespace.code: namespace.priority for namespace in self.namespaces},
            max_identities=identity.max_identities_per_graph,
            quarantine_links=identity.quarantine_links,
            quarantine_window_us=identity.quarantine_window_seconds * 1_000_000,
        )
        return StitchSettings(self.namespace_registry(), self.identity_rules(), graph)

    def profile_settings(self) -> ProfileSettings:
        """What MergeProfiles takes: the policy, the guardrails and the buffering the ``profiles`` key sets."""
        profiles = self.profiles
        return ProfileSettings(
            policy=profiles.policy(),
            limits=profiles.limits(),
            flush_interval_s=profiles.flush_interval_seconds,
            max_buffered=profiles.max_buffered,
            shards=profiles.shards,
        )

    def event_ttl_us(self) -> int | None:
        """How old, in microseconds, a recent event a lookup shows may be; None: any age."""
        days = self.profiles.event_ttl_days
        return None if days is None else round(days * _DAY_US)


_SECTION_TYPES = {
    "tenant_id": str,
    "datasets": dict,
    "namespaces": list,
    "identity": dict,
    "inlet": dict,
    "profiles": dict,
}


def load_config(path: str | Path | None, overrides: Mapping[str, Any] | None = None) -> Config:
    """The configuration in ``path`` (YAML, or TOML by its ``.toml`` suffix) over the defaults, then ``overrides``."""
    values: dict[str, Any] = dict(_read(Path(path))) if path is not None else {}
    values.update({key: value for key, value in (overrides or {}).items() if value is not None})
    where = str(path) if path is not None else "configuration"
    fields = {field.name: field for field in dataclasses.fields(Config)}
    for key, value in values.items():
        if key not in fields:
            raise ConfigError(f"{where}: unknown key {key!r} (known: {', '.join(sorted(fields))})")
        expected = _SECTION_TYPES.get(key, int)
        if not _has_type(value, expected):
            raise ConfigError(f"{where}: {key} must be {expected.__name__}, not {json.dumps(value, default=str)}")
    datasets = values.get("datasets", {})
    for name, settings in datasets.items():
        if not isinstance(settings, dict) or set(settings) - {"aliases"}:
            raise ConfigError(f"{where}: datasets.{name} takes only 'aliases' (a list of dataset ids)")
        if not isinstance(settings.get("aliases", []), list):
            raise ConfigError(f"{where}: datasets.{name}.aliases must be a list")
    try:
        if "namespaces" in values:
            values["namespaces"] = _namespaces(values["namespaces"])
        if "identity" in values:
            values["identity"] = _identity_settings(values["identity"])
        if "inlet" in values:
            values["inlet"] = _inlet_settings(values["inlet"])
        if "profiles" in values:
            values["profiles"] = _profiles_settings(values["profiles"])
        return Config(**values)
    except ConfigError as error:
        raise ConfigError(f"{where}: {error}") from None


_NAMESPACE_KEYS = {"code": str, "numeric_id": int, "type": str, "unique": bool, "priority": int, "hash_of": str}
_OPTIONAL_NAMESPACE_KEYS = ("numeric_id", "hash_of")  # these may also be null
_IDENTITY_KEYS = {
    "max_identities_per_graph": int,
    "quarantine_links": int,
    "quarantine_window_seconds": int,
    "blocked_values": list,
    "blocked_patterns": list,
    "phone_region": str,
    "fields": dict,
}


_NUMBER = (int, float)
_INLET_KEYS = {"max_request_bytes": int, "publish_timeout_seconds": _NUMBER, "connections": dict}
_CONNECTION_KEYS = {
    "token": str,
    "token_env": str,
    "rate_per_second": _NUMBER,
    "burst": int,
    "schema": str,
    "dataset": str,
    "allowed_origins": list,
    "public": bool,
}
# A public connection is open to every visitor of its pages, so its rate limit is chosen, never a default.
_PUBLIC_CONNECTION_NEEDS = ("rate_per_second", "burst")
_PROFILES_KEYS = {
    "merge_policy": str,
    "dataset_order": list,
    "recent_events": int,
    "max_events": int,
    "max_event_bytes": int,
    "max_record_bytes": int,
    "event_ttl_days": _NUMBER,
    "flush_interval_seconds": _NUMBER,
    "max_buffered": int,
    "shards": int,
}


def _namespaces(items: list) -> tuple[Namespace, ...]:
    if not items:
        raise ConfigError("namespaces must list at least one namespace (leave the key out for the standard set)")
    namespaces = []
    for position, item in enumerate(items):
        name = f"namespaces[{position}]"
        if not isinstance(item, dict):
            raise ConfigError(f"{name} must be a mapping with code and type")
        _check_keys(item, _NAMESPACE_KEYS, name, nullable=_OPTIONAL_NAMESPACE_KEYS)
        missing = [key for key in ("code", "type") if key not in item]
        if missing:
            raise ConfigError(f"{name} needs {' and '.join(missing)}")
        try:
            namespaces.append(Namespace(**{"numeric_id": None, **item}))
        except ValueError as error:
            raise ConfigError(f"{name}: {error}") from None
    return tuple(namespaces)


def _identity_settings(settings: dict) -> IdentitySettings:
    _check_keys(settings, _IDENTITY_KEYS, "identity")
    for key in ("blocked_values", "blocked_patterns"):
        if not all(isinstance(entry, str) for entry in settings.get(key, ())):
            raise ConfigError(f"identity.{key} must be a list of strings")
    fields = settings.get("fields", {})
    for path, code in fields.items():
        if not isinstance(path, str) or not all(path.split(".")) or not isinstance(code, str):
            raise ConfigError(
                f"identity.fields maps dot-separated field paths to namespace codes, not {path!r}: {code!r}"
            )
    return IdentitySettings(**_lists_as_tuples(settings))


def _inlet_settings(settings: dict) -> InletSettings:
    _check_keys(settings, _INLET_KEYS, "inlet")
    connections = {}
    for connection_id, connection in settings.get("connections", {}).items():
        where = f"inlet.connections.{connection_id}"
        if not isinstance(connection, dict):
            raise ConfigError(f"{where} must be a mapping (of {', '.join(_CONNECTION_KEYS)})")
        _check_keys(connection, _CONNECTION_KEYS, where)
        if connection.get("public") and not all(key in connection for key in _PUBLIC_CONNECTION_NEEDS):
            raise ConfigError(f"{where}: a public connection must set its rate limit: rate_per_second and burst")
        try:
            connections[str(connection_id)] = InletConnection(**_lists_as_tuples(connection))
        except ConfigError as error:
            raise ConfigError(f"{where}: {error}") from None
    return InletSettings(**{**settings, "connections": connections})


def _profiles_settings(settings: dict) -> ProfilesSettings:
    _check_keys(settings, _PROFILES_KEYS, "profiles", nullable=("event_ttl_days",))
    return ProfilesSettings(**_lists_as_tuples(settings))


def _lists_as_tuples(settings: dict) -> dict:
    """``settings`` with its list values as tuples, as the frozen settings classes hold them."""
    return {key: tuple(value) if isinstance(value, list) else value for key, value in settings.items()}


def _check_keys(
    values: dict, types: Mapping[str, type | tuple[type, ...]], where: str, *, nullable: Collection[str] = ()
) -> None:
    """Raises a ConfigError naming the first key of ``values`` not in ``types`` or not of its type (or, for the
    ``nullable`` keys, null)."""
    for key, value in values.items():
        expected = types.get(key)
        if expected is None:
            raise ConfigError(f"{where}: unknown key {key!r} (known: {', '.join(types)})")
        if not _has_type(value, expected) and not (value is None and key in nullable):
            name = "number" if expected is _NUMBER else expected.__name__
            raise ConfigError(f"{where}.{key} must be {name}, not {json.dumps(value, default=str)}")


def _has_type(value: Any, expected: type | tuple[type, ...]) -> bool:
    # YAML and TOML booleans are Python ints too; only a bool key takes one.
    return isinstance(value, expected) and (expected is bool or not isinstance(value, bool))


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
