"""Tests for privacy/lake.py: which rows are a subject's, and scanning, erasing and exporting them in a local lake.

Most lakes here are written directly in the lake writer's layout and file format (:func:`lake.files.write_parquet`,
a footer like the writer's); the test with the lake writer itself runs ``WriteToLake`` on the FnApiRunner with the
helpers of tests/transforms/test_lake.py. Ann is the subject throughout; Bob and Carol are bystanders.
"""

import base64
import concurrent.futures
import dataclasses
import fcntl
import hashlib
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from identity.graph import GraphRules
from identity.model import Identity
from identity.namespaces import IdentityRules, NamespaceRegistry, extract_identities
from identity.stitching import StitchSettings
from lake.files import IDENTITIES_KEY, IDENTITY_BYTES, PANE_KEY, RUN_KEY, read_footer, write_parquet
from lake.folders import clean_stale_temp_files
from lake.rows import FAILED_RECORDS, IDENTITY_CHANGES, lake_schemas
from privacy.lake import FileHit, LakeMatcher, erase, export, scan
from privacy.subjects import Subject
from schemas.arrow import table_from_rows
from schemas.registry import SchemaRegistry
from tests.transforms.test_lake import DATASET as WRITER_DATASET
from tests.transforms.test_lake import T0_NAME, at, counter, lake_files, lake_row, message_ids, run_batch, temp_files

ROOT = pathlib.Path(__file__).parents[2]
SCHEMAS = lake_schemas(SchemaRegistry.load())
EVENTS = "experience_events"
PROFILES = "profile_records"
PARTITION = "date=2026-03-05/hour=09"
ANN_ECID = "2" * 38
BOB_ECID = "3" * 38
STITCH = StitchSettings(NamespaceRegistry(), IdentityRules(), GraphRules())
ANN = Subject(
    identities=frozenset(
        {Identity("Email", "ann@example.com"), Identity("ECID", ANN_ECID), Identity("Phone", "+12025550123")}
    ),
    person_ids=frozenset({"p-ann", "p-ann-merged-away"}),
    given=frozenset({"Ann@Example.com"}),
)


def ann_matcher() -> LakeMatcher:
    return LakeMatcher(ANN, STITCH)


def event(message_id: str, person_id: str | None = None, **identity_map: str) -> dict:
    """An experience event row whose ``identityMap`` holds one id per namespace key given."""
    return {
        "_id": f"event-{message_id}",
        "eventType": "web.webpagedetails.pageViews",
        "identityMap": {key: [{"id": value, "primary": True}] for key, value in identity_map.items()} or None,
        "_message_id": message_id,
        "_ingest_time": 1_772_701_200_000_000,
        "_person_id": person_id,
    }


def change(message_id: str, identities: list[str], before: list[str] = (), after: list[str] = ()) -> dict:
    return {
        "kind": "linked",
        "identities": identities,
        "persons_before": list(before),
        "persons_after": list(after),
        "message_id": message_id,
        "_message_id": message_id,
    }


def failed(message_id: str, data: bytes, **attributes: str) -> dict:
    return {
        "data": data,
        "attributes": attributes,
        "message_id": message_id,
        "publish_time": 1_772_701_200_000_000,
        "stage": "decode",
        "_message_id": message_id,
    }


def write_lake_file(lake: pathlib.Path, dataset: str, name: str, rows: list[dict]) -> str:
    """Writes ``rows`` as a lake file as the lake writer would, footer included (an identity per message id); returns
    its path relative to the lake."""
    relative = f"{dataset}/{PARTITION}/{name}"
    path = lake / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    digests = b"".join(
        hashlib.blake2b(row["_message_id"].encode(), digest_size=IDENTITY_BYTES).digest() for row in rows
    )
    footer = {RUN_KEY: "run-1", PANE_KEY: "digest", IDENTITIES_KEY: base64.b64encode(digests).decode()}
    write_parquet(table_from_rows(rows, SCHEMAS[dataset]), footer, str(path))
    return relative


