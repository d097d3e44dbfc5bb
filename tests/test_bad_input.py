"""The rest of the bad inputs: each is told in one `error:` line naming the problem and the fix,
with exit code 2 (1 for a run stopped on a fault), and nothing already on disk is changed.

Most fail in preflight, before any model loads (one CLI process each, ~3-5 s, mostly the torch
import); the two reward cases need a short real run (tiny Llama, HF backend, forked from a
driver that has imported torch once, as in test_resume.py); one case goes through a real
`accelerate launch`."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from test_cli_errors import QUICKSTART, REPO, _previous_run, _untouched, cli, one_error, write
from test_resume import Forker, argv

from grpo_trainer.config import ConfigError, load_config
from grpo_trainer.preflight import check_output_dir, check_rewards, check_writable


@pytest.fixture
def out(tmp_path: Path) -> Path:
    return tmp_path / "run"


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() if p.is_file() else b"<dir>" for p in sorted(root.rglob("*"))}


# ---------------------------------------------------------------------------------------------
# Output directory that cannot be written


def test_output_dir_under_a_file(tmp_path):
    blocker = write(tmp_path / "notes.txt", "keep me\n")
    one_error(cli(f"trainer.output_dir={blocker / 'run'}"),
              f"trainer.output_dir='{blocker / 'run'}' is inside '{blocker}', which is a file",
              "pass a path inside a directory")
    assert blocker.read_text() == "keep me\n"


def _unshare_works() -> bool:
    probe = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c",
                            "mount -t tmpfs -o ro tmpfs /mnt"], capture_output=True)
    return probe.returncode == 0


def test_output_dir_on_a_read_only_file_system(tmp_path):
    # Tests run as root, where chmod does not stop a write; a read-only bind mount does. It lives in
    # a private mount namespace (only the CLI process sees it), so nothing leaks if the test dies.
    if shutil.which("unshare") is None or not _unshare_works():
        pytest.skip("needs `unshare -m` and mount rights (CAP_SYS_ADMIN) for a read-only bind mount")
    out = tmp_path / "run"
    mtime = _previous_run(out)
    before = _snapshot(out)
    ro = ("mount --bind \"$1\" \"$1\" && mount -o remount,bind,ro \"$1\" && shift && exec \"$@\"")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("GRPO_TRAINER_DEBUG", None)
    proc = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", ro, "sh", str(out),
                           sys.executable, "-m", "grpo_trainer.train", "--recipe", str(QUICKSTART),
                           f"trainer.output_dir={out}", "resume=auto"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    one_error(proc, f"trainer.output_dir='{out}' cannot be written (Read-only file system)",
              "pass a directory you can write to")
    _untouched(out, mtime)
    assert _snapshot(out) == before


def test_probe_leaves_nothing_behind(tmp_path):
    # A good output dir passes, and the directories the probe made are gone again: a run that
    # then fails on other input leaves no empty run directory.
    check_writable(load_config(QUICKSTART, [f"trainer.output_dir={tmp_path / 'a' / 'b' / 'run'}"]))
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# Reward specs resolved before the model loads


def test_unknown_verifier_is_told_before_the_model_loads(tmp_path):
    # The "reward.functions: " prefix is preflight's: the trainer, after loading the weights,
    # would have raised the bare RewardError. (Its own output dir: the recipe's may hold a real run.)
    one_error(cli(f"trainer.output_dir={tmp_path / 'run'}", "reward.functions=[{name: gsm8kk}]"),
              "error: reward.functions: unknown verifier 'gsm8kk' (did you mean 'gsm8k'?); known: format, gsm8k, math")


@pytest.mark.parametrize("name, needle", [
    ("tests.no_such_module:f", "reward 'tests.no_such_module:f': cannot import module 'tests.no_such_module'"),
    ("tests.reward_fns:missing", "module 'tests.reward_fns' has no attribute 'missing'; check the function name"),
    ("tests.reward_fns:NOT_CALLABLE", "'NOT_CALLABLE' is a int, not callable; point it at a function"),
    ("tests.reward_fns", "unknown verifier 'tests.reward_fns'"),
])
def test_reward_function_specs_are_resolved_in_preflight(name, needle):
    cfg = load_config(QUICKSTART, [f"reward.functions=[{{name: '{name}'}}]"])
    with pytest.raises(ConfigError) as err:
        check_rewards(cfg)
    assert str(err.value).startswith("reward.functions: ") and needle in str(err.value), str(err.value)


def test_format_gate_without_a_format_spec_is_told_in_preflight():
    cfg = load_config(QUICKSTART, ["reward.functions=[{name: 'tests.reward_fns:length_penalty'}]",
                                   "reward.format_gated=true"])
    with pytest.raises(ConfigError, match="format_gated=True needs a 'format' or correctness"):
        check_rewards(cfg)


# ---------------------------------------------------------------------------------------------
# Data that is not UTF-8


def _latin1_jsonl(path: Path) -> Path:
    good = '{"question": "1+1?", "answer": "#### 2"}\n'
    path.write_bytes((good * 2 + '{"question": "caf\xe9 costs 3, two cost?", "answer": "#### 6"}\n').encode("latin-1"))
    return path


def test_training_data_not_utf8(tmp_path, out):
    data = _latin1_jsonl(tmp_path / "d.jsonl")
    # Line 3, column 18: `{"question": "caf` is 17 bytes, then 0xe9 (latin-1 é).
    one_error(cli(f"trainer.output_dir={out}", f"data.source={data}"),
              f"error: data.source: {data}:3 is not UTF-8 (byte 0xe9 at column 18); re-save the file as UTF-8")
    assert not out.exists()


def test_evaluate_data_not_utf8(tmp_path):
    data = _latin1_jsonl(tmp_path / "d.jsonl")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("GRPO_TRAINER_DEBUG", None)
    proc = subprocess.run([sys.executable, "-m", "grpo_trainer.evaluate", "--model", "smollm2-135m-instruct",
                           "--data", str(data), "--output", str(tmp_path / "eval.json")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    one_error(proc, f"error: {data}:3 is not UTF-8 (byte 0xe9 at column 18); re-save the file as UTF-8")
    assert not (tmp_path / "eval.json").exists()


def test_json_file_not_utf8_names_line_and_column(tmp_path):
    from grpo_trainer.data import load_examples

    data = tmp_path / "d.json"
    data.write_bytes('[{"question": "a", "answer": "#### 1"},\n {"question": "\xff"}]\n'.encode("latin-1"))
    # Line 2: ` {"question": "` is 15 bytes, then 0xff.
    with pytest.raises(ValueError, match=r"d\.json:2 is not UTF-8 \(byte 0xff at column 16\)"):
        load_examples(str(data), "train", None, 0, 1)


# ---------------------------------------------------------------------------------------------
# Recipe and overrides


def test_empty_recipe_is_refused(tmp_path, out):
    recipe = write(tmp_path / "r.yaml", "# nothing yet\n")
    one_error(cli(f"trainer.output_dir={out}", recipe=recipe),
              f"recipe '{recipe}' is empty (or only comments): pass a recipe from recipes/")
    assert not out.exists()


def test_different_config_suggests_only_what_works(tmp_path):
    run = tmp_path / "run"
    _previous_run(run, **{"algorithm.beta": 0.1})
    fresh = [f"trainer.output_dir={run}"]
    with pytest.raises(ConfigError) as err:
        check_output_dir(load_config(QUICKSTART, fresh))
    msg = str(err.value)
    assert "differs in: algorithm.beta" in msg and "restore those values and pass resume=auto" in msg
    # Each suggestion, followed, passes the check: resume=auto only after restoring the value ...
    with pytest.raises(ConfigError, match="cannot resume"):
        check_output_dir(load_config(QUICKSTART, fresh + ["resume=auto"]))
    check_output_dir(load_config(QUICKSTART, fresh + ["resume=auto", "algorithm.beta=0.1"]))
    check_output_dir(load_config(QUICKSTART, fresh + ["trainer.overwrite=true"]))
    check_output_dir(load_config(QUICKSTART, [f"trainer.output_dir={tmp_path / 'other'}"]))
    # ... and no resume=auto at all when there is no checkpoint to continue.
    shutil.rmtree(run / "checkpoint-000001")
    with pytest.raises(ConfigError) as err:
        check_output_dir(load_config(QUICKSTART, fresh))
    assert "resume" not in str(err.value) and "trainer.overwrite=true" in str(err.value)


def test_keys_that_may_change_on_resume_get_the_resume_suggestion(tmp_path):
    run = tmp_path / "run"
    _previous_run(run, **{"trainer.save_every": 5})
    with pytest.raises(ConfigError, match=r"already holds checkpoints of this run \(newest: step 1\); pass resume=auto"):
        check_output_dir(load_config(QUICKSTART, [f"trainer.output_dir={run}"]))
    check_output_dir(load_config(QUICKSTART, [f"trainer.output_dir={run}", "resume=auto"]))


# ---------------------------------------------------------------------------------------------
# accelerate launch, the way README runs it


@pytest.mark.slow
def test_under_accelerate_launch_our_line_is_the_last(tmp_path):
    # accelerate's simple launcher turns any non-zero exit into 1 (launch.py: simple_launcher); with
    # -q it skips its CalledProcessError traceback, so our line is the last thing printed.
    blocker = write(tmp_path / "notes.txt", "keep me\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("GRPO_TRAINER_DEBUG", None)
    proc = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "-q", "--config_file",
                           str(REPO / "configs/accelerate/cpu.yaml"), "-m", "grpo_trainer.train", "--recipe",
                           str(QUICKSTART), f"trainer.output_dir={blocker / 'run'}"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: trainer.output_dir='{blocker / 'run'}' is inside '{blocker}', which is a file: "
        "pass a path inside a directory")
    assert blocker.read_text() == "keep me\n"


# ---------------------------------------------------------------------------------------------
# Reward functions that fail at run time (short real runs)


@pytest.fixture(scope="module")
def forker(tmp_path_factory):
    f = Forker(tmp_path_factory.mktemp("logs"))
    yield f
    f.close()


@pytest.mark.slow
def test_reward_that_raises_is_named_in_one_line(forker, tiny_llama, tmp_path):
    run = tmp_path / "run"
    code = forker.run(argv(tiny_llama, run, 3, "reward.functions=[{name: 'tests.reward_fns:fails_on_second_call'}]"))
    log = forker.log.read_text()
    assert code == 2, log[-3000:]
    assert "Traceback" not in log, log[-3000:]
    last = log.strip().splitlines()[-1]
    assert last.startswith("error: reward 'tests.reward_fns:fails_on_second_call' raised ZeroDivisionError: "
                           "division by zero (at "), last
    import reward_fns

    lineno = next(i for i, text in enumerate(Path(reward_fns.__file__).read_text().splitlines(), 1) if "/ 0" in text)
    assert last.endswith(f"reward_fns.py:{lineno}); fix the function or remove it from reward.functions"), last
    # Step 1 was saved before step 2 raised, and stays complete; step 2 never reached a save.
    assert (run / "checkpoint-000001" / "COMPLETE").is_file()
    assert not (run / "checkpoint-000002").exists()


@pytest.mark.slow
def test_reward_with_no_finite_score_warns_once_then_stops(forker, tiny_llama, tmp_path):
    run = tmp_path / "run"
    code = forker.run(argv(tiny_llama, run, 5, "reward.functions=[{name: 'tests.reward_fns:always_nan'}]",
                           "trainer.max_no_reward_steps=2"))
    log = forker.log.read_text()
    assert code == 2, log[-3000:]
    # 2 prompts x 4 samples per step; warned at step 1 only, although step 2 was as silent.
    assert log.count("reward 'tests.reward_fns:always_nan' gave no finite score to any of the 8 samples") == 1
    assert "step 1: reward 'tests.reward_fns:always_nan'" in log
    assert log.strip().splitlines()[-1] == (
        "error: stopped at step 2: for 2 consecutive steps no reward gave any sample a finite score "
        "(trainer.max_no_reward_steps=2), so there was nothing to learn from; fix 'tests.reward_fns:always_nan' "
        "(NaN, inf or None for every sample), then resume=auto")
    assert [r["step"] for r in _rows(run / "metrics.jsonl")] == [1, 2]
    assert (run / "checkpoint-000001" / "COMPLETE").is_file() and not (run / "checkpoint-000002").exists()


@pytest.mark.slow
def test_no_reward_verdict_is_the_same_on_every_process():
    from test_distributed import launch

    proc = launch("cpu_ddp", [str(REPO / "tests/reward_guard_ranks.py")], timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # The two processes share stdout: their lines can arrive glued together.
    got = sorted((json.loads(m) for m in re.findall(r'\{"rank"[^{}]*\}', proc.stdout)), key=lambda r: r["rank"])
    # consecutive silent steps after steps 1, 2, 3 -> 0, 1, 2; max_no_reward_steps=2 stops both at step 3.
    assert got == [{"rank": 0, "consecutive": [0, 1, 2], "stopped": 3},
                   {"rank": 1, "consecutive": [0, 1, 2], "stopped": 3}], proc.stdout[-2000:]
