"""``profilestream serve``: the HTTP Profile Access API (:mod:`service.api`) and, with ``--pubsub-topic``, the HTTP
inlet (:mod:`service.inlet`), until interrupted."""

from __future__ import annotations

import argparse
import contextlib
import os

from google.auth.exceptions import DefaultCredentialsError

from core.errors import ConfigError
from messages.pubsub import PubSubUnavailableError, check_topic
from pipelines.config import load_config
from pipelines.usage import UsageError, config_and_registry, opened_profile_store
from service import api
from service.inlet import AuthFailureLimit, Inlet, Judge, PubSubPublisher


def serve_command(args: argparse.Namespace, _beam_args: list[str]) -> int:
    """``profilestream serve``: the Profile Access API, and the inlet with ``--pubsub-topic``, until interrupted."""
    config = load_config(args.config)
    settings = config.stitch_settings()
    with contextlib.ExitStack() as stack:
        inlet = stack.enter_context(contextlib.closing(_inlet(args))) if args.pubsub_topic is not None else None
        try:
            token = api.api_token(args.token_file, os.environ)
            listener = stack.enter_context(api.listen(args.host, args.port))
        except ValueError as error:
            raise UsageError(str(error)) from None
        store = stack.enter_context(opened_profile_store(args.profile_store))
        auth_failures = AuthFailureLimit(args.auth_failures, args.auth_failure_window)
        app = api.create_app(
            store, settings, token, inlet=inlet, event_ttl_us=config.event_ttl_us(), auth_failures=auth_failures
        )
        limits = api.ServerLimits(
            header_timeout_s=args.header_timeout,
            body_timeout_s=args.body_timeout,
            keep_alive_timeout_s=args.keep_alive_timeout,
            max_connections=args.max_connections,
        )
        api.serve(app, listener, limits)
    return 0


def _inlet(args: argparse.Namespace):
    """The HTTP inlet of ``serve --pubsub-topic``; a bad connection, missing credentials or a topic that does not
    exist or cannot be reached are usage errors."""
    config, registry = config_and_registry(args)
    if not config.inlet.connections:
        raise UsageError("the inlet takes messages only on configured connections: add inlet.connections to --config")
    judge = Judge(registry, config.validation_policy(), config.max_message_bytes, config.max_batch_entries)
    try:
        publisher = PubSubPublisher(args.pubsub_topic, timeout_s=config.inlet.publish_timeout_seconds)
    except DefaultCredentialsError:
        raise UsageError(
            "--pubsub-topic: no Google credentials (GOOGLE_APPLICATION_CREDENTIALS), nor PUBSUB_EMULATOR_HOST"
        ) from None
    try:
        inlet = Inlet(config.inlet, judge, publisher, environ=os.environ)
    except ConfigError as error:
        publisher.close()
        raise ConfigError(f"inlet: {error}") from None
    # Checked now rather than found out from the first request's 503.
    try:
        check_topic(args.pubsub_topic)
    except PubSubUnavailableError as error:
        inlet.close()
        raise UsageError(f"--pubsub-topic {error}") from None
    return inlet
