"""The schema registry as the stages hold it (transforms/shared_registry.py): cheap to pickle, composed once per
worker process, the very registry given in the process that built the pipeline."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys

import pytest

from schemas.registry import SchemaRegistry
from transforms.shared_registry import SharedRegistry, shared_registry

# Unpickles two copies of a handle (the DoFns of two stages, say) in a fresh process and prints how many times the
# registry was composed, whether both copies give the same object, and its datasets.
WORKER = """
import json, pickle, sys
from schemas.registry import SchemaRegistry
composed = []
compose = SchemaRegistry.from_definition
SchemaRegistry.from_definition = classmethod(lambda cls, definition: composed.append(1) or compose(definition))
shipped = sys.stdin.buffer.read()
first, second = pickle.loads(shipped), pickle.loads(shipped)
registry = first.load()
print(json.dumps([len(composed), second.load() is registry, sorted(registry.datasets)]))
"""


@pytest.fixture(scope="module")
def registry() -> SchemaRegistry:
    return SchemaRegistry.load()


def test_a_handle_pickles_as_the_registry_s_definition_not_its_composed_schemas(registry):
    composed = SchemaRegistry(registry.schemas, registry.tenant_key)
    assert len(pickle.dumps(SharedRegistry(registry))) * 10 < len(pickle.dumps(SharedRegistry(composed)))


def test_in_the_process_that_built_the_pipeline_every_copy_gives_the_registry_it_was_given(registry):
    handle = SharedRegistry(registry)
    copies = [pickle.loads(pickle.dumps(handle)) for _ in range(2)]
    assert [copy.load() for copy in copies] == [registry, registry]
    assert all(copy.load() is registry for copy in copies)


def test_a_worker_process_composes_the_registry_once_for_every_copy(registry):
    shipped = pickle.dumps(SharedRegistry(registry))
    run = subprocess.run([sys.executable, "-c", WORKER], input=shipped, capture_output=True, timeout=120, check=True)
    assert json.loads(run.stdout.decode().splitlines()[-1]) == [1, True, sorted(registry.datasets)]


def test_a_registry_without_a_definition_travels_whole(registry):
    composed = SchemaRegistry(registry.schemas, registry.tenant_key)
    shipped = pickle.loads(pickle.dumps(SharedRegistry(composed)))
    assert sorted(shipped.load().datasets) == sorted(registry.datasets)


def test_a_handle_given_where_a_registry_is_taken_is_used_as_it_is(registry):
    handle = SharedRegistry(registry)
    assert shared_registry(handle) is handle
    assert shared_registry(registry).load() is registry
