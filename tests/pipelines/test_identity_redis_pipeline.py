"""``profilestream run`` on a Redis identity store, streaming, against the same replay on SQLite with ``--batch``.

The replay: Ann logs in on her laptop and her phone, then on a shared tablet, which is used anonymously and then by
Bob (CRMID is unique, so the tablet follows Bob); Carol and Dave each use one device with one login, and one of
Carol's records carries a malformed ECID.

The graph is a function of its facts, and adding facts commutes, so both runs end with the same persons, whatever
batches the runs cut the replay into (a batch ends with its bundle, and the runners bundle as they please). A lake
row's ``_person_id`` is the person *when the row was written* (README, "Lake layout"): a record stitched
before a later split can carry its older person, and ``identity_changes`` then names that person. So the lakes agree
on every record whose person no identity change of either run names (at least Carol's and Dave's: each of their
records carries the same identities, so that no order of arrival renames them), and on every count: records, lake
rows, rejected identities. The merges and splits a run reports depend on its batches, so of ``identity_changes``
only the rejections, one per record, are compared row for row.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import socket
from datetime import timedelta
from pathlib import Path

import pytest
import redis

from identity.graph import resolve
from identity.model import Identity
from pipelines.cli import main
from pipelines.config import Config
from stores.opening import open_identity_store
from tests.helpers import START, envelope, event, lake_rows, rest_line

LAPTOP, PHONE, TABLET, CAROL_DEVICE, DAVE_DEVICE = (digit * 38 for digit in "12345")
CAROL_EMAIL = "carol@example.com"
# (message id, minutes after START, identityMap)
REPLAY = (
    ("m01", 0, {"ECID": [{"id": LAPTOP}], "CRMID": [{"id": "ann"}], "Email": [{"id": "Ann@Example.com"}]}),
    ("m02", 1, {"ECID": [{"id": CAROL_DEVICE}], "Email": [{"id": CAROL_EMAIL}]}),
    ("m03", 2, {"ECID": [{"id": PHONE}], "CRMID": [{"id": "ann"}]}),
    ("m04", 3, {"ECID": [{"id": DAVE_DEVICE}], "CRMID": [{"id": "dave"}]}),
    ("m05", 4, {"ECID": [{"id": TABLET}], "CRMID": [{"id": "ann"}]}),
    ("m06", 5, {"ECID": [{"id": TABLET}]}),
    ("m07", 6, {"ECID": [{"id": CAROL_DEVICE}, {"id": "123"}], "Email": [{"id": CAROL_EMAIL}]}),
    ("m08", 7, {"ECID": [{"id": TABLET}], "CRMID": [{"id": "bob"}]}),
    ("m09", 8, {"ECID": [{"id": DAVE_DEVICE}], "CRMID": [{"id": "dave"}]}),
    ("m10", 9, {"ECID": [{"id": TABLET}], "CRMID": [{"id": "bob"}]}),
)
IDENTITIES = frozenset(
    {
        *(Identity("ECID", device) for device in (LAPTOP, PHONE, TABLET, CAROL_DEVICE, DAVE_DEVICE)),
        *(Identity("CRMID", crm) for crm in ("ann", "bob", "dave")),
        Identity("Email", "ann@example.com"),
        Identity("Email", CAROL_EMAIL),
    }
)
STEADY_MESSAGES = {"m02", "m04", "m07", "m09"}  # Carol's and Dave's
# The summary's counts of records; the profile counters are left out, as the local streaming runner drops what
# timers count.
RECORD_COUNTS = ("messages", "records", "valid", "failed", "duplicates", "failed_by_code")
GRAPH_RULES = Config().stitch_settings().graph
EXIT_USAGE = 2


@dataclasses.dataclass(frozen=True)
class Run:
    summary: dict
    lake: Path
    person_of: dict[Identity, str]


def replay_file(folder: Path) -> Path:
    path = folder / "replay.jsonl"
    lines = []
    for message_id, minutes, identity_map in REPLAY:
        at = START + timedelta(minutes=minutes)
        lines.append(rest_line(envelope({**event(f"e-{message_id}", at), "identityMap": identity_map}), message_id, at))
    path.write_text("\n".join(lines) + "\n")
    return path


def run_args(replay: Path, lake: Path, identity_store: str) -> list[str]:
    """``profilestream run`` on the replay, with this identity store and a profile store of its own beside the lake."""
    stores = ["--identity-store", identity_store, "--profile-store", f"sqlite:///{lake}.profiles.sqlite"]
    return ["run", "--source", f"replay:{replay}", "--lake", str(lake), *stores]


def run_replay(replay: Path, lake: Path, identity_store: str, *mode: str) -> Run:
    out = io.StringIO()
    args = [*run_args(replay, lake, identity_store), *mode]
    with contextlib.redirect_stdout(out):
        assert main(args) == 0
    with open_identity_store(identity_store) as store:
        person_of = dict(resolve(store.facts_of(IDENTITIES), GRAPH_RULES).person_of)
    return Run(json.loads(out.getvalue().splitlines()[-1]), lake, person_of)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, redis_server: str) -> tuple[Run, Run]:
    """The replay streamed through the session's Redis (flushed first), and run with ``--batch`` on SQLite."""
    folder = tmp_path_factory.mktemp("identity-redis")
    replay = replay_file(folder)
    with redis.Redis.from_url(redis_server) as client:
        client.flushdb()
    streamed = run_replay(replay, folder / "streaming", redis_server)
    batch = run_replay(replay, folder / "batch", f"sqlite:///{folder}/identity.sqlite", "--batch")
    return streamed, batch


