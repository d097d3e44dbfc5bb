"""transformers `generate` behind the rollout interface, for environments without vLLM.

It samples from the training policy itself, so `load_weights` has nothing to copy."""

from __future__ import annotations

from typing import Iterable

import torch

from .base import RolloutBatch, RolloutEngine, SamplingConfig


class HFEngine(RolloutEngine):
    def __init__(self, policy, *, eos_token_id: int | None, pad_token_id: int | None):
        self.policy = policy
        self.eos_token_id = eos_token_id
        self.pad_token_id = pad_token_id if pad_token_id is not None else eos_token_id

    @torch.no_grad()
    def generate(self, prompt_ids: list[list[int]], sampling: SamplingConfig, seed: int) -> RolloutBatch:
        G = sampling.num_generations
        device = next(self.policy.parameters()).device
        width = max(len(p) for p in prompt_ids)
        # Left padding so every prompt ends at the same column and generation appends after it.
        input_ids = torch.full((len(prompt_ids), width), self.pad_token_id, dtype=torch.long)
        attention = torch.zeros_like(input_ids)
        for i, ids in enumerate(prompt_ids):
            input_ids[i, width - len(ids):] = torch.tensor(ids)
            attention[i, width - len(ids):] = 1
        torch.manual_seed(seed)
        was_training = self.policy.training
        self.policy.eval()
        out = self.policy.generate(
            input_ids=input_ids.to(device), attention_mask=attention.to(device), **_sampling_kwargs(sampling),
            max_new_tokens=sampling.max_tokens,
            num_return_sequences=G, eos_token_id=self.eos_token_id, pad_token_id=self.pad_token_id,
            output_scores=True, return_dict_in_generate=True)
        self.policy.train(was_training)
        new_tokens = out.sequences[:, width:].cpu()  # (B*G, T) group-major, as generate repeats each row G times
        # `scores` are the processed logits (after temperature/top-k/top-p) of each step.
        step_logp = torch.stack([torch.log_softmax(s.float(), dim=-1) for s in out.scores], dim=1).cpu()
        token_logp = step_logp.gather(-1, new_tokens.unsqueeze(-1)).squeeze(-1)
        completion_ids, logprobs, truncated = [], [], []
        for row, lp in zip(new_tokens.tolist(), token_logp.tolist()):
            n = row.index(self.eos_token_id) + 1 if self.eos_token_id in row else len(row)
            completion_ids.append(row[:n])
            logprobs.append(lp[:n])
            truncated.append(self.eos_token_id not in row[:n])
        return RolloutBatch(prompt_ids=[list(p) for p in prompt_ids], completion_ids=completion_ids,
                            logprobs=logprobs, truncated=truncated)

    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        pass  # generates with the live policy


def _sampling_kwargs(sampling: SamplingConfig) -> dict:
    if sampling.temperature == 0:  # greedy, as vLLM reads temperature 0
        return {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
    return {"do_sample": True, "temperature": sampling.temperature, "top_p": sampling.top_p,
            "top_k": sampling.top_k if sampling.top_k > 0 else None}
