"""DAPO's ablation ladder (arXiv 2503.14476, Table 1) at laptop scale, with error bars.

    python scripts/ablation.py                                # the ladder, sized for 2 CPU cores
    python scripts/ablation.py --extra gspo cispo ppo         # and other objectives on top of DAPO
    python scripts/ablation.py --extra gspo --extra-seeds 1   # ... with fewer seeds than the ladder
    python scripts/ablation.py --steps 40 --seeds 4 --model PATH --set trainer.prompts_per_step=8
    python scripts/ablation.py --report-only                  # the table and plot from finished runs

Each rung adds one technique to the one before, as in the paper's table (naive GRPO 30 -> +overlong
filtering 36 -> +clip-higher 38 -> +soft overlong punishment 41 -> +token-level loss 42 -> +dynamic
sampling 50, AIME avg@32 on Qwen2.5-32B). Every rung trains from the same model on the same
built-in problems for the same number of steps, once per seed (the sampling seed, rollout.seed; the
problems and their order stay fixed), and is then evaluated in the trainer's own engine on the same
held-out problems (trainer.eval_examples): greedy pass@1 and avg@n (n samples at the rollout
temperature). Every rung takes `--mini-batches` optimizer steps per rollout batch: with one, the
policy that sampled is the policy being updated, the ratio is exactly 1, and clip-higher (a change
to the clip range) could not act at all.

The untrained model is scored once on the same held-out problems, with the same settings, through
`python -m grpo_trainer.evaluate` (first row). Per rung: accuracy pooled over seeds with a 95 %
Wilson interval over the seeds x problems answers, each seed's own figure, and the exact paired
sign test (McNemar's for greedy answers) against the row above and against naive GRPO, pairing
each problem under the same seed (an --extra row, which may have fewer seeds, is paired with DAPO
on the seeds both ran). Writes
OUT/ladder.json, OUT/ladder.md and OUT/ladder.png. A run whose held-out result exists is not run
again, so an interrupted ladder continues where it stopped (a half-finished run starts over).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from grpo_trainer.evaluate import save_eval  # noqa: E402
from grpo_trainer.plot import PlotError, read_jsonl  # noqa: E402
from grpo_trainer.stats import paired_test, wilson_interval  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

# (slug, label, the paper's AIME avg@32, overrides). Cumulative: each rung keeps the ones above.
LADDER = [
    ("naive", "naive GRPO", 30, {"algorithm.loss_agg": "seq_mean_token_mean", "algorithm.eps_low": 0.2,
                                 "algorithm.eps_high": 0.2, "algorithm.overlong_filter": False,
                                 "algorithm.overlong_penalty": False, "algorithm.dynamic_sampling": "off"}),
    ("overlong_filter", "+ overlong filtering", 36, {"algorithm.overlong_filter": True}),
    ("clip_higher", "+ clip-higher", 38, {"algorithm.eps_high": 0.28}),
    ("soft_overlong", "+ soft overlong punishment", 41, {"algorithm.overlong_penalty": True}),
    ("token_loss", "+ token-level loss", 42, {"algorithm.loss_agg": "token_mean"}),
    ("dynamic_sampling", "+ dynamic sampling (= DAPO)", 50, {"algorithm.dynamic_sampling": "refill"}),
]
# Other objectives on top of the full DAPO rung (not cumulative with each other).
EXTRAS = {
    "gspo": ("DAPO with GSPO's sequence ratio", {"algorithm.policy_loss": "gspo",
                                                 "algorithm.loss_agg": "seq_mean_token_mean"}),
    "cispo": ("DAPO with CISPO's clipped IS weight", {"algorithm.policy_loss": "cispo"}),
    "ppo": ("PPO: learned critic and GAE, no groups", {"algorithm.advantage": "gae", "algorithm.scale": None,
                                                       "algorithm.dynamic_sampling": "off", "critic.enabled": True,
                                                       "critic.learning_rate": 5e-5}),
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/ablation", help="where runs, table and plot go")
    p.add_argument("--recipe", default=str(REPO / "recipes/dapo_synthetic_smollm2.yaml"),
                   help="the base recipe; every rung sets the algorithm keys it is about")
    p.add_argument("--model", default=None, help="model.name_or_path (default: the recipe's)")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--difficulty", type=int, default=1, help="synthetic problems' operations (1..4)")
    p.add_argument("--prompts-per-step", type=int, default=4)
    p.add_argument("--generations", type=int, default=8, help="G, completions per prompt")
    p.add_argument("--max-tokens", type=int, default=96, help="rollout.max_completion_length")
    p.add_argument("--mini-batches", type=int, default=4, help="optimizer steps per rollout batch")
    p.add_argument("--eval-examples", type=int, default=128, help="held-out problems, the same for every run")
    p.add_argument("--eval-samples", type=int, default=4, help="n of avg@n (0: greedy pass@1 only)")
    p.add_argument("--rungs", nargs="+", default=[s for s, *_ in LADDER], choices=[s for s, *_ in LADDER])
    p.add_argument("--extra", nargs="*", default=[], choices=sorted(EXTRAS))
    p.add_argument("--extra-seeds", type=int, default=None, help="seeds of the --extra rows (default: --seeds); "
                   "they are paired with the rungs on the seeds they share")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="more recipe overrides, every run")
    p.add_argument("--keep-checkpoints", action="store_true", help="default: a run's checkpoints are deleted "
                   "once its held-out result is written (0.5-1.5 GB each for the 135M model)")
    p.add_argument("--no-base", action="store_true", help="no row for the untrained model (evaluated once "
                   "through `grpo_trainer.evaluate`, with the runs' held-out settings)")
    p.add_argument("--report-only", action="store_true", help="table and plot from the runs already in OUT")
    p.add_argument("--dry-run", action="store_true", help="print each run's command and exit")
    args = p.parse_args(argv)
    for name in ("steps", "seeds", "prompts_per_step", "generations", "max_tokens", "mini_batches", "eval_examples"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.extra_seeds is None:
        args.extra_seeds = args.seeds
    if not 1 <= args.extra_seeds <= args.seeds:
        p.error(f"--extra-seeds must be between 1 and --seeds ({args.seeds})")
    if args.eval_samples < 0:
        p.error("--eval-samples must be >= 0")
    return args


def plan(args: argparse.Namespace) -> list[dict]:
    """Every run: rung slug, label, paper figure, seed, its directory and its overrides."""
    common = {"data.difficulty": args.difficulty, "rollout.num_generations": args.generations,
              "rollout.max_completion_length": args.max_tokens, "algorithm.num_mini_batches": args.mini_batches,
              "trainer.max_steps": args.steps, "trainer.prompts_per_step": args.prompts_per_step,
              "trainer.save_every": 0, "trainer.eval_every": args.steps, "trainer.eval_examples": args.eval_examples,
              "trainer.eval_samples": args.eval_samples, "trainer.log_samples_every": 0}
    if args.model:
        common["model.name_or_path"] = args.model
    rungs, cumulative = [], {}
    for slug, label, paper, overrides in LADDER:
        cumulative = {**cumulative, **overrides}
        if slug in args.rungs:
            rungs.append((slug, label, paper, dict(cumulative)))
    for name in args.extra:  # cumulative now holds the whole ladder: DAPO
        label, overrides = EXTRAS[name]
        rungs.append((name, label, None, {**cumulative, **overrides}))
    runs = []
    for seed in range(args.seeds):
        for slug, label, paper, overrides in rungs:
            if slug in EXTRAS and seed >= args.extra_seeds:
                continue
            out = Path(args.out) / slug / f"seed{seed}"
            sets = {**common, **overrides, "rollout.seed": seed, "trainer.output_dir": str(out)}
            argv = ["--recipe", args.recipe, "trainer.overwrite=true",
                    *(f"{k}={_yaml(v)}" for k, v in sets.items()), *args.set]
            runs.append({"slug": slug, "label": label, "paper": paper, "seed": seed, "dir": out, "argv": argv})
    return runs


def _yaml(value) -> str:
    """A dotted override's value as YAML reads it back: quoted strings ('off' would be false)."""
    text = json.dumps(value)
    # YAML 1.1 reads 5e-05 as a string: a float needs its dot.
    return text.replace("e", ".0e", 1) if isinstance(value, float) and "e" in text and "." not in text else text


