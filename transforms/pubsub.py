"""ReadPubSub: a Pub/Sub subscription in, :class:`~core.records.Message` records out.

Output: one ``Message`` per Pub/Sub message, with its data, attributes, message id and publish time, and the time the
pipeline received it as its read time; its element timestamp is the publish time (the ingestion time every stage
windows by). It is Beam's own ``ReadFromPubSub`` (with attributes), so it runs wherever Beam's does: the DirectRunner
and Dataflow. On the DirectRunner it acknowledges a message when it pulls it (README, "Limits of local
development"); :mod:`pipelines.direct_runner_patches` lets ``profilestream run`` stop it cleanly.

"""

from __future__ import annotations

from collections.abc import Callable

import apache_beam as beam
from apache_beam.io.gcp.pubsub import PubsubMessage

from core.clock import wall_clock_us
from core.records import Message


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
