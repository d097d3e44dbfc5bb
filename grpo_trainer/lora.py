"""LoRA on the policy (peft). The base weights stay frozen, so the reference model is the same
network with its adapters switched off: no second copy of the weights in memory."""

from __future__ import annotations

import torch

from grpo_trainer.config import LoraConfig


def wrap(model: torch.nn.Module, cfg: LoraConfig, gradient_checkpointing: bool,
         task_type: str = "CAUSAL_LM") -> torch.nn.Module:
    """Return `model` with LoRA adapters (only they train), or `model` itself when disabled.
    task_type "TOKEN_CLS" (the PPO critic): peft also trains the new head (`score`) in full."""
    if not cfg.enabled:
        return model
    import peft

    lora = peft.LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                           target_modules=list(cfg.target_modules), task_type=task_type)
    model = peft.get_peft_model(model, lora)
    if gradient_checkpointing:
        # With the embeddings frozen nothing before the first checkpointed block needs a grad,
        # and reentrant checkpointing would then drop the adapters' gradients.
        model.enable_input_require_grads()
    return model


def is_peft(model: torch.nn.Module) -> bool:
    return hasattr(model, "disable_adapter") and hasattr(model, "peft_config")


class AdapterDisabled:
    """Callable like a model: the policy's forward with every adapter off, i.e. the base model."""

    def __init__(self, peft_model):
        self.peft_model = peft_model

    def __call__(self, **inputs):
        with self.peft_model.disable_adapter():
            return self.peft_model(**inputs)
