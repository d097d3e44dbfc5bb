"""Plain data types shared by the verifiers, the worker pool and the reward computer."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

DEFAULT_MAX_CHARS = 4000
# Longer "parsed" strings are cut: they only feed logs, and a hostile completion could make
# them as long as the whole tail.
MAX_PARSED_CHARS = 200


class RewardError(ValueError):
    """Bad reward configuration or a custom reward function that broke its contract."""


@dataclass(frozen=True)
class VerifyResult:
    score: float
    parsed: str | None = None  # what the verifier extracted, for logs
    formatted: bool = False  # whether the format the verifier asks for was met


# What a verification that timed out, crashed or was killed counts as.
FAILED = VerifyResult(score=0.0, parsed=None, formatted=False)


def _sanitize(text: str) -> str:
    text = text.replace("\x00", "")
    return text.encode("utf-8", errors="replace").decode("utf-8", errors="replace")


def clean_text(text: object, max_chars: int = DEFAULT_MAX_CHARS, *, keep_head: bool = False) -> str:
    """Bounded, well-formed text to parse: the last `max_chars` characters, NULs dropped,
    lone surrogates replaced (they cannot be encoded, and would crash a later encode or a
    pipe to a worker). keep_head=True also keeps the first `max_chars` characters (joined to
    the tail by a newline) for checks that look at both ends, like <think> ... <answer>."""
    if text is None:
        return ""
    if not isinstance(text, str):
        text = str(text)
    if max_chars <= 0:
        raise RewardError(f"max_chars must be > 0, got {max_chars}; pass a positive character budget")
    # Cut before the O(n) passes so a 1 MB completion costs one slice, not three full scans;
    # the slack keeps max_chars real characters after NULs are dropped.
    if keep_head:
        if len(text) > 2 * max_chars:
            return _sanitize(text[:max_chars]) + "\n" + _sanitize(text[-max_chars:])
        return _sanitize(text)
    return _sanitize(text[-2 * max_chars :])[-max_chars:]


def clip_parsed(parsed: str | None) -> str | None:
    if parsed is None:
        return None
    return parsed if len(parsed) <= MAX_PARSED_CHARS else parsed[:MAX_PARSED_CHARS] + "..."


@dataclass
class RewardOutput:
    rewards: list[float]  # weighted sum per completion, (N,)
    components: dict[str, list[float | None]]  # per spec label: raw score, None = no opinion
    correct: list[bool]  # from the first correctness verifier (gated when format_gated)
    formatted: list[bool]
    parsed: list[str | None]
    num_timeouts: int = 0  # verifications stopped at the time bound (scored 0)
    num_errors: int = 0  # verifications that raised (scored 0)
    weights: dict[str, float] = field(default_factory=dict)

    def component_means(self) -> dict[str, float]:
        """Mean of each component over the samples that had an opinion (None excluded);
        NaN where no sample had one."""
        means = {}
        for label, scores in self.components.items():
            vals = [s for s in scores if s is not None]
            means[label] = sum(vals) / len(vals) if vals else math.nan
        return means
