"""SpreadOverWorkers: a PCollection in, the same elements with their timestamps out, shared among the workers.

A replay is read by the stage that lists its files, and every step fused with it (decode, validate, stitch) runs in
that one bundle, on one worker, however many the runner has. This transform ends the fusion: it packs the elements
into chunks of ``chunk_size``, in the order they come, moves the chunks through a shuffle keyed by their number (a
multi-process FnApiRunner gives each worker a share of the keys) and unpacks them, each element with its own
timestamp and in the global window, as a replay's elements are. Chunks keep the shuffle's coding to one list per
``chunk_size`` elements, so it costs little next to the work it spreads.

Example::

    messages = pipeline | ReadReplay(path) | "SpreadOverWorkers" >> SpreadOverWorkers()
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import apache_beam as beam
from apache_beam.transforms.window import GlobalWindows, TimestampedValue
from apache_beam.utils.timestamp import Timestamp

CHUNK_SIZE = 500


class _ChunkFn(beam.DoFn):
    """Packs a bundle's elements into numbered chunks of (timestamp µs, element) pairs."""

    def __init__(self, chunk_size: int) -> None:
        self._chunk_size = chunk_size
        self._chunk: list[tuple[int, Any]] = []
        self._chunks = 0

    def start_bundle(self) -> None:
        self._chunk = []

    def process(self, element: Any, timestamp: Timestamp = beam.DoFn.TimestampParam) -> Iterator[Any]:
        self._chunk.append((timestamp.micros, element))
        if len(self._chunk) == self._chunk_size:
            yield self._numbered()

    def finish_bundle(self) -> Iterator[beam.utils.windowed_value.WindowedValue]:
        if self._chunk:
            yield beam.utils.windowed_value.WindowedValue(self._numbered(), 0, (beam.window.GlobalWindow(),))

    def _numbered(self) -> tuple[int, list[tuple[int, Any]]]:
        chunk, self._chunk = self._chunk, []
        self._chunks += 1
        # The bundle's id is not at hand here; an object id and a counter are unique among the bundles of one run.
        return hash((id(self), self._chunks)), chunk


def _unpacked(keyed: tuple[int, Iterable[list[tuple[int, Any]]]]) -> Iterator[TimestampedValue]:
    for chunk in keyed[1]:
        for micros, element in chunk:
            yield TimestampedValue(element, Timestamp(micros=micros))


class SpreadOverWorkers(beam.PTransform):
    """Shares the elements among the runner's workers; see the module docstring."""

    def __init__(self, *, chunk_size: int = CHUNK_SIZE) -> None:
        super().__init__()
        self._chunk_size = chunk_size

    def expand(self, elements: beam.PCollection) -> beam.PCollection:
        return (
            elements
            | "Chunk" >> beam.ParDo(_ChunkFn(self._chunk_size))
            | "InOneWindow" >> beam.WindowInto(GlobalWindows())
            | "Shuffle" >> beam.GroupByKey()
            | "Unpack" >> beam.FlatMap(_unpacked).with_output_types(elements.element_type)
        )
