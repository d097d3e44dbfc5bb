"""`gsm8k` verifier: the final number of a completion against a GSM8K reference.

mode="strict": the number after the LAST '####', which must be the last number of the
completion: "#### 42\\nso the answer is 7" has no final '####' answer and scores 0, so an
echoed prompt or few-shot example holding '#### 42' cannot stand in for the model's answer.
mode="flexible": the last number anywhere in the text.

Numbers compare exactly (fractions.Fraction): "1,234" == "$1,234.00." == 1234,
"3.50" == "3.5", "3/4" == "0.75". Only where one side is not a plain number
("#### \\frac{3}{4}") does math-verify decide; that fallback needs sympy and so runs in the
reward pool. Everything else is the regex fast path (numbers.py), linear in the bounded
input, which the reward computer runs in-process.
"""

from __future__ import annotations

from grpo_trainer.rewards.math_answer import equivalent
from grpo_trainer.rewards.numbers import (
    canonical,
    has_digit,
    hash_segment,
    last_number,
    reference_answer,
    sole_number,
    to_fraction,
)
from grpo_trainer.rewards.registry import register_verifier
from grpo_trainer.rewards.types import DEFAULT_MAX_CHARS, RewardError, VerifyResult, clean_text, clip_parsed

MODES = ("strict", "flexible")


def _candidate(text: str, mode: str) -> tuple[str | None, bool]:
    """(answer text to compare or None, whether it is a plain number token)."""
    if mode == "flexible":
        tok = last_number(text)
        return tok, tok is not None
    seg = hash_segment(text)
    if seg is None or has_digit(seg[1]):
        return None, False
    tok = sole_number(seg[0])
    if tok is not None:
        return tok, True
    line = seg[0].strip()
    return (line or None), False


def _decide(completion: str, ground_truth: str, mode: str, max_chars: int):
    """(VerifyResult, None) when plain numbers decide; (None, (gold, pred)) when math-verify must."""
    if mode not in MODES:
        raise RewardError(f"gsm8k mode must be one of {MODES}, got {mode!r}")
    text = clean_text(completion, max_chars)
    gold_text = reference_answer(clean_text(ground_truth, max_chars))
    pred, pred_plain = _candidate(text, mode)
    if pred is None or not gold_text:
        return VerifyResult(0.0, None, False), None
    gold_tok = sole_number(" " + gold_text)
    if pred_plain and gold_tok is not None:
        p, g = to_fraction(pred), to_fraction(gold_tok)
        if p is None or g is None:  # over-long token or zero denominator
            return VerifyResult(0.0, clip_parsed(pred), True), None
        return VerifyResult(1.0 if p == g else 0.0, canonical(p), True), None
    return None, (gold_text, pred)


def gsm8k_fast(
    completion: str, ground_truth: str, *, mode: str = "strict", max_chars: int = DEFAULT_MAX_CHARS, **_: object
) -> VerifyResult | None:
    """Regex-only path: the result, or None where math-verify has to decide."""
    result, _pending = _decide(completion, ground_truth, mode, max_chars)
    return result


@register_verifier("gsm8k", kind="correctness", fast=gsm8k_fast)
def gsm8k_verifier(
    completion: str, ground_truth: str, *, mode: str = "strict", max_chars: int = DEFAULT_MAX_CHARS, **_: object
) -> VerifyResult:
    """Score 1.0 when the completion's final number equals the ground truth's (a whole GSM8K
    `answer` field or just "42"), else 0.0. formatted: strict found a final '#### number',
    flexible found any number."""
    result, pending = _decide(completion, ground_truth, mode, max_chars)
    if result is not None:
        return result
    gold_text, pred = pending
    ok, parsed = equivalent(gold_text, pred)
    return VerifyResult(1.0 if ok else 0.0, clip_parsed(parsed), parsed is not None)
