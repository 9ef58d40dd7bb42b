"""Tests for transforms/lake.py: layout, panes, duplicates, idempotence and readers, on both local runners.

Streaming tests drive a ``TestStream`` on the BundleBasedDirectRunner, whose processing time only moves when the
stream says so; batch tests run on the FnApiRunner. Times are UTC; the commit interval is the default 5 minutes.
Metrics are checked on the FnApiRunner only: the BundleBasedDirectRunner (Beam 2.77) drops the user metrics of every
bundle after the first that a worker thread runs for a step (its StateSampler caches each step's ScopedState with
the first bundle's MetricsContainer).
"""

import datetime
import os
import pathlib
import random
import uuid

import apache_beam as beam
import duckdb
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from apache_beam.metrics import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.direct.direct_runner import BundleBasedDirectRunner
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.runners.runner import PipelineResult
from apache_beam.testing import test_stream
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.window import GlobalWindows, TimestampedValue
from apache_beam.utils.timestamp import Timestamp
from hypothesis import given
from hypothesis import strategies as st

from core.records import LakeRow
from lake.folders import LakeFolderError, clean_stale_temp_files, writer_temp_dir
from transforms import lake as lake_module
from transforms.lake import (
    CountLakeFiles,
    LakeFile,
    WriteToLake,
    _BufferAndWritePanesFn,
    _first_copies,
    _in_deterministic_order,
    _WritePaneFn,
)

INTERVAL_S = 300
DATASET = "experience_events"
UTC = datetime.UTC
T0 = datetime.datetime(2026, 3, 5, 9, 0, tzinfo=UTC)  # a commit window starts here
T0_NAME = "date=2026-03-05/hour=09/part-20260305T090000Z"

IDENTITY_ITEM = pa.struct([("id", pa.string()), ("authenticatedState", pa.string()), ("primary", pa.bool_())])
SCHEMA = pa.schema(
    [
        ("_id", pa.string()),
        ("timestamp", pa.timestamp("us", tz="UTC")),
        ("eventType", pa.string()),
        ("web", pa.struct([("webPageDetails", pa.struct([("name", pa.string()), ("URL", pa.string())]))])),
        ("tags", pa.list_(pa.string())),
        ("identityMap", pa.map_(pa.string(), pa.list_(IDENTITY_ITEM))),
        ("_message_id", pa.string()),
        ("_ingest_time", pa.timestamp("us", tz="UTC")),
    ]
)
SCHEMAS = {DATASET: SCHEMA}


def us(moment: datetime.datetime) -> int:
    return (moment - datetime.datetime(1970, 1, 1, tzinfo=UTC)) // datetime.timedelta(microseconds=1)


def lake_row(
    key: str | None,
    published: datetime.datetime,
    message_id: str,
    event_type: str = "web.webpagedetails.pageViews",
    event_time: datetime.datetime | None = None,
) -> LakeRow:
    return LakeRow(
        dataset=DATASET,
        dedupe_key=key,
        publish_time_us=us(published),
        message_id=message_id,
        row={
            "_id": key,
            "timestamp": event_time or published,
            "eventType": event_type,
            "web": {"webPageDetails": {"name": f"page of {message_id}", "URL": "https://example.com/"}},
            "tags": ["a", "b"],
            "identityMap": {"ECID": [{"id": "1" * 38, "authenticatedState": "ambiguous", "primary": True}]},
            "_message_id": message_id,
            "_ingest_time": published,
        },
    )


def at(seconds: float) -> datetime.datetime:
    return T0 + datetime.timedelta(seconds=seconds)


def stamped(row: LakeRow) -> TimestampedValue:
    return TimestampedValue(row, Timestamp(micros=row.publish_time_us))


def run_batch(lake: str, rows: list[LakeRow], **options) -> PipelineResult:
    pipeline = beam.Pipeline(runner=FnApiRunner(), options=PipelineOptions([]))
    _ = pipeline | beam.Create(rows) | beam.Map(stamped) | WriteToLake(lake, SCHEMAS, **options)
    result = pipeline.run()
    result.wait_until_finish()
    return result


