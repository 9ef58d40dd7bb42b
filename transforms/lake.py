"""Write lake rows as Parquet files in hourly partitions, one commit window at a time (DESIGN.md §2 "Lake layout").

``WriteToLake`` is the lake's only writer; ``LakeFile`` describes what it committed; ``clean_stale_temp_files``
removes what a killed run left behind.

What goes in
============
A ``PCollection`` of :class:`~transforms.records.LakeRow` whose element timestamps are ingestion (publish) times.
Only the element timestamp places a row: a row whose payload ``timestamp`` is days old lands in the window of its
publish time. ``schemas`` maps each dataset name to the Arrow schema of its rows; a row for a dataset without a schema
fails the bundle (a configuration error, not a record error).

What comes out
==============
One :class:`LakeFile` per Parquet file committed (dataset, final path, rows, window start, pane index), in the global
window at its end timestamp, so a caller can count files and rows for its run summary. Counters in the
``profilestream`` namespace: ``lake_files.<dataset>``, ``lake_rows.<dataset>``, ``duplicates`` and
``duplicates.<dataset>``; the distribution ``lake_lag_ms.<dataset>`` is the age (from publish time, by ``clock``) of
each pane's oldest row when its files land. On the BundleBasedDirectRunner count the ``LakeFile`` outputs instead:
that runner (Beam 2.77) loses the user metrics of every bundle after the first that a worker thread runs for a step.

Layout
------
``<lake>/<dataset>/date=YYYY-MM-DD/hour=HH/part-<window start YYYYMMDDTHHMMSSZ>-<pane>-<shard>-of-<shards>.parquet``
in UTC, date and hour of the window start. The commit interval divides an hour, so a window never straddles two
partitions. Readers: ``pyarrow.dataset.dataset("<lake>/<dataset>", partitioning="hive")`` and DuckDB's
``read_parquet("<lake>/<dataset>/**/*.parquet", hive_partitioning=true)``; rows therefore must not carry columns named
``date`` or ``hour``. Files are zstd-compressed: on synthetic event rows, about 40% smaller than snappy for the same
write time, and every reader above (and Spark, Trino, BigQuery) reads zstd.

Commit windows and panes
------------------------
A row's commit window is the ``commit_interval_s`` slice of the epoch that holds its element timestamp. Rows are
keyed by (dataset, window start). When the pipeline streams, each key's rows are buffered in state and written as a
pane, numbered from 0 in the order written:

- ``commit_interval_s`` of processing time (by ``clock``) after the first row the buffer took, so every row is on
  disk within one commit interval (plus the write) of its arrival, however the watermark moves;
- and when the watermark reaches the end of input, which writes whatever is left: the final lake never depends on
  processing time, and runners without processing-time timers write the same lake;
- nothing is ever late: a backlog older than the commit interval lands in its window's next pane.

This is Beam's ``AfterWatermark(early=AfterProcessingTime(commit_interval_s))`` trigger over the global window,
written as a stateful DoFn: on the Python DirectRunner the trigger's driver keeps a watermark hold per bundle that
reached a key and walks all of them for every element, a cost that grew with the stream until it was an eighth of the
pipeline's time. Beam's ``FixedWindows`` with late panes would not keep the promise of no late data on that runner
either: late elements hold no watermark, so a late pane waiting for its processing-time delay is abandoned when the
input ends. Batch pipelines group with a plain ``GroupByKey``: one pane per window.

The price: each (dataset, window) key keeps a few state cells for the life of the job (288 keys a day per dataset at
the default interval), emptied when its pane is written.

Duplicates
----------
Within a pane, rows that share a non-``None`` ``dedupe_key`` are written once: the copy with the earliest
``publish_time_us``, then the lowest ``message_id``. Rows are written ordered by (``publish_time_us``,
``message_id``, ``dedupe_key``), ties broken by content, so the same input writes byte-identical files.

Across panes of one window (streaming only; a batch window has one pane), the writer keeps the keys it wrote in state
per (dataset, window start) and drops a later pane's copies of them: the copy already on disk wins, even over one
published earlier. The keys are forgotten ``dedupe_horizon_s`` of processing time (by ``clock``) after the window's
last file; a copy arriving later than that is written again. Forgetting by processing time rather than watermark
matters at the end of input, where the watermark jumps to infinity before the final panes are written. The state
holds every key written within the horizon: throughput times (interval + horizon) keys at most.

Failure and restart
-------------------
In a local lake each file is written under ``<lake>/.tmp/`` and renamed into its partition (``os.replace``), so a
reader never sees a partial file. A lake on an object store (``gs://bucket/path``, through Beam's ``FileSystems``, as
on Dataflow) is written object by object: an object is visible only once its upload is complete. Names are
deterministic: a retried bundle rewrites the same files rather than adding new ones, and a pane never replaces a
committed file of other rows (a second run into the same window writes its panes after those there). Applying the
transform runs :func:`clean_stale_temp_files`; one run at a time may write a lake, since a second run's start would
remove the first one's files in flight.

Example::

    rows | "WriteLake" >> WriteToLake("data/lake", {"experience_events": schema}, commit_interval_s=300)
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import itertools
import json
import logging
import os
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Set
from typing import Any

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.coders import BooleanCoder, ListCoder, PickleCoder, StrUtf8Coder, VarIntCoder
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import StandardOptions
from apache_beam.transforms import window
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import BagStateSpec, ReadModifyWriteStateSpec, TimerSpec, on_timer
from apache_beam.transforms.window import GlobalWindow, TimestampedValue
from apache_beam.utils.timestamp import Timestamp

from transforms import metrics
from transforms.clock import EPOCH, wall_clock_us
from transforms.records import LakeRow

TEMP_DIR_NAME = ".tmp"

TableBuilder = Callable[[list[Mapping[str, Any]], pa.Schema], pa.Table]

_LOGGER = logging.getLogger(__name__)
_SECONDS_PER_HOUR = 3600
_MICROS = 1_000_000


@dataclasses.dataclass(frozen=True)
class LakeFile:
    """One committed Parquet file: its dataset, final path, row count, commit window start and pane index."""

    dataset: str
    path: str
    rows: int
    window_start_us: int
    pane_index: int


def clean_stale_temp_files(lake_dir: str) -> int:
    """Remove the temporary files a killed run left in ``<lake>/.tmp/``; return how many were removed.

    Only call it while no other run writes to ``lake_dir``: a run's files in flight look the same. A lake on an
    object store has no temporary files.
    """
    if not is_local(lake_dir):
        return 0
    removed = 0
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(os.path.join(lake_dir, TEMP_DIR_NAME)):
            if entry.is_file(follow_symlinks=False):
                os.remove(entry.path)
                removed += 1
    if removed:
        _LOGGER.info("Removed %d stale temporary lake files from %s", removed, lake_dir)
    return removed


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
        dedupe_horizon_s: streaming only: how long (processing time) after a window's last file its written keys
            are remembered, to drop copies arriving in later panes.
        table_builder: turns a pane's rows into an Arrow table of the dataset's schema.
        clock: microseconds since the epoch: the runner's processing time, for ``lake_lag_ms`` and the horizon.
    """

    def __init__(
        self,
        lake_dir: str,
        schemas: Mapping[str, pa.Schema],
        *,
        commit_interval_s: int = 300,
        max_rows_per_file: int = 1_000_000,
        dedupe_horizon_s: int = 3600,
        table_builder: TableBuilder = _table_from_pylist,
        clock: Callable[[], int] = wall_clock_us,
    ) -> None:
        super().__init__()
        if commit_interval_s <= 0 or _SECONDS_PER_HOUR % commit_interval_s:
            raise ValueError(f"commit_interval_s must divide an hour (3600 s), got {commit_interval_s}")
        if max_rows_per_file <= 0:
            raise ValueError(f"max_rows_per_file must be positive, got {max_rows_per_file}")
        if dedupe_horizon_s < 0:
            raise ValueError(f"dedupe_horizon_s must not be negative, got {dedupe_horizon_s}")
        unusable = sorted(name for name in schemas if not _is_dataset_folder_name(name))
        if unusable:
            raise ValueError(f"lake dataset names must be plain folder names without a leading '_' or '.': {unusable}")
        self._lake_dir = lake_dir
        self._schemas = dict(schemas)
        self._commit_interval_s = commit_interval_s
        self._max_rows_per_file = max_rows_per_file
        self._dedupe_horizon_s = dedupe_horizon_s
        self._table_builder = table_builder
        self._clock = clock

    def expand(self, rows: beam.PCollection[LakeRow]) -> beam.PCollection[LakeFile]:
        clean_stale_temp_files(self._lake_dir)
        writer_options = {
            "max_rows_per_file": self._max_rows_per_file,
            "table_builder": self._table_builder,
            "clock": self._clock,
        }
        keyed = rows | "KeyByCommitWindow" >> beam.ParDo(
            _KeyByCommitWindowFn(self._commit_interval_s * _MICROS)
        ).with_output_types(tuple[tuple[str, int], LakeRow])
        if rows.pipeline.options.view_as(StandardOptions).streaming:
            write_panes = _BufferAndWritePanesFn(
                self._lake_dir,
                self._schemas,
                interval_us=self._commit_interval_s * _MICROS,
                horizon_us=self._dedupe_horizon_s * _MICROS,
                **writer_options,
            )
            return (
                keyed
                | "InGlobalWindow" >> beam.WindowInto(window.GlobalWindows())
                | "BufferAndWritePanes" >> beam.ParDo(write_panes).with_output_types(LakeFile)
            )
        return (
            keyed
            | "OneWindowForAll" >> beam.WindowInto(window.GlobalWindows())
            | "GroupPanes" >> beam.GroupByKey()
            | "WritePanes"
            >> beam.ParDo(_WritePaneFn(self._lake_dir, self._schemas, **writer_options)).with_output_types(LakeFile)
        )


