"""Decode: messages in, XDM entities and failed records out.

Input: ``PCollection[Message]``. Outputs (:class:`DecodeResult`): ``entities``, ``PCollection[DecodedEntity]``, one
per entity (a batch envelope gives several), not yet validated; ``failed``, ``PCollection[FailedRecord]`` for every
message or batch entry that cannot be decoded (codes in :mod:`messages.decoding`). Nothing raises out of the DoFn:
an unexpected error becomes a failed record with code ``DECODE.INTERNAL``. The limits of
:func:`~messages.decoding.decode_message` (message size, batch entries, publish-time skew) are keyword options.

Metrics (namespace ``profilestream``): ``messages``, ``decoded_entities``, ``decode_failed`` and ``failed.<CODE>``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import apache_beam as beam

from core.records import FailedRecord, Message, RecordError
from messages.decoding import (
    DEFAULT_PUBLISH_TIME_SKEW_US,
    MAX_BATCH_ENTRIES,
    MAX_MESSAGE_BYTES,
    decode_message,
)
from transforms.metrics import DECODE_FAILED, DECODED_ENTITIES, MESSAGES, count_failure, counter

INTERNAL = "DECODE.INTERNAL"
_FAILED = "failed"


class DecodeResult(NamedTuple):
    entities: beam.PCollection
    failed: beam.PCollection


class _DecodeFn(beam.DoFn):
    def __init__(self, avro_schema_for: Callable[[str], Any | None], limits: dict[str, int]) -> None:
        self._avro_schema_for = avro_schema_for
        self._limits = limits
        self._messages = counter(MESSAGES)
        self._entities = counter(DECODED_ENTITIES)
        self._failed = counter(DECODE_FAILED)

    def process(self, message: Message):
        self._messages.inc()
        try:
            outputs = decode_message(message, self._avro_schema_for, **self._limits)
        except Exception as error:  # a bug must not lose the message: it leaves as a failed record
            outputs = [FailedRecord.of_message(message, "decode", (RecordError(INTERNAL, "", repr(error)),))]
        for output in outputs:
            if isinstance(output, FailedRecord):
                self._failed.inc()
                count_failure(output)
                yield beam.pvalue.TaggedOutput(_FAILED, output)
            else:
                self._entities.inc()
                yield output


class Decode(beam.PTransform):
    """Splits messages into entities; see the module docstring."""

    def __init__(
        self,
        avro_schema_for: Callable[[str], Any | None],
        *,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        max_batch_entries: int = MAX_BATCH_ENTRIES,
        publish_time_skew_us: int = DEFAULT_PUBLISH_TIME_SKEW_US,
    ) -> None:
        super().__init__()
        self._avro_schema_for = avro_schema_for
        self._limits = {
            "max_message_bytes": max_message_bytes,
            "max_batch_entries": max_batch_entries,
            "publish_time_skew_us": publish_time_skew_us,
        }

    def expand(self, messages: beam.PCollection) -> DecodeResult:
        outputs = messages | "SplitEntities" >> beam.ParDo(_DecodeFn(self._avro_schema_for, self._limits)).with_outputs(
            _FAILED, main="entities"
        )
        return DecodeResult(entities=outputs.entities, failed=outputs[_FAILED])