def stream_clock() -> int:
    """The writer's clock in streaming tests: the TestStream's processing time before any advance, 0.

    The writer sets its commit and forget timers by its clock, so they fall on the stream's timeline; a timer set
    after the stream advanced is due at once by this clock, which can only make that pane earlier.
    """
    return 0


def run_stream(
    lake: str, stream: test_stream.TestStream, expected_files: list[LakeFile] | None = None, **options
) -> None:
    pipeline = beam.Pipeline(runner=BundleBasedDirectRunner(), options=PipelineOptions([], streaming=True))
    options.setdefault("clock", stream_clock)
    files = pipeline | stream | WriteToLake(lake, SCHEMAS, commit_interval_s=INTERVAL_S, **options)
    if expected_files is not None:
        assert_that(files, equal_to(expected_files))
    pipeline.run().wait_until_finish()


def lake_files(lake: str) -> list[str]:
    root = os.path.join(lake, DATASET)
    return sorted(
        os.path.relpath(os.path.join(folder, name), root)
        for folder, _, names in os.walk(root)
        for name in names
        if name.endswith(".parquet")
    )


def file_bytes(lake: str) -> dict[str, bytes]:
    return {name: pathlib.Path(lake, DATASET, name).read_bytes() for name in lake_files(lake)}


def message_ids(lake: str, relative_path: str) -> list[str]:
    return pq.read_table(os.path.join(lake, DATASET, relative_path)).column("_message_id").to_pylist()


def counter(result: PipelineResult, name: str) -> int:
    counters = result.metrics().query(MetricsFilter().with_name(name))["counters"]
    return sum(c.committed for c in counters)


# Streaming: when files appear.


def test_files_appear_when_processing_time_passes_the_commit_interval(tmp_path):
    """Pane 0 holds only the row that came before processing time moved one interval on.

    The watermark stays before the window's end until the stream ends, so only processing time can have closed
    pane 0 before ``m2`` arrived: had the file waited for the watermark, both rows would share one pane.
    """
    lake = str(tmp_path)
    first, second = lake_row("e1", at(10), "m1"), lake_row("e2", at(60), "m2")
    stream = (
        test_stream.TestStream()
        .advance_watermark_to(Timestamp(micros=us(T0)))
        .add_elements([stamped(first)])
        .advance_processing_time(INTERVAL_S + 1)
        .add_elements([stamped(second)])
        .advance_watermark_to_infinity()
    )
    pane0, pane1 = f"{T0_NAME}-0-0-of-1.parquet", f"{T0_NAME}-1-0-of-1.parquet"
    expected = [
        LakeFile(DATASET, os.path.join(lake, DATASET, pane0), 1, us(T0), 0),
        LakeFile(DATASET, os.path.join(lake, DATASET, pane1), 1, us(T0), 1),
    ]

    run_stream(lake, stream, expected)

    assert lake_files(lake) == [pane0, pane1]
    assert message_ids(lake, pane0) == ["m1"]
    assert message_ids(lake, pane1) == ["m2"]


def test_backlog_older_than_the_commit_interval_is_written_not_dropped(tmp_path):
    """Rows whose window ended long before the watermark arrived still land, in their window's next pane."""
    lake = str(tmp_path)
    stream = (
        test_stream.TestStream()
        .advance_watermark_to(Timestamp(micros=us(T0)))
        .add_elements([stamped(lake_row("e1", at(10), "m1"))])
        .advance_processing_time(INTERVAL_S + 1)
        .advance_watermark_to(Timestamp(micros=us(at(3600))))
        .add_elements([stamped(lake_row("e2", at(20), "m2")), stamped(lake_row("e3", at(30), "m3"))])
        .advance_watermark_to_infinity()
    )

    run_stream(lake, stream)

    assert lake_files(lake) == [f"{T0_NAME}-0-0-of-1.parquet", f"{T0_NAME}-1-0-of-1.parquet"]
    assert message_ids(lake, f"{T0_NAME}-1-0-of-1.parquet") == ["m2", "m3"]


