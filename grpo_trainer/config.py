"""Typed run configuration: dataclasses loaded from a YAML recipe plus dotted overrides.

    cfg = load_config("recipes/quickstart.yaml", ["trainer.max_steps=3", "resume=auto"])

Every mistake is reported as one `ConfigError` line that names the key and what is allowed:
unknown keys list the valid ones (with the closest match first), wrong types name the expected
type, out-of-range values name the range.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import yaml


class ConfigError(ValueError):
    """A bad recipe or override; the message is one line naming the key and the fix."""


@dataclass
class ModelConfig:
    # An alias ("smollm2-135m-instruct"), a local HF directory, or a hub id.
    name_or_path: str = "smollm2-135m-instruct"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    trust_remote_code: bool = False
    gradient_checkpointing: bool = False


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


@dataclass
class RolloutConfig:
    backend: Literal["vllm", "hf"] = "vllm"
    num_generations: int = 8  # G: samples per prompt
    max_completion_length: int = 128
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1  # -1: off
    seed: int = 0
    # CPU: GiB of KV cache for the colocated engine (vLLM takes 20 GiB unless told).
    kv_cache_gib: float = 2.0
    # GPU: fraction of device memory the colocated engine may take.
    gpu_memory_utilization: float = 0.3
    enforce_eager: bool = True


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
    num_iterations: int = 1  # mu: optimisation passes over one rollout batch
    entropy_coef: float = 0.0


@dataclass
class RewardConfig:
    # Each: {name: registered verifier or "module.path:function", weight: float, kwargs: {...}}
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
    micro_batch_size: int = 8  # sequences per forward/backward
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


# (key, predicate, what is allowed) checked after loading; the key names the field.
_RANGES = [
    ("rollout.num_generations", lambda c: c.rollout.num_generations >= 1, "an integer >= 1"),
    ("rollout.max_completion_length", lambda c: c.rollout.max_completion_length >= 1, "an integer >= 1"),
    ("rollout.temperature", lambda c: c.rollout.temperature > 0, "a float > 0"),
    ("rollout.top_p", lambda c: 0 < c.rollout.top_p <= 1, "a float in (0, 1]"),
    ("rollout.kv_cache_gib", lambda c: c.rollout.kv_cache_gib > 0, "a float > 0"),
    ("algorithm.eps_low", lambda c: 0 <= c.algorithm.eps_low < 1, "a float in [0, 1)"),
    ("algorithm.eps_high", lambda c: c.algorithm.eps_high >= 0, "a float >= 0"),
    ("algorithm.dual_clip_c", lambda c: c.algorithm.dual_clip_c is None or c.algorithm.dual_clip_c > 1,
     "null or a float > 1"),
    ("algorithm.beta", lambda c: c.algorithm.beta >= 0, "a float >= 0"),
    ("algorithm.num_iterations", lambda c: c.algorithm.num_iterations >= 1, "an integer >= 1"),
    ("data.difficulty", lambda c: 1 <= c.data.difficulty <= 4, "an integer in 1..4"),
    ("data.max_prompt_length", lambda c: c.data.max_prompt_length >= 1, "an integer >= 1"),
    ("data.num_examples", lambda c: c.data.num_examples is None or c.data.num_examples >= 1,
     "null or an integer >= 1"),
    ("reward.functions", lambda c: len(c.reward.functions) >= 1, "a non-empty list"),
    ("reward.timeout_s", lambda c: c.reward.timeout_s > 0, "a float > 0"),
    ("trainer.max_steps", lambda c: c.trainer.max_steps >= 1, "an integer >= 1"),
    ("trainer.prompts_per_step", lambda c: c.trainer.prompts_per_step >= 1, "an integer >= 1"),
    ("trainer.micro_batch_size", lambda c: c.trainer.micro_batch_size >= 1, "an integer >= 1"),
    ("trainer.learning_rate", lambda c: c.trainer.learning_rate > 0, "a float > 0"),
    ("trainer.keep_last", lambda c: c.trainer.keep_last >= 1, "an integer >= 1"),
    ("trainer.save_every", lambda c: c.trainer.save_every >= 0, "an integer >= 0"),
]

_GROUP_ESTIMATORS = ("grpo", "dr_grpo", "rloo", "softmax")


def validate(cfg: Config) -> Config:
    for key, ok, allowed in _RANGES:
        if not ok(cfg):
            raise ConfigError(f"{key}={_get(cfg, key)!r} is out of range: expected {allowed}")
    if cfg.algorithm.advantage in _GROUP_ESTIMATORS and cfg.rollout.num_generations < 2:
        raise ConfigError(
            f"rollout.num_generations={cfg.rollout.num_generations} is too small for "
            f"algorithm.advantage={cfg.algorithm.advantage!r}: group estimators need >= 2 samples per prompt")
    for i, spec in enumerate(cfg.reward.functions):
        if not isinstance(spec, dict) or "name" not in spec:
            raise ConfigError(f"reward.functions[{i}]={spec!r} is invalid: expected "
                              "{name: <verifier or module:function>, weight: <float>, kwargs: {...}}")
        extra = set(spec) - {"name", "weight", "kwargs"}
        if extra:
            raise ConfigError(f"reward.functions[{i}] has unknown key(s) {sorted(extra)}: "
                              "valid keys are name, weight, kwargs")
    return cfg


def _get(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _type_name(a) for a in typing.get_args(tp))
    return getattr(tp, "__name__", str(tp))


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Check `value` against the annotation `tp`; ints are accepted where floats are expected."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
    elif origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(key, value, arg)
            except ConfigError:
                pass
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp in (bool, str, list, dict):
        if isinstance(value, tp):
            return value
    else:
        raise TypeError(f"unsupported annotation {tp!r} for {key}")
    raise ConfigError(f"{key}={value!r} has the wrong type: expected {_type_name(tp)}")


def _build(cls: type, data: Any, prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'recipe'} must be a mapping of keys, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean {prefix}{close[0]}?)" if close else ""
            raise ConfigError(f"unknown key {dotted!r}{hint}; valid keys: {', '.join(prefix + n for n in names)}")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = _build(tp, value if value is not None else {}, dotted + ".")
        else:
            kwargs[key] = _coerce(dotted, value, tp)
    return cls(**kwargs)


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {dotted!r}: {part!r} is not a section")
        node = child
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """`trainer.max_steps=3` -> ("trainer.max_steps", 3); the value is read as a YAML scalar."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key.path=value (e.g. trainer.max_steps=3)")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def load_config(recipe: str | Path | None, overrides: list[str] | None = None) -> Config:
    tree: dict = {}
    if recipe is not None:
        path = Path(recipe)
        if not path.is_file():
            raise ConfigError(f"recipe {str(path)!r} not found: pass an existing YAML file (see recipes/)")
        try:
            tree = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            raise ConfigError(f"recipe {str(path)!r} is not valid YAML{where}: "
                              f"{getattr(exc, 'problem', exc)}") from None
        if not isinstance(tree, dict):
            raise ConfigError(f"recipe {str(path)!r} must be a mapping of sections (model:, data:, ...)")
    for text in overrides or []:
        _set_dotted(tree, *parse_override(text))
    return validate(_build(Config, tree, ""))


def save_config(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
