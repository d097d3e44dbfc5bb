"""Training curves of a run as PNG files, and optionally as TensorBoard event files.

    python -m grpo_trainer.plot RUN_DIR [--out DIR] [--tensorboard]

Reads RUN_DIR/metrics.jsonl (one JSON object per step, written by the trainer) and writes into
DIR (default RUN_DIR/plots) one PNG per group of metrics that the run logged: reward.png,
completion_length.png, kl.png, entropy.png, clip_fraction.png, mismatch.png, time.png (phase
times stacked). A value that was not measured (null) is a gap, not a 0; held-out eval/* points
are markers. A group none of whose keys has a value is skipped, and so is one that cannot apply
to the run (read from RUN_DIR/config.yaml): KL without a reference model (beta = 0), clip
fractions with one update per rollout batch (the ratio is 1). matplotlib is the optional extra
`plot` (`pip install 'grpo_trainer[plot]'`); --tensorboard needs the `tensorboard` package (for
live TensorBoard/wandb while training see trainer.report_to).
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
    ylabel: str  # with its unit
    keys: tuple[str, ...]
    stacked: bool = False
    # A panel whose quantity cannot exist in this run is left out (see _applies), not drawn as zeros.
    needs: str | None = None
    logy: bool = False  # symlog: keys spanning decades, zeros allowed


PLOTS = (
    # eval/* is measured every few steps on held-out problems: markers on the reward axes, no line.
    PlotSpec("reward.png", "Reward, accuracy and format", "mean per sample (accuracy, format: fraction)",
             ("reward/mean", "reward/accuracy", "reward/format", "eval/accuracy")),
    PlotSpec("completion_length.png", "Completion length", "tokens per completion",
             ("completion/len_mean", "completion/len_max")),
    PlotSpec("kl.png", "KL to the reference policy", "nats / token", ("train/kl",), needs="reference"),
    PlotSpec("entropy.png", "Policy entropy on trained tokens", "nats / token", ("train/entropy",)),
    PlotSpec("clip_fraction.png", "Trained tokens whose ratio was clipped", "fraction of trained tokens",
             ("train/clip_frac_low", "train/clip_frac_high"), needs="clipping"),
    # Engine vs trainer (the weight-sync canary, algorithm.rollout_correction): KL and |d log p| in
    # nats per token, the rest fractions; values span decades, so a log axis.
    PlotSpec("mismatch.png", "Engine vs trainer log-probs", "nats / token (KL, |Δ log p|) or fraction",
             ("mismatch/kl", "mismatch/mean_abs_logp_diff", "mismatch/token_out_frac", "mismatch/seq_out_frac",
              "mismatch/corrected_frac"), logy=True),
    PlotSpec("time.png", "Time per step by phase", "seconds (s)",
             ("time/rollout", "time/reward", "time/train", "time/sync"), stacked=True),
)
# How each line is drawn: the clip fractions are often equal (both 0), so they differ in style too.
STYLES = {"train/clip_frac_low": {"linestyle": "-", "marker": "v"},
          "train/clip_frac_high": {"linestyle": "--", "marker": "^"}}


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
    rows = [row for row in read_jsonl(path, PlotError)
            if isinstance(row, dict) and _number(row.get("step")) is not None]
    if not rows:
        raise PlotError(f"{path} has no logged steps yet: plot again after the run has logged a step")
    return sorted(rows, key=lambda r: r["step"])



def read_jsonl(path: Path, error: type[Exception]) -> list:
    """The JSON values of a run's .jsonl file, blank lines skipped. A torn last line (a kill while
    writing) is dropped, everything before it being intact; a bad line elsewhere raises `error`."""
    rows = []
    lines = path.read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break
            raise error(f"{path}:{i + 1} is not valid JSON; fix or delete that line") from None
    return rows

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


def run_config(run_dir: str | Path) -> dict | None:
    """The run's config.yaml (saved by the trainer) as a plain dict, or None when absent/unreadable."""
    path = _run_root(run_dir) / "config.yaml"
    try:
        import yaml

        cfg = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, ImportError, ValueError):
        return None
    return cfg if isinstance(cfg, dict) else None


