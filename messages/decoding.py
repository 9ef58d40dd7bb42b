"""Decoding: one message's bytes into the XDM entities it carries, as plain Python.

:func:`decode_message` takes a :class:`~core.records.Message` and returns, in order, a
:class:`~core.records.DecodedEntity` for each entity it carries or a :class:`~core.records.FailedRecord`
for each part that cannot be decoded. A message that is not a batch envelope gives exactly one output; a batch
envelope gives one per entry, and a bad entry never fails its siblings. Nothing raises.

Payload forms, told apart by shape (README, "Payload forms"): the streaming envelope, the batch envelope (a failed
entry's record carries that entry re-serialised as compact JSON), any other JSON object as a bare entity whose schema
id is the ``schemaRef`` attribute (dataset: ``datasetId``), and ``contentType: avro/binary`` entities.

JSON is parsed strictly (:func:`parse_json`: orjson's parse where it provably agrees with the standard library's
strict parse, :func:`parse_json_strictly`, and that parse everywhere else). Before any entry is looked at, a message
is checked for its size, its publish time (before 1970-01-01, or later than its read time plus the skew, it fails
whole) and a batch's count. A too large message's record keeps the first :data:`FAILED_PREFIX_BYTES` of its data,
with the attributes ``profilestream.originalBytes`` and ``profilestream.originalSha256``
(:func:`cut_payload_attributes`). Codes:

=================================  ==================================================================================
``SIZE.MESSAGE_TOO_LARGE``         the message is larger than ``max_message_bytes`` (1 MiB), or its data is already
                                   cut to a prefix (it carries ``profilestream.originalBytes``: a replay line too
                                   long to read whole, or such a failed record replayed)
``DECODE.PUBLISH_TIME_OUT_OF_RANGE``  the publish time is before 1970-01-01 or later than the read time plus the skew
``DECODE.BATCH_TOO_LARGE``         a batch envelope with more than ``max_batch_entries`` messages (1,024)
``DECODE.NOT_UTF8``                the payload is not UTF-8
``DECODE.NOT_JSON``                not JSON; a UTF-8 byte-order mark counts (RFC 8259 §8.1: senders MUST NOT add one)
``DECODE.DUPLICATE_KEY``           an object repeats a key
``DECODE.NON_FINITE_NUMBER``       ``NaN``, ``Infinity``, or a number too large for a double (``1e400``)
``DECODE.INTEGER_OUT_OF_RANGE``    an integer outside signed 64 bits
``DECODE.TOO_DEEP``                objects and arrays nested deeper than :data:`MAX_JSON_DEPTH`
``DECODE.INVALID_STRING``          a string holding a lone surrogate escape (``"\\ud800"``), which UTF-8 cannot carry
``DECODE.BASE64``                  a replayed REST-form message whose ``data`` was not base64
``DECODE.AVRO``                    Avro bytes that do not decode with the schema's Avro form, or leave bytes over
``DECODE.NO_SCHEMA_REF``           no schema id: a bare entity without a ``schemaRef`` attribute
``DECODE.SCHEMA_REF_MISMATCH``     header and body of an envelope name different schemas
``DECODE.NO_ENTITY``               an envelope without a ``body.xdmEntity`` object
``DECODE.EMPTY_BATCH``             a batch envelope whose ``messages`` is empty or not a list
``DECODE.UNKNOWN_ENVELOPE``        JSON that is not an object, or a batch entry that is not an envelope
``SCHEMA.UNKNOWN_SCHEMA``          an Avro entity naming a schema that is not registered
=================================  ==================================================================================

Why strict, and cheap checks first: docs/decisions/0021-strict-json-and-cheap-checks-first.md; why the publish time
is checked: docs/decisions/0022-publish-times-are-trusted-within-a-range.md.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import re
from collections.abc import Callable
from typing import Any

import fastavro
import orjson

from core.clock import rfc3339_or_micros
from core.records import (
    ORIGINAL_BYTES_ATTRIBUTE,
    ORIGINAL_SHA256_ATTRIBUTE,
    REPLAY_ERROR_ATTRIBUTE,
    DecodedEntity,
    FailedRecord,
    Message,
    RecordError,
)

MAX_MESSAGE_BYTES = 1024 * 1024
# The reference documents no count per batch request; its multiple-messages tutorial sends 200 messages of 1 KB in one
# request, so 1 MiB of 1 KiB messages (1,024) admits that and any request of realistic events within 1 MiB.
MAX_BATCH_ENTRIES = 1024
MAX_JSON_DEPTH = 64
# What a failed record keeps of a too large payload: enough to see what it was, never the payload itself.
FAILED_PREFIX_BYTES = 64 * 1024
DEFAULT_PUBLISH_TIME_SKEW_US = 300 * 1_000_000
AVRO_CONTENT_TYPE = "avro/binary"

TOO_LARGE = "SIZE.MESSAGE_TOO_LARGE"
PUBLISH_TIME_OUT_OF_RANGE = "DECODE.PUBLISH_TIME_OUT_OF_RANGE"
BATCH_TOO_LARGE = "DECODE.BATCH_TOO_LARGE"
NOT_UTF8 = "DECODE.NOT_UTF8"
NOT_JSON = "DECODE.NOT_JSON"
DUPLICATE_KEY = "DECODE.DUPLICATE_KEY"
NON_FINITE_NUMBER = "DECODE.NON_FINITE_NUMBER"
INTEGER_OUT_OF_RANGE = "DECODE.INTEGER_OUT_OF_RANGE"
TOO_DEEP = "DECODE.TOO_DEEP"
INVALID_STRING = "DECODE.INVALID_STRING"
BASE64 = "DECODE.BASE64"
AVRO = "DECODE.AVRO"
NO_SCHEMA_REF = "DECODE.NO_SCHEMA_REF"
SCHEMA_REF_MISMATCH = "DECODE.SCHEMA_REF_MISMATCH"
NO_ENTITY = "DECODE.NO_ENTITY"
EMPTY_BATCH = "DECODE.EMPTY_BATCH"
UNKNOWN_ENVELOPE = "DECODE.UNKNOWN_ENVELOPE"
UNKNOWN_SCHEMA = "SCHEMA.UNKNOWN_SCHEMA"

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_BOM = b"\xef\xbb\xbf"
_JSON_WHITESPACE = b" \t\n\r"
# A number with a fraction or an exponent after '":' (a member's value), "[" or "," in orjson's compact writing, or a
# string that looks like one; three searches, each starting with a literal, are faster than one.
_FLOATS = tuple(re.compile(rb"%s-?[0-9]+[.e]" % start) for start in (b'":', rb"\[", b","))
# Every number in orjson's compact writing, and text in strings that looks like one.
_NUMBERS = re.compile(rb'(?:":|[\[,])(-?[0-9][0-9.eE+-]*)')


class JsonRejected(ValueError):
    """JSON that strict parsing refuses, with the decode code that says why."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict:
    result = dict(pairs)
    if len(result) != len(pairs):
        seen = set()
        duplicate = next(key for key, _ in pairs if key in seen or seen.add(key))
        raise JsonRejected(DUPLICATE_KEY, f"the key {duplicate!r} appears twice in one object")
    return result


