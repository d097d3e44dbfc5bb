"""The rollout record (grpo_trainer/record.py): built once from the engine's lists, group-major,
padded with lengths; selecting and joining groups keeps every row's data together; micro-batches
packed from it (by group index) are the ones packed from plain lists (by prompt value)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from grpo_trainer.forward import micro_batches, pack, record_micro_batches
from grpo_trainer.record import RolloutRecord
from grpo_trainer.rollout import RolloutBatch

PAD = 0
PROMPTS = [[5, 6, 7], [11, 12, 13, 14, 15]]
COMPLETIONS = [[21, 22], [23], [24, 25, 26, 27], [28, 29, 30]]  # G = 2: rows 0-1 prompt 0, rows 2-3 prompt 1
LOGPROBS = [[-0.5, -1.5], [-2.0], [-0.1, -0.2, -0.3, -0.4], [-1.0, -1.0, -1.0]]


def record() -> RolloutRecord:
    batch = RolloutBatch(PROMPTS, COMPLETIONS, LOGPROBS, [False, True, False, True])
    return RolloutRecord.from_batch(batch, [7, 3], PAD, ["a", "b", "c", "d"])


def test_built_once_as_padded_tensors():
    r = record()
    assert (r.num_groups, r.num_rows, r.num_tokens) == (2, 4, 10)
    assert r.group.tolist() == [0, 0, 1, 1] and r.example_idx.tolist() == [7, 3]
    assert r.prompt_ids.tolist() == [[5, 6, 7, PAD, PAD], [11, 12, 13, 14, 15]] and r.prompt_lens.tolist() == [3, 5]
    assert r.completion_ids[1].tolist() == [23, PAD, PAD, PAD] and r.completion_lens.tolist() == [2, 1, 4, 3]
    assert r.loss_mask.sum(dim=1).tolist() == [2, 1, 4, 3]  # every sampled token is trained on
    assert r.logprobs[0].tolist() == [-0.5, -1.5, 0.0, 0.0]
    assert r.completion_lists() == COMPLETIONS


def test_shapes_are_checked_on_every_derived_record():
    r = record()
    with pytest.raises(ValueError, match=r"RolloutRecord.rewards: expected torch.float32 \(4,\)"):
        dataclasses.replace(r, rewards=torch.zeros(3))
    with pytest.raises(ValueError, match="loss_mask marks padding"):
        dataclasses.replace(r, loss_mask=torch.ones(4, 4, dtype=torch.bool))


def test_sequence_advantages_are_broadcast_over_real_tokens():
    adv = record().with_advantages(torch.tensor([1.0, -2.0, 0.5, 0.0])).advantages
    assert adv.tolist() == [[1.0, 1.0, 0.0, 0.0], [-2.0, 0.0, 0.0, 0.0], [0.5] * 4, [0.0] * 4]


def test_filtered_rows_leave_the_loss():
    r = record()
    r = r.without_rows_in_loss(r.truncated)
    assert r.in_loss.tolist() == [True, False, True, False] and r.loss_mask.sum().item() == 6


def test_select_and_concat_keep_rows_with_their_group():
    r = dataclasses.replace(record(), rewards=torch.tensor([1.0, 2.0, 3.0, 4.0]),
                            components={"x": torch.tensor([0.1, 0.2, 0.3, torch.nan])})
    swapped = r.select_groups([1, 0])
    assert swapped.example_idx.tolist() == [3, 7] and swapped.texts == ["c", "d", "a", "b"]
    assert swapped.rewards.tolist() == [3.0, 4.0, 1.0, 2.0] and swapped.group.tolist() == [0, 0, 1, 1]
    narrow = r.select_groups([0])  # keeps the record's width (4): concat pads to the widest anyway
    joined = RolloutRecord.concat([narrow, swapped])
    assert joined.group.tolist() == [0, 0, 1, 1, 2, 2] and joined.example_idx.tolist() == [7, 3, 7]
    assert joined.completion_lists() == [COMPLETIONS[0], COMPLETIONS[1], *COMPLETIONS[2:], *COMPLETIONS[:2]]
    assert torch.equal(joined.logprobs[2], r.logprobs[2]) and joined.components["x"][3].isnan()


def test_record_micro_batches_are_the_plain_list_ones():
    r = record()
    rows = [3, 0, 1, 2]
    from_lists = micro_batches(rows, [PROMPTS[i // 2] for i in range(4)], COMPLETIONS, PAD, micro_batch_size=3)
    from_record = record_micro_batches(r, rows, micro_batch_size=3)
    assert [mb.rows for mb in from_record] == [mb.rows for mb in from_lists] == [[1, 0, 3], [2]]  # shorter prompt first, rows by length
    for a, b in zip(from_record, from_lists):
        for name in ("prompt_ids", "prompt_mask", "prompt_index", "completion_ids", "completion_mask", "loss_mask"):
            assert torch.equal(getattr(a, name), getattr(b, name)), name
    # Two groups with equal prompts stay two groups: the record does not compare prompt tokens.
    same = RolloutRecord.from_batch(RolloutBatch([PROMPTS[0], PROMPTS[0]], COMPLETIONS, LOGPROBS, [False] * 4),
                                    [0, 1], PAD, [""] * 4)
    assert record_micro_batches(same, [0, 1, 2, 3], 4)[0].prompt_ids.shape[0] == 2
    assert pack([0, 1, 2, 3], [PROMPTS[0]] * 4, COMPLETIONS, PAD).prompt_ids.shape[0] == 1
