"""Tests for transforms/replay.py: the file readers, path expansion and the ReadReplay transform on both runners."""

import base64
import codecs
import datetime
import hashlib
import json
import subprocess
import sys

import apache_beam as beam
import fastavro
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.metrics import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.runners.direct.direct_runner import BundleBasedDirectRunner
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.util import assert_that, equal_to

from core.clock import parse_rfc3339_us
from core.records import ORIGINAL_BYTES_ATTRIBUTE, ORIGINAL_SHA256_ATTRIBUTE, REPLAY_ERROR_ATTRIBUTE, Message
from messages.decoding import FAILED_PREFIX_BYTES, TOO_LARGE
from messages.replay_files import (
    CHUNK_BYTES,
    ReplayFormatError,
    ReplayPathError,
    Share,
    expand_replay_path,
    max_line_bytes,
    read_replay_file,
)
from transforms.replay import ReadReplay

READ_TIME_US = 1_800_000_000_000_000
T0_US = 1_793_523_600_000_000  # 2026-11-01T09:00:00Z
ENVELOPE = b'{"header":{"schemaRef":{"id":"https://ns.adobe.com/xdm/context/experienceevent"}},"body":{}}'
AVRO_SUBSCRIPTION_SCHEMA = {
    "type": "record",
    "name": "PubsubMessage",
    "fields": [
        {"name": "subscription_name", "type": "string"},
        {"name": "message_id", "type": "string"},
        {"name": "publish_time", "type": {"type": "long", "logicalType": "timestamp-micros"}},
        {"name": "attributes", "type": {"type": "map", "values": "string"}},
        {"name": "data", "type": "bytes"},
    ],
}


def fixed_clock() -> int:
    return READ_TIME_US


def rest_line(data: bytes, **fields: object) -> bytes:
    return json.dumps({"data": base64.b64encode(data).decode(), **fields}).encode()


def write_lines(path, *lines: bytes) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    return str(path)


def read(path: str) -> list[Message]:
    return list(read_replay_file(path, clock=fixed_clock))


