"""Command line: `accelerate launch [--config_file configs/accelerate/cpu.yaml] -m grpo_trainer.train
--recipe recipes/quickstart.yaml [section.key=value ...] [--resume auto|PATH] [--dry-run] [--verbose]`.

The console shows the run's own lines: the recipe and overrides, each start-up phase with its
duration, one line per step (with tokens/s, elapsed time and ETA), warnings and errors.
Third-party output (vLLM, transformers, torch, Python warnings, C++ lines) goes to
TRAINER.OUTPUT_DIR/logs/third_party.rank{R}.log; --verbose or GRPO_TRAINER_VERBOSE=1 shows it
on the console too. --dry-run runs every check, prints what would run and exits 0 without
loading a model or writing anything. A run that has already reached trainer.max_steps is told
so before anything loads.

Exit codes: 0 done (or the run had already finished); 2 bad input (recipe, data, model path,
output directory, reward specs, or an output directory in use by another live run, whose PID the
line names), told in one `error: ...` line on stderr before any model is loaded, or a reward
function that raised or gave no finite score for trainer.max_no_reward_steps steps; 1 the run
stopped on a fault (repeated non-finite updates, a checkpoint that could not be written, a
weight-sync mismatch); 130 (SIGINT) or 143 (SIGTERM): stopped on request. In the training loop the
first signal lets the step finish and checkpoints it, then prints `stopped at step N; resume with
resume=auto`; while starting up, or on a second signal, the process stops at once. Complete
checkpoints are never touched. A SIGINT or SIGTERM to `accelerate launch` reaches the trainer
(grpo_trainer/stopping.py says how). `accelerate launch` reports any failure as 1 (pass it -q to
keep its own traceback away)."""

from __future__ import annotations

import argparse
import logging
import logging.handlers
import os
import sys

from grpo_trainer import console, runlock, stopping
from grpo_trainer.config import Config, ConfigError, load_config


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="grpo_trainer.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", required=True, help="training YAML (see recipes/)")
    p.add_argument("--resume", default=None, help="'auto' (newest checkpoint in output_dir) or a checkpoint path")
    p.add_argument("--dry-run", action="store_true",
                   help="check recipe, data, model path and output directory, print what would run, exit")
    p.add_argument("--verbose", action="store_true",
                   help=f"third-party logs on the console too (default: OUTPUT_DIR/logs/; or {console.VERBOSE_ENV}=1)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. trainer.max_steps=3 resume=auto")
    return p.parse_args(argv)


def _error(exc: BaseException, code: int) -> int:
    if os.environ.get("GRPO_TRAINER_DEBUG"):
        raise exc
    print("error: " + " ".join(str(exc).split()), file=sys.stderr)  # one line, whatever the message
    return code


def main(argv: list[str] | None = None) -> int:
    with stopping.handled():  # before anything: a Ctrl-C while loading exits without a traceback
        try:
            return _main(parse_args(argv))
        finally:
            runlock.release()


