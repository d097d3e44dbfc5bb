"""Resumable, seeded, epoch-shuffling sampler of prompt indices, shardable across processes.

Every process runs the same global stream: epoch e is a permutation of range(num_examples)
from random.Random(seed + e); the epochs are concatenated, so a batch that reaches the end of
an epoch is completed from the start of the next one (no short batches, nothing skipped).
next_batch(k) takes the next k * world_size indices of that stream (the global batch) and
returns this rank's slice [rank*k : (rank+1)*k]. Ranks therefore get disjoint shares that
together cover the global batch, with no communication.

The state (seed, epoch, position in the epoch) is global, so every rank holds the same state
and a checkpoint taken on one rank resumes all of them, even with a different world_size.

Difficulty filtering (data.pass_rate_filter, an online curriculum): after each step the trainer
reports every prompt's pass rate of that step, from all ranks (`observe`); a prompt whose rate lies
outside [low, high] is passed over by the stream for the next `cooldown` steps and the batch is
filled from the prompts after it (over-sampling, so batches stay full). Passed-over prompts lose
their turn in this epoch. The skip table is global state too, saved with the rest, so ranks stay
disjoint and a resumed run draws the same prompts. If fewer prompts than a global batch are left
unskipped, that batch ignores the filter rather than stall.
"""

from __future__ import annotations

import random


class PromptSampler:
    def __init__(self, num_examples: int, seed: int = 0, rank: int = 0, world_size: int = 1,
                 pass_rate_band: tuple[float, float] | None = None, cooldown: int = 0):
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
        self.band = None if pass_rate_band is None else (float(pass_rate_band[0]), float(pass_rate_band[1]))
        self.cooldown = cooldown
        self.step = 0  # the last step observed: the next batches are for step + 1
        self.skip_until: dict[int, int] = {}  # prompt -> the last step it is passed over in
        self.passed_over = 0  # prompts passed over since the last observe (a metric)

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
        skip = {i for i, until in self.skip_until.items() if until > self.step}
        if skip and self.num_examples - len(skip) >= total:
            while len(batch) < total:
                i = self._permutation()[self.position]
                self._advance(1)
                if i in skip:
                    self.passed_over += 1
                else:
                    batch.append(i)
            return batch[self.rank * k:(self.rank + 1) * k]
        while len(batch) < total:
            perm = self._permutation()
            take = min(total - len(batch), self.num_examples - self.position)
            batch.extend(perm[self.position:self.position + take])
            self._advance(take)
        return batch[self.rank * k:(self.rank + 1) * k]

    def _advance(self, n: int) -> None:
        self.position += n
        if self.position == self.num_examples:
            self.epoch += 1
            self.position = 0

    def observe(self, step: int, prompts: list[int], pass_rates: list[float]) -> dict[str, float]:
        """Step `step`'s pass rate of each prompt drawn (every rank's, in the same order on all):
        those outside the band are passed over through step + cooldown. Returns the step's
        data/* metrics."""
        self.step = step
        if self.band is not None:
            low, high = self.band
            for i, rate in zip(prompts, pass_rates):
                if not low <= rate <= high:
                    self.skip_until[int(i)] = step + self.cooldown
        self.skip_until = {i: until for i, until in self.skip_until.items() if until > step}
        metrics = {"data/pass_rate": sum(pass_rates) / len(pass_rates) if pass_rates else float("nan"),
                   "data/skipped_prompts": float(len(self.skip_until)), "data/passed_over": float(self.passed_over)}
        self.passed_over = 0
        return metrics

    def state_dict(self) -> dict:
        state = {"seed": self.seed, "epoch": self.epoch, "position": self.position, "num_examples": self.num_examples}
        if self.band is not None:  # JSON object keys are strings: the skip table as [prompt, until] pairs
            state.update(step=self.step, skip_until=sorted([i, until] for i, until in self.skip_until.items()))
        return state

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
        self.step = int(state.get("step", 0))
        self.skip_until = {int(i): int(until) for i, until in state.get("skip_until", [])}
