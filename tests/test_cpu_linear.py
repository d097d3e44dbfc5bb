"""The oneDNN fp32 linear (cpu_linear.py) against torch's own kernel: the same values and gradients
to fp32 rounding (another library, another summation order), torch's bits wherever it stands
aside, and the trainer's loaders giving it to every linear layer unless told not to."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from grpo_trainer import cpu_linear

pytestmark = pytest.mark.skipif(not cpu_linear.available(), reason="this torch build has no oneDNN linear")


def _both(shape, bias: bool, frozen: bool = False):
    """Outputs and gradients of a linear layer on the same input, stock and oneDNN."""
    torch.manual_seed(0)
    stock = torch.nn.Linear(shape[-1], 48, bias=bias)
    ours = torch.nn.Linear(shape[-1], 48, bias=bias)
    ours.load_state_dict(stock.state_dict())
    assert cpu_linear.use_onednn(ours) == 1
    x = torch.randn(*shape)
    g = torch.randn(*shape[:-1], 48)
    results = []
    for layer in (stock, ours):
        layer.requires_grad_(not frozen)
        xi = x.clone().requires_grad_(True)
        y = layer(xi)
        y.backward(g)
        results.append((y, xi.grad, layer.weight.grad, None if layer.bias is None else layer.bias.grad))
    return results


@pytest.mark.parametrize("shape", [(5, 40), (3, 7, 40)])
@pytest.mark.parametrize("bias", [False, True])
def test_values_and_gradients_match_torch(shape, bias):
    (y0, dx0, dw0, db0), (y1, dx1, dw1, db1) = _both(shape, bias)
    torch.testing.assert_close(y1, y0, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(dx1, dx0, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(dw1, dw0, rtol=1e-5, atol=1e-5)
    if bias:
        torch.testing.assert_close(db1, db0, rtol=1e-6, atol=1e-6)
    # Not torch's kernel under another name: the products go through the op (its output is new).
    assert y1.grad_fn is not None and "OneDnnLinear" in type(y1.grad_fn).__name__


def test_frozen_weight_gets_no_gradient():
    (_, dx0, dw0, _), (_, dx1, dw1, _) = _both((4, 40), bias=True, frozen=True)
    assert dw0 is None and dw1 is None
    torch.testing.assert_close(dx1, dx0, rtol=1e-5, atol=1e-5)


def test_autocast_and_other_dtypes_keep_torchs_kernel_bits():
    torch.manual_seed(0)
    layer = torch.nn.Linear(40, 48)
    cpu_linear.use_onednn(layer)
    x = torch.randn(6, 40)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(layer(x), F.linear(x, layer.weight, layer.bias))
    layer.to(torch.bfloat16)
    xb = x.to(torch.bfloat16)
    assert torch.equal(layer(xb), F.linear(xb, layer.weight, layer.bias))


def test_matmul_t_is_x_times_w_transposed():
    torch.manual_seed(0)
    x, w = torch.randn(9, 40), torch.randn(33, 40)
    torch.testing.assert_close(cpu_linear.matmul_t(x, w), x @ w.t(), rtol=1e-5, atol=1e-5)
    xb, wb = x.bfloat16(), w.bfloat16()
    assert torch.equal(cpu_linear.matmul_t(xb, wb), xb @ wb.t())


def test_loaders_give_every_linear_layer_the_kernel_unless_told_not_to(tiny_llama):
    from grpo_trainer.critic import load_value_model
    from grpo_trainer.models import load_causal_lm

    def patched(model):
        linears = [m for m in model.modules() if type(m) is torch.nn.Linear]
        return len(linears), sum("forward" in m.__dict__ for m in linears)

    n, k = patched(load_causal_lm(str(tiny_llama)))
    assert n > 0 and k == n
    assert patched(load_causal_lm(str(tiny_llama), onednn_linear=False))[1] == 0
    n, k = patched(load_value_model(str(tiny_llama)))
    assert n > 0 and k == n  # the value head too
    assert patched(load_value_model(str(tiny_llama), onednn_linear=False))[1] == 0


def test_lora_base_layers_run_it(tiny_llama):
    from grpo_trainer import lora
    from grpo_trainer.config.schema import LoraConfig
    from grpo_trainer.models import load_causal_lm

    ids = torch.randint(0, 100, (2, 6), generator=torch.Generator().manual_seed(0))
    models = []
    for on in (False, True):
        base = load_causal_lm(str(tiny_llama), onednn_linear=on)
        torch.manual_seed(0)  # the same adapters in both
        models.append(lora.wrap(base, LoraConfig(enabled=True), False))
        for name, p in models[-1].named_parameters():
            if "lora_B" in name:  # B starts at 0: give the adapters an effect
                p.data.normal_()
    assert any(name.endswith("base_layer") and "forward" in m.__dict__ for name, m in models[1].named_modules())
    outs = [m(input_ids=ids).logits for m in models]
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-4, atol=1e-4)
    outs[1].sum().backward()
    grads = [p.grad for n, p in models[1].named_parameters() if p.requires_grad]
    assert grads and all(g is not None for g in grads)
