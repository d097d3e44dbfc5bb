"""The console of a run: the project's lines on the terminal, third-party output in RUN/logs/
(--verbose: both on the terminal), errors and crashes still told on the terminal, the step line in
a log file without progress-bar padding, `--dry-run`, and a finished run recognised before
anything loads. Runs use the tiny random Llama and the hf backend; the vLLM engine's own output is
counted in test_e2e.py."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from grpo_trainer import console
from grpo_trainer.metrics import MetricsLogger, clock

REPO = Path(__file__).resolve().parents[1]

# Everything a library can do to a terminal, from inside quiet(), then a crash.
NOISY = r"""
import logging, os, sys, warnings
from grpo_trainer import console
with console.quiet(sys.argv[1], verbose=False):
    os.write(1, b"c-level stdout noise\n")
    os.write(2, b"c-level stderr noise\n")
    print("a library's print")
    warnings.warn("a library's warning")
    logging.getLogger("vllm.engine").info("engine config dump")
    logging.getLogger("grpo_trainer.trainer").warning("ours: the user must act")
    with console.phase("starting the engine") as p:
        os.write(2, b"noise inside a phase\n")
        p.result = "ready"
    console.line("step    1 | reward=0.5")
    with console.phase("pushing weights"):
        raise RuntimeError("boom inside a redirected phase")
