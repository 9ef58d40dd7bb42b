"""Ingestion validation: every record rule the pipeline applies, as plain Python.

:func:`validate_entity` takes one decoded XDM entity (compatibility, runtime or Avro storage names, in any mix) and
its :class:`~schemas.registry.IngestionSchema`, and returns the entity in runtime names together with every
violation found (up to ``max_errors``), each a :class:`~core.records.RecordError` with a stable code and a JSON
pointer in runtime names. The walk visits only the fields an entity carries, so a wide, sparse schema costs no more
than a narrow one: each field's check is made when the first entity reaches it, holding just the rules its kind has,
and kept as long as the schema.

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
import weakref
from collections.abc import Callable
from datetime import datetime
from typing import Any

from core.clock import rfc3339_or_micros, rfc3339_us
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
_IDENTITY_MAP_PATH = "/" + IDENTITY_MAP
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
    __slots__ = ("cap",)  # set by validate_entity: an __init__ would cost a call for every entity

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
    errors = _Errors()
    errors.cap = policy.max_errors
    try:
        normalised = _root_check(schema.root)(entity, "", errors)
        if isinstance(normalised, dict):
            _check_record_time(normalised, schema.time_series, ingest_time_us + policy.timestamp_skew_us, errors)
    except _TooManyErrors:
        return None, list(errors)
    return normalised, list(errors)


# A field's check: (value, JSON pointer, errors) -> the value in runtime names. Each is made once per field, holding
# only what its kind needs, so a value is checked without asking its field what kind it is and which rules it has.
_Check = Callable[[Any, str, _Errors], Any]
# id(root field) -> its check, for as long as the field lives (a finalizer drops it before the id can be reused); no
# check holds its root, so this keeps no schema alive.
_ROOT_CHECKS: dict[int, _Check] = {}
_NULL = "null is not allowed: leave the field out instead"


def _root_check(root: Field) -> _Check:
    check = _ROOT_CHECKS.get(id(root))
    if check is None:
        check = _ROOT_CHECKS[id(root)] = _check_of(root)
        weakref.finalize(root, _ROOT_CHECKS.pop, id(root), None)
    return check


def _check_of(field: Field) -> _Check:
    kind = field.kind
    if kind == "object":
        return _object_check(field.children, field.accepts, field.required)
    if kind == "string":
        return _string_check(_string_rules(field))
    if kind in ("number", "integer"):
        return _number_check(kind == "integer", field.minimum, field.maximum, field.enum)
    if kind == "boolean":
        return _check_boolean
    if kind == "array":
        return _array_check(_check_of(field.item))
    if kind == "map":
        return _map_check(_check_of(field.item))
    return _check_json


def _object_check(children: dict[str, Field], accepts: dict[str, str], required_names: tuple[str, ...]) -> _Check:
    # Made at the first object checked, so a wide schema's untouched branches never are; one assignment, so threads
    # that race to make it each see a whole.
    made: tuple[dict[str, _Step], list[tuple[str, tuple[str, ...], str]]] | None = None

    def check(value: Any, path: str, errors: _Errors) -> Any:
        nonlocal made
        if type(value) is not dict:
            return _wrong_type(value, "object", path, errors)
        if not value:
            errors.add(EMPTY_VALUE, path, "an empty object is not allowed: leave the field out instead")
        if made is None:
            made = _object_steps(children, accepts, required_names)
        steps, required = made
        normalised = {}
        nulls = None  # names given as null, which stay out of ``normalised`` but count as given
        for key, entry in value.items():
            try:
                name, pointer, check_entry, plain_string = steps[key]
            except KeyError:
                errors.add(UNKNOWN_FIELD, f"{path}/{pointer_token(runtime_name(key))}", f"{key!r} is not in the schema")
                continue
            if name in normalised or (nulls is not None and name in nulls):
                errors.add(DUPLICATE_FIELD, path + pointer, f"{name!r} is given twice, under two names")
                continue
            if plain_string and type(entry) is str and entry:
                normalised[name] = entry
            elif entry is None:
                nulls = nulls or set()
                nulls.add(name)
                errors.add(NULL_VALUE, path + pointer, _NULL)
            else:
                normalised[name] = check_entry(entry, path + pointer, errors)
        for name, aliases, pointer in required:
            if name not in value and value.keys().isdisjoint(aliases):
                errors.add(REQUIRED, path + pointer, f"{name!r} is required")
        return normalised

    return check


# What an object's key leads to: the runtime name, the pointer's step, the check, and whether that check is the one for
# strings without rules, which passes a non-empty string as it is (most values are such strings: the object takes
# them without a call).
_Step = tuple[str, str, _Check, bool]


def _object_steps(
    children: dict[str, Field], accepts: dict[str, str], required_names: tuple[str, ...]
) -> tuple[dict[str, _Step], list[tuple[str, tuple[str, ...], str]]]:
    """Each accepted key's step, and each required field's name, the keys it may be given under, its pointer step."""
    checks = {name: _check_of(child) for name, child in children.items()}
    steps = {}
    for key, name in accepts.items():
        check = checks[name]
        steps[key] = (name, children[name].pointer, check, check is _check_plain_string)
    required = []
    for name in required_names:
        aliases = tuple(key for key, accepted in accepts.items() if accepted == name)
        required.append((name, aliases, "/" + pointer_token(name)))
    return steps, required


def _string_rules(field: Field) -> list[Callable[[str, str, _Errors], None]]:
    """The checks a non-empty string of ``field`` goes through, in the order its errors are listed."""
    rules = []
    enum, fmt, max_length, pattern = field.enum, field.format, field.max_length, field.pattern
    if enum is not None:

        def check_enum(value: str, path: str, errors: _Errors) -> None:
            if value not in enum:
                errors.add(ENUM, path, f"{value!r} is not one of {sorted(map(str, enum))}")

        rules.append(check_enum)
    if fmt == "date-time":

        def check_date_time(value: str, path: str, errors: _Errors) -> None:
            if rfc3339_us(value) is None:
                errors.add(FORMAT, path, f"{value!r} is not an RFC 3339 date-time")

        rules.append(check_date_time)
    elif fmt == "date":

        def check_date(value: str, path: str, errors: _Errors) -> None:
            if not _is_date(value):
                errors.add(FORMAT, path, f"{value!r} is not an RFC 3339 full-date")

        rules.append(check_date)
    elif fmt == "email":

        def check_email(value: str, path: str, errors: _Errors) -> None:
            if not _EMAIL.fullmatch(value):
                errors.add(FORMAT, path, f"{value!r} is not an e-mail address")

        rules.append(check_email)
    if max_length is not None:

        def check_length(value: str, path: str, errors: _Errors) -> None:
            if len(value) > max_length:
                errors.add(LENGTH, path, f"longer than {max_length} characters")

        rules.append(check_length)
    if pattern is not None:

        def check_pattern(value: str, path: str, errors: _Errors) -> None:
            if not pattern.search(value):
                errors.add(PATTERN, path, f"{value!r} does not match {pattern.pattern!r}")

        rules.append(check_pattern)
    return rules


def _string_check(rules: list[Callable[[str, str, _Errors], None]]) -> _Check:
    if not rules:
        return _check_plain_string
    rule = rules[0] if len(rules) == 1 else _each(rules)

    def check(value: Any, path: str, errors: _Errors) -> Any:
        if type(value) is str and value:
            rule(value, path, errors)
            return value
        return _check_plain_string(value, path, errors)  # not a string, or an empty one

    return check


def _each(rules: list[Callable[[str, str, _Errors], None]]) -> Callable[[str, str, _Errors], None]:
    def check_each(value: str, path: str, errors: _Errors) -> None:
        for rule in rules:
            rule(value, path, errors)

    return check_each


def _check_plain_string(value: Any, path: str, errors: _Errors) -> Any:
    if type(value) is not str:
        return _wrong_type(value, "string", path, errors)
    if not value:
        errors.add(EMPTY_VALUE, path, "an empty string is not allowed: leave the field out instead")
    return value


def _is_date(value: str) -> bool:
    if not _DATE.fullmatch(value):
        return False
    try:
        datetime.strptime(value, "%Y-%m-%d")
    except ValueError:
        return False
    return True


def _number_check(integer: bool, minimum: float | None, maximum: float | None, enum: frozenset | None) -> _Check:
    if not integer and minimum is None and maximum is None and enum is None:
        return _check_number

    def check(value: Any, path: str, errors: _Errors) -> Any:
        value_type = type(value)
        if integer:
            if value_type is float and value.is_integer():
                value = int(value)
            elif value_type is not int:
                return _wrong_type(value, "integer", path, errors)
            if not _INT64_MIN <= value <= _INT64_MAX:
                errors.add(RANGE, path, f"{value} does not fit in a 64-bit integer")
                return None
        elif value_type is not int and value_type is not float:
            return _wrong_type(value, "number", path, errors)
        if minimum is not None and value < minimum:
            errors.add(RANGE, path, f"{value} is less than the minimum {minimum}")
        if maximum is not None and value > maximum:
            errors.add(RANGE, path, f"{value} is greater than the maximum {maximum}")
        if enum is not None and value not in enum:
            errors.add(ENUM, path, f"{value!r} is not one of {sorted(enum)}")
        return value

    return check


def _check_number(value: Any, path: str, errors: _Errors) -> Any:
    return value if type(value) is int or type(value) is float else _wrong_type(value, "number", path, errors)


def _check_boolean(value: Any, path: str, errors: _Errors) -> Any:
    return value if type(value) is bool else _wrong_type(value, "boolean", path, errors)


def _array_check(check_item: _Check) -> _Check:
    def check(value: Any, path: str, errors: _Errors) -> Any:
        if type(value) is not list:
            return _wrong_type(value, "array", path, errors)
        if not value:
            errors.add(EMPTY_VALUE, path, "an empty array is not allowed: leave the field out instead")
        return [check_item(element, f"{path}/{position}", errors) for position, element in enumerate(value)]

    return check


def _map_check(check_item: _Check) -> _Check:
    def check(value: Any, path: str, errors: _Errors) -> Any:
        if type(value) is not dict:
            return _wrong_type(value, "object", path, errors)
        if not value:
            errors.add(EMPTY_VALUE, path, "an empty map is not allowed: leave the field out instead")
        if path == _IDENTITY_MAP_PATH:
            return _identity_map(value, path, errors)
        return {key: check_item(entry, f"{path}/{pointer_token(key)}", errors) for key, entry in value.items()}

    return check


def _check_json(value: Any, path: str, errors: _Errors) -> Any:
    if type(value) is not dict and type(value) is not list:
        return _wrong_type(value, "object", path, errors)
    if not value:
        errors.add(EMPTY_VALUE, path, "an empty value is not allowed: leave the field out instead")
    return value


def _wrong_type(value: Any, expected: str, path: str, errors: _Errors) -> None:
    """A value that is not of the field's kind: ``null`` (its own code) or one of another type."""
    if value is None:
        errors.add(NULL_VALUE, path, _NULL)
        return None
    actual = _JSON_TYPE_NAMES.get(type(value), type(value).__name__)
    errors.add(TYPE, path, f"expected {expected}, got {actual}")
    return None