def write_failed_records(path, rows: list[dict]) -> str:
    schema = pa.schema(
        [
            ("data", pa.binary()),
            ("attributes", pa.map_(pa.string(), pa.string())),
            ("message_id", pa.string()),
            ("publish_time", pa.timestamp("us", tz="UTC")),
            ("stage", pa.string()),
        ]
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    return str(path)


def failed_row(message_id: str, publish_time_us: int, attributes: dict | None = None) -> dict:
    return {
        "data": ENVELOPE,
        "attributes": list((attributes or {}).items()),
        "message_id": message_id,
        "publish_time": datetime.datetime.fromtimestamp(publish_time_us / 1e6, datetime.UTC),
        "stage": "validate",
    }


@pytest.mark.parametrize(
    ("text", "expected_us"),
    [
        ("2026-11-01T09:00:00Z", T0_US),
        ("2026-11-01T09:00:00.5Z", T0_US + 500_000),
        ("2026-11-01T09:00:01.123456789Z", T0_US + 1_123_456),
        ("2026-11-01t11:00:00.000001+02:00", T0_US + 1),
        ("2026-11-01T04:30:00-04:30", T0_US),
        ("1969-12-31T23:59:59.999999z", -1),
    ],
)
def test_parse_rfc3339_truncates_to_microseconds_and_applies_offsets(text, expected_us):
    assert parse_rfc3339_us(text) == expected_us


@pytest.mark.parametrize("text", ["2026-11-01T09:00:00", "2026-11-01", "2026-13-01T09:00:00Z", "x2026-11-01T09:00:00Z"])
def test_parse_rfc3339_rejects_what_is_not_an_rfc3339_date_time(text):
    with pytest.raises(ValueError):
        parse_rfc3339_us(text)


def test_rest_form_line_gives_decoded_data_attributes_id_and_publish_time(tmp_path):
    path = write_lines(
        tmp_path / "rest.jsonl",
        rest_line(
            ENVELOPE,
            attributes={"schemaRef": "https://ns.adobe.com/xdm/context/profile"},
            messageId="4821",
            publishTime="2026-11-01T09:00:00.000001999Z",
            orderingKey="person-1",
        ),
    )
    assert read(path) == [
        Message(ENVELOPE, {"schemaRef": "https://ns.adobe.com/xdm/context/profile"}, "4821", T0_US + 1, READ_TIME_US)
    ]


def test_rest_form_without_id_or_publish_time_takes_line_number_and_read_time(tmp_path):
    path = write_lines(tmp_path / "rest.jsonl", b"", json.dumps({"attributes": {"a": "b"}}).encode())
    assert read(path) == [Message(b"", {"a": "b"}, "2", READ_TIME_US, READ_TIME_US)]


def test_rest_form_accepts_url_safe_and_unpadded_base64(tmp_path):
    path = write_lines(tmp_path / "rest.jsonl", b'{"data": "-_8"}', b'{"data": "+/8="}')
    assert [message.data for message in read(path)] == [b"\xfb\xff", b"\xfb\xff"]


def test_bad_base64_keeps_the_line_as_a_message_marked_for_the_decode_stage(tmp_path):
    path = write_lines(
        tmp_path / "rest.jsonl",
        b'{"data": "not base64!", "attributes": {"k": "v"}, "messageId": "m1", "publishTime": "2026-11-01T09:00:00Z"}',
    )
    assert read(path) == [
        Message(b"not base64!", {"k": "v", REPLAY_ERROR_ATTRIBUTE: "DECODE.BASE64"}, "m1", T0_US, READ_TIME_US)
    ]


def test_bare_lines_are_payloads_numbered_by_line_and_blank_lines_are_skipped(tmp_path):
    lines = [
        ENVELOPE,
        b"   ",
        b"[1, 2]",
        b'"just a string"',
        b"not json at all",
        b"\xff\xfe invalid utf-8 {",
        b"",
        b"[" * 100_000,
    ]
    path = write_lines(tmp_path / "bare.jsonl", *lines)
    assert read(path) == [
        Message(lines[index - 1], {}, str(index), READ_TIME_US, READ_TIME_US) for index in (1, 3, 4, 5, 6, 8)
    ]


@pytest.mark.parametrize(
    "line",
    [
        b'{"data": "QQ==", "extra": 1}',
        b'{"messageId": "m1", "publishTime": "2026-11-01T09:00:00Z"}',
        b'{"data": 5}',
        b'{"data": "QQ==", "attributes": {"n": 1}}',
        b'{"data": "QQ==", "attributes": {"nested": {"a": "b"}}}',
        b'{"data": "QQ==", "messageId": 7}',
        b'{"data": "QQ==", "publishTime": "yesterday"}',
        b'{"data": "QQ==", "attributes": {"lone": "\\ud800"}}',
        b"{}",
    ],
)
def test_objects_that_are_not_rest_form_are_bare_payloads(tmp_path, line):
    path = write_lines(tmp_path / "bare.jsonl", line)
    assert read(path) == [Message(line, {}, "1", READ_TIME_US, READ_TIME_US)]


def test_crlf_line_ends_and_a_leading_byte_order_mark_are_not_payload(tmp_path):
    path = tmp_path / "crlf.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + rest_line(b"a", messageId="m1") + b"\r\n" + b"plain\r\nlast")
    assert [(message.message_id, message.data) for message in read(str(path))] == [
        ("m1", b"a"),
        ("2", b"plain"),
        ("3", b"last"),
    ]


def test_two_reads_of_a_rest_form_file_give_the_same_messages_but_for_read_time(tmp_path):
    lines = [rest_line(b"%d" % n, messageId=str(n), publishTime=f"2026-11-01T09:00:0{n}Z") for n in range(5)]
    path = write_lines(tmp_path / "rest.jsonl", *lines)
    first = list(read_replay_file(path, clock=lambda: 1))
    second = list(read_replay_file(path, clock=lambda: 2))
    assert [message.read_time_us for message in second] == [2] * 5
    assert first == [Message(m.data, m.attributes, m.message_id, m.publish_time_us, 1) for m in second]


def test_avro_container_in_the_cloud_storage_subscription_format(tmp_path):
    path = tmp_path / "subscription.avro"
    with open(path, "wb") as out:
        fastavro.writer(
            out,
            AVRO_SUBSCRIPTION_SCHEMA,
            [
                {
                    "subscription_name": "projects/p/subscriptions/s",
                    "message_id": "9001",
                    "publish_time": datetime.datetime(2026, 11, 1, 9, 0, 0, 250, tzinfo=datetime.UTC),
                    "attributes": {"schemaRef": "https://ns.adobe.com/xdm/context/profile"},
                    "data": b"\x00\x01 binary",
                },
                {
                    "subscription_name": "projects/p/subscriptions/s",
                    "message_id": "9002",
                    "publish_time": T0_US + 1_000_000,
                    "attributes": {},
                    "data": ENVELOPE,
                },
            ],
        )
    assert read(str(path)) == [
        Message(
            b"\x00\x01 binary",
            {"schemaRef": "https://ns.adobe.com/xdm/context/profile"},
            "9001",
            T0_US + 250,
            READ_TIME_US,
        ),
        Message(ENVELOPE, {}, "9002", T0_US + 1_000_000, READ_TIME_US),
    ]


def test_avro_without_metadata_numbers_records_and_takes_the_read_time(tmp_path):
    path = tmp_path / "data-only.avro"
    schema = {"type": "record", "name": "PubsubMessage", "fields": [{"name": "data", "type": "bytes"}]}
    with open(path, "wb") as out:
        fastavro.writer(out, schema, [{"data": b"a"}, {"data": b"b"}])
    assert read(str(path)) == [
        Message(b"a", {}, "1", READ_TIME_US, READ_TIME_US),
        Message(b"b", {}, "2", READ_TIME_US, READ_TIME_US),
    ]


def test_failed_records_parquet_replays_without_the_replay_error_marker(tmp_path):
    path = write_failed_records(
        tmp_path / "part-0.parquet",
        [
            failed_row("m1", T0_US + 7, {"schemaRef": "x", REPLAY_ERROR_ATTRIBUTE: "DECODE.BASE64"}),
            failed_row("m2", T0_US + 8),
        ],
    )
    assert read(path) == [
        Message(ENVELOPE, {"schemaRef": "x"}, "m1", T0_US + 7, READ_TIME_US),
        Message(ENVELOPE, {}, "m2", T0_US + 8, READ_TIME_US),
    ]


def test_parquet_without_a_data_column_is_refused(tmp_path):
    path = tmp_path / "other.parquet"
    pq.write_table(pa.table({"_id": ["a"]}), path)
    with pytest.raises(ReplayFormatError, match="no data column"):
        read(str(path))


def test_failed_records_dataset_directory_is_read_recursively_skipping_hidden_names(tmp_path):
    dataset = tmp_path / "lake" / "failed_records"
    late = write_failed_records(dataset / "date=2026-11-01" / "hour=10" / "part-b.parquet", [failed_row("m3", 3)])
    early = write_failed_records(dataset / "date=2026-11-01" / "hour=09" / "part-a.parquet", [failed_row("m1", 1)])
    write_failed_records(dataset / ".tmp" / "part-partial.parquet", [failed_row("tmp", 1)])
    write_failed_records(dataset / "date=2026-11-01" / "hour=09" / ".part-c.parquet", [failed_row("hidden", 1)])
    (dataset / "_SUCCESS").write_bytes(b"")
    assert expand_replay_path(str(dataset)) == [early, late]
    assert [message.message_id for path in expand_replay_path(str(dataset)) for message in read(path)] == ["m1", "m3"]


def test_glob_expands_to_sorted_files_and_directories_below_it(tmp_path):
    second = write_lines(tmp_path / "b.jsonl", b"x")
    first = write_lines(tmp_path / "a.jsonl", b"x")
    nested = write_lines(tmp_path / "c" / "d.jsonl", b"x")
    write_lines(tmp_path / "a.txt", b"x")
    assert expand_replay_path(str(tmp_path / "*.jsonl")) == [first, second]
    assert expand_replay_path(str(tmp_path / "[bc]*")) == [second, nested]
    assert expand_replay_path(str(tmp_path / "**" / "*.jsonl")) == [first, second, nested]


def test_a_file_path_is_itself(tmp_path):
    path = write_lines(tmp_path / "one.jsonl", b"x")
    assert expand_replay_path(path) == [path]


@pytest.mark.parametrize("name", ["missing.jsonl", "*.avro", "empty"])
def test_a_path_that_names_no_file_raises_a_one_line_error(tmp_path, name):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / ".hidden").write_bytes(b"x")
    with pytest.raises(ReplayPathError) as error:
        expand_replay_path(str(tmp_path / name))
    assert str(error.value) == f"replay path matches no file: {tmp_path / name}"


