"""Checkpoint files on disk: atomic publish, the COMPLETE marker, pruning, resume selection, a write
failure that leaves the previous checkpoint intact; and the non-finite update guard."""

from __future__ import annotations

import json
import logging
import math
import resource
import signal
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator

from grpo_trainer.checkpoint import (MARKER, CheckpointError, clear_run, latest_checkpoint, list_checkpoints,
                                     load_checkpoint, resolve_resume, save_checkpoint)
from grpo_trainer.faults import NonFiniteGuard, TrainingAborted


class _Tok:
    def save_pretrained(self, path):
        (Path(path) / "tokenizer_config.json").write_text("{}")


@pytest.fixture
def parts():
    """A small real model/optimizer behind a real (CPU) Accelerator: ~0.2 MB per checkpoint."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=1))
    acc = Accelerator(cpu=True)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model, opt = acc.prepare(model, opt)
    return acc, model, opt


def _save(parts, out, step, keep=2):
    acc, model, _ = parts
    return save_checkpoint(acc, model, _Tok(), out, step, {"step": step}, keep)


def test_save_is_complete_and_prunes_to_keep_last(parts, tmp_path):
    for step in (1, 2, 3):
        path = _save(parts, tmp_path, step)
        listed = json.loads((path / MARKER).read_text())  # the manifest: every file with its size
        assert listed["step"] == step and listed["files"]["state/optimizer.bin"][0] == (
            path / "state" / "optimizer.bin").stat().st_size
        assert sorted(listed["files"]) == sorted(p.relative_to(path).as_posix() for p in path.rglob("*")
                                                 if p.is_file() and p.name != MARKER)
        assert json.loads((path / "trainer_state.json").read_text()) == {"step": step}
        assert (path / "model" / "model.safetensors").is_file() and (path / "state" / "optimizer.bin").is_file()
    # keep_last=2: step 1 is gone; no temporary directory is left behind.
    assert [s for s, _ in list_checkpoints(tmp_path)] == [2, 3]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-000002", "checkpoint-000003"]


def test_resave_of_a_step_replaces_it(parts, tmp_path):
    acc, model, _ = parts
    _save(parts, tmp_path, 2)
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    _save(parts, tmp_path, 2)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [2]
    assert not list(tmp_path.glob(".old-*")) and not list(tmp_path.glob(".tmp-*"))


def test_resume_auto_skips_partial_checkpoints(parts, tmp_path, caplog):
    _save(parts, tmp_path, 1)
    _save(parts, tmp_path, 2)
    # A newer directory without its marker (a copy cut short) and a save killed before its rename.
    (tmp_path / "checkpoint-000003").mkdir()
    (tmp_path / ".tmp-checkpoint-000004" / "state").mkdir(parents=True)
    with caplog.at_level(logging.INFO, logger="grpo_trainer.checkpoint"):
        assert resolve_resume("auto", tmp_path) == tmp_path / "checkpoint-000002"
    assert "skipping" in caplog.text and "checkpoint-000003" in caplog.text
    assert ".tmp-checkpoint-000004" in caplog.text
    assert resolve_resume(str(tmp_path / "checkpoint-000001"), tmp_path) == tmp_path / "checkpoint-000001"
    with pytest.raises(FileNotFoundError, match="not a complete checkpoint"):
        resolve_resume(str(tmp_path / "checkpoint-000003"), tmp_path)
    assert resolve_resume(None, tmp_path) is None
    assert resolve_resume("auto", tmp_path / "empty") is None
    # The next save clears what the killed one left; keep_last=1 never deletes the newest complete one.
    _save(parts, tmp_path, 5, keep=1)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [5]
    assert not (tmp_path / ".tmp-checkpoint-000004").exists()


def test_load_restores_weights_and_optimizer(parts, tmp_path):
    acc, model, opt = parts
    model(torch.tensor([[1, 2, 3]]), labels=torch.tensor([[1, 2, 3]])).loss.backward()
    opt.step()
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    path = _save(parts, tmp_path, 1)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    opt.state.clear()
    assert load_checkpoint(acc, path, model) == {"step": 1}
    assert all(torch.equal(saved[k], v) for k, v in model.state_dict().items())
    assert len(opt.state) == len(list(model.parameters()))


def test_write_failure_leaves_the_previous_checkpoint_intact(parts, tmp_path):
    _save(parts, tmp_path, 1)
    before = {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    # A file-size limit makes the kernel refuse the write like a full disk would (EFBIG for ENOSPC).
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (4_000, hard))
    try:
        with pytest.raises(CheckpointError, match=r"could not save checkpoint-000002 .*\(File too large\).*"
                                                  r"previous checkpoint \(checkpoint-000001\) is intact"):
            _save(parts, tmp_path, 2)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old_handler)
    after = {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert after == before  # nothing added (the partial .tmp directory is removed), nothing changed
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoint-000001"


def test_clear_run_deletes_only_run_files(tmp_path):
    for name in ("checkpoint-000001/COMPLETE", ".tmp-checkpoint-000002/x", "config.yaml", "metrics.jsonl",
                 "samples.jsonl", "notes.txt", "data/train.jsonl"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    clear_run(tmp_path)
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == ["data", "data/train.jsonl",
                                                                                  "notes.txt"]


def test_non_finite_guard_counts_consecutive_bad_steps():
    acc = Accelerator(cpu=True)
    guard = NonFiniteGuard(max_bad_steps=2)
    assert guard.check(acc, 0.5, torch.tensor(1.0))
    assert guard.end_step(1) == {"train/skipped_update": 0.0}
    assert not guard.check(acc, math.nan, torch.tensor(1.0))
    assert guard.end_step(2) == {"train/skipped_update": 1.0}
    guard.raise_if_exhausted(2)  # 1 in a row < 2
    assert guard.check(acc, 0.1, torch.tensor(0.3))
    guard.end_step(3)  # a good step resets the count
    assert not guard.check(acc, 0.1, torch.tensor(math.inf))
    guard.end_step(4)
    assert not guard.check(acc, -math.inf, torch.tensor(2.0))
    guard.end_step(5)
    assert guard.state_dict() == {"consecutive": 2, "total": 3}
    with pytest.raises(TrainingAborted, match=r"stopped at step 5: 2 consecutive .* weights are those of step 3"):
        guard.raise_if_exhausted(5)
    other = NonFiniteGuard(max_bad_steps=2)
    other.load_state_dict(guard.state_dict())
    assert other.consecutive == 2 and other.total == 3
