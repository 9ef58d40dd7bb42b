"""Chaos: replays killed with SIGKILL at random moments, then run to the end, leave what one clean run leaves.

The sample stream (``pipelines/samples/stream.jsonl``) is replayed once cleanly. Then, into another lake and other
stores, streaming and ``--batch`` replays of it are killed (SIGKILL to the run's process group) at random moments
between the start of the run and the length of a clean run, and a last streaming replay runs to its end, as a user
would rerun after a crash. What must be equal to the clean run:

- every row of every lake dataset; ``_person_id`` is the person *as resolved when the row was written*, and a rerun
  resolves against the graph the killed runs had already built further, so it is compared as the profile store
  answers it: the person whose profile that id leads to now (a merged-away or renamed id leads to its survivor),
  the persons of one split told in ``identity_changes`` taken as one (a row written before the split carries the
  person split, one written after the side its identity went to);
- the story ``identity_changes`` tells (:func:`story`): batching may group changes differently, so it is compared
  as the persons that merges and renames retired, the splits' outcomes, the links removed with
  their rule, the quarantined and the rejected identities;
- the identity store's facts (sightings and links; component numbers are the store's own);
- the profile store: every fragment, every live person's view, every identity's index entry and every redirect of
  a retired person id;
- and no temporary file is left under the lake.

The seed is printed, so a failing sequence of kills can be run again (``CHAOS_SEED=...``).
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from subprocess import DEVNULL

import pytest

from profiles.model import view_from_bytes
from stores.opening import open_profile_store
from tests.helpers import finished, lake_rows

SAMPLE = Path(__file__).parents[2] / "pipelines" / "samples" / "stream.jsonl"
KILLS = 6
RUN_TIMEOUT_S = 300
DATASETS = ("experience_events", "profile_records", "failed_records")

pytestmark = [pytest.mark.slow]


def replay(lake: Path, *flags: str) -> list[str]:
    """The command of a replay of the sample into ``lake`` and SQLite stores beside it."""
    command = [sys.executable, "-m", "pipelines.cli", "run", "--source", f"replay:{SAMPLE}", "--lake", str(lake)]
    command += ["--identity-store", f"sqlite:///{lake}.identity.sqlite"]
    return [*command, "--profile-store", f"sqlite:///{lake}.profiles.sqlite", *flags]


def summary_of(command: list[str]) -> dict:
    run = finished(command, RUN_TIMEOUT_S)
    assert run.returncode == 0, run.stderr[-4000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def person_answering(profiles: str, person: str | None) -> str | None:
    """The person whose profile a person id leads to in the store, following a merge's or a rename's redirect."""
    if person is None:
        return None
    with open_profile_store(profiles) as store:
        view = store.view_by_person(person)
    return None if view is None else view_from_bytes(view)["person_id"]


def records_as_answered(lake: Path, dataset: str) -> list[dict]:
    """The dataset's rows, each ``_person_id`` as the profile store answers it now and, where a split told in
    ``identity_changes`` separated persons, as the first of the persons of that split."""
    profiles = f"sqlite:///{lake}.profiles.sqlite"
    split_from = {}
    for change in lake_rows(lake, "identity_changes"):
        if change["kind"] == "split":
            persons = sorted({*change["persons_before"], *change["persons_after"]})
            split_from.update(dict.fromkeys(persons, persons[0]))
    answering: dict[str | None, str | None] = {}
    rows = []
    for row in lake_rows(lake, dataset):
        if "_person_id" in row:
            person = row["_person_id"]
            if person not in answering:
                now = person_answering(profiles, person)
                answering[person] = split_from.get(now, now)
            row["_person_id"] = answering[person]
        rows.append(row)
    return sorted(rows, key=lambda row: json.dumps(row, default=str, sort_keys=True))


def story(lake: Path) -> dict[str, set]:
    """What ``identity_changes`` says happened, however batching grouped it."""
    told: dict[str, set] = {"retired": set(), "splits": set(), "links_removed": set(), "quarantined": set()}
    told["rejected"] = set()
    for change in lake_rows(lake, "identity_changes"):
        kind, identities = change["kind"], tuple(change["identities"])
        if kind in ("merge", "rename"):
            told["retired"] |= {p for p in change["persons_before"] if p not in change["persons_after"]}
        elif kind == "split":
            told["splits"].add((tuple(change["persons_before"]), tuple(change["persons_after"])))
        elif kind == "link_removed":
            told["links_removed"].add((identities, change["rule"]))
        elif kind == "quarantined":
            told["quarantined"].add(identities)
        else:
            told["rejected"].add((identities, change["rule"], change["message_id"]))
    return told


def table(path: str, query: str) -> list[tuple]:
    with sqlite3.connect(path) as connection:
        return sorted(connection.execute(query).fetchall())


def test_replays_killed_at_random_moments_then_rerun_leave_what_a_clean_run_leaves(tmp_path):
    seed = int(os.environ.get("CHAOS_SEED", time.time_ns() % 1_000_000))
    print(f"CHAOS_SEED={seed}")
    rng = random.Random(seed)
    clean, chaos = tmp_path / "clean", tmp_path / "chaos"
    started = time.monotonic()
    summary_of(replay(clean))
    clean_s = time.monotonic() - started

    kills: list[tuple] = []
    span_s = clean_s
    while sum(killed for *_, killed, _ in kills) < KILLS and len(kills) < 3 * KILLS:
        done = sum(killed for *_, killed, _ in kills)
        flags = ("--batch",) if done % 2 else ()
        started = time.monotonic()
        run = subprocess.Popen(replay(chaos, *flags), stdout=DEVNULL, stderr=DEVNULL, start_new_session=True)
        # A run spends its first seconds starting Python and Beam, and writes the lake in its last: the kills fall
        # after the start, and half of them in the last third.
        delay = rng.uniform(0.4 if done < KILLS // 2 else 0.67, 0.95) * span_s
        try:
            run.wait(timeout=delay)
            killed = False
            # Runs into a lake and stores that hold much already go faster: aim at this one's length.
            span_s = time.monotonic() - started
        except subprocess.TimeoutExpired:
            killed = True
            os.killpg(run.pid, signal.SIGKILL)
            run.wait()
        kills.append((flags, round(delay, 1), killed, len(list(chaos.rglob("*.parquet")))))
    print(f"clean run {clean_s:.1f} s; runs (flags, kill after s, killed, lake files then):", kills)
    assert sum(killed for *_, killed, _ in kills) == KILLS
    summary = summary_of(replay(chaos))

    assert summary["records"] == summary["valid"] + summary["failed"]
    for dataset in DATASETS:
        assert records_as_answered(chaos, dataset) == records_as_answered(clean, dataset), dataset
    assert story(chaos) == story(clean)
    for facts in ("identity_sightings", "identity_links"):
        query = (
            f"SELECT * FROM {facts}"
            if facts == "identity_sightings"
            else (
                "SELECT a_namespace, a_id, b_namespace, b_id, first_time_us, first_message_id, last_time_us, "
                "last_message_id FROM identity_links"
            )
        )
        assert table(f"{chaos}.identity.sqlite", query) == table(f"{clean}.identity.sqlite", query), facts
    for profiles in ("fragments", "views", "identity_index", "redirects"):
        query = f"SELECT * FROM {profiles}"
        assert table(f"{chaos}.profiles.sqlite", query) == table(f"{clean}.profiles.sqlite", query), profiles
    assert not list((chaos / ".tmp").rglob("*.parquet"))


def test_two_runs_started_seconds_apart_into_one_lake_write_each_row_once(tmp_path):
    """Two replays of the sample into one lake and the same stores, the second started 0 to 5 s after the first:
    both finish, neither removes the other's files, and each row is in the lake once, as one clean run has it.
    ``_person_id`` is left out: two runs stitching at once may each write a row before the other's merge."""
    rng = random.Random(int(os.environ.get("CHAOS_SEED", time.time_ns() % 1_000_000)))
    clean, shared = tmp_path / "clean", tmp_path / "shared"
    summary_of(replay(clean))
    # Its log goes to a file: a pipe nobody reads while the second run runs could fill and stop it.
    with (tmp_path / "first.log").open("wb") as log:
        first = subprocess.Popen(replay(shared), stdout=DEVNULL, stderr=log, start_new_session=True)
    time.sleep(rng.uniform(0, 5))
    second = summary_of(replay(shared))
    assert first.wait(timeout=RUN_TIMEOUT_S) == 0, (tmp_path / "first.log").read_text()[-4000:]

    for dataset in DATASETS:
        assert without_persons(lake_rows(shared, dataset)) == without_persons(lake_rows(clean, dataset)), dataset
    assert second["records"] == second["valid"] + second["failed"]
    facts = "SELECT * FROM identity_sightings"
    assert table(f"{shared}.identity.sqlite", facts) == table(f"{clean}.identity.sqlite", facts)
    assert not list((shared / ".tmp").rglob("*.parquet"))


def without_persons(rows: list[dict]) -> list[dict]:
    return sorted(
        ({key: value for key, value in row.items() if key != "_person_id"} for row in rows),
        key=lambda row: json.dumps(row, default=str, sort_keys=True),
    )
