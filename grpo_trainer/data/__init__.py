"""Data: synthetic GSM8K-style problems, dataset loading, prompt rendering, prompt sampling."""

from .loader import DEFAULT_INSTRUCTION, build_user_message, extract_gold, load_examples, render_prompts
from .sampler import PromptSampler
from .synthetic import SCENARIOS, make_problems, split_of

__all__ = [
    "DEFAULT_INSTRUCTION",
    "PromptSampler",
    "SCENARIOS",
    "build_user_message",
    "extract_gold",
    "load_examples",
    "make_problems",
    "render_prompts",
    "split_of",
]
