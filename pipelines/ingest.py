"""The ingestion pipeline: messages in, lake files out.

    messages | Decode | Validate | StitchIdentities | lake rows (records, failures, identity changes) | WriteToLake
                                                    + MergeProfiles (records and identity changes) → profile store
                                  failures          + PublishFailedRecords → dead-letter topic (when one is set)

:class:`Ingest` is that sentence as one composite transform; :func:`run` builds it on a source (a replay, or a
Pub/Sub subscription), runs it on the chosen runner and returns the run summary (:mod:`pipelines.summary`). With a
suppression list to check (:mod:`privacy.suppression`), StitchIdentities drops the records of suppressed identities
before the stores and the lake.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import dataclasses
import functools
import gc
import itertools
import multiprocessing
import sys
import threading
from collections.abc import Iterator, Mapping

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from lake.rows import change_row, failed_row, lake_schemas, valid_row
from messages.replay_files import EVERY_MESSAGE, Share
from pipelines import metrics_file
from pipelines.config import Config
from pipelines.direct_runner_patches import patched_direct_runner
from pipelines.flink import FLINK_RUNNER, flink_runner_args
from pipelines.local_runner import disable_prism_splits
from pipelines.runners import RunnerCapabilities, run_capabilities
from pipelines.summary import RunSummary, counters, summary_of
from privacy.suppression import Suppression
from schemas.arrow import table_from_rows
from schemas.registry import SchemaRegistry
from stores.opening import identity_store_handler, profile_store_handler
from transforms.dead_letter import PublishFailedRecords
from transforms.decode import Decode
from transforms.lake import WriteToLake
from transforms.merge_profiles import MergeProfiles, ProfileWriterHandler
from transforms.pubsub import ReadPubSub
from transforms.pubsub_source import ReadPubSubAcknowledged
from transforms.replay import ReadReplay
from transforms.shared_registry import SharedRegistry
from transforms.stitch import StitchIdentities
from transforms.validate import Validate

LOCAL_STREAMING_RUNNER = "BundleBasedDirectRunner"
LOCAL_BATCH_RUNNER = "FnApiRunner"


@dataclasses.dataclass(frozen=True)
class RunRequest:
    """What ``profilestream run`` was asked to do, checked and resolved: a replay path or a subscription to read;
    ``suppression``, the suppression list stitching checks, when there is one to check; ``metrics_file``, where the
    run's summary is written as it goes (:mod:`pipelines.metrics_file`)."""

    replay_path: str | None
    lake_dir: str
    identity_store: str
    profile_store: str
    batch: bool = False
    runner: str | None = None
    beam_args: tuple[str, ...] = ()
    subscription: str | None = None
    dead_letter_topic: str | None = None
    workers: int = 1
    share: Share = EVERY_MESSAGE
    suppression: Suppression | None = None
    metrics_file: str | None = None


