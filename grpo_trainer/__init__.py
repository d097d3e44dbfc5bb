"""grpo_trainer: GRPO/DAPO post-training for reasoning LLMs."""

__version__ = "0.1.0"
