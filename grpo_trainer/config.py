"""Typed run configuration: dataclasses loaded from a YAML recipe plus dotted overrides.

    cfg = load_config("recipes/quickstart.yaml", ["trainer.max_steps=3", "resume=auto"])

Every mistake is reported as one `ConfigError` line that names the key and what is allowed:
unknown keys suggest the closest valid one and list the valid ones, wrong types name the expected
type, out-of-range values name the range. Overrides are merged into the recipe key by key; their
values are YAML (`3` -> int, `null` -> None, `[{name: gsm8k}]` -> list). Float fields also take
numeric strings such as "1e-5", which YAML 1.1 (PyYAML) reads as a string for want of a dot.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Literal, Optional

import yaml


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
    # CPU: GiB of KV cache for the colocated engine (vLLM takes 20 GiB unless told).
    kv_cache_gib: float = 2.0
    # GPU: fraction of device memory the colocated engine may take.
    gpu_memory_utilization: float = 0.3
    enforce_eager: bool = True
    # Engine weights dtype; None: model.dtype. bf16 samples ~1.6x faster on AVX512-BF16 CPUs.
    dtype: Optional[Literal["float32", "bfloat16", "float16"]] = None


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
    eval_every: int = 0  # >0: greedy pass@1 on held-out problems every N steps (and at the end)
    eval_examples: int = 64
    # Autocast for the policy's forward/backward; master weights and optimizer stay in model.dtype.
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    # Consecutive steps with a non-finite loss or gradient norm (each skipped) before the run stops.
    max_bad_steps: int = 3
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
     "trainer.keep_last trainer.max_bad_steps model.lora.r"),
    ("an integer >= 0", lambda v: v >= 0, "data.seed rollout.seed trainer.warmup_steps trainer.save_every "
     "algorithm.ref_reset_every algorithm.overlong_cache_len "
     "trainer.log_samples_every trainer.num_log_samples trainer.torch_threads trainer.eval_every"),
    ("a float > 0", lambda v: v > 0, "rollout.temperature rollout.kv_cache_gib reward.timeout_s "
     "trainer.learning_rate trainer.max_grad_norm model.lora.alpha"),
    ("a float >= 0", lambda v: v >= 0, "algorithm.eps_high algorithm.beta trainer.weight_decay "
     "algorithm.overlong_penalty_factor"),
    ("null or a float > 0", lambda v: v is None or v > 0, "algorithm.kl_target algorithm.target_kl"),
    ("null or a float >= 1", lambda v: v is None or v >= 1, "algorithm.tis_cap"),
    ("a float > 0", lambda v: v > 0, "algorithm.softmax_beta"),
    ("a float in (0, 1]", lambda v: 0 < v <= 1, "rollout.top_p rollout.gpu_memory_utilization"),
    ("a float in [0, 1)", lambda v: 0 <= v < 1, "algorithm.eps_low trainer.adam_beta1 trainer.adam_beta2 model.lora.dropout"),
    ("null or an integer >= 1", lambda v: v is None or v >= 1, "data.num_examples"),
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


def _get(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def _show(value: Any, limit: int = 80) -> str:
    text = repr(value)  # repr escapes newlines, so the message stays on one line
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _sections() -> dict[str, list[str]]:
    hints = typing.get_type_hints(Config)
    return {f.name: [g.name for g in dataclasses.fields(hints[f.name])]
            for f in dataclasses.fields(Config) if dataclasses.is_dataclass(hints[f.name])}


def _unknown_key(prefix: str, key: Any, names: Iterable[str]) -> ConfigError:
    """prefix: "" (top level), "trainer." or "reward.functions[0]."."""
    names = list(names)
    close = difflib.get_close_matches(str(key).lower(), names, n=1)
    guesses = [prefix + close[0]] if close else [  # else the right key in the wrong place: `trainer.beta`
        f"{s}.{key}" for s, keys in _sections().items() if key in keys and f"{s}." != prefix]
    hint = f" (did you mean {' or '.join(repr(g) for g in guesses)}?)" if guesses else ""
    where = f"in {prefix[:-1]}" if prefix else "at the top level"
    return ConfigError(f"unknown key {prefix + str(key)!r}{hint}; valid keys {where}: {', '.join(names)}")


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _type_name(a) for a in typing.get_args(tp))
    return getattr(tp, "__name__", str(tp))


# A decimal number as YAML 1.2 would read it; "1e-5" included, "nan", "inf" and "1_000" not.
_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")


def _coerce(key: str, value: Any, tp: Any, allowed: str | None = None) -> Any:
    """Check `value` against the annotation `tp`. Ints are accepted where floats are expected, and
    so are numeric strings, because PyYAML reads `1e-5` (no dot) as a string."""
    allowed = allowed or _type_name(tp)
    origin = typing.get_origin(tp)
    if origin is Literal:
        choices = typing.get_args(tp)
        if isinstance(value, str) and value in choices:
            return value
        if value is False and "no" in choices:  # YAML 1.1 reads a bare `no` as false
            return "no"
        close = difflib.get_close_matches(value, choices, n=1) if isinstance(value, str) else []
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"{key}={_show(value)} is not allowed: expected {allowed}{hint}")
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None and len(args) < len(typing.get_args(tp)):
            return None
        if len(args) == 1:  # Optional[X]: X's own message, naming null as allowed too
            return _coerce(key, value, args[0], allowed)
        for arg in args:
            try:
                return _coerce(key, value, arg)
            except ConfigError:
                pass
    elif tp is float:
        if isinstance(value, (int, float, str)) and not isinstance(value, bool) and (
                not isinstance(value, str) or _NUMBER.fullmatch(value.strip())):
            try:
                number = float(value)
            except OverflowError:  # an int beyond float's range
                number = math.inf
            if not math.isfinite(number):
                raise ConfigError(f"{key}={_show(value)} is out of range: expected a finite number")
            return number
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp in (bool, str, list, dict):
        if isinstance(value, tp):
            return value
    else:
        raise TypeError(f"unsupported annotation {tp!r} for {key}")
    got = "null" if value is None else type(value).__name__
    raise ConfigError(f"{key}={_show(value)} has the wrong type: expected {allowed} (got {got})")


def _section_error(dotted: str, value: Any, cls: type) -> ConfigError:
    names = [f.name for f in dataclasses.fields(cls)]
    return ConfigError(f"{dotted}={_show(value)} is not a section: write it as a mapping of keys "
                       f"(e.g. {dotted}: {{{names[0]}: ...}}); valid keys in {dotted}: {', '.join(names)}")


def _build(cls: type, data: Any, prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if key not in names:
            raise _unknown_key(prefix, key, names)
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            if value is not None and not isinstance(value, dict):
                raise _section_error(dotted, value, tp)
            kwargs[key] = _build(tp, value or {}, dotted + ".")
        else:
            kwargs[key] = _coerce(dotted, value, tp)
    return cls(**kwargs)


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys: PyYAML would silently keep the last one."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                key = self.construct_object(key_node)
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r}: keep one of them", key_node.start_mark)
                seen.add(key)
        return super().construct_mapping(node, deep)


def _yaml_problem(exc: yaml.YAMLError) -> tuple[Any, str]:
    mark, problem = getattr(exc, "problem_mark", None), str(getattr(exc, "problem", None) or exc)
    ctx, ctx_mark = getattr(exc, "context", None), getattr(exc, "context_mark", None)
    if ctx and ctx_mark and mark and ctx_mark.line != mark.line:  # e.g. where an unclosed "[" opened
        problem += f" ({ctx} started at line {ctx_mark.line + 1}, column {ctx_mark.column + 1})"
    return mark or ctx_mark, problem


def _split_override(text: str) -> tuple[str, str]:
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key.path=value (e.g. trainer.max_steps=3)")
    key, raw = text.split("=", 1)
    parts = [p.strip() for p in key.split(".")]
    if "" in parts:
        raise ConfigError(f"override {text!r} has an empty key: write section.key=value (e.g. trainer.max_steps=3)")
    return ".".join(parts), raw


def _yaml_value(raw: str) -> Any:
    return yaml.load(raw, Loader=_Loader) if raw.strip() else ""


def parse_override(text: str) -> tuple[str, Any]:
    """`trainer.max_steps=3` -> ("trainer.max_steps", 3): the value read as YAML (flow style for
    lists and mappings), or the raw text where it is not valid YAML."""
    key, raw = _split_override(text)
    try:
        return key, _yaml_value(raw)
    except yaml.YAMLError:
        return key, raw


def _accepts_str(tp: Any) -> bool:
    return tp is str or (typing.get_origin(tp) in (typing.Union, types.UnionType) and str in typing.get_args(tp))


def _merge(dst: dict, src: dict) -> None:
    for key, value in src.items():
        if isinstance(value, dict) and isinstance(dst.get(key), dict):
            _merge(dst[key], value)
        else:
            dst[key] = value


def _apply_override(tree: dict, text: str) -> None:
    """Set one dotted override in the raw recipe tree, following the dataclass schema so a wrong
    path is reported against the override rather than as a type error later."""
    key, raw = _split_override(text)
    parts = key.split(".")
    cls, node, prefix = Config, tree, ""
    for i, part in enumerate(parts):
        hints = typing.get_type_hints(cls)
        if part not in hints:
            raise _unknown_key(prefix, part, [f.name for f in dataclasses.fields(cls)])
        tp, dotted = hints[part], prefix + part
        if i == len(parts) - 1:
            break
        if not dataclasses.is_dataclass(tp):
            raise ConfigError(f"override {text!r}: {dotted} is a setting ({_type_name(tp)}), not a section; "
                              f"write {dotted}=VALUE")
        if node.get(part) is None:
            node[part] = {}
        elif not isinstance(node[part], dict):  # the recipe's own mistake, reported as such
            raise _section_error(dotted, node[part], tp)
        cls, node, prefix = tp, node[part], dotted + "."
    try:
        value = _yaml_value(raw)
    except yaml.YAMLError as exc:
        if not _accepts_str(tp):
            mark, problem = _yaml_problem(exc)
            where = f" at column {mark.column + 1}" if mark else ""
            raise ConfigError(f"override {text!r}: its value is not valid YAML{where} ({problem}); "
                              "write lists as [a, b] and mappings as {k: v}") from None
        value = raw
    if _accepts_str(tp) and value is not None and not isinstance(value, str):
        value = raw.strip()  # `data.instruction=Answer: 42` is text, not the mapping YAML reads
    if dataclasses.is_dataclass(tp) and isinstance(value, dict) and isinstance(node.get(part), dict):
        _merge(node[part], value)  # `trainer={max_steps: 3}` updates the section, keeping the rest
    else:
        node[part] = value


def load_config(recipe: str | Path | None, overrides: list[str] | None = None) -> Config:
    """Defaults <- recipe (None: none) <- overrides, then type and range checks."""
    tree: Any = {}
    if recipe is not None:
        path = Path(recipe)
        if not path.is_file():
            raise ConfigError(f"recipe {str(path)!r} not found: pass an existing YAML file (see recipes/)")
        try:
            tree = yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader)
        except yaml.YAMLError as exc:
            mark, problem = _yaml_problem(exc)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            raise ConfigError(f"recipe {str(path)!r} is not valid YAML{where}: {problem}") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"recipe {str(path)!r} cannot be read ({exc}): pass a UTF-8 YAML file") from None
        if tree is None:
            tree = {}
        if not isinstance(tree, dict):
            raise ConfigError(f"recipe {str(path)!r} must be a mapping of sections (model:, data:, ...), "
                              f"got {_show(tree)}")
    for text in overrides or []:
        _apply_override(tree, text)
    return validate(_build(Config, tree, ""))


def save_config(cfg: Config, path: str | Path) -> None:
    """Writes YAML that load_config reads back into an equal Config."""
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False, allow_unicode=True), encoding="utf-8")


DEFAULT_DIFF_IGNORE = ("resume", "trainer.max_steps", "trainer.overwrite")


def config_diff(a: Config, b: Config, ignore: Iterable[str] = DEFAULT_DIFF_IGNORE) -> list[str]:
    """Dotted keys whose values differ, in field order, e.g. ["algorithm.beta",
    "reward.functions[1].weight"]; a list of another length is one key. `ignore` drops a key and
    everything under it; by default what may change on resume (resume, trainer.max_steps,
    trainer.overwrite)."""
    ignore = tuple(ignore)
    out: list[str] = []
    _diff(a.to_dict(), b.to_dict(), "", out)
    return [k for k in out if not any(k == p or k.startswith((p + ".", p + "[")) for p in ignore)]


def _diff(a: Any, b: Any, key: str, out: list[str]) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in list(a) + [k for k in b if k not in a]:
            child = f"{key}.{k}" if key else str(k)
            if k in a and k in b:
                _diff(a[k], b[k], child, out)
            else:
                out.append(child)
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            _diff(x, y, f"{key}[{i}]", out)
    elif a != b or type(a) is not type(b):
        out.append(key)