def persons_by_message(lake: Path) -> dict[str, str]:
    return {row["_message_id"]: row["_person_id"] for row in lake_rows(lake, "experience_events")}


def persons_named_in_changes(lake: Path) -> set[str]:
    return {
        person
        for row in lake_rows(lake, "identity_changes")
        for person in (*row["persons_before"], *row["persons_after"])
    }


def rejections(lake: Path) -> list[dict]:
    return [row for row in lake_rows(lake, "identity_changes") if row["kind"] == "rejected"]


@pytest.mark.integration
def test_both_runs_end_with_the_same_persons(runs):
    streamed, batch = runs
    assert set(streamed.person_of) == IDENTITIES
    assert streamed.person_of == batch.person_of


@pytest.mark.integration
def test_the_shared_tablet_follows_its_last_user_in_the_redis_run(runs):
    streamed, _ = runs
    person_of = streamed.person_of
    assert person_of[Identity("ECID", TABLET)] == person_of[Identity("CRMID", "bob")]
    assert person_of[Identity("ECID", TABLET)] != person_of[Identity("CRMID", "ann")]


@pytest.mark.integration
def test_both_runs_count_the_same_records_and_lake_rows(runs):
    streamed, batch = runs

    def counts(summary: dict) -> dict:
        lake = {dataset: files["rows"] for dataset, files in summary["lake"].items() if dataset != "identity_changes"}
        return {"lake": lake, **{key: summary[key] for key in RECORD_COUNTS}}

    assert counts(streamed.summary) == counts(batch.summary)
    assert streamed.summary["lake"]["experience_events"]["rows"] == len(REPLAY)


@pytest.mark.integration
def test_both_runs_reject_the_same_identities(runs):
    streamed, batch = runs
    assert len(rejections(streamed.lake)) == 1
    assert rejections(streamed.lake) == rejections(batch.lake)


@pytest.mark.integration
def test_records_whose_person_no_change_names_carry_the_same_person_in_both_lakes(runs):
    streamed, batch = runs
    named = persons_named_in_changes(streamed.lake) | persons_named_in_changes(batch.lake)
    streamed_persons, batch_persons = persons_by_message(streamed.lake), persons_by_message(batch.lake)
    steady = {
        message
        for message, person in streamed_persons.items()
        if person not in named and batch_persons.get(message) not in named
    }
    assert steady >= STEADY_MESSAGES
    assert {message: streamed_persons[message] for message in steady} == {
        message: batch_persons.get(message) for message in steady
    }


@pytest.fixture
def unreachable_redis() -> str:
    """A Redis URL on a loopback port nothing listens on (free when asked, and closed again)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"redis://127.0.0.1:{port}/0"


def assert_one_line_store_error(code: int, captured) -> None:
    assert code == EXIT_USAGE
    [line] = captured.err.splitlines()
    assert "identity store" in line


def test_run_on_an_unreachable_redis_exits_2_with_one_line(unreachable_redis, tmp_path, capsys):
    code = main([*run_args(replay_file(tmp_path), tmp_path / "lake", unreachable_redis), "--batch"])
    assert_one_line_store_error(code, capsys.readouterr())


def test_identity_get_on_an_unreachable_redis_exits_2_with_one_line(unreachable_redis, capsys):
    code = main(["identity", "get", "--store", unreachable_redis, "--identity", "CRMID:ann"])
    assert_one_line_store_error(code, capsys.readouterr())