class Ingest(beam.PTransform):
    """``PCollection[Message]`` in; ``PCollection[LakeFile]``, the lake files committed, out. With ``suppression``,
    stitching drops the records of suppressed identities (:class:`~transforms.stitch.StitchIdentities`)."""

    def __init__(
        self,
        registry: SchemaRegistry,
        config: Config,
        lake_dir: str,
        identity_store: str,
        profile_store: str,
        *,
        dead_letter_topic: str | None = None,
        suppression: Suppression | None = None,
    ) -> None:
        super().__init__()
        self._registry = registry
        self._config = config
        self._lake_dir = lake_dir
        self._identity_store = identity_store
        self._profile_store = profile_store
        self._dead_letter_topic = dead_letter_topic
        self._suppression = suppression

    def expand(self, messages: beam.PCollection) -> beam.PCollection:
        policy = self._config.validation_policy()
        registry = SharedRegistry(self._registry)
        identities = identity_store_handler(self._identity_store)
        decoded = messages | "Decode" >> Decode(
            registry.avro_schema_for,
            max_message_bytes=self._config.max_message_bytes,
            max_batch_entries=self._config.max_batch_entries,
            publish_time_skew_us=policy.timestamp_skew_us,
        )
        validated = decoded.entities | "Validate" >> Validate(registry, policy=policy)
        stitching = self._config.stitch_settings()
        stitched = validated.valid | "StitchIdentities" >> StitchIdentities(
            registry, identities, stitching, suppression=self._suppression
        )
        writers = ProfileWriterHandler(
            registry,
            identities,
            profile_store_handler(self._profile_store),
            stitching,
            self._config.profile_settings(),
        )
        _ = (stitched.records, stitched.changes) | "MergeProfiles" >> MergeProfiles(writers)
        valid_rows = stitched.records | "RecordRows" >> beam.Map(valid_row)
        change_rows = stitched.changes | "ChangeRows" >> beam.Map(
            lambda change, at=beam.DoFn.TimestampParam: change_row(change, at.micros)
        )
        failed = (decoded.failed, validated.failed) | "Failures" >> beam.Flatten()
        if self._dead_letter_topic is not None:
            _ = failed | "DeadLetter" >> PublishFailedRecords(self._dead_letter_topic)
        failed_rows = failed | "FailedRows" >> beam.Map(failed_row)
        return (valid_rows, failed_rows, change_rows) | "WriteLake" >> WriteToLake(
            self._lake_dir,
            lake_schemas(self._registry),
            commit_interval_s=self._config.commit_interval_seconds,
            table_builder=table_from_rows,
        )


def pipeline_options(request: RunRequest) -> PipelineOptions:
    """Beam options for a run: the local streaming runner by default, FnApiRunner for ``--batch``; FlinkRunner
    submits to the cluster ``make flink-up`` started, unless the Beam options say otherwise; Prism never splits a
    bundle in progress (:func:`pipelines.local_runner.disable_prism_splits`)."""
    beam_args = list(request.beam_args)
    if request.runner == FLINK_RUNNER:
        beam_args = flink_runner_args(beam_args)
    options = PipelineOptions(beam_args)
    standard = options.view_as(StandardOptions)
    standard.runner = request.runner or (LOCAL_BATCH_RUNNER if request.batch else LOCAL_STREAMING_RUNNER)
    standard.streaming = not request.batch
    disable_prism_splits(options)
    return options


def run(
    request: RunRequest, registry: SchemaRegistry, config: Config, *, stop: threading.Event | None = None
) -> RunSummary:
    """Runs the pipeline to its end and returns what it counted.

    A replay ends when it is drained; a Pub/Sub read when ``stop`` is set (``profilestream run`` sets it on SIGINT and
    SIGTERM), after which the pipeline flushes what it holds and finishes as a replay does.
    """
    if request.batch and request.runner is None and request.workers > 1:
        summary = _run_in_worker_processes(request, registry, config)
    else:
        summary = _summary(request, registry, _counters_of_run(request, registry, config, stop))
    metrics_file.write_final(request.metrics_file, summary)
    return summary


def _summary(request: RunRequest, registry: SchemaRegistry, values: Mapping[str, int]) -> RunSummary:
    return summary_of(
        values, datasets=list(lake_schemas(registry)), suppression_checked=request.suppression is not None
    )


def _counters_of_run(
    request: RunRequest, registry: SchemaRegistry, config: Config, stop: threading.Event | None = None
) -> dict[str, int]:
    stop = stop or threading.Event()
    options = pipeline_options(request)
    runner = run_capabilities(options)
    pipeline = beam.Pipeline(options=options)
    if request.subscription is not None:
        if not (runner.beam_pubsub_read or runner.workers_in_this_process):
            _say_when_stopped_in_vain(stop)
        messages = pipeline | "ReadPubSub" >> pubsub_source(runner, request.subscription, stop)
    else:
        messages = pipeline | "ReadReplay" >> ReadReplay(
            request.replay_path,
            max_message_bytes=config.max_message_bytes,
            publish_time_skew_us=config.validation_policy().timestamp_skew_us,
            share=request.share,
        )
    _ = messages | "Ingest" >> Ingest(
        registry,
        config,
        request.lake_dir,
        request.identity_store,
        request.profile_store,
        dead_letter_topic=request.dead_letter_topic,
        suppression=request.suppression,
    )
    with tuned_garbage_collection(), patched_direct_runner(stop) if runner.direct_runner else contextlib.nullcontext():
        result = pipeline.run()
        # Read while running only on the DirectRunner classes: other runners' results keep the first metrics read.
        snapshots_to = request.metrics_file if runner.direct_runner else None
        summarise = functools.partial(_summary, request, registry)
        with metrics_file.live_snapshots(snapshots_to, functools.partial(counters, result), summarise):
            result.wait_until_finish()
    return counters(result)


