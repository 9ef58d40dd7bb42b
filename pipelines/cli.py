"""The ``profilestream`` command line (console script from setup.py).

    profilestream run --source (replay:PATH | pubsub:projects/P/subscriptions/S) [--batch] [--lake DIR]
                      [--dead-letter-topic projects/P/topics/T] [--schema-dir DIR] [--config FILE]
                      [--runner NAME] [--commit-interval SECONDS] [--privacy-store URL] [--key-file FILE]
                      [--metrics-file FILE] [Beam options]
    profilestream validate [--schema-dir DIR] [--schema ID] [--conformance] [--config FILE] FILE...
    profilestream profile get [--store URL] [--config FILE] (--identity NAMESPACE:ID | --person ID)...
    profilestream loadgen --target (pubsub:projects/P/topics/T | http://HOST:PORT/collection/[batch/]ID)
                          [--rate N] (--duration S | --count N) [traffic shape] [--send-log FILE]
    profilestream serve [--host HOST] [--port PORT] [--profile-store URL] [--config FILE] [--token-file FILE]
                        [--pubsub-topic projects/P/topics/T] [--schema-dir DIR] [limits on each client]
                        [--identity-store URL] [--metrics-file FILE]
                        [--privacy-token-file FILE --key-file FILE] [privacy job stores]

Every usage or input error prints one line on stderr and exits 2; no traceback reaches the user. ``run`` prints its
summary as the last line on stdout; ``validate`` prints a JSON line per entity and exits 0 when all are valid, 1 when
any is not; a ``pubsub:`` run reads until SIGINT or SIGTERM, then flushes what it holds and prints its summary
(a second signal abandons the flush); ``profile get`` prints a JSON line per lookup and exits 1 when any is unknown.
``serve`` runs the HTTP Profile Access API (:mod:`service.api`), and with ``--pubsub-topic`` the HTTP inlet
(:mod:`service.inlet`), until interrupted.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from pipelines.config import ConfigError
from pipelines.one_line_parser import USAGE_ERROR
from pipelines.usage import PUBSUB_NAME, UsageError
from privacy.jobs import REGULATIONS
from schemas.registry import SchemaFileError

DEFAULT_LAKE = "data/lake"
DEFAULT_IDENTITY_STORE = "sqlite:///data/identity.sqlite"
DEFAULT_PROFILE_STORE = "sqlite:///data/profiles.sqlite"
DEFAULT_PRIVACY_STORE = "sqlite:///data/privacy.sqlite"
DEFAULT_PRIVACY_OUT = "data/privacy/access"
DEFAULT_API_HOST = "127.0.0.1"  # loopback: the API serves personal data, so reaching it from elsewhere is a choice
DEFAULT_API_PORT = 8080
# Commands that development tools add to the CLI (tools/pyproject.toml), so the pipeline layer does not depend on them.
TOOL_COMMANDS = "profilestream.commands"


# serve's limits on what one client may hold of the server: flag, type, default, what it is.
_SERVE_LIMITS = [
    ("--header-timeout", float, 10.0, "seconds a request's headers may take"),
    ("--body-timeout", float, 30.0, "seconds a request's body may take"),
    ("--keep-alive-timeout", float, 5.0, "seconds an idle connection stays open"),
    ("--max-connections", int, 4096, "connections served at once, then 503"),
    ("--auth-failures", int, 10, "failed authentications per address, then 429"),
    ("--auth-failure-window", float, 60.0, "seconds in which they are counted"),
]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:
        raise UsageError(message)


def main(argv: Sequence[str] | None = None) -> int:
    parser = command_parser()
    try:
        args, beam_args = parser.parse_known_args(argv)
        if args.command != "run" and beam_args:
            raise UsageError(f"unrecognized arguments: {' '.join(beam_args)}")
        # Each command's module is imported only when it runs: ``run`` alone loads Beam.
        module, _, function = args.handler.partition(":")
        return getattr(importlib.import_module(module), function)(args, beam_args)
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
    run.add_argument(
        "--workers",
        type=_positive(int),
        metavar="N",
        help="worker processes of a --batch run on the local runner (default: one per core)",
    )
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
    run.add_argument(
        "--privacy-store",
        default=DEFAULT_PRIVACY_STORE,
        help=f"whose suppression list the run drops messages by, if any (default {DEFAULT_PRIVACY_STORE})",
    )
    run.add_argument(
        "--key-file", help="privacy key, when the suppression list is not empty (default: $PROFILESTREAM_PRIVACY_KEY)"
    )
    run.add_argument(
        "--metrics-file", help="write the run summary here as the run goes, for serve's console (serve --metrics-file)"
    )
    _add_shared(run)
    run.set_defaults(handler="pipelines.run_command:run_command")

    validate = commands.add_parser("validate", help="validate message files against their schemas")
    validate.add_argument("files", nargs="+", metavar="FILE")
    validate.add_argument("--schema", help="schema id of bare XDM entities (with --conformance: any XDM component)")
    validate.add_argument("--conformance", action="store_true", help="plain JSON Schema conformance to --schema")
    _add_shared(validate)
    validate.set_defaults(handler="pipelines.validate_command:validate_command")

    identity = commands.add_parser("identity", help="look up the identity graph")
    identity_commands = identity.add_subparsers(dest="identity_command", required=True, parser_class=_Parser)
    identity_get = identity_commands.add_parser("get", help="the person and identities of NAMESPACE:ID")
    identity_get.add_argument("--store", default=DEFAULT_IDENTITY_STORE, help="identity store URL")
    identity_get.add_argument("--identity", action="append", required=True, metavar="NAMESPACE:ID")
    identity_get.add_argument("--config", help="configuration file (namespaces, identity rules, profiles)")
    identity_get.set_defaults(handler="pipelines.lookup_commands:identity_get")

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
    profile_get.set_defaults(handler="pipelines.lookup_commands:profile_get")

    privacy = commands.add_parser("privacy", help="erase or export a person by any identity (GDPR/CCPA requests)")
    privacy_commands = privacy.add_subparsers(dest="privacy_command", required=True, parser_class=_Parser)
    for action, help_text in (
        ("delete", "erase the person from the stores and the lake"),
        ("access", "export everything held about the person into --out"),
    ):
        job = privacy_commands.add_parser(action, help=help_text)
        job.add_argument("--identity", action="append", required=True, metavar="NAMESPACE:ID", help="repeatable")
        job.add_argument("--regulation", choices=REGULATIONS, default="gdpr", help="gdpr (default) or ccpa")
        job.add_argument("--dry-run", action="store_true", help="say what the job would touch and change nothing")
        job.add_argument(
            "--profile-store",
            default=DEFAULT_PROFILE_STORE,
            help=f"profile store URL (default {DEFAULT_PROFILE_STORE})",
        )
        _add_privacy_job_flags(job)
        job.add_argument("--out", help="where an access job writes (default data/privacy/access/JOB_ID)")
        job.add_argument("--config", help="configuration file (namespaces, identity rules, profiles)")
        if action == "delete":
            job.add_argument("--suppress", action="store_true", help="drop the person's later messages at ingestion")
        job.set_defaults(handler="pipelines.privacy_command:privacy_command")

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
    serve.add_argument(
        "--metrics-file", help="the console's pipeline figures: the file a run writes with run --metrics-file"
    )
    limits = serve.add_argument_group("limits on each client (README: Hostile clients)")
    for flag, kind, default, help_text in _SERVE_LIMITS:
        limits.add_argument(flag, type=_positive(kind), default=default, metavar="N", help=f"{help_text} ({default:g})")
    jobs = serve.add_argument_group("privacy jobs (README: Privacy jobs), served only with a privacy token")
    jobs.add_argument(
        "--privacy-token-file", help="file holding the privacy routes' token (default: $PROFILESTREAM_PRIVACY_TOKEN)"
    )
    _add_privacy_job_flags(jobs)
    jobs.add_argument(
        "--privacy-out",
        default=DEFAULT_PRIVACY_OUT,
        help=f"where access jobs write, each under its job id (default {DEFAULT_PRIVACY_OUT})",
    )
    serve.set_defaults(handler="pipelines.serve_command:serve_command")
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


def _add_privacy_job_flags(command: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """What privacy jobs work on, the same for ``privacy`` and ``serve``: the lake, the identity store, the privacy
    store and the key."""
    command.add_argument("--lake", default=DEFAULT_LAKE, help=f"lake directory (default {DEFAULT_LAKE})")
    command.add_argument(
        "--identity-store",
        default=DEFAULT_IDENTITY_STORE,
        help=f"identity store URL (default {DEFAULT_IDENTITY_STORE})",
    )
    command.add_argument(
        "--privacy-store",
        default=DEFAULT_PRIVACY_STORE,
        help=f"where jobs and the suppression list are kept (default {DEFAULT_PRIVACY_STORE})",
    )
    command.add_argument("--key-file", help="file holding the privacy key (default: $PROFILESTREAM_PRIVACY_KEY)")


def _add_shared(command: argparse.ArgumentParser) -> None:
    command.add_argument("--schema-dir", help="directory of user-composed schema files")
    command.add_argument("--config", help="configuration file (YAML, or TOML by its .toml suffix)")


def _topic(name: str) -> str:
    if not PUBSUB_NAME.fullmatch(name) or name.split("/")[2] != "topics":
        raise argparse.ArgumentTypeError(f"{name!r}: expected projects/PROJECT/topics/TOPIC")
    return name


if __name__ == "__main__":
    sys.exit(main())
