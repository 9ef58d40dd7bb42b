"""The import rules of the layout, checked by reading the code (every import, at module level or inside a function).

- ``schemas/`` and ``transforms/`` import nothing from ``pipelines/``: the pipeline layer builds on them, never the
  other way round.
- Beam stays in the stages: in ``transforms/`` only the modules of :data:`BEAM_STAGES` (the PTransforms and DoFns,
  and the Beam metrics they share) import ``apache_beam``; every other module there, and every module of ``schemas/``,
  is plain Python that the lookups, the HTTP services and the benchmarks use without Beam. A new stage module joins
  the list on purpose.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
BEAM_STAGES = frozenset(
    {
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
            names.add(base)
    return names


def modules(*folders: str) -> list[Path]:
    return sorted(path for folder in folders for path in (ROOT / folder).glob("*.py"))


def top(name: str) -> str:
    return name.split(".")[0]


@pytest.mark.parametrize("path", modules("schemas", "transforms"), ids=lambda path: f"{path.parent.name}/{path.name}")
def test_the_lower_layers_import_nothing_from_the_pipeline_layer(path):
    assert not [name for name in imported(path) if top(name) == "pipelines"]


@pytest.mark.parametrize("path", modules("schemas", "transforms"), ids=lambda path: f"{path.parent.name}/{path.name}")
def test_beam_is_imported_by_the_stage_modules_only(path):
    beam = sorted(name for name in imported(path) if top(name) == "apache_beam")
    if path.parent.name == "transforms" and path.stem in BEAM_STAGES:
        return
    assert beam == [], f"{path.relative_to(ROOT)} imports Beam; only the stages of BEAM_STAGES may"


def test_every_listed_stage_exists():
    assert {path.stem for path in modules("transforms")} >= BEAM_STAGES
