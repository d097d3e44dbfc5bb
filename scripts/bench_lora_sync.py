"""LoRA policies: push merged weights into vLLM (what the trainer does) or serve vLLM LoRA adapters?

Both ways, on the same prompts and the same adapters (r=16 on every linear layer, B drawn
non-zero as after some training), measures what one training step pays:
- sync: merged = merge W + (alpha/r) B A for every layer and `reload_weights` the full model;
  adapter = `save_pretrained` the adapter and have vLLM load it (first request on a new id);
- rollout: tokens/s of P x G sampled completions, since vLLM's LoRA kernels run on every token.
It also checks that the two engines agree: greedy completions from both should match.

    python scripts/bench_lora_sync.py [--prompts 4] [--G 8] [--max-tokens 128] [--rank 16]

Prints a table and one JSON line. The trainer's `weights.iter_full_weights` is the merged path.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

REPO = Path(__file__).resolve().parents[1]
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def lora_policy(model_path: str, rank: int):
    from grpo_trainer.config import LoraConfig
    from grpo_trainer.lora import wrap
    from grpo_trainer.models import load_causal_lm

    model = wrap(load_causal_lm(model_path, "float32"),
                 LoraConfig(enabled=True, r=rank, alpha=2 * rank, dropout=0.0, target_modules=TARGETS), False)
    gen = torch.Generator().manual_seed(0)
    for name, p in model.named_parameters():
        if "lora_B" in name:  # peft starts B at 0; a trained adapter is not
            p.data = torch.randn(p.shape, generator=gen) * 2e-3
    return model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--data", default=str(REPO.parent / "shared/data/gsm8k/train.jsonl"))
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--G", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    if args.data != "synthetic" and not Path(args.data).is_file():
        args.data = "synthetic"

    from grpo_trainer.bench import INSTRUCTION, time_rollout, time_sync
    from grpo_trainer.data import load_examples, render_prompts
    from grpo_trainer.models import load_tokenizer, resolve_model_path
    from grpo_trainer.rollout import SamplingConfig, make_engine

    path = resolve_model_path(args.model)
    tok = load_tokenizer(path)
    _, _, prompts, _ = render_prompts(load_examples(args.data, "train", args.prompts, 0, 1), tok, INSTRUCTION)
    policy = lora_policy(path, args.rank)
    sampling = SamplingConfig(args.G, args.max_tokens, temperature=1.0)
    greedy = SamplingConfig(1, 32, temperature=0.0)
    common = dict(model_path=path, dtype="float32", seed=0, kv_cache_gib=1,
                  max_model_len=max(map(len, prompts)) + args.max_tokens)
    result = {"model": args.model, "rank": args.rank, "prompts": args.prompts, "G": args.G,
              "max_tokens": args.max_tokens, "threads": torch.get_num_threads()}

    print("[lora] merged weights", file=sys.stderr, flush=True)
    engine = make_engine("vllm", **common)
    sync = time_sync(engine, policy, args.repeats)  # the trainer's merged push (weights.iter_full_weights)
    merged_greedy = engine.generate(prompts, greedy, seed=0).completion_ids
    rollout, _ = time_rollout(engine, prompts, sampling, warm_tokens=8)
    result["merged"] = {"sync_s": sync["seconds"], "sync_s_all": sync["seconds_all"], "bytes": sync["bytes"],
                        **rollout}
    engine.close()
    del engine

    print("[lora] vLLM LoRA adapter", file=sys.stderr, flush=True)
    engine = make_engine("vllm", max_lora_rank=args.rank, **common)
    one = SamplingConfig(1, 1, temperature=1.0)
    save, load = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(args.repeats):
            out = Path(tmp) / f"step-{k}"
            t0 = time.perf_counter()
            policy.save_pretrained(out)
            engine.load_lora_adapter(str(out))
            save.append(time.perf_counter() - t0)
            # vLLM loads an adapter on its first request: time that request, minus the same
            # request once the adapter is resident.
            t0 = time.perf_counter()
            engine.generate(prompts[:1], one, seed=0)
            first = time.perf_counter() - t0
            t0 = time.perf_counter()
            engine.generate(prompts[:1], one, seed=0)
            load.append(max(first - (time.perf_counter() - t0), 0.0))
        adapter_bytes = sum(f.stat().st_size for f in out.iterdir())
        adapter_greedy = engine.generate(prompts, greedy, seed=0).completion_ids
        rollout, _ = time_rollout(engine, prompts, sampling, warm_tokens=8)
        result["adapter"] = {"sync_s": statistics.median(s + l for s, l in zip(save, load)), "save_s_all": save,
                             "load_s_all": load, "bytes": adapter_bytes, **rollout}
    engine.close()

    same = sum(a == b for x, y in zip(merged_greedy, adapter_greedy) for a, b in zip(x, y))
    result["greedy_tokens_agreeing"] = same / max(sum(min(len(x), len(y)) for x, y in zip(merged_greedy, adapter_greedy)), 1)
    m, a = result["merged"], result["adapter"]
    result["per_step_s"] = {"merged": m["sync_s"] + m["seconds"], "adapter": a["sync_s"] + a["seconds"]}
    print(f"{'':10}{'sync s':>10}{'bytes':>12}{'rollout tok/s':>16}{'sync+rollout s':>16}")
    for name in ("merged", "adapter"):
        r = result[name]
        print(f"{name:10}{r['sync_s']:>10.3f}{r['bytes'] / 1e6:>10.1f}MB{r['tokens_per_s']:>16.1f}"
              f"{result['per_step_s'][name]:>16.2f}")
    print(f"greedy tokens agreeing between the two engines: {result['greedy_tokens_agreeing']:.3f}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