"""


def _env(**extra: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO), **extra}
    env.pop(console.VERBOSE_ENV, None)
    env.update(extra)
    return env


def test_quiet_sends_third_party_output_to_the_log_and_a_crash_to_the_terminal(tmp_path: Path):
    proc = subprocess.run([sys.executable, "-c", NOISY, str(tmp_path)], env=_env(), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 1
    out = proc.stdout.splitlines()
    assert len(out) == 3, out
    assert out[0].endswith(" starting the engine … ready (0.0 s)")
    assert out[1] == "step    1 | reward=0.5"
    assert out[2].endswith(" pushing weights … failed (0.0 s)")
    err = proc.stderr
    assert err.splitlines()[0].endswith(" warning: ours: the user must act")
    assert "RuntimeError: boom inside a redirected phase" in err.splitlines()[-1]  # the traceback's last line
    assert "noise" not in err and "library" not in err and "dump" not in err
    log = console.log_path(tmp_path).read_text()
    for text in ("c-level stdout noise", "c-level stderr noise", "noise inside a phase", "a library's print",
                 "a library's warning", "engine config dump", "ours: the user must act",
                 "starting the engine: ready"):
        assert text in log, text
    assert console.log_path(tmp_path) == tmp_path / "logs" / "third_party.rank0.log"


def test_verbose_env_leaves_everything_on_the_terminal(tmp_path: Path):
    script = NOISY.replace("verbose=False", "verbose=console.verbose_requested()")
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path)], env=_env(GRPO_TRAINER_VERBOSE="1"),
                          capture_output=True, text=True, timeout=120)
    both = proc.stdout + proc.stderr
    for text in ("c-level stdout noise", "c-level stderr noise", "a library's print", "engine config dump",
                 "RuntimeError: boom"):
        assert text in both, text


def test_clock_format():
    assert [clock(9.4), clock(65.2), clock(3599.6), clock(3725)] == ["9s", "1m05s", "1h00m", "1h02m"]


def test_step_lines_in_a_log_file_have_no_bar_padding(tmp_path: Path, capsys):
    logger = MetricsLogger(tmp_path, enabled=True, max_steps=4)
    logger.begin(0)
    logger.log(1, {"reward/mean": 0.5, "time/step": 2.0, "throughput/rollout_tokens_per_s": 123.4})
    logger.log(2, {"reward/mean": 0.25, "time/step": 2.0})
    logger.close()
    out = capsys.readouterr()
    lines = out.out.splitlines()
    assert "\r" not in out.out + out.err and out.err == ""  # stdout is not a terminal here: no bar
    assert [line.split(" | ")[0] for line in lines] == ["step    1", "step    2"]
    assert lines[0].split(" | ")[1] == "reward=0.5 s=2 tok/s=123"
    # Two of four steps done in ~0 s: elapsed 0s, and as long again to go.
    assert lines[1].split(" | ")[2] == "elapsed 0s, eta 0s"


def train(args: list[str], **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "grpo_trainer.train", *args], cwd=REPO, env=_env(**env),
                          capture_output=True, text=True, timeout=600)


def tiny_args(model: Path, run: Path, *extra: str) -> list[str]:
    return ["--recipe", str(REPO / "recipes/quickstart.yaml"), f"model.name_or_path={model}",
            f"trainer.output_dir={run}", "trainer.max_steps=1", "rollout.backend=hf", "rollout.dtype=null",
            "trainer.mixed_precision='no'", "data.num_examples=16", "rollout.num_generations=2",
            "rollout.max_completion_length=4", "trainer.prompts_per_step=2", "trainer.eval_every=0",
            "trainer.torch_threads=1", *extra]


def test_dry_run_checks_and_exits_without_loading_or_writing(tmp_path: Path):
    run = tmp_path / "run"
    probe = ("import sys; from grpo_trainer.train import main; code = main(sys.argv[1:]); "
             "print('loaded:', sorted(m for m in ('vllm', 'transformers.modeling_utils', 'grpo_trainer.trainer') "
             "if m in sys.modules)); sys.exit(code)")
    proc = subprocess.run([sys.executable, "-c", probe, "--dry-run", "--recipe", str(REPO / "recipes/quickstart.yaml"),
                           f"trainer.output_dir={run}", "trainer.max_steps=2"], cwd=REPO, env=_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == f"dry run: recipe {REPO / 'recipes/quickstart.yaml'} with trainer.output_dir={run} " \
                       "trainer.max_steps=2"
    assert "  would run  a fresh run of 2 steps" in lines
    assert lines[-2].startswith("checks passed") and lines[-1] == "loaded: []"
    assert not run.exists()
    # A bad input is still one error line and exit 2.
    proc = train(["--dry-run", "--recipe", str(REPO / "recipes/quickstart.yaml"), "data.source=/no/such.jsonl"])
    assert proc.returncode == 2 and proc.stderr.startswith("error: data.source") and len(proc.stderr.splitlines()) == 1


@pytest.mark.slow
def test_finished_run_is_told_before_loading_and_errors_reach_the_terminal(tiny_llama: Path, tmp_path: Path):
    run = tmp_path / "run"
    proc = train(tiny_args(tiny_llama, run))
    assert proc.returncode == 0, proc.stderr[-3000:]
    phases = [line.split(" ", 1)[1] for line in proc.stdout.splitlines() if line[:2].isdigit()]
    assert [p.split(" … ")[0] for p in phases] == [
        f"recipe {REPO / 'recipes/quickstart.yaml'} with {' '.join(tiny_args(tiny_llama, run)[2:])}",
        f"run directory {run}: config.yaml (the full resolved config), logs/third_party.rank0.log "
        "(third-party output; --verbose shows it here)",
        "importing torch, transformers and accelerate", f"finding model {tiny_llama} and its tokenizer",
        "loading data (synthetic)", f"loading model {tiny_llama} (float32)", "starting hf engine (float32)",
        "rolling out step 1 …"]
    assert phases[4].split(" … ")[1].startswith("16 prompts (")
    assert phases[6].split(" … ")[1].startswith("ready (")
    assert (run / "logs/third_party.rank0.log").is_file()

    # Finished: said before torch, the model or an engine load; nothing is rewritten.
    metrics = (run / "metrics.jsonl").read_text()
    proc = train(tiny_args(tiny_llama, run, "resume=auto"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout == ""
    assert proc.stderr == f"run in {run} already finished at step 1 (trainer.max_steps=1); nothing to do\n"
    assert (run / "metrics.jsonl").read_text() == metrics
    proc = train(["--dry-run", *tiny_args(tiny_llama, run, "resume=auto")])
    assert proc.returncode == 0 and "  would run  nothing: already finished at step 1 (trainer.max_steps=1)" in \
        proc.stdout.splitlines()

    # A failure inside the quiet run (a reward function returning the wrong number of scores) is
    # still one error line on the terminal, after fds 1 and 2 were handed back.
    bad = tiny_args(tiny_llama, tmp_path / "bad", "reward.functions=[{name: 'tests.reward_fns:wrong_length'}]")
    proc = train(bad)
    assert proc.returncode == 2
    assert proc.stderr.splitlines()[-1].startswith("error: ") and "wrong_length" in proc.stderr.splitlines()[-1]
    assert "Traceback" not in proc.stderr
    got, asked = map(int, re.search(r"returned (\d+) values for (\d+) completions", proc.stderr).groups())
    assert got == asked + 1


@pytest.mark.slow
def test_evaluate_keeps_third_party_output_in_its_log(tiny_llama: Path, tmp_path: Path):
    out = tmp_path / "res.json"
    proc = subprocess.run([sys.executable, "-m", "grpo_trainer.evaluate", "--model", str(tiny_llama),
                           "--num-examples", "2", "--max-tokens", "4", "--kv-cache-gib", "1", "--dtype", "float32",
                           "--output", str(out)], cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = tmp_path / "logs" / "third_party.rank0.log"  # a run directory's layout (console.log_path)
    assert proc.stdout.splitlines()[-1] == f"wrote {out} (third-party output: {log})"
    # On the console: the project's stamped lines and the progress bar, nothing of vLLM's.
    assert "evaluating with instruction" in proc.stderr and f"eval {tiny_llama}: 100%" in proc.stderr
    assert "vllm" not in proc.stderr.lower() and "Loading safetensors" not in proc.stderr
    assert "Loading safetensors" in log.read_text()
