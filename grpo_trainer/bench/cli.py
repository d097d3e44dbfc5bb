"""Where a GRPO step's time goes on this machine, measured on the same prompts:

1. rollout tokens/s: the vLLM engine vs transformers `generate` (P x G completions, EOS allowed),
   beside the time the model's linear GEMMs alone take for the same tokens (the rollout's floor);
2. trainer tokens/s: forward+backward of the policy on those completions (micro-batches of 8),
   the implied FLOP rate 6*N*tokens and its fraction of the measured 2048^2 GEMM peak, beside the
   rate of the model's own linear GEMMs alone (the ceiling its shapes allow);
3. weight sync: seconds and bytes to push the policy into the vLLM engine;
4. full `GRPOTrainer.train_step()`s split into phases, with peak RSS. They run in a child process
   (`--only step`) so that the trainer's own vLLM engine never shares a process with part 1's,
   and so that its peak RSS is the trainer's alone: its start and each step, read apart from
   part 5's runs between and after them;
5. colocation: each step's train phase (after the first) against its rows' bare forward+backward
   run right after that step (seconds and page faults), then the last step's update replayed on
   the same rows, whole and as bare forward+backward (see `time_colocation`);
6. checkpoint: two saves of that trainer after its steps, their seconds, the checkpoint's bytes
   by part and how many times the model's weights are in it.

    python -m grpo_trainer.bench [--steps 3] [--skip-hf] [--skip-step] [--data FILE] [--output PATH]

Prints a table and writes JSON, by default to runs/bench/bench-YYYYMMDD-HHMMSS.json under the
current directory; vLLM's, transformers' and torch's own output goes to logs/ beside it. The
default data are the built-in synthetic GSM8K-style problems; the README's figures use
`--data ../shared/data/gsm8k/train.jsonl`, the file TRL's baseline reads. A --data path that is
not a file is one `error:` line and exit code 2, not a silent switch to other prompts.

Timings on a shared machine are noisy: `machine.loadavg` records the load when the run started,
and each `cores_used` (CPU seconds / wall seconds of this process) how much of the machine a
measurement actually got.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from grpo_trainer import console
from grpo_trainer.bench.kernels import profiled
from grpo_trainer.bench.measure import (Clock, checkpoint_figures, gemm_peaks, model_gemm_rate, peak_rss_gib_then_reset,
                                        rollout_gemm_floor, time_bare, time_colocation, time_rollout, time_sync,
                                        time_train)
from grpo_trainer.bench.report import (PHASES, format_table, linear_shapes, machine_info, median, merged_shapes,
                                       to_json, update_flops)

REPO = Path(__file__).resolve().parents[2]
DEFAULT_OUTPUT_DIR = Path("runs/bench")  # relative to the current directory, like recipes' runs/...
# The instruction of ../shared/bench/trl_grpo_baseline.py, so both frameworks see the same prompts.
INSTRUCTION = 'Let\'s think step by step and output the final answer after "####".'
# Sizes (the first four are also flags); --quick is for the test on a tiny random model.
NORMAL = {"prompts": 4, "G": 8, "max_tokens": 128, "steps": 3, "gemm_n": 2048, "gemm_repeats": 5,
          "gemm_seconds": 3.0, "sync_repeats": 3, "warm_tokens": 8}
QUICK = {"prompts": 2, "G": 2, "max_tokens": 8, "steps": 1, "gemm_n": 256, "gemm_repeats": 2,
         "gemm_seconds": 0.0, "sync_repeats": 1, "warm_tokens": 4}


def step_overrides(args, out_dir: str) -> list[str]:
    """The trainer config of the comparison: P prompts x G, 128 tokens, T=1, beta 0, one update
    per batch, token-mean loss, gsm8k strict reward."""
    return [f"model.name_or_path={args.model}", f"model.dtype={args.dtype}", f"data.source={args.data}",
            f"data.num_examples={max(64, args.prompts * args.steps)}",
            f"rollout.num_generations={args.G}", f"rollout.max_completion_length={args.max_tokens}",
            "rollout.temperature=1.0", f"rollout.dtype={args.rollout_dtype}",
            f"rollout.enforce_eager={'false' if args.compile_engine else 'true'}",
            f"model.onednn_linear={'false' if args.torch_linear else 'true'}",
            "algorithm.beta=0.0", "algorithm.num_iterations=1", "algorithm.num_mini_batches=1",
            "algorithm.loss_agg=token_mean", "algorithm.eps_high=0.28",
            "reward.functions=[{name: gsm8k, weight: 1.0, kwargs: {mode: strict}}]",
            f"trainer.prompts_per_step={args.prompts}", f"trainer.micro_batch_size={args.micro_batch_size}",
            f"trainer.mixed_precision={args.mixed_precision}", f"trainer.max_steps={args.steps}",
            "trainer.learning_rate=1e-6", "trainer.lr_scheduler=constant", "trainer.log_samples_every=0",
            f"trainer.output_dir={out_dir}",
            # TRL trains every row; by default we skip the zero-advantage ones (exact, see update.py).
            f"algorithm.skip_zero_advantage={'false' if args.train_all_rows else 'true'}"]


def run_steps(args) -> dict:
    """Part 4, in this process: build a GRPOTrainer and time `args.steps` train_step() calls."""
    from grpo_trainer.config import load_config
    from grpo_trainer.trainer import GRPOTrainer

    with tempfile.TemporaryDirectory(prefix="grpo-bench-") as out_dir:
        overrides = step_overrides(args, out_dir)
        cfg = load_config(None, overrides)
        cfg.data.instruction = INSTRUCTION
        trainer = GRPOTrainer(cfg)
        rows, cores, last, paired = [], [], [], []
        run = trainer.updater.run

        def keep_record(record, *a, **kw):  # the last step's rows and page faults, for the colocation figure
            with Clock() as clock:
                out = run(record, *a, **kw)
            last[:] = [record, clock.page_faults]
            return out

        trainer.updater.run = keep_record
        # The trainer's peak RSS covers its start and its steps, not the bench's own measurements
        # between them (bare forward+backward, replays), which allocate on top of what a run holds.
        start_peak, by_segment = peak_rss_gib_then_reset()
        trainer_peaks, bench_peaks = [], []
        try:
            for step in range(1, args.steps + 1):
                trainer.step = step  # train() would also save a checkpoint; we only time steps
                with Clock() as clock:
                    rows.append(trainer.train_step())
                trainer_peaks.append(peak_rss_gib_then_reset()[0])
                cores.append(clock.cores_used)
                console.line(f"[bench] step {step}: {rows[-1]['time/step']:.2f} s", console.err())
                if not args.skip_colocation and (step > 1 or args.steps == 1):  # as the median, after step 1
                    bare = time_bare(trainer, last[0], args.mixed_precision)
                    bench_peaks.append(peak_rss_gib_then_reset()[0])
                    # The page faults of both: memory the kernel handed over afresh, slow on this machine.
                    paired.append({"step": step, "train_in_step_s": rows[-1]["time/train"], "fwd_bwd_s": bare.wall,
                                   "train_page_faults": last[1], "fwd_bwd_page_faults": bare.page_faults})
                    console.line(f"[bench] step {step}: train {rows[-1]['time/train']:.2f} s, its rows' bare "
                                 f"forward+backward right after {bare.wall:.2f} s", console.err())
            trainer.updater.run = run
            colocation = None
            if not args.skip_colocation:
                console.line("[bench] the last update again, replayed and as bare forward+backward", console.err())
                colocation = time_colocation(trainer, last[0], rows[-1]["time/train"], last[1],
                                             args.mixed_precision, paired)
                bench_peaks.append(peak_rss_gib_then_reset()[0])
            profile = None
            if args.profile:  # one more step, in no median: its kernels' time by phase
                console.line("[bench] one more step under torch's profiler", console.err())
                trainer.step = args.steps + 1
                with profiled() as by_phase, Clock() as clock:  # the clock stops before the profile is read
                    trainer.train_step()
                profile = {"step": trainer.step, "step_s": clock.wall, "phases": by_phase}
                bench_peaks.append(peak_rss_gib_then_reset()[0])
            console.line("[bench] two checkpoint saves", console.err())
            saves = []
            for k in (2, 3):  # the second as every save of a run after its first: files cached, dirs there
                trainer.step = args.steps + k
                with Clock() as clock:
                    path = trainer.save()
                saves.append(clock.wall)
            checkpoint = {"save_s_all": saves, **checkpoint_figures(path, trainer.model)}
            bench_peaks.append(peak_rss_gib_then_reset()[0])
        finally:
            trainer.reward_fn.close()
            trainer.engine.close()
    # The first step pays one-off costs (kernel choice, allocator growth), as in the TRL anchor.
    timed = rows[1:] or rows
    return {"steps": len(rows), "step_s_median": median([r["time/step"] for r in timed]),
            "step_s_all": [r["time/step"] for r in rows], "cores_used_all": cores,
            # All rewards equal in every group -> zero advantages -> the update trains no row.
            "zero_variance_frac_all": [r["groups/zero_variance_frac"] for r in rows],
            "phases_s_median": {p: median([r.get(f"time/{p}", 0.0) for r in timed]) for p in PHASES},
            "phases_s_all": [{p: r.get(f"time/{p}") for p in PHASES} for r in rows],
            "rollout_tokens_per_s_median": median([r["throughput/rollout_tokens_per_s"] for r in timed]),
            "completion_len_mean": median([r["completion/len_mean"] for r in timed]),
            "reward_mean": [r["reward/mean"] for r in rows],
            "peak_rss_gib": max([start_peak] + trainer_peaks), "peak_rss_gib_start": start_peak,
            "peak_rss_gib_all": trainer_peaks, "peak_rss_by_segment": by_segment,
            # The bench's bare forward+backward and replays: its own, not the trainer's.
            "peak_rss_gib_measuring": max(bench_peaks, default=None),
            "peak_rss_gib_process": max([start_peak] + trainer_peaks + bench_peaks),
            "colocation": colocation, "profile": profile, "checkpoint": checkpoint,
            # The output directory is a deleted temporary one: not part of the configuration.
            "config_overrides": [o for o in overrides if not o.startswith("trainer.output_dir=")]
            + [f"data.instruction={INSTRUCTION}"]}


def run_steps_child(args) -> dict:
    with tempfile.TemporaryDirectory(prefix="grpo-bench-step-") as tmp:
        out = Path(tmp) / "step.json"
        cmd = [sys.executable, "-m", "grpo_trainer.bench", "--only", "step", "--model", args.model,
               "--data", args.data, "--prompts", str(args.prompts), "--G", str(args.G),
               "--max-tokens", str(args.max_tokens), "--dtype", args.dtype, "--rollout-dtype", args.rollout_dtype,
               "--mixed-precision", args.mixed_precision, "--steps", str(args.steps), "--output", str(out)]
        cmd += ["--micro-batch-size", str(args.micro_batch_size)] + (["--train-all-rows"] if args.train_all_rows else [])
        cmd += ["--skip-colocation"] if args.skip_colocation else []
        cmd += ["--compile-engine"] if args.compile_engine else []
        cmd += ["--torch-linear"] if args.torch_linear else []
        cmd += ["--profile"] if args.profile else []
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
        cmd += ["--log-dir", args.log_dir] + (["--verbose"] if args.verbose else [])
        cmd += ["--quick"] if args.quick else []
        # On the terminal's descriptors: the child keeps its own third-party output in the same log.
        proc = subprocess.run(cmd, env=env, stdout=console.out(), stderr=console.err())
        if proc.returncode != 0:
            raise RuntimeError(f"the GRPO step benchmark (--only step) failed with exit code {proc.returncode}; "
                               f"see its lines above and {console.log_path(args.log_dir)}, or rerun with --skip-step")
        return json.loads(out.read_text())


def run_parts_1_to_3(args) -> dict:
    import torch

    from grpo_trainer.data import load_examples, render_prompts
    from grpo_trainer.hardware import cpu_has_native_bf16
    from grpo_trainer.models import load_causal_lm, load_tokenizer
    from grpo_trainer.rollout import SamplingConfig, make_engine

    cores = len(os.sched_getaffinity(0))
    torch.set_num_threads(cores)
    result = {"machine": machine_info()}
    tok = load_tokenizer(args.model_path)
    examples = load_examples(args.data, "train", args.prompts, 0, 1)
    _, _, prompt_ids, _ = render_prompts(examples, tok, INSTRUCTION, None, 256)
    sampling = SamplingConfig(args.G, args.max_tokens, temperature=1.0)
    result["config"] = {k: getattr(args, k) for k in ("model", "model_path", "data", "prompts", "G", "max_tokens",
                                                       "dtype", "rollout_dtype", "mixed_precision", "steps",
                                                       "micro_batch_size", "train_all_rows", "compile_engine",
                                                       "torch_linear", "profile", "quick")}
    result["prompt_tokens"] = [len(p) for p in prompt_ids]

    console.line("[bench] GEMM peak", console.err())
    peak_dtype = "bfloat16" if args.mixed_precision == "bf16" or args.dtype == "bfloat16" else "float32"
    # Without native bf16 a 2048^2 bf16 matmul takes about a minute (0.7 GFLOP/s on an AVX2 CPU)
    # and says nothing the fp32 run does not: the trainer falls back to fp32 there.
    dtypes = ("float32", "bfloat16") if cpu_has_native_bf16() or peak_dtype == "bfloat16" else ("float32",)
    gemm_runs = [gemm_peaks(args.gemm_n, args.gemm_repeats, args.gemm_seconds, dtypes)]
    policy = load_causal_lm(args.model_path, args.dtype, onednn_linear=not args.torch_linear)
    rollout: dict = {"hf": None}
    # HF generate first, in a process vLLM has not yet touched (it re-pins threads on CPU).
    if not args.skip_hf:
        console.line("[bench] HF generate", console.err())
        hf = make_engine("hf", model_path=args.model_path, policy=policy, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id)
        rollout["hf"], _ = time_rollout(hf, prompt_ids, sampling, args.warm_tokens, args.mixed_precision)
    console.line("[bench] vLLM engine", console.err())
    with Clock() as startup:
        engine = make_engine("vllm", model_path=args.model_path, dtype=args.rollout_dtype, seed=0,
                             max_model_len=max(map(len, prompt_ids)) + args.max_tokens, kv_cache_gib="auto",
                             kv_batch=(len(prompt_ids), args.G, args.max_tokens), enforce_eager=not args.compile_engine)
    try:
        rollout["vllm"], batch = time_rollout(engine, prompt_ids, sampling, args.warm_tokens)
        rollout["vllm"]["startup_s"] = startup.wall
        console.line("[bench] weight sync", console.err())
        result["sync"] = time_sync(engine, policy, args.sync_repeats)
    finally:
        engine.close()
        del engine
        gc.collect()
    if rollout["hf"]:
        rollout["vllm_over_hf"] = rollout["vllm"]["tokens_per_s"] / rollout["hf"]["tokens_per_s"]
    result["rollout"] = rollout
    torch.set_num_threads(cores)
    shapes = linear_shapes(policy.config)
    if shapes:  # with all cores, as the engine had them; in the dtype the engine sampled in
        native = args.rollout_dtype == "float32" or cpu_has_native_bf16()
        rollout["vllm"]["gemm_floor"] = rollout_gemm_floor(
            merged_shapes(shapes), [len(p) for p in prompt_ids], [len(c) for c in batch.completion_ids],
            args.rollout_dtype if native else "float32", args.gemm_repeats)
    console.line("[bench] trainer forward+backward", console.err())
    train = time_train(policy, batch, tok.pad_token_id, args.mixed_precision, args.micro_batch_size)
    # Again right after, under the same vLLM thread binding as the trainer; keep the best of both.
    gemm_runs.append(gemm_peaks(args.gemm_n, args.gemm_repeats, args.gemm_seconds, dtypes))
    peaks = {k: max(run[k] for run in gemm_runs) for k in gemm_runs[0]}
    train.update(gemm_n=args.gemm_n, gemm_peak_flops_per_s=peaks, gemm_runs=gemm_runs, peak_dtype=peak_dtype,
                 peak_fraction=train["flops_per_s"] / peaks[peak_dtype], threads=torch.get_num_threads())
    # The same GEMMs alone, at a micro-batch's rows: how much of the peak this model's shapes allow.
    if shapes:
        gemms = model_gemm_rate(shapes, train["tokens"] // train["micro_batches"], peak_dtype, args.gemm_repeats,
                                onednn=not args.torch_linear)
        train["model_gemms"] = {**gemms, "peak_fraction": gemms["flops_per_s"] / peaks[peak_dtype],
                                "work_flops": update_flops(shapes, train["tokens"], train["completion_tokens"])}
    result["train"] = train
    return result


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m grpo_trainer.bench", description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct", help="bundled alias, HF directory or hub id")
    ap.add_argument("--data", default="synthetic",
                    help="a GSM8K-format jsonl, or 'synthetic' (default: the built-in generated problems)")
    for key in ("prompts", "G", "max_tokens", "steps"):
        ap.add_argument(f"--{key.replace('_', '-')}", type=int,
                        help=f"default {NORMAL[key]} ({QUICK[key]} with --quick)")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--rollout-dtype", choices=["float32", "bfloat16"], help="default: --dtype")
    ap.add_argument("--mixed-precision", default="no", choices=["no", "bf16"])
    ap.add_argument("--skip-hf", action="store_true", help="skip the transformers generate rollout")
    ap.add_argument("--skip-step", action="store_true", help="skip the full GRPO steps (part 4)")
    ap.add_argument("--skip-colocation", action="store_true",
                    help="skip replaying the last step's update after the steps (the colocation figure)")
    ap.add_argument("--micro-batch-size", type=int, default=8, help="rows per forward/backward (default 8)")
    ap.add_argument("--compile-engine", action="store_true",
                    help="vLLM compiles its model (rollout.enforce_eager=false): faster sampling, slower start")
    ap.add_argument("--torch-linear", action="store_true",
                    help="train fp32 linear layers on torch's kernel (MKL), not oneDNN (model.onednn_linear=false)")
    ap.add_argument("--profile", action="store_true",
                    help="one more GRPO step under torch's profiler (in no median): its GEMM, attention and "
                         "sampling kernels' time per phase")
    ap.add_argument("--train-all-rows", action="store_true",
                    help="forward/backward every row, zero-advantage ones too (TRL's work); default: skip those")
    ap.add_argument("--quick", action="store_true", help="tiny settings, for the test")
    ap.add_argument("--verbose", action="store_true",
                    help="vLLM's, transformers' and torch's own output on the console too (default: in "
                         "logs/ beside --output)")
    ap.add_argument("--only", choices=["step"], help=argparse.SUPPRESS)  # the part-4 child process
    ap.add_argument("--log-dir", help=argparse.SUPPRESS)  # the child's: the parent's logs/ directory
    ap.add_argument("--output", help=f"the JSON file (default: {DEFAULT_OUTPUT_DIR}/bench-YYYYMMDD-HHMMSS.json "
                                     "under the current directory)")
    args = ap.parse_args(argv)
    for key, value in (QUICK if args.quick else NORMAL).items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    if min(args.prompts, args.G, args.max_tokens, args.steps) < 1:
        ap.error("--prompts, --G, --max-tokens and --steps must be >= 1")
    args.rollout_dtype = args.rollout_dtype or args.dtype
    if args.data != "synthetic" and not Path(args.data).is_file():
        print(f"error: --data {args.data!r} is not a file: pass a GSM8K-format .jsonl or 'synthetic'",
              file=sys.stderr)
        raise SystemExit(2)
    if args.output is None:
        args.output = str(DEFAULT_OUTPUT_DIR / time.strftime("bench-%Y%m%d-%H%M%S.json"))
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    from grpo_trainer.hardware import keep_freed_memory
    from grpo_trainer.models import resolve_model_path

    keep_freed_memory()  # as the trainer does, so that parts 1-3 measure what a run gets

    args.model_path = resolve_model_path(args.model)
    args.verbose = console.verbose_requested(args.verbose)
    args.log_dir = args.log_dir or str(Path(args.output).parent)
    with console.quiet(args.log_dir, args.verbose) as log:
        if args.only == "step":
            result = run_steps(args)
            Path(args.output).write_text(to_json(result))
            return result
        if not args.verbose:
            console.line(f"[bench] vLLM's, transformers' and torch's own output: {log} (--verbose shows it here)",
                         console.err())
        result = run_parts_1_to_3(args)
        result["step"] = None
        if not args.skip_step:
            console.line("[bench] GRPO steps (child process)", console.err())
            result["step"] = run_steps_child(args)
        Path(args.output).write_text(to_json(result) + "\n")
        console.line(format_table(result))
        console.line(f"[bench] wrote {args.output}", console.err())
    return result
