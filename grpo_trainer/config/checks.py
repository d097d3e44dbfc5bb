"""Checking values against the schema: a YAML value against a field's annotation (`coerce`), and
a whole Config against ranges, algorithm names and cross-field rules (`validate`). Every problem
is one `ConfigError` line naming the key and what is allowed.

Float fields also take numeric strings such as "1e-5", which YAML 1.1 (PyYAML) reads as a string
for want of a dot; int fields take whole numbers in any notation (`1e3`, `1.5e3`), and refuse
fractions. Algorithm names (estimators, losses, scales, ...) are read from grpo_trainer.algo, where
each is registered once.
"""

from __future__ import annotations

import dataclasses
import decimal
import difflib
import math
import re
import types
import typing
from typing import Any, Iterable, Literal

from grpo_trainer.config.schema import Config, ConfigError


def dotted_get(obj: Any, dotted: str) -> Any:
    """dotted_get(cfg, "trainer.max_steps") -> cfg.trainer.max_steps."""
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def show(value: Any, limit: int = 80) -> str:
    """A value as an error message quotes it: its repr, cut to `limit` characters."""
    text = repr(value)  # repr escapes newlines, so the message stays on one line
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _sections() -> dict[str, list[str]]:
    hints = typing.get_type_hints(Config)
    return {f.name: [g.name for g in dataclasses.fields(hints[f.name])]
            for f in dataclasses.fields(Config) if dataclasses.is_dataclass(hints[f.name])}


def unknown_key(prefix: str, key: Any, names: Iterable[str]) -> ConfigError:
    """prefix: "" (top level), "trainer." or "reward.functions[0]."."""
    names = list(names)
    close = difflib.get_close_matches(str(key).lower(), names, n=1)
    guesses = [prefix + close[0]] if close else [  # else the right key in the wrong place: `trainer.beta`
        f"{s}.{key}" for s, keys in _sections().items() if key in keys and f"{s}." != prefix]
    hint = f" (did you mean {' or '.join(repr(g) for g in guesses)}?)" if guesses else ""
    where = f"in {prefix[:-1]}" if prefix else "at the top level"
    return ConfigError(f"unknown key {prefix + str(key)!r}{hint}; valid keys {where}: {', '.join(names)}")


def type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else type_name(a) for a in typing.get_args(tp))
    return getattr(tp, "__name__", str(tp))


# A decimal number as YAML 1.2 would read it; "1e-5" included, "nan", "inf" and "1_000" not.
_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")


def _whole_number(key: str, value: Any, allowed: str) -> int | None:
    """1e3 (a str to PyYAML), 1.5e3 or 1000.0 as the int they denote; None if not a number at
    all. Decimal, not float, so that a long integer written with an exponent is not rounded."""
    if isinstance(value, float):
        number = decimal.Decimal(value) if math.isfinite(value) else None
    elif isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
        number = decimal.Decimal(value.strip())
    else:
        return None
    if number is not None and number.adjusted() > 30:  # 1e999999 would build a million-digit int
        raise ConfigError(f"{key}={show(value)} is out of range: expected {allowed} below 1e30")
    if number is None or number != number.to_integral_value():
        raise ConfigError(f"{key}={show(value)} is not a whole number: expected {allowed} (e.g. 1000 or 1e3)")
    return int(number)


def coerce(key: str, value: Any, tp: Any, allowed: str | None = None) -> Any:
    """Check `value` against the annotation `tp`. Ints are accepted where floats are expected, and
    so are numeric strings, because PyYAML reads `1e-5` (no dot) as a string; int fields take
    numbers in any notation that denote a whole number (`1e3`, `1.5e3`)."""
    allowed = allowed or type_name(tp)
    origin = typing.get_origin(tp)
    if origin is Literal:
        choices = typing.get_args(tp)
        if isinstance(value, str) and value in choices:
            return value
        if value is False and "no" in choices:  # YAML 1.1 reads a bare `no` as false
            return "no"
        raise _choice_error(key, value, choices, allowed)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None and len(args) < len(typing.get_args(tp)):
            return None
        if len(args) == 1:  # Optional[X]: X's own message, naming null as allowed too
            return coerce(key, value, args[0], allowed)
        for arg in args:
            try:
                return coerce(key, value, arg)
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
                raise ConfigError(f"{key}={show(value)} is out of range: expected a finite number")
            return number
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        whole = _whole_number(key, value, allowed)
        if whole is not None:
            return whole
    elif tp in (bool, str, list, dict):
        if isinstance(value, tp):
            return value
    else:
        raise TypeError(f"unsupported annotation {tp!r} for {key}")
    got = "null" if value is None else type(value).__name__
    raise ConfigError(f"{key}={show(value)} has the wrong type: expected {allowed} (got {got})")


