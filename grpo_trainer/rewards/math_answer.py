"""`math` verifier: math-verify (sympy) equivalence of the final answer and the reference.

sympy can run for minutes or exhaust memory on hostile input (10^10^10^10, deeply nested
\\frac), so this verifier is only run bounded: in the reward pool's worker processes, which
set their own deadline (math-verify's own signal.alarm timeouts are switched off: they take
whole seconds and clash with the worker's timer). A direct call is unbounded in time.
"""

from __future__ import annotations

import logging

from grpo_trainer.rewards.numbers import has_digit, hash_segment, reference_answer
from grpo_trainer.rewards.registry import register_verifier
from grpo_trainer.rewards.types import DEFAULT_MAX_CHARS, FAILED, VerifyResult, clean_text, clip_parsed

_mv = None


def _math_verify():
    """Imported on first use: it pulls in sympy (~1 s), which a process that only uses the
    regex verifiers should not pay for."""
    global _mv
    if _mv is None:
        import math_verify

        # With the timeouts off it warns once per process that we must bound it ourselves,
        # which the pool does; the warning would only be noise in every worker.
        logging.getLogger("math_verify").setLevel(logging.ERROR)
        _mv = math_verify
    return _mv


def parse_gold(text: str) -> list:
    """Parse a reference answer. A bare "3/4" or "1,234" is wrapped in \\boxed{} so the
    LaTeX extractor reads it whole (the plain-expression extractor would stop at commas)."""
    mv = _math_verify()
    text = text.strip()
    if not text:
        return []
    if "\\boxed" not in text and "$" not in text:
        gold = mv.parse("\\boxed{" + text + "}", parsing_timeout=None)
        if gold:
            return gold
    return mv.parse(text, parsing_timeout=None)


def final_answer_text(text: str) -> str:
    """Which part of a completion holds its final answer. A GSM8K '#### answer' line wins when
    it is final (no digits after its line): math-verify on its own would prefer an earlier
    "the answer is <<8=8>>8" or a percentage over the '####' line. A '####' followed by more
    numbers is not final (for example a question with '#### 42' echoed before the model's
    own answer), so the whole text is parsed instead."""
    seg = hash_segment(text)
    if seg is not None and seg[0].strip() and not has_digit(seg[1]):
        return seg[0]
    return text


def equivalent(gold_text: str, pred_text: str) -> tuple[bool, str | None]:
    """(math-verify says equal, what it extracted from pred_text)."""
    mv = _math_verify()
    gold = parse_gold(gold_text)
    pred = mv.parse(pred_text, parsing_timeout=None)
    if not pred:
        return False, None
    parsed = str(pred[-1]) if isinstance(pred[-1], str) else str(pred[0])
    if not gold:
        return False, parsed
    return bool(mv.verify(gold, pred, timeout_seconds=None)), parsed


@register_verifier("math", kind="correctness")
def math_verifier(
    completion: str, ground_truth: str, *, max_chars: int = DEFAULT_MAX_CHARS, **_: object
) -> VerifyResult:
    """Score 1.0 when math-verify finds the completion's final answer (\\boxed{}, LaTeX,
    fractions, percentages, thousands separators, a '####' line) equivalent to the ground
    truth (a GSM8K answer field contributes its number after '####'). formatted: an answer
    could be extracted."""
    text = clean_text(completion, max_chars)
    gold_text = reference_answer(clean_text(ground_truth, max_chars))
    if not gold_text:
        return FAILED
    ok, parsed = equivalent(gold_text, final_answer_text(text))
    return VerifyResult(score=1.0 if ok else 0.0, parsed=clip_parsed(parsed), formatted=parsed is not None)
