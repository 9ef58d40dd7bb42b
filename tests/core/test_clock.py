"""The RFC 3339 readers: the forms they take, checked against a regular expression of RFC 3339's grammar, and the
answers they remember, checked against parsing."""

import datetime
import re
import sys
import unicodedata

from hypothesis import given
from hypothesis import strategies as st

from core.clock import micros, parse_rfc3339, parse_rfc3339_us, rfc3339_us

# RFC 3339's date-time as the readers have always taken it: this form, then whatever fromisoformat accepts of it.
_GRAMMAR = re.compile(r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})")
# Texts near the form, so that most draws are date-times or just miss being one (a day or an hour out of range, a
# space for the T, a missing offset, ten fractional digits).
_NEAR_RFC3339 = st.from_regex(
    r"\A[0-9]{4}-[01][0-9]-[0-3][0-9][Tt ][0-2][0-9]:[0-6][0-9]:[0-6][0-9]"
    r"(\.[0-9]{1,10})?([Zz]|[+-][0-2][0-9]:[0-6][0-9])?\Z"
)
_OTHER_DIGITS = [
    character
    for character in map(chr, range(sys.maxunicode + 1))
    if unicodedata.category(character) == "Nd" and not character.isascii()
]


def _by_grammar(text: str) -> datetime.datetime | None:
    if not _GRAMMAR.fullmatch(text):
        return None
    try:
        return datetime.datetime.fromisoformat(text.upper())
    except ValueError:
        return None


def _assert_read_as_by_grammar(text: str) -> None:
    expected = _by_grammar(text)
    assert repr(parse_rfc3339(text)) == repr(expected)  # the offset too, not just the instant
    assert rfc3339_us(text) == (None if expected is None else micros(expected))


@st.composite
def _with_other_digits(draw) -> str:
    """A near-RFC 3339 text with some ASCII digits replaced by digits of other scripts, which ``\\d`` matches."""
    text = list(draw(_NEAR_RFC3339))
    positions = [position for position, character in enumerate(text) if character.isdigit()]
    for position in draw(st.lists(st.sampled_from(positions), min_size=1, max_size=3)):
        text[position] = draw(st.sampled_from(_OTHER_DIGITS))
    return "".join(text)


@given(st.lists(_NEAR_RFC3339 | _with_other_digits() | st.text(max_size=40), max_size=20))
def test_texts_are_read_as_the_grammar_and_fromisoformat_read_them_each_time(texts):
    for text in texts + texts:  # each text read twice: the second read is answered from memory
        _assert_read_as_by_grammar(text)


def test_a_digit_of_another_script_is_read_as_the_grammar_and_fromisoformat_read_it_wherever_it_stands():
    for text in ("2026-11-01T09:00:00.123456789+01:00", "2026-11-01t09:00:00z"):
        for position in [position for position, character in enumerate(text) if character.isdigit()]:
            for digit in _OTHER_DIGITS:
                _assert_read_as_by_grammar(text[:position] + digit + text[position + 1 :])


def test_every_form_the_grammar_takes_is_read():
    for separator in "Tt":
        for fraction in ("", ".1", ".123456", ".123456789"):
            for offset in ("Z", "z", "+01:30", "-01:30"):
                _assert_read_as_by_grammar(f"2026-11-01{separator}09:00:00{fraction}{offset}")
    assert parse_rfc3339_us("2026-11-01T09:00:00.123456789-01:30") == rfc3339_us("2026-11-01T10:30:00.123456Z")


def test_memory_is_bounded():
    texts = [f"2026-11-01T09:00:{second % 60:02d}.{second:06d}Z" for second in range(5000)]
    for text in texts:
        rfc3339_us(text)
    assert parse_rfc3339.cache_info().currsize <= 4096
    assert rfc3339_us.cache_info().currsize <= 4096
