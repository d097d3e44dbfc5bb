"""Live logging to the tools people watch runs in (`trainer.report_to`): TensorBoard event files in
RUN_DIR/tensorboard and a wandb run (in RUN_DIR/wandb; `WANDB_MODE=offline` needs no account).

MetricsLogger (metrics.py) feeds them on the main process as each step is logged, under the names
of metrics.jsonl; a value that was not measured (null there) is not written at all, so a curve
shows a gap rather than a made-up 0. Samples go to TensorBoard as text and to wandb as a table.
Each library is imported only when asked for; preflight.check_report_to has already said in one
line which one is missing.
"""

from __future__ import annotations

import math
import os
import secrets
from pathlib import Path

# The sample fields shown as columns (the per-token lists are for the HTML inspector).
SAMPLE_COLUMNS = ("question", "completion", "reward", "advantage", "parsed", "gold", "components")


def scalars(row: dict) -> dict[str, float]:
    """The finite numbers of a metrics row, without its step."""
    return {k: float(v) for k, v in row.items()
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


def open_sinks(report_to: list[str], run_dir: Path, start_step: int, config: dict | None) -> list:
    sinks = []
    for name in report_to:
        sinks.append(TensorBoardSink(run_dir, start_step) if name == "tensorboard"
                     else WandbSink(run_dir, start_step, config))
    return sinks


class TensorBoardSink:
    def __init__(self, run_dir: Path, start_step: int):
        from torch.utils.tensorboard import SummaryWriter

        # A resumed run rewrites the steps after its checkpoint: purge_step hides the old ones.
        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"),
                                    purge_step=start_step + 1 if start_step else None)

    def log(self, step: int, row: dict) -> None:
        for key, value in scalars(row).items():
            self.writer.add_scalar(key, value, global_step=step)
        self.writer.flush()  # seen by a running `tensorboard --logdir` at once

    def log_samples(self, step: int, samples: list[dict]) -> None:
        for i, s in enumerate(samples):
            lines = [f"**{k}**: {_cell(s.get(k))}" for k in SAMPLE_COLUMNS if k not in ("question", "completion")]
            text = (f"**question**: {s.get('question', '')}\n\n```\n{s.get('completion', '')}\n```\n\n"
                    + "  \n".join(lines))
            self.writer.add_text(f"samples/{i}", text, global_step=step)

    def close(self) -> None:
        self.writer.close()


class WandbSink:
    """One wandb run per run directory: its id is kept in RUN_DIR/wandb/run_id, so a resumed run
    continues it. The project is $WANDB_PROJECT (default grpo_trainer)."""

    def __init__(self, run_dir: Path, start_step: int, config: dict | None):
        import wandb

        self.wandb = wandb
        (run_dir / "wandb").mkdir(parents=True, exist_ok=True)
        id_file = run_dir / "wandb" / "run_id"
        run_id = id_file.read_text().strip() if start_step and id_file.is_file() else secrets.token_hex(4)
        id_file.write_text(run_id + "\n")
        # console="off": wandb must not wrap stdout (the progress bar and step lines are ours).
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "grpo_trainer"), name=run_dir.name,
                              id=run_id, resume="allow", dir=str(run_dir), config=config or {},
                              settings=wandb.Settings(console="off", silent=True, disable_git=True, save_code=False))

    def log(self, step: int, row: dict) -> None:
        self.run.log(scalars(row), step=step)

    def log_samples(self, step: int, samples: list[dict]) -> None:
        data = [[step, *(_cell(s.get(k)) for k in SAMPLE_COLUMNS)] for s in samples]
        self.run.log({"samples": self.wandb.Table(columns=["step", *SAMPLE_COLUMNS], data=data)}, step=step)

    def close(self) -> None:
        self.run.finish()


def _cell(value) -> str | float | None:
    if isinstance(value, dict):
        return ", ".join(f"{k}={_cell(v)}" for k, v in value.items())
    if isinstance(value, float):
        return round(value, 4)
    return value if value is None or isinstance(value, (int, str)) else str(value)
