"""transformers `generate` behind the rollout interface, for environments without vLLM.

It samples from the training policy itself, so `load_weights` has nothing to copy."""

from __future__ import annotations

from typing import Iterable

import torch

from transformers import StoppingCriteria, StoppingCriteriaList

from .base import RolloutBatch, RolloutEngine, SamplingConfig


class HFEngine(RolloutEngine):
    def __init__(self, policy, *, eos_token_id: int | None, pad_token_id: int | None, tokenizer=None):
        self.policy = policy
        self.eos_token_id = eos_token_id
        self.pad_token_id = pad_token_id if pad_token_id is not None else eos_token_id
        self.tokenizer = tokenizer  # needed only to find stop strings

    @torch.no_grad()
    def generate(self, prompt_ids: list[list[int]], sampling: SamplingConfig, seed: int,
                 max_tokens: list[int] | None = None) -> RolloutBatch:
        G = sampling.num_generations
        if sampling.stop and self.tokenizer is None:
            raise ValueError("the hf engine needs the tokenizer to stop at strings: make_engine(tokenizer=...)")
        limits = [sampling.max_tokens] * len(prompt_ids) if max_tokens is None else list(max_tokens)
        device = next(self.policy.parameters()).device
        width = max(len(p) for p in prompt_ids)
        # Left padding so every prompt ends at the same column and generation appends after it.
        input_ids = torch.full((len(prompt_ids), width), self.pad_token_id, dtype=torch.long)
        attention = torch.zeros_like(input_ids)
        for i, ids in enumerate(prompt_ids):
            input_ids[i, width - len(ids):] = torch.tensor(ids)
            attention[i, width - len(ids):] = 1
        stops = _StopStrings(self.tokenizer, sampling.stop, width) if sampling.stop else None
        torch.manual_seed(seed)
        was_training = self.policy.training
        self.policy.eval()
        out = self.policy.generate(
            input_ids=input_ids.to(device), attention_mask=attention.to(device), **_sampling_kwargs(sampling),
            max_new_tokens=max(limits), num_return_sequences=G, eos_token_id=self.eos_token_id,
            pad_token_id=self.pad_token_id, output_scores=True, return_dict_in_generate=True,
            **({"stopping_criteria": StoppingCriteriaList([stops])} if stops else {}))
        self.policy.train(was_training)
        new_tokens = out.sequences[:, width:].cpu()  # (B*G, T) group-major, as generate repeats each row G times
        # `scores` are the processed logits (after temperature/top-k/top-p) of each step.
        step_logp = torch.stack([torch.log_softmax(s.float(), dim=-1) for s in out.scores], dim=1).cpu()
        token_logp = step_logp.gather(-1, new_tokens.unsqueeze(-1)).squeeze(-1)
        completion_ids, logprobs, truncated = [], [], []
        for j, (row, lp) in enumerate(zip(new_tokens.tolist(), token_logp.tolist())):
            # The first of: EOS, the token completing a stop string, this prompt's limit. A row cut at
            # its own limit below the batch's longest matches what a per-prompt limit would sample:
            # later tokens never change earlier ones.
            limit = limits[j // G]
            n = row.index(self.eos_token_id) + 1 if self.eos_token_id in row else len(row)
            ended = self.eos_token_id in row[:limit]
            if stops is not None and stops.stopped_at.get(j, n + 1) <= min(n, limit):
                n, ended = stops.stopped_at[j], True
            n = min(n, limit)
            completion_ids.append(row[:n])
            logprobs.append(lp[:n])
            truncated.append(not ended)
        return RolloutBatch(prompt_ids=[list(p) for p in prompt_ids], completion_ids=completion_ids,
                            logprobs=logprobs, truncated=truncated)

    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        pass  # generates with the live policy


def _sampling_kwargs(sampling: SamplingConfig) -> dict:
    if sampling.temperature == 0:  # greedy, as vLLM reads temperature 0
        return {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
    return {"do_sample": True, "temperature": sampling.temperature, "top_p": sampling.top_p,
            "top_k": sampling.top_k if sampling.top_k > 0 else None}


class _StopStrings(StoppingCriteria):
    """Ends a row once the decoded tail of its generated tokens holds a stop string, and notes how
    many tokens it had then (the stop string's last token included). Only the last few tokens are
    decoded at each step: a stop string of k bytes spans at most k tokens (+1 for a token that
    carries other text before it)."""

    def __init__(self, tokenizer, stop: tuple[str, ...], prompt_width: int):
        self.tokenizer, self.stop, self.start = tokenizer, stop, prompt_width
        self.window = max(len(s.encode()) for s in stop) + 1
        self.stopped_at: dict[int, int] = {}

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        n = input_ids.shape[1] - self.start
        for j, row in enumerate(input_ids[:, max(self.start, input_ids.shape[1] - self.window):].tolist()):
            if j in self.stopped_at:
                done[j] = True
            elif any(s in self.tokenizer.decode(row) for s in self.stop):
                self.stopped_at[j], done[j] = n, True
        return done
