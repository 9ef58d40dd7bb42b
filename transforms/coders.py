"""RecordCoder: the Beam coder of the records that cross stages, compact JSON (orjson) instead of pickle.

In: a record of :data:`RECORD_TYPES` (the dataclasses of :mod:`core.records`, and
:class:`~identity.model.IdentityChange`). Out: bytes, from which :meth:`RecordCoder.decode` gives back an equal
record of the same types all the way down: a tuple stays a tuple, a list a list, bytes bytes, and every dict keeps
its key order (lake files and fingerprints depend on it). Importing this module registers the coder for each of those
types in Beam's coder registry, so a PCollection typed with one of them (the lake's ``GroupByKey`` in batch) encodes
with it; the stateful DoFns name it for their bags (one bag may hold several of the types).

Format
------
One JSON array: the record's type name, the positions of its *tagged* fields, then its field values in
``dataclasses.fields`` order (a NamedTuple's ``_fields``), so a field added to a record is encoded without touching
this module (one added at the end, with a default, also decodes from bytes encoded before it). A field whose value is
plain JSON (dicts with string keys, lists, strings, booleans, ``None``, finite floats and integers orjson takes) is
written as it is, and read back by ``orjson.loads`` alone: the usual entity costs no walk on decoding. Any other
value is written *tagged*: each list and each other value JSON lacks becomes an array led by its tag (``_LIST``,
``_TUPLE``, ``_BYTES`` as the string of the same code points, which JSON escapes only for quotes, backslashes and
control characters, ``_INT`` beyond 64 bits in hex, ``_FLOAT`` not finite, ``_DATETIME``, ``_DATE``, ``_DECIMAL``,
``_RECORD`` for a nested record such as a ``RecordError``, ``_IDENTITY`` for an :class:`~identity.model.Identity`,
its namespace and id); dicts stay objects.

A value of any other type, a dict key that is not a string, a string holding a lone surrogate (as with Beam's
``StrUtf8Coder``), or a datetime with a time zone other than a fixed offset or with ``fold`` set cannot come back
exactly, and raises ``TypeError`` (orjson's ``JSONEncodeError`` for the surrogate) instead of changing it.

Determinism: the bytes are a function of the record and of the insertion order of its dicts, the same in every
process and run (no pickle memo, no hash order). Two equal records whose dicts were filled in different orders encode
differently, and so do ``1``, ``1.0`` and ``True``; so, by Beam's meaning (equal values, equal bytes), the coder is not
deterministic and ``is_deterministic()`` says so: these records are never keys.
"""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import gc
import math
import operator
from collections.abc import Callable
from typing import Any

import orjson
from apache_beam import coders, typehints

from core.records import DecodedEntity, FailedRecord, LakeRow, Message, RecordError, ValidRecord
from identity.model import Identity, IdentityChange

RECORD_TYPES = (Message, RecordError, DecodedEntity, ValidRecord, FailedRecord, LakeRow, IdentityChange)

_LIST, _TUPLE, _BYTES, _INT, _FLOAT, _DATETIME, _DATE, _DECIMAL, _RECORD, _IDENTITY = range(10)
# orjson writes integers from the smallest signed to the largest unsigned 64-bit one, and nests at most 255 deep.
_SMALLEST_INT, _LARGEST_INT = -(1 << 63), (1 << 64) - 1
_ORJSON_MAX_DEPTH = 255
_JSON_TYPES = frozenset({dict, list, str, int, bool, type(None)})
_JSON_TYPES_AND_FLOAT = _JSON_TYPES | {float}


def _field_getter(record_type: type) -> Callable[[Any], tuple]:
    if issubclass(record_type, tuple):
        names = record_type._fields
    else:
        names = tuple(field.name for field in dataclasses.fields(record_type))
    # attrgetter of a single name gives the value rather than a 1-tuple.
    return operator.attrgetter(*names) if len(names) > 1 else lambda record: (getattr(record, names[0]),)


_FIELDS_OF = {record_type: _field_getter(record_type) for record_type in RECORD_TYPES}
_TYPE_BY_NAME = {record_type.__name__: record_type for record_type in RECORD_TYPES}


def _fields_of(record: Any) -> list[Any]:
    try:
        fields = _FIELDS_OF[type(record)]
    except KeyError:
        raise TypeError(f"RecordCoder encodes only {sorted(_TYPE_BY_NAME)}, not {type(record).__name__}") from None
    return list(fields(record))


