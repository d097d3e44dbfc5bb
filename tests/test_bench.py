"""The benchmark's arithmetic and report formatting, its trainer configuration, and one `--quick`
run on the tiny random Llama (real vLLM and HF engines, no GRPO steps)."""

from __future__ import annotations

import json
import math
import mmap
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from grpo_trainer.bench import (
    QUICK,
    format_table,
    gemm_flops,
    linear_flops,
    linear_shapes,
    parse_args,
    step_overrides,
    to_json,
    train_flops,
)
from grpo_trainer.bench.measure import peak_rss_gib_then_reset, rollout_gemm_floor
from grpo_trainer.bench.report import gemm_floor, merged_shapes, update_flops
from grpo_trainer.config import load_config
from grpo_trainer.hardware import cpu_has_native_bf16

REPO = Path(__file__).resolve().parents[1]


def test_flop_formulas():
    # 6 * 134_515_008 params (SmolLM2-135M) * 7_000 tokens = 5_649_630_336_000
    assert train_flops(134_515_008, 7_000) == 5_649_630_336_000
    # 2 * 2048**3 = 2 * 8_589_934_592
    assert gemm_flops(2048) == 17_179_869_184
    # SmolLM2-135M: per layer q, o 576*576, k, v 576*192 (3 KV heads of 64), gate, up, down
    # 576*1536 -> 3_538_944, times 30 = 106_168_320, LM head 576*49_152 = 28_311_552: 134_479_872,
    # the 134_515_008 parameters less 61 norms of 576
    smollm2 = SimpleNamespace(hidden_size=576, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                              intermediate_size=1536, vocab_size=49_152)
    shapes = linear_shapes(smollm2)
    assert sum(k * n * count for k, n, count in shapes) == 134_479_872 == 134_515_008 - 61 * 576
    assert linear_flops(shapes, 1_000) == 6 * 1_000 * 134_479_872
    # An update: the body's 106_168_320 at 1_000 tokens, the LM head's 28_311_552 at 800 completion tokens
    assert update_flops(shapes, 1_000, 800) == 6 * (1_000 * 106_168_320 + 800 * 28_311_552)
    assert linear_shapes(SimpleNamespace(hidden_size=768, n_layer=12)) == []  # not Llama-shaped: no line
    # vLLM's layout: qkv 576 -> 576 + 2*192 = 960, gate_up 576 -> 3072; the same weights in all
    merged = merged_shapes(shapes)
    assert merged == [(576, 960, 30), (576, 576, 30), (576, 3072, 30), (1536, 576, 30), (576, 49_152, 1)]
    assert sum(k * n * count for k, n, count in merged) == 134_479_872
    assert merged_shapes([]) == []


def test_rollout_gemm_floor_counts_one_step_per_token_after_the_first():
    # Completions of 3, 1 and 2 tokens: the prefill gives each its first; then step 1 runs the
    # two still going (3 and 2 tokens), step 2 the one of 3 tokens.
    shapes = [(8, 16, 2), (16, 8, 2), (8, 32, 1)]
    floor = rollout_gemm_floor(shapes, [5, 7], [3, 1, 2], "float32", repeats=1)
    assert floor["decode_steps"] == 2 and floor["dtype"] == "float32"
    assert floor["seconds"] == pytest.approx(floor["prefill_s"] + floor["decode_s"])
    assert floor["prefill_s"] > 0 and floor["decode_s"] > 0
    assert rollout_gemm_floor(shapes, [5], [1, 1], "float32", repeats=1)["decode_steps"] == 0


def test_to_json_drops_non_finite_and_rounds():
    out = json.loads(to_json({"a": math.nan, "b": [1.23456789, math.inf], "c": {"d": 7, "e": 2.5e-9}}))
    assert out == {"a": None, "b": [1.23457, None], "c": {"d": 7, "e": 2.5e-9}}