def _choice_error(key: str, value: Any, choices: Iterable[str], allowed: str) -> ConfigError:
    close = difflib.get_close_matches(value, list(choices), n=1) if isinstance(value, str) else []
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ConfigError(f"{key}={show(value)} is not allowed: expected {allowed}{hint}")


def _algo() -> Any:
    # Imported when a config is checked, not when this module is: algo/ imports torch (~3 s), and
    # most commands import the config package first.
    import grpo_trainer.algo as algo

    return algo


def _check_names(obj: Any, prefix: str = "") -> None:
    """Fields declared with schema.algo_names: the value must be a name in that algo/ table."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            _check_names(value, f"{prefix}{f.name}.")
        elif "choices" in f.metadata and value is not None:
            names = list(getattr(_algo(), f.metadata["choices"]))
            if value not in names:
                optional = f.default is None
                allowed = "one of " + ", ".join(repr(n) for n in names) + (" or null" if optional else "")
                raise _choice_error(f"{prefix}{f.name}", value, names, allowed)


# (what is allowed, predicate on the value, the keys it applies to), checked after the types are.
_RANGES = [
    ("an integer >= 1", lambda v: v >= 1,
     "data.max_prompt_length rollout.num_generations rollout.max_completion_length algorithm.num_iterations "
     "algorithm.num_mini_batches algorithm.max_gen_rounds "
     "reward.max_chars reward.num_workers trainer.max_steps trainer.prompts_per_step trainer.micro_batch_size "
     "trainer.eval_examples "
     "trainer.keep_last trainer.max_bad_steps trainer.max_no_reward_steps model.lora.r data.filter_cooldown "
     "critic.micro_batch_size "
     "rollout.max_turns rollout.max_tool_output_tokens rollout.sandbox.memory_mb rollout.sandbox.output_chars "
     "rollout.sandbox.num_workers"),
    ("an integer >= 0", lambda v: v >= 0, "data.seed rollout.seed trainer.warmup_steps trainer.save_every "
     "algorithm.ref_reset_every algorithm.overlong_cache_len "
     "trainer.log_samples_every trainer.num_log_samples trainer.torch_threads trainer.eval_every trainer.eval_samples "
     "trainer.critic_warmup critic.warmup_steps"),
    ("a float > 0", lambda v: v > 0, "rollout.temperature reward.timeout_s "
     "rollout.sandbox.cpu_s rollout.sandbox.wall_s "
     "trainer.learning_rate trainer.max_grad_norm model.lora.alpha critic.learning_rate critic.max_grad_norm"),
    ("'auto' or a float > 0", lambda v: v == "auto" or v > 0, "rollout.kv_cache_gib"),
    ("a float in (0, 1]", lambda v: 0 < v <= 1, "algorithm.gamma"),
    ("a float in [0, 1]", lambda v: 0 <= v <= 1, "algorithm.lam"),
    ("null or a float > 0", lambda v: v is None or v > 0, "algorithm.value_clip"),
    ("a float >= 0", lambda v: v >= 0, "critic.weight_decay model.attention_gib"),
    ("a float >= 0", lambda v: v >= 0, "algorithm.eps_high algorithm.beta trainer.weight_decay "
     "algorithm.overlong_penalty_factor algorithm.gspo_eps_high algorithm.cispo_eps_high"),
    ("null or a float > 0", lambda v: v is None or v > 0, "algorithm.kl_target algorithm.target_kl "
     "trainer.max_mismatch_kl"),
    ("null or a float >= 1", lambda v: v is None or v >= 1, "algorithm.tis_cap"),
    ("null or a float in [0, 1)", lambda v: v is None or 0 <= v < 1, "algorithm.cispo_eps_low"),
    ("a float in [0, 1]", lambda v: 0 <= v <= 1, "algorithm.rollout_correction.lower"),
    ("a float >= 1", lambda v: v >= 1, "algorithm.rollout_correction.upper"),
    ("a float > 0", lambda v: v > 0, "algorithm.softmax_beta"),
    ("a float in (0, 1]", lambda v: 0 < v <= 1, "algorithm.clip_cov_ratio algorithm.kl_cov_ratio"),
    ("a float >= 0", lambda v: v >= 0, "algorithm.kl_cov_coef"),
    ("a float in (0, 1]", lambda v: 0 < v <= 1, "rollout.top_p rollout.gpu_memory_utilization"),
    ("a float in [0, 1)", lambda v: 0 <= v < 1, "algorithm.eps_low algorithm.gspo_eps_low trainer.adam_beta1 "
     "trainer.adam_beta2 model.lora.dropout"),
    ("null or an integer >= 1", lambda v: v is None or v >= 1, "data.num_examples trainer.micro_batch_tokens "
     "critic.micro_batch_tokens"),
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

REPORTERS = ("tensorboard", "wandb")  # trainer.report_to: grpo_trainer/live.py writes each
_REWARD_KEYS = ("name", "weight", "kwargs", "label")
_REWARD_FORM = "{name: <verifier or module.path:function>, weight: <float>, kwargs: {...}, label: <optional str>}"


def validate(cfg: Config) -> Config:
    """Range and cross-field checks; also normalises reward.functions (weight float, kwargs dict)."""
    if not isinstance(cfg.reward.functions, list):
        raise ConfigError(f"reward.functions={show(cfg.reward.functions)} has the wrong type: expected a list "
                          f"of {_REWARD_FORM}")
    for allowed, ok, keys in _RANGES:
        for key in keys.split():
            if not ok(dotted_get(cfg, key)):
                raise ConfigError(f"{key}={show(dotted_get(cfg, key))} is out of range: expected {allowed}")
    a, r = cfg.algorithm, cfg.rollout
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
    if a.tis_cap is not None:  # the old key: the token/truncate preset of rollout_correction
        if a.rollout_correction.level is not None:
            raise ConfigError(f"algorithm.tis_cap={a.tis_cap:g} is the old spelling of algorithm.rollout_correction="
                              f"{{level: token, mode: truncate, upper: {a.tis_cap:g}}}: set only rollout_correction")
        a.rollout_correction = dataclasses.replace(a.rollout_correction, level="token", mode="truncate",
                                                   upper=a.tis_cap)
        a.tis_cap = None
    if a.clip_cov_low >= a.clip_cov_high:
        raise ConfigError(f"algorithm.clip_cov_low={a.clip_cov_low} must be < algorithm.clip_cov_high="
                          f"{a.clip_cov_high}: Clip-Cov draws from the tokens with low < cov < high")
    _check_pass_rate_filter(cfg.data.pass_rate_filter)
    _check_tools(r)
    unknown = [x for x in cfg.trainer.report_to if x not in REPORTERS]
    if unknown:
        raise ConfigError(f"trainer.report_to={show(cfg.trainer.report_to)} names {show(unknown[0])}: expected "
                          f"a list of {', '.join(map(repr, REPORTERS))} (or [] for neither)")
    cfg.reward.functions = [_reward_spec(i, spec) for i, spec in enumerate(cfg.reward.functions)]
    _check_algorithm(cfg)  # last: the other mistakes are told without waiting for torch
    return cfg


def _check_algorithm(cfg: Config) -> None:
    """Names against algo/'s registries and tables, then what the chosen estimator needs."""
    _check_names(cfg)
    a, r = cfg.algorithm, cfg.rollout
    estimators = _algo().ADVANTAGES
    if estimators[a.advantage].grouped and r.num_generations < 2:
        raise ConfigError(
            f"rollout.num_generations={r.num_generations} is too small for algorithm.advantage={a.advantage!r}: "
            f"group estimators need >= 2 samples per prompt (or use algorithm.advantage='reinforce')")
    critic = estimators[a.advantage].critic
    if critic and not cfg.critic.enabled:
        raise ConfigError(f"algorithm.advantage={a.advantage!r} learns a value function: set critic.enabled=true "
                          "(and critic.learning_rate, ...), or choose a critic-free estimator such as grpo")
    if cfg.critic.enabled and not critic:
        critics = [name for name, e in estimators.items() if e.critic]
        raise ConfigError(f"critic.enabled=true but algorithm.advantage={a.advantage!r} does not use a critic: "
                          f"set algorithm.advantage to {' or '.join(map(repr, critics))}, or critic.enabled=false")
    if cfg.trainer.critic_warmup and not cfg.critic.enabled:
        raise ConfigError(f"trainer.critic_warmup={cfg.trainer.critic_warmup} needs a critic: set "
                          "algorithm.advantage=gae and critic.enabled=true, or trainer.critic_warmup=0")
    if a.scale is not None and estimators[a.advantage].scale is None:
        scaled = [name for name, e in estimators.items() if e.scale is not None]  # the mean-centred ones
        raise ConfigError(
            f"algorithm.scale={a.scale!r} does not apply to algorithm.advantage={a.advantage!r}: set "
            f"algorithm.scale=null (scale is for {', '.join(scaled)})")