def _bounded_int(text: str) -> int:
    # JSON integers have no leading zeros, so one longer than "-9223372036854775808" is out of range; testing the length
    # first also keeps int() away from CPython's 4,300-digit limit, whose plain ValueError would escape parse_json.
    value = int(text) if len(text) <= 20 else None
    if value is None or not _INT64_MIN <= value <= _INT64_MAX:
        raise JsonRejected(INTEGER_OUT_OF_RANGE, f"the integer {text[:40]} is outside signed 64 bits")
    return value


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise JsonRejected(NON_FINITE_NUMBER, f"the number {text[:40]} is too large for a double")
    return value


def _no_constants(name: str) -> None:
    raise JsonRejected(NON_FINITE_NUMBER, f"{name} is not a JSON number")


_DECODER = json.JSONDecoder(
    object_pairs_hook=_unique_keys, parse_int=_bounded_int, parse_float=_finite_float, parse_constant=_no_constants
)


def parse_json(data: bytes) -> Any:
    """The JSON value in ``data``, parsed strictly; raises :class:`JsonRejected`.

    The same value or the same rejection as :func:`parse_json_strictly`, faster: orjson parses first, and its value
    stands only when :func:`_orjson_agrees` proves the strict parser would return it; anything else (orjson refusing
    the text, or a check left unproven) goes to the strict parser, which then decides.
    """
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        return parse_json_strictly(data)
    return value if _orjson_agrees(data, value) else parse_json_strictly(data)


