"""LoRA: the reference is the base model, the weights pushed to vLLM are the merged ones.

(Training with LoRA through `accelerate launch`, and that only the adapters change, is tested
in tests/test_distributed.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from grpo_trainer.config import LoraConfig
from grpo_trainer.forward import completion_logprobs, pack
from grpo_trainer.lora import AdapterDisabled, wrap
from grpo_trainer.models import load_causal_lm
from grpo_trainer.weights import hf_name, iter_full_weights

PROMPT = [1, 520, 2300, 45, 98, 7, 311]
COMPLETIONS = [[40, 41, 42, 43, 2], [900, 17, 3]]


def _lora_policy(path: Path, r: int = 4, alpha: float = 8.0):
    policy = wrap(load_causal_lm(str(path)), LoraConfig(enabled=True, r=r, alpha=alpha,
                                                         target_modules=["q_proj", "v_proj", "down_proj"]), False)
    # peft starts B at 0 (the adapter is a no-op); make it a real update so the tests can fail.
    torch.manual_seed(7)
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    return policy


def _logprobs(model) -> torch.Tensor:
    mb = pack([0, 1], [PROMPT, PROMPT], COMPLETIONS, pad_id=0)
    with torch.no_grad():
        return completion_logprobs(model, mb, temperature=0.7)[0][mb.completion_mask]


def test_reference_is_the_base_model(tiny_llama: Path):
    base = load_causal_lm(str(tiny_llama))
    policy = _lora_policy(tiny_llama)
    ref = _logprobs(AdapterDisabled(policy))
    torch.testing.assert_close(ref, _logprobs(base), atol=1e-6, rtol=0)
    # ...and the adapters are on again outside the context: the policy is not the base.
    assert (_logprobs(policy) - ref).abs().max() > 1e-2
    # Only the adapters train; the base weights are frozen and there is no second copy of them.
    trainable = [n for n, p in policy.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_" in n for n in trainable)
    assert sum(p.numel() for p in policy.parameters()) < 1.1 * sum(p.numel() for p in base.parameters())


def test_pushed_weights_are_merged_under_hf_names(tiny_llama: Path):
    r, alpha = 4, 8.0
    policy = _lora_policy(tiny_llama, r, alpha)
    pushed = dict(iter_full_weights(policy))
    base = dict(load_causal_lm(str(tiny_llama)).named_parameters())
    assert set(pushed) == set(base)  # HF names: no base_model.model., no .base_layer, no lora_ tensors

    # One layer by hand: W + (alpha / r) * B @ A, scale 8 / 4 = 2.
    prefix = "base_model.model.model.layers.1.self_attn.q_proj"
    params = dict(policy.named_parameters())
    a, b = params[f"{prefix}.lora_A.default.weight"], params[f"{prefix}.lora_B.default.weight"]
    expected = base["model.layers.1.self_attn.q_proj.weight"] + 2.0 * b @ a
    torch.testing.assert_close(pushed["model.layers.1.self_attn.q_proj.weight"], expected, atol=1e-6, rtol=0)
    # Untargeted weights go through unchanged.
    assert torch.equal(pushed["model.layers.1.self_attn.k_proj.weight"], base["model.layers.1.self_attn.k_proj.weight"])
    # The merged network scores like the policy itself.
    merged = load_causal_lm(str(tiny_llama))
    merged.load_state_dict(pushed, strict=False)
    torch.testing.assert_close(_logprobs(merged), _logprobs(policy), atol=1e-4, rtol=0)


def test_hf_name():
    assert hf_name("base_model.model.model.layers.0.mlp.up_proj.base_layer.weight") == "model.layers.0.mlp.up_proj.weight"
    assert hf_name("model.norm.weight") == "model.norm.weight"


@pytest.mark.slow
def test_vllm_scores_like_the_lora_policy_after_push(tiny_llama: Path):
    from grpo_trainer.rollout import SamplingConfig, make_engine

    engine = make_engine("vllm", model_path=str(tiny_llama), dtype="float32", seed=0, max_model_len=128,
                         kv_cache_gib=1)
    policy = _lora_policy(tiny_llama)
    engine.load_weights(iter_full_weights(policy))
    batch = engine.generate([PROMPT], SamplingConfig(num_generations=2, max_tokens=10, temperature=0.7), seed=5)
    mb = pack([0, 1], [PROMPT, PROMPT], batch.completion_ids, pad_id=0)
    with torch.no_grad():
        ours = completion_logprobs(policy, mb, temperature=0.7)[0]
    for i, c in enumerate(batch.completion_ids):
        torch.testing.assert_close(ours[i, :len(c)], torch.tensor(batch.logprobs[i]), atol=1e-3, rtol=0)
    engine.close()


@pytest.mark.slow
def test_vllm_lora_adapter_scores_like_the_lora_policy(tiny_llama: Path, tmp_path: Path):
    # The alternative to the merged push (scripts/bench_lora_sync.py measures both): vLLM serving
    # the saved peft adapter must sample from the same policy.
    from grpo_trainer.rollout import SamplingConfig, make_engine

    engine = make_engine("vllm", model_path=str(tiny_llama), dtype="float32", seed=0, max_model_len=128,
                         kv_cache_gib=0.25, max_lora_rank=8)  # vLLM allows 1, 8, 16, ...; r=4 fits
    policy = _lora_policy(tiny_llama)
    policy.save_pretrained(tmp_path / "adapter")
    engine.load_lora_adapter(str(tmp_path / "adapter"))
    batch = engine.generate([PROMPT], SamplingConfig(num_generations=2, max_tokens=10, temperature=0.7), seed=5)
    mb = pack([0, 1], [PROMPT, PROMPT], batch.completion_ids, pad_id=0)
    with torch.no_grad():
        ours = completion_logprobs(policy, mb, temperature=0.7)[0]
        base = completion_logprobs(AdapterDisabled(policy), mb, temperature=0.7)[0]
    assert max((ours[i, :len(c)] - base[i, :len(c)]).abs().max() for i, c in enumerate(batch.completion_ids)) > 1e-2
    for i, c in enumerate(batch.completion_ids):
        torch.testing.assert_close(ours[i, :len(c)], torch.tensor(batch.logprobs[i]), atol=1e-3, rtol=0)
    engine.load_lora_adapter(str(tmp_path / "adapter"))  # a new id each load: vLLM caches adapters by id
    assert engine.lora_request.lora_int_id == 2
    engine.close()