def test_read_replay_fails_at_construction_on_a_bad_path(tmp_path):
    with pytest.raises(ReplayPathError):
        ReadReplay(str(tmp_path / "nothing-here"))


def replay_fixture(tmp_path) -> tuple[str, list[tuple[str, int]]]:
    """A directory of one JSONL file and one Avro file, and the (message id, publish time) of each message."""
    write_lines(
        tmp_path / "a.jsonl",
        rest_line(b"1", messageId="j1", publishTime="2026-11-01T09:00:00.000001Z"),
        rest_line(b"2", messageId="j2", publishTime="2026-11-01T10:59:59.999999Z"),
    )
    with open(tmp_path / "b.avro", "wb") as out:
        fastavro.writer(
            out,
            AVRO_SUBSCRIPTION_SCHEMA,
            [
                {
                    "subscription_name": "s",
                    "message_id": "a1",
                    "publish_time": T0_US + 300_000_001,
                    "attributes": {},
                    "data": b"3",
                }
            ],
        )
    return str(tmp_path), [("j1", T0_US + 1), ("j2", T0_US + 7_199_999_999), ("a1", T0_US + 300_000_001)]


def run_and_check_timestamps(tmp_path, runner, options: PipelineOptions) -> None:
    path, expected = replay_fixture(tmp_path)
    with beam.Pipeline(runner=runner, options=options) as pipeline:
        stamped = (
            pipeline
            | ReadReplay(path, clock=fixed_clock)
            | beam.Map(
                lambda message, ts=beam.DoFn.TimestampParam: (message.message_id, message.publish_time_us, ts.micros)
            )
        )
        assert_that(stamped, equal_to([(message_id, time_us, time_us) for message_id, time_us in expected]))
    counters = pipeline.result.metrics().query(MetricsFilter().with_name("replay_messages"))["counters"]
    assert sum(counter.committed for counter in counters) == len(expected)


