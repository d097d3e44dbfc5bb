"""The throughput benchmark, `python -m grpo_trainer.bench` (what it measures: cli.py).

report.py   arithmetic, JSON and the table (pure)
measure.py  the timed measurements (GEMM peaks, rollout, forward+backward, weight sync)
kernels.py  --profile: one step's GEMM, attention and sampling kernels per phase (torch's profiler)
cli.py      flags, the GRPO-step child process, and the order the parts run in
"""

from grpo_trainer.bench.cli import INSTRUCTION, NORMAL, QUICK, main, parse_args, run_steps, step_overrides
from grpo_trainer.bench.measure import Clock, gemm_peaks, model_gemm_rate, time_rollout, time_sync, time_train
from grpo_trainer.bench.report import (PHASES, format_table, gemm_flops, linear_flops, linear_shapes, machine_info,
                                      to_json, train_flops)

__all__ = ["INSTRUCTION", "NORMAL", "PHASES", "QUICK", "Clock", "format_table", "gemm_flops", "gemm_peaks",
           "linear_flops", "linear_shapes", "machine_info", "main", "model_gemm_rate", "parse_args", "run_steps",
           "step_overrides", "time_rollout", "time_sync", "time_train", "to_json", "train_flops"]
