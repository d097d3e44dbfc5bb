"""Checkpoints that survive a crash at any moment, and finding the one to resume from.

Layout of `<output_dir>/checkpoint-000012/`:
    model/              HF format (config, safetensors, tokenizer): loadable by transformers and vLLM;
                        with LoRA these are the merged weights (base + adapter)
    adapter/            LoRA only: the peft adapter (PeftModel.from_pretrained(base, adapter/))
    state/              accelerate state: model, optimizer, scheduler, every process's RNG
    trainer_state.json  step, and the state_dict() of each of the trainer's `stateful` parts
                        (data sampler position, non-finite guard, ...)
    COMPLETE            written last; a directory without it is never loaded

A save writes into `.tmp-checkpoint-000012/`, fsyncs, then renames (and fsyncs the parent): the
rename is atomic, so a kill mid-save leaves either the old set of checkpoints or the new one, never
a torn directory; the next save removes the leftover `.tmp-*`. Pruning runs only after the new
checkpoint is published, so the newest complete one is never deleted. A failed write (disk full,
permissions) raises CheckpointError and leaves every existing checkpoint as it was.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path

from grpo_trainer.lora import is_peft
from grpo_trainer.rollout.weights import iter_full_weights

log = logging.getLogger(__name__)

MARKER = "COMPLETE"
_NAME = re.compile(r"^checkpoint-(\d+)$")


def checkpoint_dir(output_dir: str | Path, step: int) -> Path:
    return Path(output_dir) / f"checkpoint-{step:06d}"


def list_checkpoints(output_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints, oldest first."""
    root = Path(output_dir)
    found = []
    if root.is_dir():
        for child in root.iterdir():
            if child.name.startswith(".tmp-checkpoint-"):
                log.info("ignoring %s: a save that was interrupted before completing", child)
            m = _NAME.match(child.name)
            if not m or not child.is_dir():
                continue
            if not (child / MARKER).is_file():
                log.warning("skipping %s: it has no %s marker (a save was interrupted)", child, MARKER)
                continue
            found.append((int(m.group(1)), child))
    return sorted(found)


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    found = list_checkpoints(output_dir)
    return found[-1][1] if found else None


def resolve_resume(resume: str | None, output_dir: str | Path) -> Path | None:
    """`resume` is None (fresh), "auto" (newest complete checkpoint, or fresh if none), or a path."""
    if resume is None:
        return None
    if resume == "auto":
        found = latest_checkpoint(output_dir)
        if found is None:
            log.info("resume=auto: no complete checkpoint in %s; starting from step 0", output_dir)
        return found
    path = Path(resume)
    if not (path / MARKER).is_file():
        raise FileNotFoundError(f"resume={resume!r} is not a complete checkpoint (no {MARKER} file): "
                                f"pass a checkpoint-NNNNNN directory or resume=auto")
    return path


