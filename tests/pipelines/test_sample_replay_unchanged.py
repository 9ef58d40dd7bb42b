"""The sample replay leaves the lake rows and store contents it left before: a fingerprint against a recorded one.

A change meant to keep behaviour (a refactor, a speed-up) runs this test as is. A change meant to alter what the
replay writes records the new fingerprint on purpose, and its commit says why::

    python -m tests.pipelines.test_sample_replay_unchanged --record
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sqlite3
import sys
import tempfile
from pathlib import Path

import pytest

from tests.helpers import finished, lake_rows

ROOT = Path(__file__).parents[2]
SAMPLE = ROOT / "pipelines" / "samples" / "stream.jsonl"
RECORDED = ROOT / "tests" / "data" / "sample_replay_fingerprint.json"
DATASETS = ("experience_events", "profile_records", "failed_records", "identity_changes")
# Every table, each read without the columns that hold the wall time of the run.
STORE_TABLES = {
    "identity": {
        "identity_sightings": "namespace, id, time_us, message_id",
        "identity_components": "namespace, id, component",
        "identity_links": "*",
        "identity_change_log": "cause_message_id, cause_time_us, before, batch",
    },
    "profiles": {"fragments": "*", "views": "*", "identity_index": "*", "redirects": "*"},
}

pytestmark = [pytest.mark.slow]


def digest(values: list) -> dict:
    text = "\n".join(json.dumps(value, default=repr, sort_keys=True) for value in values)
    return {"count": len(values), "sha256": hashlib.sha256(text.encode()).hexdigest()}


def fingerprint(folder: Path) -> dict:
    """Replays the sample into ``folder`` (lake and SQLite stores) and digests what it left."""
    lake = folder / "lake"
    command = [sys.executable, "-m", "pipelines.cli", "run", "--source", f"replay:{SAMPLE}", "--lake", str(lake)]
    stores = {name: folder / f"{name}.sqlite" for name in STORE_TABLES}
    command += ["--identity-store", f"sqlite:///{stores['identity']}"]
    command += ["--profile-store", f"sqlite:///{stores['profiles']}"]
    run = finished(command, 300)
    assert run.returncode == 0, run.stderr[-4000:]
    result = {f"lake/{dataset}": digest(lake_rows(lake, dataset)) for dataset in DATASETS}
    for store, tables in STORE_TABLES.items():
        with sqlite3.connect(stores[store]) as connection:
            for table, columns in tables.items():
                rows = sorted(connection.execute(f"SELECT {columns} FROM {table}").fetchall())
                result[f"{store}/{table}"] = digest(
                    [[cell.hex() if isinstance(cell, bytes) else cell for cell in row] for row in rows]
                )
    return result


def test_the_sample_replay_leaves_what_it_left_when_the_fingerprint_was_recorded(tmp_path):
    assert fingerprint(tmp_path) == json.loads(RECORDED.read_text())


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--record", action="store_true", help=f"write the fingerprint to {RECORDED.relative_to(ROOT)}")
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        found = json.dumps(fingerprint(Path(folder)), indent=2, sort_keys=True)
    if arguments.record:
        RECORDED.write_text(found + "\n")
    print(found)
