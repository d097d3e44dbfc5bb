"""Typed run configuration: dataclasses loaded from a YAML recipe plus dotted overrides.

    cfg = load_config("recipes/quickstart.yaml", ["trainer.max_steps=3", "resume=auto"])

Every mistake is reported as one `ConfigError` line that names the key and what is allowed:
unknown keys suggest the closest valid one and list the valid ones, wrong types name the expected
type, out-of-range values name the range, unknown algorithm names list the registered ones.

Three modules, each importing only the ones before it (no cycle):
schema.py (the dataclasses and ConfigError) <- checks.py (values and cross-field rules) <-
loader.py (YAML, overrides, saving, config diff).
"""

from grpo_trainer.config.checks import validate
from grpo_trainer.config.loader import DEFAULT_DIFF_IGNORE, config_diff, load_config, parse_override, save_config
from grpo_trainer.config.schema import (
    AlgorithmConfig,
    Config,
    ConfigError,
    CriticConfig,
    DataConfig,
    LoraConfig,
    ModelConfig,
    RewardConfig,
    RolloutConfig,
    RolloutCorrectionConfig,
    TrainerConfig,
)

__all__ = ["AlgorithmConfig", "Config", "ConfigError", "CriticConfig", "DataConfig", "DEFAULT_DIFF_IGNORE", "LoraConfig",
           "ModelConfig", "RewardConfig", "RolloutConfig", "RolloutCorrectionConfig",
           "TrainerConfig", "config_diff", "load_config",
           "parse_override", "save_config", "validate"]
