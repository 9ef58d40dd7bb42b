"""The pipeline's Beam metrics: one namespace, and how failed records are counted by code."""

from __future__ import annotations

from apache_beam.metrics import Metrics

from core.records import FailedRecord

NAMESPACE = "profilestream"


def counter(name: str):
    return Metrics.counter(NAMESPACE, name)


def count_failure(failed: FailedRecord) -> None:
    """Counts a failed record once under each code it carries, as ``failed.<CODE>``."""
    for code in dict.fromkeys(error.code for error in failed.errors):
        Metrics.counter(NAMESPACE, f"failed.{code}").inc()
