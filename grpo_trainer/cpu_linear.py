"""fp32 linear layers on CPU through oneDNN, the GEMM library vLLM's CPU backend uses for them.

torch runs an fp32 `F.linear` on CPU as MKL's sgemm. On the 2-core AMD EPYC (Zen 4) this project
is measured on, MKL ran the bundled model's training shapes (1,024 rows of 576 -> 1,536, 1,536 ->
576, 576 -> 49,152) at 147-199 GFLOP/s and oneDNN's matmul at 166-218; the input's gradient, dY W,
at 164-199 against 187-212; a decode step's 32 rows through the LM head at 73 against 127. The
weight's gradient, dY^T X, reads both operands transposed, where oneDNN was no faster (126-194
against 167-196), so it stays with torch's mm. fp32 forward+backward of the bench's 32 rows took
14 % less (README, "Speed").

`_OneDnnLinear` keeps what `F.linear`'s autograd keeps (the input and the weight). Its results
differ from MKL's in the last bits (another summation order), so `model.onednn_linear: false`
keeps torch's kernel; the regression test, whose records hold MKL's bits, runs that way. Under
autocast, in other dtypes, and on accelerators, `F.linear` runs as before (torch's bf16 matmul
on CPU is oneDNN's already).
"""

from __future__ import annotations

import functools
import types

import torch
import torch.nn.functional as F


@functools.cache
def available() -> bool:
    """Whether this torch build has oneDNN's linear op (CPU builds for x86 and Arm do)."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def _onednn(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    # x (..., K), weight (N, K) -> (..., N): x W^T + b, as F.linear
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [None], "")


def _takes(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether oneDNN computes this product: fp32 operands on CPU, outside autocast."""
    return (x.dtype == torch.float32 and weight.dtype == torch.float32 and x.device.type == "cpu"
            and not torch.is_autocast_enabled("cpu") and available())


def matmul_t(x: torch.Tensor, weight: torch.Tensor, onednn: bool = True) -> torch.Tensor:  # (R, K), (N, K) -> (R, N)
    """x W^T by the kernel a linear layer of this project's runs on: oneDNN where it takes the
    product (unless `onednn` is false), else torch's matmul (which is oneDNN's for bf16 on CPU).
    For the bench's GEMM lines."""
    return _onednn(x, weight, None) if onednn and _takes(x, weight) else x @ weight.t()


class _OneDnnLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias):  # x (..., K); weight (N, K); bias (N,) or None
        ctx.save_for_backward(x, weight)
        return _onednn(x, weight, bias)

    @staticmethod
    def backward(ctx, d_y):  # d_y (..., N)
        x, weight = ctx.saved_tensors
        d_x = _onednn(d_y, weight.t(), None) if ctx.needs_input_grad[0] else None  # (..., K) = dY W
        d_y2 = d_y.reshape(-1, d_y.shape[-1])  # (rows, N)
        d_w = d_y2.t().mm(x.reshape(-1, x.shape[-1])) if ctx.needs_input_grad[1] else None  # (N, K)
        d_b = d_y2.sum(0) if ctx.needs_input_grad[2] else None  # False for a bias of None
        return d_x, d_w, d_b


def _forward(self, x):
    if _takes(x, self.weight):
        return _OneDnnLinear.apply(x, self.weight, self.bias)
    return F.linear(x, self.weight, self.bias)


def use_onednn(model: torch.nn.Module) -> int:
    """Give every `nn.Linear` of `model` the forward above (on the instance; LoRA's wrappers call
    their base layer's). Returns how many changed; 0 where this torch has no oneDNN linear."""
    if not available():
        return 0
    changed = 0
    for module in model.modules():
        if type(module) is torch.nn.Linear:
            module.forward = types.MethodType(_forward, module)
            changed += 1
    return changed
