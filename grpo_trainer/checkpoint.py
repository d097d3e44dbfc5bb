"""Checkpoints that survive a crash at any moment, and finding the one to resume from.

Layout of `<output_dir>/checkpoint-000012/`:
    model/              HF format (config, safetensors, tokenizer): loadable by transformers and vLLM;
                        with LoRA these are the merged weights (base + adapter)
    adapter/            LoRA only: the peft adapter (PeftModel.from_pretrained(base, adapter/))
    critic/             algorithm.advantage=gae only: the critic, HF `*ForTokenClassification` with
                        num_labels=1 (AutoModelForTokenClassification.from_pretrained(critic/); the
                        value head is its `score` layer); with LoRA the critic's peft adapter and
                        head; its optimizer and scheduler are in state/
    state/              accelerate state: optimizer, scheduler, every process's RNG; the model's
                        weights only under DeepSpeed (its own format, partitioned)

The weights are written once: without DeepSpeed, resume reads them back from model/ (or, with LoRA,
from adapter/ over the base model the trainer has just loaded), the same tensors in the same dtype,
so a resumed run stays bit-identical and a checkpoint holds one copy (the 135M model in fp32:
0.54 GB less per checkpoint). Checkpoints written before this still hold state/model.safetensors,
which is then loaded as before.
    trainer_state.json  step, and the state_dict() of each of the trainer's `stateful` parts
                        (data sampler position, non-finite guard, ...)
    COMPLETE            written last: the manifest of every file above (sizes, sampled checksums,
                        see manifest.py); a directory without it is never loaded

A save writes into `.tmp-checkpoint-000012/`, fsyncs, then renames (and fsyncs the parent): the
rename is atomic, so a kill mid-save leaves either the old set of checkpoints or the new one, never
a torn directory; the next save removes the leftover `.tmp-*`. Pruning runs only after the new
checkpoint is published, so the newest complete one is never deleted, and it first renames a
checkpoint out of the `checkpoint-*` namespace (`.del-checkpoint-*`, durably) before deleting its
files one by one: a kill at any moment of a deletion leaves a leftover that nothing lists, never a
listed checkpoint with its files half gone. A failed write (disk full, permissions) raises
CheckpointError and leaves every existing checkpoint as it was. Resuming verifies the chosen
checkpoint against its manifest and falls back to the newest one that verifies.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
from pathlib import Path

from grpo_trainer import distributed, manifest
from grpo_trainer.faults import kill_point
from grpo_trainer.lora import is_peft
from grpo_trainer.manifest import MARKER
from grpo_trainer.weights import iter_full_weights

log = logging.getLogger(__name__)

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


class DamagedCheckpoint(ValueError):
    """A checkpoint's files no longer match its manifest; the message names the damage."""


def newest_verified(output_dir: str | Path, prefix: str = "", purpose: str = "resume=auto") -> Path | None:
    """The newest complete checkpoint whose files (under `prefix`) match its manifest; None if there
    is no complete checkpoint. Skipping a damaged one is said in one log line; if every one is
    damaged, DamagedCheckpoint names the newest's damage."""
    found = list_checkpoints(output_dir)
    damaged = []
    for _, path in reversed(found):
        problem = manifest.verify(path, prefix)
        if problem is None:
            if damaged:
                log.warning("%s: %s is damaged (%s); using %s instead", purpose, damaged[0][0].name,
                            damaged[0][1], path.name)
            return path
        damaged.append((path, problem))
    if damaged:
        path, problem = damaged[0]
        raise DamagedCheckpoint(f"{purpose}: every checkpoint in {str(output_dir)!r} is damaged (newest, "
                                f"{path.name}: {problem}); restore it from a copy, or start over with "
                                "trainer.overwrite=true")
    return None


def check_checkpoint(path: Path, what: str, fix: str, prefix: str = "") -> None:
    """One line naming the damage of the checkpoint `path`, if any (DamagedCheckpoint)."""
    problem = manifest.verify(path, prefix)
    if problem is not None:
        raise DamagedCheckpoint(f"{what} is damaged: {problem}; {fix}")


