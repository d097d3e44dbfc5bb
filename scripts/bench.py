"""End-to-end throughput benchmark; see grpo_trainer/bench.py for what it measures and its flags."""
from grpo_trainer.bench import main
main()
