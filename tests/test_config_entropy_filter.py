"""Config checks of REINFORCE++, algorithm.entropy_control and data.pass_rate_filter: one line each."""

from __future__ import annotations

import pytest

from grpo_trainer.config import ConfigError, load_config


def error(overrides) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(None, list(overrides))
    msg = str(info.value)
    assert "\n" not in msg, msg
    return msg


def test_defaults_are_off():
    cfg = load_config(None, [])
    assert (cfg.algorithm.entropy_control, cfg.data.pass_rate_filter) == ("none", None)
    assert (cfg.algorithm.clip_cov_ratio, cfg.algorithm.clip_cov_low, cfg.algorithm.clip_cov_high) == (2e-4, 1.0, 5.0)
    assert (cfg.algorithm.kl_cov_ratio, cfg.algorithm.kl_cov_coef, cfg.data.filter_cooldown) == (2e-3, 1.0, 10)


@pytest.mark.parametrize(("override", "expected"), [
    ("algorithm.entropy_control=clipcov", "algorithm.entropy_control='clipcov' is not allowed: expected one of "
                                          "'none', 'clip_cov', 'kl_cov' (did you mean 'clip_cov'?)"),
    ("algorithm.clip_cov_ratio=0", "algorithm.clip_cov_ratio=0.0 is out of range: expected a float in (0, 1]"),
    ("algorithm.kl_cov_ratio=1.5", "algorithm.kl_cov_ratio=1.5 is out of range: expected a float in (0, 1]"),
    ("algorithm.kl_cov_coef=-1", "algorithm.kl_cov_coef=-1.0 is out of range: expected a float >= 0"),
    ("algorithm.clip_cov_low=5", "algorithm.clip_cov_low=5.0 must be < algorithm.clip_cov_high=5.0: Clip-Cov draws "
                                 "from the tokens with low < cov < high"),
    ("data.filter_cooldown=0", "data.filter_cooldown=0 is out of range: expected an integer >= 1"),
    ("data.pass_rate_filter=[0.9, 0.1]", "data.pass_rate_filter=[0.9, 0.1] is invalid: expected null (off) or "
                                         "[low, high] with 0 <= low <= high <= 1, e.g. [0.1, 0.9] (prompts passed "
                                         "outside it are skipped)"),
    ("data.pass_rate_filter=[0.1]", "data.pass_rate_filter=[0.1] is invalid: expected null (off) or [low, high] "
                                    "with 0 <= low <= high <= 1, e.g. [0.1, 0.9] (prompts passed outside it are "
                                    "skipped)"),
    ("data.pass_rate_filter=[a, 1]", "data.pass_rate_filter=['a', 1] is invalid: expected null (off) or [low, high] "
                                     "with 0 <= low <= high <= 1, e.g. [0.1, 0.9] (prompts passed outside it are "
                                     "skipped)"),
    ("data.pass_rate_filter=0.5", "data.pass_rate_filter=0.5 has the wrong type: expected list or null (got float)"),
    ("algorithm.advantage=reinforce_pp_baseline", None),
])
def test_bad_values_are_one_line_errors(override, expected):
    if expected is None:  # the group variant needs groups
        msg = error([override, "rollout.num_generations=1"])
        assert msg.startswith("rollout.num_generations=1 is too small for algorithm.advantage='reinforce_pp_baseline'")
    else:
        assert error([override]) == expected


def test_good_values_load():
    cfg = load_config(None, ["algorithm.entropy_control=kl_cov", "data.pass_rate_filter=[0, 0.9]",
                             "data.filter_cooldown=3", "algorithm.advantage=reinforce_pp", "rollout.num_generations=1"])
    a, d = cfg.algorithm, cfg.data
    assert (a.entropy_control, d.pass_rate_filter, d.filter_cooldown) == ("kl_cov", [0, 0.9], 3)
    assert error(["algorithm.advantage=reinforce_pp", "algorithm.scale=batch"]).startswith(
        "algorithm.scale='batch' does not apply to algorithm.advantage='reinforce_pp'")
