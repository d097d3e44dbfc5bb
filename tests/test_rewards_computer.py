"""RewardComputer: weighted sums, components, format gating, TRL-style custom rewards, errors."""

import math
import time
from pathlib import Path

import pytest

from grpo_trainer.rewards import (RewardComputer, RewardError, VerifyResult, build_reward_fn, check_reward_specs,
                                  register_verifier)

REPO = Path(__file__).resolve().parents[1]


@register_verifier("test_sleep_0p3")
def sleep_0p3(completion, ground_truth, **kwargs):
    # Module level so spawned workers can import it by name.
    time.sleep(0.3)
    return VerifyResult(1.0 if completion == ground_truth else 0.0, completion, True)


@pytest.fixture(autouse=True)
def _repo_on_path(monkeypatch):
    # "tests.reward_fns:..." must import however pytest was started.
    monkeypatch.syspath_prepend(str(REPO))


def run(rc, completions, answers, **columns):
    n = len(completions)
    return rc(["prompt"] * n, completions, [[7] * (i + 1) for i in range(n)], answers, **columns)


def test_weighted_sum_and_components():
    with build_reward_fn([{"name": "gsm8k", "weight": 1.0}, {"name": "format", "weight": 0.5}]) as rc:
        out = run(rc, ["#### 42", "#### 41", "42"], ["42", "42", "#### 42"])
    # gsm8k [1, 0, 0] (the third has no '####'), format [1, 1, 0]:
    # rewards = 1*gsm8k + 0.5*format = [1.5, 0.5, 0.0]
    assert out.rewards == [1.5, 0.5, 0.0]
    assert out.components == {"gsm8k": [1.0, 0.0, 0.0], "format": [1.0, 1.0, 0.0]}
    assert out.correct == [True, False, False]
    assert out.formatted == [True, True, False]  # from the format spec
    assert out.parsed == ["42", "41", None]  # from gsm8k, the correctness verifier
    assert out.weights == {"gsm8k": 1.0, "format": 0.5}


THINK = [
    "<think>6*7</think><answer>42</answer>",  # formatted, right
    "6*7 is 42",  # not formatted, right (flexible mode reads the last number)
    "<think>6*7</think><answer>41</answer>",  # formatted, wrong
]


@pytest.mark.parametrize(
    "gated,rewards,correct",
    [
        # format (weight 0.1) = [1, 0, 1]; gsm8k flexible = [1, 1, 0]
        (False, [1.1, 1.0, 0.1], [True, True, False]),
        # gated: the second sample's correctness does not count: [1.1, 0.0, 0.1]
        (True, [1.1, 0.0, 0.1], [True, False, False]),
    ],
)
def test_format_gating(gated, rewards, correct):
    specs = [
        {"name": "gsm8k", "kwargs": {"mode": "flexible"}},
        {"name": "format", "weight": 0.1, "kwargs": {"style": "think_answer"}},
    ]
    with build_reward_fn(specs, format_gated=gated) as rc:
        out = run(rc, THINK, ["42"] * 3)
    assert out.rewards == pytest.approx(rewards)
    assert out.correct == correct
    assert out.components["gsm8k"] == [1.0, 1.0, 0.0]  # raw scores, not gated
    assert out.formatted == [True, False, True]


def test_math_through_pool_and_duplicate_labels():
    specs = [{"name": "math"}, {"name": "gsm8k", "kwargs": {"mode": "flexible"}}, {"name": "gsm8k", "weight": 2.0}]
    with build_reward_fn(specs) as rc:
        out = run(rc, ["$\\boxed{\\frac{3}{4}}$", "$\\boxed{0.7}$", "#### 0.75"], ["0.75", "3/4", "#### 0.75"])
    # math [1, 0, 1]; gsm8k flexible reads 4, 0.7, 0.75 -> [0, 0, 1]; strict [0, 0, 1] x2
    assert out.components == {"math": [1.0, 0.0, 1.0], "gsm8k": [0.0, 0.0, 1.0], "gsm8k#2": [0.0, 0.0, 1.0]}
    assert out.rewards == [1.0, 0.0, 4.0]
    assert out.correct == [True, False, True]  # math is the first correctness spec
    assert out.parsed[0] == "\\frac{3}{4}"


def test_pool_runs_batch_in_parallel():
    with build_reward_fn([{"name": "test_sleep_0p3"}], num_workers=2) as rc:
        rc.wait_ready()
        t0 = time.monotonic()
        out = run(rc, ["a", "b", "c", "d"], ["a", "x", "c", "x"])
        wall = time.monotonic() - t0
    assert out.rewards == [1.0, 0.0, 1.0, 0.0]
    # 4 tasks x 0.3 s on 2 workers: 0.6 s; serial would be 1.2 s.
    assert wall < 1.0, wall


