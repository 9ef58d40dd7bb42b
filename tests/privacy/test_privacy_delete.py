"""``profilestream privacy delete|access`` end to end, on the stores and the lake a replay of the sample leaves.

The person: Zoe Chen of the sample, with two ECIDs (cookies of two devices), an e-mail, a CRM id and a phone, and a
failed record that carries her e-mail. The delete is asked by one ECID alone. Afterwards, no file the job's stores and
lake consist of holds any of her identities or person ids (raw bytes, and every Parquet value decoded, case
insensitively), every other row, link and profile is as it was, and the receipt holds hashes only.
"""

from __future__ import annotations

import json
import logging
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipelines.cli import main
from pipelines.config import Config
from pipelines.ingest import RunRequest, run
from schemas.registry import SchemaRegistry

SAMPLE = Path(__file__).parents[2] / "pipelines" / "samples" / "stream.jsonl"
COOKIE = "ECID:48184326913614089899787983293008731525"
EMAIL = "zoe.chen106@example.com"
KEY = "a-privacy-key-for-tests-only-0123456789"


@pytest.fixture(scope="module")
def replayed(tmp_path_factory) -> Path:
    """The sample replayed once (--batch, one worker: deterministic) into stores and a lake."""
    work = tmp_path_factory.mktemp("replayed")
    request = RunRequest(
        f"{SAMPLE}",
        str(work / "lake"),
        f"sqlite:///{work}/identity.sqlite",
        f"sqlite:///{work}/profiles.sqlite",
        batch=True,
        workers=1,
    )
    run(request, SchemaRegistry.load(), Config())
    return work


@pytest.fixture
def deployment(replayed, tmp_path) -> Path:
    """A copy of the replayed stores and lake, the privacy key in a file."""
    work = tmp_path / "deployment"
    shutil.copytree(replayed, work)
    (work / "key").write_text(KEY)
    return work


def privacy(work: Path, action: str, *flags: str) -> list[str]:
    return [
        "privacy",
        action,
        f"--lake={work}/lake",
        f"--identity-store=sqlite:///{work}/identity.sqlite",
        f"--profile-store=sqlite:///{work}/profiles.sqlite",
        f"--privacy-store=sqlite:///{work}/privacy.sqlite",
        f"--key-file={work}/key",
        *flags,
    ]


def the_person(work: Path) -> tuple[set[str], set[str]]:
    """Zoe Chen's identities (normalised ids) and person ids (current and retired), from the stores as they are."""
    lookup = sqlite3.connect(work / "profiles.sqlite")
    [(person,)] = lookup.execute("SELECT person FROM identity_index WHERE identity = ?", (COOKIE,)).fetchall()
    identities = {
        key.split(":", 1)[1]
        for (key,) in lookup.execute("SELECT identity FROM identity_index WHERE person = ?", (person,))
    }
    retired = {retired for (retired,) in lookup.execute("SELECT person FROM redirects WHERE target = ?", (person,))}
    lookup.close()
    return identities, {person, *retired}


def decoded_lake(work: Path) -> dict[str, list[str]]:
    """Every lake row of every dataset as a JSON line, by file."""
    rows = {}
    for path in sorted((work / "lake").rglob("*.parquet")):
        table = pq.read_table(path)
        rows[str(path.relative_to(work))] = [json.dumps(row, default=repr, sort_keys=True) for row in table.to_pylist()]
    return rows


def mentions(text: str, terms: set[str]) -> bool:
    lowered = text.lower()
    return any(term.lower() in lowered for term in terms)


def other_links(work: Path, identities: set[str]) -> list[tuple]:
    graph = sqlite3.connect(work / "identity.sqlite")
    links = [
        row
        for row in graph.execute("SELECT * FROM identity_links ORDER BY 1, 2, 3, 4")
        if not mentions(json.dumps(row), identities)
    ]
    graph.close()
    return links


def other_views(work: Path, persons: set[str]) -> dict[str, bytes]:
    views = sqlite3.connect(work / "profiles.sqlite")
    found = {person: doc for person, doc in views.execute("SELECT person, doc FROM views") if person not in persons}
    views.close()
    return found


