"""``profilestream validate FILE...``: every message of each file judged as the pipeline would, without Beam."""

from __future__ import annotations

import argparse
import errno
import json
import os
import stat
import sys

from pipelines.usage import UsageError, config_and_registry, shown
from pipelines.validate_files import validate_file
from schemas.components import UnknownComponentError, library


def validate_command(args: argparse.Namespace, _beam_args: list[str]) -> int:
    """``profilestream validate``: a JSON line per entity; exit 0 when all are valid, 1 when any is not."""
    config, registry = config_and_registry(args)
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
            raise UsageError(f"{shown(path)}: {error}") from None
        if not verdicts:
            # Nothing was checked, so nothing is valid: an empty file is most often the wrong file.
            print(f"profilestream: {shown(path)}: holds no message to validate", file=sys.stderr)
            all_valid = False
    return 0 if all_valid else 1


def _check_readable_file(path: str) -> None:
    """A usage error in one line unless ``path`` names a regular file."""
    try:
        mode = os.stat(path).st_mode
    except OSError as error:
        reason = "no such file" if error.errno == errno.ENOENT else (error.strerror or "cannot be read").lower()
        raise UsageError(f"{shown(path)}: {reason}") from None
    if stat.S_ISDIR(mode):
        raise UsageError(f"{shown(path)}: is a directory, not a file")
    if not stat.S_ISREG(mode):
        raise UsageError(f"{shown(path)}: not a regular file")
