"""The decoder's fast paths against the exact code they stand for (messages.decoding).

- :func:`~messages.decoding.parse_json` (orjson, checked) gives exactly what
  :func:`~messages.decoding.parse_json_strictly` gives: the same value (``repr`` tells ``1`` from ``1.0``, ``-0.0``
  from ``0.0`` and shows key order) or the same rejection, code and message. Inputs: every JSONTestSuite file, every
  payload of the sample stream and of the published examples, and generated texts made to hit where orjson and the
  strict parser differ: keys repeated at any depth (also under escapes), integers around 64 bits, decimals at the
  edges of the double range, lone and paired surrogate escapes, nesting around both parsers' limits, then bytes
  mutated at random.
- A batch entry's raw bytes are ``json.dumps(entry, separators=(",", ":"), ensure_ascii=False)`` in UTF-8, floats and
  every character included.
"""

from __future__ import annotations

import base64
import decimal
import json
import math
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from messages import decoding
from messages.decoding import JsonRejected, parse_json, parse_json_strictly

ROOT = Path(__file__).parents[2]
SUITE = ROOT / "tests" / "data" / "jsontestsuite"
SAMPLE = ROOT / "pipelines" / "samples" / "stream.jsonl"
PAYLOADS = ROOT / "tests" / "data" / "xdm" / "payloads"
SUITE_FILES = sorted(SUITE.glob("test_*/*.json"))
MANY = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def outcome(parse, data: bytes) -> tuple:
    try:
        return ("parsed", repr(parse(data)))
    except JsonRejected as rejected:
        return ("rejected", rejected.code, str(rejected))


def assert_same_as_strict(data: bytes) -> None:
    assert outcome(parse_json, data) == outcome(parse_json_strictly, data)


def sample_payloads() -> list[bytes]:
    lines = [json.loads(line) for line in SAMPLE.read_bytes().splitlines() if line.strip()]
    return [base64.b64decode(line["data"]) for line in lines if type(line) is dict and "data" in line]


@pytest.mark.parametrize("path", SUITE_FILES, ids=lambda path: f"{path.parent.name}/{path.name}")
def test_every_jsontestsuite_file_parses_as_strictly(path):
    assert_same_as_strict(path.read_bytes())


def test_every_sample_payload_parses_as_strictly():
    payloads = sample_payloads()
    assert len(payloads) == 2500
    for payload in payloads:
        assert_same_as_strict(payload)


def test_every_published_payload_example_parses_as_strictly():
    for path in sorted(PAYLOADS.glob("*.json")):
        assert_same_as_strict(path.read_bytes())


# Numbers whose reading differs between parsers, or could: int64 and uint64 edges, doubles at the ends of their range
# (the largest, the halfway point past it, the smallest subnormal and half of it), signed zeros, exponent spellings.
INTEGER_EDGES = [2**63 - 1, 2**63, 2**64 - 1, 2**64, -(2**63), -(2**63) - 1, -(2**64), 10**18, 10**19, 10**30]
INTEGER_EDGES += [2**53, 2**53 + 1, -(2**53) - 1, 999_999_999_999_999_999]
SPELLINGS = "-0 -0.0 0e0 -0e-0 0.0e+0 1E2 1e+2 1e-2 1E400 -1e400 1e-400 -1e-400 0.1 1e19 9.3e18 -9.3e18"
DOUBLE_EDGES = """
    1.7976931348623157e308 1.7976931348623158e308 1.7976931348623159e308
    1.797693134862315807937289714053034150799341327710375e308 1.797693134862315807937289714053034150799341327710374e308
    4.9406564584124654e-324 2.4703282292062327e-324 2.4703282292062328e-324
    2.2250738585072011e-308 2.2250738585072012e-308 9007199254740993 9007199254740993.0
    1.00000000000000011102230246251565404236316680908203125 1.000000000000000111022302462515654042363166809082031
    123456789012345678901234567890e-20 9223372036854775807.0 18446744073709551616.5
"""
EDGE_NUMBERS = [str(number) for number in INTEGER_EDGES] + SPELLINGS.split() + DOUBLE_EDGES.split()


@pytest.mark.parametrize("number", EDGE_NUMBERS)
def test_edge_numbers_parse_as_strictly(number):
    for text in (f"[{number}]", f'{{"n":{number}}}', f"[1, {number} ,2]", number):
        assert_same_as_strict(text.encode())


@MANY
@given(st.floats(min_value=0.0, allow_infinity=False, allow_nan=False), st.sampled_from([-1, 0, 1]))
def test_decimals_halfway_between_two_doubles_parse_as_strictly(number, nudge):
    # The hardest decimals to round: the exact midpoint between neighbouring doubles (ties go to the even one), and
    # the decimals just either side of it.
    with decimal.localcontext(decimal.Context(prec=1200)):
        midpoint = (decimal.Decimal(number) + decimal.Decimal(math.nextafter(number, math.inf))) / 2
        text = f"{midpoint + nudge * decimal.Decimal(2) ** -1200:e}"
    assert_same_as_strict(f"[{text}, -{text}]".encode())


