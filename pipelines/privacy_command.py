"""``profilestream privacy delete|access``: one privacy job, run in the foreground, its receipt printed as a JSON line.

The job is kept in the privacy job store (``--privacy-store``, ``sqlite:///data/privacy.sqlite`` by default) like the
jobs ``serve`` runs, with the identities only as keyed hashes; the key comes from ``--key-file`` or
``PROFILESTREAM_PRIVACY_KEY`` and the command refuses to run without one. Exit 0 when the job is done, 1 when it
failed (the receipt says so, without naming an identity), 2 for bad input.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from pipelines.config import load_config
from pipelines.usage import UsageError
from privacy.jobs import DONE, JobRequest, JobStore, run_queued
from privacy.keys import privacy_key
from privacy.runner import PrivacySettings, normalised_identities, privacy_store_path, run_job
from stores.opening import IDENTITY_STORE, PROFILE_STORE, parse_store_url


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
        key = privacy_key(args.key_file, os.environ)
        parse_store_url(args.identity_store, IDENTITY_STORE)
        parse_store_url(args.profile_store, PROFILE_STORE)
        store = JobStore(privacy_store_path(args.privacy_store))
    except ValueError as error:
        raise UsageError(str(error)) from None
    settings = PrivacySettings(
        lake_dir=args.lake,
        identity_store=args.identity_store,
        profile_store=args.profile_store,
        privacy_store=args.privacy_store,
        key=key,
        stitch=stitch,
    )
    try:
        job_id = store.create(request, normalised, key)
        receipt = run_queued(store, job_id, request, lambda job, asked: run_job(job, asked, settings, args.out))
    finally:
        store.close()
    print(json.dumps(receipt, sort_keys=True), flush=True)
    if receipt["status"] != DONE:
        print(f"profilestream: privacy {request.action} failed: {receipt['error']}", file=sys.stderr)
        return 1
    return 0
