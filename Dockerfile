# GPU image: CUDA + PyTorch + vLLM + DeepSpeed + grpo_trainer, running a recipe on start.
#   docker build -t grpo_trainer .
#   docker run --gpus all --ipc=host -v $HOME/.cache/huggingface:/root/.cache/huggingface \
#     -v $PWD/runs:/app/runs grpo_trainer                      # the default recipe on one GPU
#   docker run --gpus all --ipc=host ... grpo_trainer \
#     accelerate launch --config_file configs/accelerate/zero2.yaml --num_processes 8 \
#     -m grpo_trainer.train --recipe recipes/dapo_gsm8k_qwen2.5-1.5b.yaml
# --ipc=host: DataLoader workers and NCCL use shared memory beyond Docker's 64 MB default.
FROM nvidia/cuda:12.8.1-cudnn-devel-ubuntu22.04

ENV DEBIAN_FRONTEND=noninteractive PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    HF_HOME=/root/.cache/huggingface
# python3.11 (the project's version); build-essential + ninja: DeepSpeed compiles its ops on first use.
RUN apt-get update && apt-get install -y --no-install-recommends \
        software-properties-common git curl build-essential ninja-build \
    && add-apt-repository -y ppa:deadsnakes/ppa && apt-get update \
    && apt-get install -y --no-install-recommends python3.11 python3.11-dev python3.11-venv \
    && rm -rf /var/lib/apt/lists/* \
    && python3.11 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHON=python

WORKDIR /app
# Dependencies first (cached layer), then the code.
COPY pyproject.toml README.md ./
COPY scripts/install.sh scripts/install.sh
COPY grpo_trainer grpo_trainer
# install.sh picks the GPU path when nvidia-smi works; `docker build` has no GPU, so say so.
RUN pip install --upgrade pip setuptools wheel \
    && GRPO_TRAINER_GPU=1 bash scripts/install.sh
COPY . .

CMD ["accelerate", "launch", "--config_file", "configs/accelerate/gpu.yaml", "-m", "grpo_trainer.train", \
     "--recipe", "recipes/grpo_gsm8k_qwen2.5-0.5b.yaml"]