def _result(step: dict | None) -> dict:
    return {
        "machine": {"cpu": "Test CPU", "cores": 2, "torch": "2.13.0", "vllm": "0.32.0", "loadavg": [1.5, 1.0, 1.0]},
        "config": {"model": "m", "data": "synthetic", "prompts": 4, "G": 8, "max_tokens": 128, "dtype": "float32",
                   "rollout_dtype": "float32", "mixed_precision": "no"},
        "rollout": {"vllm": {"generated_tokens": 4096, "seconds": 8.0, "tokens_per_s": 512.0, "cores_used": 1.95,
                             "startup_s": 11.5, "gemm_floor": {"seconds": 6.5, "prefill_s": 0.5, "decode_s": 6.0,
                                                                "decode_steps": 127, "dtype": "float32"}},
                    "hf": {"generated_tokens": 4096, "seconds": 32.0, "tokens_per_s": 128.0},
                    "vllm_over_hf": 4.0},
        # 6 * 135e6 * 7_000 = 5.67e12 FLOP in 30 s = 1.89e11 FLOP/s; / 3.78e11 peak = 50.0 %
        "train": {"tokens": 7000, "seconds": 30.0, "tokens_per_s": 233.3, "params": 135_000_000,
                  "flops_per_s": 1.89e11, "gemm_peak_flops_per_s": {"float32": 3.78e11, "bfloat16": 7.0e11},
                  "peak_dtype": "float32", "peak_fraction": 0.5},
        "sync": {"bytes": 538_060_032, "seconds": 0.5, "bytes_per_s": 1_076_120_064},
        "step": step,
    }


