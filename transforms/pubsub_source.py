"""ReadPubSubAcknowledged: a Pub/Sub subscription in, :class:`~core.records.Message` records out, on the
portable runners (Prism, Flink), acknowledging a message only once the runner has the data.

Output: what :class:`transforms.pubsub.ReadPubSub` gives, one ``Message`` per Pub/Sub message (data, attributes,
message id, publish time, and the time it was pulled as its read time), with the publish time as its element
timestamp. It is the read every runner but the DirectRunner and Dataflow gets (:func:`pipelines.ingest.pubsub_source`,
by :mod:`pipelines.runners`).

    messages = pipeline | "ReadPubSub" >> ReadPubSubAcknowledged("projects/P/subscriptions/S", stop=stop)

Guarantees: a bundle's messages are acknowledged in its bundle finaliser, once the runner holds its output durably
(Prism: when it commits the bundle; portable Flink: after the next completed checkpoint), and their ack deadlines are
extended until then (:class:`AckLeases`); delivery is at least once. An idle read defers to the runner rather than
spinning, and a request to split the read is declined. The watermark (:func:`watermark_after_pull`) is the oldest
publish time a pull brought, or the clock after an empty pull, and never goes back; a message published before it is
late, as on the DirectRunner. ``stop``, set on SIGINT or SIGTERM of ``profilestream run``, is handed to the read only
where the workers run in the process that built the pipeline (Prism's LOOPBACK default), carried by the DoFn as a
:class:`_StopInThisProcess` (an event does not pickle); once set, the read pulls no more and ends, its watermark goes
to the end of time and the run finishes as a replay does. Elsewhere the read ends only with the runner's own stop,
cancel or drain.

Why our own read, as a splittable DoFn, and how it pulls:
docs/decisions/0009-our-own-pubsub-read-for-portable-runners.md;
the finaliser and the leases: docs/decisions/0010-acknowledge-in-the-bundle-finaliser-and-lease-until-then.md.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterator, Sequence

import apache_beam as beam
from apache_beam.io.iobase import RestrictionProgress, RestrictionTracker
from apache_beam.io.watermark_estimators import ManualWatermarkEstimator
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.timestamp import Duration, Timestamp

from core.clock import wall_clock_us
from core.records import Message
from messages.pubsub import pull_gathered
from transforms.pubsub import message_from_pubsub

DEFAULT_PULL_MESSAGES = 1000
PULL_WAIT_S = 0.5
RESUME_DELAY_S = 0.2
# How long a call gathers pulls while messages keep coming.
GATHER_S = 0.2
DEFAULT_MAX_HOLD_S = 600.0
# How often the lease thread looks for deadlines to extend; well under the shortest deadline Pub/Sub allows (10 s).
LEASE_TICK_S = 1.0
# Pub/Sub takes at most 2,500 ack ids in one acknowledge or deadline change.
ACK_IDS_PER_REQUEST = 2_500
NACK_DEADLINE_S = 0

_LOGGER = logging.getLogger(__name__)

# Stop events by token, for DoFns unpickled in this process; an entry lives as long as whoever set up the run holds
# the event.
_STOP_EVENTS: weakref.WeakValueDictionary[str, threading.Event] = weakref.WeakValueDictionary()


def watermark_after_pull(publish_times_us: Sequence[int], now_us: int) -> int:
    """The read's watermark estimate after a pull: the oldest publish time it brought, or the clock when it brought
    nothing. The caller keeps the watermark from going back."""
    return min(publish_times_us) if publish_times_us else now_us


class AckLeases:
    """Ack ids pulled and not yet finalised, and when each needs its deadline extended; thread-safe, no I/O.

    ``ack_deadline_s`` is the deadline each extension grants; an ack id is due for one once half of it has run since
    its pull or its last extension, and is dropped (left to expire) once held ``max_hold_s``.
    """

    def __init__(self, ack_deadline_s: float, max_hold_s: float) -> None:
        self._ack_deadline_s = ack_deadline_s
        self._max_hold_s = max_hold_s
        self._lock = threading.Lock()
        # ack id -> (pulled at, extend at), in seconds of the caller's monotonic clock.
        self._held: dict[str, tuple[float, float]] = {}

    def hold(self, ack_ids: Sequence[str], now: float) -> None:
        extend_at = now + self._ack_deadline_s / 2
        with self._lock:
            self._held.update((ack_id, (now, extend_at)) for ack_id in ack_ids)

    def release(self, ack_ids: Sequence[str]) -> None:
        with self._lock:
            for ack_id in ack_ids:
                self._held.pop(ack_id, None)

    def due(self, now: float) -> list[str]:
        """The ack ids to extend now, counted as extended; those held too long are dropped instead."""
        extend_at = now + self._ack_deadline_s / 2
        due = []
        with self._lock:
            for ack_id, (pulled_at, next_extension) in list(self._held.items()):
                if now - pulled_at >= self._max_hold_s:
                    del self._held[ack_id]
                elif now >= next_extension:
                    self._held[ack_id] = (pulled_at, extend_at)
                    due.append(ack_id)
        return due

    def take_all(self) -> list[str]:
        """Every ack id still held, no longer held."""
        with self._lock:
            held, self._held = list(self._held), {}
        return held


class ReadPubSubAcknowledged(beam.PTransform):
    """Reads ``projects/P/subscriptions/S`` on any portable runner; see the module docstring.

    ``stop``, once set, ends the read; give it only where the workers run in this process (LOOPBACK), the only place
    it reaches; ``max_messages`` caps what one bundle pulls; ``max_hold_s`` bounds how long a message waits for its
    bundle's finalisation; ``clock`` gives the read time and the idle watermark.
    """

    def __init__(
        self,
        subscription: str,
        *,
        stop: threading.Event | None = None,
        max_messages: int = DEFAULT_PULL_MESSAGES,
        max_hold_s: float = DEFAULT_MAX_HOLD_S,
        clock: Callable[[], int] = wall_clock_us,
    ) -> None:
        super().__init__()
        self._pull = _PullAndAcknowledgeOnFinalisation(
            subscription,
            stop=_StopInThisProcess(stop) if stop is not None else None,
            max_messages=max_messages,
            max_hold_s=max_hold_s,
            clock=clock,
        )

    def expand(self, begin: beam.pvalue.PBegin) -> beam.PCollection:
        return begin | "Impulse" >> beam.Impulse() | "Pull" >> beam.ParDo(self._pull).with_output_types(Message)


class _StopInThisProcess:
    """A stop event as a DoFn carries it. Beam pickles every DoFn, even for workers in this process, and an event does
    not pickle: this pickles as a token that finds the event in this process's :data:`_STOP_EVENTS`."""

    def __init__(self, event: threading.Event) -> None:
        self._token = uuid.uuid4().hex
        _STOP_EVENTS[self._token] = event

    def is_set(self) -> bool:
        event = _STOP_EVENTS.get(self._token)
        return event is not None and event.is_set()


