"""The corrections of Beam's DirectRunner: each does what it says, Beam still needs each (the canaries), and a run
gets them only on the runner they correct."""

from __future__ import annotations

import threading
from pathlib import Path
from types import SimpleNamespace

import apache_beam as beam
import pytest
from apache_beam.coders import VarIntCoder
from apache_beam.metrics import Metrics
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.runners import common
from apache_beam.runners.direct import executor, transform_evaluator
from apache_beam.testing.test_stream import TestStream
from apache_beam.transforms import userstate
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec, TimerSpec, on_timer
from apache_beam.utils.timestamp import MAX_TIMESTAMP

from pipelines.config import Config
from pipelines.direct_runner_patches import (
    DEFAULT_PULL_MESSAGES,
    dofn_specs_read_once,
    dofns_kept_across_bundles,
    metrics_of_every_bundle,
    stoppable_pubsub_reads,
)
from pipelines.ingest import RunRequest, run
from schemas.registry import SchemaRegistry

BUNDLES = 5
PER_BUNDLE = 4


class _CountInProcessAndTimer(beam.DoFn):
    """Counts each element when it arrives, and again when its key's watermark timer fires."""

    AT_END = TimerSpec("at_end", TimeDomain.WATERMARK)

    def __init__(self) -> None:
        self._processed = Metrics.counter("test", "processed")
        self._fired = Metrics.counter("test", "fired")

    def process(self, keyed, at_end=beam.DoFn.TimerParam(AT_END), timestamp=beam.DoFn.TimestampParam):
        self._processed.inc()
        at_end.set(timestamp + 1)

    @on_timer(AT_END)
    def on_end(self):
        self._fired.inc()


def counted_in_streaming_run() -> dict[str, int]:
    """Runs elements in several bundles on the local streaming runner; returns the counters the result reports."""
    stream = TestStream()
    for bundle in range(BUNDLES):
        stream = stream.add_elements(
            [beam.window.TimestampedValue((f"key-{bundle}-{n}", n), bundle * 10) for n in range(PER_BUNDLE)]
        ).advance_watermark_to(bundle * 10 + 5)
    stream = stream.advance_watermark_to_infinity()
    options = PipelineOptions()
    options.view_as(StandardOptions).streaming = True
    options.view_as(StandardOptions).runner = "BundleBasedDirectRunner"
    pipeline = beam.Pipeline(options=options)
    _ = pipeline | stream | beam.ParDo(_CountInProcessAndTimer())
    result = pipeline.run()
    result.wait_until_finish()
    found = result.metrics().query(MetricsFilter().with_namespace("test"))["counters"]
    return {counter.key.metric.name: counter.committed for counter in found}


def test_every_bundle_and_timer_firing_is_counted():
    with metrics_of_every_bundle():
        counted = counted_in_streaming_run()

    assert counted == {"processed": BUNDLES * PER_BUNDLE, "fired": BUNDLES * PER_BUNDLE}


def test_beam_still_loses_counts_without_the_correction():
    # When this fails after a Beam upgrade, Beam counts every bundle itself and metrics_of_every_bundle can go.
    counted = counted_in_streaming_run()

    assert counted.get("processed", 0) + counted.get("fired", 0) < 2 * BUNDLES * PER_BUNDLE


def test_the_runner_is_restored_afterwards():
    before = executor.TransformExecutor.call
    with metrics_of_every_bundle():
        assert executor.TransformExecutor.call is not before
    assert executor.TransformExecutor.call is before


class _RecordingSubscriber:
    """A subscriber client with nothing to deliver, which records each pull's (max_messages, timeout)."""

    def __init__(self) -> None:
        self.pulls: list[tuple[int, float]] = []

    def pull(self, *, subscription: str, max_messages: int, timeout: float) -> SimpleNamespace:
        self.pulls.append((max_messages, timeout))
        return SimpleNamespace(received_messages=[])

    def acknowledge(self, *, subscription: str, ack_ids: list[str]) -> None:
        raise AssertionError("nothing was delivered")


