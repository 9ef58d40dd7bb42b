"""Tests for transforms/decode.py: the Decode transform in batch on the FnApiRunner and in streaming, driven by a
TestStream, on the BundleBasedDirectRunner: entities and failures leave by their own outputs, every message gives at
least one output (exactly one unless it is a batch envelope), and the counters add up.

The decoding rules themselves are tested without Beam in test_decoding.py.
"""

from __future__ import annotations

import dataclasses

import apache_beam as beam
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_stream import TestStream
from apache_beam.testing.util import assert_that, equal_to

from messages.decoding import (
    BATCH_TOO_LARGE,
    NO_SCHEMA_REF,
    NOT_JSON,
    PUBLISH_TIME_OUT_OF_RANGE,
    TOO_DEEP,
    UNKNOWN_ENVELOPE,
)
from schemas.registry import SchemaRegistry
from tests.messages.test_decoding import (
    AVRO_ATTRIBUTES,
    EVENT_ID,
    PROFILE_ID,
    READ_TIME_US,
    SAMPLE_EVENT,
    SAMPLE_PROFILE,
    avro_bytes,
    envelope,
    message,
)
from transforms.decode import INTERNAL, Decode
from transforms.metrics import NAMESPACE

SAMPLE_BATCH = {"messages": [envelope(), 42, envelope(SAMPLE_PROFILE, header_id=PROFILE_ID, body_id=None)]}
SAMPLE_JSON_MESSAGES = [
    message(envelope(), "envelope"),
    message(SAMPLE_BATCH, "batch"),
    message(b'{"not json', "broken"),
    message(SAMPLE_EVENT, "bare", schemaRef=EVENT_ID),
    message(SAMPLE_EVENT, "no-schema"),
    message(b"[" * 100_000 + b"]" * 100_000, "deep", schemaRef=EVENT_ID),
]
EXPECTED_ENTITIES = [
    ("envelope", 0, EVENT_ID),
    ("batch", 0, EVENT_ID),
    ("batch", 2, PROFILE_ID),
    ("bare", 0, EVENT_ID),
    ("avro", 0, EVENT_ID),
]
EXPECTED_FAILED = [
    ("batch", 1, UNKNOWN_ENVELOPE),
    ("broken", None, NOT_JSON),
    ("no-schema", None, NO_SCHEMA_REF),
    ("deep", None, TOO_DEEP),
]
EXPECTED_OUTPUTS_PER_MESSAGE = [
    ("envelope", 1),
    ("batch", 3),
    ("broken", 1),
    ("bare", 1),
    ("no-schema", 1),
    ("deep", 1),
    ("avro", 1),
]
EXPECTED_COUNTERS = {
    "messages": 7,
    "decoded_entities": 5,
    "decode_failed": 4,
    f"failed.{UNKNOWN_ENVELOPE}": 1,
    f"failed.{NOT_JSON}": 1,
    f"failed.{NO_SCHEMA_REF}": 1,
    f"failed.{TOO_DEEP}": 1,
}


@pytest.fixture(scope="module")
def registry() -> SchemaRegistry:
    return SchemaRegistry.load()


@pytest.fixture(scope="module")
def sample_messages(registry) -> list:
    return [*SAMPLE_JSON_MESSAGES, message(avro_bytes(SAMPLE_EVENT, registry), "avro", **AVRO_ATTRIBUTES)]


def streaming_source(messages: list) -> TestStream:
    stream = TestStream()
    for second, msg in enumerate(messages):
        stream = stream.add_elements([beam.window.TimestampedValue(msg, second)]).advance_watermark_to(second)
    return stream.advance_watermark_to_infinity()


def streaming_pipeline() -> beam.Pipeline:
    return beam.Pipeline(options=PipelineOptions(streaming=True, runner="BundleBasedDirectRunner"))


def entity_key(entity) -> tuple:
    return (entity.message.message_id, entity.index, entity.schema_id)


def failed_key(failed) -> tuple:
    return (failed.message_id, failed.index, failed.errors[0].code)


def check_split(result) -> None:
    assert_that(result.entities | "EntityKeys" >> beam.Map(entity_key), equal_to(EXPECTED_ENTITIES), label="Entities")
    assert_that(result.failed | "FailedKeys" >> beam.Map(failed_key), equal_to(EXPECTED_FAILED), label="Failed")


def check_outputs_per_message(result) -> None:
    per_message = (
        (
            result.entities | "EntityMessage" >> beam.Map(lambda entity: entity.message.message_id),
            result.failed | "FailedMessage" >> beam.Map(lambda failed: failed.message_id),
        )
        | beam.Flatten()
        # Streaming needs a window to count in; each message's outputs keep its timestamp, a second apart.
        | beam.WindowInto(beam.window.FixedWindows(1))
        | beam.combiners.Count.PerElement()
    )
    assert_that(per_message, equal_to(EXPECTED_OUTPUTS_PER_MESSAGE))


