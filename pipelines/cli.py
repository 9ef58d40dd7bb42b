"""The ``profilestream`` command line (console script from setup.py).

    profilestream run --source (replay:PATH | pubsub:projects/P/subscriptions/S) [--batch] [--lake DIR]
                      [--dead-letter-topic projects/P/topics/T] [--schema-dir DIR] [--config FILE]
                      [--runner NAME] [--commit-interval SECONDS] [Beam options]
    profilestream validate [--schema-dir DIR] [--schema ID] [--conformance] [--config FILE] FILE...
    profilestream profile get [--store URL] [--config FILE] (--identity NAMESPACE:ID | --person ID)...
    profilestream loadgen --target (pubsub:projects/P/topics/T | http://HOST:PORT/collection/[batch/]ID)
                          [--rate N] (--duration S | --count N) [traffic shape] [--send-log FILE]
    profilestream serve [--host HOST] [--port PORT] [--profile-store URL] [--config FILE] [--token-file FILE]
                        [--pubsub-topic projects/P/topics/T] [--schema-dir DIR] [limits on each client]

Every usage or input error prints one line on stderr and exits 2; no traceback reaches the user. ``run`` prints its
summary as the last line on stdout; ``validate`` prints a JSON line per entity and exits 0 when all are valid, 1 when
any is not; a ``pubsub:`` run reads until SIGINT or SIGTERM, then flushes what it holds and prints its summary
(a second signal abandons the flush); ``profile get`` prints a JSON line per lookup and exits 1 when any is unknown.
``serve`` runs the HTTP Profile Access API (:mod:`service.api`), and with ``--pubsub-topic`` the HTTP inlet
(:mod:`service.inlet`), until interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import functools
import importlib.metadata
import json
import os
import re
import signal
import stat
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from messages.replay_files import ReplayPathError, expand_replay_path
from pipelines.config import ConfigError, load_config
from pipelines.flink import FLINK_RUNNER
from pipelines.one_line_parser import USAGE_ERROR
from schemas.components import UnknownComponentError, library
from schemas.registry import SchemaFileError, SchemaRegistry

DEFAULT_LAKE = "data/lake"
DEFAULT_IDENTITY_STORE = "sqlite:///data/identity.sqlite"
DEFAULT_PROFILE_STORE = "sqlite:///data/profiles.sqlite"
DEFAULT_API_HOST = "127.0.0.1"  # loopback: the API serves personal data, so reaching it from elsewhere is a choice
DEFAULT_API_PORT = 8080
REPLAY_SCHEME = "replay:"
PUBSUB_SCHEME = "pubsub:"
FLINK_CHECK_TIMEOUT_S = 5.0
# Commands that development tools add to the CLI (tools/pyproject.toml), so the pipeline layer does not depend on them.
TOOL_COMMANDS = "profilestream.commands"
# Pub/Sub resource names: projects/PROJECT/(topics|subscriptions)/NAME, NAME 3-255 characters from Google's set.
_PUBSUB_NAME = re.compile(r"projects/[a-z][a-z0-9.:-]{1,61}[a-z0-9]/(topics|subscriptions)/[A-Za-z][\w.~+%-]{2,254}")


# serve's limits on what one client may hold of the server: flag, type, default, what it is.
_SERVE_LIMITS = [
    ("--header-timeout", float, 10.0, "seconds a request's headers may take"),
    ("--body-timeout", float, 30.0, "seconds a request's body may take"),
    ("--keep-alive-timeout", float, 5.0, "seconds an idle connection stays open"),
    ("--max-connections", int, 4096, "connections served at once, then 503"),
    ("--auth-failures", int, 10, "failed authentications per address, then 429"),
    ("--auth-failure-window", float, 60.0, "seconds in which they are counted"),
]


class UsageError(Exception):
    """Bad command-line input; its message is printed as one line."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:
        raise UsageError(message)


