"""``make bench``'s reference loop does the pipeline's work: on the same input it leaves the profiles a ``--batch`` run
leaves, so the pipeline's ratio to it compares like with like.

Which person ids a merge retires on the way depends on how records were batched (a person born and merged within one
batch never exists), so redirects and the views of retired persons may differ; the fragments, the identity index and
every current person's view may not. Both close their profile writers, which folds every delta into the fragments'
bases, so the bases compare as they are and no delta is left."""

from __future__ import annotations

import time

from core.records import FailedRecord
from messages.decoding import decode_message
from messages.replay_files import read_replay_file
from pipelines.config import Config
from pipelines.ingest import RunRequest, run
from schemas.registry import SchemaRegistry
from tests.pipelines.test_run import sqlite_contents
from tools.bench import SAMPLE, make_input, plain_loop


def test_the_reference_loop_leaves_the_profiles_of_a_batch_run(tmp_path):
    registry = SchemaRegistry.load()
    stream = tmp_path / "input.jsonl"
    messages = make_input(SAMPLE, 2, stream)
    loop_dir, run_dir = tmp_path / "loop", tmp_path / "run"
    loop_dir.mkdir()
    run_dir.mkdir()

    _, counted = plain_loop(stream, registry, loop_dir)
    stores = f"sqlite:///{run_dir}/identity.sqlite", f"sqlite:///{run_dir}/profiles.sqlite"
    run(RunRequest(str(stream), str(run_dir / "lake"), *stores, batch=True), registry, Config())

    assert counted == messages
    reference, pipeline = sqlite_contents(loop_dir / "profiles.sqlite"), sqlite_contents(run_dir / "profiles.sqlite")
    assert reference["redirects"]  # merges happened
    assert reference["fragment_deltas"] == pipeline["fragment_deltas"] == []
    for table in ("fragments", "identity_index"):
        assert reference[table] == pipeline[table]
    assert current_views(reference) == current_views(pipeline)
    assert len(current_views(reference)) > 100


def current_views(store: dict[str, list]) -> list:
    persons = {person for _, person in store["identity_index"]}
    return [view for view in store["views"] if view[0] in persons]


def test_each_copy_of_the_input_has_its_own_message_and_entity_ids(tmp_path):
    registry = SchemaRegistry.load()
    one, three = tmp_path / "one.jsonl", tmp_path / "three.jsonl"
    make_input(SAMPLE, 1, one)
    make_input(SAMPLE, 3, three)

    def ids(path):
        messages, entities = set(), set()
        for message in read_replay_file(str(path), clock=time.time_ns):
            messages.add(message.message_id)
            for decoded in decode_message(message, registry.avro_schema_for):
                if not isinstance(decoded, FailedRecord) and isinstance(decoded.entity.get("_id"), str):
                    entities.add(decoded.entity["_id"])
        return messages, entities

    (one_messages, one_entities), (three_messages, three_entities) = ids(one), ids(three)
    assert len(one_entities) > 2000
    assert len(three_messages) == 3 * len(one_messages)
    assert len(three_entities) == 3 * len(one_entities)
