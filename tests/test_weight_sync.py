"""After a weight push, the vLLM engine scores a fixed completion like the trainer's model does."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from grpo_trainer.forward import completion_logprobs, pack
from grpo_trainer.models import load_causal_lm
from grpo_trainer.rollout import SamplingConfig, make_engine
from grpo_trainer.weights import iter_full_weights


@pytest.mark.slow
@pytest.mark.parametrize("eager", [True, False], ids=["eager", "compiled"])
def test_vllm_logprobs_match_trainer_after_sync(tiny_llama: Path, eager: bool):
    # Compiled (rollout.enforce_eager=false), the pushed weights must reach the compiled graph too.
    engine = make_engine("vllm", model_path=str(tiny_llama), dtype="float32", seed=0, max_model_len=128,
                         kv_cache_gib=1, enforce_eager=eager)
    # The "trained" policy: the same architecture with other weights.
    policy = load_causal_lm(str(tiny_llama))
    torch.manual_seed(123)
    with torch.no_grad():
        for p in policy.parameters():
            if p.dim() > 1:
                p.add_(torch.randn_like(p) * 0.1)
    prompt = [1, 520, 2300, 45, 98, 7, 311]
    sampling = SamplingConfig(num_generations=2, max_tokens=10, temperature=0.7)

    def trainer_logprobs(batch):
        mb = pack(list(range(2)), [prompt, prompt], batch.completion_ids, pad_id=0)
        with torch.no_grad():
            logp, _ = completion_logprobs(policy, mb, temperature=0.7)
        return [logp[i, :len(c)] for i, c in enumerate(batch.completion_ids)]

    stale = engine.generate([prompt], sampling, seed=5)
    stale_gap = max((trainer_logprobs(stale)[i] - torch.tensor(stale.logprobs[i])).abs().max().item()
                    for i in range(2))
    assert stale_gap > 1e-2  # before the push the engine still samples from the old weights

    engine.load_weights(iter_full_weights(policy))
    fresh = engine.generate([prompt], sampling, seed=5)
    for i, ours in enumerate(trainer_logprobs(fresh)):
        theirs = torch.tensor(fresh.logprobs[i])
        assert ours.shape == theirs.shape
        torch.testing.assert_close(ours, theirs, atol=1e-3, rtol=0)
    engine.close()


@pytest.mark.slow
def test_bf16_engine_samples_in_fp32_on_a_cpu_without_native_bf16(tiny_llama: Path):
    from grpo_trainer.hardware import cpu_has_native_bf16

    engine = make_engine("vllm", model_path=str(tiny_llama), dtype="bfloat16", seed=0, max_model_len=128,
                         kv_cache_gib=1)
    try:
        expected = torch.bfloat16 if torch.cuda.is_available() or cpu_has_native_bf16() else torch.float32
        assert engine.llm.llm_engine.model_config.dtype == expected
    finally:
        engine.close()


def _engine_params(engine) -> dict[str, torch.Tensor]:
    [params] = engine.llm.collective_rpc(
        lambda worker: {n: p.detach().clone() for n, p in worker.model_runner.get_model().named_parameters()})
    return params


@pytest.mark.slow
def test_weights_cast_before_a_bf16_push_equal_vllms_own_conversion(tiny_llama: Path, monkeypatch):
    """The push casts fp32 weights to the engine's bf16 itself (half the bytes, no per-tensor
    warning): the engine must end up holding exactly what its own loader made of the same fp32
    checkpoint at start-up."""
    # A bf16 engine even on a CPU without native bf16 (slow there, but the model is tiny).
    monkeypatch.setattr("grpo_trainer.rollout.vllm_engine.cpu_has_native_bf16", lambda: True)
    engine = make_engine("vllm", model_path=str(tiny_llama), dtype="bfloat16", seed=0, max_model_len=128,
                         kv_cache_gib=1)
    assert engine.weight_dtype == torch.bfloat16
    loaded = _engine_params(engine)  # vLLM's conversion of the fp32 checkpoint
    policy = load_causal_lm(str(tiny_llama))  # the same fp32 weights, in the trainer
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(1.0)
    engine.load_weights(iter_full_weights(policy))
    moved = _engine_params(engine)
    assert not all(torch.equal(loaded[k], moved[k]) for k in loaded)  # the push reached the engine
    policy = load_causal_lm(str(tiny_llama))
    engine.load_weights(iter_full_weights(policy))
    pushed = _engine_params(engine)
    assert loaded.keys() == pushed.keys() and all(p.dtype == torch.bfloat16 for p in pushed.values())
    assert all(torch.equal(loaded[k], pushed[k]) for k in loaded), [k for k in loaded
                                                                    if not torch.equal(loaded[k], pushed[k])]
    engine.close()


@pytest.mark.slow
def test_the_engine_leaves_torchs_thread_count_to_the_trainer(tiny_llama: Path):
    """vLLM's CPU worker swaps torch.set_num_threads for a no-op that warns; the engine puts the real
    one back, so trainer.torch_threads holds in a process that also samples."""
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        engine = make_engine("vllm", model_path=str(tiny_llama), dtype="float32", seed=0, max_model_len=128,
                             kv_cache_gib=1)
        assert torch.get_num_threads() == 1
        torch.set_num_threads(2)
        assert torch.get_num_threads() == 2
        engine.generate([[1, 520, 2300]], SamplingConfig(num_generations=1, max_tokens=4, temperature=1.0), seed=0)
        assert torch.get_num_threads() == 2
        engine.close()
    finally:
        torch.set_num_threads(before)
