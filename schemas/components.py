"""The XDM component library and its composition into field trees.

The library is every ``*.schema.json`` under ``schemas/xdm`` (the public adobe/xdm components, CC-BY-4.0, see
``schemas/xdm/NOTICE.md``), addressed by ``$id``. :func:`compose` resolves a class, its field groups and a tenant
object (``$ref``, ``allOf``, ``meta:extends`` as the library uses them) into one tree of :class:`Field`, keyed by
runtime name (see :mod:`schemas.names`). That tree is the single source from which the validator, the Avro schema
and the Arrow schema are derived.

Kinds of field: ``object`` (named properties), ``map`` (``meta:xdmType: map``: string keys, one value schema),
``json`` (an object with no declared properties, kept whole), ``array``, and the scalars ``string``, ``integer``,
``number``, ``boolean``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from schemas.names import pointer_token, runtime_name, storage_name

LIBRARY_DIR = Path(__file__).parent / "xdm"

# JSON-LD context: a oneOf of name patterns that describes XDM's document model, not data fields.
_JSON_LD_CONTEXT = "https://ns.adobe.com/xdm/common/extensible#/definitions/@context"
# Data types that refer to themselves (directly or through others) are cut at this depth and kept as JSON.
_MAX_COMPOSE_DEPTH = 12

SCALAR_KINDS = frozenset({"string", "integer", "number", "boolean"})


class UnknownComponentError(KeyError):
    """A ``$ref`` or a schema names a component the library does not hold."""


@dataclasses.dataclass(eq=False)
class Field:
    """One node of a composed schema.

    ``children`` maps runtime names to fields; ``accepts`` maps every name a producer may send (runtime,
    compatibility or storage name) to the runtime name. ``item`` is an array's item or a map's value.
    """

    kind: str
    name: str = ""
    children: dict[str, Field] = dataclasses.field(default_factory=dict)
    accepts: dict[str, str] = dataclasses.field(default_factory=dict)
    required: tuple[str, ...] = ()
    item: Field | None = None
    enum: frozenset | None = None
    format: str | None = None
    minimum: float | None = None
    maximum: float | None = None
    max_length: int | None = None
    pattern: re.Pattern | None = None

    @property
    def storage(self) -> str:
        return storage_name(self.name)

    @functools.cached_property
    def pointer(self) -> str:
        """``/`` and the name as a JSON pointer token: the step a pointer takes into this field."""
        return "/" + pointer_token(self.name)

    def leaf_count(self) -> int:
        """How many scalar leaves the subtree holds (a width measure for benchmarks and docs)."""
        if self.kind == "object":
            return sum(child.leaf_count() for child in self.children.values())
        if self.item is not None:
            return self.item.leaf_count()
        return 1


@functools.cache
def library() -> Mapping[str, dict]:
    """Every XDM component in ``schemas/xdm``, by ``$id``."""
    components = {}
    for path in sorted(LIBRARY_DIR.rglob("*.schema.json")):
        document = json.loads(path.read_text(encoding="utf-8"))
        components[document["$id"]] = document
    return components


def component(component_id: str) -> dict:
    try:
        return library()[component_id]
    except KeyError:
        raise UnknownComponentError(component_id) from None


def compose(class_id: str, field_group_ids: list[str], tenant_name: str, tenant_schema: dict | None) -> Field:
    """The field tree of a class composed with field groups and a tenant object.

    ``tenant_schema`` ``None`` makes the tenant object free-form JSON.
    """
    parts = [(component(class_id), class_id)] + [(component(group), group) for group in field_group_ids]
    root = _Composer().field_of_parts(parts, name="", depth=0)
    tenant = (
        _Composer().field_of_parts([(tenant_schema, "")], name=tenant_name, depth=1)
        if tenant_schema is not None
        else Field(kind="json", name=tenant_name)
    )
    root.children[tenant_name] = tenant
    for accepted in {tenant_name, storage_name(tenant_name)}:
        root.accepts[accepted] = tenant_name
    return root


class _Composer:
    def __init__(self) -> None:
        self._expanding: list[str] = []

    def field_of_parts(self, parts: list[tuple[dict, str]], name: str, depth: int) -> Field:
        flat = [piece for schema, base_id in parts for piece in self._flatten(schema, base_id)]
        merged = _merge(flat)
        if depth > _MAX_COMPOSE_DEPTH:
            return Field(kind="json", name=name)
        kind = merged["kind"]
        field = Field(kind=kind, name=name)
        if kind == "object":
            for prop_name, prop_parts in merged["properties"].items():
                runtime = runtime_name(prop_name)
                child = self.field_of_parts(prop_parts, runtime, depth + 1)
                field.children[runtime] = child
                for accepted in {prop_name, runtime, storage_name(runtime)}:
                    field.accepts[accepted] = runtime
            field.required = tuple(dict.fromkeys(runtime_name(required) for required in merged["required"]))
        elif kind in ("array", "map"):
            field.item = self.field_of_parts(merged["item"], "", depth + 1)
        elif kind in SCALAR_KINDS:
            field.enum = merged.get("enum")
            field.format = merged.get("format")
            field.minimum = merged.get("minimum")
            field.maximum = merged.get("maximum")
            field.max_length = merged.get("maxLength")
            if merged.get("pattern"):
                field.pattern = re.compile(merged["pattern"])
        return field

    def _flatten(self, schema: dict, base_id: str) -> Iterator[tuple[dict, str]]:
        """The schema and everything it pulls in through ``$ref`` and ``allOf``, each with its base document id."""
        reference = schema.get("$ref")
        if reference is not None:
            target, target_base = _dereference(reference, base_id)
            key = f"{target_base}|{reference}"
            if reference != _JSON_LD_CONTEXT and target is not None and key not in self._expanding:
                self._expanding.append(key)
                try:
                    yield from self._flatten(target, target_base)
                finally:
                    self._expanding.pop()
        for part in schema.get("allOf", ()):
            yield from self._flatten(part, base_id)
        yield schema, base_id


def _dereference(reference: str, base_id: str) -> tuple[dict | None, str]:
    document_id, _, fragment = reference.partition("#")
    document_id = document_id or base_id
    document = component(document_id) if document_id else None
    target: Any = document
    for token in filter(None, fragment.split("/")):
        target = target.get(token.replace("~1", "/").replace("~0", "~")) if isinstance(target, dict) else None
    return target, document_id


def _merge(pieces: list[tuple[dict, str]]) -> dict:
    """One description out of the pieces of a composed schema: later pieces add properties, constraints stay."""
    merged: dict[str, Any] = {"properties": {}, "required": [], "types": []}
    for schema, base_id in pieces:
        declared = schema.get("type")
        if isinstance(declared, str):
            merged["types"].append(declared)
        # A property several pieces declare (two field groups that both extend ``xdm:web``) is all of them at once.
        for prop_name, prop_schema in schema.get("properties", {}).items():
            merged["properties"].setdefault(prop_name, []).append((prop_schema, base_id))
        merged["required"].extend(schema.get("required", ()))
        if "items" in schema and isinstance(schema["items"], dict):
            merged.setdefault("item", []).append((schema["items"], base_id))
        additional = schema.get("additionalProperties")
        if isinstance(additional, dict) and additional:
            merged.setdefault("map_value", []).append((additional, base_id))
        if "enum" in schema:
            merged["enum"] = frozenset(schema["enum"])
        elif "const" in schema:
            merged["enum"] = frozenset([schema["const"]])
        for keyword in ("format", "minimum", "maximum", "maxLength", "pattern"):
            if keyword in schema:
                merged[keyword] = schema[keyword]
    merged["kind"] = _kind(merged)
    if merged["kind"] == "map":
        merged["item"] = merged["map_value"]
    return merged


def _kind(merged: dict) -> str:
    types = merged["types"]
    declared = types[-1] if types else ("object" if merged["properties"] else None)
    if declared == "array":
        return "array" if "item" in merged else "json"
    if declared == "object" or declared is None:
        if merged["properties"]:
            return "object"
        return "map" if "map_value" in merged else "json"
    return declared
