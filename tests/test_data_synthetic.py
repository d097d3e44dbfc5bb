import hashlib
import json
import re

import pytest

from grpo_trainer.data.synthetic import SCENARIOS, START_MAX, make_problems, split_of

CALC = re.compile(r"<<(\d+)([-+*/])(\d+)=(\d+)>>(\d+)")
FINAL = re.compile(r"\n#### (\d+)\Z")


def _digest(problems):
    return hashlib.sha256(json.dumps(problems, sort_keys=True).encode()).hexdigest()


def _check_chain(answer: str):
    """Recompute every annotation with ints; return (steps, final). Each step must start from the
    previous result, and the final '#### N' must equal the last result."""
    steps = CALC.findall(answer)
    prev = None
    for a, op, b, c, shown in steps:
        a, b, c, shown = int(a), int(b), int(c), int(shown)
        if op == "+":
            expect = a + b
        elif op == "-":
            expect = a - b
        elif op == "*":
            expect = a * b
        else:
            assert a % b == 0, f"inexact division {a}/{b}"
            expect = a // b
        assert c == expect and shown == c
        assert c > 0
        if prev is not None:
            assert a == prev
        prev = c
    m = FINAL.search(answer)
    assert m is not None, answer
    assert int(m.group(1)) == prev
    return len(steps), prev


def test_same_args_same_list_pinned():
    a = make_problems(50, 123, 3, "train")
    b = make_problems(50, 123, 3, "train")
    assert a == b
    # Pinned: changing templates or RNG use changes this digest on purpose; update it knowingly.
    assert _digest(a) == "0269abf35e32d67dd14de35dab256932fe94478c96b793d7a2c6b269150fbe0e"
    assert make_problems(50, 124, 3, "train") != a


def test_first_problem_by_hand():
    p = make_problems(50, 123, 3, "train")[0]
    # 19 + 11 = 30, 30 - 10 = 20, 20 - 8 = 12
    assert p["question"].startswith("Tomas has a bag of 19 marbles. He wins 11 marbles from Nora.")
    assert p["answer"].splitlines()[0] == "Tomas then has 19 + 11 = <<19+11=30>>30 marbles."
    assert p["answer"].endswith("\n#### 12")


@pytest.mark.parametrize("difficulty", [1, 2, 3, 4])
def test_answers_are_correct_and_steps_bounded(difficulty):
    problems = make_problems(300, 7, difficulty, "train")
    counts = set()
    for p in problems:
        steps, final = _check_chain(p["answer"])
        assert 1 <= steps <= difficulty
        assert final >= 0
        counts.add(steps)
    # 300 draws of a uniform 1..d step count hit every value.
    assert counts == set(range(1, difficulty + 1))


def test_difficulty_one_operands_small():
    for p in make_problems(300, 3, 1, "train"):
        (a, op, b, _, _), = CALC.findall(p["answer"])
        assert int(a) <= START_MAX[0] == 20
        assert int(b) <= 20


def test_many_scenarios_used():
    assert len(SCENARIOS) == 14
    # Unit = last word of the first solution line ("... = <<a+b=c>>c cookies.").
    units = {p["answer"].splitlines()[0].rsplit(" ", 1)[1].rstrip(".") for p in make_problems(500, 0, 1, "train")}
    # 14 scenarios, 13 distinct last words: shopping and savings both count "dollars".
    assert len(units) == 13
    assert {"cookies", "dollars", "stickers", "photos", "cards"} <= units


def test_splits_disjoint_on_2000():
    train = make_problems(2000, 0, 2, "train")
    test = make_problems(2000, 0, 2, "test")
    train_q = {p["question"] for p in train}
    test_q = {p["question"] for p in test}
    assert len(train_q) == 2000 and len(test_q) == 2000  # no duplicates within a split
    assert not train_q & test_q
    assert all(split_of(q) == "test" for q in test_q)
    assert all(split_of(q) == "train" for q in train_q)


def test_answer_format():
    for p in make_problems(100, 1, 4, "test"):
        lines = p["answer"].split("\n")
        assert re.fullmatch(r"#### \d+", lines[-1])
        assert all("<<" in line for line in lines[:-1])


def test_bad_args():
    with pytest.raises(ValueError, match="difficulty must be an int in 1..4"):
        make_problems(1, 0, 5, "train")
    with pytest.raises(ValueError, match="split must be one of"):
        make_problems(1, 0, 1, "validation")