def test_read_replay_stamps_elements_with_publish_time_in_streaming_on_the_direct_runner(tmp_path):
    options = PipelineOptions()
    options.view_as(StandardOptions).streaming = True
    run_and_check_timestamps(tmp_path, BundleBasedDirectRunner(), options)


def test_read_replay_stamps_elements_with_publish_time_in_batch_on_the_fn_api_runner(tmp_path):
    run_and_check_timestamps(tmp_path, FnApiRunner(), PipelineOptions())


def test_read_replay_stamps_a_message_with_its_read_time_when_its_publish_time_is_out_of_range(tmp_path):
    # Decoding fails such a message (DECODE.PUBLISH_TIME_OUT_OF_RANGE); its failed record must not land in year 1.
    path = write_lines(
        tmp_path / "dates.jsonl",
        rest_line(b"1", messageId="year-1", publishTime="0001-01-01T00:00:00Z"),
        rest_line(b"2", messageId="year-9999", publishTime="9999-12-31T23:59:59Z"),
        rest_line(b"3", messageId="in-range", publishTime="2026-11-01T09:00:00Z"),
    )
    with beam.Pipeline(runner=FnApiRunner()) as pipeline:
        stamped = (
            pipeline
            | ReadReplay(path, clock=fixed_clock)
            | beam.Map(lambda message, ts=beam.DoFn.TimestampParam: (message.message_id, ts.micros))
        )
        assert_that(stamped, equal_to([("year-1", READ_TIME_US), ("year-9999", READ_TIME_US), ("in-range", T0_US)]))


