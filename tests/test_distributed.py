"""Two processes on the CPU through `accelerate launch`: plain DDP (gloo), DeepSpeed ZeRO-2 and
ZeRO-3, each for 2 GRPO steps on a tiny Llama with the real vLLM engine in every process, LoRA
on in some; then one optimizer update under 2 processes against the same update in 1 process.

Each 2-process training run costs about a minute here; the first DeepSpeed run on a machine also
compiles DeepSpeed's shared-memory collective op once (about a minute, cached afterwards)."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from test_e2e import read_metrics, tiny_overrides

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(config: str, target: list[str], timeout: int = 900) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(REPO / f"configs/accelerate/{config}.yaml"), "--main_process_port", str(_free_port()), *target]
    # One thread per process: two processes share this machine's cores.
    env = {**os.environ, "PYTHONPATH": str(REPO), "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def train(config: str, model: Path, run: Path, *extra: str, steps: int = 2) -> list[dict]:
    proc = launch(config, ["-m", "grpo_trainer.train", "--recipe", str(REPO / "recipes/quickstart.yaml"),
                           *tiny_overrides(model, run, steps), "rollout.dtype=float32", "trainer.mixed_precision='no'",
                           "trainer.torch_threads=1", "algorithm.beta=0.04", *extra])
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = read_metrics(run)
    assert [r["step"] for r in rows] == list(range(1, steps + 1))
    for r in rows:
        for key in ("reward/mean", "train/loss", "train/grad_norm", "train/kl", "train/entropy", "time/sync"):
            assert isinstance(r[key], float) and math.isfinite(r[key]), (key, r[key])
        assert r["train/grad_norm"] > 0
        # 2 prompts x 4 samples over both processes, all of them in the update (beta > 0).
        assert r["train/rows_trained"] == 8.0
    # Step 1 starts at the reference, so KL is 0 there; after one update it is not.
    assert rows[0]["train/kl"] == pytest.approx(0.0, abs=1e-6) and rows[1]["train/kl"] > 1e-4
    assert (run / f"checkpoint-{steps:06d}" / "COMPLETE").is_file()
    return rows


def _load(path: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)


def _merged_from_adapter(base: Path, adapter: Path) -> dict:
    from peft import PeftModel

    return PeftModel.from_pretrained(_load(base), adapter).merge_and_unload().state_dict()


def test_ddp_with_lora(tiny_llama: Path, tmp_path: Path):
    run = tmp_path / "run"
    train("cpu_ddp", tiny_llama, run, "model.lora.enabled=true", "model.lora.r=8")
    ckpt = run / "checkpoint-000002"
    base = load_file(tiny_llama / "model.safetensors")
    # The weights are written once: the adapter (what resume reads over the frozen base), no copy in state/.
    assert not (ckpt / "state" / "model.safetensors").exists()
    adapter = load_file(ckpt / "adapter" / "adapter_model.safetensors")
    lora_b = [k for k in adapter if "lora_B" in k]
    assert len(lora_b) == 2 * 7  # 2 layers x 7 target modules
    assert all(adapter[k].abs().max() > 0 for k in lora_b)  # B starts at 0: every adapter moved
    # model/ holds the merged weights, loadable by transformers, equal to base + adapter/.
    merged = load_file(ckpt / "model" / "model.safetensors")
    expected = _merged_from_adapter(tiny_llama, ckpt / "adapter")
    assert max((merged[k] - expected[k]).abs().max().item() for k in merged) < 1e-6
    assert sum(not torch.equal(merged[k], base[k]) for k in base) == 14  # exactly the adapted weights
    assert _load(ckpt / "model").config.num_hidden_layers == 2


def test_zero2(tiny_llama: Path, tmp_path: Path):
    run = tmp_path / "run"
    train("cpu_zero2", tiny_llama, run)
    ckpt = run / "checkpoint-000002"
    assert (ckpt / "state" / "pytorch_model").is_dir()  # DeepSpeed's own checkpoint, so it ran under ZeRO
    base = load_file(tiny_llama / "model.safetensors")
    after = _load(ckpt / "model").state_dict()
    changed = [k for k in base if not torch.equal(base[k], after[k])]
    assert len(changed) > len(base) // 2


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_zero3(tiny_llama: Path, tmp_path: Path, lora: bool):
    run = tmp_path / "run"
    train("cpu_zero3", tiny_llama, run, *(["model.lora.enabled=true", "model.lora.r=8"] if lora else []))
    ckpt = run / "checkpoint-000002"
    assert (ckpt / "state" / "pytorch_model").is_dir()
    base = load_file(tiny_llama / "model.safetensors")
    merged = load_file(ckpt / "model" / "model.safetensors")  # gathered from the shards
    assert set(merged) == set(base)
    changed = sum(not torch.equal(merged[k], base[k]) for k in base)
    if lora:
        expected = _merged_from_adapter(tiny_llama, ckpt / "adapter")
        assert max((merged[k] - expected[k]).abs().max().item() for k in merged) < 1e-6
        assert changed == 14
    else:
        assert changed > len(base) // 2
    # Resume under ZeRO-3 from the step-2 checkpoint: the sharded optimizer state (and the adapters)
    # come back and training goes on to step 3, moving exactly the weights it moved before.
    train("cpu_zero3", tiny_llama, run, *(["model.lora.enabled=true", "model.lora.r=8"] if lora else []),
          "resume=auto", steps=3)
    step3 = load_file(run / "checkpoint-000003" / "model" / "model.safetensors")
    moved = {k for k in base if not torch.equal(step3[k], merged[k])}
    if lora:
        assert moved == {k for k in base if not torch.equal(merged[k], base[k])}
    else:
        assert len(moved) > len(base) // 2


def _one_update(config: str, model: Path, out: Path, *extra: str) -> dict:
    # lr 1e-4, so Adam's first step moves weights by ~1e-4: a 1e-5 tolerance is a tenth of it.
    proc = launch(config, [str(REPO / "tests/one_update.py"), str(out), f"model.name_or_path={model}",
                           f"trainer.output_dir={out.parent / 'run'}", "data.num_examples=16", "rollout.backend=hf",
                           "rollout.num_generations=2", "trainer.prompts_per_step=4", "trainer.micro_batch_size=3",
                           "trainer.learning_rate=1e-4", "trainer.lr_scheduler=constant",
                           "trainer.mixed_precision='no'", *extra])
    assert proc.returncode == 0, proc.stderr[-4000:]
    return torch.load(out)


# The new objectives against 2 processes under plain DDP only: the loss is the same code under ZeRO.
@pytest.mark.parametrize("extra", [[], ["algorithm.policy_loss=gspo"], ["algorithm.policy_loss=cispo"],
                                   ["algorithm.rollout_correction={level: sequence, mode: mask}"]],
                         ids=["ppo_clip", "gspo", "cispo", "sequence_mis"])
def test_one_update_is_the_same_in_one_and_two_processes(tiny_llama: Path, tmp_path: Path, extra: list[str]):
    # 8 rows, micro-batch 3: one process runs 3 micro-batches; two processes run 2 each (4 rows).
    single = _one_update("cpu", tiny_llama, tmp_path / "single.pt", *extra)
    base = load_file(tiny_llama / "model.safetensors")
    moved = max((single["weights"][k] - base[k]).abs().max().item() for k in base)
    assert moved > 5e-5  # the update is real (Adam: ~lr = 1e-4 per weight)
    if extra and "rollout_correction" in extra[0]:  # rows 0, 3 and 6 of 8 were masked out (one_update.SHIFTS)
        assert single["metrics"]["mismatch/seq_out_frac"] == pytest.approx(3 / 8)
    for config in ("cpu_ddp", "cpu_zero2") if not extra else ("cpu_ddp",):
        other = _one_update(config, tiny_llama, tmp_path / f"{config}.pt", *extra)
        assert set(other["weights"]) == set(single["weights"])
        gaps = torch.cat([(other["weights"][k] - single["weights"][k]).abs().flatten() for k in base])
        # Adam's first step is lr * g / (|g| + 1e-8): where |g| is near 1e-8, fp32 rounding in g (the
        # order in which rows' gradients are summed differs between layouts) moves the update by
        # up to ~lr. Such weights are a handful of 6.6M; every other one agrees within 1e-5.
        assert int((gaps > 1e-5).sum()) <= 10 and gaps.max().item() < 1e-4, (config, gaps.max().item())
        assert other["metrics"]["train/grad_norm"] == pytest.approx(single["metrics"]["train/grad_norm"], rel=1e-5)
        assert other["metrics"]["train/loss"] == pytest.approx(single["metrics"]["train/loss"], abs=1e-6)
        for key in ("mismatch/seq_out_frac", "mismatch/corrected_frac", "train/tis_weight_mean"):
            assert other["metrics"][key] == pytest.approx(single["metrics"][key], rel=1e-6, nan_ok=True), key


@pytest.mark.parametrize("native, expected", [(False, "no"), (True, "bf16")])
def test_bf16_autocast_falls_back_to_fp32_on_a_cpu_without_native_bf16(native: bool, expected: str):
    # The CPU probe is replaced (this test is about the decision, not the probe); a fresh
    # interpreter because accelerate keeps one AcceleratorState per process.
    code = ("import logging, grpo_trainer.distributed as d; logging.basicConfig(level=logging.WARNING); "
            f"d.cpu_has_native_bf16 = lambda: {native}; "
            "print('mixed=' + str(d.make_accelerator('bf16', 8, 1.0).mixed_precision))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"mixed={expected}" in out.stdout
    assert ("no native bf16" in out.stderr) == (not native)


def test_clip_cov_chooses_the_same_tokens_in_one_and_two_processes(tiny_llama: Path, tmp_path: Path):
    # one_update.py's engine log-probs are all 0, so every cov_t is 0, inside (-1, 1): Clip-Cov draws
    # int(0.3 * T) of all T tokens at random. Two processes must draw the tokens one process draws
    # (over the gathered batch, same seed), or the updates differ.
    extra = ("algorithm.entropy_control=clip_cov", "algorithm.clip_cov_ratio=0.3", "algorithm.clip_cov_low=-1",
             "algorithm.clip_cov_high=1")
    single = _one_update("cpu", tiny_llama, tmp_path / "single.pt", *extra)
    plain = _one_update("cpu", tiny_llama, tmp_path / "plain.pt")
    assert 0.25 < single["metrics"]["train/cov_controlled_frac"] <= 0.3
    assert single["metrics"]["train/loss"] != pytest.approx(plain["metrics"]["train/loss"], abs=1e-6)
    other = _one_update("cpu_ddp", tiny_llama, tmp_path / "ddp.pt", *extra)
    assert other["metrics"]["train/cov_controlled_frac"] == single["metrics"]["train/cov_controlled_frac"]
    assert other["metrics"]["train/loss"] == pytest.approx(single["metrics"]["train/loss"], abs=1e-6)
    assert other["metrics"]["train/grad_norm"] == pytest.approx(single["metrics"]["train/grad_norm"], rel=1e-5)
    gaps = torch.cat([(other["weights"][k] - single["weights"][k]).abs().flatten() for k in single["weights"]])
    assert int((gaps > 1e-5).sum()) <= 10 and gaps.max().item() < 1e-4


PPO = ("algorithm.advantage=gae", "critic.enabled=true", "critic.learning_rate=1e-4", "algorithm.gamma=0.9",
       "algorithm.lam=0.8", "algorithm.num_mini_batches=2", "algorithm.value_clip=0.0005")


def _close(a: dict, b: dict, what: str) -> None:
    assert set(a) == set(b)
    gaps = torch.cat([(a[k] - b[k]).abs().flatten() for k in a])
    # As above: a handful of weights whose gradient is near Adam's eps may move by up to ~lr.
    assert int((gaps > 1e-5).sum()) <= 10 and gaps.max().item() < 1e-4, (what, gaps.max().item())


def test_ppo_critic_and_policy_update_the_same_in_1_vs_4_micro_batches_and_1_vs_2_processes(tiny_llama: Path,
                                                                                             tmp_path: Path):
    # 8 rows in 2 mini-batches of 4: micro-batch 4 runs one micro-batch per mini-batch, 1 runs four.
    one = _one_update("cpu", tiny_llama, tmp_path / "one.pt", *PPO, "trainer.micro_batch_size=4",
                      "critic.micro_batch_size=4")
    base = load_file(tiny_llama / "model.safetensors")
    moved = {k for k in one["critic"] if k.removeprefix("backbone.") in base
             and not torch.equal(one["critic"][k], base[k.removeprefix("backbone.")])}
    assert len(moved) > len(base) // 2  # the critic's trunk learned, not only its head
    assert one["critic"]["backbone.score.weight"].abs().max() > 0  # the head left 0
    assert 0 < one["metrics"]["critic/value_clip_frac"] < 1  # the second mini-batch's values hit the band
    four = _one_update("cpu", tiny_llama, tmp_path / "four.pt", *PPO, "trainer.micro_batch_size=1",
                       "critic.micro_batch_size=1")
    two = _one_update("cpu_ddp", tiny_llama, tmp_path / "two.pt", *PPO, "trainer.micro_batch_size=4",
                      "critic.micro_batch_size=4")
    zero2 = _one_update("cpu_zero2", tiny_llama, tmp_path / "zero2.pt", *PPO)
    # Gradient checkpointing: the critic's (and the policy's) forward without the shared-prompt cache.
    ckpt = _one_update("cpu", tiny_llama, tmp_path / "ckpt.pt", *PPO, "model.gradient_checkpointing=true")
    for name, other in (("4 micro-batches", four), ("2 processes", two), ("ZeRO-2", zero2),
                        ("gradient checkpointing", ckpt)):
        _close(one["weights"], other["weights"], f"policy, {name}")
        _close(one["critic"], other["critic"], f"critic, {name}")
        for key in ("critic/explained_var", "critic/grad_norm", "train/grad_norm"):
            assert other["metrics"][key] == pytest.approx(one["metrics"][key], rel=1e-5), (name, key)
        # The second mini-batch's loss is taken through the updated policy's log-probs, about -12 on
        # the random tiny model's 49k vocabulary: float32 resolves them to ~1e-6, and another batch
        # shape (another GEMM blocking; AVX-512 and AMX kernels differ here) moves each ratio by that
        # much: 1.4e-6 on a loss of 8.3e-3 was measured on an AMX machine. 1e-5 is still 0.1 % of it.
        value_loss = one["metrics"]["critic/value_loss"]
        assert other["metrics"]["critic/value_loss"] == pytest.approx(value_loss, abs=1e-6), name
        assert other["metrics"]["train/loss"] == pytest.approx(one["metrics"]["train/loss"], abs=1e-5), name


def test_ppo_critic_is_refused_under_zero3_in_one_line(tiny_llama: Path, tmp_path: Path):
    proc = launch("cpu_zero3", [str(REPO / "tests/one_update.py"), str(tmp_path / "x.pt"),
                                f"model.name_or_path={tiny_llama}", f"trainer.output_dir={tmp_path / 'run'}",
                                "data.num_examples=16", "rollout.backend=hf", "rollout.num_generations=2",
                                "trainer.prompts_per_step=4", *PPO])
    assert proc.returncode != 0
    assert "ZeRO-3 does not support here: launch with configs/accelerate/cpu_zero2.yaml" in proc.stderr
