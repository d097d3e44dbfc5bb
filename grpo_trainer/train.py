"""Command line: `accelerate launch [--config_file configs/accelerate/cpu.yaml] -m grpo_trainer.train
--recipe recipes/quickstart.yaml [section.key=value ...] [--resume auto|PATH]`.

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

from grpo_trainer import runlock, stopping
from grpo_trainer.config import ConfigError, load_config


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="grpo_trainer.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", required=True, help="training YAML (see recipes/)")
    p.add_argument("--resume", default=None, help="'auto' (newest checkpoint in output_dir) or a checkpoint path")
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
        from grpo_trainer.preflight import preflight

        runlock.acquire(cfg.trainer.output_dir, create=False)  # a live run there is the first thing to say
        preflight(cfg)
        runlock.acquire(cfg.trainer.output_dir)  # held until exit; before anything is loaded or cleared
    except ConfigError as exc:
        return _error(exc, 2)
    finally:
        root.removeHandler(held)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    for noisy in ("vllm", "httpx", "datasets", "accelerate.utils.other"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    for record in held.buffer:
        if record.levelno >= logging.WARNING:
            logging.getLogger(record.name).handle(record)
    # Imported after the config is known good: torch/vLLM start-up takes seconds.
    from grpo_trainer.checkpoint import CheckpointError
    from grpo_trainer.faults import TrainingAborted
    from grpo_trainer.trainer import GRPOTrainer

    try:
        trainer = GRPOTrainer(cfg)
        trainer.train()
    except (ValueError, FileNotFoundError) as exc:
        return _error(exc, 2)
    except (TrainingAborted, CheckpointError) as exc:
        return _error(exc, 1)
    except stopping.RunStopped as exc:
        if runlock.is_main_rank():
            print(exc, file=sys.stderr, flush=True)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
