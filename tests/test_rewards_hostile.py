"""Hostile completions and hanging verifiers: nothing crashes, every call returns within the
time bound, nothing hostile scores 1, and the pool keeps working after a worker is killed."""

import os
import signal
import time

import pytest

from grpo_trainer.rewards import VerifyResult, build_reward_fn, register_verifier

TIMEOUT_S = 1.0
# Killing a worker, reaping it and spawning its replacement (Process.start returns before the
# replacement imports anything) plus scheduler noise on a loaded 2-core box.
SLACK_S = 1.0


# Module-level verifiers: spawned workers import this module to find them.
@register_verifier("test_sleeps_10s")
def sleeps_10s(completion, ground_truth, **kwargs):
    time.sleep(10)  # interrupted by the worker's own timer
    return VerifyResult(1.0, "late", True)


@register_verifier("test_masks_alarm")
def masks_alarm(completion, ground_truth, **kwargs):
    # Like C code that never returns to the interpreter: the worker's timer cannot stop it,
    # only the parent's kill can.
    if "HANG" in completion:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
        time.sleep(10)
    return VerifyResult(1.0 if completion == ground_truth else 0.0, completion, True)


@register_verifier("test_rearms_alarm")
def rearms_alarm(completion, ground_truth, **kwargs):
    # Installs its own SIGALRM handler and a 5 s alarm, as libraries with signal-based timeouts
    # do (math-verify's default parsing_timeout=5): the worker's timer is gone.
    signal.signal(signal.SIGALRM, lambda *a: None)
    signal.alarm(5)
    time.sleep(10)
    return VerifyResult(1.0, None, True)


@register_verifier("test_exits")
def exits(completion, ground_truth, **kwargs):
    os._exit(3)


@pytest.fixture(scope="module")
def rc():
    specs = [
        {"name": "gsm8k"},
        {"name": "gsm8k", "kwargs": {"mode": "flexible"}, "label": "flexible"},
        {"name": "math"},
        {"name": "format", "label": "fmt_gsm8k"},
        {"name": "format", "kwargs": {"style": "think_answer"}, "label": "fmt_think"},
    ]
    with build_reward_fn(specs, timeout_s=TIMEOUT_S) as computer:
        yield computer


QUESTION = "Ann has 40 apples and gets 2 more. Worked example: 40+2=<<40+2=42>>42\n#### 42\n"
NESTED_FRAC = "\\frac{" * 500 + "1" + "}{2}" * 500
HOSTILE = {
    "1MB_of_text": "blah " * 200_000 + "#### 7",
    "1MB_no_answer": "x" * 1_000_000,
    "1MB_of_digits": "9" * 1_000_000,
    "10000_nested_braces": "{" * 10_000 + "}" * 10_000,
    "10000_nested_braces_boxed": "\\boxed{" + "{" * 10_000 + "}" * 10_000 + "}",
    "tower_plain": "The answer is 10^10^10^10",
    "tower_latex": "The answer is $10^{10^{10^{10}}}$",
    "tower_after_hashes": "#### 10^10^10^10",
    "tower_boxed": "$\\boxed{7^{7^{10}}}$",
    "frac_500_deep_boxed": "$\\boxed{" + NESTED_FRAC + "}$",
    "frac_500_deep_hashes": "#### " + NESTED_FRAC,
    "nul_bytes": "\x00" * 100_000 + "#### 7\x00",
    "lone_surrogates": "\ud800\udfff" * 50_000 + "#### \ud83d 7",
    "many_hashes": "#### " * 100_000,
    "huge_fraction": "#### 1" + "0" * 3000 + "/" + "3" * 900,
    # The completion echoes a question that holds '#### 42', then answers wrongly.
    "echo_then_sentence": QUESTION + "Let me think. 5 + 2 = 7. So the answer is 7.",
    "echo_then_hashes": QUESTION + "Let me think. 5 + 2 = 7.\n#### 7",
    "echo_then_boxed": QUESTION + "So the answer is $\\boxed{7}$.",
}
# Which hostile completions still end in a well-formed '#### number' line (hand-checked): the
# ones ending in "#### 7", "#### 10^10^10^10" (starts with 10) and "#### 1000.../333...".
# Not "#### \ud83d 7": the surrogate becomes "?", and the format wants the number right
# after '####'.
GSM8K_FORMATTED = {"1MB_of_text", "nul_bytes", "echo_then_hashes", "tower_after_hashes", "huge_fraction"}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_completion(rc, name):
    rc.wait_ready()  # time the verification, not a worker respawned by an earlier case
    t0 = time.monotonic()
    out = rc(["What is 40 + 2?"], [HOSTILE[name]], [[0]], ["#### 42"])
    wall = time.monotonic() - t0
    assert wall <= TIMEOUT_S + SLACK_S, wall
    for label in ("gsm8k", "flexible", "math"):
        assert out.components[label] == [0.0], label
    assert out.correct == [False]
    assert out.components["fmt_gsm8k"] == [1.0 if name in GSM8K_FORMATTED else 0.0]
    assert out.components["fmt_think"] == [0.0]
    # Only the format reward can remain: weight 1 x format 1.
    assert out.rewards == [1.0 if name in GSM8K_FORMATTED else 0.0]


