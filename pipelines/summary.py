"""The run summary: the counters of a finished pipeline as the one JSON line ``profilestream run`` prints last.

    {"messages": n, "records": n, "valid": n, "failed": n, "duplicates": n, "profiles_written": n,
     "lake": {"<dataset>": {"files": n, "rows": n}, ...}, "failed_by_code": {"<CODE>": n, ...}}

``records`` counts XDM entities (a batch envelope holds several; a message that fails before it can be split counts
as one), and ``records = valid + failed`` always. ``duplicates`` counts valid records the lake dropped as repeats.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping

from apache_beam.metrics.metric import MetricsFilter
from apache_beam.runners.runner import PipelineResult

NAMESPACE = "profilestream"
# Datasets the pipeline writes about records rather than records themselves: their repeats are not duplicates.
SERVICE_DATASETS = frozenset({"failed_records", "identity_changes"})


@dataclasses.dataclass(frozen=True)
class RunSummary:
    messages: int
    records: int
    valid: int
    failed: int
    duplicates: int
    profiles_written: int
    lake: Mapping[str, Mapping[str, int]]
    failed_by_code: Mapping[str, int]

    def as_json(self) -> dict:
        return dataclasses.asdict(self)


def counters(result: PipelineResult) -> dict[str, int]:
    """Every ``profilestream`` counter of a finished pipeline, by name (committed values where the runner has them)."""
    values: dict[str, int] = {}
    for counter in result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))["counters"]:
        value = counter.committed if counter.committed is not None else counter.attempted
        name = counter.key.metric.name
        values[name] = values.get(name, 0) + (value or 0)
    return values


def summarise(result: PipelineResult, datasets: Iterable[str]) -> RunSummary:
    return summary_of(counters(result), datasets)


def summary_of(values: Mapping[str, int], datasets: Iterable[str]) -> RunSummary:
    valid = values.get("valid", 0)
    failed = values.get("decode_failed", 0) + values.get("validate_failed", 0)
    return RunSummary(
        messages=values.get("messages", 0),
        records=values.get("decoded_entities", 0) + values.get("decode_failed", 0),
        valid=valid,
        failed=failed,
        duplicates=sum(
            values.get(f"duplicates.{dataset}", 0) for dataset in datasets if dataset not in SERVICE_DATASETS
        ),
        profiles_written=values.get("profiles_written", 0),
        lake={
            dataset: {"files": values.get(f"lake_files.{dataset}", 0), "rows": values.get(f"lake_rows.{dataset}", 0)}
            for dataset in datasets
        },
        failed_by_code={
            name.removeprefix("failed."): count for name, count in sorted(values.items()) if name.startswith("failed.")
        },
    )