def resolve_resume(resume: str | None, output_dir: str | Path) -> Path | None:
    """`resume` is None (fresh), "auto" (newest intact checkpoint, or fresh if none), or a path.
    Raises DamagedCheckpoint (a ValueError) naming the damage of a checkpoint that is not intact."""
    if resume is None:
        return None
    if resume == "auto":
        found = newest_verified(output_dir)
        if found is None:
            log.info("resume=auto: no complete checkpoint in %s; starting from step 0", output_dir)
        return found
    path = Path(resume)
    if not (path / MARKER).is_file():
        raise FileNotFoundError(f"resume={resume!r} is not a complete checkpoint (no {MARKER} file): "
                                f"pass a checkpoint-NNNNNN directory or resume=auto")
    check_checkpoint(path, f"resume={resume!r}", "pass another checkpoint, or resume=auto for the newest intact one")
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
                    trainer_state: dict, keep_last: int, critic=None) -> Path:
    """Collective: every process must call it. Returns the final checkpoint directory.

    A failure while writing (ENOSPC, EACCES, ...) removes the partial temporary directory and
    raises CheckpointError on every process; nothing that existed before is modified. Any
    exception counts: the writers wrap the OS error (safetensors: SafetensorError, torch.save:
    RuntimeError)."""
    import torch

    final = checkpoint_dir(output_dir, step)
    tmp = final.with_name(".tmp-" + final.name)
    error: Exception | None = None
    written = 0  # bytes in the largest file a failed save got out
    try:
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        accelerator.wait_for_everyone()
        # Without DeepSpeed accelerate would write the model a second time (state/model.safetensors):
        # dropped here, model/ (or adapter/) below is what resume reads.
        hook = accelerator.register_save_state_pre_hook(lambda models, weights, out: weights.clear())
        try:
            accelerator.save_state(str(tmp / "state"))
        finally:
            hook.remove()
        kill_point("save_state", step)
        state_dict = accelerator.get_state_dict(model)  # gathers ZeRO-3 shards (collective)
        unwrapped = accelerator.unwrap_model(model)
        merged = _merged_weights(accelerator, unwrapped) if is_peft(unwrapped) else None  # collective too
        critic_state = None if critic is None else accelerator.get_state_dict(critic)  # collective too
        if accelerator.is_main_process:
            if merged is not None:  # LoRA: the adapter, plus merged weights any loader can read
                unwrapped.save_pretrained(tmp / "adapter", state_dict=state_dict)  # keeps only lora_ tensors
                unwrapped.get_base_model().save_pretrained(tmp / "model", state_dict=merged, safe_serialization=True)
            else:
                unwrapped.save_pretrained(tmp / "model", state_dict=state_dict, safe_serialization=True)
            tokenizer.save_pretrained(tmp / "model")
            if critic_state is not None:  # the ValueModel's `backbone.` prefix dropped: HF's (or peft's) names
                accelerator.unwrap_model(critic).backbone.save_pretrained(
                    tmp / "critic", state_dict={k.removeprefix("backbone."): v for k, v in critic_state.items()},
                    safe_serialization=True)  # peft keeps only the adapter and the head
            (tmp / "trainer_state.json").write_text(json.dumps(trainer_state, indent=1))
            kill_point("save_model", step)
            _fsync_tree(tmp)
            manifest.write_marker(tmp, step)
            _fsync_tree(tmp)
            kill_point("save_marker", step)
    except Exception as exc:  # noqa: BLE001 - re-raised below as CheckpointError, on every process
        error = exc
        if accelerator.is_main_process:
            written = max((f.stat().st_size for f in tmp.rglob("*") if f.is_file()), default=0)
            shutil.rmtree(tmp, ignore_errors=True)
    # One verdict for all processes, so none goes on to rename a half-written directory.
    failed = accelerator.reduce(torch.tensor(float(error is not None), device=accelerator.device), "sum").item()
    if failed:
        latest = latest_checkpoint(output_dir)
        why = ("another process failed to write" if error is None else
               error.strerror if isinstance(error, OSError) and error.strerror else
               _write_refused(Path(output_dir), written) or f"{type(error).__name__}: {' '.join(str(error).split())[:200]}")
        raise CheckpointError(
            f"could not save {final.name} in {output_dir} ({why}): free disk space or fix permissions, then "
            f"resume=auto; the previous checkpoint ({latest.name if latest else 'none'}) is intact") from error
    if accelerator.is_main_process:
        _publish(tmp, final)
        kill_point("save_prune", step)
        _prune(output_dir, keep_last)
    accelerator.wait_for_everyone()
    return final


