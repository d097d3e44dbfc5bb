"""Bad input through the real command line: exit code 2, exactly one stderr line starting with
`error:` that names the problem, and nothing written. None of these loads a model. Config mistakes
are told before torch is imported (~0.5 s a case); the preflight checks come after the config's
algorithm names are checked against algo/'s registries, which imports torch (~3 s)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "recipes/quickstart.yaml"


def cli(*args: str, recipe: Path = QUICKSTART) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("GRPO_TRAINER_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "grpo_trainer.train", "--recipe", str(recipe), *args],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


def one_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr[-2000:]
    assert lines[0].startswith("error: "), lines[0]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def jsonl(path: Path, rows: list) -> Path:
    return write(path, "".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture
def out(tmp_path: Path) -> Path:
    return tmp_path / "run"


def test_malformed_yaml(tmp_path, out):
    recipe = write(tmp_path / "r.yaml", "trainer:\n  max_steps: [3\n  output_dir: x\n")
    one_error(cli(f"trainer.output_dir={out}", recipe=recipe), "is not valid YAML", "line")
    assert not out.exists()


def test_unknown_key_suggests_the_closest(tmp_path, out):
    recipe = write(tmp_path / "r.yaml", "trainer:\n  max_step: 3\n")
    one_error(cli(f"trainer.output_dir={out}", recipe=recipe), "unknown key 'trainer.max_step'",
              "did you mean 'trainer.max_steps'")
    one_error(cli("algorithm.eps_lo=0.1"), "did you mean 'algorithm.eps_low'")
    assert not out.exists()


def test_wrong_type(out):
    one_error(cli(f"trainer.output_dir={out}", "trainer.max_steps=three"), "trainer.max_steps='three'",
              "wrong type", "expected int")


@pytest.mark.parametrize("override, needle", [
    ("algorithm.eps_low=-0.1", "algorithm.eps_low=-0.1 is out of range"),
    ("algorithm.eps_high=-1", "algorithm.eps_high=-1.0 is out of range"),
    ("rollout.num_generations=1", "rollout.num_generations=1 is too small"),
    ("trainer.max_steps=0", "trainer.max_steps=0 is out of range"),
    ("trainer.max_bad_steps=0", "trainer.max_bad_steps=0 is out of range"),
    ("trainer.max_no_reward_steps=0", "trainer.max_no_reward_steps=0 is out of range: expected an integer >= 1"),
])
def test_out_of_range(out, override, needle):
    one_error(cli(f"trainer.output_dir={out}", override), needle)
    assert not out.exists()


def test_dataset_file_missing(tmp_path, out):
    one_error(cli(f"trainer.output_dir={out}", f"data.source={tmp_path / 'nope.jsonl'}"),
              "data file not found", "nope.jsonl")
    assert not out.exists()


def test_column_missing(tmp_path, out):
    data = jsonl(tmp_path / "d.jsonl", [{"problem": "1+1?", "answer": "#### 2"}] * 4)
    one_error(cli(f"trainer.output_dir={out}", f"data.source={data}"),
              "column 'question' not found", "set question_key")


def test_all_rows_without_an_answer(tmp_path, out):
    data = jsonl(tmp_path / "d.jsonl", [{"question": "1+1?", "answer": "two apples"}] * 3)
    one_error(cli(f"trainer.output_dir={out}", f"data.source={data}"), "no usable rows", "all 3")


def test_too_few_usable_rows_after_skipping(tmp_path, out):
    # 2 good rows, 3 without a "#### N" answer (skipped and counted); 2 < prompts_per_step=4.
    rows = [{"question": "1+1?", "answer": "#### 2"}] * 2 + [{"question": "x?", "answer": "no idea"}] * 3
    data = jsonl(tmp_path / "d.jsonl", rows)
    one_error(cli(f"trainer.output_dir={out}", f"data.source={data}"), "has 2 usable examples",
              "trainer.prompts_per_step=4")


def test_empty_dataset(tmp_path, out):
    data = write(tmp_path / "d.jsonl", "")
    one_error(cli(f"trainer.output_dir={out}", f"data.source={data}"), "has no rows")


def test_model_path_does_not_exist(tmp_path, out):
    one_error(cli(f"trainer.output_dir={out}", f"model.name_or_path={tmp_path / 'no-model'}"),
              "model.name_or_path", "does not exist")
    assert not out.exists()


def _previous_run(out: Path, **overrides) -> float:
    """An output_dir as a finished run leaves it: config.yaml, metrics, one complete checkpoint."""
    from grpo_trainer.config import load_config, save_config

    out.mkdir(parents=True)
    cfg = load_config(QUICKSTART, [f"trainer.output_dir={out}", *[f"{k}={v}" for k, v in overrides.items()]])
    save_config(cfg, out / "config.yaml")
    write(out / "metrics.jsonl", '{"step": 1}\n')
    ckpt = out / "checkpoint-000001"
    ckpt.mkdir()
    write(ckpt / "COMPLETE", "1\n")
    return (out / "metrics.jsonl").stat().st_mtime


def _untouched(out: Path, mtime: float) -> None:
    assert (out / "metrics.jsonl").stat().st_mtime == mtime
    assert (out / "checkpoint-000001" / "COMPLETE").is_file()


def test_output_dir_of_another_run_is_refused(out):
    mtime = _previous_run(out, **{"algorithm.beta": 0.1})
    time.sleep(0.01)
    one_error(cli(f"trainer.output_dir={out}"), "holds another run with a different config",
              "differs in: algorithm.beta", "trainer.overwrite=true")
    _untouched(out, mtime)


def test_output_dir_of_this_run_needs_resume_or_overwrite(out):
    mtime = _previous_run(out)
    one_error(cli(f"trainer.output_dir={out}"), "already holds checkpoints of this run (newest: step 1)",
              "resume=auto")
    _untouched(out, mtime)


def test_resume_with_a_changed_config_is_refused(out):
    mtime = _previous_run(out)
    one_error(cli(f"trainer.output_dir={out}", "trainer.learning_rate=1e-3", "resume=auto"),
              "cannot resume", "differs in: trainer.learning_rate")
    _untouched(out, mtime)


def test_resume_from_a_path_that_is_not_a_checkpoint(tmp_path, out):
    partial = tmp_path / "checkpoint-000004"
    partial.mkdir()
    one_error(cli(f"trainer.output_dir={out}", "--resume", str(partial)), "is not a complete checkpoint")


def test_resume_and_overwrite_contradict(out):
    one_error(cli(f"trainer.output_dir={out}", "resume=auto", "trainer.overwrite=true"), "contradict")


def test_moved_run_resumes_and_overwrite_is_allowed(tmp_path):
    from grpo_trainer.config import load_config
    from grpo_trainer.preflight import check_output_dir

    old = tmp_path / "old"
    _previous_run(old)
    moved = tmp_path / "moved"
    old.rename(moved)
    check_output_dir(load_config(QUICKSTART, [f"trainer.output_dir={moved}", "resume=auto"]))
    check_output_dir(load_config(QUICKSTART, [f"trainer.output_dir={moved}", "trainer.overwrite=true"]))
    # Keys that do not change what a step computes may change on resume.
    check_output_dir(load_config(QUICKSTART, [f"trainer.output_dir={moved}", "resume=auto", "trainer.save_every=5",
                                              "trainer.max_steps=40"]))