# Long lines: memory bounded whatever a line holds


def cut_attributes(line: bytes) -> dict[str, str]:
    return {ORIGINAL_BYTES_ATTRIBUTE: str(len(line)), ORIGINAL_SHA256_ATTRIBUTE: hashlib.sha256(line).hexdigest()}


def test_a_line_of_the_longest_length_is_read_whole(tmp_path):
    line = b'{"_id":"' + b"x" * (max_line_bytes() - 10) + b'"}'
    assert len(line) == max_line_bytes()
    path = write_lines(tmp_path / "long.jsonl", line, b"{}")
    assert read(path) == [
        Message(line, {}, "1", READ_TIME_US, READ_TIME_US),
        Message(b"{}", {}, "2", READ_TIME_US, READ_TIME_US),
    ]


def test_a_line_one_byte_longer_is_cut_to_a_prefix_with_the_length_and_sha256_of_the_whole(tmp_path):
    line = b'{"_id":"' + b"x" * (max_line_bytes() - 9) + b'"}'
    path = write_lines(tmp_path / "long.jsonl", line, b"{}")
    assert read(path) == [
        Message(line[:FAILED_PREFIX_BYTES], cut_attributes(line), "1", READ_TIME_US, READ_TIME_US),
        Message(b"{}", {}, "2", READ_TIME_US, READ_TIME_US),
    ]


@pytest.mark.parametrize(
    "ending",
    [
        b"\r\n",  # the "\r" of the line end ends a chunk; the "\n" comes alone in the next
        b"\r\r\n",  # one "\r" is the line's, the other the line end's
        b"\ry\n",  # a "\r" ending a chunk that is the line's own
        b"\r",  # the last line, ending without "\n"
    ],
)
def test_a_cut_line_reads_its_line_end_across_chunks_as_a_whole_line_would(tmp_path, ending):
    # The first read takes max_line_bytes() + 2 bytes, each later one CHUNK_BYTES: the "\r" ends the second.
    body = b"x" * (max_line_bytes() + 1 + CHUNK_BYTES)
    path = tmp_path / "long.jsonl"
    path.write_bytes(body + ending)
    line = (body + ending).removesuffix(b"\n").removesuffix(b"\r")
    assert read(str(path)) == [
        Message(line[:FAILED_PREFIX_BYTES], cut_attributes(line), "1", READ_TIME_US, READ_TIME_US)
    ]


def test_a_cut_first_line_loses_its_byte_order_mark_as_a_whole_one_does(tmp_path):
    line = b"y" * (max_line_bytes() + 5)
    path = tmp_path / "long.jsonl"
    path.write_bytes(codecs.BOM_UTF8 + line + b"\n")
    assert read(str(path)) == [
        Message(line[:FAILED_PREFIX_BYTES], cut_attributes(line), "1", READ_TIME_US, READ_TIME_US)
    ]


def test_the_longest_line_follows_the_maximum_message_size(tmp_path):
    line = b"z" * (max_line_bytes(10) + 1)
    path = write_lines(tmp_path / "long.jsonl", line)
    [message] = read_replay_file(path, clock=fixed_clock, max_message_bytes=10)
    assert message.attributes == cut_attributes(line)


