"""Archived Pub/Sub messages read from files, without Beam: what a replay reads and ``validate`` checks.

In: a replay PATH (a local file, a directory read recursively, or a glob): :func:`expand_replay_path` lists its files
(below a directory, names starting with ``.`` or ``_`` are skipped), :func:`read_replay_file` reads one lazily. Out:
one :class:`~core.records.Message` per archived message. :mod:`transforms.replay` is the Beam source built on them.

Each file is recognised by its content, not its name (README, "Replay formats"):

- **Avro** (starts with ``Obj\\x01``): the record format of Pub/Sub's Cloud Storage subscriptions (``message_id``,
  ``publish_time``, ``attributes``, ``data``; ``subscription_name`` is ignored). Fields left out by a subscription
  that does not write metadata are treated as in a bare JSONL line below, with the record's 1-based position as id.
- **Parquet** (starts with ``PAR1``): the lake's ``failed_records`` dataset (columns ``data``, ``attributes``,
  ``message_id``, ``publish_time``; the others are ignored).
- **JSONL**, anything else: one message per non-blank line. A line is a Pub/Sub message in REST form when it is a
  JSON object whose keys are only among ``data``, ``attributes``, ``messageId``, ``publishTime`` and
  ``orderingKey`` (dropped), that has ``data`` or ``attributes``, and whose values have the REST types: strings, a
  flat map of strings, and an RFC 3339 ``publishTime``. Any other line (another JSON value, or not JSON at all, or
  not even UTF-8) is the payload itself: its bytes become ``data``, its 1-based line number the message id, the read
  time its publish time. Lines are split on ``\\n`` as bytes; a ``\\r`` before it and a UTF-8 byte-order mark opening
  the file are not part of the line, and blank lines are skipped (they still count in the line numbers).

Every line is a message: one longer than :func:`max_line_bytes` becomes its first 64 KiB with
``profilestream.originalBytes`` and ``profilestream.originalSha256`` (read on in :data:`CHUNK_BYTES` chunks, never
whole), and a REST line whose ``data`` is not base64 (standard or URL-safe alphabet, padded or not) keeps its id and
publish time and carries :data:`REPLAY_ERROR_ATTRIBUTE` ``= "DECODE.BASE64"`` (removed from Avro and Parquet
messages); the decode stage fails both. Why: docs/decisions/0023-a-replay-keeps-every-line-as-a-message.md.
"""

from __future__ import annotations

import binascii
import codecs
import datetime
import glob
import hashlib
import json
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, BinaryIO, NamedTuple

import fastavro
import orjson

from core.clock import micros, parse_rfc3339_us
from core.records import REPLAY_ERROR_ATTRIBUTE, Message
from messages.decoding import (
    FAILED_PREFIX_BYTES,
    MAX_MESSAGE_BYTES,
    cut_payload_attributes,
    has_lone_surrogate,
)

_AVRO_MAGIC = b"Obj\x01"
_PARQUET_MAGIC = b"PAR1"
_REST_KEYS = frozenset({"data", "attributes", "messageId", "publishTime", "orderingKey"})
_PAYLOAD_KEYS = frozenset({"data", "attributes"})
_URL_SAFE_TO_STANDARD = str.maketrans("-_", "+/")
_FAILED_RECORD_COLUMNS = ("data", "attributes", "message_id", "publish_time")
# Failed records hold whole messages (up to 1 MiB each): small batches keep a file's memory bounded.
_PARQUET_BATCH_ROWS = 1024
CHUNK_BYTES = 1024 * 1024


class ReplayPathError(ValueError):
    """A replay PATH that names no file."""


class ReplayFormatError(ValueError):
    """A replay file that is Avro or Parquet but not in a replayable layout."""


def _is_hidden(name: str) -> bool:
    # Hive, Spark and pyarrow skip these too; the lake keeps its temporary files under such names.
    return name.startswith((".", "_"))


def _files_below(directory: str) -> list[str]:
    files = []
    for folder, subfolders, names in os.walk(directory):
        subfolders[:] = [name for name in subfolders if not _is_hidden(name)]
        files.extend(os.path.join(folder, name) for name in names if not _is_hidden(name))
    return files


