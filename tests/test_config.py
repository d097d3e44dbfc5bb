"""Config loading: recipes + dotted overrides -> typed Config, and one-line errors naming the key.

Every error test checks the whole message (or a regex naming the key): the message is the
user's only guide to fixing a recipe, so its wording is part of the contract."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest

from grpo_trainer.config import (
    AlgorithmConfig,
    Config,
    ConfigError,
    config_diff,
    load_config,
    parse_override,
    save_config,
    validate,
)

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "recipes" / "quickstart.yaml"
TRAINER_KEYS = ("output_dir, max_steps, prompts_per_step, micro_batch_size, micro_batch_tokens, learning_rate, lr_scheduler, "
                "warmup_steps, weight_decay, adam_beta1, adam_beta2, max_grad_norm, seed, save_every, keep_last, "
                "log_samples_every, num_log_samples, report_to, torch_threads, eval_every, eval_examples, eval_samples, mixed_precision, max_bad_steps, max_no_reward_steps, max_mismatch_kl, overwrite, critic_warmup")
TOP_KEYS = "model, data, rollout, algorithm, reward, trainer, critic, resume"


def recipe(tmp_path: Path, text: str, name: str = "r.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def error(recipe_path, overrides=()) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(recipe_path, list(overrides))
    msg = str(info.value)
    assert "\n" not in msg, msg
    return msg


# ---------------------------------------------------------------------------------------------
# Loading and overrides


def test_defaults_without_recipe_equal_the_dataclass_defaults():
    assert load_config(None) == Config()
    assert load_config(None, []) == Config()


def test_no_recipe_plus_overrides():
    cfg = load_config(None, ["trainer.max_steps=3", "resume=auto"])
    assert cfg.trainer.max_steps == 3
    assert cfg.resume == "auto"
    assert cfg.trainer.prompts_per_step == 8  # the dataclass default, untouched
    assert cfg.model == Config().model


def test_overrides_merge_into_the_recipe_section_by_key():
    cfg = load_config(QUICKSTART, ["trainer.max_steps=3"])
    assert cfg.trainer.max_steps == 3
    # The rest of the recipe's trainer section survives (recipe: 4, 2.0e-5, constant; defaults: 8, 1e-5, cosine).
    assert cfg.trainer.prompts_per_step == 4
    assert cfg.trainer.learning_rate == 2e-5
    assert cfg.trainer.lr_scheduler == "constant"


def test_mapping_override_of_a_section_merges_too():
    cfg = load_config(QUICKSTART, ["trainer={max_steps: 3, seed: 7}"])
    assert (cfg.trainer.max_steps, cfg.trainer.seed) == (3, 7)
    assert cfg.trainer.prompts_per_step == 4  # from the recipe, not reset to the default 8


def test_later_override_wins():
    assert load_config(None, ["trainer.max_steps=3", "trainer.max_steps=5"]).trainer.max_steps == 5


def test_override_values_are_yaml_scalars():
    cfg = load_config(QUICKSTART, [
        "trainer.max_steps=3",  # int
        "rollout.temperature=0.7",  # float
        "model.gradient_checkpointing=true",  # bool
        "data.num_examples=null",  # recipe says 2000
        "algorithm.dual_clip_c=3",  # int accepted where a float is expected
    ])
    assert cfg.trainer.max_steps == 3 and type(cfg.trainer.max_steps) is int
    assert cfg.rollout.temperature == 0.7
    assert cfg.model.gradient_checkpointing is True
    assert cfg.data.num_examples is None
    assert cfg.algorithm.dual_clip_c == 3.0 and type(cfg.algorithm.dual_clip_c) is float


def test_pyyaml_reads_exponent_without_dot_as_a_string():
    # The reason float fields take numeric strings: YAML 1.1 needs a dot in "1.0e-5".
    assert parse_override("trainer.learning_rate=1e-5") == ("trainer.learning_rate", "1e-5")
    assert parse_override("trainer.learning_rate=1.0e-5") == ("trainer.learning_rate", 1e-5)


@pytest.mark.parametrize("text, expected", [
    ("1e-5", 1e-5), ("3e-4", 3e-4), ("2E-5", 2e-5), ("+5e-6", 5e-6), ("1e1", 10.0), (".5e-3", 5e-4),
])
def test_float_fields_accept_numeric_strings(text, expected):
    cfg = load_config(None, [f"trainer.learning_rate={text}"])
    assert cfg.trainer.learning_rate == expected
    assert type(cfg.trainer.learning_rate) is float


def test_optional_float_accepts_numeric_string():
    assert load_config(None, ["algorithm.dual_clip_c=3e0"]).algorithm.dual_clip_c == 3.0


def test_recipe_float_written_without_dot(tmp_path):
    path = recipe(tmp_path, "trainer:\n  learning_rate: 2e-5\nalgorithm:\n  eps_high: 28e-2\n")
    cfg = load_config(path)
    assert cfg.trainer.learning_rate == 2e-5 and type(cfg.trainer.learning_rate) is float
    assert cfg.algorithm.eps_high == 0.28


@pytest.mark.parametrize("override, expected", [
    ("trainer.max_steps=1e3", 1000), ("trainer.max_steps=1.5e3", 1500), ("trainer.max_steps=1000.0", 1000),
    ("trainer.max_steps=2E+1", 20), ("data.num_examples=1e3", 1000),
    # Decimal, not float: 2**63 + 1 written with an exponent keeps its last digit.
    ("trainer.max_steps='922337203685477580.9e1'", 9223372036854775809),
])
def test_int_fields_accept_whole_numbers_in_any_notation(override, expected):
    cfg = load_config(None, [override])
    key = override.split("=")[0].split(".")[1]
    value = getattr(cfg.data, key) if override.startswith("data.") else getattr(cfg.trainer, key)
    assert value == expected and type(value) is int


@pytest.mark.parametrize("override, expected", [
    ("trainer.max_steps=1.5", "trainer.max_steps=1.5 is not a whole number: expected int (e.g. 1000 or 1e3)"),
    ("trainer.max_steps=25e-1", "trainer.max_steps='25e-1' is not a whole number: expected int (e.g. 1000 or 1e3)"),
    ("data.num_examples=1.5", "data.num_examples=1.5 is not a whole number: expected int or null (e.g. 1000 or 1e3)"),
    ("trainer.max_steps=.nan", "trainer.max_steps=nan is not a whole number: expected int (e.g. 1000 or 1e3)"),
    ("trainer.max_steps=1e999999", "trainer.max_steps='1e999999' is out of range: expected int below 1e30"),
    ("trainer.max_steps=-1e3", "trainer.max_steps=-1000 is out of range: expected an integer >= 1"),
])
def test_int_fields_refuse_fractions(override, expected):
    assert error(None, [override]) == expected


@pytest.mark.parametrize("override, expected", [
    ("trainer.learning_rate=abc", "trainer.learning_rate='abc' has the wrong type: expected float (got str)"),
    ("trainer.learning_rate=1e-5x", "trainer.learning_rate='1e-5x' has the wrong type: expected float (got str)"),
    # Quoted "nan" is text, not a number; YAML's .nan / .inf are numbers but not finite.
    ("trainer.learning_rate='nan'", "trainer.learning_rate='nan' has the wrong type: expected float (got str)"),
    ("trainer.learning_rate=.nan", "trainer.learning_rate=nan is out of range: expected a finite number"),
    ("trainer.learning_rate=.inf", "trainer.learning_rate=inf is out of range: expected a finite number"),
    ("trainer.learning_rate=1e999", "trainer.learning_rate='1e999' is out of range: expected a finite number"),
])
def test_numeric_string_limits(override, expected):
    assert error(None, [override]) == expected


def test_list_and_mapping_overrides_in_flow_syntax():
    cfg = load_config(QUICKSTART, ["reward.functions=[{name: gsm8k, weight: 1.0}, {name: format, weight: 0.25, "
                                   "kwargs: {style: gsm8k}, label: fmt}]"])
    # The list replaces the recipe's; missing kwargs is filled with {} and ints/strings become floats.
    assert cfg.reward.functions == [
        {"name": "gsm8k", "weight": 1.0, "kwargs": {}},
        {"name": "format", "weight": 0.25, "kwargs": {"style": "gsm8k"}, "label": "fmt"},
    ]


def test_str_fields_take_the_override_text_verbatim():
    cfg = load_config(None, ["data.instruction=Answer: 42", "data.system_prompt=yes", "model.name_or_path=123",
                             "data.source=data/train.jsonl"])
    # YAML would read these as {"Answer": 42}, True and 123.
    assert cfg.data.instruction == "Answer: 42"
    assert cfg.data.system_prompt == "yes"
    assert cfg.model.name_or_path == "123"
    assert cfg.data.source == "data/train.jsonl"
    assert load_config(None, ["data.system_prompt=null"]).data.system_prompt is None
    assert load_config(None, ["data.instruction={unclosed"]).data.instruction == "{unclosed"


def test_override_key_whitespace_is_ignored():
    assert load_config(None, [" trainer . max_steps =4"]).trainer.max_steps == 4


def test_empty_recipe_is_refused_and_empty_sections_mean_defaults(tmp_path):
    # An empty file is more likely a mistake (a wrong path, an unsaved editor) than a wish for defaults.
    for name, text in (("r.yaml", ""), ("c.yaml", "# only a comment\n")):
        path = recipe(tmp_path, text, name)
        assert error(path) == (f"recipe {str(path)!r} is empty (or only comments): pass a recipe from recipes/, "
                               "or write at least one section (e.g. trainer: {output_dir: runs/x})")
    assert load_config(recipe(tmp_path, "trainer:\nmodel:\n", "s.yaml")) == Config()


def test_int_written_for_float_field_is_stored_as_float(tmp_path):
    cfg = load_config(recipe(tmp_path, "rollout:\n  kv_cache_gib: 2\n"))
    assert cfg.rollout.kv_cache_gib == 2.0 and type(cfg.rollout.kv_cache_gib) is float


def test_algorithm_names_are_read_from_the_algo_registries():
    # The config keeps no list of estimator/loss/scale names: its error lists algo's own tables.
    import grpo_trainer.algo as algo

    for key, names in [("advantage", algo.ADVANTAGES), ("policy_loss", algo.POLICY_LOSSES),
                       ("loss_agg", algo.AGGREGATIONS), ("kl_estimator", algo.KL_ESTIMATORS)]:
        assert error(None, [f"algorithm.{key}=xyz"]) == (
            f"algorithm.{key}='xyz' is not allowed: expected one of {', '.join(repr(n) for n in names)}")
    assert error(None, ["algorithm.scale=xyz"]) == (
        f"algorithm.scale='xyz' is not allowed: expected one of {', '.join(repr(n) for n in algo.SCALES)} or null")


# ---------------------------------------------------------------------------------------------
# Reward function entries


def test_reward_label_is_allowed_and_kept():
    cfg = load_config(None, ["reward.functions=[{name: gsm8k, weight: 2, label: acc}]"])
    assert cfg.reward.functions == [{"name": "gsm8k", "weight": 2.0, "kwargs": {}, "label": "acc"}]


def test_reward_weight_defaults_to_one_and_null_kwargs_to_empty():
    cfg = load_config(None, ["reward.functions=[{name: gsm8k, kwargs: null, label: null}]"])
    assert cfg.reward.functions == [{"name": "gsm8k", "weight": 1.0, "kwargs": {}}]


def test_reward_weight_numeric_string():
    cfg = load_config(None, ["reward.functions=[{name: gsm8k, weight: 5e-1}]"])
    assert cfg.reward.functions[0]["weight"] == 0.5


def test_reward_entries_from_a_recipe(tmp_path):
    path = recipe(tmp_path, "reward:\n  functions:\n    - name: gsm8k\n      wieght: 1.0\n")
    assert error(path) == ("unknown key 'reward.functions[0].wieght' (did you mean 'reward.functions[0].weight'?); "
                           "valid keys in reward.functions[0]: name, weight, kwargs, label")


@pytest.mark.parametrize("functions, expected", [
    ("[{name: gsm8k, weight: heavy}]",
     "reward.functions[0].weight='heavy' has the wrong type: expected float (got str)"),
    ("[{name: gsm8k}, {name: format, weight: true}]",
     "reward.functions[1].weight=True has the wrong type: expected float (got bool)"),
    ("[{name: gsm8k, weight: null}]",
     "reward.functions[0].weight=None has the wrong type: expected float (got null)"),
    ("[{name: gsm8k, weight: [1]}]",
     "reward.functions[0].weight=[1] has the wrong type: expected float (got list)"),
    ("[{name: gsm8k, weight: .inf}]",
     "reward.functions[0].weight=inf is out of range: expected a finite number"),
    ("[{name: gsm8k}, {name: format, lable: fmt}]",
     "unknown key 'reward.functions[1].lable' (did you mean 'reward.functions[1].label'?); "
     "valid keys in reward.functions[1]: name, weight, kwargs, label"),
    ("[{name: gsm8k, timeout_s: 2}]",
     "unknown key 'reward.functions[0].timeout_s' (did you mean 'reward.timeout_s'?); "
     "valid keys in reward.functions[0]: name, weight, kwargs, label"),
    ("[{weight: 1.0}]",
     "reward.functions[0] has no name: add name: <registered verifier such as gsm8k, or module.path:function>"),
    ("[{name: 3}]",
     "reward.functions[0].name=3 is invalid: expected a non-empty str (a registered verifier such as gsm8k, "
     "or module.path:function)"),
    ("[{name: ''}]",
     "reward.functions[0].name='' is invalid: expected a non-empty str (a registered verifier such as gsm8k, "
     "or module.path:function)"),
    ("[{name: gsm8k, kwargs: strict}]",
     "reward.functions[0].kwargs='strict' has the wrong type: expected a mapping of keyword arguments with "
     "str keys, e.g. {mode: strict}"),
    ("[{name: gsm8k, label: 7}]",
     "reward.functions[0].label=7 is invalid: expected null or a non-empty str"),
    ("[gsm8k]",
     "reward.functions[0]='gsm8k' is invalid: expected a mapping {name: <verifier or module.path:function>, "
     "weight: <float>, kwargs: {...}, label: <optional str>}"),
    ("[]", "reward.functions=[] is out of range: expected a non-empty list"),
    ("gsm8k", "reward.functions='gsm8k' has the wrong type: expected list (got str)"),
    ("{name: gsm8k}", "reward.functions={'name': 'gsm8k'} has the wrong type: expected list (got dict)"),
])
def test_bad_reward_functions(functions, expected):
    assert error(None, [f"reward.functions={functions}"]) == expected


# ---------------------------------------------------------------------------------------------
# Error messages: malformed input


def test_missing_recipe(tmp_path):
    missing = tmp_path / "nope.yaml"
    assert error(missing) == f"recipe {str(missing)!r} not found: pass an existing YAML file (see recipes/)"
    assert error(tmp_path) == f"recipe {str(tmp_path)!r} not found: pass an existing YAML file (see recipes/)"


@pytest.mark.parametrize("text, where", [
    # The "[" of line 3 is at column 18 ("  learning_rate: " is 17 characters); YAML notices at "model:".
    ("trainer:\n  max_steps: 3\n  learning_rate: [1e-5\nmodel:\n  name_or_path: x\n",
     "at line 4, column 6: expected ',' or ']', but got ':' "
     "(while parsing a flow sequence started at line 3, column 18)"),
    ("trainer:\n  max_steps: 3\n   seed: 1\n", "at line 3, column 8: mapping values are not allowed here"),
    ("trainer:\n\tmax_steps: 3\n", "at line 2, column 1: found character '\\t' that cannot start any token"),
    # PyYAML would silently keep the second value.
    ("trainer:\n  max_steps: 3\n  max_steps: 4\n", "at line 3, column 3: duplicate key 'max_steps': keep one of them"),
])
def test_malformed_yaml_names_line_and_column(tmp_path, text, where):
    path = recipe(tmp_path, text)
    assert error(path) == f"recipe {str(path)!r} is not valid YAML {where}"


def test_yaml_merge_keys_are_not_duplicates(tmp_path):
    # "<<" merges a mapping; the explicit seed after it overrides the merged one.
    path = recipe(tmp_path, "trainer:\n  <<: {max_steps: 3, seed: 1}\n  seed: 5\n")
    cfg = load_config(path)
    assert (cfg.trainer.max_steps, cfg.trainer.seed) == (3, 5)


def test_undecodable_recipe(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"trainer:\n  output_dir: caf\xe9\n")
    assert re.fullmatch(rf"recipe {re.escape(repr(str(path)))} cannot be read \(.*\): pass a UTF-8 YAML file",
                        error(path))


@pytest.mark.parametrize("text, shown", [("- model\n- data\n", "['model', 'data']"), ("just text\n", "'just text'")])
def test_recipe_must_be_a_mapping(tmp_path, text, shown):
    path = recipe(tmp_path, text)
    assert error(path) == f"recipe {str(path)!r} must be a mapping of sections (model:, data:, ...), got {shown}"


def test_section_given_as_scalar(tmp_path):
    expected = ("trainer=5 is not a section: write it as a mapping of keys (e.g. trainer: {output_dir: ...}); "
                f"valid keys in trainer: {TRAINER_KEYS}")
    assert error(recipe(tmp_path, "trainer: 5\n")) == expected
    assert error(None, ["trainer=5"]) == expected
    # An override into a section the recipe broke reports the recipe's mistake.
    assert error(recipe(tmp_path, "trainer: 5\n", "b.yaml"), ["trainer.max_steps=3"]) == expected
    assert error(None, ["model=[a]"]).startswith("model=['a'] is not a section: write it as a mapping of keys")


@pytest.mark.parametrize("override, expected", [
    ("trainer.max_steps", "override 'trainer.max_steps' is not of the form key.path=value (e.g. trainer.max_steps=3)"),
    ("=3", "override '=3' has an empty key: write section.key=value (e.g. trainer.max_steps=3)"),
    ("trainer..max_steps=3",
     "override 'trainer..max_steps=3' has an empty key: write section.key=value (e.g. trainer.max_steps=3)"),
    ("trainer.=3", "override 'trainer.=3' has an empty key: write section.key=value (e.g. trainer.max_steps=3)"),
    ("trainer.max_steps.x=1",
     "override 'trainer.max_steps.x=1': trainer.max_steps is a setting (int), not a section; "
     "write trainer.max_steps=VALUE"),
    ("resume.path=x", "override 'resume.path=x': resume is a setting (str or null), not a section; write resume=VALUE"),
    ("reward.functions.0.weight=2",
     "override 'reward.functions.0.weight=2': reward.functions is a setting (list), not a section; "
     "write reward.functions=VALUE"),
    ("reward.functions=[{name: gsm8k, weight: 1.0}",
     "override 'reward.functions=[{name: gsm8k, weight: 1.0}': its value is not valid YAML at column 28 "
     "(expected ',' or ']', but got '<stream end>'); write lists as [a, b] and mappings as {k: v}"),
    ("trainer={max_steps: 3, max_steps: 4}",
     "override 'trainer={max_steps: 3, max_steps: 4}': its value is not valid YAML at column 16 "
     "(duplicate key 'max_steps': keep one of them); write lists as [a, b] and mappings as {k: v}"),
])
def test_bad_override_syntax(override, expected):
    assert error(None, [override]) == expected


def test_override_into_non_section_whatever_the_recipe_holds():
    # Same message whether or not the recipe sets trainer.max_steps.
    assert error(QUICKSTART, ["trainer.max_steps.x=1"]) == error(None, ["trainer.max_steps.x=1"])


# ---------------------------------------------------------------------------------------------
# Error messages: unknown keys, at every level


def test_unknown_key_in_a_section_suggests_and_lists(tmp_path):
    expected = (f"unknown key 'trainer.max_step' (did you mean 'trainer.max_steps'?); valid keys in trainer: "
                f"{TRAINER_KEYS}")
    assert error(None, ["trainer.max_step=3"]) == expected
    assert error(recipe(tmp_path, "trainer:\n  max_step: 3\n")) == expected


@pytest.mark.parametrize("override, expected", [
    ("modle.name_or_path=x", f"unknown key 'modle' (did you mean 'model'?); valid keys at the top level: "
                             f"{TOP_KEYS}"),
    ("Trainer.max_steps=3", f"unknown key 'Trainer' (did you mean 'trainer'?); valid keys at the top level: "
                            f"{TOP_KEYS}"),
    # The right key in the wrong place: point at the section that has it.
    ("max_steps=3", f"unknown key 'max_steps' (did you mean 'trainer.max_steps'?); valid keys at the top level: "
                    f"{TOP_KEYS}"),
    ("seed=3", "unknown key 'seed' (did you mean 'data.seed' or 'rollout.seed' or 'trainer.seed'?); "
               f"valid keys at the top level: {TOP_KEYS}"),
    ("xyz=3", f"unknown key 'xyz'; valid keys at the top level: {TOP_KEYS}"),
    ("trainer.beta=0.1", f"unknown key 'trainer.beta' (did you mean 'algorithm.beta'?); valid keys in trainer: "
                         f"{TRAINER_KEYS}"),
    ("model.dtyp=float32", "unknown key 'model.dtyp' (did you mean 'model.dtype'?); valid keys in model: "
                           "name_or_path, dtype, trust_remote_code, gradient_checkpointing, attention_gib, "
                           "onednn_linear, lora, critic_path"),
    ("algorithm.eps=0.2", "unknown key 'algorithm.eps' (did you mean 'algorithm.eps_low'?); valid keys in algorithm: "
                          "advantage, scale, loss_agg, policy_loss, eps_low, eps_high, dual_clip_c, gspo_eps_low, gspo_eps_high, "
                          "cispo_eps_high, cispo_eps_low, beta, kl_estimator, "
                          "kl_mode, kl_target, ref_reset_every, softmax_beta, reinforce_baseline, num_iterations, "
                          "num_mini_batches, target_kl, rollout_correction, tis_cap, entropy_coef, skip_zero_advantage, dynamic_sampling, max_gen_rounds, "
                          "overlong_filter, overlong_penalty, overlong_cache_len, overlong_penalty_factor, entropy_control, "
                          "clip_cov_ratio, clip_cov_low, clip_cov_high, kl_cov_ratio, kl_cov_coef, gamma, lam, value_clip, whiten_advantages"),
])
def test_unknown_keys(override, expected):
    assert error(None, [override]) == expected


def test_unknown_top_level_key_in_recipe(tmp_path):
    assert error(recipe(tmp_path, "max_steps: 3\n")) == (
        f"unknown key 'max_steps' (did you mean 'trainer.max_steps'?); valid keys at the top level: {TOP_KEYS}")


# ---------------------------------------------------------------------------------------------
# Error messages: wrong types


@pytest.mark.parametrize("override, expected", [
    ("trainer.max_steps=abc", "trainer.max_steps='abc' has the wrong type: expected int (got str)"),
    ("trainer.max_steps=true", "trainer.max_steps=True has the wrong type: expected int (got bool)"),
    ("trainer.max_steps=3.5", "trainer.max_steps=3.5 is not a whole number: expected int (e.g. 1000 or 1e3)"),
    ("trainer.max_steps=null", "trainer.max_steps=None has the wrong type: expected int (got null)"),
    ("algorithm.beta=[1]", "algorithm.beta=[1] has the wrong type: expected float (got list)"),
    ("algorithm.beta=true", "algorithm.beta=True has the wrong type: expected float (got bool)"),
    ("algorithm.beta={a: 1}", "algorithm.beta={'a': 1} has the wrong type: expected float (got dict)"),
    ("model.trust_remote_code=1", "model.trust_remote_code=1 has the wrong type: expected bool (got int)"),
    ("data.num_examples=many", "data.num_examples='many' has the wrong type: expected int or null (got str)"),
    ("algorithm.dual_clip_c=abc", "algorithm.dual_clip_c='abc' has the wrong type: expected float or null (got str)"),
    ("model.dtype=fp32", "model.dtype='fp32' is not allowed: expected one of 'float32', 'bfloat16', 'float16'"),
    ("model.dtype=bfloat", "model.dtype='bfloat' is not allowed: expected one of 'float32', 'bfloat16', 'float16' "
                           "(did you mean 'bfloat16'?)"),
    ("rollout.dtype=bf16", "rollout.dtype='bf16' is not allowed: expected one of 'float32', 'bfloat16', 'float16' "
                           "or null (did you mean 'bfloat16'?)"),
    ("algorithm.advantage=grp0", "algorithm.advantage='grp0' is not allowed: expected one of 'grpo', 'dr_grpo', "
                                 "'rloo', 'reinforce', 'softmax', 'reinforce_pp', 'reinforce_pp_baseline', 'gae' "
                                 "(did you mean 'grpo'?)"),
    ("trainer.lr_scheduler=1", "trainer.lr_scheduler=1 is not allowed: expected one of 'cosine', 'linear', 'constant'"),
])
def test_wrong_types(override, expected):
    assert error(None, [override]) == expected


def test_long_values_are_cut_in_messages():
    msg = error(None, ["trainer.max_steps=" + "x" * 500])
    # 80-character repr: the quote and 76 x's, then "..."
    assert msg == "trainer.max_steps='" + "x" * 76 + "... has the wrong type: expected int (got str)"


def test_multiline_value_stays_on_one_line(tmp_path):
    msg = error(recipe(tmp_path, 'trainer:\n  max_steps: "a\\nb"\n'))
    assert msg == "trainer.max_steps='a\\nb' has the wrong type: expected int (got str)"


# ---------------------------------------------------------------------------------------------
# Error messages: out-of-range values


@pytest.mark.parametrize("override, allowed", [
    ("algorithm.eps_low=-0.1", "a float in [0, 1)"),
    ("algorithm.eps_low=1", "a float in [0, 1)"),
    ("algorithm.eps_high=-0.01", "a float >= 0"),
    ("algorithm.beta=-1e-3", "a float >= 0"),
    ("algorithm.dual_clip_c=1", "null or a float > 1"),
    ("algorithm.num_iterations=0", "an integer >= 1"),
    ("trainer.max_steps=0", "an integer >= 1"),
    ("trainer.max_steps=-5", "an integer >= 1"),
    ("trainer.prompts_per_step=0", "an integer >= 1"),
    ("trainer.micro_batch_size=0", "an integer >= 1"),
    ("trainer.learning_rate=0", "a float > 0"),
    ("trainer.warmup_steps=-1", "an integer >= 0"),
    ("trainer.weight_decay=-0.1", "a float >= 0"),
    ("trainer.adam_beta1=1", "a float in [0, 1)"),
    ("trainer.adam_beta2=-0.5", "a float in [0, 1)"),
    ("trainer.max_grad_norm=0", "a float > 0"),
    ("trainer.seed=-1", "an integer in [0, 2**32)"),
    ("trainer.seed=4294967296", "an integer in [0, 2**32)"),
    ("trainer.save_every=-1", "an integer >= 0"),
    ("trainer.keep_last=0", "an integer >= 1"),
    ("trainer.torch_threads=-2", "an integer >= 0"),
    ("trainer.output_dir=''", "a non-empty str"),
    ("rollout.top_p=0", "a float in (0, 1]"),
    ("rollout.top_p=1.01", "a float in (0, 1]"),
    ("rollout.top_k=0", "-1 (off) or an integer >= 1"),
    ("rollout.top_k=-2", "-1 (off) or an integer >= 1"),
    ("rollout.temperature=0", "a float > 0"),
    ("rollout.num_generations=0", "an integer >= 1"),
    ("rollout.max_completion_length=0", "an integer >= 1"),
    ("rollout.kv_cache_gib=0", "'auto' or a float > 0"),
    ("rollout.gpu_memory_utilization=1.5", "a float in (0, 1]"),
    ("rollout.seed=-1", "an integer >= 0"),
    ("data.difficulty=5", "an integer in 1..4"),
    ("data.difficulty=0", "an integer in 1..4"),
    ("data.num_examples=0", "null or an integer >= 1"),
    ("data.max_prompt_length=0", "an integer >= 1"),
    ("data.source=''", "a non-empty str"),
    ("model.name_or_path=' '", "a non-empty str"),
    ("reward.timeout_s=0", "a float > 0"),
    ("reward.max_chars=0", "an integer >= 1"),
    ("reward.num_workers=0", "an integer >= 1"),
    ("resume=''", "null, 'auto' or a checkpoint path"),
])
def test_out_of_range(override, allowed):
    key, raw = override.split("=", 1)
    msg = error(None, [override])
    assert re.fullmatch(rf"{re.escape(key)}=.+? is out of range: expected {re.escape(allowed)}", msg), msg


def test_out_of_range_message_exact():
    assert error(None, ["algorithm.eps_low=-0.1"]) == (
        "algorithm.eps_low=-0.1 is out of range: expected a float in [0, 1)")
    assert error(None, ["rollout.top_p=1.5"]) == "rollout.top_p=1.5 is out of range: expected a float in (0, 1]"


@pytest.mark.parametrize("estimator", ["grpo", "dr_grpo", "rloo", "softmax"])
def test_group_estimators_need_two_samples(estimator):
    assert error(None, [f"algorithm.advantage={estimator}", "rollout.num_generations=1"]) == (
        f"rollout.num_generations=1 is too small for algorithm.advantage={estimator!r}: group estimators need "
        ">= 2 samples per prompt (or use algorithm.advantage='reinforce')")


def test_reinforce_allows_one_sample():
    cfg = load_config(None, ["algorithm.advantage=reinforce", "rollout.num_generations=1"])
    assert cfg.rollout.num_generations == 1


@pytest.mark.parametrize("estimator", ["reinforce", "softmax"])
def test_scale_only_for_mean_centred_estimators(estimator):
    assert error(None, [f"algorithm.advantage={estimator}", "algorithm.scale=group"]) == (
        f"algorithm.scale='group' does not apply to algorithm.advantage={estimator!r}: set algorithm.scale=null "
        "(scale is for grpo, dr_grpo, rloo)")
    assert load_config(None, ["algorithm.advantage=rloo", "algorithm.scale=batch"]).algorithm.scale == "batch"


def test_validate_checks_a_config_built_in_code():
    cfg = Config()
    cfg.trainer.max_steps = 0
    with pytest.raises(ConfigError, match=r"^trainer\.max_steps=0 is out of range"):
        validate(cfg)


# ---------------------------------------------------------------------------------------------
# Round trip and diff


def test_save_then_load_gives_an_equal_config(tmp_path):
    cfg = load_config(QUICKSTART, [
        "trainer.learning_rate=3e-4", "algorithm.dual_clip_c=3", "resume=auto", "data.num_examples=null",
        'data.instruction=Say "#### N": then stop.\u00e9',  # quotes, colon, hash, non-ASCII
        "reward.functions=[{name: gsm8k, weight: 1, label: acc}, {name: format, weight: 5e-1, kwargs: {style: gsm8k}}]",
    ])
    path = tmp_path / "config.yaml"
    save_config(cfg, path)
    again = load_config(path)
    assert again == cfg
    assert config_diff(cfg, again, ignore=()) == []
    assert again.data.instruction == 'Say "#### N": then stop.\u00e9'
    assert again.trainer.learning_rate == 3e-4


def test_save_then_load_defaults(tmp_path):
    save_config(Config(), tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == Config()


def test_diff_of_equal_configs_is_empty():
    assert config_diff(load_config(QUICKSTART), load_config(QUICKSTART)) == []


# A fixed starting point (the recipes evolve): gsm8k strict + format at weight 0.5.
DIFF_BASE = ["reward.functions=[{name: gsm8k, weight: 1.0, kwargs: {mode: strict}}, "
             "{name: format, weight: 0.5, kwargs: {style: gsm8k}}]"]


def test_diff_lists_dotted_keys_in_field_order_and_ignores_resume_and_max_steps():
    a = load_config(None, DIFF_BASE)
    b = load_config(None, DIFF_BASE + ["trainer.max_steps=40", "resume=auto", "algorithm.beta=0.04",
                                 "reward.functions=[{name: gsm8k, weight: 1.0, kwargs: {mode: flexible}}, "
                                 "{name: format, weight: 0.2, kwargs: {style: gsm8k}}]", "model.dtype=bfloat16"])
    assert config_diff(a, b) == ["model.dtype", "algorithm.beta", "reward.functions[0].kwargs.mode",
                                 "reward.functions[1].weight"]
    assert config_diff(a, b, ignore=()) == ["model.dtype", "algorithm.beta", "reward.functions[0].kwargs.mode",
                                            "reward.functions[1].weight", "trainer.max_steps", "resume"]


def test_diff_ignore_drops_a_key_and_what_lies_under_it_only():
    a = load_config(None, DIFF_BASE)
    b = load_config(None, DIFF_BASE + ["algorithm.beta=0.04", "reward.timeout_s=2", "trainer.max_steps=40",
                                 "reward.functions=[{name: gsm8k, weight: 1.0, kwargs: {mode: strict}}, "
                                 "{name: format, weight: 0.2, kwargs: {style: gsm8k}}]"])
    assert config_diff(a, b, ignore=["reward.functions"]) == ["algorithm.beta", "reward.timeout_s",
                                                               "trainer.max_steps"]
    assert config_diff(a, b, ignore=["reward"]) == ["algorithm.beta", "trainer.max_steps"]
    # "trainer.max" is not a key: no prefix matching inside a name.
    assert config_diff(a, b, ignore=["trainer.max", "algorithm"]) == ["reward.functions[1].weight",
                                                                       "reward.timeout_s", "trainer.max_steps"]


def test_diff_reports_a_list_of_another_length_and_added_keys_once():
    a = load_config(None)
    b = load_config(None, ["reward.functions=[{name: gsm8k, weight: 1.0, kwargs: {mode: strict}}]"])
    assert config_diff(a, b) == ["reward.functions"]
    c = load_config(None, ["reward.functions=[{name: gsm8k, weight: 1.0, kwargs: {mode: strict}, label: acc}, "
                           "{name: format, weight: 0.2, kwargs: {style: gsm8k}}]"])
    assert config_diff(a, c) == ["reward.functions[0].label"]
    assert config_diff(c, a) == ["reward.functions[0].label"]


def test_diff_after_round_trip_through_a_run_dir(tmp_path):
    # The resume guard: the saved config of a run compared with the one asked for now.
    saved = load_config(QUICKSTART, ["trainer.max_steps=20"])
    save_config(saved, tmp_path / "config.yaml")
    now = load_config(QUICKSTART, ["trainer.max_steps=40", "resume=auto"])
    assert config_diff(load_config(tmp_path / "config.yaml"), now) == []
    assert config_diff(load_config(tmp_path / "config.yaml"), load_config(QUICKSTART, ["trainer.seed=1"])) == [
        "trainer.seed"]


def test_config_error_is_a_value_error_on_one_line():
    assert issubclass(ConfigError, ValueError)
    assert str(ConfigError("a\nb")) == "a b"


def test_every_field_is_reachable_by_override():
    # Each scalar field can be set by its dotted key to its default written as JSON (valid YAML).
    cfg = Config()
    for section in dataclasses.fields(cfg):
        value = getattr(cfg, section.name)
        if not dataclasses.is_dataclass(value):
            continue
        todo = [(section.name, value)]
        while todo:  # nested sections (model.lora) too
            prefix, value = todo.pop()
            for f in dataclasses.fields(value):
                current = getattr(value, f.name)
                if dataclasses.is_dataclass(current):
                    todo.append((f"{prefix}.{f.name}", current))
                    continue
                if isinstance(current, (list, dict)):
                    continue
                loaded = load_config(None, [f"{prefix}.{f.name}={json.dumps(current)}"])
                got = loaded
                for part in f"{prefix}.{f.name}".split("."):
                    got = getattr(got, part)
                assert got == current, f.name