def sample_lake(lake: pathlib.Path) -> dict[str, str]:
    """A lake of every kind of dataset where Ann shows up in every way a row can be hers; returns its files by
    role."""
    return {
        "events": write_lake_file(
            lake,
            EVENTS,
            "part-20260305T090000Z-0-0-of-1.parquet",
            [
                event("m1", "p-ann"),
                event("m2", "p-bob", ECID=BOB_ECID),
                event("m3", None, ECID=ANN_ECID),
                event("m4", "p-carol", Email="carol@example.com"),
            ],
        ),
        "bob only": write_lake_file(
            lake, EVENTS, "part-20260305T090000Z-1-0-of-1.parquet", [event("m5", "p-bob", ECID=BOB_ECID)]
        ),
        "ann only": write_lake_file(
            lake,
            EVENTS,
            "part-20260305T090000Z-2-0-of-1.parquet",
            [event("m6", "p-ann-merged-away"), event("m7", None, email=" ANN@example.COM ")],
        ),
        "profiles": write_lake_file(
            lake,
            PROFILES,
            "part-20260305T090000Z-0-0-of-1.parquet",
            [
                {"_message_id": "p1", "personalEmail": {"address": "Ann@Example.com"}},
                {"_message_id": "p2", "personalEmail": {"address": "bob@example.com"}},
                {"_message_id": "p3", "mobilePhone": {"number": "(202) 555-0123"}},
            ],
        ),
        "changes": write_lake_file(
            lake,
            IDENTITY_CHANGES,
            "part-20260305T090000Z-0-0-of-1.parquet",
            [
                change("c1", ["Email:ann@example.com", f"ECID:{BOB_ECID}"]),
                change("c2", [f"ECID:{BOB_ECID}"], before=["p-bob"], after=["p-bob"]),
                change("c3", ["CRMID:42"], before=["p-ann-merged-away"], after=["p-x"]),
            ],
        ),
        "failed": write_lake_file(
            lake,
            FAILED_RECORDS,
            "part-20260305T090000Z-0-0-of-1.parquet",
            [
                failed("f1", b'{"personalEmail": {"address": "Ann@Example.com"'),
                failed("f2", b'{"identityMap": {"Email": [{"id": "bob@example.com"}]}}'),
                failed("f3", b"not json", sender="ann@example.com"),
                failed("f4", base64.b64encode(b'{"email": "ann@example.com"}')),
                failed("f5", b"\xff\xfe binary " + ANN_ECID.encode() + b"\x00"),
            ],
        ),
    }


def rows_of(lake: pathlib.Path, relative: str) -> list[str]:
    return pq.read_table(lake / relative).column("_message_id").to_pylist()


def lake_state(lake: pathlib.Path) -> dict[str, tuple[list[dict], dict[str, str]]]:
    """Every lake file's rows and footer, by path relative to the lake."""
    return {
        str(path.relative_to(lake)): (pq.read_table(path).to_pylist(), read_footer(pq.read_metadata(path)))
        for path in sorted(lake.glob("*/date=*/hour=*/*.parquet"))
    }


# Which rows are the subject's.


def test_a_record_row_is_the_subjects_by_person_id_or_by_any_identity_normalised_as_ingestion_does():
    rows = [
        event("by person id", "p-ann"),
        event("by a retired person id", "p-ann-merged-away"),
        event("by ECID", ECID=ANN_ECID),
        event("by e-mail in another case and spacing", email=" ANN@example.COM "),
        event("by the namespace's URL form", **{"https://data.adobe.io/entities/namespace/6": "ann@example.com"}),
        event("by a no-break space Python's strip removes", Email="\u00a0ann@example.com"),
        event("by phone in national form", Phone="(202) 555-0123"),
        event("bob", "p-bob", ECID=BOB_ECID, Email="bob@example.com"),
        event("ann's e-mail under another namespace", CRMID="ann@example.com"),
        event("an e-mail that contains ann's", Email="joann@example.com"),
        event("no identities"),
    ]
    table = table_from_rows(rows, SCHEMAS[EVENTS])

    matched = ann_matcher().mask(EVENTS, table).to_pylist()

    assert [row["_message_id"] for row, hit in zip(rows, matched, strict=True) if hit] == [
        row["_message_id"] for row in rows[:7]
    ]


def test_identity_fields_are_read_at_their_paths_and_normalised():
    rows = [
        {"_message_id": "e-mail field", "personalEmail": {"address": "Ann@Example.com"}},
        {"_message_id": "phone field", "homePhone": {"number": "+1 202 555 0123"}},
        {
            "_message_id": "bob",
            "personalEmail": {"address": "bob@example.com"},
            "mobilePhone": {"number": "2025550199"},
        },
        {"_message_id": "struct without the field", "personalEmail": {}},
    ]

    matched = ann_matcher().mask(PROFILES, table_from_rows(rows, SCHEMAS[PROFILES])).to_pylist()

    assert matched == [True, True, False, False]