def _is_dataset_folder_name(name: str) -> bool:
    return bool(name) and "/" not in name and os.sep not in name and name[0] not in "._"


class _KeyByCommitWindowFn(beam.DoFn):
    """Keys each row by its dataset and the start (µs) of the commit window holding its element timestamp."""

    def __init__(self, interval_us: int) -> None:
        self._interval_us = interval_us

    def process(
        self, row: LakeRow, timestamp: Timestamp = beam.DoFn.TimestampParam
    ) -> Iterator[tuple[tuple[str, int], LakeRow]]:
        micros = timestamp.micros
        yield (row.dataset, micros - micros % self._interval_us), row


class _WritePaneFn(beam.DoFn):
    """Writes one pane of a (dataset, window start) key: drops duplicates, orders rows, commits shards by rename."""

    def __init__(
        self,
        lake_dir: str,
        schemas: Mapping[str, pa.Schema],
        *,
        max_rows_per_file: int,
        table_builder: TableBuilder,
        clock: Callable[[], int],
    ) -> None:
        self._lake_dir = lake_dir
        self._local = is_local(lake_dir)
        self._temp_dir = os.path.join(lake_dir, TEMP_DIR_NAME)
        self._schemas = schemas
        self._max_rows_per_file = max_rows_per_file
        self._table_builder = table_builder
        self._clock = clock
        self._duplicates = metrics.counter("duplicates")

    def setup(self) -> None:
        if self._local:
            os.makedirs(self._temp_dir, exist_ok=True)

    def process(
        self, element: tuple[tuple[str, int], Iterable[LakeRow]], pane_info: Any = beam.DoFn.PaneInfoParam
    ) -> Iterator[LakeFile]:
        (dataset, window_start_us), rows = element
        _, files = self._write_pane(dataset, window_start_us, pane_info.index, rows, written=frozenset())
        yield from files

    def _write_pane(
        self, dataset: str, window_start_us: int, pane_index: int, rows: Iterable[LakeRow], written: Set[str]
    ) -> tuple[list[LakeRow], list[LakeFile]]:
        """Writes the pane's first copies of keys not in ``written``; returns the rows kept and the files."""
        ordered = _in_deterministic_order(rows)
        kept = _first_copies(ordered, written)
        if len(kept) < len(ordered):
            self._duplicates.inc(len(ordered) - len(kept))
            metrics.counter(f"duplicates.{dataset}").inc(len(ordered) - len(kept))
        if not kept:
            return kept, []
        return kept, self._write(dataset, window_start_us, pane_index, kept)

    def _write(self, dataset: str, window_start_us: int, pane_index: int, rows: list[LakeRow]) -> list[LakeFile]:
        schema = self._schemas.get(dataset)
        if schema is None:
            raise ValueError(f"no Arrow schema for lake dataset {dataset!r}")
        start = EPOCH + datetime.timedelta(microseconds=window_start_us)
        partition_dir = FileSystems.join(self._lake_dir, dataset, f"date={start:%Y-%m-%d}", f"hour={start:%H}")
        if self._local:
            os.makedirs(partition_dir, exist_ok=True)
        size = self._max_rows_per_file
        chunks = [rows[at : at + size] for at in range(0, len(rows), size)]
        shards = len(chunks)
        tables = [self._table_builder([row.row for row in chunk], schema) for chunk in chunks]
        prefix = FileSystems.join(partition_dir, f"part-{start:%Y%m%dT%H%M%SZ}")
        pane_index = _pane_to_write(prefix, pane_index, tables)
        files = []
        for shard, (chunk, table) in enumerate(zip(chunks, tables, strict=True)):
            path = f"{prefix}-{pane_index}-{shard}-of-{shards}.parquet"
            self._commit(table, path)
            files.append(LakeFile(dataset, path, len(chunk), window_start_us, pane_index))
        metrics.counter(f"lake_files.{dataset}").inc(shards)
        metrics.counter(f"lake_rows.{dataset}").inc(len(rows))
        # Rows are in publish-time order, so the first is the oldest.
        lag_ms = (self._clock() - rows[0].publish_time_us) // 1000
        Metrics.distribution(metrics.NAMESPACE, f"lake_lag_ms.{dataset}").update(lag_ms)
        return files

    def _commit(self, table: pa.Table, path: str) -> None:
        if not self._local:
            # An object becomes visible whole when its upload completes; a rename there would be a copy.
            with FileSystems.create(path, compression_type=CompressionTypes.UNCOMPRESSED) as upload:
                pq.write_table(table, upload, compression="zstd")
            return
        temp_path = os.path.join(self._temp_dir, f"{uuid.uuid4().hex}.parquet")
        try:
            pq.write_table(table, temp_path, compression="zstd")
            os.replace(temp_path, path)
        except BaseException:
            # A failed write leaves nothing behind for the next run to clean.
            with contextlib.suppress(FileNotFoundError):
                os.remove(temp_path)
            raise