def _is_plain(value: Any) -> bool:
    """Whether every value in ``value`` is of a type orjson gives back as it was, floats finite; such a value still
    makes orjson raise if it holds an integer beyond 64 bits or a key that is not a string.

    Faster than a walk in Python: it looks at one level of nesting at a time, the children of the containers of a level
    being what ``gc.get_referents`` gives, from C: a list's items, a dict's values, and its keys too unless they are all
    exact strings. Strings and numbers have no referents; anything else fails the type test.
    """
    kind = type(value)
    if kind is str or kind is int or value is None:
        return True
    level = [value]
    for _ in range(_ORJSON_MAX_DEPTH + 1):
        if not level:
            return True
        if not _JSON_TYPES.issuperset(map(type, level)):
            if not _JSON_TYPES_AND_FLOAT.issuperset(map(type, level)):
                return False
            if not all(math.isfinite(item) for item in level if type(item) is float):
                return False
        level = gc.get_referents(*level)
    return False


def _tagged_dict(value: dict) -> dict:
    if not all(type(key) is str for key in value):
        raise TypeError(f"RecordCoder encodes dicts with string keys only, not {value!r}")
    return {key: _tagged(item) for key, item in value.items()}


def _tagged_int(value: int) -> int | list:
    # In hex: str() of an int beyond 4,300 digits raises.
    return value if _SMALLEST_INT <= value <= _LARGEST_INT else [_INT, hex(value)]


def _tagged_datetime(value: datetime.datetime) -> list:
    if value.fold or not (value.tzinfo is None or type(value.tzinfo) is datetime.timezone):
        raise TypeError(f"RecordCoder encodes naive or fixed-offset datetimes with fold 0 only, not {value!r}")
    return [_DATETIME, value.isoformat()]


def _tagged_record(record: Any) -> list:
    return [_RECORD, type(record).__name__, *map(_tagged, _fields_of(record))]


def _same(value: Any) -> Any:
    return value


_TAGGERS: dict[type, Callable[[Any], Any]] = {
    str: _same,
    bool: _same,
    type(None): _same,
    dict: _tagged_dict,
    list: lambda value: [_LIST, *map(_tagged, value)],
    tuple: lambda value: [_TUPLE, *map(_tagged, value)],
    bytes: lambda value: [_BYTES, value.decode("latin-1")],
    int: _tagged_int,
    float: lambda value: value if math.isfinite(value) else [_FLOAT, value.hex()],
    datetime.datetime: _tagged_datetime,
    datetime.date: lambda value: [_DATE, value.isoformat()],
    decimal.Decimal: lambda value: [_DECIMAL, str(value)],
    **{record_type: _tagged_record for record_type in RECORD_TYPES},
    # A pair of strings, the commonest nested record (a stitched record's identities), without a walk of its fields.
    Identity: lambda value: [_IDENTITY, value.namespace, value.id],
}


def _tagged(value: Any) -> Any:
    try:
        tagger = _TAGGERS[type(value)]
    except KeyError:
        raise TypeError(f"RecordCoder cannot encode a {type(value).__name__} exactly: {value!r}") from None
    return tagger(value)


def _record_of(name: str, *values: Any) -> Any:
    return _TYPE_BY_NAME[name](*map(_untagged, values))


# By tag: what a tagged array's remaining items stand for.
_UNTAGGERS: tuple[Callable[..., Any], ...] = (
    lambda *items: [*map(_untagged, items)],
    lambda *items: tuple(map(_untagged, items)),
    lambda text: text.encode("latin-1"),
    lambda text: int(text, 16),
    float.fromhex,
    datetime.datetime.fromisoformat,
    datetime.date.fromisoformat,
    decimal.Decimal,
    _record_of,
    Identity,
)


def _untagged(value: Any) -> Any:
    kind = type(value)
    if kind is list:
        return _UNTAGGERS[value[0]](*value[1:])
    if kind is dict:
        return {key: _untagged(item) for key, item in value.items()}
    return value


def _encoded(record: Any, is_plain: Callable[[Any], bool]) -> bytes:
    values = _fields_of(record)
    tagged = []
    for position, value in enumerate(values):
        if not is_plain(value):
            values[position] = _tagged(value)
            tagged.append(position)
    return orjson.dumps([type(record).__name__, tagged, *values])


class RecordCoder(coders.Coder):
    """Encodes any record of :data:`RECORD_TYPES`; see the module docstring."""

    def encode(self, record: Any) -> bytes:
        try:
            return _encoded(record, _is_plain)
        except orjson.JSONEncodeError:
            # A field that looked plain holds an integer beyond 64 bits or a key that is not a string: tagging says
            # which, or encodes the integer.
            return _encoded(record, lambda _: False)

    def decode(self, encoded: bytes) -> Any:
        name, tagged, *values = orjson.loads(encoded)
        for position in tagged:
            values[position] = _untagged(values[position])
        return _TYPE_BY_NAME[name](*values)

    def is_deterministic(self) -> bool:
        return False

    def to_type_hint(self) -> Any:
        return typehints.Any


def register_record_coders() -> None:
    """Makes :class:`RecordCoder` Beam's coder for every type of :data:`RECORD_TYPES`; done on importing this module."""
    for record_type in RECORD_TYPES:
        coders.registry.register_coder(record_type, RecordCoder)


register_record_coders()
