"""Profiles stored as appended deltas (profiles.writer) give the views and fragments the old layout gave.

The old layout rewrote each fragment whole: every record applied in turn to the stored fragment, and each view built
from all the fragments of the person's identities. :func:`old_layout` does that from the records themselves, and the
store the writer left after a replay of the sample must answer the same view for every person, and hold the same
fragments once its bases and deltas are merged.
"""

from __future__ import annotations

import dataclasses
import sqlite3
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path

import orjson
import pytest

from core.records import ValidRecord
from identity.model import Identity
from identity.namespaces import extract_identities, record_time_us
from pipelines.config import Config
from profiles import model as profile_model
from profiles import writer as profile_writer
from schemas.registry import SchemaRegistry
from stores.opening import open_profile_store
from tests.pipelines.test_run import sqlite_contents
from tools.bench import SAMPLE, make_input, plain_loop


def old_layout(
    records: Iterable[ValidRecord], registry: SchemaRegistry, config: Config
) -> dict[str, profile_model.Fragment]:
    """Every fragment as the old layout kept it: each record applied to the whole fragment, in arrival order."""
    stitch, limits = config.stitch_settings(), config.profile_settings().limits
    fragments: dict[str, profile_model.Fragment] = {}
    for record in records:
        identities = extract_identities(record.entity, stitch.namespaces, stitch.rules).identities
        owner = profile_model.fragment_identity(identities, stitch.graph)
        if owner is None:
            continue
        key = f"{owner}|{record.dataset}"
        schema = registry.get(record.schema_id)
        fragments[key] = profile_model.apply(
            fragments.get(key) or profile_model.Fragment(identity=owner, dataset=record.dataset),
            record.entity,
            is_event=schema.time_series,
            record_time_us=record_time_us(record.entity, schema.class_id, record.publish_time_us),
            ingest_time_us=record.publish_time_us,
            message_id=record.message_id,
            policy_limits=limits,
        )
    return fragments


@pytest.fixture(scope="module")
def replayed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[ValidRecord]]:
    """Two copies of the sample through the reference loop, compacting after two deltas so that flushes both append
    and compact; the profile store's folder and every record the writer was given."""
    folder = tmp_path_factory.mktemp("replay")
    stream = folder / "input.jsonl"
    make_input(SAMPLE, 2, stream)
    given: list[ValidRecord] = []
    write = profile_writer.ProfileWriter.write

    def recording(self: profile_writer.ProfileWriter, records: Sequence[ValidRecord], changes: Sequence) -> int:
        given.extend(records)
        return write(self, records, changes)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(profile_writer, "COMPACT_AFTER_DELTAS", 2)
        patch.setattr(profile_writer.ProfileWriter, "write", recording)
        plain_loop(stream, SchemaRegistry.load(), folder)
    return folder, given


def test_every_person_s_view_is_the_one_the_old_layout_builds(replayed: tuple[Path, list[ValidRecord]]) -> None:
    folder, records = replayed
    config = Config()
    fragments = old_layout(records, SchemaRegistry.load(), config)
    with sqlite3.connect(folder / "profiles.sqlite") as connection:
        index = connection.execute("SELECT identity, person FROM identity_index").fetchall()
    members: defaultdict[str, list[Identity]] = defaultdict(list)
    for identity, person in index:
        namespace, _, identity_id = identity.partition(":")
        members[person].append(Identity(namespace, identity_id))

    with open_profile_store(f"sqlite:///{folder / 'profiles.sqlite'}") as store:
        answered = {person: store.view_by_person(person) for person in members}
    expected = {
        person: profile_model.view_to_bytes(
            profile_model.build_view(
                person,
                owned,
                [fragment for key, fragment in sorted(fragments.items()) if fragment.identity in set(owned)],
                config.profile_settings().policy,
            )
        )
        for person, owned in members.items()
    }
    assert len(expected) > 100
    assert answered == expected


def test_the_stored_bases_and_deltas_merge_into_the_old_layout_s_fragments(
    replayed: tuple[Path, list[ValidRecord]],
) -> None:
    folder, records = replayed
    fragments = old_layout(records, SchemaRegistry.load(), Config())
    with open_profile_store(f"sqlite:///{folder / 'profiles.sqlite'}") as store:
        stored = store.fragments(fragments)
    merged = {key: profile_writer.merge_stored(None, held) for key, held in stored.items()}
    assert {key: profile_model.fragment_to_bytes(fragment) for key, fragment in merged.items()} == {
        key: profile_model.fragment_to_bytes(fragment) for key, fragment in fragments.items()
    }


def test_closing_the_writer_folds_every_delta_it_appended_into_the_bases(
    replayed: tuple[Path, list[ValidRecord]],
) -> None:
    folder, _ = replayed
    with sqlite3.connect(folder / "profiles.sqlite") as connection:
        assert connection.execute("SELECT count(*) FROM fragment_deltas").fetchone() == (0,)
        assert connection.execute("SELECT count(*) FROM fragments").fetchone()[0] > 100


def without_known_json(fragment: profile_model.Fragment) -> profile_model.Fragment:
    return dataclasses.replace(fragment, recent_json={})


def test_embedding_the_json_fragments_keep_of_their_bodies_changes_no_byte_of_the_store(
    replayed: tuple[Path, list[ValidRecord]], tmp_path: Path
) -> None:
    """The writer embeds the JSON its fragments keep of their event bodies in views and fragments; encoding every
    body again instead, the same replay leaves the same rows in every table, views of retired persons included."""
    folder, _ = replayed
    stream = tmp_path / "input.jsonl"
    make_input(SAMPLE, 2, stream)
    encode_fragment = profile_model.fragment_to_bytes

    def view_encoded_whole(person_id, identities, fragments, policy, **options) -> bytes:
        plain = [without_known_json(fragment) for fragment in fragments]
        view = profile_model.build_view(person_id, identities, plain, policy, **options)
        return orjson.dumps(view, option=orjson.OPT_SORT_KEYS)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(profile_writer, "COMPACT_AFTER_DELTAS", 2)
        patch.setattr(profile_model, "build_view_bytes", view_encoded_whole)
        patch.setattr(
            profile_model, "fragment_to_bytes", lambda fragment: encode_fragment(without_known_json(fragment))
        )
        plain_loop(stream, SchemaRegistry.load(), tmp_path)

    embedded, encoded_whole = sqlite_contents(folder / "profiles.sqlite"), sqlite_contents(tmp_path / "profiles.sqlite")
    assert len(embedded["views"]) > 100
    assert len(embedded["fragments"]) > 100
    assert embedded == encoded_whole