# Collect the youngest objects after 20,000 allocations rather than 700, and the older ones 20 times more rarely: a run
# allocates and drops some hundred containers per message, and the default thresholds spent about 13% of a --batch
# run's CPU in collections (2.5 s of 19.5 over 37,500 messages; 0.6 s with these).
RUN_GC_THRESHOLDS = (20_000, 20, 20)


@contextlib.contextmanager
def tuned_garbage_collection() -> Iterator[None]:
    """Leaves the objects alive on entry (Beam's modules, the schema registry, the pipeline: some 180,000) out of the
    garbage collections inside, and collects less often (:data:`RUN_GC_THRESHOLDS`). The objects outlive the run, yet
    each full collection walked them all: about 50 µs of CPU per message of the reference loop, 20-25 µs with them
    frozen. On exit they are collected as before, at the thresholds found on entry, so that a process that runs many
    pipelines (a test session) keeps none of them for good."""
    thresholds = gc.get_threshold()
    gc.collect()
    gc.freeze()
    gc.set_threshold(*RUN_GC_THRESHOLDS)
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()


def _run_in_worker_processes(request: RunRequest, registry: SchemaRegistry, config: Config) -> RunSummary:
    """A local ``--batch`` replay on ``request.workers`` processes, each running the whole pipeline on FnApiRunner in
    one process over its share of every file's messages (every commit window's, so that the lake keeps the copy of a
    duplicate published first, as one process does), into the same stores and lake (each takes concurrent writers);
    the summary is that of their counters added up.

    Why processes of their own rather than FnApiRunner's multi-process mode:
    docs/decisions/0032-batch-workers-are-pipelines-of-their-own.md.
    """
    window_us = config.commit_interval_seconds * 1_000_000
    shares = [
        dataclasses.replace(request, workers=1, share=Share(index, request.workers, window_us), metrics_file=None)
        for index in range(request.workers)
    ]
    # A fresh interpreter for each: a fork would copy this process's threads and locks mid-use.
    with concurrent.futures.ProcessPoolExecutor(len(shares), mp_context=multiprocessing.get_context("spawn")) as pool:
        counted = list(pool.map(_counters_of_run, shares, itertools.repeat(registry), itertools.repeat(config)))
    return _summary(request, registry, sum(map(collections.Counter, counted), collections.Counter()))


def _say_when_stopped_in_vain(stop: threading.Event) -> None:
    def say() -> None:
        stop.wait()
        print(
            "profilestream: the Pub/Sub read runs in workers outside this process, which the signal does not reach: "
            "stop the job with the runner (on Flink, stop with a savepoint), or signal again to stop waiting for it",
            file=sys.stderr,
            flush=True,
        )

    threading.Thread(target=say, name="stop-notice", daemon=True).start()


def pubsub_source(runner: RunnerCapabilities, subscription: str, stop: threading.Event) -> beam.PTransform:
    """Beam's own Pub/Sub read on the runners that run it (on the DirectRunner ``stop`` ends it through
    :func:`pipelines.direct_runner_patches.stoppable_pubsub_reads`); on every other runner (Prism, Flink, any portable
    runner) :class:`ReadPubSubAcknowledged`, which acknowledges on bundle finalisation, given ``stop`` where the
    workers run in this process, the only place an event set here reaches."""
    if runner.beam_pubsub_read:
        return ReadPubSub(subscription)
    return ReadPubSubAcknowledged(subscription, stop=stop if runner.workers_in_this_process else None)
