"""The errors every store raises, whatever its kind or backend.

A store that a well-formed URL names but that cannot be reached or opened raises :class:`StoreUnavailableError`; a
malformed URL raises a plain :class:`ValueError` (:mod:`stores.opening`). Both messages are one line.
"""

from __future__ import annotations


class StoreUnavailableError(ValueError):
    """The store a URL names cannot be reached or opened; the message is one line."""
