"""Accuracy of one or several models side by side: greedy pass@1, or avg@n and pass@k with sampling.

    python -m grpo_trainer.evaluate --model smollm2-135m-instruct runs/quickstart \\
        [--data synthetic|file.jsonl|openai/gsm8k] [--split test] [--num-examples N] [--k 4]
        [--temperature 1.0] [--max-tokens 256] [--output eval_results.json]

Each --model is a bundled alias, an HF directory or hub id, a run directory (its newest complete
checkpoint) or a checkpoint directory (its model/). When one is a run or checkpoint directory, the
instruction, system prompt, correctness verifier and engine dtype come from that run's
config.yaml unless given as flags, and apply to every model (eval_settings.py). Every accuracy has
a 95 % Wilson interval; the gsm8k verifier is scored with strict and flexible answer extraction on
the same completions; each later model is compared with the first on the same problems by an
exact paired test (McNemar's for greedy answers), so a change within noise says so. Models are
evaluated one after the other, each in its own vLLM engine that is freed before the next starts.
Under `accelerate launch` every process (also under torchrun; on CPU-only machines
`torchrun --nproc_per_node N -m grpo_trainer.evaluate ...`) evaluates a strided share of the
problems and the results are gathered, so greedy numbers do not depend on the process count
(sampled ones only through the seeds). JSON: {"config": {...}, "results": [one object per model,
see `evaluate_model`], "comparisons": [one per later model and extraction, see
`eval_report.compare`]}, rewritten after every model, so a run killed part-way keeps the models
already done. vLLM's and the libraries' own output goes to logs/third_party.rankR.log beside it,
as a training run's goes to RUN_DIR/logs/ (console.py).
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

from grpo_trainer import console
from grpo_trainer.eval_report import format_comparisons, format_table, write_json_whole, write_results
from grpo_trainer.eval_settings import DEFAULT_VERIFIER, resolve_eval_model, resolve_settings, scoring_specs
from grpo_trainer.stats import wilson_interval

log = logging.getLogger(__name__)

# A round count whose 95 % Wilson interval is within +-0.05 at any accuracy (widest at 0.5: +-0.049
# on 400, +-0.056 on 300): enough to tell a 10-point gain from noise at a third of GSM8K's test
# split; `--num-examples all` runs the whole split.
DEFAULT_NUM_EXAMPLES = 400


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased estimate of pass@k for one problem from n samples of which c are correct.

    Chen et al. 2021, "Evaluating Large Language Models Trained on Code" (Codex, arXiv 2107.03374),
    eq. 1: pass@k = 1 - C(n-c, k) / C(n, k), the chance that k of the n samples drawn without
    replacement hold at least one correct one. With n == k it is 1 if c > 0 else 0; with k == 1 it
    is c / n. Computed on Python's exact integers, so large n loses no precision.
    """
    if n < 1 or not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass_at_k needs n >= 1, 0 <= c <= n and 1 <= k <= n; got n={n}, c={c}, k={k}")
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def check_verifier_specs(specs: list[dict]) -> None:
    """Accuracy comes from RewardOutput.correct, which only a correctness verifier fills."""
    from grpo_trainer.rewards.registry import get_entry

    # "module:function" rewards have no kind; registered names are looked up (unknown ones raise).
    registered = [s["name"] for s in specs if isinstance(s.get("name"), str) and ":" not in s["name"]]
    if not any(get_entry(name).kind == "correctness" for name in registered):
        names = [s.get("name") for s in specs]
        raise ValueError(f"verifier specs {names} hold no correctness verifier; use 'gsm8k', 'math' or one "
                         f"registered with kind='correctness'")


def check_sampling(k: int, num_samples: int, temperature: float) -> None:
    """pass@k needs k <= n samples, and more than one sample needs temperature > 0."""
    if k < 1 or num_samples < k:
        raise ValueError(f"need 1 <= k <= num_samples, got k={k}, num_samples={num_samples}; raise num_samples")
    if temperature < 0 or (temperature == 0 and num_samples > 1):
        raise ValueError(f"temperature={temperature} with {num_samples} samples per problem: greedy decoding "
                         f"(temperature 0) gives one answer, so use k=1, or temperature > 0 (e.g. 1.0) for pass@k")


