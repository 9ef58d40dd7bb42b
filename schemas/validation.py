"""Ingestion validation: every record rule the pipeline applies, as plain Python.

:func:`validate_entity` takes one decoded XDM entity (compatibility, runtime or Avro storage names, in any mix) and
its :class:`~schemas.registry.IngestionSchema`, and returns the entity in runtime names together with every
violation found (up to ``max_errors``), each a :class:`~core.records.RecordError` with a stable code and a JSON
pointer in runtime names. The walk visits only the fields an entity carries, so a wide, sparse schema costs no more
than a narrow one.

Codes (also in README):

==========================  =================================================================================
``SCHEMA.UNKNOWN_SCHEMA``   the message names no registered schema
``SCHEMA.UNKNOWN_DATASET``  the header's ``datasetId`` is not a dataset registered for the schema
``SCHEMA.TYPE``             a value of the wrong JSON type
``SCHEMA.REQUIRED``         a required field is missing
``SCHEMA.ENUM``             a value outside the field's ``enum`` (or ``const``)
``SCHEMA.FORMAT``           a string that is not a valid ``date-time`` (RFC 3339), ``date`` or ``email``
``SCHEMA.RANGE``            a number outside ``minimum``/``maximum``
``SCHEMA.LENGTH``           a string longer than ``maxLength``
``SCHEMA.PATTERN``          a string that does not match ``pattern``
``SCHEMA.UNKNOWN_FIELD``    a field outside the schema and the tenant object
``SCHEMA.DUPLICATE_FIELD``  one field sent under two names (``@id`` and ``_id``)
``SCHEMA.NULL_VALUE``       ``null`` (leave the key out instead)
``SCHEMA.EMPTY_VALUE``      ``""``, ``{}`` or ``[]`` (leave the key out instead)
``SCHEMA.IDENTITY_ITEM``    an ``identityMap`` entry that is not a non-empty list of ``{id, authenticatedState,
                            primary}`` items with a non-empty string ``id``
``SCHEMA.MULTIPLE_PRIMARY`` more than one identity marked ``primary``
``SCHEMA.TOO_MANY_IDENTITIES``  more than 20 identities in ``identityMap``
``SCHEMA.FUTURE_TIMESTAMP`` a time-series ``timestamp`` later than the ingestion time plus the allowed skew
``SCHEMA.TIME_BEFORE_EPOCH`` a record time before 1970-01-01: an event's ``timestamp`` or a profile record's
                            ``extSourceSystemAudit.lastUpdatedDate``
``SCHEMA.TOO_MANY_ERRORS``  the error list was cut at ``max_errors``
==========================  =================================================================================

Why a record time before the epoch is invalid and a profile record's has no upper bound:
docs/decisions/0024-record-times-before-the-epoch-are-invalid.md.
"""

from __future__ import annotations

import dataclasses
import re
from datetime import datetime
from typing import Any

from core.clock import micros, parse_rfc3339, rfc3339_or_micros
from core.records import DecodedEntity, FailedRecord, RecordError, ValidRecord
from schemas.avro import entity_from_avro
from schemas.components import Field
from schemas.names import pointer_token, runtime_name
from schemas.registry import IngestionSchema, SchemaRegistry

UNKNOWN_SCHEMA = "SCHEMA.UNKNOWN_SCHEMA"
UNKNOWN_DATASET = "SCHEMA.UNKNOWN_DATASET"
TYPE = "SCHEMA.TYPE"
REQUIRED = "SCHEMA.REQUIRED"
ENUM = "SCHEMA.ENUM"
FORMAT = "SCHEMA.FORMAT"
RANGE = "SCHEMA.RANGE"
LENGTH = "SCHEMA.LENGTH"
PATTERN = "SCHEMA.PATTERN"
UNKNOWN_FIELD = "SCHEMA.UNKNOWN_FIELD"
DUPLICATE_FIELD = "SCHEMA.DUPLICATE_FIELD"
NULL_VALUE = "SCHEMA.NULL_VALUE"
EMPTY_VALUE = "SCHEMA.EMPTY_VALUE"
IDENTITY_ITEM = "SCHEMA.IDENTITY_ITEM"
MULTIPLE_PRIMARY = "SCHEMA.MULTIPLE_PRIMARY"
TOO_MANY_IDENTITIES = "SCHEMA.TOO_MANY_IDENTITIES"
FUTURE_TIMESTAMP = "SCHEMA.FUTURE_TIMESTAMP"
TIME_BEFORE_EPOCH = "SCHEMA.TIME_BEFORE_EPOCH"
TOO_MANY_ERRORS = "SCHEMA.TOO_MANY_ERRORS"

