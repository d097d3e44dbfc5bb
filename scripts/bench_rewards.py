"""Reward throughput on real GSM8K solutions: completions/s for `gsm8k` and `math`.

Completions are the reference solutions of ../shared/data/gsm8k/train.jsonl (1000 by default),
half of them with the final number changed. Each measurement uses a fresh reward computer
(fresh workers, so math-verify's caches start cold) and excludes worker start-up, which is
reported separately. Prints one JSON line.

    python scripts/bench_rewards.py [--n 1000] [--workers 2] [--data PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import time
from pathlib import Path

from grpo_trainer.rewards import VerifierPool, build_reward_fn, math_verifier

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared/data/gsm8k/train.jsonl"


def make_batch(path: Path, n: int, seed: int = 0) -> tuple[list[str], list[str]]:
    answers = [json.loads(line)["answer"] for line in path.read_text().splitlines() if line.strip()]
    rng = random.Random(seed)
    answers = rng.sample(answers, n)
    completions = []
    for i, a in enumerate(answers):
        head, _, tail = a.rpartition("####")
        if i % 2:  # wrong half: final number + 1
            tail = " " + str(int(re.sub(r"[^0-9-]", "", tail)) + 1)
        completions.append(head + "####" + tail)
    return completions, answers


def boxed(completion: str) -> str:
    """The same solution ending in LaTeX instead of '####', so math-verify parses the whole
    text rather than one short '####' line."""
    head, _, tail = completion.rpartition("####")
    return f"{head}So the final answer is $\\boxed{{{tail.strip()}}}$."


def rate(specs: list[dict], completions: list[str], answers: list[str], workers: int) -> tuple[float, float, float]:
    """(completions/s, start-up seconds, mean reward)."""
    t0 = time.perf_counter()
    with build_reward_fn(specs, num_workers=workers) as rc:
        rc.wait_ready()
        startup = time.perf_counter() - t0
        n = len(completions)
        t1 = time.perf_counter()
        out = rc([""] * n, completions, [[0]] * n, answers)
        elapsed = time.perf_counter() - t1
    return n / elapsed, startup, sum(out.rewards) / n


def pool_rate(completions: list[str], answers: list[str], workers: int, chunk: int) -> float:
    pool = VerifierPool(num_workers=workers, timeout_s=1.0, chunk_size=chunk)
    try:
        pool.wait_ready()
        tasks = [(math_verifier, c, a, {}) for c, a in zip(completions, answers)]
        t1 = time.perf_counter()
        pool.run(tasks)
        return len(tasks) / (time.perf_counter() - t1)
    finally:
        pool.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    args = ap.parse_args()
    if not args.data.exists():
        raise SystemExit(f"{args.data} not found; pass --data PATH to a GSM8K-format jsonl")
    completions, answers = make_batch(args.data, args.n)
    gsm8k_s, _, gsm8k_mean = rate([{"name": "gsm8k"}], completions, answers, args.workers)
    math_s, startup, math_mean = rate([{"name": "math"}], completions, answers, args.workers)
    boxed_s, _, boxed_mean = rate([{"name": "math"}], [boxed(c) for c in completions], answers, args.workers)
    result = {
        "n": args.n,
        "workers": args.workers,
        "cpus": os.cpu_count(),
        "gsm8k_per_s": round(gsm8k_s),
        "math_per_s": round(math_s),
        "math_boxed_per_s": round(boxed_s),
        # Same math tasks straight through the pool: one task per message vs the default chunks.
        "math_pool_chunk1_per_s": round(pool_rate(completions, answers, args.workers, 1)),
        "math_pool_chunk64_per_s": round(pool_rate(completions, answers, args.workers, 64)),
        "pool_startup_s": round(startup, 2),
        # Sanity: half are right, so each mean reward is 0.5.
        "mean_reward": {"gsm8k": gsm8k_mean, "math": math_mean, "math_boxed": boxed_mean},
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
