"""``profilestream serve``: the HTTP Profile Access API (:mod:`service.api`) and its console (:mod:`service.console`),
with ``--pubsub-topic`` the HTTP inlet (:mod:`service.inlet`), and with a privacy token the privacy job routes
(:mod:`service.privacy_api`), until interrupted."""

from __future__ import annotations

import argparse
import contextlib
import functools
import os

from fastapi import APIRouter
from google.auth.exceptions import DefaultCredentialsError

from core.errors import ConfigError
from identity.stitching import StitchSettings
from messages.pubsub import PubSubUnavailableError, check_topic
from pipelines.config import load_config
from pipelines.usage import UsageError, config_and_registry, opened_profile_store, privacy_settings
from privacy.jobs import JobStore, PrivacyJobs, privacy_store_path
from privacy.runner import normalised_identities, run_job
from service import api, console, privacy_api
from service.inlet import AuthFailureLimit, Inlet, Judge, PubSubPublisher
from service.pipeline_metrics import PipelineMetrics
from stores import opening


def serve_command(args: argparse.Namespace, _beam_args: list[str]) -> int:
    """``profilestream serve``: the Profile Access API, the inlet with ``--pubsub-topic`` and the privacy job routes
    with a privacy token, until interrupted; the privacy jobs' worker ends (after its job in progress) with it."""
    config = load_config(args.config)
    settings = config.stitch_settings()
    with contextlib.ExitStack() as stack:
        inlet = stack.enter_context(contextlib.closing(_inlet(args))) if args.pubsub_topic is not None else None
        try:
            token = api.api_token(args.token_file, os.environ)
            roles = _privacy_roles(args, settings, stack)
            opening.parse_store_url(args.identity_store, opening.IDENTITY_STORE)
            listener = stack.enter_context(api.listen(args.host, args.port))
        except ValueError as error:
            raise UsageError(str(error)) from None
        store = stack.enter_context(opened_profile_store(args.profile_store))
        auth_failures = AuthFailureLimit(args.auth_failures, args.auth_failure_window)
        try:
            app = api.create_app(
                store,
                settings,
                token,
                routers=_console_routers(args, settings),
                roles=roles,
                open_routers=[console.console_router()],
                inlet=inlet,
                event_ttl_us=config.event_ttl_us(),
                auth_failures=auth_failures,
            )
        except ValueError as error:
            raise UsageError(str(error)) from None
        limits = api.ServerLimits(
            header_timeout_s=args.header_timeout,
            body_timeout_s=args.body_timeout,
            keep_alive_timeout_s=args.keep_alive_timeout,
            max_connections=args.max_connections,
        )
        api.serve(app, listener, limits)
    return 0


def _console_routers(args: argparse.Namespace, settings: StitchSettings) -> list[APIRouter]:
    """The console's data routes: identity graphs from ``--identity-store`` (opened read-only for each lookup) and
    the figures of the run writing ``--metrics-file``."""
    open_store = functools.partial(opening.open_identity_store, args.identity_store, read_only=True)
    return [
        console.identities_router(open_store, settings),
        console.pipeline_router(PipelineMetrics(args.metrics_file)),
    ]


def _privacy_roles(args: argparse.Namespace, stitch: StitchSettings, stack: contextlib.ExitStack) -> list[api.Role]:
    """The privacy job routes when ``serve`` has a privacy token, else none. Their jobs run one at a time on the lake
    and stores the flags name, and ``stack`` stops them (after the job in progress) and closes the job store. A
    missing key or a bad store URL is a one-line ValueError."""
    token = privacy_api.privacy_token(args.privacy_token_file, os.environ)
    if token is None:
        return []
    settings = privacy_settings(args, stitch)
    job_store = JobStore(privacy_store_path(settings.privacy_store))
    stack.callback(job_store.close)
    normalise = functools.partial(normalised_identities, stitch=stitch)
    jobs = PrivacyJobs(job_store, settings.key, normalise, functools.partial(run_job, settings=settings))
    stack.callback(jobs.close)
    return [privacy_api.privacy_role(jobs, token)]


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
