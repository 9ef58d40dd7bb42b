"""``make bench-e2e`` end to end at a small rate: every part starts, the figures come out, and nothing is lost."""

from __future__ import annotations

import json
import math

import pytest

from tools import bench_e2e


@pytest.mark.integration
@pytest.mark.slow
def test_the_benchmark_measures_the_whole_path_and_prints_its_json_line(pubsub_emulator, capsys):
    # The benchmark starts its own emulator; the fixture only makes a missing one skip (or fail under CI).
    assert bench_e2e.main(["--rate", "50", "--duration", "4", "--commit-interval", "5", "--sample", "5"]) == 0

    lines = capsys.readouterr().out.strip().splitlines()
    figures = json.loads(lines[-1])
    assert set(figures) == {
        *("rate", "profile_p50_s", "profile_p95_s", "profile_p99_s", "lake_p99_s", "inlet_rps", "pass")
    }
    # Figures, not verdicts: how fast is for the benchmark to say on a quiet machine; that every watched event
    # arrived (a finite p99) is for the test.
    assert 0 < figures["profile_p50_s"] <= figures["profile_p95_s"] <= figures["profile_p99_s"] < math.inf
    assert 0 < figures["lake_p99_s"] < math.inf
    assert figures["inlet_rps"] > 0
    for line in lines:
        if line.startswith(("receive -> profile visible", "receive -> lake file")):
            assert ", 0 never seen)" in line
    [kill_line] = [line for line in lines if line.startswith("kill -9")]
    assert "never reached the lake" in kill_line
