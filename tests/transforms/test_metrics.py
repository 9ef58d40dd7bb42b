"""The metric names: one per figure, the per-dataset, per-code and per-bucket names made one way, and every freshness
bucket a write can be counted under one the run summary reads."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from transforms import metrics

FIXED_NAMES = (
    metrics.REPLAY_MESSAGES,
    metrics.MESSAGES,
    metrics.DECODED_ENTITIES,
    metrics.DECODE_FAILED,
    metrics.VALID,
    metrics.VALIDATE_FAILED,
    metrics.STITCHED,
    metrics.IDENTITIES_REJECTED,
    metrics.PROFILES_WRITTEN,
    metrics.PROFILE_WRITE_CONFLICTS,
    metrics.PROFILE_FRESHNESS_MS,
    metrics.DUPLICATES,
    metrics.DEAD_LETTERED,
)


def test_every_figure_has_a_name_of_its_own():
    dataset = "experience_events"
    per_dataset = (
        metrics.duplicates_in(dataset),
        metrics.lake_files_of(dataset),
        metrics.lake_rows_of(dataset),
        metrics.lake_lag_ms_of(dataset),
    )

    names = [*FIXED_NAMES, *per_dataset, metrics.failed_with("SCHEMA.FORMAT"), metrics.freshness_bucket_of(10)]

    assert len(set(names)) == len(names)


@pytest.mark.parametrize(
    ("freshness_ms", "bucket"),
    [
        (0, "profile_freshness_ms.le_10"),
        (10, "profile_freshness_ms.le_10"),
        (10.5, "profile_freshness_ms.le_25"),
        (300_000, "profile_freshness_ms.le_300000"),
        (300_000.1, "profile_freshness_ms.le_inf"),
    ],
)
def test_a_write_is_counted_in_the_smallest_bucket_it_does_not_exceed(freshness_ms, bucket):
    assert metrics.freshness_bucket(freshness_ms) == bucket


@given(st.floats(min_value=0, max_value=1e9, allow_nan=False))
def test_every_bucket_a_write_falls_in_is_one_the_summary_reads(freshness_ms):
    read = {metrics.freshness_bucket_of(bound) for bound in (*metrics.FRESHNESS_BUCKETS_MS, None)}

    assert metrics.freshness_bucket(freshness_ms) in read


@given(st.text())
def test_the_code_a_failure_counter_counts_is_the_code_it_was_made_for(code):
    assert metrics.code_counted_by(metrics.failed_with(code)) == code


def test_no_other_counter_counts_a_code():
    per_dataset = [make("failed_records") for make in (metrics.duplicates_in, metrics.lake_files_of)]

    assert [metrics.code_counted_by(name) for name in (*FIXED_NAMES, *per_dataset)] == [None] * (
        len(FIXED_NAMES) + len(per_dataset)
    )