def result_path(run: dict, steps: int) -> Path:
    return run["dir"] / "eval" / f"step-{steps:06d}.json"


def base_commands(args: argparse.Namespace, run: dict) -> list[list[str]]:
    """`evaluate` CLI calls that score the untrained model exactly as the trainer scored each run
    (Trainer.evaluate): the same held-out problems (data.seed), instruction, verifier, token budget
    and engine dtype, read from the runs' own config; greedy, then avg@n at the rollout temperature."""
    from grpo_trainer.config import load_config
    from grpo_trainer.eval_settings import correctness_spec

    cfg = load_config(args.recipe, run["argv"][2:])
    spec = correctness_spec(cfg.reward.functions)
    common = ["--model", cfg.model.name_or_path, "--data", cfg.data.eval_source or cfg.data.source,
              "--difficulty", str(cfg.data.difficulty), "--num-examples", str(cfg.trainer.eval_examples),
              "--seed", str(cfg.data.seed), "--max-tokens", str(cfg.rollout.max_completion_length),
              "--max-prompt-length", str(cfg.data.max_prompt_length), "--verifier", spec["name"],
              "--verifier-kwargs", json.dumps(spec.get("kwargs") or {})]
    for flag, value in (("--instruction", cfg.data.instruction), ("--system-prompt", cfg.data.system_prompt),
                        ("--dtype", cfg.rollout.dtype)):
        if value is not None:
            common += [flag, value]
    base = Path(args.out) / "base"
    calls = [[*common, "--output", str(base / "greedy.json")]]
    if args.eval_samples:
        calls.append([*common, "--k", "1", "--num-samples", str(args.eval_samples), "--temperature",
                      str(cfg.rollout.temperature), "--output", str(base / "sampled.json")])
    return calls