MAX_IDENTITIES = 20
AVRO_CONTENT_TYPE = "avro/binary"
IDENTITY_MAP = "identityMap"
_AUTHENTICATED_STATES = frozenset({"ambiguous", "authenticated", "loggedOut"})
_IDENTITY_ITEM_FIELDS = {"id": "id", "xdm:id": "id", "authenticatedState": "authenticatedState"}
_IDENTITY_ITEM_FIELDS |= {
    "xdm:authenticatedState": "authenticatedState",
    "primary": "primary",
    "xdm:primary": "primary",
}

_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+")


# Integers are stored as Avro long and Arrow int64.
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_JSON_TYPE_NAMES = {dict: "object", list: "array", str: "string", bool: "boolean", int: "integer", float: "number"}


@dataclasses.dataclass(frozen=True)
class ValidationPolicy:
    """The tunable parts of validation: clock skew allowed for timestamps and the cap on reported errors."""

    timestamp_skew_us: int = 5 * 60 * 1_000_000
    max_errors: int = 100


DEFAULT_POLICY = ValidationPolicy()


class _TooManyErrors(Exception):
    pass


class _Errors(list):
    def __init__(self, cap: int) -> None:
        super().__init__()
        self.cap = cap

    def add(self, code: str, path: str, message: str) -> None:
        if len(self) >= self.cap:
            self.append(RecordError(TOO_MANY_ERRORS, "", f"more than {self.cap} errors; the rest are not listed"))
            raise _TooManyErrors
        self.append(RecordError(code, path, message))


def validate_entity(
    entity: Any,
    schema: IngestionSchema,
    ingest_time_us: int,
    policy: ValidationPolicy = DEFAULT_POLICY,
) -> tuple[dict | None, list[RecordError]]:
    """The entity in runtime names, and every violation of the ingestion rules (empty when valid)."""
    errors = _Errors(policy.max_errors)
    try:
        normalised = _value(entity, schema.root, "", errors)
        if isinstance(normalised, dict):
            _check_record_time(normalised, schema.time_series, ingest_time_us + policy.timestamp_skew_us, errors)
    except _TooManyErrors:
        return None, list(errors)
    return normalised, list(errors)


def _value(value: Any, field: Field, path: str, errors: _Errors) -> Any:
    if value is None:
        errors.add(NULL_VALUE, path, "null is not allowed: leave the field out instead")
        return None
    kind = field.kind
    if kind == "object":
        if type(value) is not dict:
            return _wrong_type(value, "object", path, errors)
        if not value:
            errors.add(EMPTY_VALUE, path, "an empty object is not allowed: leave the field out instead")
        return _object(value, field, path, errors)
    if kind == "string":
        if type(value) is not str:
            return _wrong_type(value, "string", path, errors)
        if not value:
            errors.add(EMPTY_VALUE, path, "an empty string is not allowed: leave the field out instead")
            return value
        _check_string(value, field, path, errors)
        return value
    if kind in ("number", "integer"):
        return _number(value, field, path, errors)
    if kind == "boolean":
        return value if type(value) is bool else _wrong_type(value, "boolean", path, errors)
    if kind == "array":
        if type(value) is not list:
            return _wrong_type(value, "array", path, errors)
        if not value:
            errors.add(EMPTY_VALUE, path, "an empty array is not allowed: leave the field out instead")
        item = field.item
        return [_value(element, item, f"{path}/{position}", errors) for position, element in enumerate(value)]
    if kind == "map":
        if type(value) is not dict:
            return _wrong_type(value, "object", path, errors)
        if not value:
            errors.add(EMPTY_VALUE, path, "an empty map is not allowed: leave the field out instead")
        if path == "/" + IDENTITY_MAP:
            return _identity_map(value, path, errors)
        item = field.item
        return {key: _value(entry, item, f"{path}/{pointer_token(key)}", errors) for key, entry in value.items()}
    if type(value) is not dict and type(value) is not list:
        return _wrong_type(value, "object", path, errors)
    if not value:
        errors.add(EMPTY_VALUE, path, "an empty value is not allowed: leave the field out instead")
    return value


