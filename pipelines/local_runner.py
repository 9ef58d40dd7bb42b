"""The local streaming runner with every bundle's metrics kept: a correction to Beam's BundleBasedDirectRunner.

Beam's DirectRunner (2.77) runs bundles on worker threads, each of which keeps one state sampler for its whole life.
The sampler caches, per step, the scoped state made for the step's first bundle on that thread, and that state holds
the first bundle's metrics container. Every later bundle of the step on the thread counts into that container, which
was committed already and is never read again: its counts are lost. A replay arrives in few bundles and hardly
notices; a Pub/Sub read arrives in many small ones, and timer firings are bundles of their own, so the profile
counters (counted when a timer flushes) would read zero.

:func:`metrics_of_every_bundle` gives each bundle a state sampler of its own while it is in effect, so each bundle's
metrics land in the container the runner commits. ``tests/pipelines/test_local_runner.py`` checks that Beam still
needs it: when that test fails after a Beam upgrade, this module can go.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from apache_beam.runners.direct import executor
from apache_beam.runners.worker import statesampler
from apache_beam.utils import counters


@contextlib.contextmanager
def metrics_of_every_bundle() -> Iterator[None]:
    """While in effect, the DirectRunner keeps the metrics of every bundle (see the module docstring)."""
    thread_call = executor.TransformExecutor.call

    def bundle_call(transform_executor: executor.TransformExecutor, thread_sampler: statesampler.StateSampler):
        bundle_sampler = statesampler.StateSampler("", counters.CounterFactory())
        statesampler.set_current_tracker(bundle_sampler)
        try:
            return thread_call(transform_executor, bundle_sampler)
        finally:
            statesampler.set_current_tracker(thread_sampler)

    executor.TransformExecutor.call = bundle_call
    try:
        yield
    finally:
        executor.TransformExecutor.call = thread_call
