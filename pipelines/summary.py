"""The run summary: the counters of a finished pipeline as the one JSON line ``profilestream run`` prints last.

    {"messages": n, "records": n, "valid": n, "failed": n, ["suppressed": n,] "duplicates": n, "failed_duplicates": n,
     "profiles_written": n, "lake": {"<dataset>": {"files": n, "rows": n}, ...}, "failed_by_code": {"<CODE>": n, ...},
     "profile_freshness_ms": {"p50": ms, "p95": ms, "p99": ms}}

``records`` counts XDM entities (a batch envelope holds several; a message that fails before it can be split counts
as one), and ``records = valid + failed`` always, or ``records = valid + failed + suppressed`` for a run that checked a
suppression list (:mod:`privacy.suppression`): ``suppressed`` counts the valid records stitching dropped for carrying
a suppressed identity, which are not among ``valid`` (nor ``failed``: a failed record keeps its data), and a run
without a list has no such field. ``duplicates`` counts valid records the lake dropped as repeats, and
``failed_duplicates`` failed records it dropped as repeats (a redelivered bad message), so ``failed`` equals the rows
``failed_records`` gained plus ``failed_duplicates``.
``profile_freshness_ms`` gives p50, p95 and p99 of the time from reading a record to writing its profile, as bucket
upper bounds (-1: beyond the last bucket; null: no profile written).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping

from apache_beam.metrics.metric import MetricsFilter
from apache_beam.runners.runner import PipelineResult

from transforms import metrics

# Datasets the pipeline writes about records rather than records themselves: their repeats are not duplicates.
FAILED_RECORDS = "failed_records"
SERVICE_DATASETS = frozenset({FAILED_RECORDS, "identity_changes"})


@dataclasses.dataclass(frozen=True)
class RunSummary:
    messages: int
    records: int
    valid: int
    failed: int
    duplicates: int
    failed_duplicates: int
    profiles_written: int
    lake: Mapping[str, Mapping[str, int]]
    failed_by_code: Mapping[str, int]
    profile_freshness_ms: Mapping[str, int | None]
    # None: the run checked no suppression list.
    suppressed: int | None = None

    def as_json(self) -> dict:
        """The summary line's fields in the module docstring's order; ``suppressed`` only when the run checked a
        suppression list."""
        fields = dataclasses.asdict(self)
        suppressed = fields.pop("suppressed")
        summary = {}
        for name, value in fields.items():
            summary[name] = value
            if name == "failed" and suppressed is not None:
                summary["suppressed"] = suppressed
        return summary


def counters(result: PipelineResult) -> dict[str, int]:
    """Every ``profilestream`` counter of a finished pipeline, by name (committed values where the runner has them)."""
    values: dict[str, int] = {}
    for counter in result.metrics().query(MetricsFilter().with_namespace(metrics.NAMESPACE))["counters"]:
        value = counter.committed if counter.committed is not None else counter.attempted
        name = counter.key.metric.name
        values[name] = values.get(name, 0) + (value or 0)
    return values


def summary_of(values: Mapping[str, int], datasets: Iterable[str], *, suppression_checked: bool = False) -> RunSummary:
    """The summary of a run's counters (:func:`counters`) over its lake's ``datasets``; with ``suppression_checked``
    (the run checked a suppression list) it has ``suppressed``."""
    suppressed = values.get(metrics.SUPPRESSED, 0)
    # Validate counted the suppressed records valid before stitching dropped them.
    valid = values.get(metrics.VALID, 0) - suppressed
    failed = values.get(metrics.DECODE_FAILED, 0) + values.get(metrics.VALIDATE_FAILED, 0)
    return RunSummary(
        messages=values.get(metrics.MESSAGES, 0),
        records=values.get(metrics.DECODED_ENTITIES, 0) + values.get(metrics.DECODE_FAILED, 0),
        valid=valid,
        failed=failed,
        duplicates=sum(
            values.get(metrics.duplicates_in(dataset), 0) for dataset in datasets if dataset not in SERVICE_DATASETS
        ),
        failed_duplicates=values.get(metrics.duplicates_in(FAILED_RECORDS), 0),
        profiles_written=values.get(metrics.PROFILES_WRITTEN, 0),
        lake={
            dataset: {
                "files": values.get(metrics.lake_files_of(dataset), 0),
                "rows": values.get(metrics.lake_rows_of(dataset), 0),
            }
            for dataset in datasets
        },
        failed_by_code={
            code: count
            for code, count in ((metrics.code_counted_by(name), count) for name, count in sorted(values.items()))
            if code is not None
        },
        profile_freshness_ms=freshness_percentiles(values),
        suppressed=suppressed if suppression_checked else None,
    )


def freshness_percentiles(values: Mapping[str, int]) -> dict[str, int | None]:
    """p50, p95 and p99 of profile freshness, each as the upper bound of the bucket it falls in (null: no writes)."""
    bounds = [*metrics.FRESHNESS_BUCKETS_MS, None]
    counts = [values.get(metrics.freshness_bucket_of(bound), 0) for bound in bounds]
    total = sum(counts)
    percentiles: dict[str, int | None] = {}
    for name, share in (("p50", 0.50), ("p95", 0.95), ("p99", 0.99)):
        cumulative = 0
        percentiles[name] = None
        for bound, count in zip(bounds, counts, strict=True):
            cumulative += count
            if total and cumulative >= share * total:
                percentiles[name] = bound if bound is not None else -1
                break
    return percentiles