def test_a_window_without_rows_writes_no_file(tmp_path):
    lake = str(tmp_path)
    stream = (
        test_stream.TestStream()
        .advance_watermark_to(Timestamp(micros=us(T0)))
        .add_elements([stamped(lake_row("e1", at(10), "m1"))])
        .advance_watermark_to(Timestamp(micros=us(at(2 * INTERVAL_S))))
        .add_elements([stamped(lake_row("e2", at(2 * INTERVAL_S + 10), "m2"))])
        .advance_watermark_to_infinity()
    )

    run_stream(lake, stream)

    assert lake_files(lake) == [
        f"{T0_NAME}-0-0-of-1.parquet",
        "date=2026-03-05/hour=09/part-20260305T091000Z-0-0-of-1.parquet",
    ]


def test_a_copy_arriving_in_a_later_pane_is_not_written_again(tmp_path):
    """The redelivered ``e1`` comes after pane 0 was committed; pane 1 is all duplicate, so it writes no file."""
    lake = str(tmp_path)
    stream = (
        test_stream.TestStream()
        .advance_watermark_to(Timestamp(micros=us(T0)))
        .add_elements([stamped(lake_row("e1", at(10), "m1"))])
        .advance_processing_time(INTERVAL_S + 1)
        .add_elements([stamped(lake_row("e1", at(10), "m1"))])
        .advance_watermark_to_infinity()
    )

    run_stream(lake, stream)

    assert lake_files(lake) == [f"{T0_NAME}-0-0-of-1.parquet"]


def test_a_copy_arriving_a_day_later_is_not_written_again(tmp_path):
    """The lake is the writer's memory of what it wrote: no horizon after which a copy is written again."""
    lake = str(tmp_path)
    stream = (
        test_stream.TestStream()
        .advance_watermark_to(Timestamp(micros=us(T0)))
        .add_elements([stamped(lake_row("e1", at(10), "m1"))])
        .advance_processing_time(INTERVAL_S + 1)
        .advance_processing_time(24 * 3600)
        .add_elements([stamped(lake_row("e1", at(10), "m1")), stamped(lake_row("e2", at(20), "m2"))])
        .advance_watermark_to_infinity()
    )

    run_stream(lake, stream)

    assert lake_files(lake) == [f"{T0_NAME}-0-0-of-1.parquet", f"{T0_NAME}-1-0-of-1.parquet"]
    assert message_ids(lake, f"{T0_NAME}-1-0-of-1.parquet") == ["m2"]


def test_a_second_run_of_a_stream_with_redeliveries_adds_nothing(tmp_path):
    """Run the same stream (with a redelivered message in a later pane) twice into one lake: the second run writes
    no file, and every row it was given is a duplicate."""
    lake = str(tmp_path)

    def stream():
        return (
            test_stream.TestStream()
            .advance_watermark_to(Timestamp(micros=us(T0)))
            .add_elements([stamped(lake_row("e1", at(10), "m1")), stamped(lake_row(None, at(11), "m2"))])
            .advance_processing_time(INTERVAL_S + 1)
            .add_elements([stamped(lake_row("e1", at(10), "m1")), stamped(lake_row("e3", at(30), "m3"))])
            .advance_watermark_to_infinity()
        )

    run_stream(lake, stream())
    first = file_bytes(lake)
    run_stream(lake, stream(), expected_files=[])

    assert file_bytes(lake) == first
    assert len(first) == 2
    rows = ds.dataset(os.path.join(lake, DATASET), partitioning="hive").to_table()
    assert sorted(rows.column("_message_id").to_pylist()) == ["m1", "m2", "m3"]


