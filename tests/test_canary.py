"""The weight-sync canary on whole runs of a tiny random Llama on CPU: `mismatch/kl` compares the
engine's log-probs of its samples with the trainer's, and `trainer.max_mismatch_kl` stops a run
whose weight pushes do nothing (sabotaged with the GRPO_TRAINER_TEST_SKIP_SYNC hook).

Runs go through the real CLI in processes forked by test_resume's Forker (imports paid once)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from grpo_trainer.checkpoint import list_checkpoints
from test_resume import Forker, argv, rows, weights


@pytest.fixture(scope="module")
def forker(tmp_path_factory):
    f = Forker(tmp_path_factory.mktemp("logs"))
    yield f
    f.close()


def test_hf_engine_agrees_with_the_trainer_to_rounding(forker, tiny_llama: Path, tmp_path: Path):
    run = tmp_path / "run"
    # A limit no real mismatch stays under: the run finishing shows the engine IS the policy.
    assert forker.run(argv(tiny_llama, run, 2, "trainer.max_mismatch_kl=1e-8")) == 0, forker.log.read_text()[-3000:]
    for r in rows(run / "metrics.jsonl"):
        # The HF engine samples from the trainer's own fp32 model; only the computation differs
        # (generate's one-token steps vs one forward over the completion): |x| ~ 2e-5 nats, so
        # k3 ~ x^2/2 ~ 2e-10 at most per token.
        assert 0 <= r["mismatch/kl"] < 1e-9, r
        assert 0 < r["mismatch/max_abs_logp_diff"] < 1e-4, r
        # The random model never ends a completion: every row holds 12 tokens (the length limit),
        # so the canary compared 12 tokens per trained row.
        assert r["completion/truncated"] == 1.0 and r["train/rows_trained"] > 0
        assert r["mismatch/tokens"] == 12 * r["train/rows_trained"], r


def test_no_trained_token_means_no_canary_data(forker, tiny_llama: Path, tmp_path: Path):
    run = tmp_path / "run"
    # A constant reward: every advantage is 0, no row is forwarded, nothing is compared; the
    # metric is missing (null), not 0, and even a limit of 1e-12 does not stop the run.
    assert forker.run(argv(tiny_llama, run, 2, "reward.functions=[{name: 'tests.reward_fns:scaled'}]",
                           "trainer.max_mismatch_kl=1e-12")) == 0, forker.log.read_text()[-3000:]
    for r in rows(run / "metrics.jsonl"):
        assert r["train/rows_trained"] == 0 and r["mismatch/tokens"] == 0
        assert r["mismatch/kl"] is None and r["mismatch/max_abs_logp_diff"] is None


@pytest.mark.slow
def test_skipped_weight_pushes_stop_the_run_at_the_next_step(forker, tiny_llama: Path, tmp_path: Path):
    run = tmp_path / "run"
    # Every push skipped, at the default trainer.max_mismatch_kl; lr 1e-2 moves the tiny model a lot.
    code = forker.run(argv(tiny_llama, run, 3, "trainer.learning_rate=1e-2", backend="vllm"),
                      {"GRPO_TRAINER_TEST_SKIP_SYNC": "1"})
    log = forker.log.read_text()
    assert code == 1, log[-3000:]
    last = log.strip().splitlines()[-1]
    assert last.startswith("error: stopped at step 2: the rollout engine's log-probs differ from the trainer's "
                           "by KL "), last
    assert "stale weights (a weight push that failed or did nothing)" in last and "rollout.dtype" in last
    first, second = rows(run / "metrics.jsonl")
    # Step 1 samples from the weights the engine loaded itself, equal to the trainer's: fp32 vLLM
    # and the trainer differ by ~2e-5 nats per token (k3 ~ 2e-11). Step 2 samples from those
    # same base weights while the trainer holds step 1's update.
    assert first["mismatch/kl"] < 1e-9 and first["mismatch/max_abs_logp_diff"] < 1e-3, first
    assert second["mismatch/kl"] > 0.1 and second["mismatch/max_abs_logp_diff"] > 1.0, second
    # Orders of magnitude, not a drift: the KL and the mean |d log p| jump >= 100x, and tokens leave
    # the rho band [0.5, 2] (a |d log p| > 1 does) where none did.
    assert second["mismatch/kl"] >= 100 * first["mismatch/kl"], (first, second)
    assert second["mismatch/mean_abs_logp_diff"] >= 100 * first["mismatch/mean_abs_logp_diff"], (first, second)
    assert first["mismatch/token_out_frac"] == 0 and second["mismatch/token_out_frac"] > 0, (first, second)
    # Step 2's update is not saved; step 1's checkpoint is the last one, untouched: it holds the
    # trainer's step-1 weights, which differ from the base weights the engine kept using.
    assert [s for s, _ in list_checkpoints(run)] == [1] and not list(run.glob(".tmp-*"))
    from safetensors.torch import load_file

    base = load_file(tiny_llama / "model.safetensors")
    saved = weights(run, 1)
    assert saved.keys() == base.keys() and not all(torch.equal(base[k], saved[k]) for k in base)


def test_a_stopped_run_may_resume_with_a_raised_limit(tmp_path: Path):
    from grpo_trainer.config import ConfigError, load_config, save_config
    from grpo_trainer.preflight import check_output_dir

    run = tmp_path / "run"
    run.mkdir()
    save_config(load_config(None, [f"trainer.output_dir={run}"]), run / "config.yaml")
    # The stop message's fix: the limit does not change what a step computes, so resume accepts it...
    check_output_dir(load_config(None, [f"trainer.output_dir={run}", "trainer.max_mismatch_kl=1.0", "resume=auto"]))
    check_output_dir(load_config(None, [f"trainer.output_dir={run}", "trainer.max_mismatch_kl=null", "resume=auto"]))
    # ...unlike a key that does.
    with pytest.raises(ConfigError, match="different config"):
        check_output_dir(load_config(None, [f"trainer.output_dir={run}", "trainer.learning_rate=1.0", "resume=auto"]))
    for bad in ("0", "-0.5"):
        with pytest.raises(ConfigError, match=r"trainer.max_mismatch_kl=.* is out of range: expected null or a float > 0"):
            load_config(None, [f"trainer.max_mismatch_kl={bad}"])
