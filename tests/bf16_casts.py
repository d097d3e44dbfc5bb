"""Run by tests/test_update.py in a fresh interpreter (accelerate keeps one AcceleratorState per
process): one policy update, and one critic value pass, of a tiny Llama under accelerate's bf16
autocast, counting how often autocast casts one weight to bf16.

    python tests/bf16_casts.py MODEL_DIR

Prints one JSON line: {"policy": casts in the update, "micro_batches": ..., "critic": casts in the
value pass}."""

from __future__ import annotations

import json
import sys

import torch
from torch.utils._python_dispatch import TorchDispatchMode

import grpo_trainer.distributed as distributed
from grpo_trainer.config import AlgorithmConfig, CriticConfig, ModelConfig
from grpo_trainer.critic import Critic
from grpo_trainer.forward import record_micro_batches
from grpo_trainer.models import load_causal_lm
from grpo_trainer.record import RolloutRecord
from grpo_trainer.rollout import RolloutBatch
from grpo_trainer.update import PolicyUpdater


class CastCounter(TorchDispatchMode):
    """Counts `aten._to_copy` of one tensor (by storage) to bf16."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.ptr, self.casts = weight.data_ptr(), 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if (func is torch.ops.aten._to_copy.default and args[0].data_ptr() == self.ptr
                and kwargs.get("dtype") == torch.bfloat16):
            self.casts += 1
        return func(*args, **kwargs)


def main() -> None:
    distributed.cpu_has_native_bf16 = lambda: True  # about how often, not how fast: any CPU runs bf16
    acc = distributed.make_accelerator("bf16", 8, 1.0)
    model = load_causal_lm(sys.argv[1])
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    model, opt = acc.prepare(model, opt)
    gen = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, 4000, (n,), generator=gen).tolist() for n in (5, 9)]
    completions = [torch.randint(3, 4000, (n,), generator=gen).tolist() for n in (3, 8, 5, 1)]
    batch = RolloutBatch(prompts, completions, [[-1.0] * len(c) for c in completions], [False] * 4)
    record = RolloutRecord.from_batch(batch, [0, 1], 0, [""] * 4).with_advantages(torch.tensor([1.0, -1, 0.5, -0.5]))
    updater = PolicyUpdater(acc, model, opt, None, 0, AlgorithmConfig(), 1.0, 8, 1.0, 8)
    weight = model.model.layers[0].self_attn.q_proj.weight
    with CastCounter(weight) as policy:
        updater.update(record, beta=0.0)
    micro_batches = len(record_micro_batches(record, list(range(4)), 8))
    critic = Critic(acc, CriticConfig(), AlgorithmConfig(), sys.argv[1], ModelConfig(name_or_path=sys.argv[1]), 1, True)
    with CastCounter(critic.model.backbone.model.layers[0].self_attn.q_proj.weight) as values:
        critic.values(record)
    print(json.dumps({"policy": policy.casts, "micro_batches": micro_batches, "critic": values.casts,
                      "mixed": acc.mixed_precision}))


if __name__ == "__main__":
    main()
