"""KL to the reference inside the trainer: as a reward penalty, the adaptive beta controller and
the periodic reference reset. HF rollout backend on a tiny random model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from grpo_trainer import algo
from grpo_trainer.config import load_config

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _importable_tests(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO))


def make_trainer(tiny_llama, out, *extra):
    from grpo_trainer.trainer import GRPOTrainer

    cfg = load_config(None, [
        f"model.name_or_path={tiny_llama}", f"trainer.output_dir={out}", "rollout.backend=hf",
        "rollout.num_generations=4", "rollout.max_completion_length=6", "trainer.prompts_per_step=2",
        "trainer.max_steps=3", "data.num_examples=32", "trainer.learning_rate=1e-2", "trainer.log_samples_every=0",
        "reward.functions=[{name: 'tests.reward_fns:even_token_fraction', weight: 1.0}]", *extra])
    return GRPOTrainer(cfg)


def test_reward_kl_and_adaptive_beta(tiny_llama, tmp_path):
    tr = make_trainer(tiny_llama, tmp_path / "run", "algorithm.beta=0.1", "algorithm.kl_mode=reward",
                      "algorithm.kl_target=1e-6")
    betas = []
    for step in (1, 2):
        tr.step = step
        before = tr.beta
        m = tr.train_step()
        # The controller's rule applied to the KL this step measured.
        assert tr.beta == algo.adaptive_kl_beta(before, m["train/kl"], 1e-6)
        betas.append(tr.beta)
    # Step 1 samples from the reference itself: KL 0 < target/1.5, so beta halves. After a large
    # update the policy has moved far past the tiny target: beta doubles.
    assert betas[0] == pytest.approx(0.05)
    assert betas[1] == pytest.approx(0.1)
    tr.reward_fn.close()


def test_reference_reset_copies_the_policy(tiny_llama, tmp_path):
    tr = make_trainer(tiny_llama, tmp_path / "run", "algorithm.beta=0.1", "algorithm.ref_reset_every=2")
    policy = tr.acc.unwrap_model(tr.model)
    tr.step = 1
    tr.train_step()
    moved = [not torch.equal(p, r) for p, r in zip(policy.parameters(), tr.ref.parameters())]
    assert any(moved)  # after one update the reference is still the base model
    tr.step = 2
    tr.train_step()  # step 2 is a reset step: the reference catches up
    for p, r in zip(policy.parameters(), tr.ref.parameters()):
        assert torch.equal(p, r)
    tr.reward_fn.close()
