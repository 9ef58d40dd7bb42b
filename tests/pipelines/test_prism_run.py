"""``profilestream run`` on Prism, Beam's Go local runner: the same lake and profile store as the DirectRunner.

Prism is the binary ``make prism`` builds; without it the test is skipped, except under CI (``CI=true``), where that
is a failure. Each run is a separate process, killed with its Prism server if it outlives ``RUN_TIMEOUT_S``: a
streaming job that still holds a processing-time timer does not finish on Prism.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.local_runner import prism_binary
from tests.pipelines.conftest import dataset_files, lake_rows
from tests.pipelines.test_run import profile_store_contents, stores_beside

PRISM = prism_binary()
RUN_TIMEOUT_S = 120

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def prism() -> Path:
    if not os.access(PRISM, os.X_OK):
        reason = f"no Prism binary at {PRISM} (make prism)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return PRISM


def run_replay(stream: Path, lake: Path, *runner_args: str) -> None:
    """A streaming replay of ``stream`` into ``lake`` and stores beside it, in its own process group."""
    command = [sys.executable, "-m", "pipelines.cli", "run", "--source", f"replay:{stream}", "--lake", str(lake)]
    process = subprocess.Popen(
        [*command, *stores_beside(lake), *runner_args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        pytest.fail(f"the run did not finish within {RUN_TIMEOUT_S} s: {' '.join(runner_args)}")
    assert process.returncode == 0, output.decode(errors="replace")[-4000:]


def test_prism_writes_the_lake_and_profiles_of_the_direct_runner(prism, small_stream, tmp_path):
    run_replay(small_stream, tmp_path / "prism", "--runner", "PrismRunner", "--prism_location", str(prism))
    run_replay(small_stream, tmp_path / "direct")

    assert lake_rows(tmp_path / "prism", "experience_events")
    for dataset in ("experience_events", "failed_records", "identity_changes", "profile_records"):
        assert lake_rows(tmp_path / "prism", dataset) == lake_rows(tmp_path / "direct", dataset)
    assert dataset_files(tmp_path / "prism") == dataset_files(tmp_path / "direct")
    assert profile_store_contents(tmp_path / "prism") == profile_store_contents(tmp_path / "direct")