def aggregate(records: list[dict], k: int) -> dict[str, Any]:
    """Dataset metrics from per-problem counts (each record: num_samples, num_correct,
    num_formatted, num_tokens, num_truncated, optionally correct_by {extraction: count}).
    accuracy is the mean per-problem c/n: greedy pass@1 at temperature 0, avg@n (= unbiased
    pass@1) with sampling; pass@k as in `pass_at_k`. Each has a 95 % Wilson interval over the
    problems (`stats.wilson_interval`); by_extraction holds the same per answer-extraction mode."""
    if not records:
        raise ValueError("no problems were evaluated; pass a non-empty data set")
    samples = sum(r["num_samples"] for r in records)

    def rates(key: str | None) -> dict[str, Any]:
        counts = [r["num_correct"] if key is None else r["correct_by"][key] for r in records]
        acc = sum(pass_at_k(r["num_samples"], c, 1) for r, c in zip(records, counts)) / len(records)
        at_k = sum(pass_at_k(r["num_samples"], c, k) for r, c in zip(records, counts)) / len(records)
        return {"accuracy": acc, "accuracy_ci": list(wilson_interval(acc, len(records))),
                "pass@k": at_k, "pass@k_ci": list(wilson_interval(at_k, len(records)))}

    labels = list(records[0].get("correct_by", {}))
    return {
        **rates(None),
        "format": sum(r["num_formatted"] for r in records) / samples,
        "mean_completion_tokens": sum(r["num_tokens"] for r in records) / samples,
        "truncated": sum(r["num_truncated"] for r in records) / samples,
        "by_extraction": {label: rates(label) for label in labels},
    }


def _score_chunk(idx, kept, origin, texts, batch, tokenizer, reward_fn, labels, save_completions) -> list[dict]:
    from grpo_trainer.record import RolloutRecord
    from grpo_trainer.scoring import PromptSet, score

    # The trainer's scoring path: the same reward-function call on the same record.
    record, out = score(RolloutRecord.from_engine(batch, idx, tokenizer), reward_fn, PromptSet(kept, texts, []))
    G = record.group_size
    lens, truncated = record.completion_lens.tolist(), record.truncated.tolist()
    records = []
    for j, i in enumerate(idx):
        rows = range(j * G, (j + 1) * G)  # group-major: the G samples of prompt j
        rec = {"index": origin[i], "gold": kept[i]["gold"], "num_samples": G,
               "num_correct": sum(out.correct[r] for r in rows),
               "num_formatted": sum(out.formatted[r] for r in rows),
               "num_tokens": sum(lens[r] for r in rows),
               "num_truncated": sum(truncated[r] for r in rows),
               "parsed": [out.parsed[r] for r in rows],
               # A score of 1 is a correct answer under that extraction (None: the verifier failed).
               "correct_by": {lab: sum((out.components[lab][r] or 0.0) >= 1.0 for r in rows)
                              for lab in labels if lab in out.components}}
        if save_completions:
            rec["completions"] = [record.texts[r] for r in rows]
        records.append(rec)
    return records