def parse_json_strictly(data: bytes) -> Any:
    """The JSON value in ``data``, parsed strictly by the standard library's parser; raises :class:`JsonRejected`.

    The reference :func:`parse_json` agrees with: every code of the module docstring is decided here.
    """
    if data.startswith(_BOM):
        raise JsonRejected(NOT_JSON, "a UTF-8 byte-order mark before the JSON text")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise JsonRejected(NOT_UTF8, f"not UTF-8: byte {error.start} is invalid") from None
    try:
        value = _DECODER.decode(text)
    except json.JSONDecodeError as error:
        raise JsonRejected(NOT_JSON, f"{error.msg} at line {error.lineno} column {error.colno}") from None
    except RecursionError:
        raise JsonRejected(TOO_DEEP, f"nested deeper than {MAX_JSON_DEPTH}") from None
    if text.count("{") + text.count("[") > MAX_JSON_DEPTH and _depth(value) > MAX_JSON_DEPTH:
        raise JsonRejected(TOO_DEEP, f"nested deeper than {MAX_JSON_DEPTH}")
    if _SURROGATE_ESCAPE.search(text) and has_lone_surrogate(value):
        raise JsonRejected(INVALID_STRING, "a string holds a lone UTF-16 surrogate, which UTF-8 cannot carry")
    return value


def _orjson_agrees(data: bytes, value: Any) -> bool:
    """Whether the strict parser would return ``value``, orjson's parse of ``data``, as it is.

    orjson refuses what the strict parser refuses for its own reasons (invalid UTF-8, a byte-order mark, ``NaN`` and
    ``Infinity``, numbers too large for a double, lone surrogate escapes, anything not JSON). Where the two can differ:

    - a repeated key, which orjson drops silently (the last copy wins);
    - an integer beyond signed 64 bits, which orjson reads as an unsigned 64-bit integer or as a double;
    - a decimal: orjson does not always round to the nearest double as ``float()`` does (the midpoint between 0 and
      the smallest subnormal, written out in full, becomes that subnormal);
    - nesting past :data:`MAX_JSON_DEPTH`, which orjson allows down to 1,024 levels.

    So orjson writes the value back with integers bounded to 53 bits (a larger one sends the text to the strict
    parser). When that writing is the text itself, but for whitespace between tokens, no key was dropped (the text
    would hold more) and each number is spelt as orjson writes the value it read, which ``float()`` reads back to that
    value. Otherwise the text goes to the strict parser if it holds a decimal, or more strings than the writing. A
    lone scalar (never an entity) goes there too.
    """
    if type(value) is not dict and type(value) is not list:
        return False
    try:
        compact = orjson.dumps(value, option=orjson.OPT_STRICT_INTEGER)
    except orjson.JSONEncodeError:
        return False
    spelt_alike = compact == data or compact.translate(None, _JSON_WHITESPACE) == data.translate(None, _JSON_WHITESPACE)
    if not spelt_alike and (_may_hold_a_float(compact) or _string_count(data) != _string_count(compact)):
        return False
    return data.count(b"{") + data.count(b"[") <= MAX_JSON_DEPTH or _depth(value) <= MAX_JSON_DEPTH


def _may_hold_a_float(compact: bytes) -> bool:
    """Whether orjson's compact writing holds a number with a fraction or an exponent (or a string that looks so)."""
    return any(floats.search(compact) for floats in _FLOATS)


def _string_count(text: bytes) -> int:
    """How many strings, keys included, valid JSON ``text`` holds: its quotes less the escaped ones, halved.

    Quotes and backslashes stand only in strings, and UTF-8 never uses their bytes inside another character. Removing
    every ``\\\\`` left to right removes exactly the escaped backslashes (each escape is two characters, and the scan
    starts outside any), so each ``\\"`` left is an escaped quote.
    """
    if b"\\" in text:
        text = text.replace(b"\\\\", b"")
        return (text.count(b'"') - text.count(b'\\"')) // 2
    return text.count(b'"') // 2


def _depth(value: Any) -> int:
    """How deep objects and arrays nest in ``value`` (0 for a scalar), counted one level past :data:`MAX_JSON_DEPTH`
    at most; level by level, each a list of the containers in it."""
    depth = 0
    level = [value] if type(value) is dict or type(value) is list else []
    while level and depth <= MAX_JSON_DEPTH:
        depth += 1
        level = [
            child
            for node in level
            for child in (node.values() if type(node) is dict else node)
            if type(child) is dict or type(child) is list
        ]
    return depth


def has_lone_surrogate(value: Any) -> bool:
    """Whether a string in parsed JSON ``value`` (a key too, at any depth) holds a lone UTF-16 surrogate."""
    stack = [value]
    while stack:
        node = stack.pop()
        if type(node) is str:
            try:
                node.encode("utf-8")
            except UnicodeEncodeError:
                return True
        elif type(node) is dict:
            stack.extend(node.keys())
            stack.extend(node.values())
        elif type(node) is list:
            stack.extend(node)
    return False


