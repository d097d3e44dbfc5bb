"""Every shipped recipe loads, survives a save/load round trip, and names rewards that exist.

The list is the recipes/ folder itself, so a new recipe is tested the day it is added."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from grpo_trainer.config import config_diff, load_config, save_config
from grpo_trainer.rewards.registry import get_entry, load_reward_function
from grpo_trainer.rewards.types import VerifyResult

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))


def test_there_are_recipes():
    assert "quickstart.yaml" in [p.name for p in RECIPES]


def _same(written, loaded) -> bool:
    # A float written as 2e-5 is a string to PyYAML and a float in the Config.
    return loaded == written or (isinstance(written, str) and isinstance(loaded, float) and loaded == float(written))


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_recipe_loads_with_every_written_value(path):
    written = yaml.safe_load(path.read_text()) or {}
    loaded = load_config(path).to_dict()
    for section, body in written.items():
        if not isinstance(body, dict):
            assert _same(body, loaded[section]), section
            continue
        for key, value in (body or {}).items():
            if (section, key) == ("reward", "functions"):
                assert len(loaded[section][key]) == len(value)
                for given, got in zip(value, loaded[section][key]):
                    assert all(_same(v, got[k]) for k, v in given.items() if v is not None), given
            else:
                assert _same(value, loaded[section][key]), f"{section}.{key}"


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_recipe_takes_smoke_test_overrides(path):
    # The overrides CI and the README use to shorten a run.
    cfg = load_config(path, ["trainer.max_steps=1", "trainer.output_dir=/tmp/x", "resume=null"])
    assert (cfg.trainer.max_steps, cfg.trainer.output_dir, cfg.resume) == (1, "/tmp/x", None)
    assert config_diff(load_config(path), cfg) == ["trainer.output_dir"]


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_recipe_round_trip(path, tmp_path):
    cfg = load_config(path)
    save_config(cfg, tmp_path / "config.yaml")
    again = load_config(tmp_path / "config.yaml")
    assert again == cfg
    assert config_diff(cfg, again, ignore=()) == []


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_recipe_rewards_exist_and_take_their_kwargs(path):
    for spec in load_config(path).reward.functions:
        name = spec["name"]
        if ":" in name:
            assert callable(load_reward_function(name)), name
            continue
        entry = get_entry(name)  # RewardError naming the known verifiers if misspelt
        assert entry.name == name
        # The in-process check with the recipe's kwargs: a bad option (mode: strcit) raises here.
        check = entry.fn if entry.in_process else entry.fast
        if check is not None:
            result = check("", "0", **spec["kwargs"])
            assert result is None or isinstance(result, VerifyResult)
