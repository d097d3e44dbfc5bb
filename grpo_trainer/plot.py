"""Training curves of a run as PNG files, and optionally as TensorBoard event files.

    python -m grpo_trainer.plot RUN_DIR [--out DIR] [--tensorboard]

Reads RUN_DIR/metrics.jsonl (one JSON object per step, written by the trainer) and writes into
DIR (default RUN_DIR/plots) one PNG per group of metrics that the run logged: reward.png,
completion_length.png, kl.png, entropy.png, clip_fraction.png, mismatch.png (engine vs trainer),
time.png (phase times stacked).
A group none of whose keys has a value is skipped. matplotlib is the optional extra `plot`
(`pip install 'grpo_trainer[plot]'`); --tensorboard needs the `tensorboard` package.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

METRICS_FILE = "metrics.jsonl"
FIG_SIZE = (8.0, 4.5)  # inches
DPI = 100  # so each PNG is 800 x 450 pixels


class PlotError(ValueError):
    """Missing input or dependency; the message says what to do."""


@dataclass(frozen=True)
class PlotSpec:
    filename: str
    title: str
    ylabel: str
    keys: tuple[str, ...]
    stacked: bool = False
    logy: bool = False  # symlog: keys spanning decades, zeros allowed


PLOTS = (
    # eval/accuracy is logged only every few steps: drawn with markers on the reward axes.
    PlotSpec("reward.png", "Reward", "value", ("reward/mean", "reward/accuracy", "reward/format", "eval/accuracy")),
    PlotSpec("completion_length.png", "Completion length", "tokens", ("completion/len_mean", "completion/len_max")),
    PlotSpec("kl.png", "KL to the reference policy", "KL", ("train/kl",)),
    PlotSpec("entropy.png", "Policy entropy", "nats / token", ("train/entropy",)),
    PlotSpec("clip_fraction.png", "Clipped token fraction", "fraction",
             ("train/clip_frac_low", "train/clip_frac_high")),
    # Engine vs trainer (algorithm.rollout_correction): KL and |d log p| in nats, the rest fractions; log axis.
    PlotSpec("mismatch.png", "Rollout-trainer mismatch", "nats / fraction",
             ("mismatch/kl", "mismatch/mean_abs_logp_diff", "mismatch/token_out_frac", "mismatch/seq_out_frac",
              "mismatch/corrected_frac"), logy=True),
    PlotSpec("time.png", "Time per step by phase", "seconds",
             ("time/rollout", "time/reward", "time/train", "time/sync"), stacked=True),
)


def _number(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None  # null (not measured), NaN, or a non-numeric field
    return float(value)


def load_metrics(run_dir: str | Path) -> list[dict]:
    """Rows of RUN_DIR/metrics.jsonl (or of a metrics file given directly), sorted by step.

    A torn last line (the run was killed mid-write) is ignored; rows without a step are skipped.
    """
    path = Path(run_dir)
    if path.is_dir():
        path = path / METRICS_FILE
    if not path.is_file():
        raise PlotError(f"{path} not found: pass a run directory written by grpo_trainer.train "
                        f"(its trainer.output_dir), which holds {METRICS_FILE}")
    rows = []
    lines = path.read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break  # a torn last line from a kill; everything before it is intact
            raise PlotError(f"{path}:{i + 1} is not valid JSON; fix or delete that line") from None
        if isinstance(row, dict) and _number(row.get("step")) is not None:
            rows.append(row)
    if not rows:
        raise PlotError(f"{path} has no logged steps yet: plot again after the run has logged a step")
    return sorted(rows, key=lambda r: r["step"])


def series(rows: list[dict], key: str) -> tuple[list[float], list[float]]:
    """(steps, values) of `key` over the rows that have a finite value for it."""
    steps, values = [], []
    for row in rows:
        v = _number(row.get(key))
        if v is not None:
            steps.append(float(row["step"]))
            values.append(v)
    return steps, values


def _figure():
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise PlotError("matplotlib is not installed: pip install 'grpo_trainer[plot]' "
                        "(or pip install matplotlib)") from None
    # A bare Figure on the Agg canvas: no pyplot global state, no display needed.
    fig = Figure(figsize=FIG_SIZE, dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _draw(spec: PlotSpec, rows: list[dict], path: Path) -> bool:
    """Write one PNG; False (and no file) when none of spec.keys has a value."""
    data = {key: series(rows, key) for key in spec.keys}
    data = {key: sv for key, sv in data.items() if sv[0]}
    if not data:
        return False
    fig = _figure()
    ax = fig.add_subplot(1, 1, 1)
    if spec.stacked:
        # One x axis for every phase; a phase missing at a step counts 0 s there.
        steps = sorted({s for st, _ in data.values() for s in st})
        stacks = [[dict(zip(*data[key])).get(s, 0.0) for s in steps] for key in data]
        ax.stackplot(steps, stacks, labels=[key.split("/", 1)[-1] for key in data], alpha=0.8)
        total = series(rows, "time/step")  # the whole step; the gap above the stack is untimed work
        if total[0]:
            ax.plot(*total, color="black", linewidth=1.0, label="step (total)")
    else:
        for key, (steps, values) in data.items():
            sparse = len(steps) < 0.5 * len(rows) or len(steps) <= 20
            ax.plot(steps, values, label=key, marker="o" if sparse else None, markersize=3, linewidth=1.2)
    if spec.logy:
        ax.set_yscale("symlog", linthresh=1e-6)
    ax.set_title(spec.title)
    ax.set_xlabel("step")
    ax.set_ylabel(spec.ylabel)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    fig.tight_layout()
    fig.savefig(path, format="png")
    return True


def plot_run(run_dir: str | Path, out_dir: str | Path | None = None) -> list[Path]:
    """Write the PNGs of `run_dir`'s metrics into out_dir (default run_dir/plots); return their paths."""
    rows = load_metrics(run_dir)
    _figure()  # fail on a missing matplotlib before creating anything
    out = Path(out_dir) if out_dir is not None else _run_root(run_dir) / "plots"
    out.mkdir(parents=True, exist_ok=True)
    return [out / spec.filename for spec in PLOTS if _draw(spec, rows, out / spec.filename)]


