"""Write lake rows as Parquet files in hourly partitions, one commit window at a time (README, "Lake layout").

``WriteToLake`` is the lake's only writer; ``LakeFile`` describes what it committed; its local folders, temporary
files and their clean-up are :mod:`lake.folders`'.

In: a ``PCollection`` of :class:`~core.records.LakeRow`, or a tuple of them, whose element timestamps are ingestion
(publish) times; only
the element timestamp places a row. ``schemas`` maps each dataset to the Arrow schema of its rows; a row for a dataset
without one fails the bundle (a configuration error, not a record error). Rows must not carry columns named ``date``
or ``hour`` (the hive partitions). Out: one :class:`LakeFile` per Parquet file committed (dataset, final path, rows,
window start, pane index), in the global window at its end timestamp.

Guarantees: a row's commit window is the ``commit_interval_s`` slice of the epoch holding its element timestamp (the
interval divides an hour, so a window never straddles two partitions); each window's rows are written as a pane
``commit_interval_s`` of processing time (by ``clock``) after its first row, and whatever is left at the end of input,
so the final lake never depends on processing time and nothing is ever late; each row (dataset, window,
``dedupe_key``) is in the lake once, whoever wrote it; a file is never replaced and a reader never sees a partial one.
Applying the transform refuses a lake whose folders below its root are symbolic links and removes the temporary files
of writers that are gone (:func:`~lake.folders.clean_stale_temp_files`).

Metrics (namespace ``profilestream``, names from :mod:`transforms.metrics`): counters ``lake_files.<dataset>`` and
``lake_rows.<dataset>``, counted from the ``LakeFile`` outputs (:class:`CountLakeFiles`), ``duplicates`` and
``duplicates.<dataset>``; distribution ``lake_lag_ms.<dataset>``, the age (from publish time, by ``clock``) of each
pane's oldest row when its files land. The BundleBasedDirectRunner loses counts without
:func:`pipelines.direct_runner_patches.metrics_of_every_bundle`
(docs/decisions/0006-a-state-sampler-per-bundle-on-the-direct-runner.md).

Why a stateful DoFn: docs/decisions/0002-the-lake-writer-is-a-stateful-dofn-not-a-trigger.md; how each row lands
once: docs/decisions/0003-the-lake-is-its-own-duplicate-memory.md; why zstd: docs/decisions/0005-zstd-for-lake-files.md.

Example::

    rows | "WriteLake" >> WriteToLake("data/lake", {"experience_events": schema}, commit_interval_s=300)
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import datetime
import functools
import hashlib
import itertools
import json
import logging
import os
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.coders import BooleanCoder, ListCoder
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import StandardOptions
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import BagStateSpec, ReadModifyWriteStateSpec, TimerSpec, on_timer
from apache_beam.transforms.window import GlobalWindow, TimestampedValue
from apache_beam.utils.timestamp import Timestamp

from core.clock import EPOCH, wall_clock_us
from core.records import LakeRow
from lake.files import IDENTITIES_KEY, IDENTITY_BYTES, PANE_KEY, RUN_KEY, read_footer, write_parquet
from lake.folders import clean_stale_temp_files, make_folders, refuse_linked_folders, writer_temp_dir
from lake.windows import COMMIT_INTERVAL_S, divides_an_hour
from transforms import metrics
from transforms.bundle_batches import KeyedBundleBatches
from transforms.coders import RecordCoder

TableBuilder = Callable[[list[Mapping[str, Any]], pa.Schema], pa.Table]

_LOGGER = logging.getLogger(__name__)
_MICROS = 1_000_000


@dataclasses.dataclass(frozen=True)
class LakeFile:
    """One committed Parquet file: its dataset, final path, row count, commit window start and pane index."""

    dataset: str
    path: str
    rows: int
    window_start_us: int
    pane_index: int


def is_local(lake_dir: str) -> bool:
    """Whether the lake is a local folder rather than a location on an object store (``gs://bucket/path``)."""
    return FileSystems.get_scheme(lake_dir) is None


def _table_from_pylist(rows: list[Mapping[str, Any]], schema: pa.Schema) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=schema)


