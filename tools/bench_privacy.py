"""``make bench``, privacy part: erasing one person from a Parquet lake, beside reading the whole lake once.

    python -m tools.bench_privacy [--rows N] [--files N] [--persons N]

Lake: ``--rows`` (1,000,000) ``experience_events`` rows in the real schema (:func:`lake.rows.lake_schemas`) and the
lake writer's layout and file format (hourly partitions of 5-minute windows, :func:`lake.files.write_parquet`, a
footer holding a row-identity digest per row), in ``--files`` (100) files, written into a temporary folder removed at
the end. Each row is a page view of one of ``--persons`` (50,000) persons: an event id, times, a page name and URL,
the person's ECID in ``identityMap`` (and their e-mail in one row of four, as signed in), and their ``_person_id``.
The subject is one more person, with :data:`SUBJECT_ROWS` rows in :data:`SUBJECT_FILES` of the files.

Figures, beside the reference from the same run (docs/decisions/0027-benchmarks-print-a-reference-from-the-same-run.md):

- **read**: pyarrow reading every file of the lake whole, once (the reference: a job that looks at every row);
- **dry run**: :func:`privacy.lake.scan` for the subject (the columns the matcher needs, of every file);
- **erase**: :func:`privacy.lake.erase` for the subject (its scan, then rewriting the files it found);
- **the figure**: erase / read, with the files and bytes rewritten. The erasure is checked: no row of the subject is
  left, and every other row is.

Under a minute on a 2-core machine, most of it writing the lake.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import os
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from core.clock import EPOCH
from identity.model import Identity
from lake.files import IDENTITIES_KEY, IDENTITY_BYTES, PANE_KEY, RUN_KEY, write_parquet
from lake.rows import lake_schemas
from pipelines.config import Config
from privacy.lake import LakeErasure, LakeMatcher, erase, scan
from privacy.subjects import Subject
from schemas.registry import SchemaRegistry

DATASET = "experience_events"
ROWS = 1_000_000
FILES = 100
PERSONS = 50_000
SUBJECT_ROWS = 20
SUBJECT_FILES = 5
SEED = 15
WINDOW_US = 300_000_000
START_US = 1_772_701_200_000_000  # 2026-03-05T09:00:00Z, a window's start
SIGNED_IN_SHARE = 4  # one row in this many holds the person's e-mail too


def subject_of(persons: int) -> Subject:
    """The person the benchmark erases: the one numbered ``persons``, after every other."""
    return Subject(
        identities=frozenset({Identity("ECID", _ecid(persons)), Identity("Email", _email(persons))}),
        person_ids=frozenset({_person_id(persons)}),
    )


def build_lake(lake_dir: str, rows: int, files: int, persons: int, seed: int = SEED) -> int:
    """Writes the benchmark's lake into ``lake_dir``; returns the subject's rows in it."""
    schema = lake_schemas(SchemaRegistry.load())[DATASET]
    random = np.random.default_rng(seed)
    owners = random.integers(0, persons, size=rows)
    bounds = [row * rows // files for row in range(files + 1)]
    chosen_files = random.choice(files, size=min(SUBJECT_FILES, files), replace=False)
    for turn, number in enumerate(chosen_files):
        # The subject's rows dealt out over the chosen files, every one of them getting some.
        share = len(range(turn, SUBJECT_ROWS, len(chosen_files)))
        span = bounds[number + 1] - bounds[number]
        owners[bounds[number] + random.choice(span, size=min(share, span), replace=False)] = persons
    for number in range(files):
        first, last = bounds[number], bounds[number + 1]
        window_us = START_US + number * WINDOW_US
        table = _events(schema, owners[first:last], first, window_us)
        footer = {
            RUN_KEY: "bench",
            PANE_KEY: f"pane-{number}",
            IDENTITIES_KEY: base64.b64encode(random.bytes(IDENTITY_BYTES * table.num_rows)).decode(),
        }
        start = EPOCH + datetime.timedelta(microseconds=window_us)
        folder = os.path.join(lake_dir, DATASET, f"date={start:%Y-%m-%d}", f"hour={start:%H}")
        os.makedirs(folder, exist_ok=True)
        write_parquet(table, footer, os.path.join(folder, f"part-{start:%Y%m%dT%H%M%SZ}-0-0-of-1.parquet"))
    return int(np.count_nonzero(owners == persons))


def read_lake(lake_dir: str) -> int:
    """Reads every file of the lake whole; returns the rows read."""
    return sum(
        pq.read_table(os.path.join(folder, name)).num_rows
        for folder, _, names in os.walk(lake_dir)
        for name in names
        if name.endswith(".parquet")
    )


def measure(lake_dir: str, matcher: LakeMatcher) -> tuple[float, float, float, LakeErasure]:
    """Seconds to read the lake, to scan it for the subject and to erase them, and what the erasure did."""
    began = time.perf_counter()
    read_lake(lake_dir)
    read_s = time.perf_counter() - began
    began = time.perf_counter()
    scan(lake_dir, matcher)
    scan_s = time.perf_counter() - began
    began = time.perf_counter()
    erasure = erase(lake_dir, matcher)
    erase_s = time.perf_counter() - began
    return read_s, scan_s, erase_s, erasure


def _events(schema: pa.Schema, owners: np.ndarray, first_row: int, window_us: int) -> pa.Table:
    """Page views by ``owners`` (person numbers), in ingestion-time order within the window; every column the rows
    leave empty is null."""
    count = len(owners)
    numbers = range(first_row, first_row + count)
    times = pa.array(window_us + np.arange(count) * (WINDOW_US // max(count, 1)), pa.timestamp("us", tz="UTC"))
    signed_in = np.arange(first_row, first_row + count) % SIGNED_IN_SHARE == 0
    columns = {
        "identityMap": _identity_map(schema.field("identityMap").type, owners, signed_in),
        "_id": pa.array([f"event-{number}" for number in numbers]),
        "timestamp": times,
        "eventType": pa.array(["web.webpagedetails.pageViews"] * count),
        "web": _web(schema.field("web").type, pc.cast(pa.array(owners % 500), pa.string())),
        "_message_id": pa.array([f"message-{number}" for number in numbers]),
        "_ingest_time": times,
        "_person_id": pa.array([_person_id(owner) for owner in owners]),
    }
    return pa.Table.from_arrays(
        [columns.get(field.name, pa.nulls(count, field.type)) for field in schema], schema=schema
    )


def _identity_map(map_type: pa.DataType, owners: np.ndarray, signed_in: np.ndarray) -> pa.Array:
    """The ``identityMap`` column: each row's ECID, and its e-mail where ``signed_in``, one item per namespace."""
    offsets = np.concatenate([[0], np.cumsum(1 + signed_in)]).astype(np.int32)
    ecid_at = offsets[:-1]
    email_at = ecid_at[signed_in] + 1
    keys = np.full(offsets[-1], "ECID", dtype=object)
    keys[email_at] = "Email"
    ids = np.empty(offsets[-1], dtype=object)
    ids[ecid_at] = [_ecid(owner) for owner in owners]
    ids[email_at] = [_email(owner) for owner in owners[signed_in]]
    item_type = map_type.item_type.value_type
    items = pa.StructArray.from_arrays(
        [pa.array(ids, pa.string()), pa.nulls(len(ids), pa.string()), pa.repeat(pa.scalar(True), len(ids))],
        fields=list(item_type),
    )
    one_item_each = pa.ListArray.from_arrays(np.arange(len(ids) + 1, dtype=np.int32), items)
    return pa.MapArray.from_arrays(offsets, pa.array(keys, pa.string()), one_item_each, type=map_type)


