"""The Avro form of an ingestion schema, derived from its field tree.

Producers may send an entity as schemaless Avro binary (``contentType: avro/binary``) written with the schema
:func:`avro_schema` returns. Derivation rules: every field is optional (``["null", T]`` with default ``null``, since
XDM leaves absent fields out); names are storage names (:mod:`schemas.names`); ``object`` becomes a record, ``map`` a
map, ``array`` an array, ``json`` (free-form objects, the built-in tenant object) a string holding JSON text;
``integer`` is ``long``, ``number`` ``double``; date-times stay RFC 3339 strings, as in JSON.

:func:`entity_from_avro` turns a decoded Avro record back into an entity the validator takes; :func:`to_avro_datum`
does the reverse for producers and tests.
"""

from __future__ import annotations

import itertools
import json
from typing import Any

import fastavro

from schemas.components import Field
from schemas.names import storage_name

_AVRO_SCALARS = {"string": "string", "integer": "long", "number": "double", "boolean": "boolean", "json": "string"}


def avro_schema(schema) -> dict:
    """The parsed (fastavro) Avro schema of an :class:`~schemas.registry.IngestionSchema`."""
    counter = itertools.count()
    record = _avro_type(schema.root, counter)
    record["name"] = "Entity"
    record["namespace"] = "profilestream"
    record["doc"] = schema.schema_id
    return fastavro.parse_schema(record)


def _avro_type(field: Field, counter: itertools.count) -> Any:
    if field.kind == "object":
        return {
            "type": "record",
            "name": f"Record{next(counter)}",
            "fields": [
                {"name": storage_name(name), "type": ["null", _avro_type(child, counter)], "default": None}
                for name, child in field.children.items()
            ],
        }
    if field.kind == "array":
        return {"type": "array", "items": _avro_type(field.item, counter)}
    if field.kind == "map":
        return {"type": "map", "values": _avro_type(field.item, counter)}
    return _AVRO_SCALARS[field.kind]


def entity_from_avro(datum: Any, field: Field) -> Any:
    """A decoded Avro value as a JSON-shaped entity: absent fields left out, JSON text parsed back."""
    if field.kind == "object" and isinstance(datum, dict):
        children = field.children
        accepts = field.accepts
        entity = {}
        for key, value in datum.items():
            if value is None:
                continue
            name = accepts.get(key, key)
            child = children.get(name)
            entity[name] = entity_from_avro(value, child) if child is not None else value
        return entity
    if field.kind == "array" and isinstance(datum, list):
        return [entity_from_avro(value, field.item) for value in datum]
    if field.kind == "map" and isinstance(datum, dict):
        return {key: entity_from_avro(value, field.item) for key, value in datum.items()}
    if field.kind == "json" and isinstance(datum, str):
        try:
            return json.loads(datum)
        except ValueError:
            return datum  # left as text, the validator reports it as the wrong type
    return datum


def to_avro_datum(entity: Any, field: Field) -> Any:
    """A runtime-named entity in the shape :func:`avro_schema` writes."""
    if field.kind == "object":
        return {
            storage_name(name): to_avro_datum(entity[name], child)
            for name, child in field.children.items()
            if name in entity
        }
    if field.kind == "array":
        return [to_avro_datum(value, field.item) for value in entity]
    if field.kind == "map":
        return {key: to_avro_datum(value, field.item) for key, value in entity.items()}
    if field.kind == "json":
        return json.dumps(entity, separators=(",", ":"))
    return entity