def evaluate_base(args: argparse.Namespace, runs: list[dict]) -> None:
    """The untrained model's held-out result, in a run's layout (eval/step-000000.json)."""
    base = Path(args.out) / "base"
    print(f"evaluating the untrained model on the same held-out problems (log: {base}.log)", flush=True)
    base.mkdir(parents=True, exist_ok=True)
    results = []
    with open(f"{base}.log", "w") as fh:
        for argv in base_commands(args, runs[0]):
            code = subprocess.call([sys.executable, "-m", "grpo_trainer.evaluate", *argv], stdout=fh,
                                   stderr=subprocess.STDOUT, cwd=REPO)
            if code != 0:
                raise SystemExit(f"error: evaluating the untrained model failed (exit {code}); see {base}.log")
            results.append(json.loads(Path(argv[-1]).read_text())["results"][0])
    save_eval(base / "eval" / "step-000000.json", 0, results)


def train(run: dict, steps: int, index: int, total: int, keep: bool) -> None:
    log = run["dir"].parent / f"{run['dir'].name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    print(f"[{index}/{total}] {run['label']}, seed {run['seed']}: training {steps} steps (log: {log})", flush=True)
    started = time.monotonic()
    with open(log, "w") as fh:
        code = subprocess.call([sys.executable, "-m", "grpo_trainer.train", *run["argv"]], stdout=fh,
                               stderr=subprocess.STDOUT, cwd=REPO)
    if code != 0 or not result_path(run, steps).exists():
        tail = log.read_text(errors="replace").strip().splitlines()[-1:] or ["(empty log)"]
        raise SystemExit(f"error: the run in {run['dir']} failed (exit {code}): {tail[0]}; see {log}")
    (run["dir"] / "wall_seconds").write_text(f"{time.monotonic() - started:.1f}\n")
    if not keep:
        for ckpt in run["dir"].glob("checkpoint-*"):
            shutil.rmtree(ckpt)


def load_result(run: dict, steps: int) -> dict:
    """A run's held-out results and, for a trained run, its wall-clock and summed step seconds."""
    results = json.loads(result_path(run, steps).read_text())["results"]
    out = {"greedy": results[0], "sampled": results[1] if len(results) > 1 else None}
    if steps:
        wall = run["dir"] / "wall_seconds"
        rows = read_jsonl(run["dir"] / "metrics.jsonl", PlotError)
        out.update(wall_s=float(wall.read_text()) if wall.exists() else None,
                   train_s=sum(r.get("time/step") or 0.0 for r in rows if "step" in r))
    return out


def scores(result: dict) -> list[float]:
    """Per problem, the fraction of its samples that were right (0/1 for greedy)."""
    return [r["num_correct"] / r["num_samples"] for r in result["per_example"]]