def restored_writer(lake: str, run_id: str, stream: test_stream.TestStream, expected_files: list[LakeFile]) -> None:
    """Runs the streaming pane writer of one run (``run_id``) on ``stream``; checks the files it reports.

    Two calls with one ``run_id`` are what a runner restoring the writer from a checkpoint does: the state goes back
    to before the commit, the files written after it stay, and the rows since the checkpoint come again.
    """
    pipeline = beam.Pipeline(runner=BundleBasedDirectRunner(), options=PipelineOptions([], streaming=True))
    writer = _BufferAndWritePanesFn(
        lake,
        SCHEMAS,
        interval_us=INTERVAL_S * 1_000_000,
        run_id=run_id,
        max_rows_per_file=1_000_000,
        table_builder=lambda rows, schema: pa.Table.from_pylist(rows, schema=schema),
        clock=stream_clock,
    )
    files = (
        pipeline
        | stream
        | beam.Map(lambda row: ((row.dataset, us(T0)), [row])).with_output_types(tuple[tuple[str, int], list[LakeRow]])
        | beam.WindowInto(GlobalWindows())
        | beam.ParDo(writer)
    )
    assert_that(files, equal_to(expected_files))
    pipeline.run().wait_until_finish()


def pane_file(lake: str, pane: int, rows: int) -> LakeFile:
    return LakeFile(DATASET, os.path.join(lake, DATASET, f"{T0_NAME}-{pane}-0-of-1.parquet"), rows, us(T0), pane)


def panes_stream(*panes: list[LakeRow]) -> test_stream.TestStream:
    stream = test_stream.TestStream().advance_watermark_to(Timestamp(micros=us(T0)))
    for pane in panes:
        stream = stream.add_elements([stamped(row) for row in pane]).advance_processing_time(INTERVAL_S + 1)
    return stream.advance_watermark_to_infinity()


def test_a_restored_writer_firing_the_same_panes_again_reports_its_files_and_writes_nothing(tmp_path):
    lake = str(tmp_path)
    rows = [lake_row(f"e{i}", at(10 + i), f"m{i}") for i in range(6)]
    files = [pane_file(lake, 0, 3), pane_file(lake, 1, 3)]
    restored_writer(lake, "run-a", panes_stream(rows[:3], rows[3:]), files)
    before = file_bytes(lake)

    restored_writer(lake, "run-a", panes_stream(rows[:3], rows[3:]), files)

    assert file_bytes(lake) == before


def test_a_restored_writer_whose_panes_come_out_otherwise_writes_only_rows_the_lake_lacks(tmp_path):
    """After the restore, the rows since the checkpoint are buffered into other panes (and one more row came)."""
    lake = str(tmp_path)
    rows = [lake_row(f"e{i}", at(10 + i), f"m{i}") for i in range(7)]
    restored_writer(lake, "run-a", panes_stream(rows[:3], rows[3:6]), [pane_file(lake, 0, 3), pane_file(lake, 1, 3)])
    before = file_bytes(lake)

    restored_writer(lake, "run-a", panes_stream(rows[:2], rows[2:]), [pane_file(lake, 2, 1)])

    assert message_ids(lake, f"{T0_NAME}-2-0-of-1.parquet") == ["m6"]
    assert {name: data for name, data in file_bytes(lake).items() if name in before} == before


def test_a_writer_whose_listing_missed_another_writers_pane_drops_its_rows_and_takes_the_next_index(
    tmp_path, monkeypatch
):
    """Two writers of one window that listed it at the same moment: the first commits pane 0; the second finds the
    name taken, lists the window again, and writes only the rows the first did not."""
    lake = str(tmp_path)
    run_batch(lake, [lake_row("e1", at(10), "m1")])
    before = file_bytes(lake)
    listings = []

    def listing(prefix: str) -> list:
        # The second writer's first listing was made before the first writer committed.
        listings.append(prefix)
        return [] if len(listings) == 1 else committed_files(prefix)

    committed_files = lake_module._committed_files
    monkeypatch.setattr(lake_module, "_committed_files", listing)
    writer = pane_writer(lake, "run-b")

    files = writer._write_pane(DATASET, us(T0), [lake_row("e1", at(10), "m1"), lake_row("e2", at(20), "m2")])

    assert [(lake_file.pane_index, lake_file.rows) for lake_file in files] == [(1, 1)]
    assert len(listings) == 2
    assert message_ids(lake, f"{T0_NAME}-1-0-of-1.parquet") == ["m2"]
    assert {name: file_bytes(lake)[name] for name in before} == before
    assert temp_files(lake) == []


