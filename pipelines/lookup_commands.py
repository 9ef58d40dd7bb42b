"""``profilestream identity get`` and ``profile get``: lookups that open their store read-only and change nothing."""

from __future__ import annotations

import argparse
import json

from pipelines.config import load_config
from pipelines.usage import UsageError, opened_identity_store, opened_profile_store
from service.identity_lookup import lookup_identity
from service.profile_lookup import MalformedLookupError, lookup_key, lookup_profile


def identity_get(args: argparse.Namespace, _beam_args: list[str]) -> int:
    """``profilestream identity get``: a JSON line per identity asked; exit 1 when any is unknown."""
    settings = load_config(args.config).stitch_settings()
    for asked in args.identity:
        namespace, separator, _ = asked.partition(":")
        if not separator or not namespace:
            raise UsageError(f"--identity {asked!r}: expected NAMESPACE:ID")
    store = opened_identity_store(args.store, read_only=True)
    all_known = True
    try:
        for asked in args.identity:
            answer = lookup_identity(asked, store, settings)
            all_known &= answer["person_id"] is not None
            print(json.dumps(answer, ensure_ascii=False), flush=True)
    finally:
        store.close()
    return 0 if all_known else 1


def profile_get(args: argparse.Namespace, _beam_args: list[str]) -> int:
    """``profilestream profile get``: a JSON line per lookup, in the order asked; exit 1 when any is unknown."""
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
    with opened_profile_store(args.store, read_only=True) as store:
        for by, asked in args.lookups:
            answer = lookup_profile(asked, store, settings, by=by, event_ttl_us=config.event_ttl_us())
            all_known &= answer["person_id"] is not None
            print(json.dumps(answer, ensure_ascii=False), flush=True)
    return 0 if all_known else 1
