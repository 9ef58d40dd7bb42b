"""The JSON Schema form of an ingestion schema, in runtime names, derived from its field tree.

Producers and tools that speak JSON Schema (draft 7) can check entities against it before sending them: it carries
the same structure as the validator (types, required fields, enums, ``date-time``/``date``/``email`` formats, ranges,
lengths, patterns, no unknown fields), though not the ingestion rules that are not JSON Schema (no null or empty
values, identityMap limits, the future-timestamp check). The benchmark also uses it as the schema of the pipeline a
Beam user would write from Beam's documentation.
"""

from __future__ import annotations

from schemas.components import Field

_TYPES = {"string": "string", "integer": "integer", "number": "number", "boolean": "boolean", "json": "object"}


def runtime_json_schema(field: Field) -> dict:
    """The draft-7 JSON Schema of a field tree."""
    if field.kind == "object":
        schema = {
            "type": "object",
            "properties": {name: runtime_json_schema(child) for name, child in field.children.items()},
            "additionalProperties": False,
        }
        if field.required:
            schema["required"] = list(field.required)
        return schema
    if field.kind == "array":
        return {"type": "array", "items": runtime_json_schema(field.item)}
    if field.kind == "map":
        return {"type": "object", "additionalProperties": runtime_json_schema(field.item)}
    schema: dict = {"type": _TYPES[field.kind]}
    if field.kind == "json":
        schema["type"] = ["object", "array"]
    if field.enum is not None:
        schema["enum"] = sorted(field.enum, key=str)
    for keyword, value in (
        ("format", field.format),
        ("minimum", field.minimum),
        ("maximum", field.maximum),
        ("maxLength", field.max_length),
        ("pattern", field.pattern.pattern if field.pattern is not None else None),
    ):
        if value is not None:
            schema[keyword] = value
    return schema
