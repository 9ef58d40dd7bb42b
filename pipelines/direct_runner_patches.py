"""Corrections of Beam's DirectRunner (2.77) for ``profilestream run``: patches of its private classes, in effect only
while a run on that runner (:attr:`pipelines.runners.RunnerCapabilities.direct_runner`) runs.

    with patched_direct_runner(stop):
        pipeline.run().wait_until_finish()

Each patch has a canary in ``tests/pipelines/test_direct_runner_patches.py``, a test that fails once Beam no longer
needs it: then the patch can go.
"""

from __future__ import annotations

import collections
import contextlib
import threading
from collections.abc import Iterator
from typing import Any

from apache_beam.runners import common
from apache_beam.runners.direct import executor, transform_evaluator
from apache_beam.runners.direct.util import TransformResult
from apache_beam.runners.worker import statesampler
from apache_beam.transforms import userstate
from apache_beam.transforms.core import CallableWrapperDoFn
from apache_beam.utils import counters
from apache_beam.utils.timestamp import MAX_TIMESTAMP

from messages.pubsub import pull_gathered

DEFAULT_PULL_MESSAGES = 1000
# Beam waits up to 30 s for a pull, and a stop waits for the pull in progress.
PULL_WAIT_S = 1.0
# How long a read gathers pulls into one bundle while messages keep coming.
GATHER_S = 0.2


@contextlib.contextmanager
def patched_direct_runner(stop: threading.Event) -> Iterator[None]:
    """Every correction of this module in effect: :func:`metrics_of_every_bundle`, :func:`stoppable_pubsub_reads`,
    :func:`dofn_specs_read_once` and :func:`dofns_kept_across_bundles`."""
    with metrics_of_every_bundle(), stoppable_pubsub_reads(stop), dofn_specs_read_once(), dofns_kept_across_bundles():
        yield


@contextlib.contextmanager
def metrics_of_every_bundle() -> Iterator[None]:
    """While in effect, the DirectRunner keeps the metrics of every bundle, not only of the first a worker thread runs
    for a step: each bundle gets a state sampler of its own (docs/decisions/0006-a-state-sampler-per-bundle-on-the-
    direct-runner.md)."""
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


@contextlib.contextmanager
def stoppable_pubsub_reads(stop: threading.Event, *, max_messages: int = DEFAULT_PULL_MESSAGES) -> Iterator[None]:
    """While in effect, ``stop.set()`` ends the DirectRunner's Pub/Sub reads: they pull no more and their watermark
    goes to the end of time, so the run flushes what it holds and finishes as a replay does. Each read also pulls up to
    ``max_messages`` at a time where Beam pulls 10, gathering pulls for up to :data:`GATHER_S` while messages keep
    coming (docs/decisions/0007-a-stoppable-pubsub-read-on-the-direct-runner.md)."""
    evaluator = transform_evaluator._PubSubReadEvaluator
    beam_finish_bundle = evaluator.finish_bundle
    beam_subscriber_client = evaluator._get_subscriber_client

    def finish_bundle(read: transform_evaluator._PubSubReadEvaluator) -> TransformResult:
        if stop.is_set():
            # No output, nothing left to read, and a watermark past every window: the read is done.
            return TransformResult(read, [], [], None, {None: MAX_TIMESTAMP})
        return beam_finish_bundle(read)

    def subscriber_client(transform: Any) -> _LargerPulls:
        return _LargerPulls(beam_subscriber_client.__func__(evaluator, transform), max_messages)

    evaluator.finish_bundle = finish_bundle
    evaluator._get_subscriber_client = classmethod(lambda _cls, transform: subscriber_client(transform))
    try:
        yield
    finally:
        evaluator.finish_bundle = beam_finish_bundle
        evaluator._get_subscriber_client = classmethod(beam_subscriber_client.__func__)


