"""A training step's collectives, counted on the trainer's Accelerator (one process: each call is
what would be one all-reduce / all-gather under DDP or DeepSpeed). The step metrics (rewards,
lengths, update statistics, dynamic-sampling counts, the reward guard's counts, throughput) are
reduced in one gather; before the rollout record (issue 13) the same step made 24 calls, 17 of them
for its metrics."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from grpo_trainer import stopping
from grpo_trainer.config import load_config

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _importable_tests(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO))


def test_one_grpo_step_makes_eight_collectives(tiny_llama, tmp_path):
    from grpo_trainer.trainer import GRPOTrainer
    from test_regression import base

    tr = GRPOTrainer(load_config(REPO / "recipes" / "quickstart.yaml", [
        *base(tiny_llama, tmp_path / "run"), "trainer.eval_every=0",
        "reward.functions=[{name: 'tests.reward_fns:even_token_fraction'}, {name: 'tests.reward_fns:scaled'}]"]))
    calls: Counter = Counter()
    for name in ("reduce", "gather", "pad_across_processes", "gather_for_metrics"):
        def counted(*args, _f=getattr(tr.acc, name), _name=name, **kwargs):
            calls[_name] += 1
            return _f(*args, **kwargs)
        setattr(tr.acc, name, counted)
    try:
        tr.step = 1
        metrics = tr.train_step()
        stopping.agreed(tr.acc)  # what train() adds after logging the step
    finally:
        tr.reward_fn.close()
    assert metrics["train/rows_trained"] > 0  # the update ran (its collectives are counted)
    # The logger exists from construction: a lone train_step logs its samples (2 prompts x G = 4
    # rows, num_log_samples = 8) instead of failing.
    assert len((tmp_path / "run" / "samples.jsonl").read_text().splitlines()) == 8
    # collect: 1 gather (rounds agree); advantages: 2 gathers + 1 pad (every reward, `scale=batch`);
    # update: 1 reduce (the normalisers), 1 reduce (the non-finite guard's verdict, per optimizer
    # step); metrics: 1 gather; stopping.agreed: 1 gather. Before: 6 gathers, 18 reduces, 1 pad.
    assert dict(calls) == {"gather": 5, "reduce": 2, "pad_across_processes": 1}