def _fsync_tree(root: Path) -> None:
    for dirpath, _, files in os.walk(root):
        for name in files:
            with open(os.path.join(dirpath, name), "rb") as fh:
                os.fsync(fh.fileno())
        fd = os.open(dirpath, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class CheckpointError(RuntimeError):
    """A save failed (disk full, permissions); the previous checkpoints are untouched."""


def save_checkpoint(accelerator, model, tokenizer, output_dir: str | Path, step: int,
                    trainer_state: dict, keep_last: int) -> Path:
    """Collective: every process must call it. Returns the final checkpoint directory.

    A failure while writing (ENOSPC, EACCES, ...) removes the partial temporary directory and
    raises CheckpointError on every process; nothing that existed before is modified. Any
    exception counts: the writers wrap the OS error (safetensors: SafetensorError, torch.save:
    RuntimeError)."""
    import torch

    from grpo_trainer.faults import kill_point

    final = checkpoint_dir(output_dir, step)
    tmp = final.with_name(".tmp-" + final.name)
    error: Exception | None = None
    try:
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(tmp / "state"))
        kill_point("save_state", step)
        state_dict = accelerator.get_state_dict(model)  # gathers ZeRO-3 shards (collective)
        unwrapped = accelerator.unwrap_model(model)
        merged = _merged_weights(accelerator, unwrapped) if is_peft(unwrapped) else None  # collective too
        if accelerator.is_main_process:
            if merged is not None:  # LoRA: the adapter, plus merged weights any loader can read
                unwrapped.save_pretrained(tmp / "adapter", state_dict=state_dict)  # keeps only lora_ tensors
                unwrapped.get_base_model().save_pretrained(tmp / "model", state_dict=merged, safe_serialization=True)
            else:
                unwrapped.save_pretrained(tmp / "model", state_dict=state_dict, safe_serialization=True)
            tokenizer.save_pretrained(tmp / "model")
            (tmp / "trainer_state.json").write_text(json.dumps(trainer_state, indent=1))
            kill_point("save_model", step)
            _fsync_tree(tmp)
            (tmp / MARKER).write_text(f"{step}\n")
            _fsync_tree(tmp)
            kill_point("save_marker", step)
    except Exception as exc:  # noqa: BLE001 - re-raised below as CheckpointError, on every process
        error = exc
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
    # One verdict for all processes, so none goes on to rename a half-written directory.
    failed = accelerator.reduce(torch.tensor(float(error is not None), device=accelerator.device), "sum").item()
    if failed:
        latest = latest_checkpoint(output_dir)
        why = ("another process failed to write" if error is None else
               error.strerror if isinstance(error, OSError) and error.strerror else
               f"{type(error).__name__}: {' '.join(str(error).split())[:200]}")
        raise CheckpointError(
            f"could not save {final.name} in {output_dir} ({why}): free disk space or fix permissions, then "
            f"resume=auto; the previous checkpoint ({latest.name if latest else 'none'}) is intact") from error
    if accelerator.is_main_process:
        _publish(tmp, final)
        kill_point("save_prune", step)
        _prune(output_dir, keep_last)
    accelerator.wait_for_everyone()
    return final


def _publish(tmp: Path, final: Path) -> None:
    """Atomically make `tmp` the checkpoint `final`, durably (the rename itself is fsynced)."""
    old = final.with_name(".old-" + final.name)
    if final.exists():  # a re-save of the same step (e.g. after a resume): never a moment without one
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(tmp, final)
    fd = os.open(final.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    shutil.rmtree(old, ignore_errors=True)


def _merged_weights(accelerator, peft_model) -> dict:
    # Every rank walks the weights (ZeRO-3 gathers are collective); only the main one keeps them.
    merged = {}
    for name, tensor in iter_full_weights(peft_model):
        if accelerator.is_main_process:
            merged[name] = tensor.detach().to("cpu", copy=True)
    return merged


def _prune(output_dir: str | Path, keep_last: int) -> None:
    """Keep the newest `keep_last` (>= 1) complete checkpoints; drop what killed saves left."""
    complete = list_checkpoints(output_dir)
    for _, path in complete[:-max(keep_last, 1)]:
        shutil.rmtree(path, ignore_errors=True)
    for leftover in Path(output_dir).glob(".tmp-checkpoint-*"):
        shutil.rmtree(leftover, ignore_errors=True)


RUN_FILES = ("config.yaml", "metrics.jsonl", "samples.jsonl")


def clear_run(output_dir: str | Path) -> None:
    """trainer.overwrite: delete what a run writes (checkpoints, logs), nothing else in the directory."""
    root = Path(output_dir)
    for pattern in ("checkpoint-*", ".tmp-checkpoint-*", ".old-checkpoint-*", *RUN_FILES):
        for path in root.glob(pattern):
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    log.info("trainer.overwrite: cleared the previous run in %s", root)


def load_checkpoint(accelerator, path: Path) -> dict:
    """Restore model/optimizer/scheduler/RNG in place; return the trainer state."""
    accelerator.load_state(str(path / "state"))
    return json.loads((path / "trainer_state.json").read_text())
