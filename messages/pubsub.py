"""Pub/Sub without Beam: whether a subscription or topic can be used, told in one line before a pipeline or the inlet
starts (:func:`check_subscription`, :func:`check_topic`), and the gathered synchronous pulls the local reads use."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

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
