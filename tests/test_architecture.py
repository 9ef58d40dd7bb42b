"""The import rules of the layout, checked by reading every import of the code (at module level or in a function).

- Each package imports only from the packages below it (:data:`MAY_IMPORT`): ``core`` is the ground floor, then
  ``schemas``, the domain packages, ``stores`` and ``lake``, then the Beam stages (``transforms``) and the HTTP
  services (``service``), then the pipeline layer (``pipelines``), and the development tools (``tools``) on top.
- Nothing the workers run imports ``tools``: only ``tools`` itself (and the tests) may.
- Beam stays in the stages: below ``transforms`` and in ``service`` nothing imports ``apache_beam``, and in
  ``transforms`` only the modules of :data:`BEAM_STAGES` do (a new stage module joins the list on purpose).
- No import cycle between modules.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
MAY_IMPORT = {
    "core": set(),
    "schemas": {"core"},
    "messages": {"core", "schemas"},
    "identity": {"core", "schemas"},
    "profiles": {"core", "schemas", "identity"},
    "lake": {"core", "schemas", "identity"},
    "stores": {"core", "schemas", "identity", "profiles"},
    "privacy": {"core", "schemas", "messages", "identity", "profiles", "stores", "lake"},
    "transforms": {"core", "schemas", "messages", "identity", "profiles", "stores", "lake", "privacy"},
    "service": {"core", "schemas", "messages", "identity", "profiles", "stores", "lake", "privacy"},
    "pipelines": {
        "core",
        "schemas",
        "messages",
        "identity",
        "profiles",
        "stores",
        "lake",
        "privacy",
        "transforms",
        "service",
    },
}
MAY_IMPORT["tools"] = {*MAY_IMPORT["pipelines"], "pipelines"}
PACKAGES = tuple(MAY_IMPORT)
BEAM_FREE = ("core", "schemas", "messages", "identity", "profiles", "lake", "stores", "privacy", "service")
BEAM_STAGES = frozenset(
    {
        "bundle_batches",
        "coders",
        "dead_letter",
        "decode",
        "lake",
        "merge_profiles",
        "metrics",
        "pubsub",
        "pubsub_source",
        "replay",
        "shared_registry",
        "stitch",
        "validate",
    }
)


def imported(path: Path) -> set[str]:
    """Every module ``path`` imports, by its full dotted name (relative imports resolved)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            names |= {f"{base}.{alias.name}" for alias in node.names} if base in PACKAGES else {base}
    return names


def modules(*packages: str) -> list[Path]:
    return sorted(path for package in packages for path in (ROOT / package).glob("*.py"))


def name_of(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts)


def top(name: str) -> str:
    return name.split(".")[0]


@functools.cache
def project_graph() -> dict[str, set[str]]:
    """Each project module and the project modules it imports."""
    known = {name_of(path) for path in modules(*PACKAGES)}
    return {name_of(path): {name for name in imported(path) if name in known} for path in modules(*PACKAGES)}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module, or of one that imports itself (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for successor in graph[node]:
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = []
            while not component or component[-1] != node:
                component.append(stack.pop())
            if len(component) > 1 or node in graph[node]:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def ids(path: Path) -> str:
    return str(path.relative_to(ROOT))


@pytest.mark.parametrize("path", modules(*PACKAGES), ids=ids)
def test_each_package_imports_only_from_the_packages_below_it(path):
    package = path.parent.name
    allowed = {package, *MAY_IMPORT[package]}
    assert sorted(name for name in imported(path) if top(name) in PACKAGES and top(name) not in allowed) == []


@pytest.mark.parametrize("path", modules(*PACKAGES), ids=ids)
def test_beam_is_imported_by_the_stages_and_the_layers_above_them_only(path):
    beam = sorted(name for name in imported(path) if top(name) == "apache_beam")
    if path.parent.name in BEAM_FREE or (path.parent.name == "transforms" and path.stem not in BEAM_STAGES):
        assert beam == [], f"{ids(path)} imports Beam; only the stages of BEAM_STAGES and the layers above may"


def test_every_package_of_the_checkout_is_placed_in_the_layers():
    found = {path.parent.name for path in ROOT.glob("*/__init__.py")} - {"tests"}
    assert found == set(PACKAGES)


def test_every_listed_stage_exists():
    assert {path.stem for path in modules("transforms")} >= BEAM_STAGES


def test_no_module_imports_itself_through_others():
    assert cycles(project_graph()) == []


def test_the_cycle_finder_finds_a_cycle_and_nothing_else():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"e"}, "f": set()}
    assert sorted(cycles(graph)) == [["a", "b", "c"], ["e"]]
