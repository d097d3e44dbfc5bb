"""Typed run configuration: dataclasses loaded from a YAML recipe plus dotted overrides.

    cfg = load_config("recipes/quickstart.yaml", ["trainer.max_steps=3", "resume=auto"])

Every mistake is reported as one `ConfigError` line that names the key and what is allowed:
unknown keys suggest the closest valid one and list the valid ones, wrong types name the expected
type, out-of-range values name the range. Overrides are merged into the recipe key by key; their
values are YAML (`3` -> int, `null` -> None, `[{name: gsm8k}]` -> list). Float fields also take
numeric strings such as "1e-5", which YAML 1.1 (PyYAML) reads as a string for want of a dot; int
fields take whole numbers in any notation (`1e3`, `1.5e3`), and refuse fractions.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal, Optional


class ConfigError(ValueError):
    """A bad recipe or override; the message is one line naming the key and the fix."""

    def __init__(self, message: str):
        # One line even when a YAML problem text or a value carries a newline.
        super().__init__(" ".join(str(message).split("\n")))


@dataclass
class LoraConfig:
    """Low-rank adapters (peft) on the policy; the frozen base doubles as the reference model."""

    enabled: bool = False
    r: int = 16
    alpha: float = 32.0  # the update is scaled by alpha / r
    dropout: float = 0.0
    target_modules: list = field(default_factory=lambda: [
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])


@dataclass
class ModelConfig:
    # An alias ("smollm2-135m-instruct"), a local HF directory, or a hub id.
    name_or_path: str = "smollm2-135m-instruct"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    trust_remote_code: bool = False
    gradient_checkpointing: bool = False
    lora: LoraConfig = field(default_factory=LoraConfig)


@dataclass
class DataConfig:
    # "synthetic" (built-in generator), a .jsonl/.json/.parquet path, or an HF dataset name.
    source: str = "synthetic"
    split: str = "train"
    num_examples: Optional[int] = None
    difficulty: int = 1
    seed: int = 0
    question_key: str = "question"
    answer_key: str = "answer"
    instruction: Optional[str] = None  # None: grpo_trainer.data.DEFAULT_INSTRUCTION
    system_prompt: Optional[str] = None
    max_prompt_length: int = 256
    # Held-out set for trainer.eval_every: None uses `source` with split "test".
    eval_source: Optional[str] = None


@dataclass
class RolloutConfig:
    backend: Literal["vllm", "hf"] = "vllm"
    num_generations: int = 8  # G: samples per prompt
    max_completion_length: int = 128
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1  # -1: off
    seed: int = 0
    # CPU: GiB of KV cache for the colocated engine (vLLM takes 20 GiB unless told); fractions
    # allowed. Needs ~ P*G*(prompt+completion) tokens x 46 KB/token for SmolLM2-135M in fp32.
    kv_cache_gib: float = 1.0
    # GPU: fraction of device memory the colocated engine may take.
    gpu_memory_utilization: float = 0.3
    enforce_eager: bool = True
    # Engine weights dtype; None: model.dtype. bf16 samples ~1.6x faster on AVX512-BF16 CPUs.
    dtype: Optional[Literal["float32", "bfloat16", "float16"]] = None
    # GPU, vLLM: release the engine's weights and KV cache during the update (vLLM sleep mode,
    # level 2) and restore them for the weight push, so the trainer gets that memory.
    sleep: bool = False


@dataclass
class AlgorithmConfig:
    advantage: Literal["grpo", "dr_grpo", "rloo", "reinforce", "softmax"] = "grpo"
    # None: the estimator's own default (grpo: group std; dr_grpo, rloo: none).
    scale: Optional[Literal["group", "batch", "none", "sqrt_g"]] = None
    loss_agg: Literal["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"] = "token_mean"
    eps_low: float = 0.2
    eps_high: float = 0.2  # > eps_low is DAPO's clip-higher
    dual_clip_c: Optional[float] = None
    beta: float = 0.0  # KL coefficient; 0 builds no reference model
    kl_estimator: Literal["k1", "k2", "k3"] = "k3"
    # "loss": beta * KL estimator per token in the loss (GRPO); "reward": beta * sum_t k1 taken
    # off each sequence's reward before the advantages (PPO-RLHF style).
    kl_mode: Literal["loss", "reward"] = "loss"
    kl_target: Optional[float] = None  # set: adaptive beta (PPO-penalty controller) towards it
    ref_reset_every: int = 0  # >0: copy the policy into the reference every N steps
    softmax_beta: float = 1.0  # temperature of the `softmax` estimator
    reinforce_baseline: bool = False  # `reinforce`: subtract the batch-mean reward
    num_iterations: int = 1  # mu: optimisation passes over one rollout batch
    num_mini_batches: int = 1  # optimizer steps per pass (the rollout batch split in this many)
    target_kl: Optional[float] = None  # stop the passes once KL(old||new) exceeds it
    tis_cap: Optional[float] = None  # truncated importance sampling: engine vs trainer log-probs
    entropy_coef: float = 0.0
    # A row with advantage 0 and no KL/entropy term has exactly zero gradient: skip its forward and
    # backward (it still counts in the loss normalisers). False trains it anyway, as TRL does.
    skip_zero_advantage: bool = True
    # DAPO dynamic sampling. "refill": drop groups whose rewards all agree and sample fresh
    # prompts until the batch is full (or max_gen_rounds); "upweight": keep the batch and scale
    # the remaining groups' advantages by 1/(1 - dropped fraction).
    dynamic_sampling: Literal["off", "refill", "upweight"] = "off"
    max_gen_rounds: int = 3
    overlong_filter: bool = False  # DAPO: truncated completions are masked out of the loss
    overlong_penalty: bool = False  # DAPO eq. 13 soft length penalty added to the reward
    overlong_cache_len: int = 32  # L_cache: the penalty ramps over the last L_cache tokens
    overlong_penalty_factor: float = 1.0


@dataclass
class RewardConfig:
    # Each: {name: registered verifier or "module.path:function", weight: float, kwargs: {...},
    # label: optional metric name}. validate() fills weight (1.0) and kwargs ({}) where left out.
    functions: list = field(default_factory=lambda: [
        {"name": "gsm8k", "weight": 1.0, "kwargs": {"mode": "strict"}},
        {"name": "format", "weight": 0.2, "kwargs": {"style": "gsm8k"}},
    ])
    timeout_s: float = 1.0
    max_chars: int = 4000
    num_workers: int = 2
    format_gated: bool = False


@dataclass
class TrainerConfig:
    output_dir: str = "runs/quickstart"
    max_steps: int = 20
    prompts_per_step: int = 8  # P: prompts per optimizer step (over all processes)
    # Sequences per forward/backward. A multiple of G computes each group's prompt once
    # (forward.py): 8 was 10-25% faster than 4 at G=8 but took ~1.2 GiB more peak memory
    # (README "Speed"); 4 keeps the CPU default small.
    micro_batch_size: int = 4
    # Also cap a micro-batch's computed tokens (distinct prompts x prompt length + rows x
    # completion length): bounds activation memory when completion lengths vary.
    micro_batch_tokens: Optional[int] = None
    learning_rate: float = 1e-5
    lr_scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_steps: int = 0
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.99
    max_grad_norm: float = 1.0
    seed: int = 42
    save_every: int = 0  # 0: only at the end
    keep_last: int = 2
    log_samples_every: int = 5
    num_log_samples: int = 2
    torch_threads: int = 0  # 0: every core
    eval_every: int = 0  # >0: greedy pass@1 on held-out problems every N steps (and at the end)
    eval_examples: int = 64
    # Autocast for the policy's forward/backward; master weights and optimizer stay in model.dtype.
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    # Consecutive steps with a non-finite loss or gradient norm (each skipped) before the run stops.
    max_bad_steps: int = 3
    # Consecutive steps in which no reward function gave any sample a finite score (all NaN, inf
    # or None: nothing to learn from) before the run stops.
    max_no_reward_steps: int = 3
    # Stop when the engine's log-probs of its samples differ from the trainer's by more than this
    # k3 KL (nats/token, `mismatch/kl`): weights that did not reach the engine. null: never stop.
    max_mismatch_kl: Optional[float] = 0.1
    # Start fresh in an output_dir that holds another run (its checkpoints and logs are deleted).
    overwrite: bool = False


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    # None: start fresh; "auto": newest checkpoint in output_dir; or a checkpoint path.
    resume: Optional[str] = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# (what is allowed, predicate on the value, the keys it applies to), checked after the types are.
_RANGES = [
    ("an integer >= 1", lambda v: v >= 1,
     "data.max_prompt_length rollout.num_generations rollout.max_completion_length algorithm.num_iterations "
     "algorithm.num_mini_batches algorithm.max_gen_rounds "
     "reward.max_chars reward.num_workers trainer.max_steps trainer.prompts_per_step trainer.micro_batch_size "
     "trainer.eval_examples "
     "trainer.keep_last trainer.max_bad_steps trainer.max_no_reward_steps model.lora.r"),
    ("an integer >= 0", lambda v: v >= 0, "data.seed rollout.seed trainer.warmup_steps trainer.save_every "
     "algorithm.ref_reset_every algorithm.overlong_cache_len "
     "trainer.log_samples_every trainer.num_log_samples trainer.torch_threads trainer.eval_every"),
    ("a float > 0", lambda v: v > 0, "rollout.temperature rollout.kv_cache_gib reward.timeout_s "
     "trainer.learning_rate trainer.max_grad_norm model.lora.alpha"),
    ("a float >= 0", lambda v: v >= 0, "algorithm.eps_high algorithm.beta trainer.weight_decay "
     "algorithm.overlong_penalty_factor"),
    ("null or a float > 0", lambda v: v is None or v > 0, "algorithm.kl_target algorithm.target_kl "
     "trainer.max_mismatch_kl"),
    ("null or a float >= 1", lambda v: v is None or v >= 1, "algorithm.tis_cap"),
    ("a float > 0", lambda v: v > 0, "algorithm.softmax_beta"),
    ("a float in (0, 1]", lambda v: 0 < v <= 1, "rollout.top_p rollout.gpu_memory_utilization"),
    ("a float in [0, 1)", lambda v: 0 <= v < 1, "algorithm.eps_low trainer.adam_beta1 trainer.adam_beta2 model.lora.dropout"),
    ("null or an integer >= 1", lambda v: v is None or v >= 1, "data.num_examples trainer.micro_batch_tokens"),
    ("null or a float > 1", lambda v: v is None or v > 1, "algorithm.dual_clip_c"),
    ("an integer in 1..4", lambda v: 1 <= v <= 4, "data.difficulty"),
    ("-1 (off) or an integer >= 1", lambda v: v == -1 or v >= 1, "rollout.top_k"),
    # numpy's seed (set by accelerate's set_seed) must fit in 32 bits.
    ("an integer in [0, 2**32)", lambda v: 0 <= v < 2**32, "trainer.seed"),
    ("a non-empty str", lambda v: v.strip() != "", "model.name_or_path data.source data.split "
     "data.question_key data.answer_key trainer.output_dir"),
    ("null, 'auto' or a checkpoint path", lambda v: v is None or v.strip() != "", "resume"),
    ("a non-empty list", lambda v: len(v) >= 1, "reward.functions model.lora.target_modules"),
]

_GROUP_ESTIMATORS = ("grpo", "dr_grpo", "rloo", "softmax")
_SCALED_ESTIMATORS = ("grpo", "dr_grpo", "rloo")  # the mean-centred ones; see algo/advantages.py
_REWARD_KEYS = ("name", "weight", "kwargs", "label")
_REWARD_FORM = "{name: <verifier or module.path:function>, weight: <float>, kwargs: {...}, label: <optional str>}"


def validate(cfg: Config) -> Config:
    """Range and cross-field checks; also normalises reward.functions (weight float, kwargs dict)."""
    if not isinstance(cfg.reward.functions, list):
        raise ConfigError(f"reward.functions={_show(cfg.reward.functions)} has the wrong type: expected a list "
                          f"of {_REWARD_FORM}")
    for allowed, ok, keys in _RANGES:
        for key in keys.split():
            if not ok(_get(cfg, key)):
                raise ConfigError(f"{key}={_show(_get(cfg, key))} is out of range: expected {allowed}")
    a, r = cfg.algorithm, cfg.rollout
    if a.advantage in _GROUP_ESTIMATORS and r.num_generations < 2:
        raise ConfigError(
            f"rollout.num_generations={r.num_generations} is too small for algorithm.advantage={a.advantage!r}: "
            f"group estimators need >= 2 samples per prompt (or use algorithm.advantage='reinforce')")
    if a.scale is not None and a.advantage not in _SCALED_ESTIMATORS:
        raise ConfigError(
            f"algorithm.scale={a.scale!r} does not apply to algorithm.advantage={a.advantage!r}: set "
            f"algorithm.scale=null (scale is for {', '.join(_SCALED_ESTIMATORS)})")
    if a.overlong_penalty and a.overlong_cache_len >= r.max_completion_length:
        raise ConfigError(
            f"algorithm.overlong_cache_len={a.overlong_cache_len} must be < rollout.max_completion_length="
            f"{r.max_completion_length}: the penalty ramps over the last overlong_cache_len tokens")
    if a.dynamic_sampling != "off" and r.num_generations < 2:
        raise ConfigError("algorithm.dynamic_sampling needs rollout.num_generations >= 2: it drops groups "
                          "whose rewards all agree")
    if r.sleep and r.backend != "vllm":
        raise ConfigError(f"rollout.sleep=true needs rollout.backend=vllm (got {r.backend!r}): the hf backend "
                          "samples from the policy itself, there is no engine memory to release; "
                          "set rollout.sleep=false")
    cfg.reward.functions = [_reward_spec(i, spec) for i, spec in enumerate(cfg.reward.functions)]
    return cfg


def _reward_spec(i: int, spec: Any) -> dict:
    where = f"reward.functions[{i}]"
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}={_show(spec)} is invalid: expected a mapping {_REWARD_FORM}")
    for key in spec:
        if key not in _REWARD_KEYS:
            raise _unknown_key(f"{where}.", key, _REWARD_KEYS)
    name = spec.get("name")
    if name is None:
        raise ConfigError(f"{where} has no name: add name: <registered verifier such as gsm8k, "
                          "or module.path:function>")
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"{where}.name={_show(name)} is invalid: expected a non-empty str "
                          "(a registered verifier such as gsm8k, or module.path:function)")
    out = {"name": name, "weight": _coerce(f"{where}.weight", spec.get("weight", 1.0), float)}
    kwargs = spec.get("kwargs")
    kwargs = {} if kwargs is None else kwargs
    if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
        raise ConfigError(f"{where}.kwargs={_show(kwargs)} has the wrong type: expected a mapping of "
                          "keyword arguments with str keys, e.g. {mode: strict}")
    out["kwargs"] = kwargs
    label = spec.get("label")
    if label is not None:
        if not isinstance(label, str) or not label.strip():
            raise ConfigError(f"{where}.label={_show(label)} is invalid: expected null or a non-empty str")
        out["label"] = label
    return out


# Loading lives in config_loader.py (imported last: it needs the classes above).
from grpo_trainer.config_loader import (  # noqa: E402
    DEFAULT_DIFF_IGNORE,
    _coerce,
    _get,
    _show,
    _unknown_key,
    config_diff,
    load_config,
    parse_override,
    save_config,
)

__all__ = ["Config", "ConfigError", "DEFAULT_DIFF_IGNORE", "config_diff", "load_config", "parse_override",
           "save_config", "validate"]
