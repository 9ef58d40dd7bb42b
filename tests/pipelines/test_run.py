"""``profilestream run`` end to end: streaming and ``--batch`` replays, the summary line, and a killed run resumed."""

from __future__ import annotations

import base64
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import duckdb
import pytest

from pipelines import run_command
from pipelines.cli import main
from pipelines.summary import RunSummary
from tests.helpers import START, dataset_files, envelope, event, lake_rows, rest_line, stream_lines

# stream_lines: per minute of 10 messages, one is not JSON, one lacks its timestamp, one is a batch of 3 events,
# seven are single events, and the last of those is delivered twice.
MINUTES = 12
EXPECTED_MESSAGES = MINUTES * 11
EXPECTED_VALID = MINUTES * (7 + 3 + 1)
EXPECTED_FAILED = MINUTES * 2
EXPECTED_DUPLICATES = MINUTES


_EMPTY_SUMMARY = RunSummary(0, 0, 0, 0, 0, 0, 0, {}, {}, {})
DATASETS = ("experience_events", "profile_records", "failed_records", "identity_changes")

# Depend on when processing-time timers fire: a streaming run may flush a person more often than a batch run.
FLUSH_TIMED = ("profiles_written", "profile_freshness_ms")


def run_cli(capsys, *args: str) -> dict:
    """``profilestream run`` with the stores beside the lake (when one is given), so every run starts empty."""
    extra = stores_beside(Path(args[args.index("--lake") + 1])) if "--lake" in args else []
    assert main(["run", *args, *extra]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def stores_beside(lake: Path) -> list[str]:
    return [
        "--identity-store",
        f"sqlite:///{lake}.identity.sqlite",
        "--profile-store",
        f"sqlite:///{lake}.profiles.sqlite",
    ]


def profile_store_contents(lake: Path) -> dict[str, list]:
    return sqlite_contents(Path(f"{lake}.profiles.sqlite"))


def sqlite_contents(path: Path) -> dict[str, list]:
    """Every table of a SQLite store, each as its sorted rows."""
    with sqlite3.connect(path) as connection:
        tables = [name for (name,) in connection.execute("select name from sqlite_master where type = 'table'")]
        return {table: sorted(connection.execute(f"select * from {table}").fetchall()) for table in tables}


def test_streaming_replay_summary_balances_and_counts_every_message(small_stream, tmp_path, capsys):
    summary = run_cli(capsys, "--source", f"replay:{small_stream}", "--lake", str(tmp_path / "lake"))

    assert summary["messages"] == EXPECTED_MESSAGES
    assert summary["valid"] == EXPECTED_VALID
    assert summary["failed"] == EXPECTED_FAILED
    assert summary["records"] == summary["valid"] + summary["failed"]
    assert summary["duplicates"] == EXPECTED_DUPLICATES
    assert summary["lake"]["experience_events"]["rows"] == EXPECTED_VALID - EXPECTED_DUPLICATES
    assert summary["lake"]["failed_records"]["rows"] == EXPECTED_FAILED
    assert summary["failed_by_code"]["DECODE.NOT_JSON"] == MINUTES
    assert summary["failed_by_code"]["SCHEMA.REQUIRED"] == MINUTES


def test_streaming_and_batch_replays_write_the_same_lake(small_stream, tmp_path, capsys):
    streaming = run_cli(capsys, "--source", f"replay:{small_stream}", "--lake", str(tmp_path / "streaming"))
    batch = run_cli(
        capsys, "--source", f"replay:{small_stream}", "--lake", str(tmp_path / "batch"), "--batch", "--workers", "1"
    )

    assert {key: value for key, value in streaming.items() if key not in FLUSH_TIMED} == {
        key: value for key, value in batch.items() if key not in FLUSH_TIMED
    }
    assert streaming["profiles_written"] > 0 and batch["profiles_written"] > 0
    assert streaming["profile_freshness_ms"]["p99"] is not None
    assert profile_store_contents(tmp_path / "streaming") == profile_store_contents(tmp_path / "batch")
    for dataset in ("experience_events", "failed_records", "identity_changes"):
        assert lake_rows(tmp_path / "streaming", dataset) == lake_rows(tmp_path / "batch", dataset)
    assert dataset_files(tmp_path / "streaming") == dataset_files(tmp_path / "batch")


def test_a_batch_run_on_two_workers_writes_what_one_worker_writes(small_stream, tmp_path, capsys):
    """Each commit window is one worker's, so the files and rows are those of one worker."""
    one, two = tmp_path / "one", tmp_path / "two"
    by_one = run_cli(capsys, "--source", f"replay:{small_stream}", "--lake", str(one), "--batch", "--workers", "1")
    by_two = run_cli(capsys, "--source", f"replay:{small_stream}", "--lake", str(two), "--batch", "--workers", "2")

    unlike = (*FLUSH_TIMED, "lake")
    assert {key: value for key, value in by_one.items() if key not in unlike} == {
        key: value for key, value in by_two.items() if key not in unlike
    }
    for dataset in DATASETS:
        assert by_two["lake"][dataset]["rows"] == by_one["lake"][dataset]["rows"]
        assert lake_rows(one, dataset) == lake_rows(two, dataset)
    assert dataset_files(one) == dataset_files(two)
    assert profile_store_contents(one) == profile_store_contents(two)


def test_two_workers_keep_the_copy_of_a_duplicate_published_first(tmp_path, capsys):
    """Two copies of one event in one commit window, the later one where a worker that shared the lines by position
    had nothing else to read, so that it committed first and the lake kept the later copy. Shared by commit window,
    both copies reach one worker, which keeps the earlier one, as one worker does."""
    lines = [
        rest_line(envelope(event("twice", START)), "first", START),
        rest_line(envelope(event("twice", START)), "second", START + timedelta(seconds=1)),
    ]
    for n in range(600):
        lines += [rest_line(envelope(event(f"once-{n}", START)), f"m{n}", START + timedelta(seconds=2)), ""]
    replay = tmp_path / "replay.jsonl"
    replay.write_text("\n".join(lines) + "\n")

    summary = run_cli(
        capsys, "--source", f"replay:{replay}", "--lake", str(tmp_path / "lake"), "--batch", "--workers", "2"
    )

    rows = lake_rows(tmp_path / "lake", "experience_events")
    assert [row["_message_id"] for row in rows if row["_id"] == "twice"] == ["first"]
    assert summary["duplicates"] == 1 and len(rows) == 601


def test_batch_runs_take_a_worker_per_core_unless_told(small_stream, tmp_path, monkeypatch, capsys):
    asked = []
    monkeypatch.setattr(run_command, "run", lambda request, *_, **__: asked.append(request.workers) or _EMPTY_SUMMARY)
    monkeypatch.setattr(run_command.os, "sched_getaffinity", lambda _pid: {0, 1, 2}, raising=False)
    source = ("--source", f"replay:{small_stream}", "--lake", str(tmp_path / "lake"))

    for flags in ([], ["--batch"], ["--batch", "--workers", "5"]):
        assert main(["run", *source, *flags, *stores_beside(tmp_path / "lake")]) == 0

    assert asked == [1, 3, 5]


def test_a_replay_run_again_streaming_and_in_batch_adds_nothing_to_the_lake(small_stream, tmp_path, capsys):
    """What a user does with ``make run`` twice, then ``make run ARGS=--batch``, into one ``./data/``: the stream
    holds redeliveries, and its later runs find every row in the lake already (their ``_person_id`` would differ:
    the graph is already built)."""
    lake = tmp_path / "lake"
    arguments = ("--source", f"replay:{small_stream}", "--lake", str(lake))
    first = run_cli(capsys, *arguments)
    files, rows = dataset_files(lake), {name: lake_rows(lake, name) for name in DATASETS}

    again = [run_cli(capsys, *arguments), run_cli(capsys, *arguments, "--batch")]

    assert first["duplicates"] == EXPECTED_DUPLICATES
    for summary in again:
        assert summary["duplicates"] == EXPECTED_VALID
        assert {name: written["rows"] for name, written in summary["lake"].items()} == dict.fromkeys(DATASETS, 0)
        assert (summary["valid"], summary["failed"]) == (EXPECTED_VALID, EXPECTED_FAILED)
    assert dataset_files(lake) == files
    assert {name: lake_rows(lake, name) for name in DATASETS} == rows


def test_failed_records_the_lake_drops_as_repeats_are_counted(tmp_path, capsys):
    """Each bad message of the stream is delivered twice: the lake keeps each failure once, and the summary counts
    the other copy, so that ``failed`` is what ``failed_records`` holds plus ``failed_duplicates``."""
    lines = stream_lines(minutes=3, per_minute=10)
    # The lines that are not JSON, and those without a timestamp.
    bad = [line for line in lines if '"timestamp"' not in base64_payload(line)]
    stream = tmp_path / "stream.jsonl"
    stream.write_text("\n".join([*lines, *bad]) + "\n")
    lake = tmp_path / "lake"

    summary = run_cli(capsys, "--source", f"replay:{stream}", "--lake", str(lake))

    assert summary["failed"] == 2 * 3 * 2
    assert summary["failed_duplicates"] == 3 * 2
    assert len(lake_rows(lake, "failed_records")) + summary["failed_duplicates"] == summary["failed"]
    assert summary["lake"]["failed_records"]["rows"] == len(lake_rows(lake, "failed_records"))


def base64_payload(line: str) -> str:
    return base64.b64decode(json.loads(line)["data"]).decode(errors="replace")


def test_lake_reads_with_duckdb_hive_partitioning(small_stream, tmp_path, capsys):
    lake = tmp_path / "lake"
    run_cli(capsys, "--source", f"replay:{small_stream}", "--lake", str(lake), "--batch")

    count, hours, ids = duckdb.sql(
        f"select count(*), count(distinct hour), count(distinct _id) "
        f"from read_parquet('{lake}/experience_events/**/*.parquet', hive_partitioning=true)"
    ).fetchall()[0]
    assert count == ids == EXPECTED_VALID - EXPECTED_DUPLICATES
    assert hours == 1  # the stream spans 09:00-09:12


def test_failed_records_replay_into_the_same_failures(small_stream, tmp_path, capsys):
    lake = tmp_path / "lake"
    run_cli(capsys, "--source", f"replay:{small_stream}", "--lake", str(lake), "--batch")
    again = run_cli(capsys, "--source", f"replay:{lake / 'failed_records'}", "--lake", str(tmp_path / "again"))

    assert again["messages"] == EXPECTED_FAILED
    assert again["failed"] == EXPECTED_FAILED
    originals = {row["message_id"]: row["data"] for row in lake_rows(lake, "failed_records")}
    replayed = {row["message_id"]: row["data"] for row in lake_rows(tmp_path / "again", "failed_records")}
    assert replayed == originals


@pytest.mark.slow
def test_a_killed_replay_run_again_leaves_the_lake_of_one_clean_run(tmp_path, capsys):
    stream = tmp_path / "stream.jsonl"
    stream.write_text("\n".join(stream_lines(minutes=120, per_minute=4)) + "\n")
    command = [sys.executable, "-m", "pipelines.cli", "run", "--source", f"replay:{stream}", "--commit-interval", "60"]
    killed_lake = tmp_path / "killed"

    killed = [*command, "--lake", str(killed_lake), *stores_beside(killed_lake)]
    clean = [*command, "--lake", str(tmp_path / "clean"), *stores_beside(tmp_path / "clean")]
    process = subprocess.Popen(killed, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not list(killed_lake.rglob("*.parquet")) and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    was_running = process.poll() is None
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    if not was_running:
        pytest.skip("the run finished before it could be killed")
    subprocess.run(killed, check=True, capture_output=True)
    subprocess.run(clean, check=True, capture_output=True)

    assert dataset_files(killed_lake) == dataset_files(tmp_path / "clean")
    for dataset in ("experience_events", "failed_records", "identity_changes"):
        assert lake_rows(killed_lake, dataset) == lake_rows(tmp_path / "clean", dataset)
    assert profile_store_contents(killed_lake) == profile_store_contents(tmp_path / "clean")
    assert not [path for path in (killed_lake / ".tmp").rglob("*") if path.is_file()]


def test_resolves_relative_lake_against_working_directory(small_stream, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    summary = run_cli(capsys, "--source", f"replay:{small_stream}", "--batch")

    assert summary["lake"]["experience_events"]["files"] > 0
    assert any(Path("data/lake/experience_events").rglob("*.parquet"))
    assert Path("data/identity.sqlite").is_file() and Path("data/profiles.sqlite").is_file()
