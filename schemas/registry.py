"""The schema registry: which ingestion schemas exist, where their records go, and their derived forms.

An *ingestion schema* is an XDM class composed with field groups and a tenant object, bound to one dataset. The
built-in ones are listed in the contract file ``schemas/ingestion.json``; users add their own with ``--schema-dir``,
one JSON file each, in the same format::

    {"$id": "https://example.com/schemas/loyalty-event",
     "class": "https://ns.adobe.com/xdm/context/experienceevent",
     "fieldGroups": ["https://ns.adobe.com/xdm/context/identitymap"],
     "tenant": {"type": "object", "properties": {"loyaltyTier": {"type": "string"}}},
     "dataset": {"name": "loyalty_events", "identity": true, "profile": false}}

A message names its schema by id; a class id means that class's built-in ingestion schema. From each schema's field
tree (:mod:`schemas.components`) the registry derives the Avro schema (:mod:`schemas.avro`) and the Arrow schema of
its lake dataset (:mod:`schemas.arrow`); nothing is written twice.

A registry that :meth:`SchemaRegistry.load` built keeps the definitions it was built from (:attr:`definition`, a
short JSON text), from which :meth:`SchemaRegistry.from_definition` builds it again: the stages ship that to the
workers instead of the composed schemas (:mod:`transforms.shared_registry`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

from schemas.components import Field, UnknownComponentError, component, compose

CONTRACT_FILE = Path(__file__).parent / "ingestion.json"
TIME_SERIES_BEHAVIOUR = "https://ns.adobe.com/xdm/data/time-series"
RESERVED_DATASETS = frozenset({"failed_records", "identity_changes"})
DEFAULT_TENANT_ID = "tenant"
_DATASET_NAME = re.compile(r"[a-z][a-z0-9_]{0,62}")


class SchemaFileError(ValueError):
    """A schema file or the contract file cannot be used; the message is one line naming the file."""


@dataclasses.dataclass(frozen=True)
class Dataset:
    """Where a schema's records go, and whether they feed the identity graph and profiles.

    ``aliases`` are other ids a message header may use for the same dataset (e.g. the platform's dataset ids).
    """

    name: str
    identity: bool = True
    profile: bool = True
    aliases: tuple[str, ...] = ()

    def is_named_by(self, dataset_id: str) -> bool:
        return dataset_id == self.name or dataset_id in self.aliases


@dataclasses.dataclass(eq=False)
class IngestionSchema:
    """A composed schema and everything derived from it."""

    schema_id: str
    class_id: str
    field_groups: tuple[str, ...]
    dataset: Dataset
    root: Field
    time_series: bool

    @functools.cached_property
    def avro_schema(self) -> dict:
        """The fastavro-parsed Avro schema an ``avro/binary`` entity of this schema is written with."""
        from schemas.avro import avro_schema

        return avro_schema(self)

    @functools.cached_property
    def arrow_schema(self):
        """The Arrow schema of this schema's rows in the lake."""
        from schemas.arrow import record_arrow_schema

        return record_arrow_schema(self.root)


class SchemaRegistry:
    """Ingestion schemas by id, and datasets by name."""

    def __init__(self, schemas: Iterable[IngestionSchema], tenant_key: str) -> None:
        self.tenant_key = tenant_key
        self._schemas: dict[str, IngestionSchema] = {}
        self.datasets: dict[str, Dataset] = {}
        # What load() built this from, as canonical JSON; None for a registry made from composed schemas.
        self.definition: str | None = None
        for schema in schemas:
            self._schemas[schema.schema_id] = schema
            self.datasets[schema.dataset.name] = schema.dataset

    @classmethod
    def load(
        cls,
        schema_dir: str | Path | None = None,
        *,
        tenant_id: str = DEFAULT_TENANT_ID,
        dataset_aliases: Mapping[str, Iterable[str]] | None = None,
    ) -> SchemaRegistry:
        """The built-in schemas plus one per ``*.json`` file in ``schema_dir``."""
        definitions = [(str(CONTRACT_FILE), entry) for entry in _read_json(CONTRACT_FILE)["schemas"]]
        if schema_dir is not None:
            directory = Path(schema_dir)
            if not directory.is_dir():
                raise SchemaFileError(f"{directory}: schema directory not found")
            definitions += [(str(path), _read_json(path)) for path in sorted(directory.glob("*.json"))]
        aliases = {name: list(ids) for name, ids in (dataset_aliases or {}).items()}
        return cls.from_definition(json.dumps([definitions, tenant_id, aliases], sort_keys=True, ensure_ascii=False))

    @classmethod
    def from_definition(cls, definition: str) -> SchemaRegistry:
        """The registry a :attr:`definition` describes (the schema files' contents, tenant id and dataset aliases, as
        JSON), composed again."""
        definitions, tenant_id, aliases = json.loads(definition)
        registry = cls._compose([tuple(pair) for pair in definitions], tenant_id, aliases)
        registry.definition = definition
        return registry

    @classmethod
    def _compose(
        cls, definitions: list[tuple[str, object]], tenant_id: str, dataset_aliases: Mapping[str, Iterable[str]]
    ) -> SchemaRegistry:
        tenant_key = f"_{tenant_id}"
        aliases = {name: tuple(ids) for name, ids in dataset_aliases.items()}
        schemas: dict[str, IngestionSchema] = {}
        dataset_names: set[str] = set()
        for path, definition in definitions:
            schema = _ingestion_schema(path, definition, tenant_key, aliases)
            if schema.schema_id in schemas:
                raise SchemaFileError(f"{path}: schema id {schema.schema_id} is defined twice")
            if schema.dataset.name in dataset_names:
                raise SchemaFileError(f"{path}: dataset {schema.dataset.name} is already bound to another schema")
            schemas[schema.schema_id] = schema
            dataset_names.add(schema.dataset.name)
        return cls(schemas.values(), tenant_key)

    def get(self, schema_id: str | None) -> IngestionSchema | None:
        return self._schemas.get(schema_id) if schema_id is not None else None

    @property
    def schemas(self) -> list[IngestionSchema]:
        return list(self._schemas.values())

    def avro_schema_for(self, schema_id: str) -> dict | None:
        schema = self._schemas.get(schema_id)
        return schema.avro_schema if schema is not None else None


def _ingestion_schema(
    path: str, definition: object, tenant_key: str, aliases: Mapping[str, tuple[str, ...]]
) -> IngestionSchema:
    if not isinstance(definition, dict):
        raise SchemaFileError(f"{path}: a schema file holds one JSON object")
    missing = [key for key in ("$id", "class", "dataset") if key not in definition]
    if missing:
        raise SchemaFileError(f"{path}: missing {', '.join(missing)}")
    dataset_definition = definition["dataset"]
    name = dataset_definition.get("name") if isinstance(dataset_definition, dict) else None
    if not isinstance(name, str) or not _DATASET_NAME.fullmatch(name) or name in RESERVED_DATASETS:
        raise SchemaFileError(
            f"{path}: dataset name must match {_DATASET_NAME.pattern} and not be one of {sorted(RESERVED_DATASETS)}"
        )
    dataset = Dataset(
        name=name,
        identity=bool(dataset_definition.get("identity", True)),
        profile=bool(dataset_definition.get("profile", True)),
        aliases=aliases.get(name, ()),
    )
    field_groups = definition.get("fieldGroups", [])
    if not isinstance(field_groups, list) or not all(isinstance(group, str) for group in field_groups):
        raise SchemaFileError(f"{path}: fieldGroups must be a list of XDM component ids")
    field_groups = tuple(field_groups)
    if not isinstance(definition["$id"], str) or not isinstance(definition["class"], str):
        raise SchemaFileError(f"{path}: $id and class must be strings")
    tenant_schema = definition.get("tenant")
    if tenant_schema is not None and not isinstance(tenant_schema, dict):
        raise SchemaFileError(f"{path}: tenant must be a JSON Schema object")
    try:
        root = compose(definition["class"], list(field_groups), tenant_key, tenant_schema)
        class_document = component(definition["class"])
    except UnknownComponentError as error:
        raise SchemaFileError(f"{path}: unknown XDM component {error.args[0]}") from None
    return IngestionSchema(
        schema_id=definition["$id"],
        class_id=definition["class"],
        field_groups=field_groups,
        dataset=dataset,
        root=root,
        time_series=TIME_SERIES_BEHAVIOUR in class_document.get("meta:extends", ()),
    )


def _read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise SchemaFileError(f"{path}: {error}") from None
