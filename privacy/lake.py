"""Find, erase and export one person's rows in a local Parquet lake (issue 15).

In: a local lake's root folder (the layout :mod:`transforms.lake` writes: ``<dataset>/date=YYYY-MM-DD/hour=HH/
part-<window>-<pane>-<shard>-of-<n>.parquet``) and a :class:`LakeMatcher`, which says which rows of a dataset belong
to a :class:`~privacy.subjects.Subject`. Out: :func:`scan`, the files holding such rows (:class:`FileHit`, read only,
for a dry run); :func:`erase`, those files rewritten without them (:class:`LakeErasure`); :func:`export`, the rows
themselves as one Parquet file per dataset.

Which rows are the subject's
----------------------------
- A record dataset's row (every dataset but ``identity_changes`` and ``failed_records``): its ``_person_id`` is one
  of the subject's person ids, or one of its identities (``identityMap`` and the identity fields of
  :attr:`~identity.namespaces.IdentityRules.fields`), normalised as ingestion normalises them
  (:func:`~identity.namespaces.extract_identities`), is one of the subject's identities.
- An ``identity_changes`` row: one of its ``identities`` (``"NS:id"``) is the subject's, or one of its
  ``persons_before`` or ``persons_after`` is.
- A ``failed_records`` row: its original bytes (``data``), or one of its ``attributes``' values, contain one of
  :meth:`~privacy.subjects.Subject.search_terms` verbatim.

What bytes that never decoded can and cannot give away: ``data`` is searched as bytes, for each id as the request
gave it and as normalised. Found: either form appearing verbatim, anywhere (a JSON string, a CSV field, a query
string). Not found: a payload wrapped in base64, compressed (gzip) or binary-encoded (Avro, protobuf with varint
lengths do not hide ids, but compressed blocks do), an id written with JSON ``\\u`` escapes, in another case or
spacing than both forms (``John@Example.com`` when the request gave ``john@example.com``), or split across fields (a
phone number as country code and number). The search is by substring, so a short id (a four-digit CRM id) also
matches messages that merely contain those digits; the erasure removes those rows too.

Erasure
-------
Each file with matched rows is rewritten without them, atomically: the new file is written into this process's
temporary folder in the lake (:func:`lake.folders.writer_temp_dir`), synced, and renamed over the old one
(``os.replace``), so a reader sees the old file or the new one, never a partial or a missing one; a process killed
meanwhile leaves a temporary file that :func:`lake.folders.clean_stale_temp_files` removes (the next erasure and the
next lake writer call it). The new file keeps the name (so pane numbering holds; a file left without rows stays, as
an empty file), the schema, the row order, the compression and dictionary options (:func:`lake.files.write_parquet`)
and the footer, the row-identity digests of the removed rows included. Those are 8-byte BLAKE2b digests of each
row's dedupe key (or content), which hold no id and can confirm a guess only to someone who knows the whole key,
message id included; and they are how the lake writer knows a row it holds already, so that a redelivered or
replayed copy of an erased message is dropped as a duplicate rather than written again. Erasing twice rewrites
nothing the second time. Erasures of one lake take turns (a lock file in its temporary folder): two rewriting one
file at once would each bring back the rows the other removed. Rows the lake writer commits after the erasure
listed the lake are not erased: run it once the subject's messages are no longer ingested (suppression), or again.

Only a local lake: a ``gs://`` lake is refused (this package runs without Beam, whose file systems reach object
stores). No identity of the subject is logged or put into an exception message.

Example::

    matcher = LakeMatcher(subject, Config().stitch_settings())
    hits = scan("data/lake", matcher)
    erasure = erase("data/lake", matcher)
    counts = export("data/lake", matcher, "exports/job-42")
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import fcntl
import logging
import os
import uuid
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from identity.namespaces import IDENTITY_MAP, extract_identities
from identity.stitching import StitchSettings
from lake.files import read_footer, write_parquet
from lake.folders import (
    TEMP_DIR_NAME,
    LakeFolderError,
    clean_stale_temp_files,
    make_folders,
    refuse_linked_folders,
    writer_temp_dir,
)
from lake.rows import FAILED_RECORDS, IDENTITY_CHANGES
from privacy.subjects import Subject
from schemas.names import storage_name

_LOGGER = logging.getLogger(__name__)
_PERSON_ID = "_person_id"
_CHANGE_IDENTITIES = "identities"
_CHANGE_PERSONS = ("persons_before", "persons_after")
_FAILED_DATA = "data"
_FAILED_ATTRIBUTES = "attributes"
# Beside the writers' folders in the lake's temporary folder; clean_stale_temp_files leaves it alone.
_ERASURE_LOCK = "privacy-erasure.lock"
# The namespace kind whose normal form is not the id trimmed and perhaps lower-cased (identity.namespaces: a phone
# number is parsed and written in E.164), so that no cheap comparison can rule out one of its ids.
_REFORMATTED_KIND = "phone"
# What Python's str.strip() removes from an ASCII string; on one, str.lower() is ASCII's too.
_ASCII_WHITESPACE = "".join(char for char in map(chr, range(128)) if char.isspace())


@dataclasses.dataclass(frozen=True)
class FileHit:
    """A lake file holding the subject's rows: its path relative to the lake's root, its dataset, its rows and how
    many of them are the subject's."""

    path: str
    dataset: str
    rows: int
    matched: int


