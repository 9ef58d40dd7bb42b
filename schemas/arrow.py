"""The Arrow form of lake rows: schemas derived from field trees, and tables built a column at a time.

Derivation (:func:`arrow_type`): ``object`` → struct of its children under their storage names, ``map`` → map of
string to the value type (``identityMap`` is ``map<string, list<struct<id, authenticatedState, primary>>>``),
``array`` → list, ``json`` → string holding JSON text, ``string`` → string, except ``format: date-time`` →
``timestamp[us, UTC]`` and ``format: date`` → ``date32``; ``integer`` → int64, ``number`` → float64, ``boolean`` →
bool. Every row also carries ``_message_id`` and ``_ingest_time``, and a record's row its ``_person_id`` (as resolved
when it was written).

:func:`table_from_rows` builds a table from runtime-named rows against any such schema. It works column by column,
and below a struct it visits only the children some row in the batch actually holds; every other child becomes one
all-null array. A wide, sparse XDM schema therefore costs per batch, not per row and field.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import pyarrow as pa

from schemas.components import Field
from schemas.names import name_from_storage, storage_name

TIMESTAMP = pa.timestamp("us", tz="UTC")
LINEAGE_FIELDS = (pa.field("_message_id", pa.string(), nullable=False), pa.field("_ingest_time", TIMESTAMP))
PERSON_FIELD = pa.field("_person_id", pa.string())
_SCALARS = {"integer": pa.int64(), "number": pa.float64(), "boolean": pa.bool_(), "json": pa.string()}


def arrow_type(field: Field) -> pa.DataType:
    """The Arrow type a field's values are stored as."""
    kind = field.kind
    if kind == "object":
        return pa.struct([pa.field(storage_name(name), arrow_type(child)) for name, child in field.children.items()])
    if kind == "array":
        return pa.list_(arrow_type(field.item))
    if kind == "map":
        return pa.map_(pa.string(), arrow_type(field.item))
    if kind == "string":
        return {"date-time": TIMESTAMP, "date": pa.date32()}.get(field.format, pa.string())
    return _SCALARS[kind]


def record_arrow_schema(root: Field) -> pa.Schema:
    """The lake schema of a dataset whose records have the field tree ``root``: its fields, lineage and person."""
    return pa.schema([*arrow_type(root), *LINEAGE_FIELDS, PERSON_FIELD])


def table_from_rows(rows: Sequence[Mapping[str, Any]], schema: pa.Schema) -> pa.Table:
    """A table of ``rows`` (runtime names; date-times as RFC 3339 text, datetimes or epoch microseconds)."""
    present = _present_keys(rows)
    length = len(rows)
    columns = []
    for field in schema:
        name = name_from_storage(field.name)
        if name in present:
            columns.append(_array([row.get(name) for row in rows], field.type))
        else:
            columns.append(pa.nulls(length, field.type))
    return pa.Table.from_arrays(columns, schema=schema)


def _present_keys(mappings: Sequence[Any]) -> set:
    present: set = set()
    for mapping in mappings:
        if mapping is not None:
            present.update(mapping)
    return present


def _array(values: list, arrow: pa.DataType) -> pa.Array:
    if pa.types.is_struct(arrow):
        return _struct_array(values, arrow)
    if pa.types.is_map(arrow):
        return _map_array(values, arrow)
    if pa.types.is_list(arrow):
        offsets, flat, mask = _flatten(values)
        return pa.ListArray.from_arrays(offsets, _array(flat, arrow.value_type), type=arrow, mask=mask)
    if pa.types.is_timestamp(arrow):
        return _timestamp_array(values, arrow)
    if pa.types.is_date(arrow):
        return pa.array(values, pa.string()).cast(arrow)
    if pa.types.is_string(arrow):
        try:
            return pa.array(values, arrow)
        except (pa.ArrowTypeError, pa.ArrowInvalid):
            return pa.array([_as_text(value) for value in values], arrow)
    return pa.array(values, arrow)


def _struct_array(values: list, arrow: pa.StructType) -> pa.Array:
    present = _present_keys(values)
    children = []
    for child in arrow:
        name = name_from_storage(child.name)
        if name in present:
            children.append(_array([value.get(name) if value is not None else None for value in values], child.type))
        else:
            children.append(pa.nulls(len(values), child.type))
    return pa.StructArray.from_arrays(children, fields=list(arrow), mask=_null_mask(values))


def _map_array(values: list, arrow: pa.MapType) -> pa.Array:
    offsets = [0]
    keys, items = [], []
    for value in values:
        if value is not None:
            keys.extend(value.keys())
            items.extend(value.values())
        offsets.append(len(keys))
    return pa.MapArray.from_arrays(
        pa.array(offsets, pa.int32()),
        pa.array(keys, pa.string()),
        _array(items, arrow.item_type),
        type=arrow,
        mask=_null_mask(values),
    )


def _flatten(values: list) -> tuple[pa.Array, list, pa.Array | None]:
    offsets, flat = [0], []
    for value in values:
        if value is not None:
            flat.extend(value)
        offsets.append(len(flat))
    return pa.array(offsets, pa.int32()), flat, _null_mask(values)


def _null_mask(values: list) -> pa.Array | None:
    mask = [value is None for value in values]
    return pa.array(mask, pa.bool_()) if any(mask) else None


def _timestamp_array(values: list, arrow: pa.DataType) -> pa.Array:
    if all(type(value) is str or value is None for value in values):
        try:
            return pa.array(values, pa.string()).cast(arrow)
        except pa.ArrowInvalid:
            from core.clock import parse_rfc3339

            return pa.array([parse_rfc3339(value) if value is not None else None for value in values], arrow)
    return pa.array(values, arrow)


def _as_text(value: Any) -> str | None:
    if value is None or type(value) is str:
        return value
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, sort_keys=True)