@pytest.mark.slow
def test_a_300_mb_line_is_read_and_decoded_in_bounded_memory(tmp_path):
    # Issue 12: a 299 MB replay line was stored whole in failed_records and took the run to 3.2 GB RSS.
    path = tmp_path / "huge.jsonl"
    digest = hashlib.sha256()
    block = b'{"messages":[' + b"1," * (4 * 1024 * 1024)
    with path.open("wb") as out:
        for _ in range(36):  # 36 blocks of 8 MiB and a bit: about 300 MB
            out.write(block)
            digest.update(block)
        out.write(b"\n{}\n")
    size = path.stat().st_size - 4
    child = subprocess.run(
        [sys.executable, "-c", MEASURE_REPLAY, str(path)], capture_output=True, text=True, timeout=120, check=True
    )
    measured = json.loads(child.stdout)
    print(f"replay of a {size:,}-byte line: peak RSS {measured['growth_kib'] / 1024:.1f} MiB above the baseline")
    assert measured["outputs"] == [
        [
            "1",
            [TOO_LARGE],
            FAILED_PREFIX_BYTES,
            {ORIGINAL_BYTES_ATTRIBUTE: str(size), ORIGINAL_SHA256_ATTRIBUTE: digest.hexdigest()},
        ],
        ["2", ["DECODE.NO_SCHEMA_REF"], 2, {}],
    ]
    assert measured["growth_kib"] < 200 * 1024


# Runs in a child process, so that its peak RSS is the replay's alone: reads a file, decodes every message, keeps
# every output, then prints the outputs and how far the peak RSS rose above the RSS the imports left. Writing 5 to
# clear_refs resets the peak (Linux 4.0 on), which the imports would otherwise set.
MEASURE_REPLAY = """
import json, pathlib, re, sys
from messages.decoding import decode_message
from messages.replay_files import read_replay_file

def kib(name):
    return int(re.search(name + r":\\s+(\\d+) kB", pathlib.Path("/proc/self/status").read_text())[1])

pathlib.Path("/proc/self/clear_refs").write_text("5")
baseline_kib = kib("VmRSS")
outputs = [
    output
    for message in read_replay_file(sys.argv[1], clock=lambda: 1_800_000_000_000_000)
    for output in decode_message(message, lambda schema_id: None)
]
growth_kib = kib("VmHWM") - baseline_kib
summary = [[o.message_id, [e.code for e in o.errors], len(o.data), dict(o.attributes)] for o in outputs]
print(json.dumps({"growth_kib": growth_kib, "outputs": summary}))
"""


@pytest.mark.parametrize("count", [1, 2, 3])
def test_the_shares_of_a_file_hold_every_message_once_in_file_order(tmp_path, count):
    jsonl = write_lines(tmp_path / "stream.jsonl", *(rest_line(b"m%d" % number) for number in range(7)), b"", b"x")
    avro = tmp_path / "data-only.avro"
    with open(avro, "wb") as out:
        schema = {"type": "record", "name": "PubsubMessage", "fields": [{"name": "data", "type": "bytes"}]}
        fastavro.writer(out, schema, [{"data": b"a%d" % number} for number in range(5)])
    for path in (jsonl, str(avro)):
        shares = [list(read_replay_file(path, clock=fixed_clock, share=Share(index, count))) for index in range(count)]

        assert sorted((message for share in shares for message in share), key=lambda m: int(m.message_id)) == read(path)
        for share in shares:
            assert [int(message.message_id) for message in share] == sorted(int(m.message_id) for m in share)


@pytest.mark.parametrize("count", [2, 3])
def test_shares_by_commit_window_give_each_window_to_one_reader_and_the_rest_by_position(tmp_path, count):
    window_us = 300_000_000
    # Seconds 0, 150, 300, ...: two lines a window, over seven windows; then lines without a publish time.
    published = [
        rest_line(
            b"m%d" % number,
            messageId=str(number + 1),
            publishTime=f"2026-11-01T09:{number * 150 // 60:02d}:{number * 150 % 60:02d}Z",
        )
        for number in range(14)
    ]
    path = write_lines(tmp_path / "stream.jsonl", *published, b"", b"raw", b'{"not": "rest"}')
    every = read(path)

    shares = [
        list(read_replay_file(path, clock=fixed_clock, share=Share(index, count, window_us))) for index in range(count)
    ]

    assert sorted((message for share in shares for message in share), key=lambda m: int(m.message_id)) == every
    for index, share in enumerate(shares):
        for message in share:
            if message.publish_time_us != READ_TIME_US:
                assert message.publish_time_us // window_us % count == index
            else:
                assert (int(message.message_id) - 1) % count == index