def _write_refused(directory: Path, written: int) -> str | None:
    """The operating system's reason a write in `directory` fails now ("No space left on device",
    "File too large", ...), found by writing one file a MiB longer than the longest the failed save
    got out: torch.save reports a refused write only as a C++ stream error that names no cause."""
    probe = directory / ".write-probe"
    try:
        with open(probe, "wb") as fh:
            chunk = bytes(2**20)
            for _ in range(written // len(chunk) + 1):
                fh.write(chunk)
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as exc:
        return exc.strerror
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()
    return None


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _publish(tmp: Path, final: Path) -> None:
    """Atomically make `tmp` the checkpoint `final`, durably (the rename itself is fsynced)."""
    old = final.with_name(".old-" + final.name)
    if final.exists():  # a re-save of the same step (e.g. after a resume): never a moment without one
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(tmp, final)
    _fsync_dir(final.parent)
    shutil.rmtree(old, ignore_errors=True)


def _remove(path: Path) -> None:
    """Delete a published checkpoint so that no reader ever lists it torn: rename it out of the
    `checkpoint-*` namespace (fsynced, so a power cut cannot bring the name back), then delete
    file by file. Kill points after the rename and after every deletion (tests)."""
    gone = path.with_name(".del-" + path.name)
    shutil.rmtree(gone, ignore_errors=True)  # a leftover of an earlier kill, if any
    os.replace(path, gone)
    _fsync_dir(path.parent)
    deleted = 0
    kill_point("prune_delete", deleted)
    for dirpath, dirs, files in os.walk(gone, topdown=False):
        for name in files:
            os.unlink(os.path.join(dirpath, name))
            deleted += 1
            kill_point("prune_delete", deleted)
        for name in dirs:
            os.rmdir(os.path.join(dirpath, name))
    os.rmdir(gone)


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
        _remove(path)
    for pattern in (".tmp-checkpoint-*", ".del-checkpoint-*"):
        for leftover in Path(output_dir).glob(pattern):
            shutil.rmtree(leftover, ignore_errors=True)


RUN_FILES = ("config.yaml", "metrics.jsonl", "samples.jsonl")


def clear_run(output_dir: str | Path) -> None:
    """trainer.overwrite: delete what a run writes (checkpoints, logs), nothing else in the directory."""
    root = Path(output_dir)
    for pattern in ("checkpoint-*", ".tmp-checkpoint-*", ".old-checkpoint-*", ".del-checkpoint-*", *RUN_FILES):
        for path in root.glob(pattern):
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    log.info("trainer.overwrite: cleared the previous run in %s", root)


def load_checkpoint(accelerator, path: Path, model, critic=None) -> dict:
    """Restore model/optimizer/scheduler/RNG in place; return the trainer state. Damage that the
    manifest's sampled checksums missed still ends in one line (DamagedCheckpoint), not a traceback."""
    state = path / "state"
    # DeepSpeed's engine keeps its own (partitioned) copy; so do checkpoints written before the
    # weights were written once.
    own_copy = distributed.deepspeed_plugin(accelerator) is not None or any(
        (state / name).is_file() for name in ("model.safetensors", "pytorch_model.bin"))
    # Without its own copy of the weights (every checkpoint since they are written once) accelerate
    # loads no model; they are read from model/ or adapter/ below.
    hook = None if own_copy else accelerator.register_load_state_pre_hook(lambda models, input_dir: models.clear())
    try:
        if critic is not None and not (path / "critic").is_dir():
            raise FileNotFoundError("it has no critic/: it was written by a run without algorithm.advantage=gae")
        accelerator.load_state(str(state))
        if not own_copy:
            _load_weights(accelerator.unwrap_model(model), path)
            if critic is not None:
                _load_weights(accelerator.unwrap_model(critic).backbone, path, "critic")
        return json.loads((path / "trainer_state.json").read_text())
    except Exception as exc:  # noqa: BLE001 - safetensors, pickle and json each raise their own kind
        raise DamagedCheckpoint(f"{path} cannot be loaded ({type(exc).__name__}: {' '.join(str(exc).split())[:200]}); "
                                "pass another checkpoint, or resume=auto after moving this one away") from exc
    finally:
        if hook is not None:
            hook.remove()


def _load_weights(model, path: Path, sub: str = "model") -> None:
    """Put a checkpoint's saved weights into `model` in place: the adapter's over the base weights
    with LoRA (the base is frozen: the trainer's freshly loaded one is the one trained with), else
    every tensor of model/ (weights tied to another, e.g. lm_head to the embedding, are saved once)."""
    from safetensors.torch import load_file

    if is_peft(model):
        from peft import set_peft_model_state_dict

        where = "adapter" if sub == "model" else sub  # the policy's adapter, or the LoRA critic's
        result = set_peft_model_state_dict(model, load_file(str(path / where / "adapter_model.safetensors")))
        if result.unexpected_keys:
            raise ValueError(f"{where}/ does not fit this model: {result.unexpected_keys[:3]} ...")
        return
    files = sorted((path / sub).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{path / sub} has no .safetensors weights")
    saved = {}
    for f in files:
        saved.update(load_file(str(f)))
    missing, unexpected = model.load_state_dict(saved, strict=False)
    loaded = {t.data_ptr() for n, t in model.state_dict().items() if n in saved}
    untied = [n for n in missing if model.state_dict()[n].data_ptr() not in loaded]
    if untied or unexpected:
        raise ValueError(f"{sub}/ does not fit this model: missing {untied[:3]}, unexpected {unexpected[:3]}")
