"""``profilestream privacy delete|access``: one privacy job, run in the foreground, its receipt printed as a JSON line.

The job is kept in the privacy job store (``--privacy-store``, ``sqlite:///data/privacy.sqlite`` by default) like the
jobs ``serve`` runs, with the identities only as keyed hashes; the key comes from ``--key-file`` or
``PROFILESTREAM_PRIVACY_KEY`` and the command refuses to run without one. Exit 0 when the job is done, 1 when it
failed (the receipt says so, without naming an identity), 2 for bad input.
"""

from __future__ import annotations

import argparse
import json
import sys

from pipelines.config import load_config
from pipelines.usage import UsageError, privacy_settings
from privacy.jobs import DONE, JobRequest, JobStore, privacy_store_path, run_queued
from privacy.runner import normalised_identities, run_job


def privacy_command(args: argparse.Namespace, _beam_args: list[str]) -> int:
    """``profilestream privacy delete|access``; see the module docstring."""
    stitch = load_config(args.config).stitch_settings()
    try:
        request = JobRequest(
            regulation=args.regulation,
            action=args.privacy_command,
            identities=tuple(JobRequest.parse_identity(text) for text in args.identity),
            dry_run=args.dry_run,
            suppress=getattr(args, "suppress", False),
        )
        normalised = normalised_identities(request, stitch)
        settings = privacy_settings(args, stitch)
        store = JobStore(privacy_store_path(settings.privacy_store))
    except ValueError as error:
        raise UsageError(str(error)) from None
    try:
        job_id = store.create(request, normalised, settings.key)
        receipt = run_queued(store, job_id, request, lambda job, asked: run_job(job, asked, settings, args.out))
    finally:
        store.close()
    print(json.dumps(receipt, sort_keys=True), flush=True)
    if receipt["status"] != DONE:
        print(f"profilestream: privacy {request.action} failed: {receipt['error']}", file=sys.stderr)
        return 1
    return 0
