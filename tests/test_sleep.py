"""rollout.sleep: the vLLM engine releases its GPU memory during the update (vLLM sleep mode,
level 2) and the weight push restores it. GPU-only: elsewhere it is refused in one line."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from test_cli_errors import cli, one_error

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_sleep_without_a_gpu_is_refused_before_loading(tmp_path: Path):
    out = tmp_path / "run"
    one_error(cli(f"trainer.output_dir={out}", "rollout.sleep=true"),
              "rollout.sleep=true needs a CUDA GPU", "set rollout.sleep=false")
    assert not out.exists()


def test_sleep_with_the_hf_backend_is_refused(tmp_path: Path):
    out = tmp_path / "run"
    one_error(cli(f"trainer.output_dir={out}", "rollout.sleep=true", "rollout.backend=hf"),
              "rollout.sleep=true needs rollout.backend=vllm", "set rollout.sleep=false")
    assert not out.exists()


@pytest.mark.gpu
@pytest.mark.slow
def test_sleep_frees_gpu_memory_and_the_push_restores_the_weights(tiny_llama: Path):
    pytest.importorskip("vllm")
    from grpo_trainer.forward import completion_logprobs, pack
    from grpo_trainer.models import load_causal_lm
    from grpo_trainer.rollout import SamplingConfig, make_engine
    from grpo_trainer.weights import iter_full_weights

    engine = make_engine("vllm", model_path=str(tiny_llama), dtype="float32", seed=0, max_model_len=128,
                         gpu_memory_utilization=0.1, sleep=True)
    policy = load_causal_lm(str(tiny_llama)).cuda()  # the "trained" policy: other weights
    torch.manual_seed(123)
    with torch.no_grad():
        for p in policy.parameters():
            if p.dim() > 1:
                p.add_(torch.randn_like(p) * 0.1)
    prompt, sampling = [1, 520, 2300, 45, 98, 7, 311], SamplingConfig(num_generations=2, max_tokens=10)
    free, total = torch.cuda.mem_get_info()
    engine.sleep()
    # The engine held 0.1 of the device (weights ~26 MB, the rest KV cache); nearly all comes back.
    assert torch.cuda.mem_get_info()[0] - free > 0.05 * total
    with pytest.raises(RuntimeError, match="asleep"):
        engine.generate([prompt], sampling, seed=5)
    engine.load_weights(iter_full_weights(policy))  # wakes the weights, pushes, wakes the KV cache
    batch = engine.generate([prompt], sampling, seed=5)
    mb = pack([0, 1], [prompt, prompt], batch.completion_ids, pad_id=0).to("cuda")
    with torch.no_grad():
        ours, _ = completion_logprobs(policy, mb, temperature=1.0)
    for i, ids in enumerate(batch.completion_ids):
        torch.testing.assert_close(ours[i, :len(ids)].cpu(), torch.tensor(batch.logprobs[i]), atol=1e-3, rtol=0)
    engine.close()


@pytest.mark.gpu
@pytest.mark.slow
def test_two_steps_with_sleep_keep_the_engine_on_the_policy(tiny_llama: Path, tmp_path: Path):
    pytest.importorskip("vllm")
    from test_distributed import launch
    from test_e2e import read_metrics, tiny_overrides

    run = tmp_path / "run"
    proc = launch("gpu", ["-m", "grpo_trainer.train", "--recipe", str(REPO / "recipes/quickstart.yaml"),
                          *tiny_overrides(tiny_llama, run, 2), "rollout.sleep=true", "rollout.dtype=float32",
                          "trainer.mixed_precision='no'", "rollout.gpu_memory_utilization=0.1"])
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = read_metrics(run)
    assert [r["step"] for r in rows] == [1, 2]
    # Step 2 sampled from weights pushed into an engine that slept through step 1's update: the
    # canary compares them with the trainer's fp32 log-probs. A push into memory that was not
    # restored, or not made, gives KLs of 0.1 and more (tests/test_canary.py).
    assert math.isfinite(rows[1]["mismatch/kl"]) and rows[1]["mismatch/kl"] < 1e-4, rows[1]
