"""End to end on a tiny random Llama with the real vLLM engine on CPU, through `accelerate launch`:
two GRPO steps, a checkpoint, then `resume=auto` continues at step 3."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]


def launch(args: list[str], cwd: Path = REPO, timeout: int = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(REPO / "configs/accelerate/cpu.yaml"), "-m", "grpo_trainer.train", *args]
    env = {**os.environ, "PYTHONPATH": str(REPO), "VLLM_ENABLE_V1_MULTIPROCESSING": "0", **(env or {})}
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def tiny_overrides(model: Path, out: Path, steps: int) -> list[str]:
    return [f"model.name_or_path={model}", f"trainer.output_dir={out}", f"trainer.max_steps={steps}",
            "data.num_examples=64", "rollout.num_generations=4", "rollout.max_completion_length=12",
            "rollout.kv_cache_gib=1", "trainer.prompts_per_step=2", "trainer.micro_batch_size=3",
            "trainer.learning_rate=1e-3", "trainer.log_samples_every=1",
            "reward.functions=[{name: 'tests.reward_fns:even_token_fraction', weight: 1.0}, "
            "{name: format, weight: 0.5}]"]


# The trainer's own console lines: stamped phases and records, step lines, the closing summary.
PROJECT_LINE = re.compile(r"^(\d\d:\d\d:\d\d |step +\d+ \| |steps \d+\.\.\d+ |  [a-z_]+/[a-z_]+ +-?\d)")


def read_metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_two_steps_checkpoint_and_resume(tiny_llama: Path, tmp_path: Path):
    run = tmp_path / "run"
    proc = launch(["--recipe", str(REPO / "recipes/quickstart.yaml"), *tiny_overrides(tiny_llama, run, 2),
                   "trainer.eval_every=2", "trainer.eval_examples=4"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    # Quiet by default: vLLM, transformers, torch and accelerate write to the run's log file.
    lines = (proc.stdout + proc.stderr).splitlines()
    other = [line for line in lines if not PROJECT_LINE.match(line)]
    assert len(other) <= 3, other
    assert sum(line.startswith("step ") for line in lines) == 2
    log = (run / "logs/third_party.rank0.log").read_text()
    assert "vllm" in log.lower()
    # Weights pushed in the engine's dtype (bf16 on a CPU with native bf16, else fp32): a bf16 vLLM
    # warns about a conversion only while it loads the fp32 checkpoint itself at start-up, once per
    # tensor, not again at each of the pushes.
    converted = re.findall(r"Attempted to load weight (\S+) with dtype torch.float32", log)
    assert len(converted) == len(set(converted)), len(converted)

    rows = read_metrics(run)
    assert [r["step"] for r in rows] == [1, 2]
    assert "eval/accuracy" not in rows[0] and 0.0 <= rows[1]["eval/accuracy"] <= 1.0  # held-out eval at step 2
    for r in rows:
        for key in ("reward/mean", "train/loss", "train/grad_norm", "train/entropy", "time/rollout", "time/train",
                    "time/sync", "completion/len_mean", "groups/zero_variance_frac"):
            assert isinstance(r[key], float) and math.isfinite(r[key]), (key, r[key])
        assert r["train/grad_norm"] > 0  # the even-token reward varies, so the update is not zero
    samples = (run / "samples.jsonl").read_text().splitlines()
    assert len(samples) >= 2 and "completion" in json.loads(samples[0])

    ckpt = run / "checkpoint-000002"
    assert (ckpt / "COMPLETE").is_file()
    assert json.loads((ckpt / "trainer_state.json").read_text())["step"] == 2
    before = load_file(tiny_llama / "model.safetensors")
    after = load_file(ckpt / "model" / "model.safetensors")
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert len(changed) > len(before) // 2, f"only {len(changed)} of {len(before)} tensors changed"

    proc = launch(["--recipe", str(REPO / "recipes/quickstart.yaml"), *tiny_overrides(tiny_llama, run, 3),
                   "resume=auto"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resumed from" in proc.stderr and "at step 2" in proc.stderr
    rows = read_metrics(run)
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert (run / "checkpoint-000003" / "COMPLETE").is_file()

    # A finished run resumed again says so and exits 0 without training.
    proc = launch(["--recipe", str(REPO / "recipes/quickstart.yaml"), *tiny_overrides(tiny_llama, run, 3),
                   "resume=auto"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "already finished at step 3" in proc.stderr
    assert "engine" not in proc.stdout + proc.stderr  # told before the model and the engine load
    assert [r["step"] for r in read_metrics(run)] == [1, 2, 3]


@pytest.mark.slow
def test_dapo_recipe_two_steps_logs_dynamic_sampling(tiny_llama: Path, tmp_path: Path):
    from tests.test_dynamic_sampling import make_data

    kinds = ["right", "mixed", "wrong", "right", "mixed", "wrong", "mixed", "right"] * 2
    data = make_data(tmp_path / "kinds.jsonl", kinds)
    run = tmp_path / "dapo"
    overrides = tiny_overrides(tiny_llama, run, 2)
    overrides = [o for o in overrides if not o.startswith(("reward.functions", "data.num_examples"))]
    proc = launch(["--recipe", str(REPO / "recipes/dapo_synthetic_smollm2.yaml"), *overrides, f"data.source={data}",
                   "algorithm.overlong_cache_len=4", "algorithm.max_gen_rounds=4", "trainer.mixed_precision=no",
                   "reward.functions=[{name: 'tests.reward_fns:by_kind', weight: 1.0}]"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = read_metrics(run)
    assert [r["step"] for r in rows] == [1, 2]
    # The same prompt sampler, replayed: how many rounds each step needed and what it dropped.
    from grpo_trainer.data import PromptSampler

    sampler, expect = PromptSampler(len(kinds), seed=0), []
    for _ in range(2):
        kept = rounds = filtered = 0
        while True:
            rounds += 1
            batch = sampler.next_batch(2)
            kept += sum(kinds[i] == "mixed" for i in batch)
            filtered += sum(kinds[i] != "mixed" for i in batch)
            if kept >= 2 or rounds >= 4:
                break
        expect.append((rounds, filtered))
    assert [(r["dynamic/gen_rounds"], r["dynamic/filtered_groups"]) for r in rows] == expect
    assert sum(f for _, f in expect) > 0


@pytest.mark.slow
@pytest.mark.parametrize("recipe, extra", [
    ("gspo_synthetic_smollm2.yaml", []),
    # Sequence-level MIS with a band so narrow that the bf16 engine's mismatch drops some sequences.
    ("cispo_synthetic_smollm2.yaml", ["algorithm.rollout_correction={level: sequence, mode: mask, lower: 0.99, "
                                      "upper: 1.01}"]),
], ids=["gspo", "cispo_sequence_mis"])
def test_objective_recipes_two_steps(tiny_llama: Path, tmp_path: Path, recipe: str, extra: list[str]):
    run = tmp_path / "run"
    # The recipe's bf16 engine against the fp32 trainer: a real, small mismatch (bf16 kept on a CPU
    # without native bf16 too, where the engine would otherwise fall back to fp32).
    proc = launch(["--recipe", str(REPO / "recipes" / recipe), *tiny_overrides(tiny_llama, run, 2),
                   "trainer.mixed_precision=no", *extra], env={"GRPO_TRAINER_CPU_BF16": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = read_metrics(run)
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:
        assert r["train/passes"] == 1.0 and r["train/rows_trained"] > 0, r
        for key in ("train/loss", "train/grad_norm", "train/clip_frac_low", "train/clip_frac_high", "mismatch/kl",
                    "mismatch/mean_abs_logp_diff"):
            assert isinstance(r[key], float) and math.isfinite(r[key]), (key, r[key])
        assert 0 < r["mismatch/kl"] < 0.1 and r["mismatch/mean_abs_logp_diff"] <= r["mismatch/max_abs_logp_diff"]
        for key in ("mismatch/token_out_frac", "mismatch/seq_out_frac", "mismatch/corrected_frac"):
            assert 0.0 <= r[key] <= 1.0, (key, r[key])
    if extra:  # the band is what the metrics count against, and what the correction masked
        assert all(r["mismatch/corrected_frac"] > 0 and r["mismatch/seq_out_frac"] > 0 for r in rows), rows
    else:
        assert all(r["mismatch/corrected_frac"] == 0.0 for r in rows)
    assert (run / "checkpoint-000002" / "COMPLETE").is_file()
