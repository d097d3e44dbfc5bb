"""One run per output directory, and SIGINT/SIGTERM stopping a run: to the trainer itself and to
the `accelerate launch` process in front of it. Runs are the real CLI on a tiny random Llama with
the HF rollout backend; signals are real."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from grpo_trainer.checkpoint import list_checkpoints
from grpo_trainer.runlock import LOCK_NAME, acquire, release
from grpo_trainer.train import main
from test_resume import REPO, Forker, argv, rows


@pytest.fixture(scope="module")
def forker(tmp_path_factory):
    f = Forker(tmp_path_factory.mktemp("logs"))
    yield f
    f.close()


def wait_for(condition, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, f"timed out after {timeout} s waiting for {what}"
        time.sleep(0.05)


def steps_logged(run: Path) -> list[int]:
    path = run / "metrics.jsonl"
    try:
        return [json.loads(line)["step"] for line in path.read_text().splitlines() if line.endswith("}")]
    except FileNotFoundError:
        return []


def alive(pid: int) -> bool:
    """Running, as opposed to gone or a zombie nobody reaps (an orphan's new parent may not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def only_complete_checkpoints(run: Path, leftovers: bool = False) -> list[int]:
    """Steps of the complete checkpoints, each loadable; `leftovers`: a save cut short may have
    left its temporary directory (the next save removes it)."""
    found = list_checkpoints(run)
    for step, path in found:
        assert (path / "state" / "optimizer.bin").is_file() and (path / "model" / "model.safetensors").is_file()
        assert json.loads((path / "trainer_state.json").read_text())["step"] == step
    assert leftovers or not (list(run.glob(".tmp-*")) or list(run.glob(".old-*")))
    return [s for s, _ in found]


def no_traceback(log: str) -> None:
    assert "Traceback" not in log and "KeyboardInterrupt" not in log, log[-3000:]


def test_a_second_run_in_a_held_directory_is_refused_with_the_holders_pid(tmp_path, capsys):
    run = tmp_path / "run"
    (run / "checkpoint-000002").mkdir(parents=True)
    (run / "checkpoint-000002" / "COMPLETE").write_text("2\n")
    (run / "config.yaml").write_text("not even a config\n")
    files = lambda: {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != LOCK_NAME}  # noqa: E731
    before = files()
    holder = subprocess.Popen([sys.executable, "-c", f"from grpo_trainer.runlock import acquire; import time; "
                               f"acquire({str(run)!r}); print('held', flush=True); time.sleep(120)"],
                              cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        recipe = ["--recipe", str(REPO / "recipes/quickstart.yaml"), f"trainer.output_dir={run}"]
        # Overwrite would delete the holder's files, resume would write beside it, and a fresh run
        # would otherwise be told about the checkpoints: the live holder is what each one hears.
        for extra in (["trainer.overwrite=true"], ["resume=auto"], []):
            capsys.readouterr()
            assert main(recipe + extra) == 2
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1 and err[0].startswith(f"error: trainer.output_dir='{run}' is in use by another "
                                                       f"run (PID {holder.pid}, started "), err
            assert f"stop it with `kill -INT {holder.pid}`" in err[0]
        assert files() == before
    finally:
        holder.kill()
        holder.wait()
    # SIGKILLed, the holder left its lock file but no lock: the directory is free at once.
    acquire(run)
    try:
        assert (run / LOCK_NAME).read_text().split()[0] == str(os.getpid())
    finally:
        release()


@pytest.mark.slow
def test_sigint_stops_at_the_end_of_a_step_and_resume_continues(forker, tiny_llama, tmp_path, capsys):
    run = tmp_path / "run"
    args = argv(tiny_llama, run, 6, "trainer.save_every=3", "trainer.keep_last=10", "trainer.eval_every=0",
                "reward.functions=[{name: 'tests.reward_fns:even_token_fraction_gated'}]")
    pid = forker.start(args)
    wait_for(lambda: steps_logged(run), 60, "step 1")
    # The live run holds the directory: a second one is refused and deletes nothing.
    assert main(args + ["trainer.overwrite=true"]) == 2
    assert f"in use by another run (PID {pid}," in capsys.readouterr().err
    os.kill(pid, signal.SIGINT)
    assert forker.wait() == 128 + signal.SIGINT
    log = forker.log.read_text()
    no_traceback(log)
    last = log.strip().splitlines()[-1]
    assert last.startswith("stopped at step ") and last.endswith("; resume with resume=auto"), last
    stopped = int(last.split()[3].rstrip(";"))
    assert "SIGINT received: stopping at the end of this step" in log
    # Every logged step was kept (the refused run cleared nothing), and the step it stopped at was
    # checkpointed, whether or not the save schedule (every 3) would have saved it.
    assert 1 <= stopped < 6 and steps_logged(run) == list(range(1, stopped + 1))
    saved = only_complete_checkpoints(run)
    assert saved == sorted({*range(3, stopped + 1, 3), stopped})

    # Resumed, then stopped by a second signal mid-step: it ends the run at once. The step is held
    # in its reward function (a gate file) until both signals are in. The second is sent after the
    # first one's message, as a user does: two signals before Python runs its handler are one.
    gate = tmp_path / "gate"
    gate.touch()
    pid = forker.start(args + ["resume=auto"], {"GRPO_TEST_GATE": str(gate)})
    wait_for(lambda: Path(f"{gate}.held").exists(), 60, "the first step after the resume")
    os.kill(pid, signal.SIGINT)
    wait_for(lambda: "SIGINT received: stopping" in forker.log.read_text(), 30, "the first SIGINT's message")
    os.kill(pid, signal.SIGINT)
    assert forker.wait() == 128 + signal.SIGINT
    gate.unlink()
    log = forker.log.read_text()
    no_traceback(log)
    assert log.strip().splitlines()[-1] == ("stopped by SIGINT before a step completed; complete checkpoints are "
                                            "intact: resume with resume=auto"), log[-2000:]
    assert set(saved) <= set(only_complete_checkpoints(run, leftovers=True))

    assert forker.run(args + ["resume=auto"]) == 0, forker.log.read_text()[-3000:]
    assert steps_logged(run) == list(range(1, 7))  # each step once: no second writer, nothing redone twice
    assert len(rows(run / "samples.jsonl")) == 6 * 8


def launch(args: list[str], log: Path) -> subprocess.Popen:
    """`accelerate launch` (one process) in its own session, as if started from a terminal."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "OMP_NUM_THREADS": "1"}
    with open(log, "w") as fh:
        return subprocess.Popen([sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                                 str(REPO / "configs/accelerate/cpu.yaml"), "-m", "grpo_trainer.train", *args],
                                cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)


def stop_launched(launcher: subprocess.Popen, run: Path, log: Path, after: int, send) -> int:
    """Wait for step `after` + 1, `send` a signal, wait for launcher and trainer to end; the step
    the trainer says it stopped at."""
    try:
        wait_for(lambda: (steps_logged(run) or [0])[-1] > after, 120, "a step under accelerate launch")
        trainer = int((run / LOCK_NAME).read_text().split()[0])
        # The trainer is the launcher's child (its stat's 4th field is the parent pid).
        assert int(Path(f"/proc/{trainer}/stat").read_text().rsplit(")", 1)[1].split()[1]) == launcher.pid
        send()
        launcher.wait(timeout=10)
        wait_for(lambda: not alive(trainer), 60, f"trainer {trainer} to exit")
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
    # The trainer's last line; under SIGINT the launcher's own traceback (KeyboardInterrupt, or
    # CalledProcessError when the trainer's exit wins the race) may come before or after it.
    said = [line for line in log.read_text().splitlines() if line.startswith("stopped ")]
    last = said[-1] if said else ""
    assert last.startswith("stopped at step ") and last.endswith("; resume with resume=auto"), log.read_text()[-3000:]
    stopped = int(last.split()[3].rstrip(";"))
    assert steps_logged(run) == list(range(1, stopped + 1))
    assert only_complete_checkpoints(run)[-1] == stopped  # saved although not on the save schedule
    return stopped


@pytest.mark.slow
def test_signals_to_accelerate_launch_stop_the_trainer(tiny_llama, tmp_path):
    run = tmp_path / "run"
    args = argv(tiny_llama, run, 6, "trainer.save_every=5", "trainer.eval_every=0")
    # SIGTERM to the launcher: accelerate's one-process launcher dies of it without passing it on;
    # the kernel tells the trainer, which finishes its step, saves it and exits.
    launcher = launch(args, tmp_path / "term.log")
    stopped = stop_launched(launcher, run, tmp_path / "term.log", 0, lambda: launcher.send_signal(signal.SIGTERM))
    assert launcher.returncode == -signal.SIGTERM
    log = (tmp_path / "term.log").read_text()
    no_traceback(log)
    assert "SIGTERM (its launcher exited) received: stopping at the end of this step" in log

    # Ctrl-C in a terminal: SIGINT to the launcher and the trainer at once. The launcher dies of
    # KeyboardInterrupt (its own traceback, accelerate's code) and its death sends the trainer the
    # SIGTERM above: that is not a second request, so the step still completes and is saved.
    launcher = launch(args + ["resume=auto"], tmp_path / "int.log")
    again = stop_launched(launcher, run, tmp_path / "int.log", stopped,
                          lambda: os.killpg(launcher.pid, signal.SIGINT))
    log = (tmp_path / "int.log").read_text()
    assert f"at step {stopped}\n" in log and "SIGINT received: stopping" in log
    # Resumed where the SIGTERM left it; each step logged once (stop_launched), and no trainer was
    # left behind to write a step twice.
    assert again > stopped
