"""Resumable, seeded, epoch-shuffling sampler of prompt indices, shardable across processes.

Every process runs the same global stream: epoch e is a permutation of range(num_examples)
from random.Random(seed + e); the epochs are concatenated, so a batch that reaches the end of
an epoch is completed from the start of the next one (no short batches, nothing skipped).
next_batch(k) takes the next k * world_size indices of that stream (the global batch) and
returns this rank's slice [rank*k : (rank+1)*k]. Ranks therefore get disjoint shares that
together cover the global batch, with no communication.

The state (seed, epoch, position in the epoch) is global, so every rank holds the same state
and a checkpoint taken on one rank resumes all of them, even with a different world_size.
"""

from __future__ import annotations

import random


class PromptSampler:
    def __init__(self, num_examples: int, seed: int = 0, rank: int = 0, world_size: int = 1):
        if num_examples <= 0:
            raise ValueError(f"num_examples must be positive, got {num_examples}; load some prompts first")
        if world_size <= 0 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank} world_size={world_size}")
        self.num_examples = num_examples
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.position = 0  # index into the current epoch's permutation
        self._perm_epoch = -1
        self._perm: list[int] = []

    def _permutation(self) -> list[int]:
        if self._perm_epoch != self.epoch:
            perm = list(range(self.num_examples))
            # random.Random(int) and shuffle are stable across Python versions and platforms.
            random.Random(self.seed + self.epoch).shuffle(perm)
            self._perm, self._perm_epoch = perm, self.epoch
        return self._perm

    def next_batch(self, k: int) -> list[int]:
        """This rank's k indices of the next global batch of k * world_size indices."""
        total = k * self.world_size
        if k <= 0:
            raise ValueError(f"batch size k must be positive, got {k}")
        if total > self.num_examples:
            raise ValueError(
                f"global batch k*world_size={total} exceeds the {self.num_examples} prompts, so a step "
                f"would repeat prompts; lower the batch size or load more prompts"
            )
        batch: list[int] = []
        while len(batch) < total:
            perm = self._permutation()
            take = min(total - len(batch), self.num_examples - self.position)
            batch.extend(perm[self.position:self.position + take])
            self.position += take
            if self.position == self.num_examples:
                self.epoch += 1
                self.position = 0
        return batch[self.rank * k:(self.rank + 1) * k]

    def state_dict(self) -> dict[str, int]:
        return {"seed": self.seed, "epoch": self.epoch, "position": self.position,
                "num_examples": self.num_examples}

    def load_state_dict(self, state: dict[str, int]) -> None:
        n = state.get("num_examples", self.num_examples)
        if n != self.num_examples:
            raise ValueError(
                f"sampler state is for {n} prompts but {self.num_examples} are loaded; "
                f"resume with the same dataset, num_examples and max_prompt_length"
            )
        if not 0 <= state["position"] < self.num_examples or state["epoch"] < 0:
            raise ValueError(f"invalid sampler state {state}; position must be in [0, {self.num_examples})")
        self.seed = int(state["seed"])
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])