def summarize(runs: list[dict], steps: int, base: dict | None = None) -> list[dict]:
    """One row per rung, seeds pooled. `base` (the untrained model, evaluated once) comes first,
    its per-problem scores repeated for every seed so that each rung's pairs line up with it."""
    by_rung: dict[str, dict] = {}
    if base is not None:
        result = load_result(base, 0)
        by_rung["base"] = {"slug": "base", "label": "untrained model", "paper": None,
                           "seeds": dict.fromkeys({run["seed"] for run in runs}, result)}
    for run in runs:
        entry = by_rung.setdefault(run["slug"], {"slug": run["slug"], "label": run["label"],
                                                 "paper": run["paper"], "seeds": {}})
        entry["seeds"][run["seed"]] = load_result(run, steps)
    table, first, prev = [], None, None
    for entry in by_rung.values():
        row = {k: entry[k] for k in ("slug", "label", "paper")}
        seeds = sorted(entry["seeds"])
        for kind in ("greedy", "sampled"):
            if any(entry["seeds"][s][kind] is None for s in seeds):
                continue
            by_seed = {s: scores(entry["seeds"][s][kind]) for s in seeds}
            pooled = [x for s in seeds for x in by_seed[s]]
            acc = sum(pooled) / len(pooled)
            row[kind] = {"accuracy": acc, "ci": list(wilson_interval(acc, len(pooled))), "n": len(pooled),
                         "per_seed": [entry["seeds"][s][kind]["accuracy"] for s in seeds], "by_seed": by_seed}
        if entry["slug"] == "base":
            row["wall_min"], row["train_s_per_step"] = 0.0, None
        else:
            row["wall_min"] = sum(entry["seeds"][s]["wall_s"] or 0.0 for s in seeds) / 60
            row["train_s_per_step"] = sum(entry["seeds"][s]["train_s"] for s in seeds) / (len(seeds) * steps)
        for kind in ("greedy", "sampled"):
            for name, other in (("vs_previous", prev), ("vs_naive", first)):
                if other not in (None, row) and kind in row and kind in other:
                    pairs = paired_scores(other[kind]["by_seed"], row[kind]["by_seed"])
                    if pairs:
                        row[kind][name] = paired_test(*pairs)
        table.append(row)
        if entry["slug"] in ("base", *(slug for slug, *_ in LADDER)):  # extras: each vs the rung before them
            prev = row
        if entry["slug"] == "naive":
            first = row
    return table


def paired_scores(first: dict, second: dict) -> tuple[list, list] | None:
    """Two rows' per-problem scores on the seeds both ran (an --extra row may have fewer), in the
    same (seed, problem) order; None when they share no seed or their problems differ."""
    common = sorted(set(first) & set(second))
    if not common or any(len(first[s]) != len(second[s]) for s in common):
        return None
    return [x for s in common for x in first[s]], [x for s in common for x in second[s]]


def seeds_text(args: argparse.Namespace, detail: str = "") -> str:
    """'2 seeds', or '2 seeds (1 for the extra rows{detail})' when --extra-seeds differs."""
    text = f"{args.seeds} seed{'s' if args.seeds > 1 else ''}"
    if args.extra and args.extra_seeds != args.seeds:
        text += f" ({args.extra_seeds} for the extra rows{detail})"
    return text


