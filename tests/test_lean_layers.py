"""lean_layers: the lean SwiGLU product and RMSNorm give the stock modules' bits (values and every
gradient, through whole models, so that the order gradients add up in is checked too) and keep
exactly the tensors they are meant to drop."""

from __future__ import annotations

import importlib
import inspect

import pytest
import torch

from grpo_trainer import attention
from grpo_trainer.lean_layers import LEAN_MLPS, LEAN_NORMS, make_lean


def _pair(path):
    """The same checkpoint twice: stock, and made lean."""
    from transformers import AutoModelForCausalLM

    stock, lean = (AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32,
                                                        attn_implementation=attention.implementation())
                   for _ in range(2))
    return stock, lean, make_lean(lean)


def _ids_and_mask(vocab: int):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (3, 21), generator=g)
    mask = torch.ones_like(ids)
    mask[1, :5] = 0  # left padding, as the trainer packs prompts
    mask[2, :2] = 0
    return ids, mask


@pytest.mark.parametrize("arch", ["tiny_llama", "tiny_qwen2"])
@pytest.mark.parametrize("precision", ["fp32", "bf16_autocast", "bf16_weights", "fp32_frozen_norms"])
def test_lean_model_gives_the_stock_bits(arch, precision, request):
    stock, lean, changed = _pair(request.getfixturevalue(arch))
    layers = stock.config.num_hidden_layers
    assert changed == 3 * layers + 1  # per layer an MLP and two norms, and the final norm
    if precision == "bf16_weights":
        stock, lean = stock.to(torch.bfloat16), lean.to(torch.bfloat16)
    if precision == "fp32_frozen_norms":  # as under LoRA: no weight gradient for the norms
        for model in (stock, lean):
            for name, p in model.named_parameters():
                p.requires_grad_("norm" not in name)
    ids, mask = _ids_and_mask(stock.config.vocab_size)
    weights = torch.randn(3, 21, stock.config.vocab_size, generator=torch.Generator().manual_seed(1))
    results = []
    for model in (stock, lean):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16_autocast"):
            logits = model(input_ids=ids, attention_mask=mask).logits
        (torch.log_softmax(logits.float(), -1) * weights).sum().backward()
        results.append((logits, {n: p.grad for n, p in model.named_parameters()}))
    (logits_s, grads_s), (logits_l, grads_l) = results
    assert torch.equal(logits_s, logits_l)
    assert grads_s.keys() == grads_l.keys()
    assert [n for n, g in grads_s.items() if g is None] == [n for n, g in grads_l.items() if g is None]
    differ = [n for n in grads_s if grads_s[n] is not None and not torch.equal(grads_s[n], grads_l[n])]
    assert not differ, f"gradients differ: {differ}"


def _kept_bytes(model, ids, mask, autocast: bool) -> int:
    """Bytes of the distinct storages autograd keeps for backward, parameters left out."""
    kept = {}

    def pack(t):
        kept[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            model(input_ids=ids, attention_mask=mask)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    return sum(nbytes for ptr, nbytes in kept.items() if ptr not in params)


@pytest.mark.parametrize("autocast", [False, True])
def test_lean_model_keeps_less_by_exactly_the_dropped_tensors(tiny_llama, autocast):
    stock, lean, _ = _pair(tiny_llama)
    ids, mask = _ids_and_mask(stock.config.vocab_size)
    c = stock.config
    tokens, act_bytes = ids.numel(), 2 if autocast else 4  # silu(g) is in the linears' output dtype
    # Each MLP drops silu(g) (tokens, I); each norm its normalised input (tokens, H), in fp32 also
    # under autocast (RMSNorm computes in fp32).
    dropped = tokens * (c.num_hidden_layers * (c.intermediate_size * act_bytes + 2 * c.hidden_size * 4)
                        + c.hidden_size * 4)
    assert _kept_bytes(stock, ids, mask, autocast) - _kept_bytes(lean, ids, mask, autocast) == dropped


def test_listed_classes_have_the_llama_code():
    """A class is listed only while its forward is LlamaMLP's or LlamaRMSNorm's, word for word;
    a transformers upgrade that changes one fails here, not in a run's gradients."""
    from transformers.models.llama import modeling_llama

    found = {}
    for name in ("llama", "qwen2", "qwen3", "mistral", "smollm3", "granite", "olmo2", "phi3", "qwen2_moe",
                 "qwen3_moe"):
        module = importlib.import_module(f"transformers.models.{name}.modeling_{name}")
        for cls in LEAN_MLPS | LEAN_NORMS:
            if hasattr(module, cls):
                found[cls] = getattr(module, cls)
    assert found.keys() == LEAN_MLPS | LEAN_NORMS
    mlp, norm = (inspect.getsource(c.forward) for c in (modeling_llama.LlamaMLP, modeling_llama.LlamaRMSNorm))
    assert all(inspect.getsource(found[c].forward) == mlp for c in LEAN_MLPS)
    assert all(inspect.getsource(found[c].forward) == norm for c in LEAN_NORMS)


def test_an_mlp_without_silu_is_left_alone():
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaMLP

    mlp = LlamaMLP(LlamaConfig(hidden_size=8, intermediate_size=16, num_attention_heads=2, hidden_act="gelu"))
    assert make_lean(mlp) == 0
    assert "forward" not in vars(mlp)
