"""The Ingest transform as a whole: whatever comes in, nothing crashes, nothing is lost, and the counts balance; and
the options a run gets: on Prism, with bundle splitting off."""

from __future__ import annotations

import gc
import json
import tempfile
from datetime import timedelta
from pathlib import Path

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import DebugOptions, PipelineOptions
from apache_beam.runners.portability.fn_api_runner.fn_runner import FnApiRunner
from apache_beam.testing.test_stream import TestStream
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from core.records import Message
from pipelines.config import Config
from pipelines.ingest import RUN_GC_THRESHOLDS, Ingest, RunRequest, pipeline_options, tuned_garbage_collection
from pipelines.local_runner import PRISM_NO_SPLIT_EXPERIMENT
from pipelines.summary import counters, summary_of
from schemas.registry import SchemaRegistry
from tests.helpers import START, envelope, event, lake_rows

REGISTRY = SchemaRegistry.load()
PUBLISHED_US = int(START.timestamp() * 1_000_000)
DATASETS = ("experience_events", "failed_records")
VALID = json.dumps(envelope(event("e1", START - timedelta(minutes=1)))).encode()

payloads = st.one_of(
    st.binary(max_size=200),
    st.integers(min_value=1, max_value=len(VALID) - 1).map(lambda cut: VALID[:cut]),
    st.integers(min_value=60, max_value=200).map(lambda depth: b"[" * depth + b"]" * depth),
    st.just(b'{"a": "' + b"x" * (1024 * 1024) + b'"}'),
    st.sampled_from([b"NaN", b'{"a": 1, "a": 2}', b"123456789012345678901234567890", b'"\\ud800"', b"\xef\xbb\xbf{}"]),
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
        lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
        max_leaves=20,
    ).map(
        lambda value: json.dumps(
            {
                "header": {"schemaRef": {"id": envelope({})["header"]["schemaRef"]["id"]}},
                "body": {"xdmEntity": {"_id": "w", "timestamp": value}},
            }
        ).encode()
    ),
    st.just(VALID),
)


def run_ingest(data: list[bytes], lake: str):
    messages = [
        beam.window.TimestampedValue(Message(payload, {}, f"m{n}", PUBLISHED_US, PUBLISHED_US), PUBLISHED_US / 1e6)
        for n, payload in enumerate(data)
    ]
    pipeline = beam.Pipeline(runner="FnApiRunner")
    _ = (
        pipeline
        | beam.Create(messages)
        | Ingest(REGISTRY, Config(), lake, f"sqlite:///{lake}/identity.sqlite", f"sqlite:///{lake}/profiles.sqlite")
    )
    result = pipeline.run()
    result.wait_until_finish()
    return summary_of(counters(result), [*DATASETS, "profile_records"])


