"""``profilestream identity get`` on a store built by ``profilestream run``: the contract of README's
"`profilestream identity get`".

The replay is a shared-device story: Ann logs in on a device with her CRM id and her e-mail, then Bob logs in on the
same device, twice. CRMID is a unique namespace, so the device follows its last user: Bob's person holds the device,
Ann's keeps her CRM id and e-mail, and the links from the device to Ann's identities are removed by that rule.
"""

from __future__ import annotations

import contextlib
import io
import json
from datetime import timedelta
from pathlib import Path

import pytest

from pipelines.cli import main
from tests.helpers import START, envelope, event, rest_line

DEVICE = "7" * 38
ANN_EMAIL_AS_SENT = "Ann@Example.com"
ANN_EMAIL = "ann@example.com"
SAMPLE_LOGINS = (
    # (message id, minutes after START, identityMap)
    ("m1", 0, {"ECID": [{"id": DEVICE}], "CRMID": [{"id": "ann"}], "Email": [{"id": ANN_EMAIL_AS_SENT}]}),
    ("m2", 10, {"ECID": [{"id": DEVICE}], "CRMID": [{"id": "bob"}]}),
    ("m3", 20, {"ECID": [{"id": DEVICE}], "CRMID": [{"id": "bob"}]}),
)
UNIQUE_NAMESPACE = "unique_namespace"


def login_line(message_id: str, minutes: int, identity_map: dict) -> str:
    at = START + timedelta(minutes=minutes)
    entity = {**event(f"e-{message_id}", at), "identityMap": identity_map}
    return rest_line(envelope(entity), message_id, at)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    folder: Path = tmp_path_factory.mktemp("identity-cli")
    replay = folder / "logins.jsonl"
    replay.write_text("".join(login_line(*login) + "\n" for login in SAMPLE_LOGINS))
    url = f"sqlite:///{folder}/identity.sqlite"
    args = ["run", "--source", f"replay:{replay}", "--lake", str(folder / "lake"), "--identity-store", url, "--batch"]
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(args) == 0
    return url


def identity_get(capsys, store: str, *identities: str) -> tuple[int, list[dict]]:
    args = ["identity", "get", "--store", store]
    for identity in identities:
        args += ["--identity", identity]
    code = main(args)
    return code, [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_one_line_per_identity_in_the_order_asked(store, capsys):
    asked = ["CRMID:bob", "CRMID:ann", f"ECID:{DEVICE}"]
    _, lines = identity_get(capsys, store, *asked)
    assert [line["identity"] for line in lines] == asked


def test_identity_echoes_what_was_asked_as_it_was_written(store, capsys):
    _, [line] = identity_get(capsys, store, "email:ANN@Example.com")
    assert line["identity"] == "email:ANN@Example.com"


def test_two_identities_of_one_person_have_the_same_person_id(store, capsys):
    _, [crm, email] = identity_get(capsys, store, "CRMID:ann", f"Email:{ANN_EMAIL}")
    assert crm["person_id"] is not None
    assert crm["person_id"] == email["person_id"]


def test_an_identity_is_looked_up_normalised_and_the_identities_are_listed_as_stored(store, capsys):
    _, [line] = identity_get(capsys, store, "Email:ANN@Example.com")
    assert line["identities"] == [{"namespace": "CRMID", "id": "ann"}, {"namespace": "Email", "id": ANN_EMAIL}]


def test_links_carry_when_and_by_which_message_they_were_first_and_last_made(store, capsys):
    _, [line] = identity_get(capsys, store, "CRMID:bob")
    [bob_and_device] = [link for link in line["links"] if link["a"] == "CRMID:bob"]
    assert bob_and_device == {
        "a": "CRMID:bob",
        "b": f"ECID:{DEVICE}",
        "first_seen": "2026-11-01T09:10:00Z",
        "first_message": "m2",
        "last_seen": "2026-11-01T09:20:00Z",
        "last_message": "m3",
        "removed_by": None,
    }


def test_all_lines_exit_0_when_every_identity_is_known(store, capsys):
    code, _ = identity_get(capsys, store, "CRMID:ann", "CRMID:bob")
    assert code == 0


def test_an_unknown_identity_prints_a_null_person_and_exits_1(store, capsys):
    code, lines = identity_get(capsys, store, "CRMID:ann", "CRMID:nobody")
    assert code == 1
    assert [line["person_id"] is None for line in lines] == [False, True]


def test_a_malformed_identity_exits_2_with_one_line_on_stderr_and_nothing_on_stdout(store, capsys):
    code = main(["identity", "get", "--store", store, "--identity", "CRMID:ann", "--identity", "bad"])
    captured = capsys.readouterr()
    assert code == 2
    assert (captured.out, len(captured.err.splitlines())) == ("", 1)


def test_a_shared_device_follows_the_last_crm_id_that_logged_in(store, capsys):
    _, [device, ann, bob] = identity_get(capsys, store, f"ECID:{DEVICE}", "CRMID:ann", "CRMID:bob")
    assert device["person_id"] == bob["person_id"] != ann["person_id"]


def test_the_link_from_the_device_to_the_earlier_user_shows_the_rule_that_removed_it(store, capsys):
    _, [ann] = identity_get(capsys, store, "CRMID:ann")
    removed = {(link["a"], link["b"]): link["removed_by"] for link in ann["links"]}
    assert removed[("CRMID:ann", f"ECID:{DEVICE}")] == UNIQUE_NAMESPACE
