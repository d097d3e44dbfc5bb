"""data.pass_rate_filter in the prompt sampler (data/sampler.py): prompts passed outside the band are
passed over for `cooldown` steps and the batch is filled from the stream after them."""

from __future__ import annotations

import json
import random

from grpo_trainer.data.sampler import PromptSampler


def perm(seed: int, n: int) -> list[int]:
    p = list(range(n))
    random.Random(seed).shuffle(p)
    return p


def test_a_prompt_outside_the_band_is_passed_over_for_cooldown_steps():
    s = PromptSampler(4, seed=0, pass_rate_band=(0.2, 0.8), cooldown=2)
    p0, p1 = perm(0, 4), perm(1, 4)
    assert s.next_batch(2) == p0[:2]  # step 1
    m = s.observe(1, p0[:2], [1.0, 0.5])  # p0[0] always passed: too easy, skipped in steps 2 and 3
    assert m == {"data/pass_rate": 0.75, "data/skipped_prompts": 1.0, "data/passed_over": 0.0}
    assert s.next_batch(2) == p0[2:4]  # step 2: p0[0] does not come up
    s.observe(2, p0[2:4], [0.5, 0.5])
    # step 3 starts epoch 1: p0[0] is passed over wherever it stands, the next prompt takes its place
    easy = p0[0]
    expected = [i for i in p1 if i != easy][:2]
    got = s.next_batch(2)
    assert got == expected
    used = p1.index(expected[1]) + 1  # stream positions consumed, the passed-over one included
    assert (s.epoch, s.position) == (1, used)
    m = s.observe(3, got, [0.5, 0.5])
    assert m["data/passed_over"] == (1.0 if easy in p1[:used] else 0.0) and m["data/skipped_prompts"] == 0.0
    # step 4: the cooldown is over (skipped through step 1 + 2 = 3)
    assert s.skip_until == {}


def test_rates_on_the_band_edges_are_kept_and_pass_rate_zero_is_skipped_too():
    s = PromptSampler(10, seed=0, pass_rate_band=(0.25, 0.75), cooldown=5)
    s.observe(1, [0, 1, 2, 3, 4], [0.25, 0.75, 0.0, 1.0, 0.5])
    assert s.skip_until == {2: 6, 3: 6}


def test_too_few_prompts_left_the_batch_ignores_the_filter():
    s, plain = PromptSampler(4, seed=0, pass_rate_band=(0.4, 0.6), cooldown=9), PromptSampler(4, seed=0)
    s.observe(1, [0, 1, 2], [0.0, 1.0, 0.0])  # one prompt left for a batch of 2
    assert s.next_batch(2) == plain.next_batch(2) and s.next_batch(2) == plain.next_batch(2)


def test_ranks_with_the_same_observations_take_disjoint_shares_of_the_filtered_batch():
    one = PromptSampler(20, seed=3, pass_rate_band=(0.1, 0.9), cooldown=3)
    ranks = [PromptSampler(20, seed=3, rank=r, world_size=2, pass_rate_band=(0.1, 0.9), cooldown=3) for r in (0, 1)]
    rng = random.Random(0)
    for step in range(1, 9):
        global_batch = one.next_batch(4)
        shares = [r.next_batch(2) for r in ranks]
        assert shares[0] + shares[1] == global_batch
        rates = [rng.choice([0.0, 0.5, 1.0]) for _ in global_batch]
        for sampler in (one, *ranks):
            sampler.observe(step, global_batch, rates)
    assert one.state_dict() == ranks[0].state_dict() == ranks[1].state_dict()


def test_state_round_trips_through_json_and_resumes_the_same_stream():
    ref = PromptSampler(12, seed=7, pass_rate_band=(0.3, 0.7), cooldown=4)
    rng = random.Random(1)

    def step(s: PromptSampler, n: int) -> list[int]:
        batch = s.next_batch(3)
        s.observe(n, batch, [rng.choice([0.0, 0.5, 1.0]) for _ in batch])
        return batch

    for n in range(1, 5):
        step(ref, n)
    state = json.loads(json.dumps(ref.state_dict()))  # as trainer_state.json holds it
    assert state["step"] == 4 and state["skip_until"]
    rng_state = rng.getstate()
    expected = [step(ref, n) for n in range(5, 11)]
    resumed = PromptSampler(12, seed=0, pass_rate_band=(0.3, 0.7), cooldown=4)
    resumed.load_state_dict(state)
    rng.setstate(rng_state)
    assert [step(resumed, n) for n in range(5, 11)] == expected
    # Without the filter the state keeps its old layout.
    assert set(PromptSampler(12).state_dict()) == {"seed", "epoch", "position", "num_examples"}
