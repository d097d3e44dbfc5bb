import random

import pytest

from grpo_trainer.data.sampler import PromptSampler


def test_deterministic_and_seed_dependent():
    a, b = PromptSampler(10, seed=5), PromptSampler(10, seed=5)
    assert [a.next_batch(3) for _ in range(5)] == [b.next_batch(3) for _ in range(5)]
    assert PromptSampler(10, seed=6).next_batch(10) != PromptSampler(10, seed=5).next_batch(10)


def test_epoch_is_permutation_from_seed_plus_epoch():
    s = PromptSampler(6, seed=3)
    e0 = s.next_batch(3) + s.next_batch(3)
    assert s.epoch == 1 and s.position == 0
    e1 = s.next_batch(6)
    expect0, expect1 = list(range(6)), list(range(6))
    random.Random(3).shuffle(expect0)  # epoch 0 uses seed + 0
    random.Random(4).shuffle(expect1)  # epoch 1 uses seed + 1
    assert e0 == expect0 and e1 == expect1
    assert sorted(e0) == sorted(e1) == list(range(6))
    assert e0 != e1  # reshuffled


def test_batch_crosses_epoch_boundary():
    s = PromptSampler(5, seed=0)
    first = s.next_batch(4)
    second = s.next_batch(4)  # 1 from epoch 0, then 3 from epoch 1
    p0, p1 = list(range(5)), list(range(5))
    random.Random(0).shuffle(p0)
    random.Random(1).shuffle(p1)
    assert first == p0[:4]
    assert second == p0[4:] + p1[:3]
    assert s.state_dict() == {"seed": 0, "epoch": 1, "position": 3, "num_examples": 5}


def test_resume_gives_same_batches():
    ref = PromptSampler(7, seed=11)
    for _ in range(3):
        ref.next_batch(3)
    state = ref.state_dict()
    expected = [ref.next_batch(3) for _ in range(6)]
    resumed = PromptSampler(7, seed=999)  # seed comes from the state
    resumed.load_state_dict(state)
    assert [resumed.next_batch(3) for _ in range(6)] == expected


def test_rank_shards_disjoint_and_cover_global_batch():
    world = 4
    ranks = [PromptSampler(24, seed=2, rank=r, world_size=world) for r in range(world)]
    single = PromptSampler(24, seed=2)
    for _ in range(5):  # 5 steps of 3 per rank = 12 global, crosses into epoch 2
        shards = [s.next_batch(3) for s in ranks]
        flat = [i for sh in shards for i in sh]
        assert len(set(flat)) == 12  # disjoint
        assert flat == single.next_batch(12)  # rank r holds slice [3r:3r+3] of the global batch
    assert len({tuple(sorted(s.state_dict().items())) for s in ranks}) == 1


def test_one_epoch_over_ranks_covers_dataset():
    ranks = [PromptSampler(12, seed=0, rank=r, world_size=3) for r in range(3)]
    seen = [i for _ in range(2) for s in ranks for i in s.next_batch(2)]
    assert sorted(seen) == list(range(12))  # 2 steps * 3 ranks * 2 = 12 = one epoch


def test_errors():
    with pytest.raises(ValueError, match="global batch k\\*world_size=8 exceeds the 5 prompts"):
        PromptSampler(5, rank=0, world_size=2).next_batch(4)
    with pytest.raises(ValueError, match="need 0 <= rank < world_size"):
        PromptSampler(5, rank=2, world_size=2)
    s = PromptSampler(5)
    with pytest.raises(ValueError, match="sampler state is for 6 prompts but 5 are loaded"):
        s.load_state_dict({"seed": 0, "epoch": 0, "position": 0, "num_examples": 6})
