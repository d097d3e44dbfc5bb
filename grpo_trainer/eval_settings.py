"""What `evaluate` runs: the model a --model argument names, and the settings it is evaluated
with (the flags, else the trained run's own config.yaml).

A model trained with one instruction and scored by one verifier is measured with those, or the
numbers answer another question than the training run's (README's before/after table used the
quickstart's instruction, flexible extraction and bf16 engine). Every model of one invocation is
evaluated the same way, so a paired comparison compares models, not prompts.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

DEFAULT_VERIFIER = "gsm8k"
DEFAULTS: dict[str, Any] = {"instruction": None, "system_prompt": None, "verifier": DEFAULT_VERIFIER,
                            "verifier_kwargs": {}, "dtype": "float32"}
FLAGS = {"instruction": "--instruction", "system_prompt": "--system-prompt", "verifier": "--verifier",
         "verifier_kwargs": "--verifier-kwargs", "dtype": "--dtype"}
_CKPT = re.compile(r"^checkpoint-(\d+)$")
# Both answer-extraction modes of the gsm8k verifier, scored side by side on every completion.
GSM8K_MODES = ("strict", "flexible")


def correctness_spec(functions: list[dict]) -> dict:
    """The reward spec a run's accuracy is judged by: its first gsm8k / math verifier, else gsm8k
    strict (the trainer's held-out evaluation uses the same rule)."""
    specs = [f for f in functions if isinstance(f, dict) and f.get("name") in ("gsm8k", "math")]
    return specs[0] if specs else {"name": "gsm8k", "weight": 1.0, "kwargs": {"mode": "strict"}}


def scoring_specs(specs: list[dict]) -> tuple[list[dict], list[str]]:
    """(reward specs to score with, extraction labels): the first correctness spec comes first
    (it decides `correct`); a gsm8k one is expanded into both modes, the chosen mode first,
    each under its mode's label, so strict and flexible come from the same completions."""
    i = next((j for j, s in enumerate(specs) if s.get("name") in ("gsm8k", "math")), None)
    if i is None:  # a user-registered correctness verifier: reported under its own name
        return specs, [specs[0].get("label") or specs[0]["name"]]
    spec = specs[i]
    if spec["name"] != "gsm8k":
        primary, labels = [{**spec, "label": spec["name"]}], [spec["name"]]
    else:
        kwargs = dict(spec.get("kwargs") or {})
        mode = kwargs.get("mode", "strict")
        labels = [mode, *(m for m in GSM8K_MODES if m != mode)]
        primary = [{"name": "gsm8k", "kwargs": {**kwargs, "mode": m}, "label": m} for m in labels]
    return [*primary, *specs[:i], *specs[i + 1:]], labels


def resolve_eval_model(spec: str) -> tuple[str, int | None]:
    """(loadable model path, checkpoint step or None) for an alias, HF dir, hub id, run dir or
    checkpoint dir."""
    from grpo_trainer.checkpoint import MARKER, check_checkpoint, newest_verified
    from grpo_trainer.models import resolve_model_path

    path = Path(spec).expanduser()
    if path.is_dir() and not (path / "config.json").is_file():
        if (path / "model" / "config.json").is_file():  # a checkpoint-NNNNNN directory
            if not (path / MARKER).is_file():
                log.warning("%s has no %s marker: its save may have been interrupted", path, MARKER)
            else:  # only model/ is read here: damage elsewhere does not matter to an evaluation
                check_checkpoint(path, f"checkpoint {spec!r}", "pass another checkpoint, or the run directory "
                                 "(its newest intact checkpoint is used)", prefix="model/")
            m = _CKPT.match(path.name)
            return str(path / "model"), int(m.group(1)) if m else None
        ckpt = newest_verified(path, prefix="model/", purpose=f"evaluate {spec!r}")
        if ckpt is not None:
            return str(ckpt / "model"), int(_CKPT.match(ckpt.name).group(1))
        if any(_CKPT.match(child.name) for child in path.iterdir()):
            raise ValueError(f"run directory {spec!r} has no complete checkpoint-*/model (every save was "
                             f"interrupted); pass a checkpoint directory or HF model directory instead")
        raise ValueError(f"{spec!r} is neither an HF model directory (config.json), a checkpoint directory "
                         f"(model/config.json) nor a run directory (checkpoint-*/); check the path")
    return resolve_model_path(spec), None


def run_config_file(spec: str) -> Path | None:
    """The config.yaml of the run a --model argument belongs to (run dir, checkpoint dir or a
    checkpoint's model/), or None for aliases, hub ids and plain HF directories."""
    path = Path(spec).expanduser()
    if not path.is_dir():
        return None
    if path.name == "model" and _CKPT.match(path.parent.name):
        return path.parent.parent / "config.yaml"
    if _CKPT.match(path.name):
        return path.parent / "config.yaml"
    if (path / "config.json").is_file():
        return None
    return path / "config.yaml"


def settings_from_config(path: Path) -> dict[str, Any]:
    """instruction, system prompt, correctness verifier and engine dtype of a saved run config."""
    from grpo_trainer.config import ConfigError, load_config

    try:
        cfg = load_config(path)
    except ConfigError as exc:
        raise ValueError(f"cannot read the run settings in {path} ({exc}); pass --instruction, --verifier, "
                         "--verifier-kwargs and --dtype to evaluate without them") from None
    spec = correctness_spec(cfg.reward.functions)
    return {"instruction": cfg.data.instruction or None,  # "" is the default, as in the trainer
            "system_prompt": cfg.data.system_prompt, "verifier": spec["name"],
            "verifier_kwargs": dict(spec.get("kwargs") or {}), "dtype": cfg.rollout.dtype or cfg.model.dtype}


def resolve_settings(given: dict[str, Any], models: list[str]) -> tuple[dict[str, Any], dict[str, str]]:
    """(settings, where each came from): a flag given (not None) wins, else the value every run
    among `models` agrees on, else DEFAULTS. --verifier alone means its default kwargs, not the
    run's kwargs for what may be another verifier."""
    if given.get("verifier") is not None and given.get("verifier_kwargs") is None:
        given = {**given, "verifier_kwargs": {}}
    missing = [key for key in DEFAULTS if given.get(key) is None]
    runs: list[tuple[Path, dict]] = []
    for spec in models if missing else []:
        path = run_config_file(spec)
        if path is None:
            continue
        if not path.is_file():
            log.warning("%s has no config.yaml: evaluating it with the flags and defaults", spec)
            continue
        if all(p != path for p, _ in runs):
            runs.append((path, settings_from_config(path)))
    settings, source = {}, {}
    for key, default in DEFAULTS.items():
        if given.get(key) is not None:
            settings[key], source[key] = given[key], "flag"
        elif runs:
            (first, value), *rest = [(p, s[key]) for p, s in runs]
            for other, v in rest:
                if v != value:
                    raise ValueError(f"{first} and {other} differ in {key} ({value!r} vs {v!r}); pass {FLAGS[key]} "
                                     "to evaluate every model the same way")
            settings[key], source[key] = value, str(first)
        else:
            settings[key], source[key] = default, "default"
    return settings, source
