"""A run's metrics file: what ``profilestream run --metrics-file`` writes and the console's pipeline view reads.

The run writes its summary (:mod:`pipelines.summary`, the line it prints at the end) to the file every few seconds
while it runs, and once more when it ends, each time whole (a new file renamed over the old)::

    {"at": RFC 3339, when the counters were read, "running": bool, "summary": {the run summary line}}

:class:`PipelineMetrics` (``serve --metrics-file``) reads it when asked and answers::

    {"available": true, "at", "age_s": seconds since "at", "running",
     "messages", "messages_per_s": float | null, "records", "failed",
     "failed_by_code": {"<CODE>": n}, "profile_freshness_ms": {"p50", "p99"}}

``messages_per_s`` is the messages counted between the two latest snapshots this server has read (null until it has
read two of one run, or when the count went down: another run began). Without a file, or with one that cannot be
read, the answer is ``{"available": false, "detail": why}``.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

from core.clock import rfc3339_or_micros, rfc3339_us, wall_clock_us

_MICROS = 1_000_000


def write_snapshot(path: str, summary: Mapping[str, Any], *, running: bool, at_us: int) -> None:
    """Writes ``summary`` (a run summary's JSON) to ``path`` whole: a reader sees the old file or the new one."""
    text = json.dumps({"at": rfc3339_or_micros(at_us), "running": running, "summary": summary})
    folder = os.path.dirname(os.path.abspath(path))
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=".metrics-", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write(text)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


class _Reading(NamedTuple):
    at_us: int
    messages: int


class PipelineMetrics:
    """The console's pipeline figures from the metrics file at ``path`` (None: ``serve`` was given none), read at
    each call; ``clock`` gives the time the age of a snapshot is measured at."""

    def __init__(self, path: str | None, *, clock: Callable[[], int] = wall_clock_us) -> None:
        self._path = path
        self._clock = clock
        self._lock = threading.Lock()
        self._latest: _Reading | None = None
        self._rate: float | None = None

    def figures(self) -> dict[str, Any]:
        if self._path is None:
            return _unavailable("serve was started without --metrics-file")
        try:
            snapshot = json.loads(Path(self._path).read_text(encoding="utf-8"))
            at_us = rfc3339_us(snapshot["at"])
            summary = snapshot["summary"]
            messages = int(summary["messages"])
        except FileNotFoundError:
            return _unavailable("no metrics file yet: is profilestream run --metrics-file writing it?")
        except (OSError, ValueError, KeyError, TypeError):
            return _unavailable("the metrics file cannot be read")
        if at_us is None:
            return _unavailable("the metrics file cannot be read")
        freshness = summary.get("profile_freshness_ms") or {}
        return {
            "available": True,
            "at": snapshot["at"],
            "age_s": round((self._clock() - at_us) / _MICROS, 3),
            "running": bool(snapshot.get("running")),
            "messages": messages,
            "messages_per_s": self._messages_per_s(_Reading(at_us, messages)),
            "records": summary.get("records", 0),
            "failed": summary.get("failed", 0),
            "failed_by_code": summary.get("failed_by_code", {}),
            "profile_freshness_ms": {"p50": freshness.get("p50"), "p99": freshness.get("p99")},
        }

    def _messages_per_s(self, reading: _Reading) -> float | None:
        """The rate between ``reading`` and the snapshot read before it (kept while the file does not change)."""
        with self._lock:
            latest = self._latest
            if latest is None or reading.at_us < latest.at_us or reading.messages < latest.messages:
                self._rate = None
            elif reading.at_us > latest.at_us:
                self._rate = round((reading.messages - latest.messages) * _MICROS / (reading.at_us - latest.at_us), 1)
            self._latest = reading
            return self._rate


def _unavailable(detail: str) -> dict[str, Any]:
    return {"available": False, "detail": detail}
