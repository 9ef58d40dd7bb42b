"""Local runners: corrections to Beam's BundleBasedDirectRunner for ``profilestream run``, where Prism is, and the
one experiment every run on Prism gets.

Every bundle's metrics
----------------------

Beam's DirectRunner (2.77) runs bundles on worker threads, each of which keeps one state sampler for its whole life.
The sampler caches, per step, the scoped state made for the step's first bundle on that thread, and that state holds
the first bundle's metrics container. Every later bundle of the step on the thread counts into that container, which
was committed already and is never read again: its counts are lost. A replay arrives in few bundles and hardly
notices; a Pub/Sub read arrives in many small ones, and timer firings are bundles of their own, so the profile
counters (counted when a timer flushes) would read zero.

:func:`metrics_of_every_bundle` gives each bundle a state sampler of its own while it is in effect, so each bundle's
metrics land in the container the runner commits. ``tests/pipelines/test_local_runner.py`` checks that Beam still
needs it: when that test fails after a Beam upgrade, the correction can go.

A Pub/Sub read that stops
-------------------------
Beam's Pub/Sub read on this runner never ends and holds the watermark at the clock, so a run can only be cancelled,
and whatever the pipeline still buffered (profile flushes due in a second, lake files due in minutes) is lost with it,
although the messages were acknowledged when pulled. While :func:`stoppable_pubsub_reads` is in effect, setting its
``stop`` event ends every Pub/Sub read: it pulls no more, and its watermark goes to the end of time, so every timer
fires, every buffer is flushed, and the run finishes as a replay does, with its summary. It also pulls up to
``max_messages`` at a time instead of Beam's 10, which caps the read near 900 messages/s, and, while messages keep
coming, gathers pulls for up to :data:`GATHER_S` into one bundle: on a steady stream a pull holds the few messages
published since the last one, and every bundle costs each step of the pipeline its fixed overhead on this runner
(the DoFn is pickled and unpickled per bundle), which at a bundle of one or two messages capped a run near 200
messages/s.

Prism's bundle splits
---------------------
Prism (2.77) splits a bundle that makes no progress for a while, stateful stages' bundles too, and hands the keys of
the split-off elements to a new bundle while the first still runs with its own copy of their state: the bundle that
finishes last overwrites what the other wrote, and elements vanish from state (``docs/prism-split-state-loss.md``).
:func:`disable_prism_splits` turns the splits off on Prism; ``tests/pipelines/test_prism_split.py`` shows the state
whole with it. :func:`runner_name` is the one spelling of a runner's name this project compares.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from apache_beam.options.pipeline_options import DebugOptions, PipelineOptions, StandardOptions
from apache_beam.runners.direct import executor, transform_evaluator
from apache_beam.runners.direct.util import TransformResult
from apache_beam.runners.worker import statesampler
from apache_beam.utils import counters
from apache_beam.utils.timestamp import MAX_TIMESTAMP
from apache_beam.version import __version__ as beam_version

from transforms.pubsub import pull_gathered

PRISM_ENV = "PRISM"
# Prism's experiment that stops it splitting bundles in progress (see the module docstring).
PRISM_NO_SPLIT_EXPERIMENT = "prism_disable_sdf_split"
DEFAULT_PULL_MESSAGES = 1000
# Beam waits up to 30 s for a pull, and a stop waits for the pull in progress.
PULL_WAIT_S = 1.0
# How long a read gathers pulls into one bundle while messages keep coming.
GATHER_S = 0.2


def prism_binary() -> Path:
    """Where ``make prism`` puts Prism, Beam's Go runner, for the installed Beam (``$PRISM`` overrides it); it may be
    missing. Pass it to a run as ``--prism_location``: Beam would otherwise download it at run time."""
    default = Path.home() / ".cache" / "profilestream" / "prism" / f"v{beam_version}" / "prism"
    return Path(os.environ.get(PRISM_ENV, default))


def runner_name(runner: str) -> str:
    """A runner's name in one spelling: Beam's names are case-blind and may leave out "Runner" or give the class's
    module path, so ``PrismRunner``, ``prism`` and ``apache_beam.runners.portability.prism_runner.PrismRunner`` are
    all ``prism``."""
    return runner.rsplit(".", 1)[-1].lower().removesuffix("runner")


def runs_on_prism(options: PipelineOptions) -> bool:
    """Whether ``options`` name Prism as the runner."""
    return runner_name(options.view_as(StandardOptions).runner or "") == "prism"


def disable_prism_splits(options: PipelineOptions) -> None:
    """On Prism, adds the experiment that keeps Prism from splitting bundles in progress, which loses stateful
    DoFns' state (see the module docstring); other runners' options are left as they are."""
    if runs_on_prism(options):
        options.view_as(DebugOptions).add_experiment(PRISM_NO_SPLIT_EXPERIMENT)


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


@contextlib.contextmanager
def stoppable_pubsub_reads(stop: threading.Event, *, max_messages: int = DEFAULT_PULL_MESSAGES) -> Iterator[None]:
    """While in effect, ``stop.set()`` ends the DirectRunner's Pub/Sub reads (see the module docstring)."""
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
