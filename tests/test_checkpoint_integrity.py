"""A checkpoint is trusted only while it holds what its manifest lists: pruning killed after any
number of deletions never leaves a listed checkpoint torn, and damage (a file deleted, cut short or
overwritten) is found before resume or evaluate loads it, told in one line, and resume=auto falls
back to the newest intact checkpoint."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import zlib
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator

from grpo_trainer import manifest
from grpo_trainer.checkpoint import (DamagedCheckpoint, _prune, list_checkpoints, resolve_resume,
                                     save_checkpoint)
from grpo_trainer.config import ConfigError, load_config
from grpo_trainer.evaluate import resolve_eval_model
from grpo_trainer.faults import KILL_ENV
from grpo_trainer.preflight import check_output_dir

REPO = Path(__file__).resolve().parents[1]


class _Tok:
    def save_pretrained(self, path):
        (Path(path) / "tokenizer_config.json").write_text("{}")


@pytest.fixture(scope="module")
def three(tmp_path_factory) -> Path:
    """Three real checkpoints (steps 1-3) of a tiny Llama, saved with keep_last=3: a template to copy."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=1))
    acc = Accelerator(cpu=True)
    model, opt = acc.prepare(model, torch.optim.AdamW(model.parameters(), lr=1e-2))
    root = tmp_path_factory.mktemp("three")
    for step in (1, 2, 3):
        save_checkpoint(acc, model, _Tok(), root, step, {"step": step}, keep_last=3)
    return root


def _copy(three: Path, dest: Path) -> Path:
    shutil.copytree(three, dest)
    return dest


def _prune_in_child(run: Path, kill_at: int) -> int:
    """Prune `run` to one checkpoint in a forked child that SIGKILLs itself after `kill_at` file
    deletions; returns its exit code (-9 when the kill landed). The child touches no torch."""
    pid = os.fork()
    if pid == 0:
        try:
            os.environ[KILL_ENV] = f"prune_delete@{kill_at}"
            _prune(run, 1)
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def test_prune_killed_after_every_number_of_deletions_never_lists_a_torn_checkpoint(three, tmp_path):
    files = sum(1 for p in (three / "checkpoint-000001").rglob("*") if p.is_file())
    assert files >= 8  # model/ (config, weights, tokenizer), state/ (4 files), trainer_state, COMPLETE
    for k in range(files + 2):  # 0: right after the rename; files: the last one; files + 1: never fires
        run = _copy(three, tmp_path / f"k{k}")
        code = _prune_in_child(run, k)
        assert code == (-signal.SIGKILL if k <= files else 0), (k, code)
        listed = list_checkpoints(run)
        # Whatever the moment, every listed checkpoint is whole, and the newest is always there.
        assert [manifest.verify(p) for _, p in listed] == [None] * len(listed), k
        assert listed[-1][0] == 3 and resolve_resume("auto", run) == run / "checkpoint-000003"
        # The killed removal is a leftover outside the checkpoint namespace, cleared by the next prune.
        assert len(list(run.glob(".del-checkpoint-*"))) == (1 if k <= files else 0)
        _prune(run, 1)
        assert sorted(p.name for p in run.iterdir()) == ["checkpoint-000003"]