def evaluate_model(
    model_path: str,
    examples: list[dict[str, Any]],
    tokenizer: Any,
    *,
    k: int = 1,
    temperature: float = 0.0,
    max_tokens: int = 256,
    instruction: str | None = None,
    verifier_specs: list[dict] | None = None,
    seed: int = 0,
    num_samples: int | None = None,
    system_prompt: str | None = None,
    max_prompt_length: int = 512,
    dtype: str = "float32",
    engine=None,
    reward_fn=None,
    prompts=None,
    kv_cache_gib: float = 2.0,
    gpu_memory_utilization: float = 0.85,
    chunk_size: int = 64,
    progress: bool = True,
    save_completions: bool = False,
    label: str | None = None,
) -> dict:
    """Evaluate one model on `examples` (from `load_examples`); every process must call it.

    num_samples (n, default k) completions per problem at `temperature` (0: greedy, then n must be
    1). `engine` / `reward_fn`: reuse a running rollout engine (e.g. the trainer's, with its current
    weights; `model_path` is then only a label) or reward computer; whatever is built here is
    closed before returning. Under a live process group (the trainer's Accelerator) pass
    `engine`: closing an engine built here would tear that group down (see `rollout.vllm_env`).
    Each process samples a strided share of the problems; the shares are gathered.
    torch's global RNG, which the engines reseed per call, is restored afterwards so a training
    loop that evaluates in between draws what it would have drawn without.
    Returns the `aggregate` metrics plus n (problems), k, num_samples, temperature, max_tokens,
    num_dropped (prompts over max_prompt_length), seconds, path, and per_example: one record per
    problem in `examples` order: index (position in `examples`), gold, num_samples, num_correct,
    num_formatted, num_tokens, num_truncated, parsed (what the verifier read per sample),
    correct_by ({extraction: correct samples}) and, with save_completions, completions.
    `prompts`: `examples` already rendered (a scoring.PromptSet of the kept ones, e.g. the
    trainer's, rendered once); instruction, system_prompt and max_prompt_length are then unused.
    Scoring (scoring.score, the trainer's path): `eval_settings.scoring_specs(verifier_specs)`
    (a gsm8k verifier is scored in both extraction modes, its own mode deciding `accuracy`); a
    `reward_fn` passed in should be built from those specs, or only the extractions it holds are
    reported.
    """
    import torch
    from tqdm.auto import tqdm

    from grpo_trainer.data import DEFAULT_INSTRUCTION, render_prompts
    from grpo_trainer.rewards import build_reward_fn
    from grpo_trainer.rollout import SamplingConfig, make_engine
    from grpo_trainer.rollout.vllm_env import gather_objects

    n_samples = k if num_samples is None else num_samples
    check_sampling(k, n_samples, temperature)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    check_verifier_specs(verifier_specs or [{"name": DEFAULT_VERIFIER}])
    specs, labels = scoring_specs(verifier_specs or [{"name": DEFAULT_VERIFIER}])
    rank, world = _rank_world()
    if prompts is None:
        kept, texts, ids, dropped = render_prompts(examples, tokenizer, DEFAULT_INSTRUCTION if instruction is None
                                                   else instruction, system_prompt, max_prompt_length)
    else:
        kept, texts, ids, dropped = prompts.examples, prompts.texts, prompts.ids, len(examples) - len(prompts.examples)
    mine = list(range(rank, len(kept), world))
    # Records name a problem by its position in `examples`, which prompts dropped as too long shift.
    position = {id(ex): i for i, ex in enumerate(examples)}
    origin = [position[id(ex)] for ex in kept]
    own_engine, own_rc = engine is None, reward_fn is None
    sampling = SamplingConfig(num_generations=n_samples, max_tokens=max_tokens, temperature=temperature)
    started = time.perf_counter()
    records: list[dict] = []
    rng_state = torch.get_rng_state()
    cuda_rng_states = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    try:
        if own_rc:
            reward_fn = build_reward_fn(specs)
        if own_engine and mine:
            engine = make_engine("vllm", model_path=model_path, dtype=dtype, seed=seed,
                                 max_model_len=max(len(p) for p in ids) + max_tokens, kv_cache_gib=kv_cache_gib,
                                 gpu_memory_utilization=gpu_memory_utilization)
        bar = tqdm(total=len(mine), desc=f"eval {label or Path(model_path).name}", unit="problem",
                   disable=not (progress and rank == 0), dynamic_ncols=True, file=console.err())
        with bar:
            for c, start in enumerate(range(0, len(mine), chunk_size)):
                idx = mine[start:start + chunk_size]
                # Distinct per (seed, process, chunk): shards draw independent samples.
                chunk_seed = (seed * 1_000_003 + rank * 7919 + c) % (2**31)
                batch = engine.generate([ids[i] for i in idx], sampling, chunk_seed)
                records += _score_chunk(idx, kept, origin, texts, batch, tokenizer, reward_fn, labels,
                                        save_completions)
                bar.update(len(idx))
                # So far, on this process's share: a long run shows early whether it is sane.
                bar.set_postfix_str(f"acc {sum(r['num_correct'] for r in records) / (len(records) * n_samples):.3f}")
    finally:
        torch.set_rng_state(rng_state)
        if cuda_rng_states is not None:
            torch.cuda.set_rng_state_all(cuda_rng_states)
        if own_rc and reward_fn is not None:
            reward_fn.close()
        if own_engine and engine is not None:
            engine.close()
        engine = None  # drop the last reference so the weights and KV cache can be freed now
        gc.collect()
        _empty_cuda_cache()
    seconds = time.perf_counter() - started
    if world > 1:
        shards = gather_objects((records, seconds), rank, world)
        records = [r for shard, _ in shards for r in shard]
        seconds = max(sec for _, sec in shards)
    records.sort(key=lambda r: r["index"])
    return {"path": str(model_path), "n": len(records), "k": k, "num_samples": n_samples,
            "temperature": temperature, "max_tokens": max_tokens, "extraction": labels[0], **aggregate(records, k),
            "num_dropped": dropped, "seconds": round(seconds, 2), "per_example": records}