def pane_writer(lake: str, run_id: str) -> _WritePaneFn:
    return _WritePaneFn(
        lake,
        SCHEMAS,
        run_id=run_id,
        max_rows_per_file=1_000_000,
        table_builder=lambda rows, schema: pa.Table.from_pylist(rows, schema=schema),
        clock=stream_clock,
    )


def temp_files(lake: str) -> list[str]:
    return sorted(str(path) for path in pathlib.Path(lake, ".tmp").rglob("*.parquet"))


# Batch: what a pane writes.


def test_rows_land_by_publish_time_not_payload_time(tmp_path):
    lake = str(tmp_path)
    published = datetime.datetime(2026, 3, 5, 14, 2, tzinfo=UTC)
    row = lake_row("e1", published, "m1", event_time=published - datetime.timedelta(days=3))

    run_batch(lake, [row])

    assert lake_files(lake) == ["date=2026-03-05/hour=14/part-20260305T140000Z-0-0-of-1.parquet"]


def test_a_redelivered_message_is_written_once_earliest_copy_first(tmp_path):
    lake = str(tmp_path)
    rows = [
        lake_row("e1", at(7), "m3", event_type="later copy"),
        lake_row("e1", at(5), "m2", event_type="same time, higher message id"),
        lake_row("e1", at(5), "m1", event_type="earliest"),
        lake_row("e1", at(5), "m1", event_type="earliest"),
        lake_row("e2", at(6), "m4"),
        lake_row(None, at(6), "m5"),
        lake_row(None, at(6), "m6"),
    ]

    result = run_batch(lake, rows)

    table = pq.read_table(os.path.join(lake, DATASET, f"{T0_NAME}-0-0-of-1.parquet"))
    assert table.column("_message_id").to_pylist() == ["m1", "m4", "m5", "m6"]
    assert table.column("eventType").to_pylist()[0] == "earliest"
    assert counter(result, "duplicates") == 3
    assert counter(result, f"duplicates.{DATASET}") == 3
    assert counter(result, f"lake_rows.{DATASET}") == 4
    assert counter(result, f"lake_files.{DATASET}") == 1


def test_the_same_input_in_any_order_writes_the_same_files(tmp_path):
    """Two runs into one lake, the second with its input shuffled, leave the same names and bytes, no temp files.

    ``m2``'s two keyless rows tie on every sort field, so their order comes from their content.
    """
    lake = str(tmp_path)
    rows = [lake_row(f"e{i}", at(i * 17), f"m{i}") for i in range(40)]
    rows += [lake_row(None, at(2), "m2", event_type="b"), lake_row(None, at(2), "m2", event_type="a")]
    run_batch(lake, rows)
    first = file_bytes(lake)

    shuffled = rows[:]
    random.Random(7).shuffle(shuffled)
    run_batch(lake, shuffled)

    assert file_bytes(lake) == first
    assert len(first) == 3
    assert temp_files(lake) == []


def test_a_second_run_of_the_same_rows_writes_nothing_and_counts_them_as_duplicates(tmp_path):
    lake = str(tmp_path)
    rows = [lake_row("e1", at(10), "m1"), lake_row("e2", at(20), "m2"), lake_row(None, at(20), "m3")]
    run_batch(lake, rows)
    before = file_bytes(lake)

    result = run_batch(lake, rows)

    assert file_bytes(lake) == before
    assert counter(result, "duplicates") == 3
    assert counter(result, f"lake_rows.{DATASET}") == 0
    assert counter(result, f"lake_files.{DATASET}") == 0


