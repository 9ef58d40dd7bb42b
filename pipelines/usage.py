"""What the ``profilestream`` commands share: the one-line usage error, and the configuration, registry and stores
opened from their flags, each failure a usage error."""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import re
from collections.abc import Callable
from typing import Any

from identity.stitching import StitchSettings
from pipelines.config import load_config
from privacy.jobs import PrivacySettings, privacy_store_path
from privacy.keys import privacy_key
from schemas.registry import SchemaRegistry
from stores import opening
from stores.identity import IdentityStore
from stores.profiles import ProfileStore

# Pub/Sub resource names: projects/PROJECT/(topics|subscriptions)/NAME, NAME 3-255 characters from Google's set.
PUBSUB_NAME = re.compile(r"projects/[a-z][a-z0-9.:-]{1,61}[a-z0-9]/(topics|subscriptions)/[A-Za-z][\w.~+%-]{2,254}")


class UsageError(Exception):
    """Bad command-line input; its message is printed as one line."""


def config_and_registry(args: argparse.Namespace, overrides: dict | None = None):
    """The configuration ``--config`` names (with ``overrides``) and the schema registry ``--schema-dir`` adds to."""
    config = load_config(args.config, overrides)
    registry = SchemaRegistry.load(
        args.schema_dir, tenant_id=config.tenant_id, dataset_aliases=config.dataset_aliases()
    )
    return config, registry


def opened_identity_store(url: str, *, read_only: bool = False) -> IdentityStore:
    """The identity store a URL names, opened; a bad URL or an unreachable store is a usage error, and so is, for a
    lookup (``read_only``), one that does not exist or is of another kind."""
    return _opened(functools.partial(opening.open_identity_store, read_only=read_only), url, "identity store")


def opened_profile_store(url: str, *, read_only: bool = False) -> ProfileStore:
    """The profile store a URL names, opened; a bad URL or an unreachable store is a usage error, and so is, for a
    lookup (``read_only``), one that does not exist or is of another kind."""
    return _opened(functools.partial(opening.open_profile_store, read_only=read_only), url, "profile store")


def _opened(open_store: Callable[[str], Any], url: str, kind: str) -> Any:
    try:
        return open_store(url)
    except ValueError as error:
        message = str(error)
        raise UsageError(message if kind in message else f"{kind}: {message}") from None


def privacy_settings(args: argparse.Namespace, stitch: StitchSettings) -> PrivacySettings:
    """What privacy jobs work on, from the flags ``privacy`` and ``serve`` share: the lake, the stores (URLs checked),
    the privacy store and the key (``--key-file`` or the environment). A missing key or a bad URL is a ValueError of
    one line."""
    privacy_store_path(args.privacy_store)
    opening.parse_store_url(args.identity_store, opening.IDENTITY_STORE)
    opening.parse_store_url(args.profile_store, opening.PROFILE_STORE)
    settings = PrivacySettings(
        lake_dir=args.lake,
        identity_store=args.identity_store,
        profile_store=args.profile_store,
        privacy_store=args.privacy_store,
        key=privacy_key(args.key_file, os.environ),
        stitch=stitch,
    )
    out = getattr(args, "privacy_out", None)
    return settings if out is None else dataclasses.replace(settings, access_out=out)


def shown(path: str, limit: int = 120) -> str:
    """A path as an error line shows it: whole, or its start and length when it is longer than ``limit``."""
    return path if len(path) <= limit else f"{path[:limit]}… ({len(path):,} characters)"