def _check_tools(r) -> None:
    tools = r.tools
    if not isinstance(tools, list) or not all(isinstance(t, str) and t.strip() for t in tools):
        raise ConfigError(f"rollout.tools={show(tools)} is invalid: expected a list of tool names, e.g. [python] "
                          "([] for single-turn sampling)")
    if len(set(tools)) != len(tools):
        raise ConfigError(f"rollout.tools={show(tools)} names a tool twice: list each once")
    for name in tools:
        if ":" not in name:  # a module:function tool is imported (and checked) when the ToolSet is built
            from grpo_trainer.tools import ToolError, resolve_tool

            try:
                resolve_tool(name)
            except ToolError as e:
                raise ConfigError(f"rollout.tools: {e}") from None
    if tools and r.tool_format == "python_block" and "python" not in tools:
        raise ConfigError(f"rollout.tool_format=python_block runs the python tool, which rollout.tools={show(tools)} "
                          "lacks: add python to rollout.tools or set rollout.tool_format=tool_call")


def _check_pass_rate_filter(band: Any) -> None:
    if band is None:
        return
    ok = (isinstance(band, list) and len(band) == 2
          and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in band))
    if not ok or not 0 <= band[0] <= band[1] <= 1:
        raise ConfigError(f"data.pass_rate_filter={show(band)} is invalid: expected null (off) or [low, high] "
                          "with 0 <= low <= high <= 1, e.g. [0.1, 0.9] (prompts passed outside it are skipped)")


