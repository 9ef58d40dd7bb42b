"""Keyed hashes of identities: what privacy receipts and the suppression list hold instead of the identities.

A hash is HMAC-SHA-256 of the identity's normal form ``"<NAMESPACE>:<id>"`` (as stitching stores it) under the
deployment's privacy key, in hex. Without the key, a hash cannot be tied to an identity by trying likely e-mail
addresses; with it, the same identity always gives the same hash, so a receipt proves which identities a job covered
when shown the identities, and a suppressed identity is recognised in later messages.

The key comes from ``--key-file FILE`` (which wins) or :data:`PRIVACY_KEY_ENV`; :func:`privacy_key` refuses, in one
line, to go on without one.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping
from pathlib import Path

from identity.model import Identity

PRIVACY_KEY_ENV = "PROFILESTREAM_PRIVACY_KEY"
# Fewer bytes than this are guessable: HMAC's key should be as long as its hash.
MIN_KEY_BYTES = 16


def privacy_key(key_file: str | None, environ: Mapping[str, str]) -> bytes:
    """The privacy key from ``key_file`` or :data:`PRIVACY_KEY_ENV` (surrounding white space stripped); raises a
    one-line :class:`ValueError` when there is none or it is too short."""
    if key_file is not None:
        source = f"--key-file {key_file}"
        try:
            key = Path(key_file).read_bytes().strip()
        except OSError as error:
            raise ValueError(f"{source}: {error.strerror or error}") from None
    else:
        source = PRIVACY_KEY_ENV
        key = environ.get(PRIVACY_KEY_ENV, "").strip().encode()
        if not key:
            raise ValueError(
                f"privacy jobs keep keyed hashes of identities and need a key: --key-file FILE or {source}"
            )
    if len(key) < MIN_KEY_BYTES:
        raise ValueError(f"{source}: a privacy key has at least {MIN_KEY_BYTES} bytes")
    return key


def identity_hash(key: bytes, identity: Identity) -> str:
    """The keyed hash of one normalised identity, in hex."""
    return hmac.new(key, str(identity).encode(), hashlib.sha256).hexdigest()


def identity_hashes(key: bytes, identities: Iterable[Identity]) -> list[str]:
    """The keyed hashes of these identities, sorted (a receipt's order tells nothing)."""
    return sorted({identity_hash(key, identity) for identity in identities})
