"""Same recipe, same seed, same numbers: three fp32 steps of a few recipes on the tiny random Llama
(HF rollout backend, one thread) must reproduce, to the last bit, the per-step metrics (timings
aside), the logged sample completions and a few weight values recorded in
tests/data/regression_steps.json.

The record was written by the code before the rollout-record redesign (issue 13); a refactor
that is meant to keep every behaviour must leave it passing unchanged. A change that is meant to
change the numbers re-records it, and says why in its commit:

    GRPO_TRAINER_RECORD_REGRESSION=1 python -m pytest tests/test_regression.py

The last bits of fp32 sums depend on the CPU's kernels (the same commit gives other entropy and
grad-norm ulps on an AVX2 machine than on an AVX512-BF16 one, and on an AMD AVX512-BF16 one than
on an Intel one with AMX), so the record holds one entry per CPU kind (`cpu_kind()`); a kind
without an entry skips, saying how to record one. A metric or sample field added after an entry
was recorded is not in it and is not compared: each entry pins what it holds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from grpo_trainer.config import load_config

REPO = Path(__file__).resolve().parents[1]
RECORD = REPO / "tests" / "data" / "regression_steps.json"
# Fixed entries (flat indices) of a few tensors: enough to see any change of the update.
WEIGHTS = {"model.layers.0.self_attn.q_proj.weight": [0, 7, 1234, 9999, 16383],
           "model.layers.1.mlp.down_proj.weight": [0, 5, 4321, 20000, 32767],
           "model.layers.0.input_layernorm.weight": [0, 3, 64, 100, 127]}
KINDS = ["right", "wrong", "mixed", "right", "wrong", "mixed", "right", "wrong", "wrong", "right", "mixed", "right"]


def base(model: Path, out: Path) -> list[str]:
    # test_resume.argv's cheap quickstart variant, three steps
    return [f"model.name_or_path={model}", f"trainer.output_dir={out}", "trainer.max_steps=3",
            "rollout.backend=hf", "data.num_examples=64", "rollout.num_generations=4",
            "rollout.max_completion_length=12", "rollout.dtype=null", "trainer.mixed_precision='no'",
            "trainer.prompts_per_step=2", "trainer.micro_batch_size=8", "trainer.learning_rate=1e-3",
            "trainer.lr_scheduler=cosine", "trainer.save_every=0", "trainer.log_samples_every=1",
            "trainer.num_log_samples=8", "trainer.torch_threads=1", "reward.num_workers=1",
            # The record was made with torch's SDPA; the matmul attention (the default since) matches
            # it to ~1e-7, not to the bit, and each CPU kind's entry can only be re-recorded on one.
            "model.attention_gib=0",
            # And with torch's (MKL's) fp32 linear kernel, whose bits it holds.
            "model.onednn_linear=false"]


def recipes(model: Path, tmp: Path) -> dict[str, list[str]]:
    data = tmp / "kinds.jsonl"
    data.write_text("".join(json.dumps({"question": f"What is {i} plus one?", "answer": f"#### {i + 1}", "kind": k})
                            + "\n" for i, k in enumerate(KINDS)))
    return {
        # GRPO as the quickstart (token-mean, clip-higher), verifier components, held-out eval at step 3
        "grpo": [*base(model, tmp / "grpo"), "trainer.eval_every=3", "trainer.eval_examples=8",
                 "reward.functions=[{name: gsm8k, kwargs: {mode: flexible}}, {name: format, weight: 0.5, "
                 "kwargs: {style: gsm8k}}, {name: 'tests.reward_fns:even_token_fraction'}]"],
        # DAPO-ish: dynamic-sampling refill over agreeing groups, soft overlong penalty, two passes
        # over two mini-batches with TIS against the engine's log-probs
        "dapo": [*base(model, tmp / "dapo"), f"data.source={data}", "trainer.eval_every=0",
                 "algorithm.dynamic_sampling=refill", "algorithm.max_gen_rounds=3", "algorithm.overlong_penalty=true",
                 "algorithm.overlong_cache_len=8", "algorithm.num_iterations=2", "algorithm.num_mini_batches=2",
                 "algorithm.tis_cap=2.0",
                 "reward.functions=[{name: 'tests.reward_fns:by_kind'}, {name: 'tests.reward_fns:scaled', "
                 "weight: 0.1, kwargs: {scale: 2.0}}]"],
        # KL to a reference as a reward penalty with the adaptive beta, GRPO per-sequence loss
        "kl_reward": [*base(model, tmp / "kl"), "trainer.eval_every=0", "algorithm.beta=0.05",
                      "algorithm.kl_mode=reward", "algorithm.kl_target=0.01", "algorithm.loss_agg=seq_mean_token_mean",
                      "reward.functions=[{name: 'tests.reward_fns:even_token_fraction'}]"],
    }


def run(overrides: list[str]) -> dict:
    from grpo_trainer.trainer import GRPOTrainer

    trainer = GRPOTrainer(load_config(REPO / "recipes" / "quickstart.yaml", overrides))
    history = trainer.train()
    state = trainer.acc.unwrap_model(trainer.model).state_dict()
    out = Path(trainer.cfg.trainer.output_dir)
    return {
        "metrics": [{k: v for k, v in row.items() if not k.startswith(("time/", "throughput/"))} for row in history],
        "samples": [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()],
        # repr: the shortest text that reads back as the same float
        "weights": {name: [repr(state[name].flatten()[i].item()) for i in idx] for name, idx in WEIGHTS.items()},
    }


def cpu_kind() -> str:
    """The CPU's vector unit as torch dispatches on it, e.g. 'AVX2', 'AVX512+bf16' (AMD EPYC) or
    'AVX512+bf16+amx' (Intel Xeon): the last two give other fp32 ulps on the same commit
    (2026-12-02), their GEMMs being blocked differently."""
    import torch

    from grpo_trainer.hardware import cpu_has_native_bf16

    amx = getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
    kind = torch.backends.cpu.get_cpu_capability() + ("+bf16" if cpu_has_native_bf16() else "")
    return kind + ("+amx" if amx else "")


@pytest.fixture(autouse=True)
def _importable_tests(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO))


FRESH = """
import json, sys
sys.path[:0] = [sys.argv[1], sys.argv[1] + "/tests"]
from pathlib import Path
from test_regression import recipes, run
tmp = Path(sys.argv[3])
Path(sys.argv[4]).write_text(json.dumps({n: run(o) for n, o in recipes(Path(sys.argv[2]), tmp).items()}))
"""


def test_three_steps_reproduce_the_recorded_numbers(tiny_llama, tmp_path):
    # In a fresh interpreter: earlier tests in this process (vLLM engines, other trainers) leave
    # global torch state behind (thread pools, backend flags) that moves fp32 sums by an ulp.
    env = {**os.environ, "PYTHONPATH": str(REPO), "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    out = tmp_path / "got.json"
    proc = subprocess.run([sys.executable, "-c", FRESH, str(REPO), str(tiny_llama), str(tmp_path), str(out)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(out.read_text())
    kind = cpu_kind()
    records = json.loads(RECORD.read_text())
    if os.environ.get("GRPO_TRAINER_RECORD_REGRESSION"):
        records[kind] = got
        RECORD.write_text(json.dumps(records, indent=1) + "\n")
    if kind not in records:
        pytest.skip(f"no regression record for this CPU ({kind}; recorded: {', '.join(records)}): record one "
                    "with GRPO_TRAINER_RECORD_REGRESSION=1 on a commit whose numbers are trusted")
    want = records[kind]
    for name in want:
        # Something happened that could change: rows were trained and the weights moved.
        assert any(row["train/rows_trained"] > 0 for row in want[name]["metrics"]), name
        if name == "dapo":  # agreeing groups were dropped and refilled
            assert any(row["dynamic/filtered_groups"] > 0 and row["dynamic/gen_rounds"] > 1
                       for row in want[name]["metrics"])
        for step, (g, w) in enumerate(zip(got[name]["metrics"], want[name]["metrics"]), start=1):
            assert {k: g.get(k) for k in w} == w, (name, step, {k: (g.get(k), w[k]) for k in w if g.get(k) != w[k]})
        assert len(got[name]["metrics"]) == len(want[name]["metrics"]) == 3
        assert len(got[name]["samples"]) == len(want[name]["samples"]), name
        for g, w in zip(got[name]["samples"], want[name]["samples"]):
            assert {k: g.get(k) for k in w} == w, name
        assert got[name]["weights"] == want[name]["weights"], name
