"""Algorithm registries: adding an estimator or a policy loss is one decorated function, which
config validation and the dispatchers then accept by name; and the config modules import each
other in one direction only."""

from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import grpo_trainer.algo as algo
from grpo_trainer.algo.registry import ADVANTAGES, POLICY_LOSSES, register_advantage, register_policy_loss
from grpo_trainer.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def toy_estimator():
    """Registers `toy` (grouped, no scale, one option) for one test, as an extension would."""

    @register_advantage("toy", options={"softmax_beta": "factor"})
    def toy_advantages(rewards: torch.Tensor, group_size: int, factor: float = 1.0) -> torch.Tensor:
        g = algo.advantages.as_groups(rewards, group_size)
        return (factor * (g - g.amin(dim=1, keepdim=True))).reshape(-1)

    yield toy_advantages
    ADVANTAGES.remove("toy")


def test_a_registered_estimator_is_accepted_by_config_and_dispatched(toy_estimator):
    cfg = load_config(None, ["algorithm.advantage=toy", "algorithm.softmax_beta=3"])
    a = cfg.algorithm
    entry = ADVANTAGES[a.advantage]
    assert entry.fn is toy_estimator and entry.bind(vars(a)) == {"factor": 3.0}
    # groups [1, 2, 4] and [0, 0, 5]: minus the group min [0, 1, 3] [0, 0, 5], times 3
    rewards = torch.tensor([1.0, 2.0, 4.0, 0.0, 0.0, 5.0])
    adv = algo.group_advantages(rewards, 3, a.advantage, a.scale, **entry.bind(vars(a)))
    assert adv.tolist() == [0.0, 3.0, 9.0, 0.0, 0.0, 15.0]
    # its rules come from the entry: grouped -> G >= 2; no default scale -> scale refused
    with pytest.raises(ConfigError, match=r"^rollout\.num_generations=1 is too small for algorithm\.advantage='toy'"):
        load_config(None, ["algorithm.advantage=toy", "rollout.num_generations=1"])
    with pytest.raises(ConfigError, match=r"\(scale is for grpo, dr_grpo, rloo\)$"):
        load_config(None, ["algorithm.advantage=toy", "algorithm.scale=group"])
    with pytest.raises(ValueError, match="baseline= does not apply to 'toy'; it takes: factor, softmax_beta"):
        algo.group_advantages(rewards, 3, "toy", baseline=True)


def test_unregistered_names_are_refused_listing_the_registered_ones(toy_estimator):
    with pytest.raises(ConfigError) as exc:
        load_config(None, ["algorithm.advantage=toys"])
    assert str(exc.value) == ("algorithm.advantage='toys' is not allowed: expected one of 'grpo', 'dr_grpo', "
                              "'rloo', 'reinforce', 'softmax', 'reinforce_pp', 'reinforce_pp_baseline', 'gae', 'toy' "
                              "(did you mean 'toy'?)")
    with pytest.raises(ConfigError) as exc:
        load_config(None, ["algorithm.policy_loss=gpso"])
    assert str(exc.value) == ("algorithm.policy_loss='gpso' is not allowed: expected one of 'ppo_clip', 'gspo', "
                              "'gspo_token', 'cispo' (did you mean 'gspo'?)")
    with pytest.raises(ValueError, match=r"^unknown advantage estimator 'ppo'; choose one of grpo, dr_grpo, "
                                         r"rloo, reinforce, softmax, reinforce_pp, reinforce_pp_baseline, gae, toy$"):
        algo.group_advantages(torch.zeros(2), 2, "ppo")


def test_a_registered_policy_loss_is_accepted_by_config():
    @register_policy_loss("toy_loss", options={"eps_low": "eps"})
    def toy_loss(logp, old_logp, advantages, mask, eps=0.0):
        return -(logp * advantages[:, None]) * mask, {}

    try:
        cfg = load_config(None, ["algorithm.policy_loss=toy_loss"])
        entry = POLICY_LOSSES[cfg.algorithm.policy_loss]
        assert entry.fn is toy_loss and entry.bind(vars(cfg.algorithm)) == {"eps": 0.2}
    finally:
        POLICY_LOSSES.remove("toy_loss")
    with pytest.raises(ConfigError, match="expected one of 'ppo_clip', 'gspo', 'gspo_token', 'cispo'$"):
        load_config(None, ["algorithm.policy_loss=toy_loss"])