def _reward_spec(i: int, spec: Any) -> dict:
    where = f"reward.functions[{i}]"
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}={show(spec)} is invalid: expected a mapping {_REWARD_FORM}")
    for key in spec:
        if key not in _REWARD_KEYS:
            raise unknown_key(f"{where}.", key, _REWARD_KEYS)
    name = spec.get("name")
    if name is None:
        raise ConfigError(f"{where} has no name: add name: <registered verifier such as gsm8k, "
                          "or module.path:function>")
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"{where}.name={show(name)} is invalid: expected a non-empty str "
                          "(a registered verifier such as gsm8k, or module.path:function)")
    out = {"name": name, "weight": coerce(f"{where}.weight", spec.get("weight", 1.0), float)}
    kwargs = spec.get("kwargs")
    kwargs = {} if kwargs is None else kwargs
    if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
        raise ConfigError(f"{where}.kwargs={show(kwargs)} has the wrong type: expected a mapping of "
                          "keyword arguments with str keys, e.g. {mode: strict}")
    out["kwargs"] = kwargs
    label = spec.get("label")
    if label is not None:
        if not isinstance(label, str) or not label.strip():
            raise ConfigError(f"{where}.label={show(label)} is invalid: expected null or a non-empty str")
        out["label"] = label
    return out
