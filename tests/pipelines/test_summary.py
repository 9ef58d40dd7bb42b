"""The run summary: the README's JSON line made from the counters the pipeline's stages count under the names of
:mod:`transforms.metrics`, and the lake figures counted from the files the lake writer emitted."""

from __future__ import annotations

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.portability.fn_api_runner import FnApiRunner

from pipelines.summary import counters, freshness_percentiles, summary_of
from transforms import metrics
from transforms.lake import CountLakeFiles, LakeFile

DATASETS = ("experience_events", "profile_records", "failed_records", "identity_changes")
COUNTED = {
    metrics.MESSAGES: 11,
    metrics.DECODED_ENTITIES: 12,
    metrics.DECODE_FAILED: 1,
    metrics.VALID: 10,
    metrics.VALIDATE_FAILED: 2,
    metrics.failed_with("JSON.INVALID"): 1,
    metrics.failed_with("SCHEMA.FORMAT"): 2,
    metrics.duplicates_in("experience_events"): 1,
    metrics.duplicates_in("failed_records"): 1,
    metrics.duplicates_in("identity_changes"): 4,
    metrics.lake_files_of("experience_events"): 2,
    metrics.lake_rows_of("experience_events"): 9,
    metrics.lake_files_of("failed_records"): 1,
    metrics.lake_rows_of("failed_records"): 2,
    metrics.PROFILES_WRITTEN: 4,
    metrics.freshness_bucket(5): 2,
    metrics.freshness_bucket(700): 1,
    metrics.freshness_bucket(1e9): 1,
    metrics.STITCHED: 10,
}


def test_the_summary_line_is_the_readme_contract():
    summary = summary_of(COUNTED, DATASETS).as_json()

    assert summary == {
        "messages": 11,
        "records": 13,
        "valid": 10,
        "failed": 3,
        "duplicates": 1,
        "failed_duplicates": 1,
        "profiles_written": 4,
        "lake": {
            "experience_events": {"files": 2, "rows": 9},
            "profile_records": {"files": 0, "rows": 0},
            "failed_records": {"files": 1, "rows": 2},
            "identity_changes": {"files": 0, "rows": 0},
        },
        "failed_by_code": {"JSON.INVALID": 1, "SCHEMA.FORMAT": 2},
        "profile_freshness_ms": {"p50": 10, "p95": -1, "p99": -1},
    }
    assert list(summary) == [
        "messages",
        "records",
        "valid",
        "failed",
        "duplicates",
        "failed_duplicates",
        "profiles_written",
        "lake",
        "failed_by_code",
        "profile_freshness_ms",
    ]


def test_a_run_that_checked_a_suppression_list_counts_the_records_it_dropped_apart_from_the_valid():
    # Validate counted the two valid; stitching then dropped them.
    counted = {**COUNTED, metrics.SUPPRESSED: 2}

    summary = summary_of(counted, DATASETS, suppression_checked=True).as_json()

    assert (summary["records"], summary["valid"], summary["failed"], summary["suppressed"]) == (13, 8, 3, 2)
    assert list(summary)[:5] == ["messages", "records", "valid", "failed", "suppressed"]
    assert "suppressed" not in summary_of(COUNTED, DATASETS).as_json()


def test_a_run_that_wrote_no_profile_has_no_freshness():
    assert freshness_percentiles({}) == {"p50": None, "p95": None, "p99": None}


def test_the_lake_figures_are_counted_from_the_files_emitted():
    files = [
        LakeFile("experience_events", "a.parquet", 5, 0, 0),
        LakeFile("experience_events", "b.parquet", 4, 0, 1),
        LakeFile("failed_records", "c.parquet", 2, 0, 0),
    ]
    pipeline = beam.Pipeline(runner=FnApiRunner(), options=PipelineOptions([]))
    _ = pipeline | beam.Create(files) | CountLakeFiles()
    result = pipeline.run()
    result.wait_until_finish()

    assert summary_of(counters(result), DATASETS).lake == {
        "experience_events": {"files": 2, "rows": 9},
        "profile_records": {"files": 0, "rows": 0},
        "failed_records": {"files": 1, "rows": 2},
        "identity_changes": {"files": 0, "rows": 0},
    }
