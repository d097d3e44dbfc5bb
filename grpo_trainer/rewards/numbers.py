"""Number extraction for GSM8K-style answers: plain regex and exact arithmetic, no eval.

Every pattern here is linear on its (already bounded) input: no nested quantifiers, and a
number can only start where the previous character is not a word character or '.', so a
failed match inside a digit run costs O(1). All callers pass text cut to `max_chars`.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from fractions import Fraction

# A number token: optional sign and/or '$', then either properly grouped thousands
# ("1,234,567") or a digit run, an optional decimal part, and an optional "/denominator".
# ASCII digits only: \d would also take Arabic-Indic and other Unicode digits.
NUMBER_RE = re.compile(
    r"(?<![\w.])"
    r"(?P<prefix>[-\u2212]\s?\$?|\$\s?[-\u2212]?)?"
    r"(?P<int>[0-9]{1,3}(?:,[0-9]{3})+(?![0-9])|[0-9]+)?"
    r"(?P<frac>(?(int)(?:\.[0-9]+)?|\.[0-9]+))"
    r"(?P<den>/[0-9]+(?:\.[0-9]+)?)?"
)
_DIGIT_RE = re.compile(r"[0-9]")
HASH = "####"
# Longer tokens are not read as numbers: no GSM8K answer has 40 digits, and this keeps int()
# under Python's 4300-digit conversion limit whatever max_chars is.
MAX_NUMBER_CHARS = 40


def has_digit(text: str) -> bool:
    return _DIGIT_RE.search(text) is not None


def iter_numbers(text: str):
    for m in NUMBER_RE.finditer(text):
        if m.group("int") is None and not m.group("frac"):
            continue  # the pattern can match an empty string or a lone sign
        yield m


def to_fraction(token: str) -> Fraction | None:
    """Exact value of a NUMBER_RE token: "$1,234.00" -> 1234, "-3/4" -> -3/4; None if the
    token is too long or has a zero denominator."""
    if len(token) > MAX_NUMBER_CHARS:
        return None
    s = token.replace(",", "").replace("$", "").replace(" ", "").replace("\u2212", "-")
    negative = s.startswith("-")
    s = s.lstrip("-")
    num, _, den = s.partition("/")
    try:
        value = Fraction(Decimal(num))
        if den:
            d = Fraction(Decimal(den))
            if d == 0:
                return None
            value /= d
    except (InvalidOperation, ValueError, ZeroDivisionError):
        return None
    return -value if negative else value


def canonical(value: Fraction) -> str:
    """Short stable text for logs: 1234, -3.5, 1/3."""
    if value.denominator == 1:
        return str(value.numerator)
    d = value.denominator
    while d % 2 == 0:
        d //= 2
    while d % 5 == 0:
        d //= 5
    if d == 1:  # terminating decimal
        return format(Decimal(value.numerator) / Decimal(value.denominator), "f")
    return f"{value.numerator}/{value.denominator}"


def last_number(text: str) -> str | None:
    last = None
    for m in iter_numbers(text):
        last = m
    return last.group(0) if last is not None else None


def hash_segment(text: str) -> tuple[str, str] | None:
    """(rest of the line after the LAST '####', everything after that line) or None."""
    idx = text.rfind(HASH)
    if idx < 0:
        return None
    after = text[idx + len(HASH) :]
    eol = after.find("\n")
    if eol < 0:
        return after, ""
    return after[:eol], after[eol:]


def sole_number(segment: str) -> str | None:
    """The number token in `segment` if it is the only run of digits there, e.g.
    " $1,234.00." -> "$1,234.00", " 42 apples" -> "42"; None for " \\frac{3}{4}" or
    " 42 (6*7)" (not a plain number: those need math-verify or are not a final answer)."""
    m = next(iter_numbers(segment), None)
    if m is None or has_digit(segment[: m.start()]) or has_digit(segment[m.end() :]):
        return None
    return m.group(0)


def reference_answer(ground_truth: str) -> str:
    """The answer text of a ground truth: after the last '####' of a GSM8K `answer` field
    ("...<<6*7=42>>42\\n#### 42" -> "42"), else the whole string, stripped."""
    seg = hash_segment(ground_truth)
    return (seg[0] if seg is not None else ground_truth).strip()
