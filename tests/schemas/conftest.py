import pytest

from schemas.registry import SchemaRegistry


@pytest.fixture(scope="session")
def registry() -> SchemaRegistry:
    """The built-in schemas only."""
    return SchemaRegistry.load()