def counters(result) -> dict[str, int]:
    found = result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))["counters"]
    totals: dict[str, int] = {}
    for counter in found:
        value = counter.committed if counter.committed is not None else counter.attempted
        totals[counter.key.metric.name] = totals.get(counter.key.metric.name, 0) + value
    return totals


def no_schema(schema_id: str) -> None:
    return None


def explode(schema_id: str) -> None:
    raise RuntimeError("a bug in the schema lookup")


def test_decode_splits_entities_and_failures_on_the_fn_api_runner(registry, sample_messages):
    with beam.Pipeline(runner="FnApiRunner") as pipeline:
        check_split(pipeline | beam.Create(sample_messages) | Decode(registry.avro_schema_for))


def test_each_message_gives_one_output_or_one_per_batch_entry_on_the_fn_api_runner(registry, sample_messages):
    with beam.Pipeline(runner="FnApiRunner") as pipeline:
        check_outputs_per_message(pipeline | beam.Create(sample_messages) | Decode(registry.avro_schema_for))


def test_decode_counters_add_up_on_the_fn_api_runner(registry, sample_messages):
    pipeline = beam.Pipeline(runner="FnApiRunner")
    _ = pipeline | beam.Create(sample_messages) | Decode(registry.avro_schema_for)
    result = pipeline.run()
    result.wait_until_finish()
    assert counters(result) == EXPECTED_COUNTERS


def test_the_messages_counter_is_found_by_name(registry, sample_messages):
    pipeline = beam.Pipeline(runner="FnApiRunner")
    _ = pipeline | beam.Create(sample_messages) | Decode(registry.avro_schema_for)
    result = pipeline.run()
    result.wait_until_finish()
    [counter] = result.metrics().query(MetricsFilter().with_name("messages"))["counters"]
    assert counter.committed == len(sample_messages)


def test_a_failure_inside_decoding_leaves_as_an_internal_failed_record():
    failing = message(b"\x00", "avro", **AVRO_ATTRIBUTES)
    with beam.Pipeline(runner="FnApiRunner") as pipeline:
        result = pipeline | beam.Create([failing]) | Decode(explode)
        keys = result.failed | beam.Map(lambda failed: (failed.message_id, failed.errors[0].code, failed.data))
        assert_that(keys, equal_to([("avro", INTERNAL, b"\x00")]))


def test_the_maximum_message_size_is_passed_to_decoding():
    with beam.Pipeline(runner="FnApiRunner") as pipeline:
        result = pipeline | beam.Create([message(envelope(), "envelope")]) | Decode(no_schema, max_message_bytes=10)
        assert_that(result.failed | beam.Map(failed_key), equal_to([("envelope", None, "SIZE.MESSAGE_TOO_LARGE")]))


def test_the_batch_limit_and_the_publish_time_skew_are_passed_to_decoding():
    future = dataclasses.replace(message(envelope(), "future"), publish_time_us=READ_TIME_US + 2)
    batch = message({"messages": [envelope(), envelope()]}, "batch")
    with beam.Pipeline(runner="FnApiRunner") as pipeline:
        result = (
            pipeline | beam.Create([future, batch]) | Decode(no_schema, max_batch_entries=1, publish_time_skew_us=1)
        )
        assert_that(
            result.failed | beam.Map(failed_key),
            equal_to([("future", None, PUBLISH_TIME_OUT_OF_RANGE), ("batch", None, BATCH_TOO_LARGE)]),
        )


def test_decode_splits_entities_and_failures_in_streaming(registry, sample_messages):
    with streaming_pipeline() as pipeline:
        check_split(pipeline | streaming_source(sample_messages) | Decode(registry.avro_schema_for))


def test_each_message_gives_one_output_or_one_per_batch_entry_in_streaming(registry, sample_messages):
    with streaming_pipeline() as pipeline:
        check_outputs_per_message(pipeline | streaming_source(sample_messages) | Decode(registry.avro_schema_for))


def test_outputs_keep_their_message_timestamp_in_streaming(registry, sample_messages):
    with streaming_pipeline() as pipeline:
        result = pipeline | streaming_source(sample_messages) | Decode(registry.avro_schema_for)
        timestamps = beam.Map(lambda failed, at=beam.DoFn.TimestampParam: (failed.message_id, int(at)))
        assert_that(result.failed | timestamps, equal_to([("batch", 1), ("broken", 2), ("no-schema", 4), ("deep", 5)]))


def test_decode_counters_add_up_in_streaming(registry, sample_messages):
    # One TestStream bundle: this Beam's BundleBasedDirectRunner keeps user counters of a DoFn's first bundle only
    # (seen with a one-line counting DoFn too), so messages spread over bundles would under-count here.
    stream = TestStream().add_elements(sample_messages).advance_watermark_to_infinity()
    pipeline = streaming_pipeline()
    _ = pipeline | stream | Decode(registry.avro_schema_for)
    result = pipeline.run()
    result.wait_until_finish()
    assert counters(result) == EXPECTED_COUNTERS
