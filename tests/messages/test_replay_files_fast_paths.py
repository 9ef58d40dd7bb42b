"""The replay reader's fast paths against the exact code they stand for (messages.replay_files).

- ``_rest_fields`` (orjson, checked) returns exactly what ``_rest_fields_strictly`` (the standard library's
  ``json.loads``) returns for a line: the same REST object, key order included, or ``None``. Inputs: every
  JSONTestSuite file alone and inside a REST line (as an attribute, and as the dropped copy of a repeated key), REST
  lines generated with repeated keys, escapes, lone surrogates and values of every JSON type, nesting around both
  parsers' limits, then bytes mutated at random.
- ``_decode_base64`` (``binascii.a2b_base64`` in strict mode) accepts and decodes exactly what
  ``base64.b64decode(..., validate=True)`` does once the text is padded and its URL-safe characters translated.
"""

from __future__ import annotations

import base64
import binascii

from hypothesis import example, given
from hypothesis import strategies as st

from messages import replay_files
from tests.messages.test_decoding_fast_paths import (
    MANY,
    SUITE_FILES,
    WHITESPACE,
    mutated,
    mutations,
    trees,
    write,
)

REST_KEYS = ["data", "attributes", "messageId", "publishTime", "orderingKey"]
# Fragments either parser refuses alone, or reads otherwise: repeated keys may drop them.
ODD_VALUES = [b"NaN", b"-Infinity", b"1e400", b"1" * 5000, b'"\\ud800"', b'"\\udc00\\ud800"', b"18446744073709551616"]
ODD_VALUES += [b"[" * depth + b"]" * depth for depth in (900, 990, 1000, 1023, 1024, 1025)]


def assert_same_as_strict(line: bytes) -> None:
    assert repr(replay_files._rest_fields(line)) == repr(replay_files._rest_fields_strictly(line))


def suite_fragments() -> list[bytes]:
    return [path.read_bytes().replace(b"\n", b" ") for path in SUITE_FILES]


def test_every_jsontestsuite_file_reads_as_strictly():
    for fragment in suite_fragments():
        assert_same_as_strict(fragment)


def test_every_jsontestsuite_file_inside_a_rest_line_reads_as_strictly():
    for fragment in suite_fragments() + ODD_VALUES:
        assert_same_as_strict(b'{"data": "eA==", "attributes": {"k": %s}}' % fragment)
        assert_same_as_strict(b'{"data": %s, "data": "eA==", "messageId": "m"}' % fragment)
        assert_same_as_strict(b'{"attributes": {"k": %s, "k": "v"}, "publishTime": "2026-11-01T09:00:00Z"}' % fragment)


def test_a_rest_line_reads_as_strictly_even_when_a_dropped_copy_nests_past_the_standard_library_s_limit():
    for depth in range(850, 1030, 3):
        nested = b"[" * depth + b"]" * depth
        assert_same_as_strict(b'{"data": %s, "data": "eA=="}' % nested)


# A generated line is an object of members whose keys are mostly REST keys (repeated at times) and whose values are
# mostly strings or maps of strings (``attributes`` always a map of strings but for odd values), any JSON value now and
# then.
REST_STRINGS = ["eA==", "-_8", "not base64", "2026-11-01T09:00:00.123456789Z", "2026-13-01T09:00:00Z", "\ud800"]
texts = st.one_of(st.sampled_from(REST_STRINGS), st.text(max_size=4)).map(lambda text: ("string", text))


def write_value(draw, key: str) -> str:
    kind = draw(st.sampled_from(["map" if key == "attributes" else "string"] * 3 + ["tree", "odd"]))
    if kind == "string":
        return write(draw(texts), draw)
    if kind == "map":
        pairs = draw(st.lists(st.tuples(st.text(max_size=3), texts | trees), max_size=3))
        return write(("object", pairs), draw)
    if kind == "odd":
        return draw(st.sampled_from(ODD_VALUES)).decode()
    return write(draw(trees), draw)


@st.composite
def rest_lines(draw) -> bytes:
    keys = draw(st.lists(st.sampled_from([*REST_KEYS, *REST_KEYS, "other"]), min_size=1, max_size=6))
    space = draw(st.sampled_from(WHITESPACE))
    members = [f"{space}{write(('string', key), draw)}{space}:{space}{write_value(draw, key)}" for key in keys]
    return ("{" + ",".join(members) + "}" + space).encode("utf-8", "surrogatepass")


@MANY
@given(rest_lines())
@example(b'{"data":"eA==","data":"eA=="}')
@example(b'{"data":"eA==","\\u0064ata":NaN}')
@example(b'{"attributes":{"a":"\\ud800","a":"b"}}')
@example(b'{"attributes":{"\\"":"x"}, "data":"\\/\\/8="}')
def test_generated_rest_lines_read_as_strictly(line):
    assert_same_as_strict(line)


@MANY
@given(rest_lines(), mutations)
def test_mutated_rest_lines_read_as_strictly(line, edits):
    assert_same_as_strict(mutated(line, edits))


def b64decode_validated(text: str) -> bytes | None:
    padded = text + "=" * (-len(text) % 4)
    try:
        return base64.b64decode(padded, altchars=b"-_" if "-" in text or "_" in text else None, validate=True)
    except (binascii.Error, ValueError):
        return None


@MANY
@given(
    st.text(st.sampled_from("ABQgwz09+/-_=\n \t\u00e9\ud800"), max_size=14)
    | st.binary(max_size=12).map(lambda data: base64.urlsafe_b64encode(data).decode().rstrip("="))
)
@example("")
@example("AB==")
@example("A===")
@example("AB=C")
@example("+-/_")
def test_base64_is_decoded_as_b64decode_validates(text):
    assert replay_files._decode_base64(text) == b64decode_validated(text)
