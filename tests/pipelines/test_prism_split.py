"""Prism with bundle splitting off keeps a stateful DoFn's state whole, as every ``profilestream`` run on Prism has it
(:func:`pipelines.local_runner.disable_prism_splits`).

The reproduction of ``docs/prism-split-state-loss.md`` (:mod:`tests.prism_split.repro`, no project code in it) runs
as a script on Prism with ``prism_disable_sdf_split`` and on the FnApiRunner; both must report every element for every
key. Without the experiment Prism loses elements, which the document records; that run is not part of the suite.
Each run is a process of its own, killed with its Prism server if it outlives ``RUN_TIMEOUT_S``.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from pipelines.local_runner import PRISM_NO_SPLIT_EXPERIMENT
from tests.helpers import finished
from tests.prism_split import repro

# A run takes some 10 s here, mostly the reproduction's own stalls.
RUN_TIMEOUT_S = 45
REPORT = Path(__file__).parents[2] / "docs" / "prism-split-state-loss.md"

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def reported(*beam_args: str) -> dict[str, int]:
    """What the reproduction's timers reported, by counter, on a run with ``beam_args``."""
    run = finished([sys.executable, repro.__file__, *beam_args], RUN_TIMEOUT_S)
    assert run.stdout, run.stderr[-4000:]
    return json.loads(run.stdout.splitlines()[0])


def test_prism_without_splits_reports_every_element_as_the_fnapi_runner_does(prism):
    every_element = {f"{key} {state}": repro.PER_KEY for key in repro.KEYS for state in ("bag", "count")}
    without_splits = f"--experiments={PRISM_NO_SPLIT_EXPERIMENT}"

    assert reported("--runner", "PrismRunner", "--prism_location", str(prism), without_splits) == every_element
    assert reported("--runner", "FnApiRunner") == every_element


def test_the_bug_report_quotes_the_reproduction_as_it_is():
    quoted = re.search(r"```python\n(.*?)```", REPORT.read_text(), re.DOTALL)

    assert quoted is not None
    assert quoted.group(1) == Path(repro.__file__).read_text()
