"""Compatibility, runtime and storage names (schemas.names)."""

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from schemas.names import name_from_storage, pointer_token, runtime_name, storage_name

AVRO_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

# The table and the examples of the module docstring.
RUNTIME_NAMES = [
    ("@id", "_id"),
    ("xdm:timestamp", "timestamp"),
    ("repo:createDate", "repo:createDate"),
]
STORAGE_NAMES = [
    ("internal-site-search", "internal__2dsite__2dsearch"),
    ("@type", "__40type"),
    ("repo:createDate", "repo__3acreateDate"),
]


@pytest.mark.parametrize(("compatibility", "runtime"), RUNTIME_NAMES)
def test_runtime_name_follows_the_table(compatibility, runtime):
    assert runtime_name(compatibility) == runtime


@pytest.mark.parametrize("name", ["_id", "timestamp", "identityMap", "schema:latitude"])
def test_runtime_name_of_a_runtime_name_is_itself(name):
    assert runtime_name(name) == name


@pytest.mark.parametrize(("runtime", "stored"), STORAGE_NAMES)
def test_storage_name_follows_the_examples(runtime, stored):
    assert storage_name(runtime) == stored


@pytest.mark.parametrize(("runtime", "stored"), STORAGE_NAMES)
def test_name_from_storage_inverts_the_examples(runtime, stored):
    assert name_from_storage(stored) == runtime


@pytest.mark.parametrize("name", ["_id", "timestamp", "eventType", "_tenant", "URL", "a1"])
def test_plain_names_are_stored_as_they_are(name):
    assert storage_name(name) == name


def test_a_name_holding_a_double_underscore_is_escaped():
    assert storage_name("a__b") == "a__5f__5fb"


def test_a_leading_digit_is_escaped():
    assert storage_name("3com") == "__33com"


def test_a_character_above_latin_1_takes_the_six_digit_escape():
    assert storage_name("ā") == "__u000101"


def test_a_latin_1_character_takes_the_two_digit_escape():
    assert storage_name("é") == "__e9"


@given(st.text())
def test_name_from_storage_inverts_storage_name(name):
    assert name_from_storage(storage_name(name)) == name


@given(st.text())
def test_storage_names_are_avro_names(name):
    assert AVRO_NAME.fullmatch(storage_name(name))


@given(st.text(), st.text())
def test_distinct_names_have_distinct_storage_names(first, second):
    if first != second:
        assert storage_name(first) != storage_name(second)


@given(st.text(alphabet="_-a1é", max_size=8), st.text(alphabet="_-a1é", max_size=8))
def test_distinct_names_over_escape_prone_characters_have_distinct_storage_names(first, second):
    # A small alphabet makes near-collisions (underscores next to escapes, digits after escapes) likely.
    if first != second:
        assert storage_name(first) != storage_name(second)


@pytest.mark.parametrize(
    ("name", "token"),
    [
        ("ECID", "ECID"),
        ("https://data.adobe.io/entities/namespace/4", "https:~1~1data.adobe.io~1entities~1namespace~14"),
        ("a~b", "a~0b"),
        ("~/", "~0~1"),
    ],
)
def test_pointer_token_escapes_tilde_and_slash(name, token):
    assert pointer_token(name) == token