def test_a_pane_never_replaces_a_committed_pane_and_writes_only_what_the_lake_lacks(tmp_path):
    # A second run into the same window (a restart, another backfill), or a runner that lost the writer's state:
    # its new rows go to a pane of their own, its copies of committed rows nowhere.
    lake = str(tmp_path)
    run_batch(lake, [lake_row("e1", at(10), "m1"), lake_row("e2", at(20), "m2")])

    result = run_batch(lake, [lake_row("e3", at(30), "m3"), lake_row("e1", at(5), "m0")])

    assert lake_files(lake) == [f"{T0_NAME}-0-0-of-1.parquet", f"{T0_NAME}-1-0-of-1.parquet"]
    assert message_ids(lake, f"{T0_NAME}-0-0-of-1.parquet") == ["m1", "m2"]
    assert message_ids(lake, f"{T0_NAME}-1-0-of-1.parquet") == ["m3"]
    assert counter(result, "duplicates") == 1


def dead_writer(lake: str, *names: str) -> pathlib.Path:
    """The temporary folder and lock file a killed writer left (nobody holds the lock), holding files ``names``."""
    writer = f"writer-{uuid.uuid4().hex}"
    folder = pathlib.Path(lake, ".tmp", writer)
    folder.mkdir(parents=True)
    (folder.parent / f"{writer}.lock").touch()
    for name in names:
        (folder / name).write_bytes(b"PAR1 half a file")
    return folder


def test_a_killed_writers_temp_files_are_cleaned_and_nothing_else(tmp_path):
    lake = str(tmp_path)
    written = [f"{uuid.uuid4().hex}.parquet" for _ in range(2)]
    dead = dead_writer(lake, *written)
    kept = dead_writer(lake, *written, "notes.txt")
    (tmp_path / ".tmp" / "bystander.db").write_bytes(b"not the writer's")
    live = pathlib.Path(writer_temp_dir(lake))
    (live / written[0]).write_bytes(b"PAR1 in flight")

    assert clean_stale_temp_files(lake) == 4

    assert not dead.exists()
    assert sorted(path.name for path in kept.iterdir()) == ["notes.txt"]
    assert (tmp_path / ".tmp" / "bystander.db").read_bytes() == b"not the writer's"
    assert (live / written[0]).read_bytes() == b"PAR1 in flight"


def test_applying_the_writer_cleans_stale_temp_files(tmp_path):
    lake = str(tmp_path)
    dead = dead_writer(lake, f"{uuid.uuid4().hex}.parquet")

    run_batch(lake, [lake_row("e1", at(10), "m1")])

    assert not dead.exists()
    assert temp_files(lake) == []


@pytest.mark.parametrize("linked", [".tmp", DATASET])
def test_a_lake_folder_that_is_a_symbolic_link_is_refused_and_what_it_leads_to_left_alone(tmp_path, linked):
    bystanders = tmp_path / "elsewhere"
    bystanders.mkdir()
    for name, data in (("keep.db", b"db"), ("notes.txt", b"txt"), (f"{uuid.uuid4().hex}.parquet", b"PAR1")):
        (bystanders / name).write_bytes(data)
    before = {path.name: path.read_bytes() for path in bystanders.iterdir()}
    lake = tmp_path / "lake"
    lake.mkdir()
    (lake / linked).symlink_to(bystanders)

    with pytest.raises(LakeFolderError, match=f"{linked} is a symbolic link"):
        run_batch(str(lake), [lake_row("e1", at(10), "m1")])

    assert {path.name: path.read_bytes() for path in bystanders.iterdir()} == before


def test_a_partition_folder_that_is_a_symbolic_link_is_not_written_through(tmp_path):
    lake = tmp_path / "lake"
    (lake / DATASET / "date=2026-03-05").mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (lake / DATASET / "date=2026-03-05" / "hour=09").symlink_to(elsewhere)

    with pytest.raises(Exception, match="follows no link"):
        run_batch(str(lake), [lake_row("e1", at(10), "m1")])

    assert list(elsewhere.iterdir()) == []