IDS = st.sampled_from(
    ["ann@example.com", "bob@example.com", ANN_ECID, BOB_ECID, "(202) 555-0123", "2025550199", "null", "x@y@z"]
)
VARIANTS = st.tuples(IDS, st.sampled_from(["", " ", "\u00a0", "\t", "\u2003", "\x1f"]), st.booleans())
KEYS = st.sampled_from(
    ["Email", "email", "ECID", "Phone", "CRMID", "Unknown", "https://data.adobe.io/entities/namespace/4"]
)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.dictionaries(KEYS, VARIANTS, max_size=3), min_size=1, max_size=8))
def test_the_vectorised_mask_agrees_with_normalising_every_identity_of_every_row(identity_maps):
    rows = [
        event(
            f"m{number}",
            **{key: f"{pad}{raw.upper() if upper else raw}{pad}" for key, (raw, pad, upper) in found.items()},
        )
        for number, found in enumerate(identity_maps)
    ]

    matched = ann_matcher().mask(EVENTS, table_from_rows(rows, SCHEMAS[EVENTS])).to_pylist()

    expected = [
        not ANN.identities.isdisjoint(extract_identities(row, STITCH.namespaces, STITCH.rules).identities)
        for row in rows
    ]
    assert matched == expected


def test_an_identity_change_is_the_subjects_by_any_identity_or_person_before_or_after():
    rows = [
        change("identity", ["Email:ann@example.com", f"ECID:{BOB_ECID}"]),
        change("person before", ["CRMID:42"], before=["p-ann-merged-away"], after=["p-x"]),
        change("person after", ["CRMID:43"], after=["p-ann"]),
        change("bob", [f"ECID:{BOB_ECID}"], before=["p-bob"], after=["p-bob"]),
        change("an id as given is no key", ["Email:Ann@Example.com"]),
    ]

    matched = ann_matcher().mask(IDENTITY_CHANGES, table_from_rows(rows, SCHEMAS[IDENTITY_CHANGES])).to_pylist()

    assert matched == [True, True, True, False, False]


def test_a_failed_record_is_the_subjects_when_its_bytes_or_an_attribute_hold_an_id_verbatim():
    rows = [
        failed("as given", b'{"address": "Ann@Example.com"}'),
        failed("as normalised", b"email=ann@example.com&x=1"),
        failed("in binary", b"\xff\xfe" + ANN_ECID.encode() + b"\x00"),
        failed("in an attribute", b"{}", sender="ann@example.com"),
        failed("bob", b'{"id": "bob@example.com"}', sender="bob"),
        failed("base64-wrapped", base64.b64encode(b"ann@example.com")),
        failed("another case than both forms", b"ANN@EXAMPLE.COM"),
        failed("json escapes", b'"ann\\u0040example.com"'),
    ]

    matched = ann_matcher().mask(FAILED_RECORDS, table_from_rows(rows, SCHEMAS[FAILED_RECORDS])).to_pylist()

    assert matched == [True, True, True, True, False, False, False, False]


def test_the_matcher_reads_only_the_columns_it_needs():
    matcher = ann_matcher()

    assert matcher.columns(EVENTS, SCHEMAS[EVENTS]) == ["identityMap", "_person_id"]
    assert matcher.columns(IDENTITY_CHANGES, SCHEMAS[IDENTITY_CHANGES]) == [
        "identities",
        "persons_before",
        "persons_after",
    ]
    assert matcher.columns(FAILED_RECORDS, SCHEMAS[FAILED_RECORDS]) == ["data", "attributes"]


def test_an_empty_table_has_an_empty_mask():
    for dataset in (EVENTS, IDENTITY_CHANGES, FAILED_RECORDS):
        assert len(ann_matcher().mask(dataset, SCHEMAS[dataset].empty_table())) == 0


# Scan, erase, export.


