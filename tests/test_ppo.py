"""PPO with a learned critic (critic.py) on a tiny random Llama: the critic's values through the
shared-prompt forward equal the flat one's and transformers' own token-classification forward of
the saved critic/; bad configurations get one line; two steps of the PPO recipe under vLLM."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from grpo_trainer.config import ConfigError, load_config
from grpo_trainer.critic import load_value_model
from grpo_trainer.forward import completion_values, pack
from test_e2e import REPO, launch, read_metrics, tiny_overrides

PROMPTS = [[5, 6, 7, 8, 9], [11, 12, 13]]
COMPLETIONS = [[20, 21, 22, 23], [24, 25], [30, 31, 32], [33]]


def values(model, share_prompt: bool) -> torch.Tensor:  # (4, 4), 0 at padding
    mb = pack([0, 1, 2, 3], [PROMPTS[0], PROMPTS[0], PROMPTS[1], PROMPTS[1]], COMPLETIONS, pad_id=0)
    with torch.no_grad():
        v = completion_values(model, mb, share_prompt)
    return torch.where(mb.completion_mask, v, torch.zeros(()))


def test_critic_values_shared_prompt_flat_and_transformers_agree(tiny_llama: Path, tmp_path: Path):
    from transformers import AutoModelForTokenClassification

    critic = load_value_model(str(tiny_llama))
    assert values(critic, True).abs().max() == 0  # a fresh head is 0: V = 0 everywhere
    with torch.no_grad():
        critic.backbone.score.weight.normal_(0, 0.1, generator=torch.Generator().manual_seed(0))
    shared, flat = values(critic, True), values(critic, False)
    assert shared.abs().max() > 0.1
    assert torch.allclose(shared, flat, rtol=1e-5, atol=1e-5)
    # Saved as the checkpoint saves it, the critic loads in plain transformers, where the value of
    # the state before completion token t sits at the position just before it.
    critic.backbone.save_pretrained(tmp_path / "critic")
    hf = AutoModelForTokenClassification.from_pretrained(tmp_path / "critic").eval()
    assert hf.config.num_labels == 1 and hf.config.classifier_dropout == 0.0
    for row, (p, c) in enumerate([(0, 0), (0, 1), (1, 2), (1, 3)]):
        ids = torch.tensor([PROMPTS[p] + COMPLETIONS[c]])
        with torch.no_grad():
            v = hf(input_ids=ids).logits[0, :, 0]
        n, lp = len(COMPLETIONS[c]), len(PROMPTS[p])
        assert torch.allclose(v[lp - 1:lp - 1 + n], shared[row, :n], rtol=1e-5, atol=1e-5)
    # ... and back in as model.critic_path: the head is read, not reset.
    again = load_value_model(str(tmp_path / "critic"))
    assert torch.allclose(values(again, True), shared, atol=1e-6)


@pytest.mark.parametrize("overrides, message", [
    (["algorithm.advantage=gae"], "algorithm.advantage='gae' learns a value function: set critic.enabled=true"),
    (["critic.enabled=true"], "critic.enabled=true but algorithm.advantage='grpo' does not use a critic"),
    (["algorithm.advantage=gae", "critic.enabled=true", "algorithm.gamma=1.5"],
     "algorithm.gamma=1.5 is out of range: expected a float in (0, 1]"),
    (["algorithm.advantage=gae", "critic.enabled=true", "algorithm.gamma=0"],
     "algorithm.gamma=0.0 is out of range: expected a float in (0, 1]"),
    (["algorithm.advantage=gae", "critic.enabled=true", "algorithm.lam=2"], "algorithm.lam=2.0 is out of range"),
    (["trainer.critic_warmup=2"], "trainer.critic_warmup=2 needs a critic"),
])
def test_bad_ppo_configs_are_one_line(overrides, message):
    with pytest.raises(ConfigError) as exc:
        load_config(None, overrides)
    assert str(exc.value).startswith(message) and "\n" not in str(exc.value)


def test_gae_with_one_sample_per_prompt_is_fine():
    cfg = load_config(None, ["algorithm.advantage=gae", "critic.enabled=true", "rollout.num_generations=1"])
    assert cfg.rollout.num_generations == 1


@pytest.mark.slow
def test_ppo_recipe_two_steps_under_vllm(tiny_llama: Path, tmp_path: Path):
    run = tmp_path / "run"
    proc = launch(["--recipe", str(REPO / "recipes/ppo_synthetic_smollm2.yaml"), *tiny_overrides(tiny_llama, run, 2),
                   "rollout.num_generations=2", "trainer.mixed_precision=no", "rollout.dtype=null",
                   "critic.learning_rate=1e-3", "trainer.eval_every=0",
                   # InstructGPT-style: -beta * KL_t to the reference in every token's reward
                   "algorithm.beta=0.05", "algorithm.kl_mode=reward"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = read_metrics(run)
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:
        for key in ("critic/value_loss", "critic/grad_norm", "critic/return_mean", "critic/value_mean",
                    "time/critic", "train/loss", "train/grad_norm", "mismatch/kl"):
            assert isinstance(r[key], float) and math.isfinite(r[key]), (key, r[key])
        assert r["critic/grad_norm"] > 0 and r["mismatch/kl"] < 1e-3  # fp32 engine and trainer agree
    # The reference is the starting policy: the k1 estimate is ~0 at step 1 (engine vs trainer rounding
    # only) and clearly not once trained (a 16-sample k1 mean may have either sign).
    assert abs(rows[0]["train/kl"]) < 1e-4 and abs(rows[1]["train/kl"]) > 1e-3, [r["train/kl"] for r in rows]
    assert rows[0]["critic/value_mean"] == 0.0  # the head starts at 0 ...
    assert rows[1]["critic/value_mean"] != 0.0  # ... and learned in step 1
    assert (run / "checkpoint-000002" / "critic" / "model.safetensors").is_file()