def test_digest_samples_large_files_at_fixed_offsets(tmp_path):
    size = 5 * 2**20 + 12_345  # over the 4 MiB whole-file limit
    data = bytes((i * 7 + i // 251) % 256 for i in range(size))
    path = tmp_path / "big.bin"
    path.write_bytes(data)
    # Independent recomputation: the first and last MiB, and 16 blocks of 64 KiB spread between them.
    edge, block = 2**20, 2**16
    span = size - 2 * edge - block
    parts = [data[:edge]] + [data[edge + span * i // 15:][:block] for i in range(16)] + [data[-edge:]]
    crc = 0
    for part in parts:
        crc = zlib.crc32(part, crc)
    assert manifest.digest(path, size) == f"{crc:08x}"
    small = tmp_path / "small.bin"
    small.write_bytes(b"abc")
    assert manifest.digest(small, 3) == f"{zlib.crc32(b'abc'):08x}" == "352441c2"


def _damage(ckpt: Path, how: str) -> str:
    """Damage one file as a user would meet it; returns the phrase verify() must report."""
    if how == "deleted":
        (ckpt / "state" / "optimizer.bin").unlink()
        return "state/optimizer.bin is missing"
    if how == "cut":
        path = ckpt / "model" / "model.safetensors"
        size = path.stat().st_size
        os.truncate(path, size // 2)
        return f"model/model.safetensors has {size // 2:,} bytes, {size:,} were saved"
    path = ckpt / "model" / "model.safetensors"  # same size, other bytes: only the checksum sees it
    raw = bytearray(path.read_bytes())
    raw[-100:] = bytes(100)
    path.write_bytes(bytes(raw))
    return "model/model.safetensors differs from what was saved (checksum mismatch)"


@pytest.mark.parametrize("how", ["deleted", "cut", "overwritten"])
def test_resume_auto_falls_back_to_the_newest_intact_checkpoint(three, tmp_path, caplog, how):
    run = _copy(three, tmp_path / "run")
    phrase = _damage(run / "checkpoint-000003", how)
    assert manifest.verify(run / "checkpoint-000003").startswith(phrase)
    with caplog.at_level(logging.WARNING, logger="grpo_trainer.checkpoint"):
        assert resolve_resume("auto", run) == run / "checkpoint-000002"
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and lines[0].startswith("resume=auto: checkpoint-000003 is damaged (") and phrase in lines[0]
    assert lines[0].endswith("; using checkpoint-000002 instead")
    # Naming the damaged checkpoint is one line saying what is damaged.
    with pytest.raises(DamagedCheckpoint, match="is damaged: " + phrase.split(" (")[0]):
        resolve_resume(str(run / "checkpoint-000003"), run)


def test_every_checkpoint_damaged_is_an_error_naming_the_newest(three, tmp_path):
    run = _copy(three, tmp_path / "run")
    for step in (1, 2, 3):
        (run / f"checkpoint-00000{step}" / "state" / "optimizer.bin").unlink()
    with pytest.raises(DamagedCheckpoint, match=r"every checkpoint in .* is damaged \(newest, checkpoint-000003: "
                                                r"state/optimizer\.bin is missing\)"):
        resolve_resume("auto", run)


def test_preflight_reports_damage_before_anything_loads(three, tmp_path):
    run = _copy(three, tmp_path / "run")
    _damage(run / "checkpoint-000002", "cut")
    cfg = load_config(REPO / "recipes/quickstart.yaml", [f"trainer.output_dir={run}",
                                                        f"resume={run / 'checkpoint-000002'}"])
    with pytest.raises(ConfigError, match=r"^resume='.*checkpoint-000002' is damaged: model/model\.safetensors has .*; pass another "
                                              r"checkpoint, or resume=auto for the newest intact one$"):
        check_output_dir(cfg)


def test_evaluate_refuses_a_torn_model_export_and_skips_it_in_a_run_dir(three, tmp_path, caplog):
    run = _copy(three, tmp_path / "run")
    (run / "checkpoint-000003" / "model" / "model.safetensors").unlink()
    with pytest.raises(ValueError, match=r"checkpoint-000003' is damaged: model/model\.safetensors is missing; "):
        resolve_eval_model(str(run / "checkpoint-000003"))
    # Damage outside model/ does not matter to an evaluation: step 2 is used, with one line saying why.
    (run / "checkpoint-000002" / "state" / "optimizer.bin").unlink()
    with caplog.at_level(logging.WARNING, logger="grpo_trainer.checkpoint"):
        assert resolve_eval_model(str(run)) == (str(run / "checkpoint-000002" / "model"), 2)
    assert "checkpoint-000003 is damaged (model/model.safetensors is missing); using checkpoint-000002" in caplog.text