@pytest.mark.parametrize("depth", [*range(60, 70), 254, 255, 256, 900, 1023, 1024, 1025, 1100])
def test_nesting_around_the_limits_parses_as_strictly(depth):
    for opening, closing in (("[", "]"), ('{"a":', "}"), ('[{"k":', "}]")):
        assert_same_as_strict((opening * depth + "1" + closing * depth).encode())
    assert_same_as_strict(("[" * depth + '{"a":1,"a":2}' + "]" * depth).encode())


# Generated JSON texts. A value is a tree whose objects are lists of members, so a key may repeat; keys come from a
# small set (so repeats are common) in which NFC and NFD spellings differ and escapes spell the same key otherwise.
KEYS = ["a", "b", "_id", "@id", "xdm:a", "\u00e9", "e\u0301", 'q"u', "b\\s", "\U0001f600"]
WHITESPACE = ["", "", "", " ", "\n", "\t ", "\r\n"]
SHORT_ESCAPES = {'"': '\\"', "\\": "\\\\", "/": "\\/", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t"}

numbers = st.one_of(
    st.integers(min_value=-(2**66), max_value=2**66).map(str),
    st.sampled_from(EDGE_NUMBERS),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.floats(allow_nan=False, allow_infinity=False).flatmap(
        lambda x: st.sampled_from([f"{x:.17g}", f"{x:.25e}", f"{x:.3E}", f"{x:f}"])
    ),
    st.builds(
        lambda sign, digits, fraction, exponent: f"{sign}{int(digits)}{fraction}{exponent}",
        st.sampled_from(["", "-"]),
        st.from_regex(r"[0-9]{1,30}", fullmatch=True),
        st.sampled_from(["", ".5", ".0", ".000001", ".99999999999999999999"]),
        st.one_of(st.just(""), st.integers(-420, 420).map(lambda e: f"e{e:+d}"), st.integers(0, 330).map("E{}".format)),
    ),
).filter(lambda text: "inf" not in text and "nan" not in text)
# Characters: any code point, lone surrogates included (written as escapes or as CESU-8 bytes).
characters = st.characters(min_codepoint=0, max_codepoint=0x10FFFF)
strings = st.one_of(st.text(characters, max_size=8), st.sampled_from(KEYS))
leaves = st.one_of(
    numbers.map(lambda text: ("number", text)),
    strings.map(lambda text: ("string", text)),
    st.sampled_from([("literal", "true"), ("literal", "false"), ("literal", "null")]),
)
trees = st.recursive(
    leaves,
    lambda children: st.one_of(
        st.lists(children, max_size=4).map(lambda items: ("array", items)),
        st.lists(st.tuples(st.sampled_from(KEYS) | strings, children), max_size=4).map(lambda pairs: ("object", pairs)),
    ),
    max_leaves=30,
)


def write_string(text: str, draw) -> str:
    out = []
    for char in text:
        code = ord(char)
        how = draw(st.integers(0, 3))
        if char in SHORT_ESCAPES and (code < 0x20 or char in '"\\' or how == 0):
            out.append(SHORT_ESCAPES[char])
        elif code < 0x20 or 0xD800 <= code <= 0xDFFF or how == 1:
            if code > 0xFFFF:
                high, low = divmod(code - 0x10000, 0x400)
                out.append(f"\\u{0xD800 + high:04x}\\u{0xDC00 + low:04X}")
            else:
                out.append(f"\\u{code:04x}" if how else f"\\u{code:04X}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def write(tree, draw) -> str:
    kind, content = tree
    space = draw(st.sampled_from(WHITESPACE))
    if kind == "number" or kind == "literal":
        return space + content
    if kind == "string":
        return space + write_string(content, draw)
    if kind == "array":
        return space + "[" + ",".join(write(item, draw) for item in content) + space + "]"
    members = (f"{write(('string', key), draw)}{space}:{write(value, draw)}" for key, value in content)
    return space + "{" + ",".join(members) + space + "}"


@st.composite
def json_texts(draw) -> bytes:
    tree = draw(trees)
    if draw(st.booleans()):  # a container on top, as every message has
        tree = ("object", [("x", tree)]) if draw(st.booleans()) else ("array", [tree])
    depth = draw(st.sampled_from([0, 0, 0, 30, 62, 63, 64, 65, 70]))
    text = "[" * depth + write(tree, draw) + "]" * depth + draw(st.sampled_from(WHITESPACE))
    # Lone surrogates raw (CESU-8) are not UTF-8: both parsers must refuse them.
    return text.encode("utf-8", "surrogatepass")


@MANY
@given(json_texts())
@example(b'{"a":{"b":1,"b":2}}')
@example(b'{"a":1,"\\u0061":2}')
@example(b'[{"q\\"u":1,"q\\u0022u":[]}]')
@example(b'{"a\\\\":1,"a\\u005c":2}')
@example(b'[{"k":"\\\\\\"","k":0}]')
@example(b'{"a\\\\":1,"a\\\\":"\\\\"}')  # counted without removing escaped backslashes, strings would match
@example(b'["\\ud800"]')
@example(b'["\\ud83d\\ude00", "\\ude00\\ud83d"]')
@example(b"[18446744073709551615]")
@example(b"[-9223372036854775809, 1]")
@example(b'{"s":"1e+5","n":1}')
def test_generated_json_parses_as_strictly(data):
    assert_same_as_strict(data)


MUTATION_BYTES = [*b'{}[]":,\\ 0123456789.eE+-tfnu\x00\x1f\x7f', 0x80, 0xC3, 0xED, 0xEF, 0xF0, 0xFF]
mutations = st.lists(st.tuples(st.integers(0, 10_000), st.sampled_from(MUTATION_BYTES), st.integers(0, 2)))


@MANY
@given(json_texts(), mutations)
def test_mutated_json_parses_as_strictly(data, edits):
    assert_same_as_strict(mutated(data, edits))


def mutated(data: bytes, edits: list[tuple[int, int, int]]) -> bytes:
    """``data`` with each ``(position, byte, operation)`` applied in turn: 0 inserts, 1 overwrites, 2 deletes."""
    result = bytearray(data)
    for position, byte, operation in edits:
        at = position % (len(result) + 1)
        if operation == 0 or at == len(result):
            result.insert(at, byte)
        elif operation == 1:
            result[at] = byte
        else:
            del result[at]
    return bytes(result)


@given(st.floats(allow_nan=False, allow_infinity=False))
@example(5e-324)
@example(2.2250738585072014e-308)
@example(1.7976931348623157e308)
def test_float_reads_back_every_double_orjson_writes(number):
    # parse_json relies on it when the text is orjson's own writing (see decoding._orjson_agrees).
    assert repr(float(orjson.dumps(number))) == repr(number)


def test_orjson_rounds_some_decimals_otherwise_than_float_and_the_strict_parse_decides_them():
    # The exact midpoint between 0 and the smallest subnormal rounds to 0 (the even one); written with 200 zeros more
    # (883 characters), orjson rounds it up.
    smallest = math.ulp(0.0)
    with decimal.localcontext(decimal.Context(prec=1200)):
        digits, exponent = f"{decimal.Decimal(smallest) / 2:e}".split("e")
    text = f"[{digits}{'0' * 200}e{exponent}]".encode()
    assert (orjson.loads(text), parse_json(text)) == ([smallest], [0.0])


def test_a_key_repeated_under_escapes_is_still_a_duplicate():
    with pytest.raises(JsonRejected) as rejected:
        parse_json(b'{"\\"":1,"\\u0022":2}')
    assert rejected.value.code == decoding.DUPLICATE_KEY


# Batch entries' raw bytes.

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(min_codepoint=0, max_codepoint=0x10FFFF, exclude_categories=["Cs"])),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=4),
    max_leaves=25,
)