def expand_replay_path(path: str) -> list[str]:
    """The files a replay PATH names, sorted: the file itself, every file below a directory, or a glob's matches.

    Hidden names (starting with ``.`` or ``_``) below a directory are skipped. Raises :class:`ReplayPathError` when
    nothing matches.
    """
    if os.path.isdir(path):
        candidates = _files_below(path)
    elif os.path.exists(path):
        candidates = [path]
    else:
        candidates = []
        for match in glob.glob(path, recursive=True):
            candidates.extend(_files_below(match) if os.path.isdir(match) else [match])
    files = sorted({candidate for candidate in candidates if os.path.isfile(candidate)})
    if not files:
        raise ReplayPathError(f"replay path matches no file: {path}")
    return files


def _decode_base64(text: str) -> bytes | None:
    padded = text + "=" * (-len(text) % 4)
    if "-" in text or "_" in text:
        padded = padded.translate(_URL_SAFE_TO_STANDARD)
    try:
        # Strict mode refuses exactly what base64.b64decode(validate=True) refuses, without its regular expression.
        return binascii.a2b_base64(padded, strict_mode=True)
    except ValueError:  # binascii.Error, or a character outside ASCII
        return None


def _archived_publish_time(fields: dict[str, Any] | None) -> int | None:
    """The publish time a REST line's ``fields`` hold, if any and if it reads as one."""
    if fields is None or "publishTime" not in fields:
        return None
    try:
        return parse_rfc3339_us(fields["publishTime"])
    except ValueError:
        return None


def _rest_message(fields: dict[str, Any], line_number: int, read_time_us: int) -> Message | None:
    """The message a line's REST ``fields`` (:func:`_rest_fields`) hold, else ``None`` (a ``publishTime`` that is no
    RFC 3339 time makes the line a payload); the line number stands for a missing ``messageId``, the read time for a
    missing ``publishTime``."""
    publish_time_us = read_time_us
    if "publishTime" in fields:
        publish_time_us = _archived_publish_time(fields)
        if publish_time_us is None:
            return None
    attributes = fields.get("attributes", {})
    text = fields.get("data", "")
    data = _decode_base64(text)
    if data is None:
        data = text.encode("utf-8")
        attributes = {**attributes, REPLAY_ERROR_ATTRIBUTE: "DECODE.BASE64"}
    message_id = fields["messageId"] if "messageId" in fields else str(line_number)
    return Message(data, attributes, message_id, publish_time_us, read_time_us)


def _rest_fields(line: bytes) -> dict[str, Any] | None:
    """The JSON object on ``line`` when it has the REST form's keys and value types, else ``None``: what
    :func:`_rest_fields_strictly` returns, faster.

    orjson parses first; what it refuses (``NaN``, a lone surrogate escape, a number too large for a double, ...) goes
    to the standard library. What it reads, it reads as the standard library does but for numbers, which a REST object
    never holds, and nesting just short of its limit of 1,024 levels, which the standard library's recursion limit may
    refuse. Both keep the last copy of a repeated key, so such nesting could hide in a dropped copy: a text holding
    more quotes than the strings of its REST object need (one that repeats a key) goes to the standard library too.
    """
    try:
        fields = orjson.loads(line)
    except orjson.JSONDecodeError:
        return _rest_fields_strictly(line)
    if not _has_rest_form(fields):
        return None
    strings = 2 * len(fields) - ("attributes" in fields) + 2 * len(fields.get("attributes", ()))
    # A repeated key or an escaped quote adds quotes (a line with the latter is left to the standard library too).
    return fields if line.count(b'"') == 2 * strings else _rest_fields_strictly(line)


def _rest_fields_strictly(line: bytes) -> dict[str, Any] | None:
    """The JSON object on ``line``, as the standard library reads it, when it has the REST form's keys and value
    types and no string holds a lone surrogate (which no UTF-8 consumer downstream, Arrow or Pub/Sub, could carry)."""
    try:
        fields = json.loads(line.decode("utf-8"))
    except (ValueError, RecursionError):
        return None
    return fields if _has_rest_form(fields) and not has_lone_surrogate(fields) else None