def decode_message(
    message: Message,
    avro_schema_for: Callable[[str], Any | None],
    *,
    max_message_bytes: int = MAX_MESSAGE_BYTES,
    max_batch_entries: int = MAX_BATCH_ENTRIES,
    publish_time_skew_us: int = DEFAULT_PUBLISH_TIME_SKEW_US,
) -> list[DecodedEntity | FailedRecord]:
    """The entities a message carries, or the failed records of what cannot be decoded; see the module docstring."""
    attributes = message.attributes
    if len(message.data) > max_message_bytes or ORIGINAL_BYTES_ATTRIBUTE in attributes:
        return [_too_large(message, max_message_bytes)]
    out_of_range = publish_time_out_of_range(message, publish_time_skew_us)
    if out_of_range is not None:
        return [_failed(message, PUBLISH_TIME_OUT_OF_RANGE, out_of_range)]
    if attributes.get(REPLAY_ERROR_ATTRIBUTE) == BASE64:
        return [_failed(message, BASE64, "the archived message's data is not base64")]
    if attributes.get("contentType", "").lower() == AVRO_CONTENT_TYPE:
        return [_decode_avro(message, avro_schema_for)]
    try:
        payload = parse_json(message.data)
    except JsonRejected as error:
        return [_failed(message, error.code, str(error))]
    if type(payload) is not dict:
        return [_failed(message, UNKNOWN_ENVELOPE, "the payload is JSON but not an object")]
    if len(payload) == 1 and "messages" in payload:
        return _decode_batch(message, payload["messages"], max_batch_entries)
    if "header" in payload or "body" in payload:
        return [_from_envelope(message, payload, 0, message.data, "")]
    schema_id = attributes.get("schemaRef")
    if schema_id is None:
        return [_failed(message, NO_SCHEMA_REF, "a bare entity needs the schemaRef attribute")]
    return [DecodedEntity(message, 0, schema_id, attributes.get("datasetId"), payload, message.data)]


def cut_payload_attributes(length: int, sha256_hex: str) -> dict[str, str]:
    """The attributes that stand for a payload cut to a prefix: its whole length in bytes and its SHA-256."""
    return {ORIGINAL_BYTES_ATTRIBUTE: str(length), ORIGINAL_SHA256_ATTRIBUTE: sha256_hex}


def _too_large(message: Message, max_message_bytes: int) -> FailedRecord:
    attributes = message.attributes
    if ORIGINAL_BYTES_ATTRIBUTE in attributes:  # cut before it came here: its attributes describe the whole
        size = attributes[ORIGINAL_BYTES_ATTRIBUTE]
    else:
        size = len(message.data)
        attributes = {**attributes, **cut_payload_attributes(size, hashlib.sha256(message.data).hexdigest())}
    text = f"{size} bytes; at most {max_message_bytes} per message (the record keeps the first {FAILED_PREFIX_BYTES})"
    record = _failed(message, TOO_LARGE, text)
    return dataclasses.replace(record, data=message.data[:FAILED_PREFIX_BYTES], attributes=attributes)


def publish_time_out_of_range(message: Message, skew_us: int) -> str | None:
    """Why the message's publish time is outside 1970-01-01 to its read time plus ``skew_us``; ``None`` when inside."""
    published_us = message.publish_time_us
    latest_us = message.read_time_us + skew_us
    if 0 <= published_us <= latest_us:
        return None
    published = rfc3339_or_micros(published_us)
    if published_us < 0:
        return f"published {published}, before 1970-01-01"
    return f"published {published}, later than its read time plus skew ({rfc3339_or_micros(latest_us)})"


def _decode_batch(message: Message, entries: Any, max_batch_entries: int) -> list[DecodedEntity | FailedRecord]:
    if type(entries) is not list or not entries:
        return [_failed(message, EMPTY_BATCH, "a batch envelope holds a non-empty list of messages", "/messages")]
    if len(entries) > max_batch_entries:
        text = f"{len(entries)} messages; at most {max_batch_entries} per batch"
        return [_failed(message, BATCH_TOO_LARGE, text, "/messages")]
    return [_decode_entry(message, index, entry) for index, entry in enumerate(entries)]


def _decode_entry(message: Message, index: int, entry: Any) -> DecodedEntity | FailedRecord:
    raw = _compact_json(entry)
    if type(entry) is not dict or ("header" not in entry and "body" not in entry):
        context = DecodedEntity(message, index, None, None, entry, raw)
        text = "a batch entry is a streaming envelope object (with a header or a body)"
        error = RecordError(UNKNOWN_ENVELOPE, f"/messages/{index}", text)
        return FailedRecord.of_entity(context, "decode", (error,))
    return _from_envelope(message, entry, index, raw, f"/messages/{index}")