# What a claim on the read's restriction asks for: one more pull, or the end of the read.
_PULL = "pull"
_END = "end"


class _ReadTracker(RestrictionTracker):
    """The restriction is a boolean: True while the read goes on, False once this call's part of it is done."""

    def __init__(self, reading: bool) -> None:
        self._reading = reading

    def current_restriction(self) -> bool:
        return self._reading

    def try_claim(self, claim: str) -> bool:
        if claim == _END:
            self._reading = False
        return self._reading

    def try_split(self, fraction_of_remainder: float) -> tuple[bool, bool] | None:
        # Only the self-checkpoint that defer_remainder (or a runner's checkpoint request) asks for: the pull made
        # stays with this call, the rest of the read goes to the residual. Splits that would add readers are declined.
        if fraction_of_remainder != 0 or not self._reading:
            return None
        self._reading = False
        return False, True

    def current_progress(self) -> RestrictionProgress:
        # An endless read reports all of its work as still to do until it ends; runners ask while a bundle runs.
        return RestrictionProgress(completed=0.0, remaining=1.0 if self._reading else 0.0)

    def check_done(self) -> None:
        if self._reading:
            raise ValueError("the Pub/Sub read returned without deferring the rest of its read or ending it")

    def is_bounded(self) -> bool:
        return False


class _ReadRestrictions(beam.transforms.core.RestrictionProvider):
    def initial_restriction(self, _impulse: bytes) -> bool:
        return True

    def create_tracker(self, reading: bool) -> _ReadTracker:
        return _ReadTracker(reading)

    def restriction_size(self, _impulse: bytes, _reading: bool) -> int:
        return 1

    def restriction_coder(self) -> beam.coders.Coder:
        return beam.coders.BooleanCoder()


_RESTRICTION = beam.DoFn.RestrictionParam(_ReadRestrictions())
_WATERMARK = beam.DoFn.WatermarkEstimatorParam(ManualWatermarkEstimator.default_provider())


