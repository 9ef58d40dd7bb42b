"""The schema registry as the stages hold it: pickled as its definition, loaded once per worker process.

:class:`SharedRegistry` wraps a :class:`~schemas.registry.SchemaRegistry` that :meth:`~SchemaRegistry.load` built. It
pickles as the registry's :attr:`~schemas.registry.SchemaRegistry.definition` (a short JSON text) and a
:class:`apache_beam.utils.shared.Shared` handle; `SharedRegistry.load` gives the registry, composed again from
its definition the first time a process asks and shared by every DoFn holding the same handle (in the process that
built the pipeline, the registry it was given). A registry made from composed schemas has no definition, and pickles
whole.
"""

from __future__ import annotations

from typing import Any

from apache_beam.utils import shared

from schemas.registry import SchemaRegistry


class SharedRegistry:
    """A handle on one registry for every stage of a pipeline; see the module docstring."""

    def __init__(self, registry: SchemaRegistry) -> None:
        self._definition = registry.definition
        self._shared = shared.Shared()
        # Held so that this process's DoFns find the very registry they were given, and do not compose it again.
        self._registry: SchemaRegistry | None = self._shared.acquire(lambda: registry)

    def load(self) -> SchemaRegistry:
        """The registry, composed from its definition once per process."""
        if self._registry is None:
            definition = self._definition
            self._registry = self._shared.acquire(lambda: SchemaRegistry.from_definition(definition))
        return self._registry

    def avro_schema_for(self, schema_id: str) -> dict | None:
        """:meth:`SchemaRegistry.avro_schema_for` of the registry, for :class:`transforms.decode.Decode`."""
        return self.load().avro_schema_for(schema_id)

    def __getstate__(self) -> dict[str, Any]:
        if self._definition is None:
            return self.__dict__
        return {**self.__dict__, "_registry": None}


def shared_registry(registry: SchemaRegistry | SharedRegistry) -> SharedRegistry:
    """``registry`` as a handle: itself when it is one already (the pipeline builds one for all its stages)."""
    return registry if isinstance(registry, SharedRegistry) else SharedRegistry(registry)
