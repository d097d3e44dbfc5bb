"""TRL-style reward functions for the reward tests, written the way a TRL user writes them:
keyword arguments, extra dataset columns through **kwargs, one float (or None) per completion."""

import os
import time
from pathlib import Path


def length_penalty(completions, **kwargs):
    # -0.01 per character over 20.
    return [-0.01 * max(0, len(c) - 20) for c in completions]


def only_even_rows(prompts, completions, completion_ids, difficulty, **kwargs):
    # An opinion only where the dataset column says "hard"; None elsewhere.
    return [float(len(ids)) if d == "hard" else None for ids, d in zip(completion_ids, difficulty)]


def echoes_answer_column(completions, answer, **kwargs):
    return [1.0 if a.split("####")[-1].strip() in c else 0.0 for c, a in zip(completions, answer)]


def scaled(completions, scale=1.0, **kwargs):
    return [scale] * len(completions)


def wrong_length(completions, **kwargs):
    return [1.0] * (len(completions) + 1)


def not_a_number(completions, **kwargs):
    return ["high"] * len(completions)


NOT_CALLABLE = 3


def even_token_fraction(completions, completion_ids, **kwargs):
    # For trainer tests on random tiny models: a reward that varies within every group, so the
    # advantages (and hence the update) are non-zero whatever the model says.
    return [sum(1 for t in ids if t % 2 == 0) / max(len(ids), 1) for ids in completion_ids]


def first_token_even(completions, completion_ids, **kwargs):
    # 0/1 per sample on random tiny models: groups pass 0, 1/4, ..., all of the time (the
    # pass-rate filter's tests).
    return [float(bool(ids) and ids[0] % 2 == 0) for ids in completion_ids]


def by_kind(completions, completion_ids, kind, **kwargs):
    # Dynamic-sampling tests: "right"/"wrong" prompts give all-equal groups (filtered out),
    # "mixed" prompts give varying rewards.
    table = {"right": lambda ids: 1.0, "wrong": lambda ids: 0.0,
             "mixed": lambda ids: sum(1 for t in ids if t % 2 == 0) / max(len(ids), 1)}
    return [table[k](ids) for ids, k in zip(completion_ids, kind)]


def always_nan(completions, **kwargs):
    # "No opinion" on every sample: a reward that gives the run nothing to learn from.
    return [float("nan")] * (len(completions) - 1) + [float("inf")]


_calls = {"n": 0}


def fails_on_second_call(completions, completion_ids, **kwargs):
    # Step 1 scores (so a checkpoint is written), step 2 raises: a run dies mid-way with a
    # checkpoint on disk. The counter is per process: each run of the tests is a fresh fork.
    _calls["n"] += 1
    if _calls["n"] >= 2:
        return [len(ids) / 0 for ids in completion_ids]
    return even_token_fraction(completions, completion_ids)


def reads_missing_column(completions, **kwargs):
    # Expects a dataset column the data does not have: a KeyError inside user code.
    return [float(s) for s in kwargs["score"]]


def even_token_fraction_gated(completions, completion_ids, **kwargs):
    # even_token_fraction that, while the file named by $GRPO_TEST_GATE exists, holds the step in
    # the middle (after sampling, before the update) so a test can signal it there for sure; it
    # writes <gate>.held first so the test knows. Without the variable it is even_token_fraction.
    gate = os.environ.get("GRPO_TEST_GATE")
    if gate and Path(gate).exists():
        Path(gate + ".held").touch()
        end = time.monotonic() + 60
        while Path(gate).exists() and time.monotonic() < end:
            time.sleep(0.01)
    return even_token_fraction(completions, completion_ids)