def test_format_table():
    step = {"steps": 3, "step_s_median": 41.25, "step_s_all": [50.0, 41.0, 41.5],
            "phases_s_median": {"rollout": 20.0, "reward": 0.1, "train": 19.0, "sync": 1.0, "step": 41.25},
            "peak_rss_gib": 3.5, "peak_rss_gib_start": 2.0, "peak_rss_gib_all": [3.0, 3.5, 3.25],
            "peak_rss_by_segment": True, "peak_rss_gib_measuring": 3.75,
            "cores_used_all": [1.9, 1.8, 1.85], "zero_variance_frac_all": [1.0, 0.75, 1.0],
            "colocation": {"rows": 32, "train_in_step_s": 33.0, "replayed_s": 25.5, "fwd_bwd_s": 24.0,
                           "in_step_over_fwd_bwd": 1.375, "replayed_over_fwd_bwd": 1.0625,
                           "page_faults_in_step": 1234567, "page_faults_replayed_all": [1000, 2000],
                           "page_faults_fwd_bwd_all": [30, 40],
                           "paired": [{"step": 2, "train_in_step_s": 20.0, "fwd_bwd_s": 19.0,
                                       "train_page_faults": 250_000, "fwd_bwd_page_faults": 12},
                                      {"step": 3, "train_in_step_s": 33.0, "fwd_bwd_s": 30.0,
                                       "train_page_faults": 0, "fwd_bwd_page_faults": 0}],
                           "in_step_over_fwd_bwd_paired": 1.0763}}
    table = format_table(_result(step))
    assert "Test CPU | 2 cores" in table
    assert "135.0M params" in table
    assert "vLLM / HF generate: 4.00x" in table
    assert "vLLM engine start: 11.50 s" in table
    assert ("the model's linear GEMMs alone at its prefill and each decode step's rows: 6.50 s (0.50 s + 127 steps "
            "6.00 s), the floor for this rollout in float32") in table
    assert "compiled engine" not in table
    vllm_row = next(line for line in table.splitlines() if line.startswith("rollout vllm"))
    assert vllm_row.split()[-3:] == ["512", "tok/s", "1.95"]  # rate, then the cores it got
    assert "128 tok/s" in table
    assert "189 GFLOP/s (6*N*tokens)" in table and "50.0% of the float32 peak" in table
    assert "538 MB" in table and "1.08 GB/s" in table
    assert "41.25 s" in table and "rollout 20.00" in table and "peak RSS 3.50 GiB" in table
    assert "cores 1.90, 1.80, 1.85" in table
    assert "peak RSS (GiB): start 2.00, steps 3.00, 3.50, 3.25 | the bench's own bare/replayed runs 3.75" in table
    assert "cannot reset" not in table
    assert ("colocation, the last step's 32 rows: train in step 33.00 s | replayed 25.50 s | bare fwd+bwd 24.00 s "
            "-> in step 1.38x, replayed 1.06x the bare") in table
    assert "minor page faults: in step 1,234,567 | replayed 1,000, 2,000 | bare fwd+bwd 30, 40" in table
    assert ("each step's train phase / its rows' bare fwd+bwd right after: step 2 20.00/19.00 s, "
            "step 3 33.00/30.00 s -> median 1.08x") in table
    assert "their minor page faults: step 2 250,000/12, step 3 0/0" in table
    assert "no row was trained" not in table  # step 2 had informative groups
    step["zero_variance_frac_all"] = [1.0, 1.0, 1.0]
    assert "no row was trained" in format_table(_result(step))
    step["peak_rss_by_segment"] = False
    assert "cannot reset the mark" in format_table(_result(step))
    compiled = _result(step)
    compiled["config"]["compile_engine"] = True
    assert "| compiled engine (--compile-engine)" in format_table(compiled)
    assert "torch's kernel" not in format_table(compiled)
    compiled["config"]["torch_linear"] = True
    assert "| fp32 linear on torch's kernel (--torch-linear)" in format_table(compiled)
    assert "under torch's profiler" not in table
    step["profile"] = {"step": 4, "step_s": 50.5, "phases": {
        "rollout": {"linear": 9.25, "attention": 2.25, "sampling": 1.0, "profiled_s": 22.0},
        "train": {"linear": 15.5, "attention": 2.5, "sampling": 0.0, "profiled_s": 27.0},
        "step": {"linear": 0.0, "attention": 0.0, "sampling": 0.0, "profiled_s": 50.4}}}
    lines = format_table(_result(step)).splitlines()
    at = next(i for i, line in enumerate(lines) if "under torch's profiler" in line)
    assert "step 4, 50.50 s" in lines[at]
    assert lines[at + 1].split() == ["rollout:", "linear", "9.25", "s,", "attention", "2.25", "s,", "sampling", "1.00",
                                     "s", "=", "12.50", "s", "of", "its", "median", "20.00", "s"]
    assert "train: linear 15.50 s, attention 2.50 s = 18.00 s of its median 19.00 s" in lines[at + 2]
    # 12.5 + 18.0 = 30.5 s of the 41.25 s median step: 74 %.
    assert "kernels: 30.50 s of the median step's 41.25 s (74 %)" in lines[at + 3]
    # A critic's phase (PPO) is listed after the policy's and adds to the total; a phase without kernels is not.
    step["phases_s_median"]["critic"] = 5.0
    step["profile"]["phases"]["critic"] = {"linear": 3.0, "attention": 0.5, "sampling": 0.0, "profiled_s": 4.0}
    lines = format_table(_result(step)).splitlines()[at:at + 5]
    assert "critic: linear 3.00 s, attention 0.50 s = 3.50 s of its median 5.00 s" in lines[3]
    assert "kernels: 34.00 s of the median step's 41.25 s (82 %)" in lines[4]
    assert not any("sync:" in line or "step:" in line for line in lines)
    # The GEMM floor: the rollout's 6.5 s + 3.0 TFLOP at 150 GFLOP/s (20.0 s) = 26.5 s; the profiled
    # step's other kernels: attention 2.25 + 2.5 + 0.5 (critic), sampling 1.0 = 6.25 s -> 32.75 s.
    assert "GEMMs alone for one step" not in format_table(_result(step))  # no model_gemms measured
    res = _result(step)
    res["train"]["model_gemms"] = {"tokens": 1750, "flops_per_s": 1.5e11, "peak_fraction": 0.397, "work_flops": 3.0e12}
    assert gemm_floor(res) == {"rollout_s": 6.5, "train_s": 20.0, "train_flops": 3.0e12, "rate": 1.5e11,
                               "seconds": 26.5}
    lines = format_table(res).splitlines()
    at = next(i for i, line in enumerate(lines) if "GEMMs alone for one step" in line)
    assert lines[at].endswith("rollout 6.50 s (its floor above) + train 20.00 s (3 TFLOP at the ceiling's "
                              "150 GFLOP/s) = 26.50 s, the shortest step these GEMMs allow; "
                              "the median step took 41.25 s")
    assert lines[at + 1].strip() == "with the profiled step's attention and sampling kernels (6.25 s): 32.75 s"
    del step["profile"]
    assert "with the profiled step's" not in format_table(res)
    # Part 6: the checkpoint's parts biggest first, the faster save, the weights' bytes in it / the model's.
    assert "checkpoint:" not in format_table(res)
    step["checkpoint"] = {"bytes": 1_618_000_000, "by_part": {"model": 541_600_000, "state": 1_076_400_000},
                          "save_s_all": [1.5, 1.25], "param_bytes": 538_000_000, "weight_file_bytes": 1_076_100_000,
                          "weight_copies": 2.0002}
    assert ("  checkpoint: 1.62 GB (state 1.08 GB, model 542 MB), saved in 1.25 s (saves 1.50, 1.25 s); the model's "
            "weights (538 MB) in it 2.00x") in format_table(res).splitlines()
    skipped = format_table(_result(None))
    assert [line.split() for line in skipped.splitlines() if line.startswith("GRPO step")] == [
        ["GRPO", "step", "skipped"]]


