"""KeyedBundleBatches: every element in the list of each of its keys, lists no longer than asked, each list at the
earliest timestamp of its elements, on the batch and the streaming runner."""

from __future__ import annotations

import collections

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.direct.direct_runner import BundleBasedDirectRunner
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing import test_stream
from apache_beam.testing.util import assert_that
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.timestamp import Timestamp

from transforms.bundle_batches import KeyedBundleBatches

NUMBERS = list(range(60))


def keys_of(number: int, _at_us: int) -> list[str]:
    """Odd numbers under "odd"; multiples of three also under "three"; multiples of ten under no key."""
    if number % 10 == 0:
        return []
    return ["odd" if number % 2 else "even", *(["three"] if number % 3 == 0 else [])]


def expected_members() -> dict[str, list[int]]:
    members = collections.defaultdict(list)
    for number in NUMBERS:
        for key in keys_of(number, 0):
            members[key].append(number)
    return members


def checked(max_size: int):
    def check(batches: list) -> None:
        members = collections.defaultdict(list)
        for (key, held), at in batches:
            assert 0 < len(held) <= max_size
            assert at == min(1_000 + number for number in held)
            members[key].extend(held)
        assert {key: sorted(held) for key, held in members.items()} == expected_members()

    return check


def with_timestamps(batches: beam.PCollection) -> beam.PCollection:
    return batches | beam.Map(lambda batch, at=beam.DoFn.TimestampParam: (batch, at.micros // 1_000_000))


@pytest.mark.parametrize("max_size", [1, 4, 1000])
def test_batch_runner(max_size):
    with beam.Pipeline(runner=FnApiRunner()) as pipeline:
        stamped = pipeline | beam.Create(NUMBERS) | beam.Map(lambda number: TimestampedValue(number, 1_000 + number))
        batches = with_timestamps(stamped | KeyedBundleBatches(keys_of, max_size=max_size))
        assert_that(batches, checked(max_size))


@pytest.mark.parametrize("max_size", [3, 1000])
def test_streaming_runner(max_size):
    stream = test_stream.TestStream().advance_watermark_to(Timestamp(seconds=1_000))
    for start in range(0, len(NUMBERS), 20):
        values = [TimestampedValue(number, 1_000 + number) for number in NUMBERS[start : start + 20]]
        stream = stream.add_elements(values).advance_processing_time(5)
    stream = stream.advance_watermark_to_infinity()
    options = PipelineOptions([], streaming=True)
    with beam.Pipeline(runner=BundleBasedDirectRunner(), options=options) as pipeline:
        batches = with_timestamps(pipeline | stream | KeyedBundleBatches(keys_of, max_size=max_size))
        assert_that(batches, checked(max_size))


def test_a_size_below_one_is_refused():
    with pytest.raises(ValueError, match="max_size"):
        KeyedBundleBatches(keys_of, max_size=0)
