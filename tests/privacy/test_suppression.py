"""The suppression list: adding to it, reading it, knowing cheaply when it changed; the check stitching makes; and a
streaming pipeline that drops a suppressed person's messages before any store or the lake."""

from __future__ import annotations

import json
import pickle
import threading
from datetime import timedelta

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_stream import TestStream

from core.records import Message
from identity.model import Identity
from pipelines.cli import main
from pipelines.config import Config
from pipelines.direct_runner_patches import patched_direct_runner
from pipelines.ingest import Ingest
from pipelines.summary import counters, summary_of
from privacy.jobs import JobRequest, JobStore
from privacy.keys import PRIVACY_KEY_ENV, identity_hash
from privacy.suppression import Suppression, SuppressionCheck, SuppressionList
from schemas.registry import SchemaRegistry
from stores.opening import open_identity_store, open_profile_store
from tests.helpers import START, envelope, event, lake_rows, rest_line

KEY = b"k" * 32
ANN = Identity("Email", "ann@example.com")
DEVICE = Identity("ECID", "1" * 38)
ANN_DEVICE = Identity("ECID", "2" * 38)
PUBLISHED_US = int(START.timestamp() * 1_000_000)


def test_added_hashes_are_read_back_and_adding_them_again_adds_nothing(tmp_path):
    path = str(tmp_path / "privacy.sqlite")
    suppression_list = SuppressionList(path)

    assert suppression_list.add(["a", "b"], "pj-1") == 2
    assert suppression_list.add(["b", "c"], "pj-2") == 1
    assert suppression_list.add([], "pj-3") == 0

    assert suppression_list.hashes() == {"a", "b", "c"}
    assert SuppressionList(path).hashes() == {"a", "b", "c"}


def test_a_missing_file_is_an_empty_list_and_reading_it_creates_nothing(tmp_path):
    path = tmp_path / "data" / "privacy.sqlite"
    suppression_list = SuppressionList(str(path))

    assert suppression_list.hashes() == frozenset()
    assert not suppression_list.changed()
    suppression_list.close()
    assert not path.parent.exists()


def test_a_change_by_this_object_or_another_process_is_seen_and_a_read_clears_it(tmp_path):
    path = str(tmp_path / "privacy.sqlite")
    reader, writer = SuppressionList(path), SuppressionList(path)
    assert reader.changed()  # never read
    reader.hashes()
    assert not reader.changed()

    writer.add(["a"], "pj-1")  # creates the file the reader found missing
    assert reader.changed()
    assert reader.hashes() == {"a"}
    assert not reader.changed()

    writer.add(["a"], "pj-2")  # nothing new
    assert not reader.changed()
    writer.add(["b"], "pj-2")
    assert reader.changed()
    reader.hashes()
    reader.add(["c"], "pj-3")
    assert reader.changed()
    assert reader.hashes() == {"a", "b", "c"}


def test_the_list_shares_the_file_with_the_job_receipts(tmp_path):
    path = str(tmp_path / "privacy.sqlite")
    jobs = JobStore(path)
    job_id = jobs.create(JobRequest("gdpr", "delete", (("Email", "ann@example.com"),), suppress=True), [ANN], KEY)
    SuppressionList(path).add([identity_hash(KEY, ANN)], job_id)

    assert JobStore(path).get(job_id)["suppress"] is True
    assert SuppressionList(path).hashes() == {identity_hash(KEY, ANN)}


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_check_sees_a_suppression_once_the_refresh_interval_has_passed(tmp_path):
    path = str(tmp_path / "privacy.sqlite")
    SuppressionList(path).add([identity_hash(KEY, DEVICE)], "pj-1")
    clock = Clock()
    check = Suppression(path, KEY).open(clock)

    assert check.suppressed([ANN, DEVICE])
    assert not check.suppressed([ANN])
    SuppressionList(path).add([identity_hash(KEY, ANN)], "pj-2")
    clock.now = 0.9
    assert not check.suppressed([ANN])
    clock.now = 1.0
    assert check.suppressed([ANN])
    check.close()


def test_the_check_hashes_each_identity_once(tmp_path, monkeypatch):
    path = str(tmp_path / "privacy.sqlite")
    SuppressionList(path).add(["other"], "pj-1")
    hashed = []
    monkeypatch.setattr("privacy.suppression.identity_hash", lambda key, identity: hashed.append(identity) or "h")
    check = SuppressionCheck(SuppressionList(path), KEY, clock=Clock())

    for _ in range(3):
        assert not check.suppressed([ANN, DEVICE])
    assert hashed == [ANN, DEVICE]


def test_the_settings_pickle_and_keep_the_key_out_of_their_repr():
    suppression = Suppression("data/privacy.sqlite", KEY)

    assert pickle.loads(pickle.dumps(suppression)) == suppression
    assert KEY.decode() not in repr(suppression)


def message(event_id: str, ecid: str, minute: int, payload: bytes | None = None) -> beam.window.TimestampedValue:
    """A message of one page view by ``ecid`` (or of ``payload``), published ``minute`` minutes after START."""
    if payload is None:
        payload = json.dumps(envelope(event(event_id, START + timedelta(minutes=minute), ecid))).encode()
    published_us = PUBLISHED_US + minute * 60_000_000
    return beam.window.TimestampedValue(
        Message(payload, {}, f"m-{event_id}", published_us, published_us), published_us / 1e6
    )