@dataclasses.dataclass(frozen=True)
class LakeErasure:
    """What an erasure did: the files rewritten (paths relative to the lake's root), the rows removed by dataset, and
    the bytes of the files it wrote."""

    files_rewritten: list[str]
    rows_removed: dict[str, int]
    bytes_rewritten: int


class LakeMatcher:
    """Says which rows of a lake dataset belong to a subject (the rules: module docstring).

    Args:
        subject: whom the request covers.
        stitch: the namespaces and normalisation rules ingestion used (``Config().stitch_settings()``).
    """

    def __init__(self, subject: Subject, stitch: StitchSettings) -> None:
        self._subject = subject
        self._stitch = stitch
        self._person_ids = pa.array(sorted(subject.person_ids), pa.string())
        self._identity_keys = pa.array(sorted(subject.identity_keys), pa.string())
        self._terms = sorted(term.decode() for term in subject.search_terms())
        self._ids_by_namespace: dict[str, list[str]] = collections.defaultdict(list)
        for identity in subject.identities:
            self._ids_by_namespace[identity.namespace].append(identity.id)
        # Identity fields as (runtime path, top-level column, the struct children below it, namespace code).
        self._fields = [
            (field, storage_name(names[0]), [storage_name(name) for name in names[1:]], code)
            for field, code in stitch.rules.fields.items()
            for names in [field.split(".")]
        ]
        # Whether an id, as found in identityMap (None) or a field under a namespace key, normalises to one of the
        # subject's identities: each is normalised once per matcher, as ingestion remembers them.
        self._verdicts: dict[tuple[str | None, str, str], bool] = {}

    def columns(self, dataset: str, schema: pa.Schema) -> list[str]:
        """The columns of a file of ``dataset`` (schema ``schema``) that :meth:`mask` reads, in schema order."""
        if dataset == IDENTITY_CHANGES:
            wanted = {_CHANGE_IDENTITIES, *_CHANGE_PERSONS}
        elif dataset == FAILED_RECORDS:
            wanted = {_FAILED_DATA, _FAILED_ATTRIBUTES}
        else:
            wanted = {_PERSON_ID, IDENTITY_MAP, *(column for _, column, _, _ in self._fields)}
        return [name for name in schema.names if name in wanted]

    def mask(self, dataset: str, table: pa.Table) -> pa.BooleanArray:
        """Which rows of ``table`` (a file of ``dataset``, with at least the :meth:`columns` it has) are the
        subject's."""
        if dataset == IDENTITY_CHANGES:
            matched = self._change_rows(table)
        elif dataset == FAILED_RECORDS:
            matched = self._failed_rows(table)
        else:
            matched = self._record_rows(table)
        return pa.array(matched, pa.bool_())

    def _record_rows(self, table: pa.Table) -> np.ndarray:
        matched = np.zeros(table.num_rows, dtype=bool)
        if _PERSON_ID in table.column_names:
            matched |= _filled(pc.is_in(table.column(_PERSON_ID), value_set=self._person_ids))
        if IDENTITY_MAP in table.column_names:
            entry_rows, entries = _elements(table.column(IDENTITY_MAP))
            item_entries, items = _elements(pc.struct_field(entries, ["value"]))
            keys = pc.struct_field(entries, ["key"]).take(pa.array(item_entries))
            ids = pc.struct_field(items, ["id"])
            for key in pc.unique(keys).to_pylist():
                found = self._subjects_ids(key, ids, _filled(pc.equal(keys, key)), None)
                matched[entry_rows[item_entries[found]]] = True
        for field, column, children, code in self._fields:
            ids = _struct_leaf(table.column(column), children) if column in table.column_names else None
            if ids is not None:
                matched |= self._subjects_ids(code, ids, np.ones(len(ids), dtype=bool), field)
        return matched

    def _subjects_ids(self, key: str, ids: pa.ChunkedArray, where: np.ndarray, field: str | None) -> np.ndarray:
        """Which of ``ids`` (those ``where`` says, found under the namespace key ``key``, in ``identityMap`` or the
        identity field ``field``) normalise to one of the subject's identities.

        Only the few ids a vectorised comparison cannot rule out are normalised, each by ingestion's own code."""
        namespace = self._stitch.namespaces.resolve(key)
        targets = self._ids_by_namespace.get(namespace.code) if namespace is not None else None
        candidates = where & _filled(pc.is_valid(ids))
        if not targets or not pa.types.is_string(ids.type) or not candidates.any():
            return np.zeros(len(ids), dtype=bool)
        if namespace.code.casefold() != _REFORMATTED_KIND:
            lowered = pa.array([target.lower() for target in targets if target.isascii()], pa.string())
            trimmed = pc.utf8_trim(ids, _ASCII_WHITESPACE)
            candidates &= ~_filled(pc.string_is_ascii(ids)) | _filled(
                pc.is_in(pc.ascii_lower(trimmed), value_set=lowered)
            )
        raw_ids = pc.unique(ids.filter(pa.array(candidates))).to_pylist()
        theirs = [raw_id for raw_id in raw_ids if self._is_subjects(field, key, raw_id)]
        return candidates & _filled(pc.is_in(ids, value_set=pa.array(theirs, pa.string())))

    def _is_subjects(self, field: str | None, key: str, raw_id: str) -> bool:
        verdict = self._verdicts.get((field, key, raw_id))
        if verdict is None:
            entity = _one_identity_entity(field, key, raw_id)
            extraction = extract_identities(entity, self._stitch.namespaces, self._stitch.rules)
            verdict = not self._subject.identities.isdisjoint(extraction.identities)
            self._verdicts[(field, key, raw_id)] = verdict
        return verdict

    def _change_rows(self, table: pa.Table) -> np.ndarray:
        matched = np.zeros(table.num_rows, dtype=bool)
        wanted_in = {_CHANGE_IDENTITIES: self._identity_keys} | dict.fromkeys(_CHANGE_PERSONS, self._person_ids)
        for column, wanted in wanted_in.items():
            if column in table.column_names:
                rows, values = _elements(table.column(column))
                matched[rows[_filled(pc.is_in(values, value_set=wanted))]] = True
        return matched

    def _failed_rows(self, table: pa.Table) -> np.ndarray:
        matched = np.zeros(table.num_rows, dtype=bool)
        data = table.column(_FAILED_DATA) if _FAILED_DATA in table.column_names else None
        attribute_rows, attributes = (
            _elements(table.column(_FAILED_ATTRIBUTES)) if _FAILED_ATTRIBUTES in table.column_names else (None, None)
        )
        for term in self._terms:
            if data is not None:
                matched |= _filled(pc.match_substring(data, term))
            if attributes is not None:
                values = pc.struct_field(attributes, ["value"])
                matched[attribute_rows[_filled(pc.match_substring(values, term))]] = True
        return matched