def _pane_to_write(prefix: str, pane_index: int, tables: list[pa.Table]) -> int:
    """The pane index to write ``tables`` (a pane's shards) under: ``pane_index``, unless files of that pane hold
    other rows already, in which case the next index no file of the window uses.

    A retried bundle writes the same rows under the same names, and that rewrite is harmless. Other rows under a
    committed pane's names mean the writer's state was lost and panes are numbered from 0 again (seen on Prism with
    a cold EXTERNAL worker: a window's state was gone while rows of it still came), and writing them would replace
    rows the lake already holds.
    """
    existing = _pane_files(prefix)
    held = existing.get(pane_index)
    if held is None or _same_rows(held, tables):
        return pane_index
    renumbered = max(existing) + 1
    _LOGGER.warning("lake pane %s-%d holds other rows; writing this one as pane %d", prefix, pane_index, renumbered)
    metrics.counter("lake_panes_renumbered").inc()
    return renumbered


def _pane_files(prefix: str) -> dict[int, list[str]]:
    """The files of a window's panes, by pane index, in shard order."""
    panes: dict[int, list[tuple[int, str]]] = {}
    for found in FileSystems.match([f"{prefix}-*-*-of-*.parquet"])[0].metadata_list:
        pane, shard = found.path[len(prefix) + 1 : -len(".parquet")].split("-")[:2]
        panes.setdefault(int(pane), []).append((int(shard), found.path))
    return {pane: [path for _, path in sorted(shards)] for pane, shards in panes.items()}