def _main(args: argparse.Namespace) -> int:
    # Warnings from the checks below (e.g. "skipped 3 rows") are held back until they pass, so
    # that a bad input prints exactly one line.
    held = logging.handlers.MemoryHandler(capacity=10_000, flushLevel=logging.CRITICAL + 1)
    root = logging.getLogger()
    root.addHandler(held)
    overrides = list(args.overrides) + ([f"resume={args.resume}"] if args.resume else [])
    try:
        cfg = load_config(args.recipe, overrides)
        from grpo_trainer.preflight import checkpoint_step, preflight

        runlock.acquire(cfg.trainer.output_dir, create=False)  # a live run there is the first thing to say
        resume_from = preflight(cfg)
        done = checkpoint_step(resume_from)
        if not args.dry_run:
            runlock.acquire(cfg.trainer.output_dir)  # held until exit; before anything is loaded or cleared
    except ConfigError as exc:
        return _error(exc, 2)
    finally:
        root.removeHandler(held)
    main_rank, run = runlock.is_main_rank(), cfg.trainer.output_dir
    if args.dry_run:
        if main_rank:
            print("\n".join(_plan(args, overrides, cfg, resume_from, done)), flush=True)
        return 0
    if done >= cfg.trainer.max_steps:  # told before torch, the model or the engine load
        if main_rank:
            print(f"run in {run} already finished at step {done} (trainer.max_steps={cfg.trainer.max_steps}); "
                  "nothing to do", file=sys.stderr, flush=True)
        return 0
    verbose = console.verbose_requested(args.verbose)
    if main_rank:
        console.stamped(f"recipe {args.recipe}" + (f" with {' '.join(overrides)}" if overrides else ""))
        console.stamped(f"run directory {run}: config.yaml (the full resolved config)"
                        + ("" if verbose else f", {console.log_path(run).relative_to(run)} "
                           "(third-party output; --verbose shows it here)"))
    failure: tuple[BaseException, int] | None = None
    with console.quiet(run, verbose):
        for record in held.buffer:
            if record.levelno >= logging.WARNING:
                logging.getLogger(record.name).handle(record)
        with console.phase("importing torch, transformers and accelerate"):
            from grpo_trainer.checkpoint import CheckpointError
            from grpo_trainer.faults import TrainingAborted
            from grpo_trainer.trainer import GRPOTrainer
        try:
            GRPOTrainer(cfg).train()
        except (ValueError, FileNotFoundError) as exc:
            failure = exc, 2
        except (TrainingAborted, CheckpointError) as exc:
            failure = exc, 1
        except stopping.RunStopped as exc:
            failure = exc, exc.exit_code
    # Told here, after quiet() has given fds 1 and 2 back to the terminal.
    if failure is None:
        return 0
    exc, code = failure
    if isinstance(exc, stopping.RunStopped):
        if main_rank:
            print(exc, file=sys.stderr, flush=True)
        return code
    return _error(exc, code)


def _plan(args: argparse.Namespace, overrides: list[str], cfg: Config, resume_from, done: int) -> list[str]:
    """What `--dry-run` says would run."""
    t, r, a, d = cfg.trainer, cfg.rollout, cfg.algorithm, cfg.data
    if done >= t.max_steps:
        start = f"nothing: already finished at step {done} (trainer.max_steps={t.max_steps})"
    elif resume_from is not None:
        start = f"resume from {resume_from} at step {done}, up to step {t.max_steps}"
    else:
        start = f"a fresh run of {t.max_steps} steps" + (" (trainer.overwrite: the previous run is cleared)"
                                                          if t.overwrite else "")
    source = f"synthetic, difficulty {d.difficulty}" if d.source == "synthetic" else d.source
    return [f"dry run: recipe {args.recipe}" + (f" with {' '.join(overrides)}" if overrides else ""),
            f"  would run  {start}",
            f"  model      {cfg.model.name_or_path} ({cfg.model.dtype}"
            + (", LoRA" if cfg.model.lora.enabled else "") + ")",
            f"  data       {source}" + (f", {d.num_examples} examples" if d.num_examples else ""),
            f"  per step   {t.prompts_per_step} prompts x {r.num_generations} samples of <= "
            f"{r.max_completion_length} tokens, {r.backend} engine ({r.dtype or cfg.model.dtype})",
            f"  algorithm  advantage {a.advantage}, loss {a.policy_loss}/{a.loss_agg}, beta {a.beta}",
            f"  rewards    " + ", ".join(f"{f['name']} x{f.get('weight', 1.0)}" for f in cfg.reward.functions),
            f"  output     {t.output_dir} (config.yaml, metrics.jsonl, checkpoints; third-party logs in logs/)",
            "checks passed: recipe, data, model path, output directory; nothing was loaded or written"]


if __name__ == "__main__":
    sys.exit(main())