def main(argv: Sequence[str] | None = None) -> int:
    parser = command_parser()
    try:
        args, beam_args = parser.parse_known_args(argv)
        if args.command != "run" and beam_args:
            raise UsageError(f"unrecognized arguments: {' '.join(beam_args)}")
        return args.handler(args, beam_args)
    except (UsageError, ConfigError, SchemaFileError) as error:
        print(f"profilestream: error: {error}", file=sys.stderr)
        return USAGE_ERROR
    except KeyboardInterrupt:
        print("profilestream: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader (head, less) went away: what is left to print has no one to read it.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def command_parser() -> argparse.ArgumentParser:
    """The parser of every ``profilestream`` command."""
    parser = _Parser(prog="profilestream", description="Streaming customer-profile pipeline on Apache Beam.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = commands.add_parser("run", help="run the ingestion pipeline on a source")
    run.add_argument(
        "--source",
        required=True,
        help="replay:PATH (file, directory or glob) or pubsub:projects/P/subscriptions/S (until SIGINT or SIGTERM)",
    )
    run.add_argument("--dead-letter-topic", type=_topic, help="also publish failed records to projects/P/topics/T")
    run.add_argument("--lake", default=DEFAULT_LAKE, help=f"lake directory (default {DEFAULT_LAKE})")
    run.add_argument("--batch", action="store_true", help="run a replay as a bounded job (FnApiRunner locally)")
    run.add_argument("--runner", help="Beam runner (default: the local streaming runner)")
    run.add_argument("--commit-interval", type=int, dest="commit_interval_seconds", help="lake window in seconds")
    run.add_argument(
        "--identity-store",
        default=DEFAULT_IDENTITY_STORE,
        help=f"identity store URL (default {DEFAULT_IDENTITY_STORE})",
    )
    run.add_argument(
        "--profile-store", default=DEFAULT_PROFILE_STORE, help=f"profile store URL (default {DEFAULT_PROFILE_STORE})"
    )
    _add_shared(run)
    run.set_defaults(handler=_run)

    validate = commands.add_parser("validate", help="validate message files against their schemas")
    validate.add_argument("files", nargs="+", metavar="FILE")
    validate.add_argument("--schema", help="schema id of bare XDM entities (with --conformance: any XDM component)")
    validate.add_argument("--conformance", action="store_true", help="plain JSON Schema conformance to --schema")
    _add_shared(validate)
    validate.set_defaults(handler=_validate)

    identity = commands.add_parser("identity", help="look up the identity graph")
    identity_commands = identity.add_subparsers(dest="identity_command", required=True, parser_class=_Parser)
    identity_get = identity_commands.add_parser("get", help="the person and identities of NAMESPACE:ID")
    identity_get.add_argument("--store", default=DEFAULT_IDENTITY_STORE, help="identity store URL")
    identity_get.add_argument("--identity", action="append", required=True, metavar="NAMESPACE:ID")
    identity_get.add_argument("--config", help="configuration file (namespaces, identity rules, profiles)")
    identity_get.set_defaults(handler=_identity_get)

    profile = commands.add_parser("profile", help="look up merged profiles")
    profile_commands = profile.add_subparsers(dest="profile_command", required=True, parser_class=_Parser)
    profile_get = profile_commands.add_parser("get", help="the profile of NAMESPACE:ID or of a person id")
    profile_get.add_argument(
        "--store", default=DEFAULT_PROFILE_STORE, help=f"profile store URL (default {DEFAULT_PROFILE_STORE})"
    )
    # Both flags append to one list, so the answers come in the order asked whichever flag asked.
    profile_get.add_argument(
        "--identity",
        dest="lookups",
        action="append",
        type=_lookup("identity"),
        metavar="NAMESPACE:ID",
        help="the profile holding this identity (repeatable)",
    )
    profile_get.add_argument(
        "--person",
        dest="lookups",
        action="append",
        type=_lookup("person"),
        metavar="ID",
        help="the profile of this person id, p- and 24 hex digits (repeatable)",
    )
    profile_get.add_argument("--config", help="configuration file (namespaces, identity rules, profiles)")
    profile_get.set_defaults(handler=_profile_get)

    for tool in importlib.metadata.entry_points(group=TOOL_COMMANDS):
        tool.load()(commands)

    serve = commands.add_parser("serve", help="serve the HTTP Profile Access API (and the HTTP inlet)")
    serve.add_argument("--host", default=DEFAULT_API_HOST, help=f"address to listen on (default {DEFAULT_API_HOST})")
    serve.add_argument("--port", type=int, default=DEFAULT_API_PORT, help=f"port (default {DEFAULT_API_PORT})")
    serve.add_argument(
        "--profile-store", default=DEFAULT_PROFILE_STORE, help=f"profile store URL (default {DEFAULT_PROFILE_STORE})"
    )
    serve.add_argument("--config", help="configuration file (namespaces, identity rules, profiles)")
    serve.add_argument("--token-file", help="file holding the API's bearer token (default: $PROFILESTREAM_API_TOKEN)")
    serve.add_argument(
        "--pubsub-topic",
        type=_topic,
        metavar="projects/P/topics/T",
        help="serve the HTTP inlet too, publishing to this topic (connections: inlet in --config)",
    )
    serve.add_argument("--schema-dir", help="directory of user-composed schema files (for syncValidation=true)")
    limits = serve.add_argument_group("limits on each client (README: Hostile clients)")
    for flag, kind, default, help_text in _SERVE_LIMITS:
        limits.add_argument(flag, type=_positive(kind), default=default, metavar="N", help=f"{help_text} ({default:g})")
    serve.set_defaults(handler=_serve)
    return parser


def run_parser() -> argparse.ArgumentParser:
    """The ``profilestream run`` command's parser (the Flex Template's parameters are its flags)."""
    commands = next(action for action in command_parser()._actions if isinstance(action, argparse._SubParsersAction))
    return commands.choices["run"]


def _positive(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    """An argparse type: a positive ``kind``."""

    def positive(text: str) -> Any:
        value = kind(text)
        if not value > 0:
            raise ValueError(text)
        return value

    positive.__name__ = f"positive {kind.__name__}"
    return positive


def _lookup(by: str) -> Callable[[str], tuple[str, str]]:
    """An argparse type that tags a lookup with its kind."""
    return lambda asked: (by, asked)


def _add_shared(command: argparse.ArgumentParser) -> None:
    command.add_argument("--schema-dir", help="directory of user-composed schema files")
    command.add_argument("--config", help="configuration file (YAML, or TOML by its .toml suffix)")


def _registry(args: argparse.Namespace, overrides: dict | None = None):
    config = load_config(args.config, overrides)
    registry = SchemaRegistry.load(
        args.schema_dir, tenant_id=config.tenant_id, dataset_aliases=config.dataset_aliases()
    )
    return config, registry


def _run(args: argparse.Namespace, beam_args: list[str]) -> int:
    from pipelines.ingest import RunRequest, run

    config, registry = _registry(args, {"commit_interval_seconds": args.commit_interval_seconds})
    # Fail now, in one line, rather than inside a worker.
    _open_store(args.identity_store).close()
    _open_profile_store(args.profile_store).close()
    if args.runner == FLINK_RUNNER:
        _check_flink(beam_args)
    subscription = _subscription(args.source)
    if subscription is not None and args.batch:
        raise UsageError("--batch reads a replay to its end; a pubsub: source has no end")
    if subscription is not None or args.dead_letter_topic is not None:
        from transforms.pubsub import PubSubUnavailableError, check_subscription, check_topic

        try:
            if subscription is not None:
                check_subscription(subscription)
            if args.dead_letter_topic is not None:
                check_topic(args.dead_letter_topic)
        except PubSubUnavailableError as error:
            raise UsageError(str(error)) from None
    request = RunRequest(
        replay_path=None if subscription is not None else _replay_path(args.source),
        lake_dir=_writable_lake(args.lake),
        identity_store=args.identity_store,
        profile_store=args.profile_store,
        batch=args.batch,
        runner=args.runner,
        beam_args=tuple(beam_args),
        subscription=subscription,
        dead_letter_topic=args.dead_letter_topic,
    )
    stop = threading.Event()
    with _stopped_by_signals(stop):
        summary = run(request, registry, config, stop=stop)
    print(json.dumps(summary.as_json(), sort_keys=False), flush=True)
    return 0


def _check_flink(beam_args: list[str]) -> None:
    """Fails in one line when the Flink cluster does not answer or Beam's Flink job server jar is missing; Beam
    would otherwise wait on the cluster, or try to download the jar."""
    import urllib.request

    from apache_beam.options.pipeline_options import FlinkRunnerOptions, PipelineOptions

    from pipelines.flink import JOB_SERVER_ARTIFACT, flink_runner_args

    flink = PipelineOptions(flink_runner_args(beam_args)).view_as(FlinkRunnerOptions)
    if flink.flink_master not in ("[local]", "[auto]"):
        try:
            urllib.request.urlopen(f"http://{flink.flink_master}/overview", timeout=FLINK_CHECK_TIMEOUT_S).close()
        except OSError as error:
            raise UsageError(f"no Flink cluster answers at {flink.flink_master} (make flink-up): {error}") from None
    jar = flink.flink_job_server_jar
    if "://" not in jar and not Path(jar).is_file():
        raise UsageError(f"no Flink job server jar at {jar}: make flink-up fetches {JOB_SERVER_ARTIFACT} with Maven")


def _replay_path(source: str) -> str:
    if source.startswith(REPLAY_SCHEME):
        path = source.removeprefix(REPLAY_SCHEME)
        try:
            expand_replay_path(path)
        except ReplayPathError as error:
            raise UsageError(str(error)) from None
        return path
    scheme = source.partition(":")[0] if ":" in source else source
    raise UsageError(f"unknown source {scheme!r}: expected replay:PATH or pubsub:projects/P/subscriptions/S")


def _subscription(source: str) -> str | None:
    """The subscription a ``pubsub:`` source names; None for any other source."""
    if not source.startswith(PUBSUB_SCHEME):
        return None
    name = source.removeprefix(PUBSUB_SCHEME)
    if not _PUBSUB_NAME.fullmatch(name) or name.split("/")[2] != "subscriptions":
        raise UsageError(f"source {source!r}: expected pubsub:projects/PROJECT/subscriptions/SUBSCRIPTION")
    return name


def _topic(name: str) -> str:
    if not _PUBSUB_NAME.fullmatch(name) or name.split("/")[2] != "topics":
        raise argparse.ArgumentTypeError(f"{name!r}: expected projects/PROJECT/topics/TOPIC")
    return name


@contextlib.contextmanager
def _stopped_by_signals(stop: threading.Event) -> Iterator[None]:
    """SIGINT and SIGTERM set ``stop`` (the run then flushes and ends); a second one interrupts at once."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_signal(number: int, _frame: Any) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        print(
            f"profilestream: {signal.Signals(number).name}: stopping the read and flushing (again to abandon)",
            file=sys.stderr,
            flush=True,
        )

    before = {number: signal.signal(number, on_signal) for number in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for number, handler in before.items():
            signal.signal(number, handler)


def _writable_lake(path: str) -> str:
    """The lake ``--lake`` names: a local folder made if need be and writable, or a location on an object store
    Beam reaches (``gs://bucket/path``); anything else is a usage error."""
    from apache_beam.io.filesystems import FileSystems

    from lake.folders import LakeFolderError, refuse_linked_folders
    from transforms.lake import is_local

    if is_local(path):
        directory = _writable_directory(path)
        try:
            refuse_linked_folders(directory)
        except LakeFolderError as error:
            raise UsageError(str(error)) from None
        return directory
    try:
        FileSystems.match([FileSystems.join(path, "*")])
    except Exception as error:  # Beam's filesystems raise whatever their clients raise
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UsageError(f"lake {path} cannot be reached: {reason}") from None
    return path


def _writable_directory(path: str) -> str:
    directory = Path(path)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UsageError(f"lake directory {path} cannot be created: {error.strerror}") from None
    if not os.access(directory, os.W_OK | os.X_OK):
        raise UsageError(f"lake directory {path} is not writable")
    return str(directory)


def _open_store(url: str, *, read_only: bool = False):
    """The identity store a URL names, opened; a bad URL or an unreachable store is a usage error, and so is, for a
    lookup (``read_only``), one that does not exist or is of another kind."""
    from stores.opening import open_identity_store

    return _opened(functools.partial(open_identity_store, read_only=read_only), url, "identity store")


def _open_profile_store(url: str, *, read_only: bool = False):
    """The profile store a URL names, opened; a bad URL or an unreachable store is a usage error, and so is, for a
    lookup (``read_only``), one that does not exist or is of another kind."""
    from stores.opening import open_profile_store

    return _opened(functools.partial(open_profile_store, read_only=read_only), url, "profile store")


def _opened(open_store: Callable[[str], Any], url: str, kind: str) -> Any:
    try:
        return open_store(url)
    except ValueError as error:
        message = str(error)
        raise UsageError(message if kind in message else f"{kind}: {message}") from None


def _identity_get(args: argparse.Namespace, _beam_args: list[str]) -> int:
    from service.identity_lookup import lookup_identity

    settings = load_config(args.config).stitch_settings()
    for asked in args.identity:
        namespace, separator, _ = asked.partition(":")
        if not separator or not namespace:
            raise UsageError(f"--identity {asked!r}: expected NAMESPACE:ID")
    store = _open_store(args.store, read_only=True)
    all_known = True
    try:
        for asked in args.identity:
            answer = lookup_identity(asked, store, settings)
            all_known &= answer["person_id"] is not None
            print(json.dumps(answer, ensure_ascii=False), flush=True)
    finally:
        store.close()
    return 0 if all_known else 1


def _profile_get(args: argparse.Namespace, _beam_args: list[str]) -> int:
    from service.profile_lookup import MalformedLookupError, lookup_key, lookup_profile

    if not args.lookups:
        raise UsageError("nothing to look up: give --identity NAMESPACE:ID or --person ID")
    config = load_config(args.config)
    settings = config.stitch_settings()
    for by, asked in args.lookups:
        try:
            lookup_key(asked, settings, by=by)
        except MalformedLookupError as error:
            raise UsageError(f"--{by} {error}") from None
    all_known = True
    with _open_profile_store(args.store, read_only=True) as store:
        for by, asked in args.lookups:
            answer = lookup_profile(asked, store, settings, by=by, event_ttl_us=config.event_ttl_us())
            all_known &= answer["person_id"] is not None
            print(json.dumps(answer, ensure_ascii=False), flush=True)
    return 0 if all_known else 1


def _serve(args: argparse.Namespace, _beam_args: list[str]) -> int:
    from service.api import ServerLimits, api_token, create_app, listen, serve
    from service.inlet import AuthFailureLimit

    config = load_config(args.config)
    settings = config.stitch_settings()
    with contextlib.ExitStack() as stack:
        inlet = stack.enter_context(contextlib.closing(_inlet(args))) if args.pubsub_topic is not None else None
        try:
            token = api_token(args.token_file, os.environ)
            listener = stack.enter_context(listen(args.host, args.port))
        except ValueError as error:
            raise UsageError(str(error)) from None
        store = stack.enter_context(_open_profile_store(args.profile_store))
        auth_failures = AuthFailureLimit(args.auth_failures, args.auth_failure_window)
        app = create_app(
            store, settings, token, inlet=inlet, event_ttl_us=config.event_ttl_us(), auth_failures=auth_failures
        )
        limits = ServerLimits(
            header_timeout_s=args.header_timeout,
            body_timeout_s=args.body_timeout,
            keep_alive_timeout_s=args.keep_alive_timeout,
            max_connections=args.max_connections,
        )
        serve(app, listener, limits)
    return 0


def _inlet(args: argparse.Namespace):
    """The HTTP inlet of ``serve --pubsub-topic``; a bad connection, missing credentials or a topic that does not
    exist or cannot be reached are usage errors."""
    from google.auth.exceptions import DefaultCredentialsError

    from service.inlet import Inlet, Judge, PubSubPublisher

    config, registry = _registry(args)
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
    from transforms.pubsub import PubSubUnavailableError, check_topic

    try:
        check_topic(args.pubsub_topic)
    except PubSubUnavailableError as error:
        inlet.close()
        raise UsageError(f"--pubsub-topic {error}") from None
    return inlet


def _validate(args: argparse.Namespace, _beam_args: list[str]) -> int:
    from pipelines.validate_files import validate_file

    config, registry = _registry(args)
    if args.conformance and args.schema is None:
        raise UsageError("--conformance needs --schema ID (the XDM component to check against)")
    if args.conformance and args.schema not in library():
        raise UsageError(f"--schema {args.schema}: not an XDM component id")
    for path in args.files:
        _check_readable_file(path)
    policy = config.validation_policy()
    all_valid = True
    for path in args.files:
        verdicts = 0
        try:
            for verdict in validate_file(
                path,
                registry,
                schema_id=args.schema,
                conformance=args.conformance,
                policy=policy,
                max_message_bytes=config.max_message_bytes,
            ):
                verdicts += 1
                all_valid &= verdict.valid
                print(json.dumps(verdict.as_json(), ensure_ascii=False), flush=True)
        except (OSError, UnknownComponentError) as error:
            raise UsageError(f"{_shown(path)}: {error}") from None
        if not verdicts:
            # Nothing was checked, so nothing is valid: an empty file is most often the wrong file.
            print(f"profilestream: {_shown(path)}: holds no message to validate", file=sys.stderr)
            all_valid = False
    return 0 if all_valid else 1


def _check_readable_file(path: str) -> None:
    """A usage error in one line unless ``path`` names a regular file."""
    try:
        mode = os.stat(path).st_mode
    except OSError as error:
        reason = "no such file" if error.errno == errno.ENOENT else (error.strerror or "cannot be read").lower()
        raise UsageError(f"{_shown(path)}: {reason}") from None
    if stat.S_ISDIR(mode):
        raise UsageError(f"{_shown(path)}: is a directory, not a file")
    if not stat.S_ISREG(mode):
        raise UsageError(f"{_shown(path)}: not a regular file")


def _shown(path: str, limit: int = 120) -> str:
    """A path as an error line shows it: whole, or its start and length when it is longer than ``limit``."""
    return path if len(path) <= limit else f"{path[:limit]}… ({len(path):,} characters)"


if __name__ == "__main__":
    sys.exit(main())
