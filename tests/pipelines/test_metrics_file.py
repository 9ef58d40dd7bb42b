"""``profilestream run --metrics-file`` (:mod:`pipelines.metrics_file`): the run summary written while the run goes
on and once it has ended, in the form ``serve``'s console reads (:mod:`service.pipeline_metrics`)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from pipelines.cli import main
from pipelines.metrics_file import live_snapshots
from pipelines.summary import summary_of
from transforms import metrics

AT_US = 1_796_000_000_000_000
COUNTERS = {metrics.MESSAGES: 7, metrics.DECODED_ENTITIES: 7, metrics.VALID: 6, metrics.VALIDATE_FAILED: 1}


def summarise(values):
    return summary_of(values, datasets=["experience_events"])


def snapshot_written(path: Path, counted, timeout_s: float = 10.0) -> dict:
    """The first snapshot ``live_snapshots`` writes to ``path`` while inside it."""
    written = threading.Event()

    def counted_then_noted():
        values = counted()
        written.set()
        return values

    with live_snapshots(str(path), counted_then_noted, summarise, interval_s=0.01, clock=lambda: AT_US):
        assert written.wait(timeout_s)
        # The write that follows the read lands before the writer stops.
    return json.loads(path.read_text())


def test_a_running_pipeline_s_summary_is_written_marked_running(tmp_path):
    snapshot = snapshot_written(tmp_path / "metrics.json", lambda: COUNTERS)
    assert snapshot["running"] is True
    assert snapshot["at"] == "2026-11-30T00:53:20Z"
    assert snapshot["summary"] == summarise(COUNTERS).as_json()


def test_a_read_that_fails_skips_its_turn(tmp_path):
    path = tmp_path / "metrics.json"
    reads = iter([RuntimeError("dictionary changed size during iteration")])

    def counted():
        error = next(reads, None)
        if error is not None:
            raise error
        return COUNTERS

    assert snapshot_written(path, counted)["summary"]["messages"] == 7


def test_without_a_path_nothing_is_written(tmp_path):
    with live_snapshots(None, lambda: pytest.fail("read without a path"), summarise, interval_s=0.01):
        pass
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "mode", [[], ["--batch", "--workers", "1"], ["--batch", "--workers", "2"]], ids=["streaming", "batch", "workers"]
)
def test_a_run_ends_with_its_summary_in_the_metrics_file(tmp_path, small_stream, capsys, mode):
    path = tmp_path / "metrics.json"
    args = ["run", "--source", f"replay:{small_stream}", "--lake", str(tmp_path / "lake"), "--metrics-file", str(path)]
    args += ["--identity-store", f"sqlite:///{tmp_path}/identity.sqlite"]
    args += ["--profile-store", f"sqlite:///{tmp_path}/profiles.sqlite"]
    assert main(args + mode) == 0
    printed = json.loads(capsys.readouterr().out.splitlines()[-1])
    snapshot = json.loads(path.read_text())
    assert snapshot["running"] is False
    assert snapshot["summary"] == printed
    assert [file.name for file in tmp_path.iterdir() if file.name.startswith(".metrics-")] == []


def test_a_metrics_file_in_a_folder_that_does_not_exist_is_a_usage_error(tmp_path, small_stream, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "no" / "metrics.json"
    assert main(["run", "--source", f"replay:{small_stream}", "--metrics-file", str(path)]) == 2
    assert "--metrics-file" in capsys.readouterr().err