def test_profile_splits_kernel_time_by_innermost_phase():
    import torch

    from grpo_trainer.bench.kernels import profiled, seconds_by_phase
    from grpo_trainer.metrics import PhaseTimer

    a, b = torch.randn(64, 64), torch.randn(8, 64, 64)
    timer = PhaseTimer()
    with profiled() as by_phase:
        a @ a  # in no phase: counted nowhere
        with timer("step"):
            torch.mm(a, a)  # in the step, outside its phases
            with timer("rollout"):
                torch.mm(a, a), torch.mm(a, a)
            with timer("train"):
                torch.bmm(b, b), (a * 2).exp()
            with timer("rollout"):  # a phase entered twice adds up
                torch.mm(a, a)
    assert set(by_phase) == {"step", "rollout", "train"}
    assert by_phase["rollout"]["linear"] > 0 and by_phase["rollout"]["attention"] == 0
    assert by_phase["train"]["attention"] > 0 and by_phase["train"]["linear"] == 0
    assert by_phase["step"]["linear"] > 0 and by_phase["step"]["attention"] == 0
    assert by_phase["rollout"]["profiled_s"] <= by_phase["step"]["profiled_s"] <= timer.seconds["step"]

    # The same sums found another way: each operator's nearest phase among its profiler ancestors.
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        with timer("step"):
            torch.mm(a, a)
            with timer("rollout"):
                torch.mm(a, a), torch.mm(a, a)
            with timer("train"):
                torch.bmm(b, b)
    events = prof.events()
    expected: dict = {}
    for e in events:
        if e.name not in ("aten::mm", "aten::bmm"):
            continue
        parent = e.cpu_parent
        while not parent.name.startswith("phase/"):
            parent = parent.cpu_parent
        key = (parent.name[len("phase/"):], "linear" if e.name == "aten::mm" else "attention")
        expected[key] = expected.get(key, 0.0) + e.self_cpu_time_total / 1e6
    got = seconds_by_phase(events)
    assert {key: got[key[0]][key[1]] for key in expected} == pytest.approx(expected, rel=1e-12)
    assert len(expected) == 3


def test_peak_rss_reading_covers_only_what_ran_since_the_last():
    peak_rss_gib_then_reset()
    size = 256 * 2**20
    block = mmap.mmap(-1, size)  # its own mapping: unmapped on close, whatever malloc does
    for offset in range(0, size, mmap.PAGESIZE):
        block[offset] = 1  # resident once touched
    block.close()
    with_block, by_segment = peak_rss_gib_then_reset()
    if not by_segment:
        pytest.skip("this system cannot reset the peak RSS (needs Linux's /proc/self/clear_refs)")
    after, _ = peak_rss_gib_then_reset()
    assert with_block - after >= 0.9 * size / 2**30


def test_quick_defaults_stay_inside_the_repository_and_cwd():
    args = parse_args(["--quick", "--G", "3"])
    assert (args.prompts, args.G, args.max_tokens, args.steps) == (QUICK["prompts"], 3, QUICK["max_tokens"], 1)
    assert args.data == "synthetic" and args.rollout_dtype == "float32"
    out = Path(args.output)
    assert not out.is_absolute() and out.parent == Path("runs/bench") and out.suffix == ".json"


def test_a_wrong_data_path_is_one_line_and_exit_2(capsys):
    with pytest.raises(SystemExit) as exc:
        parse_args(["--quick", "--data", "/nonexistent/train.jsonl"])
    assert exc.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.splitlines() == [
        "error: --data '/nonexistent/train.jsonl' is not a file: pass a GSM8K-format .jsonl or 'synthetic'"]