class _PullAndAcknowledgeOnFinalisation(beam.DoFn):
    def __init__(
        self,
        subscription: str,
        *,
        stop: _StopInThisProcess | None,
        max_messages: int,
        max_hold_s: float,
        clock: Callable[[], int],
    ) -> None:
        self._subscription = subscription
        self._stop = stop
        self._max_messages = max_messages
        self._max_hold_s = max_hold_s
        self._clock = clock

    def setup(self) -> None:
        from google.cloud import pubsub_v1

        self._subscriber = pubsub_v1.SubscriberClient()
        ack_deadline_s = self._subscriber.get_subscription(subscription=self._subscription).ack_deadline_seconds
        self._ack_deadline_s = ack_deadline_s
        self._leases = AckLeases(ack_deadline_s, self._max_hold_s)
        self._closing = threading.Event()
        self._lease_thread = threading.Thread(target=self._extend_leases, name="pubsub-leases", daemon=True)
        self._lease_thread.start()

    def teardown(self) -> None:
        self._closing.set()
        self._lease_thread.join()
        # Whatever is still held was never finalised: hand it back now rather than when its deadline runs out.
        self._change_deadlines(self._leases.take_all(), NACK_DEADLINE_S)
        self._subscriber.close()

    @beam.DoFn.unbounded_per_element()
    def process(
        self,
        _impulse: bytes,
        finaliser=beam.DoFn.BundleFinalizerParam,
        tracker=_RESTRICTION,
        watermark=_WATERMARK,
    ) -> Iterator[TimestampedValue]:
        # Registered on every call, even one that pulls nothing: Prism asks to finalise every bundle of a stage that
        # declares finalisation, and the SDK harness logs an error for each bundle that registered no finaliser.
        ack_ids: list[str] = []
        finaliser.register(functools.partial(self._acknowledge, ack_ids))
        if self._stop is not None and self._stop.is_set():
            tracker.try_claim(_END)
            return
        if not tracker.try_claim(_PULL):
            return
        received = self._pull()
        ack_ids.extend(message.ack_id for message in received)
        self._leases.hold(ack_ids, time.monotonic())
        publish_times_us = []
        for pulled in received:
            message = message_from_pubsub(pulled.message, self._clock)
            publish_times_us.append(message.publish_time_us)
            yield TimestampedValue(message, Timestamp(micros=message.publish_time_us))
        estimate = Timestamp(micros=watermark_after_pull(publish_times_us, self._clock()))
        current = watermark.current_watermark()
        if current is None or estimate > current:
            watermark.set_watermark(estimate)
        tracker.defer_remainder(None if received else Duration(seconds=RESUME_DELAY_S))

    def _pull(self) -> list:
        return pull_gathered(
            self._subscriber,
            self._subscription,
            max_messages=self._max_messages,
            wait_s=PULL_WAIT_S,
            gather_s=GATHER_S,
        )

    def _acknowledge(self, ack_ids: list[str]) -> None:
        from google.api_core.exceptions import GoogleAPICallError

        if not ack_ids:
            return
        self._leases.release(ack_ids)
        try:
            for chunk in _chunks(ack_ids):
                self._subscriber.acknowledge(subscription=self._subscription, ack_ids=chunk)
        except GoogleAPICallError as error:
            _LOGGER.warning("%d messages not acknowledged; Pub/Sub will deliver them again: %s", len(ack_ids), error)

    def _extend_leases(self) -> None:
        while not self._closing.wait(LEASE_TICK_S):
            self._change_deadlines(self._leases.due(time.monotonic()), self._ack_deadline_s)

    def _change_deadlines(self, ack_ids: list[str], deadline_s: int) -> None:
        from google.api_core.exceptions import GoogleAPICallError

        try:
            for chunk in _chunks(ack_ids):
                self._subscriber.modify_ack_deadline(
                    subscription=self._subscription, ack_ids=chunk, ack_deadline_seconds=deadline_s
                )
        except GoogleAPICallError as error:
            # The deadline stands as it was: at worst the messages come back early, as duplicates.
            _LOGGER.warning("ack deadlines of %d messages not changed: %s", len(ack_ids), error)


def _chunks(ack_ids: list[str]) -> Iterator[list[str]]:
    for start in range(0, len(ack_ids), ACK_IDS_PER_REQUEST):
        yield ack_ids[start : start + ACK_IDS_PER_REQUEST]
