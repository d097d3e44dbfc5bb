"""Agreement on real GSM8K reference solutions: each scores 1 against its own answer, and the
same solution with its final number changed scores 0."""

import json
import re
from pathlib import Path

import pytest

from grpo_trainer.rewards import build_reward_fn

SAMPLE = Path(__file__).resolve().parent / "data" / "gsm8k_sample.jsonl"
SHARED_TRAIN = Path(__file__).resolve().parents[2] / "shared/data/gsm8k/train.jsonl"


def load(path: Path) -> list[str]:
    return [json.loads(line)["answer"] for line in path.read_text().splitlines() if line.strip()]


def change_final_number(answer: str) -> str:
    """"... #### 1,080" -> "... #### 1081": a different value, same format."""
    head, sep, tail = answer.rpartition("####")
    assert sep and re.fullmatch(r"\s*-?[0-9,]+(\.[0-9]+)?\s*", tail), tail
    value = float(tail.strip().replace(",", ""))
    return f"{head}#### {value + 1:g}"


def agreement(answers: list[str]) -> dict[str, tuple[float, float]]:
    """{verifier: (mean score on the references, mean score with the final number changed)}."""
    wrong = [change_final_number(a) for a in answers]
    specs = [
        {"name": "gsm8k", "kwargs": {"mode": "strict"}},
        {"name": "gsm8k", "kwargs": {"mode": "flexible"}, "label": "flexible"},
        {"name": "math"},
    ]
    n = len(answers)
    out = {}
    # Generous per-task bound: a 2-core CI box under load must not turn slowness into misses.
    with build_reward_fn(specs, timeout_s=5.0, num_workers=2) as rc:
        right = rc([""] * n, answers, [[0]] * n, answers)
        changed = rc([""] * n, wrong, [[0]] * n, answers)
    for label in ("gsm8k", "flexible", "math"):
        out[label] = (
            sum(right.components[label]) / n,
            sum(changed.components[label]) / n,
        )
    return out


def test_change_final_number():
    assert change_final_number("x\n#### 1,080") == "x\n#### 1081"
    assert change_final_number("y\n#### -4") == "y\n#### -3"
    assert change_final_number("z\n#### 0.75") == "z\n#### 1.75"


def test_in_repo_sample_agreement():
    answers = load(SAMPLE)
    assert len(answers) == 32
    result = agreement(answers)
    # Every reference scores 1 with every verifier; every changed copy scores 0.
    assert result == {"gsm8k": (1.0, 0.0), "flexible": (1.0, 0.0), "math": (1.0, 0.0)}


@pytest.mark.skipif(
    not SHARED_TRAIN.exists(),
    reason=f"GSM8K train file not found at {SHARED_TRAIN} (the ../shared checkout); agreement on the full set skipped",
)
def test_shared_train_agreement():
    # All ~7.5k rows, math included: about 10 s on 2 workers (numbers after '####' are short
    # and math-verify caches their parses), well inside the 60 s budget, so no sub-sampling.
    answers = load(SHARED_TRAIN)
    assert len(answers) > 7000
    result = agreement(answers)
    for label in ("gsm8k", "math"):
        right, changed = result[label]
        assert right >= 0.995, (label, right)
        assert changed == 0.0, (label, changed)
    # Flexible reads the last number, which is the '####' number in every reference.
    assert result["flexible"][1] == 0.0
