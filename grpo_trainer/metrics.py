"""Per-step metrics to the console, `metrics.jsonl` and a progress bar; sample completions to
`samples.jsonl`. Only the main process writes."""

from __future__ import annotations

import json
import math
import time
from contextlib import contextmanager
from pathlib import Path

import torch
from tqdm.auto import tqdm

from grpo_trainer import console
from grpo_trainer.live import open_sinks

# The columns of the one-line console summary per step, in order.
CONSOLE = [("reward/mean", "reward"), ("reward/accuracy", "acc"), ("reward/format", "fmt"),
           ("completion/len_mean", "len"), ("train/kl", "kl"), ("train/entropy", "ent"),
           ("mismatch/kl", "mis_kl"),  # engine vs trainer, k3 nats/token: ~1e-3 is bf16 sampling, > 0.1 stale weights
           ("critic/explained_var", "vf_ev"),  # PPO's critic: 1 = predicts the returns, <= 0 = no better than their mean
           ("eval/accuracy", "eval_acc"), ("time/step", "s"), ("throughput/rollout_tokens_per_s", "tok/s")]


def clock(seconds: float) -> str:
    """65.2 -> '1m05s', 3725 -> '1h02m', 9.4 -> '9s'."""
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


PHASE_PREFIX = "phase/"  # PhaseTimer's profiler ranges: phase/rollout, phase/train, ...


class PhaseTimer:
    """`with timer("rollout"): ...` accumulates seconds per phase. Each phase is also a range named
    `phase/<name>` in torch's profiler (nothing is recorded while no profiler runs): the bench's
    `--profile` splits kernel time by it."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, phase: str):
        start = time.perf_counter()
        try:
            with torch.profiler.record_function(PHASE_PREFIX + phase):
                yield
        finally:
            self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - start


def _clean(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN; null says "not measured"
    return value


class MetricsLogger:
    """Exists from the trainer's construction, so a lone `train_step` can log; `begin` (the
    training loop, once the start step is known after a resume) trims the files to that step and
    starts the progress bar."""

    def __init__(self, run_dir: str | Path, enabled: bool, max_steps: int, report_to: list[str] = (),
                 config: dict | None = None):
        self.enabled = enabled
        self.report_to, self.config, self.sinks = list(report_to), config, []  # live.py: TensorBoard, wandb
        self.run_dir = Path(run_dir)
        self.max_steps = max_steps
        self.history: list[dict] = []
        self.metrics_path = self.run_dir / "metrics.jsonl"
        self.samples_path = self.run_dir / "samples.jsonl"
        self.bar = None
        self.started, self.start_step = time.perf_counter(), 0

    def begin(self, start_step: int) -> None:
        if not self.enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        # A resumed run rewrites the steps after its checkpoint; keep the rows up to it (a fresh run: none).
        self.history = [row for row in _read_jsonl(self.metrics_path) if row.get("step", 0) <= start_step]
        _write_jsonl(self.metrics_path, self.history)
        _write_jsonl(self.samples_path, [r for r in _read_jsonl(self.samples_path) if r.get("step", 0) <= start_step])
        self.started, self.start_step = time.perf_counter(), start_step
        # A bar only on a terminal: in a log file its redraws are \r-separated padding before each line.
        if console.out().isatty():
            self.bar = tqdm(total=self.max_steps, initial=start_step, desc="GRPO", unit="step", dynamic_ncols=True,
                            file=console.out())
        self.sinks = open_sinks(self.report_to, self.run_dir, start_step, self.config)

    def log(self, step: int, metrics: dict) -> None:
        if not self.enabled:
            return
        row = {"step": step, **{k: _clean(v) for k, v in metrics.items()}}
        self.history.append(row)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with open(self.metrics_path, "a") as fh:
            fh.write(json.dumps(row) + "\n")
        for sink in self.sinks:
            sink.log(step, row)
        parts = [f"{short}={row[key]:.3g}" for key, short in CONSOLE if isinstance(row.get(key), (int, float))]
        line = f"step {step:4d} | " + " ".join(parts) + " | " + self.timing(step)
        if self.bar is None:
            console.line(line)
        else:
            self.bar.write(line, file=console.out())
            self.bar.update(1)

    def timing(self, step: int) -> str:
        """Wall time since `begin` and the remaining steps at this session's mean step time."""
        elapsed = time.perf_counter() - self.started
        done = max(step - self.start_step, 1)
        return f"elapsed {clock(elapsed)}, eta {clock(elapsed / done * max(self.max_steps - step, 0))}"

    def log_samples(self, step: int, samples: list[dict]) -> None:
        if not self.enabled or not samples:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with open(self.samples_path, "a") as fh:
            for s in samples:
                fh.write(json.dumps({"step": step, **s}) + "\n")
        for sink in self.sinks:
            sink.log_samples(step, samples)

    def summary(self) -> str:
        """First vs last quarter of the run: the trend a person looks for."""
        rows = self.history
        if not rows:
            return "no steps logged"
        k = max(1, len(rows) // 4)
        lines = [f"steps {rows[0]['step']}..{rows[-1]['step']}  (mean of first {k} vs last {k} steps)"]
        for key in ("reward/mean", "reward/accuracy", "reward/format", "completion/len_mean", "eval/accuracy",
                    "time/step"):
            first = [r[key] for r in rows[:k] if isinstance(r.get(key), (int, float))]
            last = [r[key] for r in rows[-k:] if isinstance(r.get(key), (int, float))]
            if first and last:
                lines.append(f"  {key:22s} {sum(first) / len(first):8.3f} -> {sum(last) / len(last):8.3f}")
        return "\n".join(lines)

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()
        self.sinks = []
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a torn last line from a kill; everything before it is intact
    return rows


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tmp.replace(path)