def _object(value: dict, field: Field, path: str, errors: _Errors) -> dict:
    normalised = {}
    given = set()
    accepts = field.accepts
    children = field.children
    for key, entry in value.items():
        name = accepts.get(key)
        if name is None:
            errors.add(UNKNOWN_FIELD, f"{path}/{pointer_token(runtime_name(key))}", f"{key!r} is not in the schema")
            continue
        child = children[name]
        child_path = path + child.pointer
        if name in given:
            errors.add(DUPLICATE_FIELD, child_path, f"{name!r} is given twice, under two names")
            continue
        given.add(name)
        if entry is None:
            errors.add(NULL_VALUE, child_path, "null is not allowed: leave the field out instead")
            continue
        normalised[name] = _value(entry, child, child_path, errors)
    for name in field.required:
        if name not in given:
            errors.add(REQUIRED, f"{path}/{pointer_token(name)}", f"{name!r} is required")
    return normalised


def _check_string(value: str, field: Field, path: str, errors: _Errors) -> None:
    if field.enum is not None and value not in field.enum:
        errors.add(ENUM, path, f"{value!r} is not one of {sorted(map(str, field.enum))}")
    fmt = field.format
    if fmt is not None:
        if fmt == "date-time":
            if parse_rfc3339(value) is None:
                errors.add(FORMAT, path, f"{value!r} is not an RFC 3339 date-time")
        elif fmt == "date":
            if not _is_date(value):
                errors.add(FORMAT, path, f"{value!r} is not an RFC 3339 full-date")
        elif fmt == "email" and not _EMAIL.fullmatch(value):
            errors.add(FORMAT, path, f"{value!r} is not an e-mail address")
    if field.max_length is not None and len(value) > field.max_length:
        errors.add(LENGTH, path, f"longer than {field.max_length} characters")
    if field.pattern is not None and not field.pattern.search(value):
        errors.add(PATTERN, path, f"{value!r} does not match {field.pattern.pattern!r}")


def _is_date(value: str) -> bool:
    if not _DATE.fullmatch(value):
        return False
    try:
        datetime.strptime(value, "%Y-%m-%d")
    except ValueError:
        return False
    return True


def _number(value: Any, field: Field, path: str, errors: _Errors) -> Any:
    value_type = type(value)
    if field.kind == "integer":
        if value_type is float and value.is_integer():
            value = int(value)
        elif value_type is not int:
            return _wrong_type(value, "integer", path, errors)
        if not _INT64_MIN <= value <= _INT64_MAX:
            errors.add(RANGE, path, f"{value} does not fit in a 64-bit integer")
            return None
    elif value_type is not int and value_type is not float:
        return _wrong_type(value, "number", path, errors)
    if field.minimum is not None and value < field.minimum:
        errors.add(RANGE, path, f"{value} is less than the minimum {field.minimum}")
    if field.maximum is not None and value > field.maximum:
        errors.add(RANGE, path, f"{value} is greater than the maximum {field.maximum}")
    if field.enum is not None and value not in field.enum:
        errors.add(ENUM, path, f"{value!r} is not one of {sorted(field.enum)}")
    return value


def _wrong_type(value: Any, expected: str, path: str, errors: _Errors) -> None:
    actual = _JSON_TYPE_NAMES.get(type(value), type(value).__name__)
    errors.add(TYPE, path, f"expected {expected}, got {actual}")
    return None


def _identity_map(value: dict, path: str, errors: _Errors) -> dict:
    normalised = {}
    identities = 0
    primaries = 0
    for namespace, items in value.items():
        namespace_path = f"{path}/{pointer_token(namespace)}"
        if not namespace or type(items) is not list or not items:
            errors.add(IDENTITY_ITEM, namespace_path, "an identityMap entry is a non-empty list of identity items")
            continue
        kept = []
        for position, item in enumerate(items):
            item_path = f"{namespace_path}/{position}"
            identity = _identity_item(item, item_path, errors)
            if identity is not None:
                kept.append(identity)
                primaries += identity.get("primary") is True
        identities += len(items)
        normalised[namespace] = kept
    if identities > MAX_IDENTITIES:
        errors.add(TOO_MANY_IDENTITIES, path, f"{identities} identities; at most {MAX_IDENTITIES} per record")
    if primaries > 1:
        errors.add(MULTIPLE_PRIMARY, path, f"{primaries} identities are marked primary; at most one may be")
    return normalised