def _has_rest_form(fields: Any) -> bool:
    """Whether a parsed line is an object with only REST keys, ``data`` or ``attributes`` among them, whose
    ``attributes`` is a flat map of strings and whose other values are strings."""
    if type(fields) is not dict or not fields.keys() <= _REST_KEYS or fields.keys().isdisjoint(_PAYLOAD_KEYS):
        return False
    # A plain loop: a generator expression costs more than the few values it checks.
    for key, value in fields.items():
        if type(value) is not (dict if key == "attributes" else str):
            return False
    return all(type(value) is str for value in fields.get("attributes", {}).values())


def max_line_bytes(max_message_bytes: int = MAX_MESSAGE_BYTES) -> int:
    """The longest JSONL line a replay reads whole: a REST line carries its data in base64 (4/3 of it) beside
    attributes (Pub/Sub's cap them at 100 of 1,280 bytes, more once JSON escapes them), and 1 MiB covers those."""
    return 2 * max_message_bytes + 1024 * 1024


class _CutLine(NamedTuple):
    """A line too long to read whole: its first bytes, its length and its SHA-256."""

    prefix: bytes
    length: int
    sha256: str


def _jsonl_lines(stream: BinaryIO, longest: int) -> Iterator[bytes | _CutLine]:
    """Every line of ``stream`` without its line end (blank lines too, so that line numbers hold), a line longer than
    ``longest`` bytes as a :class:`_CutLine`, read in chunks and never held whole."""
    first = True
    while True:
        # Two bytes of room for the line end, so that a line of exactly ``longest`` bytes comes whole in one read.
        head = stream.readline(longest + 2)
        if not head:
            return
        whole = head.endswith(b"\n") or len(head) < longest + 2
        if first:
            head = head.removeprefix(codecs.BOM_UTF8)
            first = False
        line = head.removesuffix(b"\n").removesuffix(b"\r")
        if whole and len(line) <= longest:
            yield line
        else:
            yield _cut_line(head, stream)


def _cut_line(head: bytes, stream: BinaryIO) -> _CutLine:
    """The line that ``head`` begins, read on from ``stream`` up to its end in chunks of :data:`CHUNK_BYTES`."""
    digest = hashlib.sha256()
    length = 0
    prefix = bytearray()
    chunk, held = head, b""
    while True:
        ended = not chunk or chunk.endswith(b"\n")
        body = held + chunk
        if ended:
            body, held = body.removesuffix(b"\n").removesuffix(b"\r"), b""
        else:
            # A "\r" that ends a chunk may be the line end's; it is counted once the next chunk shows it is not.
            held = b"\r" if body.endswith(b"\r") else b""
            body = body[: len(body) - len(held)]
        digest.update(body)
        length += len(body)
        prefix += body[: FAILED_PREFIX_BYTES - len(prefix)]
        if ended:
            return _CutLine(bytes(prefix), length, digest.hexdigest())
        chunk = stream.readline(CHUNK_BYTES)


def _read_jsonl(path: str, clock: Callable[[], int], longest: int, share: Share) -> Iterator[Message]:
    every_line = share.count == 1
    # A large buffer: the default 8 KiB holds a few lines, and each refill is a system call.
    with open(path, "rb", buffering=CHUNK_BYTES) as stream:
        for line_number, line in enumerate(_jsonl_lines(stream, longest), start=1):
            position = line_number - 1
            # Without windows a line's position says whose it is, and another reader's line is not even parsed.
            if share.window_us is None and not every_line and not share.holds(position, None):
                continue
            if isinstance(line, _CutLine):
                if not share.holds(position, None):
                    continue
                read_time_us = clock()
                attributes = cut_payload_attributes(line.length, line.sha256)
                yield Message(line.prefix, attributes, str(line_number), read_time_us, read_time_us)
                continue
            if not line or line.isspace():
                continue
            fields = _rest_fields(line)
            if not every_line and not share.holds(position, _archived_publish_time(fields)):
                continue
            read_time_us = clock()
            message = None if fields is None else _rest_message(fields, line_number, read_time_us)
            yield Message(line, {}, str(line_number), read_time_us, read_time_us) if message is None else message


def _archived_attributes(attributes: Iterable[tuple[str, str]] | Mapping[str, str] | None) -> dict[str, str]:
    pairs = attributes.items() if isinstance(attributes, Mapping) else attributes or ()
    return {key: value for key, value in pairs if key != REPLAY_ERROR_ATTRIBUTE}


