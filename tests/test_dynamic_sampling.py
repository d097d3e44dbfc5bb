"""DAPO dynamic sampling inside the trainer: groups whose rewards all agree are dropped and fresh
prompts sampled until the batch is full, within the cap on generation rounds. Uses the HF rollout
backend on a tiny random model (what the completions say does not matter: the reward comes from
the dataset's `kind` column)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from grpo_trainer.config import load_config
from grpo_trainer.data import PromptSampler

REPO = Path(__file__).resolve().parents[1]
P, G = 2, 4


def make_data(path: Path, kinds: list[str]) -> Path:
    rows = [{"question": f"What is {i} plus one?", "answer": f"#### {i + 1}", "kind": k} for i, k in enumerate(kinds)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def trainer_for(tiny_llama, data: Path, out: Path, mode: str, max_rounds: int,
                rewards: str = "[{name: 'tests.reward_fns:by_kind', weight: 1.0}]"):
    from grpo_trainer.trainer import GRPOTrainer

    cfg = load_config(None, [
        f"model.name_or_path={tiny_llama}", f"data.source={data}", f"trainer.output_dir={out}",
        "rollout.backend=hf", f"rollout.num_generations={G}", "rollout.max_completion_length=6",
        f"trainer.prompts_per_step={P}", "trainer.max_steps=1", f"algorithm.dynamic_sampling={mode}",
        f"algorithm.max_gen_rounds={max_rounds}", "trainer.log_samples_every=0",
        f"reward.functions={rewards}"])
    return GRPOTrainer(cfg)


def expected_rounds(kinds: list[str], seed: int, max_rounds: int) -> tuple[int, int]:
    """Replay the prompt sampler: rounds until P informative groups, and groups filtered."""
    sampler, kept, rounds, filtered = PromptSampler(len(kinds), seed=seed), 0, 0, 0
    while True:
        rounds += 1
        batch = sampler.next_batch(P)
        kept += sum(kinds[i] == "mixed" for i in batch)
        filtered += sum(kinds[i] != "mixed" for i in batch)
        if kept >= P or rounds >= max_rounds:
            return rounds, filtered


@pytest.fixture(autouse=True)
def _importable_tests(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO))


def test_refill_drops_agreeing_groups_until_full(tiny_llama, tmp_path):
    kinds = ["right", "wrong", "right", "wrong", "mixed", "right", "wrong", "mixed", "wrong", "right", "mixed", "right"]
    tr = trainer_for(tiny_llama, make_data(tmp_path / "d.jsonl", kinds), tmp_path / "run", "refill", 10)
    rounds, filtered = expected_rounds(kinds, seed=0, max_rounds=10)
    assert rounds >= 2  # the data makes a refill necessary
    tr.step = 1
    m = tr.train_step()
    assert m["dynamic/gen_rounds"] == rounds
    assert m["dynamic/filtered_groups"] == filtered
    assert m["dynamic/generated_groups"] == rounds * P
    assert m["groups/zero_variance_frac"] == pytest.approx(filtered / (rounds * P))
    assert m["train/rows_trained"] > 0  # trained on the informative groups it found
    tr.reward_fn.close()


def test_refill_honours_the_round_cap(tiny_llama, tmp_path):
    kinds = ["right", "wrong"] * 6  # nothing informative anywhere
    tr = trainer_for(tiny_llama, make_data(tmp_path / "d.jsonl", kinds), tmp_path / "run", "refill", 3)
    tr.step = 1
    m = tr.train_step()
    assert m["dynamic/gen_rounds"] == 3
    assert m["dynamic/filtered_groups"] == 3 * P
    assert m["train/rows_trained"] == 0.0  # all advantages are 0: nothing to learn, no crash
    tr.reward_fn.close()


def test_refill_filters_on_correctness_not_on_the_shaped_reward(tiny_llama, tmp_path):
    """DAPO eq. 11 drops a group unless 0 < |correct| < G. The tiny random model never writes a
    correct '#### N', so every group is all wrong, although the shaping term (the share of even
    token ids) makes the rewards differ within each: all are dropped, round after round."""
    kinds = ["mixed"] * 12
    tr = trainer_for(tiny_llama, make_data(tmp_path / "d.jsonl", kinds), tmp_path / "run", "refill", 2,
                     rewards="[{name: gsm8k, weight: 1.0}, {name: 'tests.reward_fns:even_token_fraction', weight: 0.5}]")
    tr.step = 1
    m = tr.train_step()
    assert m["reward/accuracy"] == 0.0 and m["reward/std"] > 0  # the rewards do differ
    assert m["dynamic/gen_rounds"] == 2 and m["dynamic/filtered_groups"] == 2 * P
    tr.reward_fn.close()


def test_upweight_scales_the_surviving_groups(tiny_llama, tmp_path):
    kinds = ["mixed", "right"] * 6
    tr = trainer_for(tiny_llama, make_data(tmp_path / "d.jsonl", kinds), tmp_path / "run", "upweight", 3)
    first = PromptSampler(len(kinds), seed=0).next_batch(P)
    informative = sum(kinds[i] == "mixed" for i in first)
    tr.step = 1
    m = tr.train_step()
    assert m["dynamic/gen_rounds"] == 1
    assert m["dynamic/upweight"] == (pytest.approx(P / informative) if informative else 0.0)
    tr.reward_fn.close()
