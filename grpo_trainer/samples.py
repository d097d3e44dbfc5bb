"""The rows of `samples.jsonl`: a few of a step's samples with what scored them and, per token,
what the update saw (read by `python -m grpo_trainer.inspect`).

Per token, over the row's real completion tokens: the token as text, its advantage, the engine's
sampling log-prob, the trainer's log-prob of it under the same weights (from the update's own
forward: null when the row was not trained, e.g. advantage 0 with zero-advantage rows skipped),
the entropy of the trainer's distribution there, whether the ratio's clip acted on it, and the
loss mask (false: not trained on, e.g. DAPO's overlong filter).
"""

from __future__ import annotations

import math

from grpo_trainer.record import RolloutRecord


def sample_rows(step: int, max_steps: int, every: int, count: int, record: RolloutRecord) -> list[int]:
    """The rows to log this step: the first `count`, every `every` steps and at the last step."""
    if every <= 0 or (step % every and step != max_steps):
        return []
    return list(range(min(count, record.num_rows)))


def sample_records(record: RolloutRecord, rows: list[int], prompts, tokenizer, captured: dict) -> list[dict]:
    """One dict per row. `captured`: PolicyUpdater.captured (row -> per-token trainer values)."""
    out = []
    for i in rows:
        idx = int(record.example_idx[record.group[i]])
        example, n = prompts.examples[idx], int(record.completion_lens[i])
        ids = record.completion_ids[i, :n].tolist()
        cap = captured.get(i)
        adv = record.advantages[i, :n] if record.advantages is not None else None
        out.append({
            "question": example["question"], "gold": example["gold"], "completion": record.texts[i],
            "reward": record.rewards[i].item(), "truncated": bool(record.truncated[i]),
            "prompt": prompts.texts[idx], "group": int(record.group[i]),
            "components": {k: _finite(v[i].item()) for k, v in record.components.items()},
            "parsed": record.parsed[i] if record.parsed is not None else None,
            "correct": None if record.correct is None else bool(record.correct[i]),
            "formatted": None if record.formatted is None else bool(record.formatted[i]),
            # Sequence-level estimators broadcast one value over the row: its first token's.
            "advantage": None if adv is None or n == 0 else adv[0].item(),
            "tokens": [tokenizer.decode([t]) for t in ids],
            "token_advantages": None if adv is None else adv.tolist(),
            "engine_logp": record.logprobs[i, :n].tolist(),
            "trainer_logp": None if cap is None else cap["trainer_logp"].tolist(),
            "entropy": None if cap is None else cap["entropy"].tolist(),
            "clipped": None if cap is None else cap["clipped"].tolist(),
            "loss_mask": record.loss_mask[i, :n].tolist(),
        })
    return out


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None  # NaN: that reward function gave no opinion