def test_scan_lists_the_files_holding_the_subjects_rows_and_changes_nothing(tmp_path):
    files = sample_lake(tmp_path)
    before = {path: (path.read_bytes(), path.stat().st_mtime_ns) for path in tmp_path.rglob("*.parquet")}

    hits = scan(str(tmp_path), ann_matcher())

    assert hits == [
        FileHit(files["events"], EVENTS, 4, 2),
        FileHit(files["ann only"], EVENTS, 2, 2),
        FileHit(files["failed"], FAILED_RECORDS, 5, 3),
        FileHit(files["changes"], IDENTITY_CHANGES, 3, 2),
        FileHit(files["profiles"], PROFILES, 3, 2),
    ]
    assert {path: (path.read_bytes(), path.stat().st_mtime_ns) for path in tmp_path.rglob("*.parquet")} == before


def test_erase_rewrites_each_file_without_the_subjects_rows_keeping_everything_else(tmp_path):
    files = sample_lake(tmp_path)
    before = {relative: pq.ParquetFile(tmp_path / relative) for relative in files.values()}

    erasure = erase(str(tmp_path), ann_matcher())

    assert erasure.files_rewritten == [files[role] for role in ("events", "ann only", "failed", "changes", "profiles")]
    assert erasure.rows_removed == {EVENTS: 4, FAILED_RECORDS: 3, IDENTITY_CHANGES: 2, PROFILES: 2}
    assert erasure.bytes_rewritten == sum(os.path.getsize(tmp_path / path) for path in erasure.files_rewritten)
    assert rows_of(tmp_path, files["events"]) == ["m2", "m4"]
    assert rows_of(tmp_path, files["bob only"]) == ["m5"]
    assert rows_of(tmp_path, files["ann only"]) == []
    assert rows_of(tmp_path, files["profiles"]) == ["p2"]
    assert rows_of(tmp_path, files["changes"]) == ["c2"]
    assert rows_of(tmp_path, files["failed"]) == ["f2", "f4"]
    for relative, old in before.items():
        new = pq.ParquetFile(tmp_path / relative)
        assert new.schema_arrow == old.schema_arrow
        # The removed rows' identities stay: a copy of an erased message is still a duplicate.
        assert read_footer(new.metadata) == read_footer(old.metadata)
        if new.metadata.num_rows:
            assert new.metadata.row_group(0).column(0).compression == "ZSTD"
    assert temp_files(str(tmp_path)) == []


def test_erasing_again_rewrites_nothing(tmp_path):
    sample_lake(tmp_path)
    erase(str(tmp_path), ann_matcher())
    after_first = {path: path.read_bytes() for path in tmp_path.rglob("*.parquet")}

    again = erase(str(tmp_path), ann_matcher())

    assert again.files_rewritten == [] and again.rows_removed == {} and again.bytes_rewritten == 0
    assert {path: path.read_bytes() for path in tmp_path.rglob("*.parquet")} == after_first
    assert scan(str(tmp_path), ann_matcher()) == []


def test_export_writes_the_subjects_rows_of_each_dataset_as_one_file_with_its_schema(tmp_path):
    lake, out = tmp_path / "lake", tmp_path / "export"
    sample_lake(lake)

    exported = export(str(lake), ann_matcher(), str(out))

    assert exported == {EVENTS: 4, FAILED_RECORDS: 3, IDENTITY_CHANGES: 2, PROFILES: 2}
    assert sorted(os.listdir(out)) == sorted(f"{dataset}.parquet" for dataset in exported)
    events = pq.read_table(out / f"{EVENTS}.parquet")
    assert events.schema == SCHEMAS[EVENTS]
    assert events.column("_message_id").to_pylist() == ["m1", "m3", "m6", "m7"]
    assert pq.read_table(out / f"{FAILED_RECORDS}.parquet").column("_message_id").to_pylist() == ["f1", "f3", "f5"]
    assert scan(str(lake), ann_matcher()) != []  # exporting changes nothing


def test_an_object_store_lake_is_refused_in_one_line_without_the_subject():
    for run in (
        lambda: scan("gs://bucket/lake", ann_matcher()),
        lambda: erase("gs://bucket/lake", ann_matcher()),
        lambda: export("gs://bucket/lake", ann_matcher(), "out"),
    ):
        with pytest.raises(ValueError, match="local lake") as refused:
            run()
        assert "\n" not in str(refused.value) and "ann" not in str(refused.value).lower()