def scan(lake_dir: str, matcher: LakeMatcher) -> list[FileHit]:
    """The lake's files that hold rows of the matcher's subject, in path order; reads only the columns the matcher
    needs, and changes nothing."""
    _refuse_object_store(lake_dir)
    hits = []
    for dataset, path in _lake_files(lake_dir):
        with pq.ParquetFile(path) as parquet:
            if parquet.metadata.num_rows == 0:
                continue
            table = parquet.read(columns=matcher.columns(dataset, parquet.schema_arrow))
        matched = pc.sum(matcher.mask(dataset, table)).as_py() or 0
        if matched:
            hits.append(FileHit(os.path.relpath(path, lake_dir), dataset, table.num_rows, matched))
    return hits


def erase(lake_dir: str, matcher: LakeMatcher) -> LakeErasure:
    """Rewrites each lake file holding the subject's rows without them, atomically, keeping its name, schema, row
    order, options and footer (the removed rows' identity digests too, so copies of them stay duplicates)."""
    _refuse_object_store(lake_dir)
    rewritten: list[str] = []
    removed: dict[str, int] = collections.Counter()
    bytes_written = 0
    with _erasing(lake_dir):
        # A killed writer's or erasure's temporary file may hold the subject's rows.
        clean_stale_temp_files(lake_dir)
        for hit in scan(lake_dir, matcher):
            path = os.path.join(lake_dir, hit.path)
            table, matched, footer = _read_matched(path, hit.dataset, matcher)
            bytes_written += _replace(lake_dir, path, table.filter(pc.invert(matched)), footer)
            rewritten.append(hit.path)
            removed[hit.dataset] += pc.sum(matched).as_py()
    _LOGGER.info(
        "Erased %d lake rows: %d files rewritten, %d bytes", sum(removed.values()), len(rewritten), bytes_written
    )
    return LakeErasure(rewritten, dict(removed), bytes_written)


