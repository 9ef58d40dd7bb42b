"""The Validate transform: valid and failed outputs, metrics, and streaming behaviour."""

from __future__ import annotations

import apache_beam as beam
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_stream import TestStream
from apache_beam.testing.util import assert_that, equal_to

from core.records import DecodedEntity, Message
from schemas.registry import SchemaRegistry
from transforms.validate import Validate

EVENT_SCHEMA = "https://ns.adobe.com/xdm/context/experienceevent"
INGEST_US = 1_793_523_600_000_000  # 2026-11-01T09:00:00Z
EVENT_TYPE = "web.webpagedetails.pageViews"
SAMPLE_EVENT = {"@id": "e1", "xdm:timestamp": "2026-11-01T08:59:00Z", "eventType": EVENT_TYPE}
SAMPLE_BAD_EVENT = {"_id": "e2", "timestamp": "yesterday", "surprise": 1}


@pytest.fixture(scope="module")
def registry() -> SchemaRegistry:
    return SchemaRegistry.load()


def decoded(entity: dict, message_id: str, schema_id: str = EVENT_SCHEMA, dataset_id: str | None = None):
    message = Message(b"{}", {}, message_id, INGEST_US, INGEST_US)
    return DecodedEntity(message, 0, schema_id, dataset_id, entity, b"{}")


def counter_value(result, name: str) -> int:
    [counter] = result.metrics().query(MetricsFilter().with_name(name))["counters"]
    return counter.committed if counter.committed is not None else counter.attempted


def test_valid_entities_come_out_in_runtime_names_and_failures_carry_every_error(registry):
    with beam.Pipeline(runner="FnApiRunner") as pipeline:
        result = (
            pipeline | beam.Create([decoded(SAMPLE_EVENT, "m1"), decoded(SAMPLE_BAD_EVENT, "m2")]) | Validate(registry)
        )
        assert_that(
            result.valid | "Entities" >> beam.Map(lambda record: (record.dataset, dict(record.entity))),
            equal_to(
                [("experience_events", {"_id": "e1", "timestamp": "2026-11-01T08:59:00Z", "eventType": EVENT_TYPE})]
            ),
            label="Valid",
        )
        assert_that(
            result.failed | "Codes" >> beam.Map(lambda record: sorted((e.code, e.path) for e in record.errors)),
            equal_to([[("SCHEMA.FORMAT", "/timestamp"), ("SCHEMA.UNKNOWN_FIELD", "/surprise")]]),
            label="Failed",
        )


def test_unknown_schema_and_unregistered_dataset_fail_with_their_codes(registry):
    inputs = [
        decoded(SAMPLE_EVENT, "m1", schema_id="https://example.com/nope"),
        decoded(SAMPLE_EVENT, "m2", dataset_id="profile_records"),
    ]
    with beam.Pipeline(runner="FnApiRunner") as pipeline:
        result = pipeline | beam.Create(inputs) | Validate(registry)
        assert_that(
            result.failed | beam.Map(lambda record: (record.message_id, record.errors[0].code)),
            equal_to([("m1", "SCHEMA.UNKNOWN_SCHEMA"), ("m2", "SCHEMA.UNKNOWN_DATASET")]),
        )


def test_counters_balance_valid_and_failed_by_code(registry):
    pipeline = beam.Pipeline(runner="FnApiRunner")
    entities = [decoded(SAMPLE_EVENT, f"v{n}") for n in range(3)] + [decoded(SAMPLE_BAD_EVENT, "f1")]
    _ = pipeline | beam.Create(entities) | Validate(registry)
    result = pipeline.run()
    result.wait_until_finish()

    assert counter_value(result, "valid") == 3
    assert counter_value(result, "validate_failed") == 1
    assert counter_value(result, "failed.SCHEMA.FORMAT") == 1
    assert counter_value(result, "failed.SCHEMA.UNKNOWN_FIELD") == 1


def test_streaming_validation_keeps_each_element_in_its_window(registry):
    stream = (
        TestStream()
        .add_elements([beam.window.TimestampedValue(decoded(SAMPLE_EVENT, "m1"), 10)])
        .advance_watermark_to(100)
        .add_elements([beam.window.TimestampedValue(decoded(SAMPLE_BAD_EVENT, "m2"), 5)])
        .advance_watermark_to_infinity()
    )
    options = PipelineOptions(streaming=True, runner="BundleBasedDirectRunner")
    with beam.Pipeline(options=options) as pipeline:
        result = pipeline | stream | Validate(registry)
        timestamps = beam.Map(lambda record, at=beam.DoFn.TimestampParam: (record.message_id, int(at)))
        assert_that(result.valid | "ValidTimes" >> timestamps, equal_to([("m1", 10)]), label="Valid")
        assert_that(result.failed | "FailedTimes" >> timestamps, equal_to([("m2", 5)]), label="Failed")
