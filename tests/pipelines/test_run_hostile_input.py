"""``profilestream run --batch`` on hostile replay lines (issue 12): each is one failed record with its own code, the
lake keeps a bounded prefix of a payload too large, never the payload, and no partition lies before 1970 or after
the run.

The lines: a 1 MiB batch envelope of 524,278 ones (once 524,278 failed records and 1.9 GB of RSS), REST-form
messages published in year 1 (once the partition ``date=1-01-01``) and in year 9999 (once accepted as valid), one
valid event, and a line longer than a replay reads whole.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from pathlib import Path

from core.records import ORIGINAL_BYTES_ATTRIBUTE, ORIGINAL_SHA256_ATTRIBUTE
from messages.decoding import BATCH_TOO_LARGE, FAILED_PREFIX_BYTES, PUBLISH_TIME_OUT_OF_RANGE, TOO_LARGE
from messages.replay_files import max_line_bytes
from tests.helpers import START, dataset_files, envelope, event, lake_rows, rest_line
from tests.pipelines.test_run import run_cli

HALF_A_MILLION_ONES = b'{"messages":[' + b",".join([b"1"] * 524_278) + b"]}"
LONGER_THAN_A_REPLAY_READS = b'{"_id":"' + b"x" * max_line_bytes() + b'"}'


def hostile_replay(path: Path) -> Path:
    def published(message_id: str, at: datetime) -> bytes:
        return rest_line(envelope(event(f"e-{message_id}", START)), message_id, at).encode()

    lines = [
        HALF_A_MILLION_ONES,
        published("year-1", datetime(1, 1, 1, tzinfo=UTC)),
        published("year-9999", datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)),
        published("in-range", START),
        LONGER_THAN_A_REPLAY_READS,
    ]
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def test_each_hostile_line_is_one_failed_record_with_its_code(tmp_path, capsys):
    lake = tmp_path / "lake"
    summary = run_cli(capsys, "--source", f"replay:{hostile_replay(tmp_path / 'hostile.jsonl')}", "--lake", str(lake))

    failed = {row["message_id"]: row for row in lake_rows(lake, "failed_records")}
    assert {message_id: [error["code"] for error in row["errors"]] for message_id, row in failed.items()} == {
        "1": [BATCH_TOO_LARGE],
        "year-1": [PUBLISH_TIME_OUT_OF_RANGE],
        "year-9999": [PUBLISH_TIME_OUT_OF_RANGE],
        "5": [TOO_LARGE],
    }
    assert (summary["messages"], summary["failed"], summary["valid"]) == (5, 4, 1)
    assert [row["_id"] for row in lake_rows(lake, "experience_events")] == ["e-in-range"]


def test_a_line_too_long_keeps_its_prefix_length_and_digest_and_the_batch_its_bytes(tmp_path, capsys):
    lake = tmp_path / "lake"
    run_cli(capsys, "--source", f"replay:{hostile_replay(tmp_path / 'hostile.jsonl')}", "--lake", str(lake), "--batch")

    failed = {row["message_id"]: row for row in lake_rows(lake, "failed_records")}
    long_line = failed["5"]
    assert (long_line["data"], dict(long_line["attributes"])) == (
        LONGER_THAN_A_REPLAY_READS[:FAILED_PREFIX_BYTES],
        {
            ORIGINAL_BYTES_ATTRIBUTE: str(len(LONGER_THAN_A_REPLAY_READS)),
            ORIGINAL_SHA256_ATTRIBUTE: hashlib.sha256(LONGER_THAN_A_REPLAY_READS).hexdigest(),
        },
    )
    assert failed["1"]["data"] == HALF_A_MILLION_ONES


def test_no_partition_lies_before_1970_or_after_the_run(tmp_path, capsys):
    lake = tmp_path / "lake"
    run_cli(capsys, "--source", f"replay:{hostile_replay(tmp_path / 'hostile.jsonl')}", "--lake", str(lake), "--batch")

    years = {
        int(part.removeprefix("date=").split("-")[0])
        for file in dataset_files(lake)
        for part in Path(file).parts
        if part.startswith("date=")
    }
    assert years and all(1970 <= year <= datetime.now(UTC).year for year in years), years
