"""What each runner can do, as far as a run's choices depend on it: one row per runner, keyed by :func:`runner_name`,
and :data:`PORTABLE` for every runner the table does not name. The pipeline layer chooses by these facts (which
Pub/Sub read, whether a stop reaches it, which corrections of Beam apply), never by a runner's name.

    runner = run_capabilities(options)
    read = ReadPubSub(subscription) if runner.beam_pubsub_read else ReadPubSubAcknowledged(subscription)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from apache_beam.options.pipeline_options import PipelineOptions, PortableOptions, StandardOptions

LOOPBACK = "LOOPBACK"


@dataclasses.dataclass(frozen=True)
class RunnerCapabilities:
    """Facts about a runner (Beam 2.77), each a reason for one choice of the pipeline layer.

    ``beam_pubsub_read``: Beam's own Pub/Sub read runs on it (apache/beam#27443); elsewhere the read is
    :class:`transforms.pubsub_source.ReadPubSubAcknowledged`.
    ``workers_in_this_process``: its default environment runs the SDK workers in the process that launched the run,
    where a stop event set by that process reaches them (``--environment_type`` overrides it: see
    :func:`run_capabilities`).
    ``direct_runner``: it runs on Beam's DirectRunner classes, which :mod:`pipelines.direct_runner_patches` corrects.
    ``splits_bundles_in_progress``: it splits a stateful bundle in progress and loses state unless told not to
    (:func:`pipelines.local_runner.disable_prism_splits`).
    """

    beam_pubsub_read: bool = False
    workers_in_this_process: bool = False
    direct_runner: bool = False
    splits_bundles_in_progress: bool = False


# Any runner the table does not name: a portable runner whose workers run elsewhere (a cluster's worker pool, or
# containers) unless the run asks for LOOPBACK.
PORTABLE = RunnerCapabilities()
# Beam's DirectRunner sends a streaming run (and any run with processing-time timers, as this pipeline's) to the
# BundleBasedDirectRunner, and a batch run to the FnApiRunner, whose classes the patches leave alone.
_DIRECT = RunnerCapabilities(beam_pubsub_read=True, workers_in_this_process=True, direct_runner=True)
RUNNERS: Mapping[str, RunnerCapabilities] = {
    "direct": _DIRECT,
    "bundlebaseddirect": _DIRECT,
    "fnapi": RunnerCapabilities(workers_in_this_process=True),
    "prism": RunnerCapabilities(workers_in_this_process=True, splits_bundles_in_progress=True),
    # Dataflow's Pub/Sub read acknowledges once a bundle is durably committed.
    "dataflow": RunnerCapabilities(beam_pubsub_read=True),
    "flink": PORTABLE,
    "portable": PORTABLE,
}


def runner_name(runner: str) -> str:
    """A runner's name in one spelling: Beam's names are case-blind and may leave out "Runner" or give the class's
    module path, so ``PrismRunner``, ``prism`` and ``apache_beam.runners.portability.prism_runner.PrismRunner`` are
    all ``prism``."""
    return runner.rsplit(".", 1)[-1].lower().removesuffix("runner")


def capabilities(runner: str) -> RunnerCapabilities:
    """The table's row for ``runner`` (any spelling :func:`runner_name` reads), or :data:`PORTABLE`."""
    return RUNNERS.get(runner_name(runner), PORTABLE)


def run_capabilities(options: PipelineOptions) -> RunnerCapabilities:
    """The capabilities of the runner ``options`` name, with their ``--environment_type``, when one is given, deciding
    where the workers run: in this process with ``LOOPBACK``, elsewhere with any other."""
    found = capabilities(options.view_as(StandardOptions).runner or "")
    environment = options.view_as(PortableOptions).environment_type
    if environment is None:
        return found
    return dataclasses.replace(found, workers_in_this_process=environment == LOOPBACK)