def test_partitions_follow_the_window_start_in_utc(tmp_path):
    lake = str(tmp_path)
    rows = [
        lake_row("e1", datetime.datetime(2026, 3, 5, 9, 57, 30, tzinfo=UTC), "m1"),
        lake_row("e2", datetime.datetime(2026, 3, 5, 10, 0, 0, tzinfo=UTC), "m2"),
        lake_row("e3", datetime.datetime(2026, 3, 5, 23, 59, 59, tzinfo=UTC), "m3"),
        lake_row("e4", datetime.datetime(2026, 3, 6, 0, 0, 1, tzinfo=UTC), "m4"),
    ]

    run_batch(lake, rows)

    assert lake_files(lake) == [
        "date=2026-03-05/hour=09/part-20260305T095500Z-0-0-of-1.parquet",
        "date=2026-03-05/hour=10/part-20260305T100000Z-0-0-of-1.parquet",
        "date=2026-03-05/hour=23/part-20260305T235500Z-0-0-of-1.parquet",
        "date=2026-03-06/hour=00/part-20260306T000000Z-0-0-of-1.parquet",
    ]


def test_a_pane_over_max_rows_per_file_is_split_into_ordered_shards(tmp_path):
    lake = str(tmp_path)
    rows = [lake_row(f"e{i}", at(i), f"m{i}") for i in range(5)]

    run_batch(lake, rows, max_rows_per_file=2)

    shards = [f"{T0_NAME}-0-{shard}-of-3.parquet" for shard in range(3)]
    assert lake_files(lake) == shards
    assert [message_ids(lake, shard) for shard in shards] == [["m0", "m1"], ["m2", "m3"], ["m4"]]


def test_nested_columns_read_back_with_pyarrow_dataset_and_duckdb(tmp_path):
    lake = str(tmp_path)
    rows = [lake_row("e1", at(10), "m1"), lake_row("e2", at(4000), "m2")]
    run_batch(lake, rows)
    expected = pa.Table.from_pylist([row.row for row in rows], schema=SCHEMA).to_pylist()

    hive = ds.dataset(os.path.join(lake, DATASET), partitioning="hive").to_table().sort_by("_message_id")
    duck = (
        duckdb.sql(
            f"SELECT * FROM read_parquet('{lake}/{DATASET}/**/*.parquet', hive_partitioning=true) ORDER BY _message_id"
        )
        .to_arrow_table()
        .cast(hive.schema)  # DuckDB reads the partition keys as DATE and BIGINT, pyarrow as date32 and int32
    )

    assert hive.select(SCHEMA.names).to_pylist() == expected
    assert duck.select(SCHEMA.names).to_pylist() == expected
    assert hive.column("hour").to_pylist() == [9, 10]
    assert duck.column("hour").to_pylist() == [9, 10]


def test_lag_is_measured_from_the_oldest_rows_publish_time(tmp_path):
    lake = str(tmp_path)
    rows = [lake_row("e1", at(10), "m1"), lake_row("e2", at(40), "m2")]

    result = run_batch(lake, rows, clock=lambda: us(at(100)))

    lags = result.metrics().query(MetricsFilter().with_name(f"lake_lag_ms.{DATASET}"))["distributions"]
    assert [lag.committed.max for lag in lags] == [90_000]


# Construction.


@pytest.mark.parametrize("interval_s", [0, -300, 7, 7200])
def test_a_commit_interval_that_does_not_divide_an_hour_is_refused(interval_s):
    with pytest.raises(ValueError, match="divide an hour"):
        WriteToLake("lake", SCHEMAS, commit_interval_s=interval_s)


@pytest.mark.parametrize("name", ["_hidden", ".tmp", "a/b", ""])
def test_a_dataset_name_readers_would_skip_is_refused(name):
    with pytest.raises(ValueError, match="plain folder names"):
        WriteToLake("lake", {name: SCHEMA})


# Pure helpers.

SAMPLE_ROWS = [
    lake_row("e1", at(5), "m2"),
    lake_row("e1", at(5), "m1"),
    lake_row("e1", at(1), "m9"),
    lake_row("e2", at(3), "m3"),
    lake_row(None, at(3), "m3", event_type="x"),
    lake_row(None, at(3), "m3", event_type="y"),
]


@given(st.permutations(SAMPLE_ROWS))
def test_kept_rows_do_not_depend_on_input_order(rows):
    """Earliest copy of ``e1`` wins; ``m3``'s keyless rows sort before its keyed one, and by content between them."""
    assert _first_copies(_in_deterministic_order(rows)) == [
        SAMPLE_ROWS[2],
        SAMPLE_ROWS[4],
        SAMPLE_ROWS[5],
        SAMPLE_ROWS[3],
    ]


