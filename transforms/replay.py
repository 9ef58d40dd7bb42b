"""Replay archived Pub/Sub messages as if they were being read from a subscription.

In: a PATH (a file, a directory read recursively, or a glob) of archived messages, in the formats
:mod:`messages.replay_files` reads. Out: one :class:`~core.records.Message` per archived message, its event
timestamp set to the message's publish time so that windows, lake partitions and ``_ingest_time`` come out exactly
as on the first ingestion. A publish time the decode stage rejects (before 1970, or later than the read time plus the
skew: ``DECODE.PUBLISH_TIME_OUT_OF_RANGE``) stamps nothing: such a message takes its read time, so that its failed
record never makes a partition of year 1 or 9999.

Example
-------
::

    messages = pipeline | "ReadReplay" >> ReadReplay("archive/2026-11-01/*.jsonl")

The list of files is taken when :class:`ReadReplay` is built, so a bad path fails before the pipeline starts. Files
are read lazily, one after the other, without a reshuffle: a file never has to fit in memory.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import apache_beam as beam
from apache_beam.utils.timestamp import Timestamp

from core.clock import wall_clock_us
from core.records import Message
from messages.decoding import DEFAULT_PUBLISH_TIME_SKEW_US, MAX_MESSAGE_BYTES, publish_time_out_of_range
from messages.replay_files import EVERY_MESSAGE, Share, expand_replay_path, read_replay_file
from transforms import metrics


class _ReadReplayFileFn(beam.DoFn):
    """Reads one replay file into messages stamped with their publish time."""

    def __init__(self, clock: Callable[[], int], max_message_bytes: int, publish_time_skew_us: int, share: Share):
        self._clock = clock
        self._max_message_bytes = max_message_bytes
        self._publish_time_skew_us = publish_time_skew_us
        self._share = share
        self._messages = metrics.counter(metrics.REPLAY_MESSAGES)

    def process(self, path: str) -> Iterator[beam.window.TimestampedValue]:
        count = 0
        messages = read_replay_file(
            path, clock=self._clock, max_message_bytes=self._max_message_bytes, share=self._share
        )
        for message in messages:
            count += 1
            in_range = publish_time_out_of_range(message, self._publish_time_skew_us) is None
            stamp_us = message.publish_time_us if in_range else message.read_time_us
            yield beam.window.TimestampedValue(message, Timestamp(micros=stamp_us))
        self._messages.inc(count)


class ReadReplay(beam.PTransform):
    """Reads the messages archived under a replay PATH (file, directory or glob) as a ``PCollection[Message]``.

    Each element's event timestamp is its message's publish time. The messages read are counted in the
    ``profilestream/replay_messages`` counter. ``clock`` gives read times in microseconds since the epoch;
    ``max_message_bytes`` sets how long a JSONL line may be before it is cut (:func:`max_line_bytes`), and
    ``publish_time_skew_us`` how far past its read time a publish time may lie and still stamp its message;
    ``share`` which of each file's messages to read (:class:`~messages.replay_files.Share`: all by default).
    Raises :class:`ReplayPathError` at construction when PATH names no file.
    """

    def __init__(
        self,
        path: str,
        *,
        clock: Callable[[], int] = wall_clock_us,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        publish_time_skew_us: int = DEFAULT_PUBLISH_TIME_SKEW_US,
        share: Share = EVERY_MESSAGE,
    ):
        super().__init__()
        self._files = expand_replay_path(path)
        self._clock = clock
        self._max_message_bytes = max_message_bytes
        self._publish_time_skew_us = publish_time_skew_us
        self._share = share

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection[Message]:
        return (
            pbegin
            # No reshuffle: the files are read in the stage that lists them, and each message flows on unbuffered.
            | "ListFiles" >> beam.Create(self._files, reshuffle=False)
            | "ReadFiles"
            >> beam.ParDo(
                _ReadReplayFileFn(self._clock, self._max_message_bytes, self._publish_time_skew_us, self._share)
            ).with_output_types(Message)
        )