def _read_avro(path: str, clock: Callable[[], int], share: Share) -> Iterator[Message]:
    with open(path, "rb") as container:
        for position, record in enumerate(fastavro.reader(container), start=1):
            publish_time = record.get("publish_time")
            if isinstance(publish_time, datetime.datetime):
                publish_time = micros(publish_time)
            if not share.holds(position - 1, publish_time):
                continue
            read_time_us = clock()
            yield Message(
                data=record.get("data") or b"",
                attributes=_archived_attributes(record.get("attributes")),
                message_id=record.get("message_id") or str(position),
                publish_time_us=read_time_us if publish_time is None else publish_time,
                read_time_us=read_time_us,
            )


def _read_failed_records(path: str, clock: Callable[[], int], share: Share) -> Iterator[Message]:
    # Imported here: pyarrow costs validate and the replay of JSON files a fifth of a second they do not need.
    import pyarrow as pa
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(path)
    present = [name for name in _FAILED_RECORD_COLUMNS if name in parquet.schema_arrow.names]
    if "data" not in present:
        raise ReplayFormatError(f"not a failed_records file (no data column): {path}")
    position = 0
    for batch in parquet.iter_batches(batch_size=_PARQUET_BATCH_ROWS, columns=present):
        columns = {name: batch.column(name) for name in present}
        if "publish_time" in columns:
            # Integers, not datetimes: exact, and far cheaper than one Python datetime per row.
            as_timestamp = columns["publish_time"].cast(pa.timestamp("us", tz="UTC"), safe=False)
            columns["publish_time"] = as_timestamp.cast(pa.int64())
        rows = {name: column.to_pylist() for name, column in columns.items()}
        empty = [None] * batch.num_rows
        for data, attributes, message_id, publish_time in zip(
            rows["data"],
            rows.get("attributes", empty),
            rows.get("message_id", empty),
            rows.get("publish_time", empty),
            strict=True,
        ):
            position += 1
            if not share.holds(position - 1, publish_time):
                continue
            read_time_us = clock()
            yield Message(
                data=data or b"",
                attributes=_archived_attributes(attributes),
                message_id=message_id or str(position),
                publish_time_us=read_time_us if publish_time is None else publish_time,
                read_time_us=read_time_us,
            )


class Share(NamedTuple):
    """Which messages of a file reader ``index`` of ``count`` keeps; the readers ``0 .. count-1`` read every message
    once between them.

    With ``window_us``, a message archived with its publish time goes to the reader of its commit window: the
    ``window_us`` slice of the epoch that holds the publish time, numbered from the epoch, modulo ``count``. So all
    the copies of an entity that the lake tells apart within one window reach one reader, which keeps the one
    published first, as a single reader would. Any other message (without a publish time it is stamped with its read
    time, which differs from reader to reader), and every message without ``window_us``, by its position (0-based:
    a JSONL file's line, an Avro or Parquet file's record) modulo ``count``."""

    index: int
    count: int
    window_us: int | None = None

    def holds(self, position: int, publish_time_us: int | None) -> bool:
        if self.count == 1:
            return True
        slot = position if publish_time_us is None or self.window_us is None else publish_time_us // self.window_us
        return slot % self.count == self.index


EVERY_MESSAGE = Share(0, 1)


def read_replay_file(
    path: str,
    *,
    clock: Callable[[], int],
    max_message_bytes: int = MAX_MESSAGE_BYTES,
    share: Share = EVERY_MESSAGE,
) -> Iterator[Message]:
    """The messages archived in one file, in file order, read lazily; ``clock()`` gives each one's read time (µs).

    A JSONL line longer than :func:`max_line_bytes` of ``max_message_bytes`` is cut (see the module docstring). With
    a ``share``, only the messages it holds (without its ``window_us``, a JSONL line outside it is not even
    parsed)."""
    with open(path, "rb") as head:
        magic = head.read(4)
    if magic == _AVRO_MAGIC:
        return _read_avro(path, clock, share)
    if magic == _PARQUET_MAGIC:
        return _read_failed_records(path, clock, share)
    return _read_jsonl(path, clock, max_line_bytes(max_message_bytes), share)
