"""Exact resume and crash safety of whole runs, on a tiny random Llama on CPU.

Runs go through the real CLI entry point (`grpo_trainer.train.main`) in processes forked from a
driver that has imported torch/transformers/accelerate once, so a run starts in ~2 s instead of
~12 s; a run is killed with a real SIGKILL, at a random moment or, through the
GRPO_TRAINER_TEST_KILL_AT hook, at a named point inside a save. Forking before any torch
computation is safe: the driver has started no threads.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from grpo_trainer import manifest
from grpo_trainer.checkpoint import list_checkpoints

REPO = Path(__file__).resolve().parents[1]

DRIVER = r"""
import json, os, resource, sys, traceback
import grpo_trainer.trainer  # the heavy imports, once; every run forks from here
from grpo_trainer.train import main
print("ready", flush=True)
for line in sys.stdin:
    job = json.loads(line)
    pid = os.fork()
    if pid == 0:
        os.environ.update(job["env"])
        if job["fsize"]:  # writes past this many bytes fail with EFBIG, as on a full disk
            resource.setrlimit(resource.RLIMIT_FSIZE, (job["fsize"], resource.RLIM_INFINITY))
        fd = os.open(job["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        try:
            code = main(job["argv"])
        except BaseException:
            traceback.print_exc()
            code = 3
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    print(pid, flush=True)
    _, status = os.waitpid(pid, 0)
    print(os.waitstatus_to_exitcode(status), flush=True)
"""


class Forker:
    def __init__(self, tmp: Path):
        env = {**os.environ, "PYTHONPATH": str(REPO), "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
        env.pop("GRPO_TRAINER_TEST_KILL_AT", None)
        self.proc = subprocess.Popen([sys.executable, "-c", DRIVER], cwd=REPO, env=env, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert self.proc.stdout.readline().strip() == "ready"
        self.tmp, self.n = tmp, 0

    def start(self, argv: list[str], env: dict | None = None, fsize: int = 0) -> int:
        self.n += 1
        self.log = self.tmp / f"run{self.n}.log"
        job = {"argv": argv, "env": env or {}, "log": str(self.log), "fsize": fsize}
        self.proc.stdin.write(json.dumps(job) + "\n")
        self.proc.stdin.flush()
        return int(self.proc.stdout.readline())

    def wait(self) -> int:
        """Exit code of the run started last; -9 when it was SIGKILLed."""
        return int(self.proc.stdout.readline())

    def run(self, argv: list[str], env: dict | None = None, fsize: int = 0) -> int:
        self.start(argv, env, fsize)
        return self.wait()

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


@pytest.fixture(scope="module")
def forker(tmp_path_factory):
    f = Forker(tmp_path_factory.mktemp("logs"))
    yield f
    f.close()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    from conftest import build_tiny_model

    return build_tiny_model("llama", tmp_path_factory.mktemp("tiny"))


def argv(model: Path, out: Path, steps: int, *extra: str, backend: str = "hf") -> list[str]:
    return ["--recipe", str(REPO / "recipes/quickstart.yaml"), f"model.name_or_path={model}",
            f"trainer.output_dir={out}", f"trainer.max_steps={steps}", f"rollout.backend={backend}",
            "data.num_examples=64", "rollout.num_generations=4", "rollout.max_completion_length=12",
            "rollout.kv_cache_gib=1", "rollout.dtype=null", "trainer.mixed_precision='no'",
            "trainer.prompts_per_step=2", "trainer.micro_batch_size=8", "trainer.learning_rate=1e-3",
            # cosine over max_steps: a resumed run must land on the same schedule
            "trainer.lr_scheduler=cosine", "trainer.save_every=1", "trainer.keep_last=2",
            "trainer.log_samples_every=1", "trainer.num_log_samples=8",  # every completion of every step
            "trainer.torch_threads=1",  # 2 shared cores: more threads only spin
            "reward.functions=[{name: 'tests.reward_fns:even_token_fraction'}]", *extra]


def weights(run: Path, step: int) -> dict[str, torch.Tensor]:
    return load_file(run / f"checkpoint-{step:06d}" / "model" / "model.safetensors")


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def same_run(a: Path, b: Path, step: int) -> None:
    """Bit-identical weights, optimizer state, metrics (but timings) and sampled completions."""
    wa, wb = weights(a, step), weights(b, step)
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa), max((wa[k] - wb[k]).abs().max().item() for k in wa)
    oa = torch.load(a / f"checkpoint-{step:06d}/state/optimizer.bin", weights_only=True)["state"]
    ob = torch.load(b / f"checkpoint-{step:06d}/state/optimizer.bin", weights_only=True)["state"]
    assert all(torch.equal(oa[i][k], ob[i][k]) for i in oa for k in oa[i])
    timeless = lambda r: {k: v for k, v in r.items() if not k.startswith(("time/", "throughput/"))}  # noqa: E731
    assert [timeless(r) for r in rows(a / "metrics.jsonl")] == [timeless(r) for r in rows(b / "metrics.jsonl")]
    # Completions, in data order: the sampler position and the rollout seed were restored.
    assert rows(a / "samples.jsonl") == rows(b / "samples.jsonl")


@pytest.fixture(scope="module")
def reference(forker, tiny, tmp_path_factory):
    run = tmp_path_factory.mktemp("ref") / "run"
    start = time.monotonic()
    assert forker.run(argv(tiny, run, 6)) == 0, forker.log.read_text()[-3000:]
    seconds = time.monotonic() - start
    assert [r["step"] for r in rows(run / "metrics.jsonl")] == [1, 2, 3, 4, 5, 6]
    assert len(rows(run / "samples.jsonl")) == 6 * 8  # 2 prompts x 4 samples per step
    return run, seconds


@pytest.mark.slow
def test_kill_after_step_4_then_resume_is_the_same_run(forker, tiny, reference, tmp_path):
    ref, _ = reference
    run = tmp_path / "run"
    # Killed after step 4 trained and logged, before its checkpoint: step 4 is redone from step 3.
    assert forker.run(argv(tiny, run, 6), {"GRPO_TRAINER_TEST_KILL_AT": "step@4"}) == -signal.SIGKILL
    assert [s for s, _ in list_checkpoints(run)] == [2, 3]
    assert forker.run(argv(tiny, run, 6, "resume=auto")) == 0, forker.log.read_text()[-3000:]
    assert "resumed from" in forker.log.read_text() and "at step 3" in forker.log.read_text()
    same_run(ref, run, 6)
    # The finished run, resumed again, says so and exits 0.
    assert forker.run(argv(tiny, run, 6, "resume=auto")) == 0
    assert "already finished at step 6" in forker.log.read_text()


@pytest.mark.slow
def test_sigkill_at_random_moments_and_mid_save(forker, tiny, reference, tmp_path):
    ref, seconds = reference
    run = tmp_path / "run"
    # scripts/kill_loop.py reruns this test with other seeds.
    rng = random.Random(int(os.environ.get("GRPO_TRAINER_KILL_SEED", "20240607")))
    # Deterministic kills inside a save and inside pruning (each once), then kills at random moments.
    hooks = ["save_state@2", "save_model@3", "save_marker@4", "save_prune@5", "prune_delete@0", "prune_delete@6"]
    landed, finished, cycles = 0, 0, 0
    while landed < 16 and cycles < 34:
        cycles += 1
        hook = hooks.pop(0) if hooks and cycles % 2 else None
        env = {"GRPO_TRAINER_TEST_KILL_AT": hook} if hook else {}
        pid = forker.start(argv(tiny, run, 6, "resume=auto"), env)
        if not hook:
            time.sleep(rng.uniform(0.5, seconds))
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        code = forker.wait()
        if code == -signal.SIGKILL:
            landed += 1
            # Whatever the moment, what resume=auto would pick is a complete checkpoint.
            found = list_checkpoints(run)
            assert [manifest.verify(p) for _, p in found] == [None] * len(found), found
            if hook == "save_marker@4":  # marker written, rename not done: step 4 is not published
                assert (run / ".tmp-checkpoint-000004" / "COMPLETE").is_file() and found[-1][0] == 3
            continue
        assert code == 0, forker.log.read_text()[-3000:]
        finished += 1
        same_run(ref, run, 6)
        shutil.rmtree(run)  # start over, for more kills
    assert landed >= 16, (landed, cycles)
    if run.exists():
        assert forker.run(argv(tiny, run, 6, "resume=auto")) == 0, forker.log.read_text()[-3000:]
        same_run(ref, run, 6)
    print(f"{landed} kills landed, {finished} runs finished in between, {cycles} starts")


@pytest.mark.slow
def test_non_finite_updates_are_skipped_then_the_run_stops(forker, tiny, tmp_path):
    run = tmp_path / "run"
    # Rewards ~1e38 with no group scaling: advantages ~5e37, the loss sums to inf in fp32.
    bad = argv(tiny, run, 6, "algorithm.advantage=dr_grpo",
               "reward.functions=[{name: 'tests.reward_fns:even_token_fraction', weight: 1.0e38}]",
               "trainer.max_bad_steps=3")
    assert forker.run(bad) == 1, forker.log.read_text()[-3000:]
    last = forker.log.read_text().strip().splitlines()[-1]
    assert last.startswith("error: stopped at step 3: 3 consecutive steps had a non-finite loss"), last
    assert "the weights are those of step 0" in last
    metrics = rows(run / "metrics.jsonl")
    assert [(r["step"], r["train/skipped_update"]) for r in metrics] == [(1, 1.0), (2, 1.0), (3, 1.0)]
    # Steps 1 and 2 were saved (skipped updates are still steps); their weights are the base model's.
    base = load_file(tiny / "model.safetensors")
    saved = weights(run, 2)
    assert all(torch.equal(base[k], saved[k]) for k in saved)
    assert not (run / "checkpoint-000003").exists()


@pytest.mark.slow
def test_exact_resume_with_vllm(forker, tiny, tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert forker.run(argv(tiny, straight, 4, backend="vllm")) == 0, forker.log.read_text()[-3000:]
    env = {"GRPO_TRAINER_TEST_KILL_AT": "step@3"}
    assert forker.run(argv(tiny, killed, 4, backend="vllm"), env) == -signal.SIGKILL
    assert forker.run(argv(tiny, killed, 4, "resume=auto", backend="vllm")) == 0, forker.log.read_text()[-3000:]
    assert "resumed from" in forker.log.read_text() and "at step 2" in forker.log.read_text()
    same_run(straight, killed, 4)


@pytest.mark.slow
def test_exact_resume_with_the_pass_rate_filter_and_clip_cov(forker, tiny, tmp_path):
    # 8 prompts, 2 a step: a prompt comes round every 4 steps, and one whose group of 4 did not pass
    # exactly half the time is passed over for 2 steps; the sampler's skip table and Clip-Cov's
    # seeded draw must both come back on resume.
    extra = ("data.num_examples=8", "data.pass_rate_filter=[0.3, 0.7]", "data.filter_cooldown=2",
             "algorithm.entropy_control=clip_cov", "algorithm.clip_cov_ratio=0.1", "algorithm.clip_cov_low=0",
             "algorithm.clip_cov_high=100", "reward.functions=[{name: 'tests.reward_fns:first_token_even'}]")
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert forker.run(argv(tiny, straight, 6, *extra)) == 0, forker.log.read_text()[-3000:]
    metrics = rows(straight / "metrics.jsonl")
    assert any(r["data/passed_over"] > 0 for r in metrics[3:]), metrics  # skips after the resume point
    assert all(r["train/cov_controlled_frac"] > 0 for r in metrics if r["train/rows_trained"] > 0)
    assert forker.run(argv(tiny, killed, 6, *extra), {"GRPO_TRAINER_TEST_KILL_AT": "step@4"}) == -signal.SIGKILL
    assert forker.run(argv(tiny, killed, 6, "resume=auto", *extra)) == 0, forker.log.read_text()[-3000:]
    assert "at step 3" in forker.log.read_text()
    same_run(straight, killed, 6)


@pytest.mark.slow
def test_failed_save_stops_the_run_and_keeps_the_previous_checkpoint(forker, tiny, reference, tmp_path):
    ref, _ = reference
    run = tmp_path / "moved"
    shutil.copytree(ref, run)  # a run directory moved elsewhere still resumes (output_dir is not compared)
    before = {p: p.read_bytes() for p in (run / "checkpoint-000006").rglob("*") if p.is_file()}
    # Step 7's save fails: model.safetensors alone is 26 MB, over the 20 MB file-size limit.
    assert forker.run(argv(tiny, run, 7, "resume=auto"), fsize=20_000_000) == 1, forker.log.read_text()[-3000:]
    last = forker.log.read_text().strip().splitlines()[-1]
    assert last.startswith("error: could not save checkpoint-000007") and "File too large" in last, last
    assert "the previous checkpoint (checkpoint-000006) is intact" in last
    assert [s for s, _ in list_checkpoints(run)] == [5, 6] and not list(run.glob(".tmp-*"))
    assert {p: p.read_bytes() for p in (run / "checkpoint-000006").rglob("*") if p.is_file()} == before


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_exact_resume_with_a_ppo_critic(forker, tiny, tmp_path, lora):
    # Killed right after step 2 (before its checkpoint): resume from step 1's, redo step 2, then 3.
    # The critic's weights and optimizer must come back bit for bit, as the policy's do; with
    # model.lora the critic is a LoRA too and critic/ holds its adapter and head.
    extra = ("algorithm.advantage=gae", "critic.enabled=true", "critic.learning_rate=1e-3", "trainer.critic_warmup=1",
             "rollout.num_generations=2", "algorithm.num_mini_batches=2", f"model.lora.enabled={str(lora).lower()}",
             "model.lora.r=4")
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert forker.run(argv(tiny, straight, 3, *extra)) == 0, forker.log.read_text()[-3000:]
    assert forker.run(argv(tiny, killed, 3, *extra), {"GRPO_TRAINER_TEST_KILL_AT": "step@2"}) == -signal.SIGKILL
    assert forker.run(argv(tiny, killed, 3, "resume=auto", *extra)) == 0, forker.log.read_text()[-3000:]
    assert "at step 1" in forker.log.read_text()
    same_run(straight, killed, 3)
    name = "adapter_model.safetensors" if lora else "model.safetensors"
    ca = load_file(straight / "checkpoint-000003" / "critic" / name)
    cb = load_file(killed / "checkpoint-000003" / "critic" / name)
    if lora:  # the adapter and the trained head, nothing of the frozen base
        assert any("lora_A" in k for k in ca) and any("score" in k for k in ca) and len(ca) < 100, sorted(ca)[:5]
    assert ca.keys() == cb.keys() and all(torch.equal(ca[k], cb[k]) for k in ca)
    oa = torch.load(straight / "checkpoint-000003/state/optimizer_1.bin", weights_only=True)["state"]
    ob = torch.load(killed / "checkpoint-000003/state/optimizer_1.bin", weights_only=True)["state"]
    assert oa and all(torch.equal(oa[i][k], ob[i][k]) for i in oa for k in oa[i])
    metrics = rows(straight / "metrics.jsonl")
    # Step 1 is the critic's warmup: the policy is not updated (no pass), the critic is.
    assert metrics[0]["train/passes"] == 0 and metrics[0]["critic/value_loss"] > 0
    assert metrics[1]["train/passes"] == 1