def test_a_suppressed_persons_messages_reach_no_store_nor_the_lake_and_the_summary_balances(tmp_path):
    privacy = str(tmp_path / "privacy.sqlite")
    SuppressionList(privacy).add([identity_hash(KEY, ANN_DEVICE)], "pj-1")
    identity_url, profile_url = f"sqlite:///{tmp_path}/identity.sqlite", f"sqlite:///{tmp_path}/profiles.sqlite"
    registry = SchemaRegistry.load()
    stream = (
        TestStream()
        .add_elements([message("ann-1", ANN_DEVICE.id, 1), message("bob-1", DEVICE.id, 1)])
        .add_elements([message("ann-2", ANN_DEVICE.id, 2), message("bad", DEVICE.id, 2, b"{oops")])
        .advance_watermark_to_infinity()
    )
    pipeline = beam.Pipeline(options=PipelineOptions(streaming=True, runner="BundleBasedDirectRunner"))
    _ = (
        pipeline
        | stream
        | Ingest(registry, Config(), str(tmp_path), identity_url, profile_url, suppression=Suppression(privacy, KEY))
    )
    with patched_direct_runner(threading.Event()):  # as profilestream run runs it: every bundle's metrics kept
        result = pipeline.run()
        result.wait_until_finish()
    summary = summary_of(counters(result), list(registry.datasets), suppression_checked=True)

    assert [row["_id"] for row in lake_rows(tmp_path, "experience_events")] == ["bob-1"]
    assert summary.suppressed == 2
    assert summary.records == summary.valid + summary.failed + summary.suppressed == 4
    with open_identity_store(identity_url) as identities:
        assert list(identities.facts_of([ANN_DEVICE, DEVICE]).sightings) == [DEVICE]
    profiles = open_profile_store(profile_url)
    assert profiles.view_by_identity(str(ANN_DEVICE)) is None
    assert profiles.view_by_identity(str(DEVICE)) is not None
    profiles.close()


def run_args(tmp_path, *flags: str) -> list[str]:
    """``profilestream run`` of a replay of Ann's page view and Bob's, with every store and the lake in ``tmp_path``."""
    replay = tmp_path / "replay.jsonl"
    lines = [
        rest_line(envelope(event(f"{who}-1", START, ecid)), f"m-{who}", START)
        for who, ecid in (("ann", ANN_DEVICE.id), ("bob", DEVICE.id))
    ]
    replay.write_text("\n".join(lines) + "\n")
    return [
        "run",
        f"--source=replay:{replay}",
        "--batch",
        "--workers=1",
        f"--lake={tmp_path / 'lake'}",
        f"--identity-store=sqlite:///{tmp_path}/identity.sqlite",
        f"--profile-store=sqlite:///{tmp_path}/profiles.sqlite",
        f"--privacy-store=sqlite:///{tmp_path}/privacy.sqlite",
        *flags,
    ]


def test_a_run_with_a_suppression_list_and_no_key_stops_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv(PRIVACY_KEY_ENV, raising=False)
    SuppressionList(str(tmp_path / "privacy.sqlite")).add([identity_hash(KEY, ANN_DEVICE)], "pj-1")

    assert main(run_args(tmp_path)) == 2

    captured = capsys.readouterr()
    assert captured.out == ""
    assert len(captured.err.strip().splitlines()) == 1
    assert "suppression list" in captured.err and PRIVACY_KEY_ENV in captured.err and "Traceback" not in captured.err


def test_a_run_drops_what_the_list_suppresses_and_says_how_many(tmp_path, capsys):
    key_file = tmp_path / "privacy.key"
    key_file.write_bytes(KEY)
    SuppressionList(str(tmp_path / "privacy.sqlite")).add([identity_hash(KEY, ANN_DEVICE)], "pj-1")

    assert main(run_args(tmp_path, f"--key-file={key_file}")) == 0

    summary = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert (summary["records"], summary["valid"], summary["failed"], summary["suppressed"]) == (2, 1, 0, 1)
    assert list(summary)[:5] == ["messages", "records", "valid", "failed", "suppressed"]
    assert [row["_id"] for row in lake_rows(tmp_path / "lake", "experience_events")] == ["bob-1"]


def test_a_run_without_a_privacy_store_checks_nothing_and_creates_none(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv(PRIVACY_KEY_ENV, raising=False)

    assert main(run_args(tmp_path)) == 0

    summary = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert "suppressed" not in summary and summary["valid"] == 2
    assert not (tmp_path / "privacy.sqlite").exists()


def test_a_run_given_the_key_checks_a_list_that_is_not_there_yet(tmp_path, monkeypatch, capsys):
    """A delete with suppress may start the list while a long run goes on: a run with the key must be checking."""
    monkeypatch.setenv(PRIVACY_KEY_ENV, KEY.decode())

    assert main(run_args(tmp_path)) == 0

    summary = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert (summary["valid"], summary["suppressed"]) == (2, 0)
    assert not (tmp_path / "privacy.sqlite").exists()