def _compact_json(entry: Any) -> bytes:
    """``entry`` as ``json.dumps(entry, separators=(",", ":"), ensure_ascii=False)`` writes it, in UTF-8.

    orjson writes the same bytes for objects without floats (it escapes the same characters the same way, and the
    parse bounded integers to 64 bits); floats it may write otherwise (``1e-05`` as ``0.00001``), so an entry that
    may hold one takes the standard library's encoder unless :func:`_floats_spelt_as_repr` shows they agree.
    """
    if type(entry) is dict:
        try:
            compact = orjson.dumps(entry)
        except orjson.JSONEncodeError:
            pass
        else:
            if not _may_hold_a_float(compact) or _floats_spelt_as_repr(compact):
                return compact
    return json.dumps(entry, separators=(",", ":"), ensure_ascii=False).encode()


def _floats_spelt_as_repr(compact: bytes) -> bool:
    """Whether each number with a fraction or an exponent in orjson's compact writing is spelt as ``repr`` spells its
    value, as the standard library's encoder writes floats.

    Every number there follows ``":``, ``[`` or ``,``, and no number runs into the next one's start. Text inside a
    string that looks like a number is held to the same spelling: at worst the entry takes the standard encoder.
    """
    for number in _NUMBERS.findall(compact):
        if b"." in number or b"e" in number or b"E" in number:
            try:
                if repr(float(number)).encode() != number:
                    return False
            except ValueError:
                return False
    return True


def _from_envelope(
    message: Message, envelope: dict, index: int, raw: bytes, where: str
) -> DecodedEntity | FailedRecord:
    header = envelope.get("header")
    body = envelope.get("body")
    header = header if type(header) is dict else {}
    body = body if type(body) is dict else {}
    header_id = _schema_ref_id(header)
    meta = body.get("xdmMeta")
    body_id = _schema_ref_id(meta) if type(meta) is dict else None
    dataset_id = header.get("datasetId", message.attributes.get("datasetId"))
    dataset_id = dataset_id if type(dataset_id) is str else None

    entity = body.get("xdmEntity")
    if header_id is not None and body_id is not None and header_id != body_id:
        text = f"header names {header_id}, body names {body_id}"
        error = RecordError(SCHEMA_REF_MISMATCH, where + "/body/xdmMeta", text)
    elif type(entity) is not dict:
        error = RecordError(NO_ENTITY, where + "/body/xdmEntity", "the envelope has no body.xdmEntity object")
    else:
        schema_id = header_id or body_id or message.attributes.get("schemaRef")
        if schema_id is not None:
            return DecodedEntity(message, index, schema_id, dataset_id, entity, raw)
        text = "the envelope names no schema (header.schemaRef.id)"
        error = RecordError(NO_SCHEMA_REF, where + "/header/schemaRef", text)
    context = DecodedEntity(message, index, header_id or body_id, dataset_id, None, raw)
    return FailedRecord.of_entity(context, "decode", (error,))


def _schema_ref_id(holder: dict) -> str | None:
    reference = holder.get("schemaRef")
    schema_id = reference.get("id") if type(reference) is dict else None
    return schema_id if type(schema_id) is str and schema_id else None


def _decode_avro(message: Message, avro_schema_for: Callable[[str], Any | None]) -> DecodedEntity | FailedRecord:
    schema_id = message.attributes.get("schemaRef")
    if schema_id is None:
        return _failed(message, NO_SCHEMA_REF, "an avro/binary entity needs the schemaRef attribute")
    avro_schema = avro_schema_for(schema_id)
    if avro_schema is None:
        return _failed(message, UNKNOWN_SCHEMA, f"no ingestion schema is registered as {schema_id!r}")
    stream = io.BytesIO(message.data)
    try:
        entity = fastavro.schemaless_reader(stream, avro_schema, None)
    except Exception as error:  # fastavro raises many types on corrupt input; all mean the same here
        return _failed(message, AVRO, f"not an Avro entity of {schema_id}: {type(error).__name__}: {error}")
    if stream.tell() != len(message.data):
        return _failed(message, AVRO, f"{len(message.data) - stream.tell()} bytes left over after the Avro entity")
    return DecodedEntity(message, 0, schema_id, message.attributes.get("datasetId"), entity, message.data)


def _failed(message: Message, code: str, text: str, path: str = "") -> FailedRecord:
    return FailedRecord.of_message(message, "decode", (RecordError(code, path, text),))
