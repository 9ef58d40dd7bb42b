"""Plain draft-06 conformance against XDM components, as the XDM library checks its examples (schemas.conformance)."""

import json
import re
from pathlib import Path

import pytest

from pipelines.cli import main
from schemas.components import LIBRARY_DIR, UnknownComponentError
from schemas.conformance import conformance_errors

EXAMPLES_DIR = Path(__file__).parents[1] / "data" / "xdm" / "examples"
VALIDATION_LINES = (EXAMPLES_DIR / "VALIDATION.txt").read_text(encoding="utf-8").splitlines()
NAMESPACE = "https://ns.adobe.com/xdm/context/namespace"


def _component_id(relative: str) -> str:
    """The ``$id`` of the component an example belongs to: ``<dir>/<stem>.schema.json`` in the library."""
    example = Path(relative)
    stem = re.split(r"\.(?:example|invalid)\.", example.name)[0]
    schema_path = LIBRARY_DIR / example.parent / f"{stem}.schema.json"
    return json.loads(schema_path.read_text(encoding="utf-8"))["$id"]


def _line(relative: str, capsys) -> str:
    """The VALIDATION.txt line for one example, rebuilt from ``profilestream validate --conformance`` output."""
    exit_code = main(["validate", "--conformance", "--schema", _component_id(relative), str(EXAMPLES_DIR / relative)])
    [verdict] = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert exit_code == (0 if verdict["valid"] else 1)
    errors = verdict["errors"]
    result = f"{len(errors)} errors: " + "; ".join(error["message"] for error in errors) if errors else "valid"
    kind = "invalid" if ".invalid." in Path(relative).name else "example"
    return f"{relative} -> {result} [{kind}]"


@pytest.mark.parametrize("line", VALIDATION_LINES, ids=[line.partition(" -> ")[0] for line in VALIDATION_LINES])
def test_validate_conformance_reproduces_the_xdm_validation_line(line, capsys):
    assert _line(line.partition(" -> ")[0], capsys) == line


def test_validation_file_covers_invalid_examples():
    assert any(line.endswith("[invalid]") for line in VALIDATION_LINES)


def test_error_code_is_schema_and_the_failed_keyword():
    errors = conformance_errors({"xdm:code": 5}, NAMESPACE)
    assert [(error.code, error.path) for error in errors] == [("SCHEMA.TYPE", "/xdm:code")]


def test_missing_required_property_is_reported_at_its_parent():
    errors = conformance_errors({}, NAMESPACE)
    assert [(error.code, error.path) for error in errors] == [("SCHEMA.REQUIRED", "")]


def test_refs_into_other_components_are_resolved():
    # webinfo's pageViews is a $ref to the measure data type, whose xdm:value is a number.
    instance = {"xdm:webPageDetails": {"xdm:pageViews": {"xdm:value": "one"}}}
    errors = conformance_errors(instance, "https://ns.adobe.com/xdm/context/webinfo")
    assert [(error.code, error.path) for error in errors] == [
        ("SCHEMA.TYPE", "/xdm:webPageDetails/xdm:pageViews/xdm:value")
    ]


def test_conformance_keeps_compatibility_names_and_allows_unknown_fields():
    assert conformance_errors({"xdm:code": "ECID", "xdm:somethingElse": 1}, NAMESPACE) == []


def test_unknown_component_raises():
    with pytest.raises(UnknownComponentError):
        conformance_errors({}, "https://example.com/no-such-component")


def test_path_tokens_are_json_pointer_escaped():
    instance = {"xdm:identityMap": {"a/b": "not a list"}}
    errors = conformance_errors(instance, "https://ns.adobe.com/xdm/context/identitymap")
    assert [(error.code, error.path) for error in errors] == [("SCHEMA.TYPE", "/xdm:identityMap/a~1b")]
