"""SpreadOverWorkers hands on every element once, with its own timestamp, however the chunks fall."""

from __future__ import annotations

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.window import TimestampedValue

from transforms.spread import SpreadOverWorkers


@pytest.mark.parametrize("chunk_size", [1, 7, 1000])
def test_every_element_comes_out_once_with_its_timestamp(chunk_size):
    elements = [(f"m{number}", 1_000 + number * 37) for number in range(100)]
    with TestPipeline(runner="FnApiRunner") as pipeline:
        spread = (
            pipeline
            | beam.Create(elements)
            | "Stamp" >> beam.Map(lambda pair: TimestampedValue(pair[0], pair[1]))
            | SpreadOverWorkers(chunk_size=chunk_size)
            | "WithTimestamp" >> beam.Map(lambda name, at=beam.DoFn.TimestampParam: (name, at.micros // 1_000_000))
        )
        assert_that(spread, equal_to(elements))