def export(lake_dir: str, matcher: LakeMatcher, out_dir: str) -> dict[str, int]:
    """Writes the subject's rows of each dataset that has any as ``out_dir/<dataset>.parquet`` (the dataset's schema,
    the lake's path order); returns the rows written by dataset."""
    _refuse_object_store(lake_dir)
    tables: dict[str, list[pa.Table]] = collections.defaultdict(list)
    for hit in scan(lake_dir, matcher):
        table, matched, _ = _read_matched(os.path.join(lake_dir, hit.path), hit.dataset, matcher)
        tables[hit.dataset].append(table.filter(matched))
    os.makedirs(out_dir, exist_ok=True)
    exported = {}
    for dataset, parts in tables.items():
        rows = pa.concat_tables(parts, promote_options="default")
        final = os.path.join(out_dir, f"{dataset}.parquet")
        partial = f"{final}.{uuid.uuid4().hex}.partial"
        # Renamed once whole, so that an export cut short leaves no file that looks complete.
        try:
            write_parquet(rows, {}, partial)
            os.replace(partial, final)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.remove(partial)
        exported[dataset] = rows.num_rows
    return exported


def _refuse_object_store(lake_dir: str) -> None:
    if "://" in lake_dir:
        raise ValueError(f"privacy jobs need a local lake folder, not {lake_dir}")