class WriteToLake(beam.PTransform):
    """Writes ``LakeRow`` elements as Parquet files into ``lake_dir``; outputs one ``LakeFile`` per file committed.

    Args:
        lake_dir: the lake's root folder (local filesystem).
        schemas: dataset name -> Arrow schema of its rows. Names become folders, so no ``/`` and no leading ``_``
            or ``.`` (Spark, Hive and pyarrow skip such folders).
        commit_interval_s: the commit window, in seconds; must divide an hour.
        max_rows_per_file: a pane with more rows is split into shards of at most this many, in row order.
        table_builder: turns a pane's rows into an Arrow table of the dataset's schema.
        clock: microseconds since the epoch: the runner's processing time, for ``lake_lag_ms`` and the commit timer.
    """

    def __init__(
        self,
        lake_dir: str,
        schemas: Mapping[str, pa.Schema],
        *,
        commit_interval_s: int = COMMIT_INTERVAL_S,
        max_rows_per_file: int = 1_000_000,
        table_builder: TableBuilder = _table_from_pylist,
        clock: Callable[[], int] = wall_clock_us,
    ) -> None:
        super().__init__()
        if not divides_an_hour(commit_interval_s):
            raise ValueError(f"commit_interval_s must divide an hour (3600 s), got {commit_interval_s}")
        if max_rows_per_file <= 0:
            raise ValueError(f"max_rows_per_file must be positive, got {max_rows_per_file}")
        unusable = sorted(name for name in schemas if not _is_dataset_folder_name(name))
        if unusable:
            raise ValueError(f"lake dataset names must be plain folder names without a leading '_' or '.': {unusable}")
        self._lake_dir = lake_dir
        self._schemas = dict(schemas)
        self._commit_interval_s = commit_interval_s
        self._max_rows_per_file = max_rows_per_file
        self._table_builder = table_builder
        self._clock = clock

    def expand(
        self, rows: beam.PCollection[LakeRow] | tuple[beam.PCollection[LakeRow], ...]
    ) -> beam.PCollection[LakeFile]:
        if is_local(self._lake_dir):
            refuse_linked_folders(self._lake_dir)
            clean_stale_temp_files(self._lake_dir)
        writer_options = {
            # One per pipeline, so a retried bundle of this run knows its own files from an earlier run's.
            "run_id": uuid.uuid4().hex,
            "max_rows_per_file": self._max_rows_per_file,
            "table_builder": self._table_builder,
            "clock": self._clock,
        }
        # Each bundle's rows as one list per key: the shuffle and the bag cost per list, not per row. Several inputs
        # are keyed each and then flattened: FnApiRunner and Prism write every element of a flatten out and read it
        # back in a stage of its own, which would encode each row.
        key_by_window = KeyedBundleBatches(
            functools.partial(_commit_window_key, interval_us=self._commit_interval_s * _MICROS)
        ).with_output_types(tuple[tuple[str, int], list[LakeRow]])
        if isinstance(rows, beam.PCollection):
            keyed = rows | "KeyByCommitWindow" >> key_by_window
        else:
            keyed = [
                part | f"KeyByCommitWindow{index}" >> key_by_window for index, part in enumerate(rows)
            ] | "KeyedRows" >> beam.Flatten()
        pipeline = keyed.pipeline
        if pipeline.options.view_as(StandardOptions).streaming:
            write_panes = _BufferAndWritePanesFn(
                self._lake_dir, self._schemas, interval_us=self._commit_interval_s * _MICROS, **writer_options
            )
            files = keyed | "BufferAndWritePanes" >> beam.ParDo(write_panes).with_output_types(LakeFile)
        else:
            files = (
                keyed
                | "GroupPanes" >> beam.GroupByKey()
                | "WritePanes"
                >> beam.ParDo(_WritePaneFn(self._lake_dir, self._schemas, **writer_options)).with_output_types(LakeFile)
            )
        return files | "CountFiles" >> CountLakeFiles()


class CountLakeFiles(beam.PTransform):
    """``PCollection[LakeFile]`` in, the same out, each file counted under ``lake_files.<dataset>`` and its rows under
    ``lake_rows.<dataset>``: the run summary's lake figures, counted from the files committed."""

    def expand(self, files: beam.PCollection[LakeFile]) -> beam.PCollection[LakeFile]:
        return files | "Count" >> beam.Map(_counted).with_output_types(LakeFile)