def standard_compact(entry) -> bytes:
    return json.dumps(entry, separators=(",", ":"), ensure_ascii=False).encode()


@MANY
@given(json_values)
@example({"a": 1e-05, "b": [1e-07, 1e16, -0.0, 5e-324, 1.7976931348623157e308, 123456789012345.6]})
@example({"s": '":1.5 [2.5 ,3e5', "control": "\x00\x1f\x7f\u2028\ufeff", "escape": '\\"/'})
@example({"price": 12.5, "list": [0.1, -0.0, 100.0, 1e22, 1e16, 2.5], "s": ",1.50 [1.5.5 :-1e5 ,7E2"})
def test_an_entry_s_raw_bytes_are_the_standard_library_s_compact_json(value):
    entry = {"body": value}
    assert decoding._compact_json(entry) == standard_compact(entry)
    assert decoding._compact_json(value) == standard_compact(value)


@MANY
@given(
    st.lists(st.floats(allow_nan=False, allow_infinity=False), max_size=6), st.text(st.sampled_from('0159.eE+-,:["'))
)
def test_an_entry_s_floats_and_number_lookalikes_in_strings_are_written_as_the_standard_library_writes_them(
    numbers, text
):
    entry = {"body": {"numbers": numbers, text: text}, "first": numbers[:1]}
    assert decoding._compact_json(entry) == standard_compact(entry)


def test_every_sample_batch_entry_s_raw_bytes_are_the_standard_library_s():
    entries = []
    for payload in sample_payloads():
        try:
            value = parse_json_strictly(payload)
        except JsonRejected:
            continue
        if type(value) is dict and type(value.get("messages")) is list:
            entries.extend(value["messages"])
    assert len(entries) > 300
    assert [decoding._compact_json(entry) for entry in entries] == [standard_compact(entry) for entry in entries]


def test_floats_written_otherwise_by_orjson_take_the_standard_encoder():
    entry = {"n": 1e-05}
    assert (orjson.dumps(entry), decoding._compact_json(entry)) == (b'{"n":0.00001}', b'{"n":1e-05}')
    assert math.isclose(json.loads(decoding._compact_json(entry))["n"], 1e-05)
