"""The one place that turns the trainer's (possibly sharded, possibly LoRA-wrapped) policy into
full HF-named tensors for the rollout engine and for checkpoints.

ZeRO-3: each parameter is gathered one at a time (a LoRA layer: its base weight and its two
factors together), so no rank ever holds more than one full layer beyond its shard.
LoRA (peft): the engine gets merged weights W + (alpha/r) * B @ A, computed into a new tensor on
the fly (the trainer's W stays the frozen base), under the plain HF name: peft's
`base_model.model.` prefix and `.base_layer` dropped, the `lora_` factors not sent at all.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch


def _is_zero3(param: torch.Tensor) -> bool:
    return hasattr(param, "ds_id") and hasattr(param, "ds_status")


@contextlib.contextmanager
def _gathered(params: list[torch.Tensor]):
    if any(_is_zero3(p) for p in params):
        import deepspeed

        with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
            yield
    else:
        yield


def hf_name(peft_name: str) -> str:
    """`base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight`
    -> `model.layers.0.self_attn.q_proj.weight`."""
    name = peft_name.removeprefix("base_model.model.")
    return name.replace(".base_layer.", ".")


def _lora_owners(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """Name of each LoRA-wrapped base weight -> the peft layer that owns it."""
    owners = {}
    for mod_name, module in model.named_modules():
        if hasattr(module, "lora_A") and hasattr(module, "base_layer") and len(module.lora_A):
            owners[f"{mod_name}.base_layer.weight"] = module
    return owners


def _merged(module, weight: torch.Tensor) -> torch.Tensor:
    out = weight.detach().clone()
    for adapter in module.active_adapters:
        if adapter not in module.lora_A:
            continue
        if getattr(module, "use_dora", {}).get(adapter, False):
            raise ValueError("DoRA adapters cannot be merged here: set model.lora to plain LoRA")
        a = module.lora_A[adapter].weight.detach()  # (r, in)
        b = module.lora_B[adapter].weight.detach()  # (out, r)
        delta = (b.float() @ a.float()) * module.scaling[adapter]  # (out, in)
        if getattr(module, "fan_in_fan_out", False):  # GPT-2 style Conv1D stores W transposed
            delta = delta.T
        out += delta.to(out.dtype)
    return out


def iter_full_weights(model: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (HF checkpoint name, full tensor) for every parameter of the unwrapped policy.

    Must be consumed in the same order on every rank: a ZeRO-3 gather is a collective. Tensors
    from a gather or a merge are copies; the rest are detached views of the live weights."""
    owners = _lora_owners(model)
    for name, param in list(model.named_parameters()):
        if ".lora_" in name:
            continue
        module = owners.get(name)
        if module is None:
            with _gathered([param]):
                yield hf_name(name), (param.detach().clone() if _is_zero3(param) else param.detach())
            continue
        factors = [p for adapter in module.active_adapters if adapter in module.lora_A
                   for p in (module.lora_A[adapter].weight, module.lora_B[adapter].weight)]
        with _gathered([param, *factors]):
            yield hf_name(name), _merged(module, param)