def save_eval(path: Path, step: int, results: list[dict]) -> None:
    """One held-out evaluation of a training run (`evaluate_model` results: greedy pass@1, then
    avg@n when sampled) as JSON, per problem, so that runs on the same problems can be compared
    by a paired test (scripts/ablation.py). Written to a temporary name and renamed: a kill
    leaves the previous file or none, never half of one."""
    write_json_whole(path, {"step": step, "results": results})


def _rank_world() -> tuple[int, int]:
    """This process's rank and the process count: from a live process group (e.g. the
    trainer's Accelerator), else from the RANK/WORLD_SIZE that accelerate launch/torchrun set."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def _empty_cuda_cache() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _num_examples(text: str) -> int | None:
    if text == "all":
        return None
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of problems or 'all'")
    return n


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="grpo_trainer.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", nargs="+", required=True, help="aliases, HF dirs/hub ids, run dirs or checkpoint dirs; "
                   "each later one is compared with the first by a paired test")
    p.add_argument("--data", default="synthetic", help="'synthetic', a .jsonl/.json/.parquet file or an HF dataset")
    p.add_argument("--split", default="test")
    p.add_argument("--num-examples", type=_num_examples, default=DEFAULT_NUM_EXAMPLES,
                   help=f"a seeded subset of this many problems, or 'all' (GSM8K test: 1,319; synthetic: 1,319 "
                        f"generated); default {DEFAULT_NUM_EXAMPLES}, where every 95%% interval is within +-0.05")
    p.add_argument("--difficulty", type=int, default=1, help="synthetic data only")
    p.add_argument("--k", type=int, default=1, help="pass@k; k > 1 samples (temperature defaults to 1.0)")
    p.add_argument("--num-samples", type=int, default=None, help="samples per problem n >= k (default k)")
    p.add_argument("--temperature", type=float, default=None, help="default: 0 (greedy) for one sample, else 1.0")
    p.add_argument("--max-tokens", type=int, default=256)
    run = "default: the run's, when a --model is a run or checkpoint directory"
    p.add_argument("--instruction", default=None, help=f"appended to each question ({run}, else the trainer's default)")
    p.add_argument("--system-prompt", default=None, help=f"({run}, else none)")
    p.add_argument("--max-prompt-length", type=int, default=512)
    p.add_argument("--verifier", default=None, help=f"a correctness verifier: gsm8k, math, ... ({run}, else gsm8k)")
    p.add_argument("--verifier-kwargs", default=None, help='JSON, e.g. \'{"mode": "flexible"}\' '
                   f"({run}, else {{}}); gsm8k is scored in both modes, this one decides 'accuracy'")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                   help=f"engine dtype ({run}, else float32)")
    p.add_argument("--kv-cache-gib", type=float, default=2.0, help="CPU: KV cache size")
    p.add_argument("--gpu-memory-utilization", type=float, default=0.85, help="GPU: engine's share of memory")
    p.add_argument("--output", default="eval_results.json", help="JSON results file")
    p.add_argument("--save-completions", action="store_true", help="store every completion in the JSON")
    p.add_argument("--verbose", action="store_true", help="vLLM's, transformers' and torch's own output on the "
                   f"console too (default: in logs/ beside --output; or {console.VERBOSE_ENV}=1)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    verbose = console.verbose_requested(args.verbose)
    out_dir = Path(args.output).parent
    try:
        with console.quiet(out_dir, verbose):
            return _run(args, None if verbose else console.log_path(out_dir))
    except ValueError as exc:  # ModelPathError, RewardError and bad input all subclass it
        if os.environ.get("GRPO_TRAINER_DEBUG"):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _verifier_kwargs(text: str | None) -> dict | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = None
    if not isinstance(value, dict):
        raise ValueError(f"--verifier-kwargs {text!r} is not a JSON object; write e.g. '{{\"mode\": \"flexible\"}}'")
    return value


def _run(args: argparse.Namespace, third_party_log: Path | None) -> int:
    given = {"instruction": args.instruction, "system_prompt": args.system_prompt, "verifier": args.verifier,
             "verifier_kwargs": _verifier_kwargs(args.verifier_kwargs), "dtype": args.dtype}
    settings, source = resolve_settings(given, args.model)
    num_samples = args.num_samples or args.k
    temperature = args.temperature if args.temperature is not None else (0.0 if num_samples == 1 else 1.0)
    specs = [{"name": settings["verifier"], "kwargs": settings["verifier_kwargs"]}]
    check_verifier_specs(specs)
    check_sampling(args.k, num_samples, temperature)  # before minutes of data and model loading

    from grpo_trainer.rollout.vllm_env import quiet_startup_logs

    quiet_startup_logs()  # keep the engine's start-up chatter out of the table
    from grpo_trainer.data import DEFAULT_INSTRUCTION, load_examples
    from grpo_trainer.models import load_tokenizer
    from grpo_trainer.rewards import build_reward_fn

    instruction = DEFAULT_INSTRUCTION if settings["instruction"] is None else settings["instruction"]
    examples = load_examples(args.data, args.split, args.num_examples, args.seed, args.difficulty)
    # Said once the data has loaded: a bad data file must be the only line printed.
    rank, _ = _rank_world()
    if rank == 0:
        origins = {src: [k for k in source if source[k] == src] for src in source.values()}
        log.info("evaluating with instruction %r, system prompt %r, verifier %s %s, dtype %s (%s)",
                 instruction, settings["system_prompt"], settings["verifier"], json.dumps(settings["verifier_kwargs"]),
                 settings["dtype"], "; ".join(f"{', '.join(keys)} from {src}" for src, keys in origins.items()))
    config = {key: getattr(args, key) for key in ("data", "split", "num_examples", "difficulty", "k",
                                                  "max_tokens", "max_prompt_length", "seed")}
    config.update(settings, instruction=instruction, settings_from=source, num_samples=num_samples,
                  temperature=temperature)
    out = Path(args.output)
    results = []
    with build_reward_fn(scoring_specs(specs)[0]) as reward_fn:  # one verifier pool for every model
        for spec in args.model:
            # No barrier here (there is no process group yet): alias conversion is file-locked.
            path, step = resolve_eval_model(spec)
            result = evaluate_model(
                path, examples, load_tokenizer(path), k=args.k, temperature=temperature,
                max_tokens=args.max_tokens, instruction=instruction, verifier_specs=specs, seed=args.seed,
                num_samples=num_samples, system_prompt=settings["system_prompt"],
                max_prompt_length=args.max_prompt_length, dtype=settings["dtype"], reward_fn=reward_fn,
                kv_cache_gib=args.kv_cache_gib, gpu_memory_utilization=args.gpu_memory_utilization,
                save_completions=args.save_completions, label=spec)
            results.append({"model": spec, "step": step, **result})
            if rank == 0:  # after every model: a run killed during a later one keeps the earlier ones
                comparisons = write_results(out, config, results)
    if rank == 0:
        print(format_table(results), file=console.out(), flush=True)
        if comparisons:
            print(format_comparisons(comparisons), file=console.out(), flush=True)
        told = f" (third-party output: {third_party_log})" if third_party_log else ""
        print(f"wrote {out}{told}", file=console.out(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
