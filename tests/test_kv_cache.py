"""rollout.kv_cache_gib=auto: the KV cache one step's samples need at once (rollout/kv_cache.py)."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest

from grpo_trainer.rollout.kv_cache import BLOCK_TOKENS, auto_kv_cache_gib, kv_bytes_per_token

SMOLLM2_135M = SimpleNamespace(num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3, hidden_size=576)


def test_bytes_per_token_by_hand():
    # 30 layers x (keys + values) x 3 KV heads x 64 dims x 4 bytes
    assert kv_bytes_per_token(SMOLLM2_135M, 4) == 46_080
    assert kv_bytes_per_token(SMOLLM2_135M, 2) == 23_040
    # head_dim given explicitly (not hidden / heads), no GQA field: every head keeps keys and values
    cfg = SimpleNamespace(num_hidden_layers=2, num_attention_heads=4, hidden_size=128, head_dim=48)
    assert kv_bytes_per_token(cfg, 4) == 2 * 2 * 4 * 48 * 4
    assert kv_bytes_per_token(SimpleNamespace(hidden_size=128), 4) is None
    assert auto_kv_cache_gib(None, 4, 4, 8, 147, 128) is None


def test_auto_size_by_hand():
    # The bench's step: 4 GSM8K prompts (longest 147 tokens) x 8 samples x 128 tokens. vLLM's null
    # block, each prompt's one full block shared, each sample 128/128 + 1 = 2 blocks of its own:
    # 1 + 4 + 64 = 69 blocks.
    assert auto_kv_cache_gib(SMOLLM2_135M, 4, 4, 8, 147, 128) == pytest.approx(69 * 128 * 46_080 / 2**30)
    assert auto_kv_cache_gib(SMOLLM2_135M, 4, 4, 8, 147, 128) == pytest.approx(0.37903, abs=1e-5)
    # 300-token prompts: 2 full blocks each; 130 tokens: ceil(130/128) + 1 = 3 blocks per sample.
    assert auto_kv_cache_gib(SMOLLM2_135M, 4, 2, 4, 300, 130) == pytest.approx((1 + 2 * 2 + 8 * 3) * 128 * 46_080
                                                                               / 2**30)


def _peak_batch(engine, prompts: list[list[int]], G: int, max_tokens: int) -> tuple[int, int]:
    """(most sequences vLLM ran at once, how many times it preempted one for want of KV blocks)
    while sampling G x max_tokens (EOS ignored) for each prompt. Reads vLLM's scheduler
    (in-process engine): its queue and its preemptions are what the cache size decides (vLLM
    admits a sequence on its prompt's blocks and preempts one when a later token finds none)."""
    from vllm import SamplingParams

    scheduler = engine.llm.llm_engine.engine_core.engine_core.scheduler
    schedule, preempt, running, preempted = scheduler.schedule, scheduler._preempt_request, [0], [0]

    def counted_schedule(*args, **kwargs):
        out = schedule(*args, **kwargs)
        running[0] = max(running[0], len(scheduler.running))
        return out

    def counted_preempt(*args, **kwargs):
        preempted[0] += 1
        return preempt(*args, **kwargs)

    scheduler.schedule, scheduler._preempt_request = counted_schedule, counted_preempt
    try:
        outs = engine.llm.generate([{"prompt_token_ids": p} for p in prompts],
                                   SamplingParams(n=G, max_tokens=max_tokens, ignore_eos=True), use_tqdm=False)
    finally:
        scheduler.schedule, scheduler._preempt_request = schedule, preempt
    assert all(len(o.token_ids) == max_tokens for r in outs for o in r.outputs)
    return running[0], preempted[0]


@pytest.mark.slow
def test_vllm_samples_the_whole_step_at_once_in_the_auto_cache(tiny_llama: Path):
    """The sizing's claims on vLLM itself: in the auto-sized cache every sample of the step runs at
    once, none preempted; the step's need, counted by hand with prompt blocks shared under prefix
    caching, is exact: in it plus vLLM's null block nothing is preempted, in one block less vLLM
    preempts samples."""
    from grpo_trainer.rollout import make_engine

    G, max_tokens = 4, 130
    prompts = [[5 + i % 900 for i in range(300)], [7 + i % 800 for i in range(140)]]
    max_len = 300 + max_tokens
    per_block = BLOCK_TOKENS * 1024  # 2 layers x 2 x 2 KV heads x 32 dims x 4 bytes = 1 KiB a token

    def run(gib=None) -> tuple[int, int]:
        engine = make_engine("vllm", model_path=str(tiny_llama), dtype="float32", seed=0, max_model_len=max_len,
                             kv_cache_gib=gib or "auto", kv_batch=(len(prompts), G, max_tokens))
        try:
            if gib is None:  # 1 + 2*2 + 8*3 blocks
                assert engine.kv_cache_gib == pytest.approx(29 * per_block / 2**30)
            return _peak_batch(engine, prompts, G, max_tokens)
        finally:
            engine.close()

    assert run() == (len(prompts) * G, 0)
    # 300 tokens share 2 full blocks, 140 one; every sample's own part (44 + 129, 12 + 129 tokens
    # with keys and values: its last token is sampled, never fed back) fills 2 blocks: 3 + 16.
    need = 2 + 1 + len(prompts) * G * math.ceil((44 + max_tokens - 1) / BLOCK_TOKENS)
    assert need == 19
    assert run((need + 1) * per_block / 2**30) == (len(prompts) * G, 0)
    assert run(need * per_block / 2**30)[1] > 0