@pytest.fixture
def beam_pubsub_read(monkeypatch) -> tuple[transform_evaluator._PubSubReadEvaluator, _RecordingSubscriber]:
    """Beam's DirectRunner evaluator of a Pub/Sub read, made without a pipeline, pulling from a recording client."""
    subscriber = _RecordingSubscriber()
    evaluator_class = transform_evaluator._PubSubReadEvaluator
    monkeypatch.setattr(
        evaluator_class, "_get_subscriber_client_state_unlocked", classmethod(lambda _cls, _t: subscriber_state)
    )
    subscriber_state = SimpleNamespace(client=subscriber)
    read = evaluator_class.__new__(evaluator_class)
    read._applied_ptransform = SimpleNamespace(transform=SimpleNamespace(pipeline=None), inputs=())
    read._evaluation_context = SimpleNamespace(create_bundle=lambda _pvalue: "the read again")
    read._execution_context = SimpleNamespace(get_step_context=lambda: SimpleNamespace(partial_keyed_state=None))
    read._sub_name = "projects/p/subscriptions/s"
    read.source = SimpleNamespace(timestamp_attribute=None)
    return read, subscriber


def test_beam_still_pulls_ten_messages_at_a_time(beam_pubsub_read):
    # When this fails after a Beam upgrade, revisit _LargerPulls: Beam's read no longer pulls 10 waiting up to 30 s.
    read, subscriber = beam_pubsub_read

    read.finish_bundle()

    assert subscriber.pulls == [(10, 30)]


def test_the_read_pulls_up_to_a_thousand_at_a_time_while_patched(beam_pubsub_read):
    read, subscriber = beam_pubsub_read

    with stoppable_pubsub_reads(threading.Event()):
        read.finish_bundle()

    assert subscriber.pulls == [(DEFAULT_PULL_MESSAGES, 1.0)]


def test_beam_still_never_ends_its_pubsub_read(beam_pubsub_read):
    # When this fails after a Beam upgrade, Beam's read can end on its own: revisit stoppable_pubsub_reads.
    read, _ = beam_pubsub_read

    result = read.finish_bundle()

    assert result.unprocessed_bundles == ["the read again"]
    assert result.keyed_watermark_holds[None] < MAX_TIMESTAMP


def test_a_stopped_read_ends_and_releases_the_watermark_while_patched(beam_pubsub_read):
    read, subscriber = beam_pubsub_read
    stop = threading.Event()
    stop.set()

    with stoppable_pubsub_reads(stop):
        result = read.finish_bundle()

    assert (result.uncommitted_output_bundles, result.unprocessed_bundles, subscriber.pulls) == ([], [], [])
    assert result.keyed_watermark_holds == {None: MAX_TIMESTAMP}


BEAM_METHOD_WRAPPER = common.MethodWrapper
BEAM_GET_DOFN_SPECS = userstate.get_dofn_specs


class _Stateful(beam.DoFn):
    COUNT = ReadModifyWriteStateSpec("count", VarIntCoder())
    DUE = TimerSpec("due", TimeDomain.WATERMARK)

    def process(self, element, count=beam.DoFn.StateParam(COUNT), due=beam.DoFn.TimerParam(DUE)):
        yield element


def test_beam_still_inspects_a_dofn_at_every_call(monkeypatch):
    inspected = []
    monkeypatch.setattr(common, "MethodWrapper", lambda *args: inspected.append(args) or BEAM_METHOD_WRAPPER(*args))

    userstate.get_dofn_specs(_Stateful())
    first = len(inspected)
    userstate.get_dofn_specs(_Stateful())

    assert len(inspected) == 2 * first > 0


def test_the_specs_of_a_dofn_class_are_read_once_while_patched(monkeypatch):
    inspected = []
    monkeypatch.setattr(common, "MethodWrapper", lambda *args: inspected.append(args) or BEAM_METHOD_WRAPPER(*args))
    userstate.get_dofn_specs(_Stateful())
    once = len(inspected)
    inspected.clear()

    with dofn_specs_read_once():
        specs = [userstate.get_dofn_specs(_Stateful()) for _ in range(3)]
        mapped = [transform_evaluator.get_dofn_specs(beam.Map(len).dofn) for _ in range(2)]

    assert specs == [({_Stateful.COUNT}, {_Stateful.DUE})] * 3
    assert len([args for args in inspected if isinstance(args[0], _Stateful)]) == once
    assert mapped == [(set(), set())] * 2
    assert userstate.get_dofn_specs is transform_evaluator.get_dofn_specs is BEAM_GET_DOFN_SPECS


# Every DoFn copy's lifecycle, as ("setup" | "bundle" | "teardown", id of the copy); copies are made by pickling.
LIFECYCLE: list[tuple[str, int]] = []


class _TellLifecycle(beam.DoFn):
    def setup(self) -> None:
        LIFECYCLE.append(("setup", id(self)))

    def start_bundle(self) -> None:
        LIFECYCLE.append(("bundle", id(self)))

    def process(self, element):
        yield element

    def teardown(self) -> None:
        LIFECYCLE.append(("teardown", id(self)))