def test_step_config_matches_the_comparison(tmp_path: Path):
    args = parse_args(["--data", "synthetic", "--mixed-precision", "bf16", "--rollout-dtype", "bfloat16"])
    cfg = load_config(None, step_overrides(args, str(tmp_path)))
    assert (cfg.trainer.prompts_per_step, cfg.rollout.num_generations, cfg.rollout.max_completion_length) == (4, 8, 128)
    assert cfg.rollout.temperature == 1.0 and cfg.algorithm.beta == 0.0 and cfg.algorithm.num_iterations == 1
    assert cfg.algorithm.loss_agg == "token_mean" and cfg.trainer.micro_batch_size == 8
    assert cfg.algorithm.skip_zero_advantage  # TRL's work (every row trained) only when asked:
    full = load_config(None, step_overrides(parse_args(["--data", "synthetic", "--train-all-rows",
                                                        "--micro-batch-size", "4"]), str(tmp_path)))
    assert not full.algorithm.skip_zero_advantage and full.trainer.micro_batch_size == 4
    assert cfg.rollout.enforce_eager is True and full.rollout.enforce_eager is True  # the trainer's default
    compiled = load_config(None, step_overrides(parse_args(["--data", "synthetic", "--compile-engine"]), str(tmp_path)))
    assert compiled.rollout.enforce_eager is False
    assert cfg.model.onednn_linear is True  # the trainer's default; --torch-linear turns it off
    torch_linear = load_config(None, step_overrides(parse_args(["--data", "synthetic", "--torch-linear"]),
                                                    str(tmp_path)))
    assert torch_linear.model.onednn_linear is False
    assert cfg.trainer.mixed_precision == "bf16" and cfg.rollout.dtype == "bfloat16"
    assert cfg.reward.functions == [{"name": "gsm8k", "weight": 1.0, "kwargs": {"mode": "strict"}}]
    assert cfg.trainer.log_samples_every == 0  # train_step without train() has no sample logger


