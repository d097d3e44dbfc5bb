"""`format` verifier: is the completion in the shape the prompt asked for?

style="gsm8k": the last '####' is followed by a number, and no digit comes after that line
(the same "final answer comes last" rule as the gsm8k verifier's strict mode, so an echoed
'#### 42' followed by more work is not the format).
style="think_answer": "<think>...</think>" then "<answer>...</answer>", nothing else around
them but whitespace, each tag exactly once. With think_opened=True the "<think>" is taken as
already written by the prompt (chat templates that end the prompt with "<think>\\n"), so the
completion must not open it again.

think_answer looks at the first and the last `max_chars` characters (a long <think> section
must not fail the check); gsm8k at the last `max_chars`.
Checked with str.find/str.count and one anchored regex without nested quantifiers, so the cost
is linear in the (bounded) input; the reward computer runs it in-process.
"""

from __future__ import annotations

import re

from grpo_trainer.rewards.numbers import has_digit, hash_segment
from grpo_trainer.rewards.registry import register_verifier
from grpo_trainer.rewards.types import DEFAULT_MAX_CHARS, RewardError, VerifyResult, clean_text, clip_parsed

STYLES = ("gsm8k", "think_answer")
_HASH_NUMBER_RE = re.compile(r"\s*(?:[-\u2212]\s?)?\$?\s?\.?[0-9]")
_TAGS = ("<think>", "</think>", "<answer>", "</answer>")


def _gsm8k_format(text: str) -> tuple[bool, str | None]:
    seg = hash_segment(text)
    if seg is None or not _HASH_NUMBER_RE.match(seg[0]) or has_digit(seg[1]):
        return False, None
    return True, seg[0].strip()


def _think_answer_format(text: str, think_opened: bool) -> tuple[bool, str | None]:
    counts = [text.count(tag) for tag in _TAGS]
    if counts != [0 if think_opened else 1, 1, 1, 1]:
        return False, None
    body = text.strip()
    if not think_opened:
        if not body.startswith("<think>"):
            return False, None
    end_think = body.find("</think>")
    rest = body[end_think + len("</think>") :].lstrip()
    if not rest.startswith("<answer>") or not rest.endswith("</answer>"):
        return False, None
    answer = rest[len("<answer>") : -len("</answer>")].strip()
    return True, answer


@register_verifier("format", kind="format", in_process=True)
def format_verifier(
    completion: str,
    ground_truth: str = "",
    *,
    style: str = "gsm8k",
    think_opened: bool = False,
    max_chars: int = DEFAULT_MAX_CHARS,
    **_: object,
) -> VerifyResult:
    """Score 1.0 if the completion has the asked-for format, else 0.0; the ground truth is
    ignored. parsed: the text after '####' or inside <answer>."""
    text = clean_text(completion, max_chars, keep_head=style == "think_answer")
    if style == "gsm8k":
        ok, parsed = _gsm8k_format(text)
    elif style == "think_answer":
        ok, parsed = _think_answer_format(text, think_opened)
    else:
        raise RewardError(f"format style must be one of {STYLES}, got {style!r}")
    return VerifyResult(1.0 if ok else 0.0, clip_parsed(parsed), ok)
