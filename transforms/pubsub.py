"""ReadPubSub: a Pub/Sub subscription in, :class:`~core.records.Message` records out.

Output: one ``Message`` per Pub/Sub message, with its data, attributes, message id and publish time, and the time the
pipeline received it as its read time; its element timestamp is the publish time (the ingestion time every stage
windows by). It is Beam's own ``ReadFromPubSub`` (with attributes), so it runs wherever Beam's does: the DirectRunner
and Dataflow. On the DirectRunner it acknowledges a message when it pulls it (README, "Limits of local
development"); :mod:`pipelines.direct_runner_patches` lets ``profilestream run`` stop it cleanly.

:func:`check_subscription` and :func:`check_topic` tell, in one line, why a run could not use a name (missing, or
Pub/Sub unreachable), before the pipeline starts.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import apache_beam as beam
from apache_beam.io.gcp.pubsub import PubsubMessage

from core.clock import wall_clock_us
from core.records import Message

CHECK_TIMEOUT_S = 10.0


class PubSubUnavailableError(ValueError):
    """A subscription or topic that does not exist or cannot be reached; the message is one line."""


def check_subscription(subscription: str) -> None:
    """Raises :class:`PubSubUnavailableError` unless ``subscription`` exists and answers."""
    from google.cloud import pubsub_v1

    with pubsub_v1.SubscriberClient() as subscriber:
        _check(
            lambda: subscriber.get_subscription(subscription=subscription, retry=None, timeout=CHECK_TIMEOUT_S),
            subscription,
        )


def check_topic(topic: str) -> None:
    """Raises :class:`PubSubUnavailableError` unless ``topic`` exists and answers."""
    from google.cloud import pubsub_v1

    publisher = pubsub_v1.PublisherClient()
    try:
        _check(lambda: publisher.get_topic(topic=topic, retry=None, timeout=CHECK_TIMEOUT_S), topic)
    finally:
        publisher.transport.close()


def pull_gathered(client: Any, subscription: str, *, max_messages: int, wait_s: float, gather_s: float) -> list:
    """Synchronous pulls from ``subscription`` with Google's subscriber ``client``, gathered while messages keep coming
    for up to ``gather_s`` or ``max_messages`` (Pub/Sub hands out at most 100 or so a pull), each waiting at most
    ``wait_s``; the received messages, none when a pull times out empty."""
    from google.api_core.exceptions import DeadlineExceeded

    gathered: list = []
    deadline = time.monotonic() + gather_s
    while len(gathered) < max_messages:
        try:
            response = client.pull(subscription=subscription, max_messages=max_messages - len(gathered), timeout=wait_s)
        except DeadlineExceeded:
            break
        gathered.extend(response.received_messages)
        if not response.received_messages or time.monotonic() >= deadline:
            break
    return gathered


def _check(get: Callable[[], object], name: str) -> None:
    from google.api_core import exceptions
    from google.auth.exceptions import DefaultCredentialsError

    try:
        get()
    except exceptions.NotFound:
        raise PubSubUnavailableError(f"{name}: not found") from None
    except (exceptions.GoogleAPIError, DefaultCredentialsError) as error:
        first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise PubSubUnavailableError(f"{name}: Pub/Sub cannot be reached: {first_line}") from None


def message_from_pubsub(pubsub_message: PubsubMessage, clock: Callable[[], int]) -> Message:
    """A pulled message as a :class:`Message` read now; Beam's ``PubsubMessage`` and the client's both serve."""
    return Message(
        data=pubsub_message.data,
        attributes=dict(pubsub_message.attributes or {}),
        message_id=pubsub_message.message_id,
        publish_time_us=int(pubsub_message.publish_time.timestamp() * 1_000_000),
        read_time_us=clock(),
    )


class ReadPubSub(beam.PTransform):
    """Reads ``projects/P/subscriptions/S``; see the module docstring."""

    def __init__(self, subscription: str, *, clock: Callable[[], int] = wall_clock_us) -> None:
        super().__init__()
        self._subscription = subscription
        self._clock = clock

    def expand(self, begin: beam.pvalue.PBegin) -> beam.PCollection:
        return (
            begin
            | "Pull" >> beam.io.ReadFromPubSub(subscription=self._subscription, with_attributes=True)
            | "ToMessage" >> beam.Map(message_from_pubsub, self._clock)
        )