def markdown(table: list[dict], args: argparse.Namespace, total_min: float) -> str:
    sampled = f" avg@{args.eval_samples} [95 % CI] |" if args.eval_samples else ""  # no column when not run
    lines = [f"| rung | paper (AIME avg@32) | greedy pass@1 [95 % CI] |{sampled} per seed (greedy) "
             f"| vs rung above (greedy: better/worse, p) | vs naive (p) | s/step |",
             "|---" * (8 if sampled else 7) + "|"]
    for row in table:
        def cell(kind):
            if kind not in row:
                return "–"
            r = row[kind]
            return f"{r['accuracy']:.3f} [{r['ci'][0]:.3f}, {r['ci'][1]:.3f}]"

        g = row.get("greedy", {})
        prev = g.get("vs_previous")
        naive = g.get("vs_naive")
        vs_prev = f"{prev['gained']}/{prev['lost']}, p={prev['p_value']:.2g}" if prev else "–"
        vs_naive = f"p={naive['p_value']:.2g}" if naive else "–"
        seeds = ", ".join(f"{x:.3f}" for x in g.get("per_seed", []))
        lines.append(f"| {row['label']} | {row['paper'] if row['paper'] is not None else '–'} | {cell('greedy')} | "
                     f"{cell('sampled') + ' | ' if sampled else ''}{seeds} | {vs_prev} | {vs_naive} | "
                     f"{'–' if row['train_s_per_step'] is None else format(row['train_s_per_step'], '.1f')} |")
    lines.append("")
    lines.append(f"{seeds_text(args, ', paired on the seeds they share')} x {args.eval_examples} held-out "
                 f"problems per rung; {args.steps} steps of "
                 f"{args.prompts_per_step} prompts x G={args.generations}, {args.max_tokens} tokens, "
                 f"{args.mini_batches} mini-batches per rollout batch, difficulty {args.difficulty}; "
                 f"{total_min:.0f} min of runs in all.")
    return "\n".join(lines) + "\n"


def plot(table: list[dict], path: Path, args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.8))
    xs = range(len(table))
    for offset, kind, color, name in ((-0.18, "greedy", "tab:blue", "greedy pass@1"),
                                      (0.18, "sampled", "tab:orange", f"avg@{args.eval_samples}")):
        pts = [(x, row[kind]) for x, row in zip(xs, table) if kind in row]
        if not pts:
            continue
        ax.errorbar([x + offset for x, _ in pts], [r["accuracy"] for _, r in pts],
                    yerr=[[r["accuracy"] - r["ci"][0] for _, r in pts], [r["ci"][1] - r["accuracy"] for _, r in pts]],
                    fmt="o", color=color, capsize=4, label=f"{name}, 95 % Wilson interval")
    seeds = [(x - 0.18, v) for x, row in zip(xs, table) if "greedy" in row for v in row["greedy"]["per_seed"]]
    if seeds:  # each seed's own run: how far apart two runs of one rung land
        ax.plot(*zip(*seeds), "x", color="tab:blue", alpha=0.5, ms=5, label="greedy pass@1, each seed")
    ax.set_xticks(list(xs), [row["label"] for row in table], rotation=20, ha="right")
    ax.set_ylabel("held-out accuracy")
    ax.set_title(f"DAPO ladder, {seeds_text(args)} x {args.eval_examples} problems, {args.steps} steps each")
    paper = [(x, row["paper"]) for x, row in zip(xs, table) if row["paper"] is not None]
    twin = ax.twinx()
    twin.plot([x for x, _ in paper], [p for _, p in paper], "s--", color="gray", label="paper: AIME avg@32 (right)")
    twin.set_ylabel("paper's AIME avg@32 (%)")
    handles = ax.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.42), ncol=3, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    runs = plan(args)
    if args.dry_run:
        for run in runs:
            print("python -m grpo_trainer.train " + " ".join(run["argv"]))
        return 0
    out = Path(args.out)
    todo = [r for r in runs if not result_path(r, args.steps).exists()]
    if args.report_only and todo:
        print(f"error: {len(todo)} of {len(runs)} runs have no held-out result in {out}; run without "
              f"--report-only to train them", file=sys.stderr)
        return 2
    for i, run in enumerate(todo, 1):
        train(run, args.steps, i, len(todo), args.keep_checkpoints)
    base = {"slug": "base", "dir": out / "base", "seed": None}
    if not args.no_base and not args.report_only and not result_path(base, 0).exists():
        evaluate_base(args, runs)
    table = summarize(runs, args.steps, base if result_path(base, 0).exists() and not args.no_base else None)
    total_min = sum(row["wall_min"] for row in table)
    text = markdown(table, args, total_min)
    (out / "ladder.md").write_text(text)
    (out / "ladder.json").write_text(json.dumps({"args": vars(args), "table": [
        {k: ({kk: vv for kk, vv in v.items() if kk != "by_seed"} if isinstance(v, dict) else v) for k, v in row.items()}
        for row in table]}, indent=1) + "\n")
    plot(table, out / "ladder.png", args)
    print(text, end="")
    print(f"wrote {out / 'ladder.md'}, {out / 'ladder.json'}, {out / 'ladder.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