def _identity_map(value: dict, path: str, errors: _Errors) -> dict:
    normalised = {}
    identities = 0
    primaries = 0
    for namespace, items in value.items():
        if not namespace or type(items) is not list or not items:
            text = "an identityMap entry is a non-empty list of identity items"
            errors.add(IDENTITY_ITEM, f"{path}/{pointer_token(namespace)}", text)
            continue
        kept = []
        for position, item in enumerate(items):
            if (
                type(item) is dict
                and type(given_id := item.get("id")) is str
                and given_id != ""
                and (
                    (state := item.get("authenticatedState")) is None
                    or (type(state) is str and state in _AUTHENTICATED_STATES)
                )
                and ((primary := item.get("primary")) is None or type(primary) is bool)
                # no key but these (a null among them is one more key than the non-null values counted)
                and len(item) == 1 + (state is not None) + (primary is not None)
            ):
                # Runtime names only (so none twice), each value right: what _identity_item keeps, without errors.
                kept.append(dict(item))
                primaries += primary is True
                continue
            identity = _identity_item(item, f"{path}/{pointer_token(namespace)}/{position}", errors)
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
    stated_us = rfc3339_us(stated) if type(stated) is str else None
    if stated_us is None:  # absent, or a format error already reported
        return
    if stated_us < 0:
        errors.add(TIME_BEFORE_EPOCH, path, f"{stated} is before 1970-01-01T00:00:00Z")
    elif time_series and stated_us > latest_us:
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
