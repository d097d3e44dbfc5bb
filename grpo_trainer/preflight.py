"""Checks of a run's inputs made before anything heavy is imported or loaded, so that a mistake in
a recipe, a dataset path or an output directory is told in one line within a second, and nothing
on disk is written over.

Each check raises ConfigError (a ValueError) whose message names the problem and the fix."""

from __future__ import annotations

import json
import os
from pathlib import Path

from grpo_trainer.checkpoint import list_checkpoints, resolve_resume
from grpo_trainer.config import DEFAULT_DIFF_IGNORE, Config, ConfigError, config_diff, load_config
from grpo_trainer.runlock import is_main_rank

# Where the run lives is not what it is: a run directory may be moved, then resumed.
SAME_RUN_IGNORE = DEFAULT_DIFF_IGNORE + ("trainer.output_dir",)
# Keys that do not change what a step computes: a resumed run may change them.
RESUME_MAY_CHANGE = SAME_RUN_IGNORE + (
    "trainer.save_every", "trainer.keep_last", "trainer.log_samples_every", "trainer.num_log_samples",
    "trainer.torch_threads", "trainer.max_bad_steps", "trainer.max_no_reward_steps",
    "trainer.max_mismatch_kl", "trainer.report_to",
    # Held-out evaluation restores the RNG it uses, so it does not change the training steps.
    "trainer.eval_every", "trainer.eval_examples", "data.eval_source")


def preflight(cfg: Config) -> Path | None:
    """All checks; returns the verified checkpoint the run would resume from (None: fresh)."""
    resume_from = check_output_dir(cfg)
    check_writable(cfg)
    check_rewards(cfg)
    check_data(cfg)
    check_model(cfg)
    check_engine(cfg)
    check_report_to(cfg)
    return resume_from


def _covered(key: str, prefixes: tuple[str, ...]) -> bool:
    return any(key == p or key.startswith((p + ".", p + "[")) for p in prefixes)


def _differences(saved: Path, cfg: Config, ignore: tuple[str, ...]) -> list[str]:
    try:
        return config_diff(load_config(saved), cfg, ignore=ignore)
    except ConfigError:  # written by another version of the trainer, or edited by hand
        return [f"{saved.name} (unreadable by this version)"]


def check_output_dir(cfg: Config) -> Path | None:
    run = Path(cfg.trainer.output_dir)
    where = f"trainer.output_dir={str(run)!r}"
    if run.exists() and not run.is_dir():
        raise ConfigError(f"{where} is a file: pass a directory")
    if cfg.resume is not None and cfg.trainer.overwrite:
        raise ConfigError(f"resume={cfg.resume!r} and trainer.overwrite=true contradict each other: "
                          "pass one of them")
    try:  # also verifies the checkpoint it would load, so damage is told before anything loads
        path = resolve_resume(cfg.resume, run)
    except (FileNotFoundError, ValueError) as exc:
        raise ConfigError(str(exc)) from None
    saved = path.parent / "config.yaml" if cfg.resume not in (None, "auto") else run / "config.yaml"
    if cfg.resume is not None:  # a resumed run must be the same run
        diff = _differences(saved, cfg, RESUME_MAY_CHANGE) if saved.is_file() else []
        if diff:
            raise ConfigError(f"cannot resume: the run in {str(saved.parent)!r} was made with a different "
                              f"config (differs in: {', '.join(diff[:6])}); restore those values, or start "
                              "fresh with trainer.overwrite=true or another trainer.output_dir")
        return path
    if cfg.trainer.overwrite or not run.is_dir():
        return None
    diff = _differences(saved, cfg, SAME_RUN_IGNORE) if saved.is_file() else []
    checkpoints = list_checkpoints(run)
    # Offer only what the checks would then accept: resume=auto is refused while a key outside
    # RESUME_MAY_CHANGE differs, and without a checkpoint there is nothing to continue.
    blocking = [k for k in diff if not _covered(k, RESUME_MAY_CHANGE)]
    if blocking or (diff and not checkpoints):
        restore = checkpoints and not any("unreadable" in k for k in diff)
        raise ConfigError(f"{where} holds another run with a different config (differs in: "
                          f"{', '.join(diff[:6])}); pass trainer.overwrite=true to replace it"
                          + (", restore those values and pass resume=auto to continue it" if restore else "")
                          + ", or pass another trainer.output_dir")
    if checkpoints:
        raise ConfigError(f"{where} already holds checkpoints of this run (newest: step {checkpoints[-1][0]}); "
                          "pass resume=auto to continue it, trainer.overwrite=true to start over, or another "
                          "trainer.output_dir")
    return None


def checkpoint_step(path: Path | None) -> int:
    """The step a verified checkpoint was saved at (0: none), read without loading it."""
    if path is None:
        return 0
    try:
        return int(json.loads((path / "trainer_state.json").read_text())["step"])
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(f"{path}/trainer_state.json cannot be read ({exc}); pass another checkpoint, or "
                          "resume=auto after moving this one away") from None