def test_a_delete_by_one_cookie_leaves_no_trace_of_the_person_and_everyone_else_as_they_were(
    deployment, capsys, caplog
):
    caplog.set_level(logging.DEBUG)
    identities, persons = the_person(deployment)
    assert {EMAIL, COOKIE.split(":", 1)[1]} <= identities and any(i.startswith("CRM") for i in identities)
    terms = identities | persons
    lake_before = decoded_lake(deployment)
    failed_rows = [row for path, rows in lake_before.items() if "failed_records" in path for row in rows]
    assert any(mentions(row, {EMAIL}) for row in failed_rows), "the sample has a failed record with her e-mail"
    links_before, views_before = other_links(deployment, identities), other_views(deployment, persons)

    assert main(privacy(deployment, "delete", f"--identity={COOKIE}")) == 0

    out, err = capsys.readouterr()
    receipt = json.loads(out.splitlines()[-1])
    assert receipt["status"] == "done" and receipt["files_rewritten"]
    assert not mentions(out + err + caplog.text, terms), "the job's output or log names the person"
    assert all(len(value) == 64 for value in receipt["identities"])
    for path in deployment.rglob("*"):
        if path.is_file():
            assert not mentions(path.read_bytes().decode("latin-1"), terms), f"{path.name} still holds the person"
    lake_after = decoded_lake(deployment)
    assert not any(mentions(row, terms) for rows in lake_after.values() for row in rows)
    assert lake_after == {path: [row for row in rows if not mentions(row, terms)] for path, rows in lake_before.items()}
    assert other_links(deployment, identities) == links_before
    assert other_views(deployment, persons) == views_before


def test_a_dry_run_counts_what_a_delete_would_touch_and_changes_no_file(deployment, capsys):
    before = {path: path.read_bytes() for path in deployment.rglob("*") if path.is_file()}

    assert main(privacy(deployment, "delete", f"--identity={COOKIE}", "--dry-run")) == 0

    receipt = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert receipt["dry_run"] and receipt["would_rewrite"] and receipt["counts"]["lake"]["failed_records"] >= 1
    after = {
        path: path.read_bytes() for path in deployment.rglob("*") if path.is_file() and path.name != "privacy.sqlite"
    }
    assert after == {path: data for path, data in before.items() if path in after}
    assert set(after) == set(before)

    assert main(privacy(deployment, "delete", f"--identity={COOKIE}")) == 0
    deleted = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert receipt["would_rewrite"] == deleted["files_rewritten"]
    assert receipt["counts"]["lake"] == deleted["counts"]["lake"]


def test_access_exports_the_person_and_nobody_else(deployment, tmp_path, capsys):
    identities, persons = the_person(deployment)
    out = tmp_path / "export"

    assert main(privacy(deployment, "access", f"--identity=Email:{EMAIL.upper()}", f"--out={out}")) == 0

    receipt = json.loads(capsys.readouterr().out.splitlines()[-1])
    exported = json.loads((out / "identities.json").read_text())
    assert {identity["id"] for identity in exported["identities"]} == identities
    assert set(json.loads((out / "profile.json").read_text())) <= persons
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest == receipt["counts"]
    for path in (out / "lake").glob("*.parquet"):
        rows = pq.read_table(path).to_pylist()
        assert len(rows) == manifest["lake"][path.stem]
        assert all(mentions(json.dumps(row, default=repr), identities | persons) for row in rows)


def test_bad_input_is_one_line_and_exit_2(deployment, capsys, monkeypatch):
    monkeypatch.delenv("PROFILESTREAM_PRIVACY_KEY", raising=False)
    asked = [arg for arg in privacy(deployment, "delete", f"--identity={COOKIE}") if not arg.startswith("--key-file")]

    assert main(asked) == 2
    assert main(privacy(deployment, "delete", "--identity=no-colon")) == 2
    assert main(privacy(deployment, "access", "--identity=Nope:x")) == 2

    err = capsys.readouterr().err
    assert len(err.splitlines()) == 3 and "Traceback" not in err and "48184326913614089899787983293008731525" not in err


def store_rows(work: Path) -> dict[str, list[tuple]]:
    """Every row of every table of the two stores, sorted."""
    rows = {}
    for name in ("identity.sqlite", "profiles.sqlite"):
        store = sqlite3.connect(work / name)
        tables = [table for (table,) in store.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        for table in tables:
            rows[f"{name}/{table}"] = sorted(store.execute(f"SELECT * FROM {table}"), key=repr)
        store.close()
    return rows


@pytest.fixture(scope="module")
def deleted_once(replayed, tmp_path_factory) -> Path:
    """The replayed deployment after one uninterrupted delete."""
    work = tmp_path_factory.mktemp("deleted") / "deployment"
    shutil.copytree(replayed, work)
    (work / "key").write_text(KEY)
    assert main(privacy(work, "delete", f"--identity={COOKIE}")) == 0
    return work


# Seconds after the start of the process: Python and its imports take about the first one; the job the next few.
@pytest.mark.parametrize("kill_after_s", [0.8, 1.5, 2.2, 3.0, 4.0])
def test_a_delete_killed_anywhere_and_run_again_ends_as_an_uninterrupted_one(
    deployment, deleted_once, kill_after_s, capsys
):
    command = [sys.executable, "-m", "pipelines.cli", *privacy(deployment, "delete", f"--identity={COOKIE}")]
    job = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(kill_after_s)
    job.kill()
    job.wait(timeout=30)

    assert main(privacy(deployment, "delete", f"--identity={COOKIE}")) == 0

    assert decoded_lake(deployment) == decoded_lake(deleted_once)
    assert store_rows(deployment) == store_rows(deleted_once)
