"""Plain JSON Schema conformance of an instance against any XDM component, as the XDM library checks its examples.

This is ``profilestream validate --conformance``: no ingestion rules, no runtime names, just draft-06 validation of
the instance against exactly the component (class, field group or data type) named by id, with every ``$ref``
resolved inside the vendored library.
"""

from __future__ import annotations

import functools
from typing import Any

from jsonschema import Draft6Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT6

from core.records import RecordError
from schemas.components import component, library
from schemas.names import pointer_token


@functools.cache
def conformance_registry() -> Registry:
    """Every library component as a ``referencing`` resource, so ``$ref`` between components resolves."""
    return Registry().with_resources(
        (component_id, Resource(document, specification=DRAFT6)) for component_id, document in library().items()
    )


@functools.cache
def _validator(component_id: str) -> Draft6Validator:
    return Draft6Validator(component(component_id), registry=conformance_registry())


def conformance_errors(instance: Any, component_id: str) -> list[RecordError]:
    """Every draft-06 violation of ``instance`` against the component, ordered by where it is in the instance.

    The code is ``SCHEMA.`` and the JSON Schema keyword that failed (``SCHEMA.REQUIRED``, ``SCHEMA.TYPE``, ...).
    Raises :class:`~schemas.components.UnknownComponentError` for an id outside the library.
    """
    errors = sorted(_validator(component_id).iter_errors(instance), key=_path_order)
    return [
        RecordError(
            code=f"SCHEMA.{str(error.validator).upper()}",
            path="".join(f"/{pointer_token(str(token))}" for token in error.absolute_path),
            message=error.message,
        )
        for error in errors
    ]


def _path_order(error) -> list[tuple[int, int | str]]:
    # Array positions sort as numbers (2 before 10), and before names at the same depth.
    return [(0, token) if isinstance(token, int) else (1, token) for token in error.absolute_path]