def check_writable(cfg: Config) -> None:
    """Create the output directory (and any missing parents) and a file in it, then remove what
    was created: a read-only file system, a parent that is a file or a missing permission shows
    here instead of as a traceback at the first save. Only global rank 0 (the process that
    writes the run) probes, so processes starting together never remove a directory another one
    is probing."""
    if not is_main_rank():
        return
    run = Path(cfg.trainer.output_dir)
    where = f"trainer.output_dir={str(run)!r}"
    missing, created = [], []
    try:
        top = run.absolute()
        while not top.exists():  # False for a path under a file too (ENOTDIR)
            missing.append(top)
            top = top.parent
        if not top.is_dir():
            raise ConfigError(f"{where} is inside {str(top)!r}, which is a file: pass a path inside a directory")
        for path in reversed(missing):
            try:
                path.mkdir()
            except FileExistsError:  # made meanwhile by someone else: not ours to remove
                continue
            created.append(path)
        probe = run / f".write-probe-{os.getpid()}"
        with open(probe, "wb") as f:
            f.write(b"probe")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"{where} cannot be written ({exc.strerror or exc}): pass a directory you can "
                          "write to") from None
    finally:
        for path in reversed(created):
            try:
                path.rmdir()
            except OSError:
                pass


def check_rewards(cfg: Config) -> None:
    """Verifier names and options, 'module:function' imports: known in a second, where the
    trainer would only find them after loading the model."""
    from grpo_trainer.rewards import RewardError, check_reward_specs

    try:
        check_reward_specs(cfg.reward.functions, cfg.reward.format_gated)
    except RewardError as exc:
        raise ConfigError(f"reward.functions: {exc}") from None


def _is_local_file(source: str) -> bool:
    return source != "synthetic" and (os.path.exists(source) or source.endswith((".jsonl", ".json", ".parquet")))


def _load(key: str, source: str, split: str, num_examples: int | None, cfg: Config) -> list:
    from grpo_trainer.data import load_examples

    d = cfg.data
    try:
        return load_examples(source, split, num_examples, d.seed, d.difficulty, d.question_key, d.answer_key)
    except OSError as exc:
        raise ConfigError(f"{key}={source!r} cannot be read ({exc.strerror or exc})") from None
    except ValueError as exc:
        raise ConfigError(f"{key}: {exc}") from None


def check_data(cfg: Config) -> None:
    """Local files only: reading them is cheap, and hub datasets are checked when loaded."""
    d, t = cfg.data, cfg.trainer
    if _is_local_file(d.source):
        examples = _load("data.source", d.source, d.split, d.num_examples, cfg)
        if len(examples) < t.prompts_per_step:
            raise ConfigError(f"data.source={d.source!r} has {len(examples)} usable examples, fewer than "
                              f"trainer.prompts_per_step={t.prompts_per_step}: add data or lower it")
    if t.eval_every > 0 and d.eval_source and _is_local_file(d.eval_source):
        _load("data.eval_source", d.eval_source, "test", t.eval_examples, cfg)  # as the trainer reads it


def check_model(cfg: Config) -> None:
    """A local path that does not exist or is not a checkpoint (hub ids are resolved when loaded)."""
    name = cfg.model.name_or_path
    local = name.startswith((".", "/", "~")) or name.count("/") != 1
    from grpo_trainer.models import BUNDLED, resolve_model_path  # imports torch: ~3 s

    if name in BUNDLED or not (local or Path(name).expanduser().exists()):
        return
    try:
        resolve_model_path(name)
    except ValueError as exc:
        raise ConfigError(f"model.name_or_path: {exc}") from None


def check_engine(cfg: Config) -> None:
    """vLLM's sleep mode releases GPU memory through CUDA's virtual-memory API: there is none to
    release without a GPU, and vLLM's CPU build has no sleep mode."""
    if not cfg.rollout.sleep:
        return
    import torch

    if not torch.cuda.is_available():
        raise ConfigError("rollout.sleep=true needs a CUDA GPU (it releases the vLLM engine's GPU memory during the "
                          "update) and none is visible: set rollout.sleep=false")


def check_report_to(cfg: Config) -> None:
    """Each trainer.report_to library importable, told now rather than after the model has loaded."""
    import importlib.util

    for name, extra in (("tensorboard", "plot"), ("wandb", "wandb")):
        if name in cfg.trainer.report_to and importlib.util.find_spec(name) is None:
            raise ConfigError(f"trainer.report_to lists {name!r} but the {name} package is not installed: "
                              f"pip install 'grpo_trainer[{extra}]' (or pip install {name}), or remove "
                              f"{name!r} from trainer.report_to")
