"""The rollout record: one step's samples as padded tensors, built once from the engine's output
and read by scoring, advantages, dynamic sampling, the update and logging.

Group-major: B groups of G samples, N = B*G rows; rows [g*G:(g+1)*G] are the samples of group g.
Each group's prompt is stored once (`prompt_ids[g]`); `group[i]` names row i's group, so the
micro-batch planner (forward.py) keeps a group together without comparing prompts.

Per token (N, C), right-padded: the completion ids, the engine's log-probs, the loss mask and
the advantages. The loss mask says which tokens the policy generated and is trained on: every real
token of a row unless the row is filtered out of the loss (DAPO overlong filtering), less the
tokens a tool wrote in a multi-turn rollout (`tool_mask`, rollout/multiturn.py): those get no
log-prob, advantage, KL or entropy term, though the policy attends to them. Advantages are per token so
that a token-level estimator can fill them; sequence-level ones are broadcast over the row.

The engine hands over Python lists (`RolloutBatch`); they become tensors here, once. Later stages
derive new records with `dataclasses.replace` (the shape checks run again).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from grpo_trainer.rollout.base import RolloutBatch


def _check(name: str, t: torch.Tensor, shape: tuple, dtype: torch.dtype) -> None:
    if tuple(t.shape) != shape or t.dtype != dtype:
        raise ValueError(f"RolloutRecord.{name}: expected {dtype} {shape}, got {t.dtype} {tuple(t.shape)}")


@dataclass(frozen=True)
class RolloutRecord:
    group_size: int  # G
    pad_id: int
    example_idx: torch.Tensor  # (B,) long: the data set row each group's prompt was rendered from
    prompt_ids: torch.Tensor  # (B, P) long, right-padded with pad_id
    prompt_lens: torch.Tensor  # (B,) long
    group: torch.Tensor  # (N,) long: row -> its group
    completion_ids: torch.Tensor  # (N, C) long, right-padded with pad_id; EOS included when sampled
    completion_lens: torch.Tensor  # (N,) long
    loss_mask: torch.Tensor  # (N, C) bool: a token the policy generated and is trained on
    logprobs: torch.Tensor  # (N, C) float32: the engine's sampling log-prob of each token, 0 at padding
    truncated: torch.Tensor  # (N,) bool: finish reason; True = the length limit, not EOS, ended the sample
    texts: list[str]  # (N,) the completions decoded once (special tokens skipped)
    # Multi-turn tool use only (None otherwise):
    tool_mask: torch.Tensor | None = None  # (N, C) bool: a token a tool wrote (a tool message), not the policy
    tool_counts: torch.Tensor | None = None  # (N, 4) long: generation turns, tool calls, errors, timeouts
    # Filled by scoring (scoring.py):
    rewards: torch.Tensor | None = None  # (N,) float32: the reward trained on
    components: dict[str, torch.Tensor] = field(default_factory=dict)  # label -> (N,) float32, NaN = no opinion
    correct: torch.Tensor | None = None  # (N,) bool
    formatted: torch.Tensor | None = None  # (N,) bool
    num_timeouts: int = 0  # verifications stopped at their time bound
    parsed: list[str | None] | None = None  # (N,) what the correctness verifier extracted (for the sample log)
    # Filled after the advantage estimator:
    advantages: torch.Tensor | None = None  # (N, C) float32, 0 at padding

    def __post_init__(self):
        B, P = self.prompt_ids.shape
        N, C = self.completion_ids.shape
        if self.group_size < 1 or N != B * self.group_size or C < 1:
            raise ValueError(f"RolloutRecord: {N} rows, {B} groups of {self.group_size} and width {C}: need "
                             f"N = B*G and C >= 1")
        for name, shape, dtype in (("example_idx", (B,), torch.long), ("prompt_ids", (B, P), torch.long),
                                   ("prompt_lens", (B,), torch.long), ("group", (N,), torch.long),
                                   ("completion_lens", (N,), torch.long), ("loss_mask", (N, C), torch.bool),
                                   ("logprobs", (N, C), torch.float32), ("truncated", (N,), torch.bool)):
            _check(name, getattr(self, name), shape, dtype)
        for name, shape, dtype in (("tool_mask", (N, C), torch.bool), ("tool_counts", (N, 4), torch.long),
                                   ("rewards", (N,), torch.float32), ("correct", (N,), torch.bool),
                                   ("formatted", (N,), torch.bool), ("advantages", (N, C), torch.float32)):
            if getattr(self, name) is not None:
                _check(name, getattr(self, name), shape, dtype)
        for label, scores in self.components.items():
            _check(f"components[{label!r}]", scores, (N,), torch.float32)
        if len(self.texts) != N:
            raise ValueError(f"RolloutRecord.texts: expected {N} texts, got {len(self.texts)}")
        if self.parsed is not None and len(self.parsed) != N:
            raise ValueError(f"RolloutRecord.parsed: expected {N} entries, got {len(self.parsed)}")
        if bool((self.loss_mask & ~self.valid).any()):
            raise ValueError("RolloutRecord.loss_mask marks padding positions; only real tokens can be trained on")
        if self.tool_mask is not None and bool((self.loss_mask & self.tool_mask).any()):
            raise ValueError("RolloutRecord.loss_mask marks tool tokens; only the policy's tokens can be trained on")

    # ------------------------------------------------------------------ building
    @classmethod
    def from_engine(cls, batch: RolloutBatch, example_idx: list[int], tokenizer) -> "RolloutRecord":
        """The engine's output as a record, decoded once; every real token in the loss."""
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        return cls.from_batch(batch, example_idx, pad, tokenizer.batch_decode(batch.completion_ids,
                                                                              skip_special_tokens=True))

    @classmethod
    def from_batch(cls, batch: RolloutBatch, example_idx: list[int], pad: int, texts: list[str]) -> "RolloutRecord":
        """The engine's lists as tensors (`texts`: the completions decoded); every real token the
        policy sampled in the loss (tool tokens, when the batch has a tool mask, are not)."""
        G, N = batch.group_size, len(batch.completion_ids)
        prompt_lens = torch.tensor([len(p) for p in batch.prompt_ids], dtype=torch.long)
        lens = torch.tensor([len(c) for c in batch.completion_ids], dtype=torch.long)
        prompt_ids = torch.full((len(batch.prompt_ids), max(prompt_lens.tolist(), default=1)), pad, dtype=torch.long)
        completion_ids = torch.full((N, max(lens.tolist() + [1])), pad, dtype=torch.long)
        logprobs = torch.zeros(completion_ids.shape, dtype=torch.float32)
        for g, p in enumerate(batch.prompt_ids):
            prompt_ids[g, :len(p)] = torch.tensor(p, dtype=torch.long)
        for i, (c, lp) in enumerate(zip(batch.completion_ids, batch.logprobs)):
            completion_ids[i, :len(c)] = torch.tensor(c, dtype=torch.long)
            logprobs[i, :len(lp)] = torch.tensor(lp, dtype=torch.float32)
        valid = torch.arange(completion_ids.shape[1])[None] < lens[:, None]
        tool_mask = tool_counts = None
        if batch.tool_mask is not None:
            tool_mask = torch.zeros(completion_ids.shape, dtype=torch.bool)
            for i, m in enumerate(batch.tool_mask):
                tool_mask[i, :len(m)] = torch.tensor(m, dtype=torch.bool)
            tool_counts = torch.tensor(batch.tool_counts, dtype=torch.long).view(N, 4)
        return cls(group_size=G, pad_id=pad, example_idx=torch.tensor(example_idx, dtype=torch.long),
                   prompt_ids=prompt_ids, prompt_lens=prompt_lens, group=torch.arange(N) // G,
                   completion_ids=completion_ids, completion_lens=lens,
                   loss_mask=valid if tool_mask is None else valid & ~tool_mask, logprobs=logprobs,
                   truncated=torch.tensor(batch.truncated, dtype=torch.bool), texts=list(texts),
                   tool_mask=tool_mask, tool_counts=tool_counts)

    # ------------------------------------------------------------------ views
    @property
    def num_groups(self) -> int:
        return self.prompt_ids.shape[0]

    @property
    def num_rows(self) -> int:
        return self.completion_ids.shape[0]

    @property
    def num_tokens(self) -> int:
        return int(self.completion_lens.sum())

    @property
    def valid(self) -> torch.Tensor:  # (N, C) bool: real (non-padding) completion tokens
        return torch.arange(self.completion_ids.shape[1])[None] < self.completion_lens[:, None]

    @property
    def policy_tokens(self) -> torch.Tensor:  # (N, C) bool: real tokens the policy sampled (not a tool's)
        return self.valid if self.tool_mask is None else self.valid & ~self.tool_mask

    @property
    def in_loss(self) -> torch.Tensor:  # (N,) bool: rows with at least one trained token
        return self.loss_mask.any(dim=1)

    def completion_lists(self) -> list[list[int]]:
        """Token ids per row as lists: the reward-function contract (TRL's `completion_ids`)."""
        return [ids[:n].tolist() for ids, n in zip(self.completion_ids, self.completion_lens.tolist())]

    # ------------------------------------------------------------------ derived records
    def with_advantages(self, per_sequence: torch.Tensor) -> "RolloutRecord":
        """Sequence-level advantages (N,) broadcast over each row's policy tokens (0 at a tool's)."""
        adv = torch.where(self.policy_tokens, per_sequence.to(torch.float32)[:, None],
                          torch.zeros((), dtype=torch.float32))
        return replace(self, advantages=adv)

    def without_rows_in_loss(self, drop: torch.Tensor) -> "RolloutRecord":
        """drop: (N,) bool; those rows give no loss and do not count in the normalisers."""
        return replace(self, loss_mask=self.loss_mask & ~drop[:, None])

    def select_groups(self, groups: list[int]) -> "RolloutRecord":
        """The record of the given groups, in the given order (padding widths kept)."""
        G = self.group_size
        g = torch.tensor(groups, dtype=torch.long)
        rows = (g[:, None] * G + torch.arange(G)[None]).flatten()
        return _take(self, g, rows)

    @staticmethod
    def concat(records: list["RolloutRecord"]) -> "RolloutRecord":
        """Records of the same G (and reward labels) one after the other, padded to the widest."""
        first = records[0]
        P = max(r.prompt_ids.shape[1] for r in records)
        C = max(r.completion_ids.shape[1] for r in records)
        def cat(name: str, width: int | None = None, value=0) -> torch.Tensor:
            return torch.cat([_pad(getattr(r, name), width, value) for r in records])

        opt = lambda name, width=None: None if getattr(first, name) is None else cat(name, width)  # noqa: E731
        offsets = [0]
        for r in records[:-1]:
            offsets.append(offsets[-1] + r.num_groups)
        return RolloutRecord(
            group_size=first.group_size, pad_id=first.pad_id, example_idx=cat("example_idx"),
            prompt_ids=cat("prompt_ids", P, first.pad_id), prompt_lens=cat("prompt_lens"),
            group=torch.cat([r.group + o for r, o in zip(records, offsets)]),
            completion_ids=cat("completion_ids", C, first.pad_id), completion_lens=cat("completion_lens"),
            loss_mask=cat("loss_mask", C), logprobs=cat("logprobs", C), truncated=cat("truncated"),
            texts=[t for r in records for t in r.texts], tool_mask=opt("tool_mask", C), tool_counts=opt("tool_counts"),
            rewards=opt("rewards"),
            components={k: torch.cat([r.components[k] for r in records]) for k in first.components},
            correct=opt("correct"), formatted=opt("formatted"), num_timeouts=sum(r.num_timeouts for r in records),
            advantages=opt("advantages", C),
            parsed=None if first.parsed is None else [p for r in records for p in (r.parsed or [None] * r.num_rows)])


