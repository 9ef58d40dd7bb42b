"""``profilestream run``: the flags checked (each failure one line), the pipeline run, its summary printed."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import FlinkRunnerOptions, PipelineOptions

from lake.folders import LakeFolderError, refuse_linked_folders
from messages.pubsub import PubSubUnavailableError, check_subscription, check_topic
from messages.replay_files import ReplayPathError, expand_replay_path
from pipelines.flink import FLINK_RUNNER, JOB_SERVER_ARTIFACT, flink_runner_args
from pipelines.ingest import RunRequest, run
from pipelines.usage import (
    PUBSUB_NAME,
    UsageError,
    config_and_registry,
    opened_identity_store,
    opened_profile_store,
    shown,
)
from privacy.jobs import privacy_store_path
from privacy.keys import PRIVACY_KEY_ENV, privacy_key
from privacy.suppression import Suppression, SuppressionList
from stores.errors import StoreUnavailableError
from transforms.lake import is_local

REPLAY_SCHEME = "replay:"
PUBSUB_SCHEME = "pubsub:"
FLINK_CHECK_TIMEOUT_S = 5.0


def run_command(args: argparse.Namespace, beam_args: list[str]) -> int:
    """``profilestream run``: runs the pipeline, then prints its summary as one JSON line."""
    config, registry = config_and_registry(args, {"commit_interval_seconds": args.commit_interval_seconds})
    # Fail now, in one line, rather than inside a worker.
    opened_identity_store(args.identity_store).close()
    opened_profile_store(args.profile_store).close()
    suppression = _suppression(args.privacy_store, args.key_file)
    if args.runner == FLINK_RUNNER:
        _check_flink(beam_args)
    subscription = _subscription(args.source)
    if subscription is not None and args.batch:
        raise UsageError("--batch reads a replay to its end; a pubsub: source has no end")
    if args.workers is not None and not (args.batch and args.runner is None):
        raise UsageError("--workers sets the worker processes of a --batch run on the local runner")
    if subscription is not None or args.dead_letter_topic is not None:
        try:
            if subscription is not None:
                check_subscription(subscription)
            if args.dead_letter_topic is not None:
                check_topic(args.dead_letter_topic)
        except PubSubUnavailableError as error:
            raise UsageError(str(error)) from None
    request = RunRequest(
        replay_path=None if subscription is not None else _replay_path(args.source),
        lake_dir=_writable_lake(args.lake),
        identity_store=args.identity_store,
        profile_store=args.profile_store,
        batch=args.batch,
        runner=args.runner,
        workers=_workers(args),
        beam_args=tuple(beam_args),
        subscription=subscription,
        dead_letter_topic=args.dead_letter_topic,
        suppression=suppression,
        metrics_file=_metrics_file(args.metrics_file),
    )
    stop = threading.Event()
    with _stopped_by_signals(stop):
        summary = run(request, registry, config, stop=stop)
    print(json.dumps(summary.as_json(), sort_keys=False), flush=True)
    return 0


def _metrics_file(path: str | None) -> str | None:
    """The metrics file ``--metrics-file`` names, in a folder that exists and can be written: the file is replaced
    whole at each write, by a new one made beside it."""
    if path is not None and not os.access(os.path.dirname(os.path.abspath(path)), os.W_OK | os.X_OK):
        raise UsageError(f"--metrics-file {shown(path)}: its folder does not exist or cannot be written")
    return path


def _suppression(privacy_store: str, key_file: str | None) -> Suppression | None:
    """The suppression list the run checks: the privacy store's, when it holds a hash (the run then needs the privacy
    key) or when the run has the key (a delete with suppress may start the list while the run goes on). None when
    there is nothing to check and no key: the run costs what it did."""
    try:
        path = privacy_store_path(privacy_store)
        suppression_list = SuppressionList(path)
        try:
            suppressed = suppression_list.hashes()
        finally:
            suppression_list.close()
    except (ValueError, StoreUnavailableError) as error:
        raise UsageError(str(error)) from None
    if not suppressed and key_file is None and not os.environ.get(PRIVACY_KEY_ENV, "").strip():
        return None
    try:
        key = privacy_key(key_file, os.environ)
    except ValueError as error:
        raise UsageError(
            f"privacy store {path} has a suppression list, which the run checks with the key: {error}"
        ) from None
    return Suppression(path, key)


def _workers(args: argparse.Namespace) -> int:
    """The worker processes asked for, else one per core this process may run on for a local ``--batch`` run
    (docs/decisions/0032-batch-workers-are-pipelines-of-their-own.md), else one."""
    if args.workers is not None:
        return args.workers
    return _cores() if args.batch and args.runner is None else 1


def _cores() -> int:
    # The affinity mask, where the system has one (Linux), so that a run confined by taskset or a container's cpuset
    # starts no more processes than it may run at once.
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _check_flink(beam_args: list[str]) -> None:
    """Fails in one line when the Flink cluster does not answer or Beam's Flink job server jar is missing; Beam
    would otherwise wait on the cluster, or try to download the jar."""
    flink = PipelineOptions(flink_runner_args(beam_args)).view_as(FlinkRunnerOptions)
    if flink.flink_master not in ("[local]", "[auto]"):
        try:
            urllib.request.urlopen(f"http://{flink.flink_master}/overview", timeout=FLINK_CHECK_TIMEOUT_S).close()
        except OSError as error:
            raise UsageError(f"no Flink cluster answers at {flink.flink_master} (make flink-up): {error}") from None
    jar = flink.flink_job_server_jar
    if "://" not in jar and not Path(jar).is_file():
        raise UsageError(f"no Flink job server jar at {jar}: make flink-up fetches {JOB_SERVER_ARTIFACT} with Maven")


def _replay_path(source: str) -> str:
    if source.startswith(REPLAY_SCHEME):
        path = source.removeprefix(REPLAY_SCHEME)
        try:
            expand_replay_path(path)
        except ReplayPathError as error:
            raise UsageError(str(error)) from None
        return path
    scheme = source.partition(":")[0] if ":" in source else source
    raise UsageError(f"unknown source {scheme!r}: expected replay:PATH or pubsub:projects/P/subscriptions/S")


def _subscription(source: str) -> str | None:
    """The subscription a ``pubsub:`` source names; None for any other source."""
    if not source.startswith(PUBSUB_SCHEME):
        return None
    name = source.removeprefix(PUBSUB_SCHEME)
    if not PUBSUB_NAME.fullmatch(name) or name.split("/")[2] != "subscriptions":
        raise UsageError(f"source {source!r}: expected pubsub:projects/PROJECT/subscriptions/SUBSCRIPTION")
    return name


@contextlib.contextmanager
def _stopped_by_signals(stop: threading.Event) -> Iterator[None]:
    """SIGINT and SIGTERM set ``stop`` (the run then flushes and ends); a second one interrupts at once."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_signal(number: int, _frame: Any) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        print(
            f"profilestream: {signal.Signals(number).name}: stopping the read and flushing (again to abandon)",
            file=sys.stderr,
            flush=True,
        )

    before = {number: signal.signal(number, on_signal) for number in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for number, handler in before.items():
            signal.signal(number, handler)


def _writable_lake(path: str) -> str:
    """The lake ``--lake`` names: a local folder made if need be and writable, or a location on an object store
    Beam reaches (``gs://bucket/path``); anything else is a usage error."""
    if is_local(path):
        directory = _writable_directory(path)
        try:
            refuse_linked_folders(directory)
        except LakeFolderError as error:
            raise UsageError(str(error)) from None
        return directory
    try:
        FileSystems.match([FileSystems.join(path, "*")])
    except Exception as error:  # Beam's filesystems raise whatever their clients raise
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UsageError(f"lake {path} cannot be reached: {reason}") from None
    return path


def _writable_directory(path: str) -> str:
    directory = Path(path)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UsageError(f"lake directory {path} cannot be created: {error.strerror}") from None
    if not os.access(directory, os.W_OK | os.X_OK):
        raise UsageError(f"lake directory {path} is not writable")
    return str(directory)
