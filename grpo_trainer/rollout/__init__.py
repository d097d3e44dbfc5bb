"""Rollout engines: one interface (`RolloutEngine`), backends `vllm` and `hf`.

vLLM is imported only inside this package (`vllm_engine.py`), so the rest of the project imports
without it."""

from __future__ import annotations

from .base import RolloutBatch, RolloutEngine, SamplingConfig

__all__ = ["RolloutBatch", "RolloutEngine", "SamplingConfig", "make_engine"]


def make_engine(backend: str, *, model_path: str, policy=None, dtype: str = "float32", seed: int = 0,
                max_model_len: int = 1024, kv_cache_gib: float | str = 2.0, gpu_memory_utilization: float = 0.3,
                enforce_eager: bool = True, eos_token_id: int | None = None,
                pad_token_id: int | None = None, max_lora_rank: int | None = None,
                sleep: bool = False, tokenizer=None, kv_batch: tuple[int, int, int] | None = None) -> RolloutEngine:
    if backend == "vllm":
        from .vllm_engine import VLLMEngine

        return VLLMEngine(model_path, dtype=dtype, seed=seed, max_model_len=max_model_len,
                          kv_cache_gib=kv_cache_gib, gpu_memory_utilization=gpu_memory_utilization,
                          enforce_eager=enforce_eager, max_lora_rank=max_lora_rank, sleep=sleep, kv_batch=kv_batch)
    if backend == "hf":
        from .hf_engine import HFEngine

        if sleep:
            raise ValueError("rollout.sleep=true needs rollout.backend=vllm: the hf backend samples from the policy "
                             "itself, there is no engine memory to release; set rollout.sleep=false")
        if policy is None:
            raise ValueError("rollout.backend=hf needs the policy model (it samples from it directly)")
        return HFEngine(policy, eos_token_id=eos_token_id, pad_token_id=pad_token_id, tokenizer=tokenizer)
    raise ValueError(f"rollout.backend={backend!r} is unknown: use 'vllm' or 'hf'")
