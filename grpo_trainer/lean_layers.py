"""The SwiGLU product and RMSNorm of Llama-family models, keeping less for backward, same bits.

Autograd keeps what each op needs for its own gradient, so a layer made of small ops keeps
several copies of its activations. transformers' Llama MLP, down(silu(g) * u), keeps g (for the
SiLU), silu(g) and u (for the product); its RMSNorm, w * (x * rsqrt(mean(x^2) + eps)), keeps x
and the normalised x beside the scaled output the next linear keeps anyway. `_SiluMul` keeps g
and u and recomputes silu(g) in backward; `_RMSNorm` keeps x and the per-row rsqrt and
recomputes the normalised x. For the bundled model (hidden 576, MLP 1536) that is 10.6 of the
57.5 KB autograd kept per token and layer in fp32 (18 %): 0.8 GiB for 8 rows of 330 tokens. The
recomputations are two elementwise passes per layer; the time of forward+backward did not change
measurably (README, "Speed").

Each backward calls the ops autograd's own formulas call, in the same order, so values and
gradients are bit-identical to the stock modules in fp32, in bf16 and under bf16 autocast
(tests/test_lean_layers.py); Liger-Kernel's fused SwiGLU and RMSNorm recompute the same things
on GPUs. `make_lean(model)` swaps the forward of each module whose class has transformers' Llama
code (LEAN_MLPS, LEAN_NORMS; the test checks the installed sources); others are left alone.
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F

# Classes whose forward is, line for line, LlamaMLP's or LlamaRMSNorm's (tests/test_lean_layers.py).
LEAN_MLPS = frozenset({"LlamaMLP", "Qwen2MLP", "Qwen3MLP", "MistralMLP", "SmolLM3MLP", "GraniteMLP", "Olmo2MLP",
                       "Qwen2MoeMLP", "Qwen3MoeMLP"})
LEAN_NORMS = frozenset({"LlamaRMSNorm", "Qwen2RMSNorm", "Qwen3RMSNorm", "MistralRMSNorm", "SmolLM3RMSNorm",
                        "GraniteRMSNorm", "Phi3RMSNorm", "Qwen2MoeRMSNorm", "Qwen3MoeRMSNorm"})


class _SiluMul(torch.autograd.Function):
    """silu(g) * u, keeping g and u only."""

    @staticmethod
    def forward(ctx, g, u):  # g, u (..., I)
        ctx.save_for_backward(g, u)
        return F.silu(g) * u

    @staticmethod
    def backward(ctx, d_out):  # d_out (..., I)
        g, u = ctx.saved_tensors
        # The product's gradients (grad * other), then SiLU's own backward kernel, as autograd does.
        d_g = torch.ops.aten.silu_backward(d_out * u, g) if ctx.needs_input_grad[0] else None
        d_u = d_out * F.silu(g) if ctx.needs_input_grad[1] else None
        return d_g, d_u


class _RMSNorm(torch.autograd.Function):
    """weight * (x32 * rsqrt(mean(x32^2) + eps)).to(x.dtype), x32 = x in fp32, keeping x and the rsqrt.

    x comes in twice, as autograd sees it in the stock module: in fp32, x itself feeds the product
    and the square, and its two gradients reach x's other gradient (the residual's) one after the
    other; float addition is not associative, so returning their sum would change x's last bits.
    In other dtypes the fp32 copy takes both and hands x their sum, as returned here."""

    @staticmethod
    def forward(ctx, x, x_again, weight, eps: float):  # x, x_again: the same (..., H); weight (H,)
        x32 = x.to(torch.float32)
        r = torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)  # (..., 1)
        ctx.save_for_backward(x, weight, r)
        return weight * (x32 * r).to(x.dtype)

    @staticmethod
    def backward(ctx, d_out):  # d_out (..., H)
        x, weight, r = ctx.saved_tensors
        x32 = x.to(torch.float32)
        # Each line is the derivative formula autograd runs for the forward's op (torch's
        # derivatives.yaml), last op first, so that every rounding is the same. The normalised x
        # is recomputed only for the weight's gradient (none for a frozen norm, as under LoRA).
        d_weight = ((d_out * (x32 * r).to(x.dtype)).sum_to_size(weight.shape) if ctx.needs_input_grad[2]
                    else None)
        if not ctx.needs_input_grad[0]:
            return None, None, d_weight, None
        # Autograd rounds a gradient to its input's dtype; the cast back to fp32 is then exact.
        d_normed = (d_out * weight).to(x.dtype).to(torch.float32)
        d_r = (d_normed * x32).sum_to_size(r.shape)  # (..., 1)
        d_mean = -0.5 * d_r * r.pow(3)  # rsqrt: -0.5 * grad * result^3; "+ eps" passes it on
        d_square = d_mean / x.shape[-1]  # mean over H: the gradient spread evenly
        d_via_product, d_via_square = d_normed * r, d_square * (2.0 * x32)  # pow(2): grad * 2x
        if x.dtype == torch.float32:
            return d_via_product, d_via_square, d_weight, None
        return (d_via_product + d_via_square).to(x.dtype), None, d_weight, None


def _lean_mlp_forward(self, x):
    return self.down_proj(_SiluMul.apply(self.gate_proj(x), self.up_proj(x)))


def _lean_norm_forward(self, hidden_states):
    return _RMSNorm.apply(hidden_states, hidden_states, self.weight, self.variance_epsilon)


def make_lean(model: torch.nn.Module) -> int:
    """Give each Llama-code MLP with a SiLU and each Llama-code RMSNorm in `model` the lean forward
    (on the instance). Returns how many modules changed."""
    from transformers.activations import SiLUActivation

    changed = 0
    for module in model.modules():
        name = type(module).__name__
        if name in LEAN_MLPS and isinstance(getattr(module, "act_fn", None), (SiLUActivation, torch.nn.SiLU)):
            module.forward = types.MethodType(_lean_mlp_forward, module)
            changed += 1
        elif name in LEAN_NORMS:
            module.forward = types.MethodType(_lean_norm_forward, module)
            changed += 1
    return changed