def _identity_item(item: Any, path: str, errors: _Errors) -> dict | None:
    if type(item) is not dict:
        errors.add(IDENTITY_ITEM, path, "an identity item is an object {id, authenticatedState, primary}")
        return None
    identity = {}
    given: set[str] = set()
    for key, entry in item.items():
        name = _IDENTITY_ITEM_FIELDS.get(key)
        if name is None:
            errors.add(IDENTITY_ITEM, f"{path}/{pointer_token(runtime_name(key))}", f"{key!r} is not an identity field")
            continue
        if name in given:
            errors.add(DUPLICATE_FIELD, f"{path}/{name}", f"{name!r} is given twice, under two names")
            continue
        given.add(name)
        if name == "id" and (type(entry) is not str or not entry):
            errors.add(IDENTITY_ITEM, f"{path}/id", "an identity id is a non-empty string")
        elif name == "authenticatedState" and (type(entry) is not str or entry not in _AUTHENTICATED_STATES):
            errors.add(IDENTITY_ITEM, f"{path}/{name}", f"{entry!r} is not one of {sorted(_AUTHENTICATED_STATES)}")
        elif name == "primary" and type(entry) is not bool:
            errors.add(IDENTITY_ITEM, f"{path}/primary", "primary is true or false")
        else:
            identity[name] = entry
    if "id" not in given:
        errors.add(IDENTITY_ITEM, f"{path}/id", "an identity item needs an id")
    return identity


def _check_record_time(entity: dict, time_series: bool, latest_us: int, errors: _Errors) -> None:
    """An event's ``timestamp`` from 1970 to ``latest_us``; a profile record's ``lastUpdatedDate`` from 1970."""
    if time_series:
        path, stated = "/timestamp", entity.get("timestamp")
    else:
        audit = entity.get("extSourceSystemAudit")
        path, stated = (
            "/extSourceSystemAudit/lastUpdatedDate",
            audit.get("lastUpdatedDate") if type(audit) is dict else None,
        )
    parsed = parse_rfc3339(stated) if type(stated) is str else None
    if parsed is None:  # absent, or a format error already reported
        return
    if micros(parsed) < 0:
        errors.add(TIME_BEFORE_EPOCH, path, f"{stated} is before 1970-01-01T00:00:00Z")
    elif time_series and micros(parsed) > latest_us:
        latest = rfc3339_or_micros(latest_us)
        errors.add(FUTURE_TIMESTAMP, path, f"{stated} is later than the ingestion time plus skew ({latest})")


def validate_decoded(
    decoded: DecodedEntity, registry: SchemaRegistry, policy: ValidationPolicy = DEFAULT_POLICY
) -> ValidRecord | FailedRecord:
    """One decoded entity checked against the schema and dataset its message names."""
    schema = registry.get(decoded.schema_id)
    if schema is None:
        error = RecordError(UNKNOWN_SCHEMA, "", f"no ingestion schema is registered as {decoded.schema_id!r}")
        return FailedRecord.of_entity(decoded, "validate", (error,))
    if decoded.dataset_id is not None and not schema.dataset.is_named_by(decoded.dataset_id):
        message = f"dataset {decoded.dataset_id!r} is not registered for {schema.schema_id}"
        return FailedRecord.of_entity(decoded, "validate", (RecordError(UNKNOWN_DATASET, "", message),))
    entity = decoded.entity
    if decoded.message.attributes.get("contentType", "").lower() == AVRO_CONTENT_TYPE:
        entity = entity_from_avro(entity, schema.root)
    normalised, errors = validate_entity(entity, schema, decoded.message.publish_time_us, policy)
    if errors:
        return FailedRecord.of_entity(decoded, "validate", tuple(errors))
    message = decoded.message
    return ValidRecord(
        dataset=schema.dataset.name,
        schema_id=schema.schema_id,
        entity=normalised,
        message_id=message.message_id,
        index=decoded.index,
        publish_time_us=message.publish_time_us,
        read_time_us=message.read_time_us,
    )