def _applies(spec: PlotSpec, rows: list[dict], cfg: dict | None) -> str | None:
    """None when the panel's quantity can exist in this run; else why it cannot."""
    if spec.needs is None:
        return None
    a = (cfg or {}).get("algorithm") or {}
    nonzero = any(v for key in spec.keys for v in series(rows, key)[1])
    if spec.needs == "reference":
        if cfg is None:
            return None if nonzero else "no non-zero value logged"
        return None if (a.get("beta") or 0) > 0 else "no reference model (algorithm.beta = 0)"
    # The ratio new/old is 1 by construction when each batch makes one optimizer step from the
    # weights that sampled it; a non-zero value (another objective's ratio) shows it anyway.
    if (a.get("num_iterations") or 1) > 1 or (a.get("num_mini_batches") or 1) > 1 or nonzero:
        return None
    return "one update per rollout batch: the ratio is 1, so nothing is clipped"


def figure(spec: PlotSpec, rows: list[dict], cfg: dict | None = None):
    """The matplotlib Figure of one panel, or None when none of spec.keys has a value (or it
    cannot apply to this run). Steps without a value are gaps in the line, never zeros."""
    data = {key: series(rows, key) for key in spec.keys}
    data = {key: sv for key, sv in data.items() if sv[0]}
    if not data or _applies(spec, rows, cfg) is not None:
        return None
    from matplotlib.ticker import MaxNLocator

    fig = _figure()
    ax = fig.add_subplot(1, 1, 1)
    all_steps = [float(r["step"]) for r in rows]
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
            if key.startswith("eval/"):  # a few held-out points: markers, not a line through them
                ax.plot(steps, values, linestyle="none", marker="D", markersize=6, label=f"{key} (held-out)")
                continue
            at = dict(zip(steps, values))
            ys = [at.get(s, math.nan) for s in all_steps]  # NaN: not measured there, drawn as a gap
            style = {"linestyle": "-", "marker": "o" if len(steps) <= 30 else None, **STYLES.get(key, {})}
            ax.plot(all_steps, ys, label=key, markersize=3, linewidth=1.2, **style)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole numbers
    if spec.logy:
        ax.set_yscale("symlog", linthresh=1e-12)  # an fp32 engine agrees to ~1e-11 nats: keep it off the zero line
    ax.set_title(spec.title)
    ax.set_xlabel("step")
    ax.set_ylabel(spec.ylabel)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    fig.tight_layout()
    return fig


def plot_run(run_dir: str | Path, out_dir: str | Path | None = None, skipped: list[str] | None = None) -> list[Path]:
    """Write the PNGs of `run_dir`'s metrics into out_dir (default run_dir/plots); return their paths.
    `skipped` (if given) receives one line per panel left out because it cannot apply to the run."""
    rows = load_metrics(run_dir)
    _figure()  # fail on a missing matplotlib before creating anything
    cfg = run_config(run_dir)
    out = Path(out_dir) if out_dir is not None else _run_root(run_dir) / "plots"
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for spec in PLOTS:
        fig = figure(spec, rows, cfg)
        if fig is not None:
            fig.savefig(out / spec.filename, format="png")
            written.append(out / spec.filename)
        elif skipped is not None and any(series(rows, k)[0] for k in spec.keys):
            skipped.append(f"{spec.filename}: {_applies(spec, rows, cfg)}")
    return written


def export_tensorboard(run_dir: str | Path, log_dir: str | Path) -> Path:
    """Write every numeric metric of every step as a TensorBoard scalar into log_dir.

    Earlier event files in log_dir are removed first, so a re-export does not double the curves.
    """
    rows = load_metrics(run_dir)
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise PlotError("TensorBoard export needs the tensorboard package: pip install tensorboard") from None
    from grpo_trainer.live import scalars  # the same numbers trainer.report_to=[tensorboard] writes live
    log_dir = Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    for old in log_dir.glob("events.out.tfevents.*"):
        old.unlink()
    writer = SummaryWriter(log_dir=str(log_dir))
    try:
        for row in rows:
            for key, value in scalars(row).items():
                writer.add_scalar(key, value, global_step=int(row["step"]))
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
        skipped: list[str] = []
        written = plot_run(args.run_dir, args.out, skipped)
        for path in written:
            print(f"wrote {path}")
        for line in skipped:
            print(f"left out {line}")
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
