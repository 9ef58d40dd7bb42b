"""Prism (Beam 2.77.0) loses a stateful DoFn's state when it splits a bundle that stalls.

In: 4 keys x 300 elements. A stateful DoFn keeps, per key, a bag of the elements and a read-modify-write counter, and
an end-of-window timer reports both; every 60th element stalls 0.35 s, long enough for Prism to split the bundle.
Out: what each key's timer reported, as counters ``<key> bag`` and ``<key> count``, printed as one JSON line, then
how many elements are missing from the bags; every counter should be 300.

    python repro.py --runner PrismRunner --prism_location PATH [--experiments=prism_disable_sdf_split]
    python repro.py --runner FnApiRunner

Beam's Python SDK is all it needs; with no ``--prism_location`` Beam downloads Prism.
"""

import json
import sys
import time

import apache_beam as beam
from apache_beam.coders import VarIntCoder
from apache_beam.metrics import Metrics
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import BagStateSpec, ReadModifyWriteStateSpec, TimerSpec, on_timer

KEYS = [f"key{number}" for number in range(4)]
PER_KEY = 300
# A stall on each key's 60th element, not its first, puts Prism's first split (at half of what the bundle has left)
# inside a key rather than between two.
STALL_EVERY = 60
# Prism asks a bundle for progress every 100 ms at first, and splits one that has made none since the last ask.
STALL_S = 0.35


class BagCountAndReport(beam.DoFn):
    BAG = BagStateSpec("bag", VarIntCoder())
    COUNT = ReadModifyWriteStateSpec("count", VarIntCoder())
    AT_END = TimerSpec("at_end", TimeDomain.WATERMARK)

    def process(
        self,
        element,
        window=beam.DoFn.WindowParam,
        bag=beam.DoFn.StateParam(BAG),
        count=beam.DoFn.StateParam(COUNT),
        at_end=beam.DoFn.TimerParam(AT_END),
    ):
        _key, value = element
        if value % STALL_EVERY == STALL_EVERY - 1:
            time.sleep(STALL_S)
        bag.add(value)
        count.write((count.read() or 0) + 1)
        at_end.set(window.end)

    @on_timer(AT_END)
    def report(self, key=beam.DoFn.KeyParam, bag=beam.DoFn.StateParam(BAG), count=beam.DoFn.StateParam(COUNT)):
        Metrics.counter("repro", f"{key} bag").inc(len(list(bag.read())))
        Metrics.counter("repro", f"{key} count").inc(count.read() or 0)


def run(argv: list[str]) -> dict[str, int]:
    """Runs the pipeline with the Beam options ``argv``; returns each counter the timers reported, by name."""
    pipeline = beam.Pipeline(options=PipelineOptions(argv))
    elements = [(key, value) for value in range(PER_KEY) for key in KEYS]
    _ = pipeline | beam.Create(elements) | beam.ParDo(BagCountAndReport())
    result = pipeline.run()
    result.wait_until_finish()
    counters = result.metrics().query(MetricsFilter().with_namespace("repro"))["counters"]
    return {
        counter.key.metric.name: counter.committed if counter.committed is not None else counter.attempted
        for counter in counters
    }


if __name__ == "__main__":
    reported = run(sys.argv[1:])
    print(json.dumps(reported, sort_keys=True))
    lost = sum(PER_KEY - reported.get(f"{key} bag", 0) for key in KEYS)
    print(f"lost {lost} of {PER_KEY * len(KEYS)} elements" if lost else "every element reported")
    sys.exit(1 if lost else 0)