def _web(web_type: pa.DataType, pages: pa.Array) -> pa.Array:
    """The ``web`` column: each row's page name and URL in ``webPageDetails``, every other field null."""
    details_type = web_type.field("webPageDetails").type
    given = {
        "name": pc.binary_join_element_wise("page ", pages, ""),
        "URL": pc.binary_join_element_wise("https://example.com/", pages, ""),
    }
    details = pa.StructArray.from_arrays(
        [given.get(field.name, pa.nulls(len(pages), field.type)) for field in details_type], fields=list(details_type)
    )
    return pa.StructArray.from_arrays(
        [details if field.name == "webPageDetails" else pa.nulls(len(pages), field.type) for field in web_type],
        fields=list(web_type),
    )


def _ecid(person: int) -> str:
    return f"{person:038d}"


def _email(person: int) -> str:
    return f"person{person}@example.com"


def _person_id(person: int) -> str:
    return f"person-{person:08d}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=ROWS, help="rows in the lake")
    parser.add_argument("--files", type=int, default=FILES, help="files the rows are spread over")
    parser.add_argument("--persons", type=int, default=PERSONS, help="persons the rows belong to, besides the subject")
    args = parser.parse_args(argv)
    subject = subject_of(args.persons)
    matcher = LakeMatcher(subject, Config().stitch_settings())
    with tempfile.TemporaryDirectory() as lake_dir:
        subject_rows = build_lake(lake_dir, args.rows, args.files, args.persons)
        read_s, scan_s, erase_s, erasure = measure(lake_dir, matcher)
        left = read_lake(lake_dir)
        if scan(lake_dir, matcher) or left != args.rows - subject_rows:
            raise SystemExit(f"the erasure left {left:,} rows of {args.rows:,}, or some of the subject's")
    rewritten_mb = erasure.bytes_rewritten / 1e6
    print(
        f"privacy: lake of {args.rows:,} {DATASET} rows in {args.files} files, {args.persons:,} persons; the subject's "
        f"{subject_rows} rows in {len(erasure.files_rewritten)} files\n"
        f"read the whole lake    {read_s:7.2f} s\n"
        f"dry run (scan)         {scan_s:7.2f} s\n"
        f"erase one person       {erase_s:7.2f} s  ({len(erasure.files_rewritten)} files, {rewritten_mb:.1f} MB "
        f"rewritten, {sum(erasure.rows_removed.values())} rows removed)\n"
        f"ratio erase/read       {erase_s / read_s:7.2f}",
        flush=True,
    )


if __name__ == "__main__":
    main()
