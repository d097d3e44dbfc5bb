"""The GPU switches, on one CUDA GPU (skipped without one): bf16 autocast, gradient
checkpointing and LoRA together, 2 steps of the tiny model through configs/accelerate/gpu.yaml."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from safetensors.torch import load_file

from test_distributed import launch
from test_e2e import read_metrics, tiny_overrides

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_two_steps_bf16_gradient_checkpointing(tiny_llama: Path, tmp_path: Path, lora: bool):
    run = tmp_path / "run"
    proc = launch("gpu", ["-m", "grpo_trainer.train", "--recipe", str(REPO / "recipes/quickstart.yaml"),
                          *tiny_overrides(tiny_llama, run, 2), "trainer.mixed_precision=bf16",
                          "rollout.dtype=bfloat16", "rollout.gpu_memory_utilization=0.2",
                          "model.gradient_checkpointing=true", "algorithm.beta=0.04",
                          f"model.lora.enabled={'true' if lora else 'false'}"])
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = read_metrics(run)
    assert [r["step"] for r in rows] == [1, 2]
    assert all(math.isfinite(r["train/loss"]) and r["train/grad_norm"] > 0 for r in rows)
    ckpt = run / "checkpoint-000002"
    base = load_file(tiny_llama / "model.safetensors")
    after = load_file(ckpt / "model" / "model.safetensors")
    changed = sum(not (base[k] == after[k]).all() for k in base)
    # LoRA changes exactly the adapted weights (2 layers x 7 modules); full training nearly all.
    assert changed == 14 if lora else changed > len(base) // 2
    assert (ckpt / "adapter").is_dir() == lora