def _counted(lake_file: LakeFile) -> LakeFile:
    metrics.counter(metrics.lake_files_of(lake_file.dataset)).inc()
    metrics.counter(metrics.lake_rows_of(lake_file.dataset)).inc(lake_file.rows)
    return lake_file


def _is_dataset_folder_name(name: str) -> bool:
    return bool(name) and "/" not in name and os.sep not in name and name[0] not in "._"


def _commit_window_key(row: LakeRow, micros: int, *, interval_us: int) -> list[tuple[str, int]]:
    """A row's dataset and the start (µs) of the commit window holding its element timestamp."""
    return [(row.dataset, micros - micros % interval_us)]


@dataclasses.dataclass(frozen=True)
class CommittedFile:
    """What a committed lake file's footer says: the run and pane digest that wrote it, its rows' identities."""

    path: str
    pane_index: int
    run_id: str
    pane_digest: str
    identities: frozenset[bytes]
    rows: int


def read_committed_file(path: str) -> CommittedFile:
    """The footer of a lake file (a file without the writer's metadata holds no identities)."""
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as opened:
        metadata = pq.read_metadata(opened)
    found = read_footer(metadata)
    packed = base64.b64decode(found.get(IDENTITIES_KEY, ""))
    identities = frozenset(packed[at : at + IDENTITY_BYTES] for at in range(0, len(packed), IDENTITY_BYTES))
    pane_index = int(os.path.basename(path).rsplit("-", 4)[-4])
    return CommittedFile(
        path=path,
        pane_index=pane_index,
        run_id=found.get(RUN_KEY, ""),
        pane_digest=found.get(PANE_KEY, ""),
        identities=identities,
        rows=metadata.num_rows,
    )


# The writer never replaces a file, and an erasure (privacy.lake) that does keeps its footer's identities: a path of
# one size and time always reads the same.
@functools.lru_cache(maxsize=8192)
def _committed_file(path: str, size: int, updated: float) -> CommittedFile:
    return read_committed_file(path)


def _committed_files(prefix: str) -> list[CommittedFile]:
    """The committed files of the window whose names start with ``prefix``, in name order."""
    matched = FileSystems.match([f"{prefix}-*-*-of-*.parquet"])[0].metadata_list
    return [
        _committed_file(found.path, found.size_in_bytes, found.last_updated_in_seconds)
        for found in sorted(matched, key=lambda found: found.path)
    ]


def row_identity(row: LakeRow) -> bytes:
    """The digest that stands for a row's identity within its dataset and window: its dedupe key's, else its
    content's."""
    text = row.dedupe_key if row.dedupe_key is not None else "\0" + _content_key(row)
    return hashlib.blake2b(text.encode(), digest_size=IDENTITY_BYTES).digest()