def test_nul_and_surrogates_do_not_hide_a_right_answer(rc):
    out = rc(["q", "q"], ["\x00" * 10 + "#### 4\x002", "\udcff#### 42"], [[0], [0]], ["42", "42"])
    # NULs are dropped ("4\x002" reads 42) and a lone surrogate becomes "?": both right.
    assert out.components["gsm8k"] == [1.0, 1.0]


def test_hostile_batch_runs_in_parallel_within_bound(rc):
    rc.wait_ready()
    batch = [HOSTILE["tower_latex"], "#### 42", HOSTILE["tower_plain"], "$\\boxed{42}$"]
    t0 = time.monotonic()
    out = rc(["q"] * 4, batch, [[0]] * 4, ["42"] * 4)
    wall = time.monotonic() - t0
    # Two slow math tasks on two workers run side by side: one timeout, not two.
    assert wall <= TIMEOUT_S + SLACK_S, wall
    assert out.components["math"] == [0.0, 1.0, 0.0, 1.0]
    assert out.components["gsm8k"] == [0.0, 1.0, 0.0, 0.0]


def test_sleeping_verifier_is_cut_and_next_call_works():
    with build_reward_fn([{"name": "test_sleeps_10s"}, {"name": "math"}], timeout_s=TIMEOUT_S) as rc:
        rc.wait_ready()
        t0 = time.monotonic()
        out = rc(["q"], ["$\\boxed{5}$"], [[0]], ["5"])
        assert time.monotonic() - t0 <= TIMEOUT_S + SLACK_S
        assert out.components == {"test_sleeps_10s": [0.0], "math": [1.0]}
        assert out.num_timeouts == 1
        # Cut by the worker's own timer: the worker lived, nothing was respawned.
        assert rc.pool_restarts == 0
        out = rc(["q"], ["$\\boxed{6}$"], [[0]], ["5"])
        assert out.components == {"test_sleeps_10s": [0.0], "math": [0.0]}


def test_a_verifiers_module_is_imported_before_its_first_task_is_timed():
    import tests.slow_import_verifier  # noqa: F401 - registers test_slow_import (0.7 s import)

    with build_reward_fn([{"name": "test_slow_import"}], timeout_s=TIMEOUT_S, num_workers=1) as rc:
        rc.wait_ready()
        # 0.4 s of work fits the 0.8 s soft bound. Imported on unpickling the first task, the
        # module would have kept the worker silent for 0.7 + 0.4 s, past the parent's 1 s kill.
        out = rc(["q", "q"], ["7", "8"], [[0]] * 2, ["7", "7"])
        assert out.num_timeouts == 0 and rc.pool_restarts == 0
        assert out.rewards == [1.0, 0.0]


@pytest.mark.parametrize("name,completion", [("test_masks_alarm", "HANG"), ("test_rearms_alarm", "x")])
def test_unstoppable_verifier_is_killed_and_pool_replaced(name, completion):
    with build_reward_fn([{"name": name}], timeout_s=TIMEOUT_S) as rc:
        rc.wait_ready()
        t0 = time.monotonic()
        out = rc(["q"], [completion], [[0]], ["HANG"])
        assert time.monotonic() - t0 <= TIMEOUT_S + SLACK_S
        assert out.rewards == [0.0] and out.num_timeouts == 1
        assert rc.pool_restarts == 1
        if name == "test_masks_alarm":
            out = rc(["q"] * 2, ["ok", "no"], [[0]] * 2, ["ok", "ok"])
            assert out.rewards == [1.0, 0.0]


def test_kills_mid_batch_keep_results_in_order():
    with build_reward_fn([{"name": "test_masks_alarm"}], timeout_s=TIMEOUT_S, num_workers=2) as rc:
        rc.wait_ready()
        completions = ["a", "HANG", "b", "c", "HANG", "d", "e", "f"]
        answers = ["a", "HANG", "x", "c", "HANG", "d", "x", "f"]
        t0 = time.monotonic()
        out = rc(["q"] * 8, completions, [[0]] * 8, answers)
        wall = time.monotonic() - t0
        # The hangs score 0 although they "match"; the rest keep their own scores.
        assert out.rewards == [1.0, 0.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0]
        assert out.num_timeouts == 2 and rc.pool_restarts == 2
        # At worst the two hangs run one after the other on the same worker.
        assert wall <= 2 * TIMEOUT_S + SLACK_S, wall


def test_worker_that_exits_scores_zero_and_is_replaced():
    with build_reward_fn([{"name": "test_exits"}, {"name": "math"}], timeout_s=TIMEOUT_S) as rc:
        out = rc(["q"], ["$\\boxed{1}$"], [[0]], ["1"])
        assert out.components == {"test_exits": [0.0], "math": [1.0]}
        assert out.num_errors == 1 and rc.pool_restarts == 1
        out = rc(["q"], ["$\\boxed{2}$"], [[0]], ["1"])
        assert out.components == {"test_exits": [0.0], "math": [0.0]}