def test_a_day_of_streaming_leaves_no_state_for_the_windows_it_wrote(tmp_path):
    """A day of rows, a commit window after another, with processing time moving along: once a window's pane is
    written its key holds nothing (no buffer, no timer, nothing about what it wrote), so state is only ever held by
    the windows still open.

    State is read from the BundleBasedDirectRunner's own keyed state after the run: its evaluation context keeps, per
    transform and key, the state cells and timers the runner holds (Beam 2.77, private).
    """
    lake = str(tmp_path)
    windows = 24 * 3600 // INTERVAL_S
    stream = test_stream.TestStream().advance_watermark_to(Timestamp(micros=us(T0)))
    for window in range(windows):
        rows = [lake_row(f"e{window}-{n}", at(window * INTERVAL_S + n * 60), f"m{window}-{n}") for n in range(2)]
        stream = stream.add_elements([stamped(row) for row in rows]).advance_processing_time(INTERVAL_S + 1)
    pipeline = beam.Pipeline(runner=BundleBasedDirectRunner(), options=PipelineOptions([], streaming=True))
    _ = pipeline | stream | WriteToLake(lake, SCHEMAS, commit_interval_s=INTERVAL_S, clock=stream_clock)
    result = pipeline.run()
    result.wait_until_finish()

    (keyed,) = [
        states
        for transform, states in result._evaluation_context._transform_keyed_states.items()
        if transform.full_label.endswith("BufferAndWritePanes")
    ]
    assert len(keyed) == windows
    assert [key for key, held in keyed.items() if held.state or held.timers] == []
    assert len(lake_files(lake)) >= windows


def test_a_retried_bundle_counts_the_rows_its_first_attempt_committed_as_written(tmp_path):
    """The runner retries a bundle whose first attempt committed its files (and lost its counters): the retry reports
    those files, and the summary's counters, counted from them, say the rows the files hold, not duplicates."""
    lake = str(tmp_path)
    rows = [lake_row(f"e{i}", at(i), f"m{i}") for i in range(5)] + [lake_row("e0", at(9), "m9")]

    def attempt() -> PipelineResult:
        pipeline = beam.Pipeline(runner=FnApiRunner(), options=PipelineOptions([]))
        _ = (
            pipeline
            | beam.Create(rows)
            | beam.Map(lambda row: ((row.dataset, us(T0)), [row])).with_output_types(
                tuple[tuple[str, int], list[LakeRow]]
            )
            | beam.GroupByKey()
            | beam.ParDo(pane_writer(lake, "run-a"))
            | CountLakeFiles()
        )
        result = pipeline.run()
        result.wait_until_finish()
        return result

    attempt()
    retry = attempt()

    committed = sum(pq.read_metadata(os.path.join(lake, DATASET, name)).num_rows for name in lake_files(lake))
    assert committed == 5
    assert counter(retry, f"lake_rows.{DATASET}") == committed
    assert counter(retry, f"lake_files.{DATASET}") == len(lake_files(lake)) == 1
    assert counter(retry, "duplicates") == 1


def test_only_columns_that_hold_a_value_get_a_dictionary_page(tmp_path):
    run_batch(str(tmp_path), [lake_row(f"e{number}", at(number), f"m{number}", event_type=None) for number in range(5)])

    (name,) = lake_files(str(tmp_path))
    path = tmp_path / DATASET / name
    chunks = pq.ParquetFile(path).metadata.row_group(0)
    columns = [chunks.column(number) for number in range(chunks.num_columns)]
    with_dictionary = [column.path_in_schema for column in columns if column.has_dictionary_page]
    assert with_dictionary == [
        "_id",
        "timestamp",
        "web.webPageDetails.name",
        "web.webPageDetails.URL",
        "_message_id",
        "_ingest_time",
    ]
    assert pq.read_table(path).column("eventType").null_count == 5
