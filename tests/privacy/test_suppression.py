"""The suppression list: adding to it, reading it, knowing cheaply when it changed; and the check stitching makes."""

from __future__ import annotations

import pickle

from identity.model import Identity
from privacy.jobs import JobRequest, JobStore
from privacy.keys import identity_hash
from privacy.suppression import Suppression, SuppressionCheck, SuppressionList

KEY = b"k" * 32
ANN = Identity("Email", "ann@example.com")
DEVICE = Identity("ECID", "1" * 38)


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