@pytest.mark.parametrize("linked", [EVENTS, f"{EVENTS}/date=2026-03-05"])
def test_a_linked_folder_in_the_lake_is_refused_not_followed(tmp_path, linked):
    lake, elsewhere = tmp_path / "lake", tmp_path / "elsewhere"
    sample_lake(elsewhere)
    (lake / linked).parent.mkdir(parents=True, exist_ok=True)
    (lake / linked).symlink_to(elsewhere / linked)
    before = lake_state(elsewhere)

    for run in (scan, erase):
        with pytest.raises(ValueError, match="symbolic link"):
            run(str(lake), ann_matcher())

    assert lake_state(elsewhere) == before


def test_erasures_of_one_lake_take_turns(tmp_path):
    sample_lake(tmp_path)
    (tmp_path / ".tmp").mkdir()
    with open(tmp_path / ".tmp" / "privacy-erasure.lock", "w") as other_erasure:
        fcntl.flock(other_erasure, fcntl.LOCK_EX)
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            waiting = pool.submit(erase, str(tmp_path), ann_matcher())
            time.sleep(0.5)
            assert not waiting.done()
            fcntl.flock(other_erasure, fcntl.LOCK_UN)
            assert waiting.result(timeout=60).rows_removed[EVENTS] == 4


# The lake writer over files an erasure rewrote.


def person_row(key: str, seconds: float, message_id: str, ecid: str):
    row = lake_row(key, at(seconds), message_id)
    return dataclasses.replace(row, row={**row.row, "identityMap": {"ECID": [{"id": ecid, "primary": True}]}})


def test_the_lake_writer_after_an_erasure_takes_the_next_pane_and_writes_no_copy_of_a_kept_or_an_erased_row(tmp_path):
    lake = str(tmp_path)
    run_batch(lake, [person_row("e1", 10, "m1", ANN_ECID), person_row("e2", 20, "m2", BOB_ECID)])
    pane0 = f"{T0_NAME}-0-0-of-1.parquet"
    assert erase(lake, ann_matcher()).rows_removed == {WRITER_DATASET: 1}

    # A copy of Bob's kept row, a redelivery of Ann's erased one, and a new row.
    result = run_batch(
        lake,
        [
            person_row("e2", 30, "m2", BOB_ECID),
            person_row("e1", 40, "m1", ANN_ECID),
            person_row("e3", 50, "m3", BOB_ECID),
        ],
    )

    assert lake_files(lake) == [pane0, f"{T0_NAME}-1-0-of-1.parquet"]
    assert message_ids(lake, pane0) == ["m2"]
    assert message_ids(lake, f"{T0_NAME}-1-0-of-1.parquet") == ["m3"]
    assert counter(result, "duplicates") == 2


# Killed erasures.

KILLED_ERASURE = """
import os, signal, sys

from privacy.lake import erase
from tests.privacy.test_lake import ann_matcher

lake, when = sys.argv[1:]
replace = os.replace


def replace_and_die(source, target):
    if when == "after the first file":
        replace(source, target)
    os.kill(os.getpid(), signal.SIGKILL)


os.replace = replace_and_die
erase(lake, ann_matcher())
"""


@pytest.mark.parametrize("when", ["before the first file", "after the first file"])
def test_an_erasure_killed_midway_and_run_again_ends_as_one_that_was_not(tmp_path, when):
    lake, uninterrupted = tmp_path / "lake", tmp_path / "uninterrupted"
    sample_lake(lake)
    shutil.copytree(lake, uninterrupted)
    erase(str(uninterrupted), ann_matcher())

    killed = subprocess.run(
        [sys.executable, "-c", KILLED_ERASURE, str(lake), when], cwd=ROOT, capture_output=True, check=False
    )

    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()
    assert len(temp_files(str(lake))) == (1 if when == "before the first file" else 0)
    erase(str(lake), ann_matcher())
    assert lake_state(lake) == lake_state(uninterrupted)
    assert temp_files(str(lake)) == []


def test_the_temporary_file_of_a_killed_erasure_is_cleaned_as_a_killed_writers_is(tmp_path):
    sample_lake(tmp_path)
    subprocess.run(
        [sys.executable, "-c", KILLED_ERASURE, str(tmp_path), "before the first file"], cwd=ROOT, check=False
    )
    assert len(temp_files(str(tmp_path))) == 1

    assert clean_stale_temp_files(str(tmp_path)) == 1

    assert temp_files(str(tmp_path)) == []