@pytest.mark.slow
def test_quick_run_on_tiny_llama(tiny_llama: Path, tmp_path: Path):
    # Without VLLM_ENABLE_V1_MULTIPROCESSING (conftest sets it): the engine must set it itself, vLLM's
    # variables being rollout/'s business, not the benchmark's.
    env = {k: v for k, v in os.environ.items() if k != "VLLM_ENABLE_V1_MULTIPROCESSING"}
    env["PYTHONPATH"] = str(REPO)
    proc = subprocess.run([sys.executable, "-m", "grpo_trainer.bench", "--quick", "--skip-step", "--model",
                           str(tiny_llama)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # By default: synthetic data, and the JSON under runs/bench/ of the current directory.
    [out] = (tmp_path / "runs/bench").glob("bench-*.json")
    res = json.loads(out.read_text())
    assert res["config"]["data"] == "synthetic"
    P, G, T = QUICK["prompts"], QUICK["G"], QUICK["max_tokens"]
    for name in ("vllm", "hf"):
        r = res["rollout"][name]
        assert r["completions"] == P * G  # 2 * 2
        assert 0 < r["generated_tokens"] <= P * G * T and r["seconds"] > 0 and r["tokens_per_s"] > 0
    assert res["rollout"]["vllm_over_hf"] > 0
    floor = res["rollout"]["vllm"]["gemm_floor"]
    assert floor["dtype"] == "float32" and floor["seconds"] > 0 and "the floor for this rollout" in proc.stdout
    assert floor["decode_steps"] == res["rollout"]["vllm"]["max_completion_tokens"] - 1
    tr = res["train"]
    # tiny Llama: embed 49152*128 = 6_291_456 (tied with lm_head); per layer q 128*128 + k,v 2*128*64 +
    # o 128*128 + mlp 3*128*256 + 2 norms*128 = 147_712, two layers; final norm 128 -> 6_587_008
    assert tr["params"] == 6_587_008
    # All 2 x 2 rows fit one micro-batch (8 rows), so each prompt is computed once, not G times;
    # row_tokens counts it per row (vLLM's completions hold at least one token).
    generated = res["rollout"]["vllm"]["generated_tokens"]
    assert tr["micro_batches"] == 1
    assert tr["tokens"] == sum(res["prompt_tokens"]) + generated
    assert tr["row_tokens"] == G * sum(res["prompt_tokens"]) + generated
    assert tr["flops"] == pytest.approx(6 * 6_587_008 * tr["tokens"], rel=1e-5)
    # The same model's linear GEMMs alone, at the one micro-batch's rows: the parameters less 5 norms of 128
    gemms = tr["model_gemms"]
    assert gemms["tokens"] == tr["tokens"] and gemms["flops"] == pytest.approx(6 * 6_586_368 * tr["tokens"], rel=1e-5)
    assert gemms["flops_per_s"] > 0 and gemms["peak_fraction"] > 0 and "linear GEMMs alone" in proc.stdout
    # The work's own: the body's 294_912 (the LM head's 6_291_456 aside) at every token, the head only
    # at the completion tokens it predicts (the JSON keeps 6 significant digits).
    assert tr["completion_tokens"] == generated
    assert gemms["work_flops"] == pytest.approx(6 * (294_912 * tr["tokens"] + 6_291_456 * generated), rel=1e-5)
    assert tr["tokens_per_s"] > 0 and tr["flops_per_s"] > 0 and tr["peak_fraction"] > 0
    # bf16 is measured only where the CPU multiplies it natively (else about a minute per matmul).
    assert tr["gemm_peak_flops_per_s"]["float32"] > 0
    assert (tr["gemm_peak_flops_per_s"].get("bfloat16", 0) > 0) == cpu_has_native_bf16()
    # fp32 weights pushed to an fp32 engine: 6_587_008 * 4 bytes
    assert res["sync"]["bytes"] == 26_348_032 and res["sync"]["seconds"] > 0
    assert res["step"] is None
    assert res["machine"]["cores"] > 0 and res["machine"]["torch"]
    assert "rollout vllm" in proc.stdout and "weight sync" in proc.stdout
    # The console has the bench's own lines and table; vLLM's and transformers' output is in the log.
    log = "runs/bench/logs/third_party.rank0.log"  # beside the JSON
    assert "[bench] vLLM engine" in proc.stderr and f"own output: {log}" in proc.stderr
    assert "INFO" not in proc.stdout + proc.stderr and "Loading weights" not in proc.stdout + proc.stderr
    assert "vllm" in (tmp_path / log).read_text().lower()


@pytest.mark.slow
def test_quick_steps_replay_the_last_update(tiny_llama: Path, tmp_path: Path):
    # Part 4 alone (the child process the bench starts), every row trained: the colocation figure
    # replays the last step's update on its own rows.
    out = tmp_path / "step.json"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "grpo_trainer.bench", "--only", "step", "--quick", "--train-all-rows",
                           "--profile", "--model", str(tiny_llama), "--output", str(out)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    co = res["colocation"]
    assert co["rows"] == QUICK["prompts"] * QUICK["G"]  # every row is in the loss and trained
    assert co["train_in_step_s"] == res["phases_s_all"][-1]["train"]
    faults = [co["page_faults_in_step"], *co["page_faults_replayed_all"], *co["page_faults_fwd_bwd_all"]]
    assert len(faults) == 5 and all(isinstance(n, int) and n >= 0 for n in faults)
    assert len(co["replayed_all"]) == len(co["fwd_bwd_all"]) == 2 and min(co["fwd_bwd_all"]) > 0
    assert co["replayed_s"] == min(co["replayed_all"])
    assert co["in_step_over_fwd_bwd"] == pytest.approx(co["train_in_step_s"] / co["fwd_bwd_s"], rel=1e-5)
    # One step: it is paired with its own bare forward+backward (with more steps, every step after the first).
    [pair] = co["paired"]
    assert pair["step"] == 1 and pair["train_in_step_s"] == co["train_in_step_s"] and pair["fwd_bwd_s"] > 0
    assert pair["train_page_faults"] == co["page_faults_in_step"] and pair["fwd_bwd_page_faults"] >= 0
    assert co["in_step_over_fwd_bwd_paired"] == pytest.approx(pair["train_in_step_s"] / pair["fwd_bwd_s"], rel=1e-5)
    # The trainer's peak RSS: its start and its one step, the bench's own runs apart.
    assert len(res["peak_rss_gib_all"]) == 1 and res["peak_rss_gib_measuring"] > 0
    assert res["peak_rss_gib"] == max(res["peak_rss_gib_start"], *res["peak_rss_gib_all"])
    assert res["peak_rss_gib"] <= res["peak_rss_gib_process"] + 1e-3
    # Part 6: the trainer's checkpoint holds its weights once (accelerate's own copy would make it 2).
    ck = res["checkpoint"]
    assert len(ck["save_s_all"]) == 2 and min(ck["save_s_all"]) > 0
    assert {"model", "state"} <= set(ck["by_part"]) and ck["bytes"] == sum(ck["by_part"].values())
    assert ck["param_bytes"] <= ck["weight_file_bytes"] < ck["param_bytes"] + 2**20  # plus the safetensors header
    assert ck["weight_copies"] == pytest.approx(1.0, abs=0.01)
    # --profile: one more step under the profiler, in no median; the tiny model's GEMMs are counted.
    prof = res["profile"]
    assert prof["step"] == QUICK["steps"] + 1 and len(res["step_s_all"]) == QUICK["steps"]
    assert prof["phases"]["rollout"]["linear"] > 0 and prof["phases"]["train"]["linear"] > 0
    assert prof["phases"]["train"]["profiled_s"] <= prof["phases"]["step"]["profiled_s"] <= prof["step_s"]
