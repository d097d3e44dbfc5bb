"""The schema: typed dataclasses of a run's configuration, and the error every check raises.

Nothing here reads files or checks values (checks.py does, loader.py reads YAML): this module
imports only the standard library, so every other config module can import it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal, Optional, Union


class ConfigError(ValueError):
    """A bad recipe or override; the message is one line naming the key and the fix."""

    def __init__(self, message: str):
        # One line even when a YAML problem text or a value carries a newline.
        super().__init__(" ".join(str(message).split("\n")))


def algo_names(table: str, default: Optional[str]) -> Any:
    """A str field whose allowed values are the names in ``grpo_trainer.algo.<table>`` (a registry
    or tuple), checked by checks.validate: the names are kept once, in algo/, not here."""
    return field(default=default, metadata={"choices": table})


@dataclass
class LoraConfig:
    """Low-rank adapters (peft) on the policy; the frozen base doubles as the reference model."""

    enabled: bool = False
    r: int = 16
    alpha: float = 32.0  # the update is scaled by alpha / r
    dropout: float = 0.0
    target_modules: list = field(default_factory=lambda: [
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])


@dataclass
class ModelConfig:
    # An alias ("smollm2-135m-instruct"), a local HF directory, or a hub id.
    name_or_path: str = "smollm2-135m-instruct"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    trust_remote_code: bool = False
    gradient_checkpointing: bool = False
    # Training on CPU: attention as two matmuls and a softmax, which keeps each layer's attention
    # probabilities for backward, while those of a forward's layers fit in this many GiB; else (and
    # on GPUs) torch's SDPA. Faster than SDPA on CPU (README "Speed"); 0: always SDPA.
    attention_gib: float = 1.0
    # fp32 linear layers on CPU through oneDNN (vLLM's CPU GEMM library) rather than torch's MKL
    # sgemm: 14 % faster fp32 forward+backward on the 2-core AMD machine (README "Speed"); results
    # differ in the last bits. false: torch's kernel. No effect under bf16 autocast or on GPUs.
    onednn_linear: bool = True
    lora: LoraConfig = field(default_factory=LoraConfig)
    # algorithm.advantage=gae: the critic's starting weights (a critic checkpoint's critic/ directory,
    # or any HF model of the policy's architecture); None: the policy's own weights, value head at 0.
    critic_path: Optional[str] = None


@dataclass
class DataConfig:
    # "synthetic" (built-in generator), a .jsonl/.json/.parquet path, or an HF dataset name.
    source: str = "synthetic"
    split: str = "train"
    num_examples: Optional[int] = None
    difficulty: int = 1
    seed: int = 0
    question_key: str = "question"
    answer_key: str = "answer"
    instruction: Optional[str] = None  # None: grpo_trainer.data.DEFAULT_INSTRUCTION
    system_prompt: Optional[str] = None
    max_prompt_length: int = 256
    # Held-out set for trainer.eval_every: None uses `source` with split "test".
    eval_source: Optional[str] = None
    # Online difficulty filter (data/sampler.py): [low, high], a pass-rate band; a prompt whose latest
    # group passed (correct, or reward > 0 without a correctness verifier) outside it is not drawn
    # for the next filter_cooldown steps and the sampler draws others instead. null: off.
    pass_rate_filter: Optional[list] = None
    filter_cooldown: int = 10


@dataclass
class SandboxConfig:
    """Limits on one tool call, enforced in its own process (grpo_trainer/tools)."""

    cpu_s: float = 5.0
    wall_s: float = 10.0
    memory_mb: int = 512
    output_chars: int = 4000
    num_workers: int = 2


@dataclass
class RolloutConfig:
    backend: Literal["vllm", "hf"] = "vllm"
    num_generations: int = 8  # G: samples per prompt
    max_completion_length: int = 128
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1  # -1: off
    seed: int = 0
    # CPU: GiB of KV cache for the colocated engine (vLLM takes 20 GiB unless told, all of it
    # resident); fractions allowed. auto: what one step's P*G samples need at once
    # (rollout/kv_cache.py; 0.38 GiB for the bench's 4 x 8 GSM8K samples on SmolLM2-135M in fp32).
    kv_cache_gib: Union[float, Literal["auto"]] = "auto"
    # GPU: fraction of device memory the colocated engine may take.
    gpu_memory_utilization: float = 0.3
    # false: vLLM compiles its model (torch.compile, from ~/.cache/vllm after the first start). On the
    # 2-core AVX512-BF16 CPU a bf16 rollout took 9.7 s against 12.2 s eager, for 15-20 s more per
    # engine start (60-95 s the first time); fp32 gained nothing in a step (README, "Speed").
    enforce_eager: bool = True
    # Engine weights dtype; None: model.dtype. bf16 samples ~1.6x faster on AVX512-BF16 CPUs.
    dtype: Optional[Literal["float32", "bfloat16", "float16"]] = None
    # GPU, vLLM: release the engine's weights and KV cache during the update (vLLM sleep mode,
    # level 2) and restore them for the weight push, so the trainer gets that memory.
    sleep: bool = False
    # Multi-turn tool use (rollout/multiturn.py). []: single-turn sampling. Each name is a tool the
    # sandbox runs (grpo_trainer/tools); the model calls one in the tool_format and its result is
    # appended as a tool message before generation continues.
    tools: list = field(default_factory=list)
    max_turns: int = 4  # generation turns per trajectory (a call in the last one is not run)
    max_tool_output_tokens: int = 128  # a tool result's body is cut to this many tokens
    # python_block: ```python\n<code>\n``` (runs the python tool); tool_call:
    # <tool_call>{"name": ..., "arguments": {...}}</tool_call>. Generation stops at the closing marker.
    tool_format: Literal["python_block", "tool_call"] = "python_block"
    sandbox: SandboxConfig = field(default_factory=SandboxConfig)


@dataclass
class RolloutCorrectionConfig:
    """Importance weights for the engine/trainer mismatch, rho = pi_trainer / pi_engine
    (algo/correction.py). [lower, upper] is also the band the always-on mismatch metrics count
    tokens and sequences outside of, whether or not a correction is on."""

    level: Optional[Literal["token", "sequence"]] = None  # null: no correction; sequence: geometric mean
    mode: Literal["truncate", "mask"] = "truncate"  # truncate: min(rho, upper) (TIS); mask: 0 outside (MIS)
    lower: float = 0.5
    upper: float = 2.0


@dataclass
class AlgorithmConfig:
    advantage: str = algo_names("ADVANTAGES", "grpo")  # a registered estimator (algo/advantages.py)
    # None: the estimator's own default (grpo: group std; dr_grpo, rloo: none).
    scale: Optional[str] = algo_names("SCALES", None)
    loss_agg: str = algo_names("AGGREGATIONS", "token_mean")
    policy_loss: str = algo_names("POLICY_LOSSES", "ppo_clip")  # a registered loss (algo/loss.py)
    eps_low: float = 0.2
    eps_high: float = 0.2  # > eps_low is DAPO's clip-higher
    dual_clip_c: Optional[float] = None
    gspo_eps_low: float = 3e-4  # policy_loss gspo / gspo_token: sequence-ratio clip (GSPO paper's values)
    gspo_eps_high: float = 4e-4
    cispo_eps_high: float = 0.28  # policy_loss cispo: IS-weight cap 1 + eps_high
    cispo_eps_low: Optional[float] = None  # null: no lower bound on the IS weight (as MiniMax-M1)
    beta: float = 0.0  # KL coefficient; 0 builds no reference model
    kl_estimator: str = algo_names("KL_ESTIMATORS", "k3")
    # "loss": beta * KL estimator per token in the loss (GRPO); "reward": beta * sum_t k1 taken
    # off each sequence's reward before the advantages (PPO-RLHF style).
    kl_mode: Literal["loss", "reward"] = "loss"
    kl_target: Optional[float] = None  # set: adaptive beta (PPO-penalty controller) towards it
    ref_reset_every: int = 0  # >0: copy the policy into the reference every N steps
    softmax_beta: float = 1.0  # temperature of the `softmax` estimator
    reinforce_baseline: bool = False  # `reinforce`: subtract the batch-mean reward
    num_iterations: int = 1  # mu: optimisation passes over one rollout batch
    num_mini_batches: int = 1  # optimizer steps per pass (the rollout batch split in this many)
    target_kl: Optional[float] = None  # stop the passes once KL(old||new) exceeds it
    rollout_correction: RolloutCorrectionConfig = field(default_factory=RolloutCorrectionConfig)
    # The old spelling of rollout_correction {level: token, mode: truncate, upper: tis_cap}; validate
    # moves it there (and sets it back to null).
    tis_cap: Optional[float] = None
    entropy_coef: float = 0.0
    # A row with advantage 0 and no KL/entropy term has exactly zero gradient: skip its forward and
    # backward (it still counts in the loss normalisers). False trains it anyway, as TRL does.
    skip_zero_advantage: bool = True
    # DAPO dynamic sampling. "refill": drop groups whose rewards all agree and sample fresh
    # prompts until the batch is full (or max_gen_rounds); "upweight": keep the batch and scale
    # the remaining groups' advantages by 1/(1 - dropped fraction).
    dynamic_sampling: Literal["off", "refill", "upweight"] = "off"
    max_gen_rounds: int = 3
    overlong_filter: bool = False  # DAPO: truncated completions are masked out of the loss
    overlong_penalty: bool = False  # DAPO eq. 13 soft length penalty added to the reward
    overlong_cache_len: int = 32  # L_cache: the penalty ramps over the last L_cache tokens
    overlong_penalty_factor: float = 1.0
    # Entropy-collapse control (arXiv 2505.22617; algo/covariance.py): "clip_cov" detaches, "kl_cov"
    # KL-penalises, the loss tokens with the largest log-prob x advantage covariance in the step.
    entropy_control: str = algo_names("ENTROPY_CONTROLS", "none")
    clip_cov_ratio: float = 2e-4  # fraction of loss tokens Clip-Cov detaches, drawn from those with
    clip_cov_low: float = 1.0  # clip_cov_low < cov < clip_cov_high
    clip_cov_high: float = 5.0
    kl_cov_ratio: float = 2e-3  # fraction of loss tokens KL-Cov penalises: those of largest cov
    kl_cov_coef: float = 1.0  # the penalty kl_cov_coef * |log pi - log pi_old| on them
    # advantage=gae (PPO with a learned critic, algo/gae.py): discount and GAE lambda; the critic's
    # clipped value loss band (null: unclipped); whitening of the advantages over the global batch.
    gamma: float = 1.0
    lam: float = 0.95
    value_clip: Optional[float] = 0.2
    whiten_advantages: bool = True


@dataclass
class CriticConfig:
    """The learned value function of algorithm.advantage=gae (critic.py): a copy of the policy's
    architecture with a scalar value head, trained with its own optimizer, scheduler and
    micro-batching on the same mini-batches as the policy."""

    enabled: bool = False
    learning_rate: float = 1e-5
    lr_scheduler: Literal["cosine", "linear", "constant"] = "constant"
    warmup_steps: int = 0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    micro_batch_size: int = 4
    micro_batch_tokens: Optional[int] = None


@dataclass
class RewardConfig:
    # Each: {name: registered verifier or "module.path:function", weight: float, kwargs: {...},
    # label: optional metric name}. validate() fills weight (1.0) and kwargs ({}) where left out.
    functions: list = field(default_factory=lambda: [
        {"name": "gsm8k", "weight": 1.0, "kwargs": {"mode": "strict"}},
        {"name": "format", "weight": 0.2, "kwargs": {"style": "gsm8k"}},
    ])
    timeout_s: float = 1.0
    max_chars: int = 4000
    num_workers: int = 2
    format_gated: bool = False


@dataclass
class TrainerConfig:
    output_dir: str = "runs/quickstart"
    max_steps: int = 20
    prompts_per_step: int = 8  # P: prompts per optimizer step (over all processes)
    # Sequences per forward/backward. A multiple of G computes each group's prompt once
    # (forward.py): 8 was 10-25% faster than 4 at G=8 but took ~1.2 GiB more peak memory
    # (README "Speed"); 4 keeps the CPU default small.
    micro_batch_size: int = 4
    # Also cap a micro-batch's computed tokens (distinct prompts x prompt length + rows x
    # completion length): bounds activation memory when completion lengths vary.
    micro_batch_tokens: Optional[int] = None
    learning_rate: float = 1e-5
    lr_scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_steps: int = 0
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.99
    max_grad_norm: float = 1.0
    seed: int = 42
    save_every: int = 0  # 0: only at the end
    keep_last: int = 2
    log_samples_every: int = 5  # and always the last step; 0: never
    num_log_samples: int = 2
    # Live logging while training, beside metrics.jsonl: "tensorboard" (RUN_DIR/tensorboard) and/or
    # "wandb" (WANDB_MODE=offline needs no account). [] : only the files.
    report_to: list = field(default_factory=list)
    torch_threads: int = 0  # 0: every core
    eval_every: int = 0  # >0: greedy pass@1 on held-out problems every N steps (and at the end)
    eval_examples: int = 64
    eval_samples: int = 0  # >0: also avg@n, n samples per held-out problem at rollout.temperature
    # Autocast for the policy's forward/backward; master weights and optimizer stay in model.dtype.
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    # Consecutive steps with a non-finite loss or gradient norm (each skipped) before the run stops.
    max_bad_steps: int = 3
    # Consecutive steps in which no reward function gave any sample a finite score (all NaN, inf
    # or None: nothing to learn from) before the run stops.
    max_no_reward_steps: int = 3
    # Stop when the engine's log-probs of its samples differ from the trainer's by more than this
    # k3 KL (nats/token, `mismatch/kl`): weights that did not reach the engine. null: never stop.
    max_mismatch_kl: Optional[float] = 0.1
    # Start fresh in an output_dir that holds another run (its checkpoints and logs are deleted).
    overwrite: bool = False
    # algorithm.advantage=gae: the first N steps train only the critic (the policy is frozen).
    critic_warmup: int = 0


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    critic: CriticConfig = field(default_factory=CriticConfig)
    # None: start fresh; "auto": newest checkpoint in output_dir; or a checkpoint path.
    resume: Optional[str] = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
