"""KeyedBundleBatches: elements in, ``(key, [elements])`` out, one list per key per bundle.

In: any ``PCollection``, and ``keys_of(element, timestamp_us)``, which gives the keys an element goes under (none:
the element is left out; several: it goes into the list of each). Out: ``(key, list)`` pairs in the global window, at
the earliest timestamp of the list's elements; each list holds its key's elements of one bundle, in the order they
came, at most ``max_size`` of them (a fuller key starts another list).

Why: a step before a shuffle or a stateful DoFn pays the runner's cost per element (the DirectRunner's evaluator
call, FnApiRunner's coding of each element, the bag's append), so the lake writer and the profile merge take the
rows and records of a bundle as one list per key instead: the cost is paid per list. Nothing waits for a list: a
bundle's lists leave when the bundle ends.

Example::

    batches = rows | "KeyByCommitWindow" >> KeyedBundleBatches(lambda row, at_us: [(row.dataset, at_us // 300)])
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Iterator
from typing import Any

import apache_beam as beam
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.timestamp import Timestamp
from apache_beam.utils.windowed_value import WindowedValue

MAX_SIZE = 1000

KeysOf = Callable[[Any, int], Iterable[Hashable]]


class _KeyedBundleBatchesFn(beam.DoFn):
    def __init__(self, keys_of: KeysOf, max_size: int) -> None:
        self._keys_of = keys_of
        self._max_size = max_size
        self._lists: dict[Hashable, tuple[int, list]] = {}

    def start_bundle(self) -> None:
        self._lists = {}

    def process(self, element: Any, timestamp: Timestamp = beam.DoFn.TimestampParam) -> Iterator[WindowedValue]:
        micros = timestamp.micros
        for key in self._keys_of(element, micros):
            earliest, held = self._lists.pop(key, None) or (micros, [])
            held.append(element)
            if len(held) == self._max_size:
                yield _in_global_window(key, held, min(earliest, micros))
            else:
                self._lists[key] = (min(earliest, micros), held)

    def finish_bundle(self) -> Iterator[WindowedValue]:
        lists, self._lists = self._lists, {}
        for key, (earliest, held) in lists.items():
            yield _in_global_window(key, held, earliest)


def _in_global_window(key: Hashable, held: list, micros: int) -> WindowedValue:
    return WindowedValue((key, held), Timestamp(micros=micros), (GlobalWindow(),))


class KeyedBundleBatches(beam.PTransform):
    """Groups each bundle's elements into one list per key; see the module docstring."""

    def __init__(self, keys_of: KeysOf, *, max_size: int = MAX_SIZE) -> None:
        super().__init__()
        if max_size <= 0:
            raise ValueError(f"max_size must be positive, got {max_size}")
        self._keys_of = keys_of
        self._max_size = max_size

    def expand(self, elements: beam.PCollection) -> beam.PCollection:
        return elements | "ListPerKey" >> beam.ParDo(_KeyedBundleBatchesFn(self._keys_of, self._max_size))
