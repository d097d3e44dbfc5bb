"""The rollout interface every backend implements: sample G completions per prompt, with the
token ids and the sampling log-probs, and take new policy weights after an optimizer step."""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Iterable

import torch


@dataclass
class SamplingConfig:
    num_generations: int  # G
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    # Strings that end a sample, kept in its ids (a tool call's closing marker, rollout/multiturn.py).
    stop: tuple[str, ...] = ()


@dataclass
class RolloutBatch:
    """What an engine returns, as plain lists; the trainer turns it into a rollout record
    (record.py) once. Completions are group-major: rows [i*G:(i+1)*G] are the G samples of prompt i."""

    prompt_ids: list[list[int]]  # (B,) token ids of each prompt
    completion_ids: list[list[int]]  # (B*G,) sampled token ids, EOS included when produced
    logprobs: list[list[float]]  # (B*G,) sampling log-prob of each completion token
    truncated: list[bool]  # (B*G,) True when the length limit, not EOS, ended the sample
    # Multi-turn tool use (rollout/multiturn.py) only; None for single-turn samples:
    tool_mask: list[list[bool]] | None = None  # (B*G,) per token: True = written by a tool, not the policy
    tool_counts: list[tuple[int, int, int, int]] | None = None  # (B*G,) (turns, calls, errors, timeouts)

    @property
    def group_size(self) -> int:
        return len(self.completion_ids) // max(len(self.prompt_ids), 1)

    def row_prompts(self) -> list[list[int]]:
        """The prompt of every completion row, (B*G,)."""
        G = self.group_size
        return [self.prompt_ids[i // G] for i in range(len(self.completion_ids))]

    @property
    def num_tokens(self) -> int:
        return sum(len(c) for c in self.completion_ids)


class RolloutEngine(abc.ABC):
    @abc.abstractmethod
    def generate(self, prompt_ids: list[list[int]], sampling: SamplingConfig, seed: int,
                 max_tokens: list[int] | None = None) -> RolloutBatch:
        """Sample `sampling.num_generations` completions for each prompt.

        `seed` makes the draw reproducible: the same weights, prompts and seed give the same
        completions (which is what exact resume relies on). `max_tokens`: a length limit per
        prompt instead of `sampling.max_tokens` (multi-turn rows have different budgets left).
        A sample that produces one of `sampling.stop` ends there, the stop string's tokens kept."""

    @abc.abstractmethod
    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Replace the engine's weights by the policy's (HF parameter names, full tensors)."""

    def sleep(self) -> None:
        """Release the engine's accelerator memory until the next `load_weights`, which restores it
        (vLLM's sleep mode, rollout.sleep). Backends with nothing to release do nothing."""

    def close(self) -> None:
        """Free the engine's memory."""