@contextlib.contextmanager
def _erasing(lake_dir: str) -> Iterator[None]:
    """Holds the lake's erasure lock: two erasures rewriting one file at once would each bring back what the other
    removed."""
    lock_path = os.path.join(make_folders(lake_dir, TEMP_DIR_NAME), _ERASURE_LOCK)
    lock = os.open(lock_path, os.O_CREAT | os.O_WRONLY | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield
    finally:
        os.close(lock)


def _lake_files(lake_dir: str) -> Iterator[tuple[str, str]]:
    """(dataset, path) of every lake file, in path order; a link below the lake's root is refused, not followed."""
    if not os.path.isdir(lake_dir):
        return
    refuse_linked_folders(lake_dir)
    with os.scandir(lake_dir) as entries:
        datasets = sorted(entry.name for entry in entries if entry.name[0] not in "._" and entry.is_dir())
    for dataset in datasets:
        dataset_dir = os.path.join(lake_dir, dataset)
        paths = []
        for folder, folders, names in os.walk(dataset_dir):
            for name in folders + names:
                if os.path.islink(os.path.join(folder, name)):
                    raise LakeFolderError(
                        f"lake path {os.path.join(folder, name)} is a symbolic link; privacy jobs follow no link "
                        "below the lake's root"
                    )
            paths += [os.path.join(folder, name) for name in names if name.endswith(".parquet")]
        yield from ((dataset, path) for path in sorted(paths))


def _read_matched(path: str, dataset: str, matcher: LakeMatcher) -> tuple[pa.Table, pa.BooleanArray, dict[str, str]]:
    """A lake file's rows, which of them are the subject's, and its footer."""
    with pq.ParquetFile(path) as parquet:
        table = parquet.read()
        footer = read_footer(parquet.metadata)
    return table, matcher.mask(dataset, table), footer


def _replace(lake_dir: str, path: str, table: pa.Table, footer: dict[str, str]) -> int:
    """Replaces the file at ``path`` by ``table`` with ``footer``, atomically and durably; returns its size."""
    temp_path = os.path.join(writer_temp_dir(lake_dir), f"{uuid.uuid4().hex}.parquet")
    try:
        write_parquet(table, footer, temp_path)
        # Synced before the rename and the rename synced after: a machine that crashes must not bring back the
        # rows an erasure reported gone.
        _fsync(temp_path)
        os.replace(temp_path, path)
        _fsync(os.path.dirname(path))
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(temp_path)
    return os.path.getsize(path)


def _fsync(path: str) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _elements(lists: pa.ChunkedArray) -> tuple[np.ndarray, pa.ChunkedArray]:
    """The elements of a list or map column's rows (a map's as ``key``-``value`` structs), and the row of each."""
    if pa.types.is_map(lists.type):
        lists = lists.cast(pa.list_(pa.struct([lists.type.key_field, lists.type.item_field])))
    return pc.list_parent_indices(lists).to_numpy(), pc.list_flatten(lists)


def _filled(flags: Any) -> np.ndarray:
    """A boolean Arrow column as NumPy, null as False."""
    return pc.fill_null(flags, False).to_numpy(zero_copy_only=False)


def _struct_leaf(column: pa.ChunkedArray, children: list[str]) -> pa.ChunkedArray | None:
    """The values below a struct column at the path ``children`` (null where a struct on the way is null), or None
    if its type has no such path."""
    for child in children:
        if not pa.types.is_struct(column.type) or column.type.get_field_index(child) < 0:
            return None
        column = pc.struct_field(column, [child])
    return column


def _one_identity_entity(field: str | None, key: str, raw_id: str) -> dict[str, Any]:
    """An entity holding one id: in ``identityMap`` under ``key`` when ``field`` is None, else at the identity
    field's runtime path."""
    if field is None:
        return {IDENTITY_MAP: {key: [{"id": raw_id}]}}
    entity: Any = raw_id
    for name in reversed(field.split(".")):
        entity = {name: entity}
    return entity
