"""Several runs' curves in one figure, against wall-clock time (the fair axis when a step costs
more in one run than another, e.g. PPO's critic) or against steps.

    python scripts/compare_runs.py runs/grpo:GRPO runs/ppo:PPO --out cmp.png [--x time|step]

Panels: the training reward (`reward/mean`, per step, and a 3-step moving mean), the mean
completion length, held-out greedy accuracy (`eval/accuracy`, markers). Also prints one table row per run: steps,
seconds per step (median), mean reward over the first and last third of the steps, last
held-out accuracy. The run directories are read as grpo_trainer.plot reads them.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from grpo_trainer.plot import PlotError, read_jsonl  # noqa: E402


def load(spec: str) -> tuple[str, list[dict]]:
    path, _, label = spec.partition(":")
    rows = [r for r in read_jsonl(Path(path) / "metrics.jsonl", PlotError) if "step" in r]
    if not rows:
        raise PlotError(f"{path}/metrics.jsonl has no steps: pass a run directory that trained")
    return label or Path(path).name, rows


def elapsed_minutes(rows: list[dict]) -> list[float]:
    total, out = 0.0, []
    for r in rows:
        total += r.get("time/step") or 0.0
        out.append(total / 60)
    return out


def summary(label: str, rows: list[dict]) -> str:
    rewards = [r["reward/mean"] for r in rows if r.get("reward/mean") is not None]
    third = max(len(rewards) // 3, 1)
    evals = [(r["step"], r["eval/accuracy"]) for r in rows if r.get("eval/accuracy") is not None]
    step_s = statistics.median(r["time/step"] for r in rows if r.get("time/step"))
    last = f"{evals[-1][1]:.3f} (step {evals[-1][0]})" if evals else "-"
    return (f"| {label} | {len(rows)} | {step_s:.1f} | {statistics.fmean(rewards[:third]):.3f} | "
            f"{statistics.fmean(rewards[-third:]):.3f} | {last} |")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="RUN_DIR or RUN_DIR:label")
    p.add_argument("--out", required=True, help="the PNG to write")
    p.add_argument("--x", choices=("time", "step"), default="time")
    args = p.parse_args(argv)
    try:
        runs = [load(spec) for spec in args.runs]
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except (PlotError, ImportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    fig, (left, middle, right) = plt.subplots(1, 3, figsize=(14, 4.2), dpi=100)
    print("| run | steps | s/step (median) | reward, first third | reward, last third | held-out accuracy |")
    print("|---|---|---|---|---|---|")
    for label, rows in runs:
        x = elapsed_minutes(rows) if args.x == "time" else [r["step"] for r in rows]
        reward = [r.get("reward/mean") for r in rows]
        line, = left.plot(x, reward, alpha=0.35)
        smooth = [statistics.fmean(v for v in reward[max(0, i - 2):i + 1] if v is not None) for i in range(len(rows))]
        left.plot(x, smooth, color=line.get_color(), label=label)
        middle.plot(x, [r.get("completion/len_mean") for r in rows], color=line.get_color(), label=label)
        pts = [(xi, r["eval/accuracy"]) for xi, r in zip(x, rows) if r.get("eval/accuracy") is not None]
        if pts:
            right.plot(*zip(*pts), marker="o", color=line.get_color(), label=label)
        print(summary(label, rows))
    xlabel = "wall-clock (minutes)" if args.x == "time" else "step"
    left.set(title="training reward (3-step moving mean)", xlabel=xlabel, ylabel="reward/mean")
    middle.set(title="completion length", xlabel=xlabel, ylabel="tokens (mean)", ylim=(0, None))
    right.set(title="held-out greedy accuracy", xlabel=xlabel, ylabel="eval/accuracy", ylim=(0, None))
    for ax in (left, middle, right):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
