"""``make bench``: throughput of the whole replay pipeline, each figure beside a reference from the same run.

The machines are shared and noisy, so no figure stands alone. The reference is the project's own pure functions
(replay reader, decode, validate, stitch, merge, lake-row and Arrow conversion) called in a plain loop over the same
input, timed in wall seconds and in CPU per message. Each pipeline (``--batch`` on one and on two workers, streaming
on the BundleBasedDirectRunner and on Prism, and the Beam-docs pipeline a user would write for the same job) runs on
N and on 3N distinct messages, and is rated past its start-up: the extra messages over the extra seconds, so a
runner's fixed start and end cost nothing. The ratios are printed with the targets of issue 14 and whether they were
met. The wide/sparse figure compares the cost of validating and converting the same entities against the built-in
ExperienceEvent schema (hundreds of leaf fields) and against a narrow schema holding just the fields they use.

    python -m tools.bench [--copies N] [--input FILE] [--skip-prism]
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import gc
import json
import os
import re
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

from jsonschema import Draft7Validator

from core.records import FailedRecord, LakeRow, ValidRecord
from identity.stitching import link_batch, record_identities
from lake.rows import change_row, failed_row, lake_schemas, valid_row
from messages.decoding import decode_message
from messages.replay_files import read_replay_file
from pipelines.config import Config
from pipelines.ingest import RunRequest, run, tuned_garbage_collection
from pipelines.local_runner import prism_binary
from profiles.writer import ProfileWriter
from schemas.arrow import table_from_rows
from schemas.json_schema import runtime_json_schema
from schemas.registry import SchemaRegistry
from schemas.validation import validate_decoded, validate_entity
from stores.opening import open_identity_store, open_profile_store

SAMPLE = Path(__file__).parents[1] / "pipelines" / "samples" / "stream.jsonl"
ROWS_PER_TABLE = 1000
# The stitch step's batch and MergeProfiles' buffer (max_buffered) by default.
BATCH = 500
EVENT_CLASS = "https://ns.adobe.com/xdm/context/experienceevent"
# The targets of issue 14: the loop's CPU per message, each pipeline's share of the loop's rate, two workers over
# one, and the --batch and streaming pipelines over the Beam-docs pipeline.
LOOP_TARGET_US = 300
PIPELINE_SHARE = 0.75
TWO_WORKERS = 1.6
DOCS_PIPELINE_TARGET = 1.8
DOCS_STREAMING_TARGET = 1.0
LONG_INPUT_TIMES = 3
WIDTH_ROUNDS = 5
NARROW_SCHEMA = {
    "$id": "https://example.com/bench/narrow-event",
    "class": "https://ns.adobe.com/xdm/context/experienceevent",
    "fieldGroups": [
        "https://ns.adobe.com/xdm/context/identitymap",
        "https://ns.adobe.com/xdm/context/experienceevent-web",
    ],
    "dataset": {"name": "narrow_events"},
}


def make_input(source: Path, copies: int, target: Path) -> int:
    """``copies`` copies of the sample stream with fresh message ids and entity ids, so nothing is a duplicate."""
    lines = source.read_bytes().splitlines()
    count = 0
    with target.open("wb") as out:
        for copy in range(copies):
            for line in lines:
                out.write(_renumbered(line, copy) + b"\n")
                count += 1
    return count


# An entity id in a JSON payload, compact or not; Avro payloads keep theirs (their strings are length-prefixed).
_ENTITY_ID = re.compile(rb'"_id"\s*:\s*"')


def _renumbered(line: bytes, copy: int) -> bytes:
    try:
        message = json.loads(line)
        message["messageId"] = f"{message['messageId']}-{copy}"
        payload = _ENTITY_ID.sub(rb"\g<0>c%d-" % copy, base64.b64decode(message["data"]))
        message["data"] = base64.b64encode(payload).decode()
    except (ValueError, KeyError, TypeError):
        return line
    return json.dumps(message).encode()


def plain_loop(path: Path, registry: SchemaRegistry, work_dir: Path) -> tuple[float, int]:
    """Seconds for the pure functions over the file, and the number of messages.

    The functions are the pipeline's own, called on batches of :data:`BATCH` messages as its steps make them: decode,
    validate, stitch (one identity-store round trip per batch), merge (one profile-store write per batch) and lake
    rows to Arrow tables of :data:`ROWS_PER_TABLE`, with SQLite stores in ``work_dir`` as the pipeline runs use.
    """
    config = Config()
    stitching = config.stitch_settings()
    profile_datasets = {name for name, dataset in registry.datasets.items() if dataset.profile}
    identity_url = f"sqlite:///{work_dir}/identity.sqlite"
    identity_store = open_identity_store(identity_url)
    profiles = ProfileWriter(
        registry,
        open_identity_store(identity_url),
        open_profile_store(f"sqlite:///{work_dir}/profiles.sqlite"),
        stitching,
        config.profile_settings(),
    )
    schemas = lake_schemas(registry)
    pending: dict[str, list] = defaultdict(list)

    def to_lake(row: LakeRow) -> None:
        rows = pending[row.dataset]
        rows.append(row.row)
        if len(rows) == ROWS_PER_TABLE:
            table_from_rows(rows, schemas[row.dataset])
            rows.clear()

    def stitch_and_merge(valid: list[ValidRecord]) -> None:
        found = [(record, record_identities(record, registry, stitching)) for record in valid]
        linking = [(record, identities) for record, identities in found if identities is not None]
        changes = [change for _, identities in linking for change in identities.rejected]
        stitched = [record for record, identities in found if identities is None]
        if linking:
            batch_changes, persons = link_batch(identity_store, stitching.graph, [entry for _, entry in linking])
            changes += batch_changes
            for (record, identities), person in zip(linking, persons, strict=True):
                stitched.append(dataclasses.replace(record, person_id=person, identities=identities.identities))
        profiles.write(
            [record for record in stitched if record.person_id is not None and record.dataset in profile_datasets],
            [change for change in changes if change.kind in ("merge", "split")],
        )
        for record in stitched:
            to_lake(valid_row(record))
        for change in changes:
            to_lake(change_row(change, change.time_us))

    with tuned_garbage_collection():  # as a run does
        start = time.perf_counter()
        messages = 0
        valid: list[ValidRecord] = []
        for message in read_replay_file(str(path), clock=time.time_ns):
            messages += 1
            for decoded in decode_message(message, registry.avro_schema_for):
                outcome = decoded if isinstance(decoded, FailedRecord) else validate_decoded(decoded, registry)
                if isinstance(outcome, FailedRecord):
                    to_lake(failed_row(outcome))
                else:
                    valid.append(outcome)
            if messages % BATCH == 0:
                stitch_and_merge(valid)
                valid = []
        stitch_and_merge(valid)
        for dataset, rows in pending.items():
            if rows:
                table_from_rows(rows, schemas[dataset])
        seconds = time.perf_counter() - start
    identity_store.close()
    profiles.close()
    return seconds, messages


def pipeline_seconds(
    path: Path,
    registry: SchemaRegistry,
    *,
    batch: bool,
    workers: int = 1,
    runner: str | None = None,
    beam_args: tuple[str, ...] = (),
) -> float:
    with tempfile.TemporaryDirectory() as lake:
        stores = f"sqlite:///{lake}/identity.sqlite", f"sqlite:///{lake}/profiles.sqlite"
        request = RunRequest(str(path), lake, *stores, batch=batch, workers=workers, runner=runner, beam_args=beam_args)
        start = time.perf_counter()
        run(request, registry, Config())
        return time.perf_counter() - start


def beam_docs_pipeline_seconds(path: Path, registry: SchemaRegistry) -> float:
    """The pipeline a Beam user would write from Beam's documentation for the same job, in batch on FnApiRunner:
    read → ``json.loads`` → ``jsonschema`` (the ExperienceEvent schema's JSON Schema form) → ``WriteToParquet``, with
    no stitching and no profiles."""
    import apache_beam as beam
    import pyarrow as pa

    validator = Draft7Validator(runtime_json_schema(registry.get(EVENT_CLASS).root))
    parquet_schema = pa.schema([(name, pa.string()) for name in ("_id", "timestamp", "eventType", "entity")])

    def entity(line: str) -> dict | None:
        try:
            payload = json.loads(base64.b64decode(json.loads(line)["data"]))
            return payload["body"]["xdmEntity"]
        except (ValueError, KeyError, TypeError):
            return None

    def row(event: dict) -> dict:
        fields = {name: str(event.get(name)) for name in ("_id", "timestamp", "eventType")}
        return {**fields, "entity": json.dumps(event)}

    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        with beam.Pipeline(runner="FnApiRunner") as pipeline:
            _ = (
                pipeline
                | beam.io.ReadFromText(str(path))
                | beam.Map(entity)
                | beam.Filter(lambda event: isinstance(event, dict) and validator.is_valid(event))
                | beam.Map(row)
                | beam.io.WriteToParquet(f"{out}/events", parquet_schema)
            )
        return time.perf_counter() - start


def schema_width_costs(path: Path, registry: SchemaRegistry, narrow: SchemaRegistry) -> tuple[float, float, int]:
    """µs per entity to validate and convert narrow-shaped events against the wide and the narrow schema."""
    wide_schema = registry.get("https://ns.adobe.com/xdm/context/experienceevent")
    narrow_schema = narrow.get(NARROW_SCHEMA["$id"])
    entities = []
    for message in read_replay_file(str(path), clock=time.time_ns):
        for decoded in decode_message(message, registry.avro_schema_for):
            if isinstance(decoded, FailedRecord) or decoded.schema_id != wide_schema.schema_id:
                continue
            entity = {key: value for key, value in decoded.entity.items() if key in narrow_schema.root.accepts}
            _, errors = validate_entity(entity, narrow_schema, message.publish_time_us)
            if not errors:
                entities.append((entity, message.publish_time_us))
    # Alternate the two and keep each one's best of several rounds, without the collector's pauses: the machine is
    # shared and noisy.
    best = {wide_schema.schema_id: float("inf"), narrow_schema.schema_id: float("inf")}
    for _ in range(WIDTH_ROUNDS):
        for schema in (wide_schema, narrow_schema):
            gc.collect()
            gc.disable()
            start = time.perf_counter()
            rows = []
            for entity, ingest_time in entities:
                normalised, _ = validate_entity(entity, schema, ingest_time)
                rows.append(dict(normalised, _message_id="m", _ingest_time=ingest_time))
            for offset in range(0, len(rows), ROWS_PER_TABLE):
                table_from_rows(rows[offset : offset + ROWS_PER_TABLE], schema.arrow_schema)
            seconds = (time.perf_counter() - start) / max(len(entities), 1) * 1e6
            gc.enable()
            best[schema.schema_id] = min(best[schema.schema_id], seconds)
    costs = [best[wide_schema.schema_id], best[narrow_schema.schema_id]]
    return costs[0], costs[1], len(entities)


@dataclasses.dataclass(frozen=True)
class Rate:
    """A pipeline's messages per second past its start-up: the extra messages of the long input over the extra
    seconds it took, so start-up and shut-down (the same for both) cancel out."""

    short_s: float
    long_s: float
    extra_messages: int

    @property
    def per_second(self) -> float:
        return self.extra_messages / max(self.long_s - self.short_s, 1e-9)

    def __str__(self) -> str:
        return f"{self.per_second:8,.0f} msg/s  ({self.short_s:5.1f} s for N, {self.long_s:5.1f} s for 3N)"


def _target(value: float, target: float, at_least: bool = True) -> str:
    met = value >= target if at_least else value <= target
    return f"target {'≥' if at_least else '≤'} {target:g}: {'met' if met else 'MISSED'}"


def _compared(label: str, ratio: float, target: float) -> None:
    print(f"  {label:<62} {ratio:5.2f}x ({_target(ratio, target)})")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, default=5, help="copies of the sample stream in the short input (N)")
    parser.add_argument("--input", type=Path, default=SAMPLE)
    parser.add_argument("--skip-prism", action="store_true", help="leave out the Prism figure")
    args = parser.parse_args(argv)
    registry = SchemaRegistry.load()
    with tempfile.TemporaryDirectory() as work:
        narrow_dir = Path(work, "schemas")
        narrow_dir.mkdir()
        (narrow_dir / "narrow.json").write_text(json.dumps(NARROW_SCHEMA))
        narrow = SchemaRegistry.load(narrow_dir)
        short, long = Path(work, "short.jsonl"), Path(work, "long.jsonl")
        messages = make_input(args.input, args.copies, short)
        extra = make_input(args.input, LONG_INPUT_TIMES * args.copies, long) - messages
        loop_dir = Path(work, "loop")
        loop_dir.mkdir()
        cpu_start = time.process_time()
        loop_seconds, counted = plain_loop(short, registry, loop_dir)
        loop_cpu_us = (time.process_time() - cpu_start) / counted * 1e6
        assert counted == messages
        loop_rate = messages / loop_seconds
        print(
            f"input: N = {messages} and 3N = {messages + extra} messages (copies of {args.input.name}, each distinct)"
        )
        print(
            f"reference loop (decode+validate+stitch+merge+arrow): {loop_rate:8,.0f} msg/s, "
            f"{loop_cpu_us:6.0f} µs of CPU per message ({_target(loop_cpu_us, LOOP_TARGET_US, at_least=False)})"
        )
        print("pipelines, messages/s past start-up ((3N - N) messages over the difference of their wall times):")
        pipelines = {
            "--batch, 1 worker (FnApiRunner)": dict(batch=True, workers=1),
            "--batch, 2 workers (FnApiRunner)": dict(batch=True, workers=2),
            "streaming (BundleBasedDirectRunner)": dict(batch=False),
        }
        prism = prism_binary()
        if args.skip_prism or not os.access(prism, os.X_OK):
            print(f"  streaming (PrismRunner): skipped ({'--skip-prism' if args.skip_prism else f'no {prism}'})")
        else:
            pipelines["streaming (PrismRunner)"] = dict(
                batch=False, runner="PrismRunner", beam_args=(f"--prism_location={prism}",)
            )

        def past_start_up(seconds_for: Callable[[Path], float]) -> Rate:
            return Rate(seconds_for(short), seconds_for(long), extra)

        rates = {}
        for label, options in pipelines.items():
            rate = past_start_up(lambda path, options=options: pipeline_seconds(path, registry, **options))
            rates[label] = rate.per_second
            print(f"  {label:<37} {rate}")
        docs = past_start_up(lambda path: beam_docs_pipeline_seconds(path, registry))
        print(f"  {'Beam-docs pipeline (FnApiRunner)':<37} {docs}: read, json.loads, jsonschema, WriteToParquet")
        one, two = rates["--batch, 1 worker (FnApiRunner)"], rates["--batch, 2 workers (FnApiRunner)"]
        streaming = rates["streaming (BundleBasedDirectRunner)"]
        print("ratios:")
        for label, rate in rates.items():
            if label != "--batch, 2 workers (FnApiRunner)":
                _compared(f"{label} over the loop", rate / loop_rate, PIPELINE_SHARE)
        _compared("two workers over one", two / one, TWO_WORKERS)
        _compared("--batch (2 workers) over the Beam-docs pipeline", two / docs.per_second, DOCS_PIPELINE_TARGET)
        _compared("streaming over the Beam-docs pipeline", streaming / docs.per_second, DOCS_STREAMING_TARGET)
        wide, narrow_cost, entities = schema_width_costs(short, registry, narrow)
        wide_leaves = registry.get("https://ns.adobe.com/xdm/context/experienceevent").root.leaf_count()
        narrow_leaves = narrow.get(NARROW_SCHEMA["$id"]).root.leaf_count()
        print(
            f"wide schema ({wide_leaves} leaves) {wide:7.1f} µs/entity vs narrow ({narrow_leaves} leaves) "
            f"{narrow_cost:7.1f} µs/entity over {entities} events: ratio {wide / narrow_cost:4.2f}"
        )


if __name__ == "__main__":
    main()