def test_ppo_clip_entry_is_the_clipped_loss_with_its_config_keys():
    entry = POLICY_LOSSES["ppo_clip"]
    assert entry.fn is algo.clipped_policy_loss
    assert entry.bind({"eps_low": 0.2, "eps_high": 0.28, "dual_clip_c": None, "beta": 0.1}) == {
        "eps_low": 0.2, "eps_high": 0.28, "dual_clip_c": None}


def test_dr_grpo_is_grpo_with_scale_none():
    assert ADVANTAGES["dr_grpo"].fn is ADVANTAGES["grpo"].fn is algo.grpo_advantages
    assert (ADVANTAGES["grpo"].scale, ADVANTAGES["dr_grpo"].scale) == ("group", "none")
    r = torch.tensor([1.0, 2.0, 6.0])  # mean 3 -> [-2, -1, 3]
    assert algo.group_advantages(r, 3, "dr_grpo").tolist() == [-2.0, -1.0, 3.0]
    assert algo.dr_grpo_advantages(r, 3).tolist() == [-2.0, -1.0, 3.0]


def test_registering_a_name_twice_is_refused():
    with pytest.raises(ValueError, match="advantage estimator 'grpo' is registered twice"):
        register_advantage("grpo")(lambda rewards, group_size: rewards)


def _config_imports(module: str) -> set[str]:
    tree = ast.parse((ROOT / "grpo_trainer" / "config" / f"{module}.py").read_text())
    found = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    found |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    return {m for m in found if m.startswith("grpo_trainer.config")}


def test_config_modules_import_in_one_direction(monkeypatch):
    # schema <- checks <- loader, and none imports the package itself (whose __init__ imports all
    # three): the cycle config.py <-> config_loader.py had is gone.
    assert _config_imports("schema") == set()
    assert _config_imports("checks") == {"grpo_trainer.config.schema"}
    assert _config_imports("loader") == {"grpo_trainer.config.schema", "grpo_trainer.config.checks"}
    # Loading schema.py on its own needs nothing else of the package.
    spec = importlib.util.spec_from_file_location("schema_alone", ROOT / "grpo_trainer" / "config" / "schema.py")
    schema = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "schema_alone", schema)  # dataclasses look their module up
    spec.loader.exec_module(schema)
    assert schema.Config().algorithm.advantage == "grpo"
    # The package import does not load torch: algo/ (which does) is imported when a config is checked.
    code = "import sys, grpo_trainer.config; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}).stdout
    assert out == "False\n"


@pytest.mark.parametrize("overrides", [
    ["algorithm.advantage=grpo"], ["algorithm.advantage=dr_grpo", "algorithm.scale=sqrt_g"],
    ["algorithm.advantage=rloo"], ["algorithm.advantage=softmax", "algorithm.softmax_beta=0.5"],
    ["algorithm.advantage=reinforce", "algorithm.reinforce_baseline=true"],
])
def test_bind_gives_what_the_trainer_passed_by_hand(overrides):
    # The trainer special-cased softmax_beta and reinforce_baseline; entry.bind(vars(cfg.algorithm))
    # must hand each estimator exactly those keywords, so swapping one for the other changes nothing.
    a = load_config(None, overrides).algorithm
    by_hand = {"softmax_beta": a.softmax_beta} if a.advantage == "softmax" else {}
    if a.advantage == "reinforce":
        by_hand["baseline"] = a.reinforce_baseline
    rewards = torch.tensor([0.0, 1.0, 1.0, 0.5, 2.0, 0.0, 0.0, 0.0])
    expected = algo.group_advantages(rewards, 4, a.advantage, a.scale, **by_hand)
    got = algo.group_advantages(rewards, 4, a.advantage, a.scale, **ADVANTAGES[a.advantage].bind(vars(a)))
    assert torch.equal(got, expected) and bool(expected.abs().sum() > 0)
