"""`python -m grpo_trainer.bench`: see grpo_trainer/bench/cli.py."""

from grpo_trainer.bench.cli import main

main()