def test_trl_custom_functions_and_none():
    specs = [
        {"name": "tests.reward_fns:length_penalty", "weight": 2.0},
        {"name": "tests.reward_fns:only_even_rows", "label": "hard_len"},
        {"name": "tests.reward_fns:echoes_answer_column"},
        {"name": "tests.reward_fns:scaled", "kwargs": {"scale": 0.25}},
    ]
    with RewardComputer(specs) as rc:
        completions = ["x" * 25, "the answer is 42", "y" * 20]
        out = run(rc, completions, ["#### 42"] * 3, difficulty=["hard", "easy", "hard"])
    # length_penalty: [-0.05, 0, 0]; hard_len = len(completion_ids) where hard: [1, None, 3];
    # echoes answer "42": [0, 1, 0]; scaled: 0.25 each.
    assert out.components["tests.reward_fns:length_penalty"] == pytest.approx([-0.05, 0.0, 0.0])
    assert out.components["hard_len"] == [1.0, None, 3.0]
    assert out.components["tests.reward_fns:echoes_answer_column"] == [0.0, 1.0, 0.0]
    # rewards: 2*[-0.05, 0, 0] + [1, 0(None), 3] + [0, 1, 0] + 0.25 = [1.15, 1.25, 3.25]
    assert out.rewards == pytest.approx([1.15, 1.25, 3.25])
    # None rows are left out of the mean: (1 + 3) / 2 = 2.0
    assert out.component_means()["hard_len"] == 2.0
    assert out.correct == [False] * 3 and out.parsed == [None] * 3  # no correctness verifier


def test_all_none_mean_is_nan():
    with RewardComputer([{"name": "tests.reward_fns:only_even_rows"}]) as rc:
        out = run(rc, ["a", "b"], None, difficulty=["easy", "easy"])
    assert out.rewards == [0.0, 0.0]
    assert math.isnan(out.component_means()["tests.reward_fns:only_even_rows"])


@pytest.mark.parametrize(
    "name,message",
    [
        ("tests.no_such_module:f", "cannot import module"),
        ("tests.reward_fns:missing", "has no attribute"),
        ("tests.reward_fns:NOT_CALLABLE", "not callable"),
        ("tests.reward_fns:", "is not 'module.path:function'"),
        ("gsm9k", r"unknown verifier 'gsm9k' \(did you mean 'gsm8k'\?\); known: "),
        ("tests.broken_reward_module:f", "importing module 'tests.broken_reward_module' raised ZeroDivisionError: "
                                         "division by zero; fix that module"),
    ],
)
def test_bad_spec_names(name, message):
    # A spec is resolved, with the same message, without starting the worker pool (preflight's use).
    with pytest.raises(RewardError, match=message):
        check_reward_specs([{"name": name}])
    with pytest.raises(RewardError, match=message) as e:
        RewardComputer([{"name": name}])
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    "specs,message",
    [
        ([], "no reward specs"),
        ([{"name": "gsm8k", "weight": "high"}], "weight must be a finite number"),
        ([{"name": "gsm8k", "kwargs": {"mode": "strcit"}}], "mode must be one of"),
        ([{"name": "format", "kwargs": {"style": "xml"}}], "style must be one of"),
        ([{"name": "gsm8k", "wieght": 1.0}], "unknown keys"),
        ([{"name": "tests.reward_fns:scaled"}], "needs a 'format' or correctness"),  # with format_gated
    ],
)
def test_bad_specs(specs, message):
    with pytest.raises(RewardError, match=message):
        RewardComputer(specs, format_gated=message.startswith("needs"))


@pytest.mark.parametrize(
    "name,message",
    [
        ("tests.reward_fns:wrong_length", "returned 3 values for 2 completions"),
        ("tests.reward_fns:not_a_number", "each value must be a float or None"),
        # Named, with the exception and where it was raised, in one line.
        ("tests.reward_fns:reads_missing_column", r"^reward 'tests.reward_fns:reads_missing_column' raised KeyError: "
                                                  r"'score' \(at \S+/tests/reward_fns.py:\d+\); fix the function or "
                                                  r"remove it from reward.functions$"),
    ],
)
def test_custom_function_contract_errors(name, message):
    with RewardComputer([{"name": name}]) as rc:
        with pytest.raises(RewardError, match=message):
            run(rc, ["a", "b"], None)


def test_batch_shape_errors_and_empty_batch():
    with build_reward_fn([{"name": "gsm8k"}]) as rc:
        with pytest.raises(RewardError, match="answers has 1 rows but there are 2 completions"):
            rc(["p", "p"], ["a", "b"], [[1], [2]], ["1"])
        with pytest.raises(RewardError, match="answers is required"):
            rc(["p"], ["a"], [[1]], None)
        out = rc([], [], [], [])
    assert (out.rewards, out.correct, out.components) == ([], [], {"gsm8k": []})


def test_closed_computer_refuses_work():
    rc = build_reward_fn([{"name": "math"}])
    rc.close()
    with pytest.raises(RewardError, match="closed"):
        run(rc, ["#### 1"], ["1"])


def test_unpicklable_verifier_is_refused_up_front():
    def local_verifier(completion, ground_truth, **kwargs):  # not importable by a worker
        return VerifyResult(1.0)

    register_verifier("test_local_closure")(local_verifier)
    with pytest.raises(RewardError, match="cannot be sent to a worker process"):
        RewardComputer([{"name": "test_local_closure"}])