def export_tensorboard(run_dir: str | Path, log_dir: str | Path) -> Path:
    """Write every numeric metric of every step as a TensorBoard scalar into log_dir.

    Earlier event files in log_dir are removed first, so a re-export does not double the curves.
    """
    rows = load_metrics(run_dir)
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise PlotError("TensorBoard export needs the tensorboard package: pip install tensorboard") from None
    log_dir = Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    for old in log_dir.glob("events.out.tfevents.*"):
        old.unlink()
    writer = SummaryWriter(log_dir=str(log_dir))
    try:
        for row in rows:
            for key, value in row.items():
                v = _number(value)
                if key != "step" and v is not None:
                    writer.add_scalar(key, v, global_step=int(row["step"]))
    finally:
        writer.close()
    return log_dir


def _run_root(run_dir: str | Path) -> Path:
    path = Path(run_dir)
    return path if path.is_dir() else path.parent


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="grpo_trainer.plot", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", help="run directory (trainer.output_dir) or its metrics.jsonl")
    p.add_argument("--out", default=None, help="where the PNGs go (default RUN_DIR/plots)")
    p.add_argument("--tensorboard", action="store_true",
                   help="also write TensorBoard event files into OUT/tensorboard")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        written = plot_run(args.run_dir, args.out)
        for path in written:
            print(f"wrote {path}")
        if not written:
            print(f"no known metric in {args.run_dir} has a value; nothing plotted")
        if args.tensorboard:
            out = Path(args.out) if args.out is not None else _run_root(args.run_dir) / "plots"
            log_dir = export_tensorboard(args.run_dir, out / "tensorboard")
            print(f"wrote TensorBoard events to {log_dir} (view: tensorboard --logdir {log_dir})")
    except PlotError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