def _pad(t: torch.Tensor, width: int | None, value) -> torch.Tensor:
    if width is None or t.shape[1] == width:
        return t
    out = torch.full((t.shape[0], width), value, dtype=t.dtype)
    out[:, :t.shape[1]] = t
    return out


def _take(r: RolloutRecord, groups: torch.Tensor, rows: torch.Tensor) -> RolloutRecord:
    pick = lambda t: None if t is None else t[rows]  # noqa: E731
    return replace(r, example_idx=r.example_idx[groups], prompt_ids=r.prompt_ids[groups],
                   prompt_lens=r.prompt_lens[groups], group=torch.arange(len(rows)) // r.group_size,
                   completion_ids=r.completion_ids[rows], completion_lens=r.completion_lens[rows],
                   loss_mask=r.loss_mask[rows], logprobs=r.logprobs[rows], truncated=r.truncated[rows],
                   texts=[r.texts[i] for i in rows.tolist()], tool_mask=pick(r.tool_mask),
                   tool_counts=pick(r.tool_counts), rewards=pick(r.rewards),
                   components={k: v[rows] for k, v in r.components.items()}, correct=pick(r.correct),
                   formatted=pick(r.formatted), advantages=pick(r.advantages),
                   parsed=None if r.parsed is None else [r.parsed[i] for i in rows.tolist()],
                   # a sub-record keeps no share of the timeouts: they were counted where scored
                   num_timeouts=r.num_timeouts if len(rows) == r.num_rows else 0)