class _WritePaneFn(beam.DoFn):
    """Writes one pane of a (dataset, window start) key: drops rows the pane or the window's committed files hold
    already, orders the rest, commits them in shards under a pane index no file uses."""

    def __init__(
        self,
        lake_dir: str,
        schemas: Mapping[str, pa.Schema],
        *,
        run_id: str,
        max_rows_per_file: int,
        table_builder: TableBuilder,
        clock: Callable[[], int],
    ) -> None:
        self._lake_dir = lake_dir
        self._local = is_local(lake_dir)
        self._schemas = schemas
        self._run_id = run_id
        self._max_rows_per_file = max_rows_per_file
        self._table_builder = table_builder
        self._clock = clock
        self._duplicates = metrics.counter(metrics.DUPLICATES)

    def process(self, element: tuple[tuple[str, int], Iterable[list[LakeRow]]]) -> Iterator[LakeFile]:
        (dataset, window_start_us), lists = element
        yield from self._write_pane(dataset, window_start_us, [row for rows in lists for row in rows])

    def _write_pane(self, dataset: str, window_start_us: int, rows: Iterable[LakeRow]) -> list[LakeFile]:
        """Writes the pane's rows that neither an earlier copy in it nor a committed file holds; returns the files
        that hold its rows for this run: the new ones, or those an earlier attempt at the same pane wrote."""
        schema = self._schemas.get(dataset)
        if schema is None:
            raise ValueError(f"no Arrow schema for lake dataset {dataset!r}")
        ordered = _in_deterministic_order(rows)
        firsts = _first_copies(ordered)
        identities = [row_identity(row) for row in firsts]
        pane_digest = hashlib.blake2b(b"".join(identities), digest_size=16).hexdigest()
        start = EPOCH + datetime.timedelta(microseconds=window_start_us)
        partition_dir = FileSystems.join(self._lake_dir, dataset, f"date={start:%Y-%m-%d}", f"hour={start:%H}")
        prefix = FileSystems.join(partition_dir, f"part-{start:%Y%m%dT%H%M%SZ}")
        if self._local:
            make_folders(self._lake_dir, os.path.relpath(partition_dir, self._lake_dir))
        while True:
            committed = _committed_files(prefix)
            held = frozenset().union(*(found.identities for found in committed))
            kept = [(row, identity) for row, identity in zip(firsts, identities, strict=True) if identity not in held]
            own = [found for found in committed if (found.run_id, found.pane_digest) == (self._run_id, pane_digest)]
            files = [LakeFile(dataset, found.path, found.rows, window_start_us, found.pane_index) for found in own]
            if not kept:
                break
            next_pane = max((found.pane_index for found in committed), default=-1) + 1
            written_now = self._write(dataset, window_start_us, prefix, next_pane, kept, schema, pane_digest)
            if written_now is not None:
                files += written_now
                break
            # Another writer committed a pane of this window since it was listed: drop what that one holds too.
        written = sum(lake_file.rows for lake_file in files)
        if len(ordered) > written:
            self._duplicates.inc(len(ordered) - written)
            metrics.counter(metrics.duplicates_in(dataset)).inc(len(ordered) - written)
        if files:
            # Rows are in publish-time order, so the first is the oldest.
            lag_ms = (self._clock() - ordered[0].publish_time_us) // 1000
            metrics.distribution(metrics.lake_lag_ms_of(dataset)).update(lag_ms)
        return files

    def _write(
        self,
        dataset: str,
        window_start_us: int,
        prefix: str,
        pane_index: int,
        rows: list[tuple[LakeRow, bytes]],
        schema: pa.Schema,
        pane_digest: str,
    ) -> list[LakeFile] | None:
        """Commits the rows (each with its identity) as pane ``pane_index``, in shards; None if another writer took
        that index first."""
        size = self._max_rows_per_file
        chunks = [rows[at : at + size] for at in range(0, len(rows), size)]
        shards = len(chunks)
        files = []
        for shard, chunk in enumerate(chunks):
            footer = {
                RUN_KEY: self._run_id,
                PANE_KEY: pane_digest,
                IDENTITIES_KEY: base64.b64encode(b"".join(identity for _, identity in chunk)).decode(),
            }
            table = self._table_builder([row.row for row, _ in chunk], schema)
            path = f"{prefix}-{pane_index}-{shard}-of-{shards}.parquet"
            if not self._commit(table, footer, path):
                if shard:
                    raise FileExistsError(f"lake file {path} appeared while its pane was being written")
                return None
            files.append(LakeFile(dataset, path, len(chunk), window_start_us, pane_index))
        return files

    def _commit(self, table: pa.Table, footer: Mapping[str, str], path: str) -> bool:
        """Writes the file unless ``path`` exists; whether it did."""
        if not self._local:
            # An object becomes visible whole when its upload completes; a rename there would be a copy.
            if FileSystems.exists(path):
                return False
            with FileSystems.create(path, compression_type=CompressionTypes.UNCOMPRESSED) as upload:
                write_parquet(table, footer, upload)
            return True
        temp_path = os.path.join(writer_temp_dir(self._lake_dir), f"{uuid.uuid4().hex}.parquet")
        try:
            write_parquet(table, footer, temp_path)
            # A link, unlike a rename, never replaces a file another writer committed under this name.
            os.link(temp_path, path)
            return True
        except FileExistsError:
            return False
        finally:
            # Committed or not, the temporary name goes: nothing is left for the next run to clean.
            with contextlib.suppress(FileNotFoundError):
                os.remove(temp_path)


