"""Command line: `accelerate launch [--config_file configs/accelerate/cpu.yaml] -m grpo_trainer.train
--recipe recipes/quickstart.yaml [section.key=value ...] [--resume auto|PATH]`."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from grpo_trainer.config import ConfigError, load_config


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="grpo_trainer.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", required=True, help="training YAML (see recipes/)")
    p.add_argument("--resume", default=None, help="'auto' (newest checkpoint in output_dir) or a checkpoint path")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. trainer.max_steps=3 resume=auto")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    for noisy in ("vllm", "httpx", "datasets", "accelerate.utils.other"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    overrides = list(args.overrides) + ([f"resume={args.resume}"] if args.resume else [])
    try:
        cfg = load_config(args.recipe, overrides)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    # Imported after the config is known good: torch/vLLM start-up takes seconds.
    from grpo_trainer.trainer import GRPOTrainer

    try:
        trainer = GRPOTrainer(cfg)
        trainer.train()
    except (ValueError, FileNotFoundError) as exc:
        if os.environ.get("GRPO_TRAINER_DEBUG"):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
