"""Rule-based rewards: verifiers (string in, score and parse out), a registry, and a
time-bounded reward computer for GRPO batches. No torch here: plain Python lists."""

from grpo_trainer.rewards.types import FAILED, RewardError, RewardOutput, VerifyResult, clean_text
from grpo_trainer.rewards.registry import (
    get_verifier,
    known_verifiers,
    load_reward_function,
    register_verifier,
)

# Imported for their @register_verifier side effect.
from grpo_trainer.rewards.gsm8k import gsm8k_fast, gsm8k_verifier
from grpo_trainer.rewards.math_answer import math_verifier
from grpo_trainer.rewards.format import format_verifier
from grpo_trainer.rewards.pool import VerifierPool
from grpo_trainer.rewards.computer import RewardComputer, build_reward_fn, check_reward_specs

__all__ = [
    "FAILED",
    "RewardComputer",
    "RewardError",
    "RewardOutput",
    "VerifierPool",
    "VerifyResult",
    "build_reward_fn",
    "check_reward_specs",
    "clean_text",
    "format_verifier",
    "get_verifier",
    "gsm8k_fast",
    "gsm8k_verifier",
    "known_verifiers",
    "load_reward_function",
    "math_verifier",
    "register_verifier",
]