@contextlib.contextmanager
def dofn_specs_read_once() -> Iterator[None]:
    """While in effect, the state and timer specs of a DoFn class are read once, not at every bundle: the DirectRunner
    deserialises each DoFn and inspects the signature of every one of its methods for every bundle it runs (a second
    of a streaming run's five, which runs a bundle per timer firing). Callables wrapped by ``Map`` and its kin are
    inspected each time, since their parameters are the wrapped function's."""
    beam_specs = userstate.get_dofn_specs
    specs_of_class: dict[type, tuple[frozenset, frozenset]] = {}

    def specs(dofn: Any) -> tuple[set, set]:
        if isinstance(dofn, CallableWrapperDoFn):
            return beam_specs(dofn)
        found = specs_of_class.get(type(dofn))
        if found is None:
            state, timers = beam_specs(dofn)
            found = specs_of_class[type(dofn)] = frozenset(state), frozenset(timers)
        return set(found[0]), set(found[1])

    userstate.get_dofn_specs = transform_evaluator.get_dofn_specs = specs
    try:
        yield
    finally:
        userstate.get_dofn_specs = transform_evaluator.get_dofn_specs = beam_specs


@contextlib.contextmanager
def dofns_kept_across_bundles() -> Iterator[None]:
    """While in effect, a step's DoFn is set up once and kept for the step's later bundles, as the portable runners
    keep theirs, where the DirectRunner pickles a copy, sets it up and tears it down for every bundle: the profile
    merge opened its two stores and compacted what it had just written at every timer firing, 9% of a streaming run's
    busy CPU at 1,000 events/s. A copy serves one bundle at a time (bundles of one step run on several threads); one
    whose bundle failed is not used again. Every copy set up is torn down when the context ends, after the run."""
    make_copy = transform_evaluator.pickler.roundtrip
    lock = threading.Lock()
    idle: dict[int, list[Any]] = collections.defaultdict(list)  # by id() of the step's own DoFn
    step_of: dict[int, int] = {}  # by id() of a copy, its step's
    set_up: dict[int, Any] = {}  # the copies set up, by id()

    def copy_for_bundle(dofn: Any) -> Any:
        with lock:
            if idle[id(dofn)]:
                return idle[id(dofn)].pop()
        copy = make_copy(dofn)
        with lock:
            step_of[id(copy)] = id(dofn)
        return copy

    class KeptDoFnRunner(common.DoFnRunner):
        def __init__(self, fn: Any, *args: Any, **kwargs: Any) -> None:
            super().__init__(fn, *args, **kwargs)
            self._kept = fn if id(fn) in step_of else None

        def setup(self) -> None:
            if self._kept is None or id(self._kept) not in set_up:
                super().setup()
                if self._kept is not None:
                    set_up[id(self._kept)] = self._kept

        def teardown(self) -> None:
            if self._kept is None:
                super().teardown()
                return
            with lock:
                idle[step_of[id(self._kept)]].append(self._kept)

    evaluator_pickler, evaluator_runner = transform_evaluator.pickler, transform_evaluator.DoFnRunner
    transform_evaluator.pickler = _PicklerMakingCopies(evaluator_pickler, copy_for_bundle)
    transform_evaluator.DoFnRunner = KeptDoFnRunner
    try:
        yield
    finally:
        transform_evaluator.pickler, transform_evaluator.DoFnRunner = evaluator_pickler, evaluator_runner
        for dofn in set_up.values():
            dofn.teardown()


class _PicklerMakingCopies:
    """Beam's pickler module, but for ``roundtrip``, which gives a copy of a DoFn through ``copy_for_bundle``."""

    def __init__(self, pickler: Any, copy_for_bundle: Any) -> None:
        self._pickler = pickler
        self.roundtrip = copy_for_bundle

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pickler, name)


class _LargerPulls:
    """Beam's subscriber client, gathering up to ``max_messages`` where Beam pulls 10, and waiting at most a second."""

    def __init__(self, client: Any, max_messages: int) -> None:
        self._client = client
        self._max_messages = max_messages

    def pull(self, *, subscription: str, max_messages: int, timeout: float) -> Any:
        from google.pubsub_v1 import PullResponse

        gathered = pull_gathered(
            self._client,
            subscription,
            max_messages=self._max_messages,
            wait_s=min(timeout, PULL_WAIT_S),
            gather_s=GATHER_S,
        )
        return PullResponse(received_messages=gathered)

    def acknowledge(self, *, subscription: str, ack_ids: list[str]) -> None:
        self._client.acknowledge(subscription=subscription, ack_ids=ack_ids)