def _same_rows(paths: list[str], tables: list[pa.Table]) -> bool:
    if len(paths) != len(tables):
        return False
    for path, table in zip(paths, tables, strict=True):
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as held:
            if not pq.read_table(pa.BufferReader(held.read())).equals(table):
                return False
    return True


class _BufferAndWritePanesFn(_WritePaneFn):
    """Buffers each (dataset, window start) key's rows and writes them as a pane ``interval_us`` of processing time
    after the first, and at the end of input; drops copies of keys an earlier pane wrote.

    The written keys are forgotten ``horizon_us`` of processing time after the key's last pane, by ``clock``.
    """

    BUFFER = BagStateSpec("buffer", PickleCoder())
    BUFFERING = ReadModifyWriteStateSpec("buffering", BooleanCoder())
    NEXT_PANE = ReadModifyWriteStateSpec("next_pane", VarIntCoder())
    WRITTEN_KEYS = BagStateSpec("written_keys", ListCoder(StrUtf8Coder()))
    COMMIT = TimerSpec("commit", TimeDomain.REAL_TIME)
    END_OF_INPUT = TimerSpec("end_of_input", TimeDomain.WATERMARK)
    FORGET_KEYS = TimerSpec("forget_keys", TimeDomain.REAL_TIME)

    def __init__(
        self,
        lake_dir: str,
        schemas: Mapping[str, pa.Schema],
        *,
        interval_us: int,
        horizon_us: int,
        **writer_options: Any,
    ):
        super().__init__(lake_dir, schemas, **writer_options)
        self._interval_us = interval_us
        self._horizon_us = horizon_us

    # Beam finds state and timers through these parameter defaults (hence B008).
    def process(
        self,
        element: tuple[tuple[str, int], LakeRow],
        buffer: Any = beam.DoFn.StateParam(BUFFER),
        buffering: Any = beam.DoFn.StateParam(BUFFERING),
        commit: Any = beam.DoFn.TimerParam(COMMIT),
        end_of_input: Any = beam.DoFn.TimerParam(END_OF_INPUT),
    ) -> None:
        _, row = element
        if not buffering.read():
            # The first row since the last pane: its pane is due one commit interval from now.
            buffering.write(True)
            commit.set(Timestamp(micros=self._clock() + self._interval_us))
            end_of_input.set(GlobalWindow().max_timestamp())
        buffer.add(row)

    @on_timer(COMMIT)
    def on_commit(
        self,
        key: Any = beam.DoFn.KeyParam,
        buffer: Any = beam.DoFn.StateParam(BUFFER),
        buffering: Any = beam.DoFn.StateParam(BUFFERING),
        next_pane: Any = beam.DoFn.StateParam(NEXT_PANE),
        written_keys: Any = beam.DoFn.StateParam(WRITTEN_KEYS),
        forget_keys: Any = beam.DoFn.TimerParam(FORGET_KEYS),
    ) -> Iterator[TimestampedValue]:
        yield from self._write_buffer(key, buffer, buffering, next_pane, written_keys, forget_keys)

    @on_timer(END_OF_INPUT)
    def on_end_of_input(
        self,
        key: Any = beam.DoFn.KeyParam,
        buffer: Any = beam.DoFn.StateParam(BUFFER),
        buffering: Any = beam.DoFn.StateParam(BUFFERING),
        next_pane: Any = beam.DoFn.StateParam(NEXT_PANE),
        written_keys: Any = beam.DoFn.StateParam(WRITTEN_KEYS),
        commit: Any = beam.DoFn.TimerParam(COMMIT),
        forget_keys: Any = beam.DoFn.TimerParam(FORGET_KEYS),
    ) -> Iterator[TimestampedValue]:
        yield from self._write_buffer(key, buffer, buffering, next_pane, written_keys, forget_keys)
        # No pane follows the end of input: pending processing-time timers would keep Prism waiting for them (the
        # DirectRunner drops them).
        commit.clear()
        forget_keys.clear()

    @on_timer(FORGET_KEYS)
    def forget_written_keys(self, written_keys: Any = beam.DoFn.StateParam(WRITTEN_KEYS)) -> None:
        written_keys.clear()

    def _write_buffer(
        self, key: tuple[str, int], buffer: Any, buffering: Any, next_pane: Any, written_keys: Any, forget_keys: Any
    ) -> Iterator[TimestampedValue]:
        rows = list(buffer.read())
        buffer.clear()
        buffering.clear()
        if not rows:
            return
        dataset, window_start_us = key
        pane_index = next_pane.read() or 0
        next_pane.write(pane_index + 1)
        written = set(itertools.chain.from_iterable(written_keys.read()))
        kept, files = self._write_pane(dataset, window_start_us, pane_index, rows, written)
        if kept:
            written_keys.add([row.dedupe_key for row in kept if row.dedupe_key is not None])
            forget_keys.set(Timestamp(micros=self._clock() + self._horizon_us))
        # At the global window's end, as a GroupByKey's panes came out, for callers that count the files.
        for lake_file in files:
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


def _first_copies(ordered: list[LakeRow], written: Set[str]) -> list[LakeRow]:
    """Keeps the first row of each dedupe key in ``ordered`` whose key is not in ``written``; keyless rows all stay."""
    seen: set[str] = set()
    kept = []
    for row in ordered:
        key = row.dedupe_key
        if key is not None:
            if key in seen or key in written:
                continue
            seen.add(key)
        kept.append(row)
    return kept