def lifecycle_of_streaming_run() -> list[tuple[str, int]]:
    LIFECYCLE.clear()
    stream = TestStream()
    for bundle in range(BUNDLES):
        stream = stream.add_elements([beam.window.TimestampedValue(bundle, bundle * 10)]).advance_watermark_to(
            bundle * 10 + 5
        )
    options = PipelineOptions(streaming=True, runner="BundleBasedDirectRunner")
    with beam.Pipeline(options=options) as pipeline:
        _ = pipeline | stream.advance_watermark_to_infinity() | beam.ParDo(_TellLifecycle())
    return list(LIFECYCLE)


def test_beam_still_sets_up_and_tears_down_a_dofn_for_every_bundle():
    # When this fails after a Beam upgrade, the DirectRunner keeps its DoFns and dofns_kept_across_bundles can go.
    lifecycle = lifecycle_of_streaming_run()

    bundles = sum(1 for event, _ in lifecycle if event == "bundle")
    assert bundles >= BUNDLES
    assert sum(1 for event, _ in lifecycle if event == "setup") == bundles


def test_a_dofn_is_set_up_once_and_kept_for_later_bundles_while_patched():
    with dofns_kept_across_bundles():
        during_run = lifecycle_of_streaming_run()
    lifecycle = list(LIFECYCLE)

    assert not any(event == "teardown" for event, _ in during_run)
    bundles = [copy for event, copy in lifecycle if event == "bundle"]
    set_up = [copy for event, copy in lifecycle if event == "setup"]
    torn_down = [copy for event, copy in lifecycle if event == "teardown"]
    assert len(bundles) >= BUNDLES
    # Bundles run on several threads, a copy serving one at a time: a copy at most per thread, not one per bundle.
    assert len(set_up) < len(bundles) and set(bundles) == set(set_up)
    assert sorted(torn_down) == sorted(set_up)
    assert lifecycle[-len(torn_down) :] == [("teardown", copy) for copy in torn_down]  # once the run is over


def test_the_dofn_runner_is_restored_afterwards():
    before = (transform_evaluator.DoFnRunner, transform_evaluator.pickler)
    with dofns_kept_across_bundles():
        assert transform_evaluator.DoFnRunner is not before[0]
    assert (transform_evaluator.DoFnRunner, transform_evaluator.pickler) == before


def test_beams_pubsub_read_is_restored_afterwards():
    evaluator_class = transform_evaluator._PubSubReadEvaluator
    before = (evaluator_class.finish_bundle, evaluator_class._get_subscriber_client)
    with stoppable_pubsub_reads(threading.Event()):
        assert evaluator_class.finish_bundle != before[0]
    assert (evaluator_class.finish_bundle, evaluator_class._get_subscriber_client) == before


def beam_classes() -> tuple:
    """What the corrections patch, as it stands now."""
    evaluator_class = transform_evaluator._PubSubReadEvaluator
    return (
        executor.TransformExecutor.call,
        evaluator_class.finish_bundle,
        evaluator_class._get_subscriber_client,
        userstate.get_dofn_specs,
        transform_evaluator.DoFnRunner,
        transform_evaluator.pickler,
    )


def classes_during_run(monkeypatch, tmp_path: Path, stream: Path, *, batch: bool) -> list[tuple]:
    """What the corrections patch, as it stood each time a pipeline started while ``profilestream run`` ran a replay
    (batch: on FnApiRunner)."""
    during = []
    beam_run = beam.Pipeline.run

    def run_and_look(pipeline, *args, **kwargs):
        during.append(beam_classes())
        return beam_run(pipeline, *args, **kwargs)

    monkeypatch.setattr(beam.Pipeline, "run", run_and_look)
    lake = tmp_path / "lake"
    request = RunRequest(
        str(stream),
        str(lake),
        f"sqlite:///{tmp_path}/identity.sqlite",
        f"sqlite:///{tmp_path}/profiles.sqlite",
        batch=batch,
    )
    run(request, SchemaRegistry.load(), Config())
    assert during
    return during


def test_a_run_on_another_runner_leaves_beams_classes_untouched(monkeypatch, tmp_path, small_stream):
    before = beam_classes()

    assert all(found == before for found in classes_during_run(monkeypatch, tmp_path, small_stream, batch=True))


def test_a_run_on_the_direct_runner_is_corrected_while_it_runs(monkeypatch, tmp_path, small_stream):
    before = beam_classes()

    during = classes_during_run(monkeypatch, tmp_path, small_stream, batch=False)

    assert all(now != then for found in during for now, then in zip(found, before, strict=True))
    assert beam_classes() == before