class _BufferAndWritePanesFn(_WritePaneFn):
    """Buffers each (dataset, window start) key's rows and writes them as a pane ``interval_us`` of processing time
    after the first, and at the end of input. Writing a pane releases all of the key's state."""

    BUFFER = BagStateSpec("buffer", ListCoder(RecordCoder()))
    BUFFERING = ReadModifyWriteStateSpec("buffering", BooleanCoder())
    COMMIT = TimerSpec("commit", TimeDomain.REAL_TIME)
    END_OF_INPUT = TimerSpec("end_of_input", TimeDomain.WATERMARK)

    def __init__(self, lake_dir: str, schemas: Mapping[str, pa.Schema], *, interval_us: int, **writer_options: Any):
        super().__init__(lake_dir, schemas, **writer_options)
        self._interval_us = interval_us

    # Beam finds state and timers through these parameter defaults (hence B008).
    def process(
        self,
        element: tuple[tuple[str, int], list[LakeRow]],
        buffer: Any = beam.DoFn.StateParam(BUFFER),
        buffering: Any = beam.DoFn.StateParam(BUFFERING),
        commit: Any = beam.DoFn.TimerParam(COMMIT),
        end_of_input: Any = beam.DoFn.TimerParam(END_OF_INPUT),
    ) -> None:
        _, rows = element
        if not buffering.read():
            # The first row since the last pane: its pane is due one commit interval from now.
            buffering.write(True)
            commit.set(Timestamp(micros=self._clock() + self._interval_us))
            end_of_input.set(GlobalWindow().max_timestamp())
        buffer.add(rows)

    @on_timer(COMMIT)
    def on_commit(
        self,
        key: Any = beam.DoFn.KeyParam,
        buffer: Any = beam.DoFn.StateParam(BUFFER),
        buffering: Any = beam.DoFn.StateParam(BUFFERING),
        end_of_input: Any = beam.DoFn.TimerParam(END_OF_INPUT),
    ) -> Iterator[TimestampedValue]:
        end_of_input.clear()
        yield from self._write_buffer(key, buffer, buffering)

    @on_timer(END_OF_INPUT)
    def on_end_of_input(
        self,
        key: Any = beam.DoFn.KeyParam,
        buffer: Any = beam.DoFn.StateParam(BUFFER),
        buffering: Any = beam.DoFn.StateParam(BUFFERING),
        commit: Any = beam.DoFn.TimerParam(COMMIT),
    ) -> Iterator[TimestampedValue]:
        # No pane follows the end of input: a pending processing-time timer would keep Prism waiting for it (the
        # DirectRunner drops it).
        commit.clear()
        yield from self._write_buffer(key, buffer, buffering)

    def _write_buffer(self, key: tuple[str, int], buffer: Any, buffering: Any) -> Iterator[TimestampedValue]:
        rows = [row for held in buffer.read() for row in held]
        buffer.clear()
        buffering.clear()
        if not rows:
            return
        dataset, window_start_us = key
        # At the global window's end, as a GroupByKey's panes came out, for callers that count the files.
        for lake_file in self._write_pane(dataset, window_start_us, rows):
            yield TimestampedValue(lake_file, GlobalWindow().max_timestamp())


def _order_key(row: LakeRow) -> tuple[int, str, bool, str]:
    # A None key sorts apart from every string key, "" included.
    return row.publish_time_us, row.message_id, row.dedupe_key is not None, row.dedupe_key or ""


def _content_key(row: LakeRow) -> str:
    return json.dumps(row.row, sort_keys=True, separators=(",", ":"), default=repr)


def _in_deterministic_order(rows: Iterable[LakeRow]) -> list[LakeRow]:
    """Sorts rows by ``_order_key``; rows that tie on it (one message's rows without a key) by their content.

    A GroupByKey's iterable comes in no fixed order, and a file's bytes must not depend on it.
    """
    ordered = []
    for _, tied in itertools.groupby(sorted(rows, key=_order_key), key=_order_key):
        group = list(tied)
        ordered.extend(sorted(group, key=_content_key) if len(group) > 1 else group)
    return ordered


def _first_copies(ordered: list[LakeRow]) -> list[LakeRow]:
    """Keeps the first row of each dedupe key in ``ordered``; keyless rows all stay."""
    seen: set[str] = set()
    kept = []
    for row in ordered:
        key = row.dedupe_key
        if key is not None:
            if key in seen:
                continue
            seen.add(key)
        kept.append(row)
    return kept
