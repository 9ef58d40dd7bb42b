"""``profilestream run --metrics-file``: the run summary written to a file while the run goes on, for the console's
pipeline view (``serve --metrics-file``; the format is :mod:`service.pipeline_metrics`').

On Beam's DirectRunner classes (the local streaming runner) the counters are read every
:data:`SNAPSHOT_INTERVAL_S` while the pipeline runs; on every other runner only once, when it has ended: a portable
runner's result keeps the first metrics it is asked for, so a read during the run would stand for the whole run in
its summary, and the local batch runner returns only when it is done.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator, Mapping

from core.clock import wall_clock_us
from pipelines.summary import RunSummary
from service.pipeline_metrics import write_snapshot

SNAPSHOT_INTERVAL_S = 2.0
_LOGGER = logging.getLogger(__name__)


@contextlib.contextmanager
def live_snapshots(
    path: str | None,
    counted: Callable[[], Mapping[str, int]],
    summarise: Callable[[Mapping[str, int]], RunSummary],
    *,
    interval_s: float = SNAPSHOT_INTERVAL_S,
    clock: Callable[[], int] = wall_clock_us,
) -> Iterator[None]:
    """While inside, writes ``summarise(counted())`` to ``path`` (None: nowhere) every ``interval_s``, marked running.
    A read or write that fails skips its turn: the figures are a view, never a reason to stop a run."""
    if path is None:
        yield
        return
    done = threading.Event()

    def write_until_done() -> None:
        while not done.wait(interval_s):
            try:
                write_snapshot(path, summarise(counted()).as_json(), running=True, at_us=clock())
            except Exception as error:  # the runner's metrics may change under the read; the disk may be full
                _LOGGER.debug("metrics snapshot skipped: %s", error)

    writer = threading.Thread(target=write_until_done, name="metrics-snapshots", daemon=True)
    writer.start()
    try:
        yield
    finally:
        done.set()
        writer.join()


def write_final(path: str | None, summary: RunSummary, *, clock: Callable[[], int] = wall_clock_us) -> None:
    """Writes a finished run's ``summary`` to ``path`` (None: nowhere), marked not running."""
    if path is not None:
        write_snapshot(path, summary.as_json(), running=False, at_us=clock())