# Each example runs a whole pipeline: few examples, and no shrinking (a failure prints its input as it is).
@settings(
    max_examples=6,
    deadline=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(st.lists(payloads, min_size=1, max_size=12))
def test_any_input_balances_and_every_message_reaches_the_lake(data):
    with tempfile.TemporaryDirectory() as lake:
        summary = run_ingest(data, lake)
        written = {row["_message_id"] for dataset in DATASETS for row in lake_rows(Path(lake), dataset)}

    assert summary.messages == len(data)
    assert summary.records == summary.valid + summary.failed
    assert summary.records >= summary.messages
    # Only a repeat of a valid entity already in the same window may be missing from the lake, and it is counted.
    assert len(written) >= len(data) - summary.duplicates
    assert summary.lake["failed_records"]["rows"] == summary.failed
    assert summary.lake["experience_events"]["rows"] == summary.valid - summary.duplicates


def test_streaming_ingest_writes_late_backlog_and_redelivered_messages_once(tmp_path):
    def message(message_id: str, payload: bytes, published_us: int):
        return beam.window.TimestampedValue(
            Message(payload, {}, message_id, published_us, published_us), published_us / 1e6
        )

    late_us = PUBLISHED_US - 3_600_000_000  # an hour-old backlog, far beyond the 5-minute commit interval
    late_event = json.dumps(envelope(event("late", START - timedelta(hours=1, minutes=1)))).encode()
    stream = (
        TestStream()
        .add_elements([message("m1", VALID, PUBLISHED_US), message("m2", b"{oops", PUBLISHED_US)])
        .add_elements([message("m1", VALID, PUBLISHED_US)])  # redelivered
        .advance_watermark_to(PUBLISHED_US / 1e6 + 600)
        .add_elements([message("m3", late_event, late_us)])
        .advance_watermark_to_infinity()
    )
    options = PipelineOptions(streaming=True, runner="BundleBasedDirectRunner")
    with beam.Pipeline(options=options) as pipeline:
        _ = (
            pipeline
            | stream
            | Ingest(
                REGISTRY,
                Config(),
                str(tmp_path),
                f"sqlite:///{tmp_path}/identity.sqlite",
                f"sqlite:///{tmp_path}/profiles.sqlite",
            )
        )

    events = lake_rows(tmp_path, "experience_events")
    assert sorted((row["_id"], row["_message_id"]) for row in events) == [("e1", "m1"), ("late", "m3")]
    assert [row["message_id"] for row in lake_rows(tmp_path, "failed_records")] == ["m2"]
    late_hour = (START - timedelta(hours=1)).strftime("%H")
    assert list((tmp_path / "experience_events").rglob(f"hour={late_hour}/*.parquet"))


def experiments_of_a_run(runner: str | None, *beam_args: str, batch: bool = False) -> list[str]:
    request = RunRequest(None, "lake", "sqlite:///i", "sqlite:///p", batch=batch, runner=runner, beam_args=beam_args)
    return pipeline_options(request).view_as(DebugOptions).experiments or []


@pytest.mark.parametrize(
    "runner", ["PrismRunner", "prism", "PRISM", "apache_beam.runners.portability.prism_runner.PrismRunner"]
)
def test_a_run_on_prism_has_bundle_splitting_off(runner):
    assert experiments_of_a_run(runner) == [PRISM_NO_SPLIT_EXPERIMENT]


def test_a_run_on_prism_keeps_the_users_experiments_and_names_the_split_experiment_once():
    experiments = experiments_of_a_run(
        "PrismRunner", "--experiments=prism_disable_rtc", f"--experiments={PRISM_NO_SPLIT_EXPERIMENT}"
    )

    assert experiments == ["prism_disable_rtc", PRISM_NO_SPLIT_EXPERIMENT]


@pytest.mark.parametrize(
    ("runner", "batch"), [(None, False), (None, True), ("DirectRunner", False), ("FlinkRunner", False)]
)
def test_other_runners_get_no_prism_experiment(runner, batch):
    assert PRISM_NO_SPLIT_EXPERIMENT not in experiments_of_a_run(runner, batch=batch)


def test_a_run_freezes_the_objects_it_finds_and_collects_less_often_until_it_ends():
    """Frozen objects are never collected, so a process running pipeline after pipeline (a test session, the bench)
    would keep each run's cycles for good if the freeze outlived the run, even one that failed."""
    thresholds = gc.get_threshold()
    with tuned_garbage_collection():
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold() == RUN_GC_THRESHOLDS != thresholds
    assert gc.get_freeze_count() == 0 and gc.get_threshold() == thresholds
    with pytest.raises(RuntimeError), tuned_garbage_collection():
        raise RuntimeError("a failed run")
    assert gc.get_freeze_count() == 0 and gc.get_threshold() == thresholds


def test_a_batch_run_merges_and_keys_lake_rows_in_the_stage_that_stitched_them(tmp_path):
    """FnApiRunner writes out every element of a flatten and reads it back in a stage of its own, encoding each: the
    stitched records must reach the merge and the lake's keying without one (issue 14: a third of a --batch run's
    bundle time was pickling records into and out of such flattens)."""
    pipeline = beam.Pipeline(runner="FnApiRunner")
    _ = (
        pipeline
        | beam.Create([Message(VALID, {}, "m0", PUBLISHED_US, PUBLISHED_US)])
        | Ingest(REGISTRY, Config(), str(tmp_path), f"sqlite:///{tmp_path}/i.sqlite", f"sqlite:///{tmp_path}/p.sqlite")
    )
    _, stages = FnApiRunner().create_stages(pipeline.to_runner_api())

    [stitching] = [stage for stage in stages if any("LinkIdentities" in t.unique_name for t in stage.transforms)]
    fused = {transform.unique_name for transform in stitching.transforms}
    for step in ("MergeRecords", "MergeChanges", "RecordRows", "ChangeRows", "KeyByCommitWindow0"):
        assert any(step in name for name in fused), step
